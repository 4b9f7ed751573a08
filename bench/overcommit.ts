/**
 * Memory overcommit (issue 10): how fast the balloon gives memory back to the host, and the T-7
 * experiment — the same host squeeze on a guest cache that listens to the memory condition
 * (MEMINFO) and on one that does not. `npm run bench -- --only overcommit`. Page sharing, the
 * issue's third figure, is its own group (bench/sharing.ts, `--only sharing`): not repeated here.
 *
 * - Balloon reclaim: a 1 GiB nanokernel VM that has touched and given back ~1000 MiB (`heap`,
 *   then `idle`); the time from the balloon's new target to the guest's RSS down (the host pool's
 *   residency, mincore, polled between runs of the VM: the process RSS also moves with the JS heap,
 *   by more than the 5 % slack on a loaded machine) and to the target reached, the pool's and the
 *   process's RSS before and after, and the
 *   share of that time spent in madvise (every release() of the host pool timed). Baseline in
 *   the same run, interleaved (the order alternates each round): madvise of the same number of
 *   touched bytes of a fresh host region in one call. Wall time with CPU time next to it.
 * - The T-7 experiment (runSqueeze, also used by tests/integration/nanokernel-meminfo.test.ts):
 *   `kvcache` in a VM with the balloon, MEMINFO and a hypervisor swap file. When the VM holds a
 *   given number of frames, the host squeezes it: balloon target T, MEMINFO LIMIT = RAM − T and
 *   PRESSURE soft. The host then waits for the balloon; once the balloon has not moved for a
 *   while and the VM still holds more frames than RAM − T, the host swaps the excess out (cold
 *   pages first: a clock over the hypervisor's accessed marks) and sets PRESSURE hard, every
 *   round. Two squeeze points (the cache full; half full), each with `listen` and `deaf`, and
 *   the same workload without a squeeze as the baseline: OOM kills, swap-outs and swap-ins, hit
 *   rate, guest instructions to finish. Each squeeze is made twice: by this file's loop (a balloon
 *   target for memory the guest holds, as an operator would set), and by the memory scheduler
 *   (services/memory/reclaim.ts), which lowers the VM's maximum: MEMINFO's LIMIT follows, the
 *   balloon takes only pages the usage classes call cheap (a listening cache's pages become free,
 *   hence cheap, as it shrinks; a deaf cache's never do) and the rest is swapped.
 */
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assembleFile } from '../guest-isa/assembler.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { attachStandardDevices, CaptureSink, HostPressure, type BalloonDevice, type MeminfoDevice } from '../devices/index.ts';
import { createHypervisor, PageState, type Hypervisor, type Vm } from '../kernel/index.ts';
import { HostRegion, HOST_PAGE_SIZE, processRss } from '../native/index.ts';
import { MemoryScheduler, SwapFile } from '../services/memory/index.ts';
import { BenchError, cpuSince, loadNow, median, type Check } from './harness.ts';
import type { Timing } from './state.ts';

const MiB = 2 ** 20;
const PAGE = 4096;
const KERNEL_SOURCE = fileURLToPath(new URL('../examples/nanokernel/kernel.s', import.meta.url));

/** Targets from the issue. */
export const OVERCOMMIT_TARGETS = {
  /** Balloon reclaim of 1 GiB: target change to RSS down, ms. */
  reclaimMs: 200,
} as const;

// --- the T-7 experiment ----------------------------------------------------------------------

/** How kvcache treats the memory condition. */
export type CacheMode = 'listen' | 'deaf';

/** One squeeze run's settings. */
export interface SqueezeSetup {
  image: GuestImage;
  /** Guest RAM in bytes. */
  memoryBytes: number;
  /** kvcache ENTRIES and OPS. */
  entries: number;
  ops: number;
  /** The squeeze's balloon target in pages; null: no squeeze (the baseline). */
  targetPages: number | null;
  /** The host squeezes when the VM holds at least this many frames (presentPages). */
  squeezeAtFrames: number;
  /** Guest instructions between two looks of the host (default 100,000: a time slice). */
  roundInstructions?: number;
  /** Rounds without the balloon moving after which the host swaps the excess (default 16, the memory scheduler's balloonStallTicks). */
  stallRounds?: number;
  /** Where the swap file goes (a fresh temporary directory when absent). */
  swapDirectory?: string;
  /**
   * Who squeezes (default 'bench'). 'bench': this file's own loop (balloon target T, MEMINFO
   * LIMIT and PRESSURE, then swap after `stallRounds`). 'scheduler': the memory scheduler
   * (services/memory/reclaim.ts), ticked every round, lowers the VM's maximum to RAM − T: MEMINFO's
   * LIMIT follows, the balloon takes the pages its usage classes call cheap (a listening cache's
   * pages become free and cheap as it shrinks), and what it cannot cover is swapped after
   * balloonStallTicks ticks.
   */
  driver?: 'bench' | 'scheduler';
}

