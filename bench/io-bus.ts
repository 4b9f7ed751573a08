/**
 * Issue 17 (`npm run bench -- --only io`): the partition bus itself (T-20, docs/bus.md).
 *
 * - Round-trip latency: one packet in flight, 64 B and 64 KiB payloads, between a guest and the
 *   host's echo service (the guest polls: the echo answers inside its doorbell) and between two
 *   guests relayed by the host (both wait in wfi for their channel interrupt).
 * - Throughput: a burst of packets through the rings (as many in flight as fit), the same two
 *   paths, payload bytes delivered back to the sender per second.
 * - Baseline, measured in the same run: the same payload bytes moved by a plain host copy through
 *   the memory API (a pageBytes view written with writePhysical, one copy per packet as the bus
 *   does), against the bus's own move driven from the host (no guest instructions), and the
 *   guests' instructions per round trip, so the ratios say what the bus costs over the copy it
 *   cannot avoid.
 *
 * The figures include the guests' work: building each packet, copying it into the send ring and
 * out of the receive ring word by word (a driver that builds packets in place would save one of
 * those copies).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CaptureSink, attachStandardDevices } from '../devices/index.ts';
import { assemble } from '../guest-isa/assembler.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../kernel/index.ts';
import { Bus } from '../services/bus/index.ts';
import { parseHostConfig } from '../services/host/config.ts';
import { Host } from '../services/host/host.ts';
import { GUEST_LIBRARY } from '../tests/devices/harness.ts';
import { echoClient, pingClient, relayServer } from '../tests/devices/channel-guest.ts';
import { cpuSince, loadNow, median, type Check } from './harness.ts';

/** How measureIoBus runs. */
export interface IoBusOptions {
  /** Fewer round trips and packets, fewer rounds. */
  quick?: boolean;
  /** Interleaved rounds (default 3, quick 1). */
  rounds?: number;
  /** Called before each step. */
  onStep?: (label: string) => void;
}

/** One path × payload size: medians over the rounds. */
export interface IoBusRow {
  /** 'echo' (guest ↔ host echo service) or 'relay' (guest ↔ guest through the host). */
  path: 'echo' | 'relay';
  /** Payload bytes per packet (the 16-byte packet header comes on top). */
  payloadBytes: number;
  /** Round trips timed, one packet in flight. */
  roundTrips: number;
  /** Median µs per round trip (wall). */
  roundTripUs: number;
  /** The same by process CPU time. */
  roundTripCpuUs: number;
  /** Guest instructions per round trip (both guests on the relay path). */
  instructionsPerRoundTrip: number;
  /** Packets in the burst. */
  burstPackets: number;
  /** Median MiB/s of payload delivered back to the sender in the burst (wall). */
  burstMiBps: number;
  /** The same by process CPU time. */
  burstCpuMiBps: number;
  /** Ring-full waits the bus counted during one burst. */
  ringFullWaits: number;
}

/** What measureIoBus returns. */
export interface IoBusFigures {
  /** Interleaved rounds. */
  rounds: number;
  /** Every path × size. */
  rows: IoBusRow[];
  /** Baseline: MiB/s of a plain host copy (pageBytes view → writePhysical), per payload size. */
  copyMiBps: Record<number, number>;
  /** The bus's own move (host-driven, no guest instructions): MiB/s per payload size. */
  busMoveMiBps: Record<number, number>;
  /** Bus move / plain copy, per payload size: what validation and ring bookkeeping cost over the copy. */
  busVsCopy: Record<number, number>;
  /** Echo burst throughput / plain copy, per payload size. */
  echoVsCopy: Record<number, number>;
  /** Relay burst throughput / echo burst throughput, per payload size. */
  relayVsEcho: Record<number, number>;
  /**
   * Round trips through a host (its scheduler, docs/host.md) between a VM in the host's thread and
   * one in a worker group, and between two VMs in the host's thread, 64 B payloads: µs each,
   * best of the rounds (the client starts paused and is resumed after the host has started).
   */
  hostRoundTripUs: { acrossThreads: number; oneThread: number; roundTrips: number };
  /** 1-minute load average at the start and the end. */
  load: { start: number; end: number };
}

