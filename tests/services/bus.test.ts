/**
 * The host's partition bus (services/bus, docs/bus.md) with bare-metal guests: the echo service
 * (small and 64 KiB packets), flow control through rings smaller than the burst, relaying
 * between two VMs (a 1.0 client and a 2.0 server, the server waiting in wfi for its interrupt and
 * on pending_send_size), hostile guests writing garbage into their ring headers (their channel
 * FAILS, the peer is RESCINDED, other channels and the host carry on), rescinding a busy
 * channel, and checkpoint/restore of a VM with an open channel.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, savedBootArgs } from '../../devices/index.ts';
import { ChannelState } from '../../devices/channel.ts';
import { createHypervisor, type Hypervisor } from '../../kernel/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { Bus, BusError } from '../../services/bus/index.ts';
import { bootOnBus, echoChecksum, echoClient, pingClient, relayServer, ringLibrary } from '../devices/channel-guest.ts';
import { hexWords } from '../devices/harness.ts';

const V1 = 0x0001_0000;
const V2 = 0x0002_0000;
const dir = mkdtempSync(join(tmpdir(), 'bv-bus-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function newHost(): { hv: Hypervisor; bus: Bus; log: string[] } {
  const log: string[] = [];
  return { hv: createHypervisor({ hostMemoryBytes: 32 << 20 }), bus: new Bus({ log: (line) => log.push(line) }), log };
}

describe('bus: echo service', () => {
  it('a burst of 2000 packets through 4 KiB rings comes back complete and in order (flow control)', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    // The send ring (8 KiB) is larger than the receive ring (4 KiB): the host must stop when the
    // receive ring is full and carry on after the guest's doorbell.
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets: 2000, payloadBytes: 120 }));
    const [result] = await hv.runAsync({ maxInstructions: 200_000_000 });
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(hexWords(g.output())).toEqual([V2, echoChecksum(2000, 120)]);
    const end = bus.info('e').ends[0]!;
    expect(end.counters.packetsFromGuest).toBe(2000);
    expect(end.counters.packetsToGuest).toBe(2000);
    expect(end.counters.bytesToGuest).toBe(2000 * 136);
    expect(end.counters.ringFullWaits).toBeGreaterThan(0);
    expect(bus.totals()).toMatchObject({ packets: 2000, bytes: 2000 * 136, failures: 0 });
  });

  it('64 KiB messages make the round trip intact (packets wrap around the ring)', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 32, recvPages: 32, packets: 5, payloadBytes: 65536 }), 2 << 20);
    const [result] = await hv.runAsync({ maxInstructions: 200_000_000 });
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(hexWords(g.output())).toEqual([V2, echoChecksum(5, 65536)]);
  });
});

describe('bus: interrupt_mask', () => {
  it.each([false, true])('interrupt_mask %s: the host signals each delivery, or none to a polling consumer', async (mask) => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    bootOnBus(hv, bus, 'g', pingClient({ sendPages: 2, recvPages: 2, roundTrips: 50, payloadBytes: 64, waitIrq: false, mask }));
    const [result] = await hv.runAsync({ maxInstructions: 50_000_000 });
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    const counters = bus.info('e').ends[0]!.counters;
    expect(counters.packetsToGuest).toBe(50);
    expect(counters.interrupts).toBe(mask ? 0 : 50);
  });
});

describe('bus: relaying between two VMs', () => {
  it('a 1.0 client and a 2.0 server: every packet goes there and back, the server learns the client major', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'd', service: 'block', client: 'a', server: 'b' });
    const packets = 500;
    const a = bootOnBus(hv, bus, 'a', echoClient({ versions: [V1], sendPages: 3, recvPages: 2, packets, payloadBytes: 120 }));
    const b = bootOnBus(hv, bus, 'b', relayServer({ sendPages: 2, recvPages: 2, packets }));
    const results = await hv.runAsync({ maxInstructions: 200_000_000 });
    expect(results.map((r) => r.reason)).toEqual([{ kind: 'halted', exitCode: 0 }, { kind: 'halted', exitCode: 0 }]);
    expect(hexWords(a.output())).toEqual([V1, echoChecksum(packets, 120)]);
    expect(hexWords(b.output())).toEqual([(1 << 16) | 2]); // SERVICE: BLOCK_SERVER, client major 1
    const info = bus.info('d');
    expect(info.ends.map((end) => [end.vm, end.role, end.version])).toEqual([['a', 'client', '1.0'], ['b', 'server', '2.0']]);
    expect(info.ends[0]!.counters.packetsFromGuest).toBe(packets);
    expect(info.ends[1]!.counters.packetsToGuest).toBe(packets);
    expect(info.ends[1]!.counters.packetsFromGuest).toBe(packets);
    expect(info.ends[0]!.counters.packetsToGuest).toBe(packets);
    // The server slept in wfi and was woken by the bus's interrupts.
    expect(info.ends[1]!.counters.interrupts).toBeGreaterThan(0);
  });
});

/** A guest that opens the echo channel, commits one kind of garbage, rings and reports STATE. */
function hostile(garbage: string): string {
  return `${ringLibrary(3, 2)}
_start: li      t0, 20000
0:      addi    t0, t0, -1
        bnez    t0, 0b
        ch_find
        ch_open_v2 9f
        li      t0, SEND_HDR
        li      t2, RECV_HDR
        li      t3, SEND_DATA
${garbage}
        sw      zero, CH_DOORBELL(s0)
        lw      a0, CH_STATE(s0)
        mv      a1, s3
        call    put_hex
        exit    0
9:      exit    7
`;
}

