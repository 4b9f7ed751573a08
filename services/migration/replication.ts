/**
 * Disaster-recovery replication (T-14, Remus-style checkpoints): the state of a running VM is
 * sent to a backup host in incremental epochs, and the backup can run the VM from the last epoch
 * that arrived whole (failover).
 *
 * Primary (ReplicationSender), over a FramedChannel of the migration transport:
 *
 *  1. BEGIN (configuration, page count, attach data) → READY.
 *  2. Epoch 0 starts with a pass over every page that holds something, sent while the guest runs;
 *     a write epoch (GuestMemory.beginWriteEpoch) notes each page the guest writes from then on.
 *  3. Every `intervalMs` of host time the VM is paused for a synchronous capture: the write epoch
 *     is closed and a new one opened, the pages written in it are copied (with zero markers for
 *     pages that lost their contents without a write), the CPU and device state are captured (the
 *     checkpoint's own encoding, as live migration's STATE frame), and the VM resumes. Then the
 *     epoch goes out: PAGES frames (migration's page records), STATE, and COMMIT {epoch, records,
 *     instructions, captured_at}; the backup answers ACK once it has committed it. The next epoch
 *     is captured at the next tick after the ACK (one epoch in flight at most).
 *
 * Backup (ReplicaReceiver): frames of the epoch being received go into a staging area (page
 * records and the state). Only COMMIT — with the number of page records and the epoch number it
 * announces matching what was staged, the state decoded and checked — merges the staging area
 * into the committed image, in one synchronous step; anything else (a cut connection, a corrupt
 * frame the transport refuses, a protocol error) drops the staging area and leaves the last
 * committed epoch as it was. The committed image is held in host memory (a page map plus the
 * encoded state), not in a VM: activate() creates the VM from it and starts it.
 *
 * Disks (ReplicateOptions.disk, disk.ts): epoch 0 carries every sector the disk's overlays hold
 * (the raw base stays on shared storage, checked by identity), each epoch the sectors the guest
 * wrote since the last capture, read during the capture. The backup stages them with the epoch's
 * pages and writes them into its own overlay (in its disk directory) only at COMMIT; activation
 * seals that overlay and runs the VM on it, so the disk is the one of the last committed epoch.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { KernelError, PageState } from '../../kernel/index.ts';
import type { Vm, VmConfig } from '../../kernel/index.ts';
import { encodeDevices, encodeJson } from '../checkpoint/format.ts';
import type { JsonObject } from '../checkpoint/format.ts';
import { currentPage, settlePoisonedPages, vmCheckpointContents } from '../checkpoint/vm-checkpoint.ts';
import type { DecodedVmCheckpoint } from '../checkpoint/vm-checkpoint.ts';
import { DISK_SECTOR_BYTES, DiskChain, type BlockDevice, type DiskChainState } from '../../devices/index.ts';
import { adoptReceivedDisk, decodeDiskFrame, describeDisk, DirtySectorLog, discardReceivedDisk, diskFrames, parseMigratedDisk, receivingDisk, writeDiskRuns, type DiskRun, type MigratedDisk } from './disk.ts';
import { MigrationError } from './errors.ts';
import { decodeJson, decodeState, DirtyPageLog, encodeState, isZero, PageBatch, PageKind, RECORD_BYTES } from './migration.ts';
import { FIRST_APP_FRAME_TYPE } from './transport.ts';
import type { FramedChannel } from './transport.ts';

/** The application protocol of a replication stream used on its own (a host uses its migration channel). */
export const REPLICATION_PROTOCOL = 'bv-replication';
/** The replication protocol versions this build speaks. 2: epochs carry the disk's written sectors. */
export const REPLICATION_VERSIONS: readonly number[] = [2];

/** Frame types (numbered apart from migration's, so both can share a listener). */
export const ReplicationFrame = {
  /** primary → backup, JSON: configuration, page count, attach data, interval. */
  BEGIN: FIRST_APP_FRAME_TYPE + 32,
  /** backup → primary, JSON: the replica exists. */
  READY: FIRST_APP_FRAME_TYPE + 33,
  /** primary → backup, binary: page records then page bytes (migration's PAGES encoding). */
  PAGES: FIRST_APP_FRAME_TYPE + 34,
  /** primary → backup, binary: CONFIG, CPUS and DEVICES records (migration's STATE encoding). */
  STATE: FIRST_APP_FRAME_TYPE + 35,
  /** primary → backup, JSON {epoch, records, instructions, captured_at}: the epoch is whole. */
  COMMIT: FIRST_APP_FRAME_TYPE + 36,
  /** backup → primary, JSON {epoch}: the epoch is committed. */
  ACK: FIRST_APP_FRAME_TYPE + 37,
  /** primary → backup, binary (migration's DISK encoding, disk.ts): disk sectors of the epoch. */
  DISK: FIRST_APP_FRAME_TYPE + 38,
} as const;

