// The memory scheduler (services/memory/reclaim.ts, docs/overcommit.md): the reclaim ladder with
// hysteresis on a synthetic pool, then real overcommit with nanokernel guests — a host pool much
// smaller than the VMs' memory, the balloon taken from the VM whose usage classes say it is cheap,
// hypervisor swap only where the balloons cannot cover the need, a VM without a balloon swapped
// and never ballooned, VMs that allocate blocked at low and unblocked when memory frees, balloons
// deflated after a quiet spell, and each VM's MEMINFO condition following the ladder.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachBalloon, attachStandardDevices, CaptureSink, type BalloonDevice } from '../../devices/index.ts';
import { attachMeminfo, HostPressure, type MeminfoDevice } from '../../devices/meminfo.ts';
import { createHypervisor, HOST_MEMORY_WAIT_REASON, StopCode, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { processRss } from '../../native/index.ts';
import {
  LADDER_STATES, MEMORY_BLOCK_REASON, MemoryScheduler, MemorySchedulerError, PageSharer, SwapFile, type LadderState, type MemoryDecision,
} from '../../services/memory/index.ts';

const REPO = join(import.meta.dirname, '..', '..');
const { image } = assembleFile(join(REPO, 'examples/nanokernel/kernel.s'));
const dir = mkdtempSync(join(tmpdir(), 'bv-reclaim-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 2 ** 20;
const PAGE = 4096;

interface Guest {
  vm: Vm;
  balloon: BalloonDevice | null;
  meminfo: MeminfoDevice;
  output: CaptureSink;
}

/** A nanokernel VM (64 MiB unless said) with the standard devices, optionally a balloon with statistics, and MEMINFO. */
function boot(hv: Hypervisor, name: string, bootArgs: string, options: { balloon?: boolean; memoryMiB?: number } = {}): Guest {
  const vm = hv.createVm({ memoryBytes: (options.memoryMiB ?? 64) * MiB, name });
  vm.loadImage(image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs, ...(options.balloon ? { balloon: { statsPollingIntervalS: 1 } } : {}) });
  const meminfo = attachMeminfo(vm);
  return { vm, balloon: devices.balloon, meminfo, output };
}

/** Runs every VM of hv for `step` instructions, then ticks; fails if a VM stopped for any reason but a pause. */
function round(hv: Hypervisor, scheduler: MemoryScheduler, step: number, vms: Vm[] = hv.vms): void {
  for (const result of hv.run({ maxInstructions: step }, vms)) {
    const kind = result.reason.kind;
    if (kind !== 'budget' && kind !== 'idle' && kind !== 'paused') throw new Error(`${result.vm.name} stopped: ${JSON.stringify(result.reason)}`);
  }
  scheduler.tick();
}

function runUntil(hv: Hypervisor, scheduler: MemoryScheduler, done: () => boolean, step: number, limit: number): number {
  for (let i = 0; i < limit; i++) {
    if (done()) return i;
    round(hv, scheduler, step);
  }
  throw new Error('never happened');
}

/**
 * A VM whose guest never runs: pages installed and released through GuestMemory move the pool's
 * free frames to exactly where a test wants them.
 */
class Filler {
  private held = 0;
  constructor(readonly hv: Hypervisor, readonly vm: Vm) {
    vm.pause('a filler: its guest never runs');
  }

  /** Installs or releases pages until the pool has `free` free frames. */
  setFree(free: number): void {
    const delta = this.hv.poolStats().freeFrames - free;
    if (delta > 0) for (let i = 0; i < delta; i++) this.vm.memory.installPage(this.held++, new Uint8Array(PAGE).fill(1));
    else for (let i = 0; i < -delta; i++) this.vm.memory.releasePage(--this.held);
    expect(this.hv.poolStats().freeFrames).toBe(free);
  }
}

const byAction = (decisions: readonly MemoryDecision[], action: string, vm?: string): MemoryDecision[] =>
  decisions.filter((d) => d.action === action && (vm === undefined || d.vm === vm));

// ---------------------------------------------------------------------------------------------

describe('the reclaim ladder', () => {
  it('follows the free frames with hysteresis: down at once (levels skipped), up one level per tick at the threshold above', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * MiB }); // 1024 frames
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 8 * MiB, name: 'filler' }));
    const scheduler = new MemoryScheduler(hv);
    // 6 / 4 / 2 / 1 % of 1024 frames, rounded up.
    expect(scheduler.thresholdFrames()).toEqual({ high: 62, soft: 41, hard: 21, low: 11 });
    const steps: [number, LadderState][] = [
      [1024, 'high'], [70, 'high'],
      [50, 'high'], // under 6 % but not under 4 %: stays high
      [40, 'soft'], // under 4 %
      [45, 'soft'], [61, 'soft'], // not back at 6 % yet
      [62, 'high'], // at 6 %: high
      [30, 'soft'], [20, 'hard'],
      [40, 'hard'], // 3.9 %: not back at 4 %
      [41, 'soft'],
      [10, 'low'], // from soft straight to low
      [15, 'low'], [20, 'low'],
      [21, 'hard'], // at 2 %: one level up
      [62, 'soft'], [62, 'high'], // one level per tick even with plenty free
      [5, 'low'], // from high straight to low
      [1000, 'hard'], [1000, 'soft'], [1000, 'high'],
    ];
    const states: LadderState[] = [];
    for (const [free] of steps) {
      filler.setFree(free);
      scheduler.tick();
      states.push(scheduler.state);
    }
    expect(states).toEqual(steps.map(([, state]) => state));
    // 11 free frames is at the low threshold, not under it: low is not entered, hard is (11 < 21).
    filler.setFree(11);
    scheduler.tick();
    expect(scheduler.state).toBe('hard');
    filler.setFree(10);
    scheduler.tick();
    expect(scheduler.state).toBe('low');

    const stats = scheduler.stats();
    const transitions = byAction(scheduler.decisions(), 'state');
    expect(transitions.map((d) => d.reason.split(':')[0])).toEqual([
      'high → soft', 'soft → high', 'high → soft', 'soft → hard', 'hard → soft', 'soft → low', 'low → hard', 'hard → soft', 'soft → high',
      'high → low', 'low → hard', 'hard → soft', 'soft → high', 'high → hard', 'hard → low',
    ]);
    expect(transitions[3]!.reason).toBe('soft → hard: 20 free frames (1.95%) < hard threshold 21');
    expect(transitions[6]!.reason).toBe('low → hard: 21 free frames (2.05%) ≥ hard threshold 21');
    expect(stats.counters.state_changes).toBe(transitions.length);
    expect(stats.counters.ticks).toBe(steps.length + 2);
    expect(Object.values(stats.ticks_in_state).reduce((a, b) => a + b, 0)).toBe(stats.counters.ticks);
    expect(stats.state).toBe('low');
    expect(stats.pool).toEqual({ total_frames: 1024, free_frames: 10, free_pct: 0.98 });
    expect(stats.thresholds).toEqual({ high_pct: 6, soft_pct: 4, hard_pct: 2, low_pct: 1, high_frames: 62, soft_frames: 41, hard_frames: 21, low_frames: 11 });
    expect(JSON.parse(JSON.stringify(stats))).toEqual(stats); // JSON-friendly
  });

  it('takes other thresholds, and refuses thresholds out of order or out of range', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * MiB });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 8 * MiB, name: 'filler' }));
    const scheduler = new MemoryScheduler(hv, { thresholds: { high: 20, soft: 10, hard: 5, low: 2 } });
    expect(scheduler.thresholdFrames()).toEqual({ high: 205, soft: 103, hard: 52, low: 21 });
    const seen: LadderState[] = [];
    for (const free of [300, 150, 102, 150, 204, 205, 51, 100, 103, 20, 52]) {
      filler.setFree(free);
      scheduler.tick();
      seen.push(scheduler.state);
    }
    expect(seen).toEqual(['high', 'high', 'soft', 'soft', 'soft', 'high', 'hard', 'hard', 'soft', 'low', 'hard']);
    // Only the soft threshold changed: the others keep their defaults.
    expect(new MemoryScheduler(hv, { thresholds: { soft: 5 } }).thresholds).toEqual({ high: 6, soft: 5, hard: 2, low: 1 });
    expect(() => new MemoryScheduler(hv, { thresholds: { soft: 7 } })).toThrow(MemorySchedulerError);
    expect(() => new MemoryScheduler(hv, { thresholds: { low: 0 } })).toThrow(/threshold low must be a percentage/);
    expect(() => new MemoryScheduler(hv, { thresholds: { high: 101 } })).toThrow(MemorySchedulerError);
    expect(() => new MemoryScheduler(hv, { thresholds: { hard: 1 } })).toThrow(/low < hard < soft < high/);
    expect(() => new MemoryScheduler(hv, { maxBalloonFraction: 0 })).toThrow(MemorySchedulerError);
    expect(() => new MemoryScheduler(hv, { deflateHoldTicks: 0 })).toThrow(MemorySchedulerError);
  });

  it('runs the sharer on every tick, whatever the state', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * MiB });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 8 * MiB, name: 'filler' }));
    const scans: number[] = [];
    const scheduler = new MemoryScheduler(hv, { sharer: { scan: (pages) => scans.push(pages) }, sharingPagesPerTick: 250 });
    for (const free of [1000, 30, 5, 1000]) {
      filler.setFree(free);
      scheduler.tick();
    }
    expect(scans).toEqual([250, 250, 250, 250]);
    expect(scheduler.stats().counters.sharing_scans).toBe(4);
  });

  it('drives the PageSharer: identical pages of two VMs merge and the pool gets frames back', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * MiB });
    for (const name of ['one', 'two']) {
      const vm = hv.createVm({ memoryBytes: 4 * MiB, name });
      for (let gpn = 0; gpn < 200; gpn++) vm.memory.installPage(gpn, new Uint8Array(PAGE).fill(gpn + 1));
    }
    const sharer = new PageSharer(hv);
    const scheduler = new MemoryScheduler(hv, { sharer, sharingPagesPerTick: 200 });
    const free = hv.poolStats().freeFrames;
    for (let i = 0; i < 6; i++) scheduler.tick();
    expect(sharer.stats().scans).toBe(6);
    expect(sharer.stats().merges).toBe(200);
    expect(hv.poolStats().freeFrames).toBe(free + 200);
  });
});

