/**
 * Channels whose ends live in two different buses (services/bus, docs/bus.md "Across threads"):
 * two hypervisors, each with its own bus, linked by a MessageChannel (structured-clone messages
 * delivered through the event loop, as between threads). Packets flow against credit: the full
 * burst arrives in order through rings smaller than it; the server learns the client's major;
 * a hostile client fails and the server's slot is rescinded through the link.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { ChannelState } from '../../devices/channel.ts';
import { createHypervisor, type Hypervisor } from '../../kernel/index.ts';
import { Bus, type BusLinkMessage } from '../../services/bus/index.ts';
import { bootOnBus, echoChecksum, echoClient, relayServer, ringLibrary } from '../devices/channel-guest.ts';
import { hexWords } from '../devices/harness.ts';

const V1 = 0x0001_0000;
const ports: MessagePort[] = [];
afterEach(() => {
  for (const port of ports.splice(0)) port.close();
});

/** Two buses, one per hypervisor, holding channel 'd' with the client in the first and the server in the second. */
function linked(): { hvA: Hypervisor; hvB: Hypervisor; busA: Bus; busB: Bus; messages: BusLinkMessage['kind'][] } {
  const { port1, port2 } = new MessageChannel();
  ports.push(port1, port2);
  const messages: BusLinkMessage['kind'][] = [];
  const busA = new Bus();
  const busB = new Bus();
  busA.addChannel({ name: 'd', service: 'block', client: 'a', server: 'b', remote: { role: 'server', link: { post: (m) => port1.postMessage(m) } } });
  busB.addChannel({ name: 'd', service: 'block', client: 'a', server: 'b', remote: { role: 'client', link: { post: (m) => port2.postMessage(m) } } });
  port1.on('message', (m: BusLinkMessage) => {
    messages.push(m.kind);
    busA.receive(m);
  });
  port2.on('message', (m: BusLinkMessage) => {
    messages.push(m.kind);
    busB.receive(m);
  });
  return { hvA: createHypervisor({ hostMemoryBytes: 16 << 20 }), hvB: createHypervisor({ hostMemoryBytes: 16 << 20 }), busA, busB, messages };
}

describe('bus: a channel across two buses', () => {
  it('a 1.0 client and a 2.0 server in different buses: the whole burst goes there and back through small rings', async () => {
    const { hvA, hvB, busA, busB, messages } = linked();
    const packets = 400;
    const a = bootOnBus(hvA, busA, 'a', echoClient({ versions: [V1], sendPages: 3, recvPages: 2, packets, payloadBytes: 120 }));
    const b = bootOnBus(hvB, busB, 'b', relayServer({ sendPages: 2, recvPages: 2, packets }));
    const [[ra], [rb]] = await Promise.all([hvA.runAsync({ maxInstructions: 500_000_000 }), hvB.runAsync({ maxInstructions: 500_000_000 })]);
    expect(ra!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(rb!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(hexWords(a.output())).toEqual([V1, echoChecksum(packets, 120)]);
    expect(hexWords(b.output())).toEqual([(1 << 16) | 2]); // the client's major crossed the link
    const endA = busA.info('d').ends;
    const endB = busB.info('d').ends;
    expect(endA.map((e) => e.state)).toEqual(['open', 'remote']);
    expect(endB.map((e) => e.state)).toEqual(['remote', 'open']);
    expect(endA[0]!.counters).toMatchObject({ packetsFromGuest: packets, packetsToGuest: packets, dropped: 0 });
    expect(endB[1]!.counters).toMatchObject({ packetsFromGuest: packets, packetsToGuest: packets, dropped: 0 });
    // 136-byte packets through a 4 KiB receive ring: the sender waited for credit.
    expect(endA[1]!.counters.ringFullWaits + endB[0]!.counters.ringFullWaits).toBeGreaterThan(0);
    expect(messages).toContain('credit');
    expect(messages).toContain('major');
  });

  it('a hostile client fails; the server in the other bus is rescinded through the link', async () => {
    const { hvA, hvB, busA, busB } = linked();
    bootOnBus(hvA, busA, 'a', `${ringLibrary(2, 2)}
_start: li      t0, 50000           # let the server open first
0:      addi    t0, t0, -1
        bnez    t0, 0b
        ch_find
        ch_open_v2 9f
        li      t0, SEND_HDR
        li      t1, 0x13
        sw      t1, 0(t0)               # garbage write_offset
        sw      zero, CH_DOORBELL(s0)
        lw      a1, CH_STATE(s0)
        exit_reg a1
9:      exit    7
`);
    const b = bootOnBus(hvB, busB, 'b', `${ringLibrary(2, 2)}
_start: ch_find
        ch_open_v2 1f                   # (refused if the rescind came first: wait all the same)
1:      lw      t0, CH_STATE(s0)        # until RESCINDED
        li      t1, 4
        bne     t0, t1, 1b
        exit    0
`);
    const [[ra], [rb]] = await Promise.all([hvA.runAsync({ maxInstructions: 50_000_000 }), hvB.runAsync({ maxInstructions: 500_000_000 })]);
    expect(ra!.reason).toEqual({ kind: 'halted', exitCode: ChannelState.FAILED });
    expect(rb!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(busA.info('d').failures[0]!.reason).toMatch(/write_offset 19/);
    expect(b.channel.slot(0).state).toBe(ChannelState.RESCINDED);
  });
});
