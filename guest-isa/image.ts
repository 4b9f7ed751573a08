/**
 * The `.bvx` guest image file format (SPEC.md "Guest image format"): encodeImage serialises a
 * GuestImage, parseImage checks a file completely and rebuilds it, loadImageFile reads one from
 * disk. Every problem with a file or an image is an ImageError with a stable BV_IMAGE_* code.
 *
 * Layout (little-endian): 32-byte header, segment table (24 bytes per segment), symbol table
 * (12 bytes per symbol), string table (NUL-terminated UTF-8 names), segment data (each segment's
 * bytes 4-aligned). The header's CRC-32 covers the whole file with the CRC field itself zero.
 */
import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { BvError } from './errors.ts';
import { SegmentFlag, type GuestImage, type ImageSegment, type ImageSymbol } from './image-types.ts';

/** The first 4 bytes of a `.bvx` file. */
export const IMAGE_MAGIC: readonly number[] = [0x42, 0x56, 0x58, 0x1a]; // "BVX\x1a"
/** The image format version this code writes and reads. */
export const IMAGE_VERSION = 1;
/** Bytes in the file header. */
export const IMAGE_HEADER_BYTES = 32;
/** Bytes per segment table entry. */
export const SEGMENT_ENTRY_BYTES = 24;
/** Bytes per symbol table entry. */
export const SYMBOL_ENTRY_BYTES = 12;
/** Most segments an image may have. */
export const MAX_SEGMENTS = 256;
/** Most symbols an image may have. */
export const MAX_SYMBOLS = 65536;
/** Name offset meaning "this segment has no name". */
export const NO_NAME = 0xffff_ffff;
/**
 * Longest name in bytes (UTF-8, without the NUL). Not in SPEC.md's list: it bounds the work and
 * memory a hostile file can demand (65536 symbols each naming a long suffix of one huge string).
 */
export const MAX_NAME_BYTES = 1024;
/** Symbol flag bit 0: exported with `.global`. */
export const SYMBOL_FLAG_GLOBAL = 1;

const HeaderOffset = {
  MAGIC: 0,
  VERSION: 4,
  HEADER_BYTES: 6,
  ENTRY: 8,
  SEGMENT_COUNT: 12,
  SYMBOL_COUNT: 16,
  STRING_BYTES: 20,
  TOTAL_BYTES: 24,
  CRC: 28,
} as const;

const ALL_SEGMENT_FLAGS = SegmentFlag.R | SegmentFlag.W | SegmentFlag.X;
const ADDRESS_SPACE_BYTES = 2 ** 32;

/** Stable codes of ImageError (docs/image-format.md says when each is raised). */
export type ImageErrorCode =
  | 'BV_IMAGE_BAD_MAGIC'
  | 'BV_IMAGE_UNSUPPORTED_VERSION'
  | 'BV_IMAGE_BAD_HEADER'
  | 'BV_IMAGE_TRUNCATED'
  | 'BV_IMAGE_CHECKSUM'
  | 'BV_IMAGE_BAD_SEGMENT'
  | 'BV_IMAGE_OVERLAP'
  | 'BV_IMAGE_BAD_ENTRY'
  | 'BV_IMAGE_BAD_SYMBOL'
  | 'BV_IMAGE_TOO_LARGE'
  | 'BV_IMAGE_IO';

