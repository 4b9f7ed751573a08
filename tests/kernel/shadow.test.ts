/**
 * The shadow MMU stays coherent (T-1): guest page-table changes with and without sfence, root
 * entry changes, A/D bits cleared by the guest, context switches, ASID reuse, traces that stop
 * on pages written like data, and batched population. Every scenario runs in the three MMU
 * configurations (shadow with traces, shadow without traces, nested) and asserts what the guest
 * reads; the counters that differ between configurations are asserted where they are the point.
 *
 * Where the spec lets an implementation keep an old translation (no sfence yet), the test only
 * asserts that the value is the old or the new one, and the new one after the sfence.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Pte } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { createHypervisor, P2mFlag, PageState } from '../../kernel/index.ts';
import { P2mEntry } from '../../kernel/memory/p2m.ts';
import { expectHalted, hex, HostPageTables, MiB, pte, ptbrFor, writeWord } from './helpers.ts';
import { bootPaged, fillFrame, FIRST_TABLE, FRAMES, MMU_MODES, mmuDelta, pagedProgram as program, ROOT, VA, type PagedGuest } from './shadow-helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const { V, R, W, X, A, D } = Pte;
const RW = V | R | W | A | D;
const OLD = FRAMES;
const NEW = FRAMES + 0x1000;
/** The level-0 entry of VA in the first leaf table HostPageTables allocates. */
const LEAF = FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4;


const FLUSHES = [
  ['sfence zero, zero', 'sfence zero, zero'],
  ['sfence by address', 'sfence t1, zero'],
  ['sfence by ASID', 'li t0, 1\n        sfence zero, t0'],
  ['sfence by address and ASID', 'li t0, 1\n        sfence t1, t0'],
] as const;

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('a guest changes a leaf PTE ($name)', (mode) => {
  /** Reads and writes VA (OLD), remaps it to NEW, reads it (no sfence), runs `flush`, reads and writes again. */
  function remap(flush: string): PagedGuest {
    const guest = bootPaged(program(`
        li t1, ${hex(VA)}
        lw s0, 0(t1)                  # caches the old translation (read and write)
        sw s0, 8(t1)
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        probe 1
        sw t2, 0(t3)                  # remap VA: OLD -> NEW
        lw s1, 0(t1)                  # no sfence yet
        probe 2
${flush}
        lw s2, 0(t1)
        li t2, 0x5555
        sw t2, 4(t1)
        probe 3`), { hv, mmu: mode.mmu });
    guest.tables.setLeaf(VA, pte(OLD, RW));
    fillFrame(guest.vm, OLD, 0x0_1d00);
    fillFrame(guest.vm, NEW, 0x0_e000);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    return guest;
  }

  for (const [name, flush] of FLUSHES) {
    it(`${name}: loads and stores use the new mapping afterwards`, () => {
      const guest = remap(`        ${flush}`);
      const regs = guest.vcpu().regs;
      expect(hex(regs[12]!)).toBe(hex(0x0_1d00));
      expect(hex(regs[14]!)).toBe(hex(0x0_e000));
      expect(hex(guest.word(NEW + 4))).toBe(hex(0x5555));
      expect(hex(guest.word(OLD + 4))).toBe(hex(0x0_1d01)); // the old frame was not written
      const flushes = mmuDelta(guest.probe(2), guest.probe(3));
      if (mode.traces) expect([flushes.flushesElided, flushes.flushesFull]).toEqual([1, 0]);
      else if (!mode.nested) expect([flushes.flushesElided, flushes.flushesFull]).toEqual([0, 1]);
      else expect([flushes.flushesElided, flushes.flushesFull]).toEqual([0, 0]);
    });
  }

  it(mode.traces ? 'without sfence the new mapping is seen at once (a trace dropped the old one)' : 'without sfence the old or the new mapping is seen', () => {
    const guest = remap('');
    const seen = guest.vcpu().regs[13]! >>> 0;
    const change = mmuDelta(guest.probe(1), guest.probe(2));
    if (mode.traces) {
      expect(hex(seen)).toBe(hex(0x0_e000));
      expect(change.traceHits).toBeGreaterThanOrEqual(1);
      expect(change.shadowEntriesDropped).toBeGreaterThanOrEqual(1);
      expect(guest.probe(2).translationsInvalidated).toBeGreaterThan(guest.probe(1).translationsInvalidated);
    } else {
      expect([0x0_1d00, 0x0_e000]).toContain(seen);
      expect(change.traceHits).toBe(0);
    }
  });
});

