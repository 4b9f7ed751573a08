/**
 * Worker groups (issue 16): a host's VMs placed in `worker_threads`, one Host per worker over the
 * one host pool. The main thread's Host keeps the control API and forwards every call about a VM
 * in a group to that group's worker (a message round trip); the worker runs its VMs with its own
 * deterministic round-robin scheduler, pinned to its CPUs. Frames, reference counts and page
 * sharing are common to every thread (kernel/memory/frame-pool.ts); what is not yet shared across
 * threads is listed in docs/workers.md.
 *
 * This file is the main thread's side; group-worker.ts is the worker's.
 */
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';
import type { FrameHandle, SharedPoolHandle } from '../../kernel/index.ts';
import type { ReclaimSpec, VmSpec } from './config.ts';
import type { BusChannelConfig, BusLinkMessage } from '../bus/index.ts';
import type { RemoteIoEvent, RemoteIoGrant } from '../storage/index.ts';
import { HostError, type Host, type HostMigrationSettings, type HostSettings, type HostStatusCode } from './host.ts';

/**
 * The Host methods a worker group answers for its VMs (and for itself: list, info, hostStats,
 * createVm, names). Everything else about a VM in a group is refused with 409 by the main host.
 */
export const GROUP_METHODS = [
  'vmInfo', 'list', 'names', 'info', 'hostStats', 'vmStats', 'createVm', 'deleteVm', 'pause', 'resume', 'whenStopped',
  'readConsole', 'sendInput', 'snapshot', 'fork', 'balloon', 'setBalloon', 'balloonStatistics', 'memoryPolicy', 'setTier',
  'setMemoryPolicy', 'activeMemory', 'missRateCurve', 'sizeFromMrc', 'memoryErrors', 'injectMemoryErrors',
  'migrate', 'vmMigration', 'migrations', 'replicate', 'stopReplication', 'vmReplication', 'reallocate',
  'startReallocationDonor', 'startReallocationReceiver', 'acceptReallocationFrames', 'reallocationHalf', 'cancelReallocationHalf',
  'sharingOffers', 'lendPage', 'adoptPage', 'restore', 'channelInfo',
] as const;

/** A method of GROUP_METHODS. */
export type GroupMethod = (typeof GROUP_METHODS)[number];

/** Host's methods as a caller in another thread sees them: the same arguments, answers as promises. */
export type GroupCalls = {
  [K in GroupMethod]: (...args: Parameters<Host[K]>) => Promise<Awaited<ReturnType<Host[K]>>>;
};

/** What a worker is started with (its workerData). */
export interface GroupWorkerData {
  /** The group's name. */
  name: string;
  /** Host CPUs to pin the worker's thread to, or null to leave its affinity alone. */
  cpus: number[] | null;
  /** The host pool (Hypervisor.sharePool). */
  pool: SharedPoolHandle;
  /** The group's scheduler settings (the host's). */
  settings: HostSettings;
  /** How the group's VMs talk to other hosts (the host's). */
  migration: HostMigrationSettings;
  /** The VMs to boot, in order. */
  vms: VmSpec[];
  /** The host's HostOptions.yieldEveryMs: the group's scheduler yields to its event loop as often. */
  yieldEveryMs: number;
  /** The host's memory scheduler settings: the group runs one over its own VMs; null: none. */
  reclaim: ReclaimSpec | null;
  /** Partition-bus channels with an end in this group (docs/bus.md "Across threads"). */
  channels: GroupChannel[];
  /** The host's storage_io gates the group's asynchronous disks through credits (services/storage/remote-gate.ts). */
  storageIo?: boolean;
}

/** A channel as a worker group's bus holds it: the config, and where its other end lives when not in this group. */
export interface GroupChannel {
  /** The channel (without a link: the worker makes one). */
  config: Omit<BusChannelConfig, 'remote'>;
  /** The end in another thread: its role and that thread (a group's name, or null for the host's own thread); null when both ends are in this group. */
  remote: { role: 'client' | 'server'; thread: string | null } | null;
}

/** Messages from a worker. */
export type GroupWorkerMessage =
  | { kind: 'ready'; threadId: number; affinity: number[] }
  | { kind: 'failed'; status: number; message: string }
  | { kind: 'result'; id: number; value: unknown }
  | { kind: 'error'; id: number; status: number; message: string }
  | { kind: 'log'; line: string }
  | { kind: 'reallocation-frames'; id: number; handles: FrameHandle[]; given: number }
  | { kind: 'bus'; to: string | null; message: BusLinkMessage }
  | { kind: 'io'; events: RemoteIoEvent[] };

