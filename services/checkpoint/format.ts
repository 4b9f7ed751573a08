/**
 * The checkpoint container format, version 1 (docs/checkpoint-format.md is the byte-level spec):
 * constants, the plain-data types a checkpoint holds, and the encoders/decoders of the header,
 * the section table and the small sections. Memory blocks are handled by writer.ts/reader.ts.
 *
 * Everything is little-endian. Decoders never trust a length or offset: each is checked against
 * the bytes actually present before anything is allocated or sliced.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { crc32c } from '../../native/index.ts';
import { CheckpointError } from './errors.ts';

/** "\x89BVCKPT\n": a non-ASCII first byte and a newline catch text-mode mangling (like PNG). */
export const CHECKPOINT_MAGIC: Uint8Array = Uint8Array.of(0x89, 0x42, 0x56, 0x43, 0x4b, 0x50, 0x54, 0x0a);
/** The only format version this build writes and reads. */
export const FORMAT_VERSION = 1;
/** Guest page size: every stored page is exactly this long. */
export const PAGE_BYTES = PAGE_SIZE;
/** Size of the version-1 header at offset 0. */
export const HEADER_BYTES = 64;
/** Every memory block starts at a multiple of this, so a raw block can be mmap'd. */
export const BLOCK_ALIGNMENT = 4096;
/** Blocks start after a header page, so that the first block is aligned too. */
export const FIRST_BLOCK_OFFSET = 4096;
export const SECTION_ENTRY_BYTES = 32;
/** A block table entry: fixed-size and self-checked, so entry b can be read on its own. */
export const BLOCK_ENTRY_BYTES = 40;
/**
 * Every array section (BLOCK_TABLE, MEMORY_INDEX, INDEX_CRCS, BLOCK_PAGES) starts with a u32
 * count and a zero u32: the count is checked against the section length, so a lazy reader can
 * trust it without reading (and checksumming) the whole section.
 */
export const SECTION_HEAD_BYTES = 8;
/** Guest pages per index region: INDEX_CRCS holds one CRC per 4 MiB of guest memory. */
export const INDEX_REGION_PAGES = 1024;
/** MEMORY_INDEX block number of a page that is not stored (all zero). */
export const ZERO_PAGE_BLOCK = 0xffff_ffff;
/** Upper bound on pages per block (256 MiB of pages), which bounds every block allocation. */
export const MAX_BLOCK_PAGES = 65_536;
/** Default staging buffer (T-10): one storage block per MiB of stored pages. */
export const DEFAULT_STAGING_BYTES = 1 << 20;
/** Sections start at multiples of 8, so the index arrays can be viewed as Uint32Array in place. */
export const SECTION_ALIGNMENT = 8;

/** Header flag: at least one memory block is lz4-compressed. */
export const FLAG_HAS_LZ4 = 1;
const KNOWN_FLAGS = FLAG_HAS_LZ4;

export const SectionType = {
  CONFIG: 1,
  CPUS: 2,
  DEVICES: 3,
  MEMORY_INDEX: 4,
  BLOCK_TABLE: 5,
  INDEX_CRCS: 6,
  BLOCK_PAGES: 7,
} as const;
export type SectionTypeName = keyof typeof SectionType;
export const SECTION_NAMES: ReadonlyMap<number, SectionTypeName> = new Map(
  Object.entries(SectionType).map(([name, type]) => [type, name as SectionTypeName]),
);

export const BlockKind = { RAW: 0, LZ4: 1 } as const;
/** How a memory block is stored: raw pages, or lz4-compressed. */
export type BlockKindName = 'raw' | 'lz4';
export const BLOCK_KIND_NAMES: readonly BlockKindName[] = ['raw', 'lz4'];

// ---------------------------------------------------------------------------------------------
// What a checkpoint holds (plain data)

/** A JSON value: what CONFIG, CPUS and JSON device states may contain (checked on write). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
/** A JSON object (see JsonValue). */
export type JsonObject = { [key: string]: JsonValue };

/** One device's saved state; `version` is the device model's own state version. */
export interface DeviceState {
  /** The component's state version (StatefulComponent.version). */
  version: number;
  /** The saved state: plain JSON data, or bytes. */
  state: JsonObject | Uint8Array;
}

/** Everything in a checkpoint except memory. */
export interface CheckpointState {
  /** VM configuration (memory bytes, vCPU count, image info, disk overlay path…). */
  config: JsonObject;
  /** One entry per vCPU, in vCPU order. */
  cpus: JsonObject[];
  /** Device states by device name. */
  devices: Record<string, DeviceState>;
}

/** A checkpoint's non-memory contents and the size of its memory index. */
export interface CheckpointContents extends CheckpointState {
  /** Guest physical pages covered by the memory index (guest memory bytes / PAGE_BYTES). */
  pageCount: number;
}

// ---------------------------------------------------------------------------------------------
// Little helpers

function corrupt(where: string, message: string): CheckpointError {
  return new CheckpointError('BV_CKPT_CORRUPT', `${where}: ${message}`, where);
}

