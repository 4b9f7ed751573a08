/**
 * GuestMemory: one VM's guest-physical memory, and the only way to reach it.
 *
 * It owns the VM's P2M (guest page → host frame, or why a page has no frame), the frames the VM
 * holds in the hypervisor's pool, copy-on-write sharing (fork, content sharing), write epochs
 * (live snapshots), the hypervisor's accessed marks, large-page runs, and the resolvers that
 * services register for absent states and protection flags. Services and devices use its
 * page-granular API (read/write/install/release/share/protect/move pages, iterate by state);
 * no code outside kernel/ sees a P2M entry, a frame number or a host offset.
 *
 * The vCPU's fast path never comes here: it hits its TLB. A TLB miss resolves the page here
 * (resolveFrame), and any change to a page's backing shoots down the TLB entries derived from it
 * before it returns.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { KernelError } from '../errors.ts';
import type { DecodeCache } from '../cpu/decode-cache.ts';
import { FRAMES_PER_RUN } from './frame-pool.ts';
import type { FramePool } from './frame-pool.ts';
import type { ZeroedArena } from './zeroed-arena.ts';
import { Access } from '../mmu/sv32.ts';
import type { AccessKind } from '../mmu/sv32.ts';
import { HOST_OFFSET_REFUSED } from './addresses.ts';
import type { FrameHandle, Gpa, HostOffset } from './addresses.ts';
import {
  ABSENT_STATE_NAMES, AbsentState, P2M_FLAG_MASK, P2M_FRAME_MASK, P2M_MAX_PAYLOAD, P2M_PER_VM_FLAGS, P2M_PRESENT_BIT, P2M_READ_BLOCKING,
  P2M_RESOLVE_BEFORE_WRITE, P2M_WRITE_BLOCKING, P2mEntry, P2mFlag, P2mGeneration, RESERVED_FLAGS, RESERVED_STATES, UNTOUCHED_ENTRY,
} from './p2m.ts';
import type { AbsentStateId } from './p2m.ts';
import { checkErrorWindow, checkPattern, corruptBits } from './poison.ts';
import { FileRanges } from './file-ranges.ts';
import type { FileRangeInfo } from './file-ranges.ts';
import type { CorruptionPattern } from './poison.ts';

/** Pages in a 4 MiB region. */
export const REGION_PAGES = 1024;
const REGION_UNKNOWN = -2;
const REGION_NOT_LARGE = -1;
/** GuestMemory.stateCounts and flagCounts lengths: absent states, and per-VM flag bits 24..29. */
const STATE_SLOTS = 8;
const FLAG_SLOTS = 6;
/** Shared empty arrays: the grown-on-demand arrays start as these (never written at length 0). */
const NO_INTS = new Int32Array(0);
const NO_BYTES = new Uint8Array(0);

/** A page's state as the API reports it: an absent state, or PRESENT. */
export const PageState = {
  ...AbsentState,
  /** The page has a host frame (its own, or shared copy-on-write). */
  PRESENT: 7,
} as const;
/** One of the PageState values. */
export type PageStateId = (typeof PageState)[keyof typeof PageState];
/** PageState names by value ('untouched', 'lazy', …, 'present'), for messages and stats. */
export const PAGE_STATE_NAMES = [...ABSENT_STATE_NAMES, 'present'] as const;

/** Access kinds (READ 0, WRITE 1, EXEC 2): the MMU's own numbering (kernel/mmu/sv32.ts Access). */
export const MemoryAccess = Access;
/** One of the MemoryAccess values: what a resolver is told the guest was doing. */
export type MemoryAccessKind = AccessKind;

/**
 * Resolves an access to an absent page of `memory`: install a page (installPage, or leave it
 * absent to refuse: the guest then takes a machine check). May throw: the VM stops with a host
 * error naming it.
 */
export type AbsentResolver = (memory: GuestMemory, gpn: number, state: AbsentStateId, payload: number, access: ResolverAccess) => void;

/**
 * The access a resolver is told about when the host, not the guest, asks for a page
 * (GuestMemory.settlePage: a checkpoint reading a poisoned page). A resolver that refuses it
 * must not count a machine check: no guest instruction was involved.
 */
export const HOST_READ = 3;
/** What an AbsentResolver is told: a guest access (MemoryAccessKind) or HOST_READ. */
export type ResolverAccess = MemoryAccessKind | typeof HOST_READ;
/** Resolves a write to a page carrying a protection flag: must clear that flag (unprotect). */
export type ProtectionResolver = (memory: GuestMemory, gpn: number, flag: number) => void;
/** Called with a page before the first write to it in a write epoch; `bytes` is its content now. */
export type EpochWriteHook = (gpn: number, bytes: Uint8Array) => void;
/**
 * Called when a VM whose memory holds pages in a state with a payload is forked: the owner of the
 * state sets the child up to resolve them (register its resolver on the child, share its file…)
 * or throws to refuse the fork.
 */
export type ForkHook = (parent: GuestMemory, child: GuestMemory) => void;

/**
 * When a 4 MiB guest-physical region gets one aligned 4 MiB host run at its first touch (T-2):
 * 'superpages' once the guest maps the region with a superpage, 'always', or 'off'.
 */
export type LargePagePolicy = 'off' | 'superpages' | 'always';

/** Large-page counters of a VM's memory (GuestMemory.largePageStats). */
export interface LargePageStats {
  /** Regions backed by a whole host run at first touch. */
  runsAllocated: number;
  /** Regions moved onto a host run after the fact (promotion, T-3). */
  regionsPromoted: number;
  /** Host runs split into independent frames (T-4). */
  regionsBrokenUp: number;
}

/** Counters of memory exits, per absent state and per protection flag. */
export interface MemoryExitCounts {
  /** Accesses to absent pages, by absent-state name (ABSENT_STATE_NAMES). */
  absent: Record<string, number>;
  /** Writes to protected pages, by flag name ('copy-on-write', 'checkpoint', 'parity', 'watch'). */
  writeProtect: Record<string, number>;
  /** Stores that hit a host frame holding decoded code. */
  codeWrites: number;
}

/** @internal What guest memory needs from the VM around it (the vCPUs' TLBs, the MMU's traces). */
export interface GuestMemoryHost {
  /** The VM's name, for messages. */
  readonly name: string;
  /** Drops every vCPU's translations derived from these guest pages, before returning. */
  shootdown(gpns: ArrayLike<number>): void;
  /** Drops every vCPU's write translations (between runs only). */
  revokeWrites(): void;
  /** The MMU traces this guest page (it holds a guest page table). */
  isTracing(gpn: number): boolean;
  /** Host code wrote a traced page: the MMU drops what derived from it. */
  zapTracedPage(gpn: number): void;
}

/** @internal How a VM's guest memory is created (from its VmConfig). */
export interface GuestMemoryOptions {
  /** Guest RAM in bytes. */
  memoryBytes: number;
  /** Default 'superpages'. */
  largePages?: LargePagePolicy;
}

/** Census of a VM's pages by state (for stats). */
export interface PageCensus {
  /** Pages with a host frame in this VM's view. */
  present: number;
  /** Present pages this VM shares with another VM or generation (copy-on-write). */
  shared: number;
  /**
   * Absent pages by absent-state name ('untouched', 'lazy', 'swapped', …), and 'deferred' for
   * pages of regions a lazy restore has not filled in yet.
   */
  absent: Record<string, number>;
}

const FLAG_NAMES: readonly [number, string][] = [
  [P2mFlag.COPY_ON_WRITE, 'copy-on-write'],
  [P2mFlag.TRACED, 'traced'],
  [P2mFlag.CHECKPOINT, 'checkpoint'],
  [P2mFlag.PARITY, 'parity'],
  [P2mFlag.WATCH, 'watch'],
];
const PROTECTION_FLAGS = FLAG_NAMES.filter(([flag]) => (flag & P2M_RESOLVE_BEFORE_WRITE) !== 0);
const SHAREABLE_FLAGS = P2M_FLAG_MASK & ~P2mFlag.COPY_ON_WRITE & ~P2mFlag.TRACED;
/** Largest read through readPhysical in one call. */
const MAX_RANGE = 256 * 1024 * 1024;

/** What pageBytes returns for an untouched page (read only, like every page view). */
const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

/** Thrown out of a resolver-less access to a reserved state: the VM stops with it. */
export class ReservedStateError extends KernelError {}

/** Called at the first guest access to a page a watcher armed (GuestMemory.armAccessWatch). */
export type AccessWatcher = (gpn: number) => void;

/** Access watchers per VM (one bit each per page). */
export const MAX_ACCESS_WATCHERS = 8;

/**
 * Thrown by an AbsentResolver to refuse an access as the guest's own fault (a page the guest
 * gave away and may not touch, such as one in its balloon). A vCPU's load, store, fetch or
 * page-table walk then stops the VM with a guest error carrying this message (Vm.guestError);
 * Vm.readVirtual stops it the same way and returns null. Host code that reads or writes the
 * page (readPhysical, writePhysical, pageBytes: a device's DMA) gets this error, whose code is
 * BV_BAD_GPA like any guest-physical address the guest cannot use.
 */
export class GuestAccessError extends KernelError {
  constructor(message: string) {
    super('BV_BAD_GPA', message);
  }
}

/**
 * One VM's guest-physical memory (Vm.memory): the page-granular API that services and devices
 * use to read, write, install, release, share, protect and move guest pages, to iterate them by
 * state, and to register resolvers for absent states and protection flags.
 *
 * Pages are numbered by guest page number (`gpn` = gpa / 4096, RAM only); byte addresses are
 * guest-physical (`Gpa`). Host frames and host offsets never cross this API. Every change to a
 * page's backing drops the vCPUs' cached translations of it before the call returns, so a call
 * made between runs or from an exit handler is seen by the guest's next access. See
 * docs/architecture.md, "Guest memory: one API".
 */
export class GuestMemory {
  /** Guest pages of RAM (memoryBytes / 4096): valid gpns are [0, pageCount). */
  readonly pageCount: number;
  /** Guest RAM in bytes. */
  readonly memoryBytes: number;
  /** The VM's large-page policy (VmConfig.largePages). */
  readonly largePagePolicy: LargePagePolicy;
  /** Large-page counters. */
  readonly largePageStats: LargePageStats = { runsAllocated: 0, regionsPromoted: 0, regionsBrokenUp: 0 };
  /** Memory exits so far (Vm.exits adds the routed ones). */
  readonly exits: MemoryExitCounts = { absent: {}, writeProtect: {}, codeWrites: 0 };
  /**
   * Per guest page: set when a TLB entry is filled for it. These are the hypervisor's own
   * accessed bits (like A bits in nested tables); read them here, clear them with clearAccessed().
   */
  get accessed(): Uint8Array {
    return this.accessedMarks;
  }
  private accessedMarks: Uint8Array;
  /** @internal Per guest page: the bits of the access watchers armed on it (armAccessWatch); empty until a watcher is added. */
  watchBits: Uint8Array = NO_BYTES;
  /** @internal Pages with any watcher armed (the interpreter looks at watchBits only when this is not 0). */
  watchedPages = 0;
  private readonly watchers: (AccessWatcher | null)[] = [];
  /** Copy-on-write faults resolved (a copy made or a last sharer's flag cleared). */
  cowCopies = 0;
  /** Pages present in this VM's view (own or read through a fork generation). */
  presentPages = 0;

