/**
 * The CHANNEL device (device type 9, docs/bus.md; T-20): the guest's end of the partition bus.
 * One window per VM, eight slots; the host's bus (services/bus) offers a service on a slot, the
 * guest negotiates a version, grants the pages of two rings by a page-list handle, opens the
 * channel and rings doorbells. This file holds the guest-visible state machine and the grants;
 * what happens on OPEN, DOORBELL and the rest is the listener's (the bus's) business.
 *
 * Everything the guest writes is checked here (a page list's count, alignment, RAM, duplicates)
 * and refused with a RESULT code; nothing the guest does stops the VM. The 'channel' state
 * component saves slots, grants and agreed versions, so a checkpoint, fork or migration keeps
 * them; the rings themselves are ordinary guest memory, and the bus re-maps and re-links an open
 * channel when the listener hears `restored`.
 */
import { DeviceType, PAGE_SIZE } from '../guest-isa/arch.ts';
import { PageWaitError, type Hypervisor, type MmioDevice, type Vcpu, type Vm } from '../kernel/index.ts';
import { DeviceStateError, stateInteger, stateList, stateRecord, stateU32 } from './state.ts';
import { holdWakeSource } from './wake.ts';

/** Register offsets in the channel window (docs/bus.md). SLOT = the slot SELECT names. */
export const ChannelRegister = {
  /** rw: the slot the per-slot registers refer to. */
  SELECT: 0x00,
  /** r / write-1-to-clear: bit i = slot i has an event. */
  IRQ_STATUS: 0x04,
  /** rw: bit 0 = assert the device's line while IRQ_STATUS ≠ 0. */
  IRQ_ENABLE: 0x08,
  /** r: number of slots. */
  SLOTS: 0x0c,
  /** r: the slot's ChannelState. */
  STATE: 0x10,
  /** r: the ChannelService offered (bits 15-0); on BLOCK_SERVER, bits 31-16 = the client's agreed major. */
  SERVICE: 0x14,
  /** w: propose a version (major << 16 | minor); r: the agreed version, 0 if none. */
  VERSION: 0x18,
  /** rw: guest-physical address of a page list (GRANT). */
  GRANT_LIST: 0x1c,
  /** rw: GRANT writes the new handle; REVOKE and OPEN read it. */
  HANDLE: 0x20,
  /** rw: OPEN: the first SEND_PAGES pages of the grant are the send ring. */
  SEND_PAGES: 0x24,
  /** w: a ChannelCommand. */
  COMMAND: 0x28,
  /** r: the ChannelResult of the last COMMAND or VERSION write. */
  RESULT: 0x2c,
  /** w: any value = COMMAND DOORBELL on the selected slot. */
  DOORBELL: 0x30,
} as const;

/** Slot states (STATE register). */
export const ChannelState = {
  /** Nothing offered. */
  EMPTY: 0,
  /** The host offers a service; the guest may propose versions. */
  OFFERED: 1,
  /** A version is agreed; the guest may OPEN. */
  NEGOTIATED: 2,
  /** Rings mapped; packets flow. */
  OPEN: 3,
  /** The host withdrew the offer (or the peer failed); the guest acknowledges with CLOSE. */
  RESCINDED: 4,
  /** The channel broke (bad ring contents, a revoked grant in use); the guest acknowledges with CLOSE. */
  FAILED: 5,
} as const;
/** A ChannelState value. */
export type ChannelStateId = (typeof ChannelState)[keyof typeof ChannelState];
/** Names of the states, by value (stats, API). */
export const CHANNEL_STATE_NAMES = ['empty', 'offered', 'negotiated', 'open', 'rescinded', 'failed'] as const;

/** Services a slot can offer (SERVICE register bits 15-0). */
export const ChannelService = {
  /** The guest is a block client. */
  BLOCK: 1,
  /** The guest serves a block device. */
  BLOCK_SERVER: 2,
  /** The host returns every packet as it came. */
  ECHO: 3,
} as const;
/** A ChannelService value. */
export type ChannelServiceId = (typeof ChannelService)[keyof typeof ChannelService];

