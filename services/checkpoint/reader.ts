/**
 * Reads checkpoint files. open() reads and checks the header, the section table and every
 * section (config, CPUs, devices, block table, memory index, page lists) but no memory block.
 * With `lazyIndex` it leaves the per-page and per-block sections in the file and reads them
 * piece by piece, each piece checked against its own CRC, so a lazy restore (T-11) starts and
 * handles its first access in the same time for any memory size. Blocks are read whole, checked
 * (CRC-32C) and decompressed on demand: readBlock() returns every page of the block so the
 * caller can install all of them.
 */
import { isDeepStrictEqual } from 'node:util';
import lz4 from 'lz4-napi';
import { HostFile } from '../../native/index.ts';
import { CheckpointError } from './errors.ts';
import {
  BLOCK_ENTRY_BYTES,
  blockPagesOffset,
  checkBlockPages,
  checkIndexCrcs,
  checkIndexEntry,
  checksum,
  checkSection,
  decodeBlockEntry,
  decodeBlockPageList,
  decodeBlockTable,
  decodeConfig,
  decodeCpus,
  decodeDevices,
  decodeHeader,
  decodeMemoryIndex,
  decodeSectionHead,
  decodeSectionTable,
  FIRST_BLOCK_OFFSET,
  INDEX_REGION_PAGES,
  indexRegionCount,
  indexRegionPages,
  PAGE_BYTES,
  readU32Array,
  regionChecksumError,
  SECTION_ALIGNMENT,
  SECTION_ENTRY_BYTES,
  SECTION_HEAD_BYTES,
  sectionName,
  SectionType,
  ZERO_PAGE_BLOCK,
  type BlockEntry,
  type BlockEntryLimits,
  type BlockKindName,
  type CheckpointContents,
  type Header,
  type MemoryIndex,
  type SectionEntry,
} from './format.ts';

/** One storage block as the block table describes it. */
export interface BlockInfo {
  /** The block's number (its place in the block table). */
  index: number;
  /** Raw or lz4. */
  kind: BlockKindName;
  /** Where the stored bytes start (a multiple of 4096). */
  fileOffset: number;
  /** Stored bytes on disk (pageCount × 4096 for raw blocks). */
  storedBytes: number;
  /** Pages the block holds. */
  pageCount: number;
  /** Guest page numbers of the block's pages, in the order they are stored. */
  gpns: Uint32Array;
}

/** The pages of one block: page `i` is guest page `gpns[i]`, bytes data[i*4096, (i+1)*4096). */
export interface BlockPages {
  /** The block's number. */
  block: number;
  /** The guest page numbers of its pages, in stored order. */
  gpns: Uint32Array;
  /** The pages' bytes, 4096 per page, decompressed and checked. */
  data: Uint8Array;
}

/** The memory index entries of one index region (INDEX_REGION_PAGES guest pages, 4 MiB). */
export interface RegionEntries {
  /** The index region (gpn / 1024). */
  region: number;
  /** Guest page of entry 0. */
  firstGpn: number;
  /** Per page: its block, or ZERO_PAGE_BLOCK (0xFFFFFFFF) for a zero page. */
  blocks: Uint32Array;
  /** Per page: its slot inside the block (0 for a zero page). */
  slots: Uint32Array;
}

/** Guest pages that sit back to back both in the guest and in a raw block: one mmap each. */
export interface PageRun {
  /** The first guest page of the run. */
  firstGpn: number;
  /** Pages in the run. */
  pageCount: number;
  /** File offset of the first page's bytes. */
  fileOffset: number;
}

/** A raw block's place in the file, for mapping it straight into memory (restore "map" mode). */
export interface RawBlockExtent {
  /** File offset of the block's bytes (a multiple of 4096). */
  fileOffset: number;
  /** Its length in bytes (pages × 4096). */
  length: number;
  /** The guest page of each stored page, in stored order. */
  gpns: Uint32Array;
  /** The block cut into runs that are contiguous in the guest too. */
  runs: PageRun[];
}

