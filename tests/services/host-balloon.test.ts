/**
 * The balloon through the host and its control API (services/host, docs/balloon.md, docs/api.md):
 * a VM configured with `balloon` runs a small BV32 driver (a .s file written to a temp dir) that
 * polls TARGET, inflates or deflates toward it and answers STATS_SEQ with its statistics. PUT,
 * PATCH and GET /vms/{name}/balloon move the balloon and the host's frames; the statistics
 * endpoint gives Firecracker's fields in bytes; snapshots, restores and forks keep the balloon;
 * errors are the API's 400/404/409; tools/ctl balloon drives the same endpoints.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BalloonCommand, BalloonRegister, BalloonStatTag } from '../../devices/index.ts';
import { AbsentState } from '../../kernel/index.ts';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig, parseVmConfig } from '../../services/host/config.ts';
import { Host, type BalloonInfo, type BalloonStatistics, type HostInfo, type VmInfo } from '../../services/host/host.ts';
import type { VmStats } from '../../services/host/stats.ts';
import { GUEST_LIBRARY } from '../devices/harness.ts';
import { REPO, spawnNode } from '../tools/child.ts';

const MIB = 1024 * 1024;
const PAGES_PER_MIB = 256;
/** Guest RAM of the driver VMs, and the first page the driver puts in its balloon (4 MiB up). */
const RAM_MIB = 32;
const BASE_GPN = 1024;
/** The driver writes this many pages from BASE_GPN at start (so the balloon frees real frames). */
const TOUCHED = 16 * PAGES_PER_MIB;

const REGISTER_EQUS = Object.entries(BalloonRegister).map(([name, offset]) => `        .equ    BAL_${name}, ${offset}`).join('\n');

/**
 * The driver: s1 = the balloon window, s2 = pages in its balloon (BASE_GPN … BASE_GPN + s2 − 1),
 * s3 = the last STATS_SEQ answered. It writes TOUCHED pages, then loops: toward TARGET by up to
 * 1024 pages a command (inflating the next pages, deflating the last ones), and sends STATS
 * when STATS_SEQ moved.
 */
const DRIVER = `${GUEST_LIBRARY}
${REGISTER_EQUS}
        .equ    CMD_INFLATE, ${BalloonCommand.INFLATE}
        .equ    CMD_DEFLATE, ${BalloonCommand.DEFLATE}
        .equ    CMD_STATS, ${BalloonCommand.STATS}
        .equ    BASE, ${BASE_GPN}
        .equ    LIMIT, ${RAM_MIB * PAGES_PER_MIB - BASE_GPN}
        .equ    ARRAY, 0x10000
        .equ    STATS, 0x11000

        .text
_start:
        li      a0, 6
        call    find_device
        bnez    a0, 1f
        exit    99
1:      mv      s1, a0
        li      s2, 0
        li      s3, 0
        # Use memory: one word in each of TOUCHED pages.
        li      t0, BASE * 4096
        li      t1, ${TOUCHED}
2:      sw      t1, 0(t0)
        li      t2, 4096
        add     t0, t0, t2
        addi    t1, t1, -1
        bnez    t1, 2b

loop:   lw      t0, BAL_TARGET(s1)
        li      t1, LIMIT
        bgeu    t1, t0, 1f
        mv      t0, t1                          # more than the driver can give: as much as it can
1:      bltu    s2, t0, grow
        bltu    t0, s2, shrink
        lw      t1, BAL_STATS_SEQ(s1)
        bne     t1, s3, stats
        j       loop

# a0 = pages to move (at most 1024), a1 = first page number: array[i] = a1 + i; clobbers t0-t2.
fill:   li      t0, ARRAY
        mv      t1, a0
        mv      t2, a1
1:      sw      t2, 0(t0)
        addi    t0, t0, 4
        addi    t2, t2, 1
        addi    t1, t1, -1
        bnez    t1, 1b
        ret

grow:   sub     a0, t0, s2
        li      t1, 1024
        bgeu    t1, a0, 1f
        mv      a0, t1
1:      li      a1, BASE
        add     a1, a1, s2
        mv      s0, a0
        call    fill
        li      t0, ARRAY
        sw      t0, BAL_PFN_ADDR(s1)
        sw      s0, BAL_PFN_COUNT(s1)
        li      t0, CMD_INFLATE
        sw      t0, BAL_COMMAND(s1)
        add     s2, s2, s0
        j       loop

shrink: sub     a0, s2, t0
        li      t1, 1024
        bgeu    t1, a0, 1f
        mv      a0, t1
1:      li      a1, BASE
        add     a1, a1, s2
        sub     a1, a1, a0
        mv      s0, a0
        call    fill
        li      t0, ARRAY
        sw      t0, BAL_PFN_ADDR(s1)
        sw      s0, BAL_PFN_COUNT(s1)
        li      t0, CMD_DEFLATE
        sw      t0, BAL_COMMAND(s1)
        sub     s2, s2, s0
        j       loop

# Statistics: total = RAM pages, balloon = s2, free = available = RAM − TOUCHED − s2 (roughly), major faults = the sequence.
stats:  mv      s3, t1
        li      t0, STATS
        li      t1, ${BalloonStatTag.TOTAL}
        sw      t1, 0(t0)
        li      t1, ${RAM_MIB * PAGES_PER_MIB}
        sw      t1, 4(t0)
        li      t1, ${BalloonStatTag.BALLOON}
        sw      t1, 8(t0)
        sw      s2, 12(t0)
        li      t2, ${RAM_MIB * PAGES_PER_MIB - TOUCHED}
        sub     t2, t2, s2
        li      t1, ${BalloonStatTag.FREE}
        sw      t1, 16(t0)
        sw      t2, 20(t0)
        li      t1, ${BalloonStatTag.AVAILABLE}
        sw      t1, 24(t0)
        sw      t2, 28(t0)
        li      t1, ${BalloonStatTag.MAJOR_FAULTS}
        sw      t1, 32(t0)
        sw      s3, 36(t0)
        li      t1, ${BalloonStatTag.OOM_KILLS}
        sw      t1, 40(t0)
        sw      zero, 44(t0)
        sw      t0, BAL_PFN_ADDR(s1)
        li      t1, 6
        sw      t1, BAL_PFN_COUNT(s1)
        li      t1, CMD_STATS
        sw      t1, BAL_COMMAND(s1)
        j       loop
`;

