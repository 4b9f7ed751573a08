/**
 * The miss-rate-curve experiment (bench/mrc.ts, docs/mrc.md): accuracy against the exact curve
 * of the same run, guest slowdown, sizing from the curve.
 * `npx tsx scripts/mrc-experiment.ts [--quick] [--accuracy-only] [--no-hot] [--no-activity]
 *   [--activity-rate R] [--activity-every N] [--only PREFIX]`
 * (--no-hot: the trackers without their hot stratum, hotPages 0, for comparison; --no-activity:
 * without their activity census, activityRate 0; --activity-rate, --activity-every: its rate and
 * interval in instructions, for every sampled tracker; --only: the workloads whose name starts
 * with PREFIX, e.g. `--only phase`, about 2 s for its accuracy).
 */
import { BenchError } from '../bench/harness.ts';
import { formatMrc, measureMrc } from '../bench/mrc.ts';
import { MrcError } from '../services/memory/index.ts';

const quick = process.argv.includes('--quick');
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt >= 0 ? process.argv[onlyAt + 1] : undefined;
if (onlyAt >= 0 && (only === undefined || only.startsWith('--'))) {
  process.stderr.write('mrc-experiment: --only needs a workload name prefix (e.g. --only phase)\n');
  process.exit(2);
}
/** The number after `flag`, or undefined when the flag is absent; exits 2 when it is not a number. */
function numberFlag(flag: string): number | undefined {
  const at = process.argv.indexOf(flag);
  if (at < 0) return undefined;
  const value = Number(process.argv[at + 1]);
  if (process.argv[at + 1] === undefined || !Number.isFinite(value)) {
    process.stderr.write(`mrc-experiment: ${flag} needs a number\n`);
    process.exit(2);
  }
  return value;
}
const activityRate = process.argv.includes('--no-activity') ? 0 : numberFlag('--activity-rate');
const activityInstructions = numberFlag('--activity-every');
let figures: ReturnType<typeof measureMrc>;
try {
  figures = measureMrc({
    ...(only === undefined ? {} : { only }),
    quick,
    skipSlowdown: process.argv.includes('--accuracy-only'),
    tracker: {
      ...(process.argv.includes('--no-hot') ? { hotPages: 0 } : {}),
      ...(activityRate === undefined ? {} : { activityRate }),
      ...(activityInstructions === undefined ? {} : { activityInstructions }),
    },
    onStep: (label) => process.stderr.write(`… ${label}\n`),
  });
} catch (error) {
  // A bench failure or a bad tracker option (--activity-rate under the 1 % rate, …): a message, not a trace.
  if (!(error instanceof BenchError) && !(error instanceof MrcError)) throw error;
  process.stderr.write(`mrc-experiment: ${error.message}\n`);
  process.exit(2);
}
for (const line of formatMrc(figures)) console.log(line);
