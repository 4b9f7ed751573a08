/**
 * GuestMemory (kernel/memory/guest-memory.ts), the only way to reach a VM's guest-physical
 * memory, exercised on real VMs running real guests: reading and writing, installing and
 * releasing pages (frames really go back to the pool and RSS drops), sharing a page copy-on-write
 * within and across VMs, moving a frame between VMs, protection with a registered resolver,
 * iteration and counts, argument checks, and fork: parent and child never see each other's
 * writes, through chains of forks and destroyed parents, checked against a plain model of each
 * VM's pages by a property test that also proves no frame is leaked or freed twice.
 *
 * The guests are "workers": a program that pauses at a PROBE hypercall and, when resumed, fills
 * or sums the page the host named, so guest stores and loads (through TLB entries cached before
 * the host's change) meet every host-side change.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { Hcall, Pte, Reg } from '../../guest-isa/arch.ts';
import { processRss } from '../../native/index.ts';
import {
  AbsentState, createHypervisor, KernelError, P2mFlag, PageState, type GuestMemory, type Hypervisor, type Vm,
} from '../../kernel/index.ts';
import { P2mEntry } from '../../kernel/memory/p2m.ts';
import { bootGuest, HCALL_PROBE, hex, MiB, pte } from './helpers.ts';
import { bootPaged, fillFrame, FIRST_TABLE, FRAMES, MMU_MODES, VA } from './shadow-helpers.ts';

const PAGE = 4096;
const KiB = 1024;
/** Worker VMs: 64 KiB, the program in the first pages, data pages from FIRST_DATA. */
const WORKER_BYTES = 64 * KiB;
const WORKER_PAGES = WORKER_BYTES / PAGE;
const FIRST_DATA = 8;

const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
const used = (on: Hypervisor = hv): number => on.pool.stats().usedFrames;
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
  // Every test gives back every frame it took: none leaked, none freed twice (that throws).
  expect(used()).toBe(0);
});

// -------------------------------------------------------------------------------------------------
// Page contents

/** A page whose 32-bit words are value + i (what the worker's fill writes). */
function pagePattern(value: number): Uint8Array {
  const words = new Uint32Array(PAGE / 4);
  for (let i = 0; i < words.length; i++) words[i] = (value + i) >>> 0;
  return new Uint8Array(words.buffer);
}

/** The sum of pagePattern(value)'s words, mod 2^32 (what the worker's sum returns). */
function patternSum(value: number): number {
  let sum = 0;
  for (let i = 0; i < PAGE / 4; i++) sum = (sum + value + i) >>> 0;
  return sum;
}

/** What a model page holds: null = untouched (absent), 0 = a present zero page, else pagePattern(value). */
type Contents = number | null;

function bytesOf(contents: number): Uint8Array {
  return contents === 0 ? new Uint8Array(PAGE) : pagePattern(contents);
}

/** A readable name for a page's bytes, so a failure says what was found. */
function describeBytes(bytes: Uint8Array | null): string {
  if (bytes === null) return 'absent';
  if (bytes.every((b) => b === 0)) return 'zeros';
  const first = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
  return Buffer.compare(bytes, pagePattern(first)) === 0 ? `pattern ${hex(first)}` : `other bytes (word 0 ${hex(first)})`;
}

function describeContents(contents: Contents): string {
  return contents === null ? 'absent' : describeBytes(bytesOf(contents));
}

/** Checks a VM's pages against a model, without resolving anything (no page is touched). */
function expectPages(vm: Vm, pages: ReadonlyMap<number, Contents>, label = vm.name): void {
  for (const [gpn, contents] of pages) {
    const state = vm.memory.stateOf(gpn);
    expect(state === PageState.PRESENT ? 'present' : 'absent', `${label}: page ${gpn} state`).toBe(contents === null ? 'absent' : 'present');
    if (contents === null) expect(state, `${label}: page ${gpn}`).toBe(PageState.UNTOUCHED);
    expect(describeBytes(vm.memory.presentPageBytes(gpn)), `${label}: page ${gpn}`).toBe(describeContents(contents));
  }
}

/** The counts agree with each other and with a pass over the map. */
function expectConsistentCounts(memory: GuestMemory): void {
  const census = memory.census();
  expect(memory.presentPages, `${memory.name}: presentPages`).toBe(census.present);
  let present = 0;
  memory.forEachPage(PageState.PRESENT, () => present++);
  expect(present).toBe(census.present);
  let absent = 0;
  for (const state of Object.values(AbsentState)) {
    const name = ['untouched', 'lazy', 'swapped', 'ballooned', 'shared', 'poisoned', 'remote'][state]!;
    expect(memory.countInState(state), `${memory.name}: pages ${name}`).toBe(census.absent[name] ?? 0);
    absent += memory.countInState(state);
  }
  expect(present + absent).toBe(memory.pageCount);
}

/** Host frames behind the present pages of `vms` (the raw entries: kernel tests only). */
function framesInUse(vms: readonly Vm[]): Set<number> {
  const frames = new Set<number>();
  for (const vm of vms) {
    vm.memory.forEachPage(PageState.PRESENT, (gpn) => frames.add(P2mEntry.frame(vm.memory.entryOf(gpn))));
  }
  return frames;
}

// -------------------------------------------------------------------------------------------------
// Worker guests

const CMD_FILL = 1;
const CMD_SUM = 2;

/** Pauses at PROBE; resumed with a1 = command, a2 = page address, a3 = value, it fills or sums the page. */
const WORKER = `
_start:
wait:   li a0, HCALL_PROBE
        hcall                         # the host pauses the VM here
        li t0, ${CMD_FILL}
        beq a1, t0, fill
        li t0, ${CMD_SUM}
        beq a1, t0, sum
        j wait
fill:   li t1, 0                      # word i = a3 + i
        li t2, 1024
        addi t3, a2, 0
1:      add s0, a3, t1
        sw s0, 0(t3)
        addi t3, t3, 4
        addi t1, t1, 1
        bne t1, t2, 1b
        j wait
sum:    li a3, 0                      # a3 = sum of the page's words
        li t1, 1024
        addi t3, a2, 0
2:      lw s0, 0(t3)
        add a3, a3, s0
        addi t3, t3, 4
        addi t1, t1, -1
        bnez t1, 2b
        j wait
`;

/** Makes a worker VM (booted, or forked from one) pause at each PROBE and power off on EXIT. */
function obeyProbes(vm: Vm): void {
  vm.onHypercall(HCALL_PROBE, () => vm.pause('waiting for a command'));
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
}

/** Boots a worker and runs it to its first pause. */
function bootWorker(on: Hypervisor = hv, name?: string): Vm {
  const guest = bootGuest(WORKER, { hv: on, memoryBytes: WORKER_BYTES, name });
  for (const segment of guest.image.segments) expect(segment.gpa + segment.memSize).toBeLessThanOrEqual(FIRST_DATA * PAGE);
  obeyProbes(guest.vm);
  const [result] = on.run({ maxInstructions: 1000 }, [guest.vm]);
  expect(result!.reason.kind).toBe('paused');
  return guest.vm;
}

/** Forks a worker; the child obeys probes too. */
function forkWorker(parent: Vm, on: Hypervisor = hv): Vm {
  const child = on.forkVm(parent);
  obeyProbes(child);
  return child;
}

function command(vm: Vm, cmd: number, gpn: number, value: number, on: Hypervisor): number {
  const vcpu = vm.vcpus[0]!;
  vcpu.regs[Reg.A1] = cmd;
  vcpu.regs[Reg.A2] = gpn * PAGE;
  vcpu.regs[Reg.A3] = value | 0;
  vm.resume();
  const [result] = on.run({ maxInstructions: 50_000 }, [vm]);
  if (result!.reason.kind !== 'paused') expect.fail(`${vm.name}: expected the worker to pause again, got ${JSON.stringify(result!.reason)}`);
  return vcpu.regs[Reg.A3]! >>> 0;
}

/** The guest fills page gpn with pagePattern(value). */
function guestFill(vm: Vm, gpn: number, value: number, on: Hypervisor = hv): void {
  command(vm, CMD_FILL, gpn, value, on);
}

/** The guest sums page gpn's words. */
function guestSum(vm: Vm, gpn: number, on: Hypervisor = hv): number {
  return command(vm, CMD_SUM, gpn, 0, on);
}

function expectKernelError(fn: () => unknown, code: string, message: RegExp): void {
  let error: unknown = null;
  try {
    fn();
  } catch (caught) {
    error = caught;
  }
  if (!(error instanceof KernelError)) expect.fail(`expected a KernelError ${code}, got ${String(error)}`);
  expect(error.code).toBe(code);
  expect(error.message).toMatch(message);
}

// -------------------------------------------------------------------------------------------------

