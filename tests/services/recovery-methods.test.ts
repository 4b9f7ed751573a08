// The recovery methods of issue 12 item 3 (services/recovery/{hash,parity,clean-copy}.ts,
// docs/recovery.md) on real nanokernel guests: a page's bytes are copied, a window of bits is
// corrupted in the copy as a memory error would corrupt it, and recover() must give back exactly
// the original bytes — or null when the page is not recoverable (written since the method took
// note of it, a window too wide, an ambiguous hash, a second error in a parity group). With
// the write tracking on, the guest computes exactly what it computes without it (output and
// instruction count); the costs are printed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { AbsentState, createHypervisor, PageState, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { CheckpointReader, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { CleanCopyRecovery, imagePageBytes, imagePages } from '../../services/recovery/clean-copy.ts';
import { MemoryErrorService } from '../../services/recovery/index.ts';
import { mixA, mixB, pageHash, StoredHashRecovery } from '../../services/recovery/hash.ts';
import { ParityGroups } from '../../services/recovery/parity.ts';
import type { ErrorReport } from '../../services/recovery/types.ts';
import { PageWriteTracker, RECOVERY_FLAG, sameOutsideWindow } from '../../services/recovery/write-tracking.ts';

const REPO = join(import.meta.dirname, '..', '..');
const { image } = assembleFile(join(REPO, 'examples/nanokernel/kernel.s'));
const MiB = 2 ** 20;
const PAGE = 4096;

interface Guest {
  hv: Hypervisor;
  vm: Vm;
  output: CaptureSink;
}

function boot(bootArgs: string, memoryMiB = 16): Guest {
  const hv = createHypervisor({ hostMemoryBytes: (memoryMiB + 16) * MiB });
  const vm = hv.createVm({ memoryBytes: memoryMiB * MiB, name: 'g' });
  vm.loadImage(image);
  const output = new CaptureSink();
  attachStandardDevices(vm, { output, bootArgs });
  return { hv, vm, output };
}

/** Runs until the guest powers off (fails on anything else). */
function runToEnd(guest: Guest, step = 1_000_000): void {
  for (let i = 0; i < 10_000; i++) {
    const [result] = guest.hv.run({ maxInstructions: step }, [guest.vm]);
    const kind = result!.reason.kind;
    if (kind === 'halted') return;
    if (kind !== 'budget' && kind !== 'idle') throw new Error(`stopped: ${JSON.stringify(result!.reason)}`);
  }
  throw new Error('never finished');
}

/** Runs `instructions` guest instructions. */
function runFor(guest: Guest, instructions: number): void {
  const [result] = guest.hv.run({ maxInstructions: instructions }, [guest.vm]);
  expect(['budget', 'idle']).toContain(result!.reason.kind);
}

/** A copy of `page` with bits [offset, offset + bits) flipped (bit i is bit i % 8 of byte i / 8). */
function flip(page: Uint8Array, offset: number, bits: number): Uint8Array {
  const bad = page.slice();
  for (let bit = offset; bit < offset + bits; bit++) bad[bit >>> 3]! ^= 1 << (bit & 7);
  return bad;
}

function report(gpn: number, windowBitOffset: number, windowBits: number): ErrorReport {
  return { gpa: gpn * PAGE + (windowBitOffset >>> 3), gpn, windowBitOffset, windowBits };
}

/** Present pages with some non-zero bytes. */
function dataPages(vm: Vm, from = 0): number[] {
  const out: number[] = [];
  vm.memory.forEachPage(PageState.PRESENT, (gpn) => {
    if (gpn >= from && !vm.memory.isZeroPage(gpn)) out.push(gpn);
  });
  return out;
}

/** Wall time of a whole run of `args` with no recovery method (the baseline). */
function plainRun(args: string): { guest: Guest; ms: number } {
  const guest = boot(args);
  const t0 = performance.now();
  runToEnd(guest);
  return { guest, ms: performance.now() - t0 };
}

