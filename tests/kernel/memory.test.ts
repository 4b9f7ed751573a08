/**
 * Guest-physical memory (SPEC.md §11) and the P2M seam: absent states resolved by the resolvers
 * registered with GuestMemory, machine checks for what a resolver refuses, a host-error stop for
 * a state nobody resolves (the reserved ones), write protection (copy-on-write), access faults
 * outside RAM and the device windows, and the host frame pool (counts, runs, RSS).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Cause, DeviceTable, GuestPhys, Reg } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { processRss } from '../../native/index.ts';
import {
  AbsentState, Access, createHypervisor, KernelError, P2mFlag, PageState, type AbsentStateId, type GuestMemory, type Vm,
} from '../../kernel/index.ts';
import { FramePool } from '../../kernel/memory/frame-pool.ts';
import { P2mEntry } from '../../kernel/memory/p2m.ts';
import { bootGuest, expectHalted, hex, HCALL_PROBE, MiB, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const TRAPPED = 0x77;

function boot(source: string, memoryBytes = MiB): Guest {
  return bootGuest(source, { hv, memoryBytes });
}

/** A program whose traps power off with TRAPPED. */
function withHandler(body: string): string {
  return `
_start: la t0, handler
        csrrw zero, tvec, t0
${body}
        exiti 0
handler: exiti ${TRAPPED}
`;
}

/** Bytes 0..4095 with a recognisable pattern. */
function pattern(seed: number): Uint8Array {
  return Uint8Array.from({ length: 4096 }, (_, i) => (i * 7 + seed) & 0xff);
}

/** The host frame behind a present guest page (the raw entry: kernel tests only). */
function hostFrameOf(memory: GuestMemory, gpn: number): number {
  expect(memory.stateOf(gpn), `guest page ${gpn} is present`).toBe(PageState.PRESENT);
  const entry = memory.entryOf(gpn);
  expect(P2mEntry.isPresent(entry)).toBe(true);
  return P2mEntry.frame(entry);
}

