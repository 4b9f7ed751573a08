/**
 * The nanokernel's side of the memory condition (T-7; docs/nanokernel.md "The memory condition",
 * docs/meminfo.md): the meminfo system call against the kernel's page classes and the MEMINFO
 * device's LIMIT (the meminfo program prints what it sees while the host changes the figures), the
 * call without the device, the kvcache program shrinking when the host lowers LIMIT (listen) and
 * not (deaf), and the T-7 experiment's outcome (bench/overcommit.ts runSqueeze): the same host
 * squeeze with the cache listening and deaf. Counts only, never times.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, HostPressure, type MeminfoDevice } from '../../devices/index.ts';
import { createHypervisor, Mode, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { expectedChecksum, parseCacheLine, runSqueeze, type SqueezeOutcome, type SqueezeSetup } from '../../bench/overcommit.ts';

const REPO = join(import.meta.dirname, '..', '..');
const { image, symbols } = assembleFile(join(REPO, 'examples/nanokernel/kernel.s'));
const root = mkdtempSync(join(tmpdir(), 'bv-nanomeminfo-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MiB = 2 ** 20;
const PAGE = 4096;
const HEAP_BASE = 0x4040_0000;
/** proc.s: the PCB's heap break, and the size of a PCB. */
const P_BRK = 84;
const PCB_BYTES = 128;

const at = (name: string): number => {
  const value = symbols.get(name);
  if (value === undefined) throw new Error(`the kernel has no symbol ${name}`);
  return value >>> 0;
};

interface Guest {
  hv: Hypervisor;
  vm: Vm;
  meminfo: MeminfoDevice | null;
  output: CaptureSink;
}

function boot(bootArgs: string, options: { meminfo?: boolean; disk?: string } = {}): Guest {
  const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
  const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'nanokernel' });
  vm.loadImage(image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs, meminfo: options.meminfo ?? true, ...(options.disk === undefined ? {} : { disk: options.disk }) });
  return { hv, vm, meminfo: devices.meminfo, output };
}

/** Runs in steps until `done()`; fails when the VM stops first or it never happens. */
function runUntil(g: Guest, done: () => boolean, step = 100_000, limit = 5_000): void {
  for (let i = 0; i < limit && !done(); i++) {
    const [result] = g.hv.run({ maxInstructions: step }, [g.vm]);
    if (result!.reason.kind !== 'budget' && !done()) throw new Error(`the VM stopped: ${JSON.stringify(result!.reason)}\n${g.output.text()}`);
  }
  if (!done()) throw new Error(`never happened\n${g.output.text()}`);
}

/** On to user mode, one instruction at a time: the kernel's counts are consistent there. */
function toUserMode(g: Guest): void {
  for (let i = 0; i < 1_000_000 && g.vm.vcpus[0]!.mode !== Mode.USER; i++) g.hv.run({ maxInstructions: 1 }, [g.vm]);
}

/** The kernel's page classes (mm.s mem_classes: free, cache, anon, kernel, balloon). */
function classes(vm: Vm): { free: number; cache: number; anon: number; kernel: number; balloon: number } {
  const bytes = vm.memory.readPhysical(at('mem_classes') as never, 20);
  const [free, cache, anon, kernel, balloon] = Array.from({ length: 5 }, (_, i) => new DataView(bytes.buffer, bytes.byteOffset).getUint32(4 * i, true)) as [number, number, number, number, number];
  return { free, cache, anon, kernel, balloon };
}

/** A process slot's heap pages (its break above HEAP_BASE). */
function heapPages(vm: Vm, slot: number): number {
  const bytes = vm.memory.readPhysical((at('procs') + PCB_BYTES * slot + P_BRK) as never, 4);
  return (new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) - HEAP_BASE) / PAGE;
}

const lines = (g: Guest, prefix: string): string[] => g.output.text().split('\n').filter((line) => line.startsWith(prefix));
const finished = (g: Guest) => () => g.vm.stopReason.kind === 'halted';

/** What the call must return: min(free + cache, LIMIT − (kernel + anonymous)), signed. */
function available(vm: Vm, limit: number): number {
  const c = classes(vm);
  return Math.min(c.free + c.cache, limit - c.kernel - c.anon);
}

