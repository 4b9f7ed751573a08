/**
 * Active-memory accuracy (services/memory/active.ts, issue 11 item 1): guests with known working
 * sets, the sampler's estimate against the truth, and the guest slowdown with sampling on.
 *
 * - The truth is measured, not assumed: an oracle arms an access watch of its own on *every*
 *   guest page at the start of each of the sampler's periods and counts the pages touched before
 *   the period closes — the walker's region, and also whatever the guest kernel, the user image,
 *   stacks and page tables touch. The sampler's f is a sample of the same population over the
 *   same interval.
 * - Steady state: nanokernel walkers looping over 10 %, 50 % and 90 % of guest memory (random
 *   pattern: every page of the region is touched many times per period); the estimate after the
 *   warm-up periods must stay within ±10 percentage points of the truth of the same period.
 * - A change: a bare-metal guest whose working set the host sets between runs (a control word it
 *   reads before every pass) goes 10 % → 90 % → 10 %; how many periods the estimate takes to come
 *   within 10 points of the new truth, up (the fast average) and down (the slow one).
 * - Slowdown: a nanokernel walker from boot to power-off with a sampler (driven by a VM ticker)
 *   at the default rate and at 100 times it, against the same run without, interleaved (the
 *   order alternates each round), medians of wall and process CPU time. Every run must print the
 *   same walker line and retire the same instructions, or the bench stops with an error.
 */
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { assemble, assembleFile } from '../guest-isa/assembler.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { Hcall, Reg } from '../guest-isa/arch.ts';
import { attachStandardDevices, CaptureSink } from '../devices/index.ts';
import { createHypervisor, type Hypervisor, type Vm, type VmConfig } from '../kernel/index.ts';
import { ActiveMemorySampler, ACTIVE_PAGES_PER_PERIOD, ACTIVE_PERIOD_INSTRUCTIONS, type ActiveMemoryOptions } from '../services/memory/index.ts';
import { BenchError, cpuSince, loadNow, median } from './harness.ts';

const MiB = 2 ** 20;
const PAGE = 4096;
const KERNEL_SOURCE = fileURLToPath(new URL('../examples/nanokernel/kernel.s', import.meta.url));
let kernelImage: GuestImage | null = null;

/** The nanokernel image (assembled once). */
export function nanokernelImage(): GuestImage {
  kernelImage ??= assembleFile(KERNEL_SOURCE).image;
  return kernelImage;
}

// --- guests --------------------------------------------------------------------------------------

/** A nanokernel VM with the standard devices, running `bootArgs` (`config`: MMU mode, large pages…). */
export function bootNanokernel(hv: Hypervisor, name: string, memoryBytes: number, bootArgs: string, config: Partial<VmConfig> = {}): { vm: Vm; output: CaptureSink } {
  const vm = hv.createVm({ ...config, memoryBytes, name });
  vm.loadImage(nanokernelImage());
  const output = new CaptureSink();
  attachStandardDevices(vm, { output, bootArgs });
  return { vm, output };
}

/** Bytes of a walker region over `fraction` of `memoryBytes`, a whole number of pages. */
export function walkerBytes(memoryBytes: number, fraction: number): number {
  return Math.floor((memoryBytes * fraction) / PAGE) * PAGE;
}

/** Where the phase guest's control word and region live (guest-physical; paging off). */
const PHASE_CONTROL = 0x1_0000;
const PHASE_BASE = 0x2_0000;

/**
 * A bare-metal guest (paging off) that loops for ever: read the page count N from a control
 * word, then read and increment one word in each of the N pages from PHASE_BASE. The host sets
 * N between runs (`setPages`): a working set that changes exactly when the host says. The truth
 * is N pages plus its code page and the control page.
 */
export interface PhaseGuest {
  vm: Vm;
  /** Pages the loop touches besides its region (code and control pages). */
  readonly overheadPages: number;
  /** Most pages the region can have. */
  readonly maxPages: number;
  setPages(pages: number): void;
}

export function bootPhaseGuest(hv: Hypervisor, name: string, memoryBytes: number): PhaseGuest {
  const vm = hv.createVm({ memoryBytes, name });
  const { image } = assemble(`
_start: li      s0, ${PHASE_CONTROL}
        li      s1, ${PHASE_BASE}
        li      s2, ${PAGE}
again:  lw      t0, 0(s0)               # pages to touch this pass
        mv      t1, s1
        beqz    t0, again
1:      lw      t2, 0(t1)
        addi    t2, t2, 1
        sw      t2, 0(t1)
        add     t1, t1, s2
        addi    t0, t0, -1
        bnez    t0, 1b
        j       again
`, { fileName: 'phase.s' });
  vm.loadImage(image);
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
  const maxPages = vm.memory.pageCount - PHASE_BASE / PAGE;
  return {
    vm,
    overheadPages: 2,
    maxPages,
    setPages(pages: number) {
      if (!Number.isInteger(pages) || pages < 0 || pages > maxPages) throw new BenchError('BV_BENCH_BAD_OPTION', `phase guest: ${pages} pages do not fit (at most ${maxPages})`);
      vm.writePhysical(PHASE_CONTROL, new Uint8Array(new Uint32Array([pages]).buffer));
    },
  };
}

