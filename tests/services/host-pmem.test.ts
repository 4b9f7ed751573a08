/**
 * A host VM's `pmem` entry (docs/pmem.md, docs/host.md): the schema checks it, the host attaches
 * the file as persistent memory, what the guest put survives a new host on the same file, and a
 * snapshot or fork of such a VM is refused with a clear error; a bad file is refused at start.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';

const KERNEL = join(import.meta.dirname, '..', '..', 'examples', 'nanokernel', 'kernel.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-host-pmem-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function vm(bootArgs: string, pmem: unknown): Record<string, unknown> {
  return { name: 'kv', image: KERNEL, memory_mib: 16, boot_args: bootArgs, pmem };
}

function refusal(json: unknown): ConfigError {
  try {
    parseHostConfig(json);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`accepted: ${JSON.stringify(json)}`);
}

describe('a VM\'s pmem entry', () => {
  it('is parsed into a spec, and refused when malformed', () => {
    const spec = parseHostConfig({ vms: [vm('', { path: '/x.pmem', size_kib: 64 })] });
    expect(spec.vms[0]!.pmem).toEqual({ path: '/x.pmem', bytes: 64 * 1024, create: false });
    expect(parseHostConfig({ vms: [vm('', null)] }).vms[0]!.pmem).toBeUndefined();
    expect(parseHostConfig({ vms: [{ name: 'kv', image: KERNEL, memory_mib: 16 }] }).vms[0]!.pmem).toBeUndefined();
    expect(refusal({ vms: [vm('', { path: '/x.pmem', size_kib: 6 })] }).path).toBe('vms[0].pmem.size_kib');
    expect(refusal({ vms: [vm('', { path: '/x.pmem', size_kib: 0 })] }).path).toBe('vms[0].pmem.size_kib');
    expect(refusal({ vms: [vm('', { size_kib: 64 })] }).path).toMatch(/^vms\[0\]\.pmem/);
    expect(refusal({ vms: [vm('', { path: '/x.pmem', size_kib: 64, mode: 'rw' })] }).path).toMatch(/^vms\[0\]\.pmem/);
    expect(refusal({ vms: [vm('', { path: '', size_kib: 64 })] }).path).toBe('vms[0].pmem.path');
  });

  it('gives the VM persistent memory that a new host on the same file still has; snapshot and fork are refused', async () => {
    const path = join(dir, 'kv.pmem');
    const first = await Host.start(parseHostConfig({ vms: [vm('pmkv put colour blue', { path, size_kib: 64, create: true })] }));
    try {
      await first.whenStopped('kv');
      const output = first.readConsole('kv', 0, 1 << 20).data;
      expect(output).toContain('[kernel] pmem: 65536 bytes at 0x01000000');
      expect(output).toContain('pmkv: put colour = blue (seq 1)');
    } finally {
      await first.close();
    }
    const second = await Host.start(parseHostConfig({ vms: [vm('pmkv get colour', { path, size_kib: 64 })] }));
    try {
      await second.whenStopped('kv');
      expect(second.readConsole('kv', 0, 1 << 20).data).toContain('pmkv: get colour = blue (seq 1)');
    } finally {
      await second.close();
    }
    // A VM with persistent memory (paused, so that it can be snapshotted or forked at all).
    const third = await Host.start(parseHostConfig({ vms: [{ ...vm('pmkv get colour', { path, size_kib: 64 }), start_paused: true }] }));
    try {
      await expect(third.snapshot('kv', join(dir, 'kv.snap'), false)).rejects.toThrow(/persistent memory/);
      const refused = await third.snapshot('kv', join(dir, 'kv.snap'), false).catch((error: Error) => error.message);
      expect(refused).toMatch(/checkpoints, snapshots, migration and fork do not capture it/);
      await expect(third.fork('kv', 'kv2', true)).rejects.toThrow(/persistent memory/);
      expect(() => third.vmInfo('kv2')).toThrow(); // no half-made child is left behind
      expect(third.vmInfo('kv').state).toBe('Paused');
    } finally {
      await third.close();
    }
  }, 120_000);

  it('refuses to start with a missing file or one of another size', async () => {
    await expect(Host.start(parseHostConfig({ vms: [vm('', { path: join(dir, 'missing.pmem'), size_kib: 64 })] }))).rejects.toThrow(/no such file/);
    const short = join(dir, 'short.pmem');
    writeFileSync(short, new Uint8Array(4096));
    await expect(Host.start(parseHostConfig({ vms: [vm('', { path: short, size_kib: 64 })] }))).rejects.toThrow(/has 4096 bytes, the configuration says 65536/);
  });
});
