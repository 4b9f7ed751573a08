/**
 * High availability across hosts (issue 15, `npm run bench -- --only ha`): the figures of each HA
 * service, one section each. Persistent-memory HA (T-15): bench/pmem-ha.ts.
 */
import type { Check } from './harness.ts';
import { formatPmemHa, measurePmemHa, pmemHaChecks, pmemHaStepCount, type PmemHaBenchFigures } from './pmem-ha.ts';

export interface HaOptions {
  quick?: boolean;
  onStep?: (label: string) => void;
}

export interface HaBenchFigures {
  /** Power-loss notice to persistent memory saved at the partner (T-15). */
  pmem: PmemHaBenchFigures;
}

export function haStepCount(options: HaOptions = {}): number {
  return pmemHaStepCount(options);
}

export async function measureHa(options: HaOptions = {}): Promise<HaBenchFigures> {
  return { pmem: await measurePmemHa(options) };
}

export function haChecks(figures: HaBenchFigures): Check[] {
  return [...pmemHaChecks(figures.pmem)];
}

export function formatHa(figures: HaBenchFigures): string[] {
  return [...formatPmemHa(figures.pmem)];
}
