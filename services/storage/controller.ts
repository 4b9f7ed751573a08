/**
 * PARDA (T-19, docs/storage-io.md): decentralised control of the IOs a host issues to a storage
 * device it shares with other hosts. The controller is the block devices' gate (BlockIoGate in
 * devices/block.ts): a device asks it before it issues a request and tells it the latency when
 * the request completes. It keeps
 * - a host-wide window w: the IOs in flight it allows, all VMs together;
 * - a FIFO per VM; when the window has room the next request comes from the VM furthest below its
 *   share of the window (its IO shares over those of the VMs with requests);
 * - L(t), an average of its own IOs' latency normalised to 4 KiB (law.ts).
 * Every control period it publishes its figures in its own block of a statistics file next to the
 * image (stats-file.ts), reads every host's block, takes the IO-weighted average latency of the
 * live ones and applies w(t+1) = (1 − γ)·w(t) + γ·((𝓛/L)·w(t) + β). No host coordinates the
 * others: each reads the same file and applies the same law, so windows settle in the ratio of
 * the hosts' β (their IO shares) with the latency near 𝓛.
 */
import { StorageIoError } from './errors.ts';
import { admitted, betaOf, clusterLatency, ewmaLatency, nextWindow, normalisedLatency, type LatencySample } from './law.ts';
import { StatsFile, StatsFlag, STATS_MAX_HOSTS, type HostBlock } from './stats-file.ts';

/** The controller's settings (the host config's `storage_io`, docs/host.md). */
export interface StorageIoOptions {
  /** The shared statistics file (one per storage device). */
  statsFile: string;
  /** This host's slot in it, 0 … 255 (unique among the hosts sharing the device). */
  hostId: number;
  /** How this host names itself in its block. */
  name?: string;
  /** 𝓛: the cluster latency threshold, ms (of a 4 KiB IO, after normalisation). */
  thresholdMs: number;
  /** γ, 0 < γ ≤ 1 (default 0.5): the share of a step the law moves the window. */
  gamma?: number;
  /** α, 0 ≤ α < 1 (default 0.5): the weight of history in L(t) = (1 − α)·l + α·L(t − 1). */
  alpha?: number;
  /** β for 1000 IO shares (default 1.5): β = beta × (the host's IO shares) / 1000. */
  beta?: number;
  /** Smallest window (default 1). */
  windowMin?: number;
  /** Largest window (default 256); also the window when control is off. */
  windowMax?: number;
  /** The control period, ms (default 250). */
  periodMs?: number;
  /** The size-normalisation knee, KiB (default 128; law.ts sizeFactor). */
  sizeKneeKib?: number;
  /** Blocks older than this many periods are ignored (default 3): a host that stops frees its share. */
  stalePeriods?: number;
  /** Apply the law (default true); false: measure and publish only, the window stays at windowMax. */
  control?: boolean;
}

/** A change made at run time (PATCH /host/storage). */
export type StorageIoUpdate = Partial<Pick<StorageIoOptions, 'thresholdMs' | 'gamma' | 'alpha' | 'beta' | 'windowMin' | 'windowMax' | 'control' | 'sizeKneeKib'>>;

/** Defaults of the optional settings. */
export const STORAGE_IO_DEFAULTS = {
  /** γ. */
  gamma: 0.5,
  /** α. */
  alpha: 0.5,
  /** β for 1000 IO shares. */
  beta: 1.5,
  /** Smallest window. */
  windowMin: 1,
  /** Largest window. */
  windowMax: 256,
  /** Control period, ms. */
  periodMs: 250,
  /** Size-normalisation knee, KiB. */
  sizeKneeKib: 128,
  /** Periods after which a block is stale. */
  stalePeriods: 3,
  /** Apply the law. */
  control: true,
} as const;

/** The IO shares of a VM that names none (ESX's "normal"). */
export const DEFAULT_IO_SHARES = 1000;
/** The most IO shares a VM may hold. */
export const MAX_IO_SHARES = 1_000_000;

/** Clocks the controller reads (tests give simulated ones). */
export interface StorageIoClock {
  /** A monotonic time in ms (performance.now()). */
  monotonicMs(): number;
  /** Wall time in ms since the epoch (Date.now()): what blocks are stamped and aged with. */
  wallMs(): number;
}

