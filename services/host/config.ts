/**
 * The host configuration format (docs/host.md#configuration): the JSON file `tools/host --config`
 * reads, and the body of the API's `PUT /vms/{name}`. Keys are snake_case like Firecracker's.
 *
 * Two passes refuse a bad configuration before anything starts. A JSON Schema (draft 2020-12,
 * checked by ajv; exported as HOST_CONFIG_SCHEMA and VM_CONFIG_SCHEMA) refuses unknown keys,
 * wrong types and out-of-range values; a semantic pass then checks what a schema cannot say:
 * duplicate VM names, the VMs' memory against the host pool, boot arguments measured as UTF-8
 * bytes, and MMU options that only shadow mode has. Every refusal is one ConfigError that names
 * the offending field the way a person reads it (`vms[0].memory_mib`).
 *
 * Paths in the configuration (images, disks) are taken as given: nothing here looks at the file
 * system except readHostConfigFile reading the configuration itself. The host checks image and
 * disk files when it loads them.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { PlacementSpec } from './placement.ts';
export type { PlacementSpec } from './placement.ts';
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js';
import { MAX_BOOT_ARGS_BYTES } from '../../devices/bootargs.ts';
import { PMEM_MAX_BYTES } from '../../devices/pmem.ts';
import { GuestPhys } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import { defaultTier, type LargePagePolicy, type MmuOptions, type Tier } from '../../kernel/index.ts';

/** A VM's disk (`disk` in the configuration). */
export interface DiskSpec {
  /** `path`: the top of the chain, a raw image or an overlay. */
  path: string;
  /** `overlay_dir`: where new top overlays go (default: next to the bottom file). */
  overlayDir?: string;
  /** `async` (default false): the device accepts asynchronous requests (docs/block-device.md); storage_io gates them. */
  async?: boolean;
  /** `direct` (default false): asynchronous transfers bypass the host page cache (O_DIRECT). */
  direct?: boolean;
}

/** A VM's persistent memory (`pmem` in the configuration, docs/pmem.md). */
export interface PmemSpec {
  /** `path`: the backing file, a regular file of exactly `bytes` (or absent, with `create`). */
  path: string;
  /** `size_kib` × 1 KiB: the range's size (a multiple of 4 KiB). */
  bytes: number;
  /** `create` (default false): make a missing file (zero-filled); an existing one must still have the size. */
  create: boolean;
}

/** A VM's asynchronous log replication (`log_replication`, docs/pmem.md "Log replication"). */
export interface LogReplicationSpec {
  /** `destinations`: 1 to 4 destination hosts' log-replica listeners, "host:port". */
  destinations: string[];
  /** `interval_ms` (default 10): how often the host reads the log for new records. */
  intervalMs: number;
}

/** The host's `log_replicas`: where it receives other hosts' logs (docs/pmem.md "Log replication"). */
export interface LogReplicasSpec {
  /** `listen` ("host:port"): the log-replica listener (protocol bv-pmem-log; TLS settings of `migration`). */
  listen: string;
  /** `dir`: where each VM's persistent-memory file `<vm>.pmem` is rebuilt. */
  dir: string;
}

/** A VM's memory balloon (`balloon` in the configuration, docs/balloon.md). */
export interface BalloonSpec {
  /** `amount_mib` (default 0): the balloon's target in MiB, at most the VM's memory_mib. */
  amountMib: number;
  /** `deflate_on_oom` (default false): the guest may deflate before it OOM-kills a process. */
  deflateOnOom: boolean;
  /** `stats_polling_interval_s` (default 0 = off): how often the host asks for the guest's statistics. */
  statsPollingIntervalS: number;
  /** `free_page_reporting` (default false): the guest may report free pages (fixed for the VM's life). */
  freePageReporting: boolean;
}

/** One VM as the host runs it (parsed, defaults applied). */
export interface VmSpec {
  /** `name`: 1 to 64 of `A-Z a-z 0-9 _ . -`, starting with a letter or digit (used in API paths and file names). */
  name: string;
  /** `image`: a `.s` source or a `.bvx` image, as given (a relative path is taken from the host's working directory). */
  image: string;
  /** `memory_mib` × 1 MiB: guest RAM. */
  memoryBytes: number;
  /** `vcpus` (default 1). */
  vcpus: number;
  /** `boot_args` (default ''): at most MAX_BOOT_ARGS_BYTES as UTF-8, no NUL. */
  bootArgs: string;
  /** `disk`: the top of a disk chain (a raw image or an overlay, docs/block-device.md), or null for none. */
  disk: DiskSpec | null;
  /** `mmu` (default shadow with traces): `traces` and `batch` are present only when given. */
  mmu: MmuOptions;
  /** `large_pages` (default 'superpages'). */
  largePages: LargePagePolicy;
  /** `tier` (default 'jit', or 'interp' when the environment says BV_TIER=interp): the execution tier. */
  tier: Tier;
  /** `console_input`: text given to the guest's console up front, or null. */
  consoleInput: string | null;
  /** `console_input_eof` (default false): the console input ends after consoleInput (no more can be sent through the API). */
  consoleInputEof: boolean;
  /** `max_instructions`: the VM stops (exit reason "budget") after this many instructions, or null for no limit. */
  maxInstructions: number | null;
  /** `start_paused` (default false): the VM is created paused and runs when resumed. */
  startPaused: boolean;
  /** `balloon`: a memory balloon; absent (or null in the file) for none. */
  balloon?: BalloonSpec;
  /** `meminfo` (default false): the MEMINFO device (docs/meminfo.md), which the memory scheduler keeps up to date. */
  meminfo: boolean;
  /** `pmem`: persistent memory backed by a file (docs/pmem.md); absent (or null in the file) for none. */
  pmem?: PmemSpec;
  /** `log_replication`: ship the pmkv log in `pmem` to other hosts (docs/pmem.md "Log replication"); absent (or null) for none. */
  logReplication?: LogReplicationSpec;
  /** `memory_policy`: shares, reservations, sampling (docs/overcommit.md "Shares"); defaults applied. */
  memoryPolicy: MemoryPolicySpec;
  /** `memory_errors`: the recovery methods kept for the VM (docs/memory-errors.md), or null for none (errors become machine checks). */
  memoryErrors: MemoryErrorsSpec | null;
  /** `io_shares` (default 1000): the VM's share of the host's IO window under storage_io (docs/storage-io.md). */
  ioShares: number;
  /** `group`: the worker group (worker_groups) the VM runs in, on its own thread (docs/workers.md); absent: the host's own thread. */
  group?: string;
}

/** A worker group (`worker_groups[]`, docs/workers.md): VMs on one worker thread, pinned to host CPUs. */
export interface WorkerGroupSpec {
  /** `name`: what VMs' `group` names. */
  name: string;
  /** `cpus`: the host CPUs the worker's thread may run on (sched_setaffinity), or null (default) to leave it to the OS. */
  cpus: number[] | null;
}

/** A VM's memory-error recovery (`memory_errors`): which methods, tried in this order, and their upkeep. */
export interface MemoryErrorsSpec {
  /** `methods`: any of "clean-copy", "parity", "hash", in the order recovery tries them. */
  methods: ('clean-copy' | 'parity' | 'hash')[];
  /** `parity_group_pages` (default 8): pages per parity group. */
  parityGroupPages: number;
  /** `refresh_instructions` (default 4,000,000): how often parity and hashes catch up with the guest's writes. */
  refreshInstructions: number;
}

/** A VM's memory policy (`memory_policy`): what the memory scheduler weighs it by (T-8, T-9). */
export interface MemoryPolicySpec {
  /** `shares` (default 10 per MiB of memory_mib, ESX's "normal"). */
  shares: number | null;
  /** `reservation_mib` (default 0): memory reclaim never takes the VM below. */
  reservationMib: number;
  /** `limit_mib` (default none): the most memory the VM may hold; above it, reclaim at any state. */
  limitMib: number | null;
  /** `active_sampling` (default on): sampled active memory; null when off. */
  activeSampling: {
    /** `pages_per_period` (null: the sampler's default, 100). */
    pagesPerPeriod: number | null;
    /** `period_instructions` (null: the sampler's default). */
    periodInstructions: number | null;
  } | null;
  /** `mrc` (default off): an online miss-rate curve; null when off. */
  mrc: {
    /** `rate_pct`: percent of guest pages sampled (null: the tracker's default, 1). */
    ratePct: number | null;
    /** `quiet_instructions` (null: the tracker's default). */
    quietInstructions: number | null;
    /** `activity_rate_pct`: percent of guest pages the activity census covers, 0 for none (null: the tracker's default, 3 × `rate_pct`). */
    activityRatePct?: number | null;
  } | null;
}

/** The reclaim ladder's thresholds in percent of the pool (`reclaim.thresholds_pct`); a key left out keeps its default. */
export interface ReclaimThresholds {
  /** Back to high at or above this (default 6). */
  high?: number;
  /** Below it: soft, ballooning (default 4). */
  soft?: number;
  /** Below it: hard, hypervisor swap too (default 2). */
  hard?: number;
  /** Below it: low, allocating VMs blocked (default 1). */
  low?: number;
}

/** The host's memory scheduler (`reclaim`, docs/overcommit.md): on by default when the host overcommits. */
export interface ReclaimSpec {
  /** `thresholds_pct`: the ladder's thresholds in percent of the pool (defaults 6 / 4 / 2 / 1). */
  thresholds: ReclaimThresholds;
  /** `sharing` (default true): content-based page sharing runs every tick (docs/page-sharing.md). */
  sharing: boolean;
  /** `swap_dir` (default the OS's temp directory): where the hypervisor swap file goes. */
  swapDir: string | null;
  /** `tax_rate` (default 0.75): the idle memory tax rate τ, 0 … 0.99. */
  taxRate: number;
}

