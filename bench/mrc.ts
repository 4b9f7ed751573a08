/**
 * Online miss-rate curves (services/memory/mrc.ts, issue 11 item 3; docs/mrc.md).
 *
 * - accuracy: each workload runs once, on a nanokernel VM, with several trackers watching the
 *   same run: one at rate 1 that keeps its reference trace (every page watched, the same quiet
 *   time: the run's complete page-reference trace under the definition of a reference in
 *   docs/mrc.md), and sampled ones (hash × rate × seed). The exact LRU curve of that trace is the
 *   reference; each sampled curve's mean absolute error (MAE) is taken over 100 memory sizes
 *   spread evenly from 1.25 % to 125 % of the trace's footprint. The rate-1 tracker's own curve
 *   must equal the exact one (else the bench stops with an error).
 * - slowdown: the same workloads without a tracker and with the default one (1 %, ticked after
 *   every slice), interleaved (the order alternates each round); the median of the per-round
 *   ratios of wall and of process CPU time, the vCPU TLB misses of each (deterministic: their
 *   difference is what the watches add) and the time spent in the tracker. Both runs must print
 *   the same console output and retire the same instruction count, or the bench stops with an
 *   error. Workloads not checked, or with their own quiet time, are not timed.
 * - sizing: from the default tracker's curve, the smallest memory within ε of its floor
 *   (sizeWithin); the exact curve says which miss ratio that memory really gets, against the
 *   VM's static allocation (its configured RAM) and the pages it touched.
 */
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { assembleFile } from '../guest-isa/assembler.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { attachStandardDevices, CaptureSink } from '../devices/index.ts';
import { createHypervisor, type Vm } from '../kernel/index.ts';
import { exactMissRateCurve, MissRateCurve, type ExactMissRateCurve, type MissRateCurveOptions, type MrcHash } from '../services/memory/index.ts';
import { BenchError, cpuSince, loadNow, median, type Check } from './harness.ts';

const MiB = 2 ** 20;
const PAGES_PER_MIB = 256;
const KERNEL_SOURCE = fileURLToPath(new URL('../examples/nanokernel/kernel.s', import.meta.url));

export interface MrcWorkload {
  name: string;
  bootArgs: string;
  memoryMiB: number;
  /** Quiet time of every tracker of the run (default MRC_QUIET, the tracker's default). */
  quiet?: number;
  /** Counted in the PASS/FAIL lines (false: shown for comparison only). */
  checked?: boolean;
}

/** The workloads: a sequential scan, random accesses within a working set (uniform, and hot/cold), and a phase change. */
export const MRC_WORKLOADS: Record<'full' | 'quick', readonly MrcWorkload[]> = {
  full: [
    { name: 'seq scan 64 MiB ×3', bootArgs: 'walker 64M seq 3', memoryMiB: 96 },
    { name: 'random 48 MiB', bootArgs: 'walker 48M random 3', memoryMiB: 96 },
    { name: 'hot 16 of 64 MiB (90 %)', bootArgs: 'walker 64M hot:16M:90 2', memoryMiB: 96 },
    { name: 'phase: seq 48 MiB, then random 8 MiB', bootArgs: 'walker 48M seq 2 walker 8M random 16', memoryMiB: 96 },
    { name: 'hot 64 of 256 MiB (90 %)', bootArgs: 'walker 256M hot:64M:90 1', memoryMiB: 320, checked: false },
    { name: 'seq scan 64 MiB ×3, quiet 1M', bootArgs: 'walker 64M seq 3', memoryMiB: 96, quiet: 1_000_000, checked: false },
  ],
  quick: [
    { name: 'seq scan 8 MiB ×3', bootArgs: 'walker 8M seq 3', memoryMiB: 32 },
    { name: 'random 8 MiB', bootArgs: 'walker 8M random 2', memoryMiB: 32 },
    { name: 'phase: seq 8 MiB, then random 2 MiB', bootArgs: 'walker 8M seq 1 walker 2M random 8', memoryMiB: 32 },
  ],
};

