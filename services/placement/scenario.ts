/**
 * Runs a placement policy against a demand pattern on a model host: the power-aware placer in the
 * loop (sampling each group's demand and re-evaluating as a host would), or one of the two
 * baselines. The bench (bench/placement.ts) and the tests use it to compare policies like with
 * like: same host, same demand, same ticks.
 */
import { PlacementError } from './errors.ts';
import { ModelHost, type ModelHostParams, type Placement, type SimulationResult } from './model.ts';
import { packPlacement, PowerAwarePlacer, spreadPlacement, type PlacementDecision, type PlacerOptions } from './placer.ts';

/** A demand pattern: groups and each one's CPU demand per tick. */
export interface PlacementScenario {
  /** A name for reports. */
  readonly name: string;
  /** Group ids; the baselines place them in this order. */
  readonly groups: readonly string[];
  /** Ticks to run. */
  readonly ticks: number;
  /** CPU demand of a group in a tick, CPUs. */
  demand(groupId: string, tick: number): number;
}

/** The policies a scenario can run. */
export type PlacementPolicyName = 'power-aware' | 'spread' | 'pack';

/** Options of {@link runPlacementScenario}. */
export interface ScenarioOptions {
  /** Placer options (power-aware only). */
  readonly placer?: PlacerOptions;
  /** Ticks per demand sample given to the placer (the host's sampling window); default 25 (100 ms at 4 ms ticks). */
  readonly sampleTicks?: number;
  /**
   * Give the placer each group's first-tick demand before its first evaluation (demand known
   * from an earlier run); default false: groups start at the placer's initialDemandCpus.
   */
  readonly warmStart?: boolean;
}

/** The outcome of one policy on one scenario. */
export interface ScenarioRun {
  /** The scenario's name. */
  readonly scenario: string;
  /** The policy run. */
  readonly policy: PlacementPolicyName;
  /** The model's figures. */
  readonly result: SimulationResult;
  /** The placer's decisions that changed something (power-aware only; empty for the baselines). */
  readonly changes: readonly PlacementDecision[];
}

/**
 * Runs `policy` on `scenario` on a fresh model host with `params`. The power-aware placer gets a
 * sample every `sampleTicks` ticks (each group's mean demand over the window: the time it ran
 * plus the time it waited, which is its demand) and is asked to evaluate at every tick (it acts
 * once per evaluatePeriodMs).
 */
export function runPlacementScenario(params: ModelHostParams, scenario: PlacementScenario, policy: PlacementPolicyName, options: ScenarioOptions = {}): ScenarioRun {
  const host = new ModelHost(params);
  const topology = host.topology();
  const sampleTicks = options.sampleTicks ?? 25;
  if (!Number.isInteger(sampleTicks) || sampleTicks < 1) throw new PlacementError('BV_PLACEMENT_BAD_OPTIONS', `sampleTicks must be a positive integer, not ${String(sampleTicks)}`);
  if (!Number.isInteger(scenario.ticks) || scenario.ticks < 0) throw new PlacementError('BV_PLACEMENT_BAD_OPTIONS', `ticks must be a non-negative integer, not ${String(scenario.ticks)}`);
  const simulation = host.startSimulation();
  if (policy !== 'power-aware') {
    const placement: Placement = policy === 'spread' ? spreadPlacement(topology, scenario.groups) : packPlacement(topology, scenario.groups);
    for (let tick = 0; tick < scenario.ticks; tick++) simulation.step(placement, (groupId) => scenario.demand(groupId, tick));
    return { scenario: scenario.name, policy, result: simulation.result(), changes: [] };
  }
  const placer = new PowerAwarePlacer(topology, options.placer);
  for (const groupId of scenario.groups) {
    placer.addGroup(groupId);
    if (options.warmStart) placer.observe(groupId, scenario.demand(groupId, 0));
  }
  const changes: PlacementDecision[] = [];
  const windowSum = new Map(scenario.groups.map((groupId) => [groupId, 0]));
  const tickMs = params.tickUs / 1000;
  for (let tick = 0; tick < scenario.ticks; tick++) {
    const decision = placer.maybeEvaluate(tick * tickMs);
    if (decision !== null && decision.action !== 'keep') changes.push(decision);
    simulation.step(placer.placement, (groupId) => {
      const demand = scenario.demand(groupId, tick);
      windowSum.set(groupId, windowSum.get(groupId)! + demand);
      return demand;
    });
    if ((tick + 1) % sampleTicks === 0) {
      for (const groupId of scenario.groups) {
        placer.observe(groupId, windowSum.get(groupId)! / sampleTicks);
        windowSum.set(groupId, 0);
      }
    }
  }
  return { scenario: scenario.name, policy, result: simulation.result(), changes };
}