/**
 * Runs `args` with `keep` set up on the VM (a method keeping its state from a ticker), checks a
 * mid-run recovery with `midRun` after `midAt` instructions, runs to the end, and checks that the
 * guest's output and instruction count equal the plain run's. Returns the run's wall time.
 */
function trackedRun<T>(args: string, plain: Guest, keep: (vm: Vm) => T, midAt: number, midRun: (vm: Vm, method: T) => void): { ms: number; method: T; vm: Vm } {
  const guest = boot(args);
  const method = keep(guest.vm);
  const t1 = performance.now();
  runFor(guest, midAt);
  midRun(guest.vm, method);
  runToEnd(guest);
  const elapsed = performance.now() - t1;
  expect(guest.output.text()).toBe(plain.output.text());
  expect(guest.vm.instructionsRetired).toBe(plain.vm.instructionsRetired);
  return { ms: elapsed, method, vm: guest.vm };
}

const ms = (ns: number): string => (ns / 1e6).toFixed(2);

describe('write tracking shared by the recovery methods', () => {
  it('seals with the PARITY flag, sees the bytes before the first write, and finds pages replaced unseen', () => {
    const guest = boot('walker 1M seq 1');
    runToEnd(guest);
    const { vm } = guest;
    const tracker = PageWriteTracker.of(vm);
    expect(PageWriteTracker.of(vm)).toBe(tracker);
    const [a, b] = dataPages(vm, 0x100);
    const seen: Array<[number, number]> = [];
    const lost: number[] = [];
    const stop = tracker.listen({ written: (gpn, before) => seen.push([gpn, before[0]!]), lost: (gpn) => lost.push(gpn) });
    expect(tracker.seal(a!)).toBe(true);
    expect(tracker.seal(b!)).toBe(true);
    expect(vm.memory.flagsOf(a!) & RECOVERY_FLAG).toBe(RECOVERY_FLAG);
    const first = vm.memory.readPhysical(a! * PAGE, 1)[0]!;
    vm.memory.writePhysical(a! * PAGE, new Uint8Array([first ^ 0xff]));
    expect(seen).toEqual([[a, first]]);
    expect(tracker.isSealed(a!)).toBe(false);
    expect(vm.memory.flagsOf(a!) & RECOVERY_FLAG).toBe(0);
    vm.memory.writePhysical(a! * PAGE, new Uint8Array([first])); // no second exit
    expect(seen.length).toBe(1);
    // A page whose frame is replaced without a write (here: released and reinstalled) is lost.
    const copy = vm.memory.readPhysical(b! * PAGE, PAGE);
    vm.memory.installPage(b!, copy);
    expect(tracker.validate()).toBe(1);
    expect(lost).toEqual([b]);
    stop();
  });

  it('reseals a rebuilt page reinstalled with its bytes, and refuses it if it is poisoned again before that (it may have been written unseen)', () => {
    const guest = boot('walker 1M seq 1');
    runToEnd(guest);
    const { vm } = guest;
    const hash = new StoredHashRecovery(vm);
    hash.scan();
    const tracker = PageWriteTracker.of(vm);
    const [gpn] = dataPages(vm, 0x100);
    const good = vm.memory.pageBytes(gpn!).slice();
    // Poisoned (as GuestMemory.poisonPage leaves it: absent in POISONED), rebuilt, reinstalled.
    vm.memory.releasePage(gpn!, AbsentState.POISONED);
    const rebuilt = hash.recover(vm, report(gpn!, 40, 16), flip(good, 40, 16));
    expect(rebuilt).toEqual(good);
    vm.memory.installPage(gpn!, rebuilt!);
    tracker.validate();
    expect(tracker.stats.resealed).toBe(1);
    expect(vm.memory.flagsOf(gpn!) & RECOVERY_FLAG).toBe(RECOVERY_FLAG);
    vm.memory.releasePage(gpn!, AbsentState.POISONED);
    expect(hash.recover(vm, report(gpn!, 40, 16), flip(good, 40, 16))).toEqual(good);
    // Reinstalled, written with no exit (no seal yet), poisoned again before any validate: refused.
    vm.memory.installPage(gpn!, good);
    vm.memory.writePhysical(gpn! * PAGE + 5, new Uint8Array([0xaa]));
    const written = vm.memory.pageBytes(gpn!).slice();
    vm.memory.releasePage(gpn!, AbsentState.POISONED);
    expect(tracker.unsettled(gpn!)).toBe(true);
    expect(hash.recover(vm, report(gpn!, 40, 8), flip(written, 40, 8))).toBeNull();
  });

  it('compares outside the window bit by bit', () => {
    const page = new Uint8Array(PAGE).map((_, i) => i * 7);
    expect(sameOutsideWindow(flip(page, 13, 9), page, 13, 9)).toBe(true);
    expect(sameOutsideWindow(flip(page, 13, 10), page, 13, 9)).toBe(false);
    expect(sameOutsideWindow(flip(page, 12, 1), page, 13, 9)).toBe(false);
    expect(sameOutsideWindow(flip(page, 32760, 8), page, 32760, 8)).toBe(true);
  });
});

