/**
 * Determinism (SPEC.md §9): the same program gives the same instruction counts, registers,
 * memory and interrupt points in every run, whatever the scheduler's quantum or the other VMs
 * in the hypervisor; an instruction budget stops on exactly the N-th instruction, and a stopped
 * run resumes as if it had never stopped.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Irq, Reg, StatusBit } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { createHypervisor, type Hypervisor, type RunOptions, type RunResult } from '../../kernel/index.ts';
import { bootGuest, expectHalted, hex, HCALL_PROBE, MiB, type Guest } from './helpers.ts';

/**
 * A workload with a periodic timer interrupt (the test stands in for the timer device: hcall
 * PROBE with a1 = period sets the deadline), a trap per iteration, self-modifying code, and a
 * checksum; the handler logs the epc of every timer interrupt.
 */
const WORKLOAD = `
_start: la s0, log
        la gp, template
        la s3, patch
        la t0, handler
        csrrw zero, tvec, t0
        li a0, HCALL_PROBE
        li a1, 997                    # first deadline
        hcall
        li t0, ${1 << Irq.TIMER}
        csrrw zero, ie, t0
        li t0, ${StatusBit.SIE}
        csrrs zero, status, t0        # from here to the loop's end only the handler uses t0, a0, a1
        li s1, 0                      # checksum
        li s2, 3000                   # iterations
loop:   mul t1, s2, s2
        xor s1, s1, t1
        slli t2, s1, 3
        srli t3, s1, 29
        or s1, t2, t3
        andi t1, s2, 15
        bne t1, zero, 1f
        ecall                         # every 16th iteration: a trap the handler skips
1:      andi t1, s2, 0x7f
        slli t1, t1, 16
        lw t3, 0(gp)                  # addi a3, zero, 0
        or t3, t3, t1
        sw t3, 0(s3)                  # self-modifying: the next call returns s2 & 0x7f
        jal ra, patch
        add s1, s1, a3
        addi s2, s2, -1
        bne s2, zero, loop
        csrrw zero, status, zero
        la t0, result
        sw s1, 0(t0)
        exiti 0
handler:
        csrrs t0, cause, zero
        bge t0, zero, 2f              # an exception: the ecall
        csrrs t0, epc, zero           # a timer interrupt: log where it came
        sw t0, 0(s0)
        addi s0, s0, 4
        la t0, log_end
        bltu s0, t0, 3f
        addi s0, s0, -4
3:      li a0, HCALL_PROBE
        li a1, 1009                   # next deadline
        hcall
        sret
2:      csrrs t0, epc, zero
        addi t0, t0, 4
        csrrw zero, epc, t0
        sret
        .align 12
patch:  addi a3, zero, 0
        jalr zero, ra, 0
        .data
template: .word ${hex(encodeInstruction('addi', { rd: Reg.A3, rs1: 0, imm: 0 }))}
result: .word 0
log:    .space 1024
log_end:
`;

interface Snapshot {
  instructions: number;
  reason: string;
  regs: number[];
  pc: number;
  instret: number;
  clock: number;
  interrupts: number;
  traps: number;
  memory: string;
}

/** Boots the workload in `hv` with the PROBE hypercall acting as the timer. */
function bootWorkload(hv: Hypervisor, name: string): Guest {
  const guest = bootGuest(WORKLOAD, { hv, memoryBytes: MiB, name });
  guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
    vcpu.timerDeadline = vcpu.clock + (vcpu.regs[Reg.A1]! >>> 0);
    vcpu.regs[Reg.A0] = 0;
  });
  return guest;
}

function snapshot(guest: Guest, result: RunResult): Snapshot {
  const vcpu = guest.vcpu();
  return {
    instructions: result.instructions,
    reason: JSON.stringify(result.reason),
    regs: Array.from(vcpu.regs.subarray(0, 16)),
    pc: vcpu.pc,
    instret: vcpu.instret,
    clock: vcpu.clock,
    interrupts: vcpu.stats.interrupts,
    traps: vcpu.stats.traps,
    memory: createHash('sha256').update(guest.vm.readPhysical(0, 64 * 1024)).digest('hex'),
  };
}

