/**
 * Sampled active memory (T-8's f, as ESX estimates a VM's working set): every sampling period a
 * VM's sampler picks `pagesPerPeriod` guest pages at random, arms an access watch on them
 * (GuestMemory.armAccessWatch: their translations are shot down on every vCPU, so the next guest
 * load, store or fetch of each is seen once), and at the end of the period takes f = touched /
 * sampled. A fast and a slow exponentially weighted moving average of f are kept and the larger
 * is the estimate: it grows within a couple of periods when the guest starts using more memory
 * and shrinks only slowly when it stops. docs/active-memory.md explains the choices.
 *
 * - Periods are measured in the VM's own retired instructions (vm.instructionsRetired) unless a
 *   `clock` is given, so a paused or stopped VM's period does not end and runs are reproducible.
 * - Pages are drawn without replacement, uniformly over all of the guest's RAM pages, with a
 *   seeded PRNG (its state travels with checkpoints and forks). Pages that hold no frame
 *   (untouched, ballooned, swapped…) are drawn like the others: they are part of the VM's memory,
 *   and idle unless the guest touches them in the period.
 * - Watching never changes what the guest computes and leaves the accessed marks other policies
 *   read alone (the kernel's access watch). The sampler acts only between runs (`tick`).
 * - The sampler's state (averages, period position, PRNG state, the current period's pages and
 *   which were touched, recent samples) is a VM state component ('active-memory'), so it
 *   survives a checkpoint/restore and a fork: the restored or forked VM's sampler carries on
 *   with the same estimate and the same pages armed.
 *
 * Everything goes through GuestMemory's public API (addAccessWatcher, armAccessWatch,
 * disarmAccessWatch, removeAccessWatcher, pageCount): no P2M entry or frame is seen here.
 */
import { BvError } from '../../guest-isa/errors.ts';
import type { StatefulComponent, Vm } from '../../kernel/index.ts';

/** A bad ActiveMemorySampler option or saved state. */
export class ActiveMemoryError extends BvError {}

/** Guest pages sampled per period: ESX's n. */
export const ACTIVE_PAGES_PER_PERIOD = 100;
/**
 * The sampling period in guest instructions: about one second of guest execution on this
 * interpreter (100–150 M instructions per second). See docs/active-memory.md for why not 30 s.
 */
export const ACTIVE_PERIOD_INSTRUCTIONS = 100_000_000;
/** Weight of a new sample in the fast average: a full swing (0.1 → 0.9) is followed within 10 points in 2 periods. */
export const ACTIVE_FAST_WEIGHT = 0.7;
/** Weight of a new sample in the slow average: a half-life of about 11 periods. */
export const ACTIVE_SLOW_WEIGHT = 1 / 16;
/** Raw samples of recent periods kept (stats' `recent_samples`). */
export const ACTIVE_SAMPLES_KEPT = 64;
/** The name the sampler's state is registered under (Vm.registerState). */
export const ACTIVE_MEMORY_STATE = 'active-memory';
/** Version of the saved state (StatefulComponent.version). */
export const ACTIVE_MEMORY_STATE_VERSION = 1;

/** Options of ActiveMemorySampler. */
export interface ActiveMemoryOptions {
  /** Guest pages sampled per period (default 100, as ESX); at most the guest's pages are sampled. */
  pagesPerPeriod?: number;
  /** Length of a sampling period in clock units, by default guest instructions (default 100,000,000). */
  periodInstructions?: number;
  /** Weight α of a new sample in the fast average, 0 < α ≤ 1 (default 0.7). */
  fastWeight?: number;
  /** Weight α of a new sample in the slow average, 0 < α ≤ fastWeight (default 1/16). */
  slowWeight?: number;
  /** Seed of the page-choosing PRNG (default: a hash of the VM's name), a 32-bit integer. */
  seed?: number;
  /** Raw samples kept, most recent last (default 64). */
  samplesKept?: number;
  /** The estimate reported before the first period ends, 0…1 (default 1: unknown counts as active). */
  initialEstimate?: number;
  /**
   * The clock periods are measured on (default: the VM's retired instructions). A host may pass
   * another monotonic, deterministic clock, for example its total instructions over all VMs, so
   * that the periods of a VM that retires nothing (waiting in wfi) still end.
   */
  clock?: () => number;
  /** Close periods from a VM ticker (vm.addTicker) instead of waiting for tick() calls (default false). */
  autoTick?: boolean;
  /**
   * Register the state as this VM state component, so checkpoints and forks carry it (default
   * 'active-memory'); null: do not register (a checkpoint then has no sampler state).
   */
  stateName?: string | null;
}

