/**
 * The memory policy through a real host and its API (issue 11 items 1 and 2; docs/api.md,
 * docs/overcommit.md "Shares", docs/active-memory.md): shares, reservation and limit per VM
 * (config, GET and PATCH /vms/{name}/memory-policy), the idle memory tax rate (PATCH
 * /host/reclaim), sampled active memory (GET /vms/{name}/active-memory) driven by the host on
 * each VM's virtual time, and a sampler's state carried by a checkpoint/restore and a fork.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host, type MemoryPolicyInfo } from '../../services/host/host.ts';
import type { ActiveMemoryStats, MemorySchedulerStats } from '../../services/memory/index.ts';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { REPO, spawnNode } from '../tools/child.ts';
import { until as untilWithin } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-memory-policy-'));

/** Polls with a generous timeout: these guests run for a while on a loaded machine. */
const until = <T>(what: string, probe: () => Promise<T | undefined>): Promise<T> => untilWithin(what, probe, 120_000);

describe('the memory policy through the host and its API', () => {
  let socket: string;
  let host: Host;
  let api: ApiServer;
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);

  beforeAll(async () => {
    socket = join(dir, 'api.sock');
    api = await ApiServer.listen(socket);
    host = await Host.start(parseHostConfig({
      host_memory_mib: 256,
      overcommit: true,
      slice_instructions: 100_000,
      reclaim: { tax_rate: 0.5, swap_dir: dir },
      vms: [
        // 'busy' walks 8 MiB of its 32 forever; 'lazy' walks 8 MiB once, then only 64 KiB (its frames
        // stay, idle); 'plain' samples nothing.
        { name: 'busy', image: KERNEL, memory_mib: 32, boot_args: 'walker 8M random 0', memory_policy: { shares: 500, active_sampling: { period_instructions: 2_000_000 } } },
        { name: 'lazy', image: KERNEL, memory_mib: 32, boot_args: 'walker 8M seq 1 walker 64K seq 0', memory_policy: { reservation_mib: 4, limit_mib: 24, active_sampling: { period_instructions: 2_000_000 } } },
        { name: 'plain', image: KERNEL, memory_mib: 16, boot_args: 'idle', memory_policy: { active_sampling: null } },
        // 'scan' walks 4 MiB cyclically: its miss-rate curve falls off a cliff at 4 MiB.
        { name: 'scan', image: KERNEL, memory_mib: 32, boot_args: 'walker 4M seq 0', memory_policy: { mrc: { rate_pct: 10, quiet_instructions: 100_000, activity_rate_pct: 20 } } },
      ],
    }));
    hostRoutes(api, host);
  });

  afterAll(async () => {
    await api?.close();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('samples each VM: the walker is seen active, the VM whose big walk ended idle', async () => {
    const active = async (name: string) => (await call<ActiveMemoryStats>('GET', `/vms/${name}/active-memory`)).body;
    const walked = await until("lazy's big walk to end", async () => (host.readConsole('lazy', 0, 1 << 20).data.includes('walker: 8388608 bytes') ? (await active('lazy')).periods : undefined));
    const [busy, lazy] = await until('both samplers to close eight more periods', async () => {
      const [b, l] = [await active('busy'), await active('lazy')];
      return b.periods >= 10 && l.periods >= walked + 8 ? [b, l] as const : undefined;
    });
    // 8 MiB of 32: a quarter of the pages, plus the kernel's few.
    expect(busy.estimate).toBeGreaterThan(0.15);
    expect(busy.estimate).toBeLessThan(0.4);
    expect(busy.recent_samples.length).toBeGreaterThan(0);
    expect(busy).toMatchObject({ pages_per_period: 100, period_instructions: 2_000_000, guest_pages: 8192 });
    // Lazy's recent periods saw (almost) nothing: 16 pages and the kernel's; its estimate is on its way down.
    const recent = lazy.recent_samples.slice(-5);
    expect(recent.every((sample) => sample.f <= 0.05)).toBe(true);
    expect(lazy.fast!).toBeLessThan(0.05);
    const missing = await call('GET', '/vms/plain/active-memory');
    expect(missing.status).toBe(409);
    expect(missing.body).toMatchObject({ fault_message: expect.stringMatching(/no active memory sampling/) });
  }, 180_000);

  it('GET memory-policy shows shares, reservation, limit and ρ; PATCH changes them and the scheduler follows', async () => {
    const policy = async (name: string) => (await call<MemoryPolicyInfo>('GET', `/vms/${name}/memory-policy`)).body;
    const busy = await policy('busy');
    expect(busy).toMatchObject({ shares: 500, reservation_mib: 0, limit_mib: null, tax_rate: 0.5 });
    expect(busy.active_fraction).toBeGreaterThan(0.3); // of the frames it holds: most of them are its walk
    expect(busy.shares_per_page).toBeCloseTo(500 / (busy.frames_held * (busy.active_fraction! + 2 * (1 - busy.active_fraction!))), 6);
    expect(await policy('lazy')).toMatchObject({ shares: 320, reservation_mib: 4, limit_mib: 24 });
    expect(await policy('plain')).toMatchObject({ shares: 160, active_pages: null, active_fraction: null });

    const patched = await call<MemoryPolicyInfo>('PATCH', '/vms/lazy/memory-policy', { shares: 1000, limit_mib: null });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ shares: 1000, reservation_mib: 4, limit_mib: null });
    const scheduler = (await call<{ memory_scheduler: MemorySchedulerStats }>('GET', '/host/stats')).body.memory_scheduler;
    expect(scheduler.vms.find((v) => v.name === 'lazy')).toMatchObject({ shares: 1000, min_pages: 1024, max_pages: null });
    expect(scheduler.tax_rate).toBe(0.5);

    for (const [body, pattern] of [
      [{ limit_mib: 2 }, /limit_mib: is 2 MiB, less than the reservation \(4 MiB\)/],
      [{ reservation_mib: 40 }, /reservation_mib: is 40 MiB, more than VM 'lazy''s memory \(32 MiB\)/],
      [{ shares: 0 }, /body\.shares/],
      [{}, /body/],
      [{ share: 5 }, /body\.share: unknown key/],
    ] as const) {
      const refused = await call('PATCH', '/vms/lazy/memory-policy', body);
      expect(refused.status).toBe(400);
      expect(JSON.stringify(refused.body)).toMatch(pattern);
    }
    expect((await call('GET', '/vms/nobody/memory-policy')).status).toBe(404);
  });

  it('GET /vms/{name}/mrc gives the curve and a size; POST …/mrc/size makes it the VM\'s limit', async () => {
    type Mrc = { curve: { references: number; sizes_mib: number[]; miss_ratio: number[]; floor: number; activity_rate: number; activity_windows: number }; recommended: { within: number; pages: number; mib: number } };
    // Twenty loops over the 1,024 pages (a reference is a page's first access per quiet time).
    const mrc = await until('the scan to make 20,000 references', async () => {
      const got = (await call<Mrc>('GET', '/vms/scan/mrc')).body;
      return got.curve.references > 20_000 ? got : undefined;
    });
    // The configured activity census (memory_policy.mrc.activity_rate_pct) is the tracker's.
    expect(mrc.curve.activity_rate).toBe(0.2);
    expect(mrc.curve.activity_windows).toBeGreaterThan(0);
    /** The miss ratio with `mib` of memory: at the largest size of the curve not above it. */
    const at = (mib: number): number => {
      let index = 0;
      mrc.curve.sizes_mib.forEach((size, i) => { if (size <= mib) index = i; });
      return mrc.curve.miss_ratio[index]!;
    };
    expect(at(2)).toBeGreaterThan(0.9); // half the loop fits: LRU misses every page
    expect(at(6)).toBeLessThan(0.1); // all of it fits
    expect(mrc.recommended.within).toBe(0.05);
    expect(mrc.recommended.mib).toBeGreaterThan(3.5);
    expect(mrc.recommended.mib).toBeLessThan(6);
    expect((await call<Mrc>('GET', '/vms/scan/mrc?within=0.5')).body.recommended.within).toBe(0.5);
    expect((await call('GET', '/vms/scan/mrc?within=2')).status).toBe(400);
    expect((await call('GET', '/vms/busy/mrc')).status).toBe(409);

    const sized = await call<MemoryPolicyInfo>('POST', '/vms/scan/mrc/size', { within: 0.05 });
    expect(sized.status).toBe(200);
    expect(sized.body.limit_mib).toBe(Math.ceil(mrc.recommended.mib));
    const scheduler = host.hostStats().memory_scheduler!;
    expect(scheduler.vms.find((v) => v.name === 'scan')!.max_pages).toBe(sized.body.limit_mib! * 256);
    expect((await call('POST', '/vms/scan/mrc/size', { within: 0 })).status).toBe(400);
  }, 180_000);

  it('PATCH /host/reclaim sets the tax rate, within 0 … 0.99', async () => {
    const set = await call<{ tax_rate: number }>('PATCH', '/host/reclaim', { tax_rate: 0.9 });
    expect(set).toMatchObject({ status: 200, body: { tax_rate: 0.9 } });
    expect(host.hostStats().memory_scheduler!.tax_rate).toBe(0.9);
    expect((await call('PATCH', '/host/reclaim', { tax_rate: 1 })).status).toBe(400);
    expect((await call('PATCH', '/host/reclaim', { rate: 0.5 })).status).toBe(400);
  });

  it('tools/ctl memory-policy, active-memory, mrc and tax-rate', async () => {
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
    const ctl = (...args: string[]) => spawnNode(['--import', tsx, join(REPO, 'tools/ctl.ts'), '--api-sock', socket, ...args]);
    const set = await ctl('memory-policy', 'busy', '--shares', '700', '--limit', '28');
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/^shares +700$/m);
    expect(set.stdout).toMatch(/^limit +28 MiB$/m);
    expect(set.stdout).toMatch(/^shares per page \(ρ\) +\d/m);
    const cleared = await ctl('memory-policy', 'busy', '--limit', 'none', '--json');
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(JSON.parse(cleared.stdout)).toMatchObject({ shares: 700, limit_mib: null });
    const active = await ctl('active-memory', 'busy');
    expect(active.code, active.stderr).toBe(0);
    expect(active.stdout).toMatch(/^estimate +\d+\.\d % \([\d,]+ of 8,192 pages\)$/m);
    const mrc = await ctl('mrc', 'scan', '--within', '0.1');
    expect(mrc.code, mrc.stderr).toBe(0);
    expect(mrc.stdout).toMatch(/^recommended +[\d.]+ MiB \([\d,]+ pages\): miss ratio within 0\.1 of the floor$/m);
    expect(mrc.stdout).toMatch(/^ *MiB +MISS RATIO$/m);
    const rate = await ctl('tax-rate', '0.6');
    expect(rate).toMatchObject({ code: 0, stdout: 'idle memory tax rate 0.6\n' });
    for (const bad of [['tax-rate', '2'], ['mrc', 'scan', '--within', '0'], ['memory-policy', 'busy', '--shares', 'many']]) {
      const refused = await ctl(...bad);
      expect({ bad, code: refused.code }).toEqual({ bad, code: 2 });
    }
    const none = await ctl('active-memory', 'plain');
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no active memory sampling \(memory_policy\.active_sampling is null\) \(HTTP 409\)/);
  }, 60_000);

  it('a checkpoint/restore and a fork of a sampled VM carry its sampler\'s state', async () => {
    await call('PATCH', '/vms/busy', { state: 'Paused' });
    const before = (await call<ActiveMemoryStats>('GET', '/vms/busy/active-memory')).body;
    const path = join(dir, 'busy.bvs');
    expect((await call('PUT', '/vms/busy/snapshot', { path })).status).toBe(200);
    expect((await call('PUT', '/vms/restore', { path, name: 'busy2', paused: true })).status).toBe(201);
    expect((await call('PUT', '/vms/busy/fork', { name: 'busy3', paused: true })).status).toBe(201);
    for (const name of ['busy2', 'busy3']) {
      const copy = (await call<ActiveMemoryStats>('GET', `/vms/${name}/active-memory`)).body;
      expect({ name, ...copy }).toEqual({ name, ...before });
    }
    // And they sample on: resumed, the restored copy closes further periods.
    await call('PATCH', '/vms/busy2', { state: 'Resumed' });
    await until('the restored VM to close a period', async () => ((await call<ActiveMemoryStats>('GET', '/vms/busy2/active-memory')).body.periods > before.periods ? true : undefined));
  }, 180_000);
});
