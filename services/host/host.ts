/**
 * The host: one hypervisor (one host memory pool) running many VMs, each with the standard
 * machine, time-shared by a deterministic round-robin of instruction slices, while the event
 * loop stays free between slices for the control API (services/host/api.ts).
 *
 * Every operation is a method of Host that names the VM, checks the VM's state and throws a
 * HostError whose `status` is the HTTP status the API answers with. Operations that touch a VM
 * (pause, snapshot, fork, delete) run between slices, never inside one: the API's handlers run on
 * the same thread as the scheduler, which only yields to the event loop between slices. The
 * methods that a VM on another thread could not answer at once (snapshot, restore, fork, create)
 * are async, so that VMs on worker threads (issue 16) can keep this interface.
 */
import { performance } from 'node:perf_hooks';
import { BvError } from '../../guest-isa/errors.ts';
import { loadGuestFile } from '../../guest-isa/index.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import {
  attachStandardDevices, savedBlockDisk, savedBlockMode, savedBootArgs, type BalloonDevice, type BalloonOptions, type BlockDevice, type ConsoleDevice, type StandardDeviceOptions, type StandardDevices,
} from '../../devices/index.ts';
import {
  createHypervisor, HOST_MEMORY_WAIT_REASON, IDLE_FOREVER, OutOfHostMemoryError, type FrameHandle, type Hypervisor, type RunResult, type Vm, type VmConfig, type Tier,
} from '../../kernel/index.ts';
import { processRss } from '../../native/index.ts';
import { readVmCheckpointConfig, restoreVmCheckpoint, saveVmCheckpoint, startLiveSnapshot, type LiveSnapshot, type RestoredVm, type RestoreMode } from '../checkpoint/index.ts';
import { MAX_STATS_INTERVAL_S, type ChannelSpec, type HostSpec, type PlacementSpec, type MemoryErrorsSpec, type MemoryPolicySpec, type PmemHaSpec, type ReclaimSpec, type VmSpec } from './config.ts';
import { ConsoleLog, type ConsoleSlice } from './console-log.ts';
import { Reallocation, ReallocationDonor, ReallocationReceiver, type ReallocationHalfStatus, type ReallocationStatus } from '../memory/reallocate.ts';
import { MemoryScheduler, type MemorySchedulerStats } from '../memory/reclaim.ts';
import { ACTIVE_MEMORY_STATE, ActiveMemorySampler, type ActiveMemoryStats } from '../memory/active.ts';
import { MissRateCurve, type MissRateCurveReport } from '../memory/mrc.ts';
import { adjustedSharesPerPage, defaultShares } from '../memory/shares.ts';
import { PageSharer, ThreadSharing, type SharingOffer } from '../memory/sharing.ts';
import { SwapFile } from '../memory/swap.ts';
import { PardaController, RemoteIoLink, StorageIoError, type RemoteIoGate, type RemoteIoGrant, type RemoteIoStatus, type StorageIoStatus, type StorageIoUpdate, type VmIoStatus } from '../storage/index.ts';
import type { StorageIoSpec } from './config.ts';
import { hostname, tmpdir } from 'node:os';
import { hostStats, vmStats, type HostStats, type VmStats } from './stats.ts';
import { Bus, BusError, type BusChannelInfo, type BusLinkMessage, type BusTotals } from '../bus/index.ts';
import { MemoryErrorService, MemoryErrorServiceError, type RecoveryMethod } from '../recovery/index.ts';
import { CleanCopyRecovery } from '../recovery/clean-copy.ts';
import { DiskCleanCopies } from '../recovery/disk-cache.ts';
import { ParityGroups } from '../recovery/parity.ts';
import { StoredHashRecovery } from '../recovery/hash.ts';
import { applyMemoryErrorRequest, memoryErrorReports, type MemoryErrorReportList, type MemoryErrorRequest, type MemoryErrorResponse } from '../recovery/requests.ts';
import { TimelineRecorder, type TimelineRecorderOptions } from './recorder.ts';
import { HostPlacement, type PlacementStatus } from './placement.ts';
import { CrossThread, type CrossThreadSharingStats } from './cross-thread.ts';
import type { PowerTopologyProvider } from '../placement/index.ts';
import { GROUP_METHODS, WorkerGroup, type GroupCalls, type GroupChannel, type GroupMethod, type WorkerGroupInfo } from './worker-group.ts';
import {
  connect as connectPeer, MigrationReceiver, MIGRATION_PROTOCOL, MIGRATION_VERSIONS, PrecopySender, REMOTE_PAGE_WAIT_REASON, splitHostPort, TransportServer,
  outputCommit, ReplicaReceiver, ReplicationFrame, ReplicationSender,
  type MigrationFigures, type ReceiveFigures, type ReplicaFigures, type ReplicationFigures, type TlsFiles,
} from '../migration/index.ts';
import { MigrationCounters, type MigrationStatsReport } from '../migration/stats.ts';
import { receivingDisk } from '../migration/disk.ts';
import { PmemHaPartner, PmemHaSender, type PmemHaStatus, type PmemSaveVmReport } from '../ha/pmem-ha.ts';
import type { JsonObject } from '../checkpoint/format.ts';
import { LogReplicaReceiver, LogShipper, type LogFlushReport, type LogReplicaInfo, type LogReplicasInfo, type LogReplicationStatus } from '../ha/log-replication.ts';

/** A VM's shares and reservations in pages (shares null: the default, 10 per MiB). */
interface VmPolicy {
  shares: number | null;
  minPages: number;
  maxPages: number | null;
}

/** GET /vms/{name}/memory-policy: how the memory scheduler weighs the VM (docs/overcommit.md, "Shares"). */
export interface MemoryPolicyInfo {
  /** Its shares (the default when not set: 10 per MiB of guest RAM). */
  shares: number;
  /** Memory reclaim never takes it below this. */
  reservation_mib: number;
  /** The most memory it may hold (null: no limit). */
  limit_mib: number | null;
  /** Host frames it holds now. */
  frames_held: number;
  /** Its sampled active pages (null: sampling off). */
  active_pages: number | null;
  /** f = active pages over the frames held (at most 1): the fraction the idle tax uses (null: sampling off). */
  active_fraction: number | null;
  /** The host's idle memory tax rate (null: no memory scheduler, the policy has no effect). */
  tax_rate: number | null;
  /** ρ = shares / (frames · (f + k (1 − f))) now (null without frames or scheduler): the lowest gives memory first. */
  shares_per_page: number | null;
}

/** PATCH /host/reclaim's answer. */
export interface TaxRateInfo {
  /** The idle memory tax rate now in force. */
  tax_rate: number;
}

/** GET /vms/{name}/mrc: the curve, and the size it recommends. */
export interface MrcInfo {
  /** The tracker's curve (docs/mrc.md). */
  curve: MissRateCurveReport;
  /** The smallest size whose miss ratio is within `within` of the curve's floor (one sampling granule of headroom added). */
  recommended: {
    /** The allowance above the floor asked for (query `within`, default 0.05). */
    within: number;
    /** floor + within. */
    target_miss_ratio: number;
    /** The size in pages. */
    pages: number;
    /** The same in MiB. */
    mib: number;
  };
}

/** PATCH /vms/{name}/memory-policy: any of the keys; limit_mib null removes the limit. */
export interface MemoryPolicyUpdate {
  /** New shares. */
  shares?: number;
  /** New reservation in MiB (at most the VM's memory). */
  reservation_mib?: number;
  /** New limit in MiB (at least the reservation), or null for none. */
  limit_mib?: number | null;
}

/** A VM's virtual time (the most advanced vCPU's): its sampler's periods run on it, so a guest that waits in wfi still ends them. */
function virtualTime(vm: Vm): number {
  let time = 0;
  for (const vcpu of vm.vcpus) time = Math.max(time, vcpu.clock);
  return time;
}

/** A hosted VM's state, as the API names it (Firecracker's and Cloud Hypervisor's words). */
export type HostedVmState = 'Running' | 'Paused' | 'Stopped';

/** Why a hosted VM stopped (`kind`), with the exit code or the message. */
export type VmExit =
  | {
    /** The guest powered off. */
    kind: 'halted';
    /** The code it powered off with. */
    exit_code: number;
  }
  | {
    /** The guest did something with no architectural outcome, or `budget` (its max_instructions), or `idle` (every vCPU waits for an interrupt nothing can raise), or `host-error` (the host failed it). */
    kind: 'guest-error' | 'host-error' | 'budget' | 'idle';
    /** What happened, one line. */
    message: string;
  };

/** Where a hosted VM came from: an image, a checkpoint (restored in `mode`) or a fork of `parent`. */
export type VmOrigin =
  | {
    /** Booted from an image. */
    kind: 'image';
    /** The image's path, as configured. */
    image: string;
  }
  | {
    /** Restored from a checkpoint. */
    kind: 'checkpoint';
    /** The checkpoint file. */
    path: string;
    /** How its memory came in. */
    mode: RestoreMode;
  }
  | {
    /** Forked from another VM of this host. */
    kind: 'fork';
    /** The parent's name. */
    parent: string;
  }
  | {
    /** Migrated in from another host. */
    kind: 'migration';
    /** The source host's address (and name, if it gave one). */
    from: string;
  }
  | {
    /** Activated from a replica (failover, docs/migration.md "Disaster-recovery replication"). */
    kind: 'replica';
    /** The primary host's address (and name, if it gave one). */
    from: string;
    /** The epoch it was activated from. */
    epoch: number;
  };

/** The machine of a hosted VM, as VmInfo shows it. */
export interface VmConfigSummary {
  /** Guest RAM in MiB. */
  memory_mib: number;
  /** Number of vCPUs. */
  vcpus: number;
  /** The boot argument string. */
  boot_args: string;
  /** Translation: `shadow` or `nested`. */
  mmu: string;
  /** The large-page policy (T-2). */
  large_pages: string;
  /** The execution tier: `interp` or `jit`. */
  tier: string;
  /** The top of the disk chain, or null without a disk. */
  disk: string | null;
}

/** A live snapshot in progress (VmInfo.snapshot). */
export interface SnapshotProgress {
  /** The file being written. */
  path: string;
  /** Always true: a stop-the-world snapshot is never seen in progress. */
  live: boolean;
  /** Pages saved so far. */
  pages_saved: number;
  /** Pages of the VM. */
  page_count: number;
}

/** GET /vms/{name}. */
export interface VmInfo {
  /** The VM's name (unique in the host). */
  name: string;
  /** Running, Paused or Stopped. */
  state: HostedVmState;
  /** Running, but every vCPU waits for console input (send it with PUT /vms/{name}/console). */
  waiting_for_input: boolean;
  /** Where the VM came from. */
  origin: VmOrigin;
  /** Its machine. */
  config: VmConfigSummary;
  /** Guest instructions retired so far, over all vCPUs. */
  instructions: number;
  /** Why the VM stopped; null while it runs or is paused. */
  exit: VmExit | null;
  /** Console output so far (bytes since the VM started). */
  console_bytes: number;
  /** A snapshot being written, or null. */
  snapshot: SnapshotProgress | null;
  /** Milliseconds since the host created the VM. */
  age_ms: number;
}

/** GET /host. */
export interface HostInfo {
  /** Size of the host pool. */
  pool_bytes: number;
  /** 4 KiB frames in the pool. */
  frames_total: number;
  /** Frames holding guest memory. */
  frames_used: number;
  /** Frames free. */
  frames_free: number;
  /** The host process's resident set size. */
  rss_bytes: number;
  /** Milliseconds since the host started. */
  uptime_ms: number;
  /** VMs in the host, by state below. */
  vm_count: number;
  /** VMs running. */
  vms_running: number;
  /** VMs paused. */
  vms_paused: number;
  /** VMs stopped (kept until deleted). */
  vms_stopped: number;
  /** Instructions per VM turn. */
  slice_instructions: number;
  /** Instructions per vCPU slice within a turn. */
  quantum: number;
  /** Cooperative reallocations (POST /host/reallocate), the latest last. */
  reallocations: ReallocationStatus[];
  /** The worker groups (worker_groups, docs/workers.md): VMs on other threads, counted in vm_count above. */
  worker_groups: WorkerGroupInfo[];
}

/** What PUT /vms/{name}/snapshot answers. */
export interface SnapshotResult {
  /** The checkpoint file written. */
  path: string;
  /** Whether the guest kept running while the pages were written. */
  live: boolean;
  /** Size of the file. */
  file_bytes: number;
  /** Pages stored in it (zero pages are recorded, not stored). */
  pages_stored: number;
  /** Pages recorded as zero. */
  zero_pages: number;
  /** Time the guest was stopped for the snapshot (all of it for a stop-the-world one). */
  pause_ms: number;
  /** From the request to the file being complete. */
  duration_ms: number;
  /** Live only: pages saved just before a guest write. */
  saved_by_writes?: number;
  /** Live only: pages saved by the background saver. */
  saved_in_background?: number;
}

/** How a restore went (RestoreResult.restore). */
export interface RestoreFigures {
  /** lazy, eager or map. */
  mode: RestoreMode;
  /** Milliseconds from the request to the VM being ready for its first instruction. */
  ready_ms: number;
  /** Pages the checkpoint stores. */
  stored_pages: number;
  /** Whether all memory is in (a lazy restore completes in the background). */
  complete: boolean;
}

/** What PUT /vms/restore answers: the new VM's info and how the restore went. */
export interface RestoreResult extends VmInfo {
  /** The restore's figures. */
  restore: RestoreFigures;
}

/** GET /vms/{name}/balloon: the balloon's settings, target and actual size (docs/balloon.md). */
export interface BalloonInfo {
  /** The target in whole MiB (target_pages / 256, rounded down). */
  amount_mib: number;
  /** The guest may deflate before it OOM-kills a process. */
  deflate_on_oom: boolean;
  /** Seconds between requests for statistics; 0: off. */
  stats_polling_interval_s: number;
  /** The guest may report free pages (fixed when the VM is created). */
  free_page_reporting: boolean;
  /** Pages the host wants in the balloon. */
  target_pages: number;
  /** Pages in it now. */
  actual_pages: number;
  /** target_pages in whole MiB. */
  target_mib: number;
  /** actual_pages in whole MiB. */
  actual_mib: number;
}

/** A change of the balloon (PUT and PATCH /vms/{name}/balloon); a key left out keeps its value. */
export interface BalloonUpdate {
  /** The new target in MiB (at most the VM's memory). */
  amount_mib?: number;
  /** The new DEFLATE_ON_OOM feature. */
  deflate_on_oom?: boolean;
  /** The new polling interval: polling cannot be turned on or off, as in Firecracker. */
  stats_polling_interval_s?: number;
}

/**
 * GET /vms/{name}/balloon/statistics: Firecracker's fields (memory in bytes), each present once
 * the guest has sent it, plus the nanokernel's class counts (anon, kernel, balloon).
 */
export interface BalloonStatistics {
  /** Pages the host wants in the balloon. */
  target_pages: number;
  /** Pages in it now. */
  actual_pages: number;
  /** target_pages in whole MiB. */
  target_mib: number;
  /** actual_pages in whole MiB. */
  actual_mib: number;
  /** Bytes read back from the guest's swap. */
  swap_in?: number;
  /** Bytes written to it. */
  swap_out?: number;
  /** Major faults. */
  major_faults?: number;
  /** Minor faults. */
  minor_faults?: number;
  /** Free memory, bytes. */
  free_memory?: number;
  /** Total memory as the guest sees it, bytes. */
  total_memory?: number;
  /** Free plus droppable cache, bytes. */
  available_memory?: number;
  /** Page cache, bytes. */
  disk_caches?: number;
  /** OOM kills. */
  oom_kill?: number;
  /** Anonymous (process) memory, bytes. */
  anon_memory?: number;
  /** Kernel memory, bytes. */
  kernel_memory?: number;
  /** The balloon as the guest counts it, bytes. */
  balloon_memory?: number;
  /** STATS commands the guest has sent. */
  updates: number;
  /** Milliseconds since the last one, or null before any. */
  age_ms: number | null;
}

/** GET /host/stats: the pool, decode cache and shootdowns (HostStats), and the memory scheduler. */
export interface HostStatsReport extends HostStats {
  /** The memory scheduler's state, counters and recent decisions (docs/overcommit.md), or null when it is off. */
  memory_scheduler: MemorySchedulerStats | null;
  /** Migrations to and from this host since it started (docs/migration.md). */
  migration: MigrationStatsReport;
  /** Power-aware placement of the worker groups (as GET /host/placement), when it is on; else absent. */
  placement?: PlacementStatus;
  /** Content-based sharing between the VMs of different threads (docs/workers.md), with worker groups and sharing on; else absent. */
  cross_thread_sharing?: CrossThreadSharingStats;
  /** Decentralised IO control (storage_io, docs/storage-io.md): window, latency, throughput, the other hosts' blocks; absent when off. */
  storage_io?: StorageIoStatus;
  /** Each worker group's own report (its decode cache, scheduler, memory scheduler), with GET /host/stats; absent in a group's own. */
  worker_groups?: WorkerGroupStats[];
  /** The partition bus's totals (docs/bus.md): channels, open ends, packets and bytes moved, ring-full waits, failures. */
  bus: BusTotals;
}

/** GET /channels: every channel of the partition bus and the totals. */
export interface ChannelsInfo {
  /** Each channel as GET /channels/{name} shows it. */
  channels: BusChannelInfo[];
  /** Totals over all of them. */
  totals: BusTotals;
}

/** What PUT /channels/{name} did. */
export interface ChannelPutResult {
  /** true: the channel is new (201); false: it existed with the same settings and was offered again (200). */
  created: boolean;
  /** The channel now. */
  channel: BusChannelInfo;
}

/** A worker group's part of GET /host/stats. */
export interface WorkerGroupStats {
  /** The group. */
  name: string;
  /** Its host's report (the pool figures in it are the shared pool's, as the host's). */
  stats: HostStatsReport;
}

/** The status classes of HostError (the HTTP status the API answers with). */
export const HostStatus = {
  /** The request is malformed or names something unusable (a file, a value). */
  BAD_REQUEST: 400,
  /** No such VM. */
  NOT_FOUND: 404,
  /** The VM is in the wrong state, or the name is taken. */
  CONFLICT: 409,
  /** The host pool cannot hold what was asked. */
  INSUFFICIENT_STORAGE: 507,
  /** The host failed. */
  INTERNAL: 500,
  /** Another host (a migration's peer) failed, refused, or could not be reached. */
  BAD_GATEWAY: 502,
} as const;
/** One of HostStatus's values. */
export type HostStatusCode = (typeof HostStatus)[keyof typeof HostStatus];

/** A refused host operation: a bad request, no such VM, or a VM in the wrong state. */
export class HostError extends BvError {
  constructor(
    /** The HTTP status the API answers with. */
    readonly status: HostStatusCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(status === 404 ? 'BV_HOST_NOT_FOUND' : status === 409 ? 'BV_HOST_CONFLICT' : status === 507 ? 'BV_HOST_NO_MEMORY' : status === 500 ? 'BV_HOST_ERROR' : 'BV_HOST_BAD_REQUEST', message, options);
  }
}