/** What one squeeze run gave. */
export interface SqueezeOutcome {
  mode: CacheMode;
  /** kvcache's figures (from its last line), or null when it did not finish (killed). */
  cache: {
    ops: number; hits: number; misses: number; evictions: number; entries: number; peak: number;
    shrinks: number; dropped: number; changes: number; checksum: number;
  } | null;
  /** hits ÷ ops, or null without the line. */
  hitRate: number | null;
  /** The guest's OOM kills (its stats=memory line). */
  oomKills: number;
  /** The kernel's exit code at power-off. */
  exitCode: number;
  /** Pages the host swapped out (written to the file, or dropped as zero pages) and read back. */
  swapOuts: number;
  swapIns: number;
  /** Rounds in which the host swapped. */
  swapRounds: number;
  /** Guest instructions from boot to power-off, and when the squeeze came. */
  instructions: number;
  squeezedAt: number | null;
  /** The balloon at the end. */
  balloonTarget: number;
  balloonActual: number;
  /** The most frames the VM held after the squeeze (excess over RAM − target is what was swapped). */
  peakFramesAfterSqueeze: number;
  /** MEMINFO SEQ reads by the guest. */
  meminfoReads: number;
  /** The run's wall and process CPU time. */
  wallMs: number;
  cpuMs: number;
  /** The guest's console. */
  console: string;
}

const CACHE_LINE = /^kvcache: (listen|deaf), ops (\d+), hits (\d+), misses (\d+), evictions (\d+), entries (\d+), peak (\d+), shrinks (\d+), dropped (\d+), changes (\d+), checksum 0x([0-9a-f]{8})$/m;
const MEMORY_LINE = /^\[kernel\] memory: .*, (\d+) oom kills$/m;
const POWER_LINE = /^\[kernel\] power off, exit code (\d+)$/m;

/** kvcache's line, parsed. */
export function parseCacheLine(text: string): SqueezeOutcome['cache'] {
  const m = CACHE_LINE.exec(text);
  if (!m) return null;
  const n = m.slice(2, 11).map(Number) as [number, number, number, number, number, number, number, number, number];
  return {
    ops: n[0], hits: n[1], misses: n[2], evictions: n[3], entries: n[4], peak: n[5], shrinks: n[6], dropped: n[7], changes: n[8],
    checksum: parseInt(m[11]!, 16),
  };
}

/**
 * The host's cold-page clock (as the memory scheduler's): from the hand, a present page with an
 * accessed mark gets a second chance (the mark is cleared), the first unmarked plain pages are
 * swapped out, up to `want`; at most one turn over the RAM. Returns the pages swapped.
 */
class ColdSwapper {
  private hand = 0;
  constructor(private readonly vm: Vm, private readonly swap: SwapFile) {}

  swapOut(want: number): number {
    const memory = this.vm.memory;
    const count = memory.pageCount;
    const accessed = memory.accessed;
    let gpn = this.hand % count;
    let swapped = 0;
    let runStart = -1;
    const flush = (end: number): void => {
      if (runStart >= 0) memory.clearAccessed(runStart, end - runStart);
      runStart = -1;
    };
    for (let visited = 0; visited < count && swapped < want; visited++) {
      if (memory.stateOf(gpn) === PageState.PRESENT && accessed[gpn] !== 0) {
        if (runStart < 0) runStart = gpn;
      } else {
        flush(gpn);
        if (memory.stateOf(gpn) === PageState.PRESENT && memory.flagsOf(gpn) === 0 && memory.isPrivate(gpn) && this.swap.swapOut(this.vm, gpn)) swapped++;
      }
      if (++gpn === count) {
        flush(count);
        gpn = 0;
      }
    }
    flush(gpn === 0 ? count : gpn);
    this.hand = gpn;
    return swapped;
  }
}

/**
 * One run of the experiment: boots `stats=memory kvcache ENTRIES OPS MODE` with a balloon, MEMINFO
 * and a swap file, squeezes it when it holds `squeezeAtFrames` frames (see the file comment), and
 * runs it to power-off.
 */
