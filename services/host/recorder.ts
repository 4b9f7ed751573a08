/**
 * TimelineRecorder: records a host over time into a timeline file (timeline.ts; docs/host.md,
 * "Recording a timeline"), one JSON line per interval, for tools/report to draw.
 *
 * Each interval (wall time, default 250 ms) it writes the host pool, the memory scheduler's
 * ladder state and counters when it is on, and per VM its pages by state, its balloon's target
 * and actual size, its instructions, the active fraction and MRC from optional providers, and a
 * coarse page-activity row for the heat-map. VMs created, restored, forked or deleted while it
 * records are picked up or dropped at the next interval.
 *
 * The heat-map uses one kernel access watcher per VM: at every sample the recorder arms
 * `samplesPerBucket` pages chosen at random (a fixed-seed generator) in each of `buckets` equal
 * ranges of guest pages, and at the next sample counts, per range, the armed pages the guest
 * touched in between (then disarms the rest and arms new ones). With the defaults that is 256
 * pages per VM per interval: 256 translations shot down and at most 256 extra TLB misses, each
 * calling a watcher that bumps a counter. The page census behind the page counts is one pass
 * over the VM's page map per interval (16,384 entries for 64 MiB). A whole sample of three running
 * 64 MiB VMs takes about 2 ms: under 1 % of the default interval.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import type { Vm } from '../../kernel/index.ts';
import type { Host } from './host.ts';
import {
  TIMELINE_FORMAT, TIMELINE_VERSION, TimelineError, type TimelineBalloon, type TimelineEnd, type TimelineHeader, type TimelineHeat, type TimelineMrc, type TimelineSample,
  type TimelineScheduler, type TimelineVm,
} from './timeline.ts';

/**
 * Figures other services compute per VM, asked for at every sample. Each may be left out, and
 * may answer null for a VM it has no figure for (yet).
 */
export interface TimelineProviders {
  /** The VM's active fraction f (0 to 1): the share of its guest pages touched per sampling period (T-8). */
  activeFraction?(vmName: string): number | null;
  /** The VM's miss-rate curve (T-9): miss ratio at each memory size in MiB, sizes ascending. */
  mrc?(vmName: string): TimelineMrc | null;
}

/** Options of TimelineRecorder. */
export interface TimelineRecorderOptions {
  /** The file to write (created, or truncated if it exists). */
  path: string;
  /** Milliseconds of wall time between samples (default 250; 10 to 3,600,000). */
  intervalMs?: number;
  /** Heat-map buckets per VM (default 64; 1 to 4096; a VM with fewer pages gets one per page). */
  heatmapBuckets?: number;
  /** Pages armed per bucket per interval (default 4; 0 turns the heat-map off; at most 64). */
  heatmapSamplesPerBucket?: number;
  /** Active fraction and MRC sources (default none; setProviders changes them later). */
  providers?: TimelineProviders;
}

/** Recorder defaults (docs/host.md). */
export const TIMELINE_DEFAULTS: {
  /** TimelineRecorderOptions.intervalMs: 250. */
  readonly intervalMs: number;
  /** TimelineRecorderOptions.heatmapBuckets: 64. */
  readonly heatmapBuckets: number;
  /** TimelineRecorderOptions.heatmapSamplesPerBucket: 4. */
  readonly heatmapSamplesPerBucket: number;
} = { intervalMs: 250, heatmapBuckets: 64, heatmapSamplesPerBucket: 4 };

/** One VM the recorder follows. */
interface Followed {
  vm: Vm;
  /** The access watcher's id, or -1 when none could be added (the VM has its maximum). */
  watcher: number;
  buckets: number;
  /** Armed page → its bucket. */
  armed: Map<number, number>;
  /** Armed pages accessed since the last sample, per bucket. */
  fired: Uint32Array;
  /** Whether pages were armed at the last sample (so `fired` means something). */
  primed: boolean;
  /** The MRC last written, as JSON (to write it only when it changes). */
  lastMrc: string;
  /** Whether the VM has a balloon (fixed when it is created). */
  balloon: boolean;
}

/** A small deterministic generator (xorshift32): the pages armed do not depend on Math.random. */
function xorshift(seed: number): () => number {
  let state = seed >>> 0 || 0x9e3779b9;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
}

function checkOption(value: number, name: string, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) throw new TimelineError(`TimelineRecorder: ${name} must be an integer from ${min} to ${max}, got ${value}`);
  return value;
}

/** Records a Host into a timeline file until stop(). */
export class TimelineRecorder {
  /** The file being written. */
  readonly path: string;
  /** Milliseconds between samples. */
  readonly intervalMs: number;
  /** Heat-map buckets per VM. */
  readonly heatmapBuckets: number;
  /** Pages armed per bucket per interval. */
  readonly heatmapSamplesPerBucket: number;
  /** Samples written so far. */
  samples = 0;
  private providers: TimelineProviders;
  private fd: number | null;
  private readonly timer: NodeJS.Timeout;
  private readonly first: NodeJS.Immediate;
  private readonly startedAt = performance.now();
  private readonly followed = new Map<string, Followed>();
  private readonly random = xorshift(0x5eed);
  /** The first error writing the file (recording stops at it), or null. */
  private failure: Error | null = null;

