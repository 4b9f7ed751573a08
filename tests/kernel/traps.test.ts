/**
 * Traps, interrupts, wfi and the counters (SPEC.md §6–§9).
 *
 * Most programs install a handler that powers the VM off at once (exit code 0x77), so the state
 * trap entry left behind — epc, cause, tval, status, mode, registers — can be read from the vCPU
 * afterwards; programs that return from traps keep their records in guest memory.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  CAUSE_INTERRUPT, Cause, Csr, CSR_NAMES, Irq, IRQ_MASK, Pte, READ_ONLY_CSRS, Reg, StatusBit, STATUS_WRITABLE_MASK, USER_READABLE_CSRS,
} from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { createHypervisor, Mode, type Vcpu } from '../../kernel/index.ts';
import { bootGuest, expectGuestError, expectHalted, hex, HCALL_PROBE, HostPageTables, MiB, ptbrFor, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const TRAPPED = 0x77;
const { SIE, SPIE, SPP } = StatusBit;

function boot(source: string, options: { memoryBytes?: number; vcpus?: number } = {}): Guest {
  return bootGuest(source, { hv, memoryBytes: options.memoryBytes ?? MiB, vcpus: options.vcpus });
}

/** `body` runs in S mode with a handler installed that powers off with TRAPPED. */
function inSupervisor(body: string): string {
  return `
_start: la t0, handler
        csrrw zero, tvec, t0
${body}
        exiti 1
handler: exiti ${TRAPPED}
`;
}

/** `body` runs in U mode (entered by sret) with the same handler. */
function inUser(body: string): string {
  return `
_start: la t0, handler
        csrrw zero, tvec, t0
        la t0, user
        csrrw zero, epc, t0
        li t0, ${SPP}
        csrrc zero, status, t0
        sret
user:
${body}
        ecall                         # not reached when the body traps
        exiti 1
handler: exiti ${TRAPPED}
`;
}

/** Runs until the handler stops the VM and returns the vCPU for inspection. */
function trapState(source: string): { guest: Guest; vcpu: Vcpu } {
  const guest = boot(source);
  expectHalted(guest.run({ maxInstructions: 100_000 }), TRAPPED);
  return { guest, vcpu: guest.vcpu() };
}

function word(mnemonic: string, fields: { rd?: number; rs1?: number; rs2?: number; imm?: number } = {}): number {
  return encodeInstruction(mnemonic, fields);
}

describe('trap entry and sret (SPEC.md §7.3, §7.4)', () => {
  it('an ecall in S mode records epc, cause 9, tval 0, SPIE = SIE, SIE = 0, SPP = 1, and enters the handler in S', () => {
    const { guest, vcpu } = trapState(inSupervisor(`
        li t0, 0x1234
        csrrw zero, tval, t0          # trap entry must overwrite tval with 0
        li t0, ${SIE}
        csrrs zero, status, t0        # SIE = 1 (nothing is enabled in ie)
site:   ecall`));
    expect(vcpu.cause).toBe(Cause.ECALL_SUPERVISOR);
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
    expect(vcpu.tval).toBe(0);
    expect(vcpu.status & (SIE | SPIE | SPP)).toBe(SPIE | SPP);
    expect(vcpu.mode).toBe(Mode.SUPERVISOR);
    expect(vcpu.stats.traps).toBe(1);
  });

  it('an ecall in U mode records cause 8, SPP = 0 and SPIE = 0, and switches to S', () => {
    const { guest, vcpu } = trapState(inUser('site:   ecall'));
    expect(vcpu.cause).toBe(Cause.ECALL_USER);
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
    expect(vcpu.status & (SIE | SPIE | SPP)).toBe(0);
    expect(vcpu.mode).toBe(Mode.SUPERVISOR);
  });

  it('ebreak records cause 3 with tval 0', () => {
    const { guest, vcpu } = trapState(inUser('        li t0, 5\nsite:   ebreak'));
    expect(vcpu.cause).toBe(Cause.BREAKPOINT);
    expect(vcpu.tval).toBe(0);
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
  });

  it('a trap leaves general registers, scratch, ie and ptbr alone', () => {
    const { vcpu } = trapState(inSupervisor(`
        li t0, 0x5a5a
        csrrw zero, scratch, t0
        li t1, ${1 << Irq.TIMER}
        csrrw zero, ie, t1
        li s1, 0x1111
        li s2, -2
        ecall`));
    expect(vcpu.scratch).toBe(0x5a5a);
    expect(vcpu.ie).toBe(1 << Irq.TIMER);
    expect(vcpu.ptbr).toBe(0);
    expect(vcpu.regs[Reg.S1]).toBe(0x1111);
    expect(vcpu.regs[Reg.S2]).toBe(-2);
  });

  it('sret sets pc = epc, mode = SPP, SIE = SPIE, SPIE = 1, SPP = 0', () => {
    const guest = boot(`
_start: la t0, handler
        csrrw zero, tvec, t0
        la t0, back
        csrrw zero, epc, t0
        li t0, ${SPIE | SPP}
        csrrw zero, status, t0        # SIE = 0, SPIE = 1, SPP = S
        sret
        exiti 1
back:   csrrs s1, status, zero        # still S: status is readable
        la t0, user
        csrrw zero, epc, t0
        li t0, ${SPP}
        csrrc zero, status, t0        # SPP = U now
        sret
        exiti 2
user:   ecall                         # cause 8 proves U mode
        exiti 3
handler: exiti ${TRAPPED}
`);
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    const vcpu = guest.vcpu();
    expect(hex(vcpu.regs[Reg.S1]!)).toBe(hex(SIE | SPIE));
    expect(vcpu.cause).toBe(Cause.ECALL_USER);
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('user')));
    // The second sret left SIE = SPIE (1), SPIE = 1; the ecall then moved SIE to SPIE.
    expect(vcpu.status & (SIE | SPIE | SPP)).toBe(SPIE);
  });

  it('epc holds all 32 bits, like cause, tval and scratch (SPEC.md §6.4)', () => {
    const guest = boot(inSupervisor(`
        li t0, 0x12345677
        csrrw zero, epc, t0
        csrrs s0, epc, zero
        csrrw zero, cause, t0
        csrrs s1, cause, zero
        csrrw zero, tval, t0
        csrrs s2, tval, zero
        csrrw zero, scratch, t0
        csrrs s3, scratch, zero
        exiti 0`));
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect([regs[Reg.S0], regs[Reg.S1], regs[Reg.S2], regs[Reg.S3]].map((v) => hex(v!))).toEqual(Array(4).fill(hex(0x1234_5677)));
  });

  it('sret to a misaligned epc traps at the fetch: cause 0, tval = epc = the misaligned pc', () => {
    const { guest, vcpu } = trapState(inSupervisor(`
        la t0, target
        addi t0, t0, 2
        csrrw zero, epc, t0
        sret
target: exiti 2`));
    expect(vcpu.cause).toBe(Cause.INSN_MISALIGNED);
    expect(hex(vcpu.tval)).toBe(hex(guest.sym('target') + 2));
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('target') + 2));
  });
});