export function runSqueeze(setup: SqueezeSetup, mode: CacheMode): SqueezeOutcome {
  const round = setup.roundInstructions ?? 100_000;
  const stallRounds = setup.stallRounds ?? 16;
  const directory = setup.swapDirectory ?? mkdtempSync(join(tmpdir(), 'bv-overcommit-'));
  const hv = createHypervisor({ hostMemoryBytes: setup.memoryBytes + 16 * MiB });
  const vm = hv.createVm({ memoryBytes: setup.memoryBytes, name: `kvcache-${mode}` });
  vm.loadImage(setup.image);
  const output = new CaptureSink();
  const byScheduler = setup.driver === 'scheduler';
  // The scheduler sizes balloons from the guest's statistics: it needs them (polled every guest second, and asked for every tick while the VM is over its maximum).
  const devices = attachStandardDevices(vm, { output, bootArgs: `stats=memory kvcache ${setup.entries} ${setup.ops} ${mode}`, balloon: byScheduler ? { statsPollingIntervalS: 1 } : {}, meminfo: true });
  const balloon = devices.balloon as BalloonDevice;
  const meminfo = devices.meminfo as MeminfoDevice;
  const swap = SwapFile.createIn(directory);
  const pages = vm.memory.pageCount;
  const scheduler = byScheduler ? new MemoryScheduler(hv, { swap }) : null;
  try {
    if (scheduler) scheduler.add(vm, { balloon, meminfo });
    else swap.attach(vm);
    const swapper = new ColdSwapper(vm, swap);
    let squeezedAt: number | null = null;
    let lastActual = 0;
    let lastMove = 0;
    let swapRounds = 0;
    let peak = 0;
    const [cpuStart, start] = [process.cpuUsage(), performance.now()];
    for (let r = 0; ; r++) {
      const [result] = hv.run({ maxInstructions: round }, [vm]);
      const reason = result!.reason;
      if (reason.kind === 'halted') break;
      if (reason.kind !== 'budget') throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: ${vm.name} stopped (${JSON.stringify(reason)})\n${output.text()}`);
      if (r > 1_000_000) throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: ${vm.name} did not finish`);
      const target = setup.targetPages;
      if (scheduler) {
        if (target !== null && squeezedAt === null && vm.memory.presentPages >= setup.squeezeAtFrames) {
          squeezedAt = vm.instructionsRetired;
          scheduler.setAllocation(vm, { maxPages: pages - target });
        }
        const swapsBefore = scheduler.stats().counters.swap_decisions;
        scheduler.tick();
        if (scheduler.stats().counters.swap_decisions > swapsBefore) swapRounds++;
        if (squeezedAt !== null) peak = Math.max(peak, vm.memory.presentPages);
        continue;
      }
      if (target === null) continue;
      if (squeezedAt === null) {
        if (vm.memory.presentPages < setup.squeezeAtFrames) continue;
        squeezedAt = vm.instructionsRetired;
        balloon.setTarget(target);
        meminfo.setCondition({ limitPages: pages - target, pressure: HostPressure.SOFT });
        lastMove = r;
      }
      peak = Math.max(peak, vm.memory.presentPages);
      if (balloon.actual !== lastActual) {
        lastActual = balloon.actual;
        lastMove = r;
      }
      const excess = vm.memory.presentPages - (pages - target);
      if (excess > 0 && r - lastMove >= stallRounds) {
        meminfo.setCondition({ pressure: HostPressure.HARD });
        if (swapper.swapOut(excess) > 0) swapRounds++;
      }
    }
    const wallMs = performance.now() - start;
    const cpuMs = cpuSince(cpuStart);
    const text = output.text();
    const cache = parseCacheLine(text);
    const memoryLine = MEMORY_LINE.exec(text);
    const power = POWER_LINE.exec(text);
    if (!memoryLine || !power) throw new BenchError('BV_BENCH_WRONG_RESULT', `overcommit: ${vm.name} printed no summary\n${text}`);
    const stats = swap.stats();
    return {
      mode, cache, hitRate: cache === null ? null : cache.hits / cache.ops, oomKills: Number(memoryLine[1]), exitCode: Number(power[1]),
      swapOuts: stats.pagesOut + stats.zeroPagesDropped, swapIns: stats.pagesIn, swapRounds, instructions: vm.instructionsRetired, squeezedAt,
      balloonTarget: balloon.target, balloonActual: balloon.actual, peakFramesAfterSqueeze: peak, meminfoReads: meminfo.seqReads,
      wallMs, cpuMs, console: text,
    };
  } finally {
    if (scheduler) scheduler.remove(vm);
    swap.forget(vm);
    swap.close();
    for (const v of [...hv.vms]) hv.destroyVm(v);
    if (setup.swapDirectory === undefined) rmSync(directory, { recursive: true, force: true });
  }
}

