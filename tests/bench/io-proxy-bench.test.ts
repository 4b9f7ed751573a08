/**
 * bench/io-proxy.ts (issue 17, `--only io`): the proxied disk against the block device itself.
 * On a small disk: every arrangement runs every workload with the same program output (the
 * bench refuses otherwise), the request counts follow from the versions, and the ratios come
 * from the rows. Speeds are never asserted.
 */
import { describe, expect, it } from 'vitest';
import { formatIoProxy, ioProxyChecks, ioProxyStepCount, measureIoProxy } from '../../bench/io-proxy.ts';

describe('bench/io-proxy.ts', () => {
  it('measures direct, bus 2.0 and bus 1.0 on both workloads, with requests as the versions dictate', async () => {
    const steps: string[] = [];
    const figures = await measureIoProxy({ sectors: 256, puts: 10, rounds: 1, onStep: (label) => steps.push(label) });
    expect(steps).toHaveLength(ioProxyStepCount({ rounds: 1 }));
    expect(figures.rows.map((r) => `${r.workload}/${r.arrangement}`)).toEqual(['read/direct', 'read/bus 2.0', 'read/bus 1.0', 'write/direct', 'write/bus 2.0', 'write/bus 1.0']);
    const row = (name: string) => figures.rows.find((r) => `${r.workload}/${r.arrangement}` === name)!;
    // Reading the disk once: one request per 8-sector block on 2.0, one per sector on 1.0, plus GET_INFO.
    expect(row('read/bus 2.0').requests).toBe(256 / 8 + 1);
    expect(row('read/bus 1.0').requests).toBe(256 + 1);
    expect(row('read/direct').requests).toBe(0);
    expect(row('read/direct').serverInstructionsPerSector).toBe(0);
    // The proxy costs the client instructions, and 1.0 more than 2.0.
    expect(row('read/bus 2.0').clientInstructionsPerSector).toBeGreaterThan(row('read/direct').clientInstructionsPerSector);
    expect(row('read/bus 1.0').clientInstructionsPerSector).toBeGreaterThan(row('read/bus 2.0').clientInstructionsPerSector);
    for (const r of figures.rows) {
      expect(r.wallMs).toBeGreaterThan(0);
      expect(r.kibPerSecond).toBeCloseTo((r.sectors * 512) / 1024 / (r.wallMs / 1000), 6);
    }
    expect(figures.readRatio).toBeCloseTo(row('read/bus 2.0').kibPerSecond / row('read/direct').kibPerSecond, 6);
    expect(figures.writeRatio).toBeCloseTo(row('write/bus 2.0').kibPerSecond / row('write/direct').kibPerSecond, 6);
    expect(ioProxyChecks(figures).map((c) => c.name)).toEqual(['io-proxy: read throughput, disk proxied over the bus (2.0) / the block device itself']);
    expect(formatIoProxy(figures)).toHaveLength(1 + 6 + 1);
  }, 120_000);
});
