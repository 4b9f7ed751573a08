// Content-based page sharing (services/memory/sharing.ts) on real frames: four nanokernel VMs
// booted separately to the same point share their identical pages (host frames in use fall by
// the frames the scanner says it saved), then each finishes exactly like a VM that was never
// shared, and every copy-on-write break the guests cause is counted. Hash collisions never merge
// different pages; zero pages, pages changed under the scanner, checkpoints and forks of shared
// VMs, large regions and destroyed VMs are handled; and a property test checks that whatever the
// host writes and however often the scanner runs, every page reads back what was last written.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, runWithResets, type StandardDevices } from '../../devices/index.ts';
import { createHypervisor, P2mFlag, PageState, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { PageSharer, PageSharingError, pageHash64, type PageSharerOptions } from '../../services/memory/index.ts';
import { memoryHash, MiB, restore, type Machine } from './vm-machine.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-sharing-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const NANOKERNEL = assembleFile(join(import.meta.dirname, '..', '..', 'examples/nanokernel/kernel.s')).image;
/** Two programs at once: the walker's 8 MiB and the sieve's array are the same in every VM. */
const ARGS = 'sieve 1000000 walker 8M random 3';
const MEMORY = 64 * MiB;
/** Where the VMs are stopped to be shared: well before the programs end. */
const AT = 6_000_000;
const GUEST_BUDGET = 200_000_000;

interface Guest extends Machine {
  /** Console output up to AT. */
  early: string;
}

/** Boots the nanokernel in `hv` and runs it to exactly AT instructions. */
function bootTo(hv: Hypervisor, name: string): Guest {
  const vm = hv.createVm({ memoryBytes: MEMORY, vcpus: 1, name });
  vm.loadImage(NANOKERNEL);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs: ARGS });
  const run = runWithResets(hv, vm, devices, { maxInstructions: AT });
  expect(run.reason).toEqual({ kind: 'budget' });
  return { hv, vm, devices, output, early: output.text() };
}

interface Outcome {
  output: string;
  reason: unknown;
  instructions: number;
}

function finish(guest: Machine): Outcome {
  const run = runWithResets(guest.hv, guest.vm, guest.devices, { maxInstructions: GUEST_BUDGET });
  return { output: guest.output.text(), reason: run.reason, instructions: guest.vm.instructionsRetired };
}

/** The same guest on its own hypervisor, never shared: what every shared VM must compute. */
const reference = (() => {
  const hv = createHypervisor({ hostMemoryBytes: MEMORY + 16 * MiB });
  const guest = bootTo(hv, 'reference');
  const memoryAtStop = memoryHash(guest.vm);
  const outcome = finish(guest);
  expect(outcome.reason).toEqual({ kind: 'halted', exitCode: 0 });
  return { early: guest.early, memoryAtStop, outcome };
})();

/** Present pages over the VMs: a budget that lets a scan visit every page once. */
const presentPages = (vms: readonly Vm[]): number => vms.reduce((sum, vm) => sum + vm.memory.presentPages, 0);

/** Copy-on-write exits the kernel took, over the VMs. */
const cowExits = (vms: readonly Vm[]): number => vms.reduce((sum, vm) => sum + (vm.exits.writeProtect['copy-on-write'] ?? 0), 0);

/** Four identical guests in one hypervisor, stopped at AT, and a sharer over them. */
function fourGuests(options: PageSharerOptions = {}): { hv: Hypervisor; guests: Guest[]; sharer: PageSharer } {
  const hv = createHypervisor({ hostMemoryBytes: 4 * MEMORY + 16 * MiB });
  const guests = ['a', 'b', 'c', 'd'].map((name) => bootTo(hv, name));
  return { hv, guests, sharer: new PageSharer(hv, options) };
}

/** Scans until a whole pass finds nothing more to merge (the stable rule needs two visits). */
function scanToQuiet(sharer: PageSharer, vms: readonly Vm[]): void {
  for (let pass = 0; pass < 10; pass++) {
    const result = sharer.scan(presentPages(vms) + 1);
    if (pass >= 1 && result.merged === 0) return;
  }
  throw new Error('the scanner kept merging');
}

