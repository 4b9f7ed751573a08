/**
 * A model host for power-aware placement (T-18): several processor packages, each with idle
 * states of its own, and a tick-based simulation that says, for per-group CPU demand over time
 * and a placement, how long each package spent in each state, how much energy the host used and
 * whether each group got the CPU time it asked for. The machines this project runs on expose one
 * package with only shallow idle states, so this model is what shows the policy's effect. The
 * model, its parameters and its assumptions are in docs/placement.md.
 */
import { PlacementError } from './errors.ts';
import type { CpuIdleReading, HostTopology, IdleCountersSnapshot, PowerTopologyProvider } from './topology.ts';

/** A group → host-CPU-set assignment (each group's CPUs ascending). */
export type Placement = ReadonlyMap<string, readonly number[]>;

/** One idle state of a model package, entered only when all the package's CPUs are idle. */
export interface ModelIdleState {
  /** The state's name, unique in the model (e.g. `PC6`). */
  readonly name: string;
  /** Power of the whole package (cores and uncore) while in this state, W. */
  readonly powerW: number;
  /** Time to wake from it, µs: spent at awake-idle power, out of the idle period. */
  readonly exitLatencyUs: number;
  /** The shortest idle period this state is entered for, µs (as cpuidle's `residency`). */
  readonly targetResidencyUs: number;
}

/** Parameters of a {@link ModelHost}. */
export interface ModelHostParams {
  /** Number of packages. */
  readonly packages: number;
  /** CPUs per package; CPU numbers are `package × cpusPerPackage + i`. */
  readonly cpusPerPackage: number;
  /**
   * The simulation step, µs. A group with demand runs once per tick (its guest's timer wakes it),
   * for demand × tick, starting at the tick: so the tick is also the wake-up period.
   */
  readonly tickUs: number;
  /** Power of one CPU while executing, W. */
  readonly cpuActiveW: number;
  /** Power of one halted CPU while its package is awake, W. */
  readonly cpuIdleW: number;
  /** Power of a package's shared parts (uncore, caches, links) while awake, W. */
  readonly packageAwakeW: number;
  /** Package idle states, shallowest first: power falls, exit latency and target residency grow. */
  readonly packageStates: readonly ModelIdleState[];
}

/**
 * The default model: 2 packages × 2 CPUs, a 4 ms tick (HZ=250, this machine's kernel), and
 * package states with the exit latency and target residency a 2-socket server's cpuidle lists
 * for C1E and C6. The watt figures are assumptions of the right order for a server socket, not
 * measurements; docs/placement.md says why.
 */
export const DEFAULT_MODEL_HOST: ModelHostParams = Object.freeze({
  packages: 2,
  cpusPerPackage: 2,
  tickUs: 4000,
  cpuActiveW: 8,
  cpuIdleW: 1,
  packageAwakeW: 18,
  packageStates: Object.freeze([
    Object.freeze({ name: 'PC1E', powerW: 10, exitLatencyUs: 10, targetResidencyUs: 20 }),
    Object.freeze({ name: 'PC6', powerW: 2.5, exitLatencyUs: 133, targetResidencyUs: 400 }),
  ]),
});

/**
 * Checks model parameters; returns them unchanged. Throws BV_PLACEMENT_BAD_MODEL naming the
 * first bad field.
 */
