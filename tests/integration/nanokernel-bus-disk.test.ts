/**
 * A disk proxied over the partition bus (docs/bus.md, "A disk over the bus"; T-20): the
 * nanokernel with no block device of its own reaches the disk of a storage-server guest through
 * a block channel. The disk programs (record, reader) must print exactly what they print on the
 * block device itself and leave the same bytes on the disk; a client that speaks only 1.0 works
 * with a 2.0 server (one sector per request); the server answers malformed requests with an error
 * status and changes nothing; and both VMs checkpointed mid-run restore into a new host and
 * finish with the same outcome.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, DISK_SECTOR_BYTES, runWithResets, savedBootArgs, type DiskChain } from '../../devices/index.ts';
import { ChannelService } from '../../devices/channel.ts';
import { createHypervisor, type RunResult } from '../../kernel/index.ts';
import { Bus } from '../../services/bus/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import {
  bootDirect, bootPair, kernelImage, requestPacket, responsePacket, runPair, ScriptedClient, SERVER_IMAGE, SERVER_SYMBOLS, serverWord, type Guest, type Pair,
} from './bus-disk-pair.ts';

const root = mkdtempSync(join(tmpdir(), 'bv-busdisk-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MiB = 2 ** 20;
const SECTORS = 64;
const Status = { OK: 0, BAD_RANGE: 2, BAD_COMMAND: 4 } as const;

/** A raw image of SECTORS sectors of pseudo-random bytes (so reads are checked byte for byte), in a directory of its own. */
function image(seed = 1): string {
  const dir = mkdtempSync(join(root, 'd'));
  const path = join(dir, 'disk.img');
  const bytes = new Uint8Array(SECTORS * DISK_SECTOR_BYTES);
  let x = seed;
  for (let i = 0; i < bytes.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  // The record program keeps its records where the format says; start from free sectors.
  bytes.fill(0, 0, 48 * DISK_SECTOR_BYTES);
  writeFileSync(path, bytes);
  return path;
}

const diskHash = (disk: DiskChain): string => createHash('sha256').update(disk.read(0, disk.sectors)).digest('hex');
const disk = (guest: Guest): DiskChain => guest.devices.block!.disk;

/**
 * The client's output with its disk line normalized to the direct device's, and without the
 * summary's preemption count: the bus driver runs more kernel instructions per transfer (it copies
 * through the rings), so the timer can preempt at other points. Each workload runs one program,
 * so nothing else may differ.
 */
const normalized = (text: string): string => text
  .replace(/^(\[kernel\] disk: \d+ sectors of 512 bytes) \(bus, version \d+\.\d+\)$/m, '$1')
  .replace(/, \d+ preemptions,/, ', N preemptions,');

function closeAll(...guests: Guest[]): void {
  for (const guest of guests) guest.devices.block?.close();
}

const WORKLOADS = [
  'record put greeting hello get greeting add n 5 add n 2 get n get missing put greeting bye get greeting add n 9 get n',
  'reader 6 3',
  'reader 8 2',
];

describe('the nanokernel on a disk proxied by a storage-server guest', () => {
  it('prints exactly what it prints on the block device itself and leaves the same disk', () => {
    for (const bootArgs of WORKLOADS) {
      const direct = bootDirect(bootArgs, image());
      expect(runWithResets(direct.hv, direct.vm, direct.devices, { maxInstructions: 200_000_000 }).reason).toEqual({ kind: 'halted', exitCode: 0 });
      const pair = bootPair({ bootArgs, disk: image() });
      expect(runPair(pair)).toEqual({ kind: 'halted', exitCode: 0 });
      const lines = pair.client.output.text().split('\n');
      expect(lines[1]).toBe(`[kernel] disk: ${SECTORS} sectors of 512 bytes (bus, version 2.0)`);
      expect(normalized(pair.client.output.text())).toBe(normalized(direct.output.text()));
      expect(diskHash(disk(pair.server))).toBe(diskHash(disk(direct)));
      expect(pair.server.output.text()).toBe('storage: serving 64 sectors on slot 0 (version 2.0)\n');
      // Every request was answered, none with an error; the device saw the same writes.
      const info = pair.bus.info('disk0');
      expect(info.ends.map((end) => [end.state, end.version])).toEqual([['open', '2.0'], ['open', '2.0']]);
      const requests = serverWord(pair.server.vm, 'srv_requests');
      expect(info.ends[0]!.counters.packetsFromGuest).toBe(requests);
      expect(info.ends[0]!.counters.packetsToGuest).toBe(requests);
      expect(serverWord(pair.server.vm, 'srv_errors')).toBe(0);
      expect(pair.server.devices.block!.stats.writes).toBe(direct.devices.block!.stats.writes);
      expect(pair.server.devices.block!.stats.sectorsRead).toBe(direct.devices.block!.stats.sectorsRead);
      closeAll(direct, pair.server);
    }
  });

  it('a client of 1.0 works with a server of 2.0: one sector per request, the same results', () => {
    for (const bootArgs of [WORKLOADS[0]!, WORKLOADS[2]!]) versionInterop(bootArgs);
  });

  function versionInterop(bootArgs: string): void {
    const v2 = bootPair({ bootArgs, disk: image() });
    expect(runPair(v2)).toEqual({ kind: 'halted', exitCode: 0 });
    const v1 = bootPair({ bootArgs, disk: image(), kernel: kernelImage('1.0') });
    expect(runPair(v1)).toEqual({ kind: 'halted', exitCode: 0 });
    expect(v1.client.output.text().split('\n')[1]).toBe(`[kernel] disk: ${SECTORS} sectors of 512 bytes (bus, version 1.0)`);
    expect(normalized(v1.client.output.text())).toBe(normalized(v2.client.output.text()));
    expect(diskHash(disk(v1.server))).toBe(diskHash(disk(v2.server)));
    // The server agreed 2.0 for itself and sized its answers by the client's 1.0.
    expect(v1.bus.info('disk0').ends.map((end) => end.version)).toEqual(['1.0', '2.0']);
    expect(v1.server.output.text()).toBe('storage: serving 64 sectors on slot 0 (version 2.0)\n');
    const sectors = v2.server.devices.block!.stats.sectorsRead;
    expect(v1.server.devices.block!.stats.sectorsRead).toBe(sectors);
    expect(v1.server.devices.block!.stats.reads).toBe(sectors); // one sector per READ
    // The page cache reads 8-sector blocks: 2.0 takes each in one request, 1.0 in eight.
    expect(v2.server.devices.block!.stats.reads).toBe(Math.ceil(sectors / 8));
    expect(serverWord(v1.server.vm, 'srv_requests') - serverWord(v2.server.vm, 'srv_requests')).toBe(sectors - Math.ceil(sectors / 8));
    expect(serverWord(v1.server.vm, 'srv_errors')).toBe(0);
    closeAll(v1.server, v2.server);
  }

  it('a host that takes only 1.0 gets a 2.0 client down to 1.0; one that takes neither version leaves the kernel without a disk', () => {
    const old = bootPair({ bootArgs: 'record put k v get k', disk: image(), versions: ['1.0'] });
    expect(runPair(old)).toEqual({ kind: 'halted', exitCode: 0 });
    expect(old.client.output.text()).toContain(`[kernel] disk: ${SECTORS} sectors of 512 bytes (bus, version 1.0)\n`);
    expect(old.client.output.text()).toContain('record: get k = v\n');
    expect(old.bus.info('disk0').ends.map((end) => end.version)).toEqual(['1.0', '1.0']);
    const none = bootPair({ bootArgs: 'record get k', disk: image(), versions: ['3.0'] });
    expect(runPair(none)).toEqual({ kind: 'halted', exitCode: 2 });
    const lines = none.client.output.text().split('\n');
    expect(lines[1]).toBe('[kernel] disk: not used, the bus offers no version this driver speaks');
    expect(lines).toContain('record: no disk');
    closeAll(old.server, none.server);
  });

  it('a channel rescinded while the client waits for a response: the transfer fails with an I/O error, the kernel goes on', () => {
    const pair = bootPair({ bootArgs: 'record put a 1 put b 2 put c 3 put d 4 put e 5', disk: image() });
    expect(runPair(pair, 'record: put b = 2')).toEqual({ kind: 'budget' });
    const vcpu = pair.client.vm.vcpus[0]!;
    for (let i = 0; i < 10_000 && !(vcpu.waiting && !vcpu.wakeable); i++) pair.hv.run({ maxInstructions: 100 }, [pair.client.vm]);
    expect(vcpu.waiting).toBe(true);
    pair.bus.rescind('disk0');
    expect(runPair(pair)).toEqual({ kind: 'halted', exitCode: 2 });
    const lines = pair.client.output.text().split('\n');
    expect(lines.filter((line) => line.startsWith('record:'))).toEqual(['record: put a = 1', 'record: put b = 2', 'record: put c: disk error']);
    expect(lines).toContain('[kernel] pid 1 (record) exited with code 2');
    expect(pair.server.output.text()).toContain('storage: channel closed, waiting for an offer\n');
    // The server acknowledged (its slot is free again: the host no longer offers the channel); the
    // kernel's driver does not, it only stops using the disk.
    expect(pair.bus.info('disk0').ends.map((end) => end.state)).toEqual(['rescinded', 'absent']);
    closeAll(pair.server);
  });

  it('survives a checkpoint of both VMs mid-run: restored into a new host, they finish with the same outcome', () => {
    const dir = mkdtempSync(join(root, 'c'));
    const base = image();
    const bootArgs = 'record put a apple add n 1 add n 1 add n 1 add n 1 put a apricot get a get n';
    const original = bootPair({ bootArgs, disk: base });
    expect(runPair(original, 'record: add n = 2')).toEqual({ kind: 'budget' });
    // Then the client alone, until it waits for a response: its request sits in the server's
    // receive ring, not yet taken, when both are saved.
    const delivered = (): number => original.bus.info('disk0').ends[1]!.counters.packetsToGuest;
    const inFlight = (): boolean => delivered() === serverWord(original.server.vm, 'srv_requests') + 1;
    const vcpu = original.client.vm.vcpus[0]!;
    for (let i = 0; i < 10_000 && !(vcpu.waiting && inFlight()); i++) {
      // (a client waiting with nothing in flight waits for the server to finish a request)
      original.hv.run({ maxInstructions: 200 }, [vcpu.waiting && !vcpu.wakeable ? original.server.vm : original.client.vm]);
    }
    expect(original.client.vm.vcpus[0]!.waiting).toBe(true);
    expect(inFlight()).toBe(true);
    const atCheckpoint = original.client.output.text();
    const clientPath = join(dir, 'client.ckpt');
    const serverPath = join(dir, 'server.ckpt');
    saveVmCheckpoint(original.client.vm, clientPath);
    saveVmCheckpoint(original.server.vm, serverPath);
    expect(runPair(original)).toEqual({ kind: 'halted', exitCode: 0 });
    const rest = original.client.output.text().slice(atCheckpoint.length);
    expect(rest).toContain('record: get n = 4\n');

    const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const bus = new Bus();
    bus.addChannel({ name: 'disk0', service: 'block', client: 'client', server: 'server' });
    const restore = (path: string, disk?: string): Guest => {
      const output = new CaptureSink();
      let devices: Guest['devices'] | null = null;
      const restored = restoreVmCheckpoint(hv, path, {
        mode: 'eager',
        attach: (vm, saved) => {
          devices = attachStandardDevices(vm, { output, bootArgs: savedBootArgs(saved.components['bootargs']!.state), ...(disk ? { disk } : {}) });
          bus.attachVm(vm, hv);
        },
      });
      return { vm: restored.vm, devices: devices!, output };
    };
    const client = restore(clientPath);
    const server = restore(serverPath, base);
    expect(bus.info('disk0').ends.map((end) => end.state)).toEqual(['open', 'open']);
    expect(runPair({ hv, client, server })).toEqual({ kind: 'halted', exitCode: 0 });
    expect(client.output.text()).toBe(rest);
    expect(diskHash(disk(server))).toBe(diskHash(disk(original.server)));
    expect(server.output.text()).toBe('');
    closeAll(original.server, server);
  });
});

describe('the nanokernel trusts nothing in a response', () => {
  it('skips packets that are not its response, and fails a transfer whose response does not fit the request', () => {
    const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const bus = new Bus();
    const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'client' });
    vm.loadImage(kernelImage());
    const output = new CaptureSink();
    const devices = attachStandardDevices(vm, { output, bootArgs: 'record get k' });
    bus.attachVm(vm, hv);
    const server = new ScriptedClient(hv, bus, 'server');
    bus.addChannel({ name: 'disk0', service: 'block', client: 'client', server: 'server' });
    server.open(0x00020000, ChannelService.BLOCK_SERVER);
    const request = (): DataView => {
      // The kernel runs until it waits for an answer; then exactly one request is there.
      for (let i = 0; i < 100; i++) {
        const [result] = hv.run({ maxInstructions: 1_000_000 }, [vm]);
        if (result!.reason.kind === 'idle') break;
        if (result!.reason.kind !== 'budget') throw new Error(JSON.stringify(result!.reason));
      }
      const packets = server.receive();
      expect(packets.map((p) => [p.type, p.offset8])).toEqual([[1, 2]]);
      return new DataView(packets[0]!.payload.buffer, packets[0]!.payload.byteOffset, 16);
    };
    const info = request();
    expect([info.getUint32(0, true), info.getUint32(4, true), info.getUint32(8, true)]).toEqual([4, 0, 0]); // GET_INFO
    const id = server.lastId;
    const junk = responsePacket(id, 0, 0, new Uint8Array(8));
    new DataView(junk.buffer).setUint16(0, 9, true); // not a response
    server.send(junk);
    server.send(responsePacket(id + 1, 0, 0, new Uint8Array(new Uint32Array([1, 512]).buffer))); // another id
    server.send(responsePacket(id, 0, 0, new Uint8Array(new Uint32Array([SECTORS, 512]).buffer)));
    const read = request(); // record's lookup: the home sector's block
    expect(read.getUint32(0, true)).toBe(1);
    expect(read.getUint32(8, true)).toBe(8);
    server.send(responsePacket(server.lastId, 0, 8)); // OK, but without the sectors
    let reason: RunResult['reason'] = { kind: 'budget' };
    for (let i = 0; i < 100 && reason.kind === 'budget'; i++) [{ reason }] = hv.run({ maxInstructions: 1_000_000 }, [vm]) as [RunResult];
    devices.console.flush();
    const lines = output.text().split('\n');
    expect(lines[1]).toBe(`[kernel] disk: ${SECTORS} sectors of 512 bytes (bus, version 2.0)`);
    expect(lines.filter((line) => line.startsWith('record:'))).toEqual(['record: get k: disk error']);
    expect(reason).toEqual({ kind: 'halted', exitCode: 2 });
    expect(bus.info('disk0').failureCount).toBe(0);
  });
});

