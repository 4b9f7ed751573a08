/**
 * Issue 16: one host pool shared by hypervisors in worker threads. Frames lent across threads
 * (exportPage / importPage) and broken copy-on-write by every thread at once keep their
 * reference counts exact: the checker compares the pool's frames in use with the count the
 * write plan implies, every thread's view of every page with what it wrote, and the pool after
 * every VM is gone with an empty one.
 */
import type { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { attachToPool, createHypervisor, KernelError } from '../../kernel/index.ts';
import type { FrameHandle, SharedPoolHandle } from '../../kernel/index.ts';
import { startModuleWorker } from '../../services/host/worker-group.ts';
import { expectedValues, fillPage, hammer, pageDigest, writesOf } from './fixtures/shared-pool-plan.ts';

const original = (gpn: number): number => 0x10000 + gpn;

interface WorkerReport { digests: number[] }

function startWorker(data: object): { worker: Worker; ready: Promise<void>; report: Promise<WorkerReport> } {
  const worker = startModuleWorker(new URL('./fixtures/shared-pool-worker.ts', import.meta.url), { workerData: data });
  const ready = new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  const report = ready.then(() => new Promise<WorkerReport>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  }));
  return { worker, ready, report };
}

/** Asks a worker of the first test to free its VM; resolves with the frames in use it saw just before. */
function closed(worker: Worker): Promise<number> {
  return new Promise((resolve, reject) => {
    worker.once('message', (message: { usedFrames: number }) => resolve(message.usedFrames));
    worker.once('error', reject);
    worker.postMessage('close');
  });
}

