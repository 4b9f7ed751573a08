/**
 * The host-to-host transport: a versioned, framed, checksummed channel between two bytevisor
 * hosts over TCP, with TLS and mutual certificate authentication (plain TCP only when asked for
 * with `insecure`). It knows nothing about migration: live migration, replication and later
 * services each name their own application protocol and frame types (≥ FIRST_APP_FRAME_TYPE).
 *
 * A frame on the wire (all integers little-endian):
 *
 *   0  u32 magic 'BVXF'           12 u32 CRC-32C of bytes 0..11
 *   4  u16 transport version      16 payload (length bytes)
 *   6  u16 frame type             .. u32 CRC-32C of the payload, seeded with the header's CRC
 *   8  u32 payload length
 *
 * The receiver checks the magic and the version before anything else (a later version may change
 * the rest of the header), then the header's CRC, then the length against its limit, so a damaged
 * or oversize header is refused before a payload is awaited. Both ends first exchange HELLO frames
 * naming the application protocol and the versions each speaks; the highest common one is used.
 *
 * Nothing here is global or tied to a thread: a channel wraps one socket, so a service on a worker
 * thread can open its own. See docs/migration.md, "Transport".
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, createServer as netCreateServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, createServer as tlsCreateServer } from 'node:tls';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { crc32c } from '../../native/index.ts';
import { TransportError } from './errors.ts';
import type { TransportErrorCode } from './errors.ts';

/** 'BVXF', little-endian. */
export const FRAME_MAGIC = 0x46585642;
/** The frame format this build speaks. */
export const TRANSPORT_VERSION = 1;
/** Bytes before a frame's payload. */
export const FRAME_HEADER_BYTES = 16;
/** Bytes after it (the payload checksum). */
export const FRAME_TRAILER_BYTES = 4;
/** Default largest payload accepted or sent: 16 MiB. */
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** A peer's or a listener's address, split. */
export interface HostPort {
  /** Host name or address (an IPv6 address without its brackets). */
  host: string;
  /** TCP port (0: any free one, for a listener). */
  port: number;
}

/**
 * Splits "host:port" (an IPv6 host may be bracketed: "[::1]:7300") into its parts; null when it
 * is not that shape or the port is above 65535. Port 0 passes (a listener: any free port).
 */
export function splitHostPort(address: string): HostPort | null {
  const match = /^(.+):(\d{1,5})$/.exec(address);
  if (match === null || Number(match[2]) > 65535) return null;
  return { host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(match[2]) };
}

/** Default time a peer may stay silent while we wait for it: 10 s. */
export const DEFAULT_STALL_TIMEOUT_MS = 10_000;

/** Frame types the transport itself uses; application types start at FIRST_APP_FRAME_TYPE. */
export const TransportFrame = {
  /** JSON: the sender's protocol and versions (the first frame each way). */
  HELLO: 1,
  /** JSON {code, message}: the sender gives up, and why. */
  ERROR: 2,
  /** Empty: the sender is done; the stream ends here in good order. */
  BYE: 3,
} as const;
/** The first frame type an application protocol may use. */
export const FIRST_APP_FRAME_TYPE = 16;

/** Certificate files for mutual TLS (PEM). */
export interface TlsFiles {
  /** The CA that signs the peers this host trusts. */
  ca: string;
  /** This host's certificate, signed by a CA the peer trusts. */
  cert: string;
  /** This host's private key. */
  key: string;
}

/**
 * Test hooks that damage what this end sends (counted in bytes of frames written, before TLS):
 * the peer must refuse the result, and both ends must stay consistent.
 */
export interface ChannelFaults {
  /** Write this many bytes, then drop the connection abruptly. */
  cutAfterBytes?: number;
  /** Flip every bit of the byte at this offset. */
  corruptByteAt?: number;
  /** Write this many bytes, then silently write nothing more (the connection stays open). */
  stallAfterBytes?: number;
}

/** Options shared by connect() and listen(). */
export interface ChannelOptions {
  /** The application protocol spoken over the channel, e.g. 'bv-migration'. */
  protocol: string;
  /** Versions of that protocol this end speaks (the highest common one is chosen). */
  versions: readonly number[];
  /** Mutual TLS with these files; required unless `insecure`. */
  tls?: TlsFiles;
  /** Plain TCP, no authentication: only when set explicitly (tests, trusted networks). */
  insecure?: boolean;
  /** Largest payload accepted or sent (default DEFAULT_MAX_FRAME_BYTES). */
  maxFrameBytes?: number;
  /** A peer silent this long while we wait for it fails the channel (default DEFAULT_STALL_TIMEOUT_MS). */
  stallTimeoutMs?: number;
  /** Sending is paced to this many bytes per second (0 or unset: no limit). */
  maxBytesPerSecond?: number;
  /** Bytes a send may leave queued in the socket before it waits for the socket to drain (default 4 MiB). */
  sendBufferBytes?: number;
  /** Fault injection (tests). */
  faults?: ChannelFaults;
  /** Sent in HELLO so the peer's logs can name us. */
  name?: string;
}

/** Options of connect(). */
export interface ConnectOptions extends ChannelOptions {
  /** Host name or address. */
  host: string;
  /** TCP port. */
  port: number;
  /** The name the peer's certificate must carry (default: `host`). */
  serverName?: string;
  /** Give up connecting after this many ms (default: the stall timeout). */
  connectTimeoutMs?: number;
}

/** Options of listen(). */
export interface ListenOptions extends ChannelOptions {
  /** Address to bind (default 127.0.0.1). */
  host?: string;
  /** TCP port (0: any free one; read it back from TransportServer.port). */
  port: number;
}