/** One closed sampling period. */
export interface ActiveMemorySample {
  /** 1 for the first period of this sampler (and of the VM it was restored or forked from). */
  period: number;
  /** Clock (guest instructions by default) when the period started. */
  startInstructions: number;
  /** Clock (guest instructions by default) when the period was closed. */
  endInstructions: number;
  /** Pages armed for the period. */
  sampled: number;
  /** Of the pages armed, those the guest touched before the period was closed. */
  touched: number;
  /** The fraction touched / sampled, 0…1 (0 when no page was sampled). */
  f: number;
}

/** The sampler's averages after a sample (updateActiveAverages). */
export interface ActiveAverages {
  /** The fast moving average of f, 0…1. */
  fast: number;
  /** The slow moving average of f, 0…1. */
  slow: number;
  /** The active fraction, max(fast, slow), 0…1. */
  estimate: number;
}

/** stats(): JSON-friendly, snake_case (the host's stats and `GET /vms/{name}/active-memory`). */
export interface ActiveMemoryStats {
  /** max(fast, slow), 0…1; `initial_estimate` before the first period ends. */
  estimate: number;
  /** The fast moving average of f, 0…1 (null before the first period ends). */
  fast: number | null;
  /** The slow moving average of f, 0…1 (null before the first period ends). */
  slow: number | null;
  /** estimate × guest_pages, rounded. */
  active_pages: number;
  /** Guest RAM pages (the population sampled). */
  guest_pages: number;
  /** Periods closed. */
  periods: number;
  /** Guest pages sampled per period (setting; at most guest_pages are armed). */
  pages_per_period: number;
  /** Length of a sampling period in clock units (guest instructions by default). */
  period_instructions: number;
  /** Weights of a new sample in the two averages. */
  weights: {
    /** Weight of a new sample in the fast average, 0…1. */
    fast: number;
    /** Weight of a new sample in the slow average, 0…1. */
    slow: number;
  };
  /** The estimate reported before the first period ends, 0…1. */
  initial_estimate: number;
  /** The period in progress. */
  current_period: {
    /** Clock (guest instructions by default) when the period started. */
    start_instructions: number;
    /** Clock (guest instructions by default) at which the period ends. */
    end_instructions: number;
    /** Pages armed for the period. */
    sampled: number;
    /** Of the pages armed, those touched so far. */
    touched: number;
  };
  /** Raw samples of the most recent periods, oldest first. */
  recent_samples: {
    /** The period's number, 1 for the first. */
    period: number;
    /** Clock (guest instructions by default) when the period started. */
    start_instructions: number;
    /** Clock (guest instructions by default) when the period was closed. */
    end_instructions: number;
    /** Pages armed for the period. */
    sampled: number;
    /** Of the pages armed, those the guest touched. */
    touched: number;
    /** The fraction touched / sampled, 0…1 (rounded to 6 decimals). */
    f: number;
  }[];
}

// --- the formula ---------------------------------------------------------------------------------

/**
 * One step of an exponentially weighted moving average: `previous + weight × (sample − previous)`;
 * with no previous value (the first sample) the sample itself.
 */
export function ewma(previous: number | null, sample: number, weight: number): number {
  if (previous === null) return sample;
  return previous + weight * (sample - previous);
}

/** The estimate from the two averages: the larger ("grows fast, shrinks slowly"). */
export function activeEstimate(fast: number, slow: number): number {
  return Math.max(fast, slow);
}

/** Both averages and the estimate after sample `f`, from the previous averages (null: none yet). */
export function updateActiveAverages(previous: { fast: number; slow: number } | null, f: number, weights: { fast: number; slow: number }): ActiveAverages {
  const fast = ewma(previous?.fast ?? null, f, weights.fast);
  const slow = ewma(previous?.slow ?? null, f, weights.slow);
  return { fast, slow, estimate: activeEstimate(fast, slow) };
}

// --- the PRNG ----------------------------------------------------------------------------------

/** mulberry32's step: returns [the next state, a 32-bit output]. Plain integers, so the state is JSON. */
function nextRandom(state: number): [number, number] {
  const next = (state + 0x6d2b79f5) >>> 0;
  let t = next;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return [next, (t ^ (t >>> 14)) >>> 0];
}

