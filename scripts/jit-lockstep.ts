/**
 * jit-lockstep — the compiled tier against the interpreter over many random programs (not run
 * in CI; tests/kernel/jit-lockstep.test.ts runs 12 of the same series).
 *
 *   npx tsx scripts/jit-lockstep.ts [--instructions N] [--first K]
 *
 * Runs random programs K, K+1, … of tests/kernel/fixtures/jit-lockstep.ts (paging off and on,
 * traps, AMOs, calls across pages, self-modifying code, timer interrupts) in both tiers, stopped
 * together at random budgets and compared at every stop (state, counters, all RAM), until N
 * instructions per tier (default 10^8) were compared. Exit 0 with no divergence, 1 at the first.
 */
import { randomLockstep } from '../tests/kernel/fixtures/jit-lockstep.ts';
import { parseArguments, parseInteger, runTool } from '../tools/cli.ts';

const USAGE = 'usage: jit-lockstep [--instructions N] [--first K]';
/** Instructions one program may run (most end sooner). */
const PER_PROGRAM = 2_000_000;

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArguments(argv, { values: ['--instructions', '--first'] });
  const target = parseInteger(args.value('--instructions') ?? '100000000', '--instructions', 1);
  const first = parseInteger(args.value('--first') ?? '0', '--first', 0);
  const started = performance.now();
  let total = 0;
  let stops = 0;
  let compiled = 0;
  let programs = 0;
  let strips = 0;
  for (let n = first; total < target; n++) {
    const report = randomLockstep(n, PER_PROGRAM);
    programs++;
    total += report.instructions;
    stops += report.stops;
    compiled += report.compiledShare * report.instructions;
    strips += report.strips;
    if (report.divergence !== null) {
      process.stdout.write(`DIVERGENCE in program ${n}: ${report.divergence}\n`);
      return 1;
    }
    if (programs % 50 === 0) process.stdout.write(`${programs} programs, ${total.toLocaleString('en-US')} instructions per tier\n`);
  }
  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(
    `${programs} programs (from ${first}), ${total.toLocaleString('en-US')} instructions per tier, ${stops.toLocaleString('en-US')} stops compared, ` +
      `${((100 * compiled) / total).toFixed(1)} % run compiled, ${strips.toLocaleString('en-US')} strip-mined loop passes, 0 divergences, ${seconds.toFixed(1)} s\n`,
  );
  return 0;
}

await runTool(main, { usage: USAGE });