/** Sampled trackers watching each accuracy run (at most 7: the kernel allows 8 watchers per VM, one is the rate-1 recorder). */
export const MRC_SAMPLERS: readonly { hash: MrcHash; rate: number; seed: number }[] = [
  { hash: 'golden', rate: 0.01, seed: 0 },
  { hash: 'golden', rate: 0.01, seed: 1 },
  { hash: 'golden', rate: 0.01, seed: 2 },
  { hash: 'golden', rate: 0.001, seed: 0 },
  { hash: 'mix', rate: 0.01, seed: 0 },
  { hash: 'mix', rate: 0.01, seed: 1 },
  { hash: 'mix', rate: 0.01, seed: 2 },
];

/** Instructions per slice; every tracker ticks after each. */
export const MRC_SLICE = 200_000;
/** The quiet time (the tracker's default). */
export const MRC_QUIET = 200_000;
/** The sizing target: within this of the curve's floor. */
export const MRC_SIZING_EPSILON = 0.05;
/** Tolerance when checking the sized memory against the exact curve. */
const SIZING_TOLERANCE = 0.01;
const MAE_TARGET = 0.01;
/**
 * Timed pairs (plain, sampled) per workload for the slowdown, after one warm-up pair. The cost
 * is 2-4.5 % of CPU; on these shared machines a 0.2-0.5 s run's speed moves by up to 2× from pair
 * to pair, and the median of 7 or 15 pairs still swung by ±3-5 points (docs/mrc.md).
 */
const MRC_SLOWDOWN_PAIRS = 31;
const SLOWDOWN_TARGET_PCT = 5;

export interface MrcAccuracyRow {
  workload: string;
  checked: boolean;
  quiet: number;
  instructions: number;
  references: number;
  footprint_pages: number;
  exact_floor: number;
  hash: MrcHash;
  rate: number;
  seed: number;
  sampled_pages: number;
  sampled_references: number;
  mae: number;
  max_error: number;
  /** Pages in the tracker's hot stratum at the end, and censuses run (docs/mrc.md#hot-pages-the-census-and-the-hot-stratum). */
  hot_pages: number;
  censuses: number;
  /** Activity windows run (docs/mrc.md#post-stratification-by-activity; 0: no activity census). */
  activity_windows: number;
}

export interface MrcSlowdownRow {
  workload: string;
  instructions: number;
  plain_wall_ms: number;
  sampled_wall_ms: number;
  wall_pct: number;
  plain_cpu_ms: number;
  sampled_cpu_ms: number;
  cpu_pct: number;
  runs: number;
  load: number;
  /** vCPU TLB misses (slow-path entries) of the whole run: deterministic, so their difference is the tracker's. */
  plain_tlb_misses: number;
  sampled_tlb_misses: number;
  /** Median over the sampled runs of the wall time spent in tick() (construction included). */
  tracker_ms: number;
}

export interface MrcSizingRow {
  workload: string;
  static_mib: number;
  touched_mib: number;
  exact_floor: number;
  target_miss_ratio: number;
  sized_mib: number;
  exact_miss_ratio_at_sized: number;
  ok: boolean;
}

export interface MrcFigures {
  accuracy: MrcAccuracyRow[];
  slowdown: MrcSlowdownRow[];
  sizing: MrcSizingRow[];
}

export interface MrcBenchOptions {
  quick?: boolean;
  /**
   * Options for every sampled tracker (accuracy and slowdown), e.g. { hotPages: 0 } for the
   * tracker without its hot stratum, { activityRate: 0 } without its activity census.
   */
  tracker?: Pick<MissRateCurveOptions, 'hotPages' | 'censusInstructions' | 'activityRate' | 'activityInstructions'>;
  /** Skip the slowdown runs (accuracy and sizing only). */
  skipSlowdown?: boolean;
  /** Only the workloads whose name starts with this (all when absent). */
  only?: string;
  onStep?: (label: string) => void;
}

