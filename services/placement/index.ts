/**
 * Power-aware placement of vCPU groups on host CPUs (T-18, issue 16): topology and idle-state
 * providers (sysfs and a model host), the model's simulation, and the placement policy with its
 * baselines. See docs/placement.md.
 */
export { PlacementError, type PlacementErrorCode } from './errors.ts';
export {
  idleResidency,
  measureIdleResidency,
  topologyCpus,
  validateTopology,
  type CpuIdleReading,
  type CpuResidency,
  type HostTopology,
  type IdleCountersSnapshot,
  type IdleResidency,
  type IdleStateReading,
  type IdleUnavailable,
  type PackageResidency,
  type PackageTopology,
  type PowerTopologyProvider,
  type StateResidency,
} from './topology.ts';
export { parseCpuList, SYSFS_CPU_ROOT, SysfsPowerProvider, type SysfsPowerProviderOptions } from './sysfs.ts';
export {
  DEFAULT_MODEL_HOST,
  ModelHost,
  ModelSimulation,
  validateModelHost,
  type GroupSimulationFigures,
  type ModelHostParams,
  type ModelIdleState,
  type PackageSimulationFigures,
  type Placement,
  type SimulationInput,
  type SimulationResult,
  type StateFraction,
} from './model.ts';
export {
  packPlacement,
  placementToObject,
  powerAwarePlacement,
  PowerAwarePlacer,
  resolvePlacerOptions,
  scorePlacement,
  spreadPlacement,
  type CpuLoad,
  type GroupDemand,
  type GroupLoad,
  type GroupOptions,
  type GroupStats,
  type PackageStats,
  type PlacementAction,
  type PlacementDecision,
  type PlacementScore,
  type PlacerOptions,
  type PlacerStats,
} from './placer.ts';
export { runPlacementScenario, type PlacementPolicyName, type PlacementScenario, type ScenarioOptions, type ScenarioRun } from './scenario.ts';
