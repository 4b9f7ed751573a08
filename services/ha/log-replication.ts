/**
 * Crash-consistent asynchronous log replication (T-16; docs/pmem.md, "Log replication").
 *
 * A guest application (pmkv, docs/pmem.md "The pmkv format") keeps an append-only log of
 * checksummed, sequence-numbered records in persistent memory. On the source host a tailer reads
 * the log beyond a cursor — from the pmem file itself: the range is mapped SHARED, so a read of
 * the file sees the very page-cache pages the guest stores into, without touching guest memory —
 * checks each record with the application's own rules (magic, lengths, FNV-1a checksum, next
 * sequence number), stops at the first record that does not check out (it may still be being
 * written: it is tried again at the next poll) and ships complete records, in order, to each
 * destination host over the host-to-host transport (protocol `bv-pmem-log`). Nothing of this is
 * on the guest's commit path: the guest's put returns after its own flushes; the tailer runs on a
 * timer between the scheduler's slices.
 *
 * A destination validates every record again, refuses a stream that is corrupt, truncated
 * (a record cut short), out of order or has a gap, writes the records at the same offsets into a
 * persistent-memory file of its own for the VM (same size, same header), fdatasyncs, and only then
 * acknowledges the highest sequence number applied. pmkv started on that file (a VM whose `pmem`
 * names it) rebuilds its data area from the log at start, as after any crash.
 *
 * On a failure notice (the host's power-loss hook: POST /host/power-loss, or SIGTERM with the
 * host's battery budget) the VM is already paused by the host; the shipper reads the log's final
 * records and pushes them to every destination, waiting for their acknowledgements, within the
 * budget.
 */
