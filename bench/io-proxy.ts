/**
 * Issue 17 (`npm run bench -- --only io`): a disk proxied over the partition bus (T-20,
 * docs/bus.md) against the block device itself. The same nanokernel workload runs on a VM with
 * its own block device ("direct") and on a VM whose disk is served by a storage-server guest over
 * a block channel (bus, the client speaking 2.0: up to 8 sectors per request; and a client
 * limited to 1.0: one sector per request). Interleaved rounds after a warm-up round, medians of
 * wall time from boot to power-off; instructions per sector are
 * deterministic.
 *
 * Workloads: `read` — the `reader` program's first pass reads every sector once through the page
 * cache (8-sector blocks: one READ of 8 sectors direct, one request of 8 on 2.0, eight on 1.0);
 * `write` — `record put` of distinct keys: each a lookup read, a one-sector write, a flush and a
 * read back.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attachStandardDevices, CaptureSink, DISK_SECTOR_BYTES, type StandardDevices } from '../devices/index.ts';
import { assemble, assembleFile } from '../guest-isa/assembler.ts';
import type { GuestImage } from '../guest-isa/image-types.ts';
import { createHypervisor, type Vm } from '../kernel/index.ts';
import { Bus } from '../services/bus/index.ts';
import { cpuSince, loadNow, median, type Check } from './harness.ts';

const KERNEL = new URL('../examples/nanokernel/kernel.s', import.meta.url).pathname;
const SERVER = new URL('../examples/bus/storage-server.s', import.meta.url).pathname;
const MiB = 2 ** 20;

/** How measureIoProxy runs. */
export interface IoProxyOptions {
  quick?: boolean;
  /** Disk sectors (default 8192 = 4 MiB, quick 2048). */
  sectors?: number;
  /** Keys `record put` writes (default 200, quick 50). */
  puts?: number;
  /** Interleaved rounds (default 5, quick 2). */
  rounds?: number;
  onStep?: (label: string) => void;
}

/** One arrangement on one workload: medians over the rounds. */
export interface IoProxyRow {
  workload: 'read' | 'write';
  arrangement: 'direct' | 'bus 2.0' | 'bus 1.0';
  /** Median wall ms from boot to power-off. */
  wallMs: number;
  /** Every round's wall ms. */
  wallRuns: number[];
  /** Median process CPU ms over the same runs (less disturbed by other tenants than wall time). */
  cpuMs: number;
  /** Sectors the workload moves (read: the disk once; write: the sectors written). */
  sectors: number;
  /** KiB/s of those sectors by median wall time. */
  kibPerSecond: number;
  /** KiB/s by median CPU time. */
  cpuKibPerSecond: number;
  /** Guest instructions per sector moved by the client (the nanokernel). */
  clientInstructionsPerSector: number;
  /** Guest instructions per sector moved by the storage server (0 direct). */
  serverInstructionsPerSector: number;
  /** Requests the storage server took (0 direct). */
  requests: number;
}

/** What measureIoProxy returns. */
export interface IoProxyFigures {
  /** Disk sectors (the read workload reads each once). */
  sectors: number;
  /** Keys the write workload puts. */
  puts: number;
  /** Interleaved rounds. */
  rounds: number;
  /** Every workload × arrangement. */
  rows: IoProxyRow[];
  /** Proxied (2.0) / direct throughput, per workload. */
  readRatio: number;
  writeRatio: number;
  /** Proxied 1.0 / 2.0 read throughput. */
  v1ReadRatio: number;
  /** readRatio and writeRatio by CPU time. */
  cpuReadRatio: number;
  cpuWriteRatio: number;
  /** The 1-minute load average at the start and the end. */
  load: { start: number; end: number };
}

const ARRANGEMENTS = ['direct', 'bus 2.0', 'bus 1.0'] as const;
const WORKLOADS = ['read', 'write'] as const;

/** The nanokernel; '1.0' builds one whose bus driver proposes only 1.0 (bus.s BUS_FIRST_VERSION = 1). */
function kernelImage(versions: '2.0' | '1.0'): GuestImage {
  if (versions === '2.0') return assembleFile(KERNEL).image;
  const line = '        .equ    BUS_FIRST_VERSION, 0\n';
  const readFile = (path: string): string => {
    const text = readFileSync(path, 'utf8');
    return path.endsWith('/bus.s') ? text.replace(line, '        .equ    BUS_FIRST_VERSION, 1\n') : text;
  };
  return assemble(readFileSync(KERNEL, 'utf8'), { fileName: KERNEL, readFile }).image;
}

interface Images {
  v2: GuestImage;
  v1: GuestImage;
  server: GuestImage;
}

