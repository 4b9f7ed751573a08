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
 *
 * Asynchronous mode (BlockDeviceOptions.async, docs/block-device.md "Asynchronous requests"):
 * SUBMIT queues a request that runs on the libuv thread pool (O_DIRECT with `direct`) while the
 * guest runs on; its completion waits in a queue the guest pops from COMPLETION, with the
 * device's own interrupt line asserted while one waits (IRQ_CONTROL). A BlockIoGate (the host's
 * IO scheduler) may hold requests back before they reach the file. In-flight requests are part
 * of the saved state and run again on restore.
 */
import { isAbsolute } from 'node:path';
import { DeviceType } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import { KernelError, PageWaitError } from '../kernel/index.ts';
import type { Hypervisor, MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { DISK_SECTOR_BYTES, DiskChain, DiskError, MAX_DISK_SECTORS, type DiskChainState, type DiskOptions } from './disk-image.ts';
import { DeviceStateError, describeSaved, stateInteger, stateList, stateRecord, stateU32 } from './state.ts';
import { holdWakeSource } from './wake.ts';

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
  /** Most asynchronous requests in flight at once: BLOCK_QUEUE_DEPTH, or 0 without asynchronous mode (read-only). */
  QUEUE_DEPTH: 40,
  /** Tag (0 … 0xffff) of the next SUBMIT; bits above 15 are dropped (read/write). */
  TAG: 44,
  /** Writing a BlockCommand submits it asynchronously; STATUS says BUSY (accepted) or why not (write-only; reads 0). */
  SUBMIT: 48,
  /** Pops the oldest completion: 0 when none waits, else BLOCK_COMPLETION_VALID | status << 16 | tag (read-only). */
  COMPLETION: 52,
  /** Bit 0 (BLOCK_IRQ_COMPLETION): assert the device's interrupt line while a completion waits (read/write). */
  IRQ_CONTROL: 56,
  /** Requests submitted whose completion has not been popped (read-only). */
  IN_FLIGHT: 60,
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
  /** After SUBMIT: the request was accepted; its outcome comes with its completion. */
  BUSY: 1,
  /** COUNT is 0 or above MAX_COUNT, or the sectors run past the end of the disk. */
  BAD_RANGE: 2,
  /** The DMA buffer is not all guest RAM. */
  BAD_DMA: 3,
  /** COMMAND was not READ, WRITE or FLUSH. */
  BAD_COMMAND: 4,
  /** The host could not read or write the disk files (device.lastError and hostErrors say why). */
  IO_ERROR: 5,
  /** SUBMIT with BLOCK_QUEUE_DEPTH requests already in flight (IN_FLIGHT); pop completions first. */
  QUEUE_FULL: 6,
} as const;

/** Most asynchronous requests in flight per device (QUEUE_DEPTH). */
export const BLOCK_QUEUE_DEPTH = 32;
/** Largest tag (TAG keeps the low 16 bits of what is written). */
export const BLOCK_TAG_MAX = 0xffff;
/** Bit 31 of a COMPLETION value: a completion was popped (the register reads 0 otherwise). */
export const BLOCK_COMPLETION_VALID = 0x8000_0000;
/** IRQ_CONTROL bit 0: the interrupt line is asserted while a completion waits. */
export const BLOCK_IRQ_COMPLETION = 1;
/** Weight of the newest sample in BlockStats.asyncLatencyEwmaNs. */
export const BLOCK_LATENCY_EWMA_WEIGHT = 0.125;

/** Decides when a block request may be issued to the storage: a host-wide IO scheduler (services/storage, PARDA) implements it. */
export interface BlockIoGate {
  /** Queue one request of `bytes` for `owner` (a VM's name); call `start` when it may be issued (possibly at once, synchronously). */
  submit(owner: string, bytes: number, start: () => void): void;
  /** The request finished: latencyNs from its start() to completion, bytes moved. */
  complete(owner: string, bytes: number, latencyNs: number): void;
  /** Drop the owner's requests not yet started (VM deleted, reset); their start is never called. */
  forget(owner: string): void;
}

