/**
 * The miss-rate-curve experiment (bench/mrc.ts, docs/mrc.md): accuracy against the exact curve
 * of the same run, guest slowdown, sizing from the curve. `npx tsx scripts/mrc-experiment.ts [--quick]`.
 */
import { formatMrc, measureMrc } from '../bench/mrc.ts';

const quick = process.argv.includes('--quick');
const figures = measureMrc({ quick, onStep: (label) => process.stderr.write(`… ${label}\n`) });
for (const line of formatMrc(figures)) console.log(line);
