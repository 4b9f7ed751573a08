/**
 * bench/io-bus.ts (issue 17, `--only io`): the partition bus's round trips and bursts against a
 * plain copy. A quick run: every path and size completes (measure throws when a transfer is
 * incomplete), the ratios come from the rows, the relay costs the guests more instructions than
 * the echo. Speeds are never asserted.
 */
import { describe, expect, it } from 'vitest';
import { formatIoBus, ioBusChecks, ioBusStepCount, measureIoBus } from '../../bench/io-bus.ts';

describe('bench/io-bus.ts', () => {
  it('measures echo and relay at 64 B and 64 KiB, the plain copy and the bus\'s own move', async () => {
    const steps: string[] = [];
    const figures = await measureIoBus({ quick: true, onStep: (label) => steps.push(label) });
    expect(steps).toHaveLength(ioBusStepCount({ quick: true }));
    expect(figures.rows.map((r) => `${r.path}/${r.payloadBytes}`)).toEqual(['echo/64', 'relay/64', 'echo/65536', 'relay/65536']);
    const row = (path: string, size: number) => figures.rows.find((r) => r.path === path && r.payloadBytes === size)!;
    for (const size of [64, 65536]) {
      expect(row('relay', size).instructionsPerRoundTrip).toBeGreaterThan(row('echo', size).instructionsPerRoundTrip);
      expect(figures.echoVsCopy[size]).toBeCloseTo(row('echo', size).burstMiBps / figures.copyMiBps[size]!, 6);
      expect(figures.relayVsEcho[size]).toBeCloseTo(row('relay', size).burstMiBps / row('echo', size).burstMiBps, 6);
      expect(figures.busVsCopy[size]).toBeCloseTo(figures.busMoveMiBps[size]! / figures.copyMiBps[size]!, 6);
    }
    // A burst through rings smaller than it waits for space on the relay path.
    expect(row('relay', 64).ringFullWaits).toBeGreaterThan(0);
    for (const r of figures.rows) expect(r.roundTripUs).toBeGreaterThan(0);
    expect(ioBusChecks(figures).map((c) => c.name)).toEqual(['io-bus: the bus\'s move of 64 KiB packets / plain host copy of the same bytes']);
    expect(figures.hostRoundTripUs.acrossThreads).toBeGreaterThan(0);
    expect(figures.hostRoundTripUs.oneThread).toBeGreaterThan(0);
    expect(formatIoBus(figures)).toHaveLength(1 + 4 + 1 + 2);
  }, 180_000);
});
