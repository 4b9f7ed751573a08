/**
 * Reads checkpoint files. open() reads and checks the header, the section table and every
 * section (config, CPUs, devices, block table, memory index) but no memory block, so a lazy
 * restore (T-11) can start the VM at once; its cost grows with the number of pages and blocks,
 * never with the bytes of memory. Blocks are read whole, checked (CRC-32) and decompressed on
 * demand: readBlock() returns every page of the block so the caller can install all of them.
 */
import { isDeepStrictEqual } from 'node:util';
import lz4 from 'lz4-napi';
import { HostFile } from '../../native/index.ts';
import { CheckpointError } from './errors.ts';
import {
  BLOCK_ENTRY_BYTES,
  checksum,
  checkSection,
  decodeBlockTable,
  decodeConfig,
  decodeCpus,
  decodeDevices,
  decodeHeader,
  decodeMemoryIndex,
  decodeSectionTable,
  FIRST_BLOCK_OFFSET,
  PAGE_BYTES,
  SECTION_ENTRY_BYTES,
  sectionName,
  SectionType,
  ZERO_PAGE_BLOCK,
  type BlockEntry,
  type BlockKindName,
  type CheckpointContents,
  type Header,
  type MemoryIndex,
  type SectionEntry,
} from './format.ts';

/** One storage block as the block table describes it. */
export interface BlockInfo {
  index: number;
  kind: BlockKindName;
  /** Where the stored bytes start (a multiple of 4096). */
  fileOffset: number;
  /** Stored bytes on disk (pageCount × 4096 for raw blocks). */
  storedBytes: number;
  pageCount: number;
  /** Guest page numbers of the block's pages, in the order they are stored. */
  gpns: Uint32Array;
}

/** The pages of one block: page `i` is guest page `gpns[i]`, bytes data[i*4096, (i+1)*4096). */
export interface BlockPages {
  block: number;
  gpns: Uint32Array;
  data: Uint8Array;
}

/** Guest pages that sit back to back both in the guest and in a raw block: one mmap each. */
export interface PageRun {
  firstGpn: number;
  pageCount: number;
  fileOffset: number;
}

/** A raw block's place in the file, for mapping it straight into memory (restore "map" mode). */
export interface RawBlockExtent {
  fileOffset: number;
  length: number;
  gpns: Uint32Array;
  runs: PageRun[];
}

/** What `snapshot info` shows. */
export interface CheckpointSummary {
  formatVersion: number;
  fileBytes: number;
  pageCount: number;
  storedPages: number;
  zeroPages: number;
  blocks: number;
  rawBlocks: number;
  lz4Blocks: number;
  /** Bytes of the stored pages / bytes their blocks take (1 when nothing is stored). */
  compressionRatio: number;
}

/** Puts the file name in front of a CheckpointError's message (I/O errors already name it). */
function inFile<T>(path: string, step: () => T): T {
  try {
    return step();
  } catch (error) {
    if (error instanceof CheckpointError && error.code !== 'BV_CKPT_IO' && error.where !== 'argument' && !error.message.startsWith(`${path}: `)) {
      throw new CheckpointError(error.code, `${path}: ${error.message}`, error.where, { cause: error.cause });
    }
    throw error;
  }
}

function ioError(action: string, error: unknown): CheckpointError {
  const detail = error instanceof Error ? error.message : String(error);
  return new CheckpointError('BV_CKPT_IO', `cannot ${action}: ${detail}`, '', { cause: error });
}

/** The validated structure of a file: everything but the memory blocks. */
interface Structure {
  header: Header;
  contents: CheckpointContents;
  /** Null until first needed when the file was opened with `lazyIndex`. */
  blocks: BlockEntry[] | null;
  /** Entries in the block table (known without decoding it). */
  blockCount: number;
  blockTableEntry: SectionEntry;
  blocksEnd: number;
  headerFlags: number;
  /** Null until first needed when the file was opened with `lazyIndex`. */
  index: MemoryIndex | null;
  /** Where the memory index lies, for a deferred load. */
  indexEntry: SectionEntry;
}

export interface OpenOptions {
  /**
   * Defer reading and checking the per-page memory index until a page is first looked up, so
   * opening costs O(sections + blocks), not O(guest pages) (lazy restore of a large VM). Damage
   * in the index is then reported at that first lookup instead of at open.
   */
  lazyIndex?: boolean;
}

export class CheckpointReader {
  readonly path: string;
  #file: HostFile | undefined;
  #structure: Structure;