/** A channel of the partition bus (`channels[]`, docs/bus.md). */
export interface ChannelSpec {
  /** `name`: the channel's name (the API's /channels/{name}). */
  name: string;
  /** `service`: 'block' (a client VM and a serving VM) or 'echo' (the host's echo service). */
  service: 'block' | 'echo';
  /** `client`: the client VM's name. */
  client: string;
  /** `server`: the serving VM's name, or 'echo'. */
  server: string;
  /** `versions` (default ["2.0", "1.0"]): the versions the host accepts, newest first. */
  versions: string[];
  /** `ring_pages` (default 64): most pages a grant opened on the channel may have. */
  ringPages: number;
}

/** The host: pool, scheduling, API limits, and the VMs it boots. */
export interface HostSpec {
  /** `host_memory_mib` × 1 MiB (default 1024 MiB): the host pool every VM takes frames from, reserved lazily. */
  hostMemoryBytes: number;
  /** `slice_instructions` (default 200,000): instructions each running VM gets per round-robin turn. */
  sliceInstructions: number;
  /** `quantum` (default 20,000): instructions per vCPU slice inside a VM's turn. */
  quantum: number;
  /** `console_buffer_kib` × 1 KiB (default 1 MiB): how much guest console output the host keeps per VM. */
  consoleBufferBytes: number;
  /** `api.max_body_kib` × 1 KiB (default 64 KiB): the largest API request body. */
  maxBodyBytes: number;
  /** `api.request_timeout_ms` (default 10 s): a client must send its whole request within this. */
  requestTimeoutMs: number;
  /**
   * `overcommit` (default false): whether the VMs' memory may add up to more than the pool. Off,
   * every VM's memory is reserved against the pool (config, create, restore, fork); on, any VM
   * is let in (even one larger than the pool) and the host reclaims memory when the pool runs short.
   */
  overcommit: boolean;
  /** `reclaim`: the memory scheduler, or null for none (default: on with its defaults when `overcommit` is, else off). */
  reclaim: ReclaimSpec | null;
  /** `vms` (default []): the VMs the host boots, in order. */
  vms: VmSpec[];
  /** `pmem_ha`: persistent-memory HA with a partner host (docs/pmem.md "High availability"), or null (default) for none. */
  pmemHa: PmemHaSpec | null;
  /** `migration`: how this host talks to other hosts (docs/migration.md). */
  migration: MigrationSpec;
  /** `log_replicas`: receive other hosts' pmkv logs, or null (default) for not. */
  logReplicas: LogReplicasSpec | null;
  /** `battery_ms` (default 0): how long the host may run after SIGTERM to flush replicated logs (power-loss hooks); 0: SIGTERM is a plain stop. */
  batteryMs: number;
  /** `worker_groups` (default []): worker threads the VMs with a `group` run in (docs/workers.md). */
  workerGroups: WorkerGroupSpec[];
  /** `storage_io`: decentralised IO control of the VMs' asynchronous disks (PARDA, docs/storage-io.md), or null (default) for none. */
  storageIo: StorageIoSpec | null;
  /** `placement`: power-aware placement of the unpinned worker groups (docs/placement.md), or null (default) for none. */
  placement: PlacementSpec | null;
  /** `channels` (default []): partition-bus channels between the host's own VMs, or to its echo service (docs/bus.md). */
  channels: ChannelSpec[];
}

/** The host's `storage_io` settings (docs/storage-io.md): PARDA over a storage device shared with other hosts. */
export interface StorageIoSpec {
  /** `stats_file`: the statistics file the hosts sharing the device publish in; null: `<first VM disk>.parda`. */
  statsFile: string | null;
  /** `host_id`: this host's slot in it, 0 … 255, unique among those hosts. */
  hostId: number;
  /** `latency_threshold_ms`: 𝓛, the cluster latency threshold (of a 4 KiB IO). */
  thresholdMs: number;
  /** `gamma` (default 0.5): how far one period moves the window towards the law's target. */
  gamma: number;
  /** `alpha` (default 0.5): the weight of history in the latency average. */
  alpha: number;
  /** `beta` (default 1.5): β for 1000 IO shares. */
  beta: number;
  /** `window_min` (default 1): the smallest window. */
  windowMin: number;
  /** `window_max` (default 256): the largest window. */
  windowMax: number;
  /** `period_ms` (default 250): the control period. */
  periodMs: number;
  /** `size_knee_kib` (default 128): the size-normalisation knee. */
  sizeKneeKib: number;
  /** `control` (default true): apply the law; false measures and publishes only. */
  control: boolean;
}

/** The host's `pmem_ha` settings (docs/pmem.md "High availability"): a partner to save to, and/or a listener to receive a partner's saves. */
export interface PmemHaSpec {
  /** `partner` ("host:port"): the partner's `pmem_ha.listen`; every VM's persistent memory is saved there; null: this host saves nowhere. */
  partner: string | null;
  /** `sync_interval_ms` (default 1,000; 0: none): background saves to the partner while the VMs run, so that a power-loss save has only the pages written since. */
  syncIntervalMs: number;
  /** `on_partner` (default "vm"): at a power loss the partner starts each VM saved whole as configured here ("vm"), with `app_boot_args` ("app"), or not ("none"). */
  onPartner: 'vm' | 'app' | 'none';
  /** `app_boot_args`: the boot arguments of the VM the partner starts with on_partner "app" (the application's recovery), or null. */
  appBootArgs: string | null;
  /** `listen` ("host:port"): receive a partner's saves here (protocol bv-pmem-ha, the TLS settings of `migration`); null: not. */
  listen: string | null;
  /** `dir`: where received persistent memory goes, `<vm>.pmem` (required with listen), or null. */
  dir: string | null;
}

/** The host's `migration` settings: certificates for mutual TLS, or explicitly none. */
export interface MigrationSpec {
  /** `tls` {ca, cert, key}, or `tls_dir` holding ca.pem, cert.pem and key.pem; null: none given. */
  tls: {
    /** The CA certificate whose certificates this host trusts (PEM path). */
    ca: string;
    /** This host's certificate (PEM path). */
    cert: string;
    /** This host's private key (PEM path). */
    key: string;
  } | null;
  /** `insecure` (default false): plain TCP without authentication; required when no TLS files are given. */
  insecure: boolean;
  /** `listen` ("host:port"): receive migrations from the start; null: only after PUT /migrations/receive. */
  listen: string | null;
  /** `stall_timeout_ms` (default 10,000): a peer silent this long fails the migration. */
  stallTimeoutMs: number;
  /** `name` (default: the machine's host name): how this host introduces itself to peers (their logs and `GET /migrations`, `GET /replicas`). */
  name: string;
  /** `disk_dir`: where the disks of VMs migrated or replicated here are written (their overlays); null: next to the disk's raw base image. */
  diskDir: string | null;
}

/** One thing wrong with a configuration. */
export interface ConfigProblem {
  /** The offending field, e.g. `vms[0].memory_mib` ('' for the whole document or file). */
  readonly path: string;
  /** What is wrong with it, e.g. `must be an integer from 1 to 3840, got 0`. */
  readonly problem: string;
}

/**
 * A configuration that cannot be used: unreadable, malformed JSON, or refused by the schema or
 * the semantic checks. `path` names the first offending field; the message is
 * `${path}: ${problem}` and lists up to three more problems as `(and N more: …)`.
 */
export class ConfigError extends BvError {
  /** The first offending field, as `vms[0].memory_mib` ('' for the whole document or file). */
  readonly path: string;
  /** Every problem found, the first (the one `path` names) included, in document order. */
  readonly problems: readonly ConfigProblem[];

  /**
   * `path` and `problem` are the first problem; `more` the others (up to three are listed in
   * the message); `file` is put before the message (the configuration file it came from).
   */
  constructor(path: string, problem: string, options: { more?: readonly ConfigProblem[]; file?: string; cause?: unknown } = {}) {
    const more = options.more ?? [];
    const listed = more.slice(0, MORE_LISTED).map(statement).join('; ');
    const tail = more.length === 0 ? '' : ` (and ${more.length} more: ${listed}${more.length > MORE_LISTED ? '; …' : ''})`;
    const file = options.file === undefined ? '' : `${options.file}: `;
    super('BV_CONFIG', `${file}${statement({ path, problem })}${tail}`, { cause: options.cause });
    this.path = path;
    this.problems = [{ path, problem }, ...more];
  }
}

/** How many problems after the first a ConfigError message lists. */
const MORE_LISTED = 3;

function statement({ path, problem }: ConfigProblem): string {
  return path === '' ? problem : `${path}: ${problem}`;
}

const KIB = 1024;
const MIB = 1024 * KIB;
/** Guest RAM is [0, memory): it must end at or below the device table. */
const MAX_MEMORY_MIB = Math.floor(GuestPhys.DEVICE_TABLE / MIB);
/** What a VM name must match (it appears in API paths and file names). */
export const VM_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';
const NAME_RULE = "a name of 1 to 64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit";
const MMU_MODES = ['shadow', 'nested'] as const;
const LARGE_PAGE_POLICIES = ['off', 'superpages', 'always'] as const satisfies readonly LargePagePolicy[];
const TIERS = ['interp', 'jit'] as const satisfies readonly Tier[];

/** The defaults of the VM keys, used by both the schema (as `default`) and the parser. */
const VM_DEFAULTS = {
  vcpus: 1,
  boot_args: '',
  disk: null,
  mmu_mode: 'shadow',
  large_pages: 'superpages',
  console_input: null,
  console_input_eof: false,
  max_instructions: null,
  start_paused: false,
  balloon: null,
  meminfo: false,
} as const;

