/**
 * Power-aware placement (T-18, issue 16; part of `npm run bench -- --only parallel`): on the
 * model host (services/placement/model.ts, DEFAULT_MODEL_HOST: 2 packages × 2 CPUs), the energy,
 * package deep-idle residency, demand misses and moves of the power-aware placer against the two
 * baselines (round-robin spread, pack onto CPU 0), on the same demand patterns; then this
 * machine's own cpuidle residency over a 1 s window, when it exposes one. The model figures are
 * modelled joules, not measurements of this machine; docs/placement.md explains the model.
 *
 *   npx tsx bench/placement.ts
 */
import {
  DEFAULT_MODEL_HOST,
  measureIdleResidency,
  runPlacementScenario,
  SysfsPowerProvider,
  type ModelHostParams,
  type PackageResidency,
  type PlacementPolicyName,
  type PlacementScenario,
  type ScenarioRun,
} from '../services/placement/index.ts';
import { cpuSince, loadNow, type Check } from './harness.ts';

export interface PlacementBenchOptions {
  /** Length of the real host's idle-residency window, ms; default 1000. */
  realWindowMs?: number;
  onStep?: (label: string) => void;
}

/** One policy on one scenario. */
export interface PolicyFigures {
  policy: PlacementPolicyName;
  /** Modelled energy of all packages, J. */
  energyJ: number;
  averagePowerW: number;
  /** Mean over packages of the fraction in the deepest package state. */
  deepIdleFraction: number;
  /** Per package, the fraction in the deepest package state. */
  packageDeepIdle: number[];
  /** CPU time asked for and not received, all groups, CPU-seconds. */
  missedCpuSeconds: number;
  /** Groups that missed demand in at least one tick. */
  groupsMissing: string[];
  /** Ticks in which some group missed demand (the most of any group). */
  worstTicksMissed: number;
  /** Group moves. */
  moves: number;
  /** The placer's decisions that changed something: time (s), action, groups moved. */
  changes: { atS: number; action: string; moved: string[] }[];
}

export interface PlacementScenarioFigures {
  name: string;
  description: string;
  seconds: number;
  policies: PolicyFigures[];
  /** 1 − power-aware energy / spread energy. */
  energySavingVsSpread: number;
}

/** This machine's idle-state residency over a window, or why there is none. */
export type RealHostIdleFigures =
  | {
      available: true;
      driver: string | null;
      governor: string | null;
      packages: { packageId: number; cpus: number[] }[];
      notes: string[];
      windowMs: number;
      cpus: { cpu: number; idleFraction: number; states: { name: string; exitLatencyUs: number; targetResidencyUs: number; fraction: number; entries: number }[] }[];
      packageBounds: PackageResidency[];
    }
  | { available: false; reason: string };

export interface PlacementBenchFigures {
  model: ModelHostParams;
  scenarios: PlacementScenarioFigures[];
  real: RealHostIdleFigures;
  /** Wall and process CPU time of the model runs, ms. */
  wallMs: number;
  cpuMs: number;
  load: number;
}

const POLICIES: readonly PlacementPolicyName[] = ['power-aware', 'spread', 'pack'];
const GROUPS = ['heavy', 'light-1', 'light-2', 'light-3'];

/** The demand patterns, with the model's tick turned into seconds. */
function scenarios(params: ModelHostParams): { scenario: PlacementScenario; description: string; warmStart: boolean }[] {
  const ticksPerSecond = 1e6 / params.tickUs;
  const at = (seconds: number): number => Math.round(seconds * ticksPerSecond);
  const steady = (groupId: string): number => (groupId === 'heavy' ? 0.9 : 0.1);
  return [
    {
      scenario: { name: 'steady mix', groups: GROUPS, ticks: at(60), demand: steady },
      description: 'one group at 0.9 CPU, three at 0.1, 60 s; placer starts knowing the demands',
      warmStart: true,
    },
    {
      scenario: { name: 'steady mix, cold start', groups: GROUPS, ticks: at(60), demand: steady },
      description: 'the same, but the placer starts with every group at 1 CPU (heavy until measured)',
      warmStart: false,
    },
    {
      scenario: {
        name: 'changing load',
        groups: GROUPS,
        ticks: at(90),
        demand: (groupId, tick) => {
          if (groupId === 'light-1' && tick >= at(20) && tick < at(40)) return 0.9;
          if (groupId === 'light-2' && tick >= at(75) && tick < at(76)) return 0.9;
          return steady(groupId);
        },
      },
      description: 'steady mix; light-1 at 0.9 from 20 s to 40 s; light-2 spikes to 0.9 for 1 s at 75 s; 90 s',
      warmStart: true,
    },
  ];
}

