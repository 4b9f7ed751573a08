/**
 * The bench harness: what a workload is, how a guest run is timed and checked, and how runs are
 * interleaved and reduced to figures. bench/run.ts is the command line around it;
 * bench/workloads.ts (interpreter speed) and bench/translation.ts (MMU configurations, issue 4)
 * hold the entries.
 *
 * Method (docs/performance.md): every workload runs its variants (paging off and on, or MMU
 * configurations) and its plain-JS baseline in the same process, round after round, alternating
 * the variant order each round so that drift (thermal, other tenants of the machine) falls on all
 * of them alike.
 * The first rounds are JIT warm-up and are not counted; the figure is the median of the timed
 * rounds. A guest run whose result differs from the JS result is an error, never a figure.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { loadavg } from 'node:os';
import { assemble } from '../guest-isa/assembler.ts';
import { Hcall, HcallStatus, Reg } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import type { Hypervisor, VmConfig, Vm } from '../kernel/index.ts';

/** A bench failure that is not a figure: bad usage, a wrong guest result, a guest that did not halt. */
export class BenchError extends BvError {}

/** How big the runs are: the full bench, or the small smoke-test version. */
export interface BenchSize {
  quick: boolean;
}

/** One timed guest run. */
export interface GuestRun {
  /** Wall time of the run itself (not VM creation or image loading). */
  ms: number;
  /** Process CPU time (user + system, all threads) over the same interval. */
  cpuMs: number;
  instructions: number;
  /** The value the guest exited with (u32). */
  result: number;
  /** Guest memory captured after the run, when the workload asks for it (for verify). */
  memory: Uint8Array | null;
  /** vcpu.stats.tlbMisses summed over vCPUs: accesses that left the inline TLB compare. */
  tlbMisses: number;
  /** vcpu.walker.walks summed over vCPUs: Sv32 page-table walks. */
  pageWalks: number;
  /** The MMU's and TLBs' counters at the end of the run. */
  mmu: MmuCounters;
  /** Figures the guest reported about itself (the nanokernel's stats line), by name. */
  guestStats: Record<string, number>;
  /** What a guest with a console printed (for verify), when it has one. */
  console?: string;
}

/** What the translation benchmarks (docs/performance.md, issue 4) compare, from one run. */
export interface MmuCounters {
  /** vm.mmu.stats.walks: TLB misses the MMU answered by walking the guest's page tables. */
  walks: number;
  /** TLB misses answered from the shadow page tables without a walk. */
  shadowHits: number;
  /** TLB misses answered by a large mapping (a guest superpage over a host run, T-2). */
  largeHits: number;
  /** Shadow entries filled by batched population. */
  batchFilled: number;
  /** Guest sfences the MMU elided (shadow with traces: nothing is stale). */
  flushesElided: number;
  /** Guest sfences that dropped every shadow address space (shadow without traces). */
  flushesFull: number;
  /** vm.translationsInvalidated: TLB entries the MMU dropped (traced page-table writes, shadow flushes). */
  translationsInvalidated: number;
  /** Whole-TLB flushes, summed over vCPUs. */
  tlbFullFlushes: number;
  /** Guest regions backed by one aligned 4 MiB host run (vm.memory.largePageStats.runsAllocated). */
  hostRuns: number;
  /** Interrupts taken, summed over vCPUs. */
  interrupts: number;
}

/** Reads the MMU counters of a VM after a run. */
export function mmuCounters(vm: Vm): MmuCounters {
  const stats = vm.mmu.stats;
  let tlbFullFlushes = 0;
  let interrupts = 0;
  for (const vcpu of vm.vcpus) {
    tlbFullFlushes += vcpu.tlb.fullFlushes;
    interrupts += vcpu.stats.interrupts;
  }
  return {
    walks: stats.walks, shadowHits: stats.shadowHits, largeHits: stats.largeHits, batchFilled: stats.batchFilled,
    flushesElided: stats.flushesElided, flushesFull: stats.flushesFull, translationsInvalidated: vm.translationsInvalidated,
    tlbFullFlushes, hostRuns: vm.memory.largePageStats.runsAllocated, interrupts,
  };
}

/** The VM settings a workload variant chooses (translation mode, large-page policy). */
export type VmSettings = Pick<VmConfig, 'mmu' | 'largePages' | 'tier'>;

