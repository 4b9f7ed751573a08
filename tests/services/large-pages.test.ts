// Large-page policies (services/memory/large-pages.ts) on real guests:
// - T-3: a guest with a hot, a warm, a lukewarm and two cold 4 MiB regions, nothing backed large
//   at first (largePages 'off'); after the counting phase the prioritizer promotes the regions by
//   their accessed-page counts, hottest first, in shadow and nested mode, and the guest's data
//   stays exact.
// - T-4: a walker guest with a hot and a cold region, both backed large ('always'); the reclaimer
//   demotes, tracks, keeps the hot region large, breaks up the cold one and swaps its pages out
//   (host memory really drops), and the guest later reads the cold region back exactly.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { Hcall, PAGE_SIZE, Pte, Reg } from '../../guest-isa/arch.ts';
import { createHypervisor, PageState } from '../../kernel/index.ts';
import type { Hypervisor, Vm, VmConfig } from '../../kernel/index.ts';
import { processRss } from '../../native/index.ts';
import { AccessedBitPrioritizer, LargePagePolicyError, LowActivityReclaimer, SwapFile } from '../../services/memory/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-large-pages-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const REGION_BYTES = 4 * MiB;
const PT_BASE = 0x10000;

/**
 * Builds Sv32 identity maps of [0, MAP_BYTES): region 0 with a superpage; the other regions with
 * superpages when SUPERPAGES is 1, else through 4 KiB leaves (tables from PT_BASE + 4 KiB). No
 * leaf has A set: the walk sets it. Clobbers t0-t3, a2, a3.
 */
const PAGING_MACRO = `
        .macro  enable_paging
        li      t0, PT_BASE
        li      t2, PT_BASE + 4096
        li      t3, 0
        li      t1, 0xf                 # V R W X: region 0 as a superpage
        sw      t1, 0(t0)
        li      t3, 1
1:      li      t1, SUPERPAGES
        beqz    t1, 2f
        slli    a2, t3, 20              # a superpage: PPN[1] = region
        ori     a2, a2, 0xf
        j       3f
2:      slli    a2, t3, 12              # a pointer to this region's leaf table
        add     a2, a2, t2
        srli    a2, a2, 12
        slli    a2, a2, 10
        ori     a2, a2, 1
3:      slli    a3, t3, 2
        add     a3, a3, t0
        sw      a2, 0(a3)
        addi    t3, t3, 1
        li      t1, MAP_BYTES >> 22
        bne     t3, t1, 1b
        li      t1, SUPERPAGES
        bnez    t1, 5f
        li      t3, 1024                # leaves for pages 1024.. (regions 1..)
        li      t1, MAP_BYTES >> 12
4:      slli    a2, t3, 10
        ori     a2, a2, 0xf
        slli    a3, t3, 2
        add     a3, a3, t2
        sw      a2, 0(a3)
        addi    t3, t3, 1
        bne     t3, t1, 4b
5:      li      t1, 0x80000000 | (PT_BASE >> 12)
        csrw    ptbr, t1
        .endm
`;

function boot(source: string, config: Partial<VmConfig>, hostMemoryBytes: number): { hv: Hypervisor; vm: Vm } {
  const hv = createHypervisor({ hostMemoryBytes });
  const vm = hv.createVm({ memoryBytes: 32 * MiB, ...config });
  vm.loadImage(assemble(source, { fileName: 'large-pages-guest.s' }).image);
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
  return { hv, vm };
}

// ------------------------------------------------------------------------------------------------
// T-3

/** Pages each region's loop touches per iteration (hot and warm deliberately not in index order). */
const WORKING_SETS: readonly { region: number; pages: number }[] = [
  { region: 2, pages: 64 }, // warm
  { region: 4, pages: 384 }, // hot
  { region: 5, pages: 8 }, // lukewarm
];
const COLD_REGIONS = [1, 3];
const ITERATIONS = 300;

/**
 * Writes word 0 of every page of regions 1..5 (gpn*7+1); then ITERATIONS times, for each working
 * set, updates word 0 of its pages (x = 3x+1) and sums the new values; finally adds word 0 of
 * every page of regions 1..5. Exits with the sum.
 */
