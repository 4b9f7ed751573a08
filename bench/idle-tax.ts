/**
 * The ESX idle-memory-tax experiment, reproduced in shape (issue 11; T-8; Waldspurger, OSDI 2002,
 * figure 4). Two nanokernel VMs with equal shares on an overcommitted host pool; `idle` walks a
 * region once and then sleeps (its memory stays allocated, untouched), `active` walks a working
 * set larger than half the pool, forever. Each VM has an ActiveMemorySampler (its periods on the
 * host's total instruction clock, so the sleeping VM's periods end too) and the memory scheduler
 * weighs the VMs by ρ = S / (P (f + k (1 − f))) with f the sampled active pages over the frames
 * held. Reclaim is hypervisor swap (no balloons: which VM gives is the question, not how).
 *
 * Run once with τ = 0 (plain proportional share) and once with τ = 0.75 (ESX's default), same
 * guests, same rounds. Reported per run: each VM's frames over time, the active VM's work rate
 * (guest instructions per second of wall time — the swap-ins it waits for are host time inside
 * its instructions — with CPU time next to it), its swap-ins, and the estimates. The PASS line:
 * with the tax, memory moves from the idle VM to the active one and the active VM's rate rises.
 */
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assembleFile } from '../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../devices/index.ts';
import { createHypervisor, type Vm } from '../kernel/index.ts';
import { ActiveMemorySampler, MemoryScheduler, SwapFile } from '../services/memory/index.ts';
import { BenchError, cpuSince, loadNow, type Check } from './harness.ts';

const MiB = 2 ** 20;
const KERNEL_SOURCE = fileURLToPath(new URL('../examples/nanokernel/kernel.s', import.meta.url));

/** Sizes: a pool smaller than both working sets together; the active one larger than half the pool. */
const SIZES = {
  full: { poolMiB: 48, vmMiB: 64, idleWalkMiB: 24, activeWalkMiB: 30, warmupRounds: 150, rounds: 600, slice: 200_000 },
  quick: { poolMiB: 24, vmMiB: 32, idleWalkMiB: 12, activeWalkMiB: 15, warmupRounds: 100, rounds: 250, slice: 200_000 },
} as const;

/** Sampler settings: 100 pages per 4 M host instructions (ESX's n; a period ≈ 40 ms of guest time here). */
const PAGES_PER_PERIOD = 100;
const PERIOD_INSTRUCTIONS = 4_000_000;

export interface IdleTaxRun {
  taxRate: number;
  /** Frames each VM held every `every` rounds of the measured window. */
  frames: { idle: number[]; active: number[] };
  every: number;
  /** Frames held at the end of the window. */
  idleFrames: number;
  activeFrames: number;
  /** The active VM's guest instructions per second over the window (wall, and process CPU). */
  activeRate: number;
  activeRateCpu: number;
  /** The active VM's swap-ins (absent exits of swapped pages) in the window. */
  activeSwapIns: number;
  /** Pages the scheduler swapped out of each VM over the whole run. */
  swappedOut: { idle: number; active: number };
  /** The samplers' estimates at the end (of guest RAM), and f over the frames held as the scheduler used it. */
  estimates: { idle: number; active: number };
  fractions: { idle: number; active: number };
  load: number;
}

export interface IdleTaxFigures {
  poolMiB: number;
  vmMiB: number;
  idleWalkMiB: number;
  activeWalkMiB: number;
  rounds: number;
  slice: number;
  runs: IdleTaxRun[];
}

/** f over the frames a VM holds: the sampled active pages of its RAM, at most all it holds. */
function heldActiveFraction(vm: Vm, sampler: ActiveMemorySampler): number {
  const held = vm.memory.presentPages;
  return held === 0 ? 0 : Math.min(1, sampler.activePages / held);
}

