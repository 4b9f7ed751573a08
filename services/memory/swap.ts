/**
 * Hypervisor swap to a file: a page's 4 KiB go to a slot of a host file, its P2M entry becomes
 * SWAPPED(slot) and its host frame goes back to the OS, so the process RSS really drops. The
 * guest never notices: its next access to the page is an absent exit that the resolver
 * registered by attach() serves by reading the slot back into a fresh frame.
 *
 * - All-zero pages are never written: they simply become UNTOUCHED (zero on demand).
 * - Only plain present frames are swapped: a frame with any P2M flag (copy-on-write, traced
 *   page table, checkpoint, parity, watched) or with more than one reference (shared) is
 *   refused, because its owner's bookkeeping would not survive the round trip.
 * - Every slot carries a CRC-32 of the bytes written to it. A swap-in whose slot cannot be read
 *   back exactly (file closed, cut short, damaged) throws a SwapError instead of installing
 *   wrong bytes; inside a vCPU exit the kernel turns that into a host-error stop.
 *
 * One SwapFile may serve several VMs: slots are numbered per file, and each VM's P2M names its
 * own slots.
 *
 * With keepCleanCopies(vm, sink), a page swapped in by a read keeps its slot while it stays clean,
 * as Linux's swap cache does: the sink (memory-error recovery's clean copy) may re-read it from
 * the slot until the first write releases it. Kept slots give way to new swap-outs when the file
 * is at its limit.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import { AbsentState, P2mFlag, PageState } from '../../kernel/index.ts';
import type { GuestMemory, ResolverAccess, Vm } from '../../kernel/index.ts';
import { MemoryAccess } from '../../kernel/index.ts';
import type { CleanCopySink, CleanSource } from '../recovery/types.ts';
import { HostFile, NativeError } from '../../native/index.ts';

/** Stable codes of every swap error. */
export const SWAP_ERROR_CODES = [
  /** The swap file reached its size limit, or the disk is full (ENOSPC). */
  'BV_SWAP_FULL',
  /** A file-system call failed; the native error is the cause. */
  'BV_SWAP_IO',
  /** Use of a swap file after close(). */
  'BV_SWAP_CLOSED',
  /** A slot read back short or with another checksum than was written: the file is damaged. */
  'BV_SWAP_CORRUPT',
  /** swapOut() on a VM that was not attach()ed (nobody could swap the page back in). */
  'BV_SWAP_NOT_ATTACHED',
  /** A bad option or argument. */
  'BV_SWAP_BAD_ARGUMENT',
] as const;

/** One of SWAP_ERROR_CODES. */
export type SwapErrorCode = (typeof SWAP_ERROR_CODES)[number];

/** A swap failure (see SWAP_ERROR_CODES); inside a guest access it stops the VM with a host error. */
export class SwapError extends BvError {
  /** One of SWAP_ERROR_CODES. */
  declare readonly code: SwapErrorCode;

