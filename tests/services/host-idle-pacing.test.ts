/**
 * Idle guests whose timer keeps ticking (the nanokernel polls its balloon every time slice while
 * idle: wfi skips virtual time to each tick) are paced in host time by the host's scheduler
 * (RunOptions.yieldOnTimerWait, IDLE_TICK_MS): they neither take a busy VM's turns nor spin.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { REPO } from '../tools/child.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');

describe('idle guests with a ticking timer', () => {
  it('leave the host to a busy VM: it retires far more than the idle ones together, and their balloons still follow targets', async () => {
    const idle = ['i0', 'i1', 'i2'];
    const host = await Host.start(parseHostConfig({
      vms: [
        { name: 'busy', image: KERNEL, memory_mib: 16, boot_args: 'walker 64K random 0' },
        ...idle.map((name) => ({ name, image: KERNEL, memory_mib: 32, boot_args: 'idle', balloon: { amount_mib: 0 } })),
      ],
    }));
    try {
      // Booted: the idle programs have touched their pages and sleep for ever.
      await until('the idle programs to sleep', async () => (idle.every((name) => host.readConsole(name, 0, 1 << 16).data.includes('idle: 16 pages touched, sleeping')) ? true : undefined), 60_000);
      const before = new Map([...idle, 'busy'].map((name) => [name, host.vm(name).instructionsRetired]));
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const delta = (name: string): number => host.vm(name).instructionsRetired - before.get(name)!;
      const idleTotal = idle.reduce((sum, name) => sum + delta(name), 0);
      // Unpaced, each idle kernel polled its balloon as fast as the host could run it: together
      // they retired several times what the busy VM did (it got about 1/20 of its speed alone).
      expect(delta('busy')).toBeGreaterThan(10 * idleTotal);
      for (const name of idle) expect(host.vmInfo(name).state).toBe('Running');
      // Paced, an idle guest still wakes at its ticks: its balloon inflates to a new target.
      host.setBalloon('i1', { amount_mib: 8 });
      await until('i1 to inflate to 8 MiB', async () => (host.balloon('i1').actual_mib === 8 ? true : undefined), 30_000);
    } finally {
      await host.close();
    }
  }, 120_000);
});