describe('illegal instructions and CSR access rules (SPEC.md §3.3, §6.3)', () => {
  const ILLEGAL_WORDS = {
    'the zero word': 0x0000_0000,
    'an unassigned opcode (0xff)': 0x0000_00ff,
    'the first unassigned opcode after the table': 0x0000_003b,
    'add with a reserved bit set': (word('add', { rd: 4, rs1: 5, rs2: 6 }) | 0x0010_0000) >>> 0,
    'sret with a reserved bit set': (word('sret') | 0x100) >>> 0,
    'slli with shamt bit 5 set': (word('slli', { rd: 4, rs1: 4, imm: 1 }) | 0x0020_0000) >>> 0,
    'sfence with field A set': (word('sfence') | 0x0000_0f00) >>> 0,
    'csrrs with a reserved bit set': (word('csrrs', { rd: 4, imm: Csr.TIME }) | 0x1000_0000) >>> 0,
  };
  for (const [name, illegal] of Object.entries(ILLEGAL_WORDS)) {
    it(`${name} traps with cause 2 and tval = the word`, () => {
      const { guest, vcpu } = trapState(inSupervisor(`site:   .word ${hex(illegal)}`));
      expect(vcpu.cause).toBe(Cause.ILLEGAL_INSN);
      expect(hex(vcpu.tval)).toBe(hex(illegal));
      expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
    });
  }

  const PRIVILEGED = { hcall: word('hcall'), sret: word('sret'), wfi: word('wfi'), sfence: word('sfence', { rs1: 4, rs2: 5 }) };
  for (const [name, encoded] of Object.entries(PRIVILEGED)) {
    it(`${name} in U mode is an illegal instruction with tval = the word`, () => {
      const { guest, vcpu } = trapState(inUser(`        li a0, 1\nsite:   .word ${hex(encoded)}`));
      expect(vcpu.cause).toBe(Cause.ILLEGAL_INSN);
      expect(hex(vcpu.tval)).toBe(hex(encoded));
      expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
      expect(guest.vm.exits.hypercall).toBe(1); // only the handler's EXIT
    });
  }

  for (const [name, csr] of CSR_NAMES) {
    if (USER_READABLE_CSRS.has(csr)) {
      it(`U mode may read ${name} (csrrs t0, ${name}, zero)`, () => {
        const guest = boot(inUser(`        csrrs t0, ${name}, zero`));
        expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
        expect(guest.vcpu().cause).toBe(Cause.ECALL_USER);
      });
    } else {
      it(`U mode may not read ${name}: cause 2, tval = the word, rd unchanged`, () => {
        const encoded = word('csrrs', { rd: Reg.T0, rs1: 0, imm: csr });
        const { vcpu } = trapState(inUser(`        li t0, 0x4242\n        csrrs t0, ${name}, zero`));
        expect(vcpu.cause).toBe(Cause.ILLEGAL_INSN);
        expect(hex(vcpu.tval)).toBe(hex(encoded));
        expect(vcpu.regs[Reg.T0]).toBe(0x4242);
      });
    }
  }

  for (const [name, csr] of CSR_NAMES) {
    if (!READ_ONLY_CSRS.has(csr)) continue;
    it(`read-only ${name}: csrrw, and csrrs/csrrc with rs1 != r0 (even holding 0), trap; rs1 = r0 reads`, () => {
      for (const [mnemonic, rs1] of [['csrrw', Reg.T1], ['csrrs', Reg.T1], ['csrrc', Reg.T1], ['csrrw', 0]] as const) {
        const encoded = word(mnemonic, { rd: Reg.T0, rs1, imm: csr });
        const { guest, vcpu } = trapState(inSupervisor(`        li t0, 0x4242\n        li t1, 0\n        .word ${hex(encoded)}`));
        expect(vcpu.cause, mnemonic).toBe(Cause.ILLEGAL_INSN);
        expect(hex(vcpu.tval)).toBe(hex(encoded));
        expect(vcpu.regs[Reg.T0]).toBe(0x4242);
        hv.destroyVm(guest.vm);
      }
      const guest = boot(inSupervisor(`        csrrs t0, ${name}, zero\n        csrrc t1, ${name}, zero\n        exiti 0`));
      expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    });
  }

  it('numbers that are not CSRs trap in S mode too', () => {
    for (const csr of [0x009, 0x00f, 0x015, 0x100, 0x200, 0xfff]) {
      const encoded = word('csrrs', { rd: Reg.T0, imm: csr });
      const { guest, vcpu } = trapState(inSupervisor(`        .word ${hex(encoded)}`));
      expect(vcpu.cause, `csr 0x${csr.toString(16)}`).toBe(Cause.ILLEGAL_INSN);
      expect(hex(vcpu.tval)).toBe(hex(encoded));
      hv.destroyVm(guest.vm);
    }
  });

  it('an illegal CSR access from an execute-only page still reports the instruction word in tval', () => {
    // The word is known from the fetch; it must not depend on the page also being readable.
    const encoded = word('csrrw', { rd: 0, rs1: Reg.T0, imm: Csr.TIME });
    const guest = boot(inSupervisor(`
        li t0, ${hex(ptbrFor(0x80000))}
        csrrw zero, ptbr, t0
        li t0, 0x40000000
        jalr zero, t0, 0`));
    const tables = new HostPageTables(guest.vm, 0x80000, 0x81000);
    guest.vm.writePhysical(0x90000, new Uint8Array(new Uint32Array([encoded]).buffer));
    tables.map(0x4000_0000, 0x90000, Pte.V | Pte.X | Pte.A);
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    expect(guest.vcpu().cause).toBe(Cause.ILLEGAL_INSN);
    expect(hex(guest.vcpu().epc)).toBe(hex(0x4000_0000));
    expect(hex(guest.vcpu().tval)).toBe(hex(encoded));
  });

  it('CSR writes pass through the write masks of SPEC.md §6.4', () => {
    const guest = boot(inSupervisor(`
        li t0, -1
        csrrw zero, status, t0
        csrrs s0, status, zero
        csrrw zero, status, zero
        csrrw zero, ie, t0
        csrrs s1, ie, zero
        csrrw zero, ie, zero
        csrrw zero, ip, t0            # only SOFT is writable
        csrrs s2, ip, zero
        li t1, 0x1003
        csrrw zero, tvec, t1
        csrrs s3, tvec, zero
        li t1, 0x7fffffff             # MODE = 0: paging stays off
        csrrw zero, ptbr, t1
        csrrs a2, ptbr, zero
        exiti 0`));
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect(hex(regs[Reg.S0]!)).toBe(hex(STATUS_WRITABLE_MASK));
    expect(hex(regs[Reg.S1]!)).toBe(hex(IRQ_MASK));
    expect(hex(regs[Reg.S2]!)).toBe(hex(1 << Irq.SOFT));
    expect(hex(regs[Reg.S3]!)).toBe(hex(0x1000));
    expect(hex(regs[Reg.A2]!)).toBe(hex(0x7fff_ffff));
  });
});

