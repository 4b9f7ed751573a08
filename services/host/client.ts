/**
 * A client of the control API (services/host/api.ts): one HTTP/1.1 request over the host's Unix
 * socket, JSON in and out. tools/ctl, the bench and the tests use it; any HTTP client that can
 * speak over a Unix socket (curl --unix-socket) works as well.
 */
import { lstatSync } from 'node:fs';
import { request } from 'node:http';
import { BvError } from '../../guest-isa/errors.ts';

/** An answer of the API. */
export interface ApiAnswer<T = unknown> {
  /** The HTTP status. */
  status: number;
  /** The parsed JSON body; undefined for an empty one (204). */
  body: T;
}

/** The host could not be reached, or it answered something that is not the API. */
export class ApiClientError extends BvError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BV_API_CLIENT', message, options);
  }
}

/** Options of apiRequest. */
export interface ApiRequestOptions {
  /** Give up after this many ms (default 30 s). */
  timeoutMs?: number;
  /** Reuse connections (an http.Agent with keepAlive); default: a connection per request. */
  agent?: import('node:http').Agent;
}

/**
 * Sends one request to the host listening on `socketPath`. Resolves with the status and the
 * parsed body whatever the status (an API error is `{fault_message}` with a 4xx/5xx status);
 * rejects with ApiClientError when no host answers or the answer is not JSON.
 */
export function apiRequest<T = unknown>(socketPath: string, method: string, path: string, body?: unknown, options: ApiRequestOptions = {}): Promise<ApiAnswer<T>> {
  const text = body === undefined ? '' : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { Accept: 'application/json' };
    if (text !== '') {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = Buffer.byteLength(text);
    }
    const req = request({ socketPath, method, path, headers, agent: options.agent ?? false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', (error) => reject(new ApiClientError(`the answer from ${socketPath} broke off: ${error.message}`, { cause: error })));
      response.on('end', () => {
        const answer = Buffer.concat(chunks).toString('utf8');
        if (answer.trim() === '') {
          resolve({ status: response.statusCode ?? 0, body: undefined as T });
          return;
        }
        try {
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(answer) as T });
        } catch {
          reject(new ApiClientError(`${socketPath} answered ${response.statusCode} with a body that is not JSON: ${answer.slice(0, 200)}`));
        }
      });
    });
    req.setTimeout(options.timeoutMs ?? 30_000, () => req.destroy(new ApiClientError(`no answer from ${socketPath} within ${options.timeoutMs ?? 30_000} ms`)));
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error instanceof ApiClientError) reject(error);
      else if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED' || error.code === 'ENOTSOCK') {
        reject(new ApiClientError(isOtherFile(socketPath) ? `${socketPath} is not a socket (is it the right path?)` : `no host is listening on ${socketPath}`, { cause: error }));
      }
      else reject(new ApiClientError(`cannot reach the host on ${socketPath}: ${error.message}`, { cause: error }));
    });
    req.end(text);
  });
}

/** True when `path` exists and is not a socket. */
function isOtherFile(path: string): boolean {
  try {
    return !lstatSync(path).isSocket();
  } catch {
    return false;
  }
}
