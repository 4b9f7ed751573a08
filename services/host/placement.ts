/**
 * Power-aware placement of a host's worker groups (T-18, issue 16): every interval, each
 * unpinned group's demand is measured from its thread's CPU time and run-queue wait
 * (/proc/self/task/<tid>/schedstat), the host's idle residency from its cpuidle counters, and
 * the placer (services/placement) decides which CPUs each group gets; a decision that moves a
 * group is applied with sched_setaffinity in its worker. Groups the configuration pins (cpus)
 * are left where they are. docs/placement.md describes the policy, docs/workers.md the groups.
 */
import { readFileSync } from 'node:fs';
import {
  idleResidency, PowerAwarePlacer, placementToObject, SysfsPowerProvider,
  type IdleCountersSnapshot, type IdleResidency, type IdleUnavailable, type PlacementDecision, type PlacerStats, type PowerTopologyProvider, type HostTopology,
} from '../placement/index.ts';
import type { WorkerGroup } from './worker-group.ts';

/** The host's `placement` settings (docs/host.md). */
export interface PlacementSpec {
  /** `interval_ms` (default 1,000): how often demands are sampled and the placement re-evaluated. */
  intervalMs: number;
  /** `target_utilisation` (default 0.8): the most load a shared CPU may carry. */
  targetUtilisation: number;
  /** `spread_hold_ms` (default 2,000): how long overload must last before groups are spread. */
  spreadHoldMs: number;
  /** `consolidate_hold_ms` (default 10,000): how long a consolidation must stay better before groups are packed. */
  consolidateHoldMs: number;
}

/** One decision as the API shows it. */
export interface PlacementDecisionReport {
  /** Milliseconds since the host started. */
  at_ms: number;
  /** initial, place, consolidate, spread or keep. */
  action: PlacementDecision['action'];
  /** Why, in words. */
  reason: string;
  /** Groups whose CPUs changed. */
  moved: string[];
  /** The placement after the decision: group → CPUs. */
  placement: Record<string, number[]>;
  /** The demands used, CPUs, by group. */
  demands: Record<string, number>;
}

/** A group placed by the host (PlacementStatus.groups). */
export interface PlacedGroupReport {
  /** The worker group. */
  name: string;
  /** Its measured demand, CPUs (moving average of run time plus run-queue wait). */
  demand_cpus: number;
  /** The latest sample, CPUs, or null before the first. */
  last_sample_cpus: number | null;
  /** Its CPUs, as the kernel reports them. */
  cpus: number[];
}

/** GET /host/placement. */
export interface PlacementStatus {
  /** Where topology and idle counters come from (`sysfs` on a real host). */
  provider: string;
  /** Packages and their CPUs, and what the provider could not read. */
  topology: HostTopology;
  /** The settings in force. */
  interval_ms: number;
  /** Each placed group. */
  groups: PlacedGroupReport[];
  /** Groups the configuration pins: not placed. */
  pinned: string[];
  /** The placer's counters (evaluations, moves, per package whether it can stay idle). */
  stats: PlacerStats;
  /** The latest decisions, oldest first (at most 20). */
  decisions: PlacementDecisionReport[];
  /** Idle residency over the last interval per CPU and package, or why there is none (IdleUnavailable); null before the second interval. */
  residency: IdleResidency | IdleUnavailable | null;
  /** Affinity changes that failed (the group stays where it was), latest last. */
  errors: string[];
}

/** Run time plus run-queue wait of a thread, ms (schedstat's first two fields, ns); null when unreadable. */
function threadDemandMs(threadId: number): number | null {
  try {
    const [run, wait] = readFileSync(`/proc/self/task/${threadId}/schedstat`, 'latin1').trim().split(' ').map(Number);
    return run! / 1e6 + wait! / 1e6;
  } catch {
    return null;
  }
}

const KEPT_DECISIONS = 20;

/** The placement loop of a host (Host.enablePlacement). @internal The host makes it; its status is what users read. */
export class HostPlacement {
  /** The policy (services/placement). */
  readonly placer: PowerAwarePlacer;
  private readonly timer: ReturnType<typeof setInterval>;
  private readonly last = new Map<string, { demandMs: number; at: number; sample: number | null }>();
  private counters: IdleCountersSnapshot | null = null;
  private residency: IdleResidency | IdleUnavailable | null = null;
  private readonly decisions: PlacementDecisionReport[] = [];
  private readonly errors: string[] = [];
  private busy = false;

  constructor(
    private readonly groups: () => WorkerGroup[],
    /** The settings in force. */
    readonly spec: PlacementSpec,
    private readonly startedAt: number,
    private readonly log: (line: string) => void,
    /** Where topology and idle counters come from. */
    readonly provider: PowerTopologyProvider = new SysfsPowerProvider(),
  ) {
    this.placer = new PowerAwarePlacer(provider.topology(), {
      targetUtilisation: spec.targetUtilisation,
      evaluatePeriodMs: spec.intervalMs,
      spreadHoldMs: spec.spreadHoldMs,
      consolidateHoldMs: spec.consolidateHoldMs,
      minMoveIntervalMs: Math.min(2000, spec.spreadHoldMs),
    });
    this.timer = setInterval(() => void this.tick(), spec.intervalMs);
    this.timer.unref();
  }

