/**
 * The control API: HTTP/1.1 with JSON bodies over a Unix socket, the convention of Firecracker
 * and Cloud Hypervisor (`curl --unix-socket PATH http://localhost/vms` works). docs/api.md
 * specifies every endpoint; later services add theirs with `ApiServer.route`.
 *
 * HTTP is served on a thread of its own by default (api-thread.ts; api-http.ts is the front end):
 * requests are parsed by node:http there as bytes arrive, so a slow or half-open client holds only
 * its socket, never the guests, and the host's thread gets one message per whole request, which
 * it handles between the scheduler's slices. Bodies are limited in size, whole requests in time;
 * malformed HTTP, JSON or bodies are answered 400 with `{"fault_message": …}` and logged.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import type { Worker } from 'node:worker_threads';
import { BvError } from '../../guest-isa/errors.ts';
import type { Tier } from '../../kernel/index.ts';
import { answerText, listenHttp, type HttpAnswer, type HttpFront, type HttpLimits } from './api-http.ts';
import type { ApiThreadData, ApiThreadEvent, ApiThreadRequest } from './api-thread.ts';
import { startModuleWorker } from './worker-group.ts';
import { HostError, type BalloonUpdate, type Host, type MemoryPolicyUpdate, type MigrateRequest, type ReplicateRequest } from './host.ts';
import { MEMORY_ERROR_REQUEST_SCHEMA, type MemoryErrorRequest } from '../recovery/requests.ts';
import { checkJson, MAX_SHARES, MAX_STATS_INTERVAL_S, parseVmConfig, VM_CONFIG_SCHEMA, VM_NAME_PATTERN } from './config.ts';
import { CHANNEL_BODY_SCHEMA, toChannelSpec, type ChannelJson } from './config.ts';

/** A request as a handler sees it. */
export interface ApiRequest {
  /** The HTTP method. */
  method: string;
  /** The path's `{name}` parts, decoded. */
  params: Record<string, string>;
  /** The query string's parameters. */
  query: URLSearchParams;
  /** The parsed JSON body (checked against the route's schema), or undefined when there is none. */
  body: unknown;
}

/** A handler's answer: a status and a JSON body (none for 204). */
export interface ApiResponse {
  /** The HTTP status. */
  status: number;
  /** The JSON body (none for 204). */
  body?: unknown;
}

/** Handles one endpoint's requests; a HostError it throws becomes its status and fault_message. */
export type ApiHandler = (request: ApiRequest) => ApiResponse | Promise<ApiResponse>;

/** Options of ApiServer.listen. */
export interface ApiServerOptions {
  /** Largest request body in bytes (default 64 KiB); larger is answered 413. */
  maxBodyBytes?: number;
  /** A client must send its whole request within this many ms (default 10 s); then 408. */
  requestTimeoutMs?: number;
  /** Receives one line per refused or failed request. */
  log?: (line: string) => void;
  /**
   * Serve HTTP on a thread of its own (default true, as Firecracker's API thread): connections,
   * parsing and socket writes stay off the thread that runs the guests, which sees one message
   * per request and runs only the handler. false: everything on the calling thread.
   */
  thread?: boolean;
}

interface Route {
  method: string;
  /** Path segments; `{x}` matches one segment. */
  segments: string[];
  handler: ApiHandler;
  /** JSON Schema of the body; undefined: the route takes no body. */
  bodySchema: object | undefined;
  /** The body may be left out (an empty object is used). */
  bodyOptional: boolean;
}

const DEFAULT_MAX_BODY = 64 * 1024;
const DEFAULT_REQUEST_TIMEOUT = 10_000;
/** The longest Unix socket path: sun_path, 108 bytes on Linux (a NUL is not needed), 104 less a NUL elsewhere. */
const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 108 : 103;
/** How long the host's thread waits for the API thread to bind (it holds the process umask meanwhile). */
const API_THREAD_BIND_WAIT_MS = 10_000;
/** An API thread that ends while serving is replaced at most this often a minute. */
const API_THREAD_RESTARTS_PER_MINUTE = 5;

/** A refused socket path (in use, not a socket, cannot be created). */
export class ApiSocketError extends BvError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BV_API_SOCKET', message, options);
  }
}

/**
 * An HTTP server on a Unix socket with a route table. Create it with ApiServer.listen, add
 * routes (hostRoutes adds the host's), close it with close() (the socket file is removed).
 * Handlers always run on the thread that called listen.
 */
