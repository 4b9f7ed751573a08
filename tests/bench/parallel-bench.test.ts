/**
 * `npm run bench -- --only parallel` (issue 16): the entry times real VMs in the host thread and
 * in worker groups, prices lending pages across threads, and carries the model host's placement
 * figures; its ratios are computed from the arrangements it reports. Speeds are never asserted.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const repo = join(import.meta.dirname, '..', '..');
const tsx = join(repo, 'node_modules', '.bin', 'tsx');

describe('npm run bench -- --only parallel', () => {
  it('reports each arrangement, the speed-up from its figures, the sharing costs and the placement scenarios', () => {
    const result = spawnSync(tsx, ['bench/run.ts', '--quick', '--json', '--only', 'parallel'], { cwd: repo, encoding: 'utf8', timeout: 230_000 });
    expect(result.status, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    const parallel = report.parallel;
    expect(parallel.arrangements.map((a: { name: string }) => a.name)).toEqual(['two VMs, one thread', 'two VMs, two workers', 'one VM, host thread', 'one VM, one worker']);
    const [oneThread, twoWorkers, hostOne, workerOne] = parallel.arrangements;
    // Every VM ran to its budget: two VMs retire twice what one does.
    expect(oneThread.instructions).toBe(2 * parallel.instructionsPerVm);
    expect(twoWorkers.instructions).toBe(2 * parallel.instructionsPerVm);
    expect(hostOne.instructions).toBe(parallel.instructionsPerVm);
    expect(workerOne.instructions).toBe(parallel.instructionsPerVm);
    for (const a of parallel.arrangements) {
      expect(a.wallMs).toBeGreaterThan(0);
      expect(a.cpuMs).toBeGreaterThan(0);
      expect(a.mips).toBeCloseTo(a.instructions / a.wallMs / 1000, 6);
    }
    expect(parallel.twoWorkersSpeedup).toBeCloseTo(twoWorkers.mips / oneThread.mips, 6);
    expect(parallel.oneWorkerRatio).toBeCloseTo(workerOne.mips / hostOne.mips, 6);
    const sharing = parallel.sharing;
    for (const key of ['exportUs', 'importUs', 'crossBreakUs', 'shareUs', 'localBreakUs']) expect(sharing[key]).toBeGreaterThan(0);
    expect(parallel.placement.scenarios.map((s: { name: string }) => s.name)).toContain('steady mix');
    const names = report.checks.map((c: { name: string }) => c.name);
    expect(names).toContain('parallel: aggregate MIPS, two CPU-bound VMs in two workers / in one thread');
  }, 240_000);
});
