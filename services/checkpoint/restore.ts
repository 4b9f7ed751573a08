/**
 * Restoring a VM from a checkpoint file, in one of three ways:
 *
 * - eager: every block is read (and its CRC checked) before the VM is returned.
 * - lazy (T-11): the VM is returned before any block or index is read. The P2M is filled 4 MiB
 *   region by region, from that region's slice of the index, on first use: each stored page's
 *   entry says "lazy, in block b". The first access to such a page reads and decodes block b
 *   once and installs every page of it that is still lazy (its page list comes from the file's
 *   per-block lists, so no step needs the whole index). A background prefetcher (a VM ticker, so
 *   it is deterministic) brings in the remaining blocks in file order, a few per tick.
 * - map: raw blocks are mapped copy-on-write straight from the file into contiguous host frames
 *   (no copy, page cache shared by every VM restored from the same file); lz4 blocks are read.
 *
 * Zero pages are never read: they stay untouched and get a zero frame on first use.
 */
import { resolve } from 'node:path';
import { FRAME_SIZE, PageState, REGION_PAGES, RUN_SIZE } from '../../kernel/index.ts';
import type { Hypervisor, Vm, VmConfig, VmState } from '../../kernel/index.ts';
import { CheckpointError } from './errors.ts';
import type { JsonObject } from './format.ts';
import { INDEX_REGION_PAGES, PAGE_BYTES, sectionName, SectionType, ZERO_PAGE_BLOCK } from './format.ts';
import { CheckpointReader } from './reader.ts';
import { decodeVmCheckpoint, VmCheckpointError } from './vm-checkpoint.ts';

/** How a restore brings memory in (see the module comment and docs/checkpoints.md). */
export type RestoreMode = 'lazy' | 'eager' | 'map';

/** The lazy restore's background prefetcher. */
export interface PrefetchOptions {
  /** Guest instructions between prefetch ticks (default 20,000: about one scheduling round). */
  everyInstructions?: number;
  /** Blocks read per tick (default 1, i.e. 1 MiB with default blocks). */
  blocksPerTick?: number;
}

/** Options of restoreVmCheckpoint. */
export interface RestoreOptions {
  /** 'eager', 'lazy' or 'map'. */
  mode: RestoreMode;
  /** The new VM's name (default: the saved VM's name). */
  name?: string;
  /**
   * Attaches devices (and anything else that registers state components) to the new VM before
   * their state is restored. `saved` is the checkpoint's state: attach the standard devices with
   * `bootArgs: savedBootArgs(saved.components.bootargs.state)`.
   */
  attach?: (vm: Vm, saved: VmState) => void;
  /** Lazy mode: the background prefetcher, or false for demand reads only. */
  prefetch?: PrefetchOptions | false;
  /**
   * Map mode: check each raw block's CRC before mapping it (default true). Mapping skips the
   * check otherwise, so a damaged file would give the guest wrong bytes; pass false only for
   * files you trust (the verify pass reads the file once, which also warms the page cache).
   */
  verify?: boolean;
  /** Stored pages brought into memory so far, and the number of stored pages. */
  onProgress?: (done: number, total: number) => void;
}

const DEFAULT_PREFETCH_EVERY = 20_000;
const DEFAULT_PREFETCH_BLOCKS = 1;
const LAZY = PageState.LAZY;
const UNTOUCHED = PageState.UNTOUCHED;
/** LAZY payload of the pages of a region whose index could not be read (no real block: < 2^20 pages). */
const UNREADABLE_REGION = 0x0fff_ffff;
/** Most frames one contiguous allocation (and so one mapping) can cover: a 4 MiB chunk. */
const MAX_CONTIGUOUS_FRAMES = RUN_SIZE / FRAME_SIZE;

/**
 * Creates a VM from the checkpoint at `path` and restores its CPU, component and memory state.
 * The VM is ready to run when this returns; in lazy mode its memory keeps arriving while it
 * runs (see RestoredVm.complete). On any error nothing is left behind (the VM is destroyed).
 */
