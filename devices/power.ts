/**
 * The power device (SPEC.md §13.5, device type 3) and the EXIT hypercall (§10).
 *
 * POWEROFF stops the VM with an exit code at once. RESET cannot be carried out from inside the
 * store that requests it: the interpreter finishes that store after the device returns (it
 * advances the pc past it), which would corrupt the fresh reset state. So a reset request pauses
 * the VM (stop reason `paused`, RESET_PAUSE_REASON) and whoever runs the VM completes it between
 * runs with completeReset() — runWithResets in devices/index.ts does this.
 */
import { DeviceType, Hcall, Reg } from '../guest-isa/arch.ts';
import type { MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { stateInteger, stateRecord } from './state.ts';

/** Register offsets in the power window. */
export const PowerRegister = {
  /** Write: power off with the value as exit code. */
  POWEROFF: 0,
  /** Write POWER_RESET_VALUE: request a reset. */
  RESET: 4,
} as const;
/** The only value of RESET that resets; others are ignored. */
export const POWER_RESET_VALUE = 1;
/** The pause reason a reset request leaves in vm.stopReason. */
export const RESET_PAUSE_REASON = 'power: reset requested';

/**
 * The power device model (attachPower creates and attaches it): power-off with an exit code, and
 * reset requests that whoever runs the VM completes with completeReset().
 */
export class PowerDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachPower). */
  base = 0;
  /** Completed resets. */
  resets = 0;

  constructor(private readonly vm: Vm) {}

  read(_vcpu: Vcpu, _offset: number): number {
    return 0; // both registers are write-only
  }

  write(_vcpu: Vcpu, offset: number, value: number): boolean {
    if (offset === PowerRegister.POWEROFF) this.vm.powerOff(value);
    else if (offset === PowerRegister.RESET && value === POWER_RESET_VALUE) this.vm.pause(RESET_PAUSE_REASON);
    return true;
  }

  /** True when the VM is stopped waiting for a requested reset. */
  get resetPending(): boolean {
    const reason = this.vm.stopReason;
    return reason.kind === 'paused' && reason.reason === RESET_PAUSE_REASON;
  }

  /**
   * Performs a requested reset (call while the VM is not running). Returns false when no reset
   * was requested. Afterwards every vCPU is in its reset state, including INSTRET = TIME = 0
   * (SPEC.md §15), and the VM is ready to run again.
   */
  completeReset(): boolean {
    if (!this.resetPending) return false;
    this.vm.reset();
    for (const vcpu of this.vm.vcpus) {
      vcpu.instret = 0;
      vcpu.clock = 0;
    }
    this.resets++;
    return true;
  }
}

/** Attaches the power device to vm and registers the EXIT hypercall (a1 = exit code). */
export function attachPower(vm: Vm): PowerDevice {
  const device = new PowerDevice(vm);
  device.base = vm.attachDevice({ type: DeviceType.POWER, name: 'power' }, device);
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
  vm.registerState('power', {
    version: 1,
    // Methods, not arrow properties: see attachConsole.
    save() {
      return { resets: device.resets };
    },
    check(state) {
      savedResets(state);
    },
    restore(state) {
      device.resets = savedResets(state);
    },
  });
  return device;
}

/** The reset count in a saved 'power' state; DeviceStateError when it is not a count. */
function savedResets(state: unknown): number {
  return stateInteger(stateRecord(state, 'power').resets, 'power', 'resets', 0, Number.MAX_SAFE_INTEGER);
}