const SIZES = [64, 65536] as const;
/** Ring pages (each ring: a header page + data) that hold a burst of each size. */
const RING_PAGES: Record<number, number> = { 64: 8, 65536: 32 };

interface Timed {
  wallMs: number;
  cpuMs: number;
  instructions: number;
  ringFullWaits: number;
}

function boot(hv: Hypervisor, bus: Bus, name: string, program: string): Vm {
  const { image } = assemble(GUEST_LIBRARY + program, { fileName: `${name}.s` });
  const vm = hv.createVm({ name, memoryBytes: 2 << 20 });
  attachStandardDevices(vm, { output: new CaptureSink() });
  bus.attachVm(vm, hv);
  vm.loadImage(image);
  return vm;
}

/** Runs one setup to its end; throws unless every VM exited 0 and the counters add up. */
async function runSetup(path: 'echo' | 'relay', client: string, server: string | null, packets: number, payloadBytes: number): Promise<Timed> {
  const hv = createHypervisor({ hostMemoryBytes: 64 << 20 });
  try {
    const bus = new Bus();
    bus.addChannel(path === 'echo' ? { name: 'c', service: 'echo', client: 'a', server: 'echo' } : { name: 'c', service: 'block', client: 'a', server: 'b' });
    const vms = [boot(hv, bus, 'a', client)];
    if (server !== null) vms.push(boot(hv, bus, 'b', server));
    const cpu = process.cpuUsage();
    const started = performance.now();
    const results = await hv.runAsync({ maxInstructions: 20_000_000_000 });
    const wallMs = performance.now() - started;
    const cpuMs = cpuSince(cpu);
    for (const result of results) {
      if (result.reason.kind !== 'halted' || result.reason.exitCode !== 0) throw new Error(`io-bus ${path}: ${result.vm.name} ended ${JSON.stringify(result.reason)}`);
    }
    const end = bus.info('c').ends[0]!;
    if (end.counters.packetsToGuest !== packets) throw new Error(`io-bus ${path}: ${end.counters.packetsToGuest} packets came back, expected ${packets}`);
    if (end.counters.bytesToGuest !== packets * (payloadBytes + 16)) throw new Error(`io-bus ${path}: ${end.counters.bytesToGuest} bytes came back`);
    return { wallMs, cpuMs, instructions: results.reduce((sum, r) => sum + r.instructions, 0), ringFullWaits: bus.totals().ringFullWaits };
  } finally {
    hv.close();
  }
}

/**
 * The baseline: `count` copies of `bytes` between two guest buffers with the cheapest copy the
 * memory API allows — a read-only view of each source page (pageBytes) written with
 * writePhysical, page piece by page piece — MiB/s, best of 3. The bus does exactly this per
 * packet, plus its checks and ring bookkeeping.
 */
function plainCopyMiBps(bytes: number, count: number): number {
  const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
  try {
    const vm = hv.createVm({ memoryBytes: 2 << 20 });
    const srcGpa = 0x10_0000;
    const dstGpa = 0x14_0000;
    vm.writePhysical(srcGpa, new Uint8Array(bytes).fill(0x5a));
    vm.writePhysical(dstGpa, new Uint8Array(bytes));
    let best = Infinity;
    for (let attempt = 0; attempt < 3; attempt++) {
      const started = performance.now();
      for (let i = 0; i < count; i++) {
        for (let done = 0; done < bytes; done += 4096) {
          const chunk = Math.min(4096, bytes - done);
          vm.memory.writePhysical(dstGpa + done, vm.memory.pageBytes((srcGpa + done) >>> 12).subarray(0, chunk));
        }
      }
      best = Math.min(best, performance.now() - started);
    }
    return (bytes * count) / 2 ** 20 / (best / 1000);
  } finally {
    hv.close();
  }
}

/**
 * The bus's own cost, without guest instructions: a guest opens an echo channel and halts; the
 * bench then plays the guest through the memory API, filling the send ring with as many packets
 * as fit, and times only the doorbell, inside which the bus validates and moves them all into the
 * receive ring (which the bench then empties). MiB/s of payload moved, best of 3 passes.
 */
