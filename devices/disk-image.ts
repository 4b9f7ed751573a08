/**
 * Disk images for the block device: a base file of raw 512-byte sectors (or none: zeros) under a
 * chain of copy-on-write overlay files. Reads fall through the chain to the first file that holds
 * a sector; writes go only to the top overlay, which is created when the first write arrives.
 * docs/block-device.md specifies the overlay format byte by byte.
 *
 * - Every overlay names the identity of the file below it (the overlay's random id, or a hash of
 *   the raw base's bytes), so a chain put together from the wrong files is refused, never misread.
 * - A write puts the sector's bytes in the file before the map entry that points at them, so a
 *   crash leaves at worst unreferenced bytes; flush() is fsync.
 * - checkpoint() seals the top overlay (it never changes again) and returns the chain; later
 *   writes go to a new overlay on top. restore() reopens such a chain read-only with a fresh top,
 *   so neither a restored VM nor a fork child ever writes into a sealed file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import { BvError } from '../guest-isa/errors.ts';
import { HostFile, syncDirectory } from '../native/index.ts';

/** Bytes per sector, for every image and overlay (format version 1). */
export const DISK_SECTOR_BYTES = 512;
/** Largest disk: 2^24 sectors (8 GiB); an overlay's map costs 4 bytes per sector. */
export const MAX_DISK_SECTORS = 2 ** 24;
/** The first 8 bytes of every overlay file. */
export const OVERLAY_MAGIC = 'BVDISKOV';
/** The overlay format version this code writes and reads. */
export const OVERLAY_VERSION = 1;
/** The header is one 4 KiB page; the map starts right after it. */
export const OVERLAY_HEADER_BYTES = 4096;
/** Longest backing path stored in a header, in UTF-8 bytes. */
export const MAX_BACKING_PATH_BYTES = 2048;
/** Deepest chain followed when opening from its top (a guard against loops of forged files). */
export const MAX_CHAIN_DEPTH = 1024;

/** Byte offsets of the overlay header fields (little-endian). */
export const OverlayHeaderOffset = {
  /** OVERLAY_MAGIC, 8 ASCII bytes. */
  MAGIC: 0,
  /** u32: format version (OVERLAY_VERSION). */
  VERSION: 8,
  /** u32: header size (OVERLAY_HEADER_BYTES). */
  HEADER_BYTES: 12,
  /** u32: bytes per sector (DISK_SECTOR_BYTES). */
  SECTOR_BYTES: 16,
  /** u32: OverlayFlag bits. */
  FLAGS: 20,
  /** u64: sectors on the disk. */
  SECTORS: 24,
  /** 16 bytes: this overlay's random identity. */
  ID: 32,
  /** u32: BackingKind of the file below. */
  BACKING_KIND: 48,
  /** u32: length of the backing path in UTF-8 bytes. */
  BACKING_PATH_BYTES: 52,
  /** 16 bytes: the identity of the file below. */
  BACKING_ID: 56,
  /** u64: file offset of the sector map. */
  MAP_OFFSET: 72,
  /** u64: file offset of the first data slot. */
  DATA_OFFSET: 80,
  /** u64: data slots when sealed (0 while unsealed). */
  SEALED_SLOTS: 88,
  /** u32: CRC-32 of the map when sealed. */
  MAP_CRC: 96,
  /** The backing path, UTF-8 (at most MAX_BACKING_PATH_BYTES). */
  BACKING_PATH: 256,
  /** u32: CRC-32 of the header bytes before it, in the header's last 4 bytes. */
  CRC: OVERLAY_HEADER_BYTES - 4,
} as const;

/** Header flag bits. */
export const OverlayFlag = {
  /** The overlay is sealed: it never changes again (a checkpoint or fork refers to it). */
  SEALED: 1,
} as const;

/** What lies below an overlay. */
export const BackingKind = {
  /** Nothing: sectors the overlay does not hold read as zeros. */
  NONE: 0,
  /** A raw image. */
  RAW: 1,
  /** Another (sealed) overlay. */
  OVERLAY: 2,
} as const;
/** One of the BackingKind values. */
export type BackingKindId = (typeof BackingKind)[keyof typeof BackingKind];

const ID_BYTES = 16;

/** Stable codes of every disk error. */
export const DISK_ERROR_CODES = [
  /** A file could not be created, opened, read, written or synced; the cause says why. */
  'BV_DISK_IO',
  /** A raw image whose size is not a positive multiple of 512 bytes, or larger than MAX_DISK_SECTORS. */
  'BV_DISK_BAD_IMAGE',
  /** An overlay whose header or map is damaged, truncated or inconsistent. */
  'BV_DISK_DAMAGED',
  /** An overlay of another format version. */
  'BV_DISK_VERSION',
  /** Files that do not form one chain: another backing file, sector count, an unsealed backing overlay, other saved ids. */
  'BV_DISK_MISMATCH',
  /** A sector range outside the disk. */
  'BV_DISK_RANGE',
  /** Use of a disk after close(). */
  'BV_DISK_CLOSED',
  /** A saved disk state that is not one (checkpoint, fork). */
  'BV_DISK_BAD_STATE',
  /** A bad argument (sector count, data length). */
  'BV_DISK_BAD_ARGUMENT',
  /** O_DIRECT was asked for a file whose filesystem refuses it, or whose alignment does not divide a sector. */
  'BV_DISK_DIRECT',
] as const;

/** One of DISK_ERROR_CODES. */
export type DiskErrorCode = (typeof DISK_ERROR_CODES)[number];

/** A disk image or overlay failure (see DISK_ERROR_CODES for what each code means). */
export class DiskError extends BvError {
  /** One of DISK_ERROR_CODES. */
  declare readonly code: DiskErrorCode;

