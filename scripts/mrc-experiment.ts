/**
 * The miss-rate-curve experiment (bench/mrc.ts, docs/mrc.md): accuracy against the exact curve
 * of the same run, guest slowdown, sizing from the curve.
 * `npx tsx scripts/mrc-experiment.ts [--quick] [--accuracy-only] [--no-hot]`
 * (--no-hot: the trackers without their hot stratum, hotPages 0, for comparison).
 */
import { formatMrc, measureMrc } from '../bench/mrc.ts';

const quick = process.argv.includes('--quick');
const figures = measureMrc({
  quick,
  skipSlowdown: process.argv.includes('--accuracy-only'),
  ...(process.argv.includes('--no-hot') ? { tracker: { hotPages: 0 } } : {}),
  onStep: (label) => process.stderr.write(`… ${label}\n`),
});
for (const line of formatMrc(figures)) console.log(line);
