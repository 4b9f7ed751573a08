/**
 * Device layout in saved state (kernel/mmio.ts): device windows are placed in attach order, so a
 * restore or a fork into a VM whose devices were attached in another order would hand the guest
 * swapped windows. The layout (name, type, base, size per window) travels in VmState and in
 * checkpoint files, and a restore in every mode, and a fork, refuse a VM laid out otherwise with
 * a DeviceLayoutError naming the first device-table entry that differs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceType, GuestPhys } from '../../guest-isa/arch.ts';
import {
  attachBootArgs, attachConsole, attachPower, attachStandardDevices, attachTimer, CaptureSink, savedBootArgs,
} from '../../devices/index.ts';
import { createHypervisor, DeviceLayoutError, KernelError, type MmioDevice, type Vm, type VmState } from '../../kernel/index.ts';
import {
  CheckpointReader, restoreVmCheckpoint, saveVmCheckpoint, vmCheckpointContents, VmCheckpointError, writeCheckpoint, type RestoreMode,
} from '../../services/checkpoint/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-layout-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 2 ** 20;
const BASE = GuestPhys.MMIO_BASE;

/** A device without state: reads 0, ignores writes. */
const inert: MmioDevice = { read: () => 0, write: () => true };

/** The standard devices in their documented order, or in another one (each still registers its state). */
function attachInOrder(vm: Vm, order: readonly ('console' | 'timer' | 'power' | 'bootargs')[], bootArgs = ''): void {
  for (const name of order) {
    if (name === 'console') attachConsole(vm, { output: new CaptureSink() });
    if (name === 'timer') attachTimer(vm);
    if (name === 'power') attachPower(vm);
    if (name === 'bootargs') attachBootArgs(vm, bootArgs);
  }
}
const STANDARD = ['console', 'timer', 'power', 'bootargs'] as const;
const SWAPPED = ['timer', 'console', 'power', 'bootargs'] as const;

/** A stopped VM with the standard devices and a few non-zero pages. */
function machine(hostMemory = 16 * MiB): { hv: ReturnType<typeof createHypervisor>; vm: Vm } {
  const hv = createHypervisor({ hostMemoryBytes: hostMemory });
  const vm = hv.createVm({ memoryBytes: 2 * MiB, name: 'saved' });
  attachStandardDevices(vm, { output: new CaptureSink(), bootArgs: 'hello' });
  for (const page of [0, 3, 300]) vm.writePhysical(page * 4096, new Uint8Array(4096).fill(page + 1));
  return { hv, vm };
}

function thrown(action: () => unknown): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  throw new Error('expected an error');
}

describe('the device layout', () => {
  it('lists each window in device-table order and travels in VmState', () => {
    const { vm } = machine();
    const expected = [
      { name: 'console', type: DeviceType.CONSOLE, base: BASE, size: 4096 },
      { name: 'timer', type: DeviceType.TIMER, base: BASE + 0x1000, size: 4096 },
      { name: 'power', type: DeviceType.POWER, base: BASE + 0x2000, size: 4096 },
      { name: 'bootargs', type: DeviceType.BOOTARGS, base: BASE + 0x3000, size: 4096 },
    ];
    expect(vm.bus.layout()).toEqual(expected);
    expect(vm.captureState().layout).toEqual(expected);
    vm.attachDevice({ type: 42, name: 'wide', bytes: 3 * 4096 }, inert);
    expect(vm.bus.layout().at(-1)).toEqual({ name: 'wide', type: 42, base: BASE + 0x4000, size: 3 * 4096 });
  });

  it('restoreState refuses another order, a missing or extra device and another window size, naming the first entry that differs', () => {
    const { hv, vm } = machine();
    const saved = JSON.parse(JSON.stringify(vm.captureState())) as VmState;
    const other = (attach: (target: Vm) => void): Vm => {
      const target = hv.createVm({ memoryBytes: 2 * MiB });
      attach(target);
      return target;
    };
    const swapped = other((target) => attachInOrder(target, SWAPPED, 'hello'));
    const error = thrown(() => swapped.restoreState(saved)) as DeviceLayoutError;
    expect(error).toBeInstanceOf(DeviceLayoutError);
    expect(error).toBeInstanceOf(KernelError);
    expect(error.code).toBe('BV_LAYOUT_MISMATCH');
    expect(error.entry).toBe(0);
    expect(error.message).toBe(
      `${swapped.name}: device layout differs at device-table entry 0: the saved VM has 'console' (type 1) at 0xf0001000, 4 KiB, ` +
        `this VM has 'timer' (type 2) at 0xf0001000, 4 KiB (attach the saved VM's devices, in the same order)`,
    );

    // An extra window without state of its own: only the layout can tell.
    const extra = other((target) => {
      attachInOrder(target, STANDARD, 'hello');
      target.attachDevice({ type: 9, name: 'extra' }, inert);
    });
    expect(thrown(() => extra.restoreState(saved))).toMatchObject({ code: 'BV_LAYOUT_MISMATCH', entry: 4, message: expect.stringContaining("the saved VM has no device there (4 in all), this VM has 'extra'") });

    // The same devices, but the saved VM had a window of another size in the same place.
    const withWide = JSON.parse(JSON.stringify(saved)) as VmState;
    withWide.layout.push({ name: 'extra', type: 9, base: BASE + 0x4000, size: 8192 });
    expect(thrown(() => extra.restoreState(withWide))).toMatchObject({ code: 'BV_LAYOUT_MISMATCH', entry: 4, message: expect.stringContaining('8 KiB') });

    // Nothing was restored by the refused attempts: the same VM takes the right state afterwards.
    const same = other((target) => attachInOrder(target, STANDARD, 'hello'));
    same.restoreState(saved);
    expect(same.bus.layout()).toEqual(saved.layout);
  });

  it('restoreState refuses a state without a layout, or with a malformed one, naming the field', () => {
    const { vm } = machine();
    const saved = vm.captureState();
    const without = { ...saved, layout: undefined } as unknown as VmState;
    expect(thrown(() => vm.restoreState(without))).toMatchObject({ code: 'BV_LAYOUT_INVALID', message: 'saved: the saved device layout is missing or not a list' });
    const cases: [unknown, RegExp][] = [
      [[...saved.layout.slice(0, 1), 'power'], /entry 1 is not an object/],
      [[{ ...saved.layout[0], name: '' }], /entry 0 has an invalid name \(""\)/],
      [[{ ...saved.layout[0], type: 1.5 }], /entry 0 \('console'\) has an invalid type \(1\.5\)/],
      [[{ ...saved.layout[0], base: 0x1000 }], /entry 0 \('console'\) has an invalid base \(4096\)/],
      [[{ ...saved.layout[0], size: 100 }], /entry 0 \('console'\) has an invalid size \(100\)/],
      [[{ ...saved.layout[0], size: undefined }], /entry 0 \('console'\) has an invalid size \(missing\)/],
    ];
    for (const [layout, message] of cases) {
      const error = thrown(() => vm.restoreState({ ...saved, layout } as VmState));
      expect(error).toBeInstanceOf(DeviceLayoutError);
      expect((error as DeviceLayoutError).code).toBe('BV_LAYOUT_INVALID');
      expect((error as Error).message).toMatch(message);
    }
  });

  it('a fork into devices attached in another order is refused and leaves no child; the same order forks', () => {
    const { hv, vm } = machine();
    const before = hv.pool.stats().usedFrames;
    const error = thrown(() => hv.forkVm(vm, { attach: (child) => attachInOrder(child, SWAPPED, 'hello') }));
    expect(error).toMatchObject({ code: 'BV_LAYOUT_MISMATCH', entry: 0 });
    expect(hv.vms).toEqual([vm]);
    expect(hv.pool.stats().usedFrames).toBe(before);
    const child = hv.forkVm(vm, { attach: (target) => attachInOrder(target, STANDARD, 'hello') });
    expect(child.bus.layout()).toEqual(vm.bus.layout());
    expect(child.readPhysical(300 * 4096, 4)).toEqual(new Uint8Array(4).fill(301));
  });
});