/** How attachBlock sets the device up besides its disk. */
export interface BlockDeviceOptions {
  /** Accept asynchronous requests (SUBMIT); without it SUBMIT answers BAD_COMMAND and QUEUE_DEPTH reads 0. */
  async?: boolean;
  /** The hypervisor (required with `async`: the VM is a wake source while requests are in flight). */
  hypervisor?: Hypervisor;
  /** A host IO scheduler admitting asynchronous requests; without one they start at once. */
  gate?: BlockIoGate;
  /** This device's name for the gate (default: the VM's name). */
  owner?: string;
}

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
  /** Commands that ended with an error STATUS (synchronous or asynchronous). */
  errors: number;
  /** Asynchronous requests accepted (SUBMIT answered BUSY, or in flight in a restored state). */
  asyncSubmitted: number;
  /** Asynchronous requests whose completion was queued. */
  asyncCompleted: number;
  /** Most requests in flight at once (IN_FLIGHT's peak). */
  asyncInFlightMax: number;
  /** Sum over completed requests of the time from their issue to the file until the transfer settled, in ns. */
  asyncLatencySumNs: number;
  /** Exponential moving average of that latency (weight BLOCK_LATENCY_EWMA_WEIGHT), in ns. */
  asyncLatencyEwmaNs: number;
}

/** An asynchronous request as the saved state carries it (it runs again on restore). */
export interface BlockSavedRequest {
  /** Its tag. */
  tag: number;
  /** READ, WRITE or FLUSH. */
  command: number;
  /** First sector. */
  sector: number;
  /** Sectors. */
  count: number;
  /** Guest-physical DMA address. */
  dmaAddress: number;
}

/** What the 'block' state component saves: the registers and the (sealed) chain. */
export interface BlockState extends DiskChainState {
  /** Version 2: the asynchronous side (absent in version 1 states, which have none). */
  async?: {
    /** Whether the device accepted asynchronous requests (a restore must attach it so: its guest may use them). */
    enabled: boolean;
    /** Whether its transfers bypassed the host page cache (a hint for the restoring host). */
    direct: boolean;
    /** TAG. */
    tag: number;
    /** IRQ_CONTROL. */
    irqControl: number;
    /** Requests not finished when saved, in submission order: a restore issues them again. */
    inFlight: BlockSavedRequest[];
    /** Completions not popped yet (COMPLETION values), oldest first. */
    completions: number[];
  };
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
  /** Asynchronous requests (BlockDeviceOptions.async). */
  async?: boolean;
}

/** An asynchronous request from SUBMIT to its completion. */
interface AsyncRequest {
  readonly tag: number;
  readonly command: number;
  readonly first: number;
  readonly count: number;
  readonly dmaAddress: number;
  /** Bytes it moves (0 for FLUSH), as the gate counts them. */
  readonly bytes: number;
  /** The device's reset generation when submitted: a request from before a reset completes into nothing. */
  readonly generation: number;
  /** When it was issued to the file (process.hrtime.bigint), 0n before. */
  startedAt: bigint;
}

/** The saved state's version; version 1 (no asynchronous side) is still read. */
const BLOCK_STATE_VERSION = 2;

/**
 * The block device model (attachBlock creates and attaches it): registers in an MMIO window, a
 * DiskChain behind them, an error log of host failures. See the module comment for where each
 * kind of failure goes.
 */
