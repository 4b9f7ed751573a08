// Sampled active memory (services/memory/active.ts, docs/active-memory.md, issue 11 item 1): the
// formula against hand-computed values; the sampler's periods, stats and options; accuracy on
// nanokernel guests with known working sets against an oracle that watches every page; a change
// followed up fast and down slowly; the guest computes exactly the same with sampling on
// (nanokernel programs, and the shadow-MMU coherence scenarios with pages armed between steps);
// checkpoint/restore and fork carry the sampler's state.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { Pte } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { attachStandardDevices, CaptureSink, savedBootArgs } from '../../devices/index.ts';
import { createHypervisor, type Hypervisor, type Vm, type VmConfig } from '../../kernel/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import {
  ACTIVE_MEMORY_STATE, ActiveMemoryError, ActiveMemorySampler, activeEstimate, ACTIVE_FAST_WEIGHT, ACTIVE_PAGES_PER_PERIOD,
  ACTIVE_PERIOD_INSTRUCTIONS, ACTIVE_SLOW_WEIGHT, ewma, samplePages, updateActiveAverages, type ActiveMemoryOptions, type ActiveMemorySample,
} from '../../services/memory/index.ts';
import { bootNanokernel, bootPhaseGuest, followPeriods, nanokernelImage, PageOracle, periodsToFollow, walkerBytes } from '../../bench/active-memory.ts';
import { hex, HostPageTables, pte, ptbrFor, writeWord } from '../kernel/helpers.ts';
import { bootPaged, fillFrame, FIRST_TABLE, FRAMES, MMU_MODES, pagedProgram as program, ROOT, VA, type MmuMode, type PagedGuest } from '../kernel/shadow-helpers.ts';

