// HostRegion.sharedBuffer(): one mapping seen from worker threads as a SharedArrayBuffer.
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { HOST_PAGE_SIZE, HostRegion } from '../../native/index.ts';
import { expectBytes, expectNativeError, pattern } from './helpers.ts';

/**
 * A worker running `body` (CommonJS, plain JS: workers do not get the test's TS loader) with
 * `sab` and `data` from its first message; `reply(value)` answers it.
 */
function startWorker(body: string): Worker {
  return new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.once('message', ({ sab, data }) => {
       const reply = (value) => parentPort.postMessage(value);
       ${body}
     });`,
    { eval: true },
  );
}

/** Posts `message` and resolves with the worker's next answer (rejects on a worker error). */
function ask<T>(worker: Worker, message: unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.postMessage(message);
  });
}

/** Answers each later message with the bytes [offset, offset + length) of the SAB. */
const READER = `
  reply('ready');
  parentPort.on('message', ({ offset, length }) => reply(new Uint8Array(sab, offset, length).slice()));`;

function mapsMention(name: string): boolean {
  return readFileSync('/proc/self/maps', 'latin1').includes(`/memfd:${name}`);
}

describe('HostRegion.sharedBuffer', () => {
  it('is one SharedArrayBuffer over the same bytes as buffer, for every kind', () => {
    for (const region of [HostRegion.anonymous(4 * HOST_PAGE_SIZE), HostRegion.sharedMemory(4 * HOST_PAGE_SIZE)]) {
      const sab = region.sharedBuffer();
      expect(sab).toBeInstanceOf(SharedArrayBuffer);
      expect(sab.byteLength).toBe(region.bytes);
      expect(region.sharedBuffer()).toBe(sab);
      new Uint8Array(region.buffer).set(pattern(region.bytes, 3));
      expectBytes(new Uint8Array(sab), pattern(region.bytes, 3));
      region.close();
    }
  });

  it('a worker writes through the SAB and the main thread reads it through buffer, and back', async () => {
    for (const region of [HostRegion.anonymous(16 * HOST_PAGE_SIZE), HostRegion.sharedMemory(16 * HOST_PAGE_SIZE)]) {
      const length = 8 * HOST_PAGE_SIZE;
      const worker = startWorker(`
        const seed = data;
        const bytes = new Uint8Array(sab, 0, ${length});
        for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + (i >>> 12) * 7 + seed) & 0xff;
        ${READER}`);
      try {
        expect(await ask(worker, { sab: region.sharedBuffer(), data: 11 })).toBe('ready');
        expectBytes(new Uint8Array(region.buffer, 0, length), pattern(length, 11));
        // The other way: the main thread writes through the external ArrayBuffer.
        new Uint8Array(region.buffer, length, length).set(pattern(length, 29));
        const seen = await ask<Uint8Array>(worker, { offset: length, length });
        expectBytes(seen, pattern(length, 29));
      } finally {
        await worker.terminate();
        region.close();
      }
    }
  });

  it('two workers each Atomics.add one counter 100,000 times: the total is exact', async () => {
    const region = HostRegion.sharedMemory(HOST_PAGE_SIZE);
    const sab = region.sharedBuffer();
    const counterIndex = 1; // word 0 is the start flag, so both begin together and contend
    const body = `
      const words = new Int32Array(sab);
      reply('ready');
      Atomics.wait(words, 0, 0);
      for (let i = 0; i < data; i++) Atomics.add(words, ${counterIndex}, 1);
      reply('done');`;
    const workers = [startWorker(body), startWorker(body)];
    try {
      await Promise.all(workers.map((worker) => ask(worker, { sab, data: 100_000 })));
      const done = Promise.all(workers.map((worker) => new Promise((resolve) => worker.once('message', resolve))));
      // notify must go through the SAB: on a plain ArrayBuffer view it wakes nobody.
      const words = new Int32Array(sab);
      Atomics.store(words, 0, 1);
      expect(Atomics.notify(words, 0)).toBeGreaterThanOrEqual(0);
      await done;
      expect(Atomics.load(new Int32Array(region.buffer), counterIndex)).toBe(200_000);
    } finally {
      await Promise.all(workers.map((worker) => worker.terminate()));
      region.close();
    }
  });

  it('Atomics.compareExchange on the SAB is seen by the main thread through buffer', async () => {
    const region = HostRegion.anonymous(HOST_PAGE_SIZE);
    const worker = startWorker(`
      const words = new Int32Array(sab);
      reply([Atomics.compareExchange(words, 3, 0, 77), Atomics.compareExchange(words, 3, 0, 99)]);`);
    try {
      expect(await ask(worker, { sab: region.sharedBuffer() })).toEqual([0, 77]);
      expect(new Int32Array(region.buffer)[3]).toBe(77);
    } finally {
      await worker.terminate();
      region.close();
    }
  });

  it('close() while a worker holds the SAB: the region closes, the worker keeps its memory, the last holder unmaps', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const collectGarbage = async () => {
      for (let round = 0; round < 4; round++) {
        gc();
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const name = `bv-shared-close-${process.pid}`;
    const worker = startWorker(`
      const words = new Int32Array(sab);
      reply('ready');
      parentPort.on('message', (value) => {
        if (value === 'exit') return parentPort.close(); // exits naturally, dropping its SAB
        words[0] = value;
        reply(Atomics.load(words, 0));
      });`);
    try {
      await (async () => {
        const region = HostRegion.sharedMemory(4 * HOST_PAGE_SIZE, name);
        expect(await ask(worker, { sab: region.sharedBuffer() })).toBe('ready');
        const view = new Int32Array(region.buffer);
        region.close();
        expect(region.closed).toBe(true);
        expect(view.length).toBe(0); // detached, as without sharing
        expectNativeError(() => region.buffer, 'BV_NATIVE_CLOSED');
        expectNativeError(() => region.sharedBuffer(), 'BV_NATIVE_CLOSED');
        expectNativeError(() => region.release(0, HOST_PAGE_SIZE), 'BV_NATIVE_CLOSED');
        expectNativeError(() => region.residency(0, HOST_PAGE_SIZE), 'BV_NATIVE_CLOSED');
        region.close(); // idempotent
      })();
      // The worker still writes and reads its memory: it was not unmapped under it.
      expect(await ask(worker, 1234)).toBe(1234);
      await collectGarbage();
      // The main thread's buffers are garbage now; the worker's SAB is the last holder.
      expect(mapsMention(name)).toBe(true);
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      worker.postMessage('exit');
      await exited;
    } finally {
      await worker.terminate();
    }
    // Freed with the worker's isolate, on its thread: no collection here was needed.
    expect(mapsMention(name)).toBe(false);
  });

  it('close() with no SharedArrayBuffer made still unmaps at once', () => {
    const name = `bv-shared-never-${process.pid}`;
    const region = HostRegion.sharedMemory(HOST_PAGE_SIZE, name);
    expect(mapsMention(name)).toBe(true);
    region.close();
    expect(mapsMention(name)).toBe(false);
    expectNativeError(() => region.sharedBuffer(), 'BV_NATIVE_CLOSED');
  });
});