  private constructor(path: string, file: HostFile, options: OpenOptions) {
    this.path = path;
    this.#file = file;
    this.#structure = inFile(path, () => readStructure(file, options.lazyIndex === true));
  }

  /** The block table, read and checked on first use when opened with `lazyIndex`. */
  #blocks(): BlockEntry[] {
    const structure = this.#structure;
    if (structure.blocks === null) {
      const file = this.#openFile();
      structure.blocks = inFile(this.path, () => {
        const entry = structure.blockTableEntry;
        const bytes = readExactly(file, entry.offset, entry.length, sectionName(SectionType.BLOCK_TABLE));
        checkSection(entry, bytes);
        return decodeBlockTable(bytes, structure.blocksEnd, structure.headerFlags);
      });
    }
    return structure.blocks!;
  }

  /** The memory index, read and checked on first use when opened with `lazyIndex`. */
  #index(): MemoryIndex {
    const structure = this.#structure;
    if (structure.index === null) {
      const file = this.#openFile();
      structure.index = inFile(this.path, () => {
        const entry = structure.indexEntry;
        const bytes = readExactly(file, entry.offset, entry.length, sectionName(SectionType.MEMORY_INDEX));
        checkSection(entry, bytes);
        const index = decodeMemoryIndex(bytes, this.#blocks());
        if (index.pageCount !== structure.contents.pageCount) {
          throw new CheckpointError('BV_CKPT_CORRUPT', `${sectionName(SectionType.MEMORY_INDEX)}: holds ${index.pageCount} pages, its count said ${structure.contents.pageCount}`, sectionName(SectionType.MEMORY_INDEX));
        }
        return index;
      });
    }
    return structure.index!;
  }

  /**
   * Opens and validates everything except the memory blocks (CheckpointError if damaged); with
   * `lazyIndex`, the per-page index is also left for its first use.
   */
  static open(path: string, options: OpenOptions = {}): CheckpointReader {
    let file: HostFile;
    try {
      file = HostFile.open(path, 'r');
    } catch (error) {
      throw ioError('open checkpoint', error);
    }
    try {
      return new CheckpointReader(path, file, options);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  get formatVersion(): number {
    return this.#structure.header.formatVersion;
  }

  get fileBytes(): number {
    return this.#structure.header.fileBytes;
  }

  /** Configuration, vCPU and device states, and the number of guest pages. */
  get contents(): CheckpointContents {
    return this.#structure.contents;
  }

  get pageCount(): number {
    return this.#structure.contents.pageCount;
  }

  /** Pages stored in blocks (from the block table: no index needed). */
  get storedPageCount(): number {
    return this.#blocks().reduce((sum, block) => sum + block.pageCount, 0);
  }

  get blockCount(): number {
    return this.#structure.blockCount;
  }

  get closed(): boolean {
    return this.#file === undefined;
  }

  /** The block that holds guest page `gpn`, or -1 for a zero page (not stored). */
  blockOfPage(gpn: number): number {
    this.#checkPage(gpn);
    const block = this.#index().blockOfPage[gpn]!;
    return block === ZERO_PAGE_BLOCK ? -1 : block;
  }

  /** The position of guest page `gpn` inside its block (0 for a zero page). */
  slotOfPage(gpn: number): number {
    this.#checkPage(gpn);
    return this.#index().slotOfPage[gpn]!;
  }

  /** A block's table entry and the guest pages it holds (no file access). */
  blockInfo(block: number): BlockInfo {
    const entry = this.#entry(block);
    return { index: block, ...entryFields(entry), gpns: this.#index().pagesOfBlock[block]! };
  }

  /**
   * Reads a whole block once: checks its CRC-32, decompresses it if needed, and returns all its
   * pages. Damage is a CheckpointError whose `where` is `block <n>` (its message starts with
   * the file's path, like every error about a file's contents).
   */
  readBlock(block: number): BlockPages {
    return inFile(this.path, () => this.#readBlock(block));
  }

  #readBlock(block: number): BlockPages {
    const entry = this.#entry(block);
    const file = this.#openFile();
    const where = `block ${block}`;
    const stored = new Uint8Array(entry.storedBytes);
    let read: number;
    try {
      read = file.pread(stored, entry.fileOffset);
    } catch (error) {
      throw ioError(`read ${where} of ${this.path}`, error);
    }
    if (read !== entry.storedBytes) {
      throw new CheckpointError('BV_CKPT_TRUNCATED', `${where}: truncated (the file shrank after it was opened)`, where);
    }
    if (checksum(stored) !== entry.crc) {
      throw new CheckpointError('BV_CKPT_CHECKSUM', `${where}: checksum mismatch (the block is damaged)`, where);
    }
    const gpns = this.#index().pagesOfBlock[block]!;
    if (entry.kind === 'raw') return { block, gpns, data: stored };
    return { block, gpns, data: decompressBlock(stored, entry.pageCount * PAGE_BYTES, where) };
  }

  /** The bytes of guest page `gpn` (zeros for a zero page). Reads its whole block: prefer readBlock. */
  readPage(gpn: number): Uint8Array {
    const block = this.blockOfPage(gpn);
    if (block < 0) return new Uint8Array(PAGE_BYTES);
    const slot = this.slotOfPage(gpn);
    return this.readBlock(block).data.slice(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES);
  }

  /**
   * Where a raw block's pages lie in the file (4 KiB-aligned, whole pages back to back), or null
   * for a compressed block. Map only blocks you have verified (verifyBlock): mmap skips the CRC.
   */
  rawBlockExtent(block: number): RawBlockExtent | null {
    const entry = this.#entry(block);
    if (entry.kind !== 'raw') return null;
    const gpns = this.#index().pagesOfBlock[block]!;
    const runs: PageRun[] = [];
    for (let slot = 0; slot < gpns.length; slot++) {
      const last = runs[runs.length - 1];
      if (last !== undefined && last.firstGpn + last.pageCount === gpns[slot]) last.pageCount++;
      else runs.push({ firstGpn: gpns[slot]!, pageCount: 1, fileOffset: entry.fileOffset + slot * PAGE_BYTES });
    }
    return { fileOffset: entry.fileOffset, length: entry.storedBytes, gpns, runs };
  }

  /** Every block in file order, each read and checked once (eager restore, diff). */
  *blocks(): Generator<BlockPages> {
    for (let block = 0; block < this.blockCount; block++) yield this.readBlock(block);
  }

  /** Checks one block's CRC (and that it decompresses) without keeping its pages. */
  verifyBlock(block: number): void {
    this.readBlock(block);
  }

  /**
   * Re-reads and checks the header and every section, then every block; throws a
   * CheckpointError naming the first bad part. `onProgress(blocksDone, blockCount)`.
   */
  verifyAll(onProgress?: (done: number, total: number) => void): void {
    const file = this.#openFile();
    this.#structure = inFile(this.path, () => readStructure(file, false));
    for (let block = 0; block < this.blockCount; block++) {
      this.verifyBlock(block);
      onProgress?.(block + 1, this.blockCount);
    }
  }

  summary(): CheckpointSummary {
    const blocks = this.#blocks();
    const index = { pageCount: this.pageCount };
    const storedPages = blocks.reduce((sum, block) => sum + block.pageCount, 0);
    const blockBytes = blocks.reduce((sum, block) => sum + block.storedBytes, 0);
    const lz4Blocks = blocks.filter((block) => block.kind === 'lz4').length;
    return {
      formatVersion: this.formatVersion,
      fileBytes: this.fileBytes,
      pageCount: index.pageCount,
      storedPages,
      zeroPages: index.pageCount - storedPages,
      blocks: blocks.length,
      rawBlocks: blocks.length - lz4Blocks,
      lz4Blocks,
      compressionRatio: blockBytes === 0 ? 1 : (storedPages * PAGE_BYTES) / blockBytes,
    };
  }

  /** Closes the file. Idempotent; afterwards block reads throw BV_CKPT_CLOSED. */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
  }

  #openFile(): HostFile {
    if (this.#file === undefined) throw new CheckpointError('BV_CKPT_CLOSED', `the checkpoint reader for ${this.path} is closed`, 'reader');
    return this.#file;
  }

  #entry(block: number): BlockEntry {
    const entry = Number.isInteger(block) ? this.#blocks()[block] : undefined;
    if (entry === undefined) {
      throw new CheckpointError('BV_CKPT_BAD_ARGUMENT', `block ${block} does not exist (the file has ${this.blockCount})`, 'argument');
    }
    return entry;
  }

  #checkPage(gpn: number): void {
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= this.pageCount) {
      throw new CheckpointError('BV_CKPT_BAD_ARGUMENT', `page ${gpn} is outside 0..${this.pageCount - 1}`, 'argument');
    }
  }
}