/** FNV-1a of a string: the default seed from the VM's name. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

/**
 * `count` distinct integers drawn uniformly from [0, range) (Floyd's algorithm: `count` draws),
 * sorted, and the PRNG state after the draws.
 */
export function samplePages(state: number, range: number, count: number): {
  /** The pages drawn, sorted ascending. */
  pages: number[];
  /** The PRNG state after the draws. */
  state: number;
} {
  const chosen = new Set<number>();
  let s = state >>> 0;
  for (let j = range - count; j < range; j++) {
    let value: number;
    [s, value] = nextRandom(s);
    const t = Math.floor((value / 2 ** 32) * (j + 1));
    chosen.add(chosen.has(t) ? j : t);
  }
  return { pages: [...chosen].sort((a, b) => a - b), state: s };
}

// --- the saved state ---------------------------------------------------------------------------

/** What the sampler saves (JSON). Period positions are relative to the clock at save time. */
interface SavedState {
  periods: number;
  fast: number | null;
  slow: number | null;
  prng: number;
  /** Clock units since the current period started, and its length. */
  elapsed: number;
  length: number;
  /** The current period's pages, and which of them were touched (0/1 each). */
  pages: number[];
  touched: number[];
  samples: ActiveMemorySample[];
  /** The sampler's settings, so a restored or forked VM samples as before (absent in older states: the new sampler's own stay). */
  settings?: { pagesPerPeriod: number; periodInstructions: number; fastWeight: number; slowWeight: number };
}

const isCount = (value: unknown): value is number => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
const isFraction = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value) && value >= 0 && value <= 1;

// --- the sampler -------------------------------------------------------------------------------

/**
 * A VM's active-memory sampler. Create one per VM (before a restore or fork, in `attach`, so its
 * state is restored); call `tick()` between runs (or pass `autoTick`), read `stats()` or
 * `estimate`; `dispose()` before destroying the VM.
 */
export class ActiveMemorySampler {
  /** The VM sampled. */
  readonly vm: Vm;
  /** Settings (options; a restore or fork replaces them with the saved VM's). Guest pages sampled per period. */
  pagesPerPeriod: number;
  /** Length of a sampling period in clock units (guest instructions by default). */
  periodInstructions: number;
  /** Weights of a new sample in the two moving averages. */
  weights: {
    /** Weight of a new sample in the fast average, 0 < fast ≤ 1. */
    readonly fast: number;
    /** Weight of a new sample in the slow average, 0 < slow ≤ fast. */
    readonly slow: number;
  };
  /** Raw samples of recent periods kept. */
  readonly samplesKept: number;
  /** The estimate reported before the first period ends, 0…1. */
  readonly initialEstimate: number;
  /** The name the state is registered under, or null. */
  readonly stateName: string | null;
  /** The id of the sampler's access watcher (GuestMemory.addAccessWatcher). */
  readonly watcher: number;
  private readonly clock: () => number;
  private readonly removeTicker: (() => void) | null;
  private disposed = false;
  private periodCount = 0;
  private fastAverage: number | null = null;
  private slowAverage: number | null = null;
  private prng: number;
  private periodStart = 0;
  private periodEnd = 0;
  /** The current period's pages (sorted) and, per page, 1 once touched. */
  private pages: number[] = [];
  private touchedFlags: Uint8Array = new Uint8Array(0);
  private touchedCount = 0;
  /** Guest page → index in `pages` + 1 (0: not sampled this period). */
  private readonly slot: Int32Array;
  private samples: ActiveMemorySample[] = [];

