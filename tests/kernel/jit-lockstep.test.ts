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
import { Irq, Pte, Reg, StatusBit } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { createHypervisor, type RunResult } from '../../kernel/index.ts';
import { jitCacheOf } from '../../kernel/cpu/jit/jit.ts';
import { opClass, OpClass } from '../../kernel/cpu/jit/compiler.ts';
import { INSTRUCTIONS } from '../../guest-isa/opcodes.ts';
import { bootGuest, hex, HCALL_PROBE, HostPageTables, MiB, pte, prng, ptbrFor, type Guest } from './helpers.ts';

const ROOT = 0x20_0000;
const FIRST_TABLE = 0x20_1000;
const MEMORY_BYTES = 4 * MiB;

type Setup = (guest: Guest) => void;

/** Boots `source` twice, in an interpreting and a compiling hypervisor. */
function bootPair(source: string, setup?: Setup): { interp: Guest; jit: Guest } {
  const boot = (tier: 'interp' | 'jit'): Guest => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    // Compile on the second entry of a block: the differential covers nearly everything.
    jitCacheOf(hv.decodeCache).threshold = 1;
    jitCacheOf(hv.decodeCache).maxBackoff = 0;
    const guest = bootGuest(source, { hv, memoryBytes: MEMORY_BYTES, name: tier });
    for (const vcpu of guest.vm.vcpus) vcpu.setTier(tier);
    // The stand-in timer: hcall PROBE with a1 = period sets the deadline.
    guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
      vcpu.timerDeadline = vcpu.clock + (vcpu.regs[Reg.A1]! >>> 0);
      vcpu.regs[Reg.A0] = 0;
    });
    setup?.(guest);
    return guest;
  };
  return { interp: boot('interp'), jit: boot('jit') };
}

function state(guest: Guest, result: RunResult): unknown {
  return {
    reason: result.reason.kind === 'budget' ? 'budget' : JSON.stringify(result.reason),
    instructions: result.instructions,
    vcpus: guest.vm.vcpus.map((vcpu) => ({ ...vcpu.saveState(), stats: { ...vcpu.stats } })),
  };
}

interface LockstepReport {
  instructions: number;
  stops: number;
  compiledShare: number;
  end: string;
}

/**
 * Runs both guests in slices of random length until the program ends or `limit` instructions
 * ran, comparing everything at each stop. Returns what was compared.
 */
function lockstep(pair: { interp: Guest; jit: Guest }, seed: number, limit: number): LockstepReport {
  const rand = prng(seed);
  let instructions = 0;
  let stops = 0;
  let end = 'budget';
  while (instructions < limit) {
    const budget = 1 + (rand() % (rand() % 4 === 0 ? 50 : 20_000));
    const quantum = [1, 13, 500, 4096, 20_000][rand() % 5]!;
    const a = pair.interp.run({ maxInstructions: budget, quantum });
    const b = pair.jit.run({ maxInstructions: budget, quantum });
    stops++;
    expect(state(pair.jit, b), `stop ${stops} after ${instructions} instructions (seed ${hex(seed)})`).toEqual(state(pair.interp, a));
    const ramA = Buffer.from(pair.interp.vm.readPhysical(0, MEMORY_BYTES));
    const ramB = Buffer.from(pair.jit.vm.readPhysical(0, MEMORY_BYTES));
    if (!ramA.equals(ramB)) {
      let at = 0;
      while (ramA[at] === ramB[at]) at++;
      expect.fail(`guest RAM differs at gpa ${hex(at)} at stop ${stops} (seed ${hex(seed)})`);
    }
    instructions += a.instructions;
    if (a.reason.kind !== 'budget') {
      end = a.reason.kind;
      break;
    }
  }
  const stats = pair.jit.hv.jitStats();
  return { instructions, stops, compiledShare: stats.retiredCompiled / Math.max(1, instructions), end };
}

// -------------------------------------------------------------------------------------------------
// Random programs

/**
 * Registers random code may write (a0, a1 belong to the trap handler; s0, s1 to the main loop; s3
 * to inner loops; sp sums every result, so that no wrong value goes unseen even if overwritten).
 */
const FREE_REGS = ['t0', 't1', 't2', 't3', 'a2', 'a3', 'gp', 's2'];
const ALU_R = ['add', 'sub', 'and', 'or', 'xor', 'sll', 'srl', 'sra', 'slt', 'sltu', 'mul', 'mulh', 'mulhu', 'div', 'divu', 'rem', 'remu'];
const ALU_I = ['addi', 'andi', 'ori', 'xori', 'slti', 'sltiu'];
const SHIFTS = ['slli', 'srli', 'srai'];
const LOADS = [['lb', 1], ['lbu', 1], ['lh', 2], ['lhu', 2], ['lw', 4]] as const;
const STORES = [['sb', 1], ['sh', 2], ['sw', 4]] as const;
const BRANCHES = ['beq', 'bne', 'blt', 'bge', 'bltu', 'bgeu'];
/** Values that make division and comparisons interesting. */
const EDGE_VALUES = [0, 1, -1, 0x7fffffff, -0x80000000, 2, -2, 0xffff, 12345];
/** Data: three pages after the code, so accesses cross pages. */
const DATA_BYTES = 3 * 4096;

