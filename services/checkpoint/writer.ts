/**
 * Writes checkpoint files (T-10): pages are copied (optionally lz4-compressed as a batch) into a
 * staging buffer; a full buffer becomes one storage block, written with one large write at a
 * 4 KiB-aligned offset. The memory index (with its per-region CRCs), the block table, the
 * per-block page lists and the small sections go at the end, so pages may arrive in any order
 * (live snapshots save them in the background as the guest runs).
 *
 * Crash safety: everything goes to `<path>.tmp-<pid>-<random>` in the same directory, which is
 * fsync'd, renamed over `path`, and the directory fsync'd. A writer that dies at any point leaves
 * the previous checkpoint at `path` untouched; its temp file is ignored by readers and can be
 * removed with removeStaleTempFiles().
 */
import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, readdirSync, renameSync, unlink, unlinkSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import lz4 from 'lz4-napi';
import { HostFile, NativeError, syncDirectory } from '../../native/index.ts';
import { CheckpointError } from './errors.ts';
import {
  alignUp,
  BLOCK_ALIGNMENT,
  checkDevices,
  checkJson,
  checksum,
  DEFAULT_STAGING_BYTES,
  encodeBlockPages,
  encodeBlockTable,
  encodeDevices,
  encodeHeader,
  encodeIndexCrcs,
  encodeJson,
  encodeMemoryIndex,
  encodeSectionTable,
  FIRST_BLOCK_OFFSET,
  FLAG_HAS_LZ4,
  FORMAT_VERSION,
  MAX_BLOCK_PAGES,
  PAGE_BYTES,
  SECTION_ALIGNMENT,
  SectionType,
  u32Bytes,
  ZERO_PAGE_BLOCK,
  type BlockEntry,
  type CheckpointContents,
  type CheckpointState,
  type SectionEntry,
} from './format.ts';

/** How memory blocks are stored (see WriteOptions.compression). */
export type Compression = 'lz4' | 'none';

/** Options of writeCheckpoint, CheckpointWriter.begin and saveVmCheckpoint. */
export interface WriteOptions {
  /**
   * 'none' (default) stores raw blocks: saving runs at disk speed and every block can be mapped
   * on restore. 'lz4' compresses each staged batch (ratio ~2.4 on guest-like memory, but
   * ~354 MB/s, slower than the disk here) and keeps a block raw when lz4 saves under 1/8.
   */
  compression?: Compression;
  /** Staging buffer size = largest block, a multiple of 4 KiB (default 1 MiB, at most 256 MiB). */
  stagingBytes?: number;
  /** Called with (pages handled, pageCount) after each block and at the end. */
  onProgress?: (done: number, total: number) => void;
}

/** Where the pages come from: the 4 KiB page (a view is fine), or null for a zero/untouched page. */
export interface PageSource {
  /** Guest page `gpn`'s 4 KiB, or null when it is zero or untouched. */
  page(gpn: number): Uint8Array | null;
  /**
   * True when every page returned keeps its bytes until writeCheckpoint returns (no later
   * page() call changes an earlier page): see BeginOptions.pagesStable.
   */
  readonly pagesStable?: boolean;
}

/** What a finished checkpoint write did. */
export interface WriteStats {
  /** Size of the finished file. */
  fileBytes: number;
  /** Storage blocks written. */
  blocks: number;
  /** Blocks stored raw. */
  rawBlocks: number;
  /** Blocks stored lz4-compressed. */
  lz4Blocks: number;
  /** Pages stored in blocks. */
  pagesStored: number;
  /** Pages not stored because they were null or all zero. */
  zeroPages: number;
  /** Bytes of the stored pages (pagesStored × 4096)… */
  pageBytes: number;
  /** …and the bytes their blocks take on disk (before alignment padding). */
  blockBytes: number;
  /** pageBytes / blockBytes (1 when nothing was compressed or stored). */
  compressionRatio: number;
  /** Wall time from begin to finish, in seconds. */
  seconds: number;
}

/**
 * PAGE_BYTES read once: under tsx (the tools, the bench) each use of an imported binding is a
 * getter call, and addPage runs once per guest page.
 */