describe('MEMINFO follows the ladder', () => {
  it('pressure is the state; the limit is RAM less the balloon target, at hard and low at most the frames held', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * MiB });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 8 * MiB, name: 'filler' }));
    const vm = hv.createVm({ memoryBytes: 8 * MiB, name: 'guest' }); // 2048 pages; its guest never runs
    const balloon = attachBalloon(vm);
    const meminfo = attachMeminfo(vm);
    for (let gpn = 0; gpn < 100; gpn++) vm.memory.installPage(gpn, new Uint8Array(PAGE).fill(2));
    const scheduler = new MemoryScheduler(hv);
    scheduler.add(vm, { balloon, meminfo });
    const seen: { state: LadderState; pressure: number; limit: number; seq: number }[] = [];
    const step = (free: number): void => {
      filler.setFree(free);
      scheduler.tick();
      seen.push({ state: scheduler.state, pressure: meminfo.pressure, limit: meminfo.limitPages, seq: meminfo.sequence });
    };
    step(900);
    balloon.setTarget(300); // the host's own target (the API): the scheduler takes it as given
    step(900);
    step(30);
    step(15);
    step(5);
    step(5); // nothing changed: SEQ stays
    step(25);
    step(50);
    step(100);
    expect(seen).toEqual([
      { state: 'high', pressure: HostPressure.HIGH, limit: 2048, seq: 0 }, // nothing changed yet
      { state: 'high', pressure: HostPressure.HIGH, limit: 1748, seq: 1 },
      { state: 'soft', pressure: HostPressure.SOFT, limit: 1748, seq: 2 },
      { state: 'hard', pressure: HostPressure.HARD, limit: 100, seq: 3 }, // squeezed to the 100 frames it holds
      { state: 'low', pressure: HostPressure.LOW, limit: 100, seq: 4 },
      { state: 'low', pressure: HostPressure.LOW, limit: 100, seq: 4 },
      { state: 'hard', pressure: HostPressure.HARD, limit: 100, seq: 5 },
      { state: 'soft', pressure: HostPressure.SOFT, limit: 1748, seq: 6 },
      { state: 'high', pressure: HostPressure.HIGH, limit: 1748, seq: 7 },
    ]);
    expect(LADDER_STATES.map((state) => state)).toEqual(['high', 'soft', 'hard', 'low']);
    // Without statistics the balloon is never asked for more: the target stays the host's, and its
    // 300 pages not yet in the balloon count as in flight (the guest never runs to take them).
    expect(balloon.target).toBe(300);
    expect(byAction(scheduler.decisions(), 'balloon')).toEqual([]);
    expect(scheduler.stats().vms[0]).toMatchObject({ name: 'guest', balloon: true, target_pages: 300, actual_pages: 0, scheduler_pages: 0, frames_held: 100, blocked: false });
  });
});