describe('readPhysical, writePhysical and pageBytes', () => {
  it('bytes written across a page boundary read back from both pages; untouched pages read as zero pages', () => {
    const vm = hv.createVm({ memoryBytes: WORKER_BYTES, name: 'rw' });
    expect(vm.memory.stateOf(3)).toBe(PageState.UNTOUCHED);
    expect(vm.memory.presentPageBytes(3)).toBeNull();
    // Reading an untouched page gives zeros without allocating a frame for it.
    expect(vm.memory.readPhysical(3 * PAGE + 100, 16)).toEqual(new Uint8Array(16));
    expect(vm.memory.pageBytes(3)).toEqual(new Uint8Array(PAGE));
    expect(vm.memory.stateOf(3)).toBe(PageState.UNTOUCHED);
    expect(vm.memory.isZeroPage(3)).toBe(true);
    expect(used()).toBe(0);
    vm.memory.writePhysical(3 * PAGE, new Uint8Array(1)); // a write does make it present
    expect(vm.memory.stateOf(3)).toBe(PageState.PRESENT);
    expect(used()).toBe(1);

    const bytes = Uint8Array.from({ length: 10 }, (_, i) => 0xa0 + i);
    vm.memory.writePhysical(5 * PAGE - 5, bytes);
    expect(vm.memory.readPhysical(5 * PAGE - 8, 16)).toEqual(Uint8Array.from([0, 0, 0, ...bytes, 0, 0, 0]));
    expect(vm.memory.pageBytes(4).subarray(PAGE - 5)).toEqual(bytes.subarray(0, 5));
    expect(vm.memory.pageBytes(5).subarray(0, 6)).toEqual(Uint8Array.from([...bytes.subarray(5), 0]));
    expect(vm.memory.isZeroPage(4)).toBe(false);
    expect(used()).toBe(3);

    // readPhysical returns a copy; the length-0 forms are fine; the whole RAM reads in one call.
    const copy = vm.memory.readPhysical(5 * PAGE, 4);
    copy.fill(0xff);
    expect(vm.memory.readPhysical(5 * PAGE, 4)).toEqual(bytes.subarray(5, 9));
    expect(vm.memory.readPhysical(WORKER_BYTES, 0)).toEqual(new Uint8Array(0));
    vm.memory.writePhysical(0, new Uint8Array(0));
    expect(vm.memory.readPhysical(0, WORKER_BYTES)).toHaveLength(WORKER_BYTES);
    expectConsistentCounts(vm.memory);
  });

  it('the host sees what the guest stored and the guest loads what the host wrote', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 0x1234_0000);
    expect(describeBytes(vm.memory.readPhysical(9 * PAGE, PAGE))).toBe('pattern 0x12340000');
    expect(describeBytes(vm.memory.pageBytes(9))).toBe('pattern 0x12340000');
    vm.memory.writePhysical(9 * PAGE, pagePattern(0x55_0000)); // over a page the guest has a write translation for
    expect(guestSum(vm, 9)).toBe(patternSum(0x55_0000));
    vm.memory.writePhysical(10 * PAGE + 8, Uint8Array.from([1, 0, 0, 0])); // the rest of the page is zero
    expect(guestSum(vm, 10)).toBe(1);
  });

  it('pageBytes is a view of the frame: it shows a later guest store to the same page', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 7);
    const view = vm.memory.pageBytes(9);
    guestFill(vm, 9, 0x77_0000);
    expect(describeBytes(view)).toBe('pattern 0x00770000');
  });
});

// -------------------------------------------------------------------------------------------------

describe('copyPresentPages and statesOf (bulk reads for a migration)', () => {
  it('copies present pages one after another, in list order, whether their frames are consecutive or not, and stops at the first absent page', () => {
    const vm = hv.createVm({ name: 'bulk', memoryBytes: WORKER_BYTES });
    // Pages 2..5 on one contiguous run of frames, 9 and 6 each on its own frame, 7 untouched.
    expect(vm.memory.installPagesInPlace([2, 3, 4, 5], [1, 1, 1, 1], 4, (frames) => {
      for (let i = 0; i < 4; i++) frames.set(pagePattern(0x100 * (2 + i)), i * PAGE);
    })).toBe(true);
    vm.memory.installPage(9, pagePattern(0x900));
    vm.memory.installPage(6, pagePattern(0x600));
    const dest = new Uint8Array(9 * PAGE).fill(0xee);
    const list = [2, 3, 9, 4, 5, 6, 7, 8];
    expect(vm.memory.copyPresentPages(list, 0, 8, dest, PAGE)).toBe(6); // stops at 7
    [2, 3, 9, 4, 5, 6].forEach((gpn, i) => expect(describeBytes(dest.subarray(PAGE + i * PAGE, PAGE + (i + 1) * PAGE)), `slot ${i}`).toBe(describeBytes(pagePattern(0x100 * gpn))));
    expect(dest.subarray(0, PAGE).every((b) => b === 0xee)).toBe(true); // nothing before destOffset
    expect(dest.subarray(7 * PAGE).every((b) => b === 0xee)).toBe(true); // nothing past the pages copied
    expect(vm.memory.copyPresentPages(list, 6, 2, dest, 0)).toBe(0); // an untouched page first
    expect(vm.memory.copyPresentPages(list, 4, 1, dest, 0)).toBe(1);
    expect(describeBytes(dest.subarray(0, PAGE))).toBe(describeBytes(pagePattern(0x500)));
    // A guest store after the copy does not reach it: the bytes were copied, not viewed.
    vm.memory.writePhysical((5 * PAGE) as never, new Uint8Array([1, 2, 3, 4]));
    expect(describeBytes(dest.subarray(0, PAGE))).toBe(describeBytes(pagePattern(0x500)));
    expect(vm.memory.copyPresentPages(new Int32Array([5]), 0, 1, dest, 0)).toBe(1);
    expect([...dest.subarray(0, 4)]).toEqual([1, 2, 3, 4]);
  });

  it('refuses a destination too small, a slice outside the list and a page outside RAM', () => {
    const vm = hv.createVm({ name: 'bulk', memoryBytes: WORKER_BYTES });
    vm.memory.installPage(1, pagePattern(1));
    const codeOf = (fn: () => unknown): string | null => {
      try {
        fn();
        return null;
      } catch (error) {
        expect(error).toBeInstanceOf(KernelError);
        return (error as KernelError).code;
      }
    };
    expect(codeOf(() => vm.memory.copyPresentPages([1, 1], 0, 2, new Uint8Array(2 * PAGE - 1), 0))).toBe('BV_BAD_RANGE');
    expect(codeOf(() => vm.memory.copyPresentPages([1], 0, 1, new Uint8Array(PAGE), 1))).toBe('BV_BAD_RANGE');
    expect(codeOf(() => vm.memory.copyPresentPages([1], 1, 1, new Uint8Array(PAGE), 0))).toBe('BV_BAD_GPN');
    expect(codeOf(() => vm.memory.copyPresentPages([WORKER_PAGES], 0, 1, new Uint8Array(PAGE), 0))).toBe('BV_BAD_GPN');
    expect(codeOf(() => vm.memory.statesOf(WORKER_PAGES - 1, 2, new Uint8Array(2)))).toBe('BV_BAD_GPN');
    expect(codeOf(() => vm.memory.statesOf(0, 3, new Uint8Array(2)))).toBe('BV_BAD_RANGE');
  });

  it('emptiedCount counts pages going into a state without contents, and nothing else', () => {
    const vm = hv.createVm({ name: 'bulk', memoryBytes: WORKER_BYTES });
    const memory = vm.memory;
    const counted = (fn: () => void): number => {
      const before = memory.emptiedCount;
      fn();
      return memory.emptiedCount - before;
    };
    expect(counted(() => memory.installPage(3, pagePattern(3)))).toBe(0);
    expect(counted(() => memory.installPage(3, pagePattern(4)))).toBe(0); // present to present
    expect(counted(() => memory.releasePage(3, AbsentState.SWAPPED, 5))).toBe(0); // its contents are kept
    expect(counted(() => memory.releasePage(3))).toBe(1); // swapped to untouched
    expect(counted(() => memory.releasePage(3))).toBe(0); // untouched already
    memory.installPage(4, pagePattern(4));
    memory.installPage(5, pagePattern(5));
    expect(counted(() => memory.releasePage(4, AbsentState.BALLOONED))).toBe(1);
    expect(counted(() => memory.releasePage(5, AbsentState.POISONED))).toBe(1);
    memory.installPage(6, pagePattern(6));
    memory.installPage(7, pagePattern(7));
    expect(counted(() => memory.releasePages([6, 7, 8]))).toBe(2); // 8 was untouched
    memory.installPage(9, pagePattern(9));
    expect(counted(() => vm.reset())).toBeGreaterThan(0); // a reset empties everything
  });

  it('statesOf gives what stateOf gives, page by page', () => {
    const vm = hv.createVm({ name: 'bulk', memoryBytes: WORKER_BYTES });
    vm.memory.installPage(3, pagePattern(3));
    vm.memory.installPage(4, pagePattern(4));
    vm.memory.installPage(5, pagePattern(5));
    vm.memory.releasePage(4, AbsentState.BALLOONED);
    vm.memory.releasePage(5, AbsentState.SWAPPED, 77);
    const states = new Uint8Array(WORKER_PAGES).fill(0xff);
    vm.memory.statesOf(0, WORKER_PAGES, states);
    expect([...states]).toEqual(Array.from({ length: WORKER_PAGES }, (_, gpn) => vm.memory.stateOf(gpn)));
    expect(states[3]).toBe(PageState.PRESENT);
    expect(states[4]).toBe(PageState.BALLOONED);
    expect(states[5]).toBe(PageState.SWAPPED);
    expect(states[6]).toBe(PageState.UNTOUCHED);
    const some = new Uint8Array(2);
    vm.memory.statesOf(3, 2, some);
    expect([...some]).toEqual([PageState.PRESENT, PageState.BALLOONED]);
  });
});