let kernelImage: GuestImage | null = null;
function image(): GuestImage {
  kernelImage ??= assembleFile(KERNEL_SOURCE).image;
  return kernelImage;
}

function boot(workload: MrcWorkload): { vm: Vm; output: CaptureSink; run: (maxInstructions: number) => string } {
  const hv = createHypervisor({ hostMemoryBytes: (workload.memoryMiB + 16) * MiB });
  const vm = hv.createVm({ memoryBytes: workload.memoryMiB * MiB, name: 'mrc' });
  vm.loadImage(image());
  const output = new CaptureSink();
  attachStandardDevices(vm, { output, bootArgs: workload.bootArgs });
  return { vm, output, run: (maxInstructions) => hv.run({ maxInstructions }, [vm])[0]!.reason.kind };
}

/** Runs a workload to power-off in slices, calling `between` after each. */
function runToEnd(workload: MrcWorkload, setUp: (vm: Vm) => () => void): { vm: Vm; text: string; instructions: number; tlbMisses: number } {
  const { vm, output, run } = boot(workload);
  const between = setUp(vm);
  for (let slices = 0; ; slices++) {
    const kind = run(MRC_SLICE);
    between();
    if (kind === 'halted') break;
    if (kind !== 'budget' && kind !== 'idle') throw new BenchError('BV_BENCH', `${workload.name}: the guest stopped (${kind})`);
    if (slices > 100_000) throw new BenchError('BV_BENCH', `${workload.name}: did not finish`);
  }
  const text = output.text();
  if (!/all programs finished: \d+ started, \d+ exited, 0 killed/.test(text)) throw new BenchError('BV_BENCH', `${workload.name}: the programs did not all finish:\n${text}`);
  return { vm, text, instructions: vm.instructionsRetired, tlbMisses: vm.vcpus.reduce((sum, vcpu) => sum + vcpu.stats.tlbMisses, 0) };
}

/** The sizes errors are taken at: 100 sizes from 1.25 % to 125 % of the footprint. */
function errorGrid(footprint: number): number[] {
  return Array.from({ length: 100 }, (_, i) => (footprint * 1.25 * (i + 1)) / 100);
}

function errors(exact: ExactMissRateCurve, tracker: MissRateCurve): { mae: number; max: number } {
  let sum = 0;
  let max = 0;
  const grid = errorGrid(exact.footprint);
  for (const size of grid) {
    const error = Math.abs(exact.missRatioAt(size) - tracker.missRatioAt(size));
    sum += error;
    max = Math.max(max, error);
  }
  return { mae: sum / grid.length, max };
}

const r4 = (x: number): number => Math.round(x * 1e4) / 1e4;
const r1 = (x: number): number => Math.round(x * 10) / 10;

