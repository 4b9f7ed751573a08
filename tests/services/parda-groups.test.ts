/**
 * storage_io and worker groups (docs/storage-io.md, docs/workers.md): the host's PARDA gate lives
 * in its own thread, so a VM with an asynchronous disk in a worker group would escape the window
 * and its shares. Until a cross-thread gate exists such a VM is refused, in the config with the
 * field's path and at PUT /vms/{name}.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseHostConfig, parseVmConfig } from '../../services/host/config.ts';
import { Host, HostError } from '../../services/host/host.ts';
import { REPO } from '../tools/child.ts';

const GUEST = join(REPO, 'examples/io/random-io.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-parda-groups-'));
const image = join(dir, 'shared.raw');
writeFileSync(image, new Uint8Array(1 << 20).fill(0x5a));
const storageIo = { host_id: 3, latency_threshold_ms: 50, period_ms: 50, window_max: 4 };
const vm = (name: string, changes: Record<string, unknown> = {}) => ({ name, image: GUEST, memory_mib: 4, boot_args: '8 25 8', disk: { path: image, async: true }, ...changes });

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function refusedPath(json: unknown): string {
  try {
    parseHostConfig(json);
  } catch (error) {
    if (error instanceof ConfigError) return error.path;
    throw error;
  }
  throw new Error('accepted');
}

describe('storage_io with worker groups', () => {
  it('refuses a config placing a VM with an asynchronous disk in a worker group, at the field', () => {
    const groups = [{ name: 'g' }];
    expect(refusedPath({ storage_io: storageIo, worker_groups: groups, vms: [vm('a'), vm('b', { group: 'g' })] })).toBe('vms[1].group');
    // Without storage_io, or with a synchronous disk, or in the host's thread: accepted.
    expect(() => parseHostConfig({ worker_groups: groups, vms: [vm('b', { group: 'g' })] })).not.toThrow();
    expect(() => parseHostConfig({ storage_io: storageIo, worker_groups: groups, vms: [vm('a'), vm('b', { group: 'g', disk: { path: image } })] })).not.toThrow();
    expect(() => parseHostConfig({ storage_io: storageIo, worker_groups: groups, vms: [vm('a')] })).not.toThrow();
  });

  it('refuses PUT /vms/{name} of such a VM into a group at run time (409), and takes it in the host\'s thread', async () => {
    const host = await Host.start(parseHostConfig({ host_memory_mib: 32, storage_io: { ...storageIo, stats_file: join(dir, 'run.parda') }, worker_groups: [{ name: 'g' }], vms: [] }));
    try {
      const error = await host.createVm(parseVmConfig(vm('b', { group: 'g' }))).then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(HostError);
      expect((error as HostError).status).toBe(409);
      expect((error as HostError).message).toMatch(/storage_io/);
      await host.createVm(parseVmConfig(vm('a')));
      expect(host.storageStatus().vms.map((v) => v.name)).toEqual(['a']);
    } finally {
      await host.close();
    }
  }, 60_000);
});