describe('installPage and releasePage', () => {
  it('installs a copy of the bytes given, or what a filler writes into a zeroed frame', () => {
    const vm = bootWorker();
    const base = used();
    const source = pagePattern(0x10_0000);
    vm.memory.installPage(9, source);
    source.fill(0); // the page holds a copy
    expect(vm.memory.stateOf(9)).toBe(PageState.PRESENT);
    expect(guestSum(vm, 9)).toBe(patternSum(0x10_0000));

    const calls: number[] = [];
    vm.memory.installPage(10, (frame) => {
      calls.push(frame.length);
      expect(frame.every((b) => b === 0)).toBe(true);
      frame.set(pagePattern(0x20_0000));
    });
    expect(calls).toEqual([PAGE]);
    expect(guestSum(vm, 10)).toBe(patternSum(0x20_0000));
    expect(used()).toBe(base + 2);
    expectConsistentCounts(vm.memory);
  });

  it('installing over a present page frees its old frame, and the guest reads the new bytes at once', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 0x1111_0000); // the guest now holds translations for page 9
    const base = used();
    const oldFrame = P2mEntry.frame(vm.memory.entryOf(9));
    vm.memory.installPage(9, pagePattern(0x2222_0000));
    expect(P2mEntry.frame(vm.memory.entryOf(9))).not.toBe(oldFrame);
    expect(used()).toBe(base);
    expect(hv.pool.refCount[oldFrame]).toBe(0);
    expect(guestSum(vm, 9)).toBe(patternSum(0x2222_0000));
    guestFill(vm, 9, 0x3333_0000); // lands on the new frame
    expect(describeBytes(vm.memory.pageBytes(9))).toBe('pattern 0x33330000');
    expect(hv.pool.u8.subarray(oldFrame * PAGE, (oldFrame + 1) * PAGE).every((b) => b === 0)).toBe(true);
  });

  it('a filler that throws leaves the page as it was and takes no frame', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 0x44_0000);
    const base = used();
    expect(() => vm.memory.installPage(9, (frame) => {
      frame.fill(0xee);
      throw new Error('source unreadable');
    })).toThrow('source unreadable');
    expect(used()).toBe(base);
    expect(guestSum(vm, 9)).toBe(patternSum(0x44_0000));
    expect(() => vm.memory.installPage(10, () => {
      throw new Error('again');
    })).toThrow('again');
    expect(vm.memory.stateOf(10)).toBe(PageState.UNTOUCHED);
    // The frame went back zeroed: the next allocation (whichever frame it gets) reads zero.
    vm.memory.installPage(11, (frame) => expect(frame.every((b) => b === 0)).toBe(true));
  });

  it('releasePage gives the frame back to the pool; the page reads as a fresh zero page; a stale guest store cannot reach the freed frame', () => {
    const vm = bootWorker();
    const other = bootWorker();
    for (let gpn = FIRST_DATA; gpn < WORKER_PAGES; gpn++) guestFill(vm, gpn, gpn << 16);
    const before = hv.pool.stats();
    for (let gpn = FIRST_DATA; gpn < WORKER_PAGES; gpn++) vm.memory.releasePage(gpn);
    const after = hv.pool.stats();
    const released = WORKER_PAGES - FIRST_DATA;
    expect(after.usedFrames).toBe(before.usedFrames - released);
    expect(after.framesReleased - before.framesReleased).toBe(released);
    for (let gpn = FIRST_DATA; gpn < WORKER_PAGES; gpn++) expect(vm.memory.stateOf(gpn)).toBe(PageState.UNTOUCHED);
    expect(vm.memory.countInState(AbsentState.UNTOUCHED)).toBe(WORKER_PAGES - vm.memory.presentPages);
    // The other VM takes frames now (likely the ones just freed); the first guest's stores must go
    // to new frames of its own.
    for (let gpn = FIRST_DATA; gpn < WORKER_PAGES; gpn++) other.memory.installPage(gpn, pagePattern(0x0bad_0000 + gpn));
    expect(guestSum(vm, FIRST_DATA)).toBe(0);
    guestFill(vm, FIRST_DATA + 1, 0x600d_0000);
    for (let gpn = FIRST_DATA; gpn < WORKER_PAGES; gpn++) expect(describeBytes(other.memory.pageBytes(gpn))).toBe(`pattern ${hex(0x0bad_0000 + gpn)}`);
    expect(describeBytes(vm.memory.pageBytes(FIRST_DATA + 1))).toBe('pattern 0x600d0000');
    expectConsistentCounts(vm.memory);
  });

  it('releasePage into a state records the state and its payload', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 1);
    const base = used();
    vm.memory.releasePage(9, AbsentState.SWAPPED, 42);
    vm.memory.releasePage(10, AbsentState.LAZY, 0x0fff_ffff); // an untouched page, the largest payload
    expect(used()).toBe(base - 1);
    expect([vm.memory.stateOf(9), vm.memory.payloadOf(9)]).toEqual([PageState.SWAPPED, 42]);
    expect([vm.memory.stateOf(10), vm.memory.payloadOf(10)]).toEqual([PageState.LAZY, 0x0fff_ffff]);
    expect(vm.memory.countInState(AbsentState.SWAPPED)).toBe(1);
    expect(vm.memory.countInState(AbsentState.LAZY)).toBe(1);
    expect(vm.memory.describe(9)).toMatch(/swapped/);
    // The guest touching it goes to the swapped resolver, with the payload.
    const seen: number[] = [];
    vm.memory.onAbsent(AbsentState.SWAPPED, (memory, gpn, _state, payload) => {
      seen.push(payload);
      memory.installPage(gpn, pagePattern(payload));
    });
    expect(guestSum(vm, 9)).toBe(patternSum(42));
    expect(seen).toEqual([42]);
    expect(vm.memory.countInState(AbsentState.SWAPPED)).toBe(0);
    expectConsistentCounts(vm.memory);
  });

  it('RSS grows when 48 MiB of pages are installed and drops again when they are released', () => {
    const own = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const vm = own.createVm({ memoryBytes: 48 * MiB, largePages: 'off' });
    const before = processRss();
    for (let gpn = 0; gpn < vm.memory.pageCount; gpn++) vm.memory.installPage(gpn, (frame) => frame.fill((gpn & 0xff) | 1));
    const installed = processRss();
    expect(used(own)).toBe(vm.memory.pageCount);
    for (let gpn = 0; gpn < vm.memory.pageCount; gpn++) vm.memory.releasePage(gpn);
    const released = processRss();
    expect(used(own)).toBe(0);
    expect(vm.memory.presentPages).toBe(0);
    expect(installed - before).toBeGreaterThan(40 * MiB);
    expect(installed - released).toBeGreaterThan(40 * MiB);
    own.destroyVm(vm);
  });
});

// -------------------------------------------------------------------------------------------------