const MiB = 2 ** 20;
const LONG = 600_000;
const dir = mkdtempSync(join(tmpdir(), 'bv-active-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------

describe('the formula', () => {
  it('EWMA steps, the first sample, and the larger of the averages (hand-computed)', () => {
    expect(ewma(null, 0.3, 0.7)).toBe(0.3);
    expect(ewma(0.2, 0.6, 0.25)).toBeCloseTo(0.3, 12); // 0.2 + 0.25 × 0.4
    expect(ewma(0.9, 0.1, 0.5)).toBeCloseTo(0.5, 12);
    expect(ewma(0.5, 0.5, 1 / 16)).toBe(0.5);
    expect(activeEstimate(0.2, 0.35)).toBe(0.35);
    expect(activeEstimate(0.6, 0.35)).toBe(0.6);
    // Weights fast 1/2, slow 1/4; samples 0.8, 0.4, 0.4, 1.0, 0.0:
    //   fast 0.8, 0.6, 0.5, 0.75, 0.375;  slow 0.8, 0.7, 0.625, 0.71875, 0.5390625
    const weights = { fast: 0.5, slow: 0.25 };
    const expected = [
      [0.8, 0.8, 0.8], [0.6, 0.7, 0.7], [0.5, 0.625, 0.625], [0.75, 0.71875, 0.75], [0.375, 0.5390625, 0.5390625],
    ];
    let averages: { fast: number; slow: number } | null = null;
    [0.8, 0.4, 0.4, 1.0, 0.0].forEach((f, i) => {
      const next = updateActiveAverages(averages, f, weights);
      expect([next.fast, next.slow, next.estimate].map((v) => Number(v.toFixed(10)))).toEqual(expected[i]);
      averages = next;
    });
    // The defaults: a full swing 0.1 → 0.9 is within 10 points after 2 periods up, and takes
    // ⌈ln(1/8) / ln(15/16)⌉ = 33 periods down.
    let up: { fast: number; slow: number } = { fast: 0.1, slow: 0.1 };
    for (let i = 0; i < 2; i++) up = updateActiveAverages(up, 0.9, { fast: ACTIVE_FAST_WEIGHT, slow: ACTIVE_SLOW_WEIGHT });
    expect(activeEstimate(up.fast, up.slow)).toBeCloseTo(0.9 - 0.8 * 0.3 ** 2, 12);
    let down: { fast: number; slow: number } = { fast: 0.9, slow: 0.9 };
    let periods = 0;
    while (activeEstimate(down.fast, down.slow) - 0.1 > 0.1 + 1e-12) {
      down = updateActiveAverages(down, 0.1, { fast: ACTIVE_FAST_WEIGHT, slow: ACTIVE_SLOW_WEIGHT });
      periods++;
    }
    expect(periods).toBe(33);
  });

  it('samplePages draws distinct sorted pages in range, reproducibly from the PRNG state', () => {
    const a = samplePages(12345, 1000, 100);
    expect(a.pages).toHaveLength(100);
    expect(new Set(a.pages).size).toBe(100);
    expect(a.pages.every((p, i) => Number.isInteger(p) && p >= 0 && p < 1000 && (i === 0 || p > a.pages[i - 1]!))).toBe(true);
    expect(samplePages(12345, 1000, 100)).toEqual(a);
    const b = samplePages(a.state, 1000, 100);
    expect(b.pages).not.toEqual(a.pages);
    expect(samplePages(1, 50, 50).pages).toEqual(Array.from({ length: 50 }, (_, i) => i));
    // Roughly uniform: over many draws every decile of the range gets 10 % ± 2 %.
    const deciles = new Array(10).fill(0);
    let state = 99;
    for (let i = 0; i < 500; i++) {
      const drawn = samplePages(state, 4096, 100);
      state = drawn.state;
      for (const p of drawn.pages) deciles[Math.floor((p * 10) / 4096)]++;
    }
    for (const count of deciles) expect(Math.abs(count / 50_000 - 0.1)).toBeLessThan(0.02);
  });
});

// ---------------------------------------------------------------------------------------------

describe('the sampler', () => {
  it('has the documented defaults and refuses bad options and a second sampler under the same name', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
    const { vm } = bootPhaseGuest(hv, 'p', 4 * MiB);
    const sampler = new ActiveMemorySampler(vm);
    expect([sampler.pagesPerPeriod, sampler.periodInstructions, sampler.weights.fast, sampler.weights.slow]).toEqual([100, 100_000_000, 0.7, 1 / 16]);
    expect([ACTIVE_PAGES_PER_PERIOD, ACTIVE_PERIOD_INSTRUCTIONS]).toEqual([100, 100_000_000]);
    expect(sampler.estimate).toBe(1); // nothing known yet: counted as active
    expect(sampler.currentPages()).toHaveLength(100);
    expect(sampler.currentPages().every((gpn) => vm.memory.isWatched(sampler.watcher, gpn))).toBe(true);
    const bad: [ActiveMemoryOptions, RegExp][] = [
      [{ pagesPerPeriod: 0 }, /pagesPerPeriod/], [{ periodInstructions: 1.5 }, /periodInstructions/], [{ fastWeight: 0 }, /fastWeight/],
      [{ fastWeight: 1.5 }, /fastWeight/], [{ slowWeight: 0.8 }, /slowWeight/], [{ initialEstimate: 2 }, /initialEstimate/], [{ seed: 0.5 }, /seed/],
      [{ samplesKept: -1 }, /samplesKept/],
    ];
    for (const [options, message] of bad) {
      expect(() => new ActiveMemorySampler(vm, { ...options, stateName: null })).toThrow(ActiveMemoryError);
      expect(() => new ActiveMemorySampler(vm, { ...options, stateName: null })).toThrow(message);
    }
    expect(() => new ActiveMemorySampler(vm)).toThrow(/already registered/);
    // The refused sampler gave its watcher back: 1 taken, 7 left.
    const more = Array.from({ length: 7 }, () => new ActiveMemorySampler(vm, { stateName: null }));
    expect(() => new ActiveMemorySampler(vm, { stateName: null })).toThrow(/at most 8/);
    for (const s of more) s.dispose();
    sampler.dispose();
    expect(() => vm.memory.isWatched(sampler.watcher, 0)).toThrow(/no access watcher/);
  });

  it('closes a period only when the VM has run its length; tick is idempotent; stats, the ring and dispose', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const guest = bootPhaseGuest(hv, 'p', 8 * MiB); // 2048 pages
    guest.setPages(1024 - 2); // half of memory, with the code and control pages
    const sampler = new ActiveMemorySampler(guest.vm, { periodInstructions: 100_000, samplesKept: 3, seed: 5 });
    expect(sampler.tick()).toBeNull();
    hv.run({ maxInstructions: 99_999 }, [guest.vm]);
    expect(sampler.tick()).toBeNull();
    expect(sampler.tick()).toBeNull();
    expect(sampler.stats().current_period.touched).toBeGreaterThan(0); // seen while it ran
    hv.run({ maxInstructions: 1 }, [guest.vm]);
    const first = sampler.tick();
    expect(first).toMatchObject({ period: 1, startInstructions: 0, endInstructions: 100_000, sampled: 100 });
    expect(sampler.tick()).toBeNull(); // the next period has only just started
    expect(first!.f).toBe(first!.touched / 100);
    expect(Math.abs(first!.f - 0.5)).toBeLessThan(0.2);
    // A late tick closes where the clock stands: one sample over the longer interval.
    hv.run({ maxInstructions: 250_000 }, [guest.vm]);
    expect(sampler.tick()).toMatchObject({ period: 2, startInstructions: 100_000, endInstructions: 350_000 });
    for (let i = 0; i < 5; i++) {
      hv.run({ maxInstructions: 100_000 }, [guest.vm]);
      expect(sampler.tick()).not.toBeNull();
    }
    const stats = sampler.stats();
    expect(JSON.parse(JSON.stringify(stats))).toEqual(stats);
    expect(stats).toMatchObject({ periods: 7, pages_per_period: 100, period_instructions: 100_000, guest_pages: 2048, weights: { fast: 0.7, slow: 1 / 16 }, initial_estimate: 1 });
    expect(stats.estimate).toBe(Math.max(stats.fast!, stats.slow!));
    expect(stats.active_pages).toBe(Math.round(sampler.estimate * 2048));
    expect(stats.recent_samples.map((s) => s.period)).toEqual([5, 6, 7]); // the ring keeps 3
    expect(Object.keys(stats.recent_samples[0]!)).toEqual(['period', 'start_instructions', 'end_instructions', 'sampled', 'touched', 'f']);
    expect(stats.current_period).toMatchObject({ start_instructions: 850_000, end_instructions: 950_000, sampled: 100 });
    expect(Math.abs(stats.estimate - 0.5)).toBeLessThan(0.1);
    const armed = sampler.currentPages().filter((gpn) => guest.vm.memory.isWatched(sampler.watcher, gpn));
    expect(armed.length).toBe(100 - sampler.stats().current_period.touched);
    sampler.dispose();
    expect(() => guest.vm.memory.isWatched(sampler.watcher, 0)).toThrow(/no access watcher/);
    hv.run({ maxInstructions: 200_000 }, [guest.vm]);
    expect(sampler.tick()).toBeNull();
    expect(sampler.periods).toBe(7);
  });

  it('autoTick closes periods from a VM ticker; a custom clock drives the periods of a VM that retires nothing', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const guest = bootPhaseGuest(hv, 'p', 8 * MiB);
    guest.setPages(200);
    const sampler = new ActiveMemorySampler(guest.vm, { periodInstructions: 50_000, autoTick: true });
    hv.run({ maxInstructions: 1_000_000 }, [guest.vm]);
    expect(sampler.periods).toBeGreaterThanOrEqual(14); // closed at the end of the 20,000-instruction round that passes the period end
    expect(sampler.periods).toBeLessThanOrEqual(20);
    sampler.dispose();
    // An idle nanokernel (its only program sleeps for ever) retires nothing: the VM's own clock
    // never ends a period, a host clock does.
    const idle = bootNanokernel(hv, 'idle', 16 * MiB, 'idle');
    let hostClock = 0;
    const own = new ActiveMemorySampler(idle.vm, { periodInstructions: 1_000_000, stateName: null });
    const hosted = new ActiveMemorySampler(idle.vm, { periodInstructions: 1_000_000, clock: () => hostClock, stateName: 'host-clock' });
    for (let i = 0; i < 20; i++) {
      hv.run({ maxInstructions: 1_000_000 }, [idle.vm]);
      hostClock += 1_000_000;
      own.tick();
      hosted.tick();
    }
    expect(idle.output.text()).toContain('idle: 16 pages touched, sleeping');
    expect(own.periods).toBe(0);
    expect(hosted.periods).toBe(20);
    expect(hosted.estimate).toBeLessThan(0.05); // the boot's pages are not touched any more
  });
});

