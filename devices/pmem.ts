/**
 * Persistent memory (device type 8, PMEM; docs/pmem.md): a byte-addressable guest-physical range
 * outside RAM whose bytes are a file. The range is host-pool frames with the file mapped SHARED
 * over them (GuestMemory.attachFileRange), so guest loads and stores are the file's page cache,
 * at memory speed; a guest FLUSH (an MMIO write naming a byte range) msyncs that range, and when
 * the store to FLUSH retires the range's stores are durable.
 *
 * The device's 4 KiB window only describes the range and carries the flush; the bytes themselves
 * are at BASE. Checkpoints, live snapshots, migration and fork of a VM with persistent memory are
 * refused (the 'pmem' state component refuses to be saved): its contents live in the file, not
 * in the VM's state, and two copies of a VM must not write one file.
 */
import { closeSync, ftruncateSync, openSync, statSync } from 'node:fs';
import { DeviceType, PAGE_SIZE } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import type { Gpa, MmioDevice, Vcpu, Vm } from '../kernel/index.ts';

/** Register offsets in the PMEM window. */
export const PmemRegister = {
  /** Guest-physical address of the range's first byte (read-only). */
  BASE: 0x00,
  /** The range's size in bytes (read-only). */
  SIZE: 0x04,
  /** First byte to flush, as an offset into the range (read/write). */
  FLUSH_OFFSET: 0x08,
  /** Bytes to flush (read/write). */
  FLUSH_LENGTH: 0x0c,
  /** Write (any value): flush [FLUSH_OFFSET, FLUSH_OFFSET + FLUSH_LENGTH). Reads 0. */
  FLUSH: 0x10,
  /** Result of the last FLUSH: a PmemStatus (read-only). */
  STATUS: 0x14,
  /** Flushes completed so far, wrapping at 2^32 (read-only). */
  FLUSHES: 0x18,
} as const;

/** STATUS values. */
export const PmemStatus = {
  /** The range is durable (or no flush was asked for yet). */
  OK: 0,
  /** FLUSH_OFFSET + FLUSH_LENGTH is past SIZE: nothing was flushed. */
  BAD_RANGE: 1,
  /** msync failed (the host's storage): the range may not be durable. */
  IO_ERROR: 2,
} as const;

/** Where the first persistent-memory range goes by default: the first 4 MiB boundary at or above the end of RAM. */
export const PMEM_ALIGNMENT = 4 * 1024 * 1024;
/** Largest range one device offers (the SIZE register is 32 bits; the guest-physical space ends at 0xf0000000 anyway). */
export const PMEM_MAX_BYTES = 0xf000_0000 - PMEM_ALIGNMENT;

/** A persistent-memory configuration the host refuses (BV_PMEM), or a state that cannot be saved (BV_PMEM_NOT_CAPTURED). */
export class PmemError extends BvError {
  constructor(
    code: 'BV_PMEM' | 'BV_PMEM_NOT_CAPTURED',
    message: string,
  ) {
    super(code, message);
  }
}

/** How attachPmem backs the range. */
export interface PmemOptions {
  /** The backing file: a regular file of exactly `bytes` bytes (or absent, with `create`). */
  path: string;
  /** The range's size in bytes: a positive multiple of 4 KiB. */
  bytes: number;
  /** Create the file (zero-filled, `bytes` long) if it does not exist; an existing file must still have exactly `bytes`. Default false. */
  create?: boolean;
  /** Guest-physical base (4 KiB-aligned, above RAM); default: the first 4 MiB boundary after RAM and any earlier range. */
  gpa?: number;
}

/** Counters of one PMEM device. */
export interface PmemStats {
  /** FLUSH writes carried out (any status). */
  flushes: number;
  /** Bytes the guest asked to flush, summed. */
  bytesFlushed: number;
  /** Host wall time spent in msync, in ms. */
  flushMs: number;
  /** The host's message for the last flush that failed (STATUS = IO_ERROR), or null. */
  lastError: string | null;
}

/**
 * Checks a persistent-memory configuration against the file system without changing anything,
 * except that `create` makes a missing file. Throws PmemError with one line saying what is wrong.
 */
export function checkPmemOptions(options: PmemOptions, vmName = 'vm'): void {
  const { path, bytes } = options;
  if (typeof path !== 'string' || path === '') throw new PmemError('BV_PMEM', `${vmName}: pmem needs the path of its backing file`);
  if (!Number.isInteger(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0 || bytes > PMEM_MAX_BYTES) {
    throw new PmemError('BV_PMEM', `${vmName}: pmem size must be a positive multiple of 4 KiB up to ${PMEM_MAX_BYTES} bytes, got ${String(bytes)}`);
  }
  let stat;
  try {
    stat = statSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || options.create !== true) {
      throw new PmemError('BV_PMEM', `${vmName}: pmem file '${path}': ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file (set create to make one)' : (error as Error).message}`);
    }
    const fd = openSync(path, 'wx');
    try {
      ftruncateSync(fd, bytes);
    } finally {
      closeSync(fd);
    }
    return;
  }
  if (!stat.isFile()) throw new PmemError('BV_PMEM', `${vmName}: pmem file '${path}' is not a regular file`);
  if (stat.size !== bytes) {
    throw new PmemError('BV_PMEM', `${vmName}: pmem file '${path}' has ${stat.size} bytes, the configuration says ${bytes}: a persistent-memory file is never resized`);
  }
}

