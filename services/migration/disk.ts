/**
 * A VM's disk across hosts (live migration and replication, docs/migration.md "Disks"): the
 * sectors its overlays hold are sent, the raw base image stays where it is (shared storage, the
 * same file on both hosts, checked by identity).
 *
 * - The source describes the disk in BEGIN (`MigratedDisk`: sectors, and the base's path, identity
 *   and size), sends every sector an overlay holds while the guest runs, and then the sectors the
 *   guest wrote since (a `DirtySectorLog` on the block device, the disk's write epoch).
 * - The destination opens the same base (refusing a different file), writes the sectors into an
 *   overlay of its own in its disk directory, and at the state seals it and names it in the block
 *   device's saved state in place of the source's chain: the restored device reads the base plus
 *   that overlay and writes into a new overlay over it.
 *
 * DISK frame payload (little-endian): u32 run count, then per run u32 first sector and u32 sector
 * count, then the runs' bytes one after another (512 bytes per sector).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { BLOCK_MAX_COUNT, DISK_SECTOR_BYTES, DiskChain, type BlockDevice, type DiskChainState } from '../../devices/index.ts';
import { BvError } from '../../guest-isa/errors.ts';
import type { VmState } from '../../kernel/index.ts';
import type { JsonObject } from '../checkpoint/format.ts';
import { MigrationError } from './errors.ts';

/** Payload bytes of one DISK frame at most (sector data; the run headers come on top). */
export const DISK_FRAME_BYTES = 256 * 1024;
/** Bytes of one run header: u32 first sector, u32 sector count. */
const RUN_BYTES = 8;

/** What BEGIN says about the VM's disk (JSON). */
export interface MigratedDisk {
  /** Sectors on the disk. */
  sectors: number;
  /** The raw base image, which stays on shared storage; null when the disk has none (a blank disk: every written sector is in overlays). */
  base: {
    /** Its absolute path on the source (the destination opens the same path). */
    path: string;
    /** Its identity: the first 16 bytes of its SHA-256, hex (docs/block-device.md "Identity"). */
    id: string;
    /** Its size in bytes. */
    bytes: number;
  } | null;
}

/**
 * The sectors a block device writes, noted once each between take()s: the disk's counterpart of a
 * write epoch (DirtyPageLog). One log per device at a time.
 */
export class DirtySectorLog {
  readonly #flags: Uint8Array;
  #list: number[] = [];
  #hook: ((first: number, count: number) => void) | null = null;

  constructor(
    /** The block device whose writes are noted. */
    readonly device: BlockDevice,
  ) {
    this.#flags = new Uint8Array(device.capacity);
  }

  /** Starts noting writes. */
  open(): void {
    if (this.device.onWrite !== null) throw new MigrationError('BV_MIG_BAD_REQUEST', 'another migration or replication already follows the writes of this disk');
    const flags = this.#flags;
    this.#hook = (first, count) => {
      for (let sector = first; sector < first + count; sector++) {
        if (flags[sector] === 0) {
          flags[sector] = 1;
          this.#list.push(sector);
        }
      }
    };
    this.device.onWrite = this.#hook;
  }

  /** The sectors written since open() or the last take(), ascending; noting goes on. */
  take(): number[] {
    const list = this.#list;
    this.#list = [];
    for (const sector of list) this.#flags[sector] = 0;
    return list.sort((a, b) => a - b);
  }

  /** Stops noting writes (idempotent). */
  close(): void {
    if (this.#hook !== null && this.device.onWrite === this.#hook) this.device.onWrite = null;
    this.#hook = null;
    this.take();
  }
}

/** BEGIN's description of `device`'s disk. */
export function describeDisk(device: BlockDevice): MigratedDisk {
  const bottom = device.disk.describe()[0];
  if (bottom === undefined || bottom.kind !== 'raw') return { sectors: device.capacity, base: null };
  return { sectors: device.capacity, base: { path: resolve(bottom.path), id: bottom.id, bytes: bottom.sectorsHeld * DISK_SECTOR_BYTES } };
}