/** Messages to a worker. */
export type GroupRequest =
  | { kind: 'call'; id: number; method: GroupMethod; args: unknown[] }
  | { kind: 'affinity'; id: number; cpus: number[] }
  | { kind: 'close'; id: number }
  | { kind: 'bus'; id: number; message: BusLinkMessage }
  | { kind: 'io'; id: number; grants: RemoteIoGrant[] };

/** A worker group as GET /host and GET /groups describe it. */
export interface WorkerGroupInfo {
  /** The group's name (worker_groups[].name). */
  name: string;
  /** The CPUs its thread is allowed on (read back from the kernel), or the whole process's when not pinned. */
  cpus: number[];
  /** Whether the configuration pinned it (cpus given). */
  pinned: boolean;
  /** The worker thread's kernel thread id (its /proc/self/task/<tid> entry). */
  thread_id: number;
  /** CPU time the worker's thread has used, in ms (utime + stime of its /proc task). */
  cpu_ms: number;
  /** The VMs placed in it. */
  vms: string[];
  /** `running`, or `failed` when the worker thread died (its VMs are lost; `error` says why). */
  state: 'running' | 'failed';
  /** Why the worker failed, when it did. */
  error?: string;
}

/** Jiffies per second of /proc's stat fields (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** CPU time of one thread of this process, in ms, from /proc; null when it cannot be read. */
export function threadCpuMs(threadId: number): number | null {
  try {
    const stat = readFileSync(`/proc/self/task/${threadId}/stat`, 'latin1');
    // Fields after the command (which may hold spaces) start past its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / USER_HZ;
  } catch {
    return null;
  }
}

/** The file URL of tsx's ES-module API (its package exports name it; require() would find the CommonJS one). */
function tsxEsmApi(): string {
  const packageJson = createRequire(import.meta.url).resolve('tsx/package.json');
  const exports = (JSON.parse(readFileSync(packageJson, 'utf8')) as { exports: Record<string, { import: { default: string } }> }).exports;
  return pathToFileURL(join(dirname(packageJson), exports['./esm/api']!.import.default)).href;
}

/**
 * Starts a worker on an ES module. A `.ts` module (running from the sources rather than the built
 * package) needs tsx's loader in the worker, which a worker does not inherit (not from `tsx`'s
 * command line, not from vitest): a small bootstrap registers it before importing the module.
 */
