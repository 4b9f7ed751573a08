/**
 * The host's partition bus (T-20, docs/bus.md): channels between a guest and the host, and
 * between two guests through the host. Each VM with channels has one CHANNEL device
 * (devices/channel.ts); this bus is its listener. A channel is two ends: the client end (a VM
 * slot offering BLOCK or ECHO) and either a second VM's slot (BLOCK_SERVER), linked and relayed
 * by the bus, or the `echo` service inside the host.
 *
 * The bus maps a grant explicitly (map, by handle) when the guest opens a slot, and reads and
 * writes the rings only through the VM's memory API (readPhysical/writePhysical). It trusts
 * nothing in a ring: every offset and length the guest wrote is checked before it is used, and a
 * violation FAILS that end's channel (the peer's slot is RESCINDED) with a reason in the
 * channel's failures and the log; the host and the other channels carry on.
 *
 * Work is driven by doorbells: a doorbell on either end moves every packet that fits, both
 * ways, inside the guest's MMIO store, so nothing polls. A packet that does not fit the
 * receiving ring stays in the sender's ring (the bus sets pending_send_size on the receiving
 * ring); the receiver's doorbell after it frees space moves it on. A sender that set
 * pending_send_size on its send ring gets an interrupt once that much space is free.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import {
  attachChannels, CHANNEL_MAX_GRANT_PAGES, ChannelService, ChannelState, CHANNEL_STATE_NAMES, type ChannelDevice, type ChannelListener,
  type ChannelServiceId,
} from '../../devices/channel.ts';
import { PageWaitError, type Hypervisor, type Vm } from '../../kernel/index.ts';

/** A refused bus operation (bad channel config, unknown channel, a grant that cannot be mapped). */
export class BusError extends BvError {
  constructor(code: 'BV_BUS_CONFIG' | 'BV_BUS_UNKNOWN' | 'BV_BUS_MAP', message: string) {
    super(code, message);
  }
}

/** Ring header fields (byte offsets in the header page). */
export const RingHeader = {
  /** Producer's byte offset into the data area. */
  WRITE_OFFSET: 0,
  /** Consumer's byte offset. */
  READ_OFFSET: 4,
  /** Consumer: 1 = do not signal me. */
  INTERRUPT_MASK: 8,
  /** Producer: bytes it waits for when the ring is full (0 = none). */
  PENDING_SEND_SIZE: 12,
  /** 0. */
  FEATURE_BITS: 16,
} as const;

/** Bytes of a packet header (type, offset8, len8, flags, transaction id). */
export const PACKET_HEADER_BYTES = 16;
/** The version strings the config accepts, and their values: "2.0" → 0x00020000. */
export function parseVersion(text: string): number {
  const match = /^(\d{1,5})\.(\d{1,5})$/.exec(text);
  if (!match || Number(match[1]) > 0xffff || Number(match[2]) > 0xffff) throw new BusError('BV_BUS_CONFIG', `a version is "major.minor" (0 … 65535 each), got ${JSON.stringify(text)}`);
  return ((Number(match[1]) << 16) | Number(match[2])) >>> 0;
}
/** "2.0" from 0x00020000. */
export function formatVersion(version: number): string {
  return `${version >>> 16}.${version & 0xffff}`;
}

/** One channel as the host configures it. */
export interface BusChannelConfig {
  /** Unique name (the API's {name}). */
  name: string;
  /** 'echo': the client's packets come back; 'block': a client VM and a serving VM. */
  service: 'echo' | 'block';
  /** The client VM's name (slot service BLOCK or ECHO). */
  client: string;
  /** The serving VM's name (slot service BLOCK_SERVER), or 'echo' for the host's echo service. */
  server: string;
  /** Versions the host accepts, newest first (default ["2.0", "1.0"]). */
  versions?: readonly string[];
  /** Most pages a grant opened on this channel may have, both rings (default and maximum 64). */
  ringPages?: number;
  /**
   * The end with this role lives in another thread's bus (a VM in another worker group): this
   * bus relays to it through `link` (BusLinkMessage; the other bus has the same channel with the
   * other role remote). Service 'block' only.
   */
  remote?: BusRemoteEnd;
}

/** The end of a channel that lives in another thread's bus (BusChannelConfig.remote). */
export interface BusRemoteEnd {
  /** Its role. */
  role: 'client' | 'server';
  /** How to reach the bus that holds it. */
  link: BusLink;
}

/**
 * How a bus reaches the bus of another thread for one channel (a MessagePort, or a relay
 * through the main thread): messages must arrive in the order posted.
 */
export interface BusLink {
  /** Delivers `message` to the other bus's `receive`. */
  post(message: BusLinkMessage): void;
}

/** Whole packets, back to back, taken from the sender's send ring against credit. */
export interface BusPacketsMessage {
  /** 'packets'. */
  kind: 'packets';
  /** The channel's name. */
  channel: string;
  /** The epoch of the credit they were sent against (of the receiving ring). */
  epoch: number;
  /** Packets in `bytes`. */
  count: number;
  /** The packets. */
  bytes: Uint8Array;
}

/** The receiving bus grants `bytes` more of its guest's receive ring. */
export interface BusCreditMessage {
  /** 'credit'. */
  kind: 'credit';
  /** The channel's name. */
  channel: string;
  /** The receive ring's epoch (a new one each time the guest opens it). */
  epoch: number;
  /** Bytes granted. */
  bytes: number;
  /** The receive ring's data size (a larger packet can never be sent). */
  ringBytes: number;
}

/** The other end's guest closed its rings (its credit is void), rescinded it (with a reason), or agreed a major. */
export interface BusControlMessage {
  /** 'closed', 'rescind' or 'major'. */
  kind: 'closed' | 'rescind' | 'major';
  /** The channel's name. */
  channel: string;
  /** 'rescind': why. */
  reason?: string;
  /** 'major': the client's agreed major (the server's SERVICE bits 31-16). */
  major?: number;
}