describe('real overcommit with nanokernel guests', () => {
  it('balloons the VM with cheap pages first, swaps only what the balloons cannot cover, swaps (never balloons) a VM without one; nothing runs out of host memory', () => {
    // 48 MiB of host pool for four 64 MiB VMs (256 MiB promised).
    const poolBytes = 48 * MiB;
    const hv = createHypervisor({ hostMemoryBytes: poolBytes });
    const swap = SwapFile.createIn(dir);
    const scheduler = new MemoryScheduler(hv, { swap });
    const rssBefore = processRss();
    let peakRss = 0;
    let peakResident = 0;
    /** Process RSS growth and the pool's resident bytes when the pool first ran short (the state left high). */
    let rssAtPressure: number | null = null;
    let residentAtPressure = 0;
    /** A's balloon target when the first swap decision was taken. */
    let aTargetAtFirstSwap: number | null = null;
    const step = 50_000;
    const guests: Guest[] = [];
    const start = (name: string, args: string, balloon: boolean, shares?: number): Guest => {
      const guest = boot(hv, name, args, { balloon });
      scheduler.add(guest.vm, { balloon: guest.balloon, meminfo: guest.meminfo }, { shares });
      guests.push(guest);
      return guest;
    };
    const rounds = (count: number): void => {
      for (let i = 0; i < count; i++) {
        round(hv, scheduler, step);
        if (aTargetAtFirstSwap === null && scheduler.stats().counters.swap_decisions > 0) aTargetAtFirstSwap = guests[0]!.balloon!.target;
        if (i % 10 === 0) {
          const rss = processRss() - rssBefore;
          peakRss = Math.max(peakRss, rss);
          peakResident = Math.max(peakResident, hv.residentPoolBytes());
          if (rssAtPressure === null && scheduler.state !== 'high') {
            rssAtPressure = rss;
            residentAtPressure = hv.residentPoolBytes();
          }
        }
      }
    };

    // A: a heap of 32 MiB, touched and given back, then idle: 8192 free pages that hold frames.
    const a = start('a', 'heap 32M 1 1 idle', true);
    runUntil(hv, scheduler, () => a.output.text().includes('[kernel] pid 1 (heap) exited with code 0'), 200_000, 200);
    rounds(5);
    expect(scheduler.state).toBe('high');
    const aFrames = a.vm.memory.presentPages;
    expect(aFrames).toBeGreaterThan(8192);

    // B (a balloon, its memory all in use) and C (no balloon) grow working sets of 20 and 12 MiB.
    const b = start('b', 'walker 20M hot:1M:90 0', true);
    // C holds the fewest shares (a sixth of the default 640): it is the first the swap phase takes from.
    const c = start('c', 'walker 12M hot:1M:90 0', false, 100);
    rounds(300);
    const phase2 = [...scheduler.decisions()];
    const balloons = byAction(phase2, 'balloon');
    expect(balloons.length).toBeGreaterThan(0);
    expect(balloons[0]!.vm).toBe('a');
    expect(balloons[0]!.reason).toMatch(/^balloon \+\d+ pages: \d+ cheap pages \(\d+ free with a host frame of \d+ free, 0 page cache\); ρ \S+ \(640 shares, \d+ frames, active unknown, τ 0\.75\); target 0 → \d+/);
    const ballooned = (vm: string): number => scheduler.stats().vms.find((v) => v.name === vm)!.pages_ballooned;
    expect(ballooned('a')).toBeGreaterThan(0.95 * scheduler.stats().counters.balloon_pages_requested);
    expect(ballooned('c')).toBe(0);
    expect(byAction(phase2, 'swap')).toEqual([]); // the balloon covered it all
    expect(a.balloon!.actual).toBeGreaterThan(2000);
    expect(a.vm.memory.presentPages).toBeLessThan(aFrames - 2000); // its frames really went back
    expect(b.vm.memory.presentPages + c.vm.memory.presentPages).toBeGreaterThan(hv.poolStats().totalFrames - aFrames); // they could not have fit without it

    // D grows 16 MiB more: A's cheap pages run out, and the rest must be swapped.
    const d = start('d', 'walker 16M hot:1M:90 0', true);
    rounds(500);
    const decisions = scheduler.decisions();
    const stats = scheduler.stats();
    const swaps = byAction(decisions, 'swap');
    expect(swaps.length).toBeGreaterThan(0);
    // Swap started only once A's balloon had been asked for (nearly) all the frames it could give.
    expect(aTargetAtFirstSwap).not.toBeNull();
    expect(aTargetAtFirstSwap!).toBeGreaterThan(aFrames - 300);
    for (const decision of swaps) {
      if (decision.vm === 'c') expect(decision.reason).toMatch(/^swap \d+ pages: no balloon; ρ \S+ \(100 shares, \d+ frames, active unknown, τ 0\.75\) \(need \d+, balloons cover \d+\)/);
      else expect(decision.reason).toMatch(/^swap \d+ pages: balloon would get only \d+ cheap pages/);
    }
    expect(byAction(decisions, 'swap', 'c').length).toBeGreaterThan(0);
    expect(byAction(decisions, 'balloon', 'c')).toEqual([]);
    expect(ballooned('c')).toBe(0);
    expect(stats.counters.pages_swapped).toBeGreaterThan(0);
    expect(swap.stats().pagesOut + swap.stats().zeroPagesDropped).toBe(stats.counters.pages_swapped);
    const vmStats = Object.fromEntries(stats.vms.map((v) => [v.name, v]));
    expect(vmStats['c']).toMatchObject({ balloon: false, target_pages: 0, scheduler_pages: 0, cheap_pages: null });
    expect(vmStats['c']!.pages_swapped).toBeGreaterThan(0);
    expect(vmStats['a']!.scheduler_pages).toBe(a.balloon!.target);

    // Nothing ran out of host memory: every VM still runs, and the guests' programs never failed.
    for (const guest of guests) {
      expect(guest.vm.stopCode).toBe(StopCode.RUNNING);
      expect(guest.output.text()).not.toMatch(/out of memory|killed|panic/);
      expect(guest.meminfo.pressure).toBe(LADDER_STATES.indexOf(scheduler.state));
    }
    expect(hv.poolStats().usedFrames).toBeLessThanOrEqual(hv.poolStats().totalFrames);
    const promised = guests.reduce((sum, guest) => sum + guest.vm.memoryBytes, 0);
    const touched = guests.reduce((sum, guest) => sum + guest.vm.memory.presentPages, 0) * PAGE + swap.stats().slotsInUse * PAGE + a.balloon!.actual * PAGE;
    expect(promised).toBeGreaterThan(5 * poolBytes);
    expect(touched).toBeGreaterThan(poolBytes); // what the guests hold or held exceeds the pool
    // Guest RAM's host memory (the pool's resident pages) stayed within the pool and follows the
    // frames in use (released frames left the RSS). The process RSS grew by the pool's resident
    // pages plus what is not guest memory (vCPU TLBs, decoded code, per-page arrays, the JS heap);
    // once the pool had run short it grew by no more than the pool's room then, and that, while
    // the guests went on allocating.
    const residentEnd = hv.residentPoolBytes();
    const rssEnd = processRss() - rssBefore;
    expect(peakResident).toBeLessThanOrEqual(poolBytes);
    expect(residentEnd).toBeLessThanOrEqual(hv.poolStats().usedFrames * PAGE + 4 * MiB);
    // What is not guest memory: a few MiB of TLBs and per-page arrays, plus whatever V8's heap (young
    // generation, compiled code) grows to on a loaded machine: 26 MiB was seen, so the bound is 40.
    expect(peakRss - peakResident).toBeLessThan(40 * MiB);
    expect(rssAtPressure).not.toBeNull();
    // (D's vCPU TLB, decoded code and per-page arrays came after the first pressure: 12 MiB for what is not guest memory.)
    expect(rssEnd - rssAtPressure!).toBeLessThan(poolBytes - residentAtPressure + 12 * MiB);
    console.log(`overcommit: pool ${poolBytes / MiB} MiB, VMs ${promised / MiB} MiB; peak pool resident ${(peakResident / MiB).toFixed(1)} MiB, ` +
      `RSS growth: peak ${(peakRss / MiB).toFixed(1)} MiB, at first pressure ${(rssAtPressure! / MiB).toFixed(1)} MiB (pool resident ${(residentAtPressure / MiB).toFixed(1)} MiB), at the end ${(rssEnd / MiB).toFixed(1)} MiB; ` +
      `swap-ins ${swap.stats().pagesIn}; balloon ${stats.counters.balloon_pages_requested} pages requested ` +
      `(${ballooned('a')} of them from a; its target ${aTargetAtFirstSwap} at the first swap), ${stats.counters.pages_swapped} pages swapped, ticks in state ${JSON.stringify(stats.ticks_in_state)}`);
    console.log([balloons[0]!, ...['a', 'b', 'c', 'd'].map((vm) => byAction(decisions, 'swap', vm)[0]).filter((x) => x !== undefined)]
      .map((x) => `  tick ${x.tick} ${x.state} ${x.vm}: ${x.reason}`).join('\n'));
    expect(d.vm.memory.presentPages).toBeGreaterThan(2000); // D got its working set in
    swap.close();
  });
});

