/**
 * The HTML page of tools/report: a host timeline (services/host/timeline.ts) turned into what the
 * page draws (buildReportModel) and the self-contained page itself (renderReportHtml), with the
 * charting library, uPlot, inlined so that it works offline.
 *
 * The page draws, per VM: memory over time stacked by state, balloon target versus actual, the
 * latest MRCs and the page-activity heat-map; for the host: the pool and the memory scheduler's
 * ladder state. When it has drawn, it writes what it drew into the DOM (`data-report-state`,
 * `data-charts`, `data-charts-with-data` on <body>, `data-chart` and `data-colored-pixels` on each
 * chart), which tests/tools/report.test.ts reads from a headless browser.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Timeline, TimelineMrc, TimelineSample, TimelineVm } from '../services/host/timeline.ts';
import { TimelineError } from '../services/host/timeline.ts';

/** Most points a line chart gets; longer timelines are averaged over windows. */
export const MAX_CHART_POINTS = 2000;
/** Most time columns of a heat-map. */
export const MAX_HEAT_COLUMNS = 600;
/** MRCs drawn per VM: the latest and up to this many earlier ones. */
export const EARLIER_MRCS = 3;

const PAGES_PER_MIB = 256;
/** Ladder states, from the most free memory down, and the y value each is drawn at. */
const LADDER = ['low', 'hard', 'soft', 'high'] as const;

/** One stacked band of a VM's memory chart, in MiB per point. */
export interface ReportBand {
  key: string;
  label: string;
  values: number[];
}

/** One VM as the page draws it. */
export interface ReportVm {
  name: string;
  /** Guest RAM in MiB (its last sample). */
  memory_mib: number;
  /** The state and instructions at its last sample. */
  last_state: string;
  instructions: number;
  /** Samples that had this VM. */
  samples: number;
  /** Seconds since the recording started, one per point. */
  t: number[];
  /** The bands, bottom first; only those with a page somewhere. */
  bands: ReportBand[];
  /** Whether an active fraction was recorded (active and idle told apart). */
  active_split: 'all' | 'some' | 'none';
  /** Balloon target and actual in MiB, or null for a VM without a balloon. */
  balloon: { target: number[]; actual: number[] } | null;
  /** The latest MRC last, with up to EARLIER_MRCS earlier ones before it; each with its time in seconds. */
  mrcs: (TimelineMrc & { t: number })[];
  /** The heat-map, or null when no sample had a row. */
  heat: { t0: number[]; t1: number[]; buckets: number; mib_per_bucket: number; values: (number | null)[][] } | null;
}

/** What the page draws. */
export interface ReportModel {
  title: string;
  started_at: string;
  interval_ms: number;
  duration_s: number;
  samples: number;
  complete: boolean;
  warnings: string[];
  heatmap: { buckets: number; samples: number };
  host: {
    t: number[];
    pool_mib: number;
    used_mib: number[];
    free_mib: number[];
    /** The ladder state as LADDER's index (3 high … 0 low), or null where the scheduler was off. */
    ladder: (number | null)[] | null;
    /** The last thresholds in MiB of free memory. */
    thresholds_mib: { high: number; soft: number; hard: number; low: number } | null;
    /** The last counters of the scheduler. */
    counters: Record<string, number> | null;
  };
  vms: ReportVm[];
}

/** Windows of consecutive indices [start, end) so that there are at most `max`. */
function windows(count: number, max: number): [number, number][] {
  const out: [number, number][] = [];
  const size = Math.max(1, Math.ceil(count / max));
  for (let start = 0; start < count; start += size) out.push([start, Math.min(count, start + size)]);
  return out;
}

function mean(values: readonly number[], [start, end]: [number, number]): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum += values[i]!;
  return sum / (end - start);
}

const round = (value: number, digits = 3): number => Math.round(value * 10 ** digits) / 10 ** digits;
const mib = (pages: number): number => round(pages / PAGES_PER_MIB);

