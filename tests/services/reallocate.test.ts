/**
 * Cooperative reallocation (T-5, services/memory/reallocate.ts) through the host's API: memory
 * moves from one nanokernel VM to another through both balloons, the frames move without a copy,
 * the host's frames in use stay flat while the receiving VM grows, and the receiver sees zeros.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { PageState } from '../../kernel/index.ts';
import { REPO } from '../tools/child.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const PAGES_PER_MIB = 256;

/** How long a wait may take here (loaded 2-core machines). */
const WAIT_MS = 90_000;
const waitUntil = <T>(what: string, probe: () => T | undefined | Promise<T | undefined>): Promise<T> => until(what, probe, WAIT_MS);

describe('POST /host/reallocate', () => {
  let dir: string;
  let socket: string;
  let host: Host;
  let api: ApiServer;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bv-realloc-'));
    socket = join(dir, 'api.sock');
    api = await ApiServer.listen(socket);
    host = await Host.start(parseHostConfig({
      host_memory_mib: 256,
      vms: [
        // a dirties 24 MiB with its heap, frees it, then idles: its free pages hold frames.
        { name: 'a', image: KERNEL, memory_mib: 64, boot_args: 'heap 24M 4 1 idle', balloon: { amount_mib: 0 } },
        // b starts with 32 MiB in its balloon: the room it can grow into.
        { name: 'b', image: KERNEL, memory_mib: 64, boot_args: 'idle', balloon: { amount_mib: 32 } },
      ],
    }));
    hostRoutes(api, host);
  });

  afterAll(async () => {
    await api?.close();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('moves frames from one VM to the other without a copy; host frames stay flat', async () => {
    const a = host.vm('a');
    const b = host.vm('b');
    await waitUntil('a to free its heap', () => (host.readConsole('a', 0, 1 << 20).data.includes('heap: ') ? true : undefined));
    await waitUntil("b's balloon to fill", () => (host.balloon('b').actual_pages === 32 * PAGES_PER_MIB ? true : undefined));
    const before = host.info().frames_used;
    const bPresentBefore = b.memory.census().present;

    const answer = await apiRequest<{ state: string; pages: number }>(socket, 'POST', '/host/reallocate', { from: 'a', to: 'b', mib: 16 });
    expect(answer.status).toBe(202);
    expect(answer.body).toMatchObject({ from: 'a', to: 'b', pages: 16 * PAGES_PER_MIB, state: 'running' });

    const done = await waitUntil('the reallocation to finish', () => {
      const status = host.info().reallocations.at(-1)!;
      return status.state === 'done' ? status : undefined;
    });
    expect(host.balloon('a').actual_pages).toBe(16 * PAGES_PER_MIB);
    expect(host.balloon('b').actual_pages).toBe(16 * PAGES_PER_MIB);
    // a's freed heap pages held frames: most of what it gave moved into b.
    expect(done.frames_taken).toBeGreaterThan(8 * PAGES_PER_MIB);
    expect(done.frames_placed).toBe(done.frames_taken);
    expect(b.memory.census().present - bPresentBefore).toBeGreaterThanOrEqual(done.frames_placed);
    // The host's frames did not grow by what moved: only a page without a frame on a's side costs b a new one.
    const after = host.info().frames_used;
    expect(after - before).toBeLessThanOrEqual(16 * PAGES_PER_MIB - done.frames_taken + 64);
    // b reads zeros where it got a's frames, never a's heap data: of the thousands of pages it
    // received, only the few its kernel has written since (free-list node pages) hold data.
    let nonZero = 0;
    b.memory.forEachPage(PageState.PRESENT, (gpn) => {
      if (b.memory.pageBytes(gpn).some((byte) => byte !== 0)) nonZero++;
    });
    expect(nonZero).toBeLessThan(bPresentBefore + 16);
    expect(a.memory.pageCount).toBe(64 * PAGES_PER_MIB);
    expect(host.vmInfo('a').state).toBe('Running');
    expect(host.vmInfo('b').state).toBe('Running');
  });

  it('refuses what cannot be done', async () => {
    const cases: [unknown, number, RegExp][] = [
      [{ from: 'a', to: 'a', mib: 1 }, 400, /two different VMs/],
      [{ from: 'a', to: 'nobody', mib: 1 }, 404, /no VM named/],
      [{ from: 'a', to: 'b', mib: 100 }, 409, /no room to grow|cannot give/],
      [{ from: 'a', to: 'b', mib: 0 }, 400, /body\.mib/],
    ];
    for (const [body, status, message] of cases) {
      const answer = await apiRequest<{ fault_message: string }>(socket, 'POST', '/host/reallocate', body);
      expect(answer.status).toBe(status);
      expect(answer.body.fault_message).toMatch(message);
    }
  });
});
