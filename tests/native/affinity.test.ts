// setThreadAffinity / threadAffinity / threadId: per-thread CPU pinning, read back from /proc.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { setThreadAffinity, threadAffinity, threadId } from '../../native/index.ts';
import { ask, expectNativeError, startNativeWorker } from './helpers.ts';

/** The CPUs of a `Cpus_allowed_list` value such as `0-2,5`. */
function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.trim().split(',')) {
    const [first, last = first] = part.split('-').map(Number);
    for (let cpu = first!; cpu <= last!; cpu++) cpus.push(cpu);
  }
  return cpus;
}

/** What the kernel says a thread of this process may run on. */
function allowedCpusOfTask(tid: number): number[] {
  const status = readFileSync(`/proc/self/task/${tid}/status`, 'latin1');
  const line = /^Cpus_allowed_list:\s*(\S+)$/m.exec(status);
  if (!line) throw new Error(`no Cpus_allowed_list in /proc/self/task/${tid}/status`);
  return parseCpuList(line[1]!);
}

/** A worker that pins itself to each CPU list it is sent and answers with what it then sees. */
const PINNER = `
  reply({ tid: native.threadId(), affinity: native.threadAffinity() });
  for (;;) {
    const cpus = await next();
    if (cpus === 'exit') return parentPort.close();
    native.setThreadAffinity(cpus);
    reply({ tid: native.threadId(), affinity: native.threadAffinity() });
  }`;

interface Seen {
  tid: number;
  affinity: number[];
}

describe('thread affinity', () => {
  it('threadId is the kernel id of the calling thread, and threadAffinity matches /proc', () => {
    expect(threadId()).toBe(process.pid); // the main thread's tid is the pid
    const affinity = threadAffinity();
    expect(affinity.length).toBeGreaterThan(0);
    expect(affinity.length).toBeLessThanOrEqual(availableParallelism());
    expect(affinity).toEqual(allowedCpusOfTask(threadId()));
  });

  it('a worker pins only itself: /proc shows its new set, the main thread keeps its own', async () => {
    const mainBefore = threadAffinity();
    const worker = startNativeWorker(PINNER);
    try {
      const start = await ask<Seen>(worker);
      // Loaded in the worker, running on its own thread, which inherited the main thread's set.
      expect(start.tid).not.toBe(threadId());
      expect(start.affinity).toEqual(mainBefore);
      const first = mainBefore[0]!;
      const pinned = await ask<Seen>(worker, [first]);
      expect(pinned).toEqual({ tid: start.tid, affinity: [first] });
      expect(allowedCpusOfTask(start.tid)).toEqual([first]);
      expect(threadAffinity()).toEqual(mainBefore);
      expect(allowedCpusOfTask(process.pid)).toEqual(mainBefore);
      if (mainBefore.length > 1) {
        const last = mainBefore[mainBefore.length - 1]!;
        expect((await ask<Seen>(worker, [last])).affinity).toEqual([last]);
        expect(allowedCpusOfTask(start.tid)).toEqual([last]);
      }
      // Back to every CPU, given in another order: the set is what counts.
      expect((await ask<Seen>(worker, [...mainBefore].reverse())).affinity).toEqual(mainBefore);
      expect(allowedCpusOfTask(start.tid)).toEqual(mainBefore);
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      worker.postMessage('exit');
      await exited;
    } finally {
      await worker.terminate();
    }
    expect(threadAffinity()).toEqual(mainBefore);
  });

  it('bad CPU lists are BV_NATIVE_BAD_ARGUMENT and change nothing', () => {
    const before = threadAffinity();
    const bad: unknown[] = [[], [1.5], [-1], [Number.NaN], [Infinity], ['0'], [0n], [0, 0], [1024], [2 ** 53], [undefined], 0, '0', null, undefined];
    for (const cpus of bad) {
      expectNativeError(() => setThreadAffinity(cpus as number[]), 'BV_NATIVE_BAD_ARGUMENT');
    }
    expect(threadAffinity()).toEqual(before);
  });

  it('a CPU that is not online or allowed is BV_NATIVE_IO EINVAL, and the thread keeps its set', async () => {
    const allowed = threadAffinity();
    const missing = allowed[allowed.length - 1]! + 1; // above every allowed CPU, below CPU_SETSIZE
    expect(missing).toBeLessThan(1024);
    // In a worker: a wrong answer here must not pin the test's own thread.
    const worker = startNativeWorker(`
      const cpus = await next();
      const before = native.threadAffinity();
      reply({
        alone: errorOf(() => native.setThreadAffinity([cpus.missing])),
        withAllowed: errorOf(() => native.setThreadAffinity([cpus.allowed, cpus.missing])),
        before,
        after: native.threadAffinity(),
      });`);
    try {
      const seen = await ask<{ alone: unknown; withAllowed: unknown; before: number[]; after: number[] }>(worker, {
        missing,
        allowed: allowed[0],
      });
      const expected = { code: 'BV_NATIVE_IO', errnoName: 'EINVAL', native: true };
      expect(seen.alone).toEqual(expected);
      // The kernel would quietly run it on the allowed CPU alone; the addon undoes that and refuses.
      expect(seen.withAllowed).toEqual(expected);
      expect(seen.after).toEqual(seen.before);
      expect(seen.before).toEqual(allowed);
    } finally {
      await worker.terminate();
    }
  });
});
