/**
 * Smoke test of `npm run bench`: it runs (with --quick), verifies guest results, its output has
 * the promised shape, and the comparisons it reports point the way they must by construction
 * (fewer walks with a technique on, more pages in a larger guest, a maximum above its median…).
 * Speeds and times are never asserted: the bench is not a test, and the machine is shared.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { verifyAgainstJs, median } from '../../bench/harness.ts';
import type { GuestRun, JsRun, MmuCounters } from '../../bench/harness.ts';
import { expectedLines, programArgs } from '../../bench/nanokernel-model.ts';
import { formatReport, type BenchReport } from '../../bench/run.ts';
import { TRANSLATION_WORKLOADS } from '../../bench/translation.ts';
import type { Stall, Timing } from '../../bench/state.ts';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

function bench(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(tsx, ['bench/run.ts', ...args], { cwd: repo, encoding: 'utf8', timeout: 230_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('npm run bench', () => {
  it('--quick --json prints one JSON object with every workload, variant and check, its ratios pointing the right way', () => {
    const { status, stdout, stderr } = bench('--quick', '--json');
    expect(status, stderr).toBe(0);
    expect(stderr).toBe(''); // not a terminal: no progress
    const report = JSON.parse(stdout);
    expect(Object.keys(report)).toEqual(['machine', 'method', 'workloads', 'translation', 'warmup', 'state', 'api', 'checks']);
    expect(report.machine.node).toBe(process.version);
    expect(report.machine.v8).toBe('compiled at first call');
    for (const when of ['start', 'end']) {
      expect(report.machine.load[when]).toHaveLength(3);
      for (const value of report.machine.load[when]) expect(value).toBeGreaterThanOrEqual(0);
    }
    expect(report.method).toMatchObject({ quick: true, statistic: 'median' });
    expect(report.workloads.map((w: { name: string }) => w.name)).toEqual(['crc32', 'prefix-sum', 'walker', 'mulh']);
    for (const workload of report.workloads) {
      expect(workload.js.medianMs).toBeGreaterThan(0);
      expect(workload.js.cpuMs).toBeGreaterThanOrEqual(0);
      expect(workload.js.runsMs).toHaveLength(report.method.runs);
      expect(typeof workload.pagingCost).toBe('number');
      expect(typeof workload.pagingCostCpu).toBe('number');
      expect(workload.variants.map((v: { variant: string }) => v.variant)).toEqual(['paging=off', 'paging=on', 'jit paging=off', 'jit paging=on']);
      for (const variant of workload.variants) {
        expect(Object.keys(variant).sort()).toEqual(VARIANT_KEYS);
        expect(Object.keys(variant.mmu).sort()).toEqual(MMU_KEYS);
        expect(variant.instructions).toBeGreaterThan(0);
        expect(variant.runsMs).toHaveLength(report.method.runs);
        expect(Number.isFinite(variant.mips) && variant.mips > 0).toBe(true);
        expect(Number.isFinite(variant.ratio) && variant.ratio > 0).toBe(true);
        expect(variant.cpuMs).toBeGreaterThanOrEqual(0);
        expect(variant.tlbMisses).toBeGreaterThan(0);
        // The median lies within the runs.
        expect(variant.medianMs).toBeGreaterThanOrEqual(Math.min(...variant.runsMs));
        expect(variant.medianMs).toBeLessThanOrEqual(Math.max(...variant.runsMs));
      }
      const [off, on, jitOff, jitOn] = workload.variants;
      // Page walks happen only with paging on; turning paging on costs a few instructions.
      expect(off.pageWalks).toBe(0);
      expect(on.pageWalks).toBeGreaterThan(0);
      expect(on.instructions).toBeGreaterThan(off.instructions);
      // The compiled tier retires exactly the interpreter's instructions, and says what it compiled.
      expect([jitOff.instructions, jitOn.instructions]).toEqual([off.instructions, on.instructions]);
      expect(jitOn.guestStats.jitRegions).toBeGreaterThan(0);
      expect(typeof workload.jitSpeedup).toBe('number');
      expect(typeof workload.jitPagingCost).toBe('number');
    }
    // The warm-up curve: both tiers from a cold start, windows ending in order at the guest's exit.
    expect(report.warmup.map((w: { workload: string }) => w.workload)).toEqual(['crc32', 'prefix-sum', 'walker', 'mulh']);
    for (const curve of report.warmup) {
      const workload = report.workloads.find((w: { name: string }) => w.name === curve.workload);
      const ends = curve.windows.map((w: { end: number }) => w.end);
      expect(ends.length).toBeGreaterThan(0);
      expect([...ends].sort((a, b) => a - b)).toEqual(ends);
      expect(ends.at(-1)).toBe(workload.variants[3].instructions);
      for (const window of curve.windows) {
        for (const tier of [window.interp, window.jit]) expect(tier.mips).toBeGreaterThan(0);
        expect(window.jit.compiledShare).toBeGreaterThanOrEqual(0);
        expect(window.jit.compiledShare).toBeLessThanOrEqual(1);
      }
      // The first window compiles (nothing was compiled before it).
      expect(curve.windows[0].jit.compileMs).toBeGreaterThan(0);
    }
    expectTranslationSection(report.translation);
    expectStateSection(report.state);
    expectApiSection(report.api);
    expect(report.checks.map((c: { name: string }) => c.name)).toEqual([
      'crc32 paging=on guest MIPS',
      'crc32 paging cost',
      'prefix-sum paging cost',
      'walker paging cost',
      'mulh paging cost',
      'context-switch walks, no traces ÷ traces',
      'context-switch TLB entries dropped by switch flushes (traces)',
      'checkpoint save throughput / plain write',
      'live snapshot pause, 16 MiB (ms)',
      'lazy restore to first instruction, 32 MiB (ms)',
      'lazy restore 32 MiB / 8 MiB',
      'fork, 32 MiB (ms)',
      'fork 32 MiB / 8 MiB, caches emptied before each',
      'guest MIPS, API polled 100/s by another process / unpolled',
      'guest MIPS, API polled 100/s by another process / unpolled, VMs in a worker group',
    ]);
    for (const check of report.checks) {
      expect(typeof check.pass).toBe('boolean');
      expect(check.load).toBeGreaterThanOrEqual(0);
    }
    // Time and speed figures carry their CPU-time counterpart.
    for (const check of report.checks.filter((c: { name: string }) => /\(ms\)$|MIPS$|cost$| \/ /.test(c.name))) expect(typeof check.cpuValue).toBe('number');
  });

  it('--only a translation workload prints its table, comparisons and PASS/FAIL lines', () => {
    const { status, stdout, stderr } = bench('--quick', '--only', 'context-switch');
    expect(status, stderr).toBe(0);
    expect(stdout).not.toMatch(/^crc32 /m);
    for (const variant of ['shadow', 'shadow no-traces', 'nested', 'shadow, flush=asid']) {
      expect(stdout).toMatch(new RegExp(`^context-switch +${variant} +[\\d.]+ M +[\\d.]+ +[\\d.]+ `, 'm'));
    }
    expect(stdout).toMatch(/^context-switch: [\d,]+ context switches \([\d,]+ timer preemptions\) per run$/m);
    expect(stdout).toMatch(/^context-switch +traces \(flushes elided\) vs flush everything +shadow no-traces → shadow +[\d,]+ → [\d,]+ +[\d.]+x /m);
    expect(stdout).toMatch(/^context-switch +4 KiB \(user\), 4 MiB \(kernel\) +nested → shadow /m);
    expect(stdout).toMatch(/^(PASS|FAIL) {2}context-switch walks, no traces ÷ traces: [\d.]+ \(target >= 5\)(, load [\d.]+ on \d+ cores)?$/m);
    expect(stdout).toMatch(/^(PASS|FAIL) {2}context-switch TLB entries dropped by switch flushes \(traces\): -?\d+ \(target = 0\)(, load [\d.]+ on \d+ cores)?$/m);
  });

  it('--only runs the chosen workloads; the header has the load, FAIL lines the load and CPU figures', () => {
    const { status, stdout, stderr } = bench('--quick', '--only', 'crc32,state,api');
    expect(status, stderr).toBe(0);
    expect(stdout).toMatch(/^load average \(1, 5, 15 min\) [\d.]+ [\d.]+ [\d.]+ at the start, [\d.]+ [\d.]+ [\d.]+ at the end, on \d+ cores$/m);
    expect(stdout).toMatch(/^workload +variant +instructions +guest ms +CPU ms +guest MIPS +JS ms +JS CPU ms /m);
    expect(stdout).toMatch(/^crc32 +paging=off /m);
    expect(stdout).toMatch(/^crc32 +paging=on /m);
    expect(stdout).toMatch(/^crc32 +jit paging=on /m);
    expect(stdout).toMatch(/^compiled tier, crc32: [\d.]+x the interpreter with paging on \(CPU [\d.]+x\)/m);
    expect(stdout).not.toMatch(/^walker /m);
    const load = '(, load [\\d.]+ on \\d+ cores)?';
    expect(stdout).toMatch(new RegExp(`^(PASS|FAIL) {2}crc32 paging=on guest MIPS: [\\d.]+ \\(target >= 150\\), CPU [\\d.]+${load}$`, 'm'));
    expect(stdout).toMatch(new RegExp(`^(PASS|FAIL) {2}crc32 paging cost: [+-][\\d.]+ % \\(target <= 15 %\\), CPU [+-][\\d.]+ %${load}$`, 'm'));
    // The VM-state section: every figure with its CPU time.
    for (const line of [
      /^ {4}raw checkpoint +[\d.]+ ms \(CPU [\d.]+; [\d.]+–[\d.]+, 2 runs\) +\d+ MB\/s/m,
      /^ {4}plain write \+ fsync +[\d.]+ ms \(CPU [\d.]+;/m,
      /^ {4}pause +[\d.]+ ms \(CPU [\d.]+;/m,
      /^ {6}longest stall +[\d.]+ ms \(worst [\d.]+; its window [\d.]+ ms, CPU [\d.]+\) \/ [\d.]+ ms/m,
      /^ {6}the finish \(fsync, rename\) +[\d.]+ ms/m,
      /^ {4}deferred, [\d,]+ shared pages of 32 MiB, per page: parent first store [\d.]+ µs \(CPU [\d.]+\), again [\d.]+ µs; child first store [\d.]+ µs/m,
      /^ {4}32 MiB +[\d.]+ ms \(CPU [\d.]+; [\d.]+–[\d.]+, 3 runs\) \/ [\d.]+ ms \(CPU/m,
      /^vm state: .*; V8 compiling at first call, as bytevisor's tools run/m,
      /^ {2}the same in a child process with Node's default V8 flags/m,
      /^ {4}live snapshot pause +[\d.]+ ms \(CPU [\d.]+;/m,
      /^ {4}fork 32 MiB +[\d.]+ ms \(CPU [\d.]+; [\d.]+–[\d.]+, 2 runs\); ratio [\d.]+, with emptied caches [\d.]+$/m,
      /^ {4}the same after emptying the CPU caches \(a 64 MiB write pass\): 8 MiB [\d.]+ ms \(CPU [\d.]+;.*, 32 MiB [\d.]+ ms \(CPU/m,
      /^ {4}ratio +[\d.]+ \(CPU [\d.]+\) with emptied caches; [\d.]+ right after the guests' loops$/m,
    ]) {
      expect(stdout).toMatch(line);
    }
    expect(stdout).toMatch(new RegExp(`^(PASS|FAIL) {2}fork, 32 MiB \\(ms\\): [\\d.]+ \\(target <= 0.2\\), CPU [\\d.]+${load}$`, 'm'));
    // The control-API section: round trips with the CPU time of both processes, windows with theirs.
    for (const line of [
      /^ {4}child process, new connection, guests running +median [\d.]+ ms, p99 [\d.]+ ms \([\d.]+–[\d.]+, 20 requests in [\d.]+ ms; host CPU [\d.]+ ms, client CPU [\d.]+ ms\)$/m,
      /^ {4}in-process, keep-alive connection, guests running +median [\d.]+ ms, p99 [\d.]+ ms \([\d.]+–[\d.]+, 10 requests in [\d.]+ ms; host CPU [\d.]+ ms\)$/m,
      /^ {4}unpolled +[\d.]+ MIPS \(by CPU [\d.]+; windows [\d.]+\) wall [\d.]+ ms, CPU [\d.]+ ms$/m,
      /^ {4}polled by a child process +[\d.]+ MIPS \(by CPU [\d.]+; windows [\d.]+\) wall [\d.]+ ms, CPU [\d.]+ ms, \d+ requests\/s answered, poller CPU [\d.]+ ms$/m,
      /^ {4}polled by a child process \/ unpolled +[\d.]+ \(CPU [\d.]+; rounds [\d.]+\)$/m,
      /^ {4}Host \/ plain loop +[\d.]+ \(CPU [\d.]+; rounds [\d.]+\)$/m,
    ]) {
      expect(stdout).toMatch(line);
    }
    expect(stdout).toMatch(new RegExp(`^(PASS|FAIL) {2}guest MIPS, API polled 100/s by another process / unpolled: [\\d.]+ \\(target >= 0.95\\), CPU [\\d.]+${load}$`, 'm'));
    expect(stdout).toMatch(/^ {6}polled by a child process +[\d.]+ MIPS \(by CPU [\d.]+; windows [\d.]+\) wall [\d.]+ ms, CPU [\d.]+ ms, \d+ requests\/s answered, poller CPU [\d.]+ ms; main thread CPU [\d.]+ ms, worker thread [\d.]+ ms \([\d.]+ MIPS by its CPU\)$/m);
    expect(stdout).toMatch(new RegExp(`^(PASS|FAIL) {2}guest MIPS, API polled 100/s by another process / unpolled, VMs in a worker group: [\\d.]+ \\(target >= 0.95\\), CPU [\\d.]+${load}$`, 'm'));
    for (const line of stdout.split('\n')) {
      if (line.startsWith('FAIL')) expect(line).toMatch(/, load [\d.]+ on \d+ cores$/);
      if (line.startsWith('PASS')) expect(line).not.toMatch(/load/);
    }
  });

  it('--only overcommit: balloon reclaim against plain madvise, the T-7 table whose counts point the way they must, and issue 11\'s experiments', () => {
    const { status, stdout, stderr } = bench('--quick', '--json', '--only', 'overcommit');
    expect(status, stderr).toBe(0);
    const report = JSON.parse(stdout);
    expect(Object.keys(report)).toEqual(['machine', 'method', 'workloads', 'translation', 'warmup', 'state', 'api', 'overcommit', 'policies', 'checks']);
    const { reclaim, squeeze } = report.overcommit;
    // Reclaim (64 MiB VM, 48 MiB heap): RSS fell by most of the heap; times carry their CPU time.
    expect(reclaim).toMatchObject({ vmBytes: 64 * 2 ** 20, heapBytes: 48 * 2 ** 20, targetPages: 12_288 });
    for (const timing of [reclaim.toRssDown, reclaim.toTarget, reclaim.plainMadvise]) expectTiming(timing, 1);
    expect(reclaim.toTarget.wallMs).toBeGreaterThanOrEqual(reclaim.toRssDown.wallMs);
    expect(reclaim.madviseMs).toBeLessThanOrEqual(reclaim.toTarget.wallMs);
    expect(reclaim.poolRssBeforeKiB - reclaim.poolRssAfterKiB).toBeGreaterThan(0.9 * 48 * 1024);
    expect(reclaim.ratio).toBeCloseTo(reclaim.toRssDown.wallMs / reclaim.plainMadvise.wallMs, 2);
    // The squeeze table: a baseline, then listen and deaf at each squeeze point.
    expect(squeeze.rows.map((r: any) => [r.label, r.mode, r.driver])).toEqual([
      ['no squeeze', 'deaf', 'bench'], ['cache full', 'listen', 'bench'], ['cache full', 'deaf', 'bench'], ['half full', 'listen', 'bench'], ['half full', 'deaf', 'bench'],
      ['cache full', 'listen', 'scheduler'], ['cache full', 'deaf', 'scheduler'], ['half full', 'listen', 'scheduler'], ['half full', 'deaf', 'scheduler'],
    ]);
    const [baseline, fullListen, fullDeaf, halfListen, halfDeaf, ...byScheduler] = squeeze.rows;
    // Squeezed by the memory scheduler: listen never swapped, deaf swapped, nobody killed.
    for (const row of byScheduler) expect(row.oomKills).toBe(0);
    expect(byScheduler[0].swapOuts).toBe(0);
    expect(byScheduler[1].swapOuts).toBeGreaterThan(0);
    expect(baseline).toMatchObject({ oomKills: 0, swapOuts: 0, instructionsRatio: 1, balloonActual: 0 });
    for (const listen of [fullListen, halfListen]) expect(listen).toMatchObject({ oomKills: 0, swapOuts: 0, swapIns: 0, balloonActual: squeeze.targetPages });
    expect(fullDeaf.swapOuts).toBeGreaterThan(0);
    expect(fullDeaf.balloonActual).toBeLessThan(squeeze.targetPages);
    expect(halfDeaf).toMatchObject({ oomKills: 1, hitRate: null, entries: null });
    expect(fullListen.hitRate).toBeLessThan(baseline.hitRate);
    for (const row of squeeze.rows) expectTiming(row.run, 1);
    expect(report.checks.map((c: { name: string; pass: boolean }) => [c.name, c.pass])).toEqual([
      ['balloon reclaim, 48 MiB of a 64 MiB VM: target change to RSS down (ms)', reclaim.toRssDown.wallMs <= 200],
      ['T-7 squeeze, kvcache listen: OOM kills + hypervisor swap-outs', true],
      ['T-7 squeeze (cache full), hypervisor swap-outs, deaf / listen', true],
      ['T-7 squeeze by the memory scheduler (cache full), hypervisor swap-outs, deaf / listen', true],
      ['idle tax: frames of the idle VM at the end, τ 0.75 / τ 0', true],
      ["idle tax: the active VM's work rate, τ 0.75 / τ 0", expect.any(Boolean)],
      ['active memory: worst |estimate − truth| at steady state (10 / 50 / 90 % walkers), points', expect.any(Boolean)],
      [expect.stringMatching(/^MRC accuracy: workloads \(of 3\) with MAE ≤ 0.01 at 1 % sampling on every seed/), expect.any(Boolean)],
      [expect.stringMatching(/^MRC guest slowdown/), expect.any(Boolean)],
      [expect.stringMatching(/^Sizing from the MRC/), expect.any(Boolean)],
    ]);
    // Issue 11: with the tax the idle VM holds fewer frames and the active one more.
    const [plain, taxed] = report.policies.idleTax.runs;
    expect([plain.taxRate, taxed.taxRate]).toEqual([0, 0.75]);
    expect(taxed.idleFrames).toBeLessThan(plain.idleFrames);
    expect(taxed.activeFrames).toBeGreaterThan(plain.activeFrames);
    expect(report.policies.activeMemory.accuracy.map((row: { nominal: number }) => Math.round(row.nominal * 100))).toEqual([10, 50, 90]);
    expect(report.policies.mrc.accuracy.length).toBeGreaterThan(0);
    // The text: the reclaim lines and the table.
    const text = formatReport(report);
    expect(text).toMatch(/^ {4}target change → RSS down 95 % +[\d.]+ ms \(CPU [\d.]+; [\d.]+–[\d.]+, 1 runs\)$/m);
    expect(text).toMatch(/^ {4}target change → target reached [\d.]+ ms \(CPU [\d.]+;.*\); of it in madvise [\d.]+ ms \([\d,]+ calls\)/m);
    expect(text).toMatch(/^ {4}plain madvise of 48 MiB in one call, baseline [\d.]+ ms \(CPU [\d.]+;.*; reclaim \/ baseline [\d.]+ \(CPU [\d.]+\)$/m);
    expect(text).toMatch(/^ {4}squeeze +by +kvcache +OOM kills +swap-outs +swap-ins +hit rate +instructions /m);
    expect(text).toMatch(/^ {4}half full +bench +deaf +1 +0 +0 +- +[\d,]+ +[\d.]+ +killed /m);
    expect(text).toMatch(/^ {4}half full +scheduler +deaf +0 +[1-9][\d,]* /m);
    expect(text).toMatch(/^memory overcommit, part 2 \(issue 11\)/m);
    expect(text).toMatch(/^ {4}0\.75 +[\d,]+ +[\d,]+ +[\d.]+ \([\d.]+\)/m);
  }, 240_000); // a quick run takes ~20 s alone, several times that beside two other test runs

  it('refuses an unknown workload with one error line', () => {
    const { status, stdout, stderr } = bench('--only', 'nope');
    expect(status).toBe(1);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toEqual(["error: unknown workload 'nope' (known: crc32, prefix-sum, walker, mulh, context-switch, seq-scan, random-access, state, api, sharing, overcommit, errors, migration, ha, parallel, io)"]);
  });

  it('--only errors: the upkeep of each recovery method against none, and recovery latencies', () => {
    const { status, stdout, stderr } = bench('--quick', '--json', '--only', 'errors');
    expect(status, stderr).toBe(0);
    const { errors } = JSON.parse(stdout);
    expect(errors.keeping.map((k: { label: string }) => k.label)).toEqual(['none', 'parity N=8 /1M', 'parity N=16 /1M', 'parity N=8 /4M', 'parity N=16 /4M', 'hash /1M', 'hash /4M']);
    expect(errors.keeping[0]).toMatchObject({ writeExits: 0, hostBytes: 0 });
    // Refreshing four times less often takes (about) four times fewer write exits.
    expect(errors.keeping[3].writeExits).toBeLessThan(errors.keeping[1].writeExits / 2);
    for (const method of ['clean-copy', 'parity N=8', 'hash (16 bits)']) expect(errors.latencyUs[method]).toBeGreaterThan(0);
    expect(formatReport(JSON.parse(stdout))).toMatch(/^memory errors: walker 8M seq \d+ /m);
  });
});

describe('bench harness', () => {
  const run = (result: number, memory: Uint8Array | null = null): GuestRun => ({
    ms: 1, cpuMs: 1, instructions: 1, result, memory, tlbMisses: 0, pageWalks: 0, mmu: zeroCounters(), guestStats: {},
  });
  const js = (result: number, memory: Uint8Array | null = null): JsRun => ({ ms: 1, cpuMs: 1, result, memory });

  it('treats a guest result that differs from plain JS as an error', () => {
    expect(() => verifyAgainstJs('w', run(7), js(7))).not.toThrow();
    expect(() => verifyAgainstJs('w', run(7), js(8))).toThrow(/guest computed 0x7, plain JS 0x8/);
    expect(() => verifyAgainstJs('w', run(7, Uint8Array.of(1, 2, 3)), js(7, Uint8Array.of(1, 9, 3)))).toThrow(/at byte 1/);
  });

  it('takes the median', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  it('prints the load next to a FAIL line, and the CPU-time figure next to every figure that has one', () => {
    const report: BenchReport = {
      machine: { cpu: 'test cpu', cores: 2, memoryGiB: 1, platform: 'linux x64', node: 'v20', date: '2026-01-01T00:00:00Z', v8: 'node defaults', load: { start: [0.5, 0.4, 0.3], end: [3.5, 1, 0.5] } },
      method: { warmups: 1, runs: 2, quick: true, statistic: 'median' },
      workloads: [],
      translation: { workloads: [], techniques: [], shadowVsNested: [] },
      warmup: [],
      state: null,
      api: null,
      checks: [
        { name: 'fork, 1024 MiB (ms)', target: '<= 0.2', value: 3.21, cpuValue: 1.5, pass: false, load: 3.5 },
        { name: 'fork 1024 MiB / 64 MiB', target: '<= 1.5', value: 1.2, pass: true, load: 0.25 },
      ],
    };
    const lines = formatReport(report).split('\n');
    expect(lines).toContain('load average (1, 5, 15 min) 0.5 0.4 0.3 at the start, 3.5 1 0.5 at the end, on 2 cores');
    expect(lines).toContain('FAIL  fork, 1024 MiB (ms): 3.210 (target <= 0.2), CPU 1.500, load 3.50 on 2 cores');
    expect(lines).toContain('PASS  fork 1024 MiB / 64 MiB: 1.200 (target <= 1.5)');
  });
});

describe('nanokernel model', () => {
  it('predicts the documented output of the default walker and sieve (docs/nanokernel.md)', () => {
    expect(expectedLines({ program: 'walker', size: 4 * 2 ** 20, pattern: { kind: 'random' }, passes: 2 }, 3)).toEqual([
      'walker: 4194304 bytes, random, 2 passes, 131072 accesses, checksum 0x6a73d5d1',
      '[kernel] pid 3 (walker) exited with code 0',
    ]);
    expect(expectedLines({ program: 'sieve', n: 100_000 }, 1)[0]).toBe('sieve: 9592 primes up to 100000');
    expect(expectedLines({ program: 'ping', n: 2 }, 4)).toEqual(['ping 4: 1/2', 'ping 4: 2/2', '[kernel] pid 4 (ping) exited with code 0']);
    expect(programArgs({ program: 'walker', size: 4096, pattern: { kind: 'stride', stride: 64 }, passes: 3 })).toBe('walker 4096 stride:64 3');
  });

  it('rejects a nanokernel run whose output differs from the model', () => {
    const workload = TRANSLATION_WORKLOADS.find((w) => w.name === 'context-switch')!;
    const js = { ms: 1, cpuMs: 1, result: 0, memory: null, lines: ['sieve: 4 primes up to 10', '[kernel] pid 1 (sieve) exited with code 0'] };
    const guest = (exitCode: number, text: string): GuestRun => ({
      ms: 1, cpuMs: 1, instructions: 1, result: exitCode, memory: null, tlbMisses: 0, pageWalks: 0, mmu: zeroCounters(), guestStats: {}, console: text,
    });
    const banner = 'nanokernel: 64 MiB RAM, 1 vCPU, 4 devices\n[kernel] started pid 1 asid 1: sieve 10\n';
    const good = `${banner}sieve: 4 primes up to 10\n[kernel] pid 1 (sieve) exited with code 0\n[kernel] power off, exit code 0\n`;
    expect(() => workload.verify(null, 'shadow', guest(0, good), js)).not.toThrow();
    expect(() => workload.verify(null, 'shadow', guest(2, good), js)).toThrow(/exited with code 2, expected 0/);
    expect(() => workload.verify(null, 'shadow', guest(0, good.replace('4 primes', '5 primes')), js)).toThrow(/differs from the JS model/);
    expect(() => workload.verify(null, 'shadow', guest(0, good.replace('[kernel] pid 1 (sieve) exited with code 0\n', '')), js)).toThrow(/differs/);
    expect(() => workload.verify(null, 'shadow', guest(0, `${good}sieve: 4 primes up to 10\n`), js)).toThrow(/differs/);
  });
});

const VARIANT_KEYS = ['cpuMips', 'cpuMs', 'guestStats', 'instructions', 'jsEquivalentMips', 'medianMs', 'mips', 'mmu', 'pageWalks', 'ratio', 'runsMs', 'tlbMisses', 'variant'];
const MMU_KEYS = Object.keys(zeroCounters()).sort();

function zeroCounters(): MmuCounters {
  return {
    walks: 0, shadowHits: 0, largeHits: 0, batchFilled: 0, flushesElided: 0, flushesFull: 0, translationsInvalidated: 0, tlbFullFlushes: 0, hostRuns: 0, interrupts: 0,
  };
}

interface VariantJson {
  variant: string;
  instructions: number;
  mips: number;
  runsMs: number[];
  tlbMisses: number;
  mmu: MmuCounters;
  guestStats: Record<string, number>;
}

/**
 * report.translation: its shape, and the directions that hold by construction whatever the
 * timing — the MMU configuration never changes what the guest executes, shadow tables and
 * batching only ever answer misses that would otherwise be walks, large pages need fewer walks
 * than 4 KiB pages. Speeds are never asserted.
 */
