/**
 * The host frame pool: one host memory region shared by every VM of a hypervisor, handed out as
 * 4 KiB frames and aligned 4 MiB runs (1024 frames), with reference counts so that frames can be
 * shared (fork, copy-on-write) and returned to the OS when the last user lets go.
 *
 * Invariant: a free frame holds zeros. A frame is released to the OS (madvise) when freed, and
 * released anonymous memory reads back as zero, so allocation never has to clear memory.
 *
 * Small frames are carved out of 4 MiB chunks that are already partly used before a whole free
 * chunk is broken, so whole chunks stay available for large runs (T-2).
 */
import { KernelError, OutOfHostMemoryError } from '../errors.ts';

/** Bytes in a host frame (the guest page size too). */
export const FRAME_SIZE = 4096;
export const FRAME_SHIFT = 12;
export const FRAMES_PER_RUN = 1024;
/** Bytes in a run: 4 MiB, the unit of large pages and of the host pool's size. */
export const RUN_SIZE = FRAME_SIZE * FRAMES_PER_RUN;

/** @internal What the pool needs from host memory; native HostRegion provides it. */
export interface HostMemory {
  readonly buffer: ArrayBuffer;
  readonly bytes: number;
  /** Give [offset, offset+length) back to the OS; it reads as zero afterwards. */
  release(offset: number, length: number): void;
  /** Ask for transparent huge pages on a range; false when unsupported. */
  adviseHugePages(offset: number, length: number): boolean;
  /** Map a file privately over a range (zero-copy restore); optional. */
  mapFilePrivate?(offset: number, length: number, path: string, fileOffset: number): void;
  /** Map a file SHARED over a range (persistent memory: stores reach the file); optional. */
  mapFileShared?(offset: number, length: number, path: string, fileOffset: number): void;
  /** msync the file-backed pages of a byte range (its stores become durable); optional. */
  flush?(offset: number, length: number): void;
  /** Put anonymous zero pages back over a privately or shared mapped range; optional. */
  unmapPrivate?(offset: number, length: number): void;
  /** mincore: one byte per host page of the range, 1 when resident; optional. */
  residency?(offset: number, length: number): Uint8Array;
  /** Map a range writable now, in one call (MADV_POPULATE_WRITE); false when it cannot; optional. */
  populate?(offset: number, length: number): boolean;
}

/** Occupancy of a hypervisor's host pool (Hypervisor.poolStats()), in 4 KiB frames. */
export interface FramePoolStats {
  /** Frames in the pool (its size / 4096). */
  totalFrames: number;
  /** Frames held by some VM (a frame shared copy-on-write counts once). */
  usedFrames: number;
  /** Frames free. */
  freeFrames: number;
  /** Aligned 4 MiB runs wholly free (what large pages can still get). */
  wholeFreeRuns: number;
  /** Frames given back to the OS since the pool was created (each free releases one). */
  framesReleased: number;
  /** Calls that returned memory to the OS (madvise), and the time they took in ms. */
  releaseCalls: number;
  /** Wall time spent returning memory to the OS (madvise), in ms. */
  releaseMs: number;
  /** Frames whose contents come from a privately mapped file (map-mode restore). */
  fileMappedFrames: number;
  /** Frames that are a shared mapping of a file (persistent memory, docs/pmem.md). */
  sharedFileFrames: number;
}

/** @internal The host frame pool of a hypervisor (kernel only: services use GuestMemory). */
export class FramePool {
  readonly memory: HostMemory;
  readonly frameCount: number;
  readonly runCount: number;
  /** Typed views over the whole pool, shared by every vCPU's fast path. */
  readonly u8: Uint8Array;
  readonly i8: Int8Array;
  readonly u16: Uint16Array;
  readonly i16: Int16Array;
  readonly i32: Int32Array;
  /** Reference count per frame; 0 = free. */
  readonly refCount: Int32Array;
  /** Frames in use per 4 MiB chunk. */
  private readonly chunkUsed: Int32Array;
  /** Whole free chunks (stack of chunk indexes). */
  private readonly freeChunks: number[] = [];
  /** Chunks that have some free frames and some used ones; candidates for small allocations. */
  private readonly partialChunks = new Set<number>();
  /** Per chunk, a rotating search hint for the next free frame. */
  private readonly chunkHint: Int32Array;
  private usedFrames = 0;
  private framesReleased = 0;
  private releaseCalls = 0;
  private releaseMs = 0;
  /** Per frame: 1 = a private file mapping (map-mode restore), 2 = a shared one (persistent memory). */
  private readonly fileMapped: Uint8Array;
  private fileMappedCount = 0;
  private sharedMappedCount = 0;
  /** releaseMany's list of the frames it frees (grown as needed, never shrunk). */
  private freedScratch = new Int32Array(FRAMES_PER_RUN);