describe('stored-hash recovery (StoredHashRecovery)', () => {
  it('rebuilds 1-, 8- and 16-bit windows of real guest pages, including windows across a word boundary', () => {
    const guest = boot('walker 1M random 1');
    runToEnd(guest);
    const { vm } = guest;
    const hash = new StoredHashRecovery(vm);
    const hashed = hash.scan();
    expect(hashed).toBeGreaterThan(200);
    const pages = dataPages(vm, 0x100).slice(0, 24);
    expect(pages.length).toBe(24);
    const times: Record<number, number[]> = { 1: [], 8: [], 16: [] };
    let n = 0;
    for (const gpn of pages) {
      const good = vm.memory.pageBytes(gpn).slice();
      for (const bits of [1, 8, 16]) {
        // Offsets: aligned, in the middle of a word, across a 32-bit word boundary, at the page's end.
        for (const offset of [0, 5 + 32 * (n % 1000), 32 * 77 + 32 - (bits >> 1), PAGE * 8 - bits]) {
          const bad = flip(good, offset, bits);
          const start = process.hrtime.bigint();
          const rebuilt = hash.recover(vm, report(gpn, offset, bits), bad);
          times[bits]!.push(Number(process.hrtime.bigint() - start));
          expect(rebuilt).not.toBeNull();
          expect(Buffer.compare(rebuilt!, good)).toBe(0);
          n++;
        }
      }
    }
    const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
    console.log(
      `[recovery] hash: ${hashed} pages hashed and sealed in ${ms(hash.stats.scanNs)} ms (${(hash.stats.scanNs / hashed / 1000).toFixed(1)} µs/page); ` +
        `reconstruction (median µs): 1 bit ${(median(times[1]!) / 1000).toFixed(0)}, 8 bits ${(median(times[8]!) / 1000).toFixed(0)}, 16 bits ${(median(times[16]!) / 1000).toFixed(0)}`,
    );
    expect(median(times[16]!)).toBeLessThan(50e6); // 2^16 candidates: well under 50 ms
    expect(hash.stats.recovered).toBe(n);
  });

  it('refuses a page written since its scan, a window wider than k, and a copy that matches no candidate', () => {
    const guest = boot('walker 1M seq 1');
    runToEnd(guest);
    const { vm } = guest;
    const hash = new StoredHashRecovery(vm, { maxWindowBits: 12 });
    hash.scan();
    const [gpn, other] = dataPages(vm, 0x100);
    const good = vm.memory.pageBytes(gpn!).slice();
    expect(hash.recover(vm, report(gpn!, 100, 12), flip(good, 100, 12))).toEqual(good);
    expect(hash.recover(vm, report(gpn!, 100, 13), flip(good, 100, 13))).toBeNull();
    expect(hash.stats.failedTooWide).toBe(1);
    // Corrupted outside the window too: no value of the window gives the stored hash.
    expect(hash.recover(vm, report(gpn!, 100, 8), flip(flip(good, 100, 8), 4000, 1))).toBeNull();
    expect(hash.stats.failedNoMatch).toBe(1);
    // Another VM's report, or a page written since the scan: no hash.
    vm.memory.writePhysical(other! * PAGE + 40, new Uint8Array([1, 2, 3]));
    expect(hash.hasHash(other!)).toBe(false);
    const now = vm.memory.pageBytes(other!).slice();
    expect(hash.recover(vm, report(other!, 0, 1), flip(now, 0, 1))).toBeNull();
    expect(hash.stats.failedNoHash).toBe(1);
    // The next scan hashes it again.
    expect(hash.scan()).toBe(1);
    expect(hash.recover(vm, report(other!, 0, 1), flip(now, 0, 1))).toEqual(now);
  });

  it('refuses an ambiguous window: two values of the window match the stored hash', () => {
    const guest = boot('walker 1M seq 1');
    runToEnd(guest);
    const { vm } = guest;
    // A weak mix that cannot see bit 0 of word 10: both values of that bit give the same hash.
    const blind = (index: number, word: number): number => (index === 10 ? word & ~1 : word);
    const hash = new StoredHashRecovery(vm, { mix: { a: (i, w) => mixA(i, blind(i, w)), b: (i, w) => mixB(i, blind(i, w)) } });
    hash.scan();
    const [gpn] = dataPages(vm, 0x100);
    const good = vm.memory.pageBytes(gpn!).slice();
    // A window holding that bit (bits 316 … 323 = word 9's top bits and word 10's low bits): two matches.
    expect(hash.recover(vm, report(gpn!, 316, 8), flip(good, 316, 8))).toBeNull();
    expect(hash.stats.failedAmbiguous).toBe(1);
    // A window elsewhere is unique and rebuilt.
    expect(hash.recover(vm, report(gpn!, 400, 8), flip(good, 400, 8))).toEqual(good);
    // The real hash tells the two candidates apart.
    const other = good.slice();
    other[40]! ^= 1; // bit 320 = bit 0 of word 10
    expect(pageHash(other)).not.toEqual(pageHash(good));
    // The scan's inlined hash is the documented one.
    expect(pageHash(good)).toEqual(pageHash(good, { a: mixA, b: mixB }));
  });

  it('keeps hashes from a ticker while a write-heavy guest runs: same output and instructions as without, with a page recovered and reinstalled mid-run', () => {
    const args = 'walker 4M seq 24';
    const plain = plainRun(args);
    const run = trackedRun(args, plain.guest, (vm) => {
      const hash = new StoredHashRecovery(vm);
      hash.startScanning(500_000);
      return hash;
    }, 4_000_000, (vm, hash) => {
      // Mid-run: a page with a current hash is recoverable.
      const gpn = dataPages(vm, 0x100).find((p) => hash.hasHash(p))!;
      expect(gpn).toBeDefined();
      const good = vm.memory.pageBytes(gpn).slice();
      const rebuilt = hash.recover(vm, report(gpn, 1234, 16), flip(good, 1234, 16));
      expect(rebuilt).toEqual(good);
      // As the memory-error service does: the rebuilt page goes on a new frame, and the guest goes on.
      vm.memory.installPage(gpn, rebuilt!);
    });
    const tracker = PageWriteTracker.of(run.vm);
    console.log(
      `[recovery] hash keeping, ${args} (${run.vm.instructionsRetired} insns), scan every 500k insns: ${plain.ms.toFixed(0)} ms → ${run.ms.toFixed(0)} ms ` +
        `(${((run.ms / plain.ms - 1) * 100).toFixed(0)} %); ${run.method.stats.pagesHashed} pages hashed in ${ms(run.method.stats.scanNs)} ms, ${tracker.stats.writeExits} write exits`,
    );
  });
});

