/**
 * Memory-error recovery figures (issue 12, "Speed"; the recovery methods of
 * services/recovery/{hash,parity,clean-copy}.ts, docs/recovery.md): the cost of keeping parity
 * (a write-heavy nanokernel guest's slowdown at N = 8 and 16), the cost of keeping stored
 * hashes, recovery latency per method (µs per page) and hash reconstruction time per window size.
 *
 * `measureErrors` is meant for `npm run bench -- --only errors` (bench/run.ts wires it);
 * `npx tsx bench/errors.ts [--quick]` prints the figures alone.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { assembleFile } from '../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../devices/index.ts';
import { createHypervisor, PageState, type Vm } from '../kernel/index.ts';
import { CleanCopyRecovery, imagePages } from '../services/recovery/clean-copy.ts';
import { StoredHashRecovery } from '../services/recovery/hash.ts';
import { ParityGroups } from '../services/recovery/parity.ts';
import type { ErrorReport, RecoveryMethod } from '../services/recovery/types.ts';
import { PageWriteTracker } from '../services/recovery/write-tracking.ts';
import { median } from './harness.ts';

const KERNEL_SOURCE = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'examples', 'nanokernel', 'kernel.s');
const MiB = 2 ** 20;
const PAGE = 4096;

/** Options of measureErrors. */
export interface ErrorsOptions {
  quick?: boolean;
  onStep?: (label: string) => void;
}

/** One way of keeping recovery state while the guest runs, and what it cost. */
export interface KeepingCost {
  /** 'none', 'parity N=8 /1M' (groups of 8, refreshed every million instructions), 'hash /4M', …. */
  label: string;
  /** Median wall time of the run, ms. */
  ms: number;
  /** Slowdown against the run with nothing kept, percent. */
  slowdownPct: number;
  /** Write-protect exits the guest took. */
  writeExits: number;
  /** Host time in the method's upkeep (scans, refreshes, exits), ms. */
  upkeepMs: number;
  /** Host memory the method keeps, bytes. */
  hostBytes: number;
}

/** The figures. */
export interface ErrorFigures {
  /** The write-heavy guest's boot arguments and instruction count. */
  bootArgs: string;
  instructions: number;
  keeping: KeepingCost[];
  /** Median recovery latency per method, µs per page. */
  latencyUs: Record<string, number>;
  /** Median hash reconstruction time per window size (bits → µs). */
  windowUs: Record<number, number>;
}

function bootGuest(bootArgs: string): { vm: Vm; run: () => void; output: CaptureSink } {
  const image = assembleFile(KERNEL_SOURCE).image;
  const hv = createHypervisor({ hostMemoryBytes: 48 * MiB });
  const vm = hv.createVm({ memoryBytes: 32 * MiB, name: 'errors' });
  vm.loadImage(image);
  const output = new CaptureSink();
  attachStandardDevices(vm, { output, bootArgs });
  const run = (): void => {
    for (;;) {
      const [result] = hv.run({ maxInstructions: 5_000_000 }, [vm]);
      const kind = result!.reason.kind;
      if (kind === 'halted') return;
      if (kind !== 'budget' && kind !== 'idle') throw new Error(`bench guest stopped: ${JSON.stringify(result!.reason)}`);
    }
  };
  return { vm, run, output };
}

function flip(page: Uint8Array, offset: number, bits: number): Uint8Array {
  const bad = page.slice();
  for (let bit = offset; bit < offset + bits; bit++) bad[bit >>> 3]! ^= 1 << (bit & 7);
  return bad;
}

/** Median µs of recovering `pages` with `method` (windows of `bits` at varying offsets); throws if one is not exact. */
function latency(vm: Vm, method: RecoveryMethod, pages: readonly number[], bits: number): number {
  const times: number[] = [];
  const all = [...pages, ...pages]; // the first pass warms up
  all.forEach((gpn, i) => {
    const good = vm.memory.pageBytes(gpn).slice();
    const offset = ((i % pages.length) * 4099 + 13) % (PAGE * 8 - bits);
    const report: ErrorReport = { gpa: gpn * PAGE + (offset >>> 3), gpn, windowBitOffset: offset, windowBits: bits };
    const start = performance.now();
    const rebuilt = method.recover(vm, report, flip(good, offset, bits));
    if (i >= pages.length) times.push((performance.now() - start) * 1000);
    if (rebuilt === null || Buffer.compare(rebuilt, good) !== 0) throw new Error(`${method.name} did not rebuild page ${gpn}`);
  });
  return median(times);
}

/** Steps measureErrors reports through onStep: seven keepers per round (one warm-up round), then the latencies. */
export function errorsStepCount(options: { quick: boolean }): number {
  return 7 * ((options.quick ? 1 : 3) + 1) + 1;
}

