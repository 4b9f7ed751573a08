/** Raw HTTP over a Unix socket, for requests an HTTP client would not send. */
import { createConnection } from 'node:net';

/** Sends `text` on a new connection, half-closes, and resolves with everything the server wrote. */
export function rawRequest(socketPath: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const connection = createConnection(socketPath);
    let answer = '';
    connection.setEncoding('utf8');
    connection.on('data', (chunk: string) => (answer += chunk));
    connection.on('error', reject);
    connection.on('close', () => resolve(answer));
    connection.on('connect', () => connection.end(text));
  });
}
