/**
 * `npm run bench -- --qemu` (issue 13): bytevisor side by side with QEMU system mode.
 *
 * The bench workloads of bench/workloads.ts exist as bare-metal RV32 programs too (bench/qemu/*.S:
 * rv32im, the BV32 guests' instructions one for one, Sv32 on with the same 4 KiB identity map,
 * run in S-mode). Each is built with two repetition counts r1 and r2 = 3·r1 and run under
 * `qemu-system-riscv32 -machine virt -bios none` (plain TCG, one vCPU); QEMU's speed is
 *
 *     MIPS = (instructions(r2) − instructions(r1)) ÷ (time(r2) − time(r1))
 *
 * which cancels QEMU's start-up, the set-up before the loop and the exit. The instruction
 * difference comes from the loop structure ((r2 − r1) × the instructions of one repetition,
 * checked under `-icount` by tests/bench/qemu-bench.test.ts). Times are the medians of the timed
 * rounds, wall clock and the child's CPU time (user + system of all its threads, from bash's
 * `times`: getrusage of the waited-for child). The QEMU runs happen inside the bytevisor
 * workload's own rounds (harness.ts `onRound`), so machine noise falls on both alike, and the
 * bytevisor figures are the bench's own (paging=on, interpreter and compiled tier). Every QEMU
 * run's result is checked against the plain-JS baseline for the same repetition count.
 *
 * Optional: without Debian's qemu-system-misc and gcc-riscv64-unknown-elf the section says what
 * is missing and the rest of the bench runs as usual.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchError, JIT_PAGING_ON, loadNow, median, PAGING_ON } from './harness.ts';
import type { Check, WorkloadFigures } from './harness.ts';
import { crc32Js, FILL_FACTOR, LCG_ADD, LCG_MUL, LCG_SEED, mulhJs, mulhsJs, mulhuJs, MWC_A, MWC_K, prefixSumJs, walkerJs } from './workloads.ts';

export const QEMU_BINARY = 'qemu-system-riscv32';
export const GCC_BINARY = 'riscv64-unknown-elf-gcc';
/** What to install where they are missing (Debian). */
export const QEMU_PACKAGES = 'qemu-system-misc gcc-riscv64-unknown-elf';

/** Targets of issue 13: bytevisor's compiled tier (paging on) ÷ QEMU, wall-clock MIPS. */
export const QEMU_TARGETS: readonly { workload: string; ratio: number; label?: string }[] = [
  { workload: 'crc32', ratio: 1.0 },
  { workload: 'prefix-sum', ratio: 0.6 },
  { workload: 'prefix-sum', ratio: 1.0, label: 'stretch' },
];

/** A QEMU run's loop lasts about this long at r1 (r2 three times as long): the difference is ≥ 2 s. */
export const QEMU_TARGET_LOOP_MS = 1000;
export const QEMU_R2_FACTOR = 3;
/** The QEMU machine, as the report names it (runQemu's arguments). */
export const QEMU_MACHINE = 'qemu-system-riscv32 -machine virt -cpu rv32 -smp 1 -accel tcg -bios none';
/** Calibration: a difference of at least this much time before it is believed. */
const CALIBRATION_MIN_MS = 250;
/** A QEMU run that lasts longer than this is stuck. */
const QEMU_TIMEOUT_MS = 120_000;

const here = (name: string): string => fileURLToPath(new URL(`./qemu/${name}`, import.meta.url));

export interface QemuTools {
  qemu: string;
  gcc: string;
  /** First lines of `--version`, e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)". */
  qemuVersion: string;
  gccVersion: string;
}

export type QemuDetection = { ok: true; tools: QemuTools } | { ok: false; message: string };