describe('sharePage', () => {
  it('within a VM: both pages read one frame; a write to either gets a private copy, the other keeps the bytes', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 0x0a_0000);
    const base = used();
    vm.memory.sharePage(9, vm.memory, 12);
    expect(used()).toBe(base); // one frame for two pages
    expect(vm.memory.sameFrame(9, vm.memory, 12)).toBe(true);
    expect(vm.memory.isPrivate(9)).toBe(false);
    for (const gpn of [9, 12]) expect(vm.memory.flagsOf(gpn) & P2mFlag.COPY_ON_WRITE).toBe(P2mFlag.COPY_ON_WRITE);
    expect(vm.memory.census().shared).toBe(2);
    expect(guestSum(vm, 12)).toBe(patternSum(0x0a_0000));
    expect(used()).toBe(base); // reads copy nothing

    guestFill(vm, 9, 0x0b_0000); // the guest's old write translation for page 9 must not be used
    expect(used()).toBe(base + 1);
    expect(vm.memory.sameFrame(9, vm.memory, 12)).toBe(false);
    expect(guestSum(vm, 12)).toBe(patternSum(0x0a_0000));
    expect(guestSum(vm, 9)).toBe(patternSum(0x0b_0000));
    expect(vm.memory.cowCopies).toBe(1);
    // The last sharer writes without a copy: it is private now.
    expect(vm.memory.isPrivate(12)).toBe(true);
    vm.memory.writePhysical(12 * PAGE, pagePattern(0x0c_0000));
    expect(used()).toBe(base + 1);
    expect(vm.memory.flagsOf(12)).toBe(0);
    expectConsistentCounts(vm.memory);
  });

  it('across VMs: both guests read the same bytes; each side\'s write copies and the other is unchanged', () => {
    const a = bootWorker(hv, 'a');
    const b = bootWorker(hv, 'b');
    guestFill(a, 9, 0x0a_0000);
    guestFill(b, 11, 0x0b_0000);
    const base = used();
    a.memory.sharePage(9, b.memory, 10); // onto an untouched page
    a.memory.sharePage(9, b.memory, 11); // onto a present one: its frame is freed
    expect(used()).toBe(base - 1);
    expect(a.memory.sameFrame(9, b.memory, 10)).toBe(true);
    expect(a.memory.sameFrame(9, b.memory, 11)).toBe(true);
    expect(guestSum(b, 10)).toBe(patternSum(0x0a_0000));
    expect(guestSum(b, 11)).toBe(patternSum(0x0a_0000));

    guestFill(b, 10, 0x0c_0000);
    expect(used()).toBe(base);
    expect(guestSum(a, 9)).toBe(patternSum(0x0a_0000));
    expect(guestSum(b, 11)).toBe(patternSum(0x0a_0000));
    guestFill(a, 9, 0x0d_0000); // the source side writes: still shared with b's page 11
    expect(used()).toBe(base + 1);
    expect(guestSum(b, 11)).toBe(patternSum(0x0a_0000));
    expect(describeBytes(a.memory.pageBytes(9))).toBe('pattern 0x000d0000');
    expect(describeBytes(b.memory.pageBytes(10))).toBe('pattern 0x000c0000');
    expect(b.memory.isPrivate(11)).toBe(true);
    for (const vm of [a, b]) expectConsistentCounts(vm.memory);
  });

  it('sharing onto a page that already maps the frame takes no second reference (no frame leaks)', () => {
    const a = bootWorker(hv, 'a');
    const b = bootWorker(hv, 'b');
    a.memory.installPage(9, pagePattern(6));
    const frame = P2mEntry.frame(a.memory.entryOf(9));
    a.memory.sharePage(9, b.memory, 9);
    a.memory.sharePage(9, b.memory, 9); // again
    b.memory.sharePage(9, a.memory, 9); // and back
    expect(hv.pool.refCount[frame]).toBe(2);
    const child = forkWorker(a);
    a.memory.sharePage(9, child.memory, 9); // the child reads it through the fork already
    expect(hv.pool.refCount[frame]).toBe(3); // a's own, the fork generation's (the child's view), b's
    expect(guestSum(child, 9)).toBe(patternSum(6));
    hv.destroyVm(a);
    hv.destroyVm(child);
    expect(hv.pool.refCount[frame]).toBe(1);
    hv.destroyVm(b);
    expect(hv.pool.refCount[frame]).toBe(0); // and afterEach finds no frame in use
  });

  it('a page shared into three places stays until its last holder lets go', () => {
    const a = bootWorker(hv, 'a');
    const b = bootWorker(hv, 'b');
    a.memory.installPage(9, pagePattern(5));
    a.memory.sharePage(9, b.memory, 9);
    b.memory.sharePage(9, b.memory, 10);
    const frame = P2mEntry.frame(a.memory.entryOf(9));
    expect(hv.pool.refCount[frame]).toBe(3);
    const base = used();
    a.memory.releasePage(9);
    expect(used()).toBe(base); // b still holds the frame twice
    expect(hv.pool.refCount[frame]).toBe(2);
    const aFrames = a.memory.presentPages; // its program's pages, private
    hv.destroyVm(a);
    expect(used()).toBe(base - aFrames);
    expect(hv.pool.refCount[frame]).toBe(2);
    expect(guestSum(b, 9)).toBe(patternSum(5));
    b.memory.releasePage(9);
    b.memory.releasePage(10);
    expect(hv.pool.refCount[frame]).toBe(0);
  });
});

// -------------------------------------------------------------------------------------------------

describe('moveFrame', () => {
  it('moves a page into another VM without a copy; the source page becomes absent and its guest cannot write the moved frame', () => {
    const a = bootWorker(hv, 'a');
    const b = bootWorker(hv, 'b');
    guestFill(a, 9, 0x0a_0000); // a's guest holds a write translation for page 9
    const frame = P2mEntry.frame(a.memory.entryOf(9));
    const base = used();
    a.memory.moveFrame(9, b.memory, 12);
    expect(used()).toBe(base); // no copy, no new frame
    expect(P2mEntry.frame(b.memory.entryOf(12))).toBe(frame);
    expect(b.memory.isPrivate(12)).toBe(true);
    expect(a.memory.stateOf(9)).toBe(PageState.UNTOUCHED);
    expect(guestSum(b, 12)).toBe(patternSum(0x0a_0000));
    guestFill(a, 9, 0x0e_0000); // a fresh frame for a
    expect(used()).toBe(base + 1);
    expect(describeBytes(b.memory.pageBytes(12))).toBe('pattern 0x000a0000');
    expect(describeBytes(a.memory.pageBytes(9))).toBe('pattern 0x000e0000');
    for (const vm of [a, b]) expectConsistentCounts(vm.memory);
  });

  it('leaves the source in the state asked for; onto a present page, the target\'s old frame is freed', () => {
    const a = bootWorker(hv, 'a');
    const b = bootWorker(hv, 'b');
    guestFill(a, 9, 1);
    guestFill(b, 10, 2);
    const base = used();
    a.memory.moveFrame(9, b.memory, 10, AbsentState.BALLOONED);
    expect(used()).toBe(base - 1);
    expect(a.memory.stateOf(9)).toBe(PageState.BALLOONED);
    expect(a.memory.countInState(AbsentState.BALLOONED)).toBe(1);
    expect(guestSum(b, 10)).toBe(patternSum(1));
    // With no resolver (no balloon device here), a guest touching the page stops its VM, naming the state.
    a.vcpus[0]!.regs[Reg.A1] = CMD_SUM;
    a.vcpus[0]!.regs[Reg.A2] = 9 * PAGE;
    a.resume();
    const [result] = hv.run({ maxInstructions: 50_000 }, [a]);
    if (result!.reason.kind !== 'host-error') expect.fail(`expected a host error, got ${JSON.stringify(result!.reason)}`);
    expect(result!.reason.message).toMatch(/'ballooned' and no resolver is registered/);
    expect(result!.reason.message).not.toMatch(/reserved/); // the balloon device resolves it when there is one
  });

  it('refuses a shared page, an absent page and a VM of another hypervisor, changing nothing', () => {
    const a = bootWorker(hv, 'a');
    const b = bootWorker(hv, 'b');
    guestFill(a, 9, 3);
    a.memory.sharePage(9, a.memory, 10);
    const base = used();
    expectKernelError(() => a.memory.moveFrame(9, b.memory, 9), 'BV_BAD_MOVE', /guest page 9 .*only a private present page can move/);
    expectKernelError(() => a.memory.moveFrame(10, b.memory, 9), 'BV_BAD_MOVE', /only a private present page/);
    expectKernelError(() => a.memory.moveFrame(11, b.memory, 9), 'BV_BAD_MOVE', /guest page 11 is untouched/);
    const elsewhere = createHypervisor({ hostMemoryBytes: 4 * MiB });
    const stranger = elsewhere.createVm({ memoryBytes: WORKER_BYTES });
    expectKernelError(() => a.memory.moveFrame(9, stranger.memory, 9), 'BV_BAD_MOVE', /another hypervisor/);
    expect(used()).toBe(base);
    expect(a.memory.sameFrame(9, a.memory, 10)).toBe(true);
    expect(b.memory.stateOf(9)).toBe(PageState.UNTOUCHED);
    expect(stranger.memory.stateOf(9)).toBe(PageState.UNTOUCHED);
    expect(guestSum(a, 9)).toBe(patternSum(3));
    elsewhere.destroyVm(stranger);
  });

  it('refuses a page a fork child still shares', () => {
    const parent = bootWorker(hv, 'parent');
    guestFill(parent, 9, 4);
    const child = forkWorker(parent);
    expectKernelError(() => parent.memory.moveFrame(9, parent.memory, 12), 'BV_BAD_MOVE', /only a private present page/);
    expectKernelError(() => child.memory.moveFrame(9, child.memory, 12), 'BV_BAD_MOVE', /only a private present page/);
    expect(guestSum(child, 9)).toBe(patternSum(4));
    expect(guestSum(parent, 9)).toBe(patternSum(4));
    // Once the parent has its own copy, the child's page is the generation's last holder: it can move.
    guestFill(parent, 9, 5);
    child.memory.moveFrame(9, child.memory, 12);
    expect(guestSum(child, 12)).toBe(patternSum(4));
    expect(child.memory.stateOf(9)).toBe(PageState.UNTOUCHED);
    expect(guestSum(parent, 9)).toBe(patternSum(5));
  });
});

// -------------------------------------------------------------------------------------------------

