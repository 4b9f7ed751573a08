// The sysfs topology and cpuidle provider (services/placement/sysfs.ts, docs/placement.md): a
// fake sysfs tree in a temp directory (two packages, three idle states, a disabled state), trees
// without cpuidle, without `online`, without package ids, with a malformed counter, the residency
// between two snapshots, and the real /sys of this machine (parsed, values not asserted).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  idleResidency, measureIdleResidency, parseCpuList, SysfsPowerProvider, SYSFS_CPU_ROOT, type IdleCountersSnapshot,
} from '../../services/placement/index.ts';
import { expectCode } from './placement-helpers.ts';

const roots: string[] = [];
afterEach(() => {
  for (const root of roots.splice(0)) rmSync(root, { recursive: true, force: true });
});

interface FakeState {
  name: string;
  latency: number;
  residency: number;
  time: number;
  usage: number;
  disable?: number;
}

/** A sysfs CPU directory: `online`, cpuN/topology, cpuN/cpuidle/stateK, cpuidle/current_driver. */
function fakeTree(options: { online?: string | null; packages: number[]; states?: (cpu: number) => FakeState[] | null; withPackageIds?: boolean }): string {
  const root = mkdtempSync(join(tmpdir(), 'bv-sysfs-'));
  roots.push(root);
  if (options.online !== null) writeFileSync(join(root, 'online'), `${options.online ?? `0-${options.packages.length - 1}`}\n`);
  mkdirSync(join(root, 'cpuidle'));
  writeFileSync(join(root, 'cpuidle', 'current_driver'), 'intel_idle\n');
  writeFileSync(join(root, 'cpuidle', 'current_governor'), 'menu\n');
  options.packages.forEach((packageId, cpu) => {
    const topology = join(root, `cpu${cpu}`, 'topology');
    mkdirSync(topology, { recursive: true });
    if (options.withPackageIds !== false) writeFileSync(join(topology, 'physical_package_id'), `${packageId}\n`);
    writeFileSync(join(topology, 'core_id'), `${cpu % 2}\n`);
    writeStates(root, cpu, options.states?.(cpu) ?? null);
  });
  return root;
}

