/**
 * Memory condition for guest applications (device type 7, MEMINFO; T-7; docs/meminfo.md): the
 * host tells the guest how much memory it may really use now — its RAM less the balloon's target,
 * lowered further when the host is short — and how short the host is, so that a guest program
 * such as a cache shrinks before the guest runs out and before the host swaps it.
 *
 * The guest reads three figures and a change counter; it combines them with its own free and
 * page-cache counts (which only it knows): memory available to an application = min(free +
 * cache, LIMIT − (pages in use by the kernel and processes)). A guest polls SEQ (cheap: one MMIO
 * read) to learn that something changed. The host changes the figures with setCondition; the
 * memory scheduler (services/memory) does it as the host's free memory moves.
 */
import { DeviceType } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import type { MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { stateInteger, stateRecord } from './state.ts';

/** Register offsets in the MEMINFO window (all read-only). */
export const MeminfoRegister = {
  /** Pages the host lets this guest use now: at most its RAM, less the balloon target and any host squeeze. */
  LIMIT: 0x00,
  /** How short of memory the host is: a HostPressure value. */
  PRESSURE: 0x04,
  /** Incremented each time LIMIT or PRESSURE changes (wraps at 2^32). */
  SEQ: 0x08,
  /** The guest's RAM in pages (for convenience: LIMIT never exceeds it). */
  RAM_PAGES: 0x0c,
} as const;

/** PRESSURE values: the host's free-memory state (the reclaim ladder, docs/meminfo.md). */
export const HostPressure = {
  /** Plenty of free memory. */
  HIGH: 0,
  /** Free memory is getting short: the host balloons. */
  SOFT: 1,
  /** Short: the host swaps guest pages too. */
  HARD: 2,
  /** Almost none: the host stops VMs that allocate until memory frees. */
  LOW: 3,
} as const;

/** One of HostPressure's values. */
export type HostPressureLevel = (typeof HostPressure)[keyof typeof HostPressure];

/** The pressure levels' names, by value. */
export const HOST_PRESSURE_NAMES = ['high', 'soft', 'hard', 'low'] as const;

/** A refused host request to the device (a limit or pressure out of range). */
export class MeminfoError extends BvError {
  constructor(message: string) {
    super('BV_MEMINFO', message);
  }
}

/** What setCondition sets (either or both). */
export interface MemoryCondition {
  /** Pages the guest may use now (0 … its RAM pages). */
  limitPages?: number;
  /** The host's pressure level. */
  pressure?: HostPressureLevel;
}

/** What the 'meminfo' state component saves. */
export interface MeminfoState {
  /** LIMIT. */
  limitPages: number;
  /** PRESSURE. */
  pressure: HostPressureLevel;
  /** SEQ. */
  seq: number;
}

/** The device model: host-set figures the guest reads. */
export class MeminfoDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachMeminfo). */
  base = 0;
  private limit: number;
  private level: HostPressureLevel = HostPressure.HIGH;
  private seq = 0;
  /** Guest reads of SEQ (how often the guest looked). */
  seqReads = 0;

  constructor(private readonly vm: Vm) {
    this.limit = vm.memory.pageCount;
  }

  /** Pages the guest may use now. */
  get limitPages(): number {
    return this.limit;
  }

  /** The pressure level the guest sees. */
  get pressure(): HostPressureLevel {
    return this.level;
  }

  /** The change counter the guest sees. */
  get sequence(): number {
    return this.seq;
  }

  /** Changes what the guest sees; SEQ moves only when something changed. */
  setCondition(condition: MemoryCondition): void {
    const pages = this.vm.memory.pageCount;
    const limit = condition.limitPages ?? this.limit;
    if (!Number.isInteger(limit) || limit < 0 || limit > pages) throw new MeminfoError(`${this.vm.name}: a memory limit is 0 to ${pages} pages (the VM's RAM), got ${limit}`);
    const level = condition.pressure ?? this.level;
    if (!Number.isInteger(level) || level < HostPressure.HIGH || level > HostPressure.LOW) throw new MeminfoError(`${this.vm.name}: a pressure level is 0 to 3, got ${level}`);
    if (limit === this.limit && level === this.level) return;
    this.limit = limit;
    this.level = level;
    this.seq = (this.seq + 1) >>> 0;
  }

  read(_vcpu: Vcpu, offset: number): number {
    switch (offset) {
      case MeminfoRegister.LIMIT: return this.limit;
      case MeminfoRegister.PRESSURE: return this.level;
      case MeminfoRegister.SEQ:
        this.seqReads++;
        return this.seq | 0;
      case MeminfoRegister.RAM_PAGES: return this.vm.memory.pageCount;
      default: return 0;
    }
  }

  write(_vcpu: Vcpu, _offset: number, _value: number): boolean {
    return true; // every register is read-only: writes are ignored
  }

  /** The saved form: the figures the guest sees. */
  saveState(): MeminfoState {
    return { limitPages: this.limit, pressure: this.level, seq: this.seq };
  }

  /** Checks a saved state (a damaged file) without changing anything. */
  checkState(state: unknown): MeminfoState {
    const record = stateRecord(state, 'meminfo');
    return {
      limitPages: stateInteger(record['limitPages'], 'meminfo', 'limitPages', 0, this.vm.memory.pageCount),
      pressure: stateInteger(record['pressure'], 'meminfo', 'pressure', HostPressure.HIGH, HostPressure.LOW) as HostPressureLevel,
      seq: stateInteger(record['seq'], 'meminfo', 'seq', 0, 0xffff_ffff),
    };
  }

  /** Puts back a saved state (checked first). */
  restoreState(state: unknown): void {
    const saved = this.checkState(state);
    this.limit = saved.limitPages;
    this.level = saved.pressure;
    this.seq = saved.seq;
  }
}

/** Attaches the MEMINFO device (state component 'meminfo'); append it after the other devices. */
export function attachMeminfo(vm: Vm): MeminfoDevice {
  const device = new MeminfoDevice(vm);
  vm.registerState('meminfo', {
    version: 1,
    save: () => device.saveState(),
    check: (state) => void device.checkState(state),
    restore: (state) => device.restoreState(state),
  });
  device.base = vm.attachDevice({ type: DeviceType.MEMINFO, name: 'meminfo' }, device);
  return device;
}
