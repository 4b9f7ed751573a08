/**
 * Robustness: over a million random instruction words executed in user mode under a tiny kernel,
 * and a few hundred thousand more in supervisor mode with nothing protecting the machine.
 *
 * The host must never crash, hang or let an exception escape: every run stops with a defined
 * outcome. In user mode the kernel must also stay intact — its code, its page tables (apart
 * from A/D bits) and a supervisor-only page are never changed by the user, and its trap
 * counters agree with the host's. Words come from a seeded PRNG, so a failure reproduces.
 */
import { describe, expect, it } from 'vitest';
import { CSR_NAMES, GuestPhys, Pte, StatusBit } from '../../guest-isa/arch.ts';
import { encodeInstruction, immediateRange } from '../../guest-isa/encoding.ts';
import { Flag, INSTRUCTIONS } from '../../guest-isa/opcodes.ts';
import { createHypervisor, type RunResult } from '../../kernel/index.ts';
import { bootGuest, hex, HostPageTables, MiB, MMU_CONFIGS, prng, ptbrFor, type Guest } from './helpers.ts';

const SEED = 0xb17e_5eed;
const { V, R, W, X, U, A, D } = Pte;
const CSR_NUMBERS = [...CSR_NAMES.values()];

/**
 * A random word: 40% uniformly random (mostly illegal), 60% a legal instruction with random
 * registers and immediates biased towards small offsets so that memory operands often land in
 * mapped pages and branches stay in the code page, mostly going forward.
 */
function randomWord(rand: () => number): number {
  if (rand() % 10 < 4) return rand();
  const spec = INSTRUCTIONS[rand() % INSTRUCTIONS.length]!;
  const [min, max] = immediateRange(spec);
  let imm = 0;
  switch (spec.format) {
    case 'LOAD':
    case 'STORE':
      imm = rand() % 4 === 0 ? min + (rand() % (max - min + 1)) : (rand() % 4160) - 64;
      break;
    case 'BRANCH':
    case 'J':
      // Short forward jumps, so that loops do not eat the budget and most words run (the
      // uniformly random words supply jumps in every direction).
      imm = 1 + (rand() % 8);
      break;
    case 'CSR':
      imm = rand() % 8 === 0 ? rand() & 0xfff : CSR_NUMBERS[rand() % CSR_NUMBERS.length]!;
      break;
    case 'I':
      imm = (spec.flags & Flag.SIGNED_IMM) !== 0 && rand() % 2 === 0 ? (rand() % 8193) - 4096 : min + (rand() % (max - min + 1));
      break;
    default:
      imm = max > min ? min + (rand() % (max - min + 1)) : 0;
  }
  return encodeInstruction(spec, { rd: rand() & 15, rs1: rand() & 15, rs2: rand() & 15, imm });
}

function randomPage(rand: () => number): Uint8Array {
  const words = new Uint32Array(1024);
  for (let i = 0; i < words.length; i++) words[i] = randomWord(rand);
  return new Uint8Array(words.buffer);
}

// -------------------------------------------------------------------------------------------------
// User-mode fuzzing under a tiny kernel

const ROOT = 0x1_0000;
const USER_CODE_VA = 0x4000_0000;
const USER_CODE_PA = 0x2_0000;
/** [va, pa, flags] of the other user-visible (or deliberately not user-visible) pages. */
const USER_PAGES: [number, number, number][] = [
  [0x4000_1000, 0x2_1000, V | R | W | U | A | D],
  [0x4000_2000, 0x2_2000, V | R | W | U | A | D],
  [0x4000_3000, 0x2_3000, V | R | W | U],
  [0x4000_4000, 0x2_4000, V | R | W | U],
  [0x4000_5000, 0x2_5000, V | R | U | A], // read-only
  [0x4000_6000, 0x2_6000, V | X | U | A], // execute-only
  [0x4000_7000, 0x2_7000, V | R | W | A | D], // supervisor only: the user must never change it
  [0x4000_8000, GuestPhys.DEVICE_TABLE, V | R | U | A], // MMIO
];
const GUARDED_PA = 0x2_7000;

