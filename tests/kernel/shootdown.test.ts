/**
 * Cross-vCPU coherence (T-1 shootdowns): four vCPUs share one address space (one root table, one
 * ASID). vCPU 0 changes mappings while the others read in loops; the hypervisor changes P2M
 * entries under all of them. Every reader checks, after each observation, that it did not read
 * through a translation older than the change it already knew about — so a stale entry is
 * detected, not just unlikely to matter. A negative control shows the detector does fire when
 * translations are allowed to go stale.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Pte } from '../../guest-isa/arch.ts';
import { createHypervisor, P2mFlag, PageState, type Vm } from '../../kernel/index.ts';
import { P2mEntry } from '../../kernel/memory/p2m.ts';
import { expectHalted, hex, MiB, pte } from './helpers.ts';
import { bootPaged, FIRST_TABLE, FRAMES, MMU_MODES, VA, type PagedGuest } from './shadow-helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const { V, R, W, A, D } = Pte;
const RW = V | R | W | A | D;
const VCPUS = 4;
const READERS = VCPUS - 1;
const LEAF = FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4;
const FRAME_A = FRAMES;
const FRAME_B = FRAMES + 0x1000;

// -------------------------------------------------------------------------------------------------

/**
 * vCPU 0 remaps VA back and forth between FRAME_A and FRAME_B. Before step k it writes k into
 * the frame it is about to map, then stores the PTE, then (with `shootdown`) makes every reader
 * sfence and waits for their acknowledgements, and finally publishes k in `seq`. A reader that
 * has read seq = s must then read a value ≥ s through VA: any translation made before step s
 * leads to a frame whose word is < s (frames are rewritten only right before being mapped).
 *
 * Reader record (4 words): observations, stale observations, seq changes seen, last seq.
 */
function remapGuest(steps: number, shootdown: boolean): string {
  const writerShootdown = shootdown ? `
        la t1, flushreq               # software TLB shootdown: ask, then wait for every ack
        li t2, 1
        amoadd t3, t2, (t1)
        addi t3, t3, 1
        la t1, acks
3:      lw t2, 4(t1)
        bne t2, t3, 3b
        lw t2, 8(t1)
        bne t2, t3, 3b
        lw t2, 12(t1)
        bne t2, t3, 3b
        sfence zero, zero` : '';
  const readerShootdown = shootdown ? `
        la t1, flushreq
        lw t2, 0(t1)
        lw t3, 0(s3)
        beq t2, t3, 1f
        sfence zero, zero             # the flush the writer asked for, then the ack
        sw t2, 0(s3)
1:` : '';
  return `
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR_A1                # every vCPU: the same root, the same ASID
        csrrw zero, ptbr, t0
        bnez a0, reader
writer:
        li s0, 1
        li s1, ${hex(FRAME_A)}
        li s2, ${hex(FRAME_B)}
        li s3, ${hex(LEAF)}
wloop:  andi t0, s0, 1
        beqz t0, 1f
        sw s0, 0(s1)                  # odd step: FRAME_A gets k, then VA -> FRAME_A
        li t2, ${hex(pte(FRAME_A, RW))}
        j 2f
1:      sw s0, 0(s2)                  # even step: FRAME_B
        li t2, ${hex(pte(FRAME_B, RW))}
2:      sw t2, 0(s3)                  # the PTE store
${writerShootdown}
        la t1, seq
        amoswap zero, s0, (t1)        # publish k
        addi s0, s0, 1
        li t0, ${steps}
        bge t0, s0, wloop
        la t1, done
        li t2, 1
        sw t2, 0(t1)
        la t1, finished
4:      lw t2, 0(t1)
        li t0, ${READERS}
        bne t2, t0, 4b
        exiti 0

reader:
        la s0, records
        slli t0, a0, 4
        add s0, s0, t0
        la s1, seq
        li s2, ${hex(VA)}
        la s3, acks
        slli t0, a0, 2
        add s3, s3, t0
        li a2, 0                      # observations
        li a3, 0                      # stale observations
        li a1, 0                      # seq changes seen
        li a0, -1                     # previous seq
rloop:
${readerShootdown}
        lw t1, 0(s1)                  # s = seq
        lw t2, 0(s2)                  # v through VA
        bgeu t2, t1, 2f
        addi a3, a3, 1                # v < s: read through a translation older than step s
2:      addi a2, a2, 1
        beq t1, a0, 3f
        addi a1, a1, 1
        addi a0, t1, 0
3:      la t1, done
        lw t1, 0(t1)
        beqz t1, rloop
        sw a2, 0(s0)
        sw a3, 4(s0)
        sw a1, 8(s0)
        sw a0, 12(s0)
        la t1, finished
        li t2, 1
        amoadd zero, t2, (t1)
        wfi                           # nothing wakes it: the writer powers off
handler: exiti 0x77
        .data
seq:      .word 0
done:     .word 0
finished: .word 0
flushreq: .word 0
acks:     .space ${VCPUS * 4}
records:  .space ${VCPUS * 16}
`;
}

