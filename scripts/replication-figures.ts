/**
 * Replication figures (docs/migration.md, "Disaster-recovery replication"): a 256 MiB guest that
 * first touches all its memory, then dirties a 1 MiB window (256 pages) per pass, sliding over
 * its memory, spinning between passes so that unreplicated it dirties about 1 MiB per 25 ms.
 * Replicated to a second hypervisor in the same process over loopback mutual TLS at
 * --interval-ms (25): epochs per second sustained, bytes per epoch, the VM's pause per capture,
 * and the guest's slowdown (passes per second against the same run without replication).
 *
 *   node --import tsx scripts/replication-figures.ts [--interval-ms 25] [--seconds 5]
 */
import { assemble } from '../guest-isa/assembler.ts';
import { REPLICATION_PROTOCOL, REPLICATION_VERSIONS, ReplicaReceiver, ReplicationSender } from '../services/migration/replication.ts';
import { connect, TransportServer } from '../services/migration/transport.ts';
import { makeCertificates } from '../tests/services/migration-certs.ts';
import { GUEST_LIBRARY } from '../tests/devices/harness.ts';
import { GuestLoop, hypervisor, machine } from '../tests/services/migration-harness.ts';

const MIB = 1024 * 1024;
const argv = process.argv.slice(2);
const option = (name: string, fallback: number) => {
  const at = argv.indexOf(name);
  return at < 0 ? fallback : Number(argv[at + 1]);
};
const intervalMs = option('--interval-ms', 25);
const seconds = option('--seconds', 5);
const memoryBytes = 256 * MIB;
const pauses: number[] = [];
const initial = { ms: 0, bytes: 0 };

function source(spin: number): string {
  const start = 0x10_0000;
  const end = memoryBytes - 0x10_0000;
  return GUEST_LIBRARY + `
_start:
        li      a0, DEV_CONSOLE
        jal     ra, find_device
        mv      s0, a0
        li      s3, 4096
        li      t0, ${start}
        li      t1, ${end}
        li      a3, 1
0:      sb      a3, 0(t0)
        add     t0, t0, s3
        bltu    t0, t1, 0b
        putc    s0, 65
        li      s1, ${start}
pass:
        li      t0, 256
        mv      t1, s1
1:      lbu     t2, 0(t1)
        addi    t2, t2, 1
        sb      t2, 0(t1)
        add     t1, t1, s3
        addi    t0, t0, -1
        bnez    t0, 1b
        mv      s1, t1
        li      t3, ${end}
        bltu    s1, t3, 2f
        li      s1, ${start}
2:      li      a2, ${spin}
3:      beqz    a2, 4f
        addi    a2, a2, -1
        j       3b
4:      putc    s0, 46
        j       pass
`;
}

/** Runs the guest for `ms` and returns passes per second (one '.' per pass), optionally replicated. */
async function measure(spin: number, ms: number, replicate: boolean): Promise<{ passesPerSecond: number; sender: ReplicationSender | null; receiver: ReplicaReceiver | null }> {
  const hvA = hypervisor(320 * MIB);
  const hvB = hypervisor(64 * MIB);
  const loop = new GuestLoop(hvA);
  const m = machine(hvA, { name: 'guest', memoryBytes }, assemble(source(spin), { fileName: 'dirty.s' }).image);
  loop.add(m.vm);
  while (!m.sink.text().includes('A')) {
    await new Promise((resolve) => setTimeout(resolve, 5));
    m.devices.console.flush();
  }
  let sender: ReplicationSender | null = null;
  let receiver: ReplicaReceiver | null = null;
  let server: TransportServer | null = null;
  if (replicate) {
    const certs = makeCertificates();
    server = await TransportServer.listen({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.b, port: 0 });
    const accepted = server.accept();
    const channel = await connect({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: server.port });
    receiver = new ReplicaReceiver(await accepted);
    void receiver.run();
    let pausedAt = 0;
    sender = new ReplicationSender(m.vm, channel, { pause: () => void (pausedAt = performance.now()), resume: () => pauses.push(performance.now() - pausedAt) }, { intervalMs });
    const syncStart = performance.now();
    void sender.run().catch((error: unknown) => console.error(error));
    while (sender.figures.committed_epoch === null) await new Promise((resolve) => setTimeout(resolve, 5));
    initial.ms = performance.now() - syncStart;
    initial.bytes = sender.figures.last_epoch_bytes;
    pauses.length = 0;
  }
  m.devices.console.flush();
  const before = m.sink.text().length;
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, ms));
  m.devices.console.flush();
  const passes = m.sink.text().length - before;
  const elapsed = performance.now() - started;
  sender?.stop();
  await loop.stop();
  await new Promise((resolve) => setTimeout(resolve, 100));
  await server?.close();
  hvA.close();
  hvB.close();
  return { passesPerSecond: passes / (elapsed / 1000), sender, receiver };
}

// Calibrate the spin so that the unreplicated guest makes about 40 passes (40 MiB) per second.
let spin = 200_000;
for (let i = 0; i < 4; i++) {
  const { passesPerSecond } = await measure(spin, 1000, false);
  spin = Math.max(1000, Math.round(spin * (passesPerSecond / 40)));
}
const plain = await measure(spin, seconds * 1000, false);
const replicated = await measure(spin, seconds * 1000, true);
const f = replicated.sender!.status();
const r = replicated.receiver!.status();
console.log(JSON.stringify({
  interval_ms: intervalMs, spin, seconds,
  guest_mib_per_s_unreplicated: Math.round(plain.passesPerSecond * 10) / 10,
  guest_mib_per_s_replicated: Math.round(replicated.passesPerSecond * 10) / 10,
  slowdown_pct: Math.round((1 - replicated.passesPerSecond / plain.passesPerSecond) * 1000) / 10,
  epochs: f.epochs, epochs_per_second: f.epochs_per_second, mean_epoch_bytes: f.mean_epoch_bytes, last_epoch_pages: f.last_epoch_pages,
  initial_sync_ms: Math.round(initial.ms), initial_sync_bytes: initial.bytes,
  pause_mean_ms: Math.round((pauses.reduce((a, b) => a + b, 0) / pauses.length) * 1000) / 1000,
  pause_p99_ms: Math.round([...pauses].sort((a, b) => a - b)[Math.floor(pauses.length * 0.99)]! * 1000) / 1000,
  max_pause_ms: f.max_pause_ms, last_pause_ms: f.last_pause_ms, backup_committed_epoch: r.committed_epoch, backup_pages: r.pages,
}, null, 1));