/** One timed run of the plain-JS baseline. */
export interface JsRun {
  ms: number;
  /** Process CPU time over the same interval. */
  cpuMs: number;
  result: number;
  memory: Uint8Array | null;
  /** Lines a printing guest must print (for verify), when it prints. */
  lines?: string[];
}

/**
 * A bench entry. `setup` runs once (untimed); then each round runs `jsBaseline` once and `run`
 * once per variant, and every guest run goes through `verify` against that round's JS run.
 */
export interface Workload<Prepared = unknown> {
  readonly name: string;
  readonly description: string;
  /** The configurations measured against each other (e.g. 'paging=off', 'paging=on', or 'shadow', 'nested'). */
  readonly variants: readonly string[];
  setup(size: BenchSize): Prepared;
  /** One guest run of a variant on a fresh VM of `hv`, destroyed before returning. */
  run(hv: Hypervisor, prepared: Prepared, variant: string): GuestRun;
  /** Throws BenchError when the guest's result is not the JS result. */
  verify(prepared: Prepared, variant: string, guest: GuestRun, js: JsRun): void;
  /** The same algorithm in plain JavaScript (for a translation workload: a model of the guest's results). */
  jsBaseline(prepared: Prepared): JsRun;
  /** The guest program of a variant, where the workload is one program per variant (bench/warmup.ts runs it in windows). */
  program?(prepared: Prepared, variant: string): GuestProgram;
}

/** Stop a guest that runs away after this many instructions (a full bench run needs < 100 M). */
const MAX_GUEST_INSTRUCTIONS = 2_000_000_000;

const hex = (value: number): string => `0x${(value >>> 0).toString(16)}`;

export interface GuestProgram {
  image: GuestImage;
  memoryBytes: number;
  /** Translation and large-page settings of the VM (the kernel's defaults when absent). */
  vm?: VmSettings;
  /** Guest-virtual range to copy out after the run, for verification. */
  capture?: { va: number; length: number };
}

/**
 * Assembles a bench guest with `.equ` definitions prepended (`defines` → `.equ NAME, 0x…`, the
 * value as an unsigned 32-bit word); `.include`s resolve next to the source file.
 */
export function assembleGuest(path: string, defines: Record<string, number>): GuestImage {
  const header = Object.entries(defines).map(([name, value]) => `.equ ${name}, ${hex(value)}\n`).join('');
  return assemble(header + readFileSync(path, 'utf8'), { fileName: path }).image;
}

/**
 * Runs a guest program on a fresh VM until it exits through hcall EXIT (a0 = 1, a1 = result);
 * only `hv.run` is timed. Anything else (guest error, runaway) is a BenchError.
 */
export function runGuestProgram(hv: Hypervisor, label: string, program: GuestProgram): GuestRun {
  const vm = hv.createVm({ memoryBytes: program.memoryBytes, name: `bench-${label}`, ...program.vm });
  try {
    vm.loadImage(program.image);
    const exit: { result: number | null } = { result: null };
    vm.onHypercall(Hcall.EXIT, (vcpu) => {
      exit.result = vcpu.regs[Reg.A1]! >>> 0;
      vcpu.regs[Reg.A0] = HcallStatus.OK;
      vm.powerOff(0);
    });
    const jitBefore = hv.jitStats();
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    const [outcome] = hv.run({ maxInstructions: MAX_GUEST_INSTRUCTIONS }, [vm]);
    const ms = performance.now() - start;
    const cpuMs = cpuSince(cpuStart);
    const jitAfter = hv.jitStats();
    const reason = outcome!.reason;
    const result = exit.result;
    if (reason.kind !== 'halted' || result === null) {
      const why = reason.kind === 'guest-error' || reason.kind === 'host-error' ? `${reason.kind}: ${reason.message}` : reason.kind;
      throw new BenchError('BV_BENCH_GUEST_FAILED', `${label}: the guest stopped without exiting (${why})`);
    }
    const { tlbMisses, pageWalks } = tlbCounters(vm);
    const counters = mmuCounters(vm);
    // After the counters: reading guest memory through the page tables walks them too.
    let memory: Uint8Array | null = null;
    if (program.capture) {
      memory = vm.readVirtual(vm.vcpus[0]!, program.capture.va, program.capture.length);
      if (!memory) throw new BenchError('BV_BENCH_GUEST_FAILED', `${label}: cannot read the guest's result memory`);
    }
    // The compiled tier's cost inside this (timed) run: every run compiles afresh (a destroyed VM's code is gone).
    const guestStats: Record<string, number> = vm.tier === 'jit'
      ? { jitRegions: jitAfter.regionsCompiled - jitBefore.regionsCompiled, jitCompileMs: round(jitAfter.compileMs - jitBefore.compileMs, 3), jitCompiledShare: round((jitAfter.retiredCompiled - jitBefore.retiredCompiled) / outcome!.instructions, 4) }
      : {};
    return { ms, cpuMs, instructions: outcome!.instructions, result, memory, tlbMisses, pageWalks, mmu: counters, guestStats };
  } finally {
    hv.destroyVm(vm);
  }
}

