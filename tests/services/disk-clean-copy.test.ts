/**
 * Clean copies from the disk (services/recovery/disk-cache.ts): the nanokernel's page cache is
 * filled by the block device's DMA, so each cache page equals 8 disk sectors until the guest
 * writes it; an error in one is rebuilt from the disk and `reader` prints the error-free
 * checksum. A page written since, or whose sectors another page wrote, is not recoverable this way.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, type StandardDevices } from '../../devices/index.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { CleanCopyRecovery } from '../../services/recovery/clean-copy.ts';
import { DiskCleanCopies } from '../../services/recovery/disk-cache.ts';
import { MemoryErrorService } from '../../services/recovery/index.ts';
import { KERNEL_IMAGE } from '../integration/nanokernel-guest.ts';

const MiB = 2 ** 20;
const dir = mkdtempSync(join(tmpdir(), 'bv-disk-clean-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const diskPath = join(dir, 'disk.img');
writeFileSync(diskPath, randomBytes(256 * 1024)); // 64 blocks of 4 KiB

interface Box {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
}

function boot(args: string): Box {
  const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
  const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'guest' });
  vm.loadImage(KERNEL_IMAGE);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs: args, disk: diskPath });
  return { hv, vm, devices, output };
}

const finish = (box: Box): string => {
  box.hv.run({ maxInstructions: 500_000_000 }, [box.vm]);
  return box.output.text();
};

describe('DiskCleanCopies with the nanokernel page cache', () => {
  const ARGS = 'reader 32 4';
  const reference = finish(boot(ARGS));

  it('admits the cache pages the DMA filled; an error in one is rebuilt from the disk and the checksum is the error-free one', () => {
    expect(reference).toMatch(/reader: 32 blocks, 4 passes, .* checksum 0x[0-9a-f]+/);
    const box = boot(ARGS);
    const clean = new CleanCopyRecovery(box.vm);
    clean.scan();
    const disk = new DiskCleanCopies(box.devices.block!, clean);
    const service = new MemoryErrorService(box.vm, { methods: [clean] });
    for (let i = 0; i < 1000 && disk.stats.admitted < 32; i++) box.hv.run({ maxInstructions: 100_000 }, [box.vm]);
    expect(disk.stats.admitted).toBeGreaterThanOrEqual(32);
    const held = disk.heldPages();
    expect(held.length).toBeGreaterThanOrEqual(32);
    expect(clean.stats.admittedFrom.disk).toBeGreaterThanOrEqual(32);
    for (const gpn of held.slice(0, 3)) {
      expect(clean.isClean(gpn)).toBe(true);
      const entry = service.inject({ gpa: gpn * 4096 + 0x123, windowBits: 64, report: 'now' });
      expect(entry.outcome).toBe('recovered-by-clean-copy');
    }
    expect(finish(box)).toBe(reference);
  });

  it('a cache page the host writes is no longer a clean copy; an error in it is not rebuilt from the disk', () => {
    const box = boot(ARGS);
    const clean = new CleanCopyRecovery(box.vm);
    const disk = new DiskCleanCopies(box.devices.block!, clean);
    const service = new MemoryErrorService(box.vm, { methods: [clean] });
    for (let i = 0; i < 1000 && disk.stats.admitted < 8; i++) box.hv.run({ maxInstructions: 100_000 }, [box.vm]);
    const gpn = disk.heldPages()[0]!;
    box.vm.writePhysical(gpn * 4096, Uint8Array.of(1, 2, 3, 4));
    expect(clean.isClean(gpn)).toBe(false);
    expect(disk.heldPages()).not.toContain(gpn);
    expect(service.inject({ gpa: gpn * 4096 + 8, windowBits: 8, report: 'now' }).outcome).toBe('unrecovered');
    disk.stop();
    expect(box.devices.block!.onTransfer).toBeNull();
  });
});

describe('DiskCleanCopies bookkeeping', () => {
  it('admits only whole pages of a transfer, and a write to their sectors from elsewhere ends the copy', () => {
    const diskBytes = new Uint8Array(64 * 512).map((_, i) => i & 0xff);
    const block = {
      onTransfer: null as ((direction: 'read' | 'write', gpa: number, firstSector: number, bytes: number) => void) | null,
      disk: { read: (first: number, count: number) => diskBytes.slice(first * 512, (first + count) * 512) },
    };
    const admitted = new Map<number, { name: string; read(gpn: number): Uint8Array | null; release(gpn: number): void }>();
    const disk = new DiskCleanCopies(block, { admit: (gpn, source) => (admitted.set(gpn, source), true) });
    // 14 KiB from the middle of page 1: pages 2, 3 and 4 are whole, page 1 is not.
    block.onTransfer!('read', 0x1800, 10, 14 * 1024);
    expect(disk.heldPages()).toEqual([2, 3, 4]);
    expect(admitted.get(2)!.read(2)).toEqual(diskBytes.slice(14 * 512, 22 * 512)); // page 2 starts 2 KiB in: sector 14
    // Page 9 writes sectors 20 … 27: page 2's copy (14 … 21) is gone, page 3's (22 … 29) too; page 4's (30 … 37) stays.
    block.onTransfer!('write', 9 * 4096, 20, 4096);
    expect(disk.stats.overwritten).toBe(2);
    expect(admitted.get(2)!.read(2)).toBeNull();
    expect(admitted.get(4)!.read(4)).toEqual(diskBytes.slice(30 * 512, 38 * 512));
    expect(disk.heldPages()).toEqual([4, 9]);
    // The sink releasing page 9 (written by the guest) forgets it.
    admitted.get(9)!.release(9);
    expect(disk.heldPages()).toEqual([4]);
    expect(admitted.get(9)!.read(9)).toBeNull();
  });
});
