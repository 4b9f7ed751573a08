/**
 * A virtual machine: its guest memory (GuestMemory, kernel/memory), its vCPUs, its MMU, its MMIO
 * bus and the exits that services and devices register for (ExitRouter, kernel/exits.ts), and its
 * lifecycle and state (load, reset, pause, stop; capture and restore for checkpoints and fork).
 *
 * Exits: every guest access that cannot complete on the fast path reaches the VM. An absent page
 * or a write to a protected page goes to guest memory, which calls the resolver registered for
 * that state or flag; MMIO and `hcall` go to the exit router. A resolver settles the exit and the
 * instruction continues exactly; what nobody resolves becomes a guest trap or a VM stop.
 */
import { Cause, CAUSE_INTERRUPT, describeCause, GuestPhys, Hcall, HcallStatus, Irq, PAGE_SIZE, Reg } from '../guest-isa/arch.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { Vcpu } from './cpu/vcpu.ts';
import type { VcpuState } from './cpu/vcpu.ts';
import type { VcpuHost } from './cpu/vcpu-host.ts';
import type { DecodeCache } from './cpu/decode-cache.ts';
import type { Tier } from './cpu/jit/jit.ts';
import { KernelError, OutOfHostMemoryError, PageWaitError } from './errors.ts';
import { ExitRouter } from './exits.ts';
import type { HypercallHandler } from './exits.ts';
import type { FramePool } from './memory/frame-pool.ts';
import type { ZeroedArena } from './memory/zeroed-arena.ts';
import { GuestAccessError, GuestMemory, ReservedStateError } from './memory/guest-memory.ts';
import { AbsentState } from './memory/p2m.ts';
import type { GuestMemoryHost, LargePagePolicy } from './memory/guest-memory.ts';
import type { Gpa, Gva } from './memory/addresses.ts';
import { checkDeviceLayout, MmioBus, parseDeviceLayout } from './mmio.ts';
import type { DeviceDescriptor, DeviceWindowLayout, MmioDevice } from './mmio.ts';
import { Access } from './mmu/sv32.ts';
import type { AccessKind } from './mmu/sv32.ts';
import type { TlbProvider } from './mmu/tlb.ts';
import { Mmu } from './mmu/shadow.ts';
import type { MmuHost, MmuOptions } from './mmu/shadow.ts';

export type { HypercallHandler } from './exits.ts';
export type { LargePagePolicy, LargePageStats } from './memory/guest-memory.ts';

/** How a VM stopped (Vm.stopReason), or `running` while it has not. */
export type StopReason =
  | {
    /** Not stopped: run it. */
    kind: 'running';
  }
  | {
    /** Powered off by the guest (power device or EXIT hypercall). */
    kind: 'halted';
    /** The guest's exit code (a 32-bit signed value). */
    exitCode: number;
  }
  | {
    /** The guest did something with no architectural outcome (e.g. a trap with no trap vector). */
    kind: 'guest-error';
    /** What happened, for people. */
    message: string;
    /** The vCPU (Vcpu.id) that did it. */
    vcpu: number;
    /** Its guest-virtual pc at the time (unsigned). */
    pc: number;
  }
  | {
    /** The host failed: a resolver, device or handler threw, host memory ran out, a reserved state had no resolver. */
    kind: 'host-error';
    /** What failed, for people. */
    message: string;
    /** The value thrown, when there was one (often a BvError with a code). */
    error?: unknown;
  }
  | {
    /** Vm.pause was called (checkpoints, a device's reset request); Vm.resume undoes it. */
    kind: 'paused';
    /** The reason given to pause. */
    reason: string;
  };

/** How a guest-error stop from a machine check inside a machine-check handler begins (SPEC.md §7.6). */
export const DOUBLE_MACHINE_CHECK = 'double machine check';

/** The pause reason of a VM waiting for a host frame (Vm.onHostMemoryExhausted). */
export const HOST_MEMORY_WAIT_REASON = 'waiting for host memory: a guest access needed a frame and the host pool had none';

/**
 * Vm.stopCode values: the numeric form of StopReason's kind, which the interpreter tests after
 * every exit.
 */
export const StopCode = {
  /** Running. */
  RUNNING: 0,
  /** Powered off ('halted'). */
  HALTED: 1,
  /** Stopped by a guest error ('guest-error'). */
  GUEST_ERROR: 2,
  /** Stopped by a host failure ('host-error'), or destroyed. */
  HOST_ERROR: 3,
  /** Paused ('paused'). */
  PAUSED: 4,
} as const;