function expectTranslationSection(translation: {
  workloads: { name: string; variants: VariantJson[] }[];
  techniques: { workload: string; label: string; walkRatio: number; mipsRatio: number }[];
  shadowVsNested: { workload: string; label: string; baseline: { variant: string }; candidate: { variant: string } }[];
}): void {
  expect(Object.keys(translation)).toEqual(['workloads', 'techniques', 'shadowVsNested']);
  expect(translation.workloads.map((w) => [w.name, w.variants.map((v) => v.variant)])).toEqual([
    ['context-switch', ['shadow', 'shadow no-traces', 'nested', 'shadow, flush=asid']],
    ['seq-scan', ['shadow batch=16', 'shadow batch=0', 'nested']],
    ['random-access', ['shadow large', 'shadow 4K', 'nested large', 'nested 4K']],
  ]);
  for (const workload of translation.workloads) {
    for (const variant of workload.variants) {
      expect(Object.keys(variant).sort()).toEqual(VARIANT_KEYS);
      expect(Object.keys(variant.mmu).sort()).toEqual(MMU_KEYS);
      expect(variant.instructions).toBeGreaterThan(0);
      expect(Number.isFinite(variant.mips) && variant.mips > 0).toBe(true);
      expect(variant.mmu.walks).toBeGreaterThan(0);
    }
  }
  const v = (workload: string, variant: string): VariantJson => translation.workloads.find((w) => w.name === workload)!.variants.find((x) => x.variant === variant)!;
  // The nanokernel reports its context switches in every variant.
  for (const variant of translation.workloads[0]!.variants) {
    expect(Object.keys(variant.guestStats).sort()).toEqual(['contextSwitches', 'pageFaults', 'preemptions', 'syscalls']);
    expect(variant.guestStats['contextSwitches']).toBeGreaterThan(0);
  }
  // Context switches: the three flush=always variants run the same guest instructions; traces
  // elide every guest flush and only ever save walks; nested mode has no shadow; the kernel
  // that flushes nothing makes the MMU flush nothing.
  const cs = { traces: v('context-switch', 'shadow'), noTraces: v('context-switch', 'shadow no-traces'), nested: v('context-switch', 'nested'), asid: v('context-switch', 'shadow, flush=asid') };
  expect(cs.noTraces.instructions).toBe(cs.traces.instructions);
  expect(cs.nested.instructions).toBe(cs.traces.instructions);
  expect(cs.traces.guestStats['contextSwitches']).toBe(cs.noTraces.guestStats['contextSwitches']);
  expect(cs.traces.mmu.flushesElided).toBe(cs.traces.guestStats['contextSwitches']);
  expect(cs.traces.mmu.flushesFull).toBe(0);
  expect(cs.noTraces.mmu.flushesElided).toBe(0);
  expect(cs.noTraces.mmu.flushesFull).toBe(cs.noTraces.guestStats['contextSwitches']);
  expect(cs.asid.mmu.flushesElided + cs.asid.mmu.flushesFull).toBe(0);
  expect(cs.traces.mmu.walks).toBeLessThan(cs.noTraces.mmu.walks);
  expect(cs.traces.mmu.walks).toBeLessThan(cs.nested.mmu.walks);
  expect(cs.nested.mmu.shadowHits).toBe(0);
  // Sequential scan: same instructions; batching turns walks into shadow hits (one walk per
  // group of 16 at most); without batching nothing is batch-filled.
  const scan = { batched: v('seq-scan', 'shadow batch=16'), unbatched: v('seq-scan', 'shadow batch=0'), nested: v('seq-scan', 'nested') };
  expect(scan.unbatched.instructions).toBe(scan.batched.instructions);
  expect(scan.nested.instructions).toBe(scan.batched.instructions);
  expect(scan.unbatched.mmu.batchFilled).toBe(0);
  expect(scan.batched.mmu.batchFilled).toBeGreaterThan(0);
  expect(scan.batched.mmu.walks * 8).toBeLessThanOrEqual(scan.unbatched.mmu.walks);
  expect(scan.unbatched.mmu.walks).toBeLessThanOrEqual(scan.nested.mmu.walks);
  // Random access: shadow and nested run the same guest for a page size; large pages need
  // fewer walks in both modes, are the only ones with large hits and host runs.
  const random = { shadowLarge: v('random-access', 'shadow large'), shadowSmall: v('random-access', 'shadow 4K'), nestedLarge: v('random-access', 'nested large'), nestedSmall: v('random-access', 'nested 4K') };
  expect(random.nestedLarge.instructions).toBe(random.shadowLarge.instructions);
  expect(random.nestedSmall.instructions).toBe(random.shadowSmall.instructions);
  expect(random.shadowLarge.mmu.walks).toBeLessThan(random.shadowSmall.mmu.walks);
  expect(random.nestedLarge.mmu.walks).toBeLessThan(random.nestedSmall.mmu.walks);
  expect(random.shadowLarge.mmu.walks).toBeLessThanOrEqual(random.nestedLarge.mmu.walks);
  expect(random.shadowSmall.mmu.walks).toBeLessThan(random.nestedSmall.mmu.walks);
  for (const large of [random.shadowLarge, random.nestedLarge]) {
    expect(large.mmu.largeHits).toBeGreaterThan(0);
    expect(large.mmu.hostRuns).toBeGreaterThan(0);
  }
  for (const small of [random.shadowSmall, random.nestedSmall]) {
    expect(small.mmu.largeHits).toBe(0);
    expect(small.mmu.hostRuns).toBe(0);
  }
  expect(translation.techniques.map((c) => [c.workload, c.label])).toEqual([
    ['context-switch', 'traces (flushes elided) vs flush everything'],
    ['seq-scan', 'batched population (16) vs none'],
    ['random-access', 'large pages vs 4 KiB pages, shadow'],
    ['random-access', 'large pages vs 4 KiB pages, nested'],
  ]);
  // Every technique saves walks.
  for (const comparison of translation.techniques) {
    expect(comparison.walkRatio).toBeGreaterThan(1);
    expect(comparison.mipsRatio).toBeGreaterThan(0);
  }
  expect(translation.shadowVsNested.map((c) => [c.workload, c.baseline.variant, c.candidate.variant])).toEqual([
    ['context-switch', 'nested', 'shadow'],
    ['seq-scan', 'nested', 'shadow batch=16'],
    ['random-access', 'nested large', 'shadow large'],
    ['random-access', 'nested 4K', 'shadow 4K'],
  ]);
}

