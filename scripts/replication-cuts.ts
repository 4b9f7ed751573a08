/**
 * Replication under connection cuts at random points (docs/migration.md, "Disaster-recovery
 * replication"): each trial replicates a running 2 MiB invariant guest in process over mutual TLS
 * at a 5 ms interval, cuts the primary's connection after a random number of bytes, then checks
 * the backup: with no complete epoch, activation is refused; otherwise the activated VM has exactly
 * the memory hash and instruction count the primary had at that epoch's capture, and runs on with
 * QEMU's invariant intact.
 *
 *   node --import tsx scripts/replication-cuts.ts [--trials 100] [--seed 1]
 */
import { REPLICATION_PROTOCOL, REPLICATION_VERSIONS, ReplicaReceiver, ReplicationSender } from '../services/migration/replication.ts';
import { connect, TransportServer } from '../services/migration/transport.ts';
import { prng } from '../tests/kernel/fixtures/prng.ts';
import { makeCertificates } from '../tests/services/migration-certs.ts';
import { checkInvariant, GuestLoop, hypervisor, invariantImage, machine, memoryHash, waitUntil, type Machine } from '../tests/services/migration-harness.ts';

const argv = process.argv.slice(2);
const option = (name: string, fallback: number) => {
  const at = argv.indexOf(name);
  return at < 0 ? fallback : Number(argv[at + 1]);
};
const trials = option('--trials', 100);
const random = prng(option('--seed', 1));
const memoryBytes = 2 * 1024 * 1024;
const image = invariantImage(memoryBytes, { spin: 20_000 });
const certs = makeCertificates();
const outcomes = { none_committed: 0, activated: 0, failures: 0 };
const epochs: number[] = [];

for (let trial = 0; trial < trials; trial++) {
  const hvA = hypervisor(16 * 1024 * 1024);
  const hvB = hypervisor(16 * 1024 * 1024);
  const loopA = new GuestLoop(hvA);
  const loopB = new GuestLoop(hvB);
  const server = await TransportServer.listen({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.b, port: 0 });
  try {
    const primary = machine(hvA, { name: 'guest', memoryBytes }, image);
    loopA.add(primary.vm);
    await waitUntil('the guest to run', () => primary.sink.text().length > 1);
    // Cut anywhere in the first ~4 MiB: inside the first pass, an epoch's pages, its state or its COMMIT.
    const cutAfterBytes = Math.floor(((random() >>> 0) / 2 ** 32) * 4 * 1024 * 1024);
    if (process.env.DEBUG) console.error(`trial ${trial}: cut after ${cutAfterBytes}`);
    const accepted = server.accept();
    const channel = await connect({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: server.port, stallTimeoutMs: 3000, faults: { cutAfterBytes } });
    const receiver = new ReplicaReceiver(await accepted);
    const captures = new Map<number, { hash: string; instructions: number }>();
    const sender = new ReplicationSender(primary.vm, channel, { pause: () => {}, resume: () => {} }, {
      intervalMs: 5,
      onCapture: (epoch, instructions) => captures.set(epoch, { hash: memoryHash(primary.vm), instructions }),
    });
    const received = receiver.run();
    await sender.run().catch(() => {});
    if (process.env.DEBUG) console.error(`sent`);
    await received;
    loopA.running.delete(primary.vm);
    const epoch = receiver.figures.committed_epoch;
    if (epoch === null) {
      let refused = false;
      try {
        receiver.activate({ create: () => { throw new Error('not reached'); }, start: () => {}, discard: () => {} });
      } catch {
        refused = true;
      }
      if (!refused) throw new Error(`trial ${trial}: a replica with no complete epoch was activated`);
      outcomes.none_committed++;
      continue;
    }
    let made: Machine | null = null;
    const vm = receiver.activate({ create: (config) => (made = machine(hvB, config)).vm, start: () => {}, discard: (v) => hvB.destroyVm(v) });
    const captured = captures.get(epoch)!;
    if (memoryHash(vm) !== captured.hash || vm.instructionsRetired !== captured.instructions) {
      throw new Error(`trial ${trial} (cut after ${cutAfterBytes} bytes): the activated VM does not match epoch ${epoch}'s capture`);
    }
    loopB.add(vm);
    const backup = made!;
    await waitUntil('the activated guest to run', () => backup.sink.text().length >= 2);
    loopB.running.delete(vm);
    if (checkInvariant(vm).bad !== 0) throw new Error(`trial ${trial}: QEMU's invariant broken after activation at epoch ${epoch}`);
    outcomes.activated++;
    epochs.push(epoch);
  } catch (error) {
    outcomes.failures++;
    console.error(error instanceof Error ? error.message : error);
  } finally {
    await loopA.stop();
    await loopB.stop();
    await server.close();
    hvA.close();
    hvB.close();
  }
}
epochs.sort((a, b) => a - b);
console.log(JSON.stringify({ trials, ...outcomes, committed_epoch_min: epochs[0] ?? null, committed_epoch_median: epochs[Math.floor(epochs.length / 2)] ?? null, committed_epoch_max: epochs.at(-1) ?? null }));
process.exit(outcomes.failures === 0 ? 0 : 1);