  constructor(vm: Vm, options: ActiveMemoryOptions = {}) {
    const positive = (name: string, value: number | undefined, fallback: number): number => {
      const v = value ?? fallback;
      if (!Number.isSafeInteger(v) || v <= 0) throw new ActiveMemoryError('BV_ACTIVE_MEMORY_OPTION', `active memory: ${name} must be a positive integer, got ${String(value)}`);
      return v;
    };
    this.vm = vm;
    this.pagesPerPeriod = positive('pagesPerPeriod', options.pagesPerPeriod, ACTIVE_PAGES_PER_PERIOD);
    this.periodInstructions = positive('periodInstructions', options.periodInstructions, ACTIVE_PERIOD_INSTRUCTIONS);
    this.samplesKept = positive('samplesKept', options.samplesKept, ACTIVE_SAMPLES_KEPT);
    const fast = options.fastWeight ?? ACTIVE_FAST_WEIGHT;
    const slow = options.slowWeight ?? ACTIVE_SLOW_WEIGHT;
    if (!(typeof fast === 'number' && fast > 0 && fast <= 1)) throw new ActiveMemoryError('BV_ACTIVE_MEMORY_OPTION', `active memory: fastWeight must be in (0, 1], got ${String(fast)}`);
    if (!(typeof slow === 'number' && slow > 0 && slow <= fast)) throw new ActiveMemoryError('BV_ACTIVE_MEMORY_OPTION', `active memory: slowWeight must be in (0, fastWeight], got ${String(slow)}`);
    this.weights = { fast, slow };
    const initial = options.initialEstimate ?? 1;
    if (!isFraction(initial)) throw new ActiveMemoryError('BV_ACTIVE_MEMORY_OPTION', `active memory: initialEstimate must be in [0, 1], got ${String(initial)}`);
    this.initialEstimate = initial;
    const seed = options.seed ?? hashName(vm.name);
    if (!Number.isInteger(seed)) throw new ActiveMemoryError('BV_ACTIVE_MEMORY_OPTION', `active memory: seed must be an integer, got ${String(seed)}`);
    this.prng = seed >>> 0;
    this.clock = options.clock ?? (() => vm.instructionsRetired);
    this.stateName = options.stateName === undefined ? ACTIVE_MEMORY_STATE : options.stateName;
    this.slot = new Int32Array(vm.memory.pageCount);
    this.watcher = vm.memory.addAccessWatcher((gpn) => this.seen(gpn));
    try {
      if (this.stateName !== null) vm.registerState(this.stateName, this.component());
    } catch (error) {
      vm.memory.removeAccessWatcher(this.watcher); // a second sampler under the same name
      throw error;
    }
    this.startPeriod(this.clock());
    this.removeTicker = options.autoTick ? vm.addTicker(this.periodInstructions, () => this.tick()) : null;
  }

  /** Guest RAM pages (the population sampled). */
  get guestPages(): number {
    return this.vm.memory.pageCount;
  }

  /** Periods closed so far. */
  get periods(): number {
    return this.periodCount;
  }

  /** The active fraction: max(fast, slow), or initialEstimate before the first period ends. */
  get estimate(): number {
    if (this.fastAverage === null || this.slowAverage === null) return this.initialEstimate;
    return activeEstimate(this.fastAverage, this.slowAverage);
  }

  /** estimate × guest pages, rounded. */
  get activePages(): number {
    return Math.round(this.estimate * this.guestPages);
  }

  /** The averages (null before the first period ends). */
  get averages(): {
    /** The fast moving average of f, 0…1, or null. */
    fast: number | null;
    /** The slow moving average of f, 0…1, or null. */
    slow: number | null;
  } {
    return { fast: this.fastAverage, slow: this.slowAverage };
  }

  /** Raw samples of the most recent periods, oldest first (copies). */
  recentSamples(): ActiveMemorySample[] {
    return this.samples.map((sample) => ({ ...sample }));
  }

  /** The pages armed for the current period (sorted copy). */
  currentPages(): number[] {
    return [...this.pages];
  }

  /**
   * Between runs (never inside a slice): when the clock has reached the end of the current
   * period, closes it (one sample, the averages updated) and starts the next, returning the
   * sample; otherwise does nothing and returns null. Calling it often costs one clock read. A
   * late call closes the period where the clock stands (its sample covers the longer interval).
   */
  tick(): ActiveMemorySample | null {
    if (this.disposed) return null;
    const now = this.clock();
    if (now < this.periodStart) {
      // The clock went back (a clock the host replaced): start over from here, nothing sampled.
      this.startPeriod(now);
      return null;
    }
    if (now < this.periodEnd) return null;
    const sample = this.closePeriod(now);
    this.startPeriod(now);
    return sample;
  }