describe('absent P2M states', () => {
  const GPN = 0x80;
  const GPA = GPN * 4096;

  /** Installs a LAZY resolver that fills the page with pattern(payload) and records its calls. */
  function lazyPage(vm: Vm, payload: number): { gpn: number; state: number; access: number }[] {
    const calls: { gpn: number; state: number; access: number }[] = [];
    vm.memory.releasePage(GPN, AbsentState.LAZY, payload);
    expect(vm.memory.stateOf(GPN)).toBe(PageState.LAZY);
    expect(vm.memory.payloadOf(GPN)).toBe(payload);
    vm.memory.onAbsent(AbsentState.LAZY, (memory, gpn, state, statePayload, access) => {
      expect(memory).toBe(vm.memory);
      calls.push({ gpn, state, access });
      memory.installPage(gpn, pattern(statePayload));
    });
    return calls;
  }

  it('a registered handler resolves the first access and the guest reads the bytes it installed', () => {
    const guest = boot(`
        li t1, ${hex(GPA)}
        lw s0, 0(t1)
        lbu s1, 0x123(t1)
        lh s2, 0xffe(t1)
        lw s3, 0x800(t1)              # no second exit
        exiti 0
`);
    const calls = lazyPage(guest.vm, 9);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const bytes = pattern(9);
    const view = new DataView(bytes.buffer);
    const regs = guest.vcpu().regs;
    expect(regs[Reg.S0]! >>> 0).toBe(view.getUint32(0, true));
    expect(regs[Reg.S1]).toBe(bytes[0x123]);
    expect(regs[Reg.S2]).toBe(view.getInt16(0xffe, true));
    expect(regs[Reg.S3]! >>> 0).toBe(view.getUint32(0x800, true));
    expect(calls).toEqual([{ gpn: GPN, state: AbsentState.LAZY, access: Access.READ }]);
    expect(guest.vm.exits.absent.lazy).toBe(1);
    expect(guest.vm.memory.stateOf(GPN)).toBe(PageState.PRESENT);
  });

  it('the handler learns the access kind: a store resolves as a write and lands on the installed page', () => {
    const guest = boot(`
        li t1, ${hex(GPA)}
        li t2, 0x7777
        sw t2, 8(t1)
        exiti 0
`);
    const calls = lazyPage(guest.vm, 3);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(calls).toEqual([{ gpn: GPN, state: AbsentState.LAZY, access: Access.WRITE }]);
    const expected = pattern(3);
    new DataView(expected.buffer).setUint32(8, 0x7777, true);
    expect(Buffer.from(guest.vm.readPhysical(GPA, 4096)).equals(Buffer.from(expected))).toBe(true);
  });

  it('code in an absent page is fetched through the handler (an execute access)', () => {
    const guest = boot(`
        li t1, ${hex(GPA)}
        jalr ra, t1, 0
        exitr s1
`);
    const calls: number[] = [];
    guest.vm.memory.releasePage(GPN, AbsentState.LAZY);
    guest.vm.memory.onAbsent(AbsentState.LAZY, (memory, gpn, _state, _payload, access) => {
      calls.push(access);
      memory.installPage(gpn, (bytes) => {
        new Int32Array(bytes.buffer, bytes.byteOffset, 2).set([encodeInstruction('addi', { rd: Reg.S1, imm: 0x2a }), encodeInstruction('jalr', { rs1: Reg.RA })]);
      });
    });
    expectHalted(guest.run({ maxInstructions: 1000 }), 0x2a);
    expect(calls).toEqual([Access.EXEC]);
  });

  /** Accesses to the page at GPA (t1), each with the offset it touches; s0 holds 0x1234. */
  const ACCESSES: [how: string, body: string, offset: number][] = [
    ['loaded', 'lw s0, 4(t1)', 4],
    ['stored', 'sw s0, 8(t1)', 8],
    ['swapped with an AMO', 'addi t1, t1, 12\n        amoswap s0, s0, (t1)', 12],
  ];
  const REFUSED: [string, AbsentStateId, string, number][] = [
    ...ACCESSES.map(([how, body, offset]): [string, AbsentStateId, string, number] => [`a poisoned page whose resolver refuses, ${how}`, AbsentState.POISONED, body, offset]),
    ['a swapped page whose resolver declines', AbsentState.SWAPPED, 'lw s0, 0(t1)', 0],
  ];
  for (const [name, state, body, offset] of REFUSED) {
    it(`${name}: machine check (cause 18), epc = the instruction, tval = the address, nothing written`, () => {
      const guest = boot(withHandler(`        li t1, ${hex(GPA)}\n        li s0, 0x1234\nsite:   ${body}`));
      guest.vm.memory.releasePage(GPN, state, 5);
      const declined: { gpn: number; state: number; payload: number }[] = [];
      guest.vm.memory.onAbsent(state, (_memory, gpn, absentState, payload) => void declined.push({ gpn, state: absentState, payload }));
      expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
      const vcpu = guest.vcpu();
      expect(vcpu.cause).toBe(Cause.MACHINE_CHECK);
      expect(hex(vcpu.tval)).toBe(hex(GPA + offset));
      const site = guest.sym('site') + (body.startsWith('addi') ? 4 : 0);
      expect(hex(vcpu.epc)).toBe(hex(site));
      expect(vcpu.regs[Reg.S0]).toBe(0x1234);
      expect(declined).toEqual([{ gpn: GPN, state, payload: 5 }]);
      expect(guest.vm.exits.trapToGuest).toBe(1);
      expect(guest.vm.memory.stateOf(GPN)).toBe(state);
      expect(guest.vm.memory.payloadOf(GPN)).toBe(5);
      expect(() => guest.vm.readPhysical(GPA, 4)).toThrow(KernelError);
    });
  }

  for (const [how, body, offset] of ACCESSES) {
    it(`a poisoned page with no resolver, ${how}: a machine check (what the error made it), not a host error; nothing written`, () => {
      const guest = boot(withHandler(`        li t1, ${hex(GPA)}\n        li s0, 0x1234\nsite:   ${body}`));
      guest.vm.memory.releasePage(GPN, AbsentState.POISONED, 5);
      expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
      const vcpu = guest.vcpu();
      expect(vcpu.cause).toBe(Cause.MACHINE_CHECK);
      expect(hex(vcpu.tval)).toBe(hex(GPA + offset));
      expect(hex(vcpu.epc)).toBe(hex(guest.sym('site') + (body.startsWith('addi') ? 4 : 0))); // at the access
      expect(guest.vm.exits.trapToGuest).toBe(1);
      expect(vcpu.regs[Reg.S0]).toBe(0x1234);
      expect(guest.vm.exits.absent.poisoned).toBe(1);
      expect(guest.vm.memory.stateOf(GPN)).toBe(PageState.POISONED);
      expect(guest.vm.memory.payloadOf(GPN)).toBe(5);
      expect(() => guest.vm.readPhysical(GPA + offset, 4)).toThrow(KernelError);
    });
  }

  it('a swapped page with no resolver stops the VM with a host error naming the state (not a reserved one)', () => {
    const guest = boot(withHandler(`        li t1, ${hex(GPA)}\n        lw s0, 0(t1)`));
    guest.vm.memory.releasePage(GPN, AbsentState.SWAPPED, 3);
    const result = guest.run({ maxInstructions: 1000 });
    if (result.reason.kind !== 'host-error') expect.fail(`expected a host error, got ${JSON.stringify(result.reason)}`);
    expect(result.reason.message).toMatch(/'swapped'/);
    expect(result.reason.message).not.toMatch(/reserved/);
    expect(guest.vm.exits.trapToGuest).toBe(0);
    expect(guest.vm.memory.stateOf(GPN)).toBe(PageState.SWAPPED);
  });

  it('a fetch from a poisoned page whose resolver refuses is a machine check with epc = tval = the pc', () => {
    const guest = boot(withHandler(`        li t1, ${hex(GPA + 0x40)}\n        jalr ra, t1, 0`));
    guest.vm.memory.releasePage(GPN, AbsentState.POISONED);
    const accesses: number[] = [];
    guest.vm.memory.onAbsent(AbsentState.POISONED, (_memory, _gpn, _state, _payload, access) => void accesses.push(access));
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    expect(accesses).toEqual([Access.EXEC]);
    expect(guest.vcpu().cause).toBe(Cause.MACHINE_CHECK);
    expect(hex(guest.vcpu().epc)).toBe(hex(GPA + 0x40));
    expect(hex(guest.vcpu().tval)).toBe(hex(GPA + 0x40));
  });

  it('a fetch from a poisoned page with no resolver is a machine check at that pc', () => {
    const guest = boot(withHandler(`        li t1, ${hex(GPA + 0x40)}\n        jalr ra, t1, 0`));
    guest.vm.memory.releasePage(GPN, AbsentState.POISONED);
    expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
    expect(guest.vcpu().cause).toBe(Cause.MACHINE_CHECK);
    expect(hex(guest.vcpu().epc)).toBe(hex(GPA + 0x40));
    expect(guest.vm.exits.trapToGuest).toBe(1);
  });

  it('a resolver that throws stops the VM with a host error naming its message; the guest takes no trap', () => {
    const guest = boot(withHandler(`        li t1, ${hex(GPA)}\n        lw s0, 0(t1)`));
    guest.vm.memory.releasePage(GPN, AbsentState.LAZY, 1);
    guest.vm.memory.onAbsent(AbsentState.LAZY, () => {
      throw new Error('checkpoint block 1 is unreadable');
    });
    const result = guest.run({ maxInstructions: 1000 });
    if (result.reason.kind !== 'host-error') expect.fail(`expected a host error, got ${JSON.stringify(result.reason)}`);
    expect(result.reason.message).toMatch(/checkpoint block 1 is unreadable/);
    expect(guest.vm.exits.trapToGuest).toBe(0);
    expect(guest.vm.memory.stateOf(GPN)).toBe(PageState.LAZY);
  });
});

