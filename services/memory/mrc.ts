/**
 * Online miss-rate curves (T-9): how the miss ratio of a VM's memory would change with its size,
 * estimated while the guest runs, from a small hashed sample of its guest pages.
 *
 * A guest page is *sampled* when a hash of its guest page number falls under `rate` × 2^32.
 * The tracker arms an access watch (GuestMemory.armAccessWatch) on every sampled page; the next
 * guest access to one calls the watcher, which only appends the page and the instruction clock
 * to a buffer. Between runs, `tick()` takes the buffer in order: each entry is a *reference* to
 * that page, whose LRU stack distance among the sampled pages (how many other sampled pages were
 * referenced since this one's previous reference) is counted in a histogram; the page is armed
 * again once `quietInstructions` of the VM's instructions have passed since its reference. A
 * sampled distance d stands for about d / rate pages of the whole memory, so a memory of C pages
 * misses the reference when d ≥ C × rate (and always on a page's first reference, a cold miss).
 * A few pages in use all the time (found by a census) form a hot stratum that is watched whole
 * and whose references count once each instead of 1 / rate times (MissRateCurve below).
 *
 * `exactMissRateCurve` computes the same curve exactly from a complete reference trace, and
 * `TraceReplay` drives a tracker from a synthetic trace without a guest (tests, the bench).
 * See docs/mrc.md.
 */
import type { Vm } from '../../kernel/index.ts';

const PAGE_BYTES = 4096;
/**
 * The most pages a census window watches fire (each a TLB miss and a watcher call); a guest that
 * uses more pages than this in a quiet time ends the census early and leaves the hot stratum empty.
 */
const CENSUS_BUDGET = 2048;
const MIB_PAGES = (1 << 20) / PAGE_BYTES;
/**
 * What the activity census knows of a page (docs/mrc.md#post-stratification-by-activity), bits:
 * seen in use in the current (or, once it ended, the last) window, in the one before, used at
 * all since the tracker started (a covered page is watched until its first use), covered.
 */
const SEEN_NOW = 1;
const SEEN_BEFORE = 2;
const SEEN_EVER = 4;
const COVERED = 8;
/** Activity classes, least active first: never used, used but not in the last window, in the last only, in the last two. */
const ACTIVITY_CLASSES = 4;
/** The fewest sampled pages a group of classes is weighed by. */
const MIN_GROUP_SAMPLED = 4;
/** The class of a page's SEEN_* bits. */
function activityClass(bits: number): number {
  return (bits & SEEN_NOW) !== 0 ? ((bits & SEEN_BEFORE) !== 0 ? 3 : 2) : (bits & SEEN_EVER) !== 0 ? 1 : 0;
}

/** What a tracker watches: a VM's memory, or a replayed trace (TraceReplay). */
export interface AccessWatchSource {
  /** Guest pages. */
  readonly pageCount: number;
  /** The clock quiet times are measured in: the VM's retired instructions (or trace position). */
  readonly clock: number;
  /** Registers a watcher, called with the guest page number at the first access to a page it armed; returns its id. */
  addAccessWatcher(watcher: (gpn: number) => void): number;
  /** Arms watcher `id` on the first `count` (default: all) guest pages of `gpns`: each fires once at its next access. */
  armAccessWatch(id: number, gpns: ArrayLike<number>, count?: number): void;
  /** Disarms watcher `id` on the first `count` (default: all) guest pages of `gpns`. */
  disarmAccessWatch(id: number, gpns: ArrayLike<number>, count?: number): void;
  /** Removes watcher `id`, disarming all its pages. */
  removeAccessWatcher(id: number): void;
}

/** Page-selection hash (docs/mrc.md#the-hash). */
export type MrcHash = 'mix' | 'golden';

/** Options of MissRateCurve. */
export interface MissRateCurveOptions {
  /** Fraction of guest pages sampled, in (0, 1]. Default 0.01 (1 %). */
  rate?: number;
  /** Hash seed (any 32-bit integer): another seed picks another sample of the same size. Default 0. */
  seed?: number;
  /** Which hash selects the pages: 'golden' (default) or 'mix' (docs/mrc.md#the-hash). */
  hash?: MrcHash;
  /** Instructions a page stays unwatched after a reference before it is armed again. Default 200,000. */
  quietInstructions?: number;
  /** Every this many instructions the histogram is multiplied by `decay` (0: never). Default 100,000,000. */
  agingInstructions?: number;
  /** Factor applied at each aging step, in [0, 1). Default 0.5. */
  decay?: number;
  /** Keep every sampled reference's page in order (`trace()`); for the bench and tests (memory grows with the run). */
  keepTrace?: boolean;
  /**
   * The most pages the hot stratum holds (docs/mrc.md#hot-pages-the-census-and-the-hot-stratum): pages found in use in two
   * consecutive quiet times by a census are watched whether sampled or not and each of their
   * references counts once, when there are at most this many. Default ⌊guest pages ÷ sampled
   * pages⌋ (fewer pages than the sample is expected to hold one of), at most the sampled pages
   * (no more watches than the sample's); 0 turns the census off.
   */
  hotPages?: number;
  /** Instructions from one census to the next (the first is at the first tick). Default 50,000,000. */
  censusInstructions?: number;
  /**
   * Fraction of guest pages the activity census watches (docs/mrc.md#post-stratification-by-activity):
   * a hashed superset of the sample (the same hash under a higher threshold), watched for one quiet
   * time every `activityInstructions`; the pages it sees in use re-weigh the sampled pages in use
   * and the others. In [rate, 1], or 0 for none. Default min(1, 3 × rate); none at rate 1 or with quietInstructions 0.
   */
  activityRate?: number;
  /** Instructions from one activity window to the next (the first is at the first tick). Default 16 × quietInstructions. */
  activityInstructions?: number;
}