const GARBAGE: [string, string, RegExp][] = [
  ['write_offset not a multiple of 8', 'li t1, 0x13\n sw t1, 0(t0)', /send ring write_offset 19 is not a multiple of 8/],
  ['write_offset past the ring', 'li t1, 8192\n sw t1, 0(t0)', /send ring write_offset 8192/],
  ['len8 below 2', 'li t1, 0x00020001\n sw t1, 0(t3)\n li t1, 1\n sw t1, 4(t3)\n li t1, 16\n sw t1, 0(t0)', /len8 1/],
  ['offset8 beyond len8', 'li t1, 0x00090001\n sw t1, 0(t3)\n li t1, 2\n sw t1, 4(t3)\n li t1, 16\n sw t1, 0(t0)', /offset8 9/],
  ['a packet longer than what was written', 'li t1, 0x00020001\n sw t1, 0(t3)\n li t1, 100\n sw t1, 4(t3)\n li t1, 16\n sw t1, 0(t0)', /800 bytes, but only 16/],
  ['fewer bytes than a packet header', 'li t1, 8\n sw t1, 0(t0)', /less than a packet header/],
  ['the host\'s read_offset changed', 'li t1, 8\n sw t1, 4(t0)', /read_offset is the host's/],
  ['a garbage receive-ring read_offset', 'li t1, 0x7\n sw t1, 4(t2)\n li t1, 0x00020001\n sw t1, 0(t3)\n li t1, 2\n sw t1, 4(t3)\n li t1, 16\n sw t1, 0(t0)', /receive ring read_offset 7/],
  ['a packet larger than the receiving ring', 'li t1, 0x00020001\n sw t1, 0(t3)\n li t1, 600\n sw t1, 4(t3)\n li t1, 4800\n sw t1, 0(t0)', /never fit/],
  ['pending_send_size larger than the ring', 'li t1, 0x00020001\n sw t1, 0(t3)\n li t1, 2\n sw t1, 4(t3)\n li t1, -1\n sw t1, 12(t0)\n li t1, 16\n sw t1, 0(t0)', /pending_send_size 4294967295/],
];

describe('bus: hostile guests', () => {
  it.each(GARBAGE)('%s: that channel FAILS with the reason; another VM\'s channel keeps working', async (_name, garbage, reason) => {
    const { hv, bus, log } = newHost();
    bus.addChannel({ name: 'bad', service: 'echo', client: 'h', server: 'echo' });
    bus.addChannel({ name: 'good', service: 'echo', client: 'g', server: 'echo' });
    const h = bootOnBus(hv, bus, 'h', hostile(garbage));
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 2, recvPages: 2, packets: 300, payloadBytes: 64 }));
    const results = await hv.runAsync({ maxInstructions: 100_000_000 });
    expect(results.map((r) => r.reason)).toEqual([{ kind: 'halted', exitCode: 0 }, { kind: 'halted', exitCode: 0 }]);
    expect(hexWords(h.output())).toEqual([ChannelState.FAILED]);
    const bad = bus.info('bad');
    expect(bad.failureCount).toBe(1);
    expect(bad.failures[0]!.reason).toMatch(reason);
    expect(log.join('\n')).toMatch(reason);
    expect(hexWords(g.output())).toEqual([V2, echoChecksum(300, 64)]);
    expect(bus.info('good').failureCount).toBe(0);
  });

  it('a hostile client of a linked channel: it FAILS, the server\'s slot is RESCINDED, the server acknowledges and is offered the channel again', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'd', service: 'block', client: 'h', server: 's' });
    const h = bootOnBus(hv, bus, 'h', hostile('li t1, 0x13\n sw t1, 0(t0)'));
    // The server opens and polls until its slot is RESCINDED, then acknowledges with CLOSE.
    const s = bootOnBus(hv, bus, 's', `${ringLibrary(2, 2)}
_start: ch_find
        li      a0, 0x00020000
        call    propose
        call    ch_grant_open
        mv      s1, a0
2:      lw      t0, CH_STATE(s0)
        li      t1, 4
        bne     t0, t1, 2b
        li      t0, 4
        sw      t0, CH_COMMAND(s0)
        lw      s2, CH_RESULT(s0)
        lw      a0, CH_STATE(s0)
        mv      a1, s3
        call    put_hex
        mv      a0, s1
        call    put_hex
        mv      a0, s2
        call    put_hex
        exit    0
`);
    const results = await hv.runAsync({ maxInstructions: 100_000_000 });
    expect(results.map((r) => r.reason)).toEqual([{ kind: 'halted', exitCode: 0 }, { kind: 'halted', exitCode: 0 }]);
    expect(hexWords(h.output())).toEqual([ChannelState.FAILED]);
    // After CLOSE the channel (still offered by the host) is on the server's slot again.
    expect(hexWords(s.output())).toEqual([ChannelState.OFFERED, 0, 0]);
    const info = bus.info('d');
    expect(info.failures.map((f) => f.vm)).toEqual(['h']);
    expect(info.ends[1]!.state).toBe('offered');
  });
});

