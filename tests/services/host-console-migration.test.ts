/**
 * Console input a guest has not read yet moves with its VM (two Host objects in one process,
 * plain TCP on loopback): `wc` on the source is paused with input and the end of input waiting,
 * migrated (or replicated and failed over), and counts exactly that input on the other host.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { REPO } from '../tools/child.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');

describe('console input and migration', () => {
  for (const mode of ['precopy', 'postcopy'] as const) {
    it(`${mode}: input sent to the source and not yet read reaches the guest on the destination, and so does its end`, async () => {
      const source = await Host.start(parseHostConfig({ vms: [{ name: 'w', image: KERNEL, memory_mib: 16, boot_args: 'wc' }], migration: { insecure: true, name: 'source' } }));
      const destination = await Host.start(parseHostConfig({ vms: [], migration: { insecure: true, name: 'destination' } }));
      try {
        const { listening } = await destination.receiveMigrations('127.0.0.1:0');
        if (listening === null) throw new Error('the destination does not listen');
        // wc waits for input; first a line it reads on the source.
        await until('wc to wait for input', async () => (source.vmInfo('w').waiting_for_input ? true : undefined), 60_000);
        source.sendInput('w', 'one two\n', false);
        await until('wc to read the first line', async () => (source.vmInfo('w').waiting_for_input ? true : undefined), 60_000);
        // Then, paused, more input and its end: nothing of it is read here.
        source.pause('w');
        source.sendInput('w', 'three\nfour five six\n', true);
        await source.migrate('w', { destination: listening, mode });
        if (destination.vmInfo('w').state === 'Paused') destination.resume('w');
        // Without the input wc would wait for ever: give up after a while, with a clear message.
        await until('wc to finish on the destination', async () => (destination.vmInfo('w').state === 'Stopped' ? true : undefined), 30_000);
        expect(destination.vmInfo('w').exit).toEqual({ kind: 'halted', exit_code: 0 });
        expect(destination.readConsole('w', 0, 1 << 20).data).toContain('wc: 3 lines, 6 words, 28 bytes');
      } finally {
        await source.close();
        await destination.close();
      }
    }, 120_000);
  }

  it('replication: input pending at the last epoch reaches the guest when the replica is activated', async () => {
    const source = await Host.start(parseHostConfig({ vms: [{ name: 'w', image: KERNEL, memory_mib: 16, boot_args: 'wc' }], migration: { insecure: true, name: 'primary' } }));
    const backup = await Host.start(parseHostConfig({ vms: [], migration: { insecure: true, name: 'backup' } }));
    try {
      const { listening } = await backup.receiveMigrations('127.0.0.1:0');
      if (listening === null) throw new Error('the backup does not listen');
      await until('wc to wait for input', async () => (source.vmInfo('w').waiting_for_input ? true : undefined), 60_000);
      source.pause('w');
      source.sendInput('w', 'alpha beta\ngamma\n', true);
      const started = await source.replicate('w', { destination: listening, interval_ms: 20 });
      expect(started.committed_epoch).not.toBeNull();
      await until('two more epochs', async () => (source.vmReplication('w').epochs >= 3 ? true : undefined), 30_000);
      await source.stopReplication('w');
      backup.activateReplica('w');
      await until('wc to finish on the backup', async () => (backup.vmInfo('w').state === 'Stopped' ? true : undefined), 30_000);
      expect(backup.vmInfo('w').exit).toEqual({ kind: 'halted', exit_code: 0 });
      expect(backup.readConsole('w', 0, 1 << 20).data).toContain('wc: 2 lines, 3 words, 17 bytes');
    } finally {
      await source.close();
      await backup.close();
    }
  }, 120_000);
});
