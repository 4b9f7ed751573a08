/**
 * A VM with a disk between real host processes (tools/host) on loopback, driven by tools/ctl:
 * `ctl migrate` moves a guest that checks its own disk (tests/services/disk-guest.ts) from host A
 * to host B, whose `migration.disk_dir` is another directory; A's overlay files are then deleted
 * and the guest runs on at B reading back its writes. Then B replicates it to C (another disk
 * directory), B is killed with SIGKILL, and `ctl activate` on C runs it on the disk of the last
 * committed epoch, again without a read-back error. The raw base image is shared (same path).
 *
 * Two processes on loopback, not network namespaces (the suite does not assume root).
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DISK_SECTOR_BYTES } from '../../devices/index.ts';
import { apiRequest } from '../../services/host/client.ts';
import type { MigrationResult, MigrationsInfo, VmInfo } from '../../services/host/host.ts';
import { diskGuestSource, SECTORS } from '../services/disk-guest.ts';
import { makeCertificates, type TestCertificates } from '../services/migration-certs.ts';
import { runCtl, startHostProcess, type RunningNode } from './child.ts';

const work = mkdtempSync(join(tmpdir(), 'bv-migdisk-hosts-'));
const children: RunningNode[] = [];
let certs: TestCertificates;
let image: string;
let base: string;

beforeAll(() => {
  certs = makeCertificates();
  image = join(work, 'disk-guest.s');
  writeFileSync(image, diskGuestSource(200_000));
  base = join(work, 'base.img');
  writeFileSync(base, new Uint8Array(SECTORS * DISK_SECTOR_BYTES));
  for (const dir of ['a', 'b', 'c']) mkdirSync(join(work, dir));
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

async function consoleBytes(socket: string): Promise<number> {
  return (await apiRequest<VmInfo>(socket, 'GET', '/vms/guest')).body.console_bytes;
}

/** Waits until the guest printed `more` characters more, then returns its console. */
async function runsOn(socket: string, more: number): Promise<string> {
  const before = await consoleBytes(socket);
  for (let i = 0; i < 1200 && (await consoleBytes(socket)) < before + more; i++) await new Promise((r) => setTimeout(r, 25));
  return (await apiRequest<{ data: string }>(socket, 'GET', '/vms/guest/console')).body.data;
}

describe('a VM with a disk between host processes', () => {
  it('migrates to another disk directory and fails over from a replica, the guest reading back its writes', async () => {
    const dirA = join(work, 'a');
    const dirB = join(work, 'b');
    const dirC = join(work, 'c');
    const a = await startHost('a', {
      host_memory_mib: 32, migration: { tls: certs.a },
      vms: [{ name: 'guest', image, memory_mib: 4, disk: { path: base, overlay_dir: dirA }, memory_policy: { active_sampling: null } }],
    });
    const b = await startHost('b', { host_memory_mib: 32, migration: { tls: certs.b, listen: '127.0.0.1:0', disk_dir: dirB } });
    const c = await startHost('c', { host_memory_mib: 32, migration: { tls: certs.b, listen: '127.0.0.1:0', disk_dir: dirC } });
    const addressB = (await apiRequest<MigrationsInfo>(b.socket, 'GET', '/migrations')).body.listening!;
    const addressC = (await apiRequest<MigrationsInfo>(c.socket, 'GET', '/migrations')).body.listening!;
    await runsOn(a.socket, 3);

    const outcome = await ctl(a.socket, ['--json', 'migrate', 'guest', addressB]);
    expect(outcome.code, outcome.stderr).toBe(0);
    const result = JSON.parse(outcome.stdout) as MigrationResult;
    expect(result.state).toBe('completed');
    expect(result.disk_sectors_sent).toBeGreaterThanOrEqual(32);
    expect(readdirSync(dirB).length).toBeGreaterThan(0);
    // Nothing of A's overlays is shared: B runs on its own.
    for (const file of readdirSync(dirA)) rmSync(join(dirA, file));
    const atB = await runsOn(b.socket, 3);
    expect(atB).not.toContain('X');
    expect((await apiRequest<VmInfo>(b.socket, 'GET', '/vms/guest')).body.state).toBe('Running');

    const started = await ctl(b.socket, ['--json', 'replicate', 'guest', addressC, '--interval-ms', '25']);
    expect(started.code, started.stderr).toBe(0);
    await runsOn(b.socket, 3);
    await b.child.stop('SIGKILL');
    const replicas = (await apiRequest<{ replicas: Array<{ committed_epoch: number | null; disk_sectors: number; disk_overlay: string | null }> }>(c.socket, 'GET', '/replicas')).body.replicas;
    expect(replicas[0]!.committed_epoch).not.toBeNull();
    expect(replicas[0]!.disk_sectors).toBeGreaterThanOrEqual(32);
    expect(replicas[0]!.disk_overlay!.startsWith(dirC)).toBe(true);
    const activated = await ctl(c.socket, ['activate', 'guest']);
    expect(activated.code, activated.stderr).toBe(0);
    const atC = await runsOn(c.socket, 3);
    expect(atC).not.toContain('X');
    expect((await apiRequest<VmInfo>(c.socket, 'GET', '/vms/guest')).body.state).toBe('Running');
  }, 180_000);
});
