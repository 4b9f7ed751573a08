/**
 * tools/ctl against a real host (tools/host in a child process), each command run as a user
 * runs it: a child process of its own. One host serves the whole file: a guest that stops at
 * once, one that runs for minutes (a long walker, to pause, snapshot and fork while it runs) and
 * one that reads its console input (wc). Also curl --unix-socket, once.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, spawnNode, type ChildOutcome } from './child.ts';

const CTL = join(REPO, 'tools/ctl.ts');
const LAUNCHER = join(REPO, 'tools/bytevisor.mjs');
/** tsx by path, so that ctl also runs with another current directory. */
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
const KERNEL = 'examples/nanokernel/kernel.s';
const USAGE_LINE = 'usage: ctl --api-sock PATH';

const work = mkdtempSync(join(tmpdir(), 'bv-ctl-'));
const socket = join(work, 'api.sock');
let host: ChildProcess | null = null;
let hostLog = '';

/** Runs tools/ctl against the test's host (or `--api-sock` given in `args` first). */
function ctl(args: readonly string[], options: { cwd?: string; stdin?: string } = {}): Promise<ChildOutcome> {
  return spawnNode(['--import', TSX, CTL, '--api-sock', socket, ...args], options);
}

/** `ctl … --json`, which must succeed: the parsed answer. */
async function ctlJson<T>(args: readonly string[]): Promise<T> {
  const outcome = await ctl([...args, '--json']);
  expect(outcome, outcome.stderr).toMatchObject({ code: 0, stderr: '' });
  return JSON.parse(outcome.stdout) as T;
}

interface Info {
  name: string;
  state: string;
  instructions: number;
  origin: { kind: string; path?: string; parent?: string };
  exit: { kind: string; exit_code?: number } | null;
}

async function waitFor<T>(what: string, probe: () => Promise<T | null>, timeoutMs = 45_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nhost log:\n${hostLog}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

beforeAll(async () => {
  const config = join(work, 'host.json');
  writeFileSync(config, JSON.stringify({
    vms: [
      { name: 'done', image: KERNEL, memory_mib: 16, boot_args: 'sieve 1000' },
      // About 20 billion instructions: it runs for the whole file (the host is killed at the end).
      { name: 'long', image: KERNEL, memory_mib: 16, boot_args: 'walker 4M random 30000', max_instructions: 100_000_000_000 },
      { name: 'reader', image: KERNEL, memory_mib: 16, boot_args: 'wc' },
      { name: 'grouped', image: KERNEL, memory_mib: 16, boot_args: 'wc', group: 'g' },
    ],
    worker_groups: [{ name: 'g', cpus: [0] }],
    // An echo channel offered to the reader, whose nanokernel leaves it offered (it opens BLOCK slots only).
    channels: [{ name: 'e0', service: 'echo', client: 'reader', server: 'echo' }],
  }));
  const child = spawn(process.execPath, ['--import', 'tsx', 'tools/host.ts', '--api-sock', socket, '--config', config], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
  host = child;
  await new Promise<void>((resolve, reject) => {
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      hostLog += chunk;
      if (hostLog.includes('serving the API')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`the host exited with ${code} before serving:\n${hostLog}`)));
  });
}, 60_000);

afterAll(async () => {
  const child = host;
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
  rmSync(work, { recursive: true, force: true });
}, 30_000);

