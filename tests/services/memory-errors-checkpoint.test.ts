/**
 * Memory errors and VM state (issue 12, "errors during a live snapshot"): a poisoned page nobody
 * could rebuild travels in checkpoints as poisoned (VmState.poisonedPages, no bytes) and the
 * restored guest takes the machine check the saved one would have; a live snapshot that meets a
 * page poisoned after its pause gives recovery its chance (GuestMemory.settlePage, no machine
 * check counted) and saves the rebuilt bytes, or records the page as poisoned; the file never
 * holds corrupted bytes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PageState } from '../../kernel/index.ts';
import { CheckpointReader, saveVmCheckpoint, startLiveSnapshot } from '../../services/checkpoint/index.ts';
import { CleanCopyRecovery } from '../../services/recovery/clean-copy.ts';
import { MemoryErrorService, translateReadOnly } from '../../services/recovery/index.ts';
import { KERNEL_IMAGE, toUserMode } from '../integration/nanokernel-guest.ts';
import { boot, MiB, restore, type Machine } from './vm-machine.ts';

const WALKER = 'walker 1M seq 3';
const HEAP_BASE = 0x4040_0000;
const dir = mkdtempSync(join(tmpdir(), 'bv-memerr-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function started(instructions = 400_000): Machine {
  const machine = boot(KERNEL_IMAGE, 16 * MiB, WALKER);
  machine.hv.run({ maxInstructions: instructions }, [machine.vm]);
  toUserMode(machine.hv, machine.vm);
  return machine;
}

/** Runs to the end: the console output from now on, the stop reason and the instructions retired. */
function finish(machine: Machine): { output: string; reason: unknown; instructions: number } {
  const before = machine.output.text().length;
  const [result] = machine.hv.run({ maxInstructions: 200_000_000 }, [machine.vm]);
  return { output: machine.output.text().slice(before), reason: result!.reason, instructions: machine.vm.instructionsRetired };
}

/** The guest page behind a walker heap address. */
function walkerPage(machine: Machine, offset: number): number {
  const gpa = translateReadOnly(machine.vm.memory, machine.vm.vcpus[0]!.ptbr, HEAP_BASE + offset);
  expect(gpa).not.toBeNull();
  return Math.floor(gpa! / 4096);
}

describe('a poisoned page in a checkpoint', () => {
  for (const mode of ['eager', 'lazy'] as const) {
    it(`is saved without bytes, listed, and poisoned again by a ${mode} restore: both guests take the same machine check and end the same way`, () => {
      const machine = started();
      const service = new MemoryErrorService(machine.vm); // no method: the error stays
      const gpn = walkerPage(machine, 7 * 4096);
      service.inject({ gpa: gpn * 4096 + 0x80, windowBits: 8, report: 'now' });
      expect(service.log()[0]!.outcome).toBe('unrecovered');
      const path = join(dir, `poisoned-${mode}.bvc`);
      saveVmCheckpoint(machine.vm, path);
      const reader = CheckpointReader.open(path);
      expect(reader.contents.config.poisonedPages).toEqual([gpn]);
      expect(reader.blockOfPage(gpn)).toBeLessThan(0);
      reader.close();
      expect(service.stats().machineChecks).toBe(0); // the save asked the resolver as the host: no machine check
      const copy = restore(path, 16 * MiB, { mode });
      expect(copy.vm.memory.stateOf(gpn)).toBe(PageState.POISONED);
      const original = finish(machine);
      const restored = finish(copy);
      expect(original.output).toMatch(/killed pid \d+ \(walker\): machine check \(uncorrectable memory error\)/);
      expect(restored).toEqual(original);
      copy.restored.close();
    });
  }
});

