/**
 * Persistent-memory HA (T-15, services/ha/pmem-ha.ts, docs/pmem.md "High availability"): a
 * primary host with a partner saves its VMs' persistent memory there in the background and, on a
 * power-loss notice, what is left of it; the partner writes it into its own file and starts the
 * VM, whose pmkv reads back every record the primary's pmkv acknowledged. A budget of 0 reports
 * what was not saved, a partner that is down is reported within the budget, and a corrupt or cut
 * stream is refused with the partner's file unchanged.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { ConfigError, parseHostConfig, parseVmConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { PmemHaPartner, PmemHaSender, writeJournal, type PmemHaPartnerHost, type PowerLossSaveReport } from '../../services/ha/pmem-ha.ts';

const KERNEL = join(import.meta.dirname, '..', '..', 'examples', 'nanokernel', 'kernel.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-pmem-ha-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PMEM_KIB = 64;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until<T>(read: () => T, done: (value: T) => boolean, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = read();
  while (!done(value) && Date.now() < deadline) {
    await sleep(20);
    value = read();
  }
  return value;
}

async function partnerHost(name: string): Promise<{ host: Host; address: string; dir: string }> {
  const haDir = join(dir, `${name}-received`);
  const host = await Host.start(parseHostConfig({ migration: { insecure: true, name }, pmem_ha: { listen: '127.0.0.1:0', dir: haDir } }));
  return { host, address: host.pmemHaStatus().receiving!.listening, dir: haDir };
}

function pmemHaResult(report: { hooks: { name: string; result: unknown; ok: boolean; error: string | null }[] }): PowerLossSaveReport {
  const hook = report.hooks.find((h) => h.name === 'pmem-ha');
  expect(hook, JSON.stringify(report)).toBeDefined();
  expect(hook!.ok, hook!.error ?? '').toBe(true);
  return hook!.result as PowerLossSaveReport;
}

describe('the pmem_ha configuration', () => {
  it('is parsed, and refused when incomplete', () => {
    const spec = parseHostConfig({ migration: { insecure: true }, pmem_ha: { partner: 'b:7000', on_partner: 'app', app_boot_args: 'pmkv get a' } });
    expect(spec.pmemHa).toEqual({ partner: 'b:7000', syncIntervalMs: 1000, onPartner: 'app', appBootArgs: 'pmkv get a', listen: null, dir: null });
    expect(parseHostConfig({}).pmemHa).toBeNull();
    const refused = (json: unknown): string => {
      try {
        parseHostConfig(json);
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        return (error as Error).message;
      }
      throw new Error(`accepted ${JSON.stringify(json)}`);
    };
    expect(refused({ migration: { insecure: true }, pmem_ha: {} })).toMatch(/needs partner .*listen/);
    expect(refused({ migration: { insecure: true }, pmem_ha: { listen: '127.0.0.1:0' } })).toMatch(/dir.*required with listen/);
    expect(refused({ migration: { insecure: true }, pmem_ha: { partner: 'b:7000', on_partner: 'app' } })).toMatch(/app_boot_args.*required when on_partner is app/);
    expect(refused({ pmem_ha: { partner: 'b:7000' } })).toMatch(/needs migration.tls/);
    expect(refused({ migration: { insecure: true }, pmem_ha: { partner: 'nowhere' } })).toMatch(/pmem_ha.partner/);
    expect(refused({ migration: { insecure: true }, pmem_ha: { partner: 'b:7000', on_partner: 'restart' } })).toMatch(/on_partner/);
    expect(refused({ migration: { insecure: true }, pmem_ha: { partner: 'b:7000', battery: 5 } })).toMatch(/battery/);
  });
});

describe('persistent-memory HA between two hosts', () => {
  it('power loss: the partner\'s file holds every acknowledged record (only pages written since the background save were sent), and pmkv there reads them back', async () => {
    const partner = await partnerHost('partner-1');
    const path = join(dir, 'kv1.pmem');
    const puts = Array.from({ length: 12 }, (_, i) => `put key${i} value-${i}-${'x'.repeat(i * 7)}`).join(' ');
    const primary = await Host.start(parseHostConfig({
      migration: { insecure: true, name: 'primary-1' },
      pmem_ha: { partner: partner.address, sync_interval_ms: 0, on_partner: 'app', app_boot_args: `pmkv ${Array.from({ length: 12 }, (_, i) => `get key${i}`).join(' ')}` },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: `pmkv ${puts}`, pmem: { path, size_kib: PMEM_KIB, create: true }, start_paused: true }],
    }));
    try {
      // A save of the blank range first (the VM is paused): the whole of it.
      const [first] = await primary.pmemHaSync();
      expect(first).toMatchObject({ name: 'kv', saved: true, pages_sent: PMEM_KIB / 4 });
      expect(primary.pmemHaStatus().sending!.vms[0]!.pending_pages).toBe(0);
      expect(partner.host.pmemHaStatus().receiving!.received[0]).toMatchObject({ vm: 'kv', from: expect.stringContaining('primary-1'), final: false, pages: PMEM_KIB / 4 });
      primary.resume('kv');
      await primary.whenStopped('kv');
      const console = primary.readConsole('kv', 0, 1 << 20).data;
      for (let i = 0; i < 12; i++) expect(console).toContain(`pmkv: put key${i} = value-${i}`);

      const report = await primary.powerLoss(5000, 'test');
      const saved = pmemHaResult(report);
      expect(saved.complete).toBe(true);
      expect(saved.error).toBeNull();
      expect(saved.saved_ms).toBeGreaterThan(0);
      expect(saved.saved_ms!).toBeLessThanOrEqual(saved.elapsed_ms);
      expect(saved.vms).toHaveLength(1);
      const vm = saved.vms[0]!;
      expect(vm).toMatchObject({ name: 'kv', saved: true, unsaved: [], error: null, pages: PMEM_KIB / 4 });
      // Only the pages the guest wrote since that save went at the notice: the header (page 0),
      // the log (page 5: 12 records of 32-112 bytes) and the slots (pages 1-4), not the rest.
      expect(vm.pages_sent).toBe(vm.pages_dirty);
      expect(vm.pages_sent).toBeGreaterThanOrEqual(3);
      expect(vm.pages_sent).toBeLessThanOrEqual(6);
      // The partner's file is the primary's, byte for byte.
      const received = join(partner.dir, 'kv.pmem');
      expect(Buffer.compare(readFileSync(received), readFileSync(path))).toBe(0);
      // on_partner "app": the partner started the VM with the application's own recovery.
      expect(saved.takeover).toEqual({ on_partner: 'app', started: ['kv'], errors: [] });
      await partner.host.whenStopped('kv');
      const there = partner.host.readConsole('kv', 0, 1 << 20).data;
      expect(there).toContain('pmkv: 12 records, next seq 13');
      for (let i = 0; i < 12; i++) expect(there).toContain(`pmkv: get key${i} = value-${i}-${'x'.repeat(i * 7)} (seq ${i + 1})`);
      expect(partner.host.pmemHaStatus().receiving!.taken_over).toEqual(['kv']);
      expect(primary.pmemHaStatus().sending!.last_power_loss).toEqual(saved);
    } finally {
      await primary.close();
      await partner.host.close();
    }
  }, 180_000);

  it('a notice while pmkv runs and background saves race it: the partner has every put acknowledged before the pause', async () => {
    const partner = await partnerHost('partner-race');
    const path = join(dir, 'kv-race.pmem');
    const KEYS = 16;
    const PUTS = 200;
    const puts = Array.from({ length: PUTS }, (_, i) => `put k${i % KEYS} v${i}`).join(' ');
    const primary = await Host.start(parseHostConfig({
      migration: { insecure: true, name: 'primary-race' },
      slice_instructions: 20_000,
      pmem_ha: { partner: partner.address, sync_interval_ms: 10, on_partner: 'none' },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: `pmkv ${puts}`, pmem: { path, size_kib: PMEM_KIB, create: true } }],
    }));
    try {
      // The notice comes in the middle of the puts (or after them, on a fast machine: the check holds either way).
      // After two background saves (both ends share this thread with the guest, so they are slow).
      await until(
        () => ({ text: primary.readConsole('kv', 0, 1 << 20).data, syncs: primary.pmemHaStatus().sending!.syncs.done }),
        ({ text, syncs }) => syncs >= 2 && ((text.match(/pmkv: put /g) ?? []).length >= 40 || primary.vmInfo('kv').state === 'Stopped'),
        120_000,
      );
      const puttingAtNotice = primary.vmInfo('kv').state !== 'Stopped';
      const saved = pmemHaResult(await primary.powerLoss(5000, 'test'));
      expect(saved.complete).toBe(true);
      expect(saved.takeover).toEqual({ on_partner: 'none', started: [], errors: [] });
      // What the guest acknowledged before the pause: the last sequence number per key.
      const acked = new Map<string, number>();
      let lastSeq = 0;
      for (const match of primary.readConsole('kv', 0, 1 << 20).data.matchAll(/pmkv: put (k\d+) = v(\d+) \(seq (\d+)\)/g)) {
        const seq = Number(match[3]);
        expect(Number(match[2])).toBe(seq - 1);
        acked.set(match[1]!, seq);
        lastSeq = Math.max(lastSeq, seq);
      }
      expect(lastSeq).toBeGreaterThanOrEqual(40);
      console.log(`pmem HA race: notice after ${lastSeq} acknowledged puts (${puttingAtNotice ? 'the guest still putting' : 'the guest done'}), ${saved.vms[0]!.pages_sent} pages sent at the notice`);
      // pmkv on the partner's copy.
      const gets = Array.from({ length: KEYS }, (_, k) => `get k${k}`).join(' ');
      await partner.host.createVm(parseVmConfig({ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: `pmkv ${gets}`, pmem: { path: join(partner.dir, 'kv.pmem'), size_kib: PMEM_KIB } }));
      await partner.host.whenStopped('kv');
      const there = partner.host.readConsole('kv', 0, 1 << 20).data;
      const next = /pmkv: (\d+) records, next seq (\d+)/.exec(there);
      expect(next, there).not.toBeNull();
      expect(Number(next![2])).toBeGreaterThan(lastSeq);
      expect(there).not.toMatch(/torn/);
      for (const [key, seq] of acked) {
        const got = new RegExp(`pmkv: get ${key} = v(\\d+) \\(seq (\\d+)\\)`).exec(there);
        expect(got, `${key}: ${there}`).not.toBeNull();
        expect(Number(got![2])).toBeGreaterThanOrEqual(seq);
        expect(Number(got![1])).toBe(Number(got![2]) - 1);
      }
    } finally {
      await primary.close();
      await partner.host.close();
    }
  }, 180_000);

  it('saves in the background every sync_interval_ms while the VMs run', async () => {
    const partner = await partnerHost('partner-bg');
    const path = join(dir, 'kv-bg.pmem');
    const primary = await Host.start(parseHostConfig({
      migration: { insecure: true, name: 'primary-bg' },
      pmem_ha: { partner: partner.address, sync_interval_ms: 50 },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: 'pmkv put a 1 put b 2', pmem: { path, size_kib: PMEM_KIB, create: true } }],
    }));
    try {
      await primary.whenStopped('kv');
      // Two background saves after the guest stopped: the second finds nothing left to send.
      const done = primary.pmemHaStatus().sending!.syncs.done;
      const status = await until(() => primary.pmemHaStatus().sending!, (s) => s.syncs.done >= done + 2);
      expect(status.syncs.failed).toBe(0);
      expect(status.vms).toEqual([{ name: 'kv', partner_generation: expect.any(Number), pending_pages: 0 }]);
      expect(partner.host.pmemHaStatus().receiving!.received.at(-1)).toMatchObject({ vm: 'kv', final: false, pages: 0 });
      expect(Buffer.compare(readFileSync(join(partner.dir, 'kv.pmem')), readFileSync(path))).toBe(0);
    } finally {
      await primary.close();
      await partner.host.close();
    }
  }, 120_000);

  it('a battery budget of 0 saves nothing and reports every range not at the partner; its file stays as it was', async () => {
    const partner = await partnerHost('partner-2');
    const path = join(dir, 'kv2.pmem');
    const primary = await Host.start(parseHostConfig({
      migration: { insecure: true, name: 'primary-2' },
      pmem_ha: { partner: partner.address, sync_interval_ms: 0, on_partner: 'none' },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: 'pmkv put a 1 put b 2', pmem: { path, size_kib: PMEM_KIB, create: true } }],
    }));
    try {
      await primary.whenStopped('kv');
      const report = await primary.powerLoss(0, 'test');
      const saved = pmemHaResult(report);
      expect(saved.complete).toBe(false);
      expect(saved.saved_ms).toBeNull();
      expect(saved.takeover).toBeNull();
      const vm = saved.vms[0]!;
      expect(vm.saved).toBe(false);
      expect(vm.pages_sent).toBe(0);
      expect(vm.error).toMatch(/battery budget/);
      // No save ever reached the partner: the whole range is missing there, as one range.
      expect(vm.unsaved).toEqual([{ offset: 0, bytes: PMEM_KIB * 1024 }]);
      expect(partner.host.pmemHaStatus().receiving!.received).toEqual([]);
    } finally {
      await primary.close();
      await partner.host.close();
    }
  }, 120_000);

  it('a partner that is down is reported within the budget', async () => {
    // A port that was just free: nothing listens there.
    const gone = await partnerHost('gone');
    const address = gone.address;
    await gone.host.close();
    const path = join(dir, 'kv3.pmem');
    const primary = await Host.start(parseHostConfig({
      migration: { insecure: true, name: 'primary-3' },
      pmem_ha: { partner: address, sync_interval_ms: 50 },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: 'pmkv put a 1', pmem: { path, size_kib: PMEM_KIB, create: true } }],
    }));
    try {
      await primary.whenStopped('kv');
      // Background saves fail, and say why.
      const status = await until(() => primary.pmemHaStatus().sending!, (s) => s.syncs.failed >= 1);
      expect(status.syncs.done).toBe(0);
      expect(status.syncs.last_error).toMatch(/could not be reached/);
      const started = performance.now();
      const report = await primary.powerLoss(3000, 'test');
      expect(performance.now() - started).toBeLessThan(3000 + 1000);
      const saved = pmemHaResult(report);
      expect(saved.complete).toBe(false);
      expect(saved.vms[0]!.error).toMatch(new RegExp(`partner ${address.replace(/\./g, '\\.')} could not be reached`));
      expect(saved.vms[0]!.unsaved).toEqual([{ offset: 0, bytes: PMEM_KIB * 1024 }]);
      expect(saved.error).toMatch(/could not be reached/);
    } finally {
      await primary.close();
    }
  }, 120_000);
});

describe('an unknown partner', () => {
  it('is reported (a name that does not resolve), within the budget', async () => {
    const path = join(dir, 'kv-unknown.pmem');
    const primary = await Host.start(parseHostConfig({
      migration: { insecure: true, name: 'primary-u' },
      pmem_ha: { partner: 'no-such-host.invalid:7500', sync_interval_ms: 0 },
      vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: 'pmkv put a 1', pmem: { path, size_kib: PMEM_KIB, create: true } }],
    }));
    try {
      await primary.whenStopped('kv');
      const started = performance.now();
      const saved = pmemHaResult(await primary.powerLoss(2000, 'test'));
      expect(performance.now() - started).toBeLessThan(2000 + 1000);
      expect(saved.complete).toBe(false);
      expect(saved.vms[0]!.error).toMatch(/partner no-such-host\.invalid:7500 could not be reached|battery budget ran out/);
      expect(saved.vms[0]!.unsaved).toEqual([{ offset: 0, bytes: PMEM_KIB * 1024 }]);
      expect(saved.takeover).toBeNull();
    } finally {
      await primary.close();
    }
  }, 120_000);
});

describe('the partner refuses a bad save and keeps its file', () => {
  it('a corrupt stream, a cut one and a save on a base it does not hold are refused; the file is unchanged', async () => {
    const log: string[] = [];
    const fake: PmemHaPartnerHost = { hasVm: () => false, startVm: () => Promise.reject(new Error('not here')), log: (line) => log.push(line) };
    const partner = await PmemHaPartner.listen('127.0.0.1:0', join(dir, 'refusing'), { insecure: true }, fake);
    const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
    const vmHandle = hv.createVm({ name: 'kv', memoryBytes: 1 << 20 });
    const primaryFile = join(dir, 'kv4.pmem');
    const devices = attachStandardDevices(vmHandle, { output: new CaptureSink(), pmem: { path: primaryFile, bytes: PMEM_KIB * 1024, create: true } });
    const entry = { name: 'kv', vm: vmHandle, gpa: devices.pmem!.gpa, bytes: PMEM_KIB * 1024, spec: null };
    const sender = (faults?: { corruptByteAt?: number; cutAfterBytes?: number }) => new PmemHaSender(
      { partner: partner.address, syncIntervalMs: 0, onPartner: 'none', appBootArgs: null, channel: { insecure: true, stallTimeoutMs: 5000, ...(faults === undefined ? {} : { faults }) } },
      () => [entry],
    );
    try {
      // The file's pages: what a good save puts at the partner (written through the shared mapping's file).
      writeFileSync(primaryFile, Buffer.alloc(PMEM_KIB * 1024, 0x41));
      const good = sender();
      expect((await good.sync())[0]).toMatchObject({ saved: true, pages_sent: PMEM_KIB / 4 });
      const path = partner.pathOf('kv');
      const before = readFileSync(path);
      expect(before.every((byte) => byte === 0x41)).toBe(true);

      // New contents, then saves that must not land.
      writeFileSync(primaryFile, Buffer.alloc(PMEM_KIB * 1024, 0x42));
      for (const faults of [{ corruptByteAt: 40_000 }, { cutAfterBytes: 30_000 }]) {
        const bad = sender(faults);
        const [report] = await bad.sync();
        await bad.close();
        expect(report!.saved).toBe(false);
        expect(report!.unsaved).toEqual([{ offset: 0, bytes: PMEM_KIB * 1024 }]);
        expect(Buffer.compare(readFileSync(path), before)).toBe(0);
      }
      const refused = await until(() => partner.status().refused, (list) => list.length >= 2, 10_000);
      expect(refused.map((r) => r.code)).toEqual(['BV_XPORT_CORRUPT', expect.stringMatching(/BV_XPORT_TRUNCATED|BV_XPORT_CLOSED/)]);
      expect(partner.status().received).toHaveLength(1);

      // Another sender saves whole (the partner now holds its generation); the first one's next
      // save builds on a generation the partner no longer holds: refused, and sent again whole.
      const other = sender();
      expect((await other.sync())[0]).toMatchObject({ saved: true, pages_sent: PMEM_KIB / 4 });
      await other.close();
      writeFileSync(primaryFile, Buffer.alloc(PMEM_KIB * 1024, 0x43));
      const [retried] = await good.sync();
      await good.close();
      expect(retried).toMatchObject({ saved: true, pages_sent: PMEM_KIB / 4, unsaved: [] });
      expect(partner.status().refused.at(-1)).toMatchObject({ vm: 'kv', code: 'BV_HA_BASE' });
      expect(readFileSync(path).every((byte) => byte === 0x43)).toBe(true);
    } finally {
      await partner.close();
      hv.destroyVm(vmHandle);
    }
  }, 120_000);
});

describe('a budget too small for the save', () => {
  it('stops sending at the deadline and reports the VM unsaved; the partner keeps nothing of the half save', async () => {
    const fake: PmemHaPartnerHost = { hasVm: () => false, startVm: () => Promise.reject(new Error('not here')), log: () => {} };
    const partner = await PmemHaPartner.listen('127.0.0.1:0', join(dir, 'short-budget'), { insecure: true }, fake);
    const bytes = 32 << 20;
    const hv = createHypervisor({ hostMemoryBytes: 48 << 20 });
    const vmHandle = hv.createVm({ name: 'big', memoryBytes: 1 << 20 });
    const devices = attachStandardDevices(vmHandle, { output: new CaptureSink(), pmem: { path: join(dir, 'big.pmem'), bytes, create: true } });
    const sender = new PmemHaSender({ partner: partner.address, syncIntervalMs: 0, onPartner: 'vm', appBootArgs: null, channel: { insecure: true } }, () => [{ name: 'big', vm: vmHandle, gpa: devices.pmem!.gpa, bytes, spec: null }]);
    try {
      const budget = 25;
      const report = await sender.powerLoss(performance.now() + budget, budget);
      expect(report.complete).toBe(false);
      expect(report.saved_ms).toBeNull();
      expect(report.takeover).toBeNull();
      // Generous: the check is that sending stopped, not how fast (the bench measures that).
      expect(report.elapsed_ms).toBeLessThan(budget + 1000);
      const vm = report.vms[0]!;
      expect(vm.saved).toBe(false);
      expect(vm.pages_sent).toBeLessThan(bytes / 4096);
      expect(vm.error).toMatch(/battery budget ran out/);
      expect(vm.unsaved).toEqual([{ offset: 0, bytes }]);
      await until(() => partner.status().refused.length, (count) => count >= 1, 10_000);
      expect(partner.status().received).toEqual([]);
      expect(existsSync(partner.pathOf('big'))).toBe(false);
    } finally {
      await sender.close();
      await partner.close();
      hv.destroyVm(vmHandle);
    }
  }, 120_000);
});

describe('the partner\'s redo journal', () => {
  it('a whole journal left by a crash after SAVED is applied at the next start; a torn one is dropped and the file is as before', async () => {
    const log: string[] = [];
    const fake: PmemHaPartnerHost = { hasVm: () => false, startVm: () => Promise.reject(new Error('not here')), log: (line) => log.push(line) };
    const haDir = join(dir, 'journal');
    const bytes = PMEM_KIB * 1024;
    let partner = await PmemHaPartner.listen('127.0.0.1:0', haDir, { insecure: true }, fake);
    const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
    const vmHandle = hv.createVm({ name: 'kv', memoryBytes: 1 << 20 });
    const primaryFile = join(dir, 'kv5.pmem');
    writeFileSync(primaryFile, Buffer.alloc(bytes, 0x41));
    const devices = attachStandardDevices(vmHandle, { output: new CaptureSink(), pmem: { path: primaryFile, bytes } });
    const sender = new PmemHaSender({ partner: partner.address, syncIntervalMs: 0, onPartner: 'none', appBootArgs: null, channel: { insecure: true } }, () => [{ name: 'kv', vm: vmHandle, gpa: devices.pmem!.gpa, bytes, spec: null }]);
    try {
      expect((await sender.sync())[0]!.saved).toBe(true);
      await sender.close();
      const path = partner.pathOf('kv');
      await partner.close();
      // A confirmed delta whose in-place write a crash cut short: pages 2 and 3.
      await writeJournal(`${path}.journal`, { vm: 'kv', generation: 77, bytes, spec: null }, [{ first: 2, pages: new Uint8Array(2 * 4096).fill(0x44) }]);
      partner = await PmemHaPartner.listen('127.0.0.1:0', haDir, { insecure: true }, fake);
      const file = readFileSync(path);
      expect(file.subarray(0, 8192).every((byte) => byte === 0x41)).toBe(true);
      expect(file.subarray(8192, 16384).every((byte) => byte === 0x44)).toBe(true);
      expect(file.subarray(16384).every((byte) => byte === 0x41)).toBe(true);
      expect(JSON.parse(readFileSync(`${path}.ha.json`, 'utf8'))).toMatchObject({ vm: 'kv', generation: 77, bytes });
      expect(existsSync(`${path}.journal`)).toBe(false);
      expect(log.some((line) => /applied the journal of 'kv' \(generation 77\)/.test(line))).toBe(true);
      await partner.close();

      // A journal torn while it was written (its save was never confirmed): dropped, nothing applied.
      await writeJournal(`${path}.journal`, { vm: 'kv', generation: 78, bytes, spec: null }, [{ first: 0, pages: new Uint8Array(4096).fill(0x45) }]);
      truncateSync(`${path}.journal`, 4096);
      partner = await PmemHaPartner.listen('127.0.0.1:0', haDir, { insecure: true }, fake);
      expect(Buffer.compare(readFileSync(path), file)).toBe(0);
      expect(JSON.parse(readFileSync(`${path}.ha.json`, 'utf8')).generation).toBe(77);
      expect(existsSync(`${path}.journal`)).toBe(false);
      expect(log.some((line) => /dropped the torn journal/.test(line))).toBe(true);
    } finally {
      await partner.close();
      hv.destroyVm(vmHandle);
    }
  }, 120_000);
});
