/**
 * bench — guest execution speed against plain JavaScript, and translation costs under each MMU
 * configuration, measured in the same run.
 *
 *   npm run bench [-- --json] [-- --quick] [-- --only <workload>[,<workload>…]] [-- --qemu]
 *
 * Runs every workload of bench/workloads.ts with paging off and on, and the same algorithm in
 * plain JS; prints guest MIPS, the plain-JS "guest-equivalent" MIPS (the guest's instruction
 * count ÷ the JS time), their ratio, TLB misses and page walks. Then the translation workloads of
 * bench/translation.ts (issue 4): each guest under several MMU configurations, with page walks,
 * MIPS, the technique on/off comparisons and a shadow-versus-nested table. Then the VM-state
 * figures (bench/state.ts) and the control API's (bench/api.ts, issue 9). Page sharing
 * (bench/sharing.ts, issue 10) runs only when asked for (`--only sharing`), and so does memory
 * overcommit (bench/overcommit.ts, issue 10: balloon reclaim, the T-7 experiment; bench/policies.ts,
 * issue 11: the idle tax, active memory, miss-rate curves; `--only
 * overcommit`); likewise migration, HA, worker threads (`--only parallel`) and storage IO control,
 * the partition bus and the proxied disk (bench/io.ts, issue 17: `--only io`). `--qemu` (issue 13, optional: Debian's qemu-system-misc and gcc-riscv64-unknown-elf)
 * also runs the workloads as RV32 programs under qemu-system-riscv32, interleaved with their rounds,
 * and prints bytevisor's MIPS against QEMU's (bench/qemu.ts). Last, the PASS/FAIL
 * lines of the project's targets. `--json` prints the same figures as one JSON object and nothing else on
 * stdout. `--quick` makes small, few runs (for the smoke test; its figures mean nothing).
 * Progress goes to stderr when it is a terminal. The bench is not a test: a missed target is a
 * FAIL line, not an exit code; a wrong guest result or bad usage is an error (exit 1).
 * Method and figures: docs/performance.md.
 */
import { cpus, arch, loadavg, platform, totalmem } from 'node:os';
import { pathToFileURL } from 'node:url';
import { BvError } from '../guest-isa/errors.ts';
import { compileAtFirstCall, compilesAtFirstCall, createHypervisor } from '../kernel/index.ts';
import { BenchError, JIT_PAGING_ON, measureWorkload, PAGING_ON, stepCount } from './harness.ts';
import type { Check, VariantFigures, Workload, WorkloadFigures } from './harness.ts';
import { RANDOM_ACCESS_POOL_BYTES, shadowNestedComparisons, techniqueComparisons, translationChecks, TRANSLATION_WORKLOADS } from './translation.ts';
import type { Comparison } from './translation.ts';
import { formatState, measureState, stateChecks, stateStepCount, type StateFigures } from './state.ts';
import { apiChecks, apiStepCount, formatApi, measureApi, type ApiFigures } from './api.ts';
import { formatSharing, measureSharing, sharingChecks, sharingStepCount, type SharingFigures } from './sharing.ts';
import { errorsStepCount, formatErrors, measureErrors, type ErrorFigures } from './errors.ts';
import { formatMigration, measureMigration, migrationChecks, migrationStepCount, type MigrationBenchFigures } from './migration.ts';
import { formatHa, haChecks, haStepCount, measureHa, type HaBenchFigures } from './ha.ts';
import { formatParallel, measureParallel, parallelChecks, parallelStepCount, type ParallelBenchFigures } from './parallel.ts';
import { formatIo, ioChecks, ioStepCount, measureIo, type IoBenchFigures } from './io.ts';
import { formatOvercommit, measureOvercommit, overcommitChecks, overcommitStepCount, type OvercommitFigures } from './overcommit.ts';
import { formatPolicies, measurePolicies, policyChecks, policyStepCount, type PolicyFigures } from './policies.ts';
import { WORKLOADS } from './workloads.ts';
import { formatWarmup, hasWarmup, measureWarmup, WARMUP_RUNS, type WarmupFigures } from './warmup.ts';
import { detectQemuTools, formatQemu, QEMU_MACHINE, QEMU_R2_FACTOR, QEMU_TARGET_LOOP_MS, qemuChecks, qemuProgramFor, QemuSide, qemuStepCount } from './qemu.ts';
import type { QemuFigures, QemuWorkloadFigures } from './qemu.ts';

