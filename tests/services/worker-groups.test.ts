/**
 * Worker groups (issue 16, docs/workers.md): VMs on worker threads over the host's one pool,
 * driven through the same Host and control API as the host's own VMs.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { ConfigError, parseHostConfig } from '../../services/host/config.ts';
import { Host, type HostInfo, type VmInfo } from '../../services/host/host.ts';
import type { WorkerGroupInfo } from '../../services/host/worker-group.ts';
import type { ConsoleSlice } from '../../services/host/console-log.ts';
import { REPO } from '../tools/child.ts';
import { until } from './until.ts';
import { DEFAULT_MODEL_HOST, ModelHost } from '../../services/placement/index.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const PROGRAMS: Record<string, string> = { a: 'sieve 20000', b: 'crc32 30000', c: 'walker 1M seq 2 ping 2' };
const LAST_CPU = availableParallelism() - 1;

function vmConfig(name: string, bootArgs: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, image: KERNEL, memory_mib: 32, vcpus: 1, boot_args: bootArgs, ...extra };
}

/** The CPUs /proc says a thread of this process may run on. */
function cpusAllowed(threadId: number): number[] {
  const status = readFileSync(`/proc/self/task/${threadId}/status`, 'utf8');
  const list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(status)![1]!;
  return list.split(',').flatMap((part) => {
    const [from, to] = part.split('-').map(Number);
    return Array.from({ length: (to ?? from!) - from! + 1 }, (_, i) => from! + i);
  });
}

async function runAll(groups: Record<string, string | undefined>): Promise<Record<string, { exit: VmInfo['exit']; instructions: number; output: string }>> {
  const groupNames = [...new Set(Object.values(groups).filter((g): g is string => g !== undefined))];
  const spec = parseHostConfig({
    vms: Object.entries(PROGRAMS).map(([name, args]) => vmConfig(name, args, groups[name] === undefined ? {} : { group: groups[name] })),
    worker_groups: groupNames.map((name) => ({ name })),
    slice_instructions: 50_000,
  });
  const host = await Host.start(spec);
  try {
    const result: Record<string, { exit: VmInfo['exit']; instructions: number; output: string }> = {};
    for (const name of Object.keys(PROGRAMS)) {
      const info = await host.whenStopped(name);
      const output = (await host.vmCalls(name).readConsole(name, 0, 1 << 20)).data;
      result[name] = { exit: info.exit, instructions: info.instructions, output };
    }
    return result;
  } finally {
    await host.close();
  }
}

describe('VMs in worker groups', () => {
  it('give the same guest output and instruction counts as in the host thread', async () => {
    const together = await runAll({});
    const apart = await runAll({ a: 'g1', b: 'g2', c: 'g2' });
    expect(apart).toEqual(together);
    for (const name of Object.keys(PROGRAMS)) expect(together[name]!.output).toContain('exited with code 0');
  }, 180_000);

  it('refuses configurations that name no group, name one twice, or put persistent memory in one', () => {
    expect(() => parseHostConfig({ vms: [vmConfig('a', 'sieve 10', { group: 'nope' })] })).toThrow(/vms\[0\]\.group: names no worker group/);
    expect(() => parseHostConfig({ worker_groups: [{ name: 'g' }, { name: 'g' }] })).toThrow(/worker_groups\[1\]\.name/);
    expect(() => parseHostConfig({ worker_groups: [{ name: 'g', cpus: [] }] })).toThrow(ConfigError);
    expect(() => parseHostConfig({ worker_groups: [{ name: 'g', cpus: [0, 0] }] })).toThrow(ConfigError);
    expect(() => parseHostConfig({ worker_groups: [{ name: 'g' }], vms: [vmConfig('a', 'pmkv', { group: 'g', pmem: { path: '/tmp/x.pmem', size_kib: 64, create: true } })] })).toThrow(/vms\[0\]\.group: a VM with pmem/);
  });

  it('refuses a group pinned to CPUs the host does not have, before any guest runs', async () => {
    const spec = parseHostConfig({ worker_groups: [{ name: 'g', cpus: [1023] }], vms: [vmConfig('a', 'sieve 10', { group: 'g' })] });
    await expect(Host.start(spec)).rejects.toThrow(/worker_groups\[0\]: .*CPU/);
  }, 60_000);
});