/** How the scheduler shares the host (HostSpec's scheduling part). */
export interface HostSettings {
  /** Instructions each running VM gets per turn. */
  sliceInstructions: number;
  /** Instructions per vCPU slice within a turn. */
  quantum: number;
  /** Console output kept per VM. */
  consoleBufferBytes: number;
  /**
   * Let the VMs' memory add up to more than the pool, any VM in (default false: every VM's memory
   * is reserved against the pool, and a VM that does not fit is refused with 507).
   */
  overcommit?: boolean;
}

/** Options of Host. */
export interface HostOptions {
  /** Receives one line per event (a VM created, stopped, deleted; a refused request). Default: none. */
  log?: (line: string) => void;
  /**
   * How long the scheduler runs guests before it lets the event loop (the API) in, in ms
   * (default 1: in practice after every slice). A request waits at most about this long plus
   * one slice. Yielding after every slice costs the guests nothing measurable (docs/performance.md)
   * and halves the API's round trip against 4 ms.
   */
  yieldEveryMs?: number;
  /** Record a timeline of the host into a file from the start (recorder.ts; tools/host --record). Default: none. */
  record?: TimelineRecorderOptions;
  /** How this host talks to other hosts (the configuration's `migration`). Default: no TLS files, not insecure (migration refused). */
  migration?: HostMigrationSettings;
  /**
   * @internal Where the giving half of a reallocation across threads sends its frames (a worker
   * group's host posts them to the main host). Default: this host relays them itself.
   */
  reallocationFrames?: (id: number, handles: FrameHandle[], given: number) => void;
}

/** The host's side of talking to other hosts (HostSpec.migration). */
export interface HostMigrationSettings {
  /** Mutual TLS files, or null. */
  tls: TlsFiles | null;
  /** Plain TCP (only when no TLS files are given). */
  insecure: boolean;
  /** A peer silent this long fails the migration. */
  stallTimeoutMs: number;
  /** How this host introduces itself to peers (default: the machine's host name). */
  name?: string;
  /** Where the disks of VMs migrated or replicated here are written (default: next to their raw base image). */
  diskDir?: string | null;
}

/** PUT /vms/{name}/migrate. */
export interface MigrateRequest {
  /** The destination host's migration address, host:port. */
  destination: string;
  /** 'precopy' (default) or 'postcopy' (one full pass, then the VM runs on the destination and fetches the rest). */
  mode?: 'precopy' | 'postcopy';
  /** The longest acceptable pause, ms (default 300). */
  downtime_ms?: number;
  /** Bytes per second (default: no limit). */
  max_bandwidth?: number;
  /** Give up after this many seconds (default 3600). */
  timeout_s?: number;
}

/** The answer of PUT /vms/{name}/migrate: where the VM went and the migration's figures. */
export interface MigrationResult extends MigrationFigures {
  /** The VM. */
  name: string;
  /** Where it went. */
  destination: string;
  /** The VM's instruction count when it stopped here (the switch-over): the destination carries on from it. */
  instructions: number;
}

/** PUT /vms/{name}/replicate. */
export interface ReplicateRequest {
  /** The backup host's migration address, host:port. */
  destination: string;
  /** Host time between epochs, ms (default 100). */
  interval_ms?: number;
  /** Output commit (Remus): the VM's console output is shown only once the epoch that produced it is committed at the backup (default false). */
  output_commit?: boolean;
}

/** GET /vms/{name}/replication: an outgoing replication and its figures. */
export interface ReplicationStatus extends ReplicationFigures {
  /** The VM. */
  name: string;
  /** The backup host. */
  destination: string;
  /** Whether console output waits for its epoch's commit. */
  output_commit: boolean;
}

/** One replica held by this (backup) host. */
export interface ReplicaInfo extends ReplicaFigures {
  /** The primary host's address (and name, if it gave one). */
  from: string;
}

/** GET /replicas. */
export interface ReplicasInfo {
  /** The address replication streams are received on (the migration listener), or null. */
  listening: string | null;
  /** The replicas, in the order they arrived. */
  replicas: ReplicaInfo[];
}

/**
 * A service's reaction to a power-loss notice (Host.onPowerLoss): it runs with every VM paused
 * and must settle by `deadline` (a performance.now() time: the end of the battery budget).
 */
export type PowerLossHook = (deadline: number) => Promise<unknown>;

/** One hook's outcome in a PowerLossReport. */
export interface PowerLossHookResult {
  /** The hook's name. */
  name: string;
  /** Whether it settled in time without an error. */
  ok: boolean;
  /** Milliseconds it took (at most the budget: a hook still running then is cut off). */
  ms: number;
  /** What it answered (its report), or null. */
  result: unknown;
  /** Why it failed or was cut off, or null. */
  error: string | null;
}

/** POST /host/power-loss: what the host did with its battery budget. */
export interface PowerLossReport {
  /** What notified it (the API, SIGTERM). */
  reason: string;
  /** The budget. */
  battery_ms: number;
  /** The VMs it paused at the notice (nothing runs after it). */
  paused: string[];
  /** Each power-loss hook, in registration order. */
  hooks: PowerLossHookResult[];
  /** Milliseconds from the notice to the last hook settled. */
  ms: number;
}

/** GET /migrations. */
export interface MigrationsInfo {
  /** The address incoming migrations are received on, or null. */
  listening: string | null;
  /** Whether the channel uses mutual TLS (false: insecure). */
  secure: boolean;
  /** Incoming migrations, the latest last (at most 16). */
  incoming: ReceiveFigures[];
  /** Outgoing migrations, the latest last (at most 16). */
  outgoing: MigrationResult[];
  /** Connections refused (untrusted certificates, other versions), the latest last. */
  refused: {
    /** The peer's address. */
    remote: string;
    /** The transport's error code. */
    code: string;
    /** Why it was refused. */
    message: string;
  }[];
}

/** What adoptVm needs to know about a machine built elsewhere (tools/run --api-sock). */
export interface AdoptOptions {
  /** Where the VM came from (VmInfo.origin). */
  origin: VmOrigin;
  /** Stop after this many more instructions (default: no limit). */
  maxInstructions?: number;
  /** The console log the machine's console writes to (it must have been attached with it). */
  consoleLog: ConsoleLog;
  /** Closed when the VM is deleted or the host closes (a lazy restore's file). */
  restored?: RestoredVm;
  /** The disk chain's top, for forks (null: no disk). */
  disk?: string | null;
  /** Refuse DELETE for this VM (409): its owner frees it (tools/run's own VM). */
  keep?: boolean;
}

/** Reallocations GET /host lists (the running ones, then the latest finished). */
const MAX_REALLOCATIONS_KEPT = 16;

/** How often a host with nothing else to run looks for stream input of a waiting VM. */
const INPUT_POLL_MS = 5;
/**
 * A VM whose turn did little but wait for its timer (an idle guest's periodic tick: wfi skips
 * virtual time to the deadline) runs again after this much host time at the soonest, so that
 * idle guests neither spin a core nor take the turns of busy ones.
 */
const IDLE_TICK_MS = 1;
/** "Little": fewer instructions than this in the turn (the nanokernel's idle tick is ~200). A guest that works between its waits is not held back. */
const IDLE_TURN_INSTRUCTIONS = 5_000;

/** Names that are API paths under /vms and so cannot name a VM. */
const RESERVED_NAMES = new Set(['restore']);

/** One VM of the host. */
class HostedVm {
  state: HostedVmState;
  exit: VmExit | null = null;
  waitingForInput = false;
  /** performance.now() before which the scheduler skips it: its last turn ended on a timer wait (IDLE_TICK_MS). */
  idleUntil = 0;
  budgetLeft: number;
  readonly createdAt = performance.now();
  /** A live snapshot in progress and the request waiting for it. */
  live: { snapshot: LiveSnapshot; started: number; done: (result: SnapshotResult | Error) => void } | null = null;
  readonly stopWaiters: (() => void)[] = [];
  /** DELETE is refused: the VM's owner frees it (AdoptOptions.keep). */
  kept = false;
  /** Paused by the memory scheduler at low (it resumes it when memory frees). */
  blockedByMemory = false;
  /** The balloon's statistics polling timer (unref'd), or null. */
  statsTimer: ReturnType<typeof setInterval> | null = null;
  /** Shares and reservations (memory_policy); the memory scheduler applies them when it is on. */
  policy: VmPolicy = { shares: null, minPages: 0, maxPages: null };
  /** Sampled active memory (memory_policy.active_sampling), or null when off. */
  sampler: ActiveMemorySampler | null = null;
  /** The online miss-rate curve (memory_policy.mrc), or null when off; its settings (a fork's child gets a fresh curve with them). */
  mrc: MissRateCurve | null = null;
  mrcOptions: NonNullable<MemoryPolicySpec['mrc']> | null = null;
  /** An outgoing migration in progress, or null. */
  migration: PrecopySender | null = null;
  /** Disaster-recovery replication to a backup host (running, or how it ended), or null. */
  replication: { sender: ReplicationSender; destination: string; outputCommit: boolean; done: Promise<void> } | null = null;
  /** A post-copy that failed after the switch-over: the VM runs on the destination, which still lacks pages kept here. */
  postcopy: { sender: PrecopySender; destination: string } | null = null;
  /** Post-copy destination: paused at a page still on the source (the migration wakes it). */
  waitingForPages = false;
  /** Asynchronous replication of the pmkv log in its persistent memory (log_replication), or null. */
  logShipper: LogShipper | null = null;
  /** The configuration it was booted from (pmem_ha sends it to the partner), or null (migrated, restored, adopted). */
  spec: VmSpec | null = null;
  /** Auto-converge: the share of turns skipped (0: none), and the credit that spreads them. */
  throttle = 0;
  throttleCredit = 0;

  constructor(
    readonly name: string,
    readonly vm: Vm,
    readonly devices: StandardDevices,
    readonly console: ConsoleLog,
    readonly origin: VmOrigin,
    readonly disk: string | null,
    readonly restored: RestoredVm | null,
    paused: boolean,
    maxInstructions: number | null,
  ) {
    this.state = paused ? 'Paused' : 'Running';
    this.budgetLeft = maxInstructions ?? Infinity;
  }
}

/**
 * A host of VMs. Create one with Host.start (a configuration: checks every VM, then boots them
 * all) or with `new Host(hv, settings)` around a hypervisor you made; the scheduler starts at
 * once and runs until close().
 */
export class Host {
  /** When the host started (performance.now()). */
  readonly startedAt = performance.now();
  private readonly machines = new Map<string, HostedVm>();
  /** Memory-error services by VM (T-17), made at first use. */
  private readonly memoryErrorServices = new WeakMap<Vm, MemoryErrorService>();
  /** Each VM's clean-copy recovery, handed to the scheduler's swap file (keepCleanCopies). */
  private readonly cleanCopies = new Map<Vm, CleanCopyRecovery>();
  private readonly reallocations: Reallocation[] = [];
  /** Halves of reallocations across threads that run in this thread, by id. */
  private readonly reallocationHalves = new Map<number, { half: ReallocationDonor | ReallocationReceiver; vm: Vm }>();
  /** Reallocations and page sharing between the VMs of different threads (this host coordinates them). */
  private readonly crossThread: CrossThread;
  private readonly sendReallocationFrames: (id: number, handles: FrameHandle[], given: number) => void;
  /** The memory scheduler and its swap file (enableReclaim), or null. */
  private memory: { scheduler: MemoryScheduler; swap: SwapFile } | null = null;
  private readonly log: (line: string) => void;
  private readonly yieldEveryMs: number;
  private closed = false;
  /** Resolves the scheduler's wait when something may have become runnable. */
  private wake: (() => void) | null = null;
  private readonly loopDone: Promise<void>;
  /** The timeline recorder (HostOptions.record), or null; stopped by close(). */
  readonly recorder: TimelineRecorder | null;
  /** Talking to other hosts (HostOptions.migration). */
  private readonly migrationSettings: HostMigrationSettings;
  /** The listener for incoming migrations (PUT /migrations/receive), or null. */
  private migrationListener: TransportServer | null = null;
  /** Names of VMs being received: taken, though not in `machines` until they run. */
  private readonly incomingNames = new Set<string>();
  /** VMs of worker groups being started: their names are taken and their memory reserved. */
  private readonly startingInGroups = new Map<string, number>();
  private readonly incomingMigrations: ReceiveFigures[] = [];
  private readonly outgoingMigrations: MigrationResult[] = [];
  /** Migration counters (GET /host/stats). */
  private readonly migrationCounters = new MigrationCounters();
  /** Incoming post-copies that failed after the VM started here, by VM name: a new connection from the source resumes them. */
  private readonly brokenPostcopies = new Map<string, MigrationReceiver>();
  /** Post-copies received whole, by VM name: a source that missed the COMPLETE asks again (a resumption). */
  private readonly completedPostcopies = new Map<string, MigrationReceiver>();
  /** Replicas this host holds as a backup, by VM name. */
  private readonly replicaStreams = new Map<string, { receiver: ReplicaReceiver; from: string }>();
  /** Persistent-memory HA (pmem_ha, T-15): saving to a partner, receiving a partner's saves; null when not configured. */
  private pmemHa: { sender: PmemHaSender | null; partner: PmemHaPartner | null } | null = null;
  /** The receiver of other hosts' pmkv logs (log_replicas), or null. */
  private logReceiver: LogReplicaReceiver | null = null;
  /** What runs on a power-loss notice (onPowerLoss), in registration order. */
  private readonly powerLossHooks: { name: string; hook: PowerLossHook }[] = [];
  /** The memory scheduler's settings (enableReclaim), which every worker group runs over its own VMs too. */
  private reclaimSpec: ReclaimSpec | null = null;
  /** This thread's part of content-based sharing between threads. */
  private readonly threadSharing = new ThreadSharing(() => [...this.machines.values()].map((m) => m.vm));
  /** Power-aware placement of the unpinned worker groups (enablePlacement), or null. */
  private placement: HostPlacement | null = null;
  /** Worker groups by name (docs/workers.md): VMs on other threads over the same pool. */
  private readonly groups = new Map<string, WorkerGroup>();
  /** The VMs in worker groups: their group and memory (reserved against the pool here). */
  private readonly remote = new Map<string, { group: WorkerGroup; memoryBytes: number }>();
  /** The partition bus (docs/bus.md): channels between this thread's VMs, and to the echo service. */
  readonly bus: Bus;
  /** Each channel's settings as configured or PUT (a PUT of the same settings offers it again). */
  private readonly channelSpecs = new Map<string, ChannelSpec>();
  /** Configured channels with an end in a worker group: the thread of each end (a group's name, null = this thread). */
  private readonly channelThreads = new Map<string, { client: string | null; server: string | null }>();
  /** Each worker group's channels, handed to it when it starts. */
  private readonly groupChannels = new Map<string, GroupChannel[]>();
  /** Bus messages for a worker group still starting, in order. */
  private readonly busQueues = new Map<string, BusLinkMessage[]>();
  /** This host's own VMs through the interface worker groups answer (vmCalls). */
  private readonly localCalls: GroupCalls;
  /** Decentralised IO control (storage_io, PARDA): the gate of the VMs' asynchronous disks, or null. */
  private storage: PardaController | null = null;
  /** In a worker group under storage_io: the gate that starts requests against the host's credits (remote-gate.ts), or null. */
  private remoteGate: RemoteIoGate | null = null;
  /** Under storage_io: each worker group's end of its credit gate, by group name. */
  private readonly ioLinks = new Map<string, RemoteIoLink>();

  constructor(
    /** The hypervisor (one host pool) the VMs live in. */
    readonly hv: Hypervisor,
    /** How the scheduler shares the host. */
    readonly settings: HostSettings,
    options: HostOptions = {},
  ) {
    this.log = options.log ?? (() => {});
    this.bus = new Bus({ log: (line) => this.log(line), onSignal: () => this.kick() });
    this.crossThread = new CrossThread(this.hv, () => [this.localCalls, ...this.liveGroups().map((group) => group.calls)], (name) => this.vmCalls(name), (line) => this.log(line));
    this.sendReallocationFrames = options.reallocationFrames ?? ((id, handles, given) => this.crossThread.relayFrames(id, handles, given));
    const localCalls: Partial<Record<GroupMethod, (...args: unknown[]) => Promise<unknown>>> = {};
    for (const method of GROUP_METHODS) {
      const call = this[method] as (...args: unknown[]) => unknown;
      localCalls[method] = async (...args: unknown[]) => call.apply(this, args);
    }
    this.localCalls = localCalls as GroupCalls;
    this.yieldEveryMs = options.yieldEveryMs ?? 1;
    this.migrationSettings = options.migration ?? { tls: null, insecure: false, stallTimeoutMs: 10_000 };
    this.onPowerLoss('log-replication', (deadline) => this.flushLogs(deadline));
    this.loopDone = this.schedule();
    try {
      this.recorder = options.record === undefined ? null : new TimelineRecorder(this, {
        ...options.record,
        // The sampled share of each VM's RAM in use (the report splits its present pages into active and idle).
        providers: {
          activeFraction: (name) => this.machines.get(name)?.sampler?.estimate ?? null,
          mrc: (name) => {
            const mrc = this.machines.get(name)?.mrc;
            if (mrc == null) return null;
            const { sizes_mib, miss_ratio } = mrc.curve();
            return { sizes_mib, miss_ratio };
          },
          ...options.record.providers,
        },
      });
    } catch (error) {
      this.closed = true; // the scheduler's loop ends before its first round
      throw error;
    }
  }

