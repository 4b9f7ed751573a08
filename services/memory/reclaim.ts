/**
 * The memory scheduler (issue 10 items 5 and 7; T-6, T-7; docs/overcommit.md): the reclaim
 * ladder decides *when* the host takes memory back from its VMs, the guests' usage classes decide
 * *how*.
 *
 * - **Ladder.** From the host pool's free frames, a state high / soft / hard / low (default
 *   thresholds 6 / 4 / 2 / 1 % of the pool) with hysteresis: the state falls as soon as free
 *   frames drop below a lower threshold (several levels at once if need be) and rises one level
 *   per tick, only once free frames are back at the threshold above.
 * - **What runs.** Page sharing on every tick (when a sharer is plugged in); ballooning from soft;
 *   hypervisor swap from hard; at low the VMs whose frames grew since the last tick are blocked
 *   until the state rises above low again. A VM whose access finds the pool empty between ticks
 *   is blocked at that access (Vm.onHostMemoryExhausted: the kernel pauses it before the access,
 *   which runs again once the VM is unblocked), never failed.
 * - **Choosing per VM (T-6).** The need is what brings free frames back to the high threshold.
 *   From each VM's last balloon statistics the scheduler estimates its *cheap* pages — page cache
 *   plus free pages that still hold a host frame (a free page the guest never touched holds none:
 *   ballooning it gives nothing back now) — discounts stale statistics, and raises balloon
 *   targets in proportion to them. What the balloons cannot cover is swapped out at hard: cold
 *   pages (no accessed mark since the clock hand last passed) of each VM in proportion to the
 *   frames it holds. Balloon targets come back down when the state has stayed high for a while.
 * - **MEMINFO (T-7).** Whenever the state or a target changes, each VM's MEMINFO device gets the
 *   pressure (the ladder state) and its limit (RAM less the balloon target; at hard and low at
 *   most the frames it holds).
 *
 * Every decision is kept with its reason in a ring buffer; stats() gives counters, per-VM figures
 * and the recent decisions in a JSON-friendly (snake_case) shape.
 *
 * The scheduler acts on guest memory only through GuestMemory (stateOf, flagsOf, isPrivate,
 * accessed, clearAccessed, presentPages), BalloonDevice (target, actual, lastStats, setTarget,
 * requestStats), MeminfoDevice (setCondition) and SwapFile (attach, swapOut): no P2M entry or
 * frame is seen here. It runs when tick() is called, between runs (never inside a vCPU slice).
 */
import { performance } from 'node:perf_hooks';
import { BvError } from '../../guest-isa/errors.ts';
import { AbsentState, HOST_MEMORY_WAIT_REASON, PageState, StopCode } from '../../kernel/index.ts';
import type { Hypervisor, Vm } from '../../kernel/index.ts';
import type { BalloonDevice } from '../../devices/balloon.ts';
import { HostPressure, type HostPressureLevel, type MeminfoDevice } from '../../devices/meminfo.ts';
import { SwapError } from './swap.ts';
import type { SwapFile } from './swap.ts';
import { adjustedSharesPerPage, checkShares, checkTaxRate, DEFAULT_TAX_RATE, defaultShares, reclaimQuotas, SharesError, type ShareHolder } from './shares.ts';

/** A bad MemoryScheduler option or argument. */
export class MemorySchedulerError extends BvError {
  constructor(message: string) {
    super('BV_MEMORY_SCHEDULER_OPTION', message);
  }
}

/** The ladder's states, from plenty of free memory to almost none. */
export type LadderState = 'high' | 'soft' | 'hard' | 'low';

/** The states in order; the index is the MEMINFO pressure level (HostPressure). */
export const LADDER_STATES: readonly LadderState[] = ['high', 'soft', 'hard', 'low'];

const PRESSURE_OF: Readonly<Record<LadderState, HostPressureLevel>> = {
  high: HostPressure.HIGH, soft: HostPressure.SOFT, hard: HostPressure.HARD, low: HostPressure.LOW,
};

/** Thresholds in percent of the host pool's frames. */
export interface LadderThresholds {
  /** Back to high at or above this (default 6). */
  high: number;
  /** Below it: soft (default 4); back from hard at or above it. */
  soft: number;
  /** Below it: hard (default 2); back from low at or above it. */
  hard: number;
  /** Below it: low (default 1). */
  low: number;
}

/** What a scheduler needs of a page sharer: a scan of a budget of pages (PageSharer fits). */
export interface PageScanner {
  /** Looks at up to `pages` pages and merges what it can. */
  scan(pages: number): unknown;
}

/** Options of MemoryScheduler. */
export interface MemorySchedulerOptions {
  /** Thresholds in percent of the pool (any subset; defaults 6 / 4 / 2 / 1). Must satisfy 0 < low < hard < soft < high ≤ 100. */
  thresholds?: Partial<LadderThresholds>;
  /** Where swapped pages go (attached to each VM at its first swap-out). Without one, hard and low cannot swap. */
  swap?: SwapFile | null;
  /** A page sharer, scanned on every tick (sharing always runs). */
  sharer?: PageScanner | null;
  /** Pages the sharer looks at per tick (default 100). */
  sharingPagesPerTick?: number;
  /**
   * Blocks a VM that allocates at low (default: `vm.pause(MEMORY_BLOCK_REASON)`). A host with its
   * own Running/Paused bookkeeping passes its own, and `unblock` with it.
   */
  block?: (vm: Vm, reason: string) => void;
  /**
   * Undoes block (default: `vm.resume()` if the VM is paused with MEMORY_BLOCK_REASON, or with the
   * kernel's HOST_MEMORY_WAIT_REASON when an access found the pool empty). A host passing its own
   * must also resume a VM the kernel paused with HOST_MEMORY_WAIT_REASON.
   */
  unblock?: (vm: Vm) => void;
  /** Ticks the state must stay high, with no target raised, before balloons are deflated (default 10). */
  deflateHoldTicks?: number;
  /** The smallest deflate step in pages, unless it empties the balloons (default: half the gap between the high and soft thresholds, 1 % of the pool). */
  minDeflatePages?: number;
  /** Most of a VM's RAM the scheduler puts in its balloon, a fraction (default 0.65: ESX's Mem.CtlMaxPercent). */
  maxBalloonFraction?: number;
  /** Statistics at most this many guest instructions old count in full (default 2,000,000). */
  statsFreshInstructions?: number;
  /** Statistics this old or older count for nothing (default 8 × statsFreshInstructions); in between their weight halves every statsFreshInstructions. */
  statsMaxAgeInstructions?: number;
  /** Free pages a guest keeps for itself, which its balloon driver does not give (default 32: the nanokernel's BALLOON_RESERVE). */
  guestReservePages?: number;
  /** At high, ask for fresh statistics every this many ticks (at soft and below: every tick; default 16). */
  statsRequestTicksAtHigh?: number;
  /** A balloon whose `actual` has not moved for this many ticks while short of its target is stalled (default 16). */
  balloonStallTicks?: number;
  /** Most pages swapped out per tick, over all VMs (default 8192). */
  maxSwapPagesPerTick?: number;
  /** At hard and low, lower each VM's MEMINFO limit to the frames it holds (default true). */
  squeezeLimitUnderPressure?: boolean;
  /** Decisions kept for stats() and decisions() (default 128). */
  decisionLog?: number;
  /** The idle memory tax rate τ in [0, 0.99] (default 0.75, as ESX); setTaxRate changes it later. */
  taxRate?: number;
  /**
   * A VM's active fraction f in [0, 1] (an ActiveMemorySampler's estimate), or null when unknown;
   * unknown counts as fully active (no tax). Default: unknown for every VM.
   */
  activeFraction?: (vm: Vm) => number | null;
}

