/**
 * Zeroed per-page arrays (P2M entries, accessed marks, epochs, fork generations) carved out of
 * one lazily backed host mapping, so creating or forking a VM of any size costs no pass over
 * its pages: a fresh JS typed array of 1 MiB costs ~0.45 ms here (the engine clears it and
 * accounts it), a slice of an untouched anonymous mapping costs a view. A freed slice is handed
 * back to the OS (madvise), so it reads as zero again for the next user and its memory is
 * returned. Falls back to plain typed arrays when there is no arena or it is full.
 */

/** Memory for the arena: zero-filled on creation; `release` gives a range back zeroed. */
export interface ArenaMemory {
  readonly buffer: ArrayBuffer;
  readonly bytes: number;
  release(offset: number, length: number): void;
}

const SLICE_ALIGN = 4096;
/** Below this a plain typed array is as cheap as a slice. */
const SMALL_BYTES = 16 * 1024;

export class ZeroedArena {
  /** Free ranges [offset, bytes], sorted by offset, coalesced. */
  private readonly free: [number, number][] = [];
  /** Bytes of each slice in use, by offset. */
  private readonly used = new Map<number, number>();
  /** Slices handed out from the arena, and plain arrays handed out instead. */
  sliceAllocations = 0;
  fallbackAllocations = 0;
  /**
   * The mapping's buffer, read once: the native getter costs a call and a closed check per view,
   * and the mapping lives as long as the hypervisor that creates VMs from it.
   */
  private readonly buffer: ArrayBuffer | null;

  constructor(private readonly memory: ArenaMemory | null) {
    this.buffer = memory ? memory.buffer : null;
    if (memory) this.free.push([0, memory.bytes - (memory.bytes % SLICE_ALIGN)]);
  }

  int32(length: number): Int32Array {
    const offset = this.take(length * 4);
    return offset < 0 ? new Int32Array(length) : new Int32Array(this.buffer!, offset, length);
  }

  uint8(length: number): Uint8Array {
    const offset = this.take(length);
    return offset < 0 ? new Uint8Array(length) : new Uint8Array(this.buffer!, offset, length);
  }

  /** Gives an array from this arena back (zeroed for the next user). Plain arrays are left to the GC. */
  release(view: Int32Array | Uint8Array): void {
    if (this.memory === null || view.buffer !== this.buffer) return;
    const bytes = this.used.get(view.byteOffset);
    if (bytes === undefined) return;
    this.used.delete(view.byteOffset);
    this.memory.release(view.byteOffset, bytes);
    this.insertFree(view.byteOffset, bytes);
  }

  /** Bytes of the arena in use. */
  get bytesInUse(): number {
    let total = 0;
    for (const bytes of this.used.values()) total += bytes;
    return total;
  }

  private take(bytes: number): number {
    if (this.memory === null || bytes < SMALL_BYTES) {
      this.fallbackAllocations++;
      return -1;
    }
    const size = Math.ceil(bytes / SLICE_ALIGN) * SLICE_ALIGN;
    for (let i = 0; i < this.free.length; i++) {
      const range = this.free[i]!;
      if (range[1] < size) continue;
      const offset = range[0];
      if (range[1] === size) this.free.splice(i, 1);
      else {
        range[0] += size;
        range[1] -= size;
      }
      this.used.set(offset, size);
      this.sliceAllocations++;
      return offset;
    }
    this.fallbackAllocations++;
    return -1;
  }

  private insertFree(offset: number, bytes: number): void {
    let at = 0;
    while (at < this.free.length && this.free[at]![0] < offset) at++;
    this.free.splice(at, 0, [offset, bytes]);
    // Coalesce with the neighbours.
    const next = this.free[at + 1];
    if (next && offset + bytes === next[0]) {
      this.free[at]![1] += next[1];
      this.free.splice(at + 1, 1);
    }
    const previous = this.free[at - 1];
    if (previous && previous[0] + previous[1] === offset) {
      previous[1] += this.free[at]![1];
      this.free.splice(at, 1);
    }
  }
}