interface ReaderRecord { observations: number; stale: number; seqChanges: number; lastSeq: number }

function runRemap(mmu: (typeof MMU_MODES)[number]['mmu'], shootdown: boolean, quantum: number, steps: number): { guest: PagedGuest; readers: ReaderRecord[] } {
  const guest = bootPaged(remapGuest(steps, shootdown), { hv, mmu, vcpus: VCPUS });
  guest.tables.setLeaf(VA, pte(FRAME_B, RW));
  expectHalted(guest.run({ maxInstructions: 2_000_000, quantum }), 0);
  const words = guest.words(guest.sym('records'), VCPUS * 4);
  const readers = Array.from({ length: READERS }, (_, i) => {
    const [observations, stale, seqChanges, lastSeq] = words.slice((i + 1) * 4, (i + 2) * 4) as [number, number, number, number];
    return { observations, stale, seqChanges, lastSeq };
  });
  return { guest, readers };
}

describe('a guest page-table write seen by every vCPU', () => {
  const STEPS = 150;

  for (const quantum of [1, 5, 23]) {
    it(`with traces, no reader ever reads through the old mapping, even without sfence (quantum ${quantum})`, () => {
      const { guest, readers } = runRemap({ mode: 'shadow' }, false, quantum, STEPS);
      for (const [i, reader] of readers.entries()) {
        expect(reader.stale, `reader ${i + 1}: ${JSON.stringify(reader)}`).toBe(0);
        // The readers really ran alongside the writer: they saw many of its steps.
        expect(reader.seqChanges, `reader ${i + 1}`).toBeGreaterThanOrEqual(quantum === 1 ? STEPS / 2 : 10);
        expect(reader.observations).toBeGreaterThanOrEqual(reader.seqChanges);
      }
      // Each remap was a trace hit that dropped the readers' entries for VA.
      expect(guest.vm.mmu.stats.traceHits).toBeGreaterThanOrEqual(STEPS - 5); // the first stores may precede any walk
      expect(guest.vm.translationsInvalidated).toBeGreaterThanOrEqual(STEPS);
      for (const vcpu of guest.vm.vcpus.slice(1)) expect(vcpu.tlb.entriesDropped, `vCPU ${vcpu.id}`).toBeGreaterThan(STEPS / 4);
    });
  }

  it.each(MMU_MODES)('with a software shootdown (ack after sfence), no reader sees the old mapping ($name)', (mode) => {
    const { readers } = runRemap(mode.mmu, true, 7, 60);
    for (const [i, reader] of readers.entries()) {
      expect(reader.stale, `reader ${i + 1}: ${JSON.stringify(reader)}`).toBe(0);
      expect(reader.seqChanges, `reader ${i + 1}`).toBeGreaterThanOrEqual(10);
    }
  });

  it('negative control: without sfence in nested mode the readers do catch stale reads', () => {
    // Nested mode keeps a translation until the vCPU's own sfence (the spec allows it): the
    // detector above must notice, or its zero counts would prove nothing.
    const { readers } = runRemap({ mode: 'nested' }, false, 5, 150);
    expect(readers.reduce((sum, reader) => sum + reader.stale, 0)).toBeGreaterThan(0);
  });
});

