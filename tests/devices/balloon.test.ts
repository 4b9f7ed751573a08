/**
 * The balloon device (devices/balloon.ts, docs/balloon.md) driven by small BV32 drivers: pages
 * the driver wrote go into the balloon and their frames back to the OS (host frames in use and
 * the process RSS fall), deflated pages read zeros, a touch of a ballooned page is a guest error
 * naming it, hostile drivers get a guest error and release nothing, statistics arrive, and a
 * checkpoint/restore, a live snapshot and a fork keep the balloon. A property test runs random
 * command sequences against a model of the rules.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { PAGE_SIZE, Pte, Ptbr, PTE_PPN_SHIFT, Reg } from '../../guest-isa/arch.ts';
import { assemble } from '../../guest-isa/assembler.ts';
import {
  attachBalloon, attachStandardDevices, BALLOON_MAX_ENTRIES, BalloonCommand, BalloonDevice, BalloonFeature, BalloonRegister, BalloonStatTag, BalloonStatus,
  CaptureSink, DeviceStateError, type BalloonOptions, type StandardDevices,
} from '../../devices/index.ts';
import { AbsentState, createHypervisor, PageState, type Hypervisor, type RunResult, type Vm } from '../../kernel/index.ts';

type StopReason = RunResult['reason'];
import { processRss } from '../../native/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint, startLiveSnapshot, type RestoreMode } from '../../services/checkpoint/index.ts';
import { GUEST_LIBRARY } from './harness.ts';

const root = mkdtempSync(join(tmpdir(), 'bv-balloon-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** The driver's "let the host look" hypercall: the VM pauses after it. */
const HCALL_PAUSE = 100;
const KIB = 1024;
const MIB = 1024 * KIB;

const REGISTER_EQUS = Object.entries(BalloonRegister).map(([name, offset]) => `        .equ    BAL_${name}, ${offset}`).join('\n');
const COMMAND_EQUS = Object.entries(BalloonCommand).map(([name, value]) => `        .equ    CMD_${name}, ${value}`).join('\n');

/** Routines and macros of the test drivers (s1 holds the balloon's window). */
const BALLOON_LIBRARY = `
        .equ    DEV_BALLOON, 6
        .equ    HCALL_PAUSE, ${HCALL_PAUSE}
${REGISTER_EQUS}
${COMMAND_EQUS}

        # Lets the host look: the VM pauses after this hypercall.
        .macro  pause
        li      a0, HCALL_PAUSE
        hcall
        .endm

        # One command on the array at addr (count entries); STATUS in a0.
        .macro  bcmd cmd, addr, count
        li      t0, \\addr
        sw      t0, BAL_PFN_ADDR(s1)
        li      t0, \\count
        sw      t0, BAL_PFN_COUNT(s1)
        li      t0, \\cmd
        sw      t0, BAL_COMMAND(s1)
        lw      a0, BAL_STATUS(s1)
        .endm

        # s1 = the balloon's window (exit 99 when there is none).
        .macro  find_balloon
        li      a0, DEV_BALLOON
        call    find_device
        bnez    a0, 1f
        exit    99
1:      mv      s1, a0
        .endm

        .text
# batched(a0 = command, a1 = array, a2 = entries): the command over the array, 1024 entries at a time.
# Clobbers t0-t2, a1, a2.
batched:
        li      t1, ${BALLOON_MAX_ENTRIES}
1:      beqz    a2, 3f
        mv      t0, a2
        bgeu    t1, a2, 2f
        mv      t0, t1
2:      sw      a1, BAL_PFN_ADDR(s1)
        sw      t0, BAL_PFN_COUNT(s1)
        sw      a0, BAL_COMMAND(s1)
        slli    t2, t0, 2
        add     a1, a1, t2
        sub     a2, a2, t0
        j       1b
3:      ret

# fill_pages(a0 = first address, a1 = pages): the first word of each page becomes its address + 1.
# Clobbers t0, a0, a1.
fill_pages:
1:      beqz    a1, 2f
        addi    t0, a0, 1
        sw      t0, 0(a0)
        li      t0, ${PAGE_SIZE}
        add     a0, a0, t0
        addi    a1, a1, -1
        j       1b
2:      ret

# pfn_array(a0 = array, a1 = first page number, a2 = count): array[i] = first + i. Clobbers a0-a2.
pfn_array:
1:      beqz    a2, 2f
        sw      a1, 0(a0)
        addi    a0, a0, 4
        addi    a1, a1, 1
        addi    a2, a2, -1
        j       1b
2:      ret

# or_firsts(a0 = first address, a1 = pages) -> a0 = the OR of the first word of each page. Clobbers t0, t1, a1.
or_firsts:
        li      t0, 0
1:      beqz    a1, 2f
        lw      t1, 0(a0)
        or      t0, t0, t1
        li      t1, ${PAGE_SIZE}
        add     a0, a0, t1
        addi    a1, a1, -1
        j       1b
2:      mv      a0, t0
        ret

# or_pages(a0 = first address, a1 = pages) -> a0 = the OR of every word of those pages. Clobbers t0-t2, a1.
or_pages:
        li      t0, 0
        li      t2, ${PAGE_SIZE / 4}
        mul     a1, a1, t2
1:      beqz    a1, 2f
        lw      t1, 0(a0)
        or      t0, t0, t1
        addi    a0, a0, 4
        addi    a1, a1, -1
        j       1b
2:      mv      a0, t0
        ret
`;

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  balloon: BalloonDevice;
  symbols: Map<string, number>;
}