/** The curve, JSON-friendly (GET /vms/{name}/mrc). `miss_ratio[i]` is the estimate at `sizes_pages[i]` pages. */
export interface MissRateCurveReport {
  /** Fraction of guest pages sampled, in (0, 1]. */
  rate: number;
  /** The page-selection hash's seed. */
  seed: number;
  /** The page-selection hash. */
  hash: MrcHash;
  /** Instructions a page stays unwatched after a reference before it is armed again. */
  quiet_instructions: number;
  /** Instructions between aging steps (0: no aging). */
  aging_instructions: number;
  /** Factor the histogram is multiplied by at each aging step, in [0, 1). */
  decay: number;
  /** Guest RAM pages. */
  guest_pages: number;
  /** Guest pages in the sample (watched). */
  sampled_pages: number;
  /** Sampled pages referenced at least once (since the stack was last cleared). */
  sampled_pages_seen: number;
  /** Estimated references of the whole memory (sampled references ÷ rate, after aging). */
  references: number;
  /** References to sampled pages counted in the histogram (after aging). */
  sampled_references: number;
  /** Of those, first references (cold misses). */
  cold_references: number;
  /** Miss ratio with unlimited memory: the cold misses' share. */
  floor: number;
  /** Estimated footprint: the shares of the pages referenced (sampled pages seen ÷ density while every share is 1). */
  footprint_pages: number;
  /** The curve's breakpoints: memory sizes in pages, ascending, from 0. */
  sizes_pages: number[];
  /** The same sizes in MiB (4 KiB pages), rounded to 6 decimals. */
  sizes_mib: number[];
  /** Estimated miss ratio (0…1) from each size up to the next, rounded to 6 decimals. */
  miss_ratio: number[];
  /** tick() calls so far. */
  ticks: number;
  /** The clock (instructions) at the last tick. */
  instructions: number;
  /** Aging steps applied since the tracker was created or last reset. */
  aging_steps: number;
  /** Pages in the hot stratum now (watched whether sampled or not; each reference counts once). */
  hot_pages: number;
  /** The most pages the hot stratum may hold (0: no census). */
  hot_pages_max: number;
  /** Censuses completed (each: two quiet times of watching the pages outside the sample). */
  censuses: number;
  /** Censuses skipped: the sample said more than twice as many pages were in use in the last quiet time as a census window may see (the stratum is emptied instead). */
  censuses_skipped: number;
  /** References of hot-stratum pages counted (after aging; each stands for one reference). */
  hot_references: number;
  /** Fraction of guest pages the activity census watches (0: none). */
  activity_rate: number;
  /** Activity windows completed. */
  activity_windows: number;
  /** Pages (outside the hot stratum) the last activity window estimates in use in a quiet time. */
  active_pages: number;
  /** Guest pages each sampled page in use in the last two windows stands for; guest pages ÷ sampled pages without the census. */
  active_weight: number;
  /** Guest pages each sampled page used before, but not in the last window, stands for. */
  idle_weight: number;
}

/** A bad MissRateCurve option. */
export class MrcError extends Error {
  /** The error code: always 'BV_MRC_OPTION'. */
  readonly code = 'BV_MRC_OPTION';
}