describe('the control API with worker groups', () => {
  let dir: string;
  let socket: string;
  let host: Host;
  let api: ApiServer;
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'bv-groups-'));
    socket = join(dir, 'api.sock');
    api = await ApiServer.listen(socket);
    host = await Host.start(parseHostConfig({
      worker_groups: [{ name: 'g1', cpus: [0] }, { name: 'g2', cpus: [LAST_CPU] }],
      vms: [vmConfig('main', 'walker 4M random 0'), vmConfig('w1', 'walker 4M random 0', { group: 'g1' }), vmConfig('w2', 'walker 4M random 0', { group: 'g2', balloon: { amount_mib: 0 } })],
      slice_instructions: 50_000,
    }));
    hostRoutes(api, host);
  }, 60_000);

  afterAll(async () => {
    await api?.close();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('pins each group\'s thread where the configuration says, as the kernel reports it', async () => {
    const groups = await call<{ worker_groups: WorkerGroupInfo[] }>('GET', '/groups');
    expect(groups.status).toBe(200);
    const [g1, g2] = groups.body.worker_groups;
    expect(g1).toMatchObject({ name: 'g1', cpus: [0], pinned: true, vms: ['w1'] });
    expect(g2).toMatchObject({ name: 'g2', cpus: [LAST_CPU], pinned: true, vms: ['w2'] });
    expect(cpusAllowed(g1!.thread_id)).toEqual([0]);
    expect(cpusAllowed(g2!.thread_id)).toEqual([LAST_CPU]);
    expect(g1!.thread_id).not.toBe(process.pid);
    // The main thread is not pinned by its workers.
    expect(cpusAllowed(process.pid).length).toBe(availableParallelism());
    // Moving a group: the kernel's answer comes back.
    const moved = await call<WorkerGroupInfo>('PATCH', '/groups/g1', { cpus: [LAST_CPU] });
    expect(moved.status).toBe(200);
    expect(moved.body.cpus).toEqual([LAST_CPU]);
    expect(cpusAllowed(g1!.thread_id)).toEqual([LAST_CPU]);
    expect((await call('PATCH', '/groups/g1', { cpus: [1023] })).status).toBe(400);
    expect((await call('PATCH', '/groups/none', { cpus: [0] })).status).toBe(404);
    expect((await call('PATCH', '/groups/g1', { cpus: [] })).status).toBe(400);
  }, 60_000);

  it('lists, describes, pauses and resumes VMs in groups like the host\'s own', async () => {
    const host_ = await call<HostInfo>('GET', '/host');
    expect(host_.body.vm_count).toBe(3);
    expect(host_.body.worker_groups.map((g) => g.name)).toEqual(['g1', 'g2']);
    const vms = await call<{ vms: VmInfo[] }>('GET', '/vms');
    expect(vms.body.vms.map((vm) => vm.name).sort()).toEqual(['main', 'w1', 'w2']);
    const paused = await call<VmInfo>('PATCH', '/vms/w1', { state: 'Paused' });
    expect(paused.body.state).toBe('Paused');
    const at = (await call<VmInfo>('GET', '/vms/w1')).body.instructions;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await call<VmInfo>('GET', '/vms/w1')).body.instructions).toBe(at);
    expect((await call<VmInfo>('PATCH', '/vms/w1', { state: 'Resumed' })).body.state).toBe('Running');
    const stats = await call<{ instructions: number }>('GET', '/vms/w2/stats');
    expect(stats.status).toBe(200);
    const console_ = await call<ConsoleSlice>('GET', '/vms/w2/console');
    expect(console_.status).toBe(200);
    expect((await call('GET', '/vms/w2/balloon')).status).toBe(200);
    expect((await call('GET', '/vms/nope')).status).toBe(404);
  }, 60_000);

  it('creates a VM in a group, forks it there, and returns the frames when they are deleted', async () => {
    const before = (await call<HostInfo>('GET', '/host')).body.frames_used;
    const created = await call<VmInfo>('PUT', '/vms/extra', { image: KERNEL, memory_mib: 16, boot_args: 'walker 8M seq 0', group: 'g2' });
    expect(created.status).toBe(201);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const forked = await call<VmInfo>('PUT', '/vms/extra/fork', { name: 'extra-child' });
    expect(forked.status).toBe(201);
    expect((await call<{ worker_groups: WorkerGroupInfo[] }>('GET', '/groups')).body.worker_groups[1]!.vms).toEqual(['w2', 'extra', 'extra-child']);
    const held = (await call<HostInfo>('GET', '/host')).body.frames_used;
    expect(held).toBeGreaterThan(before);
    expect((await call('DELETE', '/vms/extra-child')).status).toBe(204);
    expect((await call('DELETE', '/vms/extra')).status).toBe(204);
    expect((await call('GET', '/vms/extra')).status).toBe(404);
    // The other VMs touched all their memory long ago: the drop is the deleted VMs' frames coming back.
    const after = (await call<HostInfo>('GET', '/host')).body.frames_used;
    expect(after).toBeLessThan(held);
    expect((await call('PUT', '/vms/x', { image: KERNEL, memory_mib: 16, group: 'nope' })).status).toBe(404);
    expect((await call('PUT', '/vms/w1', { image: KERNEL, memory_mib: 16 })).status).toBe(409);
  }, 60_000);

  it('snapshots a VM in a group and restores it in the host thread or in a group', async () => {
    const path = join(dir, 'w2.bvc');
    await call('PATCH', '/vms/w2', { state: 'Paused' });
    const saved = await call('PUT', '/vms/w2/snapshot', { path });
    expect(saved.status).toBe(200);
    const instructions = (await call<VmInfo>('GET', '/vms/w2')).body.instructions;
    const restored = await call<VmInfo>('PUT', '/vms/restore', { path, name: 'w2-copy', paused: true });
    expect(restored.status).toBe(201);
    expect(restored.body.instructions).toBe(instructions);
    expect((await call('DELETE', '/vms/w2-copy')).status).toBe(204);
    // And into a group: the group's host restores it.
    const inGroup = await call<VmInfo>('PUT', '/vms/restore', { path, name: 'w2-g1', paused: true, group: 'g1' });
    expect(inGroup.status).toBe(201);
    expect(inGroup.body.instructions).toBe(instructions);
    expect((await call<{ worker_groups: WorkerGroupInfo[] }>('GET', '/groups')).body.worker_groups[0]!.vms).toContain('w2-g1');
    expect((await call('PUT', '/vms/restore', { path, name: 'w2-g1', group: 'g1' })).status).toBe(409);
    expect((await call('PUT', '/vms/restore', { path, name: 'w2-x', group: 'nope' })).status).toBe(404);
    // Checked here before the group restores anything: a file that is no checkpoint, and a VM the pool cannot take.
    const garbage = join(dir, 'garbage.bvc');
    writeFileSync(garbage, 'not a checkpoint');
    expect((await call('PUT', '/vms/restore', { path: garbage, name: 'w2-y', group: 'g1' })).status).toBe(400);
    expect((await call<{ vms: VmInfo[] }>('GET', '/vms')).body.vms.map((vm) => vm.name)).not.toContain('w2-y');
    expect((await call('DELETE', '/vms/w2-g1')).status).toBe(204);
    await call('PATCH', '/vms/w2', { state: 'Resumed' });
  }, 60_000);

  it('refuses what cannot be done and forwards migration', async () => {
    const realloc = await call<{ fault_message: string }>('POST', '/host/reallocate', { from: 'main', to: 'w2', mib: 1 });
    // Across threads it runs through the host (below); here w2's balloon has no room to grow.
    expect(realloc.status).toBe(409);
    expect(realloc.body.fault_message).toMatch(/'w2''s balloon target is 0 pages/);
    // Live migration is its group's own host's: a refused connection leaves the VM running there.
    const migrate = await call<{ fault_message: string }>('PUT', '/vms/w1/migrate', { destination: '127.0.0.1:1' });
    expect(migrate.status).toBe(400);
    expect(migrate.body.fault_message).toMatch(/insecure|TLS/);
    expect((await call<VmInfo>('GET', '/vms/w1')).body.state).toBe('Running');
  }, 60_000);
});