/** Retries `probe` until it returns a value (it may throw meanwhile): vi.waitFor with the host's pace. */
function until<T>(what: string, probe: () => Promise<T | undefined>, timeout = 30_000): Promise<T> {
  return vi.waitFor(async () => {
    const value = await probe();
    if (value === undefined) throw new Error(`still waiting for ${what}`);
    return value;
  }, { timeout, interval: 20 });
}

const dir = mkdtempSync(join(tmpdir(), 'bv-host-balloon-'));
const driver = join(dir, 'driver.s');
writeFileSync(driver, DRIVER);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function vm(name: string, balloon: Record<string, unknown> | null | undefined, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, image: driver, memory_mib: RAM_MIB, ...(balloon === undefined ? {} : { balloon }), ...extra };
}

describe('the balloon configuration', () => {
  it('reads the balloon keys with their defaults, and none when left out or null', () => {
    expect(parseVmConfig(vm('a', {})).balloon).toEqual({ amountMib: 0, deflateOnOom: false, statsPollingIntervalS: 0, freePageReporting: false });
    expect(parseVmConfig(vm('a', { amount_mib: 32, deflate_on_oom: true, stats_polling_interval_s: 5, free_page_reporting: true })).balloon)
      .toEqual({ amountMib: 32, deflateOnOom: true, statsPollingIntervalS: 5, freePageReporting: true });
    expect(parseVmConfig(vm('a', undefined))).not.toHaveProperty('balloon');
    expect(parseVmConfig(vm('a', null))).not.toHaveProperty('balloon');
  });

  it('refuses a target above the VM\'s memory, bad types and unknown keys, naming the field', () => {
    expect(() => parseVmConfig(vm('a', { amount_mib: 33 }))).toThrow('balloon.amount_mib: is 33 MiB, more than the VM\'s memory_mib (32)');
    expect(() => parseVmConfig(vm('a', { stats_polling_interval_s: 1.5 }))).toThrow(/balloon.stats_polling_interval_s: must be an integer from 0 to 86400, got 1.5/);
    expect(() => parseVmConfig(vm('a', { stats_polling_interval_s: -1 }))).toThrow(/balloon.stats_polling_interval_s: must be an integer from 0 to 86400/);
    expect(() => parseVmConfig(vm('a', { deflate_on_oom: 'yes' }))).toThrow(/balloon.deflate_on_oom: must be true or false/);
    expect(() => parseVmConfig(vm('a', { amountMib: 3 }))).toThrow(/balloon.amountMib: unknown key \(did you mean "amount_mib"\?\)/);
    expect(() => parseVmConfig(vm('a', 5 as unknown as Record<string, unknown>))).toThrow(/balloon: must be an object or null/);
    expect(() => parseHostConfig({ vms: [vm('a', { amount_mib: 40 })] })).toThrow(/vms\[0\].balloon.amount_mib: is 40 MiB/);
  });
});