  /** Opens the file and writes the header; samples at the next turn of the event loop and every intervalMs from then on. */
  constructor(
    private readonly host: Host,
    options: TimelineRecorderOptions,
  ) {
    this.path = options.path;
    this.intervalMs = checkOption(options.intervalMs ?? TIMELINE_DEFAULTS.intervalMs, 'intervalMs', 10, 3_600_000);
    this.heatmapBuckets = checkOption(options.heatmapBuckets ?? TIMELINE_DEFAULTS.heatmapBuckets, 'heatmapBuckets', 1, 4096);
    this.heatmapSamplesPerBucket = checkOption(options.heatmapSamplesPerBucket ?? TIMELINE_DEFAULTS.heatmapSamplesPerBucket, 'heatmapSamplesPerBucket', 0, 64);
    this.providers = options.providers ?? {};
    try {
      this.fd = openSync(this.path, 'w', 0o644);
    } catch (error) {
      throw new TimelineError(`${this.path}: cannot create the timeline: ${(error as Error).message}`);
    }
    const header: TimelineHeader = {
      kind: 'header',
      format: TIMELINE_FORMAT,
      version: TIMELINE_VERSION,
      started_at: new Date().toISOString(),
      interval_ms: this.intervalMs,
      page_size: 4096,
      pool_frames: host.hv.poolStats().totalFrames,
      heatmap_buckets: this.heatmapBuckets,
      heatmap_samples: this.heatmapSamplesPerBucket,
    };
    this.write(header);
    // The first sample once the caller has set the host up (Host.start boots its VMs and turns
    // the memory scheduler on right after constructing it), then one every intervalMs.
    this.first = setImmediate(() => this.sample());
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    // The recorder never keeps a process alive by itself.
    this.timer.unref();
    this.first.unref();
  }

  /** Whether the recorder is still writing (false after stop() or a write error). */
  get recording(): boolean {
    return this.fd !== null;
  }

  /** The error that stopped the recording early (the disk filled…), or null. */
  get error(): Error | null {
    return this.failure;
  }

  /** Replaces the providers (services wired after the host started). */
  setProviders(providers: TimelineProviders): void {
    this.providers = providers;
  }

  /** Takes one sample now (the timer calls this every intervalMs). */
  sample(): void {
    if (this.fd === null) return;
    const names = this.host.names();
    this.follow(names);
    const pool = this.host.hv.poolStats();
    const sample: TimelineSample = {
      kind: 'sample',
      t_ms: this.now(),
      pool: { total_frames: pool.totalFrames, used_frames: pool.usedFrames, free_frames: pool.totalFrames - pool.usedFrames },
      scheduler: this.scheduler(),
      vms: [],
    };
    for (const name of names) {
      const entry = this.vmSample(name);
      if (entry !== null) sample.vms.push(entry);
    }
    this.samples++;
    this.write(sample);
  }

  /** Takes a last sample, writes the end line, closes the file and lets go of every VM. Idempotent. */
  stop(): void {
    if (this.fd === null) return;
    clearImmediate(this.first);
    clearInterval(this.timer);
    this.sample();
    if (this.fd !== null) {
      const end: TimelineEnd = { kind: 'end', t_ms: this.now(), samples: this.samples };
      this.write(end);
    }
    for (const name of [...this.followed.keys()]) this.unfollow(name);
    this.close();
  }

  // ------------------------------------------------------------------------------ internals

  private now(): number {
    return Math.round((performance.now() - this.startedAt) * 10) / 10;
  }

  private write(record: object): void {
    if (this.fd === null) return;
    try {
      writeSync(this.fd, `${JSON.stringify(record)}\n`);
    } catch (error) {
      // A recorder must never take the host down: it stops recording and keeps the error.
      this.failure = error instanceof Error ? error : new Error(String(error));
      clearImmediate(this.first);
      clearInterval(this.timer);
      for (const name of [...this.followed.keys()]) this.unfollow(name);
      this.close();
    }
  }

  private close(): void {
    if (this.fd === null) return;
    try {
      closeSync(this.fd);
    } catch {
      // Already reported by write(), or nothing more can be done.
    }
    this.fd = null;
  }

  private scheduler(): TimelineScheduler | null {
    const s = this.host.hostStats().memory_scheduler;
    if (s === null) return null;
    const t = s.thresholds;
    return {
      state: s.state,
      free_frames: s.pool.free_frames,
      thresholds: { high_frames: t.high_frames, soft_frames: t.soft_frames, hard_frames: t.hard_frames, low_frames: t.low_frames },
      counters: { ...s.counters } as unknown as Record<string, number>,
      blocked_vms: [...s.blocked_vms],
    };
  }

