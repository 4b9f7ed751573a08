/**
 * Live migration of a VM between two hosts over a FramedChannel (T-13), pre-copy:
 *
 *  1. BEGIN: the source names the VM's configuration (and what its host needs to attach the same
 *     devices); the destination creates an empty VM and answers READY.
 *  2. Round 0 sends every page that holds something while the guest keeps running; a write epoch
 *     (GuestMemory.beginWriteEpoch) notes each page the guest writes from then on. Each later
 *     round opens a new epoch and sends the pages the previous round saw written.
 *  3. When the pages left fit the measured bandwidth times the downtime limit, or rounds stop
 *     converging after throttling, the source pauses the guest, sends the last dirty pages and the
 *     CPU, device and disk-chain state (the checkpoint's own encoding: vmCheckpointContents and the
 *     DEVICES record format), and waits for DONE: the destination has resumed the VM.
 *
 * Until the STATE frame has gone, any failure leaves the source running as before (the epoch is
 * ended, the throttle lifted) and the destination destroys its partial VM. After it, the source
 * stays paused: the destination may be running the VM, and two running copies must never exist.
 *
 * The sender is asynchronous and does a bounded amount of work between awaits, so the host's
 * round-robin loop keeps running guests while pages go out. docs/migration.md has the protocol.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { AbsentState, KernelError, PageState, PageWaitError } from '../../kernel/index.ts';
import type { Vm, VmConfig } from '../../kernel/index.ts';
import { decodeConfig, decodeCpus, decodeDevices, encodeDevices, encodeJson } from '../checkpoint/format.ts';
import type { JsonObject } from '../checkpoint/format.ts';
import { currentPage, decodeVmCheckpoint, prepareImageRecord, settlePoisonedPages, vmCheckpointContents } from '../checkpoint/vm-checkpoint.ts';
import type { DecodedVmCheckpoint } from '../checkpoint/vm-checkpoint.ts';
import { DISK_SECTOR_BYTES, type BlockDevice } from '../../devices/index.ts';
import { adoptReceivedDisk, decodeDiskFrame, describeDisk, DirtySectorLog, discardReceivedDisk, diskFrames, parseMigratedDisk, writeDiskRuns, type MigratedDisk } from './disk.ts';
import { MigrationError, TransportError } from './errors.ts';
import { FIRST_APP_FRAME_TYPE } from './transport.ts';
import type { FramedChannel, PreparedFrame } from './transport.ts';

/**
 * The pages a VM writes between open() and close(): a write epoch (the live snapshot's barrier,
 * T-12) whose hook notes each page once. Pre-copy rounds and replication epochs are both this.
 * `flags` is 1 for a page noted since open(); callers may also mark pages they are about to send.
 */
export class DirtyPageLog {
  readonly flags: Uint8Array;
  #list: number[] = [];

  constructor(readonly vm: Vm) {
    this.flags = new Uint8Array(vm.memory.pageCount);
  }

  /** Starts noting writes (one write epoch of the VM's memory at a time). */
  open(): void {
    const flags = this.flags;
    const list: number[] = [];
    this.#list = list;
    this.vm.memory.beginWriteEpoch((gpn) => {
      if (flags[gpn] === 0) {
        flags[gpn] = 1;
        list.push(gpn);
      }
    });
  }

  /** Ends the epoch and returns the pages written in it, sorted; the flags are cleared. */
  close(): number[] {
    this.vm.memory.endWriteEpoch();
    const list = this.#list;
    for (const gpn of list) this.flags[gpn] = 0;
    this.#list = [];
    return list.sort((a, b) => a - b);
  }
}

/** The application protocol name and the versions this build speaks. */
export const MIGRATION_PROTOCOL = 'bv-migration';
/**
 * The migration protocol versions this build speaks (newest last). 2: the DISK frame (a VM's disk
 * overlays travel with it); version 1 hosts had none, so they are refused at the handshake.
 */
export const MIGRATION_VERSIONS: readonly number[] = [2];

/** Frame types of the migration protocol. */
export const MigrationFrame = {
  /** source → destination, JSON: configuration, page count, attach data. */
  BEGIN: FIRST_APP_FRAME_TYPE,
  /** destination → source, JSON: the empty VM exists. */
  READY: FIRST_APP_FRAME_TYPE + 1,
  /** source → destination, binary: page records then page bytes. */
  PAGES: FIRST_APP_FRAME_TYPE + 2,
  /** source → destination, JSON: a round ended; the destination answers with the same frame once it has installed the round's pages. */
  ROUND: FIRST_APP_FRAME_TYPE + 3,
  /** source → destination, binary: CONFIG, CPUS and DEVICES records; the guest is paused. */
  STATE: FIRST_APP_FRAME_TYPE + 4,
  /** destination → source, JSON: the VM is running on the destination. */
  DONE: FIRST_APP_FRAME_TYPE + 5,
  /** Post-copy, source → destination, binary (u32 count, u32 gpns): pages the destination must fetch. Sent just before STATE. */
  REMOTE: FIRST_APP_FRAME_TYPE + 6,
  /** Post-copy, destination → source, binary (u32 count, u32 gpns): send these pages first (0 pages: keep-alive). */
  REQUEST: FIRST_APP_FRAME_TYPE + 7,
  /** Post-copy, source → destination, JSON: every remote page has been pushed. */
  PUSHED: FIRST_APP_FRAME_TYPE + 8,
  /** Post-copy, destination → source, JSON: no page is remote any more (the destination's figures). */
  COMPLETE: FIRST_APP_FRAME_TYPE + 9,
  /** source → destination, binary (disk.ts): sectors of the VM's disk overlays, during the rounds and at the switch-over. */
  DISK: FIRST_APP_FRAME_TYPE + 10,
} as const;

/** Why a post-copy destination VM is paused: a vCPU touched a page still on the source. */
export const REMOTE_PAGE_WAIT_REASON = 'waiting for a page from the migration source (post-copy)';

/** What a page record says (shared with replication.ts). */
export const PageKind = {
  /** 4096 bytes follow in the data part. */
  BYTES: 0,
  /** The page is all zeros: the destination drops whatever it holds. */
  ZERO: 1,
} as const;

/** Bytes of one page record: u32 gpn, u32 kind. */
export const RECORD_BYTES = 8;
/** What the source has sent of each page. */
const SENT_NOTHING = 0;
const SENT_BYTES = 1;

/** Options of a pre-copy send. */
export interface SendOptions {
  /** The longest pause the switch-over may cost, in ms (default 300, QEMU's and Cloud Hypervisor's default). */
  downtimeMs?: number;
  /** Bandwidth limit in bytes per second (0 or unset: none). */
  maxBandwidth?: number;
  /** Give up after this many seconds (default 3600). */
  timeoutS?: number;
  /** Give up converging after this many rounds and switch over anyway (default 30). */
  maxRounds?: number;
  /** Pages per PAGES frame (default 256: 1 MiB, built in place; larger frames cost fewer sends and checksums). */
  pagesPerFrame?: number;
  /** Slow the guest down when rounds stop converging (default true). */
  autoConverge?: boolean;
  /** Opaque data for the destination's host to attach the same devices (boot args, disk, balloon…). */
  attach?: JsonObject;
  /**
   * Caller data carried in the state (like a checkpoint's CONFIG.extra); a function is called when
   * the state is taken, with the VM paused (for what changes while it runs, e.g. pending input).
   */
  extra?: JsonObject | (() => JsonObject);
  /** Told of each round as it ends. */
  onRound?: (round: RoundFigures) => void;
  /**
   * 'precopy' (default), or 'postcopy': after round 0 (the first full pass) switch over at once;
   * the pages dirtied since stay here, the destination fetches them on first access while this
   * side pushes them in the background.
   */
  mode?: 'precopy' | 'postcopy';
  /** Post-copy: told when the VM runs on the destination (DONE), before the background push. */
  onSwitchedOver?: () => void;
  /**
   * The VM's block device: its overlays' sectors are sent (round 0: all of them; then the sectors
   * written since) and its raw base must be the same file on the destination. Unset: the disk's
   * files must all be on shared storage (the state names them).
   */
  disk?: BlockDevice | null;
}

/** What the source host does for the migration. */
export interface SourceHooks {
  /** Stop running the VM (between slices) for the switch-over. */
  pause(): void;
  /** Run it again: the migration failed before the destination could have it. */
  resume(): void;
  /** Run the guest only 1 − fraction of the time (0: full speed): auto-converge. */
  throttle(fraction: number): void;
}

/** One round of a pre-copy. */
export interface RoundFigures {
  /** 0 for the first pass over all memory. */
  round: number;
  /** Pages sent with their bytes. */
  pages: number;
  /** Pages sent as zero markers. */
  zeroPages: number;
  /** Pages the guest wrote during the round (to be sent next). */
  dirtied: number;
  /** Duration of the round. */
  ms: number;
  /** Bytes of frames sent in the round. */
  bytes: number;
  /** Throttle applied during the round (0 … 0.99). */
  throttle: number;
}

