/**
 * The host timeline: what a TimelineRecorder (recorder.ts) writes, one JSON object per line, and
 * the reader that checks a file before anything uses it (tools/report). docs/host.md,
 * "Recording a timeline", describes the format; this file is its definition.
 *
 * A file is a header line, then one sample line per interval, then an end line when the
 * recorder stopped cleanly. The reader refuses a file that is not one (a missing or foreign
 * header, another version, a malformed line, no sample) with a TimelineError naming the line;
 * it tolerates, and reports, what a crash leaves: an incomplete last line and a missing end line.
 */
import { readFileSync } from 'node:fs';
import { BvError } from '../../guest-isa/errors.ts';

/** The `format` of the header line. */
export const TIMELINE_FORMAT = 'bytevisor-timeline';
/** The format version this code writes and reads. */
export const TIMELINE_VERSION = 1;

/** The first line. */
export interface TimelineHeader {
  /** Always `header`. */
  kind: 'header';
  /** Always `bytevisor-timeline`. */
  format: typeof TIMELINE_FORMAT;
  /** The format version (TIMELINE_VERSION). */
  version: number;
  /** Wall-clock time the recording started (ISO 8601). */
  started_at: string;
  /** Milliseconds between samples, as configured. */
  interval_ms: number;
  /** Bytes per guest page and per host frame. */
  page_size: number;
  /** Frames in the host pool. */
  pool_frames: number;
  /** Heat-map buckets per VM (fewer for a VM with fewer pages). */
  heatmap_buckets: number;
  /** Pages armed per bucket per interval (fewer in a bucket with fewer pages). */
  heatmap_samples: number;
}

/** The memory scheduler's thresholds in frames (TimelineScheduler.thresholds). */
export interface TimelineThresholds {
  /** Free frames at or above which the ladder is high. */
  high_frames: number;
  /** Below this it is soft. */
  soft_frames: number;
  /** Below this it is hard. */
  hard_frames: number;
  /** Below this it is low. */
  low_frames: number;
}

/** The memory scheduler at one sample (from GET /host/stats `memory_scheduler`). */
export interface TimelineScheduler {
  /** The ladder state: high, soft, hard or low. */
  state: string;
  /** Free frames at the scheduler's last tick. */
  free_frames: number;
  /** The thresholds in frames. */
  thresholds: TimelineThresholds;
  /** Its counters (docs/overcommit.md, Stats), as they are. */
  counters: Record<string, number>;
  /** VMs blocked now. */
  blocked_vms: string[];
}

/** A miss-rate curve: the miss ratio the VM would see with each memory size. */
export interface TimelineMrc {
  /** Memory sizes in MiB, ascending. */
  sizes_mib: number[];
  /** The miss ratio (0 to 1) at each size. */
  miss_ratio: number[];
}

/** Page-activity heat-map row: per bucket of guest pages, how many of the pages armed at the previous sample were accessed since. */
export interface TimelineHeat {
  /** Buckets: bucket b holds pages [⌊b·N/B⌋, ⌊(b+1)·N/B⌋) of the N guest pages. */
  buckets: number;
  /** Pages armed per bucket (min(samples, the bucket's pages) in each). */
  samples: number;
  /** Armed pages accessed, per bucket. */
  fired: number[];
}

/** A VM's pages by state (TimelineVm.pages): the census of GET /vms/{name}/stats. */
export interface TimelinePages {
  /** Pages with a host frame. */
  present: number;
  /** Of those, pages shared copy-on-write with another VM. */
  shared: number;
  /** Absent pages by absent state (`untouched`, `ballooned`, `swapped`, `lazy`, …). */
  absent: Record<string, number>;
}

/** A balloon's size (TimelineVm.balloon). */
export interface TimelineBalloon {
  /** Pages the host wants in the balloon. */
  target_pages: number;
  /** Pages in it. */
  actual_pages: number;
}

/** One VM at one sample. */
export interface TimelineVm {
  /** The VM's name. */
  name: string;
  /** Running, Paused or Stopped. */
  state: string;
  /** Guest instructions retired so far. */
  instructions: number;
  /** Guest RAM pages. */
  guest_pages: number;
  /** Pages by state. */
  pages: TimelinePages;
  /** The balloon's target and actual size; null for a VM without one. */
  balloon: TimelineBalloon | null;
  /** The active fraction from the activeFraction provider; null when none is wired or it has no estimate yet. */
  active_fraction: number | null;
  /** The MRC from the mrc provider, present only when it changed since the VM's previous sample (absent: unchanged or none). */
  mrc?: TimelineMrc | null;
  /** Page activity since the previous sample; null at a VM's first sample, or when no access watcher could be added. */
  heat: TimelineHeat | null;
}

/** The host pool at one sample (TimelineSample.pool). */
export interface TimelinePool {
  /** Frames in the pool. */
  total_frames: number;
  /** Frames holding guest memory. */
  used_frames: number;
  /** Frames free. */
  free_frames: number;
}