function measureAccuracy(workload: MrcWorkload, rows: MrcAccuracyRow[], sizing: MrcSizingRow[], extra: MissRateCurveOptions = {}): void {
  let recorder: MissRateCurve | null = null;
  const sampled: MissRateCurve[] = [];
  const { instructions } = runToEnd(workload, (vm) => {
    const quiet = workload.quiet ?? MRC_QUIET;
    recorder = new MissRateCurve(vm, { rate: 1, quietInstructions: quiet, agingInstructions: 0, keepTrace: true });
    for (const s of MRC_SAMPLERS) sampled.push(new MissRateCurve(vm, { ...extra, ...s, quietInstructions: quiet, agingInstructions: 0 }));
    const all = [recorder, ...sampled];
    return () => { for (const tracker of all) tracker.tick(); };
  });
  const full = recorder! as MissRateCurve;
  const exact = exactMissRateCurve(full.trace());
  // The rate-1 tracker and the exact computation must agree.
  const self = errors(exact, full);
  if (self.max > 1e-9) throw new BenchError('BV_BENCH', `${workload.name}: the rate-1 tracker's curve differs from the exact curve (max ${self.max})`);
  for (let i = 0; i < sampled.length; i++) {
    const tracker = sampled[i]!;
    const { mae, max } = errors(exact, tracker);
    rows.push({
      workload: workload.name, checked: workload.checked ?? true, quiet: tracker.quietInstructions, instructions, references: exact.references, footprint_pages: exact.footprint, exact_floor: r4(exact.cold / exact.references),
      hash: tracker.hash, rate: tracker.rate, seed: tracker.seed, sampled_pages: tracker.sampledPages, sampled_references: tracker.curve().sampled_references,
      mae: r4(mae), max_error: r4(max), hot_pages: tracker.hotPages, censuses: tracker.censuses, activity_windows: tracker.activityWindows,
    });
  }
  // Sizing from the default tracker (the first sampler: the defaults' hash and rate, seed 0).
  if (workload.checked === false) {
    for (const tracker of [full, ...sampled]) tracker.dispose();
    return;
  }
  const chosen = sampled[0]!;
  const target = chosen.floor + MRC_SIZING_EPSILON;
  const sized = chosen.sizeWithin(MRC_SIZING_EPSILON);
  const actual = exact.missRatioAt(sized);
  sizing.push({
    workload: workload.name, static_mib: workload.memoryMiB, touched_mib: r1(exact.footprint / PAGES_PER_MIB), exact_floor: r4(exact.cold / exact.references),
    target_miss_ratio: r4(target), sized_mib: r1(sized / PAGES_PER_MIB), exact_miss_ratio_at_sized: r4(actual),
    ok: sized < workload.memoryMiB * PAGES_PER_MIB && actual <= target + SIZING_TOLERANCE,
  });
  for (const tracker of [full, ...sampled]) tracker.dispose();
}

/** Plain and sampled runs of a workload, interleaved (the order alternates each round); medians of per-round ratios. */
export function measureMrcSlowdown(workload: MrcWorkload, runs: number, warmups: number, extra: MissRateCurveOptions = {}): MrcSlowdownRow {
  const wall: Record<'plain' | 'sampled', number[]> = { plain: [], sampled: [] };
  const cpu: Record<'plain' | 'sampled', number[]> = { plain: [], sampled: [] };
  // Per round, sampled ÷ plain of the same round (the load changes slowly; a pair shares it).
  const wallRatios: number[] = [];
  const cpuRatios: number[] = [];
  const trackerMs: number[] = [];
  const misses = { plain: 0, sampled: 0 };
  let reference: { text: string; instructions: number } | null = null;
  for (let round = 0; round < warmups + runs; round++) {
    const order: ('plain' | 'sampled')[] = round % 2 === 0 ? ['plain', 'sampled'] : ['sampled', 'plain'];
    for (const variant of order) {
      const cpuStart = process.cpuUsage();
      const start = performance.now();
      let inTracker = 0;
      const result = runToEnd(workload, (vm) => {
        if (variant === 'plain') return () => {};
        const made = performance.now();
        const tracker = new MissRateCurve(vm, extra);
        inTracker += performance.now() - made;
        return () => {
          const at = performance.now();
          tracker.tick();
          inTracker += performance.now() - at;
        };
      });
      const ms = performance.now() - start;
      const cpuMs = cpuSince(cpuStart);
      reference ??= result;
      if (result.text !== reference.text || result.instructions !== reference.instructions) {
        throw new BenchError('BV_BENCH', `${workload.name}: the ${variant} run computed something else (${result.instructions} vs ${reference.instructions} instructions)`);
      }
      misses[variant] = result.tlbMisses;
      if (round >= warmups) {
        wall[variant].push(ms);
        cpu[variant].push(cpuMs);
        if (variant === 'sampled') trackerMs.push(inTracker);
      }
    }
    if (round >= warmups) {
      const i = round - warmups;
      wallRatios.push(wall.sampled[i]! / wall.plain[i]!);
      cpuRatios.push(cpu.sampled[i]! / cpu.plain[i]!);
    }
  }
  const pw = median(wall.plain);
  const sw = median(wall.sampled);
  const pc = median(cpu.plain);
  const sc = median(cpu.sampled);
  return {
    workload: workload.name, instructions: reference!.instructions, plain_wall_ms: r1(pw), sampled_wall_ms: r1(sw), wall_pct: r1((median(wallRatios) - 1) * 100),
    plain_cpu_ms: r1(pc), sampled_cpu_ms: r1(sc), cpu_pct: r1((median(cpuRatios) - 1) * 100), runs, load: loadNow(),
    plain_tlb_misses: misses.plain, sampled_tlb_misses: misses.sampled, tracker_ms: r1(median(trackerMs)),
  };
}