interface BootOptions {
  memoryBytes?: number;
  hostMemoryBytes?: number;
  balloon?: BalloonOptions;
  mmu?: 'shadow' | 'nested';
}

/** Lets the guest pause itself (HCALL_PAUSE) so the host can look between its steps. */
function onPause(vm: Vm): void {
  vm.onHypercall(HCALL_PAUSE, (vcpu) => {
    vcpu.regs[Reg.A0] = 0;
    vm.pause('driver step');
  });
}

function boot(program: string, options: BootOptions = {}): Machine {
  const { image, symbols } = assemble(`${GUEST_LIBRARY}\n${BALLOON_LIBRARY}\n${program}`, { fileName: 'driver.s' });
  const hv = createHypervisor({ hostMemoryBytes: options.hostMemoryBytes ?? 8 * MIB });
  const vm = hv.createVm({ memoryBytes: options.memoryBytes ?? 1 * MIB, mmu: { mode: options.mmu ?? 'shadow' } });
  const devices = attachStandardDevices(vm, { output: new CaptureSink(), balloon: options.balloon ?? {} });
  onPause(vm);
  vm.loadImage(image);
  return { hv, vm, devices, balloon: devices.balloon!, symbols };
}

/** Runs (resuming a pause) until the VM pauses or stops. */
function step(m: Pick<Machine, 'hv' | 'vm'>): StopReason {
  m.vm.resume();
  const [result] = m.hv.run({ maxInstructions: 50_000_000 }, [m.vm]);
  return result!.reason;
}

function expectPaused(reason: StopReason): void {
  if (reason.kind !== 'paused') expect.fail(`expected the driver to pause, got ${JSON.stringify(reason, (key, value) => (key === 'error' ? undefined : value))}`);
}

function expectHalted(reason: StopReason, code: number): void {
  if (reason.kind !== 'halted') expect.fail(`expected the driver to halt, got ${JSON.stringify(reason, (key, value) => (key === 'error' ? undefined : value))}`);
  expect(reason.exitCode).toBe(code);
}

function guestError(reason: StopReason): string {
  if (reason.kind !== 'guest-error') expect.fail(`expected a guest error, got ${JSON.stringify(reason, (key, value) => (key === 'error' ? undefined : value))}`);
  return reason.message;
}

const framesUsed = (m: Pick<Machine, 'hv'>): number => m.hv.poolStats().usedFrames;
const ballooned = (vm: Vm): number => vm.memory.countInState(AbsentState.BALLOONED);
const statesOf = (vm: Vm, first: number, count: number): number[] => Array.from({ length: count }, (_, i) => vm.memory.stateOf(first + i));