/** A VM's configuration (what createVm takes and what a checkpoint records). */
export interface VmConfig {
  /** A name for messages and stats (default `vm<id>`). */
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
  /**
   * Execution tier: 'interp' (the interpreter) or 'jit' (hot code compiled to JavaScript, same
   * results instruction for instruction). Default 'jit', or 'interp' with BV_TIER=interp in the environment.
   */
  tier?: Tier;
}

/** A device's (or service's) state hooks for checkpoints and fork. */
export interface StatefulComponent {
  /** Bumped whenever the saved form changes; a mismatch refuses the restore (unless readsVersions lists the saved one). */
  version: number;
  /** Older versions check and restore still read (they get the saved version). */
  readsVersions?: readonly number[];
  /** Plain data (JSON-serialisable) or bytes. */
  save(): unknown;
  /**
   * Checks a saved state (it may come from a damaged or edited file) without changing anything:
   * throws a typed error (a BvError) naming the component and the bad field. restoreState calls
   * every component's check before it restores anything.
   */
  check?(state: unknown, version: number): void;
  /** Puts the component back in the saved state (after check passed for every component). */
  restore(state: unknown, version: number): void;
}

/** Everything but memory: what a checkpoint or a fork copies besides pages. */
export interface VmState {
  /** The configuration the VM was created with (what a restore creates the new VM from). */
  config: {
    /** The VM's name. */
    name: string;
    /** Guest RAM in bytes. */
    memoryBytes: number;
    /** Number of vCPUs. */
    vcpus: number;
    /** MMU options, as given to createVm. */
    mmu?: MmuOptions;
    /** The large-page policy in force. */
    largePages: LargePagePolicy;
  };
  /** Each vCPU's architectural state, by vCPU index. */
  vcpus: VcpuState[];
  /** Each registered component's (device's, service's) saved state, by registration name. */
  components: Record<string, {
    /** The component's StatefulComponent.version when saved. */
    version: number;
    /** What its save() returned. */
    state: unknown;
  }>;
  /** The device windows in device-table order: a restore or fork refuses a VM laid out otherwise. */
  layout: DeviceWindowLayout[];
  /**
   * Guest pages holding an uncorrectable memory error nobody repaired (POISONED), when there are
   * any: a checkpoint stores no bytes for them and a restore poisons them again, so the restored
   * guest takes the machine check the saved one would have.
   */
  poisonedPages?: number[];
}

/** Every exit counter of a VM (memory exits and routed exits together, for stats). */
export interface ExitCounts {
  /** Accesses to absent pages, by absent-state name ('untouched', 'lazy', 'swapped', …). */
  absent: Record<string, number>;
  /** Writes to protected pages, by protection-flag name ('copy-on-write', 'checkpoint', …). */
  writeProtect: Record<string, number>;
  /** Loads and stores that reached a device window. */
  mmio: number;
  /** `hcall` instructions executed. */
  hypercall: number;
  /** Exits turned into guest traps (a page nobody could produce: machine check). */
  trapToGuest: number;
  /** Accesses that needed a host frame when the pool had none, and paused the VM to wait (Vm.onHostMemoryExhausted). */
  hostMemoryWaits: number;
  /** Stores that hit a host frame holding decoded code (self-modifying code, loaders). */
  codeWrites: number;
}

/** Largest guest-virtual read a host component may ask for (readVirtual). */
const MAX_VIRTUAL_READ = 16 * 1024 * 1024;
const MAX_RAM = GuestPhys.DEVICE_TABLE;

/** @internal What a Vm needs from its hypervisor. */
export interface VmEnvironment {
  pool: FramePool;
  decodeCache: DecodeCache;
  tlbs: TlbProvider;
  /** Where per-page arrays come from. */
  arena: ZeroedArena;
  /** Drops every vCPU's translations derived from guest pages of `vm` (cross-vCPU shootdown). */
  shootdown(vm: Vm, gpns: ArrayLike<number>): void;
}

/**
 * @internal What a VM's guest memory asks of the VM (GuestMemoryHost). A class rather than an
 * object of closures: a VM is created for every fork and restore, and its construction cost counts.
 */
class VmMemoryHost implements GuestMemoryHost {
  readonly name: string;

  constructor(
    private readonly vm: Vm,
    private readonly env: VmEnvironment,
  ) {
    this.name = vm.name;
  }

  shootdown(gpns: ArrayLike<number>): void {
    this.env.shootdown(this.vm, gpns);
  }

