import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
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

// tsx's ESM entry (a worker's import() resolves from the working directory, not from here).
const TSX_API = (() => {
  const packageJson = createRequire(import.meta.url).resolve('tsx/package.json');
  const exports = (JSON.parse(readFileSync(packageJson, 'utf8')) as { exports: Record<string, { import: { default: string } }> }).exports;
  return pathToFileURL(join(dirname(packageJson), exports['./esm/api']!.import.default)).href;
})();
const NATIVE_INDEX = new URL('../../native/index.ts', import.meta.url).href;

/**
 * A worker_threads Worker that loads native/index.ts as `native` (through tsx: a worker does not
 * get vitest's TypeScript transform) and then runs `body`, plain JS inside an async function
 * with `parentPort`, `reply(value)`, `next()` (the next message), and `errorOf(action)` (the
 * `{ code, errnoName, native }` of what `action` throws, or null). A failure of the body is
 * answered as `{ workerError }`, which `ask` turns into a rejection.
 */
export function startNativeWorker(body: string): Worker {
  return new Worker(
    `const { parentPort } = require('node:worker_threads');
     const reply = (value) => parentPort.postMessage(value);
     const next = () => new Promise((resolve) => parentPort.once('message', resolve));
     (async () => {
       const { register } = await import(${JSON.stringify(TSX_API)});
       register();
       const native = await import(${JSON.stringify(NATIVE_INDEX)});
       const errorOf = (action) => {
         try {
           action();
         } catch (error) {
           return { code: error.code, errnoName: error.errnoName, native: error instanceof native.NativeError };
         }
         return null;
       };
       ${body}
     })().catch((error) => reply({ workerError: String((error && error.stack) || error) }));`,
    { eval: true },
  );
}

/** Posts `message` (unless undefined) and resolves with the worker's next answer; rejects on a worker error. */
export function ask<T>(worker: Worker, message?: unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onError = (error: Error) => {
      worker.off('message', onMessage);
      reject(error);
    };
    const onMessage = (value: unknown) => {
      worker.off('error', onError);
      const failure = (value as { workerError?: string } | null)?.workerError;
      if (typeof failure === 'string') reject(new Error(`worker failed: ${failure}`));
      else resolve(value as T);
    };
    worker.once('message', onMessage);
    worker.once('error', onError);
    if (message !== undefined) worker.postMessage(message);
  });
}
