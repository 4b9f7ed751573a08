/**
 * The control API under hostile clients (issue 9, "Security of the socket"): random and
 * truncated requests sent as raw bytes, slow and half-open connections, a stale socket left by a
 * killed process, a socket path that cannot exist. The host (services/host/host.ts) and its API
 * (services/host/api.ts) run in this process with real nanokernel guests; throughout, the host
 * must answer, its guests must keep running, and nothing may escape as an uncaught exception.
 */
import { lstatSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, ApiSocketError, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host, type VmInfo } from '../../services/host/host.ts';
import { REPO, startNode } from '../tools/child.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
/** The VMs the checks watch: the fuzz may read, snapshot and fork them, never pause or delete them. */
const WATCHED = ['keep-a', 'keep-b'];
/** Names the fuzz creates, forks and restores into (cleaned up after every run). */
const FUZZ_NAMES = ['f1', 'f2', 'f3'];
const REQUEST_TIMEOUT_MS = 1_000;
const MAX_BODY = 64 * 1024;
/** How long a connection may stay open with nothing answered: the request timeout, node's check interval (1 s), slack. */
const CLOSE_DEADLINE_MS = REQUEST_TIMEOUT_MS + 1_000 + 3_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let dir: string;
let socket: string;
let api: ApiServer;
let host: Host;
const log: string[] = [];
/** Uncaught exceptions and unhandled rejections while the tests run: there must be none. */
const escaped: unknown[] = [];
const trap = (error: unknown) => escaped.push(error);

beforeAll(async () => {
  process.on('uncaughtException', trap);
  process.on('unhandledRejection', trap);
  dir = mkdtempSync(join(tmpdir(), 'bv-host-fuzz-'));
  socket = join(dir, 'api.sock');
  writeFileSync(join(dir, 'garbage.ckpt'), 'not a checkpoint at all');
  api = await ApiServer.listen(socket, { requestTimeoutMs: REQUEST_TIMEOUT_MS, maxBodyBytes: MAX_BODY, log: (line) => log.push(line) });
  // A small pool: whatever the fuzz creates must fit in it or be refused.
  host = await Host.start(parseHostConfig({
    host_memory_mib: 256,
    slice_instructions: 50_000,
    vms: WATCHED.map((name) => ({ name, image: KERNEL, memory_mib: 16, boot_args: 'walker 4M random 0' })),
  }), { log: (line) => log.push(line) });
  hostRoutes(api, host);
});

afterAll(async () => {
  await api?.close();
  await host?.close();
  process.off('uncaughtException', trap);
  process.off('unhandledRejection', trap);
  if (dir) rmSync(dir, { recursive: true, force: true });
  expect(escaped).toEqual([]);
});

/** The watched VMs' instruction counts. */
function counts(): number[] {
  return WATCHED.map((name) => host.vmInfo(name).instructions);
}

/**
 * The host is well: GET /host answers 200, every watched VM is Running and its instruction count
 * has moved past `before`, and nothing escaped. Then every VM the fuzz made is deleted.
 */
async function checkHealthyAndClean(before: number[]): Promise<void> {
  expect(escaped).toEqual([]);
  expect((await apiRequest(socket, 'GET', '/host', undefined, { timeoutMs: 5_000 })).status).toBe(200);
  for (const [index, name] of WATCHED.entries()) {
    for (const deadline = Date.now() + 10_000; ;) {
      const info = (await apiRequest<VmInfo>(socket, 'GET', `/vms/${name}`, undefined, { timeoutMs: 5_000 })).body;
      expect(info.state).toBe('Running');
      if (info.instructions > before[index]!) break;
      expect(Date.now(), `${name} stopped moving at ${info.instructions}`).toBeLessThan(deadline);
      await sleep(10);
    }
  }
  const { body } = await apiRequest<{ vms: VmInfo[] }>(socket, 'GET', '/vms');
  for (const vm of body.vms) {
    if (!WATCHED.includes(vm.name)) expect((await apiRequest(socket, 'DELETE', `/vms/${encodeURIComponent(vm.name)}`)).status).toBe(204);
  }
}

// ------------------------------------------------------------------------ raw HTTP exchange

