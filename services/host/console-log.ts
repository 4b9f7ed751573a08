/**
 * What a hosted VM printed: the last `capacity` bytes of its console output, addressed by
 * absolute offsets (bytes since the VM started) so a client can poll from where it stopped and
 * learn how much it missed when the log wrapped.
 */
import type { ConsoleSink } from '../../devices/index.ts';

/** A slice of a console log (GET /vms/{name}/console). */
export interface ConsoleSlice {
  /** Offset of the first byte of `data` (at least the offset asked for, more if bytes were dropped). */
  offset: number;
  /** Where to read from next time. */
  next_offset: number;
  /** Bytes between the offset asked for and `offset` that the log no longer holds. */
  dropped_bytes: number;
  /** The bytes, decoded as UTF-8 (invalid sequences become U+FFFD). */
  data: string;
}

/** A console sink that keeps the last `capacity` bytes (a ring) and counts everything written. */
export class ConsoleLog implements ConsoleSink {
  private readonly ring: Uint8Array;
  /** Bytes written since the start: the offset one past the newest byte. */
  private end = 0;
  /** Also copies everything to this sink (tools/run --api-sock keeps printing to stdout). */
  private readonly tee: ConsoleSink | null;
  /** Output commit (replication): output written but held back, oldest first; null when not holding. */
  private held: Uint8Array[] | null = null;
  private heldBytes = 0;

  constructor(
    /** Bytes kept (older output is dropped). */
    readonly capacity: number,
    tee: ConsoleSink | null = null,
  ) {
    if (!Number.isSafeInteger(capacity) || capacity <= 0) throw new RangeError(`console log capacity must be a positive integer, got ${capacity}`);
    this.ring = new Uint8Array(capacity);
    this.tee = tee;
  }

  /** Bytes written since the VM started. */
  get totalBytes(): number {
    return this.end;
  }

  /** The oldest offset still held. */
  get startOffset(): number {
    return Math.max(0, this.end - this.capacity);
  }

  /** Bytes written since the VM started, visible or held back (output commit). */
  get writtenBytes(): number {
    return this.end + this.heldBytes;
  }

  /**
   * Output commit (Remus; docs/migration.md, "Disaster-recovery replication"): from now on,
   * output is held back (not readable, not copied to the tee) until release() lets it out.
   */
  hold(): void {
    this.held ??= [];
  }

  /** Lets held output out up to absolute offset `upTo` (a writtenBytes value noted earlier). */
  release(upTo: number): void {
    const held = this.held;
    if (held === null) return;
    while (held.length > 0 && this.end < upTo) {
      const chunk = held[0]!;
      const n = Math.min(chunk.length, upTo - this.end);
      this.heldBytes -= n;
      if (n === chunk.length) held.shift();
      else held[0] = chunk.subarray(n);
      this.publish(chunk.subarray(0, n));
    }
  }

  /** Stops holding output back: everything held is let out. */
  unhold(): void {
    this.release(Infinity);
    this.held = null;
  }

  write(chunk: Uint8Array | string): boolean {
    const bytes = typeof chunk === 'string' ? new TextEncoder().encode(chunk) : chunk;
    if (this.held !== null) {
      this.held.push(bytes.slice());
      this.heldBytes += bytes.length;
      return true;
    }
    this.publish(bytes);
    return true;
  }

  private publish(bytes: Uint8Array): void {
    this.tee?.write(bytes);
    // Only the last `capacity` bytes of a large chunk can survive.
    const keep = bytes.length > this.capacity ? bytes.subarray(bytes.length - this.capacity) : bytes;
    this.end += bytes.length - keep.length;
    let at = this.end % this.capacity;
    let from = 0;
    while (from < keep.length) {
      const n = Math.min(keep.length - from, this.capacity - at);
      this.ring.set(keep.subarray(from, from + n), at);
      from += n;
      at = 0;
    }
    this.end += keep.length;
  }

  /** Up to `limit` bytes from `offset` (clamped to what is held). */
  read(offset: number, limit: number): ConsoleSlice {
    const start = Math.min(Math.max(offset, this.startOffset), this.end);
    const length = Math.min(limit, this.end - start);
    const out = new Uint8Array(length);
    let at = start % this.capacity;
    let to = 0;
    while (to < length) {
      const n = Math.min(length - to, this.capacity - at);
      out.set(this.ring.subarray(at, at + n), to);
      to += n;
      at = 0;
    }
    return { offset: start, next_offset: start + length, dropped_bytes: Math.max(0, start - Math.min(offset, this.end)), data: new TextDecoder().decode(out) };
  }

  /** Everything held, as text (tests, tools/host at exit). */
  text(): string {
    return this.read(0, this.capacity).data;
  }
}
