/**
 * Post-copy live migration between two hypervisors in one process, over loopback with mutual TLS,
 * while the guest runs: after one full pass the VM switches over at once, the destination runs
 * with the pages dirtied since in the REMOTE state (a vCPU touching one pauses the VM until the
 * source sends it), and the source pushes the rest. QEMU's invariant and the console, the
 * determinism oracle, and a connection cut during post-copy: both sides report it, the source
 * keeps every page the destination lacks, and the migration carries on over a new connection.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PageState, type Vm } from '../../kernel/index.ts';
import {
  MigrationReceiver, MIGRATION_PROTOCOL, MIGRATION_VERSIONS, PrecopySender, REMOTE_PAGE_WAIT_REASON, type SendOptions,
} from '../../services/migration/migration.ts';
import { connect, type FramedChannel } from '../../services/migration/transport.ts';
import { makeCertificates, type TestCertificates } from './migration-certs.ts';
import { checkConsole, checkInvariant, closeTwoHosts, hypervisor, invariantImage, machine, memoryHash, waitUntil, type Machine, twoHosts, type TwoHosts } from './migration-harness.ts';

const MIB = 1024 * 1024;
let certs: TestCertificates;

beforeAll(() => {
  certs = makeCertificates();
});

interface World extends TwoHosts {
  /** Receivers on B, by VM name (for a resumed post-copy). */
  receivers: Map<string, MigrationReceiver>;
  dest: Machine | null;
}
async function world(): Promise<World> {
  return { ...(await twoHosts({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: certs.b, name: 'host-b' })), receivers: new Map(), dest: null };
}

afterEach(closeTwoHosts);

/** A channel from A to B and B's receiver on its far end (running). */
async function channelPair(w: World): Promise<{ channel: FramedChannel; receiver: MigrationReceiver; received: Promise<Vm> }> {
  const accepted = w.server.accept();
  const channel = await connect({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: w.server.port, name: 'host-a', stallTimeoutMs: 5000 });
  const far = await accepted;
  const receiver = new MigrationReceiver(far, {
    create: (config) => {
      w.dest = machine(w.hvB, config);
      w.receivers.set(config.name ?? '', receiver);
      return w.dest.vm;
    },
    start: (vm) => w.loopB.add(vm),
    discard: (vm) => w.hvB.destroyVm(vm),
    findPostcopy: (name) => w.receivers.get(name) ?? null,
    wake: (vm) => {
      if (vm.stopReason.kind !== 'paused' || vm.stopReason.reason !== REMOTE_PAGE_WAIT_REASON) return;
      vm.resume();
      w.loopB.exits.delete(vm);
      w.loopB.add(vm);
    },
  });
  const received = receiver.run();
  received.catch(() => {});
  return { channel, receiver, received };
}

async function postcopy(w: World, source: Machine, options: SendOptions = {}) {
  const { channel, receiver, received } = await channelPair(w);
  const sender = new PrecopySender(source.vm, channel, {
    pause: () => w.loopA.running.delete(source.vm),
    resume: () => w.loopA.running.add(source.vm),
    throttle: (fraction) => w.loopA.throttles.set(source.vm, fraction),
  }, { mode: 'postcopy', ...options });
  return { sender, receiver, channel, sent: sender.run(), received };
}

