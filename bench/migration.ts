/**
 * Live migration on loopback (issue 14, `npm run bench -- --only migration`): both hosts in this
 * process (two hypervisors, a round-robin loop running the guest between the event loop's other
 * work, as tools/host does), connected by the framed channel over mutual TLS.
 *
 *  - A plain TLS copy of the same number of bytes over loopback, first, in the same run: the
 *    throughput a migration is compared with.
 *  - Pre-copy of a 256 MiB guest (64 MiB with --quick) whose every page holds data, while it
 *    rewrites an 8 MiB region at a moderate rate: downtime, total time, rounds, throughput over
 *    the copy's.
 *  - Post-copy of the same guest: time to resume on the destination (the pause, from stopping the
 *    guest here to its running there), remote faults and their latency p50/p99, time until the
 *    last page is in.
 *  - The plain copy and the pre-copy again with the destination in a second process
 *    (bench/migration-peer.ts): each end with a thread of its own, as two hosts.
 *
 * Wall and process CPU time for each. Targets are PASS/FAIL lines, never an exit status.
 * `npx tsx bench/migration.ts [--quick]` prints the figures alone.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { assemble } from '../guest-isa/assembler.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../kernel/index.ts';
import { MigrationReceiver, MIGRATION_PROTOCOL, MIGRATION_VERSIONS, PrecopySender, REMOTE_PAGE_WAIT_REASON, type MigrationFigures, type ReceiveFigures } from '../services/migration/migration.ts';
import { connect, TransportServer, type TlsFiles } from '../services/migration/transport.ts';
import { cpuSince, type Check } from './harness.ts';

const MIB = 1024 * 1024;
const PAGE = 4096;

/** The issue's targets. */
export const MIGRATION_TARGETS = { downtimeMs: 300, downtimeGoalMs: 10, throughputRatio: 0.8 } as const;

export interface MigrationOptions {
  quick?: boolean;
  onStep?: (label: string) => void;
}

/** A measured span: wall and process CPU time. */
export interface Span {
  wallMs: number;
  cpuMs: number;
  load: number;
}

export interface PrecopyBenchFigures {
  guestBytes: number;
  /** The guest's write rate while it runs alone, MiB/s of distinct pages per pass. */
  dirtyMiBps: number;
  total: Span;
  /** The guest's pause: from stopping it on A to its first instruction on B (one process, one clock). */
  downtimeMs: number;
  /** The source's own figure (MigrationFigures.downtime_ms): pause to DONE, which also waits for the DONE to come back. */
  sourceDowntimeMs: number;
  /** Of the span's CPU time, the guests' running time, and the rest (the migration's own). */
  guestMs: number;
  migrationCpuMs: number;
  /** The guest's speed while pre-copy runs (until the pause) over its speed alone. */
  guestSpeed: number;
  rounds: number;
  bytesSent: number;
  pagesResent: number;
  switchoverReason: string | null;
  /** bytes_sent over total time, MiB/s (wall, and over CPU time). */
  mibps: number;
  cpuMibps: number;
  /** Round 0 alone (the full pass), MiB/s. */
  round0Mibps: number;
  /** mibps / the plain TLS copy's. */
  ratio: number;
  round0Ratio: number;
}

export interface PostcopyBenchFigures {
  guestBytes: number;
  total: Span;
  /** Pause to running on the destination (the migration's downtime). */
  resumeMs: number;
  /** Of it, from the state's arrival to the VM running (the destination's own share). */
  destinationResumeMs: number | null;
  remotePages: number;
  remoteFaults: number;
  faultP50Ms: number | null;
  faultP99Ms: number | null;
  faultMaxMs: number | null;
  /** The destination guest's time paused waiting for pages. */
  waitMs: number;
  /** From running on the destination to the last page in. */
  pushMs: number;
}