/** One boot of the workload in the arrangement, on a fresh copy of the disk. */
function runOnce(images: Images, arrangement: (typeof ARRANGEMENTS)[number], bootArgs: string, diskPath: string): { wallMs: number; cpuMs: number; client: number; server: number; requests: number; output: string } {
  const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
  const closers: StandardDevices[] = [];
  try {
    const client = hv.createVm({ memoryBytes: 16 * MiB, name: 'client' });
    client.loadImage(arrangement === 'bus 1.0' ? images.v1 : images.v2);
    const output = new CaptureSink();
    const vms: Vm[] = [client];
    let serverVm: Vm | null = null;
    if (arrangement === 'direct') {
      closers.push(attachStandardDevices(client, { output, bootArgs, disk: diskPath }));
    } else {
      const bus = new Bus();
      closers.push(attachStandardDevices(client, { output, bootArgs }));
      bus.attachVm(client, hv);
      serverVm = hv.createVm({ memoryBytes: MiB, name: 'server' });
      serverVm.loadImage(images.server);
      closers.push(attachStandardDevices(serverVm, { output: new CaptureSink(), disk: diskPath }));
      bus.attachVm(serverVm, hv);
      bus.addChannel({ name: 'disk0', service: 'block', client: 'client', server: 'server' });
      vms.push(serverVm);
    }
    const started = performance.now();
    const cpuStart = process.cpuUsage();
    for (;;) {
      const results = hv.run({ maxInstructions: 5_000_000 }, vms);
      const c = results[0]!.reason;
      if (c.kind === 'halted') break;
      if (c.kind !== 'budget' && c.kind !== 'idle') throw new Error(`io-proxy: the client stopped: ${JSON.stringify(c)}`);
      const s = results[1]?.reason;
      if (s && s.kind !== 'budget' && s.kind !== 'idle') throw new Error(`io-proxy: the server stopped: ${JSON.stringify(s)}`);
      if (results.every((r) => r.instructions === 0)) throw new Error('io-proxy: both VMs wait with nothing to wake them');
    }
    const wallMs = performance.now() - started;
    const cpuMs = cpuSince(cpuStart);
    closers[0]!.console.flush();
    const requests = serverVm ? serverRequests(serverVm) : 0;
    return { wallMs, cpuMs, client: client.instructionsRetired, server: serverVm?.instructionsRetired ?? 0, requests, output: output.text() };
  } finally {
    for (const devices of closers) devices.block?.close();
    hv.close();
  }
}

