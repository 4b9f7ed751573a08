/**
 * The MMIO bus of a VM: device windows at guest-physical addresses, and the device table that
 * tells the guest where they are (SPEC.md "Device table"). Devices live outside the kernel and
 * attach themselves here; the kernel only routes accesses.
 *
 * Windows are placed in attach order, so the same devices attached in another order sit at other
 * addresses. A VM's state (checkpoints, fork) therefore carries the layout (layout()), and a
 * restore refuses a VM whose layout differs (checkDeviceLayout): the guest found its devices
 * through the device table at boot and keeps using those addresses.
 */
import { DeviceTable, GuestPhys, PAGE_SIZE } from '../guest-isa/arch.ts';
import { KernelError } from './errors.ts';
import type { Vcpu } from './cpu/vcpu.ts';

/** A device model's view of its MMIO window. Accesses are aligned 32-bit words. */
export interface MmioDevice {
  /** Reads the word at `offset` (a multiple of 4 inside the window). */
  read(vcpu: Vcpu, offset: number): number;
  /** Writes the word at `offset`; returns false to make the store an access fault. */
  write(vcpu: Vcpu, offset: number, value: number): boolean;
}

/** What a device declares when it attaches (Vm.attachDevice): its device-table entry and window size. */
export interface DeviceDescriptor {
  /** DeviceType id from guest-isa/arch.ts. */
  type: number;
  /** Human-readable name for stats and errors. */
  name: string;
  /** Device-specific word published in the device table. */
  info?: number;
  /** Window size in bytes (multiple of 4 KiB); default 4 KiB. */
  bytes?: number;
}

/** One device window as saved state records it (the device table itself is fixed and not listed). */
export interface DeviceWindowLayout {
  /** The descriptor's name. */
  name: string;
  /** DeviceType id. */
  type: number;
  /** Guest-physical base of the window. */
  base: number;
  /** Window size in bytes. */
  size: number;
}

/**
 * A saved device layout that is malformed (BV_LAYOUT_INVALID) or differs from the VM's own
 * (BV_LAYOUT_MISMATCH). `entry` is the device-table entry (0 = the first device) that is bad or
 * differs first, or -1 when the layout as a whole is bad.
 */
export class DeviceLayoutError extends KernelError {
  /** BV_LAYOUT_INVALID (malformed) or BV_LAYOUT_MISMATCH (differs). */
  declare readonly code: 'BV_LAYOUT_INVALID' | 'BV_LAYOUT_MISMATCH';

  constructor(
    code: 'BV_LAYOUT_INVALID' | 'BV_LAYOUT_MISMATCH',
    message: string,
    /** The device-table entry (0 = the first device) that is bad or differs first; -1 for the whole layout. */
    readonly entry: number,
  ) {
    super(code, message);
  }
}

interface Window {
  base: number;
  bytes: number;
  descriptor: DeviceDescriptor;
  instance: number;
  device: MmioDevice;
  accesses: number;
}

const MAX_TABLE_ENTRIES = (PAGE_SIZE - DeviceTable.HEADER_BYTES) / DeviceTable.ENTRY_BYTES;

const DEVICE_TABLE_DESCRIPTOR: DeviceDescriptor = { type: 0, name: 'device-table' };

/** The device table's window: read-only, its words computed from the bus (a class: no closures per VM). */
class DeviceTableDevice implements MmioDevice {
  constructor(private readonly bus: MmioBus) {}

  read(_vcpu: Vcpu, offset: number): number {
    return this.bus.deviceTableWord(offset);
  }

  write(): boolean {
    return false;
  }
}

/**
 * A VM's MMIO bus (Vm.bus): the device table at 0xf0000000 and one window per attached device,
 * placed from 0xf0001000 upwards in attach order. Devices attach through Vm.attachDevice; the
 * interpreter routes guest loads and stores in a window to its device.
 */
