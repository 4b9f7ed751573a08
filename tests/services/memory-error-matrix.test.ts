/**
 * A sample of the memory-error injection matrix (scripts/error-matrix.ts, docs/memory-errors.md
 * "The injection matrix"): nanokernel guests computing CRC-32 and walker checksums, one error
 * per trial in every page kind × window (1, 8, 16, 64 bits) × report timing (now, on access),
 * with no method, each recovery method alone and all three. Silently consumed must be 0; every
 * method recovers where it should; the hash never rebuilds a 64-bit window (k = 16).
 */
import { describe, expect, it } from 'vitest';
import { DERIVED_KINDS, METHOD_SETS, PAGE_KINDS, runErrorMatrix, TIMINGS, WINDOWS, matrixTable } from '../../scripts/error-matrix.ts';

describe('the memory-error injection matrix (sample)', () => {
  it('80 seeded trials over every page kind, window and timing: never silently consumed; clean copy, parity and hash each recover; hash never a 64-bit window', () => {
    const result = runErrorMatrix({ trials: 80, seed: 1 });
    const trials = result.trials;
    console.log(`[matrix] ${trials.length} trials, seed 1, ${(result.ms / 1000).toFixed(1)} s\n${matrixTable(trials)}`);
    expect(trials.length + result.skipped).toBe(80);
    // A page of each first-hand kind exists at every point tried; the derived kinds (swapped-in,
    // lazily restored, shared) only where the guest brought such pages about: a few may be skipped.
    expect(result.skipped).toBeLessThanOrEqual(8);
    for (const kind of PAGE_KINDS) {
      for (const windowBits of WINDOWS) {
        for (const report of TIMINGS) {
          const n = trials.filter((t) => t.kind === kind && t.windowBits === windowBits && t.report === report).length;
          if (!DERIVED_KINDS.includes(kind)) expect(n, `${kind} ${windowBits} ${report}`).toBeGreaterThan(0);
        }
      }
      expect(trials.filter((t) => t.kind === kind).length, kind).toBeGreaterThanOrEqual(4);
    }
    for (const set of METHOD_SETS) expect(trials.some((t) => t.methods === set)).toBe(true);
    // Silently consumed = 0 (and nothing unexplained).
    const bad = trials.filter((t) => t.outcome === 'silent' || t.outcome === 'anomaly');
    expect(bad, JSON.stringify(bad, null, 1)).toEqual([]);
    // Each method recovers where it should.
    expect(trials.some((t) => t.outcome === 'recovered-by-clean-copy' && t.kind === 'code')).toBe(true);
    expect(trials.some((t) => t.outcome === 'recovered-by-hash' && (t.kind === 'clean-data' || t.kind === 'code') && t.windowBits <= 16)).toBe(true);
    expect(trials.some((t) => t.outcome === 'recovered-by-parity')).toBe(true);
    expect(trials.some((t) => t.outcome === 'machine-check')).toBe(true);
    // A recovered page was recovered by a method of the trial's set; none by a method it does not have.
    for (const t of trials.filter((x) => x.outcome.startsWith('recovered-by-'))) {
      expect(t.methods === 'all' || t.outcome === `recovered-by-${t.methods}`, JSON.stringify(t)).toBe(true);
    }
    // k = 16: the hash never rebuilds a 64-bit window.
    expect(trials.filter((t) => t.windowBits === 64 && t.outcome === 'recovered-by-hash')).toEqual([]);
    // A machine check inside the handler stops the VM (SPEC.md §7.6): no livelock, no trap loop, and a
    // double machine check only where the handler itself depends on the page (kernel code, data, page tables).
    expect(trials.filter((x) => x.outcome === 'mc-livelock' || x.outcome === 'trap-loop-stop')).toEqual([]);
    for (const t of trials.filter((x) => x.outcome === 'double-machine-check')) expect(['kernel-data', 'code', 'page-table'], JSON.stringify(t)).toContain(t.kind);
  }, 180_000);
});