/** The most shares a VM may hold (keeps ρ's arithmetic far from overflow and typos obvious). */
export const MAX_SHARES = 1_000_000_000;

/** The defaults of the `balloon` keys. */
const BALLOON_DEFAULTS = {
  amount_mib: 0,
  deflate_on_oom: false,
  stats_polling_interval_s: 0,
  free_page_reporting: false,
} as const;

/**
 * The longest statistics polling interval, in seconds: a day, as the device takes it
 * (BALLOON_MAX_STATS_INTERVAL_S; not imported, so that reading a configuration loads no kernel).
 */
export const MAX_STATS_INTERVAL_S = 86_400;

/** The defaults of the host keys (the schema's `default`s and the parser's). */
const HOST_DEFAULTS = {
  host_memory_mib: 1024,
  slice_instructions: 200_000,
  quantum: 20_000,
  console_buffer_kib: 1024,
  max_body_kib: 64,
  request_timeout_ms: 10_000,
} as const;

function integer(minimum: number, maximum: number, description: string, more: object = {}): object {
  return { type: 'integer', minimum, maximum, ...more, description };
}

/** The schema of one VM, without `$schema` (it is also the host schema's `$defs.vm`). */
const VM_BODY = {
  title: 'bytevisor VM',
  description: 'One VM: its image, memory, vCPUs, boot arguments, disk, MMU and large-page options.',
  type: 'object',
  additionalProperties: false,
  required: ['name', 'image', 'memory_mib'],
  properties: {
    name: { type: 'string', pattern: VM_NAME_PATTERN, description: 'The VM\'s name, unique in the host (API paths and file names use it).' },
    image: { type: 'string', minLength: 1, description: 'A .s source or .bvx image; a relative path is taken from the host\'s working directory.' },
    memory_mib: integer(1, MAX_MEMORY_MIB, 'Guest RAM in MiB (it must end below the device table at guest-physical 0xf0000000).'),
    vcpus: integer(1, 32, 'Virtual CPUs.', { default: VM_DEFAULTS.vcpus }),
    boot_args: { type: 'string', default: VM_DEFAULTS.boot_args, description: `Boot arguments: at most ${MAX_BOOT_ARGS_BYTES} bytes as UTF-8, no NUL.` },
    disk: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['path'],
      properties: {
        path: { type: 'string', minLength: 1, description: 'The top of the disk chain: a raw image or an overlay.' },
        overlay_dir: { type: 'string', minLength: 1, description: 'Where the VM\'s copy-on-write overlays are written.' },
        async: { type: 'boolean', description: 'Accept asynchronous requests (several in flight, completion interrupts; docs/block-device.md); storage_io gates them (default false).' },
        direct: { type: 'boolean', description: 'Asynchronous transfers bypass the host page cache with O_DIRECT (default false).' },
      },
      default: VM_DEFAULTS.disk,
      description: 'A block device (docs/block-device.md), or null for none.',
    },
    mmu: {
      type: 'object',
      additionalProperties: false,
      properties: {
        mode: { type: 'string', enum: MMU_MODES, default: VM_DEFAULTS.mmu_mode, description: 'How guest page tables are virtualised.' },
        traces: { type: 'boolean', description: 'Keep the shadow tables coherent with traces (shadow only; default true).' },
        batch: integer(0, 1023, 'Neighbouring PTEs cached per walk (shadow only; default 16, 0 disables).'),
      },
      description: 'MMU options (docs/mmu.md).',
    },
    large_pages: { type: 'string', enum: LARGE_PAGE_POLICIES, default: VM_DEFAULTS.large_pages, description: 'When 4 MiB guest regions get 4 MiB host runs.' },
    tier: { type: 'string', enum: TIERS, description: 'Execution tier: "jit" (hot guest code compiled to JavaScript) or "interp" (the interpreter); the same results, only speed differs. Default: the kernel\'s (docs/performance.md, "Compiled tier").' },
    console_input: { type: ['string', 'null'], default: VM_DEFAULTS.console_input, description: 'Text given to the guest\'s console up front.' },
    console_input_eof: { type: 'boolean', default: VM_DEFAULTS.console_input_eof, description: 'Close the console input after console_input.' },
    max_instructions: {
      type: ['integer', 'null'],
      minimum: 1,
      maximum: Number.MAX_SAFE_INTEGER,
      default: VM_DEFAULTS.max_instructions,
      description: 'Stop the VM (exit reason "budget") after this many instructions.',
    },
    start_paused: { type: 'boolean', default: VM_DEFAULTS.start_paused, description: 'Create the VM paused.' },
    balloon: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: {
        amount_mib: integer(0, MAX_MEMORY_MIB, 'The balloon\'s target in MiB (at most the VM\'s memory_mib).', { default: BALLOON_DEFAULTS.amount_mib }),
        deflate_on_oom: { type: 'boolean', default: BALLOON_DEFAULTS.deflate_on_oom, description: 'The guest may deflate the balloon before it OOM-kills a process.' },
        stats_polling_interval_s: integer(0, MAX_STATS_INTERVAL_S, 'Seconds between requests for the guest\'s statistics; 0: no statistics.', { default: BALLOON_DEFAULTS.stats_polling_interval_s }),
        free_page_reporting: { type: 'boolean', default: BALLOON_DEFAULTS.free_page_reporting, description: 'The guest may report free pages, whose frames the host releases.' },
      },
      default: VM_DEFAULTS.balloon,
      description: 'A memory balloon (docs/balloon.md), or null for none.',
    },
    meminfo: { type: 'boolean', default: VM_DEFAULTS.meminfo, description: 'Attach the MEMINFO device (docs/meminfo.md).' },
    io_shares: integer(1, 1_000_000, 'The VM\'s share of the host\'s IO window under storage_io (docs/storage-io.md).', { default: 1000 }),
    pmem: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['path', 'size_kib'],
      properties: {
        path: { type: 'string', minLength: 1, description: 'The backing file: a regular file of exactly size_kib KiB (or absent, with create).' },
        size_kib: integer(4, PMEM_MAX_BYTES / 1024, 'The size of the persistent memory in KiB: a multiple of 4.', { multipleOf: 4 }),
        create: { type: 'boolean', default: false, description: 'Create a missing file (zero-filled); an existing file must still have the size.' },
      },
      default: null,
      description: 'Persistent memory (docs/pmem.md): a guest-physical range after RAM whose bytes are the file; or null for none. Checkpoints, snapshots, migration and fork of the VM are refused.',
    },
    log_replication: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['destinations'],
      properties: {
        destinations: {
          type: 'array', minItems: 1, maxItems: 4, uniqueItems: true,
          items: { type: 'string', pattern: '^.+:[0-9]{1,5}$' },
          description: 'Destination hosts\' log-replica listeners (their log_replicas.listen), host:port.',
        },
        interval_ms: integer(1, 60_000, 'How often the host reads the log for new records, in ms.', { default: 10 }),
      },
      default: null,
      description: 'Ship the pmkv log kept in pmem to other hosts asynchronously (docs/pmem.md "Log replication"); needs pmem. Or null for none.',
    },
    memory_policy: {
      type: 'object',
      additionalProperties: false,
      properties: {
        shares: integer(1, MAX_SHARES, 'Memory shares: the VM that pays least per page it holds gives memory first (default 10 per MiB).'),
        reservation_mib: integer(0, MAX_MEMORY_MIB, 'Memory reclaim never takes the VM below this (default 0).', { default: 0 }),
        limit_mib: { type: ['integer', 'null'], minimum: 1, maximum: MAX_MEMORY_MIB, default: null, description: 'The most memory the VM may hold; above it the host reclaims at any state (default: none).' },
        active_sampling: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: {
            pages_per_period: integer(1, 100_000, 'Guest pages sampled per period (default 100, as ESX).'),
            period_instructions: integer(10_000, 1e12, 'A sampling period in the VM\'s own instructions.'),
          },
          description: 'Sampled active memory (docs/active-memory.md); null: off. Default: on.',
        },
        mrc: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: {
            rate_pct: { type: 'number', exclusiveMinimum: 0, maximum: 100, description: 'Percent of guest pages sampled (default 1).' },
            quiet_instructions: integer(1, 1e12, 'Instructions after an access before a sampled page is watched again.'),
            activity_rate_pct: {
              type: 'number', minimum: 0, maximum: 100,
              description: 'Percent of guest pages the activity census covers (post-stratification, docs/mrc.md): 0 for none, else at least rate_pct (default 3 × rate_pct, at most 100).',
            },
          },
          default: null,
          description: 'An online miss-rate curve (docs/mrc.md); null: off (the default).',
        },
      },
      description: 'How the memory scheduler weighs this VM (docs/overcommit.md, "Shares").',
    },
    group: { type: 'string', pattern: VM_NAME_PATTERN, description: 'The worker group (worker_groups) whose thread runs this VM (docs/workers.md); default: the host\'s own thread.' },
    memory_errors: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['methods'],
      properties: {
        methods: {
          type: 'array', uniqueItems: true, maxItems: 3, items: { type: 'string', enum: ['clean-copy', 'parity', 'hash'] },
          description: 'Recovery methods, in the order they are tried (docs/recovery.md).',
        },
        parity_group_pages: integer(2, 64, 'Pages per parity group.', { default: 8 }),
        refresh_instructions: integer(100_000, 1e12, 'Guest instructions between two catch-ups of parity and hashes with the guest\'s writes.', { default: 4_000_000 }),
      },
      default: null,
      description: 'Memory-error recovery kept for this VM (docs/memory-errors.md); null: none, an error is a machine check.',
    },
  },
};