export type { Check } from './harness.ts';

const USAGE = 'usage: npm run bench -- [--json] [--quick] [--only <workload>[,<workload>...]] [--qemu]';

/** Targets from the project's performance issue (docs/performance.md). */
export const TARGETS = {
  /** Guest MIPS on CRC32 with paging on. */
  crc32PagingOnMips: 150,
  /** Extra time per guest instruction with paging on, against paging off. */
  maxPagingCost: 0.15,
} as const;

/** One bench run: warm-up rounds, then timed rounds whose median is the figure. */
const FULL_RUNS = { warmups: 1, runs: 7 };
const QUICK_RUNS = { warmups: 1, runs: 2 };
/**
 * Enough for the largest workload VM (random-access: 264 MiB, all of it touched, in whole 4 MiB
 * runs with large pages) with room to spare; one VM exists at a time. The pool is reserved, not
 * committed: only the frames a run touches take host memory, and freed frames go back to the OS.
 */
const HOST_MEMORY_BYTES = Math.max(64 * 2 ** 20, RANDOM_ACCESS_POOL_BYTES);

export interface BenchOptions {
  json: boolean;
  quick: boolean;
  /** Workload names to run (all when empty). */
  only: string[];
  /** Also run the workloads under QEMU and compare (issue 13; bench/qemu.ts). */
  qemu: boolean;
}

export interface BenchReport {
  machine: {
    cpu: string; cores: number; memoryGiB: number; platform: string; node: string; date: string;
    /** How V8 ran the bench: compiling every function at its first call (as the tools run), or Node's defaults. */
    v8: 'compiled at first call' | 'node defaults';
    /** os.loadavg() (1, 5, 15 minutes) when the bench started and when it ended. */
    load: { start: number[]; end: number[] };
  };
  method: { warmups: number; runs: number; quick: boolean; statistic: 'median' };
  /** Interpreter speed: paging off and on against plain JS. */
  workloads: WorkloadFigures[];
  /** Translation (issue 4): MMU configurations against each other. */
  translation: {
    workloads: WorkloadFigures[];
    /** Each technique on against off (traces, batched population, large pages). */
    techniques: Comparison[];
    /** Shadow page tables against nested walks on the same guests. */
    shadowVsNested: Comparison[];
  };
  /** The compiled tier's warm-up curve per workload (issue 13): both tiers from a cold start, in windows. */
  warmup: WarmupFigures[];
  /** VM state (issues 5 and 8): checkpoint save, live snapshot pause and stalls, fork, lazy restore. */
  state: StateFigures | null;
  /** The control API (issue 9): round trips while four VMs run, its cost to them, the scheduler's own cost. */
  api: ApiFigures | null;
  /** Content-based page sharing (issue 10): present only when selected (--only sharing). */
  sharing?: SharingFigures;
  /** Memory errors (issue 12: recovery state upkeep, recovery latency): present only with --only errors. */
  errors?: ErrorFigures;
  /** Live migration on loopback (issue 14: pre-copy downtime and throughput, post-copy resume and fault latency): with --only migration. */
  migration?: MigrationBenchFigures;
  /** High availability across hosts (issue 15: power-loss save of persistent memory to a partner): with --only ha. */
  ha?: HaBenchFigures;
  /** VMs on worker threads and power-aware placement (issue 16): with --only parallel. */
  parallel?: ParallelBenchFigures;
  /** Storage IO control (PARDA), the partition bus and the proxied disk (issue 17): with --only io. */
  io?: IoBenchFigures;
  /** Memory overcommit (issue 10): present only when selected (--only overcommit). */
  overcommit?: OvercommitFigures;
  /** Memory overcommit part 2 (issue 11: idle tax, active memory, MRC): with --only overcommit. */
  policies?: PolicyFigures;
  /** Side by side with QEMU (issue 13): present only with --qemu. */
  qemu?: QemuFigures;
  checks: Check[];
}

