/**
 * High availability for persistent memory (T-15; docs/pmem.md, "High availability").
 *
 * A host with a partner (`pmem_ha.partner`) keeps each VM's persistent memory saved at the partner
 * host, so that on a power-loss notice it only has to send what changed since the last save:
 *
 *  - The kernel tracks which pmem pages the guest writes (GuestMemory.trackFileRangeWrites: a clean
 *    page has no write translation, its first store misses the TLB and marks it). Each save takes
 *    the marks (takeFileRangeDirtyPages) and sends those pages.
 *  - In the background, every `sync_interval_ms`, a save goes out while the VMs run, so that at the
 *    notice only the pages dirtied since the last background save are left. A power-loss save has
 *    the battery budget and nothing else: what it must send is the write rate × the interval, not
 *    the size of the persistent memory (docs/pmem.md says why this beats saving everything then).
 *  - On the notice (Host.powerLoss: every VM is already paused) each VM's remaining pages go out;
 *    sending stops at the deadline, and the report names each VM's ranges that did not reach the
 *    partner. Then TAKEOVER tells the partner to start the VMs saved whole (or not: `on_partner`).
 *
 * Protocol `bv-pmem-ha` over the host-to-host transport (mutual TLS, framed, checksummed):
 *
 *   primary → partner  BEGIN  JSON {vm, bytes, generation, base, final, pages, spec}
 *   primary → partner  PAGES  u32 first page, u32 count, then count × 4 KiB (a run of pages)
 *   primary → partner  END    JSON {generation, pages, crc}: the pages and CRC-32C of all page bytes
 *   partner → primary  SAVED  JSON {vm, generation, ms} — or REFUSED JSON {vm, code, message}
 *   primary → partner  TAKEOVER JSON {vms, on_partner, app_boot_args}
 *   partner → primary  TAKEN  JSON {started, errors}
 *
 * The partner keeps everything of a save in memory until END checks out (page count, CRC, each run
 * inside the range, the base generation it holds): a cut, truncated or corrupt stream is refused
 * and its file is not touched. A full save (no base) is written to a side file, fsynced and renamed
 * over the file; a delta save is written to a redo journal (fdatasync) and confirmed, then applied
 * in place; a journal a crash left is applied at the next start (a torn one was never confirmed
 * and is dropped). The generation it holds is a small JSON file beside the file, replaced by rename.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import type { Vm } from '../../kernel/index.ts';
import { crc32c } from '../../native/index.ts';
import { connect, FIRST_APP_FRAME_TYPE, splitHostPort, TransportServer } from '../migration/transport.ts';
import type { ChannelOptions, FramedChannel, RefusedPeer } from '../migration/transport.ts';

/** The transport protocol name of persistent-memory HA. */
export const PMEM_HA_PROTOCOL = 'bv-pmem-ha';
/** Versions of it this build speaks. */
export const PMEM_HA_VERSIONS: readonly number[] = [1];

/** Frame types of `bv-pmem-ha` (see the module comment). */
export const PmemHaFrame = {
  /** primary → partner, JSON: which VM, its size, the save's generation and the one it builds on. */
  BEGIN: FIRST_APP_FRAME_TYPE,
  /** primary → partner, binary: u32 first page, u32 page count, the pages' bytes. */
  PAGES: FIRST_APP_FRAME_TYPE + 1,
  /** primary → partner, JSON {generation, pages, crc}: the save is whole. */
  END: FIRST_APP_FRAME_TYPE + 2,
  /** partner → primary, JSON {vm, generation, ms}: the save is in the partner's file, fsynced. */
  SAVED: FIRST_APP_FRAME_TYPE + 3,
  /** partner → primary, JSON {vm, code, message}: the save was refused; the partner's file is as before. */
  REFUSED: FIRST_APP_FRAME_TYPE + 4,
  /** primary → partner, JSON {vms, on_partner, app_boot_args}: the primary is going down; take these VMs over. */
  TAKEOVER: FIRST_APP_FRAME_TYPE + 5,
  /** partner → primary, JSON {started, errors}. */
  TAKEN: FIRST_APP_FRAME_TYPE + 6,
} as const;

/** Stable codes of persistent-memory HA errors. */
export type PmemHaErrorCode = 'BV_HA_CONFIG' | 'BV_HA_PARTNER' | 'BV_HA_STREAM' | 'BV_HA_BASE' | 'BV_HA_BUSY' | 'BV_HA_IO';

