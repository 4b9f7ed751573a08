/**
 * run — boot a BV32 guest on the standard machine (console, timer, power, boot arguments).
 *
 *   npx tsx tools/run <image.bvx | prog.s> [options] [-- boot args…]
 *
 * The options, the usage line and the help are in tools/run-options.ts. A `.s` file is assembled
 * first; anything else is loaded as a .bvx image. The process exits with the guest's exit code
 * (& 0xff), or with one of RunExitCode when the run ends another way; the user guide is
 * docs/run.md.
 */
import { basename } from 'node:path';
import { performance } from 'node:perf_hooks';
import { assembleFile } from '../guest-isa/assembler.ts';
import { GuestPhys, Hcall, HcallStatus, PAGE_SIZE, Reg } from '../guest-isa/arch.ts';
import { formatInstruction } from '../guest-isa/disassembler.ts';
import { BvError } from '../guest-isa/errors.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { loadImageFile } from '../guest-isa/image.ts';
import {
  attachStandardDevices, BootArgsError, CaptureSink, runWithResetsAsync, savedBlockDisk, savedBlockMode, savedBootArgs, type GuestRun, type StandardDeviceOptions,
  type StandardDevices,
} from '../devices/index.ts';
import { CheckpointReader, restoreVmCheckpoint, saveVmCheckpoint, startLiveSnapshot, type LiveSnapshot, type RestoredVm } from '../services/checkpoint/index.ts';
import { createHypervisor, defaultTier, IDLE_FOREVER, Mode, OutOfHostMemoryError, RUN_SIZE, type Hypervisor, type LargePagePolicy, type MmuOptions, type Tier, type Vcpu, type Vm } from '../kernel/index.ts';
import { hostStats, vmStats, type HostStats, type VmStats } from '../services/host/stats.ts';
import { AccessedBitPrioritizer, LowActivityReclaimer, SwapFile } from '../services/memory/index.ts';
import { tmpdir } from 'node:os';
import {
  describeError, formatBytes, formatCount, formatTable, isReportableError, parseArguments, parseInteger, parseSize, printError, ProgressBar, runTool,
  UsageError,
} from './cli.ts';
import { RUN_FLAGS, RUN_HELP, RUN_USAGE, RUN_VALUE_OPTIONS, RunExitCode } from './run-options.ts';
import { ApiServer, hostRoutes } from '../services/host/api.ts';
import { ConsoleLog } from '../services/host/console-log.ts';
import { Host, type VmOrigin } from '../services/host/host.ts';

export { RunExitCode };

const DEFAULT_MEMORY = 64 * 1024 * 1024;
const HOST_MEMORY_HEADROOM = 16 * 1024 * 1024;
const MAX_HOST_MEMORY = 4 * 1024 ** 3;

interface RunArguments {
  path: string;
  memoryBytes: number;
  hostMemoryBytes: number;
  /** --host-mem was given (a restore sizes the pool from the checkpoint otherwise). */
  hostMemoryGiven: boolean;
  vcpus: number;
  maxInstructions: number | undefined;
  stats: boolean;
  /** --stats --json: the stats as one JSON document instead of tables. */
  json: boolean;
  trace: boolean;
  input: string | undefined;
  bootArgs: string;
  mmu: MmuOptions;
  largePages: LargePagePolicy;
  /** --tier: the execution tier (interp or jit). */
  tier: Tier;
  /** T-3: promote the most accessed guest regions onto host runs. */
  promoteHot: boolean;
  /** T-4: break up low-activity large regions and swap their cold pages out. */
  reclaimCold: boolean;
  /** A disk for a block device (docs/block-device.md). */
  disk: string | undefined;
  /** --disk-async: the block device takes asynchronous requests. */
  diskAsync: boolean;
  /** --disk-direct: those bypass the host page cache (O_DIRECT). */
  diskDirect: boolean;
  /** Checkpoint after exactly this many instructions (T-10). */
  checkpointAt: { at: number; path: string } | null;
  /** Where a guest-requested checkpoint (the CHECKPOINT hypercall) is written. */
  checkpointPath: string | undefined;
  /** Start a live snapshot after this many instructions (T-12). */
  snapshotAt: { at: number; path: string } | null;
  /** Restore this checkpoint instead of loading an image (T-11). */
  restore: string | undefined;
  restoreMode: 'lazy' | 'eager' | 'map';
  /** Fork this many children after this many instructions (T-13). */
  forkAt: number | undefined;
  forks: number;
  /** Checkpoint the VM here when the run stops in a restorable state (a signal, the budget, idle). */
  checkpointOnExit: string | undefined;
  /** Serve the control API for this VM on this socket while it runs (docs/api.md). */
  apiSock: string | undefined;
}

/** Pulls `flag N PATH` (a flag with two values) out of argv before the boot arguments. */
function takeTwoValueFlag(argv: string[], flag: string): { at: number; path: string } | null {
  const end = argv.indexOf('--');
  const limit = end < 0 ? argv.length : end;
  const at = argv.indexOf(flag);
  if (at < 0 || at >= limit) return null;
  if (at + 2 >= limit) throw new UsageError(`${flag} needs two values: an instruction count and a path`);
  const count = argv[at + 1]!;
  const path = argv[at + 2]!;
  argv.splice(at, 3);
  return { at: parseInteger(count, flag, 1), path };
}

