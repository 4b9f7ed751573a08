/**
 * The shared statistics file of PARDA (docs/storage-io.md "The statistics file"): one 256-byte
 * block per host, at host_id × 256. A host writes only its own block (one pwrite) and reads
 * everyone's. The sequence number sits at both ends of a block and a CRC-32C covers it, so a read
 * that raced a write (a torn block) is detected and read again.
 */
import { closeSync, openSync } from 'node:fs';
import { crc32c, HostFile } from '../../native/index.ts';
import { StorageIoError } from './errors.ts';

/** Bytes per host block. */
export const STATS_BLOCK_BYTES = 256;
/** Slots in a file: host_id is 0 … STATS_MAX_HOSTS − 1. */
export const STATS_MAX_HOSTS = 256;
/** 'BVIO' little-endian. */
export const STATS_MAGIC = 0x4f495642;
/** The block layout's version. */
export const STATS_VERSION = 1;
/** Reads of a block that keep failing its checks before the block is skipped for this period. */
const TORN_RETRIES = 3;
/** Bytes of the host name kept in a block (UTF-8, NUL padded). */
const NAME_BYTES = 64;

/** Block flags. */
export const StatsFlag = {
  /** The host is running and its figures are current. */
  LIVE: 1,
  /** The host stopped cleanly: ignore the block at once (its share is free). */
  STOPPED: 2,
  /** The host applies the control law (off: it only measures, "uncontrolled"). */
  CONTROLLED: 4,
} as const;

/** What one host publishes each period. */
export interface HostBlock {
  /** The slot (host_id). */
  hostId: number;
  /** StatsFlag bits. */
  flags: number;
  /** Incremented at every write (the seqlock's sequence). */
  seq: number;
  /** The writer's process id. */
  pid: number;
  /** Random per controller: tells two writers of one slot apart. */
  instance: number;
  /** The writer's control period, ms. */
  periodMs: number;
  /** When it was written (ms since the epoch, Date.now()). */
  timestampMs: number;
  /** L(t): the host's latency average, normalised to 4 KiB, ns. */
  latencyNs: number;
  /** Mean raw (not normalised) latency of the period's IOs, ns. */
  rawLatencyNs: number;
  /** IOs completed in the period. */
  ioCount: number;
  /** The window w(t). */
  window: number;
  /** The IO shares of the host's VMs. */
  shares: number;
  /** IOs per second over the period. */
  iops: number;
  /** Bytes per second over the period. */
  bytesPerSecond: number;
  /** The threshold 𝓛 the host uses, ns. */
  thresholdNs: number;
  /** The host's name (the migration name, or the machine's). */
  name: string;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** Encodes a block (seq at both ends, CRC-32C of bytes 0 … 251 in the last word) into `target`. */
export function encodeBlock(block: HostBlock, target: Uint8Array = new Uint8Array(STATS_BLOCK_BYTES)): Uint8Array {
  target.fill(0);
  const view = new DataView(target.buffer, target.byteOffset, STATS_BLOCK_BYTES);
  view.setUint32(0, STATS_MAGIC, true);
  view.setUint16(4, STATS_VERSION, true);
  view.setUint16(6, block.flags, true);
  view.setUint32(8, block.seq >>> 0, true);
  view.setUint32(12, block.hostId, true);
  view.setUint32(16, block.pid >>> 0, true);
  view.setUint32(20, block.periodMs >>> 0, true);
  view.setFloat64(24, block.timestampMs, true);
  view.setFloat64(32, block.latencyNs, true);
  view.setFloat64(40, block.ioCount, true);
  view.setFloat64(48, block.window, true);
  view.setFloat64(56, block.shares, true);
  view.setFloat64(64, block.iops, true);
  view.setFloat64(72, block.bytesPerSecond, true);
  view.setFloat64(80, block.thresholdNs, true);
  view.setFloat64(88, block.rawLatencyNs, true);
  view.setUint32(96, block.instance >>> 0, true);
  const name = utf8Encoder.encode(block.name).subarray(0, NAME_BYTES);
  target.set(name, 104);
  view.setUint32(248, block.seq >>> 0, true);
  view.setUint32(252, crc32c(target.subarray(0, 252)), true);
  return target;
}

/**
 * Decodes a block: null for an empty slot (all zeros); 'torn' when its checks fail (sequence
 * ends differ, CRC wrong, bad magic or version, or a figure that is not a finite number ≥ 0).
 */
export function decodeBlock(bytes: Uint8Array): HostBlock | null | 'torn' {
  if (bytes.length < STATS_BLOCK_BYTES) return bytes.every((b) => b === 0) ? null : 'torn';
  const view = new DataView(bytes.buffer, bytes.byteOffset, STATS_BLOCK_BYTES);
  if (view.getUint32(0, true) === 0 && bytes.every((b) => b === 0)) return null;
  if (view.getUint32(0, true) !== STATS_MAGIC || view.getUint16(4, true) !== STATS_VERSION) return 'torn';
  if (view.getUint32(8, true) !== view.getUint32(248, true)) return 'torn';
  if (view.getUint32(252, true) !== crc32c(bytes.subarray(0, 252))) return 'torn';
  const number = (offset: number): number => view.getFloat64(offset, true);
  const figures = [24, 32, 40, 48, 56, 64, 72, 80, 88].map(number);
  if (!figures.every((f) => Number.isFinite(f) && f >= 0)) return 'torn';
  const nameBytes = bytes.subarray(104, 104 + NAME_BYTES);
  const end = nameBytes.indexOf(0);
  return {
    flags: view.getUint16(6, true),
    seq: view.getUint32(8, true),
    hostId: view.getUint32(12, true),
    pid: view.getUint32(16, true),
    periodMs: view.getUint32(20, true),
    timestampMs: figures[0]!,
    latencyNs: figures[1]!,
    ioCount: figures[2]!,
    window: figures[3]!,
    shares: figures[4]!,
    iops: figures[5]!,
    bytesPerSecond: figures[6]!,
    thresholdNs: figures[7]!,
    rawLatencyNs: figures[8]!,
    instance: view.getUint32(96, true),
    name: utf8Decoder.decode(end === -1 ? nameBytes : nameBytes.subarray(0, end)),
  };
}

/** What a read of the whole file found. */
export interface StatsSnapshot {
  /** Every block that decoded, by slot. */
  blocks: HostBlock[];
  /** Slots whose block stayed torn through the retries (skipped this time). */
  torn: number[];
  /** Torn reads met (each retried). */
  tornReads: number;
}

/**
 * One host's handle on the statistics file: writes its own block, reads all of them. The file is
 * created if missing (never truncated: other hosts' blocks live in it).
 */
export class StatsFile {
  private readonly file: HostFile;
  private readonly block = new Uint8Array(STATS_BLOCK_BYTES);

