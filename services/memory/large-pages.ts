/**
 * Large-page policies, outside the kernel (the mechanisms are GuestMemory's, vm.memory:
 * regionIsLarge, promoteRegion, breakUpRegion, accessed, clearAccessed; docs/large-pages.md):
 *
 * - T-3 AccessedBitPrioritizer: every interval, count per 4 MiB guest-physical region the pages
 *   accessed since the previous scan, clearing the bits as it goes. For a first phase it only
 *   counts; afterwards each scan moves up to K regions onto a host run (vm.memory.promoteRegion),
 *   highest current count first.
 * - T-4 LowActivityReclaimer: temporarily demote run-backed regions (drop their translations so
 *   each small page's next access is seen), track the accesses per small page for a period,
 *   then break up the low-activity regions and swap out their cold pages, and leave the busy
 *   ones large.
 *
 * Where accessed bits come from (T-3):
 * - shadow mode: the hypervisor's own marks (vm.memory.accessed), set whenever a TLB entry is filled
 *   from the shadow state; vm.memory.clearAccessed drops the TLB entries so the next access is seen
 *   again.
 * - nested mode: there is no shadow state, so the scan reads the guest's own page tables: the A
 *   bits of valid leaves under the vCPUs' current roots, grouped by the guest-physical region
 *   they map. It clears those A bits in guest memory (guest-visible, like an OS's own page-aging
 *   scan would; the technique prescribes exactly this in nested mode) and shoots down the TLB
 *   entries of the pages they map, so the next access walks again and sets A again. A superpage
 *   leaf has one A bit for its whole region and counts as one.
 *
 * Both policies only look at what they own: T-3 counts (and clears) only regions that are not
 * run-backed yet, T-4 only tracks run-backed ones, so their use of the accessed marks never
 * overlaps.
 */
import { PAGE_SIZE, Ptbr } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import { PageState, REGION_PAGES, scanAccessedLeaves } from '../../kernel/index.ts';
import type { Vm } from '../../kernel/index.ts';
import { SwapError } from './swap.ts';
import type { SwapFile } from './swap.ts';

/** A bad policy option. */
export class LargePagePolicyError extends BvError {
  constructor(message: string) {
    super('BV_LARGE_PAGE_POLICY_OPTION', message);
  }
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new LargePagePolicyError(`${name} must be a positive integer, got ${value}`);
  return value;
}

function nonNegativeInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new LargePagePolicyError(`${name} must be a non-negative integer, got ${value}`);
  return value;
}

/** Regions wholly inside guest RAM (a partial last region can never be backed by one run). */
function fullRegionCount(vm: Vm): number {
  return vm.memory.regionCount;
}

// =================================================================================================
// T-3

/** Options of AccessedBitPrioritizer. */
export interface AccessedBitPrioritizerOptions {
  /** Guest instructions between scans (default 1,000,000). */
  intervalInstructions?: number;
  /** Scans of the first phase, which only count (default 4). */
  countingScans?: number;
  /** Regions promoted per scan afterwards, at most (default 1). */
  promotionsPerScan?: number;
  /** Scans kept in history() (default 64). */
  historyLength?: number;
}

/**
 * Where a scan's accessed information came from: the hypervisor's own marks (shadow mode) or the
 * A bits in the guest's page tables (nested mode).
 */
export type ScanSource = 'hypervisor-marks' | 'guest-page-tables';

/** One AccessedBitPrioritizer scan, as history() keeps it. */
export interface ScanRecord {
  /** 1-based scan number. */
  scan: number;
  /** vm.instructionsRetired when the scan ran. */
  instructions: number;
  /** 'counting' in the first phase, then 'promoting'. */
  phase: 'counting' | 'promoting';
  /** Where the counts came from. */
  source: ScanSource;
  /** Accessed pages since the previous scan, per region that was not large yet. */
  counts: ReadonlyMap<number, number>;
  /** Regions promoted by this scan, in order. */
  promoted: readonly number[];
}

