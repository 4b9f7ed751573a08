/**
 * Issue 17, PARDA (T-19; `npm run bench -- --only io`, scripts/parda.ts, docs/storage-io.md):
 * several real host processes (tools/host, each in a network namespace of its own when run as
 * root) share one raw image on the real disk. Each boots one VM running examples/io/random-io.s,
 * which keeps `depth` asynchronous O_DIRECT requests in flight; the hosts' storage_io
 * controllers publish in one statistics file next to the image.
 *
 * Phases, with the hosts kept running and steered over their APIs:
 * 1. uncontrolled (control false): the latency and aggregate IOPS the device gives;
 * 2. controlled, equal shares, 𝓛 = thresholdRatio × the uncontrolled latency;
 * 3. controlled, shares 1:1:2:2 (…), 𝓛 = sharesThresholdRatio × the uncontrolled latency;
 * 4. the last host stops: the others take its share.
 *
 * The device. This machine's disk is a virtio disk the hypervisor host caches: random 4 KiB
 * O_DIRECT reads reach ~90k IOPS at 64 in flight (scripts/parda.ts --probe prints what it
 * measures), while one host process issues ~21k IOPS at 100 % of a CPU: interpreted hosts on two
 * CPUs cannot saturate it, and the latency they see is their own CPU queueing, not the disk's.
 * So by default the disk is throttled by the kernel's block-layer throttle (cgroup blkio byte
 * rate = `throttleIops` × the request size, every host process in one cgroup): the requests still go to the real disk with
 * O_DIRECT, but the device they share serves at most that many IOPS and queues the rest, so its
 * latency grows with the IOs outstanding — the regime of a loaded array that PARDA controls.
 * `throttleIops: 0` runs on the bare disk.
 *
 * As root the hosts run at real-time priority (`realtime`): on a machine whose CPUs other work
 * saturates, each host otherwise waits for a CPU at every completion, and that wait, growing with
 * the host's own IOs in flight, splits the device unevenly (docs/storage-io.md, "Results").
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, rmdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiRequest } from '../services/host/client.ts';
import type { StorageIoStatus } from '../services/storage/index.ts';
import type { Check } from './harness.ts';

const REPO = join(import.meta.dirname, '..');
const GUEST = join(REPO, 'examples', 'io', 'random-io.s');

/** How the experiment runs. */
export interface PardaBenchOptions {
  /** Shorter phases and three hosts (the suite's form). */
  quick?: boolean;
  /** Host processes (default 4, quick 3). */
  hosts?: number;
  /** Requests each VM keeps in flight (default 32, at most the device's QUEUE_DEPTH). */
  depth?: number;
  /** Sectors per request (default 8: 4 KiB). */
  sectors?: number;
  /** Percent of requests that are writes (default 0). */
  writePct?: number;
  /** The shared raw image (default: /var/tmp/bytevisor-parda.img, made if missing). */
  image?: string;
  /** Its size when made, MiB (default 1024). */
  imageMib?: number;
  /** The block-layer throttle on the image's disk, in IOPS of the requests' size (a byte rate; default 4000; 0: the bare disk). */
  throttleIops?: number;
  /** 𝓛 / uncontrolled latency with equal shares (default 0.8). */
  thresholdRatio?: number;
  /** 𝓛 / uncontrolled latency with unequal shares (default 0.65: windows of 2-share hosts stay below the VMs' depth). */
  sharesThresholdRatio?: number;
  /** Settling time before each measurement, ms (default 10 s, quick 6 s). */
  settleMs?: number;
  /** Each measurement, ms (default 10 s, quick 5 s). */
  measureMs?: number;
  /** The control period, ms (default 250). */
  periodMs?: number;
  /** Run hosts in network namespaces when root (default true). */
  netns?: boolean;
  /**
   * Run hosts at real-time priority when root (`chrt -r 10`, default true). On a machine whose
   * CPUs other work saturates, each completion otherwise waits for its host's main thread to get
   * a CPU, and that wait, not the device, shapes each host's latency (docs/storage-io.md).
   */
  realtime?: boolean;
  /** Progress lines. */
  onStep?: (label: string) => void;
}

/** One host over one measured interval. */
export interface PardaHostFigures {
  hostId: number;
  shares: number;
  /** Mean window over the interval (sampled every period). */
  window: number;
  /** Mean latency of its IOs (raw), ms. */
  latencyMs: number;
  /** Mean normalised latency (what the law uses), ms. */
  normalisedMs: number;
  iops: number;
  bytesPerSecond: number;
}