describe('the balloon device: inflate and deflate', () => {
  it('sits after the block device in the device table, and the standard machine has none unless asked', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 * MIB });
    const plain = attachStandardDevices(hv.createVm({ memoryBytes: MIB }), { output: new CaptureSink() });
    expect(plain.balloon).toBeNull();
    const vm = hv.createVm({ memoryBytes: MIB });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), balloon: { targetPages: 3 } });
    expect(vm.bus.layout().map((w) => w.name)).toEqual(['console', 'timer', 'power', 'bootargs', 'balloon']);
    expect(devices.balloon!.target).toBe(3);
    // Bad options refuse before any device is attached.
    const other = hv.createVm({ memoryBytes: MIB });
    expect(() => attachStandardDevices(other, { balloon: { targetPages: 257 } })).toThrow(/0 to 256 pages/);
    expect(() => attachStandardDevices(other, { balloon: { statsPollingIntervalS: 1.5 } })).toThrow(/whole seconds/);
    expect(other.bus.layout()).toEqual([]);
  });

  it('inflates 48 MiB the driver wrote: the pages are ballooned, host frames and the process RSS fall; deflated pages read zeros', () => {
    const pages = 12_288; // 48 MiB
    const region = 8 * MIB;
    const array = 4 * MIB;
    const m = boot(`
_start:
        find_balloon
        li      a0, ${region}
        li      a1, ${pages}
        call    fill_pages
        pause                                   # the host measures
        li      a0, ${array}
        li      a1, ${region / PAGE_SIZE}
        li      a2, ${pages}
        call    pfn_array
        li      a0, CMD_INFLATE
        li      a1, ${array}
        li      a2, ${pages}
        call    batched
        lw      a0, BAL_ACTUAL(s1)
        sw      a0, 0(zero)
        pause                                   # the host looks at the balloon
        li      a0, CMD_DEFLATE
        li      a1, ${array}
        li      a2, ${pages}
        call    batched
        li      a0, ${region}
        li      a1, ${pages}
        call    or_firsts
        exit_reg a0                             # 0: every deflated page reads zeros where it held address + 1
`, { memoryBytes: 64 * MIB, hostMemoryBytes: 80 * MIB });
    m.balloon.setTarget(pages);
    expectPaused(step(m));
    const usedBefore = framesUsed(m);
    const rssBefore = processRss();
    expect(statesOf(m.vm, region / PAGE_SIZE, pages).every((s) => s === PageState.PRESENT)).toBe(true);

    expectPaused(step(m));
    const rssAfter = processRss();
    expect(m.balloon.actual).toBe(pages);
    expect(new DataView(m.vm.readPhysical(0, 4).buffer).getUint32(0, true)).toBe(pages); // ACTUAL as the guest read it
    expect(ballooned(m.vm)).toBe(pages);
    expect(statesOf(m.vm, region / PAGE_SIZE, pages).every((s) => s === PageState.BALLOONED)).toBe(true);
    expect(m.balloon.counters).toMatchObject({ inflated: pages, deflated: 0, guestErrors: 0 });
    // The array's 12 pages and page 0 were touched in between; every ballooned frame went back to the pool.
    expect(framesUsed(m)).toBe(usedBefore + 13 - pages);
    // ... and to the OS: RSS falls by (nearly) 48 MiB.
    expect(rssBefore - rssAfter).toBeGreaterThan(0.8 * pages * PAGE_SIZE);

    expectHalted(step(m), 0);
    expect(m.balloon.actual).toBe(0);
    expect(ballooned(m.vm)).toBe(0);
    expect(m.balloon.counters).toMatchObject({ inflated: pages, deflated: pages });
    // Reading the deflated pages gave each a fresh zero frame again.
    expect(framesUsed(m)).toBe(usedBefore + 13);
  });

  it('gives the host the target, actual and features through the registers', () => {
    const m = boot(`
_start:
        find_balloon
        lw      t0, BAL_TARGET(s1)
        sw      t0, 0(zero)
        lw      t0, BAL_FEATURES(s1)
        sw      t0, 4(zero)
        li      t0, 0x1234
        sw      t0, BAL_TARGET(s1)              # read-only: ignored
        sw      t0, BAL_ACTUAL(s1)
        sw      t0, BAL_STATUS(s1)
        sw      t0, 0x40(s1)                    # empty offset
        lw      t0, BAL_TARGET(s1)
        sw      t0, 8(zero)
        lw      t0, BAL_COMMAND(s1)             # write-only: reads 0
        sw      t0, 12(zero)
        lw      t0, 0x40(s1)
        sw      t0, 16(zero)
        pause
        lw      t0, BAL_TARGET(s1)
        sw      t0, 0(zero)
        lw      t0, BAL_FEATURES(s1)
        sw      t0, 4(zero)
        exit    0
`, { balloon: { targetPages: 17, freePageReporting: true, statsPollingIntervalS: 1 } });
    const words = (): number[] => Array.from(new Uint32Array(m.vm.readPhysical(0, 20).buffer));
    expectPaused(step(m));
    expect(words()).toEqual([17, BalloonFeature.FREE_PAGE_REPORTING | BalloonFeature.STATS, 17, 0, 0]);
    m.balloon.setTarget(200);
    m.balloon.setDeflateOnOom(true);
    m.balloon.setStatsPollingInterval(0);
    expect(() => m.balloon.setTarget(257)).toThrow(/0 to 256 pages/);
    expect(() => m.balloon.setTarget(-1)).toThrow(/0 to 256 pages/);
    expectHalted(step(m), 0);
    expect(words().slice(0, 2)).toEqual([200, BalloonFeature.DEFLATE_ON_OOM | BalloonFeature.FREE_PAGE_REPORTING]);
    expect(m.balloon.target).toBe(200);
  });

  it('reports free pages with the feature: their frames go, the pages stay the guest\'s and read zeros', () => {
    const m = boot(`
_start:
        find_balloon
        li      a0, 0x40000
        li      a1, 8
        call    fill_pages
        pause
        bcmd    CMD_REPORT_FREE, list, 6        # pages 0x40..0x44, 0x40 twice
        bnez    a0, 9f
        pause
        li      a0, 0x40000
        li      a1, 8
        call    or_pages                        # the three pages not reported still hold address + 1
        exit_reg a0
9:      exit    98

        .data
        .align  2
list:   .word   0x40, 0x41, 0x42, 0x43, 0x40, 0x44
`, { balloon: { freePageReporting: true } });
    expectPaused(step(m));
    const before = framesUsed(m);
    expectPaused(step(m));
    expect(framesUsed(m)).toBe(before - 5);
    const U = PageState.UNTOUCHED;
    const P = PageState.PRESENT;
    expect(statesOf(m.vm, 0x40, 8)).toEqual([U, U, U, U, U, P, P, P]);
    expect(m.balloon.actual).toBe(0);
    expect(m.balloon.counters.reportedFree).toBe(5);
    const reason = step(m);
    expectHalted(reason, (0x45000 + 1) | (0x46000 + 1) | (0x47000 + 1));
  });

  it('takes the guest\'s statistics: known tags by name, unknown ones counted, missing ones kept', () => {
    const m = boot(`
_start:
        find_balloon
        pause
        lw      t0, BAL_STATS_SEQ(s1)
        sw      t0, 0(zero)
        bcmd    CMD_STATS, first, 5
        bnez    a0, 9f
        pause
        bcmd    CMD_STATS, second, 1
        exit    0
9:      exit    98

        .data
        .align  2
first:  .word   ${BalloonStatTag.FREE}, 100, ${BalloonStatTag.TOTAL}, 256, 99, 7, ${BalloonStatTag.OOM_KILLS}, 3, ${BalloonStatTag.SWAP_IN}, 0xffffffff
second: .word   ${BalloonStatTag.FREE}, 90
`, { balloon: { statsPollingIntervalS: 5 } });
    expectPaused(step(m));
    expect(m.balloon.lastStats).toBeNull();
    expect(m.balloon.requestStats()).toBe(1);
    expect(m.balloon.requestStats()).toBe(2);
    expectPaused(step(m));
    expect(m.vm.readPhysical(0, 1)[0]).toBe(2);
    const first = m.balloon.lastStats!;
    expect(first.values).toEqual({ freePages: 100, totalPages: 256, oomKills: 3, swapIn: 0xffff_ffff });
    expect(first).toMatchObject({ updates: 1, seq: 2 });
    expect(first.atInstruction).toBeGreaterThan(0);
    expect(m.balloon.counters.unknownStatTags).toBe(1);
    expectHalted(step(m), 0);
    expect(m.balloon.lastStats!.values).toEqual({ freePages: 90, totalPages: 256, oomKills: 3, swapIn: 0xffff_ffff });
    expect(m.balloon.lastStats!.updates).toBe(2);
    expect(m.balloon.counters.statsReceived).toBe(2);
  });
});