describe('four identical VMs booted separately', () => {
  it('share their common pages: host frames fall by what the scanner saved, about 3/4 of the common pages', () => {
    const { hv, guests, sharer } = fourGuests();
    const vms = guests.map((g) => g.vm);
    for (const guest of guests) expect(guest.early).toBe(reference.early);
    // Pages that are the same at the same guest address in all four VMs (page tables, which the
    // MMU traces, are left alone by the scanner).
    let common = 0;
    const first = guests[0]!.vm.memory;
    first.forEachPage(PageState.PRESENT, (gpn) => {
      if (first.flagsOf(gpn) !== 0) return;
      const bytes = first.pageBytes(gpn);
      if (vms.slice(1).every((vm) => vm.memory.stateOf(gpn) === PageState.PRESENT && Buffer.compare(vm.memory.pageBytes(gpn), bytes) === 0)) common++;
    });
    expect(common).toBeGreaterThan(2000);
    const before = hv.poolStats().usedFrames;
    const hashesBefore = vms.map(memoryHash);

    scanToQuiet(sharer, vms);
    const stats = sharer.stats();
    const after = hv.poolStats().usedFrames;
    expect(stats.merges).toBeGreaterThan(0);
    expect(stats.pagesShared).toBeGreaterThanOrEqual(4 * common);
    // The counter is the pool's own figure: nothing else allocated or freed in between.
    expect(stats.framesSaved).toBe(before - after);
    expect(before - after).toBeGreaterThanOrEqual(3 * common);
    expect(before - after).toBeLessThan(before); // each content keeps one frame
    expect(stats.collisions).toBe(0);
    expect(stats.cowBreaks).toBe(0);
    // Nothing any guest can see has changed.
    expect(vms.map(memoryHash)).toEqual(hashesBefore);
    expect(hashesBefore[0]).toBe(reference.memoryAtStop);
    expect(vms.every((vm) => vm.memory.sameFrame(0x200, vms[1]!.memory, 0x200) || vm.memory.stateOf(0x200) !== PageState.PRESENT)).toBe(true);

    // Every VM goes on and computes exactly what the never-shared VM computed.
    for (const guest of guests) expect(finish(guest)).toEqual(reference.outcome);
    // Their writes broke the sharing through the kernel's copy-on-write: each break is one exit.
    const end = sharer.stats();
    expect(end.cowBreaks).toBeGreaterThan(0);
    expect(end.cowBreaks).toBe(cowExits(vms));
    expect(end.pagesShared).toBeLessThan(stats.pagesShared);
  });

  it('shares while the guests run, from tickers, and they still compute the same results', () => {
    const { hv, guests, sharer } = fourGuests({ scanEveryInstructions: 200_000, pagesPerScan: 400 });
    const vms = guests.map((g) => g.vm);
    const results = hv.run({ maxInstructions: GUEST_BUDGET }, vms);
    for (const result of results) expect(result.reason).toEqual(reference.outcome.reason);
    const stats = sharer.stats();
    expect(stats.scans).toBeGreaterThan(10);
    expect(stats.merges).toBeGreaterThan(1000);
    for (const guest of guests) {
      expect(guest.output.text()).toBe(reference.outcome.output);
      expect(guest.vm.instructionsRetired).toBe(reference.outcome.instructions);
    }
    expect(stats.cowBreaks).toBe(cowExits(vms));
    sharer.stop();
    const scans = sharer.stats().scans;
    sharer.scan();
    expect(sharer.stats().scans).toBe(scans); // stopped: scan() does nothing
  });

  it('checkpoints and forks of shared VMs hold the same contents and finish the same', () => {
    const { guests, sharer } = fourGuests();
    const vms = guests.map((g) => g.vm);
    scanToQuiet(sharer, vms);
    expect(sharer.stats().pagesShared).toBeGreaterThan(0);
    const [a, b] = guests as [Guest, Guest];
    // A checkpoint of a VM whose pages are shared restores to the same memory and the same end.
    const path = join(dir, 'shared.bvc');
    saveVmCheckpoint(a.vm, path);
    for (const mode of ['eager', 'lazy'] as const) {
      const restored = restore(path, MEMORY, { mode });
      expect(memoryHash(restored.vm)).toBe(reference.memoryAtStop);
      const outcome = finish(restored);
      expect(reference.early + outcome.output).toBe(reference.outcome.output);
      expect(outcome.instructions).toBe(reference.outcome.instructions);
    }
    // A fork of a VM whose pages are shared: parent and child both finish like the reference.
    const output = new CaptureSink();
    const { vm: child, devices } = b.hv.forkVmWith(b.vm, { attach: (vm) => attachStandardDevices(vm, { output, bootArgs: ARGS }) });
    const forked: Machine = { hv: b.hv, vm: child, devices: devices as StandardDevices, output };
    expect(memoryHash(child)).toBe(reference.memoryAtStop);
    scanToQuiet(sharer, b.hv.vms); // the child takes part too; nothing goes wrong
    const childOutcome = finish(forked);
    expect(reference.early + childOutcome.output).toBe(reference.outcome.output);
    expect(childOutcome.instructions).toBe(reference.outcome.instructions);
    for (const guest of guests) expect(finish(guest)).toEqual(reference.outcome);
    const stats = sharer.stats();
    expect(stats.pagesShared).toBeGreaterThanOrEqual(0);
    expect(stats.framesSaved).toBeLessThanOrEqual(stats.pagesShared);
  });
});