export interface MigrationBenchFigures {
  /** The plain TLS copy of as many bytes as the pre-copy sent. */
  tlsCopy: { bytes: number; span: Span; mibps: number };
  /** The same from a buffer of distinct bytes into fresh memory (what a migration also does at both ends). */
  memoryCopy: { bytes: number; span: Span; mibps: number };
  precopy: PrecopyBenchFigures;
  /** The same pre-copy asked for a 10 ms downtime (the issue's goal): what it got, in how many rounds. */
  lowDowntime: { limitMs: number; downtimeMs: number; sourceDowntimeMs: number; rounds: number; switchoverReason: string | null; total: Span; throttle: number };
  postcopy: PostcopyBenchFigures;
  /**
   * Source and destination in two processes (this one and bench/migration-peer.ts), so each end
   * has its own thread as two hosts do: the plain TLS copy and the pre-copy, compared. CPU is
   * both processes' time, each counted from its first byte to its end, the source guest's
   * running included (it shares the source's thread with the sender).
   */
  twoProcesses: { copy: { bytes: number; wallMs: number; cpuMs: number; mibps: number }; precopy: { bytes: number; wallMs: number; cpuMs: number; sourceCpuMs: number; mibps: number; downtimeMs: number | null; rounds: number; sourceGuestMs: number }; ratio: number; cpuRatio: number };
}

export function migrationStepCount(_options: MigrationOptions = {}): number {
  return 7;
}

/** The pre-copy guest: a pass over its 8 MiB region every ~3 M instructions (a moderate dirty rate). */
const PRECOPY_SPIN = 1_000_000;
/** The post-copy guest walks its region continuously, so it touches pages still remote at once. */
const POSTCOPY_SPIN = 20_000;
const LOW_DOWNTIME_MS = 10;

// ------------------------------------------------------------------------------ certificates

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA and two host certificates it signs, for 127.0.0.1 (made with openssl, in a temporary directory). */
export function certificates(dir: string): { a: TlsFiles; b: TlsFiles } {
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=ca', '-keyout', 'ca.key', '-out', 'ca.pem']);
  const host = (name: string): TlsFiles => {
    writeFileSync(join(dir, `${name}.ext`), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n');
    openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`]);
    openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`]);
    return { ca: join(dir, 'ca.pem'), cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  };
  return { a: host('host-a'), b: host('host-b') };
}

// ------------------------------------------------------------------------------ the guest

const REGION_START = 0x10_0000;
/** The region the guest keeps rewriting. */
const DIRTY_BYTES = 8 * MIB;

/**
 * Adds one to the first word of every page of an 8 MiB region, then spins `spin` iterations, for
 * ever: a moderate dirty rate (the rest of memory holds data the host wrote, never rewritten).
 */
function dirtyingGuest(spin: number): ReturnType<typeof assemble>['image'] {
  return assemble(`
_start:
        li      s3, ${PAGE}
pass:
        li      t0, ${REGION_START}
        li      t1, ${REGION_START + DIRTY_BYTES}
1:      lw      t2, 0(t0)
        addi    t2, t2, 1
        sw      t2, 0(t0)
        add     t0, t0, s3
        bltu    t0, t1, 1b
        li      a2, ${spin}
2:      beqz    a2, pass
        addi    a2, a2, -1
        j       2b
`, { fileName: 'dirty.s' }).image;
}

/** Runs VMs round-robin between the event loop's other work (as the host's scheduler does). */
export class Loop {
  readonly running = new Set<Vm>();
  passes = 0;
  /** Time spent running guests (inside hv.run), ms: the guests' share of the thread. */
  guestMs = 0;
  /** When each VM first ran here (performance.now()). */
  readonly firstRun = new Map<Vm, number>();
  #stopped = false;
  readonly #done: Promise<void>;