/** A VM's pages at one sample, by the page's band. */
function bandsOf(vm: TimelineVm): Record<string, number> {
  const absent = vm.pages.absent;
  const sharedPresent = Math.min(vm.pages.shared, vm.pages.present);
  const own = vm.pages.present - sharedPresent;
  const out: Record<string, number> = {
    active: 0,
    idle: 0,
    present: 0,
    shared: sharedPresent + (absent.shared ?? 0),
    ballooned: absent.ballooned ?? 0,
    swapped: absent.swapped ?? 0,
    lazy: (absent.lazy ?? 0) + (absent.deferred ?? 0),
  };
  if (vm.active_fraction === null) {
    out.present = own;
  } else {
    out.active = Math.min(own, Math.round(vm.active_fraction * vm.guest_pages));
    out.idle = own - out.active;
  }
  return out;
}

const BAND_LABELS: readonly [string, string][] = [
  ['active', 'active'],
  ['idle', 'idle'],
  ['present', 'present (active and idle not told apart)'],
  ['shared', 'shared'],
  ['ballooned', 'ballooned'],
  ['swapped', 'swapped'],
  ['lazy', 'not yet restored (lazy)'],
];

function buildVm(name: string, entries: { sample: TimelineSample; vm: TimelineVm }[], recordingStart: number): ReportVm {
  const last = entries[entries.length - 1]!.vm;
  const wins = windows(entries.length, MAX_CHART_POINTS);
  const seconds = entries.map((e) => (e.sample.t_ms - recordingStart) / 1000);
  const t = wins.map(([, end]) => round(seconds[end - 1]!));
  const perSample = entries.map((e) => bandsOf(e.vm));
  const bands: ReportBand[] = [];
  for (const [key, label] of BAND_LABELS) {
    const raw = perSample.map((b) => b[key]!);
    if (!raw.some((v) => v > 0) && !(key === 'present' && perSample.every((b) => b.active + b.idle === 0))) continue;
    bands.push({ key, label, values: wins.map((w) => mib(mean(raw, w))) });
  }
  const fractions = entries.filter((e) => e.vm.active_fraction !== null).length;
  const withBalloon = entries.some((e) => e.vm.balloon !== null);
  const targets = withBalloon ? entries.map((e) => e.vm.balloon?.target_pages ?? 0) : [];
  const actuals = withBalloon ? entries.map((e) => e.vm.balloon?.actual_pages ?? 0) : [];
  const balloon = withBalloon ? { target: wins.map((w) => mib(mean(targets, w))), actual: wins.map((w) => mib(mean(actuals, w))) } : null;
  // MRCs: the value a sample carries replaces the one before (absent: unchanged).
  const curves: (TimelineMrc & { t: number })[] = [];
  let current: TimelineMrc | null = null;
  for (const [index, e] of entries.entries()) {
    if (e.vm.mrc === undefined) continue;
    current = e.vm.mrc;
    if (current !== null && current.sizes_mib.length > 0) curves.push({ ...current, t: round(seconds[index]!) });
  }
  const mrcs = current === null ? [] : curves.slice(-(EARLIER_MRCS + 1));
  // The heat-map: a row covers the time from the sample before it to its own.
  const rows = entries.map((e, index) => ({ heat: e.vm.heat, t0: index === 0 ? seconds[0]! : seconds[index - 1]!, t1: seconds[index]! })).filter((r) => r.heat !== null);
  let heat: ReportVm['heat'] = null;
  if (rows.length > 0) {
    const buckets = rows[rows.length - 1]!.heat!.buckets;
    const pages = last.guest_pages;
    const columns = windows(rows.length, MAX_HEAT_COLUMNS);
    const fraction = (row: (typeof rows)[number], b: number): number | null => {
      const h = row.heat!;
      if (h.buckets !== buckets) return null;
      const size = Math.floor(((b + 1) * pages) / buckets) - Math.floor((b * pages) / buckets);
      const armed = Math.min(h.samples, size);
      return armed === 0 ? null : Math.min(1, h.fired[b]! / armed);
    };
    const values = columns.map(([start, end]) =>
      Array.from({ length: buckets }, (_, b) => {
        let sum = 0;
        let n = 0;
        for (let i = start; i < end; i++) {
          const v = fraction(rows[i]!, b);
          if (v === null) continue;
          sum += v;
          n++;
        }
        return n === 0 ? null : round(sum / n, 3);
      }),
    );
    heat = {
      t0: columns.map(([start]) => round(rows[start]!.t0)),
      t1: columns.map(([, end]) => round(rows[end - 1]!.t1)),
      buckets,
      mib_per_bucket: round(pages / buckets / PAGES_PER_MIB, 4),
      values,
    };
  }
  return {
    name,
    memory_mib: mib(last.guest_pages),
    last_state: last.state,
    instructions: last.instructions,
    samples: entries.length,
    t,
    bands,
    active_split: fractions === 0 ? 'none' : fractions === entries.length ? 'all' : 'some',
    balloon,
    mrcs,
    heat,
  };
}

