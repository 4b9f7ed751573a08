/**
 * Smoke test of `npm run bench`: it runs (with --quick), verifies guest results, and its output
 * has the promised shape. Speeds are never asserted: the bench is not a test.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { verifyAgainstJs, median } from '../../bench/harness.ts';
import type { GuestRun } from '../../bench/harness.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

function bench(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(tsx, ['bench/run.ts', ...args], { cwd: repo, encoding: 'utf8', timeout: 120_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('npm run bench', () => {
  it('--quick --json prints one JSON object with every workload, variant and check', () => {
    const { status, stdout, stderr } = bench('--quick', '--json');
    expect(status, stderr).toBe(0);
    expect(stderr).toBe(''); // not a terminal: no progress
    const report = JSON.parse(stdout);
    expect(Object.keys(report)).toEqual(['machine', 'method', 'workloads', 'checks']);
    expect(report.machine.node).toBe(process.version);
    expect(report.method).toMatchObject({ quick: true, statistic: 'median' });
    expect(report.workloads.map((w: { name: string }) => w.name)).toEqual(['crc32', 'prefix-sum', 'walker']);
    for (const workload of report.workloads) {
      expect(workload.js.medianMs).toBeGreaterThan(0);
      expect(workload.js.runsMs).toHaveLength(report.method.runs);
      expect(typeof workload.pagingCost).toBe('number');
      expect(workload.variants.map((v: { variant: string }) => v.variant)).toEqual(['paging=off', 'paging=on']);
      for (const variant of workload.variants) {
        expect(Object.keys(variant).sort()).toEqual(
          ['instructions', 'jsEquivalentMips', 'medianMs', 'mips', 'pageWalks', 'ratio', 'runsMs', 'tlbMisses', 'variant'],
        );
        expect(variant.instructions).toBeGreaterThan(0);
        expect(variant.runsMs).toHaveLength(report.method.runs);
        expect(Number.isFinite(variant.mips) && variant.mips > 0).toBe(true);
        expect(Number.isFinite(variant.ratio) && variant.ratio > 0).toBe(true);
        expect(variant.tlbMisses).toBeGreaterThan(0);
      }
      const [off, on] = workload.variants;
      // Page walks happen only with paging on; turning paging on costs a few instructions.
      expect(off.pageWalks).toBe(0);
      expect(on.pageWalks).toBeGreaterThan(0);
      expect(on.instructions).toBeGreaterThan(off.instructions);
    }
    expect(report.checks.map((c: { name: string }) => c.name)).toEqual([
      'crc32 paging=on guest MIPS',
      'crc32 paging cost',
      'prefix-sum paging cost',
      'walker paging cost',
    ]);
    for (const check of report.checks) expect(typeof check.pass).toBe('boolean');
  });

  it('--only runs one workload and prints PASS/FAIL lines for its targets', () => {
    const { status, stdout, stderr } = bench('--quick', '--only', 'crc32');
    expect(status, stderr).toBe(0);
    expect(stdout).toMatch(/^crc32 +paging=off /m);
    expect(stdout).toMatch(/^crc32 +paging=on /m);
    expect(stdout).not.toMatch(/^walker /m);
    expect(stdout).toMatch(/^(PASS|FAIL) {2}crc32 paging=on guest MIPS: [\d.]+ \(target >= 150\)$/m);
    expect(stdout).toMatch(/^(PASS|FAIL) {2}crc32 paging cost: [+-][\d.]+ % \(target <= 15 %\)$/m);
  });

  it('refuses an unknown workload with one error line', () => {
    const { status, stdout, stderr } = bench('--only', 'nope');
    expect(status).toBe(1);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toEqual(["error: unknown workload 'nope' (known: crc32, prefix-sum, walker)"]);
  });
});

describe('bench harness', () => {
  const run = (result: number, memory: Uint8Array | null = null): GuestRun => ({ ms: 1, instructions: 1, result, memory, tlbMisses: 0, pageWalks: 0 });

  it('treats a guest result that differs from plain JS as an error', () => {
    expect(() => verifyAgainstJs('w', run(7), { ms: 1, result: 7, memory: null })).not.toThrow();
    expect(() => verifyAgainstJs('w', run(7), { ms: 1, result: 8, memory: null })).toThrow(/guest computed 0x7, plain JS 0x8/);
    expect(() => verifyAgainstJs('w', run(7, Uint8Array.of(1, 2, 3)), { ms: 1, result: 7, memory: Uint8Array.of(1, 9, 3) })).toThrow(/at byte 1/);
  });

  it('takes the median', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
});