describe('the device layout in checkpoint files', () => {
  const { vm } = machine();
  const path = join(dir, 'vm.ckpt');
  saveVmCheckpoint(vm, path, { stagingBytes: 4096 });

  it('is saved in CONFIG.layout', () => {
    const reader = CheckpointReader.open(path);
    expect(reader.contents.config['layout']).toEqual(vm.bus.layout());
    expect(reader.contents.config['stateVersion']).toBe(2);
    reader.close();
  });

  for (const mode of ['eager', 'lazy', 'map'] as const satisfies readonly RestoreMode[]) {
    it(`${mode} restore refuses devices attached in another order before reading memory, and leaves no VM`, () => {
      const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
      let progress = 0;
      const error = thrown(() =>
        restoreVmCheckpoint(hv, path, {
          mode,
          attach: (target, saved) => attachInOrder(target, SWAPPED, savedBootArgs(saved.components['bootargs']!.state)),
          onProgress: (done) => (progress = done),
        }),
      );
      expect(error).toBeInstanceOf(DeviceLayoutError);
      expect((error as DeviceLayoutError).message).toMatch(/^saved: device layout differs at device-table entry 0: the saved VM has 'console'/);
      expect(progress).toBe(0);
      expect(hv.vms).toHaveLength(0);
      expect(hv.pool.stats().usedFrames).toBe(0);
      // The same file restores into the saved order.
      const restored = restoreVmCheckpoint(hv, path, {
        mode,
        attach: (target, saved) => attachInOrder(target, STANDARD, savedBootArgs(saved.components['bootargs']!.state)),
      });
      expect(restored.vm.readPhysical(3 * 4096, 4)).toEqual(new Uint8Array(4).fill(4));
      restored.close();
    });
  }

  it('refuses a file of VM state version 1 (no layout) and a file whose layout is malformed', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const attach = (target: Vm): void => attachInOrder(target, STANDARD, 'hello');
    const old = vmCheckpointContents(vm, vm.captureState(), undefined);
    old.config['stateVersion'] = 1;
    delete old.config['layout'];
    const oldPath = join(dir, 'v1.ckpt');
    writeCheckpoint(oldPath, old, { page: () => null });
    const oldError = thrown(() => restoreVmCheckpoint(hv, oldPath, { mode: 'eager', attach }));
    expect(oldError).toBeInstanceOf(VmCheckpointError);
    expect(oldError).toMatchObject({ code: 'BV_VMCKPT_CONFIG', message: expect.stringContaining(`${oldPath}: VM state version 1 is not supported (this build reads version 2)`) });

    const bad = vmCheckpointContents(vm, vm.captureState(), undefined);
    (bad.config['layout'] as { base: unknown }[])[2]!.base = 'high';
    const badPath = join(dir, 'bad-layout.ckpt');
    writeCheckpoint(badPath, bad, { page: () => null });
    expect(thrown(() => restoreVmCheckpoint(hv, badPath, { mode: 'lazy', attach }))).toMatchObject({
      code: 'BV_VMCKPT_CONFIG',
      message: `${badPath}: the saved device layout entry 2 ('power') has an invalid base ("high")`,
    });
    expect(hv.vms).toHaveLength(0);
  });
});
