/**
 * Shared by the proxied-disk tests (docs/bus.md, "A disk over the bus"): a nanokernel client and
 * a storage-server guest (examples/bus/storage-server.s) on one hypervisor, linked by a block
 * channel of a services/bus Bus; a direct machine (the nanokernel on the block device itself) to
 * compare with; and a scripted client that drives a channel from the host side, for feeding the
 * server hostile requests.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { assemble, assembleFile } from '../../guest-isa/assembler.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { attachStandardDevices, CaptureSink, type StandardDevices } from '../../devices/index.ts';
import { ChannelRegister, ChannelService, ChannelState, type ChannelDevice } from '../../devices/channel.ts';
import { createHypervisor, type Hypervisor, type RunResult, type Vm } from '../../kernel/index.ts';
import { Bus } from '../../services/bus/index.ts';

const REPO = join(import.meta.dirname, '..', '..');
const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const MiB = 2 ** 20;

/** The storage server, assembled once per test file. */
export const { image: SERVER_IMAGE, symbols: SERVER_SYMBOLS } = assembleFile(join(REPO, 'examples/bus/storage-server.s'));

/**
 * The nanokernel; `versions` '1.0' builds one whose bus driver proposes only 1.0 (bus.s's
 * BUS_FIRST_VERSION = 1), as an older client would.
 */
export function kernelImage(versions: '2.0' | '1.0' = '2.0'): GuestImage {
  if (versions === '2.0') return assembleFile(KERNEL).image;
  const readFile = (path: string): string => {
    const text = readFileSync(path, 'utf8');
    if (!path.endsWith('/bus.s')) return text;
    const line = '        .equ    BUS_FIRST_VERSION, 0\n';
    if (!text.includes(line)) throw new Error('bus.s no longer has the BUS_FIRST_VERSION line');
    return text.replace(line, '        .equ    BUS_FIRST_VERSION, 1\n');
  };
  return assemble(readFileSync(KERNEL, 'utf8'), { fileName: KERNEL, readFile }).image;
}

/** One VM with its standard devices and captured console. */
export interface Guest {
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
}

/** A client and a server linked by the channel `disk0`. */
export interface Pair {
  hv: Hypervisor;
  bus: Bus;
  client: Guest;
  server: Guest;
}

/** How bootPair sets the pair up. */
export interface PairOptions {
  /** The client's boot arguments (the programs). */
  bootArgs: string;
  /** The server's disk (raw image or top overlay). */
  disk: string;
  /** The client's kernel (default: kernelImage()). */
  kernel?: GuestImage;
  /** Versions the host accepts on the channel (default 2.0, 1.0). */
  versions?: string[];
  /** The server's RAM (default 1 MiB). */
  serverMemoryBytes?: number;
}

/** Boots a client nanokernel without a block device and a storage server with `disk`, linked by a block channel. */
export function bootPair(options: PairOptions, hv = createHypervisor({ hostMemoryBytes: 64 * MiB })): Pair {
  const bus = new Bus();
  const client = hv.createVm({ memoryBytes: 16 * MiB, name: 'client' });
  client.loadImage(options.kernel ?? kernelImage());
  const clientOutput = new CaptureSink();
  const clientDevices = attachStandardDevices(client, { output: clientOutput, bootArgs: options.bootArgs });
  bus.attachVm(client, hv);
  const server = hv.createVm({ memoryBytes: options.serverMemoryBytes ?? MiB, name: 'server' });
  server.loadImage(SERVER_IMAGE);
  const serverOutput = new CaptureSink();
  const serverDevices = attachStandardDevices(server, { output: serverOutput, disk: options.disk });
  bus.attachVm(server, hv);
  bus.addChannel({ name: 'disk0', service: 'block', client: 'client', server: 'server', ...(options.versions ? { versions: options.versions } : {}) });
  return {
    hv, bus,
    client: { vm: client, devices: clientDevices, output: clientOutput },
    server: { vm: server, devices: serverDevices, output: serverOutput },
  };
}

/**
 * Runs both VMs in rounds until the client stops (its reason), or its output holds the line
 * `until` (then `budget`: it is stopped between instructions). Throws when the server stops, or
 * both wait with nothing to wake them.
 */
