/**
 * A virtual machine: guest RAM described by a P2M over the hypervisor's frame pool, its vCPUs,
 * its MMIO bus, and the exits that services and devices register for.
 *
 * Exits: every guest access that cannot complete on the fast path reaches a method here. An
 * absent P2M entry goes to the handler registered for its state; a write to a frame with a
 * protection flag goes to the handler for that flag; `hcall` goes to the handler for its number.
 * A handler resolves the exit (installs an entry, clears its flag, sets result registers) and
 * the instruction continues exactly; what nobody resolves becomes a guest trap or a VM stop.
 */
import { Cause, CAUSE_INTERRUPT, describeCause, GuestPhys, Hcall, HcallStatus, Irq, PAGE_SIZE, Reg } from '../guest-isa/arch.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { Vcpu } from './cpu/vcpu.ts';
import type { VcpuState } from './cpu/vcpu.ts';
import type { DecodeCache } from './cpu/decode-cache.ts';
import { KernelError } from './errors.ts';
import type { FramePool } from './memory/frame-pool.ts';
import { ABSENT_STATE_NAMES, AbsentState, UNTOUCHED_ENTRY, P2m, P2M_FLAG_MASK, P2M_FRAME_MASK, P2M_READ_BLOCKING, P2M_RESOLVE_BEFORE_WRITE, P2M_WRITE_BLOCKING, P2mEntry, P2mFlag } from './memory/p2m.ts';
import type { AbsentStateId } from './memory/p2m.ts';
import { MmioBus } from './mmio.ts';
import type { DeviceDescriptor, MmioDevice } from './mmio.ts';
import { Access } from './mmu/sv32.ts';
import type { TlbProvider } from './mmu/tlb.ts';
import { Mmu } from './mmu/shadow.ts';
import type { MmuOptions } from './mmu/shadow.ts';
import type { AccessKind, PhysicalPageTables } from './mmu/sv32.ts';

/** How a VM stopped. */
export type StopReason =
  | { kind: 'running' }
  | { kind: 'halted'; exitCode: number }
  | { kind: 'guest-error'; message: string; vcpu: number; pc: number }
  | { kind: 'host-error'; message: string; error?: unknown }
  | { kind: 'paused'; reason: string };

export const StopCode = { RUNNING: 0, HALTED: 1, GUEST_ERROR: 2, HOST_ERROR: 3, PAUSED: 4 } as const;

/** Resolves an absent P2M entry: must install a present entry (or leave it absent to refuse). */
export type AbsentHandler = (vm: Vm, gpn: number, entry: number, access: AccessKind) => void;
/** Resolves a write to a protected frame: must clear its flag from the entry. */
export type WriteProtectHandler = (vm: Vm, gpn: number, entry: number) => void;
/** Services a hypercall: read a1..a3 from vcpu.regs, write a0 (status) and a1 (result). */
export type HypercallHandler = (vcpu: Vcpu) => void;

export interface VmConfig {
  name?: string;
  /** Guest RAM in bytes (multiple of 4 KiB, at most 3.75 GiB: device windows live above). */
  memoryBytes: number;
  /** Number of vCPUs (1..32). */
  vcpus?: number;
  /** Translation: shadow page tables with traces (default), or nested walks. */
  mmu?: MmuOptions;
  /**
   * When to back a 4 MiB guest-physical region with one aligned 4 MiB host run on first touch
   * (T-2): 'superpages' (default) once the guest maps the region with a superpage, 'always', or
   * 'off'.
   */
  largePages?: LargePagePolicy;
}

export type LargePagePolicy = 'off' | 'superpages' | 'always';

export interface LargePageStats {
  /** Regions backed by a whole host run at first touch. */
  runsAllocated: number;
  /** Regions moved onto a host run after the fact (promotion, T-3). */
  regionsPromoted: number;
  /** Host runs split into independent frames (T-4). */
  regionsBrokenUp: number;
}

/** A device's (or service's) state hooks for checkpoints and fork. */
export interface StatefulComponent {
  /** Bumped whenever the saved form changes; a mismatch refuses the restore. */
  version: number;
  /** Plain data (JSON-serialisable) or bytes. */
  save(): unknown;
  restore(state: unknown, version: number): void;
}

/** Everything but memory: what a checkpoint or a fork copies besides pages. */
export interface VmState {
  config: { name: string; memoryBytes: number; vcpus: number; mmu?: MmuOptions; largePages: LargePagePolicy };
  vcpus: VcpuState[];
  components: Record<string, { version: number; state: unknown }>;
}

/** Called with a page's frame before the first write to it in a snapshot epoch. */
export type EpochWriteHook = (gpn: number, frame: number) => void;

/** Largest guest-virtual read a host component may ask for (readVirtual). */
const MAX_VIRTUAL_READ = 16 * 1024 * 1024;

/** Pages in a 4 MiB region. */
export const REGION_PAGES = 1024;
const REGION_UNKNOWN = -2;
const REGION_NOT_LARGE = -1;

export interface ExitCounts {
  absent: Record<string, number>;
  writeProtect: Record<string, number>;
  mmio: number;
  hypercall: number;
  trapToGuest: number;
  codeWrites: number;
}

const MAX_RAM = GuestPhys.DEVICE_TABLE;
const WRITE_PROTECT_FLAGS: readonly [number, string][] = [
  [P2mFlag.COPY_ON_WRITE, 'copy-on-write'],
  [P2mFlag.CHECKPOINT, 'checkpoint'],
  [P2mFlag.PARITY, 'parity'],
  [P2mFlag.WATCH, 'watch'],
];