// ---------------------------------------------------------------------------------------------

/** A nanokernel walker over `fraction` of 16 MiB with a sampler and an oracle; the rows of `periods` periods. */
function walkerRows(bootArgs: string, periods: number, period = 3_000_000, config: Partial<VmConfig> = {}): { rows: ReturnType<typeof followPeriods>; vm: Vm; output: CaptureSink } {
  const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
  const { vm, output } = bootNanokernel(hv, 'walker', 16 * MiB, bootArgs, config);
  const sampler = new ActiveMemorySampler(vm, { periodInstructions: period, seed: 3 });
  const oracle = new PageOracle(vm);
  oracle.start();
  const rows = followPeriods(hv, sampler, oracle, periods, 250_000);
  return { rows, vm, output };
}

describe('accuracy on nanokernel guests with known working sets', () => {
  const CASES: [fraction: number, config: Partial<VmConfig>, label: string][] = [
    [0.1, {}, ''], [0.5, {}, ''], [0.9, {}, ''], [0.5, { mmu: { mode: 'nested' }, largePages: 'always' }, ' (nested MMU, 4 MiB host runs always)'],
  ];
  for (const [fraction, config, label] of CASES) {
    it(`a walker looping over ${fraction * 100} % of memory${label}: the estimate within ±10 points of the truth at steady state`, () => {
      const bytes = walkerBytes(16 * MiB, fraction);
      const { rows, vm } = walkerRows(`walker ${bytes} random 0`, 20, 3_000_000, config);
      const nominal = bytes / 4096 / vm.memory.pageCount;
      for (const row of rows.slice(6)) {
        // The truth is the walker's region plus what the kernel, the user image, stacks and
        // page tables touch: a few pages more than the region, never fewer.
        expect(row.truth).toBeGreaterThanOrEqual(nominal);
        expect(row.truth - nominal).toBeLessThan(0.02);
        expect(Math.abs(row.estimate - row.truth), `period ${row.period}: estimate ${row.estimate}, truth ${row.truth}`).toBeLessThanOrEqual(0.1);
      }
    }, LONG);
  }

  it('a working set that ends: the estimate comes down slowly, never below the truth, and settles', () => {
    // 10 % for ever beside 80 % for 8 passes: about 90 %, then 10 % once the big walker exits.
    const small = walkerBytes(16 * MiB, 0.1);
    const big = walkerBytes(16 * MiB, 0.8);
    const { rows, output } = walkerRows(`walker ${small} random 0 walker ${big} random 8`, 70, 3_000_000);
    expect(output.text()).toMatch(/pid 2 \(walker\) exited with code 0/);
    const drop = rows.findIndex((row, i) => i > 0 && row.truth < 0.3 && rows[i - 1]!.truth > 0.6);
    expect(drop).toBeGreaterThan(3);
    expect(rows[drop - 1]!.estimate).toBeGreaterThan(0.8);
    const after = rows.slice(drop);
    // Shrinks slowly: still far above the truth 10 periods later (ESX's slow average).
    expect(after[10]!.estimate - after[10]!.truth).toBeGreaterThan(0.2);
    for (const row of after) expect(row.estimate).toBeGreaterThanOrEqual(row.truth - 0.05);
    const settled = rows.slice(-5).reduce((sum, row) => sum + row.truth, 0) / 5;
    expect(settled).toBeCloseTo(0.1, 1);
    const down = periodsToFollow(rows, drop, settled);
    expect(down).not.toBeNull();
    expect(down!).toBeGreaterThan(15);
    expect(down!).toBeLessThanOrEqual(45);
  }, LONG);
});

