/**
 * GuestMemory.releasePages (the balloon's batch release) and FramePool.releaseMany: many pages
 * leave at once with one shootdown and their frames go back to the OS in one madvise per
 * contiguous range, with the same outcome page by page as releasePage: shared and inherited
 * frames are freed only when their last holder lets go, a page named twice is released once, a
 * bad page number changes nothing, and a running write epoch gets the old contents first.
 */
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { AbsentState, createHypervisor, KernelError, PageState, type Hypervisor, type Vm } from '../../kernel/index.ts';
import type { HostMemory } from '../../kernel/index.ts';

const MIB = 1024 * 1024;

function machine(memoryBytes = 4 * MIB): { hv: Hypervisor; vm: Vm } {
  const hv = createHypervisor({ hostMemoryBytes: 16 * MIB });
  return { hv, vm: hv.createVm({ memoryBytes }) };
}

/** Writes a recognisable word at the start of each page. */
function fill(vm: Vm, gpns: readonly number[]): void {
  for (const gpn of gpns) vm.writePhysical(gpn * PAGE_SIZE, new Uint8Array(new Uint32Array([gpn + 1]).buffer));
}

const word = (vm: Vm, gpn: number): number => new DataView(vm.readPhysical(gpn * PAGE_SIZE, 4).buffer).getUint32(0, true);
const range = (first: number, count: number): number[] => Array.from({ length: count }, (_, i) => first + i);

describe('GuestMemory.releasePages', () => {
  it('releases every page as releasePage would, in one madvise per contiguous range of frames', () => {
    const { hv, vm } = machine();
    const pages = range(100, 300);
    fill(vm, pages);
    const host: HostMemory = vm.memory.pool.memory;
    const calls: number[] = [];
    const release = host.release.bind(host);
    host.release = (offset, length) => {
      calls.push(length);
      release(offset, length);
    };
    const before = hv.poolStats();
    vm.memory.releasePages(pages, AbsentState.BALLOONED);
    const after = hv.poolStats();
    expect(before.usedFrames - after.usedFrames).toBe(300);
    expect(after.framesReleased - before.framesReleased).toBe(300);
    expect(calls.length).toBeLessThan(5); // the frames were allocated in order: a few ranges, not 300 calls
    expect(calls.reduce((a, b) => a + b, 0)).toBe(300 * PAGE_SIZE);
    expect(pages.every((gpn) => vm.memory.stateOf(gpn) === PageState.BALLOONED)).toBe(true);
    expect(vm.memory.countInState(AbsentState.BALLOONED)).toBe(300);
    vm.memory.releasePages(pages, AbsentState.UNTOUCHED);
    expect(vm.memory.countInState(AbsentState.BALLOONED)).toBe(0);
    expect(pages.every((gpn) => word(vm, gpn) === 0)).toBe(true);
    expect(hv.poolStats().usedFrames).toBe(after.usedFrames); // reading untouched pages allocates nothing
  });

  it('releases a page named twice once, and a frame two pages share when both go', () => {
    const { hv, vm } = machine();
    fill(vm, [10, 11]);
    vm.memory.sharePage(10, vm.memory, 12); // 10 and 12 map one frame
    const used = hv.poolStats().usedFrames;
    vm.memory.releasePages([11, 11, 10, 12, 13], AbsentState.UNTOUCHED);
    expect(hv.poolStats().usedFrames).toBe(used - 2);
    expect([10, 11, 12, 13].map((gpn) => vm.memory.stateOf(gpn))).toEqual([PageState.UNTOUCHED, PageState.UNTOUCHED, PageState.UNTOUCHED, PageState.UNTOUCHED]);
    expect(vm.memory.countInState(AbsentState.UNTOUCHED)).toBe(vm.memory.pageCount - vm.memory.presentPages);
  });

  it('checks every page first: a page outside RAM changes nothing', () => {
    const { hv, vm } = machine();
    fill(vm, [1, 2]);
    const used = hv.poolStats().usedFrames;
    let thrown: unknown;
    try {
      vm.memory.releasePages([1, 2, vm.memory.pageCount], AbsentState.BALLOONED);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(KernelError);
    expect((thrown as KernelError).code).toBe('BV_BAD_GPN');
    expect(hv.poolStats().usedFrames).toBe(used);
    expect(vm.memory.stateOf(1)).toBe(PageState.PRESENT);
  });

  it('in a forked VM: inherited pages are dropped, the frames stay while the other side holds them', () => {
    const { hv, vm } = machine();
    const pages = range(20, 8);
    fill(vm, pages);
    const child = hv.forkVm(vm);
    const used = hv.poolStats().usedFrames;
    child.memory.releasePages(pages, AbsentState.BALLOONED);
    expect(pages.every((gpn) => child.memory.stateOf(gpn) === PageState.BALLOONED)).toBe(true);
    expect(pages.every((gpn) => word(vm, gpn) === gpn + 1)).toBe(true);
    expect(hv.poolStats().usedFrames).toBe(used);
    vm.memory.releasePages(pages, AbsentState.BALLOONED);
    expect(hv.poolStats().usedFrames).toBe(used - 8);
    // Releasing again (ballooned → untouched) on both sides frees nothing more.
    child.memory.releasePages(pages, AbsentState.UNTOUCHED);
    vm.memory.releasePages(pages, AbsentState.UNTOUCHED);
    expect(hv.poolStats().usedFrames).toBe(used - 8);
    expect(pages.every((gpn) => word(child, gpn) === 0 && word(vm, gpn) === 0)).toBe(true);
  });

  it('hands present pages to a running write epoch before their contents go (as releasePage does)', () => {
    const { vm } = machine();
    fill(vm, [5, 6]);
    const saved = new Map<number, number>();
    vm.memory.beginWriteEpoch((gpn, bytes) => saved.set(gpn, new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true)));
    vm.memory.releasePages([5, 6, 7], AbsentState.BALLOONED);
    vm.memory.releasePage(6, AbsentState.UNTOUCHED);
    vm.memory.endWriteEpoch();
    expect([...saved]).toEqual([[5, 6], [6, 7]]); // 7 was untouched: nothing to save; 6 only once
  });
});

