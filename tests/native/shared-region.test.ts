// HostRegion.sharedBuffer() and attachShared(): one mapping seen from worker threads.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { HOST_PAGE_SIZE, HostRegion } from '../../native/index.ts';
import { ask, expectBytes, expectNativeError, isAllZero, makeTempDir, pattern, startNativeWorker } from './helpers.ts';

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

/** Answers each later message with the bytes [offset, offset + length) of the SAB. */
const READER = `
  reply('ready');
  parentPort.on('message', ({ offset, length }) => reply(new Uint8Array(sab, offset, length).slice()));`;

function mapsMention(name: string): boolean {
  return readFileSync('/proc/self/maps', 'latin1').includes(`/memfd:${name}`);
}

/** Full collections on this thread (finalizers and backing-store deleters run). */
async function collectGarbage(): Promise<void> {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  for (let round = 0; round < 4; round++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The same bytes as helpers' pattern(), for worker bodies (plain JS). */
const WORKER_PATTERN = `const pattern = (length, seed) => {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + (i >>> 12) * 7 + seed) & 0xff;
  return bytes;
};`;

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

describe('HostRegion.attachShared', () => {
  it('in the same thread: another region over the same mapping, and bad values are BV_NATIVE_BAD_ARGUMENT', () => {
    const region = HostRegion.anonymous(4 * HOST_PAGE_SIZE);
    const sab = region.sharedBuffer();
    const attached = HostRegion.attachShared(sab);
    try {
      expect(attached.kind).toBe('anonymous');
      expect(attached.bytes).toBe(region.bytes);
      expect(attached.sharedBuffer()).toBe(sab);
      expect(attached.buffer).toBeInstanceOf(ArrayBuffer);
      new Uint8Array(attached.buffer).set(pattern(region.bytes, 5));
      expectBytes(new Uint8Array(region.buffer), pattern(region.bytes, 5));
      for (const value of [new SharedArrayBuffer(4 * HOST_PAGE_SIZE), sab.slice(0), sab.slice(HOST_PAGE_SIZE), region.buffer, new Uint8Array(sab), undefined, null, 42, {}]) {
        expectNativeError(() => HostRegion.attachShared(value as SharedArrayBuffer), 'BV_NATIVE_BAD_ARGUMENT');
      }
      // Closing the attached region drops its hold only.
      const view = new Uint8Array(attached.buffer);
      attached.close();
      expect(attached.closed).toBe(true);
      expect(view.length).toBe(0);
      expectNativeError(() => attached.release(0, HOST_PAGE_SIZE), 'BV_NATIVE_CLOSED');
      expect(region.closed).toBe(false);
      expectBytes(new Uint8Array(region.buffer), pattern(region.bytes, 5));
      // While the SAB lives the mapping does, so the original's close() does not stop attaching.
      region.close();
      const again = HostRegion.attachShared(sab);
      expectBytes(new Uint8Array(again.buffer), pattern(region.bytes, 5));
      again.close();
    } finally {
      attached.close();
      region.close();
    }
  });

  it('a worker attaches: writes, release, residency and range checks act on the main thread\'s mapping', async () => {
    for (const region of [HostRegion.anonymous(8 * HOST_PAGE_SIZE), HostRegion.sharedMemory(8 * HOST_PAGE_SIZE)]) {
      const page = HOST_PAGE_SIZE;
      const worker = startNativeWorker(`
        ${WORKER_PATTERN}
        const { sab, seed } = await next();
        const region = native.HostRegion.attachShared(sab);
        const page = native.HOST_PAGE_SIZE;
        new Uint8Array(region.buffer).set(pattern(region.bytes, seed));
        region.release(2 * page, 3 * page);
        reply({
          kind: region.kind,
          bytes: region.bytes,
          sameSab: region.sharedBuffer() === sab,
          residency: Array.from(region.residency(0, region.bytes)),
          errors: [
            errorOf(() => region.release(0, region.bytes + page)),
            errorOf(() => region.residency(region.bytes, page)),
            errorOf(() => region.populate(region.bytes - page, 2 * page)),
            errorOf(() => region.flush(region.bytes, 1)),
            errorOf(() => region.release(1, page)),
            errorOf(() => native.HostRegion.attachShared(new SharedArrayBuffer(region.bytes))),
            errorOf(() => native.HostRegion.attachShared(sab.slice(0))),
            errorOf(() => native.HostRegion.attachShared(region.buffer)),
          ],
        });`);
      try {
        const seen = await ask<{ kind: string; bytes: number; sameSab: boolean; residency: number[]; errors: unknown[] }>(worker, {
          sab: region.sharedBuffer(),
          seed: 17,
        });
        expect(seen).toMatchObject({ kind: region.kind, bytes: region.bytes, sameSab: true });
        const bytes = new Uint8Array(region.buffer);
        const expected = pattern(region.bytes, 17);
        expectBytes(bytes.subarray(0, 2 * page), expected.subarray(0, 2 * page));
        expect(isAllZero(bytes.subarray(2 * page, 5 * page))).toBe(true);
        expectBytes(bytes.subarray(5 * page), expected.subarray(5 * page));
        // The released pages were dropped (anonymous) or punched out (memfd) by the worker's call.
        expect(seen.residency.slice(2, 5)).toEqual([0, 0, 0]);
        expect(seen.residency.slice(0, 2)).toEqual([1, 1]);
        const code = (name: string) => ({ code: name, errnoName: undefined, native: true });
        expect(seen.errors).toEqual([
          code('BV_NATIVE_OUT_OF_RANGE'),
          code('BV_NATIVE_OUT_OF_RANGE'),
          code('BV_NATIVE_OUT_OF_RANGE'),
          code('BV_NATIVE_OUT_OF_RANGE'),
          code('BV_NATIVE_UNALIGNED'),
          code('BV_NATIVE_BAD_ARGUMENT'),
          code('BV_NATIVE_BAD_ARGUMENT'),
          code('BV_NATIVE_BAD_ARGUMENT'),
        ]);
      } finally {
        await worker.terminate();
        region.close();
      }
    }
  });

  it('the original closes while a worker holds an attached region: the worker keeps the memory, the last holder unmaps', async () => {
    const name = `bv-attach-close-${process.pid}`;
    const page = HOST_PAGE_SIZE;
    const worker = startNativeWorker(`
      ${WORKER_PATTERN}
      const page = native.HOST_PAGE_SIZE;
      let region = native.HostRegion.attachShared(await next());
      reply('attached');
      for (;;) {
        const command = await next();
        if (command === 'use') {
          // After the main thread closed its region: write, release, read back.
          const bytes = new Uint8Array(region.buffer);
          bytes.set(pattern(region.bytes, 9));
          region.release(page, page);
          const expected = pattern(region.bytes, 9).fill(0, page, 2 * page);
          reply(bytes.every((byte, i) => byte === expected[i]) && region.residency(0, region.bytes).length === 4);
        } else if (command === 'close') {
          const view = new Uint8Array(region.buffer);
          region.close();
          reply([view.length, errorOf(() => region.buffer), errorOf(() => region.residency(0, page))]);
        } else {
          region = null;
          return parentPort.close(); // exits naturally: the isolate frees the last SAB
        }
      }`);
    try {
      await (async () => {
        const region = HostRegion.sharedMemory(4 * page, name);
        expect(await ask(worker, region.sharedBuffer())).toBe('attached');
        region.close();
        expect(region.closed).toBe(true);
        expectNativeError(() => region.residency(0, page), 'BV_NATIVE_CLOSED');
      })();
      await collectGarbage(); // the main thread holds nothing now
      expect(await ask(worker, 'use')).toBe(true);
      expect(mapsMention(name)).toBe(true);
      const closed = { code: 'BV_NATIVE_CLOSED', errnoName: undefined, native: true };
      expect(await ask(worker, 'close')).toEqual([0, closed, closed]);
      // The worker's SAB still holds the mapping after its region closed.
      expect(mapsMention(name)).toBe(true);
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      worker.postMessage('exit');
      await exited;
    } finally {
      await worker.terminate();
    }
    expect(mapsMention(name)).toBe(false);
  });

  it('two workers remap their own ranges of one attached region at once: the range bookkeeping stays exact', async () => {
    const temp = makeTempDir();
    const page = HOST_PAGE_SIZE;
    const span = 8; // pages per worker, one mapping each, so the shared range list is long
    const region = HostRegion.anonymous((1 + 2 * span) * page);
    const rounds = 400;
    const files = [join(temp.dir, 'a.bin'), join(temp.dir, 'b.bin')];
    files.forEach((file, index) => writeFileSync(file, pattern(span * page, 40 + index)));
    const body = `
      const { sab, path, offset, rounds, span } = await next();
      const region = native.HostRegion.attachShared(sab);
      const page = native.HOST_PAGE_SIZE;
      const start = new Int32Array(sab, 0, 1);
      reply('ready');
      Atomics.wait(start, 0, 0);
      let wrong = 0;
      const refused = (at) => errorOf(() => region.release(at, page))?.code === 'BV_NATIVE_UNSUPPORTED';
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < span; i++) region.mapFileShared(offset + i * page, page, path, i * page);
        for (let i = 0; i < span; i++) if (!refused(offset + i * page)) wrong++;
        region.mapFilePrivate(offset, span * page, path, 0); // forgets the shared ranges under it
        for (let i = 0; i < span; i++) if (refused(offset + i * page)) wrong++;
        region.mapFileShared(offset, span * page, path, 0);
        region.unmapPrivate(offset + page, (span - 2) * page); // cuts the shared range in two
        if (!refused(offset) || !refused(offset + (span - 1) * page) || refused(offset + page)) wrong++;
        region.unmapPrivate(offset, span * page);
      }
      region.mapFileShared(offset, span * page, path, 0);
      reply(wrong);`;
    const workers = [startNativeWorker(body), startNativeWorker(body)];
    try {
      const sab = region.sharedBuffer();
      const offsets = [page, (1 + span) * page];
      await Promise.all(workers.map((worker, index) => ask(worker, { sab, path: files[index], offset: offsets[index], rounds, span })));
      const done = Promise.all(workers.map((worker) => ask<number>(worker)));
      const start = new Int32Array(sab, 0, 1);
      Atomics.store(start, 0, 1);
      Atomics.notify(start, 0);
      // Every release was refused exactly where the worker's own range was mapped shared.
      expect(await done).toEqual([0, 0]);
      // What the workers left: both ranges mapped shared; the main thread's view agrees.
      const bytes = new Uint8Array(region.buffer);
      expectBytes(bytes.subarray(page, (1 + span) * page), pattern(span * page, 40));
      expectBytes(bytes.subarray((1 + span) * page), pattern(span * page, 41));
      expectNativeError(() => region.release(span * page, page), 'BV_NATIVE_UNSUPPORTED');
      expectNativeError(() => region.release((1 + span) * page, page), 'BV_NATIVE_UNSUPPORTED');
      region.release(0, page);
      bytes[page] = 0xee;
      region.flush(page, 1);
      expect(readFileSync(files[0]!)[0]).toBe(0xee);
      region.unmapPrivate(0, region.bytes);
      region.release(0, region.bytes);
      expect(isAllZero(bytes)).toBe(true);
    } finally {
      await Promise.all(workers.map((worker) => worker.terminate()));
      region.close();
      temp.remove();
    }
  });
});