// --- what is measured, and how often -----------------------------------------------------------

/**
 * Sizes. Reclaim: a VM of `vmBytes` whose heap touches `heapBytes` and gives them back; the balloon
 * target is the heap's pages. Squeeze: kvcache of `entries` pages (¾ of RAM) in `memoryBytes`,
 * squeezed to half its RAM (target ½ RAM) when it holds `entries` frames ("the cache full") or
 * half of them ("half full"), OPS `ops`.
 */
const SIZES = {
  full: { vmBytes: 1024 * MiB, heapBytes: 1000 * MiB, memoryBytes: 64 * MiB, entries: 12_288, ops: 48_000 },
  quick: { vmBytes: 64 * MiB, heapBytes: 48 * MiB, memoryBytes: 16 * MiB, entries: 3_072, ops: 12_000 },
} as const;

const ROUNDS = {
  full: { reclaim: { warmups: 1, runs: 3 }, squeeze: 3 },
  quick: { reclaim: { warmups: 0, runs: 1 }, squeeze: 1 },
} as const;

/** The experiment's runs: the baseline (no squeeze), then each squeeze point with each mode. */
export const SQUEEZE_CASES = [
  { label: 'no squeeze', point: null, mode: 'deaf', driver: 'bench' },
  { label: 'cache full', point: 1, mode: 'listen', driver: 'bench' },
  { label: 'cache full', point: 1, mode: 'deaf', driver: 'bench' },
  { label: 'half full', point: 0.5, mode: 'listen', driver: 'bench' },
  { label: 'half full', point: 0.5, mode: 'deaf', driver: 'bench' },
  // The same squeezes made by the memory scheduler: the VM's maximum lowered to RAM − T.
  { label: 'cache full', point: 1, mode: 'listen', driver: 'scheduler' },
  { label: 'cache full', point: 1, mode: 'deaf', driver: 'scheduler' },
  { label: 'half full', point: 0.5, mode: 'listen', driver: 'scheduler' },
  { label: 'half full', point: 0.5, mode: 'deaf', driver: 'scheduler' },
] as const satisfies readonly { label: string; point: number | null; mode: CacheMode; driver: 'bench' | 'scheduler' }[];

export interface OvercommitOptions {
  quick: boolean;
  onStep?: (label: string) => void;
}

/** Steps measureOvercommit reports through onStep (for the progress line). */
export function overcommitStepCount(options: Pick<OvercommitOptions, 'quick'>): number {
  const r = ROUNDS[options.quick ? 'quick' : 'full'];
  return r.reclaim.warmups + r.reclaim.runs + r.squeeze * SQUEEZE_CASES.length;
}

// --- figures -----------------------------------------------------------------------------------

export interface ReclaimFigures {
  vmBytes: number;
  /** The heap touched and given back, and the balloon's target (its pages). */
  heapBytes: number;
  targetPages: number;
  /** Target change → the pool's resident bytes down by 95 % of the heap (polled between runs of ≤ pollInstructions). */
  toRssDown: Timing;
  /** Target change → ACTUAL = target. */
  toTarget: Timing;
  /** Of toTarget, time inside the host pool's release() (madvise), median. */
  madviseMs: number;
  /** release() calls in the last round. */
  madviseCalls: number;
  /** Baseline: madvise(MADV_DONTNEED) of heapBytes of touched memory in one call. */
  plainMadvise: Timing;
  /** toRssDown ÷ plainMadvise (wall, CPU). */
  ratio: number;
  cpuRatio: number;
  /** The host pool's resident memory (the guest's RSS) before the target change and once the target was reached (KiB, last round). */
  poolRssBeforeKiB: number;
  poolRssAfterKiB: number;
  /** Process RSS at the same two moments (KiB, last round). */
  rssBeforeKiB: number;
  rssAfterKiB: number;
  /** Guest instructions the VM ran from the target change to the target reached. */
  guestInstructions: number;
  pollInstructions: number;
}

export interface SqueezeRow {
  label: string;
  mode: CacheMode;
  /** Who squeezed: this file's loop, or the memory scheduler (SqueezeSetup.driver). */
  driver: 'bench' | 'scheduler';
  oomKills: number;
  swapOuts: number;
  swapIns: number;
  /** hits ÷ ops; null when the cache was killed. */
  hitRate: number | null;
  /** Guest instructions to power-off, and ÷ the baseline's. */
  instructions: number;
  instructionsRatio: number;
  /** The cache's last size and peak, its shrinks and the entries they dropped (null when killed). */
  entries: number | null;
  peak: number | null;
  shrinks: number | null;
  dropped: number | null;
  balloonActual: number;
  /** Frames the VM held at most after the squeeze. */
  peakFrames: number;
  /** kvcache's meminfo calls. */
  meminfoCalls: number;
  run: Timing;
}

