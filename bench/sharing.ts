/**
 * Content-based page sharing (services/memory/sharing.ts, issue 10): four nanokernel VMs booted
 * separately in one hypervisor, running the same programs. Every figure has its baseline
 * measured in the same run, the two interleaved (the order alternates each round), as a median
 * after warm-up rounds, with the process CPU time of the same runs next to the wall time.
 *
 * - frames saved: the four VMs stopped at the same instruction, then scanned until a pass merges
 *   nothing more; host frames in use (poolStats) and the process RSS before and after, against
 *   the pages the four VMs have in common (same bytes at the same guest address);
 * - scanner cost per page: the passes of that scan (first visit: hash only; second: hash, compare,
 *   merge; then a steady pass over merged pages), in µs per present page, against the default
 *   hash alone and node's native SHA-1 over the same pages;
 * - guest slowdown: the four VMs run from boot to power-off with the scanner ticking at the stated
 *   rates against the same run without a scanner. Every run's console must hold the lines the
 *   programs must print (bench/nanokernel-model.ts), or the bench stops with an error.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { assembleFile } from '../guest-isa/assembler.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { attachStandardDevices, CaptureSink } from '../devices/index.ts';
import { createHypervisor, PageState, type Hypervisor, type Vm } from '../kernel/index.ts';
import { processRss } from '../native/index.ts';
import { PageSharer, pageHash64, type PageSharingStats } from '../services/memory/index.ts';
import { BenchError, cpuSince, loadNow, median, type Check } from './harness.ts';
import { expectedLines, programArgs, type ProgramSpec } from './nanokernel-model.ts';
import type { Timing } from './state.ts';

const MiB = 2 ** 20;
const VMS = 4;
const KERNEL_SOURCE = fileURLToPath(new URL('../examples/nanokernel/kernel.s', import.meta.url));

// --- what is measured, and how often -----------------------------------------------------------

/**
 * The programs every VM runs. Frames saved: a sieve and a random walker side by side, stopped at
 * `stopAt`. Slowdown: a walker that fills its region once and ends, beside a long crc32 (its
 * buffer filled once, then read) — memory that stays put while the guests compute, as a fleet
 * of identical VMs has, and a run long enough for the scanner at the default rate to go over
 * every page a few times.
 */
const SIZES = {
  full: { memoryBytes: 64 * MiB, sieve: 1_000_000, walkerBytes: 8 * MiB, passes: 3, stopAt: 6_000_000, crcBytes: 3_500_000, tickInstructions: 1_000_000 },
  quick: { memoryBytes: 16 * MiB, sieve: 20_000, walkerBytes: 1 * MiB, passes: 1, stopAt: 300_000, crcBytes: 20_000, tickInstructions: 100_000 },
} as const;

const ROUNDS = {
  full: { saved: { warmups: 1, runs: 5 }, slowdown: { warmups: 1, runs: 5 } },
  quick: { saved: { warmups: 0, runs: 1 }, slowdown: { warmups: 0, runs: 1 } },
} as const;

/**
 * The scanner's rates while the guests run: present pages per tick, a tick every 1 M instructions
 * of each VM (--quick: every 100,000). The first is the rate docs/page-sharing.md recommends
 * (about KSM's default of 100 pages every 20 ms at this interpreter's speed); the second ten
 * times that.
 */
export const SHARING_RATES = [100, 1000] as const;
const GUEST_BUDGET = 2_000_000_000;

export interface SharingOptions {
  quick: boolean;
  onStep?: (label: string) => void;
}

/** Steps measureSharing reports through onStep (for the progress line). */
export function sharingStepCount(options: Pick<SharingOptions, 'quick'>): number {
  const r = ROUNDS[options.quick ? 'quick' : 'full'];
  return r.saved.warmups + r.saved.runs + (r.slowdown.warmups + r.slowdown.runs) * (1 + SHARING_RATES.length);
}

// --- figures -------------------------------------------------------------------------------------

/** A per-page cost: medians over the rounds. */
export interface PerPage {
  /** Pages each measurement covered. */
  pages: number;
  wallUs: number;
  cpuUs: number;
}

