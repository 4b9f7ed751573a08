/**
 * The host (services/host/host.ts) and its control API (services/host/api.ts) in this process:
 * real nanokernel guests, a real Unix socket, requests through the API client.
 */
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host, type HostInfo, type SnapshotResult, type VmInfo } from '../../services/host/host.ts';
import type { ConsoleSlice } from '../../services/host/console-log.ts';
import { REPO, runTool } from '../tools/child.ts';
import { rawRequest } from './raw-request.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');

function vmConfig(name: string, bootArgs: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, image: KERNEL, memory_mib: 32, vcpus: 1, boot_args: bootArgs, ...extra };
}

/** How long a wait may take here (loaded 2-core machines). */
const WAIT_MS = 60_000;
const waitUntil = <T>(what: string, probe: () => T | undefined | Promise<T | undefined>): Promise<T> => until(what, probe, WAIT_MS);

describe('a host of three nanokernel VMs', () => {
  const programs = { a: 'sieve 20000', b: 'crc32 30000', c: 'walker 1M seq 2 ping 2' };

  it('runs them to completion with the same guest output as three separate tools/run', async () => {
    const spec = parseHostConfig({ vms: Object.entries(programs).map(([name, args]) => vmConfig(name, args)), slice_instructions: 50_000 });
    const host = await Host.start(spec);
    try {
      const ended = await Promise.all(Object.keys(programs).map((name) => host.whenStopped(name)));
      const alone = await Promise.all(Object.values(programs).map((args) => runTool([KERNEL, '--mem', '32M', '--', ...args.split(' ')])));
      for (const [index, name] of Object.keys(programs).entries()) {
        expect(ended[index]!.exit).toEqual({ kind: 'halted', exit_code: alone[index]!.code });
        const output = host.readConsole(name, 0, 1 << 20).data;
        expect(output).toBe(alone[index]!.stdout);
        expect(output).toContain('exited with code 0');
      }
    } finally {
      await host.close();
    }
  });

  it('shares time round-robin: VMs of equal work finish within a slice of each other', async () => {
    const spec = parseHostConfig({ vms: ['x', 'y'].map((name) => vmConfig(name, 'walker 2M seq 0', { max_instructions: 3_000_000 })), slice_instructions: 100_000 });
    const host = await Host.start(spec);
    try {
      const [first] = await Promise.race([host.whenStopped('x'), host.whenStopped('y')]).then((info) => [info]);
      // When the first stops at its budget, the other has had the same turns, less at most one slice.
      const other = host.vmInfo(first!.name === 'x' ? 'y' : 'x');
      expect(first!.exit).toMatchObject({ kind: 'budget' });
      expect(first!.instructions).toBe(3_000_000);
      expect(other.instructions).toBeGreaterThanOrEqual(3_000_000 - 100_000);
    } finally {
      await host.close();
    }
  });
});