  constructor(code: SwapErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** Options of SwapFile.create and SwapFile.createIn. */
export interface SwapFileOptions {
  /** The file grows by this many bytes at a time (multiple of 4 KiB; default 1 MiB). */
  chunkBytes?: number;
  /** Largest size the file may reach; beyond it swapOut throws BV_SWAP_FULL (default: no limit). */
  maxBytes?: number;
}

/** Counters of a SwapFile (stats()). */
export interface SwapStats {
  /** Pages written to slots. */
  pagesOut: number;
  /** Pages read back from slots by the resolver. */
  pagesIn: number;
  /** All-zero pages dropped (made UNTOUCHED) without any I/O. */
  zeroPagesDropped: number;
  /** swapOut calls refused (absent, flagged or shared page). */
  refused: number;
  /** Slots holding a page now (kept clean copies included). */
  slotsInUse: number;
  /** Slots kept after a swap-in as a clean copy of the page (keepCleanCopies). */
  slotsKept: number;
  /** Kept slots given up for a new swap-out because the file was at its limit. */
  keptEvicted: number;
  /** Swap-outs of a page still clean in its kept slot: no write (counted in pagesOut too). */
  outWithoutWrite: number;
  /** Current size of the swap file. */
  fileBytes: number;
}

/** The swap file serving each VM: a VM has one SWAPPED resolver, so at most one file. */
const swapOfVm = new WeakMap<Vm, SwapFile>();

/** Largest slot number a SWAPPED entry can carry (28-bit payload). */
const MAX_SLOTS = 0x0fff_ffff + 1;
const DEFAULT_CHUNK_BYTES = 1 << 20;

/** A swap file and the resolver that serves SWAPPED pages from it. */
export class SwapFile {
  /** Where the file lives; removed by close(). */
  readonly path: string;
  private readonly file: HostFile;
  private readonly chunkSlots: number;
  private readonly maxSlots: number;
  /** Slots the file has room for. */
  private capacity = 0;
  /** Slots below this have been used at least once; above it the file is fresh. */
  private highWater = 0;
  private readonly freeSlots: number[] = [];
  private inUse = new Uint8Array(0);
  private checksums = new Uint32Array(0);
  private readonly attached = new Set<Vm>();
  private counters = { pagesOut: 0, pagesIn: 0, zeroPagesDropped: 0, refused: 0, slotsInUse: 0, slotsKept: 0, keptEvicted: 0, outWithoutWrite: 0 };
  /** Where each VM's swapped-in clean pages go (keepCleanCopies). */
  private readonly sinks = new Map<Vm, CleanCopySink>();
  /** Slots kept as clean copies, oldest first (Map order: evicted first), with whose page they hold. */
  private readonly kept = new Map<number, { vm: Vm; gpn: number }>();
  /** The same, by VM and page. */
  private readonly keptByPage = new Map<Vm, Map<number, number>>();

  private constructor(path: string, file: HostFile, options: SwapFileOptions) {
    const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0 || chunkBytes % PAGE_SIZE !== 0) {
      throw new SwapError('BV_SWAP_BAD_ARGUMENT', `swap chunk size must be a positive multiple of 4 KiB, got ${chunkBytes}`);
    }
    const maxBytes = options.maxBytes ?? MAX_SLOTS * PAGE_SIZE;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new SwapError('BV_SWAP_BAD_ARGUMENT', `swap size limit must be a non-negative integer, got ${maxBytes}`);
    }
    this.path = path;
    this.file = file;
    this.chunkSlots = chunkBytes / PAGE_SIZE;
    this.maxSlots = Math.min(MAX_SLOTS, Math.floor(maxBytes / PAGE_SIZE));
  }

  /** Creates (or empties) a swap file at `path`. */
  static create(path: string, options: SwapFileOptions = {}): SwapFile {
    let file: HostFile;
    try {
      file = HostFile.open(path, 'create');
    } catch (error) {
      throw wrapIo(error, `cannot create swap file ${path}`);
    }
    try {
      return new SwapFile(path, file, options);
    } catch (error) {
      file.close();
      rmSync(path, { force: true });
      throw error;
    }
  }

  /** Creates a swap file with a fresh unique name in `directory`. */
  static createIn(directory: string, options: SwapFileOptions = {}): SwapFile {
    return SwapFile.create(join(directory, `bytevisor-${process.pid}-${randomBytes(6).toString('hex')}.swap`), options);
  }

  /** Whether close() has run (swapped pages can no longer be read back). */
  get closed(): boolean {
    return this.file.closed;
  }

  /**
   * Registers this file's resolver for SWAPPED pages of `vm`, and a reset hook that forgets the
   * VM's swapped pages (after a reset they must read as zero, not as their old contents).
   */
  attach(vm: Vm): void {
    const current = swapOfVm.get(vm);
    if (current === this) return;
    if (current) throw new SwapError('BV_SWAP_BAD_ARGUMENT', `${vm.name} already swaps to ${current.path}`);
    swapOfVm.set(vm, this);
    this.attached.add(vm);
    vm.memory.onAbsent(AbsentState.SWAPPED, (memory, gpn, _state, slot, access) => this.swapIn(vm, memory, gpn, slot, access));
    vm.onReset(() => this.forget(vm));
  }

  /**
   * From now on, a page of `vm` swapped in by a read keeps its slot as a clean copy handed to
   * `sink` (CleanCopyRecovery.admit), until the sink releases it (the page was written). Null
   * stops it for pages swapped in later. May come before attach (a scheduler attaches at its
   * first swap-out).
   */
  keepCleanCopies(vm: Vm, sink: CleanCopySink | null): void {
    if (sink === null) this.sinks.delete(vm);
    else this.sinks.set(vm, sink);
  }

  /**
   * Frees the slots of every page of `vm` that is swapped to this file and makes those pages
   * UNTOUCHED. Call before destroying a VM whose pages may still be swapped.
   */
  forget(vm: Vm): void {
    this.sinks.delete(vm);
    for (const [slot, record] of this.kept) if (record.vm === vm) this.dropKept(slot);
    if (vm.memory.countInState(AbsentState.SWAPPED) === 0) return;
    vm.memory.forEachPage(PageState.SWAPPED, (gpn, slot) => {
      this.freeSlot(slot);
      vm.memory.releasePage(gpn, AbsentState.UNTOUCHED);
    });
  }