let serverSymbols: Map<string, number> | null = null;
/** The server's count of requests taken (its srv_requests word). */
function serverRequests(vm: Vm): number {
  serverSymbols ??= assembleFile(SERVER).symbols;
  const bytes = vm.memory.readPhysical(serverSymbols.get('srv_requests')! as never, 4);
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

/** Steps onStep reports. */
export function ioProxyStepCount(options: IoProxyOptions = {}): number {
  return ((options.rounds ?? (options.quick ? 2 : 5)) + 1) * ARRANGEMENTS.length * WORKLOADS.length;
}

/** Runs every arrangement on every workload, interleaved, and checks they print the same. */
export async function measureIoProxy(options: IoProxyOptions = {}): Promise<IoProxyFigures> {
  const loadStart = loadNow();
  const sectors = options.sectors ?? (options.quick ? 2048 : 8192);
  const puts = options.puts ?? (options.quick ? 50 : 200);
  const rounds = options.rounds ?? (options.quick ? 2 : 5);
  const images: Images = { v2: kernelImage('2.0'), v1: kernelImage('1.0'), server: assembleFile(SERVER).image };
  const dir = mkdtempSync(join(tmpdir(), 'bv-ioproxy-'));
  try {
    const disk = new Uint8Array(sectors * DISK_SECTOR_BYTES);
    for (let i = 0; i < disk.length; i += 4) new DataView(disk.buffer).setUint32(i, Math.imul(i + 1, 2654435761) >>> 0, true);
    const keys = Array.from({ length: puts }, (_, i) => `put k${i} v${i}`).join(' ');
    const bootArgs = { read: `reader ${sectors / 8} 1`, write: `record ${keys}` };
    const moved = { read: sectors, write: puts };
    const runs = new Map<string, { wall: number[]; cpu: number[]; client: number; server: number; requests: number; output: string }>();
    // Round 0 warms the JIT up and is not counted (the first rounds ran up to 2x slower).
    for (let round = 0; round <= rounds; round++) {
      for (const workload of WORKLOADS) {
        for (const arrangement of ARRANGEMENTS) {
          options.onStep?.(`io-proxy: ${workload}, ${arrangement} (${round === 0 ? 'warm-up' : `round ${round}/${rounds}`})`);
          const path = join(dir, `${workload}-${arrangement.replace(/\W/g, '')}-${round}.img`);
          // Records start from free sectors; the read workload reads the pattern.
          writeFileSync(path, workload === 'read' ? disk : new Uint8Array(disk.length));
          const run = runOnce(images, arrangement, bootArgs[workload], path);
          if (round === 0) continue;
          const key = `${workload}/${arrangement}`;
          const entry = runs.get(key) ?? { wall: [], cpu: [], client: run.client, server: run.server, requests: run.requests, output: run.output };
          entry.wall.push(run.wallMs);
          entry.cpu.push(run.cpuMs);
          runs.set(key, entry);
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    }
    // The arrangements must do the same work: the program lines must match the direct run's.
    for (const workload of WORKLOADS) {
      const programLines = (text: string): string => text.split('\n').filter((l) => l.startsWith('reader:') || l.startsWith('record:')).join('\n');
      const direct = programLines(runs.get(`${workload}/direct`)!.output);
      if (direct === '') throw new Error(`io-proxy: the ${workload} workload printed nothing`);
      for (const arrangement of ARRANGEMENTS) {
        if (programLines(runs.get(`${workload}/${arrangement}`)!.output) !== direct) throw new Error(`io-proxy: ${arrangement} printed other results than direct (${workload})`);
      }
    }
    const rows: IoProxyRow[] = [];
    for (const workload of WORKLOADS) {
      for (const arrangement of ARRANGEMENTS) {
        const entry = runs.get(`${workload}/${arrangement}`)!;
        const wallMs = median(entry.wall);
        const cpuMs = median(entry.cpu);
        const kib = (moved[workload] * DISK_SECTOR_BYTES) / 1024;
        rows.push({
          workload, arrangement, wallMs, wallRuns: entry.wall, cpuMs, sectors: moved[workload],
          kibPerSecond: kib / (wallMs / 1000),
          cpuKibPerSecond: kib / (cpuMs / 1000),
          clientInstructionsPerSector: entry.client / moved[workload],
          serverInstructionsPerSector: entry.server / moved[workload],
          requests: entry.requests,
        });
      }
    }
    const row = (workload: string, arrangement: string): IoProxyRow => rows.find((r) => r.workload === workload && r.arrangement === arrangement)!;
    return {
      sectors, puts, rounds, rows,
      readRatio: row('read', 'bus 2.0').kibPerSecond / row('read', 'direct').kibPerSecond,
      writeRatio: row('write', 'bus 2.0').kibPerSecond / row('write', 'direct').kibPerSecond,
      v1ReadRatio: row('read', 'bus 1.0').kibPerSecond / row('read', 'bus 2.0').kibPerSecond,
      cpuReadRatio: row('read', 'bus 2.0').cpuKibPerSecond / row('read', 'direct').cpuKibPerSecond,
      cpuWriteRatio: row('write', 'bus 2.0').cpuKibPerSecond / row('write', 'direct').cpuKibPerSecond,
      load: { start: loadStart, end: loadNow() },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The targets: the proxied disk reads at least a third as fast as the device itself. */
export function ioProxyChecks(figures: IoProxyFigures): Check[] {
  return [
    {
      name: 'io-proxy: read throughput, disk proxied over the bus (2.0) / the block device itself',
      target: '>= 0.33',
      value: figures.readRatio,
      pass: figures.readRatio >= 0.33,
      cpuValue: figures.cpuReadRatio,
      load: figures.load.end,
    },
  ];
}

/** The report's lines. */
export function formatIoProxy(figures: IoProxyFigures): string[] {
  const out = [
    `Disk proxied over the partition bus (issue 17): ${figures.sectors} sectors read once (reader), ${figures.puts} record puts; median of ${figures.rounds} interleaved rounds, load ${figures.load.start} -> ${figures.load.end}`,
  ];
  for (const r of figures.rows) {
    out.push(`  ${r.workload.padEnd(5)} ${r.arrangement.padEnd(8)} ${r.kibPerSecond.toFixed(0).padStart(7)} KiB/s  wall ${r.wallMs.toFixed(1).padStart(7)} ms  CPU ${r.cpuMs.toFixed(1).padStart(7)} ms (${r.cpuKibPerSecond.toFixed(0)} KiB/s)  instructions/sector client ${r.clientInstructionsPerSector.toFixed(0).padStart(6)} server ${r.serverInstructionsPerSector.toFixed(0).padStart(6)}  requests ${r.requests}  (rounds ${r.wallRuns.map((w) => w.toFixed(0)).join('/')} ms)`);
  }
  out.push(`  bus 2.0 / direct: read ${figures.readRatio.toFixed(2)}x, write ${figures.writeRatio.toFixed(2)}x by wall time (by CPU time ${figures.cpuReadRatio.toFixed(2)}x, ${figures.cpuWriteRatio.toFixed(2)}x); bus 1.0 / 2.0 read ${figures.v1ReadRatio.toFixed(2)}x`);
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await measureIoProxy({ quick: process.argv.includes('--quick'), onStep: (label) => process.stderr.write(`${label}\n`) });
  for (const line of formatIoProxy(figures)) console.log(line);
  for (const check of ioProxyChecks(figures)) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value.toFixed(3)} (${check.target})`);
}