describe('the control API over a Unix socket', () => {
  let dir: string;
  let socket: string;
  let host: Host;
  let api: ApiServer;
  const log: string[] = [];
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bv-host-'));
    socket = join(dir, 'api.sock');
    api = await ApiServer.listen(socket, { log: (line) => log.push(line) });
    host = await Host.start(parseHostConfig({ vms: [vmConfig('spin', 'walker 4M random 0')], slice_instructions: 50_000 }), { log: (line) => log.push(line) });
    hostRoutes(api, host);
  });

  afterAll(async () => {
    await api?.close();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates the socket with mode 0600', () => {
    expect(statSync(socket).mode & 0o777).toBe(0o600);
  });

  it('answers GET /host and GET /vms', async () => {
    const info = await call<HostInfo>('GET', '/host');
    expect(info.status).toBe(200);
    expect(info.body.vm_count).toBeGreaterThanOrEqual(1);
    expect(info.body.frames_used).toBeGreaterThan(0);
    expect(info.body.frames_total).toBe(info.body.frames_used + info.body.frames_free);
    const vms = await call<{ vms: VmInfo[] }>('GET', '/vms');
    expect(vms.body.vms.map((vm) => vm.name)).toContain('spin');
  });

  it('creates, pauses, resumes and deletes a VM; deleting returns its memory', async () => {
    const created = await call<VmInfo>('PUT', '/vms/worker', { image: KERNEL, memory_mib: 96, boot_args: 'walker 48M seq 0' });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'worker', state: 'Running', config: { memory_mib: 96 } });
    // Its own pages, not the host's total (the other VMs hold frames too).
    await waitUntil('the walker to touch its memory', async () => ((await call<{ memory: { pages_present: number } }>('GET', '/vms/worker/stats')).body.memory.pages_present > 12_300 ? true : undefined));

    const paused = await call<VmInfo>('PATCH', '/vms/worker', { state: 'Paused' });
    expect(paused.body.state).toBe('Paused');
    const at = (await call<VmInfo>('GET', '/vms/worker')).body.instructions;
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect((await call<VmInfo>('GET', '/vms/worker')).body.instructions).toBe(at);
    expect((await call('PATCH', '/vms/worker', { state: 'Paused' })).status).toBe(409);

    expect((await call<VmInfo>('PATCH', '/vms/worker', { state: 'Resumed' })).body.state).toBe('Running');
    await waitUntil('the instruction count to move', async () => ((await call<VmInfo>('GET', '/vms/worker')).body.instructions > at ? true : undefined));

    const before = (await call<HostInfo>('GET', '/host')).body;
    expect((await call('DELETE', '/vms/worker')).status).toBe(204);
    const after = (await call<HostInfo>('GET', '/host')).body;
    expect(before.frames_used - after.frames_used).toBeGreaterThan(12_000);
    expect(after.rss_bytes).toBeLessThan(before.rss_bytes - 40 * 1024 * 1024);
    expect((await call('GET', '/vms/worker')).status).toBe(404);
  });

  it('snapshots a running VM live, restores it as another VM, and forks it', async () => {
    const path = join(dir, 'spin.ckpt');
    const snap = await call<SnapshotResult>('PUT', '/vms/spin/snapshot', { path, live: true });
    expect(snap.status).toBe(200);
    expect(snap.body).toMatchObject({ path, live: true });
    expect(snap.body.pages_stored).toBeGreaterThan(0);
    expect(existsSync(path)).toBe(true);

    const restored = await call<VmInfo & { restore: { mode: string } }>('PUT', '/vms/restore', { path, name: 'spin2', mode: 'lazy' });
    expect(restored.status).toBe(201);
    expect(restored.body).toMatchObject({ name: 'spin2', state: 'Running', origin: { kind: 'checkpoint', path }, restore: { mode: 'lazy' } });
    const start = restored.body.instructions;
    await waitUntil('the restored VM to run', async () => ((await call<VmInfo>('GET', '/vms/spin2')).body.instructions > start ? true : undefined));

    const child = await call<VmInfo>('PUT', '/vms/spin/fork', { name: 'spin-child' });
    expect(child.status).toBe(201);
    expect(child.body.origin).toEqual({ kind: 'fork', parent: 'spin' });
    // The child continues from the parent's state, counters included.
    const forkedAt = child.body.instructions;
    expect(forkedAt).toBeGreaterThan(0);
    await waitUntil('the fork to run', async () => ((await call<VmInfo>('GET', '/vms/spin-child')).body.instructions > forkedAt ? true : undefined));

    for (const name of ['spin2', 'spin-child']) expect((await call('DELETE', `/vms/${name}`)).status).toBe(204);
  });

  it('gives the stats tools/run --stats prints, and host stats', async () => {
    const stats = await call<{ vcpus: unknown[] }>('GET', '/vms/spin/stats');
    expect(stats.status).toBe(200);
    expect(stats.body.vcpus).toHaveLength(1);
    expect((await call('GET', '/host/stats')).status).toBe(200);
  });

  it('feeds console input to a guest that reads it, and reads its output from an offset', async () => {
    const created = await call<VmInfo>('PUT', '/vms/reader', { image: KERNEL, memory_mib: 16, boot_args: 'wc' });
    expect(created.status).toBe(201);
    await waitUntil('the guest to wait for input', async () => ((await call<VmInfo>('GET', '/vms/reader')).body.waiting_for_input ? true : undefined));
    expect((await call('PUT', '/vms/reader/console', { data: 'one two\nthree\n' })).status).toBe(204);
    expect((await call('PUT', '/vms/reader/console', { eof: true })).status).toBe(204);
    const done = await waitUntil('the guest to stop', async () => {
      const info = (await call<VmInfo>('GET', '/vms/reader')).body;
      return info.state === 'Stopped' ? info : undefined;
    });
    expect(done.exit).toEqual({ kind: 'halted', exit_code: 0 });
    const all = (await call<ConsoleSlice>('GET', '/vms/reader/console')).body;
    expect(all.data).toMatch(/wc: 2 lines, 3 words, 14 bytes/);
    const tail = (await call<ConsoleSlice>('GET', `/vms/reader/console?offset=${all.next_offset - 10}`)).body;
    expect(tail.offset).toBe(all.next_offset - 10);
    expect(tail.data).toBe(all.data.slice(-10));
    // A stopped VM takes no input; its exit stays visible until it is deleted.
    expect((await call('PUT', '/vms/reader/console', { data: 'more' })).status).toBe(409);
    expect((await call('DELETE', '/vms/reader')).status).toBe(204);
  });

  it('answers errors as JSON with the right status', async () => {
    const cases: [string, string, unknown, number, RegExp][] = [
      ['GET', '/vms/nobody', undefined, 404, /no VM named 'nobody'/],
      ['GET', '/nowhere', undefined, 404, /no such endpoint/],
      ['POST', '/vms', undefined, 405, /not allowed/],
      ['PATCH', '/vms/spin', { state: 'Sleeping' }, 400, /body\.state/],
      ['PATCH', '/vms/spin', undefined, 400, /needs a JSON body/],
      ['PUT', '/vms/spin', { image: KERNEL, memory_mib: 16 }, 409, /exists/],
      ['PUT', '/vms/restore', { path: join(dir, 'missing.ckpt'), name: 'x' }, 400, /missing\.ckpt/],
      ['PUT', '/vms/bad', { image: KERNEL, memory_mib: 0 }, 400, /memory_mib/],
      ['PUT', '/vms/bad', { image: KERNEL, memory_mib: 2000 }, 507, /can never fit the host pool of 1024 MiB/],
      ['PUT', '/vms/bad', { image: KERNEL, memory_mib: 1000 }, 507, /does not fit the host pool of 1024 MiB beside the \d+ MiB the other VMs have/],
      ['PUT', '/vms/bad', { image: join(dir, 'nothing.s'), memory_mib: 16 }, 400, /nothing\.s/],
      ['PUT', '/vms/spin/fork', { name: 'spin' }, 409, /exists/],
      ['GET', '/vms/spin/console?offset=-1', undefined, 400, /offset/],
      // A file that cannot be created is the request's fault, live or not (found by the fuzz test).
      ['PUT', '/vms/spin/snapshot', { path: join(dir, 'no/such/dir/x.ckpt') }, 400, /no\/such\/dir/],
      ['PUT', '/vms/spin/snapshot', { path: join(dir, 'no/such/dir/x.ckpt'), live: true }, 400, /no\/such\/dir/],
    ];
    for (const [method, path, body, status, message] of cases) {
      const answer = await call<{ fault_message: string }>(method, path, body);
      expect({ method, path, status: answer.status }).toEqual({ method, path, status });
      expect(answer.body.fault_message).toMatch(message);
    }
    // Not JSON, and a body over the limit.
    const raw = await rawRequest(socket, 'PATCH /vms/spin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{oops');
    expect(raw).toMatch(/^HTTP\/1\.1 400/);
    expect(raw).toMatch(/not JSON/);
    const big = await call('PUT', '/vms/huge', { image: KERNEL, memory_mib: 16, boot_args: 'x'.repeat(70_000) });
    expect(big.status).toBe(413);
    expect((await call<VmInfo>('GET', '/vms/spin')).body.state).toBe('Running');
  });

  it('answers malformed HTTP 400 and keeps serving', async () => {
    const raw = await rawRequest(socket, 'THIS IS NOT HTTP\r\n\r\n');
    expect(raw).toMatch(/^HTTP\/1\.1 400/);
    expect(log.some((line) => /malformed/.test(line))).toBe(true);
    expect((await call('GET', '/host')).status).toBe(200);
  });

  it('refuses a second host on the same socket, and a path that is not a socket', async () => {
    await expect(ApiServer.listen(socket)).rejects.toThrow(/in use/);
    const file = join(dir, 'plain-file');
    writeFileSync(file, 'keep me');
    await expect(ApiServer.listen(file)).rejects.toThrow(/not a socket/);
    expect(existsSync(file)).toBe(true);
  });
});