/** A VM's memory allocation policy (T-8): its shares and reservations. */
export interface VmAllocation {
  /** Shares (default 10 per MiB of guest RAM, ESX's "normal"). */
  shares?: number;
  /** Frames it keeps whatever the pressure: reclaim never takes it below this (default 0). */
  minPages?: number;
  /** Most frames it may hold: above this it is reclaimed from at any state (default none). */
  maxPages?: number | null;
}

/** The devices through which the scheduler reaches a VM (either may be absent). */
export interface ManagedVmDevices {
  /** Its balloon: without one the VM is never ballooned, only swapped. */
  balloon?: BalloonDevice | null;
  /** Its MEMINFO device: told the pressure and limit when they change. */
  meminfo?: MeminfoDevice | null;
}

/** What a decision did. */
export type ReclaimAction = 'state' | 'balloon' | 'deflate' | 'swap' | 'block' | 'unblock' | 'shortfall';

/** One decision, as decisions() and stats() give it. */
export interface MemoryDecision {
  /** The tick (1-based) it was taken at. */
  tick: number;
  /** Milliseconds since the scheduler was created. */
  at_ms: number;
  /** The ladder state when it was taken (for 'state': the new state). */
  state: LadderState;
  /** The VM it is about, or null (a state change, a shortfall). */
  vm: string | null;
  /** What was done. */
  action: ReclaimAction;
  /** Pages it is about (balloon: target raised by; deflate: lowered by; swap: swapped out; shortfall: pages nobody covers). */
  pages: number;
  /** Why, in words (e.g. "balloon +2048 pages: 3100 cheap pages (…)"). */
  reason: string;
}

/** Counters of a MemoryScheduler. */
export interface MemorySchedulerCounters {
  /** tick() calls. */
  ticks: number;
  /** Changes of the ladder state. */
  state_changes: number;
  /** Balloon targets raised. */
  balloon_decisions: number;
  /** Pages added to balloon targets. */
  balloon_pages_requested: number;
  /** Balloon targets lowered. */
  deflate_decisions: number;
  /** Pages taken off balloon targets. */
  balloon_pages_returned: number;
  /** Swap decisions (one per VM and tick). */
  swap_decisions: number;
  /** Pages swapped out (or dropped as zero pages) by the scheduler. */
  pages_swapped: number;
  /** Cold pages the swap file refused (a flag or a shared frame appeared). */
  swap_refused: number;
  /** Swap-outs stopped because the swap file was full. */
  swap_full: number;
  /** Accessed marks the clock hand cleared (pages given a second chance). */
  second_chances: number;
  /** VMs blocked at low. */
  blocks: number;
  /** VMs unblocked. */
  unblocks: number;
  /** Sharer scans. */
  sharing_scans: number;
  /** Shortfall decisions: need nobody could cover (soft without enough balloon, no swap file). */
  shortfalls: number;
}

/** One VM as stats() shows it. */
export interface ManagedVmStats {
  /** The VM's name. */
  name: string;
  /** Whether it has a balloon. */
  balloon: boolean;
  /** Balloon target in pages (0 without a balloon). */
  target_pages: number;
  /** Pages in the balloon now. */
  actual_pages: number;
  /** Of the target, pages the scheduler added (and will give back). */
  scheduler_pages: number;
  /** The last estimate of pages its balloon can take cheaply (frames), or null when there was none (no balloon, no or stale statistics, stalled, or never estimated). */
  cheap_pages: number | null;
  /** Guest instructions since its last statistics, or null without any. */
  stats_age_instructions: number | null;
  /** Host frames the VM holds now. */
  frames_held: number;
  /** Its pages swapped out now. */
  swapped_pages: number;
  /** Pages the scheduler added to its balloon target so far. */
  pages_ballooned: number;
  /** Pages the scheduler took off its balloon target so far (deflating). */
  pages_returned: number;
  /** Pages the scheduler swapped out of it so far. */
  pages_swapped: number;
  /** Whether it is blocked now. */
  blocked: boolean;
  /** Its shares. */
  shares: number;
  /** Its minimum reservation in frames. */
  min_pages: number;
  /** Its maximum in frames, or null for none. */
  max_pages: number | null;
  /** Its active fraction as last known (null: unknown, counted as 1). */
  active_fraction: number | null;
  /** Its adjusted shares per page ρ now (null when it holds no frames); the lowest gives first. */
  shares_per_page: number | null;
}

/** The ladder's thresholds, in percent of the pool and in frames (MemorySchedulerStats.thresholds). */
export interface ThresholdsReport {
  /** Free memory at or above which the state is high again. */
  high_pct: number;
  /** Below it: soft (ballooning). */
  soft_pct: number;
  /** Below it: hard (swap too). */
  hard_pct: number;
  /** Below it: low (allocating VMs blocked). */
  low_pct: number;
  /** high_pct in frames. */
  high_frames: number;
  /** soft_pct in frames. */
  soft_frames: number;
  /** hard_pct in frames. */
  hard_frames: number;
  /** low_pct in frames. */
  low_frames: number;
}

/** The pool as the last tick saw it (MemorySchedulerStats.pool). */
export interface PoolReport {
  /** Frames in the pool. */
  total_frames: number;
  /** Frames free. */
  free_frames: number;
  /** Free frames in percent of the pool. */
  free_pct: number;
}

/** MemoryScheduler.stats(): JSON-friendly, for GET /host/stats. */
export interface MemorySchedulerStats {
  /** The ladder state now. */
  state: LadderState;
  /** Thresholds in percent and in frames of the pool. */
  thresholds: ThresholdsReport;
  /** The pool at the last tick. */
  pool: PoolReport;
  /** Ticks spent in each state. */
  ticks_in_state: Record<LadderState, number>;
  /** The counters. */
  counters: MemorySchedulerCounters;
  /** Names of the VMs blocked now. */
  blocked_vms: string[];
  /** The idle memory tax rate τ. */
  tax_rate: number;
  /** Per managed VM. */
  vms: ManagedVmStats[];
  /** The recent decisions, oldest first. */
  recent_decisions: MemoryDecision[];
}

/** The pause reason the default block() uses. */
export const MEMORY_BLOCK_REASON = 'memory: the host is low on free memory; blocked until memory frees';

