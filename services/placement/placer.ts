/**
 * Power-aware placement of vCPU groups on host CPUs (T-18). Light groups are packed onto as few
 * processor packages as fit, so that the other packages can stay in their own low-power state;
 * heavy groups get CPUs of their own, so that no shared CPU runs above the target utilisation and
 * no group misses its demand. A better placement is applied only when its gain passes a threshold,
 * has lasted a hold time, and the last move is old enough (hysteresis). Pure and deterministic:
 * time is passed in, nothing is read from the host. Two baselines for comparison:
 * {@link spreadPlacement} and {@link packPlacement}. See docs/placement.md.
 */
import { ewma } from '../memory/active.ts';
import { PlacementError } from './errors.ts';
import type { Placement } from './model.ts';
import { topologyCpus, validateTopology, type HostTopology } from './topology.ts';

/** Options of {@link PowerAwarePlacer}; every field has a default. */
export interface PlacerOptions {
  /**
   * Highest load of a CPU shared by several groups, in (0, 1]; default 0.8 (the point above which
   * Linux's energy-aware scheduling stops packing). A group whose own share is above it gets
   * CPUs to itself.
   */
  targetUtilisation?: number;
  /** Weight of a new sample in each group's moving average, in (0, 1]; default 0.25. */
  ewmaWeight?: number;
  /** Demand assumed for a group before its first sample, CPUs; default 1 (heavy until measured). */
  initialDemandCpus?: number;
  /** Period of {@link PowerAwarePlacer.maybeEvaluate}, ms; default 1000. */
  evaluatePeriodMs?: number;
  /** How long a placement that relieves overload must keep being better before it is applied, ms; default 2000. */
  spreadHoldMs?: number;
  /** How long a placement that frees packages must keep being better before it is applied, ms; default 10000. */
  consolidateHoldMs?: number;
  /** Shortest time between two moves, ms; default 2000. */
  minMoveIntervalMs?: number;
  /** Smallest drop of overload (CPUs of load above the allowed level) worth a move; default 0.05. */
  minOverloadGainCpus?: number;
  /** Fewest packages a consolidation must free; default 1. */
  minPackagesFreed?: number;
  /** Decisions kept in {@link PowerAwarePlacer.history}; default 100. */
  historyLimit?: number;
}

/** Options of one group. */
export interface GroupOptions {
  /** The most CPUs the group can use at once (a worker thread runs one at a time); default 1. */
  maxCpus?: number;
  /** Demand assumed before the first sample, CPUs; default the placer's initialDemandCpus. */
  initialDemandCpus?: number;
}

/** What the placer did at an evaluation. */
export type PlacementAction =
  /** The first placement of all groups. */
  | 'initial'
  /** New groups were placed without moving the others. */
  | 'place'
  /** Groups were moved so that fewer packages are in use. */
  | 'consolidate'
  /** Groups were moved apart to relieve overloaded CPUs. */
  | 'spread'
  /** Nothing moved (the reason says why: already best, gain below threshold, hold time or last move too recent). */
  | 'keep';

/** One CPU's load under a placement. */
export interface CpuLoad {
  /** Host CPU number. */
  readonly cpu: number;
  /** Demand placed on it, CPUs (each group's demand divided over its CPUs). */
  readonly load: number;
  /** Groups using it. */
  readonly groups: number;
}

/** A group's demand estimate. */
export interface GroupLoad {
  /** The group's id. */
  readonly groupId: string;
  /** Its moving-average demand, CPUs. */
  readonly demandCpus: number;
}

/** How good a placement is for given demands. */
export interface PlacementScore {
  /** Packages with at least one group. */
  readonly awakePackages: number;
  /** Packages with no group: these can sit in their deep idle state. */
  readonly idlePackages: readonly number[];
  /**
   * Load above the allowed level, summed over CPUs, CPUs: a shared CPU may carry the target
   * utilisation, a CPU with one group may carry 1.
   */
  readonly overloadCpus: number;
  /** The highest CPU load (above 1 means some group misses demand). */
  readonly maxCpuLoad: number;
  /** Load of each CPU, in topology order. */
  readonly cpuLoads: readonly CpuLoad[];
}

