/**
 * A host's VM on an asynchronous disk (config `disk: { path, async, direct }`, docs/host.md and
 * docs/block-device.md): the nanokernel queues its disk requests, the host scheduler lets the
 * completions arrive, and a snapshot taken mid-run restores — and a fork continues — with the disk
 * still asynchronous, reaching the result of the original. The VM stats report the disk.
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
const root = mkdtempSync(join(tmpdir(), 'bv-host-async-disk-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));


/** 256 sectors of distinct words, so that the reader's checksum depends on every byte read. */
function image(): string {
  const bytes = new Uint8Array(256 * 512);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < bytes.length / 4; i++) view.setUint32(i * 4, Math.imul(i + 7, 0x9e3779b1) >>> 0, true);
  const path = join(mkdtempSync(join(root, 'd')), 'disk.img');
  writeFileSync(path, bytes);
  return path;
}

const readerLine = (text: string): string | undefined => text.split('\n').find((line) => line.startsWith('reader: '));

describe('a host VM on an asynchronous disk', () => {
  it('runs the queueing driver; a snapshot restores and a fork continues with the disk still asynchronous, to the same result', async () => {
    const disk = image();
    // Two readers of the same blocks, many passes (the first reads go to the disk, the rest hit the cache).
    const spec = parseHostConfig({
      vms: [{ name: 'a', image: KERNEL, memory_mib: 16, boot_args: 'slice=20000 reader 32 20 reader 16 30', disk: { path: disk, async: true, direct: true } }],
      slice_instructions: 50_000,
    });
    const host = await Host.start(spec);
    try {
      // Mid-run: the kernel has printed its disk line and the readers are going.
      await until('the readers to start', async () => (host.vmInfo('a').instructions > 1_000_000 ? true : undefined), 60_000);
      const checkpoint = join(root, 'a.ckpt');
      await host.snapshot('a', checkpoint, false);
      await host.fork('a', 'c', false);
      await host.restore(checkpoint, 'b', 'eager', false);
      const ended = await Promise.all(['a', 'b', 'c'].map((name) => host.whenStopped(name)));
      for (const info of ended) expect(info.exit).toEqual({ kind: 'halted', exit_code: 0 });
      const a = host.readConsole('a', 0, 1 << 20).data;
      expect(a).toContain('[kernel] disk: asynchronous, requests queued');
      const lines = ['a', 'b', 'c'].map((name) => host.readConsole(name, 0, 1 << 20).data.split('\n').filter((line) => line.startsWith('reader: ')).sort());
      expect(lines[0]).toHaveLength(2);
      expect(lines[1]).toEqual(lines[0]);
      expect(lines[2]).toEqual(lines[0]);
      expect(readerLine(a)).toMatch(/^reader: (32 blocks, 20 passes|16 blocks, 30 passes)/);
      for (const name of ['a', 'b', 'c']) {
        const stats = host.vmStats(name).disk!;
        expect(stats).toMatchObject({ async: true, direct: true, errors: 0, in_flight: 0 });
        expect(stats.async_completed).toBe(stats.async_submitted);
      }
      // The original read every block of both readers from the disk once (the cache keeps them).
      expect(host.vmStats('a').disk!.async_submitted).toBeGreaterThanOrEqual(32);
      expect(host.vmStats('a').disk!.latency_mean_us).toBeGreaterThan(0);
    } finally {
      await host.close();
    }
  }, 120_000);
});