/** One answer on the wire. */
interface WireResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** 1xx, 204, or the answer to a HEAD without its body. */
  bodyless: boolean;
}

/**
 * Splits what the server sent into responses, checking each is well-formed HTTP/1.1: a status
 * line, headers, and a body of exactly Content-Length bytes (none for 1xx and 204; the answer to
 * a HEAD has none unless it is a refusal sent before the request was parsed). Throws on anything
 * else; `partial` is true when the bytes end inside a response.
 */
function parseResponses(data: Buffer, headRequest: boolean): { responses: WireResponse[]; partial: boolean } {
  const responses: WireResponse[] = [];
  let at = 0;
  let finals = 0;
  while (at < data.length) {
    const end = data.indexOf('\r\n\r\n', at);
    if (end < 0) return { responses, partial: true };
    const [statusLine, ...lines] = data.subarray(at, end).toString('latin1').split('\r\n');
    const match = /^HTTP\/1\.1 ([1-5]\d\d) [^\r\n]*$/.exec(statusLine!);
    if (!match) throw new Error(`not an HTTP/1.1 status line: ${JSON.stringify(statusLine)}`);
    const status = Number(match[1]);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const header = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?(.*)$/.exec(line);
      if (!header) throw new Error(`not a header line: ${JSON.stringify(line)}`);
      headers[header[1]!.toLowerCase()] = header[2]!;
    }
    at = end + 4;
    const headAnswer = headRequest && finals === 0 && (at === data.length || data.subarray(at, at + 5).toString('latin1') === 'HTTP/');
    if (status < 200 || status === 204 || headAnswer) {
      responses.push({ status, headers, body: '', bodyless: true });
      if (status >= 200) finals++;
      continue;
    }
    if (headers['content-length'] === undefined || !/^\d+$/.test(headers['content-length'])) {
      throw new Error(`a ${status} answer without a Content-Length: ${JSON.stringify(headers)}`);
    }
    const length = Number(headers['content-length']);
    if (data.length < at + length) return { responses, partial: true };
    responses.push({ status, headers, body: data.subarray(at, at + length).toString('utf8'), bodyless: false });
    at += length;
    finals++;
  }
  return { responses, partial: false };
}

/** What a connection saw. */
interface Exchange {
  data: Buffer;
  /** We gave up waiting: neither a complete answer nor a close within CLOSE_DEADLINE_MS. */
  timedOut: boolean;
}

/**
 * Sends `bytes` on a fresh connection (in two writes when `split` is inside them), then:
 * `wait` collects answers until the server closes, or the answers so far are complete and the
 * line has been quiet for a moment; `end` half-closes and collects until the server closes;
 * `destroy` hangs up at once.
 */
function exchange(bytes: Buffer, mode: 'wait' | 'end' | 'destroy', split: number, headRequest: boolean): Promise<Exchange> {
  return new Promise((resolve) => {
    const connection: Socket = createConnection(socket);
    const chunks: Buffer[] = [];
    let settled = false;
    let quiet: NodeJS.Timeout | undefined;
    const finish = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(quiet);
      clearTimeout(deadline);
      connection.destroy();
      resolve({ data: Buffer.concat(chunks), timedOut });
    };
    const deadline = setTimeout(() => finish(true), CLOSE_DEADLINE_MS);
    connection.on('error', () => {}); // EPIPE or ECONNRESET when the server hangs up first: 'close' follows
    connection.on('close', () => finish(false));
    connection.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (mode !== 'wait') return;
      clearTimeout(quiet);
      let complete = false;
      try {
        const parsed = parseResponses(Buffer.concat(chunks), headRequest);
        complete = !parsed.partial && parsed.responses.some((response) => response.status >= 200);
      } catch {
        complete = true; // malformed: stop and let the check report it
      }
      if (complete) quiet = setTimeout(() => finish(false), 60);
    });
    connection.on('connect', () => {
      if (mode === 'destroy') {
        connection.write(bytes, () => finish(false));
        return;
      }
      const first = bytes.subarray(0, split);
      const second = bytes.subarray(split);
      connection.write(first);
      const rest = () => (mode === 'end' ? connection.end(second) : connection.write(second));
      if (second.length === 0) rest();
      else setTimeout(() => !connection.destroyed && rest(), 5);
    });
  });
}