describe('the meminfo system call', () => {
  it('returns min(free + cache, LIMIT − pages in use) with the pressure and SEQ, as the host changes them', () => {
    const disk = join(mkdtempSync(join(root, 'd')), 'disk.img');
    writeFileSync(disk, randomBytes(512 * 1024));
    const g = boot('idle meminfo 6 reader 64', { disk });
    const meminfo = g.meminfo!;
    const seen = (n: number) => () => lines(g, 'meminfo:').length >= n;
    runUntil(g, () => seen(1)() && g.output.text().includes('[kernel] pid 3 (reader) exited with code 0'));
    toUserMode(g);
    expect(g.output.text()).toContain('[kernel] meminfo: limit 4096 pages, pressure 0\n');
    expect(lines(g, 'meminfo:')[0]).toMatch(/^meminfo: \d+ pages available, limit 4096 pages, pressure 0, seq 0$/);

    // LIMIT = RAM (no balloon): free + cache, the reader's blocks included. The pressure alone moves SEQ.
    meminfo.setCondition({ pressure: HostPressure.SOFT });
    runUntil(g, seen(2));
    toUserMode(g);
    const c0 = classes(g.vm);
    expect(c0.cache).toBe(64);
    expect(4096 - c0.kernel - c0.anon).toBe(c0.free + c0.cache);
    expect(lines(g, 'meminfo:')[1]).toBe(`meminfo: ${c0.free + 64} pages available, limit 4096 pages, pressure 1, seq 1`);

    meminfo.setCondition({ limitPages: 1000 });
    runUntil(g, seen(3));
    toUserMode(g);
    const c = classes(g.vm);
    expect(1000 - c.kernel - c.anon).toBeLessThan(c.free + c.cache); // the host's limit is the smaller
    expect(lines(g, 'meminfo:')[2]).toBe(`meminfo: ${1000 - c.kernel - c.anon} pages available, limit 1000 pages, pressure 1, seq 2`);

    // Below what the guest uses already: negative, the pages it is over by.
    meminfo.setCondition({ limitPages: 40, pressure: HostPressure.HARD });
    runUntil(g, seen(4));
    toUserMode(g);
    const over = available(g.vm, 40);
    expect(over).toBeLessThan(0);
    expect(lines(g, 'meminfo:')[3]).toBe(`meminfo: ${over} pages available, limit 40 pages, pressure 2, seq 3`);

    meminfo.setCondition({ pressure: HostPressure.LOW });
    runUntil(g, seen(5));
    toUserMode(g);
    expect(lines(g, 'meminfo:')[4]).toBe(`meminfo: ${available(g.vm, 40)} pages available, limit 40 pages, pressure 3, seq 4`);
    meminfo.setCondition({ limitPages: 4096, pressure: HostPressure.HIGH });
    runUntil(g, () => g.output.text().includes('[kernel] pid 2 (meminfo) exited with code 0')); // its sixth line, then it ends
    expect(lines(g, 'meminfo:')[5]).toMatch(/^meminfo: \d+ pages available, limit 4096 pages, pressure 0, seq 5$/);
    expect(meminfo.seqReads).toBeGreaterThanOrEqual(6);
  });

  it('without the device reports no host limit: free + cache pages', () => {
    const g = boot('idle meminfo 3', { meminfo: false });
    // The classes as the call sees them: at its entry (the program exits right after printing).
    const seen: ReturnType<typeof classes>[] = [];
    const entry = at('sys_meminfo');
    g.vm.vcpus[0]!.tracer = (_vcpu, pc) => {
      if (pc === entry) seen.push(classes(g.vm));
    };
    runUntil(g, () => g.output.text().includes('[kernel] pid 2 (meminfo) exited with code 0'));
    expect(g.output.text()).not.toContain('[kernel] meminfo:'); // no banner line without the device
    expect(seen).toHaveLength(1); // nothing can change without the device: one look, one line
    expect(lines(g, 'meminfo:')).toEqual([`meminfo: ${seen[0]!.free + seen[0]!.cache} pages available, no host limit`]);
  });
});

/** The deaf cache as a model: slots, a clock with referenced bits (set on a hit, clear on insert). */
function cacheModel(entries: number, ops: number): { hits: number; misses: number; evictions: number } {
  const keys = 4 * entries;
  const slotOf = new Map<number, number>();
  const keyOf: number[] = [];
  const ref: number[] = [];
  let [x, hand, hits, misses, evictions] = [0x2545_f491, 0, 0, 0, 0];
  for (let op = 0; op < ops; op++) {
    x = (Math.imul(x, 1_664_525) + 1_013_904_223) >>> 0;
    const key = Math.floor((Number((((BigInt(x) * BigInt(x)) >> 32n) * BigInt(x)) >> 32n) * keys) / 2 ** 32);
    const slot = slotOf.get(key);
    if (slot !== undefined) {
      hits++;
      ref[slot] = 1;
      continue;
    }
    misses++;
    let s = keyOf.length;
    if (s >= entries) {
      for (;; hand++) {
        if (hand >= keyOf.length) hand = 0;
        if (ref[hand] === 0) break;
        ref[hand] = 0;
      }
      s = hand++;
      slotOf.delete(keyOf[s]!);
      evictions++;
    }
    keyOf[s] = key;
    ref[s] = 0;
    slotOf.set(key, s);
  }
  return { hits, misses, evictions };
}