function parseRunArguments(argvIn: readonly string[]): RunArguments | 'help' {
  const argv = [...argvIn];
  const checkpointAt = takeTwoValueFlag(argv, '--checkpoint-at');
  const snapshotAt = takeTwoValueFlag(argv, '--snapshot-at');
  const args = parseArguments(argv, { flags: RUN_FLAGS, values: RUN_VALUE_OPTIONS, restAfterDoubleDash: true });
  if (args.flag('--help') || args.flag('-h')) return 'help';
  const restore = args.value('--restore');
  if (restore !== undefined) {
    // The checkpoint holds the machine: memory size, vCPUs, boot arguments and the image.
    for (const flag of ['--mem', '--vcpus', '--mmu', '--large-pages', '--batch']) {
      if (args.value(flag) !== undefined) throw new UsageError(`${flag} cannot be combined with --restore (the checkpoint holds the configuration)`);
    }
    if (args.rest.length > 0) throw new UsageError('boot arguments cannot be combined with --restore (the checkpoint holds them)');
    if (args.flag('--disk-async')) throw new UsageError('--disk-async cannot be combined with --restore (the checkpoint says whether its disk is asynchronous)');
    if (args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}': --restore runs the checkpoint's own guest`);
  } else if (args.value('--restore-mode') !== undefined) {
    throw new UsageError('--restore-mode goes with --restore');
  }
  const forkAt = args.value('--fork-at');
  const forks = args.value('--forks');
  if ((forkAt === undefined) !== (forks === undefined)) throw new UsageError('--fork-at and --forks go together');
  if (args.flag('--disk-async') && args.value('--disk') === undefined) throw new UsageError('--disk-async goes with --disk');
  if (args.flag('--disk-direct') && !args.flag('--disk-async') && restore === undefined) throw new UsageError('--disk-direct goes with --disk-async (only asynchronous requests bypass the page cache)');
  if (args.flag('--json') && !args.flag('--stats')) throw new UsageError('--json goes with --stats (it prints the stats as JSON)');
  if (restore === undefined && args.positionals.length === 0) throw new UsageError('missing the guest to run (an image .bvx or a source .s)');
  if (args.positionals.length > 1) {
    throw new UsageError(`unexpected argument '${args.positionals[1]}' (boot arguments go after '--')`);
  }
  const mem = args.value('--mem');
  const memoryBytes = mem === undefined ? DEFAULT_MEMORY : parseSize(mem, '--mem', { multipleOf: PAGE_SIZE, min: PAGE_SIZE, max: GuestPhys.DEVICE_TABLE });
  const hostMem = args.value('--host-mem');
  const hostMemoryBytes =
    hostMem === undefined
      ? Math.ceil(memoryBytes / RUN_SIZE) * RUN_SIZE + HOST_MEMORY_HEADROOM
      : parseSize(hostMem, '--host-mem', { multipleOf: RUN_SIZE, min: RUN_SIZE, max: MAX_HOST_MEMORY });
  const vcpus = args.value('--vcpus');
  const maxInsns = args.value('--max-insns');
  const maxInstructions = maxInsns === undefined ? undefined : parseInteger(maxInsns, '--max-insns', 1);
  const forkAtCount = forkAt === undefined ? undefined : parseInteger(forkAt, '--fork-at', 1);
  const apiSock = args.value('--api-sock');
  if (apiSock !== undefined) {
    // Under the API the host's scheduler runs the VM; the API's snapshot and fork replace these.
    for (const [flag, given] of [['--checkpoint-at', checkpointAt], ['--snapshot-at', snapshotAt], ['--fork-at', forkAt], ['--checkpoint-path', args.value('--checkpoint-path')]] as const) {
      if (given !== undefined && given !== null) throw new UsageError(`${flag} cannot be combined with --api-sock (use the API's snapshot and fork)`);
    }
  }
  if (maxInstructions !== undefined) {
    // A point past the budget can never be reached: say so now rather than after the run.
    const points: [string, number | undefined][] = [['--checkpoint-at', checkpointAt?.at], ['--snapshot-at', snapshotAt?.at], ['--fork-at', forkAtCount]];
    for (const [flag, at] of points) {
      if (at !== undefined && at > maxInstructions) throw new UsageError(`${flag} ${at} is past --max-insns ${maxInstructions}: the run stops first`);
    }
  }
  return {
    path: args.positionals[0] ?? restore!,
    memoryBytes,
    hostMemoryBytes,
    hostMemoryGiven: hostMem !== undefined,
    vcpus: vcpus === undefined ? 1 : parseInteger(vcpus, '--vcpus', 1, 32),
    maxInstructions,
    stats: args.flag('--stats'),
    json: args.flag('--json'),
    trace: args.flag('--trace'),
    input: args.value('--input'),
    bootArgs: args.rest.join(' '),
    mmu: parseMmuOptions(args.value('--mmu'), args.flag('--no-traces'), args.value('--batch')),
    largePages: parseChoice(args.value('--large-pages'), '--large-pages', ['off', 'superpages', 'always'] as const, 'superpages'),
    tier: parseChoice(args.value('--tier'), '--tier', ['interp', 'jit'] as const, defaultTier()),
    promoteHot: args.flag('--promote-hot'),
    reclaimCold: args.flag('--reclaim-cold'),
    disk: args.value('--disk'),
    diskAsync: args.flag('--disk-async'),
    diskDirect: args.flag('--disk-direct'),
    checkpointAt,
    checkpointPath: args.value('--checkpoint-path'),
    snapshotAt,
    restore,
    restoreMode: parseChoice(args.value('--restore-mode'), '--restore-mode', ['lazy', 'eager', 'map'] as const, 'lazy'),
    forkAt: forkAtCount,
    forks: forks === undefined ? 0 : parseInteger(forks, '--forks', 1, 64),
    checkpointOnExit: args.value('--checkpoint-on-exit'),
    apiSock,
  };
}

function parseChoice<T extends string>(text: string | undefined, flag: string, choices: readonly T[], fallback: T): T {
  if (text === undefined) return fallback;
  if (!(choices as readonly string[]).includes(text)) throw new UsageError(`${flag} must be one of ${choices.join(', ')}, got '${text}'`);
  return text as T;
}

function parseMmuOptions(mode: string | undefined, noTraces: boolean, batch: string | undefined): MmuOptions {
  const options: MmuOptions = { mode: parseChoice(mode, '--mmu', ['shadow', 'nested'] as const, 'shadow') };
  if (noTraces) {
    if (options.mode === 'nested') throw new UsageError('--no-traces applies to --mmu shadow only');
    options.traces = false;
  }
  if (batch !== undefined) {
    if (options.mode === 'nested') throw new UsageError('--batch applies to --mmu shadow only');
    options.batch = parseInteger(batch, '--batch', 0, 1023);
  }
  return options;
}