const KERNEL = `
        .equ COUNTS, 0
        .equ CURSOR, 128
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, ${hex(ptbrFor(ROOT, 1))}
        csrrw zero, ptbr, t0
        la gp, kdata                  # leave swaps it into scratch, where the handler finds it
        li t0, ${hex(USER_CODE_VA)}
        csrrw zero, epc, t0
        li t0, ${StatusBit.SPP}
        csrrc zero, status, t0
        jal zero, enter
handler:
        csrrw gp, scratch, gp         # gp = kernel data, scratch = the user's gp
        csrrs t0, status, zero
        andi t0, t0, ${StatusBit.SPP}
        bne t0, zero, kernel_fault    # the kernel itself trapped: never acceptable
        csrrs t0, cause, zero
        andi t1, t0, 31
        slli t1, t1, 2
        add t1, t1, gp
        lw t2, COUNTS(t1)
        addi t2, t2, 1
        sw t2, COUNTS(t1)
        beq t0, zero, reenter         # fetch faults: the faulting pc is no place to resume
        li t1, 1
        beq t0, t1, reenter
        li t1, 12
        beq t0, t1, reenter
        csrrs t1, epc, zero           # anything else: skip the instruction
        addi t1, t1, 4
        csrrw zero, epc, t1
        jal zero, leave
reenter:
        lw t1, CURSOR(gp)             # somewhere else in the code page, with fresh pointers
        addi t1, t1, 0x44
        andi t1, t1, 0xffc
        sw t1, CURSOR(gp)
        li t2, ${hex(USER_CODE_VA)}
        add t1, t1, t2
        csrrw zero, epc, t1
enter:  li sp, 0x40002800
        li s0, 0x40001000
        li s1, 0x40003000
        li s2, 0x40005000
        li s3, 0x40008000
        li a0, 0x40004000
        li a1, 0x40006000
leave:  csrrw gp, scratch, gp
        sret
kernel_fault:
        li a0, HCALL_EXIT
        li a1, 0xbad
        hcall
        .data
        .align 12
kdata:  .space 4096
`;

describe('random words in user mode under a tiny kernel', () => {
  it('over a million words executed: every round ends on its budget, the kernel stays intact, the host never throws', () => {
    const started = performance.now();
    const VMS = 4;
    const ROUNDS = 400; // 4 × 400 × 1024 words ≈ 1.6 million, most of which execute
    const BUDGET = 40_000;
    /** Rounds in which VM 0 records which user words ran (a tracer: slow, so only a sample). */
    const SAMPLED_ROUNDS = 8;
    const rand = prng(SEED);
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const guests: { guest: Guest; tables: HostPageTables; ptes: Map<number, number> }[] = [];
    const guardPattern = Uint8Array.from({ length: 4096 }, (_, i) => (i * 13 + 5) & 0xff);
    for (let i = 0; i < VMS; i++) {
      // Each VM translates with another MMU configuration.
      const guest = bootGuest(KERNEL, { hv, memoryBytes: MiB, name: `fuzz${i}`, mmu: MMU_CONFIGS[i % MMU_CONFIGS.length]![1] });
      const tables = new HostPageTables(guest.vm, ROOT, ROOT + 0x1000);
      const ptes = new Map<number, number>();
      ptes.set(tables.map(USER_CODE_VA, USER_CODE_PA, V | R | W | X | U | A | D), 0);
      for (const [va, pa, flags] of USER_PAGES) ptes.set(tables.map(va, pa, flags), 0);
      for (const address of ptes.keys()) ptes.set(address, guest.word(address));
      guest.vm.writePhysical(GUARDED_PA, guardPattern);
      guests.push({ guest, tables, ptes });
    }
    const outcomes = new Map<string, number>();
    let words = 0;
    let instructions = 0;
    let sampledWordsRun = 0;
    const userPcs = new Set<number>();
    for (let round = 0; round < ROUNDS; round++) {
      const sampled = guests[0]!.guest.vcpu();
      sampled.tracer = round < SAMPLED_ROUNDS ? (vcpu, pc) => void (vcpu.mode === 0 && userPcs.add(pc)) : null;
      for (const { guest } of guests) {
        guest.vm.writePhysical(USER_CODE_PA, randomPage(rand));
        words += 1024;
      }
      let results: RunResult[] = [];
      expect(() => {
        results = hv.run({ maxInstructions: BUDGET, quantum: 700 }, guests.map((g) => g.guest.vm));
      }).not.toThrow();
      for (const result of results) {
        const key = result.reason.kind === 'halted' ? `halted ${result.reason.exitCode}` : result.reason.kind;
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
        if (result.reason.kind !== 'budget') expect.fail(`round ${round} (seed ${hex(SEED)}): ${JSON.stringify(result.reason)}`);
        expect(result.instructions).toBe(BUDGET);
        instructions += result.instructions;
      }
      if (round < SAMPLED_ROUNDS) {
        sampledWordsRun += userPcs.size;
        userPcs.clear();
      }
    }
    // At least a million of the words generated were executed (estimated from the sample).
    const runFraction = sampledWordsRun / (SAMPLED_ROUNDS * 1024);
    expect(runFraction).toBeGreaterThan(0.65);
    expect(words * runFraction).toBeGreaterThan(1_000_000);
    for (const { guest, ptes } of guests) {
      const text = guest.image.segments.find((s) => s.name === '.text')!;
      expect(Buffer.from(guest.vm.readPhysical(text.gpa, text.data.length)).equals(Buffer.from(text.data)), 'kernel code intact').toBe(true);
      expect(Buffer.from(guest.vm.readPhysical(GUARDED_PA, 4096)).equals(Buffer.from(guardPattern)), 'supervisor page intact').toBe(true);
      for (const [address, value] of ptes) expect(hex(guest.word(address) & ~(A | D)), `PTE at ${hex(address)}`).toBe(hex(value & ~(A | D)));
      const kdata = guest.sym('kdata');
      const counts = guest.words(kdata, 32);
      const total = counts.reduce((a, b) => a + b, 0);
      // The guest's count of traps by cause agrees with the host's; the last budget may have stopped inside the handler, before it counted its trap.
      expect(guest.vcpu().stats.traps - total).toBeGreaterThanOrEqual(0);
      expect(guest.vcpu().stats.traps - total).toBeLessThanOrEqual(1);
      // The words really exercised the machine: many kinds of traps happened.
      expect(counts.filter((n) => n > 0).length).toBeGreaterThanOrEqual(8);
    }
    const elapsed = performance.now() - started;
    console.log(`user fuzz: ${words} words (${(runFraction * 100).toFixed(0)}% executed in the sample), ${instructions} instructions, outcomes ${JSON.stringify(Object.fromEntries(outcomes))}, ${elapsed.toFixed(0)} ms`);
    for (const { guest } of guests) hv.destroyVm(guest.vm);
    // ~4 s interpreted and ~10 s compiled on a quiet machine (random code is compiled and
    // thrown away far more than it runs); CI at load 7 took over a minute.
  }, 300_000);
});

