/**
 * The miss-rate-curve experiment (bench/mrc.ts, docs/mrc.md): accuracy against the exact curve
 * of the same run, guest slowdown, sizing from the curve.
 * `npx tsx scripts/mrc-experiment.ts [--quick] [--accuracy-only] [--no-hot] [--only PREFIX]`
 * (--no-hot: the trackers without their hot stratum, hotPages 0, for comparison; --only: the
 * workloads whose name starts with PREFIX, e.g. `--only phase`, about 10 s for its accuracy).
 */
import { BenchError } from '../bench/harness.ts';
import { formatMrc, measureMrc } from '../bench/mrc.ts';

const quick = process.argv.includes('--quick');
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt >= 0 ? process.argv[onlyAt + 1] : undefined;
if (onlyAt >= 0 && (only === undefined || only.startsWith('--'))) {
  process.stderr.write('mrc-experiment: --only needs a workload name prefix (e.g. --only phase)\n');
  process.exit(2);
}
let figures: ReturnType<typeof measureMrc>;
try {
  figures = measureMrc({
    ...(only === undefined ? {} : { only }),
    quick,
    skipSlowdown: process.argv.includes('--accuracy-only'),
    ...(process.argv.includes('--no-hot') ? { tracker: { hotPages: 0 } } : {}),
    onStep: (label) => process.stderr.write(`… ${label}\n`),
  });
} catch (error) {
  if (!(error instanceof BenchError)) throw error;
  process.stderr.write(`mrc-experiment: ${error.message}\n`);
  process.exit(2);
}
for (const line of formatMrc(figures)) console.log(line);