const SYSTEM_CLOCK: StorageIoClock = { monotonicMs: () => performance.now(), wallMs: () => Date.now() };

/** A FIFO of start callbacks that reuses its array (no shift). */
class StartQueue {
  private items: ((() => void) | undefined)[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(start: () => void): void {
    this.items.push(start);
  }
  shift(): (() => void) | undefined {
    if (this.head >= this.items.length) return undefined;
    const start = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return start;
  }
  clear(): number {
    const dropped = this.length;
    this.items = [];
    this.head = 0;
    return dropped;
  }
}

/** One VM's part of the host's IO. */
class VmIo {
  readonly queue = new StartQueue();
  inFlight = 0;
  ios = 0;
  bytes = 0;
  latencySumNs = 0;
  /** Counters at the last period's end (for per-period rates). */
  periodIos = 0;
  periodBytes = 0;
  periodLatencyNs = 0;
  lastIops = 0;
  lastLatencyNs = 0;
  removed = false;
  constructor(
    readonly owner: string,
    public shares: number,
  ) {}
}

/** A VM's figures (GET /host/storage `vms`, and per-VM stats). */
export interface VmIoStatus {
  /** The VM (the gate's owner). */
  name: string;
  /** Its IO shares. */
  io_shares: number;
  /** Its share of the window: w × its shares over the shares of the VMs with requests (or of all). */
  window_share: number;
  /** Its requests started and not completed. */
  in_flight: number;
  /** Its requests waiting for the window. */
  queued: number;
  /** IOs completed since it joined. */
  ios: number;
  /** Bytes moved since it joined. */
  bytes: number;
  /** IOs per second over the last period. */
  iops: number;
  /** Mean raw latency of its IOs in the last period, ms. */
  latency_ms: number;
}

/** Another host's block as this host last read it. */
export interface PeerStatus {
  /** Its slot. */
  host_id: number;
  /** Its name. */
  name: string;
  /** Its process id. */
  pid: number;
  /** Its figures count (fresh, not stopped). */
  live: boolean;
  /** It stopped cleanly (its share is free). */
  stopped: boolean;
  /** It applies the law. */
  controlled: boolean;
  /** How old its block was when read, ms. */
  age_ms: number;
  /** Its L(t), normalised, ms. */
  latency_ms: number;
  /** IOs it completed in its last period. */
  io_count: number;
  /** Its window. */
  window: number;
  /** Its VMs' IO shares. */
  shares: number;
  /** Its IOPS over its last period. */
  iops: number;
  /** Its bytes per second over its last period. */
  throughput_bytes_per_s: number;
}

/** GET /host/storage. */
export interface StorageIoStatus {
  /** The law is applied (false: measuring only, the window at window_max). */
  controlled: boolean;
  /** This host's slot. */
  host_id: number;
  /** The statistics file. */
  stats_file: string;
  /** The control period, ms. */
  period_ms: number;
  /** 𝓛, ms. */
  threshold_ms: number;
  /** γ. */
  gamma: number;
  /** α. */
  alpha: number;
  /** β for 1000 shares (the setting). */
  beta_per_1000_shares: number;
  /** This host's β now (its VMs' shares). */
  beta: number;
  /** The size-normalisation knee, KiB. */
  size_knee_kib: number;
  /** w(t): IOs in flight allowed. */
  window: number;
  /** Smallest window. */
  window_min: number;
  /** Largest window. */
  window_max: number;
  /** Requests the window admits (whole). */
  admitted: number;
  /** L(t), normalised to 4 KiB, ms (null before the first IO). */
  latency_ms: number | null;
  /** Mean raw latency of the last period's IOs, ms. */
  raw_latency_ms: number;
  /** The IO-weighted latency of the live hosts (the law's input), ms, or null. */
  cluster_latency_ms: number | null;
  /** Requests started and not completed. */
  in_flight: number;
  /** Requests waiting for the window. */
  queued: number;
  /** IOs per second and bytes per second over the last period. */
  iops: number;
  /** Bytes per second over the last period. */
  throughput_bytes_per_s: number;
  /** Since start: IOs, bytes, the sum of raw latencies (ms) and of normalised ones (ms). */
  ios_total: number;
  /** Bytes since start. */
  bytes_total: number;
  /** Sum of raw latencies since start, ms. */
  latency_sum_ms: number;
  /** Sum of normalised latencies since start, ms. */
  normalised_latency_sum_ms: number;
  /** Control periods run. */
  periods: number;
  /** Torn reads of the statistics file (each retried). */
  torn_reads: number;
  /** Times another writer was seen in this host's slot. */
  slot_conflicts: number;
  /** The IO shares of this host's VMs. */
  io_shares: number;
  /** Each VM's part. */
  vms: VmIoStatus[];
  /** The other hosts' blocks. */
  hosts: PeerStatus[];
  /** When this was taken (ms since the epoch). */
  timestamp_ms: number;
}

const NS_PER_MS = 1e6;

/**
 * The PARDA controller of one host: a BlockIoGate for its VMs' block devices. open() claims the
 * slot; start() runs the control period on a timer (tests call tick() themselves).
 */
export class PardaController {
  private readonly file: StatsFile;
  private readonly vms = new Map<string, VmIo>();
  private readonly order: VmIo[] = [];
  private settings: Required<Omit<StorageIoOptions, 'name'>> & { name: string };
  private window: number;
  private latencyNs: number | null = null;
  private clusterNs: number | null = null;
  private inFlight = 0;
  private queued = 0;
  private peakDemand = 0;
  private rotor = 0;
  private readonly instance = (Math.random() * 2 ** 32) >>> 0;
  private seq = 0;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  // The current period.
  private periodStartMs: number;
  private periodIos = 0;
  private periodBytes = 0;
  private periodRawNs = 0;
  private periodNormNs = 0;
  // The last period's figures.
  private lastIops = 0;
  private lastBytesPerSecond = 0;
  private lastRawNs = 0;
  private lastIoCount = 0;
  // Totals.
  private iosTotal = 0;
  private bytesTotal = 0;
  private rawSumNs = 0;
  private normSumNs = 0;
  private periods = 0;
  private tornReads = 0;
  private slotConflicts = 0;
  private peers: PeerStatus[] = [];

