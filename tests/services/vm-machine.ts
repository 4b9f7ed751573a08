/**
 * The machine the VM-checkpoint tests run: a guest on the standard devices with its console
 * captured, booted from an image or restored from a checkpoint, and the figures two runs are
 * compared by (output, stop reason, instructions, a hash of every guest page).
 */
import { createHash } from 'node:crypto';
import { expect } from 'vitest';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { attachStandardDevices, CaptureSink, runWithResets, savedBootArgs, type StandardDevices } from '../../devices/index.ts';
import { createHypervisor, PageState, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { PAGE_BYTES, restoreVmCheckpoint, type RestoredVm, type RestoreOptions } from '../../services/checkpoint/index.ts';

export const MiB = 2 ** 20;

export interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
}

export function boot(image: GuestImage, memoryBytes: number, bootArgs = ''): Machine {
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const vm = hv.createVm({ memoryBytes, vcpus: 1, name: 'guest' });
  vm.loadImage(image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs });
  return { hv, vm, devices, output };
}

/** Restores into a fresh hypervisor with the standard devices attached as saved. */
export function restore(path: string, memoryBytes: number, options: Omit<RestoreOptions, 'attach'>): Machine & { restored: RestoredVm } {
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const output = new CaptureSink();
  let devices: StandardDevices | undefined;
  const restored = restoreVmCheckpoint(hv, path, {
    ...options,
    attach: (vm, saved) => {
      devices = attachStandardDevices(vm, { output, bootArgs: savedBootArgs(saved.components.bootargs!.state) });
    },
  });
  return { hv, vm: restored.vm, devices: devices!, output, restored };
}

/** SHA-256 over every guest page as the guest sees it (untouched pages are zero). */
export function memoryHash(vm: Vm): string {
  const hash = createHash('sha256');
  const zero = new Uint8Array(PAGE_BYTES);
  for (let gpn = 0; gpn < vm.memory.pageCount; gpn++) {
    // stateOf: a region a lazy restore has not filled in yet is filled first, not read as zero.
    hash.update(vm.memory.stateOf(gpn) === PageState.UNTOUCHED ? zero : vm.readPhysical(gpn * PAGE_BYTES, PAGE_BYTES));
  }
  return hash.digest('hex');
}

export interface Outcome {
  output: string;
  reason: unknown;
  instructions: number;
  memory: string;
}

/** Runs until the guest stops; `afterRun` looks at the VM before the memory hash reads every page. */
export function runToEnd(machine: Machine, afterRun?: () => void): Outcome {
  const run = runWithResets(machine.hv, machine.vm, machine.devices, { maxInstructions: 100_000_000 });
  afterRun?.();
  return { output: machine.output.text(), reason: run.reason, instructions: machine.vm.instructionsRetired, memory: memoryHash(machine.vm) };
}

/** Runs `instructions` more instructions, exactly, and returns the console output so far. */
export function runFor(machine: Machine, instructions: number): string {
  const before = machine.vm.instructionsRetired;
  const run = runWithResets(machine.hv, machine.vm, machine.devices, { maxInstructions: instructions });
  expect(run.reason).toEqual({ kind: 'budget' });
  expect(machine.vm.instructionsRetired).toBe(before + instructions);
  return machine.output.text();
}
