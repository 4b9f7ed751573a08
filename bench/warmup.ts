/**
 * The compiled tier's warm-up curve (issue 13): a workload's paging-on program from its first
 * instruction in a fresh hypervisor with no compiled function to reuse (nothing decoded, nothing
 * compiled; the interpreter itself is warm, as it is in a host that has run other guests),
 * timed at the first slice boundary past 10 k, 30 k, 100 k … instructions; the interpreter and
 * the compiled tier alternate run by run so that machine noise falls on both alike. The curve
 * shows what a short-lived guest gets: cold code is interpreted until a block has been entered
 * COMPILE_THRESHOLD times, compiling costs inside the guest's time, and V8 optimises each new
 * function only after it has run a while.
 */
import { Hcall, HcallStatus, Reg } from '../guest-isa/arch.ts';
import { createHypervisor, forgetCompiledFunctions, type Tier } from '../kernel/index.ts';
import { BenchError, cpuSince, JIT_PAGING_ON, type BenchSize, type GuestProgram, type Workload } from './harness.ts';

/** Window ends, in instructions from the start: 10 k, 30 k, 100 k … (the last window ends where the guest exits). */
const WINDOW_ENDS = [1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9];
/** A fresh hypervisor per run, big enough for every bench workload (the walker's 24 MiB). */
const WARMUP_POOL_BYTES = 64 * 2 ** 20;
/** Scheduler quantum of the curve's runs: where a window can end (both tiers alike). */
const WARMUP_QUANTUM = 5_000;
/** Runs of each tier (fresh each time); each window's figure is the median. */
export const WARMUP_RUNS = 3;

/** One tier's figures for one window (medians over the runs). */
export interface WindowTimes {
  ms: number;
  cpuMs: number;
  mips: number;
}

/** One window of the curve. */
export interface WarmupWindow {
  /** The window ends at the first slice boundary at or after this many instructions from the start (or at the exit). */
  end: number;
  interp: WindowTimes;
  jit: WindowTimes & {
    /** Compile time inside this window (part of `ms`). */
    compileMs: number;
    /** Share of the window's instructions run compiled. */
    compiledShare: number;
  };
}

export interface WarmupFigures {
  workload: string;
  runs: number;
  windows: WarmupWindow[];
}

/** Where one run stood when a window ended (cumulative from the start). */
interface Mark {
  instructions: number;
  ms: number;
  cpuMs: number;
  compileMs: number;
  compiled: number;
}

/**
 * Runs `program` once under `tier` in a fresh hypervisor, without stopping it: a ticker notes
 * the time at the first slice boundary past each window end. (Stopping at exact budgets would
 * single-step the last PRECISE_WINDOW instructions of every window, a cost of its own.)
 */
function runOnce(program: GuestProgram, tier: Tier, ends: readonly number[], label: string): Mark[] {
  // A cold start: no compiled function of an earlier run to reuse (kernel/cpu/jit/jit.ts, compiledFunctions).
  forgetCompiledFunctions();
  const hv = createHypervisor({ hostMemoryBytes: WARMUP_POOL_BYTES });
  try {
    const vm = hv.createVm({ memoryBytes: program.memoryBytes, name: `warmup-${tier}`, ...program.vm, tier });
    vm.loadImage(program.image);
    let halted = false;
    vm.onHypercall(Hcall.EXIT, (vcpu) => {
      vcpu.regs[Reg.A0] = HcallStatus.OK;
      halted = true;
      vm.powerOff(0);
    });
    const marks: Mark[] = [];
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    const mark = (): void => {
      const jit = hv.jitStats();
      marks.push({ instructions: vm.instructionsRetired, ms: performance.now() - start, cpuMs: cpuSince(cpuStart), compileMs: jit.compileMs, compiled: jit.retiredCompiled });
    };
    let next = 0;
    vm.addTicker(WARMUP_QUANTUM, () => {
      if (next < ends.length && vm.instructionsRetired >= ends[next]!) {
        mark();
        while (next < ends.length && vm.instructionsRetired >= ends[next]!) next++;
      }
    });
    const [outcome] = hv.run({ quantum: WARMUP_QUANTUM }, [vm]);
    if (!halted) throw new BenchError('BV_BENCH_GUEST_FAILED', `${label}: the guest stopped without exiting (${outcome!.reason.kind})`);
    if (marks.at(-1)?.instructions !== vm.instructionsRetired) mark();
    return marks;
  } finally {
    hv.close();
  }
}

