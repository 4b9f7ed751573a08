/**
 * The control API's own thread (services/host/api-thread.ts, ApiServer.listen's default) against
 * the same server on the calling thread (`thread: false`): the same answers, the socket's mode,
 * the thread's end, and HTTP handled while the calling thread is busy.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { rawRequest } from './raw-request.ts';
import { afterAll, describe, expect, it } from 'vitest';
import { ApiServer } from '../../services/host/api.ts';
import { HostError } from '../../services/host/host.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-api-thread-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A server with three routes: an echo of params and body, a 404 from the handler, a slow one. */
async function testServer(path: string, thread: boolean, log: string[]): Promise<ApiServer> {
  const api = await ApiServer.listen(path, { thread, maxBodyBytes: 1024, log: (line) => log.push(line) });
  api.route('GET', '/things/{name}', ({ params, query }) => ({ status: 200, body: { name: params['name'], q: query.get('q') } }));
  api.route('PUT', '/things/{name}', ({ params, body }) => {
    if (params['name'] === 'missing') throw new HostError(404, 'no such thing');
    return { status: 200, body: { name: params['name'], got: body } };
  }, { schema: { type: 'object', additionalProperties: false, properties: { n: { type: 'integer' } } } });
  api.route('DELETE', '/things/{name}', async () => {
    await new Promise((resolve) => setTimeout(resolve, 20));
    return { status: 204 };
  });
  return api;
}

/** Status line and body of a raw answer (headers other than the status differ only in Date). */
function statusAndBody(raw: string): { status: string; body: string } {
  const end = raw.indexOf('\r\n\r\n');
  return { status: raw.slice(0, raw.indexOf('\r\n')), body: end < 0 ? '' : raw.slice(end + 4) };
}

const REQUESTS = [
  'GET /things/a%20b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n',
  'PUT /things/x HTTP/1.1\r\nContent-Length: 8\r\n\r\n{"n": 3}',
  'PUT /things/x HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops',
  'PUT /things/x HTTP/1.1\r\nContent-Length: 8\r\n\r\n{"m": 3}',
  'PUT /things/missing HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}',
  'GET /things/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}',
  'POST /things/x HTTP/1.1\r\n\r\n',
  'GET /nothing/here HTTP/1.1\r\n\r\n',
  'DELETE /things/x HTTP/1.1\r\n\r\n',
  'PUT /things/x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{}',
  'GET /things/%zz HTTP/1.1\r\n\r\n',
  'NONSENSE\r\n\r\n',
];

function taskCount(): number {
  return readdirSync('/proc/self/task').length;
}