describe('exception priority (SPEC.md §7.2)', () => {
  /** A program that turns paging on (identity map of the first 4 MiB) and then runs `body`. */
  function withPaging(body: string, setup: (tables: HostPageTables) => void): { guest: Guest; vcpu: Vcpu } {
    const guest = boot(inSupervisor(`        li t0, ${hex(ptbrFor(0x80000, 1))}\n        csrrw zero, ptbr, t0\n${body}`));
    setup(new HostPageTables(guest.vm, 0x80000, 0x81000));
    expectHalted(guest.run({ maxInstructions: 10_000 }), TRAPPED);
    return { guest, vcpu: guest.vcpu() };
  }

  it('a fetch page fault wins over the illegal word that lies there', () => {
    const { vcpu } = withPaging('        li t0, 0x40000000\n        jalr zero, t0, 0', (tables) => {
      tables.map(0x4000_0000, 0x90000, Pte.V | Pte.R | Pte.A); // readable zeros, but not executable
    });
    expect(vcpu.cause).toBe(Cause.INSN_PAGE_FAULT);
    expect(hex(vcpu.tval)).toBe(hex(0x4000_0000));
    expect(hex(vcpu.epc)).toBe(hex(0x4000_0000));
  });

  const MISALIGNED: [string, string, number][] = [
    ['lw', 'lw a0, 2(t0)', Cause.LOAD_MISALIGNED],
    ['lh', 'lh a0, 1(t0)', Cause.LOAD_MISALIGNED],
    ['sw', 'sw a0, 1(t0)', Cause.STORE_MISALIGNED],
    ['sh', 'sh a0, 3(t0)', Cause.STORE_MISALIGNED],
    ['amoswap', 'addi t0, t0, 2\n        amoswap a0, a0, (t0)', Cause.STORE_MISALIGNED],
  ];
  for (const [name, code, cause] of MISALIGNED) {
    it(`a misaligned ${name} to an unmapped address is a misaligned-address trap, not a page fault`, () => {
      const { vcpu } = withPaging(`        li t0, 0x40000000\n        ${code}`, () => {});
      expect(vcpu.cause).toBe(cause);
      expect(vcpu.tval & ~3).toBe(0x4000_0000);
      expect(vcpu.tval & 3).not.toBe(0);
    });
  }

  it('a misaligned fetch (sret to a misaligned, unmapped epc) is cause 0, not a page fault', () => {
    const { vcpu } = withPaging(`        li t0, 0x40000002
        csrrw zero, epc, t0
        li t0, ${SPP}
        csrrs zero, status, t0
        sret`, () => {});
    expect(vcpu.cause).toBe(Cause.INSN_MISALIGNED);
    expect(hex(vcpu.tval)).toBe(hex(0x4000_0002));
    expect(hex(vcpu.epc)).toBe(hex(0x4000_0002));
  });

  it('a misaligned jalr target that is also unmapped traps with cause 0 at the jalr', () => {
    const { guest, vcpu } = withPaging('        li t0, 0x40000002\nsite:   jalr ra, t0, 0', () => {});
    expect(vcpu.cause).toBe(Cause.INSN_MISALIGNED);
    expect(hex(vcpu.tval)).toBe(hex(0x4000_0002));
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
  });

  it('a permission failure is a page fault even when the page is not RAM (page fault before access fault)', () => {
    const { vcpu } = withPaging('        li t0, 0x40000000\n        lw a0, 0(t0)', (tables) => {
      tables.map(0x4000_0000, 0x2000_0000, Pte.V | Pte.X | Pte.A); // execute-only, outside RAM
    });
    expect(vcpu.cause).toBe(Cause.LOAD_PAGE_FAULT);
  });

  it('a permitted access to a page outside RAM is a load access fault with tval = the virtual address', () => {
    const { vcpu } = withPaging('        li t0, 0x40000000\n        lw a0, 8(t0)', (tables) => {
      tables.map(0x4000_0000, 0x2000_0000, Pte.V | Pte.R | Pte.A);
    });
    expect(vcpu.cause).toBe(Cause.LOAD_ACCESS_FAULT);
    expect(hex(vcpu.tval)).toBe(hex(0x4000_0008));
  });
});

