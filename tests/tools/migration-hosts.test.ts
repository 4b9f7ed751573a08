/**
 * Live migration between two real host processes (tools/host) on loopback, driven through the
 * control API and tools/ctl: the destination receives on a port from its configuration, `ctl
 * migrate` moves a running guest with mutual TLS, the figures come back, the VM runs on at the
 * destination (QEMU's invariant checked on a checkpoint of it) and is gone from the source. A
 * destination whose CA does not trust the source refuses it, and the VM runs on at the source.
 *
 * These run as two processes on loopback, not in network namespaces (the suite does not assume root).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { restoreVmCheckpoint } from '../../services/checkpoint/index.ts';
import { apiRequest } from '../../services/host/client.ts';
import type { MigrationResult, MigrationsInfo, VmInfo } from '../../services/host/host.ts';
import { makeCertificates, type TestCertificates } from '../services/migration-certs.ts';
import { checkInvariant, hypervisor, invariantSource } from '../services/migration-harness.ts';
import { runCtl, startHostProcess, type RunningNode } from './child.ts';

const MIB = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), 'bv-mig-hosts-'));
const children: RunningNode[] = [];
let certs: TestCertificates;
let image: string;

beforeAll(() => {
  certs = makeCertificates();
  image = join(work, 'invariant.s');
  // A pass every few tenths of a second: rounds converge (a guest dirtying everything faster is the in-process auto-converge test's).
  writeFileSync(image, invariantSource(16 * MIB, { spin: 30_000_000 }));
});

afterAll(async () => {
  await Promise.all(children.map((child) => child.stop('SIGKILL')));
  rmSync(work, { recursive: true, force: true });
}, 30_000);

async function startHost(name: string, config: unknown): Promise<string> {
  const host = await startHostProcess(work, name, config);
  children.push(host.child);
  return host.socket;
}

const ctl = runCtl;

// No sampler: the test restores a checkpoint of the moved VM with the standard devices only.
const guest = { name: 'guest', image: '', memory_mib: 16, memory_policy: { active_sampling: null } };

describe('migration between two host processes', () => {
  it('ctl migrate moves a running guest over mutual TLS; it runs on at the destination, whole', async () => {
    const source = await startHost('a', { host_memory_mib: 64, migration: { tls: certs.a }, vms: [{ ...guest, image }] });
    const destination = await startHost('b', { host_memory_mib: 64, migration: { tls: certs.b, listen: '127.0.0.1:0' } });
    const listening = (await apiRequest<MigrationsInfo>(destination, 'GET', '/migrations')).body;
    expect(listening.secure).toBe(true);
    expect(listening.listening).toMatch(/^127\.0\.0\.1:\d+$/);
    // Let the guest run a few passes first.
    for (let i = 0; i < 800 && (await apiRequest<VmInfo>(source, 'GET', '/vms/guest')).body.console_bytes < 3; i++) await new Promise((r) => setTimeout(r, 25));

    const outcome = await ctl(source, ['--json', 'migrate', 'guest', listening.listening!, '--downtime-ms', '300']);
    expect(outcome.code, outcome.stderr).toBe(0);
    const result = JSON.parse(outcome.stdout) as MigrationResult;
    expect(result.state).toBe('completed');
    // Measured, not judged here: the downtime target lives in the bench (--only migration), since a loaded machine stretches it.
    expect(result.downtime_ms).toBeGreaterThan(0);
    expect(result.pages_sent).toBeGreaterThan(3000);
    expect(result.bytes_sent).toBeGreaterThan(result.pages_sent * 4096);

    // Gone from the source, running on the destination.
    expect((await apiRequest(source, 'GET', '/vms/guest')).status).toBe(404);
    const moved = (await apiRequest<VmInfo>(destination, 'GET', '/vms/guest')).body;
    expect(moved.state).toBe('Running');
    expect(moved.origin).toMatchObject({ kind: 'migration' });
    const before = moved.console_bytes;
    for (let i = 0; i < 800 && (await apiRequest<VmInfo>(destination, 'GET', '/vms/guest')).body.console_bytes < before + 3; i++) await new Promise((r) => setTimeout(r, 25));
    const console = (await apiRequest<{ data: string }>(destination, 'GET', '/vms/guest/console')).body.data;
    expect(console.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < console.length; i++) expect(Number(console[i])).toBe((Number(console[i - 1]) + 1) % 10);

    // QEMU's invariant, on a checkpoint of the destination's VM.
    expect((await apiRequest(destination, 'PATCH', '/vms/guest', { state: 'Paused' })).status).toBe(200);
    const checkpoint = join(work, 'moved.bvc');
    expect((await apiRequest(destination, 'PUT', '/vms/guest/snapshot', { path: checkpoint })).status).toBe(200);
    const hv = hypervisor();
    const restored = restoreVmCheckpoint(hv, checkpoint, { mode: 'eager', attach: (vm) => void attachStandardDevices(vm, { output: new CaptureSink() }) });
    const invariant = checkInvariant(restored.vm);
    expect(invariant.bad).toBe(0);
    expect(invariant.edges).toBeLessThanOrEqual(1);
    restored.close();
    hv.close();

    const migrations = (await apiRequest<MigrationsInfo>(destination, 'GET', '/migrations')).body;
    expect(migrations.incoming.at(-1)).toMatchObject({ state: 'completed', vm: 'guest' });
    const sent = (await apiRequest<MigrationsInfo>(source, 'GET', '/migrations')).body;
    expect(sent.outgoing.at(-1)).toMatchObject({ state: 'completed', name: 'guest' });
  });

  it('a destination that does not trust the source refuses it; the guest runs on at the source', async () => {
    const source = await startHost('c', { host_memory_mib: 64, migration: { tls: certs.rogue }, vms: [{ ...guest, image }] });
    const destination = await startHost('d', { host_memory_mib: 64, migration: { tls: certs.b, listen: '127.0.0.1:0' } });
    const address = (await apiRequest<MigrationsInfo>(destination, 'GET', '/migrations')).body.listening!;
    const outcome = await ctl(source, ['migrate', 'guest', address]);
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toMatch(/does not trust your certificate.*HTTP 502/);
    const vm = (await apiRequest<VmInfo>(source, 'GET', '/vms/guest')).body;
    expect(vm.state).toBe('Running');
    expect((await apiRequest<VmInfo[]>(destination, 'GET', '/vms')).body).toEqual({ vms: [] });
    const refused = (await apiRequest<MigrationsInfo>(destination, 'GET', '/migrations')).body.refused;
    expect(refused.at(-1)?.code).toBe('BV_XPORT_UNTRUSTED');
    // A host with no certificates and no insecure flag refuses to migrate at all.
    const bare = await startHost('e', { host_memory_mib: 64, vms: [{ ...guest, image }] });
    const refusedLocally = await apiRequest<{ fault_message: string }>(bare, 'PUT', '/vms/guest/migrate', { destination: address });
    expect(refusedLocally.status).toBe(400);
    expect(refusedLocally.body.fault_message).toMatch(/no migration certificates/);
  });
});