describe('write protection (copy-on-write)', () => {
  const GPN = 0x90;
  const GPA = GPN * 4096;
  /** Another page of the same VM that shares GPN's frame (as after a fork or content sharing). */
  const TWIN = 0x91;

  it('a write to a protected page exits to the resolver, which moves it to a private copy; reads do not exit', () => {
    const guest = boot(`
        li t1, ${hex(GPA)}
        li t2, 1
        sw t2, 0(t1)                  # fills a write translation for the page
        li a0, HCALL_PROBE            # the host shares the frame (both pages copy-on-write)
        hcall
        lw s0, 0(t1)                  # reading a shared page needs no copy
        li t2, 2
        sw t2, 0(t1)                  # must exit despite the cached write translation
        lw s1, 0(t1)
        sw t2, 4(t1)                  # the copy is private now: no further exit
        exiti 0
`);
    const vm = guest.vm;
    let sharedFrame = -1;
    vm.onHypercall(HCALL_PROBE, (vcpu) => {
      vm.memory.sharePage(GPN, vm.memory, TWIN); // a second owner of the frame
      sharedFrame = hostFrameOf(vm.memory, GPN);
      expect(hostFrameOf(vm.memory, TWIN)).toBe(sharedFrame);
      expect(vm.memory.flagsOf(GPN) & P2mFlag.COPY_ON_WRITE).toBe(P2mFlag.COPY_ON_WRITE);
      vcpu.regs[Reg.A0] = 0;
    });
    const copies: number[] = [];
    vm.memory.onWriteProtected(P2mFlag.COPY_ON_WRITE, (memory, gpn, flag) => {
      expect(flag).toBe(P2mFlag.COPY_ON_WRITE);
      memory.installPage(gpn, memory.pageBytes(gpn)); // a private copy, unprotected
      copies.push(hostFrameOf(memory, gpn));
    });
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(copies).toHaveLength(1);
    expect(copies[0]).not.toBe(sharedFrame);
    expect(vm.exits.writeProtect['copy-on-write']).toBe(1);
    const regs = guest.vcpu().regs;
    expect([regs[Reg.S0], regs[Reg.S1]]).toEqual([1, 2]);
    // The shared frame keeps the old contents (the twin still reads them); the guest's page is the copy.
    expect(new Int32Array(vm.pool.i32.buffer, sharedFrame * 4096, 2)[0]).toBe(1);
    expect(guest.words(TWIN * 4096, 2)).toEqual([1, 0]);
    expect(hostFrameOf(vm.memory, GPN)).toBe(copies[0]);
    expect(hostFrameOf(vm.memory, TWIN)).toBe(sharedFrame);
    expect(vm.memory.flagsOf(GPN) & P2mFlag.COPY_ON_WRITE).toBe(0);
    expect(guest.words(GPA, 2)).toEqual([2, 2]);
    expect(vm.pool.refCount[sharedFrame]).toBe(1); // only the twin holds it now
  });

  it('a page protected by a flag nobody handles stops the VM with a host error instead of writing', () => {
    const guest = boot(`
        li t1, ${hex(GPA)}
        lw t2, 0(t1)
        li a0, HCALL_PROBE
        hcall
        li t2, 5
        sw t2, 0(t1)
        exiti 0
`);
    guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
      guest.vm.memory.protect(GPN, P2mFlag.WATCH); // no service resolves watch yet
      vcpu.regs[Reg.A0] = 0;
    });
    const result = guest.run({ maxInstructions: 1000 });
    expect(result.reason.kind).toBe('host-error');
    if (result.reason.kind === 'host-error') {
      expect(result.reason.message).toMatch(/watch/);
      expect(result.reason.message).toMatch(/reserved/);
    }
    expect(guest.vm.exits.writeProtect.watch).toBe(1);
    expect(guest.word(GPA)).toBe(0);
  });
});