const DRAFT_2020_12 = 'https://json-schema.org/draft/2020-12/schema';

/** The JSON Schema (draft 2020-12) of one VM: a `vms` entry, and the body of `PUT /vms/{name}`. */
export const VM_CONFIG_SCHEMA: object = deepFreeze({ $schema: DRAFT_2020_12, ...VM_BODY });

/** A channel without its name: the body of `PUT /channels/{name}`, and (with `name`) a `channels` entry. */
const CHANNEL_BODY = {
  type: 'object',
  additionalProperties: false,
  required: ['service', 'client', 'server'],
  properties: {
    service: { enum: ['block', 'echo'], description: 'block: a client VM and a serving VM; echo: the host returns every packet.' },
    client: { type: 'string', pattern: VM_NAME_PATTERN, description: 'The client VM (its slot offers BLOCK, or ECHO).' },
    server: { type: 'string', pattern: VM_NAME_PATTERN, description: 'The serving VM (its slot offers BLOCK_SERVER), or "echo".' },
    versions: {
      type: 'array', minItems: 1, maxItems: 16, uniqueItems: true, items: { type: 'string', pattern: '^[0-9]{1,5}\\.[0-9]{1,5}$' },
      description: 'Versions the host accepts, "major.minor", newest first (default ["2.0", "1.0"]).',
    },
    ring_pages: integer(4, 64, 'Most pages (both rings, headers included) a grant opened on this channel may have.', { default: 64 }),
  },
  description: 'A partition-bus channel (docs/bus.md).',
};

/** The JSON Schema of the body of `PUT /channels/{name}` (a channel without its name). */
export const CHANNEL_BODY_SCHEMA: object = deepFreeze({ ...CHANNEL_BODY });

/** The JSON Schema (draft 2020-12) of the host configuration file. */
export const HOST_CONFIG_SCHEMA: object = deepFreeze({
  $schema: DRAFT_2020_12,
  title: 'bytevisor host',
  description: 'A bytevisor host: its memory pool, scheduling, API limits and the VMs it boots.',
  type: 'object',
  additionalProperties: false,
  properties: {
    host_memory_mib: integer(4, 4096, 'The host pool in MiB (reserved lazily).', { multipleOf: 4, default: HOST_DEFAULTS.host_memory_mib }),
    slice_instructions: integer(1000, 100_000_000, 'Instructions each running VM gets per round-robin turn.', { default: HOST_DEFAULTS.slice_instructions }),
    quantum: integer(100, 10_000_000, 'Instructions per vCPU slice inside a VM\'s turn.', { default: HOST_DEFAULTS.quantum }),
    console_buffer_kib: integer(1, 65536, 'Guest console output kept per VM, in KiB.', { default: HOST_DEFAULTS.console_buffer_kib }),
    overcommit: { type: 'boolean', default: false, description: 'Let the VMs\' memory add up to more than the pool; the memory scheduler reclaims when it runs short.' },
    reclaim: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: {
        thresholds_pct: {
          type: 'object',
          additionalProperties: false,
          properties: {
            high: { type: 'number', exclusiveMinimum: 0, maximum: 100, description: 'Back to high at or above this percent of the pool free (default 6).' },
            soft: { type: 'number', exclusiveMinimum: 0, maximum: 100, description: 'Below it: soft, ballooning (default 4).' },
            hard: { type: 'number', exclusiveMinimum: 0, maximum: 100, description: 'Below it: hard, hypervisor swap too (default 2).' },
            low: { type: 'number', exclusiveMinimum: 0, maximum: 100, description: 'Below it: low, allocating VMs blocked (default 1).' },
          },
          description: 'The reclaim ladder\'s thresholds in percent of the pool.',
        },
        sharing: { type: 'boolean', default: true, description: 'Run content-based page sharing every tick.' },
        swap_dir: { type: 'string', minLength: 1, description: 'Where the hypervisor swap file goes (default: the OS temp directory).' },
        tax_rate: { type: 'number', minimum: 0, maximum: 0.99, default: 0.75, description: 'The idle memory tax rate: an idle page costs 1 / (1 − tax_rate) active ones (default 0.75).' },
      },
      description: 'The memory scheduler (docs/overcommit.md); null: off. Default: on when overcommit is.',
    },
    api: {
      type: 'object',
      additionalProperties: false,
      properties: {
        max_body_kib: integer(1, 16384, 'The largest API request body, in KiB.', { default: HOST_DEFAULTS.max_body_kib }),
        request_timeout_ms: integer(100, 600_000, 'A client must send its whole request within this.', { default: HOST_DEFAULTS.request_timeout_ms }),
      },
      description: 'Limits of the control API.',
    },
    migration: {
      type: 'object',
      additionalProperties: false,
      properties: {
        tls: {
          type: 'object',
          additionalProperties: false,
          required: ['ca', 'cert', 'key'],
          properties: {
            ca: { type: 'string', minLength: 1, description: 'PEM file of the CA whose certificates this host trusts.' },
            cert: { type: 'string', minLength: 1, description: 'PEM file of this host\'s certificate (used as server and as client).' },
            key: { type: 'string', minLength: 1, description: 'PEM file of this host\'s private key.' },
          },
          description: 'Mutual TLS between hosts: both ends present a certificate the other\'s CA signed.',
        },
        tls_dir: { type: 'string', minLength: 1, description: 'A directory holding ca.pem, cert.pem and key.pem (instead of tls).' },
        insecure: { type: 'boolean', default: false, description: 'Plain TCP with no authentication: only for tests and trusted networks.' },
        listen: { type: 'string', pattern: '^.+:[0-9]{1,5}$', description: 'host:port to receive migrations on from the start (port 0: any free one).' },
        stall_timeout_ms: integer(100, 3_600_000, 'A peer silent this long fails the migration.', { default: 10_000 }),
        disk_dir: { type: 'string', minLength: 1, description: 'Where the disks of VMs migrated or replicated here are written (default: next to the disk\'s raw base image; required for a disk without one).' },
        name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', description: 'How this host introduces itself to peers (default: the machine\'s host name).' },
      },
      description: 'Talking to other hosts: live migration (docs/migration.md).',
    },
    log_replicas: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['listen', 'dir'],
      properties: {
        listen: { type: 'string', pattern: '^.+:[0-9]{1,5}$', description: 'host:port to receive pmkv logs on (protocol bv-pmem-log, with the TLS settings of migration; port 0: any free one).' },
        dir: { type: 'string', minLength: 1, description: 'Where each VM\'s persistent-memory file <vm>.pmem is rebuilt from its log.' },
      },
      default: null,
      description: 'Receive other hosts\' pmkv logs (docs/pmem.md "Log replication"), or null for not.',
    },
    placement: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: {
        interval_ms: integer(50, 60_000, 'How often group demands are sampled and the placement re-evaluated.', { default: 1000 }),
        target_utilisation: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 0.8, description: 'The most load a CPU shared by groups may carry.' },
        spread_hold_ms: integer(0, 3_600_000, 'How long overload must last before groups are spread.', { default: 2000 }),
        consolidate_hold_ms: integer(0, 3_600_000, 'How long a consolidation must stay better before groups are packed.', { default: 10_000 }),
      },
      default: null,
      description: 'Power-aware placement of the worker groups without cpus (docs/placement.md); null: none.',
    },
    worker_groups: {
      type: 'array',
      maxItems: 64,
      default: [],
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name'],
        properties: {
          name: { type: 'string', pattern: VM_NAME_PATTERN, description: 'The group\'s name (a VM\'s group names it).' },
          cpus: { type: 'array', minItems: 1, maxItems: 1024, uniqueItems: true, items: { type: 'integer', minimum: 0, maximum: 1023 }, description: 'Host CPUs the group\'s thread may run on (sched_setaffinity); default: any.' },
        },
      },
      description: 'Worker threads for VMs (docs/workers.md): a VM with group runs on its group\'s thread, over the same host pool.',
    },
    storage_io: {
      type: ['object', 'null'],
      additionalProperties: false,
      required: ['host_id', 'latency_threshold_ms'],
      properties: {
        stats_file: { type: 'string', minLength: 1, description: 'The statistics file of the hosts sharing the storage device (default: <first VM disk>.parda, next to the image).' },
        host_id: integer(0, 255, 'This host\'s slot in the statistics file, unique among the hosts sharing the device.'),
        latency_threshold_ms: { type: 'number', exclusiveMinimum: 0, maximum: 60_000, description: 'The cluster latency threshold 𝓛, ms (of a 4 KiB IO).' },
        gamma: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 0.5, description: 'γ: how far one period moves the window towards the law\'s target.' },
        alpha: { type: 'number', minimum: 0, exclusiveMaximum: 1, default: 0.5, description: 'α: the weight of history in the latency average.' },
        beta: { type: 'number', minimum: 0, maximum: 1000, default: 1.5, description: 'β for 1000 IO shares: the host\'s β is this times its VMs\' io_shares / 1000.' },
        window_min: { type: 'number', minimum: 1, maximum: 4096, default: 1, description: 'The smallest window (IOs in flight).' },
        window_max: { type: 'number', minimum: 1, maximum: 4096, default: 256, description: 'The largest window; the window when control is false.' },
        period_ms: integer(10, 60_000, 'The control period: publish, read the others, apply the law.', { default: 250 }),
        size_knee_kib: { type: 'number', minimum: 0, maximum: 1_048_576, default: 128, description: 'The IO size whose transfer costs as much as an IO\'s fixed part (latencies are normalised to 4 KiB with it).' },
        control: { type: 'boolean', default: true, description: 'Apply the control law; false: measure and publish only (uncontrolled).' },
      },
      default: null,
      description: 'Decentralised IO control of the VMs\' asynchronous disks with other hosts sharing the device (PARDA, docs/storage-io.md), or null for none.',
    },
    battery_ms: integer(0, 600_000, 'How long the host may keep running after SIGTERM to flush replicated logs (its power-loss hooks); 0: SIGTERM is a plain stop.', { default: 0 }),
    pmem_ha: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: {
        partner: { type: 'string', pattern: '^.+:[0-9]{1,5}$', description: 'The partner host\'s pmem_ha.listen, host:port: every VM\'s persistent memory is saved there, and at a power loss what is left of it.' },
        sync_interval_ms: integer(0, 3_600_000, 'Background saves to the partner every this many ms while the VMs run (0: none, everything goes at the power loss).', { default: 1000 }),
        on_partner: { enum: ['vm', 'app', 'none'], default: 'vm', description: 'What the partner does with each VM saved whole at a power loss: start it as configured here (vm), start it with app_boot_args (app), or nothing (none).' },
        app_boot_args: { type: 'string', description: 'The boot arguments the partner starts the VM with when on_partner is app (the application\'s own recovery).' },
        listen: { type: 'string', pattern: '^.+:[0-9]{1,5}$', description: 'host:port to receive a partner\'s saves on (protocol bv-pmem-ha, with the TLS settings of migration; port 0: any free one).' },
        dir: { type: 'string', minLength: 1, description: 'Where received persistent memory is written, <vm>.pmem (required with listen).' },
      },
      default: null,
      description: 'Persistent-memory HA (docs/pmem.md "High availability"): save to a partner host, receive a partner\'s saves, or both; or null for none.',
    },
    channels: {
      type: 'array',
      maxItems: 256,
      default: [],
      items: { ...CHANNEL_BODY, required: ['name', 'service', 'client', 'server'], properties: { name: { type: 'string', pattern: VM_NAME_PATTERN, description: 'The channel\'s name.' }, ...CHANNEL_BODY.properties } },
      description: 'Partition-bus channels between the host\'s own VMs or to its echo service (docs/bus.md).',
    },
    vms: { type: 'array', items: { $ref: '#/$defs/vm' }, default: [], description: 'The VMs the host boots, in order.' },
  },
  $defs: { vm: VM_BODY },
});

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** A VM as it is after the schema check. */
interface VmJson {
  name: string;
  image: string;
  memory_mib: number;
  vcpus?: number;
  boot_args?: string;
  disk?: { path: string; overlay_dir?: string; async?: boolean; direct?: boolean } | null;
  mmu?: { mode?: (typeof MMU_MODES)[number]; traces?: boolean; batch?: number };
  large_pages?: LargePagePolicy;
  tier?: Tier;
  console_input?: string | null;
  console_input_eof?: boolean;
  max_instructions?: number | null;
  start_paused?: boolean;
  balloon?: { amount_mib?: number; deflate_on_oom?: boolean; stats_polling_interval_s?: number; free_page_reporting?: boolean } | null;
  meminfo?: boolean;
  io_shares?: number;
  pmem?: { path: string; size_kib: number; create?: boolean } | null;
  log_replication?: { destinations: string[]; interval_ms?: number } | null;
  memory_policy?: {
    shares?: number; reservation_mib?: number; limit_mib?: number | null;
    active_sampling?: { pages_per_period?: number; period_instructions?: number } | null;
    mrc?: { rate_pct?: number; quiet_instructions?: number; activity_rate_pct?: number } | null;
  };
  memory_errors?: { methods: ('clean-copy' | 'parity' | 'hash')[]; parity_group_pages?: number; refresh_instructions?: number } | null;
  group?: string;
}

