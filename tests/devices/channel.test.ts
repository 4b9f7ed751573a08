/**
 * The CHANNEL device (docs/bus.md) driven by bare-metal guests: the device table entry, version
 * negotiation both ways (old client / new host, new client / old host, no common version),
 * grant validation, revoke (unused, and in use → FAILED), acknowledging and re-offering, the
 * interrupt line, reset, and the checks of saved state.
 */
import { describe, expect, it } from 'vitest';
import { ChannelResult, ChannelState, CHANNEL_SLOTS } from '../../devices/channel.ts';
import { DeviceStateError } from '../../devices/state.ts';
import { createHypervisor, type Hypervisor } from '../../kernel/index.ts';
import { Bus } from '../../services/bus/index.ts';
import { bootOnBus, echoChecksum, echoClient, ringLibrary } from './channel-guest.ts';
import { hexWords } from './harness.ts';

const V1 = 0x0001_0000;
const V2 = 0x0002_0000;
const V3 = 0x0003_0000;

function setup(versions?: string[]): { hv: Hypervisor; bus: Bus } {
  const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
  const bus = new Bus();
  bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo', ...(versions ? { versions } : {}) });
  return { hv, bus };
}

/** Start of a register-poking program: s0 = channel window, s3 = console; waits for the offer on slot 0. */
const PROLOGUE = `${ringLibrary(2, 2)}
        .macro  show reg
        mv      a0, \\reg
        mv      a1, s3
        call    put_hex
        putc    s3, 32
        .endm
        .macro  poke addr, value
        li      t0, \\addr
        li      t1, \\value
        sw      t1, 0(t0)
        .endm
        .macro  grant_at addr
        li      t0, \\addr
        sw      t0, CH_GRANT_LIST(s0)
        li      t0, 1
        sw      t0, CH_COMMAND(s0)
        lw      s1, CH_RESULT(s0)
        show    s1
        .endm
        .macro  cmd value
        li      t0, \\value
        sw      t0, CH_COMMAND(s0)
        lw      s1, CH_RESULT(s0)
        show    s1
        .endm
_start: ch_find
        li      a0, DEV_CHANNEL
        call    find_device
        show    a1                      # device-table info: slots
`;

async function run(hv: Hypervisor): Promise<void> {
  await hv.runAsync({ maxInstructions: 20_000_000 });
}

describe('channel device: discovery and versions', () => {
  it('is listed in the device table with 8 slots; slot 0 offers ECHO', async () => {
    const { hv, bus } = setup();
    const g = bootOnBus(hv, bus, 'g', `${PROLOGUE}
        lw      s1, CH_SLOTS(s0)
        show    s1
        lw      s1, CH_SERVICE(s0)
        show    s1
        lw      s1, CH_IRQ_STATUS(s0)   # the offer is an event
        show    s1
        li      t0, 1
        sw      t0, CH_IRQ_STATUS(s0)   # write-1-to-clear
        lw      s1, CH_IRQ_STATUS(s0)
        show    s1
        li      t0, 1
        sw      t0, CH_SELECT(s0)
        lw      s1, CH_STATE(s0)        # slot 1: EMPTY
        show    s1
        li      t0, 99
        sw      t0, CH_SELECT(s0)       # out of range: ignored
        lw      s1, CH_SELECT(s0)
        show    s1
        exit    0
    `);
    await run(hv);
    expect(hexWords(g.output())).toEqual([CHANNEL_SLOTS, CHANNEL_SLOTS, 3, 1, 0, ChannelState.EMPTY, 1]);
  });

  it('an old client (1.0 only) and a new host (2.0, 1.0) agree on 1.0', async () => {
    const { hv, bus } = setup(['2.0', '1.0']);
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V1], sendPages: 2, recvPages: 2, packets: 3, payloadBytes: 8 }));
    await run(hv);
    expect(hexWords(g.output())).toEqual([V1, echoChecksum(3, 8)]);
    expect(bus.info('e').ends[0]!.version).toBe('1.0');
  });

  it('a new client (3.0, 2.0, 1.0) and an old host (1.0) agree on 1.0 after two refusals', async () => {
    const { hv, bus } = setup(['1.0']);
    const g = bootOnBus(hv, bus, 'g', `${PROLOGUE}
        li      a0, ${V3}
        call    propose
        show    a0
        lw      s1, CH_VERSION(s0)
        show    s1
        lw      s1, CH_STATE(s0)
        show    s1
        li      a0, ${V2}
        call    propose
        show    a0
        li      a0, ${V1}
        call    propose
        show    a0
        lw      s1, CH_VERSION(s0)
        show    s1
        lw      s1, CH_STATE(s0)
        show    s1
        li      a0, ${V1}               # once NEGOTIATED: BAD_STATE, the agreement stands
        call    propose
        show    a0
        lw      s1, CH_VERSION(s0)
        show    s1
        exit    0
    `);
    await run(hv);
    expect(hexWords(g.output())).toEqual([
      CHANNEL_SLOTS, ChannelResult.NO_VERSION, 0, ChannelState.OFFERED, ChannelResult.NO_VERSION, ChannelResult.OK, V1, ChannelState.NEGOTIATED,
      ChannelResult.BAD_STATE, V1,
    ]);
  });

  it('no common version: every proposal refused, the slot stays OFFERED and nothing opens', async () => {
    const { hv, bus } = setup(['2.0']);
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V3, V1], sendPages: 2, recvPages: 2, packets: 1, payloadBytes: 8 }));
    const [result] = await hv.runAsync({ maxInstructions: 5_000_000 });
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 3 });
    expect(hexWords(g.output())).toEqual([0]);
    expect(g.channel.slot(0).state).toBe(ChannelState.OFFERED);
    expect(bus.info('e').ends[0]!.version).toBeNull();
  });
});

