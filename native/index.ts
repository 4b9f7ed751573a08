/**
 * The typed face of the C++ addon (native/src): host memory regions exposed as ArrayBuffers, and
 * positional file I/O for checkpoint files. The addon validates every argument; its failures
 * arrive here as NativeError with a stable code. See docs/native.md.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { NativeError, rethrowNative } from './errors.ts';

export { NATIVE_ERROR_CODES, NativeError } from './errors.ts';
export type { NativeErrorCode, NativeErrorDetails } from './errors.ts';

/** How a HostRegion is backed: private anonymous memory, a shared file mapping, or a memfd. */
export type HostRegionKind = 'anonymous' | 'file' | 'memfd';
/** How HostFile.open opens a file: read-only, read-write, or created/emptied read-write. */
export type HostFileMode = 'r' | 'rw' | 'create';

/** The addon's region object (native/src/region.h); only this module touches it. */
interface NativeRegion {
  readonly buffer: ArrayBuffer;
  readonly closed: boolean;
  readonly kind: HostRegionKind;
  release(offset: number, length: number): void;
  residency(offset: number, length: number): Uint8Array;
  adviseHugePages(offset: number, length: number): boolean;
  populate(offset: number, length: number): boolean;
  flush(offset: number, length: number): void;
  mapFilePrivate(offset: number, length: number, path: string, fileOffset: number): void;
  mapFileShared(offset: number, length: number, path: string, fileOffset: number): void;
  unmapPrivate(offset: number, length: number): void;
  sharedBuffer(): SharedArrayBuffer;
  close(): void;
}

/** The addon's file object (native/src/file.h). */
interface NativeFile {
  readonly size: number;
  readonly closed: boolean;
  readonly direct: boolean;
  readonly directAlignment: number;
  readonly pendingOperations: number;
  pread(target: Uint8Array, fileOffset: number): number;
  pwrite(source: Uint8Array, fileOffset: number): number;
  preadToRegion(region: unknown, regionOffset: number, length: number, fileOffset: number): number;
  pwriteFromRegion(region: unknown, regionOffset: number, length: number, fileOffset: number): number;
  preadAsync(target: Uint8Array, fileOffset: number): Promise<number>;
  pwriteAsync(source: Uint8Array, fileOffset: number): Promise<number>;
  syncAsync(): Promise<void>;
  truncate(bytes: number): void;
  sync(): void;
  close(): void;
}

interface NativeBinding {
  readonly pageSize: number;
  readonly Region: {
    new (kind: 'anonymous', bytes: number, noReserve: boolean): NativeRegion;
    new (kind: 'file', bytes: number, path: string, create: boolean): NativeRegion;
    new (kind: 'memfd', bytes: number, name: string | undefined): NativeRegion;
    attachShared(sab: SharedArrayBuffer): NativeRegion;
  };
  readonly File: new (path: string, mode: HostFileMode, direct: boolean) => NativeFile;
  syncDirectory(path: string): void;
  crc32c(bytes: Uint8Array, seed?: number): number;
  setThreadAffinity(cpus: readonly number[]): void;
  threadAffinity(): number[];
  threadId(): number;
}

/**
 * The addon is build/Release/bytevisor_native.node at the package root. This module runs from
 * native/ in the repository (through tsx) and from dist/native/ in the installed package (the
 * compiled JavaScript), so the root is one or two levels up: the first candidate that exists is
 * loaded, and its own load error (a wrong Node ABI, say) is the one reported.
 */
function loadBinding(): NativeBinding {
  const candidates = ['../build/Release/bytevisor_native.node', '../../build/Release/bytevisor_native.node'];
  const addonPath = candidates.find((candidate) => existsSync(new URL(candidate, import.meta.url))) ?? candidates[0]!;
  try {
    return createRequire(import.meta.url)(addonPath) as NativeBinding;
  } catch (error) {
    throw new NativeError(
      'BV_NATIVE_NOT_BUILT',
      `cannot load the native addon (${fileURLToPath(new URL(addonPath, import.meta.url))}): run \`npm install\` to build it (${(error as Error).message})`,
    );
  }
}