describe('touching a ballooned page is a guest error naming it', () => {
  const inflateThen = (access: string): string => `
_start:
        find_balloon
        li      a0, 0x50000
        li      a1, 1
        call    fill_pages
        bcmd    CMD_INFLATE, list, 1
        ${access}
        exit    0

        .data
        .align  2
list:   .word   0x50
`;

  for (const [what, code, word] of [
    ['a load', 'li t0, 0x50ff0\n        lw a0, 0(t0)', 'read'],
    ['a store', 'li t0, 0x50010\n        sw t0, 0(t0)', 'write'],
    ['a fetch', 'li t0, 0x50000\n        jalr ra, t0, 0', 'instruction fetch'],
  ] as const) {
    it(`${what}`, () => {
      const m = boot(inflateThen(code));
      const message = guestError(step(m));
      expect(message).toContain(`${word} of guest page 80 (guest-physical 0x50000), which is in the balloon`);
      expect(m.balloon.counters.guestErrors).toBe(1);
      expect(m.balloon.lastError).toBe(message);
      expect(m.vm.memory.stateOf(0x50)).toBe(PageState.BALLOONED);
    });
  }

  it('a hypercall whose buffer is in the balloon', () => {
    const m = boot(inflateThen('li a1, 0x50000\n        li a2, 16\n        li a0, HCALL_CONSOLE_WRITE\n        hcall'));
    expect(guestError(step(m))).toContain('read of guest page 80 (guest-physical 0x50000), which is in the balloon');
  });

  it('a driver that inflates its own code page stops at its next instruction', () => {
    const m = boot(`
_start:
        find_balloon
        la      t0, list
        la      t1, here
        srli    t1, t1, 12
        sw      t1, 0(t0)
        bcmd    CMD_INFLATE, list, 1
here:   exit    0

        .data
        .align  2
list:   .word   0
`);
    const codePage = m.symbols.get('here')! >>> 12;
    expect(guestError(step(m))).toMatch(new RegExp(`instruction fetch of guest page ${codePage} .*in the balloon`));
  });

  for (const mode of ['shadow', 'nested'] as const) {
    it(`a page-table walk through a ballooned root table (${mode} MMU)`, () => {
      const rootGpn = 0x20;
      const ptbr = (Ptbr.MODE_SV32 | rootGpn) >>> 0;
      const m = boot(`
_start:
        find_balloon
        li      t0, ${ptbr}
        csrrw   zero, ptbr, t0
        li      t0, 0x80000
        lw      a0, 0(t0)                       # a walk through the root table
        bcmd    CMD_INFLATE, list, 1            # the root table goes into the balloon
        li      t0, 0x90000
        lw      a0, 0(t0)                       # a page never touched: another walk
        exit    0

        .data
        .align  2
list:   .word   ${rootGpn}
`, { mmu: mode });
      // An identity map of the first 4 MiB (RAM) and of the device windows, as superpages.
      const table = new Uint32Array(1024);
      const flags = Pte.V | Pte.R | Pte.W | Pte.X | Pte.A | Pte.D;
      table[0] = ((0 << PTE_PPN_SHIFT) | flags) >>> 0;
      table[0xf0000000 >>> 22] = (((0xf0000000 >>> 12) << PTE_PPN_SHIFT) | flags) >>> 0;
      m.vm.writePhysical(rootGpn * PAGE_SIZE, new Uint8Array(table.buffer));
      expect(guestError(step(m))).toContain(`read of guest page ${rootGpn} (guest-physical 0x20000), which is in the balloon`);
    });
  }

  it('a block-device DMA into a ballooned page is BAD_DMA, not a host error', () => {
    const dir = mkdtempSync(join(root, 'dma-'));
    const disk = join(dir, 'disk.img');
    // A raw image of 8 sectors.
    writeFileSync(disk, new Uint8Array(8 * 512).fill(7));
    const { image } = assemble(`${GUEST_LIBRARY}\n${BALLOON_LIBRARY}
_start:
        find_balloon
        bcmd    CMD_INFLATE, list, 1
        li      a0, 5
        call    find_device
        li      t0, 0
        sw      t0, 0(a0)
        sw      t0, 4(a0)
        li      t0, 1
        sw      t0, 8(a0)
        li      t0, 0x50000
        sw      t0, 12(a0)
        li      t0, 1
        sw      t0, 16(a0)                      # READ into the ballooned page
        lw      a0, 20(a0)
        exit_reg a0

        .data
        .align  2
list:   .word   0x50
`, { fileName: 'dma.s' });
    const hv = createHypervisor({ hostMemoryBytes: 8 * MIB });
    const vm = hv.createVm({ memoryBytes: MIB });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk, balloon: {} });
    vm.loadImage(image);
    const [result] = hv.run({ maxInstructions: 1_000_000 }, [vm]);
    expectHalted(result!.reason, 3); // BlockStatus.BAD_DMA
    expect(vm.memory.stateOf(0x50)).toBe(PageState.BALLOONED);
    devices.block!.close();
  });
});

