/**
 * The partition bus through the host (docs/bus.md, docs/api.md): `channels` in the host
 * configuration, GET /channels and GET/PUT/DELETE /channels/{name}, the bus totals in
 * /host/stats, a VM-to-VM channel whose server waits in wfi (the host's scheduler must run it
 * again when the bus raises its interrupt), a snapshot and restore of a VM with an open channel,
 * and the refusals: bad bodies (400), unknown channels (404), a VM created without a channel
 * device (409), bad configurations (ConfigError).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { ConfigError, parseHostConfig } from '../../services/host/config.ts';
import { Host, type ChannelsInfo, type HostStatsReport, type VmInfo } from '../../services/host/host.ts';
import type { BusChannelInfo } from '../../services/bus/index.ts';
import { hexWords } from '../devices/harness.ts';
import { echoChecksum, echoClient, relayServer } from '../devices/channel-guest.ts';
import { guestImage, V1, V2, vmStopped } from './host-channel-kit.ts';
import { until } from './until.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-host-channels-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const image = (name: string, program: string): string => guestImage(dir, name, program);

describe('host: channels', () => {
  const socket = join(dir, 'api.sock');
  let host: Host;
  let api: ApiServer;
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);
  const stopped = (name: string) => vmStopped(call, name);

  beforeAll(async () => {
    api = await ApiServer.listen(socket);
    const packets = 400;
    host = await Host.start(parseHostConfig({
      host_memory_mib: 128,
      slice_instructions: 50_000,
      channels: [
        { name: 'echo0', service: 'echo', client: 'e', server: 'echo' },
        { name: 'disk0', service: 'block', client: 'c', server: 's', versions: ['2.0', '1.0'], ring_pages: 8 },
      ],
      vms: [
        { name: 'e', image: image('e', echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets: 1000, payloadBytes: 120 })), memory_mib: 1 },
        { name: 'c', image: image('c', echoClient({ versions: [V1], sendPages: 3, recvPages: 2, packets, payloadBytes: 56 })), memory_mib: 1 },
        { name: 's', image: image('s', relayServer({ sendPages: 2, recvPages: 2, packets })), memory_mib: 1 },
        { name: 'plain', image: image('plain', '_start: exit 0\n'), memory_mib: 1 },
      ],
    }));
    hostRoutes(api, host);
  });

  afterAll(async () => {
    await api?.close();
    await host?.close();
  });

  it('runs an echo channel and a relayed VM-to-VM channel from the configuration', async () => {
    for (const name of ['e', 'c', 's']) expect((await stopped(name)).exit).toEqual({ kind: 'halted', exit_code: 0 });
    const console = async (name: string) => (await call<{ data: string }>('GET', `/vms/${name}/console`)).body.data;
    expect(hexWords(await console('e'))).toEqual([V2, echoChecksum(1000, 120)]);
    expect(hexWords(await console('c'))).toEqual([V1, echoChecksum(400, 56)]);
    expect(hexWords(await console('s'))).toEqual([(1 << 16) | 2]);
    const disk0 = (await call<BusChannelInfo>('GET', '/channels/disk0')).body;
    expect(disk0.ends.map((end) => [end.vm, end.role, end.state, end.version])).toEqual([['c', 'client', 'open', '1.0'], ['s', 'server', 'open', '2.0']]);
    expect(disk0.ends[0]!.counters).toMatchObject({ packetsFromGuest: 400, packetsToGuest: 400, bytesFromGuest: 400 * 72 });
    expect(disk0.ends[1]!.counters.interrupts).toBeGreaterThan(0);
    const all = (await call<ChannelsInfo>('GET', '/channels')).body;
    expect(all.channels.map((channel) => channel.name)).toEqual(['echo0', 'disk0']);
    expect(all.totals).toMatchObject({ channels: 2, packets: 1000 + 800, failures: 0 });
    const stats = (await call<HostStatsReport>('GET', '/host/stats')).body;
    expect(stats.bus).toEqual(all.totals);
  });

  it('PUT, GET and DELETE /channels/{name}, and the refusals', async () => {
    // 'plain' was created without a channel device: it cannot take a channel now.
    const refused = await call<{ fault_message: string }>('PUT', '/channels/late', { service: 'echo', client: 'plain', server: 'echo' });
    expect(refused.status).toBe(409);
    expect(refused.body.fault_message).toMatch(/no channel device/);
    expect((await call('PUT', '/channels/bad', { service: 'echo', client: 'e' })).status).toBe(400);
    expect((await call('PUT', '/channels/bad', { service: 'echo', client: 'e', server: 'echo', versions: ['2'] })).status).toBe(400);
    expect((await call('PUT', '/channels/bad', { service: 'block', client: 'e', server: 'echo' })).status).toBe(400);
    expect((await call('GET', '/channels/nope')).status).toBe(404);
    expect((await call('DELETE', '/channels/nope')).status).toBe(404);
    // A channel for a VM that does not exist yet is kept, and offered when the VM is created.
    const created = await call<BusChannelInfo>('PUT', '/channels/later', { service: 'echo', client: 'newvm', server: 'echo', versions: ['2.0'] });
    expect(created.status).toBe(201);
    expect(created.body.ends[0]).toMatchObject({ vm: 'newvm', state: 'absent' });
    expect((await call('PUT', '/channels/later', { service: 'echo', client: 'newvm', server: 'echo', versions: ['2.0'] })).status).toBe(200);
    expect((await call('PUT', '/channels/later', { service: 'echo', client: 'newvm', server: 'echo' })).status).toBe(409);
    const vm = await call<VmInfo>('PUT', '/vms/newvm', { image: image('newvm', echoClient({ versions: [V2], sendPages: 2, recvPages: 2, packets: 50, payloadBytes: 8 })), memory_mib: 1 });
    expect(vm.status).toBe(201);
    expect((await stopped('newvm')).exit).toEqual({ kind: 'halted', exit_code: 0 });
    expect((await call<BusChannelInfo>('GET', '/channels/later')).body.ends[0]!.counters.packetsToGuest).toBe(50);
    expect((await call('DELETE', '/channels/later')).status).toBe(204);
    expect((await call('GET', '/channels/later')).status).toBe(404);
  });

  it('a snapshot of a VM with an open channel restores with the channel working', async () => {
    const echoChannel = await call<BusChannelInfo>('PUT', '/channels/snap', { service: 'echo', client: 'sv', server: 'echo' });
    expect(echoChannel.status).toBe(201);
    const program = echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets: 100_000, payloadBytes: 120 });
    expect((await call('PUT', '/vms/sv', { image: image('sv', program), memory_mib: 1 })).status).toBe(201);
    await until('packets to flow', async () => ((await call<BusChannelInfo>('GET', '/channels/snap')).body.ends[0]!.counters.packetsToGuest > 100 ? true : undefined));
    expect((await call('PATCH', '/vms/sv', { state: 'Paused' })).status).toBe(200);
    const path = join(dir, 'sv.bvc');
    expect((await call('PUT', '/vms/sv/snapshot', { path })).status).toBe(200);
    const before = (await call<BusChannelInfo>('GET', '/channels/snap')).body.ends[0]!.counters.packetsToGuest;
    expect((await call('DELETE', '/vms/sv')).status).toBe(204);
    expect((await call<BusChannelInfo>('GET', '/channels/snap')).body.ends[0]!.state).toBe('absent');
    const restored = await call<VmInfo>('PUT', '/vms/restore', { path, mode: 'eager' });
    expect(restored.status).toBe(201);
    expect((await stopped('sv')).exit).toEqual({ kind: 'halted', exit_code: 0 });
    const console = (await call<{ data: string }>('GET', '/vms/sv/console')).body.data;
    expect(hexWords(console)).toEqual([echoChecksum(100_000, 120)]);
    const after = (await call<BusChannelInfo>('GET', '/channels/snap')).body;
    expect(after.ends[0]!.state).toBe('open');
    expect(after.ends[0]!.counters.packetsToGuest).toBeGreaterThan(before);
    expect(after.failureCount).toBe(0);
  });
});

describe('host config: channels', () => {
  const vm = (name: string, group?: string) => ({ name, image: 'x.s', memory_mib: 1, ...(group === undefined ? {} : { group }) });
  it('refuses channels naming unknown VMs, echo mismatches and duplicates; accepts VMs in worker groups', () => {
    const cases: [object, RegExp][] = [
      [{ vms: [vm('a')], channels: [{ name: 'x', service: 'echo', client: 'b', server: 'echo' }] }, /channels\[0\]\.client: names no VM/],
      [{ vms: [vm('a')], channels: [{ name: 'x', service: 'block', client: 'a', server: 'echo' }] }, /is "echo" exactly when service is "echo"/],
      [{ vms: [vm('a'), vm('b')], channels: [{ name: 'x', service: 'block', client: 'a', server: 'a' }] }, /is the client itself/],
      [{ vms: [vm('a')], channels: [{ name: 'x', service: 'echo', client: 'a', server: 'echo' }, { name: 'x', service: 'echo', client: 'a', server: 'echo' }] }, /names two channels/],
      [{ vms: [vm('a')], channels: [{ name: 'x', service: 'echo', client: 'a', server: 'echo', ring_pages: 2 }] }, /ring_pages/],
    ];
    for (const [config, message] of cases) {
      expect(() => parseHostConfig(config)).toThrow(ConfigError);
      expect(() => parseHostConfig(config)).toThrow(message);
    }
    expect(parseHostConfig({ vms: [vm('a'), vm('g', 'w')], worker_groups: [{ name: 'w' }], channels: [{ name: 'x', service: 'block', client: 'a', server: 'g' }] }).channels).toHaveLength(1);
    expect(parseHostConfig({ vms: [vm('a')], channels: [{ name: 'x', service: 'echo', client: 'a', server: 'echo' }] }).channels)
      .toEqual([{ name: 'x', service: 'echo', client: 'a', server: 'echo', versions: ['2.0', '1.0'], ringPages: 64 }]);
  });
});