  constructor(code: DiskErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** The decoded header of an overlay file. */
export interface OverlayHeader {
  /** Format version. */
  version: number;
  /** OverlayFlag bits. */
  flags: number;
  /** Sectors on the disk. */
  sectors: number;
  /** 32 hex digits. */
  id: string;
  /** What lies below. */
  backingKind: BackingKindId;
  /** The backing file's identity (32 hex digits; zeros without a backing file). */
  backingId: string;
  /** Where the backing file was, relative to this overlay's directory unless absolute. */
  backingPath: string;
  /** File offset of the sector map (4 bytes per sector). */
  mapOffset: number;
  /** File offset of the first data slot (see overlayDataOffset). */
  dataOffset: number;
  /** Data slots when sealed (the file then ends right after them). */
  sealedSlots: number;
  /** CRC-32 of the map bytes when sealed. */
  mapCrc: number;
}

/** A chain as a checkpoint or fork carries it: absolute paths, bottom first, with identities. */
export interface DiskChainState {
  /** Bytes per sector (DISK_SECTOR_BYTES). */
  sectorBytes: number;
  /** Sectors on the disk. */
  sectors: number;
  /** Every file of the chain, bottom (base) first; all read-only (raw images or sealed overlays). */
  chain: string[];
  /** The identity of each file, as its overlay children record it. */
  ids: string[];
}

/** How a DiskChain is opened or restored. */
export interface DiskOptions {
  /** Directory for new top overlays (default: the directory of the bottom file of the chain). */
  overlayDir?: string;
  /**
   * Asynchronous transfers (readAsync, writeAsync) bypass the host page cache: every file of the
   * chain gets a second descriptor opened with O_DIRECT for its sector data (headers and maps stay
   * buffered). A file that cannot be opened so is a BV_DISK_DIRECT error. Synchronous transfers
   * are unchanged.
   */
  direct?: boolean;
}

/** One file of a chain, as read-only readers see it. */
export interface DiskLayerInfo {
  /** The file's path. */
  path: string;
  /** A raw image or an overlay. */
  kind: 'raw' | 'overlay';
  /** Its identity (32 hex digits), as overlays above it record it. */
  id: string;
  /** Whether it can no longer change: true for raw images (a chain never writes them) and sealed overlays. */
  sealed: boolean;
  /** Sectors this file holds (all of them for a raw image). */
  sectorsHeld: number;
}

/** Data offset for a disk of `sectors`: the header, then the map rounded up to 4 KiB. */
export function overlayDataOffset(sectors: number): number {
  return OVERLAY_HEADER_BYTES + Math.ceil((sectors * 4) / OVERLAY_HEADER_BYTES) * OVERLAY_HEADER_BYTES;
}

/** Encodes a header (the CRC is computed here). */
export function encodeOverlayHeader(header: OverlayHeader): Uint8Array {
  const bytes = new Uint8Array(OVERLAY_HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  const O = OverlayHeaderOffset;
  bytes.set(new TextEncoder().encode(OVERLAY_MAGIC), O.MAGIC);
  view.setUint32(O.VERSION, header.version, true);
  view.setUint32(O.HEADER_BYTES, OVERLAY_HEADER_BYTES, true);
  view.setUint32(O.SECTOR_BYTES, DISK_SECTOR_BYTES, true);
  view.setUint32(O.FLAGS, header.flags, true);
  view.setBigUint64(O.SECTORS, BigInt(header.sectors), true);
  bytes.set(Buffer.from(header.id, 'hex'), O.ID);
  view.setUint32(O.BACKING_KIND, header.backingKind, true);
  const path = new TextEncoder().encode(header.backingPath);
  if (path.length > MAX_BACKING_PATH_BYTES) {
    throw new DiskError('BV_DISK_BAD_ARGUMENT', `backing path is ${path.length} bytes long; at most ${MAX_BACKING_PATH_BYTES} fit in an overlay header`);
  }
  view.setUint32(O.BACKING_PATH_BYTES, path.length, true);
  bytes.set(Buffer.from(header.backingId, 'hex'), O.BACKING_ID);
  view.setBigUint64(O.MAP_OFFSET, BigInt(header.mapOffset), true);
  view.setBigUint64(O.DATA_OFFSET, BigInt(header.dataOffset), true);
  view.setBigUint64(O.SEALED_SLOTS, BigInt(header.sealedSlots), true);
  view.setUint32(O.MAP_CRC, header.mapCrc, true);
  bytes.set(path, O.BACKING_PATH);
  view.setUint32(O.CRC, crc32(bytes.subarray(0, O.CRC)) >>> 0, true);
  return bytes;
}

/** Whether the bytes start with the overlay magic. */
export function hasOverlayMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString('latin1') === OVERLAY_MAGIC;
}

/** Decodes and checks a header; `path` is for messages. */
export function decodeOverlayHeader(bytes: Uint8Array, path: string): OverlayHeader {
  const O = OverlayHeaderOffset;
  if (bytes.length < OVERLAY_HEADER_BYTES) throw new DiskError('BV_DISK_DAMAGED', `${path}: overlay header is cut short (${bytes.length} of ${OVERLAY_HEADER_BYTES} bytes)`);
  if (!hasOverlayMagic(bytes)) throw new DiskError('BV_DISK_DAMAGED', `${path}: not a disk overlay (bad magic)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, OVERLAY_HEADER_BYTES);
  const version = view.getUint32(O.VERSION, true);
  if (version !== OVERLAY_VERSION) throw new DiskError('BV_DISK_VERSION', `${path}: overlay format version ${version}, this bytevisor reads version ${OVERLAY_VERSION}`);
  if ((crc32(bytes.subarray(0, O.CRC)) >>> 0) !== view.getUint32(O.CRC, true)) throw new DiskError('BV_DISK_DAMAGED', `${path}: overlay header is damaged (checksum mismatch)`);
  const damaged = (what: string): DiskError => new DiskError('BV_DISK_DAMAGED', `${path}: overlay header has ${what}`);
  if (view.getUint32(O.HEADER_BYTES, true) !== OVERLAY_HEADER_BYTES) throw damaged(`header size ${view.getUint32(O.HEADER_BYTES, true)}`);
  if (view.getUint32(O.SECTOR_BYTES, true) !== DISK_SECTOR_BYTES) throw damaged(`sector size ${view.getUint32(O.SECTOR_BYTES, true)} (only ${DISK_SECTOR_BYTES} is supported)`);
  const flags = view.getUint32(O.FLAGS, true);
  if ((flags & ~OverlayFlag.SEALED) !== 0) throw damaged(`unknown flags 0x${flags.toString(16)}`);
  const sectors = Number(view.getBigUint64(O.SECTORS, true));
  if (sectors < 1 || sectors > MAX_DISK_SECTORS) throw damaged(`sector count ${sectors} (1..${MAX_DISK_SECTORS})`);
  const backingKind = view.getUint32(O.BACKING_KIND, true);
  if (backingKind !== BackingKind.NONE && backingKind !== BackingKind.RAW && backingKind !== BackingKind.OVERLAY) throw damaged(`backing kind ${backingKind}`);
  const pathBytes = view.getUint32(O.BACKING_PATH_BYTES, true);
  if (pathBytes > MAX_BACKING_PATH_BYTES) throw damaged(`a backing path of ${pathBytes} bytes`);
  if ((backingKind === BackingKind.NONE) !== (pathBytes === 0)) throw damaged(backingKind === BackingKind.NONE ? 'a backing path without a backing file' : 'no backing path');
  const mapOffset = Number(view.getBigUint64(O.MAP_OFFSET, true));
  const dataOffset = Number(view.getBigUint64(O.DATA_OFFSET, true));
  if (mapOffset !== OVERLAY_HEADER_BYTES || dataOffset !== overlayDataOffset(sectors)) throw damaged(`map offset ${mapOffset} and data offset ${dataOffset}`);
  const sealedSlots = Number(view.getBigUint64(O.SEALED_SLOTS, true));
  if ((flags & OverlayFlag.SEALED) === 0 && sealedSlots !== 0) throw damaged('a slot count but no seal');
  return {
    version,
    flags,
    sectors,
    id: Buffer.from(bytes.subarray(O.ID, O.ID + ID_BYTES)).toString('hex'),
    backingKind: backingKind as BackingKindId,
    backingId: Buffer.from(bytes.subarray(O.BACKING_ID, O.BACKING_ID + ID_BYTES)).toString('hex'),
    backingPath: new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(O.BACKING_PATH, O.BACKING_PATH + pathBytes)),
    mapOffset,
    dataOffset,
    sealedSlots,
    mapCrc: view.getUint32(O.MAP_CRC, true),
  };
}

/** Runs a file operation, turning native failures into BV_DISK_IO. */
function io<T>(path: string, what: string, operation: () => T): T {
  try {
    return operation();
  } catch (error) {
    if (error instanceof DiskError) throw error;
    const message = error instanceof Error ? error.message : String(error);
    throw new DiskError('BV_DISK_IO', `${path}: cannot ${what}: ${message}`, { cause: error });
  }
}

/** A file of the chain. `locate` gives the file offset holding a sector, or -1 (falls through). */
interface Layer {
  readonly path: string;
  readonly kind: 'raw' | 'overlay';
  readonly id: string;
  readonly sectors: number;
  readonly file: HostFile;
  /** The descriptor asynchronous sector transfers use: an O_DIRECT one when the chain is direct, else `file`. */
  readonly dataFile: HostFile;
  locate(sector: number): number;
  info(): DiskLayerInfo;
  close(): void;
}

/** Identities of raw images already hashed, by path and file metadata (hashing reads every byte). */
const rawIdentityCache = new Map<string, string>();

/** A raw image: sector n at byte 512 n. Never written. */
class RawImage implements Layer {
  readonly kind = 'raw' as const;

  private constructor(
    readonly path: string,
    readonly file: HostFile,
    readonly sectors: number,
    readonly id: string,
    readonly dataFile: HostFile,
  ) {}

  static open(path: string, direct = false): RawImage {
    const file = io(path, 'open the disk image', () => HostFile.open(path, 'r'));
    try {
      const size = io(path, 'read the size of the disk image', () => file.size);
      if (size === 0 || size % DISK_SECTOR_BYTES !== 0) {
        throw new DiskError('BV_DISK_BAD_IMAGE', `${path}: a raw disk image must be a positive multiple of ${DISK_SECTOR_BYTES} bytes, this one is ${size} bytes`);
      }
      if (size / DISK_SECTOR_BYTES > MAX_DISK_SECTORS) {
        throw new DiskError('BV_DISK_BAD_IMAGE', `${path}: ${size} bytes is more than the largest disk (${MAX_DISK_SECTORS} sectors)`);
      }
      const id = rawIdentity(path, file, size);
      return new RawImage(path, file, size / DISK_SECTOR_BYTES, id, direct ? openDirect(path, 'r') : file);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  locate(sector: number): number {
    return sector * DISK_SECTOR_BYTES;
  }

  info(): DiskLayerInfo {
    return { path: this.path, kind: this.kind, id: this.id, sealed: true, sectorsHeld: this.sectors };
  }

  close(): void {
    this.file.close();
    if (this.dataFile !== this.file) this.dataFile.close();
  }
}

/**
 * A second descriptor of `path` with O_DIRECT, for asynchronous sector transfers. Sector offsets
 * are multiples of 512 (overlay data starts on a 4 KiB boundary), so the file's direct alignment
 * must divide 512.
 */
function openDirect(path: string, mode: 'r' | 'rw'): HostFile {
  let file: HostFile;
  try {
    file = HostFile.open(path, mode, { direct: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new DiskError('BV_DISK_DIRECT', `${path}: cannot open with O_DIRECT (its filesystem may not support it; run without direct): ${message}`, { cause: error });
  }
  const alignment = file.directAlignment;
  if (DISK_SECTOR_BYTES % alignment !== 0) {
    file.close();
    throw new DiskError('BV_DISK_DIRECT', `${path}: O_DIRECT transfers must be multiples of ${alignment} bytes here, but a disk sector is ${DISK_SECTOR_BYTES}`);
  }
  return file;
}

/** An asynchronous write in flight to an overlay: its data and where each run goes. */
interface PendingWrite {
  readonly data: Uint8Array;
  /** Runs of sectors: first sector, sectors, first slot, and whether the slots are new (their map entries still to be written). */
  readonly runs: { sector: number; count: number; slot: number; fresh: boolean }[];
  /** Map entries written (at completion, or by seal() before it). */
  applied: boolean;
}

/** First 16 bytes of the SHA-256 of the image, cached while the file's metadata is unchanged. */
function rawIdentity(path: string, file: HostFile, size: number): string {
  const stat = io(path, 'stat the disk image', () => statSync(path, { bigint: true }));
  const key = `${resolve(path)}\0${stat.dev}\0${stat.ino}\0${size}\0${stat.mtimeNs}\0${stat.ctimeNs}`;
  const cached = rawIdentityCache.get(key);
  if (cached !== undefined) return cached;
  const hash = createHash('sha256');
  const chunk = new Uint8Array(Math.min(size, 1 << 20));
  for (let offset = 0; offset < size; ) {
    const got = io(path, 'read the disk image', () => file.pread(chunk, offset));
    if (got === 0) throw new DiskError('BV_DISK_IO', `${path}: the disk image shrank while it was read`);
    hash.update(chunk.subarray(0, got));
    offset += got;
  }
  const id = hash.digest('hex').slice(0, ID_BYTES * 2);
  rawIdentityCache.set(key, id);
  return id;
}

/** An overlay file: header, sector map (0 = not here, k = data slot k - 1), data slots. */
class OverlayFile implements Layer {
  readonly kind = 'overlay' as const;
  /** Set when this process created the file (an unused one is removed on close). */
  createdHere = false;

  /** Asynchronous writes whose map entries are not written yet (seal() writes them first). */
  private readonly pendingWrites = new Set<PendingWrite>();
  private closed = false;

  private constructor(
    readonly path: string,
    public file: HostFile,
    private header: OverlayHeader,
    private readonly map: Uint32Array,
    /** Data slots in the file; new sectors go to the next one. */
    public slots: number,
    /** The descriptor for asynchronous data transfers (O_DIRECT ones for a direct chain). */
    public dataFile: HostFile,
  ) {}

  get id(): string {
    return this.header.id;
  }

  get sectors(): number {
    return this.header.sectors;
  }

  get sealed(): boolean {
    return (this.header.flags & OverlayFlag.SEALED) !== 0;
  }

  get backingKind(): BackingKindId {
    return this.header.backingKind;
  }

  get backingId(): string {
    return this.header.backingId;
  }

  /** The backing file's path as recorded, resolved against this overlay's directory. */
  get backingPath(): string {
    return resolve(dirname(this.path), this.header.backingPath);
  }

  /** Opens and checks an overlay; writable only if it is not sealed and `writable` is asked. */
  static open(path: string, writable: boolean, headerBytes?: Uint8Array, direct = false): OverlayFile {
    const probe = headerBytes ?? readHeaderBytes(path);
    const header = decodeOverlayHeader(probe, path);
    const sealed = (header.flags & OverlayFlag.SEALED) !== 0;
    const file = io(path, 'open the overlay', () => HostFile.open(path, writable && !sealed ? 'rw' : 'r'));
    try {
      const size = io(path, 'read the size of the overlay', () => file.size);
      if (size < header.dataOffset) throw new DiskError('BV_DISK_DAMAGED', `${path}: overlay is cut short (${size} bytes, its map ends at ${header.dataOffset})`);
      const slots = Math.floor((size - header.dataOffset) / DISK_SECTOR_BYTES);
      const mapBytes = new Uint8Array(header.sectors * 4);
      const got = io(path, 'read the overlay map', () => file.pread(mapBytes, header.mapOffset));
      if (got !== mapBytes.length) throw new DiskError('BV_DISK_DAMAGED', `${path}: overlay map is cut short`);
      if (sealed) {
        if (slots !== header.sealedSlots || size !== header.dataOffset + slots * DISK_SECTOR_BYTES) {
          throw new DiskError('BV_DISK_DAMAGED', `${path}: sealed overlay holds ${size} bytes, its header says ${header.dataOffset + header.sealedSlots * DISK_SECTOR_BYTES}`);
        }
        if ((crc32(mapBytes) >>> 0) !== header.mapCrc) throw new DiskError('BV_DISK_DAMAGED', `${path}: sealed overlay map is damaged (checksum mismatch)`);
      }
      const map = decodeMap(mapBytes, slots, path);
      // Slots are handed out in order, so slots after the last mapped one are data whose map
      // entry a crash kept from being written: free for reuse.
      let used = 0;
      for (const entry of map) if (entry > used) used = entry;
      const dataFile = direct ? openDirect(path, writable && !sealed ? 'rw' : 'r') : file;
      return new OverlayFile(path, file, header, map, sealed ? slots : used, dataFile);
    } catch (error) {
      file.close();
      throw error;
    }
  }

  /** Creates an empty, unsealed overlay over `backing` (null: a blank disk of `sectors`). */
  static create(path: string, sectors: number, backing: Layer | null, direct = false): OverlayFile {
    if (!Number.isInteger(sectors) || sectors < 1 || sectors > MAX_DISK_SECTORS) {
      throw new DiskError('BV_DISK_BAD_ARGUMENT', `a disk has 1..${MAX_DISK_SECTORS} sectors, not ${sectors}`);
    }
    // Exclusive creation: two VMs never end up writing the same new overlay (and a name that is
    // taken fails here, before anything could remove someone else's file).
    io(path, 'create the overlay', () => closeSync(openSync(path, 'wx')));
    let file: HostFile | null = null;
    try {
      const header: OverlayHeader = {
        version: OVERLAY_VERSION,
        flags: 0,
        sectors,
        id: randomBytes(ID_BYTES).toString('hex'),
        backingKind: backing === null ? BackingKind.NONE : backing.kind === 'raw' ? BackingKind.RAW : BackingKind.OVERLAY,
        backingId: backing === null ? '0'.repeat(ID_BYTES * 2) : backing.id,
        backingPath: backing === null ? '' : relativeOrAbsolute(dirname(resolve(path)), backing.path),
        mapOffset: OVERLAY_HEADER_BYTES,
        dataOffset: overlayDataOffset(sectors),
        sealedSlots: 0,
        mapCrc: 0,
      };
      const headerBytes = encodeOverlayHeader(header);
      const opened = io(path, 'open the new overlay', () => HostFile.open(path, 'rw'));
      file = opened;
      io(path, 'write the overlay header', () => {
        opened.truncate(header.dataOffset); // the map: zeros, sparse until used
        opened.pwrite(headerBytes, 0);
        opened.sync();
      });
      const overlay = new OverlayFile(path, opened, header, new Uint32Array(sectors), 0, direct ? openDirect(path, 'rw') : opened);
      overlay.createdHere = true;
      return overlay;
    } catch (error) {
      file?.close();
      rmSync(path, { force: true });
      throw error;
    }
  }

  locate(sector: number): number {
    const entry = this.map[sector]!;
    return entry === 0 ? -1 : this.header.dataOffset + (entry - 1) * DISK_SECTOR_BYTES;
  }

  /** Writes whole sectors: data into slots first, then the map entries pointing at them. */
  write(first: number, data: Uint8Array): void {
    if (this.sealed) throw new DiskError('BV_DISK_MISMATCH', `${this.path}: a sealed overlay is never written`);
    const count = data.length / DISK_SECTOR_BYTES;
    for (let i = 0; i < count; ) {
      const sector = first + i;
      const entry = this.map[sector]!;
      let run = 1;
      if (entry !== 0) {
        // Already here: overwrite in place (a run of consecutive slots in one call).
        while (i + run < count && this.map[sector + run] === entry + run) run++;
        const bytes = data.subarray(i * DISK_SECTOR_BYTES, (i + run) * DISK_SECTOR_BYTES);
        io(this.path, 'write to the overlay', () => this.file.pwrite(bytes, this.header.dataOffset + (entry - 1) * DISK_SECTOR_BYTES));
      } else {
        while (i + run < count && this.map[sector + run] === 0) run++;
        const slot = this.slots;
        const bytes = data.subarray(i * DISK_SECTOR_BYTES, (i + run) * DISK_SECTOR_BYTES);
        io(this.path, 'write to the overlay', () => this.file.pwrite(bytes, this.header.dataOffset + slot * DISK_SECTOR_BYTES));
        this.slots += run;
        const entries = new Uint8Array(run * 4);
        const view = new DataView(entries.buffer);
        for (let k = 0; k < run; k++) view.setUint32(k * 4, slot + k + 1, true);
        io(this.path, 'write the overlay map', () => this.file.pwrite(entries, this.header.mapOffset + sector * 4));
        for (let k = 0; k < run; k++) this.map[sector + k] = slot + k + 1;
      }
      i += run;
    }
  }

  /**
   * write() on the thread pool: slots are chosen now (new sectors get fresh slots, mapped ones
   * are overwritten in place), the data goes to them asynchronously, and the map entries of fresh
   * slots are written when it has landed, so the map never points at bytes not yet written. Two
   * writes in flight to one new sector each get a slot; the one completing last is mapped.
   */
  async writeAsync(first: number, data: Uint8Array): Promise<void> {
    if (this.sealed) throw new DiskError('BV_DISK_MISMATCH', `${this.path}: a sealed overlay is never written`);
    const count = data.length / DISK_SECTOR_BYTES;
    const op: PendingWrite = { data, runs: [], applied: false };
    for (let i = 0; i < count; ) {
      const sector = first + i;
      const entry = this.map[sector]!;
      let run = 1;
      if (entry !== 0) {
        while (i + run < count && this.map[sector + run] === entry + run) run++;
        op.runs.push({ sector, count: run, slot: entry - 1, fresh: false });
      } else {
        while (i + run < count && this.map[sector + run] === 0) run++;
        op.runs.push({ sector, count: run, slot: this.slots, fresh: true });
        this.slots += run;
      }
      i += run;
    }
    this.pendingWrites.add(op);
    const dataFile = this.dataFile;
    try {
      await Promise.all(op.runs.map(async (run) => {
        const at = run.sector - first;
        const bytes = data.subarray(at * DISK_SECTOR_BYTES, (at + run.count) * DISK_SECTOR_BYTES);
        try {
          await dataFile.pwriteAsync(bytes, this.header.dataOffset + run.slot * DISK_SECTOR_BYTES);
        } catch (error) {
          throw new DiskError('BV_DISK_IO', `${this.path}: cannot write to the overlay: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
        }
      }));
    } finally {
      this.pendingWrites.delete(op);
    }
    // Sealed meanwhile: seal() wrote this write's data and map first. Closed: the disk is gone.
    if (!op.applied && !this.closed) this.applyPendingWrite(op, false);
  }

  /** Writes a pending write's map entries (and, when `withData`, its data, synchronously). */
  private applyPendingWrite(op: PendingWrite, withData: boolean): void {
    for (const run of op.runs) {
      if (withData) {
        const at = run.sector - op.runs[0]!.sector;
        const bytes = op.data.subarray(at * DISK_SECTOR_BYTES, (at + run.count) * DISK_SECTOR_BYTES);
        io(this.path, 'write to the overlay', () => this.file.pwrite(bytes, this.header.dataOffset + run.slot * DISK_SECTOR_BYTES));
      }
      if (!run.fresh) continue;
      const entries = new Uint8Array(run.count * 4);
      const view = new DataView(entries.buffer);
      for (let k = 0; k < run.count; k++) view.setUint32(k * 4, run.slot + k + 1, true);
      io(this.path, 'write the overlay map', () => this.file.pwrite(entries, this.header.mapOffset + run.sector * 4));
      for (let k = 0; k < run.count; k++) this.map[run.sector + k] = run.slot + k + 1;
    }
    op.applied = true;
  }

  sync(): void {
    io(this.path, 'sync the overlay', () => this.file.sync());
  }

  /** Makes the overlay read-only for good: header flag, slot count and map checksum, synced. */
  seal(): void {
    if (this.sealed) return;
    // Asynchronous writes still in flight land here first, synchronously (the same bytes their
    // own transfers write, so whichever finishes last changes nothing): the sealed overlay holds
    // every write issued before the seal.
    for (const op of this.pendingWrites) this.applyPendingWrite(op, true);
    this.pendingWrites.clear();
    const mapBytes = encodeMap(this.map);
    const header: OverlayHeader = { ...this.header, flags: this.header.flags | OverlayFlag.SEALED, sealedSlots: this.slots, mapCrc: crc32(mapBytes) >>> 0 };
    const headerBytes = encodeOverlayHeader(header);
    io(this.path, 'seal the overlay', () => {
      this.file.truncate(this.header.dataOffset + this.slots * DISK_SECTOR_BYTES); // drops a torn slot a crash may have left
      this.file.sync(); // data and map reach the disk before the header says they are final
      this.file.pwrite(headerBytes, 0);
      this.file.sync();
      syncDirectory(dirname(resolve(this.path)));
      const direct = this.dataFile !== this.file;
      this.file.close();
      if (direct) this.dataFile.close(); // (a transfer still in flight keeps its descriptor open until it settles)
      this.file = HostFile.open(this.path, 'r');
      this.dataFile = direct ? openDirect(this.path, 'r') : this.file;
    });
    this.header = header;
    this.createdHere = false;
  }

  info(): DiskLayerInfo {
    let held = 0;
    for (const entry of this.map) if (entry !== 0) held++;
    return { path: this.path, kind: this.kind, id: this.id, sealed: this.sealed, sectorsHeld: held };
  }

  close(): void {
    this.closed = true;
    this.file.close();
    if (this.dataFile !== this.file) this.dataFile.close();
  }
}

