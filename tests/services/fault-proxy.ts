/**
 * A TCP proxy that damages one connection between two hosts, for the multi-host migration tests
 * and scripts: it forwards bytes both ways and, on the next connection it accepts, can cut the
 * connection after N bytes in one direction, flip the byte at offset N, or stop forwarding after
 * N bytes while staying connected (a stall). Offsets count the bytes on the wire (TLS records
 * when the hosts use TLS, frames when they are insecure).
 *
 * Used in process (`FaultProxy`) or as a process of its own, run in a network namespace:
 * `node --import tsx tests/services/fault-proxy.ts --listen HOST:PORT --target HOST:PORT`. The
 * process prints `listening HOST:PORT` and then one JSON line per event; each line it reads on
 * stdin is a JSON `Fault` armed for the next connection (`{}` for none).
 */
import { createServer, connect as tcpConnect, type AddressInfo, type Server, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

/** Which way the bytes go: `up` from the connecting side (the source) to the target, `down` back. */
export type Direction = 'up' | 'down';

/** A fault for one connection. */
export interface Fault {
  direction?: Direction;
  /** Forward this many bytes, then close both sides abruptly. */
  cutAfter?: number;
  /** Flip every bit of the byte at this offset. */
  corruptAt?: number;
  /** Forward this many bytes, then forward nothing more that way (the connection stays open). */
  stallAfter?: number;
}

/** What happened on one connection. */
export interface ProxyEvent {
  event: 'connection' | 'cut' | 'corrupt' | 'stall' | 'closed';
  connection: number;
  /** Bytes forwarded up and down so far. */
  up: number;
  down: number;
}

/** The proxy: forwards `listen` to `target`, arming a fault for the next connection. */
export class FaultProxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #next: Fault = {};
  #count = 0;

  constructor(readonly target: { host: string; port: number }, readonly onEvent: (event: ProxyEvent) => void = () => {}) {
    this.#server = createServer((client) => this.#accept(client));
  }

  /** Starts listening; resolves with the port. */
  listen(host: string, port = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => resolve((this.#server.address() as AddressInfo).port));
    });
  }

  /** The fault the next connection gets (later ones get none unless armed again). */
  arm(fault: Fault): void {
    this.#next = fault;
  }

  /** Stops listening and drops every connection. */
  close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    const id = ++this.#count;
    const fault = this.#next;
    this.#next = {};
    const server = tcpConnect(this.target.port, this.target.host);
    const counts = { up: 0, down: 0 };
    const report = (event: ProxyEvent['event']): void => this.onEvent({ event, connection: id, up: counts.up, down: counts.down });
    for (const socket of [client, server]) {
      this.#sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        this.#sockets.delete(socket);
        client.destroy();
        server.destroy();
      });
    }
    let closedReported = false;
    client.on('close', () => {
      if (!closedReported) report('closed');
      closedReported = true;
    });
    report('connection');
    const pipe = (from: Socket, to: Socket, direction: Direction): void => {
      const faulty = (fault.direction ?? 'up') === direction;
      let stalled = false;
      from.on('data', (chunk: Buffer) => {
        if (stalled) return;
        let data = chunk;
        const at = counts[direction];
        if (faulty && fault.corruptAt !== undefined && fault.corruptAt >= at && fault.corruptAt < at + data.length) {
          data = Buffer.from(data);
          data[fault.corruptAt - at] = ~data[fault.corruptAt - at]! & 0xff;
          report('corrupt');
        }
        const limit = faulty ? (fault.cutAfter ?? fault.stallAfter) : undefined;
        if (limit !== undefined && at + data.length >= limit) {
          to.write(data.subarray(0, limit - at));
          counts[direction] = limit;
          if (fault.cutAfter !== undefined) {
            report('cut');
            // An abrupt end, as a lost link looks to both hosts (no FIN after the last byte).
            client.resetAndDestroy();
            server.resetAndDestroy();
          } else {
            stalled = true;
            report('stall');
          }
          return;
        }
        counts[direction] += data.length;
        // Back-pressure: a slow receiver slows the sender, as a real link would.
        if (!to.write(data)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      from.on('end', () => to.end());
    };
    pipe(client, server, 'up');
    pipe(server, client, 'down');
  }
}

function address(text: string | undefined, what: string): { host: string; port: number } {
  const match = /^(.+):(\d+)$/.exec(text ?? '');
  if (match === null) throw new Error(`fault-proxy: ${what} must be HOST:PORT, got ${JSON.stringify(text)}`);
  return { host: match[1]!, port: Number(match[2]) };
}

async function main(argv: string[]): Promise<void> {
  const option = (name: string): string | undefined => argv[argv.indexOf(name) + 1];
  const listen = address(option('--listen'), '--listen');
  const proxy = new FaultProxy(address(option('--target'), '--target'), (event) => process.stdout.write(`${JSON.stringify(event)}\n`));
  const port = await proxy.listen(listen.host, listen.port);
  process.stdout.write(`listening ${listen.host}:${port}\n`);
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    if (line.trim() === '') return;
    proxy.arm(JSON.parse(line) as Fault);
    process.stdout.write(`${JSON.stringify({ event: 'armed' })}\n`);
  });
  // stdin closed: the test is done with us.
  lines.on('close', () => void proxy.close().then(() => process.exit(0)));
}

if (process.argv[1] !== undefined && import.meta.filename === process.argv[1]) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`fault-proxy: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(2);
  });
}