const PAGE = PAGE_BYTES;
/** Blocks keep lz4 output only when it saves at least this fraction of the raw bytes. */
const LZ4_MIN_SAVING = 1 / 8;
/** Progress is reported at least this often (in pages) even when no block fills. */
const PROGRESS_EVERY_PAGES = 16_384;
/**
 * With stable pages (BeginOptions.pagesStable), a raw block is written straight from the pages'
 * memory, one pwrite per run of adjacent pages, when it has at most this many runs; a more
 * scattered block is copied into the staging buffer and written at once, as small writes cost
 * more than the copy they save.
 */
const MAX_DIRECT_RUNS = 16;

function ioError(action: string, error: unknown): CheckpointError {
  const detail = error instanceof Error ? error.message : String(error);
  return new CheckpointError('BV_CKPT_IO', `cannot ${action}: ${detail}`, '', { cause: error });
}

function badArgument(message: string): CheckpointError {
  return new CheckpointError('BV_CKPT_BAD_ARGUMENT', message, 'argument');
}

function isZeroPage(page: Uint8Array): boolean {
  if (page.byteOffset % 4 === 0) {
    const words = new Uint32Array(page.buffer, page.byteOffset, PAGE / 4);
    for (let index = 0; index < words.length; index++) if (words[index] !== 0) return false;
    return true;
  }
  for (let index = 0; index < PAGE; index++) if (page[index] !== 0) return false;
  return true;
}

/** Checks the non-memory state before any byte is written, so a bad call leaves no file. */
function checkState(state: CheckpointState): void {
  if (typeof state.config !== 'object' || state.config === null || Array.isArray(state.config)) {
    throw badArgument('config must be a JSON object');
  }
  checkJson(state.config, 'config');
  if (!Array.isArray(state.cpus)) throw badArgument('cpus must be an array');
  state.cpus.forEach((cpu, index) => {
    if (typeof cpu !== 'object' || cpu === null || Array.isArray(cpu)) throw badArgument(`cpus[${index}] must be a JSON object`);
    checkJson(cpu, `cpus[${index}]`);
  });
  if (typeof state.devices !== 'object' || state.devices === null) throw badArgument('devices must be an object');
  checkDevices(state.devices);
}