describe('power-aware placement of worker groups', () => {
  it('is off unless configured, and needs a group without cpus', async () => {
    expect(() => parseHostConfig({ placement: {}, worker_groups: [{ name: 'g', cpus: [0] }] })).toThrow(/placement: places worker groups without cpus/);
    const host = await Host.start(parseHostConfig({}));
    try {
      expect(() => host.placementStatus()).toThrow(/placement is off/);
    } finally {
      await host.close();
    }
  });

  it('measures each group\'s demand from its thread, consolidates idle groups, and spreads one that turns heavy', async () => {
    // A model topology that matches this machine's CPU numbers: two packages of one CPU each (CPUs 0 and 1).
    const provider = new ModelHost({ ...DEFAULT_MODEL_HOST, packages: 2, cpusPerPackage: 1 });
    const host = await Host.start(parseHostConfig({
      worker_groups: [{ name: 'p' }, { name: 'q' }],
      vms: [vmConfig('pv', 'walker 4M random 0', { group: 'p', start_paused: true }), vmConfig('qv', 'walker 4M random 0', { group: 'q', start_paused: true })],
    }));
    try {
      host.enablePlacement({ intervalMs: 100, targetUtilisation: 0.8, spreadHoldMs: 300, consolidateHoldMs: 300 }, provider);
      const waitFor = (what: string, ok: (status: ReturnType<Host['placementStatus']>) => boolean): Promise<ReturnType<Host['placementStatus']>> =>
        until(what, async () => {
          const status = host.placementStatus();
          return ok(status) ? status : undefined;
        }, 30_000);
      const cpusOf = (status: ReturnType<Host['placementStatus']>, name: string): number[] => status.groups.find((g) => g.name === name)!.cpus;
      // Both idle (paused VMs): first spread (heavy until measured), then packed onto one CPU.
      const packed = await waitFor('consolidation', (s) => s.decisions.some((d) => d.action === 'consolidate') && cpusOf(s, 'p').join() === cpusOf(s, 'q').join());
      expect(packed.decisions[0]!.action).toBe('initial');
      for (const group of packed.groups) expect(group.demand_cpus).toBeLessThan(0.3);
      const groups = host.workerGroups();
      for (const group of groups) expect(cpusAllowed(group.thread_id)).toEqual(cpusOf(packed, group.name));
      // p turns CPU-bound: measured heavy, it gets a CPU of its own after the hold.
      await host.vmCalls('pv').resume('pv');
      const spread = await waitFor('spreading', (s) => s.decisions.some((d) => d.action === 'spread') && cpusOf(s, 'p').join() !== cpusOf(s, 'q').join());
      expect(spread.groups.find((g) => g.name === 'p')!.demand_cpus).toBeGreaterThan(0.5);
      for (const group of groups) expect(cpusAllowed(group.thread_id)).toEqual(cpusOf(spread, group.name));
      expect(spread.stats.moves).toBeGreaterThanOrEqual(2);
      expect(spread.errors).toEqual([]);
      // The same figures are in GET /host/stats.
      expect((await host.allHostStats()).placement!.decisions.length).toBeGreaterThanOrEqual(spread.decisions.length);
    } finally {
      await host.close();
    }
  }, 120_000);
});

