/**
 * Running the project's tools as a user would: a child process of plain node with tsx loaded,
 * its output collected. One helper for every test that runs a tool.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The repository root. */
export const REPO = join(import.meta.dirname, '..', '..');

/** How a child process ended and what it printed. */
export interface ChildOutcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node ...args` in `cwd`; stdin is the given text, or closed. */
export function spawnNode(args: readonly string[], options: { cwd?: string; stdin?: string } = {}): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...args], {
      cwd: options.cwd ?? REPO,
      stdio: [options.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    if (options.stdin !== undefined) child.stdin!.end(options.stdin);
  });
}

/** Runs `tools/run` with args from the repository root; stdin is the given text, or closed. */
export function runTool(args: readonly string[], stdin?: string): Promise<ChildOutcome> {
  return spawnNode(['--import', 'tsx', 'tools/run.ts', ...args], stdin === undefined ? {} : { stdin });
}

/** How a long-running child ended: its exit code or the signal that ended it, and its output. */
export interface ChildEnd extends ChildOutcome {
  signal: NodeJS.Signals | null;
}

/**
 * A child process of node that keeps running (a host, a tool waiting for a signal): its output
 * so far, a wait for some text in it, and its end. Always stop() it, in a finally or afterAll.
 */
export class RunningNode {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  /** Resolves when the child has exited and its output is closed. */
  readonly ended: Promise<ChildEnd>;
  private waiters: (() => void)[] = [];
  /** The child has exited and its output is complete. */
  private closed = false;

  /** `prefix`: a command that runs node, e.g. `ip netns exec NS` (it must exec node in its place, so a signal reaches node). */
  constructor(args: readonly string[], options: { cwd?: string; prefix?: readonly string[] } = {}) {
    const [command, ...rest] = [...(options.prefix ?? []), process.execPath, ...args];
    this.child = spawn(command!, rest, { cwd: options.cwd ?? REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    const wake = (): void => this.waiters.slice().forEach((waiter) => waiter());
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => { this.stdout += chunk; wake(); });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { this.stderr += chunk; wake(); });
    this.ended = new Promise((resolve, reject) => {
      this.child.on('error', reject);
      this.child.on('close', (code, signal) => {
        this.closed = true;
        resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
        wake();
      });
    });
  }

  /** Whether the process is still running. */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Resolves once stdout or stderr (`where`) contains `text`; rejects, with the output so far,
   * if the child ends first or `timeoutMs` passes.
   */
  waitFor(where: 'stdout' | 'stderr', text: string | RegExp, timeoutMs = 60_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (error?: Error): void => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((waiter) => waiter !== check);
        if (error) reject(error);
        else resolve();
      };
      const found = (): boolean => (typeof text === 'string' ? this[where].includes(text) : text.test(this[where]));
      const check = (): void => {
        if (found()) finish();
        else if (this.closed) finish(new Error(`the child ended (${this.child.exitCode ?? this.child.signalCode}) before printing ${String(text)}:\n${this.stderr}`));
      };
      const timer = setTimeout(() => finish(new Error(`timed out waiting for ${String(text)} on ${where}:\n${this[where]}`)), timeoutMs);
      this.waiters.push(check);
      check();
    });
  }

  /** Sends `signal` if the child still runs, SIGKILL after `graceMs`, and waits for its end. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<ChildEnd> {
    if (this.running) this.child.kill(signal);
    const timer = setTimeout(() => {
      if (this.running) this.child.kill('SIGKILL');
    }, graceMs);
    try {
      return await this.ended;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Starts `node ...args` in `cwd` (default: the repository root) and leaves it running. */
export function startNode(args: readonly string[], options: { cwd?: string; prefix?: readonly string[] } = {}): RunningNode {
  return new RunningNode(args, options);
}

/**
 * Starts `tools/host` with `config` written to DIR/NAME.json and its API on DIR/NAME.sock, and
 * waits until it serves the API. The caller stops the child (RunningNode.stop).
 */
export async function startHostProcess(dir: string, name: string, config: unknown): Promise<{ socket: string; child: RunningNode }> {
  const socket = join(dir, `${name}.sock`);
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(config));
  const child = startNode(['--import', 'tsx', 'tools/host.ts', '--api-sock', socket, '--config', file]);
  await child.waitFor('stderr', 'serving the API');
  return { socket, child };
}

/** Runs `tools/ctl` against a host's API socket, with a 120 s request timeout. */
export function runCtl(socket: string, args: readonly string[]): Promise<ChildOutcome> {
  return spawnNode(['--import', 'tsx', 'tools/ctl.ts', '--api-sock', socket, '--timeout-ms', '120000', ...args]);
}