/** COMMAND values. */
export const ChannelCommand = {
  /** Record the page list at GRANT_LIST; the handle goes to HANDLE. */
  GRANT: 1,
  /** Withdraw the grant HANDLE names. */
  REVOKE: 2,
  /** Open the selected slot on grant HANDLE, SEND_PAGES pages of send ring. */
  OPEN: 3,
  /** OPEN → NEGOTIATED; RESCINDED or FAILED → EMPTY. */
  CLOSE: 4,
  /** Tell the host the send ring has data or receive-ring space was freed. */
  DOORBELL: 5,
} as const;

/** RESULT values. */
export const ChannelResult = {
  /** Done. */
  OK: 0,
  /** Not allowed in the slot's state. */
  BAD_STATE: 1,
  /** A bad page list or ring geometry. */
  BAD_LIST: 2,
  /** The host refused the proposed version. */
  NO_VERSION: 3,
  /** No such grant. */
  BAD_HANDLE: 4,
  /** The revoked grant was in use by an open channel: that channel FAILED. */
  IN_USE: 5,
  /** Too many grants, or a grant larger than the channel allows. */
  NO_RESOURCES: 6,
} as const;

/** Slots per device (SLOTS register, device-table info word). */
export const CHANNEL_SLOTS = 8;
/** Most pages one grant may list. */
export const CHANNEL_MAX_GRANT_PAGES = 64;
/** Most grants a device holds at once. */
export const CHANNEL_MAX_GRANTS = 64;

/** What the host offers on a slot (ChannelDevice.offer). */
export interface ChannelOffer {
  /** The service. */
  service: ChannelServiceId;
  /** Versions the host accepts (major << 16 | minor), any order; the guest proposes newest first. */
  versions: readonly number[];
  /** The host's name for the channel (saved with the slot, so a restore finds it again). */
  tag: string;
  /** Most pages a grant opened on this slot may have (≤ CHANNEL_MAX_GRANT_PAGES). */
  maxPages: number;
}

/** One slot, as the bus reads it (ChannelDevice.slot). */
export interface ChannelSlotView {
  /** ChannelState. */
  readonly state: ChannelStateId;
  /** The offer, null when EMPTY. */
  readonly offer: Readonly<ChannelOffer> | null;
  /** The agreed version, 0 before NEGOTIATED. */
  readonly agreed: number;
  /** OPEN: the grant handle the rings live in; 0 otherwise. */
  readonly openHandle: number;
  /** OPEN: pages of the send ring (the rest of the grant is the receive ring). */
  readonly sendPages: number;
}

/**
 * What the device tells its owner (the bus). Called from inside a guest's MMIO store: it must
 * not throw (the device catches and fails the slot if it does) and must not run guest code.
 */
export interface ChannelListener {
  /** The guest agreed a version on `slot`. */
  negotiated(device: ChannelDevice, slot: number): void;
  /** The guest opened `slot` (the grant is valid; the listener maps it and checks the rings). */
  opened(device: ChannelDevice, slot: number): void;
  /** The channel on `slot` left OPEN (CLOSE, revoke, reset): the listener stops touching its rings. */
  closed(device: ChannelDevice, slot: number, reason: string): void;
  /** The guest rang the doorbell of the open `slot`. */
  doorbell(device: ChannelDevice, slot: number): void;
  /** The guest acknowledged a RESCINDED or FAILED slot (it is EMPTY now). */
  released(device: ChannelDevice, slot: number, tag: string): void;
  /** The device's state was restored (checkpoint, fork, migration): re-map and re-link the open slots. */
  restored(device: ChannelDevice): void;
}

/** How attachChannels sets the device up. */
export interface ChannelOptions {
  /** The VM's hypervisor: the VM is a wake source while a channel is open (a peer may send). */
  hypervisor?: Hypervisor;
  /** The owner (the bus); may be set later (ChannelDevice.listener). */
  listener?: ChannelListener;
}

/** One saved grant. */
export interface ChannelGrantState {
  /** Its handle. */
  handle: number;
  /** The guest pages it lists, in order. */
  gpns: number[];
}

/** One saved slot. */
export interface ChannelSlotState {
  /** ChannelState. */
  state: number;
  /** ChannelService offered (0 when EMPTY). */
  service: number;
  /** Versions the host accepts. */
  versions: number[];
  /** The host's channel name. */
  tag: string;
  /** Most pages a grant opened on the slot may have. */
  maxPages: number;
  /** The agreed version (0 = none). */
  agreed: number;
  /** BLOCK_SERVER: the client's agreed major. */
  peerMajor: number;
  /** GRANT_LIST register. */
  grantList: number;
  /** HANDLE register. */
  handle: number;
  /** SEND_PAGES register. */
  sendPages: number;
  /** OPEN: the grant the rings live in. */
  openHandle: number;
  /** RESULT register. */
  result: number;
}