export class MmioBus {
  private readonly windows: Window[] = [];
  private nextBase: number = GuestPhys.MMIO_BASE;

  /** @internal Created by the Vm: `ramBytes` and `vcpuCount` are published in the device table. */
  constructor(private readonly ramBytes: number, private readonly vcpuCount: number) {
    this.windows.push({ base: GuestPhys.DEVICE_TABLE, bytes: PAGE_SIZE, descriptor: DEVICE_TABLE_DESCRIPTOR, instance: 0, device: new DeviceTableDevice(this), accesses: 0 });
  }

  /** Attaches a device and returns the guest-physical base of its window. */
  attach(descriptor: DeviceDescriptor, device: MmioDevice): number {
    const bytes = descriptor.bytes ?? PAGE_SIZE;
    if (bytes <= 0 || bytes % PAGE_SIZE !== 0) throw new KernelError('BV_BAD_DEVICE', `device ${descriptor.name}: window size must be a multiple of 4 KiB`);
    if (this.windows.length - 1 >= MAX_TABLE_ENTRIES) throw new KernelError('BV_BAD_DEVICE', `too many devices (at most ${MAX_TABLE_ENTRIES})`);
    const base = this.nextBase;
    if (base + bytes > 0x1_0000_0000) throw new KernelError('BV_BAD_DEVICE', 'device windows exhausted the guest-physical address space');
    const instance = this.windows.filter((w) => w.descriptor.type === descriptor.type).length;
    this.windows.push({ base, bytes, descriptor, instance, device, accesses: 0 });
    this.nextBase = base + bytes;
    return base;
  }

  /** @internal True when gpa falls inside a device window (or the device table). */
  contains(gpa: number): boolean {
    return this.find(gpa) !== undefined;
  }

  /** @internal A guest load of the word at guest-physical `gpa`, inside a window. */
  read(vcpu: Vcpu, gpa: number): number {
    const window = this.find(gpa)!;
    window.accesses++;
    return window.device.read(vcpu, gpa - window.base) | 0;
  }

  /** @internal A guest store to guest-physical `gpa`; false when no device takes it (an access fault). */
  write(vcpu: Vcpu, gpa: number, value: number): boolean {
    const window = this.find(gpa);
    if (!window) return false;
    window.accesses++;
    return window.device.write(vcpu, gpa - window.base, value);
  }

  /** The device windows in device-table order (what checkpoints and forks save). */
  layout(): DeviceWindowLayout[] {
    return this.windows.slice(1).map((w) => ({ name: w.descriptor.name, type: w.descriptor.type, base: w.base, size: w.bytes }));
  }

  /** Guest accesses per window, by descriptor name (the device table included), for --stats. */
  accessCounts(): Record<string, number> {
    return Object.fromEntries(this.windows.map((w) => [w.descriptor.name, w.accesses]));
  }

  private find(gpa: number): Window | undefined {
    if (gpa < GuestPhys.DEVICE_TABLE) return undefined;
    for (const window of this.windows) if (gpa >= window.base && gpa < window.base + window.bytes) return window;
    return undefined;
  }

  /** @internal A guest load from the device table (DeviceTableDevice). */
  deviceTableWord(offset: number): number {
    const devices = this.windows.slice(1);
    if (offset === 0) return DeviceTable.MAGIC;
    if (offset === 4) return DeviceTable.VERSION | (devices.length << 16);
    if (offset === 8) return this.ramBytes | 0;
    if (offset === 12) return this.vcpuCount;
    const entryIndex = Math.floor((offset - DeviceTable.HEADER_BYTES) / DeviceTable.ENTRY_BYTES);
    const window = devices[entryIndex];
    if (!window) return 0;
    switch ((offset - DeviceTable.HEADER_BYTES) % DeviceTable.ENTRY_BYTES) {
      case 0: return window.descriptor.type | (window.instance << 16);
      case 4: return window.base | 0;
      case 8: return window.bytes | 0;
      default: return (window.descriptor.info ?? 0) | 0;
    }
  }
}

