/**
 * Clean copies from swap (issue 12, clean-copy sources): a page swapped in by a read keeps its
 * slot while it stays clean (SwapFile.keepCleanCopies, Linux's swap cache), so an error in it is
 * rebuilt from the slot; the first write releases the slot; a kept page swaps out again with no
 * write; kept slots give way to new swap-outs when the file is full.
 *
 * The guest fills 8 pages, asks the host (probe 1), sums them, asks again (probe 2), sums them
 * again and exits 0 when both sums agree; a machine check with no trap vector stops it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Reg } from '../../guest-isa/arch.ts';
import { createHypervisor, PageState } from '../../kernel/index.ts';
import { SwapFile } from '../../services/memory/swap.ts';
import { CleanCopyRecovery } from '../../services/recovery/clean-copy.ts';
import { MemoryErrorService } from '../../services/recovery/index.ts';
import { bootGuest, expectGuestError, expectHalted, HCALL_PROBE, MiB, type Guest } from '../kernel/helpers.ts';

const BUF_GPN = 0x100;
const PAGES = 8;
const dir = mkdtempSync(join(tmpdir(), 'bv-swap-clean-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
const swaps: SwapFile[] = [];
afterEach(() => {
  for (const vm of [...hv.vms]) {
    for (const swap of swaps) swap.forget(vm);
    hv.destroyVm(vm);
  }
  for (const swap of swaps.splice(0)) swap.close();
});

const SOURCE = `
        .equ BUF, ${BUF_GPN * 4096}
        .equ WORDS, ${PAGES * 1024}
_start: li t0, BUF
        li t1, WORDS
        li t2, 0x9e3779b9
        li t3, 1
fill:   sw t3, 0(t0)
        add t3, t3, t2
        addi t0, t0, 4
        addi t1, t1, -1
        bnez t1, fill
        li a0, HCALL_PROBE
        hcall
        li t0, BUF
        li t1, WORDS
        li s0, 0
sum1:   lw t2, 0(t0)
        add s0, s0, t2
        addi t0, t0, 4
        addi t1, t1, -1
        bnez t1, sum1
        li a0, HCALL_PROBE
        hcall
        li t0, BUF
        li t1, WORDS
        li s1, 0
sum2:   lw t2, 0(t0)
        add s1, s1, t2
        addi t0, t0, 4
        addi t1, t1, -1
        bnez t1, sum2
        sub a2, s0, s1
        exitr a2
`;

interface Rig {
  guest: Guest;
  swap: SwapFile;
  clean: CleanCopyRecovery;
  service: MemoryErrorService;
}

/** Boots the guest with a swap file keeping clean copies; `probes[i]` runs at the guest's i-th probe. */
function rig(probes: Array<(r: Rig) => void>, maxPages?: number): Rig {
  const guest = bootGuest(SOURCE, { hv, memoryBytes: 4 * MiB });
  const swap = SwapFile.createIn(dir, maxPages === undefined ? {} : { maxBytes: maxPages * 4096, chunkBytes: 4096 });
  swaps.push(swap);
  swap.attach(guest.vm);
  const clean = new CleanCopyRecovery(guest.vm);
  swap.keepCleanCopies(guest.vm, clean);
  const service = new MemoryErrorService(guest.vm, { methods: [clean] });
  const r: Rig = { guest, swap, clean, service };
  let probe = 0;
  guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
    probes[probe++]?.(r);
    vcpu.regs[Reg.A0] = 0;
  });
  return r;
}

const swapOutAll = (r: Rig): void => {
  for (let i = 0; i < PAGES; i++) expect(r.swap.swapOut(r.guest.vm, BUF_GPN + i)).toBe(true);
};