/** Assembles `.s` sources, loads anything else as a .bvx image. Throws BvError on failure. */
function loadGuest(path: string): GuestImage {
  return /\.s$/i.test(path) ? assembleFile(path).image : loadImageFile(path);
}

/** Sends one line per executed instruction to stderr, batched (tracing is slow enough already). */
class TraceWriter {
  private lines: string[] = [];
  private readonly symbols = new Map<number, string>();

  constructor(image: GuestImage) {
    for (const symbol of image.symbols) if (!this.symbols.has(symbol.value >>> 0)) this.symbols.set(symbol.value >>> 0, symbol.name);
  }

  readonly hook = (vcpu: Vcpu, pc: number, word: number): void => {
    const mode = vcpu.mode === Mode.SUPERVISOR ? 'S' : 'U';
    const text = formatInstruction(word, pc >>> 0, (address) => this.symbols.get(address));
    this.lines.push(`[vcpu${vcpu.id} ${mode}] 0x${hex8(pc)}  ${hex8(word)}  ${text}`);
    if (this.lines.length >= 4096) this.flush();
  };

  flush(): void {
    if (this.lines.length === 0) return;
    process.stderr.write(`${this.lines.join('\n')}\n`);
    this.lines = [];
  }
}

function hex8(value: number): string {
  return (value >>> 0).toString(16).padStart(8, '0');
}

/** The run totals of --stats (the `run` part of --stats --json). */
interface RunTotals {
  /** Instructions retired, all vCPUs, all boots. */
  instructions: number;
  /** Host time spent running the guest, in milliseconds. */
  wall_ms: number;
  /** instructions / wall time, in millions per second. */
  mips: number;
  /** Guest-requested resets carried out. */
  resets: number;
  /** The execution tier (--tier); the compiled tier's counters are in `host.jit`. */
  tier: Tier;
}

/** What --stats reports: the run's totals, the host's counters and the VM's (with its policies). */
interface StatsReport {
  run: RunTotals;
  host: HostStats;
  vm: VmStats;
}

function runTotals(run: GuestRun, wallMs: number, tier: Tier): RunTotals {
  return { instructions: run.instructions, wall_ms: wallMs, mips: wallMs > 0 ? run.instructions / wallMs / 1000 : 0, resets: run.resets, tier };
}

/** Rows of label and count, the counts right-aligned. */
function countTable(rows: readonly (readonly [string, string])[]): string {
  return formatTable(rows, { indent: '  ', rightAligned: [false, true] });
}

/** The --stats tables, formatted from the report: run totals, per-vCPU counters, exits, MMIO, MMU, memory, policies. */
function formatStats(report: StatsReport): string {
  const { run, host, vm } = report;
  const count = formatCount;
  const out: string[] = [];
  out.push('run');
  out.push(countTable([
    ['instructions', count(run.instructions)],
    ['wall time', `${(run.wall_ms / 1000).toFixed(3)} s`],
    ['speed', `${run.mips.toFixed(2)} MIPS`],
    ['resets', count(run.resets)],
    ['tier', run.tier],
    ...(run.tier === 'jit' ? [
      ['compiled regions (instructions)', `${count(host.jit.regions_compiled)} (${count(host.jit.words_compiled)}), ${count(host.jit.regions_reused)} reused`],
      ['compile time', `${host.jit.compile_ms.toFixed(1)} ms`],
      ['invalidations', count(host.jit.invalidations)],
      ['instructions run compiled', `${count(host.jit.instructions_compiled)} (${(run.instructions > 0 ? (100 * host.jit.instructions_compiled) / run.instructions : 0).toFixed(1)} %)`],
      ['time compiled / interpreted', `${(host.jit.compiled_ms / 1000).toFixed(3)} s / ${(host.jit.interpreter_ms / 1000).toFixed(3)} s`],
      ['strip-mined loop passes', count(host.jit.strip_passes)],
    ] as [string, string][] : []),
  ]));
  const vcpuRows = [['vcpu', 'instret', 'tlb hits', 'tlb misses', 'tlb fills', 'tlb drops', 'tlb flushes', 'page walks', 'traps', 'interrupts', 'hypercalls', 'waits']];
  for (const v of vm.vcpus) {
    vcpuRows.push([String(v.id), ...[v.instret, v.tlb_hits, v.tlb_misses, v.tlb_fills, v.tlb_drops, v.tlb_flushes, v.page_walks, v.traps, v.interrupts, v.hypercalls, v.waits].map(count)]);
  }
  out.push('vcpus');
  out.push(formatTable(vcpuRows, { indent: '  ' }));
  const exits: [string, string][] = [
    ['mmio', count(vm.exits.mmio)],
    ['hypercall', count(vm.exits.hypercall)],
    ['trap to guest', count(vm.exits.trap_to_guest)],
    ['code write', count(vm.exits.code_writes)],
  ];
  for (const [state, n] of Object.entries(vm.exits.absent)) exits.push([`absent: ${state}`, count(n)]);
  for (const [flag, n] of Object.entries(vm.exits.write_protect)) exits.push([`write-protect: ${flag}`, count(n)]);
  out.push('exits');
  out.push(countTable(exits));
  out.push('mmio accesses');
  out.push(countTable(Object.entries(vm.mmio_accesses).map(([device, n]) => [device, count(n)])));
  const mmu = vm.mmu;
  const large = vm.large_pages;
  out.push(`mmu (${mmu.mode}${mmu.mode === 'shadow' ? `, traces ${mmu.traces ? 'on' : 'off'}, batch ${mmu.batch}` : ''})`);
  out.push(countTable([
    ['page walks', count(mmu.page_walks)],
    ['misses answered by shadow tables', count(mmu.shadow_hits)],
    ['misses answered by large mappings', count(mmu.large_hits)],
    ['entries filled by batches', count(mmu.batch_filled)],
    ['traces placed / removed / hit', `${count(mmu.traces_placed)} / ${count(mmu.traces_removed)} / ${count(mmu.trace_hits)}`],
    ['shadow entries dropped by traces', count(mmu.shadow_entries_dropped)],
    ['TLB entries dropped by traces', count(mmu.tlb_entries_dropped_by_traces)],
    ['guest flushes elided / full', `${count(mmu.flushes_elided)} / ${count(mmu.flushes_full)}`],
    ['ASIDs reused for another root', count(mmu.asid_reuses)],
    ['shootdowns (entries dropped)', `${count(mmu.shootdowns)} (${count(mmu.shootdown_entries)})`],
    ['shadow spaces / cached PTEs / traced pages', `${count(mmu.shadow_spaces)} / ${count(mmu.cached_ptes)} / ${count(mmu.traced_pages)}`],
    ['large mappings held', count(mmu.large_mappings)],
    [`host runs (policy ${large.policy}): allocated / promoted / broken up`, `${count(large.runs_allocated)} / ${count(large.regions_promoted)} / ${count(large.regions_broken_up)}`],
  ]));
  const memory = vm.memory;
  out.push('memory');
  out.push(
    formatTable(
      [
        ['decoded pages', `${count(memory.decoded_pages)} (${count(memory.decoded_pages_in_use)} in use, ${count(memory.decoded_pages_dropped)} dropped)`],
        ['host frames in use', `${count(memory.host_frames_used)} of ${count(memory.host_frames_total)} (${formatBytes(memory.host_frames_used * PAGE_SIZE)})`],
        ['guest pages present', `${count(memory.pages_present)} of ${count(memory.guest_pages)} (${formatBytes(memory.bytes_present)})`],
        ['guest pages shared copy-on-write', count(memory.pages_shared)],
        ['process RSS', formatBytes(host.process_rss_bytes)],
      ],
      { indent: '  ', rightAligned: [false, false] },
    ),
  );
  const policies = vm.policies ?? {};
  const promoter = policies.accessed_bit_prioritizer;
  if (promoter) {
    out.push(formatPolicyStats('large pages: accessed-bit prioritizer (T-3)', promoter));
    // The counts behind the decisions: each promotion with the region's accessed-page count at
    // that scan (highest first within a scan), then the last scan that saw any access.
    if (promoter.promoted_regions.length > 0) {
      const rows = promoter.promoted_regions.map((p) => [`scan ${p.scan}`, `region ${p.region} (gpa 0x${p.gpa.toString(16).padStart(8, '0')})`, `${count(p.pages_accessed)} pages accessed`]);
      out.push(`promotions (T-3 order)\n${formatTable(rows, { indent: '  ', rightAligned: [false, false, true] })}`);
    }
    const last = promoter.last_busy_scan;
    if (last) {
      const rows = last.regions.slice(0, 16).map(({ region, pages }) => [`region ${region}`, `${count(pages)} pages`] as [string, string]);
      out.push(`accessed pages per region not yet large, scan ${last.scan}\n${countTable(rows)}`);
    }
  }
  if (policies.low_activity_reclaimer) out.push(formatPolicyStats('large pages: low-activity reclaimer (T-4)', policies.low_activity_reclaimer));
  if (policies.swap) out.push(formatPolicyStats('swap', policies.swap));
  const disk = vm.disk;
  if (disk !== undefined) {
    out.push(`disk (${disk.async ? `asynchronous${disk.direct ? ', O_DIRECT' : ''}` : 'synchronous'})`);
    const rows: [string, string][] = [
      ['reads', count(disk.reads)], ['writes', count(disk.writes)], ['flushes', count(disk.flushes)],
      ['sectors read', count(disk.sectors_read)], ['sectors written', count(disk.sectors_written)], ['errors', count(disk.errors)],
    ];
    if (disk.async) {
      rows.push(['requests submitted', count(disk.async_submitted)], ['most in flight', count(disk.in_flight_max)]);
      rows.push(['mean latency (us)', String(disk.latency_mean_us)], ['latency EWMA (us)', String(disk.latency_ewma_us)]);
    }
    out.push(countTable(rows));
  }
  return out.join('\n');
}