describe('tools/ctl against a running host', () => {
  it('vms: a table of every VM; --json is the API\'s answer', async () => {
    const [table, json] = await Promise.all([ctl(['vms']), ctlJson<{ vms: Info[] }>(['vms'])]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^NAME +STATE +INSTRUCTIONS +MEMORY +EXIT\n/);
    expect(table.stdout).toMatch(/^long +Running +[\d,]+ +16 MiB +-$/m);
    expect(json.vms.map((vm) => vm.name)).toEqual(['done', 'long', 'reader', 'grouped']);
  });

  it('groups: the worker groups and their VMs; --set-cpus moves one; placement is off here', async () => {
    const table = await ctl(['groups']);
    expect(table, table.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(table.stdout).toMatch(/^GROUP +CPUS +PINNED +THREAD +CPU TIME +VMS\ng +0 +yes +\d+ +.+ grouped$/m);
    const moved = await ctl(['groups', '--set-cpus', 'g=0']);
    expect(moved.stdout).toBe('worker group g on CPUs 0\n');
    expect((await ctl(['groups', '--set-cpus', 'g'])).code).toBe(2);
    const nowhere = await ctl(['groups', '--set-cpus', 'nope=0']);
    expect(nowhere.code).toBe(1);
    expect(nowhere.stderr).toMatch(/no worker group named 'nope'/);
    // A VM in a group answers like any other, and a checkpoint restores into a group.
    expect(await ctlJson<Info>(['info', 'grouped'])).toMatchObject({ name: 'grouped', state: 'Running' });
    const saved = join(work, 'grouped.bvs');
    expect((await ctl(['snapshot', 'grouped', saved])).code).toBe(0);
    expect(await ctlJson<Info>(['restore', saved, '--name', 'grouped2', '--group', 'g', '--paused'])).toMatchObject({ name: 'grouped2', state: 'Paused', origin: { kind: 'checkpoint' } });
    const groups = await ctlJson<{ worker_groups: { name: string; vms: string[] }[] }>(['groups']);
    expect(groups.worker_groups[0]!.vms).toEqual(['grouped', 'grouped2']);
    expect((await ctl(['delete', 'grouped2'])).code).toBe(0);
    const placement = await ctl(['placement']);
    expect(placement.code).toBe(1);
    expect(placement.stderr).toMatch(/placement is off/);
  });

  it('channels, channel NAME [--rescind], storage, io-shares: the bus and PARDA endpoints', async () => {
    const channels = await ctlJson<{ channels: { name: string; service: string }[] }>(['channels']);
    expect(channels.channels.map((c) => [c.name, c.service])).toEqual([['e0', 'echo']]);
    const one = await ctl(['channel', 'e0']);
    expect(one, one.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(one.stdout).toMatch(/reader/);
    expect(await ctl(['channel', 'nope'])).toMatchObject({ code: 1, stdout: '' });
    const rescinded = await ctl(['channel', 'e0', '--rescind']);
    expect(rescinded).toMatchObject({ code: 0, stdout: 'rescinded channel e0\n' });
    expect((await ctlJson<{ channels: unknown[] }>(['channels'])).channels).toEqual([]);
    // No storage_io in this host: the API's 404, exit 1; bad values are usage errors (exit 2).
    const storage = await ctl(['storage']);
    expect(storage.code).toBe(1);
    expect(storage.stderr).toMatch(/HTTP 404/);
    expect((await ctl(['storage', '--threshold-ms', '-3'])).code).toBe(2);
    expect((await ctl(['storage', '--controlled', '--uncontrolled'])).code).toBe(2);
    expect((await ctl(['io-shares', 'long', 'many'])).code).toBe(2);
    const shares = await ctl(['io-shares', 'long', '2000']);
    expect(shares, shares.stderr).toMatchObject({ code: 0, stdout: 'VM long: io shares 2000\n' });
  });

  it('info: the VM\'s lines; an unknown VM is exit 1 with the API\'s message and status', async () => {
    const [known, unknown] = await Promise.all([ctl(['info', 'long']), ctl(['info', 'nope'])]);
    expect(known.code).toBe(0);
    expect(known.stdout).toMatch(/^name +long\nstate +Running\norigin +image examples\/nanokernel\/kernel\.s\n/);
    expect(known.stdout).toMatch(/^boot args +walker 4M random 30000$/m);
    expect(unknown).toEqual({ code: 1, stdout: '', stderr: "error: no VM named 'nope' (HTTP 404)\n" });
  });

  it('pause: the instruction count stops moving; resume: it moves again', async () => {
    const paused = await ctl(['pause', 'long']);
    expect(paused.code, paused.stderr).toBe(0);
    expect(paused.stdout).toMatch(/^VM long paused at instruction [\d,]+\n$/);
    const first = await ctlJson<Info>(['info', 'long']);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const second = await ctlJson<Info>(['info', 'long']);
    expect(first.state).toBe('Paused');
    expect(second.instructions).toBe(first.instructions);
    // Pausing twice is the API's 409.
    expect(await ctl(['pause', 'long'])).toEqual({ code: 1, stdout: '', stderr: "error: VM 'long' is already paused (HTTP 409)\n" });

    const resumed = await ctl(['resume', 'long']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/^VM long resumed at instruction [\d,]+\n$/);
    await waitFor('long to run again', async () => {
      const info = await ctlJson<Info>(['info', 'long']);
      return info.state === 'Running' && info.instructions > first.instructions ? info : null;
    });
  });

  it('snapshot --live to a path relative to ctl\'s directory, restore it under a new name, fork', async () => {
    // ctl runs in `work` (through the launcher), the host in the repository: PATH is made absolute by ctl.
    const snapshot = await spawnNode([LAUNCHER, 'ctl', '--api-sock', socket, 'snapshot', 'long', 'long.bvs', '--live', '--json'], { cwd: work });
    expect(snapshot.code, snapshot.stderr).toBe(0);
    const saved = JSON.parse(snapshot.stdout) as { path: string; live: boolean; file_bytes: number };
    expect(saved).toMatchObject({ path: join(work, 'long.bvs'), live: true });
    expect(existsSync(join(work, 'long.bvs'))).toBe(true);

    const [restored, forked] = await Promise.all([
      ctl(['restore', join(work, 'long.bvs'), '--name', 'copy', '--mode', 'eager', '--paused']),
      ctl(['fork', 'long', '--name', 'kid', '--paused']),
    ]);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.stdout).toMatch(/^restored VM copy \(Paused\): eager restore of [\d,]+ stored pages, ready in /);
    expect(forked).toEqual({ code: 0, stdout: 'forked VM kid from long (Paused)\n', stderr: '' });
    const [copy, kid] = await Promise.all([ctlJson<Info>(['info', 'copy']), ctlJson<Info>(['info', 'kid'])]);
    expect(copy).toMatchObject({ state: 'Paused', origin: { kind: 'checkpoint', path: join(work, 'long.bvs') } });
    expect(kid).toMatchObject({ state: 'Paused', origin: { kind: 'fork', parent: 'long' } });

    const deleted = await Promise.all([ctl(['delete', 'copy']), ctl(['delete', 'kid'])]);
    expect(deleted.map((d) => d.stdout)).toEqual(['deleted VM copy\n', 'deleted VM kid\n']);
    const { vms } = await ctlJson<{ vms: Info[] }>(['vms']);
    expect(vms.map((vm) => vm.name)).toEqual(['done', 'long', 'reader', 'grouped']);
    // From here on the walker rests: the tests below need no running guest, only the host's CPU.
    expect((await ctl(['pause', 'long'])).code).toBe(0);
  });

  it('stats --json has the vCPUs; stats, host and host-stats print readable counters', async () => {
    const [json, stats, hostInfo, hostStats] = await Promise.all([
      ctlJson<{ name: string; instructions: number; vcpus: { id: number; instret: number }[] }>(['stats', 'long']),
      ctl(['stats', 'done']),
      ctl(['host']),
      ctl(['host-stats']),
    ]);
    expect(json.name).toBe('long');
    expect(json.vcpus).toHaveLength(1);
    expect(json.vcpus[0]!.id).toBe(0);
    expect(json.vcpus[0]!.instret).toBeGreaterThan(0);
    expect(stats.code).toBe(0);
    expect(stats.stdout).toMatch(/^instructions +[\d,]+$/m);
    expect(stats.stdout).toMatch(/^vcpus\n +id +instret +tlb hits/m);
    expect(stats.stdout).toMatch(/^mmio accesses\n/m);
    expect(hostInfo.stdout).toMatch(/^pool +1 GiB \(262,144 frames\)\n/);
    expect(hostInfo.stdout).toMatch(/^vms +4 \(\d running, \d paused, \d stopped\)$/m);
    expect(hostInfo.stdout).toMatch(/^worker groups +g \(CPUs 0: grouped\)$/m);
    expect(hostStats.stdout).toMatch(/^pool\n +total frames +262,144$/m);
  });

  it('create from a file, console --follow until it stops, console --offset, delete', async () => {
    // The image path is the host's, relative to its working directory (the repository).
    const file = join(work, 'vm.json');
    writeFileSync(file, JSON.stringify({ name: 'made', image: KERNEL, memory_mib: 16, boot_args: 'sieve 100 crc32 4096' }));
    const created = await ctl(['create', file]);
    expect(created).toEqual({ code: 0, stdout: 'created VM made (Running)\n', stderr: '' });
    expect((await ctl(['create', file])).stderr).toBe("error: a VM named 'made' exists (HTTP 409)\n");

    const followed = await ctl(['console', 'made', '--follow']);
    expect(followed.code, followed.stderr).toBe(0);
    expect(followed.stdout).toMatch(/^nanokernel: 16 MiB RAM/);
    expect(followed.stdout).toContain('sieve: 25 primes up to 100\n');
    expect(followed.stdout).toContain('crc32: 4096 bytes, crc 0x');
    expect(followed.stdout.endsWith('[kernel] power off, exit code 0\n')).toBe(true);
    const [whole, tail, info] = await Promise.all([ctl(['console', 'made']), ctlJson<{ offset: number; data: string }>(['console', 'made', '--offset', '10']), ctlJson<Info>(['info', 'made'])]);
    expect(whole.stdout).toBe(followed.stdout);
    expect(tail).toMatchObject({ offset: 10, data: followed.stdout.slice(10) });
    expect(info).toMatchObject({ state: 'Stopped', exit: { kind: 'halted', exit_code: 0 } });

    expect(await ctl(['delete', 'made'])).toEqual({ code: 0, stdout: 'deleted VM made\n', stderr: '' });
    expect((await ctl(['info', 'made'])).stderr).toBe("error: no VM named 'made' (HTTP 404)\n");
  });

  it('input reaches a guest that reads its console (wc), --eof ends its input', async () => {
    expect((await ctlJson<{ waiting_for_input: boolean }>(['info', 'reader'])).waiting_for_input).toBe(true);
    expect(await ctl(['input', 'reader', 'one two\n'])).toEqual({ code: 0, stdout: 'sent 8 bytes to reader\n', stderr: '' });
    // `-` sends standard input.
    const rest = await ctl(['input', 'reader', '-', '--eof'], { stdin: 'three\n' });
    expect(rest).toEqual({ code: 0, stdout: 'sent 6 bytes to reader; its console input is closed\n', stderr: '' });
    const output = await ctl(['console', 'reader', '--follow']);
    expect(output.stdout).toContain('wc: 2 lines, 3 words, 14 bytes\n');
    // A stopped VM takes no more input: the API's 409.
    const late = await ctl(['input', 'reader', 'more']);
    expect(late.code).toBe(1);
    expect(late.stderr).toMatch(/^error: cannot send input to VM 'reader': it has stopped .*\(HTTP 409\)\n$/);
  });

  it('bad usage is exit 2 with the usage line; no host on the socket is exit 1 with one line', async () => {
    const outcomes = await Promise.all([
      ctl([]),
      ctl(['reboot', 'long']),
      ctl(['fork', 'long']),
      ctl(['pause']),
      ctl(['vms', '--live']),
      ctl(['restore', 'x.bvs', '--mode', 'fast']),
      spawnNode(['--import', TSX, CTL, 'vms']),
    ]);
    const messages = [
      'no command given',
      "unknown command 'reboot' (commands: host, host-stats, vms, info, tier, pause, resume, snapshot, restore, fork, stats, console, input, balloon, memory-policy, active-memory, mrc, tax-rate, create, migrate, receive-migrations, migrations, replicate, replication, stop-replication, replicas, activate, power-loss, pmem-ha, groups, placement, channels, channel, storage, io-shares, log-replication, log-replicas, release-log-replica, delete)",
      'fork: --name N is required',
      'pause: missing VM',
      'vms does not take --live',
      "--mode must be lazy, eager or map, got 'fast'",
      '--api-sock PATH is required',
    ];
    for (const [index, outcome] of outcomes.entries()) {
      expect(outcome.code).toBe(2);
      expect(outcome.stdout).toBe('');
      expect(outcome.stderr).toMatch(new RegExp(`^error: ${messages[index]!.replace(/[()|.]/g, '\\$&')}\\n${USAGE_LINE}`));
    }
    const nowhere = join(work, 'nobody.sock');
    const [absent, notSocket] = await Promise.all([
      spawnNode(['--import', TSX, CTL, '--api-sock', nowhere, 'vms']),
      spawnNode(['--import', TSX, CTL, '--api-sock', join(work, 'host.json'), 'vms']), // a file, not a socket
    ]);
    expect(absent).toEqual({ code: 1, stdout: '', stderr: `error: no host is listening on ${nowhere}\n` });
    expect(notSocket.code).toBe(1);
    expect(notSocket.stderr.split('\n')).toHaveLength(2);
  });

  it('--help lists every command and option', async () => {
    const outcome = await ctl(['--help']);
    expect(outcome.code).toBe(0);
    for (const command of ['host', 'host-stats', 'vms', 'info', 'pause', 'resume', 'snapshot', 'restore', 'fork', 'stats', 'console', 'input', 'balloon', 'create', 'delete']) {
      expect(outcome.stdout).toMatch(new RegExp(`^  ${command}( |$)`, 'm'));
    }
    for (const option of ['--api-sock', '--json', '--timeout-ms', '--live', '--name', '--mode', '--paused', '--offset', '--follow', '--eof', '--set', '--deflate-on-oom', '--stats']) {
      expect(outcome.stdout).toContain(option);
    }
  });

  it('curl --unix-socket speaks the same API', () => {
    const curl = spawnSync('curl', ['-s', '-S', '--max-time', '30', '--unix-socket', socket, 'http://localhost/vms'], { encoding: 'utf8' });
    expect(curl.error, 'curl must be installed').toBeUndefined();
    expect(curl.status, curl.stderr).toBe(0);
    const { vms } = JSON.parse(curl.stdout) as { vms: Info[] };
    expect(vms.map((vm) => vm.name)).toContain('long');
  });
});