describe('unhandled traps and trap loops (SPEC.md §7.5)', () => {
  it('with tvec = 0 a trap stops the VM with a guest error naming the cause, pc and tval', () => {
    const guest = boot(`
_start: li t0, 0x101
site:   lw a0, 2(t0)
        exiti 1
`);
    const message = expectGuestError(guest.run({ maxInstructions: 1000 }), /unhandled/);
    expect(message).toMatch(/load address misaligned/);
    expect(message).toContain(guest.sym('site').toString(16));
    expect(message).toContain('103');
    const reason = guest.vm.stopReason;
    expect(reason.kind === 'guest-error' && reason.pc).toBe(guest.sym('site'));
    expect(guest.vcpu().mode).toBe(Mode.SUPERVISOR);
  });

  it('an unhandled interrupt stops the VM too', () => {
    const guest = boot(`
_start: li t0, ${1 << Irq.SOFT}
        csrrs zero, ie, t0
        csrrs zero, ip, t0
        li t0, ${SIE}
        csrrs zero, status, t0
        exiti 1
`);
    expectGuestError(guest.run({ maxInstructions: 1000 }), /unhandled interrupt.*software/);
  });

  it('a trap vector pointing at unmapped memory stops with a guest error instead of hanging', () => {
    const guest = boot(`
_start: li t0, ${hex(ptbrFor(0x80000))}
        csrrw zero, ptbr, t0
        li t0, 0x40000000             # tvec: not mapped
        csrrw zero, tvec, t0
        ebreak
        exiti 1
`);
    new HostPageTables(guest.vm, 0x80000, 0x81000);
    const started = performance.now();
    expectGuestError(guest.run({ maxInstructions: 1_000_000 }), /trap loop/);
    expect(performance.now() - started).toBeLessThan(5000);
    expect(guest.vcpu().cause).toBe(Cause.INSN_PAGE_FAULT);
  });
});

