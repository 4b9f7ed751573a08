/**
 * Asynchronous log replication (T-16, `npm run bench -- --only ha`; docs/pmem.md "Log
 * replication"): what replication costs the application's commit path, how far the destination
 * lags under a steady write rate, and how long the failure flush takes.
 *
 * The primary is a Host in this process running pmkv with PUTS numbered puts (each put: log
 * record + flush, the commit point, then slot + flush; the pmem file is in the temporary directory,
 * so the flushes are msyncs to its disk). The destination is a real tools/host process (so its
 * work is not on this process's CPU), reached over mutual TLS on loopback.
 *
 *  - Commit latency: the guest's wall time per put, (run with PUTS puts − run with no put) / PUTS,
 *    with log replication off and on, alternated, median of the repetitions; process CPU time of
 *    the same runs next to it. Goal: on ≤ 1.10 × off.
 *  - Lag: while the puts run with replication on, GET-style status samples every 10 ms: records
 *    the destination has not acknowledged, and the age of the oldest of them.
 *    The lag is measured again in one run with scheduler turns of 20 000 instructions (the tailer
 *    runs between turns).
 *  - Flush: a run with a 1 s tailer interval (so a backlog builds), stopped by a power-loss notice
 *    mid-run with a 5 s battery; the log-replication hook's own time and the records it pushed.
 *
 * `npx tsx bench/log-replication.ts [--quick]` prints the figures alone.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { pmkvHeader, type LogFlushReport } from '../services/ha/log-replication.ts';
import { parseHostConfig } from '../services/host/config.ts';
import { Host } from '../services/host/host.ts';
import { cpuSince, freePort, loadNow, median, type Check } from './harness.ts';
import { certificates } from './migration.ts';

const KERNEL = join(import.meta.dirname, '..', 'examples', 'nanokernel', 'kernel.s');
/** Puts per measured run (their boot arguments fit the 4 KiB boot-argument page). */
const PUTS = 300;
/** The scheduler turn of the lag's second measurement (the default is 200 000). */
const SHORT_SLICE = 20_000;

/** The figures. */
export interface LogReplicationFigures {
  puts: number;
  /** Guest wall ms per put, replication off / on (medians), and on ÷ off. */
  commit_ms_off: number;
  commit_ms_on: number;
  commit_ratio: number;
  /** Process CPU ms per put, off / on (medians), and on ÷ off. */
  commit_cpu_ms_off: number;
  commit_cpu_ms_on: number;
  commit_cpu_ratio: number;
  /**
   * The same with the destination's files on tmpfs (NaN where there is none), standing in for a
   * destination with its own disk: wall ms per put, on ÷ off, CPU on ÷ off.
   */
  commit_ms_on_separate_disk: number;
  commit_ratio_separate_disk: number;
  commit_cpu_ratio_separate_disk: number;
  /** Repetitions of each. */
  repetitions: number;
  /** Lag samples under the steady write rate: records not yet acknowledged, and the oldest one's age in ms. */
  lag: { samples: number; records_mean: number; records_max: number; ms_median: number; ms_p95: number; ms_max: number; puts_per_s: number; ack_ms_mean: number; ack_ms_max: number };
  /** The lag with turns of `slice_instructions` (one run). */
  lag_short_slice: { slice_instructions: number; samples: number; records_mean: number; records_max: number; ms_median: number; ms_max: number; ack_ms_mean: number; ack_ms_max: number };
  /** The failure flush: records pushed at the notice, the hook's ms, and the process CPU ms of the notice. */
  flush: { tail_seq: number; backlog_records: number; ms: number; cpu_ms: number; complete: boolean };
  load: number;
}

function boot(puts: number): string {
  const words = ['pmkv'];
  for (let i = 1; i <= puts; i++) words.push('put', `k${i % 8}`, `v${i}`);
  return words.join(' ');
}


