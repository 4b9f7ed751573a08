/**
 * Shares and the idle memory tax (T-8; issue 11 item 2; docs/overcommit.md "Shares").
 *
 * Each VM holds shares S. When the host must take memory back, the victim is the VM that pays
 * least per page it holds: the one with the lowest *adjusted shares per page*
 *
 *     ρ = S / (P · (f + k · (1 − f))),   k = 1 / (1 − τ)
 *
 * where P is the pages it holds, f the fraction of them it is actively using (sampled active
 * memory), and τ the tax rate. An idle page costs k times an active one (k = 4 at the default
 * τ = 0.75), so a VM sitting on idle memory loses it first even with the same shares; τ = 0 is
 * plain proportional share. Taking pages from a VM raises its ρ, so reclaim is a water-filling:
 * each step takes from whichever VM has the lowest ρ now, never below its minimum reservation
 * and never more than its mechanism can give.
 *
 * Pure functions: the memory scheduler (reclaim.ts) supplies the figures.
 */
import { BvError } from '../../guest-isa/errors.ts';

/** ESX's default idle memory tax rate. */
export const DEFAULT_TAX_RATE = 0.75;
/** The largest tax rate accepted (τ = 1 would make an idle page infinitely expensive). */
export const MAX_TAX_RATE = 0.99;
/** Shares per MiB of guest RAM a VM gets by default (ESX's "normal" level). */
export const SHARES_PER_MIB = 10;

/** A bad shares or tax-rate argument. */
export class SharesError extends BvError {
  constructor(message: string) {
    super('BV_SHARES', message);
  }
}

/** Default shares of a VM with `memoryBytes` of RAM: SHARES_PER_MIB per MiB, at least 1. */
export function defaultShares(memoryBytes: number): number {
  return Math.max(1, Math.round((memoryBytes / 2 ** 20) * SHARES_PER_MIB));
}

/** Throws SharesError unless τ is a number in [0, MAX_TAX_RATE]. */
export function checkTaxRate(taxRate: number): number {
  if (typeof taxRate !== 'number' || !Number.isFinite(taxRate) || taxRate < 0 || taxRate > MAX_TAX_RATE) {
    throw new SharesError(`the idle memory tax rate must be between 0 and ${MAX_TAX_RATE}, got ${String(taxRate)}`);
  }
  return taxRate;
}

/** Throws SharesError unless `shares` is a positive safe integer. */
export function checkShares(shares: number): number {
  if (!Number.isSafeInteger(shares) || shares < 1) throw new SharesError(`shares must be a positive integer, got ${String(shares)}`);
  return shares;
}

/** k = 1 / (1 − τ): what an idle page costs relative to an active one. */
export function idleCost(taxRate: number): number {
  return 1 / (1 - checkTaxRate(taxRate));
}

/**
 * ρ = S / (P · (f + k · (1 − f))). A VM holding no pages has ρ = Infinity (nothing to take).
 * `activeFraction` is clamped to [0, 1].
 */
export function adjustedSharesPerPage(shares: number, pages: number, activeFraction: number, taxRate: number): number {
  if (!(pages > 0)) return Infinity;
  const f = Math.min(1, Math.max(0, activeFraction));
  const k = idleCost(taxRate);
  return shares / (pages * (f + k * (1 - f)));
}

/** One VM as reclaimQuotas sees it. */
export interface ShareHolder {
  /** Its shares S. */
  shares: number;
  /** Pages it holds now P. */
  pages: number;
  /** Its active fraction f (1 when unknown: no tax). */
  activeFraction: number;
  /** Pages it keeps whatever happens (its minimum reservation). */
  minPages: number;
  /** Most pages its reclaim mechanism can take now (balloon: its cheap pages; swap: what it holds). */
  canGive: number;
}

/**
 * Splits `need` pages over the holders by water-filling on ρ: step by step, from the holder with
 * the lowest ρ at its pages-so-far, never below minPages nor above canGive. Ties go to the first.
 * Steps are need/1024 pages (at least 1), so the result is within one step of the exact fill.
 * Returns the pages taken from each, in order; their sum is less than `need` only when the
 * holders cannot give more.
 */
export function reclaimQuotas(need: number, holders: readonly ShareHolder[], taxRate: number): number[] {
  checkTaxRate(taxRate);
  const taken = holders.map(() => 0);
  if (!(need > 0)) return taken;
  const step = Math.max(1, Math.ceil(need / 1024));
  const limit = holders.map((h) => Math.max(0, Math.min(Math.floor(h.canGive), Math.floor(h.pages - h.minPages))));
  let left = Math.floor(need);
  while (left > 0) {
    let best = -1;
    let bestRho = Infinity;
    for (let i = 0; i < holders.length; i++) {
      if (taken[i]! >= limit[i]!) continue;
      const h = holders[i]!;
      const rho = adjustedSharesPerPage(h.shares, h.pages - taken[i]!, h.activeFraction, taxRate);
      if (rho < bestRho) {
        bestRho = rho;
        best = i;
      }
    }
    if (best < 0) break;
    const take = Math.min(step, left, limit[best]! - taken[best]!);
    taken[best]! += take;
    left -= take;
  }
  return taken;
}