  private constructor(options: StorageIoOptions, private readonly clock: StorageIoClock) {
    this.settings = checkOptions(options);
    this.window = this.settings.windowMax;
    this.file = new StatsFile(this.settings.statsFile, this.settings.hostId);
    this.periodStartMs = clock.monotonicMs();
  }

  /**
   * Opens the statistics file and claims slot `hostId`: refused (BV_STORAGE_SLOT_BUSY) while
   * another process's fresh, not-stopped block is in it. Publishes a first block at once.
   */
  static open(options: StorageIoOptions, clock: StorageIoClock = SYSTEM_CLOCK): PardaController {
    const controller = new PardaController(options, clock);
    try {
      const existing = controller.file.readSlot(controller.settings.hostId);
      if (existing !== null && existing !== 'torn' && controller.isLive(existing) && existing.instance !== controller.instance) {
        throw new StorageIoError('BV_STORAGE_SLOT_BUSY', `host_id ${controller.settings.hostId} of ${controller.settings.statsFile} is in use by process ${existing.pid} ('${existing.name}'), which wrote it ${Math.round(clock.wallMs() - existing.timestampMs)} ms ago: give this host another host_id`);
      }
      controller.publish();
    } catch (error) {
      controller.file.close();
      throw error;
    }
    return controller;
  }

  /** Runs tick() every period (the timer does not keep the process alive). */
  start(): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setInterval(() => this.tick(), this.settings.periodMs);
    this.timer.unref();
  }

  /** Registers (or re-registers) a VM with its IO shares. */
  addVm(owner: string, shares = DEFAULT_IO_SHARES): void {
    checkShares(shares, 'io_shares');
    const existing = this.vms.get(owner);
    if (existing !== undefined) {
      existing.shares = shares;
      existing.removed = false;
      return;
    }
    const vm = new VmIo(owner, shares);
    this.vms.set(owner, vm);
    this.order.push(vm);
  }