function readHeaderBytes(path: string): Uint8Array {
  const file = io(path, 'open the disk file', () => HostFile.open(path, 'r'));
  try {
    const bytes = new Uint8Array(OVERLAY_HEADER_BYTES);
    const got = io(path, 'read the disk file', () => file.pread(bytes, 0));
    return bytes.subarray(0, got);
  } finally {
    file.close();
  }
}

function decodeMap(bytes: Uint8Array, slots: number, path: string): Uint32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const map = new Uint32Array(bytes.length / 4);
  const used = new Uint8Array(slots);
  for (let sector = 0; sector < map.length; sector++) {
    const entry = view.getUint32(sector * 4, true);
    if (entry === 0) continue;
    if (entry > slots) throw new DiskError('BV_DISK_DAMAGED', `${path}: map entry of sector ${sector} points past the end of the overlay (slot ${entry - 1} of ${slots})`);
    if (used[entry - 1]) throw new DiskError('BV_DISK_DAMAGED', `${path}: data slot ${entry - 1} is mapped by two sectors`);
    used[entry - 1] = 1;
    map[sector] = entry;
  }
  return map;
}

function encodeMap(map: Uint32Array): Uint8Array {
  const bytes = new Uint8Array(map.length * 4);
  const view = new DataView(bytes.buffer);
  for (let sector = 0; sector < map.length; sector++) view.setUint32(sector * 4, map[sector]!, true);
  return bytes;
}

