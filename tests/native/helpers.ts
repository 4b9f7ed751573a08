import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { NativeError, type NativeErrorCode } from '../../native/index.ts';

export const MiB = 1024 * 1024;

/** A fresh temporary directory and a function that removes it. */
export function makeTempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'bv-native-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs `action`, expects a NativeError with `code`, and returns it for further checks. */
export function expectNativeError(action: () => unknown, code: NativeErrorCode): NativeError {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(NativeError);
  const error = caught as NativeError;
  expect(error.code, error.message).toBe(code);
  return error;
}

/** Bytes whose value depends on their offset, so misplaced data is caught. */
export function pattern(length: number, seed = 0): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + (i >>> 12) * 7 + seed) & 0xff;
  return bytes;
}

export function isAllZero(bytes: Uint8Array): boolean {
  if (bytes.byteOffset % 4 !== 0) return bytes.every((byte) => byte === 0);
  const words = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  for (let i = words.length * 4; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Fast byte comparison (vitest's deep equality walks element by element). */
export function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  const left = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const right = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (left.equals(right)) return;
  let first = 0;
  while (first < Math.min(left.length, right.length) && left[first] === right[first]) first++;
  expect.fail(`bytes differ (lengths ${left.length} and ${right.length}) first at offset ${first}`);
}
