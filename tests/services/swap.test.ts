// Hypervisor swap (services/memory/swap.ts) on a real guest: pages filled by the guest go to a
// real file mid-run, their host frames go back to the OS (framesHeld and RSS drop), and the guest
// reads every byte back through the SWAPPED resolver. A damaged or closed swap file stops the VM
// with a host error; it never hands the guest wrong bytes.
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { Hcall, PAGE_SIZE, Reg } from '../../guest-isa/arch.ts';
import { createHypervisor, P2mFlag, PageState } from '../../kernel/index.ts';
import type { Hypervisor, RunResult, Vm, VmConfig } from '../../kernel/index.ts';
import { processRss } from '../../native/index.ts';
import { SwapError, SwapFile } from '../../services/memory/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-swap-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const HCALL_READY = 0x200;
const DATA = 0x40_0000;
const PAGES = 2048;
const FLAG = 0x6000;
const RESULT = 0x6004;
const MUL = 0x9e37_79b1 | 0;
const SEED = 0x5a5a;

/**
 * Round r (0..ROUNDS-1): fill PAGES pages at DATA (every 4th page stays zero, the others hold
 * ((page*1024 + word) * MUL + SEED + r)), report READY (a1 = r), wait until the host sets FLAG to
 * r+1, then verify every word, counting mismatches and summing the words read. Exits with the
 * mismatch count; the sum is left at RESULT. Memory is identity-mapped with 4 MiB superpages.
 */
function swapGuest(rounds: number): string {
  return `
        .equ    PT_BASE, 0x5000
        .equ    MAP_BYTES, 0x1000000
        .macro  enable_superpages
        li      t0, PT_BASE
        li      t1, MAP_BYTES >> 22
        li      t3, 0
1:      slli    a2, t3, 20
        ori     a2, a2, 0xcf            # V R W X A D
        slli    a3, t3, 2
        add     a3, a3, t0
        sw      a2, 0(a3)
        addi    t3, t3, 1
        bne     t3, t1, 1b
        li      t1, 0x80000000 | (PT_BASE >> 12)
        csrw    ptbr, t1
        .endm
_start: enable_superpages
        li      gp, 0                   # round
        li      sp, 0                   # mismatches
        li      s3, 0                   # sum of words read
round:  li      s0, ${DATA}
        li      s1, 0                   # page
fpage:  andi    t0, s1, 3
        li      t1, 3
        beq     t0, t1, fskip
        slli    t2, s1, 10
        li      t3, 0
        li      a3, ${MUL}
        li      t1, ${SEED}
        add     t1, t1, gp
1:      add     t0, t2, t3
        mul     t0, t0, a3
        add     t0, t0, t1
        sw      t0, 0(s0)
        addi    s0, s0, 4
        addi    t3, t3, 1
        li      t0, 1024
        bne     t3, t0, 1b
        j       fnext
fskip:  li      t0, 4096
        add     s0, s0, t0
fnext:  addi    s1, s1, 1
        li      t0, ${PAGES}
        bne     s1, t0, fpage
        li      a0, ${HCALL_READY}
        mv      a1, gp
        hcall
        addi    t1, gp, 1
wait:   lw      t0, ${FLAG}(zero)
        bne     t0, t1, wait
        li      s0, ${DATA}
        li      s1, 0
vpage:  li      a3, ${MUL}
        li      t1, ${SEED}
        add     t1, t1, gp
        andi    t0, s1, 3
        li      t3, 3
        bne     t0, t3, 2f
        li      a3, 0
        li      t1, 0
2:      slli    t2, s1, 10
        li      t3, 0
3:      add     t0, t2, t3
        mul     t0, t0, a3
        add     t0, t0, t1
        lw      a1, 0(s0)
        add     s3, s3, a1
        beq     a1, t0, 4f
        addi    sp, sp, 1
4:      addi    s0, s0, 4
        addi    t3, t3, 1
        li      t0, 1024
        bne     t3, t0, 3b
        addi    s1, s1, 1
        li      t0, ${PAGES}
        bne     s1, t0, vpage
        addi    gp, gp, 1
        li      t0, ${rounds}
        bne     gp, t0, round
        sw      s3, ${RESULT}(zero)
        li      a0, ${Hcall.EXIT}
        mv      a1, sp
        hcall
`;
}

