/**
 * The nanokernel's memory (docs/nanokernel.md, "Memory", "The page cache"): page classes that
 * always add up to the RAM the kernel manages, a heap that grows and shrinks and gives its frames
 * back, a page cache that serves repeated disk reads without the disk and yields its pages to
 * processes, and an idle program that costs no CPU. The kernel's own counters are read from guest
 * memory at its symbols while it runs, and every program result is recomputed here.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, runWithResets, type GuestRun, type StandardDevices } from '../../devices/index.ts';
import { attachBalloon } from '../../devices/balloon.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { classes, KERNEL_IMAGE, symbol, toUserMode as toUserModeOf, word, type Classes } from './nanokernel-guest.ts';

const image = KERNEL_IMAGE;
const root = mkdtempSync(join(tmpdir(), 'bv-nanomem-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MiB = 2 ** 20;
const PAGE = 4096;
const FNV_BASIS = 0x811c9dc5;
const FNV_PRIME = 0x01000193;


/** Pages below kernel_end: the kernel image, counted as kernel pages from boot. */
const KERNEL_IMAGE_PAGES = symbol('kernel_end') / PAGE;

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
  run(maxInstructions: number): GuestRun;
}

function boot(bootArgs: string, options: { memoryMiB?: number; disk?: string; balloon?: boolean } = {}): Machine {
  const memoryBytes = (options.memoryMiB ?? 64) * MiB;
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const vm = hv.createVm({ memoryBytes, name: 'nanokernel' });
  vm.loadImage(image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, options.disk === undefined ? { output, bootArgs } : { output, bootArgs, disk: options.disk });
  if (options.balloon) attachBalloon(vm);
  return { hv, vm, devices, output, run: (maxInstructions) => runWithResets(hv, vm, devices, { maxInstructions }) };
}

/** The kernel's page classes, read from its mem_classes and mem_total words. */



const sum = (c: Classes): number => c.free + c.cache + c.anon + c.kernel + c.balloon;

const toUserMode = (m: Machine): void => toUserModeOf(m.hv, m.vm);

const MEMORY = /^\[kernel\] memory: (\d+) pages, (\d+) free, (\d+) cache, (\d+) anon, (\d+) kernel, (\d+) balloon, (\d+) cache hits, (\d+) cache misses, (\d+) oom kills$/;

/** The summary's memory line (boot option stats=memory), parsed. */
function memoryLine(text: string): Classes & { hits: number; misses: number; oomKills: number } {
  const line = text.split('\n').find((l) => l.startsWith('[kernel] memory: '));
  const match = MEMORY.exec(line ?? '');
  expect(match, line).not.toBeNull();
  const [total, free, cache, anon, kernel, balloon, hits, misses, oomKills] = match!.slice(1).map(Number) as number[];
  return { total: total!, free: free!, cache: cache!, anon: anon!, kernel: kernel!, balloon: balloon!, hits: hits!, misses: misses!, oomKills: oomKills! };
}

const STATS = /^\[kernel\] stats: (\d+) context switches, (\d+) preemptions, (\d+) syscalls, (\d+) page faults, (\d+) frames peak, (\d+) frames in use$/m;

function statsLine(text: string): { syscalls: number; pageFaults: number; framesPeak: number; framesInUse: number } {
  const match = STATS.exec(text);
  expect(match, text).not.toBeNull();
  const [, , , syscalls, pageFaults, framesPeak, framesInUse] = match!.map(Number) as number[];
  return { syscalls: syscalls!, pageFaults: pageFaults!, framesPeak: framesPeak!, framesInUse: framesInUse! };
}

/** A raw disk image of random bytes. */
function randomDisk(bytes: number): { path: string; data: Uint8Array } {
  const path = join(mkdtempSync(join(root, 'd')), 'disk.img');
  const data = new Uint8Array(randomBytes(bytes));
  writeFileSync(path, data);
  return { path, data };
}