/** The page-selection hash of `gpn`, as an unsigned 32-bit number. */
export function mrcPageHash(gpn: number, seed = 0, hash: MrcHash = 'mix'): number {
  if (hash === 'golden') {
    // Multiplicative (Fibonacci) hashing: the fractional parts of (gpn + seed) × φ⁻¹ are spread
    // evenly over any run of consecutive page numbers.
    return Math.imul((gpn + seed) | 0, 0x9e3779b9) >>> 0;
  }
  // An xor-shift-multiply mixer over the page number and the seed.
  let x = (gpn ^ Math.imul(seed, 0x85ebca77)) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Whether a tracker with this rate, seed and hash samples `gpn`. */
export function isSampledPage(gpn: number, rate: number, seed = 0, hash: MrcHash = 'mix'): boolean {
  return mrcPageHash(gpn, seed, hash) < thresholdOf(rate);
}

function thresholdOf(rate: number): number {
  return Math.min(2 ** 32, Math.round(rate * 2 ** 32));
}

/**
 * Stack distances with a Fenwick tree over logical time: each counted item's last reference time
 * holds a mark of the item's weight (1 unless given); the distance of a new reference is the sum
 * of the marks after the item's previous time (with weights 1: the distinct other items since).
 * Items from `counted` on are *uncounted*: their references get distances, but they hold no mark,
 * so they never add to another item's distance (the tracker's hot pages outside the sample).
 * Times are renumbered when they run out.
 */
class StackDistances {
  private tree: Float64Array;
  private readonly lastTime: Int32Array;
  /** Per counted item: the weight its mark holds. */
  private readonly weight: Float64Array;
  private now = 0;
  /** Counted items referenced at least once. */
  seen = 0;
  /** Sum of the marks (the weights of the counted items referenced at least once). */
  marked = 0;

  constructor(readonly items: number, readonly counted = items) {
    this.tree = new Float64Array(Math.max(64, 2 * items + 16) + 1);
    this.lastTime = new Int32Array(items).fill(-1);
    this.weight = new Float64Array(counted).fill(1);
  }

  /** References `item`: returns its distance (the marks of the other counted items since its last reference), or -1 the first time. */
  reference(item: number): number {
    if (this.now + 1 >= this.tree.length) this.compact();
    const previous = this.lastTime[item]!;
    const counted = item < this.counted;
    let distance = -1;
    if (previous >= 0) {
      distance = Math.max(0, this.prefix(this.now) - this.prefix(previous + 1));
      if (counted) this.add(previous + 1, -this.weight[item]!);
    } else if (counted) {
      this.seen++;
      this.marked += this.weight[item]!;
    }
    if (counted) this.add(this.now + 1, this.weight[item]!);
    this.lastTime[item] = this.now++;
    return distance;
  }

  /** Sets counted `item`'s weight, moving its mark (if it has one) to the new weight. */
  reweigh(item: number, weight: number): void {
    const old = this.weight[item]!;
    if (old === weight) return;
    this.weight[item] = weight;
    const time = this.lastTime[item]!;
    if (time >= 0) {
      this.add(time + 1, weight - old);
      this.marked += weight - old;
    }
  }

  /** Items below `limit` referenced at least once. O(limit). */
  seenBelow(limit: number): number {
    let count = 0;
    for (let item = 0; item < limit; item++) if (this.lastTime[item]! >= 0) count++;
    return count;
  }

  /** Forgets an item (its next reference is a first one), removing its mark if it has one. */
  forget(item: number): void {
    const time = this.lastTime[item]!;
    if (time >= 0 && item < this.counted) {
      this.add(time + 1, -this.weight[item]!);
      this.marked -= this.weight[item]!;
      this.seen--;
    }
    this.lastTime[item] = -1;
  }

  clear(): void {
    this.tree.fill(0);
    this.lastTime.fill(-1);
    this.now = 0;
    this.seen = 0;
    this.marked = 0;
  }

  /** Sum of the marks at positions 1..i. */
  private prefix(i: number): number {
    let sum = 0;
    const tree = this.tree;
    for (; i > 0; i -= i & -i) sum += tree[i]!;
    return sum;
  }

  private add(i: number, delta: number): void {
    const tree = this.tree;
    for (; i < tree.length; i += i & -i) tree[i]! += delta;
  }

  /** Renumbers the live times 0..k-1 in their order. */
  private compact(): void {
    const live: number[] = [];
    for (let item = 0; item < this.items; item++) if (this.lastTime[item]! >= 0) live.push(item);
    live.sort((a, b) => this.lastTime[a]! - this.lastTime[b]!);
    this.tree.fill(0);
    for (let t = 0; t < live.length; t++) {
      this.lastTime[live[t]!] = t;
      if (live[t]! < this.counted) this.add(t + 1, this.weight[live[t]!]!);
    }
    this.now = live.length;
  }
}

/** An exact miss-rate curve (exactMissRateCurve). */
export interface ExactMissRateCurve {
  /** References in the trace (its length). */
  references: number;
  /** First references to a page (cold misses). */
  cold: number;
  /** Distinct pages in the trace. */
  footprint: number;
  /** histogram[d]: references whose stack distance (distinct other pages since the previous reference) is d. */
  histogram: Float64Array;
  /** Miss ratio of an LRU memory of `pages` pages: (cold + references with distance ≥ pages) / references. */
  missRatioAt(pages: number): number;
}

/**
 * The exact LRU stack-distance miss-rate curve of a reference trace (page numbers, in order),
 * every element one reference. O(n log n).
 */
export function exactMissRateCurve(trace: ArrayLike<number>): ExactMissRateCurve {
  const ids = new Map<number, number>();
  for (let i = 0; i < trace.length; i++) if (!ids.has(trace[i]!)) ids.set(trace[i]!, ids.size);
  const stack = new StackDistances(ids.size);
  const histogram = new Float64Array(ids.size + 1);
  let cold = 0;
  for (let i = 0; i < trace.length; i++) {
    const d = stack.reference(ids.get(trace[i]!)!);
    if (d < 0) cold++;
    else histogram[d]!++;
  }
  // atLeast[k] = references with distance ≥ k.
  const atLeast = new Float64Array(histogram.length + 1);
  for (let k = histogram.length - 1; k >= 0; k--) atLeast[k] = atLeast[k + 1]! + histogram[k]!;
  const references = trace.length;
  return {
    references,
    cold,
    footprint: ids.size,
    histogram,
    missRatioAt(pages: number): number {
      if (references === 0) return 0;
      const k = Math.max(0, Math.ceil(pages));
      return (cold + (k < atLeast.length ? atLeast[k]! : 0)) / references;
    },
  };
}

/**
 * The references a full access trace makes under a quiet time, as a tracker at rate 1 that is
 * ticked after every access would see them: access i (at clock i) to page p is a reference when
 * it is p's first access or i ≥ (p's previous reference) + max(quiet, 1).
 */
export function referencesOf(trace: ArrayLike<number>, quiet: number): number[] {
  const last = new Map<number, number>();
  const step = Math.max(quiet, 1);
  const out: number[] = [];
  for (let i = 0; i < trace.length; i++) {
    const page = trace[i]!;
    const previous = last.get(page);
    if (previous !== undefined && i < previous + step) continue;
    last.set(page, i);
    out.push(page);
  }
  return out;
}

/**
 * A synthetic source of accesses for trackers (no guest): `access(gpn)` is one guest access at
 * clock = the number of accesses before it; armed watchers fire as the kernel's would, once per
 * arming. `replay(trace, tracker, tickEvery)` feeds a whole trace, ticking the tracker every
 * `tickEvery` accesses.
 */
export class TraceReplay implements AccessWatchSource {
  /** Accesses made so far (the replay's clock). */
  clock = 0;
  private readonly watchers: (((gpn: number) => void) | null)[] = [];
  private readonly bits: Uint8Array;

  constructor(readonly pageCount: number) {
    this.bits = new Uint8Array(pageCount);
  }

  /** Registers a watcher (at most 8 per replay); returns its id. */
  addAccessWatcher(watcher: (gpn: number) => void): number {
    this.watchers.push(watcher);
    return this.watchers.length - 1;
  }

  /** Arms watcher `id` on the first `count` (default: all) pages of `gpns`. */
  armAccessWatch(id: number, gpns: ArrayLike<number>, count = gpns.length): void {
    for (let i = 0; i < count; i++) this.bits[gpns[i]!]! |= 1 << id;
  }

  /** Disarms watcher `id` on the first `count` (default: all) pages of `gpns`. */
  disarmAccessWatch(id: number, gpns: ArrayLike<number>, count = gpns.length): void {
    for (let i = 0; i < count; i++) this.bits[gpns[i]!]! &= ~(1 << id);
  }

  /** Removes watcher `id`, disarming all its pages. */
  removeAccessWatcher(id: number): void {
    for (let gpn = 0; gpn < this.pageCount; gpn++) this.bits[gpn]! &= ~(1 << id);
    this.watchers[id] = null;
  }

  /** One access to page `gpn`: fires (and disarms) the watchers armed on it, then advances the clock by 1. */
  access(gpn: number): void {
    const bits = this.bits[gpn]!;
    if (bits !== 0) {
      this.bits[gpn] = 0;
      for (let id = 0; id < this.watchers.length; id++) if ((bits & (1 << id)) !== 0) this.watchers[id]?.(gpn);
    }
    this.clock++;
  }

  /** Accesses every page of `trace` in order, ticking the tracker(s) every `tickEvery` accesses and after the last. */
  replay(trace: ArrayLike<number>, trackers: MissRateCurve | MissRateCurve[], tickEvery = 1): void {
    const list = Array.isArray(trackers) ? trackers : [trackers];
    for (let i = 0; i < trace.length; i++) {
      this.access(trace[i]!);
      if ((i + 1) % tickEvery === 0 || i === trace.length - 1) for (const tracker of list) tracker.tick();
    }
  }
}

/** Adapts a VM's memory to AccessWatchSource. */
function vmSource(vm: Vm): AccessWatchSource {
  const memory = vm.memory;
  return {
    pageCount: memory.pageCount,
    get clock() {
      return vm.instructionsRetired;
    },
    addAccessWatcher: (watcher) => memory.addAccessWatcher(watcher),
    armAccessWatch: (id, gpns, count) => memory.armAccessWatch(id, gpns, count),
    disarmAccessWatch: (id, gpns, count) => memory.disarmAccessWatch(id, gpns, count),
    removeAccessWatcher: (id) => memory.removeAccessWatcher(id),
  };
}

/**
 * The online miss-rate curve of one VM (T-9). Create it, call `tick()` between runs (every
 * scheduling round), read `curve()`, `missRatioAt(pages)`, `sizeFor(target)`, `sizeWithin(ε)`;
 * `dispose()` before destroying the VM.
 *
 * Besides the hashed sample, a *hot stratum* (docs/mrc.md#hot-pages-the-census-and-the-hot-stratum): a census now and then
 * watches every page outside the sample for two consecutive quiet times; when the pages in use in
 * both are at most `hotPages`, exactly those pages are watched from then on, sampled or not, and
 * each of their references counts as one reference instead of 1 ÷ density. A handful of pages
 * used all the time (the guest kernel's code, a stack) then neither go missing from the curve nor
 * weigh a hundredfold when the sample happens to hold one.
 */
export class MissRateCurve {
  /** Fraction of guest pages sampled, in (0, 1]. */
  readonly rate: number;
  /** The page-selection hash's seed (a 32-bit integer). */
  readonly seed: number;
  /** The page-selection hash. */
  readonly hash: MrcHash;
  /** Instructions a page stays unwatched after a reference before it is armed again. */
  readonly quietInstructions: number;
  /** Instructions between aging steps (0: no aging). */
  readonly agingInstructions: number;
  /** Factor the histogram is multiplied by at each aging step, in [0, 1). */
  readonly decay: number;
  /** Guest pages of the watched memory. */
  readonly pageCount: number;
  /** The sampled guest page numbers, ascending. */
  readonly sampledGpns: Int32Array;
  /** The most pages the hot stratum holds (0: no census, no hot stratum). */
  readonly hotPagesMax: number;
  /** Instructions from one census to the next. */
  readonly censusInstructions: number;
  /** Fraction of guest pages the activity census watches (0: none). */
  readonly activityRate: number;
  /** Instructions from one activity window to the next. */
  readonly activityInstructions: number;
  private readonly source: AccessWatchSource;
  private readonly watcherId: number;
  /** Per guest page: its slot (sampled pages 0…n-1, hot pages outside the sample n…), or -1. */
  private readonly slotOf: Int32Array;
  /** Per slot: its guest page (-1 for a free hot slot). */
  private readonly gpnOfSlot: Int32Array;
  /** Per slot: 1 while the page is in the hot stratum. */
  private readonly hotSlot: Uint8Array;
  /** Per slot: 1 while the page waits out its quiet time (in the wait ring). */
  private readonly waiting: Uint8Array;
  /** Per slot: bumped when a hot slot is freed, so that its entries left in the wait ring are skipped. */
  private readonly generation: Uint32Array;
  /** Free hot slots (a stack). */
  private readonly freeHot: Int32Array;
  private freeHotCount: number;
  private readonly stack: StackDistances;
  /** Fired since the last tick, in order (filled by the watcher). */
  private readonly firedSlot: Int32Array;
  private readonly firedClock: Float64Array;
  private fired = 0;
  /** Referenced pages waiting out their quiet time: a ring, in reference order. */
  private readonly waitSlot: Int32Array;
  private readonly waitGeneration: Uint32Array;
  private readonly waitDue: Float64Array;
  private waitHead = 0;
  private waitCount = 0;
  private readonly armBuffer: Int32Array;
  /**
   * histogram[k]: weighted references whose estimated stack distance e (in guest pages) falls in
   * granule k, ⌊e ÷ (guest pages ÷ sampled pages)⌋ (the curve's resolution: one sampled page); the
   * last bucket holds e ≥ guest pages. A sampled page's reference weighs its share (1: guest pages
   * ÷ sampled pages), a hot page's density (it stands for itself).
   */
  private readonly histogram: Float64Array;
  /** distanceSum[k]: the weighted sum of those references' estimated distances (their mean is where the granule's references start to hit). */
  private readonly distanceSum: Float64Array;
  /**
   * Per slot: the sampled page's share, in units of guest pages ÷ sampled pages (1 unless the
   * activity census re-weighed it): its references' weight and its mark in the stack.
   */
  private readonly slotWeight: Float64Array;
  private cold = 0;
  private total = 0;
  private hotTotal = 0;
  private readonly keepTrace: boolean;
  /** Guest pages per sampled page (1 / the realised sampling density). */
  private readonly scale: number;
  private traceBuffer = new Int32Array(0);
  private traceLength = 0;
  private lastAging: number;
  private disposed = false;
  // The census (empty arrays when it is off).
  /** Per guest page: 1 while armed by the census (its access is a sighting, not a reference). */
  private readonly censusArmed: Uint8Array;
  /** Per guest page: 1 = used in the census's first quiet time, 2 = in both. */
  private readonly touched: Uint8Array;
  /** The pages armed for the current census window. */
  private readonly censusList: Int32Array;
  private censusListLength = 0;
  /** 0: no census running; 1, 2: its first or second window. */
  private censusPhase = 0;
  /** Whether the current census window still records sightings (it stops at `censusBudget` census-only sightings). */
  private censusOpen = false;
  private censusSightings = 0;
  /** Whether the current census saw more than CENSUS_BUDGET pages in a window (then it is abandoned). */
  private censusCut = false;
  private censusWindowEnd = 0;
  private nextCensus: number;
  // The activity census (empty arrays when it is off).
  /** The pages the activity census covers (a hashed superset of the sample), ascending. */
  private readonly activityGpns: Int32Array;
  /** Per guest page: what the activity census knows of it (the SEEN_* and COVERED bits; 0 for a page it does not cover). */
  private readonly activeSeen: Uint8Array;
  private nextActivity: number;
  /** Activity windows completed. */
  activityWindows = 0;
  /** Pages (outside the hot stratum) the last activity window estimates in use in a quiet time. */
  activePages = 0;
  /** Guest pages each sampled page in use in the last two windows stands for (after the first window; before it, guest pages ÷ sampled pages). */
  activeWeight: number;
  /** Guest pages each sampled page seen in an earlier window but not the last stands for. */
  idleWeight: number;
  private readonly classCovered = new Float64Array(ACTIVITY_CLASSES);
  private readonly classSampled = new Float64Array(ACTIVITY_CLASSES);
  private readonly classGroup = new Int32Array(ACTIVITY_CLASSES);
  private readonly classWeight = new Float64Array(ACTIVITY_CLASSES);
  /** tick() calls so far. */
  ticks = 0;
  /** Aging steps applied since the tracker was created or last reset. */
  agingSteps = 0;
  /** Watcher calls that found no room or an unwatched page (never expected; counted, not thrown). */
  dropped = 0;
  /** Censuses completed. */
  censuses = 0;
  /** Censuses not run because the sample said far more pages were in use in the last quiet time than a census window may see (the stratum was emptied instead). */
  censusesSkipped = 0;
  /** Pages in the hot stratum now. */
  hotPages = 0;
  private lastClock = 0;

  constructor(target: Vm | AccessWatchSource, options: MissRateCurveOptions = {}) {
    const rate = options.rate ?? 0.01;
    if (!(rate > 0 && rate <= 1)) throw new MrcError(`rate must be in (0, 1], not ${rate}`);
    const quiet = options.quietInstructions ?? 200_000;
    if (!(Number.isFinite(quiet) && quiet >= 0)) throw new MrcError(`quietInstructions must be ≥ 0, not ${quiet}`);
    const aging = options.agingInstructions ?? 100_000_000;
    if (!(Number.isFinite(aging) && aging >= 0)) throw new MrcError(`agingInstructions must be ≥ 0, not ${aging}`);
    const decay = options.decay ?? 0.5;
    if (!(decay >= 0 && decay < 1)) throw new MrcError(`decay must be in [0, 1), not ${decay}`);
    const hash = options.hash ?? 'golden';
    if (hash !== 'mix' && hash !== 'golden') throw new MrcError(`hash must be 'mix' or 'golden', not ${String(hash)}`);
    const seed = options.seed ?? 0;
    if (!Number.isInteger(seed)) throw new MrcError(`seed must be an integer, not ${seed}`);
    const census = options.censusInstructions ?? 50_000_000;
    if (!(Number.isFinite(census) && census > 0)) throw new MrcError(`censusInstructions must be > 0, not ${census}`);
    if (options.hotPages !== undefined && !(Number.isInteger(options.hotPages) && options.hotPages >= 0)) {
      throw new MrcError(`hotPages must be an integer ≥ 0, not ${options.hotPages}`);
    }
    // "In use" means used within a quiet time: without one (every access a reference) there is no census.
    const activityRate = options.activityRate ?? (rate >= 1 || quiet === 0 ? 0 : Math.min(1, 3 * rate));
    if (!(activityRate === 0 || (activityRate >= rate && activityRate <= 1))) {
      throw new MrcError(`activityRate must be 0 or in [rate, 1] = [${rate}, 1], not ${activityRate}`);
    }
    if (activityRate > 0 && quiet === 0) throw new MrcError('activityRate needs a quietInstructions > 0 (its windows last one quiet time)');
    const activityEvery = options.activityInstructions ?? Math.max(1, 16 * quiet);
    if (!(Number.isFinite(activityEvery) && activityEvery > 0)) throw new MrcError(`activityInstructions must be > 0, not ${activityEvery}`);
    this.rate = rate;
    this.seed = seed | 0;
    this.hash = hash;
    this.quietInstructions = quiet;
    this.agingInstructions = aging;
    this.decay = decay;
    this.censusInstructions = census;
    this.activityInstructions = activityEvery;
    this.keepTrace = options.keepTrace ?? false;
    this.source = 'memory' in target ? vmSource(target) : target;
    this.pageCount = this.source.pageCount;

    const threshold = thresholdOf(rate);
    // The activity census covers the pages hashed under its own, higher threshold: the sample and more.
    const activityThreshold = thresholdOf(activityRate);
    this.slotOf = new Int32Array(this.pageCount).fill(-1);
    const sampled: number[] = [];
    const covered: number[] = [];
    for (let gpn = 0; gpn < this.pageCount; gpn++) {
      const h = mrcPageHash(gpn, this.seed, hash);
      if (h < threshold) {
        this.slotOf[gpn] = sampled.length;
        sampled.push(gpn);
      }
      if (h < activityThreshold) covered.push(gpn);
    }
    this.sampledGpns = Int32Array.from(sampled);
    const n = sampled.length;
    this.scale = n === 0 ? 1 : this.pageCount / n;
    // Useless when it would cover no more than the sample, or everything is sampled.
    const activityOn = activityRate > 0 && n > 0 && n < this.pageCount && covered.length > n;
    this.activityRate = activityOn ? activityRate : 0;
    this.activityGpns = activityOn ? Int32Array.from(covered) : new Int32Array(0);
    this.activeSeen = new Uint8Array(activityOn ? this.pageCount : 0);
    this.activeWeight = this.scale;
    this.idleWeight = this.scale;
    // No census when nothing or everything is sampled (at rate 1 every page is watched anyway).
    const hotMax = n === 0 || n === this.pageCount ? 0 : Math.min(this.pageCount - n, options.hotPages ?? Math.min(n, Math.floor(this.scale)));
    this.hotPagesMax = hotMax;
    const slots = n + hotMax;
    this.gpnOfSlot = new Int32Array(slots).fill(-1);
    this.gpnOfSlot.set(this.sampledGpns);
    this.hotSlot = new Uint8Array(slots);
    this.waiting = new Uint8Array(slots);
    this.generation = new Uint32Array(slots);
    this.freeHot = new Int32Array(hotMax);
    for (let i = 0; i < hotMax; i++) this.freeHot[i] = slots - 1 - i;
    this.freeHotCount = hotMax;
    // With the activity census every page stands for what it is worth, hot pages for themselves:
    // their marks count (one page each). Without it, hot pages outside the sample hold none.
    this.stack = new StackDistances(slots, activityOn ? slots : n);
    this.firedSlot = new Int32Array(slots);
    this.firedClock = new Float64Array(slots);
    // Each live slot is in the ring at most once; a freed hot slot may leave one stale entry.
    const ring = n + 2 * hotMax;
    this.waitSlot = new Int32Array(ring);
    this.waitGeneration = new Uint32Array(ring);
    this.waitDue = new Float64Array(ring);
    const anyCensus = hotMax > 0 || activityOn;
    this.armBuffer = new Int32Array(Math.max(slots, anyCensus ? this.pageCount : 0));
    this.histogram = new Float64Array(n + 2);
    this.distanceSum = new Float64Array(n + 2);
    this.slotWeight = new Float64Array(slots).fill(1);
    this.censusArmed = new Uint8Array(anyCensus ? this.pageCount : 0);
    this.touched = new Uint8Array(hotMax > 0 ? this.pageCount : 0);
    this.censusList = new Int32Array(anyCensus ? this.pageCount : 0);
    this.lastClock = this.source.clock;
    this.lastAging = this.lastClock;
    this.nextCensus = this.lastClock;
    this.nextActivity = this.lastClock;
    this.watcherId = this.source.addAccessWatcher(this.onAccess);
    this.source.armAccessWatch(this.watcherId, this.sampledGpns);
    if (activityOn) {
      // The covered pages outside the sample are watched until their first use.
      let count = 0;
      for (let i = 0; i < this.activityGpns.length; i++) {
        const gpn = this.activityGpns[i]!;
        this.activeSeen[gpn] = COVERED;
        if (this.slotOf[gpn]! < 0) this.censusList[count++] = gpn;
      }
      this.source.armAccessWatch(this.watcherId, this.censusList, count);
    }
  }

  /**
   * A hot page's share in the stack (guest pages ÷ sampled pages = 1): with the activity census
   * itself alone (density), the sampled pages standing for every other page; without it, a
   * sampled hot page keeps its share (1) and the others hold no mark.
   */
  private get hotShare(): number {
    return this.activityGpns.length > 0 ? 1 / this.scale : 1;
  }

  /** Whether `gpn` is a covered page outside the sample that was never used (watched for its first use). */
  private awaitsFirstUse(gpn: number): boolean {
    return gpn < this.activeSeen.length && (this.activeSeen[gpn]! & (COVERED | SEEN_EVER)) === COVERED && this.slotOf[gpn]! < 0;
  }

  /**
   * The watcher: runs inside the interpreter's slow path; records and returns (no allocation,
   * never throws). The one exception to "records only": when a census window has seen its budget
   * of pages, the census's remaining watches are disarmed here (no shootdown is involved).
   */
  private readonly onAccess = (gpn: number): void => {
    let firstUse = false;
    if (gpn < this.activeSeen.length) {
      const bits = this.activeSeen[gpn]!;
      if ((bits & COVERED) !== 0) {
        firstUse = (bits & SEEN_EVER) === 0 && this.slotOf[gpn]! < 0;
        this.activeSeen[gpn] = bits | SEEN_EVER | (this.censusOpen && this.censusPhase === 3 ? SEEN_NOW : 0);
      }
    }
    if (this.censusOpen && gpn < this.pageCount && this.censusPhase !== 3) {
      if (this.censusPhase === 1) this.touched[gpn] = 1;
      else if (this.touched[gpn] === 1) this.touched[gpn] = 2;
    }
    if (gpn < this.censusArmed.length && this.censusArmed[gpn] === 1) {
      // A census sighting: the page was outside the sample or waiting out its quiet time.
      this.censusArmed[gpn] = 0;
      // The activity census is bounded by the pages it covers; the hot census by its budget.
      if (this.censusOpen && this.censusPhase !== 3 && ++this.censusSightings >= CENSUS_BUDGET) {
        this.censusCut = true;
        this.closeCensusWindow();
      }
      return;
    }
    const slot = gpn < this.slotOf.length ? this.slotOf[gpn]! : -1;
    if (firstUse) return; // a covered page's first use: recorded above
    if (slot < 0 || this.fired >= this.firedSlot.length) {
      this.dropped++;
      return;
    }
    this.firedSlot[this.fired] = slot;
    this.firedClock[this.fired] = this.source.clock;
    this.fired++;
  };

  /** Sampled pages. */
  get sampledPages(): number {
    return this.sampledGpns.length;
  }

  /** Pages the activity census covers (the sample included; 0 when it is off). */
  get coveredPages(): number {
    return this.activityGpns.length;
  }

  /** Covered pages outside the sample not used yet (each watched until its first use). */
  get pagesAwaitingFirstUse(): number {
    let count = 0;
    for (let i = 0; i < this.activityGpns.length; i++) if (this.awaitsFirstUse(this.activityGpns[i]!)) count++;
    return count;
  }

  /** The pages in the hot stratum now, ascending. */
  hotGpns(): number[] {
    const out: number[] = [];
    for (let slot = 0; slot < this.hotSlot.length; slot++) if (this.hotSlot[slot] === 1) out.push(this.gpnOfSlot[slot]!);
    return out.sort((a, b) => a - b);
  }

  /**
   * Between runs: counts the references seen since the last tick, moves the census on, arms again
   * the pages whose quiet time is over, and ages the histogram. Cost: O(log n) per reference, O(1)
   * per re-arm; a census step O(guest pages).
   */
  tick(): void {
    if (this.disposed) return;
    this.ticks++;
    const now = this.source.clock;
    this.lastClock = now;
    const histogram = this.histogram;
    const n = this.sampledGpns.length;
    const golden = this.hash === 'golden';
    const scale = this.scale;
    const density = 1 / scale;
    const pages = this.pageCount;
    // 1. The references, in the order the guest made them.
    const size = this.waitSlot.length;
    for (let i = 0; i < this.fired; i++) {
      const slot = this.firedSlot[i]!;
      // The shares of the other sampled pages referenced since this one's last reference.
      const distance = this.stack.reference(slot);
      // A sampled page's reference weighs its share (1: guest pages ÷ sampled pages, unless the
      // activity census re-weighed it); a hot page's stands for itself (density).
      const weight = this.hotSlot[slot] === 1 ? density : this.slotWeight[slot]!;
      if (distance < 0) this.cold += weight;
      else {
        // In guest pages; with the golden hash the page itself stands for its share of them too (docs/mrc.md).
        const estimate = !golden ? distance * scale : slot < n ? (distance + this.slotWeight[slot]!) * scale - 1 : (distance + 0.5) * scale;
        const clamped = estimate < 0 ? 0 : estimate > pages ? pages : estimate;
        const bucket = Math.floor(clamped * density);
        histogram[bucket]! += weight;
        this.distanceSum[bucket]! += weight * clamped;
      }
      this.total += weight;
      if (this.hotSlot[slot] === 1) this.hotTotal += weight;
      if (this.keepTrace && slot < n) this.appendTrace(this.gpnOfSlot[slot]!);
      const at = (this.waitHead + this.waitCount) % size;
      this.waitSlot[at] = slot;
      this.waitGeneration[at] = this.generation[slot]!;
      this.waitDue[at] = this.firedClock[i]! + this.quietInstructions;
      this.waitCount++;
      this.waiting[slot] = 1;
    }
    this.fired = 0;
    // 2. The census: end its window when the quiet time is over.
    let secondWindow = false;
    if (this.censusPhase !== 0 && now >= this.censusWindowEnd) {
      this.closeCensusWindow();
      if (this.censusPhase === 3) this.finishActivityWindow();
      else if (this.censusPhase === 1 && !this.censusCut) secondWindow = true;
      else this.finishCensus();
    }
    // 3. Arm again what has been quiet long enough (the ring is in reference order, so in due order).
    let arm = 0;
    while (this.waitCount > 0 && this.waitDue[this.waitHead]! <= now) {
      const slot = this.waitSlot[this.waitHead]!;
      if (this.waitGeneration[this.waitHead] === this.generation[slot]) {
        const gpn = this.gpnOfSlot[slot]!;
        this.waiting[slot] = 0;
        // Armed by the census while it waited: from now on its access is a reference.
        if (this.censusArmed.length > 0) this.censusArmed[gpn] = 0;
        this.armBuffer[arm++] = gpn;
      }
      this.waitHead = (this.waitHead + 1) % size;
      this.waitCount--;
    }
    if (arm > 0) this.source.armAccessWatch(this.watcherId, this.armBuffer, arm);
    // 4. Start a census window (one at a time: the two share the census's watches).
    if (secondWindow) this.openCensusWindow(2, now);
    else if (this.censusPhase === 0) {
      const activityDue = this.activityGpns.length > 0 && now >= this.nextActivity;
      if (this.hotPagesMax > 0 && now >= this.nextCensus) {
        this.nextCensus = now + this.censusInstructions;
        // The pages referenced in the last quiet time (those waiting out theirs) say how many are
        // in use. Far more than a census window may see: it would be cut (and the stratum
        // emptied) after CENSUS_BUDGET sightings, so do that without the sightings.
        if (this.pagesInUseEstimate() > 2 * CENSUS_BUDGET) this.finishCensus(true);
        else this.openCensusWindow(1, now);
      }
      if (this.censusPhase === 0 && activityDue) {
        this.nextActivity = now + this.activityInstructions;
        this.openCensusWindow(3, now);
      }
    }
    // 5. Aging.
    if (this.agingInstructions > 0 && now - this.lastAging >= this.agingInstructions) {
      const steps = Math.floor((now - this.lastAging) / this.agingInstructions);
      this.lastAging += steps * this.agingInstructions;
      const factor = this.decay ** steps;
      for (let k = 0; k < histogram.length; k++) {
        histogram[k]! *= factor;
        this.distanceSum[k]! *= factor;
      }
      this.cold *= factor;
      this.total *= factor;
      this.hotTotal *= factor;
      this.agingSteps += steps;
    }
  }

  /** Pages referenced in the last quiet time, estimated: each sampled page outside the stratum waiting out its quiet time stands for its share, each hot page for itself. O(slots). */
  private pagesInUseEstimate(): number {
    const n = this.sampledGpns.length;
    let pages = 0;
    for (let slot = 0; slot < this.waiting.length; slot++) {
      if (this.waiting[slot] !== 1) continue;
      pages += this.hotSlot[slot] === 1 ? 1 : slot < n ? this.slotWeight[slot]! * this.scale : 0;
    }
    return pages;
  }

  /**
   * Census window 1 watches every page the tracker does not (outside the sample and the hot
   * stratum, or waiting out its quiet time); window 2 only those seen in window 1. A watched
   * page's reference is its sighting.
   */
  private openCensusWindow(phase: 1 | 2 | 3, now: number): void {
    const touched = this.touched;
    if (phase === 1) touched.fill(0);
    let count = 0;
    if (phase === 3) {
      const covered = this.activityGpns;
      for (let i = 0; i < covered.length; i++) {
        const gpn = covered[i]!;
        const bits = this.activeSeen[gpn]!;
        this.activeSeen[gpn] = (bits & (SEEN_EVER | COVERED)) | ((bits & SEEN_NOW) !== 0 ? SEEN_BEFORE : 0);
        const slot = this.slotOf[gpn]!;
        if (slot >= 0 && this.waiting[slot] === 0) continue; // armed: its reference is the sighting
        if (this.awaitsFirstUse(gpn)) continue; // armed: its first use is the sighting
        this.censusArmed[gpn] = 1;
        this.censusList[count++] = gpn;
      }
    }
    for (let gpn = 0; phase !== 3 && gpn < this.pageCount; gpn++) {
      if (phase === 2 && touched[gpn] !== 1) continue;
      const slot = this.slotOf[gpn]!;
      if (slot >= 0 && this.waiting[slot] === 0) continue; // armed: its reference is the sighting
      this.censusArmed[gpn] = 1;
      this.censusList[count++] = gpn;
    }
    this.censusListLength = count;
    this.censusPhase = phase;
    this.censusOpen = true;
    this.censusSightings = 0;
    if (phase === 1) this.censusCut = false;
    this.censusWindowEnd = now + Math.max(1, this.quietInstructions);
    if (count > 0) this.source.armAccessWatch(this.watcherId, this.censusList, count);
  }

  /** Stops recording sightings and disarms the census's watches not yet used. */
  private closeCensusWindow(): void {
    this.censusOpen = false;
    let left = 0;
    for (let i = 0; i < this.censusListLength; i++) {
      const gpn = this.censusList[i]!;
      if (this.censusArmed[gpn] !== 1) continue;
      this.censusArmed[gpn] = 0;
      if (this.awaitsFirstUse(gpn)) continue; // stays watched for its first use
      this.censusList[left++] = gpn;
    }
    this.censusListLength = 0;
    if (left > 0) this.source.disarmAccessWatch(this.watcherId, this.censusList, left);
  }

  /**
   * Post-stratification by activity (docs/mrc.md#post-stratification-by-activity): the covered
   * pages seen in use in the window estimate how many guest pages (outside the hot stratum) were
   * in use; the sampled pages in use stand for that many, the others for the rest. The weights
   * hold until the next window, in the references counted and in the stack's marks.
   */
  private finishActivityWindow(): void {
    this.censusPhase = 0;
    this.activityWindows++;
    const covered = this.activityGpns;
    const seen = this.activeSeen;
    // Per class: covered pages, and sampled pages among them.
    const coveredIn = this.classCovered;
    const sampledIn = this.classSampled;
    coveredIn.fill(0);
    sampledIn.fill(0);
    let coveredCount = 0;
    for (let i = 0; i < covered.length; i++) {
      const gpn = covered[i]!;
      const slot = this.slotOf[gpn]!;
      if (slot >= 0 && this.hotSlot[slot] === 1) continue; // counted exactly
      const k = activityClass(seen[gpn]!);
      coveredIn[k]!++;
      coveredCount++;
      if (slot >= 0) sampledIn[k]!++;
    }
    // A class the sample holds few pages of cannot be weighed on its own (one or two sampled pages
    // would each stand for the whole class): consecutive classes, least active first, are grouped
    // until each group holds MIN_GROUP_SAMPLED sampled pages; a last group short of them joins the
    // one before (with fewer sampled pages than that in all, one group: every sampled page stands for an equal share).
    const group = this.classGroup;
    let groups = 0;
    let open = 0;
    for (let k = 0; k < ACTIVITY_CLASSES; k++) {
      group[k] = groups;
      open += sampledIn[k]!;
      if (open >= MIN_GROUP_SAMPLED) {
        groups++;
        open = 0;
      }
    }
    if (groups === 0) groups = 1;
    for (let k = 0; k < ACTIVITY_CLASSES; k++) if (group[k]! >= groups) group[k] = groups - 1;
    const population = this.pageCount - this.hotPages;
    const weights = this.classWeight;
    for (let k = 0; k < ACTIVITY_CLASSES; k++) {
      let coveredInGroup = 0;
      let sampledInGroup = 0;
      for (let j = 0; j < ACTIVITY_CLASSES; j++) {
        if (group[j] !== group[k]) continue;
        coveredInGroup += coveredIn[j]!;
        sampledInGroup += sampledIn[j]!;
      }
      // The group's estimated guest pages, shared by its sampled pages.
      // (In shares: 1 is guest pages ÷ sampled pages.)
      weights[k] = coveredCount === 0 || sampledInGroup === 0 ? 1 : (coveredInGroup * population) / coveredCount / sampledInGroup / this.scale;
    }
    this.activePages = coveredCount === 0 ? 0 : ((coveredIn[2]! + coveredIn[3]!) * population) / coveredCount;
    this.activeWeight = weights[3]! * this.scale;
    this.idleWeight = weights[1]! * this.scale;
    const n = this.sampledGpns.length;
    for (let slot = 0; slot < n; slot++) {
      const weight = this.hotSlot[slot] === 1 ? this.hotShare : weights[activityClass(seen[this.gpnOfSlot[slot]!]!)]!;
      this.slotWeight[slot] = weight;
      this.stack.reweigh(slot, weight);
    }
  }

  /**
   * The hot stratum becomes the pages used in both windows if they are at most hotPagesMax, else
   * nothing; nothing too when the census was cut (more than CENSUS_BUDGET pages in use in a
   * quiet time: a few hot pages are then a small share of the references).
   */
  private finishCensus(skipped = false): void {
    this.censusPhase = 0;
    if (skipped) {
      this.censusesSkipped++;
      this.censusCut = true;
    } else this.censuses++;
    const touched = this.touched;
    let persistent = 0;
    if (!this.censusCut) for (let gpn = 0; gpn < this.pageCount; gpn++) if (touched[gpn] === 2) persistent++;
    const keep = !this.censusCut && persistent <= this.hotPagesMax;
    const n = this.sampledGpns.length;
    // Leave: hot pages not in the new stratum.
    let disarm = 0;
    for (let slot = 0; slot < this.hotSlot.length; slot++) {
      if (this.hotSlot[slot] !== 1) continue;
      const gpn = this.gpnOfSlot[slot]!;
      if (keep && touched[gpn] === 2) continue;
      this.hotSlot[slot] = 0;
      this.hotPages--;
      if (slot < n) {
        // Stays in the sample, with a plain share until the next activity window weighs it.
        this.slotWeight[slot] = 1;
        this.stack.reweigh(slot, 1);
        continue;
      }
      if (this.waiting[slot] === 0) this.armBuffer[disarm++] = gpn;
      this.waiting[slot] = 0;
      this.generation[slot]!++;
      this.slotOf[gpn] = -1;
      this.gpnOfSlot[slot] = -1;
      this.stack.forget(slot);
      this.freeHot[this.freeHotCount++] = slot;
    }
    if (disarm > 0) this.source.disarmAccessWatch(this.watcherId, this.armBuffer, disarm);
    if (!keep) return;
    // Join: the others used in both windows (their last sighting is their last use: armed now).
    let arm = 0;
    for (let gpn = 0; gpn < this.pageCount; gpn++) {
      if (touched[gpn] !== 2) continue;
      let slot = this.slotOf[gpn]!;
      if (slot >= 0 && this.hotSlot[slot] === 1) continue;
      const joining = slot < 0;
      if (joining) {
        slot = this.freeHot[--this.freeHotCount]!;
        this.slotOf[gpn] = slot;
        this.gpnOfSlot[slot] = gpn;
      }
      this.slotWeight[slot] = this.hotShare;
      this.stack.reweigh(slot, this.hotShare);
      if (joining) {
        this.stack.reference(slot); // its place in the LRU order: used just now
        this.armBuffer[arm++] = gpn;
      }
      this.hotSlot[slot] = 1;
      this.hotPages++;
    }
    if (arm > 0) this.source.armAccessWatch(this.watcherId, this.armBuffer, arm);
  }

  private appendTrace(gpn: number): void {
    if (this.traceLength === this.traceBuffer.length) {
      const grown = new Int32Array(Math.max(1024, this.traceBuffer.length * 2));
      grown.set(this.traceBuffer);
      this.traceBuffer = grown;
    }
    this.traceBuffer[this.traceLength++] = gpn;
  }

  /** The sampled references in order (only with `keepTrace`; at rate 1, every reference of the run). */
  trace(): Int32Array {
    return this.traceBuffer.slice(0, this.traceLength);
  }

  /**
   * Miss ratio at `pages` pages of memory (rounded up to whole pages): (cold + references whose
   * estimated distance is ≥ pages) / references, the references of a granule (one sampled page's
   * pages of distance) taken at their mean estimated distance.
   */
  missRatioAt(pages: number): number {
    if (this.total === 0) return 0;
    let misses = this.cold;
    const histogram = this.histogram;
    const from = Math.max(0, Math.ceil(pages));
    for (let k = 0; k < histogram.length; k++) if (histogram[k]! > 0 && this.hitsFrom(k) > from) misses += histogram[k]!;
    // (Weights that are not whole numbers can leave a rounding error above 1.)
    return Math.min(1, misses / this.total);
  }

  /** The smallest memory (pages) in which granule k's references hit: ⌊their mean estimated distance⌋ + 1. */
  private hitsFrom(k: number): number {
    const mean = this.distanceSum[k]! / this.histogram[k]!;
    // (A granule whose references all have one distance must give exactly it, sums' rounding aside.)
    return Math.floor(mean + 1e-9 * Math.max(1, mean)) + 1;
  }

  /** The miss ratio with unlimited memory (cold misses only). */
  get floor(): number {
    return this.total === 0 ? 0 : this.cold / this.total;
  }

  /**
   * Breakpoints of the curve: size 0 with every reference a miss, then for each granule of
   * estimated distance that occurred, the first size (pages) at which its references hit, ⌊their
   * mean estimated distance⌋ + 1 (at most the guest's pages), with the miss ratio from there up to
   * the next point: at most sampled pages + 2 points.
   */
  private points(): { sizes: number[]; ratios: number[] } {
    const sizes: number[] = [0];
    const ratios: number[] = [];
    if (this.total === 0) return { sizes, ratios: [0] };
    // (size at which they start to hit, weight), by size.
    const hits: [number, number][] = [];
    const histogram = this.histogram;
    for (let k = 0; k < histogram.length; k++) if (histogram[k]! > 0) hits.push([Math.min(this.pageCount, this.hitsFrom(k)), histogram[k]!]);
    hits.sort((a, b) => a[0] - b[0]);
    let misses = this.cold;
    for (const [, weight] of hits) misses += weight;
    ratios.push(Math.min(1, misses / this.total));
    for (const [size, weight] of hits) {
      misses -= weight;
      if (size === sizes[sizes.length - 1]) ratios[ratios.length - 1] = Math.max(0, misses) / this.total;
      else {
        sizes.push(size);
        ratios.push(Math.max(0, misses) / this.total);
      }
    }
    return { sizes, ratios };
  }

  /**
   * The smallest memory (pages) whose estimated miss ratio is at most `target`, plus
   * `headroomPages` (default: one sampling granule, guest pages ÷ sampled pages, the curve's
   * resolution), at most the guest's pages; null when the curve never gets that low (a target
   * below the floor) or nothing was measured yet.
   */
  sizeFor(targetMissRatio: number, headroomPages = Math.ceil(this.scale)): number | null {
    if (this.total === 0) return null;
    const { sizes, ratios } = this.points();
    for (let i = 0; i < sizes.length; i++) {
      if (ratios[i]! <= targetMissRatio + 1e-12) return Math.min(this.pageCount, sizes[i]! + (sizes[i]! > 0 ? headroomPages : 0));
    }
    return null;
  }

  /** The smallest memory (pages) within `epsilon` of the curve's floor (sizeFor(floor + ε)); the guest's pages before anything was measured. */
  sizeWithin(epsilon: number, headroomPages?: number): number {
    return this.sizeFor(this.floor + epsilon, headroomPages) ?? this.pageCount;
  }

  /** The curve and its figures (snake_case, JSON-friendly). */
  curve(): MissRateCurveReport {
    const { sizes, ratios } = this.points();
    return {
      rate: this.rate,
      seed: this.seed,
      hash: this.hash,
      quiet_instructions: this.quietInstructions,
      aging_instructions: this.agingInstructions,
      decay: this.decay,
      guest_pages: this.pageCount,
      sampled_pages: this.sampledPages,
      sampled_pages_seen: this.stack.seenBelow(this.sampledGpns.length),
      references: round6(this.total / this.rate),
      sampled_references: round6(this.total),
      cold_references: round6(this.cold),
      floor: round6(this.floor),
      footprint_pages: Math.round(this.stack.marked * this.scale),
      sizes_pages: sizes,
      sizes_mib: sizes.map((pages) => round6(pages / MIB_PAGES)),
      miss_ratio: ratios.map(round6),
      ticks: this.ticks,
      instructions: this.lastClock,
      aging_steps: this.agingSteps,
      hot_pages: this.hotPages,
      hot_pages_max: this.hotPagesMax,
      censuses: this.censuses,
      censuses_skipped: this.censusesSkipped,
      hot_references: round6(this.hotTotal * this.scale),
      activity_rate: this.activityRate,
      activity_windows: this.activityWindows,
      active_pages: Math.round(this.activePages),
      active_weight: round6(this.activeWeight),
      idle_weight: round6(this.idleWeight),
    };
  }

  /**
   * Forgets the histogram and counts (a new measurement starts now). With `forgetStack`, the LRU
   * stack too: every sampled page's next reference is then a cold miss again.
   */
  reset(forgetStack = false): void {
    this.histogram.fill(0);
    this.distanceSum.fill(0);
    this.cold = 0;
    this.total = 0;
    this.hotTotal = 0;
    this.agingSteps = 0;
    this.lastAging = this.source.clock;
    this.traceLength = 0;
    if (forgetStack) this.stack.clear();
  }

  /** Stops watching (disarms every page). Idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    try {
      this.source.removeAccessWatcher(this.watcherId);
    } catch {
      // The VM's memory is already gone.
    }
  }
}

function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