function runOnce(taxRate: number, size: (typeof SIZES)[keyof typeof SIZES], onStep?: (label: string) => void): IdleTaxRun {
  onStep?.(`idle tax: τ ${taxRate}`);
  const image = assembleFile(KERNEL_SOURCE).image;
  const hv = createHypervisor({ hostMemoryBytes: size.poolMiB * MiB });
  const directory = mkdtempSync(join(tmpdir(), 'bv-idletax-'));
  const swap = SwapFile.createIn(directory);
  const boot = (name: string, args: string): { vm: Vm; output: CaptureSink } => {
    const vm = hv.createVm({ memoryBytes: size.vmMiB * MiB, name });
    vm.loadImage(image);
    const output = new CaptureSink();
    attachStandardDevices(vm, { output, bootArgs: args });
    return { vm, output };
  };
  const idle = boot('idle', `walker ${size.idleWalkMiB}M seq 1 idle`);
  const active = boot('active', `walker ${size.activeWalkMiB}M random 0`);
  let clock = 0;
  const samplerOptions = { pagesPerPeriod: PAGES_PER_PERIOD, periodInstructions: PERIOD_INSTRUCTIONS, clock: () => clock, stateName: null };
  const samplers = new Map<Vm, ActiveMemorySampler>([
    [idle.vm, new ActiveMemorySampler(idle.vm, samplerOptions)],
    [active.vm, new ActiveMemorySampler(active.vm, samplerOptions)],
  ]);
  const scheduler = new MemoryScheduler(hv, { swap, taxRate, activeFraction: (vm) => {
    const sampler = samplers.get(vm);
    return sampler === undefined ? null : heldActiveFraction(vm, sampler);
  } });
  scheduler.add(idle.vm);
  scheduler.add(active.vm);
  const vms = [idle.vm, active.vm];
  const round = (): void => {
    const before = idle.vm.instructionsRetired + active.vm.instructionsRetired;
    for (const result of hv.run({ maxInstructions: size.slice }, vms)) {
      const kind = result.reason.kind;
      if (kind !== 'budget' && kind !== 'idle' && kind !== 'paused') {
        throw new BenchError('BV_BENCH_GUEST_FAILED', `idle tax: ${result.vm.name} stopped (${JSON.stringify(result.reason)})\n${(result.vm === idle.vm ? idle : active).output.text()}`);
      }
    }
    // The host's clock: every instruction of every VM, plus a slice for a round in which all slept.
    clock += Math.max(size.slice, idle.vm.instructionsRetired + active.vm.instructionsRetired - before);
    for (const sampler of samplers.values()) sampler.tick();
    scheduler.tick();
  };
  try {
    for (let r = 0; r < size.warmupRounds; r++) round();
    if (!idle.output.text().includes('walker:')) throw new BenchError('BV_BENCH_GUEST_FAILED', `idle tax: the idle VM did not finish its walk in ${size.warmupRounds} rounds`);
    const every = Math.max(1, Math.floor(size.rounds / 20));
    const frames = { idle: [] as number[], active: [] as number[] };
    const swapInsBefore = active.vm.exits.absent['swapped'] ?? 0;
    const instructionsBefore = active.vm.instructionsRetired;
    const [cpuStart, start] = [process.cpuUsage(), performance.now()];
    for (let r = 0; r < size.rounds; r++) {
      round();
      if (r % every === 0) {
        frames.idle.push(idle.vm.memory.presentPages);
        frames.active.push(active.vm.memory.presentPages);
      }
    }
    const seconds = (performance.now() - start) / 1000;
    const cpuSeconds = cpuSince(cpuStart) / 1000;
    const work = active.vm.instructionsRetired - instructionsBefore;
    const vmStats = Object.fromEntries(scheduler.stats().vms.map((v) => [v.name, v]));
    return {
      taxRate, frames, every,
      idleFrames: idle.vm.memory.presentPages, activeFrames: active.vm.memory.presentPages,
      activeRate: work / seconds, activeRateCpu: work / cpuSeconds,
      activeSwapIns: (active.vm.exits.absent['swapped'] ?? 0) - swapInsBefore,
      swappedOut: { idle: vmStats['idle']!.pages_swapped, active: vmStats['active']!.pages_swapped },
      estimates: { idle: samplers.get(idle.vm)!.estimate, active: samplers.get(active.vm)!.estimate },
      fractions: { idle: heldActiveFraction(idle.vm, samplers.get(idle.vm)!), active: heldActiveFraction(active.vm, samplers.get(active.vm)!) },
      load: loadNow(),
    };
  } finally {
    for (const sampler of samplers.values()) sampler.dispose();
    for (const vm of vms) swap.forget(vm);
    swap.close();
    for (const vm of [...hv.vms]) hv.destroyVm(vm);
    rmSync(directory, { recursive: true, force: true });
  }
}

