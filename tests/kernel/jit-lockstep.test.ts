/**
 * The compiled tier (VmConfig.tier 'jit', kernel/cpu/jit) against the interpreter, in lockstep:
 * the same program runs in two hypervisors, one per tier, stopped after the same random
 * instruction budgets with random scheduler quanta; at every stop the run results, every vCPU's
 * architectural state and counters (pc, registers, CSRs, instret, clock, traps, interrupts, TLB
 * hits) and all of guest RAM must be identical. The jit side compiles on a block's second entry
 * so that nearly all of its code runs compiled, and each test checks that it did.
 *
 * Programs: random ones (ALU with division edge cases, loads and stores of every width over
 * three pages, misaligned accesses that trap, ecalls, AMOs, calls into other pages, inner
 * loops, self-modifying code patched inside the running block, a periodic timer interrupt),
 * with paging off and on; and structured ones: a store that rewrites its own block's next
 * instruction, a loop that rewrites a page-table entry to remap the page it runs from.
 */
import { describe, expect, it } from 'vitest';
import { Pte, Reg } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { Flag, INSTRUCTIONS } from '../../guest-isa/opcodes.ts';
import { opClass, OpClass } from '../../kernel/cpu/jit/compiler.ts';
import { forgetCompiledFunctions } from '../../kernel/cpu/jit/jit.ts';
import { bootPair, bootTier, lockstep, LOCKSTEP_PTBR, LOCKSTEP_ROOT, randomLockstep, type TierGuest } from './fixtures/jit-lockstep.ts';
import { hex, HostPageTables, pte } from './helpers.ts';

const FIRST_TABLE = LOCKSTEP_ROOT + 0x1000;
const RANDOM_PROGRAMS = 12;