function busMoveMiBps(payloadBytes: number, packets: number): number {
  const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
  try {
    const bus = new Bus();
    bus.addChannel({ name: 'c', service: 'echo', client: 'a', server: 'echo' });
    const pages = RING_PAGES[payloadBytes]!;
    const vm = boot(hv, bus, 'a', pingClient({ sendPages: pages, recvPages: pages, roundTrips: 0, payloadBytes, waitIrq: false }));
    const [result] = hv.run({ maxInstructions: 10_000_000 });
    if (result!.reason.kind !== 'halted') throw new Error(`io-bus: the channel opener ended ${JSON.stringify(result!.reason)}`);
    const device = bus.deviceOf('a')!;
    const [sendGpns, recvGpns] = ringPages(bus.map(vm, device.slot(0).openHandle), pages);
    const dataBytes = (pages - 1) * 4096;
    const length = 16 + payloadBytes;
    const perBatch = Math.floor((dataBytes - 8) / length);
    const packet = new Uint8Array(length);
    const view = new DataView(packet.buffer);
    view.setUint16(0, 1, true);
    view.setUint16(2, 2, true);
    view.setUint16(4, length / 8, true);
    const word = new DataView(new ArrayBuffer(4));
    const header = (gpns: number[], field: number) => new DataView(vm.readPhysical(gpns[0]! * 4096 + field, 4).buffer).getUint32(0, true);
    const setHeader = (gpns: number[], field: number, value: number) => {
      word.setUint32(0, value, true);
      vm.writePhysical(gpns[0]! * 4096 + field, new Uint8Array(word.buffer));
    };
    let best = Infinity;
    for (let pass = 0; pass < 3; pass++) {
      let spentMs = 0;
      for (let moved = 0; moved < packets; ) {
        const batch = Math.min(perBatch, packets - moved);
        let write = header(sendGpns, 0);
        for (let i = 0; i < batch; i++) write = ringWrite(vm, sendGpns, dataBytes, write, packet);
        setHeader(sendGpns, 0, write);
        const started = performance.now();
        device.write(null as never, 0x30, 0); // DOORBELL: the bus moves the batch
        spentMs += performance.now() - started;
        setHeader(recvGpns, 4, header(recvGpns, 0)); // the "guest" empties its receive ring
        moved += batch;
      }
      best = Math.min(best, spentMs);
    }
    if (bus.info('c').failureCount !== 0 || bus.info('c').ends[0]!.counters.packetsToGuest !== 3 * packets) throw new Error('io-bus: the host-driven channel did not move every packet');
    return (packets * payloadBytes) / 2 ** 20 / (best / 1000);
  } finally {
    hv.close();
  }
}

/** The send and receive rings' guest pages of a grant (header page first). */
function ringPages(gpns: number[], sendPages: number): [number[], number[]] {
  return [gpns.slice(0, sendPages), gpns.slice(sendPages)];
}

/** Writes `bytes` into a ring's data area at `offset` (wrapping); returns the next offset. */
function ringWrite(vm: Vm, gpns: number[], dataBytes: number, offset: number, bytes: Uint8Array): number {
  let at = offset;
  for (let done = 0; done < bytes.length; ) {
    const chunk = Math.min(bytes.length - done, 4096 - (at % 4096));
    vm.writePhysical(gpns[1 + Math.floor(at / 4096)]! * 4096 + (at % 4096), bytes.subarray(done, done + chunk));
    done += chunk;
    at = (at + chunk) % dataBytes;
  }
  return at;
}

