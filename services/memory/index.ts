/**
 * Memory services: hypervisor swap to a file, and the large-page policies T-3 (promote regions
 * by accessed-page counts) and T-4 (break up low-activity large regions and reclaim their cold
 * pages). They use the kernel's mechanisms (P2M entries, absent-state resolvers, tickers,
 * promoteRegion/breakUpRegion, accessed marks); see docs/large-pages.md. Content-based page
 * sharing (PageSharer) merges identical pages within and across VMs; see docs/page-sharing.md.
 */
export { SWAP_ERROR_CODES, SwapError, SwapFile, type SwapErrorCode, type SwapFileOptions, type SwapStats } from './swap.ts';
export {
  AccessedBitPrioritizer,
  LargePagePolicyError,
  LowActivityReclaimer,
  type AccessedBitPrioritizerOptions,
  type AccessedBitPrioritizerStats,
  type LowActivityReclaimerOptions,
  type LowActivityReclaimerStats,
  type Promotion,
  type ReclaimDecision,
  type ScanRecord,
  type ScanSource,
} from './large-pages.ts';
export { PageSharer, PageSharingError, pageHash64, type PageHash, type PageSharerOptions, type PageSharingStats, type ScanResult } from './sharing.ts';
export { Reallocation, type ReallocationSide, type ReallocationState, type ReallocationStatus } from './reallocate.ts';
// The memory scheduler: the reclaim ladder and usage classes (T-6, T-7); see docs/overcommit.md.
export {
  LADDER_STATES,
  MEMORY_BLOCK_REASON,
  MemoryScheduler,
  MemorySchedulerError,
  type LadderState,
  type LadderThresholds,
  type ManagedVmDevices,
  type ManagedVmStats,
  type MemoryDecision,
  type MemorySchedulerCounters,
  type MemorySchedulerOptions,
  type MemorySchedulerStats,
  type PageScanner,
  type PoolReport,
  type ReclaimAction,
  type ThresholdsReport,
  type VmAllocation,
} from './reclaim.ts';
// Shares and the idle memory tax (T-8).
export {
  adjustedSharesPerPage, DEFAULT_TAX_RATE, defaultShares, idleCost, MAX_TAX_RATE, reclaimQuotas, SHARES_PER_MIB, SharesError, type ShareHolder,
} from './shares.ts';
// Online miss-rate curves (T-9): spatially sampled LRU stack distances; see docs/mrc.md.
export {
  exactMissRateCurve,
  isSampledPage,
  MissRateCurve,
  mrcPageHash,
  MrcError,
  referencesOf,
  TraceReplay,
  type AccessWatchSource,
  type ExactMissRateCurve,
  type MissRateCurveOptions,
  type MissRateCurveReport,
  type MrcHash,
} from './mrc.ts';
// Sampled active memory (T-8's f, ESX's working-set estimate); see docs/active-memory.md.
export {
  ACTIVE_FAST_WEIGHT,
  ACTIVE_MEMORY_STATE,
  ACTIVE_MEMORY_STATE_VERSION,
  ACTIVE_PAGES_PER_PERIOD,
  ACTIVE_PERIOD_INSTRUCTIONS,
  ACTIVE_SAMPLES_KEPT,
  ACTIVE_SLOW_WEIGHT,
  activeEstimate,
  ActiveMemoryError,
  ActiveMemorySampler,
  ewma,
  samplePages,
  updateActiveAverages,
  type ActiveAverages,
  type ActiveMemoryOptions,
  type ActiveMemorySample,
  type ActiveMemoryStats,
} from './active.ts';