/** Checks BEGIN's `disk` field (a malformed one is the peer's protocol error). */
export function parseMigratedDisk(value: unknown, where: string): MigratedDisk | null {
  if (value === undefined || value === null) return null;
  const bad = (what: string): MigrationError => new MigrationError('BV_MIG_PROTOCOL', `${where}: the disk description ${what}`);
  if (typeof value !== 'object' || Array.isArray(value)) throw bad('is not an object');
  const { sectors, base } = value as Record<string, unknown>;
  if (typeof sectors !== 'number' || !Number.isInteger(sectors) || sectors < 1 || sectors > 2 ** 24) throw bad(`has sector count ${String(sectors)}`);
  if (base === null || base === undefined) return { sectors, base: null };
  const { path, id, bytes } = base as Record<string, unknown>;
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0')) throw bad('names no absolute base path');
  if (typeof id !== 'string' || !/^[0-9a-f]{32}$/.test(id)) throw bad('has no 32-digit base identity');
  if (typeof bytes !== 'number' || bytes !== sectors * DISK_SECTOR_BYTES) throw bad(`gives the base ${String(bytes)} bytes for ${sectors} sectors`);
  return { sectors, base: { path, id, bytes } };
}

/** Where a received disk's block device is attached (receivingDisk). */
export interface ReceivingDisk {
  /** The file to attach it on: the shared raw base, or a blank disk made in the disk directory. */
  path: string;
  /** Where its overlays go (the received one first). */
  overlayDir: string;
}

/**
 * Where the destination attaches the block device of a VM whose disk arrives: the same base image
 * (checked: same size and identity, else BV_MIG_DISK naming both), or a new blank overlay, with
 * new overlays — the received one first — in `diskDir` (default: the base image's directory).
 */
export function receivingDisk(disk: MigratedDisk, diskDir: string | null, name: string): ReceivingDisk {
  const dir = diskDir ?? (disk.base === null ? null : dirname(disk.base.path));
  if (dir === null) throw new MigrationError('BV_MIG_DISK', `${name}: its disk has no base image, so its overlay must be written here, and this host names no disk directory (migration.disk_dir)`);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (error) {
    throw new MigrationError('BV_MIG_DISK', `${name}: the disk directory ${dir} cannot be made: ${(error as Error).message}`, { cause: error });
  }
  if (disk.base === null) {
    const path = join(dir, `${safeName(name)}.${randomBytes(4).toString('hex')}.disk`);
    diskIo(name, 'create its blank disk', () => DiskChain.createBlank(path, disk.sectors).close());
    return { path, overlayDir: dir };
  }
  const base = disk.base;
  const shared = `the base image ${base.path} (${base.bytes} bytes, id ${base.id}) must be the same file on both hosts (shared storage)`;
  if (!existsSync(base.path)) throw new MigrationError('BV_MIG_DISK', `${name}: ${shared}, and this host has no file there`);
  const here = diskIo(name, `open ${base.path}`, () => {
    const chain = DiskChain.open(base.path);
    try {
      return chain.describe();
    } finally {
      chain.close();
    }
  });
  const file = here[0]!;
  if (here.length !== 1 || file.kind !== 'raw' || file.id !== base.id || file.sectorsHeld * DISK_SECTOR_BYTES !== base.bytes) {
    throw new MigrationError('BV_MIG_DISK', `${name}: ${shared}; the file there is ${here.length !== 1 || file.kind !== 'raw' ? 'an overlay, not a raw image' : `${file.sectorsHeld * DISK_SECTOR_BYTES} bytes with id ${file.id}`}`);
  }
  return { path: base.path, overlayDir: dir };
}

function safeName(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64) || 'vm';
}

function diskIo<T>(name: string, what: string, operation: () => T): T {
  try {
    return operation();
  } catch (error) {
    if (error instanceof MigrationError) throw error;
    if (!(error instanceof BvError)) throw error;
    throw new MigrationError('BV_MIG_DISK', `${name}: cannot ${what}: ${error.message}`, { cause: error });
  }
}

/**
 * DISK frame payloads carrying `sectors` (ascending) of `disk`, read as they are now, runs of
 * consecutive sectors up to BLOCK_MAX_COUNT, about DISK_FRAME_BYTES of data per frame. A lazy
 * sequence: each frame is read when it is asked for.
 */