/** The reader's checksum: FNV-1a over the 32-bit words of the first `sectors` sectors, `passes` times. */
function readerChecksum(data: Uint8Array, sectors: number, passes: number): number {
  const words = new DataView(data.buffer, data.byteOffset, sectors * 512);
  let h = FNV_BASIS;
  for (let pass = 0; pass < passes; pass++) {
    for (let at = 0; at < sectors * 512; at += 4) h = Math.imul(h ^ words.getUint32(at, true), FNV_PRIME) >>> 0;
  }
  return h;
}

const hex8 = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;

// ---------------------------------------------------------------------------------------------

describe('nanokernel page classes', () => {
  it('add up to the RAM the kernel manages, whenever a process runs and in the summary', () => {
    const m = boot('stats=memory sieve 100000 walker 4M random 2 heap 2M 4 2 ping 3');
    m.run(3_000); // through mem_init, before the first program
    expect(classes(m.vm)).toEqual({ total: 16384, free: 16384 - KERNEL_IMAGE_PAGES, cache: 0, anon: 0, kernel: KERNEL_IMAGE_PAGES, balloon: 0 });
    let samples = 0;
    let anonSeen = 0;
    for (;;) {
      const run = m.run(200_000);
      toUserMode(m);
      const now = classes(m.vm);
      expect(sum(now)).toBe(now.total);
      anonSeen = Math.max(anonSeen, now.anon);
      samples++;
      if (run.reason.kind !== 'budget') {
        expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
        break;
      }
    }
    expect(samples).toBeGreaterThan(20);
    expect(anonSeen).toBeGreaterThan(1024); // the walker's 4 MiB, among others
    const text = m.output.text();
    const line = memoryLine(text);
    expect(line.free + line.cache + line.anon + line.kernel + line.balloon).toBe(line.total);
    expect(line).toMatchObject({ total: 16384, cache: 0, anon: 0, kernel: KERNEL_IMAGE_PAGES, balloon: 0, hits: 0, misses: 0, oomKills: 0 });
    expect(statsLine(text).framesInUse).toBe(0);
    // The memory line comes between the stats line and the power-off line.
    const lines = text.trimEnd().split('\n');
    expect(lines.at(-2)).toMatch(/^\[kernel\] memory: /);
    expect(lines.at(-3)).toMatch(/^\[kernel\] stats: /);
  });

  it('prints no memory line without stats=memory, and refuses another stats= value', () => {
    const plain = boot('sieve 10');
    plain.run(10_000_000);
    expect(plain.output.text()).not.toContain('[kernel] memory:');
    const bad = boot('stats=cpu sieve 10');
    expect(bad.run(10_000_000).reason).toEqual({ kind: 'halted', exitCode: 1 });
    expect(bad.output.text()).toContain("[kernel] boot args: bad option 'stats=cpu' (stats=memory)\n");
  });
});

describe('the heap program', () => {
  it('grows its heap in steps, shrinks it back, and every frame returns to the free pool', () => {
    const size = 8 * MiB;
    const pages = size / PAGE;
    const m = boot(`stats=memory heap 8M 8 3`);
    const start = { free: 16384 - KERNEL_IMAGE_PAGES };
    let peakAnon = 0;
    let lowestFree = start.free;
    let shrinks = 0;
    let previousAnon = 0;
    for (;;) {
      const run = m.run(100_000);
      const now = classes(m.vm);
      peakAnon = Math.max(peakAnon, now.anon);
      lowestFree = Math.min(lowestFree, now.free);
      if (now.anon < previousAnon - 100) shrinks++;
      previousAnon = now.anon;
      if (run.reason.kind !== 'budget') break;
    }
    const text = m.output.text();
    expect(text).toContain(`heap: ${size} bytes, 8 steps, 3 rounds, ${3 * pages} pages touched\n`);
    expect(text).toContain('[kernel] pid 1 (heap) exited with code 0\n');
    expect(peakAnon).toBeGreaterThan(0.9 * pages); // (sampled: the exact peak may fall between samples)
    expect(lowestFree).toBeLessThan(start.free - 0.9 * pages);
    expect(shrinks).toBeGreaterThan(2); // it shrank while running, not only at its end
    const stats = statsLine(text);
    expect(stats.pageFaults).toBe(3 * pages); // every page comes in again in every round
    expect(stats.framesPeak).toBeGreaterThanOrEqual(pages);
    expect(stats.syscalls).toBe(1 + 3 * 2 * 8 + 2); // sbrk(0), grow and shrink in every round, write, exit
    // Every frame came back: the free count is what it was at boot.
    expect(memoryLine(text)).toMatchObject({ free: start.free, anon: 0, kernel: KERNEL_IMAGE_PAGES });
  });

  it('refuses a size that is not whole pages, and bad step counts', () => {
    for (const [args, word] of [['heap 5000', '5000'], ['heap 8K 3', '3'], ['heap', ''], ['heap 8K 0', '0']] as const) {
      const m = boot(args);
      expect(m.run(10_000_000).reason).toEqual({ kind: 'halted', exitCode: 2 });
      expect(m.output.text()).toContain(word === '' ? 'heap: missing argument\n' : `heap: bad argument '${word}'\n`);
    }
  });
});