/** A path relative to `fromDir` when that stays inside the same tree, else absolute. */
function relativeOrAbsolute(fromDir: string, path: string): string {
  const absolute = resolve(path);
  const rel = relative(fromDir, absolute);
  return rel === '' || isAbsolute(rel) ? absolute : rel;
}

/** Opens one file of a chain: an overlay when it starts with the magic, else a raw image. */
function openLayer(path: string, writableTop: boolean, direct = false): RawImage | OverlayFile {
  const head = readHeaderBytes(path);
  return hasOverlayMagic(head) ? OverlayFile.open(path, writableTop, head, direct) : RawImage.open(path, direct);
}

/** Checks that `below` is the file `overlay` was created over. */
function checkBacking(overlay: OverlayFile, below: Layer): void {
  const expectedKind = below.kind === 'raw' ? BackingKind.RAW : BackingKind.OVERLAY;
  if (overlay.backingKind !== expectedKind || overlay.backingId !== below.id) {
    throw new DiskError('BV_DISK_MISMATCH', `${overlay.path} was not created over ${below.path} (it expects ${overlay.backingKind === BackingKind.RAW ? 'a raw image' : 'an overlay'} with id ${overlay.backingId}, found id ${below.id})`);
  }
  if (below.sectors !== overlay.sectors) throw new DiskError('BV_DISK_MISMATCH', `${overlay.path} has ${overlay.sectors} sectors, ${below.path} below it has ${below.sectors}`);
  if (below instanceof OverlayFile && !below.sealed) throw new DiskError('BV_DISK_MISMATCH', `${below.path} lies below another overlay but is not sealed (it could still change)`);
}