/** TLB misses and page walks (walker.walks) summed over a VM's vCPUs. */
export function tlbCounters(vm: Vm): { tlbMisses: number; pageWalks: number } {
  let tlbMisses = 0;
  let pageWalks = 0;
  for (const vcpu of vm.vcpus) {
    tlbMisses += vcpu.stats.tlbMisses;
    pageWalks += vcpu.walker.walks;
  }
  return { tlbMisses, pageWalks };
}

/** The standard check: the exit value, and the captured memory when both sides have one. */
export function verifyAgainstJs(label: string, guest: GuestRun, js: JsRun): void {
  if (guest.result !== js.result) {
    throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: the guest computed ${hex(guest.result)}, plain JS ${hex(js.result)}`);
  }
  if (guest.memory && js.memory) {
    const length = Math.min(guest.memory.length, js.memory.length);
    for (let i = 0; i < length; i++) {
      if (guest.memory[i] !== js.memory[i]) {
        throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: guest memory differs from plain JS at byte ${i} of the result`);
      }
    }
    if (guest.memory.length !== js.memory.length) {
      throw new BenchError('BV_BENCH_WRONG_RESULT', `${label}: the guest result is ${guest.memory.length} bytes, plain JS ${js.memory.length}`);
    }
  }
}

/** Paging variants, as the guest workloads name them. */
export const PAGING_OFF = 'paging=off';
export const PAGING_ON = 'paging=on';
/** The same under the compiled tier (VmConfig.tier 'jit'). */
export const JIT_PAGING_OFF = 'jit paging=off';
export const JIT_PAGING_ON = 'jit paging=on';

/**
 * A workload made of one guest source run with paging off and on: the common case, so that an
 * entry is only its source, its sizes and its JS baseline.
 */
export function pagingWorkload<Params>(spec: {
  name: string;
  description: string;
  source: string;
  memoryBytes: number;
  params(size: BenchSize): Params;
  /** The `.equ` definitions besides PAGING. */
  defines(params: Params): Record<string, number>;
  capture?: { va: number; length: number };
  /** Optional check of the JS baseline itself against an independent implementation. */
  selfCheck?(params: Params, js: JsRun): void;
  js(params: Params): { result: number; memory?: Uint8Array };
}): Workload<{ params: Params; programs: Map<string, GuestProgram> }> {
  const jsBaseline = (params: Params): JsRun => {
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    const out = spec.js(params);
    const ms = performance.now() - start;
    return { ms, cpuMs: cpuSince(cpuStart), result: out.result >>> 0, memory: out.memory ?? null };
  };
  return {
    name: spec.name,
    description: spec.description,
    variants: [PAGING_OFF, PAGING_ON, JIT_PAGING_OFF, JIT_PAGING_ON],
    setup(size) {
      const params = spec.params(size);
      const programs = new Map<string, GuestProgram>();
      for (const [variant, paging, tier] of [[PAGING_OFF, 0, 'interp'], [PAGING_ON, 1, 'interp'], [JIT_PAGING_OFF, 0, 'jit'], [JIT_PAGING_ON, 1, 'jit']] as const) {
        const image = assembleGuest(spec.source, { PAGING: paging, ...spec.defines(params) });
        programs.set(variant, { image, memoryBytes: spec.memoryBytes, vm: { tier }, ...(spec.capture ? { capture: spec.capture } : {}) });
      }
      if (spec.selfCheck) spec.selfCheck(params, jsBaseline(params));
      return { params, programs };
    },
    run(hv, prepared, variant) {
      return runGuestProgram(hv, `${spec.name} ${variant}`, prepared.programs.get(variant)!);
    },
    verify(_prepared, variant, guest, js) {
      verifyAgainstJs(`${spec.name} ${variant}`, guest, js);
    },
    jsBaseline: (prepared) => jsBaseline(prepared.params),
    program: (prepared, variant) => prepared.programs.get(variant)!,
  };
}

