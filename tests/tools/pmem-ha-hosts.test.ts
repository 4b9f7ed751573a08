/**
 * Persistent-memory HA (T-15) between two real host processes (tools/host) on loopback with mutual
 * TLS: the primary's pmkv puts records; SIGPWR (a UPS daemon's power-failure signal) makes the
 * primary save what its partner does not have yet within battery_ms and stop; the partner writes it
 * into its own pmem file and starts the VM from it (on_partner "vm"), whose pmkv finds every
 * acknowledged record.
 *
 * Each host in a network namespace of its own when the suite runs as root (tests/services/multi-host.ts),
 * else both on loopback.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmInfo } from '../../services/host/host.ts';
import type { PmemHaPartnerStatus, PmemHaSenderStatus, PowerLossSaveReport } from '../../services/ha/pmem-ha.ts';
import { makeCertificates, type TestCertificates } from '../services/migration-certs.ts';
import { createNetwork, startHost, type Host, type Network } from '../services/multi-host.ts';
import { runCtl } from './child.ts';

const KERNEL = join(import.meta.dirname, '..', '..', 'examples', 'nanokernel', 'kernel.s');
const work = mkdtempSync(join(tmpdir(), 'bv-pmem-ha-hosts-'));
const network: Network = createNetwork();
const hosts: Host[] = [];
let certs: TestCertificates;

beforeAll(() => {
  console.log(`pmem HA hosts: ${network.describe}`);
  certs = makeCertificates([network.address.a, network.address.b]);
});

afterAll(async () => {
  await Promise.all(hosts.map((host) => host.child.stop('SIGKILL')));
  network.close();
  rmSync(work, { recursive: true, force: true });
}, 30_000);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('persistent-memory HA between two host processes', () => {
  it('SIGPWR on the primary: its pmem is saved at the partner within the battery, and the VM runs there with every acknowledged record', async () => {
    const partner = await startHost(network, 'b', 'partner', { host_memory_mib: 64, migration: { tls: certs.b, name: 'partner' }, pmem_ha: { listen: `${network.address.b}:0`, dir: join(work, 'received') } }, work);
    hosts.push(partner);
    const address = (await partner.api<{ receiving: PmemHaPartnerStatus }>('GET', '/host/pmem-ha')).body.receiving.listening;
    const puts = Array.from({ length: 10 }, (_, i) => `put k${i} v${i}`).join(' ');
    expect(address.startsWith(`${network.address.b}:`)).toBe(true);
    const primary = await startHost(network, 'a', 'primary', {
      host_memory_mib: 64, battery_ms: 5000,
      migration: { tls: certs.a, name: 'primary' },
      pmem_ha: { partner: address, sync_interval_ms: 100, on_partner: 'vm' },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: `pmkv ${puts}`, pmem: { path: join(work, 'kv.pmem'), size_kib: 64, create: true } }],
    }, work);
    hosts.push(primary);
    for (let i = 0; i < 2400 && (await primary.api<VmInfo>('GET', '/vms/kv')).body.state !== 'Stopped'; i++) await sleep(25);
    const shown = (await primary.api<{ data: string }>('GET', '/vms/kv/console')).body.data;
    for (let i = 0; i < 10; i++) expect(shown).toContain(`pmkv: put k${i} = v${i} (seq ${i + 1})`);
    const ctlShown = await runCtl(primary.socket, ['--json', 'pmem-ha']); // GET /host/pmem-ha
    expect(ctlShown.code, ctlShown.stderr).toBe(0);
    const status = (JSON.parse(ctlShown.stdout) as { sending: PmemHaSenderStatus }).sending;
    expect(status.partner).toBe(address);
    const readable = await runCtl(primary.socket, ['pmem-ha']);
    expect(readable.stdout).toContain(address);

    const end = await primary.child.stop('SIGPWR', 30_000);
    expect(end.code, end.stderr).toBe(0);
    expect(end.stderr).toMatch(/power-loss notice \(SIGPWR\), battery 5000 ms/);
    const line = /power-loss hooks done in [\d.]+ ms: (.*)$/m.exec(end.stderr);
    expect(line, end.stderr).not.toBeNull();
    const hooks = JSON.parse(line![1]!) as { name: string; ok: boolean; result: PowerLossSaveReport }[];
    const saved = hooks.find((hook) => hook.name === 'pmem-ha')!;
    expect(saved.ok).toBe(true);
    expect(saved.result, JSON.stringify(saved.result)).toMatchObject({ complete: true, error: null, takeover: { on_partner: 'vm', started: ['kv'], errors: [] } });
    expect(saved.result.saved_ms).toBeLessThanOrEqual(5000);
    expect(saved.result.vms[0]).toMatchObject({ name: 'kv', saved: true, unsaved: [] });

    // The partner runs the VM from its copy: pmkv finds the 10 records and carries on after them.
    for (let i = 0; i < 2400 && (await partner.api<VmInfo>('GET', '/vms/kv')).body.state !== 'Stopped'; i++) await sleep(25);
    const there = (await partner.api<{ data: string }>('GET', '/vms/kv/console')).body.data;
    expect(there).toContain('pmkv: 10 records, next seq 11');
    expect(there).toContain('pmkv: put k0 = v0 (seq 11)');
    const received = (await partner.api<{ receiving: PmemHaPartnerStatus }>('GET', '/host/pmem-ha')).body.receiving;
    expect(received.received.at(-1)).toMatchObject({ vm: 'kv', final: true, from: expect.stringContaining('primary') });
    expect(received.taken_over).toEqual(['kv']);
    // A notice through tools/ctl (POST /host/power-loss) on the partner, which has no partner of its own.
    const notice = await runCtl(partner.socket, ['--json', 'power-loss', '0']);
    expect(notice.code, notice.stderr).toBe(0);
    expect(JSON.parse(notice.stdout)).toMatchObject({ battery_ms: 0, hooks: expect.any(Array) });
    const bad = await runCtl(partner.socket, ['power-loss', 'soon']);
    expect(bad.code).toBe(2);
  }, 240_000);
});
