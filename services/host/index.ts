/**
 * The host: many VMs in one host pool, time-shared by a deterministic scheduler, under a control
 * API (HTTP/1.1 + JSON over a Unix socket). The package's `bytevisor/services/host` entry point;
 * docs/host.md and docs/api.md describe it.
 */
export { ApiServer, ApiSocketError, API_BODY_SCHEMAS, hostRoutes, type ApiHandler, type ApiRequest, type ApiResponse, type ApiServerOptions } from './api.ts';
export { apiRequest, ApiClientError, type ApiAnswer, type ApiRequestOptions } from './client.ts';
export {
  checkJson, ConfigError, HOST_CONFIG_SCHEMA, parseHostConfig, parseVmConfig, readHostConfigFile, VM_CONFIG_SCHEMA, VM_NAME_PATTERN,
  type BalloonSpec, type ConfigProblem, type DiskSpec, type MemoryErrorsSpec, type MemoryPolicySpec, type LogReplicasSpec, type LogReplicationSpec, type MigrationSpec, type PmemHaSpec, type PmemSpec, type ReclaimSpec, type ReclaimThresholds, type HostSpec, type VmSpec, type WorkerGroupSpec,
  toStorageIoSpec, type StorageIoSpec,
  CHANNEL_BODY_SCHEMA, toChannelSpec, type ChannelJson, type ChannelSpec,
} from './config.ts';
export { ConsoleLog, type ConsoleSlice } from './console-log.ts';
export { type PlacedGroupReport, type PlacementDecisionReport, type PlacementSpec, type PlacementStatus } from './placement.ts';
export type { CrossThreadSharingStats } from './cross-thread.ts';
export { GROUP_METHODS, startModuleWorker, threadCpuMs, type GroupCalls, type GroupMethod, type WorkerGroupInfo } from './worker-group.ts';
export {
  describeExit, Host, HostError, HostStatus, type AdoptOptions, type BalloonInfo, type BalloonStatistics, type BalloonUpdate, type HostStatsReport, type WorkerGroupStats, type HostedVmState, type HostInfo, type HostOptions, type HostSettings,
  type HostStatusCode, type RestoreFigures, type RestoreResult, type SnapshotProgress, type SnapshotResult, type VmConfigSummary, type VmExit, type VmInfo,
  type VmOrigin, type MemoryPolicyInfo, type MemoryPolicyUpdate, type MrcInfo, type TaxRateInfo,
  type ReplicateRequest, type ReplicationStatus, type ReplicaInfo, type ReplicasInfo,
  type HostMigrationSettings, type MigrateRequest, type MigrationResult, type MigrationsInfo,
  type PowerLossHook, type PowerLossHookResult, type PowerLossReport, type ChannelPutResult, type ChannelsInfo,
} from './host.ts';
export type { DestinationStatus, LogFlushReport, LogReplicaInfo, LogReplicasInfo, LogReplicationStatus } from '../ha/log-replication.ts';
export {
  PMEM_HA_PROTOCOL, PMEM_HA_VERSIONS, PmemHaError, PmemHaFrame, PmemHaPartner, PmemHaSender, writeJournal,
  type OnPartner, type PmemHaErrorCode, type PmemHaPartnerHost, type PmemHaPartnerStatus, type PmemHaSenderOptions, type PmemHaSenderStatus, type PmemHaStatus, type PmemHaVm,
  type PmemRange, type PmemSaveVmReport, type PowerLossSaveReport, type ReceivedSave, type RefusedSave,
} from '../ha/pmem-ha.ts';
export { TIMELINE_DEFAULTS, TimelineRecorder, type TimelineProviders, type TimelineRecorderOptions } from './recorder.ts';
export {
  parseTimeline, readTimeline, TIMELINE_FORMAT, TIMELINE_VERSION, TimelineError, type Timeline, type TimelineBalloon, type TimelineEnd, type TimelineHeader, type TimelineHeat,
  type TimelineMrc, type TimelinePages, type TimelinePool, type TimelineProgress, type TimelineSample, type TimelineScheduler, type TimelineThresholds, type TimelineVm,
} from './timeline.ts';
export {
  diskStats, hostStats, vmStats, type BalloonCountersReport, type BusyScan, type DiskStatsReport, type DecodeCacheStatsReport, type ExitStats, type HostStats, type JitStatsReport, type LargePageStatsReport, type MmuStatsReport, type PolicyStats,
  type PoolStatsReport, type PrioritizerStatsReport, type PromotionRecord, type ReclaimerStatsReport, type SwapStatsReport, type VcpuCounters,
  type VmMemoryStats, type VmStats, type VmStatsExtras,
} from './stats.ts';