  /**
   * Swaps one guest page out. Returns false (nothing changed) when the page is not a plain
   * present frame. Throws SwapError when the file is full, closed or cannot be written; the page
   * is then left as it was.
   */
  swapOut(vm: Vm, gpn: number): boolean {
    if (!this.attached.has(vm)) throw new SwapError('BV_SWAP_NOT_ATTACHED', `swap file ${this.path} is not attached to ${vm.name}`);
    if (this.file.closed) throw new SwapError('BV_SWAP_CLOSED', `swap file ${this.path} is closed`);
    const memory = vm.memory;
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= memory.pageCount) {
      throw new SwapError('BV_SWAP_BAD_ARGUMENT', `guest page ${gpn} is outside ${vm.name}'s RAM`);
    }
    const keptSlot = this.keptByPage.get(vm)?.get(gpn);
    if (keptSlot !== undefined && memory.stateOf(gpn) === PageState.PRESENT && memory.flagsOf(gpn) === P2mFlag.PARITY && memory.isPrivate(gpn)) {
      // Clean since it came from this slot (its only flag is the clean copy's seal): the slot
      // still holds its bytes, so it goes back there with no write at all.
      this.unkeep(keptSlot);
      memory.releasePage(gpn, AbsentState.SWAPPED, keptSlot);
      this.counters.pagesOut++;
      this.counters.outWithoutWrite++;
      return true;
    }
    if (memory.stateOf(gpn) !== PageState.PRESENT || memory.flagsOf(gpn) !== 0 || !memory.isPrivate(gpn)) {
      this.counters.refused++;
      return false;
    }
    if (memory.isZeroPage(gpn)) {
      memory.releasePage(gpn, AbsentState.UNTOUCHED);
      this.counters.zeroPagesDropped++;
      return true;
    }
    const page = memory.presentPageBytes(gpn)!;
    const slot = this.allocSlot();
    try {
      this.file.pwrite(page, slot * PAGE_SIZE);
    } catch (error) {
      this.freeSlot(slot);
      throw wrapIo(error, `cannot write swap slot ${slot} of ${this.path}`);
    }
    this.checksums[slot] = crc32(page) >>> 0;
    memory.releasePage(gpn, AbsentState.SWAPPED, slot);
    this.counters.pagesOut++;
    return true;
  }

  /** A snapshot of the counters and the file's size. */
  stats(): SwapStats {
    return { ...this.counters, fileBytes: this.capacity * PAGE_SIZE };
  }

  /** Closes and removes the file. Pages still swapped to it can no longer be read. Idempotent. */
  close(): void {
    if (this.file.closed) return;
    this.file.close();
    rmSync(this.path, { force: true });
  }

  // ---------------------------------------------------------------------------------------------

  /** The SWAPPED resolver: reads the slot into a fresh frame, verifies it, installs it. */
  private swapIn(vm: Vm, memory: GuestMemory, gpn: number, slot: number, access: ResolverAccess): void {
    if (this.file.closed) throw new SwapError('BV_SWAP_CLOSED', `guest page ${gpn} of ${memory.name} is in swap slot ${slot}, but swap file ${this.path} is closed`);
    if (slot >= this.highWater || this.inUse[slot] !== 1) {
      throw new SwapError('BV_SWAP_CORRUPT', `guest page ${gpn} of ${memory.name} names swap slot ${slot}, which holds no page`);
    }
    // Read straight into the new frame; a throw leaves the page swapped and the frame freed.
    memory.installPage(gpn, (page) => {
      let got: number;
      try {
        got = this.file.pread(page, slot * PAGE_SIZE);
      } catch (error) {
        throw wrapIo(error, `cannot read swap slot ${slot} of ${this.path}`);
      }
      if (got !== PAGE_SIZE) throw new SwapError('BV_SWAP_CORRUPT', `swap slot ${slot} of ${this.path} is cut short (${got} of ${PAGE_SIZE} bytes)`);
      if ((crc32(page) >>> 0) !== this.checksums[slot]) throw new SwapError('BV_SWAP_CORRUPT', `swap slot ${slot} of ${this.path} is damaged (checksum mismatch)`);
    });
    this.counters.pagesIn++;
    // A write dirties the page at once: keep the slot only for a page that may stay clean.
    const sink = access === MemoryAccess.WRITE ? undefined : this.sinks.get(vm);
    if (sink === undefined || !this.keep(vm, sink, gpn, slot)) this.freeSlot(slot);
  }

  /** Keeps `slot` as the clean copy of page `gpn` of `vm`, handed to `sink`; false when the sink refuses. */
  private keep(vm: Vm, sink: CleanCopySink, gpn: number, slot: number): boolean {
    const record = { vm, gpn };
    this.kept.set(slot, record);
    let byPage = this.keptByPage.get(vm);
    if (byPage === undefined) this.keptByPage.set(vm, (byPage = new Map()));
    byPage.set(gpn, slot);
    const source: CleanSource = {
      name: 'swap',
      // A slot given up (evicted, forgotten, reused) no longer answers for this page.
      read: () => (this.kept.get(slot) === record ? this.readKept(slot) : null),
      release: () => {
        if (this.kept.get(slot) === record) this.dropKept(slot);
      },
    };
    if (!sink.admit(gpn, source)) {
      this.kept.delete(slot);
      byPage.delete(gpn);
      return false;
    }
    this.counters.slotsKept++;
    return true;
  }

  /** Forgets a kept slot (still in use: the caller frees it or gives it a page). */
  private unkeep(slot: number): void {
    const record = this.kept.get(slot)!;
    this.kept.delete(slot);
    this.keptByPage.get(record.vm)?.delete(record.gpn);
    this.counters.slotsKept--;
  }

  /** Frees a kept slot. */
  private dropKept(slot: number): void {
    this.unkeep(slot);
    this.freeSlot(slot);
  }

  /** A kept slot's bytes, verified against its checksum; null when they cannot be read back exactly. */
  private readKept(slot: number): Uint8Array | null {
    if (this.file.closed) return null;
    const page = new Uint8Array(PAGE_SIZE);
    try {
      if (this.file.pread(page, slot * PAGE_SIZE) !== PAGE_SIZE) return null;
    } catch {
      return null;
    }
    return (crc32(page) >>> 0) === this.checksums[slot] ? page : null;
  }

  /** Gives up the oldest kept clean copy (its sink reads nothing from it any more); false if none. */
  private evictKept(): boolean {
    for (const slot of this.kept.keys()) {
      this.dropKept(slot);
      this.counters.keptEvicted++;
      return true;
    }
    return false;
  }

  private allocSlot(): number {
    const reused = this.freeSlots.pop();
    if (reused !== undefined) {
      this.inUse[reused] = 1;
      this.counters.slotsInUse++;
      return reused;
    }
    if (this.highWater >= this.maxSlots) {
      if (this.evictKept()) return this.allocSlot();
      throw new SwapError('BV_SWAP_FULL', `swap file ${this.path} is full (${this.maxSlots} slots, ${this.maxSlots * PAGE_SIZE} bytes)`);
    }
    if (this.highWater === this.capacity) this.grow();
    const slot = this.highWater++;
    this.inUse[slot] = 1;
    this.counters.slotsInUse++;
    return slot;
  }

  private grow(): void {
    const capacity = Math.min(this.maxSlots, this.capacity + this.chunkSlots);
    try {
      this.file.truncate(capacity * PAGE_SIZE);
    } catch (error) {
      throw wrapIo(error, `cannot grow swap file ${this.path} to ${capacity * PAGE_SIZE} bytes`);
    }
    const inUse = new Uint8Array(capacity);
    inUse.set(this.inUse);
    const checksums = new Uint32Array(capacity);
    checksums.set(this.checksums);
    this.inUse = inUse;
    this.checksums = checksums;
    this.capacity = capacity;
  }

  private freeSlot(slot: number): void {
    if (this.inUse[slot] !== 1) return;
    this.inUse[slot] = 0;
    this.freeSlots.push(slot);
    this.counters.slotsInUse--;
  }
}

/** A native failure as a SwapError: ENOSPC is BV_SWAP_FULL, a closed file BV_SWAP_CLOSED. */
function wrapIo(error: unknown, message: string): SwapError {
  if (error instanceof SwapError) return error;
  if (error instanceof NativeError) {
    if (error.code === 'BV_NATIVE_CLOSED') return new SwapError('BV_SWAP_CLOSED', `${message}: the file is closed`, { cause: error });
    if (error.errnoName === 'ENOSPC' || error.errnoName === 'EFBIG') return new SwapError('BV_SWAP_FULL', `${message}: ${error.message}`, { cause: error });
  }
  return new SwapError('BV_SWAP_IO', `${message}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}