describe('Hypervisor.residentPoolBytes', () => {
  it('rises by the pages a guest writes and falls by the pages it releases (mincore over the pool)', () => {
    const { hv, vm } = machine();
    const pages = range(0, 256);
    const before = hv.residentPoolBytes();
    fill(vm, pages);
    const written = hv.residentPoolBytes();
    expect(written - before).toBeGreaterThanOrEqual(256 * PAGE_SIZE);
    vm.memory.releasePages(pages, AbsentState.BALLOONED);
    expect(written - hv.residentPoolBytes()).toBeGreaterThanOrEqual(256 * PAGE_SIZE);
  });

  it('is refused with BV_NO_RESIDENCY when the pool memory cannot tell', () => {
    const { hv, vm } = machine();
    const host: HostMemory = vm.memory.pool.memory;
    const saved = host.residency;
    (host as { residency?: unknown }).residency = undefined;
    try {
      expect(() => hv.residentPoolBytes()).toThrow(expect.objectContaining({ code: 'BV_NO_RESIDENCY' }));
    } finally {
      (host as { residency?: unknown }).residency = saved;
    }
  });
});

describe('Hypervisor.close', () => {
  it('destroys every VM and unmaps the pool and arenas at once; a closed hypervisor refuses new VMs; twice is fine', () => {
    const { hv, vm } = machine(8 * MIB);
    fill(vm, range(0, 1024));
    const pool = vm.memory.pool.memory as HostMemory & { closed?: boolean };
    expect(pool.closed).toBe(false);
    hv.close();
    expect(hv.closed).toBe(true);
    expect(hv.vms).toEqual([]);
    expect(pool.closed).toBe(true);
    expect(() => hv.createVm({ memoryBytes: MIB })).toThrow(expect.objectContaining({ code: 'BV_CLOSED' }));
    hv.close();
  });
});