/**
 * A disk: read-only files (raw base, sealed overlays) and at most one writable top overlay,
 * created on the first write.
 */
export class DiskChain {
  private closed = false;

  private constructor(
    /** Sectors on the disk. */
    readonly sectors: number,
    /** Read-only files, bottom first. */
    private layers: Layer[],
    /** The writable top overlay; null until the first write. */
    private top: OverlayFile | null,
    private readonly options: DiskOptions,
  ) {}

  /**
   * Opens the disk whose top file is `path`: a raw image, or an overlay whose backing files are
   * found through the paths recorded in the headers (each checked by identity). An unsealed
   * overlay at the top becomes the writable top; otherwise a new one is created on first write.
   */
  static open(path: string, options: DiskOptions = {}): DiskChain {
    const opened: Layer[] = [];
    try {
      const direct = options.direct === true;
      let current = openLayer(resolve(path), true, direct);
      opened.push(current);
      while (current instanceof OverlayFile && current.backingKind !== BackingKind.NONE) {
        if (opened.length > MAX_CHAIN_DEPTH) throw new DiskError('BV_DISK_DAMAGED', `${resolve(path)}: the chain is deeper than ${MAX_CHAIN_DEPTH} files`);
        const below = openLayer(current.backingPath, false, direct);
        opened.push(below);
        checkBacking(current, below);
        current = below;
      }
      const layers = opened.reverse();
      const last = layers.at(-1)!;
      const top = last instanceof OverlayFile && !last.sealed ? (layers.pop() as OverlayFile) : null;
      return new DiskChain(last.sectors, layers, top, options);
    } catch (error) {
      for (const layer of opened) layer.close();
      throw error;
    }
  }