/** A policy's numeric counters as a table (`pages_out` → `pages out`; byte counts as sizes). */
function formatPolicyStats(title: string, stats: object): string {
  const rows = Object.entries(stats)
    .filter((entry): entry is [string, number] => typeof entry[1] === 'number')
    .map(([name, value]) => [name.replaceAll('_', ' '), /bytes/.test(name) ? formatBytes(value) : formatCount(value)] as [string, string]);
  return `${title}\n${countTable(rows)}`;
}

/** The size of the host memory pool of this run (for the advice when it runs out). */
let hostPoolBytes = 0;

function createRunHypervisor(hostMemoryBytes: number): Hypervisor {
  hostPoolBytes = hostMemoryBytes;
  return createHypervisor({ hostMemoryBytes });
}

/** `16 MiB` as --host-mem takes it: `16M`, `2G`. */
function sizeArgument(bytes: number): string {
  return bytes % 1024 ** 3 === 0 ? `${bytes / 1024 ** 3}G` : `${bytes / 1024 ** 2}M`;
}

/** True for the host memory pool running out, thrown or reported as a VM's host error. */
function isOutOfHostMemory(error: unknown, message = ''): boolean {
  return error instanceof OutOfHostMemoryError || (error instanceof BvError && error.code === 'BV_OUT_OF_HOST_MEMORY') || /^out of host memory\b/.test(message);
}

/** What to do about an exhausted host memory pool: a larger --host-mem. */
function hostMemoryAdvice(): string {
  if (hostPoolBytes >= MAX_HOST_MEMORY) return `the host memory pool is ${formatBytes(hostPoolBytes)}, the most --host-mem allows: give the guest less memory to use`;
  const larger = Math.min(MAX_HOST_MEMORY, Math.max(RUN_SIZE, hostPoolBytes * 2));
  return `the host memory pool is ${formatBytes(hostPoolBytes)}: make it larger with --host-mem (for example --host-mem ${sizeArgument(larger)})`;
}

/** How a run ended: the exit code, the `error:` line, and the `exit` part of --stats --json. */
interface Ending {
  /** The VM's stop reason (`halted`, `guest-error`, `budget`, `idle`, `host-error`, …), or `interrupted` by a signal. */
  kind: GuestRun['reason']['kind'] | 'interrupted';
  /** The process's exit code. */
  code: number;
  /** The text of the `error:` line (every ending but a power-off has one). */
  message?: string;
  /** The guest's exit code as it wrote it (`halted`; `code` is it & 0xff). */
  guest_exit_code?: number;
  /** The signal that stopped the run (`interrupted`). */
  signal?: StopSignal;
}