  constructor(memory: HostMemory) {
    if (memory.bytes < RUN_SIZE || memory.bytes % RUN_SIZE !== 0) {
      throw new KernelError('BV_BAD_POOL_SIZE', `host pool size must be a positive multiple of 4 MiB, got ${memory.bytes} bytes`);
    }
    this.memory = memory;
    this.frameCount = memory.bytes / FRAME_SIZE;
    this.runCount = this.frameCount / FRAMES_PER_RUN;
    this.u8 = new Uint8Array(memory.buffer);
    this.i8 = new Int8Array(memory.buffer);
    this.u16 = new Uint16Array(memory.buffer);
    this.i16 = new Int16Array(memory.buffer);
    this.i32 = new Int32Array(memory.buffer);
    this.refCount = new Int32Array(this.frameCount);
    this.chunkUsed = new Int32Array(this.runCount);
    this.chunkHint = new Int32Array(this.runCount);
    this.fileMapped = new Uint8Array(this.frameCount);
    // Hand out low chunks first: pop() takes from the end.
    for (let chunk = this.runCount - 1; chunk >= 0; chunk--) this.freeChunks.push(chunk);
  }

  /** Host byte offset of a frame. */
  static offsetOf(frame: number): number {
    return frame * FRAME_SIZE;
  }

  /** Allocates one zeroed 4 KiB frame with reference count 1. */
  allocFrame(): number {
    let chunk = -1;
    for (const candidate of this.partialChunks) {
      chunk = candidate;
      break;
    }
    if (chunk < 0) {
      const whole = this.freeChunks.pop();
      if (whole === undefined) throw new OutOfHostMemoryError(`no free 4 KiB frame among ${this.frameCount}`);
      chunk = whole;
      this.partialChunks.add(chunk);
    }
    const firstFrame = chunk * FRAMES_PER_RUN;
    let slot = this.chunkHint[chunk]!;
    for (let probe = 0; probe < FRAMES_PER_RUN; probe++, slot = (slot + 1) & (FRAMES_PER_RUN - 1)) {
      if (this.refCount[firstFrame + slot] === 0) break;
    }
    const frame = firstFrame + slot;
    this.chunkHint[chunk] = (slot + 1) & (FRAMES_PER_RUN - 1);
    this.refCount[frame] = 1;
    this.usedFrames++;
    if (++this.chunkUsed[chunk]! === FRAMES_PER_RUN) this.partialChunks.delete(chunk);
    return frame;
  }

  /**
   * Allocates an aligned run of 1024 zeroed frames (4 MiB), each with reference count 1, and asks
   * the host for transparent huge pages on it. Returns the first frame, or -1 when no whole free
   * run exists (the caller falls back to small frames).
   */
  allocRun(): number {
    const chunk = this.freeChunks.pop();
    if (chunk === undefined) return -1;
    const firstFrame = chunk * FRAMES_PER_RUN;
    this.refCount.fill(1, firstFrame, firstFrame + FRAMES_PER_RUN);
    this.chunkUsed[chunk] = FRAMES_PER_RUN;
    this.usedFrames += FRAMES_PER_RUN;
    this.memory.adviseHugePages(firstFrame * FRAME_SIZE, RUN_SIZE);
    return firstFrame;
  }

  /**
   * Allocates `count` (1..1024) contiguous zeroed frames inside one 4 MiB chunk, each with
   * reference count 1. Returns the first frame, or -1 when no such range is free.
   */
  allocContiguous(count: number): number {
    if (!Number.isInteger(count) || count < 1 || count > FRAMES_PER_RUN) throw new KernelError('BV_BAD_FRAME_COUNT', `contiguous allocation must be 1..${FRAMES_PER_RUN} frames, got ${count}`);
    const candidates = [...this.partialChunks];
    const whole = this.freeChunks[this.freeChunks.length - 1];
    if (whole !== undefined) candidates.push(whole);
    for (const chunk of candidates) {
      // Too few free frames for the run: skip the scan (a pool with many nearly full chunks).
      if (FRAMES_PER_RUN - this.chunkUsed[chunk]! < count) continue;
      const firstFrame = chunk * FRAMES_PER_RUN;
      let runStart = 0;
      for (let slot = 0; slot < FRAMES_PER_RUN; slot++) {
        if (this.refCount[firstFrame + slot] !== 0) {
          runStart = slot + 1;
          continue;
        }
        if (slot - runStart + 1 === count) {
          this.claimRange(chunk, firstFrame + runStart, count);
          return firstFrame + runStart;
        }
      }
    }
    return -1;
  }