  /** Creates a blank disk of `sectors` (zeros): an overlay without a backing file. */
  static createBlank(path: string, sectors: number, options: DiskOptions = {}): DiskChain {
    const overlay = OverlayFile.create(resolve(path), sectors, null, options.direct === true);
    overlay.createdHere = false; // the caller asked for this file: keep it even if never written
    return new DiskChain(sectors, [], overlay, options);
  }

  /**
   * Reopens a chain saved by checkpoint(): every file read-only and checked against the saved
   * identities; writes go to a new top overlay.
   */
  static restore(state: unknown, options: DiskOptions = {}): DiskChain {
    const saved = parseChainState(state);
    const layers: Layer[] = [];
    try {
      saved.chain.forEach((path, index) => {
        const layer = openLayer(path, false, options.direct === true);
        layers.push(layer);
        if (layer.id !== saved.ids[index]) throw new DiskError('BV_DISK_MISMATCH', `${path} is not the file the saved disk state names (id ${layer.id}, saved ${saved.ids[index]})`);
        if (layer.sectors !== saved.sectors) throw new DiskError('BV_DISK_MISMATCH', `${path} has ${layer.sectors} sectors, the saved disk has ${saved.sectors}`);
        if (layer instanceof OverlayFile) {
          if (!layer.sealed) throw new DiskError('BV_DISK_MISMATCH', `${path} is not sealed: a saved disk names only files that cannot change`);
          if (index > 0) checkBacking(layer, layers[index - 1]!);
          else if (layer.backingKind !== BackingKind.NONE) throw new DiskError('BV_DISK_MISMATCH', `${path} lies over another file, but the saved chain starts with it`);
        } else if (index > 0) {
          throw new DiskError('BV_DISK_MISMATCH', `${path} is a raw image in the middle of the saved chain`);
        }
      });
      return new DiskChain(saved.sectors, layers, null, options);
    } catch (error) {
      for (const layer of layers) layer.close();
      throw error;
    }
  }

