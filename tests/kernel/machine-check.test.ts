/**
 * Machine checks as SPEC.md §7.1, §7.6 and §12.4 define them: taking one sets status.MCIP and
 * `sret` clears it; one taken while MCIP is set stops the VM ("double machine check") with the
 * first one's CSRs intact, instead of re-entering a handler that faults forever; a handler may
 * clear MCIP early and then take a second one; and a page-table page nobody can repair raises
 * a machine check from the walk (tval = the virtual address being translated), in every MMU
 * configuration, where it used to be an access fault.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Cause, Pte, Reg, StatusBit } from '../../guest-isa/arch.ts';
import { AbsentState, createHypervisor, DOUBLE_MACHINE_CHECK } from '../../kernel/index.ts';
import { bootGuest, expectGuestError, expectHalted, hex, HostPageTables, MiB, MMU_CONFIGS, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const DATA_GPN = 0x80;
const DATA_GPA = DATA_GPN * 4096;
const OTHER_GPA = (DATA_GPN + 1) * 4096;

/** Poisons a page now, with a resolver that refuses: every access to it is a machine check. */
function poisonForGood(guest: Guest, gpn: number): void {
  const memory = guest.vm.memory;
  if (memory.stateOf(gpn) !== 7) memory.installPage(gpn, new Uint8Array(4096).fill(0x5a));
  memory.onAbsent(AbsentState.POISONED, () => {});
  memory.poisonPage(gpn);
}

describe('status.MCIP', () => {
  it('is set by taking a machine check and cleared by sret; a second machine check after the sret is taken normally', () => {
    // The handler counts machine checks in s2, records status in s3 (in the handler) and a2
    // (after the sret, in the resumed code), skips the faulting load and returns.
    const guest = bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t1, ${hex(DATA_GPA)}
        lw s0, 0(t1)
        csrrs a2, status, zero
        lw s0, 0(t1)
        exitr s2
handler:
        addi s2, s2, 1
        csrrs s3, status, zero
        csrrs t2, epc, zero
        addi t2, t2, 4
        csrrw zero, epc, t2
        sret
`, { hv, memoryBytes: MiB });
    poisonForGood(guest, DATA_GPN);
    expectHalted(guest.run({ maxInstructions: 1000 }), 2);
    const regs = guest.vcpu().regs;
    expect(regs[Reg.S3]! & StatusBit.MCIP).toBe(StatusBit.MCIP);
    expect(regs[Reg.A2]! & StatusBit.MCIP).toBe(0);
    expect(guest.vm.exits.trapToGuest).toBe(2);
  });

  it('a machine check inside the handler stops the VM: "double machine check", the first one\'s CSRs kept', () => {
    // The handler itself reads the other poisoned page before it returns.
    const guest = bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t1, ${hex(DATA_GPA)}
        lw s0, 0x10(t1)
        exiti 0
handler:
        addi s2, s2, 1
        li t2, ${hex(OTHER_GPA)}
        lw s1, 0(t2)
        sret
`, { hv, memoryBytes: MiB });
    poisonForGood(guest, DATA_GPN);
    poisonForGood(guest, DATA_GPN + 1);
    const message = expectGuestError(guest.run({ maxInstructions: 10_000 }));
    expect(message.startsWith(DOUBLE_MACHINE_CHECK)).toBe(true);
    expect(message).toContain(`tval 0x${OTHER_GPA.toString(16)}`);
    const vcpu = guest.vcpu();
    expect(vcpu.regs[Reg.S2]).toBe(1); // entered once, not again and again
    expect(vcpu.cause).toBe(Cause.MACHINE_CHECK);
    expect(hex(vcpu.tval)).toBe(hex(DATA_GPA + 0x10)); // the first machine check's
    expect(guest.vm.exits.trapToGuest).toBe(2);
  });

  it('a handler whose own code page is the bad one stops at once, not in a loop', () => {
    const guest = bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t1, ${hex(DATA_GPA)}
        lw s0, 0(t1)
        exiti 0
        .align 12
handler:
        sret
`, { hv, memoryBytes: MiB });
    const handlerGpn = Math.floor(guest.sym('handler') / 4096);
    poisonForGood(guest, DATA_GPN);
    poisonForGood(guest, handlerGpn);
    const message = expectGuestError(guest.run({ maxInstructions: 1_000_000 }));
    expect(message.startsWith(DOUBLE_MACHINE_CHECK)).toBe(true);
    expect(guest.vm.instructionsRetired).toBeLessThan(20);
  });

  it('a handler may clear MCIP early: a second machine check is then taken, not a stop', () => {
    // The first entry saves the program's epc, clears MCIP and loads from the other bad page;
    // the second entry skips that load and returns into the first, which skips the program's.
    const guest = bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t1, ${hex(DATA_GPA)}
        lw s0, 0(t1)
        exitr s2
handler:
        addi s2, s2, 1
        li t3, 1
        bne s2, t3, second
        csrrs s3, epc, zero
        li t2, ${StatusBit.MCIP}
        csrrc zero, status, t2
        li t2, ${hex(OTHER_GPA)}
        lw s1, 0(t2)
        addi s3, s3, 4
        csrrw zero, epc, s3
        li t2, ${StatusBit.SPP}
        csrrs zero, status, t2
        sret
second: csrrs t2, epc, zero
        addi t2, t2, 4
        csrrw zero, epc, t2
        sret
`, { hv, memoryBytes: MiB });
    poisonForGood(guest, DATA_GPN);
    poisonForGood(guest, DATA_GPN + 1);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 2);
  });

  it('MCIP is a writable status bit that checkpoints carry (saveState / loadState)', () => {
    const guest = bootGuest('_start: exiti 0', { hv, memoryBytes: MiB });
    const vcpu = guest.vcpu();
    const state = vcpu.saveState();
    state.status |= StatusBit.MCIP;
    vcpu.loadState(state);
    expect(vcpu.saveState().status & StatusBit.MCIP).toBe(StatusBit.MCIP);
  });
});

describe('a page-table page nobody can repair', () => {
  for (const [name, mmu] of MMU_CONFIGS) {
    it(`raises a machine check from the walk, tval = the virtual address, cause 18 not an access fault [MMU: ${name}]`, () => {
      const VA = 0x4000_0000;
      const ROOT = 0x10_0000;
      const guest = bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw s0, 0x24(t1)
        li a0, HCALL_PROBE
        hcall
        sfence zero, zero             # the cached translation goes: the next load walks the table
        lw s1, 0x28(t1)
        exiti 0
handler:
        csrrs a2, cause, zero
        exitr a2
        .equ PTBR, 0x${((0x8000_0000 | (ROOT / 4096)) >>> 0).toString(16)}
`, { hv, memoryBytes: 16 * MiB, mmu });
      const tables = new HostPageTables(guest.vm, ROOT, ROOT + 0x1000);
      const leaf = tables.map(VA, DATA_GPA, Pte.V | Pte.R | Pte.W | Pte.A | Pte.D);
      const leafTableGpn = Math.floor(leaf / 4096);
      guest.vm.onHypercall(0x100, (vcpu) => {
        poisonForGood(guest, leafTableGpn); // the table the next walk reads
        vcpu.regs[Reg.A0] = 0;
      });
      const result = guest.run({ maxInstructions: 10_000 });
      expectHalted(result, Cause.MACHINE_CHECK);
      expect(hex(guest.vcpu().tval)).toBe(hex(VA + 0x28));
    });
  }
});
