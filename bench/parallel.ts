/**
 * Issue 16 (`npm run bench -- --only parallel`): VMs on worker threads and power-aware placement.
 *
 * - Aggregate guest MIPS of two CPU-bound VMs in two worker groups (pinned to different CPUs)
 *   against the same two VMs time-sharing the host's thread; and one VM in a worker against one
 *   in the host's thread (what running over the shared pool from a worker costs). Interleaved
 *   rounds, medians; CPU time of the whole process next to wall time.
 * - Cross-thread page sharing: lending a page to a VM in a worker (exportPage + importPage) and the
 *   copy-on-write break there, against sharing within one thread (sharePage) and its break.
 * - Power-aware placement on the model host (bench/placement.ts).
 */
import { loadavg } from 'node:os';
import { createHypervisor } from '../kernel/index.ts';
import { parseHostConfig } from '../services/host/config.ts';
import { Host } from '../services/host/host.ts';
import { startModuleWorker } from '../services/host/worker-group.ts';
import type { Check } from './harness.ts';
import { formatPlacementBench, placementChecks, placementStepCount, runPlacementBench, type PlacementBenchFigures } from './placement.ts';

const KERNEL = new URL('../examples/nanokernel/kernel.s', import.meta.url).pathname;

export interface ParallelOptions {
  quick?: boolean;
  /** Instructions per VM per run (default 1.2 G, quick 100 M). */
  instructions?: number;
  /** Interleaved rounds (default 3, quick 1). */
  rounds?: number;
  onStep?: (label: string) => void;
}

/** One arrangement of VMs, its medians over the rounds. */
export interface ArrangementFigures {
  name: string;
  /** VMs and where they ran. */
  layout: string;
  /** Guest instructions retired by all its VMs in a round. */
  instructions: number;
  /** Median wall time from resume to the last VM stopped, ms. */
  wallMs: number;
  /** Median process CPU time over the same window (every thread), ms. */
  cpuMs: number;
  /** Aggregate guest MIPS by wall time (instructions / wall). */
  mips: number;
  /** Every round's wall ms, in order. */
  wallRuns: number[];
}

export interface SharingCostFigures {
  pages: number;
  /** Lending across threads: exportPage in the host thread, per page (µs). */
  exportUs: number;
  /** importPage in the worker, per page (µs). */
  importUs: number;
  /** A 4-byte write to a lent page in the worker (a copy-on-write break), per page (µs). */
  crossBreakUs: number;
  /** Sharing within one thread: sharePage, per page (µs). */
  shareUs: number;
  /** The same write in the same thread (a copy-on-write break), per page (µs). */
  localBreakUs: number;
}