export function restoreVmCheckpoint(hv: Hypervisor, path: string, options: RestoreOptions): RestoredVm {
  const started = performance.now();
  checkOptions(hv, options);
  // Lazy: the index is read region by region and block by block, so neither opening nor the
  // first access grows with memory size.
  const reader = CheckpointReader.open(path, { lazyIndex: options.mode === 'lazy' });
  let vm: Vm | undefined;
  try {
    const decoded = decodeVmCheckpoint(reader.contents, path);
    vm = hv.createVm(options.name === undefined ? { ...decoded.state.config } : { ...decoded.state.config, name: options.name });
    options.attach?.(vm, decoded.state);
    // Components, device layout and device states are checked before any memory is read or mapped.
    vm.checkState(decoded.state);
    vm.image = decoded.image;
    // Memory first: restoring the vCPUs may already read guest page tables.
    const restored = new RestoredVm(hv, vm, reader, decoded.state, decoded.extra, options, started);
    vm.restoreCheckedState(decoded.state); // checked above, before any memory; unchanged since
    restored.markReady();
    return restored;
  } catch (error) {
    if (vm !== undefined && hv.vms.includes(vm)) hv.destroyVm(vm);
    reader.close();
    throw error;
  }
}

/**
 * The configuration a checkpoint would restore (name, memory, vCPUs, …), read and checked without
 * creating anything: what a host checks against its VMs and pool before it restores elsewhere.
 */
export function readVmCheckpointConfig(path: string): VmConfig {
  const reader = CheckpointReader.open(path, { lazyIndex: true });
  try {
    return { ...decodeVmCheckpoint(reader.contents, path).state.config };
  } finally {
    reader.close();
  }
}

/** A file error during a lazy restore, saying what wanted the read (other errors unchanged). */
function lazyRestoreError(what: string, error: unknown): unknown {
  if (!(error instanceof CheckpointError) || error.message.startsWith('lazy restore of ')) return error;
  return new CheckpointError(error.code, `lazy restore of ${what} failed: ${error.message}`, error.where, { cause: error });
}

function checkOptions(hv: Hypervisor, options: RestoreOptions): void {
  const { mode, prefetch } = options;
  if (mode !== 'lazy' && mode !== 'eager' && mode !== 'map') {
    throw new VmCheckpointError('BV_VMCKPT_BAD_REQUEST', `unknown restore mode '${String(mode)}' (lazy, eager or map)`);
  }
  if (prefetch) {
    for (const [name, value] of Object.entries(prefetch)) {
      if (value !== undefined && (!Number.isSafeInteger(value) || (value as number) <= 0)) {
        throw new VmCheckpointError('BV_VMCKPT_BAD_REQUEST', `prefetch.${name} must be a positive integer, got ${String(value)}`);
      }
    }
  }
  if (mode === 'map') {
    if (!hv.canMapFiles) {
      throw new VmCheckpointError('BV_VMCKPT_BAD_REQUEST', 'map mode needs an anonymous host pool (createHypervisor without backingFile); use eager or lazy');
    }
  }
}

/** A restored VM and how its memory came in. */
export class RestoredVm {
  /** The new VM, ready to run; its memory may still be arriving (lazy mode, see `complete`). */
  readonly vm: Vm;
  /** The checkpoint's CPU, component and configuration state. */
  readonly saved: VmState;
  /** CONFIG.extra as saved (saveVmCheckpoint's `extra`), or null. */
  readonly extra: JsonObject | null;
  /** The mode it was restored in. */
  readonly mode: RestoreMode;
  /**
   * Called with the guest pages a lazy restore has just read in from the file (a demand read or
   * the prefetcher), before the access that wanted them completes: they hold the file's bytes
   * (CleanCopyRecovery.admitFromCheckpoint seals them as clean copies). Null: nobody listens.
   */
  onPagesInstalled: ((gpns: readonly number[]) => void) | null = null;
  /** The checkpoint file's path. */
  readonly path: string;
  /** Storage blocks in the file and the pages they hold (zero pages are not stored). */
  readonly blockCount: number;
  /** Pages stored in the file. */
  readonly storedPages: number;

  readonly #hv: Hypervisor;
  readonly #reader: CheckpointReader;
  readonly #onProgress: ((done: number, total: number) => void) | undefined;
  readonly #started: number;
  /** Per block: its pages are in memory (or no longer wanted, after a reset). */
  readonly #blockDone: Uint8Array;
  #blocksDone = 0;
  #pagesDone = 0;
  #prefetchCursor = 0;
  #blocksRead = 0;
  #blocksMapped = 0;
  #pagesInstalled = 0;
  #pagesMapped = 0;
  #demandReads = 0;
  #prefetched = 0;
  #readyMs = 0;
  #completeMs: number | null = null;
  #discardedByReset = 0;
  /** A reset dropped the lazy pages: the index no longer describes this VM's memory. */
  #discarded = false;
  /** Lazy mode: the VM's 4 MiB regions, those filled in so far, and the prefetcher's next one. */
  readonly #regionCount: number;
  #regionsFilled = 0;
  #regionCursor = 0;
  /** Removes the prefetcher's ticker. */
  #stopPrefetch: (() => void) | undefined;
  /** Regions whose index could not be read, with the error every access to them reports. */
  readonly #unreadableRegions = new Map<number, unknown>();