describe('live migration of a VM in a worker group', () => {
  it('moves it from its group to another host, where it finishes as a lone run does', async () => {
    const program = 'crc32 12000000'; // ~250 M instructions: still running when the migration starts
    const migration = { tls: null, insecure: true, stallTimeoutMs: 10_000 };
    const reference = await Host.start(parseHostConfig({ vms: [vmConfig('ref', program)] }));
    const alone = await reference.whenStopped('ref').finally(() => reference.close());
    const destination = await Host.start(parseHostConfig({}), { migration });
    const source = await Host.start(parseHostConfig({ worker_groups: [{ name: 'g' }], vms: [vmConfig('mv', program, { group: 'g' })], slice_instructions: 20_000 }), { migration });
    try {
      const { listening } = await destination.receiveMigrations('127.0.0.1:0');
      const result = await source.migrate('mv', { destination: listening! });
      expect(result.rounds).toBeGreaterThanOrEqual(0);
      expect(source.names()).toEqual([]);
      expect((await source.allMigrations()).outgoing.map((m) => m.name)).toEqual(['mv']);
      const there = await destination.whenStopped('mv');
      expect(there.exit).toEqual(alone.exit);
      expect(there.instructions).toBe(alone.instructions);
    } finally {
      await source.close();
      await destination.close();
    }
  }, 120_000);

  it('replicates it from its group to a backup host, which can run it after a failure', async () => {
    const migration = { tls: null, insecure: true, stallTimeoutMs: 10_000 };
    const backup = await Host.start(parseHostConfig({}), { migration });
    const primary = await Host.start(parseHostConfig({ worker_groups: [{ name: 'g' }], vms: [vmConfig('rv', 'walker 4M random 0', { group: 'g' })] }), { migration });
    try {
      const { listening } = await backup.receiveMigrations('127.0.0.1:0');
      const started = await primary.vmCalls('rv').replicate('rv', { destination: listening!, interval_ms: 50 });
      expect(started.committed_epoch).not.toBeNull();
      await until('three replication epochs', async () => ((await primary.vmCalls('rv').vmReplication('rv')).epochs >= 3 ? true : undefined), 30_000);
      await primary.vmCalls('rv').stopReplication('rv');
      expect(backup.replicas().replicas.map((r) => r.name)).toEqual(['rv']);
      const activated = backup.activateReplica('rv', true);
      expect(activated.origin).toMatchObject({ kind: 'replica' });
      expect(activated.instructions).toBeGreaterThan(0);
    } finally {
      await primary.close();
      await backup.close();
    }
  }, 120_000);
});