/** How the run ended; `signal` is the signal received, if any (the run then ends paused by it). */
function describeEnding(run: GuestRun, signal: StopSignal | null): Ending {
  const reason = run.reason;
  switch (reason.kind) {
    case 'halted':
      return { kind: 'halted', code: reason.exitCode & 0xff, guest_exit_code: reason.exitCode };
    case 'guest-error':
      return { kind: 'guest-error', code: RunExitCode.GUEST_ERROR, message: `guest error: ${reason.message}` };
    case 'budget':
      return { kind: 'budget', code: RunExitCode.BUDGET, message: `stopped after ${run.instructions} instructions (--max-insns)` };
    case 'idle':
      return { kind: 'idle', code: RunExitCode.IDLE, message: `the guest is idle forever: ${IDLE_FOREVER}` };
    case 'host-error':
      return {
        kind: 'host-error', code: RunExitCode.HOST_ERROR,
        message: `host error: ${reason.message}${isOutOfHostMemory(reason.error, reason.message) ? `; ${hostMemoryAdvice()}` : ''}`,
      };
    case 'paused':
      if (reason.reason === SIGNAL_PAUSE && signal !== null) return interrupted(signal, `after ${formatCount(run.instructions)} instructions`);
      return { kind: 'paused', code: RunExitCode.HOST_ERROR, message: `host error: the VM was paused (${reason.reason})` };
    case 'running':
    case 'timer-wait': // (only with RunOptions.yieldOnTimerWait, which the run loop never sets)
      return { kind: reason.kind, code: RunExitCode.HOST_ERROR, message: 'host error: the run ended while the VM was still running' };
  }
}

function interrupted(signal: StopSignal, when: string): Ending {
  return { kind: 'interrupted', code: SIGNAL_EXIT_CODES[signal], message: `interrupted by ${signal} ${when}`, signal };
}

async function main(argv: readonly string[]): Promise<number> {
  const args = parseRunArguments(argv);
  if (args === 'help') {
    process.stdout.write(`${RUN_HELP}\n`);
    return 0;
  }
  try {
    return await runMachine(args);
  } catch (error) {
    // Thrown rather than reported by the VM (a fork, a restore, a checkpoint): the same advice.
    if (!isOutOfHostMemory(error)) throw error;
    process.stderr.write(`error: host error: ${describeError(error)}; ${hostMemoryAdvice()}\n`);
    return RunExitCode.HOST_ERROR;
  }
}

async function runMachine(args: RunArguments): Promise<number> {
  // A failure from here on (mapping host memory, a kernel refusal) is a host error.
  const machine = await buildMachine(args);
  if (typeof machine === 'number') return machine;
  const { hv, vm, devices, image } = machine;
  vm.setTier(args.tier);
  // --stats splits run time between the tiers: time slices and compiled calls (costs a little).
  hv.timeTiers = args.stats;

  const promoter = args.promoteHot ? new AccessedBitPrioritizer(vm) : null;
  const swap = args.reclaimCold ? SwapFile.createIn(tmpdir()) : null;
  if (swap) swap.attach(vm);
  const reclaimer = swap ? new LowActivityReclaimer(vm, { swap }) : null;

  const trace = args.trace ? new TraceWriter(image) : null;
  if (trace) {
    process.stderr.write('warning: --trace prints every instruction; the guest runs far slower\n');
    for (const vcpu of vm.vcpus) vcpu.tracer = trace.hook;
  }

  const signals = new SignalStop();
  try {
    const started = performance.now();
    let run: GuestRun;
    let children: Machine[] = [];
    let missedPoints = 0;
    try {
      ({ run, children, missedPoints } = args.apiSock !== undefined ? await runUnderApi(args, machine, signals) : await runPlan(args, machine, signals));
    } finally {
      devices.console.stop();
      trace?.flush();
    }
    const wallMs = performance.now() - started;
    let ending = describeEnding(run, signals.signal);
    if (args.checkpointOnExit !== undefined) checkpointOnExit(vm, args.checkpointOnExit, ending, run.instructions);
    const forks = await runForkChildren(hv, children, signals);
    if (ending.code === 0) {
      if (forks.interrupted !== null) ending = interrupted(forks.interrupted, 'while the fork children ran');
      else ending.code = forks.code !== 0 ? forks.code : missedPoints > 0 ? RunExitCode.POINT_NOT_REACHED : 0;
    }
    const report = args.stats ? { run: runTotals(run, wallMs, args.tier), host: hostStats(hv), vm: vmStats(hv, vm, { promoter, reclaimer, swap, block: devices.block }) } : null;
    if (report && !args.json) process.stderr.write(`${formatStats(report)}\n`);
    if (ending.message !== undefined) process.stderr.write(`error: ${ending.message}\n`);
    // The JSON document comes last, on one line, whatever was printed before it.
    if (report && args.json) process.stderr.write(`${JSON.stringify({ ...report, exit: ending, ...(forks.outcomes.length > 0 ? { forks: forks.outcomes } : {}) })}\n`);
    return ending.code;
  } finally {
    signals.dispose();
    swap?.close();
    machine.restored?.close();
  }
}

/** Endings after which the VM can run on from where it stopped, so --checkpoint-on-exit saves it. */
const RESTORABLE_ENDINGS: ReadonlySet<Ending['kind']> = new Set(['interrupted', 'budget', 'idle']);

/** --checkpoint-on-exit: saves the VM when the run ended in a restorable state, says so otherwise. */
function checkpointOnExit(vm: Vm, path: string, ending: Ending, instructions: number): void {
  if (!RESTORABLE_ENDINGS.has(ending.kind)) {
    process.stderr.write(`warning: --checkpoint-on-exit: the run ended (${ending.kind}) in a state that cannot run on; no checkpoint was written to ${path}\n`);
    return;
  }
  // A signal's pause is the host's, not the guest's: the restored VM runs on.
  vm.resume();
  saveWithProgress(vm, path, `checkpoint on exit after ${formatCount(instructions)} instructions`);
}

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  image: GuestImage;
  restored?: RestoredVm;
}

