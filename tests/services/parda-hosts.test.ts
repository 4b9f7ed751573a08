/**
 * PARDA across real host processes (the shortened form of scripts/parda.ts; docs/storage-io.md):
 * three tools/host processes share one raw image through the kernel's block throttle (as root;
 * each in its own network namespace), publish in one statistics file and steer their windows.
 *
 * Tolerances are the issue's: the controlled latency within ±20 % of 𝓛, the aggregate throughput
 * within 5 % of uncontrolled, windows within ±25 % of the shares; a stopped host's share goes to
 * the others (their aggregate keeps ≥ 90 % of the device, each grows by > 5 %), and IOPS follow the
 * shares within ±25 %. As root the hosts run at real-time priority (bench/io-parda.ts): without
 * it, other work saturating the CPUs delays each host's completions and IOPS do not follow the
 * windows (docs/storage-io.md, "Results").
 */
import { describe, expect, it } from 'vitest';
import { measurePardaBench, pardaChecks } from '../../bench/io-parda.ts';

describe('PARDA across host processes', () => {
  it('holds latency near 𝓛 at uncontrolled throughput, splits windows by shares, and gives a stopped host\'s share to the others', async () => {
    const figures = await measurePardaBench({ quick: true, hosts: 3, settleMs: 6000, measureMs: 4000 });
    const checks = new Map(pardaChecks(figures).map((check) => [check.name, check]));
    const report = [...checks.values()].map((c) => `${c.pass ? 'PASS' : 'FAIL'} ${c.name}: ${c.value.toFixed(3)}`).join('\n');
    for (const name of [
      'parda: equal shares, controlled latency / threshold',
      'parda: equal shares, controlled / uncontrolled aggregate IOPS',
      'parda: shares, worst window against its share of the total',
      'parda: shares, worst IOPS against its share of the total',
      'parda: a host stops, the others\' aggregate IOPS / all hosts\' before',
      'parda: a host stops, smallest IOPS growth of the others',
    ]) {
      expect(checks.get(name)?.pass, `${name}\n${report}`).toBe(true);
    }
    // The uncontrolled phase really loaded the device: latency well above an unqueued IO's.
    expect(figures.uncontrolled.latencyMs).toBeGreaterThan(5);
    expect(figures.controlled.hosts.every((h) => h.window < 32)).toBe(true);
  }, 240_000);
});