describe('channel device: grants', () => {
  it('refuses bad page lists with BAD_LIST and hands out a handle for a good one', async () => {
    const { hv, bus } = setup();
    const LIST = 0x40000;
    const g = bootOnBus(hv, bus, 'g', `${PROLOGUE}
        grant_at 0x40010                # list not page-aligned
        grant_at 0x200000               # list outside RAM (1 MiB)
        poke    ${LIST}, 0              # count 0
        grant_at ${LIST}
        poke    ${LIST}, 65             # count 65
        grant_at ${LIST}
        poke    ${LIST}, 2
        poke    ${LIST + 4}, 0x41000
        poke    ${LIST + 8}, 0x42008    # page not aligned
        grant_at ${LIST}
        poke    ${LIST + 8}, 0x100000   # page outside RAM
        grant_at ${LIST}
        poke    ${LIST + 8}, 0x41000    # duplicate
        grant_at ${LIST}
        poke    ${LIST + 8}, ${LIST}    # the list page itself
        grant_at ${LIST}
        poke    ${LIST + 8}, 0x42000    # good
        grant_at ${LIST}
        lw      s2, CH_HANDLE(s0)
        show    s2
        li      t0, 12345
        sw      t0, CH_HANDLE(s0)
        cmd     2                       # REVOKE an unknown handle
        sw      s2, CH_HANDLE(s0)
        cmd     2                       # REVOKE the good one (not in use)
        cmd     2                       # again: gone
        exit    0
    `);
    await run(hv);
    const words = hexWords(g.output());
    const BAD = ChannelResult.BAD_LIST;
    expect(words.slice(1, 9)).toEqual([BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD]);
    expect(words[9]).toBe(ChannelResult.OK);
    expect(words[10]).not.toBe(0);
    expect(words.slice(11)).toEqual([ChannelResult.BAD_HANDLE, ChannelResult.OK, ChannelResult.BAD_HANDLE]);
    expect(g.channel.grantCount).toBe(0);
  });

  it('the host maps a grant only by a live handle', async () => {
    const { hv, bus } = setup();
    const g = bootOnBus(hv, bus, 'g', `${PROLOGUE}
        li      a0, ${V2}
        call    propose
        call    ch_grant_open
        mv      s2, a1
        show    a0
        show    s2
        exit    0
    `);
    await run(hv);
    const [, result, handle] = hexWords(g.output());
    expect(result).toBe(ChannelResult.OK);
    expect(bus.map(g.vm, handle!)).toEqual([0x41, 0x42, 0x43, 0x44]);
    expect(() => bus.map(g.vm, handle! + 1)).toThrow(/no grant/);
  });

  it('revoking a grant an open channel uses: IN_USE, the slot FAILED, the host never maps it again; CLOSE acknowledges and the offer returns', async () => {
    const { hv, bus } = setup();
    const g = bootOnBus(hv, bus, 'g', `${PROLOGUE}
        li      a0, ${V2}
        call    propose
        call    ch_grant_open
        mv      s2, a1
        show    a0
        sw      s2, CH_HANDLE(s0)
        cmd     2                       # REVOKE while OPEN
        lw      s1, CH_STATE(s0)
        show    s1
        cmd     5                       # DOORBELL: not open any more
        cmd     4                       # CLOSE acknowledges the failure
        lw      s1, CH_STATE(s0)        # offered again
        show    s1
        lw      s1, CH_VERSION(s0)
        show    s1
        exit    0
    `);
    await run(hv);
    expect(hexWords(g.output()).slice(1)).toEqual([
      ChannelResult.OK, ChannelResult.IN_USE, ChannelState.FAILED, ChannelResult.BAD_STATE, ChannelResult.OK, ChannelState.OFFERED, 0,
    ]);
    const info = bus.info('e');
    expect(info.failureCount).toBe(1);
    expect(info.failures[0]!.reason).toMatch(/revoked while the channel was open/);
    expect(g.channel.grantCount).toBe(0);
  });

  it('OPEN checks state, handle and geometry', async () => {
    const { hv, bus } = setup();
    const g = bootOnBus(hv, bus, 'g', `${PROLOGUE}
        cmd     3                       # OPEN while OFFERED
        li      a0, ${V2}
        call    propose
        li      t0, 777
        sw      t0, CH_HANDLE(s0)
        cmd     3                       # unknown handle
        poke    0x40000, 3
        poke    0x40004, 0x41000
        poke    0x40008, 0x42000
        poke    0x4000c, 0x43000
        grant_at 0x40000
        li      t0, 2
        sw      t0, CH_SEND_PAGES(s0)   # leaves 1 page for the receive ring
        cmd     3
        li      t0, 1
        sw      t0, CH_SEND_PAGES(s0)
        cmd     3
        exit    0
    `);
    await run(hv);
    expect(hexWords(g.output()).slice(1)).toEqual([ChannelResult.BAD_STATE, ChannelResult.BAD_HANDLE, ChannelResult.OK, ChannelResult.BAD_LIST, ChannelResult.BAD_LIST]);
  });
});

