/**
 * Checking saved device state. A checkpoint file or a fork hands each device the state it saved,
 * but a file may be damaged (past its checksums) or edited by hand, so every device checks the
 * shape of its state before it changes anything, and refuses a bad one with a DeviceStateError
 * that names the device and the field: "saved timer state: low[1] is not a 32-bit value (got
 * -1)". Tools print that one line; nothing reaches the guest.
 */
import { BvError } from '../guest-isa/errors.ts';

/** A saved device state that is malformed: `device` is the state component, `field` the path in it ('' = the whole state). */
export class DeviceStateError extends BvError {
  /** Always BV_DEVICE_STATE. */
  declare readonly code: 'BV_DEVICE_STATE';

  constructor(
    /** The state component: the device's registration name ('timer', 'block', …). */
    readonly device: string,
    /** The path of the bad field in the saved state ('low[1]', 'registers.status'); '' = the whole state. */
    readonly field: string,
    problem: string,
  ) {
    super('BV_DEVICE_STATE', field === '' ? `saved ${device} state ${problem}` : `saved ${device} state: ${field} ${problem}`);
  }
}

/** The saved state as an object (not an array, bytes or null). */
export function stateRecord(state: unknown, device: string, field = ''): Record<string, unknown> {
  if (typeof state !== 'object' || state === null || Array.isArray(state) || ArrayBuffer.isView(state)) {
    throw new DeviceStateError(device, field, `is not an object (got ${describeSaved(state)})`);
  }
  return state as Record<string, unknown>;
}

/** An integer in [min, max]. */
export function stateInteger(value: unknown, device: string, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new DeviceStateError(device, field, `is not an integer from ${min} to ${max} (got ${describeSaved(value)})`);
  }
  return value;
}

/** A 32-bit register value (0 … 2^32 − 1). */
export function stateU32(value: unknown, device: string, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new DeviceStateError(device, field, `is not a 32-bit value (got ${describeSaved(value)})`);
  }
  return value;
}

/** A list of exactly `length` items. */
export function stateList(value: unknown, device: string, field: string, length: number): unknown[] {
  if (!Array.isArray(value)) throw new DeviceStateError(device, field, `is not a list (got ${describeSaved(value)})`);
  if (value.length !== length) throw new DeviceStateError(device, field, `has ${value.length} entries, this machine needs ${length}`);
  return value;
}

/** A short description of a saved value for messages (never the whole of a large one). */
export function describeSaved(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (ArrayBuffer.isView(value)) return `${value.byteLength} bytes`;
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') {
    const text = JSON.stringify(value);
    return text.length > 42 ? `a string of ${value.length} characters` : text;
  }
  return String(value);
}