/**
 * CRC-32C of a byte range; `seed` continues an earlier CRC, so checksum(b, checksum(a)) is the
 * CRC of a followed by b.
 */
export function checksum(bytes: Uint8Array, seed = 0): number {
  // CRC-32C in the addon uses the CPU's crc32 instruction: ~6 GB/s here against ~2 GB/s for
  // zlib's CRC-32, which cost a raw save a third of its time.
  return crc32c(bytes, seed) >>> 0;
}

function checksumError(where: string, message: string): CheckpointError {
  return new CheckpointError('BV_CKPT_CHECKSUM', `${where}: ${message}`, where);
}

/** Rounds up to a multiple of `alignment` (a power of two). */
export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Reads a u64 that must fit a JS safe integer (every offset and length does). */
function readSafeU64(view: DataView, offset: number, where: string, field: string): number {
  const value = view.getBigUint64(offset, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(where, `${field} ${value} is out of range`);
  return Number(value);
}

function writeU64(view: DataView, offset: number, value: number): void {
  view.setBigUint64(offset, BigInt(value), true);
}

function allZero(bytes: Uint8Array): boolean {
  for (let index = 0; index < bytes.length; index++) if (bytes[index] !== 0) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Header

export interface Header {
  formatVersion: number;
  flags: number;
  pageBytes: number;
  fileBytes: number;
  sectionTableOffset: number;
  sectionCount: number;
  sectionTableCrc: number;
}

const HEADER_CRC_OFFSET = 12;

export function encodeHeader(header: Header): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES);
  const view = viewOf(bytes);
  bytes.set(CHECKPOINT_MAGIC, 0);
  view.setUint16(8, header.formatVersion, true);
  view.setUint16(10, HEADER_BYTES, true);
  view.setUint32(16, header.flags, true);
  view.setUint32(20, header.pageBytes, true);
  writeU64(view, 24, header.fileBytes);
  writeU64(view, 32, header.sectionTableOffset);
  view.setUint32(40, header.sectionCount, true);
  view.setUint32(44, header.sectionTableCrc, true);
  view.setUint32(HEADER_CRC_OFFSET, checksum(bytes), true); // computed with the field still zero
  return bytes;
}

/**
 * Decodes and checks the header. `bytes` is the start of the file (up to HEADER_BYTES of it);
 * `fileBytes` its actual size. The order of checks is part of the format: magic, then the header
 * CRC (same place and rule in every version), then the version, then the rest.
 */
export function decodeHeader(bytes: Uint8Array, fileBytes: number): Header {
  const where = 'header';
  if (fileBytes === 0) throw new CheckpointError('BV_CKPT_NOT_CHECKPOINT', 'not a checkpoint file (it is empty)', where);
  const magicPresent = Math.min(bytes.length, CHECKPOINT_MAGIC.length);
  for (let index = 0; index < magicPresent; index++) {
    if (bytes[index] !== CHECKPOINT_MAGIC[index]) {
      throw new CheckpointError('BV_CKPT_NOT_CHECKPOINT', 'not a checkpoint file (wrong magic)', where);
    }
  }
  if (bytes.length < 12) {
    throw new CheckpointError('BV_CKPT_TRUNCATED', `truncated: the file is only ${fileBytes} bytes, shorter than its header`, where);
  }
  const view = viewOf(bytes);
  const formatVersion = view.getUint16(8, true);
  const headerBytes = view.getUint16(10, true);
  if (headerBytes < 16 || headerBytes > FIRST_BLOCK_OFFSET) throw corrupt(where, `header length ${headerBytes} is impossible`);
  if (bytes.length < headerBytes) {
    throw new CheckpointError('BV_CKPT_TRUNCATED', `truncated: the file is only ${fileBytes} bytes, shorter than its ${headerBytes}-byte header`, where);
  }
  const headerCopy = new Uint8Array(bytes.subarray(0, headerBytes)); // a copy even for a Buffer (whose slice() is a view)
  viewOf(headerCopy).setUint32(HEADER_CRC_OFFSET, 0, true);
  const storedCrc = view.getUint32(HEADER_CRC_OFFSET, true);
  if (checksum(headerCopy) !== storedCrc) {
    throw new CheckpointError('BV_CKPT_CHECKSUM', 'header checksum mismatch (the header is damaged)', where);
  }
  if (formatVersion !== FORMAT_VERSION) {
    throw new CheckpointError(
      'BV_CKPT_VERSION',
      `checkpoint format version ${formatVersion} is not supported (this build reads version ${FORMAT_VERSION})`,
      where,
    );
  }
  if (headerBytes !== HEADER_BYTES) throw corrupt(where, `header length ${headerBytes} is not ${HEADER_BYTES}`);
  const flags = view.getUint32(16, true);
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new CheckpointError('BV_CKPT_UNSUPPORTED', `header: unknown flags 0x${(flags >>> 0).toString(16)}`, where);
  }
  const pageBytes = view.getUint32(20, true);
  if (pageBytes !== PAGE_BYTES) {
    throw new CheckpointError('BV_CKPT_UNSUPPORTED', `header: page size ${pageBytes} is not supported (only ${PAGE_BYTES})`, where);
  }
  if (!allZero(bytes.subarray(48, HEADER_BYTES))) throw corrupt(where, 'reserved bytes are not zero');
  const header: Header = {
    formatVersion,
    flags,
    pageBytes,
    fileBytes: readSafeU64(view, 24, where, 'file length'),
    sectionTableOffset: readSafeU64(view, 32, where, 'section table offset'),
    sectionCount: view.getUint32(40, true),
    sectionTableCrc: view.getUint32(44, true),
  };
  if (fileBytes !== header.fileBytes) {
    throw new CheckpointError(
      'BV_CKPT_TRUNCATED',
      fileBytes < header.fileBytes
        ? `truncated: the header says ${header.fileBytes} bytes, the file has ${fileBytes}`
        : `the file has ${fileBytes} bytes but its header says ${header.fileBytes} (bytes were appended)`,
      where,
    );
  }
  const tableBytes = header.sectionCount * SECTION_ENTRY_BYTES;
  if (header.sectionTableOffset < FIRST_BLOCK_OFFSET || header.sectionTableOffset + tableBytes !== header.fileBytes) {
    throw corrupt(where, `section table (${header.sectionCount} entries at ${header.sectionTableOffset}) does not end the file`);
  }
  return header;
}