export function runPair(pair: Pick<Pair, 'hv' | 'client' | 'server'>, until?: string, step = 50_000): RunResult['reason'] {
  const { hv, client, server } = pair;
  for (let round = 0; round < 200_000; round++) {
    const [c, s] = hv.run({ maxInstructions: step }, [client.vm, server.vm]);
    client.devices.console.flush();
    server.devices.console.flush();
    if (c!.reason.kind !== 'budget' && c!.reason.kind !== 'idle') return c!.reason;
    if (s!.reason.kind !== 'budget' && s!.reason.kind !== 'idle') throw new Error(`the server stopped: ${JSON.stringify(s!.reason)}\n${server.output.text()}`);
    if (until !== undefined && client.output.text().split('\n').includes(until)) return { kind: 'budget' };
    if (c!.instructions === 0 && s!.instructions === 0) throw new Error(`both VMs wait with nothing to wake them\n${client.output.text()}\n${server.output.text()}`);
  }
  throw new Error('the pair ran too long');
}

/** The little-endian u32 at a server symbol (its counters: srv_requests, srv_errors, srv_dropped) or address. */
export function serverWord(vm: Vm, where: string | number): number {
  const at = typeof where === 'number' ? where : SERVER_SYMBOLS.get(where);
  if (at === undefined) throw new Error(`the server has no symbol ${where}`);
  const bytes = vm.memory.readPhysical(at as never, 4);
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

/** The nanokernel on a block device of its own: the baseline the proxied disk must match. */
export function bootDirect(bootArgs: string, disk: string, hv = createHypervisor({ hostMemoryBytes: 64 * MiB })): Guest & { hv: Hypervisor } {
  const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'direct' });
  vm.loadImage(kernelImage());
  const output = new CaptureSink();
  return { hv, vm, output, devices: attachStandardDevices(vm, { output, bootArgs, disk }) };
}

// ---------------------------------------------------------------------------------------------
// A client driven from the host side: it writes the device's registers and its rings itself, so
// a test can send the server any packet at all.

const LIST_GPA = 0x10000;
const RINGS_GPA = 0x11000;
const RING_PAGES = 3;
const RING_DATA_BYTES = (RING_PAGES - 1) * 4096;

/** A response or other packet the scripted client received. */
export interface Packet {
  type: number;
  offset8: number;
  id: number;
  /** The payload (from offset8 × 8 to the packet's end). */
  payload: Uint8Array;
}

/** Block protocol request bytes: header, op, sector, count, 0, then `data`. */
export function requestPacket(id: number, op: number, sector: number, count: number, data = new Uint8Array(0), len8?: number): Uint8Array {
  const bytes = new Uint8Array(32 + data.length + ((8 - (data.length % 8)) % 8));
  const view = new DataView(bytes.buffer);
  view.setUint16(0, 1, true);
  view.setUint16(2, 2, true);
  view.setUint16(4, len8 ?? bytes.length / 8, true);
  view.setUint32(8, id, true);
  view.setUint32(16, op, true);
  view.setUint32(20, sector, true);
  view.setUint32(24, count, true);
  bytes.set(data, 32);
  return bytes;
}

/** Block protocol response bytes: header (type 2), status, count, then `data`. */
export function responsePacket(id: number, status: number, count: number, data = new Uint8Array(0)): Uint8Array {
  const bytes = new Uint8Array(24 + data.length + ((8 - (data.length % 8)) % 8));
  const view = new DataView(bytes.buffer);
  view.setUint16(0, 2, true);
  view.setUint16(2, 2, true);
  view.setUint16(4, bytes.length / 8, true);
  view.setUint32(8, id, true);
  view.setUint32(16, status, true);
  view.setUint32(20, count, true);
  bytes.set(data, 24);
  return bytes;
}

/**
 * A channel end in a VM that runs no code: the test plays its guest through the device's
 * registers — a block client (the default), or a server (`open(version, ChannelService.BLOCK_SERVER)`).
 */
export class ScriptedClient {
  readonly vm: Vm;
  readonly device: ChannelDevice;
  private sendOffset = 0;
  private receiveOffset = 0;
  /** The transaction id of the last packet received. */
  lastId = 0;

