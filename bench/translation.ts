/**
 * The translation benchmarks (issue 4; method and figures in docs/performance.md): each workload
 * runs one guest under several MMU configurations in the same bench run — shadow page tables with
 * and without traces, with and without batched population, with and without large pages, and
 * nested walks — and the figures compared are page walks (vm.mmu.stats.walks) and guest MIPS.
 * Every run is checked against a plain-JS model of what the guest computes; the model's time is
 * reported like a JS baseline's but compares nothing.
 */
import { fileURLToPath } from 'node:url';
import { assembleFile } from '../guest-isa/assembler.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { attachStandardDevices, CaptureSink, runWithResets } from '../devices/index.ts';
import type { Hypervisor } from '../kernel/index.ts';
import { assembleGuest, BenchError, cpuSince, mmuCounters, runGuestProgram, tlbCounters, verifyAgainstJs } from './harness.ts';
import type { BenchSize, Check, GuestProgram, GuestRun, JsRun, VariantFigures, VmSettings, Workload, WorkloadFigures } from './harness.ts';
import { expectedLines, programArgs } from './nanokernel-model.ts';
import type { ProgramSpec } from './nanokernel-model.ts';

const MiB = 2 ** 20;
const guest = (name: string): string => fileURLToPath(new URL(`./guests/${name}`, import.meta.url));
const KERNEL_SOURCE = fileURLToPath(new URL('../examples/nanokernel/kernel.s', import.meta.url));

/** Shared by the guests (prepended as `.equ`) and the JS models. */
const LCG_SEED = 12345;
const LCG_MUL = 1664525;
const LCG_ADD = 1013904223;
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

const timed = <T>(compute: () => T): { ms: number; cpuMs: number; value: T } => {
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  const value = compute();
  return { ms: performance.now() - start, cpuMs: cpuSince(cpuStart), value };
};

// --- 1. Context switches: the nanokernel, 8 processes, a flush on every switch ------------------

/** The kernel flushes every translation on each context switch (as an ASID-unaware kernel would). */
const CS_SHADOW = 'shadow';
const CS_NO_TRACES = 'shadow no-traces';
const CS_NESTED = 'nested';
/** Reference: the kernel as it normally runs (flush=asid: switches flush nothing). */
const CS_ASID_KERNEL = 'shadow, flush=asid';

const CONTEXT_SWITCH_VARIANTS: Record<string, { vm: VmSettings; flush: 'always' | 'asid' }> = {
  [CS_SHADOW]: { vm: { mmu: { mode: 'shadow', traces: true } }, flush: 'always' },
  [CS_NO_TRACES]: { vm: { mmu: { mode: 'shadow', traces: false } }, flush: 'always' },
  [CS_NESTED]: { vm: { mmu: { mode: 'nested' } }, flush: 'always' },
  [CS_ASID_KERNEL]: { vm: { mmu: { mode: 'shadow', traces: true } }, flush: 'asid' },
};

/** A short slice (the kernel's minimum is 1000) makes thousands of switches in a few M instructions. */
const TIME_SLICE = 2000;
const NANOKERNEL_MEMORY = 64 * MiB;

/** Eight processes — the kernel's limit — mixing walkers, sieves and yielding pings. */
function contextSwitchPrograms({ quick }: BenchSize): ProgramSpec[] {
  return quick
    ? [
        { program: 'walker', size: 256 * 1024, pattern: { kind: 'random' }, passes: 1 },
        { program: 'sieve', n: 20_000 },
        { program: 'walker', size: 128 * 1024, pattern: { kind: 'seq' }, passes: 1 },
        { program: 'ping', n: 3 },
        { program: 'walker', size: 64 * 1024, pattern: { kind: 'random' }, passes: 2 },
        { program: 'sieve', n: 10_000 },
        { program: 'ping', n: 3 },
        { program: 'walker', size: 128 * 1024, pattern: { kind: 'stride', stride: 4096 }, passes: 2 },
      ]
    : [
        { program: 'walker', size: 2 * MiB, pattern: { kind: 'random' }, passes: 2 },
        { program: 'sieve', n: 200_000 },
        { program: 'walker', size: MiB, pattern: { kind: 'seq' }, passes: 4 },
        { program: 'ping', n: 20 },
        { program: 'walker', size: 512 * 1024, pattern: { kind: 'random' }, passes: 4 },
        { program: 'sieve', n: 100_000 },
        { program: 'ping', n: 20 },
        { program: 'walker', size: MiB, pattern: { kind: 'stride', stride: 4096 }, passes: 8 },
      ];
}