  /** @internal Built by restoreVmCheckpoint: sets up the memory per mode. */
  constructor(hv: Hypervisor, vm: Vm, reader: CheckpointReader, saved: VmState, extra: JsonObject | null, options: RestoreOptions, started: number) {
    this.#hv = hv;
    this.vm = vm;
    this.#reader = reader;
    this.saved = saved;
    this.extra = extra;
    this.mode = options.mode;
    this.path = reader.path;
    this.#onProgress = options.onProgress;
    this.#started = started;
    this.blockCount = reader.blockCount;
    this.storedPages = reader.storedPageCount;
    this.#blockDone = new Uint8Array(this.blockCount);
    this.#regionCount = options.mode === 'lazy' ? Math.ceil(vm.memory.pageCount / REGION_PAGES) : 0;
    if (options.mode === 'lazy') this.#setUpLazy(options.prefetch ?? {});
    else if (options.mode === 'eager') this.finishRestore();
    else this.#map(options.verify ?? true);
  }

  /** Blocks read from the file (on demand, by the prefetcher, eagerly, or to verify/fall back). */
  get blocksRead(): number {
    return this.#blocksRead;
  }

  /** Raw blocks mapped from the file (map mode). */
  get blocksMapped(): number {
    return this.#blocksMapped;
  }

  /** Pages copied into fresh frames. */
  get pagesInstalled(): number {
    return this.#pagesInstalled;
  }

  /** Pages backed by the file mapping (map mode). */
  get pagesMapped(): number {
    return this.#pagesMapped;
  }

  /** Lazy mode: blocks read because the guest (or the host) touched one of their pages. */
  get demandReads(): number {
    return this.#demandReads;
  }

  /** Lazy mode: blocks read by the background prefetcher. */
  get prefetched(): number {
    return this.#prefetched;
  }

  /** Milliseconds from the restore call until the VM could execute its first instruction. */
  get firstInstructionReadyMs(): number {
    return this.#readyMs;
  }

  /** Milliseconds from the restore call until all memory was in, or null while lazy pages remain. */
  get completeMs(): number | null {
    return this.#completeMs;
  }

  /** Lazy pages dropped because the guest reset the VM before they were read. */
  get discardedByReset(): number {
    return this.#discardedByReset;
  }

  /** True once every stored page is in memory (always, after eager and map restores). */
  get complete(): boolean {
    return this.#blocksDone === this.blockCount;
  }