// ---------------------------------------------------------------------------------------------
// Host-written pages: small VMs whose memory only the host writes (writePhysical, as a guest
// store would: through copy-on-write).

const SMALL = 64 * PAGE_SIZE;

function smallVms(count: number, options: { hostMiB?: number; largePages?: 'off' | 'always' } = {}): { hv: Hypervisor; vms: Vm[] } {
  const hv = createHypervisor({ hostMemoryBytes: (options.hostMiB ?? 16) * MiB });
  const vms = Array.from({ length: count }, (_, i) => hv.createVm({ memoryBytes: options.largePages === 'always' ? 4 * MiB : SMALL, name: `v${i}`, largePages: options.largePages ?? 'off' }));
  return { hv, vms };
}

/** A page filled from a seed (seed 0: all zero). */
function pageOf(seed: number): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  if (seed === 0) return page;
  const words = new Uint32Array(page.buffer);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return page;
}

const write = (vm: Vm, gpn: number, bytes: Uint8Array): void => vm.memory.writePhysical(gpn * PAGE_SIZE, bytes);
const read = (vm: Vm, gpn: number): Uint8Array => vm.memory.readPhysical(gpn * PAGE_SIZE, PAGE_SIZE);

describe('merging only equal pages', () => {
  it('never merges different pages whose hashes collide; merges the equal ones (a constant hash)', () => {
    const { hv, vms } = smallVms(2);
    const [a, b] = vms as [Vm, Vm];
    const x = pageOf(1);
    const y = pageOf(2);
    const nearX = x.slice();
    nearX[PAGE_SIZE - 1]! ^= 1; // one bit from x, in the last byte
    write(a, 0, x);
    write(a, 1, y);
    write(b, 0, x);
    write(b, 1, y);
    write(b, 2, nearX);
    write(a, 3, nearX);
    const sharer = new PageSharer(hv, { hash: () => 42, mergeOnlyStable: false });
    const before = hv.poolStats().usedFrames;
    sharer.scan(100);
    const stats = sharer.stats();
    expect(a.memory.sameFrame(0, b.memory, 0)).toBe(true);
    expect(a.memory.sameFrame(1, b.memory, 1)).toBe(true);
    expect(a.memory.sameFrame(3, b.memory, 2)).toBe(true);
    expect(a.memory.sameFrame(0, a.memory, 1)).toBe(false);
    expect(a.memory.sameFrame(0, b.memory, 2)).toBe(false);
    expect(a.memory.sameFrame(3, a.memory, 0)).toBe(false);
    expect(stats.collisions).toBeGreaterThan(0);
    expect(stats.merges).toBe(3);
    expect(before - hv.poolStats().usedFrames).toBe(3);
    expect(stats.framesSaved).toBe(3);
    expect(read(a, 0)).toEqual(x);
    expect(read(b, 1)).toEqual(y);
    expect(read(b, 2)).toEqual(nearX);
  });

  it('does not merge a candidate that changed after it was hashed (the compare is made at merge time)', () => {
    const { hv, vms } = smallVms(2);
    const [a, b] = vms as [Vm, Vm];
    write(b, 5, pageOf(7));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    sharer.scan(100); // b's page 5 is the table's copy of pageOf(7)
    write(b, 5, pageOf(8)); // changed behind the scanner's back
    write(a, 5, pageOf(7));
    sharer.scan(100); // a comes first: its page finds b's in the table, with other bytes now
    expect(a.memory.sameFrame(5, b.memory, 5)).toBe(false);
    expect(sharer.stats()).toMatchObject({ staleCandidates: 1, collisions: 0, merges: 0 });
    expect(read(a, 5)).toEqual(pageOf(7));
    expect(read(b, 5)).toEqual(pageOf(8));
    // Once both hold the same bytes again, they are merged.
    write(b, 5, pageOf(7));
    sharer.scan(100);
    expect(a.memory.sameFrame(5, b.memory, 5)).toBe(true);
  });

  it('leaves a page that changes between two visits alone (merge only stable pages)', () => {
    const { hv, vms } = smallVms(2);
    const [a, b] = vms as [Vm, Vm];
    write(a, 1, pageOf(3));
    write(b, 1, pageOf(3));
    const sharer = new PageSharer(hv);
    sharer.scan(100); // first visit: hashes recorded, nothing merged
    expect(sharer.stats().merges).toBe(0);
    write(b, 1, pageOf(4));
    sharer.scan(100); // b's page changed since the first visit: volatile
    expect(sharer.stats().volatilePages).toBe(1);
    write(b, 1, pageOf(3));
    sharer.scan(100); // changed again: still volatile
    expect(a.memory.sameFrame(1, b.memory, 1)).toBe(false);
    sharer.scan(100); // unchanged since the last visit: merged
    expect(a.memory.sameFrame(1, b.memory, 1)).toBe(true);
    expect(sharer.stats().merges).toBe(1);
  });

  it('breaks the sharing on write: the writer gets a private copy, the others keep the old bytes', () => {
    const { hv, vms } = smallVms(3);
    for (const vm of vms) write(vm, 9, pageOf(11));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    sharer.scan(100);
    expect(sharer.stats()).toMatchObject({ pagesShared: 3, framesSaved: 2, merges: 2 });
    const used = hv.poolStats().usedFrames;
    write(vms[1]!, 9, pageOf(12));
    expect(hv.poolStats().usedFrames).toBe(used + 1);
    expect(read(vms[0]!, 9)).toEqual(pageOf(11));
    expect(read(vms[1]!, 9)).toEqual(pageOf(12));
    expect(read(vms[2]!, 9)).toEqual(pageOf(11));
    expect(sharer.stats()).toMatchObject({ pagesShared: 2, framesSaved: 1, cowBreaks: 1 });
    write(vms[0]!, 9, pageOf(13));
    write(vms[2]!, 9, pageOf(14)); // the last sharer: the flag goes, no copy
    expect(hv.poolStats().usedFrames).toBe(used + 2);
    expect(sharer.stats()).toMatchObject({ pagesShared: 0, framesSaved: 0, cowBreaks: 3 });
    expect(cowExits(vms)).toBe(3);
  });

  it('makes a page left alone on its frame a plain private page again at its next visit', () => {
    const { hv, vms } = smallVms(2);
    const [a, b] = vms as [Vm, Vm];
    for (const vm of vms) write(vm, 3, pageOf(51));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    sharer.scan(100);
    expect(a.memory.sameFrame(3, b.memory, 3)).toBe(true);
    write(b, 3, pageOf(52)); // b gets a copy; a is alone on the frame, still copy-on-write
    expect(a.memory.flagsOf(3)).toBe(P2mFlag.COPY_ON_WRITE);
    sharer.scan(100);
    expect(a.memory.flagsOf(3)).toBe(0);
    expect(sharer.stats()).toMatchObject({ cowBreaks: 1, pagesUnmerged: 1, pagesShared: 0, framesSaved: 0 });
    write(a, 3, pageOf(53));
    expect(cowExits(vms)).toBe(1); // a's write took no exit
    expect(read(a, 3)).toEqual(pageOf(53));
    expect(read(b, 3)).toEqual(pageOf(52));
  });

  it('shares pages within one VM too', () => {
    const { hv, vms } = smallVms(1);
    const [a] = vms as [Vm];
    for (let gpn = 10; gpn < 20; gpn++) write(a, gpn, pageOf(99));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    const before = hv.poolStats().usedFrames;
    sharer.scan(100);
    expect(before - hv.poolStats().usedFrames).toBe(9);
    expect(sharer.stats()).toMatchObject({ pagesShared: 10, framesSaved: 9 });
  });
});