describe('hostile drivers get a guest error and nothing is released', () => {
  /**
   * Writes pages 0x40..0x47, inflates 0x40 and 0x41, pauses, then runs `bad`: the guest error
   * must name `message` and leave every page, frame and counter as it was at the pause.
   */
  const cases: [string, string, RegExp, BalloonOptions?][] = [
    ['a page number beyond RAM', 'bcmd CMD_INFLATE, beyond, 2', /INFLATE: entry 1 is guest page 256 \(guest-physical 0x100000\), beyond RAM \(256 pages\)/],
    ['a huge page number', 'bcmd CMD_INFLATE, huge, 1', /entry 0 is guest page 4294967295 .*beyond RAM/],
    ['inflating a page twice', 'bcmd CMD_INFLATE, again, 2', /INFLATE: entry 1: guest page 64 \(guest-physical 0x40000\) is already in the balloon/],
    ['one page twice in one array', 'bcmd CMD_INFLATE, twice, 3', /INFLATE: entries 0 and 2 both name guest page 66/],
    ['deflating a page not in the balloon', 'bcmd CMD_DEFLATE, notin, 2', /DEFLATE: entry 1: guest page 66 \(guest-physical 0x42000\) is not in the balloon/],
    ['deflating a page twice in one array', 'bcmd CMD_DEFLATE, dtwice, 2', /DEFLATE: entries 0 and 1 both name guest page 64/],
    ['a misaligned array', 'la t1, fresh\n        addi t1, t1, 2\n        sw t1, BAL_PFN_ADDR(s1)\n        li t1, 1\n        sw t1, BAL_PFN_COUNT(s1)\n        li t1, CMD_INFLATE\n        sw t1, BAL_COMMAND(s1)', /INFLATE: PFN_ADDR 0x[0-9a-f]+ is not 4-byte aligned/],
    ['an array past the end of RAM', `bcmd CMD_INFLATE, ${MIB - 4}, 2`, /INFLATE: the array at guest-physical 0xffffc\+8 is not inside RAM/],
    ['an array in a ballooned page', 'bcmd CMD_DEFLATE, 0x41ffc, 1', /DEFLATE: the array at guest-physical 0x41ffc\+4 lies in guest page 65 .*in the balloon/],
    ['a count above 1024', `bcmd CMD_INFLATE, fresh, ${BALLOON_MAX_ENTRIES + 1}`, /INFLATE with PFN_COUNT 1025: at most 1024 entries/],
    ['an unknown command', 'bcmd 5, fresh, 1', /unknown command 5/],
    ['command 0', 'bcmd 0, fresh, 1', /unknown command 0/],
    ['REPORT_FREE without the feature', 'bcmd CMD_REPORT_FREE, fresh, 2', /REPORT_FREE without free-page reporting/],
    ['REPORT_FREE of a ballooned page', 'bcmd CMD_REPORT_FREE, again, 2', /REPORT_FREE: entry 1: guest page 64 .*is in the balloon/, { freePageReporting: true }],
    ['a STATS array past the end of RAM', `bcmd CMD_STATS, ${MIB - 8}, 2`, /STATS: the array at guest-physical 0xffff8\+16 is not inside RAM/],
  ];

  for (const [what, bad, message, options] of cases) {
    it(what, () => {
      const m = boot(`
_start:
        find_balloon
        li      a0, 0x40000
        li      a1, 8
        call    fill_pages
        bcmd    CMD_INFLATE, first, 2
        bnez    a0, 9f
        pause
        ${bad}
        exit    0
9:      exit    98

        .data
        .align  2
first:  .word   0x40, 0x41
beyond: .word   0x42, 256
huge:   .word   0xffffffff
again:  .word   0x43, 0x40
twice:  .word   0x42, 0x43, 0x42
notin:  .word   0x41, 0x42
dtwice: .word   0x40, 0x40
fresh:  .word   0x44, 0x45, 0x46
`, { balloon: options ?? {} });
      expectPaused(step(m));
      const frames = framesUsed(m);
      const states = statesOf(m.vm, 0, 256);
      expect(guestError(step(m))).toMatch(message);
      expect(framesUsed(m)).toBe(frames);
      expect(statesOf(m.vm, 0, 256)).toEqual(states);
      expect(m.balloon.actual).toBe(2);
      expect(ballooned(m.vm)).toBe(2);
      expect(m.balloon.counters).toMatchObject({ inflated: 2, deflated: 0, reportedFree: 0, guestErrors: 1 });
      expect(m.balloon.read(m.vm.vcpus[0]!, BalloonRegister.STATUS)).toBe(BalloonStatus.REFUSED);
    });
  }
});