export function validateModelHost(params: ModelHostParams): ModelHostParams {
  const bad = (why: string): never => {
    throw new PlacementError('BV_PLACEMENT_BAD_MODEL', `bad model host: ${why}`);
  };
  if (typeof params !== 'object' || params === null) bad('parameters must be an object');
  const integer = (name: 'packages' | 'cpusPerPackage', max: number): void => {
    const value = params[name];
    if (!Number.isInteger(value) || value < 1 || value > max) bad(`${name} must be an integer in 1..${max}, not ${String(value)}`);
  };
  integer('packages', 256);
  integer('cpusPerPackage', 256);
  const finite = (name: string, value: unknown, positive: boolean): void => {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (positive && value === 0)) bad(`${name} must be a ${positive ? 'positive' : 'non-negative'} finite number, not ${String(value)}`);
  };
  finite('tickUs', params.tickUs, true);
  finite('cpuActiveW', params.cpuActiveW, false);
  finite('cpuIdleW', params.cpuIdleW, false);
  finite('packageAwakeW', params.packageAwakeW, false);
  if (params.cpuIdleW > params.cpuActiveW) bad(`cpuIdleW (${params.cpuIdleW}) is above cpuActiveW (${params.cpuActiveW})`);
  if (!Array.isArray(params.packageStates) || params.packageStates.length === 0) bad('packageStates must list at least one state');
  const awakeIdleW = params.packageAwakeW + params.cpusPerPackage * params.cpuIdleW;
  const names = new Set<string>();
  params.packageStates.forEach((state, k) => {
    const where = `packageStates[${k}]`;
    if (typeof state !== 'object' || state === null) bad(`${where} must be an object`);
    if (typeof state.name !== 'string' || state.name === '') bad(`${where}.name must be a non-empty string`);
    if (names.has(state.name)) bad(`${where}.name ${state.name} is used twice`);
    names.add(state.name);
    finite(`${where}.powerW`, state.powerW, false);
    finite(`${where}.exitLatencyUs`, state.exitLatencyUs, false);
    finite(`${where}.targetResidencyUs`, state.targetResidencyUs, false);
    // An idle state that costs more than staying awake and idle would never be worth entering.
    if (state.powerW > awakeIdleW) bad(`${where}.powerW ${state.powerW} W is above the awake-idle package power ${awakeIdleW} W`);
    if (state.exitLatencyUs > state.targetResidencyUs) bad(`${where}: exit latency ${state.exitLatencyUs} µs is longer than its target residency ${state.targetResidencyUs} µs`);
    if (k > 0) {
      const shallower = params.packageStates[k - 1]!;
      if (!(state.powerW < shallower.powerW)) bad(`${where}.powerW must be below ${shallower.name}'s (deeper states save more)`);
      if (state.exitLatencyUs < shallower.exitLatencyUs || state.targetResidencyUs < shallower.targetResidencyUs) bad(`${where} must not wake faster or pay off sooner than ${shallower.name}`);
    }
  });
  return params;
}

/** Time a package spent in one idle state. */
export interface StateFraction {
  /** The state's name. */
  readonly name: string;
  /** Fraction of the simulated time. */
  readonly fraction: number;
}

/** One package's figures over a simulation; the fractions add up to 1. */
export interface PackageSimulationFigures {
  /** The package's index. */
  readonly packageId: number;
  /** Fraction of time at least one CPU was executing. */
  readonly activeFraction: number;
  /** Fraction spent waking from an idle state (exit latency). */
  readonly wakingFraction: number;
  /** Fraction all CPUs were idle but the idle period was too short for any state. */
  readonly awakeIdleFraction: number;
  /** Fraction in each package idle state, shallowest first. */
  readonly states: readonly StateFraction[];
  /** Fraction in the deepest state: the package's independent low-power state. */
  readonly deepIdleFraction: number;
  /** Energy used by the package, J. */
  readonly energyJ: number;
  /** Wake-ups from an idle state. */
  readonly exits: number;
}

/** One group's figures over a simulation. */
export interface GroupSimulationFigures {
  /** The group's id. */
  readonly groupId: string;
  /** CPU time asked for, CPU-seconds. */
  readonly demandCpuSeconds: number;
  /** CPU time received, CPU-seconds. */
  readonly servedCpuSeconds: number;
  /** demand − served, CPU-seconds. */
  readonly missedCpuSeconds: number;
  /** Ticks in which the group got less than it asked for. */
  readonly ticksMissed: number;
  /** True when no tick missed. */
  readonly met: boolean;
}