function runAlone(options: RunOptions): Snapshot {
  const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
  const guest = bootWorkload(hv, 'alone');
  return snapshot(guest, guest.run({ maxInstructions: 10_000_000, ...options }));
}

describe('repeatability', () => {
  it('the same program twice gives identical counts, registers, memory and interrupt points', () => {
    const first = runAlone({});
    const second = runAlone({});
    expect(first.reason).toBe(JSON.stringify({ kind: 'halted', exitCode: 0 }));
    expect(first.interrupts).toBeGreaterThan(50);
    expect(first.traps).toBeGreaterThan(100);
    expect(second).toEqual(first);
  });

  it('a single vCPU gives the same results whatever the scheduler quantum', () => {
    const reference = runAlone({});
    for (const quantum of [1, 7, 1000, 4096, 100_000]) {
      expect(runAlone({ quantum }), `quantum ${quantum}`).toEqual(reference);
    }
  });

  it('two VMs interleaved in one hypervisor each give the results they give alone', () => {
    const reference = runAlone({});
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const a = bootWorkload(hv, 'a');
    const b = bootWorkload(hv, 'b');
    const [resultA, resultB] = hv.run({ quantum: 333, maxInstructions: 10_000_000 }, [a.vm, b.vm]);
    expect(snapshot(a, resultA!)).toEqual(reference);
    expect(snapshot(b, resultB!)).toEqual(reference);
  });

  it('a two-vCPU VM is repeatable for the same quantum', () => {
    const source = `
_start: la t0, counter
        li t1, 20000
1:      amoadd t2, a0, (t0)           # vCPU 0 adds 0, vCPU 1 adds 1
        addi t2, t2, 1
        amoadd zero, t2, (t0)
        addi t1, t1, -1
        bne t1, zero, 1b
        bne a0, zero, 2f
        la t0, done
3:      lw t1, 0(t0)
        beq t1, zero, 3b
        la t0, counter
        lw s0, 0(t0)
        exitr s0
2:      la t0, done
        li t1, 1
        sw t1, 0(t0)
4:      jal zero, 4b
        .data
counter: .word 0
done:   .word 0
`;
    const runOnce = (): [number, number, number] => {
      const guest = bootGuest(source, { memoryBytes: MiB, vcpus: 2, hostMemoryBytes: 8 * MiB });
      const result = guest.run({ maxInstructions: 10_000_000, quantum: 777 });
      return [expectHalted(result), result.instructions, guest.vcpu(1).instret];
    };
    expect(runOnce()).toEqual(runOnce());
  });
});