/** One phase: every host's figures and the aggregate. */
export interface PardaPhaseFigures {
  name: string;
  /** 𝓛 in force, ms (null: uncontrolled). */
  thresholdMs: number | null;
  hosts: PardaHostFigures[];
  /** IO-weighted mean latency over all hosts (raw and normalised), ms. */
  latencyMs: number;
  normalisedMs: number;
  /** Aggregate IOPS. */
  iops: number;
}

/** Everything the experiment measured. */
export interface PardaBenchFigures {
  hosts: number;
  depth: number;
  ioBytes: number;
  writePct: number;
  image: string;
  /** 'blkio cgroup, N IOPS on MAJ:MIN', or 'none (bare disk)'. */
  throttle: string;
  /** 'netns' (each host in its own network namespace) or 'shared'. */
  isolation: string;
  /** The hosts ran at real-time priority (SCHED_RR 10). */
  realtime: boolean;
  periodMs: number;
  uncontrolled: PardaPhaseFigures;
  controlled: PardaPhaseFigures;
  shares: PardaPhaseFigures;
  /** The same hosts but the last, after it stopped. */
  afterStop: PardaPhaseFigures;
  /** Torn reads of the statistics file, all hosts (retried). */
  tornReads: number;
  load: { start: number[]; end: number[] };
}

/** Steps reported through onStep. */
export function pardaStepCount(): number {
  return 6;
}

const DEFAULT_IMAGE = '/var/tmp/bytevisor-parda.img';