function entryFields(entry: BlockEntry): Omit<BlockInfo, 'index' | 'gpns'> {
  return { kind: entry.kind, fileOffset: entry.fileOffset, storedBytes: entry.storedBytes, pageCount: entry.pageCount };
}

/** Reads exactly `length` bytes at `offset` (the caller checked that they lie inside the file). */
function readExactly(file: HostFile, offset: number, length: number, where: string): Uint8Array {
  const bytes = new Uint8Array(length);
  let read: number;
  try {
    read = file.pread(bytes, offset);
  } catch (error) {
    throw ioError(`read ${where} of ${file.path}`, error);
  }
  if (read !== length) throw new CheckpointError('BV_CKPT_TRUNCATED', `${where}: truncated (the file shrank while it was read)`, where);
  return bytes;
}

/**
 * Header, section table, every section: all checked; O(sections + pages + blocks). With
 * `lazyIndex` the memory index is left out (only its page count is read): O(sections + blocks).
 */
function readStructure(file: HostFile, lazyIndex: boolean): Structure {
  let fileBytes: number;
  try {
    fileBytes = file.size;
  } catch (error) {
    throw ioError(`stat ${file.path}`, error);
  }
  const header = decodeHeader(readExactly(file, 0, Math.min(fileBytes, FIRST_BLOCK_OFFSET), 'header'), fileBytes);
  const tableBytes = readExactly(file, header.sectionTableOffset, header.sectionCount * SECTION_ENTRY_BYTES, 'section table');
  const sections = decodeSectionTable(tableBytes, header);
  const read = (type: number): Uint8Array => {
    const entry: SectionEntry = sections.get(type)!;
    const bytes = readExactly(file, entry.offset, entry.length, sectionName(type));
    checkSection(entry, bytes);
    return bytes;
  };
  // Check every CRC first, so a damaged section is named as damaged rather than as inconsistent.
  const deferred = new Set<number>(lazyIndex ? [SectionType.MEMORY_INDEX, SectionType.BLOCK_TABLE] : []);
  const types = [...sections.keys()].filter((type) => !deferred.has(type));
  const payloads = new Map(types.map((type) => [type, read(type)]));
  const blocksEnd = Math.min(...[...sections.values()].map((entry) => entry.offset));
  const blockTableEntry = sections.get(SectionType.BLOCK_TABLE)!;
  const blocks = lazyIndex ? null : decodeBlockTable(payloads.get(SectionType.BLOCK_TABLE)!, blocksEnd, header.flags);
  const blockCount = blocks?.length ?? readBlockTableCount(file, blockTableEntry);
  const indexEntry = sections.get(SectionType.MEMORY_INDEX)!;
  const index = blocks === null ? null : decodeMemoryIndex(payloads.get(SectionType.MEMORY_INDEX)!, blocks);
  const pageCount = index?.pageCount ?? readIndexPageCount(file, indexEntry);
  const contents: CheckpointContents = {
    config: decodeConfig(payloads.get(SectionType.CONFIG)!),
    cpus: decodeCpus(payloads.get(SectionType.CPUS)!),
    devices: decodeDevices(payloads.get(SectionType.DEVICES)!),
    pageCount,
  };
  return { header, contents, blocks, blockCount, blockTableEntry, blocksEnd, headerFlags: header.flags, index, indexEntry };
}