  constructor(hv: Hypervisor, bus: Bus, name: string) {
    this.vm = hv.createVm({ memoryBytes: MiB, name });
    this.device = bus.attachVm(this.vm, hv);
  }

  private get vcpu() {
    return this.vm.vcpus[0]!;
  }

  reg(offset: number): number {
    return this.device.read(this.vcpu, offset) >>> 0;
  }

  set(offset: number, value: number): void {
    this.device.write(this.vcpu, offset, value >>> 0);
  }

  /** Negotiates `version`, grants the two rings and opens the slot offered as `service`. */
  open(version: number, service: number = ChannelService.BLOCK): void {
    let slot = -1;
    for (let i = 0; i < this.reg(ChannelRegister.SLOTS); i++) {
      this.set(ChannelRegister.SELECT, i);
      if (this.reg(ChannelRegister.STATE) === ChannelState.OFFERED && (this.reg(ChannelRegister.SERVICE) & 0xffff) === service) slot = i;
    }
    if (slot < 0) throw new Error(`no offer of service ${service}`);
    this.set(ChannelRegister.SELECT, slot);
    this.set(ChannelRegister.VERSION, version);
    if (this.reg(ChannelRegister.VERSION) !== version) throw new Error('version refused');
    const list = new DataView(new ArrayBuffer(4 + 8 * RING_PAGES));
    list.setUint32(0, 2 * RING_PAGES, true);
    for (let i = 0; i < 2 * RING_PAGES; i++) list.setUint32(4 + 4 * i, RINGS_GPA + 4096 * i, true);
    this.vm.memory.writePhysical(LIST_GPA as never, new Uint8Array(list.buffer));
    this.set(ChannelRegister.GRANT_LIST, LIST_GPA);
    this.set(ChannelRegister.COMMAND, 1);
    if (this.reg(ChannelRegister.RESULT) !== 0) throw new Error('GRANT refused');
    this.set(ChannelRegister.SEND_PAGES, RING_PAGES);
    this.set(ChannelRegister.COMMAND, 3);
    if (this.reg(ChannelRegister.RESULT) !== 0) throw new Error('OPEN refused');
  }

  private word(gpa: number): number {
    const bytes = this.vm.memory.readPhysical(gpa as never, 4);
    return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
  }

  private setWord(gpa: number, value: number): void {
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(0, value, true);
    this.vm.memory.writePhysical(gpa as never, bytes);
  }

  /** Puts a packet in the send ring (wrapping), publishes it and rings the doorbell. */
  send(packet: Uint8Array): void {
    const data = RINGS_GPA + 4096;
    for (let i = 0; i < packet.length; i += 4) {
      this.vm.memory.writePhysical((data + ((this.sendOffset + i) % RING_DATA_BYTES)) as never, packet.subarray(i, i + 4));
    }
    this.sendOffset = (this.sendOffset + packet.length) % RING_DATA_BYTES;
    this.setWord(RINGS_GPA, this.sendOffset);
    this.set(ChannelRegister.DOORBELL, 0);
  }

  /** Takes every packet in the receive ring, then rings the doorbell: space was freed. */
  receive(): Packet[] {
    const header = RINGS_GPA + RING_PAGES * 4096;
    const data = header + 4096;
    const read = (offset: number, length: number): Uint8Array => {
      const out = new Uint8Array(length);
      for (let i = 0; i < length; i += 4) out.set(this.vm.memory.readPhysical((data + ((offset + i) % RING_DATA_BYTES)) as never, 4), i);
      return out;
    };
    const packets: Packet[] = [];
    const write = this.word(header);
    while (this.receiveOffset !== write) {
      const head = new DataView(read(this.receiveOffset, 16).buffer);
      const len = head.getUint16(4, true) * 8;
      const offset8 = head.getUint16(2, true);
      const whole = read(this.receiveOffset, len);
      packets.push({ type: head.getUint16(0, true), offset8, id: head.getUint32(8, true), payload: whole.subarray(offset8 * 8) });
      this.lastId = head.getUint32(8, true);
      this.receiveOffset = (this.receiveOffset + len) % RING_DATA_BYTES;
    }
    this.setWord(header + 4, this.receiveOffset);
    this.set(ChannelRegister.DOORBELL, 0);
    return packets;
  }
}