describe('zero pages', () => {
  it("'share': every zero page of every VM maps one frame, and still reads zero without a fault", () => {
    const { hv, vms } = smallVms(3);
    const zero = new Uint8Array(PAGE_SIZE);
    for (const vm of vms) for (let gpn = 0; gpn < 20; gpn++) write(vm, gpn, zero); // present, all zero
    write(vms[0]!, 30, pageOf(5));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    expect(hv.poolStats().usedFrames).toBe(61);
    sharer.scan(1000);
    expect(hv.poolStats().usedFrames).toBe(2); // one zero frame and the other page
    const stats = sharer.stats();
    expect(stats).toMatchObject({ zeroPageMerges: 59, pagesShared: 60, framesSaved: 59, zeroPagesReleased: 0 });
    for (const vm of vms) for (let gpn = 0; gpn < 20; gpn++) expect(vm.memory.isZeroPage(gpn) && vm.memory.stateOf(gpn) === PageState.PRESENT).toBe(true);
    write(vms[2]!, 4, pageOf(6));
    expect(read(vms[2]!, 4)).toEqual(pageOf(6));
    expect(read(vms[1]!, 4)).toEqual(zero);
  });

  it("'release': zero pages become untouched (no frame at all) and read as zero", () => {
    const { hv, vms } = smallVms(2);
    const zero = new Uint8Array(PAGE_SIZE);
    for (const vm of vms) for (let gpn = 0; gpn < 20; gpn++) write(vm, gpn, zero);
    const sharer = new PageSharer(hv, { mergeOnlyStable: false, zeroPages: 'release' });
    sharer.scan(1000);
    expect(hv.poolStats().usedFrames).toBe(0);
    expect(sharer.stats()).toMatchObject({ zeroPagesReleased: 40, merges: 0, pagesShared: 0 });
    for (const vm of vms) expect(vm.memory.stateOf(3)).toBe(PageState.UNTOUCHED);
    expect(read(vms[0]!, 3)).toEqual(zero);
  });
});