/** What the guest's sum of words read must be after `rounds` rounds. */
function expectedSum(rounds: number): number {
  let sum = 0;
  for (let round = 0; round < rounds; round++) {
    for (let page = 0; page < PAGES; page++) {
      if (page % 4 === 3) continue;
      for (let word = 0; word < 1024; word++) sum = (sum + Math.imul(page * 1024 + word, MUL) + SEED + round) | 0;
    }
  }
  return sum;
}

interface Booted {
  hv: Hypervisor;
  vm: Vm;
  /** Rounds the guest reported READY for and the host has not answered yet. */
  ready: number[];
}

function boot(source: string, config: Partial<VmConfig> = {}): Booted {
  const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
  const vm = hv.createVm({ memoryBytes: 16 * MiB, ...config });
  vm.loadImage(assemble(source, { fileName: 'swap-guest.s' }).image);
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
  const ready: number[] = [];
  vm.onHypercall(HCALL_READY, (vcpu) => {
    ready.push(vcpu.regs[Reg.A1]!);
  });
  return { hv, vm, ready };
}

function setFlag(vm: Vm, value: number): void {
  vm.writePhysical(FLAG, new Uint8Array(new Int32Array([value]).buffer));
}

function dataGpns(): number[] {
  return Array.from({ length: PAGES }, (_, i) => DATA / PAGE_SIZE + i);
}

function run(booted: Booted): RunResult {
  return booted.hv.run({ maxInstructions: 80_000_000 }, [booted.vm])[0]!;
}