describe('an overcommitted host with worker groups', () => {
  it('reclaims in every group over the shared pool: walkers in two groups that need more than the pool finish as unconstrained runs do', async () => {
    const program = 'walker 20M seq 2';
    const reference = await Host.start(parseHostConfig({ vms: [vmConfig('ref', program, { memory_mib: 64 })] }));
    const alone = await reference.whenStopped('ref');
    const aloneOutput = reference.readConsole('ref', 0, 1 << 20).data;
    await reference.close();
    // 2 x 20 MiB of walker data (and two kernels) on a 32 MiB pool: neither group's scheduler alone sees enough VMs to avoid it.
    const host = await Host.start(parseHostConfig({
      host_memory_mib: 32,
      overcommit: true,
      slice_instructions: 1_000_000,
      worker_groups: [{ name: 'g1' }, { name: 'g2' }],
      vms: [vmConfig('x', program, { memory_mib: 64, group: 'g1' }), vmConfig('y', program, { memory_mib: 64, group: 'g2' })],
    }));
    try {
      const ended = await Promise.all(['x', 'y'].map((name) => host.whenStopped(name)));
      for (const [index, name] of ['x', 'y'].entries()) {
        expect(ended[index]!.exit).toEqual(alone.exit);
        expect((await host.vmCalls(name).readConsole(name, 0, 1 << 20)).data).toBe(aloneOutput);
      }
      const stats = await host.allHostStats();
      const schedulers = stats.worker_groups!.map((group) => group.stats.memory_scheduler!);
      // Both groups ran a scheduler, and reclaim really happened (swap, as the walkers have no balloon).
      expect(schedulers).toHaveLength(2);
      expect(schedulers.reduce((sum, s) => sum + s.counters.state_changes, 0)).toBeGreaterThan(0);
      const info = await host.hostInfo();
      expect(info.frames_used).toBeLessThanOrEqual(info.frames_total);
    } finally {
      await host.close();
    }
  }, 300_000);
});

