/**
 * File-backed guest-physical ranges (persistent memory, docs/pmem.md): a range of guest-physical
 * addresses outside RAM whose bytes are a file. Its frames are host-pool frames over which the
 * file is mapped SHARED (HostMemory.mapFileShared), so guest loads and stores are the file's page
 * cache at memory speed, and flush() (msync) makes them durable.
 *
 * Such a range is not RAM: it has no P2M entries, so no memory policy can see its pages — they
 * are never copy-on-write shared (a fork is refused), swapped, ballooned, deduplicated, sampled,
 * poisoned by error injection, promoted to large pages or migrated. Its frames stay put from
 * attach to detach, which is what lets a vCPU cache their translations without any shootdown.
 * The guest may not execute from it or keep page tables in it (SPEC §11.1).
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { KernelError } from '../errors.ts';
import { FRAMES_PER_RUN, type FramePool } from './frame-pool.ts';
import type { Gpa } from './addresses.ts';

/** What attachFileRange was given, as GuestMemory.fileRanges reports it. */
export interface FileRangeInfo {
  /** First guest-physical address (4 KiB-aligned). */
  readonly gpa: Gpa;
  /** Size in bytes (a multiple of 4 KiB). */
  readonly bytes: number;
  /** The file behind it. */
  readonly path: string;
  /** Byte offset in the file of the range's first byte (4 KiB-aligned). */
  readonly fileOffset: number;
}

/** One attached range: its description, the host frame of each of its pages, and (when tracked) which pages were written. */
interface FileRange extends FileRangeInfo {
  readonly frames: Int32Array;
  /**
   * Write tracking (trackWrites), or null: one byte per page, 1 when the page may have been
   * written since the last takeDirty. A clean page gets no write translation, so its first store
   * misses the TLB and marks it here before it lands.
   */
  dirty: Uint8Array | null;
}

/** @internal The file-backed ranges of one VM (GuestMemory owns it). */
export class FileRanges {
  private readonly ranges: FileRange[] = [];
  /** Lowest and highest+1 gpa of any range: a quick "not here" for the vCPU's slow path. */
  private low = 0;
  private high = 0;

  constructor(
    private readonly pool: FramePool,
    private readonly vmName: string,
  ) {}

  /** The attached ranges. */
  list(): FileRangeInfo[] {
    return this.ranges.map(({ gpa, bytes, path, fileOffset }) => ({ gpa, bytes, path, fileOffset }));
  }

  get count(): number {
    return this.ranges.length;
  }