describe('what the scanner leaves alone, and VMs that come and go', () => {
  it('skips pages of run-backed regions by default; with largeRegions share it breaks the region up', () => {
    const { hv, vms } = smallVms(2, { hostMiB: 32, largePages: 'always' });
    for (const vm of vms) write(vm, 7, pageOf(21)); // the first touch backs the whole region with a run
    expect(vms.every((vm) => vm.memory.regionIsLarge(0))).toBe(true);
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    sharer.scan(5000);
    expect(sharer.stats().merges).toBe(0);
    expect(sharer.stats().largeRegionPagesSkipped).toBeGreaterThan(0);
    expect(vms.every((vm) => vm.memory.regionIsLarge(0))).toBe(true);
    sharer.largeRegions = 'share';
    const before = hv.poolStats().usedFrames;
    sharer.scan(5000);
    const stats = sharer.stats();
    expect(stats.merges).toBeGreaterThan(1000); // the zero pages of both runs, and page 7
    expect(stats.regionsBrokenUp).toBeGreaterThanOrEqual(1);
    expect(vms[1]!.memory.regionIsLarge(0)).toBe(false);
    expect(vms[0]!.memory.sameFrame(7, vms[1]!.memory, 7)).toBe(true);
    expect(before - hv.poolStats().usedFrames).toBe(stats.framesSaved);
    expect(read(vms[1]!, 7)).toEqual(pageOf(21));
  });

  it('forgets a destroyed VM; the pages it shared stay right in the others', () => {
    const { hv, vms } = smallVms(3);
    for (const vm of vms) write(vm, 2, pageOf(31));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false });
    sharer.scan(100);
    expect(sharer.stats().pagesShared).toBe(3);
    hv.destroyVm(vms[0]!);
    const stats = sharer.stats();
    expect(stats).toMatchObject({ pagesShared: 2, framesSaved: 1, pagesUnmerged: 1 });
    expect(read(vms[1]!, 2)).toEqual(pageOf(31));
    const late = hv.createVm({ memoryBytes: SMALL, name: 'late', largePages: 'off' });
    write(late, 2, pageOf(31));
    sharer.scan(100); // a VM created later takes part
    expect(late.memory.sameFrame(2, vms[2]!.memory, 2)).toBe(true);
  });

  it('takes only the VMs `include` names, and refuses bad options', () => {
    const { hv, vms } = smallVms(2);
    for (const vm of vms) write(vm, 0, pageOf(41));
    const sharer = new PageSharer(hv, { mergeOnlyStable: false, include: (vm) => vm.name !== 'v1' });
    sharer.scan(100);
    expect(vms[0]!.memory.sameFrame(0, vms[1]!.memory, 0)).toBe(false);
    expect(() => new PageSharer(hv, { pagesPerScan: 0 })).toThrow(PageSharingError);
    expect(() => new PageSharer(hv, { scanEveryInstructions: 1.5 })).toThrow(/scanEveryInstructions/);
    expect(() => new PageSharer(hv, { zeroPages: 'keep' as 'share' })).toThrow(/zeroPages/);
    expect(() => sharer.scan(-1)).toThrow(PageSharingError);
  });

  it('the default hash: equal pages hash equal, one flipped bit anywhere changes it', () => {
    const base = pageOf(77);
    const hash = pageHash64(base);
    expect(Number.isSafeInteger(hash)).toBe(true);
    expect(pageHash64(base.slice())).toBe(hash);
    const seen = new Set<number>([hash]);
    for (let bit = 0; bit < PAGE_SIZE * 8; bit += 97) {
      const changed = base.slice();
      changed[bit >>> 3]! ^= 1 << (bit & 7);
      seen.add(pageHash64(changed));
    }
    // Two flipped top bits in words of one lane (the weakness a plain multiply chain has).
    const twoTop = base.slice();
    twoTop[3]! ^= 0x80;
    twoTop[19]! ^= 0x80;
    seen.add(pageHash64(twoTop));
    expect(seen.size).toBe(1 + Math.ceil((PAGE_SIZE * 8) / 97) + 1);
  });
});