/**
 * report.api at --quick sizes (one round of 150 ms windows, 20 and 10 requests): the shape, and
 * what holds by construction — percentiles in order, requests answered only when polled, the
 * ratios the quotients of the windows' figures. Speeds, times and the target are never asserted.
 */
function expectApiSection(api: any): void {
  expect(Object.keys(api)).toEqual(['setup', 'latency', 'polling', 'scheduler', 'workerGroup']);
  expect(api.setup).toMatchObject({ vms: 4, program: 'walker 64K random 0', pollHz: 100, windowMs: 150 });
  expect(api.latency.map((l: any) => [l.client, l.connection, l.guests, l.requests])).toEqual([
    ['child process', 'new', 'running', 20],
    ['child process', 'keep-alive', 'running', 10],
    ['in-process', 'new', 'running', 10],
    ['in-process', 'keep-alive', 'running', 10],
    ['child process', 'new', 'paused', 10],
    ['child process', 'keep-alive', 'paused', 10],
  ]);
  for (const l of api.latency) {
    expect(l.minMs).toBeGreaterThan(0);
    expect(l.medianMs).toBeGreaterThanOrEqual(l.minMs);
    expect(l.p99Ms).toBeGreaterThanOrEqual(l.medianMs);
    expect(l.maxMs).toBeGreaterThanOrEqual(l.p99Ms);
    expect(l.wallMs).toBeGreaterThanOrEqual(l.maxMs);
    expect(l.hostCpuMs).toBeGreaterThanOrEqual(0);
    if (l.client === 'in-process') expect(l.clientCpuMs).toBeNull();
    else expect(l.clientCpuMs).toBeGreaterThanOrEqual(0);
  }
  const { polling, scheduler } = api;
  expect(Object.keys(polling)).toEqual(['hostCpuMsPerRequest', 'predictedCost', 'unpolled', 'polledByChild', 'polledInProcess', 'polledKeepAlive', 'child', 'inProcess', 'keepAlive']);
  expect(polling.hostCpuMsPerRequest).toBeGreaterThanOrEqual(0);
  expect(polling.predictedCost).toBeCloseTo((polling.hostCpuMsPerRequest * 100) / 1000, 3);
  const windows = [polling.unpolled, polling.polledByChild, polling.polledInProcess, polling.polledKeepAlive, scheduler.host, scheduler.plain];
  expect(windows.map((w: any) => w.side)).toEqual(['unpolled', 'polled by a child process', 'polled in-process', 'polled by a child, keep-alive', 'Host scheduler', 'plain hv.run loop']);
  for (const w of windows) {
    expect(w.windows).toBe(1);
    expect(w.mipsRuns).toHaveLength(1);
    expect(w.cpuMipsRuns).toHaveLength(1);
    expect(w.mips).toBeGreaterThan(0);
    expect(w.cpuMips).toBeGreaterThan(0);
    expect(w.wallMs).toBeGreaterThan(0);
  }
  // Requests are answered in polled windows only; only the child poller has a CPU time of its own.
  for (const w of [polling.unpolled, scheduler.host, scheduler.plain]) expect(w.requestsPerSecond).toBe(0);
  for (const w of [polling.polledByChild, polling.polledInProcess, polling.polledKeepAlive]) expect(w.requestsPerSecond).toBeGreaterThan(0);
  expect(polling.polledByChild.clientCpuMs).toBeGreaterThanOrEqual(0);
  expect(polling.polledKeepAlive.clientCpuMs).toBeGreaterThanOrEqual(0);
  expect(polling.polledInProcess.clientCpuMs).toBeNull();
  for (const [ratio, candidate, baseline] of [
    [polling.child, polling.polledByChild, polling.unpolled],
    [polling.inProcess, polling.polledInProcess, polling.unpolled],
    [polling.keepAlive, polling.polledKeepAlive, polling.unpolled],
    [scheduler.ratio, scheduler.host, scheduler.plain],
  ]) {
    expect(ratio.wallRuns).toHaveLength(1);
    expect(ratio.wall).toBeCloseTo(candidate.mipsRuns[0] / baseline.mipsRuns[0], 2);
    expect(ratio.cpu).toBeCloseTo(candidate.cpuMipsRuns[0] / baseline.cpuMipsRuns[0], 2);
  }
  // The same VMs in one worker group: the child's round trips, the forwarding alone, its windows and ratios.
  const group = api.workerGroup;
  expect(Object.keys(group)).toEqual(['group', 'cpus', 'latency', 'forward', 'unpolled', 'polledByChild', 'polledKeepAlive', 'child', 'keepAlive']);
  expect(group.group).toBe('guests');
  expect(group.cpus.length).toBeGreaterThan(0);
  expect(group.latency.map((l: any) => [l.client, l.connection, l.guests, l.requests])).toEqual([
    ['child process', 'new', 'running', 20],
    ['child process', 'keep-alive', 'running', 10],
    ['child process', 'new', 'paused', 10],
    ['child process', 'keep-alive', 'paused', 10],
  ]);
  for (const l of group.latency) {
    expect(l.p99Ms).toBeGreaterThanOrEqual(l.medianMs);
    expect(l.maxMs).toBeGreaterThanOrEqual(l.p99Ms);
    expect(l.clientCpuMs).toBeGreaterThanOrEqual(0);
  }
  expect(group.forward.map((f: any) => [f.guests, f.calls])).toEqual([['running', 10], ['paused', 10]]);
  for (const f of group.forward) {
    expect(f.p99Ms).toBeGreaterThanOrEqual(f.medianMs);
    expect(f.maxMs).toBeGreaterThanOrEqual(f.meanMs);
  }
  const groupWindows = [group.unpolled, group.polledByChild, group.polledKeepAlive];
  expect(groupWindows.map((w: any) => w.side)).toEqual(['worker group, unpolled', 'worker group, polled by a child process', 'worker group, polled by a child, keep-alive']);
  for (const w of groupWindows) {
    expect(w.windows).toBe(1);
    expect(w.mips).toBeGreaterThan(0);
    expect(w.workerThreadCpuMs).toBeGreaterThanOrEqual(0);
    expect(w.mainThreadCpuMs).toBeGreaterThanOrEqual(0);
  }
  expect(group.unpolled.requestsPerSecond).toBe(0);
  for (const w of [group.polledByChild, group.polledKeepAlive]) {
    expect(w.requestsPerSecond).toBeGreaterThan(0);
    expect(w.clientCpuMs).toBeGreaterThanOrEqual(0);
  }
  for (const [ratio, candidate] of [[group.child, group.polledByChild], [group.keepAlive, group.polledKeepAlive]]) {
    expect(ratio.wall).toBeCloseTo(candidate.mipsRuns[0] / group.unpolled.mipsRuns[0], 2);
    expect(ratio.cpu).toBeCloseTo(candidate.cpuMipsRuns[0] / group.unpolled.cpuMipsRuns[0], 2);
  }
}