/** A frame being built in place (FramedChannel.prepareFrame). */
export interface PreparedFrame {
  /** The payload's bytes, to fill: a view into `frame`. */
  readonly payload: Uint8Array;
  /** The whole frame (header, payload, trailer): the channel's. */
  readonly frame: Buffer;
}

/** One frame received. */
export interface Frame {
  /** Its type (an application type; transport frames are handled by the channel). */
  type: number;
  /** Its payload (owned by the caller). */
  payload: Uint8Array;
}

/** What the peer said in its HELLO. */
export interface PeerHello {
  /** Its transport version (equal to ours, or the channel would have failed). */
  transport: number;
  /** Its application protocol. */
  protocol: string;
  /** The protocol versions it speaks. */
  versions: number[];
  /** Its name, if it gave one. */
  name: string | null;
}

/** Counters of one channel. */
export interface ChannelStats {
  /** Bytes of frames written (headers, payloads, trailers), before TLS. */
  bytesSent: number;
  /** Bytes of frames received. */
  bytesReceived: number;
  /** Frames written. */
  framesSent: number;
  /** Frames received. */
  framesReceived: number;
  /** Times a write had to wait for the socket to drain. */
  drainWaits: number;
  /** Milliseconds the pacing (maxBytesPerSecond) held sends back. */
  pacedMs: number;
}

/** Receive buffers the channels allocated (so recycle() never reuses memory it does not own). */
const ownBuffers = new WeakSet<ArrayBufferLike>();
/** Frame buffers kept for reuse by prepareFrame (the rest go to the garbage collector). */
const MAX_SPARE_FRAMES = 8;
/** Default ChannelOptions.sendBufferBytes. */
const DEFAULT_SEND_BUFFER_BYTES = 4 * 1024 * 1024;
/** Incoming frames buffered before the socket is paused (receive-side back-pressure). */
const MAX_QUEUED_FRAMES = 64;
const TRANSPORT_NAMES = new Map<number, string>(Object.entries(TransportFrame).map(([name, type]) => [type, name]));
const utf8 = new TextDecoder('utf-8', { fatal: true });
/** Error codes a peer's ERROR frame passes on as they are (both ends see the same refusal). */
const SHARED_REFUSALS: readonly string[] = ['BV_XPORT_UNTRUSTED', 'BV_XPORT_VERSION', 'BV_XPORT_PROTOCOL'];

function fail(code: TransportErrorCode, message: string, cause?: unknown): TransportError {
  return new TransportError(code, message, cause === undefined ? undefined : { cause });
}

function checkOptions(options: ChannelOptions): void {
  if (typeof options.protocol !== 'string' || options.protocol.length === 0 || options.protocol.length > 64) {
    throw fail('BV_XPORT_CONFIG', 'the channel needs a protocol name of 1 to 64 characters');
  }
  if (!Array.isArray(options.versions) || options.versions.length === 0 || !options.versions.every((v) => Number.isInteger(v) && v > 0 && v < 65536)) {
    throw fail('BV_XPORT_CONFIG', `protocol versions must be a non-empty list of integers 1..65535, got ${JSON.stringify(options.versions)}`);
  }
  if (options.tls === undefined && options.insecure !== true) {
    throw fail('BV_XPORT_CONFIG', 'a channel needs TLS certificates (ca, cert, key), or insecure: true for plain TCP');
  }
  if (options.tls !== undefined && options.insecure === true) {
    throw fail('BV_XPORT_CONFIG', 'a channel is either TLS (certificates given) or insecure, not both');
  }
  const max = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  if (!Number.isSafeInteger(max) || max < 1024 || max > 0x7fff_0000) throw fail('BV_XPORT_CONFIG', `maxFrameBytes must be an integer from 1024 to 2^31, got ${String(max)}`);
  const stall = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
  if (!Number.isFinite(stall) || stall <= 0) throw fail('BV_XPORT_CONFIG', `stallTimeoutMs must be a positive number, got ${String(stall)}`);
  const rate = options.maxBytesPerSecond ?? 0;
  if (!Number.isFinite(rate) || rate < 0) throw fail('BV_XPORT_CONFIG', `maxBytesPerSecond must be 0 or positive, got ${String(rate)}`);
}

interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

function loadTls(files: TlsFiles): TlsMaterial {
  const read = (what: keyof TlsFiles): Buffer => {
    const path = files[what];
    if (typeof path !== 'string' || path.length === 0) throw fail('BV_XPORT_CONFIG', `tls.${what} must name a PEM file`);
    try {
      return readFileSync(path);
    } catch (error) {
      throw fail('BV_XPORT_CONFIG', `tls.${what}: cannot read ${path}: ${(error as Error).message}`, error);
    }
  };
  return { ca: read('ca'), cert: read('cert'), key: read('key') };
}