function writeStates(root: string, cpu: number, states: FakeState[] | null): void {
  if (states === null) return;
  states.forEach((state, k) => {
    const dir = join(root, `cpu${cpu}`, 'cpuidle', `state${k}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'name'), `${state.name}\n`);
    writeFileSync(join(dir, 'desc'), `MWAIT ${k}\n`);
    writeFileSync(join(dir, 'latency'), `${state.latency}\n`);
    writeFileSync(join(dir, 'residency'), `${state.residency}\n`);
    writeFileSync(join(dir, 'time'), `${state.time}\n`);
    writeFileSync(join(dir, 'usage'), `${state.usage}\n`);
    if (state.disable !== undefined) writeFileSync(join(dir, 'disable'), `${state.disable}\n`);
  });
}

const serverStates = (cpu: number, c6Time: number): FakeState[] => [
  { name: 'POLL', latency: 0, residency: 0, time: 100, usage: 5, disable: 0 },
  { name: 'C1', latency: 2, residency: 2, time: 1000 + cpu, usage: 50, disable: 0 },
  { name: 'C6', latency: 133, residency: 400, time: c6Time, usage: 200, disable: cpu === 3 ? 1 : 0 },
];


describe('sysfs provider on a fake tree', () => {
  it('reads packages, core ids and every idle state', () => {
    const root = fakeTree({ packages: [0, 0, 1, 1], states: (cpu) => serverStates(cpu, 5000) });
    const provider = new SysfsPowerProvider({ root, clockUs: () => 42 });
    expect(provider.kind).toBe('sysfs');
    expect(provider.topology()).toEqual({ packages: [{ packageId: 0, cpus: [0, 1] }, { packageId: 1, cpus: [2, 3] }], notes: [] });
    expect([...provider.coreIds()]).toEqual([[0, 0], [1, 1], [2, 0], [3, 1]]);
    const counters = provider.idleCounters();
    if (!counters.available) throw new Error(counters.reason);
    expect(counters.takenAtUs).toBe(42);
    expect(counters.driver).toBe('intel_idle');
    expect(counters.governor).toBe('menu');
    expect(counters.cpus).toHaveLength(4);
    expect(counters.cpus[2]!.states[2]).toEqual({ index: 2, name: 'C6', desc: 'MWAIT 2', exitLatencyUs: 133, targetResidencyUs: 400, timeUs: 5000, usage: 200, disabled: false });
    expect(counters.cpus[3]!.states[2]!.disabled).toBe(true);
    expect(counters.cpus[1]!.states.map((s) => s.name)).toEqual(['POLL', 'C1', 'C6']);
  });

  it('gives residency between two snapshots, with bounds on the packages\' common idle time', () => {
    const root = fakeTree({ packages: [0, 0, 1, 1], states: (cpu) => serverStates(cpu, 5000) });
    let now = 1_000_000;
    const provider = new SysfsPowerProvider({ root, clockUs: () => now });
    const before = provider.idleCounters();
    // One second later: CPUs 0 and 1 were 60 % and 90 % in C6 (plus 10 % in C1); CPUs 2, 3 only in C1 for 30 %.
    now += 1_000_000;
    const c6 = [600_000, 900_000, 0, 0];
    const c1 = [100_000, 100_000, 300_000, 300_000];
    for (let cpu = 0; cpu < 4; cpu++) {
      const states = serverStates(cpu, 5000 + c6[cpu]!);
      states[1]!.time += c1[cpu]!;
      states[2]!.usage += 10;
      writeStates(root, cpu, states);
    }
    const residency = idleResidency(before, provider.idleCounters(), provider.topology());
    expect(residency.windowUs).toBe(1_000_000);
    expect(residency.cpus[0]!.states).toEqual([{ name: 'POLL', fraction: 0, entries: 0 }, { name: 'C1', fraction: 0.1, entries: 0 }, { name: 'C6', fraction: 0.6, entries: 10 }]);
    expect(residency.cpus[0]!.idleFraction).toBeCloseTo(0.7, 12);
    expect(residency.cpus[1]!.idleFraction).toBeCloseTo(1.0, 12);
    const [pkg0, pkg1] = residency.packages;
    expect(pkg0!.allIdleUpperBound).toBeCloseTo(0.7, 12);
    expect(pkg0!.allIdleLowerBound).toBeCloseTo(0.7, 12);
    expect(pkg0!.deepestUpperBound).toBeCloseTo(0.6, 12);
    expect(pkg1!.allIdleUpperBound).toBeCloseTo(0.3, 12);
    expect(pkg1!.allIdleLowerBound).toBe(0);
    expect(pkg1!.deepestUpperBound).toBe(0);
  });

  it('reports "no idle-state counters" when cpuidle is missing, and still reads the topology', () => {
    const root = fakeTree({ packages: [0, 0], states: () => null });
    const provider = new SysfsPowerProvider({ root });
    expect(provider.topology().packages).toEqual([{ packageId: 0, cpus: [0, 1] }]);
    const counters = provider.idleCounters();
    expect(counters.available).toBe(false);
    if (!counters.available) expect(counters.reason).toMatch(/no idle-state counters/);
  });

  it('falls back to cpuN directories without `online`, and to package 0 with a note without package ids', () => {
    const root = fakeTree({ online: null, packages: [0, 1, 1], states: (cpu) => serverStates(cpu, 1), withPackageIds: false });
    const topology = new SysfsPowerProvider({ root }).topology();
    expect(topology.packages).toEqual([{ packageId: 0, cpus: [0, 1, 2] }]);
    expect(topology.notes).toHaveLength(3);
    expect(topology.notes[0]).toMatch(/assumed package 0/);
    // Only the online CPUs count.
    const partial = fakeTree({ online: '0,2', packages: [0, 1, 1], states: (cpu) => serverStates(cpu, 1) });
    expect(new SysfsPowerProvider({ root: partial }).topology().packages).toEqual([{ packageId: 0, cpus: [0] }, { packageId: 1, cpus: [2] }]);
  });

  it('refuses malformed files and a missing root with typed errors', () => {
    const root = fakeTree({ packages: [0], states: (cpu) => serverStates(cpu, 1) });
    writeFileSync(join(root, 'cpu0', 'cpuidle', 'state1', 'time'), 'lots\n');
    expectCode(() => new SysfsPowerProvider({ root }).idleCounters(), 'BV_PLACEMENT_SYSFS');
    writeFileSync(join(root, 'online'), '0-x\n');
    expectCode(() => new SysfsPowerProvider({ root }).topology(), 'BV_PLACEMENT_SYSFS');
    const missing = join(root, 'nowhere');
    expectCode(() => new SysfsPowerProvider({ root: missing }).topology(), 'BV_PLACEMENT_SYSFS');
    const counters = new SysfsPowerProvider({ root: missing }).idleCounters();
    expect(counters.available).toBe(false);
  });

  it('refuses snapshots that cannot be compared', () => {
    const root = fakeTree({ packages: [0, 0], states: (cpu) => serverStates(cpu, 1) });
    const provider = new SysfsPowerProvider({ root, clockUs: () => 7 });
    const a = provider.idleCounters();
    expectCode(() => idleResidency(a, provider.idleCounters(), provider.topology()), 'BV_PLACEMENT_BAD_SNAPSHOT');
    const none: IdleCountersSnapshot = { available: false, reason: 'none here' };
    expectCode(() => idleResidency(a, none, provider.topology()), 'BV_PLACEMENT_BAD_SNAPSHOT');
    if (!a.available) throw new Error(a.reason);
    const fewer: IdleCountersSnapshot = { ...a, takenAtUs: 100, cpus: a.cpus.slice(1) };
    expectCode(() => idleResidency(a, fewer, provider.topology()), 'BV_PLACEMENT_BAD_SNAPSHOT');
  });

  it('parses sysfs CPU lists', () => {
    expect(parseCpuList('0-3,8,10-11\n')).toEqual([0, 1, 2, 3, 8, 10, 11]);
    expect(parseCpuList('0')).toEqual([0]);
    expect(parseCpuList('')).toEqual([]);
    expect(parseCpuList('3-1')).toBeNull();
    expect(parseCpuList('a')).toBeNull();
  });
});

describe('sysfs provider on this machine', () => {
  it('parses the real topology and idle counters (or says why there are none)', async () => {
    const provider = new SysfsPowerProvider();
    if (!existsSync(SYSFS_CPU_ROOT)) {
      // No /sys (not Linux, or hidden): a typed error for the topology, a reason for the counters.
      expectCode(() => provider.topology(), 'BV_PLACEMENT_SYSFS');
      expect(provider.idleCounters().available).toBe(false);
      return;
    }
    const topology = provider.topology();
    expect(topology.packages.length).toBeGreaterThanOrEqual(1);
    expect(topology.packages.flatMap((p) => p.cpus).length).toBeGreaterThanOrEqual(1);
    const counters = provider.idleCounters();
    if (!counters.available) {
      expect(counters.reason.length).toBeGreaterThan(0);
      return;
    }
    for (const cpu of counters.cpus) {
      expect(cpu.states.length).toBeGreaterThanOrEqual(1);
      for (const state of cpu.states) {
        expect(state.timeUs).toBeGreaterThanOrEqual(0);
        expect(state.usage).toBeGreaterThanOrEqual(0);
      }
    }
    const residency = await measureIdleResidency(provider, 50);
    if ('unavailable' in residency) throw new Error(residency.unavailable);
    expect(residency.windowUs).toBeGreaterThan(0);
    for (const cpu of residency.cpus) expect(cpu.idleFraction).toBeGreaterThanOrEqual(0);
  });
});