/**
 * What two buses tell each other about a channel whose ends live in different threads. Packets
 * flow only against credit: the receiving side grants the free space of its guest's receive ring
 * (tagged with an epoch that changes each time its guest opens the ring), so every packet sent
 * fits when it arrives; packets of a stale epoch (the ring was closed meanwhile) are dropped.
 */
export type BusLinkMessage = BusPacketsMessage | BusCreditMessage | BusControlMessage;

/** Counters of one end (guest ↔ host). */
export interface BusEndCounters {
  /** Packets the bus took from the guest's send ring. */
  packetsFromGuest: number;
  /** Their bytes (whole packets, headers included). */
  bytesFromGuest: number;
  /** Packets the bus put in the guest's receive ring. */
  packetsToGuest: number;
  /** Their bytes. */
  bytesToGuest: number;
  /** Doorbells the guest rang. */
  doorbells: number;
  /** Interrupts the bus raised on the guest's slot. */
  interrupts: number;
  /** Times a packet for this guest waited because its receive ring was full. */
  ringFullWaits: number;
  /** Packets from another thread dropped because the guest's ring had closed since (remote channels). */
  dropped: number;
}

/** One end of a channel as stats and the API show it. */
export interface BusEndInfo {
  /** The VM's name, or 'echo'. */
  vm: string;
  /** 'client' or 'server'. */
  role: 'client' | 'server';
  /** The slot in the VM's channel device, -1 when not offered (VM absent). */
  slot: number;
  /** The slot's state name ('empty' … 'failed'), or 'absent' without a VM. */
  state: string;
  /** The agreed version ("2.0"), null before. */
  version: string | null;
  /** Counters. */
  counters: BusEndCounters;
}

/** One failure of a channel. */
export interface BusFailure {
  /** The VM whose end failed. */
  vm: string;
  /** Why (names the field and value). */
  reason: string;
  /** Date.now(). */
  atMs: number;
}

/** A channel as GET /channels/{name} shows it. */
export interface BusChannelInfo {
  /** Its name. */
  name: string;
  /** 'echo' or 'block'. */
  service: 'echo' | 'block';
  /** Versions the host accepts, newest first. */
  versions: string[];
  /** Whether the host offers it (PUT) or has rescinded it (DELETE). */
  offered: boolean;
  /** The client end, then the server end ('echo' for the echo service). */
  ends: BusEndInfo[];
  /** Failures so far (count), and the last few. */
  failureCount: number;
  /** The last (up to) 16 failures. */
  failures: BusFailure[];
}

/** Bus-wide totals (stats). */
export interface BusTotals {
  /** Channels configured. */
  channels: number;
  /** Ends open now. */
  openEnds: number;
  /** Packets moved between rings (each counted once). */
  packets: number;
  /** Their bytes. */
  bytes: number;
  /** Ring-full waits. */
  ringFullWaits: number;
  /** Failures. */
  failures: number;
}

/** A mapped ring: its header page and data pages, and the host's own offset in it. */
interface Ring {
  vm: Vm;
  /** The header page. */
  headerGpn: number;
  /** The data pages, in ring order. */
  dataGpns: number[];
  /** Data bytes. */
  size: number;
  /**
   * The host's side of the ring, which the host keeps itself and never reads back from guest
   * memory: the read offset of a send ring (the host consumes), the write offset of a receive
   * ring (the host produces). The guest's copy of it must match, or the guest scribbled on it.
   */
  ownedOffset: number;
  /** Receive rings: the bus set pending_send_size and waits for the guest to free space. */
  waiting: boolean;
}

interface End {
  channel: Channel;
  role: 'client' | 'server';
  vmName: string;
  /** The device and slot the end lives in, null/−1 while the VM is absent. */
  device: ChannelDevice | null;
  slot: number;
  /** OPEN: the rings (mapped). */
  send: Ring | null;
  recv: Ring | null;
  /** The grant handle mapped for the rings, 0 when none. */
  mappedHandle: number;
  counters: BusEndCounters;
  /** Non-null: the end lives in another thread's bus, reached through this link. */
  link: BusLink | null;
  /**
   * A local end whose peer is remote: the epoch of its current receive ring (each open gets a
   * new one) and the bytes granted to the peer not yet arrived. A remote end: the epoch of the
   * credit this bus holds for it, the credit left, and its receive ring's data size.
   */
  epoch: number;
  granted: number;
  credit: number;
  ringBytes: number;
}

interface Channel {
  name: string;
  service: 'echo' | 'block';
  versions: number[];
  maxPages: number;
  offered: boolean;
  client: End;
  /** null: the echo service. */
  server: End | null;
  failureCount: number;
  failures: BusFailure[];
}

const MAX_FAILURES_KEPT = 16;

function newCounters(): BusEndCounters {
  return { packetsFromGuest: 0, bytesFromGuest: 0, packetsToGuest: 0, bytesToGuest: 0, doorbells: 0, interrupts: 0, ringFullWaits: 0, dropped: 0 };
}

/** Thrown inside a move to fail one end; caught by the move itself. */
class RingViolation extends Error {
  constructor(readonly end: End, reason: string) {
    super(reason);
  }
}

/** How a Bus is created. */
export interface BusOptions {
  /** Where failures are logged (default: nowhere; the host passes its log). */
  log?: (line: string) => void;
  /**
   * Called after the bus raised a guest's channel interrupt: a scheduler that sleeps while its
   * VMs wait (the host's) wakes at once, rather than at its next poll, when packets arrive from
   * another thread.
   */
  onSignal?: () => void;
}