describe('protect and unprotect', () => {
  it('a write to a protected page calls the registered resolver once, with the old bytes still there; reads do not', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 0x0a_0000); // the guest holds a write translation: protect must revoke it
    const saved: { gpn: number; flag: number; bytes: string }[] = [];
    vm.memory.onWriteProtected(P2mFlag.CHECKPOINT, (memory, gpn, flag) => {
      saved.push({ gpn, flag, bytes: describeBytes(memory.pageBytes(gpn)) });
      memory.unprotect(gpn, flag);
    });
    vm.memory.protect(9, P2mFlag.CHECKPOINT);
    expectKernelError(() => vm.memory.protect(10, P2mFlag.CHECKPOINT), 'BV_BAD_FLAGS', /only a present page can be protected/); // absent
    expect(vm.memory.flagsOf(9)).toBe(P2mFlag.CHECKPOINT);
    expect(vm.memory.flagsOf(10)).toBe(0);
    expect(guestSum(vm, 9)).toBe(patternSum(0x0a_0000));
    expect(saved).toEqual([]);
    guestFill(vm, 9, 0x0b_0000);
    expect(saved).toEqual([{ gpn: 9, flag: P2mFlag.CHECKPOINT, bytes: 'pattern 0x000a0000' }]);
    expect(vm.memory.flagsOf(9)).toBe(0);
    expect(describeBytes(vm.memory.pageBytes(9))).toBe('pattern 0x000b0000');
    guestFill(vm, 9, 0x0c_0000);
    expect(saved).toHaveLength(1);
    expect(vm.exits.writeProtect.checkpoint).toBe(1);
    // A host write goes through the resolver like a guest store.
    vm.memory.protect(9, P2mFlag.CHECKPOINT);
    vm.memory.writePhysical(9 * PAGE, pagePattern(0x0d_0000));
    expect(saved.map((s) => s.bytes)).toEqual(['pattern 0x000a0000', 'pattern 0x000c0000']);
    expect(guestSum(vm, 9)).toBe(patternSum(0x0d_0000));
  });

  it('unprotect clears the flag: later writes do not reach the resolver', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 1);
    let calls = 0;
    vm.memory.onWriteProtected(P2mFlag.CHECKPOINT, (memory, gpn, flag) => {
      calls++;
      memory.unprotect(gpn, flag);
    });
    vm.memory.protect(9, P2mFlag.CHECKPOINT);
    vm.memory.unprotect(9, P2mFlag.CHECKPOINT);
    expect(vm.memory.flagsOf(9)).toBe(0);
    guestFill(vm, 9, 2);
    expect(calls).toBe(0);
    expect(guestSum(vm, 9)).toBe(patternSum(2));
  });

  it('protecting a copy-on-write page keeps both flags; the resolvers run in turn and the write lands on a private copy', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 0x0a_0000);
    vm.memory.sharePage(9, vm.memory, 10);
    const calls: string[] = [];
    vm.memory.onWriteProtected(P2mFlag.CHECKPOINT, (memory, gpn, flag) => {
      calls.push(`checkpoint ${gpn}`);
      memory.unprotect(gpn, flag);
    });
    vm.memory.protect(9, P2mFlag.CHECKPOINT);
    expect(vm.memory.flagsOf(9)).toBe(P2mFlag.CHECKPOINT | P2mFlag.COPY_ON_WRITE);
    guestFill(vm, 9, 0x0b_0000);
    expect(calls).toEqual(['checkpoint 9']);
    expect(guestSum(vm, 10)).toBe(patternSum(0x0a_0000));
    expect(guestSum(vm, 9)).toBe(patternSum(0x0b_0000));
  });

  it('unprotect cannot clear copy-on-write while the frame is shared: writes stay private', () => {
    const parent = bootWorker(hv, 'parent');
    guestFill(parent, 9, 0x0a_0000);
    guestFill(parent, 10, 0x0b_0000);
    const child = forkWorker(parent);
    parent.memory.sharePage(10, parent.memory, 11);
    for (const [vm, gpn] of [[child, 9], [parent, 9], [parent, 10], [parent, 11]] as const) {
      expectKernelError(() => vm.memory.unprotect(gpn, P2mFlag.COPY_ON_WRITE), 'BV_BAD_FLAGS', new RegExp(`guest page ${gpn} shares its frame`));
      expect(vm.memory.flagsOf(gpn) & P2mFlag.COPY_ON_WRITE).toBe(P2mFlag.COPY_ON_WRITE);
    }
    guestFill(child, 9, 0x0c_0000);
    expect(guestSum(parent, 9)).toBe(patternSum(0x0a_0000));
    parent.memory.writePhysical(11 * PAGE, pagePattern(0x0d_0000));
    expect(guestSum(parent, 10)).toBe(patternSum(0x0b_0000));
    // A private page may carry the flag (a write then just clears it) and lose it again.
    expectKernelError(() => parent.memory.protect(12, P2mFlag.COPY_ON_WRITE), 'BV_BAD_FLAGS', /only a present page can be protected/); // absent
    guestFill(parent, 12, 1);
    parent.memory.protect(12, P2mFlag.COPY_ON_WRITE);
    expect(parent.memory.flagsOf(12)).toBe(P2mFlag.COPY_ON_WRITE);
    parent.memory.unprotect(12, P2mFlag.COPY_ON_WRITE);
    expect(parent.memory.flagsOf(12)).toBe(0);
    const cowCopies = parent.memory.cowCopies;
    guestFill(parent, 12, 2);
    expect(parent.memory.cowCopies).toBe(cowCopies);
    expect(guestSum(parent, 12)).toBe(patternSum(2));
  });

  it('a resolver that leaves the page protected stops the VM with a host error; the write does not land', () => {
    const vm = bootWorker();
    guestFill(vm, 9, 1);
    vm.memory.onWriteProtected(P2mFlag.CHECKPOINT, () => {});
    vm.memory.protect(9, P2mFlag.CHECKPOINT);
    vm.vcpus[0]!.regs[Reg.A1] = CMD_FILL;
    vm.vcpus[0]!.regs[Reg.A2] = 9 * PAGE;
    vm.vcpus[0]!.regs[Reg.A3] = 2;
    vm.resume();
    const [result] = hv.run({ maxInstructions: 50_000 }, [vm]);
    if (result!.reason.kind !== 'host-error') expect.fail(`expected a host error, got ${JSON.stringify(result!.reason)}`);
    expect(result!.reason.message).toMatch(/'checkpoint' resolver left guest page 9 protected/);
    expect(describeBytes(vm.memory.pageBytes(9))).toBe('pattern 0x00000001');
  });
});

// -------------------------------------------------------------------------------------------------

