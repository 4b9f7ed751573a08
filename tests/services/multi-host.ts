/**
 * Two real hosts (tools/host processes) for the multi-host migration and replication tests and
 * scripts. Run as root, each host lives in a network namespace of its own (`ip netns`), the two
 * joined by a veth pair (10.77.0.1 and 10.77.0.2), with an optional bandwidth throttle (`tc
 * qdisc … tbf` on each end); otherwise both run on loopback and the throttle is left to the
 * migration's `max_bandwidth` (`Network.kind` and `describe` say which). The API sockets are
 * files, which namespaces do not separate, so the test talks to both hosts from where it runs.
 *
 * Namespaces are removed by close(), on process exit, and — for those of a run that died — by
 * the next createNetwork() (their names carry the pid that made them).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { apiRequest, type ApiAnswer } from '../../services/host/client.ts';
import { REPO, startNode, type RunningNode } from '../tools/child.ts';
import type { Fault, ProxyEvent } from './fault-proxy.ts';

/** A side of the network: the source/primary is `a`, the destination/backup `b`. */
export type Side = 'a' | 'b';

/** Where the two hosts run. */
export interface Network {
  kind: 'netns' | 'loopback';
  /** The address each side's host is reached at. */
  address: Record<Side, string>;
  /** The namespace of each side (null on loopback). */
  namespace: Record<Side, string | null>;
  /** Bandwidth throttle by tc on the veth pair, in Mbit/s (null: none, or loopback). */
  tcMbit: number | null;
  /** One line saying where the hosts run, for the test's output. */
  describe: string;
  /** Removes the namespaces (their processes must be gone first). */
  close(): void;
}

const PREFIX = 'bvmh';
const SUBNET = '10.77.0';
let made = 0;
let probed: boolean | null = null;
const open = new Set<Network>();