/** With --api-sock, the console's output also goes here (GET /vms/{name}/console). */
let apiConsoleLog: ConsoleLog | null = null;
/** Console output an --api-sock run keeps for the API. */
const API_CONSOLE_BYTES = 1024 * 1024;

/**
 * The standard devices; console input given up front (--input) is closed after it, so the guest
 * sees the end of input once it has read it (without --input, the end of stdin closes it).
 */
function attachDevices(vm: Vm, options: StandardDeviceOptions): StandardDevices {
  const devices = attachStandardDevices(vm, options);
  if (options.input !== undefined) devices.console.closeInput();
  return devices;
}

/** Devices for a machine: the standard set, with the console input and disk asked for. */
function deviceOptionsFor(args: RunArguments, hv: Hypervisor, bootArgs: string, input: string | undefined): StandardDeviceOptions {
  const options: StandardDeviceOptions = { bootArgs, hypervisor: hv };
  if (args.apiSock !== undefined) {
    // The API's console log, which also prints to stdout as usual.
    apiConsoleLog ??= new ConsoleLog(API_CONSOLE_BYTES, process.stdout);
    options.output = apiConsoleLog;
  }
  if (input !== undefined) options.input = input;
  else options.interactiveInput = true;
  if (args.disk !== undefined) options.disk = args.diskAsync ? { path: args.disk, async: true, direct: args.diskDirect } : args.disk;
  return options;
}

/** A fresh machine with the image loaded, or one restored from a checkpoint (--restore). */
async function buildMachine(args: RunArguments): Promise<Machine | number> {
  if (args.restore !== undefined) {
    let hostMemoryBytes: number;
    try {
      hostMemoryBytes = restoreHostMemory(args);
    } catch (error) {
      if (!isReportableError(error)) throw error;
      printError(error);
      return RunExitCode.LOAD_ERROR;
    }
    const hv = createRunHypervisor(hostMemoryBytes);
    let devices: StandardDevices | null = null;
    const progress = new PageProgress(`restore (${args.restoreMode})`);
    let restored: RestoredVm;
    try {
      restored = restoreVmCheckpoint(hv, args.restore, {
        mode: args.restoreMode,
        attach: (vm, saved) => {
          const options = deviceOptionsFor(args, hv, savedBootArgs(saved.components['bootargs']?.state ?? { text: '' }), args.input);
          // A checkpointed disk is reopened from its saved chain; attach it on that chain's base.
          // savedBlockDisk checks the saved chain: a malformed one is a typed error naming the field.
          const block = saved.components['block']?.state;
          if (block !== undefined && options.disk === undefined) {
            // An asynchronous disk stays one: the guest may have found its queue.
            const mode = savedBlockMode(block);
            options.disk = mode.async ? { path: savedBlockDisk(block), async: true, direct: mode.direct || args.diskDirect } : savedBlockDisk(block);
          }
          devices = attachDevices(vm, options);
        },
        onProgress: progress.onProgress,
      });
    } catch (error) {
      progress.finish();
      if (!isReportableError(error) || isOutOfHostMemory(error)) throw error;
      printError(error);
      return RunExitCode.LOAD_ERROR;
    }
    progress.finish();
    const image = restored.vm.image ?? { entry: 0, segments: [], symbols: [] };
    return { hv, vm: restored.vm, devices: devices!, image, restored };
  }
  let image: GuestImage;
  try {
    image = loadGuest(args.path);
  } catch (error) {
    if (!isReportableError(error)) throw error;
    printError(error);
    return RunExitCode.LOAD_ERROR;
  }
  const hv = createRunHypervisor(args.hostMemoryBytes);
  const vm = hv.createVm({ memoryBytes: args.memoryBytes, vcpus: args.vcpus, name: basename(args.path), mmu: args.mmu, largePages: args.largePages });
  let devices: StandardDevices;
  try {
    devices = attachDevices(vm, deviceOptionsFor(args, hv, args.bootArgs, forkInput(args.input, 0)));
  } catch (error) {
    throw error instanceof BootArgsError ? new UsageError(error.message) : error;
  }
  try {
    vm.loadImage(image);
  } catch (error) {
    if (!isReportableError(error)) throw error;
    printError(error);
    return RunExitCode.LOAD_ERROR;
  }
  return { hv, vm, devices, image };
}

/** Host memory for a restore: --host-mem, or the checkpoint's guest RAM plus headroom. */
function restoreHostMemory(args: RunArguments): number {
  if (args.hostMemoryGiven) return args.hostMemoryBytes;
  const reader = CheckpointReader.open(args.restore!, { lazyIndex: true });
  try {
    const bytes = reader.pageCount * PAGE_SIZE;
    return Math.min(MAX_HOST_MEMORY, Math.ceil(bytes / RUN_SIZE) * RUN_SIZE + HOST_MEMORY_HEADROOM);
  } finally {
    reader.close();
  }
}

/** Console input for fork child `index` (0 = the parent): `{fork}` in --input becomes the index. */
function forkInput(input: string | undefined, index: number): string | undefined {
  return input?.replaceAll('{fork}', String(index));
}

/** The hypercall a guest uses to ask tools/run for a checkpoint (needs --checkpoint-path). */
const CHECKPOINT_PAUSE = 'tools/run: checkpoint requested by the guest';

/** The signals that stop a run cleanly. */
type StopSignal = 'SIGINT' | 'SIGTERM';
/** The exit code after each: 128 + the signal's number, as a shell reports a process it killed. */
const SIGNAL_EXIT_CODES: Readonly<Record<StopSignal, number>> = { SIGINT: RunExitCode.INTERRUPTED_INT, SIGTERM: RunExitCode.INTERRUPTED_TERM };
/** The pause reason of a VM stopped by a signal. */
const SIGNAL_PAUSE = 'tools/run: stopped by a signal';

