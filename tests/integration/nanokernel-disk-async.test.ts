/**
 * The nanokernel's queueing disk driver (examples/nanokernel/disk.s, docs/nanokernel.md "The
 * disk driver"): on an asynchronous block device each disk system call submits its request and
 * the process sleeps until the completion interrupt while the others run, so several processes'
 * requests are in flight at once. Their programs print and store exactly what they do on the
 * same disk attached synchronously (the driver of today, which still runs there).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  attachStandardDevices, CaptureSink, DISK_SECTOR_BYTES, runWithResets, runWithResetsAsync, savedBlockDisk, savedBlockMode, type StandardDevices,
} from '../../devices/index.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { KERNEL_IMAGE, symbol, word } from './nanokernel-guest.ts';

const root = mkdtempSync(join(tmpdir(), 'bv-nanodisk-async-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MiB = 2 ** 20;
const SECTORS = 256;

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
}

/** A raw image whose words are all different (so every reader checksum depends on what it read). */
function image(): string {
  const dir = mkdtempSync(join(root, 'd'));
  const bytes = new Uint8Array(SECTORS * DISK_SECTOR_BYTES);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < bytes.length / 4; i++) view.setUint32(i * 4, Math.imul(i, 0x9e3779b1) >>> 0, true);
  const path = join(dir, 'disk.img');
  writeFileSync(path, bytes);
  return path;
}

function boot(bootArgs: string, disk: { path: string; async?: boolean; direct?: boolean }): Machine {
  const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
  const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'nanokernel' });
  vm.loadImage(KERNEL_IMAGE);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs, disk, hypervisor: hv });
  return { hv, vm, devices, output };
}

/** Each program's own lines ("name: …"), grouped by program in the order it printed them. */
function programLines(output: string, names: string[]): Record<string, string[]> {
  const lines = output.split('\n');
  return Object.fromEntries(names.map((name) => [name, lines.filter((line) => line.startsWith(`${name}: `))]));
}

// Two record processes on keys whose home sectors (FNV-1a mod 256: alpha 171, x 135, beta 199,
// m 120) lie far apart and above what the readers read (sectors 0-95), and two readers of the
// same blocks: what each prints does not depend on how the four interleave.
const BOOT_ARGS = [
  'slice=20000',
  'record put alpha 1 add x 5 get alpha add x 2 get x put alpha 3 get alpha',
  'reader 8 3',
  'record put beta 22 get beta add m 9 get m add m 1',
  'reader 12 2',
].join(' ');

describe('nanokernel disk driver on an asynchronous disk', () => {
  for (const direct of [false, true]) {
    it(`queues several processes' requests and gives the results of the synchronous driver (${direct ? 'O_DIRECT' : 'buffered'})`, async () => {
      const sync = boot(BOOT_ARGS, { path: image() });
      expect(runWithResets(sync.hv, sync.vm, sync.devices, { maxInstructions: 200_000_000 }).reason).toEqual({ kind: 'halted', exitCode: 0 });
      const machine = boot(BOOT_ARGS, { path: image(), async: true, direct });
      const run = await runWithResetsAsync(machine.hv, machine.vm, machine.devices, { maxInstructions: 200_000_000 });
      expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
      const text = machine.output.text();
      expect(text).toContain('[kernel] disk: asynchronous, requests queued\n');
      expect(sync.output.text()).not.toContain('asynchronous');
      const expected = programLines(sync.output.text(), ['record', 'reader']);
      expect(expected.record).toHaveLength(12);
      expect(expected.record).toContain('record: get x = 7');
      expect(expected.reader).toHaveLength(2);
      const got = programLines(text, ['record', 'reader']);
      expect([...got.record!].sort()).toEqual([...expected.record!].sort());
      expect([...got.reader!].sort()).toEqual([...expected.reader!].sort());
      // Each process's own lines keep their order.
      for (const key of ['alpha', 'beta']) {
        expect(got.record!.filter((line) => line.includes(key))).toEqual(expected.record!.filter((line) => line.includes(key)));
      }
      // The disks end up the same.
      expect(machine.devices.block!.disk.read(0, SECTORS)).toEqual(sync.devices.block!.disk.read(0, SECTORS));
      // The requests went through the queue, several at once, and processes slept for them.
      const stats = machine.devices.block!.stats;
      expect(stats.asyncSubmitted).toBeGreaterThan(0);
      expect(stats.asyncCompleted).toBe(stats.asyncSubmitted);
      expect(stats.asyncInFlightMax).toBeGreaterThanOrEqual(2);
      expect(stats.errors).toBe(0);
      expect(stats.writes).toBe(sync.devices.block!.stats.writes);
      expect(word(machine.vm, symbol('stat_disk_waits'))).toBe(stats.asyncSubmitted);
      expect(word(sync.vm, symbol('stat_disk_waits'))).toBe(0);
      expect(sync.devices.block!.stats.asyncSubmitted).toBe(0);
      sync.devices.block!.close();
      machine.devices.block!.close();
    });
  }

  it('a checkpoint while the kernel waits for a read in flight restores a VM that finishes with the same output', async () => {
    const original = boot('reader 16 2', { path: image(), async: true, direct: true });
    // The synchronous run loop stops where the kernel waits in wfi for the completion.
    const [first] = original.hv.run({ maxInstructions: 50_000_000 }, [original.vm]);
    expect(first!.reason.kind).toBe('idle');
    expect(original.devices.block!.inFlight).toBe(1);
    const checkpoint = join(mkdtempSync(join(root, 'c')), 'vm.ckpt');
    saveVmCheckpoint(original.vm, checkpoint);
    const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const output = new CaptureSink();
    let devices: StandardDevices | null = null;
    const restored = restoreVmCheckpoint(hv, checkpoint, {
      mode: 'eager',
      attach: (vm, saved) => {
        const block = saved.components['block']!.state;
        devices = attachStandardDevices(vm, { output, hypervisor: hv, bootArgs: 'reader 16 2', disk: { path: savedBlockDisk(block), ...savedBlockMode(block) } });
      },
    });
    const copy: Machine = { hv, vm: restored.vm, devices: devices!, output };
    expect(copy.devices.block!.inFlight).toBe(1); // the read runs again in the restored VM
    const runs = await Promise.all([original, copy].map((m) => runWithResetsAsync(m.hv, m.vm, m.devices, { maxInstructions: 50_000_000 })));
    for (const run of runs) expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    const line = (m: Machine): string | undefined => m.output.text().split('\n').find((l) => l.startsWith('reader: '));
    expect(line(original)).toMatch(/^reader: 16 blocks, 2 passes, 256 sectors read, checksum 0x[0-9a-f]{8}$/);
    expect(line(copy)).toBe(line(original));
    expect(copy.devices.block!.stats.asyncCompleted).toBe(copy.devices.block!.stats.asyncSubmitted);
    original.devices.block!.close();
    copy.devices.block!.close();
  });

  it('a single process waiting for its disk read idles the kernel in wfi until the completion interrupt', async () => {
    const machine = boot('reader 4 1', { path: image(), async: true });
    const run = await runWithResetsAsync(machine.hv, machine.vm, machine.devices, { maxInstructions: 50_000_000 });
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(machine.output.text()).toMatch(/reader: 4 blocks, 1 pass, 32 sectors read, checksum 0x[0-9a-f]{8}\n/);
    // Four block misses, each slept for while nothing else could run: the kernel waited in wfi.
    expect(machine.devices.block!.stats.asyncSubmitted).toBe(4);
    expect(word(machine.vm, symbol('stat_idle_waits'))).toBeGreaterThanOrEqual(4);
    machine.devices.block!.close();
  });
});
