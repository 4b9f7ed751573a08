/**
 * The partition bus and a ring page that is still on a post-copy migration source (docs/bus.md
 * "Checkpoint, restore, fork, migration"): the guest's doorbell moves nothing and fails nothing,
 * the access asks for the page, and the bus moves the waiting packets by itself once the page is
 * in; the exchange then completes, every packet answered once, in order. A GRANT whose page list
 * is away makes the vCPU wait, and runs once when the page is in. The page is made REMOTE by the
 * test (as a post-copy destination has it) and delivered when the test chooses.
 */
import { describe, expect, it } from 'vitest';
import { AbsentState, createHypervisor, PageWaitError } from '../../kernel/index.ts';
import { Bus, RingHeader } from '../../services/bus/index.ts';
import { bootOnBus, echoChecksum, echoClient, LIST_GPA, RING_GPA, ringLibrary } from '../devices/channel-guest.ts';
import { hexWords } from '../devices/harness.ts';
import { until } from './until.ts';

const V2 = 0x0002_0000;
const PAGE = 4096;
const WAIT = 'waiting for the test to deliver a page';

describe('bus: a ring page still on another host', () => {
  it('the doorbell moves nothing while the receive ring\'s data page is away; the bus moves the packets once it is in', async () => {
    const hv = createHypervisor({ hostMemoryBytes: 32 << 20 });
    const log: string[] = [];
    const bus = new Bus({ log: (line) => log.push(line) });
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    const packets = 2000;
    const g = bootOnBus(hv, bus, 'g', echoClient({ versions: [V2], sendPages: 3, recvPages: 2, packets, payloadBytes: 120 }));
    const counters = () => bus.info('e').ends[0]!.counters;
    // The receive ring: its header after the 3 send-ring pages, its one data page after that.
    const recvHeaderGpa = RING_GPA + 3 * PAGE;
    const recvDataGpn = recvHeaderGpa / PAGE + 1;
    const header = (field: number) => new DataView(g.vm.memory.readPhysical(recvHeaderGpa + field, 4).buffer).getUint32(0, true);
    // Run in small steps until packets flow and the guest has drained its receive ring (so that
    // the guest itself does not read the page next, the host does when it answers).
    for (let step = 0; ; step++) {
      expect(step).toBeLessThan(100_000);
      const [result] = hv.run({ maxInstructions: 500 }, [g.vm]);
      expect(result!.reason.kind).not.toBe('halted');
      if (counters().packetsToGuest > 100 && header(RingHeader.READ_OFFSET) === header(RingHeader.WRITE_OFFSET)) break;
    }
    const saved = g.vm.memory.readPhysical(recvDataGpn * PAGE, PAGE).slice();
    let asked = 0;
    g.vm.memory.onAbsent(AbsentState.REMOTE, (_memory, gpn) => {
      expect(gpn).toBe(recvDataGpn);
      asked++;
      throw new PageWaitError(WAIT, `guest page ${gpn} is not here yet`);
    });
    g.vm.memory.releasePages([recvDataGpn], AbsentState.REMOTE);
    const answered = counters().packetsToGuest;
    // The guest fills its send ring and rings: nothing can move, nothing fails.
    const [waiting] = hv.run({ maxInstructions: 200_000 }, [g.vm]);
    expect(waiting!.reason.kind).not.toBe('halted');
    expect(asked).toBeGreaterThan(0);
    expect(counters().packetsToGuest).toBe(answered);
    expect(counters().doorbells).toBeGreaterThan(0);
    await new Promise((resolve) => setTimeout(resolve, 20)); // the bus's retries find the page still away
    expect(counters().packetsToGuest).toBe(answered);
    expect(bus.info('e')).toMatchObject({ failureCount: 0 });
    expect(bus.info('e').ends[0]!.state).toBe('open');
    // The page arrives; the bus moves the waiting packets without another doorbell.
    g.vm.memory.installPage(recvDataGpn, saved);
    await until('the bus to move the waiting packets', async () => (counters().packetsToGuest > answered ? true : undefined), 10_000);
    const [result] = await hv.runAsync({ maxInstructions: 200_000_000 });
    expect(result!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(hexWords(g.output())).toEqual([V2, echoChecksum(packets, 120)]);
    expect(counters()).toMatchObject({ packetsFromGuest: packets, packetsToGuest: packets });
    expect(bus.totals()).toMatchObject({ packets, failures: 0 });
    expect(log).toEqual([]);
  });

  it('a GRANT whose page list is away: the vCPU waits and the command runs once when the page is in', () => {
    const hv = createHypervisor({ hostMemoryBytes: 32 << 20 });
    const bus = new Bus();
    bus.addChannel({ name: 'e', service: 'echo', client: 'g', server: 'echo' });
    const FLAG = 0x50000;
    // Agrees 2.0, writes its page list, waits for the test's flag, then GRANTs: prints RESULT and HANDLE.
    const g = bootOnBus(hv, bus, 'g', `${ringLibrary(2, 2)}
_start: ch_find
        li      a0, 0x00020000
        call    propose
        bnez    a0, refused
        ch_list
        li      t0, ${FLAG}
2:      lw      t1, 0(t0)
        beqz    t1, 2b
        li      t0, LIST
        sw      t0, CH_GRANT_LIST(s0)
        li      t0, 1
        sw      t0, CH_COMMAND(s0)
        lw      a0, CH_RESULT(s0)
        mv      a1, s3
        call    put_hex
        lw      a0, CH_HANDLE(s0)
        mv      a1, s3
        call    put_hex
        exit    0
refused: exit   7
`);
    const [spinning] = hv.run({ maxInstructions: 100_000 }, [g.vm]);
    expect(spinning!.reason.kind).not.toBe('halted');
    const listGpn = LIST_GPA / PAGE;
    const saved = g.vm.memory.readPhysical(LIST_GPA, PAGE).slice();
    expect(new DataView(saved.buffer).getUint32(0, true)).toBe(4); // the guest wrote its list
    let asked = 0;
    g.vm.memory.onAbsent(AbsentState.REMOTE, () => {
      asked++;
      throw new PageWaitError(WAIT, 'the page list is not here yet');
    });
    g.vm.memory.releasePages([listGpn], AbsentState.REMOTE);
    g.vm.memory.writePhysical(FLAG, new Uint8Array([1, 0, 0, 0]));
    const [waiting] = hv.run({ maxInstructions: 100_000 }, [g.vm]);
    expect(waiting!.reason).toEqual({ kind: 'paused', reason: WAIT });
    expect(asked).toBe(1);
    expect(g.output()).toBe('');
    g.vm.memory.installPage(listGpn, saved);
    g.vm.resume();
    const [done] = hv.run({ maxInstructions: 100_000 }, [g.vm]);
    expect(done!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    // RESULT OK and the first handle: the GRANT ran once, after the page came.
    expect(hexWords(g.output())).toEqual([0, 1]);
    expect(bus.map(g.vm, 1)).toEqual([RING_GPA / PAGE, RING_GPA / PAGE + 1, RING_GPA / PAGE + 2, RING_GPA / PAGE + 3]);
  });
});
