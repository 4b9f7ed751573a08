/**
 * The control API's own thread (ApiServer.listen's default, as Firecracker's API thread): the
 * HTTP front end (api-http.ts) runs here, and each whole request goes to the host's thread as
 * one message, whose answer comes back as another. Started by ApiServer; not an entry point.
 *
 * Messages from the host's thread: `listen` (bind now: the host's thread holds the umask and
 * waits on `bound` meanwhile), `response` {id, status, text}, `close`. To it: `ready` (loaded), `listening` or
 * `listen-error` {message}, `request` {id, method, target, body}, `answered`, `log` {line},
 * `closed`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { listenHttp, type HttpAnswer, type HttpFront } from './api-http.ts';

/** What ApiServer passes as workerData. */
export interface ApiThreadData {
  socketPath: string;
  maxBodyBytes: number;
  requestTimeoutMs: number;
  /** Int32 [0]: set to 1 (and notified) once the bind has been done. */
  bound: SharedArrayBuffer;
}

export type ApiThreadRequest = { type: 'listen' } | { type: 'response'; id: number; status: number; text: string | null } | { type: 'close' };
export type ApiThreadEvent =
  | { type: 'ready' }
  | { type: 'listening' }
  | { type: 'listen-error'; message: string }
  | { type: 'request'; id: number; method: string; target: string; body: string }
  | { type: 'answered' }
  | { type: 'log'; line: string }
  | { type: 'closed' };

const port = parentPort;
if (port !== null) {
  const data = workerData as ApiThreadData;
  const bound = new Int32Array(data.bound);
  const post = (event: ApiThreadEvent): void => port.postMessage(event);
  const pending = new Map<number, (answer: HttpAnswer) => void>();
  let nextId = 1;
  let front: HttpFront | null = null;
  port.on('message', (message: ApiThreadRequest) => {
    if (message.type === 'listen') {
      const done = (): void => {
        Atomics.store(bound, 0, 1);
        Atomics.notify(bound, 0);
      };
      listenHttp(data.socketPath, { maxBodyBytes: data.maxBodyBytes, requestTimeoutMs: data.requestTimeoutMs }, {
        dispatch: (method, target, body) =>
          new Promise<HttpAnswer>((resolve) => {
            const id = nextId++;
            pending.set(id, resolve);
            post({ type: 'request', id, method, target, body });
          }),
        answered: () => post({ type: 'answered' }),
        log: (line) => post({ type: 'log', line }),
      }, (listen) => {
        try {
          listen();
        } finally {
          done();
        }
      }).then(
        (listening) => {
          front = listening;
          post({ type: 'listening' });
        },
        (error: unknown) => {
          done();
          post({ type: 'listen-error', message: error instanceof Error ? error.message : String(error) });
        },
      );
    } else if (message.type === 'response') {
      const resolve = pending.get(message.id);
      pending.delete(message.id);
      resolve?.({ status: message.status, text: message.text });
    } else if (message.type === 'close') {
      void (front?.close() ?? Promise.resolve()).then(() => {
        // Requests still waiting for the host get no answer: their connections are gone.
        pending.clear();
        post({ type: 'closed' });
      });
    }
  });
  post({ type: 'ready' });
}