function randomProgram(rand: () => number, paging: boolean, timerPeriod: number): string {
  const pick = <T,>(list: readonly T[]): T => list[rand() % list.length]!;
  let label = 0;
  const functions: string[] = [];
  const instruction = (out: string[], allowControl: boolean, exclude: string | null): void => {
    const regs = exclude === null ? FREE_REGS : FREE_REGS.filter((r) => r !== exclude);
    const dst = pick(regs);
    if (rand() % 16 === 0) out.push(`li ${dst}, ${pick(EDGE_VALUES)}`);
    const src = (): string => (rand() % 8 === 0 ? 'zero' : pick(FREE_REGS));
    const roll = rand() % 100;
    if (roll < 30) out.push(`${pick(ALU_R)} ${dst}, ${src()}, ${src()}`);
    else if (roll < 40) {
      const name = pick(ALU_I);
      const signed = name === 'addi' || name === 'slti' || name === 'sltiu';
      out.push(`${name} ${dst}, ${src()}, ${signed ? (rand() % 65536) - 32768 : rand() % 65536}`);
    }
    else if (roll < 45) out.push(`${pick(SHIFTS)} ${dst}, ${src()}, ${rand() % 32}`);
    else if (roll < 48) out.push(`lui ${dst}, ${rand() % 0x100000}`);
    else if (roll < 50) out.push(`auipc ${dst}, ${rand() % 16}`);
    else if (roll < 62) {
      const [name, width] = pick(LOADS);
      const misaligned = rand() % 40 === 0;
      const offset = (rand() % (DATA_BYTES / width)) * width + (misaligned && width > 1 ? 1 : 0);
      out.push(`${name} ${dst}, ${offset - 2048}(s0)`);
    }
    if (roll < 62) out.push(`add sp, sp, ${dst}`);
    else if (roll < 72) {
      const [name, width] = pick(STORES);
      const misaligned = rand() % 40 === 0;
      const offset = (rand() % (DATA_BYTES / width)) * width + (misaligned && width > 1 ? 1 : 0);
      out.push(`${name} ${src()}, ${offset - 2048}(s0)`);
    } else if (roll < 74) {
      out.push(`addi ${dst}, s0, ${(rand() % (DATA_BYTES / 4)) * 4 - 2048}`, `${pick(['amoswap', 'amoadd', 'amoand', 'amoor'])} ${dst}, ${src()}, (${dst})`);
    } else if (!allowControl) {
      out.push(`xor ${dst}, ${src()}, ${src()}`);
    } else if (roll < 84) {
      // A forward branch over a few instructions.
      const skip = `f${label++}`;
      out.push(`${pick(BRANCHES)} ${src()}, ${src()}, ${skip}`);
      for (let k = rand() % 4; k > 0; k--) instruction(out, false, exclude);
      out.push(`${skip}:`);
    } else if (roll < 88 && exclude === null) {
      // An inner loop (s3 counts).
      const top = `l${label++}`;
      out.push(`li s3, ${1 + (rand() % 40)}`, `${top}:`);
      for (let k = 1 + (rand() % 8); k > 0; k--) instruction(out, rand() % 3 === 0, 's3');
      out.push('addi s3, s3, -1', `bne s3, zero, ${top}`);
    } else if (roll < 91 && exclude === null) {
      // A call into another page (a function made of straight-line code).
      const name = `fn${functions.length}`;
      const body: string[] = ['.align 12', `${name}:`];
      for (let k = 1 + (rand() % 12); k > 0; k--) instruction(body, false, null);
      body.push('jalr zero, ra, 0');
      functions.push(body.join('\n'));
      out.push(rand() % 2 === 0 ? `jal ra, ${name}` : `la t0, ${name}\njalr ra, t0, 0`);
    } else if (roll < 95) {
      // Self-modifying code: flip the immediate of an addi further down this block.
      const patch = `p${label++}`;
      out.push(`la t0, ${patch}`, 'lw t1, 0(t0)', 'li t2, 0x10000', 'xor t1, t1, t2', 'sw t1, 0(t0)');
      for (let k = rand() % 3; k > 0; k--) instruction(out, false, 'a3');
      out.push(`${patch}: addi a3, a3, 0`);
    } else {
      out.push('ecall');
    }
  };
  const body: string[] = [];
  for (let k = 20 + (rand() % 40); k > 0; k--) instruction(body, true, null);
  return `
        .equ PTBR, ${hex(ptbrFor(ROOT, 1))}
_start: la t0, handler
        csrrw zero, tvec, t0
        ${paging ? 'li t0, PTBR\n        csrrw zero, ptbr, t0' : ''}
        li a0, HCALL_PROBE
        li a1, ${timerPeriod}
        hcall
        li t0, ${1 << Irq.TIMER}
        csrrw zero, ie, t0
        li t0, ${StatusBit.SIE}
        csrrs zero, status, t0
${FREE_REGS.map((r) => `        li ${r}, ${rand() | 0}`).join('\n')}
        la s0, data + 2048
        li s1, ${300 + (rand() % 700)}
main:
${body.join('\n')}
        addi s1, s1, -1
        bne s1, zero, main
        csrrw zero, status, zero
        exiti 0
handler:
        csrrs a0, cause, zero
        blt a0, zero, 1f              # interrupts have bit 31 set
        csrrs a0, epc, zero           # an exception: skip the instruction
        addi a0, a0, 4
        csrrw zero, epc, a0
        sret
1:      li a0, HCALL_PROBE
        li a1, ${timerPeriod}
        hcall
        sret
${functions.join('\n')}
        .align 12
data:   .word ${Array.from({ length: DATA_BYTES / 4 }, () => rand() | 0).join(', ')}
`;
}