export interface OvercommitFigures {
  reclaim: ReclaimFigures;
  squeeze: {
    memoryBytes: number;
    entries: number;
    ops: number;
    targetPages: number;
    /** Frames the VM may hold after the squeeze: RAM pages − target. */
    budgetPages: number;
    rows: SqueezeRow[];
  };
}

const fixed = (value: number, digits: number): number => (Number.isFinite(value) ? Number(value.toFixed(digits)) : value);

/** Medians of some (wall, CPU) samples, with the wall range. */
function timing(samples: readonly { wallMs: number; cpuMs: number }[]): Timing {
  const wall = samples.map((s) => s.wallMs).sort((a, b) => a - b);
  return {
    wallMs: fixed(median(wall), 3), cpuMs: fixed(median(samples.map((s) => s.cpuMs)), 3), minWallMs: fixed(wall[0]!, 3), maxWallMs: fixed(wall[wall.length - 1]!, 3),
    runs: samples.length, load: loadNow(),
  };
}

// --- balloon reclaim -----------------------------------------------------------------------------

const RECLAIM_POLL_INSTRUCTIONS = 200_000;

interface ReclaimSample {
  rss: { wallMs: number; cpuMs: number };
  target: { wallMs: number; cpuMs: number };
  madviseMs: number;
  madviseCalls: number;
  poolRssBefore: number;
  poolRssAfter: number;
  rssBefore: number;
  rssAfter: number;
  instructions: number;
}

/** Runs `vm` until `done()`, failing when it stops or takes too long. */
function runUntil(hv: Hypervisor, vm: Vm, output: CaptureSink, done: () => boolean): void {
  for (let i = 0; i < 100_000 && !done(); i++) {
    const [result] = hv.run({ maxInstructions: 1_000_000 }, [vm]);
    if (result!.reason.kind !== 'budget') throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: ${vm.name} stopped (${JSON.stringify(result!.reason)})\n${output.text()}`);
  }
  if (!done()) throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: ${vm.name} never got there\n${output.text()}`);
}

function reclaimOnce(image: GuestImage, size: (typeof SIZES)[keyof typeof SIZES]): ReclaimSample {
  const hv = createHypervisor({ hostMemoryBytes: size.vmBytes + 64 * MiB });
  try {
    const vm = hv.createVm({ memoryBytes: size.vmBytes, name: 'reclaim' });
    vm.loadImage(image);
    const output = new CaptureSink();
    const devices = attachStandardDevices(vm, { output, bootArgs: `heap ${size.heapBytes} 1 1 idle`, balloon: {} });
    const balloon = devices.balloon as BalloonDevice;
    runUntil(hv, vm, output, () => output.text().includes('[kernel] pid 1 (heap) exited with code 0') && output.text().includes('idle: 16 pages touched, sleeping'));
    // The pool times its own madvise calls (poolStats().releaseMs): what reclaim spends in the OS.
    const poolBefore = hv.poolStats();
    const target = size.heapBytes / PAGE;
    const rssBefore = processRss();
    const poolRssBefore = hv.residentPoolBytes();
    const rssDown = poolRssBefore - 0.95 * size.heapBytes;
    const instructionsBefore = vm.instructionsRetired;
    let rss: ReclaimSample['rss'] | null = null;
    const [cpuStart, start] = [process.cpuUsage(), performance.now()];
    balloon.setTarget(target);
    for (let i = 0; balloon.actual !== target; i++) {
      if (i > 100_000) throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: the balloon reached ${balloon.actual} of ${target} pages`);
      const [result] = hv.run({ maxInstructions: RECLAIM_POLL_INSTRUCTIONS }, [vm]);
      if (result!.reason.kind !== 'budget') throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: ${vm.name} stopped (${JSON.stringify(result!.reason)})`);
      if (rss === null && hv.residentPoolBytes() <= rssDown) rss = { wallMs: performance.now() - start, cpuMs: cpuSince(cpuStart) };
    }
    // Every frame is released inside its INFLATE: once the target is reached nothing more will fall.
    if (rss === null) {
      const fell = poolRssBefore - hv.residentPoolBytes();
      throw new BenchError('BV_BENCH_GUEST_FAILED', `overcommit: the balloon reached its ${target} pages but the guest's RSS fell by only ${Math.round(fell / 1024)} KiB of ${size.heapBytes / 1024} KiB`);
    }
    const reached = { wallMs: performance.now() - start, cpuMs: cpuSince(cpuStart) };
    const poolAfter = hv.poolStats();
    const madviseMs = poolAfter.releaseMs - poolBefore.releaseMs;
    const madviseCalls = poolAfter.releaseCalls - poolBefore.releaseCalls;
    return { rss, target: reached, madviseMs, madviseCalls, poolRssBefore, poolRssAfter: hv.residentPoolBytes(), rssBefore, rssAfter: processRss(), instructions: vm.instructionsRetired - instructionsBefore };
  } finally {
    for (const vm of [...hv.vms]) hv.destroyVm(vm);
  }
}