/** Options of the primary. */
export interface ReplicateOptions {
  /** Host time between epochs, ms (default 100). */
  intervalMs?: number;
  /** Pages per PAGES frame (default 64). */
  pagesPerFrame?: number;
  /** Opaque data for the backup's host to attach the same devices. */
  attach?: JsonObject;
  /** Caller data carried in the state; a function is called at each epoch's capture, the VM paused. */
  extra?: JsonObject | (() => JsonObject);
  /** Told of each epoch right after its capture, the VM still paused (tests: the oracle's reference point). */
  onCapture?: (epoch: number, instructions: number) => void;
  /** Told of each epoch once the backup committed it. */
  onCommitted?: (epoch: number) => void;
  /**
   * The VM's block device: epoch 0 sends every sector its overlays hold, each epoch the sectors
   * written since the last capture; the backup needs the same raw base. Unset: the disk is not
   * replicated (its files must be on shared storage, and a failover sees them as they are then).
   */
  disk?: BlockDevice | null;
}

/** What the primary's host does for the replication. */
export interface ReplicationHooks {
  /** Stop running the VM (between slices) for an epoch's capture. */
  pause(): void;
  /** Run it again. */
  resume(): void;
}

/** The primary's figures. */
export interface ReplicationFigures {
  /** 'connecting', 'initial' (the first pass), 'replicating', 'stopped' (asked to, or the VM ended) or 'failed'. */
  state: 'connecting' | 'initial' | 'replicating' | 'stopped' | 'failed';
  /** The interval asked for, ms. */
  interval_ms: number;
  /** The last epoch the backup committed, or null. */
  committed_epoch: number | null;
  /** Guest instructions retired at that epoch's capture. */
  committed_instructions: number | null;
  /** Host time (ms since the epoch, Date.now()) of that epoch's capture. */
  committed_at: number | null;
  /** How old the backup's state is now (the recovery point), ms; null before the first commit. */
  age_ms: number | null;
  /** Epochs committed. */
  epochs: number;
  /** Epochs committed per second since the first commit. */
  epochs_per_second: number;
  /** Bytes of the last epoch's frames (epoch 0 includes the first pass). */
  last_epoch_bytes: number;
  /** Mean bytes per epoch over the epochs after the first. */
  mean_epoch_bytes: number;
  /** Pages (with bytes or zero markers) of the last epoch. */
  last_epoch_pages: number;
  /** The VM's pause for the last capture, ms. */
  last_pause_ms: number;
  /** The longest pause for a capture, ms. */
  max_pause_ms: number;
  /** Bytes sent in all. */
  bytes_sent: number;
  /** Disk sectors of the last epoch (epoch 0: with the overlays' sectors), and of all epochs. */
  last_epoch_disk_sectors: number;
  /** Disk sectors sent in all. */
  disk_sectors_sent: number;
  /** The failure, or null. */
  error: string | null;
}

const DEFAULT_INTERVAL_MS = 100;
const DEFAULT_PAGES_PER_FRAME = 64;
/** The first pass yields to the event loop (the guests) after this much work. */
const WORK_SLICE_MS = 4;

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}