  /** Bytes per sector (DISK_SECTOR_BYTES). */
  get sectorBytes(): number {
    return DISK_SECTOR_BYTES;
  }

  /** The writable top overlay's path, or null while no write has created it. */
  get topPath(): string | null {
    return this.top?.path ?? null;
  }

  /** Every file, bottom first (the writable top last, if there is one). */
  describe(): DiskLayerInfo[] {
    const files = this.top ? [...this.layers, this.top] : this.layers;
    return files.map((layer) => layer.info());
  }

  /**
   * The sectors some overlay of the chain holds (sealed ones and the writable top), ascending:
   * what a copy of the disk needs besides its raw base image (the rest reads from the base, or
   * as zeros without one).
   */
  overlaySectors(): number[] {
    this.checkOpen();
    const overlays = (this.top ? [...this.layers, this.top] : this.layers).filter((layer) => layer.kind === 'overlay');
    const sectors: number[] = [];
    for (let sector = 0; sector < this.sectors; sector++) {
      for (const layer of overlays) {
        if (layer.locate(sector) >= 0) {
          sectors.push(sector);
          break;
        }
      }
    }
    return sectors;
  }

  /** Reads `count` sectors from `first`. */
  read(first: number, count: number): Uint8Array {
    this.check(first, count);
    const out = new Uint8Array(count * DISK_SECTOR_BYTES);
    for (const { layer, offset, i, run } of this.runs(first, count)) {
      if (layer !== null) {
        const target = out.subarray(i * DISK_SECTOR_BYTES, (i + run) * DISK_SECTOR_BYTES);
        const got = io(layer.path, 'read the disk', () => layer.file.pread(target, offset));
        if (got !== target.length) throw new DiskError('BV_DISK_DAMAGED', `${layer.path}: sectors ${first + i}..${first + i + run - 1} lie past the end of the file`);
      }
    }
    return out;
  }

  /**
   * The sectors first … first + count − 1 as runs stored one after another in the same file (or
   * all zeros, layer null), each read with one transfer: `i` sectors into the range, `run` long.
   */
  private runs(first: number, count: number): { layer: Layer | null; offset: number; i: number; run: number }[] {
    const runs: { layer: Layer | null; offset: number; i: number; run: number }[] = [];
    for (let i = 0; i < count; ) {
      const [layer, offset] = this.locate(first + i);
      let run = 1;
      while (i + run < count) {
        const [nextLayer, nextOffset] = this.locate(first + i + run);
        if (nextLayer !== layer || (layer !== null && nextOffset !== offset + run * DISK_SECTOR_BYTES)) break;
        run++;
      }
      runs.push({ layer, offset, i, run });
      i += run;
    }
    return runs;
  }

  /** Writes whole sectors from `first` into the top overlay (created now if needed). */
  write(first: number, data: Uint8Array): void {
    if (data.length === 0 || data.length % DISK_SECTOR_BYTES !== 0) {
      throw new DiskError('BV_DISK_BAD_ARGUMENT', `a write is whole sectors of ${DISK_SECTOR_BYTES} bytes, not ${data.length} bytes`);
    }
    this.check(first, data.length / DISK_SECTOR_BYTES);
    this.writableTop().write(first, data);
  }

  /** fsync of the top overlay: every write so far survives a host crash. */
  flush(): void {
    this.checkOpen();
    this.top?.sync();
  }

  /** Whether asynchronous transfers bypass the host page cache (DiskOptions.direct). */
  get direct(): boolean {
    return this.options.direct === true;
  }