/** The saved form of the 'channel' component (version 1). */
export interface ChannelDeviceState {
  /** SELECT register. */
  select: number;
  /** IRQ_STATUS register. */
  irqStatus: number;
  /** IRQ_ENABLE register. */
  irqEnable: number;
  /** The next handle GRANT hands out. */
  nextHandle: number;
  /** Live grants. */
  grants: ChannelGrantState[];
  /** CHANNEL_SLOTS slots. */
  slots: ChannelSlotState[];
}

interface Slot {
  state: ChannelStateId;
  offer: ChannelOffer | null;
  agreed: number;
  /** BLOCK_SERVER: the client's agreed major (SERVICE bits 31-16). */
  peerMajor: number;
  grantList: number;
  handle: number;
  sendPages: number;
  openHandle: number;
  result: number;
}

function emptySlot(): Slot {
  return { state: ChannelState.EMPTY, offer: null, agreed: 0, peerMajor: 0, grantList: 0, handle: 0, sendPages: 0, openHandle: 0, result: 0 };
}

/** The CHANNEL device model (attachChannels creates and attaches it). */
export class ChannelDevice implements MmioDevice {
  /** Guest-physical base of the window. */
  base = 0;
  /** The owner told of opens, doorbells, closes (the bus). */
  listener: ChannelListener | null;
  /** The VM the device belongs to. */
  readonly vm: Vm;
  private select = 0;
  private irqStatus = 0;
  private irqEnable = 0;
  private nextHandle = 1;
  private readonly grants = new Map<number, number[]>();
  private readonly slots: Slot[] = Array.from({ length: CHANNEL_SLOTS }, emptySlot);
  private readonly interruptLine: number;
  private readonly hypervisor: Hypervisor | null;

  constructor(vm: Vm, options: ChannelOptions = {}) {
    this.vm = vm;
    this.interruptLine = vm.claimInterruptLine();
    this.hypervisor = options.hypervisor ?? null;
    this.listener = options.listener ?? null;
  }

  // ---------------------------------------------------------------------------------------------
  // The host's side (the bus)

  /** A read-only view of slot `index`. */
  slot(index: number): ChannelSlotView {
    return this.slots[index]!;
  }

  /** The first EMPTY slot, or -1. */
  freeSlot(): number {
    return this.slots.findIndex((slot) => slot.state === ChannelState.EMPTY);
  }

  /** The slot whose offer carries `tag` (any state but EMPTY), or -1. */
  slotOf(tag: string): number {
    return this.slots.findIndex((slot) => slot.offer !== null && slot.offer.tag === tag);
  }

  /** Offers a service on an EMPTY slot (the guest sees OFFERED and an event). */
  offer(index: number, offer: ChannelOffer): void {
    const slot = this.slots[index];
    if (!slot || slot.state !== ChannelState.EMPTY) throw new TypeError(`channel: slot ${index} is not empty`);
    Object.assign(slot, emptySlot(), { state: ChannelState.OFFERED, offer: { ...offer, versions: [...offer.versions] } });
    this.raise(index);
  }

  /**
   * Withdraws the offer on `index` (the host's rescind, or the peer failed): OPEN stops at once
   * (the listener hears `closed`), the guest sees RESCINDED and acknowledges with CLOSE. An EMPTY
   * slot stays EMPTY; FAILED stays FAILED.
   */
  rescind(index: number, reason: string): void {
    const state = this.slots[index]!.state;
    if (state === ChannelState.RESCINDED) return;
    this.stopSlot(index, ChannelState.RESCINDED, reason);
  }

  /** The channel on `index` FAILED (bad ring contents): the host stops touching its rings. */
  fail(index: number, reason: string): void {
    this.stopSlot(index, ChannelState.FAILED, reason);
  }