  /**
   * A host for a configuration: loads every VM's image first (so a bad one refuses the whole
   * configuration before any guest runs), creates the pool, then boots the VMs in order.
   */
  static async start(spec: HostSpec, options: HostOptions = {}): Promise<Host> {
    const images = spec.vms.map((vm, index) => loadImage(vm.image, `vms[${index}].image`));
    const hv = createHypervisor({ hostMemoryBytes: spec.hostMemoryBytes });
    const migration = options.migration ?? (spec.migration === undefined ? undefined : { tls: spec.migration.tls, insecure: spec.migration.insecure, stallTimeoutMs: spec.migration.stallTimeoutMs, name: spec.migration.name, diskDir: spec.migration.diskDir });
    const host = new Host(hv, { sliceInstructions: spec.sliceInstructions, quantum: spec.quantum, consoleBufferBytes: spec.consoleBufferBytes, overcommit: spec.overcommit }, { ...options, ...(migration === undefined ? {} : { migration }) });
    try {
      if (spec.reclaim !== null) host.enableReclaim(spec.reclaim);
      if (spec.storageIo !== null) host.enableStorageIo(spec.storageIo, spec.migration.name);
      // Channels first: a VM a channel names gets its channel device when it boots.
      host.distributeChannels(spec);
      for (const [index, vm] of spec.vms.entries()) if (vm.group === undefined) host.boot(vm, images[index]!, `vms[${index}]`);
      // The groups start at once (a worker takes ~0.5 s to load); all settle before a failure is thrown, so close() finds every one.
      const started = await Promise.allSettled(spec.workerGroups.map((group, index) => host.startGroup(group.name, group.cpus, spec.vms.filter((vm) => vm.group === group.name), `worker_groups[${index}]`, migration)));
      const failed = started.find((result): result is PromiseRejectedResult => result.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
      // In configuration order, whichever started first.
      const ordered = spec.workerGroups.map((group) => host.groups.get(group.name)!);
      host.groups.clear();
      for (const group of ordered) host.groups.set(group.name, group);
      if (spec.placement !== null) host.enablePlacement(spec.placement);
      if (spec.reclaim?.sharing === true && host.groups.size > 0) host.startCrossThreadSharing();
      if (spec.migration?.listen != null) await host.receiveMigrations(spec.migration.listen);
      if (spec.pmemHa != null) await host.enablePmemHa(spec.pmemHa);
      if (spec.logReplicas != null) await host.receiveLogs(spec.logReplicas.listen, spec.logReplicas.dir);
    } catch (error) {
      await host.close();
      throw error;
    }
    return host;
  }

  // ------------------------------------------------------------------------------- queries

  /** The names of the VMs, in creation order. */
  names(): string[] {
    return [...this.machines.keys(), ...this.remote.keys()];
  }

  /**
   * The calls about VM `name`, wherever it runs: this host's own methods for its VMs, the worker's
   * for a VM in a worker group (docs/workers.md). The API answers every per-VM request through it.
   */
  vmCalls(name: string): GroupCalls {
    return this.remote.get(name)?.group.calls ?? this.localCalls;
  }

  /** GET /vms: every VM, this thread's and the worker groups'. */
  async listAll(): Promise<VmInfo[]> {
    // A group whose thread died lists nothing (GET /groups says why); the others still answer.
    const lists = await Promise.all(this.liveGroups().map((group) => group.calls.list().catch(() => [])));
    return [...this.list(), ...lists.flat()];
  }

  /**
   * GET /vms/{name}/stats of a VM in any thread. A worker group's VM answers from its group; the
   * host adds the `io` block (shares, part of the window, in flight, queued, IOPS), which only
   * this thread's storage_io controller holds, as it is for a VM of this thread.
   */
  async vmStatsAnywhere(name: string): Promise<ReturnType<Host['vmStats']>> {
    const remote = this.remote.get(name);
    if (remote === undefined) return this.vmStats(name);
    const stats = await remote.group.calls.vmStats(name);
    const io = this.storage?.vmStatus(name) ?? null;
    return io === null ? stats : { ...stats, io };
  }

  /** The worker groups whose threads still run. */
  private liveGroups(): WorkerGroup[] {
    return [...this.groups.values()].filter((group) => group.failure === null);
  }

  /** GET /host with the worker groups' VMs counted in. */
  async hostInfo(): Promise<HostInfo> {
    const info = this.info();
    for (const group of this.liveGroups()) {
      const theirs = await group.calls.info().catch(() => null);
      if (theirs === null) continue;
      info.vm_count += theirs.vm_count;
      info.vms_running += theirs.vms_running;
      info.vms_paused += theirs.vms_paused;
      info.vms_stopped += theirs.vms_stopped;
      info.reallocations.push(...theirs.reallocations);
    }
    info.reallocations.push(...(await this.crossThread.reallocationStatuses()));
    return info;
  }

  /**
   * Turns power-aware placement of the worker groups without configured CPUs on (the config's
   * `placement`; docs/placement.md): their demands are sampled every interval and the placer moves
   * them between CPUs. `provider` defaults to the host's sysfs topology and cpuidle counters.
   */
  enablePlacement(spec: PlacementSpec, provider?: PowerTopologyProvider): void {
    if (this.placement !== null) throw new HostError(409, 'placement is already on');
    this.placement = guard(() => new HostPlacement(() => this.liveGroups(), spec, this.startedAt, this.log, provider), 'placement');
  }

  /** GET /host/placement: the placer's groups, decisions and the idle residency it saw. */
  placementStatus(): PlacementStatus {
    if (this.placement === null) throw new HostError(404, 'placement is off (placement in docs/host.md)');
    return this.placement.status();
  }

  /** The worker groups (GET /groups). */
  workerGroups(): WorkerGroupInfo[] {
    return [...this.groups.values()].map((group) => group.info());
  }

  /** A worker group by name, or 404. */
  private group(name: string): WorkerGroup {
    const group = this.groups.get(name);
    if (group === undefined) throw new HostError(404, `no worker group named '${name}'${this.groups.size === 0 ? ' (this host has none: worker_groups in docs/host.md)' : ''}`);
    return group;
  }

  /**
   * PATCH /groups/{name} {cpus}: moves a worker group's thread to other host CPUs (the placement
   * service does this too, docs/placement.md); answers with the group as the kernel reports it.
   */
  async setGroupCpus(name: string, cpus: number[]): Promise<WorkerGroupInfo> {
    const group = this.group(name);
    try {
      await group.setAffinity(cpus);
    } catch (error) {
      throw new HostError(400, `worker group '${name}': cannot run on CPUs ${cpus.join(',')}: ${error instanceof Error ? error.message : String(error)}`);
    }
    return group.info();
  }

  /** Starts a worker group with its VMs (reserved against the pool first, as this host's own are). */
  private async startGroup(name: string, cpus: number[] | null, vms: VmSpec[], where: string, migration: HostMigrationSettings | undefined): Promise<WorkerGroup> {
    if (this.groups.has(name)) throw new HostError(409, `${where}: a worker group named '${name}' exists`);
    for (const vm of vms) {
      this.checkNewName(vm.name);
      this.checkFits(vm.memoryBytes, `VM '${vm.name}'`);
      this.startingInGroups.set(vm.name, vm.memoryBytes);
      // storage_io: the group's VMs are owners of this host's controller, with their shares.
      if (vm.disk?.async === true) this.storage?.addVm(vm.name, vm.ioShares);
    }
    try {
      const group = await WorkerGroup.start({
        name, cpus, pool: this.hv.sharePool(), vms,
        // The main host reserves every VM's memory against the pool; a group sees only its own VMs.
        settings: { ...this.settings, overcommit: true },
        reclaim: this.reclaimSpec,
        yieldEveryMs: this.yieldEveryMs,
        migration: migration ?? this.migrationSettings,
        channels: this.groupChannels.get(name) ?? [],
        storageIo: this.storage !== null,
      }, this.log, (to, message) => this.routeBus(to, message), (events, grant) => this.remoteIo(name, events, grant));
      this.groups.set(name, group);
      // storage_io: a dead thread completes nothing; its VMs' credits go back to the window.
      group.onFailure = () => {
        for (const vm of group.vmNames) this.releaseRemoteIo(vm);
      };
      // Messages its peers sent while it started, in order.
      const queued = this.busQueues.get(name);
      this.busQueues.delete(name);
      for (const message of queued ?? []) group.postBus(message);
      for (const vm of vms) {
        this.startingInGroups.delete(vm.name);
        this.remote.set(vm.name, { group, memoryBytes: vm.memoryBytes });
      }
      this.log(`host: worker group ${name} on CPUs ${group.affinity.join(',')} (thread ${group.threadId}) with ${vms.length} VM${vms.length === 1 ? '' : 's'}`);
      return group;
    } catch (error) {
      for (const vm of vms) {
        this.startingInGroups.delete(vm.name);
        this.storage?.removeVm(vm.name);
      }
      throw error instanceof HostError ? new HostError(error.status, `${where}: ${error.message}`) : error;
    }
  }

  /** Refuses an operation that needs VM `name` in this thread (docs/workers.md says which). */
  private checkLocal(name: string, what: string): void {
    const remote = this.remote.get(name);
    if (remote !== undefined) throw new HostError(409, `VM '${name}' runs in worker group '${remote.group.name}': ${what} needs the VMs in the host's own thread (docs/workers.md)`);
  }

  /** GET /host. */
  info(): HostInfo {
    const pool = this.hv.poolStats();
    const counts = { Running: 0, Paused: 0, Stopped: 0 };
    for (const m of this.machines.values()) counts[m.state]++;
    return {
      pool_bytes: pool.totalFrames * 4096,
      frames_total: pool.totalFrames,
      frames_used: pool.usedFrames,
      frames_free: pool.totalFrames - pool.usedFrames,
      rss_bytes: processRss(),
      uptime_ms: Math.round(performance.now() - this.startedAt),
      vm_count: this.machines.size,
      vms_running: counts.Running,
      vms_paused: counts.Paused,
      vms_stopped: counts.Stopped,
      slice_instructions: this.settings.sliceInstructions,
      quantum: this.settings.quantum,
      reallocations: this.reallocations.map((r) => r.status()),
      worker_groups: this.workerGroups(),
    };
  }

  /** GET /vms/{name}. */
  vmInfo(name: string): VmInfo {
    return this.describe(this.get(name));
  }

  /** GET /vms. */
  list(): VmInfo[] {
    return [...this.machines.values()].map((m) => this.describe(m));
  }

  /** GET /vms/{name}/stats: every counter `tools/run --stats` prints. */
  vmStats(name: string): VmStats & {
    /** Under storage_io: the VM's IO shares, its part of the window, requests in flight and queued, IOPS (docs/storage-io.md). */
    io?: VmIoStatus;
    /** In a worker group under storage_io: the credits the group holds for the VM (docs/storage-io.md). */
    io_credit?: RemoteIoStatus;
  } {
    const m = this.get(name);
    const stats = vmStats(this.hv, m.vm, { balloon: m.devices.balloon, block: m.devices.block });
    // Under storage_io: the VM's shares, part of the window, requests in flight and queued, IOPS.
    const io = this.storage?.vmStatus(name) ?? null;
    // In a worker group: the credits its gate holds from the host's controller.
    const credit = this.remoteGate?.status(name) ?? null;
    return { ...stats, ...(io === null ? {} : { io }), ...(credit === null ? {} : { io_credit: credit }) };
  }

  /** GET /vms/{name}/balloon. */
  balloon(name: string): BalloonInfo {
    const device = this.balloonOf(this.get(name));
    return {
      amount_mib: pagesToMib(device.target),
      deflate_on_oom: device.deflateOnOom,
      stats_polling_interval_s: device.statsPollingIntervalS,
      free_page_reporting: device.freePageReporting,
      target_pages: device.target,
      actual_pages: device.actual,
      target_mib: pagesToMib(device.target),
      actual_mib: pagesToMib(device.actual),
    };
  }

  /**
   * PUT and PATCH /vms/{name}/balloon: a new target (at most the VM's memory), DEFLATE_ON_OOM,
   * or polling interval; the driver sees them at its next look. 400 for a VM without a balloon.
   */
  setBalloon(name: string, update: BalloonUpdate): BalloonInfo {
    const m = this.get(name);
    const device = this.balloonOf(m);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'change the balloon of');
    const memoryMib = m.vm.memoryBytes / MIB;
    const { amount_mib: amount, deflate_on_oom: deflate, stats_polling_interval_s: interval } = update;
    if (amount !== undefined && (!Number.isInteger(amount) || amount < 0 || amount > memoryMib)) {
      throw new HostError(400, `amount_mib must be 0 to ${memoryMib} (the memory of VM '${name}'), got ${amount}`);
    }
    if (interval !== undefined) this.checkStatsInterval(m, device, interval);
    if (amount !== undefined) device.setTarget(amount * (MIB / 4096));
    if (deflate !== undefined) device.setDeflateOnOom(deflate);
    if (interval !== undefined && interval !== device.statsPollingIntervalS) {
      device.setStatsPollingInterval(interval);
      this.startStatsPolling(m);
    }
    this.log(`vm ${name}: balloon target ${device.target} pages${deflate === undefined ? '' : `, deflate_on_oom ${deflate}`}${interval === undefined ? '' : `, statistics every ${interval} s`}`);
    return this.balloon(name);
  }

  /** GET /vms/{name}/balloon/statistics: 400 while statistics polling is off (as Firecracker). */
  balloonStatistics(name: string): BalloonStatistics {
    const device = this.balloonOf(this.get(name));
    if (device.statsPollingIntervalS === 0) {
      throw new HostError(400, `VM '${name}' has statistics polling off: set balloon.stats_polling_interval_s when creating the VM`);
    }
    const answer: BalloonStatistics = {
      target_pages: device.target,
      actual_pages: device.actual,
      target_mib: pagesToMib(device.target),
      actual_mib: pagesToMib(device.actual),
      updates: device.lastStats?.updates ?? 0,
      age_ms: device.lastStats === null ? null : Math.round(performance.now() - device.lastStats.atMs),
    };
    const v = device.lastStats?.values ?? {};
    const bytes = (pages: number | undefined): number | undefined => (pages === undefined ? undefined : pages * 4096);
    const fields: [keyof BalloonStatistics, number | undefined][] = [
      ['swap_in', bytes(v.swapIn)], ['swap_out', bytes(v.swapOut)], ['major_faults', v.majorFaults], ['minor_faults', v.minorFaults],
      ['free_memory', bytes(v.freePages)], ['total_memory', bytes(v.totalPages)], ['available_memory', bytes(v.availablePages)],
      ['disk_caches', bytes(v.cachePages)], ['oom_kill', v.oomKills], ['anon_memory', bytes(v.anonPages)], ['kernel_memory', bytes(v.kernelPages)],
      ['balloon_memory', bytes(v.balloonPages)],
    ];
    for (const [key, value] of fields) if (value !== undefined) (answer as unknown as Record<string, number>)[key] = value;
    return answer;
  }

  /** GET /host/stats. */
  hostStats(): HostStatsReport {
    return { ...hostStats(this.hv), memory_scheduler: this.memory?.scheduler.stats() ?? null, migration: this.migrationCounters.report(), bus: this.bus.totals() };
  }

  // ------------------------------------------------------------------------------- partition bus

  /** GET /channels. */
  async channels(): Promise<ChannelsInfo> {
    const names = [...new Set([...this.bus.names(), ...this.channelThreads.keys()])];
    const channels = await Promise.all(names.map((name) => this.channel(name)));
    // Totals over every thread's bus (a channel across threads counts its packets in each).
    const totals = this.bus.totals();
    for (const group of this.liveGroups()) {
      const theirs = (await group.calls.hostStats().catch(() => null))?.bus;
      if (theirs == null) continue;
      for (const key of Object.keys(totals) as (keyof BusTotals)[]) if (key !== 'channels') totals[key] += theirs[key];
    }
    totals.channels = names.length;
    return { channels, totals };
  }

  /**
   * GET /channels/{name}: its ends (state, agreed version, counters) and failures. A channel with
   * an end in a worker group is put together from the bus of each end's thread.
   */
  async channel(name: string): Promise<BusChannelInfo> {
    const threads = this.channelThreads.get(name);
    if (threads === undefined) {
      if (!this.bus.has(name)) throw new HostError(404, `no channel named '${name}'`);
      return this.bus.info(name);
    }
    const from = async (thread: string | null): Promise<BusChannelInfo> => {
      const info = thread === null ? this.bus.info(name) : await this.group(thread).calls.channelInfo(name);
      if (info === null) throw new HostError(500, `channel '${name}': worker group '${thread}' does not hold it`);
      return info;
    };
    const client = await from(threads.client);
    if (threads.server === threads.client) return client;
    const server = await from(threads.server);
    return {
      ...client, ends: [client.ends[0]!, server.ends[1]!], failureCount: client.failureCount + server.failureCount,
      failures: [...client.failures, ...server.failures].sort((a, b) => a.atMs - b.atMs),
    };
  }

  /** This thread's bus's view of a channel, or null (a worker group answers the main host's GET /channels with it). */
  channelInfo(name: string): BusChannelInfo | null {
    return this.bus.has(name) ? this.bus.info(name) : null;
  }

  /**
   * The host configuration's channels: this thread's bus takes those with an end here (linked to
   * the worker group holding the other end, if any); each worker group gets those with an end in
   * it when it starts (docs/bus.md "Across threads").
   */
  private distributeChannels(spec: HostSpec): void {
    const threadOf = (vm: string): string | null => spec.vms.find((v) => v.name === vm)?.group ?? null;
    for (const [index, channel] of (spec.channels ?? []).entries()) {
      const client = threadOf(channel.client);
      const server = channel.service === 'echo' ? client : threadOf(channel.server);
      if (client === null && server === null) {
        this.addChannel(channel, `channels[${index}]`);
        continue;
      }
      const config = { name: channel.name, service: channel.service, client: channel.client, server: channel.server, versions: channel.versions, ringPages: channel.ringPages };
      this.channelThreads.set(channel.name, { client, server });
      this.channelSpecs.set(channel.name, { ...channel, versions: [...channel.versions] });
      if (client === null || server === null) {
        const group = (client ?? server)!;
        this.bus.addChannel({ ...config, remote: { role: client === null ? 'server' : 'client', link: { post: (message) => this.routeBus(group, message) } } });
      }
      for (const thread of new Set([client, server])) {
        if (thread === null) continue;
        const remote = client === server ? null : thread === client ? { role: 'server' as const, thread: server } : { role: 'client' as const, thread: client };
        const list = this.groupChannels.get(thread) ?? [];
        list.push({ config, remote });
        this.groupChannels.set(thread, list);
      }
    }
  }

  /** A bus message for the thread `to` (a worker group, or null: this one); a group still starting gets it when it has started. */
  private routeBus(to: string | null, message: BusLinkMessage): void {
    if (to === null) {
      this.bus.receive(message);
      return;
    }
    const group = this.groups.get(to);
    if (group !== undefined) {
      group.postBus(message);
      return;
    }
    const queue = this.busQueues.get(to) ?? [];
    queue.push(message);
    this.busQueues.set(to, queue);
  }

  /**
   * PUT /channels/{name}: adds the channel and offers it to its VMs (created = true), or, for a
   * channel that exists with the same settings, offers it again after a rescind. Both ends must
   * be VMs of the host's own thread (the bus does not relay across worker threads, docs/bus.md);
   * a VM that exists already must have been created with a channel device (a channel named it
   * then), since a device cannot be added to a running machine.
   */
  putChannel(spec: ChannelSpec): ChannelPutResult {
    if (this.channelThreads.has(spec.name)) throw new HostError(409, `channel '${spec.name}' reaches a worker group: it comes from the host configuration and cannot be changed through the API`);
    const existing = this.channelSpecs.get(spec.name);
    if (existing !== undefined) {
      if (JSON.stringify(existing) !== JSON.stringify(spec)) throw new HostError(409, `channel '${spec.name}' exists with other settings: DELETE it first`);
      return { created: false, channel: this.bus.offer(spec.name) };
    }
    this.addChannel(spec, `channel '${spec.name}'`);
    return { created: true, channel: this.bus.info(spec.name) };
  }

  /** DELETE /channels/{name}: rescinds the channel at once (in use or not) and forgets it. */
  deleteChannel(name: string): void {
    if (this.channelThreads.has(name)) throw new HostError(409, `channel '${name}' reaches a worker group: it comes from the host configuration and cannot be changed through the API`);
    if (!this.bus.has(name)) throw new HostError(404, `no channel named '${name}'`);
    this.bus.removeChannel(name);
    this.channelSpecs.delete(name);
  }

