/**
 * Idle guests whose timer keeps ticking (the nanokernel polls its balloon every time slice while
 * idle: wfi skips virtual time to each tick) are paced in host time by the host's scheduler
 * (RunOptions.yieldOnTimerWait, IDLE_TICK_MS): they neither take a busy VM's turns nor spin.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceType, Reg } from '../../guest-isa/arch.ts';
import { TimerRegister } from '../../devices/index.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { REPO } from '../tools/child.ts';
import { GUEST_LIBRARY } from '../devices/harness.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const dir = mkdtempSync(join(tmpdir(), 'bv-idle-pacing-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A guest that works ~20,000 instructions, then waits 100 time units for its timer, for ever; s0 counts the rounds. */
const WORK_THEN_WAIT = `${GUEST_LIBRARY}
        .text
_start:
        li      a0, ${DeviceType.TIMER}
        call    find_device
        bnez    a0, 1f
        exit    99
1:      mv      s1, a0
        li      t0, IE_TIMER
        csrrw   zero, ie, t0
        li      s0, 0
round:
        li      t1, 10000
2:      addi    t1, t1, -1
        bnez    t1, 2b
        lw      t0, ${TimerRegister.TIME_LOW}(s1)
        addi    t0, t0, 100
        li      t2, -1
        sw      t2, ${TimerRegister.TIMECMP_HIGH}(s1)
        sw      t0, ${TimerRegister.TIMECMP_LOW}(s1)
        sw      zero, ${TimerRegister.TIMECMP_HIGH}(s1)
        wfi
        addi    s0, s0, 1
        j       round
`;

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

  it('do not hold back a guest that works between its timer waits', async () => {
    const image = join(dir, 'work-then-wait.s');
    writeFileSync(image, WORK_THEN_WAIT);
    const host = await Host.start(parseHostConfig({ vms: [{ name: 'w', image, memory_mib: 1 }] }));
    try {
      const rounds = (): number => host.vm('w').vcpus[0]!.regs[Reg.S0]!;
      await until('the first rounds', async () => (rounds() > 10 ? true : undefined), 30_000);
      const before = rounds();
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      // Held back 1 ms after each wait it would manage at most 2,000 rounds in 2 s; at even 30
      // MIPS it does 3,000.
      expect(rounds() - before).toBeGreaterThan(3_000);
      expect(host.vmInfo('w').state).toBe('Running');
    } finally {
      await host.close();
    }
  }, 120_000);
});