describe('at low, VMs that allocate are blocked until memory frees', () => {
  /** A 16 MiB pool (4096 frames: low under 41, back to hard at 82): a growing walker, a sleeping VM and a filler. */
  function lowMachine() {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const grower = boot(hv, 'grower', 'walker 12M seq 0', { memoryMiB: 32 });
    const sleeper = boot(hv, 'sleeper', 'idle', { memoryMiB: 32 });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 32 * MiB, name: 'filler' }));
    return { hv, grower, sleeper, filler };
  }

  it('pauses the VM whose frames grew (not the idle one) and resumes it once the state rises above low', () => {
    const { hv, grower, sleeper, filler } = lowMachine();
    const scheduler = new MemoryScheduler(hv);
    scheduler.add(grower.vm, { meminfo: grower.meminfo });
    scheduler.add(sleeper.vm, { meminfo: sleeper.meminfo });
    const step = 20_000;
    const guests = [grower.vm, sleeper.vm];
    runUntil(hv, scheduler, () => sleeper.output.text().includes('idle: 16 pages touched, sleeping') && grower.vm.memory.presentPages > 300, step, 500);
    filler.setFree(70); // under hard (82), above low (41)
    scheduler.tick();
    expect(scheduler.state).toBe('hard');
    const ticks = runUntil(hv, scheduler, () => scheduler.state === 'low', step, 100);
    expect(ticks).toBeGreaterThan(0);
    // Blocked at the tick that found low: the grower's frames had grown; the sleeper's had not.
    expect(grower.vm.stopReason).toEqual({ kind: 'paused', reason: MEMORY_BLOCK_REASON });
    expect(sleeper.vm.stopCode).toBe(StopCode.RUNNING);
    const blocks = byAction(scheduler.decisions(), 'block');
    expect(blocks).toHaveLength(1);
    expect(blocks[0]!).toMatchObject({ vm: 'grower', state: 'low' });
    expect(blocks[0]!.reason).toMatch(/^blocked: allocated \d+ frames since the last tick while free memory is low \(\d+ frames, 0\.\d+%\)$/);
    expect(scheduler.stats().blocked_vms).toEqual(['grower']);
    expect(grower.meminfo.pressure).toBe(HostPressure.LOW);

    // Blocked, it allocates nothing more; the state stays low; nobody is blocked twice.
    const held = grower.vm.memory.presentPages;
    const instructions = grower.vm.instructionsRetired;
    for (let i = 0; i < 5; i++) round(hv, scheduler, step, guests);
    expect(scheduler.state).toBe('low');
    expect(grower.vm.memory.presentPages).toBe(held);
    expect(grower.vm.instructionsRetired).toBe(instructions);
    expect(byAction(scheduler.decisions(), 'block')).toHaveLength(1);

    // Memory frees (the filler gives frames back): low → hard at 2 %, and the grower runs again.
    filler.setFree(200);
    scheduler.tick();
    expect(scheduler.state).toBe('hard');
    expect(grower.vm.stopCode).toBe(StopCode.RUNNING);
    expect(byAction(scheduler.decisions(), 'unblock')).toEqual([expect.objectContaining({ vm: 'grower', state: 'hard', reason: 'unblocked: the state rose to hard' })]);
    expect(scheduler.stats().blocked_vms).toEqual([]);
    round(hv, scheduler, step, guests);
    expect(grower.vm.instructionsRetired).toBeGreaterThan(instructions);
    expect(grower.vm.memory.presentPages).toBeGreaterThan(held);
    expect(grower.output.text()).not.toMatch(/out of memory|killed/);
    expect(scheduler.stats().counters).toMatchObject({ blocks: 1, unblocks: 1 });
  });

  it('leaves the blocking to the host when it passes block and unblock', () => {
    const { hv, grower, sleeper, filler } = lowMachine();
    const events: string[] = [];
    const held = new Set<Vm>();
    const scheduler = new MemoryScheduler(hv, {
      block: (vm, reason) => {
        events.push(`block ${vm.name}: ${reason}`);
        held.add(vm);
      },
      unblock: (vm) => {
        events.push(`unblock ${vm.name}`);
        held.delete(vm);
      },
    });
    scheduler.add(grower.vm);
    scheduler.add(sleeper.vm);
    const step = 20_000;
    /** The host runs only the VMs it has not held back. */
    const running = (): Vm[] => [grower.vm, sleeper.vm].filter((vm) => !held.has(vm));
    for (let i = 0; i < 500 && !(sleeper.output.text().includes('sleeping') && grower.vm.memory.presentPages > 300); i++) round(hv, scheduler, step, running());
    filler.setFree(70);
    scheduler.tick();
    for (let i = 0; i < 100 && scheduler.state !== 'low'; i++) round(hv, scheduler, step, running());
    expect(scheduler.state).toBe('low');
    expect(events).toEqual([`block grower: ${MEMORY_BLOCK_REASON}`]);
    expect(grower.vm.stopCode).toBe(StopCode.RUNNING); // the scheduler did not pause it itself
    for (let i = 0; i < 3; i++) round(hv, scheduler, step, running());
    filler.setFree(300);
    scheduler.tick();
    expect(events).toEqual([`block grower: ${MEMORY_BLOCK_REASON}`, 'unblock grower']);
    expect(running()).toEqual([grower.vm, sleeper.vm]);
  });
});