/** Runs the three measurements. */
export function measureMrc(options: MrcBenchOptions = {}): MrcFigures {
  const all = options.quick ? MRC_WORKLOADS.quick : MRC_WORKLOADS.full;
  const workloads = options.only === undefined ? all : all.filter((w) => w.name.startsWith(options.only!));
  if (workloads.length === 0) throw new BenchError('BV_BENCH', `no MRC workload's name starts with '${options.only}' (${all.map((w) => w.name).join('; ')})`);
  const accuracy: MrcAccuracyRow[] = [];
  const sizing: MrcSizingRow[] = [];
  for (const workload of workloads) {
    options.onStep?.(`accuracy: ${workload.name}`);
    measureAccuracy(workload, accuracy, sizing, options.tracker);
  }
  const slowdown: MrcSlowdownRow[] = [];
  for (const workload of workloads) {
    if (options.skipSlowdown) break;
    if (workload.quiet !== undefined || workload.checked === false) continue;
    options.onStep?.(`slowdown: ${workload.name}`);
    slowdown.push(options.quick ? measureMrcSlowdown(workload, 1, 0, options.tracker) : measureMrcSlowdown(workload, MRC_SLOWDOWN_PAIRS, 1, options.tracker));
  }
  return { accuracy, slowdown, sizing };
}

/** The PASS/FAIL checks: MAE at 1 % sampling (default hash, every seed) per workload; slowdown; sizing. */
export function mrcChecks(figures: MrcFigures): Check[] {
  const checks: Check[] = [];
  const load = loadNow();
  const workloads = [...new Set(figures.accuracy.filter((row) => row.checked).map((row) => row.workload))];
  const defaults = figures.accuracy.filter((row) => row.checked && row.hash === 'golden' && row.rate === 0.01);
  const worstOf = (workload: string): number => Math.max(...defaults.filter((row) => row.workload === workload).map((row) => row.mae));
  // The issue asks for at least three workloads; every checked one is shown, and the worst of all.
  const meeting = workloads.filter((workload) => worstOf(workload) <= MAE_TARGET);
  const worst = Math.max(...defaults.map((row) => row.mae));
  checks.push({
    name: `MRC accuracy: workloads (of ${workloads.length}) with MAE ≤ ${MAE_TARGET} at 1 % sampling on every seed (golden hash, seeds 0-2); worst of all ${worst}${meeting.length < workloads.length ? `, not met by: ${workloads.filter((w) => !meeting.includes(w)).join('; ')}` : ''}`,
    target: '≥ 3', value: meeting.length, pass: meeting.length >= 3, load,
  });
  if (figures.slowdown.length > 0) {
    const wallWorst = Math.max(...figures.slowdown.map((row) => row.wall_pct));
    const cpuWorst = Math.max(...figures.slowdown.map((row) => row.cpu_pct));
    checks.push({
      name: 'MRC guest slowdown with sampling on (1 %), worst workload, median of per-round ratios, wall and CPU both, %', target: `≤ ${SLOWDOWN_TARGET_PCT}`,
      value: wallWorst, cpuValue: cpuWorst, pass: wallWorst <= SLOWDOWN_TARGET_PCT && cpuWorst <= SLOWDOWN_TARGET_PCT, load,
    });
  }
  const saved = figures.sizing.map((row) => row.static_mib - row.sized_mib);
  checks.push({
    name: `Sizing from the MRC: within ${MRC_SIZING_EPSILON} of the floor, reached (exact curve, +${SIZING_TOLERANCE}) with less than the static allocation, on every workload; least MiB saved`,
    target: '> 0', value: r1(Math.min(...saved)), pass: figures.sizing.every((row) => row.ok), load,
  });
  return checks;
}