  /** Changes a VM's IO shares (PATCH); false when the VM is unknown. */
  setShares(owner: string, shares: number): boolean {
    checkShares(shares, 'io_shares');
    const vm = this.vms.get(owner);
    if (vm === undefined || vm.removed) return false;
    vm.shares = shares;
    this.dispatch();
    return true;
  }

  /** A VM's IO shares, or null when unknown. */
  sharesOf(owner: string): number | null {
    const vm = this.vms.get(owner);
    return vm === undefined || vm.removed ? null : vm.shares;
  }

  /** A VM leaves (deleted, migrated): its queued requests are dropped, its in-flight ones still complete. */
  removeVm(owner: string): void {
    const vm = this.vms.get(owner);
    if (vm === undefined) return;
    this.forget(owner);
    vm.removed = true;
    this.prune(vm);
  }

  // ------------------------------------------------------------------ BlockIoGate

  /** A request of `bytes` from `owner`: started now if the window has room, else queued. */
  submit(owner: string, bytes: number, start: () => void): void {
    let vm = this.vms.get(owner);
    if (vm === undefined || vm.removed) {
      this.addVm(owner, vm?.shares ?? DEFAULT_IO_SHARES);
      vm = this.vms.get(owner)!;
    }
    void bytes; // sizes are accounted at completion
    vm.queue.push(start);
    this.queued++;
    const demand = this.inFlight + this.queued;
    if (demand > this.peakDemand) this.peakDemand = demand;
    this.dispatch();
  }

  /** A started request completed after `latencyNs` (from start() to completion). */
  complete(owner: string, bytes: number, latencyNs: number): void {
    const vm = this.vms.get(owner);
    if (vm === undefined || vm.inFlight === 0) return; // not one of ours: nothing to release
    vm.inFlight--;
    this.inFlight--;
    const latency = Number.isFinite(latencyNs) && latencyNs > 0 ? latencyNs : 0;
    const size = Number.isFinite(bytes) && bytes > 0 ? bytes : 0;
    const normalised = normalisedLatency(latency, size, this.settings.sizeKneeKib * 1024);
    vm.ios++;
    vm.bytes += size;
    vm.latencySumNs += latency;
    this.periodIos++;
    this.periodBytes += size;
    this.periodRawNs += latency;
    this.periodNormNs += normalised;
    this.iosTotal++;
    this.bytesTotal += size;
    this.rawSumNs += latency;
    this.normSumNs += normalised;
    if (vm.removed) this.prune(vm);
    this.dispatch();
  }

  /** Drops `owner`'s requests that have not started (the device reset or closed). */
  forget(owner: string): void {
    const vm = this.vms.get(owner);
    if (vm === undefined) return;
    this.queued -= vm.queue.clear();
  }

  /**
   * `count` of `owner`'s started requests ended without an IO: a worker group gave back credits
   * it had no request for (remote-gate.ts); they leave the window uncounted in L(t).
   */
  release(owner: string, count: number): void {
    const vm = this.vms.get(owner);
    if (vm === undefined) return;
    const released = Math.min(Math.max(0, Math.floor(count)), vm.inFlight);
    vm.inFlight -= released;
    this.inFlight -= released;
    if (vm.removed) this.prune(vm);
    this.dispatch();
  }

  /**
   * `owner`'s request completed and its slot passed at once to the owner's next waiting request:
   * a worker group reusing a credit within its part of the window (remote-gate.ts). Counted as a
   * completion; the owner's requests in flight stay as they were, one fewer waits.
   */
  reuse(owner: string, bytes: number, latencyNs: number): void {
    const vm = this.vms.get(owner);
    if (vm === undefined || vm.inFlight === 0) return;
    // The request it started is one queued here (or one whose credit is on its way; that one comes back unused).
    if (vm.queue.shift() !== undefined) this.queued--;
    vm.inFlight++;
    this.inFlight++;
    this.complete(owner, bytes, latencyNs);
  }

  /** `owner`'s part of the window now: the requests admitted × its shares over those of the VMs with requests (0 when unknown). */
  windowShareOf(owner: string): number {
    const vm = this.vms.get(owner);
    if (vm === undefined || vm.removed) return 0;
    let active = 0;
    for (const other of this.order) if (!other.removed && (other === vm || other.queue.length > 0 || other.inFlight > 0)) active += other.shares;
    return (admitted(this.window) * vm.shares) / active;
  }