describe('hypervisor swap on a running guest', () => {
  it('swaps pages out mid-run, frees their host memory, and the guest reads every byte back', () => {
    const rounds = 2;
    const booted = boot(swapGuest(rounds));
    const { vm, ready } = booted;
    const swap = SwapFile.createIn(dir);
    swap.attach(vm);
    const drops: { frames: number; resident: number; rss: number; swapped: number }[] = [];
    vm.addTicker(10_000, () => {
      const round = ready.shift();
      if (round === undefined) return;
      const framesBefore = vm.memory.presentPages;
      const residentBefore = booted.hv.residentPoolBytes();
      const rssBefore = processRss();
      let swapped = 0;
      for (const gpn of dataGpns()) if (swap.swapOut(vm, gpn)) swapped++;
      drops.push({ frames: framesBefore - vm.memory.presentPages, resident: residentBefore - booted.hv.residentPoolBytes(), rss: rssBefore - processRss(), swapped });
      setFlag(vm, round + 1);
    });

    const result = run(booted);
    expect(result.reason).toEqual({ kind: 'halted', exitCode: 0 }); // no mismatching word
    expect(vm.readPhysical(RESULT, 4)).toEqual(new Uint8Array(new Int32Array([expectedSum(rounds)]).buffer));
    expect(drops).toHaveLength(rounds);
    for (const drop of drops) {
      expect(drop.swapped).toBe(PAGES);
      expect(drop.frames).toBe(PAGES);
      // The pages holding data (3/4) were resident and no longer are; the zero pages may have
      // been too (transparent huge pages). The process RSS falls with them, give or take the JS
      // heap's own movements.
      expect(drop.resident).toBeGreaterThanOrEqual(0.75 * PAGES * PAGE_SIZE);
      expect(drop.rss).toBeGreaterThan(0.375 * PAGES * PAGE_SIZE);
    }
    const stats = swap.stats();
    expect(stats.pagesOut).toBe(rounds * 0.75 * PAGES);
    expect(stats.zeroPagesDropped).toBe(rounds * 0.25 * PAGES);
    expect(stats.pagesIn).toBe(rounds * 0.75 * PAGES);
    expect(stats.slotsInUse).toBe(0);
    expect(stats.fileBytes).toBeGreaterThanOrEqual(0.75 * PAGES * PAGE_SIZE);
    expect(statSync(swap.path).size).toBe(stats.fileBytes);
    // Slots are reused: the second round needed no more file than the first.
    expect(stats.fileBytes).toBeLessThan(2 * 0.75 * PAGES * PAGE_SIZE);
    expect(vm.exits.absent.swapped).toBe(rounds * 0.75 * PAGES);
    swap.close();
    expect(existsSync(swap.path)).toBe(false);
  });

  it('stops the VM with a host error instead of reading a damaged slot', () => {
    const booted = boot(swapGuest(1));
    const { vm, ready } = booted;
    const swap = SwapFile.createIn(dir);
    swap.attach(vm);
    vm.addTicker(10_000, () => {
      if (ready.shift() === undefined) return;
      for (const gpn of dataGpns()) swap.swapOut(vm, gpn);
      // Flip one byte of slot 0, which holds the first data page.
      const fd = openSync(swap.path, 'r+');
      writeSync(fd, new Uint8Array([0xff]), 0, 1, 100);
      closeSync(fd);
      setFlag(vm, 1);
    });
    const result = run(booted);
    expect(result.reason.kind).toBe('host-error');
    const reason = result.reason as { kind: 'host-error'; message: string; error?: unknown };
    expect(reason.message).toMatch(/damaged/);
    expect(reason.error).toBeInstanceOf(SwapError);
    expect((reason.error as SwapError).code).toBe('BV_SWAP_CORRUPT');
    // Nothing was installed: the page is still swapped, and the frame read into was given back.
    expect(vm.memory.stateOf(DATA / PAGE_SIZE)).toBe(PageState.SWAPPED);
    expect(booted.hv.poolStats().usedFrames).toBe(vm.memory.presentPages);
    expect(swap.stats().pagesIn).toBe(0);
    swap.close();
  });

  it('stops the VM with a host error when the swap file was closed', () => {
    const booted = boot(swapGuest(1));
    const { vm, ready } = booted;
    const swap = SwapFile.createIn(dir);
    swap.attach(vm);
    vm.addTicker(10_000, () => {
      if (ready.shift() === undefined) return;
      for (const gpn of dataGpns()) swap.swapOut(vm, gpn);
      swap.close();
      setFlag(vm, 1);
    });
    const result = run(booted);
    expect(result.reason.kind).toBe('host-error');
    const error = (result.reason as { error?: unknown }).error;
    expect(error).toBeInstanceOf(SwapError);
    expect((error as SwapError).code).toBe('BV_SWAP_CLOSED');
    expect(() => swap.swapOut(vm, 1)).toThrow(expect.objectContaining({ code: 'BV_SWAP_CLOSED' }));
  });
});