describe('shares and the idle memory tax pick the victim', () => {
  /** Two 32 MiB walkers holding ~2,100 frames each on a 32 MiB pool (hard below 164 free frames); x idle, y active by the provider. */
  function twoWalkers(options: { taxRate?: number; shares?: [number, number] } = {}) {
    const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
    const x = boot(hv, 'x', 'walker 8M seq 0', { memoryMiB: 32 });
    const y = boot(hv, 'y', 'walker 8M seq 0', { memoryMiB: 32 });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 32 * MiB, name: 'filler' }));
    const swap = SwapFile.createIn(dir);
    const active = new Map<Vm, number>([[x.vm, 0.05], [y.vm, 0.95]]);
    const scheduler = new MemoryScheduler(hv, { swap, taxRate: options.taxRate, activeFraction: (vm) => active.get(vm) ?? null });
    scheduler.add(x.vm, {}, { shares: options.shares?.[0] });
    scheduler.add(y.vm, {}, { shares: options.shares?.[1] });
    runUntil(hv, scheduler, () => x.vm.memory.presentPages > 2000 && y.vm.memory.presentPages > 2000, 50_000, 2000);
    return { hv, x, y, filler, swap, scheduler };
  }

  /** Puts the pool at hard and ticks without running the guests (their pages go cold). */
  function squeeze(machine: ReturnType<typeof twoWalkers>): Record<string, number> {
    machine.filler.setFree(120);
    for (let i = 0; i < 6; i++) machine.scheduler.tick();
    const swapped = Object.fromEntries(machine.scheduler.stats().vms.map((v) => [v.name, v.pages_swapped]));
    machine.swap.close();
    return swapped;
  }

  it('with the default tax (τ 0.75) the idle VM gives everything; without it (τ 0) both give alike', () => {
    const taxed = twoWalkers();
    expect(taxed.scheduler.taxRate).toBe(0.75);
    const stats = taxed.scheduler.stats().vms;
    const x = stats.find((v) => v.name === 'x')!;
    const y = stats.find((v) => v.name === 'y')!;
    expect(x.active_fraction).toBe(0.05);
    expect(x.shares).toBe(320);
    // ρ by hand: 320 / (P (0.05 + 4 · 0.95)) for x, 320 / (P (0.95 + 4 · 0.05)) for y.
    expect(x.shares_per_page).toBeCloseTo(320 / (x.frames_held * 3.85), 12);
    expect(y.shares_per_page).toBeCloseTo(320 / (y.frames_held * 1.15), 12);
    const withTax = squeeze(taxed);
    expect(withTax['x']).toBeGreaterThan(300);
    expect(withTax['y']).toBe(0);
    const swaps = byAction(taxed.scheduler.decisions(), 'swap');
    expect(swaps.every((d) => d.vm === 'x')).toBe(true);
    expect(swaps[0]!.reason).toMatch(/ρ \S+ \(320 shares, \d+ frames, active 5%, τ 0\.75\)/);

    const untaxed = squeeze(twoWalkers({ taxRate: 0 }));
    expect(untaxed['x']).toBeGreaterThan(100);
    expect(untaxed['y']).toBeGreaterThan(100);
  });

  it('shares outweigh activity when they differ enough; a minimum reservation is never reclaimed', () => {
    // y active but with a tenth of x's shares: ρ_y = 32 / (1.15 P) < ρ_x = 320 / (3.85 P).
    const lowShares = squeeze(twoWalkers({ shares: [320, 32] }));
    expect(lowShares['y']).toBeGreaterThan(300);
    expect(lowShares['x']).toBe(0);

    const machine = twoWalkers();
    machine.scheduler.setAllocation(machine.x.vm, { minPages: machine.x.vm.memory.presentPages - 50 });
    const kept = squeeze(machine);
    expect(kept['x']).toBeLessThanOrEqual(50);
    expect(kept['y']).toBeGreaterThan(200);
  });

  it('a VM over its maximum gives the excess back even at high; allocations and τ are checked', () => {
    const machine = twoWalkers();
    const { scheduler, y, filler } = machine;
    filler.setFree(3000);
    scheduler.tick();
    expect(scheduler.state).toBe('high');
    const held = y.vm.memory.presentPages;
    scheduler.setAllocation(y.vm, { maxPages: held - 500 });
    expect(scheduler.allocationOf(y.vm)).toEqual({ shares: 320, minPages: 0, maxPages: held - 500 });
    // Not swapped at once: its balloon (none here) or the guest gets balloonStallTicks (16) ticks first.
    for (let i = 0; i < 10; i++) scheduler.tick();
    expect(byAction(scheduler.decisions(), 'swap', 'y')).toEqual([]);
    for (let i = 0; i < 12; i++) scheduler.tick();
    expect(y.vm.memory.presentPages).toBeLessThanOrEqual(held - 500);
    expect(byAction(scheduler.decisions(), 'swap', 'y')[0]!.reason).toMatch(new RegExp(`^swap \\d+ pages: holds ${held} frames, over its maximum ${held - 500} for 1[6-9] ticks`));
    expect(() => scheduler.setAllocation(y.vm, { minPages: -1 })).toThrow(MemorySchedulerError);
    expect(() => scheduler.setAllocation(y.vm, { minPages: 100, maxPages: 50 })).toThrow(/at least the minimum/);
    expect(() => scheduler.setAllocation(y.vm, { shares: 0 })).toThrow(/shares must be a positive integer/);
    expect(() => scheduler.setTaxRate(1)).toThrow(/between 0 and 0\.99/);
    expect(() => new MemoryScheduler(machine.hv, { taxRate: -0.5 })).toThrow(MemorySchedulerError);
    scheduler.setTaxRate(0.5);
    expect(scheduler.stats().tax_rate).toBe(0.5);
    machine.swap.close();
  });
});