describe('channel device: state', () => {
  it('saves slots and grants; a damaged saved state is refused naming the field', async () => {
    const { hv, bus } = setup();
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 2, recvPages: 2, packets: 2, payloadBytes: 8 }));
    await run(hv);
    const saved = g.channel.save();
    expect(saved.slots[0]!.state).toBe(ChannelState.OPEN);
    expect(saved.grants).toHaveLength(1);
    expect(() => g.channel.check({ ...saved, select: 9 })).toThrow(DeviceStateError);
    const badSlots = saved.slots.map((slot, i) => (i === 0 ? { ...slot, openHandle: 999 } : slot));
    expect(() => g.channel.check({ ...saved, slots: badSlots })).toThrow(/openHandle names no saved grant/);
    const badGrant = [{ handle: saved.grants[0]!.handle, gpns: [0x41, 1 << 20] }];
    expect(() => g.channel.check({ ...saved, grants: badGrant })).toThrow(/gpns\[1\]/);
  });

  it('a VM reset closes the channel, drops grants and offers the slot again', async () => {
    const { hv, bus } = setup();
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 2, recvPages: 2, packets: 2, payloadBytes: 8 }));
    await run(hv);
    expect(bus.totals().openEnds).toBe(1);
    g.vm.reset();
    expect(g.channel.slot(0).state).toBe(ChannelState.OFFERED);
    expect(g.channel.grantCount).toBe(0);
    expect(bus.totals().openEnds).toBe(0);
    expect(hv.externalWakeSources.has(g.vm)).toBe(false);
  });
});