describe('interrupts (SPEC.md §8.2, §8.3)', () => {
  /** A handler that logs cause and epc at s1, disables the interrupt it took, and returns. */
  const LOGGING_HANDLER = `
handler:
        csrrs t0, cause, zero
        csrrs t1, epc, zero
        sw t0, 0(s1)
        sw t1, 4(s1)
        addi s1, s1, 8
        andi t1, t0, 31
        li t2, 1
        sll t2, t2, t1
        csrrc zero, ie, t2            # level-triggered: stop it from firing again
        sret
`;

  it('in S mode a pending, enabled interrupt waits for SIE = 1 and is taken right after the enabling csrrs', () => {
    const guest = boot(`
_start: la s1, log
        la t0, handler
        csrrw zero, tvec, t0
        li t0, ${1 << Irq.SOFT}
        csrrs zero, ie, t0
        csrrs zero, ip, t0            # pending and enabled, but SIE = 0
        li s2, 1                      # these run
        li s3, 2
        li t0, ${SIE}
        csrrs zero, status, t0
after:  exiti 0
${LOGGING_HANDLER}
        .data
log:    .space 64
`);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(guest.vcpu().regs[Reg.S3]).toBe(2);
    expect(guest.words(guest.sym('log'), 3).map(hex)).toEqual([CAUSE_INTERRUPT | Irq.SOFT, guest.sym('after'), 0].map(hex));
    expect(guest.vcpu().stats.interrupts).toBe(1);
  });

  it('in U mode interrupts are taken whatever SIE says, with SPP = 0 and tval = 0', () => {
    const guest = boot(inUser('site:   li a0, 3'));
    // Pending and enabled before the guest even starts; SIE stays 0 throughout.
    guest.vcpu().ie = 1 << Irq.SOFT;
    guest.vm.sendIpi(1);
    guest.vcpu().tval = 0x999;
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    const vcpu = guest.vcpu();
    expect(hex(vcpu.cause)).toBe(hex(CAUSE_INTERRUPT | Irq.SOFT));
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('site')));
    expect(vcpu.tval).toBe(0);
    expect(vcpu.status & SPP).toBe(0);
  });

  it('in U mode a pending interrupt whose ie bit is clear is not taken', () => {
    const guest = boot(inUser('site:   li a0, 3'));
    guest.vcpu().ie = 1 << Irq.TIMER;
    guest.vm.sendIpi(1); // SOFT pending, but only TIMER is enabled
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    expect(guest.vcpu().cause).toBe(Cause.ECALL_USER);
    expect(guest.vcpu().stats.interrupts).toBe(0);
  });

  it('an interrupt that sret enables is taken before the instruction at epc', () => {
    const { guest, vcpu } = trapState(inSupervisor(`
        li t0, ${1 << Irq.SOFT}
        csrrs zero, ie, t0
        csrrs zero, ip, t0
        la t0, back
        csrrw zero, epc, t0
        li t0, ${SPIE | SPP}
        csrrw zero, status, t0        # SIE = 0 now, 1 after sret
        sret
        exiti 1
back:   exiti 2`));
    expect(hex(vcpu.cause)).toBe(hex(CAUSE_INTERRUPT | Irq.SOFT));
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('back')));
  });

  it('the external interrupt line is seen by every vCPU', () => {
    const guest = boot(`
        la t0, seen
        slli t1, a0, 2
        add t0, t0, t1
        csrrs t2, ip, zero
        sw t2, 0(t0)
        bne a0, zero, 1f
        li t3, 50000                  # vCPU 0 waits a little for vCPU 1, then exits
2:      addi t3, t3, -1
        bne t3, zero, 2b
        exiti 0
1:      jal zero, 1b
        .data
seen:   .word 0, 0
`, { vcpus: 2 });
    guest.vm.setExternalInterrupt(true);
    expectHalted(guest.run({ maxInstructions: 1_000_000, quantum: 1000 }), 0);
    expect(guest.words(guest.sym('seen'), 2).map((ip) => ip & (1 << Irq.EXTERNAL))).toEqual([1 << Irq.EXTERNAL, 1 << Irq.EXTERNAL]);
  });

  it('a deadline written through an MMIO device mid-slice fires at the first recognition point after it', () => {
    // A stand-in timer: a write to offset 0 sets the writing vCPU's deadline (absolute TIME).
    const guest = boot(`
        la t0, handler
        csrrw zero, tvec, t0
        li t0, ${1 << Irq.TIMER}
        csrrw zero, ie, t0
        li t0, ${SIE}
        csrrs zero, status, t0
        li s1, ${hex(0xf000_1000)}
        csrrs t0, time, zero
        addi t0, t0, 500
        addi s2, t0, 0                # the deadline
        sw t0, 0(s1)
1:      addi t1, t1, 1
        jal zero, 1b
handler:
        csrrs s3, time, zero
        exiti ${TRAPPED}
`);
    guest.vm.attachDevice({ type: 2, name: 'stand-in timer' }, {
      read: () => 0,
      write: (vcpu, offset, value) => {
        if (offset === 0) vcpu.timerDeadline = value >>> 0;
        return true;
      },
    });
    expectHalted(guest.run({ maxInstructions: 10_000 }), TRAPPED);
    const regs = guest.vcpu().regs;
    expect(hex(guest.vcpu().cause)).toBe(hex(CAUSE_INTERRUPT | Irq.TIMER));
    // The loop ends a block every two instructions, so the interrupt comes at TIME = deadline or deadline + 1.
    expect(regs[Reg.S3]! - regs[Reg.S2]!).toBeGreaterThanOrEqual(0);
    expect(regs[Reg.S3]! - regs[Reg.S2]!).toBeLessThanOrEqual(1);
  });

  it('when several are deliverable, external beats software beats timer', () => {
    const guest = boot(`
_start: la s1, log
        la t0, handler
        csrrw zero, tvec, t0
        li t0, ${1 << Irq.SOFT}
        csrrs zero, ip, t0
        li t0, ${IRQ_MASK}
        csrrs zero, ie, t0
        li t0, ${SIE}
        csrrs zero, status, t0
        exiti 0
${LOGGING_HANDLER}
        .data
log:    .space 64
`);
    guest.vm.setExternalInterrupt(true);
    guest.vcpu().timerDeadline = 0;
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const log = guest.words(guest.sym('log'), 8).filter((_, i) => i % 2 === 0);
    expect(log.map(hex)).toEqual([CAUSE_INTERRUPT | Irq.EXTERNAL, CAUSE_INTERRUPT | Irq.SOFT, CAUSE_INTERRUPT | Irq.TIMER, 0].map(hex));
  });

  /** Straight-line code from the entry: setup, then `filler` until the page ends. */
  function recognitionProgram(filler: string): string {
    const setup = [
      'la t0, handler',
      'csrrw zero, tvec, t0',
      `li t0, ${1 << Irq.TIMER}`,
      'csrrw zero, ie, t0',
      `li t0, ${SIE}`,
      'csrrs zero, status, t0',
    ];
    const words = setup.length + 1; // la is two words
    const lines = [...setup.map((l) => `        ${l}`)];
    for (let i = words; i < 1024; i++) lines.push(`        ${filler}`);
    return `
_start:
${lines.join('\n')}
next_page:
        exiti 1
handler:
        exiti ${TRAPPED}
`;
  }

  it('an interrupt that becomes pending in straight-line code waits until the code crosses into the next page', () => {
    const guest = boot(recognitionProgram('addi t1, t1, 1'));
    expect(guest.sym('_start')).toBe(0x1000);
    guest.vcpu().timerDeadline = 100;
    expectHalted(guest.run({ maxInstructions: 10_000 }), TRAPPED);
    expect(hex(guest.vcpu().epc)).toBe(hex(guest.sym('next_page')));
    expect(guest.vcpu().cause).toBe(CAUSE_INTERRUPT | Irq.TIMER);
  });

  it('a not-taken branch is not a recognition point: the interrupt waits for the page crossing', () => {
    const guest = boot(recognitionProgram('bne zero, zero, handler'));
    guest.vcpu().timerDeadline = 100;
    expectHalted(guest.run({ maxInstructions: 10_000 }), TRAPPED);
    // Not-taken branches are straight-line code (SPEC.md §8.3), like the addi filler above.
    expect(hex(guest.vcpu().epc)).toBe(hex(guest.sym('next_page')));
    expect(guest.vcpu().cause).toBe(CAUSE_INTERRUPT | Irq.TIMER);
  });

  it('a taken branch is a recognition point: the interrupt is taken at the first one with TIME >= the deadline', () => {
    // Each filler branch is taken, to the next instruction.
    const guest = boot(recognitionProgram('beq zero, zero, 1f\n1:'));
    const deadline = 100;
    guest.vcpu().timerDeadline = deadline;
    expectHalted(guest.run({ maxInstructions: 10_000 }), TRAPPED);
    // Instructions 0..99 retired (TIME = 100); the 100th was a taken branch: epc = entry + 4 × 100.
    expect(hex(guest.vcpu().epc)).toBe(hex(guest.sym('_start') + 4 * deadline));
  });
});