export function* diskFrames(disk: DiskChain, sectors: readonly number[], name: string): Generator<Uint8Array, void, undefined> {
  let index = 0;
  while (index < sectors.length) {
    const runs: Array<[number, number]> = [];
    let dataBytes = 0;
    while (index < sectors.length && dataBytes < DISK_FRAME_BYTES) {
      const first = sectors[index]!;
      let count = 1;
      while (index + count < sectors.length && sectors[index + count] === first + count && count < BLOCK_MAX_COUNT) count++;
      runs.push([first, count]);
      dataBytes += count * DISK_SECTOR_BYTES;
      index += count;
    }
    const payload = new Uint8Array(4 + runs.length * RUN_BYTES + dataBytes);
    const view = new DataView(payload.buffer);
    view.setUint32(0, runs.length, true);
    let data = 4 + runs.length * RUN_BYTES;
    runs.forEach(([first, count], i) => {
      view.setUint32(4 + i * RUN_BYTES, first, true);
      view.setUint32(8 + i * RUN_BYTES, count, true);
      payload.set(diskIo(name, `read sectors ${first}+${count} of its disk`, () => disk.read(first, count)), data);
      data += count * DISK_SECTOR_BYTES;
    });
    yield payload;
  }
}

/** A run of a DISK frame: sectors from `first`, their bytes. */
export interface DiskRun {
  /** First sector. */
  first: number;
  /** Whole sectors. */
  data: Uint8Array;
}

/** Decodes and checks a DISK frame against a disk of `sectors`; a malformed one is BV_MIG_PROTOCOL. */
export function decodeDiskFrame(payload: Uint8Array, sectors: number, where: string): DiskRun[] {
  const bad = (what: string): MigrationError => new MigrationError('BV_MIG_PROTOCOL', `${where}: a DISK frame ${what}`);
  if (payload.length < 4) throw bad('is too short');
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const count = view.getUint32(0, true);
  let data = 4 + count * RUN_BYTES;
  if (count === 0 || data > payload.length) throw bad(`announces ${count} runs, which do not fit its ${payload.length} bytes`);
  const runs: DiskRun[] = [];
  for (let i = 0; i < count; i++) {
    const first = view.getUint32(4 + i * RUN_BYTES, true);
    const length = view.getUint32(8 + i * RUN_BYTES, true);
    if (length < 1 || length > BLOCK_MAX_COUNT || first + length > sectors) throw bad(`has a run of sectors ${first}+${length} outside the disk's ${sectors} sectors`);
    const bytes = length * DISK_SECTOR_BYTES;
    if (data + bytes > payload.length) throw bad('holds fewer bytes than its runs');
    runs.push({ first, data: payload.subarray(data, data + bytes) });
    data += bytes;
  }
  if (data !== payload.length) throw bad(`has ${payload.length - data} bytes after its runs`);
  return runs;
}

/** Writes received runs into the disk (its writable top overlay); a failure is BV_MIG_DISK. */
export function writeDiskRuns(disk: DiskChain, runs: readonly DiskRun[], name: string): void {
  for (const run of runs) diskIo(name, `write sectors ${run.first}+${run.data.length / DISK_SECTOR_BYTES} of the received disk`, () => disk.write(run.first, run.data));
}

/**
 * The received disk becomes the VM's: `disk` (base plus the overlay the sectors went into) is
 * sealed, and the saved block state in `state` names it instead of the source's chain (the
 * registers are kept). Call before checking and restoring the state.
 */
export function adoptReceivedDisk(state: VmState, disk: DiskChain | DiskChainState, name: string): void {
  const block = state.components['block'];
  if (block === undefined || typeof block.state !== 'object' || block.state === null) {
    throw new MigrationError('BV_MIG_STATE', `${name}: the source sent a disk, but its state has no block device`);
  }
  const sealed = disk instanceof DiskChain ? diskIo(name, 'seal the received disk', () => disk.checkpoint()) : disk;
  block.state = { ...(block.state as JsonObject), chain: sealed.chain, ids: sealed.ids };
}

/** A failed receive: closes the disk and removes the overlay the sectors went into (nothing refers to it). */
export function discardReceivedDisk(disk: DiskChain): void {
  const top = disk.topPath;
  disk.close();
  if (top !== null) rmSync(top, { force: true });
}