  /** RESCINDED or FAILED (an EMPTY or FAILED slot stays as it is); an open channel closes first. */
  private stopSlot(index: number, state: ChannelStateId, reason: string): void {
    const slot = this.slots[index]!;
    if (slot.state === ChannelState.EMPTY || slot.state === ChannelState.FAILED) return;
    const wasOpen = slot.state === ChannelState.OPEN;
    slot.state = state;
    slot.openHandle = 0;
    if (wasOpen) this.listener?.closed(this, index, reason);
    this.updateWakeSource();
    this.raise(index);
  }

  /** Drops a slot to EMPTY without the guest's acknowledgement (a fork child's slot whose channel lives on in the parent). */
  clear(index: number): void {
    const slot = this.slots[index]!;
    if (slot.state === ChannelState.OPEN) this.listener?.closed(this, index, 'cleared');
    Object.assign(slot, emptySlot());
    this.updateWakeSource();
    this.raise(index);
  }

  /** BLOCK_SERVER slots: publishes the client's agreed major in SERVICE bits 31-16. */
  setPeerMajor(index: number, major: number): void {
    const slot = this.slots[index]!;
    if (slot.peerMajor === major) return;
    slot.peerMajor = major & 0xffff;
    this.raise(index);
  }

  /** Sets slot `index`'s IRQ_STATUS bit (and the line if IRQ_ENABLE allows). */
  raise(index: number): void {
    this.irqStatus |= 1 << index;
    this.updateInterrupt();
  }

  /**
   * The guest pages of grant `handle` (a copy), for the bus to map; null if there is no such
   * grant (revoked or never made).
   */
  grantPages(handle: number): number[] | null {
    const gpns = this.grants.get(handle);
    return gpns ? [...gpns] : null;
  }

  /** Live grants (stats). */
  get grantCount(): number {
    return this.grants.size;
  }

  /** Device reset: grants and events go; open channels close; offers stand again as OFFERED. */
  reset(): void {
    for (let index = 0; index < CHANNEL_SLOTS; index++) {
      const slot = this.slots[index]!;
      if (slot.state === ChannelState.OPEN) this.listener?.closed(this, index, 'the VM was reset');
      const offer = slot.offer;
      Object.assign(slot, emptySlot());
      if (offer && slot.state === ChannelState.EMPTY) {
        slot.offer = offer;
        slot.state = ChannelState.OFFERED;
      }
    }
    this.grants.clear();
    this.select = 0;
    this.irqStatus = 0;
    this.irqEnable = 0;
    this.updateInterrupt();
    this.updateWakeSource();
  }

  /** Stops being a wake source (the VM is going away). */
  stop(): void {
    if (this.hypervisor) holdWakeSource(this.hypervisor, this.vm, this, false);
  }

  // ---------------------------------------------------------------------------------------------
  // The guest's side

  read(_vcpu: Vcpu, offset: number): number {
    const slot = this.slots[this.select]!;
    switch (offset) {
      case ChannelRegister.SELECT: return this.select;
      case ChannelRegister.IRQ_STATUS: return this.irqStatus;
      case ChannelRegister.IRQ_ENABLE: return this.irqEnable;
      case ChannelRegister.SLOTS: return CHANNEL_SLOTS;
      case ChannelRegister.STATE: return slot.state;
      case ChannelRegister.SERVICE:
        if (!slot.offer) return 0;
        return (slot.offer.service | (slot.offer.service === ChannelService.BLOCK_SERVER ? slot.peerMajor << 16 : 0)) >>> 0;
      case ChannelRegister.VERSION: return slot.agreed >>> 0;
      case ChannelRegister.GRANT_LIST: return slot.grantList >>> 0;
      case ChannelRegister.HANDLE: return slot.handle >>> 0;
      case ChannelRegister.SEND_PAGES: return slot.sendPages;
      case ChannelRegister.RESULT: return slot.result;
      default: return 0;
    }
  }