/** One interval. */
export interface TimelineSample {
  /** Always `sample`. */
  kind: 'sample';
  /** Milliseconds since the recording started. */
  t_ms: number;
  /** The host pool. */
  pool: TimelinePool;
  /** The memory scheduler, or null when it is off. */
  scheduler: TimelineScheduler | null;
  /** Every VM of the host, in creation order. */
  vms: TimelineVm[];
}

/** The last line of a recording that stopped cleanly. */
export interface TimelineEnd {
  /** Always `end`. */
  kind: 'end';
  /** Milliseconds since the recording started. */
  t_ms: number;
  /** Samples written. */
  samples: number;
}

/** A file the reader accepted. */
export interface Timeline {
  /** Its header line. */
  header: TimelineHeader;
  /** Its samples, in order. */
  samples: TimelineSample[];
  /** Whether the end line was there (false: the recorder did not stop cleanly). */
  complete: boolean;
  /** What was tolerated (an incomplete last line, no end line), one sentence each. */
  warnings: string[];
}

/** A file that is not a timeline this code can read. */
export class TimelineError extends BvError {
  constructor(message: string) {
    super('BV_TIMELINE', message);
  }
}

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);
const isCount = (value: unknown): value is number => typeof value === 'number' && Number.isInteger(value) && value >= 0;
const isNumber = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value);

/** Checks one field; `where` names it in the error. */
class Checker {
  constructor(private readonly where: string) {}

  fail(path: string, what: string): never {
    throw new TimelineError(`${this.where}: ${path} ${what}`);
  }

  object(value: unknown, path: string): Json {
    if (!isObject(value)) this.fail(path, 'must be an object');
    return value;
  }

  count(value: unknown, path: string): number {
    if (!isCount(value)) this.fail(path, `must be a whole number, got ${JSON.stringify(value)}`);
    return value;
  }

  number(value: unknown, path: string): number {
    if (!isNumber(value)) this.fail(path, `must be a number, got ${JSON.stringify(value)}`);
    return value;
  }

  string(value: unknown, path: string): string {
    if (typeof value !== 'string') this.fail(path, `must be a string, got ${JSON.stringify(value)}`);
    return value;
  }

  numbers(value: unknown, path: string): number[] {
    if (!Array.isArray(value) || !value.every(isNumber)) this.fail(path, 'must be an array of numbers');
    return value as number[];
  }
}

function checkHeader(value: unknown, where: string): TimelineHeader {
  const c = new Checker(where);
  if (!isObject(value) || value.kind !== 'header' || value.format !== TIMELINE_FORMAT) {
    throw new TimelineError(`${where}: not a bytevisor timeline (the first line must be its header, {"kind": "header", "format": "${TIMELINE_FORMAT}", …}; record one with tools/host --record FILE)`);
  }
  if (value.version !== TIMELINE_VERSION) {
    throw new TimelineError(`${where}: timeline format version ${JSON.stringify(value.version)} is not supported (this bytevisor reads version ${TIMELINE_VERSION})`);
  }
  c.string(value.started_at, 'started_at');
  c.number(value.interval_ms, 'interval_ms');
  c.count(value.page_size, 'page_size');
  c.count(value.pool_frames, 'pool_frames');
  c.count(value.heatmap_buckets, 'heatmap_buckets');
  c.count(value.heatmap_samples, 'heatmap_samples');
  return value as unknown as TimelineHeader;
}

function checkVm(value: unknown, path: string, c: Checker): TimelineVm {
  const vm = c.object(value, path);
  c.string(vm.name, `${path}.name`);
  c.string(vm.state, `${path}.state`);
  c.count(vm.instructions, `${path}.instructions`);
  const guestPages = c.count(vm.guest_pages, `${path}.guest_pages`);
  const pages = c.object(vm.pages, `${path}.pages`);
  c.count(pages.present, `${path}.pages.present`);
  c.count(pages.shared, `${path}.pages.shared`);
  const absent = c.object(pages.absent, `${path}.pages.absent`);
  for (const [state, count] of Object.entries(absent)) c.count(count, `${path}.pages.absent.${state}`);
  if (vm.balloon !== null) {
    const balloon = c.object(vm.balloon, `${path}.balloon`);
    c.count(balloon.target_pages, `${path}.balloon.target_pages`);
    c.count(balloon.actual_pages, `${path}.balloon.actual_pages`);
  }
  if (vm.active_fraction !== null) {
    const f = c.number(vm.active_fraction, `${path}.active_fraction`);
    if (f < 0 || f > 1) c.fail(`${path}.active_fraction`, `must be from 0 to 1, got ${f}`);
  }
  if (vm.mrc !== undefined && vm.mrc !== null) {
    const mrc = c.object(vm.mrc, `${path}.mrc`);
    const sizes = c.numbers(mrc.sizes_mib, `${path}.mrc.sizes_mib`);
    const ratios = c.numbers(mrc.miss_ratio, `${path}.mrc.miss_ratio`);
    if (sizes.length !== ratios.length) c.fail(`${path}.mrc`, `has ${sizes.length} sizes and ${ratios.length} miss ratios`);
  }
  if (vm.heat !== null) {
    const heat = c.object(vm.heat, `${path}.heat`);
    const buckets = c.count(heat.buckets, `${path}.heat.buckets`);
    c.count(heat.samples, `${path}.heat.samples`);
    const fired = c.numbers(heat.fired, `${path}.heat.fired`);
    if (fired.length !== buckets || buckets > Math.max(1, guestPages)) c.fail(`${path}.heat.fired`, `must have one count per bucket (${buckets})`);
  }
  return vm as unknown as TimelineVm;
}