/** A record of one evaluation. */
export interface PlacementDecision {
  /** Time of the evaluation, ms (the caller's clock). */
  readonly atMs: number;
  /** What was done. */
  readonly action: PlacementAction;
  /** Why, in words. */
  readonly reason: string;
  /** Groups whose CPU set changed, ascending. */
  readonly moved: readonly string[];
  /** The placement in force after the evaluation. */
  readonly placement: Placement;
  /** Score of the placement in force before. */
  readonly current: PlacementScore;
  /** Score of the best placement found (the one applied when something moved). */
  readonly candidate: PlacementScore;
  /** The demands used (moving averages), CPUs, by group id. */
  readonly loads: readonly GroupLoad[];
}

/** Counters of a placer. */
export interface PlacerStats {
  /** Evaluations so far. */
  readonly evaluations: number;
  /** Group moves (one group's CPU set changing once), not counting first placements. */
  readonly moves: number;
  /** Evaluations by action. */
  readonly actions: Readonly<Record<PlacementAction, number>>;
  /** Per group, by id. */
  readonly groups: readonly GroupStats[];
  /** Per package, in topology order. */
  readonly packages: readonly PackageStats[];
}

/** A group in {@link PlacerStats}. */
export interface GroupStats {
  /** The group's id. */
  readonly groupId: string;
  /** Its moving-average demand, CPUs. */
  readonly demandCpus: number;
  /** Samples observed. */
  readonly samples: number;
  /** Its CPUs, or null before its first placement. */
  readonly cpus: readonly number[] | null;
}

/** A package in {@link PlacerStats}. */
export interface PackageStats {
  /** The package id. */
  readonly packageId: number;
  /** Groups with a CPU in it, by id. */
  readonly groups: readonly string[];
  /** No group uses it: it can stay in its deep idle state. */
  readonly idleEligible: boolean;
  /** The last deep-idle fraction given to observePackageIdle, or null. */
  readonly observedDeepIdle: number | null;
}

/** One group as {@link powerAwarePlacement} sees it. */
export interface GroupDemand {
  /** The group's id. */
  readonly groupId: string;
  /** Demand, CPUs. */
  readonly demandCpus: number;
  /** The most CPUs it can use at once; default 1. */
  readonly maxCpus?: number;
  /** Its CPUs now, which are kept when they still fit. */
  readonly currentCpus?: readonly number[];
}

const DEFAULTS: Required<PlacerOptions> = {
  targetUtilisation: 0.8,
  ewmaWeight: 0.25,
  initialDemandCpus: 1,
  evaluatePeriodMs: 1000,
  spreadHoldMs: 2000,
  consolidateHoldMs: 10000,
  minMoveIntervalMs: 2000,
  minOverloadGainCpus: 0.05,
  minPackagesFreed: 1,
  historyLimit: 100,
};

// Loads within this of a limit count as at the limit (sums of tenths are not exact in binary).
const SLACK = 1e-9;