// -------------------------------------------------------------------------------------------------

/**
 * Every vCPU loops: read the generation word P[0] through VA (it must never go backwards), record
 * it, and bump its own counter P[16 + hartid] through VA. The host changes the P2M entry of P
 * between scheduling rounds (a ticker).
 *
 * Record (4 words per vCPU): last generation read, regressions, iterations.
 */
const P2M_GUEST = `
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR_A1
        csrrw zero, ptbr, t0
        la s0, records
        slli t0, a0, 4
        add s0, s0, t0
        li s1, ${hex(VA)}
        slli t0, a0, 2
        add s2, s1, t0                # s2 = &P[hartid] through VA; the counter is at +64
        li a1, 0                      # highest generation seen
        li a2, 0                      # regressions
        li a3, 0                      # iterations
loop:   lw t2, 0(s1)
        bgeu t2, a1, 1f
        addi a2, a2, 1
1:      addi a1, t2, 0
        sw t2, 0(s0)
        lw t3, 64(s2)
        addi t3, t3, 1
        sw t3, 64(s2)
        addi a3, a3, 1
        sw a2, 4(s0)
        sw a3, 8(s0)
        j loop
handler: exiti 0x77
        .data
records: .space ${VCPUS * 16}
`;

describe.each(MMU_MODES)('the hypervisor changes a P2M entry under running vCPUs ($name)', (mode) => {
  const P_GPN = FRAMES / 4096 + 8;
  const GENERATIONS = 12;
  const QUANTUM = 150;

  function lastSeen(guest: PagedGuest): number[] {
    return guest.words(guest.sym('records'), VCPUS * 4).filter((_, i) => i % 4 === 0);
  }

  function boot(): PagedGuest {
    const guest = bootPaged(P2M_GUEST, { hv, mmu: mode.mmu, vcpus: VCPUS });
    guest.tables.setLeaf(VA, pte(P_GPN * 4096, RW));
    return guest;
  }

  /** Runs until GENERATIONS changes were made; `change` makes generation g and reports what it saw. */
  function runChanges(guest: PagedGuest, change: (vm: Vm, generation: number) => void): { seenBefore: number[][]; dropped: number[][]; shootdowns: number[] } {
    const seenBefore: number[][] = [];
    const dropped: number[][] = [];
    const shootdowns: number[] = [];
    let generation = 0;
    guest.vm.addTicker(VCPUS * QUANTUM * 3, (vm) => {
      seenBefore.push(lastSeen(guest)); // what each vCPU read last, before this change
      if (generation === GENERATIONS) {
        vm.powerOff(0);
        return;
      }
      generation++;
      const droppedBefore = vm.vcpus.map((v) => v.tlb.entriesDropped);
      const shootdownsBefore = [hv.shootdowns, hv.shootdownEntries];
      change(vm, generation);
      dropped.push(vm.vcpus.map((v, i) => v.tlb.entriesDropped - droppedBefore[i]!));
      shootdowns.push(hv.shootdowns - shootdownsBefore[0]!, hv.shootdownEntries - shootdownsBefore[1]!);
    });
    expectHalted(guest.run({ maxInstructions: 5_000_000, quantum: QUANTUM }), 0);
    return { seenBefore, dropped, shootdowns };
  }

  function expectCoherent(guest: PagedGuest, seenBefore: number[][], dropped: number[][], shootdowns: number[]): void {
    // Before change g+1, every vCPU had last read generation g: none kept reading the old frame.
    expect(seenBefore.map((seen) => seen.join(','))).toEqual(Array.from({ length: GENERATIONS + 1 }, (_, g) => Array(VCPUS).fill(g).join(',')));
    // Every change was one shootdown that dropped entries of every vCPU.
    expect(shootdowns.filter((_, i) => i % 2 === 0)).toEqual(Array(GENERATIONS).fill(1));
    for (const entries of shootdowns.filter((_, i) => i % 2 === 1)) expect(entries).toBeGreaterThanOrEqual(VCPUS);
    for (const perVcpu of dropped) for (const count of perVcpu) expect(count).toBeGreaterThanOrEqual(1);
    // No write went to a frame the page had left: each counter in P equals the iterations.
    const records = guest.words(guest.sym('records'), VCPUS * 4);
    const counters = guest.words(P_GPN * 4096 + 64, VCPUS);
    for (let i = 0; i < VCPUS; i++) {
      expect(records[i * 4 + 1], `vCPU ${i} regressions`).toBe(0);
      expect(counters[i], `vCPU ${i} counter`).toBe(records[i * 4 + 2]);
      expect(records[i * 4 + 2]).toBeGreaterThan(GENERATIONS * 10);
    }
  }

  it('moving the page to a new frame with new contents (installPage): every vCPU reads the new bytes', () => {
    const guest = boot();
    const frames = new Set<number>();
    const { seenBefore, dropped, shootdowns } = runChanges(guest, (vm, generation) => {
      vm.memory.installPage(P_GPN, (bytes) => {
        bytes.set(vm.memory.pageBytes(P_GPN));
        new Int32Array(bytes.buffer, bytes.byteOffset, 1)[0] = generation;
      });
      frames.add(P2mEntry.frame(vm.memory.entryOf(P_GPN)));
    });
    expectCoherent(guest, seenBefore, dropped, shootdowns);
    expect(frames.size).toBeGreaterThan(1); // the page really moved between host frames
  });

  it('making the page copy-on-write (sharePage into a snapshot page): no write lands in the old frame after the change', () => {
    const guest = boot();
    /** Generation g's snapshot: a page that shares P's frame from the change on. */
    const snapshotGpn = (generation: number): number => 0x400 + generation;
    // The hypervisor keeps the old frame as a snapshot; the write fault copies the page.
    const snapshots: { gpn: number; bytes: Uint8Array }[] = [];
    let copies = 0;
    guest.vm.memory.onWriteProtected(P2mFlag.COPY_ON_WRITE, (memory, gpn, flag) => {
      expect([gpn, flag]).toEqual([P_GPN, P2mFlag.COPY_ON_WRITE]);
      memory.installPage(gpn, memory.pageBytes(gpn)); // a private copy, not protected
      copies++;
    });
    const { seenBefore, dropped, shootdowns } = runChanges(guest, (vm, generation) => {
      const memory = vm.memory;
      // The host writes the generation (the page is private again: the readers' counters broke
      // the last share), then shares the frame with the snapshot page.
      expect(memory.isPrivate(P_GPN)).toBe(true);
      memory.writePhysical(P_GPN * 4096, new Uint8Array(new Int32Array([generation]).buffer));
      memory.sharePage(P_GPN, memory, snapshotGpn(generation));
      expect(memory.sameFrame(P_GPN, memory, snapshotGpn(generation))).toBe(true);
      snapshots.push({ gpn: snapshotGpn(generation), bytes: memory.readPhysical(P_GPN * 4096, 4096) });
    });
    expectCoherent(guest, seenBefore, dropped, shootdowns);
    expect(copies).toBe(GENERATIONS);
    const memory = guest.vm.memory;
    for (const [i, snapshot] of snapshots.entries()) {
      expect(memory.stateOf(snapshot.gpn)).toBe(PageState.PRESENT);
      expect(memory.sameFrame(snapshot.gpn, memory, P_GPN)).toBe(false);
      expect(memory.isPrivate(snapshot.gpn), `snapshot ${i + 1} is the only holder of the old frame`).toBe(true);
      expect(Buffer.compare(memory.pageBytes(snapshot.gpn), snapshot.bytes), `snapshot ${i + 1} changed after the page became copy-on-write`).toBe(0);
    }
  });
});