export class Vm implements PhysicalPageTables {
  readonly name: string;
  readonly id: number;
  readonly memoryBytes: number;
  readonly pool: FramePool;
  readonly decodeCache: DecodeCache;
  readonly memory32: Int32Array;
  readonly p2m: P2m;
  readonly bus: MmioBus;
  mmu: Mmu;
  private readonly mmuOptions: MmuOptions | undefined;
  readonly vcpus: Vcpu[] = [];
  /** 0 while running; see StopCode. Read by the interpreter after every exit. */
  stopCode: number = StopCode.RUNNING;
  stopReason: StopReason = { kind: 'running' };
  readonly exits: ExitCounts = { absent: {}, writeProtect: {}, mmio: 0, hypercall: 0, trapToGuest: 0, codeWrites: 0 };
  /** Frames this VM holds references to (present P2M entries). */
  framesHeld = 0;
  readonly largePagePolicy: LargePagePolicy;
  readonly largePageStats: LargePageStats = { runsAllocated: 0, regionsPromoted: 0, regionsBrokenUp: 0 };
  /**
   * Per guest page: set when a TLB entry is filled for it. These are the hypervisor's own
   * accessed bits (like A bits in nested tables); services clear them with clearAccessed().
   */
  readonly accessed: Uint8Array;
  /** Per 4 MiB region: first frame of the host run backing all of it, or a REGION_* marker. */
  private readonly regionRun: Int32Array;
  /** Per 4 MiB region: the guest has mapped it with a superpage. */
  private readonly superpageSeen: Uint8Array;
  private readonly tickers: { every: number; next: number; run: (vm: Vm) => void }[] = [];
  private readonly components = new Map<string, StatefulComponent>();
  readonly config: VmConfig;
  /** Snapshot write barrier (T-12): the current epoch and the epoch each page was claimed in. */
  private epoch = 0;
  private pageEpoch: Int32Array | null = null;
  private epochHook: EpochWriteHook | null = null;
  image: GuestImage | null = null;

  private readonly absentHandlers = new Map<number, AbsentHandler>();
  private readonly writeProtectHandlers = new Map<number, WriteProtectHandler>();
  private readonly hypercalls = new Map<number, HypercallHandler>();
  private readonly resetHooks: (() => void)[] = [];
  private readonly onP2mChange: (vm: Vm, gpns: readonly number[]) => void;

