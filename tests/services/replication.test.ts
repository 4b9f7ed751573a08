/**
 * Disaster-recovery replication (T-14) between two hypervisors in one process, over loopback with
 * mutual TLS, while the guest runs: the backup activated at an epoch ends exactly like an
 * uninterrupted run (determinism as the oracle), a connection cut in the middle of an epoch or a
 * corrupt frame leaves the last complete epoch intact and activatable.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, type CaptureSink } from '../../devices/index.ts';
import type { Vm } from '../../kernel/index.ts';
import { ConsoleLog } from '../../services/host/console-log.ts';
import { outputCommit, REPLICATION_PROTOCOL, REPLICATION_VERSIONS, ReplicaReceiver, ReplicationFrame, ReplicationSender, type ReplicateOptions } from '../../services/migration/replication.ts';
import { connect, type ChannelFaults, type FramedChannel } from '../../services/migration/transport.ts';
import { makeCertificates, type TestCertificates } from './migration-certs.ts';
import { checkConsole, checkInvariant, closeTwoHosts, hypervisor, invariantImage, machine, memoryHash, waitUntil, type Machine, twoHosts, type TwoHosts } from './migration-harness.ts';

const MIB = 1024 * 1024;
let certs: TestCertificates;

beforeAll(() => {
  certs = makeCertificates();
});

type World = TwoHosts;

function world(): Promise<World> {
  return twoHosts({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.b, name: 'backup' });
}

afterEach(closeTwoHosts);

/** What the primary looked like at each epoch's capture (paused). */
interface Captured {
  instructions: number;
  output: number;
  hash: string;
}

interface Replication {
  sender: ReplicationSender;
  receiver: ReplicaReceiver;
  channel: FramedChannel;
  faults: ChannelFaults;
  captures: Map<number, Captured>;
  sent: Promise<PromiseSettledResult<unknown>>;
  received: Promise<unknown>;
}

async function replicate(w: World, primary: Machine, options: ReplicateOptions = {}): Promise<Replication> {
  const accepted = w.server.accept();
  const faults: ChannelFaults = {};
  const channel = await connect({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: w.server.port, name: 'primary', stallTimeoutMs: 5000, faults });
  const receiver = new ReplicaReceiver(await accepted);
  const captures = new Map<number, Captured>();
  const sender = new ReplicationSender(primary.vm, channel, {
    pause: () => w.loopA.running.delete(primary.vm),
    resume: () => {
      if (primary.vm.stopReason.kind !== 'halted') w.loopA.running.add(primary.vm);
    },
  }, {
    intervalMs: 25,
    ...options,
    onCapture: (epoch, instructions) => {
      primary.devices.console.flush();
      captures.set(epoch, { instructions, output: primary.sink.text().length, hash: memoryHash(primary.vm) });
      options.onCapture?.(epoch, instructions);
    },
  });
  const received = receiver.run();
  const sent = sender.run().then((value) => ({ status: 'fulfilled', value }) as const, (reason: unknown) => ({ status: 'rejected', reason }) as const);
  return { sender, receiver, channel, faults, captures, sent, received };
}

/** Activates the replica on host B; checks its memory and instruction count against the capture. */
function activate(w: World, r: Replication): Machine {
  let made: Machine | null = null;
  const vm: Vm = r.receiver.activate({
    create: (config) => {
      made = machine(w.hvB, config);
      return made.vm;
    },
    start: () => {},
    discard: (v) => w.hvB.destroyVm(v),
  });
  const epoch = r.receiver.figures.committed_epoch!;
  const captured = r.captures.get(epoch)!;
  expect(vm.instructionsRetired).toBe(captured.instructions);
  expect(memoryHash(vm)).toBe(captured.hash);
  w.loopB.add(vm);
  return made!;
}