  private claimRange(chunk: number, first: number, count: number): void {
    if (this.chunkUsed[chunk] === 0) {
      const at = this.freeChunks.lastIndexOf(chunk);
      if (at >= 0) this.freeChunks.splice(at, 1);
      this.partialChunks.add(chunk);
    }
    this.refCount.fill(1, first, first + count);
    this.usedFrames += count;
    this.chunkUsed[chunk]! += count;
    if (this.chunkUsed[chunk] === FRAMES_PER_RUN) this.partialChunks.delete(chunk);
  }

  /**
   * Maps `count` frames from `firstFrame` (allocated, contiguous) privately onto a file range:
   * reads come from the page cache with no copy, writes stay private. When such a frame is
   * released it gets an anonymous zero page back.
   */
  mapFile(firstFrame: number, count: number, path: string, fileOffset: number): void {
    if (!this.memory.mapFilePrivate || !this.memory.unmapPrivate) throw new KernelError('BV_NO_FILE_MAPPING', 'this host memory cannot map files');
    for (let i = 0; i < count; i++) this.checkInUse(firstFrame + i);
    this.memory.mapFilePrivate(firstFrame * FRAME_SIZE, count * FRAME_SIZE, path, fileOffset);
    for (let i = 0; i < count; i++) {
      if (this.fileMapped[firstFrame + i] === 2) this.sharedMappedCount--;
      if (this.fileMapped[firstFrame + i] !== 1) this.fileMappedCount++;
      this.fileMapped[firstFrame + i] = 1;
    }
  }

  /**
   * Maps `count` frames from `firstFrame` (allocated, contiguous) SHARED onto a file range
   * (persistent memory): the frames are the file's page cache, stores reach the file. Released,
   * such a frame gets an anonymous zero page back, like a privately mapped one.
   */
  mapFileShared(firstFrame: number, count: number, path: string, fileOffset: number): void {
    if (!this.memory.mapFileShared || !this.memory.unmapPrivate || !this.memory.flush) {
      throw new KernelError('BV_NO_FILE_MAPPING', 'this host memory cannot map files shared (the host pool must be anonymous native memory)');
    }
    const kind = (this.memory as { kind?: unknown }).kind;
    if (kind !== undefined && kind !== 'anonymous') {
      throw new KernelError('BV_NO_FILE_MAPPING', `persistent memory needs an anonymous host pool; this hypervisor's pool is a ${String(kind)} region (backingFile)`);
    }
    for (let i = 0; i < count; i++) this.checkInUse(firstFrame + i);
    this.memory.mapFileShared(firstFrame * FRAME_SIZE, count * FRAME_SIZE, path, fileOffset);
    for (let i = 0; i < count; i++) {
      const frame = firstFrame + i;
      if (this.fileMapped[frame] === 1) this.fileMappedCount--;
      if (this.fileMapped[frame] !== 2) this.sharedMappedCount++;
      this.fileMapped[frame] = 2;
    }
  }

  /** msync of `count` contiguous frames mapped with mapFileShared: their stores are durable on return. */
  flushFrames(firstFrame: number, count: number): void {
    this.memory.flush!(firstFrame * FRAME_SIZE, count * FRAME_SIZE);
  }

  /** Forgets that a frame being freed was file-mapped, and gives it an anonymous zero page. */
  private unmapFileFrame(frame: number): void {
    this.memory.unmapPrivate!(frame * FRAME_SIZE, FRAME_SIZE);
    if (this.fileMapped[frame] === 2) this.sharedMappedCount--;
    else this.fileMappedCount--;
    this.fileMapped[frame] = 0;
  }

  /** Adds a reference to a frame in use (sharing). */
  retain(frame: number): void {
    this.checkInUse(frame);
    this.refCount[frame]!++;
  }

  /** madvise through the host memory, timed (a clock read is ~1 % of the cheapest madvise). */
  private returnToOs(offset: number, length: number): void {
    const started = performance.now();
    this.memory.release(offset, length);
    this.releaseMs += performance.now() - started;
    this.releaseCalls++;
  }

