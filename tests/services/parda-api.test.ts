/**
 * storage_io in one host (docs/storage-io.md): two random-io VMs on asynchronous O_DIRECT disks
 * under the host's PARDA controller; GET/PATCH /host/storage, PATCH /vms/{name} {io_shares}, the
 * figures in the host and VM stats, and the block marked stopped when the host closes.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, apiRequest, hostRoutes } from '../../services/host/index.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { StatsFile, StatsFlag, type StorageIoStatus } from '../../services/storage/index.ts';
import { REPO } from '../tools/child.ts';
import { until } from './until.ts';

const GUEST = join(REPO, 'examples/io/random-io.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-parda-api-'));
const image = join(dir, 'shared.raw');
const statsFile = join(dir, 'shared.raw.parda');
let host: Host | null = null;
let api: ApiServer;
const socket = join(dir, 'api.sock');
const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);

beforeAll(async () => {
  // 8 MiB of data (not a hole: reads must reach the disk).
  writeFileSync(image, new Uint8Array(8 << 20).fill(0x5a));
  api = await ApiServer.listen(socket);
  const vm = (name: string, shares: number) => ({ name, image: GUEST, memory_mib: 4, boot_args: '8 25 8', io_shares: shares, disk: { path: image, async: true, direct: true } });
  host = await Host.start(parseHostConfig({
    host_memory_mib: 32,
    storage_io: { host_id: 7, latency_threshold_ms: 50, period_ms: 50, window_max: 4 },
    vms: [vm('a', 1000), vm('b', 3000)],
  }));
  hostRoutes(api, host);
}, 60_000);

afterAll(async () => {
  await host?.close();
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('storage_io in a host', () => {
  it('gates both VMs under one window and reports them', async () => {
    const status = await until('IOs to complete', async () => {
      const s = (await call<StorageIoStatus>('GET', '/host/storage')).body;
      return s.ios_total > 200 && s.periods > 2 ? s : undefined;
    });
    expect(status.stats_file).toBe(statsFile); // next to the first VM's disk
    expect(status.host_id).toBe(7);
    expect(status.io_shares).toBe(4000);
    expect(status.vms.map((v) => [v.name, v.io_shares])).toEqual([['a', 1000], ['b', 3000]]);
    expect(status.in_flight).toBeLessThanOrEqual(4); // window_max, two VMs of depth 8 each
    expect(status.queued).toBeGreaterThan(0);
    expect(status.latency_ms).toBeGreaterThan(0);
    const stats = (await call<{ storage_io?: StorageIoStatus }>('GET', '/host/stats')).body;
    expect(stats.storage_io?.host_id).toBe(7);
    const vmStats = (await call<{ io?: { io_shares: number; ios: number } }>('GET', '/vms/b/stats')).body;
    expect(vmStats.io?.io_shares).toBe(3000);
    expect(vmStats.io?.ios).toBeGreaterThan(0);
    // b holds 3 of 4 shares: with both VMs always waiting, it gets about 3 of the 4 requests in flight.
    const before = (await call<StorageIoStatus>('GET', '/host/storage')).body;
    await new Promise((resolve) => setTimeout(resolve, 500));
    const after = (await call<StorageIoStatus>('GET', '/host/storage')).body;
    const ios = (s: StorageIoStatus, name: string) => s.vms.find((v) => v.name === name)!.ios;
    const ratio = (ios(after, 'b') - ios(before, 'b')) / (ios(after, 'a') - ios(before, 'a'));
    expect(ratio).toBeGreaterThan(2);
    expect(ratio).toBeLessThan(4.5);
  }, 60_000);

  it('changes 𝓛, the window bounds and a VM\'s shares at run time; refuses bad values with the field', async () => {
    const patched = await call<StorageIoStatus>('PATCH', '/host/storage', { latency_threshold_ms: 7.5, window_max: 6, control: false });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ threshold_ms: 7.5, window_max: 6, window: 6, controlled: false });
    const bad = await call<{ fault_message: string }>('PATCH', '/host/storage', { window_min: 10 });
    expect(bad.status).toBe(400);
    expect(bad.body.fault_message).toMatch(/window_max/);
    expect((await call('PATCH', '/host/storage', { gamma: 2 })).status).toBe(400);
    expect((await call('PATCH', '/host/storage', {})).status).toBe(400);
    expect((await call('PATCH', '/vms/a', { io_shares: 2500 })).status).toBe(200);
    expect((await call<StorageIoStatus>('GET', '/host/storage')).body.vms.find((v) => v.name === 'a')!.io_shares).toBe(2500);
    expect((await call('PATCH', '/vms/a', { io_shares: 0 })).status).toBe(400);
    expect((await call('PATCH', '/vms/a', {})).status).toBe(400);
    expect((await call('PATCH', '/vms/nobody', { io_shares: 5 })).status).toBe(404);
  }, 30_000);

  it('marks its block stopped when the host closes, and the file holds its figures', async () => {
    const file = new StatsFile(statsFile, 0);
    try {
      const live = file.readSlot(7);
      expect(live).toMatchObject({ hostId: 7, pid: process.pid, name: expect.any(String) });
      expect(live !== null && live !== 'torn' && (live.flags & StatsFlag.LIVE) !== 0).toBe(true);
      await host!.close();
      host = null;
      const stopped = file.readSlot(7);
      expect(stopped !== null && stopped !== 'torn' && stopped.flags).toBe(StatsFlag.STOPPED);
    } finally {
      file.close();
    }
  }, 30_000);
});

describe('without storage_io', () => {
  it('answers 404 for /host/storage', async () => {
    const plain = await Host.start(parseHostConfig({ host_memory_mib: 8 }));
    try {
      expect(() => plain.storageStatus()).toThrow(/storage_io is off/);
    } finally {
      await plain.close();
    }
  });
});