describe('exact budgets', () => {
  /**
   * P straight-line instructions, then a loop of K instructions that straddles a page boundary
   * and contains a not-taken branch, a load and a store, run ITERATIONS times; then the exit.
   */
  const ITERATIONS = 5000;
  const LOOP_BODY = [
    'addi s1, s1, 3',
    'sw s1, 0(s3)',
    'lw t1, 0(s3)',
    'beq t1, zero, never',
    'xor s2, s2, t1',
    'addi t2, t2, 1',
    'slli t3, s2, 1',
    'add s2, s2, t3',
    'addi s0, s0, -1',
    'bne s0, zero, loop',
  ];
  const PRELUDE = ['la s3, cell', `li s0, ${ITERATIONS}`, 'li s1, 0', 'li s2, 1', 'la t0, loop', 'jalr zero, t0, 0'];
  const P = 2 + 1 + 1 + 1 + 2 + 1; // la = 2 words
  const K = LOOP_BODY.length;
  const LOOP = 0x2000 - 4 * 4; // four loop instructions before the page boundary
  const source = `
_start:
${PRELUDE.map((l) => `        ${l}`).join('\n')}
never:  exiti 99
        .org ${hex(LOOP)}
loop:
${LOOP_BODY.map((l) => `        ${l}`).join('\n')}
        la t0, cell
        sw s2, 4(t0)
        exiti 0
        .data
cell:   .word 0, 0
`;

  /** Where the pc is after exactly n instructions retired. */
  function pcAfter(n: number, entry: number): number {
    if (n < P) return entry + 4 * n;
    return LOOP + 4 * ((n - P) % K);
  }

  function fresh(): Guest {
    return bootGuest(source, { memoryBytes: MiB, hostMemoryBytes: 8 * MiB });
  }

  const total = (() => {
    const guest = fresh();
    const result = guest.run({ maxInstructions: 10_000_000 });
    expectHalted(result, 0);
    return { instructions: result.instructions, regs: Array.from(guest.vcpu().regs.subarray(0, 16)), cell: guest.words(guest.sym('cell'), 2) };
  })();

  it('the workload is what the budget tests assume', () => {
    const guest = fresh();
    expect(guest.sym('loop')).toBe(LOOP);
    expect(total.instructions).toBe(P + K * ITERATIONS + 2 + 1 + 3);
  });

  const BUDGETS = [1, 2, 3, 7, P - 1, P, P + 1, P + 2, 100, 1000, 2047, 2048, 2049, 4095, 4096, 19_999, 20_000, 20_001, 20_005, 40_013, 49_999];
  for (const quantum of [undefined, 1000]) {
    it(`a budget of N stops after exactly N instructions at the N-th pc (${quantum ? `quantum ${quantum}` : 'default quantum'})`, () => {
      const problems: string[] = [];
      for (const n of BUDGETS) {
        const guest = fresh();
        const result = guest.run({ maxInstructions: n, quantum });
        const vcpu = guest.vcpu();
        const want = pcAfter(n, guest.sym('_start'));
        if (result.reason.kind !== 'budget' || result.instructions !== n || vcpu.instret !== n || vcpu.pc >>> 0 !== want) {
          problems.push(`N=${n}: ${result.reason.kind}, ${result.instructions} instructions, instret ${vcpu.instret}, pc ${hex(vcpu.pc)} (want ${hex(want)})`);
        }
        guest.hv.destroyVm(guest.vm);
      }
      expect(problems).toEqual([]);
    });
  }

  it('resuming after budget stops, in uneven chunks, ends exactly like an uninterrupted run', () => {
    for (const chunks of [[1, 1, 1], [P, 1, K], [2049, 3, 17_000, 1], [5, 20_000, 20_000, 9]]) {
      const guest = fresh();
      let done = 0;
      for (const chunk of chunks) {
        const result = guest.run({ maxInstructions: chunk });
        expect(result.reason.kind).toBe('budget');
        expect(result.instructions).toBe(chunk);
        done += chunk;
        expect(guest.vcpu().pc >>> 0).toBe(pcAfter(done, guest.sym('_start')));
      }
      const rest = guest.run({ maxInstructions: 10_000_000 });
      expectHalted(rest, 0);
      expect(done + rest.instructions).toBe(total.instructions);
      expect(Array.from(guest.vcpu().regs.subarray(0, 16))).toEqual(total.regs);
      expect(guest.words(guest.sym('cell'), 2)).toEqual(total.cell);
      guest.hv.destroyVm(guest.vm);
    }
  });

  it('a budget is exact for a VM of two vCPUs (counted over both)', () => {
    for (const n of [1, 2, 3, 1001, 20_000, 20_001, 45_678]) {
      const guest = bootGuest(source, { memoryBytes: MiB, hostMemoryBytes: 8 * MiB, vcpus: 2 });
      const result = guest.run({ maxInstructions: n, quantum: 1000 });
      expect(result.reason.kind).toBe('budget');
      expect(result.instructions).toBe(n);
      expect(guest.vcpu(0).instret + guest.vcpu(1).instret).toBe(n);
      guest.hv.destroyVm(guest.vm);
    }
  });
});