  /** Drops a reference; the last one frees the frame and returns its memory to the OS. */
  release(frame: number): void {
    this.checkInUse(frame);
    if (--this.refCount[frame]! > 0) return;
    if (this.fileMapped[frame] !== 0) {
      // Released file-backed pages would read the file's bytes again: put zero pages back.
      this.unmapFileFrame(frame);
    } else {
      this.returnToOs(frame * FRAME_SIZE, FRAME_SIZE);
    }
    this.countFreed(frame);
  }

  /** The counts of a frame just freed: its chunk becomes free, or partial if it was full (a full chunk is never in partialChunks). */
  private countFreed(frame: number): void {
    this.framesReleased++;
    this.usedFrames--;
    const chunk = (frame / FRAMES_PER_RUN) | 0;
    const used = --this.chunkUsed[chunk]!;
    if (used === 0) {
      this.partialChunks.delete(chunk);
      this.freeChunks.push(chunk);
    } else if (used === FRAMES_PER_RUN - 1) {
      this.partialChunks.add(chunk);
    }
  }

  /**
   * Drops one reference per entry of `frames` (a frame may appear more than once) and frees, as
   * release() does, each frame left with none; their memory goes back to the OS in one call per
   * contiguous range instead of one per frame (releasing 1 GiB frame by frame costs ~0.7 s of
   * madvise calls). `onFree` sees each freed frame before its memory is released.
   */
  releaseMany(frames: ArrayLike<number>, onFree?: (frame: number) => void): void {
    const count = frames.length;
    for (let i = 0; i < count; i++) this.checkInUse(frames[i]!);
    if (this.freedScratch.length < count) this.freedScratch = new Int32Array(Math.max(count, 2 * this.freedScratch.length));
    let freedCount = 0;
    for (let i = 0; i < count; i++) {
      const frame = frames[i]!;
      if (--this.refCount[frame]! === 0) this.freedScratch[freedCount++] = frame;
    }
    const freed = this.freedScratch.subarray(0, freedCount).sort(); // numeric: a typed array's sort
    let start = -1;
    let end = -1;
    for (let i = 0; i < freedCount; i++) {
      const frame = freed[i]!;
      onFree?.(frame);
      if (this.fileMapped[frame] !== 0) {
        this.unmapFileFrame(frame);
      } else if (frame === end) {
        end++;
      } else {
        if (start >= 0) this.returnToOs(start * FRAME_SIZE, (end - start) * FRAME_SIZE);
        start = frame;
        end = frame + 1;
      }
      this.countFreed(frame);
    }
    if (start >= 0) this.returnToOs(start * FRAME_SIZE, (end - start) * FRAME_SIZE);
  }

  /** True when the frame starts an aligned run whose 1024 frames are contiguous in the host pool. */
  static isRunAligned(frame: number): boolean {
    return (frame & (FRAMES_PER_RUN - 1)) === 0;
  }

  /** Frames retired after an uncorrected memory error (retire): never handed out again. */
  retiredFrames = 0;

  /**
   * Retires a frame holding an uncorrected memory error (T-17): the caller's reference (the
   * last one) becomes the retirement's, so the frame is never free again and no allocation can
   * return it; its bytes stay as they are (a service reads them to rebuild the page).
   */
  retire(frame: number): void {
    this.checkInUse(frame);
    if (this.refCount[frame] !== 1) throw new KernelError('BV_BAD_FRAME', `frame ${frame} has ${this.refCount[frame]} references; only a frame one page holds can be retired`);
    this.retiredFrames++;
  }

  stats(): FramePoolStats {
    return {
      totalFrames: this.frameCount,
      usedFrames: this.usedFrames,
      freeFrames: this.frameCount - this.usedFrames,
      wholeFreeRuns: this.freeChunks.length,
      framesReleased: this.framesReleased,
      releaseCalls: this.releaseCalls,
      releaseMs: this.releaseMs,
      fileMappedFrames: this.fileMappedCount,
      sharedFileFrames: this.sharedMappedCount,
    };
  }

  private checkInUse(frame: number): void {
    if (!Number.isInteger(frame) || frame < 0 || frame >= this.frameCount || this.refCount[frame] === 0) {
      throw new KernelError('BV_BAD_FRAME', `frame ${frame} is not an allocated frame of this pool`);
    }
  }
}