describe('reallocation with worker groups', () => {
  it('moves frames between two VMs of one group in that group, and between VMs of different threads through the host', async () => {
    const host = await Host.start(parseHostConfig({
      host_memory_mib: 256,
      worker_groups: [{ name: 'g' }, { name: 'h' }],
      vms: [
        { name: 'a', image: KERNEL, memory_mib: 64, boot_args: 'heap 24M 4 1 idle', balloon: { amount_mib: 0 }, group: 'g' },
        { name: 'b', image: KERNEL, memory_mib: 64, boot_args: 'idle', balloon: { amount_mib: 32 }, group: 'g' },
        { name: 'c', image: KERNEL, memory_mib: 64, boot_args: 'idle', balloon: { amount_mib: 32 }, group: 'h' },
        { name: 'd', image: KERNEL, memory_mib: 64, boot_args: 'heap 24M 4 1 idle', balloon: { amount_mib: 0 } },
      ],
    }));
    try {
      const waitUntil = (what: string, ok: () => Promise<boolean>): Promise<true> => until(what, async () => ((await ok()) ? true : undefined), 60_000);
      for (const giver of ['a', 'd']) await waitUntil(`${giver} to free its heap`, async () => (await host.vmCalls(giver).readConsole(giver, 0, 1 << 20)).data.includes('heap: '));
      for (const taker of ['b', 'c']) await waitUntil(`${taker}'s balloon to fill`, async () => (await host.vmCalls(taker).balloon(taker)).actual_pages === 32 * 256);
      const done = async (from: string, to: string) => {
        await waitUntil(`${from} -> ${to} to finish`, async () => (await host.hostInfo()).reallocations.find((r) => r.from === from && r.to === to)?.state === 'done');
        return (await host.hostInfo()).reallocations.find((r) => r.from === from && r.to === to)!;
      };

      // Within group g: its own host moves the frames.
      expect(await host.reallocate('a', 'b', 16)).toMatchObject({ from: 'a', to: 'b', pages: 16 * 256, state: 'running' });
      const within = await done('a', 'b');
      expect(within.frames_taken).toBeGreaterThan(8 * 256);
      expect(within.frames_placed).toBe(within.frames_taken);
      expect((await host.vmCalls('a').balloon('a')).actual_pages).toBe(16 * 256);
      expect((await host.vmCalls('b').balloon('b')).actual_pages).toBe(16 * 256);

      // From the host's thread (d) into group h (c): frames travel as handles through the host.
      const before = (await host.hostInfo()).frames_used;
      expect(await host.reallocate('d', 'c', 16)).toMatchObject({ from: 'd', to: 'c', pages: 16 * 256, state: 'running' });
      const across = await done('d', 'c');
      expect(across.given).toBe(16 * 256);
      expect(across.frames_taken).toBeGreaterThan(8 * 256);
      expect(across.frames_placed).toBe(across.frames_taken);
      expect((await host.vmCalls('d').balloon('d')).actual_pages).toBe(16 * 256);
      expect((await host.vmCalls('c').balloon('c')).actual_pages).toBe(16 * 256);
      // No copy: the pool's frames did not grow by what moved (only pages d gave without a frame cost c a new one).
      const after = (await host.hostInfo()).frames_used;
      expect(after - before).toBeLessThanOrEqual(16 * 256 - across.frames_taken + 64);
      for (const name of ['a', 'b', 'c', 'd']) expect((await host.vmCalls(name).vmInfo(name)).state).toBe('Running');
    } finally {
      await host.close();
    }
  }, 180_000);
});