// -------------------------------------------------------------------------------------------------

/** Reads one word from each of `count` pages from VA (offset 4 × page index) into `dest`. */
const READ_PAGES_MACRO = `
        .macro  readpages dest, count
        la      s1, \\dest
        li      t1, ${hex(VA)}
        li      t3, \\count
1:      lw      t2, 0(t1)
        sw      t2, 0(s1)
        addi    s1, s1, 4
        li      t0, 0x1004
        add     t1, t1, t0
        addi    t3, t3, -1
        bnez    t3, 1b
        .endm
`;

describe.each(MMU_MODES)('a guest changes a root entry ($name)', (mode) => {
  const PAGES = 8;
  const OLD_BASE = FRAMES + 0x1_0000;
  const NEW_BASE = FRAMES + 0x2_0000;
  const OTHER_TABLE = 0x10_8000;

  it('pointing VPN[1] at another leaf table drops the whole 4 MiB range', () => {
    const guest = bootPaged(READ_PAGES_MACRO + program(`
        readpages before, ${PAGES}
        li t2, ${hex(pte(OTHER_TABLE, V))}
        li t3, ${hex(ROOT + (VA >>> 22) * 4)}
        probe 1
        sw t2, 0(t3)                  # VPN[1] now points at OTHER_TABLE
        readpages nosfence, ${PAGES}
        probe 2
        sfence zero, zero             # what the spec asks after changing a pointer
        readpages after, ${PAGES}`, `
before:   .space ${PAGES * 4}
nosfence: .space ${PAGES * 4}
after:    .space ${PAGES * 4}`), { hv, mmu: mode.mmu });
    guest.vm.writePhysical(OTHER_TABLE, new Uint8Array(4096));
    for (let i = 0; i < PAGES; i++) {
      guest.tables.setLeaf(VA + i * 0x1000, pte(OLD_BASE + i * 0x1000, RW));
      writeWord(guest.vm, OTHER_TABLE + i * 4, pte(NEW_BASE + i * 0x1000, RW));
      fillFrame(guest.vm, OLD_BASE + i * 0x1000, 0xa000_0000 + (i << 16));
      fillFrame(guest.vm, NEW_BASE + i * 0x1000, 0xb000_0000 + (i << 16));
    }
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    const oldValues = Array.from({ length: PAGES }, (_, i) => (0xa000_0000 + (i << 16) + i) >>> 0);
    const newValues = Array.from({ length: PAGES }, (_, i) => (0xb000_0000 + (i << 16) + i) >>> 0);
    expect(guest.words(guest.sym('before'), PAGES).map(hex)).toEqual(oldValues.map(hex));
    expect(guest.words(guest.sym('after'), PAGES).map(hex)).toEqual(newValues.map(hex));
    const noSfence = guest.words(guest.sym('nosfence'), PAGES);
    const change = mmuDelta(guest.probe(1), guest.probe(2));
    if (mode.traces) {
      expect(noSfence.map(hex)).toEqual(newValues.map(hex));
      expect(change.shadowEntriesDropped).toBeGreaterThanOrEqual(PAGES);
      expect(guest.probe(2).translationsInvalidated - guest.probe(1).translationsInvalidated).toBeGreaterThanOrEqual(PAGES);
    } else {
      noSfence.forEach((value, i) => expect([oldValues[i], newValues[i]], `page ${i}`).toContain(value));
    }
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('accessed and dirty bits cleared by the guest are set again ($name)', (mode) => {
  const variants = mode.traces ? [['with sfence', 'sfence t1, zero'], ['without sfence', '']] : [['with sfence', 'sfence t1, zero']];
  for (const [name, flush] of variants) {
    it(`${name}: A on the next access, D on the next write`, () => {
      const guest = bootPaged(program(`
        la s1, ptes
        li t1, ${hex(VA)}
        li t3, ${hex(LEAF)}
        sw a0, 0(t1)                  # sets A and D
        lw t2, 0(t3)
        sw t2, 0(s1)
        li t2, ${hex(pte(OLD, V | R | W))}
        sw t2, 0(t3)                  # clear A and D
        ${flush}
        probe 1
        lw a2, 0(t1)                  # A again
        probe 2
        lw t2, 0(t3)
        sw t2, 4(s1)
        sw a2, 4(t1)                  # D again
        lw t2, 0(t3)
        sw t2, 8(s1)
        li t2, ${hex(pte(OLD, V | R | W | A))}
        sw t2, 0(t3)                  # clear D only
        ${flush}
        lw a2, 8(t1)                  # a read leaves D clear
        lw t2, 0(t3)
        sw t2, 12(s1)
        sw a2, 12(t1)                 # a write sets it
        lw t2, 0(t3)
        sw t2, 16(s1)`, 'ptes: .space 20'), { hv, mmu: mode.mmu });
      guest.tables.setLeaf(VA, pte(OLD, V | R | W));
      expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
      expect(guest.words(guest.sym('ptes'), 5).map(hex)).toEqual(
        [V | R | W | A | D, V | R | W | A, V | R | W | A | D, V | R | W | A, V | R | W | A | D].map((flags) => hex(pte(OLD, flags))),
      );
      expect(mmuDelta(guest.probe(1), guest.probe(2)).walks).toBe(1); // the access after the clear walked
    });
  }
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('address spaces and ASIDs ($name)', (mode) => {
  const ROOT_B = 0x18_0000;
  const PAGES = 4;
  const ROUNDS = 6;
  const A_BASE = FRAMES + 0x1_0000;
  const B_BASE = FRAMES + 0x2_0000;

  /**
   * Two address spaces mapping the same VAs onto different frames. One round: switch to A, sum 4
   * pages and bump a word in each, switch to B, the same. Round sums go to `sums`.
   */
  function twoSpaces(ptbrB: number, switchFlush: string, middle = ''): PagedGuest {
    const round = (asidOfB: string) => `
        csrrw zero, ptbr, s2
        ${switchFlush.replace('ASID', '1')}
        jal ra, sumpages
        csrrw zero, ptbr, s3
        ${switchFlush.replace('ASID', asidOfB)}
        jal ra, sumpages`;
    const asidOfB = String((ptbrB >>> 22) & 0x1ff);
    const guest = bootPaged(program(`
        la s0, sums
        li s2, PTBR_A1
        li s3, ${hex(ptbrB)}
${round(asidOfB)}
        probe 1
        li a3, ${ROUNDS - 1}
2:
${round(asidOfB)}
        addi a3, a3, -1
        bnez a3, 2b
        probe 2
${middle}
        probe 3
        exiti 0
sumpages:                             # sum one word of each page and bump a word per page
        li t1, ${hex(VA)}
        li t3, ${PAGES}
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
        ret`, `sums: .space ${ROUNDS * 8}`), { hv, mmu: mode.mmu });
    const tablesB = new HostPageTables(guest.vm, ROOT_B, ROOT_B + 0x1000);
    for (let i = 0; i < PAGES; i++) {
      guest.tables.setLeaf(VA + i * 0x1000, pte(A_BASE + i * 0x1000, RW));
      tablesB.setLeaf(VA + i * 0x1000, pte(B_BASE + i * 0x1000, RW));
      fillFrame(guest.vm, A_BASE + i * 0x1000, 0x100 * (i + 1));
      fillFrame(guest.vm, B_BASE + i * 0x1000, 0x10000 * (i + 1));
    }
    expectHalted(guest.run({ maxInstructions: 100_000 }), 0);
    const sumA = 0x100 * (1 + 2 + 3 + 4);
    const sumB = 0x10000 * (1 + 2 + 3 + 4);
    expect(guest.words(guest.sym('sums'), ROUNDS * 2).map(hex)).toEqual(Array(ROUNDS).fill([sumA, sumB]).flat().map(hex));
    // Each space's counters were bumped once per round, never the other space's.
    for (let i = 0; i < PAGES; i++) {
      expect(guest.word(A_BASE + i * 0x1000 + 4), `A page ${i}`).toBe(0x100 * (i + 1) + 1 + ROUNDS);
      expect(guest.word(B_BASE + i * 0x1000 + 4), `B page ${i}`).toBe(0x10000 * (i + 1) + 1 + ROUNDS);
    }
    return guest;
  }

  it('a context switch to another ASID drops nothing, and returning needs no walk', () => {
    const guest = twoSpaces(ptbrFor(ROOT_B, 2), '', `
        li t1, ${hex(VA)}
        li t0, 1
        sfence zero, zero
        sfence t1, zero
        sfence zero, t0
        sfence t1, t0`);
    const before = guest.probe(1);
    const after = guest.probe(2);
    expect(after.tlbDropped).toEqual(before.tlbDropped);
    expect(after.tlbFullFlushes).toEqual(before.tlbFullFlushes);
    expect(after.translationsInvalidated).toBe(before.translationsInvalidated);
    expect(mmuDelta(before, after).asidReuses).toBe(0);
    if (!mode.nested) {
      // Both spaces map the same VAs, so their TLB entries evict each other (the TLB is
      // direct-mapped by VPN): every return misses the TLB and is answered by the shadow.
      expect(mmuDelta(before, after).walks).toBe(0);
      expect(mmuDelta(before, after).shadowHits).toBeGreaterThanOrEqual((ROUNDS - 1) * 2 * PAGES);
    }
    // Four sfences: elided with traces, full shadow drops without, TLB flushes in nested mode.
    const flushes = mmuDelta(after, guest.probe(3));
    if (mode.traces) {
      expect([flushes.flushesElided, flushes.flushesFull]).toEqual([4, 0]);
      expect(guest.probe(3).tlbDropped).toEqual(after.tlbDropped);
    } else {
      expect([flushes.flushesElided, flushes.flushesFull]).toEqual([0, mode.nested ? 0 : 4]);
      expect(guest.probe(3).tlbDropped[0]).toBeGreaterThan(after.tlbDropped[0]!);
    }
  });

  it(mode.nested ? 'an ASID reused for another root is correct with the sfence the spec asks for' : 'an ASID reused for another root without sfence is still correct, from the shadow', () => {
    // Both spaces run as ASID 1. Nested mode keeps no shadow: the guest flushes the ASID as the
    // spec requires; the shadow modes notice the reuse themselves.
    const guest = twoSpaces(ptbrFor(ROOT_B, 1), mode.nested ? 'li t0, ASID\n        sfence zero, t0' : '');
    const change = mmuDelta(guest.probe(1), guest.probe(2));
    if (!mode.nested) {
      expect(change.asidReuses).toBe((ROUNDS - 1) * 2);
      expect(change.walks).toBe(0); // each return to a space is answered by its shadow
      expect(change.shadowHits).toBeGreaterThanOrEqual((ROUNDS - 1) * 2 * PAGES);
    }
  });
});

describe.each(MMU_MODES)('one root under two ASIDs ($name)', (mode) => {
  it('a PTE change followed by sfence zero, zero is seen under both ASIDs', () => {
    const guest = bootPaged(program(`
        la s1, seen
        li s2, PTBR_A1
        li s3, PTBR_A2
        li t1, ${hex(VA)}
        lw t2, 0(t1)                  # ASID 1 caches VA -> OLD
        sw t2, 0(s1)
        csrrw zero, ptbr, s3
        lw t2, 0(t1)                  # ASID 2 (same root) caches VA -> OLD
        sw t2, 4(s1)
        csrrw zero, ptbr, s2
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)                  # remap VA -> NEW
        sfence zero, zero             # every translation, of every ASID
        csrrw zero, ptbr, s3
        lw t2, 0(t1)                  # ASID 2 first: its entry was the last one filled
        sw t2, 8(s1)
        csrrw zero, ptbr, s2
        lw t2, 0(t1)
        sw t2, 12(s1)`, 'seen: .space 16'), { hv, mmu: mode.mmu });
    guest.tables.setLeaf(VA, pte(OLD, RW));
    fillFrame(guest.vm, OLD, 0x0_1d00);
    fillFrame(guest.vm, NEW, 0x0_e000);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('seen'), 4).map(hex)).toEqual([0x0_1d00, 0x0_1d00, 0x0_e000, 0x0_e000].map(hex));
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('a page-table page reused as data ($name)', (mode) => {
  const WRITES = 100;
  const TABLE_GPN = FIRST_TABLE / 4096;
  it('stops being traced after many writes without walks, and every access stays correct', () => {
    const flush = mode.traces ? '' : 'sfence t1, zero';
    const guest = bootPaged(program(`
        la s1, seen
        li t1, ${hex(VA)}
        lw t2, 0(t1)                  # walks through the leaf table (traces it)
        sw t2, 0(s1)
        probe 1
        li t3, ${hex(FIRST_TABLE + 2048)}
        li t2, ${WRITES}
1:      slli a2, t2, 3                # invalid PTEs (V = 0) used as data
        sw a2, 0(t3)
        addi t3, t3, 4
        addi t2, t2, -1
        bnez t2, 1b
        probe 2
        li t3, ${hex(FIRST_TABLE + 2048)}
        li t2, ${WRITES}
        li a2, 0
1:      lw a3, 0(t3)
        add a2, a2, a3
        addi t3, t3, 4
        addi t2, t2, -1
        bnez t2, 1b
        sw a2, 4(s1)
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)                  # remap VA -> NEW
        ${flush}
        lw t2, 0(t1)
        sw t2, 8(s1)
        probe 3
        li t2, ${hex(pte(OLD, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)                  # and back to OLD
        ${flush}
        lw t2, 0(t1)
        sw t2, 12(s1)`, 'seen: .space 16'), { hv, mmu: mode.mmu });
    guest.tables.setLeaf(VA, pte(OLD, RW));
    fillFrame(guest.vm, OLD, 0x0_1d00);
    fillFrame(guest.vm, NEW, 0x0_e000);
    const tracedAt: boolean[] = [];
    for (const id of [1, 2, 3]) guest.onProbe(id, () => tracedAt.push((guest.vm.memory.flagsOf(TABLE_GPN) & P2mFlag.TRACED) !== 0));
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('seen'), 4).map(hex)).toEqual([0x0_1d00, 8 * (WRITES * (WRITES + 1)) / 2, 0x0_e000, 0x0_1d00].map(hex));
    expect(guest.words(FIRST_TABLE + 2048, 3)).toEqual([WRITES * 8, (WRITES - 1) * 8, (WRITES - 2) * 8]);
    const flood = mmuDelta(guest.probe(1), guest.probe(2));
    if (mode.traces) {
      expect(tracedAt).toEqual([true, false, true]); // traced, flooded, traced again by the next walk
      expect(flood.tracesRemoved).toBe(1);
      expect(flood.traceHits).toBeGreaterThan(64);
      expect(flood.traceHits).toBeLessThan(WRITES); // the writes after the flood were not reported
      expect(mmuDelta(guest.probe(2), guest.probe(3)).tracesPlaced).toBeGreaterThanOrEqual(1);
    } else {
      expect(tracedAt).toEqual([false, false, false]);
      expect(flood.traceHits).toBe(0);
    }
  });
});

// -------------------------------------------------------------------------------------------------

describe('batched population (shadow mode)', () => {
  const PAGES = 256;
  const BASE = FRAMES + 0x10_0000;

  function scan(mmu: (typeof MMU_MODES)[number]['mmu'] | { mode: 'shadow'; batch: number }): { walks: number; batchFilled: number; sum: number } {
    const guest = bootPaged(program(`
        li t1, ${hex(VA)}
        li t3, ${PAGES}
        li a2, 0
        probe 1
1:      lw t2, 0(t1)
        add a2, a2, t2
        li t0, 0x1004
        add t1, t1, t0
        addi t3, t3, -1
        bnez t3, 1b
        probe 2
        exitr a2`), { hv, mmu });
    for (let i = 0; i < PAGES; i++) {
      guest.tables.setLeaf(VA + i * 0x1000, pte(BASE + i * 0x1000, V | R | A));
      fillFrame(guest.vm, BASE + i * 0x1000, i * 0x1_0000);
    }
    const sum = expectHalted(guest.run({ maxInstructions: 100_000 }), undefined) >>> 0;
    const delta = mmuDelta(guest.probe(1), guest.probe(2));
    hv.destroyVm(guest.vm);
    return { walks: delta.walks, batchFilled: delta.batchFilled, sum };
  }

  it('a sequential scan with batch 16 walks about 16 times less than batch 0, and reads the same', () => {
    let expected = 0;
    for (let i = 0; i < PAGES; i++) expected = (expected + i * 0x1_0000 + i) >>> 0;
    const unbatched = scan({ mode: 'shadow', batch: 0 });
    const batched = scan({ mode: 'shadow', batch: 16 });
    const batchedNoTraces = scan({ mode: 'shadow', traces: false });
    const nested = scan({ mode: 'nested' });
    expect([unbatched.sum, batched.sum, batchedNoTraces.sum, nested.sum].map(hex)).toEqual(Array(4).fill(hex(expected)));
    expect(unbatched.walks).toBeGreaterThanOrEqual(PAGES);
    expect(unbatched.batchFilled).toBe(0);
    expect(batched.walks * 12).toBeLessThanOrEqual(unbatched.walks);
    expect(batched.walks * 20).toBeGreaterThanOrEqual(unbatched.walks);
    expect(batched.batchFilled).toBe(PAGES - batched.walks);
    expect(batchedNoTraces.walks).toBe(batched.walks);
    expect(nested.walks).toBeGreaterThanOrEqual(PAGES);
  });

  it.each(MMU_MODES.filter((m) => !m.nested))('neighbours whose A bit is clear are not cached ($name)', (mode) => {
    // Pages 0..15 of one batch: even pages accessed before (A set), odd pages never (A clear).
    const guest = bootPaged(program(`
        li t1, ${hex(VA)}
        probe 1
        lw t2, 0(t1)                  # page 0: one walk, batch fills the accessed neighbours
        li t3, 7
1:      li t0, 0x2000
        add t1, t1, t0
        lw t2, 0(t1)                  # pages 2, 4 … 14: from the batch
        addi t3, t3, -1
        bnez t3, 1b
        probe 2
        li t1, ${hex(VA + 0x1000)}
        lw t2, 0(t1)                  # page 1: its A was clear, so it walks
        probe 3`), { hv, mmu: mode.mmu });
    const flags = (page: number): number => (page % 2 === 0 ? V | R | A : V | R);
    for (let page = 0; page < 16; page++) {
      guest.tables.setLeaf(VA + page * 0x1000, pte(BASE + page * 0x1000, flags(page)));
      fillFrame(guest.vm, BASE + page * 0x1000, page << 16);
    }
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    const fill = mmuDelta(guest.probe(1), guest.probe(2));
    expect(fill.walks).toBe(1);
    expect(fill.batchFilled).toBe(7);
    expect(mmuDelta(guest.probe(2), guest.probe(3)).walks).toBe(1);
    // The guest's A bits: set where it accessed (page 1 by its walk), still clear elsewhere.
    const ptes = guest.words(FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4, 16);
    expect(ptes.map(hex)).toEqual(Array.from({ length: 16 }, (_, page) => hex(pte(BASE + page * 0x1000, page === 1 ? V | R | A : flags(page)))));
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('P2M changes under guest page tables ($name)', (mode) => {
  const TABLE_GPN = FIRST_TABLE / 4096;
  /** A spare guest page, outside everything the program maps. */
  const SPARE_GPN = (FRAMES + 0x8_0000) / 4096;
  const MOVES = [
    ['installPage copies it to a fresh private frame', 'install'],
    ['it becomes a copy-on-write share of another page (sharePage), so the guest\'s remap breaks the share', 'share'],
  ] as const;
  for (const [name, how] of MOVES) {
    it(`moving a leaf-table page to another host frame keeps it coherent (${name})`, () => {
      const guest = bootPaged(program(`
        la s1, seen
        li t1, ${hex(VA)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        probe 1                       # the hypervisor moves the leaf table's page
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)                  # remap VA -> NEW
        sfence zero, zero
        lw t2, 0(t1)
        sw t2, 4(s1)`, 'seen: .space 8'), { hv, mmu: mode.mmu });
      guest.tables.setLeaf(VA, pte(OLD, RW));
      fillFrame(guest.vm, OLD, 0x0_1d00);
      fillFrame(guest.vm, NEW, 0x0_e000);
      const frames: { before: number; after: number; traced: boolean }[] = [];
      guest.onProbe(1, () => {
        const memory = guest.vm.memory;
        const before = P2mEntry.frame(memory.entryOf(TABLE_GPN));
        const table = memory.readPhysical(TABLE_GPN * 4096, 4096);
        if (how === 'install') {
          memory.installPage(TABLE_GPN, table);
        } else {
          memory.writePhysical(SPARE_GPN * 4096, table);
          memory.sharePage(SPARE_GPN, memory, TABLE_GPN);
          expect(memory.sameFrame(SPARE_GPN, memory, TABLE_GPN)).toBe(true);
          expect(memory.flagsOf(TABLE_GPN) & P2mFlag.COPY_ON_WRITE).toBe(P2mFlag.COPY_ON_WRITE);
        }
        expect(memory.stateOf(TABLE_GPN)).toBe(PageState.PRESENT);
        // New contents: the MMU dropped what it derived from the old ones (and its trace).
        frames.push({ before, after: P2mEntry.frame(memory.entryOf(TABLE_GPN)), traced: (memory.flagsOf(TABLE_GPN) & P2mFlag.TRACED) !== 0 });
      });
      expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
      expect(frames).toHaveLength(1);
      expect(frames[0]!.after).not.toBe(frames[0]!.before);
      expect(frames[0]!.traced).toBe(false);
      expect(guest.words(guest.sym('seen'), 2).map(hex)).toEqual([0x0_1d00, 0x0_e000].map(hex));
      // The guest's next walk traced the page again, on whatever frame backs it now.
      expect((guest.vm.memory.flagsOf(TABLE_GPN) & P2mFlag.TRACED) !== 0).toBe(mode.traces);
      expect(guest.word(LEAF)).toBe(pte(NEW, RW));
      if (how === 'share') {
        // The guest's store went to a private copy; the other sharer still holds the old leaf.
        expect(guest.vm.memory.sameFrame(SPARE_GPN, guest.vm.memory, TABLE_GPN)).toBe(false);
        expect(guest.word(SPARE_GPN * 4096 + (LEAF - FIRST_TABLE))).toBe(pte(OLD, RW));
        expect(guest.vm.memory.cowCopies).toBe(1);
      }
    });
  }
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('sfence by address on a superpage ($name)', (mode) => {
  it('removes every 4 KiB translation made from the 4 MiB mapping', () => {
    const SUPER_VA = 0x4040_0000;
    const guest = bootPaged(program(`
        la s1, seen
        li t1, ${hex(SUPER_VA)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        lw t2, 0x1000(t1)             # another 4 KiB page of the same superpage
        sw t2, 4(s1)
        li t2, ${hex(pte(0x80_0000, RW))}
        li t3, ${hex(ROOT + (SUPER_VA >>> 22) * 4)}
        sw t2, 0(t3)                  # the superpage now maps another 4 MiB
        sfence t1, zero               # by the address of its first page
        lw t2, 0x1000(t1)
        sw t2, 8(s1)
        lw t2, 0(t1)
        sw t2, 12(s1)`, 'seen: .space 16'), { hv, mmu: mode.mmu });
    guest.tables.setRoot(SUPER_VA >>> 22, pte(0x40_0000, RW));
    for (const [gpa, tag] of [[0x40_0000, 0xa0], [0x40_1000, 0xa1], [0x80_0000, 0xb0], [0x80_1000, 0xb1]] as const) writeWord(guest.vm, gpa, tag);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('seen'), 4).map(hex)).toEqual([0xa0, 0xa1, 0xb1, 0xb0].map(hex));
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('every kind of write to a page table is seen ($name)', (mode) => {
  // A remap by a byte store, a halfword store, an AMO, and by the host (a device writing guest
  // memory). With traces no sfence is needed; otherwise the guest flushes as the spec asks.
  const newPte = pte(NEW, RW);
  const byte1 = (newPte >>> 8) & 0xff;
  const half0 = newPte & 0xffff;
  const cases = [
    ['a byte store', `li t2, ${byte1}\n        sb t2, 1(t3)`],
    ['a halfword store', `li t2, ${half0}\n        sh t2, 0(t3)`],
    ['amoswap', `li t2, ${hex(newPte)}\n        amoswap zero, t2, (t3)`],
    ['a host write (DMA)', 'probe 5'],
  ] as const;
  for (const [name, store] of cases) {
    it(`remapping by ${name}`, () => {
      const guest = bootPaged(program(`
        la s1, seen
        li t1, ${hex(VA)}
        li t3, ${hex(LEAF)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        ${store}
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 4(s1)`, 'seen: .space 8'), { hv, mmu: mode.mmu });
      expect((pte(OLD, RW) & 0xffff_00ff) === (newPte & 0xffff_00ff)).toBe(true); // one byte differs
      guest.tables.setLeaf(VA, pte(OLD, RW));
      fillFrame(guest.vm, OLD, 0x0_1d00);
      fillFrame(guest.vm, NEW, 0x0_e000);
      guest.onProbe(5, () => writeWord(guest.vm, LEAF, newPte));
      expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
      expect(guest.words(guest.sym('seen'), 2).map(hex)).toEqual([0x0_1d00, 0x0_e000].map(hex));
      expect(hex(guest.word(LEAF))).toBe(hex(newPte));
    });
  }

  it('a remapped code page runs the new code', () => {
    const guest = bootPaged(program(`
        li t1, ${hex(VA)}
        jalr ra, t1, 0                # runs OLD: a2 = 1
        addi s1, a2, 0
        li t2, ${hex(pte(NEW, V | R | X | A))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)
        ${mode.traces ? '' : 'sfence t1, zero'}
        jalr ra, t1, 0                # runs NEW: a2 = 2
        addi s2, a2, 0`), { hv, mmu: mode.mmu });
    guest.tables.setLeaf(VA, pte(OLD, V | R | X | A));
    const code = (value: number): Uint8Array =>
      new Uint8Array(new Uint32Array([encodeInstruction('addi', { rd: 6, rs1: 0, imm: value }), encodeInstruction('jalr', { rd: 0, rs1: 1, imm: 0 })]).buffer);
    guest.vm.writePhysical(OLD, code(1));
    guest.vm.writePhysical(NEW, code(2));
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect([guest.vcpu().regs[13], guest.vcpu().regs[14]]).toEqual([1, 2]);
  });
});

describe.each(MMU_MODES)('a leaf table shared by two address spaces ($name)', (mode) => {
  it('a PTE change in it is seen from both spaces', () => {
    const ROOT_B = 0x18_0000;
    const guest = bootPaged(program(`
        la s1, seen
        li s2, PTBR_A1
        li s3, ${hex(ptbrFor(ROOT_B, 2))}
        li t1, ${hex(VA)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        csrrw zero, ptbr, s3
        lw t2, 0(t1)
        sw t2, 4(s1)
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)                  # one store changes VA in both spaces
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 8(s1)
        csrrw zero, ptbr, s2
        ${mode.traces ? '' : 'sfence t1, zero'}
        lw t2, 0(t1)
        sw t2, 12(s1)`, 'seen: .space 16'), { hv, mmu: mode.mmu });
    guest.tables.setLeaf(VA, pte(OLD, RW));
    const tablesB = new HostPageTables(guest.vm, ROOT_B, ROOT_B + 0x1000);
    tablesB.setRoot(VA >>> 22, pte(FIRST_TABLE, V)); // the same leaf table
    fillFrame(guest.vm, OLD, 0x0_1d00);
    fillFrame(guest.vm, NEW, 0x0_e000);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('seen'), 4).map(hex)).toEqual([0x0_1d00, 0x0_1d00, 0x0_e000, 0x0_e000].map(hex));
    if (mode.traces) expect(guest.vm.mmu.stats.shadowEntriesDropped).toBeGreaterThanOrEqual(2); // one per space
  });
});

describe.each(MMU_MODES.filter((m) => !m.nested))('more address spaces than the shadow keeps ($name)', (mode) => {
  it('with maxSpaces 1, evicted spaces are rebuilt correctly, including a change made while evicted', () => {
    const ROOT_B = 0x18_0000;
    const ROUNDS = 4;
    const guest = bootPaged(program(`
        la s1, seen
        li s2, PTBR_A1
        li s3, ${hex(ptbrFor(ROOT_B, 2))}
        li t1, ${hex(VA)}
        li a3, ${ROUNDS}
1:      csrrw zero, ptbr, s2
        lw t2, 0(t1)
        sw t2, 0(s1)
        csrrw zero, ptbr, s3          # B's space evicts A's
        lw t2, 0(t1)
        sw t2, 4(s1)
        li t2, ${hex(pte(NEW, RW))}
        li t3, ${hex(LEAF)}
        sw t2, 0(t3)                  # change A's mapping while A is not current
        ${mode.traces ? '' : 'sfence zero, zero'}
        csrrw zero, ptbr, s2
        lw t2, 0(t1)
        sw t2, 8(s1)
        li t2, ${hex(pte(OLD, RW))}
        sw t2, 0(t3)                  # and back, while A is current
        ${mode.traces ? '' : 'sfence zero, zero'}
        addi s1, s1, 12
        addi a3, a3, -1
        bnez a3, 1b`, `seen: .space ${ROUNDS * 12}`), { hv, mmu: { ...mode.mmu, maxSpaces: 1 } });
    const tablesB = new HostPageTables(guest.vm, ROOT_B, ROOT_B + 0x1000);
    guest.tables.setLeaf(VA, pte(OLD, RW));
    tablesB.setLeaf(VA, pte(FRAMES + 0x2000, RW));
    fillFrame(guest.vm, OLD, 0x0_1d00);
    fillFrame(guest.vm, NEW, 0x0_e000);
    fillFrame(guest.vm, FRAMES + 0x2000, 0x0_b000);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('seen'), ROUNDS * 3).map(hex)).toEqual(Array(ROUNDS).fill([0x0_1d00, 0x0_b000, 0x0_e000]).flat().map(hex));
    expect(guest.vm.mmu.stats.spacesDropped).toBeGreaterThanOrEqual(ROUNDS * 2 - 1);
  });
});
