/**
 * The control API's HTTP front end: the node:http server on the Unix socket, the request limits
 * (body size, whole-request time, header size, connections), the answers to malformed HTTP, and
 * writing each answer. What a request means (routes, JSON, schemas, handlers) is the dispatcher's
 * (ApiServer in api.ts): the front end hands it the method, target and body text, and writes
 * back the status and JSON text it gets.
 *
 * It runs either on the host's thread or on a thread of its own (api-thread.ts, the default for
 * ApiServer.listen): there the parsing, the connections and the socket writes stay off the thread
 * that runs the guests, which then only sees one message per request.
 */
import { chmodSync, existsSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { dirname } from 'node:path';
import type { Socket } from 'node:net';

/** Clients at once; more are refused at accept (a host is driven by a few operators). */
const MAX_CONNECTIONS = 256;

/** An answer ready to write: the status and the JSON text (null: no body, 204 for a 200). */
export interface HttpAnswer {
  status: number;
  text: string | null;
}

/** What the front end needs from whoever gives requests their meaning. */
export interface HttpBackend {
  /** Answers one whole request (its body at most maxBodyBytes); never rejects. */
  dispatch(method: string, target: string, body: string): Promise<HttpAnswer>;
  /** A request the front end answered itself (a body over the limit). */
  answered(): void;
  /** One line per refused request. */
  log(line: string): void;
}

/** Limits of the front end. */
export interface HttpLimits {
  maxBodyBytes: number;
  requestTimeoutMs: number;
}

/** A listening front end. */
export interface HttpFront {
  /** Stops listening and ends every connection. */
  close(): Promise<void>;
}

/** Turns a handler's body into the text the front end writes (`undefined`: no body). */
export function answerText(status: number, body: unknown): HttpAnswer {
  return { status, text: body === undefined || status === 204 ? null : `${JSON.stringify(body)}\n` };
}

/**
 * Listens on `socketPath` and serves requests through `backend`. `bind` runs the bind itself
 * (synchronous in node for a Unix socket): the caller wraps it in the umask that makes the
 * socket 0600 from its first moment. Rejects with the reason when the socket cannot be created.
 */
export async function listenHttp(socketPath: string, limits: HttpLimits, backend: HttpBackend, bind: (listen: () => void) => void): Promise<HttpFront> {
  const timeout = limits.requestTimeoutMs;
  // node checks the timeouts every connectionsCheckingInterval (30 s by default): check often
  // enough that a stalled request is closed within a second of its timeout. A Unix socket has
  // no host: a request without a Host header is served (node would answer it a bare 400, not
  // the API's JSON fault).
  const server = createServer({
    requestTimeout: timeout, headersTimeout: timeout, connectionsCheckingInterval: Math.min(1_000, timeout), keepAliveTimeout: 5_000, maxHeaderSize: 16 * 1024,
    requireHostHeader: false,
  });
  // A client that half-closes after its request (`nc -N`) still gets the answer: node would end
  // the socket at the client's FIN, before an answer that comes back from the host's thread.
  // (node:http's own switch; with it node ends the socket after the answer being prepared.)
  (server as unknown as { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  const sockets = new Set<Socket>();
  server.maxConnections = MAX_CONNECTIONS;
  server.on('request', (request: IncomingMessage, response: ServerResponse) => serve(request, response, limits.maxBodyBytes, backend));
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    // A client that went away (EPIPE, ECONNRESET) did nothing wrong: just drop the connection.
    if (error.code === 'EPIPE' || error.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    // Malformed HTTP, an oversized header, a request that took too long: answer and hang up.
    const status = error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : error.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    backend.log(`api: refused a malformed request (${error.code ?? error.message})`);
    if (socket.writable) {
      const body = JSON.stringify({ fault_message: status === 408 ? 'the request took too long' : status === 431 ? 'request headers too large' : `malformed HTTP request (${error.code ?? 'parse error'})` });
      socket.end(`HTTP/1.1 ${status} ${status === 408 ? 'Request Timeout' : status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    } else {
      socket.destroy();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => {
      // libuv reports a missing directory as EACCES: say what is wrong.
      reject(new Error(existsSync(dirname(socketPath)) ? error.message : `the directory ${dirname(socketPath)} does not exist`));
    });
    bind(() => server.listen(socketPath, () => resolve()));
  });
  chmodSync(socketPath, 0o600);
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

function serve(request: IncomingMessage, response: ServerResponse, maxBodyBytes: number, backend: HttpBackend): void {
  const declared = Number(request.headers['content-length'] ?? 0);
  if (Number.isFinite(declared) && declared > maxBodyBytes) {
    backend.answered();
    write(response, answerText(413, { fault_message: `the request body is ${declared} bytes; the limit is ${maxBodyBytes}` }), true);
    request.resume();
    return;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let refused = false;
  request.on('data', (chunk: Buffer) => {
    if (refused) return;
    size += chunk.length;
    if (size > maxBodyBytes) {
      refused = true;
      backend.answered();
      write(response, answerText(413, { fault_message: `the request body is over the limit of ${maxBodyBytes} bytes` }), true);
      return;
    }
    chunks.push(chunk);
  });
  request.on('end', () => {
    if (refused) return;
    void backend.dispatch(request.method ?? 'GET', request.url ?? '/', Buffer.concat(chunks).toString('utf8')).then((answer) => write(response, answer, false));
  });
  request.on('error', () => response.destroy());
}

function write(response: ServerResponse, answer: HttpAnswer, close: boolean): void {
  if (response.headersSent || response.destroyed) return;
  if (close) response.setHeader('Connection', 'close');
  if (answer.text === null) {
    response.writeHead(answer.status === 200 ? 204 : answer.status).end();
    return;
  }
  response.writeHead(answer.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(answer.text) }).end(answer.text);
}
