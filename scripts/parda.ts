/**
 * PARDA's experiments (issue 17, T-19; docs/storage-io.md): real host processes share one raw
 * image; uncontrolled vs controlled with equal shares, shares 1:1:2:2, and a host that stops.
 * Prints PARDA's table per phase and PASS/FAIL lines against the targets.
 *
 *   npx tsx scripts/parda.ts [--quick] [--hosts N] [--depth N] [--sectors N] [--write-pct P]
 *       [--image PATH] [--throttle-iops N (0: the bare disk)] [--threshold-ratio R]
 *       [--shares-threshold-ratio R] [--settle-ms MS] [--measure-ms MS] [--period-ms MS] [--no-netns] [--no-realtime] [--json]
 *
 * Progress goes to stderr when it is a terminal; the table and the checks to stdout.
 */
import { formatPardaBench, measurePardaBench, pardaChecks, type PardaBenchOptions } from '../bench/io-parda.ts';

const args = process.argv.slice(2);
const value = (name: string): string | undefined => {
  const index = args.indexOf(name);
  return index === -1 ? undefined : args[index + 1];
};
const number = (name: string): number | undefined => {
  const text = value(name);
  if (text === undefined) return undefined;
  const parsed = Number(text);
  if (!Number.isFinite(parsed) || parsed < 0) {
    process.stderr.write(`parda: ${name} needs a number, got '${text}'\n`);
    process.exit(2);
  }
  return parsed;
};
const options: PardaBenchOptions = { quick: args.includes('--quick'), netns: !args.includes('--no-netns'), realtime: !args.includes('--no-realtime') };
const numeric: [string, keyof PardaBenchOptions][] = [
  ['--hosts', 'hosts'], ['--depth', 'depth'], ['--sectors', 'sectors'], ['--write-pct', 'writePct'], ['--throttle-iops', 'throttleIops'],
  ['--threshold-ratio', 'thresholdRatio'], ['--shares-threshold-ratio', 'sharesThresholdRatio'], ['--settle-ms', 'settleMs'], ['--measure-ms', 'measureMs'], ['--period-ms', 'periodMs'],
];
for (const [flag, key] of numeric) {
  const parsed = number(flag);
  if (parsed !== undefined) (options as Record<string, unknown>)[key] = parsed;
}
const image = value('--image');
if (image !== undefined) options.image = image;
if (process.stderr.isTTY) options.onStep = (label) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${label}\n`);
const figures = await measurePardaBench(options);
if (args.includes('--json')) console.log(JSON.stringify(figures, null, 2));
for (const line of formatPardaBench(figures)) console.log(line);
for (const check of pardaChecks(figures)) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value.toFixed(3)} (${check.target})`);