describe('property: every page always reads back what was last written to it', () => {
  type Op = { kind: 'write'; vm: number; gpn: number; seed: number } | { kind: 'scan'; pages: number };
  const PAGES = 12;
  const op: fc.Arbitrary<Op> = fc.oneof(
    // Few distinct contents (zero among them), so that equal pages are common.
    fc.record({ kind: fc.constant('write' as const), vm: fc.nat(2), gpn: fc.nat(PAGES - 1), seed: fc.nat(4) }),
    fc.record({ kind: fc.constant('scan' as const), pages: fc.nat(40) }),
  );
  const hashes: Record<string, PageSharerOptions['hash']> = { default: undefined, constant: () => 0, firstWord: (page) => page[0]! };

  it('holds across 2–3 VMs, random writes and random scans', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 3 }),
        fc.array(op, { minLength: 1, maxLength: 60 }),
        fc.constantFrom('default', 'constant', 'firstWord'),
        fc.boolean(),
        fc.constantFrom('share' as const, 'release' as const),
        (count, ops, hashName, mergeOnlyStable, zeroPages) => {
          const hv = createHypervisor({ hostMemoryBytes: 4 * MiB });
          const vms = Array.from({ length: count }, (_, i) => hv.createVm({ memoryBytes: PAGES * PAGE_SIZE, name: `p${i}`, largePages: 'off' }));
          const model = vms.map(() => new Array<number>(PAGES).fill(0));
          const hash = hashes[hashName];
          const sharer = new PageSharer(hv, { mergeOnlyStable, zeroPages, ...(hash ? { hash } : {}) });
          for (const step of ops) {
            if (step.kind === 'write') {
              if (step.vm >= count) continue;
              write(vms[step.vm]!, step.gpn, pageOf(step.seed));
              model[step.vm]![step.gpn] = step.seed;
            } else {
              sharer.scan(step.pages);
            }
            for (let v = 0; v < count; v++) {
              for (let gpn = 0; gpn < PAGES; gpn++) {
                if (Buffer.compare(read(vms[v]!, gpn), pageOf(model[v]![gpn]!)) !== 0) return false;
              }
            }
          }
          // The figures agree with the pool: frames in use = pages present − frames saved.
          const stats = sharer.stats();
          const present = vms.reduce((sum, vm) => sum + vm.memory.presentPages, 0);
          return hv.poolStats().usedFrames === present - stats.framesSaved && stats.framesSaved <= stats.pagesShared;
        },
      ),
      { numRuns: 150 },
    );
  });
});