function policyFigures(run: ScenarioRun): PolicyFigures {
  const { result } = run;
  return {
    policy: run.policy,
    energyJ: result.energyJ,
    averagePowerW: result.averagePowerW,
    deepIdleFraction: result.deepIdleFraction,
    packageDeepIdle: result.packages.map((p) => p.deepIdleFraction),
    missedCpuSeconds: result.groups.reduce((sum, g) => sum + g.missedCpuSeconds, 0),
    groupsMissing: result.groups.filter((g) => !g.met).map((g) => g.groupId),
    worstTicksMissed: Math.max(0, ...result.groups.map((g) => g.ticksMissed)),
    moves: result.moves,
    changes: run.changes.map((d) => ({ atS: d.atMs / 1000, action: d.action, moved: [...d.moved] })),
  };
}

async function realHostIdle(windowMs: number): Promise<RealHostIdleFigures> {
  const provider = new SysfsPowerProvider();
  let topology;
  try {
    topology = provider.topology();
  } catch (error) {
    return { available: false, reason: (error as Error).message };
  }
  const first = provider.idleCounters();
  if (!first.available) return { available: false, reason: first.reason };
  const residency = await measureIdleResidency(provider, windowMs);
  if ('unavailable' in residency) return { available: false, reason: residency.unavailable };
  return {
    available: true,
    driver: first.driver,
    governor: first.governor,
    packages: topology.packages.map((p) => ({ packageId: p.packageId, cpus: [...p.cpus] })),
    notes: [...topology.notes],
    windowMs: residency.windowUs / 1000,
    cpus: residency.cpus.map((cpu) => {
      const reading = first.cpus.find((c) => c.cpu === cpu.cpu)!;
      return {
        cpu: cpu.cpu,
        idleFraction: cpu.idleFraction,
        states: cpu.states.map((s, k) => ({ name: s.name, exitLatencyUs: reading.states[k]!.exitLatencyUs, targetResidencyUs: reading.states[k]!.targetResidencyUs, fraction: s.fraction, entries: s.entries })),
      };
    }),
    packageBounds: [...residency.packages],
  };
}

/** Runs the model scenarios for the three policies, then reads this machine's idle residency. */
export async function runPlacementBench(options: PlacementBenchOptions = {}): Promise<PlacementBenchFigures> {
  const params = DEFAULT_MODEL_HOST;
  const startWall = performance.now();
  const startCpu = process.cpuUsage();
  const figures: PlacementScenarioFigures[] = [];
  for (const { scenario, description, warmStart } of scenarios(params)) {
    options.onStep?.(`placement: ${scenario.name}`);
    const policies = POLICIES.map((policy) => policyFigures(runPlacementScenario(params, scenario, policy, { warmStart })));
    const aware = policies.find((p) => p.policy === 'power-aware')!;
    const spread = policies.find((p) => p.policy === 'spread')!;
    figures.push({ name: scenario.name, description, seconds: (scenario.ticks * params.tickUs) / 1e6, policies, energySavingVsSpread: 1 - aware.energyJ / spread.energyJ });
  }
  const wallMs = performance.now() - startWall;
  const cpuMs = cpuSince(startCpu);
  const load = loadNow();
  options.onStep?.('placement: this machine\'s idle residency');
  const real = await realHostIdle(options.realWindowMs ?? 1000);
  return { model: params, scenarios: figures, real, wallMs, cpuMs, load };
}

/** Steps reported through onStep. */
export function placementStepCount(): number {
  return scenarios(DEFAULT_MODEL_HOST).length + 1;
}

/**
 * What the model must show: in the steady mix, power-aware placement uses less energy than
 * spreading with no group missing demand, and packing misses demand.
 */
