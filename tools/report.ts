/**
 * report — turn a host's recorded timeline into a self-contained HTML page (docs/host.md,
 * "Recording a timeline").
 *
 *   npx tsx tools/host --config host.json --api-sock /tmp/bv.sock --record host.timeline
 *   npx tsx tools/report --timeline host.timeline --out report.html
 *
 * The page shows, per VM, memory over time stacked by state, balloon target versus actual, the
 * latest miss-rate curves and a page-activity heat-map, and the host's pool and memory-scheduler
 * ladder state. The charting library (uPlot) is inlined: the page works offline, from a file.
 *
 * Exit codes: 0 written; 1 a timeline that cannot be used (missing, malformed, another version,
 * no VM) or an output that cannot be written; 2 usage. A progress bar is drawn on a terminal for
 * a long timeline only.
 */
import { statSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { BvError } from '../guest-isa/errors.ts';
import { readTimeline } from '../services/host/timeline.ts';
import { formatBytes, parseArguments, ProgressBar, runTool, UsageError } from './cli.ts';
import { buildReportModel, readChartLibrary, renderReportHtml } from './report-html.ts';

const USAGE = 'usage: report --timeline FILE --out FILE.html [--title TEXT] [--quiet]\n       report --help';

const HELP = `${USAGE}

Writes a self-contained HTML page (the charting library inlined: it works offline)
from a timeline a host recorded (tools/host --record FILE): per VM, memory over time
stacked by state, balloon target versus actual, miss-rate curves and a page-activity
heat-map; for the host, its pool and the memory scheduler's ladder state.

  --timeline FILE   the recorded timeline (JSON lines)
  --out FILE        the page to write (replaced if it exists)
  --title TEXT      the page's title (default: the timeline's file name)
  --quiet           no summary line, no warnings

Exit codes: 0 written; 1 a timeline that cannot be used or an output that cannot be
written; 2 usage.`;

/** Timelines from this size on get a progress bar (on a terminal). */
const PROGRESS_FROM_BYTES = 4 * 1024 * 1024;

function main(argv: readonly string[]): number {
  const args = parseArguments(argv, { flags: ['--help', '-h', '--quiet'], values: ['--timeline', '--out', '--title'] });
  if (args.flag('--help') || args.flag('-h')) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}'`);
  const path = args.value('--timeline');
  if (path === undefined) throw new UsageError('--timeline FILE is required');
  const out = args.value('--out');
  if (out === undefined) throw new UsageError('--out FILE is required');
  const quiet = args.flag('--quiet');

  let size = 0;
  try {
    size = statSync(path).size;
  } catch {
    // readTimeline names the problem.
  }
  const bar = size >= PROGRESS_FROM_BYTES ? new ProgressBar('reading the timeline', size, { unit: 'bytes' }) : null;
  const timeline = readTimeline(path, bar === null ? undefined : (done) => bar.update(done));
  bar?.finish();
  const model = buildReportModel(timeline, args.value('--title') ?? basename(path));
  const html = renderReportHtml(model, readChartLibrary());
  try {
    writeFileSync(out, html);
  } catch (error) {
    throw new BvError('BV_REPORT_OUTPUT', `${out}: cannot write the report: ${(error as Error).message}`);
  }
  if (!quiet) {
    for (const warning of timeline.warnings) process.stderr.write(`warning: ${path}: ${warning}\n`);
    process.stderr.write(`report: wrote ${out} (${formatBytes(Buffer.byteLength(html))}): ${model.vms.length} VM${model.vms.length === 1 ? '' : 's'}, ${model.samples} samples over ${model.duration_s} s\n`);
  }
  return 0;
}

await runTool(main, { usage: USAGE });
