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
  /** The pool's bytes (a SharedArrayBuffer in a worker thread attached to the pool). */
  readonly buffer: ArrayBufferLike;
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

/*
 * Allocation state, in one SharedArrayBuffer so that hypervisors in worker threads can share the
 * pool (issue 16): a header of Int32 words, then the per-frame and per-chunk arrays.
 */
const H_LOCK = 0; // 0 free, 1 held, 2 held with waiters (a futex-style mutex over Atomics.wait)
const H_USED = 1;
const H_RELEASED = 2;
const H_RELEASE_CALLS = 3;
const H_FILE_MAPPED = 4;
const H_SHARED_MAPPED = 5;
const H_RETIRED = 6;
const H_FREE_CHUNKS = 7; // entries in the free-chunk stack
const H_PARTIAL_HEAD = 8; // the partial-chunk list, in insertion order (-1 = empty)
const H_PARTIAL_TAIL = 9;
const H_FRAMES = 10; // frameCount, checked when a pool attaches to existing state
const HEADER_WORDS = 16; // words 12-13 hold releaseMs as a Float64
const RELEASE_MS_F64 = 6;
/** A chunk's `next` when it is not in the partial list. */
const NOT_LISTED = -2;
/** Reference count of a frame whose last reference was dropped and whose memory is being returned. */
const FREEING = -1;

/** Bytes of a pool's shared allocation state for `frameCount` frames (FramePool.stateBytes). */
function stateLayout(frameCount: number): { refCount: number; chunkUsed: number; chunkHint: number; freeChunks: number; prev: number; next: number; fileMapped: number; bytes: number } {
  const runCount = frameCount / FRAMES_PER_RUN;
  const refCount = HEADER_WORDS * 4;
  const chunkUsed = refCount + frameCount * 4;
  const chunkHint = chunkUsed + runCount * 4;
  const freeChunks = chunkHint + runCount * 4;
  const prev = freeChunks + runCount * 4;
  const next = prev + runCount * 4;
  const fileMapped = next + runCount * 4;
  return { refCount, chunkUsed, chunkHint, freeChunks, prev, next, fileMapped, bytes: fileMapped + frameCount };
}

