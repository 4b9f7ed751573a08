/**
 * VM-state benchmarks (checkpoints, live snapshots, lazy restore, fork): each figure measured in
 * the same run as its baseline, median of several runs after a warm-up.
 *
 * - save throughput: saveVmCheckpoint (raw blocks, staging buffer, fsync, rename, directory fsync)
 *   against a plain sequential write + fsync of the same guest bytes to a file;
 * - live snapshot pause: startLiveSnapshot's pause for a guest with every page touched;
 * - lazy restore: time from restoreVmCheckpoint until the first guest instruction has retired,
 *   for a small and a large guest (it must not grow with memory size);
 * - fork: Hypervisor.forkVm of a guest with every page touched.
 */
import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { assemble } from '../guest-isa/assembler.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../kernel/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint, startLiveSnapshot } from '../services/checkpoint/index.ts';
import { median, type Check } from './harness.ts';

const MiB = 2 ** 20;

export interface StateFigures {
  /** Guest memory used by the save, snapshot and fork figures. */
  guestBytes: number;
  save: { checkpointMs: number; plainWriteMs: number; checkpointMBps: number; plainWriteMBps: number; ratio: number };
  snapshotPauseMs: number;
  lazyRestore: { smallBytes: number; largeBytes: number; smallMs: number; largeMs: number; ratio: number };
  forkMs: number;
}

export interface StateOptions {
  quick: boolean;
  runs: number;
  warmups: number;
  onStep?: (label: string) => void;
}

/** A guest that spins (so a restored VM has an instruction to run) with all RAM touched. */
const SPIN = assemble('_start: j _start\n').image;

function touchedVm(hv: Hypervisor, bytes: number, name: string): Vm {
  const vm = hv.createVm({ memoryBytes: bytes, name });
  vm.loadImage(SPIN);
  // Every page different and non-zero, as a busy guest's memory is (zero pages are not stored).
  const chunk = new Uint8Array(MiB);
  for (let gpa = 0; gpa < bytes; gpa += MiB) {
    for (let i = 0; i < chunk.length; i += 64) chunk[i] = (gpa / MiB + i) & 0xff | 1;
    vm.writePhysical(gpa, chunk.subarray(0, Math.min(MiB, bytes - gpa)));
  }
  vm.loadImage(SPIN); // the spinning code page back on top
  return vm;
}

/** Median of `runs` timings of `measure` after `warmups` untimed calls. */
function timed(options: StateOptions, label: string, measure: () => number): number {
  const samples: number[] = [];
  for (let i = 0; i < options.warmups + options.runs; i++) {
    options.onStep?.(label);
    const ms = measure();
    if (i >= options.warmups) samples.push(ms);
  }
  return median(samples);
}