  constructor(
    id: number,
    config: VmConfig,
    pool: FramePool,
    decodeCache: DecodeCache,
    onP2mChange: (vm: Vm, gpns: readonly number[]) => void,
    private readonly tlbs: TlbProvider,
  ) {
    const vcpuCount = config.vcpus ?? 1;
    if (!Number.isInteger(config.memoryBytes) || config.memoryBytes <= 0 || config.memoryBytes % PAGE_SIZE !== 0 || config.memoryBytes > MAX_RAM) {
      throw new KernelError('BV_BAD_VM_CONFIG', `guest memory must be a multiple of 4 KiB between 4 KiB and ${MAX_RAM / 2 ** 20} MiB, got ${config.memoryBytes} bytes`);
    }
    if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > 32) {
      throw new KernelError('BV_BAD_VM_CONFIG', `vCPU count must be 1..32, got ${config.vcpus}`);
    }
    this.id = id;
    this.config = { ...config };
    this.name = config.name ?? `vm${id}`;
    this.memoryBytes = config.memoryBytes;
    this.pool = pool;
    this.memory32 = pool.i32;
    this.decodeCache = decodeCache;
    this.p2m = new P2m(config.memoryBytes / PAGE_SIZE);
    this.largePagePolicy = config.largePages ?? 'superpages';
    if (!['off', 'superpages', 'always'].includes(this.largePagePolicy)) {
      throw new KernelError('BV_BAD_VM_CONFIG', `large-page policy must be off, superpages or always, got ${String(config.largePages)}`);
    }
    this.accessed = new Uint8Array(this.p2m.pageCount);
    const regions = Math.ceil(this.p2m.pageCount / REGION_PAGES);
    this.regionRun = new Int32Array(regions).fill(REGION_UNKNOWN);
    this.superpageSeen = new Uint8Array(regions);
    this.bus = new MmioBus(config.memoryBytes, vcpuCount);
    this.onP2mChange = onP2mChange;
    this.mmuOptions = config.mmu;
    this.mmu = new Mmu(this, config.mmu);
    for (let i = 0; i < vcpuCount; i++) this.vcpus.push(new Vcpu(this, i, tlbs.acquire()));
    this.absentHandlers.set(AbsentState.UNTOUCHED, (vm, gpn) => vm.allocateOnFirstTouch(gpn));
    this.writeProtectHandlers.set(P2mFlag.COPY_ON_WRITE, (vm, gpn, entry) => vm.breakCopyOnWrite(gpn, entry));
    this.hypercalls.set(Hcall.VERSION, (vcpu) => {
      vcpu.regs[Reg.A0] = HcallStatus.OK;
      vcpu.regs[Reg.A1] = 1;
    });
    for (const vcpu of this.vcpus) vcpu.reset(0, GuestPhys.DEVICE_TABLE);
  }

  // ---------------------------------------------------------------------------------------------
  // Registration (services and devices)

  /** Registers the resolver for an absent state (replaces the previous one). */
  onAbsent(state: AbsentStateId, handler: AbsentHandler): void {
    this.absentHandlers.set(state, handler);
  }

  /** Registers the handler for writes to frames carrying a protection flag. */
  onWriteProtected(flag: number, handler: WriteProtectHandler): void {
    this.writeProtectHandlers.set(flag, handler);
  }

  /** Registers a hypercall number. */
  onHypercall(number: number, handler: HypercallHandler): void {
    this.hypercalls.set(number, handler);
  }

  /** Attaches an MMIO device; returns its guest-physical base. */
  attachDevice(descriptor: DeviceDescriptor, device: MmioDevice): number {
    return this.bus.attach(descriptor, device);
  }

  /** Runs on VM reset (devices clear their state). */
  onReset(hook: () => void): void {
    this.resetHooks.push(hook);
  }

  // ---------------------------------------------------------------------------------------------
  // P2M

  /** Makes gpn present on a frame the caller holds a reference to (the VM takes it over). */
  installFrame(gpn: number, frame: number, flags = 0): void {
    this.setP2mEntry(gpn, P2mEntry.present(frame, flags));
  }

  /**
   * Replaces a P2M entry, dropping the reference to the old frame if it was present, and shoots
   * down every vCPU's TLB entries derived from this guest page before returning.
   */
  setP2mEntry(gpn: number, entry: number): void {
    this.checkGpn(gpn);
    // TRACED belongs to the MMU: a page it traces keeps the flag whatever frame backs it.
    if (entry >= 0 && this.mmu.isTracing(gpn)) entry |= P2mFlag.TRACED;
    this.pristine = false;
    const old = this.p2m.entries[gpn]!;
    this.p2m.entries[gpn] = entry;
    this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
    if (entry >= 0) this.framesHeld++;
    if (old >= 0) {
      this.framesHeld--;
      // Only translations that could now be wrong need to go.
      if (old !== entry) this.onP2mChange(this, [gpn]);
      if ((old & P2M_FRAME_MASK) !== (entry & P2M_FRAME_MASK) || entry < 0) this.releaseFrame(old & P2M_FRAME_MASK);
    }
  }

  /**
   * Installs absent entries in bulk (a lazy restore's map of which block holds each page): every
   * entry given must be absent and every page it replaces must be absent too, so no TLB can
   * hold anything to shoot down. `entries[gpn]` = 0 leaves that page as it is.
   */
  installAbsentEntries(entries: Int32Array): void {
    if (entries.length !== this.p2m.pageCount) throw new KernelError('BV_BAD_P2M', `${this.name}: expected ${this.p2m.pageCount} entries, got ${entries.length}`);
    const p2m = this.p2m.entries;
    this.pristine = false;
    for (let gpn = 0; gpn < entries.length; gpn++) {
      const entry = entries[gpn]!;
      if (entry === 0) continue;
      if (entry >= 0 || p2m[gpn]! >= 0) throw new KernelError('BV_BAD_P2M', `${this.name}: installAbsentEntries on guest page ${gpn}: ${P2mEntry.describe(entry)} over ${P2mEntry.describe(p2m[gpn]!)}`);
      p2m[gpn] = entry;
    }
    this.regionRun.fill(REGION_UNKNOWN);
  }

  /**
   * Defers filling in the P2M region by region (a lazy restore of a large VM starts in
   * O(regions), not O(pages)). Every region is pending until something first needs one of its
   * pages; then `filler` installs its entries (installAbsentRange) and the access proceeds.
   * Everything that would read an untouched entry as "zero" fills the region first. The VM's
   * pages must all be untouched when this is called.
   */
  deferRegions(filler: (vm: Vm, region: number) => void): void {
    // A flag, not a scan: the check must not cost O(pages) (lazy restore's time to first
    // instruction must not grow with memory size).
    if (!this.pristine) throw new KernelError('BV_BAD_P2M', `${this.name}: deferRegions needs a VM whose P2M was never changed`);
    this.pendingRegions = new Uint8Array(this.regionRun.length).fill(1);
    this.regionFiller = filler;
    this.pristine = false;
  }

  /** Fills a pending region's P2M entries now (no-op when not pending). */
  fillRegion(region: number): void {
    const pending = this.pendingRegions;
    if (pending === null || pending[region] !== 1) return;
    pending[region] = 0;
    this.regionFiller!(this, region);
  }

  /** Fills every pending region (before a fork, a save, a snapshot). */
  fillAllRegions(): void {
    if (this.pendingRegions === null) return;
    for (let region = 0; region < this.pendingRegions.length; region++) this.fillRegion(region);
    this.pendingRegions = null;
    this.regionFiller = null;
  }

  /** A guest page's P2M entry, with its region filled in first if it was pending. */
  p2mEntryOf(gpn: number): number {
    if (this.pendingRegions !== null) this.fillRegion(Math.floor(gpn / REGION_PAGES));
    return this.p2m.entries[gpn]!;
  }

  /** Regions still pending (deferRegions). */
  get pendingRegionCount(): number {
    return this.pendingRegions === null ? 0 : this.pendingRegions.reduce((sum, flag) => sum + flag, 0);
  }

  private pendingRegions: Uint8Array | null = null;
  /** No P2M entry was ever changed (every page is untouched). */
  private pristine = true;
  private regionFiller: ((vm: Vm, region: number) => void) | null = null;

  /** Installs absent entries over untouched pages from `firstGpn` on (a region filler's job). */
  installAbsentRange(firstGpn: number, entries: Int32Array): void {
    const p2m = this.p2m.entries;
    if (firstGpn < 0 || firstGpn + entries.length > p2m.length) throw new KernelError('BV_BAD_P2M', `${this.name}: range ${firstGpn}+${entries.length} is outside RAM`);
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i]!;
      if (entry === 0) continue;
      if (entry >= 0 || p2m[firstGpn + i] !== UNTOUCHED_ENTRY) throw new KernelError('BV_BAD_P2M', `${this.name}: installAbsentRange on guest page ${firstGpn + i}: ${P2mEntry.describe(entry)} over ${P2mEntry.describe(p2m[firstGpn + i]!)}`);
      p2m[firstGpn + i] = entry;
    }
    this.regionRun[Math.floor(firstGpn / REGION_PAGES)] = REGION_UNKNOWN;
  }

  /** Adds protection flags to a present entry (e.g. copy-on-write) and shoots down writers. */
  protectPage(gpn: number, flags: number): void {
    this.checkGpn(gpn);
    const old = this.p2m.entries[gpn]!;
    if (old < 0 || (old & flags) === flags) return;
    this.pristine = false;
    this.p2m.entries[gpn] = old | flags;
    this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
    this.onP2mChange(this, [gpn]);
  }

  /** Clears protection flags from a present entry. */
  unprotectPage(gpn: number, flags: number): void {
    this.checkGpn(gpn);
    const old = this.p2m.entries[gpn]!;
    if (old >= 0) this.p2m.entries[gpn] = old & ~flags;
    this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
  }

  /**
   * Replaces many P2M entries at once with a single shootdown (region moves, break-ups). The
   * frames the old entries held are released after every vCPU has dropped its translations.
   */
  replaceEntries(gpns: readonly number[], entries: readonly number[]): void {
    this.pristine = false;
    const released: number[] = [];
    const changed: number[] = [];
    for (let i = 0; i < gpns.length; i++) {
      const gpn = gpns[i]!;
      this.checkGpn(gpn);
      const old = this.p2m.entries[gpn]!;
      let entry = entries[i]!;
      if (entry >= 0 && this.mmu.isTracing(gpn)) entry |= P2mFlag.TRACED;
      this.p2m.entries[gpn] = entry;
      this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
      if (entry >= 0) this.framesHeld++;
      if (old >= 0) {
        this.framesHeld--;
        if (old !== entry) changed.push(gpn);
        if ((old & P2M_FRAME_MASK) !== (entry & P2M_FRAME_MASK) || entry < 0) released.push(old & P2M_FRAME_MASK);
      }
    }
    if (changed.length > 0) this.onP2mChange(this, changed);
    for (const frame of released) this.releaseFrame(frame);
  }

  // ---------------------------------------------------------------------------------------------
  // Large pages (T-2)

  /**
   * First host frame of the aligned 4 MiB run that backs every page of a guest region (present,
   * contiguous, readable without exits), or -1.
   */
  regionRunFrame(region: number): number {
    const cached = this.regionRun[region];
    if (cached === undefined) return REGION_NOT_LARGE;
    if (cached !== REGION_UNKNOWN) return cached;
    const first = region * REGION_PAGES;
    let result = REGION_NOT_LARGE;
    if (first + REGION_PAGES <= this.p2m.pageCount) {
      const entries = this.p2m.entries;
      const head = entries[first]!;
      const runFrame = head & P2M_FRAME_MASK;
      if (head >= 0 && runFrame % REGION_PAGES === 0) {
        result = runFrame;
        for (let i = 0; i < REGION_PAGES; i++) {
          const entry = entries[first + i]!;
          if (entry < 0 || (entry & P2M_FRAME_MASK) !== runFrame + i || (entry & P2M_READ_BLOCKING) !== 0) {
            result = REGION_NOT_LARGE;
            break;
          }
        }
      }
    }
    this.regionRun[region] = result;
    return result;
  }

  /** The guest mapped a superpage over a guest-physical region (walk result). */
  noteSuperpage(gpaBase: number): void {
    const region = Math.floor(gpaBase / (REGION_PAGES * PAGE_SIZE));
    if (region < this.superpageSeen.length) this.superpageSeen[region] = 1;
  }

  /** Whether the guest maps a region with a superpage (as seen by walks). */
  superpageMapped(region: number): boolean {
    return this.superpageSeen[region] === 1;
  }

  /**
   * Zero-on-demand, preferring a whole aligned host run when the policy says the region will be
   * mapped large and none of it is populated yet; otherwise one frame.
   */
  private allocateOnFirstTouch(gpn: number): void {
    const region = Math.floor(gpn / REGION_PAGES);
    const wantRun = this.largePagePolicy === 'always' || (this.largePagePolicy === 'superpages' && this.superpageSeen[region] === 1);
    if (wantRun && this.regionUntouched(region)) {
      const runFrame = this.pool.allocRun();
      if (runFrame >= 0) {
        const first = region * REGION_PAGES;
        // Every page was absent, so no TLB holds anything to shoot down.
        this.pristine = false;
        for (let i = 0; i < REGION_PAGES; i++) this.p2m.entries[first + i] = P2mEntry.present(runFrame + i);
        this.framesHeld += REGION_PAGES;
        this.regionRun[region] = runFrame;
        this.largePageStats.runsAllocated++;
        return;
      }
    }
    this.installFrame(gpn, this.pool.allocFrame());
  }

  private regionUntouched(region: number): boolean {
    const first = region * REGION_PAGES;
    if (first + REGION_PAGES > this.p2m.pageCount) return false;
    const entries = this.p2m.entries;
    for (let i = 0; i < REGION_PAGES; i++) if (entries[first + i] !== UNTOUCHED_ENTRY) return false;
    return true;
  }

  /**
   * Moves a region onto a fresh aligned host run (T-3 promotion): present pages are copied,
   * untouched ones become zero pages of the run. Refused (false) when no run is free or a page
   * is in a state that cannot move (absent for another reason, shared copy-on-write, watched).
   */
  promoteRegion(region: number): boolean {
    this.fillRegion(region);
    const first = region * REGION_PAGES;
    if (first + REGION_PAGES > this.p2m.pageCount || this.regionRunFrame(region) >= 0) return false;
    const entries = this.p2m.entries;
    for (let i = 0; i < REGION_PAGES; i++) {
      const entry = entries[first + i]!;
      if (entry < 0 ? entry !== UNTOUCHED_ENTRY : (entry & (P2mFlag.COPY_ON_WRITE | P2mFlag.WATCH)) !== 0) return false;
    }
    const runFrame = this.pool.allocRun();
    if (runFrame < 0) return false;
    const u8 = this.pool.u8;
    const gpns: number[] = [];
    const newEntries: number[] = [];
    for (let i = 0; i < REGION_PAGES; i++) {
      const entry = entries[first + i]!;
      if (entry >= 0) {
        const from = (entry & P2M_FRAME_MASK) * PAGE_SIZE;
        u8.copyWithin((runFrame + i) * PAGE_SIZE, from, from + PAGE_SIZE);
      }
      gpns.push(first + i);
      newEntries.push(P2mEntry.present(runFrame + i, entry >= 0 ? entry & P2mFlag.TRACED : 0));
    }
    this.replaceEntries(gpns, newEntries);
    this.largePageStats.regionsPromoted++;
    return true;
  }

  /**
   * Splits a run-backed region into independent frames (T-4): the frames stay where they are,
   * but from now on each can be reclaimed on its own. Returns false if the region is not large.
   */
  breakUpRegion(region: number): boolean {
    if (this.regionRunFrame(region) < 0) return false;
    this.regionRun[region] = REGION_NOT_LARGE;
    this.largePageStats.regionsBrokenUp++;
    return true;
  }

  /** Marks a guest page accessed (the interpreter calls this when it fills a TLB entry). */
  markAccessed(gpn: number): void {
    this.accessed[gpn] = 1;
  }

  /**
   * Clears the accessed marks of a range and shoots down the TLB entries for it, so that the next
   * access to each page is seen again (T-3/T-4 tracking periods).
   */
  clearAccessed(firstGpn: number, count: number): void {
    this.accessed.fill(0, firstGpn, firstGpn + count);
    const gpns: number[] = [];
    for (let gpn = firstGpn; gpn < firstGpn + count; gpn++) gpns.push(gpn);
    this.onP2mChange(this, gpns);
  }

  /**
   * Runs `fn` every `everyInstructions` guest instructions, between scheduling rounds. Returns a
   * function that removes the ticker.
   */
  addTicker(everyInstructions: number, fn: (vm: Vm) => void): () => void {
    if (!Number.isInteger(everyInstructions) || everyInstructions <= 0) throw new KernelError('BV_BAD_TICKER', `ticker interval must be a positive integer, got ${everyInstructions}`);
    const ticker = { every: everyInstructions, next: this.instructionsRetired + everyInstructions, run: fn };
    this.tickers.push(ticker);
    return () => {
      const at = this.tickers.indexOf(ticker);
      if (at >= 0) this.tickers.splice(at, 1);
    };
  }

  /** Called by the scheduler between rounds. */
  runTickers(): void {
    if (this.tickers.length === 0) return;
    const now = this.instructionsRetired;
    for (const ticker of [...this.tickers]) {
      if (now < ticker.next) continue;
      ticker.next = now + ticker.every;
      ticker.run(this);
    }
  }

  private releaseFrame(frame: number): void {
    if (this.pool.refCount[frame] === 1) this.decodeCache.drop(frame);
    this.pool.release(frame);
  }

  private checkGpn(gpn: number): void {
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= this.p2m.pageCount) throw new KernelError('BV_BAD_GPN', `guest page ${gpn} is outside ${this.name}'s RAM`);
  }

  // ---------------------------------------------------------------------------------------------
  // Guest-physical access (walker, loader, devices)

  isRam(gpa: number): boolean {
    return gpa >= 0 && gpa < this.memoryBytes;
  }

  isMmio(gpa: number): boolean {
    return this.bus.contains(gpa);
  }

  /**
   * The frame for a guest-physical RAM address, resolving absent states (and, for writes,
   * protections). Returns -1 when the access cannot be satisfied: a trap has been taken on vcpu.
   */
  frameForAccess(vcpu: Vcpu, gpa: number, access: AccessKind, va: number): number {
    const gpn = Math.floor(gpa / PAGE_SIZE);
    let entry = this.p2m.entries[gpn]!;
    if (entry < 0) {
      entry = this.resolveAbsent(gpn, entry, access);
      if (entry < 0) {
        // Nobody could produce the page (e.g. poisoned): the guest sees a machine check.
        this.exits.trapToGuest++;
        vcpu.trap(Cause.MACHINE_CHECK, va);
        return -1;
      }
    }
    if (access === Access.WRITE) {
      if ((entry & P2M_RESOLVE_BEFORE_WRITE) !== 0) entry = this.resolveWriteProtect(gpn, entry);
      if (this.epochHook !== null) this.claimForWrite(gpn, entry & P2M_FRAME_MASK);
    }
    return entry & P2M_FRAME_MASK;
  }

  /** Whether a guest page holds a traced guest page table (writes must be reported). */
  isTraced(gpa: number): boolean {
    const entry = this.p2m.entries[Math.floor(gpa / PAGE_SIZE)]!;
    return entry >= 0 && (entry & P2mFlag.TRACED) !== 0;
  }

  /** A guest store changed a word of a traced page: the MMU drops what derived from it. */
  tracedWrite(gpa: number, oldWord: number, newWord: number): void {
    this.mmu.tracedWrite(Math.floor(gpa / PAGE_SIZE), gpa & (PAGE_SIZE - 1) & ~3, oldWord, newWord);
  }

  /**
   * Drops, in every vCPU, TLB entries for `count` virtual pages from `firstVpn` in address space
   * `asid` (the MMU calls this when a trace drops shadow entries).
   */
  invalidateTranslations(asid: number, firstVpn: number, count: number): void {
    for (const vcpu of this.vcpus) this.translationsInvalidated += vcpu.tlb.flushVpnRange(firstVpn, count, asid);
  }

  /** Drops every vCPU's TLB entries of one ASID (it now names another address space). */
  invalidateAsid(asid: number): void {
    for (const vcpu of this.vcpus) vcpu.tlb.flushAsid(asid);
  }

  /** TLB entries dropped because a traced page table changed. */
  translationsInvalidated = 0;

  /** Host offset of a guest-physical address whose page is present, or -1 (no exits taken). */
  hostOffsetIfPresent(gpa: number): number {
    if (!this.isRam(gpa)) return -1;
    const entry = this.p2m.entries[Math.floor(gpa / PAGE_SIZE)]!;
    return entry < 0 ? -1 : (entry & P2M_FRAME_MASK) * PAGE_SIZE + (gpa & (PAGE_SIZE - 1));
  }

  /** Whether a read translation to gpa may be cached in a TLB. */
  mayCacheRead(gpa: number): boolean {
    return (this.p2m.entries[Math.floor(gpa / PAGE_SIZE)]! & P2M_READ_BLOCKING) === 0;
  }

  /** Whether a write translation may be cached: no protection flag and no decoded code. */
  mayCacheWrite(gpa: number, frame: number): boolean {
    const gpn = Math.floor(gpa / PAGE_SIZE);
    const entry = this.p2m.entries[gpn]!;
    if (entry < 0 || (entry & P2M_WRITE_BLOCKING) !== 0 || this.decodeCache.isDecoded(frame)) return false;
    // During a snapshot epoch a page may be written directly only once it has been claimed.
    return this.epochHook === null || this.pageEpoch![gpn] === this.epoch;
  }

  // ---------------------------------------------------------------------------------------------
  // Snapshot write barrier (T-12)

  /**
   * Starts a write epoch: from now on the first write to each page calls `hook` with the page's
   * frame before the write lands, unless the page was claimed first (claimPage). Costs one pass
   * over the vCPUs' filled write entries, not over guest memory.
   */
  beginWriteEpoch(hook: EpochWriteHook): number {
    if (this.epochHook !== null) throw new KernelError('BV_EPOCH_ACTIVE', `${this.name}: a snapshot epoch is already running`);
    this.pageEpoch ??= new Int32Array(this.p2m.pageCount);
    this.epoch++;
    this.epochHook = hook;
    for (const vcpu of this.vcpus) vcpu.tlb.flushWrites();
    return this.epoch;
  }

  /**
   * Claims a page for the running epoch before any guest write: returns true if the caller is
   * first (it may now save the page's current contents), false if a write already claimed it.
   */
  claimPage(gpn: number): boolean {
    if (this.epochHook === null || this.pageEpoch![gpn] === this.epoch) return false;
    this.pageEpoch![gpn] = this.epoch;
    return true;
  }

  endWriteEpoch(): void {
    this.epochHook = null;
  }

  get writeEpochActive(): boolean {
    return this.epochHook !== null;
  }

  private claimForWrite(gpn: number, frame: number): void {
    if (this.pageEpoch![gpn] === this.epoch) return;
    this.pageEpoch![gpn] = this.epoch;
    this.epochHook!(gpn, frame);
  }

  // ---------------------------------------------------------------------------------------------
  // Copy-on-write and fork (T-13)

  /** Resolves a write to a copy-on-write page: a private copy if shared, else just the flag. */
  private breakCopyOnWrite(gpn: number, entry: number): void {
    const frame = entry & P2M_FRAME_MASK;
    if (this.pool.refCount[frame]! > 1) {
      const copy = this.pool.allocFrame();
      this.pool.u8.copyWithin(copy * PAGE_SIZE, frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE);
      this.setP2mEntry(gpn, P2mEntry.present(copy, entry & P2M_FLAG_MASK & ~P2mFlag.COPY_ON_WRITE));
    } else {
      this.unprotectPage(gpn, P2mFlag.COPY_ON_WRITE);
    }
    this.cowCopies++;
  }

  /** Copy-on-write faults resolved. */
  cowCopies = 0;

  /**
   * Shares every present frame of this VM with `child` copy-on-write (both sides marked), and
   * copies untouched entries. Other absent states cannot be shared and are refused up front.
   */
  shareMemoryWith(child: Vm): void {
    if (child.p2m.pageCount !== this.p2m.pageCount) throw new KernelError('BV_FORK', 'fork: child memory size differs');
    this.fillAllRegions();
    const entries = this.p2m.entries;
    const unshareable = firstUnshareable(entries);
    if (unshareable >= 0) {
      throw new KernelError('BV_FORK', `fork: guest page ${unshareable} is ${P2mEntry.describe(entries[unshareable]!)}; only present or untouched pages can be shared`);
    }
    child.pristine = false;
    child.framesHeld += shareEntries(entries, child.p2m.entries, this.pool.refCount);
    this.regionRun.fill(REGION_UNKNOWN);
    // Parent writes must now fault: drop its write translations (reads stay valid).
    for (const vcpu of this.vcpus) vcpu.tlb.flushWrites();
  }

  // ---------------------------------------------------------------------------------------------
  // State (checkpoints, fork)

  /** Registers a component whose state travels with checkpoints and forks. */
  registerState(name: string, component: StatefulComponent): void {
    if (this.components.has(name)) throw new KernelError('BV_DUPLICATE_STATE', `${this.name}: state '${name}' is already registered`);
    this.components.set(name, component);
  }

  captureState(): VmState {
    const components: VmState['components'] = {};
    for (const [name, component] of this.components) components[name] = { version: component.version, state: component.save() };
    return {
      config: { name: this.name, memoryBytes: this.memoryBytes, vcpus: this.vcpus.length, mmu: this.mmuOptions, largePages: this.largePagePolicy },
      vcpus: this.vcpus.map((vcpu) => vcpu.saveState()),
      components,
    };
  }

  /** Restores CPU and component state; memory is the caller's business. */
  restoreState(state: VmState): void {
    if (state.config.memoryBytes !== this.memoryBytes || state.vcpus.length !== this.vcpus.length) {
      throw new KernelError('BV_STATE_MISMATCH', `${this.name}: state is for ${state.config.memoryBytes} bytes and ${state.vcpus.length} vCPUs, this VM has ${this.memoryBytes} and ${this.vcpus.length}`);
    }
    for (const [name, saved] of Object.entries(state.components)) {
      const component = this.components.get(name);
      if (!component) throw new KernelError('BV_STATE_MISMATCH', `${this.name}: saved state has component '${name}' that this VM lacks`);
      if (component.version !== saved.version) throw new KernelError('BV_STATE_MISMATCH', `${this.name}: component '${name}' is version ${component.version}, saved state is version ${saved.version}`);
    }
    state.vcpus.forEach((vcpuState, index) => this.vcpus[index]!.loadState(vcpuState));
    for (const [name, saved] of Object.entries(state.components)) this.components.get(name)!.restore(saved.state, saved.version);
  }

  /** A store hit a frame with decoded code. Returns true when the decoded page was dropped. */
  noteCodeWrite(frame: number, pageOffset: number): boolean {
    this.exits.codeWrites++;
    return this.decodeCache.noteWrite(frame, pageOffset, this.pool.i32);
  }

  hostOffsetForRead(gpa: number): number {
    if (!this.isRam(gpa)) return -1;
    const gpn = Math.floor(gpa / PAGE_SIZE);
    let entry = this.p2m.entries[gpn]!;
    if (entry < 0) entry = this.resolveAbsent(gpn, entry, Access.READ);
    if (entry < 0) return -1;
    return (entry & P2M_FRAME_MASK) * PAGE_SIZE + (gpa & (PAGE_SIZE - 1));
  }

  hostOffsetForWrite(gpa: number): number {
    if (!this.isRam(gpa)) return -1;
    const gpn = Math.floor(gpa / PAGE_SIZE);
    let entry = this.p2m.entries[gpn]!;
    if (entry < 0) entry = this.resolveAbsent(gpn, entry, Access.WRITE);
    if (entry < 0) return -1;
    if ((entry & P2M_RESOLVE_BEFORE_WRITE) !== 0) entry = this.resolveWriteProtect(gpn, entry);
    if (this.epochHook !== null) this.claimForWrite(gpn, entry & P2M_FRAME_MASK);
    return (entry & P2M_FRAME_MASK) * PAGE_SIZE + (gpa & (PAGE_SIZE - 1));
  }

  /**
   * Host offset of a guest-physical word the MMU is about to update (A/D bits): like
   * hostOffsetForWrite, and a decoded copy of the frame is patched in place rather than dropped,
   * because the interpreter may be executing from it.
   */
  hostOffsetForPageTableWrite(gpa: number): number {
    const hostOffset = this.hostOffsetForWrite(gpa);
    if (hostOffset >= 0) {
      const frame = Math.floor(hostOffset / PAGE_SIZE);
      if (this.decodeCache.isDecoded(frame)) this.pendingCodePatch = hostOffset;
    }
    return hostOffset;
  }

  /** A word the MMU updated inside a decoded frame; re-decoded after the update lands. */
  pendingCodePatch = -1;

  /** Re-decodes the word recorded by hostOffsetForPageTableWrite, if any. */
  flushCodePatch(): void {
    const hostOffset = this.pendingCodePatch;
    if (hostOffset < 0) return;
    this.pendingCodePatch = -1;
    this.decodeCache.noteWrite(Math.floor(hostOffset / PAGE_SIZE), hostOffset % PAGE_SIZE, this.pool.i32, false);
  }

  /** Reads guest-physical RAM (devices, tools). Throws for addresses outside RAM. */
  readPhysical(gpa: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const at = gpa + done;
      const chunk = Math.min(length - done, PAGE_SIZE - (at % PAGE_SIZE));
      const hostOffset = this.hostOffsetForRead(at);
      if (hostOffset < 0) throw new KernelError('BV_BAD_GPA', `guest-physical 0x${at.toString(16)} is not readable RAM of ${this.name}`);
      out.set(this.pool.u8.subarray(hostOffset, hostOffset + chunk), done);
      done += chunk;
    }
    return out;
  }

  /**
   * Writes guest-physical RAM (loader, devices). Throws for addresses outside RAM. Decoded code in
   * the written frames is dropped, so callers that run inside a vCPU exit (MMIO, hypercalls)
   * return to the interpreter through a resync, as they do.
   */
  writePhysical(gpa: number, bytes: Uint8Array): void {
    for (let done = 0; done < bytes.length; ) {
      const at = gpa + done;
      const chunk = Math.min(bytes.length - done, PAGE_SIZE - (at % PAGE_SIZE));
      const hostOffset = this.hostOffsetForWrite(at);
      if (hostOffset < 0) throw new KernelError('BV_BAD_GPA', `guest-physical 0x${at.toString(16)} is not writable RAM of ${this.name}`);
      const frame = Math.floor(hostOffset / PAGE_SIZE);
      if (this.decodeCache.isDecoded(frame)) this.decodeCache.drop(frame);
      if (this.isTraced(at)) this.mmu.zapPage(Math.floor(at / PAGE_SIZE));
      this.pool.u8.set(bytes.subarray(done, done + chunk), hostOffset);
      done += chunk;
    }
  }

  /**
   * Reads guest-virtual memory as `vcpu` currently sees it (for hypercalls). Returns null when a
   * page is not mapped for reading; no trap is taken.
   */
  readVirtual(vcpu: Vcpu, va: number, length: number, access: AccessKind = Access.READ): Uint8Array | null {
    // The length often comes from a guest register: refuse before allocating.
    if (!Number.isInteger(length) || length < 0 || length > MAX_VIRTUAL_READ) return null;
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const at = (va + done) >>> 0;
      const chunk = Math.min(length - done, PAGE_SIZE - (at % PAGE_SIZE));
      let gpa = at;
      if (vcpu.pagingEnabled) {
        if (!this.mmu.translate(vcpu, at | 0, access)) return null;
        gpa = this.mmu.gpa;
      }
      const hostOffset = this.hostOffsetForRead(gpa);
      if (hostOffset < 0) return null;
      out.set(this.pool.u8.subarray(hostOffset, hostOffset + chunk), done);
      done += chunk;
    }
    return out;
  }

  /** The instruction word at a virtual pc (for traces and illegal-instruction values). */
  readInstructionWordAt(vcpu: Vcpu, pc: number): number {
    const bytes = this.readVirtual(vcpu, pc, 4, Access.EXEC); // execute-only pages hold code too
    return bytes ? (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) : 0;
  }

  mmioRead(vcpu: Vcpu, gpa: number): number {
    this.exits.mmio++;
    return this.bus.read(vcpu, gpa);
  }

  /** Writes an MMIO word; false when the device refuses it (the store becomes an access fault). */
  mmioWrite(vcpu: Vcpu, gpa: number, value: number): boolean {
    this.exits.mmio++;
    return this.bus.write(vcpu, gpa, value);
  }

  private resolveAbsent(gpn: number, entry: number, access: AccessKind): number {
    if (this.pendingRegions !== null && entry === UNTOUCHED_ENTRY) {
      entry = this.p2mEntryOf(gpn); // a deferred region: its entries first
      if (entry >= 0) return entry;
    }
    const state = P2mEntry.state(entry);
    const name = ABSENT_STATE_NAMES[state] ?? 'invalid';
    this.exits.absent[name] = (this.exits.absent[name] ?? 0) + 1;
    const handler = this.absentHandlers.get(state);
    if (handler) handler(this, gpn, entry, access);
    return this.p2m.entries[gpn]!;
  }

  private resolveWriteProtect(gpn: number, entry: number): number {
    for (const [flag, name] of WRITE_PROTECT_FLAGS) {
      if ((entry & flag & P2M_RESOLVE_BEFORE_WRITE) === 0) continue;
      this.exits.writeProtect[name] = (this.exits.writeProtect[name] ?? 0) + 1;
      const handler = this.writeProtectHandlers.get(flag);
      if (!handler) throw new KernelError('BV_UNHANDLED_PROTECTION', `${this.name}: write to guest page ${gpn} protected by '${name}' and no handler is registered`);
      handler(this, gpn, entry);
      entry = this.p2m.entries[gpn]!;
      if (entry < 0 || (entry & flag) !== 0) throw new KernelError('BV_UNHANDLED_PROTECTION', `${this.name}: the '${name}' handler left guest page ${gpn} protected`);
    }
    return entry;
  }

  // ---------------------------------------------------------------------------------------------
  // Hypercalls, stops, traps

  hypercall(vcpu: Vcpu): void {
    this.exits.hypercall++;
    const handler = this.hypercalls.get(vcpu.regs[Reg.A0]!);
    if (!handler) {
      vcpu.regs[Reg.A0] = HcallStatus.UNKNOWN_CALL;
      return;
    }
    handler(vcpu);
  }

  /** Powers the VM off with an exit code (power device, EXIT hypercall). */
  powerOff(exitCode: number): void {
    if (this.stopCode !== StopCode.RUNNING) return;
    this.stopCode = StopCode.HALTED;
    this.stopReason = { kind: 'halted', exitCode: exitCode | 0 };
  }

  /** Stops the VM because of something the guest did that has no architectural outcome. */
  guestError(vcpu: Vcpu, message: string): void {
    if (this.stopCode !== StopCode.RUNNING) return;
    this.stopCode = StopCode.GUEST_ERROR;
    this.stopReason = { kind: 'guest-error', message, vcpu: vcpu.id, pc: vcpu.pc >>> 0 };
  }

  /** Stops the VM because the host failed (a handler threw, memory ran out). */
  hostError(message: string, error?: unknown): void {
    if (this.stopCode === StopCode.HOST_ERROR) return;
    this.stopCode = StopCode.HOST_ERROR;
    this.stopReason = { kind: 'host-error', message, error };
  }

  /** Asks the VM to stop at the next exit (for checkpoints, debugging); `resume()` undoes it. */
  pause(reason: string): void {
    if (this.stopCode !== StopCode.RUNNING) return;
    this.stopCode = StopCode.PAUSED;
    this.stopReason = { kind: 'paused', reason };
  }

  resume(): void {
    if (this.stopCode !== StopCode.PAUSED) return;
    this.stopCode = StopCode.RUNNING;
    this.stopReason = { kind: 'running' };
  }

  /** A trap with no trap vector installed: the VM stops with a guest error naming it. */
  unhandledTrap(vcpu: Vcpu, cause: number, tval: number): void {
    const interrupt = (cause & CAUSE_INTERRUPT) !== 0;
    this.guestError(
      vcpu,
      `unhandled ${interrupt ? 'interrupt' : 'trap'} on vCPU ${vcpu.id}: ${describeCause(cause)} at pc 0x${(vcpu.pc >>> 0).toString(16)}` +
        (interrupt ? '' : `, tval 0x${(tval >>> 0).toString(16)}`) + ' (no trap vector installed)',
    );
  }

  /**
   * Raises or lowers the external interrupt line. Every vCPU sees it; a guest routes it by
   * enabling it in one vCPU's `ie`. Waiting vCPUs notice at their next turn (wakeable).
   */
  setExternalInterrupt(pending: boolean): void {
    for (const vcpu of this.vcpus) vcpu.setInterruptPending(Irq.EXTERNAL, pending);
  }

  /** Sets the software interrupt of each vCPU whose bit is set in `mask`. */
  sendIpi(mask: number): void {
    for (const vcpu of this.vcpus) {
      if ((mask >>> vcpu.id) & 1) vcpu.setInterruptPending(Irq.SOFT, true);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Images and reset

  /** Loads a guest image into RAM and points every vCPU at its entry. */
  loadImage(image: GuestImage): void {
    for (const segment of image.segments) {
      if (segment.gpa + segment.memSize > this.memoryBytes) {
        throw new KernelError(
          'BV_IMAGE_DOES_NOT_FIT',
          `segment ${segment.name ?? ''} at 0x${segment.gpa.toString(16)}..0x${(segment.gpa + segment.memSize).toString(16)} does not fit in ${this.memoryBytes / 1024} KiB of guest RAM`,
        );
      }
    }
    for (const segment of image.segments) {
      this.writePhysical(segment.gpa, segment.data);
      // Zero fill beyond the file bytes is free: untouched pages are zero and touched ones were
      // written from the file; clear the tail of a partially filled page explicitly.
      const fileEnd = segment.gpa + segment.data.length;
      const memEnd = segment.gpa + segment.memSize;
      const tailEnd = Math.min(memEnd, Math.ceil(fileEnd / PAGE_SIZE) * PAGE_SIZE);
      if (tailEnd > fileEnd) this.writePhysical(fileEnd, new Uint8Array(tailEnd - fileEnd));
    }
    this.image = image;
    for (const vcpu of this.vcpus) vcpu.reset(image.entry, GuestPhys.DEVICE_TABLE);
  }

  /** Resets the VM: RAM back to the loaded image, vCPUs and devices to their reset state. */
  reset(): void {
    // Hooks first: devices clear their state, services release what the P2M still names
    // (swap slots, checkpoint blocks) while they can still see it.
    for (const hook of this.resetHooks) hook();
    for (const vcpu of this.vcpus) vcpu.tlb.flushAll(); // so the P2M resets below find nothing to shoot down
    // Every page back to untouched, absent ones too: a swapped or lazy page must not bring old
    // contents back after a reset.
    for (let gpn = 0; gpn < this.p2m.pageCount; gpn++) {
      if (this.p2m.entries[gpn] !== UNTOUCHED_ENTRY) this.setP2mEntry(gpn, UNTOUCHED_ENTRY);
    }
    this.mmu = new Mmu(this, this.mmuOptions); // nothing is traced any more
    this.pendingRegions = null; // RAM is back to the image: nothing is deferred any more
    this.regionFiller = null;
    this.accessed.fill(0);
    this.regionRun.fill(REGION_UNKNOWN);
    this.superpageSeen.fill(0);
    this.stopCode = StopCode.RUNNING;
    this.stopReason = { kind: 'running' };
    if (this.image) this.loadImage(this.image);
    else for (const vcpu of this.vcpus) vcpu.reset(0, GuestPhys.DEVICE_TABLE);
  }

  /** Releases every frame this VM holds. */
  destroy(): void {
    for (let gpn = 0; gpn < this.p2m.pageCount; gpn++) {
      const entry = this.p2m.entries[gpn]!;
      if (entry >= 0) {
        this.p2m.entries[gpn] = P2mEntry.absent(AbsentState.UNTOUCHED);
        this.framesHeld--;
        this.releaseFrame(entry & P2M_FRAME_MASK);
      }
    }
    this.stopCode = StopCode.HOST_ERROR;
    this.stopReason = { kind: 'host-error', message: 'VM destroyed' };
    for (const vcpu of this.vcpus) this.tlbs.release(vcpu.tlb);
  }

  /** Sum of retired instructions over all vCPUs. */
  get instructionsRetired(): number {
    let total = 0;
    for (const vcpu of this.vcpus) total += vcpu.instret;
    return total;
  }
}

/** Index of the first entry that is absent for a reason other than "untouched", or -1. */
function firstUnshareable(entries: Int32Array): number {
  for (let gpn = 0; gpn < entries.length; gpn++) {
    const entry = entries[gpn]!;
    if (entry < 0 && entry !== UNTOUCHED_ENTRY) return gpn;
  }
  return -1;
}

/**
 * Marks every present entry copy-on-write on both sides and takes a frame reference for the
 * child; returns how many pages are now shared. (A small function of its own so that V8
 * optimises the loop on its own: inside a larger method it was compiled on-stack, then thrown
 * away at the code after the loop, and fork stayed ~20x slower.)
 */
const COW_FLAG = P2mFlag.COPY_ON_WRITE;
const TRACED_FLAG = P2mFlag.TRACED;

function shareEntries(parent: Int32Array, child: Int32Array, refCount: Int32Array): number {
  const cow = COW_FLAG;
  const traced = TRACED_FLAG;
  let shared = 0;
  for (let gpn = 0; gpn < parent.length; gpn++) {
    const entry = parent[gpn]!;
    if (entry < 0) continue;
    refCount[entry & P2M_FRAME_MASK]!++;
    parent[gpn] = entry | cow;
    child[gpn] = (entry & ~traced) | cow; // the child's MMU traces nothing yet
    shared++;
  }
  return shared;
}
