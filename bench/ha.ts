/**
 * High availability across hosts (issue 15, `npm run bench -- --only ha`): the figures of each HA
 * service, one section each. Persistent-memory HA (T-15): bench/pmem-ha.ts. Asynchronous log
 * replication (T-16): bench/log-replication.ts.
 */
import type { Check } from './harness.ts';
import { formatLogReplication, logReplicationChecks, measureLogReplication, type LogReplicationFigures } from './log-replication.ts';
import { formatPmemHa, measurePmemHa, pmemHaChecks, pmemHaStepCount, type PmemHaBenchFigures } from './pmem-ha.ts';

export interface HaOptions {
  quick?: boolean;
  onStep?: (label: string) => void;
}

export interface HaBenchFigures {
  /** Power-loss notice to persistent memory saved at the partner (T-15). */
  pmem: PmemHaBenchFigures;
  /** Commit latency with log replication on and off, lag, failure flush (T-16). */
  log: LogReplicationFigures;
}

export function haStepCount(options: HaOptions = {}): number {
  return pmemHaStepCount(options) + 1;
}

export async function measureHa(options: HaOptions = {}): Promise<HaBenchFigures> {
  const pmem = await measurePmemHa(options);
  options.onStep?.('log replication (T-16)');
  return { pmem, log: await measureLogReplication(options.quick ?? false) };
}

export function haChecks(figures: HaBenchFigures): Check[] {
  return [...pmemHaChecks(figures.pmem), ...logReplicationChecks(figures.log)];
}

export function formatHa(figures: HaBenchFigures): string[] {
  return [...formatPmemHa(figures.pmem), ...formatLogReplication(figures.log)];
}