describe('a change followed up fast and down slowly (a guest whose working set the host sets)', () => {
  it('10 % → 90 % → 10 %: up within 3 periods, down in 15 to 45, steady within ±10 points', () => {
    const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
    const guest = bootPhaseGuest(hv, 'phase', 16 * MiB);
    const pages = guest.vm.memory.pageCount;
    const [low, high] = [Math.round(pages * 0.1) - 2, Math.round(pages * 0.9) - 2];
    const sampler = new ActiveMemorySampler(guest.vm, { periodInstructions: 300_000, seed: 21 });
    const oracle = new PageOracle(guest.vm);
    oracle.start();
    const rows = followPeriods(hv, sampler, oracle, 90, 15_000, (next) => guest.setPages(next <= 15 ? low : next <= 35 ? high : low));
    // The truth is exactly the region plus the code and control pages, once a pass has run.
    for (const row of [...rows.slice(2, 15), ...rows.slice(36)]) expect(row.truth).toBeCloseTo(0.1, 2);
    for (const row of rows.slice(16, 35)) expect(row.truth).toBeCloseTo(0.9, 2);
    const up = periodsToFollow(rows, 15, (high + 2) / pages)!;
    const down = periodsToFollow(rows, 35, (low + 2) / pages)!;
    expect(up).toBeLessThanOrEqual(3);
    expect(down).toBeGreaterThanOrEqual(15);
    expect(down).toBeLessThanOrEqual(45);
    for (const range of [[5, 15], [25, 35], [80, 90]]) {
      for (const row of rows.slice(range[0], range[1])) expect(Math.abs(row.estimate - row.truth), `period ${row.period}`).toBeLessThanOrEqual(0.1);
    }
  }, LONG);
});

// ---------------------------------------------------------------------------------------------

/** Everything a guest computed: console, stop reason, instructions, every vCPU's registers, all of RAM (hashed). */
function outcome(vm: Vm, text: string, reason: unknown): { text: string; reason: unknown; instructions: number; vcpus: unknown[]; ram: string } {
  const ram = createHash('sha256').update(vm.readPhysical(0, vm.memoryBytes)).digest('hex');
  return { text, reason, instructions: vm.instructionsRetired, vcpus: vm.vcpus.map((v) => ({ regs: Array.from(v.regs.subarray(0, 16)), pc: v.pc })), ram };
}