export function placementChecks(figures: PlacementBenchFigures): Check[] {
  const steady = figures.scenarios.find((s) => s.name === 'steady mix');
  if (!steady) return [];
  const aware = steady.policies.find((p) => p.policy === 'power-aware')!;
  const pack = steady.policies.find((p) => p.policy === 'pack')!;
  return [
    {
      name: 'placement (model host): steady mix, power-aware energy saving over spread, no demand missed',
      target: '> 0 and no miss',
      value: steady.energySavingVsSpread,
      pass: steady.energySavingVsSpread > 0 && aware.groupsMissing.length === 0,
      load: figures.load,
    },
    {
      name: 'placement (model host): steady mix, pack misses demand (CPU-seconds)',
      target: '> 0',
      value: pack.missedCpuSeconds,
      pass: pack.missedCpuSeconds > 0,
      load: figures.load,
    },
  ];
}

const pct = (fraction: number): string => `${(fraction * 100).toFixed(1)} %`;

/** The report, one line per entry. */
export function formatPlacementBench(figures: PlacementBenchFigures): string[] {
  const m = figures.model;
  const states = m.packageStates.map((s) => `${s.name} ${s.powerW} W (exit ${s.exitLatencyUs} µs, residency ${s.targetResidencyUs} µs)`).join(', ');
  const out = [
    `Power-aware placement (T-18) on the model host: ${m.packages} packages x ${m.cpusPerPackage} CPUs, tick ${m.tickUs / 1000} ms, CPU ${m.cpuActiveW} W busy / ${m.cpuIdleW} W halted, package awake ${m.packageAwakeW} W, states ${states}`,
    `  modelled energy (not measured on this machine); model runs took ${figures.wallMs.toFixed(0)} ms wall, ${figures.cpuMs.toFixed(0)} ms CPU, load ${figures.load}`,
  ];
  for (const scenario of figures.scenarios) {
    out.push(`  ${scenario.name} (${scenario.seconds} s): ${scenario.description}`);
    for (const p of scenario.policies) {
      const misses = p.groupsMissing.length === 0 ? 'no demand missed' : `missed ${p.missedCpuSeconds.toFixed(2)} CPU-s (${p.groupsMissing.join(', ')}; worst ${p.worstTicksMissed} ticks)`;
      out.push(`    ${p.policy.padEnd(11)} ${p.energyJ.toFixed(1).padStart(7)} J (${p.averagePowerW.toFixed(2)} W), deep idle ${p.packageDeepIdle.map(pct).join(' / ')} (mean ${pct(p.deepIdleFraction)}), ${misses}, ${p.moves} moves`);
      for (const change of p.changes) out.push(`      at ${change.atS.toFixed(1)} s: ${change.action}${change.moved.length ? ` (moved ${change.moved.join(', ')})` : ''}`);
    }
    out.push(`    power-aware saves ${pct(scenario.energySavingVsSpread)} of spread's energy`);
  }
  const real = figures.real;
  if (!real.available) out.push(`  this machine: ${real.reason}`);
  else {
    out.push(`  this machine (cpuidle driver ${real.driver ?? '?'}, governor ${real.governor ?? '?'}; packages ${real.packages.map((p) => `${p.packageId}: CPUs ${p.cpus.join(',')}`).join('; ')}), idle residency over ${real.windowMs.toFixed(0)} ms:`);
    for (const note of real.notes) out.push(`    note: ${note}`);
    for (const cpu of real.cpus) {
      out.push(`    cpu${cpu.cpu}: idle ${pct(cpu.idleFraction)}: ${cpu.states.map((s) => `${s.name} (exit ${s.exitLatencyUs} µs) ${pct(s.fraction)}, ${s.entries} entries`).join('; ')}`);
    }
    for (const pkg of real.packageBounds) out.push(`    package ${pkg.packageId}: all CPUs idle together between ${pct(pkg.allIdleLowerBound)} and ${pct(pkg.allIdleUpperBound)} (per-CPU counters give only bounds; no package-state counter here)`);
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await runPlacementBench({ onStep: (label) => process.stderr.write(`${label}\n`) });
  for (const line of formatPlacementBench(figures)) console.log(line);
  for (const check of placementChecks(figures)) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value} (${check.target})`);
}
