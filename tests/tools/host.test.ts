/**
 * tools/host as an operator runs it, in child processes: a bad configuration is refused before
 * anything starts, usage errors exit 2, a second host on a live socket is refused while the first
 * keeps serving, SIGTERM and SIGINT stop a host cleanly (exit 0, socket removed), and
 * --exit-when-stopped ends the host when its VMs are done.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { apiRequest } from '../../services/host/client.ts';
import type { HostInfo, VmInfo } from '../../services/host/host.ts';
import { REPO, spawnNode, startNode, type ChildOutcome, type RunningNode } from './child.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const work = mkdtempSync(join(tmpdir(), 'bv-host-tool-'));
const children: RunningNode[] = [];

afterAll(async () => {
  await Promise.all(children.map((child) => child.stop('SIGKILL')));
  rmSync(work, { recursive: true, force: true });
}, 30_000);

/** tools/host run to its end. */
function hostTool(args: readonly string[]): Promise<ChildOutcome> {
  return spawnNode(['--import', 'tsx', 'tools/host.ts', ...args]);
}

/** tools/host left running; resolves once it serves the API. */
async function startHost(socket: string, config: unknown, extra: readonly string[] = []): Promise<RunningNode> {
  const file = join(work, `${socket.split('/').pop()}.json`);
  writeFileSync(file, JSON.stringify(config));
  const child = startNode(['--import', 'tsx', 'tools/host.ts', '--api-sock', socket, '--config', file, ...extra]);
  children.push(child);
  await child.waitFor('stderr', 'serving the API');
  return child;
}

/** A VM that runs until it is stopped (the walker with PASSES 0). */
const spinner = (name: string) => ({ name, image: KERNEL, memory_mib: 16, boot_args: 'walker 4M random 0' });

/** The instruction count of a VM, asked through the API. */
async function instructions(socket: string, name: string): Promise<number> {
  const answer = await apiRequest<VmInfo>(socket, 'GET', `/vms/${name}`);
  expect(answer.status).toBe(200);
  return answer.body.instructions;
}

/** Exactly one line on stderr, `error: …`, and no stack trace. */
function expectOneErrorLine(outcome: ChildOutcome, message: RegExp): void {
  const lines = outcome.stderr.split('\n').filter((line) => line !== '');
  expect(lines, outcome.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^error: /);
  expect(lines[0]).toMatch(message);
  expect(outcome.stderr).not.toMatch(/^\s+at /m);
  expect(outcome.stdout).toBe('');
}

describe('tools/host refuses what it cannot run, before anything starts', () => {
  it('refuses bad configurations with exit 1 and one error line naming the field; no socket is left', async () => {
    const good = spinner('a');
    const cases: { what: string; config: string; message: RegExp }[] = [
      { what: 'an unknown key', config: JSON.stringify({ vms: [{ ...good, memoryMib: 16 }] }), message: /bad-0\.json: vms\[0\]\.memoryMib: unknown key \(did you mean "memory_mib"\?\)/ },
      { what: 'a wrong type', config: JSON.stringify({ vms: [{ ...good, memory_mib: '16' }] }), message: /vms\[0\]\.memory_mib: must be an integer/ },
      { what: 'an impossible value', config: JSON.stringify({ vms: [good, { ...good, name: 'b', vcpus: 0 }] }), message: /vms\[1\]\.vcpus: must be an integer from 1/ },
      { what: 'an impossible host value', config: JSON.stringify({ api: { request_timeout_ms: 5 }, vms: [good] }), message: /api\.request_timeout_ms: must be an integer from 100/ },
      { what: 'a missing image', config: JSON.stringify({ vms: [good, { ...good, name: 'b', image: join(work, 'nothing.s') }] }), message: /vms\[1\]\.image: .*nothing\.s/ },
      { what: 'malformed JSON', config: '{"vms": [\n  {"name": "a",, "image": "x"}\n]}\n', message: /bad-5\.json:2:16: malformed JSON/ },
    ];
    const outcomes = await Promise.all(cases.map(async ({ config }, index) => {
      const file = join(work, `bad-${index}.json`);
      writeFileSync(file, config);
      const socket = join(work, `bad-${index}.sock`);
      return { socket, outcome: await hostTool(['--api-sock', socket, '--config', file]) };
    }));
    for (const [index, { socket, outcome }] of outcomes.entries()) {
      expect({ what: cases[index]!.what, code: outcome.code }).toEqual({ what: cases[index]!.what, code: 1 });
      expectOneErrorLine(outcome, cases[index]!.message);
      expect(existsSync(socket)).toBe(false);
    }
  }, 120_000);

  it('refuses a socket path it cannot use with exit 1, leaving nothing behind', async () => {
    const plain = join(work, 'plain-file');
    writeFileSync(plain, 'keep me');
    const sockets = join(work, 'socket-paths');
    mkdirSync(sockets);
    const cases: [string, RegExp][] = [
      [join(sockets, 'missing', 'api.sock'), /the directory .*missing does not exist/],
      // Longer than a Unix socket path may be: libuv would bind it truncated.
      [join(sockets, `${'x'.repeat(120)}.sock`), /the path is \d+ bytes, longer than a Unix socket path may be/],
      [plain, /plain-file exists and is not a socket/],
    ];
    const outcomes = await Promise.all(cases.map(([socket]) => hostTool(['--api-sock', socket])));
    for (const [index, outcome] of outcomes.entries()) {
      expect(outcome.code, outcome.stderr).toBe(1);
      expectOneErrorLine(outcome, cases[index]![1]);
    }
    expect(readdirSync(sockets)).toEqual([]);
    expect(readFileSync(plain, 'utf8')).toBe('keep me');
  }, 120_000);

  it('exits 2 on usage errors and 0 for --help', async () => {
    const [noSocket, unknown, stray, help] = await Promise.all([
      hostTool([]),
      hostTool(['--api-sock', join(work, 'usage.sock'), '--bogus']),
      hostTool(['--api-sock', join(work, 'usage.sock'), 'extra']),
      hostTool(['--help']),
    ]);
    for (const [outcome, message] of [[noSocket, /--api-sock is required/], [unknown, /unknown option '--bogus'/], [stray, /unexpected argument 'extra'/]] as const) {
      expect(outcome.code, outcome.stderr).toBe(2);
      expect(outcome.stderr).toMatch(new RegExp(`^error: ${message.source}\\nusage: host --api-sock PATH`));
      expect(outcome.stderr).not.toMatch(/^\s+at /m);
    }
    expect(existsSync(join(work, 'usage.sock'))).toBe(false);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: host --api-sock PATH/);
    expect(help.stdout).toMatch(/--exit-when-stopped/);
    expect(help.stderr).toBe('');
  }, 120_000);
});

