/**
 * The proxied disk (docs/bus-proxy.md) set up by the host's configuration alone: a nanokernel VM
 * without a disk and a storage-server VM with one, linked by a `channels` entry of service
 * "block". The nanokernel's record program prints what it prints on a block device of its own,
 * the disk ends up with the same records, and GET /channels/{name} shows both ends open with
 * every request answered.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DISK_SECTOR_BYTES, DiskChain, runWithResets } from '../../devices/index.ts';
import type { BusChannelInfo } from '../../services/bus/index.ts';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host, type VmInfo } from '../../services/host/host.ts';
import { bootDirect } from '../integration/bus-disk-pair.ts';
import { until } from './until.ts';

const REPO = join(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'bv-host-busdisk-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SECTORS = 64;
const BOOT_ARGS = 'record put greeting hello add n 5 add n 2 get n put greeting bye get greeting get missing';

function blank(name: string): string {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(SECTORS * DISK_SECTOR_BYTES));
  return path;
}

/** The disk as its newest overlay (the one the VM wrote) holds it. */
function diskHash(image: string): string {
  const tops = readdirSync(dir).filter((name) => name.startsWith(`${image.split('/').pop()}.ovl.`)).sort((a, b) => Number(a.split('.').pop()) - Number(b.split('.').pop()));
  const chain = DiskChain.open(join(dir, tops.at(-1)!));
  try {
    return createHash('sha256').update(chain.read(0, chain.sectors)).digest('hex');
  } finally {
    chain.close();
  }
}

describe('host: a disk served by a storage VM over a configured channel', () => {
  it('runs the record program through the proxy with the results and disk of a direct device', async () => {
    const direct = bootDirect(BOOT_ARGS, blank('direct.img'));
    expect(runWithResets(direct.hv, direct.vm, direct.devices, { maxInstructions: 100_000_000 }).reason).toEqual({ kind: 'halted', exitCode: 0 });
    direct.devices.block!.close();

    const socket = join(dir, 'api.sock');
    const api = await ApiServer.listen(socket);
    const call = <T = unknown>(method: string, path: string) => apiRequest<T>(socket, method, path);
    const image = blank('served.img');
    const host = await Host.start(parseHostConfig({
      host_memory_mib: 64,
      slice_instructions: 50_000,
      channels: [{ name: 'disk0', service: 'block', client: 'client', server: 'storage' }],
      vms: [
        { name: 'client', image: join(REPO, 'examples/nanokernel/kernel.s'), memory_mib: 16, boot_args: BOOT_ARGS },
        { name: 'storage', image: join(REPO, 'examples/bus/storage-server.s'), memory_mib: 1, disk: { path: image } },
      ],
    }));
    try {
      hostRoutes(api, host);
      const info = await until('the client to stop', async () => {
        const vm = (await call<VmInfo>('GET', '/vms/client')).body;
        return vm.exit !== null ? vm : undefined;
      }, 60_000);
      expect(info.exit).toEqual({ kind: 'halted', exit_code: 0 });
      const consoleOf = async (name: string) => (await call<{ data: string }>('GET', `/vms/${name}/console`)).body.data;
      const output = await consoleOf('client');
      expect(output).toContain(`[kernel] disk: ${SECTORS} sectors of 512 bytes (bus, version 2.0)\n`);
      const programLines = (text: string) => text.split('\n').filter((line) => line.startsWith('record:'));
      expect(programLines(output)).toEqual(programLines(direct.output.text()));
      expect(programLines(output)).toContain('record: get n = 7');
      expect(await consoleOf('storage')).toBe('storage: serving 64 sectors on slot 0 (version 2.0)\n');
      const channel = (await call<BusChannelInfo>('GET', '/channels/disk0')).body;
      expect(channel.ends.map((end) => [end.vm, end.state, end.version])).toEqual([['client', 'open', '2.0'], ['storage', 'open', '2.0']]);
      expect(channel.ends[0]!.counters.packetsToGuest).toBe(channel.ends[0]!.counters.packetsFromGuest);
      expect(channel.failureCount).toBe(0);
    } finally {
      await api.close();
      await host.close();
    }
    expect(diskHash(image)).toBe(diskHash(join(dir, 'direct.img')));
  });
});