/** Every complete answer is HTTP; error answers are JSON with a fault_message; the host never answers 500. */
function checkAnswers(seen: Exchange, mode: 'wait' | 'end' | 'destroy', headRequest: boolean, what: string): WireResponse[] {
  if (mode === 'destroy') return [];
  const { responses, partial } = parseResponses(seen.data, headRequest);
  // A half-closed connection is closed; any other is answered or closed, within the request timeout.
  expect(seen.timedOut && (mode === 'end' || responses.length === 0), `no ${mode === 'end' ? 'close' : 'answer nor close'} within ${CLOSE_DEADLINE_MS} ms: ${what}`).toBe(false);
  // The server may not stop in the middle of an answer.
  expect(partial, `a cut-off answer ${JSON.stringify(seen.data.toString('latin1').slice(0, 300))} to ${what}`).toBe(false);
  for (const response of responses) {
    const where = `${response.status} ${response.body.slice(0, 300)} answering ${what}`;
    expect([100, 200, 201, 204, 400, 404, 405, 408, 409, 413, 431, 507], where).toContain(response.status);
    if (response.bodyless) continue;
    expect(response.headers['content-type'], where).toBe('application/json');
    let body: unknown;
    expect(() => (body = JSON.parse(response.body)), where).not.toThrow();
    if (response.status >= 400) {
      expect(body, where).toMatchObject({ fault_message: expect.any(String) });
      expect((body as { fault_message: string }).fault_message.length, where).toBeGreaterThan(0);
    }
  }
  return responses;
}

// ------------------------------------------------------------------------ the request grammar

/** Framing of the body: what Content-Length / Transfer-Encoding say about it. */
type Framing = 'length' | 'none' | 'short' | 'long' | 'negative' | 'garbage' | 'double' | 'huge' | 'chunked' | 'chunked-broken' | 'chunked-unended' | 'chunked-and-length';

interface FuzzRequest {
  method: string;
  target: string;
  version: string;
  host: boolean;
  close: boolean;
  expectContinue: boolean;
  extraHeaders: [string, string][];
  framing: Framing;
  body: Buffer;
  /** How many chunks a chunked body is sent in. */
  chunks: number;
}

const segment = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9._~-]{1,12}$/),
  fc.constantFrom('%zz', '%', '%4', '%00', '%2F', '%2e%2e', '..', '.', '%E2%82', '%C0%AF', 'caf%C3%A9', '%u1234', '%25', '%20', ';x=1', '\u00e9', ' ', '\t', '\\'),
  fc.string({ unit: 'binary-ascii', maxLength: 8 }),
);
const vmName = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom(...WATCHED) },
  { weight: 4, arbitrary: fc.constantFrom(...FUZZ_NAMES) },
  { weight: 1, arbitrary: fc.constantFrom('restore', 'nobody', '-x', 'a'.repeat(65), 'f1%2Ff2', 'f%31') },
  { weight: 2, arbitrary: segment },
);
const query = fc.oneof(
  fc.constantFrom('', '?', '?offset=0', '?offset=-1', '?offset=1e3', '?offset=99999999999999999999', '?offset=12&limit=0', '?limit=abc', '?offset=%zz', '?offset=5&offset=6'),
  fc.nat({ max: 1 << 21 }).map((offset) => `?offset=${offset}`),
  fc.string({ unit: 'binary-ascii', maxLength: 12 }).map((text) => `?${text}`),
);
const target = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom('/vms', '/host', '/host/stats', '/vms/restore', '/vms/', '/host/', '//vms', '/vms?', '*', '', 'http://localhost/host', '/host#frag', '/vms/restore/fork') },
  { weight: 4, arbitrary: vmName.map((name) => `/vms/${name}`) },
  { weight: 4, arbitrary: fc.tuple(vmName, fc.constantFrom('snapshot', 'fork', 'console', 'stats', 'nope', '')).map(([name, tail]) => `/vms/${name}/${tail}`) },
  { weight: 2, arbitrary: fc.tuple(vmName, query).map(([name, q]) => `/vms/${name}/console${q}`) },
  { weight: 2, arbitrary: fc.array(segment, { maxLength: 6 }).map((parts) => `/${parts.join('/')}`) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 40_000 }).map((length) => `/vms/${'a'.repeat(length)}`) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 40 }) },
);
const method = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('GET', 'PUT', 'PATCH', 'DELETE') },
  { weight: 2, arbitrary: fc.constantFrom('POST', 'HEAD', 'OPTIONS', 'TRACE', 'CONNECT', 'PROPFIND', 'get', 'G3T', 'PUT PUT', '', 'X'.repeat(100), 'BREW') },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 10 }) },
);

