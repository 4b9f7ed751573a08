/**
 * snapshot — inspect, verify and compare checkpoint files (docs/checkpoint-format.md).
 *
 *   npx tsx tools/snapshot info <file>          format, configuration, vCPUs, devices, memory, blocks
 *   npx tsx tools/snapshot verify <file>        every checksum; prints `ok` or names the first bad part
 *   npx tsx tools/snapshot diff <a> <b> [--all] which guest pages (and states) differ
 *   npx tsx tools/snapshot clean <file>         removes temp files left by interrupted saves
 *
 * Exit codes: info/verify/clean 0 ok, 1 bad or unreadable file; diff (like cmp) 0 equal,
 * 1 different, 2 a file could not be read; bad usage 2 everywhere. A progress bar is drawn on a
 * terminal only.
 */
import { CheckpointReader, diffCheckpoints, PAGE_BYTES, removeStaleTempFiles, type CheckpointDiff } from '../services/checkpoint/index.ts';
import { formatBytes, formatCount, formatTable, parseArguments, ProgressBar, runTool, UsageError } from './cli.ts';

const USAGE = 'usage: snapshot info <file> | verify <file> | diff <a> <b> [--all] | clean <file>';
/** diff lists at most this many ranges unless --all. */
const RANGES_SHOWN = 32;
/** Configuration values longer than this are cut in `info`. */
const CONFIG_VALUE_CHARS = 72;

/** Opens `path`, runs `use`, closes. Reader errors already name the file. */
function withReader<T>(path: string, use: (reader: CheckpointReader) => T): T {
  const reader = CheckpointReader.open(path);
  try {
    return use(reader);
  } finally {
    reader.close();
  }
}

function formatRatio(ratio: number): string {
  return `${ratio.toFixed(2)}x`;
}

function shorten(text: string, limit: number): string {
  return text.length <= limit ? text : `${text.slice(0, limit - 3)}...`;
}

function info(path: string): string {
  return withReader(path, (reader) => {
    const summary = reader.summary();
    const { config, cpus, devices } = reader.contents;
    const rows: string[][] = [
      ['format', `version ${summary.formatVersion}`],
      ['file', `${formatBytes(summary.fileBytes)} (${formatCount(summary.fileBytes)} bytes)`],
      ['memory', `${formatBytes(summary.pageCount * PAGE_BYTES)} (${formatCount(summary.pageCount)} pages)`],
      ['pages', `${formatCount(summary.storedPages)} stored, ${formatCount(summary.zeroPages)} zero (not stored)`],
      ['blocks', `${formatCount(summary.blocks)} (${formatCount(summary.rawBlocks)} raw, ${formatCount(summary.lz4Blocks)} lz4)`],
      ['compression', formatRatio(summary.compressionRatio)],
      ['vcpus', String(cpus.length)],
    ];
    const configRows = Object.entries(config).map(([key, value]) => [`  ${key}`, shorten(JSON.stringify(value), CONFIG_VALUE_CHARS)]);
    const deviceRows = Object.entries(devices).map(([name, device]) => [
      `  ${name}`,
      `version ${device.version}`,
      device.state instanceof Uint8Array ? `${formatBytes(device.state.length)} binary` : `${formatBytes(JSON.stringify(device.state).length)} JSON`,
    ]);
    let text = formatTable(rows, { rightAligned: [false, false] });
    text += `config${configRows.length === 0 ? '       (empty)' : ''}\n`;
    if (configRows.length > 0) text += formatTable(configRows, { rightAligned: [false, false] });
    text += `devices${deviceRows.length === 0 ? '      (none)' : ''}\n`;
    if (deviceRows.length > 0) text += formatTable(deviceRows, { rightAligned: [false, false, false] });
    return text;
  });
}

function verify(path: string): string {
  return withReader(path, (reader) => {
    const progress = new ProgressBar('verify', reader.blockCount);
    reader.verifyAll((done) => progress.update(done));
    progress.finish();
    const summary = reader.summary();
    return `ok (${formatCount(summary.blocks)} blocks, ${formatCount(summary.storedPages)} stored pages, ${formatCount(summary.pageCount)} guest pages)\n`;
  });
}