/** A finished walker guest with parity over groups of 8, and the data pages of its first group holding data. */
function parityGroupOfFinishedGuest(): { vm: Vm; parity: ParityGroups; group: number[] } {
  const guest = boot('walker 1M seq 1');
  runToEnd(guest);
  const parity = new ParityGroups(guest.vm, { groupPages: 8 });
  parity.refresh();
  const pages = dataPages(guest.vm, 0x100);
  return { vm: guest.vm, parity, group: pages.filter((p) => Math.floor(p / 8) === Math.floor(pages[0]! / 8)) };
}

describe('parity recovery (ParityGroups)', () => {
  it('rebuilds a page from the other N−1 pages and the parity page, for N = 8 and 16', () => {
    const guest = boot('walker 1M random 1');
    runToEnd(guest);
    const { vm } = guest;
    for (const groupPages of [8, 16]) {
      const parity = new ParityGroups(vm, { groupPages });
      expect(parity.refresh()).toBeGreaterThan(200);
      for (const gpn of dataPages(vm, 0x100).slice(0, 16)) {
        const good = vm.memory.pageBytes(gpn).slice();
        for (const [offset, bits] of [[0, 1], [777, 8], [20000, 16], [32704, 64]] as const) {
          const rebuilt = parity.recover(vm, report(gpn, offset, bits), flip(good, offset, bits));
          expect(rebuilt).toEqual(good);
        }
      }
      expect(parity.parityBytes).toBe(Math.ceil(vm.memory.pageCount / groupPages) * PAGE);
      parity.dispose();
    }
  });

  it('follows guest writes (old bytes out at the exit, new bytes in at refresh) and refuses a page written since', () => {
    const { vm, parity, group } = parityGroupOfFinishedGuest();
    expect(group.length).toBeGreaterThanOrEqual(3);
    const [written, victim] = group;
    vm.memory.writePhysical(written! * PAGE + 100, new Uint8Array([9, 9, 9, 9]));
    // The written page left the parity: the victim is still rebuilt exactly.
    const good = vm.memory.pageBytes(victim!).slice();
    expect(parity.recover(vm, report(victim!, 64, 16), flip(good, 64, 16))).toEqual(good);
    // The written page itself is not covered until the next refresh.
    const writtenNow = vm.memory.pageBytes(written!).slice();
    expect(parity.isCovered(written!)).toBe(false);
    expect(parity.recover(vm, report(written!, 64, 16), flip(writtenNow, 64, 16))).toBeNull();
    expect(parity.refresh()).toBe(1);
    expect(parity.recover(vm, report(written!, 64, 16), flip(writtenNow, 64, 16))).toEqual(writtenNow);
    expect(parity.recover(vm, report(victim!, 64, 16), flip(good, 64, 16))).toEqual(good);
  });

  it('detects a second error in the group (another page poisoned) instead of miscomputing', () => {
    const { vm, parity, group } = parityGroupOfFinishedGuest();
    const [first, second] = group;
    const good = vm.memory.pageBytes(first!).slice();
    const secondGood = vm.memory.pageBytes(second!).slice();
    // The second page is poisoned (absent, its frame gone): the group cannot rebuild the first.
    vm.memory.releasePage(second!, AbsentState.POISONED);
    expect(parity.recover(vm, report(first!, 8, 8), flip(good, 8, 8))).toBeNull();
    expect(parity.stats.failedGroup).toBe(1);
    // An unreported corruption elsewhere in the group shows as a mismatch outside the window.
    vm.memory.installPage(second!, flip(secondGood, 5000, 3)); // replaced unseen: the group is recomputed at refresh
    expect(parity.recover(vm, report(first!, 8, 8), flip(good, 8, 8))).toBeNull();
    parity.refresh();
    expect(parity.stats.groupsRecomputed).toBe(1);
    expect(parity.recover(vm, report(first!, 8, 8), flip(good, 8, 8))).toEqual(good);
  });

  it('keeps parity current on a write-heavy guest: same output and instructions with pages recovered and reinstalled mid-run, cost at N = 8 and 16', () => {
    const args = 'walker 4M seq 24';
    const plain = plainRun(args);
    const lines: string[] = [];
    for (const groupPages of [8, 16]) {
      const run = trackedRun(args, plain.guest, (vm) => {
        const parity = new ParityGroups(vm, { groupPages });
        parity.startRefreshing(500_000);
        return parity;
      }, 3_000_000, (vm, parity) => {
        parity.refresh();
        for (const gpn of dataPages(vm, 0x100).slice(0, 8)) {
          const good = vm.memory.pageBytes(gpn).slice();
          const rebuilt = parity.recover(vm, report(gpn, 999, 16), flip(good, 999, 16));
          expect(rebuilt).toEqual(good);
          vm.memory.installPage(gpn, rebuilt!); // on a new frame, as the service does: the group is recomputed at the next refresh
        }
      });
      const tracker = PageWriteTracker.of(run.vm);
      // The reinstalled pages came back with their rebuilt bytes: sealed again, no group recomputed.
      expect(tracker.stats.resealed).toBe(8);
      expect(run.method.stats.groupsRecomputed).toBe(0);
      lines.push(
        `N=${groupPages}: ${run.ms.toFixed(0)} ms (${((run.ms / plain.ms - 1) * 100).toFixed(0)} %), ${tracker.stats.writeExits} write exits, ` +
          `${run.method.stats.included} inclusions, parity upkeep ${ms(run.method.stats.keepNs)} ms, ${run.method.parityBytes / 1024} KiB of parity`,
      );
    }
    console.log(`[recovery] parity, ${args} (${plain.guest.vm.instructionsRetired} insns), refresh every 500k insns: plain ${plain.ms.toFixed(0)} ms; ${lines.join('; ')}`);
  });
});