/** Measures everything (a few seconds; --quick: one run each). */
export function measureErrors(options: ErrorsOptions = {}): ErrorFigures {
  const repeats = options.quick ? 1 : 3;
  const passes = options.quick ? 8 : 24;
  const bootArgs = `walker 8M seq ${passes}`;
  const tick = 1_000_000;
  const slow = tick * 4;
  const keepers: Array<{ label: string; start: (vm: Vm) => { upkeepNs: () => number; hostBytes: number } }> = [
    { label: 'none', start: () => ({ upkeepNs: () => 0, hostBytes: 0 }) },
    ...[[8, tick], [16, tick], [8, slow], [16, slow]].map(([groupPages, every]) => ({
      label: `parity N=${groupPages} /${every! / 1e6}M`,
      start: (vm: Vm) => {
        const parity = new ParityGroups(vm, { groupPages });
        parity.startRefreshing(every!);
        return { upkeepNs: () => parity.stats.keepNs, hostBytes: parity.parityBytes };
      },
    })),
    ...[tick, slow].map((every) => ({
      label: `hash /${every / 1e6}M`,
      start: (vm: Vm) => {
        const hash = new StoredHashRecovery(vm);
        hash.startScanning(every);
        return { upkeepNs: () => hash.stats.scanNs, hostBytes: vm.memory.pageCount * 9 };
      },
    })),
  ];
  // Rounds over all keepers in turn (the first round warms up and is not counted), so that a
  // slower or faster machine moment does not fall on one keeper only.
  const times = keepers.map(() => [] as number[]);
  const last = keepers.map(() => ({ writeExits: 0, upkeepMs: 0, hostBytes: 0 }));
  let instructions = 0;
  let expected: string | null = null;
  for (let r = 0; r <= repeats; r++) {
    keepers.forEach((keeper, k) => {
      options.onStep?.(`errors: ${bootArgs}, ${keeper.label}${r === 0 ? ' (warm-up)' : ''}`);
      const guest = bootGuest(bootArgs);
      const kept = keeper.start(guest.vm);
      const t0 = performance.now();
      guest.run();
      if (r > 0) times[k]!.push(performance.now() - t0);
      const text = guest.output.text();
      expected ??= text;
      if (text !== expected) throw new Error(`${keeper.label}: the guest's output differs from the run without recovery state`);
      instructions = guest.vm.instructionsRetired;
      last[k] = { writeExits: PageWriteTracker.of(guest.vm).stats.writeExits, upkeepMs: kept.upkeepNs() / 1e6, hostBytes: kept.hostBytes };
    });
  }
  const baseline = median(times[0]!);
  const keeping: KeepingCost[] = keepers.map((keeper, k) => {
    const ms = median(times[k]!);
    return { label: keeper.label, ms, slowdownPct: (ms / baseline - 1) * 100, ...last[k]! };
  });

  options.onStep?.('errors: recovery latency');
  const guest = bootGuest('walker 2M random 1');
  guest.run();
  const vm = guest.vm;
  const clean = new CleanCopyRecovery(vm);
  clean.scan();
  const hash = new StoredHashRecovery(vm, { maxWindowBits: 24 });
  hash.scan();
  const parity8 = new ParityGroups(vm, { groupPages: 8 });
  parity8.refresh();
  const data: number[] = [];
  vm.memory.forEachPage(PageState.PRESENT, (gpn) => {
    if (gpn >= 0x100 && data.length < 64 && !vm.memory.isZeroPage(gpn)) data.push(gpn);
  });
  const code = imagePages(vm.image!).filter((gpn) => clean.isClean(gpn));
  const latencyUs: Record<string, number> = {
    'clean-copy': latency(vm, clean, code, 16),
    'parity N=8': latency(vm, parity8, data, 16),
    'hash (16 bits)': latency(vm, hash, data, 16),
  };
  parity8.dispose();
  const parity16 = new ParityGroups(vm, { groupPages: 16 });
  parity16.refresh();
  latencyUs['parity N=16'] = latency(vm, parity16, data, 16);
  const windowUs: Record<number, number> = {};
  for (const bits of options.quick ? [1, 8, 16] : [1, 8, 16, 20, 24]) windowUs[bits] = latency(vm, hash, bits > 16 ? data.slice(0, 4) : data, bits);
  return { bootArgs, instructions, keeping, latencyUs, windowUs };
}

/** The figures as lines for the bench's report. */
export function formatErrors(figures: ErrorFigures): string[] {
  const lines = [`memory errors: ${figures.bootArgs} (${figures.instructions.toLocaleString('en')} instructions), refresh/scan every /N million instructions`];
  for (const k of figures.keeping) {
    lines.push(
      `  ${k.label.padEnd(18)} ${k.ms.toFixed(0).padStart(6)} ms  ${k.label === 'none' ? '' : `${k.slowdownPct >= 0 ? '+' : ''}${k.slowdownPct.toFixed(0)} %`.padStart(6)}  ` +
        `write exits ${k.writeExits}  upkeep ${k.upkeepMs.toFixed(1)} ms  host ${(k.hostBytes / 1024).toFixed(0)} KiB`,
    );
  }
  lines.push(`  recovery latency (µs/page, 16-bit window): ${Object.entries(figures.latencyUs).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
  lines.push(`  hash reconstruction (µs per window): ${Object.entries(figures.windowUs).map(([bits, v]) => `${bits} bits ${v.toFixed(1)}`).join(', ')}`);
  return lines;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const figures = measureErrors({ quick: process.argv.includes('--quick'), onStep: (label) => process.stderr.write(`${label}\n`) });
  for (const line of formatErrors(figures)) console.log(line);
}