/** What a simulation produced. */
export interface SimulationResult {
  /** Ticks simulated. */
  readonly ticks: number;
  /** Simulated time, s. */
  readonly seconds: number;
  /** Energy of all packages, J. */
  readonly energyJ: number;
  /** energyJ / seconds, W. */
  readonly averagePowerW: number;
  /** Mean over packages of their deepest-state fraction. */
  readonly deepIdleFraction: number;
  /** Per package. */
  readonly packages: readonly PackageSimulationFigures[];
  /** Per group that was placed at some tick, by id. */
  readonly groups: readonly GroupSimulationFigures[];
  /** Group moves: a group's CPU set changed from one tick to the next. */
  readonly moves: number;
  /** True when every group got all it asked for in every tick. */
  readonly demandMet: boolean;
}

/** Input of {@link ModelHost.simulate}. */
export interface SimulationInput {
  /** Ticks to simulate. */
  readonly ticks: number;
  /** CPU demand of a group in a tick (CPUs: 0.1 is a tenth of one CPU). */
  demand(groupId: string, tick: number): number;
  /** The placement in force, fixed or per tick. */
  readonly placement: Placement | ((tick: number) => Placement);
}

// A served share below demand by less than this is rounding, not a miss.
const EPSILON = 1e-9;

interface PackageAccount {
  gapUs: number;
  activeUs: number;
  wakingUs: number;
  awakeIdleUs: number;
  stateUs: number[];
  energyUj: number;
  exits: number;
}

interface GroupAccount {
  demandUs: number;
  servedUs: number;
  ticksMissed: number;
}

/**
 * A running simulation on a {@link ModelHost}: call {@link ModelSimulation.step} once per tick,
 * then {@link ModelSimulation.result}. Steps advance the host's clock and idle counters.
 */
export class ModelSimulation {
  private ticks = 0;
  private moves = 0;
  private readonly packages: PackageAccount[];
  private readonly groups = new Map<string, GroupAccount>();
  private readonly servedLast = new Map<string, number>();
  private readonly demands = new Map<string, number>();
  private readonly previousCpus = new Map<string, readonly number[]>();
  private checkedPlacement: Placement | null = null;
  // Per-CPU scratch, reused each tick: load asked of the CPU, and its busy fraction.
  private readonly load: Float64Array;
  private readonly busy: Float64Array;

  /** @internal Created by ModelHost.startSimulation. */
  constructor(private readonly host: ModelHost) {
    const { packages, cpusPerPackage, packageStates } = host.params;
    this.packages = Array.from({ length: packages }, () => ({ gapUs: 0, activeUs: 0, wakingUs: 0, awakeIdleUs: 0, stateUs: packageStates.map(() => 0), energyUj: 0, exits: 0 }));
    this.load = new Float64Array(packages * cpusPerPackage);
    this.busy = new Float64Array(packages * cpusPerPackage);
  }

