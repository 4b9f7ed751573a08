/**
 * Connection cuts at random points of a pre-copy migration, many trials (the suite runs a sample):
 *
 *   npx tsx scripts/migration-cuts.ts [--trials 100] [--seed 1]
 *
 * Each trial starts the invariant guest (tests/services/migration-harness.ts) on host A, migrates
 * it to host B in the same process over mutual TLS with the connection cut after a random number
 * of bytes, and checks: either the VM moved (B runs it, QEMU's invariant holds there), or the
 * source runs on with nothing left on B (the invariant holds on A), or the cut came inside the
 * switch-over state and the source stays paused (never two copies running, never none kept).
 */
import { parseArgs } from 'node:util';
import { MigrationReceiver, MIGRATION_PROTOCOL, MIGRATION_VERSIONS, PrecopySender } from '../services/migration/migration.ts';
import { connect, TransportServer } from '../services/migration/transport.ts';
import { prng } from '../tests/kernel/fixtures/prng.ts';
import { makeCertificates } from '../tests/services/migration-certs.ts';
import { checkConsole, checkInvariant, GuestLoop, hypervisor, invariantImage, machine, waitUntil, type Machine } from '../tests/services/migration-harness.ts';

const { values } = parseArgs({ options: { trials: { type: 'string', default: '100' }, seed: { type: 'string', default: '1' } } });
const trials = Number(values.trials);
const random = prng(Number(values.seed));
const MIB = 1024 * 1024;
const memoryBytes = 8 * MIB;
const certs = makeCertificates();
const image = invariantImage(memoryBytes, { spin: 100_000 });
const tally = { moved: 0, sourceKept: 0, pausedAmbiguous: 0, failures: 0 };

for (let trial = 0; trial < trials; trial++) {
  const cut = random() % (16 * MIB);
  const hvA = hypervisor();
  const hvB = hypervisor();
  const loopA = new GuestLoop(hvA);
  const loopB = new GuestLoop(hvB);
  const server = await TransportServer.listen({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: certs.b, port: 0 });
  try {
    const source = machine(hvA, { name: 'guest', memoryBytes }, image);
    loopA.add(source.vm);
    await waitUntil('the guest to run', () => source.sink.text().length > 2);
    const accepted = server.accept();
    const channel = await connect({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: server.port, stallTimeoutMs: 3000, faults: { cutAfterBytes: cut } });
    const far = await accepted;
    let dest: Machine | null = null;
    const receiver = new MigrationReceiver(far, {
      create: (config) => (dest = machine(hvB, config)).vm,
      start: (vm) => loopB.add(vm),
      discard: (vm) => hvB.destroyVm(vm),
    });
    const sender = new PrecopySender(source.vm, channel, {
      pause: () => loopA.running.delete(source.vm),
      resume: () => loopA.running.add(source.vm),
      throttle: (fraction) => loopA.throttles.set(source.vm, fraction),
    });
    const [sent] = await Promise.allSettled([sender.run(), receiver.run()]);
    const problems: string[] = [];
    const bRuns = hvB.vms.length === 1 && loopB.running.size === 1;
    const aRuns = loopA.running.has(source.vm);
    if (aRuns && bRuns) problems.push('both copies run');
    if (sent.status === 'fulfilled') {
      tally.moved++;
      if (!bRuns) problems.push('moved, but B does not run it');
      const moved = dest as Machine | null;
      await waitUntil('B to keep running', () => (moved?.sink.text().length ?? 0) > 0, 10_000).catch(() => problems.push('B does not make progress'));
      loopB.running.clear();
      if (moved !== null && checkInvariant(moved.vm).bad !== 0) problems.push('invariant broken on B');
    } else if (sender.ambiguous) {
      tally.pausedAmbiguous++;
      if (aRuns) problems.push('ambiguous, yet A runs');
      if (!bRuns && hvB.vms.length !== 0) problems.push('B keeps a VM it does not run');
    } else {
      tally.sourceKept++;
      if (!aRuns) problems.push('A stopped running');
      if (hvB.vms.length !== 0) problems.push('B kept a partial VM');
      const before = source.sink.text().length;
      await waitUntil('A to keep running', () => source.sink.text().length > before, 10_000).catch(() => problems.push('A makes no progress'));
      loopA.running.clear();
      if (checkInvariant(source.vm).bad !== 0) problems.push('invariant broken on A');
      try {
        checkConsole(source.sink.text());
      } catch (error) {
        problems.push((error as Error).message);
      }
    }
    if (problems.length > 0) {
      tally.failures++;
      console.log(`trial ${trial} (cut at ${cut} bytes): ${problems.join('; ')}`);
    }
  } finally {
    await loopA.stop();
    await loopB.stop();
    await server.close();
    hvA.close();
    hvB.close();
  }
}
console.log(`${trials} trials (seed ${values.seed}): moved ${tally.moved}, source kept running ${tally.sourceKept}, source paused after a cut inside the switch-over ${tally.pausedAmbiguous}; failures ${tally.failures}`);
process.exit(tally.failures === 0 ? 0 : 1);
