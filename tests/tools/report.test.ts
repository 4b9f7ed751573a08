/**
 * The host timeline and its report (issue 11 item 4): a TimelineRecorder on a real host of
 * nanokernel VMs (services/host/recorder.ts), the reader's refusals (services/host/timeline.ts),
 * tools/report's exit codes, tools/host --record, and the page itself rendered in headless
 * Chromium, where it writes what it drew into the DOM.
 *
 * The browser test is skipped, with a note, only when no Chromium is installed (.ci/run installs
 * Debian's `chromium`).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Vm } from '../../kernel/index.ts';
import { parseHostConfig, parseVmConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { parseTimeline, readTimeline, TIMELINE_VERSION, TimelineError, type Timeline } from '../../services/host/timeline.ts';
import { buildReportModel, readChartLibrary, renderReportHtml } from '../../tools/report-html.ts';
import { REPO, spawnNode } from './child.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const work = mkdtempSync(join(tmpdir(), 'bv-report-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** The Chromium binary, or null when none is installed. */
function findChromium(): string | null {
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try {
      const path = execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
      if (path !== '') return path;
    } catch {
      // not this one
    }
  }
  return null;
}
const chromium = findChromium();
if (chromium === null) console.warn('tests/tools/report.test.ts: no Chromium installed (apt-get install chromium): the browser rendering test is skipped');

/** Waits until `probe` holds (vi.waitFor, polling every 20 ms). */
const until = (what: string, probe: () => boolean, timeout = 60_000): Promise<void> =>
  vi.waitFor(() => {
    if (!probe()) throw new Error(`timed out waiting for ${what}`);
  }, { timeout, interval: 20 });

/** How many more access watchers a VM takes (adds them until it refuses, then removes them). */
function freeWatchers(vm: Vm): number {
  const ids: number[] = [];
  try {
    for (;;) ids.push(vm.memory.addAccessWatcher(() => {}));
  } catch {
    // full
  }
  for (const id of ids) vm.memory.removeAccessWatcher(id);
  return ids.length;
}

const MRC = { sizes_mib: [1, 2, 4, 8, 16], miss_ratio: [0.9, 0.6, 0.3, 0.1, 0.05] };

/** The timeline recorded once by the first test, for the report tests. */
let recorded = '';
let recordedTimeline: Timeline;

