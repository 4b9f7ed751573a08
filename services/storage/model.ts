/**
 * A synthetic storage device and a cluster of PARDA hosts over it, in simulated time: the tests
 * check the control law's behaviour with it (deterministic, no disk), and docs/storage-io.md
 * compares it with the real runs. It is a model, not the experiment: scripts/parda.ts runs real
 * host processes on a real disk.
 *
 * The device serves IOs first come, first served on `servers` parallel channels, each IO taking
 * fixed + bytes / bandwidth. Beyond `servers` outstanding IOs, throughput is flat and latency
 * grows linearly with the queue: the regime PARDA controls.
 */
import { PardaController, type StorageIoOptions } from './controller.ts';

/** The simulated device's parameters. */
export interface SimulatedDeviceOptions {
  /** IOs served at once (default 8). */
  servers?: number;
  /** Fixed cost per IO, µs (default 100). */
  fixedUs?: number;
  /** Transfer rate, MB/s (default 400). */
  mbPerSecond?: number;
}

/** A first-come-first-served multi-channel device in simulated nanoseconds. */
export class SimulatedDevice {
  /** Simulated time, ns. */
  nowNs = 0;
  private readonly free: number[];
  private readonly fixedNs: number;
  private readonly nsPerByte: number;
  /** Pending completions, kept sorted by time (latest first, so pop() gives the next). */
  private readonly pending: { at: number; done: (latencyNs: number) => void; latencyNs: number }[] = [];

  constructor(options: SimulatedDeviceOptions = {}) {
    this.free = new Array<number>(options.servers ?? 8).fill(0);
    this.fixedNs = (options.fixedUs ?? 100) * 1000;
    this.nsPerByte = 1000 / (options.mbPerSecond ?? 400);
  }

  /** Issues an IO now; `done` is called with its latency when simulated time reaches its end. */
  issue(bytes: number, done: (latencyNs: number) => void): void {
    let server = 0;
    for (let i = 1; i < this.free.length; i++) if (this.free[i]! < this.free[server]!) server = i;
    const start = Math.max(this.nowNs, this.free[server]!);
    const end = start + this.fixedNs + bytes * this.nsPerByte;
    this.free[server] = end;
    const entry = { at: end, done, latencyNs: end - this.nowNs };
    let index = this.pending.length;
    while (index > 0 && this.pending[index - 1]!.at < end) index--;
    this.pending.splice(index, 0, entry);
  }

  /** The time of the next completion, or Infinity. */
  nextAt(): number {
    return this.pending.length === 0 ? Infinity : this.pending[this.pending.length - 1]!.at;
  }

  /** Delivers every completion due at or before `timeNs` and moves time there. */
  runUntil(timeNs: number): void {
    while (this.nextAt() <= timeNs) {
      const next = this.pending.pop()!;
      this.nowNs = next.at;
      next.done(next.latencyNs);
    }
    this.nowNs = Math.max(this.nowNs, timeNs);
  }
}

/** One simulated host: its controller settings and VMs (each keeps `depth` requests outstanding). */
export interface SimulatedHost {
  /** Its slot in the statistics file. */
  hostId: number;
  /** Its VMs: name, IO shares, requests kept outstanding, IO size (default 4 KiB). */
  vms: {
    /** The VM's name. */
    name: string;
    /** Its IO shares (default 1000). */
    shares?: number;
    /** Requests it keeps outstanding. */
    depth: number;
    /** Bytes per request (default 4096). */
    bytes?: number;
  }[];
  /** When it stops (simulated ms), or undefined: never. */
  stopAtMs?: number;
}

/** Per-host figures over a measured interval of a simulation. */
export interface SimulatedHostFigures {
  /** Its slot. */
  hostId: number;
  /** IOs per second over the interval. */
  iops: number;
  /** Mean raw latency of its IOs in the interval, ms. */
  latencyMs: number;
  /** Mean window over the interval's periods. */
  window: number;
}

/**
 * Runs hosts over one SimulatedDevice for `durationMs` of simulated time and returns their figures
 * over [measureFromMs, durationMs). `control` options are every controller's (statsFile shared).
 */
export function simulateCluster(options: {
  device?: SimulatedDeviceOptions;
  hosts: SimulatedHost[];
  control: Omit<StorageIoOptions, 'hostId'>;
  durationMs: number;
  measureFromMs: number;
  /** Called after every period of host 0 (simulated ms, the controllers). */
  onPeriod?: (timeMs: number, controllers: PardaController[]) => void;
}): SimulatedHostFigures[] {
  const device = new SimulatedDevice(options.device);
  const epoch = 1_700_000_000_000;
  const clock = { monotonicMs: () => device.nowNs / 1e6, wallMs: () => epoch + device.nowNs / 1e6 };
  const periodMs = options.control.periodMs ?? 250;
  const controllers = options.hosts.map((host) => PardaController.open({ ...options.control, hostId: host.hostId }, clock));
  const measured = options.hosts.map(() => ({ ios: 0, latencyNs: 0, windowSum: 0, periods: 0 }));
  const stopped = options.hosts.map(() => false);
  try {
    options.hosts.forEach((host, h) => {
      const controller = controllers[h]!;
      for (const vm of host.vms) {
        controller.addVm(vm.name, vm.shares);
        const bytes = vm.bytes ?? 4096;
        const loop = (): void => {
          if (stopped[h]) return;
          let issuedAt = 0;
          controller.submit(vm.name, bytes, () => {
            issuedAt = device.nowNs;
            device.issue(bytes, () => {
              const latency = device.nowNs - issuedAt;
              if (!stopped[h]) {
                controller.complete(vm.name, bytes, latency);
                if (device.nowNs / 1e6 >= options.measureFromMs) {
                  measured[h]!.ios++;
                  measured[h]!.latencyNs += latency;
                }
              }
              loop();
            });
          });
        };
        for (let i = 0; i < vm.depth; i++) loop();
      }
    });
    // Hosts tick at staggered phases, as separate processes would.
    const nextTick = options.hosts.map((_, h) => periodMs * (1 + h / options.hosts.length));
    for (;;) {
      const tickAt = Math.min(...nextTick.map((t, h) => (stopped[h] ? Infinity : t)));
      const until = Math.min(tickAt, options.durationMs);
      device.runUntil(until * 1e6);
      if (until >= options.durationMs) break;
      for (const [h, host] of options.hosts.entries()) {
        if (stopped[h] || nextTick[h]! > until) continue;
        if (host.stopAtMs !== undefined && until >= host.stopAtMs) {
          stopped[h] = true;
          controllers[h]!.close();
          continue;
        }
        controllers[h]!.tick();
        nextTick[h]! += periodMs;
        if (until >= options.measureFromMs) {
          measured[h]!.windowSum += controllers[h]!.currentWindow;
          measured[h]!.periods++;
        }
        if (h === 0) options.onPeriod?.(until, controllers);
      }
    }
  } finally {
    for (const controller of controllers) controller.close();
  }
  const seconds = (options.durationMs - options.measureFromMs) / 1000;
  return options.hosts.map((host, h) => ({
    hostId: host.hostId,
    iops: measured[h]!.ios / seconds,
    latencyMs: measured[h]!.ios === 0 ? 0 : measured[h]!.latencyNs / measured[h]!.ios / 1e6,
    window: measured[h]!.periods === 0 ? 0 : measured[h]!.windowSum / measured[h]!.periods,
  }));
}