describe('the storage server trusts nothing in a packet', () => {
  function serverWithScriptedClient(version: number): { pair: Omit<Pair, 'client'>; client: ScriptedClient; step: () => void } {
    const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
    const bus = new Bus();
    const server = hv.createVm({ memoryBytes: MiB, name: 'server' });
    server.loadImage(SERVER_IMAGE);
    const output = new CaptureSink();
    const devices = attachStandardDevices(server, { output, disk: image(7) });
    bus.attachVm(server, hv);
    const client = new ScriptedClient(hv, bus, 'client');
    bus.addChannel({ name: 'disk0', service: 'block', client: 'client', server: 'server' });
    client.open(version);
    const step = (): void => {
      for (let i = 0; i < 20; i++) {
        const [result] = hv.run({ maxInstructions: 100_000 }, [server]);
        if (result!.reason.kind !== 'budget' && result!.reason.kind !== 'idle') throw new Error(JSON.stringify(result!.reason));
      }
      devices.console.flush();
    };
    step();
    return { pair: { hv, bus, server: { vm: server, devices, output } }, client, step };
  }

  const status = (payload: Uint8Array): [number, number] => {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    return [view.getUint32(0, true), view.getUint32(4, true)];
  };

  it('answers bad ops, counts and ranges with an error status, drops what is no request, and still serves after', () => {
    const { pair, client, step } = serverWithScriptedClient(0x00020000);
    const block = pair.server.devices.block!;
    const before = diskHash(block.disk);
    const sector = new Uint8Array(DISK_SECTOR_BYTES).fill(0xab);
    const nine = new Uint8Array(9 * DISK_SECTOR_BYTES).fill(0xcd);
    const requests: [Uint8Array, number][] = [
      [requestPacket(1, 9, 0, 1), Status.BAD_COMMAND], // no such op
      [requestPacket(2, 0, 0, 1), Status.BAD_COMMAND],
      [requestPacket(3, 1, 0, 0), Status.BAD_RANGE], // no sectors
      [requestPacket(4, 1, 0, 9), Status.BAD_RANGE], // more than 2.0 allows
      [requestPacket(5, 1, SECTORS, 1), Status.BAD_RANGE], // past the end
      [requestPacket(6, 1, SECTORS - 1, 2), Status.BAD_RANGE],
      [requestPacket(7, 2, 0xffffffff, 2, new Uint8Array(2 * DISK_SECTOR_BYTES)), Status.BAD_RANGE], // wraps around
      [requestPacket(8, 2, 3, 2, sector), Status.BAD_COMMAND], // claims 2 sectors, carries 1
      [requestPacket(9, 2, 0, 9, nine), Status.BAD_RANGE],
      [requestPacket(10, 2, 0, 1, new Uint8Array(0)).subarray(0, 24).slice(), Status.BAD_COMMAND], // too short for a request
    ];
    // The last one is 24 bytes: fix its length field to 3 units.
    new DataView(requests[9]![0].buffer).setUint16(4, 3, true);
    for (const [packet] of requests) client.send(packet);
    const notRequest = requestPacket(11, 1, 0, 1);
    new DataView(notRequest.buffer).setUint16(0, 7, true);
    client.send(notRequest);
    step();
    const answers = client.receive();
    expect(answers.map((p) => [p.type, p.offset8, p.id])).toEqual(requests.map((_, i) => [2, 2, i + 1]));
    expect(answers.map((p) => status(p.payload))).toEqual(requests.map(([, s]) => [s, 0]));
    expect(answers.every((p) => p.payload.length === 8)).toBe(true);
    expect(diskHash(block.disk)).toBe(before);
    expect(block.stats.writes).toBe(0);
    expect(serverWord(pair.server.vm, 'srv_errors')).toBe(requests.length);
    expect(serverWord(pair.server.vm, 'srv_dropped')).toBe(1);
    // Still serving: a write of two sectors, a read of them back, GET_INFO.
    const two = new Uint8Array(2 * DISK_SECTOR_BYTES).map((_, i) => (i * 7) & 0xff);
    client.send(requestPacket(20, 2, 5, 2, two));
    client.send(requestPacket(21, 1, 5, 2));
    client.send(requestPacket(22, 4, 0, 0));
    client.send(requestPacket(23, 3, 0, 0));
    step();
    const good = client.receive();
    expect(good.map((p) => [p.id, ...status(p.payload)])).toEqual([[20, 0, 2], [21, 0, 2], [22, 0, 0], [23, 0, 0]]);
    expect(good[1]!.payload.subarray(8)).toEqual(two);
    expect([...new Uint32Array(good[2]!.payload.slice(8).buffer)]).toEqual([SECTORS, 512]);
    expect(block.disk.read(5, 2)).toEqual(two);
    expect(block.stats.flushes).toBe(1);
    block.close();
  });

  it('holds a client of 1.0 to one sector per request', () => {
    const { pair, client, step } = serverWithScriptedClient(0x00010000);
    client.send(requestPacket(1, 1, 0, 2));
    client.send(requestPacket(2, 1, 0, 1));
    step();
    const answers = client.receive();
    expect(answers.map((p) => [p.id, ...status(p.payload)])).toEqual([[1, Status.BAD_RANGE, 0], [2, 0, 1]]);
    expect(answers[1]!.payload.subarray(8)).toEqual(pair.server.devices.block!.disk.read(0, 1));
    pair.server.devices.block!.close();
  });

  it('waits with pending_send_size while its send ring is full, and goes on once the client frees space', () => {
    const { pair, client, step } = serverWithScriptedClient(0x00020000);
    const disk = pair.server.devices.block!.disk;
    // Four reads of 8 sectors: each response is 4,120 bytes, and each ring holds 8,184.
    for (let id = 1; id <= 4; id++) client.send(requestPacket(id, 1, 8 * id, 8));
    step();
    // The client's ring holds the first response, the server's own the second; the third waits.
    expect(serverWord(pair.server.vm, 'srv_requests')).toBe(3);
    const sendHeader = SERVER_SYMBOLS.get('srv_rings')!;
    expect(serverWord(pair.server.vm, sendHeader + 12)).toBe(4120);
    const answers = client.receive();
    for (let i = 0; i < 10 && answers.length < 4; i++) {
      step();
      answers.push(...client.receive());
    }
    expect(answers.map((p) => [p.id, ...status(p.payload)])).toEqual([[1, 0, 8], [2, 0, 8], [3, 0, 8], [4, 0, 8]]);
    for (const p of answers) expect(p.payload.subarray(8)).toEqual(disk.read(8 * p.id, 8));
    expect(serverWord(pair.server.vm, sendHeader + 12)).toBe(0);
    expect(pair.bus.info('disk0').failureCount).toBe(0);
    pair.server.devices.block!.close();
  });

  it('closes and revokes when the host rescinds the channel, and serves the next offer', () => {
    const { pair, client, step } = serverWithScriptedClient(0x00020000);
    pair.bus.rescind('disk0');
    step();
    expect(pair.server.output.text().split('\n').slice(1, 2)).toEqual(['storage: channel closed, waiting for an offer']);
    // The scripted client acknowledges too; the host offers again and both open anew.
    client.set(0x28, 4);
    pair.bus.offer('disk0');
    step();
    client.open(0x00020000);
    client.send(requestPacket(1, 4, 0, 0));
    step();
    expect(client.receive().map((p) => [p.id, ...status(p.payload)])).toEqual([[1, 0, 0]]);
    expect(pair.server.output.text().split('\n').filter((line) => line.startsWith('storage: serving'))).toHaveLength(2);
    pair.server.devices.block!.close();
  });
});
