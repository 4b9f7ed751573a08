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
import { hammer } from './fixtures/shared-pool-plan.ts';
import { runSharedPoolTrial } from './fixtures/shared-pool-trial.ts';

describe('a host pool shared with worker threads', () => {
  it('keeps reference counts exact under concurrent copy-on-write breaks in three threads', async () => {
    // The trial's checker, for two seeds here; scripts/shared-pool-soak.ts runs many more.
    for (const seed of [1, 2]) {
      const result = await runSharedPoolTrial({ seed, pages: 2048, rounds: 3000 });
      expect(result.mismatches).toEqual([]);
      expect(result.usedFrames).toBe(result.expectedFrames);
      // Each worker, asked one after the other, sees the same count through the shared state.
      for (const [here, theirs] of result.workerCounts) expect(theirs).toBe(here);
      expect(result).toMatchObject({ usedAfter: 0, refCountsZero: true, poolZero: true });
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