const KERNEL_STATS = /^\[kernel\] stats: (\d+) context switches, (\d+) preemptions, (\d+) syscalls, (\d+) page faults, /m;

/**
 * Boots the nanokernel on the standard devices with these boot arguments; only the run is timed.
 * The result is the kernel's exit code; guestStats are its stats line.
 */
function runNanokernel(hv: Hypervisor, label: string, image: GuestImage, bootArgs: string, settings: VmSettings): GuestRun {
  const vm = hv.createVm({ memoryBytes: NANOKERNEL_MEMORY, name: `bench-${label}`, ...settings });
  try {
    vm.loadImage(image);
    const output = new CaptureSink();
    const devices = attachStandardDevices(vm, { output, bootArgs });
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000_000 });
    const ms = performance.now() - start;
    const cpuMs = cpuSince(cpuStart);
    const text = output.text();
    if (run.reason.kind !== 'halted') {
      const why = run.reason.kind === 'guest-error' || run.reason.kind === 'host-error' ? `${run.reason.kind}: ${run.reason.message}` : run.reason.kind;
      throw new BenchError('BV_BENCH_GUEST_FAILED', `${label}: the nanokernel stopped without powering off (${why})`);
    }
    const stats = KERNEL_STATS.exec(text);
    if (!stats) throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: the nanokernel printed no stats line`);
    const [contextSwitches, preemptions, syscalls, pageFaults] = stats.slice(1, 5).map(Number) as [number, number, number, number];
    return {
      ms, cpuMs, instructions: run.instructions, result: run.reason.exitCode >>> 0, memory: null, ...tlbCounters(vm), mmu: mmuCounters(vm),
      guestStats: { contextSwitches, preemptions, syscalls, pageFaults }, console: text,
    };
  } finally {
    hv.destroyVm(vm);
  }
}

/** Every program line the model predicts, each exactly once, and a clean summary. */
function verifyNanokernel(label: string, guest: GuestRun, js: JsRun): void {
  if (guest.result !== js.result) throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: the nanokernel exited with code ${guest.result}, expected ${js.result}`);
  const printed = (guest.console ?? '').split('\n').filter((line) => !line.startsWith('[kernel] ') && !line.startsWith('nanokernel: ') && line !== '');
  const programLines = (guest.console ?? '').split('\n').filter((line) => /^\[kernel\] pid \d+ \(/.test(line));
  const expected = [...js.lines!].sort();
  const actual = [...printed, ...programLines].sort();
  const missing = expected.filter((line) => !actual.includes(line));
  const extra = actual.filter((line) => !expected.includes(line));
  if (missing.length > 0 || extra.length > 0 || actual.length !== expected.length) {
    throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: the programs' output differs from the JS model (missing: ${JSON.stringify(missing[0] ?? '')}, unexpected: ${JSON.stringify(extra[0] ?? '')})`);
  }
}

const contextSwitchWorkload: Workload<{ image: GuestImage; programs: ProgramSpec[] }> = {
  name: 'context-switch',
  description: `nanokernel, 8 processes (walkers, sieves, pings), slice ${TIME_SLICE}, sfence zero, zero on every switch (flush=always)`,
  variants: Object.keys(CONTEXT_SWITCH_VARIANTS),
  setup(size) {
    return { image: assembleFile(KERNEL_SOURCE).image, programs: contextSwitchPrograms(size) };
  },
  run(hv, { image, programs }, variant) {
    const { vm, flush } = CONTEXT_SWITCH_VARIANTS[variant]!;
    const bootArgs = `slice=${TIME_SLICE} flush=${flush} ${programs.map(programArgs).join(' ')}`;
    return runNanokernel(hv, `context-switch ${variant}`, image, bootArgs, vm);
  },
  verify(_prepared, variant, guest, js) {
    verifyNanokernel(`context-switch ${variant}`, guest, js);
  },
  jsBaseline({ programs }) {
    const { ms, cpuMs, value } = timed(() => programs.flatMap((spec, index) => expectedLines(spec, index + 1)));
    return { ms, cpuMs, result: 0, memory: null, lines: value };
  },
};