describe('the API on its own thread', () => {
  it('answers every request as the server on the calling thread does, half-closed clients included', async () => {
    const answers: Record<string, { status: string; body: string }[]> = {};
    const logs: Record<string, string[]> = {};
    for (const thread of [false, true]) {
      const path = join(dir, `same-${thread}.sock`);
      const log: string[] = [];
      const api = await testServer(path, thread, log);
      try {
        expect(statSync(path).mode & 0o777).toBe(0o600);
        const list: { status: string; body: string }[] = [];
        for (const request of REQUESTS) list.push(statusAndBody(await rawRequest(path, request)));
        answers[String(thread)] = list;
        logs[String(thread)] = log;
        // The body over the limit and the other answered requests are counted, the malformed HTTP is not.
        expect(api.requests).toBe(REQUESTS.length - 1);
      } finally {
        await api.close();
      }
      expect(existsSync(path)).toBe(false);
    }
    expect(answers['true']).toEqual(answers['false']);
    expect(logs['true']).toEqual(logs['false']);
    // What the answers were: a sample, so that two equally wrong servers cannot pass.
    const list = answers['true']!;
    expect(list[0]).toEqual({ status: 'HTTP/1.1 200 OK', body: '{"name":"a b","q":"1"}\n' });
    expect(list[1]).toEqual({ status: 'HTTP/1.1 200 OK', body: '{"name":"x","got":{"n":3}}\n' });
    expect(list[2]!.status).toBe('HTTP/1.1 400 Bad Request');
    expect(list[4]).toEqual({ status: 'HTTP/1.1 404 Not Found', body: '{"fault_message":"no such thing"}\n' });
    expect(list[6]!.status).toBe('HTTP/1.1 405 Method Not Allowed');
    expect(list[8]!.status).toBe('HTTP/1.1 204 No Content');
    expect(list[9]!.status).toBe('HTTP/1.1 413 Payload Too Large');
    expect(list[11]!.body).toMatch(/malformed HTTP request/);
  });

  it('answers malformed HTTP and oversized bodies while the calling thread is busy, and hands it only whole requests', async () => {
    const path = join(dir, 'busy.sock');
    const api = await testServer(path, true, []);
    try {
      // A client on another thread: this one is about to block.
      const client = new Worker(`
        const { parentPort, workerData } = require('node:worker_threads');
        const { createConnection } = require('node:net');
        const send = (text) => new Promise((resolve) => {
          const c = createConnection(workerData.path);
          let answer = '';
          c.setEncoding('utf8');
          c.on('data', (d) => (answer += d));
          c.on('close', () => resolve({ answer, at: Date.now() }));
          c.on('error', (e) => resolve({ answer: 'error ' + e.message, at: Date.now() }));
          c.on('connect', () => c.end(text));
        });
        parentPort.once('message', async () => {
          const results = await Promise.all([
            send('NONSENSE\\r\\n\\r\\n'),
            send('PUT /things/x HTTP/1.1\\r\\nContent-Length: 5000\\r\\n\\r\\n{}'),
            send('GET /things/y HTTP/1.1\\r\\n\\r\\n'),
          ]);
          parentPort.postMessage(results);
        });
      `, { eval: true, workerData: { path } });
      await new Promise((resolve) => client.once('online', resolve));
      const results = new Promise<{ answer: string; at: number }[]>((resolve) => client.once('message', resolve));
      client.postMessage('go');
      // Busy for 1.5 s: no event loop turn here meanwhile.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1_500);
      const unblocked = Date.now();
      const [malformed, oversized, whole] = await results;
      await client.terminate();
      expect(malformed!.answer).toMatch(/^HTTP\/1\.1 400/);
      expect(oversized!.answer).toMatch(/^HTTP\/1\.1 413/);
      expect(malformed!.at).toBeLessThan(unblocked);
      expect(oversized!.at).toBeLessThan(unblocked);
      // A whole request needs its handler, which runs here: answered after the block.
      expect(whole!.answer).toMatch(/^HTTP\/1\.1 200/);
      expect(whole!.at).toBeGreaterThanOrEqual(unblocked);
    } finally {
      await api.close();
    }
  });

  it('replaces a thread that dies while serving, on the same socket, and says so', async () => {
    const path = join(dir, 'restart.sock');
    const log: string[] = [];
    const api = await testServer(path, true, log);
    try {
      const first = api.apiThread!;
      expect(statusAndBody(await rawRequest(path, 'GET /things/a HTTP/1.1\r\n\r\n')).status).toBe('HTTP/1.1 200 OK');
      await first.terminate(); // as if it had failed
      let answer = '';
      for (let i = 0; i < 200 && !answer.startsWith('HTTP/1.1 200'); i++) {
        await new Promise((resolve) => setTimeout(resolve, 25));
        answer = await rawRequest(path, 'GET /things/b HTTP/1.1\r\n\r\n').catch(() => '');
      }
      expect(statusAndBody(answer)).toEqual({ status: 'HTTP/1.1 200 OK', body: '{"name":"b","q":null}\n' });
      expect(api.apiThread).not.toBe(first);
      expect(statSync(path).mode & 0o777).toBe(0o600);
      expect(log).toContainEqual(expect.stringMatching(/the API thread ended \(exit code 1\); starting a new one/));
    } finally {
      await api.close();
    }
    expect(existsSync(path)).toBe(false);
  });

  it('ends its thread on close, and refuses a socket path as the calling thread does', async () => {
    const before = taskCount();
    const path = join(dir, 'close.sock');
    const api = await testServer(path, true, []);
    expect(taskCount()).toBeGreaterThan(before);
    await api.close();
    expect(existsSync(path)).toBe(false);
    for (let i = 0; i < 100 && taskCount() > before; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(taskCount()).toBe(before);
    // A live socket is refused before any thread starts; a missing directory is named.
    const live = await testServer(path, true, []);
    try {
      await expect(ApiServer.listen(path)).rejects.toThrow(/in use/);
      await expect(ApiServer.listen(join(dir, 'no/such/dir/api.sock'))).rejects.toThrow(/does not exist/);
    } finally {
      await live.close();
    }
  });
});