/** The host's partition bus. */
export class Bus implements ChannelListener {
  private readonly channels = new Map<string, Channel>();
  /** The devices attached, by VM name. */
  private readonly devices = new Map<string, ChannelDevice>();
  /** Ends waiting for a ring page still on a post-copy migration source (retryLater). */
  private readonly retrying = new Set<End>();
  /** One little-endian u32 for header writes (allocated once). */
  private readonly wordView = new DataView(new ArrayBuffer(4));
  private readonly wordBytes = new Uint8Array(this.wordView.buffer);
  private readonly log: (line: string) => void;
  private readonly onSignal: (() => void) | null;
  private totalPackets = 0;
  /** The last epoch given to a mapped receive ring (remote channels). */
  private epochs = 0;
  private totalBytes = 0;

  constructor(options: BusOptions = {}) {
    this.log = options.log ?? (() => {});
    this.onSignal = options.onSignal ?? null;
  }

  // ---------------------------------------------------------------------------------------------
  // VMs

  /**
   * Gives vm a CHANNEL device with this bus as its listener, and offers it the channels that name
   * it. Call before restoring a checkpoint into vm (the restore re-links its channels).
   */
  attachVm(vm: Vm, hypervisor?: Hypervisor): ChannelDevice {
    const existing = this.devices.get(vm.name);
    if (existing?.vm === vm) throw new BusError('BV_BUS_CONFIG', `${vm.name} already has a channel device on this bus`);
    // VM names are unique among live VMs: an older device under this name belongs to a VM that is gone.
    if (existing) this.detachVm(existing.vm);
    const device = attachChannels(vm, hypervisor ? { hypervisor, listener: this } : { listener: this });
    this.devices.set(vm.name, device);
    for (const channel of this.channels.values()) this.offerEnds(channel);
    return device;
  }

  /** The VM is going away: its ends become absent, their peers are rescinded. */
  detachVm(vm: Vm): void {
    const device = this.devices.get(vm.name);
    if (!device || device.vm !== vm) return;
    this.devices.delete(vm.name);
    for (const channel of this.channels.values()) {
      for (const end of this.endsOf(channel)) {
        if (end.device !== device) continue;
        this.unmap(end);
        end.device = null;
        end.slot = -1;
        this.rescindPeer(end, `${vm.name} went away`);
      }
    }
    device.stop();
  }

  /** Whether some channel names the VM `name` (as client or server). */
  namesVm(name: string): boolean {
    for (const channel of this.channels.values()) if (channel.client.vmName === name || channel.server?.vmName === name) return true;
    return false;
  }

  /** The device attached for the VM named `name`, if any. */
  deviceOf(name: string): ChannelDevice | undefined {
    return this.devices.get(name);
  }

  // ---------------------------------------------------------------------------------------------
  // Channels

  /** Adds a channel (checked) and offers it to whichever of its VMs are attached. */
  addChannel(config: BusChannelConfig): BusChannelInfo {
    const channel = this.build(config);
    this.channels.set(channel.name, channel);
    this.offerEnds(channel);
    return this.info(channel.name);
  }

  /** Checks a channel config without adding it (BusError naming the field). */
  checkConfig(config: BusChannelConfig): void {
    this.build(config);
  }

  private build(config: BusChannelConfig): Channel {
    const where = `channel ${JSON.stringify(config?.name)}`;
    if (typeof config !== 'object' || config === null) throw new BusError('BV_BUS_CONFIG', 'a channel is an object');
    if (typeof config.name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(config.name)) throw new BusError('BV_BUS_CONFIG', `${where}: name must be 1 … 64 of A-Z a-z 0-9 _ . -`);
    if (this.channels.has(config.name)) throw new BusError('BV_BUS_CONFIG', `${where} already exists`);
    if (config.service !== 'echo' && config.service !== 'block') throw new BusError('BV_BUS_CONFIG', `${where}: service must be "echo" or "block"`);
    if (typeof config.client !== 'string' || config.client === '' || config.client === 'echo') throw new BusError('BV_BUS_CONFIG', `${where}: client must name a VM`);
    if (typeof config.server !== 'string' || config.server === '') throw new BusError('BV_BUS_CONFIG', `${where}: server must name a VM or be "echo"`);
    if ((config.service === 'echo') !== (config.server === 'echo')) throw new BusError('BV_BUS_CONFIG', `${where}: service "echo" goes with server "echo", service "block" with a serving VM`);
    if (config.server === config.client) throw new BusError('BV_BUS_CONFIG', `${where}: client and server are the same VM`);
    const versionTexts = config.versions ?? ['2.0', '1.0'];
    if (!Array.isArray(versionTexts) || versionTexts.length < 1 || versionTexts.length > 16) throw new BusError('BV_BUS_CONFIG', `${where}: versions must list 1 … 16 versions`);
    const versions = versionTexts.map((text) => parseVersion(text));
    if (new Set(versions).size !== versions.length) throw new BusError('BV_BUS_CONFIG', `${where}: versions repeat`);
    const maxPages = config.ringPages ?? CHANNEL_MAX_GRANT_PAGES;
    if (!Number.isInteger(maxPages) || maxPages < 4 || maxPages > CHANNEL_MAX_GRANT_PAGES) throw new BusError('BV_BUS_CONFIG', `${where}: ring_pages must be 4 … ${CHANNEL_MAX_GRANT_PAGES}`);
    const channel: Channel = {
      name: config.name, service: config.service, versions, maxPages, offered: true, failureCount: 0, failures: [],
      client: null as unknown as End, server: null,
    };
    channel.client = this.newEnd(channel, 'client', config.client);
    if (config.service === 'block') channel.server = this.newEnd(channel, 'server', config.server);
    if (config.remote !== undefined) {
      const { role, link } = config.remote;
      if (config.service !== 'block' || (role !== 'client' && role !== 'server') || typeof link?.post !== 'function') {
        throw new BusError('BV_BUS_CONFIG', `${where}: remote needs service "block", a role (client or server) and a link`);
      }
      (role === 'client' ? channel.client : channel.server!).link = link;
    }
    return channel;
  }