  private addChannel(spec: ChannelSpec, where: string): void {
    for (const vmName of spec.service === 'echo' ? [spec.client] : [spec.client, spec.server]) {
      const remote = this.remote.get(vmName) ?? (this.startingInGroups.has(vmName) ? { group: { name: 'starting' } } : undefined);
      if (remote !== undefined) throw new HostError(409, `${where}: VM '${vmName}' runs in worker group '${remote.group.name}': channels reach only VMs in the host's own thread (docs/bus.md)`);
      const m = this.machines.get(vmName);
      if (m !== undefined && this.bus.deviceOf(vmName)?.vm !== m.vm) {
        throw new HostError(409, `${where}: VM '${vmName}' has no channel device (it was created before any channel named it): add the channel before creating the VM, or in the host configuration`);
      }
    }
    try {
      this.bus.addChannel({ name: spec.name, service: spec.service, client: spec.client, server: spec.server, versions: spec.versions, ringPages: spec.ringPages });
    } catch (error) {
      if (error instanceof BusError) throw new HostError(400, `${where}: ${error.message}`);
      throw error;
    }
    this.channelSpecs.set(spec.name, { ...spec, versions: [...spec.versions] });
  }

  /** GET /host/stats: this thread's report and each worker group's. */
  async allHostStats(): Promise<HostStatsReport> {
    const report = this.hostStats();
    if (this.placement !== null) report.placement = this.placement.status();
    if (this.storage !== null) report.storage_io = this.storage.status();
    const sharing = this.crossThread.sharingStats();
    if (sharing !== null) report.cross_thread_sharing = sharing;
    if (this.groups.size > 0) {
      const reports = await Promise.all(this.liveGroups().map(async (group) => ({ name: group.name, stats: await group.calls.hostStats().catch(() => null) })));
      report.worker_groups = reports.filter((r): r is WorkerGroupStats => r.stats !== null);
    }
    return report;
  }

  // ------------------------------------------------------------------------------- storage IO

  /**
   * Turns decentralised IO control on (the config's `storage_io`, docs/storage-io.md): a PARDA
   * controller claims its slot in the statistics file and gates every asynchronous disk of the
   * VMs booted after this. Refused when already on, or when the slot is taken (another live host).
   */
  enableStorageIo(spec: StorageIoSpec, name?: string): void {
    if (this.storage !== null) throw new HostError(409, 'storage_io is already on');
    if (spec.statsFile === null) throw new HostError(400, 'storage_io: stats_file is needed (no VM disk to put it next to)');
    const statsFile = spec.statsFile;
    this.storage = guard(() => PardaController.open({
      statsFile, hostId: spec.hostId, ...(name === undefined ? {} : { name }), thresholdMs: spec.thresholdMs, gamma: spec.gamma, alpha: spec.alpha,
      beta: spec.beta, windowMin: spec.windowMin, windowMax: spec.windowMax, periodMs: spec.periodMs, sizeKneeKib: spec.sizeKneeKib, control: spec.control,
    }), 'storage_io');
    this.storage.start();
    this.log(`host: storage_io on: slot ${spec.hostId} of ${statsFile}, threshold ${spec.thresholdMs} ms, ${spec.control ? 'controlled' : 'measuring only'}`);
  }

  /**
   * In a worker group's Host: its VMs' asynchronous disks go through `gate`, which starts their
   * requests against credits from the main host's controller (remote-gate.ts).
   * @internal
   */
  enableRemoteIo(gate: RemoteIoGate): void {
    this.remoteGate = gate;
  }

  /**
   * Credits from the main host's controller for this group's VMs.
   * @internal
   */
  remoteIoGrants(grants: RemoteIoGrant[]): void {
    this.remoteGate?.grant(grants);
  }

  /** A group VM that will complete nothing more (its thread died): it leaves the controller with its credits. */
  private releaseRemoteIo(name: string): void {
    const storage = this.storage;
    if (storage === null) return;
    const held = storage.vmStatus(name)?.in_flight ?? 0;
    storage.removeVm(name);
    storage.release(name, held);
  }

  /** A worker group's storage_io reports: applied to the controller, its credits sent back. */
  private remoteIo(group: string, events: Parameters<RemoteIoLink['receive']>[0], grant: (grants: RemoteIoGrant[]) => void): void {
    if (this.storage === null) return;
    let link = this.ioLinks.get(group);
    if (link === undefined) {
      link = new RemoteIoLink(this.storage, grant);
      this.ioLinks.set(group, link);
    }
    link.receive(events);
  }

  /** The controller, or 404 when storage_io is off. */
  private storageIo(): PardaController {
    if (this.storage === null) throw new HostError(404, 'storage_io is off (storage_io in docs/host.md)');
    return this.storage;
  }

  /** GET /host/storage: window, L(t), this host's IOPS and throughput, its VMs, the other hosts' blocks. */
  storageStatus(): StorageIoStatus {
    return this.storageIo().status();
  }

  /** PATCH /host/storage: 𝓛, the law's constants, window bounds, control on or off; answers the new status. */
  setStorageIo(update: StorageIoUpdate): StorageIoStatus {
    const storage = this.storageIo();
    try {
      storage.update(update);
    } catch (error) {
      if (error instanceof StorageIoError) throw new HostError(400, error.message);
      throw error;
    }
    return storage.status();
  }

  /** PATCH /vms/{name} {io_shares}: the VM's share of the host's IO window. */
  setIoShares(name: string, shares: number): void {
    // A group VM's shares live in this host's controller, which grants its group the credits.
    if (this.remote.has(name) && this.storage !== null) {
      if (!this.storage.setShares(name, shares)) this.storage.addVm(name, shares);
      return;
    }
    this.checkLocal(name, 'io_shares');
    const m = this.get(name);
    if (m.spec !== null) m.spec = { ...m.spec, ioShares: shares };
    if (this.storage !== null && !this.storage.setShares(name, shares)) this.storage.addVm(name, shares);
  }

  /**
   * The disk options of a VM whose disk is asynchronous (`disk.async`): the device takes
   * requests in flight, gated by storage_io when it is on.
   */
  private asyncDiskOptions(spec: Pick<VmSpec, 'name' | 'disk'>): Partial<StandardDeviceOptions> {
    const disk = spec.disk;
    if (disk === null || disk.async !== true) return {};
    return {
      disk: { path: disk.path, async: true, ...(disk.direct === true ? { direct: true } : {}), ...(disk.overlayDir === undefined ? {} : { overlayDir: disk.overlayDir }) },
      ...(this.storage === null ? {} : { diskGate: this.storage, diskOwner: spec.name }),
      ...(this.remoteGate === null ? {} : { diskGate: this.remoteGate, diskOwner: spec.name }),
    };
  }

  /** A VM with an asynchronous disk: its completions wake the scheduler; storage_io learns its shares. */
  private attachAsyncDisk(m: HostedVm, spec: Pick<VmSpec, 'name' | 'disk' | 'ioShares'>): void {
    const block = m.devices.block;
    if (block === null || spec.disk?.async !== true) return;
    block.onCompletion = () => this.kick();
    this.storage?.addVm(spec.name, spec.ioShares);
  }

  /**
   * A restored, forked or arriving VM's disk as its device was (asynchronous, O_DIRECT): its guest
   * may have found the queue and use it. Shares: the default, or the parent's.
   */
  private carriedDisk(name: string, path: string | null, mode: { async: boolean; direct: boolean }, ioShares = 1000): Pick<VmSpec, 'name' | 'disk' | 'ioShares'> {
    return { name, ioShares, disk: path === null || !mode.async ? null : { path, async: true, direct: mode.direct } };
  }

  /** GET /vms/{name}/memory-policy. */
  memoryPolicy(name: string): MemoryPolicyInfo {
    const m = this.get(name);
    const shares = m.policy.shares ?? defaultShares(m.vm.memoryBytes);
    const held = m.vm.memory.presentPages;
    const f = heldActiveFraction(m);
    const tax = this.memory === null ? null : this.memory.scheduler.taxRate;
    return {
      shares,
      reservation_mib: m.policy.minPages / (MIB / 4096),
      limit_mib: m.policy.maxPages === null ? null : m.policy.maxPages / (MIB / 4096),
      frames_held: held,
      active_pages: m.sampler === null ? null : m.sampler.activePages,
      active_fraction: f,
      tax_rate: tax,
      shares_per_page: tax === null || held === 0 ? null : adjustedSharesPerPage(shares, held, f ?? 1, tax),
    };
  }

  /** PATCH /vms/{name}/tier: switches the VM's execution tier (it takes effect at its next slice). */
  setTier(name: string, tier: Tier): VmInfo {
    const m = this.get(name);
    m.vm.setTier(tier);
    return this.vmInfo(name);
  }