describe('an access that finds the pool empty between ticks', () => {
  it('blocks the VM at that access, which runs again at unblock: the guest computes what an unconstrained run computes', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    const grower = boot(hv, 'grower', 'walker 12M seq 2', { memoryMiB: 32 });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 32 * MiB, name: 'filler' }));
    const scheduler = new MemoryScheduler(hv);
    scheduler.add(grower.vm); // no MEMINFO: the guest's run must not depend on the host's state
    const step = 20_000;
    runUntil(hv, scheduler, () => grower.vm.memory.presentPages > 300, step, 500);
    filler.setFree(20);

    // One long slice: the walker needs far more than 20 frames before any tick could block it.
    const before = grower.vm.instructionsRetired;
    const [result] = hv.run({ maxInstructions: 5_000_000 }, [grower.vm]);
    expect(result!.reason).toEqual({ kind: 'paused', reason: HOST_MEMORY_WAIT_REASON });
    expect(hv.poolStats().freeFrames).toBe(0);
    expect(grower.vm.exits.hostMemoryWaits).toBe(1);
    expect(grower.vm.instructionsRetired - before).toBeLessThan(5_000_000);
    expect(scheduler.stats().blocked_vms).toEqual(['grower']);
    expect(byAction(scheduler.decisions(), 'block')).toEqual([
      expect.objectContaining({ vm: 'grower', reason: expect.stringMatching(/^blocked: a guest access needed a host frame and the pool had none/) }),
    ]);

    // Still empty: the tick finds low and keeps it blocked; running it changes nothing.
    scheduler.tick();
    expect(scheduler.state).toBe('low');
    const held = grower.vm.instructionsRetired;
    round(hv, scheduler, step, [grower.vm]);
    expect(grower.vm.instructionsRetired).toBe(held);

    // Memory frees: unblocked at the next tick; it finishes the walk as if nothing happened.
    filler.setFree(3600); // enough for the whole walk
    scheduler.tick();
    expect(grower.vm.stopCode).toBe(StopCode.RUNNING);
    expect(byAction(scheduler.decisions(), 'unblock')).toHaveLength(1);
    const [end] = hv.run({ maxInstructions: 40_000_000 }, [grower.vm]);
    expect(end!.reason).toEqual({ kind: 'halted', exitCode: 0 });

    // The same guest with memory to spare, run straight through.
    const reference = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const alone = boot(reference, 'grower', 'walker 12M seq 2', { memoryMiB: 32 });
    const [straight] = reference.run({ maxInstructions: 40_000_000 }, [alone.vm]);
    expect(straight!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(grower.vm.instructionsRetired).toBe(alone.vm.instructionsRetired);
    expect(grower.output.text()).toMatch(/walker.*checksum/);
    expect(grower.output.text()).toBe(alone.output.text());
    expect([...grower.vm.vcpus[0]!.regs]).toEqual([...alone.vm.vcpus[0]!.regs]);
    expect(grower.vm.memory.presentPages).toBe(alone.vm.memory.presentPages);
  });
});