/**
 * SIGINT and SIGTERM stop the run cleanly (docs/run.md#signals): the VM being run is paused
 * between slices, the run then ends as usual (console flushed, live snapshot finished, stats,
 * --checkpoint-on-exit) and exits with SIGNAL_EXIT_CODES. After the first signal the listeners
 * are removed, so a second one has the signal's default action: the process ends at once, even
 * in the middle of a checkpoint save. dispose() removes everything at the end.
 */
class SignalStop {
  /** The signal received, if any. */
  signal: StopSignal | null = null;
  /** Called on the first signal (--api-sock: the host pauses the VM). */
  onSignal: (() => void) | null = null;
  private target: Vm | null = null;
  private listeners: [StopSignal, () => void][] = [];
  private renew: NodeJS.Timeout | null = null;

  constructor() {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      const listener = () => this.stop(signal);
      process.on(signal, listener);
      this.listeners.push([signal, listener]);
    }
  }

  /** `vm` runs from now on: a signal pauses it (at once when one came already). */
  watch(vm: Vm): void {
    this.target = vm;
    if (this.signal !== null) vm.pause(SIGNAL_PAUSE);
  }

  private stop(signal: StopSignal): void {
    this.signal = signal;
    this.removeListeners();
    process.stderr.write(`${signal}: stopping the guest (a second signal ends the process at once)\n`);
    this.target?.pause(SIGNAL_PAUSE);
    this.onSignal?.();
    // A guest reset carried out within the run clears the pause: renew it each time the event loop runs.
    this.renew = setInterval(() => this.target?.pause(SIGNAL_PAUSE), 1);
    this.renew.unref();
  }

  private removeListeners(): void {
    for (const [signal, listener] of this.listeners) process.off(signal, listener);
    this.listeners = [];
  }

  /** Removes the listeners and the timer: nothing is left to keep the process alive. */
  dispose(): void {
    this.removeListeners();
    if (this.renew) clearInterval(this.renew);
    this.renew = null;
  }
}

/**
 * Runs the machine through the instruction points the flags name (checkpoint, live snapshot,
 * fork), in order, then to the end, the --max-insns budget or a signal (the VM then ends paused
 * with SIGNAL_PAUSE; a live snapshot still being written is finished first, as at any end).
 */
async function runPlan(args: RunArguments, machine: Machine, signals: SignalStop): Promise<{ run: GuestRun; children: Machine[]; missedPoints: number }> {
  const { hv, vm, devices } = machine;
  if (args.checkpointPath !== undefined) {
    vm.onHypercall(Hcall.CHECKPOINT, (vcpu) => {
      vcpu.regs[Reg.A0] = HcallStatus.OK;
      vm.pause(CHECKPOINT_PAUSE);
    });
  }
  /** `missed` and `nothing`: the warning when the run ends before `at` (and exit 7). */
  const events: { at: number; act: () => void; missed: string; nothing: string }[] = [];
  if (args.checkpointAt) {
    const { at, path } = args.checkpointAt;
    events.push({ at, act: () => saveWithProgress(vm, path, `checkpoint at ${at}`), missed: `--checkpoint-at ${at}`, nothing: `no checkpoint was written to ${path}` });
  }
  let snapshot: LiveSnapshot | null = null;
  if (args.snapshotAt) {
    const { at, path } = args.snapshotAt;
    events.push({
      at,
      act: () => {
        snapshot = startLiveSnapshot(vm, path);
        process.stderr.write(`snapshot: started at instruction ${at}, guest paused ${snapshot.pauseMs.toFixed(3)} ms\n`);
      },
      missed: `--snapshot-at ${at}`, nothing: `no snapshot was written to ${path}`,
    });
  }
  const children: Machine[] = [];
  if (args.forkAt !== undefined) {
    const at = args.forkAt;
    events.push({
      at,
      act: () => {
        const started = performance.now();
        for (let index = 1; index <= args.forks; index++) {
          const output = new CaptureSink();
          let childDevices: StandardDevices | null = null;
          const child = hv.forkVm(vm, {
            name: `${vm.name}-fork${index}`,
            attach: (c) => {
              const bootArgs = devices.bootArgs.text;
              childDevices = attachDevices(c, { ...deviceOptionsFor(args, hv, bootArgs, forkInput(args.input, index) ?? ''), output });
            },
          });
          children.push({ hv, vm: child, devices: childDevices!, image: machine.image });
        }
        process.stderr.write(`fork: ${args.forks} children at instruction ${at} in ${(performance.now() - started).toFixed(3)} ms\n`);
      },
      missed: `--fork-at ${at}`, nothing: 'no children were forked',
    });
  }
  events.sort((a, b) => a.at - b.at);

  let executed = 0;
  let resets = 0;
  const budget = args.maxInstructions ?? Infinity;
  for (;;) {
    const next = events[0];
    const limit = Math.min(budget, next ? next.at : Infinity) - executed;
    signals.watch(vm); // after a signal, the VM stops at once (an event acted on it first)
    const phase = await runWithResetsAsync(hv, vm, devices, Number.isFinite(limit) ? { maxInstructions: limit } : {});
    executed += phase.instructions;
    resets += phase.resets;
    const reason = phase.reason;
    if (reason.kind === 'budget' && next && executed === next.at) {
      events.shift()!.act();
      continue;
    }
    if (reason.kind === 'paused' && reason.reason === CHECKPOINT_PAUSE) {
      vm.resume();
      saveWithProgress(vm, args.checkpointPath!, `checkpoint requested at ${executed}`);
      continue;
    }
    const live = snapshot as LiveSnapshot | null;
    if (live && !live.done) live.finish();
    if (live) process.stderr.write(`snapshot: ${live.path} complete (${live.pagesSaved} pages: ${live.savedByWrites} saved before a guest write, ${live.savedByTicker} in the background)\n`);
    // Points the run never reached (the guest ended first): nothing was done for them.
    for (const event of events) {
      process.stderr.write(`warning: ${event.missed}: the guest stopped after ${formatCount(executed)} instructions, before that point; ${event.nothing}\n`);
    }
    return { run: { reason, instructions: executed, resets }, children, missedPoints: events.length };
  }
}

/**
 * --api-sock: the VM runs under a Host (services/host) on this hypervisor, which serves the
 * control API on the socket until the VM stops or a signal comes; then the VM is handed back
 * (stats, --checkpoint-on-exit) and any VM created through the API is freed with the host.
 */