function prioritizerGuest(superpages: boolean): string {
  const table = WORKING_SETS.map(({ region, pages }) => `.word ${region * REGION_BYTES}, ${pages}`).join('\n        ');
  return `
        .equ    PT_BASE, ${PT_BASE}
        .equ    MAP_BYTES, ${32 * MiB}
        .equ    SUPERPAGES, ${superpages ? 1 : 0}
        ${PAGING_MACRO}
_start: enable_paging
        li      t0, ${REGION_BYTES}     # init regions 1..5
        li      s0, ${6 * REGION_BYTES}
        li      t3, 7
        li      a2, 4096
1:      srli    t1, t0, 12
        mul     t1, t1, t3
        addi    t1, t1, 1
        sw      t1, 0(t0)
        add     t0, t0, a2
        bne     t0, s0, 1b
        li      a3, 0                   # sum
        li      s2, 0                   # iteration
iter:   la      s0, work
        li      s1, ${WORKING_SETS.length}
set:    lw      t0, 0(s0)
        lw      t1, 4(s0)
page:   lw      t2, 0(t0)
        slli    t3, t2, 1
        add     t2, t2, t3
        addi    t2, t2, 1
        sw      t2, 0(t0)
        add     a3, a3, t2
        add     t0, t0, a2
        addi    t1, t1, -1
        bnez    t1, page
        addi    s0, s0, 8
        addi    s1, s1, -1
        bnez    s1, set
        addi    s2, s2, 1
        li      t3, ${ITERATIONS}
        bne     s2, t3, iter
        li      t0, ${REGION_BYTES}     # final pass over regions 1..5
        li      s0, ${6 * REGION_BYTES}
2:      lw      t1, 0(t0)
        add     a3, a3, t1
        add     t0, t0, a2
        bne     t0, s0, 2b
        li      a0, ${Hcall.EXIT}
        mv      a1, a3
        hcall
        .data
work:   ${table}
`;
}

/** The sum prioritizerGuest exits with, computed in JS. */
function prioritizerModel(): number {
  const word0 = new Map<number, number>();
  for (let gpn = 1024; gpn < 6 * 1024; gpn++) word0.set(gpn, gpn * 7 + 1);
  let sum = 0;
  for (let iteration = 0; iteration < ITERATIONS; iteration++) {
    for (const { region, pages } of WORKING_SETS) {
      for (let page = 0; page < pages; page++) {
        const gpn = region * 1024 + page;
        const value = (Math.imul(word0.get(gpn)!, 3) + 1) | 0;
        word0.set(gpn, value);
        sum = (sum + value) | 0;
      }
    }
  }
  for (const value of word0.values()) sum = (sum + value) | 0;
  return sum;
}