  /** PATCH /vms/{name}/memory-policy: shares, reservation and limit, checked against the VM's memory. */
  setMemoryPolicy(name: string, update: MemoryPolicyUpdate): MemoryPolicyInfo {
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'change the memory policy of');
    const memoryMib = m.vm.memoryBytes / MIB;
    const reservation = update.reservation_mib ?? m.policy.minPages / (MIB / 4096);
    const limit = update.limit_mib === undefined ? (m.policy.maxPages === null ? null : m.policy.maxPages / (MIB / 4096)) : update.limit_mib;
    if (reservation > memoryMib) throw new HostError(400, `reservation_mib: is ${reservation} MiB, more than VM '${name}''s memory (${memoryMib} MiB)`);
    if (limit !== null && limit > memoryMib) throw new HostError(400, `limit_mib: is ${limit} MiB, more than VM '${name}''s memory (${memoryMib} MiB)`);
    if (limit !== null && limit < reservation) throw new HostError(400, `limit_mib: is ${limit} MiB, less than the reservation (${reservation} MiB)`);
    m.policy = {
      shares: update.shares ?? m.policy.shares,
      minPages: reservation * (MIB / 4096),
      maxPages: limit === null ? null : limit * (MIB / 4096),
    };
    if (this.memory !== null) guard(() => this.memory!.scheduler.setAllocation(m.vm, { ...m.policy, shares: m.policy.shares ?? defaultShares(m.vm.memoryBytes) }), `memory policy of '${name}'`);
    this.log(`vm ${name}: memory policy ${JSON.stringify(update)}`);
    return this.memoryPolicy(name);
  }

  /** GET /vms/{name}/active-memory: the sampler's figures (409 when sampling is off for the VM). */
  activeMemory(name: string): ActiveMemoryStats {
    const m = this.get(name);
    if (m.sampler === null) throw new HostError(409, `VM '${name}' has no active memory sampling (memory_policy.active_sampling is null)`);
    return m.sampler.stats();
  }

  /** GET /vms/{name}/mrc: the curve and the size it recommends within `within` of its floor (409 when the VM has no curve). */
  missRateCurve(name: string, within: number): MrcInfo {
    const m = this.get(name);
    if (m.mrc === null) throw new HostError(409, `VM '${name}' has no miss-rate curve (memory_policy.mrc is null)`);
    const curve = m.mrc.curve();
    const pages = m.mrc.sizeWithin(within);
    return { curve, recommended: { within, target_miss_ratio: curve.floor + within, pages, mib: round3(pages / (MIB / 4096)) } };
  }

  /**
   * POST /vms/{name}/mrc/size {within}: sizes the VM from its curve — its limit becomes the
   * smallest size within `within` of the curve's floor (never below its reservation), which the
   * memory scheduler then enforces. Returns the policy.
   */
  sizeFromMrc(name: string, within: number): MemoryPolicyInfo {
    const m = this.get(name);
    const { recommended } = this.missRateCurve(name, within);
    if (recommended.pages <= 0) throw new HostError(409, `VM '${name}''s curve has seen no references yet: nothing to size from`);
    const mib = Math.min(m.vm.memoryBytes / MIB, Math.max(m.policy.minPages / (MIB / 4096), Math.ceil(recommended.mib)));
    this.log(`vm ${name}: sized from its miss-rate curve: ${mib} MiB (miss ratio within ${within} of the floor ${recommended.target_miss_ratio - within})`);
    return this.setMemoryPolicy(name, { limit_mib: mib });
  }

  /** PATCH /host/reclaim {tax_rate}: the idle memory tax rate of the memory scheduler. */
  setTaxRate(taxRate: number): TaxRateInfo {
    if (this.memory === null) throw new HostError(409, 'the host has no memory scheduler (reclaim is off): there is no tax to set');
    guard(() => this.memory!.scheduler.setTaxRate(taxRate), 'tax_rate');
    this.log(`host: idle memory tax rate ${taxRate}`);
    return { tax_rate: taxRate };
  }

  /**
   * Turns on the memory scheduler (docs/overcommit.md): the reclaim ladder over the pool's free
   * memory, ballooning by usage classes, hypervisor swap, page sharing, blocking at low, MEMINFO
   * updates. It ticks after every scheduling round. Host.start does this for `reclaim`.
   */
  enableReclaim(spec: ReclaimSpec): void {
    if (this.memory !== null) throw new HostError(409, 'the memory scheduler is on already');
    if (this.groups.size > 0) throw new HostError(409, 'turn the memory scheduler on before starting worker groups (each group runs one over its VMs)');
    this.reclaimSpec = spec;
    const swap = SwapFile.createIn(spec.swapDir ?? tmpdir());
    try {
      const scheduler = new MemoryScheduler(this.hv, {
        thresholds: spec.thresholds,
        taxRate: spec.taxRate,
        activeFraction: (vm) => {
          const m = this.byVm(vm);
          return m === undefined ? null : heldActiveFraction(m);
        },
        swap,
        sharer: spec.sharing ? new PageSharer(this.hv) : null,
        // Blocking is the host's pause, so the API shows it and nothing else resumes the VM.
        block: (vm, reason) => {
          const m = this.byVm(vm);
          if (m === undefined || m.state !== 'Running') return;
          m.state = 'Paused';
          m.blockedByMemory = true;
          this.log(`vm ${m.name}: blocked: ${reason}`);
        },
        unblock: (vm) => {
          const m = this.byVm(vm);
          if (m === undefined || !m.blockedByMemory) return;
          m.blockedByMemory = false;
          if (m.state === 'Paused') m.state = 'Running';
          this.log(`vm ${m.name}: unblocked: memory freed`);
          this.kick();
        },
      });
      this.memory = { scheduler, swap };
      for (const [vm, clean] of this.cleanCopies) swap.keepCleanCopies(vm, clean);
    } catch (error) {
      swap.close();
      throw error instanceof BvError ? new HostError(400, `reclaim: ${error.message}`, { cause: error }) : error;
    }
    for (const m of this.machines.values()) this.manage(m);
  }

  /** The post-copy that brought VM `name` here whole, while that VM is still here (else forgotten). */
  private completedPostcopy(name: string): MigrationReceiver | null {
    const receiver = this.completedPostcopies.get(name);
    if (receiver === undefined) return null;
    if (receiver.vm !== null && this.machines.get(name)?.vm === receiver.vm) return receiver;
    this.completedPostcopies.delete(name);
    return null;
  }

  private byVm(vm: Vm): HostedVm | undefined {
    for (const m of this.machines.values()) if (m.vm === vm) return m;
    return undefined;
  }

  /** GET /vms/{name}/console: output from `offset`, at most `limit` bytes. */
  readConsole(name: string, offset: number, limit: number): ConsoleSlice {
    const m = this.get(name);
    m.devices.console.flush();
    return m.console.read(offset, limit);
  }

  /** The Vm object of a hosted VM (for services that act on it: policies, tests). */
  vm(name: string): Vm {
    return this.get(name).vm;
  }

  /** Resolves when the VM has stopped (at once if it has). */
  whenStopped(name: string): Promise<VmInfo> {
    const remote = this.remote.get(name);
    if (remote !== undefined) return remote.group.calls.whenStopped(name);
    const m = this.get(name);
    if (m.state === 'Stopped') return Promise.resolve(this.describe(m));
    return new Promise((resolve) => m.stopWaiters.push(() => resolve(this.describe(m))));
  }

  // ---------------------------------------------------------------------------- operations

  /** PUT /vms/{name}: creates and boots a VM from a configuration. */
  async createVm(spec: VmSpec): Promise<VmInfo> {
    if (spec.group !== undefined) {
      const group = this.group(spec.group);
      if (this.bus.namesVm(spec.name)) throw new HostError(409, `VM '${spec.name}': a channel names it, and channels reach only VMs in the host's own thread (docs/bus.md)`);
      this.checkNewName(spec.name);
      this.checkFits(spec.memoryBytes, `VM '${spec.name}'`);
      this.remote.set(spec.name, { group, memoryBytes: spec.memoryBytes });
      if (spec.disk?.async === true) this.storage?.addVm(spec.name, spec.ioShares);
      try {
        const info = await group.calls.createVm(spec);
        group.vmNames.add(spec.name);
        return info;
      } catch (error) {
        this.remote.delete(spec.name);
        this.storage?.removeVm(spec.name);
        throw error;
      }
    }
    this.checkNewName(spec.name);
    const image = loadImage(spec.image, 'image');
    return this.describe(this.boot(spec, image, ''));
  }

  /** Takes a machine built elsewhere under the host's scheduler and API (tools/run --api-sock). */
  adoptVm(vm: Vm, devices: StandardDevices, options: AdoptOptions): VmInfo {
    this.checkNewName(vm.name);
    const m = new HostedVm(vm.name, vm, devices, options.consoleLog, options.origin, options.disk ?? null, options.restored ?? null, false, options.maxInstructions ?? null);
    m.kept = options.keep ?? false;
    this.add(m);
    return this.describe(m);
  }

  /**
   * Gives an adopted VM back to its owner: the host stops scheduling it and forgets it without
   * freeing it (a live snapshot in progress is completed first).
   */
  releaseVm(name: string): void {
    const m = this.get(name);
    if (m.live) this.finishLive(m, true);
    this.machines.delete(name);
    for (const wake of m.stopWaiters.splice(0)) wake();
  }

  /** PATCH /vms/{name} {"state": "Paused"}: the VM stops between slices; its instruction count stays. */
  pause(name: string): VmInfo {
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'pause');
    if (m.state === 'Paused') throw new HostError(409, `VM '${name}' is already paused`);
    m.state = 'Paused';
    this.log(`vm ${name}: paused at instruction ${m.vm.instructionsRetired}`);
    return this.describe(m);
  }

  /** PATCH /vms/{name} {"state": "Resumed"}. */
  resume(name: string): VmInfo {
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'resume');
    if (m.state === 'Running') throw new HostError(409, `VM '${name}' is not paused`);
    if (m.migration !== null && m.migration.figures.state === 'switchover') throw new HostError(409, `VM '${name}' is being switched over to another host`);
    if (m.migration?.figures.state === 'postcopy' || m.postcopy !== null) {
      throw new HostError(409, `VM '${name}' runs on ${m.postcopy?.destination ?? 'the destination'} now (post-copy); it stays paused here with the pages that host still lacks: migrate it again to resume the post-copy`);
    }
    m.state = 'Running';
    m.blockedByMemory = false; // the operator's resume overrides the memory scheduler's block
    this.log(`vm ${name}: resumed`);
    this.kick();
    return this.describe(m);
  }

  /** PUT /vms/{name}/console: input for the guest; `eof` closes the input (the guest sees its end). */
  sendInput(name: string, data: string, eof: boolean): void {
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'send input to');
    const console = m.devices.console;
    if (data.length > 0) {
      try {
        console.pushInput(new TextEncoder().encode(data));
      } catch {
        // Input after closeInput: the guest may already have seen the end.
        throw new HostError(409, `the console input of VM '${name}' is closed`);
      }
    }
    if (eof) console.closeInput();
    m.waitingForInput = false;
    this.kick();
  }

  /**
   * PUT /vms/{name}/snapshot: a checkpoint of the VM at `path`. Stop-the-world saves it now;
   * live pauses the guest only to capture its state and resolves when the file is complete.
   */
  async snapshot(name: string, path: string, live: boolean): Promise<SnapshotResult> {
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'snapshot');
    if (m.live) throw new HostError(409, `VM '${name}' already has a snapshot in progress (${m.live.snapshot.path})`);
    const started = performance.now();
    if (!live) {
      const stats = guard(() => saveVmCheckpoint(m.vm, path), `snapshot of '${name}'`);
      const ms = performance.now() - started;
      this.log(`vm ${name}: snapshot ${path} (${stats.fileBytes} bytes) in ${ms.toFixed(1)} ms`);
      return { path, live: false, file_bytes: stats.fileBytes, pages_stored: stats.pagesStored, zero_pages: stats.zeroPages, pause_ms: round3(ms), duration_ms: round3(ms) };
    }
    const snapshot = guard(() => startLiveSnapshot(m.vm, path), `live snapshot of '${name}'`);
    return new Promise<SnapshotResult>((resolve, reject) => {
      m.live = { snapshot, started, done: (outcome) => (outcome instanceof Error ? reject(outcome) : resolve(outcome)) };
      // A paused VM runs no ticker: save the rest now.
      if (m.state !== 'Running') this.finishLive(m, true);
    });
  }

  /** PUT /vms/restore: a new VM from a checkpoint file. */
  async restore(path: string, name: string | undefined, mode: RestoreMode, paused: boolean, group?: string): Promise<RestoreResult> {
    if (group !== undefined) return this.restoreInGroup(this.group(group), path, name, mode, paused);
    if (name !== undefined) this.checkNewName(name);
    let log: ConsoleLog | null = null;
    let devices: StandardDevices | null = null;
    let disk: string | null = null;
    let carried: ReturnType<Host['carriedDisk']> | null = null;
    let sampler: ActiveMemorySampler | null = null;
    const restored = guard(() => restoreVmCheckpoint(this.hv, path, {
      mode,
      ...(name === undefined ? {} : { name }),
      attach: (vm, saved) => {
        if (name === undefined) this.checkNewName(vm.name);
        this.checkFits(vm.config.memoryBytes, `restore of ${path}`, vm);
        log = new ConsoleLog(this.settings.consoleBufferBytes);
        const block = saved.components['block']?.state;
        disk = block === undefined ? null : savedBlockDisk(block);
        // A saved balloon gets a device; its state (target, settings, pages) is restored into it.
        const balloon = saved.components['balloon'] === undefined ? null : {};
        carried = this.carriedDisk(vm.name, disk, block === undefined ? { async: false, direct: false } : savedBlockMode(block));
        devices = attachStandardDevices(vm, { ...this.deviceOptions(log, savedBootArgs(saved.components['bootargs']?.state ?? { text: '' }), disk, null, false, balloon, saved.components['meminfo'] !== undefined), ...this.asyncDiskOptions(carried) });
        // A sampled VM's checkpoint holds its sampler's state: a sampler must be there to take it.
        if (saved.components[ACTIVE_MEMORY_STATE] !== undefined) sampler = this.attachSampler(vm, null);
        // A VM saved with channels gets its channel device back; the bus re-links them by name.
        if (saved.components['channel'] !== undefined) this.bus.attachVm(vm, this.hv);
      },
    }), `restore of ${path}`);
    const m = new HostedVm(restored.vm.name, restored.vm, devices!, log!, { kind: 'checkpoint', path, mode }, disk, restored, paused, null);
    m.sampler = sampler;
    if (carried !== null) this.attachAsyncDisk(m, carried);
    this.add(m);
    return { ...this.describe(m), restore: { mode, ready_ms: round3(restored.firstInstructionReadyMs), stored_pages: restored.storedPages, complete: restored.complete } };
  }

  /**
   * PUT /vms/restore with a group: the checkpoint's name and size are read here first and checked
   * against this host's VMs and pool (reserved while the group's host restores it), as for a VM
   * created in a group.
   */
  private async restoreInGroup(group: WorkerGroup, path: string, name: string | undefined, mode: RestoreMode, paused: boolean): Promise<RestoreResult> {
    const saved = guard(() => readVmCheckpointConfig(path), `restore of ${path}`);
    const vmName = name ?? saved.name;
    if (vmName === undefined) throw new HostError(400, `restore of ${path}: the checkpoint names no VM; give one (name)`);
    this.checkNewName(vmName);
    this.checkFits(saved.memoryBytes, `restore of ${path}`);
    this.remote.set(vmName, { group, memoryBytes: saved.memoryBytes });
    try {
      const result = await group.calls.restore(path, vmName, mode, paused);
      group.vmNames.add(vmName);
      return result;
    } catch (error) {
      this.remote.delete(vmName);
      throw error;
    }
  }

  /** PUT /vms/{name}/fork: a child that shares the parent's memory copy-on-write. */
  async fork(parentName: string, childName: string, paused: boolean): Promise<VmInfo> {
    const remote = this.remote.get(parentName);
    if (remote !== undefined) {
      // The child stays in its parent's group: they share frames, and a fork is within one hypervisor.
      this.checkNewName(childName);
      this.checkFits(remote.memoryBytes, `fork '${childName}'`);
      this.remote.set(childName, { group: remote.group, memoryBytes: remote.memoryBytes });
      // storage_io: the child's disk is its parent's kind, gated with the parent's shares.
      const parentShares = this.storage?.sharesOf(parentName) ?? null;
      if (parentShares !== null) this.storage?.addVm(childName, parentShares);
      try {
        const info = await remote.group.calls.fork(parentName, childName, paused);
        remote.group.vmNames.add(childName);
        return info;
      } catch (error) {
        this.remote.delete(childName);
        if (parentShares !== null) this.storage?.removeVm(childName);
        throw error;
      }
    }
    const parent = this.get(parentName);
    if (parent.state === 'Stopped') throw this.stoppedError(parent, 'fork');
    if (parent.live) throw new HostError(409, `VM '${parentName}' has a snapshot in progress: fork it when the snapshot is complete`);
    this.checkNewName(childName);
    this.checkFits(parent.vm.config.memoryBytes, `fork '${childName}'`);
    const log = new ConsoleLog(this.settings.consoleBufferBytes);
    let sampler: ActiveMemorySampler | null = null;
    const parentBlock = parent.devices.block;
    const carried = this.carriedDisk(childName, parent.disk, { async: parentBlock?.async === true, direct: parentBlock?.disk.direct === true }, parent.spec?.ioShares);
    const { vm, devices } = guard(() => this.hv.forkVmWith(parent.vm, {
      name: childName,
      attach: (child) => {
        const attached = attachStandardDevices(child, { ...this.deviceOptions(log, parent.devices.bootArgs.text, parent.disk, null, false, parent.devices.balloon === null ? null : {}, parent.devices.meminfo !== null), ...this.asyncDiskOptions(carried) });
        // The child carries on with the parent's estimate (the sampler's state is copied like a device's).
        if (parent.sampler !== null) sampler = this.attachSampler(child, { pagesPerPeriod: parent.sampler.stats().pages_per_period, periodInstructions: parent.sampler.stats().period_instructions });
        // Same device layout as the parent; the bus leaves the child's slots empty (the parent keeps its channels).
        if (this.bus.deviceOf(parentName)?.vm === parent.vm) this.bus.attachVm(child, this.hv);
        return attached;
      },
    }), `fork of '${parentName}'`);
    const m = new HostedVm(childName, vm, devices, log, { kind: 'fork', parent: parentName }, parent.disk, null, paused, null);
    m.policy = { ...parent.policy };
    m.sampler = sampler;
    this.attachAsyncDisk(m, carried);
    // A curve is built from references seen; the child starts its own (docs/mrc.md).
    if (parent.mrcOptions !== null) {
      m.mrc = this.attachMrc(vm, parent.mrcOptions);
      m.mrcOptions = parent.mrcOptions;
    }
    this.add(m);
    return this.describe(m);
  }

  /**
   * POST /host/reallocate: moves `mib` of memory from one VM to another through their balloons
   * without a copy (T-5, services/memory/reallocate.ts): `from`'s balloon grows by that much, and
   * `to`'s shrinks as the frames arrive. Both need a balloon; `to`'s must hold at least that much
   * (the room it grows into). Answers at once; GET /host shows the progress.
   */
  reallocate(fromName: string, toName: string, mib: number): ReallocationStatus | Promise<ReallocationStatus> {
    if (fromName === toName) throw new HostError(400, 'a reallocation moves memory between two different VMs');
    const from_ = this.remote.get(fromName);
    const to_ = this.remote.get(toName);
    // Two VMs of one group reallocate in their group; VMs of different threads through a relay here.
    if (from_ !== undefined && to_ !== undefined && from_.group === to_.group) return from_.group.calls.reallocate(fromName, toName, mib);
    if (from_ !== undefined || to_ !== undefined) return this.crossThread.reallocate(fromName, toName, mib);
    const from = this.get(fromName);
    const to = this.get(toName);
    for (const m of [from, to]) {
      if (m.state === 'Stopped') throw this.stoppedError(m, 'reallocate memory of');
      if (this.reallocations.some((r) => r.state === 'running' && (r.from.vm === m.vm || r.to.vm === m.vm))) {
        throw new HostError(409, `VM '${m.name}' already takes part in a reallocation`);
      }
    }
    const pages = mib * (MIB / 4096);
    const fromBalloon = this.balloonOf(from);
    const toBalloon = this.balloonOf(to);
    const free = from.vm.memory.pageCount - fromBalloon.target;
    if (pages > free) throw new HostError(409, `VM '${fromName}' has ${free} pages outside its balloon: it cannot give ${pages}`);
    if (pages > toBalloon.target) throw new HostError(409, `VM '${toName}''s balloon target is ${toBalloon.target} pages: it has no room to grow by ${pages} (give it a balloon that large first)`);
    const transfer = guard(() => new Reallocation(this.hv, { vm: from.vm, balloon: fromBalloon }, { vm: to.vm, balloon: toBalloon }, pages), 'reallocation');
    this.reallocations.push(transfer);
    if (this.reallocations.length > MAX_REALLOCATIONS_KEPT) this.reallocations.splice(0, this.reallocations.findIndex((r) => r.state !== 'running') + 1 || 1);
    this.log(`host: reallocating ${mib} MiB from ${fromName} to ${toName}`);
    return transfer.status();
  }

  // ------------------------------------------------------------------------------ migration

  /** PUT /migrations/receive {listen}: receives migrations on host:port (port 0: any free one). */
  async receiveMigrations(listen: string): Promise<MigrationsInfo> {
    if (this.closed) throw new HostError(409, 'the host is shutting down');
    if (this.migrationListener !== null) throw new HostError(409, `this host already receives migrations on ${this.listeningAddress()}`);
    const { host, port } = parseAddress(listen, 'listen');
    const listener = await guardPeer(() => TransportServer.listen({ ...this.channelOptions(), host, port }), `receiving migrations on ${listen}`, 400);
    listener.onRefused = ({ remote, error }) => this.log(`host: refused a migration from ${remote}: ${error.message}`);
    this.migrationListener = listener;
    this.log(`host: receiving migrations on ${this.listeningAddress()}`);
    void this.acceptMigrations(listener);
    return this.migrations();
  }

  /** DELETE /migrations/receive: stops receiving (migrations under way finish). */
  async stopReceivingMigrations(): Promise<void> {
    const listener = this.migrationListener;
    if (listener === null) throw new HostError(409, 'this host does not receive migrations');
    this.migrationListener = null;
    await listener.close();
  }

  /** GET /migrations. */
  /** GET /migrations with the worker groups' outgoing migrations (their VMs migrate from their own threads). */
  async allMigrations(): Promise<MigrationsInfo> {
    const info = this.migrations();
    for (const group of this.liveGroups()) info.outgoing.push(...((await group.calls.migrations().catch(() => null))?.outgoing ?? []));
    return info;
  }

  /** GET /migrations (this thread's). */
  migrations(): MigrationsInfo {
    const listener = this.migrationListener;
    return {
      listening: listener === null ? null : this.listeningAddress(),
      secure: this.migrationSettings.tls !== null,
      incoming: [...this.incomingMigrations],
      outgoing: [...this.outgoingMigrations],
      refused: (listener?.refused ?? []).map(({ remote, error }) => ({ remote, code: error.code, message: error.message })),
    };
  }

  /** GET /vms/{name}/migration: the migration in progress (404 when there is none). */
  vmMigration(name: string): MigrationFigures {
    const m = this.get(name);
    if (m.migration === null) throw new HostError(404, `VM '${name}' is not being migrated`);
    return m.migration.figures;
  }

  /**
   * PUT /vms/{name}/migrate: moves the VM to another host by pre-copy while it runs. Resolves once
   * it runs there; the VM is then removed here. On failure before the switch-over the VM runs on
   * here as before; after it (the destination may have the VM) it stays paused here and the error
   * says so.
   */
  async migrate(name: string, request: MigrateRequest): Promise<MigrationResult> {
    const remote = this.remote.get(name);
    if (remote !== undefined) {
      // The group's own host migrates it (the guest and the sender share the group's thread);
      // once it has left, the name is free here too.
      const result = await remote.group.calls.migrate(name, request);
      if (!(await remote.group.calls.names()).includes(name)) {
        this.remote.delete(name);
        remote.group.vmNames.delete(name);
        this.storage?.removeVm(name); // its last completions still release their credits
      }
      return result;
    }
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'migrate');
    if (m.migration !== null) throw new HostError(409, `VM '${name}' is already being migrated`);
    if (m.postcopy !== null) return this.resumePostcopy(m, request);
    if (m.live) throw new HostError(409, `VM '${name}' has a snapshot in progress: migrate it when the snapshot is complete`);
    if (m.kept) throw new HostError(409, `VM '${name}' belongs to the process that runs it and cannot leave this host`);
    const mode = request.mode ?? 'precopy';
    if (mode !== 'precopy' && mode !== 'postcopy') throw new HostError(400, `mode must be precopy or postcopy, got '${String(request.mode)}'`);
    const { host, port } = parseAddress(request.destination, 'destination');
    const channel = await guardPeer(() => connectPeer({ ...this.channelOptions(), host, port }), `migration of '${name}' to ${request.destination}`, 502);
    const wasRunning = m.state === 'Running';
    const options = {
      attach: {
        boot_args: m.devices.bootArgs.text, disk: m.disk, balloon: m.devices.balloon !== null, meminfo: m.devices.meminfo !== null,
        disk_async: m.devices.block?.async === true, disk_direct: m.devices.block?.disk.direct === true,
        channels: this.bus.deviceOf(m.name)?.vm === m.vm,
        // Services that keep state in the VM's checkpoint must be there to take it; the others follow the VM.
        active_sampling: m.sampler === null ? null : { pagesPerPeriod: m.sampler.stats().pages_per_period, periodInstructions: m.sampler.stats().period_instructions },
        mrc: m.mrcOptions,
        policy: { shares: m.policy.shares, minPages: m.policy.minPages, maxPages: m.policy.maxPages },
      },
      ...(request.downtime_ms === undefined ? {} : { downtimeMs: request.downtime_ms }),
      ...(request.max_bandwidth === undefined ? {} : { maxBandwidth: request.max_bandwidth }),
      ...(request.timeout_s === undefined ? {} : { timeoutS: request.timeout_s }),
      mode,
      disk: m.devices.block,
      // Taken at the switch-over, the guest paused: input sent to it but not yet read goes along.
      extra: () => carriedConsoleInput(m.devices.console),
      onSwitchedOver: () => this.log(`vm ${name}: runs on ${request.destination} now (post-copy); pushing the pages it lacks`),
    };
    const sender = guard(() => new PrecopySender(m.vm, channel, {
      pause: () => {
        if (m.state === 'Running') m.state = 'Paused';
      },
      resume: () => {
        if (wasRunning && m.state === 'Paused') {
          m.state = 'Running';
          this.kick();
        }
      },
      throttle: (fraction) => {
        m.throttle = fraction;
        m.throttleCredit = 0;
        if (fraction > 0) this.log(`vm ${name}: auto-converge: running ${Math.round((1 - fraction) * 100)} % of its turns`);
      },
    }, options), `migration of '${name}'`);
    m.migration = sender;
    this.log(`vm ${name}: migrating to ${request.destination} (${mode === 'postcopy' ? 'post-copy' : 'pre-copy'})`);
    try {
      const figures = await sender.run();
      this.migrationCounters.noteSent(figures);
      const result = this.noteOutgoing({ name, destination: request.destination, instructions: m.vm.instructionsRetired, ...figures });
      this.log(`vm ${name}: migrated to ${request.destination} in ${figures.total_ms} ms (downtime ${figures.downtime_ms} ms, ${figures.rounds + 1} rounds, ${figures.bytes_sent} bytes)`);
      if (this.machines.get(name) === m) {
        this.machines.delete(name);
        this.dispose(m, `VM '${name}' migrated to ${request.destination}`);
      }
      return result;
    } catch (error) {
      this.migrationCounters.noteSent(sender.figures);
      this.noteOutgoing({ name, destination: request.destination, instructions: m.vm.instructionsRetired, ...sender.figures });
      const message = error instanceof Error ? error.message : String(error);
      if (sender.ambiguous && sender.figures.postcopy !== null) {
        m.postcopy = { sender, destination: request.destination };
        this.log(`vm ${name}: post-copy to ${request.destination} failed after the switch-over: the VM stays paused here with every page (${message})`);
        throw new HostError(502, `post-copy of '${name}' to ${request.destination} failed after the switch-over: the VM runs there and this host keeps it paused with the pages it lacks; migrate it again to resume: ${message}`, { cause: error });
      }
      if (sender.ambiguous) {
        this.log(`vm ${name}: migration to ${request.destination} failed after the switch-over began: the VM stays paused here (${message})`);
        throw new HostError(502, `migration of '${name}' to ${request.destination} failed after its state was sent: the destination may be running it, so it stays paused here (resume it only if the destination does not have it): ${message}`, { cause: error });
      }
      this.log(`vm ${name}: migration to ${request.destination} failed, the VM carries on here: ${message}`);
      const status = error instanceof HostError ? error.status : (error as { code?: string }).code === 'BV_MIG_BAD_REQUEST' ? 400 : 502;
      throw new HostError(status as HostStatusCode, `migration of '${name}' to ${request.destination} failed; the VM carries on here: ${message}`, { cause: error });
    } finally {
      m.migration = null;
      m.throttle = 0;
    }
  }

  /** A post-copy that failed after its switch-over carries on over a new connection (PUT /vms/{name}/migrate again). */
  private async resumePostcopy(m: HostedVm, request: MigrateRequest): Promise<MigrationResult> {
    const { sender, destination } = m.postcopy!;
    if (request.destination !== destination) throw new HostError(409, `VM '${m.name}' runs on ${destination} now (post-copy): only a migration to it can resume`);
    const { host, port } = parseAddress(destination, 'destination');
    const channel = await guardPeer(() => connectPeer({ ...this.channelOptions(), host, port }), `post-copy of '${m.name}' to ${destination}`, 502);
    m.migration = sender;
    this.log(`vm ${m.name}: resuming its post-copy to ${destination}`);
    try {
      const figures = await sender.resumePostcopy(channel);
      this.migrationCounters.noteSent(figures);
      const result = this.noteOutgoing({ name: m.name, destination, instructions: m.vm.instructionsRetired, ...figures });
      this.log(`vm ${m.name}: post-copy to ${destination} completed after ${figures.resumptions} resumption(s)`);
      m.postcopy = null;
      if (this.machines.get(m.name) === m) {
        this.machines.delete(m.name);
        this.dispose(m, `VM '${m.name}' migrated to ${destination}`);
      }
      return result;
    } catch (error) {
      this.noteOutgoing({ name: m.name, destination, instructions: m.vm.instructionsRetired, ...sender.figures });
      const message = error instanceof Error ? error.message : String(error);
      throw new HostError(502, `post-copy of '${m.name}' to ${destination} failed again: this host keeps the VM paused with the pages it lacks; migrate it again to resume: ${message}`, { cause: error });
    } finally {
      m.migration = null;
    }
  }

  // ------------------------------------------------------- log replication and power loss (T-16)

  /** A shipper for the pmkv log in the VM's persistent memory (not started). */
  private logShipper(m: HostedVm, spec: NonNullable<VmSpec['logReplication']>, where: string): LogShipper {
    const range = m.vm.memory.fileBackedRanges[0];
    if (range === undefined) throw new HostError(400, `${where}: log replication needs pmem (the log it replicates is in the persistent memory)`);
    const { protocol: _protocol, versions: _versions, ...channel } = this.channelOptions();
    return guard(() => new LogShipper(m.name, range, spec, channel, this.log), where);
  }

  /** Receives other hosts' pmkv logs on host:port (protocol bv-pmem-log), rebuilding `<dir>/<vm>.pmem`. */
  async receiveLogs(listen: string, dir: string): Promise<LogReplicasInfo> {
    if (this.logReceiver !== null) throw new HostError(409, `this host already receives logs on ${this.logReceiver.address}`);
    const { host, port } = parseAddress(listen, 'log_replicas.listen');
    const { protocol: _protocol, versions: _versions, ...channel } = this.channelOptions();
    this.logReceiver = await guardPeer(() => LogReplicaReceiver.listen({ ...channel, host, port, dir, log: this.log }), `receiving logs on ${listen}`, 400);
    this.log(`host: receiving pmkv logs on ${this.logReceiver.address} into ${dir}`);
    return this.logReceiver.info();
  }

  /** GET /log-replicas: the logs this host receives. */
  logReplicas(): LogReplicasInfo {
    if (this.logReceiver === null) throw new HostError(404, 'this host does not receive logs (log_replicas is not configured)');
    return this.logReceiver.info();
  }

  /** DELETE /log-replicas/{name}: stops receiving the VM's log and closes its file, so a VM may map it (the application restarts from it). */
  releaseLogReplica(name: string): LogReplicaInfo {
    const info = this.logReceiver?.release(name) ?? null;
    if (info === null) throw new HostError(404, `this host holds no log of '${name}'`);
    this.log(`host: released the log of '${name}' (${info.applied_seq} records in ${info.path})`);
    return info;
  }

  /** GET /vms/{name}/log-replication. */
  logReplication(name: string): LogReplicationStatus {
    const shipper = this.get(name).logShipper;
    if (shipper === null) throw new HostError(404, `VM '${name}' has no log replication`);
    return shipper.status();
  }

  /** The power-loss hook of log replication: each VM's remaining log to its destinations, within the budget. */
  private async flushLogs(deadline: number): Promise<LogFlushReport[]> {
    const shippers = [...this.machines.values()].flatMap((m) => (m.logShipper === null ? [] : [m.logShipper]));
    return Promise.all(shippers.map((shipper) => shipper.flush(deadline)));
  }

  /**
   * Adds a reaction to power-loss notices (powerLoss). Services register theirs here; the host's
   * own (log replication) is registered first.
   */
  onPowerLoss(name: string, hook: PowerLossHook): void {
    this.powerLossHooks.push({ name, hook });
  }

  /**
   * POST /host/power-loss, or SIGTERM with a battery budget: pauses every running VM at once (no
   * guest runs on battery, so nothing it does after the notice counts), then runs every power-loss
   * hook in parallel and answers when all have settled or the budget is spent, whichever is first.
   */
  async powerLoss(batteryMs: number, reason = 'POST /host/power-loss'): Promise<PowerLossReport> {
    if (!Number.isFinite(batteryMs) || batteryMs < 0) throw new HostError(400, `battery_ms must be 0 or more, got ${String(batteryMs)}`);
    const started = performance.now();
    const deadline = started + batteryMs;
    const paused: string[] = [];
    for (const m of this.machines.values()) {
      if (m.state !== 'Running') continue;
      m.state = 'Paused';
      paused.push(m.name);
    }
    this.log(`host: power-loss notice (${reason}), battery ${batteryMs} ms: paused ${paused.length} VM${paused.length === 1 ? '' : 's'}`);
    const hooks = await Promise.all(this.powerLossHooks.map(async ({ name, hook }): Promise<PowerLossHookResult> => {
      const begun = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cutOff = new Promise<'cut'>((resolve) => {
        timer = setTimeout(() => resolve('cut'), Math.max(0, deadline - begun));
      });
      try {
        const outcome = await Promise.race([hook(deadline).then((result) => ({ result })), cutOff]);
        const ms = Math.round((performance.now() - begun) * 100) / 100;
        if (outcome === 'cut') return { name, ok: false, ms, result: null, error: `still running when the battery budget of ${batteryMs} ms ran out` };
        return { name, ok: true, ms, result: outcome.result ?? null, error: null };
      } catch (error) {
        return { name, ok: false, ms: Math.round((performance.now() - begun) * 100) / 100, result: null, error: error instanceof Error ? error.message : String(error) };
      } finally {
        clearTimeout(timer);
      }
    }));
    const report = { reason, battery_ms: batteryMs, paused, hooks, ms: Math.round((performance.now() - started) * 100) / 100 };
    for (const hook of hooks) this.log(`host: power-loss hook ${hook.name}: ${hook.ok ? 'done' : `failed (${hook.error ?? ''})`} in ${hook.ms} ms`);
    return report;
  }

  // ------------------------------------------------------------ persistent-memory HA (T-15)

  /**
   * Starts persistent-memory HA (the configuration's `pmem_ha`, docs/pmem.md "High availability"):
   * with `partner`, tracks the VMs' pmem writes, saves them there in the background and registers
   * the power-loss hook `pmem-ha`; with `listen`, receives a partner's saves into `dir`.
   */
  async enablePmemHa(spec: PmemHaSpec): Promise<void> {
    if (this.pmemHa !== null) throw new HostError(409, 'persistent-memory HA is already on');
    const { protocol: _protocol, versions: _versions, ...channel } = this.channelOptions();
    const sender = spec.partner === null ? null : guard(() => new PmemHaSender(
      { partner: spec.partner!, syncIntervalMs: spec.syncIntervalMs, onPartner: spec.onPartner, appBootArgs: spec.appBootArgs, channel, log: this.log },
      () => [...this.machines.values()].flatMap((m) => {
        const pmem = m.devices.pmem;
        return pmem == null || m.vm.memory.fileBackedRanges.length === 0 ? [] : [{ name: m.name, vm: m.vm, gpa: pmem.gpa, bytes: pmem.bytes, spec: m.spec === null ? null : { ...m.spec } }];
      }),
    ), 'pmem_ha');
    let partner: PmemHaPartner | null = null;
    if (spec.listen !== null) {
      try {
        partner = await guardPeer(() => PmemHaPartner.listen(spec.listen!, spec.dir!, channel, {
          hasVm: (name) => this.machines.has(name) || this.incomingNames.has(name),
          startVm: async (json, pmemPath, bootArgs) => {
            const { logReplication: _shipping, ...vmSpec } = json as unknown as VmSpec;
            await this.createVm({ ...vmSpec, pmem: { path: pmemPath, bytes: vmSpec.pmem!.bytes, create: false }, bootArgs: bootArgs ?? vmSpec.bootArgs, startPaused: false });
          },
          log: this.log,
        }), `pmem_ha.listen ${spec.listen}`, 400);
      } catch (error) {
        await sender?.close();
        throw error;
      }
    }
    this.pmemHa = { sender, partner };
    if (sender !== null) this.onPowerLoss('pmem-ha', (deadline) => sender.powerLoss(deadline, Math.max(0, Math.round(deadline - performance.now()))));
    this.log(`host: persistent-memory HA on${spec.partner === null ? '' : `: saving to ${spec.partner} (background every ${spec.syncIntervalMs} ms, on_partner ${spec.onPartner})`}${partner === null ? '' : `; receiving saves on ${partner.address} into ${spec.dir}`}`);
  }

  /** POST /host/pmem-ha/sync: a save of every VM's persistent memory to the partner now (what the background saves do). */
  async pmemHaSync(): Promise<PmemSaveVmReport[]> {
    const sender = this.pmemHa?.sender;
    if (sender == null) throw new HostError(404, 'this host saves to no partner (pmem_ha.partner)');
    return sender.sync();
  }

  /** GET /host/pmem-ha: the primary's side (saves, the last power-loss save) and the partner's (saves received). */
  pmemHaStatus(): PmemHaStatus {
    if (this.pmemHa === null) throw new HostError(404, 'persistent-memory HA is not configured on this host (pmem_ha)');
    return { sending: this.pmemHa.sender?.status() ?? null, receiving: this.pmemHa.partner?.status() ?? null };
  }

  // ------------------------------------------------------------------- replication (T-14)

  /**
   * PUT /vms/{name}/replicate: replicates the VM to the backup host at `destination` (its
   * migration listener) in epochs every `interval_ms`; resolves once the backup committed epoch 0
   * (a whole copy), then carries on in the background until DELETE, the VM's end, or a failure.
   */
  async replicate(name: string, request: ReplicateRequest): Promise<ReplicationStatus> {
    const m = this.get(name);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'replicate');
    const current = m.replication?.sender.figures.state;
    if (current !== undefined && current !== 'stopped' && current !== 'failed') throw new HostError(409, `VM '${name}' is already being replicated to ${m.replication!.destination}`);
    if (m.migration !== null || m.postcopy !== null) throw new HostError(409, `VM '${name}' is being migrated`);
    if (m.live) throw new HostError(409, `VM '${name}' has a snapshot in progress: replicate it when the snapshot is complete`);
    if (m.kept) throw new HostError(409, `VM '${name}' belongs to the process that runs it and cannot be replicated`);
    if (m.vm.memory.writeEpochActive) throw new HostError(409, `VM '${name}' has a write epoch open (a snapshot or a migration)`);
    const { host, port } = parseAddress(request.destination, 'destination');
    const channel = await guardPeer(() => connectPeer({ ...this.channelOptions(), host, port }), `replication of '${name}' to ${request.destination}`, 502);
    let committed!: () => void;
    const firstCommit = new Promise<void>((resolve) => (committed = resolve));
    let sender: ReplicationSender;
    let gate: ReturnType<typeof outputCommit> | null = null;
    try {
      // Each epoch's capture is synchronous: the scheduler runs guests on this thread between
      // awaits, so the VM is paused for the capture without a state change.
      sender = guard(() => new ReplicationSender(m.vm, channel, { pause: () => {}, resume: () => {} }, {
        intervalMs: request.interval_ms ?? 100, attach: this.attachOf(m), disk: m.devices.block,
        // The console input not read at the epoch: a failover gives it to the guest again.
        extra: () => carriedConsoleInput(m.devices.console),
        onCapture: (epoch) => gate?.onCapture(epoch),
        onCommitted: (epoch) => {
          gate?.onCommitted(epoch);
          if (epoch === 0) committed();
        },
      }), `replication of '${name}'`);
    } catch (error) {
      channel.destroy();
      throw error instanceof HostError ? error : new HostError(400, `replication of '${name}': ${(error as Error).message}`, { cause: error });
    }
    // Output commit: what the guest prints from now on is shown once its epoch is at the backup.
    if (request.output_commit === true) gate = outputCommit(m.console, () => m.devices.console.flush());
    const done = sender.run().then(
      (figures) => this.log(`vm ${name}: replication to ${request.destination} stopped after ${figures.epochs} epochs`),
      (error: unknown) => this.log(`vm ${name}: replication to ${request.destination} failed after ${sender.figures.epochs} epochs; the VM carries on here: ${error instanceof Error ? error.message : String(error)}`),
    ).finally(() => gate?.end()); // unprotected again: held output is let out
    m.replication = { sender, destination: request.destination, outputCommit: gate !== null, done };
    this.log(`vm ${name}: replicating to ${request.destination} every ${sender.figures.interval_ms} ms`);
    await Promise.race([firstCommit, done]);
    if (sender.figures.state === 'failed') throw new HostError(502, `replication of '${name}' to ${request.destination} failed; the VM carries on here: ${sender.figures.error ?? ''}`);
    return this.vmReplication(name);
  }

  /** DELETE /vms/{name}/replicate: ends the replication after the epoch in flight. */
  async stopReplication(name: string): Promise<ReplicationStatus> {
    const m = this.get(name);
    if (m.replication === null) throw new HostError(404, `VM '${name}' is not being replicated`);
    m.replication.sender.stop();
    await m.replication.done;
    return this.vmReplication(name);
  }

  /** GET /vms/{name}/replication: the VM's replication (running, or how it ended). */
  vmReplication(name: string): ReplicationStatus {
    const m = this.get(name);
    if (m.replication === null) throw new HostError(404, `VM '${name}' is not being replicated`);
    return { name, destination: m.replication.destination, output_commit: m.replication.outputCommit, ...m.replication.sender.status() };
  }

  /** GET /replicas: the replicas this host holds as a backup. */
  replicas(): ReplicasInfo {
    return {
      listening: this.migrationListener === null ? null : this.listeningAddress(),
      replicas: [...this.replicaStreams.values()].map(({ receiver, from }) => ({ from, ...receiver.status() })),
    };
  }

  /** POST /replicas/{name}/activate: failover; runs the VM here from the replica's last complete epoch (or leaves it paused at it). */
  activateReplica(name: string, paused = false): VmInfo {
    const entry = this.replicaStreams.get(name);
    if (entry === undefined) throw new HostError(404, `no replica of '${name}' on this host`);
    const figures = entry.receiver.figures;
    if (figures.state === 'activated') throw new HostError(409, `the replica of '${name}' was activated already`);
    if (figures.committed_epoch === null) throw new HostError(409, `the replica of '${name}' has no complete epoch yet: nothing to activate`);
    const epoch = figures.committed_epoch;
    let made: HostedVm | null = null;
    guard(() => entry.receiver.activate({
      create: (config, attach, disk) => {
        made = this.makeIncoming(config, attach, { kind: 'replica', from: entry.from, epoch }, 'activation of the replica', disk ?? null);
        if (paused) made.state = 'Paused';
        return made.vm;
      },
      block: () => made?.devices.block ?? null,
      start: (_vm, decoded) => {
        this.add(made!);
        const problem = applyCarriedConsoleInput(made!.devices.console, decoded.extra);
        if (problem !== null) this.log(`vm ${name}: ${problem} (the replica from ${entry.from})`);
      },
      discard: (vm) => {
        made?.devices.console.stop();
        made?.devices.block?.close();
        if (this.hv.vms.includes(vm)) this.hv.destroyVm(vm);
      },
    }), `activation of the replica of '${name}'`);
    this.log(`vm ${name}: activated from its replica (epoch ${epoch}, ${figures.age_ms ?? '?'} ms old, from ${entry.from})`);
    return this.describe(made!);
  }

  /** What a host receiving this VM needs to attach the same devices and services. */
  private attachOf(m: HostedVm): JsonObject {
    return {
      boot_args: m.devices.bootArgs.text, disk: m.disk, balloon: m.devices.balloon !== null, meminfo: m.devices.meminfo !== null,
      disk_async: m.devices.block?.async === true, disk_direct: m.devices.block?.disk.direct === true,
      channels: this.bus.deviceOf(m.name)?.vm === m.vm,
      active_sampling: m.sampler === null ? null : { pagesPerPeriod: m.sampler.stats().pages_per_period, periodInstructions: m.sampler.stats().period_instructions },
      mrc: m.mrcOptions,
      policy: { shares: m.policy.shares, minPages: m.policy.minPages, maxPages: m.policy.maxPages },
    };
  }

  private noteOutgoing(result: MigrationResult): MigrationResult {
    this.outgoingMigrations.push(result);
    if (this.outgoingMigrations.length > 16) this.outgoingMigrations.shift();
    return result;
  }

  private channelOptions(): { protocol: string; versions: readonly number[]; tls?: TlsFiles; insecure?: boolean; stallTimeoutMs: number; name: string } {
    const { tls, insecure, stallTimeoutMs } = this.migrationSettings;
    const name = this.migrationSettings.name ?? hostname();
    if (tls === null && !insecure) {
      throw new HostError(400, 'this host has no migration certificates: configure migration.tls (or tls_dir), or migration.insecure for plain TCP');
    }
    return { protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, stallTimeoutMs, name, ...(tls === null ? { insecure: true } : { tls }) };
  }

  private listeningAddress(): string {
    const listener = this.migrationListener!;
    return `${listener.host}:${listener.port}`;
  }

  private async acceptMigrations(listener: TransportServer): Promise<void> {
    for (;;) {
      let channel;
      try {
        channel = await listener.accept();
      } catch {
        return; // closed
      }
      void this.receiveOne(channel);
    }
  }

  /** One incoming stream: a replication (told by its first frame) or a migration. */
  private async receiveOne(channel: Awaited<ReturnType<TransportServer['accept']>>): Promise<void> {
    let first;
    try {
      first = await channel.receive();
    } catch (error) {
      this.log(`host: an incoming stream from ${channel.remote} failed before its first frame: ${error instanceof Error ? error.message : String(error)}`);
      channel.destroy();
      return;
    }
    if (first === null) {
      channel.destroy();
      return;
    }
    if (first.type === ReplicationFrame.BEGIN) return this.receiveReplica(channel, first.payload);
    channel.unreceive(first);
    return this.receiveMigration(channel);
  }

  /** One incoming replication stream: kept as a replica until activated (POST /replicas/{name}/activate). */
  private async receiveReplica(channel: Awaited<ReturnType<TransportServer['accept']>>, begin: Uint8Array): Promise<void> {
    const from = `${channel.peer?.name ?? '?'}@${channel.remote}`;
    let name = '?';
    try {
      const parsed = JSON.parse(new TextDecoder().decode(begin)) as { config?: { name?: unknown } };
      if (typeof parsed.config?.name === 'string') name = parsed.config.name;
    } catch {
      // the receiver refuses it below
    }
    const previous = this.replicaStreams.get(name);
    if (previous !== undefined && previous.receiver.figures.state === 'receiving') {
      this.log(`host: refused a replication of '${name}' from ${from}: one from ${previous.from} is being received`);
      await channel.abort('BV_MIG_BAD_REQUEST', `this host already receives a replication of '${name}' (from ${previous.from})`);
      return;
    }
    previous?.receiver.discard(); // its epoch is replaced: its disk overlay goes too
    const receiver = new ReplicaReceiver(channel, { diskDir: this.migrationSettings.diskDir ?? null });
    this.replicaStreams.set(name, { receiver, from });
    this.log(`host: receiving a replication of '${name}' from ${from}`);
    const figures = await receiver.run(begin);
    if (figures.state !== 'activated') this.log(`host: the replication of '${name}' from ${from} ended (${figures.error ?? 'no reason'}); epoch ${figures.committed_epoch ?? 'none'} is kept`);
  }

  /**
   * An empty VM arriving from another host (a migration, a replica's activation), with the devices
   * and services `attach` names: not added to the host yet.
   */
  private makeIncoming(config: VmConfig, attach: JsonObject, origin: VmOrigin, what: string, diskAt: { path: string; overlayDir: string } | null = null): HostedVm {
    const name = String(config.name);
    this.checkNewName(name);
    this.checkFits(config.memoryBytes, `${what} of '${name}'`);
    const vm = guard(() => this.hv.createVm({ name, memoryBytes: config.memoryBytes, vcpus: config.vcpus ?? 1, largePages: config.largePages ?? 'superpages', ...(config.mmu === undefined ? {} : { mmu: config.mmu }) }), `incoming VM '${name}'`);
    try {
      const log = new ConsoleLog(this.settings.consoleBufferBytes);
      // A disk that arrives (diskAt) is attached on its base (or blank file) with new overlays in the
      // disk directory; otherwise on the source's own path (shared storage).
      const disk = diskAt !== null ? diskAt.path : typeof attach.disk === 'string' ? attach.disk : null;
      const bootArgs = typeof attach.boot_args === 'string' ? attach.boot_args : '';
      const options = this.deviceOptions(log, bootArgs, disk, null, false, attach.balloon === true ? {} : null, attach.meminfo === true);
      if (diskAt !== null) options.disk = { path: diskAt.path, overlayDir: diskAt.overlayDir };
      // An asynchronous disk stays one (its guest may use the queue); older sources send no disk_async.
      const carried = this.carriedDisk(name, disk, { async: attach.disk_async === true, direct: attach.disk_direct === true });
      if (carried.disk !== null) {
        Object.assign(options, this.asyncDiskOptions(carried));
        if (diskAt !== null) options.disk = { path: diskAt.path, overlayDir: diskAt.overlayDir, async: true, direct: carried.disk.direct === true };
      }
      const devices = guard(() => attachStandardDevices(vm, options), `incoming VM '${name}'`);
      if (attach.channels === true) this.bus.attachVm(vm, this.hv);
      const m = new HostedVm(name, vm, devices, log, origin, disk, null, false, null);
      this.attachAsyncDisk(m, carried);
      const sampling = attach.active_sampling as { pagesPerPeriod: number; periodInstructions: number } | null | undefined;
      if (sampling != null) m.sampler = this.attachSampler(vm, sampling);
      const mrc = attach.mrc as NonNullable<MemoryPolicySpec['mrc']> | null | undefined;
      if (mrc != null) {
        m.mrc = this.attachMrc(vm, mrc);
        m.mrcOptions = mrc;
      }
      const policy = attach.policy as Partial<VmPolicy> | undefined;
      if (policy !== undefined) m.policy = { shares: policy.shares ?? null, minPages: policy.minPages ?? 0, maxPages: policy.maxPages ?? null };
      return m;
    } catch (error) {
      this.hv.destroyVm(vm);
      throw error;
    }
  }

  /** One incoming migration: an empty VM with the source's devices, filled, then run. */
  private async receiveMigration(channel: Awaited<ReturnType<TransportServer['accept']>>): Promise<void> {
    let incoming: HostedVm | null = null;
    let reserved: string | null = null;
    const from = `${channel.peer?.name ?? '?'}@${channel.remote}`;
    const receiver = new MigrationReceiver(channel, {
      create: (config, attach, disk) => {
        const name = String(config.name);
        const diskAt = disk == null ? null : receivingDisk(disk, this.migrationSettings.diskDir ?? null, name);
        const m = this.makeIncoming(config, attach, { kind: 'migration', from }, 'incoming migration', diskAt);
        incoming = m;
        const vm = m.vm;
        this.incomingNames.add(name);
        reserved = name;
        return vm;
      },
      start: (_vm, decoded) => {
        this.incomingNames.delete(reserved!);
        this.add(incoming!);
        const problem = applyCarriedConsoleInput(incoming!.devices.console, decoded.extra);
        if (problem !== null) this.log(`vm ${incoming!.name}: ${problem} (from ${from})`);
      },
      block: () => incoming?.devices.block ?? null,
      findPostcopy: (name) => this.brokenPostcopies.get(name) ?? this.completedPostcopy(name),
      wake: (vm) => {
        const m = this.byVm(vm);
        if (m === undefined) return;
        if (m.waitingForPages) {
          m.waitingForPages = false;
          if (m.state === 'Paused') m.state = 'Running';
          this.kick();
        } else if (vm.stopReason.kind === 'paused' && vm.stopReason.reason === REMOTE_PAGE_WAIT_REASON) vm.resume();
      },
      discard: (vm) => {
        if (reserved !== null) this.incomingNames.delete(reserved);
        const m = incoming;
        if (m !== null && this.machines.get(m.name) === m) return; // already running: never discarded
        m?.devices.console.stop();
        m?.devices.block?.close();
        if (this.hv.vms.includes(vm)) this.hv.destroyVm(vm);
      },
    });
    this.incomingMigrations.push(receiver.figures);
    if (this.incomingMigrations.length > 16) this.incomingMigrations.shift();
    try {
      const vm = await receiver.run();
      const done = this.completedPostcopies.get(vm.name);
      if (done !== undefined && done !== receiver && done.vm === vm) {
        this.log(`vm ${vm.name}: the post-copy from ${from} had completed here; told the source again (its COMPLETE was lost)`);
        return;
      }
      const resumed = this.brokenPostcopies.get(vm.name);
      if (resumed !== undefined && resumed !== receiver) {
        this.brokenPostcopies.delete(vm.name);
        this.completedPostcopies.set(vm.name, resumed);
        this.migrationCounters.noteReceived(resumed.figures);
        this.log(`vm ${vm.name}: post-copy from ${from} resumed and completed`);
        return;
      }
      this.migrationCounters.noteReceived(receiver.figures);
      if (receiver.figures.postcopy !== null) this.completedPostcopies.set(vm.name, receiver);
      this.log(`vm ${vm.name}: migrated in from ${from} (${receiver.figures.pages_received} pages, resumed ${receiver.figures.resume_ms} ms after its state arrived)`);
    } catch (error) {
      const vm = receiver.vm;
      if (receiver.figures.postcopy !== null && vm !== null && this.byVm(vm) !== undefined) {
        this.brokenPostcopies.set(vm.name, receiver);
        this.log(`host: post-copy of '${vm.name}' from ${from} failed; the VM runs here and waits for ${receiver.figures.postcopy.remote_left} pages the source keeps: ${error instanceof Error ? error.message : String(error)}`);
        return;
      }
      if (receiver.figures.state === 'failed') this.migrationCounters.noteReceived(receiver.figures);
      this.log(`host: incoming migration${reserved === null ? '' : ` of '${reserved}'`} from ${from} failed, nothing kept: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /** DELETE /vms/{name}: stops the VM and frees it; its frames return to the OS. */
  deleteVm(name: string): void | Promise<void> {
    const remote = this.remote.get(name);
    if (remote !== undefined) {
      return remote.group.calls.deleteVm(name).then(() => {
        this.remote.delete(name);
        this.storage?.removeVm(name);
        remote.group.vmNames.delete(name);
      });
    }
    const m = this.get(name);
    if (m.kept) throw new HostError(409, `VM '${name}' belongs to the process that runs it: stop that process to end it`);
    this.machines.delete(name);
    this.dispose(m, `VM '${name}' was deleted`);
    this.log(`vm ${name}: deleted`);
  }

  /** Stops the scheduler and frees every VM. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.kick();
    await this.loopDone;
    this.recorder?.stop();
    await this.migrationListener?.close();
    this.migrationListener = null;
    await this.pmemHa?.sender?.close();
    await this.pmemHa?.partner?.close();
    await this.logReceiver?.close();
    this.logReceiver = null;
    for (const { receiver } of this.replicaStreams.values()) receiver.discard();
    for (const m of this.machines.values()) this.dispose(m, 'the host closed');
    this.machines.clear();
    this.placement?.stop();
    this.crossThread.stop();
    await Promise.all([...this.groups.values()].map((group) => group.close()));
    this.groups.clear();
    this.remote.clear();
    this.memory?.swap.close();
    this.storage?.close(); // its block says stopped: the other hosts share the device without it at once
  }

  // ------------------------------------------------------------------------------ internals

  /** GET /vms/{name}/memory-errors: the counters and log of the VM's memory errors (docs/memory-errors.md). */
  memoryErrors(name: string): MemoryErrorReportList {
    return memoryErrorReports(this.memoryErrorService(name));
  }

  /** POST /vms/{name}/memory-errors: injects one error, random ones now, or starts a campaign. */
  injectMemoryErrors(name: string, request: MemoryErrorRequest): MemoryErrorResponse {
    try {
      return applyMemoryErrorRequest(this.memoryErrorService(name), request);
    } catch (error) {
      if (error instanceof MemoryErrorServiceError) throw new HostError(error.code === 'BV_MEMERR_NOT_PRESENT' ? 409 : 400, error.message, { cause: error });
      throw error;
    }
  }

  /**
   * Keeps the configured recovery methods for a VM (memory_errors): the guest image's clean
   * pages sealed now, parity and hashes brought up to date every refresh_instructions from a VM
   * ticker. The service tries them in the configured order; with none, an error is a machine check.
   */
  private attachRecovery(vm: Vm, spec: MemoryErrorsSpec, block: BlockDevice | null): void {
    const methods: RecoveryMethod[] = guard(() => spec.methods.map((name): RecoveryMethod => {
      switch (name) {
        case 'clean-copy': {
          const clean = new CleanCopyRecovery(vm);
          clean.scan();
          // Swapped-in pages keep their slots as clean copies while they stay clean, and page-cache
          // pages the disk filled are clean copies of their sectors.
          this.cleanCopies.set(vm, clean);
          this.memory?.swap.keepCleanCopies(vm, clean);
          if (block !== null) new DiskCleanCopies(block, clean);
          return clean;
        }
        case 'parity': {
          const parity = new ParityGroups(vm, { groupPages: spec.parityGroupPages });
          parity.startRefreshing(spec.refreshInstructions);
          return parity;
        }
        case 'hash': {
          const hash = new StoredHashRecovery(vm);
          hash.startScanning(spec.refreshInstructions);
          return hash;
        }
      }
    }), `memory_errors of '${vm.name}'`);
    this.memoryErrorServices.set(vm, new MemoryErrorService(vm, { methods }));
  }

  /** The VM's memory-error service (with its configured methods, or made at first use with none). */
  private memoryErrorService(name: string): MemoryErrorService {
    const vm = this.get(name).vm;
    let service = this.memoryErrorServices.get(vm);
    if (service === undefined) {
      service = new MemoryErrorService(vm);
      this.memoryErrorServices.set(vm, service);
    }
    return service;
  }

  private get(name: string): HostedVm {
    const m = this.machines.get(name);
    if (!m) {
      this.checkLocal(name, 'this operation');
      throw new HostError(404, `no VM named '${name}'`);
    }
    return m;
  }

  private checkNewName(name: string): void {
    if (this.closed) throw new HostError(409, 'the host is shutting down');
    if (RESERVED_NAMES.has(name)) throw new HostError(400, `'${name}' cannot name a VM (it is an API path)`);
    if (this.machines.has(name) || this.remote.has(name)) throw new HostError(409, `a VM named '${name}' exists`);
    if (this.incomingNames.has(name)) throw new HostError(409, `a VM named '${name}' is being migrated in`);
    if (this.startingInGroups.has(name)) throw new HostError(409, `a VM named '${name}' is being started in a worker group`);
  }

  /** The VM's balloon, or a 400 saying to configure one (a balloon is attached only when a VM is created, as in Firecracker). */
  private balloonOf(m: HostedVm): BalloonDevice {
    if (m.devices.balloon === null) throw new HostError(400, `VM '${m.name}' has no balloon: configure \`balloon\` when creating the VM`);
    return m.devices.balloon;
  }

  /** Polling is turned on or off only when the VM is created (Firecracker's rule); its interval may change. */
  private checkStatsInterval(m: HostedVm, device: BalloonDevice, interval: number): void {
    if (!Number.isInteger(interval) || interval < 0 || interval > MAX_STATS_INTERVAL_S) {
      throw new HostError(400, `stats_polling_interval_s must be a whole number of seconds from 0 to ${MAX_STATS_INTERVAL_S}, got ${interval}`);
    }
    if ((interval === 0) !== (device.statsPollingIntervalS === 0)) {
      throw new HostError(400, `statistics polling of VM '${m.name}' is ${device.statsPollingIntervalS === 0 ? 'off' : 'on'}: it is turned on or off only when the VM is created (its interval can change)`);
    }
  }

  /** (Re)starts the balloon's statistics timer: it asks the guest for statistics every interval. */
  private startStatsPolling(m: HostedVm): void {
    this.stopStatsPolling(m);
    const device = m.devices.balloon;
    if (device === null || device.statsPollingIntervalS === 0 || m.state === 'Stopped') return;
    device.requestStats(); // the first figures come at the driver's next look
    m.statsTimer = setInterval(() => device.requestStats(), device.statsPollingIntervalS * 1000);
    m.statsTimer.unref();
  }

  private stopStatsPolling(m: HostedVm): void {
    if (m.statsTimer !== null) clearInterval(m.statsTimer);
    m.statsTimer = null;
  }

  /**
   * Refuses (507), when the host does not overcommit, a VM of `bytes` that cannot fit the pool:
   * ever (larger than the pool), or beside the memory the other VMs reserve. `except` is a VM being
   * created that already counts among the hypervisor's.
   */
  private checkFits(bytes: number, what: string, except?: Vm): void {
    if (this.settings.overcommit) return; // reclaim keeps the frames within the pool
    const pool = this.hv.poolStats().totalFrames * 4096;
    if (bytes > pool) throw new HostError(507, `${what}: ${bytes / MIB} MiB of memory can never fit the host pool of ${pool / MIB} MiB`);
    let reserved = 0;
    for (const vm of this.hv.vms) if (vm !== except) reserved += vm.config.memoryBytes;
    for (const { memoryBytes } of this.remote.values()) reserved += memoryBytes;
    for (const memoryBytes of this.startingInGroups.values()) reserved += memoryBytes;
    if (reserved + bytes > pool) {
      throw new HostError(507, `${what}: ${bytes / MIB} MiB of memory does not fit the host pool of ${pool / MIB} MiB beside the ${reserved / MIB} MiB the other VMs have (the host does not overcommit; see overcommit in docs/host.md)`);
    }
  }

  private stoppedError(m: HostedVm, what: string): HostError {
    return new HostError(409, `cannot ${what} VM '${m.name}': it has stopped (${describeExit(m.exit!)})`);
  }

  private deviceOptions(log: ConsoleLog, bootArgs: string, disk: string | null, input: string | null, closeInput = false, balloon: BalloonOptions | null = null, meminfo = false): StandardDeviceOptions {
    const options: StandardDeviceOptions = { output: log, bootArgs, hypervisor: this.hv };
    if (balloon !== null) options.balloon = balloon;
    if (meminfo) options.meminfo = true;
    if (input !== null) options.input = input;
    if (closeInput) options.closeInput = true;
    else options.hostInput = true;
    if (disk !== null) options.disk = disk;
    return options;
  }

  /** Creates a VM from a checked spec and a loaded image; `where` prefixes configuration errors. */
  private boot(spec: VmSpec, image: GuestImage, where: string): HostedVm {
    this.checkNewName(spec.name);
    this.checkFits(spec.memoryBytes, `VM '${spec.name}'`);
    const vm = guard(() => this.hv.createVm({ name: spec.name, memoryBytes: spec.memoryBytes, vcpus: spec.vcpus, mmu: spec.mmu, largePages: spec.largePages, tier: spec.tier }), `VM '${spec.name}'`);
    try {
      const log = new ConsoleLog(this.settings.consoleBufferBytes);
      const devices = guard(
        () => attachStandardDevices(vm, { ...this.deviceOptions(log, spec.bootArgs, spec.disk?.path ?? null, spec.consoleInput, spec.consoleInputEof, balloonOptions(spec), spec.meminfo), ...(spec.pmem === undefined ? {} : { pmem: spec.pmem }), ...this.asyncDiskOptions(spec) }),
        where === '' ? `VM '${spec.name}'` : where,
      );
      // A VM some channel names gets a channel device (after the standard ones: the guest ABI's order).
      if (this.bus.namesVm(spec.name)) guard(() => this.bus.attachVm(vm, this.hv), where === '' ? `VM '${spec.name}'` : where);
      guard(() => vm.loadImage(image), `${where === '' ? '' : `${where}.`}image ${spec.image}`);
      const m = new HostedVm(spec.name, vm, devices, log, { kind: 'image', image: spec.image }, spec.disk?.path ?? null, null, spec.startPaused, spec.maxInstructions);
      const policy = spec.memoryPolicy;
      m.policy = { shares: policy.shares, minPages: policy.reservationMib * (MIB / 4096), maxPages: policy.limitMib === null ? null : policy.limitMib * (MIB / 4096) };
      if (policy.activeSampling !== null) m.sampler = this.attachSampler(vm, policy.activeSampling);
      if (policy.mrc !== null) {
        m.mrc = this.attachMrc(vm, policy.mrc);
        m.mrcOptions = policy.mrc;
      }
      if (spec.memoryErrors !== null) this.attachRecovery(vm, spec.memoryErrors, devices.block);
      this.attachAsyncDisk(m, spec);
      m.spec = spec;
      if (spec.logReplication !== undefined) m.logShipper = this.logShipper(m, spec.logReplication, where === '' ? `VM '${spec.name}'` : `${where}.log_replication`);
      try {
        this.add(m);
      } catch (error) {
        m.logShipper?.stop();
        throw error;
      }
      m.logShipper?.start();
      return m;
    } catch (error) {
      this.hv.destroyVm(vm);
      throw error;
    }
  }

  private add(m: HostedVm): void {
    this.machines.set(m.name, m);
    this.manage(m);
    this.startStatsPolling(m);
    this.log(`vm ${m.name}: created (${m.state.toLowerCase()}, ${m.vm.memory.pageCount * 4} KiB, ${m.vm.vcpus.length} vCPU${m.vm.vcpus.length === 1 ? '' : 's'})`);
    this.kick();
  }

  /** Puts a VM under the memory scheduler (when on) with its devices and policy. */
  private manage(m: HostedVm): void {
    this.memory?.scheduler.add(m.vm, { balloon: m.devices.balloon, meminfo: m.devices.meminfo }, { ...m.policy, shares: m.policy.shares ?? undefined });
  }

  /** Turns an online miss-rate curve on for a VM (memory_policy.mrc). */
  private attachMrc(vm: Vm, options: NonNullable<MemoryPolicySpec['mrc']>): MissRateCurve {
    return guard(() => new MissRateCurve(vm, {
      ...(options.ratePct === null ? {} : { rate: options.ratePct / 100 }),
      ...(options.quietInstructions === null ? {} : { quietInstructions: options.quietInstructions }),
      // (A peer or an older checkpoint may not carry it: the tracker's default then.)
      ...(options.activityRatePct == null ? {} : { activityRate: options.activityRatePct / 100 }),
    }), `miss-rate curve of '${vm.name}'`);
  }

  /** Turns sampled active memory on for a VM (before it runs, or in a restore's attach so its saved state lands in it). */
  private attachSampler(vm: Vm, options: NonNullable<MemoryPolicySpec['activeSampling']> | null): ActiveMemorySampler {
    return guard(() => new ActiveMemorySampler(vm, {
      ...(options?.pagesPerPeriod == null ? {} : { pagesPerPeriod: options.pagesPerPeriod }),
      ...(options?.periodInstructions == null ? {} : { periodInstructions: options.periodInstructions }),
      clock: () => virtualTime(vm),
    }), `active memory sampling of '${vm.name}'`);
  }

  /** Cancels a running reallocation that `m` takes part in. */
  private cancelReallocations(m: HostedVm, why: string): void {
    for (const r of this.reallocations) if (r.from.vm === m.vm || r.to.vm === m.vm) r.cancel(why);
    for (const { half, vm } of this.reallocationHalves.values()) if (vm === m.vm) half.cancel(why);
  }

  // ------------------------------------------------------------------ across threads

  /** Runs a pass of content-based sharing between threads every `intervalMs` (Host.start does, with groups and reclaim.sharing). */
  startCrossThreadSharing(intervalMs = 1000): void {
    this.crossThread.startSharing(intervalMs);
  }

  /**
   * One pass of content-based sharing between the VMs of different threads (docs/workers.md;
   * services/host/cross-thread.ts): returns the pass's figures.
   */
  shareAcrossThreads(limit = 2048): Promise<Omit<CrossThreadSharingStats, 'passes' | 'pass_ms'>> {
    return this.crossThread.share(limit);
  }

  /** @internal This thread's offers for sharing between threads. */
  sharingOffers(limit: number): SharingOffer[] {
    return this.threadSharing.offers(limit);
  }

  /** @internal Lends a page of a VM here for sharing between threads, or null when it changed or is gone. */
  lendPage(name: string, gpn: number, hash: number): FrameHandle | null {
    const m = this.machines.get(name);
    return m === undefined ? null : this.threadSharing.lend(m.vm, gpn, hash);
  }

  /** @internal Merges a page of a VM here onto a lent frame when the bytes are equal; the handle is used or dropped either way. */
  adoptPage(name: string, gpn: number, handle: FrameHandle): boolean {
    const m = this.machines.get(name);
    if (m === undefined) {
      this.hv.dropFrameHandle(handle);
      return false;
    }
    return this.threadSharing.adopt(m.vm, gpn, handle);
  }

  /** @internal The giving half of a cross-thread reallocation, in this thread (the main host calls it). */
  startReallocationDonor(id: number, fromName: string, pages: number): void {
    const m = this.get(fromName);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'reallocate memory of');
    const balloon = this.balloonOf(m);
    const free = m.vm.memory.pageCount - balloon.target;
    if (pages > free) throw new HostError(409, `VM '${fromName}' has ${free} pages outside its balloon: it cannot give ${pages}`);
    const half = guard(() => new ReallocationDonor({ vm: m.vm, balloon }, pages, (handles, given) => this.sendReallocationFrames(id, handles, given)), 'reallocation');
    this.reallocationHalves.set(id, { half, vm: m.vm });
  }

  /** @internal The receiving half of a cross-thread reallocation, in this thread. */
  startReallocationReceiver(id: number, toName: string, pages: number): void {
    const m = this.get(toName);
    if (m.state === 'Stopped') throw this.stoppedError(m, 'reallocate memory of');
    const balloon = this.balloonOf(m);
    if (pages > balloon.target) throw new HostError(409, `VM '${toName}''s balloon target is ${balloon.target} pages: it has no room to grow by ${pages} (give it a balloon that large first)`);
    const half = guard(() => new ReallocationReceiver(this.hv, { vm: m.vm, balloon }, pages), 'reallocation');
    this.reallocationHalves.set(id, { half, vm: m.vm });
  }

  /** @internal Frames for a receiving half here; without one (its VM is gone) they are dropped. */
  acceptReallocationFrames(id: number, handles: FrameHandle[], given: number): void {
    const entry = this.reallocationHalves.get(id);
    if (entry === undefined || !(entry.half instanceof ReallocationReceiver)) {
      for (const handle of handles) this.hv.dropFrameHandle(handle);
      return;
    }
    entry.half.accept(handles, given);
  }

  /** @internal A half's progress, or null when this thread has none by that id. */
  reallocationHalf(id: number): ReallocationHalfStatus | null {
    return this.reallocationHalves.get(id)?.half.status() ?? null;
  }

  /** @internal Cancels a half here. */
  cancelReallocationHalf(id: number, reason: string): void {
    this.reallocationHalves.get(id)?.half.cancel(reason);
  }

  private dispose(m: HostedVm, why: string): void {
    this.cancelReallocations(m, why);
    m.migration?.cancel(new HostError(409, `the migration of '${m.name}' was abandoned: ${why}`));
    m.replication?.sender.stop();
    m.logShipper?.stop();
    this.stopStatsPolling(m);
    this.storage?.removeVm(m.name);
    if (m.live) {
      m.live.snapshot.abort();
      m.live.done(new HostError(409, `the snapshot ${m.live.snapshot.path} was abandoned: ${why}`));
      m.live = null;
    }
    m.devices.console.stop();
    m.devices.block?.close();
    // In a worker group: the host's controller drops the VM once the events before this reach it.
    this.remoteGate?.remove(m.name);
    this.bus.detachVm(m.vm);
    this.memory?.scheduler.remove(m.vm, { forgetSwap: true });
    this.cleanCopies.delete(m.vm);
    m.sampler?.dispose();
    m.mrc?.dispose();
    if (this.hv.vms.includes(m.vm)) this.hv.destroyVm(m.vm);
    m.restored?.close();
    if (m.state !== 'Stopped') {
      m.state = 'Stopped';
      m.exit = { kind: 'host-error', message: why };
      for (const wake of m.stopWaiters.splice(0)) wake();
    }
  }

  private describe(m: HostedVm): VmInfo {
    const config = m.vm.config;
    const live = m.live?.snapshot;
    return {
      name: m.name,
      state: m.state,
      waiting_for_input: m.state === 'Running' && m.waitingForInput,
      origin: m.origin,
      config: {
        memory_mib: config.memoryBytes / (1024 * 1024),
        vcpus: m.vm.vcpus.length,
        boot_args: m.devices.bootArgs.text,
        mmu: m.vm.mmu.mode,
        large_pages: m.vm.largePagePolicy,
        tier: m.vm.tier,
        disk: m.disk,
      },
      instructions: m.vm.instructionsRetired,
      exit: m.exit,
      console_bytes: m.console.totalBytes,
      snapshot: live ? { path: live.path, live: true, pages_saved: live.pagesSaved, page_count: live.pageCount } : null,
      age_ms: Math.round(performance.now() - m.createdAt),
    };
  }

  private kick(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** The scheduler: round-robin slices over the running VMs, yielding to the event loop often. */
  private async schedule(): Promise<void> {
    // Start after the constructor's caller has added its VMs.
    await new Promise<void>((resolve) => setImmediate(resolve));
    let lastYield = performance.now();
    while (!this.closed) {
      let ran = 0;
      let waiting = 0;
      /** The soonest idleUntil among the VMs skipped for it (Infinity: none). */
      let idleNext = Infinity;
      const now = performance.now();
      for (const m of this.machines.values()) {
        if (this.closed) break;
        if (m.state !== 'Running') continue;
        if (m.idleUntil > now) {
          idleNext = Math.min(idleNext, m.idleUntil);
          continue;
        }
        if (m.throttle > 0) {
          // Auto-converge: the VM gets 1 − throttle of its turns while it is being migrated.
          m.throttleCredit += 1 - m.throttle;
          if (m.throttleCredit < 1) {
            waiting++; // poll again soon rather than sleep
            continue;
          }
          m.throttleCredit -= 1;
        }
        if (m.waitingForInput) {
          // Input from a stream (tools/run's stdin) arrives without a kick: look for it.
          const console = m.devices.console;
          // … or a device (a channel's doorbell from another VM) has raised an interrupt it waits for.
          if (!console.inputAvailable && !console.endOfInput && !m.vm.vcpus.some((vcpu) => vcpu.wakeable)) {
            waiting++;
            continue;
          }
          m.waitingForInput = false;
        }
        this.turn(m);
        ran++;
        if (performance.now() - lastYield >= this.yieldEveryMs) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          lastYield = performance.now();
        }
      }
      if (ran > 0) {
        for (const m of this.machines.values()) {
          m.sampler?.tick();
          m.mrc?.tick();
        }
      }
      // A VM blocked for memory waits on the scheduler's ticks: keep ticking while any is.
      let blocked = 0;
      for (const m of this.machines.values()) if (m.blockedByMemory) blocked++;
      if ((ran > 0 || blocked > 0) && this.memory !== null) {
        try {
          this.memory.scheduler.tick();
        } catch (error) {
          this.log(`host: memory scheduler failed: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
      if (ran === 0 && !this.closed) {
        // Nothing to run: sleep until an operation or input makes something runnable (polling
        // every few ms while a VM waits for input that may come from a stream).
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          const pollMs = waiting > 0 || blocked > 0 ? INPUT_POLL_MS : Infinity;
          const idleMs = idleNext === Infinity ? Infinity : Math.max(0, idleNext - performance.now());
          if (pollMs !== Infinity || idleMs !== Infinity) setTimeout(resolve, Math.min(pollMs, idleMs));
        });
        this.wake = null;
        lastYield = performance.now();
      }
    }
  }

  /** One slice of one VM, and what its ending means for the VM's state. */
  private turn(m: HostedVm): void {
    const budget = Math.min(this.settings.sliceInstructions, m.budgetLeft);
    let result: RunResult;
    try {
      [result] = this.hv.run({ maxInstructions: budget, quantum: this.settings.quantum, yieldOnTimerWait: true }, [m.vm]) as [RunResult];
    } catch (error) {
      this.stop(m, { kind: 'host-error', message: error instanceof Error ? error.message : String(error) });
      return;
    }
    m.budgetLeft -= result.instructions;
    const reason = result.reason;
    switch (reason.kind) {
      case 'budget':
        if (m.budgetLeft <= 0) this.stop(m, { kind: 'budget', message: `stopped after max_instructions` });
        break;
      case 'idle':
        if (this.hv.externalWakeSources.has(m.vm)) m.waitingForInput = true;
        else this.stop(m, { kind: 'idle', message: IDLE_FOREVER });
        break;
      case 'timer-wait':
        // An idle guest's timer tick: its next comes after some host time, not at once.
        if (result.instructions < IDLE_TURN_INSTRUCTIONS) m.idleUntil = performance.now() + IDLE_TICK_MS;
        if (m.budgetLeft <= 0) this.stop(m, { kind: 'budget', message: `stopped after max_instructions` });
        break;
      case 'paused':
        // A reset request (devices/power.ts) is carried out here; any other pause is a service's.
        if (reason.reason === REMOTE_PAGE_WAIT_REASON) {
          // Post-copy: a vCPU touched a page still on the source; the migration wakes it when pages come.
          m.vm.resume();
          if (m.state === 'Running') {
            m.state = 'Paused';
            m.waitingForPages = true;
          }
        } else if (reason.reason === HOST_MEMORY_WAIT_REASON && m.blockedByMemory) {
          // The memory scheduler blocked it at the access that found the pool empty (our Paused
          // state holds it); the kernel's pause is undone so that unblocking is just Running.
          m.vm.resume();
        } else if (!m.devices.power.completeReset()) {
          m.vm.resume();
          m.state = 'Paused';
          this.log(`vm ${m.name}: paused by the machine (${reason.reason})`);
        }
        break;
      case 'halted':
        this.stop(m, { kind: 'halted', exit_code: reason.exitCode });
        break;
      case 'guest-error':
        this.stop(m, { kind: 'guest-error', message: reason.message });
        break;
      case 'host-error':
        this.stop(m, { kind: 'host-error', message: reason.message });
        break;
      case 'running':
        break;
    }
    if (m.live && (m.live.snapshot.done || m.live.snapshot.error)) this.finishLive(m, false);
  }

  private stop(m: HostedVm, exit: VmExit): void {
    this.cancelReallocations(m, `VM '${m.name}' stopped`);
    this.stopStatsPolling(m);
    m.devices.console.flush();
    m.state = 'Stopped';
    m.exit = exit;
    if (m.live) this.finishLive(m, true);
    this.log(`vm ${m.name}: stopped after ${m.vm.instructionsRetired} instructions: ${describeExit(exit)}`);
    for (const wake of m.stopWaiters.splice(0)) wake();
  }

  /** Completes (now, if `force`) a live snapshot and answers the request waiting for it. */
  private finishLive(m: HostedVm, force: boolean): void {
    const live = m.live!;
    m.live = null;
    const snapshot = live.snapshot;
    try {
      const stats = force ? snapshot.finish() : snapshot.error ? (() => { throw snapshot.error; })() : snapshot.stats!;
      const duration = performance.now() - live.started;
      this.log(`vm ${m.name}: live snapshot ${snapshot.path} complete in ${duration.toFixed(1)} ms (guest paused ${snapshot.pauseMs.toFixed(3)} ms)`);
      live.done({
        path: snapshot.path, live: true, file_bytes: stats.fileBytes, pages_stored: stats.pagesStored, zero_pages: stats.zeroPages,
        pause_ms: round3(snapshot.pauseMs), duration_ms: round3(duration), saved_by_writes: snapshot.savedByWrites, saved_in_background: snapshot.savedByTicker,
      });
    } catch (error) {
      this.log(`vm ${m.name}: live snapshot ${snapshot.path} failed: ${error instanceof Error ? error.message : String(error)}`);
      // As for a stop-the-world snapshot: a path that cannot be written is the request's fault (400).
      live.done(hostErrorOf(error, `live snapshot of '${m.name}' failed`));
    }
  }
}

const MIB = 1024 * 1024;

/** Pages in whole MiB, rounded down (Firecracker's *_mib figures). */
function pagesToMib(pages: number): number {
  return Math.floor(pages / (MIB / 4096));
}

/** The device options of a VM spec's balloon, or null without one. */
/** f over the frames a VM holds (the idle tax's f): its sampled active pages, at most all it holds; null without sampling. */
function heldActiveFraction(m: HostedVm): number | null {
  if (m.sampler === null) return null;
  const held = m.vm.memory.presentPages;
  return held === 0 ? 0 : Math.min(1, m.sampler.activePages / held);
}

function balloonOptions(spec: VmSpec): BalloonOptions | null {
  if (spec.balloon === undefined) return null;
  const { amountMib, deflateOnOom, freePageReporting, statsPollingIntervalS } = spec.balloon;
  return { targetPages: amountMib * (MIB / 4096), deflateOnOom, freePageReporting, statsPollingIntervalS };
}

/** The image of a VM spec, or a 400 naming the field. */
function loadImage(path: string, field: string): GuestImage {
  try {
    return loadGuestFile(path);
  } catch (error) {
    if (error instanceof BvError) throw new HostError(400, `${field}: ${error.message}`, { cause: error });
    throw error;
  }
}

/**
 * Runs a kernel or service call for a request: a typed error (bad file, refused state) is the
 * client's (400), running out of host memory is 507, anything else is the host's (500).
 */
function guard<T>(action: () => T, what: string): T {
  try {
    return action();
  } catch (error) {
    throw hostErrorOf(error, what);
  }
}

/** An error as the API answers it: out of host memory 507, a typed (BvError) refusal 400, anything else 500. */
function hostErrorOf(error: unknown, what: string): HostError {
  if (error instanceof HostError) return error;
  if (error instanceof OutOfHostMemoryError || (error instanceof BvError && error.code === 'BV_OUT_OF_HOST_MEMORY')) {
    return new HostError(507, `${what}: ${error.message}`, { cause: error });
  }
  if (error instanceof BvError) return new HostError(400, `${what}: ${error.message}`, { cause: error });
  return new HostError(500, `${what}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}

/** host:port of a request, or a 400 naming the field. */
function parseAddress(address: string, field: string): { host: string; port: number } {
  const parsed = splitHostPort(address);
  if (parsed === null) throw new HostError(400, `${field} must be host:port, got '${address}'`);
  return parsed;
}

/** Runs a call that talks to another host: its typed errors become `status` (a peer's failure is 502). */
async function guardPeer<T>(action: () => Promise<T>, what: string, status: HostStatusCode): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (error instanceof HostError) throw error;
    const code = (error as { code?: string }).code ?? '';
    const message = error instanceof Error ? error.message : String(error);
    throw new HostError(code === 'BV_XPORT_CONFIG' ? 400 : status, `${what}: ${message}`, { cause: error });
  }
}

/** A VM's exit in words, for logs and errors. */
export function describeExit(exit: VmExit): string {
  switch (exit.kind) {
    case 'halted': return `powered off with exit code ${exit.exit_code}`;
    case 'guest-error': return `guest error: ${exit.message}`;
    case 'host-error': return `host error: ${exit.message}`;
    case 'budget': return exit.message;
    case 'idle': return `idle: ${exit.message}`;
  }
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}

/** What a migration carries of the console: the input the guest has not read yet, and whether it was closed. */
function carriedConsoleInput(console: ConsoleDevice): JsonObject {
  const pending = console.pendingInput();
  const carried: JsonObject = {};
  if (pending.length > 0) carried.console_input = Buffer.from(pending.buffer, pending.byteOffset, pending.length).toString('base64');
  if (console.inputClosed) carried.console_input_closed = true;
  return carried;
}

/**
 * Gives a migrated VM's console the input its source had not delivered (carriedConsoleInput).
 * Returns what was wrong with it (ignored, the VM runs on), or null.
 */
function applyCarriedConsoleInput(console: ConsoleDevice, extra: JsonObject | null): string | null {
  if (extra === null) return null;
  const { console_input: input, console_input_closed: closed } = extra;
  if ((input !== undefined && (typeof input !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(input))) || (closed !== undefined && closed !== true)) {
    return 'ignored the console input carried with the VM: not base64 text and a closed flag';
  }
  try {
    if (input !== undefined && input.length > 0) console.pushInput(new Uint8Array(Buffer.from(input, 'base64')));
    if (closed === true) console.closeInput();
  } catch (error) {
    return `could not give the guest the console input carried with it: ${(error as Error).message}`;
  }
  return null;
}