/** What the scheduler keeps per VM. */
interface Managed {
  vm: Vm;
  balloon: BalloonDevice | null;
  meminfo: MeminfoDevice | null;
  /** Of the balloon's target, pages the scheduler added. */
  ours: number;
  /** The target the scheduler last saw or set (a different one was set by someone else). */
  knownTarget: number;
  /** `actual` at the last tick, and the tick it last moved (or the target was last raised). */
  lastActual: number;
  actualMovedTick: number;
  /** lastStats.updates at the last look, and `actual` and the frames held when new statistics were first seen. */
  statsUpdates: number;
  actualAtStats: number;
  presentAtStats: number;
  /** The tick statistics were last asked for. */
  statsRequestedTick: number;
  /** Frames held at the end of the last tick (growth at low is measured against it). */
  lastPresent: number;
  /** The clock hand of the cold-page scan. */
  hand: number;
  blocked: boolean;
  /** The VM swaps to another file: the scheduler cannot swap it. */
  swapRefusal: string | null;
  attachedSwap: boolean;
  cheap: number | null;
  pagesBallooned: number;
  pagesReturned: number;
  pagesSwapped: number;
  shares: number;
  minPages: number;
  maxPages: number | null;
  /** The tick it last went over its maximum (reset when it is back under), or -1. */
  overMaxSince: number;
}

/** A VM's estimate for one reclaim. */
interface Estimate {
  m: Managed;
  /** Pages the balloon can still be asked for (cheap less pending, within the cap). */
  available: number;
  /** Cheap pages (frames), weighted by freshness. */
  cheap: number;
  /** Pages asked and not yet in the balloon, when the balloon is moving. */
  inFlight: number;
  /** Why the balloon cannot help, or null. */
  why: string | null;
  /** How the figure was reached, for the decision's reason. */
  detail: string;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new MemorySchedulerError(`${name} must be a positive integer, got ${value}`);
  return value;
}

/** Runs a shares check, turning its SharesError into a MemorySchedulerError (one error type for callers). */
function schedulerOption<T>(check: () => T): T {
  try {
    return check();
  } catch (error) {
    if (error instanceof SharesError) throw new MemorySchedulerError(error.message);
    throw error;
  }
}

const DEFAULT_THRESHOLDS: LadderThresholds = { high: 6, soft: 4, hard: 2, low: 1 };