/** One region the prioritizer promoted onto a host run. */
export interface Promotion {
  /** The scan that promoted it (1-based). */
  scan: number;
  /** The 4 MiB guest-physical region (gpa / 4 MiB). */
  region: number;
  /** The region's count in that scan. */
  count: number;
}

/** Counters of an AccessedBitPrioritizer (stats()). */
export interface AccessedBitPrioritizerStats {
  /** Scans so far. */
  scans: number;
  /** Scans done in the counting-only phase. */
  countingScans: number;
  /** Regions promoted. */
  promotions: number;
  /** promoteRegion calls the kernel refused (no free host run, or a page that cannot move). */
  refusals: number;
  /** Accessed pages counted by the last scan, over all regions. */
  pagesCountedLastScan: number;
  /** Guest A bits cleared (nested mode). */
  guestAccessedBitsCleared: number;
}

/** T-3: prioritises regions for large backing by their accessed-page counts. */
export class AccessedBitPrioritizer {
  /** Guest instructions between scans. */
  readonly intervalInstructions: number;
  /** Scans of the counting-only phase (it restarts when the guest resets). */
  readonly countingScans: number;
  /** Regions promoted per scan, at most, after that phase. */
  readonly promotionsPerScan: number;
  private readonly historyLength: number;
  private readonly scanHistory: ScanRecord[] = [];
  private readonly promotionList: Promotion[] = [];
  private latest: ReadonlyMap<number, number> = new Map();
  /** Scans since attach or the last VM reset (the counting phase restarts with the guest). */
  private phaseScans = 0;
  private stopped = false;
  private readonly counters: AccessedBitPrioritizerStats = {
    scans: 0, countingScans: 0, promotions: 0, refusals: 0, pagesCountedLastScan: 0, guestAccessedBitsCleared: 0,
  };

  /** Starts scanning `vm` every `intervalInstructions` (a ticker; see stop). Throws LargePagePolicyError for a bad option. */
  constructor(
    /** The VM whose regions are counted and promoted. */
    readonly vm: Vm,
    options: AccessedBitPrioritizerOptions = {},
  ) {
    this.intervalInstructions = positiveInteger('intervalInstructions', options.intervalInstructions ?? 1_000_000);
    this.countingScans = nonNegativeInteger('countingScans', options.countingScans ?? 4);
    this.promotionsPerScan = nonNegativeInteger('promotionsPerScan', options.promotionsPerScan ?? 1);
    this.historyLength = positiveInteger('historyLength', options.historyLength ?? 64);
    this.removeTicker = vm.addTicker(this.intervalInstructions, () => {
      if (!this.stopped) this.scan();
    });
    vm.onReset(() => {
      this.phaseScans = 0;
      this.latest = new Map();
    });
  }

  /** Where this VM's accessed bits come from (by MMU mode). */
  get source(): ScanSource {
    return this.vm.mmu.mode === 'nested' ? 'guest-page-tables' : 'hypervisor-marks';
  }

  /** Stops scanning: the ticker is removed. */
  stop(): void {
    this.stopped = true;
    this.removeTicker();
  }

  private readonly removeTicker: () => void;

  /** One scan now: count and clear; after the first phase, promote. Returns its record. */
  scan(): ScanRecord {
    const vm = this.vm;
    const source = this.source;
    const counts = source === 'guest-page-tables' ? this.countGuestPageTables() : this.countHypervisorMarks();
    this.counters.scans++;
    this.phaseScans++;
    const phase = this.phaseScans <= this.countingScans ? 'counting' : 'promoting';
    if (phase === 'counting') this.counters.countingScans++;
    const promoted: number[] = [];
    if (phase === 'promoting') {
      const ranked = [...counts].filter(([, count]) => count > 0).sort((a, b) => b[1] - a[1] || a[0] - b[0]);
      for (const [region, count] of ranked) {
        if (promoted.length >= this.promotionsPerScan) break;
        if (vm.memory.promoteRegion(region)) {
          promoted.push(region);
          this.promotionList.push({ scan: this.counters.scans, region, count });
          this.counters.promotions++;
        } else {
          this.counters.refusals++;
        }
      }
    }
    let total = 0;
    for (const count of counts.values()) total += count;
    this.counters.pagesCountedLastScan = total;
    this.latest = counts;
    const record: ScanRecord = { scan: this.counters.scans, instructions: vm.instructionsRetired, phase, source, counts, promoted };
    this.scanHistory.push(record);
    if (this.scanHistory.length > this.historyLength) this.scanHistory.shift();
    return record;
  }