describe('guest-physical addresses outside RAM and the device windows (SPEC.md §11.1, §11.3)', () => {
  const RAM = MiB;
  const DEVICE = GuestPhys.MMIO_BASE;
  const FAULTS: [string, string, number, number][] = [
    ['a load just past RAM', `li t1, ${hex(RAM)}\n        lw s0, 0(t1)`, Cause.LOAD_ACCESS_FAULT, RAM],
    ['a byte load just past RAM', `li t1, ${hex(RAM + 3)}\n        lb s0, 0(t1)`, Cause.LOAD_ACCESS_FAULT, RAM + 3],
    ['a store just past RAM', `li t1, ${hex(RAM)}\n        sw s0, 4(t1)`, Cause.STORE_ACCESS_FAULT, RAM + 4],
    ['an AMO past RAM', `li t1, ${hex(RAM + 8)}\n        amoadd s0, s0, (t1)`, Cause.STORE_ACCESS_FAULT, RAM + 8],
    ['a fetch past RAM', `li t1, ${hex(RAM)}\n        jalr ra, t1, 0`, Cause.INSN_ACCESS_FAULT, RAM],
    ['a load in the gap below the device table', 'li t1, 0xe0000000\n        lw s0, 0(t1)', Cause.LOAD_ACCESS_FAULT, 0xe000_0000],
    ['a load after the last device window', `li t1, ${hex(DEVICE + 0x1000)}\n        lw s0, 0(t1)`, Cause.LOAD_ACCESS_FAULT, DEVICE + 0x1000],
    ['a load at the top of the address space', 'li t1, -4\n        lw s0, 0(t1)', Cause.LOAD_ACCESS_FAULT, 0xffff_fffc],
    ['a byte load from the device table', `li t1, ${hex(GuestPhys.DEVICE_TABLE)}\n        lbu s0, 0(t1)`, Cause.LOAD_ACCESS_FAULT, GuestPhys.DEVICE_TABLE],
    ['a halfword load from a device window', `li t1, ${hex(DEVICE)}\n        lhu s0, 4(t1)`, Cause.LOAD_ACCESS_FAULT, DEVICE + 4],
    ['a store to the device table', `li t1, ${hex(GuestPhys.DEVICE_TABLE)}\n        sw s0, 0(t1)`, Cause.STORE_ACCESS_FAULT, GuestPhys.DEVICE_TABLE],
    ['a byte store to a device window', `li t1, ${hex(DEVICE)}\n        sb s0, 0(t1)`, Cause.STORE_ACCESS_FAULT, DEVICE],
    ['an AMO to a device window', `li t1, ${hex(DEVICE)}\n        amoor s0, s0, (t1)`, Cause.STORE_ACCESS_FAULT, DEVICE],
    ['a fetch from the device table', `li t1, ${hex(GuestPhys.DEVICE_TABLE)}\n        jalr ra, t1, 0`, Cause.INSN_ACCESS_FAULT, GuestPhys.DEVICE_TABLE],
    ['a fetch from a device window', `li t1, ${hex(DEVICE)}\n        jalr ra, t1, 0`, Cause.INSN_ACCESS_FAULT, DEVICE],
    ['a store the device refuses', `li t1, ${hex(DEVICE)}\n        sw s0, 8(t1)`, Cause.STORE_ACCESS_FAULT, DEVICE + 8],
  ];
  for (const [name, body, cause, tval] of FAULTS) {
    it(`${name} is an access fault (cause ${cause}) with tval = the address, and no device sees it`, () => {
      const guest = boot(withHandler(`        li s0, 0x55\n        ${body}`), RAM);
      const accesses: string[] = [];
      const base = guest.vm.attachDevice({ type: 7, name: 'probe' }, {
        read: (_vcpu, offset) => {
          accesses.push(`read ${offset}`);
          return 0x1234;
        },
        write: (_vcpu, offset) => {
          accesses.push(`write ${offset}`);
          return offset !== 8;
        },
      });
      expect(base).toBe(DEVICE);
      expectHalted(guest.run({ maxInstructions: 1000 }), TRAPPED);
      expect(guest.vcpu().cause).toBe(cause);
      expect(hex(guest.vcpu().tval)).toBe(hex(tval));
      expect(guest.vcpu().regs[Reg.S0]).toBe(0x55);
      // Only the refused store reached the device (its refusal is what makes it fault).
      expect(accesses).toEqual(name === 'a store the device refuses' ? ['write 8'] : []);
    });
  }

  it('word loads and stores reach RAM up to its last word, the device table and device registers', () => {
    const guest = boot(`
        li t1, ${hex(RAM - 4)}
        li t2, 0x600d
        sw t2, 0(t1)
        lw s0, 0(t1)
        li t1, ${hex(GuestPhys.DEVICE_TABLE)}
        lw s1, 0(t1)
        lw s2, 20(t1)                 # first entry: base of the device window
        li t1, ${hex(DEVICE)}
        sw t2, 12(t1)
        lw s3, 12(t1)
        exiti 0
`, RAM);
    const registers = new Map<number, number>();
    guest.vm.attachDevice({ type: 7, name: 'scratch' }, {
      read: (_vcpu, offset) => registers.get(offset) ?? 0,
      write: (_vcpu, offset, value) => {
        registers.set(offset, value);
        return true;
      },
    });
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect([regs[Reg.S0], regs[Reg.S1]! >>> 0, regs[Reg.S2]! >>> 0, regs[Reg.S3]]).toEqual([0x600d, DeviceTable.MAGIC, DEVICE, 0x600d]);
  });
});