  revokeWrites(): void {
    for (const vcpu of this.vm.vcpus) vcpu.tlb.revokeWrites();
  }

  isTracing(gpn: number): boolean {
    return this.vm.mmu.isTracing(gpn);
  }

  zapTracedPage(gpn: number): void {
    this.vm.mmu.zapPage(gpn);
  }
}

/** @internal What a VM's MMU asks of the VM (MmuHost); a class for the same reason as VmMemoryHost. */
class VmMmuHost implements MmuHost {
  readonly hostPool32: Int32Array;

  constructor(private readonly vm: Vm) {
    this.hostPool32 = vm.hostPool32;
  }

  regionRunFrame(region: number): number {
    return this.vm.memory.regionRunFrame(region);
  }

  noteSuperpage(gpaBase: number): void {
    this.vm.memory.noteSuperpage(gpaBase);
  }

  hostOffsetIfPresent(gpa: number): number {
    return this.vm.memory.hostOffsetIfPresent(gpa);
  }

  protectPage(gpn: number, flags: number): void {
    this.vm.memory.protectPage(gpn, flags);
  }

  unprotectPage(gpn: number, flags: number): void {
    this.vm.memory.unprotectPage(gpn, flags);
  }

  /** Drops, in every vCPU, TLB entries for `count` virtual pages from `firstVpn` in `asid`. */
  invalidateTranslations(asid: number, firstVpn: number, count: number): void {
    const vm = this.vm;
    for (const vcpu of vm.vcpus) vm.translationsInvalidated += vcpu.tlb.flushVpnRange(firstVpn, count, asid);
  }

  /** Drops every vCPU's TLB entries of one ASID (it now names another address space). */
  invalidateAsid(asid: number): void {
    for (const vcpu of this.vm.vcpus) vcpu.tlb.flushAsid(asid);
  }
}

/**
 * A virtual machine of a Hypervisor (create it with Hypervisor.createVm). It holds the guest's
 * memory (`memory`, a GuestMemory), its vCPUs, its MMU and its MMIO bus. Devices attach to it
 * (attachDevice, onHypercall, registerState); services register resolvers on `memory` and
 * tickers here. loadImage puts a guest in RAM; Hypervisor.run runs it; stopReason says how it
 * ended. Between runs it can be paused, reset, checkpointed (services/checkpoint) or forked
 * (Hypervisor.forkVm).
 */
export class Vm implements VcpuHost {
  /** The VM's name (VmConfig.name, or `vm<id>`), used in messages. */
  readonly name: string;
  /** A number unique within its hypervisor. */
  readonly id: number;
  /** Guest RAM in bytes: guest-physical addresses [0, memoryBytes) are RAM. */
  readonly memoryBytes: number;
  /** Guest-physical memory: the page-granular API services and devices use. */
  readonly memory: GuestMemory;
  /** The device windows (guest-physical, from 0xf0001000) and the device table; see attachDevice. */
  readonly bus: MmioBus;
  /** Hypercall and MMIO routing. */
  readonly exitRouter: ExitRouter;
  /**
   * The MMU that virtualises the guest's page tables (VmConfig.mmu): read its `mode`, `stats`,
   * `census()` and `largeMappings()`. A reset replaces it with a fresh one.
   */
  mmu: Mmu;
  /** The vCPUs, by index (Vcpu.id). */
  readonly vcpus: Vcpu[] = [];
  /** 0 while running; see StopCode. Read by the interpreter after every exit. */
  stopCode: number = StopCode.RUNNING;
  /** How the VM stopped; `{ kind: 'running' }` while it has not. */
  stopReason: StopReason = { kind: 'running' };
  /** The configuration the VM was created with (a copy). */
  readonly config: VmConfig;
  /** The guest image last loaded (loadImage, or set by a restore or fork); a reset reloads it. null before. */
  image: GuestImage | null = null;
  /** TLB entries dropped because a traced page table changed. */
  translationsInvalidated = 0;
  /**
   * What happens when a guest access needs a host frame (first touch, copy-on-write break, swap-in,
   * lazy page) and the host pool has none. null (the default): the VM stops with a host error.
   * A function: the VM pauses with HOST_MEMORY_WAIT_REASON *before* the access — the instruction
   * has not retired and runs again when the VM resumes — and the function is told, so that a
   * memory scheduler can free memory and resume the VM (ESX blocks such a VM; it does not fail it).
   * Allocations outside guest instructions (a device writing guest memory, a host operation) still fail.
   */
  onHostMemoryExhausted: ((vm: Vm) => void) | null = null;