/** A target of the project's performance issues, printed as a PASS/FAIL line (never an exit status). */
export interface Check {
  name: string;
  target: string;
  /** The figure, from wall times. */
  value: number;
  pass: boolean;
  /**
   * The same figure computed from process CPU times, when it is a time or speed: far from
   * `value`, the process waited (I/O) or was not running (another tenant had the core).
   */
  cpuValue?: number;
  /** The 1-minute load average when the figure's measurement ended. */
  load: number;
}

/** Milliseconds of process CPU time (user + system, all threads) since `start` (process.cpuUsage()). */
export function cpuSince(start: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

/** The 1-minute load average now (os.loadavg; 0 where the platform has none). */
export function loadNow(): number {
  return round(loadavg()[0]!, 2);
}

/** Rounds a figure for reports: timing noise makes further digits meaningless. */
const round = (value: number, digits: number): number => Number(value.toFixed(digits));

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export interface VariantFigures {
  variant: string;
  /** Instructions one run retires (deterministic). */
  instructions: number;
  medianMs: number;
  runsMs: number[];
  /** Median process CPU time of the same runs (its own median: not necessarily the same run's). */
  cpuMs: number;
  /** Guest million instructions per second: instructions ÷ median time. */
  mips: number;
  /** Instructions ÷ median CPU time. */
  cpuMips: number;
  /** The same instructions ÷ the median plain-JS time: the ceiling the guest is measured against. */
  jsEquivalentMips: number;
  /** Guest time ÷ plain-JS time (= jsEquivalentMips ÷ mips). */
  ratio: number;
  tlbMisses: number;
  pageWalks: number;
  /** MMU counters of one run (deterministic: every run of a variant gives the same). */
  mmu: MmuCounters;
  guestStats: Record<string, number>;
}

export interface WorkloadFigures {
  name: string;
  description: string;
  js: { medianMs: number; runsMs: number[]; cpuMs: number };
  variants: VariantFigures[];
  /** mips(paging=off) ÷ mips(paging=on) − 1: extra time per instruction with paging on. */
  pagingCost: number | null;
  /** The same from median CPU times. */
  pagingCostCpu: number | null;
  /** The same for the compiled tier (jit paging=off against jit paging=on). */
  jitPagingCost: number | null;
  /** The same from median CPU times. */
  jitPagingCostCpu: number | null;
  /** Interpreter time ÷ compiled-tier time, paging on (same instructions, same run). */
  jitSpeedup: number | null;
  /** The same from median CPU times. */
  jitSpeedupCpu: number | null;
  /** The 1-minute load average when the workload's last run ended. */
  load: number;
}

export interface MeasureOptions {
  warmups: number;
  runs: number;
  size: BenchSize;
  /** Called before each step (guest or JS run) with a label, for progress display. */
  onStep?: (label: string) => void;
  /**
   * Called at the start of each round (round 0 first; `timed` false for warm-up rounds): work to
   * interleave with the workload's runs so that machine noise falls on both alike (bench/qemu.ts).
   */
  onRound?: (round: number, timed: boolean) => void;
}

/** Steps one workload takes under these options (for progress counts). */
export function stepCount(workload: Workload, options: Pick<MeasureOptions, 'warmups' | 'runs'>): number {
  return (options.warmups + options.runs) * (workload.variants.length + 1);
}

/** Measures one workload: warm-up rounds, then timed rounds, all interleaved. */
export function measureWorkload(hv: Hypervisor, workload: Workload, options: MeasureOptions): WorkloadFigures {
  const prepared = workload.setup(options.size);
  const jsTimes: number[] = [];
  const jsCpu: number[] = [];
  const guestTimes = new Map<string, number[]>(workload.variants.map((v) => [v, []]));
  const guestCpu = new Map<string, number[]>(workload.variants.map((v) => [v, []]));
  const lastRun = new Map<string, GuestRun>();
  const instructions = new Map<string, number>();
  let reference: JsRun | null = null;
  for (let round = 0; round < options.warmups + options.runs; round++) {
    const timed = round >= options.warmups;
    const tag = timed ? '' : ' (warm-up)';
    options.onRound?.(round, timed);
    options.onStep?.(`${workload.name} plain JS${tag}`);
    const js = workload.jsBaseline(prepared);
    if (reference && js.result !== reference.result) {
      throw new BenchError('BV_BENCH_WRONG_RESULT', `${workload.name}: the plain-JS baseline is not deterministic`);
    }
    reference = js;
    if (timed) {
      jsTimes.push(js.ms);
      jsCpu.push(js.cpuMs);
    }
    // Alternate the order so that neither variant always runs right after the JS baseline.
    const order = round % 2 === 0 ? workload.variants : [...workload.variants].reverse();
    for (const variant of order) {
      options.onStep?.(`${workload.name} ${variant}${tag}`);
      const guest = workload.run(hv, prepared, variant);
      workload.verify(prepared, variant, guest, js);
      const seen = instructions.get(variant);
      if (seen !== undefined && seen !== guest.instructions) {
        throw new BenchError('BV_BENCH_NONDETERMINISTIC', `${workload.name} ${variant}: one run retired ${seen} instructions, another ${guest.instructions}`);
      }
      instructions.set(variant, guest.instructions);
      if (timed) {
        guestTimes.get(variant)!.push(guest.ms);
        guestCpu.get(variant)!.push(guest.cpuMs);
      }
      lastRun.set(variant, guest);
    }
  }
  const jsMedian = median(jsTimes);
  const variants = workload.variants.map((variant): VariantFigures => {
    const runsMs = guestTimes.get(variant)!;
    const medianMs = median(runsMs);
    const cpuMs = median(guestCpu.get(variant)!);
    const count = instructions.get(variant)!;
    const run = lastRun.get(variant)!;
    return {
      variant,
      instructions: count,
      medianMs: round(medianMs, 3),
      runsMs: runsMs.map((ms) => round(ms, 3)),
      cpuMs: round(cpuMs, 3),
      mips: round(count / medianMs / 1000, 2),
      cpuMips: round(count / cpuMs / 1000, 2),
      jsEquivalentMips: round(count / jsMedian / 1000, 2),
      ratio: round(medianMs / jsMedian, 3),
      tlbMisses: run.tlbMisses,
      pageWalks: run.pageWalks,
      mmu: run.mmu,
      guestStats: run.guestStats,
    };
  });
  const find = (name: string): VariantFigures | undefined => variants.find((v) => v.variant === name);
  // mips(off) ÷ mips(on) − 1, from the unrounded times.
  const pagingCost = (times: Map<string, number[]>, offName = PAGING_OFF, onName = PAGING_ON): number | null => {
    const off = find(offName);
    const on = find(onName);
    const offMs = times.get(offName);
    const onMs = times.get(onName);
    return off && on && offMs && onMs ? round((off.instructions * median(onMs)) / (on.instructions * median(offMs)) - 1, 4) : null;
  };
  // Both tiers retire the same instructions: the time ratio is the speed ratio.
  const speedup = (times: Map<string, number[]>): number | null => {
    const interpMs = times.get(PAGING_ON);
    const jitMs = times.get(JIT_PAGING_ON);
    return interpMs && jitMs ? round(median(interpMs) / median(jitMs), 3) : null;
  };
  return {
    name: workload.name,
    description: workload.description,
    js: { medianMs: round(jsMedian, 3), runsMs: jsTimes.map((ms) => round(ms, 3)), cpuMs: round(median(jsCpu), 3) },
    variants,
    pagingCost: pagingCost(guestTimes),
    pagingCostCpu: pagingCost(guestCpu),
    jitPagingCost: pagingCost(guestTimes, JIT_PAGING_OFF, JIT_PAGING_ON),
    jitPagingCostCpu: pagingCost(guestCpu, JIT_PAGING_OFF, JIT_PAGING_ON),
    jitSpeedup: speedup(guestTimes),
    jitSpeedupCpu: speedup(guestCpu),
    load: loadNow(),
  };
}

/** A free TCP port on loopback (nothing listens on it when this returns), for a peer started next. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}