const jsonText = (value: unknown) => JSON.stringify(value);
/** Left out half the time. */
const optional = <T>(arbitrary: fc.Arbitrary<T>) => fc.option(arbitrary, { nil: undefined, freq: 2 });
/** Mostly a good value, sometimes a bad one. */
const usually = <T, U>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<U>) => fc.oneof({ weight: 9, arbitrary: good }, { weight: 1, arbitrary: bad });
const checkpointPath = usually(fc.constantFrom('a.ckpt', 'b.ckpt'), fc.constantFrom('garbage.ckpt', 'missing.ckpt', join('no', 'such', 'dir', 'x.ckpt'), '.')).map((name) => join(dirOf(), name));
/** The temporary directory, known once beforeAll ran (the arbitraries are built before). */
function dirOf(): string {
  return dir;
}
const nameOrJunk = fc.oneof(fc.constantFrom(...FUZZ_NAMES, ...WATCHED, 'restore', ''), fc.string({ maxLength: 6 }), fc.integer());
/** Bodies near the schemas of the endpoints, so the handlers run, not only the checks. */
const vmBody = fc.record({
  image: usually(fc.constant(KERNEL), fc.constantFrom(join(REPO, 'examples/nanokernel/nothing.s'), join(REPO, 'README.md'), '', 7)),
  memory_mib: usually(fc.constantFrom(2, 8, 16, 3840), fc.constantFrom(3841, 1, 0, -4, '16', 1.5)),
  boot_args: optional(usually(fc.constantFrom('sieve 100', 'crc32 64', '', 'walker 64K seq 1', 'no such program'), fc.constantFrom('x'.repeat(5_000), 'a\u0000b'))),
  vcpus: optional(usually(fc.constantFrom(1, 2), fc.constantFrom(0, 33))),
  start_paused: optional(fc.boolean()),
  max_instructions: optional(usually(fc.constantFrom(1, 100_000), fc.constant(0))),
  name: optional(usually(fc.constant(undefined), nameOrJunk)),
  mmu: optional(usually(fc.constantFrom({ mode: 'nested' }, { mode: 'shadow', batch: 4 }), fc.constantFrom({ mode: 'nested', traces: true }, { batch: 2000 }))),
}, { requiredKeys: ['image', 'memory_mib'] });
const stateBody = fc.record({ state: fc.oneof({ weight: 4, arbitrary: fc.constantFrom('Paused', 'Resumed') }, { weight: 1, arbitrary: fc.constantFrom('paused', 'Stopped', 1) }) }, { requiredKeys: [] });
const snapshotBody = fc.record({ path: checkpointPath, live: optional(fc.oneof(fc.boolean(), fc.constant('yes'))) }, { requiredKeys: ['path'] });
const restoreBody = fc.record({ path: checkpointPath, name: optional(usually(fc.constantFrom(...FUZZ_NAMES), nameOrJunk)), mode: optional(usually(fc.constantFrom('lazy', 'eager', 'map'), fc.constant('lazier'))), paused: optional(fc.boolean()) }, { requiredKeys: ['path'] });
const forkBody = fc.record({ name: usually(fc.constantFrom(...FUZZ_NAMES), nameOrJunk), paused: optional(fc.boolean()) }, { requiredKeys: ['name'] });
const consoleBody = fc.record({ data: optional(fc.string({ maxLength: 40 })), eof: optional(fc.boolean()) }, { requiredKeys: [] });
const nearValidBody = fc.oneof(vmBody, stateBody, snapshotBody, restoreBody, forkBody, consoleBody).map(jsonText);
const body = fc.oneof(
  { weight: 3, arbitrary: fc.constant('') },
  { weight: 6, arbitrary: nearValidBody },
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }).map(jsonText) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 20 }).map(jsonText) },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }).map((text) => `{${text}`) },
  { weight: 1, arbitrary: fc.constantFrom('{"state":"Paused"', 'null', '[]', '"x"', '{"__proto__":{"state":"Paused"}}', '{"constructor":1}', '\u0000', '\uFEFF{}', '{"a":1}{"b":2}') },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 200 }).map((bytes) => Buffer.from(bytes)) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_BODY - 16, max: 3 * MAX_BODY }).map((size) => `{"data":"${'y'.repeat(size)}"}`) },
).map((text) => (typeof text === 'string' ? Buffer.from(text, 'utf8') : text));
const framing = fc.oneof(
  { weight: 12, arbitrary: fc.constant<Framing>('length') },
  { weight: 6, arbitrary: fc.constantFrom<Framing>('none', 'short', 'negative', 'garbage', 'double', 'huge', 'chunked', 'chunked-broken', 'chunked-and-length') },
  // These two leave the server waiting for bytes that never come: it must give up (408).
  { weight: 1, arbitrary: fc.constantFrom<Framing>('long', 'chunked-unended') },
);
const headerName = fc.oneof(fc.constantFrom('X-A', 'Content-Type', 'Accept', 'Upgrade', 'Connection', 'Transfer-Encoding', 'Content-Encoding', 'Cookie', 'Host'), fc.stringMatching(/^[A-Za-z-]{1,10}$/), fc.string({ unit: 'binary-ascii', maxLength: 10 }));
const headerValue = fc.oneof(fc.constantFrom('application/json', 'text/plain', 'websocket', 'gzip', 'keep-alive', 'close', 'upgrade', 'identity', 'x'.repeat(20_000)), fc.string({ unit: 'binary-ascii', maxLength: 20 }));
const wildRequest: fc.Arbitrary<FuzzRequest> = fc.record({
  method,
  target,
  version: fc.oneof({ weight: 10, arbitrary: fc.constant('HTTP/1.1') }, { weight: 1, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1x', 'HTTP/9', '') }),
  host: fc.boolean(),
  close: fc.boolean(),
  expectContinue: fc.boolean(),
  extraHeaders: fc.array(fc.tuple(headerName, headerValue), { maxLength: 3 }),
  framing,
  body,
  chunks: fc.integer({ min: 1, max: 4 }),
});

/** A well-formed request to an endpoint with a body near its schema: these reach the handlers. */
const saneRequest: fc.Arbitrary<FuzzRequest> = fc.tuple(
  fc.oneof(
    { weight: 2, arbitrary: fc.tuple(fc.constant('GET'), fc.constantFrom('/host', '/host/stats', '/vms', ...WATCHED.flatMap((name) => [`/vms/${name}`, `/vms/${name}/stats`, `/vms/${name}/console?offset=10`])), fc.constant('')) },
    { weight: 2, arbitrary: fc.tuple(fc.constant('GET'), fc.oneof(vmName.map((name) => `/vms/${name}`), vmName.map((name) => `/vms/${name}/stats`), fc.tuple(vmName, query).map(([name, q]) => `/vms/${name}/console${q}`)), fc.constant('')) },
    { weight: 1, arbitrary: fc.tuple(fc.constantFrom('POST', 'OPTIONS', 'DELETE', 'PATCH'), fc.constantFrom('/host', '/host/stats', '/vms'), fc.constant('')) },
    { weight: 3, arbitrary: fc.tuple(fc.constant('PUT'), fc.constantFrom(...FUZZ_NAMES).map((name) => `/vms/${name}`), vmBody.map(jsonText)) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('PUT'), fc.constantFrom(...WATCHED).map((name) => `/vms/${name}`), vmBody.map(jsonText)) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('DELETE'), vmName.map((name) => `/vms/${name}`), fc.constant('')) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('PATCH'), vmName.map((name) => `/vms/${name}`), stateBody.map(jsonText)) },
    // Resuming a running VM is a 409; spareWatched lets exactly this PATCH through to the watched VMs.
    { weight: 1, arbitrary: fc.tuple(fc.constant('PATCH'), fc.constantFrom(...WATCHED).map((name) => `/vms/${name}`), fc.constant(jsonText({ state: 'Resumed' }))) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('PUT'), vmName.map((name) => `/vms/${name}/snapshot`), snapshotBody.map(jsonText)) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('PUT'), fc.constant('/vms/restore'), restoreBody.map(jsonText)) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('PUT'), vmName.map((name) => `/vms/${name}/fork`), forkBody.map(jsonText)) },
    // Input for a watched VM (it does not read it): a 204. Only the fuzz's own VMs get their input closed.
    { weight: 2, arbitrary: fc.tuple(fc.constant('PUT'), fc.constantFrom(...WATCHED).map((name) => `/vms/${name}/console`), fc.string({ maxLength: 40 }).map((data) => jsonText({ data }))) },
    { weight: 1, arbitrary: fc.tuple(fc.constant('PUT'), fc.constantFrom(...FUZZ_NAMES).map((name) => `/vms/${name}/console`), consoleBody.map(jsonText)) },
    { weight: 2, arbitrary: fc.tuple(fc.constant('PUT'), vmName.map((name) => `/vms/${name}/console`), fc.integer({ min: MAX_BODY, max: 2 * MAX_BODY }).map((size) => jsonText({ data: 'z'.repeat(size) }))) },
  ),
  fc.boolean(),
  fc.constantFrom<Framing>('length', 'length', 'length', 'chunked'),
  fc.integer({ min: 1, max: 3 }),
).map(([[verb, path, text], close, framed, chunks]) => ({
  method: verb, target: path, version: 'HTTP/1.1', host: true, close, expectContinue: false, extraHeaders: [], framing: framed, body: Buffer.from(text, 'utf8'), chunks,
}));
const request = fc.oneof(saneRequest, wildRequest);