describe('disaster-recovery replication, in process', () => {
  it('determinism oracle: the backup activated at an epoch ends exactly like an uninterrupted run', async () => {
    const memoryBytes = 4 * MIB;
    const image = invariantImage(memoryBytes, { spin: 100_000, passes: 300 });
    const hvR = hypervisor(16 * MIB);
    const reference = machine(hvR, { name: 'ref', memoryBytes }, image);
    const [result] = hvR.run({ maxInstructions: 2_000_000_000 }, [reference.vm]);
    expect(result!.reason.kind).toBe('halted');
    reference.devices.console.flush();
    const expected = { output: reference.sink.text(), exit: result!.reason, hash: memoryHash(reference.vm), instructions: reference.vm.instructionsRetired };
    hvR.close();

    const w = await world();
    const primary = machine(w.hvA, { name: 'guest', memoryBytes }, image);
    w.loopA.add(primary.vm);
    await waitUntil('a few passes', () => primary.sink.text().length > 3);
    const r = await replicate(w, primary);
    await waitUntil('five committed epochs', () => (r.receiver.figures.committed_epoch ?? -1) >= 5, 60_000);
    // The primary host dies: its guest stops, the connection drops wherever it was.
    w.loopA.running.delete(primary.vm);
    r.channel.destroy();
    await r.received;
    expect((await r.sent).status).toBe('rejected');
    const status = r.receiver.status();
    expect(status.state).toBe('disconnected');
    expect(status.committed_epoch).toBeGreaterThanOrEqual(5);
    expect(status.age_ms).toBeGreaterThanOrEqual(0);
    expect(r.sender.figures.epochs).toBeGreaterThanOrEqual(5);
    expect(r.sender.figures.mean_epoch_bytes).toBeGreaterThan(0);
    const backup = activate(w, r);
    await waitUntil('the activated guest to halt', () => w.loopB.exits.has(backup.vm), 60_000);
    backup.devices.console.flush();
    const captured = r.captures.get(status.committed_epoch!)!;
    expect(primary.sink.text().slice(0, captured.output) + backup.sink.text()).toBe(expected.output);
    expect(w.loopB.exits.get(backup.vm)).toEqual(expected.exit);
    expect(backup.vm.instructionsRetired).toBe(expected.instructions);
    expect(memoryHash(backup.vm)).toBe(expected.hash);
    expect(r.receiver.figures.state).toBe('activated');
  });

  it('a connection cut in the middle of an epoch leaves the last complete epoch intact and activatable', async () => {
    const w = await world();
    const memoryBytes = 4 * MIB;
    const primary = machine(w.hvA, { name: 'guest', memoryBytes }, invariantImage(memoryBytes, { spin: 50_000 }));
    w.loopA.add(primary.vm);
    await waitUntil('a few passes', () => primary.sink.text().length > 3);
    let cutAt = 0;
    const r: Replication = await replicate(w, primary, {
      onCommitted: (epoch) => {
        // Three epochs in, the next one is cut after 40 KiB of its frames.
        if (epoch === 3) r.faults.cutAfterBytes = cutAt = r.channel.stats.bytesSent + 40 * 1024;
      },
    });
    await r.received;
    const sent = await r.sent;
    expect(sent.status).toBe('rejected');
    expect(cutAt).toBeGreaterThan(0);
    const status = r.receiver.status();
    expect(status.committed_epoch).toBe(3);
    expect(status.epochs_dropped).toBe(1);
    expect(status.bytes_received).toBeGreaterThan(0);
    expect(r.sender.figures.state).toBe('failed');
    // The primary carries on (replication failing never stops it).
    expect(w.loopA.running.has(primary.vm)).toBe(true);
    w.loopA.running.delete(primary.vm);
    const backup = activate(w, r);
    const captured = r.captures.get(3)!;
    const before = backup.sink.text().length;
    await waitUntil('the activated guest to run', () => backup.sink.text().length >= before + 3);
    w.loopB.running.delete(backup.vm);
    expect(checkInvariant(backup.vm).bad).toBe(0);
    primary.devices.console.flush();
    backup.devices.console.flush();
    checkConsole(primary.sink.text().slice(0, captured.output) + backup.sink.text());
  });

  it('an epoch whose pages and state arrived but not its COMMIT is never applied', async () => {
    const w = await world();
    const memoryBytes = 4 * MIB;
    const primary = machine(w.hvA, { name: 'guest', memoryBytes }, invariantImage(memoryBytes, { spin: 50_000 }));
    w.loopA.add(primary.vm);
    await waitUntil('a few passes', () => primary.sink.text().length > 3);
    let armed = false;
    const r: Replication = await replicate(w, primary, { onCommitted: (epoch) => void (armed = epoch === 4) });
    const send = r.channel.send.bind(r.channel);
    r.channel.send = async (type, payload) => {
      if (armed && type === ReplicationFrame.COMMIT) {
        // Everything of epoch 5 is out but its COMMIT: wait until the backup staged it, then cut.
        await waitUntil('the state to arrive', () => r.receiver.status().bytes_received >= r.channel.stats.bytesSent - 64);
        r.faults.cutAfterBytes = r.channel.stats.bytesSent;
      }
      return send(type, payload);
    };
    await r.received;
    expect((await r.sent).status).toBe('rejected');
    const status = r.receiver.status();
    expect(status.committed_epoch).toBe(4);
    expect(status.epochs_dropped).toBe(1);
    w.loopA.running.delete(primary.vm);
    const backup = activate(w, r);
    const before = backup.sink.text().length;
    await waitUntil('the activated guest to run', () => backup.sink.text().length >= before + 2);
  });

  it('refuses a corrupt frame and keeps the last complete epoch', async () => {
    const w = await world();
    const memoryBytes = 4 * MIB;
    const primary = machine(w.hvA, { name: 'guest', memoryBytes }, invariantImage(memoryBytes, { spin: 50_000 }));
    w.loopA.add(primary.vm);
    await waitUntil('a few passes', () => primary.sink.text().length > 3);
    const r: Replication = await replicate(w, primary, {
      onCommitted: (epoch) => {
        if (epoch === 2) r.faults.corruptByteAt = r.channel.stats.bytesSent + 10_000;
      },
    });
    await r.received;
    expect((await r.sent).status).toBe('rejected');
    const status = r.receiver.status();
    expect(status.error).toMatch(/checksum|CRC|corrupt/i);
    expect(status.committed_epoch).toBe(2);
    expect(status.epochs_dropped).toBe(1);
    w.loopA.running.delete(primary.vm);
    const backup = activate(w, r);
    const before = backup.sink.text().length;
    await waitUntil('the activated guest to run', () => backup.sink.text().length >= before + 2);
    expect(() => r.receiver.activate({ create: () => { throw new Error('not reached'); }, start: () => {}, discard: () => {} })).toThrow(/activated already/);
  });

  it('output commit: the primary shows only output the backup has, so a failover repeats nothing', async () => {
    const w = await world();
    const memoryBytes = 4 * MIB;
    // The host's console log, holding output back until the epoch that produced it is committed.
    const log = new ConsoleLog(1 << 20);
    const vm = w.hvA.createVm({ name: 'guest', memoryBytes });
    const devices = attachStandardDevices(vm, { output: log });
    vm.loadImage(invariantImage(memoryBytes, { spin: 20_000 }));
    const primary: Machine = { vm, devices, sink: log as unknown as CaptureSink };
    w.loopA.add(vm);
    await waitUntil('a few passes', () => log.text().length > 3);
    const gate = outputCommit(log, () => devices.console.flush());
    let heldAtCut = 0;
    const r: Replication = await replicate(w, primary, {
      onCapture: (epoch) => gate.onCapture(epoch),
      onCommitted: (epoch) => {
        gate.onCommitted(epoch);
        if (epoch === 4) r.faults.cutAfterBytes = r.channel.stats.bytesSent + 20 * 1024;
      },
    });
    await r.received;
    // The primary dies with the cut: what it showed is all anyone saw of it.
    w.loopA.running.delete(vm);
    devices.console.flush();
    heldAtCut = log.writtenBytes - log.totalBytes;
    const visible = log.text();
    expect(r.receiver.status().committed_epoch).toBe(4);
    expect(heldAtCut).toBeGreaterThan(0); // the guest printed after epoch 4's capture: held back
    const backup = activate(w, r);
    await waitUntil('the activated guest to print', () => backup.sink.text().length >= 5);
    w.loopB.running.delete(backup.vm);
    backup.devices.console.flush();
    // Nothing repeated, nothing lost: the backup starts exactly where the visible output ends.
    checkConsole(visible + backup.sink.text());
    gate.end();
    expect(log.totalBytes).toBe(log.writtenBytes);
  });

  it('refuses to activate a replica with no complete epoch', () => {
    const receiver = new ReplicaReceiver(null as unknown as FramedChannel);
    expect(() => receiver.activate({ create: () => { throw new Error('not reached'); }, start: () => {}, discard: () => {} })).toThrow(/no complete epoch/);
  });
});
