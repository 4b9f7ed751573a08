/**
 * tools/run --api-sock: one VM run as usual (output on stdout, --stats, signals) while the host's
 * control API (docs/api.md) serves it on a socket.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { apiRequest } from '../../services/host/client.ts';
import type { ConsoleSlice } from '../../services/host/console-log.ts';
import type { VmInfo } from '../../services/host/host.ts';
import { runTool, startNode } from './child.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-run-api-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('tools/run --api-sock', () => {
  it('serves its VM while it runs: info, pause, resume, console, fork; SIGTERM stops it cleanly', async () => {
    const socket = join(dir, 'run.sock');
    const run = startNode(['--import', 'tsx', 'tools/run.ts', 'examples/nanokernel/kernel.s', '--mem', '16M', '--api-sock', socket, '--stats', '--', 'walker', '1M', 'random', '0']);
    try {
      await run.waitFor('stderr', `api: serving kernel.s on ${socket}`);
      const call = <T>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);
      const info = (await call<VmInfo>('GET', '/vms/kernel.s')).body;
      expect(info).toMatchObject({ name: 'kernel.s', state: 'Running', origin: { kind: 'image', image: 'examples/nanokernel/kernel.s' }, config: { memory_mib: 16 } });

      expect((await call<VmInfo>('PATCH', '/vms/kernel.s', { state: 'Paused' })).body.state).toBe('Paused');
      const at = (await call<VmInfo>('GET', '/vms/kernel.s')).body.instructions;
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect((await call<VmInfo>('GET', '/vms/kernel.s')).body.instructions).toBe(at);
      expect((await call<VmInfo>('PATCH', '/vms/kernel.s', { state: 'Resumed' })).body.state).toBe('Running');

      // The console goes to stdout as always, and to the API.
      const output = (await call<ConsoleSlice>('GET', '/vms/kernel.s/console')).body;
      expect(output.data).toContain('started pid 1 asid 1: walker 1M random 0');
      expect(run.stdout).toContain('started pid 1 asid 1: walker 1M random 0');

      // Its own VM cannot be deleted through the API; others can be made and go with the run.
      const deleted = await call<{ fault_message: string }>('DELETE', '/vms/kernel.s');
      expect(deleted.status).toBe(409);
      expect((await call<VmInfo>('PUT', '/vms/kernel.s/fork', { name: 'child' })).status).toBe(201);

      const end = await run.stop('SIGTERM');
      expect(end.code).toBe(143);
      expect(end.stderr).toMatch(/error: interrupted by SIGTERM after [\d,]+ instructions/);
      expect(end.stderr).toMatch(/^memory$/m); // --stats printed
      expect(existsSync(socket)).toBe(false);
    } finally {
      await run.stop('SIGKILL');
    }
  });

  it('ends with the guest: the exit code is the guest\'s and the socket is gone', async () => {
    const socket = join(dir, 'short.sock');
    const outcome = await runTool(['examples/nanokernel/kernel.s', '--mem', '16M', '--api-sock', socket, '--', 'sieve', '1000']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toContain('sieve: 168 primes up to 1000');
    expect(existsSync(socket)).toBe(false);
  });

  it('refuses the instruction points the API replaces, and a socket in use', async () => {
    const refused = await runTool(['examples/hello.s', '--api-sock', join(dir, 'x.sock'), '--fork-at', '10', '--forks', '1']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--fork-at cannot be combined with --api-sock/);

    const socket = join(dir, 'busy.sock');
    const first = startNode(['--import', 'tsx', 'tools/run.ts', 'examples/nanokernel/kernel.s', '--mem', '16M', '--api-sock', socket, '--', 'walker', '1M', 'seq', '0']);
    try {
      await first.waitFor('stderr', 'api: serving');
      const second = await runTool(['examples/hello.s', '--api-sock', socket]);
      expect(second.code).toBe(5);
      expect(second.stderr).toMatch(/in use/);
      expect(first.running).toBe(true);
    } finally {
      await first.stop('SIGKILL');
    }
  });
});
