// Fork combined with the other VM-state operations (issue 8 §2): a fork of a VM that is still
// being restored lazily, a fork taken while the parent is being snapshotted live, and a
// checkpoint of a forked child, each compared with an uninterrupted run of the same guest
// (output, stop reason, instruction count, a hash of every guest page).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, savedBootArgs, type StandardDevices } from '../../devices/index.ts';
import { PageState } from '../../kernel/index.ts';
import { saveVmCheckpoint, startLiveSnapshot } from '../../services/checkpoint/index.ts';
import { boot, MiB, restore, runFor, runToEnd, type Machine } from './vm-machine.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-fork-state-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const NANOKERNEL = assembleFile(join(import.meta.dirname, '..', '..', 'examples/nanokernel/kernel.s')).image;
const ARGS = 'sieve 100000 crc32 65536 walker 4M random 2';
const MEMORY = 32 * MiB;
const AT = 3_000_000;

/** The child of a fork, with its own devices and console. */
function forkOf(parent: Machine, bootArgs: string): Machine {
  const output = new CaptureSink();
  const { vm, devices } = parent.hv.forkVmWith(parent.vm, { attach: (child) => attachStandardDevices(child, { output, bootArgs }) });
  return { hv: parent.hv, vm, devices: devices as StandardDevices, output };
}

describe('fork with the other state operations', () => {
  const reference = (() => {
    const machine = boot(NANOKERNEL, MEMORY, ARGS);
    const early = runFor(machine, AT);
    const outcome = runToEnd(machine);
    return { early, outcome };
  })();

  it('forks a VM that is still being restored lazily; parent and child both finish like an uninterrupted run', () => {
    const first = boot(NANOKERNEL, MEMORY, ARGS);
    runFor(first, AT);
    const path = join(dir, 'lazy.bvc');
    saveVmCheckpoint(first.vm, path);
    const restored = restore(path, MEMORY, { mode: 'lazy', prefetch: false });
    expect(restored.restored.complete).toBe(false);
    expect(restored.vm.memory.countInState(PageState.LAZY) + restored.vm.memory.pendingRegionCount).toBeGreaterThan(0);
    const child = forkOf(restored, savedBootArgs(restored.vm.captureState().components.bootargs!.state));
    expect(restored.restored.complete).toBe(true); // the fork brought the rest of the file in first
    const childOutcome = runToEnd(child);
    const parentOutcome = runToEnd(restored);
    for (const outcome of [childOutcome, parentOutcome]) {
      expect(outcome.reason).toEqual(reference.outcome.reason);
      expect(outcome.instructions).toBe(reference.outcome.instructions);
      expect(outcome.memory).toBe(reference.outcome.memory);
      expect(reference.early + outcome.output).toBe(reference.outcome.output);
    }
  });

  it('a child builds its shadow address space at its first miss, not at the fork; both finish like an uninterrupted run', () => {
    const parent = boot(NANOKERNEL, MEMORY, ARGS);
    runFor(parent, AT);
    expect(parent.vm.mmu.stats.spacesCreated).toBeGreaterThan(0); // the guest runs paged
    const child = forkOf(parent, ARGS);
    expect(child.vm.mmu.stats.spacesCreated).toBe(0);
    const childOutcome = runToEnd(child);
    expect(child.vm.mmu.stats.spacesCreated).toBeGreaterThan(0);
    const parentOutcome = runToEnd(parent);
    for (const outcome of [childOutcome, parentOutcome]) {
      expect(outcome.reason).toEqual(reference.outcome.reason);
      expect(outcome.instructions).toBe(reference.outcome.instructions);
      expect(outcome.memory).toBe(reference.outcome.memory);
    }
    expect(reference.early + childOutcome.output).toBe(reference.outcome.output); // the child's console starts at the fork
  });

  it('a child starts in exactly its parent\'s vCPU and component state, on every vCPU', () => {
    const parent = boot(NANOKERNEL, MEMORY, ARGS);
    runFor(parent, AT);
    const child = forkOf(parent, ARGS);
    const { name: _parentName, ...parentState } = parent.vm.captureState().config;
    const { name: _childName, ...childState } = child.vm.captureState().config;
    expect(childState).toEqual(parentState);
    expect(child.vm.captureState().vcpus).toEqual(parent.vm.captureState().vcpus);
    expect(child.vm.captureState().components).toEqual(parent.vm.captureState().components);
    // Every field of every vCPU, including the rare ones (a waiting vCPU, a timer deadline).
    const hv = parent.hv;
    const many = hv.createVm({ memoryBytes: MiB, vcpus: 3 });
    many.vcpus.forEach((vcpu, i) => {
      for (let r = 1; r < 16; r++) vcpu.regs[r] = (r * 0x01010101 + i) | 0;
      Object.assign(vcpu, { pc: 0x400 + 4 * i, status: 1, tvec: 0x100, epc: 0x200 + i, cause: 7, tval: -1, scratch: 0x55aa, ie: 1 << i, ip: 2, instret: 1000 + i, clock: 2000 + i, timerDeadline: i === 1 ? 5000 : Infinity, waiting: i === 2 });
    });
    const copy = hv.forkVm(many);
    expect(copy.vcpus.map((vcpu) => vcpu.saveState())).toEqual(many.vcpus.map((vcpu) => vcpu.saveState()));
    hv.destroyVm(copy);
    hv.destroyVm(many);
  });

  it('checkpoints a forked child and restores it to the same end', () => {
    const parent = boot(NANOKERNEL, MEMORY, ARGS);
    runFor(parent, AT);
    const child = forkOf(parent, ARGS);
    runFor(child, 100_000);
    const path = join(dir, 'child.bvc');
    saveVmCheckpoint(child.vm, path);
    const restored = restore(path, MEMORY, { mode: 'eager' });
    const restoredOutcome = runToEnd(restored);
    const childOutcome = runToEnd(child);
    expect(restoredOutcome.memory).toBe(childOutcome.memory);
    expect(restoredOutcome.instructions).toBe(childOutcome.instructions);
    expect(childOutcome.memory).toBe(reference.outcome.memory);
    expect(runToEnd(parent).memory).toBe(reference.outcome.memory);
  });

  it('refuses to fork during a live snapshot, then forks once the snapshot is done', () => {
    const parent = boot(NANOKERNEL, MEMORY, ARGS);
    runFor(parent, AT);
    const snapshot = startLiveSnapshot(parent.vm, join(dir, 'live.bvc'));
    expect(() => parent.hv.forkVm(parent.vm, { attach: (c) => attachStandardDevices(c, { bootArgs: ARGS }) })).toThrow(/snapshot epoch/);
    expect(parent.hv.vms).toHaveLength(1); // the refused child is gone
    snapshot.finish();
    const child = forkOf(parent, ARGS);
    expect(runToEnd(child).memory).toBe(reference.outcome.memory);
    expect(runToEnd(parent).memory).toBe(reference.outcome.memory);
  });
});
