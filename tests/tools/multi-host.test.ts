/**
 * Migration and replication between two real host processes (tools/host), each in a network
 * namespace of its own joined by a veth pair with a tc bandwidth throttle when the suite runs as
 * root (otherwise two processes on loopback, the throttle left to max_bandwidth: the describe
 * line says which), with a fault proxy (tests/services/fault-proxy.ts) between them.
 *
 * The checks are exact, by determinism (tests/services/multi-host-trials.ts): a moved or
 * failed-over guest has the console output and memory hash of an uninterrupted run of the same
 * image to the same instruction count. scripts/multi-host-cuts.ts runs the random trials by the
 * hundred; here is a sample.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationResult, MigrationsInfo, VmInfo } from '../../services/host/host.ts';
import { makeCertificates, type TestCertificates } from '../services/migration-certs.ts';
import { invariantSource } from '../services/migration-harness.ts';
import { checkCarriesOn, consoleOf, cutTrial, guestConfig, killTrial, waitVm, type TrialGuest } from '../services/multi-host-trials.ts';
import { createNetwork, ProxyProcess, startHost, versionPeer, type Host, type Network } from '../services/multi-host.ts';

const MIB = 1024 * 1024;
// Slow enough to bind: unthrottled, a migration here runs at 30-60 MiB/s.
const THROTTLE_MBIT = 100;
const work = mkdtempSync(join(tmpdir(), 'bv-multi-host-'));
const network: Network = createNetwork({ throttleMbit: THROTTLE_MBIT });
let certs: TestCertificates;
// A pass over 15 MiB then a spin: a few passes a second, so rounds converge.
const guest: TrialGuest = { image: join(work, 'invariant.s'), memoryMib: 16, spin: 3_000_000 };
// A pass every second or two: pre-copy rounds converge at the throttled rate (a guest dirtying
// its 15 MiB faster than 12 MiB/s can carry them needs auto-converge: 30+ s here).
const slow: TrialGuest = { image: join(work, 'slow.s'), memoryMib: 16, spin: 30_000_000 };
// Rewrites its region continuously: post-copy leaves pages remote and the guest faults on them.
const busy: TrialGuest = { image: join(work, 'busy.s'), memoryMib: 16, spin: 200_000 };
const hosts: Host[] = [];
const proxies: ProxyProcess[] = [];
let source: Host;
let destination: Host;
let listening: string;
let proxy: ProxyProcess;

const migration = (tls: unknown, listen: boolean, side: 'a' | 'b') => ({ tls, stall_timeout_ms: 3_000, ...(listen ? { listen: `${network.address[side]}:0` } : {}) });
async function host(side: 'a' | 'b', name: string, config: unknown): Promise<Host> {
  const started = await startHost(network, side, name, config, work);
  hosts.push(started);
  return started;
}
async function proxyTo(target: string): Promise<ProxyProcess> {
  const started = await ProxyProcess.start(network, 'b', target);
  proxies.push(started);
  return started;
}

beforeAll(async () => {
  console.log(`multi-host tests: ${network.describe}`);
  certs = makeCertificates([network.address.a, network.address.b]);
  writeFileSync(guest.image, invariantSource(guest.memoryMib * MIB, { spin: guest.spin }));
  writeFileSync(slow.image, invariantSource(slow.memoryMib * MIB, { spin: slow.spin }));
  writeFileSync(busy.image, invariantSource(busy.memoryMib * MIB, { spin: busy.spin }));
  [source, destination] = await Promise.all([
    host('a', 'source', { host_memory_mib: 96, migration: migration(certs.a, false, 'a') }),
    host('b', 'destination', { host_memory_mib: 192, migration: migration(certs.b, true, 'b') }),
  ]);
  listening = (await destination.api<MigrationsInfo>('GET', '/migrations')).body.listening!;
  expect(listening.startsWith(`${network.address.b}:`)).toBe(true);
  proxy = await proxyTo(listening);
}, 120_000);

afterAll(async () => {
  await Promise.all(proxies.map((p) => p.stop()));
  await Promise.all(hosts.map((h) => h.child.stop('SIGKILL')));
  network.close();
  rmSync(work, { recursive: true, force: true });
  if (certs !== undefined) rmSync(certs.dir, { recursive: true, force: true });
}, 60_000);

/** Migrates `name` from the source straight to the destination's listener (no proxy) and checks it carries on exactly. */
async function migrateAndCheck(vmGuest: TrialGuest, name: string, mode: 'precopy' | 'postcopy'): Promise<MigrationResult> {
  expect((await source.api('PUT', `/vms/${name}`, guestConfig(vmGuest))).status).toBe(201);
  await waitVm(source, name, 'a few passes', (vm) => vm.console_bytes >= 3);
  // The source's console as last seen: the destination's must carry on from where the source stopped.
  let seen = await consoleOf(source, name);
  let polling = true;
  const poll = (async () => {
    while (polling) {
      const answer = await source.api<{ data: string }>('GET', `/vms/${name}/console`);
      if (answer.status === 200) seen = answer.body.data;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })();
  const answer = await source.api<MigrationResult>('PUT', `/vms/${name}/migrate`, {
    destination: listening, mode,
    // On loopback the throttle is the migration's own pacing.
    ...(network.kind === 'loopback' ? { max_bandwidth: (THROTTLE_MBIT * 1e6) / 8 } : {}),
  });
  polling = false;
  await poll;
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  const result = answer.body;
  expect(result).toMatchObject({ state: 'completed', mode });
  expect((await source.api('GET', `/vms/${name}`)).status).toBe(404);
  const moved = (await destination.api<VmInfo>('GET', `/vms/${name}`)).body;
  expect(moved.origin).toMatchObject({ kind: 'migration' });
  // Exact: console and memory are the uninterrupted run's, from where the VM left the source.
  await checkCarriesOn(destination, name, vmGuest, result.instructions, seen, work);
  expect((await destination.api('DELETE', `/vms/${name}`)).status).toBe(204);
  return result;
}

describe(`two hosts: ${network.describe}`, () => {
  it('pre-copy across the hosts: QEMU\'s invariant, console and memory exactly an uninterrupted run\'s; the throttle holds', async () => {
    const result = await migrateAndCheck(slow, 'pre', 'precopy');
    console.log(`pre-copy across the hosts: ${result.rounds} rounds, ${result.bytes_sent} bytes in ${result.total_ms} ms, downtime ${result.downtime_ms} ms, ${result.switchover_reason}`);
    expect(result.pages_sent).toBeGreaterThan(3000);
    // The throttle (tc on the veth, or max_bandwidth on loopback) binds: the migration ends with DONE, so
    // every byte had crossed the link by then (a round's own rate is not a measure: socket buffers absorb
    // megabytes). Unthrottled, this machine sends 30-60 MiB/s.
    const limitMibS = (THROTTLE_MBIT * 1e6) / 8 / MIB;
    expect(result.bytes_sent / MIB / (result.total_ms / 1000)).toBeLessThan(limitMibS * 1.05);
  }, 90_000);

  it('post-copy across the hosts: the destination faults on remote pages; console and memory exactly an uninterrupted run\'s', async () => {
    const result = await migrateAndCheck(busy, 'post', 'postcopy');
    expect(result.switchover_reason).toBe('postcopy');
    expect(result.postcopy!.remote_pages).toBeGreaterThan(0);
    expect(result.postcopy!.remote_left).toBe(0);
  }, 90_000);

  it('pre-copy cut at random points by the fault proxy: the VM ends on exactly one host, exactly where it was', async () => {
    const outcomes: string[] = [];
    for (let i = 0; i < 3; i++) {
      const cutAfter = Math.floor(Math.random() * 40 * MIB);
      const trial = await cutTrial({ source, destination, proxy, guest, work }, { name: `cut${i}`, mode: 'precopy', cutAfter });
      outcomes.push(`${cutAfter}: ${trial.outcome}`);
    }
    console.log(`pre-copy cuts: ${outcomes.join('; ')}`);
    expect(outcomes).toHaveLength(3);
  }, 180_000);

  it('post-copy cut at random points: the same migrate request resumes it over a new connection, or the source keeps it', async () => {
    const outcomes: string[] = [];
    // Inside round 0 (the source keeps it) and after the switch-over (resumed), then anywhere.
    const cuts = [8 * MIB, 22 * MIB + Math.floor(Math.random() * 6 * MIB), Math.floor(Math.random() * 36 * MIB)];
    for (const [i, cutAfter] of cuts.entries()) {
      const trial = await cutTrial({ source, destination, proxy, guest: busy, work }, { name: `pcut${i}`, mode: 'postcopy', cutAfter });
      outcomes.push(`${cutAfter}: ${trial.outcome}`);
      if (i === 0) expect(trial.outcome).toBe('kept');
    }
    console.log(`post-copy cuts: ${outcomes.join('; ')}`);
    expect(outcomes.some((o) => o.endsWith('postcopy-resumed'))).toBe(true);
  }, 180_000);

  it('a corrupt byte on the wire is refused: over TLS by the record check, over insecure hosts by the frame CRC; the VM stays at the source', async () => {
    // TLS: the flipped byte fails the record's authentication at the destination.
    expect((await source.api('PUT', '/vms/bad', guestConfig(guest))).status).toBe(201);
    await waitVm(source, 'bad', 'the guest to print', (vm) => vm.console_bytes >= 2);
    await proxy.arm({ corruptAt: MIB + Math.floor(Math.random() * 4 * MIB) });
    const refused = await source.api<{ fault_message: string }>('PUT', '/vms/bad/migrate', { destination: proxy.address });
    expect(refused.status).toBe(502);
    expect(refused.body.fault_message).toMatch(/carries on here/);
    expect((await source.api<VmInfo>('GET', '/vms/bad')).body.state).toBe('Running');
    const info = await waitIncomingSettled(destination);
    expect(info.incoming.at(-1)).toMatchObject({ state: 'failed' });
    expect((await destination.api('GET', '/vms/bad')).status).toBe(404);
    expect((await source.api('DELETE', '/vms/bad')).status).toBe(204);

    // Insecure hosts: the frame's CRC catches it, and both ends say so.
    const [plainSource, plainDestination] = await Promise.all([
      host('a', 'plain-source', { host_memory_mib: 64, migration: { insecure: true, stall_timeout_ms: 3_000 } }),
      host('b', 'plain-destination', { host_memory_mib: 64, migration: { insecure: true, stall_timeout_ms: 3_000, listen: `${network.address.b}:0` } }),
    ]);
    const plainProxy = await proxyTo((await plainDestination.api<MigrationsInfo>('GET', '/migrations')).body.listening!);
    expect((await plainSource.api('PUT', '/vms/bad', guestConfig(guest))).status).toBe(201);
    await waitVm(plainSource, 'bad', 'the guest to print', (vm) => vm.console_bytes >= 2);
    // Inside the first PAGES frame's payload (after both HELLOs and BEGIN).
    await plainProxy.arm({ corruptAt: 64 * 1024 + Math.floor(Math.random() * MIB) });
    const corrupt = await plainSource.api<{ fault_message: string }>('PUT', '/vms/bad/migrate', { destination: plainProxy.address });
    expect(corrupt.status).toBe(502);
    // The destination finds the bad checksum and drops the connection (no ERROR frame on a corrupt
    // stream: the source sees a reset); it says why in its incoming record.
    expect(corrupt.body.fault_message).toMatch(/carries on here/);
    expect((await plainSource.api<VmInfo>('GET', '/vms/bad')).body.state).toBe('Running');
    const plainInfo = await waitIncomingSettled(plainDestination);
    expect(plainInfo.incoming.at(-1)?.state).toBe('failed');
    expect(plainInfo.incoming.at(-1)?.error).toMatch(/checksum|CRC/i);
    expect((await plainDestination.api('GET', '/vms/bad')).status).toBe(404);
  }, 120_000);

  it('a link that stalls (the proxy stops forwarding, the connection stays up) fails within the stall timeout; the VM stays at the source', async () => {
    expect((await source.api('PUT', '/vms/stall', guestConfig(guest))).status).toBe(201);
    await waitVm(source, 'stall', 'the guest to print', (vm) => vm.console_bytes >= 2);
    await proxy.arm({ stallAfter: MIB + Math.floor(Math.random() * 4 * MIB) });
    const started = Date.now();
    const stalled = await source.api<{ fault_message: string }>('PUT', '/vms/stall/migrate', { destination: proxy.address });
    const elapsed = Date.now() - started;
    expect(stalled.status).toBe(502);
    expect(stalled.body.fault_message).toMatch(/carries on here/);
    // stall_timeout_ms is 3 s on both hosts: not the 3,600 s migration timeout.
    expect(elapsed).toBeLessThan(30_000);
    expect((await source.api<VmInfo>('GET', '/vms/stall')).body.state).toBe('Running');
    const info = await waitIncomingSettled(destination);
    expect(info.incoming.at(-1)).toMatchObject({ state: 'failed' });
    expect((await destination.api('GET', '/vms/stall')).status).toBe(404);
    expect((await source.api('DELETE', '/vms/stall')).status).toBe(204);
  }, 90_000);

  it('a host whose certificate another CA signed is refused, and both hosts say so', async () => {
    const rogue = await host('a', 'rogue', { host_memory_mib: 64, migration: migration(certs.rogue, false, 'a') });
    expect((await rogue.api('PUT', '/vms/r', guestConfig(guest))).status).toBe(201);
    const outcome = await rogue.api<{ fault_message: string }>('PUT', '/vms/r/migrate', { destination: listening });
    expect(outcome.status).toBe(502);
    expect(outcome.body.fault_message).toMatch(/does not trust your certificate/);
    expect((await rogue.api<VmInfo>('GET', '/vms/r')).body.state).toBe('Running');
    const refused = (await destination.api<MigrationsInfo>('GET', '/migrations')).body.refused.at(-1)!;
    expect(refused.code).toBe('BV_XPORT_UNTRUSTED');
    expect(refused.remote.startsWith(network.address.a)).toBe(true);
    expect((await destination.api('GET', '/vms/r')).status).toBe(404);
  }, 90_000);

  it('a peer speaking another protocol version is refused, either way round, and both ends say so', async () => {
    // A version-1 source (a host from before the DISK frame) connecting to the destination host.
    const client = versionPeer(network, 'a', ['connect', listening, certs.a.ca, certs.a.cert, certs.a.key]);
    const end = await client.ended;
    expect(end.code, end.stderr).toBe(0);
    expect(JSON.parse(end.stdout) as { code: string }).toMatchObject({ code: 'BV_XPORT_VERSION' });
    const refused = (await destination.api<MigrationsInfo>('GET', '/migrations')).body.refused.at(-1)!;
    expect(refused).toMatchObject({ code: 'BV_XPORT_VERSION' });
    expect(refused.message).toMatch(/version 1\b/);

    // The source host migrating to a version-1 destination.
    const server = versionPeer(network, 'b', ['listen', network.address.b, certs.b.ca, certs.b.cert, certs.b.key]);
    try {
      await server.waitFor('stdout', /listening \S+:\d+/);
      const address = /listening (\S+:\d+)/.exec(server.stdout)![1]!;
      expect((await source.api('PUT', '/vms/v', guestConfig(guest))).status).toBe(201);
      const outcome = await source.api<{ fault_message: string }>('PUT', '/vms/v/migrate', { destination: address });
      expect(outcome.status).toBe(502);
      expect(outcome.body.fault_message).toMatch(/version/);
      expect((await source.api<VmInfo>('GET', '/vms/v')).body.state).toBe('Running');
      await server.waitFor('stdout', /BV_XPORT_VERSION/);
      expect((await source.api('DELETE', '/vms/v')).status).toBe(204);
    } finally {
      await server.stop('SIGKILL');
    }
  }, 90_000);

  it('replication with output commit, the primary host killed with SIGKILL at a random point: the backup activates exactly the last committed epoch', async () => {
    const primary = await host('a', 'primary', { host_memory_mib: 64, migration: migration(certs.a, false, 'a') });
    // A random point after epoch 0 (a whole copy) has committed; scripts/multi-host-cuts.ts also kills before it.
    const killAfterMs = Math.floor(Math.random() * 1_500);
    const trial = await killTrial({ primary, backup: destination, backupAddress: listening, guest, work }, { name: 'replicated', killAfterMs, afterEpoch0: true });
    console.log(`kill -9 ${killAfterMs} ms after epoch 0: activated epoch ${trial.epoch} at ${trial.instructions} instructions; the primary had released ${trial.shown} console bytes`);
    expect(trial.epoch).not.toBeNull();
  }, 120_000);
});

async function waitIncomingSettled(h: Host): Promise<MigrationsInfo> {
  for (let i = 0; i < 400; i++) {
    const info = (await h.api<MigrationsInfo>('GET', '/migrations')).body;
    if (info.incoming.length > 0 && !info.incoming.some((entry) => entry.state === 'receiving')) return info;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${h.name}: an incoming migration never settled`);
}
