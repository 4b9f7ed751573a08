// Shares and the idle memory tax (services/memory/shares.ts, T-8): ρ, k and the water-filling
// reclaim against hand-computed values. The scheduler's use of them on real guests is in
// reclaim.test.ts ("shares and the idle memory tax pick the victim").
import { describe, expect, it } from 'vitest';
import { adjustedSharesPerPage, defaultShares, idleCost, reclaimQuotas, SharesError, type ShareHolder } from '../../services/memory/index.ts';

const holder = (pages: number, activeFraction: number, extra: Partial<ShareHolder> = {}): ShareHolder => ({
  shares: 1000, pages, activeFraction, minPages: 0, canGive: pages, ...extra,
});

describe('the idle memory tax', () => {
  it('k = 1 / (1 − τ): 1 without a tax, 4 at the default 0.75, 100 at 0.99; τ out of range is refused', () => {
    expect(idleCost(0)).toBe(1);
    expect(idleCost(0.75)).toBe(4);
    expect(idleCost(0.5)).toBe(2);
    expect(idleCost(0.99)).toBeCloseTo(100, 9);
    for (const bad of [-0.1, 1, 0.995, Number.NaN, Infinity]) expect(() => idleCost(bad)).toThrow(SharesError);
  });

  it('ρ = S / (P · (f + k · (1 − f))), by hand', () => {
    // S 1000, P 500, f 0.2, τ 0.75: k 4, f + k(1 − f) = 0.2 + 3.2 = 3.4, ρ = 1000 / 1700.
    expect(adjustedSharesPerPage(1000, 500, 0.2, 0.75)).toBeCloseTo(1000 / 1700, 12);
    // Without a tax ρ is plain shares per page, whatever f.
    expect(adjustedSharesPerPage(1000, 500, 0.2, 0)).toBe(2);
    // A fully active VM pays no tax; a fully idle one pays k per page.
    expect(adjustedSharesPerPage(1000, 500, 1, 0.75)).toBe(2);
    expect(adjustedSharesPerPage(1000, 500, 0, 0.75)).toBe(0.5);
    // f outside [0, 1] is clamped; no pages: nothing to take (Infinity).
    expect(adjustedSharesPerPage(1000, 500, 1.5, 0.75)).toBe(2);
    expect(adjustedSharesPerPage(1000, 0, 0.5, 0.75)).toBe(Infinity);
  });

  it('default shares: 10 per MiB of guest RAM (ESX normal)', () => {
    expect(defaultShares(64 * 2 ** 20)).toBe(640);
    expect(defaultShares(4096)).toBe(1);
  });
});

describe('reclaim by water-filling on ρ', () => {
  it('equal shares, no tax: takes from the larger holder until both hold the same, then from both', () => {
    expect(reclaimQuotas(600, [holder(1000, 1), holder(600, 1)], 0)).toEqual([500, 100]);
  });

  it('with the tax, the idle VM gives until its ρ meets the active one’s; without it they give alike', () => {
    // A active (f 1), B idle (f 0), 1000 pages each, equal shares. τ 0.75: ρ_B = S / (4 P_B) is
    // lowest until 4 P_B = 1000, i.e. for its first 750 pages.
    expect(reclaimQuotas(500, [holder(1000, 1), holder(1000, 0)], 0.75)).toEqual([0, 500]);
    // Past that, both give keeping ρ equal (P_A = 4 P_B): of the last 150, A 120 and B 30.
    expect(reclaimQuotas(900, [holder(1000, 1), holder(1000, 0)], 0.75)).toEqual([120, 780]);
    expect(reclaimQuotas(500, [holder(1000, 1), holder(1000, 0)], 0)).toEqual([250, 250]);
  });

  it('more shares protect a VM; minimum reservations and what a mechanism can give bound each take', () => {
    // A has twice B's shares: B gives until P_B = P_A / 2.
    expect(reclaimQuotas(400, [holder(1000, 1, { shares: 2000 }), holder(1000, 1)], 0)).toEqual([0, 400]);
    // B keeps 800 whatever happens: it gives 200, A the rest.
    expect(reclaimQuotas(500, [holder(1000, 1), holder(1000, 0, { minPages: 800 })], 0.75)).toEqual([300, 200]);
    // B's balloon can give only 100 now.
    expect(reclaimQuotas(500, [holder(1000, 1), holder(1000, 0, { canGive: 100 })], 0.75)).toEqual([400, 100]);
    // Nobody can give more: less than asked.
    expect(reclaimQuotas(5000, [holder(1000, 1), holder(500, 0)], 0.75)).toEqual([1000, 500]);
    expect(reclaimQuotas(0, [holder(1000, 1)], 0.75)).toEqual([0]);
  });

  it('large needs are filled in steps of need / 1024, within a step of the exact answer', () => {
    const [a, b] = reclaimQuotas(300_000, [holder(1_000_000, 1), holder(1_000_000, 0)], 0.75) as [number, number];
    expect(a + b).toBe(300_000);
    expect(a).toBe(0);
    const [c, d] = reclaimQuotas(800_000, [holder(1_000_000, 1), holder(1_000_000, 0)], 0.75) as [number, number];
    // Exact: B gives 750,000 to meet A, then the 50,000 left split in ρ: A 40,000, B 10,000.
    expect(Math.abs(c - 40_000)).toBeLessThanOrEqual(2 * Math.ceil(800_000 / 1024));
    expect(c + d).toBe(800_000);
  });
});