const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
};

/** Per window of each run: instructions, times and compile figures (differences of marks). */
function windowsOf(marks: readonly Mark[]): { instructions: number; ms: number; cpuMs: number; compileMs: number; compiled: number }[] {
  return marks.map((m, k) => {
    const p = k === 0 ? { instructions: 0, ms: 0, cpuMs: 0, compileMs: 0, compiled: 0 } : marks[k - 1]!;
    return { instructions: m.instructions - p.instructions, ms: m.ms - p.ms, cpuMs: m.cpuMs - p.cpuMs, compileMs: m.compileMs - p.compileMs, compiled: m.compiled - p.compiled };
  });
}

/** Whether `workload` has a warm-up curve (one guest program per variant, a compiled paging-on one among them). */
export function hasWarmup(workload: Workload): boolean {
  return workload.program !== undefined && workload.variants.includes(JIT_PAGING_ON);
}

/** The warm-up curve of `workload`'s paging-on program, or null when it is not one program per variant. */
export function measureWarmup(workload: Workload, size: BenchSize, onStep?: (label: string) => void): WarmupFigures | null {
  if (!hasWarmup(workload)) return null;
  const program = workload.program!(workload.setup(size), JIT_PAGING_ON);
  const runs: { interp: Mark[]; jit: Mark[] }[] = [];
  // Alternate the tiers run by run so that machine noise falls on both alike.
  for (let run = 0; run < WARMUP_RUNS; run++) {
    onStep?.(`${workload.name} warm-up curve (${run + 1} of ${WARMUP_RUNS})`);
    const interp = runOnce(program, 'interp', WINDOW_ENDS, `${workload.name} warm-up (interp)`);
    const jit = runOnce(program, 'jit', WINDOW_ENDS, `${workload.name} warm-up (jit)`);
    runs.push({ interp, jit });
  }
  // Windows are where the interpreter's first run marked them; every run of both tiers marks the
  // same slice boundaries but for the compiled tier's overshoot inside non-exact slices.
  const count = Math.min(...runs.flatMap((r) => [r.interp.length, r.jit.length]));
  const windows: WarmupWindow[] = [];
  const interpWindows = runs.map((r) => windowsOf(r.interp));
  const jitWindows = runs.map((r) => windowsOf(r.jit));
  for (let k = 0; k < count; k++) {
    const times = (list: ReturnType<typeof windowsOf>[]): WindowTimes => ({
      ms: median(list.map((w) => w[k]!.ms)),
      cpuMs: median(list.map((w) => w[k]!.cpuMs)),
      mips: median(list.map((w) => (w[k]!.ms > 0 ? w[k]!.instructions / w[k]!.ms / 1000 : 0))),
    });
    windows.push({
      end: runs[0]!.interp[k]!.instructions,
      interp: times(interpWindows),
      jit: {
        ...times(jitWindows),
        compileMs: median(jitWindows.map((w) => w[k]!.compileMs)),
        compiledShare: median(jitWindows.map((w) => (w[k]!.instructions > 0 ? w[k]!.compiled / w[k]!.instructions : 0))),
      },
    });
  }
  return { workload: workload.name, runs: WARMUP_RUNS, windows };
}

/** The curve as text: one column per window. */
export function formatWarmup(figures: readonly WarmupFigures[]): string[] {
  const out: string[] = [];
  for (const { workload, windows } of figures) {
    if (windows.length === 0) continue;
    const short = (n: number): string => (n >= 1e6 ? `${+(n / 1e6).toPrecision(3)} M` : `${+(n / 1e3).toPrecision(3)} k`);
    const header = ['instructions to', ...windows.map((w) => short(w.end))];
    const rows = [
      ['interp MIPS', ...windows.map((w) => w.interp.mips.toFixed(0))],
      ['jit MIPS', ...windows.map((w) => w.jit.mips.toFixed(0))],
      ['jit compile ms', ...windows.map((w) => w.jit.compileMs.toFixed(2))],
      ['jit compiled', ...windows.map((w) => `${(w.jit.compiledShare * 100).toFixed(0)} %`)],
    ];
    const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
    const line = (cells: readonly string[]): string => cells.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ').trimEnd();
    out.push(`warm-up, ${workload} (paging on, a fresh hypervisor per run, median of ${figures[0]!.runs} runs per tier; MIPS of each window of instructions):`);
    out.push(line(header), ...rows.map(line), '');
  }
  return out;
}