describe('T-3 AccessedBitPrioritizer', () => {
  const expectedSum = prioritizerModel();
  const cases = [
    { name: 'shadow mode, guest superpages', config: {}, superpages: true, source: 'hypervisor-marks' },
    { name: 'shadow mode, guest 4 KiB pages', config: {}, superpages: false, source: 'hypervisor-marks' },
    { name: 'nested mode, guest 4 KiB pages', config: { mmu: { mode: 'nested' } }, superpages: false, source: 'guest-page-tables' },
  ] as const;

  for (const testCase of cases) {
    it(`promotes the hottest regions first after the counting phase (${testCase.name})`, () => {
      const { hv, vm } = boot(prioritizerGuest(testCase.superpages), { largePages: 'off', ...testCase.config }, 64 * MiB);
      const prioritizer = new AccessedBitPrioritizer(vm, { intervalInstructions: 100_000, countingScans: 3, promotionsPerScan: 1 });
      expect(prioritizer.source).toBe(testCase.source);
      const result = hv.run({ maxInstructions: 20_000_000 }, [vm])[0]!;

      expect(result.reason).toEqual({ kind: 'halted', exitCode: expectedSum });
      const history = prioritizer.history();
      expect(history.length).toBeGreaterThanOrEqual(7);
      // First phase: counting only, nothing promoted even though counts were there.
      expect(history.slice(0, 3).map((scan) => scan.phase)).toEqual(['counting', 'counting', 'counting']);
      expect(history.slice(0, 3).every((scan) => scan.promoted.length === 0)).toBe(true);
      expect(history[1]!.counts.get(4)).toBe(384);
      // Then one region per scan, by the current count: hot (384), warm (64), lukewarm (8).
      expect(prioritizer.promotions().slice(0, 3)).toEqual([
        { scan: 4, region: 4, count: 384 },
        { scan: 5, region: 2, count: 64 },
        { scan: 6, region: 5, count: 8 },
      ]);
      // Cold regions are counted (zero) but never promoted.
      const promoted = prioritizer.promotions().map((promotion) => promotion.region);
      for (const cold of COLD_REGIONS) {
        expect(promoted).not.toContain(cold);
        expect(history.at(-1)!.counts.get(cold)).toBe(0);
        expect(vm.memory.regionIsLarge(cold)).toBe(false);
      }
      for (const { region } of WORKING_SETS) expect(vm.memory.regionIsLarge(region)).toBe(true);
      expect(vm.memory.largePageStats.regionsPromoted).toBe(prioritizer.stats().promotions);
      expect(prioritizer.stats()).toMatchObject({ countingScans: 3, refusals: 0 });
      if (testCase.superpages) expect(vm.mmu.stats.largeHits).toBeGreaterThan(0);
      if (testCase.source === 'guest-page-tables') expect(prioritizer.stats().guestAccessedBitsCleared).toBeGreaterThan(0);
      else expect(prioritizer.stats().guestAccessedBitsCleared).toBe(0);
    });
  }

  it('clears the guest A bits it counted in nested mode, and the guest sets them again', () => {
    const { hv, vm } = boot(prioritizerGuest(false), { largePages: 'off', mmu: { mode: 'nested' } }, 64 * MiB);
    // Scans only when the test asks (the interval is beyond the run).
    const prioritizer = new AccessedBitPrioritizer(vm, { intervalInstructions: 1e9, countingScans: 1000 });
    const leafPte = (gpn: number): number => new Int32Array(vm.readPhysical(PT_BASE + 4096 + gpn * 4, 4).buffer)[0]!;
    const coldGpn = 1 * 1024 + 10;
    const hotGpn = 4 * 1024 + 10;
    hv.run({ maxInstructions: 200_000 }, [vm]); // paging on, regions initialised, in the loop
    expect(leafPte(coldGpn) & Pte.A).toBe(Pte.A); // set by the walk of the initialising store
    const first = prioritizer.scan();
    expect(first.counts.get(1)).toBe(1024);
    expect(leafPte(coldGpn) & Pte.A).toBe(0);
    expect(leafPte(hotGpn) & Pte.A).toBe(0);
    hv.run({ maxInstructions: 20_000 }, [vm]); // a few iterations of the loop
    expect(leafPte(hotGpn) & Pte.A).toBe(Pte.A);
    expect(leafPte(coldGpn) & Pte.A).toBe(0);
    const second = prioritizer.scan();
    expect([1, 2, 3, 4, 5].map((region) => second.counts.get(region))).toEqual([0, 64, 0, 384, 8]);
    const total = (counts: ReadonlyMap<number, number>): number => [...counts.values()].reduce((sum, count) => sum + count, 0);
    expect(prioritizer.stats().guestAccessedBitsCleared).toBe(total(first.counts) + total(second.counts));
  });

  it('refuses bad options with a typed error', () => {
    const { vm } = boot(prioritizerGuest(true), {}, 8 * MiB);
    expect(() => new AccessedBitPrioritizer(vm, { intervalInstructions: 0 })).toThrow(LargePagePolicyError);
    expect(() => new AccessedBitPrioritizer(vm, { countingScans: -1 })).toThrow(LargePagePolicyError);
  });
});

// ------------------------------------------------------------------------------------------------
// T-4