async function runUnderApi(args: RunArguments, machine: Machine, signals: SignalStop): Promise<{ run: GuestRun; children: Machine[]; missedPoints: number }> {
  const { hv, vm, devices } = machine;
  const api = await ApiServer.listen(args.apiSock!, { log: (line) => process.stderr.write(`${line}\n`) });
  // The pool is sized for the run's own VM (--host-mem): VMs made through the API share it as
  // forks do, and running it dry is a host error as always.
  const host = new Host(hv, { sliceInstructions: API_SLICE, quantum: API_QUANTUM, consoleBufferBytes: API_CONSOLE_BYTES, overcommit: true });
  try {
    hostRoutes(api, host);
    const start = vm.instructionsRetired;
    const resetsBefore = devices.power.resets;
    const origin: VmOrigin = args.restore !== undefined ? { kind: 'checkpoint', path: args.restore, mode: args.restoreMode } : { kind: 'image', image: args.path };
    host.adoptVm(vm, devices, {
      origin, consoleLog: apiConsoleLog!, keep: true, disk: args.disk ?? null,
      ...(args.maxInstructions === undefined ? {} : { maxInstructions: args.maxInstructions }),
      ...(machine.restored === undefined ? {} : { restored: machine.restored }),
    });
    process.stderr.write(`api: serving ${vm.name} on ${args.apiSock}\n`);
    const signalled = new Promise<null>((resolve) => (signals.onSignal = () => resolve(null)));
    const stopped = await Promise.race([host.whenStopped(vm.name), signalled]);
    host.releaseVm(vm.name);
    let reason: GuestRun['reason'];
    if (stopped === null || stopped.state !== 'Stopped') reason = { kind: 'paused', reason: SIGNAL_PAUSE };
    else if (stopped.exit?.kind === 'budget') reason = { kind: 'budget' };
    else if (stopped.exit?.kind === 'idle') reason = { kind: 'idle' };
    else reason = vm.stopReason;
    return { run: { reason, instructions: vm.instructionsRetired - start, resets: devices.power.resets - resetsBefore }, children: [], missedPoints: 0 };
  } finally {
    await api.close();
    await host.close();
  }
}

/** The host scheduler's slices under --api-sock (its defaults, docs/host.md). */
const API_SLICE = 200_000;
const API_QUANTUM = 20_000;

/** A progress bar (terminal only) whose total is learnt from the first report. */
class PageProgress {
  private bar: ProgressBar | null = null;
  constructor(private readonly label: string) {}
  readonly onProgress = (done: number, total: number): void => {
    this.bar ??= new ProgressBar(`${this.label} (pages)`, total);
    this.bar.update(done);
  };
  finish(): void {
    this.bar?.finish();
  }
}

/** Saves a checkpoint with a progress bar (on a terminal only). */
function saveWithProgress(vm: Vm, path: string, label: string): void {
  const progress = new PageProgress(label);
  try {
    const stats = saveVmCheckpoint(vm, path, { onProgress: progress.onProgress });
    progress.finish();
    process.stderr.write(`${label}: ${path} (${formatBytes(stats.fileBytes)}, ${formatCount(stats.pagesStored)} pages stored, ${formatCount(stats.zeroPages)} zero)\n`);
  } catch (error) {
    progress.finish();
    throw error;
  }
}

/** How one fork child ended (the `forks` part of --stats --json). */
interface ForkOutcome {
  /** The child's number (1-based). */
  index: number;
  /** How its run ended (a VM stop reason kind, `interrupted`, or `not-run` after a signal). */
  kind: string;
  /** Its exit code (the guest's & 0xff when it powered off, else the one tools/run would use). */
  code: number;
  /** Instructions it retired after the fork. */
  instructions: number;
}

/**
 * Runs each fork child to its end and prints its output under a header. Returns each outcome,
 * the first failure's code, and the signal when one stopped them (the rest are not run).
 */
async function runForkChildren(hv: Hypervisor, children: Machine[], signals: SignalStop): Promise<{ outcomes: ForkOutcome[]; code: number; interrupted: StopSignal | null }> {
  let firstFailure = 0;
  const outcomes: ForkOutcome[] = [];
  for (const [index, child] of children.entries()) {
    if (signals.signal !== null) {
      process.stderr.write(`fork ${index + 1}: not run (${signals.signal})\n`);
      outcomes.push({ index: index + 1, kind: 'not-run', code: SIGNAL_EXIT_CODES[signals.signal], instructions: 0 });
      continue;
    }
    signals.watch(child.vm);
    const run = await runWithResetsAsync(hv, child.vm, child.devices);
    child.devices.console.stop();
    const text = (child.devices.captured ?? new CaptureSink()).text();
    process.stdout.write(`--- fork ${index + 1} ---\n${text}${text.endsWith('\n') || text === '' ? '' : '\n'}`);
    const ending = describeEnding(run, signals.signal);
    const said = ending.kind === 'halted' ? `exit ${ending.code}` : ending.kind === 'interrupted' ? `interrupted by ${ending.signal}` : ending.kind;
    process.stderr.write(`fork ${index + 1}: ${said} after ${formatCount(run.instructions)} more instructions\n`);
    outcomes.push({ index: index + 1, kind: ending.kind, code: ending.code, instructions: run.instructions });
    if (firstFailure === 0) firstFailure = ending.kind === 'halted' ? ending.code : RunExitCode.GUEST_ERROR;
  }
  const stopped = outcomes.some((outcome) => outcome.kind === 'interrupted' || outcome.kind === 'not-run');
  return { outcomes, code: firstFailure, interrupted: stopped ? signals.signal : null };
}

try {
  await runTool(main, { usage: RUN_USAGE, errorExitCode: RunExitCode.HOST_ERROR });
} catch (error) {
  // Not a typed error: a bug or the host failing. Still one line; the stack on request.
  process.stderr.write(`error: host error: ${error instanceof Error ? error.message : String(error)}\n`);
  if (process.env['BYTEVISOR_DEBUG'] && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exitCode = RunExitCode.HOST_ERROR;
}