  /**
   * Runs one tick: every group in `placement` asks for `demandOf(groupId)` CPUs, spread evenly
   * over its CPU set; a CPU asked for more than 1 shares itself in proportion. Throws
   * BV_PLACEMENT_BAD_PLACEMENT for a CPU outside the host or a group without CPUs, and
   * BV_PLACEMENT_BAD_LOAD for a negative or non-finite demand.
   */
  step(placement: Placement, demandOf: (groupId: string) => number): void {
    const { cpusPerPackage, tickUs, cpuActiveW, cpuIdleW, packageAwakeW } = this.host.params;
    if (placement !== this.checkedPlacement) this.checkPlacement(placement);
    this.load.fill(0);
    const demands = this.demands;
    demands.clear();
    for (const [groupId, cpus] of placement) {
      const demand = demandOf(groupId);
      if (typeof demand !== 'number' || !Number.isFinite(demand) || demand < 0) throw new PlacementError('BV_PLACEMENT_BAD_LOAD', `demand of group ${groupId} must be a non-negative finite number, not ${String(demand)}`);
      demands.set(groupId, demand);
      for (const cpu of cpus) this.load[cpu]! += demand / cpus.length;
      const before = this.previousCpus.get(groupId);
      if (before !== undefined && before !== cpus && !sameCpus(before, cpus)) this.moves++;
      this.previousCpus.set(groupId, cpus);
    }
    for (let cpu = 0; cpu < this.load.length; cpu++) this.busy[cpu] = Math.min(1, this.load[cpu]!);
    for (const [groupId, cpus] of placement) {
      const demand = demands.get(groupId)!;
      let served = 0;
      // An over-asked CPU gives each of its groups the same fraction of what they asked.
      for (const cpu of cpus) served += (demand / cpus.length) * (this.load[cpu]! > 1 ? 1 / this.load[cpu]! : 1);
      this.servedLast.set(groupId, served);
      const account = this.groups.get(groupId) ?? { demandUs: 0, servedUs: 0, ticksMissed: 0 };
      account.demandUs += demand * tickUs;
      account.servedUs += served * tickUs;
      if (served < demand - EPSILON) account.ticksMissed++;
      this.groups.set(groupId, account);
    }
    for (let p = 0; p < this.packages.length; p++) {
      const pkg = this.packages[p]!;
      let peak = 0;
      for (let i = 0; i < cpusPerPackage; i++) peak = Math.max(peak, this.busy[p * cpusPerPackage + i]!);
      if (peak === 0) {
        pkg.gapUs += tickUs;
        continue;
      }
      // Work starts together at the tick, so the package is busy for the longest CPU's share
      // and idle together for the rest: the idle period that ends here ends now.
      this.closeGap(p, true);
      const busyUs = peak * tickUs;
      pkg.activeUs += busyUs;
      let energyUj = packageAwakeW * busyUs;
      for (let i = 0; i < cpusPerPackage; i++) {
        const cpu = p * cpusPerPackage + i;
        const runUs = this.busy[cpu]! * tickUs;
        energyUj += cpuActiveW * runUs + cpuIdleW * (busyUs - runUs);
        // A CPU that stops before the package does waits in the shallowest state.
        if (busyUs - runUs > 0) this.host.countIdle(cpu, 0, busyUs - runUs);
      }
      pkg.energyUj += energyUj;
      pkg.gapUs = tickUs - busyUs;
    }
    this.ticks++;
    this.host.advance(tickUs);
  }

  /** CPUs a group received in the last step (0 for a group not in that step's placement). */
  served(groupId: string): number {
    return this.servedLast.get(groupId) ?? 0;
  }

  /** The figures so far; an idle period still open counts as spent in the state its length allows, with no wake-up. */
  result(): SimulationResult {
    const { tickUs, packageStates } = this.host.params;
    const totalUs = this.ticks * tickUs;
    const packages = this.packages.map((pkg, p): PackageSimulationFigures => {
      const open = this.gapFigures(pkg.gapUs, false);
      const stateUs = pkg.stateUs.map((us, k) => us + (open.state === k ? open.inStateUs : 0));
      const awakeIdleUs = pkg.awakeIdleUs + (open.state === -1 ? pkg.gapUs : 0);
      const fraction = (us: number): number => (totalUs === 0 ? 0 : us / totalUs);
      return {
        packageId: p,
        activeFraction: fraction(pkg.activeUs),
        wakingFraction: fraction(pkg.wakingUs),
        awakeIdleFraction: fraction(awakeIdleUs),
        states: packageStates.map((state, k) => ({ name: state.name, fraction: fraction(stateUs[k]!) })),
        deepIdleFraction: fraction(stateUs.at(-1)!),
        energyJ: (pkg.energyUj + open.energyUj) / 1e6,
        exits: pkg.exits,
      };
    });
    const groups = [...this.groups.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([groupId, g]): GroupSimulationFigures => ({
      groupId,
      demandCpuSeconds: g.demandUs / 1e6,
      servedCpuSeconds: g.servedUs / 1e6,
      missedCpuSeconds: Math.max(0, g.demandUs - g.servedUs) / 1e6,
      ticksMissed: g.ticksMissed,
      met: g.ticksMissed === 0,
    }));
    const energyJ = packages.reduce((sum, p) => sum + p.energyJ, 0);
    const seconds = totalUs / 1e6;
    return {
      ticks: this.ticks,
      seconds,
      energyJ,
      averagePowerW: seconds === 0 ? 0 : energyJ / seconds,
      deepIdleFraction: packages.reduce((sum, p) => sum + p.deepIdleFraction, 0) / packages.length,
      packages,
      groups,
      moves: this.moves,
      demandMet: groups.every((g) => g.met),
    };
  }

