/**
 * `npm run bench -- --qemu` (issue 13, bench/qemu.ts): the deterministic parts only. The option
 * parses; the MIPS arithmetic and the parsers give fixed answers on fixed input; a missing tool
 * is a message, not a crash. Where QEMU and the cross compiler are installed, every RV32 program
 * builds, computes the plain-JS baseline's result, and retires exactly the instructions per
 * repetition that the runner divides by (counted by QEMU under -icount); without them, the same
 * tests assert the detection message instead. Speeds and ratios are never asserted.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  buildQemuProgram, detectQemuTools, differenceMips, formatQemu, parseQemuOutput, parseTimes, QEMU_PROGRAMS, qemuChecks, runQemu,
  type QemuFigures, type QemuWorkloadFigures,
} from '../../bench/qemu.ts';
import { parseBenchArguments } from '../../bench/run.ts';
import { WORKLOADS } from '../../bench/workloads.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));
const MISSING = /^QEMU comparison skipped: .+ not found \(Debian: apt-get install qemu-system-misc gcc-riscv64-unknown-elf\)$/;

const detection = detectQemuTools();
const dir = mkdtempSync(join(tmpdir(), 'bv-qemu-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('bench --qemu: options, arithmetic, parsers', () => {
  it('--qemu is an option of its own, off by default, and named in the usage', () => {
    expect(parseBenchArguments([])).toEqual({ json: false, quick: false, only: [], qemu: false });
    expect(parseBenchArguments(['--qemu', '--only', 'crc32,prefix-sum'])).toEqual({ json: false, quick: false, only: ['crc32', 'prefix-sum'], qemu: true });
    const help = spawnSync(tsx, ['bench/run.ts', '--help'], { cwd: repo, encoding: 'utf8', timeout: 60_000 });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^usage: npm run bench -- .*\[--qemu\]$/m);
  });

  it('QEMU MIPS is the instruction difference over the time difference, start-up cancelled', () => {
    // 100 ms of start-up, then 500 M instructions per second.
    const startup = 100;
    const time = (instructions: number): number => startup + instructions / 500e3;
    expect(differenceMips(200e6, time(200e6), 600e6, time(600e6))).toBeCloseTo(500, 9);
    expect(differenceMips(0, 1000, 3e9, 2500)).toBe(2000);
    expect(differenceMips(1, 1000, 2, 1000)).toBeNaN(); // no time difference: no figure
  });

  it("parses bash's `times` and the programs' UART line", () => {
    expect(parseTimes('0m0.002s 0m0.001s\n0m1.234s 0m0.056s\n')).toBeCloseTo(1290, 6);
    expect(parseTimes('some qemu warning\n0m0.000s 0m0.000s\n1m2.500s 0m0.500s')).toBeCloseTo(63_000, 6);
    expect(parseTimes('')).toBeNull();
    expect(parseQemuOutput('bv-qemu result=0x3a27b4a3 instret=0x0000000100000002\r\n')).toEqual({ result: 0x3a27b4a3, instret: 2 ** 32 + 2 });
    expect(parseQemuOutput('bv-qemu trap mcause=0x0000000d mepc=0x80000100 mtval=0x00000000')).toBeNull();
  });

  it('a missing tool is a message naming it and the Debian packages, never a throw', () => {
    const missing = detectQemuTools({ qemu: 'bv-no-such-qemu', gcc: 'bv-no-such-gcc' });
    expect(missing).toEqual({ ok: false, message: 'QEMU comparison skipped: bv-no-such-qemu and bv-no-such-gcc not found (Debian: apt-get install qemu-system-misc gcc-riscv64-unknown-elf)' });
    const skipped: QemuFigures = {
      tools: null, skipped: missing.ok ? '' : missing.message,
      method: { machine: 'm', r2OverR1: 3, targetLoopMs: 1000, statistic: 'median', runs: 7 }, workloads: [],
    };
    expect(formatQemu(skipped, () => '')).toEqual([skipped.skipped]);
    expect(qemuChecks(skipped)).toEqual([]);
  });

  it("the targets are PASS/FAIL lines from the compiled tier's wall-clock ratio, with the CPU ratio beside", () => {
    const figures = (name: string, jit: number, jitCpu: number): QemuWorkloadFigures => ({
      name, repetition: 'ROUNDS', r1: 1, r2: 3, instructionDifference: 2, wallMs: { r1: 1, r2: 2, runsR1: [1], runsR2: [2] }, cpuMs: { r1: 1, r2: 2, runsR1: [1], runsR2: [2] },
      mips: 1, cpuMips: 1, startupMs: 0, bytevisor: { interpMips: 1, interpCpuMips: 1, jitMips: jit, jitCpuMips: jitCpu }, ratio: { jit, jitCpu, interp: 0.5, interpCpu: 0.5 }, load: 0.5,
    });
    const checks = qemuChecks({
      tools: { qemu: 'q', gcc: 'g', qemuVersion: 'QEMU x', gccVersion: 'gcc y' },
      method: { machine: 'm', r2OverR1: 3, targetLoopMs: 1000, statistic: 'median', runs: 7 },
      workloads: [figures('crc32', 1.2, 0.9), figures('prefix-sum', 0.7, 0.8), figures('mulh', 0.1, 0.1)],
    });
    expect(checks.map((c) => [c.name, c.target, c.value, c.cpuValue, c.pass])).toEqual([
      ['crc32 paging=on, bytevisor jit ÷ QEMU', '>= 1.0', 1.2, 0.9, true],
      ['prefix-sum paging=on, bytevisor jit ÷ QEMU', '>= 0.6', 0.7, 0.8, true],
      ['prefix-sum paging=on, bytevisor jit ÷ QEMU (stretch)', '>= 1.0', 0.7, 0.8, false],
    ]);
  });

  it('every bench workload has an RV32 program', () => {
    expect(QEMU_PROGRAMS.map((p) => p.workload)).toEqual(WORKLOADS.map((w) => w.name));
  });
});

describe('bench --qemu: the RV32 programs under QEMU', () => {
  it('the installed tools are found, or the detection says what to install', () => {
    if (detection.ok) {
      expect(detection.tools.qemuVersion).toMatch(/^QEMU emulator version \d+\.\d+/);
      expect(detection.tools.gccVersion).toMatch(/riscv64-unknown-elf-gcc/);
    } else {
      expect(detection.message).toMatch(MISSING);
    }
  });

  for (const program of QEMU_PROGRAMS) {
    it(`${program.workload}: the plain-JS result, and exactly ${program.perRepetition} instructions per repetition (-icount)`, () => {
      if (!detection.ok) {
        expect(detection.message).toMatch(MISSING);
        return;
      }
      const reps = [program.quick, 2 * program.quick];
      const runs = reps.map((r) => runQemu(detection.tools, buildQemuProgram(detection.tools, program, r, dir, true), { icount: true }));
      for (const [index, run] of runs.entries()) expect(run.result, `${program.workload} ${program.repetition}=${reps[index]}`).toBe(program.js(reps[index]!, true) >>> 0);
      expect(runs[1]!.instret - runs[0]!.instret).toBe((reps[1]! - reps[0]!) * program.perRepetition);
      for (const run of runs) {
        expect(run.wallMs).toBeGreaterThan(0);
        expect(run.cpuMs).toBeGreaterThanOrEqual(0);
      }
    });
  }

  it('npm run bench -- --quick --qemu prints the side-by-side section (or the skip line) and its checks', () => {
    const result = spawnSync(tsx, ['bench/run.ts', '--quick', '--qemu', '--json', '--only', 'prefix-sum'], { cwd: repo, encoding: 'utf8', timeout: 230_000 });
    expect(result.status, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    if (!detection.ok) {
      expect(report.qemu).toMatchObject({ tools: null, skipped: detection.message, workloads: [] });
      return;
    }
    expect(report.qemu.tools.qemuVersion).toBe(detection.tools.qemuVersion);
    expect(report.qemu.workloads).toHaveLength(1);
    const [figures] = report.qemu.workloads;
    expect(figures).toMatchObject({ name: 'prefix-sum', repetition: 'ROUNDS', r1: 1, r2: 3, instructionDifference: 2 * QEMU_PROGRAMS[1]!.perRepetition });
    expect(figures.wallMs.runsR1).toHaveLength(report.method.runs);
    expect(figures.cpuMs.runsR2).toHaveLength(report.method.runs);
    // The bytevisor side is the bench's own paging=on figures of the same run.
    const workload = report.workloads[0];
    expect(figures.bytevisor.jitMips).toBe(workload.variants.find((v: { variant: string }) => v.variant === 'jit paging=on').mips);
    expect(figures.bytevisor.interpMips).toBe(workload.variants.find((v: { variant: string }) => v.variant === 'paging=on').mips);
    expect(report.checks.map((c: { name: string }) => c.name)).toContain('prefix-sum paging=on, bytevisor jit ÷ QEMU');
  }, 240_000);
});
