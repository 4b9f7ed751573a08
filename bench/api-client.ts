/**
 * The control-API bench's client side (bench/api.ts): sequential round trips timed one by one,
 * and a poller that asks `GET /vms/{name}` round-robin at a fixed rate. Both use the project's
 * own client (services/host/client.ts), as tools/ctl does.
 *
 * bench/api.ts runs them in its own process (the client then shares the event loop with the
 * guests) and in a child process running this file, the way an operator's client is another
 * process. As a child it reads one JSON command per line on stdin and answers one JSON line on
 * stdout per command:
 *
 *   {"op":"latency","socket":…,"names":[…],"count":N,"warmup":W,"keepAlive":true|false}
 *   {"op":"poll-start","socket":…,"names":[…],"hz":100,"keepAlive":false}   {"op":"poll-stop"}   {"op":"exit"}
 */
import { Agent } from 'node:http';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { apiRequest } from '../services/host/client.ts';

/** What a latency run measured: each timed round trip, and the client process's CPU time over them. */
export interface LatencyRun {
  latenciesMs: number[];
  wallMs: number;
  /** CPU time of the process the client ran in (user + system) over the timed requests. */
  cpuMs: number;
}

/** What a poller did while it ran. */
export interface PollRun {
  /** Requests started, and answered 200 with the asked VM's info. */
  sent: number;
  answered: number;
  /** Requests not started because MAX_IN_FLIGHT were still waiting (the host was not answering). */
  skipped: number;
  /** The first wrong answer or failure, if any (the bench turns it into an error). */
  error: string | null;
  wallMs: number;
  cpuMs: number;
}

/** A poller never has more requests than this outstanding: it skips a tick instead. */
const MAX_IN_FLIGHT = 4;

const cpuMsSince = (start: NodeJS.CpuUsage): number => {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
};

/** One `GET /vms/{name}`: throws unless the host answers 200 with that VM's info. */
async function getVm(socket: string, name: string, agent: Agent | undefined): Promise<void> {
  const answer = await apiRequest<{ name?: string }>(socket, 'GET', `/vms/${name}`, undefined, agent ? { agent } : {});
  if (answer.status !== 200 || answer.body?.name !== name) {
    throw new Error(`GET /vms/${name} answered ${answer.status}: ${JSON.stringify(answer.body).slice(0, 200)}`);
  }
}

/**
 * `warmup` untimed then `count` timed sequential round trips, round-robin over `names`, each on a
 * new connection or all on one keep-alive connection.
 */
export async function latencyRun(socket: string, names: readonly string[], count: number, warmup: number, keepAlive: boolean): Promise<LatencyRun> {
  const agent = keepAlive ? new Agent({ keepAlive: true, maxSockets: 1 }) : undefined;
  try {
    for (let i = 0; i < warmup; i++) await getVm(socket, names[i % names.length]!, agent);
    const latenciesMs: number[] = [];
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    for (let i = 0; i < count; i++) {
      const sent = performance.now();
      await getVm(socket, names[i % names.length]!, agent);
      latenciesMs.push(performance.now() - sent);
    }
    return { latenciesMs, wallMs: performance.now() - start, cpuMs: cpuMsSince(cpuStart) };
  } finally {
    agent?.destroy();
  }
}

/**
 * Polls `GET /vms/{name}` round-robin over `names` at `hz` requests a second, open loop (a late
 * timer sends the requests that fell due, as a monitoring client would), each on a new connection
 * (as `curl` or tools/ctl) or on kept-alive ones. stop() waits for the requests in flight and reports.
 */
export function startPoller(socket: string, names: readonly string[], hz: number, keepAlive = false): { stop(): Promise<PollRun> } {
  const agent = keepAlive ? new Agent({ keepAlive: true, maxSockets: MAX_IN_FLIGHT }) : undefined;
  const period = 1000 / hz;
  const run: PollRun = { sent: 0, answered: 0, skipped: 0, error: null, wallMs: 0, cpuMs: 0 };
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  const pending = new Set<Promise<void>>();
  let next = start;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;
  const send = (): void => {
    const name = names[run.sent++ % names.length]!;
    const request = getVm(socket, name, agent).then(
      () => void run.answered++,
      (error: unknown) => void (run.error ??= error instanceof Error ? error.message : String(error)),
    );
    pending.add(request);
    void request.finally(() => pending.delete(request));
  };
  const tick = (): void => {
    if (stopped) return;
    const now = performance.now();
    while (next <= now) {
      next += period;
      if (pending.size >= MAX_IN_FLIGHT) run.skipped++;
      else send();
    }
    timer = setTimeout(tick, Math.max(0, next - performance.now()));
  };
  tick();
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await Promise.all(pending);
      agent?.destroy();
      run.wallMs = performance.now() - start;
      run.cpuMs = cpuMsSince(cpuStart);
      return run;
    },
  };
}

// --- as a child process --------------------------------------------------------------------------

type Command =
  | { op: 'latency'; socket: string; names: string[]; count: number; warmup: number; keepAlive: boolean }
  | { op: 'poll-start'; socket: string; names: string[]; hz: number; keepAlive: boolean }
  | { op: 'poll-stop' }
  | { op: 'exit' };

async function serveCommands(): Promise<void> {
  let poller: { stop(): Promise<PollRun> } | null = null;
  const reply = (value: unknown): void => void process.stdout.write(`${JSON.stringify(value)}\n`);
  reply({ ready: true });
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() === '') continue;
    const command = JSON.parse(line) as Command;
    try {
      switch (command.op) {
        case 'latency':
          reply(await latencyRun(command.socket, command.names, command.count, command.warmup, command.keepAlive));
          break;
        case 'poll-start':
          poller = startPoller(command.socket, command.names, command.hz, command.keepAlive);
          reply({ started: true });
          break;
        case 'poll-stop':
          reply(poller ? await poller.stop() : { error: 'no poller running' });
          poller = null;
          break;
        case 'exit':
          return;
      }
    } catch (error) {
      reply({ error: error instanceof Error ? error.message : String(error) });
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  serveCommands().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`bench/api-client: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    },
  );
}