describe('the sampler never changes what the guest computes', () => {
  it('nanokernel programs: the same output, instructions, registers and memory with and without sampling', () => {
    const args = 'walker 4M random 3 heap 2M 4 2 sieve 30000 crc32 20000';
    const run = (sampling: ActiveMemoryOptions | null) => {
      const hv = createHypervisor({ hostMemoryBytes: 40 * MiB });
      const { vm, output } = bootNanokernel(hv, 'g', 16 * MiB, args);
      // Aggressive: a quarter of memory armed every 20,000 instructions, from a ticker.
      const sampler = sampling ? new ActiveMemorySampler(vm, sampling) : null;
      const [result] = hv.run({ maxInstructions: 400_000_000 }, [vm]);
      const touched = sampler?.recentSamples().reduce((sum, s) => sum + s.touched, 0) ?? 0;
      return { ...outcome(vm, output.text(), result!.reason), periods: sampler?.periods ?? 0, touched };
    };
    const plain = run(null);
    const sampled = run({ pagesPerPeriod: 1024, periodInstructions: 20_000, autoTick: true, samplesKept: 1_000_000 });
    expect(plain.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(plain.text).toMatch(/walker: 4194304 bytes, random, 3 passes/);
    expect(sampled.periods).toBeGreaterThan(100);
    expect(sampled.touched).toBeGreaterThan(10_000); // the watch really saw the guest
    expect({ ...sampled, periods: 0, touched: 0 }).toEqual({ ...plain, periods: 0, touched: 0 });
  }, LONG);
});

// --- the shadow-MMU coherence scenarios (tests/kernel/shadow.test.ts) with sampling on -----------

const { V, R, W, X, A, D } = Pte;
const RW = V | R | W | A | D;
const OLD = FRAMES;
const NEW = FRAMES + 0x1000;
const LEAF = FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4;

interface Scenario {
  name: string;
  source(mode: MmuMode): string;
  setup(guest: PagedGuest): void;
  /** What the guest must have read or written, checked on the sampled run. */
  check(guest: PagedGuest, mode: MmuMode): void;
}

const SCENARIOS: Scenario[] = [
  {
    name: 'a leaf PTE changed, then sfence: loads and stores use the new mapping (no read before the sfence: either value is allowed)',
    source: () => program(`
        li t1, ${hex(VA)}
        lw s0, 0(t1)
        sw s0, 8(t1)
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)
        sfence t1, zero
        lw s2, 0(t1)
        li t2, 0x5555
        sw t2, 4(t1)`),
    setup: (guest) => {
      guest.tables.setLeaf(VA, pte(OLD, RW));
      fillFrame(guest.vm, OLD, 0x1d00);
      fillFrame(guest.vm, NEW, 0xe000);
    },
    check: (guest) => {
      const regs = guest.vcpu().regs;
      expect([hex(regs[12]!), hex(regs[14]!)]).toEqual([hex(0x1d00), hex(0xe000)]);
      expect(hex(guest.word(NEW + 4))).toBe(hex(0x5555));
      expect(hex(guest.word(OLD + 8))).toBe(hex(0x1d00));
    },
  },
  {
    name: 'accessed and dirty bits cleared by the guest are set again',
    source: () => program(`
        la s1, ptes
        li t1, ${hex(VA)}
        li t3, ${hex(LEAF)}
        sw a0, 0(t1)
        lw t2, 0(t3)
        sw t2, 0(s1)
        li t2, ${hex(pte(OLD, V | R | W))}
        sw t2, 0(t3)
        sfence t1, zero
        lw a2, 0(t1)
        lw t2, 0(t3)
        sw t2, 4(s1)
        sw a2, 4(t1)
        lw t2, 0(t3)
        sw t2, 8(s1)
        li t2, ${hex(pte(OLD, V | R | W | A))}
        sw t2, 0(t3)
        sfence t1, zero
        lw a2, 8(t1)
        lw t2, 0(t3)
        sw t2, 12(s1)
        sw a2, 12(t1)
        lw t2, 0(t3)
        sw t2, 16(s1)`, 'ptes: .space 20'),
    setup: (guest) => guest.tables.setLeaf(VA, pte(OLD, V | R | W)),
    check: (guest) => {
      expect(guest.words(guest.sym('ptes'), 5).map(hex)).toEqual(
        [V | R | W | A | D, V | R | W | A, V | R | W | A | D, V | R | W | A, V | R | W | A | D].map((flags) => hex(pte(OLD, flags))),
      );
    },
  },
  {
    name: 'two address spaces, context switches and ASIDs',
    source: () => {
      const round = `
        csrrw zero, ptbr, s2
        jal ra, sumpages
        csrrw zero, ptbr, s3
        jal ra, sumpages`;
      return program(`
        la s0, sums
        li s2, PTBR_A1
        li s3, ${hex(ptbrFor(0x18_0000, 2))}
        li a3, 6
2:
${round}
        addi a3, a3, -1
        bnez a3, 2b
        exiti 0
sumpages:
        li t1, ${hex(VA)}
        li t3, 4
        li a2, 0
1:      lw t2, 0(t1)
        add a2, a2, t2
        lw t2, 4(t1)
        addi t2, t2, 1
        sw t2, 4(t1)
        li t0, 0x1000
        add t1, t1, t0
        addi t3, t3, -1
        bnez t3, 1b
        sw a2, 0(s0)
        addi s0, s0, 4
        ret`, 'sums: .space 48');
    },
    setup: (guest) => {
      const tablesB = new HostPageTables(guest.vm, 0x18_0000, 0x18_1000);
      for (let i = 0; i < 4; i++) {
        guest.tables.setLeaf(VA + i * 0x1000, pte(FRAMES + 0x1_0000 + i * 0x1000, RW));
        tablesB.setLeaf(VA + i * 0x1000, pte(FRAMES + 0x2_0000 + i * 0x1000, RW));
        fillFrame(guest.vm, FRAMES + 0x1_0000 + i * 0x1000, 0x100 * (i + 1));
        fillFrame(guest.vm, FRAMES + 0x2_0000 + i * 0x1000, 0x10000 * (i + 1));
      }
    },
    check: (guest) => {
      expect(guest.words(guest.sym('sums'), 12).map(hex)).toEqual(Array(6).fill([0x100 * 10, 0x10000 * 10]).flat().map(hex));
      for (let i = 0; i < 4; i++) expect(guest.word(FRAMES + 0x2_0000 + i * 0x1000 + 4)).toBe(0x10000 * (i + 1) + 1 + 6);
    },
  },
  {
    name: 'a page-table page reused as data, then remapped by the guest',
    source: (mode) => program(`
        la s1, seen
        li t1, ${hex(VA)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        li t3, ${hex(FIRST_TABLE + 2048)}
        li t2, 100
1:      slli a2, t2, 3
        sw a2, 0(t3)
        addi t3, t3, 4
        addi t2, t2, -1
        bnez t2, 1b
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 4(s1)
        li t2, ${hex(pte(OLD, RW))}
        sw t2, 0(t3)
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 8(s1)`, 'seen: .space 12'),
    setup: (guest) => {
      guest.tables.setLeaf(VA, pte(OLD, RW));
      fillFrame(guest.vm, OLD, 0x1d00);
      fillFrame(guest.vm, NEW, 0xe000);
    },
    check: (guest) => {
      expect(guest.words(guest.sym('seen'), 3).map(hex)).toEqual([0x1d00, 0xe000, 0x1d00].map(hex));
      expect(guest.words(FIRST_TABLE + 2048, 2)).toEqual([800, 792]);
    },
  },
  {
    name: 'remapping by a byte store, an AMO, and a remapped code page',
    source: (mode) => program(`
        la s1, seen
        li t1, ${hex(VA + 0x1000)}
        li t3, ${hex(LEAF + 4)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        li t2, ${(pte(NEW, RW) >>> 8) & 0xff}
        sb t2, 1(t3)
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 4(s1)
        li t2, ${hex(pte(OLD, RW))}
        amoswap zero, t2, (t3)
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 8(s1)
        li t1, ${hex(VA)}
        jalr ra, t1, 0
        addi s2, a2, 0
        li t2, ${hex(pte(FRAMES + 0x3000, V | R | X | A))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)
        ${mode.traces ? '' : 'sfence t1, zero'}
        jalr ra, t1, 0
        addi s3, a2, 0`, 'seen: .space 12'),
    setup: (guest) => {
      guest.tables.setLeaf(VA + 0x1000, pte(OLD, RW));
      guest.tables.setLeaf(VA, pte(FRAMES + 0x2000, V | R | X | A));
      fillFrame(guest.vm, OLD, 0x1d00);
      fillFrame(guest.vm, NEW, 0xe000);
      guest.vm.writePhysical(FRAMES + 0x2000, encodeReturn(1));
      guest.vm.writePhysical(FRAMES + 0x3000, encodeReturn(2));
    },
    check: (guest) => {
      expect(guest.words(guest.sym('seen'), 3).map(hex)).toEqual([0x1d00, 0xe000, 0x1d00].map(hex));
      expect([guest.vcpu().regs[14], guest.vcpu().regs[15]]).toEqual([1, 2]);
    },
  },
  {
    name: 'sfence by address on a superpage remapped by the guest',
    source: () => program(`
        la s1, seen
        li t1, 0x40400000
        lw t2, 0(t1)
        sw t2, 0(s1)
        lw t2, 0x1000(t1)
        sw t2, 4(s1)
        li t2, ${hex(pte(0x80_0000, RW))}
        li t3, ${hex(ROOT + (0x4040_0000 >>> 22) * 4)}
        sw t2, 0(t3)
        sfence t1, zero
        lw t2, 0x1000(t1)
        sw t2, 8(s1)
        lw t2, 0(t1)
        sw t2, 12(s1)`, 'seen: .space 16'),
    setup: (guest) => {
      guest.tables.setRoot(0x4040_0000 >>> 22, pte(0x40_0000, RW));
      for (const [gpa, tag] of [[0x40_0000, 0xa0], [0x40_1000, 0xa1], [0x80_0000, 0xb0], [0x80_1000, 0xb1]] as const) writeWord(guest.vm, gpa, tag);
    },
    check: (guest) => expect(guest.words(guest.sym('seen'), 4).map(hex)).toEqual([0xa0, 0xa1, 0xb1, 0xb0].map(hex)),
  },
];

/** `addi a2, zero, value; jalr zero, ra, 0`. */
function encodeReturn(value: number): Uint8Array {
  return new Uint8Array(new Uint32Array([encodeInstruction('addi', { rd: 6, rs1: 0, imm: value }), encodeInstruction('jalr', { rd: 0, rs1: 1, imm: 0 })]).buffer);
}

/** How pages are armed between the steps of a sampled run. */
const SAMPLINGS = [
  { name: 'every page re-armed every 1–3 instructions', options: { pagesPerPeriod: 1 << 20, periodInstructions: 1 } },
  { name: '100 random pages every 5 instructions', options: { pagesPerPeriod: 100, periodInstructions: 5 } },
] as const;

describe.each(MMU_MODES)('the shadow-coherence scenarios with sampling on ($name)', (mode) => {
  const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
  /** Runs a scenario in one go without a sampler, or in steps of 1–3 instructions with one ticked between them. */
  function runScenario(scenario: Scenario, sampling: ActiveMemoryOptions | null): { guest: PagedGuest; result: ReturnType<typeof outcome>; touched: number } {
    const guest = bootPaged(scenario.source(mode), { hv, mmu: mode.mmu });
    scenario.setup(guest);
    let reason;
    let touched = 0;
    if (sampling === null) {
      reason = guest.run({ maxInstructions: 100_000 }).reason;
    } else {
      const sampler = new ActiveMemorySampler(guest.vm, { ...sampling, seed: 17, samplesKept: 1 });
      for (let step = 0; ; step++) {
        const result = guest.run({ maxInstructions: 1 + (step % 3) });
        const closed = sampler.tick();
        touched += closed?.touched ?? 0;
        if (result.reason.kind !== 'budget' || step > 100_000) {
          reason = result.reason;
          break;
        }
      }
      sampler.dispose();
    }
    const result = outcome(guest.vm, '', reason);
    return { guest, result, touched };
  }

  for (const scenario of SCENARIOS) {
    it(scenario.name, () => {
      const plain = runScenario(scenario, null);
      expect(plain.result.reason).toEqual({ kind: 'halted', exitCode: 0 });
      scenario.check(plain.guest, mode);
      for (const sampling of SAMPLINGS) {
        const sampled = runScenario(scenario, sampling.options);
        scenario.check(sampled.guest, mode);
        expect(sampled.result, sampling.name).toEqual(plain.result);
        if (sampling === SAMPLINGS[0]) expect(sampled.touched, sampling.name).toBeGreaterThan(10);
        hv.destroyVm(sampled.guest.vm);
      }
      hv.destroyVm(plain.guest.vm);
    }, LONG);
  }
});

// ---------------------------------------------------------------------------------------------

describe('checkpoint/restore and fork carry the sampler state', () => {
  const ARGS = 'walker 3M random 0';
  const OPTIONS = { periodInstructions: 1_000_000, seed: 9 } as const;
  /** Runs `periods` more periods in steps, returning the samples closed. */
  function carryOn(hv: Hypervisor, vm: Vm, sampler: ActiveMemorySampler, periods: number): ActiveMemorySample[] {
    const closed: ActiveMemorySample[] = [];
    while (closed.length < periods) {
      const [result] = hv.run({ maxInstructions: 100_000 }, [vm]);
      expect(result!.reason.kind).toBe('budget');
      const sample = sampler.tick();
      if (sample) closed.push(sample);
    }
    return closed;
  }
  /** A walker VM with a sampler, run 12.35 periods (mid-period). */
  function started(hv: Hypervisor) {
    const { vm, output } = bootNanokernel(hv, 'ck', 16 * MiB, ARGS);
    const sampler = new ActiveMemorySampler(vm, OPTIONS);
    carryOn(hv, vm, sampler, 12);
    hv.run({ maxInstructions: 350_000 }, [vm]);
    expect(sampler.tick()).toBeNull();
    return { vm, output, sampler };
  }

  for (const mode of ['eager', 'lazy'] as const) {
    it(`a ${mode} restore carries on with the same estimate, period, pages and samples as the original`, () => {
      const hv = createHypervisor({ hostMemoryBytes: 96 * MiB });
      const original = started(hv);
      const path = join(dir, `active-${mode}.ckpt`);
      saveVmCheckpoint(original.vm, path);
      const before = original.sampler.stats();
      expect(before.periods).toBe(12);
      expect(before.current_period.touched).toBeGreaterThan(0);
      let restoredSampler: ActiveMemorySampler | null = null;
      const restored = restoreVmCheckpoint(hv, path, {
        mode, name: 'restored',
        attach: (vm, saved) => {
          attachStandardDevices(vm, { bootArgs: savedBootArgs(saved.components.bootargs!.state) });
          expect(saved.components[ACTIVE_MEMORY_STATE]).toBeDefined();
          restoredSampler = new ActiveMemorySampler(vm, { ...OPTIONS, seed: 12345 }); // its own seed is replaced by the saved PRNG state
        },
      });
      const sampler = restoredSampler as unknown as ActiveMemorySampler;
      expect(sampler.stats()).toEqual(before);
      expect(sampler.currentPages()).toEqual(original.sampler.currentPages());
      // Armed again exactly where the original still is: the untouched pages of the period.
      const armed = (s: ActiveMemorySampler, vm: Vm) => s.currentPages().filter((gpn) => vm.memory.isWatched(s.watcher, gpn));
      expect(armed(sampler, restored.vm)).toEqual(armed(original.sampler, original.vm));
      const a = carryOn(hv, original.vm, original.sampler, 6);
      const b = carryOn(hv, restored.vm, sampler, 6);
      expect(b).toEqual(a);
      expect(sampler.stats()).toEqual(original.sampler.stats());
    }, LONG);
  }

  it('a fork: parent and child carry on with the same state, each as if alone', () => {
    const hv = createHypervisor({ hostMemoryBytes: 96 * MiB });
    const parent = started(hv);
    const before = parent.sampler.stats();
    let childSampler: ActiveMemorySampler | null = null;
    const child = hv.forkVmWith(parent.vm, {
      attach: (vm) => {
        attachStandardDevices(vm, { bootArgs: ARGS });
        childSampler = new ActiveMemorySampler(vm, { ...OPTIONS, seed: 777 }); // replaced by the parent's PRNG state
      },
    });
    const sampler = childSampler as unknown as ActiveMemorySampler;
    expect(sampler.stats()).toEqual(before);
    const a = carryOn(hv, parent.vm, parent.sampler, 6);
    const b = carryOn(hv, child.vm, sampler, 6);
    expect(b).toEqual(a);
    expect(a.every((s) => s.touched > 0)).toBe(true);
  }, LONG);

  it('a checkpoint with sampler state needs a sampler to restore into; a damaged state is refused naming the field', () => {
    const hv = createHypervisor({ hostMemoryBytes: 96 * MiB });
    const original = started(hv);
    const path = join(dir, 'active-needs.ckpt');
    saveVmCheckpoint(original.vm, path);
    const attachDevices = (vm: Vm, saved: { components: Record<string, { state: unknown }> }) => attachStandardDevices(vm, { bootArgs: savedBootArgs(saved.components.bootargs!.state) });
    expect(() => restoreVmCheckpoint(hv, path, { mode: 'eager', name: 'x', attach: attachDevices })).toThrow(/component 'active-memory' that this VM lacks/);
    // The component's check refuses a damaged state before anything is restored.
    const state = original.vm.captureState();
    const saved = state.components[ACTIVE_MEMORY_STATE]!.state as Record<string, unknown>;
    const target = hv.createVm({ memoryBytes: 16 * MiB, name: 'target' });
    attachStandardDevices(target, { bootArgs: ARGS });
    const fresh = new ActiveMemorySampler(target, OPTIONS);
    for (const [field, value] of [['fast', 1.5], ['pages', [5, 3]], ['touched', [2]], ['prng', -1]] as const) {
      const damaged = { ...state, components: { ...state.components, [ACTIVE_MEMORY_STATE]: { version: 1, state: { ...saved, [field]: value } } } };
      expect(() => target.checkState(damaged), field).toThrow(ActiveMemoryError);
      expect(() => target.checkState(damaged), field).toThrow(new RegExp(field));
    }
    expect(fresh.periods).toBe(0);
    expect(nanokernelImage()).toBeDefined();
  }, LONG);
});