describe('clean-copy recovery from the guest image (CleanCopyRecovery)', () => {
  it('rebuilds a corrupted nanokernel code page from the image, and refuses a written image page', () => {
    const guest = boot('walker 1M seq 1');
    runFor(guest, 200_000);
    const { vm } = guest;
    const clean = new CleanCopyRecovery(vm);
    const admitted = clean.scan();
    const codePage = image.entry / PAGE; // the page of the kernel's entry point (.text)
    expect(imagePages(image)).toContain(codePage);
    expect(clean.isClean(codePage)).toBe(true);
    expect(admitted).toBeGreaterThanOrEqual(6);
    const good = vm.memory.pageBytes(codePage).slice();
    expect(good).toEqual(imagePageBytes(image, codePage));
    for (const [offset, bits] of [[0, 1], [100, 64], [12345, 16]] as const) {
      expect(clean.recover(vm, report(codePage, offset, bits), flip(good, offset, bits))).toEqual(good);
    }
    runToEnd(guest);
    expect(guest.output.text()).toContain('exited with code 0');
    // The code page is still clean after the run; a page of .data the kernel wrote is not.
    expect(clean.isClean(codePage)).toBe(true);
    const dataPage = 0x7000 / PAGE;
    const now = vm.memory.pageBytes(dataPage).slice();
    if (!clean.isClean(dataPage)) expect(clean.recover(vm, report(dataPage, 0, 8), flip(now, 0, 8))).toBeNull();
    // A host write to the code page makes it dirty: no longer recoverable from the image.
    vm.memory.writePhysical(codePage * PAGE + 8, new Uint8Array([0, 0, 0, 0]));
    const written = vm.memory.pageBytes(codePage).slice();
    expect(clean.recover(vm, report(codePage, 64, 8), flip(written, 64, 8))).toBeNull();
    expect(clean.stats.dirtied).toBeGreaterThanOrEqual(1);
  });

  it('rebuilds a data page still as a checkpoint saved it, and refuses it once the guest has written it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bv-recovery-'));
    try {
      const guest = boot('walker 2M seq 12');
      runFor(guest, 1_500_000);
      const { vm } = guest;
      const path = join(dir, 'g.ckpt');
      saveVmCheckpoint(vm, path);
      const reader = CheckpointReader.open(path);
      const clean = new CleanCopyRecovery(vm, { checkpoint: reader });
      clean.scan();
      expect(clean.stats.admittedFromCheckpoint).toBeGreaterThan(400);
      const walkerPages = dataPages(vm, 0x20).filter((gpn) => !imagePages(image).includes(gpn) && clean.isClean(gpn));
      expect(walkerPages.length).toBeGreaterThan(300);
      const gpn = walkerPages[200]!;
      const good = vm.memory.pageBytes(gpn).slice();
      expect(clean.recover(vm, report(gpn, 3000, 16), flip(good, 3000, 16))).toEqual(good);
      // The walker's next pass writes its pages: they leave the checkpoint's state for good.
      runToEnd(guest);
      const now = vm.memory.pageBytes(gpn).slice();
      expect(clean.isClean(gpn)).toBe(false);
      expect(clean.recover(vm, report(gpn, 3000, 16), flip(now, 3000, 16))).toBeNull();
      const blocks = clean.stats.checkpointBlocksRead;
      clean.scan(); // settled pages: their blocks are not read again
      expect(clean.stats.checkpointBlocksRead - blocks).toBeLessThanOrEqual(2);
      reader.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('with the memory-error service (services/recovery/index.ts)', () => {
  for (const method of ['parity', 'hash'] as const) {
    it(`errors injected into code and data pages (now and on access) are recovered by clean copy and ${method}: the guest computes what an error-free run computes`, () => {
      const args = 'walker 2M random 6';
      const plain = plainRun(args);
      const guest = boot(args);
      const clean = new CleanCopyRecovery(guest.vm);
      clean.scan();
      const parity = method === 'parity' ? new ParityGroups(guest.vm, { groupPages: 16 }) : null;
      const hash = method === 'hash' ? new StoredHashRecovery(guest.vm) : null;
      parity?.startRefreshing(200_000);
      hash?.startScanning(200_000);
      const errors = new MemoryErrorService(guest.vm, { methods: [clean, parity ?? hash!] });
      runFor(guest, 2_000_000);
      parity?.refresh(); // a patrol scrub right after a refresh: every page is covered
      hash?.scan();
      errors.inject({ gpa: image.entry + 64, windowBits: 16, report: 'on-access' });
      errors.inject({ gpa: 0x2000 + 100, windowBits: 8, report: 'now' });
      // Data pages of distinct parity groups (two errors in one group would be a machine check, rightly).
      const seen = new Set<number>();
      const data = dataPages(guest.vm, 0x200).filter((gpn) => !seen.has(gpn >> 4) && seen.add(gpn >> 4) !== undefined);
      expect(data.length).toBeGreaterThanOrEqual(3);
      data.slice(0, 6).forEach((gpn, i) => errors.inject({ gpa: gpn * PAGE + 512, windowBits: 16, report: i % 2 === 0 ? 'on-access' : 'now' }));
      runToEnd(guest);
      expect(errors.log().map((entry) => entry.outcome).filter((outcome) => !outcome.startsWith('recovered-by-'))).toEqual([]);
      expect(errors.stats().recovered['clean-copy']).toBe(2);
      expect(errors.stats().recovered[method]).toBe(Math.min(6, data.length));
      expect(guest.output.text()).toBe(plain.guest.output.text());
      expect(guest.vm.instructionsRetired).toBe(plain.guest.vm.instructionsRetired);
    });
  }
});