/**
 * @internal The host frame pool of a hypervisor (kernel only: services use GuestMemory).
 *
 * Its allocation state (reference counts, chunk occupancy, the free and partial chunk lists, the
 * counters) lives in a SharedArrayBuffer (`sharedState`), so that a hypervisor in a worker thread
 * can attach to the same pool (Hypervisor.attachToPool) and allocate, share and free frames safely
 * alongside this one. Reference counts change with Atomics; the chunk structures change under one
 * mutex word. A frame's last release marks it FREEING, returns its memory to the OS outside the
 * lock, and only then makes it allocatable, so no thread can be handed a frame whose memory is
 * still being discarded.
 */
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
  /** Reference count per frame; 0 = free, FREEING (-1) = being freed. Changed only with Atomics. */
  readonly refCount: Int32Array;
  /** The allocation state, to hand to a worker thread (see the class comment). */
  readonly sharedState: SharedArrayBuffer;
  /** Whether another thread may attach, or has attached, to this state (set by Hypervisor.attachToPool and shareWithWorkers). */
  shared = false;
  /**
   * Called with each range of frames just allocated, when set: a thread's decode cache drops what
   * it decoded from a frame that another thread freed and this one got back (the hypervisor sets
   * it once the pool is shared).
   */
  onAllocated: ((firstFrame: number, count: number) => void) | null = null;
  private readonly header: Int32Array;
  private readonly releaseMsCell: Float64Array;
  /** Frames in use per 4 MiB chunk. */
  private readonly chunkUsed: Int32Array;
  /** Per chunk, a rotating search hint for the next free frame. */
  private readonly chunkHint: Int32Array;
  /** Whole free chunks (a stack of chunk indexes; its depth is header[H_FREE_CHUNKS]). */
  private readonly freeChunks: Int32Array;
  /** The partial chunks (some frames free, some used), a doubly linked list in insertion order. */
  private readonly partialPrev: Int32Array;
  private readonly partialNext: Int32Array;
  /** Per frame: 1 = a private file mapping (map-mode restore), 2 = a shared one (persistent memory). */
  private readonly fileMapped: Uint8Array;
  /** releaseMany's list of the frames it frees (grown as needed, never shrunk). */
  private freedScratch = new Int32Array(FRAMES_PER_RUN);

  /** Bytes of the shared allocation state of a pool of `frameCount` frames. */
  static stateBytes(frameCount: number): number {
    return stateLayout(frameCount).bytes;
  }

  /**
   * `state`: the sharedState of a pool over the same memory in another thread, to attach to it;
   * without it the pool starts empty with fresh state.
   */
  constructor(memory: HostMemory, state: SharedArrayBuffer | null = null) {
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
    const layout = stateLayout(this.frameCount);
    if (state !== null && state.byteLength !== layout.bytes) {
      throw new KernelError('BV_BAD_POOL_STATE', `pool state of ${state.byteLength} bytes does not fit a pool of ${this.frameCount} frames (${layout.bytes} bytes)`);
    }
    const fresh = state === null;
    this.sharedState = state ?? new SharedArrayBuffer(layout.bytes);
    this.shared = !fresh;
    this.header = new Int32Array(this.sharedState, 0, HEADER_WORDS);
    this.releaseMsCell = new Float64Array(this.sharedState, 0, HEADER_WORDS / 2);
    this.refCount = new Int32Array(this.sharedState, layout.refCount, this.frameCount);
    this.chunkUsed = new Int32Array(this.sharedState, layout.chunkUsed, this.runCount);
    this.chunkHint = new Int32Array(this.sharedState, layout.chunkHint, this.runCount);
    this.freeChunks = new Int32Array(this.sharedState, layout.freeChunks, this.runCount);
    this.partialPrev = new Int32Array(this.sharedState, layout.prev, this.runCount);
    this.partialNext = new Int32Array(this.sharedState, layout.next, this.runCount);
    this.fileMapped = new Uint8Array(this.sharedState, layout.fileMapped, this.frameCount);
    if (fresh) {
      this.header[H_FRAMES] = this.frameCount;
      this.header[H_PARTIAL_HEAD] = -1;
      this.header[H_PARTIAL_TAIL] = -1;
      this.partialNext.fill(NOT_LISTED);
      // Hand out low chunks first: the stack pops from the top.
      for (let chunk = this.runCount - 1, depth = 0; chunk >= 0; chunk--) this.freeChunks[depth++] = chunk;
      this.header[H_FREE_CHUNKS] = this.runCount;
    } else if (this.header[H_FRAMES] !== this.frameCount) {
      throw new KernelError('BV_BAD_POOL_STATE', `pool state is for ${this.header[H_FRAMES]} frames, this memory has ${this.frameCount}`);
    }
  }

  /** Host byte offset of a frame. */
  static offsetOf(frame: number): number {
    return frame * FRAME_SIZE;
  }

  // --- the mutex over the chunk structures (uncontended: one compareExchange in, one exchange out)

  private lock(): void {
    const header = this.header;
    let seen = Atomics.compareExchange(header, H_LOCK, 0, 1);
    if (seen === 0) return;
    for (let spin = 0; spin < 64 && seen !== 0; spin++) seen = Atomics.compareExchange(header, H_LOCK, 0, 1);
    if (seen === 0) return;
    // Contended: mark waiters and sleep until the holder hands over (Drepper's mutex, "Futexes Are Tricky").
    if (seen !== 2) seen = Atomics.exchange(header, H_LOCK, 2);
    while (seen !== 0) {
      Atomics.wait(header, H_LOCK, 2);
      seen = Atomics.exchange(header, H_LOCK, 2);
    }
  }

  private unlock(): void {
    if (Atomics.exchange(this.header, H_LOCK, 0) === 2) Atomics.notify(this.header, H_LOCK, 1);
  }

  // --- the partial-chunk list (insertion order, as a Set had it) and the free-chunk stack

  private addPartial(chunk: number): void {
    if (this.partialNext[chunk] !== NOT_LISTED) return;
    const tail = this.header[H_PARTIAL_TAIL]!;
    this.partialPrev[chunk] = tail;
    this.partialNext[chunk] = -1;
    if (tail < 0) this.header[H_PARTIAL_HEAD] = chunk;
    else this.partialNext[tail] = chunk;
    this.header[H_PARTIAL_TAIL] = chunk;
  }

  private deletePartial(chunk: number): void {
    const next = this.partialNext[chunk]!;
    if (next === NOT_LISTED) return;
    const prev = this.partialPrev[chunk]!;
    if (prev < 0) this.header[H_PARTIAL_HEAD] = next;
    else this.partialNext[prev] = next;
    if (next < 0) this.header[H_PARTIAL_TAIL] = prev;
    else this.partialPrev[next] = prev;
    this.partialNext[chunk] = NOT_LISTED;
  }

  private popFreeChunk(): number {
    const depth = this.header[H_FREE_CHUNKS]!;
    if (depth === 0) return -1;
    this.header[H_FREE_CHUNKS] = depth - 1;
    return this.freeChunks[depth - 1]!;
  }

  private removeFreeChunk(chunk: number): void {
    const depth = this.header[H_FREE_CHUNKS]!;
    const at = this.freeChunks.subarray(0, depth).lastIndexOf(chunk);
    if (at < 0) return;
    this.freeChunks.copyWithin(at, at + 1, depth);
    this.header[H_FREE_CHUNKS] = depth - 1;
  }

  /** Allocates one zeroed 4 KiB frame with reference count 1. */
  allocFrame(): number {
    this.lock();
    let chunk = this.header[H_PARTIAL_HEAD]!;
    if (chunk < 0) {
      chunk = this.popFreeChunk();
      if (chunk < 0) {
        this.unlock();
        throw new OutOfHostMemoryError(`no free 4 KiB frame among ${this.frameCount}`);
      }
      this.addPartial(chunk);
    }
    const firstFrame = chunk * FRAMES_PER_RUN;
    let slot = this.chunkHint[chunk]!;
    for (let probe = 0; probe < FRAMES_PER_RUN; probe++, slot = (slot + 1) & (FRAMES_PER_RUN - 1)) {
      if (this.refCount[firstFrame + slot] === 0) break;
    }
    const frame = firstFrame + slot;
    this.chunkHint[chunk] = (slot + 1) & (FRAMES_PER_RUN - 1);
    this.refCount[frame] = 1;
    this.header[H_USED]++;
    if (++this.chunkUsed[chunk]! === FRAMES_PER_RUN) this.deletePartial(chunk);
    this.unlock();
    if (this.onAllocated !== null) this.onAllocated(frame, 1);
    return frame;
  }

  /**
   * Allocates an aligned run of 1024 zeroed frames (4 MiB), each with reference count 1, and asks
   * the host for transparent huge pages on it. Returns the first frame, or -1 when no whole free
   * run exists (the caller falls back to small frames).
   */
  allocRun(): number {
    this.lock();
    const chunk = this.popFreeChunk();
    if (chunk < 0) {
      this.unlock();
      return -1;
    }
    const firstFrame = chunk * FRAMES_PER_RUN;
    this.refCount.fill(1, firstFrame, firstFrame + FRAMES_PER_RUN);
    this.chunkUsed[chunk] = FRAMES_PER_RUN;
    this.header[H_USED] += FRAMES_PER_RUN;
    this.unlock();
    this.memory.adviseHugePages(firstFrame * FRAME_SIZE, RUN_SIZE);
    if (this.onAllocated !== null) this.onAllocated(firstFrame, FRAMES_PER_RUN);
    return firstFrame;
  }

  /**
   * Allocates `count` (1..1024) contiguous zeroed frames inside one 4 MiB chunk, each with
   * reference count 1. Returns the first frame, or -1 when no such range is free.
   */
  allocContiguous(count: number): number {
    if (!Number.isInteger(count) || count < 1 || count > FRAMES_PER_RUN) throw new KernelError('BV_BAD_FRAME_COUNT', `contiguous allocation must be 1..${FRAMES_PER_RUN} frames, got ${count}`);
    this.lock();
    const first = this.findContiguous(count);
    this.unlock();
    if (first >= 0 && this.onAllocated !== null) this.onAllocated(first, count);
    return first;
  }

  /** allocContiguous's search, under the lock: the partial chunks in order, then the next whole free one. */
  private findContiguous(count: number): number {
    const depth = this.header[H_FREE_CHUNKS]!;
    const whole = depth > 0 ? this.freeChunks[depth - 1]! : -1;
    for (let chunk = this.header[H_PARTIAL_HEAD]!, last = false; !last; ) {
      if (chunk < 0) {
        chunk = whole;
        last = true;
        if (chunk < 0) break;
      }
      // Too few free frames for the run: skip the scan (a pool with many nearly full chunks).
      if (FRAMES_PER_RUN - this.chunkUsed[chunk]! >= count) {
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
      if (!last) chunk = this.partialNext[chunk]!;
    }
    return -1;
  }

  private claimRange(chunk: number, first: number, count: number): void {
    if (this.chunkUsed[chunk] === 0) {
      this.removeFreeChunk(chunk);
      this.addPartial(chunk);
    }
    this.refCount.fill(1, first, first + count);
    this.header[H_USED] += count;
    this.chunkUsed[chunk]! += count;
    if (this.chunkUsed[chunk] === FRAMES_PER_RUN) this.deletePartial(chunk);
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
    for (let i = 0; i < count; i++) this.markFileMapped(firstFrame + i, 1);
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
    for (let i = 0; i < count; i++) this.markFileMapped(firstFrame + i, 2);
  }

  /** Records a frame's file mapping kind (the caller holds the frame, so no other thread changes it). */
  private markFileMapped(frame: number, kind: 1 | 2): void {
    const was = this.fileMapped[frame]!;
    if (was === kind) return;
    if (was !== 0) Atomics.sub(this.header, was === 1 ? H_FILE_MAPPED : H_SHARED_MAPPED, 1);
    Atomics.add(this.header, kind === 1 ? H_FILE_MAPPED : H_SHARED_MAPPED, 1);
    this.fileMapped[frame] = kind;
  }

  /** msync of `count` contiguous frames mapped with mapFileShared: their stores are durable on return. */
  flushFrames(firstFrame: number, count: number): void {
    this.memory.flush!(firstFrame * FRAME_SIZE, count * FRAME_SIZE);
  }

  /** Forgets that a frame being freed was file-mapped, and gives it an anonymous zero page. */
  private unmapFileFrame(frame: number): void {
    this.memory.unmapPrivate!(frame * FRAME_SIZE, FRAME_SIZE);
    Atomics.sub(this.header, this.fileMapped[frame] === 2 ? H_SHARED_MAPPED : H_FILE_MAPPED, 1);
    this.fileMapped[frame] = 0;
  }

  /** Whether `frame` is a frame of this pool that someone holds (an integer in range with references). */
  inUse(frame: number): boolean {
    return Number.isInteger(frame) && frame >= 0 && frame < this.frameCount && this.refCount[frame]! > 0;
  }

  /** Adds a reference to a frame in use (sharing). */
  retain(frame: number): void {
    this.checkInUse(frame);
    Atomics.add(this.refCount, frame, 1);
  }

  /** madvise through the host memory, timed (a clock read is ~1 % of the cheapest madvise). */
  private returnToOs(offset: number, length: number): number {
    const started = performance.now();
    this.memory.release(offset, length);
    return performance.now() - started;
  }

  /**
   * Drops one reference; returns true when it was the last one, in which case the frame is now
   * FREEING and the caller must finish freeing it (freeFrames). Lock-free: a compareExchange loop.
   */
  private dropReference(frame: number): boolean {
    const refCount = this.refCount;
    for (;;) {
      const count = Atomics.load(refCount, frame);
      if (count <= 0) throw new KernelError('BV_BAD_FRAME', `frame ${frame} is not an allocated frame of this pool`);
      if (Atomics.compareExchange(refCount, frame, count, count === 1 ? FREEING : count - 1) === count) return count === 1;
    }
  }

  /** Drops a reference; the last one frees the frame and returns its memory to the OS. */
  release(frame: number): void {
    this.checkInUse(frame);
    if (!this.dropReference(frame)) return;
    let ms = 0;
    if (this.fileMapped[frame] !== 0) {
      // Released file-backed pages would read the file's bytes again: put zero pages back.
      this.unmapFileFrame(frame);
    } else {
      ms = this.returnToOs(frame * FRAME_SIZE, FRAME_SIZE);
    }
    this.lock();
    this.countFreed(frame);
    this.noteReleases(1, ms);
    this.unlock();
  }

  /** Counts OS release calls and their time (under the lock). */
  private noteReleases(calls: number, ms: number): void {
    this.header[H_RELEASE_CALLS]! += calls;
    this.releaseMsCell[RELEASE_MS_F64]! += ms;
  }

  /** Under the lock: a frame whose memory is back to zero becomes free; its chunk becomes free, or partial if it was full. */
  private countFreed(frame: number): void {
    this.refCount[frame] = 0;
    this.header[H_RELEASED]++;
    this.header[H_USED]--;
    const chunk = (frame / FRAMES_PER_RUN) | 0;
    const used = --this.chunkUsed[chunk]!;
    if (used === 0) {
      this.deletePartial(chunk);
      this.freeChunks[this.header[H_FREE_CHUNKS]!++] = chunk;
    } else if (used === FRAMES_PER_RUN - 1) {
      this.addPartial(chunk);
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
      if (this.dropReference(frame)) this.freedScratch[freedCount++] = frame;
    }
    const freed = this.freedScratch.subarray(0, freedCount).sort(); // numeric: a typed array's sort
    let start = -1;
    let end = -1;
    let calls = 0;
    let ms = 0;
    for (let i = 0; i < freedCount; i++) {
      const frame = freed[i]!;
      onFree?.(frame);
      if (this.fileMapped[frame] !== 0) {
        this.unmapFileFrame(frame);
      } else if (frame === end) {
        end++;
      } else {
        if (start >= 0) {
          ms += this.returnToOs(start * FRAME_SIZE, (end - start) * FRAME_SIZE);
          calls++;
        }
        start = frame;
        end = frame + 1;
      }
    }
    if (start >= 0) {
      ms += this.returnToOs(start * FRAME_SIZE, (end - start) * FRAME_SIZE);
      calls++;
    }
    if (freedCount === 0) return;
    this.lock();
    for (let i = 0; i < freedCount; i++) this.countFreed(freed[i]!);
    this.noteReleases(calls, ms);
    this.unlock();
  }

  /** True when the frame starts an aligned run whose 1024 frames are contiguous in the host pool. */
  static isRunAligned(frame: number): boolean {
    return (frame & (FRAMES_PER_RUN - 1)) === 0;
  }

  /** Frames retired after an uncorrected memory error (retire): never handed out again. */
  get retiredFrames(): number {
    return Atomics.load(this.header, H_RETIRED);
  }

  /**
   * Retires a frame holding an uncorrected memory error (T-17): the caller's reference (the
   * last one) becomes the retirement's, so the frame is never free again and no allocation can
   * return it; its bytes stay as they are (a service reads them to rebuild the page).
   */
  retire(frame: number): void {
    this.checkInUse(frame);
    if (this.refCount[frame] !== 1) throw new KernelError('BV_BAD_FRAME', `frame ${frame} has ${this.refCount[frame]} references; only a frame one page holds can be retired`);
    Atomics.add(this.header, H_RETIRED, 1);
  }

  stats(): FramePoolStats {
    this.lock();
    const used = this.header[H_USED]!;
    const stats: FramePoolStats = {
      totalFrames: this.frameCount,
      usedFrames: used,
      freeFrames: this.frameCount - used,
      wholeFreeRuns: this.header[H_FREE_CHUNKS]!,
      framesReleased: this.header[H_RELEASED]!,
      releaseCalls: this.header[H_RELEASE_CALLS]!,
      releaseMs: this.releaseMsCell[RELEASE_MS_F64]!,
      fileMappedFrames: this.header[H_FILE_MAPPED]!,
      sharedFileFrames: this.header[H_SHARED_MAPPED]!,
    };
    this.unlock();
    return stats;
  }

  private checkInUse(frame: number): void {
    if (!Number.isInteger(frame) || frame < 0 || frame >= this.frameCount || this.refCount[frame]! <= 0) {
      throw new KernelError('BV_BAD_FRAME', `frame ${frame} is not an allocated frame of this pool`);
    }
  }
}