  /**
   * Takes frames from the pool (whole 4 MiB runs where the range allows, else contiguous pieces
   * inside a run) and maps the file over them, shared. All or nothing: a failure gives back
   * every frame taken.
   */
  attach(gpa: Gpa, bytes: number, path: string, fileOffset: number, ramBytes: number): FileRangeInfo {
    const vm = this.vmName;
    if (!Number.isInteger(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0) {
      throw new KernelError('BV_FILE_RANGE', `${vm}: a file-backed range is a positive multiple of 4 KiB, got ${bytes} bytes`);
    }
    if (!Number.isInteger(gpa) || gpa % PAGE_SIZE !== 0 || gpa < ramBytes || gpa + bytes > 0xf000_0000) {
      throw new KernelError(
        'BV_FILE_RANGE',
        `${vm}: a file-backed range must start on a 4 KiB boundary at or above the end of RAM (0x${ramBytes.toString(16)}) and end by 0xf0000000 (the device table); got 0x${Number(gpa).toString(16)} + ${bytes} bytes`,
      );
    }
    if (!Number.isInteger(fileOffset) || fileOffset < 0 || fileOffset % PAGE_SIZE !== 0) {
      throw new KernelError('BV_FILE_RANGE', `${vm}: the file offset must be a multiple of 4 KiB, got ${fileOffset}`);
    }
    for (const other of this.ranges) {
      if (gpa < other.gpa + other.bytes && other.gpa < gpa + bytes) {
        throw new KernelError('BV_FILE_RANGE', `${vm}: 0x${gpa.toString(16)} + ${bytes} bytes overlaps the file-backed range at 0x${other.gpa.toString(16)}`);
      }
    }
    const pages = bytes / PAGE_SIZE;
    const frames = new Int32Array(pages);
    let done = 0;
    try {
      while (done < pages) {
        const count = Math.min(FRAMES_PER_RUN, pages - done);
        const first = count === FRAMES_PER_RUN ? this.pool.allocRun() : this.pool.allocContiguous(count);
        if (first < 0) throw new KernelError('BV_OUT_OF_HOST_MEMORY', `${vm}: no ${count} contiguous free frames left in the host pool for a file-backed range`);
        for (let i = 0; i < count; i++) frames[done + i] = first + i;
        done += count;
        // Mapped right away, so that the cleanup below releases mapped frames only.
        this.pool.mapFileShared(first, count, path, fileOffset + (done - count) * PAGE_SIZE);
      }
    } catch (error) {
      if (done > 0) this.pool.releaseMany(frames.subarray(0, done));
      throw error;
    }
    const range: FileRange = { gpa, bytes, path, fileOffset, frames, dirty: null };
    this.ranges.push(range);
    this.bounds();
    return { gpa, bytes, path, fileOffset };
  }

  /** The host frame behind a gpa of a range, or -1 when no range holds it. */
  frameOf(gpa: number): number {
    if (gpa < this.low || gpa >= this.high) return -1;
    for (const range of this.ranges) {
      const offset = gpa - range.gpa;
      if (offset >= 0 && offset < range.bytes) return range.frames[Math.floor(offset / PAGE_SIZE)]!;
    }
    return -1;
  }

  /**
   * msync of [gpa, gpa + length) (which must lie inside one range): when it returns, every store
   * made to those bytes before the call is on the file's storage. Contiguous host frames are
   * synced in one call.
   */
  flush(gpa: number, length: number): void {
    const range = this.rangeHolding(gpa, length);
    if (length === 0) return;
    const firstPage = Math.floor((gpa - range.gpa) / PAGE_SIZE);
    const endPage = Math.ceil((gpa - range.gpa + length) / PAGE_SIZE);
    let start = firstPage;
    for (let page = firstPage + 1; page <= endPage; page++) {
      if (page === endPage || range.frames[page] !== range.frames[page - 1]! + 1) {
        this.pool.flushFrames(range.frames[start]!, page - start);
        start = page;
      }
    }
  }

  /**
   * Starts tracking writes to the range that starts at `gpa`: every page counts as written (nothing
   * was taken yet). Does nothing if it is tracked already.
   */
  trackWrites(gpa: number): void {
    const range = this.rangeStartingAt(gpa);
    range.dirty ??= new Uint8Array(range.bytes / PAGE_SIZE).fill(1);
  }

  /** Stops tracking writes to the range that starts at `gpa`. */
  untrackWrites(gpa: number): void {
    this.rangeStartingAt(gpa).dirty = null;
  }

  /**
   * The pages of the range starting at `gpa` written since the last call (or since trackWrites):
   * one byte per page, 1 = written; the range's marks are cleared. The caller must then revoke
   * the vCPUs' write translations (GuestMemory does), so that the next store to each page
   * misses and marks it again.
   */
  takeDirty(gpa: number): Uint8Array {
    const range = this.rangeStartingAt(gpa);
    const dirty = range.dirty;
    if (dirty === null) throw new KernelError('BV_FILE_RANGE', `${this.vmName}: writes to the file-backed range at 0x${gpa.toString(16)} are not tracked (trackWrites first)`);
    const taken = dirty.slice();
    dirty.fill(0);
    return taken;
  }

  /**
   * A guest store is about to land at `gpa` (a file-backed address): marks its page written when
   * the range is tracked. The vCPU's store miss path; allocates nothing.
   */
  noteStore(gpa: number): void {
    for (const range of this.ranges) {
      const offset = gpa - range.gpa;
      if (offset >= 0 && offset < range.bytes) {
        if (range.dirty !== null) range.dirty[Math.floor(offset / PAGE_SIZE)] = 1;
        return;
      }
    }
  }

  /** Whether a vCPU may cache a write translation to `gpa`: untracked, or its page is already marked. */
  mayCacheWrite(gpa: number): boolean {
    for (const range of this.ranges) {
      const offset = gpa - range.gpa;
      if (offset >= 0 && offset < range.bytes) return range.dirty === null || range.dirty[Math.floor(offset / PAGE_SIZE)] === 1;
    }
    return false;
  }

  /**
   * Copies [gpa, gpa + target.length), inside one range, into `target` (the host reading the
   * persistent memory's current bytes, e.g. to send them elsewhere).
   */
  read(gpa: number, target: Uint8Array): void {
    const range = this.rangeHolding(gpa, target.length);
    const u8 = this.pool.u8;
    let done = 0;
    while (done < target.length) {
      const offset = gpa - range.gpa + done;
      const inPage = offset % PAGE_SIZE;
      const count = Math.min(PAGE_SIZE - inPage, target.length - done);
      const hostOffset = range.frames[Math.floor(offset / PAGE_SIZE)]! * PAGE_SIZE + inPage;
      target.set(u8.subarray(hostOffset, hostOffset + count), done);
      done += count;
    }
  }

  private rangeStartingAt(gpa: number): FileRange {
    const range = this.ranges.find((candidate) => candidate.gpa === gpa);
    if (range === undefined) throw new KernelError('BV_FILE_RANGE', `${this.vmName}: no file-backed range starts at 0x${Number(gpa).toString(16)}`);
    return range;
  }

  /** The range holding all of [gpa, gpa + length), or BV_FILE_RANGE. */
  private rangeHolding(gpa: number, length: number): FileRange {
    if (Number.isInteger(gpa) && Number.isInteger(length) && length >= 0) {
      for (const range of this.ranges) {
        if (gpa >= range.gpa && gpa + length <= range.gpa + range.bytes) return range;
      }
    }
    throw new KernelError('BV_FILE_RANGE', `${this.vmName}: [0x${Number(gpa).toString(16)}, +${length}) is not inside one file-backed range`);
  }

  /**
   * Unmaps every range and gives its frames back (they read as zero again). Only when the VM is
   * destroyed: vCPUs cache these translations without reverse mapping, so a range never goes
   * away under a VM that may still run. Stores not flushed stay in the host's page cache and
   * reach the file later (docs/pmem.md).
   */
  detachAll(): void {
    for (const range of this.ranges.splice(0)) this.pool.releaseMany(range.frames);
    this.bounds();
  }

  private bounds(): void {
    this.low = Math.min(...this.ranges.map((range) => range.gpa), 0x1_0000_0000);
    this.high = Math.max(...this.ranges.map((range) => range.gpa + range.bytes), 0);
  }
}