  /**
   * read() on the thread pool, into `target` (count × 512 bytes): which file holds each sector
   * is decided now, from the chain's maps; the transfers (O_DIRECT ones for a direct chain) run
   * in parallel and the promise settles when all have.
   */
  readAsync(first: number, count: number, target: Uint8Array): Promise<void> {
    this.check(first, count);
    if (target.length !== count * DISK_SECTOR_BYTES) {
      throw new DiskError('BV_DISK_BAD_ARGUMENT', `a read of ${count} sectors needs ${count * DISK_SECTOR_BYTES} bytes, not ${target.length}`);
    }
    const transfers: Promise<void>[] = [];
    for (const { layer, offset, i, run } of this.runs(first, count)) {
      const part = target.subarray(i * DISK_SECTOR_BYTES, (i + run) * DISK_SECTOR_BYTES);
      if (layer === null) part.fill(0);
      else {
        const from = first + i;
        transfers.push(layer.dataFile.preadAsync(part, offset).then(
          (got) => {
            if (got !== part.length) throw new DiskError('BV_DISK_DAMAGED', `${layer.path}: sectors ${from}..${from + run - 1} lie past the end of the file`);
          },
          (error: unknown) => {
            throw new DiskError('BV_DISK_IO', `${layer.path}: cannot read the disk: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
          },
        ));
      }
    }
    return Promise.all(transfers).then(() => undefined);
  }

  /** write() on the thread pool (see the overlay's writeAsync): the top overlay is created now if needed. */
  writeAsync(first: number, data: Uint8Array): Promise<void> {
    if (data.length === 0 || data.length % DISK_SECTOR_BYTES !== 0) {
      throw new DiskError('BV_DISK_BAD_ARGUMENT', `a write is whole sectors of ${DISK_SECTOR_BYTES} bytes, not ${data.length} bytes`);
    }
    this.check(first, data.length / DISK_SECTOR_BYTES);
    return this.writableTop().writeAsync(first, data);
  }

  /** flush() on the thread pool: every write completed so far reaches stable storage. */
  async flushAsync(): Promise<void> {
    this.checkOpen();
    const top = this.top;
    if (top === null) return;
    try {
      await top.file.syncAsync();
    } catch (error) {
      throw new DiskError('BV_DISK_IO', `${top.path}: cannot sync the overlay: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
  }

  /**
   * Seals the top overlay and returns the chain, which then never changes: later writes go to a
   * new overlay over it. An empty top is left as it is (the chain below already is the disk).
   */
  checkpoint(): DiskChainState {
    this.checkOpen();
    if (this.top !== null && (this.top.slots > 0 || this.layers.length === 0)) {
      this.top.seal();
      this.layers.push(this.top);
      this.top = null;
    }
    return {
      sectorBytes: DISK_SECTOR_BYTES,
      sectors: this.sectors,
      chain: this.layers.map((layer) => resolve(layer.path)),
      ids: this.layers.map((layer) => layer.id),
    };
  }

  /**
   * The chain as it is, without sealing anything: its files bottom first, the writable top (if
   * any) last. Unlike checkpoint()'s, this chain can still change, so it cannot be restored from;
   * it only names the disk (replication, whose backup keeps its own copy of the sectors).
   */
  describeChain(): DiskChainState {
    this.checkOpen();
    const files = this.top ? [...this.layers, this.top] : this.layers;
    return { sectorBytes: DISK_SECTOR_BYTES, sectors: this.sectors, chain: files.map((layer) => resolve(layer.path)), ids: files.map((layer) => layer.id) };
  }

  /** Closes every file; an overlay this chain created and never wrote is removed. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const layer of this.layers) layer.close();
    if (this.top) {
      this.top.close();
      if (this.top.createdHere && this.top.slots === 0) rmSync(this.top.path, { force: true });
    }
    this.layers = [];
    this.top = null;
  }

  private locate(sector: number): [Layer | null, number] {
    if (this.top !== null) {
      const offset = this.top.locate(sector);
      if (offset >= 0) return [this.top, offset];
    }
    for (let index = this.layers.length - 1; index >= 0; index--) {
      const layer = this.layers[index]!;
      const offset = layer.locate(sector);
      if (offset >= 0) return [layer, offset];
    }
    return [null, -1];
  }

  private writableTop(): OverlayFile {
    if (this.top !== null) return this.top;
    const below = this.layers.at(-1)!;
    const dir = this.options.overlayDir ?? dirname(resolve(this.layers[0]!.path));
    const stem = basename(this.layers[0]!.path);
    for (let n = 1; ; n++) {
      const path = join(dir, `${stem}.ovl.${n}`);
      if (existsSync(path)) continue;
      try {
        this.top = OverlayFile.create(path, this.sectors, below, this.options.direct === true);
        return this.top;
      } catch (error) {
        // Another process took the name between the check and the exclusive create: next one.
        if (error instanceof DiskError && (error.cause as NodeJS.ErrnoException | undefined)?.code === 'EEXIST') continue;
        throw error;
      }
    }
  }

  private check(first: number, count: number): void {
    this.checkOpen();
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 1 || first + count > this.sectors) {
      throw new DiskError('BV_DISK_RANGE', `sectors ${first}..${first + count - 1} are outside the disk (0..${this.sectors - 1})`);
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new DiskError('BV_DISK_CLOSED', 'the disk is closed');
  }
}

function parseChainState(state: unknown): DiskChainState {
  const bad = (what: string): DiskError => new DiskError('BV_DISK_BAD_STATE', `saved disk state ${what}`);
  if (typeof state !== 'object' || state === null) throw bad('is not an object');
  const { sectorBytes, sectors, chain, ids } = state as Record<string, unknown>;
  if (sectorBytes !== DISK_SECTOR_BYTES) throw bad(`has sector size ${String(sectorBytes)}, not ${DISK_SECTOR_BYTES}`);
  if (typeof sectors !== 'number' || !Number.isInteger(sectors) || sectors < 1 || sectors > MAX_DISK_SECTORS) throw bad(`has sector count ${String(sectors)}`);
  if (!Array.isArray(chain) || chain.length === 0 || !chain.every((path) => typeof path === 'string' && isAbsolute(path))) throw bad('needs a chain of absolute paths');
  if (!Array.isArray(ids) || ids.length !== chain.length || !ids.every((id) => typeof id === 'string' && /^[0-9a-f]{32}$/.test(id))) throw bad('needs one 32-digit id per file');
  return { sectorBytes, sectors, chain: chain as string[], ids: ids as string[] };
}
