/**
 * `npm run bench -- --only migration` (issue 14): the entry runs on loopback and reports the plain
 * TLS copy, pre-copy (default and 10 ms downtime limits) and post-copy figures with their check
 * lines. Smoke only: the figures' targets are PASS/FAIL lines, never asserted here.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatReport } from '../../bench/run.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

describe('npm run bench -- --only migration', () => {
  it('--quick --json: pre-copy, low-downtime pre-copy and post-copy of a 64 MiB guest, the copy and pre-copy to another process, and their checks', () => {
    const result = spawnSync(tsx, ['bench/run.ts', '--quick', '--json', '--only', 'migration'], { cwd: repo, encoding: 'utf8', timeout: 230_000 });
    expect(result.status, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    const { migration } = report;
    expect(migration.tlsCopy.mibps).toBeGreaterThan(0);
    expect(migration.precopy).toMatchObject({ guestBytes: 64 * 1024 * 1024 });
    expect(migration.precopy.bytesSent).toBeGreaterThan(64 * 1024 * 1024 * 0.9);
    expect(migration.precopy.downtimeMs).toBeGreaterThan(0);
    expect(migration.precopy.ratio).toBeGreaterThan(0);
    expect(migration.lowDowntime.limitMs).toBe(10);
    expect(migration.postcopy.remotePages).toBeGreaterThan(0);
    expect(migration.postcopy.resumeMs).toBeGreaterThan(0);
    // Source and destination in two processes: the copy and the pre-copy reached the far process.
    expect(migration.twoProcesses.copy.mibps).toBeGreaterThan(0);
    expect(migration.twoProcesses.precopy.bytes).toBeGreaterThan(64 * 1024 * 1024 * 0.9);
    expect(migration.twoProcesses.ratio).toBeGreaterThan(0);
    expect(report.checks.map((c: { name: string }) => c.name)).toEqual([
      'pre-copy downtime, 64 MiB (ms)', 'pre-copy downtime goal, 64 MiB, downtime_ms 10 (ms)', 'pre-copy throughput / plain TLS copy, 64 MiB',
      'pre-copy throughput / plain TLS copy, 64 MiB, source and destination in two processes',
    ]);
    expect(formatReport(report)).toMatch(/^Live migration \(issue 14\)/m);
    expect(formatReport(report)).toMatch(/remote faults \d+: latency p50/);
  });
});