/** The VM-state figures are one bench entry, selected with --only state. */
const STATE_ENTRY = 'state';
/** The control-API figures, selected with --only api. */
const API_ENTRY = 'api';
/** The page-sharing figures, run only with --only sharing (not part of a plain `npm run bench`). */
const SHARING_ENTRY = 'sharing';
/** The overcommit figures (balloon reclaim, the T-7 experiment), run only with --only overcommit. */
const OVERCOMMIT_ENTRY = 'overcommit';
/** The memory-error figures (issue 12: parity and hash upkeep, recovery latency), run only with --only errors. */
const ERRORS_ENTRY = 'errors';
/** The live-migration figures (issue 14), run only with --only migration. */
const MIGRATION_ENTRY = 'migration';
/** The HA figures (issue 15), run only with --only ha. */
const HA_ENTRY = 'ha';
/** The worker-thread and placement figures (issue 16), run only with --only parallel. */
const PARALLEL_ENTRY = 'parallel';
/** PARDA, the bus and the proxied disk (issue 17), run only with --only io. */
const IO_ENTRY = 'io';
const GROUP_ENTRIES: readonly string[] = [STATE_ENTRY, API_ENTRY, SHARING_ENTRY, OVERCOMMIT_ENTRY, ERRORS_ENTRY, MIGRATION_ENTRY, HA_ENTRY, PARALLEL_ENTRY, IO_ENTRY];

export function parseBenchArguments(args: readonly string[]): BenchOptions | 'help' {
  const options: BenchOptions = { json: false, quick: false, only: [], qemu: false };
  for (let index = 0; index < args.length; index++) {
    const arg = args[index]!;
    if (arg === '--json') options.json = true;
    else if (arg === '--quick') options.quick = true;
    else if (arg === '--qemu') options.qemu = true;
    else if (arg === '--help' || arg === '-h') return 'help';
    else if (arg === '--only' || arg.startsWith('--only=')) {
      const value = arg === '--only' ? args[++index] : arg.slice('--only='.length);
      if (!value) throw new BenchError('BV_BENCH_USAGE', `--only needs a workload name (${workloadNames()})`);
      for (const name of value.split(',')) {
        if (!GROUP_ENTRIES.includes(name) && !ALL_WORKLOADS.some((w) => w.name === name)) throw new BenchError('BV_BENCH_USAGE', `unknown workload '${name}' (known: ${workloadNames()})`);
        options.only.push(name);
      }
    } else throw new BenchError('BV_BENCH_USAGE', `unknown option '${arg}'; ${USAGE}`);
  }
  return options;
}

const ALL_WORKLOADS: readonly Workload[] = [...WORKLOADS, ...TRANSLATION_WORKLOADS];
const workloadNames = (): string => [...ALL_WORKLOADS.map((w) => w.name), ...GROUP_ENTRIES].join(', ');

/**
 * Runs the selected workloads on one hypervisor; `onProgress` sees each step before it runs.
 * Asynchronous because the control-API group serves requests while its guests run.
 */