// -------------------------------------------------------------------------------------------------
// Supervisor-mode fuzzing: nothing protects the machine

const SUPERVISOR = `
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, 0x20000
        jalr zero, t0, 0
handler:                              # skip whatever trapped (random code may replace this)
        csrrs t0, epc, zero
        addi t0, t0, 4
        csrrw zero, epc, t0
        li t0, ${StatusBit.SPP}
        csrrs zero, status, t0
        sret
`;

describe('random words in supervisor mode', () => {
  it('every run stops with a defined outcome (budget, halted, guest error or idle), never a host error', () => {
    const started = performance.now();
    const rand = prng(SEED ^ 0x5a5a);
    const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
    const guest = bootGuest(SUPERVISOR, { hv, memoryBytes: MiB });
    const outcomes = new Map<string, number>();
    const ROUNDS = 250;
    for (let round = 0; round < ROUNDS; round++) {
      guest.vm.reset();
      guest.vm.writePhysical(0x2_0000, randomPage(rand));
      let result: RunResult | undefined;
      expect(() => {
        result = guest.run({ maxInstructions: 20_000 });
      }).not.toThrow();
      const kind = result!.reason.kind;
      outcomes.set(kind, (outcomes.get(kind) ?? 0) + 1);
      if (!['budget', 'halted', 'guest-error', 'idle'].includes(kind)) {
        expect.fail(`round ${round} (seed ${hex(SEED ^ 0x5a5a)}): ${JSON.stringify(result!.reason)}`);
      }
      if (result!.reason.kind === 'guest-error') expect(result!.reason.message.length).toBeGreaterThan(0);
      expect(result!.instructions).toBeLessThanOrEqual(20_000);
    }
    console.log(`supervisor fuzz: ${ROUNDS * 1024} words, outcomes ${JSON.stringify(Object.fromEntries(outcomes))}, ${(performance.now() - started).toFixed(0)} ms`);
    // Random code reaches more than one kind of ending.
    expect(outcomes.size).toBeGreaterThanOrEqual(2);
  });
});