const binding = loadBinding();

/** The host's page size in bytes (sysconf(_SC_PAGESIZE)): the unit of every aligned argument. */
export const HOST_PAGE_SIZE: number = binding.pageSize;

/** Resident set size of this process in bytes (second field of /proc/self/statm, in pages). */
export function processRss(): number {
  const residentPages = Number(readFileSync('/proc/self/statm', 'latin1').split(' ')[1]);
  return residentPages * HOST_PAGE_SIZE;
}

// Lets HostFile hand a region's native object to the addon without making it public.
let nativeRegionOf: (value: unknown) => unknown;

/**
 * One host memory mapping (at most 4 GiB, a multiple of HOST_PAGE_SIZE) seen from JS as one
 * external ArrayBuffer. Offsets are byte offsets into the mapping. Memory is unmapped by close()
 * (which also detaches the ArrayBuffer, so stale views read as empty instead of touching freed
 * memory) or, failing that, when both this object and its buffer have been garbage collected.
 */
export class HostRegion {
  static {
    nativeRegionOf = (value) =>
      typeof value === 'object' && value !== null && #native in value ? value.#native : value;
  }

  readonly #native: NativeRegion;
  readonly #buffer: ArrayBuffer;

  private constructor(
    native: NativeRegion,
    /** How the region is backed. */
    readonly kind: HostRegionKind,
    /** The mapping's size in bytes. */
    readonly bytes: number,
  ) {
    this.#native = native;
    this.#buffer = native.buffer;
  }