  // ------------------------------------------------------------------ control

  /** Starts requests while the window has room, from the VM furthest below its share. */
  private dispatch(): void {
    const limit = admitted(this.window);
    while (this.inFlight < limit && this.queued > 0) {
      const vm = this.pick();
      if (vm === null) return;
      const start = vm.queue.shift()!;
      this.queued--;
      vm.inFlight++;
      this.inFlight++;
      try {
        start();
      } catch (error) {
        vm.inFlight--;
        this.inFlight--;
        throw error;
      }
    }
  }

  /**
   * The VM with requests whose in-flight count is lowest against its shares (in_flight / shares:
   * the one furthest below its share of the window); ties go round-robin.
   */
  private pick(): VmIo | null {
    let best: VmIo | null = null;
    let bestRatio = Infinity;
    const count = this.order.length;
    for (let i = 0; i < count; i++) {
      const vm = this.order[(this.rotor + i) % count]!;
      if (vm.queue.length === 0) continue;
      const ratio = vm.inFlight / vm.shares;
      if (ratio < bestRatio) {
        best = vm;
        bestRatio = ratio;
      }
    }
    if (best !== null) this.rotor = (this.order.indexOf(best) + 1) % count;
    return best;
  }

  /** One control period: measure, publish, read the others, apply the law. */
  tick(): void {
    if (this.closed) return;
    const now = this.clock.monotonicMs();
    const elapsedS = Math.max(1e-3, (now - this.periodStartMs) / 1000);
    this.lastIoCount = this.periodIos;
    this.lastIops = this.periodIos / elapsedS;
    this.lastBytesPerSecond = this.periodBytes / elapsedS;
    this.lastRawNs = this.periodIos > 0 ? this.periodRawNs / this.periodIos : 0;
    if (this.periodIos > 0) this.latencyNs = ewmaLatency(this.latencyNs, this.periodNormNs / this.periodIos, this.settings.alpha);
    for (const vm of this.order) {
      const ios = vm.ios - vm.periodIos;
      vm.lastIops = ios / elapsedS;
      vm.lastLatencyNs = ios > 0 ? (vm.latencySumNs - vm.periodLatencyNs) / ios : 0;
      vm.periodIos = vm.ios;
      vm.periodBytes = vm.bytes;
      vm.periodLatencyNs = vm.latencySumNs;
    }
    this.periodStartMs = now;
    this.periodIos = 0;
    this.periodBytes = 0;
    this.periodRawNs = 0;
    this.periodNormNs = 0;
    this.periods++;
    try {
      this.publish();
      this.readPeers();
    } catch (error) {
      // A failed file operation skips this period's control; the window stays.
      this.peers = [];
      this.clusterNs = null;
      void error;
    }
    const demand = this.peakDemand;
    this.peakDemand = this.inFlight + this.queued;
    if (!this.settings.control) this.window = this.settings.windowMax;
    else {
      this.window = nextWindow({
        window: this.window,
        latencyNs: this.clusterNs,
        thresholdNs: this.settings.thresholdMs * NS_PER_MS,
        gamma: this.settings.gamma,
        beta: this.beta(),
        windowMin: this.settings.windowMin,
        windowMax: this.settings.windowMax,
        demand,
      });
    }
    this.dispatch();
  }

  /** This host's β: the setting scaled by its VMs' IO shares. */
  private beta(): number {
    return betaOf(this.ioShares(), this.settings.beta);
  }

  private ioShares(): number {
    let shares = 0;
    for (const vm of this.order) if (!vm.removed) shares += vm.shares;
    return shares === 0 ? DEFAULT_IO_SHARES : shares;
  }

  private ownBlock(flags: number): HostBlock {
    return {
      hostId: this.settings.hostId,
      flags,
      seq: ++this.seq,
      pid: process.pid,
      instance: this.instance,
      periodMs: this.settings.periodMs,
      timestampMs: this.clock.wallMs(),
      latencyNs: this.latencyNs ?? 0,
      rawLatencyNs: this.lastRawNs,
      ioCount: this.lastIoCount,
      window: this.window,
      shares: this.ioShares(),
      iops: this.lastIops,
      bytesPerSecond: this.lastBytesPerSecond,
      thresholdNs: this.settings.thresholdMs * NS_PER_MS,
      name: this.settings.name,
    };
  }