  /** @internal The pool's typed views, for the interpreter and the walker. */
  readonly pool: FramePool;
  /** @internal */
  readonly decodeCache: DecodeCache;
  /** This VM's own entries; 0 reads through to `base` (see P2mGeneration). */
  private entries: Int32Array;
  private base: P2mGeneration | null = null;
  /** Per 4 MiB region: first frame of the host run backing all of it, or a REGION_* marker. */
  private readonly regionRun: Int32Array;
  /** Per 4 MiB region: the guest has mapped it with a superpage. */
  private readonly superpageSeen: Uint8Array;
  private readonly absentResolvers = new Map<number, AbsentResolver>();
  private readonly protectionResolvers = new Map<number, ProtectionResolver>();
  private readonly forkHooks = new Map<number, ForkHook>();
  /** Pages in each absent state other than untouched, in this VM's view. */
  private readonly stateCounts: Int32Array;
  /** Pages carrying each per-VM flag (by bit index 24..29) in this VM's own entries. */
  private readonly flagCounts: Int32Array;
  /** Snapshot write barrier (T-12): the current epoch and the epoch each page was claimed in. */
  private epoch = 0;
  private pageEpoch: Int32Array | null = null;
  private epochHook: EpochWriteHook | null = null;
  /** A lazy restore's deferred regions (deferRegions). */
  private pendingRegions: Uint8Array | null = null;
  private regionFiller: ((memory: GuestMemory, region: number) => void) | null = null;
  /** No entry was ever changed (every page is untouched). */
  private pristine = true;
  /** File-backed guest-physical ranges outside RAM (persistent memory; file-ranges.ts). */
  private readonly fileRanges: FileRanges;
  /** releasePages' lists (pages whose translations go, frames to free), grown as needed: no garbage per call. */
  private releaseChanged = NO_INTS;
  private releaseFrames = NO_INTS;

  /** @internal Created by its Vm. */
  constructor(
    options: GuestMemoryOptions,
    pool: FramePool,
    decodeCache: DecodeCache,
    private readonly arena: ZeroedArena,
    private readonly host: GuestMemoryHost,
  ) {
    this.memoryBytes = options.memoryBytes;
    this.pageCount = options.memoryBytes / PAGE_SIZE;
    this.pool = pool;
    this.decodeCache = decodeCache;
    this.largePagePolicy = options.largePages ?? 'superpages';
    if (!['off', 'superpages', 'always'].includes(this.largePagePolicy)) {
      throw new KernelError('BV_BAD_VM_CONFIG', `large-page policy must be off, superpages or always, got ${String(options.largePages)}`);
    }
    // Zero is "untouched": new typed arrays are zeroed by the allocator, so creating a VM of any
    // size costs no pass over its pages.
    this.entries = arena.int32(this.pageCount);
    this.accessedMarks = arena.uint8(this.pageCount);
    const regions = Math.ceil(this.pageCount / REGION_PAGES);
    // The small per-VM arrays share one buffer: each separate typed array of more than 64 bytes
    // is its own off-heap allocation, which a fork pays for cold (~15 µs for two, measured).
    const shared = new ArrayBuffer(4 * (regions + STATE_SLOTS + FLAG_SLOTS) + regions);
    this.regionRun = new Int32Array(shared, 0, regions).fill(REGION_UNKNOWN);
    this.stateCounts = new Int32Array(shared, 4 * regions, STATE_SLOTS);
    this.flagCounts = new Int32Array(shared, 4 * (regions + STATE_SLOTS), FLAG_SLOTS);
    this.superpageSeen = new Uint8Array(shared, 4 * (regions + STATE_SLOTS + FLAG_SLOTS), regions);
    this.absentResolvers.set(AbsentState.UNTOUCHED, (memory, gpn) => memory.allocateOnFirstTouch(gpn));
    this.protectionResolvers.set(P2mFlag.COPY_ON_WRITE, (memory, gpn) => memory.breakCopyOnWrite(gpn));
    this.fileRanges = new FileRanges(pool, host.name);
  }

  /** The VM's name, for messages. */
  get name(): string {
    return this.host.name;
  }

  // ---------------------------------------------------------------------------------------------
  // Resolvers

  /** Registers the resolver for an absent state (replaces the previous one). */
  onAbsent(state: AbsentStateId, resolver: AbsentResolver): void {
    this.absentResolvers.set(state, resolver);
  }

  /** Registers the resolver for writes to pages carrying a protection flag. */
  onWriteProtected(flag: number, resolver: ProtectionResolver): void {
    this.protectionResolvers.set(flag, resolver);
  }

  /** Registers what to do with pages in `state` when this VM is forked (see ForkHook). */
  onFork(state: AbsentStateId, hook: ForkHook): void {
    this.forkHooks.set(state, hook);
  }

  /** Whether a resolver is registered for an absent state. */
  hasResolver(state: AbsentStateId): boolean {
    return this.absentResolvers.has(state);
  }

  // ---------------------------------------------------------------------------------------------
  // Reading the map

  /** A page's state: PageState.PRESENT or the absent state. */
  stateOf(gpn: number): PageStateId {
    const entry = this.viewEntry(this.checkGpn(gpn));
    return entry > 0 ? PageState.PRESENT : P2mEntry.state(entry);
  }

  /**
   * How many times a page has gone from another state into one that holds no contents
   * (untouched, ballooned, poisoned) since the VM was made (a reset counts too). A service that
   * has looked for such pages need not look again while this is unchanged: a migration's
   * switch-over then skips its pass over every page.
   */
  get emptiedCount(): number {
    return this.emptiedTotal;
  }

  private emptiedTotal = 0;

  /**
   * The states of pages firstGpn … firstGpn + count − 1 (PageState), into out[0 … count): stateOf
   * for a run of pages in one call (a migration's switch-over looks at every page while the guest
   * is paused). Regions a lazy restore deferred are filled in first, as stateOf does.
   */
  statesOf(firstGpn: number, count: number, out: Uint8Array): void {
    if (!Number.isInteger(firstGpn) || !Number.isInteger(count) || firstGpn < 0 || count < 0 || firstGpn + count > this.pageCount) {
      throw new KernelError('BV_BAD_GPN', `guest pages ${firstGpn}..${firstGpn + count} are not inside ${this.name}'s RAM`);
    }
    if (count > out.length) throw new KernelError('BV_BAD_RANGE', `${this.name}: ${count} page states do not fit a list of ${out.length}`);
    if (count === 0) return;
    this.checkGpn(firstGpn); // a destroyed VM is refused
    if (this.pendingRegions !== null) {
      for (let region = Math.floor(firstGpn / REGION_PAGES); region <= Math.floor((firstGpn + count - 1) / REGION_PAGES); region++) this.fillRegion(region);
    }
    for (let i = 0; i < count; i++) {
      const entry = this.viewEntry(firstGpn + i);
      out[i] = entry > 0 ? PageState.PRESENT : P2mEntry.state(entry);
    }
  }

  /** The payload of an absent page (block, slot, …); 0 for a present one. */
  payloadOf(gpn: number): number {
    const entry = this.viewEntry(this.checkGpn(gpn));
    return entry > 0 ? 0 : P2mEntry.payload(entry);
  }

  /** The protection flags of a present page (P2mFlag bits); 0 for an absent one. */
  flagsOf(gpn: number): number {
    const entry = this.viewEntry(this.checkGpn(gpn));
    return entry > 0 ? entry & P2M_FLAG_MASK : 0;
  }

  /** A present page whose frame no other VM or generation holds. */
  isPrivate(gpn: number): boolean {
    this.checkGpn(gpn);
    const own = this.ownEntry(gpn);
    return own > 0 && this.pool.refCount[own & P2M_FRAME_MASK] === 1;
  }

  /** Whether two present pages (of this or another VM) are backed by the same host frame. */
  sameFrame(gpn: number, other: GuestMemory, otherGpn: number): boolean {
    const a = this.viewEntry(this.checkGpn(gpn));
    const b = other.viewEntry(other.checkGpn(otherGpn));
    return a > 0 && b > 0 && (a & P2M_FRAME_MASK) === (b & P2M_FRAME_MASK);
  }

  /** A description of a page's P2M state, for messages. */
  describe(gpn: number): string {
    return P2mEntry.describe(this.viewEntry(this.checkGpn(gpn)));
  }

  /**
   * @internal The raw P2M entry this VM sees for a page (tests and diagnostics). Fills a region a
   * lazy restore deferred.
   */
  entryOf(gpn: number): number {
    if (this.pendingRegions !== null) this.fillRegion(Math.floor(gpn / REGION_PAGES));
    return this.viewEntry(gpn);
  }

  /** Calls fn for every page in `state` (PageState), in page order. */
  forEachPage(state: PageStateId, fn: (gpn: number, payload: number) => void): void {
    this.fillAllRegions();
    for (let gpn = 0; gpn < this.pageCount; gpn++) {
      const entry = this.viewEntry(gpn);
      if (entry > 0) {
        if (state === PageState.PRESENT) fn(gpn, 0);
      } else if (state !== PageState.PRESENT && P2mEntry.state(entry) === state) {
        fn(gpn, P2mEntry.payload(entry));
      }
    }
  }

  /** Pages in an absent state other than untouched, counted as they change (O(1)). */
  countInState(state: AbsentStateId): number {
    return state === AbsentState.UNTOUCHED ? this.pageCount - this.presentPages - this.stateCounts.reduce((a, b) => a + b, 0) : this.stateCounts[state]!;
  }

  /** Counts pages by state (a pass over the map; for stats). */
  census(): PageCensus {
    const absent: Record<string, number> = {};
    let present = 0;
    let shared = 0;
    const pending = this.pendingRegions;
    for (let gpn = 0; gpn < this.pageCount; gpn++) {
      // A deferred region reads as what the restore will put there: not filled in by a census.
      if (pending !== null && pending[Math.floor(gpn / REGION_PAGES)] === 1) {
        absent.deferred = (absent.deferred ?? 0) + 1;
        continue;
      }
      const entry = this.viewEntry(gpn);
      if (entry > 0) {
        present++;
        if ((entry & P2mFlag.COPY_ON_WRITE) !== 0) shared++;
      } else {
        const name = ABSENT_STATE_NAMES[P2mEntry.state(entry)] ?? 'invalid';
        absent[name] = (absent[name] ?? 0) + 1;
      }
    }
    return { present, shared, absent };
  }