describe('wfi (SPEC.md §8.4)', () => {
  it('with ie.TIMER and a deadline, time jumps to the deadline and wfi retires (adding 1)', () => {
    const guest = boot(inSupervisor(`
        li t0, ${1 << Irq.TIMER}
        csrrw zero, ie, t0
        csrrs s0, time, zero
        wfi
        csrrs s1, time, zero
        csrrs s2, instret, zero
        csrrs s3, ip, zero
        exiti 0`));
    const deadline = 50_000;
    guest.vcpu().timerDeadline = deadline;
    expectHalted(guest.run({ maxInstructions: 100_000 }), 0);
    const regs = guest.vcpu().regs;
    expect(regs[Reg.S0]!).toBeLessThan(deadline);
    expect(regs[Reg.S3]! & (1 << Irq.TIMER)).not.toBe(0);
    expect(guest.vcpu().stats.waits).toBe(1);
    // TIME = TIMECMP, then wfi retires like any instruction (+1); the csrrs reads before it retires.
    expect(regs[Reg.S1]).toBe(deadline + 1);
    // TIME − INSTRET = the time skipped in wfi (deadline − TIME when wfi began, which is S0 + 1).
    // At the instret read TIME is S1 + 1.
    expect(regs[Reg.S1]! + 1 - regs[Reg.S2]!).toBe(deadline - (regs[Reg.S0]! + 1));
  });

  it('with RunOptions.yieldOnTimerWait a run returns timer-wait after each skip of time, and the guest ends exactly as without it', () => {
    // Five timer waits (a stand-in timer: a write to offset 0 sets the deadline), work between them.
    const source = inSupervisor(`
        li t0, ${1 << Irq.TIMER}
        csrrw zero, ie, t0
        li s1, ${hex(0xf000_1000)}
        li s0, 5
1:      csrrs t0, time, zero
        li t1, 10000
        add t0, t0, t1
        sw t0, 0(s1)
        wfi
        addi s2, s2, 7
        mul s2, s2, s0
        addi s0, s0, -1
        bne s0, zero, 1b
        csrrs s3, time, zero
        csrrs a3, instret, zero
        exiti 0`);
    const ends = (yieldOnTimerWait: boolean): { kinds: string[]; regs: number[]; waits: number } => {
      const guest = boot(source);
      guest.vm.attachDevice({ type: 2, name: 'stand-in timer' }, {
        read: () => 0,
        write: (vcpu, offset, value) => {
          if (offset === 0) vcpu.timerDeadline = value >>> 0;
          return true;
        },
      });
      const kinds: string[] = [];
      for (let i = 0; i < 20; i++) {
        const result = guest.run({ maxInstructions: 100_000, yieldOnTimerWait });
        kinds.push(result.reason.kind);
        if (result.reason.kind !== 'timer-wait') break;
      }
      const regs = guest.vcpu().regs;
      return { kinds, regs: [Reg.S2, Reg.S3, Reg.A3].map((r) => regs[r]!), waits: guest.vcpu().stats.waits };
    };
    const plain = ends(false);
    const paced = ends(true);
    expect(plain.kinds).toEqual(['halted']);
    expect(paced.kinds).toEqual(['timer-wait', 'timer-wait', 'timer-wait', 'timer-wait', 'timer-wait', 'halted']);
    expect(paced.regs).toEqual(plain.regs);
    expect(paced.waits).toBe(5);
    expect(plain.regs[1]).toBeGreaterThan(50_000); // TIME went past five deadlines
  });

  it('with SIE = 1 the timer interrupt is taken after wfi, with epc = the next instruction', () => {
    const guest = boot(inSupervisor(`
        li t0, ${1 << Irq.TIMER}
        csrrw zero, ie, t0
        li t0, ${SIE}
        csrrs zero, status, t0
        wfi
after:  li a0, 5`));
    guest.vcpu().timerDeadline = 1_000_000;
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    const vcpu = guest.vcpu();
    expect(vcpu.clock).toBeGreaterThanOrEqual(1_000_000);
    expect(hex(vcpu.cause)).toBe(hex(CAUSE_INTERRUPT | Irq.TIMER));
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('after')));
  });

  it('with nothing that could wake it, the run ends idle', () => {
    const guest = boot(inSupervisor('        wfi'));
    const result = guest.run({ maxInstructions: 1_000_000 });
    expect(result.reason.kind).toBe('idle');
    expect(guest.vcpu().waiting).toBe(true);
  });

  it('an IPI wakes a waiting vCPU, and waiting for it takes no virtual time', () => {
    const guest = boot(`
_start: bne a0, zero, secondary
        li t0, 20000                  # vCPU 0 works for a while (several quanta) ...
1:      addi t0, t0, -1
        bne t0, zero, 1b
        li a0, HCALL_PROBE            # ... then the test sends vCPU 1 an IPI
        hcall
        la t1, done
2:      lw t2, 0(t1)                  # wait for vCPU 1 to report
        beq t2, zero, 2b
        exiti 0
secondary:
        li t0, ${1 << Irq.SOFT}
        csrrw zero, ie, t0            # SIE = 0: poll after wfi
        wfi
        csrrs s0, time, zero
        csrrs s1, instret, zero
        csrrs s2, ip, zero
        la t1, done
        li t2, 1
        sw t2, 0(t1)
3:      jal zero, 3b
        .data
done:   .word 0
`, { vcpus: 2 });
    guest.vm.onHypercall(HCALL_PROBE, () => guest.vm.sendIpi(0b10));
    expectHalted(guest.run({ maxInstructions: 1_000_000 }), 0);
    const secondary = guest.vcpu(1);
    expect(secondary.regs[Reg.S2]! & (1 << Irq.SOFT)).not.toBe(0);
    expect(secondary.stats.waits).toBe(1);
    // SPEC.md §9: waiting for an IPI takes no virtual time, so TIME = INSTRET on this vCPU
    // (time read first, then instret one instruction later).
    expect(secondary.regs[Reg.S1]).toBe(secondary.regs[Reg.S0]! + 1);
  });
});