/** The baseline: `bytes` of a fresh anonymous region, every page touched, released in one madvise. */
function plainMadviseOnce(bytes: number): { wallMs: number; cpuMs: number } {
  const region = HostRegion.anonymous(bytes);
  try {
    const view = new Uint8Array(region.buffer);
    for (let offset = 0; offset < bytes; offset += HOST_PAGE_SIZE) view[offset] = 1;
    const [cpuStart, start] = [process.cpuUsage(), performance.now()];
    region.release(0, bytes);
    return { wallMs: performance.now() - start, cpuMs: cpuSince(cpuStart) };
  } finally {
    region.close();
  }
}

function measureReclaim(image: GuestImage, size: (typeof SIZES)[keyof typeof SIZES], rounds: { warmups: number; runs: number }, onStep?: (label: string) => void): ReclaimFigures {
  const samples: ReclaimSample[] = [];
  const plain: { wallMs: number; cpuMs: number }[] = [];
  for (let r = 0; r < rounds.warmups + rounds.runs; r++) {
    const timed = r >= rounds.warmups;
    onStep?.(`overcommit: balloon reclaim of ${size.heapBytes / MiB} MiB${timed ? '' : ' (warm-up)'}`);
    for (const side of r % 2 === 0 ? ['balloon', 'plain'] as const : ['plain', 'balloon'] as const) {
      if (side === 'balloon') {
        const sample = reclaimOnce(image, size);
        if (timed) samples.push(sample);
      } else {
        const sample = plainMadviseOnce(size.heapBytes);
        if (timed) plain.push(sample);
      }
    }
  }
  const last = samples[samples.length - 1]!;
  const toRssDown = timing(samples.map((s) => s.rss));
  const plainMadvise = timing(plain);
  return {
    vmBytes: size.vmBytes, heapBytes: size.heapBytes, targetPages: size.heapBytes / PAGE, toRssDown, toTarget: timing(samples.map((s) => s.target)),
    madviseMs: fixed(median(samples.map((s) => s.madviseMs)), 3), madviseCalls: last.madviseCalls, plainMadvise,
    ratio: fixed(toRssDown.wallMs / plainMadvise.wallMs, 3), cpuRatio: fixed(toRssDown.cpuMs / plainMadvise.cpuMs, 3),
    poolRssBeforeKiB: Math.round(last.poolRssBefore / 1024), poolRssAfterKiB: Math.round(last.poolRssAfter / 1024),
    rssBeforeKiB: Math.round(last.rssBefore / 1024), rssAfterKiB: Math.round(last.rssAfter / 1024), guestInstructions: last.instructions, pollInstructions: RECLAIM_POLL_INSTRUCTIONS,
  };
}

// --- the squeeze table ---------------------------------------------------------------------------

