import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { HostRegion } from '../../native/index.ts';
import { ZeroedArena } from '../../kernel/memory/zeroed-arena.ts';
import { createHypervisor, PageState } from '../../kernel/index.ts';

const MiB = 2 ** 20;

describe('ZeroedArena', () => {
  it('hands out zeroed, disjoint slices, zeroes them on release and reuses the space', () => {
    const region = HostRegion.anonymous(4 * MiB, { noReserve: true });
    const arena = new ZeroedArena(region);
    const a = arena.int32(65536); // 256 KiB
    const b = arena.uint8(100_000);
    expect(a.buffer).toBe(region.buffer);
    expect(b.buffer).toBe(region.buffer);
    expect(a.every((v) => v === 0) && b.every((v) => v === 0)).toBe(true);
    a.fill(-1);
    b.fill(7);
    // Disjoint: writing one never shows in the other.
    expect(b.every((v) => v === 7)).toBe(true);
    expect(a.every((v) => v === -1)).toBe(true);
    arena.release(a);
    const c = arena.int32(65536);
    expect(c.byteOffset).toBe(a.byteOffset); // first fit: the space came back
    expect(c.every((v) => v === 0)).toBe(true); // and it is zero again
    expect(arena.bytesInUse).toBe(65536 * 4 + Math.ceil(100_000 / 4096) * 4096);
    region.close();
  });

  it('falls back to plain arrays when small, without an arena, or when full', () => {
    const region = HostRegion.anonymous(1 * MiB, { noReserve: true });
    const arena = new ZeroedArena(region);
    expect(arena.uint8(100).buffer).not.toBe(region.buffer); // small
    const big = arena.int32(MiB / 4); // the whole arena
    expect(big.buffer).toBe(region.buffer);
    const overflow = arena.int32(8192);
    expect(overflow.buffer).not.toBe(region.buffer);
    expect(overflow.length).toBe(8192);
    arena.release(overflow); // a plain array: ignored
    expect(new ZeroedArena(null).int32(1 << 20).length).toBe(1 << 20);
    region.close();
  });

  it('keeps the free list coalesced under random allocate/release sequences (model check)', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 40 })), { maxLength: 60 }), (steps) => {
        const region = HostRegion.anonymous(64 * 4096 * 4, { noReserve: true });
        const arena = new ZeroedArena(region);
        const live: Uint8Array[] = [];
        for (const [allocate, pages] of steps) {
          if (allocate || live.length === 0) {
            const view = arena.uint8(pages * 4096);
            expect(view.every((v) => v === 0)).toBe(true);
            view.fill(pages);
            live.push(view);
          } else {
            arena.release(live.splice(pages % live.length, 1)[0]!);
          }
          // Live slices never overlap and keep their contents.
          for (const view of live) if (view.buffer === region.buffer) expect(view[0]).toBe(view.length / 4096);
        }
        for (const view of live.splice(0)) arena.release(view);
        expect(arena.bytesInUse).toBe(0);
        // Fully coalesced again: the whole arena fits in one slice.
        expect(arena.uint8(64 * 4096 * 4).buffer).toBe(region.buffer);
        region.close();
      }),
      { numRuns: 60 },
    );
  });

  it('backs VM memory: creating and destroying VMs returns every slice', () => {
    const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const before = hv.arena.bytesInUse;
    const vms = [hv.createVm({ memoryBytes: 256 * MiB }), hv.createVm({ memoryBytes: 1024 * MiB })];
    expect(hv.arena.bytesInUse).toBeGreaterThan(before);
    vms[0]!.memory.writePhysical(0, new Uint8Array([1, 2, 3]));
    const child = hv.forkVm(vms[0]!);
    expect(child.memory.readPhysical(0, 3)).toEqual(new Uint8Array([1, 2, 3]));
    for (const vm of [...vms, child]) hv.destroyVm(vm);
    expect(hv.arena.bytesInUse).toBe(before);
    expect(hv.poolStats().usedFrames).toBe(0);
  });

  it('a destroyed VM leaves no entries behind: the next VM in its slice sees every page untouched', () => {
    // Destroying a VM does not clear its per-page arrays (the arena's release zeroes them):
    // a VM that had pages, and a forked child with pages of its own, leave nothing visible.
    const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const parent = hv.createVm({ memoryBytes: 256 * MiB });
    for (let gpa = 0; gpa < 8 * MiB; gpa += 4096) parent.memory.writePhysical(gpa, new Uint8Array([7]));
    const child = hv.forkVm(parent);
    child.memory.writePhysical(4096, new Uint8Array([9]));
    child.memory.writePhysical(16 * MiB, new Uint8Array([9]));
    const slices = [parent, child].map((vm) => vm.memory.accessed.byteOffset);
    hv.destroyVm(child);
    hv.destroyVm(parent);
    expect(hv.poolStats().usedFrames).toBe(0);
    const next = [hv.createVm({ memoryBytes: 256 * MiB }), hv.createVm({ memoryBytes: 256 * MiB })];
    // The same slices again (the arena reuses freed space first), now for new VMs.
    expect(next.map((vm) => vm.memory.accessed.byteOffset).sort()).toEqual([...slices].sort());
    for (const vm of next) {
      let present = 0;
      vm.memory.forEachPage(PageState.PRESENT, () => present++);
      expect(present).toBe(0);
      expect(vm.memory.readPhysical(0, 8)).toEqual(new Uint8Array(8));
      expect(vm.memory.readPhysical(16 * MiB, 8)).toEqual(new Uint8Array(8));
    }
    for (const vm of next) hv.destroyVm(vm);
  });
});
