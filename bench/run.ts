/**
 * bench — guest execution speed against plain JavaScript, measured in the same run.
 *
 *   npm run bench [-- --json] [-- --quick] [-- --only <workload>[,<workload>…]]
 *
 * Runs every workload of bench/workloads.ts with paging off and on, and the same algorithm in
 * plain JS; prints guest MIPS, the plain-JS "guest-equivalent" MIPS (the guest's instruction
 * count ÷ the JS time), their ratio, TLB misses and page walks, and the PASS/FAIL lines of the
 * project's targets. `--json` prints the same figures as one JSON object and nothing else on
 * stdout. `--quick` makes small, few runs (for the smoke test; its figures mean nothing).
 * Progress goes to stderr when it is a terminal. The bench is not a test: a missed target is a
 * FAIL line, not an exit code; a wrong guest result or bad usage is an error (exit 1).
 * Method and figures: docs/performance.md.
 */
import { cpus, arch, platform, totalmem } from 'node:os';
import { pathToFileURL } from 'node:url';
import { BvError } from '../guest-isa/errors.ts';
import { createHypervisor } from '../kernel/index.ts';
import { BenchError, measureWorkload, PAGING_ON, stepCount } from './harness.ts';
import type { WorkloadFigures } from './harness.ts';
import { WORKLOADS } from './workloads.ts';

const USAGE = 'usage: npm run bench -- [--json] [--quick] [--only <workload>[,<workload>...]]';

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
/** Enough for the largest workload VM (24 MiB) with room to spare; one VM exists at a time. */
const HOST_MEMORY_BYTES = 64 * 2 ** 20;

export interface BenchOptions {
  json: boolean;
  quick: boolean;
  /** Workload names to run (all when empty). */
  only: string[];
}

export interface Check {
  name: string;
  target: string;
  value: number;
  pass: boolean;
}

export interface BenchReport {
  machine: { cpu: string; cores: number; memoryGiB: number; platform: string; node: string; date: string };
  method: { warmups: number; runs: number; quick: boolean; statistic: 'median' };
  workloads: WorkloadFigures[];
  checks: Check[];
}

export function parseBenchArguments(args: readonly string[]): BenchOptions | 'help' {
  const options: BenchOptions = { json: false, quick: false, only: [] };
  for (let index = 0; index < args.length; index++) {
    const arg = args[index]!;
    if (arg === '--json') options.json = true;
    else if (arg === '--quick') options.quick = true;
    else if (arg === '--help' || arg === '-h') return 'help';
    else if (arg === '--only' || arg.startsWith('--only=')) {
      const value = arg === '--only' ? args[++index] : arg.slice('--only='.length);
      if (!value) throw new BenchError('BV_BENCH_USAGE', `--only needs a workload name (${workloadNames()})`);
      for (const name of value.split(',')) {
        if (!WORKLOADS.some((w) => w.name === name)) throw new BenchError('BV_BENCH_USAGE', `unknown workload '${name}' (known: ${workloadNames()})`);
        options.only.push(name);
      }
    } else throw new BenchError('BV_BENCH_USAGE', `unknown option '${arg}'; ${USAGE}`);
  }
  return options;
}

const workloadNames = (): string => WORKLOADS.map((w) => w.name).join(', ');

/** Runs the selected workloads on one hypervisor; `onProgress` sees each step before it runs. */
export function runBench(options: BenchOptions, onProgress?: (step: number, total: number, label: string) => void): BenchReport {
  const counts = options.quick ? QUICK_RUNS : FULL_RUNS;
  const selected = options.only.length === 0 ? WORKLOADS : WORKLOADS.filter((w) => options.only.includes(w.name));
  const total = selected.reduce((sum, w) => sum + stepCount(w, counts), 0);
  const hv = createHypervisor({ hostMemoryBytes: HOST_MEMORY_BYTES });
  let step = 0;
  const workloads = selected.map((workload) =>
    measureWorkload(hv, workload, { ...counts, size: { quick: options.quick }, onStep: (label) => onProgress?.(++step, total, label) }),
  );
  const cpuList = cpus();
  return {
    machine: {
      cpu: cpuList[0]?.model ?? 'unknown',
      cores: cpuList.length,
      memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
      platform: `${platform()} ${arch()}`,
      node: process.version,
      date: new Date().toISOString(),
    },
    method: { ...counts, quick: options.quick, statistic: 'median' },
    workloads,
    checks: evaluateChecks(workloads),
  };
}

