/**
 * checkpoint-soak — many kill-during-save trials (not run in CI; the test suite runs 60).
 *
 *   npx tsx scripts/checkpoint-soak.ts [--trials N] [--pages N]
 *
 * Each trial starts a child that saves a checkpoint over the previous one and kills it with
 * SIGKILL at a random moment; the target must then hold the old checkpoint byte for byte or the
 * complete new one (tests/services/fixtures/checkpoint-crash-child.ts). Exit 0 when every trial
 * passed, 1 otherwise.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCrashTrials } from '../tests/services/fixtures/checkpoint-crash-child.ts';
import { parseArguments, parseInteger, runTool } from '../tools/cli.ts';

const USAGE = 'usage: checkpoint-soak [--trials N] [--pages N]';

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArguments(argv, { values: ['--trials', '--pages'] });
  const trials = parseInteger(args.value('--trials') ?? '500', '--trials', 1);
  const pageCount = parseInteger(args.value('--pages') ?? '4096', '--pages', 1, 1 << 20);
  const dir = mkdtempSync(join(tmpdir(), 'bv-ckpt-soak-'));
  try {
    const started = performance.now();
    const report = await runCrashTrials({
      dir,
      trials,
      pageCount,
      onTrial: (trial, outcome) => {
        if ((trial + 1) % 25 === 0) process.stdout.write(`${trial + 1}/${trials} trials\n`);
        if (outcome.kept === 'old' && !outcome.killed) process.stdout.write(`trial ${trial}: old file kept although the save was not killed\n`);
      },
    });
    const kept = (which: 'old' | 'new') => report.outcomes.filter((outcome) => outcome.kept === which).length;
    const withTemp = report.outcomes.filter((outcome) => outcome.staleTempFiles > 0).length;
    process.stdout.write(
      `${report.outcomes.length} trials in ${((performance.now() - started) / 1000).toFixed(1)} s ` +
        `(save takes ~${report.saveMs.toFixed(0)} ms): old kept ${kept('old')}, new complete ${kept('new')}, ` +
        `stale temp files left by ${withTemp}\n`,
    );
    for (const failure of report.failures) process.stdout.write(`FAIL ${failure}\n`);
    return report.failures.length === 0 ? 0 : 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await runTool(main, { usage: USAGE });