/** The device model: the range's description and the flush. */
export class PmemDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachPmem). */
  base = 0;
  private flushOffset = 0;
  private flushLength = 0;
  private status: number = PmemStatus.OK;
  private flushCount = 0;
  /** Counters. */
  readonly stats: PmemStats = { flushes: 0, bytesFlushed: 0, flushMs: 0, lastError: null };

  constructor(
    private readonly vm: Vm,
    /** Guest-physical address of the range. */
    readonly gpa: Gpa,
    /** The range's size in bytes. */
    readonly bytes: number,
    /** The backing file. */
    readonly path: string,
  ) {}

  read(_vcpu: Vcpu, offset: number): number {
    switch (offset) {
      case PmemRegister.BASE: return this.gpa | 0;
      case PmemRegister.SIZE: return this.bytes | 0;
      case PmemRegister.FLUSH_OFFSET: return this.flushOffset | 0;
      case PmemRegister.FLUSH_LENGTH: return this.flushLength | 0;
      case PmemRegister.STATUS: return this.status;
      case PmemRegister.FLUSHES: return this.flushCount | 0;
      default: return 0;
    }
  }

  write(_vcpu: Vcpu, offset: number, value: number): boolean {
    switch (offset) {
      case PmemRegister.FLUSH_OFFSET: this.flushOffset = value >>> 0; break;
      case PmemRegister.FLUSH_LENGTH: this.flushLength = value >>> 0; break;
      case PmemRegister.FLUSH: this.flush(this.flushOffset, this.flushLength); break;
      default: break; // read-only registers ignore writes
    }
    return true;
  }

  /**
   * Flushes [offset, offset + length) of the range (what a guest FLUSH does; the host may call it
   * too): on return, every store made to those bytes before the call is on the file's storage.
   * Returns the status the guest sees.
   */
  flush(offset: number, length: number): number {
    this.stats.flushes++;
    this.flushCount = (this.flushCount + 1) >>> 0;
    if (offset + length > this.bytes) return (this.status = PmemStatus.BAD_RANGE);
    const started = performance.now();
    try {
      this.vm.memory.flushFileRange(this.gpa + offset, length);
      this.status = PmemStatus.OK;
      this.stats.bytesFlushed += length;
    } catch (error) {
      if (!(error instanceof BvError)) throw error;
      this.status = PmemStatus.IO_ERROR; // the guest learns it from STATUS, the host from stats
      this.stats.lastError = error.message;
    }
    this.stats.flushMs += performance.now() - started;
    return this.status;
  }

  /** The registers a guest set, for a reset: the range itself survives a reset (it is the file). */
  reset(): void {
    this.flushOffset = 0;
    this.flushLength = 0;
    this.status = PmemStatus.OK;
  }
}

/**
 * Checks the options (checkPmemOptions), gives the VM the file as a guest-physical range
 * (GuestMemory.attachFileRange) and attaches the PMEM device that describes it (state component
 * 'pmem', which refuses to be saved: see the module comment). Append it after the other devices.
 */
export function attachPmem(vm: Vm, options: PmemOptions): PmemDevice {
  checkPmemOptions(options, vm.name);
  const after = vm.memory.fileBackedRanges.reduce((end, range) => Math.max(end, range.gpa + range.bytes), vm.memoryBytes);
  const gpa = options.gpa ?? Math.ceil(after / PMEM_ALIGNMENT) * PMEM_ALIGNMENT;
  if (gpa + options.bytes > 0xf000_0000) {
    throw new PmemError('BV_PMEM', `${vm.name}: ${options.bytes} bytes of pmem do not fit between 0x${gpa.toString(16)} and the device table at 0xf0000000 (less RAM or less pmem)`);
  }
  vm.memory.attachFileRange(gpa, options.bytes, options.path, 0);
  const device = new PmemDevice(vm, gpa, options.bytes, options.path);
  const index = vm.memory.fileBackedRanges.length - 1;
  vm.registerState(index === 0 ? 'pmem' : `pmem${index}`, {
    version: 1,
    save: () => {
      throw new PmemError(
        'BV_PMEM_NOT_CAPTURED',
        `${vm.name} has persistent memory (${options.path}): checkpoints, snapshots, migration and fork do not capture it (its contents are the file); see docs/pmem.md`,
      );
    },
    check: () => undefined,
    restore: () => undefined,
  });
  vm.onReset(() => device.reset());
  device.base = vm.attachDevice({ type: DeviceType.PMEM, name: 'pmem', info: options.bytes / PAGE_SIZE }, device);
  return device;
}
