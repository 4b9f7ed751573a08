/**
 * Post-copy between two real host processes (tools/host) on loopback: `ctl migrate --mode
 * postcopy` switches a guest that rewrites its memory over after one pass; it runs on at the
 * destination (console continuing, QEMU's invariant on a checkpoint of it), the figures come back
 * with the remote faults, and both hosts count the migration in GET /host/stats.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { restoreVmCheckpoint } from '../../services/checkpoint/index.ts';
import { apiRequest } from '../../services/host/client.ts';
import type { HostStatsReport, MigrationResult, MigrationsInfo, VmInfo } from '../../services/host/host.ts';
import { makeCertificates, type TestCertificates } from '../services/migration-certs.ts';
import { checkInvariant, hypervisor, invariantSource } from '../services/migration-harness.ts';
import { spawnNode, startHostProcess, type RunningNode } from './child.ts';

const MIB = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), 'bv-pc-hosts-'));
const children: RunningNode[] = [];
let certs: TestCertificates;
let image: string;

beforeAll(() => {
  certs = makeCertificates();
  image = join(work, 'invariant.s');
  writeFileSync(image, invariantSource(16 * MIB, { spin: 200_000 }));
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

const guest = { name: 'guest', image: '', memory_mib: 16, memory_policy: { active_sampling: null } };

describe('post-copy between two host processes', () => {
  it('ctl migrate --mode postcopy moves a guest that dirties its memory; both hosts count it', async () => {
    const source = await startHost('a', { host_memory_mib: 64, migration: { tls: certs.a }, vms: [{ ...guest, image }] });
    const destination = await startHost('b', { host_memory_mib: 64, migration: { tls: certs.b, listen: '127.0.0.1:0' } });
    const address = (await apiRequest<MigrationsInfo>(destination, 'GET', '/migrations')).body.listening!;
    for (let i = 0; i < 800 && (await apiRequest<VmInfo>(source, 'GET', '/vms/guest')).body.console_bytes < 3; i++) await new Promise((r) => setTimeout(r, 25));

    const outcome = await spawnNode(['--import', 'tsx', 'tools/ctl.ts', '--api-sock', source, '--timeout-ms', '120000', '--json', 'migrate', 'guest', address, '--mode', 'postcopy']);
    expect(outcome.code, outcome.stderr).toBe(0);
    const result = JSON.parse(outcome.stdout) as MigrationResult;
    expect(result).toMatchObject({ state: 'completed', mode: 'postcopy', switchover_reason: 'postcopy', rounds: 0 });
    expect(result.postcopy!.remote_pages).toBeGreaterThan(0);
    expect(result.postcopy!.remote_left).toBe(0);

    expect((await apiRequest(source, 'GET', '/vms/guest')).status).toBe(404);
    const moved = (await apiRequest<VmInfo>(destination, 'GET', '/vms/guest')).body;
    const before = moved.console_bytes;
    for (let i = 0; i < 800 && (await apiRequest<VmInfo>(destination, 'GET', '/vms/guest')).body.console_bytes < before + 3; i++) await new Promise((r) => setTimeout(r, 25));
    const console = (await apiRequest<{ data: string }>(destination, 'GET', '/vms/guest/console')).body.data;
    expect(console.length).toBeGreaterThanOrEqual(before + 3);
    for (let i = 1; i < console.length; i++) expect(Number(console[i])).toBe((Number(console[i - 1]) + 1) % 10);

    expect((await apiRequest(destination, 'PATCH', '/vms/guest', { state: 'Paused' })).status).toBe(200);
    const checkpoint = join(work, 'moved.bvc');
    expect((await apiRequest(destination, 'PUT', '/vms/guest/snapshot', { path: checkpoint })).status).toBe(200);
    const hv = hypervisor();
    const restored = restoreVmCheckpoint(hv, checkpoint, { mode: 'eager', attach: (vm) => void attachStandardDevices(vm, { output: new CaptureSink() }) });
    expect(checkInvariant(restored.vm).bad).toBe(0);
    restored.close();
    hv.close();

    const sent = (await apiRequest<HostStatsReport>(source, 'GET', '/host/stats')).body.migration;
    expect(sent).toMatchObject({ sent: 1, postcopy: 1, send_failures: 0, remote_pages: result.postcopy!.remote_pages });
    expect(sent.bytes_sent).toBe(result.bytes_sent);
    const received = (await apiRequest<HostStatsReport>(destination, 'GET', '/host/stats')).body.migration;
    expect(received).toMatchObject({ received: 1, receive_failures: 0, remote_faults: result.postcopy!.remote_faults });
    // The destination counts until it has the VM whole; a last control frame the source sends
    // after that (34 bytes seen once in CI) may land after its count.
    expect(received.bytes_received).toBeLessThanOrEqual(result.bytes_sent);
    expect(received.bytes_received).toBeGreaterThan(result.bytes_sent - 4096);
  });
});