describe('SwapFile.keepCleanCopies with clean-copy recovery', () => {
  it('keeps the slot of a page swapped in by a read; an error in it is rebuilt from the slot and the guest never notices', () => {
    const r = rig([swapOutAll, (x) => {
      expect(x.swap.stats()).toMatchObject({ pagesOut: PAGES, pagesIn: PAGES, slotsKept: PAGES, slotsInUse: PAGES });
      expect(x.clean.stats.admittedFrom).toEqual({ swap: PAGES });
      expect(x.clean.isClean(BUF_GPN + 3)).toBe(true);
      x.service.inject({ gpa: (BUF_GPN + 3) * 4096 + 0x200, windowBits: 64, report: 'now' });
    }]);
    expectHalted(r.guest.run({ maxInstructions: 1_000_000 }), 0);
    expect(r.service.log()[0]!.outcome).toBe('recovered-by-clean-copy');
    expect(r.clean.stats.recovered).toBe(1);
  });

  it('a write releases the slot: the page is no longer clean and an error in it is a machine check', () => {
    const r = rig([swapOutAll, (x) => {
      x.guest.vm.writePhysical((BUF_GPN + 5) * 4096 + 16, Uint8Array.of(0, 0, 0, 0)); // dirties it (the sums now differ by design)
      expect(x.swap.stats().slotsKept).toBe(PAGES - 1);
      expect(x.clean.isClean(BUF_GPN + 5)).toBe(false);
      x.service.inject({ gpa: (BUF_GPN + 5) * 4096 + 0x200, windowBits: 1, report: 'now' });
      expect(x.service.log()[0]!.outcome).toBe('unrecovered');
    }]);
    expectGuestError(r.guest.run({ maxInstructions: 1_000_000 }), /machine check/);
    expect(r.swap.stats().slotsInUse).toBe(PAGES - 1);
  });

  it('a kept page swaps out again with no write, and comes back with the same bytes', () => {
    const r = rig([swapOutAll, (x) => {
      const before = x.guest.vm.readPhysical((BUF_GPN + 2) * 4096, 4096);
      const stats = x.swap.stats();
      expect(x.swap.swapOut(x.guest.vm, BUF_GPN + 2)).toBe(true);
      expect(x.guest.vm.memory.stateOf(BUF_GPN + 2)).toBe(PageState.SWAPPED);
      expect(x.swap.stats()).toMatchObject({ outWithoutWrite: 1, pagesOut: stats.pagesOut + 1, slotsInUse: stats.slotsInUse, slotsKept: stats.slotsKept - 1, fileBytes: stats.fileBytes });
      expect(x.guest.vm.readPhysical((BUF_GPN + 2) * 4096, 4096)).toEqual(before); // a host read swaps it in: kept again
      expect(x.swap.stats().slotsKept).toBe(stats.slotsKept);
    }]);
    expectHalted(r.guest.run({ maxInstructions: 1_000_000 }), 0);
  });

  it('kept slots give way when the file is full: the oldest is given up, and that page is then not clean', () => {
    const r = rig([swapOutAll, (x) => {
      expect(x.swap.stats().slotsKept).toBe(PAGES);
      const memory = x.guest.vm.memory;
      memory.installPage(0x300, new Uint8Array(4096).fill(7));
      expect(x.swap.swapOut(x.guest.vm, 0x300)).toBe(true);
      expect(x.swap.stats()).toMatchObject({ keptEvicted: 1, slotsKept: PAGES - 1, slotsInUse: PAGES });
      expect(x.clean.isClean(BUF_GPN)).toBe(true); // still sealed, but its source answers no more
      x.service.inject({ gpa: BUF_GPN * 4096, windowBits: 8, report: 'now' });
      expect(x.service.log()[0]!.outcome).toBe('unrecovered');
      expect(x.guest.vm.readPhysical(0x300 * 4096, 4)).toEqual(Uint8Array.of(7, 7, 7, 7));
    }], PAGES);
    expectGuestError(r.guest.run({ maxInstructions: 1_000_000 }), /machine check/);
  });

  it('without keepCleanCopies a swap-in frees its slot at once (the old behaviour)', () => {
    const r = rig([(x) => {
      x.swap.keepCleanCopies(x.guest.vm, null);
      swapOutAll(x);
    }, (x) => {
      expect(x.swap.stats()).toMatchObject({ pagesIn: PAGES, slotsKept: 0, slotsInUse: 0 });
    }]);
    expectHalted(r.guest.run({ maxInstructions: 1_000_000 }), 0);
  });
});