/** The host path a request names, decoded the way the API does; undefined when it cannot be parsed. */
function namedVm(target: string): string | undefined {
  try {
    const segments = new URL(target, 'http://localhost').pathname.split('/').filter((part) => part !== '').map((part) => decodeURIComponent(part));
    return segments.length === 2 && segments[0] === 'vms' ? segments[1] : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The fuzz may not pause or delete the VMs the checks watch (everything else is fair game): a
 * DELETE or PATCH of one becomes a GET, unless it is a well-framed PATCH that only resumes.
 */
function spareWatched(request: FuzzRequest): FuzzRequest {
  const name = namedVm(request.target);
  if (name === undefined || !WATCHED.includes(name) || !['PATCH', 'DELETE'].includes(request.method)) return request;
  const resumes = request.method === 'PATCH' && request.framing === 'length' && request.body.toString('latin1') === jsonText({ state: 'Resumed' });
  return resumes ? request : { ...request, method: 'GET' };
}

/** The request as bytes on the wire. */
function encode(request: FuzzRequest): Buffer {
  const lines = [`${request.method} ${request.target} ${request.version}`];
  if (request.host) lines.push('Host: localhost');
  if (request.close) lines.push('Connection: close');
  if (request.expectContinue) lines.push('Expect: 100-continue');
  for (const [name, value] of request.extraHeaders) lines.push(`${name}: ${value}`);
  const length = request.body.length;
  let payload = request.body;
  switch (request.framing) {
    case 'length': lines.push(`Content-Length: ${length}`); break;
    case 'none': break;
    case 'short': lines.push(`Content-Length: ${Math.floor(length / 2)}`); break;
    case 'long': lines.push(`Content-Length: ${length + 7}`); break;
    case 'negative': lines.push('Content-Length: -1'); break;
    case 'garbage': lines.push(`Content-Length: ${length}abc`); break;
    case 'double': lines.push(`Content-Length: ${length}`, `Content-Length: ${length + 1}`); break;
    case 'huge': lines.push('Content-Length: 99999999999999999999999'); break;
    case 'chunked': case 'chunked-broken': case 'chunked-unended': case 'chunked-and-length': {
      lines.push('Transfer-Encoding: chunked');
      if (request.framing === 'chunked-and-length') lines.push(`Content-Length: ${length}`);
      const size = Math.max(1, Math.ceil(length / request.chunks));
      const parts: Buffer[] = [];
      for (let at = 0; at < length; at += size) {
        const chunk = request.body.subarray(at, at + size);
        const header = request.framing === 'chunked-broken' && at === 0 ? `${(chunk.length + 3).toString(16)}zz` : chunk.length.toString(16);
        parts.push(Buffer.from(`${header}\r\n`), chunk, Buffer.from('\r\n'));
      }
      if (request.framing !== 'chunked-unended') parts.push(Buffer.from('0\r\n\r\n'));
      payload = Buffer.concat(parts);
      break;
    }
  }
  return Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), payload]);
}