/** A host process and its API socket. */
interface HostProcess {
  hostId: number;
  socket: string;
  child: ChildProcess;
  output: string;
  exited: Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Makes the image if it is missing or smaller: real data, so that reads reach the disk (a hole would not). */
function ensureImage(path: string, mib: number): void {
  if (existsSync(path) && statSync(path).size >= mib * 2 ** 20) return;
  const fd = openSync(path, 'w');
  try {
    const chunk = new Uint8Array(4 * 2 ** 20);
    for (let i = 0; i < chunk.length; i += 4) chunk[i] = (i * 2654435761) >>> 24 | 1;
    for (let offset = 0; offset < mib * 2 ** 20; offset += chunk.length) writeSync(fd, chunk, 0, chunk.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** The block-layer throttle: a blkio cgroup (v1) or io.max (v2) limiting the image's disk; null when it cannot be set. */
function makeThrottle(image: string, iops: number, ioBytes: number): { procs: string; describe: string; remove(): void } | null {
  if (iops <= 0) return null;
  // A byte rate, not an IOPS one: measured here, the kernel's IOPS limit served processes about
  // equally whatever their IOs outstanding (a host with 16 in flight 2490 IOPS at 7.9 ms, one with
  // 32 1649 at 15.8 ms), while its byte limit serves them first come, first served (2626 and 1324
  // IOPS at 14.9 and 13.0 ms) — a shared device's queue, as PARDA assumes.
  const bps = iops * ioBytes;
  const dev = statSync(image).dev;
  const major = (dev >> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  const v1 = '/sys/fs/cgroup/blkio';
  try {
    if (existsSync(join(v1, 'blkio.throttle.read_iops_device'))) {
      const dir = join(v1, `bytevisor-parda-${process.pid}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'blkio.throttle.read_bps_device'), `${major}:${minor} ${bps}`);
      writeFileSync(join(dir, 'blkio.throttle.write_bps_device'), `${major}:${minor} ${bps}`);
      return { procs: join(dir, 'cgroup.procs'), describe: `blkio cgroup, ${bps} B/s (${iops} IOPS of ${ioBytes / 1024} KiB) on ${major}:${minor}`, remove: () => rmdirSync(dir) };
    }
    const v2 = '/sys/fs/cgroup';
    if (existsSync(join(v2, 'cgroup.controllers'))) {
      const dir = join(v2, `bytevisor-parda-${process.pid}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'io.max'), `${major}:${minor} rbps=${bps} wbps=${bps}`);
      return { procs: join(dir, 'cgroup.procs'), describe: `io.max cgroup, ${bps} B/s (${iops} IOPS of ${ioBytes / 1024} KiB) on ${major}:${minor}`, remove: () => rmdirSync(dir) };
    }
  } catch {
    return null;
  }
  return null;
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function hasChrt(): boolean {
  try {
    execFileSync('chrt', ['--max'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function makeNamespace(name: string): boolean {
  try {
    execFileSync('ip', ['netns', 'add', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function removeNamespace(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // already gone
  }
}

/** Starts one tools/host process (in `procs`'s cgroup and namespace `ns` when given). */
function startHost(dir: string, hostId: number, config: object, procs: string | null, ns: string | null, realtime: boolean): HostProcess {
  const configPath = join(dir, `host${hostId}.json`);
  const socket = join(dir, `host${hostId}.sock`);
  writeFileSync(configPath, JSON.stringify(config));
  const node = [process.execPath, '--import', 'tsx', join(REPO, 'tools', 'host.ts'), '--config', configPath, '--api-sock', socket, '--quiet'];
  const command = [...(ns === null ? [] : ['ip', 'netns', 'exec', ns]), ...(realtime ? ['chrt', '-r', '10'] : []), ...node];
  // The shell joins the cgroup, then execs the host (whose threads, the libuv pool's too, inherit it).
  const script = `${procs === null ? '' : `echo $$ > '${procs}' && `}exec "$@"`;
  const child = spawn('/bin/sh', ['-c', script, 'sh', ...command], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Enough pool threads that every window's requests reach the device at once.
    env: { ...process.env, UV_THREADPOOL_SIZE: '128' },
  });
  const host: HostProcess = { hostId, socket, child, output: '', exited: new Promise((resolve) => child.on('close', () => resolve())) };
  child.stdout!.on('data', (chunk: Buffer) => (host.output = (host.output + chunk.toString()).slice(-4000)));
  child.stderr!.on('data', (chunk: Buffer) => (host.output = (host.output + chunk.toString()).slice(-4000)));
  return host;
}

async function storageOf(host: HostProcess): Promise<StorageIoStatus> {
  const answer = await apiRequest<StorageIoStatus>(host.socket, 'GET', '/host/storage');
  if (answer.status !== 200) throw new Error(`host ${host.hostId}: GET /host/storage answered ${answer.status}: ${JSON.stringify(answer.body)}`);
  return answer.body;
}

async function patch(host: HostProcess, path: string, body: object): Promise<void> {
  const answer = await apiRequest(host.socket, 'PATCH', path, body);
  if (answer.status !== 200) throw new Error(`host ${host.hostId}: PATCH ${path} answered ${answer.status}: ${JSON.stringify(answer.body)}`);
}

async function waitForApi(host: HostProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await storageOf(host);
      return;
    } catch (error) {
      if (Date.now() > deadline || host.child.exitCode !== null) throw new Error(`host ${host.hostId} did not answer: ${(error as Error).message}\n${host.output}`);
      await sleep(200);
    }
  }
}

/** Measures `hosts` over `ms`: counter deltas, windows sampled every period. */
async function measurePhase(name: string, hosts: HostProcess[], ms: number, periodMs: number, thresholdMs: number | null): Promise<PardaPhaseFigures> {
  const before = await Promise.all(hosts.map(storageOf));
  const windows = hosts.map(() => [] as number[]);
  const started = performance.now();
  while (performance.now() - started < ms) {
    await sleep(periodMs);
    const now = await Promise.all(hosts.map(storageOf));
    now.forEach((s, i) => windows[i]!.push(s.window));
  }
  const after = await Promise.all(hosts.map(storageOf));
  const seconds = (performance.now() - started) / 1000;
  const figures = hosts.map((host, i): PardaHostFigures => {
    const a = before[i]!;
    const b = after[i]!;
    const ios = b.ios_total - a.ios_total;
    return {
      hostId: host.hostId,
      shares: b.io_shares,
      window: windows[i]!.reduce((s, w) => s + w, 0) / Math.max(1, windows[i]!.length),
      latencyMs: ios === 0 ? 0 : (b.latency_sum_ms - a.latency_sum_ms) / ios,
      normalisedMs: ios === 0 ? 0 : (b.normalised_latency_sum_ms - a.normalised_latency_sum_ms) / ios,
      iops: ios / seconds,
      bytesPerSecond: (b.bytes_total - a.bytes_total) / seconds,
    };
  });
  const iops = figures.reduce((s, h) => s + h.iops, 0);
  const weighted = (key: 'latencyMs' | 'normalisedMs'): number => (iops === 0 ? 0 : figures.reduce((s, h) => s + h[key] * h.iops, 0) / iops);
  return { name, thresholdMs, hosts: figures, latencyMs: weighted('latencyMs'), normalisedMs: weighted('normalisedMs'), iops };
}

/** Runs the four phases (module comment) and returns their figures. */
export async function measurePardaBench(options: PardaBenchOptions = {}): Promise<PardaBenchFigures> {
  const quick = options.quick ?? false;
  const count = options.hosts ?? (quick ? 3 : 4);
  const depth = options.depth ?? 32;
  const sectors = options.sectors ?? 8;
  const writePct = options.writePct ?? 0;
  const image = options.image ?? DEFAULT_IMAGE;
  const periodMs = options.periodMs ?? 250;
  const settleMs = options.settleMs ?? (quick ? 6000 : 10_000);
  const measureMs = options.measureMs ?? (quick ? 5000 : 10_000);
  const step = options.onStep ?? (() => {});
  const loadStart = loadavg().map((v) => Number(v.toFixed(2)));
  step(`parda: image ${image}`);
  ensureImage(image, options.imageMib ?? 1024);
  const dir = mkdtempSync(join(tmpdir(), 'bv-parda-'));
  const statsFile = join(dir, 'stats.parda');
  const throttle = isRoot() ? makeThrottle(image, options.throttleIops ?? 4000, sectors * 512) : null;
  const namespaces: string[] = [];
  const hosts: HostProcess[] = [];
  try {
    const useNetns = (options.netns ?? true) && isRoot();
    const realtime = (options.realtime ?? true) && isRoot() && hasChrt();
    for (let hostId = 0; hostId < count; hostId++) {
      let ns: string | null = null;
      if (useNetns) {
        const name = `bvparda-${process.pid}-${hostId}`;
        if (makeNamespace(name)) {
          namespaces.push(name);
          ns = name;
        }
      }
      hosts.push(startHost(dir, hostId, {
        host_memory_mib: 16,
        storage_io: { stats_file: statsFile, host_id: hostId, latency_threshold_ms: 1000, control: false, period_ms: periodMs },
        vms: [{ name: `io${hostId}`, image: GUEST, memory_mib: 4, boot_args: `${depth} ${writePct} ${sectors} 0 ${hostId + 1}`, disk: { path: image, async: true, direct: true } }],
      }, null, ns, realtime));
    }
    step(`parda: ${count} hosts starting (${namespaces.length === count ? 'each in its own network namespace' : 'sharing the network namespace'})`);
    await Promise.all(hosts.map((host) => waitForApi(host, 60_000)));
    // Into the throttled cgroup only once they serve: a host starting behind the others' queued
    // IOs waited ~25 ms for each file its start-up read from the disk (a fresh checkout's cold
    // files: a CI run saw a host not answer for 60 s). Writing the pid moves every thread.
    if (throttle) for (const host of hosts) writeFileSync(throttle.procs, String(host.child.pid));
    await sleep(settleMs / 2);
    step('parda: uncontrolled');
    const uncontrolled = await measurePhase('uncontrolled', hosts, measureMs, periodMs, null);
    const threshold = (options.thresholdRatio ?? 0.8) * uncontrolled.normalisedMs;
    step(`parda: controlled, equal shares, threshold ${threshold.toFixed(2)} ms`);
    await Promise.all(hosts.map((host) => patch(host, '/host/storage', { control: true, latency_threshold_ms: threshold })));
    await sleep(settleMs);
    const controlled = await measurePhase('controlled, equal shares', hosts, measureMs, periodMs, threshold);
    const sharesThreshold = (options.sharesThresholdRatio ?? 0.65) * uncontrolled.normalisedMs;
    const shares = hosts.map((_, i) => (i < count / 2 ? 1000 : 2000));
    step(`parda: controlled, shares ${shares.map((s) => s / 1000).join(':')}, threshold ${sharesThreshold.toFixed(2)} ms`);
    await Promise.all(hosts.map((host, i) => patch(host, `/vms/io${host.hostId}`, { io_shares: shares[i] })));
    await Promise.all(hosts.map((host) => patch(host, '/host/storage', { latency_threshold_ms: sharesThreshold })));
    await sleep(settleMs);
    const sharesPhase = await measurePhase(`controlled, shares ${shares.map((s) => s / 1000).join(':')}`, hosts, measureMs, periodMs, sharesThreshold);
    step(`parda: host ${count - 1} stops`);
    const last = hosts[count - 1]!;
    last.child.kill('SIGTERM');
    await last.exited;
    await sleep(settleMs);
    const rest = hosts.slice(0, -1);
    const afterStop = await measurePhase(`host ${count - 1} stopped`, rest, measureMs, periodMs, sharesThreshold);
    const torn = (await Promise.all(rest.map(storageOf))).reduce((s, x) => s + x.torn_reads, 0);
    return {
      hosts: count, depth, ioBytes: sectors * 512, writePct, image, throttle: throttle?.describe ?? 'none (bare disk)',
      isolation: namespaces.length === count ? 'netns' : 'shared', realtime, periodMs,
      uncontrolled, controlled, shares: sharesPhase, afterStop, tornReads: torn,
      load: { start: loadStart, end: loadavg().map((v) => Number(v.toFixed(2))) },
    };
  } finally {
    for (const host of hosts) if (host.child.exitCode === null && host.child.signalCode === null) host.child.kill('SIGTERM');
    await Promise.all(hosts.map((host) => Promise.race([host.exited, sleep(10_000)])));
    for (const host of hosts) if (host.child.exitCode === null && host.child.signalCode === null) host.child.kill('SIGKILL');
    for (const name of namespaces) removeNamespace(name);
    try {
      throttle?.remove();
    } catch {
      // a straggler still in the cgroup: it goes when that process ends
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** PARDA's table per host (shares, window, latency, IOPS) for each phase. */
export function formatPardaBench(figures: PardaBenchFigures): string[] {
  const out = [
    `PARDA (T-19): ${figures.hosts} host processes (${figures.isolation === 'netns' ? 'each in its own network namespace' : 'one network namespace'}${figures.realtime ? ', SCHED_RR 10' : ''}), one VM each keeping ${figures.depth} requests of ${figures.ioBytes / 1024} KiB in flight (${figures.writePct} % writes, O_DIRECT), shared image ${figures.image}; device throttle: ${figures.throttle}; period ${figures.periodMs} ms; load ${figures.load.start.join(' ')} -> ${figures.load.end.join(' ')}`,
  ];
  for (const phase of [figures.uncontrolled, figures.controlled, figures.shares, figures.afterStop]) {
    out.push(`  ${phase.name}${phase.thresholdMs === null ? '' : `, threshold ${phase.thresholdMs.toFixed(2)} ms`}: ${phase.iops.toFixed(0)} IOPS at ${phase.latencyMs.toFixed(2)} ms (normalised ${phase.normalisedMs.toFixed(2)} ms)`);
    out.push('    host  shares  window  latency ms    IOPS');
    for (const h of phase.hosts) out.push(`    ${String(h.hostId).padStart(4)}  ${String(h.shares).padStart(6)}  ${h.window.toFixed(1).padStart(6)}  ${h.latencyMs.toFixed(2).padStart(10)}  ${h.iops.toFixed(0).padStart(6)}`);
  }
  out.push(`  statistics file: ${figures.tornReads} torn reads detected and retried`);
  return out;
}

/** The issue's targets: latency within ±20 % of 𝓛, throughput within 5 % of uncontrolled, windows within ±25 % of the shares, a stopped host's share taken. */
export function pardaChecks(figures: PardaBenchFigures): Check[] {
  const load = figures.load.end[0] ?? 0;
  const { uncontrolled, controlled, shares, afterStop } = figures;
  const latencyRatio = controlled.normalisedMs / controlled.thresholdMs!;
  const throughputRatio = controlled.iops / uncontrolled.iops;
  // Each host against its part of the total by shares (W·s_i / Σs): 0 for a perfect split.
  const shareSum = shares.hosts.reduce((sum, h) => sum + h.shares, 0);
  const worstOff = (value: (h: PardaHostFigures) => number): number => {
    const total = shares.hosts.reduce((sum, h) => sum + value(h), 0);
    return Math.max(...shares.hosts.map((h) => Math.abs(value(h) / ((total * h.shares) / shareSum) - 1)));
  };
  const worstWindow = worstOff((h) => h.window);
  const worstIops = worstOff((h) => h.iops);
  const kept = afterStop.iops / shares.iops;
  const grew = Math.min(...afterStop.hosts.map((h, i) => h.iops / shares.hosts[i]!.iops));
  return [
    { name: 'parda: equal shares, controlled latency / threshold', target: '0.8 … 1.2', value: latencyRatio, pass: Math.abs(latencyRatio - 1) <= 0.2, load },
    { name: 'parda: equal shares, controlled / uncontrolled aggregate IOPS', target: '0.95 … 1.05', value: throughputRatio, pass: Math.abs(throughputRatio - 1) <= 0.05, load },
    { name: 'parda: shares, worst window against its share of the total', target: '<= 0.25 off', value: worstWindow, pass: worstWindow <= 0.25, load },
    { name: 'parda: shares, worst IOPS against its share of the total', target: '<= 0.25 off', value: worstIops, pass: worstIops <= 0.25, load },
    { name: 'parda: a host stops, the others\' aggregate IOPS / all hosts\' before', target: '>= 0.9', value: kept, pass: kept >= 0.9, load },
    { name: 'parda: a host stops, smallest IOPS growth of the others', target: '> 1.05', value: grew, pass: grew > 1.05, load },
  ];
}