describe('a running tools/host', () => {
  it('refuses a second host on its socket (exit 1, "in use") and keeps serving', async () => {
    const socket = join(work, 'shared.sock');
    const first = await startHost(socket, { vms: [spinner('spin')] });
    const before = statSync(socket);
    expect(before.mode & 0o777).toBe(0o600);
    const at = await instructions(socket, 'spin');

    const second = await hostTool(['--api-sock', socket, '--config', join(work, 'shared.sock.json')]);
    expect(second.code).toBe(1);
    expectOneErrorLine(second, /shared\.sock is in use/);
    expect(second.stderr).not.toMatch(/vm spin: created/);

    // The first host still owns the same socket file and answers on it; its guest runs on.
    expect(first.running).toBe(true);
    expect(statSync(socket).ino).toBe(before.ino);
    expect((await apiRequest<HostInfo>(socket, 'GET', '/host')).body.vm_count).toBe(1);
    for (const deadline = Date.now() + 30_000; (await instructions(socket, 'spin')) <= at;) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }

    // SIGTERM while the guest runs: exit 0 and the socket is gone.
    const ended = await first.stop('SIGTERM');
    expect({ code: ended.code, signal: ended.signal }).toEqual({ code: 0, signal: null });
    expect(ended.stderr).toMatch(/host: stopping \(SIGTERM\)/);
    expect(ended.stderr).not.toMatch(/^error:/m);
    expect(existsSync(socket)).toBe(false);
  }, 120_000);

  it('stops cleanly on SIGINT: exit 0, the socket removed', async () => {
    const socket = join(work, 'interrupted.sock');
    const host = await startHost(socket, { vms: [spinner('spin')] });
    expect((await apiRequest(socket, 'GET', '/host')).status).toBe(200);
    const ended = await host.stop('SIGINT');
    expect({ code: ended.code, signal: ended.signal }).toEqual({ code: 0, signal: null });
    expect(ended.stderr).toMatch(/host: stopping \(SIGINT\)/);
    expect(existsSync(socket)).toBe(false);
  }, 120_000);

  it('--exit-when-stopped: a host of two short programs exits 0 by itself', async () => {
    const socket = join(work, 'short.sock');
    const config = join(work, 'short.json');
    writeFileSync(config, JSON.stringify({
      vms: [
        { name: 'sieve', image: KERNEL, memory_mib: 16, boot_args: 'sieve 1000' },
        { name: 'crc', image: KERNEL, memory_mib: 16, boot_args: 'crc32 4096' },
      ],
    }));
    const host = startNode(['--import', 'tsx', 'tools/host.ts', '--api-sock', socket, '--config', config, '--exit-when-stopped']);
    children.push(host);
    const ended = await Promise.race([
      host.ended,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the host did not exit by itself:\n${host.stderr}`)), 90_000)),
    ]);
    expect({ code: ended.code, signal: ended.signal }).toEqual({ code: 0, signal: null });
    for (const name of ['sieve', 'crc']) expect(ended.stderr).toMatch(new RegExp(`vm ${name}: stopped after \\d+ instructions: powered off with exit code 0`));
    expect(ended.stderr).toMatch(/host: stopping \(every VM stopped\)/);
    expect(existsSync(socket)).toBe(false);
  }, 120_000);
});
