/**
 * The nanokernel's balloon driver (examples/nanokernel/balloon.s, docs/nanokernel.md "The
 * balloon") against the balloon device (devices/balloon.ts, docs/balloon.md), on real frames:
 * inflating to a target takes the guest's free pages and the host's frames behind them, deflating
 * gives them back, the page cache is shrunk when free pages run short, deflate-on-OOM saves a
 * process the kernel would otherwise kill, statistics arrive when the host asks, and free-page
 * reporting releases the frames of memory a process gave back. The kernel's own counters are
 * read from guest memory at its symbols; the driver's cost per tick is measured with a tracer.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, runWithResets, type GuestRun, type StandardDevices } from '../../devices/index.ts';
import { attachBalloon, type BalloonDevice, type BalloonOptions } from '../../devices/balloon.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { classes, KERNEL_IMAGE, symbol, toUserMode as toUserModeOf, word } from './nanokernel-guest.ts';

const image = KERNEL_IMAGE;
const root = mkdtempSync(join(tmpdir(), 'bv-nanoballoon-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MiB = 2 ** 20;
/** Entries of one node page of the driver's lists (mm.s FN_CAPACITY). */
const NODE_CAPACITY = 1021;
/** Free pages inflating leaves alone (balloon.s BALLOON_RESERVE). */
const RESERVE = 32;


interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  balloon: BalloonDevice;
  output: CaptureSink;
  run(maxInstructions: number): GuestRun;
}

function boot(bootArgs: string, balloon: BalloonOptions = {}, options: { memoryMiB?: number; disk?: string } = {}): Machine {
  const memoryBytes = (options.memoryMiB ?? 64) * MiB;
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const vm = hv.createVm({ memoryBytes, name: 'nanokernel' });
  vm.loadImage(image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, options.disk === undefined ? { output, bootArgs } : { output, bootArgs, disk: options.disk });
  const device = attachBalloon(vm, balloon);
  return { hv, vm, devices, balloon: device, output, run: (maxInstructions) => runWithResets(hv, vm, devices, { maxInstructions }) };
}

/** Runs in steps of `step` instructions until `done()` (failing after `limit` steps or when the VM stops). */
function runUntil(m: Machine, done: () => boolean, { step = 200_000, limit = 2_000 } = {}): void {
  for (let i = 0; i < limit; i++) {
    if (done()) return;
    const { reason } = m.run(step);
    if (reason.kind !== 'budget') {
      if (done()) return;
      throw new Error(`the VM stopped: ${JSON.stringify(reason)}\n${m.output.text()}`);
    }
  }
  throw new Error(`never happened\n${m.output.text()}`);
}

const toUserMode = (m: Machine): void => toUserModeOf(m.hv, m.vm);




const printed = (m: Machine, line: string) => () => m.output.text().split('\n').includes(line);
const hostFrames = (m: Machine): number => m.hv.poolStats().usedFrames;

function randomDisk(bytes: number): string {
  const path = join(mkdtempSync(join(root, 'd')), 'disk.img');
  writeFileSync(path, randomBytes(bytes));
  return path;
}

// ---------------------------------------------------------------------------------------------