/** Starts tools/host as the destination; resolves with a stop function once it serves. */
async function startDestination(dir: string, tls: { ca: string; cert: string; key: string }, port: number, replicaDir: string): Promise<() => Promise<void>> {
  const config = join(dir, `destination-${port}.json`);
  writeFileSync(config, JSON.stringify({ migration: { tls, name: 'destination' }, log_replicas: { listen: `127.0.0.1:${port}`, dir: replicaDir } }));
  const child = spawn(process.execPath, ['--import', 'tsx', 'tools/host.ts', '--api-sock', join(dir, `destination-${port}.sock`), '--config', config], { cwd: join(import.meta.dirname, '..'), stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the destination host did not start:\n${stderr}`)), 90_000);
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.includes('serving the API')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', () => reject(new Error(`the destination host exited:\n${stderr}`)));
  });
  return async () => {
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('close', resolve));
  };
}

interface Run {
  wallMs: number;
  cpuMs: number;
  lag: { records: number; ms: number }[];
  /** Seen-to-acknowledged ms of the records (mean, max), from the shipper. */
  ack: { mean: number; max: number } | null;
  flush: LogFlushReport | null;
  /** Process CPU ms of the power-loss notice (NaN without one). */
  flushCpuMs: number;
}

/** One primary run: `puts` puts on a fresh pmem file, replication to `destination` or none; optionally a power-loss notice at `stopAtPut`. */
async function run(dir: string, index: number, puts: number, tls: { ca: string; cert: string; key: string }, destination: string | null, options: { intervalMs?: number; stopAtPut?: number; sliceInstructions?: number } = {}): Promise<Run> {
  const name = `kv${index}`;
  // Formatted as pmkv would (the header alone), so the tailer connects before the measured run.
  const file = Buffer.alloc(64 * 1024);
  Buffer.from(pmkvHeader(file.length)).copy(file);
  writeFileSync(join(dir, `${name}.pmem`), file);
  const spec = parseHostConfig({
    ...(options.sliceInstructions === undefined ? {} : { slice_instructions: options.sliceInstructions }),
    migration: { tls, name: 'primary' },
    vms: [{
      name, image: KERNEL, memory_mib: 16, boot_args: boot(puts), start_paused: true,
      pmem: { path: join(dir, `${name}.pmem`), size_kib: 64 },
      ...(destination === null ? {} : { log_replication: { destinations: [destination], interval_ms: options.intervalMs ?? 10 } }),
    }],
  });
  const host = await Host.start(spec);
  try {
    const lag: { records: number; ms: number }[] = [];
    if (destination !== null) {
      // Connected before the clock starts (the file is formatted already): connecting is not the commit path.
      const until = performance.now() + 30_000;
      while (host.logReplication(name).destinations[0]!.state !== 'connected') {
        if (performance.now() > until) throw new Error(`log replication of ${name} did not connect: ${host.logReplication(name).destinations[0]!.last_error ?? ''}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    const cpu = process.cpuUsage();
    const started = performance.now();
    host.resume(name);
    let flush: LogFlushReport | null = null;
    let flushCpuMs = NaN;
    const sampler = destination === null ? null : setInterval(() => {
      const status = host.logReplication(name).destinations[0]!;
      if (status.state === 'connected') lag.push({ records: status.lag_records, ms: status.lag_ms });
    }, 10);
    try {
      if (options.stopAtPut !== undefined) {
        while (!host.readConsole(name, 0, 1 << 20).data.includes(`(seq ${options.stopAtPut})`)) await new Promise((resolve) => setTimeout(resolve, 2));
        const noticeCpu = process.cpuUsage();
        const report = await host.powerLoss(5000, 'bench');
        flushCpuMs = cpuSince(noticeCpu);
        flush = ((report.hooks.find((hook) => hook.name === 'log-replication')?.result ?? []) as LogFlushReport[])[0] ?? null;
      } else {
        await host.whenStopped(name);
      }
    } finally {
      if (sampler !== null) clearInterval(sampler);
    }
    const wallMs = performance.now() - started;
    const cpuMs = cpuSince(cpu);
    const link = destination === null ? null : host.logReplication(name).destinations[0]!;
    return { wallMs, cpuMs, lag, ack: link === null ? null : { mean: link.ack_ms_mean, max: link.ack_ms_max }, flush, flushCpuMs };
  } finally {
    await host.close();
  }
}

/** Measures the figures (`quick`: fewer repetitions). */
export async function measureLogReplication(quick = false): Promise<LogReplicationFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'bv-bench-logrep-'));
  const { a, b } = certificates(dir);
  const port = await freePort();
  const stop = await startDestination(dir, b, port, join(dir, 'replicas'));
  const destination = `127.0.0.1:${port}`;
  // A second destination whose files are on tmpfs: on one machine, a destination on the primary's
  // disk makes the primary's msyncs wait for its fdatasyncs, which a destination host (its own
  // disk) would not; this one stands in for that. Its acknowledgements are not durable.
  const shmDir = existsSync('/dev/shm') ? mkdtempSync('/dev/shm/bv-bench-logrep-') : null;
  const shmPort = shmDir === null ? 0 : await freePort();
  const stopShm = shmDir === null ? null : await startDestination(dir, b, shmPort, shmDir);
  try {
    const repetitions = quick ? 1 : 5;
    const perPut = { off: [] as number[], on: [] as number[], cpuOff: [] as number[], cpuOn: [] as number[], shm: [] as number[], cpuShm: [] as number[] };
    const lag: { records: number; ms: number }[] = [];
    let putsPerS = 0;
    const acks: { mean: number; max: number }[] = [];
    let index = 0;
    for (let rep = 0; rep < repetitions; rep++) {
      const modes: ('off' | 'on' | 'shm')[] = shmDir === null ? ['off', 'on'] : ['off', 'on', 'shm'];
      for (const mode of rep % 2 === 0 ? modes : modes.reverse()) {
        const target = mode === 'off' ? null : mode === 'on' ? destination : `127.0.0.1:${shmPort}`;
        const empty = await run(dir, index++, 0, a, target);
        const full = await run(dir, index++, PUTS, a, target);
        perPut[mode].push((full.wallMs - empty.wallMs) / PUTS);
        perPut[mode === 'off' ? 'cpuOff' : mode === 'on' ? 'cpuOn' : 'cpuShm'].push((full.cpuMs - empty.cpuMs) / PUTS);
        if (mode === 'on') {
          lag.push(...full.lag);
          if (full.ack !== null) acks.push(full.ack);
          putsPerS = PUTS / (full.wallMs / 1000);
        }
      }
    }
    const stopped = await run(dir, index++, PUTS, a, destination, { intervalMs: 1000, stopAtPut: Math.floor(PUTS * 0.6) });
    // The lag is the scheduler's turn: the same with turns of 20 000 instructions instead of 200 000.
    const short = await run(dir, index++, PUTS, a, destination, { sliceInstructions: SHORT_SLICE });
    const shortMs = short.lag.map((sample) => sample.ms).sort((x, y) => x - y);
    const sortedMs = lag.map((sample) => sample.ms).sort((x, y) => x - y);
    const round = (value: number, digits = 3) => Number(value.toFixed(digits));
    const off = median(perPut.off);
    const on = median(perPut.on);
    const cpuOff = median(perPut.cpuOff);
    const cpuOn = median(perPut.cpuOn);
    const shm = median(perPut.shm);
    const cpuShm = median(perPut.cpuShm);
    return {
      commit_ms_on_separate_disk: round(shm),
      commit_ratio_separate_disk: round(shm / off),
      commit_cpu_ratio_separate_disk: round(cpuShm / cpuOff),
      puts: PUTS,
      commit_ms_off: round(off),
      commit_ms_on: round(on),
      commit_ratio: round(on / off),
      commit_cpu_ms_off: round(cpuOff),
      commit_cpu_ms_on: round(cpuOn),
      commit_cpu_ratio: round(cpuOn / cpuOff),
      repetitions,
      lag: {
        samples: lag.length,
        records_mean: round(lag.reduce((sum, sample) => sum + sample.records, 0) / Math.max(1, lag.length), 2),
        records_max: lag.reduce((max, sample) => Math.max(max, sample.records), 0),
        ms_median: round(median(sortedMs), 1),
        ms_p95: round(sortedMs[Math.floor(sortedMs.length * 0.95)] ?? NaN, 1),
        ms_max: round(sortedMs.at(-1) ?? NaN, 1),
        puts_per_s: round(putsPerS, 0),
        ack_ms_mean: round(median(acks.map((ack) => ack.mean)), 1),
        ack_ms_max: round(Math.max(...acks.map((ack) => ack.max)), 1),
      },
      lag_short_slice: {
        slice_instructions: SHORT_SLICE,
        samples: short.lag.length,
        records_mean: round(short.lag.reduce((sum, sample) => sum + sample.records, 0) / Math.max(1, short.lag.length), 2),
        records_max: short.lag.reduce((max, sample) => Math.max(max, sample.records), 0),
        ms_median: round(median(shortMs), 1),
        ms_max: round(shortMs.at(-1) ?? NaN, 1),
        ack_ms_mean: short.ack?.mean ?? NaN,
        ack_ms_max: short.ack?.max ?? NaN,
      },
      flush: {
        tail_seq: stopped.flush?.tail_seq ?? 0,
        backlog_records: stopped.flush?.backlog ?? 0,
        ms: stopped.flush?.ms ?? NaN,
        cpu_ms: round(stopped.flushCpuMs, 1),
        complete: stopped.flush?.complete ?? false,
      },
      load: loadNow(),
    };
  } finally {
    await stop();
    await stopShm?.();
    rmSync(dir, { recursive: true, force: true });
    if (shmDir !== null) rmSync(shmDir, { recursive: true, force: true });
  }
}

