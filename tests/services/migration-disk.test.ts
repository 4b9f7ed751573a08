/**
 * A VM's disk across hosts (docs/migration.md "Disks"), two hypervisors in one process over mutual
 * TLS, the guest running: its overlays' sectors go with a live migration to a host whose disk
 * directory is another one (nothing of the source's overlays is shared: they are deleted before the
 * destination runs on), the raw base stays shared and is checked by identity, a corrupt disk frame
 * or a different base fails the migration with the source running; replication carries the
 * sectors written per epoch and a failover runs on the disk of the last committed epoch.
 * The guest (disk-guest.ts) checks its own disk as it runs.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, DISK_SECTOR_BYTES, DiskChain, type StandardDevices } from '../../devices/index.ts';
import { assemble } from '../../guest-isa/assembler.ts';
import type { Hypervisor, Vm, VmConfig } from '../../kernel/index.ts';
import { decodeDiskFrame, receivingDisk, type MigratedDisk } from '../../services/migration/disk.ts';
import { MigrationReceiver, MIGRATION_PROTOCOL, MIGRATION_VERSIONS, PrecopySender, REMOTE_PAGE_WAIT_REASON, type SendOptions } from '../../services/migration/migration.ts';
import { REPLICATION_PROTOCOL, REPLICATION_VERSIONS, ReplicaReceiver, ReplicationFrame, ReplicationSender } from '../../services/migration/replication.ts';
import { connect, type ChannelFaults, type FramedChannel } from '../../services/migration/transport.ts';
import { diskGuestSource, SECTORS, WRITTEN } from './disk-guest.ts';
import { makeCertificates, type TestCertificates } from './migration-certs.ts';
import { checkConsole, closeTwoHosts, twoHosts, waitUntil, type TwoHosts } from './migration-harness.ts';

const MIB = 1024 * 1024;

const root = mkdtempSync(join(tmpdir(), 'bv-migdisk-'));
let certs: TestCertificates;
beforeAll(() => {
  certs = makeCertificates();
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const guestImage = assemble(diskGuestSource(), { fileName: 'disk-guest.s' }).image;

interface DiskMachine {
  vm: Vm;
  devices: StandardDevices;
  sink: CaptureSink;
}

function diskMachine(hv: Hypervisor, config: VmConfig, disk: { path: string; overlayDir: string }, boot: boolean): DiskMachine {
  const vm = hv.createVm(config);
  const sink = new CaptureSink();
  const devices = attachStandardDevices(vm, { output: sink, disk });
  if (boot) vm.loadImage(guestImage);
  return { vm, devices, sink };
}

/** A raw base image: sectors 0..WRITTEN-1 zero (the guest's pass 0 reads 0), the rest a pattern. */
function makeBase(dir: string): string {
  const bytes = new Uint8Array(SECTORS * DISK_SECTOR_BYTES);
  for (let i = WRITTEN * DISK_SECTOR_BYTES; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
  const path = join(dir, 'base.img');
  writeFileSync(path, bytes);
  return path;
}

function diskHash(disk: DiskChain): string {
  return createHash('sha256').update(disk.read(0, SECTORS)).digest('hex');
}

/** First word of each written sector. */
function passWords(disk: DiskChain): number[] {
  const bytes = disk.read(0, WRITTEN);
  const view = new DataView(bytes.buffer);
  return Array.from({ length: WRITTEN }, (_, i) => view.getUint32(i * DISK_SECTOR_BYTES, true));
}

/** The disk as the guest leaves it between its writes: sectors hold k+1 up to some sector, then k. */
function checkPassWords(disk: DiskChain): void {
  const words = passWords(disk);
  let edges = 0;
  for (let i = 1; i < words.length; i++) {
    if (words[i] === words[i - 1]) continue;
    expect(words[i]).toBe(words[i - 1]! - 1);
    edges++;
  }
  expect(edges).toBeLessThanOrEqual(1);
  expect(words[0]).toBeGreaterThan(0);
}

function filesIn(dir: string): string[] {
  return readdirSync(dir).sort();
}

interface World extends TwoHosts {
  dir: string;
}

async function world(protocol: string, versions: readonly number[]): Promise<World> {
  return { ...(await twoHosts({ protocol, versions, tls: certs.b, name: 'host-b' })), dir: mkdtempSync(join(root, 'w-')) };
}

afterEach(closeTwoHosts);

/** Starts the guest on host A with its disk over `base` (null: a blank disk), overlays in A's directory. */
async function startGuest(w: World, base: string | null): Promise<{ source: DiskMachine; dirA: string; dirB: string }> {
  const dirA = join(w.dir, 'a');
  const dirB = join(w.dir, 'b');
  mkdirSync(dirA);
  mkdirSync(dirB);
  let path = base;
  if (path === null) {
    path = join(dirA, 'blank.disk');
    DiskChain.createBlank(path, SECTORS).close();
  }
  const source = diskMachine(w.hvA, { name: 'guest', memoryBytes: 4 * MIB }, { path, overlayDir: dirA }, true);
  w.loopA.add(source.vm);
  await waitUntil('the guest to write its disk', () => source.sink.text().length > 3);
  // A checkpoint-like seal mid-run: the chain has a sealed overlay under the writable top.
  source.vm.captureState();
  await waitUntil('more passes', () => source.sink.text().length > 6);
  return { source, dirA, dirB };
}

async function migrate(w: World, source: DiskMachine, dirB: string, options: SendOptions = {}, faults: ChannelFaults = {}) {
  const accepted = w.server.accept();
  accepted.catch(() => {});
  const channel = await connect({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: w.server.port, name: 'host-a', stallTimeoutMs: 5000, faults });
  const far = await accepted;
  let dest: DiskMachine | null = null;
  const receiver = new MigrationReceiver(far, {
    create: (config, _attach, disk) => {
      dest = diskMachine(w.hvB, config, receivingDisk(disk!, dirB, String(config.name)), false);
      return dest.vm;
    },
    block: () => dest?.devices.block ?? null,
    start: (vm) => w.loopB.add(vm),
    discard: (vm) => {
      dest?.devices.block?.close();
      w.hvB.destroyVm(vm);
    },
    // Post-copy: a VM paused for a page still on the source runs again once it is in.
    wake: (vm) => {
      if (vm.stopReason.kind !== 'paused' || vm.stopReason.reason !== REMOTE_PAGE_WAIT_REASON) return;
      vm.resume();
      w.loopB.exits.delete(vm);
      w.loopB.add(vm);
    },
  });
  const sender = new PrecopySender(source.vm, channel, {
    pause: () => w.loopA.running.delete(source.vm),
    resume: () => w.loopA.running.add(source.vm),
    throttle: () => {},
  }, { disk: source.devices.block, ...options });
  const [sent, received] = await Promise.allSettled([sender.run(), receiver.run()]);
  return { sender, receiver, sent, received, dest: dest as DiskMachine | null };
}

/** The moved guest, with nothing of host A left: it reads back its writes and keeps writing. */
async function checkMoved(w: World, source: DiskMachine, dest: DiskMachine, dirA: string, dirB: string): Promise<void> {
  source.devices.block!.close();
  w.hvA.destroyVm(source.vm);
  for (const file of filesIn(dirA)) rmSync(join(dirA, file)); // no overlay of the source is shared
  const chain = dest.devices.block!.disk.describe();
  for (const file of chain.filter((layer) => layer.kind === 'overlay')) expect(file.path.startsWith(dirB)).toBe(true);
  const before = dest.sink.text().length;
  await waitUntil('the guest to keep running on the destination', () => dest.sink.text().length >= before + 4 || dest.sink.text().includes('X'));
  w.loopB.running.delete(dest.vm);
  source.devices.console.flush();
  dest.devices.console.flush();
  expect(dest.sink.text()).not.toContain('X');
  checkConsole(source.sink.text() + dest.sink.text());
  checkPassWords(dest.devices.block!.disk);
  dest.devices.block!.close();
}

describe('a disk across hosts, in process', () => {
  it('pre-copy sends the overlays to another disk directory; the base stays shared; the guest reads back its writes there', async () => {
    const w = await world(MIGRATION_PROTOCOL, MIGRATION_VERSIONS);
    const base = makeBase(w.dir);
    const { source, dirA, dirB } = await startGuest(w, base);
    const { sent, received, sender, receiver, dest } = await migrate(w, source, dirB);
    expect(sent.status).toBe('fulfilled');
    expect(received.status).toBe('fulfilled');
    expect(sender.figures.disk_sectors_sent).toBeGreaterThanOrEqual(WRITTEN);
    expect(receiver.figures.disk_sectors).toBe(sender.figures.disk_sectors_sent);
    const chain = dest!.devices.block!.disk.describe();
    expect(chain[0]!.path).toBe(base);
    expect(chain.length).toBeGreaterThanOrEqual(2);
    // The base's sectors the guest never wrote read through from the shared image.
    const tail = dest!.devices.block!.disk.read(WRITTEN, SECTORS - WRITTEN);
    expect(tail[5]).toBe(((WRITTEN * DISK_SECTOR_BYTES + 5) * 7 + 3) & 0xff);
    await checkMoved(w, source, dest!, dirA, dirB);
  });

  it('post-copy: the guest\'s block DMA into pages still on the source waits for them, and it reads back its writes there', async () => {
    const w = await world(MIGRATION_PROTOCOL, MIGRATION_VERSIONS);
    const base = makeBase(w.dir);
    const { source, dirA, dirB } = await startGuest(w, base);
    const { sent, received, sender, receiver, dest } = await migrate(w, source, dirB, { mode: 'postcopy' });
    expect(sent.status).toBe('fulfilled');
    expect(received.status).toBe('fulfilled');
    expect(sender.figures.disk_sectors_sent).toBeGreaterThanOrEqual(WRITTEN);
    expect(receiver.figures.disk_sectors).toBe(sender.figures.disk_sectors_sent);
    await checkMoved(w, source, dest!, dirA, dirB);
    expect(dest!.devices.block!.hostErrors).toEqual([]);
  });

  it('moves a blank disk (no base: every sector in overlays)', async () => {
    const w = await world(MIGRATION_PROTOCOL, MIGRATION_VERSIONS);
    const { source, dirA, dirB } = await startGuest(w, null);
    const { sent, received, sender, dest } = await migrate(w, source, dirB);
    expect(sent.status).toBe('fulfilled');
    expect(received.status).toBe('fulfilled');
    expect(sender.figures.disk_sectors_sent).toBeGreaterThanOrEqual(WRITTEN);
    expect(dest!.devices.block!.disk.describe()[0]!.kind).toBe('overlay');
    await checkMoved(w, source, dest!, dirA, dirB);
  });

  it('refuses a destination whose base image is another file, and the source runs on', async () => {
    const w = await world(MIGRATION_PROTOCOL, MIGRATION_VERSIONS);
    const base = makeBase(w.dir);
    const { source, dirB } = await startGuest(w, base);
    // Same path, same size, one byte different in a sector the guest never reads: another disk.
    const bytes = new Uint8Array(SECTORS * DISK_SECTOR_BYTES);
    for (let i = WRITTEN * DISK_SECTOR_BYTES; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
    bytes[bytes.length - 1]! ^= 1;
    writeFileSync(base, bytes);
    const { sent, received } = await migrate(w, source, dirB);
    expect(received.status).toBe('rejected');
    expect(((received as PromiseRejectedResult).reason as { code: string }).code).toBe('BV_MIG_DISK');
    expect(String((received as PromiseRejectedResult).reason)).toMatch(/same file on both hosts/);
    expect(sent.status).toBe('rejected');
    expect(w.loopA.running.has(source.vm)).toBe(true);
    const before = source.sink.text().length;
    await waitUntil('the source to run on', () => source.sink.text().length >= before + 2);
    expect(source.sink.text()).not.toContain('X');
    expect(filesIn(dirB)).toEqual([]);
    source.devices.block!.close();
  });

  // At 4,000 bytes: inside the first DISK frame (BEGIN is a few hundred bytes; round 0 sends the
  // overlays' 32 sectors first, ~16.5 KB). At 20,000: in round 0's pages, after the disk went into
  // B's overlay (which the failure must remove).
  it.each([4000, 20_000])('refuses a corrupt frame at byte %i: the source runs on, the destination keeps no disk file', async (at) => {
    const w = await world(MIGRATION_PROTOCOL, MIGRATION_VERSIONS);
    const base = makeBase(w.dir);
    const { source, dirB } = await startGuest(w, base);
    const { sent, received, receiver } = await migrate(w, source, dirB, {}, { corruptByteAt: at });
    expect(received.status).toBe('rejected');
    expect(receiver.figures.error).toMatch(/checksum|corrupt/i);
    expect(receiver.figures.disk_sectors).toBe(at === 4000 ? 0 : WRITTEN);
    expect(sent.status).toBe('rejected');
    expect(w.loopA.running.has(source.vm)).toBe(true);
    const before = source.sink.text().length;
    await waitUntil('the source to run on', () => source.sink.text().length >= before + 2);
    expect(source.sink.text()).not.toContain('X');
    expect(filesIn(dirB)).toEqual([]);
    source.devices.block!.close();
  });

  it('refuses a well-checksummed DISK frame that is malformed', () => {
    const payload = new Uint8Array(4 + 8 + DISK_SECTOR_BYTES);
    const view = new DataView(payload.buffer);
    view.setUint32(0, 1, true);
    view.setUint32(4, SECTORS, true); // past the end of the disk
    view.setUint32(8, 1, true);
    expect(() => decodeDiskFrame(payload, SECTORS, 'test')).toThrow(/outside the disk/);
    view.setUint32(4, 0, true);
    expect(decodeDiskFrame(payload, SECTORS, 'test')).toHaveLength(1);
    expect(() => decodeDiskFrame(payload.subarray(0, payload.length - 1), SECTORS, 'test')).toThrow(/fewer bytes/);
    const blank: MigratedDisk = { sectors: SECTORS, base: null };
    expect(() => receivingDisk(blank, null, 'vm')).toThrow(/disk_dir/);
  });
});

describe('a disk under replication, in process', () => {
  it('fails over to the disk of the last committed epoch; an epoch whose sectors arrived without COMMIT is not applied', async () => {
    const w = await world(REPLICATION_PROTOCOL, REPLICATION_VERSIONS);
    const base = makeBase(w.dir);
    const { source: primary, dirB } = await startGuest(w, base);
    const accepted = w.server.accept();
    const faults: ChannelFaults = {};
    const channel: FramedChannel = await connect({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: w.server.port, name: 'primary', stallTimeoutMs: 5000, faults });
    const receiver = new ReplicaReceiver(await accepted, { diskDir: dirB });
    const primaryFiles = primary.devices.block!.disk.describe().length;
    const disks = new Map<number, string>();
    const instructions = new Map<number, number>();
    let armed = false;
    const sender = new ReplicationSender(primary.vm, channel, {
      pause: () => w.loopA.running.delete(primary.vm),
      resume: () => w.loopA.running.add(primary.vm),
    }, {
      intervalMs: 25,
      disk: primary.devices.block,
      onCapture: (epoch, count) => {
        disks.set(epoch, diskHash(primary.devices.block!.disk));
        instructions.set(epoch, count);
      },
      onCommitted: (epoch) => void (armed = epoch >= 4),
    });
    let diskFramesOfLast = 0;
    let diskFrames = 0;
    const send = channel.send.bind(channel);
    channel.send = async (type, payload) => {
      if (type === ReplicationFrame.DISK) diskFrames++;
      if (type === ReplicationFrame.COMMIT) {
        if (armed && diskFrames > 0 && diskFramesOfLast === 0) {
          // Everything of this epoch is out (its disk sectors too) but its COMMIT: wait until the backup staged it, then cut.
          diskFramesOfLast = diskFrames;
          await waitUntil('the epoch to arrive', () => receiver.status().bytes_received >= channel.stats.bytesSent - 64);
          faults.cutAfterBytes = channel.stats.bytesSent;
        }
        diskFrames = 0;
      }
      return send(type, payload);
    };
    const received = receiver.run();
    const sent = sender.run().then(() => 'fulfilled', () => 'rejected');
    await received;
    expect(await sent).toBe('rejected');
    const status = receiver.status();
    const epoch = status.committed_epoch!;
    expect(epoch).toBeGreaterThanOrEqual(4);
    expect(status.epochs_dropped).toBe(1);
    expect(status.disk_sectors).toBeGreaterThanOrEqual(WRITTEN);
    expect(diskFramesOfLast).toBeGreaterThan(0);
    // The captures sealed nothing on the primary: its chain has the files it had (no overlay per epoch).
    expect(primary.devices.block!.disk.describe().length).toBe(primaryFiles);
    // The dropped epoch changed the disk: had it been applied, the comparison below would fail.
    expect(disks.get(epoch + 1)).not.toBe(disks.get(epoch));
    w.loopA.running.delete(primary.vm);
    let made: DiskMachine | null = null;
    const vm = receiver.activate({
      create: (config, _attach, disk) => {
        made = diskMachine(w.hvB, config, disk!, false);
        return made.vm;
      },
      block: () => made?.devices.block ?? null,
      start: () => {},
      discard: (v) => w.hvB.destroyVm(v),
    });
    const backup = made! as DiskMachine;
    expect(vm.instructionsRetired).toBe(instructions.get(epoch));
    expect(diskHash(backup.devices.block!.disk)).toBe(disks.get(epoch));
    for (const file of backup.devices.block!.disk.describe().filter((layer) => layer.kind === 'overlay')) expect(file.path.startsWith(dirB)).toBe(true);
    // The activated guest reads back the epoch's disk and keeps writing.
    w.loopB.add(vm);
    const before = backup.sink.text().length;
    await waitUntil('the activated guest to run', () => backup.sink.text().length >= before + 3 || backup.sink.text().includes('X'));
    w.loopB.running.delete(vm);
    expect(backup.sink.text()).not.toContain('X');
    checkPassWords(backup.devices.block!.disk);
    // The activated VM owns the disk: dropping the replica removes nothing.
    const files = filesIn(dirB);
    receiver.discard();
    expect(filesIn(dirB)).toEqual(files);
    primary.devices.block!.close();
    backup.devices.block!.close();
  });

  it('a replica dropped without activation removes its disk overlay', async () => {
    const w = await world(REPLICATION_PROTOCOL, REPLICATION_VERSIONS);
    const base = makeBase(w.dir);
    const { source: primary, dirB } = await startGuest(w, base);
    const accepted = w.server.accept();
    const channel = await connect({ protocol: REPLICATION_PROTOCOL, versions: REPLICATION_VERSIONS, tls: certs.a, host: '127.0.0.1', port: w.server.port, name: 'primary', stallTimeoutMs: 5000 });
    const receiver = new ReplicaReceiver(await accepted, { diskDir: dirB });
    const sender = new ReplicationSender(primary.vm, channel, { pause: () => {}, resume: () => {} }, { intervalMs: 25, disk: primary.devices.block });
    const received = receiver.run();
    const sent = sender.run().catch(() => null);
    await waitUntil('two epochs', () => (receiver.figures.committed_epoch ?? -1) >= 1);
    expect(filesIn(dirB).length).toBe(1);
    expect(receiver.figures.disk_overlay!.startsWith(dirB)).toBe(true);
    receiver.discard();
    await received;
    await sent;
    expect(filesIn(dirB)).toEqual([]);
    primary.devices.block!.close();
  });
});