/** What `snapshot info` shows. */
export interface CheckpointSummary {
  /** The file's format version. */
  formatVersion: number;
  /** The file's size as its header records it. */
  fileBytes: number;
  /** Guest pages the memory index covers (guest RAM / 4096). */
  pageCount: number;
  /** Pages stored in blocks. */
  storedPages: number;
  /** Pages not stored: zero or never touched. */
  zeroPages: number;
  /** Storage blocks. */
  blocks: number;
  /** Blocks stored raw. */
  rawBlocks: number;
  /** Blocks stored lz4-compressed. */
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

function badArgument(message: string): CheckpointError {
  return new CheckpointError('BV_CKPT_BAD_ARGUMENT', message, 'argument');
}

/** The validated structure of a file: everything but the memory blocks. */
interface Structure {
  header: Header;
  contents: CheckpointContents;
  sections: ReadonlyMap<number, SectionEntry>;
  /** What each block table entry is checked against (also holds the stored page count). */
  limits: BlockEntryLimits;
  /** Entries in the block table (from its count, checked against its length). */
  blockCount: number;
  /** The whole block table; with `lazyIndex`, null until summary() needs it (entries are read one by one). */
  blocks: BlockEntry[] | null;
  /** The whole memory index; null with `lazyIndex` (regions and page lists are read one by one). */
  index: MemoryIndex | null;
}

/** Options of CheckpointReader.open. */
export interface OpenOptions {
  /**
   * Leave the memory index, the block table and the page lists in the file: opening then reads
   * only the header, the section table, the small sections and the counts, and each lookup reads
   * (and checks against its own CRC) just the index region, block entry or page list it needs. A
   * lazy restore's start and first access then cost the same for any memory size. The checks that
   * need the whole index (every slot owned by exactly one page) are left to verifyAll().
   */
  lazyIndex?: boolean;
}

/** Index regions a lazy reader keeps decoded (a block's pages usually lie in one or two). */
const REGION_CACHE_SIZE = 8;

/**
 * An open checkpoint file: its validated structure (configuration, vCPU and device states, block
 * table, memory index) and on-demand, checksummed access to its memory blocks. Open it with
 * CheckpointReader.open; close it when done.
 */
export class CheckpointReader {
  /** The file's path. */
  readonly path: string;
  #file: HostFile | undefined;
  #structure: Structure;
  /** Lazy mode: block table entries read so far. */
  readonly #entries = new Map<number, BlockEntry>();
  /** Lazy mode: the most recently read index regions, least recently used first. */
  readonly #regions = new Map<number, RegionEntries>();

  private constructor(path: string, file: HostFile, options: OpenOptions) {
    this.path = path;
    this.#file = file;
    this.#structure = inFile(path, () => readStructure(file, options.lazyIndex === true));
  }

  /**
   * Opens and validates everything except the memory blocks (CheckpointError if damaged); with
   * `lazyIndex`, the index, block table and page lists are read piece by piece on first use.
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

  /** The file's format version (FORMAT_VERSION). */
  get formatVersion(): number {
    return this.#structure.header.formatVersion;
  }

  /** The file's size as its header records it. */
  get fileBytes(): number {
    return this.#structure.header.fileBytes;
  }

  /** Configuration, vCPU and device states, and the number of guest pages. */
  get contents(): CheckpointContents {
    return this.#structure.contents;
  }

  /** Guest pages the memory index covers (guest RAM / 4096). */
  get pageCount(): number {
    return this.#structure.contents.pageCount;
  }

  /** Pages stored in blocks (the count of BLOCK_PAGES: no index needed). */
  get storedPageCount(): number {
    return this.#structure.limits.storedPages;
  }

  /** Storage blocks in the file. */
  get blockCount(): number {
    return this.#structure.blockCount;
  }

  /** Index regions: INDEX_REGION_PAGES (1024) guest pages each, the last one possibly shorter. */
  get regionCount(): number {
    return indexRegionCount(this.pageCount);
  }

  /** Whether close() has run. */
  get closed(): boolean {
    return this.#file === undefined;
  }

