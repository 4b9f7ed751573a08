/**
 * PARDA (T-19): the law's pure functions, the statistics file's blocks, and the controller over a
 * simulated device (services/storage/model.ts) in simulated time.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  admitted, clusterLatency, decodeBlock, encodeBlock, ewmaLatency, nextWindow, normalisedLatency, PardaController, simulateCluster,
  sizeFactor, StatsFile, StatsFlag, StorageIoError, STATS_BLOCK_BYTES, type HostBlock,
} from '../../services/storage/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-parda-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const statsPath = (): string => join(dir, `stats-${files++}.bvio`);

const block = (overrides: Partial<HostBlock> = {}): HostBlock => ({
  hostId: 3, flags: StatsFlag.LIVE, seq: 7, pid: 1234, instance: 99, periodMs: 250, timestampMs: 1.7e12, latencyNs: 2.5e6,
  rawLatencyNs: 3e6, ioCount: 400, window: 12.5, shares: 2000, iops: 1600, bytesPerSecond: 6.5e6, thresholdNs: 2e6, name: 'host-a', ...overrides,
});

describe('the law', () => {
  it('L(t) = (1 − α)·l + α·L(t − 1); the first sample is taken as is', () => {
    expect(ewmaLatency(null, 5, 0.5)).toBe(5);
    expect(ewmaLatency(10, 2, 0.25)).toBeCloseTo(0.75 * 2 + 0.25 * 10);
    fc.assert(fc.property(fc.double({ min: 0, max: 1e9, noNaN: true }), fc.double({ min: 0, max: 1e9, noNaN: true }), fc.double({ min: 0, max: 0.999, noNaN: true }), (previous, sample, alpha) => {
      const next = ewmaLatency(previous, sample, alpha);
      return next >= Math.min(previous, sample) - 1e-6 && next <= Math.max(previous, sample) + 1e-6;
    }));
  });

  it('normalises a latency to 4 KiB: the factor is 1 at 4 KiB, below 1 for larger IOs and falls with size', () => {
    expect(sizeFactor(4096, 128 * 1024)).toBe(1);
    expect(normalisedLatency(1000, 4096, 0)).toBe(1000);
    expect(normalisedLatency(1000, 65536, 0)).toBeCloseTo(1000 / 16); // knee 0: pure bandwidth
    fc.assert(fc.property(fc.integer({ min: 512, max: 1 << 20 }), fc.integer({ min: 512, max: 1 << 20 }), fc.integer({ min: 0, max: 1 << 20 }), (a, b, knee) => {
      const [small, large] = a <= b ? [a, b] : [b, a];
      return sizeFactor(large, knee) <= sizeFactor(small, knee) + 1e-12;
    }));
  });

  it('the cluster latency is the IO-weighted mean of hosts with IOs; none: null', () => {
    expect(clusterLatency([{ latencyNs: 10, ioCount: 1 }, { latencyNs: 20, ioCount: 3 }])).toBeCloseTo(17.5);
    expect(clusterLatency([{ latencyNs: 10, ioCount: 0 }])).toBeNull();
    expect(clusterLatency([])).toBeNull();
    fc.assert(fc.property(fc.array(fc.record({ latencyNs: fc.double({ min: 1, max: 1e9, noNaN: true }), ioCount: fc.integer({ min: 1, max: 1e6 }) }), { minLength: 1 }), (samples) => {
      const value = clusterLatency(samples)!;
      return value >= Math.min(...samples.map((s) => s.latencyNs)) * (1 - 1e-9) && value <= Math.max(...samples.map((s) => s.latencyNs)) * (1 + 1e-9);
    }));
  });

  it('w(t+1) = (1 − γ)·w + γ·((𝓛/L)·w + β), clamped; no latency: unchanged', () => {
    const base = { window: 20, thresholdNs: 1e6, gamma: 0.5, beta: 2, windowMin: 1, windowMax: 100 };
    expect(nextWindow({ ...base, latencyNs: 2e6 })).toBeCloseTo(0.5 * 20 + 0.5 * (0.5 * 20 + 2));
    expect(nextWindow({ ...base, latencyNs: null })).toBe(20);
    expect(nextWindow({ ...base, latencyNs: 1e3 })).toBe(100);
    expect(nextWindow({ ...base, window: 1, latencyNs: 1e9, beta: 0 })).toBe(1);
    // The window stays at or below the host's peak demand (and at or above w_min).
    expect(nextWindow({ ...base, latencyNs: 0.5e6, demand: 8 })).toBe(8);
    expect(nextWindow({ ...base, window: 5, latencyNs: 0.5e6, demand: 8 })).toBe(8);
    expect(nextWindow({ ...base, window: 5, latencyNs: 0.5e6, demand: 30 })).toBeCloseTo(0.5 * 5 + 0.5 * (2 * 5 + 2));
    expect(nextWindow({ ...base, window: 5, latencyNs: 0.5e6, demand: 0 })).toBe(1);
    fc.assert(fc.property(
      fc.double({ min: 1, max: 256, noNaN: true }), fc.double({ min: 1e3, max: 1e9, noNaN: true }), fc.double({ min: 1e3, max: 1e9, noNaN: true }),
      fc.double({ min: 0.01, max: 1, noNaN: true }), fc.double({ min: 0, max: 10, noNaN: true }),
      (window, latencyNs, thresholdNs, gamma, beta) => {
        const next = nextWindow({ window, latencyNs, thresholdNs, gamma, beta, windowMin: 1, windowMax: 256 });
        if (next < 1 || next > 256) return false;
        // Latency above 𝓛 by more than β can make up shrinks the window; below 𝓛 it never shrinks.
        if (latencyNs <= thresholdNs) return next >= Math.min(window, 256) - 1e-9;
        if ((thresholdNs / latencyNs) * window + beta < window) return next <= window + 1e-9;
        return true;
      },
    ));
  });

  it('windows of hosts seeing one latency converge to the ratio of their β', () => {
    // Two hosts, one device of throughput X (IOs/ns) beyond saturation: L = (w1 + w2) / X.
    let w1 = 100;
    let w2 = 100;
    const X = 1 / 50_000; // 20,000 IOPS
    // The ratio's error shrinks by γ·Σβ/W a step (W = X·L ≈ 100 here): ~20 steps per e-fold.
    for (let step = 0; step < 400; step++) {
      const L = (w1 + w2) / X;
      const input = { latencyNs: L, thresholdNs: 5e6, gamma: 0.5, windowMin: 1, windowMax: 256 };
      [w1, w2] = [nextWindow({ ...input, window: w1, beta: 3 }), nextWindow({ ...input, window: w2, beta: 6 })];
    }
    expect(w2 / w1).toBeCloseTo(2, 2);
    expect((w1 + w2) / X / (5e6 + 9 / X)).toBeCloseTo(1, 4); // L = 𝓛 + Σβ/X
  });

  it('admits whole requests, at least one', () => {
    expect(admitted(0.2)).toBe(1);
    expect(admitted(2.4)).toBe(2);
    expect(admitted(2.6)).toBe(3);
  });
});

describe('the statistics file', () => {
  it('a block round-trips; a torn or corrupted one is detected; zeros are an empty slot', () => {
    const bytes = encodeBlock(block());
    expect(bytes.length).toBe(STATS_BLOCK_BYTES);
    expect(decodeBlock(bytes)).toEqual(block());
    expect(decodeBlock(new Uint8Array(STATS_BLOCK_BYTES))).toBeNull();
    // A read that saw the head of a new write and the tail of the old one.
    const torn = encodeBlock(block({ seq: 8, latencyNs: 9e6 }));
    torn.set(encodeBlock(block()).subarray(128), 128);
    expect(decodeBlock(torn)).toBe('torn');
    fc.assert(fc.property(fc.integer({ min: 0, max: STATS_BLOCK_BYTES - 1 }), fc.integer({ min: 1, max: 255 }), (offset, flip) => {
      const copy = encodeBlock(block());
      copy[offset]! ^= flip;
      return decodeBlock(copy) === 'torn';
    }));
  });

  it('hosts write their own slots and read everyone\'s; a torn slot is retried and then skipped', () => {
    const path = statsPath();
    const a = new StatsFile(path, 0);
    const b = new StatsFile(path, 5);
    a.write(block({ hostId: 0, name: 'a' }));
    b.write(block({ hostId: 5, name: 'b' }));
    const seen = a.readAll();
    expect(seen.blocks.map((x) => [x.hostId, x.name])).toEqual([[0, 'a'], [5, 'b']]);
    expect(seen.torn).toEqual([]);
    // Garbage in slot 2 (a writer that died mid-write, or a stray one): skipped, the others read.
    writeFileSync(path, new Uint8Array(STATS_BLOCK_BYTES).fill(0x5a), { flag: 'r+' });
    const after = b.readAll();
    expect(after.torn).toEqual([0]);
    expect(after.tornReads).toBe(1);
    expect(after.blocks.map((x) => x.hostId)).toEqual([5]);
    a.close();
    b.close();
    expect(() => new StatsFile(path, 256)).toThrow(StorageIoError);
  });
});

const control = (overrides = {}) => ({ statsFile: statsPath(), thresholdMs: 5, periodMs: 100, gamma: 0.2, alpha: 0.5, beta: 1, windowMax: 64, ...overrides });

describe('the controller', () => {
  it('refuses bad settings with the field\'s name, and a slot a live host holds', () => {
    expect(() => PardaController.open({ statsFile: statsPath(), hostId: 0, thresholdMs: 0 })).toThrow(/latency_threshold_ms/);
    expect(() => PardaController.open({ statsFile: statsPath(), hostId: 0, thresholdMs: 5, windowMin: 10, windowMax: 5 })).toThrow(/window_max/);
    expect(() => PardaController.open({ statsFile: statsPath(), hostId: 0, thresholdMs: 5, gamma: 1.5 })).toThrow(/gamma/);
    const options = control();
    const first = PardaController.open({ ...options, hostId: 1 });
    expect(() => PardaController.open({ ...options, hostId: 1 })).toThrow(expect.objectContaining({ code: 'BV_STORAGE_SLOT_BUSY' }));
    first.close(); // a clean stop frees the slot at once
    PardaController.open({ ...options, hostId: 1 }).close();
  });

  it('starts no more than the window and divides it by shares; forget drops queued requests', () => {
    const controller = PardaController.open({ ...control({ windowMax: 6, control: false }), hostId: 0 });
    try {
      controller.addVm('small', 1000);
      controller.addVm('large', 2000);
      const started: string[] = [];
      for (let i = 0; i < 10; i++) controller.submit('small', 4096, () => started.push('small'));
      for (let i = 0; i < 10; i++) controller.submit('large', 4096, () => started.push('large'));
      expect(started).toEqual(Array(6).fill('small')); // the window: 6
      expect(controller.status().queued).toBe(14);
      // As small's IOs complete, large (furthest below its share) starts until in flight is 2:4.
      for (let i = 0; i < 4; i++) controller.complete('small', 4096, 1e6);
      expect(controller.vmStatus('small')!.in_flight).toBe(2);
      expect(controller.vmStatus('large')!.in_flight).toBe(4);
      controller.complete('large', 4096, 1e6);
      expect(started.at(-1)).toBe('large'); // 3 of 2000 shares is below small's 2 of 1000
      controller.complete('small', 4096, 1e6);
      expect(started.at(-1)).toBe('small');
      const smallStarted = started.filter((s) => s === 'small').length;
      controller.forget('small');
      expect(controller.status().queued).toBe(10 - 5);
      for (let i = 0; i < 6; i++) controller.complete(i % 2 === 0 ? 'large' : 'small', 4096, 1e6);
      expect(controller.status().in_flight).toBeLessThanOrEqual(6);
      expect(started.filter((s) => s === 'small').length).toBe(smallStarted); // the forgotten ones never started
    } finally {
      controller.close();
    }
  });

  it('four hosts on a simulated device: equal shares hold the latency near 𝓛 with the throughput of uncontrolled', () => {
    const hosts = [0, 1, 2, 3].map((hostId) => ({ hostId, vms: [{ name: `vm${hostId}`, depth: 32 }] }));
    const base = { device: { servers: 8, fixedUs: 400 }, hosts, durationMs: 30_000, measureFromMs: 15_000 };
    const free = simulateCluster({ ...base, control: control({ control: false, windowMax: 256 }) });
    const freeLatency = free.reduce((s, h) => s + h.latencyMs * h.iops, 0) / free.reduce((s, h) => s + h.iops, 0);
    const freeIops = free.reduce((s, h) => s + h.iops, 0);
    const threshold = 0.6 * freeLatency;
    const held = simulateCluster({ ...base, control: control({ thresholdMs: threshold, windowMax: 256, gamma: 0.5, beta: 2 }) });
    const latency = held.reduce((s, h) => s + h.latencyMs * h.iops, 0) / held.reduce((s, h) => s + h.iops, 0);
    const iops = held.reduce((s, h) => s + h.iops, 0);
    expect(Math.abs(latency / threshold - 1)).toBeLessThan(0.2);
    expect(Math.abs(iops / freeIops - 1)).toBeLessThan(0.03);
    for (const h of held) expect(h.iops / (iops / 4)).toBeGreaterThan(0.9);
  });

  it('shares 1:1:2:2 give windows near 1:1:2:2; a host that stops frees its share', () => {
    const shares = [1000, 1000, 2000, 2000];
    const hosts = shares.map((s, hostId) => ({ hostId, vms: [{ name: `vm${hostId}`, depth: 128, shares: s }], ...(hostId === 3 ? { stopAtMs: 30_000 } : {}) }));
    // 𝓛 = 6 ms: W ≈ 117 (X ≈ 19.5 IOs/ms), windows ≈ 20:20:39:39, below the VMs' depth.
    const options = control({ thresholdMs: 6, windowMax: 256, gamma: 0.5, beta: 2 });
    const before = simulateCluster({ device: { servers: 8, fixedUs: 400 }, hosts, durationMs: 30_000, measureFromMs: 15_000, control: options });
    for (const h of before) expect(h.window / before[0]!.window).toBeCloseTo(shares[h.hostId]! / 1000, 0);
    for (const h of before) expect(Math.abs(h.window / before[0]!.window / (shares[h.hostId]! / 1000) - 1)).toBeLessThan(0.25);
    expect(before[3]!.iops / before[0]!.iops).toBeGreaterThan(1.6);
    const after = simulateCluster({ device: { servers: 8, fixedUs: 400 }, hosts, durationMs: 60_000, measureFromMs: 45_000, control: { ...options, statsFile: statsPath() } });
    expect(after[3]!.iops).toBe(0);
    const total = (figures: typeof before): number => figures.reduce((s, h) => s + h.iops, 0);
    expect(total(after) / total(before)).toBeGreaterThan(0.97); // the others took the device's capacity over
    expect(after[2]!.window).toBeGreaterThan(before[2]!.window * 1.2);
  });
});