describe('the duplicate check across many commands', () => {
  it('a page named once per command is never taken for a repeat, past 65,536 commands (the marks wrap)', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 * MIB });
    const vm = hv.createVm({ memoryBytes: 1 * MIB, name: 'marks' });
    const balloon = attachBalloon(vm);
    const vcpu = vm.vcpus[0]!;
    const ARRAY = 0x1000;
    const command = (cmd: number, gpns: number[]): number => {
      vm.memory.writePhysical(ARRAY, new Uint8Array(new Uint32Array(gpns).buffer));
      balloon.write(vcpu, BalloonRegister.PFN_ADDR, ARRAY);
      balloon.write(vcpu, BalloonRegister.PFN_COUNT, gpns.length);
      balloon.write(vcpu, BalloonRegister.COMMAND, cmd);
      return balloon.read(vcpu, BalloonRegister.STATUS);
    };
    expect(command(BalloonCommand.INFLATE, [0x40, 0x41])).toBe(BalloonStatus.OK); // the first command's mark
    for (let i = 0; i < 65_534; i++) expect(command(i % 2 === 0 ? BalloonCommand.INFLATE : BalloonCommand.DEFLATE, [0x50])).toBe(BalloonStatus.OK);
    // The mark has gone round to the first command's again: page 0x40 must not look named already.
    expect(command(BalloonCommand.DEFLATE, [0x40])).toBe(BalloonStatus.OK);
    expect(command(BalloonCommand.DEFLATE, [0x41, 0x41])).toBe(BalloonStatus.REFUSED);
    expect(balloon.lastError).toMatch(/DEFLATE: entries 0 and 1 both name guest page 65/);
    expect(balloon.actual).toBe(1);
    expect(balloon.counters.guestErrors).toBe(1);
  });
});