/** A finished (or failed) migration's figures: the API's `migration` object. */
export interface MigrationFigures {
  /** 'precopy'. */
  mode: 'precopy' | 'postcopy';
  /** 'completed', 'failed', or a phase while it runs ('postcopy': the VM runs on the destination, pages still go). */
  state: 'connecting' | 'precopy' | 'switchover' | 'postcopy' | 'completed' | 'failed';
  /** From the start to DONE (or the failure). */
  total_ms: number;
  /** From pausing the guest on the source to its running on the destination. */
  downtime_ms: number | null;
  /** Bytes of frames sent (headers and checksums included, before TLS). */
  bytes_sent: number;
  /** Pages sent with their bytes, all rounds together. */
  pages_sent: number;
  /** Of those, pages sent more than once (dirtied after they were sent). */
  pages_resent: number;
  /** Zero markers sent. */
  zero_pages: number;
  /** Rounds of pre-copy (0 = the first full pass only). */
  rounds: number;
  /** Pages sent while the guest was paused. */
  final_pages: number;
  /** Measured bandwidth of the last round, MiB/s. */
  bandwidth_mib_s: number;
  /** Highest throttle applied to the guest (0 … 0.99), and whether auto-converge had to act. */
  throttle: number;
  /** Whether auto-converge had to throttle the guest. */
  auto_converged: boolean;
  /** Why it switched over: 'converged', 'max_rounds' or 'throttled'. */
  switchover_reason: string | null;
  /** The failure, or null. */
  error: string | null;
  /** The per-round figures. */
  round_figures: RoundFigures[];
  /** Post-copy: times it carried on over a new connection after a failure. */
  resumptions: number;
  /** Post-copy (null in pre-copy): pages left on the source at the switch-over, and what became of them. */
  postcopy: PostcopyFigures | null;
  /** Disk sectors sent (overlays' sectors, then those written again), all rounds together. */
  disk_sectors_sent: number;
  /** Of those, sectors sent while the guest was paused (written since the last round). */
  disk_final_sectors: number;
}

/** Post-copy figures (MigrationFigures.postcopy, ReceiveFigures.postcopy). */
export interface PostcopyFigures {
  /** Pages the destination lacked when the VM resumed there. */
  remote_pages: number;
  /** Of those, pages still remote now. */
  remote_left: number;
  /** Guest accesses that had to wait for a page (each page asked for once). */
  remote_faults: number;
  /** Pages pushed by the source in the background, and sent because the destination asked. */
  pages_pushed: number;
  /** Pages sent because the destination asked for them. */
  pages_requested: number;
  /** From a fault to its page's arrival on the destination, ms. */
  fault_latency_p50_ms: number | null;
  /** The same, 99th percentile. */
  fault_latency_p99_ms: number | null;
  /** The same, longest. */
  fault_latency_max_ms: number | null;
  /** Total time the destination's guest was paused waiting for pages, ms. */
  wait_ms: number;
  /** From the VM's resumption on the destination to its last page, ms. */
  push_ms: number;
}

function newPostcopyFigures(remote: number): PostcopyFigures {
  return { remote_pages: remote, remote_left: remote, remote_faults: 0, pages_pushed: 0, pages_requested: 0, fault_latency_p50_ms: null, fault_latency_p99_ms: null, fault_latency_max_ms: null, wait_ms: 0, push_ms: 0 };
}

function newFigures(mode: 'precopy' | 'postcopy'): MigrationFigures {
  return {
    mode, state: 'connecting', total_ms: 0, downtime_ms: null, bytes_sent: 0, pages_sent: 0, pages_resent: 0, zero_pages: 0, rounds: 0, final_pages: 0,
    bandwidth_mib_s: 0, throttle: 0, auto_converged: false, switchover_reason: null, error: null, round_figures: [], resumptions: 0, postcopy: null,
    disk_sectors_sent: 0, disk_final_sectors: 0,
  };
}

const DEFAULTS = { downtimeMs: 300, timeoutS: 3600, maxRounds: 30, pagesPerFrame: 256 };
/** Post-copy: the background push waits while more than this is queued in the socket (a request's latency). */
const PUSH_AHEAD_BYTES = 512 * 1024;
/** The sender yields to the event loop (the guests) after this much work. */
const WORK_SLICE_MS = 4;
/** Auto-converge: QEMU's steps (20 % first, then +10 %, at most 99 %). */
const THROTTLE_INITIAL = 0.2;
const THROTTLE_STEP = 0.1;
const THROTTLE_MAX = 0.99;
/** A round "does not converge" when the guest dirties more than this share of what the round sent. */
const CONVERGE_RATIO = 0.5;

function checkSendOptions(options: SendOptions): void {
  const positive = (name: string, value: number | undefined, integer: boolean) => {
    if (value === undefined) return;
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
      throw new MigrationError('BV_MIG_BAD_REQUEST', `${name} must be a positive ${integer ? 'integer' : 'number'}, got ${String(value)}`);
    }
  };
  positive('downtimeMs', options.downtimeMs, false);
  positive('timeoutS', options.timeoutS, false);
  positive('maxRounds', options.maxRounds, true);
  positive('pagesPerFrame', options.pagesPerFrame, true);
  if (options.mode !== undefined && options.mode !== 'precopy' && options.mode !== 'postcopy') {
    throw new MigrationError('BV_MIG_BAD_REQUEST', `mode must be precopy or postcopy, got ${String(options.mode)}`);
  }
  if (options.maxBandwidth !== undefined && (!Number.isFinite(options.maxBandwidth) || options.maxBandwidth < 0)) {
    throw new MigrationError('BV_MIG_BAD_REQUEST', `maxBandwidth must be 0 or positive, got ${String(options.maxBandwidth)}`);
  }
}