  /** Offers a channel again after a rescind (PUT /channels/{name} on an existing one). */
  offer(name: string): BusChannelInfo {
    const channel = this.get(name);
    channel.offered = true;
    this.offerEnds(channel);
    return this.info(name);
  }

  /** Withdraws a channel: both ends RESCINDED at once (in use or not); the guests acknowledge with CLOSE. */
  rescind(name: string): BusChannelInfo {
    const channel = this.get(name);
    channel.offered = false;
    for (const end of this.endsOf(channel)) {
      if (end.link) end.link.post({ kind: 'rescind', channel: name, reason: 'rescinded by the host' });
      else if (end.device) end.device.rescind(end.slot, 'rescinded by the host');
    }
    return this.info(name);
  }

  /** Rescinds a channel and forgets it (slots still RESCINDED are cleared when the guest acknowledges). */
  removeChannel(name: string): void {
    this.rescind(name);
    const channel = this.get(name);
    for (const end of this.endsOf(channel)) {
      if (end.device && end.device.slot(end.slot).state === ChannelState.EMPTY) end.device = null;
    }
    this.channels.delete(name);
  }

  /** Whether a channel of that name exists. */
  has(name: string): boolean {
    return this.channels.has(name);
  }

  /** Every channel's name. */
  names(): string[] {
    return [...this.channels.keys()];
  }

  /** A channel's ends, states, versions and counters. */
  info(name: string): BusChannelInfo {
    const channel = this.get(name);
    const ends: BusEndInfo[] = this.endsOf(channel).map((end) => {
      const slot = end.device && end.slot >= 0 ? end.device.slot(end.slot) : null;
      return {
        vm: end.vmName, role: end.role, slot: end.device ? end.slot : -1,
        state: end.link ? 'remote' : slot ? CHANNEL_STATE_NAMES[slot.state] : 'absent',
        version: slot && slot.agreed !== 0 ? formatVersion(slot.agreed) : null,
        counters: { ...end.counters },
      };
    });
    if (!channel.server) ends.push({ vm: 'echo', role: 'server', slot: -1, state: 'open', version: null, counters: newCounters() });
    return {
      name: channel.name, service: channel.service, versions: channel.versions.map(formatVersion), offered: channel.offered, ends,
      failureCount: channel.failureCount, failures: channel.failures.map((f) => ({ ...f })),
    };
  }

  /** Totals over every channel. */
  totals(): BusTotals {
    let openEnds = 0, ringFullWaits = 0, failures = 0;
    for (const channel of this.channels.values()) {
      failures += channel.failureCount;
      for (const end of this.endsOf(channel)) {
        if (end.send) openEnds++;
        ringFullWaits += end.counters.ringFullWaits;
      }
    }
    return { channels: this.channels.size, openEnds, packets: this.totalPackets, bytes: this.totalBytes, ringFullWaits, failures };
  }

  /**
   * Maps grant `handle` of vm for the host: the guest pages it lists. The bus maps a grant only
   * through this, and only while the guest has not revoked it (BusError otherwise).
   */
  map(vm: Vm, handle: number): number[] {
    const device = this.devices.get(vm.name);
    const gpns = device && device.vm === vm ? device.grantPages(handle) : null;
    if (!gpns) throw new BusError('BV_BUS_MAP', `${vm.name} has no grant ${handle} (never granted, or revoked)`);
    return gpns;
  }

  // ---------------------------------------------------------------------------------------------
  // ChannelListener (called from inside guests' MMIO stores)

  /** @internal */
  negotiated(device: ChannelDevice, slot: number): void {
    const end = this.endAt(device, slot);
    if (!end || end.role !== 'client' || !end.channel.server) return;
    const server = end.channel.server;
    const major = device.slot(slot).agreed >>> 16;
    if (server.link) server.link.post({ kind: 'major', channel: end.channel.name, major });
    else if (server.device) server.device.setPeerMajor(server.slot, major);
  }

  /** @internal */
  opened(device: ChannelDevice, slot: number): void {
    const end = this.endAt(device, slot);
    if (!end) {
      device.fail(slot, 'the host has no channel on this slot');
      return;
    }
    try {
      if (this.mapRings(end)) this.pump(end.channel);
    } catch (error) {
      if (!(error instanceof PageWaitError)) throw error;
      this.retryLater(end);
    }
  }

  /** @internal */
  closed(device: ChannelDevice, slot: number, reason: string): void {
    const end = this.endAt(device, slot);
    if (!end) return;
    this.unmap(end);
    end.granted = 0;
    const state = device.slot(slot).state;
    if (state === ChannelState.FAILED) {
      this.recordFailure(end, reason);
      this.rescindPeer(end, `the peer ${end.vmName} failed: ${reason}`);
    } else {
      const peer = this.peerOf(end);
      if (peer?.link) peer.link.post({ kind: 'closed', channel: end.channel.name });
    }
  }

  /** @internal */
  doorbell(device: ChannelDevice, slot: number): void {
    const end = this.endAt(device, slot);
    if (!end) return;
    end.counters.doorbells++;
    try {
      this.pump(end.channel);
    } catch (error) {
      if (!(error instanceof PageWaitError)) throw error;
      this.retryLater(end);
    }
  }

