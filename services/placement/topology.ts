/**
 * What the placement service knows about a host: which CPUs share a processor package, and how
 * long each CPU has spent in each idle state. Two providers fill this in: SysfsPowerProvider
 * (the real counters, services/placement/sysfs.ts) and ModelHost (a documented model,
 * services/placement/model.ts). See docs/placement.md.
 */
import { PlacementError } from './errors.ts';

/** One processor package (socket) and its online CPUs, ascending. */
export interface PackageTopology {
  /** The package id (sysfs `physical_package_id`, or the model's package index). */
  readonly packageId: number;
  /** Host CPU numbers in this package, ascending. */
  readonly cpus: readonly number[];
}

/** The host's packages, ascending by package id. */
export interface HostTopology {
  /** The packages, ascending by id. */
  readonly packages: readonly PackageTopology[];
  /** Things the provider could not read and assumed instead (empty when everything was read). */
  readonly notes: readonly string[];
}

/** One idle state of one CPU, as cpuidle reports it (cumulative counters). */
export interface IdleStateReading {
  /** The state's index (`stateK`), shallowest first. */
  readonly index: number;
  /** The state's name (cpuidle `name`, e.g. `C6`). */
  readonly name: string;
  /** Its description (cpuidle `desc`). */
  readonly desc: string;
  /** Exit latency in µs (cpuidle `latency`). */
  readonly exitLatencyUs: number;
  /** Target residency in µs (cpuidle `residency`): the shortest idle period worth entering it for. */
  readonly targetResidencyUs: number;
  /** Total time in the state since boot, µs (cpuidle `time`: the kernel's measure, not hardware residency). */
  readonly timeUs: number;
  /** Number of entries (cpuidle `usage`). */
  readonly usage: number;
  /** The state is disabled for this CPU (cpuidle `disable`). */
  readonly disabled: boolean;
}

/** The idle states of one CPU. */
export interface CpuIdleReading {
  /** Host CPU number. */
  readonly cpu: number;
  /** Its idle states, shallowest first. */
  readonly states: readonly IdleStateReading[];
}

/** Cumulative idle-state counters of every online CPU at one moment, or why there are none. */
export type IdleCountersSnapshot =
  | {
      /** There are counters. */
      readonly available: true;
      /** When the counters were read, µs on the provider's clock. */
      readonly takenAtUs: number;
      /** The cpuidle driver (`cpuidle/current_driver`), when known. */
      readonly driver: string | null;
      /** The cpuidle governor (`cpuidle/current_governor`), when known. */
      readonly governor: string | null;
      /** Every online CPU's states. */
      readonly cpus: readonly CpuIdleReading[];
    }
  | {
      /** There are no counters. */
      readonly available: false;
      /** Why there are no idle-state counters (no cpuidle driver, /sys hidden in a container, …). */
      readonly reason: string;
    };

/**
 * A source of topology and idle-state counters: the real host (SysfsPowerProvider) or a model
 * (ModelHost). The placer needs only the topology; the counters give the residency figures.
 */
export interface PowerTopologyProvider {
  /** `sysfs` for a real host, `model` for a ModelHost. */
  readonly kind: 'sysfs' | 'model';
  /** The packages and their CPUs. */
  topology(): HostTopology;
  /** The idle-state counters now (cumulative), or why there are none. */
  idleCounters(): IdleCountersSnapshot;
}

/** Fraction of a window one CPU spent in one idle state. */
export interface StateResidency {
  /** The state's name. */
  readonly name: string;
  /** Δtime / window, 0..1 (can exceed 1 by rounding of the kernel's counters). */
  readonly fraction: number;
  /** Entries into the state during the window. */
  readonly entries: number;
}

/** One CPU's idle residency over a window. */
export interface CpuResidency {
  /** Host CPU number. */
  readonly cpu: number;
  /** Per state, shallowest first. */
  readonly states: readonly StateResidency[];
  /** Sum of the states' fractions: the CPU's idle fraction. */
  readonly idleFraction: number;
}

/**
 * One package's idle figures over a window. Per-CPU counters do not say when the CPUs were idle
 * *together* (which is what lets a package enter its own low-power state), so only bounds can be
 * given: at most the least idle CPU's fraction, at least what the idle fractions force to overlap.
 */
export interface PackageResidency {
  /** The package id. */
  readonly packageId: number;
  /** Upper bound on the fraction of the window all the package's CPUs were idle together. */
  readonly allIdleUpperBound: number;
  /** Lower bound on it: max(0, Σ idle − (n − 1)). */
  readonly allIdleLowerBound: number;
  /** Upper bound on the fraction all its CPUs were in their deepest state together. */
  readonly deepestUpperBound: number;
}

/** Idle residency between two snapshots. */
export interface IdleResidency {
  /** Length of the window, µs. */
  readonly windowUs: number;
  /** Per online CPU. */
  readonly cpus: readonly CpuResidency[];
  /** Per package, in topology order. */
  readonly packages: readonly PackageResidency[];
}