describe('the balloon across checkpoints, live snapshots, forks and resets', () => {
  /** Writes pages 0x40..0x4f, inflates 0x40..0x47, pauses; then deflates them and exits with the OR of every word of 0x40..0x47. */
  const DRIVER = `
_start:
        find_balloon
        li      a0, 0x40000
        li      a1, 16
        call    fill_pages
        li      a0, CMD_INFLATE
        la      a1, list
        li      a2, 8
        call    batched
        pause
        li      a0, CMD_DEFLATE
        la      a1, list
        li      a2, 8
        call    batched
        li      a0, 0x40000
        li      a1, 8
        call    or_pages
        exit_reg a0

        .data
        .align  2
list:   .word   0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47
`;

  function booted(): Machine {
    const m = boot(DRIVER, { balloon: { targetPages: 8, deflateOnOom: true, statsPollingIntervalS: 3 } });
    m.balloon.requestStats();
    expectPaused(step(m));
    expect(m.balloon.actual).toBe(8);
    return m;
  }

  for (const mode of ['lazy', 'eager', 'map'] as RestoreMode[]) {
    it(`a ${mode} restore keeps the pages ballooned and the device's state; the file stores none of their bytes`, () => {
      const m = booted();
      const path = join(root, `balloon-${mode}.ckpt`);
      const stats = saveVmCheckpoint(m.vm, path);
      expect(stats.pagesStored).toBe(m.vm.memory.census().present); // the ballooned pages are not among them
      let restoredDevices: StandardDevices | undefined;
      const restored = restoreVmCheckpoint(m.hv, path, {
        mode,
        name: `restored-${mode}`,
        attach: (vm) => {
          restoredDevices = attachStandardDevices(vm, { output: new CaptureSink(), balloon: {} });
          onPause(vm);
        },
      });
      const vm = restored.vm;
      const device = restoredDevices!.balloon!;
      expect(statesOf(vm, 0x40, 8).every((s) => s === PageState.BALLOONED)).toBe(true);
      expect(ballooned(vm)).toBe(8);
      expect(device.actual).toBe(8);
      expect(device.target).toBe(8);
      expect(device.deflateOnOom).toBe(true);
      expect(device.statsPollingIntervalS).toBe(3);
      expect(device.statsSequence).toBe(1);
      expect(vm.readPhysical(0x48000, 4)[0]).toBe(1); // written pages came back (0x48000 + 1)
      expect(() => vm.readPhysical(0x40000, 4)).toThrow(/in the balloon/);
      // Both go on the same way: deflate and read zeros.
      expectHalted(step({ hv: m.hv, vm }), 0);
      expectHalted(step(m), 0);
      restored.close();
    });
  }

  it('refuses a damaged saved state, naming the field', () => {
    const m = booted();
    const saved = m.balloon.saveState();
    expect(saved.pages).toEqual([0x40, 8]);
    const bad: [unknown, RegExp][] = [
      [{ ...saved, pages: [0x40] }, /pages is not a list of \(first page, page count\) pairs/],
      [{ ...saved, pages: [0x40, 8, 0x44, 1] }, /pages\[2\] is not an integer from 72 to 255/],
      [{ ...saved, pages: [250, 7] }, /pages\[1\] is not an integer from 1 to 6/],
      [{ ...saved, targetPages: 257 }, /targetPages is not an integer from 0 to 256/],
      [{ ...saved, deflateOnOom: 1 }, /deflateOnOom is not true or false/],
      [{ ...saved, registers: { ...saved.registers, status: 7 } }, /registers.status is not a STATUS value/],
      [null, /saved balloon state is not an object/],
    ];
    for (const [state, message] of bad) {
      expect(() => m.balloon.checkState(state)).toThrow(DeviceStateError);
      expect(() => m.balloon.checkState(state)).toThrow(message);
    }
  });

  it('restoring a state in place makes exactly its pages ballooned', () => {
    const m = booted();
    const saved = m.balloon.saveState();
    m.balloon.restoreState({ ...saved, pages: [0x44, 6] }); // 0x40-0x43 leave, 0x48 and 0x49 (present) join
    const U = PageState.UNTOUCHED;
    const B = PageState.BALLOONED;
    expect(statesOf(m.vm, 0x40, 10)).toEqual([U, U, U, U, B, B, B, B, B, B]);
    expect(m.balloon.actual).toBe(6);
    expect(ballooned(m.vm)).toBe(6);
  });

  it('a live snapshot taken before an inflate keeps the pages\' contents at the pause', () => {
    const m = boot(`
_start:
        find_balloon
        li      a0, 0x40000
        li      a1, 4
        call    fill_pages
        pause                                   # the snapshot starts here
        bcmd    CMD_INFLATE, list, 4
        pause
        exit    0

        .data
        .align  2
list:   .word   0x40, 0x41, 0x42, 0x43
`);
    expectPaused(step(m));
    const path = join(root, 'live.ckpt');
    const snapshot = startLiveSnapshot(m.vm, path, { pagesPerTick: 1, everyInstructions: 1_000_000_000 });
    expectPaused(step(m));
    expect(ballooned(m.vm)).toBe(4);
    snapshot.finish();
    let devices: StandardDevices | undefined;
    const restored = restoreVmCheckpoint(m.hv, path, { mode: 'eager', name: 'from-live', attach: (vm) => void (devices = attachStandardDevices(vm, { balloon: {} })) });
    expect(devices!.balloon!.actual).toBe(0);
    expect(statesOf(restored.vm, 0x40, 4).every((s) => s === PageState.PRESENT)).toBe(true);
    for (let i = 0; i < 4; i++) expect(new DataView(restored.vm.readPhysical((0x40 + i) * PAGE_SIZE, 4).buffer).getUint32(0, true)).toBe((0x40 + i) * PAGE_SIZE + 1);
    restored.close();
  });

  it('a fork keeps the pages ballooned in both VMs, each deflating its own', () => {
    const m = booted();
    const { vm: child, devices } = m.hv.forkVmWith(m.vm, {
      attach: (vm) => {
        onPause(vm);
        return attachStandardDevices(vm, { output: new CaptureSink(), balloon: {} });
      },
    });
    const device = devices.balloon!;
    expect(device.actual).toBe(8);
    expect(device.target).toBe(8);
    expect(device.deflateOnOom).toBe(true);
    expect(statesOf(child, 0x40, 8).every((s) => s === PageState.BALLOONED)).toBe(true);
    expect(ballooned(child)).toBe(8);
    expect(() => child.readPhysical(0x47000, 4)).toThrow(/in the balloon/);
    // The child deflates; the parent's pages stay in its balloon.
    expectHalted(step({ hv: m.hv, vm: child }), 0);
    expect(device.actual).toBe(0);
    expect(ballooned(child)).toBe(0);
    expect(ballooned(m.vm)).toBe(8);
    expect(m.balloon.actual).toBe(8);
    expectHalted(step(m), 0);
  });

  it('a reset empties the balloon and keeps the host\'s target', () => {
    const m = booted();
    m.vm.reset();
    expect(m.balloon.actual).toBe(0);
    expect(ballooned(m.vm)).toBe(0);
    expect(m.balloon.target).toBe(8);
  });

  it('attachBalloon alone: one per VM', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 * MIB });
    const vm = hv.createVm({ memoryBytes: MIB });
    attachBalloon(vm);
    expect(() => attachBalloon(vm)).toThrow(/state 'balloon' is already registered/);
  });
});

// ---------------------------------------------------------------------------------------------
// Random drivers against a model of the rules

/** A driver that does what the host writes into its mailbox, pausing after each step. */
const MAILBOX = 0x10000;
const ARRAY = 0x11000;
const INTERPRETER = `
_start:
        find_balloon
loop:   pause
        li      t0, ${MAILBOX}
        lw      t1, 0(t0)
        li      t2, 1
        beq     t1, t2, command
        li      t2, 2
        beq     t1, t2, store
        li      t2, 3
        beq     t1, t2, load
        exit    0
command:
        lw      a1, 8(t0)
        sw      a1, BAL_PFN_ADDR(s1)
        lw      a1, 12(t0)
        sw      a1, BAL_PFN_COUNT(s1)
        lw      a1, 4(t0)
        sw      a1, BAL_COMMAND(s1)
        lw      a1, BAL_STATUS(s1)
        sw      a1, 32(t0)
        lw      a1, BAL_ACTUAL(s1)
        sw      a1, 36(t0)
        j       loop
store:  lw      a1, 4(t0)
        lw      a2, 8(t0)
        sw      a2, 0(a1)
        j       loop
load:   lw      a1, 4(t0)
        lw      a2, 0(a1)
        sw      a2, 32(t0)
        j       loop
`;

/** Pages the random drivers name: 32..63 of 256, plus a few beyond RAM. */
const FIRST = 32;
const LAST = 63;

type Op =
  | { kind: 'command'; command: number; pages: number[]; misalign: boolean; countDelta: number }
  | { kind: 'store' | 'load'; page: number };