  /** @internal The host pool's typed views (the interpreter's fast path reads through them). */
  readonly pool: FramePool;
  /** @internal */
  readonly decodeCache: DecodeCache;
  /** @internal The host pool as 32-bit words (the walker reads page-table entries from it). */
  readonly hostPool32: Int32Array;

  private readonly mmuOptions: MmuOptions | undefined;
  private readonly tickers: { every: number; next: number; run: (vm: Vm) => void }[] = [];
  private readonly components = new Map<string, StatefulComponent>();
  private readonly resetHooks: (() => void)[] = [];
  private readonly tlbs: TlbProvider;
  private readonly mmuHost: MmuHost;

  /** @internal Use Hypervisor.createVm. */
  constructor(id: number, config: VmConfig, env: VmEnvironment) {
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
    this.pool = env.pool;
    this.hostPool32 = env.pool.i32;
    this.decodeCache = env.decodeCache;
    this.tlbs = env.tlbs;
    this.memory = new GuestMemory({ memoryBytes: config.memoryBytes, largePages: config.largePages }, env.pool, env.decodeCache, env.arena, new VmMemoryHost(this, env));
    this.bus = new MmioBus(config.memoryBytes, vcpuCount);
    this.exitRouter = new ExitRouter(this.bus);
    this.mmuOptions = config.mmu;
    this.mmuHost = new VmMmuHost(this);
    this.mmu = new Mmu(this.mmuHost, config.mmu);
    for (let i = 0; i < vcpuCount; i++) this.vcpus.push(new Vcpu(this, i, env.tlbs.acquire()));
    if (config.tier !== undefined) this.setTier(config.tier);
    this.exitRouter.onHypercall(Hcall.VERSION, (vcpu) => {
      vcpu.regs[Reg.A0] = HcallStatus.OK;
      vcpu.regs[Reg.A1] = 1;
    });
    for (const vcpu of this.vcpus) vcpu.reset(0, GuestPhys.DEVICE_TABLE);
  }

  /** The execution tier of the VM's vCPUs (VmConfig.tier). */
  get tier(): Tier {
    return this.vcpus[0]!.tier;
  }

  /** Changes the execution tier of every vCPU; results are the same in both, only speed differs. */
  setTier(tier: Tier): void {
    if (tier !== 'interp' && tier !== 'jit') throw new KernelError('BV_BAD_VM_CONFIG', `tier must be 'interp' or 'jit', got ${String(tier)}`);
    for (const vcpu of this.vcpus) vcpu.setTier(tier);
  }

  /** When guest regions get 4 MiB host runs (VmConfig.largePages, default 'superpages'). */
  get largePagePolicy(): LargePagePolicy {
    return this.memory.largePagePolicy;
  }

  /** Every exit counter (memory and routed exits). */
  get exits(): ExitCounts {
    const memory = this.memory.exits;
    return { absent: memory.absent, writeProtect: memory.writeProtect, codeWrites: memory.codeWrites, ...this.exitRouter.counts };
  }

  // ---------------------------------------------------------------------------------------------
  // Registration (services and devices)

  /** Registers a hypercall number (replaces the previous handler). */
  onHypercall(number: number, handler: HypercallHandler): void {
    this.exitRouter.onHypercall(number, handler);
  }

  /** Attaches an MMIO device; returns its guest-physical base. */
  attachDevice(descriptor: DeviceDescriptor, device: MmioDevice): number {
    return this.bus.attach(descriptor, device);
  }