describe('TimelineRecorder on a real host', () => {
  it('records the pool, the ladder, pages by state, the balloon, providers and page activity; follows VMs created and deleted; detaches cleanly', async () => {
    const path = join(work, 'host.timeline');
    const spec = parseHostConfig({
      host_memory_mib: 48,
      overcommit: true,
      slice_instructions: 50_000,
      vms: [
        { name: 'a', image: KERNEL, memory_mib: 32, boot_args: 'heap 8M 1 1 idle', balloon: { stats_polling_interval_s: 1 } },
        { name: 'b', image: KERNEL, memory_mib: 32, boot_args: 'walker 6M random 0' },
      ],
    });
    let mrcCalls = 0;
    const host = await Host.start(spec, {
      record: {
        path,
        intervalMs: 40,
        heatmapBuckets: 32,
        providers: {
          activeFraction: (name) => (name === 'b' ? 0.125 : null),
          mrc: (name) => {
            mrcCalls++;
            return name === 'b' ? MRC : null;
          },
        },
      },
    });
    try {
      const recorder = host.recorder!;
      expect(recorder.recording).toBe(true);
      expect(recorder.intervalMs).toBe(40);
      await until('b to walk and a few samples', () => host.vmInfo('b').instructions > 3_000_000 && recorder.samples >= 8);
      // A VM created while recording is followed, then let go when it is deleted.
      await host.createVm(parseVmConfig({ name: 'c', image: KERNEL, memory_mib: 16, boot_args: 'walker 2M seq 0' }));
      // The next sample follows c and arms its pages; the two after it have its activity.
      const samplesBefore = recorder.samples;
      await until('three more samples', () => recorder.samples >= samplesBefore + 3);
      host.deleteVm('c');
      const afterDelete = recorder.samples;
      await until('samples after the delete', () => recorder.samples >= afterDelete + 2);
      // Stopping the recorder gives every live VM its watcher back (other services may hold watchers too).
      const before = ['a', 'b'].map((name) => freeWatchers(host.vm(name)));
      recorder.stop();
      expect(recorder.recording).toBe(false);
      expect(['a', 'b'].map((name) => freeWatchers(host.vm(name)))).toEqual(before.map((n) => n + 1));
      recorder.stop(); // idempotent
      expect(recorder.error).toBeNull();
      expect(mrcCalls).toBeGreaterThan(0);
    } finally {
      await host.close();
    }

    recorded = path;
    const timeline = readTimeline(path);
    recordedTimeline = timeline;
    expect(timeline.complete).toBe(true);
    expect(timeline.warnings).toEqual([]);
    expect(timeline.header).toMatchObject({ kind: 'header', format: 'bytevisor-timeline', version: TIMELINE_VERSION, interval_ms: 40, page_size: 4096, pool_frames: 48 * 256, heatmap_buckets: 32, heatmap_samples: 4 });
    const { samples } = timeline;
    expect(samples.length).toBeGreaterThanOrEqual(12);
    // The file's own end line counts what was written.
    const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
    expect(JSON.parse(lines[lines.length - 1]!)).toMatchObject({ kind: 'end', samples: samples.length });
    for (const s of samples) {
      expect(s.pool.total_frames).toBe(48 * 256);
      expect(s.pool.used_frames + s.pool.free_frames).toBe(48 * 256);
      // The scheduler was on from the first sample (overcommit): its ladder state is recorded.
      expect(['high', 'soft', 'hard', 'low']).toContain(s.scheduler!.state);
      expect(s.scheduler!.counters.ticks).toBeGreaterThanOrEqual(0);
    }
    const names = samples.map((s) => s.vms.map((vm) => vm.name).join(','));
    expect(names[0]).toBe('a,b');
    const withC = names.map((n, i) => (n.includes('c') ? i : -1)).filter((i) => i >= 0);
    expect(withC.length).toBeGreaterThanOrEqual(2);
    // c appears once created and never again after it was deleted.
    expect(withC[withC.length - 1]! - withC[0]! + 1).toBe(withC.length);
    expect(names[names.length - 1]).toBe('a,b');
    const last = samples[samples.length - 1]!;
    const [a, b] = last.vms;
    expect(a!.guest_pages).toBe(32 * 256);
    expect(a!.pages.present + a!.pages.shared).toBeGreaterThan(8 * 256); // a's 8 MiB heap was touched
    expect(Object.values(a!.pages.absent).reduce((x, y) => x + y, 0) + a!.pages.present).toBe(32 * 256);
    expect(a!.balloon).toEqual({ target_pages: expect.any(Number), actual_pages: expect.any(Number) });
    expect(b!.balloon).toBeNull();
    expect(a!.active_fraction).toBeNull();
    expect(b!.active_fraction).toBe(0.125);
    expect(b!.instructions).toBeGreaterThan(3_000_000);
    // The MRC is written when it changes: once for b, never for a.
    const bMrcs = samples.flatMap((s) => s.vms.filter((vm) => vm.name === 'b' && vm.mrc !== undefined));
    expect(bMrcs.map((vm) => vm.mrc)).toEqual([MRC]);
    expect(samples.flatMap((s) => s.vms.filter((vm) => vm.name === 'a' && vm.mrc !== undefined))).toEqual([]);
    // Page activity: b's random walk over 6 MiB touches sampled pages at nearly every interval.
    const bHeat = samples.flatMap((s) => s.vms.filter((vm) => vm.name === 'b').map((vm) => vm.heat)).filter((h) => h !== null);
    expect(bHeat.length).toBeGreaterThan(5);
    for (const h of bHeat) {
      expect(h!.buckets).toBe(32);
      expect(h!.fired).toHaveLength(32);
      expect(h!.fired.every((n) => n >= 0 && n <= 4)).toBe(true);
    }
    expect(bHeat.filter((h) => h!.fired.some((n) => n > 0)).length).toBeGreaterThan(bHeat.length / 2);
  }, 120_000);
});

const HEADER = { kind: 'header', format: 'bytevisor-timeline', version: 1, started_at: '2026-01-01T00:00:00.000Z', interval_ms: 250, page_size: 4096, pool_frames: 1024, heatmap_buckets: 4, heatmap_samples: 2 };
const VM = { name: 'v', state: 'Running', instructions: 10, guest_pages: 8, pages: { present: 4, shared: 0, absent: { untouched: 3, swapped: 1 } }, balloon: null, active_fraction: null, heat: { buckets: 4, samples: 2, fired: [0, 1, 2, 0] } };
const sample = (t: number, vms: unknown[] = [VM]): string => JSON.stringify({ kind: 'sample', t_ms: t, pool: { total_frames: 1024, used_frames: 4, free_frames: 1020 }, scheduler: null, vms });
const END = JSON.stringify({ kind: 'end', t_ms: 500, samples: 2 });
const file = (...lines: string[]): string => lines.join('\n');