  /** Fork generations this VM reads through (0 for a VM never forked). */
  get generationDepth(): number {
    return this.base === null ? 0 : this.base.depth;
  }

  // ---------------------------------------------------------------------------------------------
  // Page contents

  /**
   * A page's bytes as a view into host memory (no copy; resolves an absent page as a read
   * would). Read only: writing through the view would bypass copy-on-write, traces and decoded
   * code. Valid until the page's backing next changes.
   */
  pageBytes(gpn: number): Uint8Array {
    if (this.isUntouched(this.checkGpn(gpn))) return ZERO_PAGE;
    const hostOffset = this.hostOffsetForRead(this.checkGpn(gpn) * PAGE_SIZE);
    if (hostOffset < 0) throw new KernelError('BV_BAD_GPA', `${this.name}: guest page ${gpn} is ${this.describe(gpn)} and cannot be read`);
    return this.pool.u8.subarray(hostOffset, hostOffset + PAGE_SIZE);
  }

  /** A present page's bytes without resolving anything, or null when absent. */
  presentPageBytes(gpn: number): Uint8Array | null {
    const entry = this.viewEntry(this.checkGpn(gpn));
    if (entry <= 0) return null;
    const offset = (entry & P2M_FRAME_MASK) * PAGE_SIZE;
    return this.pool.u8.subarray(offset, offset + PAGE_SIZE);
  }