/** A figure: median within its runs, as many runs as --quick takes, CPU time reported. */
function expectTiming(timing: Timing, runs: number): void {
  expect(Object.keys(timing).sort()).toEqual(['cpuMs', 'load', 'maxWallMs', 'minWallMs', 'runs', 'wallMs']);
  expect(timing.runs).toBe(runs);
  expect(timing.minWallMs).toBeGreaterThan(0);
  expect(timing.wallMs).toBeGreaterThanOrEqual(timing.minWallMs);
  expect(timing.maxWallMs).toBeGreaterThanOrEqual(timing.wallMs);
  expect(timing.cpuMs).toBeGreaterThanOrEqual(0);
  expect(timing.load).toBeGreaterThanOrEqual(0);
}

/** A stall lies inside its CPU-sampling window, and the worst round is at least the median. */
function expectStall(stall: Stall): void {
  expect(stall.wallMs).toBeGreaterThan(0);
  expect(stall.maxWallMs).toBeGreaterThanOrEqual(stall.wallMs);
  expect(stall.windowWallMs).toBeGreaterThanOrEqual(stall.wallMs);
  expect(stall.windowCpuMs).toBeGreaterThanOrEqual(0);
}

/** The guests' data pages (bench/guests/state.s: everything above the page tables). */
const dataPages = (bytes: number): number => (bytes - (0x3000 + bytes / 1024)) / 4096;

