/**
 * Memory overcommit, part 2 (issue 11): the experiments that decide *which* VM gives memory and
 * *how much* each needs, printed with `npm run bench -- --only overcommit` after part 1's figures.
 *
 * - The ESX idle-memory-tax experiment in shape (bench/idle-tax.ts): τ 0 against τ 0.75.
 * - Active-memory accuracy (bench/active-memory.ts): walkers over 10 / 50 / 90 % of memory and a
 *   phase guest 10 → 90 → 10 %, against an oracle watching every page; sampling's slowdown.
 * - MRC accuracy, slowdown and sizing (bench/mrc.ts): sampled curves against the exact curve of
 *   the same run, at 1 % and 0.1 %.
 *
 * Each group prints its table; their PASS/FAIL lines join the bench's.
 */
import { runActiveMemoryExperiment, type ActiveMemoryExperiment } from './active-memory.ts';
import { loadNow, type Check } from './harness.ts';
import { formatIdleTax, IDLE_TAX_STEPS, idleTaxChecks, measureIdleTax, type IdleTaxFigures } from './idle-tax.ts';
import { formatMrc, measureMrc, mrcChecks, MRC_WORKLOADS, type MrcFigures } from './mrc.ts';

export interface PolicyFigures {
  idleTax: IdleTaxFigures;
  /** The active-memory experiment without its preformatted lines. */
  activeMemory: Omit<ActiveMemoryExperiment, 'lines'> & { lines?: string[] };
  mrc: MrcFigures;
}

/** Steps measurePolicies reports through onStep (for the progress line). */
export function policyStepCount(options: { quick: boolean }): number {
  const workloads = MRC_WORKLOADS[options.quick ? 'quick' : 'full'];
  return IDLE_TAX_STEPS + 1 + workloads.length + workloads.filter((w) => w.quiet === undefined && w.checked !== false).length;
}

export function measurePolicies(options: { quick: boolean; onStep?: (label: string) => void }): PolicyFigures {
  const idleTax = measureIdleTax(options);
  options.onStep?.('active memory: accuracy, a change, slowdown');
  const activeMemory = runActiveMemoryExperiment({ quick: options.quick });
  const mrc = measureMrc({ quick: options.quick, onStep: (label) => options.onStep?.(`MRC ${label}`) });
  return { idleTax, activeMemory, mrc };
}

export function policyChecks(figures: PolicyFigures): Check[] {
  const active = figures.activeMemory;
  return [
    ...idleTaxChecks(figures.idleTax),
    {
      name: 'active memory: worst |estimate − truth| at steady state (10 / 50 / 90 % walkers), points', target: '<= 10',
      value: Math.round(Math.max(...active.accuracy.map((row) => row.maxError)) * 1000) / 10, pass: active.pass, load: active.slowdown.load ?? loadNow(),
    },
    ...mrcChecks(figures.mrc),
  ];
}

export function formatPolicies(figures: PolicyFigures): string[] {
  return [
    'memory overcommit, part 2 (issue 11): shares and the idle tax, active memory, miss-rate curves',
    ...formatIdleTax(figures.idleTax),
    '',
    ...(figures.activeMemory.lines ?? []).map((line) => `  ${line}`),
    '',
    // Its PASS/FAIL lines are the bench's (policyChecks): not repeated here.
    ...formatMrc(figures.mrc).filter((line) => !/^(PASS|FAIL) /.test(line)).map((line) => `  ${line}`),
  ];
}
