/**
 * A real overcommitted host (services/host with `overcommit` and its memory scheduler,
 * services/memory/reclaim.ts): three 64 MiB nanokernel VMs on a 48 MiB pool. The scheduler
 * balloons the VM with cheap pages, swaps where no balloon can help, no VM runs out of host
 * memory, and GET /host/stats shows its state and decisions.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host } from '../../services/host/host.ts';
import { REPO } from '../tools/child.ts';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { until } from './until.ts';

const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');

/** How long a wait may take here (loaded 2-core machines). */
const WAIT_MS = 120_000;
const waitUntil = <T>(what: string, probe: () => T | undefined | Promise<T | undefined>): Promise<T> => until(what, probe, WAIT_MS);

describe('an overcommitted host', () => {
  it('reclaims through its memory scheduler: the balloon of the VM with cheap pages, and no VM runs out', async () => {
    const spec = parseHostConfig({
      host_memory_mib: 48,
      overcommit: true,
      slice_instructions: 50_000,
      vms: [
        // a dirties then frees a 32 MiB heap and idles: free pages that hold frames, cheap to balloon.
        { name: 'a', image: KERNEL, memory_mib: 64, boot_args: 'heap 32M 1 1 idle', balloon: { stats_polling_interval_s: 1 }, meminfo: true },
        { name: 'b', image: KERNEL, memory_mib: 64, boot_args: 'walker 12M seq 0', balloon: { stats_polling_interval_s: 1 }, start_paused: true },
        // c has no balloon: the scheduler can never balloon it.
        { name: 'c', image: KERNEL, memory_mib: 64, boot_args: 'walker 12M seq 0', start_paused: true },
      ],
    });
    expect(spec.reclaim).not.toBeNull();
    const host = await Host.start(spec);
    try {
      // 192 MiB promised on 48: a's heap first, then the two walkers want more than is free.
      await waitUntil("a's heap to be done", () => (host.readConsole('a', 0, 1 << 20).data.includes('heap: ') ? true : undefined));
      await waitUntil("a's first statistics", () => (host.balloonStatistics('a').free_memory !== undefined ? true : undefined));
      host.resume('b');
      host.resume('c');
      const stats = await waitUntil('the scheduler to balloon a', () => {
        const s = host.hostStats().memory_scheduler!;
        return s.counters.balloon_decisions > 0 && host.vmInfo('b').instructions > 20_000_000 && host.vmInfo('c').instructions > 20_000_000 ? s : undefined;
      });
      const decisions = stats.recent_decisions;
      expect(stats.counters.state_changes).toBeGreaterThan(0);
      expect(decisions.filter((d) => d.action === 'balloon').every((d) => d.vm === 'a' || d.vm === 'b')).toBe(true);
      expect(host.balloon('a').actual_pages).toBeGreaterThan(0);
      // The pool was never overrun: every VM still runs, none ran out of host memory.
      for (const vm of host.list()) expect({ name: vm.name, state: vm.state, exit: vm.exit }).toEqual({ name: vm.name, state: 'Running', exit: null });
      const info = host.info();
      expect(info.frames_used).toBeLessThanOrEqual(info.frames_total);
    } finally {
      await host.close();
    }
  }, 180_000);

  it('blocks, never fails, a VM that empties the pool within one slice; swap frees memory and its result is the unconstrained one', async () => {
    // A 16 MiB pool and one walker over 24 MiB with 10-million-instruction slices: the pool runs
    // dry in the middle of a slice, long before the scheduler's next tick.
    const spec = parseHostConfig({
      host_memory_mib: 16,
      overcommit: true,
      slice_instructions: 10_000_000,
      vms: [{ name: 'w', image: KERNEL, memory_mib: 64, boot_args: 'walker 24M seq 2' }],
    });
    const host = await Host.start(spec);
    let info;
    let stats;
    let text;
    let scheduler;
    try {
      info = await host.whenStopped('w');
      stats = host.vmStats('w');
      text = host.readConsole('w', 0, 1 << 20).data;
      scheduler = host.hostStats().memory_scheduler!;
    } finally {
      await host.close();
    }
    expect(info.exit).toEqual({ kind: 'halted', exit_code: 0 });
    expect(stats.exits.host_memory_waits).toBeGreaterThan(0);
    expect(scheduler.counters.blocks).toBeGreaterThan(0);
    expect(scheduler.counters.pages_swapped).toBeGreaterThan(0);
    expect(scheduler.recent_decisions.some((d) => d.action === 'block' && d.reason.includes('the pool had none'))).toBe(true);

    // The same guest on a pool with room to spare.
    const hv = createHypervisor({ hostMemoryBytes: 96 * 2 ** 20 });
    const vm = hv.createVm({ memoryBytes: 64 * 2 ** 20, name: 'w' });
    vm.loadImage(assembleFile(KERNEL).image);
    const output = new CaptureSink();
    attachStandardDevices(vm, { output, bootArgs: 'walker 24M seq 2' });
    const [straight] = hv.run({ maxInstructions: 100_000_000 }, [vm]);
    expect(straight!.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(info.instructions).toBe(vm.instructionsRetired);
    expect(text).toMatch(/walker.*checksum/);
    expect(text).toBe(output.text());
  }, 180_000);

  it('refuses thresholds that do not fall from high to low, naming the field', () => {
    expect(() => parseHostConfig({ overcommit: true, reclaim: { thresholds_pct: { soft: 7 } } })).toThrow(/reclaim\.thresholds_pct\.soft: the thresholds must fall/);
    expect(parseHostConfig({ overcommit: true, reclaim: null }).reclaim).toBeNull();
    expect(parseHostConfig({}).reclaim).toBeNull();
  });

  it('reads and checks the memory policy: shares, reservation, limit, the tax rate', () => {
    const vm = (policy: object) => ({ vms: [{ name: 'a', image: KERNEL, memory_mib: 64, memory_policy: policy }] });
    expect(parseHostConfig({ overcommit: true }).reclaim!.taxRate).toBe(0.75);
    expect(parseHostConfig({ overcommit: true, reclaim: { tax_rate: 0 } }).reclaim!.taxRate).toBe(0);
    expect(() => parseHostConfig({ overcommit: true, reclaim: { tax_rate: 1 } })).toThrow(/^reclaim\.tax_rate: must be a number from 0 to 0\.99, got 1$/);
    expect(() => parseHostConfig(vm({ shares: 0 }))).toThrow(/vms\[0\]\.memory_policy\.shares: must be an integer from 1 to 1000000000, got 0/);
    expect(() => parseHostConfig(vm({ reservation_mib: 65 }))).toThrow(/vms\[0\]\.memory_policy\.reservation_mib: is 65 MiB, more than the VM's memory_mib \(64\)/);
    expect(() => parseHostConfig(vm({ reservation_mib: 32, limit_mib: 16 }))).toThrow(/vms\[0\]\.memory_policy\.limit_mib: is 16 MiB, less than reservation_mib \(32\)/);
    expect(() => parseHostConfig(vm({ mrc: { rate_pct: 0 } }))).toThrow(/vms\[0\]\.memory_policy\.mrc\.rate_pct: must be a number above 0 to 100, got 0/);
    // The activity census covers the sample and more, or nothing (docs/mrc.md#post-stratification-by-activity).
    expect(() => parseHostConfig(vm({ mrc: { activity_rate_pct: 0.5 } }))).toThrow(/vms\[0\]\.memory_policy\.mrc\.activity_rate_pct: is 0\.5, less than rate_pct \(1\): the activity census covers the sample and more, or is 0 \(off\)/);
    expect(() => parseHostConfig(vm({ mrc: { rate_pct: 5, activity_rate_pct: 4 } }))).toThrow(/activity_rate_pct: is 4, less than rate_pct \(5\)/);
    expect(() => parseHostConfig(vm({ mrc: { activity_rate_pct: 101 } }))).toThrow(/vms\[0\]\.memory_policy\.mrc\.activity_rate_pct: must be a number from 0 to 100, got 101/);
    expect(parseHostConfig(vm({ mrc: { activity_rate_pct: 0 } })).vms[0]!.memoryPolicy.mrc).toEqual({ ratePct: null, quietInstructions: null, activityRatePct: 0 });
    expect(parseHostConfig(vm({ mrc: {} })).vms[0]!.memoryPolicy.mrc).toEqual({ ratePct: null, quietInstructions: null, activityRatePct: null });
    expect(() => parseHostConfig(vm({ sharez: 1 }))).toThrow(/vms\[0\]\.memory_policy\.sharez: unknown key \(the keys here are shares, reservation_mib/);
    expect(parseHostConfig(vm({ active_sampling: null, limit_mib: null })).vms[0]!.memoryPolicy).toEqual({
      shares: null, reservationMib: 0, limitMib: null, activeSampling: null, mrc: null,
    });
  });
});