function ip(args: readonly string[]): string {
  return execFileSync('ip', [...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Whether this process can make network namespaces (root, `ip` present, the kernel allows it). */
export function namespacesAvailable(): boolean {
  if (probed !== null) return probed;
  probed = false;
  if (process.getuid?.() !== 0 || process.env['BV_NO_NETNS'] === '1') return false;
  const name = `${PREFIX}${process.pid}p`;
  try {
    ip(['netns', 'add', name]);
    ip(['netns', 'del', name]);
    probed = true;
  } catch {
    probed = false;
  }
  return probed;
}

/** Removes namespaces left by runs whose process is gone (a test killed halfway). */
function removeStale(): void {
  let listed = '';
  try {
    listed = ip(['netns', 'list']);
  } catch {
    return;
  }
  for (const line of listed.split('\n')) {
    const match = new RegExp(`^(${PREFIX}(\\d+)[ab]\\d+)\\b`).exec(line);
    if (match === null) continue;
    const pid = Number(match[2]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) {
      try {
        ip(['netns', 'del', match[1]!]);
      } catch { /* gone meanwhile */ }
    }
  }
}

process.on('exit', () => {
  for (const network of open) network.close();
});

/**
 * Makes the network for two hosts: namespaces joined by a veth pair when possible (`throttleMbit`:
 * a tbf rate on both ends), else loopback. `loopback: true` asks for loopback anyway.
 */
export function createNetwork(options: { throttleMbit?: number; loopback?: boolean } = {}): Network {
  if (options.loopback === true || !namespacesAvailable()) {
    return {
      kind: 'loopback', address: { a: '127.0.0.1', b: '127.0.0.1' }, namespace: { a: null, b: null }, tcMbit: null,
      describe: 'two host processes on loopback (not root, or no network namespaces: no tc throttle)', close: () => {},
    };
  }
  removeStale();
  const id = made++;
  const ns = { a: `${PREFIX}${process.pid}a${id}`, b: `${PREFIX}${process.pid}b${id}` };
  const address = { a: `${SUBNET}.1`, b: `${SUBNET}.2` };
  let closed = false;
  const network: Network = {
    kind: 'netns', address, namespace: ns, tcMbit: options.throttleMbit ?? null,
    describe: `two host processes in network namespaces ${ns.a} (${address.a}) and ${ns.b} (${address.b}) joined by a veth pair${options.throttleMbit === undefined ? '' : `, tc tbf ${options.throttleMbit} Mbit/s`}`,
    close: () => {
      if (closed) return;
      closed = true;
      open.delete(network);
      for (const name of [ns.a, ns.b]) {
        try {
          ip(['netns', 'del', name]);
        } catch { /* never made */ }
      }
    },
  };
  open.add(network);
  try {
    ip(['netns', 'add', ns.a]);
    ip(['netns', 'add', ns.b]);
    // Made inside the namespaces, so the names never meet another test's in the root namespace.
    ip(['-n', ns.a, 'link', 'add', 'veth-a', 'type', 'veth', 'peer', 'name', 'veth-b', 'netns', ns.b]);
    for (const side of ['a', 'b'] as const) {
      ip(['-n', ns[side], 'addr', 'add', `${address[side]}/30`, 'dev', `veth-${side}`]);
      ip(['-n', ns[side], 'link', 'set', `veth-${side}`, 'up']);
      ip(['-n', ns[side], 'link', 'set', 'lo', 'up']);
      if (options.throttleMbit !== undefined) {
        execFileSync('ip', ['netns', 'exec', ns[side], 'tc', 'qdisc', 'add', 'dev', `veth-${side}`, 'root', 'tbf', 'rate', `${options.throttleMbit}mbit`, 'burst', '256kb', 'latency', '100ms'], { stdio: 'ignore' });
      }
    }
  } catch (error) {
    network.close();
    throw error;
  }
  return network;
}

/** The command prefix that runs a process on `side`. */
export function sidePrefix(network: Network, side: Side): string[] {
  const ns = network.namespace[side];
  return ns === null ? [] : ['ip', 'netns', 'exec', ns];
}

/** One running tools/host. */
export interface Host {
  name: string;
  side: Side;
  socket: string;
  child: RunningNode;
  /** A request to its control API. */
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<ApiAnswer<T>>;
}

/** Starts tools/host on `side` with `config` (files in `work`); resolves once it serves its API. */
export async function startHost(network: Network, side: Side, name: string, config: unknown, work: string): Promise<Host> {
  const socket = join(work, `${name}.sock`);
  const file = join(work, `${name}.json`);
  writeFileSync(file, JSON.stringify(config));
  const child = startNode(['--import', 'tsx', 'tools/host.ts', '--api-sock', socket, '--config', file], { prefix: sidePrefix(network, side) });
  try {
    await child.waitFor('stderr', 'serving the API', 90_000);
  } catch (error) {
    await child.stop('SIGKILL');
    throw error;
  }
  return { name, side, socket, child, api: (method, path, body) => apiRequest(socket, method, path, body, { timeoutMs: 120_000 }) };
}

/** A fault-proxy process (tests/services/fault-proxy.ts) on one side. */
export class ProxyProcess {
  readonly events: ProxyEvent[] = [];
  #armed: (() => void)[] = [];
  address = '';

  private constructor(readonly child: ChildProcess) {}

  /** Starts a proxy on `side` listening on that side's address, forwarding to `target`. */
  static async start(network: Network, side: Side, target: string): Promise<ProxyProcess> {
    const [command, ...args] = [...sidePrefix(network, side), process.execPath, '--import', 'tsx', 'tests/services/fault-proxy.ts', '--listen', `${network.address[side]}:0`, '--target', target];
    const child = spawn(command!, args, { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'] });
    const proxy = new ProxyProcess(child);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the fault proxy did not start within 60 s')), 60_000);
      child.once('exit', (code) => reject(new Error(`the fault proxy ended (${code}) before listening`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line.startsWith('listening ')) {
          proxy.address = line.slice('listening '.length);
          clearTimeout(timer);
          resolve();
        } else {
          const event = JSON.parse(line) as ProxyEvent | { event: 'armed' };
          if (event.event === 'armed') proxy.#armed.shift()?.();
          else proxy.events.push(event);
        }
      });
    });
    return proxy;
  }

  /** Arms `fault` for the next connection; resolves once the proxy has it. */
  arm(fault: Fault): Promise<void> {
    return new Promise((resolve) => {
      this.#armed.push(resolve);
      this.child.stdin!.write(`${JSON.stringify(fault)}\n`);
    });
  }

  /** Ends the proxy. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const ended = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGKILL');
    await ended;
  }
}

/** Runs the version-1 peer (tests/services/fixtures/version-peer.ts) on `side`. */
export function versionPeer(network: Network, side: Side, args: readonly string[]): RunningNode {
  return startNode(['--import', 'tsx', 'tests/services/fixtures/version-peer.ts', ...args], { prefix: sidePrefix(network, side) });
}

/** Polls `read` every 25 ms until `done` holds of its value (or `timeoutMs` passes); returns the last value. */
export async function pollUntil<T>(read: () => Promise<T>, done: (value: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = await read();
  while (!done(value) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    value = await read();
  }
  return value;
}
