/**
 * snapshot — inspect, verify and compare checkpoint files (docs/checkpoint-format.md).
 *
 *   npx tsx tools/snapshot info <file> [--json] format, configuration, vCPUs, devices, memory, blocks
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

const USAGE = 'usage: snapshot info <file> [--json] | verify <file> | diff <a> <b> [--all] | clean <file>';
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

/** What `info` shows, as `info --json` prints it (snake_case keys, numbers as numbers). */
interface CheckpointInfo {
  /** The file's format version. */
  format_version: number;
  /** The file's size. */
  file_bytes: number;
  /** Guest RAM (page_count × 4096). */
  memory_bytes: number;
  /** Guest pages. */
  page_count: number;
  /** Pages stored in blocks. */
  stored_pages: number;
  /** Pages not stored (zero or never touched). */
  zero_pages: number;
  /** Storage blocks. */
  blocks: number;
  /** Blocks stored raw (mappable on restore). */
  raw_blocks: number;
  /** Blocks stored lz4-compressed. */
  lz4_blocks: number;
  /** Stored page bytes / bytes their blocks take. */
  compression_ratio: number;
  /** vCPUs saved. */
  vcpus: number;
  /** The saved configuration, whole (`info` cuts long values). */
  config: Record<string, unknown>;
  /** Each device (or state component): its version, and its state's kind and size. */
  devices: Record<string, { version: number; state: 'binary' | 'json'; bytes: number }>;
}

function checkpointInfo(path: string): CheckpointInfo {
  return withReader(path, (reader) => {
    const summary = reader.summary();
    const { config, cpus, devices } = reader.contents;
    return {
      format_version: summary.formatVersion,
      file_bytes: summary.fileBytes,
      memory_bytes: summary.pageCount * PAGE_BYTES,
      page_count: summary.pageCount,
      stored_pages: summary.storedPages,
      zero_pages: summary.zeroPages,
      blocks: summary.blocks,
      raw_blocks: summary.rawBlocks,
      lz4_blocks: summary.lz4Blocks,
      compression_ratio: summary.compressionRatio,
      vcpus: cpus.length,
      config: { ...config },
      devices: Object.fromEntries(Object.entries(devices).map(([name, device]) => {
        const binary = device.state instanceof Uint8Array;
        const bytes = device.state instanceof Uint8Array ? device.state.length : JSON.stringify(device.state).length;
        return [name, { version: device.version, state: binary ? 'binary' : 'json', bytes }];
      })),
    };
  });
}

function info(path: string): string {
  const summary = checkpointInfo(path);
  const rows: string[][] = [
    ['format', `version ${summary.format_version}`],
    ['file', `${formatBytes(summary.file_bytes)} (${formatCount(summary.file_bytes)} bytes)`],
    ['memory', `${formatBytes(summary.memory_bytes)} (${formatCount(summary.page_count)} pages)`],
    ['pages', `${formatCount(summary.stored_pages)} stored, ${formatCount(summary.zero_pages)} zero (not stored)`],
    ['blocks', `${formatCount(summary.blocks)} (${formatCount(summary.raw_blocks)} raw, ${formatCount(summary.lz4_blocks)} lz4)`],
    ['compression', formatRatio(summary.compression_ratio)],
    ['vcpus', String(summary.vcpus)],
  ];
  const configRows = Object.entries(summary.config).map(([key, value]) => [`  ${key}`, shorten(JSON.stringify(value), CONFIG_VALUE_CHARS)]);
  const deviceRows = Object.entries(summary.devices).map(([name, device]) => [
    `  ${name}`,
    `version ${device.version}`,
    `${formatBytes(device.bytes)} ${device.state === 'binary' ? 'binary' : 'JSON'}`,
  ]);
  let text = formatTable(rows, { rightAligned: [false, false] });
  text += `config${configRows.length === 0 ? '       (empty)' : ''}\n`;
  if (configRows.length > 0) text += formatTable(configRows, { rightAligned: [false, false] });
  text += `devices${deviceRows.length === 0 ? '      (none)' : ''}\n`;
  if (deviceRows.length > 0) text += formatTable(deviceRows, { rightAligned: [false, false, false] });
  return text;
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
  const args = parseArguments(argv, { flags: ['--all', '--json', '--help', '-h'] });
  if (args.flag('--help') || args.flag('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const [command, ...files] = args.positionals;
  const expectFiles = (count: number) => {
    if (files.length !== count) throw new UsageError(`${command} needs ${count === 1 ? 'one file' : `${count} files`}, got ${files.length}`);
  };
  if (command !== 'diff' && args.flag('--all')) throw new UsageError('--all only applies to diff');
  if (command !== 'info' && args.flag('--json')) throw new UsageError('--json only applies to info');
  switch (command) {
    case 'info':
      expectFiles(1);
      process.stdout.write(args.flag('--json') ? `${JSON.stringify(checkpointInfo(files[0]!))}\n` : info(files[0]!));
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