/** The host file as it is after the schema check. */
interface HostJson {
  host_memory_mib?: number;
  slice_instructions?: number;
  quantum?: number;
  console_buffer_kib?: number;
  overcommit?: boolean;
  reclaim?: { thresholds_pct?: { high?: number; soft?: number; hard?: number; low?: number }; sharing?: boolean; swap_dir?: string; tax_rate?: number } | null;
  api?: { max_body_kib?: number; request_timeout_ms?: number };
  vms?: VmJson[];
  pmem_ha?: { partner?: string; sync_interval_ms?: number; on_partner?: 'vm' | 'app' | 'none'; app_boot_args?: string; listen?: string; dir?: string } | null;
  migration?: { tls?: { ca: string; cert: string; key: string }; tls_dir?: string; insecure?: boolean; listen?: string; stall_timeout_ms?: number; name?: string; disk_dir?: string };
  log_replicas?: { listen: string; dir: string } | null;
  battery_ms?: number;
  worker_groups?: { name: string; cpus?: number[] }[];
  placement?: { interval_ms?: number; target_utilisation?: number; spread_hold_ms?: number; consolidate_hold_ms?: number } | null;
  storage_io?: { stats_file?: string; host_id: number; latency_threshold_ms: number; gamma?: number; alpha?: number; beta?: number; window_min?: number; window_max?: number; period_ms?: number; size_knee_kib?: number; control?: boolean } | null;
  channels?: ({ name: string } & ChannelJson)[];
}

/** A channel body as it is after the schema check. */
export interface ChannelJson {
  /** 'block' or 'echo'. */
  service: 'block' | 'echo';
  /** The client VM. */
  client: string;
  /** The serving VM, or 'echo'. */
  server: string;
  /** "major.minor" versions, newest first. */
  versions?: string[];
  /** Most pages of a grant. */
  ring_pages?: number;
}

/** A channel from its (schema-checked) JSON. */
export function toChannelSpec(name: string, json: ChannelJson): ChannelSpec {
  return { name, service: json.service, client: json.client, server: json.server, versions: json.versions ?? ['2.0', '1.0'], ringPages: json.ring_pages ?? 64 };
}

let ajv: Ajv2020 | undefined;

/** The compiled validator of a schema: ajv compiles each schema object once and caches it. */
function validator(schema: object): ValidateFunction {
  // verbose: errors carry the failing value and its schema, which the messages describe.
  ajv ??= new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true, verbose: true });
  return ajv.compile(schema);
}

/** A problem found at a place in the document (segments from the value that was checked). */
interface Found {
  segments: (string | number)[];
  problem: string;
}

/**
 * Checks a host configuration (a parsed JSON value): the schema, then the semantic checks.
 * Throws ConfigError naming the first problem in document order.
 */
export function parseHostConfig(json: unknown): HostSpec {
  const found = schemaProblems(validator(HOST_CONFIG_SCHEMA), json);
  if (isObject(json)) {
    const vms = json.vms;
    if (Array.isArray(vms)) {
      vms.forEach((vm, index) => found.push(...vmProblems(vm, ['vms', index])));
      found.push(...crossVmProblems(json, vms));
    }
    found.push(...reclaimProblems(json.reclaim));
    found.push(...pmemHaProblems(json.pmem_ha, json.migration));
    found.push(...migrationProblems(json.migration));
    found.push(...workerGroupProblems(json.worker_groups, json.vms, json.placement));
    found.push(...storageIoProblems(json.storage_io, json.vms));
    found.push(...channelProblems(json.channels, json.vms));
  }
  throwIfAny(found, json, '');
  const host = json as HostJson;
  return {
    hostMemoryBytes: (host.host_memory_mib ?? HOST_DEFAULTS.host_memory_mib) * MIB,
    sliceInstructions: host.slice_instructions ?? HOST_DEFAULTS.slice_instructions,
    quantum: host.quantum ?? HOST_DEFAULTS.quantum,
    consoleBufferBytes: (host.console_buffer_kib ?? HOST_DEFAULTS.console_buffer_kib) * KIB,
    overcommit: host.overcommit ?? false,
    reclaim: host.reclaim === null || (host.reclaim === undefined && host.overcommit !== true)
      ? null
      : { thresholds: { ...host.reclaim?.thresholds_pct }, sharing: host.reclaim?.sharing ?? true, swapDir: host.reclaim?.swap_dir ?? null, taxRate: host.reclaim?.tax_rate ?? 0.75 },
    maxBodyBytes: (host.api?.max_body_kib ?? HOST_DEFAULTS.max_body_kib) * KIB,
    requestTimeoutMs: host.api?.request_timeout_ms ?? HOST_DEFAULTS.request_timeout_ms,
    vms: (host.vms ?? []).map(toVmSpec),
    pmemHa: host.pmem_ha == null ? null : toPmemHaSpec(host.pmem_ha),
    migration: toMigrationSpec(host.migration),
    logReplicas: host.log_replicas == null ? null : { listen: host.log_replicas.listen, dir: host.log_replicas.dir },
    batteryMs: host.battery_ms ?? 0,
    workerGroups: (host.worker_groups ?? []).map((group) => ({ name: group.name, cpus: group.cpus ?? null })),
    placement: host.placement == null ? null : {
      intervalMs: host.placement.interval_ms ?? 1000,
      targetUtilisation: host.placement.target_utilisation ?? 0.8,
      spreadHoldMs: host.placement.spread_hold_ms ?? 2000,
      consolidateHoldMs: host.placement.consolidate_hold_ms ?? 10_000,
    },
    storageIo: host.storage_io == null ? null : toStorageIoSpec(host.storage_io, (host.vms ?? []).map(toVmSpec)),
    channels: (host.channels ?? []).map((channel) => toChannelSpec(channel.name, channel)),
  };
}

/**
 * Channel names are unique; client and server name VMs of the configuration (server "echo" with
 * service "echo"), two different ones; they may run in any threads (docs/bus.md "Across threads").
 */