  /** The last scan's counts: region → pages accessed in the interval before it. */
  counts(): ReadonlyMap<number, number> {
    return this.latest;
  }

  /** The last scans, oldest first. */
  history(): readonly ScanRecord[] {
    return this.scanHistory;
  }

  /** Every promotion so far, in order. */
  promotions(): readonly Promotion[] {
    return this.promotionList;
  }

  /** A copy of the counters. */
  stats(): AccessedBitPrioritizerStats {
    return { ...this.counters };
  }

  /** Regions a scan looks at: wholly in RAM and not backed by a run yet. */
  private candidates(): number[] {
    const regions: number[] = [];
    for (let region = 0; region < fullRegionCount(this.vm); region++) if (!this.vm.memory.regionIsLarge(region)) regions.push(region);
    return regions;
  }

  /** Shadow mode: the marks set when TLB entries are filled; clears only what is set. */
  private countHypervisorMarks(): Map<number, number> {
    const vm = this.vm;
    const accessed = vm.memory.accessed;
    const counts = new Map<number, number>();
    for (const region of this.candidates()) {
      const first = region * REGION_PAGES;
      let count = 0;
      let low = -1;
      let high = -1;
      for (let gpn = first; gpn < first + REGION_PAGES; gpn++) {
        if (accessed[gpn] === 0) continue;
        count++;
        if (low < 0) low = gpn;
        high = gpn;
      }
      // Only pages with a mark can have TLB entries (a fill sets the mark), so this is enough.
      if (count > 0) vm.memory.clearAccessed(low, high - low + 1);
      counts.set(region, count);
    }
    return counts;
  }

  /** Nested mode: A bits of the leaves under every vCPU's current root table. */
  private countGuestPageTables(): Map<number, number> {
    const vm = this.vm;
    const counts = new Map<number, number>();
    for (const region of this.candidates()) counts.set(region, 0);
    /** Per region, the span of guest pages whose translations must be dropped. */
    const spans = new Map<number, [number, number]>();
    const extend = (region: number, low: number, high: number): void => {
      const span = spans.get(region);
      if (!span) spans.set(region, [low, high]);
      else {
        span[0] = Math.min(span[0], low);
        span[1] = Math.max(span[1], high);
      }
    };
    const roots: number[] = [];
    for (const vcpu of vm.vcpus) if (vcpu.pagingEnabled) roots.push(vcpu.ptbr & Ptbr.PPN_MASK);
    this.counters.guestAccessedBitsCleared += scanAccessedLeaves(vm, roots, (gpn, superpage) => {
      const region = Math.floor(gpn / REGION_PAGES);
      const count = counts.get(region);
      if (count === undefined) return false;
      counts.set(region, count + 1);
      if (superpage) extend(region, region * REGION_PAGES, region * REGION_PAGES + REGION_PAGES - 1);
      else extend(region, gpn, gpn);
      return true;
    });
    // The next access to each of these pages misses in the TLB, walks, and sets A again.
    for (const [low, high] of spans.values()) vm.memory.clearAccessed(low, high - low + 1);
    return counts;
  }
}

// =================================================================================================
// T-4

/** Options of LowActivityReclaimer. */
export interface LowActivityReclaimerOptions {
  /** Where cold pages go (attached to the VM by the constructor). */
  swap: SwapFile;
  /** Guest instructions between ticks (default 500,000). */
  intervalInstructions?: number;
  /** How long a demoted region is tracked before the decision (default 2,000,000 instructions). */
  trackingInstructions?: number;
  /** A region with fewer accessed pages than this fraction is low-activity (default 0.25). */
  activeFraction?: number;
  /** Regions demoted (tracked) at the same time, at most (default 4). */
  maxTracked?: number;
  /** A busy region is not demoted again before this many instructions (default 4 × tracking). */
  revisitAfterInstructions?: number;
}