describe.each(MMU_MODES)('the host replaces a page that holds a guest page table ($name)', (mode) => {
  const { V, R, W, A, D } = Pte;
  const RW = V | R | W | A | D;
  const LEAF = FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4;
  const TABLE_GPN = FIRST_TABLE / PAGE;
  const SPARE_GPN = 0x300;
  const [OLD, NEW] = [FRAMES, FRAMES + 0x1000];
  const WAYS: [string, (memory: GuestMemory, table: Uint8Array) => void][] = [
    ['writePhysical', (memory, table) => memory.writePhysical(FIRST_TABLE, table)],
    ['installPage', (memory, table) => memory.installPage(TABLE_GPN, table)],
    ['releasePage, then a resolver installs it', (memory, table) => {
      memory.releasePage(TABLE_GPN, AbsentState.LAZY, 1);
      memory.onAbsent(AbsentState.LAZY, (m, gpn) => m.installPage(gpn, table));
    }],
    ['sharePage from another page', (memory, table) => {
      memory.installPage(SPARE_GPN, table);
      memory.sharePage(SPARE_GPN, memory, TABLE_GPN);
    }],
    ['moveFrame from another page', (memory, table) => {
      memory.installPage(SPARE_GPN, table);
      memory.moveFrame(SPARE_GPN, memory, TABLE_GPN);
    }],
  ];
  for (const [name, replace] of WAYS) {
    it(`${name}: the guest's next access translates through the new contents${mode.traces ? ' (traced: no sfence needed)' : ' after its sfence'}`, () => {
      const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR_A1
        csrrw zero, ptbr, t0
        la s1, seen
        li t1, ${hex(VA)}
        lw t2, 0(t1)
        sw t2, 0(s1)
        probe 1                       # the host replaces the leaf table's page: VA now maps NEW
        ${mode.traces ? '' : 'sfence zero, zero'}
        lw t2, 0(t1)
        sw t2, 4(s1)
        exiti 0
handler: exiti 0x77
        .data
seen:   .space 8`, { hv, mmu: mode.mmu, memoryBytes: 4 * MiB });
      guest.tables.setLeaf(VA, pte(OLD, RW));
      fillFrame(guest.vm, OLD, 0x0_1d00);
      fillFrame(guest.vm, NEW, 0x0_e000);
      guest.onProbe(1, () => {
        const table = guest.vm.memory.readPhysical(FIRST_TABLE, PAGE);
        new DataView(table.buffer).setUint32(LEAF - FIRST_TABLE, pte(NEW, RW), true);
        replace(guest.vm.memory, table);
      });
      expect(guest.run({ maxInstructions: 10_000 }).reason).toEqual({ kind: 'halted', exitCode: 0 });
      expect(guest.words(guest.sym('seen'), 2).map(hex)).toEqual([0x0_1d00, 0x0_e000].map(hex));
    });
  }
});

// -------------------------------------------------------------------------------------------------

describe('forEachPage, census and countInState', () => {
  it('report every page by state, with payloads, in page order, and agree with each other', () => {
    const vm = hv.createVm({ memoryBytes: WORKER_BYTES });
    for (const gpn of [1, 2, 3]) vm.memory.installPage(gpn, pagePattern(gpn));
    vm.memory.releasePage(5, AbsentState.SWAPPED, 8);
    vm.memory.releasePage(4, AbsentState.SWAPPED, 7);
    vm.memory.releasePage(6, AbsentState.LAZY, 100);
    vm.memory.releasePage(7, AbsentState.POISONED, 3);
    vm.memory.releasePage(2, AbsentState.REMOTE, 9); // a present page released into a state
    const collect = (state: number): [number, number][] => {
      const out: [number, number][] = [];
      vm.memory.forEachPage(state as never, (gpn, payload) => out.push([gpn, payload]));
      return out;
    };
    expect(collect(PageState.PRESENT)).toEqual([[1, 0], [3, 0]]);
    expect(collect(PageState.SWAPPED)).toEqual([[4, 7], [5, 8]]);
    expect(collect(PageState.LAZY)).toEqual([[6, 100]]);
    expect(collect(PageState.POISONED)).toEqual([[7, 3]]);
    expect(collect(PageState.REMOTE)).toEqual([[2, 9]]);
    expect(collect(PageState.BALLOONED)).toEqual([]);
    expect(collect(PageState.UNTOUCHED)).toEqual([0, ...Array.from({ length: 8 }, (_, i) => 8 + i)].map((gpn) => [gpn, 0]));
    expect(vm.memory.census()).toEqual({ present: 2, shared: 0, absent: { untouched: 9, swapped: 2, lazy: 1, poisoned: 1, remote: 1 } });
    expect(vm.memory.presentPages).toBe(2);
    expect(vm.memory.countInState(AbsentState.SWAPPED)).toBe(2);
    expect(vm.memory.countInState(AbsentState.UNTOUCHED)).toBe(9);
    vm.memory.sharePage(1, vm.memory, 8);
    expect(vm.memory.census()).toMatchObject({ present: 3, shared: 2 });
    vm.memory.installPage(4, pagePattern(4)); // swapped → present
    expect(vm.memory.countInState(AbsentState.SWAPPED)).toBe(1);
    expectConsistentCounts(vm.memory);
  });
});

// -------------------------------------------------------------------------------------------------

describe('bad arguments', () => {
  it('get a KernelError that names the value and the VM, and change nothing', () => {
    const vm = hv.createVm({ memoryBytes: WORKER_BYTES, name: 'picky' });
    vm.memory.installPage(1, pagePattern(1));
    vm.memory.installPage(15, pagePattern(15));
    const memory = vm.memory;
    const census = memory.census();
    const base = used();
    for (const gpn of [-1, WORKER_PAGES, 1.5, Number.NaN, 2 ** 32]) {
      const outside = /guest page .* is outside picky's RAM/;
      expectKernelError(() => memory.stateOf(gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.payloadOf(gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.flagsOf(gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.pageBytes(gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.installPage(gpn, pagePattern(0)), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.releasePage(gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.sharePage(gpn, memory, 2), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.sharePage(1, memory, gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.moveFrame(gpn, memory, 2), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.moveFrame(1, memory, gpn), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.protect(gpn, P2mFlag.CHECKPOINT), 'BV_BAD_GPN', outside);
      expectKernelError(() => memory.unprotect(gpn, P2mFlag.CHECKPOINT), 'BV_BAD_GPN', outside);
    }
    expectKernelError(() => memory.stateOf(16), 'BV_BAD_GPN', /guest page 16 /);
    // Pages are 4096 bytes.
    for (const length of [0, 4095, 4097, 8192]) {
      expectKernelError(() => memory.installPage(2, new Uint8Array(length)), 'BV_BAD_PAGE', new RegExp(`picky: a page is 4096 bytes, got ${length}`));
    }
    // Payloads fit 28 bits; states are absent states.
    for (const payload of [-1, 2 ** 28, 1.5, Number.NaN]) {
      expectKernelError(() => memory.releasePage(1, AbsentState.SWAPPED, payload), 'BV_BAD_P2M', /payload .* does not fit/);
    }
    for (const state of [PageState.PRESENT, 8, -1, 1.5]) {
      expectKernelError(() => memory.releasePage(1, state as never), 'BV_BAD_P2M', /picky: .*not an absent state/);
      expectKernelError(() => memory.moveFrame(1, memory, 2, state as never), 'BV_BAD_P2M', /picky: .*not an absent state/);
    }
    // Flags: only the services' protection flags, at least one.
    for (const flags of [0, P2mFlag.TRACED, P2mFlag.CHECKPOINT | P2mFlag.TRACED, 1 << 3, 1 << 30, -1, 1.5]) {
      expectKernelError(() => memory.protect(1, flags), 'BV_BAD_FLAGS', /picky: .* is not a set of protection flags/);
      expectKernelError(() => memory.unprotect(1, flags), 'BV_BAD_FLAGS', /picky: .* is not a set of protection flags/);
    }
    // Ranges: inside RAM, whole bytes.
    const ranges: [number, number][] = [[-1, 4], [WORKER_BYTES - 2, 4], [WORKER_BYTES, 1], [0, -1], [0.5, 4], [0, 1.5], [0, WORKER_BYTES + 1], [2 ** 32, 4]];
    for (const [gpa, length] of ranges) {
      expectKernelError(() => memory.readPhysical(gpa, length), 'BV_BAD_GPA', /guest-physical range .* is not inside picky's RAM/);
      if (Number.isInteger(length) && length >= 0) {
        expectKernelError(() => memory.writePhysical(gpa, new Uint8Array(length).fill(0xee)), 'BV_BAD_GPA', /is not inside picky's RAM/);
      }
    }
    expectKernelError(() => memory.clearAccessed(WORKER_PAGES - 1, 2), 'BV_BAD_GPN', /picky: pages .* are outside RAM/);
    // Other hypervisors' VMs.
    const elsewhere = createHypervisor({ hostMemoryBytes: 4 * MiB });
    const stranger = elsewhere.createVm({ memoryBytes: WORKER_BYTES });
    expectKernelError(() => memory.sharePage(1, stranger.memory, 1), 'BV_BAD_SHARE', /picky: cannot share a page with a VM of another hypervisor/);
    expectKernelError(() => memory.moveFrame(1, stranger.memory, 1), 'BV_BAD_MOVE', /picky: cannot move a frame to a VM of another hypervisor/);
    expectKernelError(() => memory.sharePage(3, memory, 4), 'BV_BAD_SHARE', /picky: guest page 3 is untouched; only a present page can be shared/);
    expect(stranger.memory.presentPages).toBe(0);
    elsewhere.destroyVm(stranger);
    // Nothing changed: no page, no frame, no partial write at the end of RAM.
    expect(memory.census()).toEqual(census);
    expect(used()).toBe(base);
    expect(describeBytes(memory.pageBytes(1))).toBe('pattern 0x00000001');
    expect(describeBytes(memory.pageBytes(15))).toBe('pattern 0x0000000f');
    expect(memory.flagsOf(1)).toBe(0);
    expectConsistentCounts(memory);
  });
});

// -------------------------------------------------------------------------------------------------

describe('fork', () => {
  it('a VM that has run a guest forks without copying; parent and child each write pages and never see each other\'s writes', () => {
    const parent = bootWorker(hv, 'parent');
    const model = new Map<number, Contents>();
    for (let gpn = FIRST_DATA; gpn <= 13; gpn++) {
      guestFill(parent, gpn, gpn << 20);
      model.set(gpn, gpn << 20);
    }
    model.set(14, null);
    model.set(15, null);
    const base = used();
    const child = forkWorker(parent);
    expect(used()).toBe(base); // nothing copied at fork
    expect(child.memory.census()).toEqual(parent.memory.census());
    expect(child.memory.census().shared).toBe(parent.memory.presentPages); // every page, on both sides
    expect(child.memory.presentPages).toBe(parent.memory.presentPages);
    for (let gpn = FIRST_DATA; gpn <= 13; gpn++) expect(child.memory.sameFrame(gpn, parent.memory, gpn)).toBe(true);
    expectPages(child, model);
    for (let gpn = FIRST_DATA; gpn <= 13; gpn++) expect(guestSum(child, gpn)).toBe(patternSum(gpn << 20));
    expect(used()).toBe(base); // reads copy nothing

    const parentModel = new Map(model);
    const childModel = new Map(model);
    // The parent's guest still holds write translations from before the fork: they must fault.
    guestFill(parent, 8, 0xaaaa_0000);
    parentModel.set(8, 0xaaaa_0000);
    guestFill(child, 9, 0xbbbb_0000);
    childModel.set(9, 0xbbbb_0000);
    guestFill(parent, 10, 0xaaaa_1000);
    guestFill(child, 10, 0xbbbb_1000);
    parentModel.set(10, 0xaaaa_1000);
    childModel.set(10, 0xbbbb_1000);
    guestFill(child, 14, 0xbbbb_2000); // untouched in both before
    childModel.set(14, 0xbbbb_2000);
    expect(guestSum(parent, 14)).toBe(0);
    parentModel.set(14, 0);
    child.memory.writePhysical(11 * PAGE, pagePattern(0xbbbb_3000)); // host writes, each side
    childModel.set(11, 0xbbbb_3000);
    parent.memory.installPage(12, pagePattern(0xaaaa_4000));
    parentModel.set(12, 0xaaaa_4000);
    parent.memory.releasePage(13);
    parentModel.set(13, null);
    child.memory.releasePage(15);
    expectPages(parent, parentModel);
    expectPages(child, childModel);
    expect(guestSum(child, 8)).toBe(patternSum(8 << 20));
    expect(guestSum(child, 12)).toBe(patternSum(12 << 20));
    expect(guestSum(child, 13)).toBe(patternSum(13 << 20));
    expect(guestSum(parent, 9)).toBe(patternSum(9 << 20));
    expect(guestSum(parent, 11)).toBe(patternSum(11 << 20));
    for (const vm of [parent, child]) expectConsistentCounts(vm.memory);
    expect(used()).toBe(framesInUse([parent, child]).size);

    // With the parent gone the child still sees its pages; then nothing is left.
    hv.destroyVm(parent);
    expectPages(child, childModel);
    expect(used()).toBe(framesInUse([child]).size);
    for (const [gpn, contents] of childModel) if (contents !== null) expect(guestSum(child, gpn)).toBe(contents === 0 ? 0 : patternSum(contents));
  });

  it('a chain of forks (child of a child, second child of the parent) keeps every view right; depth grows one per level', () => {
    const p = bootWorker(hv, 'p');
    const models = new Map<Vm, Map<number, Contents>>();
    const pages = (vm: Vm): Map<number, Contents> => models.get(vm)!;
    models.set(p, new Map(Array.from({ length: WORKER_PAGES - FIRST_DATA }, (_, i): [number, Contents] => [FIRST_DATA + i, null])));
    const fill = (vm: Vm, gpn: number, value: number): void => {
      guestFill(vm, gpn, value);
      pages(vm).set(gpn, value);
    };
    const fork = (parent: Vm): Vm => {
      const child = forkWorker(parent);
      models.set(child, new Map(pages(parent)));
      return child;
    };
    const check = (): void => {
      for (const [vm, model] of models) {
        expectPages(vm, model);
        expectConsistentCounts(vm.memory);
      }
      expect(used()).toBe(framesInUse([...models.keys()]).size);
    };
    for (let gpn = FIRST_DATA; gpn < 12; gpn++) fill(p, gpn, 0x1000_0000 + gpn);
    expect(p.memory.generationDepth).toBe(0);
    const c = fork(p);
    expect([p.memory.generationDepth, c.memory.generationDepth]).toEqual([1, 1]);
    fill(c, 8, 0x2000_0008);
    fill(p, 9, 0x1100_0009);
    const g = fork(c); // level 3
    expect([c.memory.generationDepth, g.memory.generationDepth]).toEqual([2, 2]);
    check();
    fill(g, 10, 0x3000_000a);
    fill(c, 10, 0x2000_000a);
    fill(g, 12, 0x3000_000c);
    const c2 = fork(p); // a second child of the parent
    expect(p.memory.generationDepth).toBe(2);
    fill(c2, 11, 0x4000_000b);
    fill(p, 11, 0x1100_000b);
    check();
    const gg = fork(g); // level 4
    fill(gg, 8, 0x5000_0008);
    c.memory.releasePage(9);
    pages(c).set(9, null);
    check();
    // Every guest reads its own view.
    for (const [vm, model] of models) {
      for (const [gpn, contents] of model) if (contents !== null) expect(guestSum(vm, gpn), `${vm.name} page ${gpn}`).toBe(contents === 0 ? 0 : patternSum(contents));
    }
    // Destroy the middle of the chain first: the leaves keep their pages.
    hv.destroyVm(c);
    models.delete(c);
    check();
    hv.destroyVm(p);
    models.delete(p);
    check();
    const late = fork(gg); // fork after its parents are gone
    fill(late, 13, 0x6000_000d);
    check();
    for (const vm of [g, gg, c2, late]) {
      hv.destroyVm(vm);
      models.delete(vm);
      check();
    }
  });

  it('a refused fork (pages in a state whose owner cannot share them) changes nothing; a fork hook lets it through', () => {
    const parent = bootWorker(hv, 'parent');
    guestFill(parent, 9, 9);
    parent.memory.releasePage(10, AbsentState.SWAPPED, 77);
    const census = parent.memory.census();
    const base = used();
    const vms = hv.vms.length;
    expectKernelError(() => hv.forkVm(parent), 'BV_FORK', /1 pages of parent are swapped/);
    expect(hv.vms.length).toBe(vms);
    expect(used()).toBe(base);
    expect(parent.memory.census()).toEqual(census);
    expect(parent.memory.generationDepth).toBe(0);
    expect(guestSum(parent, 9)).toBe(patternSum(9));

    const hooked: [string, string][] = [];
    parent.memory.onFork(AbsentState.SWAPPED, (from, to) => {
      hooked.push([from.name, to.name]);
      to.onAbsent(AbsentState.SWAPPED, (memory, gpn, _state, payload) => memory.installPage(gpn, pagePattern(payload)));
    });
    const child = forkWorker(parent);
    expect(hooked).toEqual([['parent', child.name]]);
    expect([child.memory.stateOf(10), child.memory.payloadOf(10)]).toEqual([PageState.SWAPPED, 77]);
    expect(guestSum(child, 10)).toBe(patternSum(77));
    expect(parent.memory.stateOf(10)).toBe(PageState.SWAPPED);
  });

  it('refuses a VM that has stopped', () => {
    const guest = bootGuest('_start: exiti 3', { hv, memoryBytes: WORKER_BYTES, name: 'stopped' });
    expect(hv.run({ maxInstructions: 100 }, [guest.vm])[0]!.reason.kind).toBe('halted');
    expectKernelError(() => hv.forkVm(guest.vm), 'BV_FORK', /stopped has stopped \(powered off with exit code 3\)/);
    expect(hv.vms).toEqual([guest.vm]);
  });

  describe.each(MMU_MODES)('of a paged guest ($name)', (mode) => {
    it('each side remaps a virtual page in its own copy of a traced leaf table and reads its own frame', () => {
      const { V, R, W, A, D } = Pte;
      const RW = V | R | W | A | D;
      const LEAF = FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4;
      const [FRAME_A, FRAME_B, FRAME_C] = [FRAMES, FRAMES + 0x1000, FRAMES + 0x2000];
      const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR_A1
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw s2, 0(t1)                  # FRAME_A, through the guest's tables
        li t2, 0x5a5a
        sw t2, 4(t1)                  # the VM holds a write translation at the fork
        probe 1                       # the host pauses and forks; s1 = 0 in the parent, 1 in the child
        lw s3, 4(t1)
        li t3, ${hex(LEAF)}
        beqz s1, 1f
        li t2, ${hex(pte(FRAME_B, RW))}
        j 2f
1:      li t2, ${hex(pte(FRAME_C, RW))}
2:      sw t2, 0(t3)                  # remap VA in this VM's leaf table
        ${mode.traces ? '' : 'sfence zero, zero'}
        lw s0, 0(t1)
        li t2, 0x7000
        add t2, t2, s1
        sw t2, 8(t1)                  # a store through the new mapping
        exitr s0
handler: exiti 0x77
`, { hv, mmu: mode.mmu, memoryBytes: 4 * MiB, largePages: 'off' });
      const parent = guest.vm;
      guest.tables.setLeaf(VA, pte(FRAME_A, RW));
      fillFrame(parent, FRAME_A, 0x0_a000);
      fillFrame(parent, FRAME_B, 0x0_b000);
      fillFrame(parent, FRAME_C, 0x0_c000);
      guest.onProbe(1, () => parent.pause('fork'));
      expect(guest.run({ maxInstructions: 10_000 }).reason.kind).toBe('paused');
      const child = hv.forkVm(parent, { name: 'child' });
      child.onHypercall(Hcall.EXIT, (vcpu) => child.powerOff(vcpu.regs[Reg.A1]!));
      child.vcpus[0]!.regs[Reg.S1] = 1;
      parent.memory.writePhysical(FRAME_A + 4, Uint8Array.from([0x11, 0x11, 0, 0])); // the parent's copy only
      parent.resume();
      const results = hv.run({ maxInstructions: 10_000 }, [parent, child]);
      expect(results.map((r) => r.reason)).toEqual([{ kind: 'halted', exitCode: 0xc000 }, { kind: 'halted', exitCode: 0xb000 }]);
      expect([parent.vcpus[0]!.regs[Reg.S2], child.vcpus[0]!.regs[Reg.S2]]).toEqual([0xa000, 0xa000]);
      expect([parent.vcpus[0]!.regs[Reg.S3], child.vcpus[0]!.regs[Reg.S3]]).toEqual([0x1111, 0x5a5a]);
      const word = (vm: Vm, gpa: number): number => new DataView(vm.memory.readPhysical(gpa, 4).buffer).getUint32(0, true);
      expect(hex(word(parent, LEAF))).toBe(hex(pte(FRAME_C, RW)));
      expect(hex(word(child, LEAF))).toBe(hex(pte(FRAME_B, RW)));
      expect([word(parent, FRAME_C + 8), word(parent, FRAME_B + 8)]).toEqual([0x7000, 0xb002]);
      expect([word(child, FRAME_B + 8), word(child, FRAME_C + 8)]).toEqual([0x7001, 0xc002]);
      for (const vm of [parent, child]) expectConsistentCounts(vm.memory);
      expect(used()).toBe(framesInUse([parent, child]).size);
    });
  });
});