  private publish(flags: number = StatsFlag.LIVE | (this.settings.control ? StatsFlag.CONTROLLED : 0)): void {
    this.file.write(this.ownBlock(flags));
  }

  /** Whether a block counts: not stopped, and written within stalePeriods of its period. */
  private isLive(block: HostBlock): boolean {
    if ((block.flags & StatsFlag.STOPPED) !== 0 || (block.flags & StatsFlag.LIVE) === 0) return false;
    const age = this.clock.wallMs() - block.timestampMs;
    return age <= this.settings.stalePeriods * Math.max(this.settings.periodMs, block.periodMs);
  }

  private readPeers(): void {
    const snapshot = this.file.readAll();
    this.tornReads += snapshot.tornReads;
    const samples: LatencySample[] = [{ latencyNs: this.latencyNs ?? 0, ioCount: this.lastIoCount }];
    const wall = this.clock.wallMs();
    const peers: PeerStatus[] = [];
    for (const block of snapshot.blocks) {
      if (block.hostId === this.settings.hostId) {
        if (block.instance !== this.instance) this.slotConflicts++;
        continue;
      }
      const live = this.isLive(block);
      if (live) samples.push({ latencyNs: block.latencyNs, ioCount: block.ioCount });
      peers.push({
        host_id: block.hostId, name: block.name, pid: block.pid, live,
        stopped: (block.flags & StatsFlag.STOPPED) !== 0, controlled: (block.flags & StatsFlag.CONTROLLED) !== 0,
        age_ms: Math.round(wall - block.timestampMs), latency_ms: block.latencyNs / NS_PER_MS, io_count: block.ioCount,
        window: block.window, shares: block.shares, iops: block.iops, throughput_bytes_per_s: block.bytesPerSecond,
      });
    }
    this.peers = peers;
    this.clusterNs = clusterLatency(samples);
  }

  /** Changes settings at run time (PATCH /host/storage); the next period uses them. */
  update(update: StorageIoUpdate): void {
    const next = checkOptions({ ...this.settings, ...update });
    this.settings = next;
    if (update.control === false) this.window = next.windowMax;
    this.window = Math.min(next.windowMax, Math.max(next.windowMin, this.window));
    this.dispatch();
  }

  /** The window now (IOs in flight allowed). */
  get currentWindow(): number {
    return this.window;
  }

  /** GET /host/storage. */
  status(): StorageIoStatus {
    const s = this.settings;
    const activeShares = this.order.reduce((sum, vm) => sum + (!vm.removed && (vm.queue.length > 0 || vm.inFlight > 0) ? vm.shares : 0), 0);
    const allShares = this.ioShares();
    return {
      controlled: s.control, host_id: s.hostId, stats_file: s.statsFile, period_ms: s.periodMs,
      threshold_ms: s.thresholdMs, gamma: s.gamma, alpha: s.alpha, beta_per_1000_shares: s.beta, beta: this.beta(), size_knee_kib: s.sizeKneeKib,
      window: this.window, window_min: s.windowMin, window_max: s.windowMax, admitted: admitted(this.window),
      latency_ms: this.latencyNs === null ? null : this.latencyNs / NS_PER_MS,
      raw_latency_ms: this.lastRawNs / NS_PER_MS,
      cluster_latency_ms: this.clusterNs === null ? null : this.clusterNs / NS_PER_MS,
      in_flight: this.inFlight, queued: this.queued, iops: this.lastIops, throughput_bytes_per_s: this.lastBytesPerSecond,
      ios_total: this.iosTotal, bytes_total: this.bytesTotal, latency_sum_ms: this.rawSumNs / NS_PER_MS, normalised_latency_sum_ms: this.normSumNs / NS_PER_MS,
      periods: this.periods, torn_reads: this.tornReads, slot_conflicts: this.slotConflicts, io_shares: allShares,
      vms: this.order.filter((vm) => !vm.removed).map((vm) => this.describeVm(vm, activeShares > 0 && (vm.queue.length > 0 || vm.inFlight > 0) ? activeShares : allShares)),
      hosts: this.peers,
      timestamp_ms: this.clock.wallMs(),
    };
  }