  write(_vcpu: Vcpu, offset: number, value: number): boolean {
    const slot = this.slots[this.select]!;
    switch (offset) {
      case ChannelRegister.SELECT:
        // Out-of-range values select nothing new: the register keeps 0 … SLOTS − 1.
        if ((value >>> 0) < CHANNEL_SLOTS) this.select = value >>> 0;
        break;
      case ChannelRegister.IRQ_STATUS:
        this.irqStatus &= ~value;
        this.updateInterrupt();
        break;
      case ChannelRegister.IRQ_ENABLE:
        this.irqEnable = value & 1;
        this.updateInterrupt();
        break;
      case ChannelRegister.VERSION:
        slot.result = this.propose(this.select, value >>> 0);
        break;
      case ChannelRegister.GRANT_LIST: slot.grantList = value >>> 0; break;
      case ChannelRegister.HANDLE: slot.handle = value >>> 0; break;
      case ChannelRegister.SEND_PAGES: slot.sendPages = value >>> 0; break;
      case ChannelRegister.COMMAND:
        slot.result = this.command(this.select, value >>> 0);
        break;
      case ChannelRegister.DOORBELL:
        slot.result = this.command(this.select, ChannelCommand.DOORBELL);
        break;
      default:
        break; // read-only and empty offsets ignore writes (§11.3)
    }
    return true;
  }

  private propose(index: number, version: number): number {
    const slot = this.slots[index]!;
    if (slot.state !== ChannelState.OFFERED || !slot.offer) return ChannelResult.BAD_STATE;
    if (!slot.offer.versions.includes(version)) return ChannelResult.NO_VERSION;
    slot.agreed = version;
    slot.state = ChannelState.NEGOTIATED;
    this.notify(index, (listener) => listener.negotiated(this, index));
    return ChannelResult.OK;
  }

  private command(index: number, command: number): number {
    const slot = this.slots[index]!;
    switch (command) {
      case ChannelCommand.GRANT: return this.grant(slot);
      case ChannelCommand.REVOKE: return this.revoke(slot.handle);
      case ChannelCommand.OPEN: return this.open(index);
      case ChannelCommand.CLOSE:
        if (slot.state === ChannelState.OPEN) {
          slot.state = ChannelState.NEGOTIATED;
          slot.openHandle = 0;
          this.notify(index, (listener) => listener.closed(this, index, 'closed by the guest'));
          this.updateWakeSource();
          return ChannelResult.OK;
        }
        if (slot.state === ChannelState.RESCINDED || slot.state === ChannelState.FAILED) {
          const tag = slot.offer?.tag ?? '';
          Object.assign(slot, emptySlot());
          this.notify(index, (listener) => listener.released(this, index, tag));
          return ChannelResult.OK;
        }
        return ChannelResult.BAD_STATE;
      case ChannelCommand.DOORBELL:
        if (slot.state !== ChannelState.OPEN) return ChannelResult.BAD_STATE;
        this.notify(index, (listener) => listener.doorbell(this, index));
        return ChannelResult.OK;
      default:
        return ChannelResult.BAD_STATE;
    }
  }

  /** GRANT: checks the page list at GRANT_LIST and records it under a new handle. */
  private grant(slot: Slot): number {
    const listGpa = slot.grantList;
    const ramBytes = this.vm.memoryBytes;
    if (listGpa % PAGE_SIZE !== 0 || listGpa >= ramBytes) return ChannelResult.BAD_LIST;
    if (this.grants.size >= CHANNEL_MAX_GRANTS) return ChannelResult.NO_RESOURCES;
    let words: Uint32Array;
    try {
      const count = readU32(this.vm, listGpa);
      if (count < 1 || count > CHANNEL_MAX_GRANT_PAGES) return ChannelResult.BAD_LIST;
      const bytes = this.vm.memory.readPhysical(listGpa + 4, count * 4);
      words = new Uint32Array(bytes.buffer, bytes.byteOffset, count);
    } catch (error) {
      // The list's page is still on a post-copy source: nothing changed yet, so the COMMAND store
      // runs again once the page is in (the vCPU waits for it).
      if (error instanceof PageWaitError) throw error;
      return ChannelResult.BAD_LIST; // a page nobody can produce (poisoned): the list is unusable
    }
    const gpns: number[] = [];
    const listGpn = listGpa / PAGE_SIZE;
    for (const gpa of words) {
      if (gpa % PAGE_SIZE !== 0 || gpa >= ramBytes) return ChannelResult.BAD_LIST;
      const gpn = gpa / PAGE_SIZE;
      if (gpn === listGpn || gpns.includes(gpn)) return ChannelResult.BAD_LIST;
      gpns.push(gpn);
    }
    const handle = this.takeHandle();
    this.grants.set(handle, gpns);
    slot.handle = handle;
    return ChannelResult.OK;
  }

  private takeHandle(): number {
    for (;;) {
      const handle = this.nextHandle;
      this.nextHandle = this.nextHandle >= 0xffff_ffff ? 1 : this.nextHandle + 1;
      if (!this.grants.has(handle)) return handle;
    }
  }