function evaluateChecks(workloads: readonly WorkloadFigures[]): Check[] {
  const checks: Check[] = [];
  const crcPagingOn = workloads.find((w) => w.name === 'crc32')?.variants.find((v) => v.variant === PAGING_ON);
  if (crcPagingOn) {
    const target = TARGETS.crc32PagingOnMips;
    checks.push({ name: 'crc32 paging=on guest MIPS', target: `>= ${target}`, value: crcPagingOn.mips, pass: crcPagingOn.mips >= target });
  }
  for (const workload of workloads) {
    if (workload.pagingCost === null) continue;
    const target = TARGETS.maxPagingCost;
    checks.push({ name: `${workload.name} paging cost`, target: `<= ${target * 100} %`, value: workload.pagingCost, pass: workload.pagingCost <= target });
  }
  return checks;
}

// --- human output ------------------------------------------------------------------------------

const fixed = (value: number, digits: number): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const percent = (value: number): string => `${value >= 0 ? '+' : ''}${(value * 100).toFixed(1)} %`;
const millions = (value: number): string => `${(value / 1e6).toFixed(1)} M`;

function table(header: readonly string[], rows: readonly string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  // First column left-aligned (names), the others right-aligned (numbers).
  const line = (cells: readonly string[]): string =>
    cells.map((cell, column) => (column < 2 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

export function formatReport(report: BenchReport): string {
  const { machine, method } = report;
  const out: string[] = [];
  out.push(`bytevisor bench — ${machine.cpu}, ${machine.cores} cores, ${machine.platform}, node ${machine.node}, ${machine.date.slice(0, 10)}`);
  out.push(`median of ${method.runs} timed runs after ${method.warmups} warm-up run(s), paging off/on and plain JS interleaved${method.quick ? ' (--quick: sizes too small to mean anything)' : ''}`);
  out.push('');
  const rows: string[][] = [];
  for (const workload of report.workloads) {
    for (const v of workload.variants) {
      rows.push([workload.name, v.variant, millions(v.instructions), fixed(v.medianMs, 1), fixed(v.mips, 1), fixed(workload.js.medianMs, 1), fixed(v.jsEquivalentMips, 0), `${fixed(v.ratio, 1)}x`, String(v.tlbMisses), String(v.pageWalks)]);
    }
  }
  out.push(table(['workload', 'variant', 'instructions', 'guest ms', 'guest MIPS', 'JS ms', 'JS-equiv MIPS', 'guest/JS', 'TLB misses', 'page walks'], rows));
  out.push('');
  for (const workload of report.workloads) {
    if (workload.pagingCost !== null) out.push(`paging cost, ${workload.name}: ${percent(workload.pagingCost)} time per instruction (${workload.description})`);
  }
  out.push('');
  for (const check of report.checks) {
    const value = check.name.endsWith('cost') ? percent(check.value) : fixed(check.value, 1);
    out.push(`${check.pass ? 'PASS' : 'FAIL'}  ${check.name}: ${value} (target ${check.target})`);
  }
  return out.join('\n');
}

// --- command line ------------------------------------------------------------------------------

function main(args: readonly string[]): number {
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
    const report = runBench(options, progressLine ? (step, total, label) => process.stderr.write(`\r\x1b[K[${step}/${total}] ${label} …`) : undefined);
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
  process.exitCode = main(process.argv.slice(2));
}
