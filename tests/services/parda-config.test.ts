/** The host configuration's `storage_io` and per-VM `io_shares` (docs/storage-io.md): defaults, and refusals naming the field. */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseHostConfig } from '../../services/host/config.ts';

const disk = { path: '/images/shared.raw' };
const vm = (changes: Record<string, unknown> = {}): Record<string, unknown> => ({ name: 'a', image: 'examples/io/random-io.s', memory_mib: 4, disk, ...changes });

function refused(json: unknown): ConfigError {
  try {
    parseHostConfig(json);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('accepted');
}

describe('storage_io', () => {
  it('fills the defaults; the statistics file goes next to the first disk', () => {
    const spec = parseHostConfig({ storage_io: { host_id: 2, latency_threshold_ms: 20 }, vms: [vm({ io_shares: 2000 })] });
    expect(spec.storageIo).toEqual({
      statsFile: '/images/shared.raw.parda', hostId: 2, thresholdMs: 20, gamma: 0.5, alpha: 0.5, beta: 1.5,
      windowMin: 1, windowMax: 256, periodMs: 250, sizeKneeKib: 128, control: true,
    });
    expect(spec.vms[0]!.ioShares).toBe(2000);
    expect(parseHostConfig({ vms: [vm()] }).vms[0]!.ioShares).toBe(1000);
    expect(parseHostConfig({}).storageIo).toBeNull();
  });

  it.each([
    [{ storage_io: { latency_threshold_ms: 20 }, vms: [vm()] }, 'storage_io.host_id'],
    [{ storage_io: { host_id: 256, latency_threshold_ms: 20 }, vms: [vm()] }, 'storage_io.host_id'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 0 }, vms: [vm()] }, 'storage_io.latency_threshold_ms'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 5, gamma: 1.5 }, vms: [vm()] }, 'storage_io.gamma'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 5, alpha: 1 }, vms: [vm()] }, 'storage_io.alpha'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 5, window_min: 8, window_max: 4 }, vms: [vm()] }, 'storage_io.window_max'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 5, period_ms: 5 }, vms: [vm()] }, 'storage_io.period_ms'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 5, windows: 3 }, vms: [vm()] }, 'storage_io.windows'],
    [{ storage_io: { host_id: 0, latency_threshold_ms: 5 }, vms: [vm({ disk: null })] }, 'storage_io'],
    [{ vms: [vm({ io_shares: 0 })] }, 'vms[0].io_shares'],
    [{ vms: [vm({ io_shares: 1.5 })] }, 'vms[0].io_shares'],
  ])('refuses %j at %s', (json, path) => {
    expect(refused(json).path).toBe(path);
  });
});