function formatRange(first: number, count: number): string {
  const gpa = (address: number) => `0x${address.toString(16).padStart(8, '0')}`;
  const pages = count === 1 ? `page ${first}` : `pages ${first}-${first + count - 1}`;
  return `  ${pages} (gpa ${gpa(first * PAGE_BYTES)}-${gpa((first + count) * PAGE_BYTES - 1)})`;
}

function formatDiff(diff: CheckpointDiff, all: boolean): string {
  if (diff.equal) return 'no differences\n';
  const lines: string[] = [];
  if (diff.pageCountA !== diff.pageCountB) {
    lines.push(`memory size: ${formatCount(diff.pageCountA)} pages vs ${formatCount(diff.pageCountB)} pages (missing pages count as zero)`);
  }
  const total = Math.max(diff.pageCountA, diff.pageCountB);
  lines.push(
    diff.differingPages === 0
      ? 'memory: same'
      : `memory: ${formatCount(diff.differingPages)} of ${formatCount(total)} pages differ, in ${formatCount(diff.ranges.length)} range${diff.ranges.length === 1 ? '' : 's'}`,
  );
  const shown = all ? diff.ranges : diff.ranges.slice(0, RANGES_SHOWN);
  for (const range of shown) lines.push(formatRange(range.first, range.count));
  if (shown.length < diff.ranges.length) lines.push(`  ... and ${formatCount(diff.ranges.length - shown.length)} more ranges (--all lists them)`);
  lines.push(`config: ${diff.configEqual ? 'same' : 'differs'}`);
  lines.push(`cpus: ${diff.cpusEqual ? 'same' : 'differ'}`);
  lines.push(`devices: ${diff.devicesDiffering.length === 0 ? 'same' : `differ: ${diff.devicesDiffering.join(', ')}`}`);
  return `${lines.join('\n')}\n`;
}

function diff(pathA: string, pathB: string, all: boolean): { text: string; equal: boolean } {
  return withReader(pathA, (a) =>
    withReader(pathB, (b) => {
      const progress = new ProgressBar('diff', Math.max(a.pageCount, b.pageCount));
      const result = diffCheckpoints(a, b, { onProgress: (done) => progress.update(done) });
      progress.finish();
      return { text: formatDiff(result, all), equal: result.equal };
    }),
  );
}

function clean(path: string): string {
  const removed = removeStaleTempFiles(path);
  return removed.length === 0 ? 'no stale temp files\n' : removed.map((file) => `removed ${file}\n`).join('');
}

function main(argv: readonly string[]): number {
  const args = parseArguments(argv, { flags: ['--all', '--help', '-h'] });
  if (args.flag('--help') || args.flag('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const [command, ...files] = args.positionals;
  const expectFiles = (count: number) => {
    if (files.length !== count) throw new UsageError(`${command} needs ${count === 1 ? 'one file' : `${count} files`}, got ${files.length}`);
  };
  if (command !== 'diff' && args.flag('--all')) throw new UsageError('--all only applies to diff');
  switch (command) {
    case 'info':
      expectFiles(1);
      process.stdout.write(info(files[0]!));
      return 0;
    case 'verify':
      expectFiles(1);
      process.stdout.write(verify(files[0]!));
      return 0;
    case 'diff': {
      expectFiles(2);
      const result = diff(files[0]!, files[1]!, args.flag('--all'));
      process.stdout.write(result.text);
      return result.equal ? 0 : 1;
    }
    case 'clean':
      expectFiles(1);
      process.stdout.write(clean(files[0]!));
      return 0;
    case undefined:
      throw new UsageError('missing command');
    default:
      throw new UsageError(`unknown command '${command}'`);
  }
}

await runTool(main, { usage: USAGE, errorExitCode: process.argv[2] === 'diff' ? 2 : 1 });