// --- 2. Sequential scan of 64 MiB: batched population ------------------------------------------

const SCAN_BATCHED = 'shadow batch=16';
const SCAN_UNBATCHED = 'shadow batch=0';
const SCAN_NESTED = 'nested';

const SCAN_VARIANTS: Record<string, VmSettings> = {
  [SCAN_BATCHED]: { mmu: { mode: 'shadow', batch: 16 } },
  [SCAN_UNBATCHED]: { mmu: { mode: 'shadow', batch: 0 } },
  [SCAN_NESTED]: { mmu: { mode: 'nested' } },
};

interface ScanParams {
  bytes: number;
  stride: number;
  passes: number;
}

/** bench/guests/scan.s in JS: only the words the scan touches. */
function scanJs({ bytes, stride, passes }: ScanParams): number {
  const words = new Int32Array(bytes / stride);
  let checksum = FNV_OFFSET;
  let k = 0;
  for (let pass = 0; pass < passes; pass++) {
    for (let i = 0; i < words.length; i++) {
      const value = words[i]!;
      checksum = Math.imul(checksum ^ value, FNV_PRIME);
      k++;
      words[i] = value + k;
    }
  }
  return checksum >>> 0;
}

const scanWorkload: Workload<{ params: ScanParams; program: GuestProgram }> = {
  name: 'seq-scan',
  description: 'read-modify-write of one word per 64 bytes over 64 MiB of fresh 4 KiB pages, 2 passes',
  variants: Object.keys(SCAN_VARIANTS),
  setup({ quick }) {
    const params: ScanParams = { bytes: (quick ? 4 : 64) * MiB, stride: 64, passes: 2 };
    const image = assembleGuest(guest('scan.s'), { SCAN_BYTES: params.bytes, STRIDE: params.stride, PASSES: params.passes, FNV_OFFSET, FNV_PRIME });
    // Code in the first 4 MiB, the scanned area, then the page tables.
    return { params, program: { image, memoryBytes: params.bytes + 8 * MiB } };
  },
  run(hv, { program }, variant) {
    return runGuestProgram(hv, `seq-scan ${variant}`, { ...program, vm: SCAN_VARIANTS[variant]! });
  },
  verify(_prepared, variant, guest, js) {
    verifyAgainstJs(`seq-scan ${variant}`, guest, js);
  },
  jsBaseline({ params }) {
    const { ms, cpuMs, value } = timed(() => scanJs(params));
    return { ms, cpuMs, result: value, memory: null };
  },
};

// --- 3. Random access over 256 MiB: large pages ------------------------------------------------

const RANDOM_SHADOW_LARGE = 'shadow large';
const RANDOM_SHADOW_SMALL = 'shadow 4K';
const RANDOM_NESTED_LARGE = 'nested large';
const RANDOM_NESTED_SMALL = 'nested 4K';

/** Large: the guest maps RAM with superpages and the VM backs every region with a host run. */
const RANDOM_VARIANTS: Record<string, { vm: VmSettings; large: boolean }> = {
  [RANDOM_SHADOW_LARGE]: { vm: { mmu: { mode: 'shadow' }, largePages: 'always' }, large: true },
  [RANDOM_SHADOW_SMALL]: { vm: { mmu: { mode: 'shadow' }, largePages: 'off' }, large: false },
  [RANDOM_NESTED_LARGE]: { vm: { mmu: { mode: 'nested' }, largePages: 'always' }, large: true },
  [RANDOM_NESTED_SMALL]: { vm: { mmu: { mode: 'nested' }, largePages: 'off' }, large: false },
};

interface RandomParams {
  wordsLog2: number;
  steps: number;
}

