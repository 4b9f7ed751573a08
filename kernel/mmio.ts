/**
 * The MMIO bus of a VM: device windows at guest-physical addresses, and the device table that
 * tells the guest where they are (SPEC.md "Device table"). Devices live outside the kernel and
 * attach themselves here; the kernel only routes accesses.
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

interface Window {
  base: number;
  bytes: number;
  descriptor: DeviceDescriptor;
  instance: number;
  device: MmioDevice;
  accesses: number;
}

const MAX_TABLE_ENTRIES = (PAGE_SIZE - DeviceTable.HEADER_BYTES) / DeviceTable.ENTRY_BYTES;

export class MmioBus {
  private readonly windows: Window[] = [];
  private nextBase: number = GuestPhys.MMIO_BASE;

  constructor(private readonly ramBytes: number, private readonly vcpuCount: number) {
    const table: MmioDevice = {
      read: (_vcpu, offset) => this.deviceTableWord(offset),
      write: () => false,
    };
    this.windows.push({ base: GuestPhys.DEVICE_TABLE, bytes: PAGE_SIZE, descriptor: { type: 0, name: 'device-table' }, instance: 0, device: table, accesses: 0 });
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

  /** True when gpa falls inside a device window. */
  contains(gpa: number): boolean {
    return this.find(gpa) !== undefined;
  }

  read(vcpu: Vcpu, gpa: number): number {
    const window = this.find(gpa)!;
    window.accesses++;
    return window.device.read(vcpu, gpa - window.base) | 0;
  }

  write(vcpu: Vcpu, gpa: number, value: number): boolean {
    const window = this.find(gpa);
    if (!window) return false;
    window.accesses++;
    return window.device.write(vcpu, gpa - window.base, value);
  }

  /** Access counts per device, for --stats. */
  accessCounts(): Record<string, number> {
    return Object.fromEntries(this.windows.map((w) => [w.descriptor.name, w.accesses]));
  }

  private find(gpa: number): Window | undefined {
    if (gpa < GuestPhys.DEVICE_TABLE) return undefined;
    for (const window of this.windows) if (gpa >= window.base && gpa < window.base + window.bytes) return window;
    return undefined;
  }

  private deviceTableWord(offset: number): number {
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