/** A `.bvx` image that cannot be encoded, parsed or loaded from a file (see ImageErrorCode). */
export class ImageError extends BvError {
  /** One of ImageErrorCode. */
  declare readonly code: ImageErrorCode;
  constructor(code: ImageErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

const hex = (value: number): string => `0x${value.toString(16)}`;

function segmentLabel(index: number, name: string | undefined): string {
  return `segment ${index}${name ? ` (${name})` : ''}`;
}

function symbolLabel(index: number, name: string): string {
  return `symbol ${index}${name ? ` (${name})` : ''}`;
}

function isU32(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff;
}

// ---------------------------------------------------------------------------------------------
// Rules shared by encodeImage (checking an in-memory image) and parseImage (checking a file).

/** What the layout rules need to know about a segment, whichever side it comes from. */
interface SegmentFacts {
  index: number;
  name: string | undefined;
  gpa: number;
  fileBytes: number;
  memBytes: number;
  flags: number;
}

function checkSegment(segment: SegmentFacts): void {
  const label = segmentLabel(segment.index, segment.name);
  if ((segment.flags & ~ALL_SEGMENT_FLAGS) !== 0) {
    throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: flags ${hex(segment.flags)} have bits other than R (1), W (2), X (4)`);
  }
  if (segment.fileBytes > segment.memBytes) {
    throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: file bytes ${hex(segment.fileBytes)} exceed memory bytes ${hex(segment.memBytes)}`);
  }
  if (segment.gpa % 4 !== 0) {
    throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: gpa ${hex(segment.gpa)} is not 4-byte aligned`);
  }
  if (segment.gpa + segment.memBytes > ADDRESS_SPACE_BYTES) {
    throw new ImageError(
      'BV_IMAGE_BAD_SEGMENT',
      `${label}: gpa ${hex(segment.gpa)} + memory bytes ${hex(segment.memBytes)} runs past the 4 GiB address space`,
    );
  }
}

/** Throws BV_IMAGE_OVERLAP if two of the half-open ranges intersect (empty ranges never do). */
function checkNoOverlap(ranges: { start: number; length: number; label: string }[], what: string): void {
  const sorted = ranges.filter((range) => range.length > 0).sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1]!;
    const current = sorted[i]!;
    if (current.start < previous.start + previous.length) {
      throw new ImageError(
        'BV_IMAGE_OVERLAP',
        `${previous.label} and ${current.label} overlap in ${what}: ` +
          `[${hex(previous.start)}, ${hex(previous.start + previous.length)}) and [${hex(current.start)}, ${hex(current.start + current.length)})`,
      );
    }
  }
}

function checkSegments(segments: readonly SegmentFacts[]): void {
  if (segments.length > MAX_SEGMENTS) {
    throw new ImageError('BV_IMAGE_TOO_LARGE', `${segments.length} segments exceed the limit of ${MAX_SEGMENTS}`);
  }
  for (const segment of segments) checkSegment(segment);
  checkNoOverlap(
    segments.map((segment) => ({ start: segment.gpa, length: segment.memBytes, label: segmentLabel(segment.index, segment.name) })),
    'guest memory',
  );
}

function checkSymbolCount(count: number): void {
  if (count > MAX_SYMBOLS) throw new ImageError('BV_IMAGE_TOO_LARGE', `${count} symbols exceed the limit of ${MAX_SYMBOLS}`);
}

function checkEntry(entry: number, segments: readonly SegmentFacts[]): void {
  if (entry % 4 !== 0) throw new ImageError('BV_IMAGE_BAD_ENTRY', `entry ${hex(entry)} is not 4-byte aligned`);
  const inside = segments.find((segment) => entry >= segment.gpa && entry < segment.gpa + segment.memBytes);
  if (!inside) throw new ImageError('BV_IMAGE_BAD_ENTRY', `entry ${hex(entry)} is not inside any segment`);
  if ((inside.flags & SegmentFlag.X) === 0) {
    throw new ImageError('BV_IMAGE_BAD_ENTRY', `entry ${hex(entry)} is inside ${segmentLabel(inside.index, inside.name)}, which is not executable`);
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding.

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** A name must survive UTF-8 encoding unchanged and fit a NUL-terminated string. */
function nameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return `name is not a string`;
  if (name.includes('\0')) return `name ${JSON.stringify(name)} contains a NUL character`;
  const encoded = utf8Encoder.encode(name);
  if (utf8Decoder.decode(encoded) !== name) return `name ${JSON.stringify(name)} is not well-formed Unicode`;
  if (encoded.length > MAX_NAME_BYTES) return `name is ${encoded.length} bytes long, more than the limit of ${MAX_NAME_BYTES}`;
  return undefined;
}

/**
 * Checks an in-memory image against every rule the file format imposes. Symbol values may be
 * given as u32 or as negative int32 (from `.equ` constants); the file stores them as u32.
 */
export function validateImage(image: GuestImage): void {
  if (!isU32(image.entry)) throw new ImageError('BV_IMAGE_BAD_ENTRY', `entry ${String(image.entry)} is not a u32 address`);
  const facts = image.segments.map((segment, index): SegmentFacts => {
    const label = segmentLabel(index, typeof segment.name === 'string' ? segment.name : undefined);
    if (segment.name !== undefined) {
      const problem = nameProblem(segment.name);
      if (problem) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `segment ${index}: ${problem}`);
    }
    if (!(segment.data instanceof Uint8Array)) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: data is not a Uint8Array`);
    if (!isU32(segment.gpa)) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: gpa ${String(segment.gpa)} is not a u32 address`);
    if (!isU32(segment.memSize)) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: memory bytes ${String(segment.memSize)} is not a u32`);
    if (!isU32(segment.flags)) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: flags ${String(segment.flags)} is not a u32`);
    return { index, name: segment.name, gpa: segment.gpa, fileBytes: segment.data.length, memBytes: segment.memSize, flags: segment.flags };
  });
  checkSegments(facts);
  checkSymbolCount(image.symbols.length);
  image.symbols.forEach((symbol, index) => {
    const problem = nameProblem(symbol.name);
    if (problem) throw new ImageError('BV_IMAGE_BAD_SYMBOL', `symbol ${index}: ${problem}`);
    if (symbol.name === '') throw new ImageError('BV_IMAGE_BAD_SYMBOL', `symbol ${index}: name is empty`);
    const value: unknown = symbol.value;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < -(2 ** 31) || value > 0xffff_ffff) {
      throw new ImageError('BV_IMAGE_BAD_SYMBOL', `${symbolLabel(index, symbol.name)}: value ${String(value)} does not fit 32 bits`);
    }
    if (typeof symbol.global !== 'boolean') throw new ImageError('BV_IMAGE_BAD_SYMBOL', `${symbolLabel(index, symbol.name)}: global is not a boolean`);
  });
  checkEntry(image.entry, facts);
}

/** Builds the string table, sharing one copy of each distinct name. */
class StringTableBuilder {
  private readonly offsets = new Map<string, number>();
  private readonly chunks: Uint8Array[] = [];
  byteLength = 0;

  add(name: string): number {
    const known = this.offsets.get(name);
    if (known !== undefined) return known;
    const offset = this.byteLength;
    const encoded = utf8Encoder.encode(name);
    this.chunks.push(encoded, new Uint8Array(1));
    this.byteLength += encoded.length + 1;
    this.offsets.set(name, offset);
    return offset;
  }

  writeTo(target: Uint8Array, at: number): void {
    let offset = at;
    for (const chunk of this.chunks) {
      target.set(chunk, offset);
      offset += chunk.length;
    }
  }
}

const alignUp4 = (value: number): number => Math.ceil(value / 4) * 4;

/** Serialises a guest image to `.bvx` bytes; throws ImageError if the image breaks a rule. */
export function encodeImage(image: GuestImage): Uint8Array {
  validateImage(image);
  const strings = new StringTableBuilder();
  const segmentNameOffsets = image.segments.map((segment) => (segment.name === undefined ? NO_NAME : strings.add(segment.name)));
  const symbolNameOffsets = image.symbols.map((symbol) => strings.add(symbol.name));

  const tablesEnd =
    IMAGE_HEADER_BYTES + image.segments.length * SEGMENT_ENTRY_BYTES + image.symbols.length * SYMBOL_ENTRY_BYTES + strings.byteLength;
  let cursor = tablesEnd;
  const dataOffsets = image.segments.map((segment) => {
    const offset = alignUp4(cursor);
    cursor = offset + segment.data.length;
    return offset;
  });
  const totalBytes = cursor;
  if (totalBytes > 0xffff_ffff) throw new ImageError('BV_IMAGE_TOO_LARGE', `the file would be ${hex(totalBytes)} bytes, more than 4 GiB`);

  const bytes = new Uint8Array(totalBytes);
  const view = new DataView(bytes.buffer);
  bytes.set(IMAGE_MAGIC, HeaderOffset.MAGIC);
  view.setUint16(HeaderOffset.VERSION, IMAGE_VERSION, true);
  view.setUint16(HeaderOffset.HEADER_BYTES, IMAGE_HEADER_BYTES, true);
  view.setUint32(HeaderOffset.ENTRY, image.entry, true);
  view.setUint32(HeaderOffset.SEGMENT_COUNT, image.segments.length, true);
  view.setUint32(HeaderOffset.SYMBOL_COUNT, image.symbols.length, true);
  view.setUint32(HeaderOffset.STRING_BYTES, strings.byteLength, true);
  view.setUint32(HeaderOffset.TOTAL_BYTES, totalBytes, true);

  let at = IMAGE_HEADER_BYTES;
  image.segments.forEach((segment, index) => {
    view.setUint32(at, segment.gpa, true);
    view.setUint32(at + 4, dataOffsets[index]!, true);
    view.setUint32(at + 8, segment.data.length, true);
    view.setUint32(at + 12, segment.memSize, true);
    view.setUint32(at + 16, segment.flags, true);
    view.setUint32(at + 20, segmentNameOffsets[index]!, true);
    bytes.set(segment.data, dataOffsets[index]!);
    at += SEGMENT_ENTRY_BYTES;
  });
  image.symbols.forEach((symbol, index) => {
    view.setUint32(at, symbolNameOffsets[index]!, true);
    view.setUint32(at + 4, symbol.value >>> 0, true);
    view.setUint32(at + 8, symbol.global ? SYMBOL_FLAG_GLOBAL : 0, true);
    at += SYMBOL_ENTRY_BYTES;
  });
  strings.writeTo(bytes, at);
  view.setUint32(HeaderOffset.CRC, crc32(bytes), true);
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/** CRC-32 of a file with its CRC field taken as zero (without copying the file). */
export function imageChecksum(bytes: Uint8Array): number {
  const zeros = new Uint8Array(4);
  let crc = crc32(bytes.subarray(0, HeaderOffset.CRC));
  crc = crc32(zeros, crc);
  return crc32(bytes.subarray(HeaderOffset.CRC + 4), crc);
}

type NameRead = { name: string } | { problem: string };

/** Reads NUL-terminated UTF-8 names from the string table; each offset is decoded once. */
class StringTableReader {
  private readonly cache = new Map<number, NameRead>();
  constructor(private readonly strings: Uint8Array) {}

  read(offset: number): NameRead {
    let result = this.cache.get(offset);
    if (!result) {
      result = this.decode(offset);
      this.cache.set(offset, result);
    }
    return result;
  }

  private decode(offset: number): NameRead {
    const strings = this.strings;
    if (offset >= strings.length) {
      return { problem: `name offset ${hex(offset)} is outside the string table (${hex(strings.length)} bytes)` };
    }
    // Search no further than the longest legal name, so a hostile table costs bounded work per name.
    const end = strings.subarray(offset, offset + MAX_NAME_BYTES + 1).indexOf(0);
    if (end < 0) {
      return offset + MAX_NAME_BYTES + 1 <= strings.length
        ? { problem: `name at string-table offset ${hex(offset)} is longer than the limit of ${MAX_NAME_BYTES} bytes` }
        : { problem: `name at string-table offset ${hex(offset)} is not NUL-terminated` };
    }
    const bytes = strings.subarray(offset, offset + end);
    // ASCII (most names) is valid UTF-8 that decodes byte for byte: skip the decoder's call cost.
    let ascii = true;
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i]! >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return { name: String.fromCharCode.apply(null, bytes as unknown as number[]) };
    try {
      return { name: utf8Decoder.decode(bytes) };
    } catch {
      return { problem: `name at string-table offset ${hex(offset)} is not valid UTF-8` };
    }
  }
}

function checkMagic(bytes: Uint8Array): void {
  const available = Math.min(bytes.length, IMAGE_MAGIC.length);
  for (let i = 0; i < available; i++) {
    if (bytes[i] !== IMAGE_MAGIC[i]) {
      const found = Array.from(bytes.subarray(0, IMAGE_MAGIC.length), (byte) => byte.toString(16).padStart(2, '0')).join(' ');
      throw new ImageError('BV_IMAGE_BAD_MAGIC', `not a .bvx image: magic bytes are ${found}, expected 42 56 58 1a ("BVX\\x1a")`);
    }
  }
}

/**
 * Parses and fully checks a `.bvx` file. Throws only ImageError. Header values are checked
 * against the file length before anything is sized from them, and work is linear in the file.
 */
export function parseImage(bytes: Uint8Array): GuestImage {
  checkMagic(bytes);
  if (bytes.length < IMAGE_HEADER_BYTES) {
    throw new ImageError('BV_IMAGE_TRUNCATED', `file is ${hex(bytes.length)} bytes, shorter than the ${hex(IMAGE_HEADER_BYTES)}-byte header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(HeaderOffset.VERSION, true);
  if (version !== IMAGE_VERSION) {
    throw new ImageError('BV_IMAGE_UNSUPPORTED_VERSION', `image format version ${version} is not supported (this build reads version ${IMAGE_VERSION})`);
  }
  const headerBytes = view.getUint16(HeaderOffset.HEADER_BYTES, true);
  if (headerBytes !== IMAGE_HEADER_BYTES) {
    throw new ImageError('BV_IMAGE_BAD_HEADER', `header size field is ${hex(headerBytes)}, expected ${hex(IMAGE_HEADER_BYTES)}`);
  }
  const totalBytes = view.getUint32(HeaderOffset.TOTAL_BYTES, true);
  if (totalBytes > bytes.length) {
    throw new ImageError('BV_IMAGE_TRUNCATED', `file is ${hex(bytes.length)} bytes but its header says ${hex(totalBytes)}`);
  }
  if (totalBytes < bytes.length) {
    throw new ImageError('BV_IMAGE_BAD_HEADER', `file is ${hex(bytes.length)} bytes but its header says ${hex(totalBytes)} (trailing bytes)`);
  }
  const storedCrc = view.getUint32(HeaderOffset.CRC, true);
  const actualCrc = imageChecksum(bytes);
  if (storedCrc !== actualCrc) {
    throw new ImageError('BV_IMAGE_CHECKSUM', `checksum mismatch: header says ${hex(storedCrc)}, file contents give ${hex(actualCrc)}`);
  }

