/**
 * `npm run bench -- --only ha` (issue 15): the entry reports the power-loss save of persistent
 * memory to a partner (T-15) with its check line. Smoke only: the figures' targets are PASS/FAIL
 * lines, never asserted here.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatReport } from '../../bench/run.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

describe('npm run bench -- --only ha', () => {
  it('--quick --json: the power-loss save of 64 MiB of pmem, 10 % dirty, and its check', () => {
    const result = spawnSync(tsx, ['bench/run.ts', '--quick', '--json', '--only', 'ha'], { cwd: repo, encoding: 'utf8', timeout: 230_000 });
    expect(result.status, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    const [size] = report.ha.pmem.sizes;
    expect(size).toMatchObject({ pmemBytes: 64 * 1024 * 1024, dirtyPages: 1639, identical: true });
    expect(size.powerLoss.pagesSent).toBe(1639);
    expect(size.powerLoss.savedMs).toBeGreaterThan(0);
    expect(size.powerLoss.cpuMs).toBeGreaterThan(0);
    expect(report.checks.map((c: { name: string }) => c.name).filter((name: string) => name.startsWith('pmem HA'))).toEqual(['pmem HA: power-loss save of 64 MiB, 10 % dirty, saved at the partner within the 1000 ms battery (ms)']);
    expect(formatReport(report)).toMatch(/^Persistent-memory HA \(T-15\)/m);
  });
});
