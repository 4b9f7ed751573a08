/**
 * Disaster-recovery replication between two real host processes (tools/host) on loopback, driven
 * through tools/ctl: `ctl replicate` on the primary, the backup receives on its migration listener,
 * the primary host is killed with SIGKILL at a random point, and `ctl activate` on the backup runs
 * the guest from the last complete epoch: QEMU's invariant holds and the console carries on.
 *
 * Two processes on loopback, not network namespaces (the suite does not assume root).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { restoreVmCheckpoint } from '../../services/checkpoint/index.ts';
import { apiRequest } from '../../services/host/client.ts';
import type { MigrationsInfo, ReplicasInfo, ReplicationStatus, VmInfo } from '../../services/host/host.ts';
import { makeCertificates, type TestCertificates } from '../services/migration-certs.ts';
import { checkInvariant, hypervisor, invariantSource } from '../services/migration-harness.ts';
import { runCtl, startHostProcess, type RunningNode } from './child.ts';

const work = mkdtempSync(join(tmpdir(), 'bv-repl-hosts-'));
const children: RunningNode[] = [];
let certs: TestCertificates;
let image: string;

beforeAll(() => {
  certs = makeCertificates();
  image = join(work, 'invariant.s');
  writeFileSync(image, invariantSource(16 * 1024 * 1024, { spin: 3_000_000 }));
});

afterAll(async () => {
  await Promise.all(children.map((child) => child.stop('SIGKILL')));
  rmSync(work, { recursive: true, force: true });
}, 30_000);

async function startHost(name: string, config: unknown): Promise<{ socket: string; child: RunningNode }> {
  const host = await startHostProcess(work, name, config);
  children.push(host.child);
  return host;
}

const ctl = runCtl;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('replication between two host processes', () => {
  it('kill -9 of the primary at a random point: the backup activates the last complete epoch and the guest runs on', async () => {
    const guest = { name: 'guest', image, memory_mib: 16, memory_policy: { active_sampling: null } };
    const primary = await startHost('p', { host_memory_mib: 64, migration: { tls: certs.a, name: 'primary-1' }, vms: [guest] });
    const backup = await startHost('b', { host_memory_mib: 64, migration: { tls: certs.b, listen: '127.0.0.1:0' } });
    const address = (await apiRequest<MigrationsInfo>(backup.socket, 'GET', '/migrations')).body.listening!;
    for (let i = 0; i < 800 && (await apiRequest<VmInfo>(primary.socket, 'GET', '/vms/guest')).body.console_bytes < 2; i++) await sleep(25);

    const started = await ctl(primary.socket, ['--json', 'replicate', 'guest', address, '--interval-ms', '25', '--output-commit']);
    expect(started.code, started.stderr).toBe(0);
    const status = JSON.parse(started.stdout) as ReplicationStatus;
    expect(status.committed_epoch).toBeGreaterThanOrEqual(0);
    expect(['replicating', 'initial']).toContain(status.state);
    expect(status.output_commit).toBe(true);
    // A random point a few epochs in.
    await sleep(300 + Math.floor(Math.random() * 700));
    const before = (await apiRequest<ReplicationStatus>(primary.socket, 'GET', '/vms/guest/replication')).body;
    expect(before.epochs).toBeGreaterThan(1);
    // What the primary has shown (output commit: only output of committed epochs), just before it dies.
    const shown = (await apiRequest<{ data: string }>(primary.socket, 'GET', '/vms/guest/console')).body.data;
    await primary.child.stop('SIGKILL');

    // The backup notices the stream is gone and keeps the last complete epoch.
    let replicas: ReplicasInfo = { listening: null, replicas: [] };
    for (let i = 0; i < 400; i++) {
      replicas = (await apiRequest<ReplicasInfo>(backup.socket, 'GET', '/replicas')).body;
      if (replicas.replicas[0]?.state === 'disconnected') break;
      await sleep(25);
    }
    const replica = replicas.replicas[0]!;
    expect(replica).toMatchObject({ name: 'guest', state: 'disconnected' });
    expect(replica.committed_epoch).toBeGreaterThanOrEqual(before.committed_epoch!);
    const listed = await ctl(backup.socket, ['replicas']);
    expect(listed.stdout).toMatch(/guest from primary-1@.*: disconnected, epoch \d+/); // the name the primary's config gives it

    const activated = await ctl(backup.socket, ['activate', 'guest']);
    expect(activated.code, activated.stderr).toBe(0);
    expect(activated.stdout).toMatch(/activated VM guest \(failed over from .* \(replica epoch \d+\)\)/);
    const vm = (await apiRequest<VmInfo>(backup.socket, 'GET', '/vms/guest')).body;
    expect(vm.state).toBe('Running');
    expect(vm.origin).toMatchObject({ kind: 'replica', epoch: replica.committed_epoch });
    for (let i = 0; i < 800 && (await apiRequest<VmInfo>(backup.socket, 'GET', '/vms/guest')).body.console_bytes < 3; i++) await sleep(25);
    const console = (await apiRequest<{ data: string }>(backup.socket, 'GET', '/vms/guest/console')).body.data;
    expect(console.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < console.length; i++) expect(Number(console[i])).toBe((Number(console[i - 1]) + 1) % 10);
    // Output commit: the backup repeats nothing the primary showed. It prints pass k+1 first, k the
    // passes at the epoch; the primary had shown n ≤ k passes (a few more may have been released
    // between reading them and the kill — the primary runs on until the signal lands — never one
    // the backup lacks). Mod 10, 0…5 passes ahead; a repeat would show as 9, 8, ….
    expect(shown.startsWith('A')).toBe(true);
    const n = shown.length - 1;
    expect([0, 1, 2, 3, 4, 5]).toContain((((Number(console[0]) - 1 - n) % 10) + 10) % 10);
    // A second activation is refused.
    expect((await apiRequest(backup.socket, 'POST', '/replicas/guest/activate')).status).toBe(409);

    // QEMU's invariant, on a checkpoint of the activated VM.
    expect((await apiRequest(backup.socket, 'PATCH', '/vms/guest', { state: 'Paused' })).status).toBe(200);
    const checkpoint = join(work, 'activated.bvc');
    expect((await apiRequest(backup.socket, 'PUT', '/vms/guest/snapshot', { path: checkpoint })).status).toBe(200);
    const hv = hypervisor();
    const restored = restoreVmCheckpoint(hv, checkpoint, { mode: 'eager', attach: (v) => void attachStandardDevices(v, { output: new CaptureSink() }) });
    const invariant = checkInvariant(restored.vm);
    expect(invariant.bad).toBe(0);
    expect(invariant.edges).toBeLessThanOrEqual(1);
    restored.close();
    hv.close();
  });
});