describe('the balloon through the host and its API', () => {
  let socket: string;
  let host: Host;
  let api: ApiServer;
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);
  const balloon = async (name: string): Promise<BalloonInfo> => (await call<BalloonInfo>('GET', `/vms/${name}/balloon`)).body;
  const reaches = (name: string, pages: number) => until(`${name}'s balloon to hold ${pages} pages`, async () => ((await balloon(name)).actual_pages === pages ? true : undefined));
  const framesUsed = async (): Promise<number> => (await call<HostInfo>('GET', '/host')).body.frames_used;

  beforeAll(async () => {
    socket = join(dir, 'api.sock');
    api = await ApiServer.listen(socket);
    host = await Host.start(parseHostConfig({
      host_memory_mib: 256,
      slice_instructions: 50_000,
      vms: [
        vm('b', { amount_mib: 0, stats_polling_interval_s: 1 }),
        vm('quiet', { amount_mib: 2 }),
        vm('plain', undefined),
      ],
    }));
    hostRoutes(api, host);
    // Each driver has written its pages before the first test looks.
    await until('the drivers to use their memory', async () => {
      // 'plain' has no balloon: its driver stops at once (exit 99).
      for (const info of host.list()) if (info.exit !== null && info.name !== 'plain') throw new Error(`VM ${info.name} stopped: ${JSON.stringify(info.exit)}`);
      return (await framesUsed()) > 2 * TOUCHED - 2 * PAGES_PER_MIB ? true : undefined;
    });
  });

  afterAll(async () => {
    await api?.close();
    await host?.close();
  });

  it('PATCH moves the target; the driver inflates to it and host frames fall; deflating gives pages back as untouched', async () => {
    expect(await balloon('b')).toEqual({
      amount_mib: 0, deflate_on_oom: false, stats_polling_interval_s: 1, free_page_reporting: false, target_pages: 0, actual_pages: 0, target_mib: 0, actual_mib: 0,
    });
    const before = await framesUsed();
    const patched = await call<BalloonInfo>('PATCH', '/vms/b/balloon', { amount_mib: 12 });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ amount_mib: 12, target_pages: 12 * PAGES_PER_MIB, target_mib: 12 });
    await reaches('b', 12 * PAGES_PER_MIB);
    expect(await balloon('b')).toMatchObject({ actual_pages: 3072, actual_mib: 12 });
    // Every ballooned page was one the driver had written (BASE_GPN …): its frame went back.
    expect(before - (await framesUsed())).toBeGreaterThanOrEqual(12 * PAGES_PER_MIB - 16);
    expect(host.vm('b').memory.countInState(AbsentState.BALLOONED)).toBe(3072);

    const put = await call<BalloonInfo>('PUT', '/vms/b/balloon', { amount_mib: 4, deflate_on_oom: true });
    expect(put.body).toMatchObject({ amount_mib: 4, deflate_on_oom: true, stats_polling_interval_s: 1 });
    await reaches('b', 4 * PAGES_PER_MIB);
    // Deflated pages stay untouched until the guest uses them: frames do not come back by themselves.
    expect(host.vm('b').memory.stateOf(BASE_GPN + 2000)).toBe(AbsentState.UNTOUCHED);
    const stats = (await call<VmStats>('GET', '/vms/b/stats')).body;
    expect(stats.balloon).toMatchObject({ target_pages: 1024, actual_pages: 1024, pages_inflated: 3072, pages_deflated: 2048, guest_errors: 0 });
    expect(stats.balloon!.features & 1).toBe(1);
    expect(stats.memory.pages_absent['ballooned']).toBe(1024);
    await call('PATCH', '/vms/b/balloon', { amount_mib: 0, deflate_on_oom: false });
    await reaches('b', 0);
    expect((await call<VmStats>('GET', '/vms/plain/stats')).body).not.toHaveProperty('balloon');
  });

  it('a target set in the configuration is met at boot', async () => {
    await reaches('quiet', 2 * PAGES_PER_MIB);
  });

  it('statistics: Firecracker\'s fields in bytes, updated after a target change; 400 while polling is off', async () => {
    const first = await until('the first statistics', async () => {
      const answer = await call<BalloonStatistics>('GET', '/vms/b/balloon/statistics');
      expect(answer.status).toBe(200);
      return answer.body.updates > 0 ? answer.body : undefined;
    });
    expect(first).toMatchObject({ total_memory: RAM_MIB * MIB, oom_kill: 0 });
    expect(first.free_memory).toBe(first.available_memory);
    expect(first.age_ms).toBeGreaterThanOrEqual(0);
    expect(first).not.toHaveProperty('swap_in'); // never sent: left out, as Firecracker does
    await call('PATCH', '/vms/b/balloon', { amount_mib: 8 });
    await reaches('b', 8 * PAGES_PER_MIB);
    const after = await until('statistics after the change', async () => {
      const body = (await call<BalloonStatistics>('GET', '/vms/b/balloon/statistics')).body;
      return body.balloon_memory === 8 * MIB ? body : undefined;
    }, 10_000);
    expect(after.free_memory).toBe(first.free_memory! - 8 * MIB + first.balloon_memory!);
    expect(after).toMatchObject({ target_pages: 2048, actual_pages: 2048, target_mib: 8, actual_mib: 8 });
    expect(after.updates).toBeGreaterThan(first.updates);
    expect(after.major_faults).toBeGreaterThan(first.major_faults!); // each poll a new sequence number

    const off = await call<{ fault_message: string }>('GET', '/vms/quiet/balloon/statistics');
    expect(off.status).toBe(400);
    expect(off.body.fault_message).toMatch(/statistics polling off/);
    // Polling is turned on or off only at creation; its interval may change.
    expect((await call('PATCH', '/vms/quiet/balloon/statistics', { stats_polling_interval_s: 1 })).status).toBe(400);
    expect((await call('PATCH', '/vms/b/balloon/statistics', { stats_polling_interval_s: 0 })).status).toBe(400);
    const changed = await call<BalloonInfo>('PATCH', '/vms/b/balloon/statistics', { stats_polling_interval_s: 2 });
    expect(changed.status).toBe(200);
    expect(changed.body.stats_polling_interval_s).toBe(2);
    await call('PATCH', '/vms/b/balloon', { amount_mib: 0 });
    await reaches('b', 0);
  });

  it('refuses what cannot be done, as the API does', async () => {
    const expectFault = async (method: string, path: string, body: unknown, status: number, message: RegExp): Promise<void> => {
      const answer = await call<{ fault_message: string }>(method, path, body);
      expect(answer.status, JSON.stringify(answer.body)).toBe(status);
      expect(answer.body.fault_message).toMatch(message);
    };
    await expectFault('GET', '/vms/plain/balloon', undefined, 400, /VM 'plain' has no balloon: configure `balloon` when creating the VM/);
    await expectFault('PATCH', '/vms/plain/balloon', { amount_mib: 1 }, 400, /configure `balloon` when creating the VM/);
    await expectFault('GET', '/vms/plain/balloon/statistics', undefined, 400, /no balloon/);
    await expectFault('PATCH', '/vms/b/balloon', { amount_mib: 33 }, 400, /amount_mib must be 0 to 32 \(the memory of VM 'b'\), got 33/);
    await expectFault('PATCH', '/vms/b/balloon', {}, 400, /body/);
    await expectFault('PATCH', '/vms/b/balloon', { amount_mib: -1 }, 400, /body.amount_mib/);
    await expectFault('PATCH', '/vms/b/balloon', { free_page_reporting: true }, 400, /body.free_page_reporting: unknown key/);
    await expectFault('PUT', '/vms/b/balloon', { deflate_on_oom: true }, 400, /body.amount_mib: missing/);
    await expectFault('PUT', '/vms/b/balloon', { amount_mib: 0, free_page_reporting: true }, 400, /free_page_reporting of VM 'b' is false: it is fixed when the VM is created/);
    await expectFault('GET', '/vms/nobody/balloon', undefined, 404, /no VM named 'nobody'/);
    await expectFault('DELETE', '/vms/b/balloon', undefined, 405, /allowed/);
  });

  it('a VM created through the API gets its balloon; a snapshot, a restore and a fork keep it', async () => {
    const created = await call<VmInfo>('PUT', '/vms/c', { image: driver, memory_mib: RAM_MIB, balloon: { amount_mib: 6, free_page_reporting: true } });
    expect(created.status).toBe(201);
    await reaches('c', 6 * PAGES_PER_MIB);
    expect(await balloon('c')).toMatchObject({ free_page_reporting: true, target_mib: 6 });
    expect((await call('PATCH', '/vms/c', { state: 'Paused' })).status).toBe(200);

    const path = join(dir, 'c.ckpt');
    expect((await call('PUT', '/vms/c/snapshot', { path })).status).toBe(200);
    const restored = await call<VmInfo>('PUT', '/vms/restore', { path, name: 'c2', mode: 'eager', paused: true });
    expect(restored.status).toBe(201);
    expect(await balloon('c2')).toMatchObject({ target_pages: 1536, actual_pages: 1536, free_page_reporting: true });
    expect(host.vm('c2').memory.countInState(AbsentState.BALLOONED)).toBe(1536);

    const forked = await call<VmInfo>('PUT', '/vms/c/fork', { name: 'c3' });
    expect(forked.status).toBe(201);
    expect(await balloon('c3')).toMatchObject({ target_pages: 1536, actual_pages: 1536 });
    // The child's driver carries on from the parent's state: it follows its own target.
    await call('PATCH', '/vms/c3/balloon', { amount_mib: 1 });
    await reaches('c3', 256);
    expect(host.vm('c').memory.countInState(AbsentState.BALLOONED)).toBe(1536);

    for (const name of ['c', 'c2', 'c3']) expect((await call('DELETE', `/vms/${name}`)).status).toBe(204);
  });

  it('a stopped VM: GET answers, a change is a 409', async () => {
    expect((await call('PUT', '/vms/short', { image: driver, memory_mib: RAM_MIB, balloon: {}, max_instructions: 1000 })).status).toBe(201);
    await host.whenStopped('short');
    expect((await call('GET', '/vms/short/balloon')).status).toBe(200);
    const answer = await call<{ fault_message: string }>('PATCH', '/vms/short/balloon', { amount_mib: 1 });
    expect(answer.status).toBe(409);
    expect(answer.body.fault_message).toMatch(/cannot change the balloon of VM 'short': it has stopped/);
    await call('DELETE', '/vms/short');
  });

  it('tools/ctl balloon shows, sets and reads statistics', async () => {
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
    const ctl = (...args: string[]) => spawnNode(['--import', tsx, join(REPO, 'tools/ctl.ts'), '--api-sock', socket, ...args]);
    const shown = await ctl('balloon', 'b');
    expect(shown, shown.stderr).toMatchObject({ code: 0 });
    expect(shown.stdout).toMatch(/^target +0 MiB \(0 pages\)$/m);
    expect(shown.stdout).toMatch(/^statistics +every 2 s$/m);
    const set = await ctl('balloon', 'b', '--set', '3', '--deflate-on-oom', 'true', '--json');
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ amount_mib: 3, deflate_on_oom: true });
    await reaches('b', 768);
    const stats = await ctl('balloon', 'b', '--stats');
    expect(stats.code, stats.stderr).toBe(0);
    expect(stats.stdout).toMatch(/^actual +3 MiB \(768 pages\)$/m);
    expect(stats.stdout).toMatch(/^total memory +32(\.0)? MiB$/m);
    const refused = await ctl('balloon', 'plain', '--set', '1');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/configure `balloon` when creating the VM \(HTTP 400\)/);
    const usage = await ctl('balloon', 'b', '--deflate-on-oom', 'maybe');
    expect(usage.code).toBe(2);
    await call('PATCH', '/vms/b/balloon', { amount_mib: 0, deflate_on_oom: false });
    await reaches('b', 0);
  }, 60_000);
});