  /** Starts following VMs that appeared (or were replaced under the same name) and lets go of those that left. */
  private follow(names: readonly string[]): void {
    const present = new Set(names);
    for (const name of [...this.followed.keys()]) {
      const f = this.followed.get(name)!;
      if (!present.has(name) || this.vmOf(name) !== f.vm) this.unfollow(name);
    }
    for (const name of names) {
      if (this.followed.has(name)) continue;
      const vm = this.vmOf(name);
      if (vm === null) continue;
      const pages = vm.memory.pageCount;
      let watcher = -1;
      if (this.heatmapSamplesPerBucket > 0 && pages > 0) {
        try {
          watcher = vm.memory.addAccessWatcher((gpn) => this.onAccess(name, gpn));
        } catch {
          watcher = -1; // the VM has every watcher it may have: no heat-map for it
        }
      }
      const buckets = Math.max(1, Math.min(this.heatmapBuckets, pages));
      let balloon = true;
      try {
        this.host.balloon(name);
      } catch {
        balloon = false; // a VM without a balloon (400)
      }
      this.followed.set(name, { vm, watcher, buckets, armed: new Map(), fired: new Uint32Array(buckets), primed: false, lastMrc: 'null', balloon });
    }
  }

  private vmOf(name: string): Vm | null {
    try {
      return this.host.vm(name);
    } catch {
      return null;
    }
  }

  private onAccess(name: string, gpn: number): void {
    const f = this.followed.get(name);
    const bucket = f?.armed.get(gpn);
    if (f === undefined || bucket === undefined) return;
    f.armed.delete(gpn);
    f.fired[bucket]!++;
  }

  private unfollow(name: string): void {
    const f = this.followed.get(name)!;
    this.followed.delete(name);
    // A deleted VM's memory went with it; one still alive gets its watcher back.
    if (f.watcher >= 0 && this.host.hv.vms.includes(f.vm)) f.vm.memory.removeAccessWatcher(f.watcher);
  }

  /** Reads the heat-map row since the last sample and arms the pages for the next. */
  private heat(f: Followed): TimelineHeat | null {
    if (f.watcher < 0) return null;
    const row: TimelineHeat | null = f.primed ? { buckets: f.buckets, samples: this.heatmapSamplesPerBucket, fired: Array.from(f.fired) } : null;
    const memory = f.vm.memory;
    if (f.armed.size > 0) memory.disarmAccessWatch(f.watcher, [...f.armed.keys()]);
    f.armed.clear();
    f.fired.fill(0);
    const pages = memory.pageCount;
    const picked: number[] = [];
    for (let b = 0; b < f.buckets; b++) {
      const first = Math.floor((b * pages) / f.buckets);
      const size = Math.floor(((b + 1) * pages) / f.buckets) - first;
      const want = Math.min(this.heatmapSamplesPerBucket, size);
      // Distinct pages of the bucket: random ones, then (in a tiny bucket) the first free ones.
      let got = 0;
      for (let tries = 0; got < want && tries < want * 4; tries++) {
        const gpn = first + (this.random() % size);
        if (f.armed.has(gpn)) continue;
        f.armed.set(gpn, b);
        picked.push(gpn);
        got++;
      }
      for (let gpn = first; got < want; gpn++) {
        if (f.armed.has(gpn)) continue;
        f.armed.set(gpn, b);
        picked.push(gpn);
        got++;
      }
    }
    memory.armAccessWatch(f.watcher, picked);
    f.primed = true;
    return row;
  }

  private vmSample(name: string): TimelineVm | null {
    const f = this.followed.get(name);
    if (f === undefined) return null;
    let info;
    let census;
    let balloon: TimelineBalloon | null = null;
    try {
      info = this.host.vmInfo(name);
      if (!this.host.hv.vms.includes(f.vm)) return null;
      // The page census alone (what GET /vms/{name}/stats reports as memory), not the whole stats:
      // a quarter of the cost.
      census = f.vm.memory.census();
      if (f.balloon) {
        const device = this.host.balloon(name);
        balloon = { target_pages: device.target_pages, actual_pages: device.actual_pages };
      }
    } catch {
      return null; // deleted between names() and now
    }
    const vmEntry: TimelineVm = {
      name,
      state: info.state,
      instructions: info.instructions,
      guest_pages: f.vm.memory.pageCount,
      pages: { present: census.present, shared: census.shared, absent: { ...census.absent } },
      balloon,
      active_fraction: this.activeFraction(name),
      heat: this.heat(f),
    };
    const mrc = this.mrc(name);
    const mrcJson = JSON.stringify(mrc);
    if (mrcJson !== f.lastMrc) {
      vmEntry.mrc = mrc;
      f.lastMrc = mrcJson;
    }
    return vmEntry;
  }

  private activeFraction(name: string): number | null {
    try {
      const f = this.providers.activeFraction?.(name) ?? null;
      return f === null || !Number.isFinite(f) ? null : Math.min(1, Math.max(0, Math.round(f * 10_000) / 10_000));
    } catch {
      return null;
    }
  }

  private mrc(name: string): TimelineMrc | null {
    try {
      const curve = this.providers.mrc?.(name) ?? null;
      if (curve === null || curve.sizes_mib.length !== curve.miss_ratio.length) return null;
      return { sizes_mib: [...curve.sizes_mib], miss_ratio: [...curve.miss_ratio] };
    } catch {
      return null;
    }
  }
}