  /**
   * Reads every block that is still lazy, now (before a fork, or to stop depending on the file).
   * Call between runs.
   */
  finishRestore(): void {
    for (let block = 0; block < this.blockCount; block++) if (this.#blockDone[block] === 0) this.#installBlock(block);
    if (this.#regionsLeft()) this.vm.memory.fillAllRegions();
    this.#noteComplete();
  }

  /**
   * Stops using the file. If lazy pages remain and the VM still exists, they are read first, so
   * the VM never depends on a closed file. Idempotent.
   */
  close(): void {
    if ((!this.complete || this.#regionsLeft()) && this.#hv.vms.includes(this.vm)) this.finishRestore();
    this.#reader.close();
  }

  /** @internal */
  markReady(): void {
    this.#readyMs = performance.now() - this.#started;
    if (this.complete) this.#noteComplete();
  }

  // -------------------------------------------------------------------------------------------

  /**
   * O(regions), not O(pages): the kernel defers every 4 MiB region, and the first access to a
   * region fills in its LAZY entries from that region of the index alone.
   */
  #setUpLazy(prefetch: PrefetchOptions | false): void {
    const vm = this.vm;
    vm.memory.deferRegions((_memory, region) => this.#fillRegion(region));
    vm.memory.onAbsent(LAZY, (_memory, gpn, _state, block) => this.#demand(gpn, block));
    // A fork needs every page readable by both VMs: the rest of the file comes in first.
    vm.memory.onFork(LAZY, () => this.finishRestore());
    vm.onReset(() => this.#discardLazyPages());
    if (prefetch !== false) {
      const perTick = prefetch.blocksPerTick ?? DEFAULT_PREFETCH_BLOCKS;
      this.#stopPrefetch = vm.addTicker(prefetch.everyInstructions ?? DEFAULT_PREFETCH_EVERY, () => this.#prefetchTick(perTick));
    }
  }

  /**
   * Marks each stored page of a kernel region "lazy, in block b", reading only the index regions
   * it overlaps. A block installed before its pages' regions were filled has filled them itself
   * (installBlock), so a page marked here for a finished block is one that block's list lacks:
   * the access to it reports the inconsistency (#demand).
   */
  #fillRegion(region: number): void {
    const vm = this.vm;
    const first = region * REGION_PAGES;
    const end = Math.min(first + REGION_PAGES, vm.memory.pageCount);
    const states = new Uint8Array(end - first);
    const blocks = new Int32Array(end - first);
    this.#regionsFilled++;
    try {
      for (let gpn = first; gpn < end; ) {
        const index = this.#reader.regionEntries(Math.floor(gpn / INDEX_REGION_PAGES));
        const stop = Math.min(end, index.firstGpn + index.blocks.length);
        for (; gpn < stop; gpn++) {
          const block = index.blocks[gpn - index.firstGpn]!;
          if (block !== ZERO_PAGE_BLOCK) {
            states[gpn - first] = LAZY;
            blocks[gpn - first] = block;
          }
        }
      }
    } catch (error) {
      // The kernel counts the region as filled: its pages must not read as zero later. Each
      // stays lazy and every access to it reports the error.
      const reported = lazyRestoreError(`guest pages ${first}-${end - 1}`, error);
      this.#unreadableRegions.set(region, reported);
      states.fill(LAZY);
      blocks.fill(UNREADABLE_REGION);
      vm.memory.installAbsentRange(first, states, blocks);
      throw reported;
    }
    vm.memory.installAbsentRange(first, states, blocks);
    this.#closeFileWhenDone();
  }

  /** Lazy mode: regions never filled in remain (the index must be read for them). */
  #regionsLeft(): boolean {
    return this.mode === 'lazy' && !this.#discarded && this.#regionsFilled < this.#regionCount && this.#hv.vms.includes(this.vm);
  }

  /**
   * Once every block is in and every region filled, the file is no longer needed. Regions never
   * used hold only zero pages, but their index is still read and checked (by the prefetcher, or
   * by finishRestore/close) so that no page the index puts in a block silently reads as zero.
   */
  #closeFileWhenDone(): void {
    if (!this.complete || this.#regionsLeft()) return;
    this.#reader.close();
    this.#stopPrefetch?.(); // nothing left to fetch
  }

  #demand(gpn: number, block: number): void {
    if (block === UNREADABLE_REGION) throw this.#unreadableRegions.get(Math.floor(gpn / REGION_PAGES));
    this.#inLazyRestore(`guest page ${gpn}`, () => {
      if (block < this.blockCount && this.#blockDone[block] === 0) {
        this.#demandReads++;
        this.#installBlock(block);
      }
      // Installing the block must have brought the page in (only a file whose index and page
      // lists disagree, which checksums alone cannot catch, leaves it lazy).
      if (this.vm.memory.stateOf(gpn) === LAZY && this.vm.memory.payloadOf(gpn) === block) throw this.#mismatch(gpn, block);
    });
  }

  /** The index and a block's page list disagree about a page (checked as lazy reads go). */
  #mismatch(gpn: number, block: number): CheckpointError {
    const where = sectionName(SectionType.BLOCK_PAGES);
    return new CheckpointError('BV_CKPT_CORRUPT', `${this.path}: ${where}: the memory index puts page ${gpn} in block ${block}, whose page list does not hold it there`, where);
  }