/**
 * Checks a topology: at least one package, every package non-empty, no CPU or package id twice,
 * CPU numbers non-negative integers. Returns it unchanged; throws BV_PLACEMENT_BAD_TOPOLOGY.
 */
export function validateTopology(topology: HostTopology): HostTopology {
  const bad = (why: string): never => {
    throw new PlacementError('BV_PLACEMENT_BAD_TOPOLOGY', `bad topology: ${why}`);
  };
  if (typeof topology !== 'object' || topology === null || !Array.isArray(topology.packages)) bad('packages must be an array');
  if (topology.packages.length === 0) bad('no package');
  const seenCpus = new Set<number>();
  const seenPackages = new Set<number>();
  for (const pkg of topology.packages) {
    if (!Number.isInteger(pkg.packageId)) bad(`package id ${String(pkg.packageId)} is not an integer`);
    if (seenPackages.has(pkg.packageId)) bad(`package ${pkg.packageId} listed twice`);
    seenPackages.add(pkg.packageId);
    if (!Array.isArray(pkg.cpus) || pkg.cpus.length === 0) bad(`package ${pkg.packageId} has no CPU`);
    for (const cpu of pkg.cpus) {
      if (!Number.isInteger(cpu) || cpu < 0) bad(`CPU ${String(cpu)} is not a non-negative integer`);
      if (seenCpus.has(cpu)) bad(`CPU ${cpu} listed twice`);
      seenCpus.add(cpu);
    }
  }
  return topology;
}

/** All CPUs of a topology, in package order. */
export function topologyCpus(topology: HostTopology): number[] {
  return topology.packages.flatMap((pkg) => pkg.cpus);
}

/**
 * Residency per CPU, state and package between two snapshots of the same provider (earlier
 * first). Throws BV_PLACEMENT_BAD_SNAPSHOT when either has no counters, when they list different
 * CPUs or states, or when no time passed between them.
 */
export function idleResidency(before: IdleCountersSnapshot, after: IdleCountersSnapshot, topology: HostTopology): IdleResidency {
  const bad = (why: string): never => {
    throw new PlacementError('BV_PLACEMENT_BAD_SNAPSHOT', `cannot compare idle counters: ${why}`);
  };
  if (!before.available || !after.available) return bad(before.available ? (after as { reason: string }).reason : before.reason);
  const windowUs = after.takenAtUs - before.takenAtUs;
  if (!(windowUs > 0)) bad(`no time between the snapshots (${windowUs} µs)`);
  if (before.cpus.length !== after.cpus.length) bad('different CPUs');
  const cpus: CpuResidency[] = after.cpus.map((cpuAfter, i) => {
    const cpuBefore = before.cpus[i]!;
    if (cpuBefore.cpu !== cpuAfter.cpu || cpuBefore.states.length !== cpuAfter.states.length) bad(`CPU ${cpuAfter.cpu} differs between the snapshots`);
    const states = cpuAfter.states.map((state, k) => {
      const old = cpuBefore.states[k]!;
      if (old.name !== state.name) bad(`CPU ${cpuAfter.cpu} state ${k} is ${old.name} then ${state.name}`);
      // Counters only grow; a smaller value means a wrap or a reset, which is reported as nothing.
      return { name: state.name, fraction: Math.max(0, state.timeUs - old.timeUs) / windowUs, entries: Math.max(0, state.usage - old.usage) };
    });
    return { cpu: cpuAfter.cpu, states, idleFraction: states.reduce((sum, s) => sum + s.fraction, 0) };
  });
  const byCpu = new Map(cpus.map((c) => [c.cpu, c]));
  const packages: PackageResidency[] = topology.packages.map((pkg) => {
    const members = pkg.cpus.map((cpu) => byCpu.get(cpu)).filter((c): c is CpuResidency => c !== undefined);
    if (members.length === 0) return { packageId: pkg.packageId, allIdleUpperBound: 0, allIdleLowerBound: 0, deepestUpperBound: 0 };
    const idle = members.map((c) => Math.min(1, c.idleFraction));
    const deepest = members.map((c) => Math.min(1, c.states.at(-1)?.fraction ?? 0));
    return {
      packageId: pkg.packageId,
      allIdleUpperBound: Math.min(...idle),
      allIdleLowerBound: Math.max(0, idle.reduce((a, b) => a + b, 0) - (idle.length - 1)),
      deepestUpperBound: Math.min(...deepest),
    };
  });
  return { windowUs, cpus, packages };
}

/** Why no residency could be measured. */
export interface IdleUnavailable {
  /** The provider's reason (no cpuidle driver, /sys hidden, …). */
  readonly unavailable: string;
}

/**
 * Reads the provider's counters, waits `windowMs`, reads them again and returns the residency
 * in between, or the reason there are no counters.
 */
export async function measureIdleResidency(provider: PowerTopologyProvider, windowMs: number): Promise<IdleResidency | IdleUnavailable> {
  const before = provider.idleCounters();
  if (!before.available) return { unavailable: before.reason };
  await new Promise((resolve) => setTimeout(resolve, windowMs));
  return idleResidency(before, provider.idleCounters(), provider.topology());
}