describe('the timeline reader', () => {
  it('reads a whole file; tolerates and reports an incomplete last line and a missing end line', () => {
    const whole = parseTimeline(file(JSON.stringify(HEADER), sample(0), sample(250), END, ''), 't');
    expect(whole.complete).toBe(true);
    expect(whole.samples).toHaveLength(2);
    expect(whole.warnings).toEqual([]);
    const crashed = parseTimeline(file(JSON.stringify(HEADER), sample(0), sample(250), sample(500).slice(0, 37)), 't');
    expect(crashed.complete).toBe(false);
    expect(crashed.samples).toHaveLength(2);
    expect(crashed.warnings).toEqual([
      'line 4 is incomplete (the recorder stopped in the middle of writing it): ignored',
      'no end line: the recorder did not stop cleanly (the host was killed?); the timeline ends at 0.3 s',
    ]);
  });

  it.each([
    ['an empty file', '', 't: the file is empty'],
    ['a truncated header', JSON.stringify(HEADER).slice(0, 20), 't:1: the file is truncated: its header line is incomplete'],
    ['a header and nothing else', file(JSON.stringify(HEADER), ''), 't: the file is truncated: no sample after the header'],
    ['another file', file('{"hello": 1}', ''), 't:1: not a bytevisor timeline'],
    ['text', file('hello', ''), 't:1: malformed: not a JSON object (hello)'],
    ['another version', file(JSON.stringify({ ...HEADER, version: 99 }), sample(0), ''), 't:1: timeline format version 99 is not supported (this bytevisor reads version 1)'],
    ['a malformed line in the middle', file(JSON.stringify(HEADER), sample(0), '{"kind": "sample", ', sample(250), ''), 't:3: malformed: not a JSON object'],
    ['a malformed last line that is complete', file(JSON.stringify(HEADER), sample(0), '{"kind": ', ''), 't:3: malformed'],
    ['an empty line', file(JSON.stringify(HEADER), '', sample(0), ''), 't:2: malformed: an empty line'],
    ['an unknown kind', file(JSON.stringify(HEADER), '{"kind": "nope"}', ''), 't:2: kind must be "sample" or "end", got "nope"'],
    ['a wrong field type', file(JSON.stringify(HEADER), sample(0, [{ ...VM, pages: { ...VM.pages, present: '4' } }]), ''), 't:2: vms[0].pages.present must be a whole number, got "4"'],
    ['an active fraction above 1', file(JSON.stringify(HEADER), sample(0, [{ ...VM, active_fraction: 1.5 }]), ''), 't:2: vms[0].active_fraction must be from 0 to 1, got 1.5'],
    ['a heat row of the wrong length', file(JSON.stringify(HEADER), sample(0, [{ ...VM, heat: { buckets: 4, samples: 2, fired: [1] } }]), ''), 't:2: vms[0].heat.fired must have one count per bucket (4)'],
    ['time going backwards', file(JSON.stringify(HEADER), sample(250), sample(0), ''), 't:3: t_ms goes backwards'],
    ['a line after the end', file(JSON.stringify(HEADER), sample(0), END, sample(600), ''), 't:4: malformed: a line after the end line'],
  ])('refuses %s', (_what, text, message) => {
    expect(() => parseTimeline(text, 't')).toThrow(TimelineError);
    expect(() => parseTimeline(text, 't')).toThrow(message);
  });

  it('names a missing file', () => {
    expect(() => readTimeline(join(work, 'nope.timeline'))).toThrow(`${join(work, 'nope.timeline')}: no such file`);
  });
});