const HOT = 1;
const COLD = 2;
const WALK_STEPS = 300_000;
const LCG_SEED = 12345;
const LCG_MUL = 1664525;
const LCG_ADD = 1013904223;
const COLD_MUL = 0x2545_f491;

/**
 * Fills every word of the cold region (index * COLD_MUL + 1), then makes WALK_STEPS random
 * read-xor-write steps over the hot region's 1 Mi words (the bench walker's loop), then reads the
 * whole cold region back, counting words that differ from what it wrote. Exits with the walk
 * checksum if every word matched, else with -mismatches.
 */
function walkerGuest(): string {
  return `
        .equ    PT_BASE, ${PT_BASE}
        .equ    MAP_BYTES, ${32 * MiB}
        .equ    SUPERPAGES, 1
        ${PAGING_MACRO}
_start: enable_paging
        li      s0, ${COLD * REGION_BYTES}
        li      s1, ${(COLD + 1) * REGION_BYTES}
        li      s2, ${COLD_MUL}
        li      t0, 0
1:      mul     t1, t0, s2
        addi    t1, t1, 1
        sw      t1, 0(s0)
        addi    t0, t0, 1
        addi    s0, s0, 4
        bne     s0, s1, 1b
        li      a0, 0                   # walk checksum
        li      s0, ${HOT * REGION_BYTES}
        li      s1, ${LCG_SEED}
        li      s2, ${LCG_MUL}
        li      s3, ${LCG_ADD}
        li      a3, ${WALK_STEPS}
2:      mul     s1, s1, s2
        add     s1, s1, s3
        srli    t0, s1, 12              # 20 bits: a word of the 4 MiB region
        slli    t0, t0, 2
        add     t0, t0, s0
        lw      t1, 0(t0)
        add     a0, a0, t1
        xor     t1, t1, s1
        sw      t1, 0(t0)
        addi    a3, a3, -1
        bnez    a3, 2b
        li      s0, ${COLD * REGION_BYTES}   # verify the cold region
        li      s1, ${(COLD + 1) * REGION_BYTES}
        li      s2, ${COLD_MUL}
        li      t0, 0
        li      a2, 0                   # mismatches
3:      mul     t1, t0, s2
        addi    t1, t1, 1
        lw      t2, 0(s0)
        beq     t1, t2, 4f
        addi    a2, a2, 1
4:      addi    t0, t0, 1
        addi    s0, s0, 4
        bne     s0, s1, 3b
        mv      a1, a0
        beqz    a2, 5f
        sub     a1, zero, a2
5:      li      a0, ${Hcall.EXIT}
        hcall
`;
}

function walkerModel(): number {
  const hot = new Int32Array(1 << 20);
  let state = LCG_SEED;
  let checksum = 0;
  for (let step = 0; step < WALK_STEPS; step++) {
    state = (Math.imul(state, LCG_MUL) + LCG_ADD) | 0;
    const index = state >>> 12;
    checksum = (checksum + hot[index]!) | 0;
    hot[index] = hot[index]! ^ state;
  }
  return checksum;
}