  constructor(readonly hv: Hypervisor) {
    this.#done = this.#loop();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }

  async #loop(): Promise<void> {
    while (!this.#stopped) {
      const started = performance.now();
      for (const vm of [...this.running]) {
        const ran = performance.now();
        if (!this.firstRun.has(vm)) this.firstRun.set(vm, ran);
        const [result] = this.hv.run({ maxInstructions: 50_000 }, [vm]);
        this.guestMs += performance.now() - ran;
        if (result!.reason.kind !== 'budget' && result!.reason.kind !== 'running') this.running.delete(vm);
        if (performance.now() - started > 2) break;
      }
      await new Promise((resolve) => (this.running.size === 0 ? setTimeout(resolve, 1) : setImmediate(resolve)));
    }
  }
}

/** Fills every page outside the dirtied region with data (so round 0 sends the whole guest). */
function fill(vm: Vm): void {
  const page = new Uint8Array(PAGE);
  const words = new Uint32Array(page.buffer);
  for (let gpn = 0; gpn < vm.memory.pageCount; gpn++) {
    const gpa = gpn * PAGE;
    if (gpa < 0x1_0000 || (gpa >= REGION_START && gpa < REGION_START + DIRTY_BYTES)) continue; // the image, the region
    words[0] = gpn;
    words[1] = 0x9e3779b9 ^ gpn;
    words[1000] = gpn * 2654435761;
    vm.memory.installPage(gpn, page);
  }
}

function span(startWall: number, startCpu: NodeJS.CpuUsage): Span {
  return { wallMs: round(performance.now() - startWall), cpuMs: round(cpuSince(startCpu)), load: Number(loadavg()[0]!.toFixed(2)) };
}

const round = (value: number, digits = 3): number => Math.round(value * 10 ** digits) / 10 ** digits;

// ------------------------------------------------------------------------------ measurements

/**
 * A plain TLS copy of `bytes` over loopback (mutual TLS, 256 KiB writes), both ends in this
 * process. `memory`: the bytes are read from a buffer of `bytes` distinct bytes and written into
 * fresh memory on the receiving side, as a migration's are (the plain copy sends one hot 256 KiB
 * buffer again and again and drops what it receives).
 */
