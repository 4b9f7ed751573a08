/**
 * Channels across worker threads (docs/bus.md "Across threads", docs/workers.md): a host whose
 * configuration puts the ends of channels in different threads — the host's own and a worker
 * group, two worker groups, and an echo channel inside one group. Every burst completes through
 * rings smaller than it, the servers learn their clients' majors, GET /channels/{name} puts the
 * ends together from each thread's bus, and the API cannot change such a channel (409).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host, type ChannelsInfo } from '../../services/host/host.ts';
import type { BusChannelInfo } from '../../services/bus/index.ts';
import { hexWords } from '../devices/harness.ts';
import { echoChecksum, echoClient, relayServer } from '../devices/channel-guest.ts';
import { guestImage, V1, V2, vmStopped } from './host-channel-kit.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-host-channels-groups-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const image = (name: string, program: string): string => guestImage(dir, name, program);

describe('host: channels across worker threads', () => {
  const socket = join(dir, 'api.sock');
  let host: Host;
  let api: ApiServer;
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);
  const stopped = (name: string) => vmStopped(call, name);
  const packets = 300;

  beforeAll(async () => {
    api = await ApiServer.listen(socket);
    host = await Host.start(parseHostConfig({
      host_memory_mib: 128,
      slice_instructions: 50_000,
      worker_groups: [{ name: 'w1' }, { name: 'w2' }],
      channels: [
        { name: 'x1', service: 'block', client: 'c', server: 's' },
        { name: 'x2', service: 'block', client: 'c2', server: 's2' },
        { name: 'e2', service: 'echo', client: 'e', server: 'echo' },
      ],
      vms: [
        { name: 'c', image: image('c', echoClient({ versions: [V1], sendPages: 3, recvPages: 2, packets, payloadBytes: 120 })), memory_mib: 1 },
        { name: 's', image: image('s', relayServer({ sendPages: 2, recvPages: 2, packets })), memory_mib: 1, group: 'w1' },
        { name: 'c2', image: image('c2', echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets, payloadBytes: 56 })), memory_mib: 1, group: 'w1' },
        { name: 's2', image: image('s2', relayServer({ sendPages: 2, recvPages: 2, packets })), memory_mib: 1, group: 'w2' },
        { name: 'e', image: image('e', echoClient({ versions: [V2], sendPages: 2, recvPages: 2, packets, payloadBytes: 64 })), memory_mib: 1, group: 'w2' },
      ],
    }));
    hostRoutes(api, host);
  }, 60_000);

  afterAll(async () => {
    await api?.close();
    await host?.close();
  });

  it('moves every burst between the host thread and a group, between two groups, and inside a group', async () => {
    for (const name of ['c', 's', 'c2', 's2', 'e']) expect((await stopped(name)).exit).toEqual({ kind: 'halted', exit_code: 0 });
    const console = async (name: string) => hexWords((await call<{ data: string }>('GET', `/vms/${name}/console`)).body.data);
    expect(await console('c')).toEqual([V1, echoChecksum(packets, 120)]);
    expect(await console('s')).toEqual([(1 << 16) | 2]);
    expect(await console('c2')).toEqual([V2, echoChecksum(packets, 56)]);
    expect(await console('s2')).toEqual([(2 << 16) | 2]);
    expect(await console('e')).toEqual([V2, echoChecksum(packets, 64)]);
    for (const [name, bytes] of [['x1', 136], ['x2', 72]] as const) {
      const info = (await call<BusChannelInfo>('GET', `/channels/${name}`)).body;
      expect(info.ends.map((end) => [end.role, end.state])).toEqual([['client', 'open'], ['server', 'open']]);
      expect(info.ends[0]!.counters).toMatchObject({ packetsFromGuest: packets, packetsToGuest: packets, bytesToGuest: packets * bytes, dropped: 0 });
      expect(info.ends[1]!.counters).toMatchObject({ packetsFromGuest: packets, packetsToGuest: packets, dropped: 0 });
      expect(info.failureCount).toBe(0);
    }
    const all = (await call<ChannelsInfo>('GET', '/channels')).body;
    expect(all.channels.map((channel) => channel.name).sort()).toEqual(['e2', 'x1', 'x2']);
    expect(all.totals.channels).toBe(3);
    expect((await call('DELETE', '/channels/x1')).status).toBe(409);
    expect((await call('PUT', '/channels/x2', { service: 'block', client: 'c2', server: 's2' })).status).toBe(409);
  });
});