// ---------------------------------------------------------------------------------------------
// Section table

export interface SectionEntry {
  type: number;
  offset: number;
  length: number;
  crc: number;
}

export function sectionName(type: number): string {
  return `section ${SECTION_NAMES.get(type) ?? `type ${type}`}`;
}

export function encodeSectionTable(entries: readonly SectionEntry[]): Uint8Array {
  const bytes = new Uint8Array(entries.length * SECTION_ENTRY_BYTES);
  const view = viewOf(bytes);
  entries.forEach((entry, index) => {
    const at = index * SECTION_ENTRY_BYTES;
    view.setUint32(at, entry.type, true);
    writeU64(view, at + 8, entry.offset);
    writeU64(view, at + 16, entry.length);
    view.setUint32(at + 24, entry.crc, true);
  });
  return bytes;
}

/**
 * Decodes the section table and checks it: its CRC, one entry of each known type, no unknown
 * type, every section inside [blocksEnd..tableOffset) of the file, aligned, no overlaps. Returns
 * the entries by type.
 */
export function decodeSectionTable(bytes: Uint8Array, header: Header): Map<number, SectionEntry> {
  const where = 'section table';
  if (checksum(bytes) !== header.sectionTableCrc) {
    throw new CheckpointError('BV_CKPT_CHECKSUM', 'section table checksum mismatch (the table is damaged)', where);
  }
  const view = viewOf(bytes);
  const byType = new Map<number, SectionEntry>();
  for (let index = 0; index < header.sectionCount; index++) {
    const at = index * SECTION_ENTRY_BYTES;
    const entry: SectionEntry = {
      type: view.getUint32(at, true),
      offset: readSafeU64(view, at + 8, where, `entry ${index} offset`),
      length: readSafeU64(view, at + 16, where, `entry ${index} length`),
      crc: view.getUint32(at + 24, true),
    };
    if (view.getUint32(at + 4, true) !== 0 || view.getUint32(at + 28, true) !== 0) {
      throw corrupt(where, `entry ${index}: reserved bytes are not zero`);
    }
    if (!SECTION_NAMES.has(entry.type)) {
      throw new CheckpointError('BV_CKPT_UNSUPPORTED', `${where}: unknown section type ${entry.type}`, where);
    }
    if (byType.has(entry.type)) throw corrupt(where, `${sectionName(entry.type)} appears twice`);
    if (
      entry.offset < FIRST_BLOCK_OFFSET ||
      entry.offset % SECTION_ALIGNMENT !== 0 ||
      entry.offset + entry.length > header.sectionTableOffset
    ) {
      throw corrupt(sectionName(entry.type), `offset ${entry.offset} length ${entry.length} lies outside the file's section area`);
    }
    byType.set(entry.type, entry);
  }
  for (const type of Object.values(SectionType)) {
    if (!byType.has(type)) throw corrupt(where, `${sectionName(type)} is missing`);
  }
  const ordered = [...byType.values()].sort((a, b) => a.offset - b.offset);
  for (let index = 1; index < ordered.length; index++) {
    const previous = ordered[index - 1]!;
    if (previous.offset + previous.length > ordered[index]!.offset) {
      throw corrupt(where, `${sectionName(previous.type)} overlaps ${sectionName(ordered[index]!.type)}`);
    }
  }
  return byType;
}

/** Checks a section's CRC (the caller read exactly `entry.length` bytes). */
export function checkSection(entry: SectionEntry, bytes: Uint8Array): void {
  if (checksum(bytes) !== entry.crc) {
    const where = sectionName(entry.type);
    throw new CheckpointError('BV_CKPT_CHECKSUM', `${where}: checksum mismatch (the section is damaged)`, where);
  }
}

// ---------------------------------------------------------------------------------------------
// JSON sections (CONFIG, CPUS) and plain-data checks

