/**
 * shared-pool-soak — many trials of the shared-pool stress (issue 16; the test suite runs two):
 * three threads break copy-on-write on lent pages of one host pool at once, and a checker
 * compares every thread's view of every page with its write plan, the frames in use with the
 * count the plan implies, and the pool afterwards with an empty one.
 *
 *   npx tsx scripts/shared-pool-soak.ts [--trials N] [--pages N] [--rounds N] [--seed S]
 *
 * Exit 0 when every trial passed, 1 otherwise (the failing seeds are printed).
 */
import { runSharedPoolTrial } from '../tests/kernel/fixtures/shared-pool-trial.ts';
import { parseArguments, parseInteger, runTool } from '../tools/cli.ts';

const USAGE = 'usage: shared-pool-soak [--trials N] [--pages N] [--rounds N] [--seed S]';

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArguments(argv, { values: ['--trials', '--pages', '--rounds', '--seed'] });
  const trials = parseInteger(args.value('--trials') ?? '50', '--trials', 1);
  const pages = parseInteger(args.value('--pages') ?? '2048', '--pages', 1, 8192);
  const rounds = parseInteger(args.value('--rounds') ?? '3000', '--rounds', 1);
  const firstSeed = parseInteger(args.value('--seed') ?? '1', '--seed', 0);
  const failed: number[] = [];
  const started = performance.now();
  for (let trial = 0; trial < trials; trial++) {
    const seed = firstSeed + trial;
    const result = await runSharedPoolTrial({ seed, pages, rounds });
    const ok = result.mismatches.length === 0 && result.usedFrames === result.expectedFrames && result.workerCounts.every(([here, theirs]) => here === theirs)
      && result.usedAfter === 0 && result.refCountsZero && result.poolZero;
    if (!ok) {
      failed.push(seed);
      process.stdout.write(`seed ${seed}: FAILED ${JSON.stringify(result)}\n`);
    }
    if ((trial + 1) % 10 === 0) process.stdout.write(`${trial + 1}/${trials} trials\n`);
  }
  process.stdout.write(`${trials} trials (${pages} pages, ${rounds} writes per thread) in ${((performance.now() - started) / 1000).toFixed(1)} s: ${failed.length === 0 ? 'all passed' : `failed: seeds ${failed.join(', ')}`}\n`);
  return failed.length === 0 ? 0 : 1;
}

await runTool(main, { usage: USAGE });