describe('the host frame pool', () => {
  it('counts frames as guests touch pages and returns them all when the VM is destroyed', () => {
    const own = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const before = own.pool.stats();
    expect(before.usedFrames).toBe(0);
    const guest = bootGuest(`
        li t1, 0x10000
        li t3, 100
1:      sw t3, 0(t1)
        addi t1, t1, 0x7fc
        addi t1, t1, 0x804            # next page
        addi t3, t3, -1
        bne t3, zero, 1b
        exiti 0
`, { hv: own, memoryBytes: 2 * MiB });
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    const touched = guest.vm.memory.census().present;
    expect(touched).toBeGreaterThanOrEqual(101); // 100 data pages + the code page
    expect(guest.vm.memory.presentPages).toBe(touched);
    expect(own.pool.stats().usedFrames).toBe(touched);
    own.destroyVm(guest.vm);
    const after = own.pool.stats();
    expect(after.usedFrames).toBe(0);
    expect(after.framesReleased - before.framesReleased).toBe(touched);
    expect(after.wholeFreeRuns).toBe(before.wholeFreeRuns);
  });

  it('hands out 4 MiB runs aligned to 1024 frames, and small frames do not break whole runs', () => {
    const own = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const pool = own.pool;
    const small = Array.from({ length: 10 }, () => pool.allocFrame());
    expect(pool.stats().wholeFreeRuns).toBe(3);
    const runs = [pool.allocRun(), pool.allocRun(), pool.allocRun()];
    for (const run of runs) {
      expect(run % 1024).toBe(0);
      expect(FramePool.isRunAligned(run)).toBe(true);
      expect(small.every((frame) => frame < run || frame >= run + 1024)).toBe(true);
    }
    expect(new Set(runs).size).toBe(3);
    expect(pool.allocRun()).toBe(-1);
    expect(pool.stats().usedFrames).toBe(10 + 3 * 1024);
    for (let i = 0; i < 1024; i++) pool.release(runs[1]! + i);
    expect(pool.stats().wholeFreeRuns).toBe(1);
    for (const frame of small) pool.release(frame);
    expect(pool.stats().usedFrames).toBe(2 * 1024);
    expect(() => pool.release(small[0]!)).toThrow(KernelError);
  });

  it('a frame one VM wrote and freed reads as zero in the next VM, and VMs never see each other', () => {
    const own = createHypervisor({ hostMemoryBytes: 8 * MiB });
    const writer = bootGuest(`
        li t1, 0x20000
        li t2, -1
        li t3, 1024
1:      sw t2, 0(t1)
        addi t1, t1, 4
        addi t3, t3, -1
        bne t3, zero, 1b
        exiti 0
`, { hv: own, memoryBytes: MiB });
    const reader = bootGuest(`
        li t1, 0x20000
        li t3, 1024
        li s0, 0
1:      lw t2, 0(t1)
        or s0, s0, t2
        addi t1, t1, 4
        addi t3, t3, -1
        bne t3, zero, 1b
        exitr s0
`, { hv: own, memoryBytes: MiB });
    expectHalted(writer.run({ maxInstructions: 100_000 }), 0);
    expectHalted(reader.run({ maxInstructions: 100_000 }), 0); // its own page 0x20 is fresh
    const writerFrame = hostFrameOf(writer.vm.memory, 0x20);
    own.destroyVm(writer.vm);
    const next = bootGuest(`
        li t1, 0x20000
        lw s0, 0(t1)
        exitr s0
`, { hv: own, memoryBytes: MiB });
    expectHalted(next.run({ maxInstructions: 1000 }), 0);
    // The freed frame was reused by now or is still free; either way it reads zero.
    expect(own.pool.u8.subarray(writerFrame * 4096, writerFrame * 4096 + 4096).every((b) => b === 0)).toBe(true);
  });

  it('running out of host frames stops the VM with a host error, not a crash', () => {
    const own = createHypervisor({ hostMemoryBytes: 4 * MiB });
    const guest = bootGuest(`
        li t1, 0
        lui t3, 0x800                 # 8 MiB of guest RAM, more than the pool holds
1:      sw t3, 0(t1)
        addi t1, t1, 0x7fc
        addi t1, t1, 0x804
        bltu t1, t3, 1b
        exiti 0
`, { hv: own, memoryBytes: 8 * MiB });
    const result = guest.run({ maxInstructions: 1_000_000 });
    expect(result.reason.kind).toBe('host-error');
    if (result.reason.kind === 'host-error') expect(result.reason.message).toMatch(/out of host memory/);
    expect(own.pool.stats().freeFrames).toBe(0);
    own.destroyVm(guest.vm);
    expect(own.pool.stats().usedFrames).toBe(0);
  });

  it('RSS grows when a guest touches 64 MiB and drops again after destroyVm', () => {
    const own = createHypervisor({ hostMemoryBytes: 128 * MiB });
    const guest = bootGuest(`
        lui t1, 0x10                  # from 64 KiB
        lui t3, 0x4000                # to 64 MiB
1:      sw t3, 0(t1)
        addi t1, t1, 0x7fc
        addi t1, t1, 0x804
        bltu t1, t3, 1b
        exiti 0
`, { hv: own, memoryBytes: 64 * MiB });
    const before = processRss();
    expectHalted(guest.run({ maxInstructions: 1_000_000 }), 0);
    const touched = processRss();
    expect(own.pool.stats().usedFrames).toBeGreaterThanOrEqual(16_368);
    own.destroyVm(guest.vm);
    const after = processRss();
    expect(touched - before).toBeGreaterThan(56 * MiB);
    expect(touched - after).toBeGreaterThan(56 * MiB);
  });
});