async function tlsCopy(files: { a: TlsFiles; b: TlsFiles }, bytes: number, memory = false): Promise<{ bytes: number; span: Span; mibps: number }> {
  const read = (f: TlsFiles) => ({ ca: readFileSync(f.ca), cert: readFileSync(f.cert), key: readFileSync(f.key) });
  const server = createTlsServer({ ...read(files.b), requestCert: true, rejectUnauthorized: true });
  let received = 0;
  let into: Uint8Array | null = null;
  const done = new Promise<void>((resolve) => {
    server.on('secureConnection', (socket) => {
      socket.on('data', (chunk: Buffer) => {
        into?.set(chunk, Math.min(received, bytes - chunk.length));
        received += chunk.length;
        if (received >= bytes) resolve();
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const socket = tlsConnect({ ...read(files.a), host: '127.0.0.1', port, servername: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  const CHUNK = 256 * 1024;
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  let source: Buffer | null = null;
  if (memory) {
    source = Buffer.allocUnsafeSlow(bytes);
    for (let at = 0; at < bytes; at += PAGE) source.writeUInt32LE((at / PAGE) >>> 0, at);
  }
  const wall = performance.now();
  const cpu = process.cpuUsage();
  if (memory) into = new Uint8Array(bytes); // fresh: its pages are faulted in as the bytes land
  for (let sent = 0; sent < bytes; sent += CHUNK) {
    if (!socket.write(source === null ? chunk : source.subarray(sent, sent + CHUNK))) await new Promise((resolve) => socket.once('drain', resolve));
  }
  await done;
  const s = span(wall, cpu);
  into = null;
  socket.destroy();
  await new Promise((resolve) => server.close(resolve));
  return { bytes, span: s, mibps: round(bytes / MIB / (s.wallMs / 1000), 1) };
}

/** Starts bench/migration-peer.ts (the far end in its own process); resolves once it listens. */
async function startPeer(files: { b: TlsFiles }, mode: 'copy' | 'migrate', bytes: number): Promise<{ port: number; result: Promise<Record<string, unknown>> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'migration-peer.ts'), mode, files.b.ca, files.b.cert, files.b.key, String(bytes)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let waiting: (() => void) | null = null;
  let text = '';
  child.stdout.on('data', (chunk: Buffer) => {
    text += chunk.toString();
    for (let at = text.indexOf('\n'); at >= 0; at = text.indexOf('\n')) {
      lines.push(text.slice(0, at));
      text = text.slice(at + 1);
    }
    waiting?.();
  });
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  const next = async (): Promise<string> => {
    while (lines.length === 0) {
      const code = await Promise.race([new Promise<null>((resolve) => (waiting = () => resolve(null))), exited]);
      if (code !== null && lines.length === 0) throw new Error(`bench/migration-peer.ts ${mode} exited with ${code} before answering`);
    }
    return lines.shift()!;
  };
  const first = await next();
  if (!first.startsWith('port ')) throw new Error(`bench/migration-peer.ts: unexpected first line '${first}'`);
  return { port: Number(first.slice(5)), result: next().then((line) => JSON.parse(line) as Record<string, unknown>) };
}

/** The plain TLS copy of `bytes` (one hot 256 KiB buffer, as tlsCopy) to a peer process, until it answers that all arrived. */
async function tlsCopyToProcess(files: { a: TlsFiles; b: TlsFiles }, bytes: number): Promise<{ bytes: number; wallMs: number; cpuMs: number; mibps: number }> {
  const peer = await startPeer(files, 'copy', bytes);
  const read = (f: TlsFiles) => ({ ca: readFileSync(f.ca), cert: readFileSync(f.cert), key: readFileSync(f.key) });
  const socket = tlsConnect({ ...read(files.a), host: '127.0.0.1', port: peer.port, servername: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  const answered = new Promise<void>((resolve) => socket.once('data', () => resolve()));
  const CHUNK = 256 * 1024;
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  const wall = performance.now();
  const cpu = process.cpuUsage();
  for (let sent = 0; sent < bytes; sent += CHUNK) {
    if (!socket.write(chunk)) await new Promise((resolve) => socket.once('drain', resolve));
  }
  await answered;
  const wallMs = performance.now() - wall;
  const cpuMs = cpuSince(cpu) + Number((await peer.result)['cpuMs']);
  socket.destroy();
  return { bytes, wallMs: round(wallMs), cpuMs: round(cpuMs), mibps: round(bytes / MIB / (wallMs / 1000), 1) };
}

/** The bench's pre-copy (the same guest, default downtime limit) to a destination in a peer process. */
async function precopyToProcess(files: { a: TlsFiles; b: TlsFiles }, guestBytes: number): Promise<MigrationBenchFigures['twoProcesses']['precopy']> {
  const hv = createHypervisor({ hostMemoryBytes: guestBytes + 32 * MIB });
  const loop = new Loop(hv);
  try {
    const vm = hv.createVm({ name: 'guest', memoryBytes: guestBytes });
    vm.loadImage(dirtyingGuest(PRECOPY_SPIN));
    fill(vm);
    loop.running.add(vm);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const peer = await startPeer(files, 'migrate', guestBytes);
    const wall = performance.now();
    const cpu = process.cpuUsage();
    const guestBefore = loop.guestMs;
    const channel = await connect({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: files.a, host: '127.0.0.1', port: peer.port, name: 'host-a' });
    const sender = new PrecopySender(vm, channel, {
      pause: () => loop.running.delete(vm),
      resume: () => loop.running.add(vm),
      throttle: () => {},
    }, { mode: 'precopy' });
    const figures = await sender.run();
    const wallMs = performance.now() - wall;
    const sourceCpuMs = cpuSince(cpu);
    const result = await peer.result;
    if (result['ran'] !== true) throw new Error('bench/migration-peer.ts: the migrated guest did not run on the destination');
    const cpuMs = sourceCpuMs + Number(result['cpuMs']);
    return {
      bytes: figures.bytes_sent, wallMs: round(wallMs), cpuMs: round(cpuMs), sourceCpuMs: round(sourceCpuMs), mibps: round(figures.bytes_sent / MIB / (wallMs / 1000), 1), downtimeMs: figures.downtime_ms,
      rounds: figures.rounds + 1, sourceGuestMs: round(loop.guestMs - guestBefore),
    };
  } finally {
    await loop.stop();
    hv.close();
  }
}

interface MigrationRun {
  figures: MigrationFigures;
  received: ReceiveFigures;
  span: Span;
  dirtyMiBps: number;
  /** From pausing the guest on A to its first instruction on B (one process: one clock), ms. */
  pauseToRunMs: number;
  /** Time the guests ran (on A, then on B) during the span, ms: the rest of the CPU time is the migration's. */
  guestMs: number;
  /** The guest's instructions per ms running alone, and during the migration until its pause (its slowdown). */
  guestRateAlone: number;
  guestRateMigrating: number;
}

/** One migration of a freshly made guest of `guestBytes` from A to B in `mode`. */
async function migrateOnce(files: { a: TlsFiles; b: TlsFiles }, guestBytes: number, mode: 'precopy' | 'postcopy', spin: number, downtimeMs?: number): Promise<MigrationRun> {
  const hvA = createHypervisor({ hostMemoryBytes: guestBytes + 32 * MIB });
  const hvB = createHypervisor({ hostMemoryBytes: guestBytes + 32 * MIB });
  const loopA = new Loop(hvA);
  const loopB = new Loop(hvB);
  const server = await TransportServer.listen({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: files.b, port: 0, name: 'host-b' });
  try {
    const vm = hvA.createVm({ name: 'guest', memoryBytes: guestBytes });
    vm.loadImage(dirtyingGuest(spin));
    fill(vm);
    loopA.running.add(vm);
    // The dirty rate: pages the guest writes in 200 ms of running alongside the event loop.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const dirtied = new Set<number>();
    const aloneAt = performance.now();
    const aloneInstructions = vm.instructionsRetired;
    vm.memory.beginWriteEpoch((gpn) => void dirtied.add(gpn));
    await new Promise((resolve) => setTimeout(resolve, 200));
    vm.memory.endWriteEpoch();
    const dirtyMiBps = round((dirtied.size * PAGE) / MIB / 0.2, 1);
    const guestRateAlone = (vm.instructionsRetired - aloneInstructions) / (performance.now() - aloneAt);
    let pausedAt = 0;
    let pausedInstructions = 0;
    let target: Vm | null = null;

    const accepted = server.accept();
    const wall = performance.now();
    const cpu = process.cpuUsage();
    const guestBefore = loopA.guestMs + loopB.guestMs;
    const migratingInstructions = vm.instructionsRetired;
    const channel = await connect({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: files.a, host: '127.0.0.1', port: server.port, name: 'host-a' });
    const far = await accepted;
    const receiver = new MigrationReceiver(far, {
      create: (config) => hvB.createVm(config),
      start: (started) => {
        target = started;
        loopB.running.add(started);
      },
      discard: (target) => hvB.destroyVm(target),
      wake: (target) => {
        if (target.stopReason.kind !== 'paused' || target.stopReason.reason !== REMOTE_PAGE_WAIT_REASON) return;
        target.resume();
        loopB.running.add(target);
      },
    });
    const sender = new PrecopySender(vm, channel, {
      pause: () => {
        pausedAt = performance.now();
        pausedInstructions = vm.instructionsRetired;
        loopA.running.delete(vm);
      },
      resume: () => loopA.running.add(vm),
      throttle: () => {},
    }, { mode, ...(downtimeMs === undefined ? {} : { downtimeMs }) });
    const [figures] = await Promise.all([sender.run(), receiver.run()]);
    const s = span(wall, cpu);
    const guestMs = round(loopA.guestMs + loopB.guestMs - guestBefore);
    const runAt = target === null ? undefined : loopB.firstRun.get(target);
    const pauseToRunMs = runAt === undefined || pausedAt === 0 ? (figures.downtime_ms ?? 0) : round(runAt - pausedAt);
    const guestRateMigrating = pausedAt > wall ? (pausedInstructions - migratingInstructions) / (pausedAt - wall) : 0;
    return { figures, received: receiver.figures, span: s, dirtyMiBps, pauseToRunMs, guestMs, guestRateAlone, guestRateMigrating };
  } finally {
    await loopA.stop();
    await loopB.stop();
    await server.close();
    hvA.close();
    hvB.close();
  }
}

export async function measureMigration(options: MigrationOptions = {}): Promise<MigrationBenchFigures> {
  const guestBytes = (options.quick ? 64 : 256) * MIB;
  const dir = mkdtempSync(join(tmpdir(), 'bv-bench-mig-'));
  try {
    const files = certificates(dir);
    options.onStep?.(`migration: plain TLS copy of ${guestBytes / MIB} MiB`);
    const copy = await tlsCopy(files, guestBytes);
    options.onStep?.(`migration: pre-copy of a ${guestBytes / MIB} MiB guest`);
    const pre = await migrateOnce(files, guestBytes, 'precopy', PRECOPY_SPIN);
    const f = pre.figures;
    const round0 = f.round_figures[0]!;
    const mibps = round(f.bytes_sent / MIB / (pre.span.wallMs / 1000), 1);
    const round0Mibps = round(round0.bytes / MIB / (round0.ms / 1000), 1);
    const precopy: PrecopyBenchFigures = {
      guestBytes, dirtyMiBps: pre.dirtyMiBps, total: pre.span, downtimeMs: pre.pauseToRunMs, sourceDowntimeMs: f.downtime_ms ?? 0, guestMs: pre.guestMs,
      migrationCpuMs: round(pre.span.cpuMs - pre.guestMs), guestSpeed: round(pre.guestRateAlone > 0 ? pre.guestRateMigrating / pre.guestRateAlone : 0, 2),
      rounds: f.rounds + 1, bytesSent: f.bytes_sent, pagesResent: f.pages_resent,
      switchoverReason: f.switchover_reason, mibps, cpuMibps: round(f.bytes_sent / MIB / (pre.span.cpuMs / 1000), 1), round0Mibps,
      ratio: round(mibps / copy.mibps, 2), round0Ratio: round(round0Mibps / copy.mibps, 2),
    };
    options.onStep?.(`migration: pre-copy of a ${guestBytes / MIB} MiB guest, downtime limit ${LOW_DOWNTIME_MS} ms`);
    const low = await migrateOnce(files, guestBytes, 'precopy', PRECOPY_SPIN, LOW_DOWNTIME_MS);
    const lowDowntime = { limitMs: LOW_DOWNTIME_MS, downtimeMs: low.pauseToRunMs, sourceDowntimeMs: low.figures.downtime_ms ?? 0, rounds: low.figures.rounds + 1, switchoverReason: low.figures.switchover_reason, total: low.span, throttle: low.figures.throttle };
    options.onStep?.(`migration: post-copy of a ${guestBytes / MIB} MiB guest`);
    const post = await migrateOnce(files, guestBytes, 'postcopy', POSTCOPY_SPIN);
    const pc = post.figures.postcopy!;
    const postcopy: PostcopyBenchFigures = {
      guestBytes, total: post.span, resumeMs: post.figures.downtime_ms ?? 0, destinationResumeMs: post.received.resume_ms, remotePages: pc.remote_pages, remoteFaults: pc.remote_faults,
      faultP50Ms: pc.fault_latency_p50_ms, faultP99Ms: pc.fault_latency_p99_ms, faultMaxMs: pc.fault_latency_max_ms, waitMs: pc.wait_ms, pushMs: pc.push_ms,
    };
    // Last: it leaves 512 MiB of buffers for the garbage collector, which must not land in a migration.
    options.onStep?.(`migration: TLS copy of ${guestBytes / MIB} MiB from memory into fresh memory`);
    const memoryCopy = await tlsCopy(files, guestBytes, true);
    options.onStep?.(`migration: plain TLS copy of ${guestBytes / MIB} MiB to another process`);
    const copy2 = await tlsCopyToProcess(files, guestBytes);
    options.onStep?.(`migration: pre-copy of a ${guestBytes / MIB} MiB guest to another process`);
    const pre2 = await precopyToProcess(files, guestBytes);
    const twoProcesses = {
      copy: copy2, precopy: pre2, ratio: round(pre2.mibps / copy2.mibps, 2),
      // Both processes' CPU, the source guest's included (its running time is wall time inside
      // hv.run, which a loaded machine stretches: not subtracted).
      cpuRatio: round((pre2.bytes / pre2.cpuMs) / (copy2.bytes / copy2.cpuMs), 2),
    };
    return { tlsCopy: copy, memoryCopy, precopy, lowDowntime, postcopy, twoProcesses };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Pre-copy MiB per CPU second over the plain copy's. */
function cpuRatio(figures: MigrationBenchFigures): number {
  return round(figures.precopy.cpuMibps / (figures.tlsCopy.bytes / MIB / (figures.tlsCopy.span.cpuMs / 1000)), 2);
}

export function migrationChecks(figures: MigrationBenchFigures): Check[] {
  const t = MIGRATION_TARGETS;
  const pre = figures.precopy;
  const size = `${pre.guestBytes / MIB} MiB`;
  return [
    { name: `pre-copy downtime, ${size} (ms)`, target: `<= ${t.downtimeMs}`, value: pre.downtimeMs, pass: pre.downtimeMs <= t.downtimeMs, load: pre.total.load },
    {
      name: `pre-copy downtime goal, ${size}, downtime_ms ${figures.lowDowntime.limitMs} (ms)`, target: `<= ${t.downtimeGoalMs}`, value: figures.lowDowntime.downtimeMs,
      pass: figures.lowDowntime.downtimeMs <= t.downtimeGoalMs, load: figures.lowDowntime.total.load,
    },
    {
      name: `pre-copy throughput / plain TLS copy, ${size}`, target: `>= ${t.throughputRatio}`, value: pre.ratio, cpuValue: cpuRatio(figures),
      pass: pre.ratio >= t.throughputRatio, load: pre.total.load,
    },
    {
      name: `pre-copy throughput / plain TLS copy, ${size}, source and destination in two processes`, target: `>= ${t.throughputRatio}`,
      value: figures.twoProcesses.ratio, cpuValue: figures.twoProcesses.cpuRatio, pass: figures.twoProcesses.ratio >= t.throughputRatio, load: pre.total.load,
    },
  ];
}

export function formatMigration(figures: MigrationBenchFigures): string[] {
  const { tlsCopy: copy, precopy: pre, postcopy: post } = figures;
  const ms = (value: number | null): string => (value === null ? '-' : `${value.toFixed(1)} ms`);
  return [
    'Live migration (issue 14), loopback, mutual TLS, both hosts in this process',
    `  plain TLS copy of ${copy.bytes / MIB} MiB: ${copy.mibps} MiB/s (wall ${copy.span.wallMs.toFixed(0)} ms, cpu ${copy.span.cpuMs.toFixed(0)} ms)`,
    `  the same from ${copy.bytes / MIB} MiB of distinct bytes into fresh memory: ${figures.memoryCopy.mibps} MiB/s (wall ${figures.memoryCopy.span.wallMs.toFixed(0)} ms, cpu ${figures.memoryCopy.span.cpuMs.toFixed(0)} ms)`,
    `  pre-copy, ${pre.guestBytes / MIB} MiB guest rewriting 8 MiB at ${pre.dirtyMiBps} MiB/s:`,
    `    total ${pre.total.wallMs.toFixed(0)} ms (cpu ${pre.total.cpuMs.toFixed(0)} ms: the guests ran ${pre.guestMs.toFixed(0)} ms, the migration ${pre.migrationCpuMs.toFixed(0)} ms), ` +
      `${pre.rounds} rounds (${pre.switchoverReason}), ${(pre.bytesSent / MIB).toFixed(1)} MiB sent, ${pre.pagesResent} pages re-sent`,
    `    downtime ${ms(pre.downtimeMs)} (paused on A until running on B; the source's pause-to-DONE ${ms(pre.sourceDowntimeMs)}); guest speed during pre-copy ${pre.guestSpeed} of alone`,
    `    throughput ${pre.mibps} MiB/s = ${pre.ratio} of the copy (round 0 alone: ${pre.round0Mibps} MiB/s = ${pre.round0Ratio}); by CPU time ${pre.cpuMibps} MiB/s = ${cpuRatio(figures)} of the copy's`,
    `    against the memory-to-memory copy: ${round(pre.mibps / figures.memoryCopy.mibps, 2)} (by CPU time ${round(pre.cpuMibps / (figures.memoryCopy.bytes / MIB / (figures.memoryCopy.span.cpuMs / 1000)), 2)})`,
    `  the same asked for downtime_ms ${figures.lowDowntime.limitMs}: downtime ${ms(figures.lowDowntime.downtimeMs)} (pause-to-DONE ${ms(figures.lowDowntime.sourceDowntimeMs)}), ${figures.lowDowntime.rounds} rounds (${figures.lowDowntime.switchoverReason}` +
      `${figures.lowDowntime.throttle > 0 ? `, throttled ${Math.round(figures.lowDowntime.throttle * 100)} %` : ''}), total ${figures.lowDowntime.total.wallMs.toFixed(0)} ms`,
    `  post-copy, ${post.guestBytes / MIB} MiB guest walking its 8 MiB region continuously (switch-over after one full pass):`,
    `    time to resume on the destination ${ms(post.resumeMs)} (of it ${ms(post.destinationResumeMs)} there), ${post.remotePages} pages remote at the switch-over`,
    `    remote faults ${post.remoteFaults}: latency p50 ${ms(post.faultP50Ms)}, p99 ${ms(post.faultP99Ms)}, max ${ms(post.faultMaxMs)}; guest waited ${ms(post.waitMs)} in all`,
    `    last page in ${ms(post.pushMs)} after the switch-over; total ${post.total.wallMs.toFixed(0)} ms (cpu ${post.total.cpuMs.toFixed(0)} ms)`,
    `  two processes (the destination in bench/migration-peer.ts; CPU = both processes):`,
    `    plain TLS copy ${figures.twoProcesses.copy.mibps} MiB/s (wall ${figures.twoProcesses.copy.wallMs.toFixed(0)} ms, cpu ${figures.twoProcesses.copy.cpuMs.toFixed(0)} ms)`,
    `    pre-copy ${figures.twoProcesses.precopy.mibps} MiB/s (wall ${figures.twoProcesses.precopy.wallMs.toFixed(0)} ms, cpu ${figures.twoProcesses.precopy.cpuMs.toFixed(0)} ms: the source ${figures.twoProcesses.precopy.sourceCpuMs.toFixed(0)} of which the guest ${figures.twoProcesses.precopy.sourceGuestMs.toFixed(0)}, the destination ${(figures.twoProcesses.precopy.cpuMs - figures.twoProcesses.precopy.sourceCpuMs).toFixed(0)}, ${figures.twoProcesses.precopy.rounds} rounds, ${(figures.twoProcesses.precopy.bytes / MIB).toFixed(1)} MiB, downtime ${ms(figures.twoProcesses.precopy.downtimeMs)}) = ` +
      `${figures.twoProcesses.ratio} of the copy (by CPU time of both processes, the guest's included, ${figures.twoProcesses.cpuRatio})`,
  ];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const quick = process.argv.includes('--quick');
  const figures = await measureMigration({ quick, onStep: (label) => process.stderr.write(`${label}\n`) });
  process.stdout.write(formatMigration(figures).join('\n') + '\n');
  for (const check of migrationChecks(figures)) process.stdout.write(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value} (target ${check.target})\n`);
}