  /** REVOKE: an open channel using the grant FAILS at once (the host unmaps it first). */
  private revoke(handle: number): number {
    if (!this.grants.has(handle)) return ChannelResult.BAD_HANDLE;
    let inUse = false;
    for (let index = 0; index < CHANNEL_SLOTS; index++) {
      const slot = this.slots[index]!;
      if (slot.state === ChannelState.OPEN && slot.openHandle === handle) {
        inUse = true;
        this.fail(index, `grant ${handle} was revoked while the channel was open`);
      }
    }
    this.grants.delete(handle);
    return inUse ? ChannelResult.IN_USE : ChannelResult.OK;
  }

  private open(index: number): number {
    const slot = this.slots[index]!;
    if (slot.state !== ChannelState.NEGOTIATED || !slot.offer) return ChannelResult.BAD_STATE;
    const gpns = this.grants.get(slot.handle);
    if (!gpns) return ChannelResult.BAD_HANDLE;
    for (const other of this.slots) if (other.state === ChannelState.OPEN && other.openHandle === slot.handle) return ChannelResult.BAD_HANDLE;
    if (gpns.length > slot.offer.maxPages) return ChannelResult.NO_RESOURCES;
    if (slot.sendPages < 2 || gpns.length - slot.sendPages < 2) return ChannelResult.BAD_LIST;
    slot.state = ChannelState.OPEN;
    slot.openHandle = slot.handle;
    this.updateWakeSource();
    this.notify(index, (listener) => listener.opened(this, index));
    return ChannelResult.OK;
  }