/** The first line of `command --version`, or null when the command cannot run. */
function versionOf(command: string): string | null {
  const result = spawnSync(command, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (result.error || result.status !== 0) return null;
  return result.stdout.split('\n')[0]!.trim();
}

/**
 * Finds QEMU, the cross compiler and bash (for the child's CPU time). Never throws: what is
 * missing comes back as a message saying what to install.
 */
export function detectQemuTools(names: { qemu?: string; gcc?: string } = {}): QemuDetection {
  const qemu = names.qemu ?? QEMU_BINARY;
  const gcc = names.gcc ?? GCC_BINARY;
  const qemuVersion = versionOf(qemu);
  const gccVersion = versionOf(gcc);
  const missing = [...(qemuVersion === null ? [qemu] : []), ...(gccVersion === null ? [gcc] : [])];
  if (spawnSync('bash', ['-c', 'times'], { encoding: 'utf8' }).status !== 0) missing.push('bash');
  if (missing.length > 0) {
    return { ok: false, message: `QEMU comparison skipped: ${missing.join(' and ')} not found (Debian: apt-get install ${QEMU_PACKAGES})` };
  }
  return { ok: true, tools: { qemu, gcc, qemuVersion: qemuVersion!, gccVersion: gccVersion! } };
}

/** One bench workload as an RV32 program. */
export interface QemuProgram {
  /** The bench workload it mirrors (bench/workloads.ts). */
  workload: string;
  /** Its source in bench/qemu/. */
  source: string;
  /** The `-D` name of the repetition count (the BV32 guest's `.equ` of the same name). */
  repetition: 'ROUNDS' | 'STEPS';
  /** Instructions one repetition retires: the loop structure, as each source's header says. */
  perRepetition: number;
  /** The other `-D` definitions (the constants the BV32 guest gets as `.equ`). */
  defines(quick: boolean): Record<string, number>;
  /** The plain-JS baseline's result for `repetitions` (bench/workloads.ts). */
  js(repetitions: number, quick: boolean): number;
  /** r1 under --quick (r2 = 3·r1); calibration starts from `calibrateFrom`. */
  quick: number;
  calibrateFrom: number;
}

const walkWordsLog2 = (quick: boolean): number => (quick ? 16 : 22); // as the bench's walker

export const QEMU_PROGRAMS: readonly QemuProgram[] = [
  {
    workload: 'crc32', source: 'crc32.S', repetition: 'ROUNDS', perRepetition: 2 + 16384 * 34 + 2,
    defines: () => ({}), js: (rounds) => crc32Js(rounds), quick: 1, calibrateFrom: 50,
  },
  {
    workload: 'prefix-sum', source: 'prefix-sum.S', repetition: 'ROUNDS', perRepetition: 2 + 262144 * 5 + 2,
    defines: () => ({ FILL_FACTOR }), js: (rounds) => prefixSumJs(rounds).result, quick: 1, calibrateFrom: 20,
  },
  {
    workload: 'walker', source: 'walker.S', repetition: 'STEPS', perRepetition: 11,
    defines: (quick) => ({ WALK_WORDS_LOG2: walkWordsLog2(quick), FILL_FACTOR, LCG_SEED, LCG_MUL, LCG_ADD }),
    js: (steps, quick) => walkerJs(walkWordsLog2(quick), steps), quick: 1 << 14, calibrateFrom: 1 << 21,
  },
  {
    workload: 'mulh', source: 'mulh.S', repetition: 'STEPS', perRepetition: 9,
    defines: () => ({ MWC_A, MWC_K, LCG_SEED, LCG_ADD }), js: (steps) => mulhJs(steps, mulhuJs, mulhsJs), quick: 1 << 12, calibrateFrom: 1 << 22,
  },
];

const hex = (value: number): string => `0x${(value >>> 0).toString(16)}`;

/** Builds `program` with `repetitions` into `dir`; returns the ELF's path. */
export function buildQemuProgram(tools: QemuTools, program: QemuProgram, repetitions: number, dir: string, quick: boolean): string {
  const out = join(dir, `${program.workload}-${repetitions}.elf`);
  const defines = { [program.repetition]: repetitions, ...program.defines(quick) };
  const args = [
    '-march=rv32im_zicsr', '-mabi=ilp32', '-nostdlib', '-nostartfiles', '-static', '-Wl,--no-relax', '-T', here('link.ld'),
    ...Object.entries(defines).map(([name, value]) => `-D${name}=${hex(value)}`), '-o', out, here(program.source),
  ];
  const result = spawnSync(tools.gcc, args, { encoding: 'utf8', timeout: 60_000 });
  if (result.status !== 0) throw new BenchError('BV_BENCH_QEMU', `building ${program.source} failed: ${result.error?.message ?? result.stderr.trim()}`);
  return out;
}

/** One QEMU run. */
export interface QemuRun {
  /** Wall time of the child (spawn to exit, start-up included). */
  wallMs: number;
  /** The child's CPU time, user + system of all its threads. */
  cpuMs: number;
  /** What the program exited with (u32). */
  result: number;
  /** S-mode instret difference the program printed: an instruction count only with `icount`. */
  instret: number;
}

/** bash's `times`: the shell's then its children's user and system times ("0m1.234s 0m0.012s"). */
export function parseTimes(text: string): number | null {
  const lines = text.trimEnd().split('\n');
  const match = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(lines[lines.length - 1]!.trim());
  if (!match) return null;
  return (Number(match[1]) * 60 + Number(match[2]) + Number(match[3]) * 60 + Number(match[4])) * 1000;
}

/** Parses the program's UART line (bench/qemu/machine.inc). */
export function parseQemuOutput(text: string): { result: number; instret: number } | null {
  const match = /bv-qemu result=0x([0-9a-f]{8}) instret=0x([0-9a-f]{16})/.exec(text);
  return match ? { result: parseInt(match[1]!, 16) >>> 0, instret: Number(BigInt(`0x${match[2]}`)) } : null;
}

/**
 * Runs one program under QEMU (plain TCG, one vCPU; `icount` makes instret an instruction count
 * and the run slow: for tests). The child's CPU time comes from bash's `times` after QEMU exits.
 */
export function runQemu(tools: QemuTools, elf: string, options: { icount?: boolean } = {}): QemuRun {
  const qemuArgs = [
    '-machine', 'virt', '-cpu', 'rv32', '-smp', '1', '-m', '128M', '-accel', 'tcg', '-nographic', '-bios', 'none', '-kernel', elf,
    ...(options.icount ? ['-icount', 'shift=0'] : []),
  ];
  const script = '"$@" </dev/null; status=$?; times >&2; exit $status';
  const start = performance.now();
  const child = spawnSync('bash', ['-c', script, 'bash', tools.qemu, ...qemuArgs], { encoding: 'utf8', timeout: QEMU_TIMEOUT_MS, maxBuffer: 1 << 20 });
  const wallMs = performance.now() - start;
  const parsed = parseQemuOutput(child.stdout ?? '');
  const cpuMs = parseTimes(child.stderr ?? '');
  if (child.error || child.status !== 0 || !parsed || cpuMs === null) {
    const why = child.error?.message ?? `exit status ${child.status}`;
    throw new BenchError('BV_BENCH_QEMU', `${elf}: QEMU run failed (${why}): ${`${child.stdout ?? ''}${child.stderr ?? ''}`.trim().slice(0, 500)}`);
  }
  return { wallMs, cpuMs, ...parsed };
}

/** (i2 − i1) ÷ (t2 − t1) in million instructions per second (times in ms); NaN when t2 ≤ t1. */
export function differenceMips(instructions1: number, ms1: number, instructions2: number, ms2: number): number {
  const ms = ms2 - ms1;
  return ms > 0 ? (instructions2 - instructions1) / ms / 1000 : NaN;
}

/** The bytevisor side of one workload (the bench's own figures), paging on. */
export interface BytevisorSide {
  interpMips: number;
  interpCpuMips: number;
  jitMips: number;
  jitCpuMips: number;
}

export interface QemuWorkloadFigures {
  name: string;
  repetition: 'ROUNDS' | 'STEPS';
  r1: number;
  r2: number;
  /** (r2 − r1) × instructions per repetition. */
  instructionDifference: number;
  wallMs: { r1: number; r2: number; runsR1: number[]; runsR2: number[] };
  cpuMs: { r1: number; r2: number; runsR1: number[]; runsR2: number[] };
  /** QEMU MIPS from the median wall times, and from the median CPU times. */
  mips: number;
  cpuMips: number;
  /** What the difference cancels: r1's wall time less its loop at `mips` (start-up, set-up, exit). */
  startupMs: number;
  bytevisor: BytevisorSide;
  /** bytevisor ÷ QEMU, MIPS over MIPS: the compiled tier and the interpreter, wall and CPU. */
  ratio: { jit: number; jitCpu: number; interp: number; interpCpu: number };
  load: number;
}

export interface QemuFigures {
  /** Null when the tools are missing: then `skipped` says why. */
  tools: QemuTools | null;
  skipped?: string;
  method: { machine: string; r2OverR1: number; targetLoopMs: number; statistic: 'median'; runs: number };
  workloads: QemuWorkloadFigures[];
}

const round = (value: number, digits: number): number => Number(value.toFixed(digits));

/**
 * The QEMU side of one workload, driven by the bytevisor workload's rounds: the first round
 * builds and calibrates, each timed round runs r1 and r2 (order alternating).
 */
export class QemuSide {
  private dir: string | null = null;
  private r1 = 0;
  private r2 = 0;
  private elf1 = '';
  private elf2 = '';
  private readonly expected = new Map<number, number>();
  private readonly runs = { wall1: [] as number[], wall2: [] as number[], cpu1: [] as number[], cpu2: [] as number[] };

  constructor(private readonly tools: QemuTools, readonly program: QemuProgram, private readonly quick: boolean, private readonly onStep?: (label: string) => void) {}

  /** harness.ts onRound: preparation first, then one r1 and one r2 run per timed round. */
  round(index: number, timed: boolean): void {
    if (this.dir === null) this.prepare();
    if (!timed) return;
    const order = index % 2 === 0 ? [1, 2] : [2, 1];
    for (const which of order) {
      const reps = which === 1 ? this.r1 : this.r2;
      this.onStep?.(`${this.program.workload} QEMU ${this.program.repetition}=${reps}`);
      const run = this.run(which === 1 ? this.elf1 : this.elf2, reps);
      (which === 1 ? this.runs.wall1 : this.runs.wall2).push(run.wallMs);
      (which === 1 ? this.runs.cpu1 : this.runs.cpu2).push(run.cpuMs);
    }
  }

  private build(reps: number): string {
    return buildQemuProgram(this.tools, this.program, reps, this.dir!, this.quick);
  }

  /** One run, its result checked against the plain-JS baseline for the same repetitions. */
  private run(elf: string, reps: number): QemuRun {
    const run = runQemu(this.tools, elf);
    let expected = this.expected.get(reps);
    if (expected === undefined) {
      expected = this.program.js(reps, this.quick) >>> 0;
      this.expected.set(reps, expected);
    }
    if (run.result !== expected) {
      throw new BenchError('BV_BENCH_WRONG_RESULT', `${this.program.workload} under QEMU (${this.program.repetition}=${reps}): computed ${hex(run.result)}, plain JS ${hex(expected)}`);
    }
    return run;
  }

  /** Builds r1 and r2: fixed under --quick, else calibrated so that r1's loop lasts ~TARGET_LOOP_MS. */
  private prepare(): void {
    this.dir = mkdtempSync(join(tmpdir(), 'bv-qemu-'));
    let r1 = this.program.quick;
    if (!this.quick) {
      this.onStep?.(`${this.program.workload} QEMU calibration`);
      let reps = this.program.calibrateFrom;
      for (let attempt = 0; ; attempt++) {
        const small = this.run(this.build(reps), reps).wallMs;
        const large = this.run(this.build(4 * reps), 4 * reps).wallMs;
        const msPerRep = (large - small) / (3 * reps);
        if (large - small >= CALIBRATION_MIN_MS || attempt >= 4) {
          r1 = Math.max(1, Math.ceil(QEMU_TARGET_LOOP_MS / Math.max(msPerRep, 1e-9)));
          break;
        }
        reps *= 4;
      }
    }
    this.r1 = r1;
    this.r2 = QEMU_R2_FACTOR * r1;
    this.elf1 = this.build(this.r1);
    this.elf2 = this.build(this.r2);
  }

  /** The figures, given the bench's figures for the same workload. */
  figures(bytevisor: WorkloadFigures): QemuWorkloadFigures {
    const { wall1, wall2, cpu1, cpu2 } = this.runs;
    const instructionDifference = (this.r2 - this.r1) * this.program.perRepetition;
    const [w1, w2, c1, c2] = [median(wall1), median(wall2), median(cpu1), median(cpu2)];
    const mips = differenceMips(0, w1, instructionDifference, w2);
    const cpuMips = differenceMips(0, c1, instructionDifference, c2);
    const variant = (name: string): { mips: number; cpuMips: number } => {
      const found = bytevisor.variants.find((v) => v.variant === name);
      return found ? { mips: found.mips, cpuMips: found.cpuMips } : { mips: NaN, cpuMips: NaN };
    };
    const interp = variant(PAGING_ON);
    const jit = variant(JIT_PAGING_ON);
    const rounded = (values: number[]): number[] => values.map((v) => round(v, 1));
    return {
      name: this.program.workload,
      repetition: this.program.repetition,
      r1: this.r1,
      r2: this.r2,
      instructionDifference,
      wallMs: { r1: round(w1, 1), r2: round(w2, 1), runsR1: rounded(wall1), runsR2: rounded(wall2) },
      cpuMs: { r1: round(c1, 1), r2: round(c2, 1), runsR1: rounded(cpu1), runsR2: rounded(cpu2) },
      mips: round(mips, 2),
      cpuMips: round(cpuMips, 2),
      startupMs: round(w1 - (this.r1 * this.program.perRepetition) / mips / 1000, 1),
      bytevisor: { interpMips: interp.mips, interpCpuMips: interp.cpuMips, jitMips: jit.mips, jitCpuMips: jit.cpuMips },
      ratio: {
        jit: round(jit.mips / mips, 3), jitCpu: round(jit.cpuMips / cpuMips, 3),
        interp: round(interp.mips / mips, 3), interpCpu: round(interp.cpuMips / cpuMips, 3),
      },
      load: loadNow(),
    };
  }

  /** Removes the built programs. */
  dispose(): void {
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The side for a workload, or null when it has no RV32 program. */
export function qemuProgramFor(workload: string): QemuProgram | null {
  return QEMU_PROGRAMS.find((p) => p.workload === workload) ?? null;
}

/** Steps a QEMU side adds to a workload's progress count (calibration counted as one). */
export function qemuStepCount(runs: number, quick: boolean): number {
  return 2 * runs + (quick ? 0 : 1);
}

/** PASS/FAIL lines of issue 13's targets (printed, never asserted). */
export function qemuChecks(figures: QemuFigures): Check[] {
  const checks: Check[] = [];
  for (const target of QEMU_TARGETS) {
    const found = figures.workloads.find((w) => w.name === target.workload);
    if (!found) continue;
    checks.push({
      name: `${target.workload} paging=on, bytevisor jit ÷ QEMU${target.label ? ` (${target.label})` : ''}`,
      target: `>= ${target.ratio.toFixed(1)}`,
      value: found.ratio.jit,
      cpuValue: found.ratio.jitCpu,
      pass: found.ratio.jit >= target.ratio,
      load: found.load,
    });
  }
  return checks;
}

const fixed = (value: number, digits: number): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const ratio = (value: number): string => (Number.isFinite(value) ? `${value.toFixed(2)}x` : '-');

/** The "side by side with QEMU" section of the human report. */
export function formatQemu(figures: QemuFigures, table: (header: readonly string[], rows: readonly string[][], textColumns?: number) => string): string[] {
  const out: string[] = [];
  if (!figures.tools) {
    out.push(figures.skipped ?? 'QEMU comparison skipped');
    return out;
  }
  out.push(`side by side with QEMU (issue 13): ${figures.tools.qemuVersion}; ${figures.tools.gccVersion}`);
  out.push(
    `${figures.method.machine}; QEMU MIPS = instruction difference ÷ time difference of runs with r1 and r2 = ${figures.method.r2OverR1}·r1 repetitions ` +
      `(median of ${figures.method.runs}, interleaved with bytevisor's rounds); bytevisor = the bench's paging=on figures; CPU = the child's user + system time`,
  );
  if (figures.workloads.length === 0) {
    out.push('no selected workload has an RV32 program (bench/qemu/)');
    return out;
  }
  out.push('');
  const rows = figures.workloads.map((w) => [
    w.name, `${w.r1} / ${w.r2}`, `${(w.instructionDifference / 1e6).toFixed(1)} M`, `${fixed(w.wallMs.r1, 0)} / ${fixed(w.wallMs.r2, 0)}`, fixed(w.startupMs, 0),
    fixed(w.mips, 1), fixed(w.cpuMips, 1), fixed(w.bytevisor.interpMips, 1), fixed(w.bytevisor.jitMips, 1), fixed(w.bytevisor.jitCpuMips, 1),
    ratio(w.ratio.interp), ratio(w.ratio.jit), ratio(w.ratio.jitCpu),
  ]);
  out.push(table(
    ['workload', 'r1 / r2', 'instr. diff.', 'QEMU ms r1 / r2', 'start-up ms', 'QEMU MIPS', 'QEMU CPU MIPS', 'bv interp MIPS', 'bv jit MIPS', 'bv jit CPU MIPS', 'interp/QEMU', 'jit/QEMU', 'jit/QEMU CPU'],
    rows, 1,
  ));
  return out;
}