/** How one request is delivered: whole, or cut at `cut` (a fraction of its bytes) and then ended or dropped; `split` splits the writes. */
const fraction = fc.integer({ min: 0, max: 9_999 }).map((n) => n / 10_000);
const delivery = fc.record({
  cut: fc.oneof({ weight: 2, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fraction }),
  hangUp: fc.constantFrom<'end' | 'destroy'>('end', 'destroy'),
  split: fraction,
});

describe('the control API under hostile requests', () => {
  it('answers random and truncated raw requests with HTTP and JSON faults; the host and its guests keep running', async () => {
    let sent = 0;
    const statuses = new Map<number, number>();
    await fc.assert(fc.asyncProperty(fc.array(fc.tuple(request, delivery), { minLength: 1, maxLength: 4 }), async (batch) => {
      const before = counts();
      await Promise.all(batch.map(async ([raw, how]) => {
        const spared = spareWatched(raw);
        const bytes = encode(spared);
        const headRequest = spared.method === 'HEAD';
        const what = `${JSON.stringify(bytes.toString('latin1').slice(0, 400))} (${bytes.length} bytes, ${how.cut === null ? 'whole' : `cut at ${how.cut} and ${how.hangUp}`})`;
        const mode = how.cut === null ? 'wait' : how.hangUp;
        const wire = how.cut === null ? bytes : bytes.subarray(0, Math.floor(how.cut * bytes.length));
        const seen = await exchange(wire, mode, Math.floor(how.split * wire.length), headRequest);
        sent++;
        for (const response of checkAnswers(seen, mode, headRequest, what)) statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      }));
      await checkHealthyAndClean(before);
    }), { numRuns: 150 });
    // The grammar reached the handlers, not only the parser: success, client faults and refusals.
    expect(sent).toBeGreaterThanOrEqual(150);
    for (const status of [200, 201, 204, 400, 404, 405, 409, 413, 431]) expect(statuses.get(status) ?? 0, `answers ${JSON.stringify([...statuses])}`).toBeGreaterThan(0);
    expect(log.some((line) => /refused a malformed request/.test(line))).toBe(true);
  }, 150_000);

  it('keeps the guests at speed and the API answering while 50 clients stall and one trickles; the timeout closes them', async () => {
    /** Instructions per ms of the watched VMs together, over `ms`. */
    const rate = async (ms: number) => {
      const start = counts().reduce((a, b) => a + b, 0);
      const t0 = performance.now();
      await sleep(ms);
      return (counts().reduce((a, b) => a + b, 0) - start) / (performance.now() - t0);
    };
    const alone = await rate(700);
    expect(alone).toBeGreaterThan(0);

    const opened = performance.now();
    const partials = [
      'GET /host HTTP/1.1\r\nHost: x\r\n',
      'PUT /vms/f1 HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"image":',
      'PATCH /vms/keep-a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"state":',
      'GET /vms/keep-a/conso',
      '',
    ];
    const stalled = Array.from({ length: 50 }, (_, index) => held(partials[index % partials.length]!));
    const trickler = held('');
    const message = 'GET /host HTTP/1.1\r\nHost: localhost\r\n\r\n';
    let trickled = 0;
    const drip = setInterval(() => {
      if (trickled < message.length && !trickler.socket.destroyed) trickler.socket.write(message[trickled++]!);
    }, 200);
    try {
      await Promise.all([...stalled, trickler].map((client) => client.connected));
      // While they hang on: the guests run at speed and the API answers at once.
      const crowded = await rate(700);
      const asked = performance.now();
      expect((await apiRequest(socket, 'GET', '/host', undefined, { timeoutMs: 2_000 })).status).toBe(200);
      expect(performance.now() - asked).toBeLessThan(500);
      expect(crowded, `${crowded.toFixed(0)} instructions/ms with the stalled clients, ${alone.toFixed(0)} without`).toBeGreaterThan(alone * 0.5);

      // The request timeout ends every one of them, the trickler too (long before it is done).
      const ends = await Promise.all([...stalled, trickler].map((client) => client.closed));
      expect(performance.now() - opened).toBeLessThan(CLOSE_DEADLINE_MS);
      expect(trickled).toBeLessThan(message.length);
      // Each is told why, with the API's JSON fault, and nothing of its request was served.
      for (const answer of ends) expect(answer).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n[^]*\r\n\r\n\{"fault_message":"the request took too long"\}$/);
      expect((await apiRequest(socket, 'GET', '/host')).status).toBe(200);
    } finally {
      clearInterval(drip);
      for (const client of [...stalled, trickler]) client.socket.destroy();
    }
  }, 60_000);
});