function channelProblems(channels: unknown, vms: unknown): Found[] {
  if (!Array.isArray(channels)) return [];
  const found: Found[] = [];
  const vmGroups = new Map<string, unknown>();
  if (Array.isArray(vms)) for (const vm of vms) if (isObject(vm) && typeof vm.name === 'string') vmGroups.set(vm.name, vm.group);
  const names = new Set<string>();
  channels.forEach((channel, index) => {
    if (!isObject(channel)) return;
    if (typeof channel.name === 'string') {
      if (names.has(channel.name)) found.push({ segments: ['channels', index, 'name'], problem: `'${channel.name}' names two channels` });
      names.add(channel.name);
    }
    if ((channel.service === 'echo') !== (channel.server === 'echo')) found.push({ segments: ['channels', index, 'server'], problem: 'is "echo" exactly when service is "echo"' });
    if (channel.client === channel.server) found.push({ segments: ['channels', index, 'server'], problem: 'is the client itself' });
    for (const role of ['client', 'server'] as const) {
      const vm = channel[role];
      if (typeof vm !== 'string' || vm === 'echo') continue;
      if (!vmGroups.has(vm)) found.push({ segments: ['channels', index, role], problem: `names no VM of this configuration ('${vm}')` });
    }
  });
  return found;
}

function toPmemHaSpec(json: NonNullable<HostJson['pmem_ha']>): PmemHaSpec {
  return {
    partner: json.partner ?? null, syncIntervalMs: json.sync_interval_ms ?? 1000, onPartner: json.on_partner ?? 'vm',
    appBootArgs: json.app_boot_args ?? null, listen: json.listen ?? null, dir: json.dir ?? null,
  };
}

/** pmem_ha needs a partner or a listener, a listener needs dir, "app" needs its boot arguments, and either needs TLS or insecure. */
function pmemHaProblems(ha: unknown, migration: unknown): Found[] {
  if (!isObject(ha)) return [];
  const found: Found[] = [];
  if (ha.partner === undefined && ha.listen === undefined) found.push({ segments: ['pmem_ha'], problem: 'needs partner (save to it), listen (receive saves), or both' });
  if (ha.listen !== undefined && ha.dir === undefined) found.push({ segments: ['pmem_ha', 'dir'], problem: 'is required with listen (where received persistent memory is written)' });
  if (ha.on_partner === 'app' && (typeof ha.app_boot_args !== 'string' || ha.app_boot_args === '')) found.push({ segments: ['pmem_ha', 'app_boot_args'], problem: 'is required when on_partner is app' });
  const m = isObject(migration) ? migration : {};
  if ((ha.partner !== undefined || ha.listen !== undefined) && m.tls === undefined && m.tls_dir === undefined && m.insecure !== true) {
    found.push({ segments: ['pmem_ha'], problem: 'talks to another host: needs migration.tls (or tls_dir), or migration.insecure for plain TCP' });
  }
  return found;
}

/** Group names are unique; a VM's group is one of them; a VM with persistent memory stays in the host's thread (pmem HA and the power-loss hooks are its). */
function workerGroupProblems(groups: unknown, vms: unknown, placement: unknown): Found[] {
  const found: Found[] = [];
  if (isObject(placement) && (!Array.isArray(groups) || !groups.some((g) => isObject(g) && g.cpus === undefined))) {
    found.push({ segments: ['placement'], problem: 'places worker groups without cpus, and there is none (worker_groups in docs/host.md)' });
  }
  const names = new Set<string>();
  if (Array.isArray(groups)) {
    groups.forEach((group, index) => {
      if (!isObject(group) || typeof group.name !== 'string') return;
      if (names.has(group.name)) found.push({ segments: ['worker_groups', index, 'name'], problem: `'${group.name}' names two worker groups` });
      names.add(group.name);
    });
  }
  if (Array.isArray(vms)) {
    vms.forEach((vm, index) => {
      if (!isObject(vm) || vm.group === undefined) return;
      if (typeof vm.group === 'string' && !names.has(vm.group)) found.push({ segments: ['vms', index, 'group'], problem: `names no worker group (worker_groups has ${names.size === 0 ? 'none' : [...names].map((n) => `'${n}'`).join(', ')})` });
    });
  }
  return found;
}

/** window_min ≤ window_max; without stats_file a VM must have a disk to put it next to. */
function storageIoProblems(storageIo: unknown, vms: unknown): Found[] {
  if (!isObject(storageIo)) return [];
  const found: Found[] = [];
  const min = typeof storageIo.window_min === 'number' ? storageIo.window_min : 1;
  const max = typeof storageIo.window_max === 'number' ? storageIo.window_max : 256;
  if (max < min) found.push({ segments: ['storage_io', 'window_max'], problem: `must be at least window_min (${min}), got ${max}` });
  const withDisk = Array.isArray(vms) && vms.some((vm) => isObject(vm) && isObject(vm.disk));
  if (storageIo.stats_file === undefined && !withDisk) found.push({ segments: ['storage_io'], problem: 'needs stats_file: no VM has a disk to put the statistics file next to' });
  return found;
}

/** The `storage_io` settings with defaults; stats_file null: next to the first VM's disk. */
export function toStorageIoSpec(json: NonNullable<HostJson['storage_io']>, vms: readonly VmSpec[]): StorageIoSpec {
  const disk = vms.find((vm) => vm.disk !== null)?.disk?.path;
  return {
    statsFile: json.stats_file ?? (disk === undefined ? null : `${disk}.parda`),
    hostId: json.host_id,
    thresholdMs: json.latency_threshold_ms,
    gamma: json.gamma ?? 0.5,
    alpha: json.alpha ?? 0.5,
    beta: json.beta ?? 1.5,
    windowMin: json.window_min ?? 1,
    windowMax: json.window_max ?? 256,
    periodMs: json.period_ms ?? 250,
    sizeKneeKib: json.size_knee_kib ?? 128,
    control: json.control ?? true,
  };
}

function toMigrationSpec(json: HostJson['migration']): MigrationSpec {
  const dir = json?.tls_dir;
  const tls = json?.tls ?? (dir === undefined ? null : { ca: `${dir}/ca.pem`, cert: `${dir}/cert.pem`, key: `${dir}/key.pem` });
  return { tls, insecure: json?.insecure ?? false, listen: json?.listen ?? null, stallTimeoutMs: json?.stall_timeout_ms ?? 10_000, name: json?.name ?? hostname(), diskDir: json?.disk_dir ?? null };
}

/** TLS files and insecure exclude each other; listening needs one of them. */
function migrationProblems(migration: unknown): Found[] {
  if (!isObject(migration)) return [];
  const found: Found[] = [];
  const tls = migration.tls !== undefined || migration.tls_dir !== undefined;
  if (migration.tls !== undefined && migration.tls_dir !== undefined) found.push({ segments: ['migration', 'tls_dir'], problem: 'give tls or tls_dir, not both' });
  if (tls && migration.insecure === true) found.push({ segments: ['migration', 'insecure'], problem: 'cannot be true when TLS files are given' });
  if (migration.listen !== undefined && !tls && migration.insecure !== true) {
    found.push({ segments: ['migration', 'listen'], problem: 'needs tls (or tls_dir), or insecure: true for plain TCP' });
  }
  return found;
}

/**
 * Checks one VM's configuration (a `vms` entry, or the body of `PUT /vms/{name}`). `where`
 * prefixes the paths in errors (`vms[3]` makes `vms[3].memory_mib`). Throws ConfigError.
 */
export function parseVmConfig(json: unknown, where = ''): VmSpec {
  const found = schemaProblems(validator(VM_CONFIG_SCHEMA), json);
  found.push(...vmProblems(json, []));
  throwIfAny(found, json, where);
  return toVmSpec(json as VmJson);
}

/**
 * Checks any JSON value against a JSON Schema (draft 2020-12) and words the refusal as the host
 * configuration does: a ConfigError naming the first offending field, its path prefixed by
 * `where` (`body` makes `body.state`). The API checks its request bodies with it.
 */
export function checkJson(schema: object, value: unknown, where = ''): void {
  throwIfAny(schemaProblems(validator(schema), value), value, where);
}

/**
 * Reads and checks a host configuration file. A missing or unreadable file, malformed JSON
 * (with the line:column of the first wrong character) and every refusal of parseHostConfig are
 * ConfigErrors whose message starts with the file's path.
 */
export function readHostConfigFile(path: string): HostSpec {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError('', `${path}: ${describeReadFailure(error)}`, { cause: error });
  }
  if (text.startsWith('\uFEFF')) text = text.slice(1); // a byte-order mark is not JSON, but editors write one
  if (text.trim() === '') throw new ConfigError('', `${path}: the file is empty (the smallest configuration is {})`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigError('', describeSyntaxError(path, text, error), { cause: error });
  }
  try {
    return parseHostConfig(json);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    const [first, ...more] = error.problems;
    throw new ConfigError(first!.path, first!.problem, { more, file: path });
  }
}

function describeReadFailure(error: unknown): string {
  switch ((error as NodeJS.ErrnoException).code) {
    case 'ENOENT': return 'no such file';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'EISDIR': return 'is a directory, not a configuration file';
    default: return `cannot be read (${error instanceof Error ? error.message : String(error)})`;
  }
}