import { closeSync, fdatasyncSync, ftruncateSync, mkdirSync, openSync, readSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { BvError } from '../../guest-isa/errors.ts';
import type { FileRangeInfo } from '../../kernel/index.ts';
import { connect, FIRST_APP_FRAME_TYPE, splitHostPort, TransportServer } from '../migration/transport.ts';
import type { ChannelOptions, FramedChannel } from '../migration/transport.ts';

/** The transport protocol name of log replication. */
export const LOG_REPLICATION_PROTOCOL = 'bv-pmem-log';
/** Versions of it this build speaks. */
export const LOG_REPLICATION_VERSIONS: readonly number[] = [1];

/** Frame types of `bv-pmem-log`. */
export const LogFrame = {
  /** Source → destination, JSON {vm, bytes, header (base64 of the 24-byte pmkv header)}: which log this stream carries. */
  OPEN: FIRST_APP_FRAME_TYPE,
  /** Destination → source, JSON {applied_seq, checksum}: what it holds already (the checksum of record applied_seq, 0 for none). */
  READY: FIRST_APP_FRAME_TYPE + 1,
  /** Source → destination: u32 first sequence number, u32 offset in the range, then whole records, back to back. */
  RECORDS: FIRST_APP_FRAME_TYPE + 2,
  /** Destination → source: u32 the highest sequence number applied and durable. */
  ACK: FIRST_APP_FRAME_TYPE + 3,
} as const;

/** Stable codes of log-replication errors. */
export type LogReplicationErrorCode =
  | 'BV_LOGREP_CONFIG'
  | 'BV_LOGREP_FORMAT'
  | 'BV_LOGREP_CORRUPT'
  | 'BV_LOGREP_TRUNCATED'
  | 'BV_LOGREP_GAP'
  | 'BV_LOGREP_MISMATCH'
  | 'BV_LOGREP_IO';

/** A refused configuration, stream or file (the code says which). */
export class LogReplicationError extends BvError {
  declare readonly code: LogReplicationErrorCode;
  constructor(code: LogReplicationErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

// ---------------------------------------------------------------------------- the pmkv format

/** Bytes of the pmkv header. */
export const PMKV_HEADER_BYTES = 24;
/** Bytes of a record before its key. */
export const PMKV_RECORD_HEADER_BYTES = 20;
const HEADER_MAGIC = 0x31564b50; // 'PKV1'
const RECORD_MAGIC = 0x31524b50; // 'PKR1'
const MAX_KEY = 64;
const MAX_VALUE = 256;
const DATA_OFFSET = 4096;
/** The largest record: header, 64-byte key, 256-byte value, padded. */
export const PMKV_MAX_RECORD_BYTES = PMKV_RECORD_HEADER_BYTES + MAX_KEY + MAX_VALUE;

/** FNV-1a (32-bit) of bytes[start, end), continued from `hash`. */
export function fnv1a(bytes: Uint8Array, start: number, end: number, hash = 0x811c9dc5): number {
  for (let i = start; i < end; i++) hash = Math.imul(hash ^ bytes[i]!, 0x01000193) >>> 0;
  return hash;
}

/** Where pmkv keeps its log in a range of `bytes` bytes. */
export interface PmkvLayout {
  /** The range's size. */
  bytes: number;
  /** Offset of the first log record. */
  logOffset: number;
}

/** The header pmkv writes when it formats a range of `bytes` bytes (docs/pmem.md). */
export function pmkvHeader(bytes: number): Uint8Array {
  const header = new Uint8Array(PMKV_HEADER_BYTES);
  const view = new DataView(header.buffer);
  const slots = Math.floor(bytes / 2048);
  view.setUint32(0, HEADER_MAGIC, true);
  view.setUint32(4, 1, true);
  view.setUint32(8, DATA_OFFSET, true);
  view.setUint32(12, slots, true);
  view.setUint32(16, DATA_OFFSET + 512 * slots, true);
  view.setUint32(20, fnv1a(header, 0, 20), true);
  return header;
}

/** One pmkv log record (docs/pmem.md) as the guest writes it: header, key, value, zero padding to 4 bytes. */
export function pmkvRecord(seq: number, key: string, value: string): Uint8Array {
  const payload = new TextEncoder().encode(key + value);
  const keyLength = new TextEncoder().encode(key).length;
  const bytes = new Uint8Array((PMKV_RECORD_HEADER_BYTES + payload.length + 3) & ~3);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, RECORD_MAGIC, true);
  view.setUint32(4, seq, true);
  view.setUint32(8, keyLength, true);
  view.setUint32(12, payload.length - keyLength, true);
  bytes.set(payload, PMKV_RECORD_HEADER_BYTES);
  view.setUint32(16, fnv1a(payload, 0, payload.length, fnv1a(bytes, 0, 16)), true);
  return bytes;
}

/** The layout a header describes: null for a blank (all-zero) header; a foreign one is BV_LOGREP_FORMAT. */
export function pmkvLayout(header: Uint8Array, bytes: number, what: string): PmkvLayout | null {
  if (header.every((byte) => byte === 0)) return null;
  const expected = pmkvHeader(bytes);
  if (header.length < PMKV_HEADER_BYTES || expected.some((byte, i) => header[i] !== byte)) {
    throw new LogReplicationError('BV_LOGREP_FORMAT', `${what}: the persistent memory does not hold a pmkv log for ${bytes} bytes (bad header)`);
  }
  return { bytes, logOffset: DATA_OFFSET + 512 * Math.floor(bytes / 2048) };
}

/** checkRecord: no record starts here (the log's end). */
export const RECORD_END = 0;
/** checkRecord: a record starts here but does not check out (torn, stale, or still being written). */
export const RECORD_TORN = -1;
/** checkRecord: the record runs past the bytes given, which stop before the range's end: read more. */
export const RECORD_SHORT = -2;

/**
 * Checks the record at `at` in `bytes` (whose first `available` bytes are valid; `rangeLeft` is
 * how many bytes of the range follow `at`) against pmkv's rules, for sequence number `seq`.
 * Returns its padded length (> 0), RECORD_END, RECORD_TORN or RECORD_SHORT. Allocates nothing.
 */
export function checkRecord(bytes: Uint8Array, view: DataView, at: number, available: number, rangeLeft: number, seq: number): number {
  const have = available - at;
  const short = have < rangeLeft;
  if (have < 4) return short ? RECORD_SHORT : RECORD_END;
  if (view.getUint32(at, true) !== RECORD_MAGIC) return RECORD_END;
  if (have < PMKV_RECORD_HEADER_BYTES) return short ? RECORD_SHORT : RECORD_TORN;
  const keyLength = view.getUint32(at + 8, true);
  const valueLength = view.getUint32(at + 12, true);
  if (keyLength < 1 || keyLength > MAX_KEY || valueLength > MAX_VALUE) return RECORD_TORN;
  const length = (PMKV_RECORD_HEADER_BYTES + keyLength + valueLength + 3) & ~3;
  if (length > rangeLeft) return RECORD_TORN;
  if (length > have) return short ? RECORD_SHORT : RECORD_TORN;
  if (view.getUint32(at + 4, true) !== seq) return RECORD_TORN;
  const payloadEnd = at + PMKV_RECORD_HEADER_BYTES + keyLength + valueLength;
  if (fnv1a(bytes, at + PMKV_RECORD_HEADER_BYTES, payloadEnd, fnv1a(bytes, at, at + 16)) !== view.getUint32(at + 16, true)) return RECORD_TORN;
  return length;
}

/** Largest chunk a scan reads at a time (holds at least one whole record). */
const SCAN_CHUNK = 64 * 1024;
/** A scan's first read: most polls find a few records or none, so they read one page, not 64 KiB. */
const SCAN_FIRST = 4096;

/**
 * Reads a pmkv log from a file descriptor, record by record, with pread: the cursor (offset of
 * the next record and its sequence number) moves over every record that checks out and stops at
 * the first that does not.
 */
class LogCursor {
  /** Offset in the range of each record: offsets[seq - 1]. */
  readonly offsets: number[] = [];
  /** Offset of the next record (the log's end so far). */
  end: number;
  /** A torn record was seen at `end` by the last scan. */
  torn = false;
  readonly #buffer = Buffer.alloc(SCAN_CHUNK);
  readonly #view = new DataView(this.#buffer.buffer, this.#buffer.byteOffset, this.#buffer.byteLength);

  constructor(
    private readonly fd: number,
    /** Offset of the range's first byte in the file. */
    private readonly fileOffset: number,
    private readonly layout: PmkvLayout,
  ) {
    this.end = layout.logOffset;
  }

  /** The last good sequence number (0: none). */
  get seq(): number {
    return this.offsets.length;
  }

  /** Moves over the records that now check out; returns how many. */
  scan(): number {
    const before = this.offsets.length;
    this.torn = false;
    for (let chunk = SCAN_FIRST; ; chunk = SCAN_CHUNK) {
      const rangeLeft = this.layout.bytes - this.end;
      if (rangeLeft < 4) return this.offsets.length - before;
      const want = Math.min(chunk, rangeLeft);
      const got = readSync(this.fd, this.#buffer, 0, want, this.fileOffset + this.end);
      let at = 0;
      for (;;) {
        const length = checkRecord(this.#buffer, this.#view, at, got, rangeLeft - at, this.offsets.length + 1);
        if (length === RECORD_SHORT) break; // read on from this record
        if (length <= 0) {
          this.torn = length === RECORD_TORN;
          this.end += at;
          return this.offsets.length - before;
        }
        this.offsets.push(this.end + at);
        at += length;
      }
      if (at === 0) throw new LogReplicationError('BV_LOGREP_IO', `short read of the log at offset ${this.end}`);
      this.end += at;
    }
  }

  /** Bytes of records [first, last] (sequence numbers), read into `into` (grown as needed). */
  read(first: number, last: number): Buffer {
    const from = this.offsets[first - 1]!;
    const to = last < this.offsets.length ? this.offsets[last]! : this.end;
    const out = Buffer.allocUnsafe(to - from);
    if (readSync(this.fd, out, 0, out.length, this.fileOffset + from) !== out.length) throw new LogReplicationError('BV_LOGREP_IO', `short read of records ${first}..${last}`);
    return out;
  }
}

// ------------------------------------------------------------------------------- the source

/** A VM's log replication settings (`log_replication` in its configuration). */
export interface LogReplicationSettings {
  /** Destination hosts' log-replica listeners, "host:port" (1 to 4). */
  destinations: string[];
  /** How often the tailer reads the log for new records, in ms. */
  intervalMs: number;
}

/** The transport settings a shipper or receiver uses (the host's migration TLS settings). */
export type LogChannelOptions = Omit<ChannelOptions, 'protocol' | 'versions'>;

/** One destination as the source sees it. */
export interface DestinationStatus {
  /** Its address. */
  address: string;
  /** connected: streaming; connecting; down: waiting to reconnect (last_error says why). */
  state: 'connecting' | 'connected' | 'down';
  /** Highest sequence number sent to it. */
  sent_seq: number;
  /** Highest sequence number it acknowledged as applied and durable. */
  acked_seq: number;
  /** Records the log has that it has not acknowledged. */
  lag_records: number;
  /** Milliseconds since the oldest record it has not acknowledged was first seen by the tailer (0: none). */
  lag_ms: number;
  /** Records it acknowledged since the shipper started. */
  acked_records: number;
  /** Their mean time from the tailer seeing a record to its acknowledgement, in ms. */
  ack_ms_mean: number;
  /** The largest such time, in ms. */
  ack_ms_max: number;
  /** Why it last failed, or null. */
  last_error: string | null;
}

/** GET /vms/{name}/log-replication. */
export interface LogReplicationStatus {
  /** The VM. */
  name: string;
  /** The tailer's interval. */
  interval_ms: number;
  /** Whether the application has formatted its log yet. */
  formatted: boolean;
  /** Highest sequence number in the local log that checks out. */
  tail_seq: number;
  /** Polls of the log so far. */
  polls: number;
  /** The wall time they took in all, in ms. */
  poll_ms: number;
  /** Each destination. */
  destinations: DestinationStatus[];
}

/** What a failure-notice flush achieved. */
export interface LogFlushReport {
  /** The VM. */
  name: string;
  /** The last sequence number in the local log at the notice. */
  tail_seq: number;
  /** Records no destination had acknowledged at the notice: what the flush had to push. */
  backlog: number;
  /** Whether every record reached at least one destination (acknowledged) within the budget. */
  complete: boolean;
  /** Milliseconds from the notice to the last acknowledgement (or to the deadline). */
  ms: number;
  /** Each destination after the flush. */
  destinations: {
    /** Its address. */
    address: string;
    /** The highest sequence number it acknowledged. */
    acked_seq: number;
    /** Why it last failed, or null. */
    error: string | null;
  }[];
}

class Link {
  channel: FramedChannel | null = null;
  state: DestinationStatus['state'] = 'down';
  sentSeq = 0;
  ackedSeq = 0;
  lastError: string | null = null;
  retryAt = 0;
  /** Connection attempts that failed in a row (the retry backs off). */
  failures = 0;
  sending = false;
  ackedRecords = 0;
  ackMsSum = 0;
  ackMsMax = 0;
  ackWaiters: (() => void)[] = [];
  constructor(readonly address: string, readonly host: string, readonly port: number) {}
}

/** Parses "host:port" (BV_LOGREP_CONFIG when it is not). */
export function parseHostPort(address: string, what: string): { host: string; port: number } {
  const parsed = splitHostPort(address);
  if (parsed === null || parsed.port < 1) throw new LogReplicationError('BV_LOGREP_CONFIG', `${what}: a destination must be host:port, got '${address}'`);
  return parsed;
}

/** Largest RECORDS payload a shipper sends. */
const MAX_BATCH_BYTES = 256 * 1024;
/** A destination that failed is tried again after this long, doubled after each failure in a row up to RETRY_MAX_MS. */
const RETRY_MS = 200;
const RETRY_MAX_MS = 5000;

/**
 * The source side for one VM: tails its pmkv log and ships new records to each destination.
 * start() begins polling; flush() is the failure-notice push; stop() ends it.
 */
export class LogShipper {
  readonly #fd: number;
  readonly #range: FileRangeInfo;
  #cursor: LogCursor | null = null;
  #header: Uint8Array | null = null;
  readonly #links: Link[];
  #timer: ReturnType<typeof setInterval> | null = null;
  #stopped = false;
  #polls = 0;
  #pollMs = 0;
  /** When each record was first seen (performance.now()), for the lag: firstSeen[seq - 1]. */
  readonly #firstSeen: number[] = [];

  constructor(
    /** The VM's name (sent in OPEN; the destination's file is named after it). */
    readonly name: string,
    range: FileRangeInfo,
    readonly settings: LogReplicationSettings,
    private readonly channelOptions: LogChannelOptions,
    private readonly log: (line: string) => void = () => {},
  ) {
    if (settings.destinations.length === 0) throw new LogReplicationError('BV_LOGREP_CONFIG', `${name}: log replication needs at least one destination`);
    this.#links = settings.destinations.map((address) => {
      const { host, port } = parseHostPort(address, name);
      return new Link(address, host, port);
    });
    this.#range = range;
    try {
      this.#fd = openSync(range.path, 'r');
    } catch (error) {
      throw new LogReplicationError('BV_LOGREP_IO', `${name}: cannot read the persistent-memory file ${range.path}: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Starts polling every settings.intervalMs (the timer does not keep the process alive). */
  start(): void {
    if (this.#timer !== null || this.#stopped) return;
    this.#timer = setInterval(() => this.tick(), this.settings.intervalMs);
    this.#timer.unref();
    this.tick();
  }

  /** Highest sequence number in the local log that checks out. */
  get tailSeq(): number {
    return this.#cursor?.seq ?? 0;
  }

  /** Reads new records and sends them to the destinations that are connected (connects the others when due). */
  tick(): void {
    if (this.#stopped) return;
    this.poll();
    if (this.#cursor === null) return;
    const now = performance.now();
    for (const link of this.#links) {
      if (link.state === 'down' && now >= link.retryAt) void this.#connect(link);
      else if (link.state === 'connected') void this.#pump(link);
    }
  }

  /** Reads the log beyond the cursor; returns the number of new records. */
  poll(): number {
    const started = performance.now();
    this.#polls++;
    try {
      if (this.#cursor === null) {
        const header = Buffer.alloc(PMKV_HEADER_BYTES);
        readSync(this.#fd, header, 0, PMKV_HEADER_BYTES, this.#range.fileOffset);
        const layout = pmkvLayout(header, this.#range.bytes, this.name);
        if (layout === null) return 0; // not formatted yet
        this.#header = header;
        this.#cursor = new LogCursor(this.#fd, this.#range.fileOffset, layout);
      }
      const fresh = this.#cursor.scan();
      for (let i = 0; i < fresh; i++) this.#firstSeen.push(started);
      return fresh;
    } finally {
      this.#pollMs += performance.now() - started;
    }
  }

  async #connect(link: Link): Promise<void> {
    link.state = 'connecting';
    let channel: FramedChannel | null = null;
    try {
      channel = await connect({ ...this.channelOptions, protocol: LOG_REPLICATION_PROTOCOL, versions: LOG_REPLICATION_VERSIONS, host: link.host, port: link.port, connectTimeoutMs: 2000 });
      await channel.send(LogFrame.OPEN, Buffer.from(JSON.stringify({ vm: this.name, bytes: this.#range.bytes, header: Buffer.from(this.#header!).toString('base64') })));
      const ready = JSON.parse(Buffer.from(await channel.expect(LogFrame.READY, 'READY')).toString('utf8')) as { applied_seq?: unknown; checksum?: unknown };
      const applied = Number(ready.applied_seq);
      if (!Number.isInteger(applied) || applied < 0) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${link.address} answered a bad READY`);
      this.poll();
      if (applied > this.tailSeq) throw new LogReplicationError('BV_LOGREP_MISMATCH', `${link.address} holds ${applied} records of '${this.name}', this host's log only ${this.tailSeq}: it is another log`);
      if (applied > 0 && this.#recordChecksum(applied) !== Number(ready.checksum)) {
        throw new LogReplicationError('BV_LOGREP_MISMATCH', `${link.address}: its record ${applied} of '${this.name}' differs from this host's: it is another log`);
      }
      if (this.#stopped) throw new LogReplicationError('BV_LOGREP_CONFIG', 'stopped');
      link.channel = channel;
      link.sentSeq = applied;
      link.ackedSeq = applied;
      link.state = 'connected';
      link.lastError = null;
      link.failures = 0;
      this.log(`vm ${this.name}: log replication to ${link.address} connected (it holds ${applied} records)`);
      void this.#receiveAcks(link, channel);
      void this.#pump(link);
    } catch (error) {
      channel?.destroy();
      this.#down(link, error);
    }
  }

  #recordChecksum(seq: number): number {
    const bytes = this.#cursor!.read(seq, seq);
    return bytes.readUInt32LE(16);
  }

  #down(link: Link, error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    if (link.state === 'connected') this.log(`vm ${this.name}: log replication to ${link.address} lost: ${message}`);
    link.channel?.destroy();
    link.channel = null;
    link.state = 'down';
    link.lastError = message;
    link.retryAt = performance.now() + Math.min(RETRY_MAX_MS, RETRY_MS * 2 ** Math.min(link.failures, 5));
    link.failures++;
    for (const waiter of link.ackWaiters.splice(0)) waiter();
  }

  async #receiveAcks(link: Link, channel: FramedChannel): Promise<void> {
    try {
      for (;;) {
        const frame = await channel.receive();
        if (frame === null) throw new LogReplicationError('BV_LOGREP_TRUNCATED', `${link.address} ended the stream`);
        if (frame.type !== LogFrame.ACK || frame.payload.length !== 4) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${link.address} sent frame type ${frame.type} where an ACK was expected`);
        const seq = Buffer.from(frame.payload.buffer, frame.payload.byteOffset, 4).readUInt32LE(0);
        if (seq < link.ackedSeq || seq > link.sentSeq) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${link.address} acknowledged record ${seq}, outside ${link.ackedSeq}..${link.sentSeq}`);
        const now = performance.now();
        for (let acked = link.ackedSeq + 1; acked <= seq; acked++) {
          const ms = now - this.#firstSeen[acked - 1]!;
          link.ackMsSum += ms;
          if (ms > link.ackMsMax) link.ackMsMax = ms;
        }
        link.ackedRecords += seq - link.ackedSeq;
        link.ackedSeq = seq;
        for (const waiter of link.ackWaiters.splice(0)) waiter();
      }
    } catch (error) {
      if (link.channel === channel) this.#down(link, error);
    }
  }

  /** Sends what the link lacks, one batch after another, until it has the tail. */
  async #pump(link: Link): Promise<void> {
    if (link.sending) return;
    link.sending = true;
    const channel = link.channel!;
    try {
      while (link.channel === channel && link.sentSeq < this.tailSeq) {
        const cursor = this.#cursor!;
        const first = link.sentSeq + 1;
        let last = first;
        const start = cursor.offsets[first - 1]!;
        while (last < cursor.seq && (cursor.offsets[last]! + PMKV_MAX_RECORD_BYTES) - start <= MAX_BATCH_BYTES) last++;
        const records = cursor.read(first, last);
        const payload = Buffer.allocUnsafe(8 + records.length);
        payload.writeUInt32LE(first, 0);
        payload.writeUInt32LE(start, 4);
        records.copy(payload, 8);
        link.sentSeq = last;
        await channel.send(LogFrame.RECORDS, payload);
      }
    } catch (error) {
      if (link.channel === channel) this.#down(link, error);
    } finally {
      link.sending = false;
    }
  }

  /**
   * The failure-notice flush: reads the log's last records and pushes them to every destination
   * (connecting those that are down), until each has acknowledged the tail or `deadline`
   * (performance.now() time) passes. Polling stops: the VM is paused and nothing more comes.
   */
  async flush(deadline: number): Promise<LogFlushReport> {
    const started = performance.now();
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    this.poll();
    const tail = this.tailSeq;
    const backlog = tail - this.#links.reduce((most, link) => Math.max(most, link.ackedSeq), 0);
    const reach = async (link: Link): Promise<void> => {
      while (performance.now() < deadline && link.ackedSeq < tail) {
        if (link.state === 'down') {
          // At a failure notice a destination that is down is tried at once, then as often as the back-off allows.
          if (link.failures > 1 && performance.now() < link.retryAt) await sleep(Math.min(link.retryAt, deadline) - performance.now());
          else await this.#connect(link);
          continue;
        }
        if (link.state === 'connecting') {
          await sleep(2);
          continue;
        }
        void this.#pump(link);
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((resolve) => {
          link.ackWaiters.push(resolve);
          timer = setTimeout(resolve, Math.max(0, deadline - performance.now()));
          timer.unref();
        });
        clearTimeout(timer);
      }
    };
    // A connect may outlast the budget: the race keeps the flush inside it.
    if (this.#cursor !== null && tail > 0) await Promise.race([Promise.all(this.#links.map(reach)), sleep(deadline - performance.now())]);
    const acked = this.#links.map((link) => link.ackedSeq);
    // A host that outlives its battery (the power came back) keeps shipping: a destination that was down gets the log when it returns.
    if (!this.#stopped && this.#timer === null) {
      this.#timer = setInterval(() => this.tick(), this.settings.intervalMs);
      this.#timer.unref();
    }
    return {
      name: this.name,
      tail_seq: tail,
      backlog,
      complete: acked.some((seq) => seq >= tail),
      ms: Math.round((performance.now() - started) * 100) / 100,
      destinations: this.#links.map((link) => ({ address: link.address, acked_seq: link.ackedSeq, error: link.lastError })),
    };
  }

  /** GET /vms/{name}/log-replication. */
  status(): LogReplicationStatus {
    const now = performance.now();
    const tail = this.tailSeq;
    return {
      name: this.name,
      interval_ms: this.settings.intervalMs,
      formatted: this.#cursor !== null,
      tail_seq: tail,
      polls: this.#polls,
      poll_ms: Math.round(this.#pollMs * 100) / 100,
      destinations: this.#links.map((link) => ({
        address: link.address,
        state: link.state,
        sent_seq: link.sentSeq,
        acked_seq: link.ackedSeq,
        lag_records: tail - link.ackedSeq,
        lag_ms: link.ackedSeq < tail ? Math.round((now - this.#firstSeen[link.ackedSeq]!) * 100) / 100 : 0,
        acked_records: link.ackedRecords,
        ack_ms_mean: link.ackedRecords === 0 ? 0 : Math.round((link.ackMsSum / link.ackedRecords) * 100) / 100,
        ack_ms_max: Math.round(link.ackMsMax * 100) / 100,
        last_error: link.lastError,
      })),
    };
  }

  /** Stops polling and closes the connections (what was acknowledged stays at the destinations). */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    for (const link of this.#links) {
      const channel = link.channel;
      link.channel = null;
      link.state = 'down';
      if (channel !== null) void channel.close().catch(() => channel.destroy());
    }
    closeSync(this.#fd);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)).unref());
}

// -------------------------------------------------------------------------- the destination

/** A VM name as the host accepts it (it names a file). */
const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * A destination's persistent-memory file for one VM: the pmkv header and the log, applied record
 * by record in sequence order, each batch durable (fdatasync) before it is acknowledged.
 */
export class LogReplicaFile {
  readonly #fd: number;
  readonly #cursor: LogCursor;
  readonly #end = Buffer.alloc(4);

  private constructor(readonly path: string, readonly bytes: number, fd: number, layout: PmkvLayout) {
    this.#fd = fd;
    this.#cursor = new LogCursor(fd, 0, layout);
    this.#cursor.scan(); // a torn final record (a crash while applying) ends the log: the next batch overwrites it
  }

  /**
   * Opens (or creates, zero-filled) the file for a log of `bytes` bytes with `header`; an existing
   * file must have that size and that header (or a blank one), else BV_LOGREP_MISMATCH.
   */
  static open(path: string, bytes: number, header: Uint8Array, what: string): LogReplicaFile {
    const layout = pmkvLayout(header, bytes, what);
    if (layout === null) throw new LogReplicationError('BV_LOGREP_FORMAT', `${what}: the source's log is not formatted`);
    let fd: number;
    try {
      fd = openSync(path, 'a+');
      closeSync(fd);
      fd = openSync(path, 'r+');
    } catch (error) {
      throw new LogReplicationError('BV_LOGREP_IO', `${what}: cannot open ${path}: ${(error as Error).message}`, { cause: error });
    }
    try {
      const size = statSync(path).size;
      if (size === 0) ftruncateSync(fd, bytes);
      else if (size !== bytes) throw new LogReplicationError('BV_LOGREP_MISMATCH', `${what}: ${path} has ${size} bytes, the source's persistent memory ${bytes}`);
      const own = Buffer.alloc(PMKV_HEADER_BYTES);
      readSync(fd, own, 0, PMKV_HEADER_BYTES, 0);
      if (own.every((byte) => byte === 0)) {
        writeSync(fd, header, 0, PMKV_HEADER_BYTES, 0);
        fdatasyncSync(fd);
      } else if (!own.equals(Buffer.from(header.buffer, header.byteOffset, PMKV_HEADER_BYTES))) {
        throw new LogReplicationError('BV_LOGREP_MISMATCH', `${what}: ${path} holds another persistent memory (its header differs)`);
      }
      return new LogReplicaFile(path, bytes, fd, layout);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
  }

  /** Highest sequence number applied. */
  get appliedSeq(): number {
    return this.#cursor.seq;
  }

  /** The checksum of record `seq` (0 for none). */
  checksum(seq: number): number {
    return seq === 0 ? 0 : this.#cursor.read(seq, seq).readUInt32LE(16);
  }

  /**
   * Applies a RECORDS payload: every record must check out and follow the last one applied, with
   * no gap, at the offset where the log ends, and the payload must end exactly after a record —
   * else nothing of it is written (BV_LOGREP_GAP, _CORRUPT or _TRUNCATED). The records and the
   * end mark after them are written and fdatasync'd before this returns.
   */
  apply(payload: Uint8Array, what: string): number {
    if (payload.length < 8) throw new LogReplicationError('BV_LOGREP_TRUNCATED', `${what}: a RECORDS frame of ${payload.length} bytes`);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const first = view.getUint32(0, true);
    const offset = view.getUint32(4, true);
    const expected = this.#cursor.seq + 1;
    if (first !== expected) throw new LogReplicationError('BV_LOGREP_GAP', `${what}: records from ${first} sent, record ${expected} is next: a gap or a repeat is refused`);
    if (offset !== this.#cursor.end) throw new LogReplicationError('BV_LOGREP_GAP', `${what}: records sent for offset ${offset}, the log ends at ${this.#cursor.end}`);
    const records = payload.subarray(8);
    const recordsView = new DataView(records.buffer, records.byteOffset, records.byteLength);
    const offsets: number[] = [];
    let at = 0;
    while (at < records.length) {
      const length = checkRecord(records, recordsView, at, records.length, this.bytes - offset - at, first + offsets.length);
      if (length === RECORD_END) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${what}: bytes at ${offset + at} are not a record`);
      if (length === RECORD_SHORT) throw new LogReplicationError('BV_LOGREP_TRUNCATED', `${what}: record ${first + offsets.length} is cut short (${records.length - at} bytes sent)`);
      if (length === RECORD_TORN) {
        const seq = recordsView.getUint32(at + 4, true);
        if (at + PMKV_RECORD_HEADER_BYTES <= records.length && seq !== first + offsets.length && fnvOk(records, recordsView, at)) {
          throw new LogReplicationError('BV_LOGREP_GAP', `${what}: record ${seq} sent where ${first + offsets.length} is next`);
        }
        throw new LogReplicationError(
          at + PMKV_RECORD_HEADER_BYTES > records.length || at + recordLength(recordsView, at) > records.length ? 'BV_LOGREP_TRUNCATED' : 'BV_LOGREP_CORRUPT',
          `${what}: record ${first + offsets.length} does not check out (torn, truncated or corrupt): nothing of this batch is applied`,
        );
      }
      offsets.push(offset + at);
      at += length;
    }
    if (offsets.length === 0) throw new LogReplicationError('BV_LOGREP_TRUNCATED', `${what}: a RECORDS frame with no record`);
    try {
      writeSync(this.#fd, records, 0, records.length, offset);
      if (offset + records.length + 4 <= this.bytes) writeSync(this.#fd, this.#end, 0, 4, offset + records.length); // the end mark, as pmkv writes it
      fdatasyncSync(this.#fd);
    } catch (error) {
      throw new LogReplicationError('BV_LOGREP_IO', `${what}: writing ${this.path}: ${(error as Error).message}`, { cause: error });
    }
    this.#cursor.offsets.push(...offsets);
    this.#cursor.end = offset + records.length;
    return this.#cursor.seq;
  }

  /** Closes the file. */
  close(): void {
    closeSync(this.#fd);
  }
}

/** A record's padded length from its header (for telling truncated from corrupt). */
function recordLength(view: DataView, at: number): number {
  return (PMKV_RECORD_HEADER_BYTES + view.getUint32(at + 8, true) + view.getUint32(at + 12, true) + 3) & ~3;
}

/** Whether the record at `at` has a good checksum (whatever its sequence number). */
function fnvOk(bytes: Uint8Array, view: DataView, at: number): boolean {
  const keyLength = view.getUint32(at + 8, true);
  const valueLength = view.getUint32(at + 12, true);
  if (keyLength < 1 || keyLength > MAX_KEY || valueLength > MAX_VALUE) return false;
  const end = at + PMKV_RECORD_HEADER_BYTES + keyLength + valueLength;
  if (end > bytes.length) return false;
  return fnv1a(bytes, at + PMKV_RECORD_HEADER_BYTES, end, fnv1a(bytes, at, at + 16)) === view.getUint32(at + 16, true);
}

/** One VM's log held by a destination (GET /log-replicas). */
export interface LogReplicaInfo {
  /** The VM. */
  name: string;
  /** The persistent-memory file rebuilt from its log (a VM whose pmem names it restarts the application). */
  path: string;
  /** Its size. */
  bytes: number;
  /** Highest sequence number applied (durable). */
  applied_seq: number;
  /** The source host (its HELLO name, else its address). */
  from: string;
  /** Whether a source is streaming to it now. */
  connected: boolean;
  /** Batches refused. */
  refused_batches: number;
  /** Why the last stream ended badly (null: none). */
  last_error: string | null;
}

/** GET /log-replicas. */
export interface LogReplicasInfo {
  /** host:port the receiver listens on. */
  listening: string;
  /** Where the files are. */
  dir: string;
  /** The logs, in the order they first arrived. */
  replicas: LogReplicaInfo[];
  /** Connections refused by the transport (bad certificate, protocol, version), the last 32. */
  refused: {
    /** The peer's address. */
    remote: string;
    /** The error code. */
    code: string;
    /** Why. */
    message: string;
  }[];
}

interface ReplicaEntry {
  info: LogReplicaInfo;
  file: LogReplicaFile | null;
  channel: FramedChannel | null;
  released: boolean;
}

/**
 * A destination host's receiver: listens with protocol `bv-pmem-log` and keeps one file per VM,
 * `<dir>/<vm>.pmem`, applying each source's records (LogReplicaFile.apply) and acknowledging them.
 * A stream that is refused is ended with an ERROR frame naming the code; what was applied before
 * stays, and the source resumes from it when it reconnects.
 */
export class LogReplicaReceiver {
  readonly #replicas = new Map<string, ReplicaEntry>();
  #closed = false;

  private constructor(
    private readonly server: TransportServer,
    /** The directory the files go to. */
    readonly dir: string,
    private readonly log: (line: string) => void,
  ) {}

  /** Listens on host:port; the files go to `dir` (created if missing). */
  static async listen(options: LogChannelOptions & { host: string; port: number; dir: string; log?: (line: string) => void }): Promise<LogReplicaReceiver> {
    try {
      mkdirSync(options.dir, { recursive: true });
    } catch (error) {
      throw new LogReplicationError('BV_LOGREP_CONFIG', `log replicas: cannot make the directory ${options.dir}: ${(error as Error).message}`, { cause: error });
    }
    const { dir, log, ...channel } = options;
    const server = await TransportServer.listen({ ...channel, protocol: LOG_REPLICATION_PROTOCOL, versions: LOG_REPLICATION_VERSIONS });
    const receiver = new LogReplicaReceiver(server, dir, log ?? (() => {}));
    server.onRefused = ({ remote, error }) => receiver.log(`host: refused a log-replication stream from ${remote}: ${error.message}`);
    void receiver.#acceptLoop();
    return receiver;
  }

  /** The address listened on. */
  get address(): string {
    return `${this.server.host}:${this.server.port}`;
  }

  /** The bound port. */
  get port(): number {
    return this.server.port;
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let channel: FramedChannel;
      try {
        channel = await this.server.accept();
      } catch {
        return; // closed
      }
      void this.#serve(channel);
    }
  }

  async #serve(channel: FramedChannel): Promise<void> {
    const from = channel.peer?.name ?? channel.remote;
    let entry: ReplicaEntry | null = null;
    let what = `log replication from ${from}`;
    try {
      const open = JSON.parse(Buffer.from(await channel.expect(LogFrame.OPEN, 'OPEN')).toString('utf8')) as { vm?: unknown; bytes?: unknown; header?: unknown };
      if (typeof open.vm !== 'string' || !VM_NAME.test(open.vm)) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${what}: OPEN names no valid VM`);
      const bytes = Number(open.bytes);
      if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % 4096 !== 0) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${what}: OPEN gives a bad size ${String(open.bytes)}`);
      const header = typeof open.header === 'string' ? Buffer.from(open.header, 'base64') : Buffer.alloc(0);
      what = `log replication of '${open.vm}' from ${from}`;
      entry = this.#replicas.get(open.vm) ?? null;
      if (entry?.released === true) throw new LogReplicationError('BV_LOGREP_CONFIG', `${what}: this host released its replica (it was activated)`);
      if (entry !== null && entry.channel !== null) {
        entry.channel.destroy(); // the source reconnected: the old stream is dead
        entry.channel = null;
      }
      if (entry === null) {
        entry = { info: { name: open.vm, path: join(this.dir, `${open.vm}.pmem`), bytes, applied_seq: 0, from, connected: false, refused_batches: 0, last_error: null }, file: null, channel: null, released: false };
        this.#replicas.set(open.vm, entry);
      }
      if (entry.file !== null && entry.file.bytes !== bytes) {
        throw new LogReplicationError('BV_LOGREP_MISMATCH', `${what}: its persistent memory has ${bytes} bytes, the replica ${entry.file.bytes}`);
      }
      entry.file ??= LogReplicaFile.open(entry.info.path, bytes, header, what);
      entry.info.bytes = bytes;
      entry.info.from = from;
      entry.info.applied_seq = entry.file.appliedSeq;
      entry.channel = channel;
      entry.info.connected = true;
      const file = entry.file;
      await channel.send(LogFrame.READY, Buffer.from(JSON.stringify({ applied_seq: file.appliedSeq, checksum: file.checksum(file.appliedSeq) })));
      const ack = Buffer.alloc(4);
      for (;;) {
        const frame = await channel.receive();
        if (frame === null) break;
        if (frame.type !== LogFrame.RECORDS) throw new LogReplicationError('BV_LOGREP_CORRUPT', `${what}: frame type ${frame.type} where RECORDS were expected`);
        if (entry.channel !== channel) return; // replaced by a newer stream
        entry.info.applied_seq = file.apply(frame.payload, what);
        ack.writeUInt32LE(entry.info.applied_seq, 0);
        await channel.send(LogFrame.ACK, ack);
      }
      void channel.close().catch(() => channel.destroy());
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const code = (error as { code?: string }).code ?? 'BV_LOGREP_CORRUPT';
      if (entry !== null && entry.channel === channel) {
        entry.info.last_error = message;
        if (error instanceof LogReplicationError) entry.info.refused_batches++;
      }
      this.log(`host: ${what}: ${message}`);
      if (error instanceof LogReplicationError) await channel.abort(code, message).catch(() => {});
      else channel.destroy();
    } finally {
      if (entry !== null && entry.channel === channel) {
        entry.channel = null;
        entry.info.connected = false;
      }
    }
  }

  /** GET /log-replicas. */
  info(): LogReplicasInfo {
    return {
      listening: this.address,
      dir: this.dir,
      replicas: [...this.#replicas.values()].map((entry) => ({ ...entry.info })),
      refused: this.server.refused.map(({ remote, error }) => ({ remote, code: error.code, message: error.message })),
    };
  }

  /**
   * DELETE /log-replicas/{name}: stops receiving the VM's log and closes its file, so that a VM
   * may map it (the application restarts from it); later streams for the VM are refused.
   * Returns what the replica held. Unknown VM: null.
   */
  release(name: string): LogReplicaInfo | null {
    const entry = this.#replicas.get(name);
    if (entry === undefined) return null;
    entry.channel?.destroy();
    entry.channel = null;
    entry.info.connected = false;
    entry.file?.close();
    entry.file = null;
    entry.released = true;
    return { ...entry.info };
  }

  /** Stops listening and closes every stream and file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.server.close();
    for (const entry of this.#replicas.values()) {
      entry.channel?.destroy();
      entry.channel = null;
      entry.file?.close();
      entry.file = null;
    }
  }
}

/** Reads a pmkv log from a file (a replica or the source's own), for tests and tools: the records that check out, in order. */
export function readPmkvLog(path: string, bytes?: number): { seq: number; key: string; value: string }[] {
  const size = bytes ?? statSync(path).size;
  const fd = openSync(path, 'r');
  try {
    const header = Buffer.alloc(PMKV_HEADER_BYTES);
    readSync(fd, header, 0, PMKV_HEADER_BYTES, 0);
    const layout = pmkvLayout(header, size, path);
    if (layout === null) return [];
    const cursor = new LogCursor(fd, 0, layout);
    cursor.scan();
    if (cursor.seq === 0) return [];
    const all = cursor.read(1, cursor.seq);
    const base = layout.logOffset;
    return cursor.offsets.map((offset, i) => {
      const at = offset - base;
      const keyLength = all.readUInt32LE(at + 8);
      const valueLength = all.readUInt32LE(at + 12);
      return { seq: i + 1, key: all.toString('latin1', at + 20, at + 20 + keyLength), value: all.toString('latin1', at + 20 + keyLength, at + 20 + keyLength + valueLength) };
    });
  } finally {
    closeSync(fd);
  }
}