export class BlockDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachBlock). */
  base = 0;
  /** Counters (see BlockStats). */
  readonly stats: BlockStats = {
    reads: 0, writes: 0, flushes: 0, sectorsRead: 0, sectorsWritten: 0, errors: 0,
    asyncSubmitted: 0, asyncCompleted: 0, asyncInFlightMax: 0, asyncLatencySumNs: 0, asyncLatencyEwmaNs: 0,
  };
  /** Called when a completion is queued (a run loop waiting for the VM can look again at once). */
  onCompletion: (() => void) | null = null;
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
  private tag = 0;
  private irqControl = 0;
  /** Requests not finished (submitted, maybe held by the gate, maybe on the file), in submission order. */
  private readonly unfinished = new Set<AsyncRequest>();
  /** Completions not popped, oldest first (COMPLETION values). */
  private completions: number[] = [];
  private generation = 0;
  private closed = false;
  private interruptLine = -1;
  /** Whether SUBMIT is accepted. */
  readonly async: boolean;
  private readonly hypervisor: Hypervisor | null;
  private readonly gate: BlockIoGate | null;
  private readonly owner: string;

  constructor(
    private readonly vm: Vm,
    /** The disk; replaced by a restore. */
    public disk: DiskChain,
    private readonly diskOptions: DiskOptions = {},
    options: BlockDeviceOptions = {},
  ) {
    this.async = options.async === true;
    this.hypervisor = options.hypervisor ?? null;
    this.gate = options.gate ?? null;
    this.owner = options.owner ?? vm.name;
    if (this.async && this.hypervisor === null) throw new TypeError('block: asynchronous mode needs the hypervisor (to wake the VM when a request completes)');
    if (this.async) this.interruptLine = vm.claimInterruptLine();
  }

  /** Requests submitted whose completion has not been popped (IN_FLIGHT). */
  get inFlight(): number {
    return this.unfinished.size + this.completions.length;
  }

  /** Whether a completion waits to be popped. */
  get completionWaiting(): boolean {
    return this.completions.length > 0;
  }

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
      case BlockRegister.QUEUE_DEPTH:
        return this.async ? BLOCK_QUEUE_DEPTH : 0;
      case BlockRegister.TAG:
        return this.tag;
      case BlockRegister.COMPLETION:
        return this.popCompletion();
      case BlockRegister.IRQ_CONTROL:
        return this.irqControl;
      case BlockRegister.IN_FLIGHT:
        return this.inFlight;
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
      case BlockRegister.TAG:
        this.tag = value & BLOCK_TAG_MAX;
        break;
      case BlockRegister.SUBMIT:
        this.status = this.submit(value >>> 0);
        if (this.status !== BlockStatus.BUSY) this.stats.errors++;
        break;
      case BlockRegister.IRQ_CONTROL:
        this.irqControl = value & BLOCK_IRQ_COMPLETION;
        this.updateInterrupt();
        this.updateWakeSource();
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

  /** SUBMIT: checks the request like COMMAND does and queues it; returns BUSY or the error STATUS. */
  private submit(command: number): number {
    if (!this.async || this.closed) return BlockStatus.BAD_COMMAND;
    if (command !== BlockCommand.READ && command !== BlockCommand.WRITE && command !== BlockCommand.FLUSH) return BlockStatus.BAD_COMMAND;
    if (this.inFlight >= BLOCK_QUEUE_DEPTH) return BlockStatus.QUEUE_FULL;
    let first = 0;
    let count = 0;
    if (command !== BlockCommand.FLUSH) {
      first = this.sectorHigh * 2 ** 32 + this.sectorLow;
      count = this.count;
      if (count < 1 || count > BLOCK_MAX_COUNT || first + count > this.capacity) return BlockStatus.BAD_RANGE;
      if (this.dmaAddress + count * DISK_SECTOR_BYTES > this.vm.memoryBytes) return BlockStatus.BAD_DMA;
    }
    this.stats.asyncSubmitted++;
    this.enqueue({ tag: this.tag, command, first, count, dmaAddress: this.dmaAddress, bytes: count * DISK_SECTOR_BYTES, generation: this.generation, startedAt: 0n });
    return BlockStatus.BUSY;
  }

  /** Queues an accepted request: through the gate when there is one, else issued at once. */
  private enqueue(request: AsyncRequest): void {
    this.unfinished.add(request);
    if (this.inFlight > this.stats.asyncInFlightMax) this.stats.asyncInFlightMax = this.inFlight;
    this.updateWakeSource();
    if (this.gate === null) this.issue(request);
    else this.gate.submit(this.owner, request.bytes, () => this.issue(request));
  }

  /**
   * Issues a request to the file. A WRITE's data is read from guest RAM now; a READ's lands in
   * guest RAM when the transfer has settled.
   */
  private issue(request: AsyncRequest): void {
    if (request.generation !== this.generation || this.closed) return; // reset or closed while the gate held it
    request.startedAt = process.hrtime.bigint();
    let transfer: Promise<void>;
    let target: Uint8Array | null = null;
    try {
      if (request.command === BlockCommand.READ) {
        target = new Uint8Array(request.bytes);
        transfer = this.disk.readAsync(request.first, request.count, target);
      } else if (request.command === BlockCommand.WRITE) {
        let data: Uint8Array | null = null;
        const dmaStatus = this.dma('write', request.first, () => (data = this.vm.readPhysical(request.dmaAddress, request.bytes)), request.dmaAddress, request.count);
        if (dmaStatus !== BlockStatus.OK) {
          this.settle(request, dmaStatus, null);
          return;
        }
        transfer = this.disk.writeAsync(request.first, data!);
      } else {
        this.stats.flushes++;
        transfer = this.disk.flushAsync();
      }
    } catch (error) {
      if (error instanceof PageWaitError) {
        // A WRITE's buffer page still on a post-copy source: read it again once it has arrived.
        setTimeout(() => this.issue(request), 1);
        return;
      }
      transfer = Promise.reject(error);
    }
    transfer.then(
      () => this.settle(request, BlockStatus.OK, target),
      (error: unknown) => {
        if (!(error instanceof BvError)) {
          // An untyped failure is a bug: the VM stops with it (as the run loop does for a sync one).
          if (request.generation === this.generation && !this.closed) this.vm.hostError(`block device: asynchronous ${commandName(request.command)} failed: ${error instanceof Error ? error.message : String(error)}`, error);
          this.settle(request, BlockStatus.IO_ERROR, null);
          return;
        }
        if (request.generation === this.generation && !this.closed) {
          this.logHostError({ command: commandName(request.command), sector: request.first, count: request.count, kind: 'disk', error });
        }
        this.settle(request, BlockStatus.IO_ERROR, null);
      },
    );
  }

  /** A request has settled: the gate hears of it, a READ's data goes to guest RAM, its completion is queued. */
  private settle(request: AsyncRequest, status: number, data: Uint8Array | null): void {
    if (request.startedAt !== 0n) {
      const latencyNs = Number(process.hrtime.bigint() - request.startedAt);
      this.gate?.complete(this.owner, request.bytes, latencyNs);
      this.stats.asyncLatencySumNs += latencyNs;
      this.stats.asyncLatencyEwmaNs = this.stats.asyncCompleted === 0 ? latencyNs : this.stats.asyncLatencyEwmaNs + BLOCK_LATENCY_EWMA_WEIGHT * (latencyNs - this.stats.asyncLatencyEwmaNs);
    }
    this.deliver(request, status, data);
  }

  /** Puts a settled request's data in guest RAM (a READ) and queues its completion. */
  private deliver(request: AsyncRequest, status: number, data: Uint8Array | null): void {
    if (request.generation !== this.generation || this.closed || !this.unfinished.has(request)) return;
    if (status === BlockStatus.OK && request.command === BlockCommand.READ) {
      try {
        status = this.dma('read', request.first, () => this.vm.writePhysical(request.dmaAddress, data!), request.dmaAddress, request.count);
      } catch (error) {
        if (!(error instanceof PageWaitError)) throw error;
        // The buffer's page is still on a post-copy source: deliver once it has arrived.
        setTimeout(() => this.deliver(request, status, data), 1);
        return;
      }
    }
    this.unfinished.delete(request);
    if (status === BlockStatus.OK) {
      if (request.command === BlockCommand.READ) {
        this.stats.reads++;
        this.stats.sectorsRead += request.count;
        this.onTransfer?.('read', request.dmaAddress, request.first, request.bytes);
      } else if (request.command === BlockCommand.WRITE) {
        this.stats.writes++;
        this.stats.sectorsWritten += request.count;
        this.onWrite?.(request.first, request.count);
        this.onTransfer?.('write', request.dmaAddress, request.first, request.bytes);
      }
    } else this.stats.errors++;
    this.stats.asyncCompleted++;
    this.completions.push((BLOCK_COMPLETION_VALID | (status << 16) | request.tag) >>> 0);
    this.updateInterrupt();
    this.updateWakeSource();
    this.onCompletion?.();
    this.hypervisor?.notifyExternalWake();
  }

  /** COMPLETION: the oldest completion, or 0. */
  private popCompletion(): number {
    const value = this.completions.shift();
    if (value === undefined) return 0;
    this.updateInterrupt();
    return value | 0;
  }

  /** The line is asserted exactly while IRQ_CONTROL bit 0 = 1 and a completion waits. */
  private updateInterrupt(): void {
    if (this.interruptLine < 0) return;
    this.vm.setInterruptLine(this.interruptLine, (this.irqControl & BLOCK_IRQ_COMPLETION) !== 0 && this.completions.length > 0);
  }

  /**
   * While requests are on their way and their completion will raise the interrupt, a VM idle in
   * wfi is waiting for them, not idle for good.
   */
  private updateWakeSource(): void {
    if (this.hypervisor === null) return;
    holdWakeSource(this.hypervisor, this.vm, this, !this.closed && this.unfinished.size > 0 && (this.irqControl & BLOCK_IRQ_COMPLETION) !== 0);
  }

  /**
   * Moves the DMA buffer. RAM the kernel says the guest cannot have (BV_BAD_GPA: a page its resolver
   * refuses) is the guest's BAD_DMA. Any other typed failure is the host's (out of host
   * memory, a lazy restore's read error…): the VM stops with a host error and the log records it.
   * An untyped error is a bug and propagates (the run loop stops the VM with it).
   */
  private dma(command: 'read' | 'write', first: number, transfer: () => void, dmaAddress = this.dmaAddress, count = this.count): number {
    try {
      transfer();
      return BlockStatus.OK;
    } catch (error) {
      if (error instanceof KernelError && error.code === 'BV_BAD_GPA') return BlockStatus.BAD_DMA;
      // A buffer page still on a post-copy source: nothing of the command is kept (a read's
      // partial fill is rewritten), so the COMMAND store runs again once the page is here.
      if (error instanceof PageWaitError) throw error;
      if (!(error instanceof BvError)) throw error;
      this.logHostError({ command, sector: first, count, kind: 'memory', error });
      const buffer = `guest-physical 0x${dmaAddress.toString(16)}+${count * DISK_SECTOR_BYTES}`;
      this.vm.hostError(`block device: ${command} of sectors ${first}+${count} could not ${command === 'read' ? 'fill' : 'read'} its DMA buffer at ${buffer}: ${error.message}`, error);
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
      async: {
        enabled: this.async,
        direct: this.disk.direct,
        tag: this.tag,
        irqControl: this.irqControl,
        inFlight: [...this.unfinished].map((r) => ({ tag: r.tag, command: r.command, sector: r.first, count: r.count, dmaAddress: r.dmaAddress })),
        completions: [...this.completions],
      },
    };
  }

  /** Checks the asynchronous side of a version 2 state (null for version 1 or none saved). */
  private checkAsyncState(record: Record<string, unknown>, version: number): NonNullable<BlockState['async']> | null {
    if (version < 2 || record['async'] === undefined) return null;
    const saved = stateRecord(record['async'], 'block', 'async');
    const flag = (name: 'enabled' | 'direct'): boolean => {
      const value = saved[name] ?? false;
      if (typeof value !== 'boolean') throw new DeviceStateError('block', `async.${name}`, `is not true or false (got ${describeSaved(value)})`);
      return value;
    };
    const enabled = flag('enabled');
    const direct = flag('direct');
    if (enabled && !this.async) {
      throw new DiskError('BV_DISK_MISMATCH', 'the saved block device accepted asynchronous requests (its guest may use them), this machine\'s was attached without asynchronous mode');
    }
    const tag = stateInteger(saved['tag'], 'block', 'async.tag', 0, BLOCK_TAG_MAX);
    const irqControl = stateInteger(saved['irqControl'], 'block', 'async.irqControl', 0, BLOCK_IRQ_COMPLETION);
    const inFlight = savedArray(saved['inFlight'], 'async.inFlight').map((entry, index) => {
      const where = `async.inFlight[${index}]`;
      const request = stateRecord(entry, 'block', where);
      const command = stateInteger(request['command'], 'block', `${where}.command`, BlockCommand.READ, BlockCommand.FLUSH);
      const sector = stateInteger(request['sector'], 'block', `${where}.sector`, 0, this.capacity - 1);
      const count = stateInteger(request['count'], 'block', `${where}.count`, command === BlockCommand.FLUSH ? 0 : 1, BLOCK_MAX_COUNT);
      if (sector + count > this.capacity) throw new DeviceStateError('block', `${where}.count`, `runs past the end of the disk (${sector}+${count})`);
      const dmaAddress = stateU32(request['dmaAddress'], 'block', `${where}.dmaAddress`);
      if (dmaAddress + count * DISK_SECTOR_BYTES > this.vm.memoryBytes) throw new DeviceStateError('block', `${where}.dmaAddress`, 'is not guest RAM');
      return { tag: stateInteger(request['tag'], 'block', `${where}.tag`, 0, BLOCK_TAG_MAX), command, sector, count, dmaAddress };
    });
    const completions = savedArray(saved['completions'], 'async.completions').map((value, index) => {
      const word = stateU32(value, 'block', `async.completions[${index}]`);
      if ((word & BLOCK_COMPLETION_VALID) === 0 || !(Object.values(BlockStatus) as number[]).includes((word >>> 16) & 0x7fff)) {
        throw new DeviceStateError('block', `async.completions[${index}]`, `is not a completion (got 0x${word.toString(16)})`);
      }
      return word;
    });
    if (inFlight.length + completions.length > BLOCK_QUEUE_DEPTH) throw new DeviceStateError('block', 'async', `holds ${inFlight.length + completions.length} requests, more than the queue's ${BLOCK_QUEUE_DEPTH}`);
    if (inFlight.length + completions.length > 0 && !this.async) {
      throw new DiskError('BV_DISK_MISMATCH', 'the saved block device has asynchronous requests in flight, this machine\'s was attached without asynchronous mode');
    }
    return { enabled, direct, tag, irqControl, inFlight, completions };
  }

  /**
   * Checks a saved state without touching any file: the chain's shape (DeviceStateError naming
   * the field) and its size against this device (BV_DISK_MISMATCH). Returns the registers.
   */
  checkState(state: unknown, version = BLOCK_STATE_VERSION): BlockState['registers'] & {
    /** The asynchronous side (null in a version 1 state). */
    async: BlockState['async'] | null;
  } {
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
    return { ...saved, async: this.checkAsyncState(record, version) };
  }

  /** Reopens the saved chain (read-only, with a new top for writes) and the registers. */
  restoreState(state: unknown, version = BLOCK_STATE_VERSION): void {
    const registers = this.checkState(state, version);
    const disk = DiskChain.restore(state, this.diskOptions);
    if (disk.sectors !== this.capacity) {
      disk.close();
      throw new DiskError('BV_DISK_MISMATCH', `the saved disk has ${disk.sectors} sectors, this machine's block device was attached with ${this.capacity}`);
    }
    this.dropRequests();
    this.disk.close();
    this.disk = disk;
    this.sectorLow = registers.sectorLow;
    this.sectorHigh = registers.sectorHigh;
    this.count = registers.count;
    this.dmaAddress = registers.dmaAddress;
    this.status = registers.status;
    const saved = registers.async;
    this.tag = saved?.tag ?? 0;
    this.irqControl = saved?.irqControl ?? 0;
    this.completions = [...(saved?.completions ?? [])];
    // Requests that were on their way run again: a READ fills its buffer, a WRITE takes its data
    // from guest RAM (which the guest must not have changed before the completion) once more.
    for (const r of saved?.inFlight ?? []) {
      this.stats.asyncSubmitted++; // (accepted again, by this device)
      this.enqueue({ tag: r.tag, command: r.command, first: r.sector, count: r.count, dmaAddress: r.dmaAddress, bytes: r.count * DISK_SECTOR_BYTES, generation: this.generation, startedAt: 0n });
    }
    this.updateInterrupt();
    this.updateWakeSource();
  }

  /** Forgets every asynchronous request (their transfers may still settle: into nothing). */
  private dropRequests(): void {
    this.generation++;
    this.unfinished.clear();
    this.completions = [];
    this.gate?.forget(this.owner);
    this.updateInterrupt();
    this.updateWakeSource();
  }

  /** VM reset: registers to zero and asynchronous requests forgotten; the disk keeps its contents. */
  reset(): void {
    this.sectorLow = 0;
    this.sectorHigh = 0;
    this.count = 0;
    this.dmaAddress = 0;
    this.status = BlockStatus.OK;
    this.tag = 0;
    this.irqControl = 0;
    this.dropRequests();
  }

  /** Closes the disk files (the VM must not run again with this device); requests in flight complete into nothing. */
  close(): void {
    this.dropRequests();
    this.closed = true;
    this.updateWakeSource();
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

/**
 * How a saved 'block' state's device was attached: asynchronous (restore it so: its guest may
 * use SUBMIT) and O_DIRECT. False for both in a version 1 state.
 */
export function savedBlockMode(state: unknown): {
  /** The device accepted asynchronous requests. */
  async: boolean;
  /** Its asynchronous transfers bypassed the host page cache. */
  direct: boolean;
} {
  const saved = stateRecord(state, 'block')['async'];
  if (typeof saved !== 'object' || saved === null) return { async: false, direct: false };
  const { enabled, direct } = saved as Record<string, unknown>;
  return { async: enabled === true, direct: direct === true };
}

/** Opens a disk for attachBlock (so callers can open it before attaching anything else). */
export function openBlockDisk(disk: string | BlockDiskOptions): {
  /** The opened chain (close it if it is not attached). */
  chain: DiskChain;
  /** The options it was opened with (a restore reopens saved chains with them). */
  options: DiskOptions;
} {
  const { path, async: _async, ...options } = typeof disk === 'string' ? { path: disk } : disk;
  return { chain: DiskChain.open(path, options), options };
}

/**
 * Attaches the block device (one per VM: its state is 'block'); info = the sector count. Takes
 * over an opened chain, or opens `disk` (a raw image or the top overlay of a chain).
 */
export function attachBlock(vm: Vm, disk: string | BlockDiskOptions | { chain: DiskChain; options: DiskOptions }, options: BlockDeviceOptions = {}): BlockDevice {
  const opened = typeof disk === 'object' && 'chain' in disk ? disk : openBlockDisk(disk);
  try {
    const asyncMode = options.async ?? (typeof disk === 'object' && !('chain' in disk) && disk.async === true);
    const device = new BlockDevice(vm, opened.chain, opened.options, { ...options, async: asyncMode });
    vm.registerState('block', {
      version: BLOCK_STATE_VERSION,
      readsVersions: [1],
      save: () => device.saveState(),
      check: (state, version) => void device.checkState(state, version),
      restore: (state, version) => device.restoreState(state, version),
    });
    device.base = vm.attachDevice({ type: DeviceType.BLOCK, name: 'block', info: Math.min(device.capacity, 0xffff_ffff) }, device);
    vm.onReset(() => device.reset());
    return device;
  } catch (error) {
    opened.chain.close();
    throw error;
  }
}

function commandName(command: number): BlockHostError['command'] {
  return command === BlockCommand.READ ? 'read' : command === BlockCommand.WRITE ? 'write' : 'flush';
}

/** A saved list of at most BLOCK_QUEUE_DEPTH entries. */
function savedArray(value: unknown, field: string): unknown[] {
  if (!Array.isArray(value)) throw new DeviceStateError('block', field, `is not a list (got ${describeSaved(value)})`);
  if (value.length > BLOCK_QUEUE_DEPTH) throw new DeviceStateError('block', field, `has ${value.length} entries, more than the queue's ${BLOCK_QUEUE_DEPTH}`);
  return value;
}