/** `host.json:3:5: malformed JSON: expected ',' or '}' after property value`. */
function describeSyntaxError(path: string, text: string, error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // V8 says "… in JSON at position N", or for an unexpected token in a value's place quotes the
  // whole text instead ("Unexpected token ']', "…" is not valid JSON"): then find the place.
  const position = /at position (\d+)/.exec(message);
  const offset = position ? Number(position[1]) : /Unexpected end of JSON input/.test(message) ? text.length : jsonErrorOffset(text);
  const what = message.replace(/ at position \d+.*$/s, '').replace(/ in JSON$/, '').replace(/, (?:\.\.\.)?".*" is not valid JSON$/s, '');
  const where = offset === undefined ? '' : `:${lineColumn(text, offset)}`;
  return `${path}${where}: malformed JSON: ${what.charAt(0).toLowerCase()}${what.slice(1)}`;
}

/** The offset of the first character that makes `text` not JSON (RFC 8259), or undefined if it is JSON. */
function jsonErrorOffset(text: string): number | undefined {
  const literal = /true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  let at = 0;
  const skipSpace = (): void => {
    while (at < text.length && ' \t\n\r'.includes(text[at]!)) at++;
  };
  const expect = (char: string): void => {
    skipSpace();
    if (text[at] !== char) throw at;
    at++;
  };
  /** One value, then `close` after any number of `,`-separated members (arrays and objects). */
  const value = (): void => {
    skipSpace();
    const open = text[at];
    if (open === '[' || open === '{') {
      const close = open === '[' ? ']' : '}';
      at++;
      skipSpace();
      if (text[at] === close) return void at++;
      for (;;) {
        if (open === '{') {
          skipSpace();
          if (text[at] !== '"') throw at;
          value();
          expect(':');
        }
        value();
        skipSpace();
        if (text[at] === close) return void at++;
        expect(',');
      }
    }
    literal.lastIndex = at;
    if (!literal.test(text)) throw at;
    at = literal.lastIndex;
  };
  try {
    value();
    skipSpace();
    return at < text.length ? at : undefined;
  } catch (offset) {
    return typeof offset === 'number' ? offset : undefined; // not a number: too deep to scan (RangeError)
  }
}

/** 1-based `line:column` of a UTF-16 offset in `text`. */
function lineColumn(text: string, offset: number): string {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return `${line}:${offset - before.lastIndexOf('\n')}`;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------------------------
// Semantic checks: only on parts the schema accepted (a part it refused is reported by it).

/** One VM's checks that the schema cannot express. */
function vmProblems(vm: unknown, at: (string | number)[]): Found[] {
  const found: Found[] = [];
  if (!isObject(vm)) return found;
  if (vm.group !== undefined && vm.pmem != null) found.push({ segments: [...at, 'group'], problem: 'a VM with pmem runs in the host\'s own thread (pmem HA and the power-loss hooks are its); leave group out' });
  if (isObject(vm.log_replication) && vm.pmem == null) found.push({ segments: [...at, 'log_replication'], problem: 'needs pmem: the log it replicates is in the persistent memory' });
  if (typeof vm.boot_args === 'string') {
    const bytes = Buffer.byteLength(vm.boot_args, 'utf8');
    if (bytes > MAX_BOOT_ARGS_BYTES) {
      found.push({ segments: [...at, 'boot_args'], problem: `is ${bytes} bytes long as UTF-8; at most ${MAX_BOOT_ARGS_BYTES} bytes fit (the boot-arguments window is one page)` });
    } else if (vm.boot_args.includes('\0')) {
      found.push({ segments: [...at, 'boot_args'], problem: 'cannot contain a NUL character' });
    }
  }
  const balloon = vm.balloon;
  if (isObject(balloon) && isInteger(balloon.amount_mib, 0, MAX_MEMORY_MIB) && isInteger(vm.memory_mib, 1, MAX_MEMORY_MIB) && balloon.amount_mib > vm.memory_mib) {
    found.push({ segments: [...at, 'balloon', 'amount_mib'], problem: `is ${balloon.amount_mib} MiB, more than the VM's memory_mib (${vm.memory_mib})` });
  }
  const policy = vm.memory_policy;
  if (isObject(policy) && isInteger(vm.memory_mib, 1, MAX_MEMORY_MIB)) {
    for (const key of ['reservation_mib', 'limit_mib']) {
      const value = policy[key];
      if (isInteger(value, 0, MAX_MEMORY_MIB) && value > vm.memory_mib) {
        found.push({ segments: [...at, 'memory_policy', key], problem: `is ${value} MiB, more than the VM's memory_mib (${vm.memory_mib})` });
      }
    }
    const { reservation_mib: reservation, limit_mib: limit } = policy;
    if (isInteger(reservation, 0, MAX_MEMORY_MIB) && isInteger(limit, 1, MAX_MEMORY_MIB) && limit < reservation) {
      found.push({ segments: [...at, 'memory_policy', 'limit_mib'], problem: `is ${limit} MiB, less than reservation_mib (${reservation})` });
    }
    const mrc = policy.mrc;
    if (isObject(mrc) && typeof mrc.activity_rate_pct === 'number' && mrc.activity_rate_pct > 0) {
      const rate = typeof mrc.rate_pct === 'number' ? mrc.rate_pct : 1;
      if (mrc.activity_rate_pct < rate) {
        found.push({ segments: [...at, 'memory_policy', 'mrc', 'activity_rate_pct'], problem: `is ${mrc.activity_rate_pct}, less than rate_pct (${rate}): the activity census covers the sample and more, or is 0 (off)` });
      }
    }
  }
  const mmu = vm.mmu;
  if (isObject(mmu) && mmu.mode === 'nested') {
    for (const key of ['traces', 'batch']) {
      if (mmu[key] !== undefined) found.push({ segments: [...at, 'mmu', key], problem: `applies to mode "shadow" only (this VM's mmu.mode is "nested")` });
    }
  }
  return found;
}

/** Checks across the VMs of a host: unique names, and their memory within the pool. */
function crossVmProblems(host: Record<string, unknown>, vms: unknown[]): Found[] {
  const found: Found[] = [];
  const firstUse = new Map<string, number>();
  let totalMib = 0;
  let memoryKnown = true;
  vms.forEach((vm, index) => {
    if (!isObject(vm)) {
      memoryKnown = false;
      return;
    }
    if (typeof vm.name === 'string') {
      const earlier = firstUse.get(vm.name);
      if (earlier === undefined) firstUse.set(vm.name, index);
      else found.push({ segments: ['vms', index, 'name'], problem: `'${vm.name}' is used by vms[${earlier}] too` });
    }
    if (isInteger(vm.memory_mib, 1, MAX_MEMORY_MIB)) totalMib += vm.memory_mib;
    else memoryKnown = false;
  });
  const given = host.host_memory_mib;
  const poolMib = given === undefined ? HOST_DEFAULTS.host_memory_mib : isInteger(given, 4, 4096) && given % 4 === 0 ? given : undefined;
  const pool = given === undefined ? `${poolMib} MiB, the default` : `${poolMib} MiB`;
  // Overcommitted, a VM may be larger than the pool itself: reclaim keeps its frames within it.
  if (host.overcommit !== true && memoryKnown && poolMib !== undefined && totalMib > poolMib) {
    found.push({ segments: ['vms'], problem: `the VMs' memory_mib add up to ${totalMib} MiB, more than host_memory_mib (${pool}); set "overcommit": true to allow it` });
  }
  return found;
}

/** The ladder's thresholds, defaults filled in, must fall: high > soft > hard > low. */
function reclaimProblems(reclaim: unknown): Found[] {
  if (!isObject(reclaim) || !isObject(reclaim.thresholds_pct)) return [];
  const given = reclaim.thresholds_pct;
  const merged: Record<string, unknown> = { high: 6, soft: 4, hard: 2, low: 1, ...given };
  const order = ['high', 'soft', 'hard', 'low'] as const;
  for (let i = 1; i < order.length; i++) {
    const above = merged[order[i - 1]!];
    const below = merged[order[i]!];
    if (typeof above === 'number' && typeof below === 'number' && !(below < above)) {
      const key = order[i]! in given ? order[i]! : order[i - 1]!;
      return [{ segments: ['reclaim', 'thresholds_pct', key], problem: `the thresholds must fall from high to low (high > soft > hard > low); ${order[i]} ${below} is not below ${order[i - 1]} ${above}` }];
    }
  }
  return [];
}

function isInteger(value: unknown, min: number, max: number): value is number {
  return Number.isInteger(value) && (value as number) >= min && (value as number) <= max;
}

// ---------------------------------------------------------------------------------------------
// Schema errors, in words.

/** The schema of one field, as the messages read it. */
interface FieldSchema {
  type?: string | string[];
  enum?: readonly string[];
  minimum?: number;
  exclusiveMinimum?: number;
  maximum?: number;
  multipleOf?: number;
  minLength?: number;
  pattern?: string;
  properties?: Record<string, unknown>;
}

function schemaProblems(validate: ValidateFunction, json: unknown): Found[] {
  if (validate(json)) return [];
  const found: Found[] = [];
  for (const error of validate.errors ?? []) {
    const segments = pointerSegments(json, error.instancePath);
    found.push({ segments, problem: describeSchemaError(error, segments) });
  }
  return found;
}

/** The problem an ajv error stands for. Unknown and missing keys move the path to the key. */
function describeSchemaError(error: ErrorObject, segments: (string | number)[]): string {
  const schema = (error.parentSchema ?? {}) as FieldSchema;
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = String(error.params.additionalProperty);
      segments.push(key);
      return `unknown key ${suggestKey(key, Object.keys(schema.properties ?? {}))}`;
    }
    case 'required':
      segments.push(String(error.params.missingProperty));
      return 'missing (a required key)';
    case 'type': case 'enum': case 'minimum': case 'exclusiveMinimum': case 'maximum': case 'multipleOf': case 'minLength': case 'pattern':
      return `must be ${expectation(schema)}, got ${showValue(error.data, schema)}`;
    case 'const':
      return `must be ${JSON.stringify(error.params.allowedValue)}, got ${showValue(error.data, schema)}`;
    default: // keywords this module's schemas do not use: ajv's words, and the value
      return `${error.message ?? 'is not valid'}, got ${showValue(error.data, schema)}`;
  }
}