/** Steps measureIdleTax reports through onStep. */
export const IDLE_TAX_STEPS = 2;

export function measureIdleTax(options: { quick: boolean; onStep?: (label: string) => void }): IdleTaxFigures {
  const size = SIZES[options.quick ? 'quick' : 'full'];
  const runs = [0, 0.75].map((tau) => runOnce(tau, size, options.onStep));
  return { poolMiB: size.poolMiB, vmMiB: size.vmMiB, idleWalkMiB: size.idleWalkMiB, activeWalkMiB: size.activeWalkMiB, rounds: size.rounds, slice: size.slice, runs };
}

export function idleTaxChecks(figures: IdleTaxFigures): Check[] {
  const [plain, taxed] = figures.runs as [IdleTaxRun, IdleTaxRun];
  return [
    {
      name: 'idle tax: frames of the idle VM at the end, τ 0.75 / τ 0', target: '< 1',
      value: taxed.idleFrames / Math.max(1, plain.idleFrames), pass: taxed.idleFrames < plain.idleFrames && taxed.activeFrames > plain.activeFrames, load: taxed.load,
    },
    {
      name: 'idle tax: the active VM\'s work rate, τ 0.75 / τ 0', target: '> 1',
      value: taxed.activeRate / plain.activeRate, cpuValue: taxed.activeRateCpu / plain.activeRateCpu, pass: taxed.activeRate > plain.activeRate, load: taxed.load,
    },
  ];
}

export function formatIdleTax(figures: IdleTaxFigures): string[] {
  const n = (value: number): string => Math.round(value).toLocaleString('en-US');
  const pct = (value: number): string => `${(value * 100).toFixed(0)} %`;
  const header = ['τ', 'idle frames', 'active frames', 'active rate M/s (CPU)', 'active swap-ins', 'swapped out idle / active', 'f idle / active (of RAM)', 'f over frames held'];
  const rows = figures.runs.map((run) => [
    String(run.taxRate), n(run.idleFrames), n(run.activeFrames), `${(run.activeRate / 1e6).toFixed(1)} (${(run.activeRateCpu / 1e6).toFixed(1)})`, n(run.activeSwapIns),
    `${n(run.swappedOut.idle)} / ${n(run.swappedOut.active)}`, `${pct(run.estimates.idle)} / ${pct(run.estimates.active)}`, `${pct(run.fractions.idle)} / ${pct(run.fractions.active)}`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: readonly string[]): string => cells.map((cell, i) => cell.padStart(widths[i]!)).join('  ');
  const timeline = figures.runs.flatMap((run) => [
    `    τ ${run.taxRate}, frames every ${run.every} rounds: idle   ${run.frames.idle.map(n).join(' ')}`,
    `    ${' '.repeat(String(run.taxRate).length + 2)}${' '.repeat(`, frames every ${run.every} rounds: `.length)}active ${run.frames.active.map(n).join(' ')}`,
  ]);
  return [
    `  idle memory tax (T-8): two ${figures.vmMiB} MiB VMs, equal shares, on a ${figures.poolMiB} MiB pool; idle walked ${figures.idleWalkMiB} MiB once and sleeps, active walks ${figures.activeWalkMiB} MiB at random; reclaim by swap; ${figures.rounds} rounds of ${n(figures.slice)} instructions each measured`,
    '',
    ...[line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].map((text) => `    ${text}`),
    '',
    ...timeline,
  ];
}