const anyPage = fc.oneof({ weight: 12, arbitrary: fc.integer({ min: FIRST, max: LAST }) }, { weight: 1, arbitrary: fc.constantFrom(256, 257, 0xffff_ffff) });
const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ kind: fc.constant('command' as const), command: fc.constantFrom(1, 1, 2, 2, 3), pages: fc.array(anyPage, { maxLength: 6 }), misalign: fc.constant(false), countDelta: fc.constant(0) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('command' as const), command: fc.constantFrom(0, 4, 5, 0xffff_ffff), pages: fc.array(anyPage, { maxLength: 4 }), misalign: fc.boolean(), countDelta: fc.constantFrom(0, BALLOON_MAX_ENTRIES) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constantFrom('store' as const, 'load' as const), page: fc.integer({ min: FIRST, max: LAST }) }) },
);

/** Whether the rules accept an op, given the pages in the balloon (and how the model changes). */
function expected(op: Op, inBalloon: Set<number>, reporting: boolean): { ok: boolean; next: Set<number> } {
  const next = new Set(inBalloon);
  if (op.kind !== 'command') return { ok: !inBalloon.has(op.page), next };
  const { command, pages } = op;
  const count = pages.length + op.countDelta;
  if (![1, 2, 3, 4].includes(command)) return { ok: false, next };
  if (command === 3 && !reporting) return { ok: false, next };
  if (count > BALLOON_MAX_ENTRIES) return { ok: false, next };
  if (count === 0) return { ok: true, next };
  if (op.misalign) return { ok: false, next };
  if (command === 4) return { ok: true, next };
  const seen = new Set<number>();
  for (const page of pages) {
    if (page >= 256) return { ok: false, next };
    if (command !== 3 && seen.has(page)) return { ok: false, next };
    seen.add(page);
    if (command === 1 && inBalloon.has(page)) return { ok: false, next };
    if (command === 2 && !inBalloon.has(page)) return { ok: false, next };
    if (command === 3 && inBalloon.has(page)) return { ok: false, next };
  }
  for (const page of pages) {
    if (command === 1) next.add(page);
    if (command === 2) next.delete(page);
  }
  return { ok: true, next };
}

describe('random drivers (property)', () => {
  it('never crash the host; every accepted command does what the rules say and actual = the pages ballooned; every refused one changes nothing', () => {
    const { image } = assemble(`${GUEST_LIBRARY}\n${BALLOON_LIBRARY}\n${INTERPRETER}`, { fileName: 'interpreter.s' });
    const hv = createHypervisor({ hostMemoryBytes: 16 * MIB });
    fc.assert(
      fc.property(fc.array(opArbitrary, { minLength: 1, maxLength: 25 }), fc.boolean(), (ops, reporting) => {
        const vm = hv.createVm({ memoryBytes: MIB });
        try {
          const devices = attachStandardDevices(vm, { output: new CaptureSink(), balloon: { freePageReporting: reporting } });
          const balloon = devices.balloon!;
          onPause(vm);
          vm.loadImage(image);
          const m = { hv, vm };
          expectPaused(step(m));
          let model = new Set<number>();
          const mailbox = new DataView(new ArrayBuffer(16));
          for (const op of ops) {
            const { ok, next } = expected(op, model, reporting);
            if (op.kind === 'command') {
              const words = new Uint32Array(Math.max(op.pages.length, 1) * 2);
              op.pages.forEach((page, i) => (words[i] = page));
              vm.writePhysical(ARRAY, new Uint8Array(words.buffer));
              mailbox.setUint32(0, 1, true);
              mailbox.setUint32(4, op.command, true);
              mailbox.setUint32(8, ARRAY + (op.misalign ? 2 : 0), true);
              mailbox.setUint32(12, op.pages.length + op.countDelta, true);
            } else {
              mailbox.setUint32(0, op.kind === 'store' ? 2 : 3, true);
              mailbox.setUint32(4, op.page * PAGE_SIZE + 8, true);
              mailbox.setUint32(8, op.page, true);
            }
            vm.writePhysical(MAILBOX, new Uint8Array(mailbox.buffer));
            const frames = framesUsed(m);
            const states = statesOf(vm, FIRST, LAST - FIRST + 1);
            const reason = step(m);
            if (!ok) {
              guestError(reason);
              expect(framesUsed(m)).toBe(frames);
              expect(statesOf(vm, FIRST, LAST - FIRST + 1)).toEqual(states);
              expect(balloon.actual).toBe(model.size);
              expect(ballooned(vm)).toBe(model.size);
              return;
            }
            expectPaused(reason);
            model = next;
            expect(balloon.actual).toBe(model.size);
            expect(ballooned(vm)).toBe(model.size);
            for (let page = FIRST; page <= LAST; page++) expect(vm.memory.stateOf(page) === PageState.BALLOONED).toBe(model.has(page));
            if (op.kind === 'command') expect(new DataView(vm.readPhysical(MAILBOX + 32, 8).buffer).getUint32(4, true)).toBe(model.size);
            if (op.kind === 'command' && op.command === 3) for (const page of op.pages) expect(vm.memory.stateOf(page)).toBe(PageState.UNTOUCHED);
          }
        } finally {
          hv.destroyVm(vm);
        }
      }),
      { numRuns: 150 },
    );
    expect(hv.poolStats().usedFrames).toBe(0);
  });
});