/** µs per 64-byte round trip through a Host: client in the host's thread, server there or in a worker group. */
async function hostRoundTripUs(acrossThreads: boolean, roundTrips: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'bv-io-bus-'));
  try {
    const image = (name: string, program: string): string => {
      const path = join(dir, `${name}.s`);
      writeFileSync(path, GUEST_LIBRARY + program);
      return path;
    };
    const host = await Host.start(parseHostConfig({
      host_memory_mib: 64,
      worker_groups: acrossThreads ? [{ name: 'w' }] : [],
      channels: [{ name: 'x', service: 'block', client: 'c', server: 's' }],
      vms: [
        { name: 'c', image: image('c', pingClient({ sendPages: 2, recvPages: 2, roundTrips, payloadBytes: 64, waitIrq: true })), memory_mib: 1, start_paused: true },
        { name: 's', image: image('s', relayServer({ sendPages: 2, recvPages: 2, packets: roundTrips })), memory_mib: 1, ...(acrossThreads ? { group: 'w' } : {}) },
      ],
    }));
    try {
      const started = performance.now();
      host.resume('c');
      const info = await host.whenStopped('c');
      const elapsed = performance.now() - started;
      if (info.exit?.kind !== 'halted' || info.exit.exit_code !== 0) throw new Error(`io-bus: host round trips ended ${JSON.stringify(info.exit)}`);
      return (elapsed * 1000) / roundTrips;
    } finally {
      await host.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Steps measureIoBus reports through onStep. */
export function ioBusStepCount(options: IoBusOptions = {}): number {
  return (options.rounds ?? (options.quick ? 1 : 3)) * (SIZES.length * 4 + 1) + 2;
}

/** Measures the bus's round trips and bursts against a plain copy. */
export async function measureIoBus(options: IoBusOptions = {}): Promise<IoBusFigures> {
  const loadStart = loadNow();
  const rounds = options.rounds ?? (options.quick ? 1 : 3);
  const roundTrips = (size: number) => (size === 64 ? (options.quick ? 2000 : 10_000) : options.quick ? 50 : 200);
  const burst = (size: number) => (size === 64 ? (options.quick ? 10_000 : 50_000) : options.quick ? 50 : 200);
  type Runs = { ping: Timed[]; burst: Timed[] };
  const runs = new Map<string, Runs>();
  const hostTrips = options.quick ? 300 : 2000;
  const across: number[] = [];
  const oneThread: number[] = [];
  for (let round = 0; round < rounds; round++) {
    options.onStep?.(`io-bus: 64 B round trips through a host, across threads and in one (round ${round + 1}/${rounds})`);
    across.push(await hostRoundTripUs(true, hostTrips));
    oneThread.push(await hostRoundTripUs(false, hostTrips));
    for (const size of SIZES) {
      const pages = RING_PAGES[size]!;
      for (const path of ['echo', 'relay'] as const) {
        const key = `${path}/${size}`;
        if (!runs.has(key)) runs.set(key, { ping: [], burst: [] });
        options.onStep?.(`io-bus: ${path} ${size} B round trips (round ${round + 1}/${rounds})`);
        const n = roundTrips(size);
        const ping = pingClient({ sendPages: pages, recvPages: pages, roundTrips: n, payloadBytes: size, waitIrq: path === 'relay' });
        runs.get(key)!.ping.push(await runSetup(path, ping, path === 'relay' ? relayServer({ sendPages: pages, recvPages: pages, packets: n }) : null, n, size));
        options.onStep?.(`io-bus: ${path} ${size} B burst (round ${round + 1}/${rounds})`);
        const b = burst(size);
        const client = echoClient({ versions: [0x0002_0000], sendPages: pages, recvPages: pages, packets: b, payloadBytes: size, fill: false });
        runs.get(key)!.burst.push(await runSetup(path, client, path === 'relay' ? relayServer({ sendPages: pages, recvPages: pages, packets: b }) : null, b, size));
      }
    }
  }
  options.onStep?.('io-bus: plain copy baseline');
  const copyMiBps: Record<number, number> = {};
  for (const size of SIZES) copyMiBps[size] = plainCopyMiBps(size, size === 64 ? 200_000 : 2000);
  options.onStep?.('io-bus: the bus\'s own move, host-driven');
  const busMove: Record<number, number> = {};
  const busVsCopy: Record<number, number> = {};
  for (const size of SIZES) {
    busMove[size] = busMoveMiBps(size, size === 64 ? 200_000 : 2000);
    busVsCopy[size] = busMove[size]! / copyMiBps[size]!;
  }
  const rows: IoBusRow[] = [];
  for (const size of SIZES) {
    for (const path of ['echo', 'relay'] as const) {
      const r = runs.get(`${path}/${size}`)!;
      const n = roundTrips(size);
      const b = burst(size);
      const burstWall = median(r.burst.map((t) => t.wallMs));
      const burstCpu = median(r.burst.map((t) => t.cpuMs));
      rows.push({
        path, payloadBytes: size, roundTrips: n,
        roundTripUs: (median(r.ping.map((t) => t.wallMs)) * 1000) / n,
        roundTripCpuUs: (median(r.ping.map((t) => t.cpuMs)) * 1000) / n,
        instructionsPerRoundTrip: r.ping[0]!.instructions / n,
        burstPackets: b,
        burstMiBps: (b * size) / 2 ** 20 / (burstWall / 1000),
        burstCpuMiBps: (b * size) / 2 ** 20 / (burstCpu / 1000),
        ringFullWaits: r.burst[0]!.ringFullWaits,
      });
    }
  }
  const find = (path: 'echo' | 'relay', size: number) => rows.find((row) => row.path === path && row.payloadBytes === size)!;
  const echoVsCopy: Record<number, number> = {};
  const relayVsEcho: Record<number, number> = {};
  for (const size of SIZES) {
    echoVsCopy[size] = find('echo', size).burstMiBps / copyMiBps[size]!;
    relayVsEcho[size] = find('relay', size).burstMiBps / find('echo', size).burstMiBps;
  }
  return {
    rounds, rows, copyMiBps, busMoveMiBps: busMove, busVsCopy, echoVsCopy, relayVsEcho,
    hostRoundTripUs: { acrossThreads: Math.min(...across), oneThread: Math.min(...oneThread), roundTrips: hostTrips },
    load: { start: loadStart, end: loadNow() },
  };
}

/**
 * The bus's targets: every transfer completed (measure throws otherwise), and at 64 KiB the bus's
 * own move (validation, ring bookkeeping, one copy per packet) runs at least at half the speed of
 * a plain copy of the same bytes through the memory API.
 */
export function ioBusChecks(figures: IoBusFigures): Check[] {
  const ratio = figures.busVsCopy[65536]!;
  return [{
    name: 'io-bus: the bus\'s move of 64 KiB packets / plain host copy of the same bytes',
    target: '>= 0.5',
    value: ratio,
    pass: ratio >= 0.5,
    load: figures.load.end,
  }];
}

/** The report's lines. */
export function formatIoBus(figures: IoBusFigures): string[] {
  const out = [`Partition bus (issue 17, T-20): round trips and bursts, median of ${figures.rounds} interleaved rounds, load ${figures.load.start.toFixed(2)} -> ${figures.load.end.toFixed(2)}`];
  for (const row of figures.rows) {
    const size = row.payloadBytes === 64 ? '64 B' : '64 KiB';
    out.push(
      `  ${row.path.padEnd(5)} ${size.padStart(6)}: round trip ${row.roundTripUs.toFixed(2).padStart(8)} µs (CPU ${row.roundTripCpuUs.toFixed(2)} µs, ${row.instructionsPerRoundTrip.toFixed(0)} guest instr)` +
      `  burst ${row.burstMiBps.toFixed(1).padStart(7)} MiB/s (CPU ${row.burstCpuMiBps.toFixed(1)}; ${row.burstPackets} packets, ${row.ringFullWaits} ring-full waits)`,
    );
  }
  const h = figures.hostRoundTripUs;
  out.push(`  through a host, 64 B, ${h.roundTrips} round trips: client in the host's thread, server in a worker group ${h.acrossThreads.toFixed(1)} µs; both in the host's thread ${h.oneThread.toFixed(1)} µs`);
  for (const size of SIZES) {
    const label = size === 64 ? '64 B' : '64 KiB';
    out.push(
      `  ${label}: plain host copy ${figures.copyMiBps[size]!.toFixed(1)} MiB/s; the bus's own move ${figures.busMoveMiBps[size]!.toFixed(1)} MiB/s (${figures.busVsCopy[size]!.toFixed(3)} of the copy); ` +
      `echo burst / copy ${figures.echoVsCopy[size]!.toFixed(3)}; relay / echo ${figures.relayVsEcho[size]!.toFixed(3)}`,
    );
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await measureIoBus({ quick: process.argv.includes('--quick'), onStep: (label) => process.stderr.write(`${label}\n`) });
  for (const line of formatIoBus(figures)) console.log(line);
  for (const check of ioBusChecks(figures)) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value.toFixed(3)} (${check.target})`);
}