  /** The block that holds guest page `gpn`, or -1 for a zero page (not stored). */
  blockOfPage(gpn: number): number {
    this.#checkPage(gpn);
    const index = this.#structure.index;
    const block = index !== null ? index.blockOfPage[gpn]! : this.#regionOf(gpn).blocks[gpn % INDEX_REGION_PAGES]!;
    return block === ZERO_PAGE_BLOCK ? -1 : block;
  }

  /** The position of guest page `gpn` inside its block (0 for a zero page). */
  slotOfPage(gpn: number): number {
    this.#checkPage(gpn);
    const index = this.#structure.index;
    return index !== null ? index.slotOfPage[gpn]! : this.#regionOf(gpn).slots[gpn % INDEX_REGION_PAGES]!;
  }

  /**
   * The index entries of guest pages [region × 1024, region × 1024 + 1024). With `lazyIndex` this
   * reads two 4 KiB slices of the index and one CRC, checks the region against it and checks each
   * entry (an existing block, a slot below its page count); nothing else of the index is read.
   */
  regionEntries(region: number): RegionEntries {
    if (!Number.isInteger(region) || region < 0 || region >= this.regionCount) {
      throw badArgument(`index region ${region} does not exist (the file has ${this.regionCount})`);
    }
    const index = this.#structure.index;
    if (index !== null) {
      const { first, count } = indexRegionPages(region, this.pageCount);
      return { region, firstGpn: first, blocks: index.blockOfPage.subarray(first, first + count), slots: index.slotOfPage.subarray(first, first + count) };
    }
    const cached = this.#regions.get(region);
    if (cached !== undefined) {
      this.#regions.delete(region); // re-insert: most recently used last
      this.#regions.set(region, cached);
      return cached;
    }
    const entries = inFile(this.path, () => this.#readRegion(region));
    if (this.#regions.size >= REGION_CACHE_SIZE) this.#regions.delete(this.#regions.keys().next().value!);
    this.#regions.set(region, entries);
    return entries;
  }

  /** A block's table entry (with `lazyIndex`: only that entry is read, and checked). */
  blockEntry(block: number): Omit<BlockInfo, 'gpns'> {
    return { index: block, ...entryFields(this.#entry(block)) };
  }

  /**
   * The guest pages of a block, in slot order (with `lazyIndex`: only that block's list is read,
   * and checked against the CRC in its entry).
   */
  pagesOfBlock(block: number): Uint32Array {
    const entry = this.#entry(block);
    const index = this.#structure.index;
    if (index !== null) return index.pagesOfBlock[block]!;
    return inFile(this.path, () => {
      const section = this.#structure.sections.get(SectionType.BLOCK_PAGES)!;
      const bytes = readExactly(this.#openFile(), section.offset + blockPagesOffset(entry), entry.pageCount * 4, sectionName(SectionType.BLOCK_PAGES));
      return decodeBlockPageList(bytes, entry, block, this.pageCount);
    });
  }

  /** A block's table entry and the guest pages it holds. */
  blockInfo(block: number): BlockInfo {
    return { ...this.blockEntry(block), gpns: this.pagesOfBlock(block) };
  }

  /**
   * Reads a whole block once: checks its CRC-32C, decompresses it if needed, and returns all its
   * pages. Damage is a CheckpointError whose `where` is `block <n>` (its message starts with
   * the file's path, like every error about a file's contents).
   */
  readBlock(block: number): BlockPages {
    return inFile(this.path, () => this.#readBlock(block));
  }

  #readBlock(block: number): BlockPages {
    const entry = this.#entry(block);
    const where = `block ${block}`;
    const stored = this.#readStored(block, entry, new Uint8Array(entry.storedBytes));
    const gpns = this.pagesOfBlock(block);
    if (entry.kind === 'raw') return { block, gpns, data: stored };
    return { block, gpns, data: decompressBlock(stored, entry.pageCount * PAGE_BYTES, where) };
  }

  /** Reads a block's stored bytes into `stored` (exactly storedBytes long) and checks their CRC. */
  #readStored(block: number, entry: BlockEntry, stored: Uint8Array): Uint8Array {
    const file = this.#openFile();
    const where = `block ${block}`;
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
    return stored;
  }

  /**
   * Like readBlock, into `target` (exactly the block's pages × PAGE_BYTES, e.g. fresh guest
   * frames) instead of a new array: a raw block is read straight into it and its checksum
   * computed there, a compressed one decompressed into it (its page list: pagesOfBlock). After
   * an error `target` holds unchecked bytes: the caller must not use them.
   */
  readBlockInto(block: number, target: Uint8Array): void {
    inFile(this.path, () => {
      const entry = this.#entry(block);
      if (target.length !== entry.pageCount * PAGE_BYTES) throw badArgument(`block ${block} holds ${entry.pageCount} pages, the target is ${target.length} bytes`);
      // Raw: stored bytes are the pages (decodeBlockEntry checked storedBytes), read in place.
      if (entry.kind === 'raw') this.#readStored(block, entry, target);
      else target.set(decompressBlock(this.#readStored(block, entry, new Uint8Array(entry.storedBytes)), target.length, `block ${block}`));
    });
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
    const gpns = this.pagesOfBlock(block);
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
   * Re-reads and checks the header and every section in full (the whole index included, even
   * when opened with `lazyIndex`), then every block; throws a CheckpointError naming the first
   * bad part. `onProgress(blocksDone, blockCount)`.
   */
  verifyAll(onProgress?: (done: number, total: number) => void): void {
    const file = this.#openFile();
    this.#structure = inFile(this.path, () => readStructure(file, false));
    this.#entries.clear();
    this.#regions.clear();
    for (let block = 0; block < this.blockCount; block++) {
      this.verifyBlock(block);
      onProgress?.(block + 1, this.blockCount);
    }
  }

  /** Counts for `snapshot info` (reads the whole block table when opened with `lazyIndex`). */
  summary(): CheckpointSummary {
    const blocks = this.#blocks();
    const storedPages = this.storedPageCount;
    const blockBytes = blocks.reduce((sum, block) => sum + block.storedBytes, 0);
    const lz4Blocks = blocks.filter((block) => block.kind === 'lz4').length;
    return {
      formatVersion: this.formatVersion,
      fileBytes: this.fileBytes,
      pageCount: this.pageCount,
      storedPages,
      zeroPages: this.pageCount - storedPages,
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

  /** The whole block table, read and checked on first use when opened with `lazyIndex`. */
  #blocks(): BlockEntry[] {
    const structure = this.#structure;
    structure.blocks ??= inFile(this.path, () => {
      const entry = structure.sections.get(SectionType.BLOCK_TABLE)!;
      const bytes = readExactly(this.#openFile(), entry.offset, entry.length, sectionName(SectionType.BLOCK_TABLE));
      checkSection(entry, bytes);
      return decodeBlockTable(bytes, structure.limits);
    });
    return structure.blocks;
  }

  #entry(block: number): BlockEntry {
    if (!Number.isInteger(block) || block < 0 || block >= this.blockCount) {
      throw badArgument(`block ${block} does not exist (the file has ${this.blockCount})`);
    }
    const blocks = this.#structure.blocks;
    if (blocks !== null) return blocks[block]!;
    let entry = this.#entries.get(block);
    if (entry === undefined) {
      const structure = this.#structure;
      entry = inFile(this.path, () => {
        const table = structure.sections.get(SectionType.BLOCK_TABLE)!;
        const where = sectionName(SectionType.BLOCK_TABLE);
        const bytes = readExactly(this.#openFile(), table.offset + SECTION_HEAD_BYTES + block * BLOCK_ENTRY_BYTES, BLOCK_ENTRY_BYTES, where);
        return decodeBlockEntry(bytes, block, structure.limits);
      });
      this.#entries.set(block, entry);
    }
    return entry;
  }

  #regionOf(gpn: number): RegionEntries {
    return this.regionEntries(Math.floor(gpn / INDEX_REGION_PAGES));
  }

  /** Reads one index region: its block and slot slices, checked against its CRC, then entry by entry. */
  #readRegion(region: number): RegionEntries {
    const file = this.#openFile();
    const { sections } = this.#structure;
    const pageCount = this.pageCount;
    const { first, count } = indexRegionPages(region, pageCount);
    const indexAt = sections.get(SectionType.MEMORY_INDEX)!.offset + SECTION_HEAD_BYTES;
    const where = sectionName(SectionType.MEMORY_INDEX);
    // The region's block entries, then its slot entries: the bytes its CRC covers, in that order.
    const bytes = new Uint8Array(count * 8);
    readInto(file, bytes.subarray(0, count * 4), indexAt + first * 4, where);
    readInto(file, bytes.subarray(count * 4), indexAt + (pageCount + first) * 4, where);
    const crcAt = sections.get(SectionType.INDEX_CRCS)!.offset + SECTION_HEAD_BYTES + region * 4;
    const crc = readExactly(file, crcAt, 4, sectionName(SectionType.INDEX_CRCS));
    if (checksum(bytes) !== new DataView(crc.buffer).getUint32(0, true)) throw regionChecksumError(region);
    const blocks = readU32Array(bytes, 0, count);
    const slots = readU32Array(bytes, count * 4, count);
    let lastBlock = -1;
    let lastPages = 0;
    const pagesIn = (block: number): number => {
      if (block !== lastBlock) [lastBlock, lastPages] = [block, this.#entry(block).pageCount];
      return lastPages;
    };
    for (let i = 0; i < count; i++) checkIndexEntry(first + i, blocks[i]!, slots[i]!, this.blockCount, pagesIn);
    return { region, firstGpn: first, blocks, slots };
  }

  #checkPage(gpn: number): void {
    if (!Number.isInteger(gpn) || gpn < 0 || gpn >= this.pageCount) throw badArgument(`page ${gpn} is outside 0..${this.pageCount - 1}`);
  }
}

function entryFields(entry: BlockEntry): Omit<BlockInfo, 'index' | 'gpns'> {
  return { kind: entry.kind, fileOffset: entry.fileOffset, storedBytes: entry.storedBytes, pageCount: entry.pageCount };
}

/** Fills `target` from `offset` (the caller checked that it lies inside the file). */
function readInto(file: HostFile, target: Uint8Array, offset: number, where: string): void {
  let read: number;
  try {
    read = file.pread(target, offset);
  } catch (error) {
    throw ioError(`read ${where} of ${file.path}`, error);
  }
  if (read !== target.length) throw new CheckpointError('BV_CKPT_TRUNCATED', `${where}: truncated (the file shrank while it was read)`, where);
}

function readExactly(file: HostFile, offset: number, length: number, where: string): Uint8Array {
  const bytes = new Uint8Array(length);
  readInto(file, bytes, offset, where);
  return bytes;
}

/**
 * Header, section table, every section: all checked; O(sections + pages + blocks). With
 * `lazyIndex` the four per-page/per-block sections are left in the file (only their counts are
 * read): O(sections), whatever the memory size.
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
  const deferred = new Set<number>(lazyIndex ? [SectionType.MEMORY_INDEX, SectionType.BLOCK_TABLE, SectionType.INDEX_CRCS, SectionType.BLOCK_PAGES] : []);
  const fetched = readSections(file, sections, deferred);
  const read = (type: number): Uint8Array => {
    const entry: SectionEntry = sections.get(type)!;
    const bytes = fetched.get(type)!;
    checkSection(entry, bytes);
    return bytes;
  };
  // Check every CRC first, so a damaged section is named as damaged rather than as inconsistent.
  const types = [...sections.keys()].filter((type) => !deferred.has(type));
  const payloads = new Map(types.map((type) => [type, read(type)]));
  // The count at the start of an array section: from its payload, or its first 8 bytes alone.
  const countOf = (type: number, itemBytes: number): number => {
    const entry = sections.get(type)!;
    const head = payloads.get(type) ?? fetched.get(type)!;
    return decodeSectionHead(head, type, entry.length, itemBytes);
  };
  const pageCount = countOf(SectionType.MEMORY_INDEX, 8);
  const blockCount = countOf(SectionType.BLOCK_TABLE, BLOCK_ENTRY_BYTES);
  const storedPages = countOf(SectionType.BLOCK_PAGES, 4);
  const regions = countOf(SectionType.INDEX_CRCS, 4);
  if (regions !== indexRegionCount(pageCount)) {
    const where = sectionName(SectionType.INDEX_CRCS);
    throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: holds ${regions} regions, ${pageCount} pages need ${indexRegionCount(pageCount)}`, where);
  }
  if (storedPages > pageCount) {
    const where = sectionName(SectionType.BLOCK_PAGES);
    throw new CheckpointError('BV_CKPT_CORRUPT', `${where}: lists ${storedPages} stored pages, the guest has ${pageCount}`, where);
  }
  const blocksEnd = Math.min(...[...sections.values()].map((entry) => entry.offset));
  const limits: BlockEntryLimits = { blocksEnd, flags: header.flags, storedPages };
  let blocks: BlockEntry[] | null = null;
  let index: MemoryIndex | null = null;
  if (!lazyIndex) {
    blocks = decodeBlockTable(payloads.get(SectionType.BLOCK_TABLE)!, limits);
    index = decodeMemoryIndex(payloads.get(SectionType.MEMORY_INDEX)!, blocks);
    checkIndexCrcs(payloads.get(SectionType.INDEX_CRCS)!, index);
    checkBlockPages(payloads.get(SectionType.BLOCK_PAGES)!, blocks, index);
  }
  const contents: CheckpointContents = {
    config: decodeConfig(payloads.get(SectionType.CONFIG)!),
    cpus: decodeCpus(payloads.get(SectionType.CPUS)!),
    devices: decodeDevices(payloads.get(SectionType.DEVICES)!),
    pageCount,
  };
  return { header, contents, sections, limits, blockCount, blocks, index };
}

/**
 * Reads every section (unchecked), or only its head (SECTION_HEAD_BYTES) for a `deferred` one:
 * whole sections that follow each other in the file (only alignment padding between them) with
 * one pread, each head on its own (a lazy open reads exactly the index bytes it did before). A
 * lazy open needs 5 reads for the sections instead of 7, a full one 1. The caller has checked
 * every section's range against the file (decodeSectionTable).
 */
function readSections(file: HostFile, sections: ReadonlyMap<number, SectionEntry>, deferred: ReadonlySet<number>): Map<number, Uint8Array> {
  const wanted = [...sections].map(([type, entry]) => ({ type, offset: entry.offset, length: deferred.has(type) ? Math.min(entry.length, SECTION_HEAD_BYTES) : entry.length, whole: !deferred.has(type) }));
  wanted.sort((a, b) => a.offset - b.offset);
  const fetched = new Map<number, Uint8Array>();
  for (let first = 0; first < wanted.length; ) {
    const start = wanted[first]!.offset;
    let end = start + wanted[first]!.length;
    let next = first + 1;
    for (; next < wanted.length && wanted[next - 1]!.whole && wanted[next]!.whole && wanted[next]!.offset >= end && wanted[next]!.offset - end < SECTION_ALIGNMENT; next++) {
      end = wanted[next]!.offset + wanted[next]!.length;
    }
    const span = readExactly(file, start, end - start, sectionName(wanted[first]!.type));
    for (; first < next; first++) {
      const { type, offset, length } = wanted[first]!;
      fetched.set(type, span.subarray(offset - start, offset - start + length));
    }
  }
  return fetched;
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

/** A run of consecutive guest pages. */
export interface PageRange {
  /** The first guest page number. */
  first: number;
  /** Pages in the run. */
  count: number;
}

/** What diffCheckpoints found. */
export interface CheckpointDiff {
  /** Guest pages of the first file. */
  pageCountA: number;
  /** Guest pages of the second file. */
  pageCountB: number;
  /** Guest pages whose bytes differ (a page beyond one file's end counts as zero there). */
  differingPages: number;
  /** The differing pages as runs, in page order. */
  ranges: PageRange[];
  /** Whether the CONFIG sections are equal. */
  configEqual: boolean;
  /** Whether the vCPU states are equal. */
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