describe('a host pool shared with worker threads', () => {
  it('keeps reference counts exact under concurrent copy-on-write breaks in three threads', async () => {
    const pages = 2048;
    const rounds = 3000;
    const sides = 3; // the main thread (side 0) and two workers
    for (const seed of [1, 2]) {
      const hv = createHypervisor({ hostMemoryBytes: 64 * 2 ** 20 });
      try {
        const vm = hv.createVm({ name: 'lender', memoryBytes: pages * 4096 });
        const page = new Uint8Array(4096);
        for (let gpn = 0; gpn < pages; gpn++) {
          fillPage(page, original(gpn));
          vm.memory.writePhysical(gpn * 4096, page);
        }
        expect(hv.poolStats().usedFrames).toBe(pages);
        const pool: SharedPoolHandle = hv.sharePool();
        const barrier = new Int32Array(new SharedArrayBuffer(4));
        const workers = [1, 2].map((side) => {
          const handles: FrameHandle[] = Array.from({ length: pages }, (_, gpn) => vm.memory.exportPage(gpn));
          return startWorker({ pool, handles, side, sides, rounds, seed, barrier });
        });
        // Side 0 writes too, as soon as the workers have imported their pages.
        await Promise.all(workers.map((w) => w.ready));
        Atomics.store(barrier, 0, 1);
        Atomics.notify(barrier, 0);
        for (const { gpn, value } of writesOf(0, pages, rounds, seed)) {
          fillPage(page, value);
          vm.memory.writePhysical(gpn * 4096, page);
        }
        const reports = await Promise.all(workers.map((w) => w.report));

        // Every thread sees exactly what it wrote, and the original where it did not write.
        for (let side = 0; side < sides; side++) {
          const expected = expectedValues(side, pages, rounds, seed, original);
          const seen = side === 0 ? Array.from({ length: pages }, (_, gpn) => pageDigest(vm.memory.readPhysical(gpn * 4096, 4096))) : reports[side - 1]!.digests;
          expect(seen).toEqual(expected.map((v) => v | 0));
        }
        // Frames in use: per page, one per side that wrote it (its private copy, or the original
        // kept by the last writer), plus the original while some side still has not written it.
        let expectedFrames = 0;
        const writers = Array.from({ length: pages }, () => new Set<number>());
        for (let side = 0; side < sides; side++) for (const { gpn } of writesOf(side, pages, rounds, seed)) writers[gpn]!.add(side);
        for (const set of writers) expectedFrames += set.size + (set.size < sides ? 1 : 0);
        expect(hv.poolStats().usedFrames).toBe(expectedFrames);
        // Each worker, asked one after the other, sees the same count through the shared state.
        for (const w of workers) {
          const here = hv.poolStats().usedFrames;
          expect(await closed(w.worker)).toBe(here);
        }
        hv.destroyVm(vm);
        const stats = hv.poolStats();
        expect(stats.usedFrames).toBe(0);
        expect(hv.pool.refCount.every((count) => count === 0)).toBe(true);
        // Freed frames read as zero again (the pool's invariant), whichever thread freed them.
        expect(hv.pool.u8.subarray(0, 64 * 2 ** 20).some((byte) => byte !== 0)).toBe(false);
      } finally {
        hv.close();
      }
    }
  }, 120_000);

  it('keeps reference counts and the free lists exact when three threads share and copy the same frames at once', async () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 * 2 ** 20 });
    try {
      const pool = hv.sharePool();
      const frames = Array.from({ length: 8 }, () => hv.pool.allocFrame());
      const barrier = new Int32Array(new SharedArrayBuffer(4));
      const rounds = 20_000;
      const workers = [0, 1].map(() => startModuleWorker(new URL('./fixtures/shared-pool-hammer.ts', import.meta.url), { workerData: { pool, frames, rounds, barrier } }));
      const nextMessage = (worker: Worker): Promise<unknown> => new Promise((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      await Promise.all(workers.map(nextMessage)); // ready
      const done = workers.map(nextMessage);
      Atomics.store(barrier, 0, 1);
      Atomics.notify(barrier, 0);
      hammer(hv.pool, frames, rounds);
      expect(await Promise.all(done)).toEqual(['done', 'done']);
      for (const frame of frames) expect(hv.pool.refCount[frame]).toBe(1);
      const stats = hv.poolStats();
      expect(stats.usedFrames).toBe(frames.length);
      expect(stats.framesReleased).toBe(3 * rounds * frames.length);
      let counted = 0;
      for (let frame = 0; frame < hv.pool.frameCount; frame++) if (hv.pool.refCount[frame] !== 0) counted++;
      expect(counted).toBe(frames.length);
      for (const frame of frames) hv.pool.release(frame);
      expect(hv.poolStats().usedFrames).toBe(0);
      expect(hv.poolStats().wholeFreeRuns).toBe(4);
    } finally {
      hv.close();
    }
  }, 120_000);

  it('hands a frame a worker freed back to the main thread without stale decoded code', async () => {
    // The main thread decodes code in a frame, lends it, drops its own page; the worker frees the
    // frame; the main thread's next allocation may get it back holding other bytes.
    const hv = createHypervisor({ hostMemoryBytes: 4 * 2 ** 20 });
    try {
      const pool = hv.sharePool();
      const allocated: number[] = [];
      hv.pool.onAllocated = ((inner) => (first: number, count: number) => {
        allocated.push(first);
        inner!(first, count);
      })(hv.pool.onAllocated);
      const vm = hv.createVm({ name: 'a', memoryBytes: 16 * 4096 });
      vm.memory.writePhysical(0, new Uint8Array(4096).fill(0x11));
      const frame = allocated[0]!;
      hv.decodeCache.ensureDecoded(frame, hv.pool.i32);
      expect(hv.decodeCache.isDecoded(frame)).toBe(true);
      const handle = vm.memory.exportPage(0);
      vm.memory.releasePage(0);
      expect(hv.decodeCache.isDecoded(frame)).toBe(true); // still lent: the worker holds it
      const worker = startModuleWorker(new URL('./fixtures/shared-pool-freer.ts', import.meta.url), { workerData: { pool, handle } });
      const answer = await new Promise((resolve) => worker.once('message', resolve));
      expect(answer).toBe('done');
      expect(hv.poolStats().usedFrames).toBe(0);
      // The pool's one 4 MiB run, frame included, goes to this thread again.
      expect(hv.pool.allocRun()).toBe(frame & ~1023);
      expect(allocated[1]).toBe(frame & ~1023);
      expect(hv.decodeCache.isDecoded(frame)).toBe(false);
      await worker.terminate();
    } finally {
      hv.close();
    }
  }, 60_000);

  it('refuses handles and pool state that do not belong', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * 2 ** 20 });
    try {
      const vm = hv.createVm({ name: 'a', memoryBytes: 4 * 4096 });
      expect(() => vm.memory.importPage(0, 12345 as FrameHandle)).toThrow(/not a frame handle/);
      expect(() => vm.memory.exportPage(1)).toThrow(/only a present page/);
      expect(() => attachToPool({} as SharedPoolHandle)).toThrow(KernelError);
      const pool = hv.sharePool();
      expect(() => attachToPool({ ...pool, state: new SharedArrayBuffer(16) })).toThrow(/pool state/);
    } finally {
      hv.close();
    }
  });
});