export function measureState(options: StateOptions): StateFigures {
  const guestBytes = (options.quick ? 16 : 256) * MiB;
  const [smallBytes, largeBytes] = options.quick ? [16 * MiB, 64 * MiB] : [64 * MiB, 1024 * MiB];
  const dir = mkdtempSync(join(tmpdir(), 'bv-bench-state-'));
  try {
    const hv = createHypervisor({ hostMemoryBytes: guestBytes * 2 + 64 * MiB });
    const vm = touchedVm(hv, guestBytes, 'state');

    // Fork and the snapshot pause first: the saves below leave their replaced files to be freed
    // in the background, which would share the CPU with these sub-millisecond figures.
    // Fork of the touched guest.
    const forkMs = timed(options, 'fork', () => {
      const started = performance.now();
      const child = hv.forkVm(vm);
      const ms = performance.now() - started;
      hv.destroyVm(child);
      return ms;
    });
    // Live snapshot: only the pause is the figure; the background part is finished untimed.
    const snapshotPath = join(dir, 'live.ckpt');
    const snapshotPauseMs = timed(options, 'live snapshot pause', () => {
      const snapshot = startLiveSnapshot(vm, snapshotPath);
      const pause = snapshot.pauseMs;
      snapshot.finish();
      return pause;
    });

    // Save throughput against a plain sequential write of the same bytes.
    const bytes = vm.readPhysical(0, guestBytes);
    const plainPath = join(dir, 'plain.bin');
    const plainWriteMs = timed(options, 'save: plain write', () => {
      const started = performance.now();
      const fd = openSync(plainPath, 'w');
      for (let offset = 0; offset < bytes.length; offset += MiB) writeSync(fd, bytes, offset, Math.min(MiB, bytes.length - offset));
      fsyncSync(fd);
      closeSync(fd);
      return performance.now() - started;
    });
    rmSync(plainPath, { force: true });
    const checkpointPath = join(dir, 'save.ckpt');
    const checkpointMs = timed(options, 'save: checkpoint (raw)', () => {
      const started = performance.now();
      saveVmCheckpoint(vm, checkpointPath, { compression: 'none' });
      return performance.now() - started;
    });
    const mbps = (ms: number): number => guestBytes / MiB / (ms / 1000);

    hv.destroyVm(vm);

    // Lazy restore, small and large: until the first guest instruction has retired.
    const restoreMs = (size: number): number => {
      const sizeHv = createHypervisor({ hostMemoryBytes: size + 64 * MiB });
      const source = touchedVm(sizeHv, size, `lazy-${size / MiB}M`);
      const path = join(dir, `lazy-${size / MiB}.ckpt`);
      saveVmCheckpoint(source, path, { compression: 'none' });
      sizeHv.destroyVm(source);
      const ms = timed(options, `lazy restore, ${size / MiB} MiB`, () => {
        const started = performance.now();
        const restored = restoreVmCheckpoint(sizeHv, path, { mode: 'lazy', prefetch: false });
        sizeHv.run({ maxInstructions: 1 }, [restored.vm]);
        const elapsed = performance.now() - started;
        sizeHv.destroyVm(restored.vm);
        restored.close();
        return elapsed;
      });
      rmSync(path, { force: true });
      return ms;
    };
    const smallMs = restoreMs(smallBytes);
    const largeMs = restoreMs(largeBytes);

    return {
      guestBytes,
      save: { checkpointMs, plainWriteMs, checkpointMBps: mbps(checkpointMs), plainWriteMBps: mbps(plainWriteMs), ratio: plainWriteMs / checkpointMs },
      snapshotPauseMs,
      lazyRestore: { smallBytes, largeBytes, smallMs, largeMs, ratio: largeMs / smallMs },
      forkMs,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Steps measureState reports through onStep (for the progress line). */
export function stateStepCount(options: Pick<StateOptions, 'runs' | 'warmups'>): number {
  return 6 * (options.runs + options.warmups);
}

export const STATE_TARGETS = { saveRatio: 0.8, snapshotPauseMs: 1, lazyRestoreMs: 5, lazyRestoreRatio: 1.5, forkMs: 1 } as const;

export function stateChecks(figures: StateFigures): Check[] {
  const t = STATE_TARGETS;
  const mib = (bytes: number): string => `${bytes / MiB} MiB`;
  return [
    { name: 'checkpoint save throughput / plain write', target: `>= ${t.saveRatio}`, value: figures.save.ratio, pass: figures.save.ratio >= t.saveRatio },
    { name: `live snapshot pause, ${mib(figures.guestBytes)} touched (ms)`, target: `<= ${t.snapshotPauseMs}`, value: figures.snapshotPauseMs, pass: figures.snapshotPauseMs <= t.snapshotPauseMs },
    { name: `lazy restore to first instruction, ${mib(figures.lazyRestore.largeBytes)} (ms)`, target: `<= ${t.lazyRestoreMs}`, value: figures.lazyRestore.largeMs, pass: figures.lazyRestore.largeMs <= t.lazyRestoreMs },
    {
      name: `lazy restore ${mib(figures.lazyRestore.largeBytes)} / ${mib(figures.lazyRestore.smallBytes)}`,
      target: `<= ${t.lazyRestoreRatio}`,
      value: figures.lazyRestore.ratio,
      pass: figures.lazyRestore.ratio <= t.lazyRestoreRatio,
    },
    { name: `fork, ${mib(figures.guestBytes)} touched (ms)`, target: `<= ${t.forkMs}`, value: figures.forkMs, pass: figures.forkMs <= t.forkMs },
  ];
}

export function formatState(figures: StateFigures): string[] {
  const f = (value: number, digits: number): string => value.toFixed(digits);
  const s = figures.save;
  const l = figures.lazyRestore;
  return [
    `vm state (issue 5), guest ${figures.guestBytes / MiB} MiB with every page touched:`,
    `  save, raw checkpoint:    ${f(s.checkpointMs, 1)} ms (${f(s.checkpointMBps, 0)} MB/s)   plain write + fsync: ${f(s.plainWriteMs, 1)} ms (${f(s.plainWriteMBps, 0)} MB/s)   ratio ${f(s.ratio, 2)}`,
    `  live snapshot pause:     ${f(figures.snapshotPauseMs, 3)} ms`,
    `  fork:                    ${f(figures.forkMs, 3)} ms`,
    `  lazy restore to first instruction: ${l.smallBytes / MiB} MiB ${f(l.smallMs, 2)} ms, ${l.largeBytes / MiB} MiB ${f(l.largeMs, 2)} ms (ratio ${f(l.ratio, 2)})`,
  ];
}
