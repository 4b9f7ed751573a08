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
  attachStandardDevices, BootArgsError, CaptureSink, runWithResetsAsync, savedBlockDisk, savedBootArgs, type GuestRun, type StandardDeviceOptions,
  type StandardDevices,
} from '../devices/index.ts';
import { CheckpointReader, restoreVmCheckpoint, saveVmCheckpoint, startLiveSnapshot, type LiveSnapshot, type RestoredVm } from '../services/checkpoint/index.ts';
import { createHypervisor, IDLE_FOREVER, Mode, OutOfHostMemoryError, RUN_SIZE, type Hypervisor, type LargePagePolicy, type MmuOptions, type Vcpu, type Vm } from '../kernel/index.ts';
import { processRss } from '../native/index.ts';
import { AccessedBitPrioritizer, LowActivityReclaimer, SwapFile } from '../services/memory/index.ts';
import { tmpdir } from 'node:os';
import {
  describeError, formatBytes, formatCount, formatTable, isReportableError, parseArguments, parseInteger, parseSize, printError, ProgressBar, runTool,
  UsageError,
} from './cli.ts';
import { RUN_FLAGS, RUN_HELP, RUN_USAGE, RUN_VALUE_OPTIONS, RunExitCode } from './run-options.ts';

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
  trace: boolean;
  input: string | undefined;
  bootArgs: string;
  mmu: MmuOptions;
  largePages: LargePagePolicy;
  /** T-3: promote the most accessed guest regions onto host runs. */
  promoteHot: boolean;
  /** T-4: break up low-activity large regions and swap their cold pages out. */
  reclaimCold: boolean;
  /** A disk for a block device (docs/block-device.md). */
  disk: string | undefined;
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
    if (args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}': --restore runs the checkpoint's own guest`);
  } else if (args.value('--restore-mode') !== undefined) {
    throw new UsageError('--restore-mode goes with --restore');
  }
  const forkAt = args.value('--fork-at');
  const forks = args.value('--forks');
  if ((forkAt === undefined) !== (forks === undefined)) throw new UsageError('--fork-at and --forks go together');
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
    trace: args.flag('--trace'),
    input: args.value('--input'),
    bootArgs: args.rest.join(' '),
    mmu: parseMmuOptions(args.value('--mmu'), args.flag('--no-traces'), args.value('--batch')),
    largePages: parseChoice(args.value('--large-pages'), '--large-pages', ['off', 'superpages', 'always'] as const, 'superpages'),
    promoteHot: args.flag('--promote-hot'),
    reclaimCold: args.flag('--reclaim-cold'),
    disk: args.value('--disk'),
    checkpointAt,
    checkpointPath: args.value('--checkpoint-path'),
    snapshotAt,
    restore,
    restoreMode: parseChoice(args.value('--restore-mode'), '--restore-mode', ['lazy', 'eager', 'map'] as const, 'lazy'),
    forkAt: forkAtCount,
    forks: forks === undefined ? 0 : parseInteger(forks, '--forks', 1, 64),
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

/** The --stats report: run totals, per-vCPU counters, exits, MMIO, memory. */
function formatStats(hv: Hypervisor, vm: Vm, run: GuestRun, wallMs: number): string {
  const mips = wallMs > 0 ? run.instructions / wallMs / 1000 : 0;
  const out: string[] = [];
  out.push('run');
  out.push(
    formatTable(
      [
        ['instructions', formatCount(run.instructions)],
        ['wall time', `${(wallMs / 1000).toFixed(3)} s`],
        ['speed', `${mips.toFixed(2)} MIPS`],
        ['resets', formatCount(run.resets)],
      ],
      { indent: '  ', rightAligned: [false, true] },
    ),
  );
  const vcpuRows = [['vcpu', 'instret', 'tlb hits', 'tlb misses', 'tlb fills', 'tlb drops', 'tlb flushes', 'page walks', 'traps', 'interrupts', 'hypercalls', 'waits']];
  for (const vcpu of vm.vcpus) {
    vcpuRows.push([
      String(vcpu.id), vcpu.instret, vcpu.stats.tlbHits, vcpu.stats.tlbMisses, vcpu.tlb.fills, vcpu.tlb.entriesDropped, vcpu.tlb.fullFlushes,
      vcpu.walker.walks, vcpu.stats.traps, vcpu.stats.interrupts, vcpu.stats.hypercalls, vcpu.stats.waits,
    ].map((cell) => (typeof cell === 'number' ? formatCount(cell) : cell)));
  }
  out.push('vcpus');
  out.push(formatTable(vcpuRows, { indent: '  ' }));
  const exits: string[][] = [
    ['mmio', formatCount(vm.exits.mmio)],
    ['hypercall', formatCount(vm.exits.hypercall)],
    ['trap to guest', formatCount(vm.exits.trapToGuest)],
    ['code write', formatCount(vm.exits.codeWrites)],
  ];
  for (const [state, count] of Object.entries(vm.exits.absent)) exits.push([`absent: ${state}`, formatCount(count)]);
  for (const [flag, count] of Object.entries(vm.exits.writeProtect)) exits.push([`write-protect: ${flag}`, formatCount(count)]);
  out.push('exits');
  out.push(formatTable(exits, { indent: '  ', rightAligned: [false, true] }));
  out.push('mmio accesses');
  out.push(formatTable(Object.entries(vm.bus.accessCounts()).map(([device, count]) => [device, formatCount(count)]), { indent: '  ', rightAligned: [false, true] }));
  const mmu = vm.mmu.stats;
  const shadow = vm.mmu.census();
  const large = vm.memory.largePageStats;
  out.push(`mmu (${vm.mmu.mode}${vm.mmu.mode === 'shadow' ? `, traces ${vm.mmu.traces ? 'on' : 'off'}, batch ${vm.mmu.batch}` : ''})`);
  out.push(
    formatTable(
      [
        ['page walks', formatCount(mmu.walks)],
        ['misses answered by shadow tables', formatCount(mmu.shadowHits)],
        ['misses answered by large mappings', formatCount(mmu.largeHits)],
        ['entries filled by batches', formatCount(mmu.batchFilled)],
        ['traces placed / removed / hit', `${formatCount(mmu.tracesPlaced)} / ${formatCount(mmu.tracesRemoved)} / ${formatCount(mmu.traceHits)}`],
        ['shadow entries dropped by traces', formatCount(mmu.shadowEntriesDropped)],
        ['TLB entries dropped by traces', formatCount(vm.translationsInvalidated)],
        ['guest flushes elided / full', `${formatCount(mmu.flushesElided)} / ${formatCount(mmu.flushesFull)}`],
        ['ASIDs reused for another root', formatCount(mmu.asidReuses)],
        ['shootdowns (entries dropped)', `${formatCount(hv.shootdowns)} (${formatCount(hv.shootdownEntries)})`],
        ['shadow spaces / cached PTEs / traced pages', `${formatCount(shadow.spaces)} / ${formatCount(shadow.cachedPtes)} / ${formatCount(shadow.tracedPages)}`],
        ['large mappings held', formatCount(vm.mmu.largeMappings())],
        [`host runs (policy ${vm.largePagePolicy}): allocated / promoted / broken up`, `${formatCount(large.runsAllocated)} / ${formatCount(large.regionsPromoted)} / ${formatCount(large.regionsBrokenUp)}`],
      ],
      { indent: '  ', rightAligned: [false, true] },
    ),
  );
  const pool = hv.poolStats();
  const census = vm.memory.census();
  const decode = hv.decodeCache.stats;
  out.push('memory');
  out.push(
    formatTable(
      [
        ['decoded pages', `${formatCount(decode.pagesDecoded)} (${formatCount(decode.slotsInUse)} in use, ${formatCount(decode.pagesDropped)} dropped)`],
        ['host frames in use', `${formatCount(pool.usedFrames)} of ${formatCount(pool.totalFrames)} (${formatBytes(pool.usedFrames * PAGE_SIZE)})`],
        ['guest pages present', `${formatCount(census.present)} of ${formatCount(vm.memory.pageCount)} (${formatBytes(census.present * PAGE_SIZE)})`],
        ['guest pages shared copy-on-write', formatCount(census.shared)],
        ['process RSS', formatBytes(processRss())],
      ],
      { indent: '  ', rightAligned: [false, false] },
    ),
  );
  return out.join('\n');
}

/** A policy's flat counters as a table. */
function formatPolicyStats(title: string, stats: Record<string, number>): string {
  const rows = Object.entries(stats).map(([name, value]) => [name.replace(/([A-Z])/g, ' $1').toLowerCase(), /bytes/i.test(name) ? formatBytes(value) : formatCount(value)]);
  return `${title}\n${formatTable(rows, { indent: '  ', rightAligned: [false, true] })}`;
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

/** The exit code for how the run ended, printing the one `error:` line when it is not a halt. */
function reportEnding(run: GuestRun): number {
  const reason = run.reason;
  switch (reason.kind) {
    case 'halted':
      return reason.exitCode & 0xff;
    case 'guest-error':
      process.stderr.write(`error: guest error: ${reason.message}\n`);
      return RunExitCode.GUEST_ERROR;
    case 'budget':
      process.stderr.write(`error: stopped after ${run.instructions} instructions (--max-insns)\n`);
      return RunExitCode.BUDGET;
    case 'idle':
      process.stderr.write(`error: the guest is idle forever: ${IDLE_FOREVER}\n`);
      return RunExitCode.IDLE;
    case 'host-error':
      process.stderr.write(`error: host error: ${reason.message}${isOutOfHostMemory(reason.error, reason.message) ? `; ${hostMemoryAdvice()}` : ''}\n`);
      return RunExitCode.HOST_ERROR;
    case 'paused':
      process.stderr.write(`error: host error: the VM was paused (${reason.reason})\n`);
      return RunExitCode.HOST_ERROR;
    case 'running':
      process.stderr.write('error: host error: the run ended while the VM was still running\n');
      return RunExitCode.HOST_ERROR;
  }
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

  const promoter = args.promoteHot ? new AccessedBitPrioritizer(vm) : null;
  const swap = args.reclaimCold ? SwapFile.createIn(tmpdir()) : null;
  if (swap) swap.attach(vm);
  const reclaimer = swap ? new LowActivityReclaimer(vm, { swap }) : null;

  const trace = args.trace ? new TraceWriter(image) : null;
  if (trace) {
    process.stderr.write('warning: --trace prints every instruction; the guest runs far slower\n');
    for (const vcpu of vm.vcpus) vcpu.tracer = trace.hook;
  }

  const started = performance.now();
  let run: GuestRun;
  let children: Machine[] = [];
  let missedPoints = 0;
  try {
    ({ run, children, missedPoints } = await runPlan(args, machine));
  } finally {
    devices.console.stop();
    trace?.flush();
  }
  const wallMs = performance.now() - started;
  const childCode = await runForkChildren(hv, children);
  if (args.stats) {
    process.stderr.write(`${formatStats(hv, vm, run, wallMs)}\n`);
    if (promoter) {
      process.stderr.write(`${formatPolicyStats('large pages: accessed-bit prioritizer (T-3)', { ...promoter.stats() })}\n`);
      // The counts behind the decisions: each promotion with the region's accessed-page count at
      // that scan (highest first within a scan), then the last scan that saw any access.
      const promotions = promoter.promotions();
      if (promotions.length > 0) {
        const rows = promotions.map((p) => [`scan ${p.scan}`, `region ${p.region} (gpa 0x${(p.region * 4 * 1024 * 1024).toString(16).padStart(8, '0')})`, `${formatCount(p.count)} pages accessed`]);
        process.stderr.write(`promotions (T-3 order)\n${formatTable(rows, { indent: '  ', rightAligned: [false, false, true] })}\n`);
      }
      const busy = promoter.history().filter((record) => [...record.counts.values()].some((count) => count > 0));
      const last = busy[busy.length - 1];
      if (last) {
        const rows = [...last.counts].filter(([, count]) => count > 0).sort((a, b) => b[1] - a[1]).slice(0, 16)
          .map(([region, count]) => [`region ${region}`, `${formatCount(count)} pages`]);
        process.stderr.write(`accessed pages per region not yet large, scan ${last.scan}\n${formatTable(rows, { indent: '  ', rightAligned: [false, true] })}\n`);
      }
    }
    if (reclaimer && swap) {
      process.stderr.write(`${formatPolicyStats('large pages: low-activity reclaimer (T-4)', { ...reclaimer.stats() })}\n`);
      process.stderr.write(`${formatPolicyStats('swap', { ...swap.stats() })}\n`);
    }
  }
  swap?.close();
  machine.restored?.close();
  const code = reportEnding(run);
  if (code !== 0) return code;
  if (childCode !== 0) return childCode;
  return missedPoints > 0 ? RunExitCode.POINT_NOT_REACHED : 0;
}

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  image: GuestImage;
  restored?: RestoredVm;
}

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
  if (input !== undefined) options.input = input;
  else options.interactiveInput = true;
  if (args.disk !== undefined) options.disk = args.disk;
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
          if (block !== undefined && options.disk === undefined) options.disk = savedBlockDisk(block);
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

/**
 * Runs the machine through the instruction points the flags name (checkpoint, live snapshot,
 * fork), in order, then to the end or the --max-insns budget.
 */
async function runPlan(args: RunArguments, machine: Machine): Promise<{ run: GuestRun; children: Machine[]; missedPoints: number }> {
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

/** Runs each fork child to its end, prints its output under a header; returns the first failure. */
async function runForkChildren(hv: Hypervisor, children: Machine[]): Promise<number> {
  let firstFailure = 0;
  for (const [index, child] of children.entries()) {
    const run = await runWithResetsAsync(hv, child.vm, child.devices);
    child.devices.console.stop();
    const text = (child.devices.captured ?? new CaptureSink()).text();
    process.stdout.write(`--- fork ${index + 1} ---\n${text}${text.endsWith('\n') || text === '' ? '' : '\n'}`);
    const ending = run.reason.kind === 'halted' ? `exit ${run.reason.exitCode & 0xff}` : run.reason.kind;
    process.stderr.write(`fork ${index + 1}: ${ending} after ${formatCount(run.instructions)} more instructions\n`);
    if (firstFailure === 0) firstFailure = run.reason.kind === 'halted' ? run.reason.exitCode & 0xff : RunExitCode.GUEST_ERROR;
  }
  return firstFailure;
}

try {
  await runTool(main, { usage: RUN_USAGE, errorExitCode: RunExitCode.HOST_ERROR });
} catch (error) {
  // Not a typed error: a bug or the host failing. Still one line; the stack on request.
  process.stderr.write(`error: host error: ${error instanceof Error ? error.message : String(error)}\n`);
  if (process.env['BYTEVISOR_DEBUG'] && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exitCode = RunExitCode.HOST_ERROR;
}