  /** Private anonymous memory (zero-filled on first touch); `noReserve` skips swap accounting. */
  static anonymous(bytes: number, options: { noReserve?: boolean } = {}): HostRegion {
    try {
      return new HostRegion(new binding.Region('anonymous', bytes, options.noReserve ?? false), 'anonymous', bytes);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** A shared mapping of the file at `path` (extended to `bytes` if shorter; created if `create`). */
  static sharedFile(path: string, bytes: number, options: { create?: boolean } = {}): HostRegion {
    try {
      return new HostRegion(new binding.Region('file', bytes, path, options.create ?? false), 'file', bytes);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Shared memory backed by a memfd (a file that lives in memory only). */
  static sharedMemory(bytes: number, name?: string): HostRegion {
    try {
      return new HostRegion(new binding.Region('memfd', bytes, name), 'memfd', bytes);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * The region behind a SharedArrayBuffer that `sharedBuffer()` returned, in any thread (typically
   * a worker_threads Worker it was posted to): the same mapping, kind and bytes, with every method
   * acting on that mapping exactly as on the original. Its `buffer` is a fresh external
   * ArrayBuffer over the mapping in this thread (detached by this region's close()), and its
   * `sharedBuffer()` is `sab` itself. close() drops only this region's hold: the mapping is
   * unmapped when the last holder of any kind (regions, their buffers, SharedArrayBuffers in any
   * thread) lets go. A SharedArrayBuffer that is not a region's (a new one, a slice, a copy) or
   * anything else gives BV_NATIVE_BAD_ARGUMENT. Every method may run in several threads at once;
   * docs/native.md ("What may run at once") says what that does and does not make safe.
   */
  static attachShared(sab: SharedArrayBuffer): HostRegion {
    try {
      const native = binding.Region.attachShared(sab);
      return new HostRegion(native, native.kind, native.buffer.byteLength);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Whether close() has run (or a failed remap had to close the region). */
  get closed(): boolean {
    return this.#native.closed;
  }

  /** The whole mapping as one external ArrayBuffer; BV_NATIVE_CLOSED after close(). */
  get buffer(): ArrayBuffer {
    if (this.#native.closed) throw new NativeError('BV_NATIVE_CLOSED', 'the region is closed');
    return this.#buffer;
  }

  /**
   * Gives the pages of a page-aligned range back to the OS; they read as zero afterwards. An
   * anonymous region uses MADV_DONTNEED (a mapFilePrivate range reads the file's bytes again;
   * a range overlapping a mapFileShared range is refused with BV_NATIVE_UNSUPPORTED, since its
   * pages would keep the file's bytes: use unmapPrivate); file and memfd regions punch a hole in
   * the backing file.
   */
  release(offset: number, length: number): void {
    try {
      this.#native.release(offset, length);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** mincore over a page-aligned range: one byte per page, 1 when the page is resident. */
  residency(offset: number, length: number): Uint8Array {
    try {
      return this.#native.residency(offset, length);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** MADV_HUGEPAGE over a page-aligned range; false when the host cannot honour it (shared regions, THP off). */
  adviseHugePages(offset: number, length: number): boolean {
    try {
      return this.#native.adviseHugePages(offset, length);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * MADV_POPULATE_WRITE over a page-aligned range: every page mapped writable now, in one system
   * call, rather than a page fault each at its first write. False when the kernel cannot (Linux
   * before 5.14); the pages then fault in as usual.
   */
  populate(offset: number, length: number): boolean {
    try {
      return this.#native.populate(offset, length);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * msync(MS_SYNC) of the pages a byte range touches: when it returns, the file-backed pages of
   * the range (a file region, or mapFileShared ranges of an anonymous region) are on the file's
   * storage. Nothing to do for anonymous pages.
   */
  flush(offset: number, length: number): void {
    try {
      this.#native.flush(offset, length);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * Maps [fileOffset, fileOffset + length) of a file copy-on-write over [offset, offset + length)
   * of this anonymous region: reads see the file, writes stay private. All three numbers must be
   * page-aligned and the file must hold the whole range (a mapping past EOF would SIGBUS).
   */
  mapFilePrivate(offset: number, length: number, path: string, fileOffset: number): void {
    try {
      this.#native.mapFilePrivate(offset, length, path, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * Maps [fileOffset, fileOffset + length) of a file SHARED over [offset, offset + length) of
   * this anonymous region (MAP_SHARED | MAP_FIXED): reads and writes are the file's page cache,
   * so stores reach the file, and flush() over the range makes them durable. The file is opened
   * read-write; the same checks as mapFilePrivate (page-aligned numbers, the range within the
   * region and within the file, a regular file), and the file is pinned at that size while
   * mapped. release() refuses the range; unmapPrivate undoes it.
   */
  mapFileShared(offset: number, length: number, path: string, fileOffset: number): void {
    try {
      this.#native.mapFileShared(offset, length, path, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Replaces a page-aligned range of an anonymous region with fresh zero pages (undoes mapFilePrivate and mapFileShared). */
  unmapPrivate(offset: number, length: number): void {
    try {
      this.#native.unmapPrivate(offset, length);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * The whole mapping as one SharedArrayBuffer (the same object on every call), for
   * worker_threads: postMessage it to a Worker and an Int32Array over it there sees the same
   * bytes, with Atomics working across threads. Once it exists, close() cannot unmap at once
   * (a SharedArrayBuffer cannot be detached and another thread may be using it): the region
   * closes (its methods give BV_NATIVE_CLOSED, `buffer` is detached) and the memory is unmapped
   * when the last SharedArrayBuffer in any thread, and the detached buffer, are garbage
   * collected. BV_NATIVE_CLOSED after close(). See docs/native.md.
   */
  sharedBuffer(): SharedArrayBuffer {
    try {
      return this.#native.sharedBuffer();
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * Unmaps now and detaches the ArrayBuffer (every view becomes empty). Idempotent. After
   * sharedBuffer() (and always for a region from attachShared) it only drops this region's hold:
   * the unmapping waits for the last holder in any thread.
   */
  close(): void {
    this.#native.close();
  }
}

/** Options of HostFile.open. */
export interface HostFileOptions {
  /**
   * Open with O_DIRECT: transfers bypass the page cache. Every transfer's file offset and length
   * must then be multiples of `directAlignment`; memory alignment is the addon's business (it
   * copies through an aligned buffer), so any Uint8Array will do. A file system that cannot do
   * direct I/O (some tmpfs) makes open throw BV_NATIVE_UNSUPPORTED.
   */
  readonly direct?: boolean;
}

/**
 * The largest transfer one preadAsync or pwriteAsync accepts (64 MiB): each copies through a
 * buffer of its own length. Larger ones are BV_NATIVE_TOO_LARGE; split them.
 */
export const HOST_FILE_MAX_ASYNC_TRANSFER = 64 * 1024 * 1024;

/**
 * A regular file with positional I/O: checkpoint files (synchronous) and block device images
 * (asynchronous, optionally O_DIRECT). Offsets are plain safe integers. See docs/native.md.
 */
export class HostFile {
  readonly #native: NativeFile;

  private constructor(
    native: NativeFile,
    /** The path the file was opened with. */
    readonly path: string,
  ) {
    this.#native = native;
  }

  /**
   * 'r' read-only, 'rw' read-write, 'create' read-write created or emptied (O_CREAT|O_TRUNC).
   * `options.direct` opens with O_DIRECT (HostFileOptions).
   */
  static open(path: string, mode: HostFileMode, options: HostFileOptions = {}): HostFile {
    try {
      return new HostFile(new binding.File(path, mode, options.direct ?? false), path);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Current size in bytes (fstat). */
  get size(): number {
    try {
      return this.#native.size;
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Whether close() has run. */
  get closed(): boolean {
    return this.#native.closed;
  }

  /** Whether the file was opened with O_DIRECT. */
  get direct(): boolean {
    return this.#native.direct;
  }

  /**
   * When direct: file offsets and lengths of every transfer (synchronous or not) must be
   * multiples of this many bytes, else BV_NATIVE_UNALIGNED. It is statx's STATX_DIOALIGN offset
   * alignment when the kernel reports one (Linux 6.1+; 512 on ext4 here), else 512. 1 when not
   * direct.
   */
  get directAlignment(): number {
    return this.#native.directAlignment;
  }

  /** Asynchronous operations started and not yet settled (still counting down after close()). */
  get pendingOperations(): number {
    return this.#native.pendingOperations;
  }

  /**
   * Reads up to target.length bytes at fileOffset; returns the count (short only at end of file).
   * On a direct file, fileOffset and target.length must be multiples of directAlignment (this and
   * the other synchronous transfers then copy through an aligned buffer, 1 MiB at a time).
   */
  pread(target: Uint8Array, fileOffset: number): number {
    try {
      return this.#native.pread(target, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Writes all of source at fileOffset; returns source.length. Direct files: as for pread. */
  pwrite(source: Uint8Array, fileOffset: number): number {
    try {
      return this.#native.pwrite(source, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Reads straight into region memory (no JS copy); returns the count (short only at end of file). */
  preadToRegion(region: HostRegion, regionOffset: number, length: number, fileOffset: number): number {
    try {
      return this.#native.preadToRegion(nativeRegionOf(region), regionOffset, length, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** Writes region memory straight to the file; returns length. */
  pwriteFromRegion(region: HostRegion, regionOffset: number, length: number, fileOffset: number): number {
    try {
      return this.#native.pwriteFromRegion(nativeRegionOf(region), regionOffset, length, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * pread on the libuv thread pool: resolves with the count of bytes read into `target` (short
   * only at end of file, 0 past it). Bad arguments throw at once (BV_NATIVE_CLOSED,
   * BV_NATIVE_BAD_ARGUMENT, BV_NATIVE_UNALIGNED when direct, BV_NATIVE_TOO_LARGE above
   * HOST_FILE_MAX_ASYNC_TRANSFER, BV_NATIVE_OUT_OF_RANGE past 2^53 - 1); an I/O failure rejects
   * with BV_NATIVE_IO. The bytes are copied into `target` when the read settles, on this
   * thread; `target` is referenced until then.
   */
  preadAsync(target: Uint8Array, fileOffset: number): Promise<number> {
    let pending: Promise<number>;
    try {
      pending = this.#native.preadAsync(target, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
    return pending.then(undefined, rethrowNative);
  }

  /**
   * pwrite on the libuv thread pool: resolves with source.length once every byte is written, or
   * rejects (BV_NATIVE_IO). `source` is copied when the call is made, so the caller may reuse it
   * at once. Argument errors throw at once, as for preadAsync.
   */
  pwriteAsync(source: Uint8Array, fileOffset: number): Promise<number> {
    let pending: Promise<number>;
    try {
      pending = this.#native.pwriteAsync(source, fileOffset);
    } catch (error) {
      rethrowNative(error);
    }
    return pending.then(undefined, rethrowNative);
  }

  /**
   * fdatasync on the libuv thread pool: resolves once the data written so far (and the size) is
   * on the disk. It covers writes that settled before it was called; order writes before it by
   * awaiting them. BV_NATIVE_CLOSED throws at once; an I/O failure rejects with BV_NATIVE_IO.
   */
  syncAsync(): Promise<void> {
    let pending: Promise<void>;
    try {
      pending = this.#native.syncAsync();
    } catch (error) {
      rethrowNative(error);
    }
    return pending.then(undefined, rethrowNative);
  }

  /** Sets the size; refuses (BV_NATIVE_BUSY) to cut off bytes that a live region maps. */
  truncate(bytes: number): void {
    try {
      this.#native.truncate(bytes);
    } catch (error) {
      rethrowNative(error);
    }
  }

  /** fsync: data and metadata reach the disk. */
  sync(): void {
    try {
      this.#native.sync();
    } catch (error) {
      rethrowNative(error);
    }
  }

  /**
   * Closes the file. Idempotent. Every later call throws BV_NATIVE_CLOSED. Asynchronous
   * operations already started still complete and settle normally: the descriptor itself is
   * closed when the last of them settles (at once when none is pending), so no pool thread ever
   * uses a closed or reused descriptor.
   */
  close(): void {
    this.#native.close();
  }
}

/**
 * Pins the CALLING thread (the main thread, or the worker_threads Worker that calls it) to the
 * host CPUs `cpus` with sched_setaffinity; other threads keep theirs, and threads created later
 * by this one inherit it. BV_NATIVE_BAD_ARGUMENT for an empty list, a CPU that is not a
 * non-negative integer, a duplicate, or a CPU ≥ CPU_SETSIZE (1024); BV_NATIVE_IO (errnoName
 * `EINVAL`) when a CPU is not online or not allowed to this process, and then the thread's
 * affinity is left as it was; BV_NATIVE_UNSUPPORTED off Linux.
 */
export function setThreadAffinity(cpus: readonly number[]): void {
  try {
    binding.setThreadAffinity(cpus);
  } catch (error) {
    rethrowNative(error);
  }
}

/** The host CPUs the calling thread may run on (sched_getaffinity), ascending. BV_NATIVE_UNSUPPORTED off Linux. */
export function threadAffinity(): number[] {
  try {
    return binding.threadAffinity();
  } catch (error) {
    rethrowNative(error);
  }
}

/**
 * The kernel's id of the calling thread (gettid): the `<tid>` of `/proc/self/task/<tid>`, equal to
 * process.pid on the main thread. BV_NATIVE_UNSUPPORTED off Linux.
 */
export function threadId(): number {
  try {
    return binding.threadId();
  } catch (error) {
    rethrowNative(error);
  }
}

/** fsync a directory, so that a rename inside it survives a crash. */
export function syncDirectory(path: string): void {
  try {
    binding.syncDirectory(path);
  } catch (error) {
    rethrowNative(error);
  }
}

/**
 * CRC-32C (Castagnoli) of `bytes`, continuing from `seed` (a previous result) if given. Uses the
 * CPU's crc32 instruction where available (several GB/s), else a table. Checkpoint files use it.
 */
export function crc32c(bytes: Uint8Array, seed = 0): number {
  try {
    return binding.crc32c(bytes, seed);
  } catch (error) {
    rethrowNative(error);
  }
}