/**
 * Throws BV_CKPT_BAD_ARGUMENT unless `value` survives JSON unchanged (plain objects and arrays,
 * finite numbers, strings, booleans, null): a typed array or a NaN would silently come back as
 * something else.
 */
export function checkJson(value: unknown, path: string): void {
  const bad = (what: string) => new CheckpointError('BV_CKPT_BAD_ARGUMENT', `${path} ${what}: checkpoint state must be plain JSON data`, path);
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw bad(`is ${value}`);
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((item, index) => checkJson(item, `${path}[${index}]`));
    return;
  }
  if (typeof value === 'object') {
    const prototype = Object.getPrototypeOf(value);
    if (prototype !== Object.prototype && prototype !== null) throw bad(`is a ${value.constructor?.name ?? 'non-plain object'}`);
    for (const [key, item] of Object.entries(value)) checkJson(item, `${path}.${key}`);
    return;
  }
  throw bad(`is a ${typeof value}`);
}

function isPlainObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function encodeJson(value: JsonValue): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeJsonBytes(bytes: Uint8Array, where: string): unknown {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch {
    throw corrupt(where, 'is not valid JSON');
  }
}

export function decodeConfig(bytes: Uint8Array): JsonObject {
  const where = sectionName(SectionType.CONFIG);
  const value = decodeJsonBytes(bytes, where);
  if (!isPlainObject(value)) throw corrupt(where, 'is not a JSON object');
  return value;
}

export function decodeCpus(bytes: Uint8Array): JsonObject[] {
  const where = sectionName(SectionType.CPUS);
  const value = decodeJsonBytes(bytes, where);
  if (!Array.isArray(value) || !value.every(isPlainObject)) throw corrupt(where, 'is not a JSON array of objects');
  return value;
}

// ---------------------------------------------------------------------------------------------
// DEVICES: u32 count, then per device: u16 name length, name (UTF-8), u32 version,
// u8 encoding (0 JSON, 1 bytes), u32 state length, state bytes. Sorted by name.

const DEVICE_JSON = 0;
const DEVICE_BYTES = 1;

export function checkDevices(devices: Record<string, DeviceState>): void {
  for (const [name, device] of Object.entries(devices)) {
    const path = `devices.${name}`;
    const nameBytes = new TextEncoder().encode(name).length;
    if (nameBytes === 0 || nameBytes > 0xffff) throw new CheckpointError('BV_CKPT_BAD_ARGUMENT', `device name '${name}' must be 1..65535 bytes`, path);
    if (!Number.isInteger(device.version) || device.version < 0 || device.version > 0xffff_ffff) {
      throw new CheckpointError('BV_CKPT_BAD_ARGUMENT', `${path}.version must be an integer in 0..2^32-1`, path);
    }
    if (!(device.state instanceof Uint8Array)) {
      if (!isPlainObject(device.state)) throw new CheckpointError('BV_CKPT_BAD_ARGUMENT', `${path}.state must be a JSON object or a Uint8Array`, path);
      checkJson(device.state, `${path}.state`);
    }
  }
}

export function encodeDevices(devices: Record<string, DeviceState>): Uint8Array {
  const encoder = new TextEncoder();
  const records = Object.keys(devices)
    .sort()
    .map((name) => {
      const device = devices[name]!;
      const isBytes = device.state instanceof Uint8Array;
      const state = device.state instanceof Uint8Array ? device.state : encoder.encode(JSON.stringify(device.state));
      return { name: encoder.encode(name), version: device.version, encoding: isBytes ? DEVICE_BYTES : DEVICE_JSON, state };
    });
  const total = 4 + records.reduce((sum, record) => sum + 2 + record.name.length + 4 + 1 + 4 + record.state.length, 0);
  const bytes = new Uint8Array(total);
  const view = viewOf(bytes);
  view.setUint32(0, records.length, true);
  let at = 4;
  for (const record of records) {
    view.setUint16(at, record.name.length, true);
    bytes.set(record.name, at + 2);
    at += 2 + record.name.length;
    view.setUint32(at, record.version, true);
    view.setUint8(at + 4, record.encoding);
    view.setUint32(at + 5, record.state.length, true);
    bytes.set(record.state, at + 9);
    at += 9 + record.state.length;
  }
  return bytes;
}