describe('clean copies from a lazy restore', () => {
  it('a page read in from the checkpoint is a clean copy of it (RestoredVm.onPagesInstalled) until the guest writes it', () => {
    const machine = started();
    const dataGpn = walkerPage(machine, 2 * 4096);
    const path = join(dir, 'lazy-clean.bvc');
    saveVmCheckpoint(machine.vm, path);
    const copy = restore(path, 16 * MiB, { mode: 'lazy', prefetch: false });
    const reader = CheckpointReader.open(path);
    const clean = new CleanCopyRecovery(copy.vm, { checkpoint: reader });
    clean.scan(); // nothing is present yet: the pages arrive as the guest touches them
    copy.restored.onPagesInstalled = (gpns) => clean.admitFromCheckpoint(gpns);
    const service = new MemoryErrorService(copy.vm, { methods: [clean] });
    // A walker page read in from the file (by the host, before the guest runs) is clean; written, it is not.
    const word = copy.vm.readPhysical(dataGpn * 4096, 4);
    expect(clean.isClean(dataGpn)).toBe(true);
    copy.vm.writePhysical(dataGpn * 4096, word.map((b) => b ^ 1));
    expect(clean.isClean(dataGpn)).toBe(false);
    copy.hv.run({ maxInstructions: 300_000 }, [copy.vm]);
    expect(clean.stats.admittedFromCheckpoint).toBeGreaterThan(0);
    // A kernel code page the guest read in from the file and never writes.
    const codeGpn = 3;
    expect(copy.vm.memory.stateOf(codeGpn)).toBe(PageState.PRESENT);
    expect(clean.isClean(codeGpn)).toBe(true);
    service.inject({ gpa: codeGpn * 4096 + 0x40, windowBits: 64, report: 'now' });
    expect(service.log()[0]!.outcome).toBe('recovered-by-clean-copy');
    service.inject({ gpa: dataGpn * 4096 + 0x40, windowBits: 1, report: 'now' });
    expect(service.log()[1]!.outcome).toBe('unrecovered');
    copy.restored.close();
    reader.close();
  });
});

describe('a live snapshot meeting pages poisoned after its pause', () => {
  it('saves a page recovery rebuilds with its pause-time bytes, lists one it cannot, and never writes bad bytes', () => {
    const machine = started();
    const clean = new CleanCopyRecovery(machine.vm);
    clean.scan();
    const service = new MemoryErrorService(machine.vm, { methods: [clean] });
    const codeGpn = 3; // a nanokernel code page, clean: the image rebuilds it
    const dataGpn = walkerPage(machine, 9 * 4096); // a walker page: nothing rebuilds it
    const pauseCode = machine.vm.readPhysical(codeGpn * 4096, 4096);
    // One page per tick, a tick per 10 M instructions: the saver has not reached either page yet.
    const snapshot = startLiveSnapshot(machine.vm, join(dir, 'live.bvc'), { pagesPerTick: 1, everyInstructions: 10_000_000 });
    service.inject({ gpa: codeGpn * 4096 + 0x100, windowBits: 16, report: 'on-access' });
    service.inject({ gpa: dataGpn * 4096 + 0x100, windowBits: 16, report: 'on-access' });
    expect(machine.vm.memory.stateOf(codeGpn)).toBe(PageState.POISONED);
    snapshot.finish();
    expect(service.log().map((entry) => entry.outcome)).toEqual(['recovered-by-clean-copy', 'unrecovered']);
    expect(service.stats().machineChecks).toBe(0);
    const reader = CheckpointReader.open(snapshot.path);
    expect(reader.contents.config.poisonedPages).toEqual([dataGpn]);
    expect(reader.readPage(codeGpn)).toEqual(pauseCode); // rebuilt from the image: the bytes of the pause
    expect(reader.blockOfPage(dataGpn)).toBeLessThan(0);
    reader.close();
    // The restored guest runs on from the pause as the original does from the pause.
    const copy = restore(snapshot.path, 16 * MiB, { mode: 'eager' });
    expect(copy.vm.memory.stateOf(dataGpn)).toBe(PageState.POISONED);
    expect(copy.vm.readPhysical(codeGpn * 4096, 4096)).toEqual(pauseCode);
    const original = finish(machine);
    const restored = finish(copy);
    expect(restored).toEqual(original);
    expect(original.output).toMatch(/killed pid \d+ \(walker\): machine check/);
    copy.restored.close();
  });
});