export interface ParallelBenchFigures {
  rounds: number;
  instructionsPerVm: number;
  program: string;
  arrangements: ArrangementFigures[];
  /** Two VMs in two workers over two VMs in one thread, by wall time (goal ≥ 1.8). */
  twoWorkersSpeedup: number;
  /** The same ratio from process CPU time per instruction (≈ 1 when workers add no CPU cost). */
  twoWorkersCpuRatio: number;
  /** One VM in a worker over one VM in the host thread, by wall time. */
  oneWorkerRatio: number;
  sharing: SharingCostFigures;
  placement: PlacementBenchFigures;
  load: { start: number[]; end: number[] };
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

const cpuSince = (start: NodeJS.CpuUsage): number => {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
};

interface Arrangement {
  name: string;
  layout: string;
  /** VM name → worker group (undefined: the host's thread). */
  vms: Record<string, string | undefined>;
  groups: { name: string; cpus: number[] }[];
}

const ARRANGEMENTS: Arrangement[] = [
  { name: 'two VMs, one thread', layout: 'a, b in the host thread (round-robin)', vms: { a: undefined, b: undefined }, groups: [] },
  { name: 'two VMs, two workers', layout: 'a in worker g0 (CPU 0), b in worker g1 (CPU 1)', vms: { a: 'g0', b: 'g1' }, groups: [{ name: 'g0', cpus: [0] }, { name: 'g1', cpus: [1] }] },
  { name: 'one VM, host thread', layout: 'a in the host thread', vms: { a: undefined }, groups: [] },
  { name: 'one VM, one worker', layout: 'a in worker g0 (CPU 0)', vms: { a: 'g0' }, groups: [{ name: 'g0', cpus: [0] }] },
];

/** One round of an arrangement: boot paused, resume all at once, time until every VM stops. */
async function runArrangement(arrangement: Arrangement, program: string, instructions: number): Promise<{ wallMs: number; cpuMs: number; retired: number }> {
  const spec = parseHostConfig({
    worker_groups: arrangement.groups,
    vms: Object.entries(arrangement.vms).map(([name, group]) => ({
      name, image: KERNEL, memory_mib: 96, boot_args: program, max_instructions: instructions, start_paused: true, ...(group === undefined ? {} : { group }),
    })),
  });
  const host = await Host.start(spec);
  try {
    const names = Object.keys(arrangement.vms);
    const stopped = names.map((name) => host.whenStopped(name));
    const cpu = process.cpuUsage();
    const started = performance.now();
    await Promise.all(names.map((name) => host.vmCalls(name).resume(name)));
    const infos = await Promise.all(stopped);
    const wallMs = performance.now() - started;
    const cpuMs = cpuSince(cpu);
    for (const info of infos) if (info.exit?.kind !== 'budget') throw new Error(`bench: VM ${info.name} ended with ${JSON.stringify(info.exit)}, not its instruction budget`);
    return { wallMs, cpuMs, retired: infos.reduce((sum, info) => sum + info.instructions, 0) };
  } finally {
    await host.close();
  }
}

/** Lending pages across threads against sharing them within one. */
async function measureSharingCost(pages: number): Promise<SharingCostFigures> {
  const hv = createHypervisor({ hostMemoryBytes: 64 * 2 ** 20 });
  try {
    const lender = hv.createVm({ name: 'lender', memoryBytes: pages * 4096 });
    const page = new Uint8Array(4096).fill(7);
    for (let gpn = 0; gpn < pages; gpn++) lender.memory.writePhysical(gpn * 4096, page);
    // Within one thread first.
    const local = hv.createVm({ name: 'local', memoryBytes: pages * 4096 });
    let started = performance.now();
    for (let gpn = 0; gpn < pages; gpn++) lender.memory.sharePage(gpn, local.memory, gpn);
    const shareMs = performance.now() - started;
    const word = new Uint8Array(4).fill(0x5a);
    started = performance.now();
    for (let gpn = 0; gpn < pages; gpn++) local.memory.writePhysical(gpn * 4096, word);
    const localBreakMs = performance.now() - started;
    hv.destroyVm(local);
    // Across threads.
    const pool = hv.sharePool();
    started = performance.now();
    const handles = Array.from({ length: pages }, (_, gpn) => lender.memory.exportPage(gpn));
    const exportMs = performance.now() - started;
    const worker = startModuleWorker(new URL('./parallel-worker.ts', import.meta.url), { workerData: { pool, handles } });
    const { importMs, breakMs } = await new Promise<{ importMs: number; breakMs: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    const us = (ms: number): number => (ms * 1000) / pages;
    return { pages, exportUs: us(exportMs), importUs: us(importMs), crossBreakUs: us(breakMs), shareUs: us(shareMs), localBreakUs: us(localBreakMs) };
  } finally {
    hv.close();
  }
}

export function parallelStepCount(options: ParallelOptions = {}): number {
  return (options.quick ? 1 : 3) * ARRANGEMENTS.length + 1 + placementStepCount();
}

export async function measureParallel(options: ParallelOptions = {}): Promise<ParallelBenchFigures> {
  const loadStart = loadavg().map((v) => Number(v.toFixed(2)));
  const rounds = options.rounds ?? (options.quick ? 1 : 3);
  const instructions = options.instructions ?? (options.quick ? 100_000_000 : 1_200_000_000);
  // Three CRC-32 processes of 24 MB of LCG output each (time-sliced by the nanokernel): ~1.6 G
  // instructions, past every budget.
  const program = Array(3).fill('crc32 24000000').join(' ');
  const runs = ARRANGEMENTS.map(() => ({ wall: [] as number[], cpu: [] as number[], retired: 0 }));
  // Interleaved: each round runs every arrangement once, so load changes hit them alike.
  for (let round = 0; round < rounds; round++) {
    for (const [index, arrangement] of ARRANGEMENTS.entries()) {
      options.onStep?.(`parallel: ${arrangement.name} (round ${round + 1}/${rounds})`);
      const { wallMs, cpuMs, retired } = await runArrangement(arrangement, program, instructions);
      runs[index]!.wall.push(wallMs);
      runs[index]!.cpu.push(cpuMs);
      runs[index]!.retired = retired;
    }
  }
  const arrangements = ARRANGEMENTS.map((a, index): ArrangementFigures => {
    const wallMs = median(runs[index]!.wall);
    return { name: a.name, layout: a.layout, instructions: runs[index]!.retired, wallMs, cpuMs: median(runs[index]!.cpu), mips: runs[index]!.retired / wallMs / 1000, wallRuns: runs[index]!.wall };
  });
  const [oneThread, twoWorkers, hostOne, workerOne] = arrangements as [ArrangementFigures, ArrangementFigures, ArrangementFigures, ArrangementFigures];
  options.onStep?.('parallel: page sharing across threads');
  const sharing = await measureSharingCost(options.quick ? 2048 : 8192);
  const placement = await runPlacementBench({ onStep: (label) => options.onStep?.(label) });
  return {
    rounds, instructionsPerVm: instructions, program, arrangements,
    twoWorkersSpeedup: twoWorkers.mips / oneThread.mips,
    twoWorkersCpuRatio: (oneThread.cpuMs / oneThread.instructions) / (twoWorkers.cpuMs / twoWorkers.instructions),
    oneWorkerRatio: workerOne.mips / hostOne.mips,
    sharing, placement,
    load: { start: loadStart, end: loadavg().map((v) => Number(v.toFixed(2))) },
  };
}

export function parallelChecks(figures: ParallelBenchFigures): Check[] {
  return [
    {
      name: 'parallel: aggregate MIPS, two CPU-bound VMs in two workers / in one thread',
      target: '>= 1.8',
      value: figures.twoWorkersSpeedup,
      pass: figures.twoWorkersSpeedup >= 1.8,
      load: figures.load.end[0] ?? 0,
    },
    ...placementChecks(figures.placement),
  ];
}

export function formatParallel(figures: ParallelBenchFigures): string[] {
  const out = [
    `VMs on worker threads (issue 16): ${figures.program}, ${(figures.instructionsPerVm / 1e6).toFixed(0)} M instructions per VM, median of ${figures.rounds} interleaved rounds, load ${figures.load.start.join(' ')} -> ${figures.load.end.join(' ')}`,
  ];
  for (const a of figures.arrangements) {
    out.push(`  ${a.name.padEnd(22)} ${a.mips.toFixed(1).padStart(7)} MIPS aggregate  wall ${a.wallMs.toFixed(0).padStart(5)} ms  CPU ${a.cpuMs.toFixed(0).padStart(5)} ms  (${a.layout}; rounds ${a.wallRuns.map((w) => w.toFixed(0)).join('/')} ms)`);
  }
  out.push(`  two workers / one thread: ${figures.twoWorkersSpeedup.toFixed(2)}x by wall time (goal >= 1.8x); CPU per instruction one thread / two workers ${figures.twoWorkersCpuRatio.toFixed(2)}`);
  out.push(`  one VM in a worker / in the host thread: ${figures.oneWorkerRatio.toFixed(2)}x`);
  const s = figures.sharing;
  out.push(`  page sharing, ${s.pages} pages: across threads export ${s.exportUs.toFixed(2)} + import ${s.importUs.toFixed(2)} µs/page, COW break in the worker ${s.crossBreakUs.toFixed(2)} µs/page; within one thread sharePage ${s.shareUs.toFixed(2)} µs/page, COW break ${s.localBreakUs.toFixed(2)} µs/page`);
  out.push('');
  out.push(...formatPlacementBench(figures.placement));
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await measureParallel({ quick: process.argv.includes('--quick'), onStep: (label) => process.stderr.write(`${label}\n`) });
  for (const line of formatParallel(figures)) console.log(line);
  for (const check of parallelChecks(figures)) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value.toFixed(3)} (${check.target})`);
}