export function decodeDevices(bytes: Uint8Array): Record<string, DeviceState> {
  const where = sectionName(SectionType.DEVICES);
  const view = viewOf(bytes);
  const need = (at: number, count: number) => {
    if (at + count > bytes.length) throw corrupt(where, `a device record runs past the end of the section`);
  };
  need(0, 4);
  const count = view.getUint32(0, true);
  const entries: [string, DeviceState][] = [];
  const seen = new Set<string>();
  let at = 4;
  for (let index = 0; index < count; index++) {
    need(at, 2);
    const nameLength = view.getUint16(at, true);
    need(at + 2, nameLength + 9);
    let name: string;
    try {
      name = utf8.decode(bytes.subarray(at + 2, at + 2 + nameLength));
    } catch {
      throw corrupt(where, `device ${index} has a name that is not UTF-8`);
    }
    at += 2 + nameLength;
    const version = view.getUint32(at, true);
    const encoding = view.getUint8(at + 4);
    const stateLength = view.getUint32(at + 5, true);
    at += 9;
    need(at, stateLength);
    const stateBytes = bytes.slice(at, at + stateLength);
    at += stateLength;
    if (name === '' || seen.has(name)) throw corrupt(where, `device name '${name}' is empty or repeated`);
    seen.add(name);
    let state: JsonObject | Uint8Array;
    if (encoding === DEVICE_BYTES) state = stateBytes;
    else if (encoding === DEVICE_JSON) {
      const value = decodeJsonBytes(stateBytes, `${where} (device '${name}')`);
      if (!isPlainObject(value)) throw corrupt(where, `device '${name}' state is not a JSON object`);
      state = value;
    } else throw corrupt(where, `device '${name}' has unknown state encoding ${encoding}`);
    entries.push([name, { version, state }]);
  }
  if (at !== bytes.length) throw corrupt(where, `${bytes.length - at} unexpected bytes after the last device`);
  // fromEntries defines own properties, so even a device named '__proto__' stays a plain entry.
  return Object.fromEntries(entries);
}

// ---------------------------------------------------------------------------------------------
// Array sections: a u32 count, a zero u32, then `count` items of a fixed size.

/**
 * The count at the start of an array section, checked against the section's length (which the
 * section table's CRC covers), so it can be trusted without reading the rest. `head` is the
 * section's first SECTION_HEAD_BYTES bytes (or fewer, if the section is shorter).
 */
export function decodeSectionHead(head: Uint8Array, type: number, sectionBytes: number, itemBytes: number): number {
  const where = sectionName(type);
  if (head.length < SECTION_HEAD_BYTES || sectionBytes < SECTION_HEAD_BYTES) throw corrupt(where, 'is shorter than its count');
  const view = viewOf(head);
  const count = view.getUint32(0, true);
  if (view.getUint32(4, true) !== 0) throw corrupt(where, 'reserved bytes are not zero');
  if (sectionBytes !== SECTION_HEAD_BYTES + count * itemBytes) {
    throw corrupt(where, `length ${sectionBytes} does not hold ${count} ${type === SectionType.MEMORY_INDEX ? 'pages' : 'entries'}`);
  }
  return count;
}

const hostIsLittleEndian = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/** The little-endian bytes of a u32 array (a view on little-endian hosts, a copy otherwise). */
export function u32Bytes(values: Uint32Array): Uint8Array {
  if (hostIsLittleEndian) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const bytes = new Uint8Array(values.length * 4);
  const view = viewOf(bytes);
  for (let index = 0; index < values.length; index++) view.setUint32(index * 4, values[index]!, true);
  return bytes;
}