  /** @internal */
  released(device: ChannelDevice, slot: number, tag: string): void {
    const channel = this.channels.get(tag);
    if (!channel) return;
    const end = this.endsOf(channel).find((e) => e.device === device && e.slot === slot);
    if (end) {
      end.device = null;
      end.slot = -1;
    }
    // The guest acknowledged: a channel the host still offers (or offers anew under this name) is offered again on a free slot.
    if (channel.offered) this.offerEnds(channel);
  }

  /** @internal */
  restored(device: ChannelDevice): void {
    // The device's slots were replaced wholesale: forget what this device held, then bind its
    // restored slots by their tags and re-map the open ones.
    for (const channel of this.channels.values()) {
      for (const end of this.endsOf(channel)) {
        if (end.device !== device) continue;
        end.send = end.recv = null;
        end.mappedHandle = 0;
        end.device = null;
        end.slot = -1;
      }
    }
    const toPump = new Set<Channel>();
    for (let slot = 0; slot < 8; slot++) {
      const view = device.slot(slot);
      if (!view.offer) continue;
      const channel = this.channels.get(view.offer.tag);
      const role = view.offer.service === ChannelService.BLOCK_SERVER ? 'server' : 'client';
      const end = channel ? (role === 'server' ? channel.server : channel.client) : null;
      if (!channel || !end || end.vmName !== device.vm.name || this.serviceOf(end) !== view.offer.service) {
        // Not this host's channel, or a fork child whose name differs: its parent keeps the end.
        if (view.state === ChannelState.RESCINDED || view.state === ChannelState.FAILED) continue;
        if (end && end.vmName !== device.vm.name) device.clear(slot);
        else device.rescind(slot, `this host has no channel ${JSON.stringify(view.offer.tag)}`);
        continue;
      }
      if (end.device && end.device !== device) {
        // A restore under the same name takes the end over from the VM it replaces.
        const old = end.device;
        const oldSlot = end.slot;
        this.unmap(end);
        end.device = null;
        if (old.slot(oldSlot).state !== ChannelState.EMPTY) old.clear(oldSlot);
      }
      end.device = device;
      end.slot = slot;
      if (view.state !== ChannelState.OPEN) continue;
      try {
        if (this.mapRings(end)) toPump.add(channel);
      } catch (error) {
        // A ring header still on a post-copy source (asked for by the read): mapped once it is here.
        if (!(error instanceof PageWaitError)) throw error;
        this.retryLater(end);
      }
    }
    for (const channel of this.channels.values()) this.offerEnds(channel);
    for (const channel of toPump) {
      try {
        this.pump(channel);
      } catch (error) {
        if (error instanceof PageWaitError) {
          for (const end of this.endsOf(channel)) if (end.device === device) this.retryLater(end);
          continue;
        }
        // A ring page nobody can produce (poisoned…): that channel fails, the restore goes on.
        for (const end of this.endsOf(channel)) if (end.device === device) this.failEnd(end, `host error after the restore: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Internals

  private get(name: string): Channel {
    const channel = this.channels.get(name);
    if (!channel) throw new BusError('BV_BUS_UNKNOWN', `no channel ${JSON.stringify(name)}`);
    return channel;
  }

  private newEnd(channel: Channel, role: 'client' | 'server', vmName: string): End {
    return { channel, role, vmName, device: null, slot: -1, send: null, recv: null, mappedHandle: 0, counters: newCounters(), link: null, epoch: 0, granted: 0, credit: 0, ringBytes: 0 };
  }

  private endsOf(channel: Channel): End[] {
    return channel.server ? [channel.client, channel.server] : [channel.client];
  }

  private peerOf(end: End): End | null {
    const channel = end.channel;
    if (!channel.server) return null;
    return end === channel.client ? channel.server : channel.client;
  }

  private serviceOf(end: End): ChannelServiceId {
    if (end.channel.service === 'echo') return ChannelService.ECHO;
    return end.role === 'client' ? ChannelService.BLOCK : ChannelService.BLOCK_SERVER;
  }

  private endAt(device: ChannelDevice, slot: number): End | null {
    const tag = device.slot(slot).offer?.tag;
    const channel = tag === undefined ? undefined : this.channels.get(tag);
    if (!channel) return null;
    return this.endsOf(channel).find((end) => end.device === device && end.slot === slot) ?? null;
  }

  /** Offers the channel on a free slot of each attached VM that does not hold it yet. */
  private offerEnds(channel: Channel): void {
    if (!channel.offered) return;
    for (const end of this.endsOf(channel)) {
      if (end.device || end.link) continue;
      const device = this.devices.get(end.vmName);
      if (!device || device.slotOf(channel.name) >= 0) continue;
      const slot = device.freeSlot();
      if (slot < 0) {
        this.log(`bus: ${end.vmName} has no free channel slot for ${channel.name}`);
        continue;
      }
      end.device = device;
      end.slot = slot;
      device.offer(slot, { service: this.serviceOf(end), versions: channel.versions, tag: channel.name, maxPages: channel.maxPages });
      if (end.role === 'server') {
        const client = channel.client;
        const agreed = client.device ? client.device.slot(client.slot).agreed : 0;
        if (agreed !== 0) device.setPeerMajor(slot, agreed >>> 16);
      }
    }
  }

  /** Maps the open end's grant and sets up its two rings; false (and the end FAILED) if the headers are bad. */
  private mapRings(end: End): boolean {
    const device = end.device!;
    const view = device.slot(end.slot);
    const vm = device.vm;
    const gpns = this.map(vm, view.openHandle);
    end.mappedHandle = view.openHandle;
    const send = this.newRing(vm, gpns.slice(0, view.sendPages));
    const recv = this.newRing(vm, gpns.slice(view.sendPages));
    try {
      // The host's own offsets start where the guest left them (0 on a fresh ring, the saved
      // position after a restore); each must be a valid offset.
      send.ownedOffset = this.checkedOffset(end, send, RingHeader.READ_OFFSET, 'send ring read_offset');
      recv.ownedOffset = this.checkedOffset(end, recv, RingHeader.WRITE_OFFSET, 'receive ring write_offset');
      this.checkedOffset(end, send, RingHeader.WRITE_OFFSET, 'send ring write_offset');
      this.checkedOffset(end, recv, RingHeader.READ_OFFSET, 'receive ring read_offset');
      recv.waiting = this.readHeader(recv, RingHeader.PENDING_SEND_SIZE) !== 0;
    } catch (error) {
      if (!(error instanceof RingViolation)) throw error;
      this.failEnd(end, error.message);
      return false;
    }
    end.send = send;
    end.recv = recv;
    // A new receive ring: credit granted to a remote sender for an older one is void.
    end.epoch = ++this.epochs;
    end.granted = 0;
    return true;
  }

  /**
   * A ring page of the end's VM is still on a post-copy migration source (PageWaitError: the
   * access asked for it). Nothing moved (a move changes the offsets only after its copies, and the
   * headers it updates were read when the rings were mapped), so the end is mapped if it is not
   * yet and its channel pumped again shortly, until the page is here; meanwhile a doorbell moves
   * nothing. Gives up silently once the end is no longer this device's open slot.
   */
  private retryLater(end: End): void {
    if (this.retrying.has(end)) return;
    this.retrying.add(end);
    const device = end.device;
    const slot = end.slot;
    setTimeout(() => {
      this.retrying.delete(end);
      if (!device || end.device !== device || end.slot !== slot || this.devices.get(end.vmName) !== device) return;
      if (device.slot(slot).state !== ChannelState.OPEN) return;
      try {
        if (end.send === null && !this.mapRings(end)) return;
        this.pump(end.channel);
      } catch (error) {
        if (error instanceof PageWaitError) this.retryLater(end);
        else this.failEnd(end, `host error: ${error instanceof Error ? error.message : String(error)}`);
      }
    }, 1).unref();
  }

  private newRing(vm: Vm, gpns: number[]): Ring {
    return { vm, headerGpn: gpns[0]!, dataGpns: gpns.slice(1), size: (gpns.length - 1) * PAGE_SIZE, ownedOffset: 0, waiting: false };
  }

  private unmap(end: End): void {
    end.send = end.recv = null;
    end.mappedHandle = 0;
  }

  private failEnd(end: End, reason: string): void {
    if (end.device) end.device.fail(end.slot, reason); // → closed(): unmaps, records, rescinds the peer
  }

  private recordFailure(end: End, reason: string): void {
    const channel = end.channel;
    channel.failureCount++;
    channel.failures.push({ vm: end.vmName, reason, atMs: Date.now() });
    if (channel.failures.length > MAX_FAILURES_KEPT) channel.failures.shift();
    this.log(`bus: channel ${channel.name}: ${end.vmName} FAILED: ${reason}`);
  }

  /** Moves what can move, both ways (echo: the client's send ring into its own receive ring). */
  private pump(channel: Channel): void {
    const client = channel.client;
    if (!channel.server) {
      if (client.send) this.move(client, client);
      return;
    }
    const server = channel.server;
    const remote = client.link ? client : server.link ? server : null;
    if (remote) {
      const local = remote === client ? server : client;
      if (!local.send) return;
      this.forward(local, remote);
      if (local.recv) this.grantCredit(local, remote);
      return;
    }
    // Repeat while something moved: a packet one way may free space the other way needs.
    for (let round = 0; round < 4; round++) {
      if (!client.send || !server.send) return;
      const moved = this.move(client, server) + this.move(server, client);
      if (moved === 0) return;
    }
  }

  /**
   * Moves packets from src's send ring to dst's receive ring until the first that does not fit.
   * Returns the packets moved. A ring violation fails the end whose ring it is.
   */
  private move(src: End, dst: End): number {
    const from = src.send!;
    const to = dst.recv!;
    let moved = 0;
    let movedBytes = 0;
    try {
      const srcWrite = this.sendRingWrite(src, from);
      const dstRead = this.receiveRingRead(dst, to);
      let srcRead = from.ownedOffset;
      let dstWrite = to.ownedOffset;
      for (;;) {
        const used = (srcWrite - srcRead + from.size) % from.size;
        if (used === 0) break;
        const length = this.packetLength(src, from, srcRead, used, to.size);
        const free = to.size - 8 - ((dstWrite - dstRead + to.size) % to.size);
        if (length > free) {
          // Full: the packet stays; the receiver's doorbell after it frees space moves it on.
          if (!to.waiting) {
            to.waiting = true;
            dst.counters.ringFullWaits++;
            this.writeHeader(to, RingHeader.PENDING_SEND_SIZE, length);
          }
          break;
        }
        this.copyRing(from, srcRead, to, dstWrite, length);
        srcRead = (srcRead + length) % from.size;
        dstWrite = (dstWrite + length) % to.size;
        moved++;
        movedBytes += length;
      }
      if (moved === 0) return 0;
      from.ownedOffset = srcRead;
      to.ownedOffset = dstWrite;
      this.writeHeader(to, RingHeader.WRITE_OFFSET, dstWrite);
      this.writeHeader(from, RingHeader.READ_OFFSET, srcRead);
      if (to.waiting) {
        to.waiting = false;
        this.writeHeader(to, RingHeader.PENDING_SEND_SIZE, 0);
      }
      this.countMoved(src, dst, moved, movedBytes);
      // Tell the receiver unless it polls; tell the sender if it waits for the space just freed.
      if ((this.readHeader(to, RingHeader.INTERRUPT_MASK) & 1) === 0) this.signal(dst);
      this.signalFreedSpace(src, from, srcWrite);
      return moved;
    } catch (error) {
      if (!(error instanceof RingViolation)) throw error;
      this.failEnd(error.end, error.message);
      return 0;
    }
  }

  /** The producer's write_offset of a send ring, checked, and the host's read_offset unchanged. */
  private sendRingWrite(src: End, from: Ring): number {
    const srcWrite = this.checkedOffset(src, from, RingHeader.WRITE_OFFSET, 'send ring write_offset');
    const read = this.readHeader(from, RingHeader.READ_OFFSET);
    if (read !== from.ownedOffset) throw new RingViolation(src, `send ring read_offset is the host's, the guest changed it (to ${read})`);
    return srcWrite;
  }

  /** The consumer's read_offset of a receive ring, checked, and the host's write_offset unchanged. */
  private receiveRingRead(dst: End, to: Ring): number {
    const dstRead = this.checkedOffset(dst, to, RingHeader.READ_OFFSET, 'receive ring read_offset');
    const write = this.readHeader(to, RingHeader.WRITE_OFFSET);
    if (write !== to.ownedOffset) throw new RingViolation(dst, `receive ring write_offset is the host's, the guest changed it (to ${write})`);
    return dstRead;
  }

  /** The length of the packet at `at` in a send ring holding `used` bytes from there, checked; `limit`: the receiving ring's data size. */
  private packetLength(src: End, from: Ring, at: number, used: number, limit: number): number {
    if (used < PACKET_HEADER_BYTES) throw new RingViolation(src, `send ring holds ${used} bytes, less than a packet header`);
    // Offsets are multiples of 8, so a packet's first 8 bytes never cross a page or the ring's end.
    const first = from.vm.memory.pageBytes(from.dataGpns[at >>> 12]!);
    const inPage = at & (PAGE_SIZE - 1);
    const offset8 = first[inPage + 2]! | (first[inPage + 3]! << 8);
    const len8 = first[inPage + 4]! | (first[inPage + 5]! << 8);
    const length = len8 * 8;
    if (len8 < 2 || offset8 < 2 || offset8 > len8) throw new RingViolation(src, `packet at ${at}: len8 ${len8}, offset8 ${offset8} (need len8 ≥ 2, 2 ≤ offset8 ≤ len8)`);
    if (length > used) throw new RingViolation(src, `packet at ${at}: ${length} bytes, but only ${used} are written`);
    if (length > limit - 8) throw new RingViolation(src, `packet at ${at}: ${length} bytes never fit the ${limit}-byte receiving ring`);
    return length;
  }

  /** After the host consumed from src's send ring: signal src if it waits (pending_send_size) for space that is now free. */
  private signalFreedSpace(src: End, from: Ring, srcWrite: number): void {
    const pending = this.readHeader(from, RingHeader.PENDING_SEND_SIZE);
    if (pending === 0) return;
    if (pending > from.size - 8) throw new RingViolation(src, `send ring pending_send_size ${pending} exceeds the ring (${from.size - 8} bytes usable)`);
    const free = from.size - 8 - ((srcWrite - from.ownedOffset + from.size) % from.size);
    if (free >= pending) this.signal(src);
  }

  // ---------------------------------------------------------------------------------------------
  // Channels whose other end lives in another thread's bus

  /**
   * A message from the bus of the thread that holds the other end of a channel (BusLink). Unknown
   * channels are ignored (the channel was removed here meanwhile).
   */
  receive(message: BusLinkMessage): void {
    const channel = this.channels.get(message.channel);
    const remote = channel ? this.endsOf(channel).find((end) => end.link !== null) : undefined;
    if (!channel || !remote) return;
    const local = this.peerOf(remote)!;
    switch (message.kind) {
      case 'packets':
        this.deliver(local, message.epoch, message.count, message.bytes);
        break;
      case 'credit':
        // A new epoch: the other guest opened a new receive ring; credit for an older one is void.
        if (message.epoch > remote.epoch) {
          remote.epoch = message.epoch;
          remote.credit = 0;
        }
        if (message.epoch === remote.epoch) {
          remote.credit += message.bytes;
          remote.ringBytes = message.ringBytes;
        }
        if (local.send) this.forward(local, remote);
        break;
      case 'closed':
        remote.credit = 0;
        break;
      case 'rescind':
        if (local.device) local.device.rescind(local.slot, message.reason ?? 'rescinded');
        break;
      case 'major':
        if (local.device && local.role === 'server') local.device.setPeerMajor(local.slot, message.major ?? 0);
        break;
    }
  }

  /** Rescinds the peer of `end`: its slot here, or through the link in the other thread. */
  private rescindPeer(end: End, reason: string): void {
    const peer = this.peerOf(end);
    if (!peer) return;
    if (peer.link) peer.link.post({ kind: 'rescind', channel: end.channel.name, reason });
    else if (peer.device) peer.device.rescind(peer.slot, reason);
  }

  /**
   * Sends the packets of src's send ring that the remote end has credit for, back to back in one
   * message. A packet beyond the credit stays in the ring until more credit comes.
   */
  private forward(src: End, remote: End): void {
    const from = src.send!;
    try {
      const srcWrite = this.sendRingWrite(src, from);
      let at = from.ownedOffset;
      let total = 0;
      let count = 0;
      for (;;) {
        const used = (srcWrite - at + from.size) % from.size;
        if (used === 0) break;
        const length = this.packetLength(src, from, at, used, remote.ringBytes === 0 ? from.size : remote.ringBytes);
        if (total + length > remote.credit) {
          remote.counters.ringFullWaits++;
          break;
        }
        total += length;
        count++;
        at = (at + length) % from.size;
      }
      if (count === 0) return;
      const bytes = new Uint8Array(total); // handed to postMessage: a fresh buffer per batch
      let source = from.ownedOffset;
      for (let done = 0; done < total; ) {
        const inPage = source & (PAGE_SIZE - 1);
        const chunk = Math.min(total - done, PAGE_SIZE - inPage);
        bytes.set(from.vm.memory.pageBytes(from.dataGpns[source >>> 12]!).subarray(inPage, inPage + chunk), done);
        done += chunk;
        source = (source + chunk) % from.size;
      }
      from.ownedOffset = at;
      this.writeHeader(from, RingHeader.READ_OFFSET, at);
      remote.credit -= total;
      this.countMoved(src, remote, count, total);
      remote.link!.post({ kind: 'packets', channel: src.channel.name, epoch: remote.epoch, count, bytes });
      this.signalFreedSpace(src, from, srcWrite);
    } catch (error) {
      if (!(error instanceof RingViolation)) throw error;
      this.failEnd(error.end, error.message);
    }
  }

  /** Packets from the other thread into dst's receive ring (they fit: they were sent against its credit). */
  private deliver(dst: End, epoch: number, count: number, bytes: Uint8Array): void {
    const to = dst.recv;
    if (!to || epoch !== dst.epoch) {
      dst.counters.dropped += count; // the ring they were meant for was closed meanwhile
      return;
    }
    try {
      const dstRead = this.receiveRingRead(dst, to);
      const free = to.size - 8 - ((to.ownedOffset - dstRead + to.size) % to.size);
      if (bytes.length > free) throw new RingViolation(dst, `receive ring read_offset moved back: ${free} bytes free of the ${dst.granted} granted`);
      let target = to.ownedOffset;
      for (let done = 0; done < bytes.length; ) {
        const inPage = target & (PAGE_SIZE - 1);
        const chunk = Math.min(bytes.length - done, PAGE_SIZE - inPage);
        to.vm.memory.writePhysical(to.dataGpns[target >>> 12]! * PAGE_SIZE + inPage, bytes.subarray(done, done + chunk));
        done += chunk;
        target = (target + chunk) % to.size;
      }
      to.ownedOffset = target;
      this.writeHeader(to, RingHeader.WRITE_OFFSET, target);
      dst.granted -= bytes.length;
      dst.counters.packetsToGuest += count;
      dst.counters.bytesToGuest += bytes.length;
      if ((this.readHeader(to, RingHeader.INTERRUPT_MASK) & 1) === 0) this.signal(dst);
    } catch (error) {
      if (!(error instanceof RingViolation)) throw error;
      this.failEnd(error.end, error.message);
    }
  }

  /** Grants the remote sender the free space of dst's receive ring not granted yet. */
  private grantCredit(dst: End, remote: End): void {
    const to = dst.recv;
    if (!to) return;
    try {
      const dstRead = this.receiveRingRead(dst, to);
      const free = to.size - 8 - ((to.ownedOffset - dstRead + to.size) % to.size);
      const more = free - dst.granted;
      if (more <= 0) return;
      dst.granted += more;
      remote.link!.post({ kind: 'credit', channel: dst.channel.name, epoch: dst.epoch, bytes: more, ringBytes: to.size });
    } catch (error) {
      if (!(error instanceof RingViolation)) throw error;
      this.failEnd(error.end, error.message);
    }
  }

  /** Counts packets taken from src's guest and given to dst (a guest, or a remote end). */
  private countMoved(src: End, dst: End, packets: number, bytes: number): void {
    src.counters.packetsFromGuest += packets;
    src.counters.bytesFromGuest += bytes;
    dst.counters.packetsToGuest += packets;
    dst.counters.bytesToGuest += bytes;
    this.totalPackets += packets;
    this.totalBytes += bytes;
  }

  private signal(end: End): void {
    if (!end.device) return;
    end.counters.interrupts++;
    end.device.raise(end.slot);
    this.onSignal?.();
  }

  /** A header offset field, checked: a multiple of 8 inside the data area. */
  private checkedOffset(end: End, ring: Ring, field: number, name: string): number {
    const value = this.readHeader(ring, field);
    if (value % 8 !== 0 || value >= ring.size) throw new RingViolation(end, `${name} ${value} is not a multiple of 8 below ${ring.size}`);
    return value;
  }

  private readHeader(ring: Ring, field: number): number {
    // A read-only view of the header page (no copy); fields never cross the page.
    const page = ring.vm.memory.pageBytes(ring.headerGpn);
    return (page[field]! | (page[field + 1]! << 8) | (page[field + 2]! << 16) | (page[field + 3]! << 24)) >>> 0;
  }

  private writeHeader(ring: Ring, field: number, value: number): void {
    this.wordView.setUint32(0, value, true);
    ring.vm.memory.writePhysical(ring.headerGpn * PAGE_SIZE + field, this.wordBytes);
  }

  /**
   * Copies `length` bytes from ring `from` at offset `fromAt` to ring `to` at `toAt`, both
   * wrapping: one copy per piece, from a read-only view of the source page (taken just before
   * its copy) through writePhysical (copy-on-write, traces and epochs like a guest store).
   */
  private copyRing(from: Ring, fromAt: number, to: Ring, toAt: number, length: number): void {
    let source = fromAt;
    let target = toAt;
    for (let done = 0; done < length; ) {
      const sourceIn = source & (PAGE_SIZE - 1);
      const targetIn = target & (PAGE_SIZE - 1);
      const chunk = Math.min(length - done, PAGE_SIZE - sourceIn, PAGE_SIZE - targetIn);
      const page = from.vm.memory.pageBytes(from.dataGpns[source >>> 12]!);
      to.vm.memory.writePhysical(to.dataGpns[target >>> 12]! * PAGE_SIZE + targetIn, page.subarray(sourceIn, sourceIn + chunk));
      done += chunk;
      source = (source + chunk) % from.size;
      target = (target + chunk) % to.size;
    }
  }
}