  /** Stops the loop. */
  stop(): void {
    clearInterval(this.timer);
  }

  /** One interval: sample, evaluate, apply. Exposed for tests that drive time themselves. */
  async tick(): Promise<void> {
    if (this.busy) return; // an affinity change still in flight
    this.busy = true;
    try {
      const now = performance.now();
      this.sampleIdle();
      const live = new Set<string>();
      for (const group of this.groups()) {
        if (group.pinned) continue;
        live.add(group.name);
        if (!this.last.has(group.name)) {
          this.placer.addGroup(group.name, { maxCpus: 1 });
          this.last.set(group.name, { demandMs: threadDemandMs(group.threadId) ?? 0, at: now, sample: null });
          continue;
        }
        const previous = this.last.get(group.name)!;
        const demandMs = threadDemandMs(group.threadId);
        if (demandMs === null || now <= previous.at) continue;
        const sample = Math.min(1, Math.max(0, (demandMs - previous.demandMs) / (now - previous.at)));
        this.placer.observe(group.name, sample);
        this.last.set(group.name, { demandMs, at: now, sample });
      }
      for (const name of [...this.last.keys()]) {
        if (!live.has(name)) {
          this.placer.removeGroup(name);
          this.last.delete(name);
        }
      }
      if (live.size === 0) return;
      const decision = this.placer.maybeEvaluate(now - this.startedAt);
      if (decision === null) return;
      if (decision.action !== 'keep' || this.decisions.length === 0) this.note(decision);
      await this.apply(decision);
    } catch (error) {
      this.noteError(`placement: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.busy = false;
    }
  }

  /** GET /host/placement. */
  status(): PlacementStatus {
    const byName = new Map(this.groups().map((group) => [group.name, group]));
    return {
      provider: this.provider.kind,
      topology: this.placer.topology,
      interval_ms: this.spec.intervalMs,
      groups: [...this.last.entries()].map(([name, last]) => ({ name, demand_cpus: round3(this.placer.demandOf(name)), last_sample_cpus: last.sample === null ? null : round3(last.sample), cpus: byName.get(name)?.affinity ?? [] })),
      pinned: [...byName.values()].filter((group) => group.pinned).map((group) => group.name),
      stats: this.placer.stats(),
      decisions: [...this.decisions],
      residency: this.residency,
      errors: [...this.errors],
    };
  }

  /** Idle residency since the last interval; the package's lower bound of all-idle time goes to the placer. */
  private sampleIdle(): void {
    const counters = this.provider.idleCounters();
    if (!counters.available) {
      this.residency = { unavailable: counters.reason };
      return;
    }
    if (this.counters !== null && this.counters.available) {
      try {
        const residency = idleResidency(this.counters, counters, this.placer.topology);
        this.residency = residency;
        for (const pkg of residency.packages) this.placer.observePackageIdle(pkg.packageId, Math.min(1, Math.max(0, pkg.allIdleLowerBound)));
      } catch (error) {
        // Counters that did not move (a model host between simulations) say nothing; placement goes on without them.
        this.residency = { unavailable: error instanceof Error ? error.message : String(error) };
      }
    }
    this.counters = counters;
  }

  /** Moves each group whose CPUs differ from the decision's. */
  private async apply(decision: PlacementDecision): Promise<void> {
    for (const group of this.groups()) {
      const cpus = decision.placement.get(group.name);
      if (cpus === undefined || group.pinned) continue;
      const want = [...cpus].sort((a, b) => a - b);
      if (want.join(',') === group.affinity.join(',')) continue;
      try {
        const got = await group.setAffinity(want);
        this.log(`host: placement: worker group ${group.name} on CPUs ${got.join(',')} (${decision.action}: ${decision.reason})`);
      } catch (error) {
        this.noteError(`placement: worker group ${group.name} could not move to CPUs ${want.join(',')}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }

  private note(decision: PlacementDecision): void {
    this.decisions.push({
      at_ms: Math.round(decision.atMs),
      action: decision.action,
      reason: decision.reason,
      moved: [...decision.moved],
      placement: placementToObject(decision.placement),
      demands: Object.fromEntries(decision.loads.map((load) => [load.groupId, round3(load.demandCpus)])),
    });
    if (this.decisions.length > KEPT_DECISIONS) this.decisions.shift();
  }

  private noteError(message: string): void {
    this.log(`host: ${message}`);
    this.errors.push(message);
    if (this.errors.length > KEPT_DECISIONS) this.errors.shift();
  }
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}