/**
 * report.state at --quick sizes (16 MiB snapshot and save, 8 and 32 MiB fork and lazy restore):
 * the shape, and what holds by construction — sizes order the page counts, a longest stall is
 * at least every stall of its round, reaching the first instruction includes the restore.
 */
function expectStateSection(state: any, inChild = false): void {
  // The bench compiles at first call, as the tools do; its state section measures everything
  // again in a child process with Node's defaults (kernel/v8-tuning.ts).
  if (!inChild) {
    expect(Object.keys(state)).toEqual(['v8', 'nodeDefaults', 'save', 'snapshot', 'fork', 'lazyRestore']);
    expect(state.v8).toBe('compiled at first call');
    expect(state.nodeDefaults.v8).toBe('node defaults');
    expectStateSection(state.nodeDefaults, true);
  } else {
    expect(Object.keys(state)).toEqual(['v8', 'save', 'snapshot', 'fork', 'lazyRestore']);
  }
  const MiB = 2 ** 20;
  // Save: the plain write writes all of memory; the checkpoint stores at least every data page.
  const { save } = state;
  expect(save.guestBytes).toBe(16 * MiB);
  expect(save.plainBytes).toBe(save.guestBytes);
  expect(save.checkpointFileBytes).toBeGreaterThanOrEqual(dataPages(save.guestBytes) * 4096);
  expectTiming(save.checkpoint, 2);
  expectTiming(save.plainWrite, 2);
  expect(save.ratio).toBeCloseTo(save.plainWrite.wallMs / save.checkpoint.wallMs, 2);
  expect(save.checkpointMBps).toBeCloseTo(16 / (save.checkpoint.wallMs / 1000), 0);
  // Live snapshot: every page saved, some because the guest was about to store to them; both
  // store loops store to every data page twice; the longest stall bounds the others.
  const { snapshot } = state;
  expect(snapshot.guestBytes).toBe(16 * MiB);
  expectTiming(snapshot.pause, 2);
  expect(snapshot.servicePauseMs).toBeGreaterThan(0);
  expect(snapshot.during.savedByWrites).toBeGreaterThan(0);
  expect(snapshot.during.savedByWrites + snapshot.during.savedByTicker).toBe(snapshot.guestBytes / 4096);
  for (const loop of [snapshot.during, snapshot.baseline]) {
    expect(loop.stores).toBe(2 * dataPages(snapshot.guestBytes));
    expectTiming(loop.run, 2);
    expect(loop.medianGapUs).toBeGreaterThan(0);
    for (const stall of [loop.firstStore, loop.longest]) expectStall(stall);
    expect(loop.longest.wallMs).toBeGreaterThanOrEqual(loop.firstStore.wallMs);
    expect(loop.longest.wallMs * 1000).toBeGreaterThanOrEqual(loop.medianGapUs);
    expect(loop.run.wallMs).toBeGreaterThanOrEqual(loop.longest.wallMs);
  }
  for (const stall of [snapshot.during.finish, snapshot.during.longestOther]) {
    expectStall(stall);
    expect(snapshot.during.longest.wallMs).toBeGreaterThanOrEqual(stall.wallMs);
  }
  // Fork: the large guest has more pages; the deferred stores ran on half its data pages at most.
  const { fork } = state;
  for (const [side, bytes] of [['small', 8 * MiB], ['large', 32 * MiB]] as const) {
    expect(fork[side].guestBytes).toBe(bytes);
    expect(fork[side].pages).toBe(bytes / 4096);
    expectTiming(fork[side].fork, 2);
    expectTiming(fork[side].evicted, 2);
    expectTiming(fork[side].createVm, 2);
  }
  expect(fork.large.pages).toBeGreaterThan(fork.small.pages);
  // The checked ratio is the forks' with emptied caches; the other is printed beside it.
  expect(fork.ratio).toBeCloseTo(fork.large.evicted.wallMs / fork.small.evicted.wallMs, 2);
  expect(fork.afterGuestRatio).toBeCloseTo(fork.large.fork.wallMs / fork.small.fork.wallMs, 2);
  expect(fork.deferred.pages).toBe(Math.min(2000, Math.floor(dataPages(32 * MiB) / 2)));
  for (const key of ['parentFirstUs', 'parentFirstCpuUs', 'parentAgainUs', 'childFirstUs', 'childFirstCpuUs', 'childAgainUs']) expect(fork.deferred[key]).toBeGreaterThanOrEqual(0);
  // Lazy restore: the first instruction comes after the restore returns, in every run.
  const lazy = state.lazyRestore;
  for (const [side, bytes] of [['small', 8 * MiB], ['large', 32 * MiB]] as const) {
    expect(lazy[side].guestBytes).toBe(bytes);
    expect(lazy[side].pages).toBe(bytes / 4096);
    expectTiming(lazy[side].toRunnable, 3);
    expectTiming(lazy[side].toFirstInstruction, 3);
    expect(lazy[side].toFirstInstruction.wallMs).toBeGreaterThan(lazy[side].toRunnable.wallMs);
    expect(lazy[side].toFirstInstruction.minWallMs).toBeGreaterThan(lazy[side].toRunnable.minWallMs);
  }
  expect(lazy.large.pages).toBeGreaterThan(lazy.small.pages);
  expect(lazy.ratio).toBeCloseTo(lazy.large.toFirstInstruction.wallMs / lazy.small.toFirstInstruction.wallMs, 2);
}