export function startModuleWorker(url: URL, options: WorkerOptions = {}): Worker {
  if (!url.pathname.endsWith('.ts')) return new Worker(url, options);
  const api = tsxEsmApi();
  const bootstrap = `import(${JSON.stringify(api)}).then(({ register }) => { register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(bootstrap, { ...options, eval: true });
}

/** A group of VMs running in one worker thread. Create one with WorkerGroup.start. */
export class WorkerGroup {
  /** Calls into the worker's Host, one per GROUP_METHODS entry. */
  readonly calls: GroupCalls;
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  #exited: Error | null = null;
  #affinity: number[];
  /** VM names in this group, kept by the main host. */
  readonly vmNames = new Set<string>();
  /** Receives the frames the group's half of a cross-thread reallocation gives (set by the host). */
  onReallocationFrames: ((id: number, handles: FrameHandle[], given: number) => void) | null = null;
  /** Routes the group's bus messages to the thread holding the other end of a channel (set by the host). */
  onBus: ((to: string | null, message: BusLinkMessage) => void) | null = null;
  /** Takes the group's storage_io reports (set by start). */
  private onIo: ((events: RemoteIoEvent[]) => void) | null = null;
  /** Called once when the worker thread dies (set by the host: its VMs' IO credits are void). */
  onFailure: ((error: Error) => void) | null = null;

  private constructor(
    /** The group's name. */
    readonly name: string,
    private readonly worker: Worker,
    /** The worker thread's kernel thread id. */
    readonly threadId: number,
    affinity: number[],
    /** Whether the configuration pinned it. */
    readonly pinned: boolean,
  ) {
    this.#affinity = affinity;
    const calls: Partial<Record<GroupMethod, (...args: unknown[]) => Promise<unknown>>> = {};
    for (const method of GROUP_METHODS) calls[method] = (...args: unknown[]) => this.request({ kind: 'call', id: 0, method, args });
    this.calls = calls as GroupCalls;
    worker.on('message', (message: GroupWorkerMessage) => this.answer(message));
    worker.on('error', (error) => this.fail(new HostError(500, `worker group '${name}' failed: ${error.message}`)));
    worker.on('exit', (code) => this.fail(new HostError(500, `worker group '${name}' exited (code ${code})`)));
  }

  /**
   * Starts a worker, pins it, attaches it to the pool and boots its VMs; resolves when they all
   * run, or rejects with the worker's error (a bad image, CPUs the host does not have, …).
   */
  static start(
    data: GroupWorkerData,
    log: (line: string) => void,
    onBus?: (to: string | null, message: BusLinkMessage) => void,
    onIo?: (events: RemoteIoEvent[], grant: (grants: RemoteIoGrant[]) => void) => void,
  ): Promise<WorkerGroup> {
    const entry = new URL(import.meta.url.endsWith('.ts') ? './group-worker.ts' : './group-worker.js', import.meta.url);
    const worker = startModuleWorker(entry, { workerData: data });
    // storage_io: the group's reports go to the host's controller, its credits back to the worker.
    const io = onIo === undefined ? null : (events: RemoteIoEvent[]) => onIo(events, (grants) => worker.postMessage({ kind: 'io', id: 0, grants } satisfies GroupRequest));
    return new Promise((resolve, reject) => {
      const early = (message: GroupWorkerMessage): void => {
        if (message.kind === 'log') {
          log(message.line);
          return;
        }
        // Its VMs may already talk over the bus while the others boot.
        if (message.kind === 'bus') {
          onBus?.(message.to, message.message);
          return;
        }
        if (message.kind === 'io') {
          io?.(message.events);
          return;
        }
        worker.off('message', early);
        worker.off('error', failed);
        worker.off('exit', exited);
        if (message.kind === 'ready') {
          const group = new WorkerGroup(data.name, worker, message.threadId, message.affinity, data.cpus !== null);
          group.onBus = onBus ?? null;
          group.onIo = io;
          worker.on('message', (m: GroupWorkerMessage) => {
            if (m.kind === 'log') log(m.line);
          });
          for (const vm of data.vms) group.vmNames.add(vm.name);
          resolve(group);
        } else {
          void worker.terminate();
          reject(new HostError(message.kind === 'failed' ? (message.status as HostStatusCode) : 500, message.kind === 'failed' ? message.message : `worker group '${data.name}' did not start`));
        }
      };
      const failed = (error: Error): void => reject(new HostError(500, `worker group '${data.name}' could not start: ${error.message}`));
      const exited = (code: number): void => reject(new HostError(500, `worker group '${data.name}' exited while starting (code ${code})`));
      worker.on('message', early);
      worker.once('error', failed);
      worker.once('exit', exited);
    });
  }

  /** The CPUs the worker's thread may run on (as last set and read back). */
  get affinity(): number[] {
    return [...this.#affinity];
  }

  /** Moves the worker's thread to other CPUs (sched_setaffinity in the worker); resolves with what the kernel reports back. */
  async setAffinity(cpus: number[]): Promise<number[]> {
    this.#affinity = (await this.request({ kind: 'affinity', id: 0, cpus })) as number[];
    return this.affinity;
  }

  /** Delivers a bus message to the group's bus (in order with the others). */
  postBus(message: BusLinkMessage): void {
    if (this.#exited === null) this.worker.postMessage({ kind: 'bus', id: 0, message } satisfies GroupRequest);
  }

  /** The error the worker thread died with, or null while it runs. */
  get failure(): Error | null {
    return this.#exited;
  }

  /** GET /host's description of the group. */
  info(): WorkerGroupInfo {
    const failure = this.#exited;
    return {
      name: this.name, cpus: this.affinity, pinned: this.pinned, thread_id: this.threadId, cpu_ms: failure === null ? threadCpuMs(this.threadId) ?? 0 : 0, vms: [...this.vmNames],
      state: failure === null ? 'running' : 'failed', ...(failure === null ? {} : { error: failure.message }),
    };
  }

  /** Closes the worker's Host (its VMs are freed, their frames return to the pool) and ends the thread. */
  async close(): Promise<void> {
    if (this.#exited !== null) return;
    try {
      await this.request({ kind: 'close', id: 0 });
    } catch {
      // It failed or exited meanwhile: terminate below either way.
    }
    await this.worker.terminate();
  }

  private request(message: GroupRequest): Promise<unknown> {
    if (this.#exited !== null) return Promise.reject(this.#exited);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id });
    });
  }

  private answer(message: GroupWorkerMessage): void {
    if (message.kind === 'reallocation-frames') {
      this.onReallocationFrames?.(message.id, message.handles, message.given);
      return;
    }
    if (message.kind === 'bus') {
      this.onBus?.(message.to, message.message);
      return;
    }
    if (message.kind === 'io') {
      this.onIo?.(message.events);
      return;
    }
    if (message.kind !== 'result' && message.kind !== 'error') return;
    const pending = this.#pending.get(message.id);
    if (pending === undefined) return;
    this.#pending.delete(message.id);
    if (message.kind === 'result') pending.resolve(message.value);
    else pending.reject(new HostError(message.status as HostStatusCode, message.message));
  }

  private fail(error: Error): void {
    if (this.#exited === null) {
      this.#exited = error;
      this.onFailure?.(error);
    }
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
  }
}
