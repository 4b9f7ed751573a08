/**
 * Runs the active-memory accuracy experiment (bench/active-memory.ts) on its own and prints its
 * table: `npx tsx scripts/active-memory-experiment.ts [--quick]`. Exits 1 when it says FAIL.
 */
import { runActiveMemoryExperiment } from '../bench/active-memory.ts';

const quick = process.argv.includes('--quick');
const result = runActiveMemoryExperiment({ quick, log: (line) => process.stderr.write(`${line}\n`) });
for (const line of result.lines) console.log(line);
process.exitCode = result.pass ? 0 : 1;