/** `count` little-endian u32 values from `bytes` at `offset`, as a fresh array. */
export function readU32Array(bytes: Uint8Array, offset: number, count: number): Uint32Array {
  const out = new Uint32Array(count);
  if (hostIsLittleEndian) new Uint8Array(out.buffer).set(bytes.subarray(offset, offset + count * 4));
  else {
    const view = viewOf(bytes);
    for (let index = 0; index < count; index++) out[index] = view.getUint32(offset + index * 4, true);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// BLOCK_TABLE: u32 count, u32 reserved, then 40-byte entries:
//   u64 file offset, u32 stored bytes, u32 page count, u32 CRC of the stored bytes,
//   u8 kind (0 raw, 1 lz4), 3 reserved bytes, u32 first page (where the block's page list starts
//   in BLOCK_PAGES, counted in pages), u32 CRC of that page list, u32 reserved,
//   u32 CRC of the entry's first 36 bytes.

export interface BlockEntry {
  kind: BlockKindName;
  fileOffset: number;
  storedBytes: number;
  pageCount: number;
  crc: number;
  /** Index in BLOCK_PAGES of the block's first gpn (the page counts of the blocks before it). */
  firstPage: number;
  /** CRC-32C of the block's page list (pageCount little-endian u32 gpns). */
  pagesCrc: number;
}

const ENTRY_CRC_OFFSET = 36;

/** Largest lz4 block output for `inputBytes` of input, plus the 4-byte size prefix lz4-napi adds. */
export function lz4StoredBound(inputBytes: number): number {
  return 4 + inputBytes + Math.ceil(inputBytes / 255) + 16;
}

export function encodeBlockTable(blocks: readonly BlockEntry[]): Uint8Array {
  const bytes = new Uint8Array(SECTION_HEAD_BYTES + blocks.length * BLOCK_ENTRY_BYTES);
  const view = viewOf(bytes);
  view.setUint32(0, blocks.length, true);
  blocks.forEach((block, index) => {
    const at = SECTION_HEAD_BYTES + index * BLOCK_ENTRY_BYTES;
    writeU64(view, at, block.fileOffset);
    view.setUint32(at + 8, block.storedBytes, true);
    view.setUint32(at + 12, block.pageCount, true);
    view.setUint32(at + 16, block.crc, true);
    view.setUint8(at + 20, block.kind === 'raw' ? BlockKind.RAW : BlockKind.LZ4);
    view.setUint32(at + 24, block.firstPage, true);
    view.setUint32(at + 28, block.pagesCrc, true);
    view.setUint32(at + ENTRY_CRC_OFFSET, checksum(bytes.subarray(at, at + ENTRY_CRC_OFFSET)), true);
  });
  return bytes;
}

/** What a single block table entry is checked against. */
export interface BlockEntryLimits {
  /** Where the block area ends (the first section's offset). */
  blocksEnd: number;
  /** Header flags (an lz4 block needs FLAG_HAS_LZ4). */
  flags: number;
  /** Gpns in BLOCK_PAGES: every block's page list must lie inside. */
  storedPages: number;
}

/**
 * Decodes and checks one 40-byte entry on its own: its CRC, a known kind, zero reserved bytes,
 * 1..MAX pages, a stored length that fits the kind, a 4 KiB-aligned place inside the block area,
 * a page list inside BLOCK_PAGES, and no lz4 block in a file whose header says there is none.
 * What needs the neighbours (order, overlap, page lists back to back) is decodeBlockTable's.
 */
export function decodeBlockEntry(entry: Uint8Array, index: number, limits: BlockEntryLimits): BlockEntry {
  const where = sectionName(SectionType.BLOCK_TABLE);
  const view = viewOf(entry);
  if (checksum(entry.subarray(0, ENTRY_CRC_OFFSET)) !== view.getUint32(ENTRY_CRC_OFFSET, true)) {
    throw checksumError(where, `block ${index}: entry checksum mismatch (the entry is damaged)`);
  }
  const kindCode = view.getUint8(20);
  const block: BlockEntry = {
    kind: BLOCK_KIND_NAMES[kindCode] ?? 'raw',
    fileOffset: readSafeU64(view, 0, where, `block ${index} offset`),
    storedBytes: view.getUint32(8, true),
    pageCount: view.getUint32(12, true),
    crc: view.getUint32(16, true),
    firstPage: view.getUint32(24, true),
    pagesCrc: view.getUint32(28, true),
  };
  const bad = (message: string) => corrupt(where, `block ${index} ${message}`);
  if (kindCode >= BLOCK_KIND_NAMES.length) throw bad(`has unknown kind ${kindCode}`);
  if (!allZero(entry.subarray(21, 24)) || view.getUint32(32, true) !== 0) throw bad('has non-zero reserved bytes');
  if (block.pageCount < 1 || block.pageCount > MAX_BLOCK_PAGES) throw bad(`has ${block.pageCount} pages (1..${MAX_BLOCK_PAGES} allowed)`);
  const pagesBytes = block.pageCount * PAGE_BYTES;
  if (block.kind === 'raw' ? block.storedBytes !== pagesBytes : block.storedBytes < 5 || block.storedBytes > lz4StoredBound(pagesBytes)) {
    throw bad(`stores ${block.storedBytes} bytes, impossible for ${block.pageCount} ${block.kind} pages`);
  }
  if (block.fileOffset % BLOCK_ALIGNMENT !== 0) throw bad(`offset ${block.fileOffset} is not ${BLOCK_ALIGNMENT}-aligned`);
  if (block.fileOffset < FIRST_BLOCK_OFFSET || block.fileOffset + block.storedBytes > limits.blocksEnd) {
    throw bad(`at offset ${block.fileOffset} (${block.storedBytes} bytes) lies outside the block area`);
  }
  if (block.firstPage + block.pageCount > limits.storedPages) {
    throw bad(`page list (${block.pageCount} pages from ${block.firstPage}) runs past the ${limits.storedPages} of BLOCK_PAGES`);
  }
  if (block.kind === 'lz4' && (limits.flags & FLAG_HAS_LZ4) === 0) throw corrupt(where, 'lz4 blocks do not match the header flag');
  return block;
}

/**
 * Decodes the whole block table: every entry as decodeBlockEntry does, plus what needs them all:
 * blocks in ascending offset order without overlap, page lists back to back covering BLOCK_PAGES
 * exactly, and the header's lz4 flag set exactly when an lz4 block exists.
 */
export function decodeBlockTable(bytes: Uint8Array, limits: BlockEntryLimits): BlockEntry[] {
  const where = sectionName(SectionType.BLOCK_TABLE);
  const count = decodeSectionHead(bytes, SectionType.BLOCK_TABLE, bytes.length, BLOCK_ENTRY_BYTES);
  const blocks: BlockEntry[] = [];
  let previousEnd = FIRST_BLOCK_OFFSET;
  let pages = 0;
  let sawLz4 = false;
  for (let index = 0; index < count; index++) {
    const at = SECTION_HEAD_BYTES + index * BLOCK_ENTRY_BYTES;
    const block = decodeBlockEntry(bytes.subarray(at, at + BLOCK_ENTRY_BYTES), index, limits);
    if (block.fileOffset < previousEnd) {
      throw corrupt(where, `block ${index} at offset ${block.fileOffset} (${block.storedBytes} bytes) overlaps another block or lies outside the block area`);
    }
    if (block.firstPage !== pages) throw corrupt(where, `block ${index}'s page list starts at ${block.firstPage}, not right after the previous block's (${pages})`);
    previousEnd = block.fileOffset + block.storedBytes;
    pages += block.pageCount;
    sawLz4 ||= block.kind === 'lz4';
    blocks.push(block);
  }
  if (pages !== limits.storedPages) throw corrupt(where, `its blocks hold ${pages} pages, BLOCK_PAGES lists ${limits.storedPages}`);
  if (sawLz4 !== ((limits.flags & FLAG_HAS_LZ4) !== 0)) throw corrupt(where, 'lz4 blocks do not match the header flag');
  return blocks;
}

// ---------------------------------------------------------------------------------------------
// BLOCK_PAGES: u32 stored page count S, u32 reserved, u32 gpn[S]: block after block, the guest
// pages of each block in slot order. Block b's list starts at gpn[firstPage(b)].

/** Encodes BLOCK_PAGES from the stored gpns in block-then-slot order. */
export function encodeBlockPages(gpns: Uint32Array): Uint8Array {
  const bytes = new Uint8Array(SECTION_HEAD_BYTES + gpns.length * 4);
  viewOf(bytes).setUint32(0, gpns.length, true);
  bytes.set(u32Bytes(gpns), SECTION_HEAD_BYTES);
  return bytes;
}

/** Byte offset, inside BLOCK_PAGES, of a block's page list. */
export function blockPagesOffset(block: BlockEntry): number {
  return SECTION_HEAD_BYTES + block.firstPage * 4;
}

/**
 * Checks a block's page list (its bytes as stored) against the CRC in its entry and each gpn
 * against the guest's page count; returns the gpns.
 */
export function decodeBlockPageList(bytes: Uint8Array, block: BlockEntry, index: number, pageCount: number): Uint32Array {
  const where = sectionName(SectionType.BLOCK_PAGES);
  if (checksum(bytes) !== block.pagesCrc) throw checksumError(where, `block ${index}'s page list: checksum mismatch (the list is damaged)`);
  const gpns = readU32Array(bytes, 0, block.pageCount);
  for (let slot = 0; slot < gpns.length; slot++) {
    if (gpns[slot]! >= pageCount) throw corrupt(where, `slot ${slot} of block ${index} holds page ${gpns[slot]}, beyond the ${pageCount} guest pages`);
  }
  return gpns;
}

/**
 * Checks the whole BLOCK_PAGES section against the blocks and the memory index: each block's
 * list matches its CRC and is exactly the pages the index puts in that block, in slot order.
 */
export function checkBlockPages(bytes: Uint8Array, blocks: readonly BlockEntry[], index: MemoryIndex): void {
  const where = sectionName(SectionType.BLOCK_PAGES);
  blocks.forEach((block, number) => {
    const at = blockPagesOffset(block);
    const gpns = decodeBlockPageList(bytes.subarray(at, at + block.pageCount * 4), block, number, index.pageCount);
    const expected = index.pagesOfBlock[number]!;
    for (let slot = 0; slot < gpns.length; slot++) {
      if (gpns[slot] !== expected[slot]) {
        throw corrupt(where, `slot ${slot} of block ${number} holds page ${gpns[slot]}, the memory index says page ${expected[slot]}`);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// MEMORY_INDEX: u32 page count, u32 reserved, u32 block[pageCount], u32 slot[pageCount].
// block = ZERO_PAGE_BLOCK (slot 0) for a page that is not stored.

export interface MemoryIndex {
  pageCount: number;
  /** Per guest page: its block, or ZERO_PAGE_BLOCK. */
  blockOfPage: Uint32Array;
  /** Per guest page: its position (page slot) inside the block. */
  slotOfPage: Uint32Array;
  /** Per block: the guest page numbers of its slots, in slot order. */
  pagesOfBlock: Uint32Array[];
}

export function encodeMemoryIndex(blockOfPage: Uint32Array, slotOfPage: Uint32Array): Uint8Array {
  const pageCount = blockOfPage.length;
  const bytes = new Uint8Array(SECTION_HEAD_BYTES + pageCount * 8);
  viewOf(bytes).setUint32(0, pageCount, true);
  bytes.set(u32Bytes(blockOfPage), SECTION_HEAD_BYTES);
  bytes.set(u32Bytes(slotOfPage), SECTION_HEAD_BYTES + pageCount * 4);
  return bytes;
}

/**
 * Checks one index entry on its own: a zero page has slot 0; a stored page names an existing
 * block and a slot below that block's page count (`pagesIn(block)`).
 */
export function checkIndexEntry(gpn: number, block: number, slot: number, blockCount: number, pagesIn: (block: number) => number): void {
  // Called per page: the section's name is looked up only for an error.
  if (block === ZERO_PAGE_BLOCK) {
    if (slot !== 0) throw corrupt(sectionName(SectionType.MEMORY_INDEX), `zero page ${gpn} has slot ${slot}`);
    return;
  }
  if (block >= blockCount) throw corrupt(sectionName(SectionType.MEMORY_INDEX), `page ${gpn} names block ${block}, but there are ${blockCount} blocks`);
  const pages = pagesIn(block);
  if (slot >= pages) throw corrupt(sectionName(SectionType.MEMORY_INDEX), `page ${gpn} names slot ${slot} of block ${block}, which has ${pages} pages`);
}

/**
 * Decodes the memory index and checks it against the block table: every entry as
 * checkIndexEntry does, and every slot of every block used by exactly one page.
 */
export function decodeMemoryIndex(bytes: Uint8Array, blocks: readonly BlockEntry[]): MemoryIndex {
  const where = sectionName(SectionType.MEMORY_INDEX);
  const pageCount = decodeSectionHead(bytes, SectionType.MEMORY_INDEX, bytes.length, 8);
  const blockOfPage = readU32Array(bytes, SECTION_HEAD_BYTES, pageCount);
  const slotOfPage = readU32Array(bytes, SECTION_HEAD_BYTES + pageCount * 4, pageCount);
  const pagesOfBlock = blocks.map((block) => new Uint32Array(block.pageCount).fill(ZERO_PAGE_BLOCK));
  const pagesIn = (block: number) => pagesOfBlock[block]!.length;
  for (let gpn = 0; gpn < pageCount; gpn++) {
    const block = blockOfPage[gpn]!;
    const slot = slotOfPage[gpn]!;
    checkIndexEntry(gpn, block, slot, blocks.length, pagesIn);
    if (block === ZERO_PAGE_BLOCK) continue;
    const slots = pagesOfBlock[block]!;
    // ZERO_PAGE_BLOCK can't be a real gpn: pageCount < 2^32 - 1 because the index length fits.
    if (slots[slot] !== ZERO_PAGE_BLOCK) throw corrupt(where, `pages ${slots[slot]} and ${gpn} both claim slot ${slot} of block ${block}`);
    slots[slot] = gpn;
  }
  pagesOfBlock.forEach((slots, block) => {
    const empty = slots.indexOf(ZERO_PAGE_BLOCK);
    if (empty >= 0) throw corrupt(where, `slot ${empty} of block ${block} belongs to no page`);
  });
  return { pageCount, blockOfPage, slotOfPage, pagesOfBlock };
}

// ---------------------------------------------------------------------------------------------
// INDEX_CRCS: u32 region count R = ceil(pageCount / INDEX_REGION_PAGES), u32 reserved, u32 crc[R].
// crc[r] = CRC-32C of the index bytes of region r's pages [r*1024, min((r+1)*1024, pageCount)):
// their block entries, then their slot entries (both as stored: little-endian u32).

/** Index regions of a guest of `pageCount` pages. */
export function indexRegionCount(pageCount: number): number {
  return Math.ceil(pageCount / INDEX_REGION_PAGES);
}

/** Guest pages [first, first + count) of an index region. */
export function indexRegionPages(region: number, pageCount: number): { first: number; count: number } {
  const first = region * INDEX_REGION_PAGES;
  return { first, count: Math.min(INDEX_REGION_PAGES, pageCount - first) };
}

export function encodeIndexCrcs(blockOfPage: Uint32Array, slotOfPage: Uint32Array): Uint8Array {
  const pageCount = blockOfPage.length;
  const regions = indexRegionCount(pageCount);
  const bytes = new Uint8Array(SECTION_HEAD_BYTES + regions * 4);
  const view = viewOf(bytes);
  view.setUint32(0, regions, true);
  for (let region = 0; region < regions; region++) {
    const { first, count } = indexRegionPages(region, pageCount);
    const crc = checksum(u32Bytes(slotOfPage.subarray(first, first + count)), checksum(u32Bytes(blockOfPage.subarray(first, first + count))));
    view.setUint32(SECTION_HEAD_BYTES + region * 4, crc, true);
  }
  return bytes;
}

/** Checks a whole INDEX_CRCS section against the index it describes. */
export function checkIndexCrcs(bytes: Uint8Array, index: MemoryIndex): void {
  const where = sectionName(SectionType.INDEX_CRCS);
  const regions = decodeSectionHead(bytes, SectionType.INDEX_CRCS, bytes.length, 4);
  if (regions !== indexRegionCount(index.pageCount)) throw corrupt(where, `holds ${regions} regions, ${index.pageCount} pages need ${indexRegionCount(index.pageCount)}`);
  const expected = encodeIndexCrcs(index.blockOfPage, index.slotOfPage);
  const view = viewOf(bytes);
  for (let region = 0; region < regions; region++) {
    const at = SECTION_HEAD_BYTES + region * 4;
    if (view.getUint32(at, true) !== viewOf(expected).getUint32(at, true)) throw regionChecksumError(region);
  }
}

/** A region of the memory index does not match its CRC (named as damage in MEMORY_INDEX). */
export function regionChecksumError(region: number): CheckpointError {
  return checksumError(sectionName(SectionType.MEMORY_INDEX), `region ${region}: checksum mismatch (the index is damaged)`);
}