export interface SharingFigures {
  vms: number;
  guestBytes: number;
  bootArgs: string;
  /** Instructions each VM had retired when it was shared. */
  stoppedAt: number;
  saved: {
    /** Present pages over the four VMs. */
    presentPages: number;
    /** Pages with the same bytes at the same guest address in all four VMs (per VM). */
    commonPages: number;
    framesBefore: number;
    framesAfter: number;
    /** framesBefore − framesAfter (equals the sharer's framesSaved). */
    framesSaved: number;
    /** framesSaved ÷ (3 × commonPages): 1 = every common page went from four frames to one. */
    ofCommon: number;
    /** Process RSS before and after the scan (KiB, last round). */
    rssBeforeKiB: number;
    rssAfterKiB: number;
    /** Passes until a pass merged nothing. */
    passes: number;
    /** The sharer's counters after the scan (last round). */
    stats: PageSharingStats;
  };
  cost: {
    /** First pass: every present page hashed, none merged yet (merge only stable pages). */
    firstPass: PerPage;
    /** Second pass: hashed again, compared and merged. */
    mergePass: PerPage;
    /** A pass once everything is merged. */
    steadyPass: PerPage;
    /** pageHash64 alone over the same pages. */
    hash: PerPage;
    /** node's SHA-1 (native) over the same pages: the baseline. */
    sha1: PerPage;
    /** mergePass ÷ sha1 (wall). */
    mergePassPerSha1: number;
    cpuMergePassPerSha1: number;
  };
  slowdown: {
    /** What the VMs run from boot to power-off. */
    bootArgs: string;
    /** Instructions each VM retires from boot to power-off. */
    instructions: number;
    off: Timing;
    rates: {
      /** Present pages per tick; a tick every tickInstructions of each VM. */
      pagesPerTick: number;
      tickInstructions: number;
      run: Timing;
      /** run ÷ off − 1 (wall medians). */
      slowdown: number;
      cpuSlowdown: number;
      /** The sharer at the end of the last round. */
      merges: number;
      cowBreaks: number;
      framesSavedAtEnd: number;
      pagesScanned: number;
    }[];
  };
}

const round = (value: number, digits: number): number => (Number.isFinite(value) ? Number(value.toFixed(digits)) : value);

/** One measured interval: wall and process CPU time. */
type Sample = { wallMs: number; cpuMs: number };

/** Runs `fn`, returning its wall and process CPU time. */
function measure<T>(fn: () => T): { sample: Sample; value: T } {
  const [cpuStart, start] = [process.cpuUsage(), performance.now()];
  const value = fn();
  return { sample: { wallMs: performance.now() - start, cpuMs: cpuSince(cpuStart) }, value };
}

/** Medians (wall, CPU) and the wall range of some samples, as bench/state.ts reports its timings. */
function timing(samples: readonly Sample[]): Timing {
  const wall = samples.map((s) => s.wallMs).sort((a, b) => a - b);
  const [wallMs, cpuMs] = [median(wall), median(samples.map((s) => s.cpuMs))].map((value) => round(value, 3)) as [number, number];
  return { wallMs, cpuMs, minWallMs: round(wall[0]!, 3), maxWallMs: round(wall[wall.length - 1]!, 3), runs: samples.length, load: loadNow() };
}

function perPage(samples: readonly Sample[], pages: number): PerPage {
  return { pages, wallUs: round((median(samples.map((s) => s.wallMs)) * 1000) / pages, 3), cpuUs: round((median(samples.map((s) => s.cpuMs)) * 1000) / pages, 3) };
}

// --- the guests ----------------------------------------------------------------------------------

/** A program of the boot arguments: the model's, or crc32 (whose line is computed here with zlib). */
type Program = ProgramSpec | { program: 'crc32'; n: number };

interface Setup {
  image: GuestImage;
  memoryBytes: number;
  bootArgs: string;
  programs: Program[];
  stopAt: number;
}

/** The crc32 program's buffer: byte i is the top byte of the (i+1)-th LCG state after 0x12345678 (docs/nanokernel.md). */
function crc32Line(n: number): string {
  const bytes = new Uint8Array(n);
  let x = 0x1234_5678;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1_664_525) + 1_013_904_223) >>> 0;
    bytes[i] = x >>> 24;
  }
  return `crc32: ${n} bytes, crc 0x${crc32(bytes).toString(16).padStart(8, '0')}`;
}

const programLines = (spec: Program, pid: number): string[] =>
  spec.program === 'crc32' ? [crc32Line(spec.n), `[kernel] pid ${pid} (crc32) exited with code 0`] : expectedLines(spec, pid);

function setupOf(image: GuestImage, memoryBytes: number, programs: Program[], stopAt: number): Setup {
  const bootArgs = programs.map((spec) => (spec.program === 'crc32' ? `crc32 ${spec.n}` : programArgs(spec))).join(' ');
  return { image, memoryBytes, bootArgs, programs, stopAt };
}

interface Guest {
  vm: Vm;
  output: CaptureSink;
}