/** Yields to the event loop so that the host's scheduler runs the guests. */
function yieldToGuests(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export function isZero(bytes: Uint8Array): boolean {
  // Page views into the host pool start on a page boundary: read them four bytes at a time.
  if ((bytes.byteOffset & 3) === 0) {
    const words = new Int32Array(bytes.buffer, bytes.byteOffset, PAGE_SIZE / 4);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Builds PAGES frames: records first, then the bytes of the BYTES pages, copied at add time. */
export class PageBatch {
  readonly gpns: number[] = [];
  readonly kinds: number[] = [];
  readonly data: Uint8Array;
  dataPages = 0;

  constructor(readonly capacity: number) {
    this.data = new Uint8Array(capacity * PAGE_SIZE);
  }

  get count(): number {
    return this.gpns.length;
  }

  add(gpn: number, bytes: Uint8Array | null): void {
    this.gpns.push(gpn);
    if (bytes === null) this.kinds.push(PageKind.ZERO);
    else {
      this.kinds.push(PageKind.BYTES);
      this.data.set(bytes, this.dataPages * PAGE_SIZE); // copied now: the guest may write it next
      this.dataPages++;
    }
  }

  encode(): Uint8Array {
    const count = this.gpns.length;
    const payload = new Uint8Array(4 + count * RECORD_BYTES + this.dataPages * PAGE_SIZE);
    const view = new DataView(payload.buffer);
    view.setUint32(0, count, true);
    for (let i = 0; i < count; i++) {
      view.setUint32(4 + i * RECORD_BYTES, this.gpns[i]!, true);
      view.setUint32(8 + i * RECORD_BYTES, this.kinds[i]!, true);
    }
    payload.set(this.data.subarray(0, this.dataPages * PAGE_SIZE), 4 + count * RECORD_BYTES);
    this.gpns.length = 0;
    this.kinds.length = 0;
    this.dataPages = 0;
    return payload;
  }
}

/**
 * Builds PAGES frames in place in the channel's frame buffer (prepareFrame): room for `capacity`
 * records first, then the pages' bytes, read straight from guest memory into the frame with one
 * kernel call per run of present pages (GuestMemory.copyPresentPages). So a page is copied once on
 * its way to the socket, and nothing is allocated per page or per frame. A frame that ends with
 * fewer records than its capacity has its bytes moved down over the unused records when sent.
 */
class PagesFrameWriter {
  count = 0;
  dataPages = 0;
  #prepared: PreparedFrame | null = null;
  #view: DataView | null = null;
  #words: Int32Array | null = null;
  readonly #dataStart: number;

  constructor(readonly channel: FramedChannel, readonly capacity: number) {
    this.#dataStart = 4 + capacity * RECORD_BYTES;
  }

  /** Records that still fit. */
  get room(): number {
    return this.capacity - this.count;
  }

  #open(): Uint8Array {
    if (this.#prepared === null) {
      this.#prepared = this.channel.prepareFrame(this.#dataStart + this.capacity * PAGE_SIZE);
      const payload = this.#prepared.payload;
      this.#view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
      this.#words = new Int32Array(payload.buffer, payload.byteOffset, payload.byteLength >>> 2);
    }
    return this.#prepared.payload;
  }

  #record(gpn: number, kind: number): void {
    this.#view!.setUint32(4 + this.count * RECORD_BYTES, gpn, true);
    this.#view!.setUint32(8 + this.count * RECORD_BYTES, kind, true);
    this.count++;
  }

  /** A zero marker. */
  addZero(gpn: number): void {
    this.#open();
    this.#record(gpn, PageKind.ZERO);
  }

  /** A page's bytes (copied now: the guest may write the page next). */
  addBytes(gpn: number, bytes: Uint8Array): void {
    this.#open().set(bytes, this.#dataStart + this.dataPages * PAGE_SIZE);
    this.#record(gpn, PageKind.BYTES);
    this.dataPages++;
  }

  /**
   * Copies gpns[start…] while they are present (at most `room` pages) into the frame's next data
   * slots, without recording them: the caller looks at each with `slotIsZero` and then `keep`s it
   * or drops it. Returns how many were copied (fewer than asked: the next page is not present).
   */
  copyPresent(memory: Vm['memory'], gpns: ArrayLike<number>, start: number, count: number): number {
    const payload = this.#open();
    return memory.copyPresentPages(gpns, start, Math.min(count, this.room), payload, this.#dataStart + this.dataPages * PAGE_SIZE);
  }

  /** Whether the page copied `ahead` slots past the kept ones is all zeros. */
  slotIsZero(ahead: number): boolean {
    const words = this.#words!;
    const first = (this.#dataStart + (this.dataPages + ahead) * PAGE_SIZE) >>> 2;
    for (let i = first; i < first + PAGE_SIZE / 4; i++) if (words[i] !== 0) return false;
    return true;
  }

  /** Keeps the page copied `ahead` slots past the kept ones as the next BYTES record (moving it down over dropped ones). */
  keep(gpn: number, ahead: number): void {
    const payload = this.#prepared!.payload;
    const to = this.#dataStart + this.dataPages * PAGE_SIZE;
    if (ahead > 0) payload.copyWithin(to, to + ahead * PAGE_SIZE, to + (ahead + 1) * PAGE_SIZE);
    this.#record(gpn, PageKind.BYTES);
    this.dataPages++;
  }

  /** Sends the frame if it holds any record. */
  async flush(): Promise<void> {
    if (this.count === 0) return;
    const prepared = this.#prepared!;
    const payload = prepared.payload;
    const recordsEnd = 4 + this.count * RECORD_BYTES;
    this.#view!.setUint32(0, this.count, true);
    // Fewer records than room was left for: the bytes follow the last record.
    if (recordsEnd < this.#dataStart && this.dataPages > 0) payload.copyWithin(recordsEnd, this.#dataStart, this.#dataStart + this.dataPages * PAGE_SIZE);
    const length = recordsEnd + this.dataPages * PAGE_SIZE;
    this.#prepared = null;
    this.#view = null;
    this.#words = null;
    this.count = 0;
    this.dataPages = 0;
    await this.channel.sendPrepared(MigrationFrame.PAGES, prepared, length);
  }
}

/**
 * Migrates `vm` to the peer of `channel` by pre-copy. Resolves with the figures once the
 * destination runs the VM (the caller then removes the source VM); rejects otherwise, with the
 * figures in `figures` (state 'failed') and the source VM as it was (running), unless the
 * failure came after the switch-over state was sent (the source VM then stays paused; see the
 * module comment).
 */
export class PrecopySender {
  /** Live figures (the API shows them while it runs). */
  readonly figures: MigrationFigures;
  /** Whether the source VM must stay paused after a failure (the destination may have it). */
  ambiguous = false;

  readonly #vm: Vm;
  #channel: FramedChannel;
  readonly #hooks: SourceHooks;
  readonly #options: SendOptions;
  readonly #pageCount: number;
  readonly #sent: Uint8Array;
  /** Pages written in the current epoch. */
  readonly #dirty: DirtyPageLog;
  readonly #started = performance.now();
  #cancelled: Error | null = null;
  #paused = false;
  #throttle = 0;
  /** Post-copy: the pages the destination lacked at the switch-over, and which went out on the current channel. */
  #remote: number[] | null = null;
  #pushed: Uint8Array | null = null;
  #switchedAt = 0;
  /** Rounds the destination has acknowledged (ROUND answered). */
  #acknowledged = 0;
  /** Bytes sent on channels before the current one (post-copy resumption). */
  #bytesBefore = 0;
  /** #emptiedPages' page states (allocated once). */
  #states: Uint8Array | null = null;
  /** GuestMemory.emptiedCount when #emptiedPages last looked (-1: never). */
  #emptiedMark = -1;
  /** Sectors the guest writes during the migration (null: the disk is not sent). */
  readonly #diskLog: DirtySectorLog | null;

  constructor(vm: Vm, channel: FramedChannel, hooks: SourceHooks, options: SendOptions = {}) {
    checkSendOptions(options);
    this.figures = newFigures(options.mode ?? 'precopy');
    if (vm.memory.writeEpochActive) {
      throw new MigrationError('BV_MIG_BAD_REQUEST', `${vm.name}: a snapshot or another migration of this VM is in progress`);
    }
    this.#vm = vm;
    this.#channel = channel;
    this.#hooks = hooks;
    this.#options = options;
    this.#pageCount = vm.memory.pageCount;
    this.#sent = new Uint8Array(this.#pageCount);
    this.#dirty = new DirtyPageLog(vm);
    this.#diskLog = options.disk == null ? null : new DirtySectorLog(options.disk);
    // A reset puts RAM back without guest writes: what was sent would be wrong.
    vm.onReset(() => this.cancel(new MigrationError('BV_MIG_CANCELLED', `${vm.name} was reset during its migration`)));
  }

  /** Stops the migration at its next step (the VM stopped, was deleted, the host closes). */
  cancel(error: Error): void {
    if (this.figures.state === 'completed' || this.figures.state === 'failed') return;
    this.#cancelled ??= error;
  }

  /**
   * Post-copy that failed after the switch-over (`ambiguous`; this VM paused, holding the pages
   * the destination lacks): carries on over a new channel to the same destination host. The
   * destination names the pages it still lacks and they are pushed (its requests first) as
   * before. Resolves with the figures once none is remote; on failure the VM stays as it was
   * (paused, every page kept), so it can be tried again.
   */
  async resumePostcopy(channel: FramedChannel): Promise<MigrationFigures> {
    const vm = this.#vm;
    if (this.#remote === null || this.figures.state !== 'failed' || !this.ambiguous) {
      channel.destroy();
      throw new MigrationError('BV_MIG_BAD_REQUEST', `${vm.name}: only a post-copy that failed after its switch-over can be resumed`);
    }
    this.#bytesBefore += this.#channel.stats.bytesSent;
    this.#channel = channel;
    this.figures.state = 'postcopy';
    this.figures.error = null;
    this.figures.resumptions++;
    try {
      await channel.send(MigrationFrame.BEGIN, encodeJson({ mode: 'postcopy-resume', name: vm.name, pageCount: this.#pageCount }));
      const left = decodeGpns(await channel.expect(MigrationFrame.REMOTE, 'REMOTE'), this.#pageCount, vm.name);
      if (this.#switchedAt === 0) this.#switchedAt = performance.now(); // DONE had been lost: the destination runs it
      this.#remote = left;
      this.#pushed = new Uint8Array(this.#pageCount);
      this.figures.postcopy!.remote_left = left.length;
      await this.#push([], performance.now() + (this.#options.timeoutS ?? DEFAULTS.timeoutS) * 1000);
      this.figures.state = 'completed';
      this.figures.error = null;
      this.figures.total_ms = round3(performance.now() - this.#started);
      this.figures.bytes_sent = this.#bytesBefore + channel.stats.bytesSent;
      await channel.close().catch(() => {});
      return this.figures;
    } catch (error) {
      this.#fail(error);
      throw error;
    }
  }

  /** Runs the migration to its end. */
  async run(): Promise<MigrationFigures> {
    const vm = this.#vm;
    try {
      if (this.#options.maxBandwidth !== undefined) this.#channel.setMaxBytesPerSecond(this.#options.maxBandwidth);
      const deadline = this.#started + (this.#options.timeoutS ?? DEFAULTS.timeoutS) * 1000;
      await this.#begin();
      prepareImageRecord(vm); // the state's image record, encoded now rather than in the pause
      this.figures.state = 'precopy';
      const downtimeMs = this.#options.downtimeMs ?? DEFAULTS.downtimeMs;
      const maxRounds = this.#options.maxRounds ?? DEFAULTS.maxRounds;
      let pending: number[] | null = null; // null: round 0, every page
      let slowRounds = 0;
      for (let round = 0; ; round++) {
        this.#dirty.open();
        // The disk first: the round's acknowledgement then covers its sectors too.
        await this.#sendDisk(round === 0, false, deadline);
        const figures = await this.#sendRound(round, pending, deadline);
        // The epoch stays open while the destination catches up: writes meanwhile are this round's.
        await this.#roundsAcknowledged(round);
        pending = this.#dirty.close();
        figures.dirtied = pending.length;
        if (this.figures.mode === 'precopy') {
          // Pages emptied without a write during the round go with the next one (as zero markers).
          const flags = this.#dirty.flags;
          for (const gpn of pending) flags[gpn] = 1;
          const emptied = this.#emptiedPages(flags);
          for (const gpn of pending) flags[gpn] = 0;
          for (const gpn of emptied) pending.push(gpn);
        }
        this.figures.round_figures.push(figures);
        this.figures.rounds = round;
        this.#options.onRound?.(figures);
        const bandwidth = figures.ms > 0 ? figures.bytes / (figures.ms / 1000) : Infinity;
        this.figures.bandwidth_mib_s = Math.round((bandwidth / (1024 * 1024)) * 10) / 10;
        const remainingBytes = pending.length * PAGE_SIZE;
        if (this.figures.mode === 'postcopy') {
          this.figures.switchover_reason = 'postcopy';
          break;
        }
        if (remainingBytes <= bandwidth * (downtimeMs / 1000)) {
          this.figures.switchover_reason = 'converged';
          break;
        }
        if (round + 1 >= maxRounds) {
          this.figures.switchover_reason = 'max_rounds';
          break;
        }
        // Not converging: the guest dirties more than half of what a round gets out.
        const sentPages = figures.pages + figures.zeroPages;
        if (pending.length > CONVERGE_RATIO * Math.max(1, sentPages) && round > 0) slowRounds++;
        else slowRounds = 0;
        if (slowRounds >= 2 && (this.#options.autoConverge ?? true)) {
          if (this.#throttle >= THROTTLE_MAX) {
            this.figures.switchover_reason = 'throttled';
            break;
          }
          this.#throttle = this.#throttle === 0 ? THROTTLE_INITIAL : Math.min(THROTTLE_MAX, this.#throttle + THROTTLE_STEP);
          this.figures.throttle = Math.max(this.figures.throttle, this.#throttle);
          this.figures.auto_converged = true;
          this.#hooks.throttle(this.#throttle);
          slowRounds = 0;
        }
        this.#checkAlive(deadline);
      }
      if (this.figures.mode === 'postcopy') await this.#postcopy(pending, deadline);
      else await this.#switchOver(pending);
      this.figures.state = 'completed';
      this.figures.total_ms = round3(performance.now() - this.#started);
      this.figures.bytes_sent = this.#bytesBefore + this.#channel.stats.bytesSent;
      await this.#channel.close().catch(() => {});
      return this.figures;
    } catch (error) {
      this.#fail(error);
      throw error;
    } finally {
      if (vm.memory.writeEpochActive) vm.memory.endWriteEpoch();
      this.#diskLog?.close();
      this.#hooks.throttle(0);
    }
  }

  /**
   * Sends disk sectors (DISK frames): every sector the overlays hold (`all`, round 0, which also
   * starts noting writes) or those written since the last call. While the guest runs the sends
   * yield between frames; a sector written after it was read is noted again for the next call.
   */
  async #sendDisk(all: boolean, paused: boolean, deadline: number): Promise<void> {
    const log = this.#diskLog;
    if (log === null) return;
    if (all) log.open();
    const disk = log.device.disk;
    const sectors = all ? disk.overlaySectors() : log.take();
    for (const payload of diskFrames(disk, sectors, this.#vm.name)) {
      await this.#channel.send(MigrationFrame.DISK, payload);
      if (!paused) {
        this.#checkAlive(deadline);
        await yieldToGuests();
      }
    }
    this.figures.disk_sectors_sent += sectors.length;
    if (paused) this.figures.disk_final_sectors += sectors.length;
  }

  async #begin(): Promise<void> {
    const vm = this.#vm;
    const config: JsonObject = { name: vm.name, memoryBytes: vm.config.memoryBytes, vcpus: vm.vcpus.length, largePages: vm.largePagePolicy };
    if (vm.config.mmu !== undefined) config.mmu = JSON.parse(JSON.stringify(vm.config.mmu)) as JsonObject;
    const disk: MigratedDisk | null = this.#diskLog === null ? null : describeDisk(this.#diskLog.device);
    await this.#channel.send(MigrationFrame.BEGIN, encodeJson({ config, pageCount: this.#pageCount, attach: this.#options.attach ?? {}, mode: this.figures.mode, disk: disk as unknown as JsonObject }));
    await this.#channel.expect(MigrationFrame.READY, 'READY');
  }

  /**
   * Pages sent with bytes that are empty now without a write (released, ballooned, poisoned),
   * except those flagged in `skip`: their zero markers must go. Every page's state comes from one
   * kernel call (statesOf); the pass runs after each round too, so the one in the switch-over's
   * pause runs as compiled code (65,536 stateOf calls from cold code took ~4 ms).
   */
  #emptiedPages(skip: Uint8Array): number[] {
    const states = (this.#states ??= new Uint8Array(this.#pageCount));
    this.#emptiedMark = this.#vm.memory.emptiedCount;
    this.#vm.memory.statesOf(0, this.#pageCount, states);
    const emptied: number[] = [];
    for (let gpn = 0; gpn < this.#pageCount; gpn++) {
      if (this.#sent[gpn] !== SENT_BYTES || skip[gpn] === 1) continue;
      const state = states[gpn];
      if (state === PageState.UNTOUCHED || state === PageState.BALLOONED || state === PageState.POISONED) emptied.push(gpn);
    }
    return emptied;
  }

  /**
   * Waits for the destination to acknowledge ROUND `round`, i.e. to have installed every page
   * sent so far, before the round's epoch closes: a switch-over then pauses a guest whose pages
   * are all in over there, so the downtime is not spent draining the frames still in the socket
   * buffers and the destination's queue. The epoch must stay open meanwhile: the guest runs.
   */
  async #roundsAcknowledged(round: number): Promise<void> {
    while (this.#acknowledged < round + 1) {
      const frame = await this.#channel.receive();
      if (frame === null) throw new MigrationError('BV_MIG_PROTOCOL', `${this.#vm.name}: the destination ended the stream during pre-copy`);
      if (frame.type !== MigrationFrame.ROUND) throw new MigrationError('BV_MIG_PROTOCOL', `${this.#vm.name}: unexpected frame type ${frame.type} during pre-copy`);
      this.#acknowledged++;
    }
  }

  /** The caller's extra data for the state, taken now. */
  #extra(): JsonObject | undefined {
    const extra = this.#options.extra;
    return typeof extra === 'function' ? extra() : extra;
  }

  /** Sends one round: every page (round 0) or `pages`, yielding to the guests as it goes. */
  async #sendRound(round: number, pages: number[] | null, deadline: number): Promise<RoundFigures> {
    const started = performance.now();
    const bytesBefore = this.#channel.stats.bytesSent;
    const figures: RoundFigures = { round, pages: 0, zeroPages: 0, dirtied: 0, ms: 0, bytes: 0, throttle: this.#throttle };
    const frame = new PagesFrameWriter(this.#channel, this.#options.pagesPerFrame ?? DEFAULTS.pagesPerFrame);
    // Round 0 goes through memory in order: its page numbers come from a window over it.
    const window = pages === null ? new Int32Array(frame.capacity) : null;
    const total = pages === null ? this.#pageCount : pages.length;
    let sliceStart = performance.now();
    for (let i = 0; i < total;) {
      const want = Math.min(frame.room, total - i);
      let list: ArrayLike<number>;
      let start: number;
      if (window !== null) {
        for (let j = 0; j < want; j++) window[j] = i + j;
        list = window;
        start = 0;
      } else {
        list = pages!;
        start = i;
      }
      i += this.#addPresentPages(frame, list, start, want, figures);
      if (i < total && frame.room > 0) {
        // Not present (untouched, swapped, lazily restored, ballooned…): the page by itself.
        this.#addPage(pages === null ? i : pages[i]!, frame, figures, round === 0);
        i++;
      }
      if (frame.room === 0) {
        await frame.flush();
        this.#checkAlive(deadline);
        if (performance.now() - sliceStart >= WORK_SLICE_MS) {
          await yieldToGuests();
          this.#checkAlive(deadline);
          sliceStart = performance.now();
        }
      }
    }
    await frame.flush();
    await this.#channel.send(MigrationFrame.ROUND, encodeJson({ round }));
    figures.ms = round3(performance.now() - started);
    figures.bytes = this.#channel.stats.bytesSent - bytesBefore;
    this.figures.bytes_sent = this.#channel.stats.bytesSent;
    return figures;
  }

  /**
   * Copies the present pages among list[start…start+count) (stopping at the first other one) into
   * the frame with one kernel call, then records each: its bytes, or — all zeros — a zero marker
   * only if the destination holds bytes for it (as #addPage). Returns the pages consumed.
   */
  #addPresentPages(frame: PagesFrameWriter, list: ArrayLike<number>, start: number, count: number, figures: RoundFigures): number {
    const copied = frame.copyPresent(this.#vm.memory, list, start, count);
    let dropped = 0;
    for (let j = 0; j < copied; j++) {
      const gpn = list[start + j]!;
      // Kept pages moved down over dropped ones: page j sits `dropped` slots past the kept ones.
      if (frame.slotIsZero(dropped)) {
        dropped++;
        if (this.#sent[gpn] !== SENT_BYTES) continue; // the destination has zeros there already
        frame.addZero(gpn);
        this.#sent[gpn] = SENT_NOTHING;
        figures.zeroPages++;
        this.figures.zero_pages++;
        continue;
      }
      frame.keep(gpn, dropped);
      if (this.#sent[gpn] === SENT_BYTES) this.figures.pages_resent++;
      this.#sent[gpn] = SENT_BYTES;
      figures.pages++;
      this.figures.pages_sent++;
    }
    return copied;
  }

  /**
   * Adds a page to the batch as it is now: its bytes, a zero marker (only if the destination
   * holds bytes for it), or nothing. Untouched and ballooned pages are zero (a ballooned page
   * comes back as such with the balloon's state); swapped and lazily restored pages are brought in
   * to be read (currentPage); a poisoned page nobody can rebuild travels in the state's list.
   */
  #addPage(gpn: number, batch: PagesFrameWriter, figures: RoundFigures, firstPass: boolean): void {
    const memory = this.#vm.memory;
    const state = memory.stateOf(gpn);
    if (firstPass && state === PageState.UNTOUCHED) return; // the common case, and the destination's default
    let bytes: Uint8Array | null;
    try {
      bytes = currentPage(this.#vm, gpn);
    } catch (error) {
      if (error instanceof KernelError || (error as { code?: string }).code === 'BV_VMCKPT_UNSAVEABLE') {
        throw new MigrationError('BV_MIG_STATE', `${this.#vm.name}: guest page ${gpn} cannot be read for migration: ${(error as Error).message}`, { cause: error });
      }
      throw error;
    }
    if (bytes !== null && isZero(bytes)) bytes = null;
    if (bytes === null) {
      if (this.#sent[gpn] !== SENT_BYTES) return; // the destination has zeros there already
      batch.addZero(gpn);
      this.#sent[gpn] = SENT_NOTHING;
      figures.zeroPages++;
      this.figures.zero_pages++;
      return;
    }
    if (this.#sent[gpn] === SENT_BYTES) this.figures.pages_resent++;
    batch.addBytes(gpn, bytes);
    this.#sent[gpn] = SENT_BYTES;
    figures.pages++;
    this.figures.pages_sent++;
  }

  /**
   * Pauses the guest, sends the pages dirtied since the last round and those that lost their
   * contents without a write (released, ballooned), then the state, and waits for DONE.
   */
  async #switchOver(dirty: number[]): Promise<void> {
    const vm = this.#vm;
    this.figures.state = 'switchover';
    this.#hooks.pause();
    this.#paused = true;
    const pausedAt = performance.now();
    this.#checkAlive(Infinity);
    const figures: RoundFigures = { round: this.figures.rounds + 1, pages: 0, zeroPages: 0, dirtied: 0, ms: 0, bytes: 0, throttle: this.#throttle };
    const batch = new PagesFrameWriter(this.#channel, this.#options.pagesPerFrame ?? DEFAULTS.pagesPerFrame);
    const flush = () => batch.flush();
    settlePoisonedPages(vm);
    const inDirty = this.#dirty.flags;
    for (const gpn of dirty) inDirty[gpn] = 1;
    for (let i = 0; i < dirty.length;) {
      i += this.#addPresentPages(batch, dirty, i, Math.min(batch.room, dirty.length - i), figures);
      if (i < dirty.length && batch.room > 0) this.#addPage(dirty[i++]!, batch, figures, false);
      if (batch.room === 0) await flush();
    }
    // Pages sent with bytes that are empty now without having been written. None can be new if
    // no page has gone empty since the pass at the end of the last round (whose finds are in
    // `dirty`): then the pass over every page is skipped (it took 3-30 ms of the pause).
    const emptied = vm.memory.emptiedCount === this.#emptiedMark ? [] : this.#emptiedPages(inDirty);
    for (const gpn of emptied) {
      this.#addPage(gpn, batch, figures, false);
      if (batch.room === 0) await flush();
    }
    for (const gpn of dirty) inDirty[gpn] = 0;
    await flush();
    this.figures.final_pages = figures.pages + figures.zeroPages;
    await this.#sendDisk(false, true, Infinity);
    const contents = vmCheckpointContents(vm, vm.captureState(), this.#extra());
    const payload = encodeState(contents.config, contents.cpus, encodeDevices(contents.devices));
    this.ambiguous = true; // from here the destination may end up running the VM
    await this.#channel.send(MigrationFrame.STATE, payload);
    const done = decodeJson(await this.#channel.expect(MigrationFrame.DONE, 'DONE'), 'DONE');
    this.figures.downtime_ms = round3(performance.now() - pausedAt);
    void done;
  }

  /**
   * Post-copy: pauses the guest, sends zero markers for the pages that lost their contents since
   * they were sent, the list of pages the destination lacks (REMOTE) and the state, and waits for
   * DONE (the VM runs there). Then pushes the remote pages in order — the ones the destination
   * asks for (REQUEST) first — and waits for COMPLETE. This VM stays paused and keeps every page
   * throughout: a failure once the state is out leaves it here, paused, holding what the
   * destination lacks (`ambiguous`; `resumePostcopy` carries on over a new connection).
   */
  async #postcopy(dirty: number[], deadline: number): Promise<void> {
    const vm = this.#vm;
    this.figures.state = 'switchover';
    this.#hooks.pause();
    this.#paused = true;
    const pausedAt = performance.now();
    this.#checkAlive(Infinity);
    const figures: RoundFigures = { round: this.figures.rounds + 1, pages: 0, zeroPages: 0, dirtied: 0, ms: 0, bytes: 0, throttle: this.#throttle };
    const batch = new PagesFrameWriter(this.#channel, this.#options.pagesPerFrame ?? DEFAULTS.pagesPerFrame);
    const flush = () => batch.flush();
    settlePoisonedPages(vm);
    const remote: number[] = [];
    const inDirty = this.#dirty.flags;
    for (const gpn of dirty) {
      inDirty[gpn] = 1;
      if (this.#readPage(gpn) !== null) remote.push(gpn);
      else if (this.#sent[gpn] === SENT_BYTES) {
        batch.addZero(gpn);
        this.#sent[gpn] = SENT_NOTHING;
        figures.zeroPages++;
        this.figures.zero_pages++;
        if (batch.room === 0) await flush();
      }
    }
    for (const gpn of this.#emptiedPages(inDirty)) {
      this.#addPage(gpn, batch, figures, false);
      if (batch.room === 0) await flush();
    }
    for (const gpn of dirty) inDirty[gpn] = 0;
    await flush();
    this.figures.final_pages = figures.pages + figures.zeroPages;
    this.figures.postcopy = newPostcopyFigures(remote.length);
    this.#remote = remote;
    this.#pushed = new Uint8Array(this.#pageCount);
    await this.#channel.send(MigrationFrame.REMOTE, encodeGpns(remote));
    await this.#sendDisk(false, true, Infinity);
    const contents = vmCheckpointContents(vm, vm.captureState(), this.#extra());
    this.ambiguous = true; // from here the destination may end up running the VM
    await this.#channel.send(MigrationFrame.STATE, encodeState(contents.config, contents.cpus, encodeDevices(contents.devices)));
    const requested: number[] = [];
    for (;;) {
      const frame = await this.#channel.receive();
      if (frame === null) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the destination ended the stream where DONE was expected`);
      if (frame.type === MigrationFrame.DONE) break;
      if (frame.type === MigrationFrame.REQUEST) requested.push(...decodeGpns(frame.payload, this.#pageCount, vm.name));
      else throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: unexpected frame type ${frame.type} where DONE was expected`);
    }
    this.figures.downtime_ms = round3(performance.now() - pausedAt);
    this.figures.state = 'postcopy';
    this.#switchedAt = performance.now();
    this.#options.onSwitchedOver?.();
    await this.#push(requested, deadline);
  }

  /**
   * Post-copy's second half over the current channel: pushes every remote page not pushed yet on
   * this channel, serving REQUESTs first, then PUSHED, and waits for COMPLETE.
   */
  async #push(requested: number[], deadline: number): Promise<void> {
    const vm = this.#vm;
    const channel = this.#channel;
    const remote = this.#remote!;
    const pushed = this.#pushed!;
    const postcopy = this.figures.postcopy!;
    // Requests go out in small frames (latency); the background push in full ones.
    const urgent = new PageBatch(16);
    const batch = new PageBatch(this.#options.pagesPerFrame ?? DEFAULTS.pagesPerFrame);
    let complete: JsonObject | null = null;
    let readError: unknown = null;
    const waker: { wake: (() => void) | null } = { wake: null };
    const reader = (async () => {
      for (;;) {
        const frame = await channel.receive();
        if (frame === null) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the destination ended the stream during post-copy`);
        if (frame.type === MigrationFrame.REQUEST) requested.push(...decodeGpns(frame.payload, this.#pageCount, vm.name));
        else if (frame.type === MigrationFrame.COMPLETE) {
          complete = decodeJson(frame.payload, 'COMPLETE');
          return;
        } else throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: unexpected frame type ${frame.type} during post-copy`);
        waker.wake?.();
      }
    })().catch((error: unknown) => {
      readError = error;
    }).finally(() => waker.wake?.());
    const take = (gpn: number, into: PageBatch): boolean => {
      if (pushed[gpn] === 1) return false;
      pushed[gpn] = 1;
      into.add(gpn, this.#readPage(gpn) ?? new Uint8Array(PAGE_SIZE));
      return true;
    };
    let next = 0;
    let pushedSent = false;
    let sliceStart = performance.now();
    while (complete === null) {
      if (readError !== null) throw readError;
      this.#checkAlive(deadline);
      if (requested.length > 0) {
        for (const gpn of requested.splice(0)) {
          if (take(gpn, urgent)) postcopy.pages_requested++;
          if (urgent.count === urgent.capacity) await channel.send(MigrationFrame.PAGES, urgent.encode());
        }
        if (urgent.count > 0) await channel.send(MigrationFrame.PAGES, urgent.encode());
        continue;
      }
      if (next < remote.length && channel.bufferedBytes > PUSH_AHEAD_BYTES) {
        // Stay only a little ahead of the link: a requested page must not queue behind megabytes of push.
        await new Promise<void>((resolve) => {
          waker.wake = resolve;
          setTimeout(resolve, 1);
        });
        waker.wake = null;
      } else if (next < remote.length) {
        while (next < remote.length && batch.count < batch.capacity) {
          if (take(remote[next]!, batch)) postcopy.pages_pushed++;
          next++;
        }
        if (batch.count > 0) await channel.send(MigrationFrame.PAGES, batch.encode());
      } else if (!pushedSent) {
        await channel.send(MigrationFrame.PUSHED, encodeJson({ pages: remote.length }));
        pushedSent = true;
      } else {
        await new Promise<void>((resolve) => {
          waker.wake = resolve;
          if (requested.length > 0 || complete !== null || readError !== null) resolve();
        });
        waker.wake = null;
      }
      this.figures.bytes_sent = this.#bytesBefore + channel.stats.bytesSent;
      if (performance.now() - sliceStart >= WORK_SLICE_MS) {
        await yieldToGuests();
        sliceStart = performance.now();
      }
    }
    await reader;
    const theirs = complete as JsonObject;
    for (const key of ['remote_faults', 'fault_latency_p50_ms', 'fault_latency_p99_ms', 'fault_latency_max_ms', 'wait_ms'] as const) {
      const value = theirs[key];
      if (typeof value === 'number' || value === null) (postcopy[key] as number | null) = value;
    }
    postcopy.remote_left = 0;
    postcopy.push_ms = round3(performance.now() - this.#switchedAt);
  }

  /** A page's bytes now, or null when it is empty (untouched, ballooned, all zeros). */
  #readPage(gpn: number): Uint8Array | null {
    let bytes: Uint8Array | null;
    try {
      bytes = currentPage(this.#vm, gpn);
    } catch (error) {
      if (error instanceof KernelError || (error as { code?: string }).code === 'BV_VMCKPT_UNSAVEABLE') {
        throw new MigrationError('BV_MIG_STATE', `${this.#vm.name}: guest page ${gpn} cannot be read for migration: ${(error as Error).message}`, { cause: error });
      }
      throw error;
    }
    return bytes === null || isZero(bytes) ? null : bytes;
  }

  #checkAlive(deadline: number): void {
    if (this.#cancelled !== null) throw this.#cancelled;
    const stop = this.#vm.stopReason.kind;
    if (stop === 'halted' || stop === 'guest-error' || stop === 'host-error') {
      throw new MigrationError('BV_MIG_CANCELLED', `${this.#vm.name} stopped (${stop}) during its migration: there is nothing left to move`);
    }
    if (performance.now() > deadline) {
      throw new MigrationError('BV_MIG_TIMEOUT', `${this.#vm.name}: the migration took longer than ${this.#options.timeoutS ?? DEFAULTS.timeoutS} s`);
    }
  }

  #fail(error: unknown): void {
    this.figures.state = 'failed';
    this.figures.error = error instanceof Error ? error.message : String(error);
    this.figures.total_ms = round3(performance.now() - this.#started);
    this.figures.bytes_sent = this.#bytesBefore + this.#channel.stats.bytesSent;
    if (this.figures.postcopy !== null && this.ambiguous) {
      this.figures.error += ` (post-copy: this host keeps the VM paused with every page; ${this.figures.postcopy.remote_left} or fewer are still missing on the destination: resume the migration over a new connection)`;
    }
    const code = (error as { code?: string }).code ?? 'BV_MIG_STATE';
    if (this.#channel.open) void this.#channel.abort(code, this.figures.error);
    else this.#channel.destroy();
    // Before the state went out the destination cannot run the VM: the source carries on.
    if (this.#paused && !this.ambiguous) this.#hooks.resume();
  }
}

/** A list of page numbers: u32 count, then u32 gpns. */
function encodeGpns(gpns: readonly number[]): Uint8Array {
  const payload = new Uint8Array(4 + gpns.length * 4);
  const view = new DataView(payload.buffer);
  view.setUint32(0, gpns.length, true);
  for (let i = 0; i < gpns.length; i++) view.setUint32(4 + i * 4, gpns[i]!, true);
  return payload;
}

function decodeGpns(payload: Uint8Array, pageCount: number, name: string): number[] {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (payload.length < 4 || payload.length !== 4 + view.getUint32(0, true) * 4) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: a page list has the wrong length`);
  const gpns: number[] = [];
  for (let at = 4; at < payload.length; at += 4) {
    const gpn = view.getUint32(at, true);
    if (gpn >= pageCount) throw new MigrationError('BV_MIG_PROTOCOL', `${name}: page ${gpn} is outside the VM's ${pageCount} pages`);
    gpns.push(gpn);
  }
  return gpns;
}

/** The p-th percentile (0..1) of sorted values, ms rounded; null when there are none. */
function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return round3(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!);
}

/** CONFIG, CPUS and DEVICES records, each with a u32 length. */
export function encodeState(config: JsonObject, cpus: JsonObject[], devices: Uint8Array): Uint8Array {
  const parts = [encodeJson(config), encodeJson(cpus), devices];
  const payload = new Uint8Array(parts.reduce((sum, part) => sum + 4 + part.length, 0));
  const view = new DataView(payload.buffer);
  let at = 0;
  for (const part of parts) {
    view.setUint32(at, part.length, true);
    payload.set(part, at + 4);
    at += 4 + part.length;
  }
  return payload;
}

export function decodeState(payload: Uint8Array, pageCount: number, where: string): DecodedVmCheckpoint {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (let i = 0; i < 3; i++) {
    if (at + 4 > payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${where}: the STATE frame is cut short`);
    const length = view.getUint32(at, true);
    if (at + 4 + length > payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${where}: the STATE frame is cut short`);
    parts.push(payload.subarray(at + 4, at + 4 + length));
    at += 4 + length;
  }
  try {
    return decodeVmCheckpoint({ config: decodeConfig(parts[0]!), cpus: decodeCpus(parts[1]!), devices: decodeDevices(parts[2]!), pageCount }, where);
  } catch (error) {
    throw new MigrationError('BV_MIG_STATE', `${where}: ${(error as Error).message}`, { cause: error });
  }
}

export function decodeJson(payload: Uint8Array, what: string): JsonObject {
  try {
    const value: unknown = JSON.parse(new TextDecoder().decode(payload));
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as JsonObject;
  } catch {
    // refused below
  }
  throw new MigrationError('BV_MIG_PROTOCOL', `the ${what} frame is not a JSON object`);
}

// ------------------------------------------------------------------------------------ receiving

/** What the destination host does for an incoming migration. */
export interface DestinationHooks {
  /**
   * Creates the empty VM the pages go into, with the devices `attach` describes (throw to refuse:
   * a name taken, no room). Not run yet.
   */
  create(config: VmConfig, attach: JsonObject, disk?: MigratedDisk | null): Vm;
  /**
   * The block device of the VM create() made, when the source sends its disk (`disk` given to
   * create: attach the device on `receivingDisk(disk, dir, name)`); the received sectors are
   * written into it. Without this hook a migration that sends a disk is refused.
   */
  block?(vm: Vm): BlockDevice | null;
  /** The VM's state is in: start running it (the source is paused and waits for DONE). */
  start(vm: Vm, decoded: DecodedVmCheckpoint): void;
  /** The migration failed: destroy the partial VM (never run). */
  discard(vm: Vm): void;
  /**
   * Post-copy resumption (a source whose post-copy failed after the switch-over connects again):
   * the receiver of the VM named `name` whose post-copy failed, or null (the connection is refused).
   */
  findPostcopy?(name: string): MigrationReceiver | null;
  /**
   * Post-copy: the VM paused itself (REMOTE_PAGE_WAIT_REASON) at a page still on the source, and
   * a page it may wait for has arrived: run it again (default: vm.resume(); a scheduler that
   * dropped the paused VM must take it back).
   */
  wake?(vm: Vm): void;
}

/** The destination's figures of an incoming migration. */
export interface ReceiveFigures {
  /** 'receiving', 'completed' or 'failed'. */
  state: 'receiving' | 'completed' | 'failed';
  /** The VM's name (once BEGIN arrived). */
  vm: string | null;
  /** Pages installed (with bytes), zero markers applied, rounds seen. */
  pages_received: number;
  /** Zero markers applied. */
  zero_pages: number;
  /** Rounds seen. */
  rounds: number;
  /** Bytes of frames received. */
  bytes_received: number;
  /** From the first frame to DONE. */
  total_ms: number;
  /** From the STATE frame's arrival to the VM running. */
  resume_ms: number | null;
  /** The failure, or null. */
  error: string | null;
  /** 'precopy' or 'postcopy' (once BEGIN arrived). */
  mode: 'precopy' | 'postcopy';
  /** Post-copy's figures (null in pre-copy). */
  postcopy: PostcopyFigures | null;
  /** Disk sectors received and written (null: no disk was sent). */
  disk_sectors: number | null;
}

/**
 * Receives one VM over `channel` (the destination side of PrecopySender). Resolves with the VM,
 * running (hooks.start was called), once DONE has been sent; on any failure the partial VM is
 * discarded (hooks.discard) and the promise rejects.
 */
export class MigrationReceiver {
  /** Live figures. */
  readonly figures: ReceiveFigures = { state: 'receiving', vm: null, pages_received: 0, zero_pages: 0, rounds: 0, bytes_received: 0, total_ms: 0, resume_ms: null, error: null, mode: 'precopy', postcopy: null, disk_sectors: null };

  #channel: FramedChannel;
  readonly #hooks: DestinationHooks;
  readonly #started = performance.now();
  /** Post-copy: the VM runs here (never discarded from then on). */
  #running = false;
  /** Post-copy: when each page asked for was asked for; the latencies of those that came. */
  readonly #askedAt = new Map<number, number>();
  readonly #latencies: number[] = [];
  /** Pages asked for and not yet sent in a REQUEST frame. */
  #toAsk: number[] = [];
  #waitingSince: number | null = null;
  #keepAlive: ReturnType<typeof setInterval> | null = null;
  #vm: Vm | null = null;
  /** #installFresh's scratch lists (reused: one frame after another). */
  #freshGpns = new Int32Array(0);
  #freshInstall = new Uint8Array(0);

  constructor(channel: FramedChannel, hooks: DestinationHooks) {
    this.#channel = channel;
    this.#hooks = hooks;
  }

  /** The VM being received (null before BEGIN). */
  get vm(): Vm | null {
    return this.#vm;
  }

  /** Receives the migration to its end; resolves with the running VM. */
  async run(): Promise<Vm> {
    let vm: Vm | null = null;
    let block: BlockDevice | null = null;
    let diskAdopted = false;
    try {
      const begin = decodeJson(await this.#channel.expect(MigrationFrame.BEGIN, 'BEGIN'), 'BEGIN');
      if (begin.mode === 'postcopy-resume') {
        const name = String(begin.name);
        this.figures.vm = name;
        this.figures.mode = 'postcopy';
        const target = this.#hooks.findPostcopy?.(name) ?? null;
        if (target !== null && target !== this && target.figures.state === 'completed' && target.figures.postcopy?.remote_left === 0 && target.#vm !== null) {
          // Every page arrived and the COMPLETE was lost on the way back: say it again, or the
          // source would keep its paused half for ever (seen in scripts/multi-host-cuts.ts).
          this.figures.state = 'completed';
          this.figures.error = `the post-copy of '${name}' had completed; COMPLETE sent again`;
          await this.#channel.send(MigrationFrame.REMOTE, encodeGpns([]));
          await this.#channel.send(MigrationFrame.COMPLETE, encodeJson(target.figures.postcopy as unknown as JsonObject));
          // The source's PUSHED, then its BYE.
          for (;;) if ((await this.#channel.receive()) === null) break;
          this.#channel.destroy();
          return target.#vm;
        }
        if (target === null || target === this || target.figures.state !== 'failed' || !target.#running || target.#vm === null) {
          throw new MigrationError('BV_MIG_STATE', `no post-copy of '${name}' waits here to be resumed`);
        }
        this.figures.state = 'completed';
        this.figures.error = `carried on the post-copy of '${name}'`;
        return await target.#continueOver(this.#channel);
      }
      const config = begin.config as JsonObject | undefined;
      if (typeof config !== 'object' || config === null || typeof config.memoryBytes !== 'number' || typeof config.name !== 'string') {
        throw new MigrationError('BV_MIG_PROTOCOL', 'the BEGIN frame has no VM configuration');
      }
      this.figures.vm = config.name;
      if (begin.mode === 'postcopy') this.figures.mode = 'postcopy';
      else if (begin.mode !== undefined && begin.mode !== 'precopy') throw new MigrationError('BV_MIG_PROTOCOL', `the source asks for mode '${String(begin.mode)}', which this host does not know`);
      const disk = parseMigratedDisk(begin.disk, `migration of ${config.name}`);
      vm = this.#hooks.create(config as unknown as VmConfig, (begin.attach ?? {}) as JsonObject, disk);
      this.#vm = vm;
      if (disk !== null) {
        block = this.#hooks.block?.(vm) ?? null;
        if (block === null || block.capacity !== disk.sectors) throw new MigrationError('BV_MIG_DISK', `${vm.name}: the source sends a disk of ${disk.sectors} sectors, and this host attached ${block === null ? 'no block device' : `one of ${block.capacity}`} to receive it`);
        this.figures.disk_sectors = 0;
      }
      if (this.figures.mode === 'postcopy') {
        const target = vm;
        target.memory.onAbsent(AbsentState.REMOTE, (_memory, gpn) => this.#remoteFault(target, gpn));
      }
      if (vm.memory.pageCount !== begin.pageCount) {
        throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the source sends ${String(begin.pageCount)} pages, the VM made for them has ${vm.memory.pageCount}`);
      }
      await this.#channel.send(MigrationFrame.READY, encodeJson({}));
      for (;;) {
        const frame = await this.#channel.receive();
        if (frame === null) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the source ended the stream before the VM's state`);
        if (frame.type === MigrationFrame.PAGES) {
          this.#applyPages(vm, frame.payload);
          this.#channel.recycle(frame.payload); // its bytes are in guest memory now
        }
        else if (frame.type === MigrationFrame.DISK && block !== null) this.#applyDisk(block, frame.payload);
        else if (frame.type === MigrationFrame.ROUND) {
          this.figures.rounds++;
          // Acknowledged once every page before it is in: the source pauses the guest only then.
          await this.#channel.send(MigrationFrame.ROUND, frame.payload);
        }
        else if (frame.type === MigrationFrame.REMOTE && this.figures.mode === 'postcopy') {
          const gpns = decodeGpns(frame.payload, vm.memory.pageCount, vm.name);
          if (gpns.length > 0) vm.memory.releasePages(gpns, AbsentState.REMOTE);
          this.figures.postcopy = newPostcopyFigures(gpns.length);
        } else if (frame.type === MigrationFrame.STATE) {
          const arrived = performance.now();
          const decoded = decodeState(frame.payload, vm.memory.pageCount, `migration of ${vm.name}`);
          if (block !== null) {
            adoptReceivedDisk(decoded.state, block.disk, vm.name);
            diskAdopted = true;
          }
          try {
            vm.checkState(decoded.state);
            vm.image = decoded.image;
            vm.restoreCheckedState(decoded.state);
          } catch (error) {
            throw new MigrationError('BV_MIG_STATE', `${vm.name}: the migrated state does not fit this VM: ${(error as Error).message}`, { cause: error });
          }
          if (this.figures.mode === 'postcopy' && this.figures.postcopy === null) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: post-copy state without the list of remote pages`);
          this.#running = true;
          this.#hooks.start(vm, decoded);
          this.figures.resume_ms = round3(performance.now() - arrived);
          break;
        } else throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: unexpected frame type ${frame.type} during pre-copy`);
      }
      if (this.figures.mode === 'postcopy') {
        await this.#channel.send(MigrationFrame.DONE, encodeJson({ instructions: vm.instructionsRetired }));
        this.#flushAsks();
        await this.#receiveRemote(vm);
        return vm;
      }
      // From here the VM is ours: a lost DONE leaves the source paused, never two copies running.
      this.figures.state = 'completed';
      this.figures.total_ms = round3(performance.now() - this.#started);
      this.figures.bytes_received = this.#channel.stats.bytesReceived;
      try {
        await this.#channel.send(MigrationFrame.DONE, encodeJson({ instructions: vm.instructionsRetired }));
        await this.#channel.receive().catch(() => null); // the source's BYE
      } catch {
        // The source learns nothing; it stays paused and says so.
      }
      this.#channel.destroy();
      return vm;
    } catch (error) {
      this.figures.state = 'failed';
      this.figures.error = error instanceof Error ? error.message : String(error);
      this.figures.total_ms = round3(performance.now() - this.#started);
      this.figures.bytes_received = this.#channel.stats.bytesReceived;
      if (this.#keepAlive !== null) clearInterval(this.#keepAlive);
      this.#keepAlive = null;
      if (this.#running && this.figures.postcopy !== null) {
        // Post-copy: the VM runs here and the source keeps the pages it lacks; it waits for them.
        this.figures.error = `${this.figures.error} (post-copy: the VM stays here, ${this.figures.postcopy.remote_left} of its pages are still on the source, which keeps them)`;
      } else if (vm !== null) {
        if (block !== null && !diskAdopted) discardReceivedDisk(block.disk);
        this.#hooks.discard(vm);
      }
      if (!(error instanceof TransportError) && this.#channel.open) await this.#channel.abort((error as { code?: string }).code ?? 'BV_MIG_STATE', this.figures.error);
      else this.#channel.destroy();
      throw error;
    }
  }

  /** Writes a DISK frame's sectors into the received disk (a malformed frame fails the migration). */
  #applyDisk(block: BlockDevice, payload: Uint8Array): void {
    const runs = decodeDiskFrame(payload, block.capacity, `migration of ${this.figures.vm ?? '?'}`);
    writeDiskRuns(block.disk, runs, this.figures.vm ?? '?');
    for (const run of runs) this.figures.disk_sectors! += run.data.length / DISK_SECTOR_BYTES;
  }

  /** Post-copy resumption: this receiver's failed post-copy carries on over `channel`. */
  async #continueOver(channel: FramedChannel): Promise<Vm> {
    const vm = this.#vm!;
    this.#channel = channel;
    this.figures.state = 'receiving';
    this.figures.error = null;
    try {
      const left: number[] = [];
      vm.memory.forEachPage(PageState.REMOTE, (gpn) => void left.push(gpn));
      this.figures.postcopy!.remote_left = left.length;
      await channel.send(MigrationFrame.REMOTE, encodeGpns(left));
      // Ask again for what the guest waits for (the earlier requests may be lost).
      this.#toAsk = [...this.#askedAt.keys()];
      this.#flushAsks();
      await this.#receiveRemote(vm);
      return vm;
    } catch (error) {
      this.figures.state = 'failed';
      this.figures.error = `${error instanceof Error ? error.message : String(error)} (post-copy: the VM stays here, ${this.figures.postcopy!.remote_left} of its pages are still on the source, which keeps them)`;
      if (this.#keepAlive !== null) clearInterval(this.#keepAlive);
      this.#keepAlive = null;
      if (!(error instanceof TransportError) && channel.open) await channel.abort((error as { code?: string }).code ?? 'BV_MIG_STATE', this.figures.error);
      else channel.destroy();
      throw error;
    }
  }

  /**
   * Post-copy, after DONE: installs the pages the source pushes or was asked for, wakes the VM
   * when one arrives while it waits, keeps the connection alive, and ends with COMPLETE once no
   * page is remote.
   */
  async #receiveRemote(vm: Vm): Promise<void> {
    const postcopy = this.figures.postcopy!;
    const switched = performance.now();
    this.#keepAlive = setInterval(() => {
      if (this.#channel.open) void this.#channel.send(MigrationFrame.REQUEST, encodeGpns([])).catch(() => {});
    }, 1000);
    this.#keepAlive.unref?.();
    while (postcopy.remote_left > 0) {
      const frame = await this.#channel.receive();
      if (frame === null) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the source ended the stream with ${postcopy.remote_left} pages still remote`);
      if (frame.type === MigrationFrame.PAGES) {
        this.#applyPages(vm, frame.payload);
        this.#channel.recycle(frame.payload);
      }
      else if (frame.type === MigrationFrame.PUSHED) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: the source says it pushed every page, but ${postcopy.remote_left} are still remote`);
      else throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: unexpected frame type ${frame.type} during post-copy`);
    }
    clearInterval(this.#keepAlive);
    this.#keepAlive = null;
    postcopy.push_ms = round3(performance.now() - switched);
    const sorted = [...this.#latencies].sort((a, b) => a - b);
    postcopy.fault_latency_p50_ms = percentile(sorted, 0.5);
    postcopy.fault_latency_p99_ms = percentile(sorted, 0.99);
    postcopy.fault_latency_max_ms = percentile(sorted, 1);
    this.figures.state = 'completed';
    this.figures.total_ms = round3(performance.now() - this.#started);
    this.figures.bytes_received = this.#channel.stats.bytesReceived;
    try {
      await this.#channel.send(MigrationFrame.COMPLETE, encodeJson(postcopy as unknown as JsonObject));
      // Frames the source sent before it saw COMPLETE (PUSHED, pages in flight), then its BYE.
      for (;;) if ((await this.#channel.receive()) === null) break;
    } catch {
      // Nothing is missing here any more: the source learns it or not.
    }
    this.#channel.destroy();
  }

  /**
   * The REMOTE resolver: asks the source for the page (once) and makes the vCPU wait (the VM
   * pauses before the access; #applyPages wakes it). A host access (a device's DMA) gets the error.
   */
  #remoteFault(vm: Vm, gpn: number): never {
    const postcopy = this.figures.postcopy;
    if (!this.#askedAt.has(gpn)) {
      this.#askedAt.set(gpn, performance.now());
      if (postcopy !== null) postcopy.remote_faults++;
      this.#toAsk.push(gpn);
      if (this.#toAsk.length === 1) queueMicrotask(() => this.#flushAsks());
    }
    this.#waitingSince ??= performance.now();
    throw new PageWaitError(REMOTE_PAGE_WAIT_REASON, `${vm.name}: guest page ${gpn} is still on the migration source (post-copy); it has been asked for`);
  }

  #flushAsks(): void {
    if (this.#toAsk.length === 0 || !this.#running || !this.#channel.open) return;
    const gpns = this.#toAsk;
    this.#toAsk = [];
    void this.#channel.send(MigrationFrame.REQUEST, encodeGpns(gpns)).catch(() => {});
  }

  /**
   * Pre-copy's common case, a frame of BYTES records for pages the VM does not hold yet (round 0):
   * installs them on one contiguous run of fresh frames, mapped in one call and filled with one
   * copy (installPagesInPlace), rather than a frame and a first-touch page fault each. False
   * (nothing done) when the frame is not like that or the pool has no such run.
   */
  #installFresh(vm: Vm, view: DataView, payload: Uint8Array, count: number, dataStart: number): boolean {
    if (count < 2 || dataStart + count * PAGE_SIZE !== payload.length) return false;
    const memory = vm.memory;
    if (this.#freshGpns.length < count) {
      this.#freshGpns = new Int32Array(count);
      this.#freshInstall = new Uint8Array(count).fill(1);
    }
    const gpns = this.#freshGpns;
    for (let i = 0; i < count; i++) {
      const gpn = view.getUint32(4 + i * RECORD_BYTES, true);
      // In increasing order (as round 0 sends them), so no page comes twice.
      if (view.getUint32(8 + i * RECORD_BYTES, true) !== PageKind.BYTES || gpn >= memory.pageCount || (i > 0 && gpn <= gpns[i - 1]!) || memory.stateOf(gpn) !== PageState.UNTOUCHED) return false;
      gpns[i] = gpn;
    }
    const installed = memory.installPagesInPlace(gpns, this.#freshInstall, count, (frames) => frames.set(payload.subarray(dataStart, dataStart + count * PAGE_SIZE)));
    if (installed) this.figures.pages_received += count;
    return installed;
  }

  #applyPages(vm: Vm, payload: Uint8Array): void {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    if (payload.length < 4) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: a PAGES frame is too short`);
    const count = view.getUint32(0, true);
    const dataStart = 4 + count * RECORD_BYTES;
    if (dataStart > payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: a PAGES frame's records run past its end`);
    let data = dataStart;
    const memory = vm.memory;
    if (!this.#running && this.#installFresh(vm, view, payload, count, dataStart)) return;
    for (let i = 0; i < count; i++) {
      const gpn = view.getUint32(4 + i * RECORD_BYTES, true);
      const kind = view.getUint32(8 + i * RECORD_BYTES, true);
      if (gpn >= memory.pageCount) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: page ${gpn} is outside the VM's ${memory.pageCount} pages`);
      if (kind === PageKind.BYTES) {
        if (data + PAGE_SIZE > payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: a PAGES frame holds fewer pages than its records`);
        if (!this.#running) {
          // A page sent again: overwrite its frame rather than take a new one and free the old.
          if (memory.stateOf(gpn) === PageState.PRESENT && memory.isPrivate(gpn)) memory.writePhysical((gpn * PAGE_SIZE) as never, payload.subarray(data, data + PAGE_SIZE));
          else memory.installPage(gpn, payload.subarray(data, data + PAGE_SIZE));
        }
        else if (memory.stateOf(gpn) === PageState.REMOTE) {
          // Post-copy: only a page still remote (the guest may have written one that came earlier).
          memory.installPage(gpn, payload.subarray(data, data + PAGE_SIZE));
          this.figures.postcopy!.remote_left--;
          const asked = this.#askedAt.get(gpn);
          if (asked !== undefined) {
            this.#latencies.push(performance.now() - asked);
            this.#askedAt.delete(gpn);
          }
        }
        data += PAGE_SIZE;
        this.figures.pages_received++;
      } else if (kind === PageKind.ZERO) {
        if (memory.stateOf(gpn) !== PageState.UNTOUCHED) memory.releasePage(gpn);
        this.figures.zero_pages++;
      } else throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: page ${gpn} has an unknown record kind ${kind}`);
    }
    if (data !== payload.length) throw new MigrationError('BV_MIG_PROTOCOL', `${vm.name}: a PAGES frame has ${payload.length - data} bytes after its pages`);
    if (this.#running && this.#waitingSince !== null) {
      // It runs the faulting instruction again: in if its page came, or it waits again (no new request).
      this.figures.postcopy!.wait_ms = round3(this.figures.postcopy!.wait_ms + performance.now() - this.#waitingSince);
      this.#waitingSince = null;
      if (this.#hooks.wake) this.#hooks.wake(vm);
      else if (vm.stopReason.kind === 'paused' && vm.stopReason.reason === REMOTE_PAGE_WAIT_REASON) vm.resume();
    }
  }
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}