/** A TLS or socket error in transport terms (a certificate problem is BV_XPORT_UNTRUSTED). */
function socketError(error: unknown, where: string): TransportError {
  if (error instanceof TransportError) return error;
  const code = String((error as { code?: unknown }).code ?? '');
  const message = (error as Error).message ?? String(error);
  if (/CERT|UNKNOWN_CA|SELF_SIGNED|VERIFY|ALTNAME|UNABLE_TO_GET_ISSUER|PEER_DID_NOT_RETURN/i.test(code) || /certificate/i.test(message)) {
    return fail('BV_XPORT_UNTRUSTED', `${where}: the TLS handshake failed on a certificate (${code || message})`, error);
  }
  if (/ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EADDRNOTAVAIL/.test(code)) {
    return fail('BV_XPORT_CONNECT', `${where}: ${message}`, error);
  }
  if (/ECONNRESET|EPIPE/.test(code)) return fail('BV_XPORT_TRUNCATED', `${where}: the connection was reset by the peer (${code})`, error);
  if (/^ERR_SSL|^ERR_TLS/.test(code)) return fail('BV_XPORT_CORRUPT', `${where}: TLS failed (${code}): is the peer speaking TLS with the same settings?`, error);
  return fail('BV_XPORT_CLOSED', `${where}: ${message}`, error);
}

/**
 * One end of a connection: sends and receives checksummed frames, with back-pressure both ways
 * (a send waits while the socket's buffer is full; a reader that falls behind pauses the socket)
 * and a stall timeout whenever this end waits for the peer. Once a channel fails, every pending
 * and later call rejects with the same error and the socket is destroyed.
 */
export class FramedChannel {
  /** What the peer said in its HELLO (set once the handshake is done). */
  peer: PeerHello | null = null;
  /** The application protocol version both ends use (the highest common one). */
  version = 0;
  /** Counters. */
  readonly stats: ChannelStats = { bytesSent: 0, bytesReceived: 0, framesSent: 0, framesReceived: 0, drainWaits: 0, pacedMs: 0 };
  /** Whether the channel is authenticated by TLS (false: insecure plain TCP). */
  readonly secure: boolean;

  readonly #socket: Socket;
  readonly #options: ChannelOptions;
  readonly #maxFrame: number;
  readonly #stallMs: number;
  readonly #sendBuffer: number;
  #rate: number;
  readonly #faults: ChannelFaults;
  /** Received bytes not yet parsed into frames. */
  #chunks: Buffer[] = [];
  #buffered = 0;
  readonly #queue: Frame[] = [];
  #waiter: { resolve: (frame: Frame | null) => void; reject: (error: Error) => void } | null = null;
  #drainWaiter: { resolve: () => void; reject: (error: Error) => void } | null = null;
  #error: TransportError | null = null;
  /** The peer said BYE: no more frames come. */
  #peerDone = false;
  /** We said BYE (or closed): no more frames go. */
  #closed = false;
  #stallTimer: NodeJS.Timeout | null = null;
  #paceStart = 0;
  #pacedBytes = 0;
  #cut = false;
  /** A received frame's buffer handed back by recycle(). */
  #spareReceived: Buffer | null = null;
  /** Frame buffers of sendPrepared the socket has taken, kept for the next frames. */
  readonly #spare: Buffer[] = [];