function bootGuests(hv: Hypervisor, setup: Setup): Guest[] {
  return Array.from({ length: VMS }, (_, i) => {
    const vm = hv.createVm({ memoryBytes: setup.memoryBytes, vcpus: 1, name: `share-${i}` });
    vm.loadImage(setup.image);
    const output = new CaptureSink();
    attachStandardDevices(vm, { output, bootArgs: setup.bootArgs });
    return { vm, output };
  });
}

/** Every line the programs must print, and a clean power-off, or a BenchError. */
function verify(label: string, setup: Setup, guest: Guest): void {
  const reason = guest.vm.stopReason;
  if (reason.kind !== 'halted' || reason.exitCode !== 0) {
    throw new BenchError('BV_BENCH_GUEST_FAILED', `${label}: ${guest.vm.name} did not power off with exit code 0 (${JSON.stringify(reason)})`);
  }
  const printed = new Set(guest.output.text().split('\n'));
  setup.programs.forEach((spec, i) => {
    for (const line of programLines(spec, i + 1)) {
      if (!printed.has(line)) throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: ${guest.vm.name} did not print '${line}'`);
    }
  });
}

const hostBytes = (setup: Setup): number => VMS * setup.memoryBytes + 16 * MiB;

// --- frames saved, and the scanner's cost ---------------------------------------------------------

function measureSaved(setup: Setup, rounds: { warmups: number; runs: number }, onStep?: (label: string) => void): { saved: SharingFigures['saved']; cost: SharingFigures['cost'] } {
  const samples = { first: [] as Sample[], merge: [] as Sample[], steady: [] as Sample[], hash: [] as Sample[], sha1: [] as Sample[] };
  let saved: SharingFigures['saved'] | null = null;
  let pages = 0;
  for (let r = 0; r < rounds.warmups + rounds.runs; r++) {
    const timed = r >= rounds.warmups;
    onStep?.(`sharing: four VMs, scanned to quiet${timed ? '' : ' (warm-up)'}`);
    const hv = createHypervisor({ hostMemoryBytes: hostBytes(setup) });
    const guests = bootGuests(hv, setup);
    const results = hv.run({ maxInstructions: setup.stopAt }, guests.map((g) => g.vm));
    for (const result of results) {
      if (result.reason.kind !== 'budget') throw new BenchError('BV_BENCH_GUEST_FAILED', `sharing: ${result.vm.name} stopped before instruction ${setup.stopAt} (${result.reason.kind})`);
    }
    const vms = guests.map((g) => g.vm);
    const first = vms[0]!.memory;
    let common = 0;
    const views: Uint8Array[] = [];
    for (const vm of vms) vm.memory.forEachPage(PageState.PRESENT, (gpn) => views.push(vm.memory.pageBytes(gpn)));
    first.forEachPage(PageState.PRESENT, (gpn) => {
      if (first.flagsOf(gpn) !== 0) return;
      const bytes = first.pageBytes(gpn);
      if (vms.slice(1).every((vm) => vm.memory.stateOf(gpn) === PageState.PRESENT && Buffer.compare(vm.memory.pageBytes(gpn), bytes) === 0)) common++;
    });
    pages = views.length;
    // The baselines over the same pages, before the scan changes any frame (alternating order).
    const hashAll = (): number => views.reduce((sum, view) => sum + pageHash64(view), 0);
    const sha1All = (): number => views.reduce((sum, view) => sum + createHash('sha1').update(view).digest().readUInt32LE(0), 0);
    for (const side of r % 2 === 0 ? ['hash', 'sha1'] as const : ['sha1', 'hash'] as const) {
      const { sample } = measure(side === 'hash' ? hashAll : sha1All);
      if (timed) samples[side].push(sample);
    }
    const rssBefore = processRss();
    const framesBefore = hv.poolStats().usedFrames;
    const sharer = new PageSharer(hv);
    const budget = pages + 1;
    const pass = (): { sample: Sample; merged: number } => {
      const { sample, value } = measure(() => sharer.scan(budget));
      return { sample, merged: value.merged };
    };
    const firstPass = pass();
    const mergePass = pass();
    let passes = 2;
    let steady = pass();
    passes++;
    while (steady.merged > 0 && passes < 10) {
      steady = pass();
      passes++;
    }
    if (timed) {
      samples.first.push(firstPass.sample);
      samples.merge.push(mergePass.sample);
      samples.steady.push(steady.sample);
    }
    const stats = sharer.stats();
    const framesAfter = hv.poolStats().usedFrames;
    if (stats.framesSaved !== framesBefore - framesAfter) {
      throw new BenchError('BV_BENCH_WRONG_RESULT', `sharing: the sharer says it saved ${stats.framesSaved} frames, the pool ${framesBefore - framesAfter}`);
    }
    saved = {
      presentPages: pages, commonPages: common, framesBefore, framesAfter, framesSaved: framesBefore - framesAfter,
      ofCommon: round((framesBefore - framesAfter) / (3 * common), 3), rssBeforeKiB: Math.round(rssBefore / 1024), rssAfterKiB: Math.round(processRss() / 1024), passes, stats,
    };
    // The guests still compute what they must after being shared.
    hv.run({ maxInstructions: GUEST_BUDGET }, vms);
    for (const guest of guests) verify('sharing (shared at a stop)', setup, guest);
    for (const vm of [...hv.vms]) hv.destroyVm(vm);
  }
  const sha1 = perPage(samples.sha1, pages);
  const mergePass = perPage(samples.merge, pages);
  return {
    saved: saved!,
    cost: {
      firstPass: perPage(samples.first, pages), mergePass, steadyPass: perPage(samples.steady, pages), hash: perPage(samples.hash, pages), sha1,
      mergePassPerSha1: round(mergePass.wallUs / sha1.wallUs, 3), cpuMergePassPerSha1: round(mergePass.cpuUs / sha1.cpuUs, 3),
    },
  };
}

// --- guest slowdown ------------------------------------------------------------------------------

function measureSlowdown(setup: Setup, tickInstructions: number, rounds: { warmups: number; runs: number }, onStep?: (label: string) => void): SharingFigures['slowdown'] {
  const sides = ['off', ...SHARING_RATES.map((rate) => `${rate}`)] as const;
  const samples = new Map<string, Sample[]>(sides.map((side) => [side, []]));
  const last = new Map<string, PageSharingStats>();
  let instructions = 0;
  for (let r = 0; r < rounds.warmups + rounds.runs; r++) {
    const timed = r >= rounds.warmups;
    for (const side of r % 2 === 0 ? sides : [...sides].reverse()) {
      onStep?.(`sharing: four VMs boot to power-off, scanner ${side === 'off' ? 'off' : `${side} pages / ${tickInstructions / 1e6} M instructions`}${timed ? '' : ' (warm-up)'}`);
      const hv = createHypervisor({ hostMemoryBytes: hostBytes(setup) });
      const guests = bootGuests(hv, setup);
      const sharer = side === 'off' ? null : new PageSharer(hv, { pagesPerScan: Number(side), scanEveryInstructions: tickInstructions });
      const { sample } = measure(() => hv.run({ maxInstructions: GUEST_BUDGET }, guests.map((g) => g.vm)));
      for (const guest of guests) verify(`sharing (scanner ${side})`, setup, guest);
      instructions = guests[0]!.vm.instructionsRetired;
      if (timed) samples.get(side)!.push(sample);
      if (sharer) last.set(side, sharer.stats());
      for (const vm of [...hv.vms]) hv.destroyVm(vm);
    }
  }
  const off = timing(samples.get('off')!);
  const offWall = median(samples.get('off')!.map((s) => s.wallMs));
  const offCpu = median(samples.get('off')!.map((s) => s.cpuMs));
  return {
    bootArgs: setup.bootArgs,
    instructions,
    off,
    rates: SHARING_RATES.map((rate) => {
      const runs = samples.get(`${rate}`)!;
      const stats = last.get(`${rate}`)!;
      return {
        pagesPerTick: rate, tickInstructions: tickInstructions, run: timing(runs),
        slowdown: round(median(runs.map((s) => s.wallMs)) / offWall - 1, 4), cpuSlowdown: round(median(runs.map((s) => s.cpuMs)) / offCpu - 1, 4),
        merges: stats.merges, cowBreaks: stats.cowBreaks, framesSavedAtEnd: stats.framesSaved, pagesScanned: stats.pagesScanned,
      };
    }),
  };
}

// --- entry ---------------------------------------------------------------------------------------

export function measureSharing(options: SharingOptions): SharingFigures {
  const size = SIZES[options.quick ? 'quick' : 'full'];
  const rounds = ROUNDS[options.quick ? 'quick' : 'full'];
  const image = assembleFile(KERNEL_SOURCE).image;
  const stopped = setupOf(image, size.memoryBytes, [
    { program: 'sieve', n: size.sieve },
    { program: 'walker', size: size.walkerBytes, pattern: { kind: 'random' }, passes: size.passes },
  ], size.stopAt);
  const running = setupOf(image, size.memoryBytes, [
    { program: 'walker', size: size.walkerBytes, pattern: { kind: 'seq' }, passes: 1 },
    { program: 'crc32', n: size.crcBytes },
  ], 0);
  const { saved, cost } = measureSaved(stopped, rounds.saved, options.onStep);
  const slowdown = measureSlowdown(running, size.tickInstructions, rounds.slowdown, options.onStep);
  return { vms: VMS, guestBytes: size.memoryBytes, bootArgs: stopped.bootArgs, stoppedAt: stopped.stopAt, saved, cost, slowdown };
}

// --- targets and output ------------------------------------------------------------------------

/** Targets (issue 10); printed as PASS/FAIL, never asserted. */
export const SHARING_TARGETS = {
  /** Frames saved ≥ this × 3 × the common pages (each common page: four frames become one). */
  savedOfCommon: 0.95,
  /** Guest slowdown with the scanner at the default rate (the first of SHARING_RATES). */
  maxSlowdown: 0.05,
} as const;

export function sharingChecks(figures: SharingFigures): Check[] {
  const t = SHARING_TARGETS;
  const atDefault = figures.slowdown.rates[0]!;
  return [
    {
      name: `page sharing, ${figures.vms} identical VMs: frames saved / (3 × common pages)`, target: `>= ${t.savedOfCommon}`,
      value: figures.saved.ofCommon, pass: figures.saved.ofCommon >= t.savedOfCommon, load: figures.slowdown.off.load,
    },
    {
      name: `page sharing scanner (${atDefault.pagesPerTick} pages / ${atDefault.tickInstructions / 1e6} M instructions) guest cost`, target: `<= ${t.maxSlowdown * 100} %`,
      value: atDefault.slowdown, cpuValue: atDefault.cpuSlowdown, pass: atDefault.slowdown <= t.maxSlowdown, load: atDefault.run.load,
    },
  ];
}

export function formatSharing(figures: SharingFigures): string[] {
  const { saved, cost, slowdown } = figures;
  const ms = (value: number): string => (value < 10 ? value.toFixed(3) : value.toFixed(1));
  const t = (timing: Timing): string => `${ms(timing.wallMs)} ms (CPU ${ms(timing.cpuMs)}; ${ms(timing.minWallMs)}–${ms(timing.maxWallMs)}, ${timing.runs} runs)`;
  const us = (p: PerPage): string => `${p.wallUs.toFixed(2)} µs (CPU ${p.cpuUs.toFixed(2)})`;
  const percent = (value: number): string => `${value >= 0 ? '+' : ''}${(value * 100).toFixed(1)} %`;
  const n = (value: number): string => value.toLocaleString('en-US');
  return [
    `page sharing (issue 10): ${figures.vms} nanokernel VMs of ${figures.guestBytes / MiB} MiB booted separately, '${figures.bootArgs}'; medians, wall time with process CPU time`,
    `  shared at instruction ${n(figures.stoppedAt)} of each VM (scanned until a pass merged nothing, ${saved.passes} passes):`,
    `    present pages ${n(saved.presentPages)}, common to all ${figures.vms} VMs ${n(saved.commonPages)} per VM`,
    `    host frames in use ${n(saved.framesBefore)} → ${n(saved.framesAfter)}: ${n(saved.framesSaved)} saved = ${saved.ofCommon.toFixed(3)} × 3 × common pages (${saved.stats.merges} merges, ${saved.stats.zeroPageMerges} of zero pages)`,
    `    process RSS ${n(saved.rssBeforeKiB)} KiB → ${n(saved.rssAfterKiB)} KiB`,
    `  scanner cost per present page (${n(cost.firstPass.pages)} pages):`,
    `    first pass (hash only)       ${us(cost.firstPass)}`,
    `    second pass (hash, compare, merge) ${us(cost.mergePass)}`,
    `    steady pass (all merged)     ${us(cost.steadyPass)}`,
    `    pageHash64 alone             ${us(cost.hash)}`,
    `    node SHA-1 (native), baseline ${us(cost.sha1)}; second pass / SHA-1 ${cost.mergePassPerSha1.toFixed(2)} (CPU ${cost.cpuMergePassPerSha1.toFixed(2)})`,
    `  ${figures.vms} VMs from boot to power-off, '${slowdown.bootArgs}' (${n(slowdown.instructions)} instructions each), scanner off: ${t(slowdown.off)}`,
    ...slowdown.rates.map((rate) =>
      `    scanner ${rate.pagesPerTick} pages / ${rate.tickInstructions / 1e6} M instructions: ${t(rate.run)}, slowdown ${percent(rate.slowdown)} (CPU ${percent(rate.cpuSlowdown)}); ${n(rate.pagesScanned)} pages scanned, ${n(rate.merges)} merges, ${n(rate.cowBreaks)} copy-on-write breaks, ${n(rate.framesSavedAtEnd)} frames saved at the end`),
  ];
}