function measureSqueeze(image: GuestImage, size: (typeof SIZES)[keyof typeof SIZES], runs: number, onStep?: (label: string) => void): OvercommitFigures['squeeze'] {
  const pages = size.memoryBytes / PAGE;
  const targetPages = pages / 2;
  const outcomes = new Map<number, SqueezeOutcome[]>();
  const directory = mkdtempSync(join(tmpdir(), 'bv-overcommit-'));
  try {
    for (let r = 0; r < runs; r++) {
      const order = SQUEEZE_CASES.map((_, i) => i);
      for (const i of r % 2 === 0 ? order : order.reverse()) {
        const c = SQUEEZE_CASES[i]!;
        onStep?.(`overcommit: kvcache ${c.mode}, ${c.label}${c.driver === 'scheduler' ? ', by the scheduler' : ''}`);
        const outcome = runSqueeze({
          image, memoryBytes: size.memoryBytes, entries: size.entries, ops: size.ops, targetPages: c.point === null ? null : targetPages,
          squeezeAtFrames: Math.round((c.point ?? 1) * size.entries), swapDirectory: directory, driver: c.driver,
        }, c.mode);
        if (outcome.cache !== null && outcome.cache.checksum !== expectedChecksum(size.entries, size.ops)) {
          throw new BenchError('BV_BENCH_WRONG_RESULT', `overcommit: kvcache ${c.mode} (${c.label}) computed checksum 0x${outcome.cache.checksum.toString(16)}, the model 0x${expectedChecksum(size.entries, size.ops).toString(16)}`);
        }
        outcomes.set(i, [...(outcomes.get(i) ?? []), outcome]);
      }
    }
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
  const baseline = outcomes.get(0)![0]!;
  const rows = SQUEEZE_CASES.map((c, i): SqueezeRow => {
    const list = outcomes.get(i)!;
    const o = list[list.length - 1]!;
    return {
      label: c.label, mode: c.mode, driver: c.driver, oomKills: o.oomKills, swapOuts: o.swapOuts, swapIns: o.swapIns, hitRate: o.hitRate === null ? null : fixed(o.hitRate, 4),
      instructions: o.instructions, instructionsRatio: fixed(o.instructions / baseline.instructions, 3),
      entries: o.cache?.entries ?? null, peak: o.cache?.peak ?? null, shrinks: o.cache?.shrinks ?? null, dropped: o.cache?.dropped ?? null,
      balloonActual: o.balloonActual, peakFrames: o.peakFramesAfterSqueeze, meminfoCalls: o.meminfoReads, run: timing(list),
    };
  });
  return { memoryBytes: size.memoryBytes, entries: size.entries, ops: size.ops, targetPages, budgetPages: pages - targetPages, rows };
}

/** kvcache's checksum, which does not depend on what the cache did (docs/nanokernel.md). */
export function expectedChecksum(entries: number, ops: number): number {
  const keys = 4 * entries;
  let x = 0x2545_f491;
  let sum = 0x811c_9dc5;
  for (let op = 0; op < ops; op++) {
    x = (Math.imul(x, 1_664_525) + 1_013_904_223) >>> 0;
    const cube = Number((((BigInt(x) * BigInt(x)) >> 32n) * BigInt(x)) >> 32n);
    const key = Math.floor((cube * keys) / 2 ** 32);
    const j = 1 + ((x >>> 8) % 1023);
    sum = Math.imul(sum ^ cacheValue(key, j), 0x0100_0193) >>> 0;
  }
  return sum;
}

/** value(key, j) of a kvcache entry: h = key × 0x9e3779b1 + j, h ^= h >> 15, h ×= 0x85ebca6b, h ^= h >> 13. */
export function cacheValue(key: number, j: number): number {
  let h = (Math.imul(key, 0x9e37_79b1) + j) >>> 0;
  h = (h ^ (h >>> 15)) >>> 0;
  h = Math.imul(h, 0x85eb_ca6b) >>> 0;
  return (h ^ (h >>> 13)) >>> 0;
}

// --- entry, targets, output ----------------------------------------------------------------------

export function measureOvercommit(options: OvercommitOptions): OvercommitFigures {
  const size = SIZES[options.quick ? 'quick' : 'full'];
  const rounds = ROUNDS[options.quick ? 'quick' : 'full'];
  const image = assembleFile(KERNEL_SOURCE).image;
  const reclaim = measureReclaim(image, size, rounds.reclaim, options.onStep);
  const squeeze = measureSqueeze(image, size, rounds.squeeze, options.onStep);
  return { reclaim, squeeze };
}

export function overcommitChecks(figures: OvercommitFigures): Check[] {
  const { reclaim, squeeze } = figures;
  const listen = squeeze.rows.filter((row) => row.mode === 'listen');
  const find = (driver: string, mode: CacheMode) => squeeze.rows.find((r) => r.label === 'cache full' && r.mode === mode && r.driver === driver)!;
  const full = { listen: find('bench', 'listen'), deaf: find('bench', 'deaf') };
  const byScheduler = { listen: find('scheduler', 'listen'), deaf: find('scheduler', 'deaf') };
  return [
    {
      name: `balloon reclaim, ${reclaim.heapBytes / MiB} MiB of a ${reclaim.vmBytes / MiB} MiB VM: target change to RSS down (ms)`, target: `<= ${OVERCOMMIT_TARGETS.reclaimMs}`,
      value: reclaim.toRssDown.wallMs, cpuValue: reclaim.toRssDown.cpuMs, pass: reclaim.toRssDown.wallMs <= OVERCOMMIT_TARGETS.reclaimMs, load: reclaim.toRssDown.load,
    },
    {
      name: 'T-7 squeeze, kvcache listen: OOM kills + hypervisor swap-outs', target: '= 0',
      value: listen.reduce((sum, r) => sum + r.oomKills + r.swapOuts, 0), pass: listen.every((r) => r.oomKills + r.swapOuts === 0), load: listen[0]!.run.load,
    },
    {
      name: 'T-7 squeeze (cache full), hypervisor swap-outs, deaf / listen', target: '> 1',
      value: full.deaf.swapOuts / Math.max(1, full.listen.swapOuts), pass: full.deaf.swapOuts > full.listen.swapOuts, load: full.deaf.run.load,
    },
    {
      name: 'T-7 squeeze by the memory scheduler (cache full), hypervisor swap-outs, deaf / listen', target: '> 1',
      value: byScheduler.deaf.swapOuts / Math.max(1, byScheduler.listen.swapOuts), pass: byScheduler.deaf.swapOuts > byScheduler.listen.swapOuts, load: byScheduler.deaf.run.load,
    },
  ];
}

export function formatOvercommit(figures: OvercommitFigures): string[] {
  const { reclaim: r, squeeze: s } = figures;
  const ms = (value: number): string => (value < 10 ? value.toFixed(3) : value.toFixed(1));
  const t = (timing: Timing): string => `${ms(timing.wallMs)} ms (CPU ${ms(timing.cpuMs)}; ${ms(timing.minWallMs)}–${ms(timing.maxWallMs)}, ${timing.runs} runs)`;
  const n = (value: number): string => value.toLocaleString('en-US');
  const dash = (value: number | null, show: (v: number) => string = n): string => (value === null ? '-' : show(value));
  const header = ['squeeze', 'by', 'kvcache', 'OOM kills', 'swap-outs', 'swap-ins', 'hit rate', 'instructions', '÷ baseline', 'entries (peak)', 'shrinks (dropped)', 'balloon', 'peak frames', 'wall ms (CPU)'];
  const rows = s.rows.map((row) => [
    row.label, row.label === 'no squeeze' ? '-' : row.driver, row.mode, n(row.oomKills), n(row.swapOuts), n(row.swapIns), dash(row.hitRate, (v) => `${(v * 100).toFixed(1)} %`), n(row.instructions), row.instructionsRatio.toFixed(2),
    row.entries === null ? 'killed' : `${n(row.entries)} (${n(row.peak!)})`, row.shrinks === null ? '-' : `${n(row.shrinks)} (${n(row.dropped!)})`, n(row.balloonActual), n(row.peakFrames),
    `${ms(row.run.wallMs)} (${ms(row.run.cpuMs)})`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: readonly string[]): string => cells.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd();
  return [
    `overcommit (issue 10); page sharing is its own group (--only sharing)`,
    `  balloon reclaim: a ${r.vmBytes / MiB} MiB nanokernel VM whose heap touched and gave back ${r.heapBytes / MiB} MiB, target ${n(r.targetPages)} pages; medians, wall time with process CPU time`,
    `    target change → RSS down 95 %  ${t(r.toRssDown)}`,
    `    target change → target reached ${t(r.toTarget)}; of it in madvise ${ms(r.madviseMs)} ms (${n(r.madviseCalls)} calls); ${n(r.guestInstructions)} guest instructions`,
    `    plain madvise of ${r.heapBytes / MiB} MiB in one call, baseline ${t(r.plainMadvise)}; reclaim / baseline ${r.ratio.toFixed(2)} (CPU ${r.cpuRatio.toFixed(2)})`,
    `    guest RSS (host pool resident) ${n(r.poolRssBeforeKiB)} KiB → ${n(r.poolRssAfterKiB)} KiB; process RSS ${n(r.rssBeforeKiB)} KiB → ${n(r.rssAfterKiB)} KiB`,
    `  T-7: kvcache ${n(s.entries)} ${n(s.ops)} in a ${s.memoryBytes / MiB} MiB VM (balloon, MEMINFO, hypervisor swap file); the squeeze: balloon target ${n(s.targetPages)} pages, LIMIT ${n(s.budgetPages)}, PRESSURE soft; the host swaps what the VM holds above ${n(s.budgetPages)} frames once the balloon has stalled (then PRESSURE hard). By 'scheduler': the memory scheduler lowers the VM's maximum to ${n(s.budgetPages)} frames (MEMINFO LIMIT follows), balloons only the pages its usage classes call cheap and swaps the rest after 16 ticks`,
    '',
    ...[line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].map((text) => `    ${text}`),
  ];
}
