/**
 * A VM on an asynchronous O_DIRECT disk migrates between two hosts (two Host objects in one
 * process, plain TCP on loopback): pre-copy while its readers have requests in flight, and
 * post-copy. On the destination the disk is still asynchronous and the readers end with the lines
 * an uninterrupted run prints (docs/block-device.md, docs/migration.md "Disks").
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { REPO } from '../tools/child.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const root = mkdtempSync(join(tmpdir(), 'bv-async-disk-mig-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));


/** 1,024 sectors (128 blocks) of distinct words, so that a reader's checksum depends on every byte it read. */
function image(dir: string): string {
  const bytes = new Uint8Array(1024 * 512);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < bytes.length / 4; i++) view.setUint32(i * 4, Math.imul(i + 11, 0x9e3779b1) >>> 0, true);
  const path = join(dir, 'disk.img');
  writeFileSync(path, bytes);
  return path;
}

const readerLines = (text: string): string[] => text.split('\n').filter((line) => line.startsWith('reader: ')).sort();
const BOOT = 'slice=20000 reader 64 12 reader 32 20';

describe('a VM on an asynchronous disk, migrated', () => {
  for (const mode of ['precopy', 'postcopy'] as const) {
    it(`${mode}: the destination runs it on an asynchronous disk to the uninterrupted run's result`, async () => {
      const dir = mkdtempSync(join(root, mode));
      const disk = image(dir);
      const vm = { name: 'a', image: KERNEL, memory_mib: 16, boot_args: BOOT, disk: { path: disk, async: true, direct: true } };
      const source = await Host.start(parseHostConfig({ vms: [vm, { ...vm, name: 'reference' }], slice_instructions: 50_000, migration: { insecure: true, name: 'source' } }));
      const destination = await Host.start(parseHostConfig({ vms: [], migration: { insecure: true, name: 'destination', disk_dir: join(dir) } }));
      try {
        const { listening } = await destination.receiveMigrations('127.0.0.1:0');
        if (listening === null) throw new Error('the destination does not listen');
        // Mid-run, with the readers' requests going to the disk.
        await until('the readers to start', async () => ((source.vmStats('a').disk?.async_submitted ?? 0) >= 16 ? true : undefined), 60_000);
        await source.migrate('a', { destination: listening, mode });
        const moved = await destination.whenStopped('a');
        expect(moved.exit).toEqual({ kind: 'halted', exit_code: 0 });
        const reference = await source.whenStopped('reference');
        expect(reference.exit).toEqual({ kind: 'halted', exit_code: 0 });
        const expected = readerLines(source.readConsole('reference', 0, 1 << 20).data);
        expect(expected).toHaveLength(2);
        expect(readerLines(destination.readConsole('a', 0, 1 << 20).data)).toEqual(expected);
        const stats = destination.vmStats('a').disk!;
        expect(stats).toMatchObject({ async: true, direct: true, errors: 0, in_flight: 0 });
        expect(stats.async_completed).toBe(stats.async_submitted);
        // It went on reading from the disk there (the first pass of 128 blocks takes longer than the wait above).
        expect(stats.async_submitted).toBeGreaterThan(0);
      } finally {
        await source.close();
        await destination.close();
      }
    }, 120_000);
  }
});
