/**
 * Clean-copy recovery (T-17, issue 12 item 3): a guest page that has not changed since it came
 * from a known source is re-read from that source. Built here: the guest image the VM was
 * loaded from (vm.image), for every page its segments cover (code, read-only data, and data not
 * written since); and, optionally, a checkpoint file the VM was restored from (or saved to), for
 * every page stored in it that still holds the checkpoint's bytes.
 *
 * `scan()` (between runs; once after loadImage is enough, again after a reset or to re-admit
 * pages) compares each image page's current bytes with the image's bytes for that page (its
 * segments' bytes, zero elsewhere, as Vm.loadImage leaves it) and seals the pages that are equal
 * through the recovery write tracker; the first write to one makes it dirty (no longer clean).
 * recover() rebuilds a clean page from the image, and checks it against the corrupted copy
 * outside the reported window. With a checkpoint (`options.checkpoint`, an open CheckpointReader
 * the caller keeps open), scan() also compares present pages with the checkpoint's, a block at a
 * time, and admits the equal ones; a page found different or written is never compared with the
 * checkpoint again (it has left the checkpoint's state for good), so later scans read no block
 * whose pages are all settled.
 *
 * Other sources admit pages as they produce them (admit(gpn, source), the CleanCopySink side):
 * the swap file keeps a swapped-in page's slot while the page stays clean (SwapFile.keepCleanCopies,
 * like Linux's swap cache), and the first write releases it.
 */
import type { Vm } from '../../kernel/index.ts';
import { PageState } from '../../kernel/index.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import type { CheckpointReader } from '../checkpoint/reader.ts';
import type { CleanCopySink, CleanSource, ErrorReport, RecoveryMethod } from './types.ts';
import { PageWriteTracker, sameOutsideWindow, timed, reportFits } from './write-tracking.ts';

const PAGE_BYTES = 4096;

/** Counters of CleanCopyRecovery. */
export interface CleanCopyStats {
  /** Image pages found equal to the image and sealed (counting re-admissions). */
  admitted: number;
  /** Pages found equal to the checkpoint's and sealed. */
  admittedFromCheckpoint: number;
  /** Pages admitted by other sources (admit), by source name. */
  admittedFrom: Record<string, number>;
  /** Checkpoint blocks read by scans. */
  checkpointBlocksRead: number;
  /** Clean pages made dirty by a write (or replaced unseen). */
  dirtied: number;
  /** Pages re-read from their source. */
  recovered: number;
  /** recover() returned null: the page is not an image page, or not clean. */
  failedNotClean: number;
  /** … the image's bytes differed from the corrupted copy outside the window. */
  failedMismatch: number;
  /** Host time in scan(), ns. */
  scanNs: number;
  /** Host time in recover(), ns. */
  recoverNs: number;
}

/** The bytes a page holds right after Vm.loadImage(image), or null if the loader does not write it. */
export function imagePageBytes(image: GuestImage, gpn: number): Uint8Array | null {
  const pageStart = gpn * PAGE_BYTES;
  const pageEnd = pageStart + PAGE_BYTES;
  let page: Uint8Array | null = null;
  for (const segment of image.segments) {
    const fileEnd = segment.gpa + segment.data.length;
    // The loader writes the file bytes and zeroes the rest of the last file page (within memSize).
    const written = Math.min(segment.gpa + segment.memSize, Math.ceil(fileEnd / PAGE_BYTES) * PAGE_BYTES);
    if (written <= pageStart || segment.gpa >= pageEnd) continue;
    page ??= new Uint8Array(PAGE_BYTES);
    const from = Math.max(segment.gpa, pageStart);
    const to = Math.min(fileEnd, pageEnd);
    if (to > from) page.set(segment.data.subarray(from - segment.gpa, to - segment.gpa), from - pageStart);
  }
  return page;
}

/** The pages Vm.loadImage(image) writes, in order. */
export function imagePages(image: GuestImage): number[] {
  const pages = new Set<number>();
  for (const segment of image.segments) {
    const fileEnd = segment.gpa + segment.data.length;
    const written = Math.min(segment.gpa + segment.memSize, Math.ceil(fileEnd / PAGE_BYTES) * PAGE_BYTES);
    for (let gpn = Math.floor(segment.gpa / PAGE_BYTES); gpn * PAGE_BYTES < written; gpn++) pages.add(gpn);
  }
  return [...pages].sort((a, b) => a - b);
}