function table(columns: string[], rows: (string | number)[][]): string[] {
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((row) => String(row[i]).length)));
  const line = (cells: (string | number)[]): string => `| ${cells.map((cell, i) => String(cell).padEnd(widths[i]!)).join(' | ')} |`;
  return [line(columns), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)];
}

/** Markdown tables and the PASS/FAIL lines. */
export function formatMrc(figures: MrcFigures): string[] {
  const lines: string[] = ['### MRC accuracy (MAE against the exact curve of the same run)', ''];
  lines.push(...table(
    ['workload', 'quiet', 'instructions', 'references', 'footprint pages', 'floor', 'hash', 'rate', 'seed', 'sampled pages', 'sampled refs', 'hot pages', 'censuses', 'activity windows', 'MAE', 'max error'],
    figures.accuracy.map((r) => [r.workload + (r.checked ? '' : ' (not checked)'), r.quiet, r.instructions, r.references, r.footprint_pages, r.exact_floor, r.hash, r.rate, r.seed, r.sampled_pages, r.sampled_references, r.hot_pages, r.censuses, r.activity_windows, r.mae, r.max_error]),
  ));
  lines.push('', '### MAE summary: mean and worst over seeds, per workload', '');
  const keys = [...new Set(figures.accuracy.map((r) => `${r.workload}\u0000${r.hash}\u0000${r.rate}`))];
  lines.push(...table(['workload', 'hash', 'rate', 'seeds', 'mean MAE', 'worst MAE'], keys.map((key) => {
    const rows = figures.accuracy.filter((r) => `${r.workload}\u0000${r.hash}\u0000${r.rate}` === key);
    const maes = rows.map((r) => r.mae);
    return [rows[0]!.workload, rows[0]!.hash, rows[0]!.rate, rows.length, r4(maes.reduce((a, b) => a + b, 0) / maes.length), Math.max(...maes)];
  })));
  lines.push('', '### Guest slowdown with the default tracker (1 %, golden), interleaved runs, medians', '');
  lines.push(...table(
    ['workload', 'instructions', 'plain wall ms', 'sampled wall ms', 'wall % (paired median)', 'plain CPU ms', 'sampled CPU ms', 'CPU % (paired median)', 'runs', 'load', 'TLB misses plain', 'TLB misses sampled', 'in tracker ms'],
    figures.slowdown.map((r) => [r.workload, r.instructions, r.plain_wall_ms, r.sampled_wall_ms, r.wall_pct, r.plain_cpu_ms, r.sampled_cpu_ms, r.cpu_pct, r.runs, r.load, r.plain_tlb_misses, r.sampled_tlb_misses, r.tracker_ms]),
  ));
  lines.push('', `### Sizing from the curve (smallest memory within ${MRC_SIZING_EPSILON} of the floor)`, '');
  lines.push(...table(
    ['workload', 'static MiB', 'touched MiB', 'exact floor', 'target', 'sized MiB', 'exact miss ratio there', 'ok'],
    figures.sizing.map((r) => [r.workload, r.static_mib, r.touched_mib, r.exact_floor, r.target_miss_ratio, r.sized_mib, r.exact_miss_ratio_at_sized, r.ok ? 'yes' : 'no']),
  ));
  lines.push('');
  for (const check of mrcChecks(figures)) {
    lines.push(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value}${check.cpuValue !== undefined ? ` (CPU ${check.cpuValue})` : ''} (target ${check.target}; load ${check.load})`);
  }
  return lines;
}