/** `(did you mean "memory_mib"?)` for a near miss, else the keys that are allowed there. */
function suggestKey(key: string, known: readonly string[]): string {
  const simple = (text: string) => text.toLowerCase().replace(/[-_\s]/g, '');
  const near = known.find((candidate) => simple(candidate) === simple(key));
  if (near !== undefined) return `(did you mean "${near}"?)`;
  return known.length === 0 ? '' : `(the keys here are ${known.join(', ')})`;
}

/** What a valid value of a field is: `an integer from 1 to 3840`, `one of "off", "always"`. */
function expectation(schema: FieldSchema): string {
  const types = [schema.type ?? []].flat();
  const orNull = types.includes('null') ? ' or null' : '';
  if (schema.enum !== undefined) return `one of ${schema.enum.map((choice) => JSON.stringify(choice)).join(', ')}${orNull}`;
  switch (types[0]) {
    case 'integer': {
      const { minimum, maximum, multipleOf } = schema;
      const kind = multipleOf === undefined ? 'an integer' : `a multiple of ${multipleOf}`;
      const top = maximum === Number.MAX_SAFE_INTEGER ? '2^53 - 1' : String(maximum);
      return `${kind} from ${minimum} to ${top}${orNull}`;
    }
    case 'string':
      if (schema.pattern === VM_NAME_PATTERN) return NAME_RULE;
      return `${schema.minLength ? 'a non-empty string' : 'a string'}${orNull}`;
    case 'number': {
      // Thresholds, rates: a range, each end inclusive or not.
      const from = schema.exclusiveMinimum !== undefined ? `above ${schema.exclusiveMinimum}` : schema.minimum !== undefined ? `from ${schema.minimum}` : null;
      const to = schema.maximum !== undefined ? `${from === null ? 'at most' : 'to'} ${schema.maximum}` : null;
      return `a number${from === null ? '' : ` ${from}`}${to === null ? '' : ` ${to}`}${orNull}`;
    }
    case 'boolean': return 'true or false';
    case 'array': return 'an array';
    case 'object': return `an object${orNull}`;
    default: return 'something else';
  }
}

/** The offending value, as JSON when short (`"64"`, `5000`, `[1,2]`), else its kind and size. */
function showValue(value: unknown, schema: FieldSchema): string {
  let json: string | undefined;
  try {
    json = typeof value === 'number' ? String(value) : JSON.stringify(value);
  } catch {
    json = undefined; // a BigInt or a cycle (only a program can pass one)
  }
  const short = json !== undefined && json.length <= 40 ? json : undefined;
  if (typeof value === 'string') {
    const wantsNumber = [schema.type].flat().includes('integer') && value.trim() !== '' && Number.isFinite(Number(value));
    const hint = wantsNumber ? ' (a string: write numbers without quotes)' : '';
    return short === undefined ? `a string of ${value.length} characters` : `${short}${hint}`;
  }
  if (short !== undefined) return short;
  if (Array.isArray(value)) return `an array of ${value.length} items`;
  if (isObject(value)) return `an object with ${Object.keys(value).length} keys`;
  return `a value of type ${typeof value}`;
}

/** `/vms/0/memory_mib` → `['vms', 0, 'memory_mib']` (numbers where the value there is an array). */
function pointerSegments(root: unknown, pointer: string): (string | number)[] {
  if (pointer === '') return [];
  const segments: (string | number)[] = [];
  let value = root;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (Array.isArray(value)) {
      segments.push(Number(key));
      value = value[Number(key)];
    } else {
      segments.push(key);
      value = isObject(value) ? value[key] : undefined;
    }
  }
  return segments;
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/** Throws one ConfigError for the problems found, first in document order, if there are any. */
function throwIfAny(found: Found[], root: unknown, where: string): void {
  if (found.length === 0) return;
  const ordered = found
    .map((entry) => ({ entry, order: documentOrder(root, entry.segments) }))
    .sort((a, b) => compareOrder(a.order, b.order))
    .map(({ entry }) => {
      const path = formatPath(where, entry.segments);
      return { path, problem: path === '' ? `the configuration ${entry.problem}` : entry.problem }; // "must be an object"
    });
  const problems: ConfigProblem[] = [];
  for (const problem of ordered) {
    if (!problems.some((earlier) => earlier.path === problem.path)) problems.push(problem); // one problem per field
  }
  const [first, ...more] = problems;
  throw new ConfigError(first!.path, first!.problem, { more });
}

/** Where a path is in the document: each segment's index among its parent's keys (missing keys last). */
function documentOrder(root: unknown, segments: readonly (string | number)[]): number[] {
  const order: number[] = [];
  let value = root;
  for (const segment of segments) {
    if (Array.isArray(value)) {
      order.push(Number(segment));
      value = value[Number(segment)];
    } else if (isObject(value)) {
      const keys = Object.keys(value);
      const index = keys.indexOf(String(segment));
      order.push(index === -1 ? keys.length : index);
      value = value[String(segment)];
    } else {
      order.push(0);
      value = undefined;
    }
  }
  return order;
}

function compareOrder(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

/** `vms[0].memory_mib`; a key that is not a plain word is quoted: `vms[0]["a b"]`. */
function formatPath(where: string, segments: readonly (string | number)[]): string {
  let text = where;
  for (const segment of segments) {
    if (typeof segment === 'number') text += `[${segment}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(segment)) text += text === '' ? segment : `.${segment}`;
    else text += `[${JSON.stringify(segment)}]`;
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// Conversion (after every check has passed).

function toMemoryPolicy(policy: VmJson['memory_policy']): MemoryPolicySpec {
  const sampling = policy?.active_sampling;
  const mrc = policy?.mrc ?? null;
  return {
    shares: policy?.shares ?? null,
    reservationMib: policy?.reservation_mib ?? 0,
    limitMib: policy?.limit_mib ?? null,
    activeSampling: sampling === null ? null : { pagesPerPeriod: sampling?.pages_per_period ?? null, periodInstructions: sampling?.period_instructions ?? null },
    mrc: mrc === null ? null : { ratePct: mrc.rate_pct ?? null, quietInstructions: mrc.quiet_instructions ?? null, activityRatePct: mrc.activity_rate_pct ?? null },
  };
}

function toVmSpec(vm: VmJson): VmSpec {
  const mmu: MmuOptions = { mode: vm.mmu?.mode ?? VM_DEFAULTS.mmu_mode };
  if (vm.mmu?.traces !== undefined) mmu.traces = vm.mmu.traces;
  if (vm.mmu?.batch !== undefined) mmu.batch = vm.mmu.batch;
  const disk = vm.disk ?? VM_DEFAULTS.disk;
  const balloon = vm.balloon ?? VM_DEFAULTS.balloon;
  const spec: VmSpec = {
    name: vm.name,
    image: vm.image,
    memoryBytes: vm.memory_mib * MIB,
    vcpus: vm.vcpus ?? VM_DEFAULTS.vcpus,
    bootArgs: vm.boot_args ?? VM_DEFAULTS.boot_args,
    disk: disk === null ? null : {
      path: disk.path,
      ...(disk.overlay_dir === undefined ? {} : { overlayDir: disk.overlay_dir }),
      ...(disk.async === undefined ? {} : { async: disk.async }),
      ...(disk.direct === undefined ? {} : { direct: disk.direct }),
    },
    mmu,
    largePages: vm.large_pages ?? VM_DEFAULTS.large_pages,
    tier: vm.tier ?? defaultTier(),
    consoleInput: vm.console_input ?? VM_DEFAULTS.console_input,
    consoleInputEof: vm.console_input_eof ?? VM_DEFAULTS.console_input_eof,
    maxInstructions: vm.max_instructions ?? VM_DEFAULTS.max_instructions,
    startPaused: vm.start_paused ?? VM_DEFAULTS.start_paused,
    meminfo: vm.meminfo ?? VM_DEFAULTS.meminfo,
    ioShares: vm.io_shares ?? 1000,
    memoryPolicy: toMemoryPolicy(vm.memory_policy),
    memoryErrors: vm.memory_errors == null ? null : {
      methods: [...vm.memory_errors.methods],
      parityGroupPages: vm.memory_errors.parity_group_pages ?? 8,
      refreshInstructions: vm.memory_errors.refresh_instructions ?? 4_000_000,
    },
  };
  if (vm.pmem != null) spec.pmem = { path: vm.pmem.path, bytes: vm.pmem.size_kib * 1024, create: vm.pmem.create ?? false };
  if (vm.log_replication != null) spec.logReplication = { destinations: [...vm.log_replication.destinations], intervalMs: vm.log_replication.interval_ms ?? 10 };
  if (vm.group !== undefined) spec.group = vm.group;
  if (balloon !== null) {
    spec.balloon = {
      amountMib: balloon.amount_mib ?? BALLOON_DEFAULTS.amount_mib,
      deflateOnOom: balloon.deflate_on_oom ?? BALLOON_DEFAULTS.deflate_on_oom,
      statsPollingIntervalS: balloon.stats_polling_interval_s ?? BALLOON_DEFAULTS.stats_polling_interval_s,
      freePageReporting: balloon.free_page_reporting ?? BALLOON_DEFAULTS.free_page_reporting,
    };
  }
  return spec;
}
