/**
 * The partition bus and a ring page that is still on a post-copy migration source (docs/bus.md
 * "Checkpoint, restore, fork, migration"): the guest's doorbell moves nothing and fails nothing,
 * the access asks for the page, and the bus moves the waiting packets by itself once the page is
 * in; the exchange then completes, every packet answered once, in order. The page is made REMOTE
 * by the test (as a post-copy destination has it) and delivered when the test chooses.
 */
import { describe, expect, it } from 'vitest';
import { AbsentState, createHypervisor, PageWaitError } from '../../kernel/index.ts';
import { Bus, RingHeader } from '../../services/bus/index.ts';
import { bootOnBus, echoChecksum, echoClient, RING_GPA } from '../devices/channel-guest.ts';
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
});
