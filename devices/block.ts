/**
 * The block device (device type 5, docs/block-device.md): a disk of 512-byte sectors behind a
 * window of registers. Writing COMMAND performs the whole transfer at once — DMA to or from
 * guest-physical RAM with vm.readPhysical/writePhysical — so a run stays deterministic; the
 * outcome is in STATUS before the next instruction. A bad request (sector range, count, DMA
 * outside RAM, unknown command) or a host I/O failure sets an error STATUS; the host never
 * crashes on what a guest writes.
 *
 * The disk is a DiskChain (devices/disk-image.ts). Its state component 'block' seals the top
 * overlay on save (a checkpoint or fork then refers to files that never change) and reopens the
 * saved chain, with a fresh top for new writes, on restore.
 */
import { DeviceType } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import type { MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { DISK_SECTOR_BYTES, DiskChain, DiskError, type DiskChainState, type DiskOptions } from './disk-image.ts';

/** Register offsets in the block window. */
export const BlockRegister = {
  SECTOR_LOW: 0,
  SECTOR_HIGH: 4,
  COUNT: 8,
  DMA_ADDRESS: 12,
  COMMAND: 16,
  STATUS: 20,
  CAPACITY_LOW: 24,
  CAPACITY_HIGH: 28,
  SECTOR_BYTES: 32,
  MAX_COUNT: 36,
} as const;

/** Values written to COMMAND. */
export const BlockCommand = { READ: 1, WRITE: 2, FLUSH: 3 } as const;

/** Values read from STATUS: the outcome of the last command (OK at reset). */
export const BlockStatus = {
  OK: 0,
  /** Reserved for asynchronous completion; this device finishes every command at once. */
  BUSY: 1,
  /** COUNT is 0 or above MAX_COUNT, or the sectors run past the end of the disk. */
  BAD_RANGE: 2,
  /** The DMA buffer is not all guest RAM. */
  BAD_DMA: 3,
  /** COMMAND was not READ, WRITE or FLUSH. */
  BAD_COMMAND: 4,
  /** The host could not read or write the disk files (device.lastError says why). */
  IO_ERROR: 5,
} as const;

/** Most sectors one command moves (64 KiB): bounds the work done inside one guest store. */
export const BLOCK_MAX_COUNT = 128;

export interface BlockStats {
  reads: number;
  writes: number;
  flushes: number;
  sectorsRead: number;
  sectorsWritten: number;
  /** Commands that ended with an error STATUS. */
  errors: number;
}

/** What the 'block' state component saves: the registers and the (sealed) chain. */
export interface BlockState extends DiskChainState {
  registers: { sectorLow: number; sectorHigh: number; count: number; dmaAddress: number; status: number };
}

/** The disk to attach: a file path (raw image or top overlay) with options, or an opened chain. */
export interface BlockDiskOptions extends DiskOptions {
  path: string;
}

export class BlockDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachBlock). */
  base = 0;
  readonly stats: BlockStats = { reads: 0, writes: 0, flushes: 0, sectorsRead: 0, sectorsWritten: 0, errors: 0 };
  /** The host error behind the last IO_ERROR status. */
  lastError: BvError | null = null;
  private sectorLow = 0;
  private sectorHigh = 0;
  private count = 0;
  private dmaAddress = 0;
  private status: number = BlockStatus.OK;

  constructor(
    private readonly vm: Vm,
    /** The disk; replaced by a restore. */
    public disk: DiskChain,
    private readonly diskOptions: DiskOptions = {},
  ) {}

  /** Sectors on the disk (fixed at attach: the device table publishes it). */
  get capacity(): number {
    return this.disk.sectors;
  }

  read(_vcpu: Vcpu, offset: number): number {
    switch (offset) {
      case BlockRegister.SECTOR_LOW:
        return this.sectorLow | 0;
      case BlockRegister.SECTOR_HIGH:
        return this.sectorHigh | 0;
      case BlockRegister.COUNT:
        return this.count | 0;
      case BlockRegister.DMA_ADDRESS:
        return this.dmaAddress | 0;
      case BlockRegister.STATUS:
        return this.status;
      case BlockRegister.CAPACITY_LOW:
        return this.capacity % 2 ** 32 | 0;
      case BlockRegister.CAPACITY_HIGH:
        return Math.floor(this.capacity / 2 ** 32) | 0;
      case BlockRegister.SECTOR_BYTES:
        return DISK_SECTOR_BYTES;
      case BlockRegister.MAX_COUNT:
        return BLOCK_MAX_COUNT;
      default:
        return 0; // COMMAND is write-only; other offsets are empty
    }
  }

  write(_vcpu: Vcpu, offset: number, value: number): boolean {
    switch (offset) {
      case BlockRegister.SECTOR_LOW:
        this.sectorLow = value >>> 0;
        break;
      case BlockRegister.SECTOR_HIGH:
        this.sectorHigh = value >>> 0;
        break;
      case BlockRegister.COUNT:
        this.count = value >>> 0;
        break;
      case BlockRegister.DMA_ADDRESS:
        this.dmaAddress = value >>> 0;
        break;
      case BlockRegister.COMMAND:
        this.status = this.execute(value >>> 0);
        if (this.status !== BlockStatus.OK) this.stats.errors++;
        break;
    }
    // Read-only registers and empty offsets ignore writes (SPEC §13.2).
    return true;
  }

  /** Performs one command; returns the STATUS it leaves. */
  private execute(command: number): number {
    if (command === BlockCommand.FLUSH) {
      this.stats.flushes++;
      return this.hostIo(() => this.disk.flush());
    }
    if (command !== BlockCommand.READ && command !== BlockCommand.WRITE) return BlockStatus.BAD_COMMAND;
    const first = this.sectorHigh * 2 ** 32 + this.sectorLow;
    if (this.count < 1 || this.count > BLOCK_MAX_COUNT || first + this.count > this.capacity) return BlockStatus.BAD_RANGE;
    const bytes = this.count * DISK_SECTOR_BYTES;
    if (this.dmaAddress + bytes > this.vm.memoryBytes) return BlockStatus.BAD_DMA;
    if (command === BlockCommand.READ) {
      let data: Uint8Array | null = null;
      const status = this.hostIo(() => (data = this.disk.read(first, this.count)));
      if (status !== BlockStatus.OK) return status;
      if (!this.dma(() => this.vm.writePhysical(this.dmaAddress, data!))) return BlockStatus.BAD_DMA;
      this.stats.reads++;
      this.stats.sectorsRead += this.count;
      return BlockStatus.OK;
    }
    let data: Uint8Array | null = null;
    if (!this.dma(() => (data = this.vm.readPhysical(this.dmaAddress, bytes)))) return BlockStatus.BAD_DMA;
    const status = this.hostIo(() => this.disk.write(first, data!));
    if (status !== BlockStatus.OK) return status;
    this.stats.writes++;
    this.stats.sectorsWritten += this.count;
    return BlockStatus.OK;
  }

  /** A guest-physical access the kernel refuses (a page nobody can produce) is a DMA error. */
  private dma(transfer: () => void): boolean {
    try {
      transfer();
      return true;
    } catch (error) {
      if (error instanceof BvError && !(error instanceof DiskError)) return false;
      throw error;
    }
  }

  /** Disk failures become IO_ERROR (kept in lastError); anything else is a bug and propagates. */
  private hostIo(operation: () => void): number {
    try {
      operation();
      return BlockStatus.OK;
    } catch (error) {
      if (!(error instanceof BvError)) throw error;
      this.lastError = error;
      return BlockStatus.IO_ERROR;
    }
  }

  /** Seals the disk's top overlay and returns the registers and the chain. */
  saveState(): BlockState {
    return {
      ...this.disk.checkpoint(),
      registers: { sectorLow: this.sectorLow, sectorHigh: this.sectorHigh, count: this.count, dmaAddress: this.dmaAddress, status: this.status },
    };
  }

  /** Reopens the saved chain (read-only, with a new top for writes) and the registers. */
  restoreState(state: unknown): void {
    const registers = (state as { registers?: unknown } | null)?.registers as Record<string, unknown> | undefined;
    const names = ['sectorLow', 'sectorHigh', 'count', 'dmaAddress', 'status'] as const;
    if (typeof registers !== 'object' || registers === null || !names.every((name) => Number.isInteger(registers[name]) && (registers[name] as number) >= 0 && (registers[name] as number) <= 0xffff_ffff)) {
      throw new DiskError('BV_DISK_BAD_STATE', 'saved block state needs the five registers as 32-bit values');
    }
    const disk = DiskChain.restore(state, this.diskOptions);
    if (disk.sectors !== this.capacity) {
      disk.close();
      throw new DiskError('BV_DISK_MISMATCH', `the saved disk has ${disk.sectors} sectors, this machine's block device was attached with ${this.capacity}`);
    }
    this.disk.close();
    this.disk = disk;
    this.sectorLow = registers['sectorLow'] as number;
    this.sectorHigh = registers['sectorHigh'] as number;
    this.count = registers['count'] as number;
    this.dmaAddress = registers['dmaAddress'] as number;
    this.status = registers['status'] as number;
  }

  /** VM reset: registers to zero; the disk keeps its contents. */
  reset(): void {
    this.sectorLow = 0;
    this.sectorHigh = 0;
    this.count = 0;
    this.dmaAddress = 0;
    this.status = BlockStatus.OK;
  }

  /** Closes the disk files (the VM must not run again with this device). */
  close(): void {
    this.disk.close();
  }
}

/** Opens a disk for attachBlock (so callers can open it before attaching anything else). */
export function openBlockDisk(disk: string | BlockDiskOptions): { chain: DiskChain; options: DiskOptions } {
  const { path, ...options } = typeof disk === 'string' ? { path: disk } : disk;
  return { chain: DiskChain.open(path, options), options };
}

/**
 * Attaches the block device (one per VM: its state is 'block'); info = the sector count. Takes
 * over an opened chain, or opens `disk` (a raw image or the top overlay of a chain).
 */
export function attachBlock(vm: Vm, disk: string | BlockDiskOptions | { chain: DiskChain; options: DiskOptions }): BlockDevice {
  const opened = typeof disk === 'object' && 'chain' in disk ? disk : openBlockDisk(disk);
  try {
    const device = new BlockDevice(vm, opened.chain, opened.options);
    vm.registerState('block', {
      version: 1,
      save: () => device.saveState(),
      restore: (state) => device.restoreState(state),
    });
    device.base = vm.attachDevice({ type: DeviceType.BLOCK, name: 'block', info: Math.min(device.capacity, 0xffff_ffff) }, device);
    vm.onReset(() => device.reset());
    return device;
  } catch (error) {
    opened.chain.close();
    throw error;
  }
}