  /** One VM's figures, or null when it is not under this controller. */
  vmStatus(owner: string): VmIoStatus | null {
    const vm = this.vms.get(owner);
    return vm === undefined || vm.removed ? null : this.describeVm(vm, this.ioShares());
  }

  private describeVm(vm: VmIo, shareBase: number): VmIoStatus {
    return {
      name: vm.owner, io_shares: vm.shares, window_share: (this.window * vm.shares) / shareBase, in_flight: vm.inFlight, queued: vm.queue.length,
      ios: vm.ios, bytes: vm.bytes, iops: vm.lastIops, latency_ms: vm.lastLatencyNs / NS_PER_MS,
    };
  }

  /** Stops the timer and marks this host's block stopped (the others drop it at once). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    try {
      this.publish(StatsFlag.STOPPED);
    } catch {
      // The block goes stale by itself.
    }
    this.file.close();
  }

  private prune(vm: VmIo): void {
    if (!vm.removed || vm.inFlight > 0) return;
    this.vms.delete(vm.owner);
    this.order.splice(this.order.indexOf(vm), 1);
    this.rotor = 0;
  }
}

function checkShares(shares: number, field: string): void {
  if (!Number.isInteger(shares) || shares < 1 || shares > MAX_IO_SHARES) {
    throw new StorageIoError('BV_STORAGE_CONFIG', `${field} must be an integer 1 … ${MAX_IO_SHARES}, got ${shares}`);
  }
}

/** Fills the defaults and checks every setting (StorageIoError BV_STORAGE_CONFIG naming the field). */
function checkOptions(options: StorageIoOptions): Required<Omit<StorageIoOptions, 'name'>> & { name: string } {
  const o: Required<Omit<StorageIoOptions, 'name'>> & { name: string } = {
    ...STORAGE_IO_DEFAULTS, ...stripUndefined(options), statsFile: options.statsFile, hostId: options.hostId, thresholdMs: options.thresholdMs, name: options.name ?? `host-${options.hostId}`,
  };
  const bad = (field: string, rule: string, value: unknown): never => {
    throw new StorageIoError('BV_STORAGE_CONFIG', `${field} must be ${rule}, got ${String(value)}`);
  };
  if (typeof o.statsFile !== 'string' || o.statsFile === '') bad('stats_file', 'a path', o.statsFile);
  if (!Number.isInteger(o.hostId) || o.hostId < 0 || o.hostId >= STATS_MAX_HOSTS) bad('host_id', `an integer 0 … ${STATS_MAX_HOSTS - 1}`, o.hostId);
  if (!(o.thresholdMs > 0 && o.thresholdMs <= 60_000)) bad('latency_threshold_ms', 'above 0 and at most 60000', o.thresholdMs);
  if (!(o.gamma > 0 && o.gamma <= 1)) bad('gamma', 'above 0 and at most 1', o.gamma);
  if (!(o.alpha >= 0 && o.alpha < 1)) bad('alpha', '0 or more and below 1', o.alpha);
  if (!(o.beta >= 0 && o.beta <= 1000)) bad('beta', '0 … 1000', o.beta);
  if (!(o.windowMin >= 1 && o.windowMin <= 4096)) bad('window_min', '1 … 4096', o.windowMin);
  if (!(o.windowMax >= o.windowMin && o.windowMax <= 4096)) bad('window_max', `window_min (${o.windowMin}) … 4096`, o.windowMax);
  if (!(Number.isInteger(o.periodMs) && o.periodMs >= 10 && o.periodMs <= 60_000)) bad('period_ms', 'an integer 10 … 60000', o.periodMs);
  if (!(o.sizeKneeKib >= 0 && o.sizeKneeKib <= 1_048_576)) bad('size_knee_kib', '0 … 1048576', o.sizeKneeKib);
  if (!(Number.isInteger(o.stalePeriods) && o.stalePeriods >= 1 && o.stalePeriods <= 100)) bad('stale_periods', 'an integer 1 … 100', o.stalePeriods);
  if (typeof o.control !== 'boolean') bad('control', 'true or false', o.control);
  return o;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