  /** Where an idle period of `gapUs` goes: the deepest state it pays off for, and the energy. */
  private gapFigures(gapUs: number, wakes: boolean): { state: number; inStateUs: number; wakingUs: number; energyUj: number } {
    const { packageStates, packageAwakeW, cpusPerPackage, cpuIdleW } = this.host.params;
    const awakeIdleW = packageAwakeW + cpusPerPackage * cpuIdleW;
    let state = -1;
    // The governor is taken to know the period's length (a timer ends it), so it picks the
    // deepest enabled state whose target residency the period reaches.
    // (A nanosecond of slack: 0.9 × 4000 µs must leave exactly 400 µs whatever the rounding.)
    for (let k = 0; k < packageStates.length; k++) if (packageStates[k]!.targetResidencyUs <= gapUs + 1e-3) state = k;
    if (gapUs <= 0) return { state: -1, inStateUs: 0, wakingUs: 0, energyUj: 0 };
    if (state === -1) return { state, inStateUs: 0, wakingUs: 0, energyUj: awakeIdleW * gapUs };
    const wakingUs = wakes ? Math.min(gapUs, packageStates[state]!.exitLatencyUs) : 0;
    const inStateUs = gapUs - wakingUs;
    return { state, inStateUs, wakingUs, energyUj: awakeIdleW * wakingUs + packageStates[state]!.powerW * inStateUs };
  }

  private closeGap(p: number, wakes: boolean): void {
    const pkg = this.packages[p]!;
    if (pkg.gapUs <= 0) return;
    const gap = this.gapFigures(pkg.gapUs, wakes);
    if (gap.state === -1) pkg.awakeIdleUs += pkg.gapUs;
    else {
      pkg.stateUs[gap.state]! += gap.inStateUs;
      pkg.wakingUs += gap.wakingUs;
      pkg.exits++;
    }
    pkg.energyUj += gap.energyUj;
    // Every CPU of the package idled through the whole period, in the package's state.
    const { cpusPerPackage } = this.host.params;
    for (let i = 0; i < cpusPerPackage; i++) this.host.countIdle(p * cpusPerPackage + i, Math.max(0, gap.state), pkg.gapUs);
    pkg.gapUs = 0;
  }

  private checkPlacement(placement: Placement): void {
    const cpuCount = this.load.length;
    if (!(placement instanceof Map)) throw new PlacementError('BV_PLACEMENT_BAD_PLACEMENT', 'a placement must be a Map of group id to CPU list');
    for (const [groupId, cpus] of placement) {
      if (!Array.isArray(cpus) || cpus.length === 0) throw new PlacementError('BV_PLACEMENT_BAD_PLACEMENT', `group ${groupId} has no CPU`);
      for (const cpu of cpus) {
        if (!Number.isInteger(cpu) || cpu < 0 || cpu >= cpuCount) throw new PlacementError('BV_PLACEMENT_BAD_PLACEMENT', `group ${groupId}: CPU ${String(cpu)} is not on this host (0..${cpuCount - 1})`);
      }
      if (new Set(cpus).size !== cpus.length) throw new PlacementError('BV_PLACEMENT_BAD_PLACEMENT', `group ${groupId} lists a CPU twice`);
    }
    this.checkedPlacement = placement;
  }
}