describe('the report model', () => {
  it('stacks memory by state (active and idle from the active fraction), keeps the latest MRC and turns heat rows into shares', () => {
    const header = { ...HEADER };
    const vm0 = { ...VM, active_fraction: 0.25, mrc: MRC, balloon: { target_pages: 256, actual_pages: 0 } };
    const vm1 = { ...VM, active_fraction: null, balloon: { target_pages: 256, actual_pages: 128 } };
    const model = buildReportModel(parseTimeline(file(JSON.stringify(header), sample(0, [vm0]), sample(250, [vm1]), END, ''), 't'), 'title');
    const [vm] = model.vms;
    // 4 present pages: at 0.25 × 8 guest pages, 2 active and 2 idle; then no fraction: 4 present in one band.
    expect(vm!.bands.map((b) => [b.key, b.values.map((v) => Math.round(v * 256))])).toEqual([
      ['active', [2, 0]],
      ['idle', [2, 0]],
      ['present', [0, 4]],
      ['swapped', [1, 1]],
    ]);
    expect(vm!.active_split).toBe('some');
    expect(vm!.balloon).toEqual({ target: [1, 1], actual: [0, 0.5] });
    expect(vm!.mrcs).toEqual([{ ...MRC, t: 0 }]);
    // Two samples per bucket: fired 0,1,2,0 of 2 → 0, 0.5, 1, 0 (the first row covers the first sample only).
    expect(vm!.heat!.values).toEqual([[0, 0.5, 1, 0], [0, 0.5, 1, 0]]);
    expect(vm!.heat!.mib_per_bucket).toBe(0.0078);
    expect(model.host.ladder).toBeNull();
  });

  it('refuses a timeline with no VM', () => {
    expect(() => buildReportModel(parseTimeline(file(JSON.stringify(HEADER), sample(0, []), END, ''), 't'), 't')).toThrow('t: no VMs: none of its 1 samples records a VM');
  });

  it('inlines the charting library: the page names nothing outside itself', () => {
    const html = renderReportHtml(buildReportModel(parseTimeline(file(JSON.stringify(HEADER), sample(0), END, ''), 't'), '<t>'), readChartLibrary());
    expect(html).toContain('uPlot');
    expect(html).toContain('&#60;t&#62;');
    // No script, stylesheet, image or font fetched from elsewhere (a URL in the library's licence comment is text).
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=|<img|url\(|@import/);
  });
});

/** tools/report through tsx, as a user runs it. */
const report = (args: readonly string[]) => spawnNode(['--import', 'tsx', 'tools/report.ts', ...args]);

describe('tools/report', () => {
  it.each([
    ['a missing file', 'missing.timeline', null, /^error: .*missing\.timeline: no such file\n$/],
    ['a malformed file', 'bad.timeline', file(JSON.stringify(HEADER), 'oops', sample(0), ''), /^error: .*bad\.timeline:2: malformed: not a JSON object \(oops\)\n$/],
    ['another version', 'v2.timeline', file(JSON.stringify({ ...HEADER, version: 2 }), sample(0), ''), /^error: .*v2\.timeline:1: timeline format version 2 is not supported/],
    ['a timeline without VMs', 'empty.timeline', file(JSON.stringify(HEADER), sample(0, []), END, ''), /^error: .*empty\.timeline: no VMs/],
  ])('refuses %s: one error line, no stack trace, exit 1', async (_what, name, text, message) => {
    const path = join(work, name);
    if (text !== null) writeFileSync(path, text);
    const outcome = await report(['--timeline', path, '--out', join(work, `${name}.html`)]);
    expect(outcome.stderr).toMatch(message);
    expect(outcome.stderr.split('\n')).toHaveLength(2);
    expect(outcome.stderr).not.toMatch(/\n\s+at /);
    expect(outcome.code).toBe(1);
    expect(existsSync(join(work, `${name}.html`))).toBe(false);
  }, 60_000);

  it('usage errors exit 2; --help exits 0', async () => {
    const noOut = await report(['--timeline', 'x']);
    expect(noOut.code).toBe(2);
    expect(noOut.stderr).toMatch(/^error: --out FILE is required\nusage: report --timeline FILE --out FILE.html/);
    expect((await report(['--out', 'x'])).code).toBe(2);
    expect((await report(['--timeline', 'x', '--out', 'y', '--frobnicate'])).code).toBe(2);
    const help = await report(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: report/);
  }, 60_000);

  it('writes the page for a crashed recording (exit 0, the warnings on stderr); bytevisor report does the same', async () => {
    const path = join(work, 'crashed.timeline');
    writeFileSync(path, file(JSON.stringify(HEADER), sample(0), sample(250), sample(500).slice(0, 30)));
    const out = join(work, 'crashed.html');
    const outcome = await report(['--timeline', path, '--out', out]);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toBe('');
    expect(outcome.stderr).toContain('warning: ');
    expect(outcome.stderr).toContain('line 4 is incomplete');
    expect(outcome.stderr).toMatch(/report: wrote .*crashed\.html \(.*\): 1 VM, 2 samples over 0\.3 s\n$/);
    expect(readFileSync(out, 'utf8')).toContain('line 4 is incomplete');
    const quiet = await spawnNode(['--import', 'tsx', 'tools/bytevisor-cli.ts', 'report', '--timeline', path, '--out', join(work, 'quiet.html'), '--quiet']);
    expect(quiet).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(existsSync(join(work, 'quiet.html'))).toBe(true);
  }, 60_000);
});