// -------------------------------------------------------------------------------------------------

describe('a model of every VM\'s pages (property)', () => {
  const DATA = [FIRST_DATA, FIRST_DATA + 1, FIRST_DATA + 2, FIRST_DATA + 3, FIRST_DATA + 4];
  const MAX_VMS = 5;

  type Op =
    | { kind: 'guest-fill' | 'host-write' | 'install'; vm: number; page: number; value: number; filler?: boolean }
    | { kind: 'guest-sum' | 'release' | 'protect' | 'fork' | 'destroy'; vm: number; page: number }
    | { kind: 'share' | 'move'; vm: number; page: number; to: number; toPage: number }
    | { kind: 'create' };

  const vmIndex = fc.nat({ max: MAX_VMS - 1 });
  const page = fc.nat({ max: DATA.length - 1 });
  const value = fc.integer({ min: 1, max: 0x7fff_ffff });
  const op: fc.Arbitrary<Op> = fc.oneof(
    { arbitrary: fc.record({ kind: fc.constant('guest-fill' as const), vm: vmIndex, page, value }), weight: 4 },
    { arbitrary: fc.record({ kind: fc.constant('guest-sum' as const), vm: vmIndex, page }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('host-write' as const), vm: vmIndex, page, value }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('install' as const), vm: vmIndex, page, value, filler: fc.boolean() }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('release' as const), vm: vmIndex, page }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('protect' as const), vm: vmIndex, page }), weight: 1 },
    { arbitrary: fc.record({ kind: fc.constant('share' as const), vm: vmIndex, page, to: vmIndex, toPage: page }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('move' as const), vm: vmIndex, page, to: vmIndex, toPage: page }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('fork' as const), vm: vmIndex, page }), weight: 3 },
    { arbitrary: fc.record({ kind: fc.constant('destroy' as const), vm: vmIndex, page }), weight: 1 },
    { arbitrary: fc.record({ kind: fc.constant('create' as const) }), weight: 1 },
  );

  it('random writes, shares, moves, forks and destroys over a few VMs match the model; no frame is leaked or freed twice', () => {
    const own = createHypervisor({ hostMemoryBytes: 16 * MiB });
    interface Live { vm: Vm; pages: Contents[] }
    let nextName = 0;

    const setUp = (vm: Vm): Vm => {
      // The checkpoint flag's resolver (per VM: a fork child does not inherit it).
      vm.memory.onWriteProtected(P2mFlag.CHECKPOINT, (memory, gpn, flag) => memory.unprotect(gpn, flag));
      return vm;
    };

    const check = (live: readonly Live[], step: string): void => {
      for (const { vm, pages } of live) {
        expectPages(vm, new Map(DATA.map((gpn, i) => [gpn, pages[i]!])), `${vm.name} after ${step}`);
        // Pages outside the data pages are the program's, or untouched.
        for (let gpn = FIRST_DATA + DATA.length; gpn < WORKER_PAGES; gpn++) expect(vm.memory.stateOf(gpn), `${vm.name} page ${gpn}`).toBe(PageState.UNTOUCHED);
        expectConsistentCounts(vm.memory);
      }
      // Every frame in use backs a page some live VM sees (nothing held by a generation nobody reads).
      expect(used(own), `frames after ${step}`).toBe(framesInUse(live.map((l) => l.vm)).size);
    };

    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 30 }), (ops) => {
        const live: Live[] = [{ vm: setUp(bootWorker(own, `vm${nextName++}`)), pages: DATA.map(() => null) }];
        try {
          for (const [step, o] of ops.entries()) {
            const label = `step ${step} ${JSON.stringify(o)}`;
            if (o.kind === 'create') {
              if (live.length < MAX_VMS) live.push({ vm: setUp(bootWorker(own, `vm${nextName++}`)), pages: DATA.map(() => null) });
              check(live, label);
              continue;
            }
            if (live.length === 0) continue;
            const at = live[o.vm % live.length]!;
            const { vm, pages } = at;
            const gpn = DATA[o.page]!;
            switch (o.kind) {
              case 'guest-fill':
                guestFill(vm, gpn, o.value, own);
                pages[o.page] = o.value;
                break;
              case 'guest-sum': {
                const expected = pages[o.page] ? patternSum(pages[o.page]!) : 0;
                expect(guestSum(vm, gpn, own), label).toBe(expected);
                pages[o.page] ??= 0; // a read of an untouched page makes it a present zero page
                break;
              }
              case 'host-write':
                vm.memory.writePhysical(gpn * PAGE, pagePattern(o.value));
                pages[o.page] = o.value;
                break;
              case 'install':
                if (o.filler) vm.memory.installPage(gpn, (frame) => frame.set(pagePattern(o.value)));
                else vm.memory.installPage(gpn, pagePattern(o.value));
                pages[o.page] = o.value;
                break;
              case 'release':
                vm.memory.releasePage(gpn);
                pages[o.page] = null;
                break;
              case 'protect':
                if (vm.memory.stateOf(gpn) !== PageState.PRESENT) {
                  expectKernelError(() => vm.memory.protect(gpn, P2mFlag.CHECKPOINT), 'BV_BAD_FLAGS', /only a present page can be protected/);
                } else {
                  vm.memory.protect(gpn, P2mFlag.CHECKPOINT);
                  expect(vm.memory.flagsOf(gpn) & P2mFlag.CHECKPOINT).toBe(P2mFlag.CHECKPOINT);
                }
                break;
              case 'share': {
                const target = live[o.to % live.length]!;
                const toGpn = DATA[o.toPage]!;
                if (pages[o.page] === null) {
                  expectKernelError(() => vm.memory.sharePage(gpn, target.vm.memory, toGpn), 'BV_BAD_SHARE', /only a present page can be shared/);
                } else {
                  vm.memory.sharePage(gpn, target.vm.memory, toGpn);
                  target.pages[o.toPage] = pages[o.page]!;
                  expect(vm.memory.sameFrame(gpn, target.vm.memory, toGpn)).toBe(true);
                }
                break;
              }
              case 'move': {
                const target = live[o.to % live.length]!;
                const toGpn = DATA[o.toPage]!;
                const wasPrivate = vm.memory.isPrivate(gpn);
                let moved = false;
                try {
                  vm.memory.moveFrame(gpn, target.vm.memory, toGpn);
                  moved = true;
                } catch (error) {
                  expect(error, label).toBeInstanceOf(KernelError);
                  expect((error as KernelError).code).toBe('BV_BAD_MOVE');
                }
                if (pages[o.page] === null) expect(moved, `${label}: an absent page cannot move`).toBe(false);
                if (wasPrivate) expect(moved, `${label}: a private page moves`).toBe(true);
                if (moved) {
                  const contents = pages[o.page]!;
                  pages[o.page] = null;
                  target.pages[o.toPage] = contents;
                }
                break;
              }
              case 'fork':
                if (live.length < MAX_VMS) {
                  const child = setUp(forkWorker(vm, own));
                  live.push({ vm: child, pages: [...pages] });
                }
                break;
              case 'destroy':
                own.destroyVm(vm);
                live.splice(live.indexOf(at), 1);
                break;
            }
            check(live, label);
          }
          // Every VM's guest still runs and reads its own pages.
          for (const { vm, pages } of live) {
            for (const [i, contents] of pages.entries()) {
              if (contents !== null) expect(guestSum(vm, DATA[i]!, own), `${vm.name} page ${DATA[i]}`).toBe(contents === 0 ? 0 : patternSum(contents));
            }
          }
        } finally {
          for (const { vm } of live) own.destroyVm(vm);
        }
        // Destroying every VM gives every frame back.
        expect(own.vms).toEqual([]);
        expect(used(own)).toBe(0);
      }),
      { numRuns: 120 },
    );
  });
});