/** The bench's checks: the commit-latency goal. */
export function logReplicationChecks(figures: LogReplicationFigures): Check[] {
  const checks: Check[] = [{
    name: 'log replication: commit latency on vs off (destination on the primary\'s disk)',
    target: '≤ 1.10 × off',
    value: figures.commit_ratio,
    pass: figures.commit_ratio <= 1.1,
    cpuValue: figures.commit_cpu_ratio,
    load: figures.load,
  }];
  if (!Number.isNaN(figures.commit_ratio_separate_disk)) {
    checks.push({
      name: 'log replication: commit latency on vs off (destination files on tmpfs, as on its own disk)',
      target: '≤ 1.10 × off',
      value: figures.commit_ratio_separate_disk,
      pass: figures.commit_ratio_separate_disk <= 1.1,
      cpuValue: figures.commit_cpu_ratio_separate_disk,
      load: figures.load,
    });
  }
  return checks;
}

/** The figures as report lines. */
export function formatLogReplication(figures: LogReplicationFigures): string[] {
  const { lag, flush } = figures;
  return [
    `log replication (T-16), ${figures.puts} pmkv puts per run, ${figures.repetitions} run${figures.repetitions === 1 ? '' : 's'} each, destination: a tools/host process over mutual TLS on loopback (load ${figures.load})`,
    `  commit latency per put: off ${figures.commit_ms_off} ms, on ${figures.commit_ms_on} ms (× ${figures.commit_ratio}); CPU off ${figures.commit_cpu_ms_off} ms, on ${figures.commit_cpu_ms_on} ms (× ${figures.commit_cpu_ratio})`,
    `  the same with the destination's files on tmpfs (its fdatasyncs off the primary's disk): on ${figures.commit_ms_on_separate_disk} ms (× ${figures.commit_ratio_separate_disk}); CPU × ${figures.commit_cpu_ratio_separate_disk}`,
    `  lag at ${lag.puts_per_s} puts/s (${lag.samples} samples): ${lag.records_mean} records on average, at most ${lag.records_max}; oldest unacknowledged record ${lag.ms_median} ms (median), ${lag.ms_p95} ms (p95), ${lag.ms_max} ms (max); a record from the tailer seeing it to its acknowledgement ${lag.ack_ms_mean} ms on average, at most ${lag.ack_ms_max} ms`,
    `  the same with turns of ${figures.lag_short_slice.slice_instructions} instructions (${figures.lag_short_slice.samples} samples): ${figures.lag_short_slice.records_mean} records on average, at most ${figures.lag_short_slice.records_max}; oldest ${figures.lag_short_slice.ms_median} ms (median), ${figures.lag_short_slice.ms_max} ms (max); seen to acknowledged ${figures.lag_short_slice.ack_ms_mean} ms on average, at most ${figures.lag_short_slice.ack_ms_max} ms`,
    `  failure flush (1 s tailer interval, notice after put ${Math.floor(figures.puts * 0.6)}, log at ${flush.tail_seq} records by then): ${flush.backlog_records} records pushed in ${flush.ms} ms (${flush.complete ? 'complete' : 'INCOMPLETE'}); process CPU of the notice ${flush.cpu_ms} ms`,
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const figures = await measureLogReplication(process.argv.includes('--quick'));
  process.stdout.write(`${formatLogReplication(figures).join('\n')}\n`);
  for (const check of logReplicationChecks(figures)) process.stdout.write(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value} (CPU ${check.cpuValue}) target ${check.target}\n`);
}