  #prefetchTick(blocks: number): void {
    if (this.complete) {
      // Then the regions never used, as many per tick as a block has pages (a few KiB of index).
      let regions = blocks;
      while (regions > 0 && this.#regionsLeft() && this.#regionCursor < this.#regionCount) {
        const filledBefore = this.#regionsFilled;
        this.vm.memory.fillRegion(this.#regionCursor++); // a no-op for a region already filled
        if (this.#regionsFilled !== filledBefore) regions--;
      }
      return;
    }
    while (blocks > 0 && this.#prefetchCursor < this.blockCount) {
      const block = this.#prefetchCursor++;
      if (this.#blockDone[block] === 1) continue;
      this.#inLazyRestore('the prefetcher', () => this.#installBlock(block));
      this.#prefetched++;
      blocks--;
    }
  }

  /** Errors from the file say which block; this adds what wanted it. */
  #inLazyRestore(what: string, step: () => void): void {
    try {
      step();
    } catch (error) {
      throw lazyRestoreError(what, error);
    }
  }

  /**
   * Reads one block into fresh frames, each of its pages that still needs it installed on its
   * own frame (one read straight into guest frames, no staging buffer or copy; a buffer and a copy
   * per page when the pool has no contiguous run for the block).
   */
  #installBlock(block: number): void {
    const memory = this.vm.memory;
    const gpns = this.#reader.pagesOfBlock(block);
    const lazy = this.mode === 'lazy';
    const install = new Uint8Array(gpns.length);
    let installs = 0;
    for (let slot = 0; slot < gpns.length; slot++) {
      const gpn = gpns[slot]!;
      const state = memory.stateOf(gpn); // fills a deferred region first
      // Lazy: only pages still waiting for this block. Otherwise the page is untouched.
      if (lazy ? state !== LAZY || memory.payloadOf(gpn) !== block : state !== UNTOUCHED) continue;
      // Lazy reads never saw the whole index: install a page only where its index entry puts it.
      if (lazy && this.#reader.slotOfPage(gpn) !== slot) throw this.#mismatch(gpn, block);
      install[slot] = 1;
      installs++;
    }
    const installed = memory.installPagesInPlace(gpns, install, gpns.length, (frames) => this.#readInto(block, frames));
    if (!installed) {
      const data = new Uint8Array(gpns.length * PAGE_BYTES);
      this.#readInto(block, data);
      for (let slot = 0; slot < gpns.length; slot++) if (install[slot] === 1) memory.installPage(gpns[slot]!, data.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES));
    }
    this.#pagesInstalled += installs;
    this.#finishBlock(block, gpns.length);
    const listener = this.onPagesInstalled;
    if (listener !== null && installs > 0) listener(Array.from(gpns).filter((_, slot) => install[slot] === 1));
  }

  #read(block: number): { gpns: Uint32Array; data: Uint8Array } {
    const pages = this.#reader.readBlock(block);
    this.#blocksRead++;
    return pages;
  }

  #readInto(block: number, target: Uint8Array): void {
    this.#reader.readBlockInto(block, target);
    this.#blocksRead++;
  }

  #finishBlock(block: number, pageCount: number): void {
    this.#blockDone[block] = 1;
    this.#blocksDone++;
    this.#pagesDone += pageCount;
    this.#onProgress?.(this.#pagesDone, this.storedPages);
    if (this.complete) this.#noteComplete();
  }

  #noteComplete(): void {
    if (!this.complete) return;
    this.#completeMs ??= performance.now() - this.#started;
    this.#closeFileWhenDone();
  }

  /**
   * A guest reset during a lazy restore: RAM goes back to the image, so pages still waiting for
   * their block must become untouched (zero), not arrive later with their old contents.
   */
  #discardLazyPages(): void {
    this.#discarded = true; // the regions still deferred are dropped by the reset too
    if (this.complete) {
      this.#closeFileWhenDone();
      return;
    }
    const memory = this.vm.memory;
    memory.forEachPage(LAZY, (gpn) => {
      memory.releasePage(gpn, UNTOUCHED);
      this.#discardedByReset++;
    });
    // No longer wanted: done without reading anything (not even their entries) from the file.
    for (let block = 0; block < this.blockCount; block++) {
      if (this.#blockDone[block] === 0) {
        this.#blockDone[block] = 1;
        this.#blocksDone++;
      }
    }
    this.#pagesDone = this.storedPages;
    this.#onProgress?.(this.#pagesDone, this.storedPages);
    this.#noteComplete();
  }

  /** Map mode: each raw block becomes contiguous frames mapped from the file; lz4 blocks are read. */
  #map(verify: boolean): void {
    const absolutePath = resolve(this.path);
    const memory = this.vm.memory;
    for (let block = 0; block < this.blockCount; block++) {
      const extent = this.#reader.rawBlockExtent(block);
      if (extent === null) {
        this.#installBlock(block);
        continue;
      }
      let data = verify ? this.#read(block).data : undefined;
      const { gpns } = extent;
      let mapped = false;
      for (let start = 0; start < gpns.length; start += MAX_CONTIGUOUS_FRAMES) {
        const count = Math.min(MAX_CONTIGUOUS_FRAMES, gpns.length - start);
        if (!memory.mapFilePages(gpns, start, count, absolutePath, extent.fileOffset + start * PAGE_BYTES)) {
          // The pool is too fragmented for this piece: copy it instead.
          data ??= this.#read(block).data;
          this.#copyPages(gpns, data, start, count);
          continue;
        }
        this.#pagesMapped += count;
        mapped = true;
      }
      if (mapped) this.#blocksMapped++;
      this.#finishBlock(block, gpns.length);
    }
  }

  #copyPages(gpns: Uint32Array, data: Uint8Array, start: number, count: number): void {
    for (let slot = start; slot < start + count; slot++) {
      this.vm.memory.installPage(gpns[slot]!, data.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES));
      this.#pagesInstalled++;
    }
  }
}