describe('kvcache', () => {
  it('deaf: the model\'s hits, misses and evictions, and the checksum whatever the cache does', () => {
    const g = boot('kvcache 300 3000 deaf', { meminfo: false });
    runUntil(g, finished(g), 1_000_000, 200);
    const cache = parseCacheLine(g.output.text())!;
    expect(cache).toEqual({ ...cacheModel(300, 3000), ops: 3000, entries: 300, peak: 300, shrinks: 0, dropped: 0, changes: 0, checksum: expectedChecksum(300, 3000) });
  });

  it('listen shrinks when the host lowers LIMIT (its heap and the kernel\'s free count move); deaf does not', () => {
    const squeeze = (mode: 'listen' | 'deaf') => {
      const g = boot(`stats=memory kvcache 2000 16000 ${mode}`);
      runUntil(g, () => heapPages(g.vm, 0) === 7 + 2000); // full: the index (7 pages), then 2000 entries
      toUserMode(g);
      const before = { heap: heapPages(g.vm, 0), classes: classes(g.vm) };
      g.meminfo!.setCondition({ limitPages: 1200, pressure: HostPressure.SOFT });
      return { g, before };
    };
    // listen: within a few time slices its heap fell and the kernel's free pages rose by as much.
    const listen = squeeze('listen');
    runUntil(listen.g, () => heapPages(listen.g.vm, 0) < listen.before.heap - 500, 100_000, 100);
    toUserMode(listen.g);
    const after = { heap: heapPages(listen.g.vm, 0), classes: classes(listen.g.vm) };
    expect(after.classes.free - listen.before.classes.free).toBe(listen.before.classes.anon - after.classes.anon);
    // It goes on until the kernel and the processes use LIMIT less twice the margin (128 << soft).
    const inUse = (): number => classes(listen.g.vm).kernel + classes(listen.g.vm).anon;
    runUntil(listen.g, () => inUse() <= 1200 - 2 * 256, 100_000, 100);
    toUserMode(listen.g);
    expect(inUse()).toBeGreaterThan(1200 - 2 * 256 - 8);
    runUntil(listen.g, finished(listen.g), 1_000_000, 500);
    const shrunk = parseCacheLine(listen.g.output.text())!;
    expect(shrunk).toMatchObject({ ops: 16000, shrinks: 1, changes: 1, checksum: expectedChecksum(2000, 16000) });
    expect(shrunk.peak).toBeGreaterThanOrEqual(1990);
    expect(shrunk.entries).toBeLessThan(1200 - 256); // grown back to leave one margin, no more
    // deaf: never looks, keeps its heap and its pages.
    const deaf = squeeze('deaf');
    for (let i = 0; i < 30; i++) deaf.g.hv.run({ maxInstructions: 100_000 }, [deaf.g.vm]);
    toUserMode(deaf.g);
    expect(heapPages(deaf.g.vm, 0)).toBe(deaf.before.heap);
    expect(classes(deaf.g.vm)).toEqual(deaf.before.classes);
    runUntil(deaf.g, finished(deaf.g), 1_000_000, 500);
    expect(parseCacheLine(deaf.g.output.text())).toMatchObject({ entries: 2000, peak: 2000, shrinks: 0, dropped: 0, changes: 0, checksum: expectedChecksum(2000, 16000) });
    expect(deaf.g.meminfo!.seqReads).toBe(0);
  });

  it('costs under 250 instructions a look at the condition (listen with no limit reached runs the deaf cache\'s operations)', () => {
    const runs = (['listen', 'deaf'] as const).map((mode) => {
      const g = boot(`kvcache 500 4000 ${mode}`);
      runUntil(g, finished(g), 1_000_000, 200);
      return { cache: parseCacheLine(g.output.text())!, instructions: g.vm.instructionsRetired, looks: g.meminfo!.seqReads };
    });
    const [listen, deaf] = runs as [(typeof runs)[0], (typeof runs)[0]];
    expect(listen.cache).toEqual(deaf.cache); // the same operations
    expect(listen.looks).toBe(4000 / 32 + 1);
    expect((listen.instructions - deaf.instructions) / listen.looks).toBeLessThan(250);
  });
});