// --- the truth -----------------------------------------------------------------------------------

/**
 * Every guest page watched: `start()` arms all of them, `touched()` counts those the guest has
 * accessed since. Its watcher is separate from the sampler's (the kernel keeps one bit per
 * watcher), so the two never disturb each other.
 */
export class PageOracle {
  private readonly id: number;
  private count = 0;
  private readonly all: Int32Array;
  constructor(readonly vm: Vm) {
    this.id = vm.memory.addAccessWatcher(() => {
      this.count++;
    });
    this.all = Int32Array.from({ length: vm.memory.pageCount }, (_, gpn) => gpn);
  }

  /** Starts a new interval: every page armed, the count at 0. */
  start(): void {
    this.vm.memory.disarmAccessWatch(this.id, this.all);
    this.count = 0;
    this.vm.memory.armAccessWatch(this.id, this.all);
  }

  /** Pages touched since start(). */
  touched(): number {
    return this.count;
  }

  dispose(): void {
    this.vm.memory.removeAccessWatcher(this.id);
  }
}

/** One closed period: the sampler's figures and the truth of the same interval. */
export interface PeriodRow {
  period: number;
  /** Pages the oracle saw touched / guest pages. */
  truth: number;
  /** The sampler's raw sample, its averages and its estimate after this period. */
  f: number;
  fast: number;
  slow: number;
  estimate: number;
}

/**
 * Runs `vm` in steps of `stepInstructions`, ticking the sampler after each, until `periods` more
 * periods have closed; the oracle restarts with every period. `beforeStep` may change the guest
 * (the phase guest's page count). Throws when the VM stops.
 */
export function followPeriods(
  hv: Hypervisor,
  sampler: ActiveMemorySampler,
  oracle: PageOracle,
  periods: number,
  stepInstructions: number,
  beforeStep?: (period: number) => void,
): PeriodRow[] {
  const rows: PeriodRow[] = [];
  const vm = sampler.vm;
  while (rows.length < periods) {
    beforeStep?.(sampler.periods + 1);
    const [result] = hv.run({ maxInstructions: stepInstructions }, [vm]);
    if (result!.reason.kind !== 'budget') throw new BenchError('BV_BENCH_GUEST_FAILED', `${vm.name} stopped: ${JSON.stringify(result!.reason)}`);
    const sample = sampler.tick();
    if (sample === null) continue;
    const { fast, slow } = sampler.averages;
    rows.push({ period: sample.period, truth: oracle.touched() / vm.memory.pageCount, f: sample.f, fast: fast!, slow: slow!, estimate: sampler.estimate });
    oracle.start();
  }
  return rows;
}

/**
 * Periods from row `from` (the first period after a change: 1 if the estimate is within `band` of
 * `level`, the new working set, at its end) until the estimate is within `band` of `level`; null
 * if never.
 */
export function periodsToFollow(rows: readonly PeriodRow[], from: number, level: number, band = 0.1): number | null {
  for (let i = from; i < rows.length; i++) if (Math.abs(rows[i]!.estimate - level) <= band) return i - from + 1;
  return null;
}

// --- the experiment ------------------------------------------------------------------------------

