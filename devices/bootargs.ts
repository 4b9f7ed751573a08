/**
 * Boot arguments (SPEC.md §13.6, device type 4): a read-only window holding the argument string,
 * NUL-terminated UTF-8, zeros after it. Info = the string's byte length. A write is refused (the
 * store becomes an access fault).
 */
import { DeviceType, PAGE_SIZE } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import type { MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { DeviceStateError, describeSaved, stateRecord } from './state.ts';

/** The longest argument string: the window is one page and the NUL must fit. */
export const MAX_BOOT_ARGS_BYTES = PAGE_SIZE - 1;

/** One encoder for every device (one is created per VM, forks and restores included). */
const utf8 = new TextEncoder();

/** Boot arguments that cannot be published (too long, or containing a NUL). */
export class BootArgsError extends BvError {
  constructor(code: 'BV_BOOTARGS_TOO_LONG' | 'BV_BOOTARGS_NUL' | 'BV_BOOTARGS_MISMATCH', message: string) {
    super(code, message);
  }
}

/**
 * The boot-argument device model: a read-only window holding one string. Create it (which
 * validates the string) and attach it with attachBootArgs.
 */
export class BootArgsDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachBootArgs). */
  base = 0;
  /** The window (string, NUL, zeros), read as little-endian words. */
  private readonly window: DataView;
  /** The string as UTF-8, without the NUL (the device-table info word is its length). */
  readonly bytes: Uint8Array;

  /** Throws BootArgsError when `text` is longer than MAX_BOOT_ARGS_BYTES as UTF-8 or contains a NUL. */
  constructor(
    /** The argument string, as given. */
    readonly text: string,
  ) {
    this.bytes = utf8.encode(text);
    if (this.bytes.length > MAX_BOOT_ARGS_BYTES) {
      throw new BootArgsError('BV_BOOTARGS_TOO_LONG', `boot arguments are ${this.bytes.length} bytes long; at most ${MAX_BOOT_ARGS_BYTES} bytes fit`);
    }
    if (this.bytes.includes(0)) throw new BootArgsError('BV_BOOTARGS_NUL', 'boot arguments cannot contain a NUL character');
    const window = new Uint8Array(PAGE_SIZE);
    window.set(this.bytes);
    this.window = new DataView(window.buffer);
  }

  read(_vcpu: Vcpu, offset: number): number {
    return this.window.getInt32(offset, true);
  }

  write(): boolean {
    return false;
  }
}

/** Attaches the boot arguments window; throws BootArgsError when the string does not fit. */
export function attachBootArgs(vm: Vm, args: string | BootArgsDevice): BootArgsDevice {
  const device = typeof args === 'string' ? new BootArgsDevice(args) : args;
  device.base = vm.attachDevice({ type: DeviceType.BOOTARGS, name: 'bootargs', info: device.bytes.length }, device);
  // The string is published in the device table at attach time, so a restore cannot change it:
  // attach the device with the saved text (savedBootArgs) and the restore checks it matches.
  vm.registerState('bootargs', {
    version: 1,
    // Methods, not arrow properties: see attachConsole.
    save() {
      return { text: device.text };
    },
    check(state) {
      savedBootArgs(state);
    },
    restore(state) {
      const text = savedBootArgs(state);
      if (text !== device.text) {
        throw new BootArgsError('BV_BOOTARGS_MISMATCH', `saved boot arguments ${JSON.stringify(text)} differ from this machine's ${JSON.stringify(device.text)}`);
      }
    },
  });
  return device;
}

/**
 * The boot argument string inside a saved 'bootargs' component state (attach the device with it
 * before restoring). Throws DeviceStateError when the state is malformed.
 */
export function savedBootArgs(state: unknown): string {
  const text = stateRecord(state, 'bootargs').text;
  if (typeof text !== 'string') throw new DeviceStateError('bootargs', 'text', `is not a string (got ${describeSaved(text)})`);
  return text;
}