/** The name of a temp file for `targetPath`: same directory, so the final rename is atomic. */
function tempPathFor(targetPath: string): string {
  return `${targetPath}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/** The name the previous checkpoint keeps while a new one replaces it (see finish). */
function retiredPathFor(targetPath: string): string {
  return `${targetPath}.old-${process.pid}-${randomBytes(6).toString('hex')}`;
}

const TEMP_NAME = /^(.*)\.(?:tmp|old)-(\d+)-[0-9a-f]+$/;

/**
 * Deletes temp files left next to `path` by writers that died (their process no longer exists).
 * Files of live processes, including this one, are kept. Returns the paths removed.
 */
export function removeStaleTempFiles(path: string): string[] {
  const target = resolve(path);
  const directory = dirname(target);
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(directory);
  } catch (error) {
    throw ioError(`list ${directory}`, error);
  }
  for (const name of names) {
    const match = TEMP_NAME.exec(name);
    if (match === null || match[1] !== basename(target)) continue;
    const pid = Number(match[2]);
    if (pid === process.pid || processExists(pid)) continue;
    try {
      unlinkSync(join(directory, name));
      removed.push(join(directory, name));
    } catch {
      // Someone else removed it first: nothing to do.
    }
  }
  return removed;
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/** Options of CheckpointWriter.begin. */
export interface BeginOptions extends WriteOptions {
  /** Guest pages the memory index covers; pages never added are zero pages. */
  pageCount: number;
  /**
   * The caller keeps every page it hands to addPage unchanged (the same bytes, at the same
   * place) until finish() or abort() returns. The writer then does not copy raw pages: it
   * keeps the views and writes each run of adjacent ones with one pwrite (256 MiB save: see
   * docs/performance.md). Default false: addPage copies the page before it returns.
   */
  pagesStable?: boolean;
}

/**
 * An incremental writer: begin(), addPage() in any order (each page at most once), finish().
 * A bad argument (page number, page length, non-JSON state) throws and leaves the writer usable;
 * any other failure (I/O, a full disk) removes the temp file and closes the writer.
 */
export class CheckpointWriter {
  /** The file finish() creates or replaces (absolute). */
  readonly targetPath: string;
  /** The temporary file written until finish() renames it to targetPath. */
  readonly tempPath: string;
  /** Guest pages the memory index covers. */
  readonly pageCount: number;
  #file: HostFile | undefined;
  readonly #compression: Compression;
  readonly #onProgress: ((done: number, total: number) => void) | undefined;
  readonly #staging: Uint8Array;
  readonly #stagedGpns: Uint32Array;
  /** With pagesStable, the views of the staged pages (nothing is copied into #staging). */
  readonly #stagedViews: (Uint8Array | undefined)[] | null;
  /** #writeRuns' first slot of each run of adjacent views, and one past the last run's end. */
  readonly #runStarts = new Int32Array(MAX_DIRECT_RUNS + 1);
  #stagedCount = 0;
  readonly #blockOfPage: Uint32Array;
  readonly #slotOfPage: Uint32Array;
  /** BLOCK_PAGES: the gpns of every stored page, block after block, in slot order. */
  readonly #blockPages: Uint32Array;
  readonly #added: Uint8Array;
  #pagesAdded = 0;
  #zeroPages = 0;
  readonly #blocks: BlockEntry[] = [];
  #nextBlockOffset = FIRST_BLOCK_OFFSET;
  #blockBytes = 0;
  readonly #startedAt = performance.now();

  private constructor(path: string, options: BeginOptions) {
    const { pageCount } = options;
    if (!Number.isSafeInteger(pageCount) || pageCount < 0 || pageCount >= ZERO_PAGE_BLOCK) {
      throw badArgument(`pageCount must be an integer in 0..${ZERO_PAGE_BLOCK - 1}, not ${pageCount}`);
    }
    const stagingBytes = options.stagingBytes ?? DEFAULT_STAGING_BYTES;
    if (
      !Number.isSafeInteger(stagingBytes) ||
      stagingBytes < PAGE_BYTES ||
      stagingBytes % PAGE_BYTES !== 0 ||
      stagingBytes > MAX_BLOCK_PAGES * PAGE_BYTES
    ) {
      throw badArgument(`stagingBytes must be a multiple of ${PAGE_BYTES} in ${PAGE_BYTES}..${MAX_BLOCK_PAGES * PAGE_BYTES}, not ${stagingBytes}`);
    }
    const compression = options.compression ?? 'none';
    if (compression !== 'none' && compression !== 'lz4') throw badArgument(`unknown compression '${String(compression)}'`);
    this.targetPath = resolve(path);
    this.tempPath = tempPathFor(this.targetPath);
    this.pageCount = pageCount;
    this.#compression = compression;
    this.#onProgress = options.onProgress;
    this.#staging = new Uint8Array(stagingBytes);
    this.#stagedGpns = new Uint32Array(stagingBytes / PAGE_BYTES);
    this.#stagedViews = options.pagesStable === true ? new Array<Uint8Array | undefined>(stagingBytes / PAGE_BYTES).fill(undefined) : null;
    this.#blockOfPage = new Uint32Array(pageCount).fill(ZERO_PAGE_BLOCK);
    this.#slotOfPage = new Uint32Array(pageCount);
    this.#blockPages = new Uint32Array(pageCount);
    this.#added = new Uint8Array(pageCount);
    try {
      this.#file = HostFile.open(this.tempPath, 'create');
    } catch (error) {
      throw ioError(`create ${this.tempPath}`, error);
    }
  }

  /** Starts a checkpoint of `pageCount` guest pages that will replace `path` on finish(). */
  static begin(path: string, options: BeginOptions): CheckpointWriter {
    return new CheckpointWriter(path, options);
  }

  /** Pages handed to addPage so far (stored or zero). */
  get pagesAdded(): number {
    return this.#pagesAdded;
  }

  /** Whether the writer is done: finished, aborted, or failed. */
  get closed(): boolean {
    return this.#file === undefined;
  }

  /**
   * Adds guest page `gpn` (its 4 KiB, or null for zero). The bytes are copied before return, so
   * the caller may change the page afterwards, unless the writer was begun with pagesStable.
   * An all-zero page is not stored.
   */
  addPage(gpn: number, page: Uint8Array | null): void {
    this.#openFile();
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= this.pageCount) {
      throw badArgument(`page ${gpn} is outside 0..${this.pageCount - 1}`);
    }
    if (this.#added[gpn] !== 0) throw badArgument(`page ${gpn} was already added`);
    if (page !== null && page.length !== PAGE) throw badArgument(`page ${gpn} is ${page.length} bytes, not ${PAGE}`);
    // Not through #run: that would allocate a closure per page.
    try {
      this.#added[gpn] = 1;
      this.#pagesAdded++;
      if (page === null || isZeroPage(page)) this.#zeroPages++;
      else {
        if (this.#stagedViews !== null) this.#stagedViews[this.#stagedCount] = page;
        else this.#staging.set(page, this.#stagedCount * PAGE);
        this.#stagedGpns[this.#stagedCount++] = gpn;
        if (this.#stagedCount === this.#stagedGpns.length) this.#flushStaging();
      }
      if (this.#pagesAdded % PROGRESS_EVERY_PAGES === 0) this.#onProgress?.(this.#pagesAdded, this.pageCount);
    } catch (error) {
      throw this.#failed(error);
    }
  }

  /**
   * Writes the remaining block, the sections and the header, then makes the file durable and
   * atomically replaces the target. Pages never added are zero pages.
   */
  finish(state: CheckpointState): WriteStats {
    this.#openFile();
    checkState(state);
    const statedPages = (state as Partial<CheckpointContents>).pageCount;
    if (statedPages !== undefined && statedPages !== this.pageCount) {
      throw badArgument(`finish() got contents for ${statedPages} pages, but the writer was begun for ${this.pageCount}`);
    }
    return this.#run(() => {
      this.#flushStaging();
      const file = this.#file!;
      const { bytes: sections, entries } = this.#encodeSections(state);
      const sectionsOffset = alignUp(this.#nextBlockOffset, SECTION_ALIGNMENT);
      for (const entry of entries) entry.offset += sectionsOffset;
      const table = encodeSectionTable(entries);
      const tableOffset = alignUp(sectionsOffset + sections.length, SECTION_ALIGNMENT);
      const fileBytes = tableOffset + table.length;
      const header = encodeHeader({
        formatVersion: FORMAT_VERSION,
        flags: this.#blocks.some((block) => block.kind === 'lz4') ? FLAG_HAS_LZ4 : 0,
        pageBytes: PAGE_BYTES,
        fileBytes,
        sectionTableOffset: tableOffset,
        sectionCount: entries.length,
        sectionTableCrc: checksum(table),
      });
      try {
        file.pwrite(sections, sectionsOffset);
        file.pwrite(table, tableOffset);
        file.pwrite(header, 0); // last: a file without a valid header is never mistaken for a checkpoint
        file.sync();
        file.close();
        this.#file = undefined;
        // Renaming over the previous checkpoint would free its blocks inside the rename (~44 ms
        // for 256 MiB here). Keep it linked under a retired name first, so the rename is cheap,
        // and let it go after the save returns. A crash in between leaves only the retired name,
        // which removeStaleTempFiles deletes.
        const retired = existsSync(this.targetPath) ? retiredPathFor(this.targetPath) : null;
        if (retired !== null) linkSync(this.targetPath, retired);
        renameSync(this.tempPath, this.targetPath);
        syncDirectory(dirname(this.targetPath));
        if (retired !== null) unlink(retired, () => {}); // freed in the background; leftovers are cleaned later
      } catch (error) {
        throw ioError(`write ${this.targetPath}`, error);
      }
      this.#onProgress?.(this.pageCount, this.pageCount);
      const pagesStored = this.#pagesAdded - this.#zeroPages;
      return {
        fileBytes,
        blocks: this.#blocks.length,
        rawBlocks: this.#blocks.filter((block) => block.kind === 'raw').length,
        lz4Blocks: this.#blocks.filter((block) => block.kind === 'lz4').length,
        pagesStored,
        zeroPages: this.pageCount - pagesStored,
        pageBytes: pagesStored * PAGE_BYTES,
        blockBytes: this.#blockBytes,
        compressionRatio: this.#blockBytes === 0 ? 1 : (pagesStored * PAGE_BYTES) / this.#blockBytes,
        seconds: (performance.now() - this.#startedAt) / 1000,
      };
    });
  }

  /** Gives up: closes and deletes the temp file; the target is untouched. Idempotent. */
  abort(): void {
    const file = this.#file;
    this.#file = undefined;
    file?.close();
    try {
      unlinkSync(this.tempPath);
    } catch {
      // Already gone (renamed by finish, or never created).
    }
  }

  #openFile(): HostFile {
    if (this.#file === undefined) throw new CheckpointError('BV_CKPT_CLOSED', 'the checkpoint writer is finished or aborted', 'writer');
    return this.#file;
  }

  /** Runs a step; on any failure the temp file is removed before the error propagates. */
  #run<T>(step: () => T): T {
    try {
      return step();
    } catch (error) {
      throw this.#failed(error);
    }
  }

  /** After a failed step: removes the temp file; returns the error to throw. */
  #failed(error: unknown): unknown {
    this.abort();
    return error instanceof NativeError ? ioError(`write ${this.tempPath}`, error) : error;
  }

  /** Turns the staged pages into one storage block: one write at an aligned offset. */
  #flushStaging(): void {
    const count = this.#stagedCount;
    if (count === 0) return;
    const index = this.#blocks.length;
    const fileOffset = this.#nextBlockOffset;
    const direct = this.#stagedViews !== null && this.#compression === 'none' ? this.#writeRuns(fileOffset) : -1;
    if (direct >= 0) this.#recordBlock(index, fileOffset, 'raw', count * PAGE_BYTES, direct);
    else {
      if (this.#stagedViews !== null) this.#copyStagedViews();
      this.#writeStaged(index, fileOffset);
    }
    this.#stagedViews?.fill(undefined, 0, count);
    this.#stagedCount = 0;
    this.#onProgress?.(this.#pagesAdded, this.pageCount);
  }

  /**
   * With pagesStable: writes the staged pages at `fileOffset` straight from their views, one
   * pwrite per run of views adjacent in the same buffer, and returns the block's CRC; or -1,
   * writing nothing, when the block has more than MAX_DIRECT_RUNS runs.
   */
  #writeRuns(fileOffset: number): number {
    const views = this.#stagedViews!;
    const count = this.#stagedCount;
    // Run r is slots runStarts[r]..runStarts[r + 1]-1. One pass, one `buffer` read per page.
    const runStarts = this.#runStarts;
    let runs = 0;
    let buffer: ArrayBufferLike | null = null;
    let end = -1;
    for (let slot = 0; slot < count; slot++) {
      const view = views[slot]!;
      const viewBuffer = view.buffer;
      if (view.byteOffset !== end || viewBuffer !== buffer) {
        if (runs === MAX_DIRECT_RUNS) return -1;
        runStarts[runs++] = slot;
        buffer = viewBuffer;
      }
      end = view.byteOffset + PAGE;
    }
    runStarts[runs] = count;
    const file = this.#file!;
    let crc = 0;
    let offset = fileOffset;
    for (let r = 0; r < runs; r++) {
      const start = views[runStarts[r]!]!;
      const pages = runStarts[r + 1]! - runStarts[r]!;
      const run = pages === 1 ? start : new Uint8Array(start.buffer, start.byteOffset, pages * PAGE);
      file.pwrite(run, offset);
      crc = checksum(run, crc);
      offset += run.length;
    }
    return crc;
  }

  /** Copies the staged views into the staging buffer (a block to compress or too scattered). */
  #copyStagedViews(): void {
    const views = this.#stagedViews!;
    for (let slot = 0; slot < this.#stagedCount; slot++) this.#staging.set(views[slot]!, slot * PAGE_BYTES);
  }

  /** Writes the staged pages from the staging buffer (lz4-compressed when that pays). */
  #writeStaged(index: number, fileOffset: number): void {
    const count = this.#stagedCount;
    const raw = this.#staging.subarray(0, count * PAGE_BYTES);
    let stored: Uint8Array = raw;
    let kind: BlockEntry['kind'] = 'raw';
    if (this.#compression === 'lz4') {
      // One call for the whole batch: much faster than page by page (MEASURED.md).
      const compressed = lz4.compressSync(Buffer.from(raw.buffer, raw.byteOffset, raw.length));
      if (compressed.length <= raw.length * (1 - LZ4_MIN_SAVING)) {
        stored = compressed;
        kind = 'lz4';
      }
    }
    this.#file!.pwrite(stored, fileOffset);
    this.#recordBlock(index, fileOffset, kind, stored.length, checksum(stored));
  }

  /** Enters the block just written (the staged pages) in the block table and the page index. */
  #recordBlock(index: number, fileOffset: number, kind: BlockEntry['kind'], storedBytes: number, crc: number): void {
    const count = this.#stagedCount;
    const gpns = this.#stagedGpns.subarray(0, count);
    const firstPage = this.#pagesStored();
    this.#blockPages.set(gpns, firstPage);
    this.#blocks.push({ kind, fileOffset, storedBytes, pageCount: count, crc, firstPage, pagesCrc: checksum(u32Bytes(gpns)) });
    for (let slot = 0; slot < count; slot++) {
      const gpn = this.#stagedGpns[slot]!;
      this.#blockOfPage[gpn] = index;
      this.#slotOfPage[gpn] = slot;
    }
    this.#blockBytes += storedBytes;
    this.#nextBlockOffset = alignUp(fileOffset + storedBytes, BLOCK_ALIGNMENT);
  }

  /** Pages in the blocks written so far. */
  #pagesStored(): number {
    const last = this.#blocks[this.#blocks.length - 1];
    return last === undefined ? 0 : last.firstPage + last.pageCount;
  }

  /** All sections back to back (each 8-aligned); entry offsets are relative to the first one. */
  #encodeSections(state: CheckpointState): { bytes: Uint8Array; entries: SectionEntry[] } {
    const payloads: [number, Uint8Array][] = [
      [SectionType.CONFIG, encodeJson(state.config)],
      [SectionType.CPUS, encodeJson(state.cpus)],
      [SectionType.DEVICES, encodeDevices(state.devices)],
      [SectionType.BLOCK_TABLE, encodeBlockTable(this.#blocks)],
      [SectionType.MEMORY_INDEX, encodeMemoryIndex(this.#blockOfPage, this.#slotOfPage)],
      [SectionType.INDEX_CRCS, encodeIndexCrcs(this.#blockOfPage, this.#slotOfPage)],
      [SectionType.BLOCK_PAGES, encodeBlockPages(this.#blockPages.subarray(0, this.#pagesStored()))],
    ];
    const entries: SectionEntry[] = [];
    let length = 0;
    for (const [type, payload] of payloads) {
      const offset = alignUp(length, SECTION_ALIGNMENT);
      entries.push({ type, offset, length: payload.length, crc: checksum(payload) });
      length = offset + payload.length;
    }
    const bytes = new Uint8Array(length);
    payloads.forEach(([, payload], index) => bytes.set(payload, entries[index]!.offset));
    return { bytes, entries };
  }
}

/**
 * Saves a whole checkpoint: contents plus every page 0..pageCount-1 from `pages`, in page order.
 * Replaces `path` atomically; on any error (including one thrown by `pages`) the old file stays.
 */
export function writeCheckpoint(path: string, contents: CheckpointContents, pages: PageSource, options: WriteOptions = {}): WriteStats {
  checkState(contents);
  const writer = CheckpointWriter.begin(path, { ...options, pageCount: contents.pageCount, pagesStable: pages.pagesStable === true });
  try {
    for (let gpn = 0; gpn < contents.pageCount; gpn++) writer.addPage(gpn, pages.page(gpn));
  } catch (error) {
    writer.abort();
    throw error;
  }
  return writer.finish(contents);
}