function checkSample(value: Json, c: Checker): TimelineSample {
  c.number(value.t_ms, 't_ms');
  const pool = c.object(value.pool, 'pool');
  c.count(pool.total_frames, 'pool.total_frames');
  c.count(pool.used_frames, 'pool.used_frames');
  c.count(pool.free_frames, 'pool.free_frames');
  if (value.scheduler !== null) {
    const s = c.object(value.scheduler, 'scheduler');
    c.string(s.state, 'scheduler.state');
    c.count(s.free_frames, 'scheduler.free_frames');
    c.object(s.thresholds, 'scheduler.thresholds');
    c.object(s.counters, 'scheduler.counters');
    if (!Array.isArray(s.blocked_vms)) c.fail('scheduler.blocked_vms', 'must be an array');
  }
  if (!Array.isArray(value.vms)) c.fail('vms', 'must be an array');
  (value.vms as unknown[]).forEach((vm, index) => checkVm(vm, `vms[${index}]`, c));
  return value as unknown as TimelineSample;
}

/** Called with the bytes read so far, for a progress bar. */
export type TimelineProgress = (bytesDone: number, bytesTotal: number) => void;

/**
 * Checks a timeline's text (`name` starts every error: the file's path). Throws TimelineError
 * for a file it cannot use; an incomplete last line and a missing end line become warnings.
 */
export function parseTimeline(text: string, name: string, progress?: TimelineProgress): Timeline {
  if (text.length === 0) throw new TimelineError(`${name}: the file is empty (not a timeline, or the recorder never wrote its header)`);
  const lines = text.split('\n');
  // A file that ends with a newline splits into a last empty string; otherwise the last line is incomplete.
  const endsClean = lines[lines.length - 1] === '';
  if (endsClean) lines.pop();
  const warnings: string[] = [];
  let header: TimelineHeader | null = null;
  const samples: TimelineSample[] = [];
  let end: TimelineEnd | null = null;
  let offset = 0;
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index]!;
    const where = `${name}:${index + 1}`;
    const last = index === lines.length - 1;
    offset += line.length + 1;
    if (progress !== undefined && (index & 1023) === 0) progress(Math.min(offset, text.length), text.length);
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      if (last && !endsClean) {
        if (header === null) throw new TimelineError(`${where}: the file is truncated: its header line is incomplete`);
        warnings.push(`line ${index + 1} is incomplete (the recorder stopped in the middle of writing it): ignored`);
        break;
      }
      if (line.trim() === '') throw new TimelineError(`${where}: malformed: an empty line`);
      throw new TimelineError(`${where}: malformed: not a JSON object (${line.length > 40 ? `${line.slice(0, 40)}…` : line})`);
    }
    if (header === null) {
      header = checkHeader(value, where);
      continue;
    }
    if (end !== null) throw new TimelineError(`${where}: malformed: a line after the end line`);
    if (!isObject(value)) throw new TimelineError(`${where}: malformed: not a JSON object`);
    const c = new Checker(where);
    if (value.kind === 'sample') {
      const sample = checkSample(value, c);
      if (samples.length > 0 && sample.t_ms < samples[samples.length - 1]!.t_ms) c.fail('t_ms', 'goes backwards');
      samples.push(sample);
    } else if (value.kind === 'end') {
      c.number(value.t_ms, 't_ms');
      c.count(value.samples, 'samples');
      end = value as unknown as TimelineEnd;
    } else {
      c.fail('kind', `must be "sample" or "end", got ${JSON.stringify(value.kind)}`);
    }
  }
  if (header === null) throw new TimelineError(`${name}: the file is truncated: no header line`);
  if (samples.length === 0) throw new TimelineError(`${name}: the file is truncated: no sample after the header (the recorder writes one at once when it starts)`);
  if (end === null) warnings.push(`no end line: the recorder did not stop cleanly (the host was killed?); the timeline ends at ${(samples[samples.length - 1]!.t_ms / 1000).toFixed(1)} s`);
  progress?.(text.length, text.length);
  return { header, samples, complete: end !== null, warnings };
}

/** Reads and checks a timeline file (parseTimeline); a file that cannot be read is a TimelineError too. */
export function readTimeline(path: string, progress?: TimelineProgress): Timeline {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new TimelineError(`${path}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : `cannot read: ${(error as Error).message}`}`);
  }
  return parseTimeline(text, path, progress);
}
