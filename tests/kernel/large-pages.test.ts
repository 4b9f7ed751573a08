/**
 * Opportunistic large pages (T-2): a guest superpage over a guest-physical region backed by one
 * aligned 4 MiB host run is translated as one large mapping. The tests assert what the guest
 * reads at every step (superpage split and merge, a P2M change inside the region, promotion onto
 * a run) and the counters that show the large mapping in use (largeHits, walks).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Pte } from '../../guest-isa/arch.ts';
import { createHypervisor, PageState, type LargePagePolicy, type MmuOptions } from '../../kernel/index.ts';
import { expectHalted, hex, MiB, pte, writeWord } from './helpers.ts';
import { bootPaged, fillFrame, FIRST_TABLE, FRAMES, MMU_MODES, mmuDelta, pagedProgram as program, ROOT, type PagedGuest } from './shadow-helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const { V, R, W, A, D } = Pte;
const RW = V | R | W | A | D;
/** The guest superpage: VA 0x40400000 onto guest-physical region 1 (0x400000 … 0x7fffff). */
const SUPER_VA = 0x4040_0000;
const REGION = 1;
const REGION_GPA = REGION * 4 * MiB;
const ROOT_ENTRY = ROOT + (SUPER_VA >>> 22) * 4;


function bootSuper(source: string, mmu: MmuOptions, largePages: LargePagePolicy): PagedGuest {
  const guest = bootPaged(source, { hv, mmu, largePages });
  guest.tables.setRoot(SUPER_VA >>> 22, pte(REGION_GPA, RW));
  return guest;
}

// -------------------------------------------------------------------------------------------------