/** Options of CleanCopyRecovery. */
export interface CleanCopyOptions {
  /** A checkpoint of this VM (restored from, or saved to), kept open by the caller: pages still equal to it are clean too. */
  checkpoint?: CheckpointReader;
}

/** Clean-copy recovery from the guest image (and a checkpoint), for one VM. */
export class CleanCopyRecovery implements RecoveryMethod, CleanCopySink {
  readonly name = 'clean-copy';
  /** Counters. */
  readonly stats: CleanCopyStats = { admitted: 0, admittedFromCheckpoint: 0, admittedFrom: {}, checkpointBlocksRead: 0, dirtied: 0, recovered: 0, failedNotClean: 0, failedMismatch: 0, scanNs: 0, recoverNs: 0 };
  /** 1: the page equals the image's bytes (checked at a scan, sealed, not written since). */
  private readonly clean: Uint8Array;
  private readonly tracker: PageWriteTracker;
  private readonly unlisten: () => void;
  /** The image the clean marks refer to. */
  private image: GuestImage | null = null;
  private pages: number[] = [];
  private readonly checkpoint: CheckpointReader | null;
  /** 1: the page equals the checkpoint's bytes (checked at a scan, sealed, not written since). */
  private readonly cleanInCheckpoint: Uint8Array;
  /** 1: the page was found different from the checkpoint, or written: never compared again. */
  private readonly leftCheckpoint: Uint8Array;
  /** Pages other sources admitted (admit), until written. */
  private readonly sources = new Map<number, CleanSource>();

  /** @param vm the VM whose clean pages this tracks (its image is `vm.image` at each scan). */
  constructor(readonly vm: Vm, options: CleanCopyOptions = {}) {
    this.clean = new Uint8Array(vm.memory.pageCount);
    this.checkpoint = options.checkpoint ?? null;
    this.cleanInCheckpoint = new Uint8Array(this.checkpoint === null ? 0 : vm.memory.pageCount);
    this.leftCheckpoint = new Uint8Array(this.cleanInCheckpoint.length);
    this.tracker = PageWriteTracker.of(vm);
    const dirty = (gpn: number): void => {
      const source = this.sources.get(gpn);
      if (source !== undefined) {
        this.sources.delete(gpn);
        source.release(gpn);
        if (this.clean[gpn] !== 1 && this.cleanInCheckpoint[gpn] !== 1) this.stats.dirtied++;
      }
      if (this.clean[gpn] === 1 || this.cleanInCheckpoint[gpn] === 1) this.stats.dirtied++;
      this.clean[gpn] = 0;
      if (this.checkpoint !== null) {
        this.cleanInCheckpoint[gpn] = 0;
        this.leftCheckpoint[gpn] = 1;
      }
    };
    this.unlisten = this.tracker.listen({ written: dirty, lost: dirty });
  }

  /** Whether a page is clean now (recoverable from the image or the checkpoint). */
  isClean(gpn: number): boolean {
    return (this.cleanInImage(gpn) || this.cleanInCheckpoint[gpn] === 1 || this.sources.has(gpn)) && this.tracker.isSealed(gpn) && !this.tracker.unsettled(gpn);
  }