describe('the T-7 experiment (the same squeeze, kvcache listening and deaf)', () => {
  const setup = (point: number, driver: 'bench' | 'scheduler'): SqueezeSetup => ({
    image, memoryBytes: 16 * MiB, entries: 3072, ops: 12_000, targetPages: 2048, squeezeAtFrames: point * 3072, swapDirectory: mkdtempSync(join(root, 's')), driver,
  });
  const outcomes = new Map<string, SqueezeOutcome>();
  const outcome = (point: number, mode: 'listen' | 'deaf', driver: 'bench' | 'scheduler' = 'bench'): SqueezeOutcome => {
    const key = `${point} ${mode} ${driver}`;
    if (!outcomes.has(key)) outcomes.set(key, runSqueeze(setup(point, driver), mode));
    return outcomes.get(key)!;
  };

  it('squeezed when full: listen shrinks, no OOM kill and no swap-out, the balloon reaches its target; deaf is swapped', () => {
    const listen = outcome(1, 'listen');
    const deaf = outcome(1, 'deaf');
    for (const o of [listen, deaf]) {
      expect(o.squeezedAt).not.toBeNull();
      expect(o.exitCode).toBe(0);
      expect(o.cache!.checksum).toBe(expectedChecksum(3072, 12_000)); // swapped or shrunk, every value read back right
    }
    expect(listen).toMatchObject({ oomKills: 0, swapOuts: 0, swapIns: 0, balloonActual: 2048 });
    expect(listen.cache!.shrinks).toBeGreaterThanOrEqual(1);
    expect(listen.cache!.entries).toBeLessThan(2048);
    expect(deaf.oomKills).toBe(0);
    expect(deaf.balloonActual).toBeLessThan(2048); // it could not get the pages the cache holds…
    expect(deaf.swapOuts).toBeGreaterThan(1000); // … so the host swapped, again and again
    expect(deaf.swapIns).toBeGreaterThan(500);
    expect(deaf.cache!.entries).toBe(3072);
    // Lower hit rate, but bounded: at least half of the deaf cache's.
    expect(listen.hitRate!).toBeLessThan(deaf.hitRate!);
    expect(listen.hitRate!).toBeGreaterThan(deaf.hitRate! / 2);
  });

  it('squeezed half full: listen stays within the limit; deaf grows into the balloon\'s pages and is OOM-killed', () => {
    const listen = outcome(0.5, 'listen');
    const deaf = outcome(0.5, 'deaf');
    expect(listen).toMatchObject({ oomKills: 0, swapOuts: 0, exitCode: 0, balloonActual: 2048 });
    expect(listen.cache!.shrinks).toBe(0); // it stopped growing in time
    expect(listen.cache!.peak).toBeLessThan(2048);
    expect(deaf).toMatchObject({ oomKills: 1, cache: null, exitCode: 2, balloonActual: 2048 });
    expect(deaf.console).toMatch(/^\[kernel\] killed pid 1 \(kvcache\): out of memory at 0x[0-9a-f]{8}, pc 0x[0-9a-f]{8}$/m);
  });

  it('squeezed by the memory scheduler (the maximum lowered): listen shrinks and its freed pages go to the balloon, no swap; deaf is swapped', () => {
    for (const point of [1, 0.5]) {
      const listen = outcome(point, 'listen', 'scheduler');
      const deaf = outcome(point, 'deaf', 'scheduler');
      for (const o of [listen, deaf]) {
        expect(o.squeezedAt).not.toBeNull();
        expect(o).toMatchObject({ oomKills: 0, exitCode: 0 }); // the scheduler balloons only cheap pages: nobody is killed
        expect(o.cache!.checksum).toBe(expectedChecksum(3072, 12_000));
      }
      expect(listen).toMatchObject({ swapOuts: 0, swapIns: 0 });
      // MEMINFO's limit is the maximum, 2048 pages: the cache ends (and, squeezed half full, stays) below it.
      expect(listen.cache!.entries).toBeLessThan(2048);
      if (point < 1) expect(listen.cache!.peak).toBeLessThan(2048);
      expect(deaf.cache!.entries).toBe(3072);
      expect(deaf.swapOuts).toBeGreaterThan(1000);
      expect(deaf.swapIns).toBeGreaterThan(500);
    }
    // Full when squeezed: the listening cache shrank and the balloon took the pages it gave back.
    const full = outcome(1, 'listen', 'scheduler');
    expect(full.cache!.shrinks).toBeGreaterThanOrEqual(1);
    expect(full.balloonActual).toBeGreaterThan(500);
  });
});
