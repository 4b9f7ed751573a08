/**
 * The timer (SPEC.md §13.4, device type 2): per-vCPU TIMECMP and TIME, and the IPI register.
 *
 * Registers are banked by the accessing vCPU. The kernel does the timing: it raises ip.TIMER
 * while `vcpu.clock >= vcpu.timerDeadline` and ends a wfi at the deadline, so this device only
 * translates the guest's 64-bit TIMECMP into that field (all ones = never = Infinity).
 */
import { DeviceType } from '../guest-isa/arch.ts';
import type { MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { stateList, stateRecord, stateU32 } from './state.ts';

/** Register offsets in the timer window. */
export const TimerRegister = {
  /** The accessing vCPU's TIMECMP, bits 31-0 (read/write; all ones in both halves = never). */
  TIMECMP_LOW: 0,
  /** TIMECMP, bits 63-32 (read/write). */
  TIMECMP_HIGH: 4,
  /** The accessing vCPU's virtual time, bits 31-0 (read-only). */
  TIME_LOW: 8,
  /** Virtual time, bits 63-32 (read-only). */
  TIME_HIGH: 12,
  /** Write: raise the software interrupt of each vCPU whose bit is set (write-only). */
  IPI: 16,
} as const;

const TWO_TO_32 = 0x1_0000_0000;
const ALL_ONES = 0xffff_ffff;

/**
 * The timer device model (attachTimer creates and attaches it): per-vCPU TIMECMP and TIME
 * registers over the kernel's virtual time, and inter-processor interrupts.
 */
export class TimerDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachTimer). */
  base = 0;
  /**
   * TIMECMP halves per vCPU, kept exactly (a double cannot hold every 64-bit value), with the
   * deadline they produced: when vcpu.timerDeadline no longer matches (a reset, a restored
   * checkpoint), the halves are re-derived from it.
   */
  private readonly low: Uint32Array;
  private readonly high: Uint32Array;
  private readonly deadlines: Float64Array;

  constructor(private readonly vm: Vm) {
    const count = vm.vcpus.length;
    this.low = new Uint32Array(count).fill(ALL_ONES);
    this.high = new Uint32Array(count).fill(ALL_ONES);
    this.deadlines = new Float64Array(count).fill(Infinity);
  }

  read(vcpu: Vcpu, offset: number): number {
    switch (offset) {
      case TimerRegister.TIMECMP_LOW:
        this.sync(vcpu);
        return this.low[vcpu.id]! | 0;
      case TimerRegister.TIMECMP_HIGH:
        this.sync(vcpu);
        return this.high[vcpu.id]! | 0;
      case TimerRegister.TIME_LOW:
        return vcpu.clock % TWO_TO_32 | 0;
      case TimerRegister.TIME_HIGH:
        return Math.floor(vcpu.clock / TWO_TO_32) | 0;
      default:
        return 0; // IPI is write-only
    }
  }

  write(vcpu: Vcpu, offset: number, value: number): boolean {
    switch (offset) {
      case TimerRegister.TIMECMP_LOW:
        this.sync(vcpu);
        this.low[vcpu.id] = value >>> 0;
        this.apply(vcpu);
        break;
      case TimerRegister.TIMECMP_HIGH:
        this.sync(vcpu);
        this.high[vcpu.id] = value >>> 0;
        this.apply(vcpu);
        break;
      case TimerRegister.IPI:
        // Bits for vCPUs that do not exist are ignored by sendIpi.
        this.vm.sendIpi(value);
        break;
    }
    // TIME is read-only and other offsets are empty: writes are ignored (§11.3).
    return true;
  }

  /** TIMECMP halves per vCPU as plain data (checkpoints, fork). */
  saveState(): {
    /** TIMECMP bits 31-0, by vCPU index. */
    low: number[];
    /** TIMECMP bits 63-32, by vCPU index. */
    high: number[];
  } {
    const vcpus = this.vm.vcpus;
    const low: number[] = [];
    const high: number[] = [];
    for (let i = 0; i < vcpus.length; i++) {
      this.sync(vcpus[i]!);
      low.push(this.low[i]!);
      high.push(this.high[i]!);
    }
    return { low, high };
  }

  /**
   * Checks a saved state: `low` and `high`, one 32-bit TIMECMP half per vCPU each. Throws
   * DeviceStateError naming the field; changes nothing.
   */
  checkState(state: unknown): {
    /** TIMECMP bits 31-0, by vCPU index. */
    low: number[];
    /** TIMECMP bits 63-32, by vCPU index. */
    high: number[];
  } {
    const record = stateRecord(state, 'timer');
    const count = this.vm.vcpus.length;
    const halves = (key: 'low' | 'high'): number[] =>
      stateList(record[key], 'timer', key, count).map((value, index) => stateU32(value, 'timer', `${key}[${index}]`));
    return { low: halves('low'), high: halves('high') };
  }

  /** Restores TIMECMP halves (checked first); the vCPUs' deadlines were restored with the CPU state. */
  restoreState(state: unknown): void {
    const { low, high } = this.checkState(state);
    for (const vcpu of this.vm.vcpus) {
      this.low[vcpu.id] = low[vcpu.id]!;
      this.high[vcpu.id] = high[vcpu.id]!;
      this.deadlines[vcpu.id] = vcpu.timerDeadline;
    }
  }

  /** This vCPU's TIMECMP as the guest wrote it (a bigint: every 64-bit value is exact). */
  timecmp(vcpu: Vcpu): bigint {
    this.sync(vcpu);
    return (BigInt(this.high[vcpu.id]!) << 32n) | BigInt(this.low[vcpu.id]!);
  }

  private apply(vcpu: Vcpu): void {
    const low = this.low[vcpu.id]!;
    const high = this.high[vcpu.id]!;
    const deadline = low === ALL_ONES && high === ALL_ONES ? Infinity : high * TWO_TO_32 + low;
    this.deadlines[vcpu.id] = deadline;
    vcpu.timerDeadline = deadline;
  }

  private sync(vcpu: Vcpu): void {
    const deadline = vcpu.timerDeadline;
    if (deadline === this.deadlines[vcpu.id]) return;
    this.deadlines[vcpu.id] = deadline;
    if (deadline === Infinity) {
      this.low[vcpu.id] = ALL_ONES;
      this.high[vcpu.id] = ALL_ONES;
    } else {
      this.low[vcpu.id] = deadline % TWO_TO_32;
      this.high[vcpu.id] = Math.floor(deadline / TWO_TO_32);
    }
  }
}

/** Attaches the timer to vm; info = the vCPU count. */
export function attachTimer(vm: Vm): TimerDevice {
  const device = new TimerDevice(vm);
  device.base = vm.attachDevice({ type: DeviceType.TIMER, name: 'timer', info: vm.vcpus.length }, device);
  vm.registerState('timer', {
    version: 1,
    // Methods, not arrow properties: see attachConsole.
    save() {
      return device.saveState();
    },
    check(state) {
      device.checkState(state);
    },
    restore(state) {
      device.restoreState(state);
    },
  });
  return device;
}