function sameCpus(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((cpu, i) => cpu === b[i]);
}

/**
 * A model host (see the module comment and docs/placement.md). It is also a
 * {@link PowerTopologyProvider}: its topology is the model's, and its idle counters grow as
 * simulations on it run (an idle period is counted when it ends, as cpuidle counts it on wake-up).
 */
export class ModelHost implements PowerTopologyProvider {
  readonly kind = 'model';
  /** The validated parameters. */
  readonly params: ModelHostParams;
  private clockUs = 0;
  // Cumulative per-CPU, per-state idle time (µs) and entries, like cpuidle's `time` and `usage`.
  private readonly stateTimeUs: Float64Array[];
  private readonly stateUsage: Float64Array[];

  /** Throws BV_PLACEMENT_BAD_MODEL for bad parameters. */
  constructor(params: ModelHostParams = DEFAULT_MODEL_HOST) {
    this.params = validateModelHost(params);
    const cpus = params.packages * params.cpusPerPackage;
    this.stateTimeUs = Array.from({ length: cpus }, () => new Float64Array(params.packageStates.length));
    this.stateUsage = Array.from({ length: cpus }, () => new Float64Array(params.packageStates.length));
  }

  /** Packages 0..n−1, CPUs numbered package × cpusPerPackage + i. */
  topology(): HostTopology {
    const { packages, cpusPerPackage } = this.params;
    return {
      packages: Array.from({ length: packages }, (_, packageId) => ({ packageId, cpus: Array.from({ length: cpusPerPackage }, (_, i) => packageId * cpusPerPackage + i) })),
      notes: [],
    };
  }

  /** Cumulative idle counters from the simulations run so far, stamped with simulated time. */
  idleCounters(): IdleCountersSnapshot {
    const cpus: CpuIdleReading[] = this.stateTimeUs.map((times, cpu) => ({
      cpu,
      states: this.params.packageStates.map((state, index) => ({
        index,
        name: state.name,
        desc: `model package state (${state.powerW} W)`,
        exitLatencyUs: state.exitLatencyUs,
        targetResidencyUs: state.targetResidencyUs,
        timeUs: Math.round(times[index]!),
        usage: this.stateUsage[cpu]![index]!,
        disabled: false,
      })),
    }));
    return { available: true, takenAtUs: this.clockUs, driver: 'model', governor: 'model', cpus };
  }

  /** A new simulation on this host. */
  startSimulation(): ModelSimulation {
    return new ModelSimulation(this);
  }

  /** Runs `input.ticks` ticks and returns the figures. */
  simulate(input: SimulationInput): SimulationResult {
    if (!Number.isInteger(input.ticks) || input.ticks < 0) throw new PlacementError('BV_PLACEMENT_BAD_MODEL', `ticks must be a non-negative integer, not ${String(input.ticks)}`);
    const simulation = this.startSimulation();
    const placementAt = typeof input.placement === 'function' ? input.placement : (): Placement => input.placement as Placement;
    for (let tick = 0; tick < input.ticks; tick++) simulation.step(placementAt(tick), (groupId) => input.demand(groupId, tick));
    return simulation.result();
  }

  /** @internal Adds idle time of one CPU in one state (a ModelSimulation calls it). */
  countIdle(cpu: number, state: number, us: number): void {
    this.stateTimeUs[cpu]![state]! += us;
    this.stateUsage[cpu]![state]! += 1;
  }

  /** @internal Advances the simulated clock. */
  advance(us: number): void {
    this.clockUs += us;
  }
}