/** A refused configuration, save or stream (the code says which). */
export class PmemHaError extends BvError {
  declare readonly code: PmemHaErrorCode;
  constructor(code: PmemHaErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** What the partner does with the VMs at TAKEOVER. */
export type OnPartner = 'vm' | 'app' | 'none';

/** The primary's settings (the host configuration's `pmem_ha`). */
export interface PmemHaSenderOptions {
  /** The partner's `pmem_ha.listen`, host:port. */
  partner: string;
  /** Background saves every this many ms while the VMs run (0: none; everything goes at the notice). */
  syncIntervalMs: number;
  /** What the partner does at TAKEOVER: start the VM as configured here, start it with `appBootArgs`, or nothing. */
  onPartner: OnPartner;
  /** The boot arguments of the VM the partner starts with onPartner 'app' (the application's own recovery), or null. */
  appBootArgs: string | null;
  /** The transport's settings (TLS or insecure, stall timeout, name); protocol and versions are set here. */
  channel: Omit<ChannelOptions, 'protocol' | 'versions'>;
  /** Pages per PAGES frame (default 256: 1 MiB). */
  pagesPerFrame?: number;
  /** Log lines. */
  log?: (line: string) => void;
}

/** A VM with persistent memory, as the host shows it to the service. */
export interface PmemHaVm {
  /** Its name (unique in the host). */
  name: string;
  /** The VM. */
  vm: Vm;
  /** Its persistent-memory range: guest-physical base and size. */
  gpa: number;
  /** Bytes. */
  bytes: number;
  /** Its configuration (JSON), for the partner to start it from; null when the host has none (the partner then cannot start it). */
  spec: Record<string, unknown> | null;
}

/** One range of persistent memory, as an offset into it. */
export interface PmemRange {
  /** Offset of the first byte. */
  offset: number;
  /** Bytes. */
  bytes: number;
}

/** One VM in a save's report. */
export interface PmemSaveVmReport {
  /** The VM. */
  name: string;
  /** Pages of its persistent memory. */
  pages: number;
  /** Pages this save had to send (written since the partner's last confirmed save, or all for a first save). */
  pages_dirty: number;
  /** Pages sent. */
  pages_sent: number;
  /** Whether the partner confirmed the save (SAVED: in its file, fsynced). */
  saved: boolean;
  /** Milliseconds from the save's start (the notice, for a power-loss save) to SAVED, or null. */
  saved_ms: number | null;
  /** What is not at the partner: the ranges of unsaved pages (empty when saved). */
  unsaved: PmemRange[];
  /** Why not, or null. */
  error: string | null;
}

/** The report of a power-loss save (POST /host/power-loss's `pmem-ha` hook result, GET /host/pmem-ha). */
export interface PowerLossSaveReport {
  /** The partner. */
  partner: string;
  /** The battery budget it had (ms). */
  battery_ms: number;
  /** Milliseconds from the notice to the last VM saved at the partner (every VM saved), or null when one was not. */
  saved_ms: number | null;
  /** Milliseconds from the notice to the end of the save (saved, failed, or stopped at the deadline). */
  elapsed_ms: number;
  /** Host CPU time (user + system) of the process over the save, ms. */
  cpu_ms: number;
  /** Every VM saved whole. */
  complete: boolean;
  /** Each VM. */
  vms: PmemSaveVmReport[];
  /** The partner's answer to TAKEOVER (the VMs it started), or null when none was sent or answered. */
  takeover: {
    /** What the partner was asked to do. */
    on_partner: OnPartner;
    /** The VMs it started. */
    started: string[];
    /** Why others were not, one line each. */
    errors: string[];
  } | null;
  /** What went wrong with the partner as a whole (unreachable, refused the connection…), or null. */
  error: string | null;
}

/** GET /host/pmem-ha on a primary. */
export interface PmemHaSenderStatus {
  /** The partner. */
  partner: string;
  /** Background save interval (0: none). */
  sync_interval_ms: number;
  /** What the partner does at TAKEOVER. */
  on_partner: OnPartner;
  /** Background saves: done, failed, the last one's duration and error. */
  syncs: {
    /** Background saves (and POST /host/pmem-ha/sync) that saved every VM. */
    done: number;
    /** Those that did not. */
    failed: number;
    /** Milliseconds the last one took, or null. */
    last_ms: number | null;
    /** Why the last failed one failed, or null. */
    last_error: string | null;
  };
  /** Each tracked VM: the generation the partner holds and the pages not saved there yet. */
  vms: {
    /** The VM. */
    name: string;
    /** The generation the partner confirmed, or null (it has nothing of this sender: the next save is whole). */
    partner_generation: number | null;
    /** Pages written since that save (as far as the last take knows). */
    pending_pages: number;
  }[];
  /** The last power-loss save, or null. */
  last_power_loss: PowerLossSaveReport | null;
}

/** GET /host/pmem-ha: this host's two sides of persistent-memory HA. */
export interface PmemHaStatus {
  /** Saving to a partner (`pmem_ha.partner`), or null when this host saves nowhere. */
  sending: PmemHaSenderStatus | null;
  /** Receiving a partner's saves (`pmem_ha.listen`), or null when it does not. */
  receiving: PmemHaPartnerStatus | null;
}

/** What the primary keeps per VM. */
interface Tracked {
  entry: PmemHaVm;
  /** Pages not confirmed saved at the partner (taken from the kernel's marks, cleared by SAVED). */
  pending: Uint8Array;
  /** The last generation sent. */
  generation: number;
  /** The generation the partner confirmed, or null (it has nothing: the next save is full). */
  partnerGeneration: number | null;
}

const DEFAULT_PAGES_PER_FRAME = 256;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function json(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function parse(payload: Uint8Array, what: string): Record<string, unknown> {
  try {
    const value = JSON.parse(decoder.decode(payload)) as unknown;
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // below
  }
  throw new PmemHaError('BV_HA_STREAM', `${what} is not a JSON object`);
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/** The runs of marked pages of a bitmap (one byte per page), as [first page, count] pairs. */
function runsOf(marks: Uint8Array): [number, number][] {
  const runs: [number, number][] = [];
  let page = 0;
  while (page < marks.length) {
    if (marks[page] !== 1) {
      page++;
      continue;
    }
    const first = page;
    while (page < marks.length && marks[page] === 1) page++;
    runs.push([first, page - first]);
  }
  return runs;
}

function rangesOf(marks: Uint8Array): PmemRange[] {
  return runsOf(marks).map(([first, count]) => ({ offset: first * PAGE_SIZE, bytes: count * PAGE_SIZE }));
}

function parseAddress(address: string, field: string): { host: string; port: number } {
  const parsed = splitHostPort(address);
  if (parsed === null) throw new PmemHaError('BV_HA_CONFIG', `${field} must be host:port, got '${address}'`);
  return parsed;
}

/** A deadline as a promise (resolves 'deadline') and a way to cancel its timer. */
function deadlineTimer(deadline: number): { promise: Promise<'deadline'>; cancel: () => void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<'deadline'>((resolve) => {
    timer = setTimeout(() => resolve('deadline'), Math.max(0, deadline - performance.now()));
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/**
 * The primary's side: tracks the VMs' persistent-memory writes, saves them to the partner in the
 * background, and on a power-loss notice sends what is left within the budget.
 */
export class PmemHaSender {
  private readonly tracked = new Map<string, Tracked>();
  private channel: FramedChannel | null = null;
  /** The save in progress (background or power loss): one at a time over the one channel. */
  private busy: Promise<unknown> = Promise.resolve();
  private syncTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;
  /** Set at a power-loss notice: background saves stop for good. */
  private down = false;
  /** A background save is under way (a notice cuts it short). */
  private syncing = false;
  private readonly syncs = { done: 0, failed: 0, last_ms: null as number | null, last_error: null as string | null };
  private lastPowerLoss: PowerLossSaveReport | null = null;
  private readonly address: { host: string; port: number };
  private readonly pagesPerFrame: number;
  private readonly log: (line: string) => void;

  constructor(
    private readonly options: PmemHaSenderOptions,
    /** The host's VMs with persistent memory, now. */
    private readonly vms: () => PmemHaVm[],
  ) {
    this.address = parseAddress(options.partner, 'pmem_ha.partner');
    if (!Number.isInteger(options.syncIntervalMs) || options.syncIntervalMs < 0) throw new PmemHaError('BV_HA_CONFIG', `pmem_ha.sync_interval_ms must be 0 or more, got ${String(options.syncIntervalMs)}`);
    if (options.onPartner === 'app' && (options.appBootArgs === null || options.appBootArgs === '')) throw new PmemHaError('BV_HA_CONFIG', 'pmem_ha.on_partner "app" needs pmem_ha.app_boot_args (what the partner boots the VM with)');
    this.pagesPerFrame = options.pagesPerFrame ?? DEFAULT_PAGES_PER_FRAME;
    this.log = options.log ?? (() => {});
    if (options.syncIntervalMs > 0) this.scheduleSync();
  }

  /** GET /host/pmem-ha. */
  status(): PmemHaSenderStatus {
    this.refresh();
    return {
      partner: this.options.partner,
      sync_interval_ms: this.options.syncIntervalMs,
      on_partner: this.options.onPartner,
      syncs: { ...this.syncs },
      vms: [...this.tracked.values()].map((t) => ({ name: t.entry.name, partner_generation: t.partnerGeneration, pending_pages: this.pendingPages(t) })),
      last_power_loss: this.lastPowerLoss,
    };
  }

  /** The last power-loss save's report, or null. */
  get lastReport(): PowerLossSaveReport | null {
    return this.lastPowerLoss;
  }

  /**
   * One background save of every VM now (the timer's work; tests and the bench call it to get a
   * known starting point). Resolves with each VM's report; failures are reported, not thrown.
   */
  sync(): Promise<PmemSaveVmReport[]> {
    const run = this.busy.then(async () => {
      if (this.closed || this.down) return [];
      const started = performance.now();
      const reports: PmemSaveVmReport[] = [];
      this.syncing = true;
      try {
        for (const t of this.refresh()) {
          if (this.down) break;
          reports.push(await this.saveOne(t, false, started, Infinity));
        }
      } finally {
        this.syncing = false;
      }
      const failed = reports.find((r) => !r.saved);
      this.syncs.last_ms = round(performance.now() - started);
      if (failed === undefined) this.syncs.done++;
      else {
        this.syncs.failed++;
        this.syncs.last_error = failed.error;
      }
      return reports;
    });
    this.busy = run.catch(() => undefined);
    return run;
  }

  /**
   * The power-loss save (Host.onPowerLoss hook; the VMs are paused already): every VM's remaining
   * pages to the partner, then TAKEOVER. Stops sending at `deadline` (a performance.now() time) and
   * reports what did not reach the partner; settles just before the deadline.
   */
  async powerLoss(deadline: number, batteryMs: number): Promise<PowerLossSaveReport> {
    const started = performance.now();
    const cpu = process.cpuUsage();
    this.down = true;
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    // A background save in flight gives way: its pages stay pending and go now. An idle channel
    // is kept: a new one would cost a TLS handshake out of the budget.
    if (this.syncing && this.channel !== null) {
      this.channel.destroy();
      this.channel = null;
    }
    await this.busy;
    // Leave a little time to answer before the host's own cut-off at the deadline.
    const stopAt = deadline - Math.min(2, Math.max(0, deadline - started) / 10);
    const timer = deadlineTimer(stopAt);
    const tracked = this.refresh();
    const reports: PmemSaveVmReport[] = [];
    let error: string | null = null;
    let takeover: PowerLossSaveReport['takeover'] = null;
    try {
      for (const t of tracked) {
        if (performance.now() >= stopAt) {
          reports.push(this.unsavedReport(t, 'the battery budget ran out before it was sent'));
          continue;
        }
        const report = await this.saveOne(t, true, started, stopAt, timer.promise);
        reports.push(report);
        if (!report.saved && error === null && report.error !== null && /connect|reach|refused|partner/i.test(report.error) && report.pages_sent === 0) error = report.error;
      }
      const saved = reports.filter((r) => r.saved).map((r) => r.name);
      if (saved.length > 0 && performance.now() < stopAt && this.channel !== null) {
        takeover = await this.takeover(saved, timer.promise);
      }
    } catch (caught) {
      error = message(caught);
    } finally {
      timer.cancel();
    }
    const complete = reports.every((r) => r.saved);
    const used = process.cpuUsage(cpu);
    const report: PowerLossSaveReport = {
      partner: this.options.partner,
      battery_ms: batteryMs,
      saved_ms: complete ? (reports.length === 0 ? 0 : Math.max(...reports.map((r) => r.saved_ms ?? 0))) : null,
      elapsed_ms: round(performance.now() - started),
      cpu_ms: round((used.user + used.system) / 1000),
      complete,
      vms: reports,
      takeover,
      error,
    };
    this.lastPowerLoss = report;
    for (const r of reports) {
      this.log(r.saved
        ? `pmem-ha: ${r.name}: ${r.pages_sent} of ${r.pages} pages saved at ${this.options.partner} ${r.saved_ms} ms after the notice`
        : `pmem-ha: ${r.name}: NOT saved at ${this.options.partner} (${r.error ?? '?'}): ${r.unsaved.length} range${r.unsaved.length === 1 ? '' : 's'}, ${r.unsaved.reduce((sum, u) => sum + u.bytes, 0)} bytes missing there`);
    }
    return report;
  }

  /** Stops background saves and closes the channel. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    this.channel?.destroy();
    this.channel = null;
    await this.busy;
  }

  // ------------------------------------------------------------------------------ internals

  private scheduleSync(): void {
    this.syncTimer = setTimeout(() => {
      this.syncTimer = null;
      void this.sync().finally(() => {
        if (!this.closed && !this.down) this.scheduleSync();
      });
    }, this.options.syncIntervalMs);
    this.syncTimer.unref();
  }

  /** Starts tracking new VMs, forgets gone ones; returns the tracked ones in host order. */
  private refresh(): Tracked[] {
    const now = this.vms();
    const names = new Set(now.map((entry) => entry.name));
    for (const name of [...this.tracked.keys()]) if (!names.has(name)) this.tracked.delete(name);
    return now.map((entry) => {
      let t = this.tracked.get(entry.name);
      if (t === undefined || t.entry.vm !== entry.vm) {
        entry.vm.memory.trackFileRangeWrites(entry.gpa);
        // Generations start at a random point, so that a partner never takes a save of another
        // sender (a restarted primary, another host) for one built on what it holds.
        t = { entry, pending: new Uint8Array(entry.bytes / PAGE_SIZE).fill(1), generation: Math.floor(Math.random() * 2 ** 40), partnerGeneration: null };
        this.tracked.set(entry.name, t);
      }
      return t;
    });
  }

  private pendingPages(t: Tracked): number {
    let count = 0;
    for (const mark of t.pending) count += mark;
    return count;
  }

  private unsavedReport(t: Tracked, why: string): PmemSaveVmReport {
    this.takeMarks(t);
    return { name: t.entry.name, pages: t.pending.length, pages_dirty: this.pendingPages(t), pages_sent: 0, saved: false, saved_ms: null, unsaved: rangesOf(t.pending), error: why };
  }

  /** Adds the kernel's marks (pages written since the last take) to the VM's pending pages. */
  private takeMarks(t: Tracked): void {
    const marks = t.entry.vm.memory.takeFileRangeDirtyPages(t.entry.gpa);
    const pending = t.pending;
    for (let page = 0; page < marks.length; page++) pending[page] |= marks[page]!;
  }

  private async open(stopAt: number): Promise<FramedChannel> {
    if (this.channel !== null && this.channel.open) return this.channel;
    this.channel?.destroy();
    this.channel = null;
    const remaining = stopAt === Infinity ? undefined : Math.max(1, Math.floor(stopAt - performance.now()));
    try {
      this.channel = await connect({
        ...this.options.channel, protocol: PMEM_HA_PROTOCOL, versions: PMEM_HA_VERSIONS, host: this.address.host, port: this.address.port,
        ...(remaining === undefined ? {} : { connectTimeoutMs: remaining }),
      });
    } catch (error) {
      throw new PmemHaError('BV_HA_PARTNER', `the partner ${this.options.partner} could not be reached: ${message(error)}`, { cause: error });
    }
    return this.channel;
  }

  /**
   * Sends one VM's pending pages as one save and waits for SAVED. `deadline` (and `cut`, which
   * resolves at it) stop the save: the pages not confirmed are reported.
   */
  private async saveOne(t: Tracked, final: boolean, started: number, stopAt: number, cut?: Promise<'deadline'>): Promise<PmemSaveVmReport> {
    const { name, bytes, gpa, vm, spec } = t.entry;
    this.takeMarks(t);
    const pending = t.pending;
    const full = t.partnerGeneration === null;
    if (full) pending.fill(1);
    const dirty = this.pendingPages(t);
    const runs: [number, number][] = [];
    for (const [first, count] of runsOf(pending)) {
      for (let at = first; at < first + count; at += this.pagesPerFrame) runs.push([at, Math.min(this.pagesPerFrame, first + count - at)]);
    }
    // What is read now is sent: pages sent and confirmed leave `pending` (a store after the read
    // marks the page again in the kernel, so it goes next time).
    const sent = new Uint8Array(pending.length);
    let pagesSent = 0;
    const fail = (why: string): PmemSaveVmReport => {
      if (final) this.log(`pmem-ha: ${name}: ${why}`);
      return { name, pages: pending.length, pages_dirty: dirty, pages_sent: pagesSent, saved: false, saved_ms: null, unsaved: rangesOf(pending), error: why };
    };
    const work = (async (): Promise<'saved' | 'refused-base' | string> => {
      const channel = await this.open(stopAt);
      const generation = ++t.generation;
      await channel.send(PmemHaFrame.BEGIN, json({ vm: name, bytes, generation, base: t.partnerGeneration, final, pages: dirty, spec }));
      let crc = 0;
      for (const [first, count] of runs) {
        if (performance.now() >= stopAt) return 'the battery budget ran out while it was being sent';
        const payloadBytes = 8 + count * PAGE_SIZE;
        const prepared = channel.prepareFrame(payloadBytes);
        const view = new DataView(prepared.payload.buffer, prepared.payload.byteOffset, 8);
        view.setUint32(0, first, true);
        view.setUint32(4, count, true);
        const pages = prepared.payload.subarray(8, payloadBytes);
        vm.memory.readFileRange(gpa + first * PAGE_SIZE, pages);
        crc = crc32c(pages, crc);
        await channel.sendPrepared(PmemHaFrame.PAGES, prepared, payloadBytes);
        sent.fill(1, first, first + count);
        pagesSent += count;
      }
      await channel.send(PmemHaFrame.END, json({ generation, pages: dirty, crc }));
      const frame = await channel.receive();
      if (frame === null) return 'the partner ended the stream before it confirmed the save';
      const answer = parse(frame.payload, 'the partner\'s answer');
      if (frame.type === PmemHaFrame.REFUSED) {
        if (answer.code === 'BV_HA_BASE') return 'refused-base';
        return `the partner refused the save: ${String(answer.message)}`;
      }
      if (frame.type !== PmemHaFrame.SAVED || answer.generation !== generation) return `the partner answered frame type ${frame.type} instead of SAVED for generation ${generation}`;
      t.partnerGeneration = generation;
      for (let page = 0; page < pending.length; page++) if (sent[page] === 1) pending[page] = 0;
      return 'saved';
    })();
    let outcome: 'saved' | 'refused-base' | 'deadline' | string;
    try {
      outcome = cut === undefined ? await work : await Promise.race([work, cut]);
    } catch (error) {
      outcome = message(error);
      // A broken channel is opened again by the next save.
      this.channel?.destroy();
      this.channel = null;
    }
    if (outcome === 'deadline' || (outcome !== 'saved' && outcome !== 'refused-base' && performance.now() >= stopAt)) {
      work.catch(() => undefined);
      this.channel?.destroy(); // stop sending now: a half-sent save is refused by the partner
      this.channel = null;
      return fail(`the battery budget ran out after ${pagesSent} of ${dirty} pages were sent${outcome === 'deadline' || outcome.includes('battery') ? '' : ` (${outcome})`}`);
    }
    if (outcome === 'refused-base') {
      // The partner holds another generation (it restarted, or lost a save): start again in full.
      t.partnerGeneration = null;
      this.log(`pmem-ha: ${name}: the partner does not hold the generation this save builds on; sending it whole`);
      return this.saveOne(t, final, started, stopAt, cut);
    }
    if (outcome !== 'saved') return fail(outcome);
    return { name, pages: pending.length, pages_dirty: dirty, pages_sent: pagesSent, saved: true, saved_ms: round(performance.now() - started), unsaved: rangesOf(pending), error: null };
  }

  private async takeover(vms: string[], cut: Promise<'deadline'>): Promise<PowerLossSaveReport['takeover']> {
    const channel = this.channel!;
    const { onPartner, appBootArgs } = this.options;
    const work = (async () => {
      await channel.send(PmemHaFrame.TAKEOVER, json({ vms, on_partner: onPartner, app_boot_args: appBootArgs }));
      const payload = await channel.expect(PmemHaFrame.TAKEN, 'TAKEN');
      const answer = parse(payload, 'TAKEN');
      return {
        on_partner: onPartner,
        started: Array.isArray(answer.started) ? answer.started.map(String) : [],
        errors: Array.isArray(answer.errors) ? answer.errors.map(String) : [],
      };
    })();
    const outcome = await Promise.race([work, cut]).catch((error: unknown) => message(error));
    if (typeof outcome === 'string') {
      work.catch(() => undefined);
      this.log(`pmem-ha: the partner did not answer TAKEOVER: ${outcome}`);
      return null;
    }
    await channel.close().catch(() => undefined);
    this.channel = null;
    return outcome;
  }
}

// ------------------------------------------------------------------------------ the partner

/** What the partner's host does for it. */
export interface PmemHaPartnerHost {
  /** Whether a VM of this name exists on this host (its file must not change under it). */
  hasVm(name: string): boolean;
  /** Starts a VM from the primary's configuration with the persistent memory at `pmemPath` (and `bootArgs` instead of its own, when given). */
  startVm(spec: Record<string, unknown>, pmemPath: string, bootArgs: string | null): Promise<void>;
  /** Log lines. */
  log(line: string): void;
}

/** One save received (GET /host/pmem-ha on a partner). */
export interface ReceivedSave {
  /** The VM. */
  vm: string;
  /** The primary (its name and address). */
  from: string;
  /** The save's generation. */
  generation: number;
  /** Whether it was the power-loss save. */
  final: boolean;
  /** Pages written. */
  pages: number;
  /** The partner's file. */
  path: string;
  /** Milliseconds from BEGIN to the file fsynced. */
  ms: number;
  /** Of which: receiving (BEGIN to END), writing the pages into the file, and fsync (file, generation, directory). */
  receive_ms: number;
  /** Writing the pages (pwrite). */
  write_ms: number;
  /** fsync of the file, the generation file and the directory. */
  sync_ms: number;
}

/** A save or stream the partner refused. */
export interface RefusedSave {
  /** The VM (or '?' when BEGIN never came). */
  vm: string;
  /** The primary. */
  from: string;
  /** Why. */
  code: string;
  /** In words. */
  message: string;
}

/** GET /host/pmem-ha on a partner. */
export interface PmemHaPartnerStatus {
  /** Where saves are received. */
  listening: string;
  /** Where the files are. */
  dir: string;
  /** Saves received, the latest last (at most 32). */
  received: ReceivedSave[];
  /** Saves and streams refused, the latest last (at most 32). */
  refused: RefusedSave[];
  /** Connections the transport refused (untrusted certificates, other protocols). */
  refused_connections: {
    /** The peer's address. */
    remote: string;
    /** The transport's error code. */
    code: string;
    /** In words. */
    message: string;
  }[];
  /** VMs started at a TAKEOVER. */
  taken_over: string[];
}

const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The generation file beside a partner's pmem file. */
interface GenerationFile {
  vm: string;
  generation: number;
  bytes: number;
  spec: Record<string, unknown> | null;
}

/**
 * The partner's side: receives saves into `<dir>/<vm>.pmem` (with `<vm>.pmem.ha.json` naming the
 * generation it holds) and starts the VMs at TAKEOVER.
 */
export class PmemHaPartner {
  private readonly received: ReceivedSave[] = [];
  private readonly refusedSaves: RefusedSave[] = [];
  private readonly takenOver: string[] = [];
  /** The end of the file work queued so far (lockFiles). */
  private fileQueue: Promise<void> = Promise.resolve();

  private constructor(
    private readonly server: TransportServer,
    private readonly dir: string,
    private readonly host: PmemHaPartnerHost,
  ) {}

  /** Listens on host:port (port 0: any free one) with the transport's settings. */
  static async listen(listen: string, dir: string, channel: Omit<ChannelOptions, 'protocol' | 'versions'>, host: PmemHaPartnerHost): Promise<PmemHaPartner> {
    const { host: address, port } = parseAddress(listen, 'pmem_ha.listen');
    try {
      mkdirSync(dir, { recursive: true });
    } catch (error) {
      throw new PmemHaError('BV_HA_IO', `pmem_ha.dir '${dir}': ${message(error)}`, { cause: error });
    }
    const server = await TransportServer.listen({ ...channel, protocol: PMEM_HA_PROTOCOL, versions: PMEM_HA_VERSIONS, host: address, port });
    const partner = new PmemHaPartner(server, dir, host);
    // Saves a crash interrupted after they were confirmed are finished before any new one.
    try {
      for (const name of readdirSync(dir)) {
        if (name.endsWith('.pmem.journal')) await partner.recover(name.slice(0, -'.pmem.journal'.length));
      }
    } catch (error) {
      await server.close();
      throw new PmemHaError('BV_HA_IO', `pmem_ha.dir '${dir}': finishing an interrupted save: ${message(error)}`, { cause: error });
    }
    server.onRefused = ({ remote, error }: RefusedPeer) => host.log(`pmem-ha: refused a connection from ${remote}: ${error.message}`);
    void partner.accept();
    return partner;
  }

  /** The address it listens on. */
  get address(): string {
    return `${this.server.host}:${this.server.port}`;
  }

  /** The file a VM's persistent memory is received into. */
  pathOf(vm: string): string {
    return join(this.dir, `${vm}.pmem`);
  }

  /** GET /host/pmem-ha. */
  status(): PmemHaPartnerStatus {
    return {
      listening: this.address,
      dir: this.dir,
      received: [...this.received],
      refused: [...this.refusedSaves],
      refused_connections: this.server.refused.map(({ remote, error }) => ({ remote, code: error.code, message: error.message })),
      taken_over: [...this.takenOver],
    };
  }

  /** Stops listening (streams under way end). */
  async close(): Promise<void> {
    await this.server.close();
  }

  private async accept(): Promise<void> {
    for (;;) {
      let channel: FramedChannel;
      try {
        channel = await this.server.accept();
      } catch {
        return; // closed
      }
      void this.serve(channel);
    }
  }

  private note<T>(list: T[], item: T): void {
    list.push(item);
    if (list.length > 32) list.shift();
  }

  /** One primary's channel: saves and a takeover, until it ends. */
  private async serve(channel: FramedChannel): Promise<void> {
    const from = `${channel.peer?.name ?? '?'}@${channel.remote}`;
    let vm = '?';
    try {
      for (;;) {
        const frame = await channel.receive();
        if (frame === null) return;
        if (frame.type === PmemHaFrame.BEGIN) {
          const begin = parse(frame.payload, 'BEGIN');
          vm = String(begin.vm);
          const outcome = await this.receiveSave(channel, begin, from);
          if (outcome.ok) {
            try {
              await channel.send(PmemHaFrame.SAVED, json({ vm, generation: outcome.generation, ms: outcome.ms }));
              await outcome.apply?.();
            } catch (error) {
              // The journal stays: the next save or start applies it.
              this.host.log(`pmem-ha: applying the journal of '${vm}' failed (it is kept and applied later): ${message(error)}`);
              if (!channel.open) throw error;
            } finally {
              outcome.release();
            }
          } else {
            this.note(this.refusedSaves, { vm, from, code: outcome.error.code, message: outcome.error.message });
            this.host.log(`pmem-ha: refused a save of '${vm}' from ${from}: ${outcome.error.message}`);
            await channel.send(PmemHaFrame.REFUSED, json({ vm, code: outcome.error.code, message: outcome.error.message }));
          }
          vm = '?';
        } else if (frame.type === PmemHaFrame.TAKEOVER) {
          const request = parse(frame.payload, 'TAKEOVER');
          await channel.send(PmemHaFrame.TAKEN, json(await this.takeover(request, from)));
        } else {
          throw new PmemHaError('BV_HA_STREAM', `unexpected frame type ${frame.type} between saves`);
        }
      }
    } catch (error) {
      // A cut, truncated or corrupt stream: the save being received (if any) is dropped whole.
      const code = (error as { code?: string }).code ?? 'BV_HA_STREAM';
      this.note(this.refusedSaves, { vm, from, code, message: message(error) });
      this.host.log(`pmem-ha: the stream from ${from} failed${vm === '?' ? '' : ` during a save of '${vm}'`}; the file is as before: ${message(error)}`);
      channel.destroy();
    }
  }

  /**
   * Receives one save after its BEGIN. Frame errors (a cut, a corrupt frame) throw; a save that
   * arrived but does not check out is refused (ok: false) with the channel still usable.
   */
  private async receiveSave(channel: FramedChannel, begin: Record<string, unknown>, from: string): Promise<{ ok: true; generation: number; ms: number; apply: (() => Promise<void>) | null; release: () => void } | { ok: false; error: PmemHaError }> {
    const started = performance.now();
    // Everything is kept in memory until END checks out: nothing touches the file before.
    const runs: { first: number; pages: Uint8Array }[] = [];
    let problem: PmemHaError | null = null;
    const refuse = (code: PmemHaErrorCode, why: string): void => {
      problem ??= new PmemHaError(code, why);
    };
    const vm = String(begin.vm);
    const bytes = Number(begin.bytes);
    const generation = Number(begin.generation);
    const base = begin.base === null ? null : Number(begin.base);
    if (!VM_NAME.test(vm)) refuse('BV_HA_STREAM', `BEGIN names no valid VM ('${vm}')`);
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0) refuse('BV_HA_STREAM', `BEGIN gives a bad size (${String(begin.bytes)})`);
    if (!Number.isSafeInteger(generation) || generation <= 0) refuse('BV_HA_STREAM', `BEGIN gives a bad generation (${String(begin.generation)})`);
    const pageCount = bytes / PAGE_SIZE;
    let received = 0;
    let crc = 0;
    for (;;) {
      const frame = await channel.receive();
      if (frame === null) throw new PmemHaError('BV_HA_STREAM', `the stream of '${vm}' ended before its END`);
      if (frame.type === PmemHaFrame.END) {
        const end = parse(frame.payload, 'END');
        if (end.generation !== generation) refuse('BV_HA_STREAM', `END is for generation ${String(end.generation)}, BEGIN said ${generation}`);
        if (end.pages !== received) refuse('BV_HA_STREAM', `END counts ${String(end.pages)} pages, ${received} arrived`);
        if (end.crc !== crc) refuse('BV_HA_STREAM', 'the pages\' CRC-32C does not match END\'s');
        break;
      }
      if (frame.type !== PmemHaFrame.PAGES) throw new PmemHaError('BV_HA_STREAM', `expected PAGES or END in a save of '${vm}', got frame type ${frame.type}`);
      const payload = frame.payload;
      if (payload.length < 8) throw new PmemHaError('BV_HA_STREAM', 'a PAGES frame shorter than its header');
      const view = new DataView(payload.buffer, payload.byteOffset, 8);
      const first = view.getUint32(0, true);
      const count = view.getUint32(4, true);
      if (payload.length !== 8 + count * PAGE_SIZE || count === 0 || first + count > pageCount) {
        refuse('BV_HA_STREAM', `a PAGES frame of ${payload.length} bytes for pages ${first}+${count} does not fit a range of ${pageCount} pages`);
        continue;
      }
      const pages = payload.subarray(8);
      crc = crc32c(pages, crc);
      runs.push({ first, pages });
      received += count;
    }
    if (problem !== null) return { ok: false, error: problem };
    // The file work is one save at a time (another channel may bring this VM's next save, or a
    // takeover): held until the caller has confirmed the save and applied its journal.
    const release = await this.lockFiles();
    let keep = false;
    try {
      const receivedAt = performance.now();
      let writeMs = 0;
      let apply: (() => Promise<void>) | null = null;
      if (this.host.hasVm(vm)) return { ok: false, error: new PmemHaError('BV_HA_BUSY', `a VM named '${vm}' exists on this host: its persistent memory is not overwritten`) };
      const path = this.pathOf(vm);
      await this.recover(vm);
      const held = this.readGeneration(vm);
      const meta: GenerationFile = { vm, generation, bytes, spec: (begin.spec as Record<string, unknown> | null) ?? null };
      if (base !== null && (held === null || held.generation !== base || held.bytes !== bytes)) {
        return { ok: false, error: new PmemHaError('BV_HA_BASE', `the save builds on generation ${base}, this host holds ${held === null ? 'none' : `${held.generation} (${held.bytes} bytes)`}`) };
      }
      try {
        if (base === null) {
          // A whole copy: a side file, fsynced, renamed over the file.
          const side = `${path}.incoming`;
          const file = await open(side, 'w');
          try {
            await writeRuns(file, bytes, runs);
            writeMs = performance.now() - receivedAt;
            await file.sync();
          } finally {
            await file.close();
          }
          await rename(side, path);
          await this.writeGeneration(meta);
          await syncDir(this.dir);
        } else {
          if (!existsSync(path) || statSync(path).size !== bytes) return { ok: false, error: new PmemHaError('BV_HA_BASE', `${path} is missing or of another size`) };
          // A redo journal: the save is durable once it is written (one sequential write, fdatasync);
          // SAVED goes then, and the pages are applied in place after it (applyJournal). A crash in
          // between is repaired at the next start or save (recover): the file is never half-updated.
          writeMs = await writeJournal(this.journalOf(vm), meta, runs);
          apply = () => this.applyJournal(meta, runs);
        }
      } catch (error) {
        return { ok: false, error: new PmemHaError('BV_HA_IO', `writing ${path}: ${message(error)}`, { cause: error }) };
      }
      const ended = performance.now();
      const ms = round(ended - started);
      this.note(this.received, {
        vm, from, generation, final: begin.final === true, pages: received, path, ms,
        receive_ms: round(receivedAt - started), write_ms: round(writeMs), sync_ms: round(ended - receivedAt - writeMs),
      });
      if (begin.final === true) this.host.log(`pmem-ha: the power-loss save of '${vm}' from ${from} is in ${path} (generation ${generation}, ${received} pages, ${ms} ms)`);
      keep = true;
      return { ok: true, generation, ms, apply, release };
    } finally {
      if (!keep) release();
    }
  }

  /** Waits for the file work before it; call the function returned when done. */
  private async lockFiles(): Promise<() => void> {
    let release!: () => void;
    const done = new Promise<void>((resolve) => {
      release = resolve;
    });
    const previous = this.fileQueue;
    this.fileQueue = previous.then(() => done);
    await previous;
    return release;
  }

  /** The redo journal of a VM's file. */
  private journalOf(vm: string): string {
    return `${this.pathOf(vm)}.journal`;
  }

  /** Writes a journal's pages into the file in place, fdatasync, then the generation, then drops the journal. */
  private async applyJournal(meta: GenerationFile, runs: { first: number; pages: Uint8Array }[]): Promise<void> {
    const file = await open(this.pathOf(meta.vm), 'r+');
    try {
      await writeRuns(file, meta.bytes, runs);
      // The size does not change: fdatasync is enough for the pages.
      await file.datasync();
    } finally {
      await file.close();
    }
    await this.writeGeneration(meta);
    await unlink(this.journalOf(meta.vm));
    await syncDir(this.dir);
  }

  /**
   * Finishes a save a crash interrupted: a whole journal is applied (its save was confirmed); a
   * torn one (its save was never confirmed: SAVED goes only after the journal is durable) is
   * dropped, and the file is as before it.
   */
  private async recover(vm: string): Promise<void> {
    const path = this.journalOf(vm);
    if (!existsSync(path)) return;
    const journal = readJournal(path);
    if (journal === null || journal.meta.vm !== vm) {
      this.host.log(`pmem-ha: dropped the torn journal ${path} (its save was never confirmed; ${this.pathOf(vm)} is as before it)`);
      await unlink(path);
      await syncDir(this.dir);
      return;
    }
    await this.applyJournal(journal.meta, journal.runs);
    this.host.log(`pmem-ha: applied the journal of '${vm}' (generation ${journal.meta.generation}) left by an interrupted save`);
  }

  private async takeover(request: Record<string, unknown>, from: string): Promise<{ started: string[]; errors: string[] }> {
    const vms = Array.isArray(request.vms) ? request.vms.map(String) : [];
    const mode = request.on_partner;
    const started: string[] = [];
    const errors: string[] = [];
    this.host.log(`pmem-ha: ${from} is going down: taking over ${vms.join(', ') || 'nothing'} (on_partner ${String(mode)})`);
    if (mode === 'none') return { started, errors };
    const release = await this.lockFiles();
    try {
      return await this.startTakenOver(vms, mode === 'app' ? String(request.app_boot_args ?? '') : null, started, errors);
    } finally {
      release();
    }
  }

  private async startTakenOver(vms: string[], bootArgs: string | null, started: string[], errors: string[]): Promise<{ started: string[]; errors: string[] }> {
    for (const vm of vms) {
      if (VM_NAME.test(vm)) {
        try {
          await this.recover(vm);
        } catch (error) {
          errors.push(`${vm}: ${message(error)}`);
          continue;
        }
      }
      const held = VM_NAME.test(vm) ? this.readGeneration(vm) : null;
      if (held === null) {
        errors.push(`${vm}: no save of it here`);
        continue;
      }
      if (held.spec === null) {
        errors.push(`${vm}: the primary sent no configuration to start it from`);
        continue;
      }
      try {
        await this.host.startVm(held.spec, this.pathOf(vm), bootArgs);
        started.push(vm);
        this.takenOver.push(vm);
      } catch (error) {
        errors.push(`${vm}: ${message(error)}`);
      }
    }
    return { started, errors };
  }

  private readGeneration(vm: string): GenerationFile | null {
    try {
      const held = JSON.parse(readFileSync(`${this.pathOf(vm)}.ha.json`, 'utf8')) as GenerationFile;
      return typeof held.generation === 'number' && typeof held.bytes === 'number' ? held : null;
    } catch {
      return null;
    }
  }

  private async writeGeneration(held: GenerationFile): Promise<void> {
    const path = `${this.pathOf(held.vm)}.ha.json`;
    const side = `${path}.incoming`;
    const file = await open(side, 'w');
    try {
      await file.writeFile(JSON.stringify(held));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(side, path);
  }
}

/** Writes the runs of a save at their offsets; a file opened fresh gets its full size. */
async function writeRuns(file: FileHandle, bytes: number, runs: { first: number; pages: Uint8Array }[]): Promise<void> {
  // Many small pwrites in flight at once: one at a time, each would wait for a thread-pool round trip.
  const writeRun = async ({ first, pages }: { first: number; pages: Uint8Array }): Promise<void> => {
    let done = 0;
    while (done < pages.length) done += (await file.write(pages, done, pages.length - done, first * PAGE_SIZE + done)).bytesWritten;
  };
  for (let at = 0; at < runs.length; at += WRITES_IN_FLIGHT) await Promise.all(runs.slice(at, at + WRITES_IN_FLIGHT).map(writeRun));
  // A whole save covers every page; a delta writes inside the file: either way the size is the range's.
  const size = (await file.stat()).size;
  if (size !== bytes) throw new PmemHaError('BV_HA_IO', `the file has ${size} bytes after the save, not ${bytes}`);
}

/** Page writes a partner keeps in flight when it applies a save in place. */
const WRITES_IN_FLIGHT = 64;

/** 'BVHJ': a partner's redo journal. */
const JOURNAL_MAGIC = 0x4a485642;

/**
 * Writes a redo journal (docs/pmem.md, "High availability"): magic, the generation file's JSON,
 * the runs (u32 first page, u32 count, the pages), CRC-32C of all of it; fdatasync, and the
 * directory synced so the new entry is durable. Resolves with the ms spent writing (before the syncs).
 * Asynchronous (the thread pool's): a partner's host keeps running its VMs meanwhile.
 */
export async function writeJournal(path: string, meta: { vm: string; generation: number; bytes: number; spec: Record<string, unknown> | null }, runs: readonly { first: number; pages: Uint8Array }[]): Promise<number> {
  const started = performance.now();
  let writtenAt = started;
  const metaBytes = encoder.encode(JSON.stringify(meta));
  const head = Buffer.alloc(8 + Math.ceil(metaBytes.length / 4) * 4 + 4);
  head.writeUInt32LE(JOURNAL_MAGIC, 0);
  head.writeUInt32LE(metaBytes.length, 4);
  head.set(metaBytes, 8);
  head.writeUInt32LE(runs.length, head.length - 4);
  // One buffer, one sequential write: the pages are a tenth of the range at most, typically.
  const journal = Buffer.allocUnsafe(head.length + runs.reduce((sum, run) => sum + 8 + run.pages.length, 0) + 4);
  journal.set(head, 0);
  let at = head.length;
  for (const { first, pages } of runs) {
    journal.writeUInt32LE(first, at);
    journal.writeUInt32LE(pages.length / PAGE_SIZE, at + 4);
    journal.set(pages, at + 8);
    at += 8 + pages.length;
  }
  journal.writeUInt32LE(crc32c(journal.subarray(0, at)) >>> 0, at);
  const file = await open(path, 'w');
  try {
    await writeAll(file, journal);
    writtenAt = performance.now();
    await file.datasync();
  } finally {
    await file.close();
  }
  await syncDir(join(path, '..'));
  return writtenAt - started;
}

async function writeAll(file: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += (await file.write(bytes, done, bytes.length - done)).bytesWritten;
}

/** A journal's contents, or null when it is torn (short, damaged, or not a journal). */
function readJournal(path: string): { meta: GenerationFile; runs: { first: number; pages: Uint8Array }[] } | null {
  const data = readFileSync(path);
  if (data.length < 16 || data.readUInt32LE(0) !== JOURNAL_MAGIC) return null;
  if (crc32c(data.subarray(0, data.length - 4)) >>> 0 !== data.readUInt32LE(data.length - 4)) return null;
  const metaLength = data.readUInt32LE(4);
  let at = 8 + Math.ceil(metaLength / 4) * 4;
  if (at + 4 > data.length - 4) return null;
  let meta: GenerationFile;
  try {
    meta = JSON.parse(decoder.decode(data.subarray(8, 8 + metaLength))) as GenerationFile;
  } catch {
    return null;
  }
  if (typeof meta.vm !== 'string' || typeof meta.generation !== 'number' || typeof meta.bytes !== 'number') return null;
  const count = data.readUInt32LE(at);
  at += 4;
  const runs: { first: number; pages: Uint8Array }[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 8 > data.length - 4) return null;
    const first = data.readUInt32LE(at);
    const pages = data.readUInt32LE(at + 4) * PAGE_SIZE;
    at += 8;
    if (at + pages > data.length - 4 || (first * PAGE_SIZE) + pages > meta.bytes) return null;
    runs.push({ first, pages: data.subarray(at, at + pages) });
    at += pages;
  }
  return at === data.length - 4 ? { meta, runs } : null;
}

/** fsync of a directory, so that a rename in it is durable. */
async function syncDir(dir: string): Promise<void> {
  const file = await open(dir, 'r');
  try {
    await file.sync();
  } finally {
    await file.close();
  }
}