describe('balloon targets over time', () => {
  it('deflates after the state has stayed high for the hold time: half of the lowest surplus above the aim, then waits again', () => {
    const hv = createHypervisor({ hostMemoryBytes: 32 * MiB }); // 8192 frames: high 492, soft 328, aim 574
    const a = boot(hv, 'a', 'heap 16M 1 1 idle', { balloon: true });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 64 * MiB, name: 'filler' }));
    const hold = 5;
    const scheduler = new MemoryScheduler(hv, { deflateHoldTicks: hold, statsRequestTicksAtHigh: 1 });
    scheduler.add(a.vm, { balloon: a.balloon, meminfo: a.meminfo });
    const step = 200_000;
    runUntil(hv, scheduler, () => a.output.text().includes('[kernel] pid 1 (heap) exited with code 0'), step, 200);
    for (let i = 0; i < 3; i++) round(hv, scheduler, step);
    const aim = scheduler.aimFrames();
    expect(aim).toBe(574);
    // Squeeze it four times: each time the filler takes the frames the balloon gave back.
    for (let squeeze = 0; squeeze < 4; squeeze++) {
      filler.setFree(300);
      scheduler.tick();
      expect(scheduler.state).toBe('soft');
      runUntil(hv, scheduler, () => scheduler.state === 'high', step, 100);
    }
    const ours = scheduler.stats().vms[0]!.scheduler_pages;
    expect(ours).toBeGreaterThan(4 * (aim - 300) - 100);
    expect(a.balloon!.target).toBe(ours);
    expect(a.balloon!.actual).toBe(ours);
    expect(byAction(scheduler.decisions(), 'deflate')).toEqual([]); // never high for long enough

    // 400 frames above the aim: 200 pages go back after `hold` quiet ticks, then 200 more after another `hold`.
    filler.setFree(aim + 400);
    const quietFrom = scheduler.ticks;
    let firstDeflate = -1;
    for (let i = 0; i < 3 * hold && byAction(scheduler.decisions(), 'deflate').length < 2; i++) {
      scheduler.tick(); // the guest does not run: nothing moves
      if (firstDeflate < 0 && byAction(scheduler.decisions(), 'deflate').length > 0) firstDeflate = scheduler.ticks;
    }
    const deflates = byAction(scheduler.decisions(), 'deflate');
    expect(deflates.map((d) => d.pages)).toEqual([200, 200]);
    expect(firstDeflate - quietFrom).toBe(hold);
    expect(deflates[1]!.tick - deflates[0]!.tick).toBe(hold);
    expect(deflates[0]!.reason).toBe(`deflate −200 pages: high for ${hold} ticks with at least ${aim + 400} free frames, 400 above the aim; half of that goes back; target ${ours} → ${ours - 200}`);
    expect(a.balloon!.target).toBe(ours - 400);
    expect(a.meminfo.limitPages).toBe(a.vm.memory.pageCount - (ours - 400));
    // The guest's driver follows: ACTUAL comes down to the target; frames stay free until it touches them.
    const free = hv.poolStats().freeFrames;
    runUntil(hv, scheduler, () => a.balloon!.actual === a.balloon!.target, step, 50);
    expect(hv.poolStats().freeFrames).toBeGreaterThan(free - 100);
    expect(scheduler.stats().vms[0]).toMatchObject({ pages_returned: 400, scheduler_pages: ours - 400 });

    // Hysteresis: 100 above the aim would give back 50, under the smallest step (half the
    // high–soft gap, 82 frames): nothing moves, however long the state stays high.
    filler.setFree(aim + 100);
    for (let i = 0; i < 4 * hold; i++) scheduler.tick();
    expect(byAction(scheduler.decisions(), 'deflate')).toHaveLength(2);
    filler.setFree(aim + 200); // 100 to give back: over the step
    for (let i = 0; i < 2 * hold && byAction(scheduler.decisions(), 'deflate').length < 3; i++) scheduler.tick();
    expect(byAction(scheduler.decisions(), 'deflate').map((d) => d.pages)).toEqual([200, 200, 100]);
  });

  it('a balloon that does not move stops counting after balloonStallTicks; stale statistics count for less, then nothing', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB }); // 4096 frames: soft 164, hard 82, aim 287
    const x = boot(hv, 'x', 'heap 8M 1 1 idle', { balloon: true, memoryMiB: 32 });
    const filler = new Filler(hv, hv.createVm({ memoryBytes: 32 * MiB, name: 'filler' }));
    const swap = SwapFile.createIn(dir);
    const scheduler = new MemoryScheduler(hv, { swap, balloonStallTicks: 3, statsRequestTicksAtHigh: 1, statsFreshInstructions: 1_000_000 });
    scheduler.add(x.vm, { balloon: x.balloon, meminfo: x.meminfo });
    const step = 200_000;
    runUntil(hv, scheduler, () => x.output.text().includes('[kernel] pid 1 (heap) exited with code 0'), step, 200);
    for (let i = 0; i < 3; i++) round(hv, scheduler, step);

    // Statistics 2 million instructions old count at about half.
    x.balloon!.setStatsPollingInterval(0); // the driver sends no more
    hv.run({ maxInstructions: 2_000_000 }, [x.vm]);
    filler.setFree(150);
    scheduler.tick();
    const [grant] = byAction(scheduler.decisions(), 'balloon');
    expect(grant!.vm).toBe('x');
    const weight = Number(/counted at (\d+)%/.exec(grant!.reason)![1]);
    expect(weight).toBeGreaterThanOrEqual(40); // 2 million and the rest of the round it was sent in
    expect(weight).toBeLessThanOrEqual(50);
    expect(grant!.pages).toBe(scheduler.aimFrames() - 150);

    // x does not run: its balloon stays at 0 and after 3 ticks no longer counts; at hard its pages are swapped.
    filler.setFree(60);
    for (let i = 0; i < 5; i++) scheduler.tick();
    const swaps = byAction(scheduler.decisions(), 'swap', 'x');
    expect(swaps.length).toBeGreaterThan(0);
    expect(swaps.at(-1)!.reason).toMatch(new RegExp(`^swap \\d+ pages: balloon stalled \\(target ${x.balloon!.target}, actual 0, unchanged for \\d+ ticks\\)`));
    expect(swaps.at(-1)!.pages).toBeGreaterThan(0); // a clock turn later, its cold pages went

    // Statistics 9 million instructions old count for nothing.
    filler.setFree(2000);
    for (let i = 0; i < 3; i++) round(hv, scheduler, step); // x inflates its balloon (nothing stalls now)
    expect(x.balloon!.actual).toBe(x.balloon!.target);
    hv.run({ maxInstructions: 9_000_000 }, [x.vm]);
    filler.setFree(60);
    scheduler.tick();
    scheduler.tick();
    const last = byAction(scheduler.decisions(), 'swap', 'x').at(-1)!;
    expect(last.reason).toMatch(/^swap \d+ pages: balloon statistics are stale \(\d+ instructions old\)/);
    expect(scheduler.stats().vms[0]!.stats_age_instructions).toBeGreaterThan(8_000_000);
    swap.close();
  });
});