describe('the nanokernel balloon driver', () => {
  it('inflates to the target: ACTUAL reaches it, the guest\'s free pages and the host\'s frames fall; deflating gives them back', () => {
    // A heap of 32 MiB, touched and given back: its frames wait in the free pool, present on the host.
    const m = boot('heap 32M 1 1 idle');
    runUntil(m, printed(m, 'idle: 16 pages touched, sleeping'));
    runUntil(m, printed(m, '[kernel] pid 1 (heap) exited with code 0'));
    m.run(500_000);
    expect(m.output.text()).toContain('[kernel] balloon: up to 1024 pages per tick\n');
    expect(m.output.text()).toMatch(/^nanokernel: 64 MiB RAM, 1 vCPU, 5 devices\n/);
    const before = classes(m.vm);
    const presentBefore = m.vm.memory.presentPages;
    const hostBefore = hostFrames(m);
    expect(presentBefore).toBeGreaterThan(8192);

    const target = 8192; // 32 MiB
    m.balloon.setTarget(target);
    runUntil(m, () => m.balloon.actual === target);
    toUserMode(m);
    const inflated = classes(m.vm);
    const nodes = Math.ceil(target / NODE_CAPACITY);
    expect(inflated.balloon).toBe(target);
    expect(inflated.kernel).toBe(before.kernel + nodes); // the lists of ballooned pages
    expect(inflated.free).toBe(before.free - target - nodes);
    expect(inflated.free + inflated.cache + inflated.anon + inflated.kernel + inflated.balloon).toBe(inflated.total);
    // The pages came from the recycled heap frames: the host released (nearly) all of them.
    expect(presentBefore - m.vm.memory.presentPages).toBeGreaterThan(0.95 * target);
    expect(hostBefore - hostFrames(m)).toBeGreaterThan(0.95 * target);
    expect(m.balloon.counters).toMatchObject({ inflated: target, deflated: 0, guestErrors: 0 });
    expect(m.balloon.counters.commands).toBe(nodes); // one INFLATE per node's worth of pages

    // Deflate to 1024: the pages return to the free pool, without frames until they are touched.
    const presentInflated = m.vm.memory.presentPages;
    m.balloon.setTarget(1024);
    runUntil(m, () => m.balloon.actual === 1024);
    toUserMode(m);
    const deflated = classes(m.vm);
    expect(deflated.balloon).toBe(1024);
    expect(deflated.free).toBe(before.free - 1024 - Math.ceil(1024 / NODE_CAPACITY)); // the oldest nodes are left
    expect(m.vm.memory.presentPages - presentInflated).toBeLessThan(16); // deflated pages read zero, untouched
    // And up again: the same figures as the first time (inflate/deflate/inflate agree).
    m.balloon.setTarget(target);
    runUntil(m, () => m.balloon.actual === target);
    toUserMode(m);
    expect(classes(m.vm)).toEqual(inflated);
    expect(m.balloon.lastError).toBeNull();
  });

  it('moves at most 1024 pages per tick while programs run, and more when the kernel is idle', () => {
    // Busy: a tick is a preemption; after k of them at most 1024 k pages are in the balloon.
    const busy = boot('sieve 20000000', { targetPages: 4096 });
    const ticks = (vm: Vm, name: string): number => word(vm, symbol(name));
    runUntil(busy, () => {
      expect(busy.balloon.actual).toBeLessThanOrEqual(1024 * ticks(busy.vm, 'stat_preemptions'));
      return busy.balloon.actual === 4096;
    }, { step: 5_000 });
    expect(ticks(busy.vm, 'stat_preemptions')).toBeGreaterThanOrEqual(4);
    // Idle: one wake-up of the idle kernel inflates 12 000 pages.
    const idle = boot('idle');
    runUntil(idle, printed(idle, 'idle: 16 pages touched, sleeping'));
    idle.run(500_000);
    // Where a budget ends depends on the kernel's code layout: go on to the idle kernel's wfi, so
    // that no balloon tick is under way when the target changes.
    const wait = symbol('kernel_idle_wait');
    for (let i = 0; i < 100_000 && idle.vm.vcpus[0]!.pc !== wait; i++) idle.run(1);
    expect(idle.vm.vcpus[0]!.pc).toBe(wait);
    idle.balloon.setTarget(12000);
    let ticksBelowTarget = 0;
    const tick = symbol('balloon_tick');
    idle.vm.vcpus[0]!.tracer = (_vcpu, pc) => {
      if (pc === tick && idle.balloon.actual < 12000) ticksBelowTarget++;
    };
    runUntil(idle, () => idle.balloon.actual === 12000, { step: 5_000 });
    expect(ticksBelowTarget).toBe(1);
  });

  it('shrinks the page cache when free pages run short, and takes no process memory', () => {
    const disk = randomDisk(8 * MiB);
    const m = boot('reader 1536 idle', {}, { memoryMiB: 16, disk });
    runUntil(m, printed(m, '[kernel] pid 1 (reader) exited with code 0'));
    runUntil(m, printed(m, 'idle: 16 pages touched, sleeping'));
    m.run(500_000);
    toUserMode(m);
    const before = classes(m.vm);
    expect(before.cache).toBe(1536);
    const target = 3000;
    expect(before.free - RESERVE).toBeLessThan(target); // free pages alone do not suffice
    m.balloon.setTarget(target);
    runUntil(m, () => m.balloon.actual === target);
    toUserMode(m);
    const after = classes(m.vm);
    const nodes = Math.ceil(target / NODE_CAPACITY);
    expect(after.free).toBe(RESERVE);
    expect(after.cache).toBe(before.cache - (target + nodes - (before.free - RESERVE)));
    expect(after.anon).toBe(before.anon);
    expect(after.balloon).toBe(target);
    // More than free + cache can give: it stops at what it can take, and nobody is killed.
    m.balloon.setTarget(4096); // all of RAM
    m.run(5_000_000);
    toUserMode(m);
    const most = classes(m.vm);
    expect(most).toMatchObject({ cache: 0 });
    expect(most.free).toBe(RESERVE);
    expect(m.balloon.actual).toBe(most.balloon);
    expect(m.balloon.actual).toBe(4096 - most.kernel - most.anon - RESERVE);
    expect(m.output.text()).not.toContain('killed');
    m.devices.block!.close();
  });

  it('deflate-on-OOM: with the flag the balloon gives pages back and the heap program lives; without it the kernel OOM-kills', () => {
    // 64 MiB, 15000 pages (58.6 MiB) in the balloon: a 16 MiB heap does not fit beside it.
    const args = 'stats=memory heap 16M 4 3';
    const yes = boot(args, { targetPages: 15000, deflateOnOom: true });
    let lowest = Infinity;
    let reached = false;
    for (let i = 0; i < 2000; i++) {
      const run = yes.run(200_000);
      if (yes.balloon.actual === 15000) reached = true;
      if (reached) lowest = Math.min(lowest, yes.balloon.actual);
      if (run.reason.kind !== 'budget') {
        expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
        break;
      }
    }
    const text = yes.output.text();
    expect(text).toContain('heap: 16777216 bytes, 4 steps, 3 rounds, 12288 pages touched\n');
    expect(text).not.toContain('out of memory');
    expect(text).toMatch(/ 0 oom kills\n/);
    expect(reached).toBe(true);
    expect(lowest).toBeLessThan(15000 - 2000); // ACTUAL dropped under the guest's pressure
    expect(word(yes.vm, symbol('stat_balloon_oom'))).toBeGreaterThan(0);
    expect(yes.balloon.lastError).toBeNull();

    const no = boot(args, { targetPages: 15000, deflateOnOom: false });
    const run = no.run(400_000_000);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 2 });
    expect(no.output.text()).toMatch(/\[kernel\] killed pid 1 \(heap\): out of memory at 0x[0-9a-f]{8}, pc 0x[0-9a-f]{8}\n/);
    expect(no.output.text()).toMatch(/ 1 oom kills\n/);
    expect(no.balloon.counters.deflated).toBe(0);
    expect(no.balloon.actual).toBeGreaterThan(14000); // (less what the heap held before the balloon filled)
  });

  it('sends statistics when the host asks for them, with figures that add up and follow the target', () => {
    const m = boot('idle', { statsPollingIntervalS: 1 });
    runUntil(m, printed(m, 'idle: 16 pages touched, sleeping'));
    m.run(500_000);
    expect(m.balloon.lastStats).toBeNull(); // not asked yet
    m.balloon.requestStats();
    runUntil(m, () => m.balloon.lastStats !== null);
    const first = m.balloon.lastStats!.values;
    const mine = classes(m.vm);
    expect(first).toEqual({
      swapIn: 0, swapOut: 0, majorFaults: 0, minorFaults: word(m.vm, symbol('stat_page_faults')), freePages: mine.free, totalPages: 16384,
      availablePages: mine.free + mine.cache, cachePages: 0, oomKills: 0, anonPages: mine.anon, kernelPages: mine.kernel, balloonPages: 0,
    });
    expect(first.freePages! + first.cachePages! + first.anonPages! + first.kernelPages! + first.balloonPages!).toBe(first.totalPages);
    expect(first.minorFaults).toBeGreaterThanOrEqual(16);
    // Nothing new unless asked: STATS_SEQ did not move.
    m.run(2_000_000);
    expect(m.balloon.counters.statsReceived).toBe(1);
    // After a target change, fresh figures show it.
    m.balloon.setTarget(4096);
    runUntil(m, () => m.balloon.actual === 4096);
    m.balloon.requestStats();
    runUntil(m, () => m.balloon.counters.statsReceived === 2);
    const second = m.balloon.lastStats!.values;
    expect(second.balloonPages).toBe(4096);
    expect(second.freePages).toBe(first.freePages! - 4096 - Math.ceil(4096 / NODE_CAPACITY));
    expect(second.availablePages).toBe(second.freePages);
    expect(second.freePages! + second.cachePages! + second.anonPages! + second.kernelPages! + second.balloonPages!).toBe(16384);
    // Without the STATS feature the driver sends nothing, even when STATS_SEQ moves.
    m.balloon.setStatsPollingInterval(0);
    m.balloon.requestStats();
    m.run(2_000_000);
    expect(m.balloon.counters.statsReceived).toBe(2);
  });

  it('reports the pages a process gave back, so the host releases their frames; reused pages work', () => {
    const run = (freePageReporting: boolean): Machine => {
      const m = boot('heap 16M 4 3 idle', { freePageReporting });
      runUntil(m, printed(m, '[kernel] pid 1 (heap) exited with code 0'));
      runUntil(m, printed(m, 'idle: 16 pages touched, sleeping'));
      expect(m.output.text()).toContain('heap: 16777216 bytes, 4 steps, 3 rounds, 12288 pages touched\n');
      return m;
    };
    const reporting = run(true);
    const keeping = run(false);
    // Without reporting the heap's frames stay with the VM; with it they went back to the host.
    expect(keeping.vm.memory.presentPages).toBeGreaterThan(4096);
    expect(reporting.vm.memory.presentPages).toBeLessThan(keeping.vm.memory.presentPages - 4000);
    expect(reporting.vm.memory.presentPages).toBeLessThan(200);
    // Each of the three rounds gave its 4096 pages back (reported on every shrink), and the next
    // round got them again: pages reported are reused without trouble.
    expect(reporting.balloon.counters.reportedFree).toBeGreaterThan(3 * 4000);
    expect(reporting.balloon.counters.guestErrors).toBe(0);
    expect(keeping.balloon.counters.reportedFree).toBe(0);
    expect(classes(reporting.vm).balloon).toBe(0);
  });

  it('costs a few instructions per tick when nothing changes, and a few per page when inflating free frames', () => {
    const m = boot('sieve 100000000', { targetPages: 2048 });
    runUntil(m, () => m.balloon.actual === 2048, { step: 50_000 });
    const tick = symbol('balloon_tick');
    const end = symbol('balloon_take_page'); // the next routine
    let calls = 0;
    let inside = 0;
    m.vm.vcpus[0]!.tracer = (_vcpu, pc) => {
      if (pc === tick) calls++;
      if (pc >= tick && pc < end) inside++;
    };
    m.run(3_000_000);
    m.vm.vcpus[0]!.tracer = null;
    expect(calls).toBeGreaterThanOrEqual(25); // one per time slice of 100 000 instructions
    expect(inside / calls).toBeLessThanOrEqual(16); // two MMIO reads and two compares

    // Inflating: instructions per page, measured on an idle kernel (no program runs meanwhile).
    const idle = boot('idle');
    runUntil(idle, printed(idle, 'idle: 16 pages touched, sleeping'));
    idle.run(200_000);
    const start = idle.vm.vcpus[0]!.instret;
    idle.balloon.setTarget(12000);
    runUntil(idle, () => idle.balloon.actual === 12000, { step: 1_000 });
    const perPage = (idle.vm.vcpus[0]!.instret - start) / 12000;
    expect(perPage).toBeLessThan(8); // many never-used frames at once: 4 a page (38 page by page)
  });
});