  constructor(
    /** The file's path. */
    readonly path: string,
    /** This host's slot. */
    readonly hostId: number,
  ) {
    if (!Number.isInteger(hostId) || hostId < 0 || hostId >= STATS_MAX_HOSTS) {
      throw new StorageIoError('BV_STORAGE_CONFIG', `host_id must be an integer 0 … ${STATS_MAX_HOSTS - 1}, got ${hostId}`);
    }
    try {
      // O_CREAT without O_TRUNC: HostFile's 'create' would empty a file other hosts write.
      closeSync(openSync(path, 'a'));
      this.file = HostFile.open(path, 'rw');
    } catch (error) {
      throw new StorageIoError('BV_STORAGE_FILE', `cannot open the IO statistics file ${path}: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Writes this host's block (one pwrite of STATS_BLOCK_BYTES at hostId × STATS_BLOCK_BYTES). */
  write(block: HostBlock): void {
    encodeBlock(block, this.block);
    this.file.pwrite(this.block, this.hostId * STATS_BLOCK_BYTES);
  }

  /** Reads one slot, retrying a torn read; null for an empty slot, 'torn' if every retry was torn. */
  readSlot(hostId: number): HostBlock | null | 'torn' {
    const bytes = new Uint8Array(STATS_BLOCK_BYTES);
    let decoded: HostBlock | null | 'torn' = 'torn';
    for (let attempt = 0; attempt < TORN_RETRIES && decoded === 'torn'; attempt++) {
      bytes.fill(0);
      this.file.pread(bytes, hostId * STATS_BLOCK_BYTES);
      decoded = decodeBlock(bytes);
    }
    return decoded;
  }

  /** Reads every slot in one pread, then rereads the torn ones. */
  readAll(): StatsSnapshot {
    const size = Math.min(this.file.size, STATS_MAX_HOSTS * STATS_BLOCK_BYTES);
    const slots = Math.ceil(size / STATS_BLOCK_BYTES);
    const bytes = new Uint8Array(slots * STATS_BLOCK_BYTES);
    this.file.pread(bytes, 0);
    const snapshot: StatsSnapshot = { blocks: [], torn: [], tornReads: 0 };
    for (let slot = 0; slot < slots; slot++) {
      let decoded = decodeBlock(bytes.subarray(slot * STATS_BLOCK_BYTES, (slot + 1) * STATS_BLOCK_BYTES));
      if (decoded === 'torn') {
        snapshot.tornReads++;
        decoded = this.readSlot(slot);
      }
      if (decoded === 'torn') snapshot.torn.push(slot);
      else if (decoded !== null) snapshot.blocks.push(decoded);
    }
    return snapshot;
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }
}