describe('post-copy migration, in process', () => {
  it("keeps QEMU's invariant and the console; the destination fetches what it touches first", async () => {
    const w = await world();
    const source = machine(w.hvA, { name: 'guest', memoryBytes: 16 * MIB }, invariantImage(16 * MIB, { spin: 20_000 }));
    w.loopA.add(source.vm);
    await waitUntil('the guest to run', () => source.sink.text().length > 3);
    const run = await postcopy(w, source);
    const [sent, received] = await Promise.allSettled([run.sent, run.received]);
    expect(sent.status).toBe('fulfilled');
    expect(received.status).toBe('fulfilled');
    const figures = run.sender.figures;
    expect(figures.mode).toBe('postcopy');
    expect(figures.state).toBe('completed');
    expect(figures.switchover_reason).toBe('postcopy');
    expect(figures.rounds).toBe(0);
    const pc = figures.postcopy!;
    // The guest rewrites its 14 MiB region continuously: round 0 cannot have it all clean.
    expect(pc.remote_pages).toBeGreaterThan(0);
    expect(pc.remote_left).toBe(0);
    expect(pc.pages_pushed + pc.pages_requested).toBe(pc.remote_pages);
    expect(pc.remote_faults).toBeGreaterThan(0);
    expect(pc.fault_latency_p50_ms).not.toBeNull();
    expect(pc.fault_latency_p99_ms!).toBeGreaterThanOrEqual(pc.fault_latency_p50_ms!);
    expect(run.receiver.figures.postcopy!.remote_faults).toBe(pc.remote_faults);
    expect(run.receiver.figures.resume_ms).not.toBeNull();
    const dest = w.dest!;
    expect(w.hvB.vms).toContain(dest.vm);
    let remote = 0;
    dest.vm.memory.forEachPage(PageState.REMOTE, () => void remote++);
    expect(remote).toBe(0);
    w.hvA.destroyVm(source.vm);
    const before = dest.sink.text().length;
    await waitUntil('the guest to keep running on the destination', () => dest.sink.text().length >= before + 3);
    w.loopB.running.delete(dest.vm);
    const invariant = checkInvariant(dest.vm);
    expect(invariant.bad).toBe(0);
    expect(invariant.edges).toBeLessThanOrEqual(1);
    checkConsole(source.sink.text() + dest.sink.text());
  });

  it('determinism oracle: a run migrated by post-copy ends exactly like an uninterrupted one', async () => {
    const memoryBytes = 8 * MIB;
    const image = invariantImage(memoryBytes, { spin: 50_000, passes: 300 });
    const hvR = hypervisor(32 * MIB);
    const reference = machine(hvR, { name: 'ref', memoryBytes }, image);
    const [result] = hvR.run({ maxInstructions: 2_000_000_000 }, [reference.vm]);
    expect(result!.reason.kind).toBe('halted');
    reference.devices.console.flush();
    const expected = { output: reference.sink.text(), exit: result!.reason, hash: memoryHash(reference.vm), instructions: reference.vm.instructionsRetired };
    hvR.close();

    const w = await world();
    const source = machine(w.hvA, { name: 'guest', memoryBytes }, image);
    w.loopA.add(source.vm);
    await waitUntil('a few passes', () => source.sink.text().length > 5);
    const run = await postcopy(w, source);
    const [sent] = await Promise.allSettled([run.sent, run.received]);
    expect(sent.status).toBe('fulfilled');
    expect(run.sender.figures.postcopy!.remote_pages).toBeGreaterThan(0);
    w.hvA.destroyVm(source.vm);
    const dest = w.dest!;
    await waitUntil('the migrated guest to halt', () => w.loopB.exits.get(dest.vm)?.kind === 'halted', 60_000);
    source.devices.console.flush();
    dest.devices.console.flush();
    expect(source.sink.text() + dest.sink.text()).toBe(expected.output);
    expect(w.loopB.exits.get(dest.vm)).toEqual(expected.exit);
    expect(dest.vm.instructionsRetired).toBe(expected.instructions);
    expect(memoryHash(dest.vm)).toBe(expected.hash);
  });
});

describe('post-copy failures', () => {
  it('a cut during post-copy: both sides report it, the source keeps the pages, a new connection finishes it', async () => {
    const w = await world();
    const source = machine(w.hvA, { name: 'guest', memoryBytes: 16 * MIB }, invariantImage(16 * MIB, { spin: 20_000 }));
    w.loopA.add(source.vm);
    await waitUntil('the guest to run', () => source.sink.text().length > 3);
    // A slow link, so the push is still under way when the connection goes.
    let cut: FramedChannel | null = null;
    const run = await postcopy(w, source, { maxBandwidth: 8 * MIB, onSwitchedOver: () => setTimeout(() => cut?.destroy(), 150) });
    cut = run.channel;
    const [sent, received] = await Promise.allSettled([run.sent, run.received]);
    expect(sent.status).toBe('rejected');
    expect(received.status).toBe('rejected');
    const sender = run.sender;
    expect(sender.ambiguous).toBe(true);
    expect(sender.figures.state).toBe('failed');
    expect(sender.figures.error).toMatch(/keeps the VM paused with every page/);
    expect(run.receiver.figures.state).toBe('failed');
    expect(run.receiver.figures.error).toMatch(/still on the source/);
    // Never two copies running: the source is paused and keeps its VM; the destination keeps its own.
    expect(w.loopA.running.has(source.vm)).toBe(false);
    expect(w.hvA.vms).toContain(source.vm);
    const dest = w.dest!;
    expect(w.hvB.vms).toContain(dest.vm);
    let remote = 0;
    dest.vm.memory.forEachPage(PageState.REMOTE, () => void remote++);
    expect(remote).toBeGreaterThan(0);
    // The guest there ends up waiting for a page only the source has.
    await waitUntil('the destination guest to wait for a page', () => dest.vm.stopReason.kind === 'paused' && (dest.vm.stopReason as { reason: string }).reason === REMOTE_PAGE_WAIT_REASON);

    // A new connection: the destination names what it lacks, the source sends it.
    const again = await channelPair(w);
    const [resumed, receivedAgain] = await Promise.allSettled([sender.resumePostcopy(again.channel), again.received]);
    expect(resumed.status).toBe('fulfilled');
    expect(receivedAgain.status).toBe('fulfilled');
    expect(sender.figures.state).toBe('completed');
    expect(sender.figures.resumptions).toBe(1);
    expect(sender.figures.postcopy!.remote_left).toBe(0);
    expect(run.receiver.figures.state).toBe('completed');
    remote = 0;
    dest.vm.memory.forEachPage(PageState.REMOTE, () => void remote++);
    expect(remote).toBe(0);
    w.hvA.destroyVm(source.vm);
    const before = dest.sink.text().length;
    await waitUntil('the guest to keep running on the destination', () => dest.sink.text().length >= before + 3);
    w.loopB.running.delete(dest.vm);
    expect(checkInvariant(dest.vm).bad).toBe(0);
    checkConsole(source.sink.text() + dest.sink.text());
  });
});