describe('T-4 LowActivityReclaimer', () => {
  for (const mode of ['shadow', 'nested'] as const) {
    it(`keeps the hot region large, breaks up the cold one and returns its memory (${mode} mode)`, () => {
      const { hv, vm } = boot(walkerGuest(), { largePages: 'always', mmu: { mode } }, 64 * MiB);
      // Filling the cold region takes ~6.3 M instructions; stop just after it, in the walk.
      let result = hv.run({ maxInstructions: 6_400_000 }, [vm])[0]!;
      expect(result.reason.kind).toBe('budget');
      expect(vm.memory.regionIsLarge(HOT)).toBe(true);
      expect(vm.memory.regionIsLarge(COLD)).toBe(true);
      const swap = SwapFile.createIn(dir);
      // Host memory is sampled right around each reclaimer tick (tickers run in order of
      // registration), so the JS heap's own growth between ticks does not blur the figures; the
      // heap V8 commits during the tick itself (the swap's buffers) is taken out of the RSS.
      const drops: { frames: number; resident: number; rss: number }[] = [];
      let before = { frames: 0, resident: 0, rss: 0 };
      const rssBesideHeap = (): number => processRss() - process.memoryUsage().heapTotal;
      vm.addTicker(100_000, () => {
        before = { frames: vm.memory.presentPages, resident: hv.residentPoolBytes(), rss: rssBesideHeap() };
      });
      const reclaimer = new LowActivityReclaimer(vm, {
        swap,
        intervalInstructions: 100_000,
        trackingInstructions: 400_000,
        activeFraction: 0.25,
        maxTracked: 4,
      });
      vm.addTicker(100_000, () => {
        drops.push({ frames: before.frames - vm.memory.presentPages, resident: before.resident - hv.residentPoolBytes(), rss: before.rss - rssBesideHeap() });
      });
      // The walk: long enough for demotion, tracking and the decisions.
      result = hv.run({ maxInstructions: 1_500_000 }, [vm])[0]!;
      expect(result.reason.kind).toBe('budget');
      const decisions = reclaimer.decisions();
      const hotDecision = decisions.find((decision) => decision.region === HOT);
      const coldDecision = decisions.find((decision) => decision.region === COLD);
      expect(hotDecision).toMatchObject({ outcome: 're-promoted' });
      expect(hotDecision!.accessedPages).toBeGreaterThan(900);
      expect(coldDecision).toMatchObject({ outcome: 'broken-up', accessedPages: 0, pagesReclaimed: 1024 });
      expect(vm.memory.regionIsLarge(HOT)).toBe(true);
      expect(vm.memory.regionIsLarge(COLD)).toBe(false);
      for (let gpn = COLD * 1024; gpn < (COLD + 1) * 1024; gpn++) {
        expect(vm.memory.stateOf(gpn)).toBe(PageState.SWAPPED);
      }
      // Host memory really went back at the decision: at least the cold region's 4 MiB of frames
      // (region 0's unused zero pages went too), all of it resident before and not after; the
      // process RSS falls with it, give or take the JS heap's own movements.
      const decisionTick = drops.reduce((best, drop) => (drop.frames > best.frames ? drop : best));
      expect(decisionTick.frames).toBeGreaterThanOrEqual(1024);
      expect(decisionTick.resident).toBeGreaterThanOrEqual(REGION_BYTES);
      // The process RSS is the noisy view of it (other allocations land in the same tick: a CI run
      // saw 1.5 MiB, another 1.67 MiB); the pool's residency above is the exact one.
      expect(decisionTick.rss).toBeGreaterThan(REGION_BYTES / 4);
      const stats = reclaimer.stats();
      expect(stats.regionsBrokenUp).toBeGreaterThanOrEqual(1);
      expect(stats.regionsRePromoted).toBeGreaterThanOrEqual(1);
      expect(stats.pagesReclaimed).toBeGreaterThanOrEqual(1024);
      expect(stats.bytesReturned).toBe(stats.pagesReclaimed * PAGE_SIZE);
      expect(swap.stats().pagesOut).toBeGreaterThanOrEqual(1024);

      // The rest: the guest re-reads the cold region through the swap, transparently. (The policy
      // is stopped first: once the walk ends the hot region turns cold too and would be reclaimed.)
      reclaimer.stop();
      result = hv.run({ maxInstructions: 30_000_000 }, [vm])[0]!;
      expect(result.reason).toEqual({ kind: 'halted', exitCode: walkerModel() });
      expect(swap.stats().pagesIn).toBeGreaterThanOrEqual(1024);
      expect(vm.memory.regionIsLarge(HOT)).toBe(true);
      swap.close();
    });
  }

  it('refuses bad options with a typed error', () => {
    const { vm } = boot(walkerGuest(), {}, 8 * MiB);
    const swap = SwapFile.createIn(dir);
    expect(() => new LowActivityReclaimer(vm, { swap, activeFraction: 0 })).toThrow(LargePagePolicyError);
    expect(() => new LowActivityReclaimer(vm, { swap, maxTracked: 0 })).toThrow(LargePagePolicyError);
    swap.close();
  });
});