/** Guest RAM of the random-access guest: code region, area, page-table region. */
const randomMemoryBytes = ({ wordsLog2 }: RandomParams): number => (4 << wordsLog2) + 8 * MiB;

/** The host pool the bench needs for this workload (one VM at a time). */
export const RANDOM_ACCESS_POOL_BYTES = randomMemoryBytes({ wordsLog2: 26, steps: 0 }) + 56 * MiB;

/** bench/guests/random.s in JS: walker.s's update loop over an area that starts zeroed. */
function randomJs({ wordsLog2, steps }: RandomParams): number {
  const area = new Int32Array(1 << wordsLog2);
  const shift = 32 - wordsLog2;
  let state = LCG_SEED;
  let checksum = 0;
  for (let step = 0; step < steps; step++) {
    state = (Math.imul(state, LCG_MUL) + LCG_ADD) | 0;
    const index = state >>> shift;
    const value = area[index]!;
    checksum = (checksum + value) | 0;
    area[index] = value ^ state;
  }
  return checksum >>> 0;
}

const randomWorkload: Workload<{ params: RandomParams; images: Map<boolean, GuestImage> }> = {
  name: 'random-access',
  description: '1 Mi random read-modify-write steps over 256 MiB of fresh memory, mapped with 4 MiB or 4 KiB pages',
  variants: Object.keys(RANDOM_VARIANTS),
  setup({ quick }) {
    // --quick: 16 MiB and 16 Ki steps.
    const params: RandomParams = quick ? { wordsLog2: 22, steps: 1 << 14 } : { wordsLog2: 26, steps: 1 << 20 };
    const images = new Map<boolean, GuestImage>();
    for (const large of [false, true]) {
      const defines = { LARGE: large ? 1 : 0, AREA_WORDS_LOG2: params.wordsLog2, STEPS: params.steps, LCG_SEED, LCG_MUL, LCG_ADD };
      images.set(large, assembleGuest(guest('random.s'), defines));
    }
    return { params, images };
  },
  run(hv, { params, images }, variant) {
    const { vm, large } = RANDOM_VARIANTS[variant]!;
    return runGuestProgram(hv, `random-access ${variant}`, { image: images.get(large)!, memoryBytes: randomMemoryBytes(params), vm });
  },
  verify(_prepared, variant, guest, js) {
    verifyAgainstJs(`random-access ${variant}`, guest, js);
  },
  jsBaseline({ params }) {
    const { ms, cpuMs, value } = timed(() => randomJs(params));
    return { ms, cpuMs, result: value, memory: null };
  },
};

/** The issue-4 workloads, in the order the bench runs them. */
export const TRANSLATION_WORKLOADS: readonly Workload[] = [contextSwitchWorkload, scanWorkload, randomWorkload];

// --- Comparisons --------------------------------------------------------------------------------

/** Two variants of one workload side by side: how many times fewer walks, how much faster. */
export interface Comparison {
  workload: string;
  /** The technique compared, or (shadow vs nested) the guest's page sizes. */
  label: string;
  baseline: { variant: string; walks: number; mips: number };
  candidate: { variant: string; walks: number; mips: number };
  /** baseline walks ÷ candidate walks (Infinity when the candidate walks 0 times). */
  walkRatio: number;
  /** candidate MIPS ÷ baseline MIPS. */
  mipsRatio: number;
}

/** The technique each workload isolates: candidate = technique on, baseline = off. */
const TECHNIQUE_PAIRS: readonly { workload: string; label: string; baseline: string; candidate: string }[] = [
  { workload: 'context-switch', label: 'traces (flushes elided) vs flush everything', baseline: CS_NO_TRACES, candidate: CS_SHADOW },
  { workload: 'seq-scan', label: 'batched population (16) vs none', baseline: SCAN_UNBATCHED, candidate: SCAN_BATCHED },
  { workload: 'random-access', label: 'large pages vs 4 KiB pages, shadow', baseline: RANDOM_SHADOW_SMALL, candidate: RANDOM_SHADOW_LARGE },
  { workload: 'random-access', label: 'large pages vs 4 KiB pages, nested', baseline: RANDOM_NESTED_SMALL, candidate: RANDOM_NESTED_LARGE },
];