describe('the page cache', () => {
  it('serves the reader\'s later passes without the disk: hits, and disk reads stop growing', () => {
    const { path, data } = randomDisk(MiB);
    const first = boot('stats=memory reader 32', { disk: path });
    expect(first.run(100_000_000).reason).toEqual({ kind: 'halted', exitCode: 0 });
    const oneSector = 32 * 8;
    expect(first.output.text()).toContain(`reader: 32 blocks, 1 pass, ${oneSector} sectors read, checksum ${hex8(readerChecksum(data, oneSector, 1))}\n`);
    expect(memoryLine(first.output.text())).toMatchObject({ hits: oneSector - 32, misses: 32, cache: 32 });
    expect(first.devices.block!.stats.reads).toBe(32); // one 8-sector command per block
    first.devices.block!.close();

    const many = boot('stats=memory reader 32 5', { disk: path });
    const readsAfter: number[] = [];
    for (;;) {
      const run = many.run(200_000);
      readsAfter.push(many.devices.block!.stats.reads);
      if (run.reason.kind !== 'budget') break;
    }
    expect(many.output.text()).toContain(`reader: 32 blocks, 5 passes, ${5 * oneSector} sectors read, checksum ${hex8(readerChecksum(data, oneSector, 5))}\n`);
    const line = memoryLine(many.output.text());
    expect(line).toMatchObject({ misses: 32, hits: 5 * oneSector - 32, cache: 32 });
    expect(line.free + line.cache + line.kernel).toBe(line.total);
    // The disk was read during the first pass only: the same 32 commands, however many passes.
    expect(many.devices.block!.stats.reads).toBe(32);
    expect(readsAfter.at(-1)).toBe(32);
    many.devices.block!.close();
  });

  it('yields its pages to processes that need memory: no OOM kill, the cache shrinks, results stay right', () => {
    // 8 MiB of RAM: the reader fills the cache with 1.5 MiB of disk while a heap grows to
    // 6.5 MiB and shrinks again, 8 times: both do not fit at once.
    const { path, data } = randomDisk(2 * MiB);
    const m = boot('stats=memory reader 384 3 heap 6656K 4 8', { disk: path, memoryMiB: 8 });
    let cachePeak = 0;
    let cacheLowAfterPeak = Infinity;
    for (;;) {
      const run = m.run(200_000);
      const { cache } = classes(m.vm);
      if (cache > cachePeak) {
        cachePeak = cache;
        cacheLowAfterPeak = Infinity;
      }
      cacheLowAfterPeak = Math.min(cacheLowAfterPeak, cache);
      if (run.reason.kind !== 'budget') {
        expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
        break;
      }
    }
    const text = m.output.text();
    expect(text).toContain(`reader: 384 blocks, 3 passes, ${3 * 384 * 8} sectors read, checksum ${hex8(readerChecksum(data, 384 * 8, 3))}\n`);
    expect(text).toContain(`heap: 6815744 bytes, 4 steps, 8 rounds, ${8 * 1664} pages touched\n`);
    expect(text).not.toContain('out of memory');
    const line = memoryLine(text);
    expect(line.oomKills).toBe(0);
    expect(cachePeak).toBe(384); // the whole of what the reader reads, at some point
    expect(cacheLowAfterPeak).toBeLessThan(cachePeak); // and then it gave pages up
    const evicted = word(m.vm, symbol('stat_cache_evicted'));
    expect(evicted).toBeGreaterThan(0);
    expect(line.misses).toBe(384 + evicted); // every block given up was read from the disk again
    expect(line.free + line.cache + line.kernel).toBe(line.total);
    m.devices.block!.close();
  });

  it('is written through: a write reaches the disk at once and a cached block reads the new bytes', () => {
    const { path } = randomDisk(64 * 512);
    // record reads the key's home sector (filling its block), writes, flushes and reads back.
    const m = boot('stats=memory record put k v get k put k w get k', { disk: path });
    expect(m.run(100_000_000).reason).toEqual({ kind: 'halted', exitCode: 0 });
    const text = m.output.text();
    expect(text).toContain('record: get k = v\n');
    expect(text).toContain('record: get k = w\n');
    const line = memoryLine(text);
    expect(line.hits).toBeGreaterThan(0);
    expect(m.devices.block!.stats.writes).toBe(2);
    m.devices.block!.close();
  });

  it('says so without a disk, and when the disk is smaller than asked', () => {
    const none = boot('reader 4');
    expect(none.run(10_000_000).reason).toEqual({ kind: 'halted', exitCode: 2 });
    expect(none.output.text()).toContain('reader: no disk\n');
    const { path } = randomDisk(20 * 512); // 2.5 blocks: 3
    const small = boot('reader 4 reader 3', { disk: path });
    small.run(100_000_000);
    expect(small.output.text()).toContain('reader: the disk has only 3 blocks\n');
    expect(small.output.text()).toContain('reader: 3 blocks, 1 pass, 20 sectors read, checksum ');
    small.devices.block!.close();
  });
});