/** What the page draws from a timeline. Throws TimelineError when it has no VM. */
export function buildReportModel(timeline: Timeline, title: string): ReportModel {
  const { header, samples } = timeline;
  const start = samples[0]!.t_ms;
  const byVm = new Map<string, { sample: TimelineSample; vm: TimelineVm }[]>();
  for (const sample of samples) {
    for (const vm of sample.vms) {
      let list = byVm.get(vm.name);
      if (list === undefined) byVm.set(vm.name, (list = []));
      list.push({ sample, vm });
    }
  }
  if (byVm.size === 0) throw new TimelineError(`${title}: no VMs: none of its ${samples.length} samples records a VM (the host had none while it recorded)`);
  const wins = windows(samples.length, MAX_CHART_POINTS);
  const used = samples.map((s) => s.pool.used_frames);
  const free = samples.map((s) => s.pool.free_frames);
  const schedulerOn = samples.some((s) => s.scheduler !== null);
  const lastScheduler = [...samples].reverse().find((s) => s.scheduler !== null)?.scheduler ?? null;
  const ladderIndex = (state: string | undefined): number | null => {
    const index = LADDER.indexOf(state as (typeof LADDER)[number]);
    return index < 0 ? null : index;
  };
  return {
    title,
    started_at: header.started_at,
    interval_ms: header.interval_ms,
    duration_s: round((samples[samples.length - 1]!.t_ms - start) / 1000, 1),
    samples: samples.length,
    complete: timeline.complete,
    warnings: timeline.warnings,
    heatmap: { buckets: header.heatmap_buckets, samples: header.heatmap_samples },
    host: {
      t: wins.map(([, end]) => round((samples[end - 1]!.t_ms - start) / 1000)),
      pool_mib: mib(header.pool_frames),
      used_mib: wins.map((w) => mib(mean(used, w))),
      free_mib: wins.map((w) => mib(mean(free, w))),
      // The ladder is a state, not a quantity: each point shows the lowest state of its window.
      ladder: schedulerOn
        ? wins.map(([a, b]) => {
            let lowest: number | null = null;
            for (let i = a; i < b; i++) {
              const index = ladderIndex(samples[i]!.scheduler?.state);
              if (index !== null) lowest = lowest === null ? index : Math.min(lowest, index);
            }
            return lowest;
          })
        : null,
      thresholds_mib:
        lastScheduler === null
          ? null
          : {
              high: mib(lastScheduler.thresholds.high_frames),
              soft: mib(lastScheduler.thresholds.soft_frames),
              hard: mib(lastScheduler.thresholds.hard_frames),
              low: mib(lastScheduler.thresholds.low_frames),
            },
      counters: lastScheduler?.counters ?? null,
    },
    vms: [...byVm.entries()].map(([name, entries]) => buildVm(name, entries, start)),
  };
}