describe('content-based sharing between worker groups', () => {
  it('merges identical pages of VMs in different threads after a full compare, frees the frames, and the guests run on', async () => {
    const host = await Host.start(parseHostConfig({
      host_memory_mib: 256,
      worker_groups: [{ name: 'g1' }, { name: 'g2' }],
      // The same kernel and program in both: their code and data pages are the same bytes (what
      // sharing finds between real VMs booted from one image). wc waits for its input.
      vms: [vmConfig('x', 'wc', { memory_mib: 32, group: 'g1' }), vmConfig('y', 'wc', { memory_mib: 32, group: 'g2' })],
    }));
    try {
      for (const name of ['x', 'y']) await until(`${name} to wait for input`, async () => ((await host.vmCalls(name).vmInfo(name)).waiting_for_input ? true : undefined), 60_000);
      // (With reclaim.sharing the host runs a pass every second; here the passes are the test's.)
      host.startCrossThreadSharing(3_600_000);
      const before = (await host.hostInfo()).frames_used;
      let merged = 0;
      for (let pass = 0; pass < 3; pass++) merged += (await host.shareAcrossThreads(8192)).merged;
      expect(merged).toBeGreaterThanOrEqual(10);
      // Each merge released the adopting thread's frame.
      expect(before - (await host.hostInfo()).frames_used).toBe(merged);
      const stats = await host.allHostStats();
      expect(stats.cross_thread_sharing!.merged).toBeGreaterThanOrEqual(merged);
      // The guests run on over the merged pages (code among them) and give the same answer.
      for (const name of ['x', 'y']) await host.vmCalls(name).sendInput(name, 'one two three\nfour\n', true);
      const outputs: string[] = [];
      for (const name of ['x', 'y']) {
        const info = await host.whenStopped(name);
        expect(info.exit).toEqual({ kind: 'halted', exit_code: 0 });
        outputs.push((await host.vmCalls(name).readConsole(name, 0, 1 << 20)).data);
      }
      expect(outputs[0]).toBe(outputs[1]);
      expect(outputs[0]).toMatch(/wc: 2 lines, 4 words, 19 bytes/);
    } finally {
      await host.close();
    }
  }, 120_000);
});

describe('a worker group whose thread dies', () => {
  it('is reported failed; the host and its other groups keep answering', async () => {
    const host = await Host.start(parseHostConfig({
      worker_groups: [{ name: 'doomed' }, { name: 'fine' }],
      vms: [vmConfig('d', 'walker 4M random 0', { group: 'doomed' }), vmConfig('f', 'walker 4M random 0', { group: 'fine' }), vmConfig('m', 'walker 4M random 0')],
    }));
    try {
      // Fault injection: the worker thread ends abruptly, as after a native crash in it.
      const groups = (host as unknown as { groups: Map<string, { worker: { terminate(): Promise<number> } }> }).groups;
      await groups.get('doomed')!.worker.terminate();
      await new Promise((resolve) => setTimeout(resolve, 50));
      const [doomed, fine] = host.workerGroups();
      expect(doomed).toMatchObject({ name: 'doomed', state: 'failed', vms: ['d'] });
      expect(doomed!.error).toMatch(/worker group 'doomed' exited/);
      expect(fine).toMatchObject({ name: 'fine', state: 'running' });
      expect((await host.listAll()).map((vm) => vm.name).sort()).toEqual(['f', 'm']);
      await expect(host.vmCalls('d').vmInfo('d')).rejects.toThrow(/worker group 'doomed' exited/);
      expect((await host.vmCalls('f').vmInfo('f')).state).toBe('Running');
      expect((await host.hostInfo()).vm_count).toBe(2);
      expect((await host.allHostStats()).worker_groups!.map((g) => g.name)).toEqual(['fine']);
    } finally {
      await host.close();
    }
  }, 60_000);
});