export interface ActiveMemoryExperimentOptions {
  /** Smaller guests, fewer periods, one slowdown round. */
  quick?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** A steady-state row: one nanokernel walker over a fraction of memory. */
export interface AccuracyRow {
  workload: string;
  /** The walker's region / guest pages. */
  nominal: number;
  /** Mean truth over the measured periods (the oracle; kernel and page tables included). */
  truth: number;
  /** Mean estimate over the measured periods. */
  estimate: number;
  /** Largest |estimate − truth| over the measured periods, and the largest |f − truth|. */
  maxError: number;
  maxRawError: number;
  periods: number;
  pass: boolean;
}

/** The change row: the phase guest 10 % → 90 % → 10 %. */
export interface ChangeRow {
  low: number;
  high: number;
  /** Periods until within ±10 points after the step up, and after the step down. */
  periodsUp: number | null;
  periodsDown: number | null;
  /** Largest error in the last periods of each phase (steady). */
  maxSteadyError: number;
  rows: PeriodRow[];
}

export interface SlowdownRow {
  label: string;
  pagesPerPeriod: number;
  periodInstructions: number;
  wallMs: number;
  cpuMs: number;
  /** Relative to the run without sampling (wall, CPU). */
  slowdown: number;
  cpuSlowdown: number;
  periods: number;
}

export interface ActiveMemoryExperiment {
  guestBytes: number;
  periodInstructions: number;
  accuracy: AccuracyRow[];
  change: ChangeRow;
  slowdown: { bootArgs: string; instructions: number; baseline: { wallMs: number; cpuMs: number }; rows: SlowdownRow[]; runs: number; load: number };
  pass: boolean;
  /** 'PASS: …' or 'FAIL: …'. */
  verdict: string;
  /** The table, ready to print. */
  lines: string[];
}

/** Targets: printed as PASS/FAIL, never asserted. */
export const ACTIVE_MEMORY_TARGETS = {
  /** |estimate − truth| at steady state. */
  maxError: 0.1,
  /** The estimate follows a step up within this many periods. */
  maxPeriodsUp: 3,
} as const;

const SIZES = {
  full: { memoryBytes: 64 * MiB, period: 10_000_000, warmup: 8, measured: 24, phaseBytes: 64 * MiB, phasePeriod: 1_000_000, slowArgs: 'walker 32M random 12', runs: 5 },
  quick: { memoryBytes: 16 * MiB, period: 3_000_000, warmup: 6, measured: 10, phaseBytes: 16 * MiB, phasePeriod: 300_000, slowArgs: 'walker 8M random 8', runs: 1 },
} as const;

/** Runs the whole experiment (about a minute in full, a few seconds with quick). */
export function runActiveMemoryExperiment(options: ActiveMemoryExperimentOptions = {}): ActiveMemoryExperiment {
  const size = options.quick ? SIZES.quick : SIZES.full;
  const log = options.log ?? (() => {});
  const accuracy: AccuracyRow[] = [];
  for (const fraction of [0.1, 0.5, 0.9]) {
    const hv = createHypervisor({ hostMemoryBytes: size.memoryBytes + 16 * MiB });
    const bytes = walkerBytes(size.memoryBytes, fraction);
    const workload = `walker ${bytes} random 0`;
    const { vm } = bootNanokernel(hv, `walker-${fraction * 100}`, size.memoryBytes, workload);
    const sampler = new ActiveMemorySampler(vm, { periodInstructions: size.period, seed: 11 });
    const oracle = new PageOracle(vm);
    oracle.start();
    const rows = followPeriods(hv, sampler, oracle, size.warmup + size.measured, 200_000);
    const steady = rows.slice(size.warmup);
    const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;
    const maxError = Math.max(...steady.map((r) => Math.abs(r.estimate - r.truth)));
    accuracy.push({
      workload: `walker over ${fraction * 100} % (${(bytes / MiB).toFixed(1)} MiB of ${size.memoryBytes / MiB} MiB)`,
      nominal: bytes / PAGE / vm.memory.pageCount,
      truth: mean(steady.map((r) => r.truth)),
      estimate: mean(steady.map((r) => r.estimate)),
      maxError,
      maxRawError: Math.max(...steady.map((r) => Math.abs(r.f - r.truth))),
      periods: steady.length,
      pass: maxError <= ACTIVE_MEMORY_TARGETS.maxError,
    });
    log(`accuracy ${fraction * 100} %: truth ${accuracy.at(-1)!.truth.toFixed(3)}, estimate ${accuracy.at(-1)!.estimate.toFixed(3)}, max error ${maxError.toFixed(3)}`);
    sampler.dispose();
    oracle.dispose();
    hv.destroyVm(vm);
  }
  const change = measureChange(size.phaseBytes, size.phasePeriod);
  log(`change: up in ${change.periodsUp} periods, down in ${change.periodsDown}`);
  const slowdown = measureSlowdown(size.memoryBytes, size.slowArgs, size.runs, log);
  const accuracyOk = accuracy.every((row) => row.pass) && change.maxSteadyError <= ACTIVE_MEMORY_TARGETS.maxError;
  const upOk = change.periodsUp !== null && change.periodsUp <= ACTIVE_MEMORY_TARGETS.maxPeriodsUp;
  const pass = accuracyOk && upOk && change.periodsDown !== null;
  const worst = Math.max(...accuracy.map((row) => row.maxError), change.maxSteadyError);
  const verdict = `${pass ? 'PASS' : 'FAIL'}: active memory within ±${ACTIVE_MEMORY_TARGETS.maxError * 100} points of the truth at steady state (worst ${(worst * 100).toFixed(1)} points), ` +
    `a step up followed in ${change.periodsUp ?? 'never'} periods (target ≤ ${ACTIVE_MEMORY_TARGETS.maxPeriodsUp}), a step down in ${change.periodsDown ?? 'never'}`;
  const result = { guestBytes: size.memoryBytes, periodInstructions: size.period, accuracy, change, slowdown, pass, verdict, lines: [] as string[] };
  result.lines = formatActiveMemory(result);
  return result;
}

/** The phase guest 10 % → 90 % → 10 % of its memory, 20 / 20 / 60 periods. */
function measureChange(memoryBytes: number, period: number): ChangeRow {
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const guest = bootPhaseGuest(hv, 'phase', memoryBytes);
  const pages = guest.vm.memory.pageCount;
  const low = Math.round(pages * 0.1) - guest.overheadPages;
  const high = Math.round(pages * 0.9) - guest.overheadPages;
  const [upAt, downAt, end] = [20, 40, 100];
  const sampler = new ActiveMemorySampler(guest.vm, { periodInstructions: period, seed: 7 });
  const oracle = new PageOracle(guest.vm);
  oracle.start();
  const rows = followPeriods(hv, sampler, oracle, end, Math.max(1000, Math.floor(period / 20)), (next) => guest.setPages(next <= upAt ? low : next <= downAt ? high : low));
  const steadyError = (from: number, to: number): number => Math.max(...rows.slice(from, to).map((r) => Math.abs(r.estimate - r.truth)));
  const change: ChangeRow = {
    low: (low + guest.overheadPages) / pages,
    high: (high + guest.overheadPages) / pages,
    periodsUp: periodsToFollow(rows, upAt, (high + guest.overheadPages) / pages),
    periodsDown: periodsToFollow(rows, downAt, (low + guest.overheadPages) / pages),
    // The last 10 periods of each phase.
    maxSteadyError: Math.max(steadyError(upAt - 10, upAt), steadyError(downAt - 10, downAt), steadyError(end - 10, end)),
    rows,
  };
  sampler.dispose();
  oracle.dispose();
  hv.destroyVm(guest.vm);
  return change;
}

/** One nanokernel run from boot to power-off, with a sampler (autoTick) or without. */
function slowdownRun(memoryBytes: number, bootArgs: string, sampling: ActiveMemoryOptions | null): { wallMs: number; cpuMs: number; instructions: number; line: string; periods: number } {
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const { vm, output } = bootNanokernel(hv, 'slowdown', memoryBytes, bootArgs);
  const sampler = sampling === null ? null : new ActiveMemorySampler(vm, { ...sampling, autoTick: true });
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  const [result] = hv.run({}, [vm]);
  const wallMs = performance.now() - start;
  const cpuMs = cpuSince(cpuStart);
  if (result!.reason.kind !== 'halted' || result!.reason.exitCode !== 0) throw new BenchError('BV_BENCH_GUEST_FAILED', `active memory slowdown: '${bootArgs}' did not power off with 0 (${JSON.stringify(result!.reason)})`);
  const line = output.text().split('\n').find((l) => l.startsWith('walker:')) ?? '';
  const figures = { wallMs, cpuMs, instructions: vm.instructionsRetired, line, periods: sampler?.periods ?? 0 };
  sampler?.dispose();
  hv.destroyVm(vm);
  return figures;
}

function measureSlowdown(memoryBytes: number, bootArgs: string, runs: number, log: (line: string) => void): ActiveMemoryExperiment['slowdown'] {
  const configs: { label: string; options: ActiveMemoryOptions | null }[] = [
    { label: 'off', options: null },
    { label: 'default', options: { pagesPerPeriod: ACTIVE_PAGES_PER_PERIOD, periodInstructions: ACTIVE_PERIOD_INSTRUCTIONS } },
    { label: '100 × default rate', options: { pagesPerPeriod: ACTIVE_PAGES_PER_PERIOD, periodInstructions: ACTIVE_PERIOD_INSTRUCTIONS / 100 } },
    { label: '1000 pages / 100,000 instructions', options: { pagesPerPeriod: 1000, periodInstructions: 100_000 } },
  ];
  const samples = configs.map(() => [] as { wallMs: number; cpuMs: number }[]);
  const periods = configs.map(() => 0);
  let reference: { instructions: number; line: string } | null = null;
  // One warm-up round, then `runs` timed rounds; the order alternates each round.
  for (let round = 0; round <= runs; round++) {
    const order = configs.map((_, i) => i);
    if (round % 2 === 1) order.reverse();
    for (const i of order) {
      const run = slowdownRun(memoryBytes, bootArgs, configs[i]!.options);
      reference ??= run;
      if (run.instructions !== reference.instructions || run.line !== reference.line || run.line === '') {
        throw new BenchError('BV_BENCH_GUEST_FAILED', `active memory slowdown: '${configs[i]!.label}' computed something else (${run.instructions} instructions, '${run.line}' vs ${reference.instructions}, '${reference.line}')`);
      }
      if (round > 0) samples[i]!.push({ wallMs: run.wallMs, cpuMs: run.cpuMs });
      periods[i] = run.periods;
    }
    log(`slowdown round ${round}${round === 0 ? ' (warm-up)' : ''} done`);
  }
  const medians = samples.map((list) => ({ wallMs: median(list.map((s) => s.wallMs)), cpuMs: median(list.map((s) => s.cpuMs)) }));
  const base = medians[0]!;
  const rows = configs.slice(1).map((config, k) => {
    const m = medians[k + 1]!;
    return {
      label: config.label, pagesPerPeriod: config.options!.pagesPerPeriod!, periodInstructions: config.options!.periodInstructions!,
      wallMs: m.wallMs, cpuMs: m.cpuMs, slowdown: m.wallMs / base.wallMs - 1, cpuSlowdown: m.cpuMs / base.cpuMs - 1, periods: periods[k + 1]!,
    };
  });
  return { bootArgs, instructions: reference!.instructions, baseline: base, rows, runs, load: loadNow() };
}

/** The experiment's table. */
export function formatActiveMemory(result: Omit<ActiveMemoryExperiment, 'lines'>): string[] {
  const pct = (value: number): string => `${(value * 100).toFixed(1)} %`;
  const points = (value: number): string => `${(value * 100).toFixed(1)}`;
  const signed = (value: number): string => `${value >= 0 ? '+' : ''}${(value * 100).toFixed(1)} %`;
  const ms = (value: number): string => value.toFixed(0);
  const { change, slowdown } = result;
  return [
    `active memory (issue 11 item 1): ${ACTIVE_PAGES_PER_PERIOD} pages per period, fast/slow averages, estimate = max; truth = every page watched by an oracle over the same period`,
    `  steady state, nanokernel walkers (random, looping) on ${result.guestBytes / MiB} MiB, period ${result.periodInstructions.toLocaleString('en-US')} instructions:`,
    `    ${'workload'.padEnd(40)} ${'region'.padStart(7)} ${'truth'.padStart(7)} ${'estimate'.padStart(9)} ${'max err'.padStart(8)} ${'raw f err'.padStart(9)}  periods`,
    ...result.accuracy.map((row) =>
      `    ${row.workload.padEnd(40)} ${pct(row.nominal).padStart(7)} ${pct(row.truth).padStart(7)} ${pct(row.estimate).padStart(9)} ${points(row.maxError).padStart(8)} ${points(row.maxRawError).padStart(9)}  ${row.periods}  ${row.pass ? 'ok' : 'OUT'}`),
    `  a change (bare-metal phase guest): ${pct(change.low)} → ${pct(change.high)} at period 21 → ${pct(change.low)} at period 41:`,
    `    up: within 10 points after ${change.periodsUp ?? 'never'} periods; down: after ${change.periodsDown ?? 'never'} periods; steady max error ${points(change.maxSteadyError)} points`,
    `    estimate by period: ${change.rows.filter((r) => r.period % 5 === 0 || (r.period > 20 && r.period <= 24) || (r.period > 40 && r.period <= 44)).map((r) => `${r.period}:${(r.estimate * 100).toFixed(0)}`).join(' ')}`,
    `  guest slowdown, '${slowdown.bootArgs}' from boot to power-off (${slowdown.instructions.toLocaleString('en-US')} instructions), medians of ${slowdown.runs} interleaved runs; off: ${ms(slowdown.baseline.wallMs)} ms (CPU ${ms(slowdown.baseline.cpuMs)} ms)`,
    ...slowdown.rows.map((row) => `    ${row.label.padEnd(36)} ${row.pagesPerPeriod} pages / ${row.periodInstructions.toLocaleString('en-US')} instructions: ${ms(row.wallMs)} ms (CPU ${ms(row.cpuMs)}), slowdown ${signed(row.slowdown)} (CPU ${signed(row.cpuSlowdown)}), ${row.periods} periods`),
    `  load average ${slowdown.load.toFixed(2)}`,
    result.verdict,
  ];
}