/** Splits `total` over `weights` in proportion (largest remainders), never giving one more than its weight. */
function proportional(total: number, weights: readonly number[]): number[] {
  const sum = weights.reduce((a, b) => a + b, 0);
  if (sum <= 0 || total <= 0) return weights.map(() => 0);
  if (total >= sum) return weights.map((w) => w);
  const exact = weights.map((w) => (total * w) / sum);
  const shares = exact.map(Math.floor);
  let left = total - shares.reduce((a, b) => a + b, 0);
  const order = exact.map((x, i) => [x - Math.floor(x), i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (const [, i] of order) {
    if (left <= 0) break;
    if (shares[i]! < weights[i]!) {
      shares[i]!++;
      left--;
    }
  }
  return shares;
}

const pct = (frames: number, total: number): string => `${((100 * frames) / total).toFixed(2)}%`;

/**
 * The memory scheduler of one hypervisor: call tick() periodically (every scheduling round or on
 * a timer) and add() the VMs it may reclaim from. See the file comment and docs/overcommit.md.
 */
export class MemoryScheduler {
  /** Thresholds in percent of the pool. */
  readonly thresholds: Readonly<LadderThresholds>;
  /** Where cold pages go, or null. */
  readonly swap: SwapFile | null;
  /** The sharer scanned every tick, or null. */
  sharer: PageScanner | null;
  /** Pages the sharer scans per tick (MemorySchedulerOptions). */
  readonly sharingPagesPerTick: number;
  /** Ticks at high with no target change before the scheduler deflates (MemorySchedulerOptions). */
  readonly deflateHoldTicks: number;
  /** The largest share of a VM's RAM the scheduler puts in its balloon (MemorySchedulerOptions). */
  readonly maxBalloonFraction: number;
  /** Balloon statistics younger than this many guest instructions count in full (MemorySchedulerOptions). */
  readonly statsFreshInstructions: number;
  /** Balloon statistics older than this many guest instructions count for nothing (MemorySchedulerOptions). */
  readonly statsMaxAgeInstructions: number;
  /** At high, ask for fresh statistics every this many ticks (MemorySchedulerOptions). */
  readonly statsRequestTicksAtHigh: number;
  /** Free pages a guest keeps for itself, not counted as cheap (MemorySchedulerOptions). */
  readonly guestReservePages: number;
  /** Ticks without progress after which a balloon short of its target counts as stalled (MemorySchedulerOptions). */
  readonly balloonStallTicks: number;
  /** Most pages swapped out in one tick (MemorySchedulerOptions). */
  readonly maxSwapPagesPerTick: number;
  /** At hard and low, cap MEMINFO's limit at the frames a VM holds (MemorySchedulerOptions). */
  readonly squeezeLimitUnderPressure: boolean;
  private readonly decisionLog: number;
  private taxRateNow: number;
  private readonly minDeflatePages: number | null;
  private readonly activeFractionOf: (vm: Vm) => number | null;
  private readonly blockVm: (vm: Vm, reason: string) => void;
  private readonly unblockVm: (vm: Vm) => void;
  private readonly managed = new Map<Vm, Managed>();
  private current: LadderState = 'high';
  private tickCount = 0;
  /** The tick the state last changed. */
  private stateSince = 0;
  /** The tick a balloon target was last raised or lowered by the scheduler. */
  private lastTargetChange = 0;
  /** Free frames at the last ticks at high (at most deflateHoldTicks; emptied when the state or a target changes). */
  private recentFree: number[] = [];
  private lastFree = 0;
  private lastTotal = 0;
  /** The state episode and kind of the last shortfall recorded (recorded once per episode). */
  private lastShortfall = '';
  /** Something a MEMINFO device shows changed outside a tick (a VM was added). */
  private meminfoDirty = false;
  private readonly ring: MemoryDecision[] = [];
  private readonly started = performance.now();
  private readonly inState: Record<LadderState, number> = { high: 0, soft: 0, hard: 0, low: 0 };
  private readonly counters: MemorySchedulerCounters = {
    ticks: 0, state_changes: 0, balloon_decisions: 0, balloon_pages_requested: 0, deflate_decisions: 0, balloon_pages_returned: 0,
    swap_decisions: 0, pages_swapped: 0, swap_refused: 0, swap_full: 0, second_chances: 0, blocks: 0, unblocks: 0, sharing_scans: 0, shortfalls: 0,
  };

  /** Throws MemorySchedulerError for a bad option. */
  constructor(
    /** The hypervisor whose pool the ladder watches. */
    readonly hv: Hypervisor,
    options: MemorySchedulerOptions = {},
  ) {
    const t = { ...DEFAULT_THRESHOLDS, ...options.thresholds };
    for (const key of ['high', 'soft', 'hard', 'low'] as const) {
      if (typeof t[key] !== 'number' || !Number.isFinite(t[key]) || t[key] <= 0 || t[key] > 100) {
        throw new MemorySchedulerError(`threshold ${key} must be a percentage in (0, 100], got ${t[key]}`);
      }
    }
    if (!(t.low < t.hard && t.hard < t.soft && t.soft < t.high)) {
      throw new MemorySchedulerError(`thresholds must satisfy low < hard < soft < high, got ${t.low} / ${t.hard} / ${t.soft} / ${t.high}`);
    }
    this.thresholds = Object.freeze(t);
    this.swap = options.swap ?? null;
    this.sharer = options.sharer ?? null;
    this.sharingPagesPerTick = positiveInteger('sharingPagesPerTick', options.sharingPagesPerTick ?? 100);
    this.deflateHoldTicks = positiveInteger('deflateHoldTicks', options.deflateHoldTicks ?? 10);
    this.minDeflatePages = options.minDeflatePages === undefined ? null : positiveInteger('minDeflatePages', options.minDeflatePages);
    const fraction = options.maxBalloonFraction ?? 0.65;
    if (!(fraction > 0 && fraction <= 1)) throw new MemorySchedulerError(`maxBalloonFraction must be in (0, 1], got ${fraction}`);
    this.maxBalloonFraction = fraction;
    this.statsFreshInstructions = positiveInteger('statsFreshInstructions', options.statsFreshInstructions ?? 2_000_000);
    this.statsMaxAgeInstructions = positiveInteger('statsMaxAgeInstructions', options.statsMaxAgeInstructions ?? 8 * this.statsFreshInstructions);
    if (this.statsMaxAgeInstructions < this.statsFreshInstructions) {
      throw new MemorySchedulerError(`statsMaxAgeInstructions (${this.statsMaxAgeInstructions}) must be at least statsFreshInstructions (${this.statsFreshInstructions})`);
    }
    this.statsRequestTicksAtHigh = positiveInteger('statsRequestTicksAtHigh', options.statsRequestTicksAtHigh ?? 16);
    this.guestReservePages = options.guestReservePages ?? 32;
    if (!Number.isSafeInteger(this.guestReservePages) || this.guestReservePages < 0) {
      throw new MemorySchedulerError(`guestReservePages must be a non-negative integer, got ${this.guestReservePages}`);
    }
    this.balloonStallTicks = positiveInteger('balloonStallTicks', options.balloonStallTicks ?? 16);
    this.maxSwapPagesPerTick = positiveInteger('maxSwapPagesPerTick', options.maxSwapPagesPerTick ?? 8192);
    this.squeezeLimitUnderPressure = options.squeezeLimitUnderPressure ?? true;
    this.decisionLog = positiveInteger('decisionLog', options.decisionLog ?? 128);
    this.taxRateNow = schedulerOption(() => checkTaxRate(options.taxRate ?? DEFAULT_TAX_RATE));
    this.activeFractionOf = options.activeFraction ?? (() => null);
    this.blockVm = options.block ?? ((vm, reason) => vm.pause(reason));
    this.unblockVm = options.unblock ?? ((vm) => {
      if (vm.stopReason.kind === 'paused' && (vm.stopReason.reason === MEMORY_BLOCK_REASON || vm.stopReason.reason === HOST_MEMORY_WAIT_REASON)) vm.resume();
    });
    const pool = hv.poolStats();
    this.lastFree = pool.freeFrames;
    this.lastTotal = pool.totalFrames;
  }

  // ------------------------------------------------------------------------------- VMs

  /**
   * Manages `vm`: it may be ballooned (with a balloon), swapped (with a swap file), blocked at low,
   * and its MEMINFO device follows the ladder. Adding it again replaces its devices.
   */
  add(vm: Vm, devices: ManagedVmDevices = {}, allocation: VmAllocation = {}): void {
    if (!this.hv.vms.includes(vm)) throw new MemorySchedulerError(`${vm.name} does not belong to this hypervisor`);
    const existing = this.managed.get(vm);
    const balloon = devices.balloon ?? null;
    const m: Managed = existing ?? {
      vm, balloon, meminfo: null, ours: 0, knownTarget: balloon?.target ?? 0, lastActual: balloon?.actual ?? 0, actualMovedTick: this.tickCount,
      statsUpdates: 0, actualAtStats: 0, presentAtStats: 0, statsRequestedTick: -Infinity, lastPresent: vm.memory.presentPages, hand: 0, blocked: false,
      swapRefusal: null, attachedSwap: false, cheap: null, pagesBallooned: 0, pagesReturned: 0, pagesSwapped: 0,
      shares: defaultShares(vm.memoryBytes), minPages: 0, maxPages: null, overMaxSince: -1,
    };
    this.applyAllocation(m, allocation);
    if (existing && existing.balloon !== balloon) {
      m.ours = 0;
      m.knownTarget = balloon?.target ?? 0;
      m.lastActual = balloon?.actual ?? 0;
      m.statsUpdates = 0;
    }
    m.balloon = balloon;
    m.meminfo = devices.meminfo ?? null;
    this.managed.set(vm, m);
    // An allocation that finds the pool empty between ticks blocks the VM at once (the kernel
    // pauses it before the access, which runs again at unblock) instead of failing it.
    vm.onHostMemoryExhausted = () => {
      if (!m.blocked) this.setBlocked(m, true, `a guest access needed a host frame and the pool had none (free memory is ${this.current} at the last tick)`);
    };
    this.meminfoDirty = true;
  }

  /**
   * Stops managing `vm` (a blocked VM is unblocked first). Its balloon target and swapped pages
   * stay as they are: the swap file keeps serving them. Before destroying the VM, pass
   * `forgetSwap` (or call swap.forget(vm)) so its swap slots are freed.
   */
  remove(vm: Vm, options: { forgetSwap?: boolean } = {}): void {
    const m = this.managed.get(vm);
    if (!m) return;
    if (m.blocked) this.setBlocked(m, false, 'no longer managed');
    vm.onHostMemoryExhausted = null;
    if (options.forgetSwap && m.attachedSwap) this.swap?.forget(vm);
    this.managed.delete(vm);
  }

  /**
   * Changes a managed VM's shares and reservations (the fields given; the others stay). Throws
   * MemorySchedulerError for a VM not managed or a bad value.
   */
  setAllocation(vm: Vm, allocation: VmAllocation): void {
    const m = this.managed.get(vm);
    if (!m) throw new MemorySchedulerError(`${vm.name} is not managed by this memory scheduler`);
    this.applyAllocation(m, allocation);
  }

  /** A managed VM's shares and reservations now. */
  allocationOf(vm: Vm): Required<VmAllocation> {
    const m = this.managed.get(vm);
    if (!m) throw new MemorySchedulerError(`${vm.name} is not managed by this memory scheduler`);
    return { shares: m.shares, minPages: m.minPages, maxPages: m.maxPages };
  }

  /** The idle memory tax rate τ. */
  get taxRate(): number {
    return this.taxRateNow;
  }

  /** Changes τ (0 … 0.99); the next reclaim uses it. */
  setTaxRate(taxRate: number): void {
    this.taxRateNow = schedulerOption(() => checkTaxRate(taxRate));
  }

  private applyAllocation(m: Managed, allocation: VmAllocation): void {
    const pages = m.vm.memory.pageCount;
    const shares = allocation.shares === undefined ? m.shares : schedulerOption(() => checkShares(allocation.shares!));
    const minPages = allocation.minPages ?? m.minPages;
    const maxPages = allocation.maxPages === undefined ? m.maxPages : allocation.maxPages;
    if (!Number.isSafeInteger(minPages) || minPages < 0 || minPages > pages) {
      throw new MemorySchedulerError(`${m.vm.name}: the minimum reservation must be 0 … ${pages} pages, got ${String(minPages)}`);
    }
    if (maxPages !== null && (!Number.isSafeInteger(maxPages) || maxPages < minPages || maxPages > pages)) {
      throw new MemorySchedulerError(`${m.vm.name}: the maximum must be ${minPages} … ${pages} pages (at least the minimum), got ${String(maxPages)}`);
    }
    m.shares = shares;
    m.minPages = minPages;
    m.maxPages = maxPages;
    this.meminfoDirty = true; // MEMINFO's limit includes the maximum
  }

  /** A VM's active fraction from the provider, or null (unknown). */
  private activeOf(m: Managed): number | null {
    const f = this.activeFractionOf(m.vm);
    return f === null || !Number.isFinite(f) ? null : Math.min(1, Math.max(0, f));
  }

  /** ρ and its inputs, for a decision's reason. */
  private rhoNote(m: Managed): string {
    const f = this.activeOf(m);
    const rho = adjustedSharesPerPage(m.shares, m.vm.memory.presentPages, f ?? 1, this.taxRateNow);
    return `ρ ${Number.isFinite(rho) ? rho.toPrecision(3) : '∞'} (${m.shares} shares, ${m.vm.memory.presentPages} frames, active ${f === null ? 'unknown' : `${Math.round(f * 100)}%`}, τ ${this.taxRateNow})`;
  }

  /** A VM as the share arithmetic sees it, with what its mechanism can give now. */
  private holder(m: Managed, canGive: number): ShareHolder {
    return { shares: m.shares, pages: m.vm.memory.presentPages, activeFraction: this.activeOf(m) ?? 1, minPages: m.minPages, canGive };
  }

  /** The VMs managed now. */
  get vms(): Vm[] {
    return [...this.managed.keys()];
  }

  /** The ladder state now. */
  get state(): LadderState {
    return this.current;
  }

  /** Ticks so far. */
  get ticks(): number {
    return this.tickCount;
  }

  /** The thresholds in frames of a pool of `totalFrames` (rounded up): below soft → soft, etc. */
  thresholdFrames(totalFrames: number = this.lastTotal): LadderThresholds {
    const at = (p: number): number => Math.ceil((totalFrames * p) / 100);
    return { high: at(this.thresholds.high), soft: at(this.thresholds.soft), hard: at(this.thresholds.hard), low: at(this.thresholds.low) };
  }

  /**
   * Free frames reclaim aims at: the high threshold plus half the gap between soft and high (7 %
   * with the defaults), so that the state gets back to high and stays there a while instead of
   * hovering just under the threshold with a small reclaim on every tick.
   */
  aimFrames(totalFrames: number = this.lastTotal): number {
    const f = this.thresholdFrames(totalFrames);
    return f.high + Math.ceil((f.high - f.soft) / 2);
  }

  /**
   * The state the ladder moves to from `from` with `free` frames of `total` free: down to the
   * lowest level whose threshold free is below (levels may be skipped), else up one level if free
   * is at or above the threshold above, else unchanged.
   */
  nextState(from: LadderState, free: number, total: number = this.lastTotal): LadderState {
    const f = this.thresholdFrames(total);
    const level = LADDER_STATES.indexOf(from);
    const floor = free < f.low ? 3 : free < f.hard ? 2 : free < f.soft ? 1 : 0;
    if (floor > level) return LADDER_STATES[floor]!;
    const upAt = [Infinity, f.high, f.soft, f.hard][level]!;
    return free >= upAt ? LADDER_STATES[level - 1]! : from;
  }

  // ------------------------------------------------------------------------------- tick

  /**
   * One step: re-evaluates the ladder from the pool's free frames and does what the state calls
   * for (see the file comment). Call between runs. Cheap when nothing is to be done: a pool
   * snapshot, one pass over the managed VMs reading counters, and the sharer's scan.
   */
  tick(): void {
    const tick = ++this.tickCount;
    this.counters.ticks++;
    const pool = this.hv.poolStats();
    const free = pool.freeFrames;
    const total = pool.totalFrames;
    this.lastFree = free;
    this.lastTotal = total;
    const before = this.current;
    const state = this.nextState(before, free, total);
    let changed = this.meminfoDirty;
    this.meminfoDirty = false;
    if (state !== before) {
      this.current = state;
      this.stateSince = tick;
      this.recentFree = [];
      this.counters.state_changes++;
      changed = true;
      const f = this.thresholdFrames(total);
      const rising = LADDER_STATES.indexOf(state) < LADDER_STATES.indexOf(before);
      const edge = rising ? `${free} free frames (${pct(free, total)}) ≥ ${state} threshold ${[f.high, f.soft, f.hard][LADDER_STATES.indexOf(state)]}`
        : `${free} free frames (${pct(free, total)}) < ${state} threshold ${[0, f.soft, f.hard, f.low][LADDER_STATES.indexOf(state)]}`;
      this.record('state', null, 0, `${before} → ${state}: ${edge}`);
    }
    this.inState[state]++;

    if (this.sharer !== null) {
      this.sharer.scan(this.sharingPagesPerTick);
      this.counters.sharing_scans++;
    }

    if (this.managed.size > 0) {
      if (this.observe(state)) changed = true;
      if (this.enforceMaximums()) changed = true;
      if (state === 'low') this.blockGrowers(free, total);
      else if (this.anyBlocked()) this.unblockAll(state);
      if (state !== 'high') {
        if (this.reclaim(state, free, total)) changed = true;
      } else if (this.deflate(free, total)) {
        changed = true;
      }
      if (changed) this.updateMeminfo(state);
      for (const m of this.managed.values()) m.lastPresent = m.vm.memory.presentPages;
    }
  }

  /** Per VM: drops destroyed VMs, notices balloon movement, new statistics and targets set by others; asks for statistics. */
  private observe(state: LadderState): boolean {
    let changed = false;
    const tick = this.tickCount;
    for (const m of this.managed.values()) {
      if (m.vm.stopCode === StopCode.HOST_ERROR && !this.hv.vms.includes(m.vm)) {
        this.managed.delete(m.vm); // destroyed without remove()
        continue;
      }
      const balloon = m.balloon;
      if (balloon === null) continue;
      if (balloon.actual !== m.lastActual) {
        m.lastActual = balloon.actual;
        m.actualMovedTick = tick;
      }
      if (balloon.target !== m.knownTarget) {
        // Someone else (the API) set the target: theirs now; the scheduler adds on top of it later.
        m.knownTarget = balloon.target;
        m.ours = 0;
        m.actualMovedTick = tick;
        changed = true;
      }
      const stats = balloon.lastStats;
      if (stats !== null && stats.updates !== m.statsUpdates) {
        m.statsUpdates = stats.updates;
        m.actualAtStats = balloon.actual;
        // Sent some time during the last round: the frames held then were at most those at its start.
        m.presentAtStats = Math.min(m.lastPresent, m.vm.memory.presentPages);
      }
      if (balloon.statsPollingIntervalS > 0 && m.vm.stopCode === StopCode.RUNNING) {
        const overMax = m.maxPages !== null && m.vm.memory.presentPages > m.maxPages;
        const every = state === 'high' && !overMax ? this.statsRequestTicksAtHigh : 1;
        if (tick - m.statsRequestedTick >= every) {
          balloon.requestStats();
          m.statsRequestedTick = tick;
        }
      }
    }
    return changed;
  }

  // ------------------------------------------------------------------------------- reclaim

  /** Soft and below: balloons first, swap for what they cannot cover (hard and low). */
  private reclaim(state: LadderState, free: number, total: number): boolean {
    const need = Math.max(0, this.aimFrames(total) - free);
    if (need === 0) return false;
    const estimates: Estimate[] = [];
    for (const m of this.managed.values()) if (this.reclaimable(m)) estimates.push(this.estimate(m));
    const inFlight = estimates.reduce((sum, e) => sum + e.inFlight, 0);
    const balloonNeed = Math.max(0, need - inFlight);
    let changed = false;
    let granted = 0;
    if (balloonNeed > 0) {
      // Who gives is decided by shares and the idle tax (lowest ρ first); how much each can give
      // cheaply through its balloon by its usage classes.
      const grants = reclaimQuotas(balloonNeed, estimates.map((e) => this.holder(e.m, e.available)), this.taxRateNow);
      estimates.forEach((e, i) => {
        const pages = grants[i]!;
        if (pages <= 0) return;
        this.raiseBalloon(e.m, pages, `${e.detail}; ${this.rhoNote(e.m)}`, `need ${need}, ${inFlight} already asked`);
        granted += pages;
      });
      if (granted > 0) changed = true;
    }
    const uncovered = balloonNeed - granted;
    if (uncovered <= 0) return changed;
    const covered = inFlight + granted;
    if (state === 'soft') {
      this.shortfall('soft', uncovered, `balloons cover ${covered} of ${need} pages needed; swap waits for hard`);
    } else if (this.swap === null) {
      this.shortfall('no-swap-file', uncovered, `balloons cover ${covered} of ${need} pages needed and there is no swap file`);
    } else {
      this.swapOut(estimates, Math.min(uncovered, this.maxSwapPagesPerTick), need, covered);
    }
    return changed;
  }

  /** A VM reclaim can act on: running, or paused by the scheduler or the host (not stopped for good). */
  private reclaimable(m: Managed): boolean {
    return m.vm.stopCode === StopCode.RUNNING || m.vm.stopCode === StopCode.PAUSED;
  }

  /** What the balloon of one VM can still give cheaply now, and why not if nothing. */
  private estimate(m: Managed): Estimate {
    const balloon = m.balloon;
    const none = (why: string): Estimate => ({ m, available: 0, cheap: 0, inFlight: 0, why, detail: why });
    m.cheap = null;
    if (balloon === null) return none('no balloon');
    const pending = Math.max(0, balloon.target - balloon.actual);
    const stalled = pending > 0 && this.tickCount - m.actualMovedTick >= this.balloonStallTicks;
    if (stalled) {
      return none(`balloon stalled (target ${balloon.target}, actual ${balloon.actual}, unchanged for ${this.tickCount - m.actualMovedTick} ticks)`);
    }
    const inFlight = pending;
    const stats = balloon.lastStats;
    const values = stats?.values;
    if (stats === null || values?.freePages === undefined) {
      return { ...none(balloon.statsPollingIntervalS > 0 ? 'no balloon statistics yet' : 'no balloon statistics (polling is off)'), inFlight };
    }
    const age = Math.max(0, m.vm.instructionsRetired - stats.atInstruction);
    const weight = age <= this.statsFreshInstructions ? 1 : age >= this.statsMaxAgeInstructions ? 0 : 0.5 ** ((age - this.statsFreshInstructions) / this.statsFreshInstructions);
    if (weight === 0) return { ...none(`balloon statistics are stale (${age} instructions old)`), inFlight };
    // Pages inflated since the statistics came out of free pages first, then the page cache.
    const inflatedSince = Math.max(0, balloon.actual - (values.balloonPages ?? m.actualAtStats));
    const freeNow = Math.max(0, values.freePages - inflatedSince);
    const cacheNow = Math.max(0, (values.cachePages ?? 0) - Math.max(0, inflatedSince - values.freePages));
    // Free pages that hold a host frame: the frames held less the pages in use (kernel, anonymous,
    // cache). Frames held are taken at the start of the round the statistics arrived in or now,
    // whichever is fewer: a VM that grew since has more pages in use than its statistics say.
    const known = values.kernelPages !== undefined && values.anonPages !== undefined;
    const held = Math.min(m.vm.memory.presentPages, m.presentAtStats);
    const usable = Math.max(0, freeNow - this.guestReservePages);
    const backedFree = known ? Math.min(usable, Math.max(0, held - values.kernelPages! - values.anonPages! - (values.cachePages ?? 0))) : usable;
    const cheap = Math.floor(weight * (backedFree + cacheNow));
    m.cheap = cheap;
    const cap = Math.floor(this.maxBalloonFraction * m.vm.memory.pageCount);
    const room = Math.max(0, cap - balloon.target);
    const available = Math.min(room, Math.max(0, cheap - pending));
    const staleNote = weight < 1 ? `, statistics ${age} instructions old counted at ${Math.round(weight * 100)}%` : '';
    const detail = `${cheap} cheap pages (${backedFree} free with a host frame of ${freeNow} free, ${cacheNow} page cache${staleNote})`;
    let why: string | null = null;
    if (available === 0) {
      why = room === 0 ? `balloon at its limit (${Math.round(this.maxBalloonFraction * 100)}% of RAM, ${cap} pages)`
        : `balloon would get only ${cheap} cheap pages${pending > 0 ? `, ${pending} of them already asked` : ''}`;
    }
    return { m, available, cheap, inFlight, why, detail };
  }

  /** Hard and low: swaps out `pages` cold pages, shared over the VMs by the frames they hold. */
  private swapOut(estimates: readonly Estimate[], pages: number, need: number, covered: number): void {
    const candidates = estimates.filter((e) => e.m.swapRefusal === null && e.m.vm.memory.presentPages > 0);
    const shares = reclaimQuotas(pages, candidates.map((e) => this.holder(e.m, e.m.vm.memory.presentPages)), this.taxRateNow);
    candidates.forEach((e, i) => {
      const share = shares[i]!;
      if (share <= 0) return;
      const why = e.why ?? `balloon would get only ${e.cheap} cheap pages`;
      this.swapFrom(e.m, share, `${why}; ${this.rhoNote(e.m)} (need ${need}, balloons cover ${covered})`);
    });
    if (candidates.length === 0) this.shortfall('no-swappable-vm', pages, `balloons cover ${covered} of ${need} pages needed and no VM can be swapped`);
  }

  /** Raises a VM's balloon target by `pages` (the scheduler's own part), recording why. */
  private raiseBalloon(m: Managed, pages: number, why: string, context: string): void {
    const balloon = m.balloon!;
    const from = balloon.target;
    balloon.setTarget(from + pages);
    m.knownTarget = balloon.target;
    m.ours += pages;
    m.pagesBallooned += pages;
    m.actualMovedTick = this.tickCount;
    this.lastTargetChange = this.tickCount;
    this.recentFree = [];
    this.counters.balloon_decisions++;
    this.counters.balloon_pages_requested += pages;
    this.record('balloon', m.vm.name, pages, `balloon +${pages} pages: ${why}; target ${from} → ${balloon.target} (${context})`);
  }

  /** Swaps up to `pages` cold pages out of a VM (attaching the swap file at its first), recording why. */
  private swapFrom(m: Managed, pages: number, why: string): void {
    const swap = this.swap!;
    if (!m.attachedSwap) {
      try {
        swap.attach(m.vm);
        m.attachedSwap = true;
      } catch (error) {
        if (!(error instanceof SwapError)) throw error;
        m.swapRefusal = error.message;
        this.record('shortfall', m.vm.name, pages, `cannot swap: ${error.message}`);
        this.counters.shortfalls++;
        return;
      }
    }
    const result = this.swapColdPages(m, pages);
    m.pagesSwapped += result.swapped;
    const found = result.swapped < pages ? `; found ${result.swapped} cold pages of ${pages}${result.full ? ' (swap file full)' : ''}` : '';
    this.counters.swap_decisions++;
    this.record('swap', m.vm.name, result.swapped, `swap ${result.swapped} pages: ${why}${found}`);
  }

  /**
   * Any state: a VM holding more frames than its maximum gives the excess back — through its
   * balloon as far as it has cheap pages; what the balloon cannot cover is swapped once the VM
   * has been over its maximum for balloonStallTicks ticks with its balloon not moving (time for
   * the balloon, and for a guest that listens to MEMINFO — whose limit is the maximum — to shrink).
   */
  private enforceMaximums(): boolean {
    let changed = false;
    const tick = this.tickCount;
    for (const m of this.managed.values()) {
      if (m.maxPages === null || !this.reclaimable(m)) continue;
      const held = m.vm.memory.presentPages;
      if (held <= m.maxPages) {
        m.overMaxSince = -1;
        continue;
      }
      if (m.overMaxSince < 0) m.overMaxSince = tick;
      const e = this.estimate(m);
      let left = held - m.maxPages - e.inFlight;
      if (left <= 0) continue;
      const over = `holds ${held} frames, over its maximum ${m.maxPages}`;
      const viaBalloon = Math.min(left, e.available);
      if (viaBalloon > 0) {
        this.raiseBalloon(m, viaBalloon, `${over}; ${e.detail}`, 'maximum reservation');
        left -= viaBalloon;
        changed = true;
      }
      const waited = tick - m.overMaxSince >= this.balloonStallTicks && tick - m.actualMovedTick >= this.balloonStallTicks;
      if (left > 0 && waited && this.swap !== null && m.swapRefusal === null) {
        this.swapFrom(m, Math.min(left, this.maxSwapPagesPerTick), `${over} for ${tick - m.overMaxSince} ticks; ${e.why ?? `balloon would get only ${e.cheap} cheap pages`}`);
      }
    }
    return changed;
  }

  /**
   * The clock: from the VM's hand, each present page with an accessed mark gets a second chance
   * (the mark is cleared, so its next access is seen); the first unmarked plain pages are swapped
   * out, up to `want`. At most one turn over the VM's RAM per call.
   */
  private swapColdPages(m: Managed, want: number): { swapped: number; full: boolean } {
    const swap = this.swap!;
    const memory = m.vm.memory;
    const count = memory.pageCount;
    const accessed = memory.accessed;
    let gpn = m.hand % count;
    let swapped = 0;
    let full = false;
    let runStart = -1;
    const flushRun = (end: number): void => {
      if (runStart < 0) return;
      memory.clearAccessed(runStart, end - runStart);
      this.counters.second_chances += end - runStart;
      runStart = -1;
    };
    for (let visited = 0; visited < count && swapped < want; visited++) {
      if (memory.stateOf(gpn) === PageState.PRESENT) {
        if (accessed[gpn] !== 0) {
          if (runStart < 0) runStart = gpn;
        } else {
          flushRun(gpn);
          if (memory.flagsOf(gpn) === 0 && memory.isPrivate(gpn)) {
            let out: boolean;
            try {
              out = swap.swapOut(m.vm, gpn);
            } catch (error) {
              if (!(error instanceof SwapError) || error.code !== 'BV_SWAP_FULL') throw error;
              this.counters.swap_full++;
              full = true;
              break;
            }
            if (out) swapped++;
            else this.counters.swap_refused++;
          }
        }
      } else {
        flushRun(gpn);
      }
      gpn++;
      if (gpn === count) {
        flushRun(count);
        gpn = 0;
      }
    }
    flushRun(gpn === 0 ? count : gpn);
    m.hand = gpn;
    this.counters.pages_swapped += swapped;
    return { swapped, full };
  }

  /** Records a shortfall once per kind and state episode (it would otherwise repeat every tick). */
  private shortfall(kind: string, pages: number, reason: string): void {
    const key = `${this.stateSince}:${kind}`;
    if (key === this.lastShortfall) return;
    this.lastShortfall = key;
    this.counters.shortfalls++;
    this.record('shortfall', null, pages, `${pages} pages not covered: ${reason}`);
  }

  // ------------------------------------------------------------------------------- low

  private anyBlocked(): boolean {
    for (const m of this.managed.values()) if (m.blocked) return true;
    return false;
  }

  /** At low: blocks every running VM whose frames grew since the last tick. */
  private blockGrowers(free: number, total: number): void {
    for (const m of this.managed.values()) {
      if (m.blocked || m.vm.stopCode !== StopCode.RUNNING) continue;
      const grew = m.vm.memory.presentPages - m.lastPresent;
      if (grew <= 0) continue;
      this.setBlocked(m, true, `allocated ${grew} frames since the last tick while free memory is low (${free} frames, ${pct(free, total)})`);
    }
  }

  private unblockAll(state: LadderState): void {
    for (const m of this.managed.values()) if (m.blocked) this.setBlocked(m, false, `the state rose to ${state}`);
  }

  private setBlocked(m: Managed, blocked: boolean, why: string): void {
    m.blocked = blocked;
    if (blocked) {
      this.blockVm(m.vm, MEMORY_BLOCK_REASON);
      this.counters.blocks++;
      this.record('block', m.vm.name, 0, `blocked: ${why}`);
    } else {
      this.unblockVm(m.vm);
      this.counters.unblocks++;
      this.record('unblock', m.vm.name, 0, `unblocked: ${why}`);
    }
  }

  // ------------------------------------------------------------------------------- high

  /**
   * At high: once the state has stayed high for deflateHoldTicks ticks since it rose and since the
   * last target change, gives back half of what the fewest free frames of the last
   * deflateHoldTicks ticks had above the aim (aimFrames: 7 % with the defaults) — at most what the
   * scheduler put in the balloons, shared in proportion to each VM's part; then waits again.
   */
  private deflate(free: number, total: number): boolean {
    let ours = 0;
    const holders: Managed[] = [];
    for (const m of this.managed.values()) {
      if (m.balloon !== null && m.ours > 0) {
        ours += m.ours;
        holders.push(m);
      }
    }
    if (ours === 0) return false;
    this.recentFree.push(free);
    if (this.recentFree.length > this.deflateHoldTicks) this.recentFree.shift();
    const quiet = this.tickCount - Math.max(this.stateSince, this.lastTargetChange);
    if (quiet < this.deflateHoldTicks) return false;
    const lowest = Math.min(...this.recentFree);
    const surplus = lowest - this.aimFrames(total);
    const giveBack = Math.min(ours, Math.floor(surplus / 2));
    // Hysteresis: no step smaller than the minimum unless it empties the balloons — halving the
    // surplus each time would otherwise end in a long tail of tiny steps.
    if (giveBack <= 0 || giveBack < Math.min(ours, this.minDeflateFrames(total))) return false;
    const shares = proportional(giveBack, holders.map((m) => m.ours));
    holders.forEach((m, i) => {
      const pages = shares[i]!;
      if (pages <= 0) return;
      const balloon = m.balloon!;
      const from = balloon.target;
      balloon.setTarget(Math.max(0, from - pages));
      m.knownTarget = balloon.target;
      m.ours -= pages;
      m.pagesReturned += pages;
      this.counters.deflate_decisions++;
      this.counters.balloon_pages_returned += pages;
      this.record('deflate', m.vm.name, pages,
        `deflate −${pages} pages: high for ${quiet} ticks with at least ${lowest} free frames, ${surplus} above the aim; half of that goes back; target ${from} → ${balloon.target}`);
    });
    this.lastTargetChange = this.tickCount;
    this.recentFree = [];
    return true;
  }

  /** The smallest deflate step: minDeflatePages, or by default half the gap between high and soft (1 % of the pool). */
  private minDeflateFrames(total: number): number {
    if (this.minDeflatePages !== null) return this.minDeflatePages;
    const f = this.thresholdFrames(total);
    return Math.max(1, Math.ceil((f.high - f.soft) / 2));
  }

  // ------------------------------------------------------------------------------- MEMINFO

  /** Each VM's MEMINFO: pressure = the state; limit = RAM − balloon target, at hard and low at most the frames held. */
  private updateMeminfo(state: LadderState): void {
    for (const m of this.managed.values()) {
      if (m.meminfo === null) continue;
      const pages = m.vm.memory.pageCount;
      let limit = Math.min(pages - (m.balloon?.target ?? 0), m.maxPages ?? pages);
      if (this.squeezeLimitUnderPressure && (state === 'hard' || state === 'low')) limit = Math.min(limit, m.vm.memory.presentPages);
      m.meminfo.setCondition({ limitPages: Math.max(0, Math.min(pages, limit)), pressure: PRESSURE_OF[state] });
    }
  }

  // ------------------------------------------------------------------------------- stats

  private record(action: ReclaimAction, vm: string | null, pages: number, reason: string): void {
    this.ring.push({ tick: this.tickCount, at_ms: Math.round((performance.now() - this.started) * 1000) / 1000, state: this.current, vm, action, pages, reason });
    if (this.ring.length > this.decisionLog) this.ring.shift();
  }

  /** The recent decisions, oldest first (at most decisionLog). */
  decisions(): readonly MemoryDecision[] {
    return this.ring;
  }

  /** Counters, per-VM figures and the recent decisions, in snake_case for the host's stats. */
  stats(): MemorySchedulerStats {
    const f = this.thresholdFrames(this.lastTotal);
    const vms: ManagedVmStats[] = [];
    for (const m of this.managed.values()) {
      const stats = m.balloon?.lastStats ?? null;
      vms.push({
        name: m.vm.name,
        balloon: m.balloon !== null,
        target_pages: m.balloon?.target ?? 0,
        actual_pages: m.balloon?.actual ?? 0,
        scheduler_pages: m.ours,
        cheap_pages: m.cheap,
        stats_age_instructions: stats === null ? null : Math.max(0, m.vm.instructionsRetired - stats.atInstruction),
        frames_held: m.vm.memory.presentPages,
        swapped_pages: m.vm.memory.countInState(AbsentState.SWAPPED),
        pages_ballooned: m.pagesBallooned,
        pages_returned: m.pagesReturned,
        pages_swapped: m.pagesSwapped,
        blocked: m.blocked,
        shares: m.shares,
        min_pages: m.minPages,
        max_pages: m.maxPages,
        active_fraction: this.activeOf(m),
        shares_per_page: m.vm.memory.presentPages > 0 ? adjustedSharesPerPage(m.shares, m.vm.memory.presentPages, this.activeOf(m) ?? 1, this.taxRateNow) : null,
      });
    }
    return {
      state: this.current,
      thresholds: {
        high_pct: this.thresholds.high, soft_pct: this.thresholds.soft, hard_pct: this.thresholds.hard, low_pct: this.thresholds.low,
        high_frames: f.high, soft_frames: f.soft, hard_frames: f.hard, low_frames: f.low,
      },
      pool: { total_frames: this.lastTotal, free_frames: this.lastFree, free_pct: this.lastTotal === 0 ? 0 : Math.round((10000 * this.lastFree) / this.lastTotal) / 100 },
      ticks_in_state: { ...this.inState },
      counters: { ...this.counters },
      blocked_vms: vms.filter((v) => v.blocked).map((v) => v.name),
      tax_rate: this.taxRateNow,
      vms,
      recent_decisions: this.ring.map((d) => ({ ...d })),
    };
  }
}