  const entry = view.getUint32(HeaderOffset.ENTRY, true);
  const segmentCount = view.getUint32(HeaderOffset.SEGMENT_COUNT, true);
  const symbolCount = view.getUint32(HeaderOffset.SYMBOL_COUNT, true);
  const stringBytes = view.getUint32(HeaderOffset.STRING_BYTES, true);
  if (segmentCount > MAX_SEGMENTS) throw new ImageError('BV_IMAGE_TOO_LARGE', `${segmentCount} segments exceed the limit of ${MAX_SEGMENTS}`);
  checkSymbolCount(symbolCount);
  const segmentTableAt = IMAGE_HEADER_BYTES;
  const symbolTableAt = segmentTableAt + segmentCount * SEGMENT_ENTRY_BYTES;
  const stringTableAt = symbolTableAt + symbolCount * SYMBOL_ENTRY_BYTES;
  const tablesEnd = stringTableAt + stringBytes; // exact: every term is < 2^32, sums stay far below 2^53
  if (tablesEnd > totalBytes) {
    throw new ImageError(
      'BV_IMAGE_TRUNCATED',
      `tables (${segmentCount} segments, ${symbolCount} symbols, ${hex(stringBytes)} string bytes) need ${hex(tablesEnd)} bytes ` +
        `but the file has ${hex(totalBytes)}`,
    );
  }
  const strings = new StringTableReader(bytes.subarray(stringTableAt, tablesEnd));