/** The uPlot files the page inlines, read from node_modules (the package's dependency). */
export function readChartLibrary(): { script: string; css: string; version: string } {
  const require = createRequire(import.meta.url);
  let manifest: string;
  try {
    manifest = require.resolve('uplot/package.json');
  } catch {
    throw new TimelineError(`the charting library uPlot is not installed (run 'npm install' in the bytevisor package)`);
  }
  const dir = dirname(manifest);
  const version = (JSON.parse(readFileSync(manifest, 'utf8')) as { version: string }).version;
  return {
    script: readFileSync(join(dir, 'dist', 'uPlot.iife.min.js'), 'utf8'),
    css: readFileSync(join(dir, 'dist', 'uPlot.min.css'), 'utf8'),
    version,
  };
}

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
/** Text that may sit inside <script>…</script> or <style> without ending it early. */
const inlineSafe = (text: string): string => text.replace(/<\/(script|style)/gi, '<\\/$1').replace(/<!--/g, '<\\!--');

const PAGE_CSS = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1160px; padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 4px; } .meta, .note { color: #555; } .note { font-size: 13px; margin: 2px 0 8px; }
.warning { background: #fff4d6; border: 1px solid #e6c25a; padding: 6px 10px; margin: 6px 0; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; } .chart { margin: 4px 0 10px; }
`;

/**
 * The page's own script: draws every chart from the JSON in #timeline-data with uPlot, then
 * writes what it drew into the DOM. Plain ES2017, no template literals (this is a TS string).
 */
const PAGE_SCRIPT = String.raw`
(function () {
  'use strict';
  var model = JSON.parse(document.getElementById('timeline-data').textContent);
  var charts = [];
  var COLORS = { active: '#d62728', idle: '#ff9f80', present: '#e377c2', shared: '#2ca02c', ballooned: '#1f77b4', swapped: '#9467bd', lazy: '#8c8c00' };
  var LADDER = ['low', 'hard', 'soft', 'high'];

  function width(el) { return Math.max(360, Math.min(1100, (el.parentNode && el.parentNode.clientWidth) || 900)); }
  function fromZero(u, min, max) { return [0, max > 0 ? max * 1.05 : 1]; }
  function container(parent, kind) {
    var el = document.createElement('div');
    el.className = 'chart';
    el.setAttribute('data-chart', kind);
    parent.appendChild(el);
    return el;
  }
  function note(parent, text) {
    var p = document.createElement('p');
    p.className = 'note';
    p.textContent = text;
    parent.appendChild(p);
  }
  function heading(parent, text) {
    var h = document.createElement('h3');
    h.textContent = text;
    parent.appendChild(h);
  }
  function plot(parent, kind, opts, data) {
    var el = container(parent, kind);
    opts.width = width(el);
    opts.height = opts.height || 220;
    var u = new uPlot(opts, data, el);
    charts.push({ u: u, el: el, kind: kind });
    return u;
  }
  function secondsAxis() { return { label: 'seconds', values: function (u, splits) { return splits.map(function (v) { return v.toFixed(v < 10 && v % 1 ? 1 : 0); }); } }; }
  function mibAxis(label) { return { label: label || 'MiB', size: 60 }; }

  function memoryChart(parent, vm) {
    // Stacked: each series is the sum of its band and those below; drawn top first, each filled
    // to zero, so the lower bands paint over the upper ones and show as layers.
    var sums = [];
    var running = vm.t.map(function () { return 0; });
    vm.bands.forEach(function (band) {
      running = running.map(function (v, i) { return Math.round((v + band.values[i]) * 1000) / 1000; });
      sums.push(running);
    });
    var order = vm.bands.map(function (b, i) { return i; }).reverse();
    var series = [{}];
    var data = [vm.t];
    order.forEach(function (i) {
      var band = vm.bands[i];
      series.push({ label: band.label, stroke: COLORS[band.key], fill: COLORS[band.key], width: 1,
        value: function (u, v, si, idx) { return idx == null ? '--' : band.values[idx].toFixed(2) + ' MiB'; } });
      data.push(sums[i]);
    });
    series.push({ label: 'guest RAM', stroke: '#333', dash: [6, 4], width: 1, value: function () { return vm.memory_mib + ' MiB'; } });
    data.push(vm.t.map(function () { return vm.memory_mib; }));
    plot(parent, 'memory', { title: vm.name + ': memory by state', scales: { x: { time: false }, y: { range: fromZero } },
      axes: [secondsAxis(), mibAxis()], series: series }, data);
  }

  function balloonChart(parent, vm) {
    plot(parent, 'balloon', { title: vm.name + ': balloon target and actual', scales: { x: { time: false }, y: { range: fromZero } },
      axes: [secondsAxis(), mibAxis()],
      series: [{}, { label: 'target', stroke: '#1f77b4', width: 2, dash: [8, 4], paths: uPlot.paths.stepped({ align: 1 }) },
        { label: 'actual', stroke: '#ff7f0e', width: 2, fill: 'rgba(255,127,14,0.15)' }] },
      [vm.t, vm.balloon.target, vm.balloon.actual]);
  }

  function mrcChart(parent, vm) {
    var xs = [];
    vm.mrcs.forEach(function (c) { c.sizes_mib.forEach(function (s) { if (xs.indexOf(s) < 0) xs.push(s); }); });
    xs.sort(function (a, b) { return a - b; });
    var data = [xs];
    var series = [{}];
    vm.mrcs.forEach(function (c, k) {
      var latest = k === vm.mrcs.length - 1;
      var ys = xs.map(function (x) { var i = c.sizes_mib.indexOf(x); return i < 0 ? null : c.miss_ratio[i]; });
      data.push(ys);
      var fade = 0.25 + 0.5 * (k + 1) / vm.mrcs.length;
      series.push({ label: (latest ? 'latest, ' : '') + c.t.toFixed(1) + ' s', spanGaps: true, width: latest ? 2.5 : 1.5,
        stroke: latest ? '#d62728' : 'rgba(31,119,180,' + fade.toFixed(2) + ')', points: { show: xs.length <= 40 } });
    });
    plot(parent, 'mrc', { title: vm.name + ': miss-rate curves', scales: { x: { time: false }, y: { range: [0, 1] } },
      axes: [{ label: 'memory (MiB)' }, { label: 'miss ratio', size: 60 }], series: series }, data);
  }

  function heatColor(v) {
    // 0: pale yellow, 1: dark red.
    var r = Math.round(255 - 90 * v), g = Math.round(245 - 225 * v), b = Math.round(200 - 180 * v);
    return 'rgb(' + r + ',' + g + ',' + b + ')';
  }

  function heatChart(parent, vm) {
    var h = vm.heat;
    var top = h.buckets * h.mib_per_bucket;
    var xs = [h.t0[0]].concat(h.t1);
    var ys = xs.map(function () { return null; });
    plot(parent, 'heatmap', { title: vm.name + ': page activity (share of sampled pages touched, per guest page range)', height: 260,
      scales: { x: { time: false }, y: { range: [0, top] } }, legend: { show: false }, cursor: { show: false },
      axes: [secondsAxis(), { label: 'guest-physical MiB', size: 60 }],
      series: [{}, { label: 'activity', stroke: 'transparent', points: { show: false } }],
      hooks: { draw: [function (u) {
        var ctx = u.ctx;
        ctx.save();
        for (var c = 0; c < h.values.length; c++) {
          var x0 = Math.round(u.valToPos(h.t0[c], 'x', true)), x1 = Math.round(u.valToPos(h.t1[c], 'x', true));
          if (x1 <= x0) x1 = x0 + 1;
          for (var b = 0; b < h.buckets; b++) {
            var v = h.values[c][b];
            ctx.fillStyle = v === null ? '#e4e4e4' : heatColor(v);
            var y1 = Math.round(u.valToPos(b * h.mib_per_bucket, 'y', true)), y0 = Math.round(u.valToPos((b + 1) * h.mib_per_bucket, 'y', true));
            ctx.fillRect(x0, y0, x1 - x0, Math.max(1, y1 - y0));
          }
        }
        ctx.restore();
      }] } }, [xs, ys]);
  }

  function hostCharts(parent) {
    var host = model.host;
    var series = [{}, { label: 'used', stroke: '#555', fill: 'rgba(85,85,85,0.25)', width: 1 }, { label: 'free', stroke: '#2ca02c', width: 2 }];
    var data = [host.t, host.used_mib, host.free_mib];
    if (host.thresholds_mib) {
      ['high', 'soft', 'hard', 'low'].forEach(function (name, i) {
        var v = host.thresholds_mib[name];
        series.push({ label: name + ' threshold (free)', stroke: ['#bcbd22', '#ff7f0e', '#d62728', '#7f0000'][i], dash: [4, 4], width: 1 });
        data.push(host.t.map(function () { return v; }));
      });
    }
    plot(parent, 'pool', { title: 'host pool (' + host.pool_mib + ' MiB)', scales: { x: { time: false }, y: { range: [0, host.pool_mib] } },
      axes: [secondsAxis(), mibAxis()], series: series }, data);
    if (host.ladder) {
      plot(parent, 'ladder', { title: 'memory scheduler: ladder state', height: 160, scales: { x: { time: false }, y: { range: [-0.3, 3.3] } },
        axes: [secondsAxis(), { size: 60, splits: function () { return [0, 1, 2, 3]; }, values: function (u, splits) { return splits.map(function (v) { return LADDER[v] || ''; }); } }],
        series: [{}, { label: 'state', stroke: '#d62728', width: 2, fill: 'rgba(214,39,40,0.12)', paths: uPlot.paths.stepped({ align: 1 }),
          value: function (u, v, si, idx) { return idx == null ? '--' : v == null ? 'off' : LADDER[v]; } }] }, [host.t, host.ladder]);
    } else {
      note(parent, 'The memory scheduler was off in this recording (no overcommit): there is no ladder state to show.');
    }
  }

  function draw() {
    var root = document.getElementById('charts');
    var hostSection = document.createElement('section');
    var h2 = document.createElement('h2');
    h2.textContent = 'Host';
    hostSection.appendChild(h2);
    root.appendChild(hostSection);
    hostCharts(hostSection);
    model.vms.forEach(function (vm) {
      var section = document.createElement('section');
      section.setAttribute('data-vm', vm.name);
      var title = document.createElement('h2');
      title.textContent = 'VM ' + vm.name;
      section.appendChild(title);
      root.appendChild(section);
      note(section, vm.memory_mib + ' MiB of guest RAM; ' + vm.samples + ' samples; last seen ' + vm.last_state + ' after ' + vm.instructions.toLocaleString('en-US') + ' instructions.');
      heading(section, 'Memory by state');
      if (vm.active_split === 'none') note(section, 'No active fraction was recorded for this VM: its present pages are shown as one band (active and idle are not told apart).');
      else if (vm.active_split === 'some') note(section, 'The active fraction was recorded for part of the time only: elsewhere present pages are one band.');
      else note(section, 'Active = active fraction x guest pages (at most the present pages not shared); idle = the rest of the present pages.');
      memoryChart(section, vm);
      heading(section, 'Balloon');
      if (vm.balloon) balloonChart(section, vm); else note(section, 'This VM has no balloon.');
      heading(section, 'Miss-rate curve');
      if (vm.mrcs.length > 0) mrcChart(section, vm); else note(section, 'No miss-rate curve was recorded for this VM.');
      heading(section, 'Page activity');
      if (vm.heat) {
        note(section, 'Each column is one interval; each row a range of ' + vm.heat.mib_per_bucket + ' MiB of guest-physical memory. Colour: the share of the ' + model.heatmap.samples + ' pages sampled in the range that the guest touched (pale: none, dark red: all; grey: not sampled).');
        heatChart(section, vm);
      } else {
        note(section, 'No page activity was recorded for this VM.');
      }
    });
  }

  function coloredPixels(canvas) {
    var ctx = canvas.getContext('2d');
    var pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    var n = 0;
    for (var i = 0; i < pixels.length; i += 4) {
      if (pixels[i + 3] < 40) continue;
      var r = pixels[i], g = pixels[i + 1], b = pixels[i + 2];
      if (Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
    }
    return n;
  }

  function mark() {
    var withData = 0;
    charts.forEach(function (c) {
      var canvas = c.el.querySelector('canvas');
      var n = canvas ? coloredPixels(canvas) : 0;
      c.el.setAttribute('data-colored-pixels', String(n));
      if (n > 0) withData++;
    });
    document.body.setAttribute('data-charts', String(charts.length));
    document.body.setAttribute('data-charts-with-data', String(withData));
    document.body.setAttribute('data-report-state', 'drawn');
  }

  try {
    draw();
    // uPlot draws in a microtask after construction: look at the canvases after it.
    setTimeout(function () {
      try { mark(); } catch (e) { document.body.setAttribute('data-report-error', String(e && e.message || e)); }
    }, 0);
  } catch (e) {
    document.body.setAttribute('data-report-state', 'failed');
    document.body.setAttribute('data-report-error', String(e && e.message || e));
    throw e;
  }
})();
`;

function summaryTable(model: ReportModel): string {
  const rows = model.vms.map((vm) => {
    const last = vm.bands.map((b) => `${b.label.split(' ')[0]} ${b.values[b.values.length - 1]!.toFixed(1)}`).join(', ');
    return `<tr><td>${escapeHtml(vm.name)}</td><td>${vm.memory_mib}</td><td>${escapeHtml(vm.last_state)}</td><td>${vm.instructions.toLocaleString('en-US')}</td><td>${vm.samples}</td><td>${escapeHtml(last)}</td></tr>`;
  });
  return `<table><tr><th>VM</th><th>RAM (MiB)</th><th>last state</th><th>instructions</th><th>samples</th><th>at the end (MiB)</th></tr>${rows.join('')}</table>`;
}

/** The self-contained page: the model as JSON, uPlot and the page's script inlined. */
export function renderReportHtml(model: ReportModel, library: { script: string; css: string; version: string }): string {
  const json = JSON.stringify(model).replace(/</g, '\\u003c');
  const warnings = model.warnings.map((w) => `<p class="warning">${escapeHtml(w)}</p>`).join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="bytevisor tools/report (charts: uPlot ${escapeHtml(library.version)}, MIT)">
<title>bytevisor host timeline: ${escapeHtml(model.title)}</title>
<style>${inlineSafe(library.css)}</style>
<style>${PAGE_CSS}</style>
</head>
<body data-report-state="loading">
<h1>Host timeline</h1>
<p class="meta">${escapeHtml(model.title)} — started ${escapeHtml(model.started_at)}, ${model.samples} samples every ${model.interval_ms} ms over ${model.duration_s} s${model.complete ? '' : ' (the recording did not end cleanly)'}; ${model.vms.length} VM${model.vms.length === 1 ? '' : 's'}.</p>
${warnings}
${summaryTable(model)}
<noscript><p class="warning">The charts need JavaScript.</p></noscript>
<div id="charts"></div>
<script type="application/json" id="timeline-data">${json}</script>
<script>${inlineSafe(library.script)}</script>
<script>${inlineSafe(PAGE_SCRIPT)}</script>
</body>
</html>
`;
}
