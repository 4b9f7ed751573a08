/**
 * Memory errors through the host's control API (POST/GET /vms/{name}/memory-errors) and
 * tools/inject: an injection into a running nanokernel's walker is logged, the walker is killed by
 * a machine check (the VM keeps no recovery method), a VM configured with memory_errors recovers
 * its kernel code from the image, and bad requests answer 400 with a message.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, hostRoutes } from '../../services/host/api.ts';
import { apiRequest } from '../../services/host/client.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import type { MemoryErrorReportList, MemoryErrorResponse } from '../../services/recovery/requests.ts';
import { REPO, spawnNode } from '../tools/child.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-memerr-'));

describe('memory errors through the host API and tools/inject', () => {
  const socket = join(dir, 'api.sock');
  let host: Host;
  let api: ApiServer;
  const call = <T = unknown>(method: string, path: string, body?: unknown) => apiRequest<T>(socket, method, path, body);

  beforeAll(async () => {
    api = await ApiServer.listen(socket);
    host = await Host.start(parseHostConfig({
      host_memory_mib: 64,
      vms: [
        { name: 'w', image: KERNEL, memory_mib: 16, boot_args: 'walker 1M seq 100000' },
        { name: 'k', image: KERNEL, memory_mib: 16, boot_args: 'walker 1M seq 100000' },
        // 'r' keeps recovery methods (memory_errors): its image pages are clean copies.
        { name: 'r', image: KERNEL, memory_mib: 16, boot_args: 'walker 1M seq 100000', memory_errors: { methods: ['clean-copy', 'parity', 'hash'], refresh_instructions: 1_000_000 } },
      ],
    }));
    hostRoutes(api, host);
  });

  afterAll(async () => {
    await api?.close();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('POST injects (gva, on-access), the walker is killed by a machine check, GET lists the report', async () => {
    // Wait until the walker runs (its region is mapped in vCPU 0's page tables).
    const posted = await until('the walker to map its region', async () => {
      const answer = await call<MemoryErrorResponse>('POST', '/vms/w/memory-errors', { gva: 0x4040_5040, window_bits: 16, pattern: 'flip', report: 'on-access' });
      return answer.status === 200 ? answer.body : undefined;
    });
    expect(posted.injected[0]).toMatchObject({ vm: 'w', windowBits: 16, windowBitOffset: 0x40 * 8, bitsChanged: 16, outcome: 'pending' });
    const killed = await until('the machine check', async () => {
      const text = host.readConsole('w', 0, 1 << 20).data;
      return /machine check/.test(text) ? text : undefined;
    });
    expect(killed).toMatch(/\[kernel\] killed pid 1 \(walker\): machine check \(uncorrectable memory error\) at 0x40405[0-9a-f]{3}, pc 0x/);
    const listed = (await call<MemoryErrorReportList>('GET', '/vms/w/memory-errors')).body;
    expect(listed.stats).toMatchObject({ injected: 1, reported: 1, framesRetired: 1, recovered: {} });
    expect(listed.stats.machineChecks).toBeGreaterThanOrEqual(1);
    expect(listed.log[0]).toMatchObject({ id: 1, vm: 'w', outcome: 'machine-check' });
  });

  it('a VM configured with memory_errors recovers an error in its kernel code from the image: the guest never notices', async () => {
    // Let the walker run a while, then corrupt 16 bits of the kernel's first code page (gpa 0x1000: page 0 is left untouched).
    await until('the walker to start', async () => (host.readConsole('r', 0, 1 << 20).data.includes('started pid 1') ? true : undefined));
    const posted = await call<MemoryErrorResponse>('POST', '/vms/r/memory-errors', { gpa: 0x1100, window_bits: 16, pattern: 'flip', report: 'now' });
    expect(posted.status).toBe(200);
    expect(posted.body.injected[0]).toMatchObject({ vm: 'r', outcome: 'recovered-by-clean-copy' });
    const before = host.vmInfo('r').instructions;
    await until('the guest to run on', async () => (host.vmInfo('r').instructions > before + 5_000_000 ? true : undefined));
    expect(host.vmInfo('r')).toMatchObject({ state: 'Running', exit: null });
    expect(host.readConsole('r', 0, 1 << 20).data).not.toMatch(/machine check|PANIC/);
    const listed = (await call<MemoryErrorReportList>('GET', '/vms/r/memory-errors')).body;
    expect(listed.stats).toMatchObject({ injected: 1, reported: 1, framesRetired: 1, machineChecks: 0, recovered: { 'clean-copy': 1 } });
  });

  it('bad requests answer 400 (or 404, 409) with a clear message', async () => {
    const cases: [string, unknown, number, RegExp][] = [
      ['/vms/k/memory-errors', { gpa: 0x2000_0000, window_bits: 8 }, 400, /0x20000000 is outside RAM/],
      ['/vms/k/memory-errors', { gpa: 0x1000, window_bits: 0 }, 400, /window_bits/],
      ['/vms/k/memory-errors', { gpa: 0x1000, window_bits: 65 }, 400, /window_bits/],
      ['/vms/k/memory-errors', { gpa: 0x1000 }, 400, /window_bits must be 1 … 64, got none/],
      ['/vms/k/memory-errors', { gpa: 0x1000, window_bits: 8, pattern: 'melt' }, 400, /pattern/],
      ['/vms/k/memory-errors', { gpa: 0xf0_0000, window_bits: 8 }, 409, /untouched.*errors are injected into pages with a host frame/],
      ['/vms/nobody/memory-errors', { gpa: 0x1000, window_bits: 8 }, 404, /no VM named 'nobody'/],
    ];
    for (const [path, body, status, message] of cases) {
      const answer = await call<{ fault_message: string }>('POST', path, body);
      expect(answer.status, JSON.stringify(body)).toBe(status);
      expect(answer.body.fault_message).toMatch(message);
    }
    expect((await call<MemoryErrorReportList>('GET', '/vms/k/memory-errors')).body.stats.injected).toBe(0);
  });

  it('tools/inject: one error, a campaign, the list, and usage errors', async () => {
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
    const inject = (...args: string[]) => spawnNode(['--import', tsx, join(REPO, 'tools/inject.ts'), '--api-sock', socket, ...args]);
    const one = await inject('k', '--gpa', '0x7000', '--bits', '8', '--report', 'now');
    expect(one.code, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout)).toMatchObject({ injected: [{ gpn: 7, windowBits: 8, report: 'now', outcome: 'unrecovered' }] });
    const campaign = await inject('k', '--rate', '5', '--seed', '3', '--count', '2', '--bits', '1');
    expect(campaign.code, campaign.stderr).toBe(0);
    expect(JSON.parse(campaign.stdout)).toMatchObject({ campaign: { rate: 5, seed: 3, count: 2 } });
    const list = await inject('k', '--list');
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout).log[0]).toMatchObject({ gpn: 7 });
    const refused = await inject('k', '--gpa', '0x20000000', '--bits', '8');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/error: .*outside RAM .*\(HTTP 400\)/);
    const usage = await inject('k', '--bits', '65', '--gpa', '0');
    expect(usage.code).toBe(2);
  });
});
