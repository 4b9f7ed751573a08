/**
 * Access watches (GuestMemory.addAccessWatcher / armAccessWatch): the hook sampling and
 * miss-rate curves use to see the next guest access to a page. An armed page's translations
 * are shot down, its next load, store or fetch calls the watcher once, the accessed marks other
 * policies read are left alone, and what the guest computes never changes.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { createHypervisor, KernelError, MAX_ACCESS_WATCHERS } from '../../kernel/index.ts';
import { bootGuest, expectHalted, MiB } from './helpers.ts';

// Loads from page 0x40, stores to page 0x41, fetches from its own code page; 50 rounds.
const LOOP = `
_start: li      s0, 50
        li      s1, 0x40000
        li      s2, 0x41000
again:  lw      t0, 0(s1)
        sw      s0, 8(s2)
        addi    s0, s0, -1
        bne     s0, zero, again
        exiti   0
`;

describe('access watches', () => {
  it('call the watcher once at the next access of each armed page, and again after re-arming', () => {
    const guest = bootGuest(LOOP);
    const memory = guest.vm.memory;
    const seen: number[] = [];
    const id = memory.addAccessWatcher((gpn) => seen.push(gpn));
    const codeGpn = guest.sym('_start') >>> 12;
    memory.armAccessWatch(id, [0x40, 0x41, 0x42, codeGpn]);
    expect(memory.watchedPages).toBe(4);
    expect(memory.isWatched(id, 0x42)).toBe(true);
    guest.run({ maxInstructions: 20 });
    expect(seen.sort((a, b) => a - b)).toEqual([codeGpn, 0x40, 0x41].sort((a, b) => a - b));
    expect(memory.watchedPages).toBe(1); // only the page nobody touched is still armed
    expect(memory.isWatched(id, 0x40)).toBe(false);
    // The TLB now serves them: nothing more is seen until the watcher re-arms.
    guest.run({ maxInstructions: 20 });
    expect(seen).toHaveLength(3);
    memory.armAccessWatch(id, [0x40]);
    guest.run({ maxInstructions: 20 });
    expect(seen.filter((gpn) => gpn === 0x40)).toHaveLength(2);
    expectHalted(guest.run(), 0);
    expect(guest.word(0x41008)).toBe(1);
  });

  it('leave the accessed marks alone; several watchers each see the access; removal disarms', () => {
    const guest = bootGuest(LOOP);
    const memory = guest.vm.memory;
    guest.run({ maxInstructions: 10 });
    expect(memory.accessed[0x40]).toBe(1);
    const a: number[] = [];
    const b: number[] = [];
    const idA = memory.addAccessWatcher((gpn) => a.push(gpn));
    const idB = memory.addAccessWatcher((gpn) => b.push(gpn));
    expect(idB).not.toBe(idA);
    memory.armAccessWatch(idA, [0x40, 0x41]);
    memory.armAccessWatch(idB, [0x41]);
    expect(memory.accessed[0x40]).toBe(1); // unlike clearAccessed
    expect(memory.watchedPages).toBe(2);
    guest.run({ maxInstructions: 10 });
    expect(a.sort()).toEqual([0x40, 0x41]);
    expect(b).toEqual([0x41]);
    memory.armAccessWatch(idA, [0x40]);
    memory.removeAccessWatcher(idA);
    expect(memory.watchedPages).toBe(0);
    guest.run({ maxInstructions: 10 });
    expect(a).toHaveLength(2);
    expect(() => memory.armAccessWatch(idA, [0x40])).toThrow(KernelError);
    expect(() => memory.armAccessWatch(idB, [memory.pageCount])).toThrow(/outside|RAM|page/);
    for (let i = 1; i < MAX_ACCESS_WATCHERS; i++) memory.addAccessWatcher(() => {});
    expect(() => memory.addAccessWatcher(() => {})).toThrow(/at most 8/);
  });

  it('see a paged guest (nanokernel, user mode, superpages) without changing what it computes', () => {
    const { image } = assembleFile(join(import.meta.dirname, '..', '..', 'examples/nanokernel/kernel.s'));
    const run = (watch: boolean) => {
      const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
      const vm = hv.createVm({ memoryBytes: 32 * MiB, name: 'walker' });
      vm.loadImage(image);
      const output = new CaptureSink();
      attachStandardDevices(vm, { output, bootArgs: 'walker 4M random 3' });
      const seen = new Set<number>();
      let fired = 0;
      if (watch) {
        const id = vm.memory.addAccessWatcher((gpn) => {
          fired++;
          seen.add(gpn);
        });
        const all = Array.from({ length: vm.memory.pageCount }, (_, gpn) => gpn);
        // Re-arm every page every 200,000 instructions: the walker's pages are seen again and again.
        for (let round = 0; round < 400; round++) {
          vm.memory.armAccessWatch(id, all);
          const [result] = hv.run({ maxInstructions: 200_000 }, [vm]);
          if (result!.reason.kind !== 'budget') break;
        }
      }
      const [end] = hv.run({ maxInstructions: 200_000_000 }, [vm]);
      return { end: end!.reason, text: output.text(), instructions: vm.instructionsRetired, seen, fired };
    };
    const watched = run(true);
    const plain = run(false);
    expect(watched.end).toEqual({ kind: 'halted', exitCode: 0 });
    expect(watched.text).toMatch(/walker.*checksum/);
    expect(watched.text).toBe(plain.text);
    expect(watched.instructions).toBe(plain.instructions);
    // The walker's 4 MiB (1024 pages) plus kernel and user pages were seen, and seen repeatedly.
    expect(watched.seen.size).toBeGreaterThan(1024);
    expect(watched.fired).toBeGreaterThan(2 * watched.seen.size);
  });
});
