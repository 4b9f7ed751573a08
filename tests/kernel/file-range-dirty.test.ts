/**
 * Write tracking of file-backed ranges (GuestMemory.trackFileRangeWrites / takeFileRangeDirtyPages,
 * docs/pmem.md "High availability"): a guest stores all over its persistent memory — words, bytes,
 * halfwords and AMOs, after loads of the same page (a load may cache a write translation too),
 * in the interpreter and in compiled code — while the host takes the dirty pages between runs; every page whose
 * bytes changed since the previous take must be among the pages taken. A missed store would make
 * the HA save leave a stale page at the partner.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { GUEST_LIBRARY } from '../devices/harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-pmem-dirty-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PAGES = 64;
const BYTES = PAGES * 4096;

/** An endless loop of pseudo-random accesses to the range (an LCG picks page, offset and kind). */
const PROGRAM = `${GUEST_LIBRARY}
        .globl  _start
_start:
        li      a0, 8                   # PMEM
        call    find_device
        lw      s0, 0(a0)               # BASE
        li      s1, 12345               # the LCG's state
loop:   li      t0, 1103515245
        mul     s1, s1, t0
        addi    s1, s1, 12345
        srli    t0, s1, 8
        andi    t0, t0, ${PAGES - 1}    # page
        slli    t0, t0, 12
        srli    t1, s1, 16
        andi    t1, t1, 0xffc           # word offset in the page
        add     t0, t0, t1
        add     t0, t0, s0
        srli    t2, s1, 12
        andi    t2, t2, 3               # kind 0..3
        lw      t3, 0(t0)               # a load first: its miss may cache the write translation
        addi    t3, t3, 1
        li      a1, 1
        beq     t2, zero, 1f
        beq     t2, a1, 2f
        li      a1, 2
        beq     t2, a1, 3f
        amoadd  a2, a1, (t0)
        j       loop
1:      sw      t3, 0(t0)
        j       loop
2:      sb      t3, 1(t0)
        j       loop
3:      sh      t3, 2(t0)
        j       loop
`;

describe('write tracking of a file-backed range', () => {
  it.each(['interp', 'jit'] as const)('misses no store (%s tier): every page that changed between two takes is among the pages taken', (tier) => {
    const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20, tier });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), pmem: { path: join(dir, 'dirty.pmem'), bytes: BYTES, create: true } });
    vm.loadImage(assemble(PROGRAM).image);
    const gpa = devices.pmem!.gpa;
    vm.memory.trackFileRangeWrites(gpa);
    // At first every page counts as written: nothing was taken yet.
    expect([...vm.memory.takeFileRangeDirtyPages(gpa)].every((mark) => mark === 1)).toBe(true);
    let before = new Uint8Array(BYTES);
    vm.memory.readFileRange(gpa, before);
    let changedPages = 0;
    let takenPages = 0;
    // Short runs at first, longer ones later.
    for (let round = 0; round < 120; round++) {
      const [result] = hv.run({ maxInstructions: round < 40 ? 500 + round * 37 : 20_000 + round * 101 }, [vm]);
      expect(result!.reason.kind).toBe('budget');
      const taken = vm.memory.takeFileRangeDirtyPages(gpa);
      const after = new Uint8Array(BYTES);
      vm.memory.readFileRange(gpa, after);
      for (let page = 0; page < PAGES; page++) {
        const start = page * 4096;
        let changed = false;
        for (let i = start; i < start + 4096 && !changed; i++) changed = before[i] !== after[i];
        if (changed) {
          changedPages++;
          if (taken[page] !== 1) throw new Error(`round ${round}: page ${page} changed but was not marked written`);
        }
        if (taken[page] === 1) takenPages++;
      }
      before = after;
    }
    // The guest really wrote (the check above had something to check), and short runs leave
    // some pages untouched between takes (the marks are per take, not "everything").
    expect(changedPages).toBeGreaterThan(1000);
    expect(takenPages).toBeLessThan(120 * PAGES);
    // The stores reached the file through the tracked path too, and with the jit tier most of
    // the instructions ran compiled.
    expect(vm.vcpus[0]!.stats.tlbMisses).toBeGreaterThan(0);
    if (tier === 'jit') expect(hv.jitStats().retiredCompiled).toBeGreaterThan(vm.instructionsRetired / 2);
    else expect(hv.jitStats().retiredCompiled).toBe(0);
  });

  it('refuses a take without tracking, and ranges that do not exist', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), pmem: { path: join(dir, 'refuse.pmem'), bytes: BYTES, create: true } });
    const gpa = devices.pmem!.gpa;
    expect(() => vm.memory.takeFileRangeDirtyPages(gpa)).toThrow(/not tracked/);
    expect(() => vm.memory.trackFileRangeWrites(gpa + 4096)).toThrow(/no file-backed range starts at/);
    expect(() => vm.memory.readFileRange(gpa + BYTES - 4, new Uint8Array(8))).toThrow(/not inside one file-backed range/);
    vm.memory.trackFileRangeWrites(gpa);
    vm.memory.untrackFileRangeWrites(gpa);
    expect(() => vm.memory.takeFileRangeDirtyPages(gpa)).toThrow(/not tracked/);
  });
});
