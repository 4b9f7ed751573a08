/**
 * The block device (device type 5, docs/block-device.md): a disk of 512-byte sectors behind a
 * window of registers. Writing COMMAND performs the whole transfer at once — DMA to or from
 * guest-physical RAM with vm.readPhysical/writePhysical — so a run stays deterministic; the
 * outcome is in STATUS before the next instruction.
 *
 * Whose fault a failure is decides where it goes:
 * - The guest's (sector range, count, DMA outside RAM or into a page its resolver refuses, unknown
 *   command): an error STATUS, and nothing else. The host never crashes on what a guest writes.
 * - The disk files' (the host could not read, write or sync them): STATUS IO_ERROR, as a real
 *   disk reports a failed transfer, and an entry in the device's error log (hostErrors).
 * - The hypervisor's own (guest RAM could not be provided: out of host memory, a lazy restore
 *   that cannot read its checkpoint…): the VM stops with a host error (vm.stopReason) naming the
 *   command and the cause, and the error log has it too. The guest never sees such a failure.
 *
 * The disk is a DiskChain (devices/disk-image.ts). Its state component 'block' seals the top
 * overlay on save (a checkpoint or fork then refers to files that never change) and reopens the
 * saved chain, with a fresh top for new writes, on restore.
 */
import { isAbsolute } from 'node:path';
import { DeviceType } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import { KernelError, PageWaitError } from '../kernel/index.ts';
import type { MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { DISK_SECTOR_BYTES, DiskChain, DiskError, MAX_DISK_SECTORS, type DiskChainState, type DiskOptions } from './disk-image.ts';
import { DeviceStateError, describeSaved, stateInteger, stateList, stateRecord, stateU32 } from './state.ts';

/** Register offsets in the block window. */
export const BlockRegister = {
  /** First sector of the transfer, bits 31-0 (read/write). */
  SECTOR_LOW: 0,
  /** First sector, bits 63-32 (read/write). */
  SECTOR_HIGH: 4,
  /** Sectors to transfer, 1 … MAX_COUNT (read/write). */
  COUNT: 8,
  /** Guest-physical address of the DMA buffer in RAM (read/write). */
  DMA_ADDRESS: 12,
  /** Writing a BlockCommand performs it at once (write-only; reads 0). */
  COMMAND: 16,
  /** BlockStatus of the last command (read-only). */
  STATUS: 20,
  /** Sectors on the disk, bits 31-0 (read-only). */
  CAPACITY_LOW: 24,
  /** Sectors on the disk, bits 63-32 (read-only). */
  CAPACITY_HIGH: 28,
  /** Bytes per sector: 512 (read-only). */
  SECTOR_BYTES: 32,
  /** Most sectors per command: BLOCK_MAX_COUNT (read-only). */
  MAX_COUNT: 36,
} as const;

/** Values written to COMMAND. */
export const BlockCommand = {
  /** Copy sectors SECTOR … SECTOR + COUNT − 1 into RAM at DMA_ADDRESS. */
  READ: 1,
  /** Write COUNT × 512 bytes of RAM at DMA_ADDRESS to those sectors. */
  WRITE: 2,
  /** Make every write so far reach stable storage (fsync of the top overlay). */
  FLUSH: 3,
} as const;

/** Values read from STATUS: the outcome of the last command (OK at reset). */
export const BlockStatus = {
  /** The command succeeded. */
  OK: 0,
  /** Reserved for asynchronous completion; this device finishes every command at once. */
  BUSY: 1,
  /** COUNT is 0 or above MAX_COUNT, or the sectors run past the end of the disk. */
  BAD_RANGE: 2,
  /** The DMA buffer is not all guest RAM. */
  BAD_DMA: 3,
  /** COMMAND was not READ, WRITE or FLUSH. */
  BAD_COMMAND: 4,
  /** The host could not read or write the disk files (device.lastError and hostErrors say why). */
  IO_ERROR: 5,
} as const;

/** Entries the error log (BlockDevice.hostErrors) keeps: the most recent ones. */
export const BLOCK_HOST_ERROR_LOG = 32;

/** A host failure the block device met, as its error log records it. */
export interface BlockHostError {
  /** The command that met the failure. */
  command: 'read' | 'write' | 'flush';
  /** The command's first sector and sector count (0 and 0 for a flush). */
  sector: number;
  /** The command's sector count (0 for a flush). */
  count: number;
  /**
   * 'disk': the disk files failed; the guest saw IO_ERROR and the VM runs on. 'memory': the
   * hypervisor could not provide the DMA buffer's guest RAM; the VM was stopped with a host error.
   */
  kind: 'disk' | 'memory';
  /** The typed error met (DiskError for the files; a kernel or service error for memory). */
  error: BvError;
  /** Instructions the VM had retired when it happened. */
  atInstruction: number;
}

/** Most sectors one command moves (64 KiB): bounds the work done inside one guest store. */
export const BLOCK_MAX_COUNT = 128;

/** Counters of a block device (BlockDevice.stats). */
export interface BlockStats {
  /** READ commands completed. */
  reads: number;
  /** WRITE commands completed. */
  writes: number;
  /** FLUSH commands issued. */
  flushes: number;
  /** Sectors moved by completed READs. */
  sectorsRead: number;
  /** Sectors moved by completed WRITEs. */
  sectorsWritten: number;
  /** Commands that ended with an error STATUS. */
  errors: number;
}

/** What the 'block' state component saves: the registers and the (sealed) chain. */
export interface BlockState extends DiskChainState {
  /** The guest-writable registers and STATUS, as 32-bit unsigned values. */
  registers: {
    /** SECTOR_LOW. */
    sectorLow: number;
    /** SECTOR_HIGH. */
    sectorHigh: number;
    /** COUNT. */
    count: number;
    /** DMA_ADDRESS (guest-physical). */
    dmaAddress: number;
    /** STATUS (a BlockStatus value). */
    status: number;
  };
}

/** The disk to attach: a file path (raw image or top overlay) with options, or an opened chain. */
export interface BlockDiskOptions extends DiskOptions {
  /** The raw image or the top overlay of a chain. */
  path: string;
}

/**
 * The block device model (attachBlock creates and attaches it): registers in an MMIO window, a
 * DiskChain behind them, an error log of host failures. See the module comment for where each
 * kind of failure goes.
 */
export class BlockDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachBlock). */
  base = 0;
  /** Counters (see BlockStats). */
  readonly stats: BlockStats = { reads: 0, writes: 0, flushes: 0, sectorsRead: 0, sectorsWritten: 0, errors: 0 };
  /** The host error behind the last IO_ERROR status (or the last host error of any kind). */
  lastError: BvError | null = null;
  /** The error log: the last BLOCK_HOST_ERROR_LOG host failures, oldest first (see the file comment). */
  readonly hostErrors: BlockHostError[] = [];
  /** Host failures since attach (the log keeps only the last few). */
  hostErrorCount = 0;
  /**
   * Told after each transfer between the disk and guest RAM that completed: `bytes` of guest RAM
   * from `gpa` now equal the disk's sectors from `firstSector` (a read filled them, or a write
   * stored them). Memory-error recovery keeps clean copies of page-cache pages with it.
   */
  onTransfer: ((direction: 'read' | 'write', gpa: number, firstSector: number, bytes: number) => void) | null = null;
  /**
   * Told after each completed WRITE of the sectors it changed (one watcher: a live migration or
   * a replication notes the sectors to send again, as a write epoch does for guest pages).
   */
  onWrite: ((firstSector: number, count: number) => void) | null = null;
  /**
   * When set, saving the state names the chain as it is instead of sealing the top overlay
   * (DiskChain.describeChain): for a capture whose receiver gets the disk's sectors some other
   * way and replaces the chain (replication captures 40 times a second; sealing each time would
   * leave one overlay file per epoch). Such a state cannot be restored from these files.
   */
  unsealedSave = false;
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
      return this.diskIo('flush', 0, 0, () => this.disk.flush());
    }
    if (command !== BlockCommand.READ && command !== BlockCommand.WRITE) return BlockStatus.BAD_COMMAND;
    const first = this.sectorHigh * 2 ** 32 + this.sectorLow;
    if (this.count < 1 || this.count > BLOCK_MAX_COUNT || first + this.count > this.capacity) return BlockStatus.BAD_RANGE;
    const bytes = this.count * DISK_SECTOR_BYTES;
    if (this.dmaAddress + bytes > this.vm.memoryBytes) return BlockStatus.BAD_DMA;
    if (command === BlockCommand.READ) {
      let data: Uint8Array | null = null;
      const status = this.diskIo('read', first, this.count, () => (data = this.disk.read(first, this.count)));
      if (status !== BlockStatus.OK) return status;
      const dmaStatus = this.dma('read', first, () => this.vm.writePhysical(this.dmaAddress, data!));
      if (dmaStatus !== BlockStatus.OK) return dmaStatus;
      this.stats.reads++;
      this.stats.sectorsRead += this.count;
      this.onTransfer?.('read', this.dmaAddress, first, bytes);
      return BlockStatus.OK;
    }
    let data: Uint8Array | null = null;
    const dmaStatus = this.dma('write', first, () => (data = this.vm.readPhysical(this.dmaAddress, bytes)));
    if (dmaStatus !== BlockStatus.OK) return dmaStatus;
    const status = this.diskIo('write', first, this.count, () => this.disk.write(first, data!));
    if (status !== BlockStatus.OK) return status;
    this.stats.writes++;
    this.stats.sectorsWritten += this.count;
    this.onWrite?.(first, this.count);
    this.onTransfer?.('write', this.dmaAddress, first, bytes);
    return BlockStatus.OK;
  }

  /**
   * Moves the DMA buffer. RAM the kernel says the guest cannot have (BV_BAD_GPA: a page its resolver
   * refuses) is the guest's BAD_DMA. Any other typed failure is the host's (out of host
   * memory, a lazy restore's read error…): the VM stops with a host error and the log records it.
   * An untyped error is a bug and propagates (the run loop stops the VM with it).
   */
  private dma(command: 'read' | 'write', first: number, transfer: () => void): number {
    try {
      transfer();
      return BlockStatus.OK;
    } catch (error) {
      if (error instanceof KernelError && error.code === 'BV_BAD_GPA') return BlockStatus.BAD_DMA;
      // A buffer page still on a post-copy source: nothing of the command is kept (a read's
      // partial fill is rewritten), so the COMMAND store runs again once the page is here.
      if (error instanceof PageWaitError) throw error;
      if (!(error instanceof BvError)) throw error;
      this.logHostError({ command, sector: first, count: this.count, kind: 'memory', error });
      const buffer = `guest-physical 0x${this.dmaAddress.toString(16)}+${this.count * DISK_SECTOR_BYTES}`;
      this.vm.hostError(`block device: ${command} of sectors ${first}+${this.count} could not ${command === 'read' ? 'fill' : 'read'} its DMA buffer at ${buffer}: ${error.message}`, error);
      return BlockStatus.IO_ERROR;
    }
  }

  /** Disk failures become IO_ERROR for the guest and an error-log entry for the host; anything untyped is a bug and propagates. */
  private diskIo(command: BlockHostError['command'], first: number, count: number, operation: () => void): number {
    try {
      operation();
      return BlockStatus.OK;
    } catch (error) {
      if (!(error instanceof BvError)) throw error;
      this.logHostError({ command, sector: first, count, kind: 'disk', error });
      return BlockStatus.IO_ERROR;
    }
  }

  private logHostError(entry: Omit<BlockHostError, 'atInstruction'>): void {
    this.lastError = entry.error;
    this.hostErrorCount++;
    this.hostErrors.push({ ...entry, atInstruction: this.vm.instructionsRetired });
    if (this.hostErrors.length > BLOCK_HOST_ERROR_LOG) this.hostErrors.shift();
  }

  /** Seals the disk's top overlay and returns the registers and the chain. */
  saveState(): BlockState {
    return {
      ...(this.unsealedSave ? this.disk.describeChain() : this.disk.checkpoint()),
      registers: { sectorLow: this.sectorLow, sectorHigh: this.sectorHigh, count: this.count, dmaAddress: this.dmaAddress, status: this.status },
    };
  }

  /**
   * Checks a saved state without touching any file: the chain's shape (DeviceStateError naming
   * the field) and its size against this device (BV_DISK_MISMATCH). Returns the registers.
   */
  checkState(state: unknown): BlockState['registers'] {
    const record = stateRecord(state, 'block');
    if (record['sectorBytes'] !== DISK_SECTOR_BYTES) throw new DeviceStateError('block', 'sectorBytes', `is not ${DISK_SECTOR_BYTES} (got ${describeSaved(record['sectorBytes'])})`);
    const sectors = stateInteger(record['sectors'], 'block', 'sectors', 1, MAX_DISK_SECTORS);
    const chain = savedChain(record);
    stateList(record['ids'], 'block', 'ids', chain.length).forEach((id, index) => {
      if (typeof id !== 'string' || !/^[0-9a-f]{32}$/.test(id)) throw new DeviceStateError('block', `ids[${index}]`, `is not a 32-digit file id (got ${describeSaved(id)})`);
    });
    const registers = stateRecord(record['registers'], 'block', 'registers');
    const register = (name: keyof BlockState['registers']): number => stateU32(registers[name], 'block', `registers.${name}`);
    const saved = { sectorLow: register('sectorLow'), sectorHigh: register('sectorHigh'), count: register('count'), dmaAddress: register('dmaAddress'), status: register('status') };
    if (!(Object.values(BlockStatus) as number[]).includes(saved.status)) {
      throw new DeviceStateError('block', 'registers.status', `is not a STATUS value (got ${saved.status})`);
    }
    if (sectors !== this.capacity) {
      throw new DiskError('BV_DISK_MISMATCH', `the saved disk has ${sectors} sectors, this machine's block device was attached with ${this.capacity}`);
    }
    return saved;
  }

  /** Reopens the saved chain (read-only, with a new top for writes) and the registers. */
  restoreState(state: unknown): void {
    const registers = this.checkState(state);
    const disk = DiskChain.restore(state, this.diskOptions);
    if (disk.sectors !== this.capacity) {
      disk.close();
      throw new DiskError('BV_DISK_MISMATCH', `the saved disk has ${disk.sectors} sectors, this machine's block device was attached with ${this.capacity}`);
    }
    this.disk.close();
    this.disk = disk;
    this.sectorLow = registers.sectorLow;
    this.sectorHigh = registers.sectorHigh;
    this.count = registers.count;
    this.dmaAddress = registers.dmaAddress;
    this.status = registers.status;
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

/** The chain of a saved 'block' state: a non-empty list of absolute paths, bottom first. */
function savedChain(record: Record<string, unknown>): string[] {
  const chain = record['chain'];
  if (!Array.isArray(chain) || chain.length === 0) throw new DeviceStateError('block', 'chain', `is not a non-empty list of files (got ${describeSaved(chain)})`);
  chain.forEach((path, index) => {
    if (typeof path !== 'string' || !isAbsolute(path) || path.includes('\0')) throw new DeviceStateError('block', `chain[${index}]`, `is not an absolute path (got ${describeSaved(path)})`);
  });
  return chain as string[];
}

/**
 * The bottom file of a saved 'block' state's chain (a raw image or the first overlay): attach
 * the block device on it before restoring. Throws DeviceStateError when the chain is malformed.
 */
export function savedBlockDisk(state: unknown): string {
  return savedChain(stateRecord(state, 'block'))[0]!;
}

/** Opens a disk for attachBlock (so callers can open it before attaching anything else). */
export function openBlockDisk(disk: string | BlockDiskOptions): {
  /** The opened chain (close it if it is not attached). */
  chain: DiskChain;
  /** The options it was opened with (a restore reopens saved chains with them). */
  options: DiskOptions;
} {
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
      check: (state) => void device.checkState(state),
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