describe('bus: rescind, config, checkpoint', () => {
  it('rescinding a busy channel: the guest sees RESCINDED, acknowledges, and gets it back when the host offers it again', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 2, recvPages: 2, packets: 1_000_000, payloadBytes: 64 }));
    await hv.runAsync({ maxInstructions: 2_000_000 });
    const before = bus.info('e').ends[0]!.counters.packetsToGuest;
    expect(before).toBeGreaterThan(0);
    expect(g.channel.slot(0).state).toBe(ChannelState.OPEN);
    bus.rescind('e');
    expect(g.channel.slot(0).state).toBe(ChannelState.RESCINDED);
    const [result] = await hv.runAsync({ maxInstructions: 5_000_000 });
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 8 });
    // STATE RESCINDED, CLOSE OK; nothing moved after the rescind beyond what was in flight.
    expect(hexWords(g.output())).toEqual([V2, ChannelState.RESCINDED, 0]);
    expect(g.channel.slot(0).state).toBe(ChannelState.EMPTY);
    expect(bus.info('e').ends[0]!.counters.packetsToGuest).toBe(before);
    expect(bus.info('e').offered).toBe(false);
    bus.offer('e');
    expect(g.channel.slot(0).state).toBe(ChannelState.OFFERED);
  });

  it('refuses bad channel configs with BusError', () => {
    const bus = new Bus();
    bus.addChannel({ name: 'x', service: 'echo', client: 'a', server: 'echo' });
    const bad: [object, RegExp][] = [
      [{ name: 'x', service: 'echo', client: 'a', server: 'echo' }, /already exists/],
      [{ name: 'y z', service: 'echo', client: 'a', server: 'echo' }, /name must be/],
      [{ name: 'y', service: 'disk', client: 'a', server: 'echo' }, /service must be/],
      [{ name: 'y', service: 'block', client: 'a', server: 'echo' }, /goes with/],
      [{ name: 'y', service: 'block', client: 'a', server: 'a' }, /same VM/],
      [{ name: 'y', service: 'echo', client: 'a', server: 'echo', versions: ['2'] }, /major.minor/],
      [{ name: 'y', service: 'echo', client: 'a', server: 'echo', versions: [] }, /1 … 16/],
      [{ name: 'y', service: 'echo', client: 'a', server: 'echo', ringPages: 65 }, /ring_pages/],
    ];
    for (const [config, message] of bad) expect(() => bus.addChannel(config as never)).toThrow(BusError), expect(() => bus.addChannel(config as never)).toThrow(message);
    expect(() => bus.info('nope')).toThrow(/no channel/);
  });

  it('a fork child of a VM with an open channel gets empty slots; the parent keeps its channel and finishes', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    const packets = 2000;
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets, payloadBytes: 120 }));
    await hv.runAsync({ maxInstructions: 2_000_000 }, [g.vm]);
    expect(g.channel.slot(0).state).toBe(ChannelState.OPEN);
    const { vm: child } = hv.forkVmWith(g.vm, {
      name: 'child',
      attach: (vm) => {
        attachStandardDevices(vm, { output: new CaptureSink() });
        return bus.attachVm(vm, hv);
      },
    });
    const childDevice = bus.deviceOf('child')!;
    expect(childDevice.slot(0).state).toBe(ChannelState.EMPTY);
    expect(bus.info('e').ends[0]!.vm).toBe('g');
    expect(g.channel.slot(0).state).toBe(ChannelState.OPEN);
    const [parent] = await hv.runAsync({ maxInstructions: 300_000_000 }, [g.vm]);
    expect(parent!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(hexWords(g.output())).toEqual([V2, echoChecksum(packets, 120)]);
    // The child's doorbells are refused (its slot is empty): it stops at its first one (exit 8).
    const [forked] = await hv.runAsync({ maxInstructions: 300_000_000 }, [child]);
    expect(forked!.reason).toEqual({ kind: 'halted', exitCode: 8 });
  });

  it('a VM with an open channel survives checkpoint/restore: the restored VM finishes its burst', async () => {
    const { hv, bus } = newHost();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    const packets = 3000;
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets, payloadBytes: 120 }));
    await hv.runAsync({ maxInstructions: 3_000_000 });
    const moved = bus.info('e').ends[0]!.counters.packetsToGuest;
    expect(moved).toBeGreaterThan(0);
    expect(moved).toBeLessThan(packets);
    const path = join(dir, 'g.bvc');
    saveVmCheckpoint(g.vm, path);
    bus.detachVm(g.vm);
    hv.destroyVm(g.vm);
    const output = new CaptureSink();
    let console: ReturnType<typeof attachStandardDevices>['console'] | null = null;
    const restored = restoreVmCheckpoint(hv, path, {
      mode: 'eager',
      attach: (vm, saved) => {
        console = attachStandardDevices(vm, { output, bootArgs: savedBootArgs(saved.components.bootargs!.state) }).console;
        bus.attachVm(vm, hv);
      },
    });
    expect(bus.deviceOf('g')!.slot(0).state).toBe(ChannelState.OPEN);
    const [result] = await hv.runAsync({ maxInstructions: 300_000_000 }, [restored.vm]);
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    console!.flush();
    // The restored guest prints only the checksum (the version went to the first console).
    expect(hexWords(output.text())).toEqual([echoChecksum(packets, 120)]);
    expect(bus.info('e').failureCount).toBe(0);
  });
});