/** The u32 at a label of the program. */
function wordAt(guest: TierGuest, label: string): number {
  const bytes = guest.vm.readPhysical(guest.symbols.get(label)! >>> 0, 4);
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

describe('compiled tier against the interpreter, in lockstep', () => {
  it('classifies every instruction of the opcode table (system instructions go back to the interpreter)', () => {
    for (const spec of INSTRUCTIONS) {
      const cls = opClass(spec.opcode);
      if (spec.mnemonic === 'fence') expect(cls).toBe(OpClass.NOP);
      else if ((spec.flags & Flag.SYSTEM) !== 0 || spec.mnemonic === 'ecall' || spec.mnemonic === 'ebreak') expect(cls, spec.mnemonic).toBe(OpClass.EXIT);
      else expect(cls, spec.mnemonic).not.toBe(OpClass.EXIT);
    }
  });

  it('random programs (paging off and on, traps, SMC, timer interrupts): identical at every stop', () => {
    let total = 0;
    let totalStops = 0;
    let compiledSum = 0;
    let strips = 0;
    for (let n = 0; n < RANDOM_PROGRAMS; n++) {
      const report = randomLockstep(n, 400_000);
      expect(report.divergence).toBeNull();
      expect(report.traps, `program ${n}`).toBeGreaterThan(0);
      total += report.instructions;
      totalStops += report.stops;
      compiledSum += report.compiledShare;
      strips += report.strips;
    }
    // The jit side really ran compiled code for much of it (SMC in the main loop invalidates it every pass).
    expect(compiledSum / RANDOM_PROGRAMS).toBeGreaterThan(0.25);
    // Some of their memory-walking loops ran strip-mined.
    expect(strips).toBeGreaterThan(0);
    console.log(`jit lockstep: ${RANDOM_PROGRAMS} random programs, ${total} instructions per tier, ${totalStops} stops compared, ${Math.round((compiledSum / RANDOM_PROGRAMS) * 100)} % compiled`);
  });

  it('a store that rewrites the next instruction of the running compiled block takes effect at once', () => {
    const pair = bootPair(`
_start: la s0, results
        la t1, target
        li t3, 0x10000
        li s1, 200
loop:   lw t2, 0(t1)
        xor t2, t2, t3                # addi a2, a2, 1 <-> addi a2, a2, 0 (the imm's low bit)
        sw t2, 0(t1)
target: addi a2, a2, 1
        addi s1, s1, -1
        bne s1, zero, loop
        sw a2, 0(s0)
        exiti 0
        .data
results: .space 4
`);
    const report = lockstep(pair, 7, 1_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).toBe('halted');
    // 200 passes alternate between the patched (+0) and the original (+1) instruction.
    expect(wordAt(pair.jit, 'results')).toBe(100);
    // The compiled loop ran, and each store into it made it stale.
    const stats = pair.jit.hv.jitStats();
    expect(stats.retiredCompiled).toBeGreaterThan(100);
    expect(stats.invalidations).toBeGreaterThan(10);
  });

  it('a loop that rewrites the page-table entry of the page it runs from (with and without sfence)', () => {
    const CODE_VA = 0x4000_0000;
    const OLD = 0x30_0000;
    const NEW = 0x30_1000;
    const { S1, S2, S3, T0, T2, T3, RA } = { S1: Reg.S0 + 1, S2: Reg.S0 + 2, S3: Reg.S0 + 3, T0: Reg.T0, T2: Reg.T0 + 2, T3: Reg.T0 + 3, RA: Reg.RA };
    // The same loop at OLD and NEW except for its first immediate: which page ran is visible in s1.
    const code = (step: number): Uint8Array => new Uint8Array(new Uint32Array([
      encodeInstruction('addi', { rd: S1, rs1: S1, imm: step }),
      encodeInstruction('addi', { rd: S2, rs1: S2, imm: -1 }),
      encodeInstruction('andi', { rd: T0, rs1: S2, imm: 15 }),
      encodeInstruction('bne', { rs1: T0, rs2: 0, imm: -3 }),
      encodeInstruction('sw', { rs2: T2, rs1: T3, imm: 0 }), // the leaf PTE of CODE_VA: OLD <-> NEW
      encodeInstruction('xor', { rd: T2, rs1: T2, rs2: Reg.GP }),
      encodeInstruction('xori', { rd: S3, rs1: S3, imm: 1 }),
      encodeInstruction('beq', { rs1: S3, rs2: 0, imm: 2 }),
      encodeInstruction('sfence', { rs1: 0, rs2: 0 }),
      encodeInstruction('bne', { rs1: S2, rs2: 0, imm: -9 }),
      encodeInstruction('jalr', { rd: 0, rs1: RA, imm: 0 }),
    ]).buffer);
    const flags = Pte.V | Pte.R | Pte.X | Pte.A;
    const pair = bootPair(`
_start: li t0, ${hex(LOCKSTEP_PTBR)}
        csrrw zero, ptbr, t0
        li t2, ${hex(pte(NEW, flags))}
        li gp, ${hex(pte(NEW, flags) ^ pte(OLD, flags))}
        li t3, LEAF
        li s2, 4000
        li t1, ${hex(CODE_VA)}
        jalr ra, t1, 0
        exiti 0
`.replace('LEAF', hex(FIRST_TABLE + ((CODE_VA >>> 12) & 0x3ff) * 4)), (vm) => {
      const tables = new HostPageTables(vm, LOCKSTEP_ROOT, FIRST_TABLE);
      tables.map(CODE_VA, OLD, flags);
      vm.writePhysical(OLD, code(1));
      vm.writePhysical(NEW, code(1000));
    });
    const report = lockstep(pair, 11, 1_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).toBe('halted');
    const s1 = pair.jit.vm.vcpus[0]!.regs[Reg.S0 + 1]!;
    // Both pages ran (s1 counts 1 per pass on OLD, 1000 on NEW).
    expect(s1 % 1000).toBeGreaterThan(0);
    expect(s1).toBeGreaterThan(1000);
    expect(report.compiledShare).toBeGreaterThan(0.5);
  });

  it('a loop that remaps the data page it reads and writes sees the new page at once (no stale TLB entry in compiled code)', () => {
    const DATA_VA = 0x4000_0000;
    const A = 0x30_0000;
    const B = 0x30_1000;
    const flags = Pte.V | Pte.R | Pte.W | Pte.A | Pte.D;
    const pair = bootPair(`
_start: li t0, ${hex(LOCKSTEP_PTBR)}
        csrrw zero, ptbr, t0
        li t1, ${hex(DATA_VA)}
        li t3, ${hex(FIRST_TABLE + ((DATA_VA >>> 12) & 0x3ff) * 4)}
        li t2, ${hex(pte(B, flags))}
        li gp, ${hex(pte(A, flags) ^ pte(B, flags))}
        li s1, 3000
loop:   lw a2, 0(t1)                  # A or B
        add s2, s2, a2
        sw s2, 8(t1)
        sw t2, 0(t3)                  # remap DATA_VA (a traced page-table store: TLB entries go)
        xor t2, t2, gp
        lw a3, 4(t1)                  # the same page, already remapped
        add s2, s2, a3
        sw s2, 12(t1)
        addi s1, s1, -1
        bne s1, zero, loop
        exiti 0
`, (vm) => {
      const tables = new HostPageTables(vm, LOCKSTEP_ROOT, FIRST_TABLE);
      tables.map(DATA_VA, A, flags);
      vm.writePhysical(A, new Uint8Array(new Uint32Array([1, 10, 0, 0]).buffer));
      vm.writePhysical(B, new Uint8Array(new Uint32Array([100, 1000, 0, 0]).buffer));
    });
    const report = lockstep(pair, 13, 1_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).toBe('halted');
    // Each pass reads one page before the remap and the other after it: A[0] + B[1], then B[0] + A[1].
    expect(pair.jit.vm.vcpus[0]!.regs[Reg.S0 + 2]).toBe(1500 * (1 + 1000) + 1500 * (100 + 10));
    expect(report.compiledShare).toBeGreaterThan(0.5);
  });

  it('strip-mined loops (word, halfword, byte; forward and backward; across pages) match the interpreter at every stop', () => {
    const DATA_VA = 0x4000_0000;
    const flags = Pte.V | Pte.R | Pte.W | Pte.A | Pte.D;
    const pair = bootPair(`
_start: li t0, ${hex(LOCKSTEP_PTBR)}
        csrrw zero, ptbr, t0
        li s1, 12
pass:   li a1, ${hex(DATA_VA)}                # prefix sum over 3 pages of words
        li a2, ${hex(DATA_VA + 3 * 4096)}
        li t0, 0
1:      lw t1, 0(a1)
        add t0, t0, t1
        sw t0, 0(a1)
        addi a1, a1, 4
        bne a1, a2, 1b
        li a1, ${hex(DATA_VA + 3 * 4096 - 2)}  # halfwords backwards, the step before the access
        li a2, ${hex(DATA_VA + 2)}
2:      addi a1, a1, -2
        lh t2, 0(a1)
        xor t3, t3, t2
        sh t3, 2(a1)
        bne a1, a2, 2b
        li a1, ${hex(DATA_VA + 100)}           # bytes, a load from an invariant base in the body
        li a2, ${hex(DATA_VA + 100 + 5000)}
        li gp, ${hex(DATA_VA + 3 * 4096 - 4)}
3:      lbu t2, 0(a1)
        lw t1, 0(gp)
        add t2, t2, t1
        sb t2, 1(a1)
        addi a1, a1, 1
        bne a1, a2, 3b
        addi s1, s1, -1
        bne s1, zero, pass
        exiti 0
`, (vm) => {
      const tables = new HostPageTables(vm, LOCKSTEP_ROOT, FIRST_TABLE);
      // Backwards and apart in guest-physical memory: an access run past its page would hit the wrong frame.
      for (let page = 0; page < 3; page++) tables.map(DATA_VA + page * 4096, 0x30_0000 + (2 - page) * 0x2000, flags);
      vm.writePhysical(0x30_0000, new Uint8Array(Array.from({ length: 5 * 4096 }, (_, k) => (k * 37) & 0xff)));
    });
    const report = lockstep(pair, 17, 3_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).toBe('halted');
    expect(report.compiledShare).toBeGreaterThan(0.5);
    // The loops ran strip-mined (a pass per page crossing, check-limit stop or loop entry).
    expect(pair.jit.hv.jitStats().strips).toBeGreaterThan(100);
  });

  it('strip-mined loops closed by bne on a counted induction register exit on the same iteration as the interpreter', () => {
    // countedExit (kernel/cpu/jit/compiler.ts) computes the exiting iteration at a strip's entry
    // and drops the per-iteration compare: operands in either order, x0 as the bound, negative
    // steps, a strip that ends exactly on the exit, and a step of 3 whose exit is past 2^32.
    const DATA_VA = 0x4000_0000;
    const flags = Pte.V | Pte.R | Pte.W | Pte.A | Pte.D;
    const pair = bootPair(`
_start: li t0, ${hex(LOCKSTEP_PTBR)}
        csrrw zero, ptbr, t0
        li s1, 20
        li gp, ${hex(DATA_VA + 64)}
pass:   li a1, ${hex(DATA_VA + 4096)}         # bound first: bne a2, a1; exits on a page end
        li a2, ${hex(DATA_VA + 2 * 4096)}
1:      lw t1, 0(a1)
        add t0, t0, t1
        sw t0, 0(a1)
        addi a1, a1, 4
        bne a2, a1, 1b
        li a1, 4000                          # down to x0 in steps of -8, counting loads
2:      lw t2, 0(gp)
        add t3, t3, t2
        addi a1, a1, -8
        bne a1, zero, 2b
        li a1, ${hex(DATA_VA + 2 * 4096 - 4)}  # backwards across a page, the bound below
        li a2, ${hex(DATA_VA + 4096 - 4 * 300)}
3:      lw t1, 0(a1)
        xor t1, t1, t3
        sw t1, 0(a1)
        addi a1, a1, -4
        bne a1, a2, 3b
        addi s1, s1, -1
        bne s1, zero, pass
        li a1, 7                             # 3 does not divide 5 - 7 + k * 2^32 for small k: runs past the budget
        li a2, 5
4:      lw t2, 4(gp)
        add t3, t3, t2
        addi a1, a1, 3
        bne a1, a2, 4b
        exiti 0
`, (vm) => {
      const tables = new HostPageTables(vm, LOCKSTEP_ROOT, FIRST_TABLE);
      for (let page = 0; page < 2; page++) tables.map(DATA_VA + page * 4096, 0x30_0000 + (1 - page) * 0x2000, flags);
      vm.writePhysical(0x30_0000, new Uint8Array(Array.from({ length: 3 * 4096 }, (_, k) => (k * 53) & 0xff)));
    });
    const report = lockstep(pair, 23, 2_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).not.toBe('halted'); // the last loop outlasts the budget
    expect(report.compiledShare).toBeGreaterThan(0.5);
    expect(pair.jit.hv.jitStats().strips).toBeGreaterThan(100);
    // The first three loops finished: the last one ran, with the same registers in both tiers.
    expect(pair.jit.vm.vcpus[0]!.regs[Reg.S1]).toBe(0);
  });

  it('counted loops that never fall through (a distance the step does not divide, or none) run until the budget in both tiers', () => {
    // The loop is compiled while it exits normally (400 = 100 steps of 4), then entered afresh
    // with a bound it never meets: 4 divides neither 10 nor 10 + k·2^32, and a distance of 0 is
    // met again only after 2^30 steps.
    // Several slicings: which stop lands near the fresh entry changes with the seed.
    for (const [bound, seed] of [['li a2, 10', 2], ['li a2, 10', 3], ['li a2, 10', 23], ['mv a2, a1', 29]] as const) {
      const pair = bootPair(`
_start: li gp, 0x2000
        li s1, 200
1:      li a1, 0
        li a2, 400
        call count
        addi s1, s1, -1
        bne s1, zero, 1b
        li a1, 0
        ${bound}
        call count
        exiti 0
count:  lw t2, 0(gp)
        add t3, t3, t2
        addi a1, a1, 4
        bne a1, a2, count
        ret
`);
      const report = lockstep(pair, seed, 200_000);
      expect(report.divergence).toBeNull();
      expect(report.end).toBe('budget');
      expect(pair.jit.hv.jitStats().strips).toBeGreaterThan(200);
    }
  });

  it('strip-mined table lookups (andi, slli, add to an invariant base) match the interpreter, in one page and across two', () => {
    const DATA_VA = 0x4000_0000;
    const flags = Pte.V | Pte.R | Pte.W | Pte.A | Pte.D;
    const pair = bootPair(`
_start: li t0, ${hex(LOCKSTEP_PTBR)}
        csrrw zero, ptbr, t0
        li s1, 6
pass:   li s0, ${hex(DATA_VA + 4096)}          # a 256-word table filling the second page
        li gp, ${hex(DATA_VA + 4096 + 3072)}   # the same table seen from 3 KiB on: it spans two pages
        li a1, ${hex(DATA_VA)}
        li a2, ${hex(DATA_VA + 4096)}
1:      lw s3, 0(a1)
        xor t0, a0, s3
        andi t0, t0, 0xff
        slli t0, t0, 2
        add t0, t0, s0
        lw t0, 0(t0)                  # in one page: direct
        srli a0, a0, 8
        xor a0, a0, t0
        andi t1, s3, 0xff
        slli t1, t1, 2
        add t1, gp, t1
        lw t2, 4(t1)                  # across two pages: the loop stays checked
        add s2, s2, t2
        sw a0, 0(a1)
        addi a1, a1, 4
        bne a1, a2, 1b
        li a1, ${hex(DATA_VA)}
2:      lw s3, 0(a1)                  # the first lookup alone: strip-mined
        andi t0, s3, 0x3ff
        slli t0, t0, 2
        add t0, t0, s0
        lw t0, 0(t0)                  # 0 .. 4092 from the table: the whole page
        xor a0, a0, t0
        addi a1, a1, 4
        bne a1, a2, 2b
        li a1, ${hex(DATA_VA)}
3:      lw s3, 0(a1)
        andi t0, s3, 0x3ff
        slli t0, t0, 2
        add t0, t0, s0
        lw t0, -4(t0)                 # -4 .. 4088: one word in the page before: checked
        xor a0, a0, t0
        addi a1, a1, 4
        bne a1, a2, 3b
        addi s1, s1, -1
        bne s1, zero, pass
        exiti 0
`, (vm) => {
      const tables = new HostPageTables(vm, LOCKSTEP_ROOT, FIRST_TABLE);
      for (let page = 0; page < 3; page++) tables.map(DATA_VA + page * 4096, 0x30_0000 + (2 - page) * 0x2000, flags);
      vm.writePhysical(0x30_0000, new Uint8Array(Array.from({ length: 5 * 4096 }, (_, k) => (k * 53 + (k >> 7)) & 0xff)));
    });
    const report = lockstep(pair, 23, 3_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).toBe('halted');
    expect(pair.jit.hv.jitStats().strips).toBeGreaterThan(0);
  });

  it('a strip-mined loop that walks into an unmapped page traps precisely (pc, tval, registers, memory)', () => {
    const DATA_VA = 0x4000_0000;
    const flags = Pte.V | Pte.R | Pte.W | Pte.A | Pte.D;
    const pair = bootPair(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, ${hex(LOCKSTEP_PTBR)}
        csrrw zero, ptbr, t0
        li a1, ${hex(DATA_VA + 8)}
        li a2, ${hex(DATA_VA + 4 * 4096)}
        li t0, 7
1:      sw t0, -8(a1)                 # the third page is not mapped: a store fault at its first word
        addi t0, t0, 3
        addi a1, a1, 4
        bne a1, a2, 1b
        exiti 1
handler:
        csrrs s2, cause, zero
        csrrs s3, tval, zero
        csrrs gp, epc, zero
        exiti 0
`, (vm) => {
      const tables = new HostPageTables(vm, LOCKSTEP_ROOT, FIRST_TABLE);
      for (let page = 0; page < 2; page++) tables.map(DATA_VA + page * 4096, 0x30_0000 + page * 4096, flags);
    });
    const report = lockstep(pair, 19, 1_000_000);
    expect(report.divergence).toBeNull();
    expect(report.end).toBe('halted');
    const regs = pair.jit.vm.vcpus[0]!.regs;
    expect(regs[Reg.S0 + 3]! >>> 0).toBe(DATA_VA + 2 * 4096);
    expect(regs[Reg.T0]).toBe(7 + 3 * 2048);
    expect(pair.jit.hv.jitStats().strips).toBeGreaterThan(0);
  });

  it('reuses a compiled function wherever the same code runs again, in any hypervisor, with the same results', () => {
    const source = `
_start: la a1, data
        li s1, 3000
1:      lw t1, 0(a1)
        add t0, t0, t1
        sw t0, 0(a1)
        addi s1, s1, -1
        bne s1, zero, 1b
        exiti 0
        .align 12
data:   .word 7
`;
    forgetCompiledFunctions();
    const first = bootTier(source, 'jit');
    expect(first.run({ maxInstructions: 100_000 }).reason.kind).toBe('halted');
    expect(first.hv.jitStats().regionsCompiled).toBeGreaterThan(0);
    expect(first.hv.jitStats().regionsReused).toBe(0);
    const again = bootTier(source, 'jit');
    expect(again.run({ maxInstructions: 100_000 }).reason.kind).toBe('halted');
    expect(again.hv.jitStats().regionsReused).toBe(again.hv.jitStats().regionsCompiled);
    expect(again.vm.vcpus[0]!.saveState()).toEqual(first.vm.vcpus[0]!.saveState());
    // Forgotten: compiled afresh.
    forgetCompiledFunctions();
    const cold = bootTier(source, 'jit');
    expect(cold.run({ maxInstructions: 100_000 }).reason.kind).toBe('halted');
    expect(cold.hv.jitStats().regionsReused).toBe(0);
  });

  it('times slices and compiled code only when asked (Hypervisor.timeTiers)', () => {
    const source = `
_start: li s1, 300000
1:      addi a2, a2, 3
        xor a3, a3, a2
        addi s1, s1, -1
        bne s1, zero, 1b
        exiti 0
`;
    const quiet = bootTier(source, 'jit');
    expect(quiet.run({ maxInstructions: 2_000_000 }).reason.kind).toBe('halted');
    expect(quiet.hv.sliceMs).toBe(0);
    expect(quiet.hv.jitStats().compiledMs).toBe(0);
    const timed = bootTier(source, 'jit');
    timed.hv.timeTiers = true;
    expect(timed.run({ maxInstructions: 2_000_000 }).reason.kind).toBe('halted');
    const compiledMs = timed.hv.jitStats().compiledMs;
    expect(compiledMs).toBeGreaterThan(0);
    expect(timed.hv.sliceMs).toBeGreaterThanOrEqual(compiledMs);
  });

  it('stops on the exact instruction budget in compiled loops', () => {
    const pair = bootPair(`
_start: li s1, 1000000
1:      addi a2, a2, 3
        xor a3, a3, a2
        addi s1, s1, -1
        bne s1, zero, 1b
        exiti 0
`);
    for (const budget of [1, 2, 3, 4, 5, 1000, 4095, 77_777]) {
      const a = pair.interp.run({ maxInstructions: budget });
      const b = pair.jit.run({ maxInstructions: budget });
      expect(a.instructions).toBe(budget);
      expect(b.instructions).toBe(budget);
      expect(pair.jit.vm.vcpus[0]!.saveState()).toEqual(pair.interp.vm.vcpus[0]!.saveState());
    }
    expect(pair.jit.hv.jitStats().retiredCompiled).toBeGreaterThan(70_000);
  });
});