const MAX_ADDRESS = 0x1_0000_0000;

/**
 * Checks a saved layout's shape (it comes from a file): an array of at most the device table's
 * entries, each with a non-empty name, a 16-bit type, and a page-aligned window inside the
 * 32-bit guest-physical space. Throws DeviceLayoutError (BV_LAYOUT_INVALID) naming the entry and
 * field; `who` starts the message (a VM name or a file path).
 */
export function parseDeviceLayout(value: unknown, who: string): DeviceWindowLayout[] {
  const bad = (entry: number, what: string): DeviceLayoutError =>
    new DeviceLayoutError('BV_LAYOUT_INVALID', `${who}: the saved device layout ${entry < 0 ? '' : `entry ${entry} `}${what}`, entry);
  if (!Array.isArray(value)) throw bad(-1, 'is missing or not a list');
  if (value.length > MAX_TABLE_ENTRIES) throw bad(-1, `has ${value.length} entries (at most ${MAX_TABLE_ENTRIES})`);
  return value.map((item: unknown, entry) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw bad(entry, 'is not an object');
    const { name, type, base, size } = item as Record<string, unknown>;
    if (typeof name !== 'string' || name === '') throw bad(entry, `has an invalid name (${describeValue(name)})`);
    if (!Number.isInteger(type) || (type as number) < 0 || (type as number) > 0xffff) throw bad(entry, `('${name}') has an invalid type (${describeValue(type)})`);
    if (!Number.isInteger(base) || (base as number) < GuestPhys.MMIO_BASE || (base as number) >= MAX_ADDRESS || (base as number) % PAGE_SIZE !== 0) {
      throw bad(entry, `('${name}') has an invalid base (${describeValue(base)})`);
    }
    if (!Number.isInteger(size) || (size as number) <= 0 || (size as number) % PAGE_SIZE !== 0 || (base as number) + (size as number) > MAX_ADDRESS) {
      throw bad(entry, `('${name}') has an invalid size (${describeValue(size)})`);
    }
    return { name, type: type as number, base: base as number, size: size as number };
  });
}

/**
 * Refuses a restore or fork whose VM lays out its devices differently from the saved VM: throws
 * DeviceLayoutError (BV_LAYOUT_MISMATCH) naming the first device-table entry that differs in
 * name, type, base or size, or that only one side has. `who` starts the message.
 */
export function checkDeviceLayout(saved: readonly DeviceWindowLayout[], current: readonly DeviceWindowLayout[], who: string): void {
  for (let entry = 0; entry < Math.max(saved.length, current.length); entry++) {
    const was = saved[entry];
    const now = current[entry];
    if (was && now && was.name === now.name && was.type === now.type && was.base === now.base && was.size === now.size) continue;
    const savedText = was ? `the saved VM has ${describeWindow(was)}` : `the saved VM has no device there (${saved.length} in all)`;
    const currentText = now ? `this VM has ${describeWindow(now)}` : `this VM has no device there (${current.length} in all)`;
    throw new DeviceLayoutError(
      'BV_LAYOUT_MISMATCH',
      `${who}: device layout differs at device-table entry ${entry}: ${savedText}, ${currentText} (attach the saved VM's devices, in the same order)`,
      entry,
    );
  }
}

function describeWindow(window: DeviceWindowLayout): string {
  const size = window.size % 1024 === 0 ? `${window.size / 1024} KiB` : `${window.size} bytes`;
  return `'${window.name}' (type ${window.type}) at 0x${window.base.toString(16)}, ${size}`;
}

function describeValue(value: unknown): string {
  if (value === undefined) return 'missing';
  const text = typeof value === 'string' ? JSON.stringify(value) : typeof value === 'object' && value !== null ? (Array.isArray(value) ? 'a list' : 'an object') : String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}