  /** Stops sampling: disarms the current pages and removes the watcher (and the ticker). The state stays registered, frozen. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.removeTicker?.();
    this.vm.memory.removeAccessWatcher(this.watcher);
    for (const gpn of this.pages) this.slot[gpn] = 0;
  }

  /** JSON-friendly, snake_case. */
  stats(): ActiveMemoryStats {
    const round = (value: number): number => Number(value.toFixed(6));
    return {
      estimate: round(this.estimate),
      fast: this.fastAverage === null ? null : round(this.fastAverage),
      slow: this.slowAverage === null ? null : round(this.slowAverage),
      active_pages: this.activePages,
      guest_pages: this.guestPages,
      periods: this.periodCount,
      pages_per_period: this.pagesPerPeriod,
      period_instructions: this.periodInstructions,
      weights: { fast: this.weights.fast, slow: this.weights.slow },
      initial_estimate: this.initialEstimate,
      current_period: { start_instructions: this.periodStart, end_instructions: this.periodEnd, sampled: this.pages.length, touched: this.touchedCount },
      recent_samples: this.samples.map((s) => ({
        period: s.period, start_instructions: s.startInstructions, end_instructions: s.endInstructions, sampled: s.sampled, touched: s.touched, f: round(s.f),
      })),
    };
  }

  // --- periods -----------------------------------------------------------------------------------

  /** The watcher: called by the kernel at the first access to an armed page (inside a slice: O(1), never throws). */
  private seen(gpn: number): void {
    const index = this.slot[gpn]! - 1;
    if (index < 0 || this.touchedFlags[index] !== 0) return;
    this.touchedFlags[index] = 1;
    this.touchedCount++;
  }

  private startPeriod(now: number, length = this.periodInstructions): void {
    this.releasePages();
    const count = Math.min(this.pagesPerPeriod, this.guestPages);
    const drawn = samplePages(this.prng, this.guestPages, count);
    this.prng = drawn.state;
    this.armPages(drawn.pages, new Uint8Array(drawn.pages.length));
    this.periodStart = now;
    this.periodEnd = now + length;
  }

  /** Makes `pages` the current period's; arms those not yet touched. */
  private armPages(pages: number[], touched: Uint8Array): void {
    this.pages = pages;
    this.touchedFlags = touched;
    this.touchedCount = 0;
    const untouched: number[] = [];
    pages.forEach((gpn, index) => {
      this.slot[gpn] = index + 1;
      if (touched[index] !== 0) this.touchedCount++;
      else untouched.push(gpn);
    });
    if (untouched.length > 0) this.vm.memory.armAccessWatch(this.watcher, untouched);
  }

  /** Disarms the current period's untouched pages and forgets them. */
  private releasePages(): void {
    const untouched = this.pages.filter((_, index) => this.touchedFlags[index] === 0);
    if (untouched.length > 0) this.vm.memory.disarmAccessWatch(this.watcher, untouched);
    for (const gpn of this.pages) this.slot[gpn] = 0;
    this.pages = [];
    this.touchedFlags = new Uint8Array(0);
    this.touchedCount = 0;
  }

  private closePeriod(now: number): ActiveMemorySample {
    const sampled = this.pages.length;
    const f = sampled === 0 ? 0 : this.touchedCount / sampled;
    const averages = updateActiveAverages(this.fastAverage === null || this.slowAverage === null ? null : { fast: this.fastAverage, slow: this.slowAverage }, f, this.weights);
    this.fastAverage = averages.fast;
    this.slowAverage = averages.slow;
    this.periodCount++;
    const sample: ActiveMemorySample = { period: this.periodCount, startInstructions: this.periodStart, endInstructions: now, sampled, touched: this.touchedCount, f };
    this.samples.push(sample);
    if (this.samples.length > this.samplesKept) this.samples.splice(0, this.samples.length - this.samplesKept);
    return { ...sample };
  }

  // --- checkpoints and fork ----------------------------------------------------------------------

