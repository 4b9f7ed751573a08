/**
 * Memory errors, the kernel's part (T-17, kernel/memory/poison.ts): corruptPage really changes the
 * host bytes behind a page, poisonPage makes the page POISONED with its translations gone and its
 * frame retired for good, the POISONED resolver rebuilds the page or the guest takes a machine
 * check, and bad windows, pages and patterns are clear errors.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Cause, Reg } from '../../guest-isa/arch.ts';
import { AbsentState, createHypervisor, HOST_READ, KernelError, PageState, type GuestMemory } from '../../kernel/index.ts';
import { P2mEntry } from '../../kernel/memory/p2m.ts';
import { bootGuest, expectHalted, hex, HCALL_PROBE, MiB, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const GPN = 0x80;
const GPA = GPN * 4096;
const TRAPPED = 0x77;

function frameOf(memory: GuestMemory, gpn: number): number {
  return P2mEntry.frame(memory.entryOf(gpn));
}
function hostBytes(memory: GuestMemory, frame: number): Uint8Array {
  return memory.pool.u8.slice(frame * 4096, (frame + 1) * 4096);
}
function pattern(seed: number): Uint8Array {
  return Uint8Array.from({ length: 4096 }, (_, i) => (i * 7 + seed) & 0xff);
}

/** A guest that reads word 0x10 of the page (into s0), calls the probe, reads it again (s1) and exits 0; traps exit TRAPPED. */
function readTwice(): Guest {
  return bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t1, ${hex(GPA)}
        lw s0, 0x10(t1)
        li a0, HCALL_PROBE
        hcall
        lw s1, 0x10(t1)
        exiti 0
handler: exiti ${TRAPPED}
`, { hv, memoryBytes: MiB });
}

describe('corruptPage', () => {
  it('changes the real host bytes of the frame behind the page, by each pattern, and only in the window', () => {
    const guest = readTwice();
    const memory = guest.vm.memory;
    memory.installPage(GPN, pattern(3));
    const frame = frameOf(memory, GPN);
    const before = hostBytes(memory, frame);
    expect(memory.corruptPage(GPN, 8 * 100 + 3, 8, 'flip')).toBe(8);
    const after = hostBytes(memory, frame);
    expect(frameOf(memory, GPN)).toBe(frame); // a private page keeps its frame: the bytes changed in place
    expect(after[100]).toBe(before[100]! ^ 0xf8);
    expect(after[101]).toBe(before[101]! ^ 0x07);
    after[100] = before[100]!;
    after[101] = before[101]!;
    expect(after).toEqual(before);
    memory.installPage(GPN, new Uint8Array(4096).fill(0x0f));
    expect(memory.corruptPage(GPN, 0, 8, 'stuck1')).toBe(4);
    expect(memory.corruptPage(GPN, 8, 8, 'stuck0')).toBe(4);
    expect(memory.readPhysical(GPA, 3)).toEqual(Uint8Array.of(0xff, 0x00, 0x0f));
    let n = 0;
    expect(memory.corruptPage(GPN, 64, 64, 'random', () => (n++ % 3 === 0 ? 0.1 : 0.9))).toBe(22);
    expect(memory.corruptPage(GPN, 200, 1, 'random', () => 0.9)).toBe(1); // an error always changes something
  });

  it('gives a shared page a private copy first: the other VM keeps its good bytes', () => {
    const a = readTwice();
    const b = bootGuest('_start: exiti 0', { hv, memoryBytes: MiB, name: 'b' });
    a.vm.memory.installPage(GPN, pattern(1));
    a.vm.memory.sharePage(GPN, b.vm.memory, GPN);
    expect(a.vm.memory.sameFrame(GPN, b.vm.memory, GPN)).toBe(true);
    a.vm.memory.corruptPage(GPN, 0, 16, 'flip');
    expect(a.vm.memory.sameFrame(GPN, b.vm.memory, GPN)).toBe(false);
    expect(b.vm.memory.readPhysical(GPA, 4096)).toEqual(pattern(1));
    expect(a.vm.memory.readPhysical(GPA, 2)).toEqual(Uint8Array.of(pattern(1)[0]! ^ 0xff, pattern(1)[1]! ^ 0xff));
  });

  it('drops the decoded code of a code page, so the interpreter runs the corrupted bytes', () => {
    const guest = bootGuest('_start: exiti 5', { hv, memoryBytes: MiB });
    expectHalted(guest.run({ maxInstructions: 100 }), 5);
    const pc = guest.sym('_start');
    const gpn = Math.floor(pc / 4096);
    const frame = frameOf(guest.vm.memory, gpn);
    expect(guest.vm.memory.decodeCache.isDecoded(frame)).toBe(true);
    guest.vm.memory.corruptPage(gpn, 0, 1, 'flip');
    expect(guest.vm.memory.decodeCache.isDecoded(frameOf(guest.vm.memory, gpn))).toBe(false);
  });

  it('refuses bad input with clear errors: outside RAM, an absent page, 0 or 65 bits, a window past the page, an unknown pattern', () => {
    const guest = readTwice();
    const memory = guest.vm.memory;
    memory.installPage(GPN, pattern(0));
    expect(() => memory.corruptPage(256, 0, 8, 'flip')).toThrow(/outside .*RAM/);
    expect(() => memory.corruptPage(GPN + 1, 0, 8, 'flip')).toThrow(/only a present page can be corrupted/);
    expect(() => memory.poisonPage(GPN + 1)).toThrow(/only a present page can be poisoned/);
    expect(() => memory.corruptPage(GPN, 0, 0, 'flip')).toThrow(/1 … 64 bits, got 0/);
    expect(() => memory.corruptPage(GPN, 0, 65, 'flip')).toThrow(/1 … 64 bits, got 65/);
    expect(() => memory.corruptPage(GPN, 32767, 2, 'flip')).toThrow(/must start at bit 0 … 32766/);
    expect(() => memory.corruptPage(GPN, 0, 8, 'melt' as 'flip')).toThrow(/pattern must be flip, random, stuck0, stuck1/);
    try {
      memory.corruptPage(GPN, 0, 0, 'flip');
    } catch (error) {
      expect(error).toBeInstanceOf(KernelError);
      expect((error as KernelError).code).toBe('BV_BAD_ERROR_WINDOW');
    }
    expect(memory.readPhysical(GPA, 4096)).toEqual(pattern(0)); // nothing changed
  });
});

describe('poisonPage', () => {
  it('drops the translations a vCPU holds: the next read runs the POISONED resolver, which rebuilds the page', () => {
    const guest = readTwice();
    const memory = guest.vm.memory;
    memory.installPage(GPN, pattern(9));
    const good = memory.readPhysical(GPA, 4096);
    const retiredBefore = memory.pool.retiredFrames;
    let seenBad: Uint8Array | null = null;
    guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
      memory.corruptPage(GPN, 0x10 * 8, 32, 'flip'); // exactly the word the guest reads again
      memory.poisonPage(GPN);
      vcpu.regs[Reg.A0] = 0;
    });
    memory.onAbsent(AbsentState.POISONED, (m, gpn) => {
      seenBad = m.poisonedPageBytes(gpn);
      m.installPage(gpn, good);
    });
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect(hex(regs[Reg.S1]!)).toBe(hex(regs[Reg.S0]!));
    expect(guest.vm.exits.absent.poisoned).toBe(1);
    expect(seenBad![0x10]).toBe(good[0x10]! ^ 0xff); // the service saw the bad bytes, the guest never did
    expect(memory.pool.retiredFrames).toBe(retiredBefore + 1);
    expect(memory.stateOf(GPN)).toBe(PageState.PRESENT);
  });

  it('a resolver that refuses: the guest takes a machine check with tval = the virtual address; the page stays poisoned', () => {
    const guest = readTwice();
    const memory = guest.vm.memory;
    memory.installPage(GPN, pattern(2));
    guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
      memory.poisonPage(GPN);
      vcpu.regs[Reg.A0] = 0;
    });
    memory.onAbsent(AbsentState.POISONED, () => {});
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    expect(guest.vcpu().cause).toBe(Cause.MACHINE_CHECK);
    expect(hex(guest.vcpu().tval)).toBe(hex(GPA + 0x10));
    expect(memory.stateOf(GPN)).toBe(PageState.POISONED);
    expect(() => memory.readPhysical(GPA, 4)).toThrow(/not readable/);
  });

  it('retires the frame: it keeps its reference after the VM is destroyed and no allocation ever returns it', () => {
    const guest = readTwice();
    const memory = guest.vm.memory;
    const pool = memory.pool;
    memory.installPage(GPN, pattern(4));
    const frame = frameOf(memory, GPN);
    memory.poisonPage(GPN);
    expect(memory.poisonedPageBytes(GPN)).toEqual(pattern(4));
    expect(pool.refCount[frame]).toBe(1);
    hv.destroyVm(guest.vm);
    expect(pool.refCount[frame]).toBe(1);
    // Fill the pool's free frames (a few big VMs touching every page), then free them: never the retired frame.
    const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'filler' });
    for (let gpn = 0; gpn < vm.memory.pageCount; gpn++) {
      vm.memory.installPage(gpn, (bytes) => void (bytes[0] = 1));
      expect(frameOf(vm.memory, gpn)).not.toBe(frame);
    }
    expect(pool.retiredFrames).toBeGreaterThanOrEqual(1);
  });

  it('fork of a VM with a poisoned page is refused, naming the state', () => {
    const guest = readTwice();
    guest.vm.memory.installPage(GPN, pattern(4));
    guest.vm.memory.poisonPage(GPN);
    expect(() => hv.forkVm(guest.vm, { name: 'child' })).toThrow(/poisoned/);
  });

  it('poisonedPageBytes of a page that is not poisoned is a clear error', () => {
    const guest = readTwice();
    expect(() => guest.vm.memory.poisonedPageBytes(GPN)).toThrow(/not poisoned/);
  });
});

describe('poisoned pages without a service, markPoisoned and settlePage', () => {
  it('a poisoned page with no resolver registered is a machine check, not a host error', () => {
    const guest = readTwice();
    guest.vm.memory.installPage(GPN, pattern(5));
    guest.vm.memory.poisonPage(GPN);
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    expect(guest.vcpu().cause).toBe(Cause.MACHINE_CHECK);
  });

  it('markPoisoned poisons any page (a restore), poisonedPages lists them in order, settlePage runs the resolver as HOST_READ', () => {
    const guest = readTwice();
    const memory = guest.vm.memory;
    memory.markPoisoned(GPN + 2);
    memory.installPage(GPN, pattern(6));
    memory.poisonPage(GPN);
    expect(memory.poisonedPages()).toEqual([GPN, GPN + 2]);
    expect(memory.poisonedPageBytes(GPN + 2)).toEqual(new Uint8Array(4096));
    const seen: number[] = [];
    memory.onAbsent(AbsentState.POISONED, (m, gpn, _state, _payload, access) => {
      seen.push(access);
      if (gpn === GPN) m.installPage(gpn, pattern(6));
    });
    const absentBefore = guest.vm.exits.absent.poisoned ?? 0;
    expect(memory.settlePage(GPN)).toBe(true);
    expect(memory.settlePage(GPN + 2)).toBe(false);
    expect(memory.settlePage(GPN + 3)).toBe(false); // untouched: left alone, no resolver runs
    expect(seen).toEqual([HOST_READ, HOST_READ]);
    expect(guest.vm.exits.absent.poisoned ?? 0).toBe(absentBefore); // not a guest exit
    expect(memory.poisonedPages()).toEqual([GPN + 2]);
    expect(memory.readPhysical(GPA, 4096)).toEqual(pattern(6));
  });
});