/** The entry count at the start of the block table (checked in full when the table is read). */
function readBlockTableCount(file: HostFile, entry: SectionEntry): number {
  const where = sectionName(SectionType.BLOCK_TABLE);
  if (entry.length < 8) throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: is shorter than its count`, where);
  const bytes = readExactly(file, entry.offset, 8, where);
  const count = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(0, true);
  if (entry.length !== 8 + count * BLOCK_ENTRY_BYTES) throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: length ${entry.length} does not hold ${count} entries`, where);
  return count;
}

/** The page count at the start of the memory index (checked in full when the index is read). */
function readIndexPageCount(file: HostFile, entry: SectionEntry): number {
  const where = sectionName(SectionType.MEMORY_INDEX);
  if (entry.length < 8) throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: is shorter than its count`, where);
  const bytes = readExactly(file, entry.offset, 8, where);
  const pageCount = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(0, true);
  if (entry.length !== 8 + pageCount * 8) throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: length ${entry.length} does not hold ${pageCount} pages`, where);
  return pageCount;
}

/** lz4-napi's block format: u32 uncompressed size, then the lz4 block. */
function decompressBlock(stored: Uint8Array, expectedBytes: number, where: string): Uint8Array {
  const sizePrefix = new DataView(stored.buffer, stored.byteOffset, 4).getUint32(0, true);
  if (sizePrefix !== expectedBytes) {
    throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: lz4 data says ${sizePrefix} bytes, the block holds ${expectedBytes}`, where);
  }
  let data: Uint8Array;
  try {
    data = lz4.uncompressSync(stored);
  } catch (error) {
    throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: lz4 data is invalid (${(error as Error).message})`, where, { cause: error });
  }
  if (data.length !== expectedBytes) {
    throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: decompressed to ${data.length} bytes instead of ${expectedBytes}`, where);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Diff

export interface PageRange {
  first: number;
  count: number;
}

export interface CheckpointDiff {
  pageCountA: number;
  pageCountB: number;
  /** Guest pages whose bytes differ (a page beyond one file's end counts as zero there). */
  differingPages: number;
  ranges: PageRange[];
  configEqual: boolean;
  cpusEqual: boolean;
  /** Device names whose version or state differ, or that exist in one file only (sorted). */
  devicesDiffering: string[];
  /** True when nothing at all differs. */
  equal: boolean;
}

/**
 * Gives pages by number with a bounded cache of decoded blocks (least recently used goes first),
 * so walking pages in order decodes each block once when blocks hold ascending pages.
 */
class PageCache {
  readonly #cache = new Map<number, BlockPages>();
  #cachedBytes = 0;

  constructor(
    private readonly reader: CheckpointReader,
    private readonly budgetBytes: number,
  ) {}

  /** The page's bytes, or null for a zero page (or one past the file's end). */
  page(gpn: number): Uint8Array | null {
    if (gpn >= this.reader.pageCount) return null;
    const block = this.reader.blockOfPage(gpn);
    if (block < 0) return null;
    let pages = this.#cache.get(block);
    if (pages === undefined) {
      pages = this.reader.readBlock(block);
      this.#cache.set(block, pages);
      this.#cachedBytes += pages.data.length;
      for (const [oldBlock, old] of this.#cache) {
        if (this.#cachedBytes <= this.budgetBytes || oldBlock === block) break;
        this.#cache.delete(oldBlock);
        this.#cachedBytes -= old.data.length;
      }
    } else {
      this.#cache.delete(block); // re-insert: most recently used last
      this.#cache.set(block, pages);
    }
    const slot = this.reader.slotOfPage(gpn);
    return pages.data.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES);
  }
}

function samePage(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null && b === null) return true;
  if (a === null || b === null) return (a ?? b)!.every((byte) => byte === 0);
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/**
 * Compares two checkpoints exactly, page by page (bytes, not hashes). Cost: each block decoded
 * once when both files hold ascending pages per block (what writeCheckpoint produces); files
 * written in scattered order may decode blocks more than once once `cacheBytes` is exceeded.
 */
export function diffCheckpoints(
  a: CheckpointReader,
  b: CheckpointReader,
  options: { cacheBytes?: number; onProgress?: (done: number, total: number) => void } = {},
): CheckpointDiff {
  const budget = options.cacheBytes ?? 128 << 20;
  const pagesA = new PageCache(a, budget);
  const pagesB = new PageCache(b, budget);
  const total = Math.max(a.pageCount, b.pageCount);
  const ranges: PageRange[] = [];
  let differingPages = 0;
  for (let gpn = 0; gpn < total; gpn++) {
    if (!samePage(pagesA.page(gpn), pagesB.page(gpn))) {
      differingPages++;
      const last = ranges[ranges.length - 1];
      if (last !== undefined && last.first + last.count === gpn) last.count++;
      else ranges.push({ first: gpn, count: 1 });
    }
    if ((gpn + 1) % 4096 === 0) options.onProgress?.(gpn + 1, total);
  }
  options.onProgress?.(total, total);
  const devicesA = a.contents.devices;
  const devicesB = b.contents.devices;
  const devicesDiffering = [...new Set([...Object.keys(devicesA), ...Object.keys(devicesB)])]
    .filter((name) => !isDeepStrictEqual(devicesA[name], devicesB[name]))
    .sort();
  const configEqual = isDeepStrictEqual(a.contents.config, b.contents.config);
  const cpusEqual = isDeepStrictEqual(a.contents.cpus, b.contents.cpus);
  return {
    pageCountA: a.pageCount,
    pageCountB: b.pageCount,
    differingPages,
    ranges,
    configEqual,
    cpusEqual,
    devicesDiffering,
    equal: differingPages === 0 && configEqual && cpusEqual && devicesDiffering.length === 0 && a.pageCount === b.pageCount,
  };
}