describe('counters (SPEC.md §9)', () => {
  it('INSTRET and TIME count retired instructions, read mid-block and before the reading instruction retires', () => {
    const guest = boot(inSupervisor(`
        csrrs s0, instret, zero
        csrrs s2, time, zero
        addi t0, t0, 1
        addi t0, t0, 1
        addi t0, t0, 1
        csrrs s1, instret, zero
        csrrs s3, time, zero
        exiti 0`));
    const result = guest.run({ maxInstructions: 1000 });
    expectHalted(result, 0);
    const regs = guest.vcpu().regs;
    expect(regs[Reg.S1]! - regs[Reg.S0]!).toBe(5);
    expect(regs[Reg.S3]! - regs[Reg.S2]!).toBe(5);
    // la (2) + csrrw = 3 instructions before the first read.
    expect(regs[Reg.S0]).toBe(3);
    expect(guest.vcpu().instret).toBe(result.instructions);
    expect(guest.vcpu().clock).toBe(result.instructions);
  });

  it('a trapping instruction does not count; the handler and hcall do', () => {
    const guest = boot(`
_start: la t0, handler
        csrrw zero, tvec, t0
        csrrs s0, instret, zero
        ecall                         # does not retire
        csrrs s1, instret, zero
        li a0, 0
        hcall                         # retires
        csrrs s2, instret, zero
        exiti 0
handler:
        csrrs t0, epc, zero
        addi t0, t0, 4
        csrrw zero, epc, t0
        sret
`);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect(regs[Reg.S1]! - regs[Reg.S0]!).toBe(1 + 4);
    expect(regs[Reg.S2]! - regs[Reg.S1]!).toBe(3);
  });

  it('the counters keep counting across many slices and read consistently with the high halves', () => {
    const guest = boot(inSupervisor(`
        li t0, 100000
1:      addi t0, t0, -1
        bne t0, zero, 1b
        csrrs s0, instreth, zero
        csrrs s1, instret, zero
        csrrs s2, timeh, zero
        csrrs s3, time, zero
        exiti 0`));
    const result = guest.run({ maxInstructions: 1_000_000, quantum: 1000 });
    expectHalted(result, 0);
    const regs = guest.vcpu().regs;
    expect(regs[Reg.S0]).toBe(0);
    expect(regs[Reg.S2]).toBe(0);
    // From the instret read on, six instructions retire: csrrs instret, timeh, time, then li, li, hcall.
    expect(regs[Reg.S1]).toBe(result.instructions - 6);
    expect(regs[Reg.S3]).toBe(result.instructions - 4);
  });

  it('a device sees the current virtual time of the vCPU that accesses it', () => {
    // A stand-in timer: reading offset 0 returns the accessing vCPU's clock, as TIME must (§13.4).
    const seen: number[] = [];
    const guest = boot(inSupervisor(`
        li s1, DEVICE
        csrrs s0, time, zero
        addi t0, t0, 1
        addi t0, t0, 1
        addi t0, t0, 1
        lw s2, 0(s1)
        exiti 0`.replace('DEVICE', hex(0xf000_1000))));
    const base = guest.vm.attachDevice({ type: 2, name: 'stand-in timer' }, {
      read: (vcpu) => {
        seen.push(vcpu.clock);
        return vcpu.clock;
      },
      write: () => true,
    });
    expect(base).toBe(0xf000_1000);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect(seen).toHaveLength(1);
    expect(regs[Reg.S2]).toBe(regs[Reg.S0]! + 4);
  });
});