  /**
   * Copies the bytes of pages gpns[start], gpns[start + 1], … (at most `count`) into `dest`, one
   * page after another from `destOffset`, while they are present; returns how many it copied.
   * It stops at the first page that is not present (nothing is resolved: the caller reads that one
   * with pageBytes) and copies a run of pages whose frames are consecutive in the pool with one
   * copy. A bulk read for senders of guest memory (migration): one call per frame of pages
   * instead of a view and a copy per page. `dest` must have room for `count` pages.
   */
  copyPresentPages(gpns: ArrayLike<number>, start: number, count: number, dest: Uint8Array, destOffset: number): number {
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > gpns.length) {
      throw new KernelError('BV_BAD_GPN', `${this.name}: pages ${start}..${start + count} are not inside a list of ${gpns.length}`);
    }
    if (!Number.isInteger(destOffset) || destOffset < 0 || destOffset + count * PAGE_SIZE > dest.length) {
      throw new KernelError('BV_BAD_RANGE', `${this.name}: ${count} pages do not fit ${dest.length} bytes from offset ${destOffset}`);
    }
    const u8 = this.pool.u8;
    let copied = 0;
    let runFrame = -1; // the run of consecutive frames not copied yet
    let runLength = 0;
    for (; copied < count; copied++) {
      const entry = this.viewEntry(this.checkGpn(gpns[start + copied]!));
      if (entry <= 0) break;
      const frame = entry & P2M_FRAME_MASK;
      if (runLength > 0 && frame === runFrame + runLength) {
        runLength++;
        continue;
      }
      if (runLength > 0) dest.set(u8.subarray(runFrame * PAGE_SIZE, (runFrame + runLength) * PAGE_SIZE), destOffset + (copied - runLength) * PAGE_SIZE);
      runFrame = frame;
      runLength = 1;
    }
    if (runLength > 0) dest.set(u8.subarray(runFrame * PAGE_SIZE, (runFrame + runLength) * PAGE_SIZE), destOffset + (copied - runLength) * PAGE_SIZE);
    return copied;
  }

  /** Whether a present page holds only zero bytes. */
  isZeroPage(gpn: number): boolean {
    const entry = this.viewEntry(this.checkGpn(gpn));
    if (entry <= 0) return P2mEntry.state(entry) === AbsentState.UNTOUCHED;
    const i32 = this.pool.i32;
    const first = (entry & P2M_FRAME_MASK) * (PAGE_SIZE >>> 2);
    for (let i = first; i < first + (PAGE_SIZE >>> 2); i++) if (i32[i] !== 0) return false;
    return true;
  }

  /** Reads guest-physical RAM. Throws for addresses outside RAM or pages nobody can produce. */
  readPhysical(gpa: Gpa, length: number): Uint8Array {
    this.checkRange(gpa, length);
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const at = gpa + done;
      const chunk = Math.min(length - done, PAGE_SIZE - (at % PAGE_SIZE));
      // An untouched page reads as zeros: no frame is allocated just to be read.
      if (!this.isUntouched(Math.floor(at / PAGE_SIZE))) {
        const hostOffset = this.hostOffsetForRead(at);
        if (hostOffset < 0) throw new KernelError('BV_BAD_GPA', `guest-physical 0x${at.toString(16)} is not readable RAM of ${this.name}`);
        out.set(this.pool.u8.subarray(hostOffset, hostOffset + chunk), done);
      }
      done += chunk;
    }
    return out;
  }

  /**
   * Writes guest-physical RAM (loader, devices), through copy-on-write and epochs like a guest
   * store. Decoded code in the written frames is dropped, so callers that run inside a vCPU exit
   * (MMIO, hypercalls) return to the interpreter through a resync, as they do.
   */
  writePhysical(gpa: Gpa, bytes: Uint8Array): void {
    this.checkRange(gpa, bytes.length);
    for (let done = 0; done < bytes.length; ) {
      const at = gpa + done;
      const chunk = Math.min(bytes.length - done, PAGE_SIZE - (at % PAGE_SIZE));
      const hostOffset = this.hostOffsetForWrite(at);
      if (hostOffset < 0) throw new KernelError('BV_BAD_GPA', `guest-physical 0x${at.toString(16)} is not writable RAM of ${this.name}`);
      const frame = Math.floor(hostOffset / PAGE_SIZE);
      if (this.decodeCache.isDecoded(frame)) this.decodeCache.drop(frame);
      if (this.isTraced(at)) this.host.zapTracedPage(Math.floor(at / PAGE_SIZE));
      this.pool.u8.set(bytes.subarray(done, done + chunk), hostOffset);
      done += chunk;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Changing pages

  /**
   * Makes a page present on a fresh frame holding `source` (PAGE_SIZE bytes, or a function that
   * fills the frame's bytes in place). Whatever the page held before is released.
   */
  installPage(gpn: number, source: Uint8Array | ((frameBytes: Uint8Array) => void)): void {
    this.checkGpn(gpn);
    if (source instanceof Uint8Array && source.length !== PAGE_SIZE) throw new KernelError('BV_BAD_PAGE', `${this.name}: a page is ${PAGE_SIZE} bytes, got ${source.length}`);
    const frame = this.pool.allocFrame();
    const view = this.pool.u8.subarray(frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE);
    try {
      if (typeof source === 'function') source(view);
      else view.set(source);
    } catch (error) {
      this.pool.u8.fill(0, frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE); // free frames hold zeros
      this.pool.release(frame);
      throw error;
    }
    this.setEntry(gpn, P2mEntry.present(frame));
    this.contentsReplaced(gpn);
  }

  /**
   * Makes several pages present at once on fresh frames filled in place: `fill` gets `count`
   * contiguous zeroed frames as one view (count × PAGE_SIZE bytes) and fills them, e.g. with a
   * block read straight from a file (no staging buffer to allocate and fault in, no copy); then
   * each `gpns[i]` with `install[i]` non-zero becomes present on frame i, as installPage would make
   * it, and the other frames go back to the pool. If `fill` throws, nothing changes. Returns
   * false, changing nothing and without calling `fill`, when the pool has no such contiguous run
   * or `count` is not 1..1024 (the caller fills a buffer and uses installPage).
   */
  installPagesInPlace(gpns: ArrayLike<number>, install: ArrayLike<number>, count: number, fill: (frames: Uint8Array) => void): boolean {
    for (let i = 0; i < count; i++) if (install[i] !== 0) this.checkGpn(gpns[i]!);
    if (count < 1 || count > FRAMES_PER_RUN) return false; // a contiguous run lies inside one 4 MiB chunk
    const first = this.pool.allocContiguous(count);
    if (first < 0) return false;
    // The run's frames went back to the OS when freed: map them in one call rather than taking a
    // page fault each inside fill's read (0.53 against 0.66 ms for a 1 MiB block, docs/performance.md).
    this.pool.memory.populate?.(first * PAGE_SIZE, count * PAGE_SIZE);
    try {
      fill(this.pool.u8.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE));
    } catch (error) {
      for (let i = 0; i < count; i++) this.pool.release(first + i); // released frames read as zero again
      throw error;
    }
    for (let i = 0; i < count; i++) {
      if (install[i] === 0) {
        this.pool.release(first + i);
        continue;
      }
      this.setEntry(gpns[i]!, P2mEntry.present(first + i));
      this.contentsReplaced(gpns[i]!);
    }
    return true;
  }

  /**
   * Makes `count` pages present on contiguous fresh frames mapped privately from a file (reads
   * come from the page cache with no copy; writes stay private). Returns false, changing nothing,
   * when the pool has no such contiguous range (the caller copies instead).
   */
  mapFilePages(gpns: ArrayLike<number>, start: number, count: number, path: string, fileOffset: number): boolean {
    for (let i = 0; i < count; i++) this.checkGpn(gpns[start + i]!);
    const first = this.pool.allocContiguous(count);
    if (first < 0) return false;
    try {
      this.pool.mapFile(first, count, path, fileOffset);
    } catch (error) {
      for (let i = 0; i < count; i++) this.pool.release(first + i);
      throw error;
    }
    for (let i = 0; i < count; i++) this.setEntry(gpns[start + i]!, P2mEntry.present(first + i));
    return true;
  }

  /**
   * Gives the VM a guest-physical range outside RAM, [gpa, gpa + bytes), whose bytes are the file
   * at `path` from `fileOffset` (persistent memory, docs/pmem.md): host-pool frames with the file
   * mapped SHARED over them, so guest stores reach the file's page cache at memory speed and
   * flushFileRange makes them durable. Everything 4 KiB-aligned; the range lies between the end
   * of RAM and 0xf0000000 and overlaps no other; the file must hold the whole range. Its pages
   * are not RAM: no P2M entries, so no policy (copy-on-write, swap, balloon, sharing, sampling,
   * large pages, error injection, migration) ever sees them, a fork of the VM is refused, and
   * checkpoints do not contain them. The range lives until the VM is destroyed. Throws
   * BV_FILE_RANGE (bad range), BV_OUT_OF_HOST_MEMORY, BV_NO_FILE_MAPPING (a host pool that is
   * not anonymous native memory) or the addon's NativeError (a missing or short file).
   */
  attachFileRange(gpa: Gpa, bytes: number, path: string, fileOffset = 0): FileRangeInfo {
    if (this.entries.length === 0) throw new KernelError('BV_BAD_VM', `${this.name} has been destroyed`);
    return this.fileRanges.attach(gpa, bytes, path, fileOffset, this.memoryBytes);
  }

  /** The VM's file-backed ranges (attachFileRange), in attach order. */
  get fileBackedRanges(): FileRangeInfo[] {
    return this.fileRanges.list();
  }

  /**
   * msync of [gpa, gpa + length), which must lie inside one file-backed range (else
   * BV_FILE_RANGE): when it returns, every store made to those bytes before the call is on the
   * file's storage (the pages the range touches are written whole).
   */
  flushFileRange(gpa: Gpa, length: number): void {
    this.fileRanges.flush(gpa, length);
  }

  /**
   * Starts tracking which pages of the file-backed range starting at `gpa` the guest writes
   * (docs/pmem.md, "High availability"): from now on takeFileRangeDirtyPages returns the pages
   * written since its last call. At first every page counts as written. Costs one TLB miss per
   * page per take, on the page's first store after it. BV_FILE_RANGE when no range starts there.
   */
  trackFileRangeWrites(gpa: Gpa): void {
    this.fileRanges.trackWrites(gpa);
  }

  /** Stops tracking writes to the file-backed range starting at `gpa`. */
  untrackFileRangeWrites(gpa: Gpa): void {
    this.fileRanges.untrackWrites(gpa);
  }

  /**
   * The pages of the tracked file-backed range starting at `gpa` that the guest may have written
   * since the last call (or since tracking began): one byte per page of the range, 1 = written.
   * Clears the marks and revokes every vCPU's write translations, so that no later store is
   * missed: the next store to each page takes a TLB miss that marks it. Between runs only (like
   * beginWriteEpoch). BV_FILE_RANGE when the range is not tracked.
   */
  takeFileRangeDirtyPages(gpa: Gpa): Uint8Array {
    const taken = this.fileRanges.takeDirty(gpa);
    this.host.revokeWrites();
    return taken;
  }

  /**
   * Copies the current bytes of [gpa, gpa + target.length), inside one file-backed range, into
   * `target` (BV_FILE_RANGE otherwise).
   */
  readFileRange(gpa: Gpa, target: Uint8Array): void {
    this.fileRanges.read(gpa, target);
  }

  /** @internal A guest store is about to land on a file-backed gpa (the vCPU's store miss): marks its page written when tracked. */
  noteFileRangeStore(gpa: number): void {
    this.fileRanges.noteStore(gpa);
  }

  /** @internal Whether a vCPU may cache a write translation to a file-backed gpa (not while its page is clean and tracked). */
  mayCacheFileRangeWrite(gpa: number): boolean {
    return this.fileRanges.mayCacheWrite(gpa);
  }

  /** @internal The host frame behind a file-backed gpa, or -1 (the vCPU's slow path for non-RAM addresses). */
  fileRangeFrame(gpa: number): number {
    return this.fileRanges.frameOf(gpa);
  }

  /** Whether the host pool can map files privately (map-mode restore). */
  get canMapFiles(): boolean {
    const memory = this.pool.memory as { mapFilePrivate?: unknown; kind?: unknown };
    return typeof memory.mapFilePrivate === 'function' && (memory.kind === undefined || memory.kind === 'anonymous');
  }

  /**
   * Makes a page absent in `state` with `payload`: its frame reference is dropped (the frame goes
   * back to the OS when nobody else holds it) and its translations are shot down.
   */
  releasePage(gpn: number, state: AbsentStateId = AbsentState.UNTOUCHED, payload = 0): void {
    this.checkGpn(gpn);
    this.checkAbsentState(state);
    if (!Number.isInteger(payload) || payload < 0 || payload > P2M_MAX_PAYLOAD) throw new KernelError('BV_BAD_P2M', `${this.name}: payload ${payload} does not fit a P2M entry`);
    // In a write epoch (a live snapshot), a release to a state that keeps no contents destroys
    // them as a write would: the epoch hook gets them first. Swapped, lazy… pages keep them.
    if (this.epochHook !== null && (state === AbsentState.UNTOUCHED || state === AbsentState.BALLOONED || state === AbsentState.POISONED)) {
      const entry = this.viewEntry(gpn);
      if (entry > 0) this.claimForWrite(gpn, entry & P2M_FRAME_MASK);
    }
    this.setEntry(gpn, P2mEntry.absent(state, payload));
    this.contentsReplaced(gpn);
  }

  /**
   * releasePage for many pages at once (the balloon's commands): one shootdown for all of them,
   * and the frames that nobody else holds go back to the OS in one call per contiguous range.
   * Every page is checked before any changes; a page may be named more than once.
   */
  releasePages(gpns: ArrayLike<number>, state: AbsentStateId = AbsentState.UNTOUCHED, payload = 0): void {
    for (let i = 0; i < gpns.length; i++) this.checkGpn(gpns[i]!);
    this.checkAbsentState(state);
    if (!Number.isInteger(payload) || payload < 0 || payload > P2M_MAX_PAYLOAD) throw new KernelError('BV_BAD_P2M', `${this.name}: payload ${payload} does not fit a P2M entry`);
    if (this.epochHook !== null && (state === AbsentState.UNTOUCHED || state === AbsentState.BALLOONED || state === AbsentState.POISONED)) {
      for (let i = 0; i < gpns.length; i++) {
        const entry = this.viewEntry(gpns[i]!);
        if (entry > 0) this.claimForWrite(gpns[i]!, entry & P2M_FRAME_MASK); // as releasePage
      }
    }
    // As setEntry, page by page, with the shootdown and the frees gathered.
    const absent = P2mEntry.absent(state, payload);
    const entry = absent === UNTOUCHED_ENTRY && this.base === null ? 0 : absent;
    this.pristine = false;
    if (this.releaseChanged.length < gpns.length) {
      this.releaseChanged = new Int32Array(gpns.length);
      this.releaseFrames = new Int32Array(gpns.length);
    }
    const changed = this.releaseChanged;
    const frames = this.releaseFrames;
    let changedCount = 0;
    let frameCount = 0;
    let dropped: number[] | null = null;
    for (let i = 0; i < gpns.length; i++) {
      const gpn = gpns[i]!;
      const old = this.viewEntry(gpn);
      const ownOld = this.entries[gpn]!;
      const inherited = ownOld === 0 && this.base !== null;
      this.entries[gpn] = entry;
      this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
      this.countState(old, entry);
      this.countFlags(inherited ? 0 : ownOld, entry);
      if (old > 0) changed[changedCount++] = gpn;
      if (inherited) (dropped ??= []).push(gpn);
      else if (ownOld > 0) frames[frameCount++] = ownOld & P2M_FRAME_MASK;
    }
    // Translations go before any frame can be freed.
    if (changedCount > 0) this.host.shootdown(changed.subarray(0, changedCount));
    if (dropped !== null) for (const gpn of dropped) this.base!.drop(gpn);
    this.pool.releaseMany(frames.subarray(0, frameCount), (frame) => this.decodeCache.drop(frame));
    for (let i = 0; i < gpns.length; i++) this.contentsReplaced(gpns[i]!);
  }

  /**
   * Shares this VM's page `gpn` into `target` at `targetGpn` (same or another VM of this pool):
   * both map one frame copy-on-write, and a write on either side gets a private copy.
   */
  sharePage(gpn: number, target: GuestMemory, targetGpn: number): void {
    if (target.pool !== this.pool) throw new KernelError('BV_BAD_SHARE', `${this.name}: cannot share a page with a VM of another hypervisor`);
    this.checkGpn(gpn);
    target.checkGpn(targetGpn);
    const source = this.materialize(gpn);
    if (source <= 0) throw new KernelError('BV_BAD_SHARE', `${this.name}: guest page ${gpn} is ${P2mEntry.describe(source)}; only a present page can be shared`);
    const frame = source & P2M_FRAME_MASK;
    if (target === this && targetGpn === gpn) return;
    if ((source & P2mFlag.COPY_ON_WRITE) === 0) this.protectPage(gpn, P2mFlag.COPY_ON_WRITE);
    // Already mapped there: setEntry keeps a same-frame reference, so a second one would leak.
    if (target.sameFrame(targetGpn, this, gpn)) return;
    this.pool.retain(frame);
    target.setEntry(targetGpn, P2mEntry.present(frame, P2mFlag.COPY_ON_WRITE));
    target.contentsReplaced(targetGpn);
  }

  /**
   * Lends page `gpn` to a VM in another thread that shares this pool (Hypervisor.sharePool, issue
   * 16): the page becomes copy-on-write here, and the handle holds one reference to its frame
   * until importPage makes it a page of the other VM (or dropFrameHandle lets it go). Either side
   * writing afterwards gets a private copy; reference counts are atomic, so concurrent breaks are safe.
   */
  exportPage(gpn: number): FrameHandle {
    this.checkGpn(gpn);
    const source = this.materialize(gpn);
    if (source <= 0) throw new KernelError('BV_BAD_SHARE', `${this.name}: guest page ${gpn} is ${P2mEntry.describe(source)}; only a present page can be shared`);
    if ((source & P2mFlag.COPY_ON_WRITE) === 0) this.protectPage(gpn, P2mFlag.COPY_ON_WRITE);
    const frame = source & P2M_FRAME_MASK;
    this.pool.retain(frame);
    return frame as FrameHandle;
  }

  /**
   * Makes page `gpn` present, copy-on-write, on the frame a handle from exportPage (in any thread of
   * this pool) lends; the handle's reference becomes the page's. What the page held is released.
   */
  importPage(gpn: number, handle: FrameHandle): void {
    this.checkGpn(gpn);
    const frame = handle as number;
    if (!this.pool.inUse(frame)) throw new KernelError('BV_BAD_SHARE', `${this.name}: ${frame} is not a frame handle of this pool`);
    const own = this.materialize(gpn);
    if (own > 0 && (own & P2M_FRAME_MASK) === frame) {
      this.pool.release(frame); // already this page's frame: the handle's reference is one too many
      return;
    }
    // This thread may hold code decoded from what the frame held before another thread reused it.
    if (this.decodeCache.isDecoded(frame)) this.decodeCache.drop(frame);
    this.setEntry(gpn, P2mEntry.present(frame, P2mFlag.COPY_ON_WRITE));
    this.contentsReplaced(gpn);
  }

  /**
   * Whether present page `gpn` holds exactly the bytes of the frame a handle lends (a full
   * compare, for merging pages of VMs in different threads by content).
   */
  sameContentAs(gpn: number, handle: FrameHandle): boolean {
    this.checkGpn(gpn);
    const frame = handle as number;
    if (!this.pool.inUse(frame)) throw new KernelError('BV_BAD_SHARE', `${this.name}: ${frame} is not a frame handle of this pool`);
    const own = this.viewEntry(gpn);
    if (own <= 0) return false;
    const words = this.pool.i32;
    const a = (own & P2M_FRAME_MASK) * (PAGE_SIZE / 4);
    const b = frame * (PAGE_SIZE / 4);
    for (let i = 0; i < PAGE_SIZE / 4; i++) if (words[a + i] !== words[b + i]) return false;
    return true;
  }

  /** Drops a handle from exportPage that will not be imported (its reference to the frame). */
  dropFrameHandle(handle: FrameHandle): void {
    this.releaseFrame(handle as number);
  }

  /**
   * Moves a page's frame into another VM (cooperative reallocation, T-5): `target`'s page
   * `targetGpn` becomes present on it without a copy, and this page becomes absent in `leaveAs`.
   * The page must be private to this VM.
   */
  moveFrame(gpn: number, target: GuestMemory, targetGpn: number, leaveAs: AbsentStateId = AbsentState.UNTOUCHED): void {
    if (target.pool !== this.pool) throw new KernelError('BV_BAD_MOVE', `${this.name}: cannot move a frame to a VM of another hypervisor`);
    this.checkGpn(gpn);
    target.checkGpn(targetGpn);
    this.checkAbsentState(leaveAs);
    const own = this.materialize(gpn);
    if (own <= 0 || this.pool.refCount[own & P2M_FRAME_MASK] !== 1) throw new KernelError('BV_BAD_MOVE', `${this.name}: guest page ${gpn} is ${P2mEntry.describe(own)}; only a private present page can move`);
    const frame = own & P2M_FRAME_MASK;
    this.pool.retain(frame); // held across the hand-over
    this.setEntry(gpn, P2mEntry.absent(leaveAs));
    this.contentsReplaced(gpn);
    if (this.decodeCache.isDecoded(frame)) this.decodeCache.drop(frame); // the code belonged to this VM's view
    target.setEntry(targetGpn, P2mEntry.present(frame));
    target.contentsReplaced(targetGpn);
  }

  /** Adds protection flags to a present page and shoots down its translations. */
  protect(gpn: number, flags: number): void {
    this.checkGpn(gpn);
    this.checkFlags(flags);
    if (this.viewEntry(gpn) <= 0) throw new KernelError('BV_BAD_FLAGS', `${this.name}: guest page ${gpn} is ${this.describe(gpn)}; only a present page can be protected`);
    this.protectPage(gpn, flags);
  }

  /** Clears protection flags from a present page. */
  unprotect(gpn: number, flags: number): void {
    this.checkGpn(gpn);
    this.checkFlags(flags);
    if ((flags & P2mFlag.COPY_ON_WRITE) !== 0) {
      // Clearing it on a shared frame would let this VM's writes show in the other sharers.
      const own = this.materialize(gpn);
      if (own > 0 && (own & P2mFlag.COPY_ON_WRITE) !== 0 && this.pool.refCount[own & P2M_FRAME_MASK]! > 1) {
        throw new KernelError('BV_BAD_FLAGS', `${this.name}: guest page ${gpn} shares its frame; copy-on-write ends with a write (a private copy), not with unprotect`);
      }
    }
    this.unprotectPage(gpn, flags);
  }

  // ---------------------------------------------------------------------------------------------
  // Accessed marks (T-3, T-4, sampling)

  /** @internal Marks a guest page accessed (the interpreter calls this when it fills a TLB entry). */
  markAccessed(gpn: number): void {
    this.accessed[gpn] = 1;
  }

  // Access watches (sampling, miss-rate curves)

  /**
   * Adds an access watcher (at most MAX_ACCESS_WATCHERS per VM) and returns its id. Arm it on
   * pages with armAccessWatch: the next guest access to each armed page (a load, store or fetch
   * by any vCPU, in any mode) calls `watcher(gpn)` once, at the access, then the page is
   * disarmed for that watcher. Watchers never change what the guest sees; they must not throw.
   */
  addAccessWatcher(watcher: AccessWatcher): number {
    let id = this.watchers.indexOf(null);
    if (id < 0) {
      if (this.watchers.length >= MAX_ACCESS_WATCHERS) throw new KernelError('BV_TOO_MANY_WATCHERS', `${this.name}: at most ${MAX_ACCESS_WATCHERS} access watchers`);
      id = this.watchers.length;
      this.watchers.push(null);
    }
    if (this.watchBits.length !== this.pageCount) this.watchBits = new Uint8Array(this.pageCount);
    this.watchers[id] = watcher;
    return id;
  }

  /** Removes watcher `id` (disarming it everywhere). */
  removeAccessWatcher(id: number): void {
    if (this.watchers[id] === undefined || this.watchers[id] === null) return;
    const bit = 1 << id;
    const bits = this.watchBits;
    if (this.watchedPages > 0) {
      for (let gpn = 0; gpn < bits.length; gpn++) {
        if ((bits[gpn]! & bit) === 0) continue;
        bits[gpn]! &= ~bit;
        if (bits[gpn] === 0) this.watchedPages--;
      }
    }
    this.watchers[id] = null;
  }

  /**
   * Arms watcher `id` on `count` pages of `gpns`: their translations are shot down on every vCPU
   * (as clearAccessed does, but the accessed marks stay as they are, so the clock of other
   * policies is not disturbed), so that the next access to each is seen. Arming an armed page
   * changes nothing.
   */
  armAccessWatch(id: number, gpns: ArrayLike<number>, count = gpns.length): void {
    const bit = this.watcherBit(id);
    const bits = this.watchBits;
    const shoot: number[] = [];
    for (let i = 0; i < count; i++) {
      const gpn = gpns[i]!;
      this.checkGpn(gpn);
      const before = bits[gpn]!;
      if ((before & bit) !== 0) continue;
      if (before === 0) this.watchedPages++;
      bits[gpn] = before | bit;
      shoot.push(gpn);
    }
    if (shoot.length > 0) this.host.shootdown(shoot);
  }

  /** Disarms watcher `id` on pages (translations are left alone: nothing needs to be seen). */
  disarmAccessWatch(id: number, gpns: ArrayLike<number>, count = gpns.length): void {
    const bit = this.watcherBit(id);
    const bits = this.watchBits;
    for (let i = 0; i < count; i++) {
      const gpn = gpns[i]!;
      this.checkGpn(gpn);
      if ((bits[gpn]! & bit) === 0) continue;
      bits[gpn]! &= ~bit;
      if (bits[gpn] === 0) this.watchedPages--;
    }
  }

  /** Whether watcher `id` is armed on `gpn`. */
  isWatched(id: number, gpn: number): boolean {
    this.checkGpn(gpn);
    return (this.watchBits[gpn]! & this.watcherBit(id)) !== 0;
  }

  /** @internal An armed page was accessed (the interpreter's TLB fill): tell its watchers, disarm them. */
  watchedAccess(gpn: number): void {
    const bits = this.watchBits[gpn]!;
    this.watchBits[gpn] = 0;
    this.watchedPages--;
    for (let id = 0; id < this.watchers.length; id++) if ((bits & (1 << id)) !== 0) this.watchers[id]?.(gpn);
  }

  private watcherBit(id: number): number {
    if (!Number.isInteger(id) || this.watchers[id] === undefined || this.watchers[id] === null) throw new KernelError('BV_BAD_WATCHER', `${this.name}: no access watcher ${id}`);
    return 1 << id;
  }

  /**
   * Clears the accessed marks of a range and shoots down the TLB entries for it, so that the next
   * access to each page is seen again (tracking periods).
   */
  clearAccessed(firstGpn: number, count: number): void {
    if (!Number.isInteger(firstGpn) || !Number.isInteger(count) || firstGpn < 0 || count < 0 || firstGpn + count > this.pageCount) {
      throw new KernelError('BV_BAD_GPN', `${this.name}: pages ${firstGpn}+${count} are outside RAM`);
    }
    this.accessed.fill(0, firstGpn, firstGpn + count);
    const gpns: number[] = [];
    for (let gpn = firstGpn; gpn < firstGpn + count; gpn++) gpns.push(gpn);
    this.host.shootdown(gpns);
  }

  // ---------------------------------------------------------------------------------------------
  // Write epochs (T-12)

  /**
   * Starts a write epoch: from now on the first write to each page calls `hook` with the page's
   * current bytes before the write lands, unless the page was claimed first (claimPage). Costs
   * the revocation of the vCPUs' write translations, not a pass over guest memory. Between runs
   * only.
   */
  beginWriteEpoch(hook: EpochWriteHook): number {
    if (this.epochHook !== null) throw new KernelError('BV_EPOCH_ACTIVE', `${this.name}: a snapshot epoch is already running`);
    this.pageEpoch ??= this.arena.int32(this.pageCount);
    this.epoch++;
    this.epochHook = hook;
    this.host.revokeWrites();
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

  /** Ends the running write epoch: writes no longer call the hook. */
  endWriteEpoch(): void {
    this.epochHook = null;
  }

  /** Whether a write epoch is running (beginWriteEpoch, not yet ended). */
  get writeEpochActive(): boolean {
    return this.epochHook !== null;
  }

  private claimForWrite(gpn: number, frame: number): void {
    if (this.pageEpoch![gpn] === this.epoch) return;
    this.pageEpoch![gpn] = this.epoch;
    this.epochHook!(gpn, this.pool.u8.subarray(frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE));
  }

  // ---------------------------------------------------------------------------------------------
  // Deferred regions (lazy restore, T-11)

  /**
   * Defers filling in the P2M region by region (a lazy restore of a large VM starts in
   * O(regions), not O(pages)). Every region is pending until something first needs one of its
   * pages; then `filler` installs its entries (installAbsentRange) and the access proceeds. The
   * VM's pages must all be untouched when this is called.
   */
  deferRegions(filler: (memory: GuestMemory, region: number) => void): void {
    // A flag, not a scan: the check must not cost O(pages).
    if (!this.pristine) throw new KernelError('BV_BAD_P2M', `${this.name}: deferRegions needs a VM whose memory was never changed`);
    this.pendingRegions = new Uint8Array(this.regionRun.length).fill(1);
    this.regionFiller = filler;
    this.pristine = false;
  }

  /** Fills a pending region's entries now (no-op when not pending). */
  fillRegion(region: number): void {
    const pending = this.pendingRegions;
    if (pending === null || pending[region] !== 1) return;
    pending[region] = 0;
    this.regionFiller!(this, region);
  }

  /** Fills every pending region (before a fork, a save, a scan). */
  fillAllRegions(): void {
    if (this.pendingRegions === null) return;
    for (let region = 0; region < this.pendingRegions.length; region++) this.fillRegion(region);
    this.pendingRegions = null;
    this.regionFiller = null;
  }

  /** Regions still pending (deferRegions). */
  get pendingRegionCount(): number {
    return this.pendingRegions === null ? 0 : this.pendingRegions.reduce((sum, flag) => sum + flag, 0);
  }

  /**
   * Puts pages from `firstGpn` into absent states (a region filler's job, or a lazy restore's
   * map of which block holds each page): `states[i]`/`payloads[i]` per page, where state
   * UNTOUCHED leaves the page as it is. Every page changed must be untouched, so no translation
   * can exist to shoot down.
   */
  installAbsentRange(firstGpn: number, states: Uint8Array, payloads: Int32Array): void {
    if (states.length !== payloads.length || firstGpn < 0 || firstGpn + states.length > this.pageCount) {
      throw new KernelError('BV_BAD_P2M', `${this.name}: range ${firstGpn}+${states.length} is outside RAM`);
    }
    const entries = this.entries;
    this.pristine = false;
    for (let i = 0; i < states.length; i++) {
      const state = states[i]! as AbsentStateId;
      if (state === AbsentState.UNTOUCHED) continue;
      const gpn = firstGpn + i;
      if (state > AbsentState.REMOTE || this.viewEntry(gpn) !== 0 || this.base !== null) {
        throw new KernelError('BV_BAD_P2M', `${this.name}: installAbsentRange on guest page ${gpn}: state ${state} over ${this.describe(gpn)}`);
      }
      entries[gpn] = P2mEntry.absent(state, payloads[i]!);
      this.stateCounts[state]!++;
    }
    this.regionRun[Math.floor(firstGpn / REGION_PAGES)] = REGION_UNKNOWN;
  }

  // ---------------------------------------------------------------------------------------------
  // Large pages (T-2, T-3, T-4)

  /**
   * @internal First host frame of the aligned 4 MiB run that backs every page of a guest region
   * (present, contiguous, readable without exits), or -1.
   */
  regionRunFrame(region: number): number {
    const cached = this.regionRun[region];
    if (cached === undefined) return REGION_NOT_LARGE;
    if (cached !== REGION_UNKNOWN) return cached;
    const first = region * REGION_PAGES;
    let result = REGION_NOT_LARGE;
    if (first + REGION_PAGES <= this.pageCount) {
      const head = this.viewEntry(first);
      const runFrame = head & P2M_FRAME_MASK;
      if (head > 0 && runFrame % FRAMES_PER_RUN === 0) {
        result = runFrame;
        for (let i = 0; i < REGION_PAGES; i++) {
          const entry = this.viewEntry(first + i);
          if (entry <= 0 || (entry & P2M_FRAME_MASK) !== runFrame + i || (entry & P2M_READ_BLOCKING) !== 0) {
            result = REGION_NOT_LARGE;
            break;
          }
        }
      }
    }
    this.regionRun[region] = result;
    return result;
  }

  /** Whether a 4 MiB guest region is backed by one aligned host run (a large mapping is possible). */
  regionIsLarge(region: number): boolean {
    return this.regionRunFrame(region) >= 0;
  }

  /** Number of 4 MiB regions wholly inside RAM. */
  get regionCount(): number {
    return Math.floor(this.pageCount / REGION_PAGES);
  }

  /** @internal The guest mapped a superpage over a guest-physical region (walk result). */
  noteSuperpage(gpaBase: number): void {
    const region = Math.floor(gpaBase / (REGION_PAGES * PAGE_SIZE));
    if (region < this.superpageSeen.length) this.superpageSeen[region] = 1;
  }

  /** Whether the guest maps a region with a superpage (as seen by walks). */
  superpageMapped(region: number): boolean {
    return this.superpageSeen[region] === 1;
  }

  /**
   * Moves a region onto a fresh aligned host run (T-3 promotion): present pages are copied,
   * untouched ones become zero pages of the run. Refused (false) when no run is free or a page
   * is in a state that cannot move (absent for another reason, shared copy-on-write, watched).
   */
  promoteRegion(region: number): boolean {
    this.fillRegion(region);
    const first = region * REGION_PAGES;
    if (region < 0 || first + REGION_PAGES > this.pageCount || this.regionRunFrame(region) >= 0) return false;
    for (let i = 0; i < REGION_PAGES; i++) {
      const entry = this.viewEntry(first + i);
      if (entry <= 0 ? P2mEntry.state(entry) !== AbsentState.UNTOUCHED : (entry & (P2mFlag.COPY_ON_WRITE | P2mFlag.WATCH)) !== 0) return false;
    }
    const runFrame = this.pool.allocRun();
    if (runFrame < 0) return false;
    const u8 = this.pool.u8;
    const gpns: number[] = [];
    const newEntries: number[] = [];
    for (let i = 0; i < REGION_PAGES; i++) {
      const entry = this.viewEntry(first + i);
      if (entry > 0) {
        const from = (entry & P2M_FRAME_MASK) * PAGE_SIZE;
        u8.copyWithin((runFrame + i) * PAGE_SIZE, from, from + PAGE_SIZE);
      }
      gpns.push(first + i);
      newEntries.push(P2mEntry.present(runFrame + i, entry > 0 ? entry & (P2mFlag.TRACED | P2mFlag.CHECKPOINT | P2mFlag.PARITY) : 0));
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

  // ---------------------------------------------------------------------------------------------
  // Fork (T-13)

  /**
   * @internal Use Hypervisor.forkVm. Makes `child` (a new VM of the same size in this pool,
   * never touched) see exactly this memory, copy-on-write, in O(1) of memory size: this VM's entries become a shared generation
   * that both read through (P2mGeneration), and the first write to a page on either side takes
   * it over or copies it. States with a payload are handed to their owner's fork hook; one
   * without a hook refuses the fork. Between runs only.
   */
  forkInto(child: GuestMemory): void {
    if (child.pageCount !== this.pageCount || child.pool !== this.pool) throw new KernelError('BV_FORK', 'fork: the child must be a VM of the same size in the same hypervisor');
    if (!child.pristine) throw new KernelError('BV_FORK', `fork: ${child.name} has memory of its own already`);
    if (this.epochHook !== null) throw new KernelError('BV_FORK', `fork: ${this.name} is in a snapshot epoch; finish the snapshot first`);
    // Parent and child would both write one file: persistent memory has a single owner.
    if (this.fileRanges.count > 0) throw new KernelError('BV_FORK', `fork: ${this.name} has persistent memory (a file-backed range), which a child cannot share; see docs/pmem.md`);
    this.fillAllRegions();
    for (let state: number = AbsentState.LAZY; state <= AbsentState.REMOTE; state++) {
      if (this.stateCounts[state] === 0 || state === AbsentState.BALLOONED) continue; // poisoned pages refuse the fork (no hook)
      if (!this.forkHooks.has(state)) {
        throw new KernelError('BV_FORK', `fork: ${this.stateCounts[state]} pages of ${this.name} are ${ABSENT_STATE_NAMES[state]} and their owner cannot share them with a child; bring them in first`);
      }
    }
    for (const [state, hook] of this.forkHooks) if (this.stateCounts[state]! > 0) hook(this, child);
    // Per-VM flags stay with this VM. Traces need nothing: a view asks its own MMU (viewEntry).
    // Policies' protections are re-applied above the new generation after a scan, which only
    // VMs using those policies pay.
    const otherFlags = this.flagCounts[2]! + this.flagCounts[3]! + this.flagCounts[4]!; // CHECKPOINT, PARITY, WATCH
    const flagged: number[] = [];
    const flaggedEntries: number[] = [];
    if (otherFlags > 0) {
      for (let gpn = 0; gpn < this.pageCount; gpn++) {
        const own = this.entries[gpn]!;
        if (own > 0 && (own & (P2M_PER_VM_FLAGS & ~P2mFlag.TRACED)) !== 0) {
          flagged.push(gpn);
          flaggedEntries.push(own & (P2M_PER_VM_FLAGS & ~P2mFlag.TRACED));
        }
      }
    }
    const generation = new P2mGeneration(this.entries, this.base, this.arena, (frame) => this.releaseFrame(frame), (frame) => this.pool.retain(frame));
    this.entries = this.arena.int32(this.pageCount);
    this.base = generation;
    this.flagCounts.fill(0);
    child.base = generation; // its own entries are new and all zero: everything reads through
    child.pristine = false;
    child.presentPages = this.presentPages;
    child.stateCounts.set(this.stateCounts);
    this.regionRun.fill(REGION_UNKNOWN);
    child.superpageSeen.set(this.superpageSeen);
    for (let i = 0; i < flagged.length; i++) this.protectPage(flagged[i]!, flaggedEntries[i]!);
    // Writes must now fault on both sides: the parent's write translations go (reads stay valid:
    // the frames have not moved); the child has none yet.
    this.host.revokeWrites();
  }

  // ---------------------------------------------------------------------------------------------
  // Reset and destroy

  /** @internal Use Vm.reset. Every page back to untouched (absent ones too); nothing deferred, nothing inherited. */
  clear(): void {
    this.releaseEntries();
    this.entries.fill(0);
    this.accessed.fill(0);
    this.forgetEntries();
  }

  /** Every frame and generation page this VM's entries hold goes back; the entries stay as they are. */
  private releaseEntries(): void {
    const base = this.base;
    const entries = this.entries;
    for (let gpn = 0; gpn < this.pageCount; gpn++) {
      const own = entries[gpn]!;
      if (own > 0) this.releaseFrame(own & P2M_FRAME_MASK);
    }
    base?.dropView(entries);
    this.base = null;
    base?.detachView();
  }

  /** The counters and per-region state of a VM with no pages (after releaseEntries). */
  private forgetEntries(): void {
    this.emptiedTotal++;
    this.presentPages = 0;
    this.stateCounts.fill(0);
    this.flagCounts.fill(0);
    this.pendingRegions = null;
    this.regionFiller = null;
    this.regionRun.fill(REGION_UNKNOWN);
    this.superpageSeen.fill(0);
    this.epochHook = null;
  }

  /** @internal Releases every frame and gives the per-page arrays back (Hypervisor.destroyVm). */
  dispose(): void {
    // No fill: the arena hands the per-page arrays back to the OS, and they read as zero again.
    // (Filling a 1 GiB VM's never-written entries would first fault in 1.25 MiB of pages.)
    this.releaseEntries();
    this.forgetEntries();
    this.fileRanges.detachAll();
    this.arena.release(this.entries);
    this.arena.release(this.accessedMarks);
    if (this.pageEpoch !== null) this.arena.release(this.pageEpoch);
    // Views into released slices must not alias the next VM's arrays.
    this.entries = new Int32Array(0);
    this.accessedMarks = new Uint8Array(0);
    this.pageEpoch = null;
  }

  // ---------------------------------------------------------------------------------------------
  // Memory errors (T-17; the model and the helpers are in poison.ts)

  /**
   * Corrupts the real host bytes behind a present page: `bits` (1 … 64) bits from bit
   * `bitOffset` change by `pattern`. A page sharing its frame first gets a private copy (an
   * error reaches one VM). The frame's decoded code is dropped and a traced page table's derived
   * translations go. Returns how many bits changed. Between runs only.
   */
  corruptPage(gpn: number, bitOffset: number, bits: number, pattern: CorruptionPattern, random?: () => number): number {
    checkPattern(pattern);
    checkErrorWindow(bitOffset, bits);
    const frame = this.privateFrame(gpn, 'corrupted');
    const changed = corruptBits(this.pool.u8.subarray(frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE), bitOffset, bits, pattern, random);
    this.decodeCache.drop(frame);
    this.contentsReplaced(gpn);
    return changed;
  }

  /**
   * Poisons a present page: it becomes absent in the POISONED state, its translations are shot
   * down on every vCPU and its frame is retired (FramePool.retire: never handed out again), so
   * no guest access reads its bytes; the next access runs the POISONED resolver. Between runs only.
   */
  poisonPage(gpn: number): void {
    const frame = this.privateFrame(gpn, 'poisoned');
    this.pool.retain(frame); // setEntry drops the page's reference; this one becomes the retirement's
    this.setEntry(gpn, P2mEntry.absent(AbsentState.POISONED, frame));
    this.contentsReplaced(gpn);
    this.decodeCache.drop(frame);
    this.pool.retire(frame);
  }

  /**
   * Makes a page POISONED whose bad bytes are not known any more (a checkpoint restored with the
   * page listed as poisoned, VmState.poisonedPages): a zeroed frame is retired behind it, and the
   * guest's next access takes a machine check unless a POISONED resolver rebuilds it. Between runs only.
   */
  markPoisoned(gpn: number): void {
    this.installPage(this.checkGpn(gpn), ZERO_PAGE);
    this.poisonPage(gpn);
  }

  /** The pages in the POISONED state, in order. */
  poisonedPages(): number[] {
    const gpns: number[] = [];
    if (this.stateCounts[AbsentState.POISONED] !== 0) this.forEachPage(PageState.POISONED, (gpn) => void gpns.push(gpn));
    return gpns;
  }

  /**
   * For the host, not the guest: runs an absent page's resolver with access HOST_READ (a
   * poisoned page's recovery, say) and says whether the page is present now. An untouched page
   * is left untouched (false); a state no resolver handles is left as it is (false). Between runs.
   */
  settlePage(gpn: number): boolean {
    const entry = this.viewEntry(this.checkGpn(gpn));
    if (entry > 0) return true;
    if (this.isUntouched(gpn)) return false;
    const state = P2mEntry.state(entry);
    if (!this.absentResolvers.has(state)) return false;
    try {
      return this.resolveAbsent(gpn, entry, HOST_READ) > 0;
    } catch (error) {
      if (error instanceof GuestAccessError) return false; // the page is one the guest may not touch (ballooned)
      throw error;
    }
  }

  /** A copy of a poisoned page's bad bytes, as they are in its retired frame. */
  poisonedPageBytes(gpn: number): Uint8Array {
    const entry = this.viewEntry(this.checkGpn(gpn));
    if (entry > 0 || P2mEntry.state(entry) !== AbsentState.POISONED) throw new KernelError('BV_NOT_POISONED', `${this.name}: guest page ${gpn} is ${this.describe(gpn)}, not poisoned`);
    const frame = P2mEntry.payload(entry);
    return this.pool.u8.slice(frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE);
  }

  /** The frame a present page holds alone (a shared one is copied first). */
  private privateFrame(gpn: number, what: string): number {
    this.checkGpn(gpn);
    if (this.viewEntry(gpn) <= 0) throw new KernelError('BV_NOT_PRESENT', `${this.name}: guest page ${gpn} is ${this.describe(gpn)}; only a present page can be ${what}`);
    const own = this.materialize(gpn);
    if (this.pool.refCount[own & P2M_FRAME_MASK]! > 1) this.breakCopyOnWrite(gpn);
    return this.entries[gpn]! & P2M_FRAME_MASK;
  }

  // ---------------------------------------------------------------------------------------------
  // Kernel-internal access paths (the vCPU's slow path, the walker, the MMU)

  /** @internal Whether a guest-physical address is RAM. */
  isRam(gpa: number): boolean {
    return gpa >= 0 && gpa < this.memoryBytes;
  }

  /**
   * @internal The frame for a RAM access, resolving absent states (and, for writes, protections
   * and the write epoch). -1 when the page could not be produced (the caller traps).
   */
  resolveFrame(gpn: number, access: MemoryAccessKind): number {
    let entry = this.viewEntry(gpn);
    if (entry <= 0) {
      entry = this.resolveAbsent(gpn, entry, access);
      if (entry <= 0) return -1;
    }
    if (access === MemoryAccess.WRITE) {
      if ((entry & P2M_RESOLVE_BEFORE_WRITE) !== 0) entry = this.resolveWriteProtect(gpn, entry);
      if (this.epochHook !== null) this.claimForWrite(gpn, entry & P2M_FRAME_MASK);
    }
    return entry & P2M_FRAME_MASK;
  }

  /** @internal */
  hostOffsetForRead(gpa: number): HostOffset {
    if (!this.isRam(gpa)) return -1;
    const frame = this.resolveFrame(Math.floor(gpa / PAGE_SIZE), MemoryAccess.READ);
    return frame < 0 ? HOST_OFFSET_REFUSED : frame * PAGE_SIZE + (gpa & (PAGE_SIZE - 1));
  }

  /** @internal */
  hostOffsetForWrite(gpa: number): HostOffset {
    if (!this.isRam(gpa)) return -1;
    const frame = this.resolveFrame(Math.floor(gpa / PAGE_SIZE), MemoryAccess.WRITE);
    return frame < 0 ? HOST_OFFSET_REFUSED : frame * PAGE_SIZE + (gpa & (PAGE_SIZE - 1));
  }

  /** @internal Host offset of a RAM address whose page is present, or -1 (no exits taken). */
  hostOffsetIfPresent(gpa: number): HostOffset {
    if (!this.isRam(gpa)) return -1;
    const entry = this.viewEntry(Math.floor(gpa / PAGE_SIZE));
    return entry <= 0 ? -1 : (entry & P2M_FRAME_MASK) * PAGE_SIZE + (gpa & (PAGE_SIZE - 1));
  }

  /** @internal Whether a read translation to gpa may be cached in a TLB. */
  mayCacheRead(gpa: number): boolean {
    return (this.viewEntry(Math.floor(gpa / PAGE_SIZE)) & P2M_READ_BLOCKING) === 0;
  }

  /** @internal Whether a write translation may be cached: no protection flag and no decoded code. */
  mayCacheWrite(gpa: number, frame: number): boolean {
    const gpn = Math.floor(gpa / PAGE_SIZE);
    const entry = this.viewEntry(gpn);
    if (entry <= 0 || (entry & P2M_WRITE_BLOCKING) !== 0 || this.decodeCache.isDecoded(frame)) return false;
    // During a snapshot epoch a page may be written directly only once it has been claimed.
    return this.epochHook === null || this.pageEpoch![gpn] === this.epoch;
  }

  /** @internal Whether a guest page holds a traced guest page table (writes must be reported). */
  isTraced(gpa: number): boolean {
    const entry = this.viewEntry(Math.floor(gpa / PAGE_SIZE));
    return entry > 0 && (entry & P2mFlag.TRACED) !== 0;
  }

  /** @internal Adds flags to a present page (the MMU's traces use it directly). */
  protectPage(gpn: number, flags: number): void {
    const view = this.viewEntry(gpn);
    if (view <= 0 || (view & flags) === flags) return;
    const own = this.materialize(gpn);
    this.pristine = false;
    this.entries[gpn] = own | flags;
    this.countFlags(own, own | flags);
    this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
    this.host.shootdown([gpn]);
  }

  /** @internal Clears flags from a present page. */
  unprotectPage(gpn: number, flags: number): void {
    const view = this.viewEntry(gpn);
    if (view <= 0 || (view & flags) === 0) return;
    const own = this.materialize(gpn);
    this.entries[gpn] = own & ~flags;
    this.countFlags(own, own & ~flags);
    this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
  }

  // ---------------------------------------------------------------------------------------------
  // Entries

  /** What this VM sees for gpn: its own entry, or the generation's with copy-on-write. */
  private viewEntry(gpn: number): number {
    const own = this.entries[gpn]!;
    if (own !== 0 || this.base === null) return own;
    const inherited = this.base.lookup(gpn);
    if (inherited <= 0) return inherited;
    // Flags of the VM that wrote the generation (its traces, its policies) are not ours; our own
    // MMU's traces are (asking it keeps fork from re-materialising every traced page table).
    return (inherited & ~P2M_PER_VM_FLAGS) | P2mFlag.COPY_ON_WRITE | (this.host.isTracing(gpn) ? P2mFlag.TRACED : 0);
  }

  /** Whether a page is untouched (a deferred region is filled in first). */
  private isUntouched(gpn: number): boolean {
    if (this.pendingRegions !== null) this.fillRegion(Math.floor(gpn / REGION_PAGES));
    const entry = this.viewEntry(gpn);
    return entry === 0 || entry === UNTOUCHED_ENTRY;
  }

  /** This VM's own entry (0 only when untouched and nothing is inherited). */
  private ownEntry(gpn: number): number {
    return this.entries[gpn] !== 0 || this.base === null ? this.entries[gpn]! : 0;
  }

  /**
   * Makes gpn's entry this VM's own (taking it over from the generation, with a frame
   * reference, if it was inherited) and returns it. The page's contents do not change.
   */
  private materialize(gpn: number): number {
    const own = this.entries[gpn]!;
    if (own !== 0 || this.base === null) return own;
    let taken = this.base.take(gpn);
    if (taken > 0) {
      taken = (taken & ~P2M_PER_VM_FLAGS) | P2mFlag.COPY_ON_WRITE | (this.host.isTracing(gpn) ? P2mFlag.TRACED : 0);
      this.countFlags(0, taken);
    } else if (taken === 0) {
      taken = UNTOUCHED_ENTRY; // explicit: must not read through again
    }
    this.entries[gpn] = taken;
    return taken;
  }

  /**
   * Replaces a page's entry, dropping the reference to the old frame if it was present, and
   * shoots down every vCPU's TLB entries derived from the page before returning.
   */
  private setEntry(gpn: number, entry: number): void {
    // TRACED belongs to the MMU: a page it traces keeps the flag whatever frame backs it.
    if (entry > 0 && this.host.isTracing(gpn)) entry |= P2mFlag.TRACED;
    // Untouched is 0 where nothing is inherited (so large-page and lazy-restore checks see it).
    if (entry === UNTOUCHED_ENTRY && this.base === null) entry = 0;
    this.pristine = false;
    const old = this.viewEntry(gpn);
    const ownOld = this.entries[gpn]!;
    const inherited = ownOld === 0 && this.base !== null;
    if (entry === 0 && this.base !== null) entry = UNTOUCHED_ENTRY;
    this.entries[gpn] = entry;
    this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
    this.countState(old, entry);
    this.countFlags(inherited ? 0 : ownOld, entry);
    // Only translations that could now be wrong need to go, and they go before the old frame
    // can be freed.
    if (old > 0 && old !== entry) this.host.shootdown([gpn]);
    if (inherited) this.base!.drop(gpn);
    else if (ownOld > 0 && ((ownOld & P2M_FRAME_MASK) !== (entry & P2M_FRAME_MASK) || entry <= 0)) this.releaseFrame(ownOld & P2M_FRAME_MASK);
  }

  /**
   * Replaces many entries at once with a single shootdown (region moves). The frames the old
   * entries held are released after every vCPU has dropped its translations.
   */
  private replaceEntries(gpns: readonly number[], entries: readonly number[]): void {
    this.pristine = false;
    const released: number[] = [];
    const changed: number[] = [];
    for (let i = 0; i < gpns.length; i++) {
      const gpn = gpns[i]!;
      const old = this.viewEntry(gpn);
      const ownOld = this.materialize(gpn);
      let entry = entries[i]!;
      if (entry > 0 && this.host.isTracing(gpn)) entry |= P2mFlag.TRACED;
      this.entries[gpn] = entry;
      this.regionRun[Math.floor(gpn / REGION_PAGES)] = REGION_UNKNOWN;
      this.countState(old, entry);
      this.countFlags(ownOld, entry);
      if (old > 0 && old !== entry) changed.push(gpn);
      if (ownOld > 0 && ((ownOld & P2M_FRAME_MASK) !== (entry & P2M_FRAME_MASK) || entry <= 0)) released.push(ownOld & P2M_FRAME_MASK);
    }
    if (changed.length > 0) this.host.shootdown(changed);
    for (const frame of released) this.releaseFrame(frame);
  }

  private countState(old: number, entry: number): void {
    if (old !== entry && entry <= 0 && old !== 0 && old !== UNTOUCHED_ENTRY) {
      const state = entry === 0 || entry === UNTOUCHED_ENTRY ? AbsentState.UNTOUCHED : P2mEntry.state(entry);
      if (state === AbsentState.UNTOUCHED || state === AbsentState.BALLOONED || state === AbsentState.POISONED) this.emptiedTotal++;
    }
    if (old > 0) this.presentPages--;
    else if (old < 0) this.stateCounts[P2mEntry.state(old)]!--;
    if (entry > 0) this.presentPages++;
    else if (entry < 0) this.stateCounts[P2mEntry.state(entry)]!++;
    this.stateCounts[AbsentState.UNTOUCHED] = 0; // counted by difference (countInState)
  }

  private countFlags(old: number, entry: number): void {
    const before = old > 0 ? old & P2M_FLAG_MASK : 0;
    const after = entry > 0 ? entry & P2M_FLAG_MASK : 0;
    if (before === after) return;
    for (let bit = 0; bit < 6; bit++) {
      const mask = 1 << (24 + bit);
      if ((before & mask) !== 0) this.flagCounts[bit]!--;
      if ((after & mask) !== 0) this.flagCounts[bit]!++;
    }
  }

  private resolveAbsent(gpn: number, entry: number, access: ResolverAccess): number {
    if (this.pendingRegions !== null && entry === 0) {
      this.fillRegion(Math.floor(gpn / REGION_PAGES)); // a deferred region: its entries first
      entry = this.viewEntry(gpn);
      if (entry > 0) return entry;
    }
    const state = P2mEntry.state(entry);
    const name = ABSENT_STATE_NAMES[state] ?? 'invalid';
    if (access !== HOST_READ) this.exits.absent[name] = (this.exits.absent[name] ?? 0) + 1;
    const resolver = this.absentResolvers.get(state);
    // A poisoned page nobody offers to repair is what the error made it: a machine check.
    if (!resolver && state === AbsentState.POISONED) return entry;
    if (!resolver) {
      const reserved = RESERVED_STATES.includes(state) ? ' (a reserved state: no resolver for it is built yet)' : '';
      throw new ReservedStateError('BV_NO_RESOLVER', `${this.name}: guest page ${gpn} is '${name}' and no resolver is registered for that state${reserved}`);
    }
    resolver(this, gpn, state, P2mEntry.payload(entry), access);
    return this.viewEntry(gpn);
  }

  private resolveWriteProtect(gpn: number, entry: number): number {
    for (const [flag, name] of PROTECTION_FLAGS) {
      if ((entry & flag) === 0) continue;
      this.exits.writeProtect[name] = (this.exits.writeProtect[name] ?? 0) + 1;
      const resolver = this.protectionResolvers.get(flag);
      if (!resolver) {
        const reserved = (flag & RESERVED_FLAGS) !== 0 ? ' (a reserved flag: no resolver for it is built yet)' : '';
        throw new ReservedStateError('BV_UNHANDLED_PROTECTION', `${this.name}: write to guest page ${gpn} protected by '${name}' and no resolver is registered${reserved}`);
      }
      resolver(this, gpn, flag);
      entry = this.viewEntry(gpn);
      if (entry <= 0 || (entry & flag) !== 0) throw new KernelError('BV_UNHANDLED_PROTECTION', `${this.name}: the '${name}' resolver left guest page ${gpn} protected`);
    }
    return entry;
  }

  /** Resolves a write to a copy-on-write page: a private copy if shared, else just the flag. */
  private breakCopyOnWrite(gpn: number): void {
    const own = this.materialize(gpn);
    const frame = own & P2M_FRAME_MASK;
    if (this.pool.refCount[frame]! > 1) {
      const copy = this.pool.allocFrame();
      this.pool.u8.copyWithin(copy * PAGE_SIZE, frame * PAGE_SIZE, (frame + 1) * PAGE_SIZE);
      this.setEntry(gpn, P2mEntry.present(copy, own & P2M_FLAG_MASK & ~P2mFlag.COPY_ON_WRITE));
    } else {
      this.unprotectPage(gpn, P2mFlag.COPY_ON_WRITE);
    }
    this.cowCopies++;
  }

  /**
   * Zero-on-demand, preferring a whole aligned host run when the policy says the region will be
   * mapped large and none of it is populated yet; otherwise one frame.
   */
  private allocateOnFirstTouch(gpn: number): void {
    const region = Math.floor(gpn / REGION_PAGES);
    const wantRun = this.largePagePolicy === 'always' || (this.largePagePolicy === 'superpages' && this.superpageSeen[region] === 1);
    if (wantRun && this.base === null && this.regionUntouched(region)) {
      const runFrame = this.pool.allocRun();
      if (runFrame >= 0) {
        const first = region * REGION_PAGES;
        // Every page was untouched, so no TLB holds anything to shoot down.
        this.pristine = false;
        for (let i = 0; i < REGION_PAGES; i++) this.entries[first + i] = P2M_PRESENT_BIT | (runFrame + i);
        this.presentPages += REGION_PAGES;
        this.regionRun[region] = runFrame;
        this.largePageStats.runsAllocated++;
        return;
      }
    }
    this.setEntry(gpn, P2mEntry.present(this.pool.allocFrame()));
  }

  private regionUntouched(region: number): boolean {
    const first = region * REGION_PAGES;
    if (first + REGION_PAGES > this.pageCount) return false;
    const entries = this.entries;
    for (let i = 0; i < REGION_PAGES; i++) if (entries[first + i] !== 0) return false;
    return true;
  }

  /**
   * Host code replaced a page's contents (installed, released, shared or moved a page): if the
   * page holds a traced guest page table, the MMU drops what it derived from the old contents,
   * as for a host write (writePhysical).
   */
  private contentsReplaced(gpn: number): void {
    if (this.host.isTracing(gpn)) this.host.zapTracedPage(gpn);
  }

  private releaseFrame(frame: number): void {
    if (this.pool.refCount[frame] === 1) this.decodeCache.drop(frame);
    this.pool.release(frame);
  }

  private checkGpn(gpn: number): number {
    if (this.entries.length === 0) throw new KernelError('BV_BAD_VM', `${this.name} has been destroyed`);
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= this.pageCount) throw new KernelError('BV_BAD_GPN', `guest page ${gpn} is outside ${this.name}'s RAM`);
    if (this.pendingRegions !== null) this.fillRegion(Math.floor(gpn / REGION_PAGES));
    return gpn;
  }

  private checkRange(gpa: number, length: number): void {
    if (!Number.isInteger(gpa) || !Number.isInteger(length) || length < 0 || length > MAX_RANGE || gpa < 0 || gpa + length > this.memoryBytes) {
      throw new KernelError('BV_BAD_GPA', `guest-physical range 0x${Number(gpa).toString(16)}+${length} is not inside ${this.name}'s RAM`);
    }
  }

  /** An absent state's number (PRESENT or anything else would encode another state, or none). */
  private checkAbsentState(state: number): void {
    if (!Number.isInteger(state) || state < AbsentState.UNTOUCHED || state > AbsentState.REMOTE) {
      throw new KernelError('BV_BAD_P2M', `${this.name}: ${state} is not an absent state (${ABSENT_STATE_NAMES.join(', ')})`);
    }
  }

  private checkFlags(flags: number): void {
    if (!Number.isInteger(flags) || flags === 0 || (flags & ~SHAREABLE_FLAGS & ~P2mFlag.COPY_ON_WRITE) !== 0) {
      throw new KernelError('BV_BAD_FLAGS', `${this.name}: 0x${Number(flags).toString(16)} is not a set of protection flags a service may set`);
    }
  }
}