  const facts: SegmentFacts[] = [];
  const fileRanges: { start: number; length: number; label: string }[] = [];
  for (let index = 0; index < segmentCount; index++) {
    const at = segmentTableAt + index * SEGMENT_ENTRY_BYTES;
    const nameOffset = view.getUint32(at + 20, true);
    let name: string | undefined;
    if (nameOffset !== NO_NAME) {
      const read = strings.read(nameOffset);
      if ('problem' in read) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `segment ${index}: ${read.problem}`);
      name = read.name;
    }
    const label = segmentLabel(index, name);
    const fileOffset = view.getUint32(at + 4, true);
    const fileBytes = view.getUint32(at + 8, true);
    if (fileOffset % 4 !== 0) throw new ImageError('BV_IMAGE_BAD_SEGMENT', `${label}: file offset ${hex(fileOffset)} is not 4-byte aligned`);
    if (fileBytes > 0 && (fileOffset < tablesEnd || fileOffset + fileBytes > totalBytes)) {
      throw new ImageError(
        'BV_IMAGE_BAD_SEGMENT',
        `${label}: file bytes [${hex(fileOffset)}, ${hex(fileOffset + fileBytes)}) are outside the data area [${hex(tablesEnd)}, ${hex(totalBytes)})`,
      );
    }
    facts.push({ index, name, gpa: view.getUint32(at, true), fileBytes, memBytes: view.getUint32(at + 12, true), flags: view.getUint32(at + 16, true) });
    fileRanges.push({ start: fileOffset, length: fileBytes, label });
  }
  checkSegments(facts);
  checkNoOverlap(fileRanges, 'the file');

  const symbols: ImageSymbol[] = [];
  for (let index = 0; index < symbolCount; index++) {
    const at = symbolTableAt + index * SYMBOL_ENTRY_BYTES;
    const read = strings.read(view.getUint32(at, true));
    if ('problem' in read) throw new ImageError('BV_IMAGE_BAD_SYMBOL', `symbol ${index}: ${read.problem}`);
    if (read.name === '') throw new ImageError('BV_IMAGE_BAD_SYMBOL', `symbol ${index}: name is empty`);
    const flags = view.getUint32(at + 8, true);
    if ((flags & ~SYMBOL_FLAG_GLOBAL) !== 0) {
      throw new ImageError('BV_IMAGE_BAD_SYMBOL', `${symbolLabel(index, read.name)}: flags ${hex(flags)} have bits other than global (1)`);
    }
    symbols.push({ name: read.name, value: view.getUint32(at + 4, true), global: flags === SYMBOL_FLAG_GLOBAL });
  }
  checkEntry(entry, facts);

  const segments = facts.map((segment, index): ImageSegment => {
    const start = fileRanges[index]!.start;
    const data = new Uint8Array(bytes.subarray(start, start + segment.fileBytes)); // a plain copy, even from a Buffer
    const parsed: ImageSegment = { gpa: segment.gpa, data, memSize: segment.memBytes, flags: segment.flags };
    if (segment.name !== undefined) parsed.name = segment.name;
    return parsed;
  });
  return { entry, segments, symbols };
}

/** Reads and parses a `.bvx` file; every failure (including I/O) is an ImageError naming the path. */
export function loadImageFile(path: string): GuestImage {
  let bytes: Uint8Array;
  try {
    const buffer = readFileSync(path);
    bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ImageError('BV_IMAGE_IO', `cannot read image '${path}': ${reason}`, { cause: error });
  }
  try {
    return parseImage(bytes);
  } catch (error) {
    if (error instanceof ImageError) throw new ImageError(error.code, `${path}: ${error.message}`, { cause: error });
    throw error;
  }
}