describe('swapOut', () => {
  /** A VM with guest pages 0..7 present and holding their own number (page 3 stays zero). */
  /** The hypervisor of the last vmWithPages() (for a second VM to share pages with). */
  let pagesHv: Hypervisor;
  function vmWithPages(): Vm {
    const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
    pagesHv = hv;
    const vm = hv.createVm({ memoryBytes: 4 * MiB, largePages: 'off' });
    for (let gpn = 0; gpn < 8; gpn++) {
      const page = new Uint8Array(PAGE_SIZE);
      if (gpn !== 3) page.fill(gpn + 1);
      vm.writePhysical(gpn * PAGE_SIZE, page);
    }
    return vm;
  }

  it('refuses pages that are not plain present frames, and leaves them as they were', () => {
    const vm = vmWithPages();
    const swap = SwapFile.createIn(dir);
    swap.attach(vm);
    vm.memory.protect(1, P2mFlag.COPY_ON_WRITE);
    vm.memory.protect(2, P2mFlag.WATCH);
    const other = pagesHv.createVm({ memoryBytes: vm.memoryBytes });
    vm.memory.sharePage(4, other.memory, 4); // shared with another VM
    const describe = (): string[] => Array.from({ length: 8 }, (_, gpn) => vm.memory.describe(gpn));
    const before = describe();
    expect(swap.swapOut(vm, 1)).toBe(false);
    expect(swap.swapOut(vm, 2)).toBe(false);
    expect(swap.swapOut(vm, 4)).toBe(false);
    expect(swap.swapOut(vm, 100)).toBe(false); // never touched
    expect(describe()).toEqual(before);
    expect(swap.stats()).toMatchObject({ refused: 4, pagesOut: 0, slotsInUse: 0 });
    // A zero page is dropped without I/O; a data page goes to a slot and comes back exact.
    expect(swap.swapOut(vm, 3)).toBe(true);
    expect(vm.memory.stateOf(3)).toBe(PageState.UNTOUCHED);
    expect(swap.swapOut(vm, 5)).toBe(true);
    expect(vm.memory.stateOf(5)).toBe(PageState.SWAPPED);
    expect(swap.stats()).toMatchObject({ zeroPagesDropped: 1, pagesOut: 1, slotsInUse: 1, fileBytes: 1 * MiB });
    expect(vm.readPhysical(5 * PAGE_SIZE, PAGE_SIZE)).toEqual(new Uint8Array(PAGE_SIZE).fill(6));
    expect(swap.stats()).toMatchObject({ pagesIn: 1, slotsInUse: 0 });
    swap.close();
  });

  it('throws BV_SWAP_FULL at the size limit and keeps the page', () => {
    const vm = vmWithPages();
    const swap = SwapFile.createIn(dir, { chunkBytes: PAGE_SIZE, maxBytes: 2 * PAGE_SIZE });
    swap.attach(vm);
    expect(swap.swapOut(vm, 0)).toBe(true);
    expect(swap.swapOut(vm, 1)).toBe(true);
    expect(() => swap.swapOut(vm, 2)).toThrow(expect.objectContaining({ code: 'BV_SWAP_FULL' }));
    expect(vm.memory.stateOf(2)).toBe(PageState.PRESENT);
    expect(vm.readPhysical(2 * PAGE_SIZE, PAGE_SIZE)).toEqual(new Uint8Array(PAGE_SIZE).fill(3));
    // A freed slot makes room again.
    expect(vm.readPhysical(0, 4)).toEqual(new Uint8Array(4).fill(1));
    expect(swap.swapOut(vm, 2)).toBe(true);
    expect(swap.stats()).toMatchObject({ slotsInUse: 2, fileBytes: 2 * PAGE_SIZE });
    swap.close();
  });

  it('needs attach(), serves one file per VM, and forgets swapped pages on reset', () => {
    const vm = vmWithPages();
    const swap = SwapFile.createIn(dir);
    expect(() => swap.swapOut(vm, 0)).toThrow(expect.objectContaining({ code: 'BV_SWAP_NOT_ATTACHED' }));
    swap.attach(vm);
    const other = SwapFile.createIn(dir);
    expect(() => other.attach(vm)).toThrow(expect.objectContaining({ code: 'BV_SWAP_BAD_ARGUMENT' }));
    other.close();
    expect(swap.swapOut(vm, 6)).toBe(true);
    vm.reset();
    // After a reset the page reads as zero again (not its old contents), and its slot is free.
    expect(vm.memory.stateOf(6)).toBe(PageState.UNTOUCHED);
    expect(swap.stats().slotsInUse).toBe(0);
    expect(vm.readPhysical(6 * PAGE_SIZE, 4)).toEqual(new Uint8Array(4));
    swap.close();
  });

  it('refuses bad options with a typed error', () => {
    expect(() => SwapFile.createIn(dir, { chunkBytes: 1000 })).toThrow(expect.objectContaining({ code: 'BV_SWAP_BAD_ARGUMENT' }));
    expect(() => SwapFile.create(join(dir, 'missing-dir', 'x.swap'))).toThrow(expect.objectContaining({ code: 'BV_SWAP_IO' }));
  });
});