export async function runBench(options: BenchOptions, onProgress?: (step: number, total: number, label: string) => void): Promise<BenchReport> {
  const counts = options.quick ? QUICK_RUNS : FULL_RUNS;
  const chosen = (list: readonly Workload[]): readonly Workload[] => (options.only.length === 0 ? list : list.filter((w) => options.only.includes(w.name)));
  const selected = chosen(WORKLOADS);
  const selectedTranslation = chosen(TRANSLATION_WORKLOADS);
  const withState = options.only.length === 0 || options.only.includes(STATE_ENTRY);
  const withApi = options.only.length === 0 || options.only.includes(API_ENTRY);
  const withSharing = options.only.includes(SHARING_ENTRY);
  const withErrors = options.only.includes(ERRORS_ENTRY);
  const withOvercommit = options.only.includes(OVERCOMMIT_ENTRY);
  const withMigration = options.only.includes(MIGRATION_ENTRY);
  const withHa = options.only.includes(HA_ENTRY);
  const withParallel = options.only.includes(PARALLEL_ENTRY);
  const withIo = options.only.includes(IO_ENTRY);
  const total = [...selected, ...selectedTranslation].reduce((sum, w) => sum + stepCount(w, counts), 0) + selected.filter(hasWarmup).length * WARMUP_RUNS + (withState ? stateStepCount({ ...options, nodeDefaults: compilesAtFirstCall() }) : 0) + (withApi ? apiStepCount(options) : 0)
    + (withSharing ? sharingStepCount(options) : 0) + (withErrors ? errorsStepCount(options) : 0) + (withOvercommit ? overcommitStepCount(options) + policyStepCount(options) : 0) + (withMigration ? migrationStepCount(options) : 0) + (withHa ? haStepCount(options) : 0)
    + (withParallel ? parallelStepCount(options) : 0) + (withIo ? ioStepCount(options) : 0);
  // --qemu: the workloads that have an RV32 program, when the tools are there (bench/qemu.ts).
  const qemuTools = options.qemu ? detectQemuTools() : null;
  const qemuSelected = qemuTools?.ok ? selected.filter((w) => qemuProgramFor(w.name)) : [];
  const qemuSteps = qemuSelected.length * qemuStepCount(counts.runs, options.quick);
  const loadAtStart = loadavg().map((value) => Number(value.toFixed(2)));
  const hv = createHypervisor({ hostMemoryBytes: HOST_MEMORY_BYTES });
  let step = 0;
  const onStep = (label: string): void => onProgress?.(++step, total + qemuSteps, label);
  const qemuWorkloads: QemuWorkloadFigures[] = [];
  const measure = (workload: Workload): WorkloadFigures => {
    const program = qemuTools?.ok ? qemuProgramFor(workload.name) : null;
    const side = program && qemuTools?.ok ? new QemuSide(qemuTools.tools, program, options.quick, onStep) : null;
    try {
      const figures = measureWorkload(hv, workload, { ...counts, size: { quick: options.quick }, onStep, ...(side ? { onRound: (round: number, timed: boolean) => side.round(round, timed) } : {}) });
      if (side) qemuWorkloads.push(side.figures(figures));
      return figures;
    } finally {
      side?.dispose();
    }
  };
  const workloads = selected.map(measure);
  const warmup = selected.map((w) => measureWarmup(w, { quick: options.quick }, onStep)).filter((f): f is WarmupFigures => f !== null);
  const qemu: QemuFigures | null = qemuTools === null ? null : {
    tools: qemuTools.ok ? qemuTools.tools : null,
    ...(qemuTools.ok ? {} : { skipped: qemuTools.message }),
    method: { machine: QEMU_MACHINE, r2OverR1: QEMU_R2_FACTOR, targetLoopMs: QEMU_TARGET_LOOP_MS, statistic: 'median', runs: counts.runs },
    workloads: qemuWorkloads,
  };
  const translation = selectedTranslation.map(measure);
  const state = withState ? measureState({ quick: options.quick, nodeDefaults: compilesAtFirstCall(), onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const api = withApi ? await measureApi({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const sharing = withSharing ? measureSharing({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const errors = withErrors ? measureErrors({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const overcommit = withOvercommit ? measureOvercommit({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const policies = withOvercommit ? measurePolicies({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const migration = withMigration ? await measureMigration({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const ha = withHa ? await measureHa({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const parallel = withParallel ? await measureParallel({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const io = withIo ? await measureIo({ quick: options.quick, onStep: (label) => onProgress?.(++step, total, label) }) : null;
  const cpuList = cpus();
  return {
    machine: {
      cpu: cpuList[0]?.model ?? 'unknown',
      cores: cpuList.length,
      memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
      platform: `${platform()} ${arch()}`,
      node: process.version,
      v8: compilesAtFirstCall() ? 'compiled at first call' : 'node defaults',
      date: new Date().toISOString(),
      load: { start: loadAtStart, end: loadavg().map((value) => Number(value.toFixed(2))) },
    },
    method: { ...counts, quick: options.quick, statistic: 'median' },
    workloads,
    translation: { workloads: translation, techniques: techniqueComparisons(translation), shadowVsNested: shadowNestedComparisons(translation) },
    warmup,
    state,
    api,
    ...(sharing ? { sharing } : {}),
    ...(errors ? { errors } : {}),
    ...(migration ? { migration } : {}),
    ...(ha ? { ha } : {}),
    ...(parallel ? { parallel } : {}),
    ...(io ? { io } : {}),
    ...(overcommit ? { overcommit } : {}),
    ...(policies ? { policies } : {}),
    ...(qemu ? { qemu } : {}),
    checks: [
      ...evaluateChecks(workloads), ...translationChecks(translation), ...(state ? stateChecks(state) : []), ...(api ? apiChecks(api) : []), ...(sharing ? sharingChecks(sharing) : []),
      ...(overcommit ? overcommitChecks(overcommit) : []),
      ...(policies ? policyChecks(policies) : []),
      ...(migration ? migrationChecks(migration) : []),
      ...(ha ? haChecks(ha) : []),
      ...(parallel ? parallelChecks(parallel) : []),
      ...(io ? ioChecks(io) : []),
      ...(qemu ? qemuChecks(qemu) : []),
    ],
  };
}

function evaluateChecks(workloads: readonly WorkloadFigures[]): Check[] {
  const checks: Check[] = [];
  const crcPagingOn = workloads.find((w) => w.name === 'crc32')?.variants.find((v) => v.variant === PAGING_ON);
  if (crcPagingOn) {
    const target = TARGETS.crc32PagingOnMips;
    const load = workloads.find((w) => w.name === 'crc32')!.load;
    checks.push({ name: 'crc32 paging=on guest MIPS', target: `>= ${target}`, value: crcPagingOn.mips, cpuValue: crcPagingOn.cpuMips, pass: crcPagingOn.mips >= target, load });
  }
  for (const workload of workloads) {
    if (workload.pagingCost === null) continue;
    const target = TARGETS.maxPagingCost;
    checks.push({
      name: `${workload.name} paging cost`, target: `<= ${target * 100} %`, value: workload.pagingCost, ...(workload.pagingCostCpu === null ? {} : { cpuValue: workload.pagingCostCpu }),
      pass: workload.pagingCost <= target, load: workload.load,
    });
  }
  return checks;
}

// --- human output ------------------------------------------------------------------------------

const fixed = (value: number, digits: number): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const percent = (value: number): string => `${value >= 0 ? '+' : ''}${(value * 100).toFixed(1)} %`;
const millions = (value: number): string => `${(value / 1e6).toFixed(1)} M`;
const count = (value: number): string => value.toLocaleString('en-US');
const times = (value: number): string => (Number.isFinite(value) ? `${value.toFixed(1)}x` : 'all');

/** The first `textColumns` columns are left-aligned (names), the others right-aligned (numbers). */
function table(header: readonly string[], rows: readonly string[][], textColumns = 2): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  const line = (cells: readonly string[]): string =>
    cells.map((cell, column) => (column < textColumns ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

function formatTranslation(report: BenchReport): string[] {
  const { translation, method } = report;
  const out: string[] = [];
  out.push(`translation (issue 4): each guest under several MMU configurations, median of ${method.runs} timed runs; walks = vm.mmu.stats.walks`);
  out.push('');
  const rows: string[][] = [];
  for (const workload of translation.workloads) {
    for (const v of workload.variants) {
      rows.push([
        workload.name, v.variant, millions(v.instructions), fixed(v.medianMs, 1), fixed(v.cpuMs, 1), fixed(v.mips, 1), count(v.tlbMisses), count(v.mmu.walks),
        count(v.mmu.shadowHits), count(v.mmu.largeHits), count(v.mmu.translationsInvalidated),
      ]);
    }
  }
  out.push(table(['workload', 'variant', 'instructions', 'guest ms', 'CPU ms', 'guest MIPS', 'TLB misses', 'walks', 'shadow hits', 'large hits', 'TLB entries dropped'], rows));
  out.push('');
  for (const workload of translation.workloads) out.push(`${workload.name}: ${workload.description}`);
  const contextSwitch = translation.workloads.find((w) => w.name === 'context-switch');
  if (contextSwitch) {
    const first = contextSwitch.variants[0]!;
    const flushes = (v: VariantFigures): string => `${v.variant} ${count(v.mmu.flushesElided)} elided / ${count(v.mmu.flushesFull)} full, ${count(v.mmu.tlbFullFlushes)} TLB flushes`;
    out.push(`context-switch: ${count(first.guestStats['contextSwitches'] ?? 0)} context switches (${count(first.guestStats['preemptions'] ?? 0)} timer preemptions) per run`);
    out.push(`context-switch guest flushes: ${contextSwitch.variants.map(flushes).join('; ')}`);
  }
  out.push('');
  const comparisonRows = (list: readonly Comparison[]): string[][] =>
    list.map((c) => [
      c.workload, c.label, `${c.baseline.variant} → ${c.candidate.variant}`, `${count(c.baseline.walks)} → ${count(c.candidate.walks)}`, times(c.walkRatio),
      `${fixed(c.baseline.mips, 1)} → ${fixed(c.candidate.mips, 1)}`, `${c.mipsRatio.toFixed(2)}x`,
    ]);
  out.push(table(['workload', 'technique', 'off → on', 'walks', 'fewer walks', 'MIPS', 'speed'], comparisonRows(translation.techniques), 3));
  out.push('');
  out.push(table(['workload', 'guest pages', 'nested → shadow', 'walks', 'fewer walks', 'MIPS', 'speed'], comparisonRows(translation.shadowVsNested), 3));
  return out;
}

export function formatReport(report: BenchReport): string {
  const { machine, method } = report;
  const out: string[] = [];
  out.push(`bytevisor bench — ${machine.cpu}, ${machine.cores} cores, ${machine.platform}, node ${machine.node} (${machine.v8 === 'compiled at first call' ? 'V8 compiling every function at its first call, as the tools run' : 'Node\'s default V8 flags'}), ${machine.date.slice(0, 10)}`);
  out.push(`load average (1, 5, 15 min) ${machine.load.start.join(' ')} at the start, ${machine.load.end.join(' ')} at the end, on ${machine.cores} cores`);
  out.push(`median of ${method.runs} timed runs after ${method.warmups} warm-up run(s), variants and plain JS interleaved; CPU = process CPU time (user + system) of the same runs${method.quick ? ' (--quick: sizes too small to mean anything)' : ''}`);
  const rows: string[][] = [];
  for (const workload of report.workloads) {
    for (const v of workload.variants) {
      rows.push([
        workload.name, v.variant, millions(v.instructions), fixed(v.medianMs, 1), fixed(v.cpuMs, 1), fixed(v.mips, 1), fixed(workload.js.medianMs, 1), fixed(workload.js.cpuMs, 1),
        fixed(v.jsEquivalentMips, 0), `${fixed(v.ratio, 1)}x`, String(v.tlbMisses), String(v.pageWalks),
      ]);
    }
  }
  if (rows.length > 0) {
    out.push('');
    out.push(table(['workload', 'variant', 'instructions', 'guest ms', 'CPU ms', 'guest MIPS', 'JS ms', 'JS CPU ms', 'JS-equiv MIPS', 'guest/JS', 'TLB misses', 'page walks'], rows));
    out.push('');
    for (const workload of report.workloads) {
      if (workload.pagingCost !== null) out.push(`paging cost, ${workload.name}: ${percent(workload.pagingCost)} time per instruction (${workload.description})`);
    }
    for (const workload of report.workloads) {
      if (workload.jitSpeedup === null) continue;
      const jitOn = workload.variants.find((v) => v.variant === JIT_PAGING_ON)!;
      const s = jitOn.guestStats;
      out.push(
        `compiled tier, ${workload.name}: ${fixed(workload.jitSpeedup, 2)}x the interpreter with paging on (CPU ${fixed(workload.jitSpeedupCpu ?? NaN, 2)}x); ` +
          `paging cost ${workload.jitPagingCost === null ? '-' : percent(workload.jitPagingCost)} (CPU ${workload.jitPagingCostCpu === null ? '-' : percent(workload.jitPagingCostCpu)}); ` +
          `per run ${count(s['jitRegions'] ?? 0)} regions compiled in ${fixed(s['jitCompileMs'] ?? NaN, 1)} ms, ${fixed((s['jitCompiledShare'] ?? 0) * 100, 1)} % of instructions run compiled`,
      );
    }
  }
  if (report.warmup.length > 0) {
    out.push('');
    out.push(...formatWarmup(report.warmup));
  }
  if (report.translation.workloads.length > 0) {
    out.push('');
    out.push(...formatTranslation(report));
  }
  if (report.state) {
    out.push('');
    out.push(...formatState(report.state));
  }
  if (report.api) {
    out.push('');
    out.push(...formatApi(report.api));
  }
  if (report.errors) {
    out.push('');
    out.push(...formatErrors(report.errors));
  }
  if (report.migration) {
    out.push('');
    out.push(...formatMigration(report.migration));
  }
  if (report.ha) {
    out.push('');
    out.push(...formatHa(report.ha));
  }
  if (report.parallel) {
    out.push('');
    out.push(...formatParallel(report.parallel));
  }
  if (report.io) {
    out.push('');
    out.push(...formatIo(report.io));
  }
  if (report.sharing) {
    out.push('');
    out.push(...formatSharing(report.sharing));
  }
  if (report.overcommit) {
    out.push('');
    out.push(...formatOvercommit(report.overcommit));
  }
  if (report.policies) {
    out.push('');
    out.push(...formatPolicies(report.policies));
  }
  if (report.qemu) {
    out.push('');
    out.push(...formatQemu(report.qemu, table));
  }
  out.push('');
  const show = (check: Check, value: number): string =>
    check.name.endsWith('cost') ? percent(value) : Number.isInteger(value) ? String(value) : fixed(value, Math.abs(value) < 10 ? 3 : 1);
  for (const check of report.checks) {
    const cpu = check.cpuValue === undefined ? '' : `, CPU ${show(check, check.cpuValue)}`;
    // A missed target on a busy machine says so: the load when the figure was measured.
    const load = check.pass ? '' : `, load ${check.load.toFixed(2)} on ${machine.cores} cores`;
    out.push(`${check.pass ? 'PASS' : 'FAIL'}  ${check.name}: ${show(check, check.value)} (target ${check.target})${cpu}${load}`);
  }
  return out.join('\n');
}

// --- command line ------------------------------------------------------------------------------

async function main(args: readonly string[]): Promise<number> {
  const progressLine = process.stderr.isTTY === true;
  const clearProgress = (): void => {
    if (progressLine) process.stderr.write('\r\x1b[K');
  };
  try {
    const options = parseBenchArguments(args);
    if (options === 'help') {
      process.stdout.write(`${USAGE}\nworkloads: ${workloadNames()}\n`);
      return 0;
    }
    const report = await runBench(options, progressLine ? (step, total, label) => process.stderr.write(`\r\x1b[K[${step}/${total}] ${label} …`) : undefined);
    clearProgress();
    process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatReport(report)}\n`);
    return 0;
  } catch (error) {
    clearProgress();
    if (error instanceof BvError) {
      process.stderr.write(`error: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  // As bytevisor's tools run (kernel/v8-tuning.ts); the state section also measures Node's defaults.
  compileAtFirstCall();
  process.exitCode = await main(process.argv.slice(2));
}