describe('the idle program', () => {
  it('touches its pages, then sleeps forever: with nothing else to do the VM is idle', () => {
    const m = boot('idle');
    const run = m.run(100_000_000);
    expect(run.reason).toEqual({ kind: 'idle' });
    expect(run.instructions).toBeLessThan(200_000); // boot, 16 pages, a line, and nothing more
    expect(m.output.text()).toContain('idle: 16 pages touched, sleeping\n');
    expect(classes(m.vm).anon).toBeGreaterThanOrEqual(16);
  });

  it('costs next to no instructions over a long virtual time when the kernel has to keep ticking', () => {
    // With a balloon the idle kernel wakes every time slice (to poll it): virtual time races
    // ahead in wfi while the instructions stay few.
    const m = boot('idle', { balloon: true });
    m.run(300_000); // boot and start-up
    const vcpu = m.vm.vcpus[0]!;
    const instret = vcpu.instret;
    const time = vcpu.clock;
    const waits = word(m.vm, symbol('stat_idle_waits'));
    const run = m.run(1_000_000);
    expect(run.reason).toEqual({ kind: 'budget' });
    const ticks = word(m.vm, symbol('stat_idle_waits')) - waits;
    expect(ticks).toBeGreaterThan(4_000);
    expect(vcpu.clock - time).toBeGreaterThan(ticks * 99_000); // a time slice of 100 000 per wake-up
    expect((vcpu.instret - instret) / ticks).toBeLessThan(250); // instructions per wake-up: 0.25 % of the time
    // The other program keeps the CPU; idle takes none of it.
    const busy = boot('idle sieve 1000000');
    busy.run(200_000_000);
    expect(busy.output.text()).toContain('sieve: 78498 primes up to 1000000\n');
  });

  it('leaves the CPU to the others while it sleeps; the run ends idle once they are done', () => {
    const m = boot('idle ping 2');
    expect(m.run(100_000_000).reason).toEqual({ kind: 'idle' });
    expect(m.output.text()).toContain('[kernel] pid 2 (ping) exited with code 0\n');
  });
});