describe('random access through a superpage', () => {
  const ACCESSES = 20_000;
  const SEED = 0x1234_5678;

  /** What the guest below computes: a read-modify-write at pseudo-random words of the region. */
  function reference(): number {
    const memory = new Map<number, number>();
    let x = SEED;
    let sum = 0;
    for (let i = 0; i < ACCESSES; i++) {
      x = (Math.imul(x, 1103515245) + 12345) | 0;
      const offset = (x >>> 8) & 0x3ffffc;
      const value = ((memory.get(offset) ?? 0) + x) | 0;
      memory.set(offset, value);
      sum = (sum + value) | 0;
    }
    return sum;
  }

  function run(mmu: MmuOptions, largePages: LargePagePolicy): { sum: number; walks: number; largeHits: number; large: boolean; runFrame: number } {
    const guest = bootSuper(program(`
        li s0, ${hex(SUPER_VA)}
        li s1, 0x3ffffc
        li s2, ${hex(SEED)}
        li s3, ${ACCESSES}
        li a3, 1103515245
        li a2, 0
        probe 1
1:      mul s2, s2, a3
        addi s2, s2, 12345
        srli t0, s2, 8
        and t0, t0, s1
        add t0, t0, s0
        lw t1, 0(t0)
        add t1, t1, s2
        sw t1, 0(t0)
        add a2, a2, t1
        addi s3, s3, -1
        bnez s3, 1b
        addi s3, a2, 0
        probe 2
        exitr s3`), mmu, largePages);
    const sum = expectHalted(guest.run({ maxInstructions: 1_000_000 }));
    const delta = mmuDelta(guest.probe(1), guest.probe(2));
    const large = guest.vm.memory.regionIsLarge(REGION);
    const runFrame = guest.vm.memory.regionRunFrame(REGION);
    hv.destroyVm(guest.vm);
    return { sum, walks: delta.walks, largeHits: delta.largeHits, large, runFrame };
  }

  it('is backed by a host run (largePages always or superpages), used as a large mapping in every mode, with identical data', () => {
    const expected = reference();
    const results = new Map<string, ReturnType<typeof run>>();
    for (const mode of MMU_MODES) {
      for (const policy of ['always', 'superpages', 'off'] as const) results.set(`${mode.name}/${policy}`, run(mode.mmu, policy));
    }
    for (const [name, result] of results) {
      expect(hex(result.sum), name).toBe(hex(expected));
      // 'superpages' backs the region with a run too: the guest mapped it large before touching it.
      if (!name.endsWith('off')) {
        expect(result.large, name).toBe(true);
        expect(result.runFrame % 1024, name).toBe(0);
        expect(result.largeHits, name).toBeGreaterThanOrEqual(1000); // about one per page touched
      } else {
        expect(result.large, name).toBe(false);
        expect(result.runFrame, name).toBe(-1);
        expect(result.largeHits, name).toBe(0);
      }
    }
    // Nested: one walk, then the large entry answers every miss; without a run, a walk per page.
    const nestedAlways = results.get('nested/always')!;
    const nestedOff = results.get('nested/off')!;
    expect(nestedOff.walks).toBeGreaterThanOrEqual(1000);
    expect(nestedAlways.walks * 50).toBeLessThan(nestedOff.walks);
    // The shadow caches the superpage either way: one walk.
    expect(results.get('shadow with traces/always')!.walks).toBeLessThanOrEqual(2);
    expect(results.get('shadow with traces/off')!.walks).toBeLessThanOrEqual(2);
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('superpage split and merge ($name)', (mode) => {
  const SPLIT_TABLE = 0x10_8000;
  const MOVED_PAGE = 5;
  const OTHER = FRAMES; // where the split table maps page MOVED_PAGE instead
  const PAGES = [0, MOVED_PAGE, 7];
  const tag = (page: number): number => 0x5000_0000 + (page << 16);

  for (const [name, splitFlush] of [['sfence zero, zero', 'sfence zero, zero'], ['sfence by the superpage address', 'sfence t1, zero']] as const) {
    it(`a superpage split into 4 KiB pages (${name}) and merged back reads right at every step`, () => {
      const read = (first: number): string => PAGES.map((page, i) => `
        li t1, ${hex(SUPER_VA + page * 0x1000)}
        lw t2, 0(t1)
        sw t2, ${(first + i) * 4}(s1)`).join('');
      const guest = bootSuper(program(`
        la s1, seen
        probe 1
${read(0)}
        li t2, ${hex(pte(SPLIT_TABLE, V))}
        li t3, ${hex(ROOT_ENTRY)}
        sw t2, 0(t3)                  # split: the superpage becomes a pointer to SPLIT_TABLE
        li t1, ${hex(SUPER_VA)}
        ${splitFlush}
        probe 2
${read(3)}
        probe 3
        li t2, ${hex(pte(REGION_GPA, RW))}
        li t3, ${hex(ROOT_ENTRY)}
        sw t2, 0(t3)                  # merge: the superpage again
        sfence zero, zero             # what the spec asks after changing a pointer
${read(6)}
        probe 4`, 'seen: .space 36'), mode.mmu, 'always');
      guest.vm.writePhysical(SPLIT_TABLE, new Uint8Array(4096));
      for (let page = 0; page < 1024; page++) {
        writeWord(guest.vm, SPLIT_TABLE + page * 4, pte(page === MOVED_PAGE ? OTHER : REGION_GPA + page * 0x1000, RW));
      }
      for (const page of PAGES) fillFrame(guest.vm, REGION_GPA + page * 0x1000, tag(page));
      fillFrame(guest.vm, OTHER, 0x0_7e00_0000);
      expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
      expect(guest.vm.memory.regionIsLarge(REGION)).toBe(true);
      const words = guest.words(guest.sym('seen'), 9).map(hex);
      expect(words.slice(0, 3)).toEqual(PAGES.map((page) => hex(tag(page))));
      expect(words.slice(3, 6)).toEqual(PAGES.map((page) => hex(page === MOVED_PAGE ? 0x0_7e00_0000 : tag(page))));
      expect(words.slice(6, 9)).toEqual(PAGES.map((page) => hex(tag(page))));
      expect(mmuDelta(guest.probe(1), guest.probe(2)).largeHits).toBeGreaterThanOrEqual(PAGES.length);
      expect(mmuDelta(guest.probe(3), guest.probe(4)).largeHits).toBeGreaterThanOrEqual(PAGES.length);
    });
  }
});

// -------------------------------------------------------------------------------------------------

/** Sums word 0 of `count` consecutive superpage pages from `first` (a subroutine: s0 = result). */
const SWEEP = `
sweep:  li t1, ${hex(SUPER_VA)}
        slli t0, a2, 12
        add t1, t1, t0
        li s0, 0
1:      lw t2, 0(t1)
        add s0, s0, t2
        li t0, 0x1000
        add t1, t1, t0
        addi a3, a3, -1
        bnez a3, 1b
        ret`;

describe.each(MMU_MODES)('a P2M change inside a run-backed region ($name)', (mode) => {
  const CHANGED_PAGE = 300;

  function run(change: boolean): { guest: PagedGuest; phase1: number; phase2: number; large: number; walks: number } {
    const guest = bootSuper(program(`
        li a2, 0
        li a3, 256
        jal ra, sweep                 # pages 0..255
        addi s1, s0, 0
        probe 1                       # the host changes page ${CHANGED_PAGE} (or not)
        li a2, 256
        li a3, 256
        jal ra, sweep                 # pages 256..511: all TLB misses
        addi s2, s0, 0
        probe 2
        exiti 0
${SWEEP}`), mode.mmu, 'always');
    for (let page = 0; page < 512; page++) writeWord(guest.vm, REGION_GPA + page * 0x1000, page * 3);
    if (change) {
      guest.onProbe(1, () => {
        const vm = guest.vm;
        const gpn = REGION_GPA / 4096 + CHANGED_PAGE;
        expect(vm.memory.regionIsLarge(REGION)).toBe(true);
        // The page moves to a fresh frame (outside the run) with word 0 changed.
        vm.memory.installPage(gpn, (bytes) => {
          bytes.set(vm.memory.pageBytes(gpn));
          new Int32Array(bytes.buffer, bytes.byteOffset, 1)[0] = 0x10_0000;
        });
        expect(vm.memory.stateOf(gpn)).toBe(PageState.PRESENT);
      });
    }
    expectHalted(guest.run({ maxInstructions: 100_000 }), 0);
    const delta = mmuDelta(guest.probe(1), guest.probe(2));
    return { guest, phase1: guest.vcpu().regs[13]!, phase2: guest.vcpu().regs[14]!, large: delta.largeHits, walks: delta.walks };
  }

  const sum = (first: number, count: number): number => Array.from({ length: count }, (_, i) => (first + i) * 3).reduce((a, b) => a + b, 0);

  it('makes the region no longer large; reads see the changed page', () => {
    const control = run(false);
    expect(control.phase2).toBe(sum(256, 256));
    expect(control.large).toBeGreaterThanOrEqual(256); // the measurement can see large hits
    hv.destroyVm(control.guest.vm);

    const changed = run(true);
    expect(changed.phase1).toBe(sum(0, 256));
    expect(changed.phase2).toBe(sum(256, 256) - CHANGED_PAGE * 3 + 0x10_0000);
    expect(changed.guest.vm.memory.regionIsLarge(REGION)).toBe(false);
    expect(changed.guest.vm.memory.regionRunFrame(REGION)).toBe(-1);
    expect(changed.large).toBe(0);
    if (mode.nested) expect(changed.walks).toBeGreaterThanOrEqual(256); // back to a walk per page
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('promoting a region onto a host run ($name)', (mode) => {
  it('vm.memory.promoteRegion moves the pages with their data; the superpage becomes a large mapping', () => {
    const guest = bootSuper(program(`
        li t1, ${hex(SUPER_VA)}
        li t3, 256
        li t2, 7
1:      sw t2, 0(t1)                  # pages 0..255: first touch, one frame each (policy off)
        addi t2, t2, 7
        li t0, 0x1000
        add t1, t1, t0
        addi t3, t3, -1
        bnez t3, 1b
        probe 1                       # the host promotes the region
        li a2, 0
        li a3, 512
        jal ra, sweep                 # every page, the written ones and untouched ones
        addi s1, s0, 0
        probe 2
        exiti 0
${SWEEP}`), mode.mmu, 'off');
    const promotion: { before: number; promoted: boolean; after: number }[] = [];
    guest.onProbe(1, () => {
      const before = guest.vm.memory.regionRunFrame(REGION);
      expect(guest.vm.memory.regionIsLarge(REGION)).toBe(false);
      const promoted = guest.vm.memory.promoteRegion(REGION);
      expect(guest.vm.memory.regionIsLarge(REGION)).toBe(promoted);
      promotion.push({ before, promoted, after: guest.vm.memory.regionRunFrame(REGION) });
    });
    expectHalted(guest.run({ maxInstructions: 100_000 }), 0);
    expect(promotion).toHaveLength(1);
    expect(promotion[0]!.before).toBe(-1);
    expect(promotion[0]!.promoted).toBe(true);
    expect(promotion[0]!.after).toBeGreaterThanOrEqual(0);
    expect(promotion[0]!.after % 1024).toBe(0);
    expect(guest.vm.memory.largePageStats.regionsPromoted).toBe(1);
    let expected = 0;
    for (let page = 0; page < 256; page++) expected += 7 * (page + 1);
    expect(guest.vcpu().regs[13]).toBe(expected);
    for (const page of [0, 100, 255]) expect(guest.word(REGION_GPA + page * 0x1000), `page ${page}`).toBe(7 * (page + 1));
    // The translations made before the move were shot down; the new ones are large.
    expect(mmuDelta(guest.probe(1), guest.probe(2)).largeHits).toBeGreaterThanOrEqual(256);
  });
});


describe.each(MMU_MODES)('promoting the region the guest runs from ($name)', (mode) => {
  it('code, page tables and data move onto a run mid-program; traces and mappings keep working', () => {
    const VA = 0x4000_0000;
    const OLD = FRAMES;
    const NEW = FRAMES + 0x1000;
    const guest = bootPaged(program(`
        la s1, seen
        li t1, ${hex(VA)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        probe 1                       # the host promotes region 0: this code, its tables, its data
        lw t2, 0(t1)
        sw t2, 4(s1)
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(guest0Leaf(VA))}
        sw t2, 0(t3)                  # remap VA -> NEW in the moved leaf table
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 8(s1)`, 'seen: .space 12'), { hv, mmu: mode.mmu, largePages: 'off' });
    guest.tables.setLeaf(VA, pte(OLD, RW));
    fillFrame(guest.vm, OLD, 0x0_1d00);
    fillFrame(guest.vm, NEW, 0x0_e000);
    const promoted: boolean[] = [];
    guest.onProbe(1, () => promoted.push(guest.vm.memory.promoteRegion(0)));
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(promoted).toEqual([true]);
    expect(guest.vm.memory.regionIsLarge(0)).toBe(true);
    expect(guest.words(guest.sym('seen'), 3).map(hex)).toEqual([0x0_1d00, 0x0_1d00, 0x0_e000].map(hex));
  });
});

/** The level-0 entry of `va` in the first leaf table of a PagedGuest. */
function guest0Leaf(va: number): number {
  return FIRST_TABLE + ((va >>> 12) & 0x3ff) * 4;
}