  private component(): StatefulComponent {
    return {
      version: ACTIVE_MEMORY_STATE_VERSION,
      save: (): SavedState => {
        const now = this.clock();
        return {
          periods: this.periodCount,
          fast: this.fastAverage,
          slow: this.slowAverage,
          prng: this.prng,
          elapsed: Math.max(0, now - this.periodStart),
          length: this.periodEnd - this.periodStart,
          pages: [...this.pages],
          touched: Array.from(this.touchedFlags),
          samples: this.samples.map((s) => ({ ...s })),
          settings: { pagesPerPeriod: this.pagesPerPeriod, periodInstructions: this.periodInstructions, fastWeight: this.weights.fast, slowWeight: this.weights.slow },
        };
      },
      check: (state: unknown) => this.checkSaved(state),
      restore: (state: unknown) => {
        const saved = state as SavedState;
        if (this.disposed) return;
        this.periodCount = saved.periods;
        this.fastAverage = saved.fast;
        this.slowAverage = saved.slow;
        this.prng = saved.prng >>> 0;
        this.samples = saved.samples.slice(-this.samplesKept).map((s) => ({ ...s }));
        if (saved.settings !== undefined) {
          this.pagesPerPeriod = saved.settings.pagesPerPeriod;
          this.periodInstructions = saved.settings.periodInstructions;
          this.weights = { fast: saved.settings.fastWeight, slow: saved.settings.slowWeight };
        }
        // The saved period carries on: the same pages, the untouched ones armed again here.
        this.releasePages();
        const now = this.clock();
        this.periodStart = now - saved.elapsed;
        this.periodEnd = this.periodStart + saved.length;
        this.armPages([...saved.pages], Uint8Array.from(saved.touched));
      },
    };
  }

  /** Checks a saved state (it may come from a damaged or edited checkpoint) without changing anything. */
  private checkSaved(state: unknown): void {
    const bad = (field: string, why: string): never => {
      throw new ActiveMemoryError('BV_ACTIVE_MEMORY_STATE', `${this.vm.name}: saved active-memory state: ${field} ${why}`);
    };
    if (state === null || typeof state !== 'object' || Array.isArray(state)) bad('state', 'is not an object');
    const s = state as Record<string, unknown>;
    if (!isCount(s.periods)) bad('periods', 'must be a non-negative integer');
    for (const name of ['fast', 'slow'] as const) if (s[name] !== null && !isFraction(s[name])) bad(name, 'must be null or in [0, 1]');
    if ((s.fast === null) !== (s.slow === null) || (s.fast === null) !== (s.periods === 0)) bad('fast/slow', 'must be null exactly when no period has ended');
    if (!isCount(s.prng) || (s.prng as number) > 0xffff_ffff) bad('prng', 'must be a 32-bit unsigned integer');
    if (!isCount(s.elapsed)) bad('elapsed', 'must be a non-negative integer');
    if (!isCount(s.length) || (s.length as number) === 0) bad('length', 'must be a positive integer');
    const pages = s.pages;
    if (!Array.isArray(pages) || pages.length > this.guestPages) bad('pages', `must be a list of at most ${this.guestPages} pages`);
    (pages as unknown[]).forEach((gpn, i) => {
      if (!isCount(gpn) || gpn >= this.guestPages) bad(`pages[${i}]`, `must be a guest page below ${this.guestPages}`);
      if (i > 0 && (gpn as number) <= ((pages as number[])[i - 1] as number)) bad(`pages[${i}]`, 'must be above the page before it (sorted, distinct)');
    });
    const touched = s.touched;
    if (!Array.isArray(touched) || touched.length !== (pages as unknown[]).length || touched.some((t) => t !== 0 && t !== 1)) bad('touched', 'must hold 0 or 1 for each page');
    if (!Array.isArray(s.samples)) bad('samples', 'must be a list');
    if (s.settings !== undefined) {
      const t = s.settings as Record<string, unknown> | null;
      if (t === null || typeof t !== 'object') bad('settings', 'must be an object');
      if (!isCount(t!.pagesPerPeriod) || t!.pagesPerPeriod === 0) bad('settings.pagesPerPeriod', 'must be a positive integer');
      if (!isCount(t!.periodInstructions) || t!.periodInstructions === 0) bad('settings.periodInstructions', 'must be a positive integer');
      if (!isFraction(t!.fastWeight) || t!.fastWeight === 0) bad('settings.fastWeight', 'must be in (0, 1]');
      if (!isFraction(t!.slowWeight) || t!.slowWeight === 0 || (t!.slowWeight as number) > (t!.fastWeight as number)) bad('settings.slowWeight', 'must be in (0, fastWeight]');
    }
    (s.samples as unknown[]).forEach((sample, i) => {
      const x = sample as Record<string, unknown> | null;
      if (x === null || typeof x !== 'object' || !isCount(x.period) || !isCount(x.startInstructions) || !isCount(x.endInstructions) || !isCount(x.sampled) || !isCount(x.touched) || !isFraction(x.f) || (x.touched as number) > (x.sampled as number)) {
        bad(`samples[${i}]`, 'must be {period, startInstructions, endInstructions, sampled, touched ≤ sampled, f in [0, 1]}');
      }
    });
  }
}