/** Shadow (candidate) against nested (baseline) on the same guest and page size (the label). */
const SHADOW_NESTED_PAIRS: readonly { workload: string; label: string; baseline: string; candidate: string }[] = [
  { workload: 'context-switch', label: '4 KiB (user), 4 MiB (kernel)', baseline: CS_NESTED, candidate: CS_SHADOW },
  { workload: 'seq-scan', label: '4 KiB', baseline: SCAN_NESTED, candidate: SCAN_BATCHED },
  { workload: 'random-access', label: '4 MiB', baseline: RANDOM_NESTED_LARGE, candidate: RANDOM_SHADOW_LARGE },
  { workload: 'random-access', label: '4 KiB', baseline: RANDOM_NESTED_SMALL, candidate: RANDOM_SHADOW_SMALL },
];

const round = (value: number, digits: number): number => (Number.isFinite(value) ? Number(value.toFixed(digits)) : value);

function findVariant(workloads: readonly WorkloadFigures[], workload: string, variant: string): VariantFigures | undefined {
  return workloads.find((w) => w.name === workload)?.variants.find((v) => v.variant === variant);
}

function compare(workloads: readonly WorkloadFigures[], pairs: typeof TECHNIQUE_PAIRS): Comparison[] {
  const comparisons: Comparison[] = [];
  for (const pair of pairs) {
    const baseline = findVariant(workloads, pair.workload, pair.baseline);
    const candidate = findVariant(workloads, pair.workload, pair.candidate);
    if (!baseline || !candidate) continue;
    comparisons.push({
      workload: pair.workload,
      label: pair.label,
      baseline: { variant: baseline.variant, walks: baseline.mmu.walks, mips: baseline.mips },
      candidate: { variant: candidate.variant, walks: candidate.mmu.walks, mips: candidate.mips },
      walkRatio: round(candidate.mmu.walks === 0 ? Infinity : baseline.mmu.walks / candidate.mmu.walks, 2),
      mipsRatio: round(candidate.mips / baseline.mips, 3),
    });
  }
  return comparisons;
}

export function techniqueComparisons(workloads: readonly WorkloadFigures[]): Comparison[] {
  return compare(workloads, TECHNIQUE_PAIRS);
}

export function shadowNestedComparisons(workloads: readonly WorkloadFigures[]): Comparison[] {
  return compare(workloads, SHADOW_NESTED_PAIRS);
}

/** Targets of issue 4, printed as PASS/FAIL. */
export const TRANSLATION_TARGETS = {
  /** Walks without traces (every guest flush drops the shadow) ÷ walks with traces. */
  contextSwitchWalkRatio: 5,
} as const;

export function translationChecks(workloads: readonly WorkloadFigures[]): Check[] {
  const checks: Check[] = [];
  const traces = findVariant(workloads, 'context-switch', CS_SHADOW);
  const noTraces = findVariant(workloads, 'context-switch', CS_NO_TRACES);
  if (traces && noTraces) {
    const ratio = round(traces.mmu.walks === 0 ? Infinity : noTraces.mmu.walks / traces.mmu.walks, 2);
    const target = TRANSLATION_TARGETS.contextSwitchWalkRatio;
    checks.push({ name: 'context-switch walks, no traces ÷ traces', target: `>= ${target}`, value: ratio, pass: ratio >= target, load: contextSwitchLoad(workloads) });
  }
  // With traces, the kernel's flush on every switch must drop nothing: the MMU drops exactly as
  // many TLB entries as for the same programs under a kernel that never flushes on a switch.
  const asidKernel = findVariant(workloads, 'context-switch', CS_ASID_KERNEL);
  if (traces && asidKernel) {
    const extra = traces.mmu.translationsInvalidated - asidKernel.mmu.translationsInvalidated;
    checks.push({ name: 'context-switch TLB entries dropped by switch flushes (traces)', target: '= 0', value: extra, pass: extra === 0, load: contextSwitchLoad(workloads) });
  }
  return checks;
}

const contextSwitchLoad = (workloads: readonly WorkloadFigures[]): number => workloads.find((w) => w.name === 'context-switch')?.load ?? 0;