/** What the reclaimer decided for one tracked region. */
export interface ReclaimDecision {
  /** The 4 MiB guest-physical region (gpa / 4 MiB). */
  region: number;
  /** vm.instructionsRetired at the decision. */
  instructions: number;
  /** Small pages accessed during the tracking period. */
  accessedPages: number;
  /**
   * 'broken-up': low activity, split into frames and its cold pages reclaimed; 're-promoted': busy,
   * left large (and not demoted again for revisitAfterInstructions); 'abandoned': its run went
   * away during tracking.
   */
  outcome: 'broken-up' | 're-promoted' | 'abandoned';
  /** Pages swapped out or dropped as zero (broken-up only). */
  pagesReclaimed: number;
}

/** Counters of a LowActivityReclaimer (stats()). */
export interface LowActivityReclaimerStats {
  /** Regions demoted for tracking. */
  regionsDemoted: number;
  /** Tracked regions found low-activity and broken up. */
  regionsBrokenUp: number;
  /** Tracked regions found busy and left large. */
  regionsRePromoted: number;
  /** Tracked regions whose run went away during tracking (another service changed a page). */
  regionsAbandoned: number;
  /** Cold pages swapped out or dropped as zero pages. */
  pagesReclaimed: number;
  /** Cold pages the swap refused (traced page tables, shared frames) — they stay. */
  pagesKept: number;
  /** Reclaims stopped because the swap file was full. */
  swapFull: number;
  /** Host memory released by reclaiming (frames the VM no longer holds). */
  bytesReturned: number;
  /** Regions being tracked now. */
  regionsTracked: number;
}

/** T-4: finds run-backed regions with little activity, breaks them up and reclaims their cold pages. */
export class LowActivityReclaimer {
  /** Where cold pages go. */
  readonly swap: SwapFile;
  /** Guest instructions between ticks. */
  readonly intervalInstructions: number;
  /** How long a demoted region is tracked before the decision, in guest instructions. */
  readonly trackingInstructions: number;
  /** A region with fewer accessed pages than this fraction of 1024 is low-activity. */
  readonly activeFraction: number;
  /** Regions tracked at the same time, at most. */
  readonly maxTracked: number;
  /** Instructions before a busy region may be demoted again. */
  readonly revisitAfterInstructions: number;
  /** Region → instructions when its tracking started. */
  private readonly tracked = new Map<number, number>();
  /** Region → earliest instruction count at which it may be demoted again. */
  private readonly notBefore = new Map<number, number>();
  private cursor = 0;
  private stopped = false;
  private readonly decisionList: ReclaimDecision[] = [];
  private readonly counters = {
    regionsDemoted: 0, regionsBrokenUp: 0, regionsRePromoted: 0, regionsAbandoned: 0, pagesReclaimed: 0, pagesKept: 0, swapFull: 0, bytesReturned: 0,
  };

  /**
   * Attaches `options.swap` to `vm` and starts ticking every `intervalInstructions` (see stop).
   * Throws LargePagePolicyError for a bad option.
   */
  constructor(
    /** The VM whose large regions are watched. */
    readonly vm: Vm,
    options: LowActivityReclaimerOptions,
  ) {
    this.swap = options.swap;
    this.intervalInstructions = positiveInteger('intervalInstructions', options.intervalInstructions ?? 500_000);
    this.trackingInstructions = positiveInteger('trackingInstructions', options.trackingInstructions ?? 2_000_000);
    const fraction = options.activeFraction ?? 0.25;
    if (!(fraction > 0 && fraction <= 1)) throw new LargePagePolicyError(`activeFraction must be in (0, 1], got ${fraction}`);
    this.activeFraction = fraction;
    this.maxTracked = positiveInteger('maxTracked', options.maxTracked ?? 4);
    this.revisitAfterInstructions = nonNegativeInteger('revisitAfterInstructions', options.revisitAfterInstructions ?? 4 * this.trackingInstructions);
    this.swap.attach(vm);
    vm.addTicker(this.intervalInstructions, () => {
      if (!this.stopped) this.tick();
    });
    vm.onReset(() => {
      this.tracked.clear();
      this.notBefore.clear();
    });
  }