function yieldToGuests(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The primary side: replicates `vm` to the peer of `channel` until stop() (or the VM ends, or the
 * channel fails). The VM keeps running throughout; a failure only ends the replication.
 */
export class ReplicationSender {
  /** Live figures (status() brings the age up to now). */
  readonly figures: ReplicationFigures;

  readonly #vm: Vm;
  readonly #channel: FramedChannel;
  readonly #hooks: ReplicationHooks;
  readonly #options: ReplicateOptions;
  readonly #intervalMs: number;
  readonly #pageCount: number;
  /** Whether the backup holds bytes for each page (so an emptied page needs a zero marker). */
  readonly #sent: Uint8Array;
  readonly #dirty: DirtyPageLog;
  #stopping = false;
  #wake: (() => void) | null = null;
  #firstCommitAt = 0;
  #bytesAfterFirst = 0;
  /** Page records of epoch 0's first pass (counted in its COMMIT). */
  #firstPassRecords = 0;
  /** Sectors the guest writes (null: the disk is not replicated), and DISK frames of epoch 0's first pass. */
  readonly #diskLog: DirtySectorLog | null;
  #firstPassDiskFrames = 0;
  #firstPassDiskSectors = 0;

  constructor(vm: Vm, channel: FramedChannel, hooks: ReplicationHooks, options: ReplicateOptions = {}) {
    const interval = options.intervalMs ?? DEFAULT_INTERVAL_MS;
    if (!Number.isFinite(interval) || interval < 1 || interval > 3_600_000) throw new MigrationError('BV_MIG_BAD_REQUEST', `interval_ms must be 1..3600000, got ${String(interval)}`);
    if (vm.memory.writeEpochActive) throw new MigrationError('BV_MIG_BAD_REQUEST', `${vm.name}: a snapshot, migration or replication of this VM is in progress`);
    this.#vm = vm;
    this.#channel = channel;
    this.#hooks = hooks;
    this.#options = options;
    this.#intervalMs = interval;
    this.#pageCount = vm.memory.pageCount;
    this.#sent = new Uint8Array(this.#pageCount);
    this.#dirty = new DirtyPageLog(vm);
    this.#diskLog = options.disk == null ? null : new DirtySectorLog(options.disk);
    this.figures = {
      state: 'connecting', interval_ms: interval, committed_epoch: null, committed_instructions: null, committed_at: null, age_ms: null, epochs: 0, epochs_per_second: 0,
      last_epoch_bytes: 0, mean_epoch_bytes: 0, last_epoch_pages: 0, last_pause_ms: 0, max_pause_ms: 0, bytes_sent: 0, last_epoch_disk_sectors: 0, disk_sectors_sent: 0, error: null,
    };
    vm.onReset(() => this.stop());
  }

  /** The figures with the age brought up to now. */
  status(): ReplicationFigures {
    if (this.figures.committed_at !== null) this.figures.age_ms = Date.now() - this.figures.committed_at;
    return this.figures;
  }

  /** Ends the replication after the epoch in flight (run() then resolves). */
  stop(): void {
    this.#stopping = true;
    this.#wake?.();
  }

  /** Replicates until stop(), the VM's end (after a last epoch) or a failure (rejects; the VM carries on). */
  async run(): Promise<ReplicationFigures> {
    const vm = this.#vm;
    try {
      const config: JsonObject = { name: vm.name, memoryBytes: vm.config.memoryBytes, vcpus: vm.vcpus.length, largePages: vm.largePagePolicy };
      if (vm.config.mmu !== undefined) config.mmu = JSON.parse(JSON.stringify(vm.config.mmu)) as JsonObject;
      const disk: MigratedDisk | null = this.#diskLog === null ? null : describeDisk(this.#diskLog.device);
      await this.#channel.send(ReplicationFrame.BEGIN, encodeJson({ config, pageCount: this.#pageCount, attach: this.#options.attach ?? {}, interval_ms: this.#intervalMs, disk: disk as unknown as JsonObject }));
      await this.#channel.expect(ReplicationFrame.READY, 'READY');
      this.figures.state = 'initial';
      this.#dirty.open();
      const bytesBefore = this.#channel.stats.bytesSent;
      await this.#firstDiskPass();
      await this.#firstPass();
      let epochBytes = this.#channel.stats.bytesSent - bytesBefore;
      let next = performance.now();
      for (let epoch = 0; ; epoch++) {
        if (epoch > 0) {
          next += this.#intervalMs;
          const wait = next - performance.now();
          if (wait > 0) await this.#sleep(wait);
          else next = performance.now(); // late: no burst to catch up
          epochBytes = 0;
        }
        const ended = this.#vmEnded();
        if (this.#stopping && !ended) break;
        const captured = this.#capture(epoch);
        const before = this.#channel.stats.bytesSent;
        for (const payload of captured.frames) await this.#channel.send(ReplicationFrame.PAGES, payload);
        for (const payload of captured.diskFrames) await this.#channel.send(ReplicationFrame.DISK, payload);
        await this.#channel.send(ReplicationFrame.STATE, captured.state);
        const diskFrameCount = captured.diskFrames.length + (epoch === 0 ? this.#firstPassDiskFrames : 0);
        await this.#channel.send(ReplicationFrame.COMMIT, encodeJson({ epoch, records: captured.records, disk_frames: diskFrameCount, instructions: captured.instructions, captured_at: captured.at }));
        epochBytes += this.#channel.stats.bytesSent - before;
        const ack = decodeJson(await this.#channel.expect(ReplicationFrame.ACK, 'ACK'), 'ACK');
        if (ack.epoch !== epoch) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the backup acknowledged epoch ${String(ack.epoch)}, expected ${epoch}`);
        this.figures.last_epoch_disk_sectors = captured.diskSectors + (epoch === 0 ? this.#firstPassDiskSectors : 0);
        this.figures.disk_sectors_sent += this.figures.last_epoch_disk_sectors;
        this.#noteCommitted(epoch, captured, epochBytes);
        if (ended) break;
      }
      this.figures.state = 'stopped';
      this.figures.bytes_sent = this.#channel.stats.bytesSent;
      await this.#channel.close().catch(() => {});
      return this.status();
    } catch (error) {
      this.figures.state = 'failed';
      this.figures.error = error instanceof Error ? error.message : String(error);
      this.figures.bytes_sent = this.#channel.stats.bytesSent;
      if (this.#channel.open) void this.#channel.abort((error as { code?: string }).code ?? 'BV_MIG_STATE', this.figures.error);
      else this.#channel.destroy();
      throw error;
    } finally {
      if (vm.memory.writeEpochActive) vm.memory.endWriteEpoch();
      this.#diskLog?.close();
    }
  }

  /** Epoch 0's disk: every sector the overlays hold, while the guest runs (sectors written meanwhile go again at the capture). */
  async #firstDiskPass(): Promise<void> {
    const log = this.#diskLog;
    if (log === null) return;
    log.open();
    const sectors = log.device.disk.overlaySectors();
    for (const payload of diskFrames(log.device.disk, sectors, this.#vm.name)) {
      await this.#channel.send(ReplicationFrame.DISK, payload);
      this.#firstPassDiskFrames++;
      await yieldToGuests();
    }
    this.#firstPassDiskSectors = sectors.length;
  }

  #vmEnded(): boolean {
    const stop = this.#vm.stopReason.kind;
    return stop === 'halted' || stop === 'guest-error' || stop === 'host-error';
  }

  async #sleep(ms: number): Promise<void> {
    if (this.#stopping) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
    });
  }

  #noteCommitted(epoch: number, captured: { instructions: number; at: number; records: number }, bytes: number): void {
    const f = this.figures;
    const now = performance.now();
    f.state = 'replicating';
    f.committed_epoch = epoch;
    f.committed_instructions = captured.instructions;
    f.committed_at = captured.at;
    f.epochs = epoch + 1;
    f.last_epoch_bytes = bytes;
    f.last_epoch_pages = captured.records;
    f.bytes_sent = this.#channel.stats.bytesSent;
    if (epoch === 0) this.#firstCommitAt = now;
    else {
      this.#bytesAfterFirst += bytes;
      f.mean_epoch_bytes = Math.round(this.#bytesAfterFirst / epoch);
      f.epochs_per_second = Math.round((epoch / ((now - this.#firstCommitAt) / 1000)) * 10) / 10;
    }
    this.status();
    this.#options.onCommitted?.(epoch);
  }

  /** Epoch 0's pass over every page, while the guest runs (the epoch's writes are sent again at its capture). */
  async #firstPass(): Promise<void> {
    const memory = this.#vm.memory;
    const batch = new PageBatch(this.#options.pagesPerFrame ?? DEFAULT_PAGES_PER_FRAME);
    let sliceStart = performance.now();
    for (let gpn = 0; gpn < this.#pageCount; gpn++) {
      if (memory.stateOf(gpn) !== PageState.UNTOUCHED) {
        const bytes = this.#readPage(gpn);
        if (bytes !== null) {
          batch.add(gpn, bytes);
          this.#sent[gpn] = 1;
          this.#firstPassRecords++;
          if (batch.count === batch.capacity) await this.#channel.send(ReplicationFrame.PAGES, batch.encode());
        }
      }
      if (performance.now() - sliceStart >= WORK_SLICE_MS) {
        await yieldToGuests();
        sliceStart = performance.now();
      }
    }
    if (batch.count > 0) await this.#channel.send(ReplicationFrame.PAGES, batch.encode());
  }

  /** The VM paused, synchronously: the pages written since the last capture and the state. */
  #capture(epoch: number): { frames: Uint8Array[]; diskFrames: Uint8Array[]; diskSectors: number; state: Uint8Array; records: number; instructions: number; at: number } {
    const vm = this.#vm;
    const started = performance.now();
    this.#hooks.pause();
    try {
      settlePoisonedPages(vm);
      const dirty = this.#dirty.close();
      this.#dirty.open();
      const batch = new PageBatch(this.#options.pagesPerFrame ?? DEFAULT_PAGES_PER_FRAME);
      const frames: Uint8Array[] = [];
      let records = epoch === 0 ? this.#firstPassRecords : 0;
      const add = (gpn: number, bytes: Uint8Array | null) => {
        batch.add(gpn, bytes);
        this.#sent[gpn] = bytes === null ? 0 : 1;
        records++;
        if (batch.count === batch.capacity) frames.push(batch.encode());
      };
      const inDirty = this.#dirty.flags;
      for (const gpn of dirty) {
        const bytes = this.#readPage(gpn);
        if (bytes === null && this.#sent[gpn] === 0) continue; // the backup has zeros there already
        add(gpn, bytes);
      }
      // Pages the backup holds bytes for that are empty now without having been written.
      for (const gpn of dirty) inDirty[gpn] = 1;
      const memory = vm.memory;
      for (let gpn = 0; gpn < this.#pageCount; gpn++) {
        if (this.#sent[gpn] !== 1 || inDirty[gpn] === 1) continue;
        const state = memory.stateOf(gpn);
        if (state === PageState.UNTOUCHED || state === PageState.BALLOONED || state === PageState.POISONED) add(gpn, null);
      }
      for (const gpn of dirty) inDirty[gpn] = 0;
      if (batch.count > 0) frames.push(batch.encode());
      // The sectors written since the last capture, read now: the disk as it is at this capture.
      const sectors = this.#diskLog === null ? [] : this.#diskLog.take();
      const diskPayloads = this.#diskLog === null ? [] : [...diskFrames(this.#diskLog.device.disk, sectors, vm.name)];
      // The backup names its own copy of the disk in place of this chain: no overlay is sealed here.
      const device = this.#diskLog?.device;
      if (device) device.unsealedSave = true;
      let captured;
      try {
        captured = vm.captureState();
      } finally {
        if (device) device.unsealedSave = false;
      }
      const extra = this.#options.extra;
      const contents = vmCheckpointContents(vm, captured, typeof extra === 'function' ? extra() : extra);
      const state = encodeState(contents.config, contents.cpus, encodeDevices(contents.devices));
      const instructions = vm.instructionsRetired;
      this.#options.onCapture?.(epoch, instructions);
      return { frames, diskFrames: diskPayloads, diskSectors: sectors.length, state, records, instructions, at: Date.now() };
    } finally {
      this.#hooks.resume();
      const pause = round3(performance.now() - started);
      this.figures.last_pause_ms = pause;
      this.figures.max_pause_ms = Math.max(this.figures.max_pause_ms, pause);
    }
  }

  #readPage(gpn: number): Uint8Array | null {
    let bytes: Uint8Array | null;
    try {
      bytes = currentPage(this.#vm, gpn);
    } catch (error) {
      if (error instanceof KernelError || (error as { code?: string }).code === 'BV_VMCKPT_UNSAVEABLE') {
        throw new MigrationError('BV_MIG_STATE', `${this.#vm.name}: guest page ${gpn} cannot be read for replication: ${(error as Error).message}`, { cause: error });
      }
      throw error;
    }
    return bytes === null || isZero(bytes) ? null : bytes;
  }
}

/** A console log that can hold its output back (the host's ConsoleLog). */
export interface HeldOutput {
  /** Bytes written, visible or held. */
  readonly writtenBytes: number;
  /** Start holding output back. */
  hold(): void;
  /** Let held output out up to this absolute offset. */
  release(upTo: number): void;
  /** Stop holding: let everything out. */
  unhold(): void;
}

/**
 * Output commit (Remus): console output leaves the primary only once the epoch that produced it
 * is committed at the backup. Holds `log`'s output from now on; at each capture `flush` moves
 * what the console device buffered into the log and the log's length is noted; when the backup
 * commits that epoch the output up to the note is released. Give the returned hooks to
 * ReplicationSender (with `onCapture`/`onCommitted` of your own, call both) and call `end()`
 * when the replication ends (the output is unprotected again and let out).
 */
export function outputCommit(log: HeldOutput, flush: () => void): {
  /** Call at an epoch's capture: output written so far belongs to that epoch. */
  onCapture: (epoch: number) => void;
  /** Call when the backup committed an epoch: its output may leave. */
  onCommitted: (epoch: number) => void;
  /** Stops holding output back (replication ended). */
  end: () => void;
} {
  const marks = new Map<number, number>();
  log.hold();
  return {
    onCapture: (epoch) => {
      flush();
      marks.set(epoch, log.writtenBytes);
    },
    onCommitted: (epoch) => {
      const mark = marks.get(epoch);
      for (const key of marks.keys()) if (key <= epoch) marks.delete(key);
      if (mark !== undefined) log.release(mark);
    },
    end: () => {
      marks.clear();
      log.unhold();
    },
  };
}

// ------------------------------------------------------------------------------------ backup

/** The backup's figures of one replica. */
export interface ReplicaFigures {
  /** The VM's name (once BEGIN arrived). */
  name: string | null;
  /** 'connecting', 'receiving', 'disconnected' (the stream ended or failed: the last epoch stays), 'activated'. */
  state: 'connecting' | 'receiving' | 'disconnected' | 'activated';
  /** The primary's interval, ms. */
  interval_ms: number | null;
  /** The last epoch committed here, or null (nothing can be activated yet). */
  committed_epoch: number | null;
  /** Guest instructions retired at that epoch's capture on the primary. */
  committed_instructions: number | null;
  /** The primary's clock at that epoch's capture (ms since the epoch). */
  committed_at: number | null;
  /** Now minus committed_at (the recovery point; assumes the hosts' clocks agree), ms. */
  age_ms: number | null;
  /** Epochs committed. */
  epochs: number;
  /** Epochs dropped because they did not arrive whole (a cut, a corrupt frame). */
  epochs_dropped: number;
  /** Bytes of the last committed epoch's frames (epoch 0 includes the first pass). */
  last_epoch_bytes: number;
  /** Pages held for the committed image. */
  pages: number;
  /** Bytes received in all. */
  bytes_received: number;
  /** Why the stream ended, or null. */
  error: string | null;
  /** The replicated disk's overlay here (the committed epoch's sectors are in it), or null: no disk is replicated. */
  disk_overlay: string | null;
  /** Disk sectors written into it at commits. */
  disk_sectors: number;
}

/** Options of the backup. */
export interface ReplicaOptions {
  /** Where the replicated disk's overlay is written (default: the directory of the disk's raw base; required for a disk without one). */
  diskDir?: string | null;
}

/** What the backup's host does to activate a replica. */
export interface ActivateHooks {
  /**
   * Creates the empty VM with the devices `attach` describes (throw to refuse). With `disk` (the
   * disk was replicated), attach the block device on `disk.path` with new overlays in
   * `disk.overlayDir`, and give the device to `block`.
   */
  create(config: VmConfig, attach: JsonObject, disk?: { path: string; overlayDir: string } | null): Vm;
  /** The block device of the VM create() made (needed when the disk was replicated). */
  block?(vm: Vm): BlockDevice | null;
  /** The state is in: run the VM. */
  start(vm: Vm, decoded: DecodedVmCheckpoint): void;
  /** Activation failed after create: destroy the VM. */
  discard(vm: Vm): void;
}

/**
 * The backup side of one replication stream. run() receives epochs until the stream ends; it
 * never rejects (the end and its reason are in the figures) and the last committed epoch stays
 * activatable whatever happened to the stream.
 */
export class ReplicaReceiver {
  /** Live figures (status() brings the age up to now). */
  readonly figures: ReplicaFigures = {
    name: null, state: 'connecting', interval_ms: null, committed_epoch: null, committed_instructions: null, committed_at: null, age_ms: null,
    epochs: 0, epochs_dropped: 0, last_epoch_bytes: 0, pages: 0, bytes_received: 0, error: null, disk_overlay: null, disk_sectors: 0,
  };

  #channel: FramedChannel | null;
  #config: JsonObject | null = null;
  #attach: JsonObject = {};
  #pageCount = 0;
  /** The committed image: page bytes by gpn (absent: zero), and the encoded state. */
  readonly #pages = new Map<number, Uint8Array>();
  #state: Uint8Array | null = null;
  /** The epoch being received. */
  #staged = new Map<number, Uint8Array | null>();
  #stagedRecords = 0;
  #stagedState: Uint8Array | null = null;
  #stagedBytesFrom = 0;
  readonly #options: ReplicaOptions;
  /** The replicated disk: where the block device attaches, and the chain the committed sectors are written into. */
  #diskAt: { path: string; overlayDir: string } | null = null;
  #disk: DiskChain | null = null;
  /** The disk sealed by a first activation attempt (a retry reuses it). */
  #sealedDisk: DiskChainState | null = null;
  /** Set when writing a commit's sectors failed: the disk is between two epochs and cannot be activated. */
  #diskBroken: string | null = null;
  #stagedDisk: DiskRun[] = [];
  #stagedDiskFrames = 0;

  constructor(channel: FramedChannel, options: ReplicaOptions = {}) {
    this.#channel = channel;
    this.#options = options;
  }

  /** The figures with the age brought up to now. */
  status(): ReplicaFigures {
    this.figures.pages = this.#pages.size;
    if (this.#channel !== null) this.figures.bytes_received = this.#channel.stats.bytesReceived;
    if (this.figures.committed_at !== null) this.figures.age_ms = Date.now() - this.figures.committed_at;
    return this.figures;
  }

  /**
   * Handles the stream; `begin` is the BEGIN frame's payload when the caller already read it
   * (a host that tells replication from migration by the first frame).
   */
  async run(begin?: Uint8Array): Promise<ReplicaFigures> {
    const channel = this.#channel!;
    try {
      const first = decodeJson(begin ?? await channel.expect(ReplicationFrame.BEGIN, 'BEGIN'), 'BEGIN');
      const config = first.config as JsonObject | undefined;
      if (typeof config !== 'object' || config === null || typeof config.memoryBytes !== 'number' || typeof config.name !== 'string' || typeof first.pageCount !== 'number') {
        throw new MigrationError('BV_MIG_PROTOCOL', 'the BEGIN frame has no VM configuration');
      }
      if (first.pageCount !== Math.ceil(config.memoryBytes / PAGE_SIZE)) throw new MigrationError('BV_MIG_PROTOCOL', `${config.name}: ${String(first.pageCount)} pages do not match ${config.memoryBytes} bytes`);
      this.#config = config;
      this.#attach = (first.attach ?? {}) as JsonObject;
      this.#pageCount = first.pageCount;
      this.figures.name = config.name;
      this.figures.interval_ms = typeof first.interval_ms === 'number' ? first.interval_ms : null;
      const disk = parseMigratedDisk(first.disk, `replication of ${config.name}`);
      if (disk !== null) this.#openDisk(disk, config.name);
      this.figures.state = 'receiving';
      await channel.send(ReplicationFrame.READY, encodeJson({}));
      this.#stagedBytesFrom = channel.stats.bytesReceived;
      for (;;) {
        const frame = await channel.receive();
        if (frame === null) break; // BYE: the primary stopped in good order
        if (frame.type === ReplicationFrame.PAGES) this.#stagePages(frame.payload);
        else if (frame.type === ReplicationFrame.DISK && this.#disk !== null) {
          // Copied: staged until COMMIT, never written into the disk before.
          for (const run of decodeDiskFrame(frame.payload, this.#disk.sectors, `replication of ${config.name}`)) this.#stagedDisk.push({ first: run.first, data: run.data.slice() });
          this.#stagedDiskFrames++;
        } else if (frame.type === ReplicationFrame.STATE) {
          // Checked now, so that a state that cannot be decoded is never committed.
          decodeState(frame.payload, this.#pageCount, `replication of ${config.name}`);
          this.#stagedState = frame.payload;
        } else if (frame.type === ReplicationFrame.COMMIT) {
          const epoch = this.#commit(decodeJson(frame.payload, 'COMMIT'));
          await channel.send(ReplicationFrame.ACK, encodeJson({ epoch }));
        } else throw new MigrationError('BV_MIG_PROTOCOL', `${config.name}: unexpected frame type ${frame.type} in a replication stream`);
      }
      if (this.#partial(channel)) this.figures.epochs_dropped++;
      this.figures.error = 'the primary ended the replication';
    } catch (error) {
      if (this.#partial(channel)) this.figures.epochs_dropped++;
      this.figures.error = error instanceof Error ? error.message : String(error);
      if (channel.open) await channel.abort((error as { code?: string }).code ?? 'BV_MIG_PROTOCOL', this.figures.error).catch(() => {});
      else channel.destroy();
    }
    this.#dropStaged();
    this.status();
    this.#channel = null;
    if (this.figures.state === 'receiving' || this.figures.state === 'connecting') this.figures.state = 'disconnected';
    return this.figures;
  }

  /** Opens (or creates) the disk the committed sectors go into, on the same base as the primary's. */
  #openDisk(disk: MigratedDisk, name: string): void {
    const at = receivingDisk(disk, this.#options.diskDir ?? null, name);
    let chain: DiskChain;
    try {
      chain = DiskChain.open(at.path, { overlayDir: at.overlayDir });
    } catch (error) {
      throw new MigrationError('BV_MIG_DISK', `${name}: cannot open the replicated disk at ${at.path}: ${(error as Error).message}`, { cause: error });
    }
    if (chain.sectors !== disk.sectors) {
      chain.close();
      throw new MigrationError('BV_MIG_DISK', `${name}: the replicated disk has ${disk.sectors} sectors, ${at.path} here has ${chain.sectors}`);
    }
    this.#diskAt = at;
    this.#disk = chain;
  }

  /** Ends the stream (the replica keeps its last committed epoch). */
  disconnect(): void {
    this.#channel?.destroy();
  }

  /**
   * Drops the replica (replaced by a new one, or its host closes): ends the stream and, unless it
   * was activated (the VM then owns the disk), closes and removes its disk overlay, which nothing
   * else can use without the replica's memory image.
   */
  discard(): void {
    this.disconnect();
    if (this.figures.state === 'activated' || this.#disk === null) return;
    if (this.#sealedDisk === null) discardReceivedDisk(this.#disk);
    this.#disk = null;
  }

  #stagePages(payload: Uint8Array): void {
    const name = this.figures.name;
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    if (payload.length < 4) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: a PAGES frame is too short`);
    const count = view.getUint32(0, true);
    let data = 4 + count * RECORD_BYTES;
    if (data > payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: a PAGES frame's records run past its end`);
    for (let i = 0; i < count; i++) {
      const gpn = view.getUint32(4 + i * RECORD_BYTES, true);
      const kind = view.getUint32(8 + i * RECORD_BYTES, true);
      if (gpn >= this.#pageCount) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: page ${gpn} is outside the VM's ${this.#pageCount} pages`);
      if (kind === PageKind.BYTES) {
        if (data + PAGE_SIZE > payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: a PAGES frame holds fewer pages than its records`);
        this.#staged.set(gpn, payload.slice(data, data + PAGE_SIZE));
        data += PAGE_SIZE;
      } else if (kind === PageKind.ZERO) this.#staged.set(gpn, null);
      else throw new MigrationError('BV_MIG_PROTOCOL', `${name}: page ${gpn} has an unknown record kind ${kind}`);
      this.#stagedRecords++;
    }
    if (data !== payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: a PAGES frame has ${payload.length - data} bytes after its pages`);
  }

  /** Checks COMMIT against what was staged and merges it into the committed image, synchronously. */
  #commit(commit: JsonObject): number {
    const name = this.figures.name;
    const expected = this.figures.committed_epoch === null ? 0 : this.figures.committed_epoch + 1;
    if (commit.epoch !== expected) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: COMMIT of epoch ${String(commit.epoch)}, expected ${expected}`);
    if (this.#stagedState === null) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: COMMIT of epoch ${expected} without its state`);
    if (commit.records !== this.#stagedRecords) {
      throw new MigrationError('BV_MIG_PROTOCOL', `${name}: epoch ${expected} announces ${String(commit.records)} page records, ${this.#stagedRecords} arrived`);
    }
    if (typeof commit.instructions !== 'number' || typeof commit.captured_at !== 'number') throw new MigrationError('BV_MIG_PROTOCOL', `${name}: COMMIT without instructions or capture time`);
    if ((commit.disk_frames ?? 0) !== this.#stagedDiskFrames) {
      throw new MigrationError('BV_MIG_PROTOCOL', `${name}: epoch ${expected} announces ${String(commit.disk_frames)} disk frames, ${this.#stagedDiskFrames} arrived`);
    }
    if (this.#diskBroken !== null) throw new MigrationError('BV_MIG_DISK', `${name}: ${this.#diskBroken}`);
    if (this.#disk !== null && this.#stagedDisk.length > 0) {
      try {
        writeDiskRuns(this.#disk, this.#stagedDisk, name ?? '?');
      } catch (error) {
        // Part of the epoch's sectors may be in: the disk is neither epoch any more.
        this.#diskBroken = `writing the disk sectors of epoch ${expected} failed, so the replica's disk is between two epochs and cannot be activated: ${(error as Error).message}`;
        throw new MigrationError('BV_MIG_DISK', `${name}: ${this.#diskBroken}`, { cause: error });
      }
      for (const run of this.#stagedDisk) this.figures.disk_sectors += run.data.length / DISK_SECTOR_BYTES;
      this.figures.disk_overlay = this.#disk.topPath;
    }
    for (const [gpn, bytes] of this.#staged) {
      if (bytes === null) this.#pages.delete(gpn);
      else this.#pages.set(gpn, bytes);
    }
    this.#state = this.#stagedState;
    const f = this.figures;
    f.committed_epoch = expected;
    f.committed_instructions = commit.instructions;
    f.committed_at = commit.captured_at;
    f.epochs = expected + 1;
    const received = this.#channel!.stats.bytesReceived;
    f.last_epoch_bytes = received - this.#stagedBytesFrom;
    this.#stagedBytesFrom = received;
    this.#dropStaged();
    this.status();
    return expected;
  }

  /** Whether part of an epoch arrived after the last commit (frames staged, or bytes of a frame). */
  #partial(channel: FramedChannel): boolean {
    return this.figures.state === 'receiving' && (this.#staged.size > 0 || this.#stagedState !== null || this.#stagedDiskFrames > 0 || channel.stats.bytesReceived > this.#stagedBytesFrom);
  }

  #dropStaged(): void {
    this.#staged = new Map();
    this.#stagedRecords = 0;
    this.#stagedState = null;
    this.#stagedDisk = [];
    this.#stagedDiskFrames = 0;
  }

  /**
   * Failover: ends the stream (if any), creates the VM from the last committed epoch and starts
   * it. Throws when no epoch was committed or the replica was activated already.
   */
  activate(hooks: ActivateHooks): Vm {
    const name = this.figures.name ?? '?';
    if (this.figures.state === 'activated') throw new MigrationError('BV_MIG_BAD_REQUEST', `replica '${name}' was activated already`);
    if (this.#state === null || this.#config === null) throw new MigrationError('BV_MIG_STATE', `replica '${name}' has no complete epoch yet: nothing to activate`);
    if (this.#diskBroken !== null) throw new MigrationError('BV_MIG_DISK', `replica '${name}': ${this.#diskBroken}`);
    this.disconnect();
    const decoded = decodeState(this.#state, this.#pageCount, `replica of ${name}`);
    if (this.#disk !== null) {
      // The committed epoch's disk: sealed, named in the block state in place of the primary's chain.
      if (this.#sealedDisk === null) {
        try {
          this.#sealedDisk = this.#disk.checkpoint();
        } catch (error) {
          throw new MigrationError('BV_MIG_DISK', `replica '${name}': its disk cannot be sealed: ${(error as Error).message}`, { cause: error });
        }
        this.#disk.close();
      }
      adoptReceivedDisk(decoded.state, this.#sealedDisk, name);
    }
    const vm = hooks.create(this.#config as unknown as VmConfig, this.#attach, this.#diskAt);
    try {
      if (this.#diskAt !== null && (hooks.block?.(vm) ?? null) === null) throw new MigrationError('BV_MIG_DISK', `${name}: the VM made for the replica has no block device for its replicated disk`);
      if (vm.memory.pageCount !== this.#pageCount) throw new MigrationError('BV_MIG_STATE', `${name}: the VM made for the replica has ${vm.memory.pageCount} pages, the replica ${this.#pageCount}`);
      for (const gpn of [...this.#pages.keys()].sort((a, b) => a - b)) vm.memory.installPage(gpn, this.#pages.get(gpn)!);
      vm.checkState(decoded.state);
      vm.image = decoded.image;
      vm.restoreCheckedState(decoded.state);
    } catch (error) {
      hooks.discard(vm);
      throw error instanceof MigrationError ? error : new MigrationError('BV_MIG_STATE', `${name}: the replica does not fit the VM: ${(error as Error).message}`, { cause: error });
    }
    this.figures.state = 'activated';
    this.status();
    hooks.start(vm, decoded);
    return vm;
  }
}