  /**
   * Admits a present page whose bytes equal `source.read(gpn)` now (the source vouches: it just
   * produced them). Sealed like an image page; the first write releases the source. False when
   * the page cannot be sealed (flagged for something else, shared): the caller keeps nothing.
   */
  admit(gpn: number, source: CleanSource): boolean {
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= this.clean.length) return false;
    if (this.vm.memory.stateOf(gpn) !== PageState.PRESENT || !this.tracker.seal(gpn)) return false;
    const previous = this.sources.get(gpn);
    if (previous !== undefined && previous !== source) previous.release(gpn);
    this.sources.set(gpn, source);
    this.stats.admittedFrom[source.name] = (this.stats.admittedFrom[source.name] ?? 0) + 1;
    return true;
  }

  private cleanInImage(gpn: number): boolean {
    return this.image !== null && this.image === this.vm.image && this.clean[gpn] === 1;
  }

  /** Clean pages now. */
  get cleanPages(): number {
    let n = 0;
    for (const gpn of this.pages) if (this.isClean(gpn)) n++;
    return n;
  }

  /**
   * Admits the image pages that equal the image now (seals them). Between runs. Returns the
   * pages admitted by this call.
   */
  scan(): number {
    const start = process.hrtime.bigint();
    const image = this.vm.image;
    if (image !== this.image) {
      this.clean.fill(0);
      this.image = image;
      this.pages = image === null ? [] : imagePages(image);
    }
    let admitted = 0;
    if (image !== null) {
      const memory = this.vm.memory;
      this.tracker.validate(this.pages);
      for (const gpn of this.pages) {
        if (gpn >= this.clean.length || this.isClean(gpn)) continue;
        if (memory.stateOf(gpn) !== PageState.PRESENT) continue;
        const now = memory.presentPageBytes(gpn);
        const expected = imagePageBytes(image, gpn);
        if (now === null || expected === null || !equal(now, expected)) continue;
        if (!this.tracker.seal(gpn)) continue;
        this.clean[gpn] = 1;
        admitted++;
      }
    }
    this.stats.admitted += admitted;
    const fromCheckpoint = this.scanCheckpoint();
    this.stats.admittedFromCheckpoint += fromCheckpoint;
    this.stats.scanNs += Number(process.hrtime.bigint() - start);
    return admitted + fromCheckpoint;
  }

  /**
   * Admits pages a lazy restore has just installed from this checkpoint (RestoredVm.onPagesInstalled):
   * they hold its bytes by construction, so they are sealed without a compare. Returns how many.
   */
  admitFromCheckpoint(gpns: readonly number[]): number {
    if (this.checkpoint === null) return 0;
    const memory = this.vm.memory;
    let admitted = 0;
    for (const gpn of gpns) {
      if (gpn >= this.leftCheckpoint.length || this.leftCheckpoint[gpn] === 1 || memory.stateOf(gpn) !== PageState.PRESENT) continue;
      if (!this.tracker.seal(gpn)) continue;
      this.cleanInCheckpoint[gpn] = 1;
      admitted++;
    }
    this.stats.admittedFromCheckpoint += admitted;
    return admitted;
  }

  /** Compares the present pages not yet settled with the checkpoint, a block at a time. */
  private scanCheckpoint(): number {
    const reader = this.checkpoint;
    if (reader === null) return 0;
    const memory = this.vm.memory;
    this.tracker.validate();
    const open = (gpn: number): boolean =>
      gpn < this.leftCheckpoint.length && this.leftCheckpoint[gpn] === 0 && !(this.cleanInCheckpoint[gpn] === 1 && this.tracker.isSealed(gpn)) && memory.stateOf(gpn) === PageState.PRESENT;
    let admitted = 0;
    for (let block = 0; block < reader.blockCount; block++) {
      const gpns = reader.pagesOfBlock(block);
      if (!gpns.some(open)) continue;
      const { data } = reader.readBlock(block);
      this.stats.checkpointBlocksRead++;
      gpns.forEach((gpn, slot) => {
        if (!open(gpn)) return;
        const now = memory.presentPageBytes(gpn);
        if (now === null || !equal(now, data.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES)) || !this.tracker.seal(gpn)) {
          this.leftCheckpoint[gpn] = 1;
          this.cleanInCheckpoint[gpn] = 0;
          return;
        }
        this.cleanInCheckpoint[gpn] = 1;
        admitted++;
      });
    }
    return admitted;
  }

  /** Stops listening (clean marks are forgotten). */
  dispose(): void {
    this.unlisten();
    this.clean.fill(0);
    for (const [gpn, source] of this.sources) source.release(gpn);
    this.sources.clear();
  }

  recover(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null {
    return timed((ns) => (this.stats.recoverNs += ns), () => this.reread(vm, report, bad));
  }

  private reread(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null {
    const { gpn } = report;
    if (!reportFits(vm, this.vm, this.clean.length, report, bad) || !this.isClean(gpn)) {
      this.stats.failedNotClean++;
      return null;
    }
    const source = this.sources.get(gpn);
    const page = this.cleanInImage(gpn) ? imagePageBytes(this.image!, gpn) : source !== undefined ? source.read(gpn) : this.checkpoint!.readPage(gpn);
    if (page === null) {
      this.stats.failedNotClean++;
      return null;
    }
    if (!sameOutsideWindow(page, bad, report.windowBitOffset, report.windowBits)) {
      this.stats.failedMismatch++;
      return null;
    }
    this.stats.recovered++;
    this.tracker.expectReinstall(gpn, page);
    return page;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  const wa = a.byteOffset % 4 === 0 ? new Int32Array(a.buffer, a.byteOffset, a.length >>> 2) : null;
  const wb = b.byteOffset % 4 === 0 ? new Int32Array(b.buffer, b.byteOffset, b.length >>> 2) : null;
  if (wa !== null && wb !== null) {
    for (let i = 0; i < wa.length; i++) if (wa[i] !== wb[i]) return false;
    return true;
  }
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