const byId = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Checks placer options and fills in the defaults. Throws BV_PLACEMENT_BAD_OPTIONS. */
export function resolvePlacerOptions(options: PlacerOptions = {}): Required<PlacerOptions> {
  const bad = (why: string): never => {
    throw new PlacementError('BV_PLACEMENT_BAD_OPTIONS', `bad placer option: ${why}`);
  };
  if (typeof options !== 'object' || options === null) bad('options must be an object');
  for (const key of Object.keys(options)) if (!(key in DEFAULTS)) bad(`unknown option ${key}`);
  const resolved = { ...DEFAULTS, ...options } as Required<PlacerOptions>;
  const check = (name: keyof PlacerOptions, ok: (v: number) => boolean, range: string): void => {
    const value = resolved[name];
    if (typeof value !== 'number' || !Number.isFinite(value) || !ok(value)) bad(`${name} must be ${range}, not ${String(value)}`);
  };
  check('targetUtilisation', (v) => v > 0 && v <= 1, 'in (0, 1]');
  check('ewmaWeight', (v) => v > 0 && v <= 1, 'in (0, 1]');
  check('initialDemandCpus', (v) => v >= 0, 'a non-negative number');
  check('evaluatePeriodMs', (v) => v > 0, 'a positive number of ms');
  check('spreadHoldMs', (v) => v >= 0, 'a non-negative number of ms');
  check('consolidateHoldMs', (v) => v >= 0, 'a non-negative number of ms');
  check('minMoveIntervalMs', (v) => v >= 0, 'a non-negative number of ms');
  check('minOverloadGainCpus', (v) => v > 0, 'a positive number of CPUs');
  check('minPackagesFreed', (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  check('historyLimit', (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  return resolved;
}

/**
 * Scores a placement for given demands (a group's demand is spread evenly over its CPUs). Groups
 * without a demand count as 0. Placements naming CPUs outside the topology are refused
 * (BV_PLACEMENT_BAD_PLACEMENT).
 */
export function scorePlacement(topology: HostTopology, placement: Placement, demands: ReadonlyMap<string, number>, targetUtilisation: number): PlacementScore {
  const load = new Map<number, number>();
  const count = new Map<number, number>();
  for (const cpu of topologyCpus(topology)) {
    load.set(cpu, 0);
    count.set(cpu, 0);
  }
  for (const [groupId, cpus] of placement) {
    const demand = demands.get(groupId) ?? 0;
    for (const cpu of cpus) {
      if (!load.has(cpu)) throw new PlacementError('BV_PLACEMENT_BAD_PLACEMENT', `group ${groupId}: CPU ${cpu} is not in the topology`);
      load.set(cpu, load.get(cpu)! + demand / cpus.length);
      count.set(cpu, count.get(cpu)! + 1);
    }
  }
  let overloadCpus = 0;
  let maxCpuLoad = 0;
  const cpuLoads = topologyCpus(topology).map((cpu) => {
    const cpuLoad = load.get(cpu)!;
    const groups = count.get(cpu)!;
    overloadCpus += Math.max(0, cpuLoad - (groups >= 2 ? targetUtilisation : 1) - SLACK);
    maxCpuLoad = Math.max(maxCpuLoad, cpuLoad);
    return { cpu, load: cpuLoad, groups };
  });
  const idlePackages = topology.packages.filter((pkg) => pkg.cpus.every((cpu) => count.get(cpu) === 0)).map((pkg) => pkg.packageId);
  return { awakePackages: topology.packages.length - idlePackages.length, idlePackages, overloadCpus, maxCpuLoad, cpuLoads };
}

/**
 * The power-aware placement of groups with known demands, from scratch but keeping each group's
 * current CPUs where they still fit. Groups go heaviest first (ties by id). A group asking for
 * more than the target utilisation of one CPU gets enough CPUs, up to its maxCpus, to bring its
 * share per CPU under the target; a share still above the target takes CPUs no other group uses.
 * Lighter shares go to the fullest CPU that stays within the target (best fit), in the first
 * package, in this order, where they fit: packages already hosting the most demand, then the one
 * least observed in its deep idle state (`packageIdle`, a fraction per package id), then by id. A
 * group that fits nowhere goes where the load it adds is least; a group needing more CPUs than a
 * package has spans packages.
 */
export function powerAwarePlacement(topology: HostTopology, groups: readonly GroupDemand[], targetUtilisation: number, packageIdle: ReadonlyMap<number, number> = new Map()): Map<string, number[]> {
  validateTopology(topology);
  const load = new Map<number, number>(topologyCpus(topology).map((cpu) => [cpu, 0]));
  return packInto(topology, groups, targetUtilisation, packageIdle, load, new Set());
}

/**
 * The packing of {@link powerAwarePlacement} onto CPUs that may already carry load (`load`, per
 * CPU) and CPUs already taken whole (`exclusive`); both are updated.
 */
function packInto(topology: HostTopology, groups: readonly GroupDemand[], targetUtilisation: number, packageIdle: ReadonlyMap<number, number>, load: Map<number, number>, exclusive: Set<number>): Map<string, number[]> {
  const packageOf = new Map<number, number>();
  for (const pkg of topology.packages) for (const cpu of pkg.cpus) packageOf.set(cpu, pkg.packageId);
  // Demand a package hosts now: what is already loaded plus the groups' current CPUs.
  const hosted = new Map<number, number>(topology.packages.map((pkg) => [pkg.packageId, pkg.cpus.reduce((sum, cpu) => sum + load.get(cpu)!, 0)]));
  for (const group of groups) {
    for (const cpu of group.currentCpus ?? []) {
      const packageId = packageOf.get(cpu);
      if (packageId !== undefined) hosted.set(packageId, hosted.get(packageId)! + group.demandCpus / group.currentCpus!.length);
    }
  }
  const packages = [...topology.packages].sort((a, b) =>
    hosted.get(b.packageId)! - hosted.get(a.packageId)!
    || (packageIdle.get(a.packageId) ?? 0) - (packageIdle.get(b.packageId) ?? 0)
    || a.packageId - b.packageId);
  const placement = new Map<string, number[]>();
  const ordered = [...groups].sort((a, b) => b.demandCpus - a.demandCpus || byId(a.groupId, b.groupId));
  for (const group of ordered) {
    const maxCpus = group.maxCpus ?? 1;
    const wanted = Math.min(maxCpus, Math.max(1, Math.ceil(group.demandCpus / targetUtilisation - SLACK)));
    const share = group.demandCpus / wanted;
    const alone = share > targetUtilisation + SLACK;
    const current = new Set(group.currentCpus ?? []);
    let chosen: number[] | null = null;
    for (const pkg of packages) {
      const fits = pkg.cpus.filter((cpu) => !exclusive.has(cpu) && (alone ? load.get(cpu)! === 0 : load.get(cpu)! + share <= targetUtilisation + SLACK));
      if (fits.length < wanted) continue;
      // Own CPUs first (fewer moves), then the fullest (consolidation), then the lowest number.
      fits.sort((a, b) => Number(current.has(b)) - Number(current.has(a)) || load.get(b)! - load.get(a)! || a - b);
      chosen = fits.slice(0, wanted);
      break;
    }
    if (chosen === null) chosen = leastLoaded(packages.map((pkg) => pkg.cpus), load, wanted);
    chosen.sort((a, b) => a - b);
    for (const cpu of chosen) {
      load.set(cpu, load.get(cpu)! + share);
      if (alone) exclusive.add(cpu);
    }
    placement.set(group.groupId, chosen);
  }
  return placement;
}

/** The `count` CPUs that add least to the most loaded one: within one package when one is big enough. */
function leastLoaded(packages: readonly (readonly number[])[], load: ReadonlyMap<number, number>, count: number): number[] {
  const byLoad = (cpus: readonly number[]): number[] => [...cpus].sort((a, b) => load.get(a)! - load.get(b)! || a - b);
  let best: number[] | null = null;
  let bestWorst = Infinity;
  for (const cpus of packages) {
    if (cpus.length < count) continue;
    const picked = byLoad(cpus).slice(0, count);
    const worst = load.get(picked.at(-1)!)!;
    if (worst < bestWorst) {
      best = picked;
      bestWorst = worst;
    }
  }
  return best ?? byLoad(packages.flat()).slice(0, count);
}

/**
 * Baseline: round-robin over packages, then over each package's CPUs, in the given group order:
 * group i goes to package i mod P. Ignores demand; uses every package as soon as there are as
 * many groups as packages.
 */
export function spreadPlacement(topology: HostTopology, groupIds: readonly string[]): Map<string, number[]> {
  validateTopology(topology);
  const { packages } = topology;
  return new Map(groupIds.map((groupId, i) => {
    const pkg = packages[i % packages.length]!;
    return [groupId, [pkg.cpus[Math.floor(i / packages.length) % pkg.cpus.length]!]];
  }));
}

/**
 * Baseline: fill the first CPU with `groupsPerCpu` groups (default: all of them), then the next
 * CPU in topology order, regardless of demand.
 */
export function packPlacement(topology: HostTopology, groupIds: readonly string[], groupsPerCpu = Infinity): Map<string, number[]> {
  validateTopology(topology);
  if (!(groupsPerCpu >= 1)) throw new PlacementError('BV_PLACEMENT_BAD_OPTIONS', `groupsPerCpu must be at least 1, not ${String(groupsPerCpu)}`);
  const cpus = topologyCpus(topology);
  return new Map(groupIds.map((groupId, i) => [groupId, [cpus[Math.min(cpus.length - 1, Math.floor(i / groupsPerCpu))]!]]));
}

/** A placement as a plain object (group id → CPUs), for JSON. */
export function placementToObject(placement: Placement): Record<string, number[]> {
  return Object.fromEntries([...placement].map(([groupId, cpus]) => [groupId, [...cpus]]));
}

interface GroupState {
  readonly maxCpus: number;
  demandCpus: number;
  samples: number;
}

/**
 * The power-aware placement policy with hysteresis. The host registers groups
 * ({@link addGroup}), reports each group's measured CPU demand ({@link observe}: CPU time used
 * plus time spent waiting to run, over a sampling window, in CPUs), and calls
 * {@link maybeEvaluate} (or {@link evaluate}) with its clock; the placement in force is
 * {@link placement}, and each evaluation returns a {@link PlacementDecision}.
 */
export class PowerAwarePlacer {
  /** The validated options with defaults filled in. */
  readonly options: Required<PlacerOptions>;
  /** The topology placed on. */
  readonly topology: HostTopology;
  private readonly groups = new Map<string, GroupState>();
  private current: Placement = new Map();
  private readonly packageIdle = new Map<number, number>();
  private readonly decisions: PlacementDecision[] = [];
  private pending: { kind: 'spread' | 'consolidate'; sinceMs: number } | null = null;
  private lastMoveMs = -Infinity;
  private lastEvaluationMs = -Infinity;
  private evaluations = 0;
  private moves = 0;
  private readonly actions: Record<PlacementAction, number> = { initial: 0, place: 0, consolidate: 0, spread: 0, keep: 0 };
  private readonly cpuSet: Set<number>;
  private readonly packageIds: Set<number>;

  /** Throws BV_PLACEMENT_BAD_TOPOLOGY or BV_PLACEMENT_BAD_OPTIONS. */
  constructor(topology: HostTopology, options: PlacerOptions = {}) {
    this.topology = validateTopology(topology);
    this.options = resolvePlacerOptions(options);
    this.cpuSet = new Set(topologyCpus(topology));
    this.packageIds = new Set(topology.packages.map((pkg) => pkg.packageId));
  }

  /** Registers a group; it is placed at the next evaluation. Throws BV_PLACEMENT_BAD_LOAD for an empty or taken id or bad options. */
  addGroup(groupId: string, options: GroupOptions = {}): void {
    if (typeof groupId !== 'string' || groupId === '') throw new PlacementError('BV_PLACEMENT_BAD_LOAD', 'a group id must be a non-empty string');
    if (this.groups.has(groupId)) throw new PlacementError('BV_PLACEMENT_BAD_LOAD', `group ${groupId} is already registered`);
    const maxCpus = options.maxCpus ?? 1;
    if (!Number.isInteger(maxCpus) || maxCpus < 1 || maxCpus > this.cpuSet.size) throw new PlacementError('BV_PLACEMENT_BAD_LOAD', `group ${groupId}: maxCpus must be an integer in 1..${this.cpuSet.size}, not ${String(maxCpus)}`);
    const initial = options.initialDemandCpus ?? this.options.initialDemandCpus;
    checkDemand(groupId, initial);
    this.groups.set(groupId, { maxCpus, demandCpus: initial, samples: 0 });
  }

  /** Forgets a group and its CPUs (at once: a group that is gone needs no hysteresis). */
  removeGroup(groupId: string): void {
    this.group(groupId);
    this.groups.delete(groupId);
    if (this.current.has(groupId)) {
      const next = new Map(this.current);
      next.delete(groupId);
      this.current = next;
    }
  }

  /**
   * One demand sample of a group, CPUs (0.15 = 15 % of one CPU; include the time it waited to
   * run, so that an overloaded CPU shows). Folded into the group's moving average. Throws
   * BV_PLACEMENT_UNKNOWN_GROUP or BV_PLACEMENT_BAD_LOAD.
   */
  observe(groupId: string, demandCpus: number): void {
    const group = this.group(groupId);
    checkDemand(groupId, demandCpus);
    group.demandCpus = group.samples === 0 ? demandCpus : ewma(group.demandCpus, demandCpus, this.options.ewmaWeight);
    group.samples++;
  }

  /**
   * The fraction of recent time a package spent in its deepest idle state (from a provider's
   * residency figures); used to prefer loading packages that are awake anyway. Throws
   * BV_PLACEMENT_BAD_LOAD for an unknown package or a fraction outside [0, 1].
   */
  observePackageIdle(packageId: number, deepIdleFraction: number): void {
    if (!this.packageIds.has(packageId)) throw new PlacementError('BV_PLACEMENT_BAD_LOAD', `package ${packageId} is not in the topology`);
    if (!(deepIdleFraction >= 0 && deepIdleFraction <= 1)) throw new PlacementError('BV_PLACEMENT_BAD_LOAD', `deep idle fraction must be in [0, 1], not ${String(deepIdleFraction)}`);
    this.packageIdle.set(packageId, deepIdleFraction);
  }

  /** The placement in force (a new object whenever it changes). */
  get placement(): Placement {
    return this.current;
  }

  /** The group's current demand estimate, CPUs. */
  demandOf(groupId: string): number {
    return this.group(groupId).demandCpus;
  }

  /** The last decisions, oldest first (at most historyLimit). */
  get history(): readonly PlacementDecision[] {
    return this.decisions;
  }

  /** Evaluates when evaluatePeriodMs has passed since the last evaluation (or never ran); otherwise null. */
  maybeEvaluate(nowMs: number): PlacementDecision | null {
    this.checkTime(nowMs);
    if (nowMs - this.lastEvaluationMs < this.options.evaluatePeriodMs) return null;
    return this.evaluate(nowMs);
  }

  /**
   * Evaluates now: places new groups, or else finds the best placement and applies it if the
   * hysteresis rules allow. Throws BV_PLACEMENT_BAD_TIME when time went backwards.
   */
  evaluate(nowMs: number): PlacementDecision {
    this.checkTime(nowMs);
    this.lastEvaluationMs = nowMs;
    this.evaluations++;
    const demands = new Map([...this.groups].map(([id, g]) => [id, g.demandCpus]));
    const target = this.options.targetUtilisation;
    const currentScore = scorePlacement(this.topology, this.current, demands, target);
    const unplaced = [...this.groups.keys()].filter((id) => !this.current.has(id));
    if (unplaced.length > 0) {
      const first = this.current.size === 0;
      const next = first ? this.bestPlacement(demands) : this.placeNew(unplaced, demands);
      const moved = this.apply(next, false);
      return this.record(nowMs, first ? 'initial' : 'place', `${first ? 'first placement' : 'placed new'} group${unplaced.length === 1 ? '' : 's'} ${unplaced.sort(byId).join(', ')}`, moved, currentScore, scorePlacement(this.topology, next, demands, target), demands);
    }
    const candidate = this.bestPlacement(demands);
    const candidateScore = scorePlacement(this.topology, candidate, demands, target);
    const keep = (reason: string): PlacementDecision => this.record(nowMs, 'keep', reason, [], currentScore, candidateScore, demands);
    if (samePlacement(candidate, this.current)) {
      this.pending = null;
      return keep('the current placement is the one the policy would choose');
    }
    const overloadGain = currentScore.overloadCpus - candidateScore.overloadCpus;
    const packagesFreed = currentScore.awakePackages - candidateScore.awakePackages;
    let kind: 'spread' | 'consolidate' | null = null;
    if (overloadGain >= this.options.minOverloadGainCpus - SLACK) kind = 'spread';
    else if (candidateScore.overloadCpus <= currentScore.overloadCpus + SLACK && packagesFreed >= this.options.minPackagesFreed) kind = 'consolidate';
    if (kind === null) {
      this.pending = null;
      return keep(`hysteresis: gain below threshold (overload ${fmt(currentScore.overloadCpus)} -> ${fmt(candidateScore.overloadCpus)} CPUs, packages in use ${currentScore.awakePackages} -> ${candidateScore.awakePackages})`);
    }
    if (this.pending?.kind !== kind) this.pending = { kind, sinceMs: nowMs };
    const hold = kind === 'spread' ? this.options.spreadHoldMs : this.options.consolidateHoldMs;
    const held = nowMs - this.pending.sinceMs;
    const what = kind === 'spread' ? `spreading would cut overload ${fmt(currentScore.overloadCpus)} -> ${fmt(candidateScore.overloadCpus)} CPUs` : `consolidating would free ${packagesFreed} package${packagesFreed === 1 ? '' : 's'}`;
    if (held < hold) return keep(`hysteresis: ${what}, wanted for ${held} of ${hold} ms`);
    if (nowMs - this.lastMoveMs < this.options.minMoveIntervalMs) return keep(`hysteresis: ${what}, but the last move was ${nowMs - this.lastMoveMs} ms ago (minimum ${this.options.minMoveIntervalMs} ms)`);
    const moved = this.apply(candidate, true);
    this.pending = null;
    this.lastMoveMs = nowMs;
    return this.record(nowMs, kind, `${what}; wanted for ${held} ms`, moved, currentScore, candidateScore, demands);
  }

  /** Counters and the state of each group and package. */
  stats(): PlacerStats {
    const groupsOn = new Map<number, string[]>();
    const packageOf = new Map<number, number>();
    for (const pkg of this.topology.packages) {
      groupsOn.set(pkg.packageId, []);
      for (const cpu of pkg.cpus) packageOf.set(cpu, pkg.packageId);
    }
    for (const [groupId, cpus] of this.current) {
      for (const packageId of new Set(cpus.map((cpu) => packageOf.get(cpu)!))) groupsOn.get(packageId)!.push(groupId);
    }
    return {
      evaluations: this.evaluations,
      moves: this.moves,
      actions: { ...this.actions },
      groups: [...this.groups].sort((a, b) => byId(a[0], b[0])).map(([groupId, g]) => ({ groupId, demandCpus: g.demandCpus, samples: g.samples, cpus: this.current.get(groupId) ?? null })),
      packages: this.topology.packages.map((pkg) => {
        const groups = groupsOn.get(pkg.packageId)!.sort(byId);
        return { packageId: pkg.packageId, groups, idleEligible: groups.length === 0, observedDeepIdle: this.packageIdle.get(pkg.packageId) ?? null };
      }),
    };
  }

  private bestPlacement(demands: ReadonlyMap<string, number>): Map<string, number[]> {
    const groups: GroupDemand[] = [...this.groups].map(([groupId, g]) => {
      const currentCpus = this.current.get(groupId);
      return { groupId, demandCpus: demands.get(groupId)!, maxCpus: g.maxCpus, ...(currentCpus ? { currentCpus } : {}) };
    });
    return powerAwarePlacement(this.topology, groups, this.options.targetUtilisation, this.packageIdle);
  }

  /** New groups placed around the others, which stay where they are. */
  private placeNew(unplaced: readonly string[], demands: ReadonlyMap<string, number>): Map<string, number[]> {
    const target = this.options.targetUtilisation;
    const load = new Map<number, number>();
    const exclusive = new Set<number>();
    for (const c of scorePlacement(this.topology, this.current, demands, target).cpuLoads) {
      load.set(c.cpu, c.load);
      // A CPU whose one group is above the target stays that group's own.
      if (c.groups === 1 && c.load > target + SLACK) exclusive.add(c.cpu);
    }
    const groups = unplaced.map((groupId) => ({ groupId, demandCpus: demands.get(groupId)!, maxCpus: this.groups.get(groupId)!.maxCpus }));
    const next = new Map<string, number[]>([...this.current].map(([id, cpus]) => [id, [...cpus]]));
    for (const [id, cpus] of packInto(this.topology, groups, target, this.packageIdle, load, exclusive)) next.set(id, cpus);
    return next;
  }

  private apply(next: Map<string, number[]>, counts: boolean): string[] {
    const moved = [...next.keys()].filter((id) => {
      const before = this.current.get(id);
      return before !== undefined && !sameCpus(before, next.get(id)!);
    }).sort(byId);
    if (counts) this.moves += moved.length;
    this.current = next;
    return moved;
  }

  private record(atMs: number, action: PlacementAction, reason: string, moved: string[], current: PlacementScore, candidate: PlacementScore, demands: ReadonlyMap<string, number>): PlacementDecision {
    const decision: PlacementDecision = {
      atMs, action, reason, moved, placement: this.current, current, candidate,
      loads: [...demands].sort((a, b) => byId(a[0], b[0])).map(([groupId, demandCpus]) => ({ groupId, demandCpus })),
    };
    this.actions[action]++;
    this.decisions.push(decision);
    if (this.decisions.length > this.options.historyLimit) this.decisions.shift();
    return decision;
  }

  private group(groupId: string): GroupState {
    const group = this.groups.get(groupId);
    if (!group) throw new PlacementError('BV_PLACEMENT_UNKNOWN_GROUP', `unknown group ${String(groupId)}`);
    return group;
  }

  private checkTime(nowMs: number): void {
    if (typeof nowMs !== 'number' || !Number.isFinite(nowMs)) throw new PlacementError('BV_PLACEMENT_BAD_TIME', `time must be a finite number of ms, not ${String(nowMs)}`);
    if (nowMs < this.lastEvaluationMs) throw new PlacementError('BV_PLACEMENT_BAD_TIME', `time went backwards: ${nowMs} ms after ${this.lastEvaluationMs} ms`);
  }
}

function checkDemand(groupId: string, demandCpus: number): void {
  if (typeof demandCpus !== 'number' || !Number.isFinite(demandCpus) || demandCpus < 0) throw new PlacementError('BV_PLACEMENT_BAD_LOAD', `demand of group ${groupId} must be a non-negative finite number of CPUs, not ${String(demandCpus)}`);
}

function sameCpus(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((cpu, i) => cpu === b[i]);
}

function samePlacement(a: Placement, b: Placement): boolean {
  if (a.size !== b.size) return false;
  for (const [id, cpus] of a) {
    const other = b.get(id);
    if (other === undefined || !sameCpus(cpus, other)) return false;
  }
  return true;
}

const fmt = (value: number): string => value.toFixed(2);
