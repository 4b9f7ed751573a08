/**
 * A VM with an open channel to the host's echo service migrates between two hosts (two Host
 * objects in one process, plain TCP on loopback) while its guest pushes packets through the
 * channel: pre-copy and post-copy. The destination has the same channel (by name) added before
 * the VM arrives (docs/bus.md "Checkpoint, restore, fork, migration"); there the guest's exchange
 * carries on and completes, every packet answered once and in order (the guest checks each
 * answer's transaction id against the count it has received, exiting 5 on a gap or a repeat, and
 * prints the sum of every payload word it got back). A destination without the channel rescinds
 * the slot: the guest learns it at its next doorbell.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { GUEST_LIBRARY, hexWords } from '../devices/harness.ts';
import { echoChecksum, echoClient } from '../devices/channel-guest.ts';
import { until } from './until.ts';

const V2 = 0x0002_0000;
const PACKETS = 100_000;
const PAYLOAD = 120;
const root = mkdtempSync(join(tmpdir(), 'bv-bus-mig-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('a VM with an open echo channel, migrated mid-stream', () => {
  for (const mode of ['precopy', 'postcopy'] as const) {
    it(`${mode}: the exchange completes on the destination, every packet answered once, in order`, async () => {
      const image = join(root, `${mode}.s`);
      writeFileSync(image, GUEST_LIBRARY + echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets: PACKETS, payloadBytes: PAYLOAD }));
      const channel = { name: 'echo0', service: 'echo', client: 'a', server: 'echo' };
      const source = await Host.start(parseHostConfig({
        vms: [{ name: 'a', image, memory_mib: 1 }], channels: [channel], slice_instructions: 50_000, migration: { insecure: true, name: 'source' },
      }));
      const destination = await Host.start(parseHostConfig({ vms: [], slice_instructions: 50_000, migration: { insecure: true, name: 'destination' } }));
      try {
        // The destination needs the channel under the same name, naming the VM that will arrive.
        expect(destination.putChannel({ name: 'echo0', service: 'echo', client: 'a', server: 'echo', versions: ['2.0', '1.0'], ringPages: 64 }).created).toBe(true);
        const { listening } = await destination.receiveMigrations('127.0.0.1:0');
        if (listening === null) throw new Error('the destination does not listen');
        await until('packets to flow', async () => ((await source.channel('echo0')).ends[0]!.counters.packetsToGuest > 2_000 ? true : undefined), 60_000);
        // The agreed version was printed here; the console's text does not travel, the guest's state does.
        expect(hexWords(source.readConsole('a', 0, 1 << 16).data)).toEqual([V2]);
        await source.migrate('a', { destination: listening, mode });
        const sentHere = (await source.channel('echo0')).ends[0]!.counters.packetsToGuest;
        expect(sentHere).toBeLessThan(PACKETS); // migrated mid-stream
        const moved = await destination.whenStopped('a');
        expect(moved.exit).toEqual({ kind: 'halted', exit_code: 0 });
        expect(hexWords(destination.readConsole('a', 0, 1 << 16).data)).toEqual([echoChecksum(PACKETS, PAYLOAD)]);
        const there = await destination.channel('echo0');
        expect(there.ends[0]).toMatchObject({ vm: 'a', state: 'open', version: '2.0' });
        expect(there.failureCount).toBe(0);
        // The destination's echo answered the rest, each packet answered by one host exactly once
        // (what was pending in the rings moved with them).
        expect(there.ends[0]!.counters.packetsFromGuest).toBe(PACKETS - sentHere);
        expect(there.ends[0]!.counters.packetsToGuest).toBe(PACKETS - sentHere);
        expect((await source.channel('echo0')).failureCount).toBe(0);
      } finally {
        await source.close();
        await destination.close();
      }
    }, 120_000);
  }

  it('a destination without the channel rescinds it: the guest sees RESCINDED at its next doorbell', async () => {
    const image = join(root, 'missing.s');
    writeFileSync(image, GUEST_LIBRARY + echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets: PACKETS, payloadBytes: PAYLOAD }));
    const source = await Host.start(parseHostConfig({
      vms: [{ name: 'a', image, memory_mib: 1 }], channels: [{ name: 'echo0', service: 'echo', client: 'a', server: 'echo' }],
      slice_instructions: 50_000, migration: { insecure: true, name: 'source' },
    }));
    const destination = await Host.start(parseHostConfig({ vms: [], slice_instructions: 50_000, migration: { insecure: true, name: 'destination' } }));
    try {
      const { listening } = await destination.receiveMigrations('127.0.0.1:0');
      if (listening === null) throw new Error('the destination does not listen');
      await until('packets to flow', async () => ((await source.channel('echo0')).ends[0]!.counters.packetsToGuest > 2_000 ? true : undefined), 60_000);
      await source.migrate('a', { destination: listening, mode: 'precopy' });
      const moved = await destination.whenStopped('a');
      // exit 8: its doorbell was refused; it printed STATE 4 (rescinded) and CLOSE's result 0.
      expect(moved.exit).toEqual({ kind: 'halted', exit_code: 8 });
      expect(hexWords(destination.readConsole('a', 0, 1 << 16).data)).toEqual([4, 0]);
      expect((await destination.channels()).channels).toEqual([]);
    } finally {
      await source.close();
      await destination.close();
    }
  }, 120_000);
});