export class ApiServer {
  private readonly routes: Route[] = [];
  private readonly log: (line: string) => void;
  /** The HTTP front end (on this thread or the API thread's proxy); set by listen. */
  private front: HttpFront | null = null;
  /** The API thread (null: HTTP on the calling thread). */
  private thread: Worker | null = null;
  /** close() has been called: an API thread that ends is not restarted. */
  private closing = false;
  /** When the API thread was restarted (performance.now()), the last minute's. */
  private restarts: number[] = [];
  /** Requests answered (any status). */
  requests = 0;

  private constructor(
    /** The socket this server listens on (removed by close()). */
    readonly socketPath: string,
    options: ApiServerOptions,
  ) {
    this.log = options.log ?? (() => {});
  }

  /**
   * Listens on `socketPath`, created with mode 0600. A stale socket left by a host that died is
   * replaced; a live one (another host answers on it) or any other file is refused.
   */
  static async listen(socketPath: string, options: ApiServerOptions = {}): Promise<ApiServer> {
    // libuv would silently bind a truncated path (and leave that file behind): refuse it.
    const length = Buffer.byteLength(socketPath);
    if (length > MAX_SOCKET_PATH_BYTES) {
      throw new ApiSocketError(`cannot listen on ${socketPath}: the path is ${length} bytes, longer than a Unix socket path may be (${MAX_SOCKET_PATH_BYTES} bytes)`);
    }
    await claimSocketPath(socketPath);
    const limits = { maxBodyBytes: options.maxBodyBytes ?? DEFAULT_MAX_BODY, requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT };
    const api = new ApiServer(socketPath, options);
    try {
      api.front = options.thread === false
        ? await listenHttp(socketPath, limits, {
          dispatch: (method, target, body) => api.dispatch(method, target, body),
          answered: () => api.requests++,
          log: (line) => api.log(line),
        }, withSocketUmask)
        : await api.listenOnThread(socketPath, limits);
    } catch (error) {
      throw new ApiSocketError(`cannot listen on ${socketPath}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    return api;
  }

  /** Starts the API thread and has it bind `socketPath` (under the 0600 umask, held here meanwhile). */
  private async listenOnThread(socketPath: string, limits: HttpLimits): Promise<HttpFront> {
    const bound = new SharedArrayBuffer(4);
    const data: ApiThreadData = { socketPath, ...limits, bound };
    const entry = new URL(import.meta.url.endsWith('.ts') ? './api-thread.ts' : './api-thread.js', import.meta.url);
    const worker = startModuleWorker(entry, { workerData: data });
    const send = (message: ApiThreadRequest): void => worker.postMessage(message);
    let settle: { resolve: () => void; reject: (error: Error) => void } | null = null;
    let closed: (() => void) | null = null;
    let ready: (() => void) | null = null;
    let exited = false;
    const listening = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    worker.on('message', (event: ApiThreadEvent) => {
      switch (event.type) {
        case 'request':
          void this.dispatch(event.method, event.target, event.body).then((answer) => send({ type: 'response', id: event.id, status: answer.status, text: answer.text }));
          break;
        case 'answered':
          this.requests++;
          break;
        case 'log':
          this.log(event.line);
          break;
        case 'ready':
          ready?.();
          break;
        case 'listening':
          settle?.resolve();
          break;
        case 'listen-error':
          settle?.reject(new Error(event.message));
          break;
        case 'closed':
          closed?.();
          break;
      }
    });
    worker.on('error', (error) => {
      this.log(`api: the API thread failed: ${error.message}`);
      settle?.reject(error);
    });
    let serving = false;
    worker.on('exit', (code) => {
      exited = true;
      settle?.reject(new Error('the API thread exited before it listened'));
      closed?.();
      // Died while serving (not closed): serve again, so the host stays reachable.
      if (serving && !this.closing) void this.restartThread(socketPath, limits, code);
    });
    // Binding is synchronous there; this thread holds the 0600 umask until it is done (no code
    // of this thread runs meanwhile, so nothing else is created under it here), from the moment
    // the thread has loaded and takes messages.
    await new Promise<void>((resolve, reject) => {
      ready = resolve;
      worker.once('exit', () => reject(new Error('the API thread exited at start')));
    });
    const view = new Int32Array(bound);
    withSocketUmask(() => {
      send({ type: 'listen' });
      Atomics.wait(view, 0, 0, API_THREAD_BIND_WAIT_MS);
    });
    try {
      await listening;
    } catch (error) {
      await worker.terminate();
      throw error;
    }
    serving = true;
    this.thread = worker;
    return {
      close: async () => {
        if (exited) return;
        await new Promise<void>((resolve) => {
          closed = resolve;
          send({ type: 'close' });
        });
        await worker.terminate();
      },
    };
  }

  /**
   * The API thread ended while serving (a failure in it: it runs only the HTTP front end). Its
   * requests in flight are lost (their clients see the connection reset); a new thread listens on
   * the same path, at most 5 times a minute, after which the API is no longer served (logged).
   */
  private async restartThread(socketPath: string, limits: HttpLimits, code: number): Promise<void> {
    this.thread = null;
    const now = performance.now();
    this.restarts = this.restarts.filter((at) => now - at < 60_000);
    if (this.restarts.length >= API_THREAD_RESTARTS_PER_MINUTE) {
      this.log(`api: the API thread ended (exit code ${code}) for the ${API_THREAD_RESTARTS_PER_MINUTE + 1}th time in a minute; the API is no longer served on ${socketPath}`);
      return;
    }
    this.restarts.push(now);
    this.log(`api: the API thread ended (exit code ${code}); starting a new one on ${socketPath}`);
    try {
      await claimSocketPath(socketPath); // the dead thread's socket is stale now
      const front = await this.listenOnThread(socketPath, limits);
      if (this.closing) await front.close();
      else this.front = front;
    } catch (error) {
      this.log(`api: could not serve on ${socketPath} again: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /** @internal For tests: the API thread (null when HTTP runs on the calling thread). */
  get apiThread(): Worker | null {
    return this.thread;
  }

  /** Adds an endpoint. `pattern` is a path like `/vms/{name}/snapshot`; literal segments win over `{x}`. */
  route(method: string, pattern: string, handler: ApiHandler, body?: { schema: object; optional?: boolean }): this {
    const segments = pattern.split('/').filter((s) => s !== '');
    this.routes.push({ method, segments, handler, bodySchema: body?.schema, bodyOptional: body?.optional ?? false });
    // Literal segments before parameters, so `/vms/restore` is not taken for `/vms/{name}`.
    this.routes.sort((a, b) => specificity(b) - specificity(a));
    return this;
  }

  /** Stops listening, ends every connection and removes the socket file. */
  async close(): Promise<void> {
    this.closing = true;
    await this.front?.close();
    try {
      unlinkSync(this.socketPath);
    } catch {
      // Already gone (node removes it on close on some versions).
    }
  }

  /** Answers one request: finds the route, parses and checks the body, runs the handler; never rejects. */
  private async dispatch(method: string, target: string, text: string): Promise<HttpAnswer> {
    const { status, body } = await this.handle(method, target, text);
    this.requests++;
    return answerText(status, body);
  }

  private async handle(method: string, target: string, text: string): Promise<ApiResponse> {
    let url: URL;
    try {
      url = new URL(target, 'http://localhost');
    } catch {
      return this.fault(400, `malformed request target '${target}'`, method, target);
    }
    let segments: string[];
    try {
      segments = url.pathname.split('/').filter((s) => s !== '').map((s) => decodeURIComponent(s));
    } catch {
      return this.fault(400, `malformed path '${url.pathname}'`, method, url.pathname);
    }
    let allowed: string[] = [];
    for (const route of this.routes) {
      const params = match(route.segments, segments);
      if (!params) continue;
      if (route.method !== method) {
        allowed.push(route.method);
        continue;
      }
      let body: unknown;
      if (route.bodySchema === undefined) {
        if (text.trim() !== '') return this.fault(400, `${method} ${url.pathname} takes no body`, method, url.pathname);
      } else {
        if (text.trim() === '') {
          if (!route.bodyOptional) return this.fault(400, `${method} ${url.pathname} needs a JSON body`, method, url.pathname);
          body = {};
        } else {
          try {
            body = JSON.parse(text);
          } catch (error) {
            return this.fault(400, `the body is not JSON: ${error instanceof Error ? error.message : String(error)}`, method, url.pathname);
          }
        }
        try {
          checkJson(route.bodySchema, body, 'body');
        } catch (error) {
          return this.fault(400, error instanceof Error ? error.message : String(error), method, url.pathname);
        }
      }
      try {
        return await route.handler({ method, params, query: url.searchParams, body });
      } catch (error) {
        if (error instanceof HostError) return this.fault(error.status, error.message, method, url.pathname);
        if (error instanceof BvError) return this.fault(400, error.message, method, url.pathname);
        return this.fault(500, `internal error: ${error instanceof Error ? error.message : String(error)}`, method, url.pathname);
      }
    }
    allowed = [...new Set(allowed)];
    if (allowed.length > 0) return { status: 405, body: { fault_message: `${method} is not allowed on ${url.pathname} (allowed: ${allowed.join(', ')})` } };
    return { status: 404, body: { fault_message: `no such endpoint: ${method} ${url.pathname}` } };
  }

  private fault(status: number, message: string, method: string, path: string): ApiResponse {
    if (status >= 500 || status === 400) this.log(`api: ${method} ${path}: ${status} ${message}`);
    return { status, body: { fault_message: message } };
  }
}

/** Runs `bind` with the process umask at 0177, so that the socket is 0600 from its first moment. */
function withSocketUmask(bind: () => void): void {
  const umask = process.umask(0o177);
  try {
    bind();
  } finally {
    process.umask(umask);
  }
}

function specificity(route: Route): number {
  // More literal segments first; longer paths first among equals.
  return route.segments.filter((s) => !s.startsWith('{')).length * 100 + route.segments.length;
}

function match(pattern: string[], segments: string[]): Record<string, string> | null {
  if (pattern.length !== segments.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < pattern.length; i++) {
    const part = pattern[i]!;
    if (part.startsWith('{')) params[part.slice(1, -1)] = segments[i]!;
    else if (part !== segments[i]) return null;
  }
  return params;
}

/** Makes `path` free for a new socket: refuses a live socket or a non-socket file, removes a stale one. */
async function claimSocketPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new ApiSocketError(`cannot use ${path}: ${(error as Error).message}`, { cause: error });
  }
  if (!isSocket) throw new ApiSocketError(`${path} exists and is not a socket: refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new ApiSocketError(`${path} is in use: another host is listening on it`);
  unlinkSync(path); // stale: its host died without removing it
}

// ------------------------------------------------------------------------------- host routes

const GROUP_PATCH_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['cpus'],
  properties: { cpus: { type: 'array', minItems: 1, maxItems: 1024, uniqueItems: true, items: { type: 'integer', minimum: 0, maximum: 1023 } } },
};
/** PATCH /vms/{name}: the run state, the VM's IO shares (storage_io), or both. */
const STATE_SCHEMA = {
  type: 'object', additionalProperties: false, minProperties: 1,
  properties: { state: { enum: ['Paused', 'Resumed'] }, io_shares: { type: 'integer', minimum: 1, maximum: 1_000_000 } },
};
/** PATCH /host/storage (docs/storage-io.md): any of the keys. */
const STORAGE_PATCH_SCHEMA = {
  type: 'object', additionalProperties: false, minProperties: 1,
  properties: {
    latency_threshold_ms: { type: 'number', exclusiveMinimum: 0, maximum: 60_000 },
    gamma: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    alpha: { type: 'number', minimum: 0, exclusiveMaximum: 1 },
    beta: { type: 'number', minimum: 0, maximum: 1000 },
    window_min: { type: 'number', minimum: 1, maximum: 4096 },
    window_max: { type: 'number', minimum: 1, maximum: 4096 },
    size_knee_kib: { type: 'number', minimum: 0, maximum: 1_048_576 },
    control: { type: 'boolean' },
  },
};
const SNAPSHOT_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['path'],
  properties: { path: { type: 'string', minLength: 1 }, live: { type: 'boolean' } },
};
const RESTORE_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['path'],
  properties: {
    path: { type: 'string', minLength: 1 },
    name: { type: 'string', pattern: VM_NAME_PATTERN },
    mode: { enum: ['lazy', 'eager', 'map'] },
    paused: { type: 'boolean' },
    group: { type: 'string', pattern: VM_NAME_PATTERN },
  },
};
const FORK_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['name'],
  properties: { name: { type: 'string', pattern: VM_NAME_PATTERN }, paused: { type: 'boolean' } },
};
// Optional body: paused, to inspect the epoch's state before the VM runs on.
/** POST /host/power-loss: the battery budget in ms (at most 10 minutes). */
const POWER_LOSS_SCHEMA = { type: 'object', additionalProperties: false, required: ['battery_ms'], properties: { battery_ms: { type: 'integer', minimum: 0, maximum: 600_000 } } };
const ACTIVATE_SCHEMA = { type: 'object', additionalProperties: false, properties: { paused: { type: 'boolean' } } };
const CONSOLE_INPUT_SCHEMA = {
  type: 'object', additionalProperties: false,
  properties: { data: { type: 'string' }, eof: { type: 'boolean' } },
};
/** The VM's memory bounds it further (Host.setBalloon). */
const BALLOON_AMOUNT = { type: 'integer', minimum: 0 };
const STATS_INTERVAL = { type: 'integer', minimum: 0, maximum: MAX_STATS_INTERVAL_S };
/** PUT /vms/{name}/balloon: Firecracker's body; free_page_reporting may only repeat the VM's setting. */
const BALLOON_PUT_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['amount_mib'],
  properties: { amount_mib: BALLOON_AMOUNT, deflate_on_oom: { type: 'boolean' }, stats_polling_interval_s: STATS_INTERVAL, free_page_reporting: { type: 'boolean' } },
};
const BALLOON_PATCH_SCHEMA = {
  type: 'object', additionalProperties: false, minProperties: 1,
  properties: { amount_mib: BALLOON_AMOUNT, deflate_on_oom: { type: 'boolean' }, stats_polling_interval_s: STATS_INTERVAL },
};
const BALLOON_STATS_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['stats_polling_interval_s'],
  properties: { stats_polling_interval_s: STATS_INTERVAL },
};
const REALLOCATE_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['from', 'to', 'mib'],
  properties: { from: { type: 'string', pattern: VM_NAME_PATTERN }, to: { type: 'string', pattern: VM_NAME_PATTERN }, mib: { type: 'integer', minimum: 1, maximum: 3840 } },
};
/** PATCH /vms/{name}/memory-policy; the VM's memory bounds the sizes further (Host.setMemoryPolicy). */
const MEMORY_POLICY_SCHEMA = {
  type: 'object', additionalProperties: false, minProperties: 1,
  properties: {
    shares: { type: 'integer', minimum: 1, maximum: MAX_SHARES },
    reservation_mib: { type: 'integer', minimum: 0, maximum: 3840 },
    limit_mib: { type: ['integer', 'null'], minimum: 1, maximum: 3840 },
  },
};
/** PATCH /vms/{name}/tier. */
const TIER_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['tier'],
  properties: { tier: { type: 'string', enum: ['interp', 'jit'] } },
};
const MRC_SIZE_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['within'],
  properties: { within: { type: 'number', exclusiveMinimum: 0, maximum: 1 } },
};
const RECLAIM_PATCH_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['tax_rate'],
  properties: { tax_rate: { type: 'number', minimum: 0, maximum: 0.99 } },
};
/** PUT /migrations/receive. */
const RECEIVE_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['listen'],
  properties: { listen: { type: 'string', pattern: '^.+:[0-9]{1,5}$' } },
};
/** PUT /vms/{name}/migrate: Cloud Hypervisor's send-migration fields, QEMU's defaults. */
const MIGRATE_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['destination'],
  properties: {
    destination: { type: 'string', pattern: '^.+:[0-9]{1,5}$' },
    mode: { enum: ['precopy', 'postcopy'] },
    downtime_ms: { type: 'integer', minimum: 1, maximum: 3_600_000 },
    max_bandwidth: { type: 'integer', minimum: 0 },
    timeout_s: { type: 'integer', minimum: 1, maximum: 86_400 },
  },
};
/** PUT /vms/{name}/replicate: disaster-recovery replication to a backup host (T-14). */
const REPLICATE_SCHEMA = {
  type: 'object', additionalProperties: false, required: ['destination'],
  properties: {
    destination: { type: 'string', pattern: '^.+:[0-9]{1,5}$' },
    interval_ms: { type: 'integer', minimum: 1, maximum: 3_600_000 },
    output_commit: { type: 'boolean' },
  },
};
/** Largest console read per request. */
const MAX_CONSOLE_READ = 1024 * 1024;

/** The API's request-body schemas (JSON Schema), by endpoint (docs/api.md lists them). */
export const API_BODY_SCHEMAS: Readonly<Record<string, object>> = {
  'PUT /vms/{name}': VM_CONFIG_SCHEMA,
  'PATCH /vms/{name}': STATE_SCHEMA,
  'PUT /vms/{name}/snapshot': SNAPSHOT_SCHEMA,
  'PUT /vms/restore': RESTORE_SCHEMA,
  'PUT /vms/{name}/fork': FORK_SCHEMA,
  'PUT /vms/{name}/console': CONSOLE_INPUT_SCHEMA,
  'POST /host/reallocate': REALLOCATE_SCHEMA,
  'PUT /vms/{name}/balloon': BALLOON_PUT_SCHEMA,
  'PATCH /vms/{name}/balloon': BALLOON_PATCH_SCHEMA,
  'PATCH /vms/{name}/balloon/statistics': BALLOON_STATS_SCHEMA,
  'PATCH /vms/{name}/memory-policy': MEMORY_POLICY_SCHEMA,
  'PATCH /vms/{name}/tier': TIER_SCHEMA,
  'PATCH /host/reclaim': RECLAIM_PATCH_SCHEMA,
  'PATCH /host/storage': STORAGE_PATCH_SCHEMA,
  'POST /vms/{name}/mrc/size': MRC_SIZE_SCHEMA,
  'PUT /migrations/receive': RECEIVE_SCHEMA,
  'PUT /vms/{name}/migrate': MIGRATE_SCHEMA,
  'PUT /vms/{name}/replicate': REPLICATE_SCHEMA,
  'POST /host/power-loss': POWER_LOSS_SCHEMA,
  'PATCH /groups/{name}': GROUP_PATCH_SCHEMA,
};

/** A non-negative integer query parameter, or a 400. */
function queryInteger(query: URLSearchParams, name: string, fallback: number, max: number): number {
  const text = query.get(name);
  if (text === null) return fallback;
  if (!/^\d{1,15}$/.test(text)) throw new HostError(400, `query parameter ${name} must be a non-negative integer, got '${text}'`);
  return Math.min(Number(text), max);
}

/** A query parameter in (0, 1], or a 400. */
function queryFraction(query: URLSearchParams, name: string, fallback: number): number {
  const text = query.get(name);
  if (text === null) return fallback;
  const value = /^(0(\.\d{1,12})?|1(\.0{1,12})?)$/.test(text) ? Number(text) : NaN;
  if (!(value > 0 && value <= 1)) throw new HostError(400, `query parameter ${name} must be a number above 0 and at most 1, got '${text}'`);
  return value;
}

/** Adds the host's endpoints (docs/api.md) to `api`. */
export function hostRoutes(api: ApiServer, host: Host): ApiServer {
  return api
    .route('GET', '/host', async () => ({ status: 200, body: await host.hostInfo() }))
    .route('GET', '/host/placement', async () => ({ status: 200, body: host.placementStatus() }))
    .route('GET', '/host/storage', async () => ({ status: 200, body: host.storageStatus() }))
    .route('PATCH', '/host/storage', async ({ body }) => {
      const b = body as { latency_threshold_ms?: number; gamma?: number; alpha?: number; beta?: number; window_min?: number; window_max?: number; size_knee_kib?: number; control?: boolean };
      return {
        status: 200,
        body: host.setStorageIo({
          ...(b.latency_threshold_ms === undefined ? {} : { thresholdMs: b.latency_threshold_ms }),
          ...(b.gamma === undefined ? {} : { gamma: b.gamma }),
          ...(b.alpha === undefined ? {} : { alpha: b.alpha }),
          ...(b.beta === undefined ? {} : { beta: b.beta }),
          ...(b.window_min === undefined ? {} : { windowMin: b.window_min }),
          ...(b.window_max === undefined ? {} : { windowMax: b.window_max }),
          ...(b.size_knee_kib === undefined ? {} : { sizeKneeKib: b.size_knee_kib }),
          ...(b.control === undefined ? {} : { control: b.control }),
        }),
      };
    }, { schema: STORAGE_PATCH_SCHEMA })
    .route('GET', '/groups', async () => ({ status: 200, body: { worker_groups: host.workerGroups() } }))
    .route('PATCH', '/groups/{name}', async ({ params, body }) => ({ status: 200, body: await host.setGroupCpus(params['name']!, (body as { cpus: number[] }).cpus) }), { schema: GROUP_PATCH_SCHEMA })
    .route('GET', '/host/stats', async () => ({ status: 200, body: await host.allHostStats() }))
    .route('GET', '/host/pmem-ha', async () => ({ status: 200, body: host.pmemHaStatus() }))
    .route('POST', '/host/pmem-ha/sync', async () => ({ status: 200, body: { vms: await host.pmemHaSync() } }))
    .route('POST', '/host/reallocate', async ({ body }) => {
      const { from, to, mib } = body as { from: string; to: string; mib: number };
      return { status: 202, body: await host.reallocate(from, to, mib) };
    }, { schema: REALLOCATE_SCHEMA })
    .route('GET', '/channels', async () => ({ status: 200, body: await host.channels() }))
    .route('GET', '/channels/{name}', async ({ params }) => ({ status: 200, body: await host.channel(params['name']!) }))
    .route('PUT', '/channels/{name}', async ({ params, body }) => {
      const name = params['name']!;
      if (!new RegExp(VM_NAME_PATTERN).test(name)) throw new HostError(400, `a channel name is 1 to 64 of A-Z a-z 0-9 _ . - starting with a letter or digit, got '${name}'`);
      const { created, channel } = host.putChannel(toChannelSpec(name, body as ChannelJson));
      return { status: created ? 201 : 200, body: channel };
    }, { schema: CHANNEL_BODY_SCHEMA })
    .route('DELETE', '/channels/{name}', async ({ params }) => {
      host.deleteChannel(params['name']!);
      return { status: 204 };
    })
    .route('GET', '/vms', async () => ({ status: 200, body: { vms: await host.listAll() } }))
    .route('GET', '/vms/{name}', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).vmInfo(params['name']!) }))
    .route('PUT', '/vms/{name}', async ({ params, body }) => {
      const config = { ...(body as Record<string, unknown>) };
      if (config['name'] !== undefined && config['name'] !== params['name']) {
        throw new HostError(400, `body.name '${String(config['name'])}' differs from the name in the path '${params['name']}'`);
      }
      config['name'] = params['name'];
      return { status: 201, body: await host.createVm(parseVmConfig(config, 'body')) };
    }, { schema: { type: 'object' } })
    .route('DELETE', '/vms/{name}', async ({ params }) => {
      await host.deleteVm(params['name']!);
      return { status: 204 };
    })
    .route('PATCH', '/vms/{name}', async ({ params, body }) => {
      const { state, io_shares: ioShares } = body as { state?: 'Paused' | 'Resumed'; io_shares?: number };
      const name = params['name']!;
      if (ioShares !== undefined) host.setIoShares(name, ioShares);
      if (state === undefined) return { status: 200, body: await host.vmCalls(name).vmInfo(name) };
      return { status: 200, body: state === 'Paused' ? await host.vmCalls(name).pause(name) : await host.vmCalls(name).resume(name) };
    }, { schema: STATE_SCHEMA })
    .route('PUT', '/vms/{name}/snapshot', async ({ params, body }) => {
      const { path, live } = body as { path: string; live?: boolean };
      return { status: 200, body: await host.vmCalls(params['name']!).snapshot(params['name']!, path, live ?? false) };
    }, { schema: SNAPSHOT_SCHEMA })
    .route('PUT', '/vms/restore', async ({ body }) => {
      const { path, name, mode, paused, group } = body as { path: string; name?: string; mode?: 'lazy' | 'eager' | 'map'; paused?: boolean; group?: string };
      return { status: 201, body: await host.restore(path, name, mode ?? 'lazy', paused ?? false, group) };
    }, { schema: RESTORE_SCHEMA })
    .route('PUT', '/vms/{name}/fork', async ({ params, body }) => {
      const { name, paused } = body as { name: string; paused?: boolean };
      return { status: 201, body: await host.fork(params['name']!, name, paused ?? false) };
    }, { schema: FORK_SCHEMA })
    .route('GET', '/vms/{name}/stats', async ({ params }) => ({ status: 200, body: await host.vmStatsAnywhere(params['name']!) }))
    .route('GET', '/vms/{name}/console', async ({ params, query }) => {
      const offset = queryInteger(query, 'offset', 0, Number.MAX_SAFE_INTEGER);
      const limit = queryInteger(query, 'limit', MAX_CONSOLE_READ, MAX_CONSOLE_READ);
      return { status: 200, body: await host.vmCalls(params['name']!).readConsole(params['name']!, offset, limit) };
    })
    .route('PUT', '/vms/{name}/console', async ({ params, body }) => {
      const { data, eof } = body as { data?: string; eof?: boolean };
      await host.vmCalls(params['name']!).sendInput(params['name']!, data ?? '', eof ?? false);
      return { status: 204 };
    }, { schema: CONSOLE_INPUT_SCHEMA })
    .route('GET', '/vms/{name}/balloon', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).balloon(params['name']!) }))
    .route('PUT', '/vms/{name}/balloon', async ({ params, body }) => {
      const { free_page_reporting: reporting, ...update } = body as BalloonUpdate & { free_page_reporting?: boolean };
      const name = params['name']!;
      if (reporting !== undefined && reporting !== (await host.vmCalls(name).balloon(name)).free_page_reporting) {
        throw new HostError(400, `free_page_reporting of VM '${name}' is ${!reporting}: it is fixed when the VM is created`);
      }
      return { status: 200, body: await host.vmCalls(name).setBalloon(name, update) };
    }, { schema: BALLOON_PUT_SCHEMA })
    .route('PATCH', '/vms/{name}/balloon', async ({ params, body }) => ({ status: 200, body: await host.vmCalls(params['name']!).setBalloon(params['name']!, body as BalloonUpdate) }), { schema: BALLOON_PATCH_SCHEMA })
    .route('GET', '/vms/{name}/balloon/statistics', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).balloonStatistics(params['name']!) }))
    .route('PATCH', '/vms/{name}/balloon/statistics', async ({ params, body }) => {
      const { stats_polling_interval_s: interval } = body as { stats_polling_interval_s: number };
      return { status: 200, body: await host.vmCalls(params['name']!).setBalloon(params['name']!, { stats_polling_interval_s: interval }) };
    }, { schema: BALLOON_STATS_SCHEMA })
    .route('PATCH', '/vms/{name}/tier', async ({ params, body }) => ({ status: 200, body: await host.vmCalls(params['name']!).setTier(params['name']!, (body as { tier: Tier }).tier) }), { schema: TIER_SCHEMA })
    .route('GET', '/vms/{name}/memory-policy', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).memoryPolicy(params['name']!) }))
    .route('PATCH', '/vms/{name}/memory-policy', async ({ params, body }) => ({ status: 200, body: await host.vmCalls(params['name']!).setMemoryPolicy(params['name']!, body as MemoryPolicyUpdate) }), { schema: MEMORY_POLICY_SCHEMA })
    .route('GET', '/vms/{name}/active-memory', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).activeMemory(params['name']!) }))
    .route('GET', '/vms/{name}/mrc', async ({ params, query }) => ({ status: 200, body: await host.vmCalls(params['name']!).missRateCurve(params['name']!, queryFraction(query, 'within', 0.05)) }))
    .route('POST', '/vms/{name}/mrc/size', async ({ params, body }) => ({ status: 200, body: await host.vmCalls(params['name']!).sizeFromMrc(params['name']!, (body as { within: number }).within) }), { schema: MRC_SIZE_SCHEMA })
    .route('GET', '/vms/{name}/memory-errors', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).memoryErrors(params['name']!) }))
    .route('POST', '/vms/{name}/memory-errors', async ({ params, body }) => ({ status: 200, body: await host.vmCalls(params['name']!).injectMemoryErrors(params['name']!, body as MemoryErrorRequest) }), { schema: MEMORY_ERROR_REQUEST_SCHEMA })
    .route('PUT', '/migrations/receive', async ({ body }) => ({ status: 200, body: await host.receiveMigrations((body as { listen: string }).listen) }), { schema: RECEIVE_SCHEMA })
    .route('DELETE', '/migrations/receive', async () => {
      await host.stopReceivingMigrations();
      return { status: 204 };
    })
    .route('GET', '/migrations', async () => ({ status: 200, body: await host.allMigrations() }))
    .route('PUT', '/vms/{name}/migrate', async ({ params, body }) => ({ status: 200, body: await host.migrate(params['name']!, body as MigrateRequest) }), { schema: MIGRATE_SCHEMA })
    .route('GET', '/vms/{name}/migration', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).vmMigration(params['name']!) }))
    .route('PUT', '/vms/{name}/replicate', async ({ params, body }) => ({ status: 200, body: await host.vmCalls(params['name']!).replicate(params['name']!, body as ReplicateRequest) }), { schema: REPLICATE_SCHEMA })
    .route('DELETE', '/vms/{name}/replicate', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).stopReplication(params['name']!) }))
    .route('GET', '/vms/{name}/replication', async ({ params }) => ({ status: 200, body: await host.vmCalls(params['name']!).vmReplication(params['name']!) }))
    .route('GET', '/replicas', async () => ({ status: 200, body: host.replicas() }))
    .route('POST', '/replicas/{name}/activate', async ({ params, body }) => ({ status: 200, body: host.activateReplica(params['name']!, (body as { paused?: boolean } | undefined)?.paused ?? false) }), { schema: ACTIVATE_SCHEMA, optional: true })
    .route('PATCH', '/host/reclaim', async ({ body }) => ({ status: 200, body: host.setTaxRate((body as { tax_rate: number }).tax_rate) }), { schema: RECLAIM_PATCH_SCHEMA })
    .route('POST', '/host/power-loss', async ({ body }) => ({ status: 200, body: await host.powerLoss((body as { battery_ms: number }).battery_ms) }), { schema: POWER_LOSS_SCHEMA })
    .route('GET', '/vms/{name}/log-replication', async ({ params }) => ({ status: 200, body: host.logReplication(params['name']!) }))
    .route('GET', '/log-replicas', async () => ({ status: 200, body: host.logReplicas() }))
    .route('DELETE', '/log-replicas/{name}', async ({ params }) => ({ status: 200, body: host.releaseLogReplica(params['name']!) }));
}