  /** Runs on VM reset (devices clear their state). */
  onReset(hook: () => void): void {
    this.resetHooks.push(hook);
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

  /** @internal Called by the scheduler between rounds. */
  runTickers(): void {
    if (this.tickers.length === 0) return;
    const now = this.instructionsRetired;
    for (const ticker of [...this.tickers]) {
      if (now < ticker.next) continue;
      ticker.next = now + ticker.every;
      ticker.run(this);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Guest memory conveniences (the page-granular API is `memory`)

  /** Reads guest-physical RAM. Throws for addresses outside RAM. */
  readPhysical(gpa: Gpa, length: number): Uint8Array {
    return this.memory.readPhysical(gpa, length);
  }

  /** Writes guest-physical RAM (loader, devices). Throws for addresses outside RAM. */
  writePhysical(gpa: Gpa, bytes: Uint8Array): void {
    this.memory.writePhysical(gpa, bytes);
  }

  /**
   * Reads guest-virtual memory as `vcpu` currently sees it (for hypercalls). Returns null when a
   * page is not mapped for reading; no trap is taken.
   */
  readVirtual(vcpu: Vcpu, va: Gva, length: number, access: AccessKind = Access.READ): Uint8Array | null {
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
      let hostOffset: number;
      try {
        hostOffset = this.memory.hostOffsetForRead(gpa);
      } catch (error) {
        if (error instanceof ReservedStateError) return null;
        if (error instanceof GuestAccessError) {
          this.guestError(vcpu, error.message); // the guest named a page it may not touch
          return null;
        }
        throw error;
      }
      if (hostOffset < 0) return null;
      out.set(this.pool.u8.subarray(hostOffset, hostOffset + chunk), done);
      done += chunk;
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // The vCPU's and the MMU's side of guest memory (kernel-internal)

  /** @internal */
  isRam(gpa: number): boolean {
    return gpa >= 0 && gpa < this.memoryBytes;
  }

  /** @internal */
  fileRangeFrame(gpa: number): number {
    return this.memory.fileRangeFrame(gpa);
  }

  /** @internal */
  noteFileRangeStore(gpa: number): void {
    this.memory.noteFileRangeStore(gpa);
  }

  /** @internal */
  mayCacheFileRangeWrite(gpa: number): boolean {
    return this.memory.mayCacheFileRangeWrite(gpa);
  }

  /** @internal */
  isMmio(gpa: number): boolean {
    return this.bus.contains(gpa);
  }

  /**
   * @internal The frame for a guest-physical RAM access, resolving absent states (and, for
   * writes, protections). Returns -1 when the access cannot be satisfied: a trap has been taken
   * on vcpu, or the VM stopped.
   */
  frameForAccess(vcpu: Vcpu, gpa: number, access: AccessKind, va: number): number {
    let frame: number;
    try {
      frame = this.memory.resolveFrame(Math.floor(gpa / PAGE_SIZE), access);
    } catch (error) {
      if (error instanceof GuestAccessError) {
        // The resolver says the guest may not touch this page (GuestAccessError): its fault.
        this.guestError(vcpu, error.message);
        return -1;
      }
      if (error instanceof OutOfHostMemoryError && this.waitForHostMemory()) return -1;
      if (error instanceof PageWaitError) return this.waitForPage(error);
      if (!(error instanceof ReservedStateError)) throw error;
      // A state or flag nobody resolves yet: the host is not set up for it. Stop, naming it.
      this.hostError(error.message, error);
      return -1;
    }
    if (frame < 0) {
      // The resolver refused (e.g. a poisoned page it cannot rebuild): the guest sees a machine check.
      vcpu.trap(Cause.MACHINE_CHECK, va);
    }
    return frame;
  }

  /**
   * @internal An access found the host pool empty. With onHostMemoryExhausted set, pauses the VM
   * (the interpreter then leaves the instruction unretired, to run again) and returns true.
   */
  waitForHostMemory(): boolean {
    const handler = this.onHostMemoryExhausted;
    if (handler === null || this.stopCode !== StopCode.RUNNING) return false;
    this.pause(HOST_MEMORY_WAIT_REASON);
    this.exitRouter.counts.hostMemoryWaits++;
    handler(this);
    return true;
  }

  /**
   * @internal A resolver asked the vCPU to wait for a page (PageWaitError): the VM pauses with the
   * error's reason before the access (the instruction runs again once it is resumed). Returns -1.
   */
  waitForPage(error: PageWaitError): number {
    this.pause(error.reason);
    return -1;
  }

  /** @internal A TLB fill for a guest page (every access the TLB does not serve comes here). */
  markAccessed(gpn: number): void {
    const memory = this.memory;
    memory.accessed[gpn] = 1;
    if (memory.watchedPages !== 0 && memory.watchBits[gpn] !== 0) memory.watchedAccess(gpn);
  }

  /** @internal */
  mayCacheRead(gpa: number): boolean {
    return this.memory.mayCacheRead(gpa);
  }

  /** @internal */
  mayCacheWrite(gpa: number, frame: number): boolean {
    return this.memory.mayCacheWrite(gpa, frame);
  }

  /** @internal */
  isTraced(gpa: number): boolean {
    return this.memory.isTraced(gpa);
  }

  /** @internal A guest store changed a word of a traced page: the MMU drops what derived from it. */
  tracedWrite(gpa: number, oldWord: number, newWord: number): void {
    this.mmu.tracedWrite(Math.floor(gpa / PAGE_SIZE), gpa & (PAGE_SIZE - 1) & ~3, oldWord, newWord);
  }

  /** @internal A store hit a frame with decoded code. Returns true when the decoded page was dropped. */
  noteCodeWrite(frame: number, pageOffset: number): boolean {
    this.memory.exits.codeWrites++;
    return this.decodeCache.noteWrite(frame, pageOffset, this.pool.i32);
  }

  /** @internal */
  hostOffsetForRead(gpa: number): number {
    return this.memory.hostOffsetForRead(gpa);
  }

  /** @internal */
  hostOffsetIfPresent(gpa: number): number {
    return this.memory.hostOffsetIfPresent(gpa);
  }

  /**
   * @internal Host offset of a guest-physical word the MMU is about to update (A/D bits): like
   * a write, and a decoded copy of the frame is patched in place rather than dropped, because
   * the interpreter may be executing from it.
   */
  hostOffsetForPageTableWrite(gpa: number): number {
    const hostOffset = this.memory.hostOffsetForWrite(gpa);
    if (hostOffset >= 0) {
      const frame = Math.floor(hostOffset / PAGE_SIZE);
      if (this.decodeCache.isDecoded(frame)) this.pendingCodePatch = hostOffset;
    }
    return hostOffset;
  }

  /** A word the MMU updated inside a decoded frame; re-decoded after the update lands. */
  private pendingCodePatch = -1;

  /** @internal Re-decodes the word recorded by hostOffsetForPageTableWrite, if any. */
  flushCodePatch(): void {
    const hostOffset = this.pendingCodePatch;
    if (hostOffset < 0) return;
    this.pendingCodePatch = -1;
    this.decodeCache.noteWrite(Math.floor(hostOffset / PAGE_SIZE), hostOffset % PAGE_SIZE, this.pool.i32, false);
  }

  /** @internal The instruction word at a virtual pc (for traces and illegal-instruction values). */
  readInstructionWordAt(vcpu: Vcpu, pc: number): number {
    const bytes = this.readVirtual(vcpu, pc, 4, Access.EXEC); // execute-only pages hold code too
    return bytes ? (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) : 0;
  }

  /** @internal */
  mmioRead(vcpu: Vcpu, gpa: number): number {
    return this.exitRouter.mmioRead(vcpu, gpa);
  }

  /** @internal */
  mmioWrite(vcpu: Vcpu, gpa: number, value: number): boolean {
    return this.exitRouter.mmioWrite(vcpu, gpa, value);
  }

  /** @internal */
  hypercall(vcpu: Vcpu): void {
    this.exitRouter.hypercall(vcpu);
  }

  /**
   * @internal Hypervisor.forkVm: makes `child` (created for this purpose, its devices attached,
   * never run) this VM as it stands: memory shared copy-on-write, vCPU and component state
   * copied. Checked first, changing nothing when refused: what the child can differ in (its
   * components and their versions, their own checks of the state, the device layout; the
   * hypervisor made it from this VM's configuration, so size and vCPUs match).
   * The vCPUs are copied field to field and the layout compared as it is, with no saved form in
   * between: a state this VM holds needs no parsing. Between runs only.
   */
  forkInto(child: Vm): void {
    const components = this.saveComponents();
    child.checkComponents(components, this.bus.layout());
    this.memory.forkInto(child.memory);
    child.image = this.image;
    for (let index = 0; index < this.vcpus.length; index++) child.vcpus[index]!.copyStateFrom(this.vcpus[index]!);
    child.restoreComponents(components);
  }

  // ---------------------------------------------------------------------------------------------
  // State (checkpoints, fork)

  /** Registers a component whose state travels with checkpoints and forks. */
  registerState(name: string, component: StatefulComponent): void {
    if (this.components.has(name)) throw new KernelError('BV_DUPLICATE_STATE', `${this.name}: state '${name}' is already registered`);
    this.components.set(name, component);
  }

  /**
   * Everything but memory, as plain data: configuration, vCPU states, every registered
   * component's saved state and the device layout. Checkpoints and forks start here. Between
   * runs only.
   */
  captureState(): VmState {
    const components = this.saveComponents();
    const state: VmState = {
      config: { name: this.name, memoryBytes: this.memoryBytes, vcpus: this.vcpus.length, mmu: this.mmuOptions, largePages: this.largePagePolicy },
      vcpus: this.vcpus.map((vcpu) => vcpu.saveState()),
      components,
      layout: this.bus.layout(),
    };
    if (this.memory.countInState(AbsentState.POISONED) > 0) state.poisonedPages = this.memory.poisonedPages();
    return state;
  }

  /**
   * Checks that `state` can be restored into this VM, changing nothing: the same memory size and
   * vCPU count, a registered component of the same version for each saved one, the same device
   * layout (DeviceLayoutError otherwise), and each component's own check of its saved state.
   * restoreState does this first; a restore from a file calls it before reading any memory.
   */
  checkState(state: VmState): void {
    if (state.config.memoryBytes !== this.memoryBytes || state.vcpus.length !== this.vcpus.length) {
      throw new KernelError('BV_STATE_MISMATCH', `${this.name}: state is for ${state.config.memoryBytes} bytes and ${state.vcpus.length} vCPUs, this VM has ${this.memoryBytes} and ${this.vcpus.length}`);
    }
    // Every vCPU is checked before any is loaded: a bad one must not leave the VM half restored.
    state.vcpus.forEach((vcpuState, index) => Vcpu.checkState(vcpuState, index));
    this.checkComponents(state.components, parseDeviceLayout(state.layout, this.name));
    const poisoned = state.poisonedPages;
    if (poisoned !== undefined) {
      const pageCount = this.memory.pageCount;
      if (!Array.isArray(poisoned) || !poisoned.every((gpn, i) => Number.isInteger(gpn) && gpn >= 0 && gpn < pageCount && (i === 0 || gpn > poisoned[i - 1]!))) {
        throw new KernelError('BV_STATE_MISMATCH', `${this.name}: poisonedPages must list guest pages 0 … ${pageCount - 1} in increasing order`);
      }
    }
  }

  /** Restores CPU and component state (after checkState); memory is the caller's business. */
  restoreState(state: VmState): void {
    this.checkState(state);
    this.restoreCheckedState(state);
  }

  /**
   * @internal restoreState without its checkState, for a caller that has just checked this very
   * state (a fork, a checkpoint restore: they check before touching memory) and changed nothing
   * in it since.
   */
  restoreCheckedState(state: VmState): void {
    for (let index = 0; index < state.vcpus.length; index++) this.vcpus[index]!.loadCheckedState(state.vcpus[index]!);
    this.restoreComponents(state.components);
    for (const gpn of state.poisonedPages ?? []) this.memory.markPoisoned(gpn);
  }

  /**
   * Checks saved component states and a device layout against this VM, changing nothing: a
   * registered component of a version it reads for each saved one, the same windows in the same
   * order, then each component's own check.
   */
  private checkComponents(components: VmState['components'], layout: readonly DeviceWindowLayout[]): void {
    for (const name of Object.keys(components)) {
      const saved = components[name]!;
      const component = this.components.get(name);
      if (!component) throw new KernelError('BV_STATE_MISMATCH', `${this.name}: saved state has component '${name}' that this VM lacks`);
      if (component.version !== saved.version && !component.readsVersions?.includes(saved.version)) throw new KernelError('BV_STATE_MISMATCH', `${this.name}: component '${name}' is version ${component.version}, saved state is version ${saved.version}`);
    }
    // Device windows sit where they were attached: the saved guest knows them at those addresses.
    checkDeviceLayout(layout, this.bus.layout(), this.name);
    for (const name of Object.keys(components)) {
      const saved = components[name]!;
      this.components.get(name)!.check?.(saved.state, saved.version);
    }
  }

  /** Every registered component's saved state, with its version (captureState, forkInto). */
  private saveComponents(): VmState['components'] {
    const components: VmState['components'] = {};
    for (const [name, component] of this.components) components[name] = { version: component.version, state: component.save() };
    return components;
  }

  /** Puts back component states that checkComponents accepted. */
  private restoreComponents(components: VmState['components']): void {
    for (const name of Object.keys(components)) {
      const saved = components[name]!;
      this.components.get(name)!.restore(saved.state, saved.version);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Stops and traps

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

  /** Undoes pause: the VM runs again at its next Hypervisor.run. No effect unless paused. */
  resume(): void {
    if (this.stopCode !== StopCode.PAUSED) return;
    this.stopCode = StopCode.RUNNING;
    this.stopReason = { kind: 'running' };
  }

  /** @internal A trap with no trap vector installed: the VM stops with a guest error naming it. */
  unhandledTrap(vcpu: Vcpu, cause: number, tval: number): void {
    const interrupt = (cause & CAUSE_INTERRUPT) !== 0;
    this.guestError(
      vcpu,
      `unhandled ${interrupt ? 'interrupt' : 'trap'} on vCPU ${vcpu.id}: ${describeCause(cause)} at pc 0x${(vcpu.pc >>> 0).toString(16)}` +
        (interrupt ? '' : `, tval 0x${(tval >>> 0).toString(16)}`) + ' (no trap vector installed)',
    );
  }

  /**
   * @internal A machine check is being taken on vcpu (a data or fetch access, or a page-table walk,
   * found a page nobody could produce). Nested inside a handler (SPEC.md §7.6), the VM stops.
   */
  machineCheckTaken(vcpu: Vcpu, tval: number, nested: boolean): void {
    this.exitRouter.counts.trapToGuest++;
    if (!nested) return;
    this.guestError(
      vcpu,
      `${DOUBLE_MACHINE_CHECK}: machine check on vCPU ${vcpu.id} at pc 0x${(vcpu.pc >>> 0).toString(16)}, tval 0x${(tval >>> 0).toString(16)}, ` +
        'while the previous one was still being handled (status.MCIP set)',
    );
  }

  /**
   * Raises or lowers the external interrupt line. Every vCPU sees it; a guest routes it by
   * enabling it in one vCPU's `ie`. Waiting vCPUs notice at their next turn (wakeable).
   */
  setExternalInterrupt(pending: boolean): void {
    for (const vcpu of this.vcpus) vcpu.setInterruptPending(Irq.EXTERNAL, pending);
  }

  /** Lines claimed so far (claimInterruptLine) and the ones asserted, one bit each. */
  private interruptLinesClaimed = 0;
  private interruptLinesAsserted = 0;

  /**
   * Gives a device its own line into EXTERNAL (at most 32 per VM): EXTERNAL is pending exactly
   * while some claimed line is asserted, so devices sharing it cannot lower each other's
   * interrupt. The guest finds the source by reading each device's status, as with a wired-OR line.
   */
  claimInterruptLine(): number {
    if (this.interruptLinesClaimed === -1) throw new KernelError('BV_TOO_MANY_INTERRUPT_LINES', 'every one of the 32 interrupt lines is claimed');
    const line = 31 - Math.clz32(~this.interruptLinesClaimed & (this.interruptLinesClaimed + 1));
    this.interruptLinesClaimed |= 1 << line;
    return line;
  }

  /** Asserts or lowers one claimed line (claimInterruptLine) and recomputes EXTERNAL from them all. */
  setInterruptLine(line: number, pending: boolean): void {
    const bit = 1 << line;
    const asserted = pending ? this.interruptLinesAsserted | bit : this.interruptLinesAsserted & ~bit;
    this.interruptLinesAsserted = asserted; // (always applied: a restore may have rewritten ip)
    this.setExternalInterrupt(asserted !== 0);
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
      this.memory.writePhysical(segment.gpa, segment.data);
      // Zero fill beyond the file bytes is free: untouched pages are zero and touched ones were
      // written from the file; clear the tail of a partially filled page explicitly.
      const fileEnd = segment.gpa + segment.data.length;
      const memEnd = segment.gpa + segment.memSize;
      const tailEnd = Math.min(memEnd, Math.ceil(fileEnd / PAGE_SIZE) * PAGE_SIZE);
      if (tailEnd > fileEnd) this.memory.writePhysical(fileEnd, new Uint8Array(tailEnd - fileEnd));
    }
    this.image = image;
    for (const vcpu of this.vcpus) vcpu.reset(image.entry, GuestPhys.DEVICE_TABLE);
  }

  /** Resets the VM: RAM back to the loaded image, vCPUs and devices to their reset state. */
  reset(): void {
    // Hooks first: devices clear their state, services release what the memory still names
    // (swap slots, checkpoint blocks) while they can still see it.
    for (const hook of this.resetHooks) hook();
    for (const vcpu of this.vcpus) vcpu.tlb.flushAll(); // so nothing below has translations to shoot down
    // Every page back to untouched, absent ones too: a swapped or lazy page must not bring old
    // contents back after a reset.
    this.mmu = new Mmu(this.mmuHost, this.mmuOptions); // nothing is traced any more
    this.memory.clear();
    this.stopCode = StopCode.RUNNING;
    this.stopReason = { kind: 'running' };
    if (this.image) this.loadImage(this.image);
    else for (const vcpu of this.vcpus) vcpu.reset(0, GuestPhys.DEVICE_TABLE);
  }

  /** @internal Releases every frame this VM holds (Hypervisor.destroyVm). */
  destroy(): void {
    for (const vcpu of this.vcpus) vcpu.tlb.flushAll();
    this.memory.dispose();
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