  /** Calls the listener; a listener that throws fails the slot instead of the VM. */
  private notify(index: number, call: (listener: ChannelListener) => void): void {
    if (!this.listener) return;
    try {
      call(this.listener);
    } catch (error) {
      this.fail(index, `host error: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  private updateInterrupt(): void {
    this.vm.setInterruptLine(this.interruptLine, (this.irqEnable & 1) !== 0 && this.irqStatus !== 0);
  }

  /** While a channel is open a peer may send at any time: an idle guest waits rather than ends. */
  private updateWakeSource(): void {
    if (!this.hypervisor) return;
    // (other devices may hold the VM too: console input, block completions)
    holdWakeSource(this.hypervisor, this.vm, this, this.slots.some((slot) => slot.state === ChannelState.OPEN));
  }

  // ---------------------------------------------------------------------------------------------
  // State

  /** The 'channel' component's saved form. */
  save(): ChannelDeviceState {
    return {
      select: this.select,
      irqStatus: this.irqStatus,
      irqEnable: this.irqEnable,
      nextHandle: this.nextHandle,
      grants: [...this.grants].map(([handle, gpns]) => ({ handle, gpns: [...gpns] })),
      slots: this.slots.map((slot) => ({
        state: slot.state, service: slot.offer?.service ?? 0, versions: slot.offer ? [...slot.offer.versions] : [], tag: slot.offer?.tag ?? '',
        maxPages: slot.offer?.maxPages ?? 0, agreed: slot.agreed, peerMajor: slot.peerMajor, grantList: slot.grantList, handle: slot.handle,
        sendPages: slot.sendPages, openHandle: slot.openHandle, result: slot.result,
      })),
    };
  }

  /** Checks a saved state without changing anything (DeviceStateError naming the field). */
  check(state: unknown): ChannelDeviceState {
    const record = stateRecord(state, 'channel');
    stateInteger(record.select, 'channel', 'select', 0, CHANNEL_SLOTS - 1);
    stateInteger(record.irqStatus, 'channel', 'irqStatus', 0, (1 << CHANNEL_SLOTS) - 1);
    stateInteger(record.irqEnable, 'channel', 'irqEnable', 0, 1);
    stateInteger(record.nextHandle, 'channel', 'nextHandle', 1, 0xffff_ffff);
    if (!Array.isArray(record.grants) || record.grants.length > CHANNEL_MAX_GRANTS) throw new DeviceStateError('channel', 'grants', `is not a list of at most ${CHANNEL_MAX_GRANTS}`);
    const handles = new Set<number>();
    const pageCount = this.vm.memoryBytes / PAGE_SIZE;
    record.grants.forEach((grant: unknown, i) => {
      const g = stateRecord(grant, 'channel', `grants[${i}]`);
      const handle = stateInteger(g.handle, 'channel', `grants[${i}].handle`, 1, 0xffff_ffff);
      if (handles.has(handle)) throw new DeviceStateError('channel', `grants[${i}].handle`, 'repeats a handle');
      handles.add(handle);
      if (!Array.isArray(g.gpns) || g.gpns.length < 1 || g.gpns.length > CHANNEL_MAX_GRANT_PAGES) throw new DeviceStateError('channel', `grants[${i}].gpns`, 'is not a list of 1 … 64 pages');
      g.gpns.forEach((gpn: unknown, j) => stateInteger(gpn, 'channel', `grants[${i}].gpns[${j}]`, 0, pageCount - 1));
    });
    const slots = stateList(record.slots, 'channel', 'slots', CHANNEL_SLOTS);
    slots.forEach((saved, i) => {
      const field = `slots[${i}]`;
      const s = stateRecord(saved, 'channel', field);
      const st = stateInteger(s.state, 'channel', `${field}.state`, 0, 5);
      stateInteger(s.service, 'channel', `${field}.service`, st === ChannelState.EMPTY ? 0 : 1, 3);
      if (!Array.isArray(s.versions) || s.versions.length > 64) throw new DeviceStateError('channel', `${field}.versions`, 'is not a list of versions');
      s.versions.forEach((v: unknown, j) => stateU32(v, 'channel', `${field}.versions[${j}]`));
      if (typeof s.tag !== 'string') throw new DeviceStateError('channel', `${field}.tag`, 'is not a string');
      stateInteger(s.maxPages, 'channel', `${field}.maxPages`, 0, CHANNEL_MAX_GRANT_PAGES);
      for (const name of ['agreed', 'grantList', 'handle', 'sendPages', 'openHandle'] as const) stateU32(s[name], 'channel', `${field}.${name}`);
      stateInteger(s.peerMajor, 'channel', `${field}.peerMajor`, 0, 0xffff);
      stateInteger(s.result, 'channel', `${field}.result`, 0, 6);
      if (st === ChannelState.OPEN && !handles.has(s.openHandle as number)) throw new DeviceStateError('channel', `${field}.openHandle`, 'names no saved grant');
    });
    return record as unknown as ChannelDeviceState;
  }

  /** Puts the saved state back (after check), then lets the listener re-map and re-link. */
  restore(state: unknown): void {
    const saved = this.check(state);
    this.select = saved.select;
    this.irqStatus = saved.irqStatus;
    this.irqEnable = saved.irqEnable;
    this.nextHandle = saved.nextHandle;
    this.grants.clear();
    for (const grant of saved.grants) this.grants.set(grant.handle, [...grant.gpns]);
    saved.slots.forEach((s, i) => {
      const slot = this.slots[i]!;
      Object.assign(slot, emptySlot(), {
        state: s.state as ChannelStateId,
        offer: s.state === ChannelState.EMPTY ? null : { service: s.service as ChannelServiceId, versions: [...s.versions], tag: s.tag, maxPages: s.maxPages },
        agreed: s.agreed, peerMajor: s.peerMajor, grantList: s.grantList, handle: s.handle, sendPages: s.sendPages, openHandle: s.openHandle, result: s.result,
      });
    });
    this.updateInterrupt();
    this.updateWakeSource();
    this.listener?.restored(this);
  }
}

/** A u32 of guest RAM (little-endian). */
function readU32(vm: Vm, gpa: number): number {
  const bytes = vm.memory.readPhysical(gpa, 4);
  return (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
}

/**
 * Attaches the CHANNEL device to vm (device-table info = CHANNEL_SLOTS), its reset hook and its
 * 'channel' state component. One per VM; the bus (services/bus) is its listener.
 */
export function attachChannels(vm: Vm, options: ChannelOptions = {}): ChannelDevice {
  const device = new ChannelDevice(vm, options);
  device.base = vm.attachDevice({ type: DeviceType.CHANNEL, name: 'channel', info: CHANNEL_SLOTS }, device);
  vm.onReset(() => device.reset());
  vm.registerState('channel', {
    version: 1,
    save: () => device.save(),
    check: (state) => void device.check(state),
    restore: (state) => device.restore(state),
  });
  return device;
}