  /** @internal Use connect() or TransportServer.accept(). */
  constructor(socket: Socket, options: ChannelOptions, secure: boolean) {
    this.#socket = socket;
    this.#options = options;
    this.secure = secure;
    this.#maxFrame = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#stallMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    this.#rate = options.maxBytesPerSecond ?? 0;
    this.#sendBuffer = options.sendBufferBytes ?? DEFAULT_SEND_BUFFER_BYTES;
    this.#faults = options.faults ?? {};
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => this.#onDrain());
    socket.on('end', () => this.#onEnd());
    socket.on('close', () => this.#onEnd());
    socket.on('error', (error) => this.#fail(socketError(error, this.#where())));
  }

  /** The peer's address, for messages. */
  get remote(): string {
    return `${this.#socket.remoteAddress ?? '?'}:${this.#socket.remotePort ?? '?'}`;
  }

  /** Changes the pacing of sends (bytes per second; 0: none). */
  setMaxBytesPerSecond(rate: number): void {
    if (!Number.isFinite(rate) || rate < 0) throw fail('BV_XPORT_CONFIG', `maxBytesPerSecond must be 0 or positive, got ${String(rate)}`);
    this.#rate = rate;
    this.#pacedBytes = 0;
  }

  /** The error the channel failed with, or null. */
  get error(): TransportError | null {
    return this.#error;
  }

  /** Bytes handed to the socket and not yet written out (a sender that wants to stay only a little ahead reads it). */
  get bufferedBytes(): number {
    return this.#socket.writableLength;
  }

  /** Whether frames may still be sent (not closed, not failed). */
  get open(): boolean {
    return this.#error === null && !this.#closed;
  }

  // ------------------------------------------------------------------------------- sending

  /**
   * Sends one frame of an application type. Resolves once the socket has taken the bytes
   * (at once unless its buffer is full: then when it drains, or rejects as STALLED if it does
   * not within the stall timeout). The payload is copied: the caller may reuse it at once.
   */
  async send(type: number, payload: Uint8Array = new Uint8Array(0)): Promise<void> {
    if (!Number.isInteger(type) || type < FIRST_APP_FRAME_TYPE || type > 0xffff) {
      throw fail('BV_XPORT_CONFIG', `frame type ${type} is not an application frame type (${FIRST_APP_FRAME_TYPE}..65535)`);
    }
    await this.#sendFrame(type, payload);
  }

  /**
   * Tells the peer why we give up (an ERROR frame, best effort) and ends the connection after it
   * is flushed (or after a second, if the peer takes nothing). This end fails with `error` (default:
   * BV_XPORT_CLOSED).
   */
  async abort(code: string, message: string, error?: TransportError): Promise<void> {
    const wasOpen = this.#error === null && !this.#closed;
    const socket = this.#socket;
    // Fail first (synchronously), so nothing else is sent or received after the ERROR frame.
    this.#fail(error ?? fail('BV_XPORT_CLOSED', `${this.#where()}: the channel was closed`), false);
    this.#closed = true;
    if (!wasOpen || socket.destroyed) return;
    const frame = encodeFrame(TransportFrame.ERROR, new TextEncoder().encode(JSON.stringify({ code, message })));
    this.stats.bytesSent += frame.length;
    this.stats.framesSent++;
    const timer = setTimeout(() => socket.destroy(), 1000);
    timer.unref();
    await new Promise<void>((resolve) => {
      socket.once('close', resolve);
      socket.end(frame, () => resolve());
    });
  }

  /** Says goodbye (BYE) and ends the stream in good order, after what was sent is flushed. */
  async close(): Promise<void> {
    if (this.#closed || this.#error !== null) return;
    await this.#sendFrame(TransportFrame.BYE, new Uint8Array(0));
    this.#closed = true;
    await new Promise<void>((resolve) => this.#socket.end(resolve));
  }

  /** Drops the connection now (no goodbye); pending calls reject with BV_XPORT_CLOSED. */
  destroy(): void {
    this.#closed = true;
    this.#fail(fail('BV_XPORT_CLOSED', `${this.#where()}: the channel was closed`));
  }

  /**
   * A frame to build in place: fill `payload` (a view into the frame's own bytes, `payloadBytes`
   * long, 4-byte aligned), then send it with sendPrepared, once. A large payload is then never
   * copied into a frame (a migration writes guest pages straight into it), and the buffer is
   * reused once the socket has taken it.
   */
  prepareFrame(payloadBytes: number): PreparedFrame {
    if (!Number.isInteger(payloadBytes) || payloadBytes < 0 || payloadBytes > this.#maxFrame) {
      throw fail('BV_XPORT_OVERSIZE', `${this.#where()}: a ${payloadBytes}-byte frame is larger than the limit of ${this.#maxFrame} bytes`);
    }
    const size = FRAME_HEADER_BYTES + payloadBytes + FRAME_TRAILER_BYTES;
    let frame: Buffer | undefined;
    for (let i = this.#spare.length - 1; i >= 0; i--) {
      if (this.#spare[i]!.length === size) {
        frame = this.#spare[i]!;
        this.#spare.splice(i, 1);
        break;
      }
    }
    frame ??= Buffer.allocUnsafeSlow(size); // its own memory: recycled whole, never a slice of Node's pool
    return { payload: frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + payloadBytes), frame };
  }

  /**
   * Sends a frame built with prepareFrame, holding the first `payloadBytes` of its payload (at
   * most what was prepared); as send() otherwise. The frame must not be touched afterwards.
   */
  async sendPrepared(type: number, prepared: PreparedFrame, payloadBytes: number = prepared.payload.length): Promise<void> {
    if (!Number.isInteger(type) || type < FIRST_APP_FRAME_TYPE || type > 0xffff) {
      throw fail('BV_XPORT_CONFIG', `frame type ${type} is not an application frame type (${FIRST_APP_FRAME_TYPE}..65535)`);
    }
    if (!Number.isInteger(payloadBytes) || payloadBytes < 0 || payloadBytes > prepared.payload.length) {
      throw fail('BV_XPORT_CONFIG', `${this.#where()}: ${payloadBytes} bytes do not fit a prepared ${prepared.payload.length}-byte payload`);
    }
    if (this.#error !== null) throw this.#error;
    if (this.#closed) throw fail('BV_XPORT_CLOSED', `${this.#where()}: the channel is closed`);
    const whole = prepared.frame;
    const frame = whole.subarray(0, FRAME_HEADER_BYTES + payloadBytes + FRAME_TRAILER_BYTES);
    writeFrameChecks(frame, type, payloadBytes, TRANSPORT_VERSION);
    await this.#pace(frame.length);
    this.#write(frame, () => {
      // The socket has taken the bytes: the buffer may carry the next frame.
      if (this.#spare.length < MAX_SPARE_FRAMES) this.#spare.push(whole);
    });
    this.stats.framesSent++;
    if (this.#error !== null) throw this.#error;
    if (this.#socket.writableNeedDrain && this.#socket.writableLength > this.#sendBuffer) await this.#waitDrain();
  }

  async #sendFrame(type: number, payload: Uint8Array): Promise<void> {
    if (this.#error !== null) throw this.#error;
    if (this.#closed) throw fail('BV_XPORT_CLOSED', `${this.#where()}: the channel is closed`);
    if (payload.length > this.#maxFrame) {
      throw fail('BV_XPORT_OVERSIZE', `${this.#where()}: a ${payload.length}-byte frame is larger than the limit of ${this.#maxFrame} bytes`);
    }
    const frame = encodeFrame(type, payload);
    await this.#pace(frame.length);
    this.#write(frame);
    this.stats.framesSent++;
    if (this.#error !== null) throw this.#error;
    // Up to sendBufferBytes may wait in the socket: a sender that shares the event loop with the
    // guests then writes a few frames per turn instead of one.
    if (this.#socket.writableNeedDrain && this.#socket.writableLength > this.#sendBuffer) await this.#waitDrain();
  }

  /** Holds a send back so that the average rate stays at most maxBytesPerSecond. */
  async #pace(bytes: number): Promise<void> {
    if (this.#rate <= 0) return;
    const now = performance.now();
    // A long pause forgets the past (no burst to catch up with).
    if (this.#pacedBytes === 0 || now - (this.#paceStart + (this.#pacedBytes / this.#rate) * 1000) > 1000) {
      this.#paceStart = now;
      this.#pacedBytes = 0;
    }
    const due = this.#paceStart + (this.#pacedBytes / this.#rate) * 1000;
    this.#pacedBytes += bytes;
    if (due > now + 1) {
      await new Promise<void>((resolve) => setTimeout(resolve, due - now));
      this.stats.pacedMs += due - now;
    }
  }

  /** Writes frame bytes, applying the fault hooks; `taken` runs once the socket has taken them (not after a fault). */
  #write(bytes: Buffer, taken?: () => void): void {
    const start = this.stats.bytesSent;
    const end = start + bytes.length;
    this.stats.bytesSent = end;
    if (this.#cut) return;
    const { corruptByteAt, cutAfterBytes, stallAfterBytes } = this.#faults;
    if (corruptByteAt !== undefined && corruptByteAt >= start && corruptByteAt < end) {
      bytes = Buffer.from(bytes);
      bytes[corruptByteAt - start]! ^= 0xff;
    }
    const limit = Math.min(cutAfterBytes ?? Infinity, stallAfterBytes ?? Infinity);
    if (limit < end) {
      if (limit > start) this.#socket.write(bytes.subarray(0, limit - start));
      this.#cut = true;
      if (cutAfterBytes !== undefined && cutAfterBytes <= limit) {
        // Abrupt: no goodbye, no TLS close_notify; and this end fails as well.
        this.#socket.destroy();
        this.#fail(fail('BV_XPORT_CLOSED', `${this.#where()}: the connection was cut after ${cutAfterBytes} bytes (fault injection)`));
      }
      return;
    }
    if (taken === undefined || corruptByteAt !== undefined) this.#socket.write(bytes);
    else this.#socket.write(bytes, (error) => error == null && taken());
  }

  #waitDrain(): Promise<void> {
    this.stats.drainWaits++;
    return new Promise<void>((resolve, reject) => {
      this.#drainWaiter = { resolve, reject };
      this.#armStall();
    });
  }

  #onDrain(): void {
    const waiter = this.#drainWaiter;
    this.#drainWaiter = null;
    this.#disarmStallIfIdle();
    waiter?.resolve();
  }

  // ----------------------------------------------------------------------------- receiving

  /**
   * The next application frame, or null once the peer has said BYE. Rejects as STALLED if
   * nothing arrives within the stall timeout, TRUNCATED if the stream ends without a BYE,
   * PEER_ERROR if the peer gave up, CORRUPT/VERSION/OVERSIZE for a bad frame.
   */
  receive(): Promise<Frame | null> {
    if (this.#waiter !== null) return Promise.reject(fail('BV_XPORT_CONFIG', 'receive() called again before the previous one settled'));
    const frame = this.#queue.shift();
    if (frame !== undefined) {
      if (this.#queue.length < MAX_QUEUED_FRAMES / 2 && this.#socket.isPaused()) this.#socket.resume();
      return Promise.resolve(frame);
    }
    if (this.#error !== null) return Promise.reject(this.#error);
    if (this.#peerDone) return Promise.resolve(null);
    if (this.#socket.isPaused()) this.#socket.resume();
    return new Promise<Frame | null>((resolve, reject) => {
      this.#waiter = { resolve, reject };
      this.#armStall();
    });
  }

  /**
   * Puts a frame received back in front of the queue: a host that tells streams apart by their
   * first frame (migration or replication on one listener) hands the channel on unchanged.
   */
  unreceive(frame: Frame): void {
    this.#queue.unshift(frame);
  }

  /** The next frame, which must be of `type` (a BYE or another type is a protocol error). */
  async expect(type: number, what: string): Promise<Uint8Array> {
    const frame = await this.receive();
    if (frame === null) throw fail('BV_XPORT_TRUNCATED', `${this.#where()}: the peer ended the stream where ${what} was expected`);
    if (frame.type !== type) throw fail('BV_XPORT_CORRUPT', `${this.#where()}: expected ${what} (frame type ${type}), got frame type ${frame.type}`);
    return frame.payload;
  }

  #onData(chunk: Buffer): void {
    if (this.#error !== null) return;
    this.stats.bytesReceived += chunk.length;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    if (this.#stallTimer !== null) this.#stallTimer.refresh();
    try {
      this.#parse();
    } catch (error) {
      this.#fail(error as TransportError);
    }
  }

  #parse(): void {
    while (this.#buffered >= FRAME_HEADER_BYTES && this.#error === null) {
      const header = this.#peek(FRAME_HEADER_BYTES);
      const magic = header.readUInt32LE(0);
      if (magic !== FRAME_MAGIC) {
        throw fail('BV_XPORT_CORRUPT', `${this.#where()}: not a bytevisor frame (bad magic 0x${magic.toString(16).padStart(8, '0')} after ${this.stats.framesReceived} frames)`);
      }
      const version = header.readUInt16LE(4);
      if (version !== TRANSPORT_VERSION) {
        throw fail('BV_XPORT_VERSION', `${this.#where()}: the peer speaks transport version ${version}, this host speaks version ${TRANSPORT_VERSION}`);
      }
      if ((crc32c(header.subarray(0, 12)) >>> 0) !== header.readUInt32LE(12)) {
        throw fail('BV_XPORT_CORRUPT', `${this.#where()}: frame ${this.stats.framesReceived + 1} has a bad header checksum`);
      }
      const type = header.readUInt16LE(6);
      const length = header.readUInt32LE(8);
      if (length > this.#maxFrame) {
        throw fail('BV_XPORT_OVERSIZE', `${this.#where()}: the peer announced a ${length}-byte frame, larger than the limit of ${this.#maxFrame} bytes`);
      }
      const total = FRAME_HEADER_BYTES + length + FRAME_TRAILER_BYTES;
      if (this.#buffered < total) return;
      const bytes = this.#take(total);
      const payload = bytes.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length);
      if ((crc32c(payload, header.readUInt32LE(12)) >>> 0) !== bytes.readUInt32LE(FRAME_HEADER_BYTES + length)) {
        throw fail('BV_XPORT_CORRUPT', `${this.#where()}: frame ${this.stats.framesReceived + 1} (type ${type}, ${length} bytes) has a bad payload checksum`);
      }
      this.stats.framesReceived++;
      this.#deliver(type, payload);
    }
  }

  #deliver(type: number, payload: Uint8Array): void {
    if (type < FIRST_APP_FRAME_TYPE) {
      switch (type) {
        case TransportFrame.BYE:
          this.#peerDone = true;
          this.#settleWaiter(null);
          return;
        case TransportFrame.ERROR: {
          const { code, message } = parseJson(payload, 'ERROR') as { code?: unknown; message?: unknown };
          // Refusals both ends see alike keep their code (the peer found our version or certificate wanting).
          const own = typeof code === 'string' && SHARED_REFUSALS.includes(code) ? (code as TransportErrorCode) : 'BV_XPORT_PEER_ERROR';
          throw fail(own, `${this.#peerName()} gave up: ${String(message)}${code === undefined ? '' : ` (${String(code)})`}`);
        }
        case TransportFrame.HELLO:
          if (this.peer === null) break; // the handshake reads it as a frame
          throw fail('BV_XPORT_CORRUPT', `${this.#where()}: a second HELLO from the peer`);
        default:
          throw fail('BV_XPORT_CORRUPT', `${this.#where()}: unknown transport frame type ${type} (${TRANSPORT_NAMES.get(type) ?? 'reserved'})`);
      }
    }
    if (this.#peerDone) throw fail('BV_XPORT_CORRUPT', `${this.#where()}: a frame after the peer's BYE`);
    const frame = { type, payload };
    if (this.#waiter !== null) this.#settleWaiter(frame);
    else {
      this.#queue.push(frame);
      if (this.#queue.length >= MAX_QUEUED_FRAMES) this.#socket.pause();
    }
  }

  #settleWaiter(frame: Frame | null): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    this.#disarmStallIfIdle();
    waiter?.resolve(frame);
  }

  #peek(count: number): Buffer {
    if (this.#chunks[0]!.length < count) this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0]!.subarray(0, count);
  }

  #take(count: number): Buffer {
    let bytes: Buffer;
    const first = this.#chunks[0]!;
    if (first.length >= count) {
      bytes = first.subarray(0, count);
      if (first.length === count) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(count);
    } else {
      bytes = this.#receiveBuffer(count);
      let at = 0;
      while (at < count) {
        const chunk = this.#chunks[0]!;
        const take = Math.min(chunk.length, count - at);
        chunk.copy(bytes, at, 0, take);
        at += take;
        if (take === chunk.length) this.#chunks.shift();
        else this.#chunks[0] = chunk.subarray(take);
      }
    }
    this.#buffered -= count;
    return bytes;
  }

  /** A buffer for a frame that spans chunks: one handed back by recycle(), or a new one of its own. */
  #receiveBuffer(count: number): Buffer {
    const spare = this.#spareReceived;
    if (spare !== null && spare.length === count) {
      this.#spareReceived = null;
      return spare;
    }
    const bytes = Buffer.allocUnsafeSlow(count);
    ownBuffers.add(bytes.buffer);
    return bytes;
  }

  /**
   * Hands back the payload of a received frame the caller is done with (nothing refers to it any
   * more): the channel may receive the next frame of the same size into the same memory, instead
   * of allocating one per frame (megabytes a second for a migration). Optional; payloads the
   * channel did not allocate itself are ignored.
   */
  recycle(payload: Uint8Array): void {
    if (!ownBuffers.has(payload.buffer)) return;
    this.#spareReceived = Buffer.from(payload.buffer, 0, payload.buffer.byteLength);
  }

  #onEnd(): void {
    if (this.#error !== null) return;
    if (this.#buffered > 0) {
      this.#fail(fail('BV_XPORT_TRUNCATED', `${this.#where()}: the stream ended in the middle of a frame (${this.#buffered} bytes of frame ${this.stats.framesReceived + 1} received)`));
    } else if (!this.#peerDone) {
      this.#fail(fail('BV_XPORT_TRUNCATED', `${this.#where()}: the connection closed after ${this.stats.framesReceived} frames without the peer saying goodbye`));
    } else if (this.#drainWaiter !== null) {
      this.#fail(fail('BV_XPORT_CLOSED', `${this.#where()}: the peer closed the connection while we were sending`));
    }
  }

  // ------------------------------------------------------------------------------- stalls, failure

  #armStall(): void {
    if (this.#stallTimer !== null) {
      this.#stallTimer.refresh();
      this.#stallTimer.ref();
      return;
    }
    this.#stallTimer = setTimeout(() => {
      this.#stallTimer = null;
      if (this.#waiter === null && this.#drainWaiter === null) return; // nobody waits any more
      const what = this.#drainWaiter !== null ? 'took none of our data' : 'sent nothing';
      this.#fail(fail('BV_XPORT_STALLED', `${this.#where()}: the peer ${what} for ${this.#stallMs} ms (the stall timeout)`));
    }, this.#stallMs);
  }

  #disarmStallIfIdle(): void {
    // Kept (unreferenced) rather than cleared: a receive per frame would otherwise create and
    // cancel a timer per frame. It does nothing if it fires while nobody waits.
    if (this.#waiter === null && this.#drainWaiter === null && this.#stallTimer !== null) this.#stallTimer.unref();
  }

  #fail(error: TransportError, destroySocket = true): void {
    if (this.#error !== null) return;
    this.#error = error;
    if (this.#stallTimer !== null) clearTimeout(this.#stallTimer);
    this.#stallTimer = null;
    this.#chunks = [];
    this.#buffered = 0;
    this.#queue.length = 0;
    if (destroySocket && !this.#socket.destroyed) this.#socket.destroy();
    const waiter = this.#waiter;
    const drain = this.#drainWaiter;
    this.#waiter = null;
    this.#drainWaiter = null;
    waiter?.reject(error);
    drain?.reject(error);
  }

  #where(): string {
    return `channel ${this.#options.protocol} with ${this.remote}`;
  }

  #peerName(): string {
    return this.peer?.name ? `the peer '${this.peer.name}'` : `the peer ${this.remote}`;
  }

  // ------------------------------------------------------------------------------- handshake

  /** @internal Sends our HELLO, reads the peer's, picks the version. */
  async handshake(): Promise<void> {
    const hello = { transport: TRANSPORT_VERSION, protocol: this.#options.protocol, versions: [...this.#options.versions], name: this.#options.name ?? null };
    await this.#sendFrame(TransportFrame.HELLO, new TextEncoder().encode(JSON.stringify(hello)));
    const frame = await this.#receiveHello();
    const peer = parseJson(frame, 'HELLO') as Partial<PeerHello>;
    if (typeof peer.protocol !== 'string' || !Array.isArray(peer.versions) || !peer.versions.every((v) => Number.isInteger(v))) {
      throw this.#refuse(fail('BV_XPORT_CORRUPT', `${this.#where()}: the peer's HELLO is malformed`));
    }
    this.peer = { transport: TRANSPORT_VERSION, protocol: peer.protocol, versions: peer.versions, name: typeof peer.name === 'string' ? peer.name : null };
    if (peer.protocol !== this.#options.protocol) {
      throw this.#refuse(fail('BV_XPORT_PROTOCOL', `${this.#where()}: the peer speaks protocol '${peer.protocol}', this end speaks '${this.#options.protocol}'`));
    }
    const common = this.#options.versions.filter((v) => peer.versions!.includes(v));
    if (common.length === 0) {
      throw this.#refuse(fail('BV_XPORT_VERSION', `${this.#where()}: the peer speaks ${this.#options.protocol} version${peer.versions.length === 1 ? '' : 's'} ${peer.versions.join(', ')}, this host speaks ${this.#options.versions.join(', ')}`));
    }
    this.version = Math.max(...common);
  }

  /** The peer's HELLO: the first frame it sends (delivered like an application frame until the handshake is done). */
  async #receiveHello(): Promise<Uint8Array> {
    const frame = await this.receive();
    if (frame === null) throw fail('BV_XPORT_TRUNCATED', `${this.#where()}: the peer said goodbye before HELLO`);
    if (frame.type !== TransportFrame.HELLO) throw fail('BV_XPORT_CORRUPT', `${this.#where()}: the first frame from the peer is type ${frame.type}, not HELLO`);
    return frame.payload;
  }

  /** Tells the peer why the handshake failed (it sees our HELLO first, then the ERROR), then fails with it. */
  #refuse(error: TransportError): TransportError {
    void this.abort(error.code, error.message, error);
    return error;
  }
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    const value: unknown = JSON.parse(utf8.decode(bytes));
    if (typeof value !== 'object' || value === null) throw new Error('not an object');
    return value;
  } catch {
    throw fail('BV_XPORT_CORRUPT', `the peer's ${what} frame is not a JSON object`);
  }
}

/** One frame's bytes: header, payload, trailer. */
export function encodeFrame(type: number, payload: Uint8Array, version = TRANSPORT_VERSION): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length + FRAME_TRAILER_BYTES);
  frame.set(payload, FRAME_HEADER_BYTES);
  writeFrameChecks(frame, type, payload.length, version);
  return frame;
}

/** Writes the header and the trailer around a payload already in place in `frame`. */
function writeFrameChecks(frame: Buffer, type: number, length: number, version: number): void {
  frame.writeUInt32LE(FRAME_MAGIC, 0);
  frame.writeUInt16LE(version, 4);
  frame.writeUInt16LE(type, 6);
  frame.writeUInt32LE(length, 8);
  const headerCrc = crc32c(frame.subarray(0, 12)) >>> 0;
  frame.writeUInt32LE(headerCrc, 12);
  frame.writeUInt32LE(crc32c(frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length), headerCrc) >>> 0, FRAME_HEADER_BYTES + length);
}

/** Opens a channel to a listening peer and completes the handshake. */
export async function connect(options: ConnectOptions): Promise<FramedChannel> {
  checkOptions(options);
  if (!Number.isInteger(options.port) || options.port <= 0 || options.port > 65535) throw fail('BV_XPORT_CONFIG', `port must be 1..65535, got ${String(options.port)}`);
  const tls = options.tls === undefined ? null : loadTls(options.tls);
  const where = `connecting to ${options.host}:${options.port}`;
  const timeoutMs = options.connectTimeoutMs ?? options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
  const socket = await new Promise<Socket>((resolve, reject) => {
    let settled = false;
    const done = (error: unknown, value?: Socket) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== null) {
        sock.destroy();
        reject(socketError(error, where));
      } else resolve(value!);
    };
    const timer = setTimeout(() => done(fail('BV_XPORT_STALLED', `${where}: no connection within ${timeoutMs} ms`)), timeoutMs);
    const sock: Socket = tls === null
      ? netConnect({ host: options.host, port: options.port }, () => done(null, sock))
      : tlsConnect({
        host: options.host, port: options.port, servername: options.serverName ?? (isIpAddress(options.host) ? undefined : options.host),
        ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: true,
        ...(options.serverName !== undefined ? { checkServerIdentity: serverIdentityCheck(options.serverName) } : {}),
      }, () => done(null, sock));
    sock.once('error', (error) => done(error));
  });
  const channel = new FramedChannel(socket, options, tls !== null);
  try {
    await channel.handshake();
  } catch (error) {
    channel.destroy();
    throw socketError(error, where);
  }
  return channel;
}

function isIpAddress(host: string): boolean {
  return /^[0-9.]+$/.test(host) || host.includes(':');
}

/** Checks the certificate against `name` instead of the address connected to. */
function serverIdentityCheck(name: string): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => checkServerIdentity(name, cert);
}

/** A refused connection (bad certificate, wrong protocol or version…), as the server saw it. */
export interface RefusedPeer {
  /** The peer's address. */
  remote: string;
  /** Why it was refused. */
  error: TransportError;
}

/**
 * A listening end: accepts connections, completes each one's handshake, and hands out the
 * channels that passed (accept()). Connections that fail (an untrusted certificate, another
 * version) are refused and reported through `onRefused`, never handed out.
 */
export class TransportServer {
  /** Called for each refused connection. */
  onRefused: ((refused: RefusedPeer) => void) | null = null;
  /** The refused connections so far (the last 32). */
  readonly refused: RefusedPeer[] = [];

  readonly #server: Server;
  readonly #ready: FramedChannel[] = [];
  readonly #waiters: { resolve: (channel: FramedChannel) => void; reject: (error: Error) => void }[] = [];
  #closed = false;

  private constructor(server: Server) {
    this.#server = server;
  }

  /** Starts listening; resolves once bound. */
  static async listen(options: ListenOptions): Promise<TransportServer> {
    checkOptions(options);
    const tls = options.tls === undefined ? null : loadTls(options.tls);
    let owner: TransportServer | null = null;
    const onSocket = (socket: Socket) => {
      if (owner !== null) owner.#handshake(socket, options, tls !== null);
      else socket.destroy();
    };
    const server: Server = tls === null
      ? netCreateServer(onSocket)
      // The client's certificate is checked here rather than by OpenSSL, so that a refused
      // client is told why (an ERROR frame over the finished handshake) instead of seeing a reset.
      // An unauthorized socket never becomes a channel.
      : tlsCreateServer({ ca: tls.ca, cert: tls.cert, key: tls.key, requestCert: true, rejectUnauthorized: false }, (socket: TLSSocket) => {
        if (socket.authorized) onSocket(socket);
        else owner?.refuseUntrusted(socket);
      });
    owner = new TransportServer(server);
    const self = owner;
    if (tls !== null) {
      server.on('tlsClientError', (error: Error, socket: TLSSocket) => self.#refuse(`${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, socketError(error, 'accepting a connection')));
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error) => reject(fail('BV_XPORT_CONFIG', `cannot listen on ${options.host ?? '127.0.0.1'}:${options.port}: ${error.message}`, error)));
      server.listen(options.port, options.host ?? '127.0.0.1', () => resolve());
    });
    return owner;
  }

  /** The bound port. */
  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /** The bound address. */
  get host(): string {
    return (this.#server.address() as AddressInfo).address;
  }

  /** The next connection that completed its handshake. */
  accept(): Promise<FramedChannel> {
    const channel = this.#ready.shift();
    if (channel !== undefined) return Promise.resolve(channel);
    if (this.#closed) return Promise.reject(fail('BV_XPORT_CLOSED', 'the listener is closed'));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Stops listening (channels already accepted stay open); pending accept() calls reject. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) waiter.reject(fail('BV_XPORT_CLOSED', 'the listener is closed'));
    for (const channel of this.#ready.splice(0)) channel.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** @internal A TLS client whose certificate we do not trust: told so, then dropped. */
  refuseUntrusted(socket: TLSSocket): void {
    const reason = String(socket.authorizationError ?? 'no certificate');
    const error = fail('BV_XPORT_UNTRUSTED', `accepting a connection: the client's certificate is not trusted (${reason})`);
    this.#refuse(`${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, error);
    socket.on('error', () => {});
    socket.end(encodeFrame(TransportFrame.ERROR, new TextEncoder().encode(JSON.stringify({ code: error.code, message: `this host does not trust your certificate (${reason})` }))));
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  #handshake(socket: Socket, options: ChannelOptions, secure: boolean): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    const channel = new FramedChannel(socket, options, secure);
    const remote = channel.remote;
    channel.handshake().then(
      () => {
        const waiter = this.#waiters.shift();
        if (waiter !== undefined) waiter.resolve(channel);
        else this.#ready.push(channel);
      },
      (error: unknown) => {
        channel.destroy();
        this.#refuse(remote, socketError(error, 'accepting a connection'));
      },
    );
  }

  #refuse(remote: string, error: TransportError): void {
    const refused = { remote, error };
    this.refused.push(refused);
    if (this.refused.length > 32) this.refused.shift();
    this.onRefused?.(refused);
  }
}