  /** Stops the policy; regions being tracked simply stay large. */
  stop(): void {
    this.stopped = true;
    this.tracked.clear();
  }

  /** One step: decide on regions whose tracking period is over, then demote new candidates. */
  tick(): void {
    const now = this.vm.instructionsRetired;
    for (const [region, startedAt] of [...this.tracked]) {
      if (now - startedAt >= this.trackingInstructions) this.decide(region, now);
    }
    this.demoteCandidates(now);
  }

  /** Regions being tracked now (demoted). */
  trackedRegions(): number[] {
    return [...this.tracked.keys()];
  }

  /** Every decision so far, in order. */
  decisions(): readonly ReclaimDecision[] {
    return this.decisionList;
  }

  /** A copy of the counters, with the number of regions tracked now. */
  stats(): LowActivityReclaimerStats {
    return { ...this.counters, regionsTracked: this.tracked.size };
  }

  private demoteCandidates(now: number): void {
    const vm = this.vm;
    const regions = fullRegionCount(vm);
    const start = this.cursor;
    for (let probe = 0; probe < regions && this.tracked.size < this.maxTracked; probe++) {
      const region = (start + probe) % regions;
      if (this.tracked.has(region) || now < (this.notBefore.get(region) ?? 0) || !vm.memory.regionIsLarge(region)) continue;
      // Demotion: drop the region's translations and marks so each small page's next access is seen.
      vm.memory.clearAccessed(region * REGION_PAGES, REGION_PAGES);
      this.tracked.set(region, now);
      this.counters.regionsDemoted++;
      this.cursor = (region + 1) % regions;
    }
  }

  private decide(region: number, now: number): void {
    const vm = this.vm;
    this.tracked.delete(region);
    const first = region * REGION_PAGES;
    let accessedPages = 0;
    const accessed = vm.memory.accessed;
    for (let gpn = first; gpn < first + REGION_PAGES; gpn++) if (accessed[gpn] !== 0) accessedPages++;
    const decision: ReclaimDecision = { region, instructions: now, accessedPages, outcome: 're-promoted', pagesReclaimed: 0 };
    if (!vm.memory.regionIsLarge(region)) {
      decision.outcome = 'abandoned';
      this.counters.regionsAbandoned++;
    } else if (accessedPages >= this.activeFraction * REGION_PAGES) {
      // Busy: the demotion ends and the run stays; look again later.
      this.counters.regionsRePromoted++;
      this.notBefore.set(region, now + this.revisitAfterInstructions);
    } else {
      decision.outcome = 'broken-up';
      vm.memory.breakUpRegion(region);
      this.counters.regionsBrokenUp++;
      decision.pagesReclaimed = this.reclaimColdPages(first);
    }
    this.decisionList.push(decision);
  }

  /** Swaps out (or drops, when zero) every page of a broken-up region not accessed while tracked. */
  private reclaimColdPages(first: number): number {
    const vm = this.vm;
    const memory = vm.memory;
    const framesBefore = memory.presentPages;
    let reclaimed = 0;
    for (let gpn = first; gpn < first + REGION_PAGES; gpn++) {
      if (memory.accessed[gpn] !== 0 || memory.stateOf(gpn) !== PageState.PRESENT) continue;
      try {
        if (this.swap.swapOut(vm, gpn)) reclaimed++;
        else this.counters.pagesKept++;
      } catch (error) {
        if (!(error instanceof SwapError) || error.code !== 'BV_SWAP_FULL') throw error;
        this.counters.swapFull++;
        break;
      }
    }
    this.counters.pagesReclaimed += reclaimed;
    this.counters.bytesReturned += Math.max(0, framesBefore - memory.presentPages) * PAGE_SIZE;
    return reclaimed;
  }
}