describe('tools/host --record', () => {
  it('records until the host exits, ending the file cleanly; a bad --record path is one error line', async () => {
    const config = join(work, 'host.json');
    writeFileSync(config, JSON.stringify({ host_memory_mib: 32, vms: [{ name: 's', image: KERNEL, memory_mib: 16, boot_args: 'sieve 2000' }] }));
    const path = join(work, 'cli.timeline');
    const socket = join(work, 'cli.sock');
    const outcome = await spawnNode(['--import', 'tsx', 'tools/host.ts', '--config', config, '--api-sock', socket, '--record', path, '--record-interval', '20', '--exit-when-stopped']);
    expect(outcome.stderr).toContain(`host: recording a timeline into ${path} every 20 ms`);
    expect(outcome.code).toBe(0);
    const timeline = readTimeline(path);
    expect(timeline.complete).toBe(true);
    expect(timeline.header.interval_ms).toBe(20);
    expect(timeline.samples[timeline.samples.length - 1]!.vms.map((vm) => [vm.name, vm.state])).toEqual([['s', 'Stopped']]);

    const bad = await spawnNode(['--import', 'tsx', 'tools/host.ts', '--config', config, '--api-sock', join(work, 'bad.sock'), '--record', join(work, 'no', 'such', 'dir', 't')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/error: .*no\/such\/dir\/t: cannot create the timeline: ENOENT/);
    expect(bad.stderr).not.toMatch(/\n\s+at /);
    const usage = await spawnNode(['--import', 'tsx', 'tools/host.ts', '--api-sock', join(work, 'u.sock'), '--record-interval', '20']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^error: --record-interval needs --record FILE/);
  }, 90_000);
});

/** Runs headless Chromium on a page and returns the DOM after its scripts ran. */
function dumpDom(page: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const profile = mkdtempSync(join(work, 'chromium-'));
    const child = spawn(chromium!, [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', `--user-data-dir=${profile}`,
      '--window-size=1200,900', '--virtual-time-budget=5000', '--dump-dom', pathToFileURL(page).href,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0 && stdout.includes('</body>')) resolve(stdout);
      else reject(new Error(`chromium exited with ${code}:\n${stderr.slice(-2000)}`));
    });
  });
}

describe('the report in a browser', () => {
  let dom = '';
  beforeAll(async () => {
    if (chromium === null) return;
    // The first test's recording, or (when it was filtered out) a small synthetic one.
    const path = recorded !== '' ? recorded : join(work, 'synthetic.timeline');
    if (recorded === '') writeFileSync(path, file(JSON.stringify(HEADER), sample(0, [{ ...VM, active_fraction: 0.5, mrc: MRC, balloon: { target_pages: 2, actual_pages: 1 } }]), sample(250), END, ''));
    const out = join(work, 'report.html');
    const outcome = await report(['--timeline', path, '--out', out]);
    expect(outcome.code).toBe(0);
    dom = await dumpDom(out);
  }, 150_000);

  it.skipIf(chromium === null)('draws every chart: the page reports them in the DOM, each with coloured pixels', () => {
    const body = /<body([^>]*)>/.exec(dom)![1]!;
    const attribute = (text: string, name: string): string | undefined => new RegExp(`${name}="([^"]*)"`).exec(text)?.[1];
    expect(attribute(body, 'data-report-error')).toBeUndefined();
    expect(attribute(body, 'data-report-state')).toBe('drawn');
    const charts = [...dom.matchAll(/<div class="chart" data-chart="([a-z]+)" data-colored-pixels="(\d+)"/g)].map((m) => ({ kind: m[1]!, pixels: Number(m[2]) }));
    expect(Number(attribute(body, 'data-charts'))).toBe(charts.length);
    expect(Number(attribute(body, 'data-charts-with-data'))).toBe(charts.length);
    for (const chart of charts) expect(chart.pixels, chart.kind).toBeGreaterThan(100);
    // Every chart the timeline calls for: the pool and the ladder; per VM memory and heat-map;
    // the balloon of the VM with one; the MRC of the VM whose provider gave one.
    const kinds = charts.map((c) => c.kind).sort();
    if (recorded !== '') {
      const vmCount = buildReportModel(recordedTimeline, 't').vms.length;
      expect(vmCount).toBe(3); // a, b and c
      expect(kinds).toEqual(['balloon', ...Array(vmCount).fill('heatmap'), 'ladder', ...Array(vmCount).fill('memory'), 'mrc', 'pool'].sort());
      expect(dom).toContain('No active fraction was recorded for this VM');
      expect(dom).toContain('Active = active fraction x guest pages');
    } else {
      expect(kinds).toEqual(['balloon', 'heatmap', 'memory', 'mrc', 'pool']);
    }
  });
});