/** A client that sends `text` and then nothing; `closed` resolves with all it received when the server hangs up. */
function held(text: string): { socket: Socket; connected: Promise<void>; closed: Promise<string> } {
  const client = createConnection(socket);
  let received = '';
  client.setEncoding('latin1');
  client.on('data', (chunk: string) => (received += chunk));
  client.on('error', () => {});
  const connected = new Promise<void>((resolve) => client.on('connect', () => (text === '' ? resolve() : client.write(text, () => resolve()))));
  const closed = new Promise<string>((resolve) => client.on('close', () => resolve(received)));
  return { socket: client, connected, closed };
}

describe('the API socket path', () => {
  it('replaces a stale socket left by a process that was killed, and serves on it', async () => {
    const path = join(dir, 'stale.sock');
    const owner = startNode(['-e', `require('node:net').createServer().listen(${JSON.stringify(path)}, () => console.log('listening'))`]);
    try {
      await owner.waitFor('stdout', 'listening');
    } finally {
      await owner.stop('SIGKILL');
    }
    // The file stays behind, and nobody answers on it.
    expect(lstatSync(path).isSocket()).toBe(true);
    await expect(apiRequest(path, 'GET', '/ping')).rejects.toThrow(/no host is listening/);

    const replaced = await ApiServer.listen(path);
    try {
      replaced.route('GET', '/ping', () => ({ status: 200, body: { pong: true } }));
      expect(await apiRequest(path, 'GET', '/ping')).toEqual({ status: 200, body: { pong: true } });
      expect(statSync(path).mode & 0o777).toBe(0o600);
    } finally {
      await replaced.close();
    }
    expect(() => lstatSync(path)).toThrow(/ENOENT/);
  });

  it('refuses a socket in a directory that does not exist, or a path too long for a socket, with a clear ApiSocketError', async () => {
    const missing = join(dir, 'no', 'such', 'dir', 'api.sock');
    // libuv binds a longer path truncated: the server would listen on, and leave behind, another file.
    const long = join(dir, `${'x'.repeat(120)}.sock`);
    const refusals = await Promise.all([missing, long].map((path) => ApiServer.listen(path).then(() => null, (error: unknown) => error)));
    for (const refusal of refusals) {
      expect(refusal).toBeInstanceOf(ApiSocketError);
      expect((refusal as ApiSocketError).code).toBe('BV_API_SOCKET');
    }
    expect((refusals[0] as Error).message).toBe(`cannot listen on ${missing}: the directory ${join(dir, 'no', 'such', 'dir')} does not exist`);
    expect((refusals[1] as Error).message).toMatch(/^cannot listen on .*\.sock: the path is \d+ bytes, longer than a Unix socket path may be \(\d+ bytes\)$/);
    expect(readdirSync(dir).filter((name) => name.startsWith('xxx'))).toEqual([]);
    // The host's own API is unharmed.
    expect((await apiRequest(socket, 'GET', '/host')).status).toBe(200);
  });
});
