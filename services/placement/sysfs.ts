/**
 * The real host's topology and cpuidle counters from sysfs (Linux). The root is a constructor
 * argument so that tests can point it at a fake tree. Missing cpuidle directories (no cpuidle
 * driver, /sys hidden in a container) give `available: false` with the reason, never a throw.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PlacementError } from './errors.ts';
import type { CpuIdleReading, HostTopology, IdleCountersSnapshot, IdleStateReading, PackageTopology, PowerTopologyProvider } from './topology.ts';

/** Where sysfs keeps the CPUs on Linux. */
export const SYSFS_CPU_ROOT = '/sys/devices/system/cpu';

/** Options of {@link SysfsPowerProvider}. */
export interface SysfsPowerProviderOptions {
  /** The directory holding `online`, `cpuN/` and `cpuidle/`; default {@link SYSFS_CPU_ROOT}. */
  root?: string;
  /** The clock the snapshots are stamped with, µs; default the process's monotonic clock. */
  clockUs?: () => number;
}

/** Parses a sysfs CPU list such as `0-3,8,10-11` into ascending CPU numbers (null when malformed). */
export function parseCpuList(text: string): number[] | null {
  const trimmed = text.trim();
  if (trimmed === '') return [];
  const cpus: number[] = [];
  for (const part of trimmed.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!match) return null;
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) return null;
    for (let cpu = first; cpu <= last; cpu++) cpus.push(cpu);
  }
  return [...new Set(cpus)].sort((a, b) => a - b);
}

const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);

/** Topology and idle-state counters of the host this process runs on, read from sysfs. */
export class SysfsPowerProvider implements PowerTopologyProvider {
  readonly kind = 'sysfs';
  /** The sysfs CPU directory read. */
  readonly root: string;
  private readonly clockUs: () => number;

  constructor(options: SysfsPowerProviderOptions = {}) {
    this.root = options.root ?? SYSFS_CPU_ROOT;
    this.clockUs = options.clockUs ?? monotonicUs;
  }

  /** The online CPUs: `online` when present, else every `cpuN` directory. Throws BV_PLACEMENT_SYSFS when there is neither. */
  onlineCpus(): number[] {
    const online = this.readText('online');
    if (online !== null) {
      const cpus = parseCpuList(online);
      if (cpus === null) throw new PlacementError('BV_PLACEMENT_SYSFS', `cannot parse ${join(this.root, 'online')}: ${JSON.stringify(online.trim())}`);
      return cpus;
    }
    let names: string[];
    try {
      names = readdirSync(this.root);
    } catch (error) {
      throw new PlacementError('BV_PLACEMENT_SYSFS', `cannot read ${this.root}: ${(error as Error).message}`, { cause: error });
    }
    const cpus = names.map((name) => /^cpu(\d+)$/.exec(name)).filter((m) => m !== null).map((m) => Number(m[1])).sort((a, b) => a - b);
    if (cpus.length === 0) throw new PlacementError('BV_PLACEMENT_SYSFS', `no CPU in ${this.root}`);
    return cpus;
  }

  /**
   * Packages from each online CPU's `topology/physical_package_id`. A CPU without the file is
   * put in package 0 and a note says so (some containers hide topology).
   */
  topology(): HostTopology {
    const notes: string[] = [];
    const byPackage = new Map<number, number[]>();
    for (const cpu of this.onlineCpus()) {
      let packageId = this.readInt(`cpu${cpu}/topology/physical_package_id`);
      if (packageId === null) {
        notes.push(`cpu${cpu}: no topology/physical_package_id, assumed package 0`);
        packageId = 0;
      }
      // Some platforms report -1 (unknown); all such CPUs form one package.
      const list = byPackage.get(packageId) ?? [];
      list.push(cpu);
      byPackage.set(packageId, list);
    }
    const packages: PackageTopology[] = [...byPackage.entries()].sort((a, b) => a[0] - b[0]).map(([packageId, cpus]) => ({ packageId, cpus }));
    return { packages, notes };
  }

  /** Each online CPU's `topology/core_id`, or null where it is missing. */
  coreIds(): Map<number, number | null> {
    return new Map(this.onlineCpus().map((cpu) => [cpu, this.readInt(`cpu${cpu}/topology/core_id`)]));
  }

  /**
   * The cpuidle counters of every online CPU. When any online CPU has no `cpuidle/state0`, the
   * answer is `available: false` with the reason: without a cpuidle driver (or with /sys hidden)
   * nothing measures idle states.
   */
  idleCounters(): IdleCountersSnapshot {
    let cpus: number[];
    try {
      cpus = this.onlineCpus();
    } catch (error) {
      return { available: false, reason: (error as Error).message };
    }
    const readings: CpuIdleReading[] = [];
    const takenAtUs = this.clockUs();
    for (const cpu of cpus) {
      const dir = `cpu${cpu}/cpuidle`;
      if (!existsSync(join(this.root, dir, 'state0'))) {
        return { available: false, reason: `no idle-state counters: ${join(this.root, dir)} has no state0 (no cpuidle driver, or /sys not exposed here)` };
      }
      const states: IdleStateReading[] = [];
      for (let index = 0; existsSync(join(this.root, dir, `state${index}`)); index++) {
        const state = `${dir}/state${index}`;
        states.push({
          index,
          name: (this.readText(`${state}/name`) ?? `state${index}`).trim(),
          desc: (this.readText(`${state}/desc`) ?? '').trim(),
          exitLatencyUs: this.requireInt(`${state}/latency`),
          targetResidencyUs: this.requireInt(`${state}/residency`),
          timeUs: this.requireInt(`${state}/time`),
          usage: this.requireInt(`${state}/usage`),
          // `disable` is missing on old kernels: the state is then enabled.
          disabled: (this.readInt(`${state}/disable`) ?? 0) !== 0,
        });
      }
      readings.push({ cpu, states });
    }
    return {
      available: true,
      takenAtUs,
      driver: this.readText('cpuidle/current_driver')?.trim() ?? null,
      governor: this.readText('cpuidle/current_governor')?.trim() ?? null,
      cpus: readings,
    };
  }

  private readText(relative: string): string | null {
    try {
      return readFileSync(join(this.root, relative), 'utf8');
    } catch {
      return null;
    }
  }

  private readInt(relative: string): number | null {
    const text = this.readText(relative);
    if (text === null) return null;
    const value = Number(text.trim());
    if (text.trim() === '' || !Number.isInteger(value)) throw new PlacementError('BV_PLACEMENT_SYSFS', `${join(this.root, relative)} is not an integer: ${JSON.stringify(text.trim())}`);
    return value;
  }

  private requireInt(relative: string): number {
    const value = this.readInt(relative);
    if (value === null) throw new PlacementError('BV_PLACEMENT_SYSFS', `${join(this.root, relative)} is missing`);
    return value;
  }
}