const RANDOM_PROGRAMS = 12;

describe('compiled tier against the interpreter, in lockstep', () => {
  it('classifies every instruction of the opcode table (system instructions go back to the interpreter)', () => {
    for (const spec of INSTRUCTIONS) {
      const cls = opClass(spec.opcode);
      if (spec.mnemonic === 'fence') expect(cls).toBe(OpClass.NOP);
      else if ((spec.flags & 0x80) !== 0 || spec.mnemonic === 'ecall' || spec.mnemonic === 'ebreak') expect(cls, spec.mnemonic).toBe(OpClass.EXIT);
      else expect(cls, spec.mnemonic).not.toBe(OpClass.EXIT);
    }
  });

  it(`random programs (paging off and on, traps, SMC, timer interrupts): identical at every stop`, () => {
    let total = 0;
    let totalStops = 0;
    let compiledSum = 0;
    for (let n = 0; n < RANDOM_PROGRAMS; n++) {
      const seed = 0x1157_0000 + n;
      const rand = prng(seed);
      const paging = n % 2 === 1;
      const source = randomProgram(rand, paging, 300 + (rand() % 5000));
      const pair = bootPair(source, paging ? (guest) => void new HostPageTables(guest.vm, ROOT, FIRST_TABLE) : undefined);
      const report = lockstep(pair, seed, 400_000);
      total += report.instructions;
      totalStops += report.stops;
      compiledSum += report.compiledShare;
      expect(pair.interp.vcpu().stats.traps + pair.interp.vcpu().stats.interrupts, `seed ${hex(seed)}`).toBeGreaterThan(0);
    }
    // The jit side really ran compiled code for much of it (SMC in the main loop invalidates it every pass).
    expect(compiledSum / RANDOM_PROGRAMS).toBeGreaterThan(0.25);
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
    expect(report.end).toBe('halted');
    // 200 passes alternate between the patched (+0) and the original (+1) instruction.
    expect(pair.jit.words(pair.jit.sym('results'), 1)).toEqual([100]);
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
        .equ PTBR, ${hex(ptbrFor(ROOT, 1))}
_start: li t0, PTBR
        csrrw zero, ptbr, t0
        li t2, ${hex(pte(NEW, flags))}
        li gp, ${hex(pte(NEW, flags) ^ pte(OLD, flags))}
        li t3, LEAF
        li s2, 4000
        li t1, ${hex(CODE_VA)}
        jalr ra, t1, 0
        exiti 0
`.replace('LEAF', hex(FIRST_TABLE + ((CODE_VA >>> 12) & 0x3ff) * 4)), (guest) => {
      const tables = new HostPageTables(guest.vm, ROOT, FIRST_TABLE);
      tables.map(CODE_VA, OLD, flags);
      guest.vm.writePhysical(OLD, code(1));
      guest.vm.writePhysical(NEW, code(1000));
    });
    const report = lockstep(pair, 11, 1_000_000);
    expect(report.end).toBe('halted');
    const s1 = pair.jit.vcpu().regs[Reg.S0 + 1]!;
    // Both pages ran (s1 counts 1 per pass on OLD, 1000 on NEW).
    expect(s1 % 1000).toBeGreaterThan(0);
    expect(s1).toBeGreaterThan(1000);
    expect(report.compiledShare).toBeGreaterThan(0.5);
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
      expect(state(pair.jit, b)).toEqual(state(pair.interp, a));
    }
    expect(pair.jit.hv.jitStats().retiredCompiled).toBeGreaterThan(70_000);
  });
});
