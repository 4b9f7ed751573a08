/**
 * The worker side of a worker group (worker-group.ts): pins its thread, attaches to the host
 * pool, runs a Host over it with the group's VMs, and answers the main host's calls.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { attachToPool } from '../../kernel/index.ts';
import { setThreadAffinity, threadAffinity, threadId } from '../../native/index.ts';
import { Host, HostError } from './host.ts';
import type { VmSpec } from './config.ts';
import { GROUP_METHODS, type GroupRequest, type GroupWorkerData, type GroupWorkerMessage } from './worker-group.ts';
import type { BusLinkMessage } from '../bus/index.ts';
import { RemoteIoGate } from '../storage/index.ts';

const port = parentPort!;
const data = workerData as GroupWorkerData;

function post(message: GroupWorkerMessage): void {
  port.postMessage(message);
}

/** An error as the main host reports it: a HostError's status, else 500 (or 400 for a BvError the caller caused). */
function statusOf(error: unknown): number {
  if (error instanceof HostError) return error.status;
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === 'number' ? status : 500;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A VM spec as this thread's Host takes it: its group is this thread. */
function inThisThread(spec: VmSpec): VmSpec {
  const { group: _group, ...rest } = spec;
  return rest;
}

async function main(): Promise<void> {
  let host: Host;
  try {
    if (data.cpus !== null) setThreadAffinity(data.cpus);
    const hv = attachToPool(data.pool);
    host = new Host(hv, data.settings, {
      log: (line) => post({ kind: 'log', line: `[${data.name}] ${line}` }),
      migration: data.migration,
      yieldEveryMs: data.yieldEveryMs,
      // The giving half of a cross-thread reallocation: its frames go to the main host, which relays them.
      reallocationFrames: (id, handles, given) => post({ kind: 'reallocation-frames', id, handles, given }),
    });
    try {
      if (data.reclaim !== null) host.enableReclaim(data.reclaim);
      // storage_io: the VMs' asynchronous disks start requests against the host's credits.
      if (data.storageIo === true) host.enableRemoteIo(new RemoteIoGate((events) => post({ kind: 'io', events })));
      // Channels before VMs: a VM a channel names gets its channel device at boot.
      for (const { config, remote } of data.channels ?? []) {
        const link = remote === null ? undefined : { role: remote.role, link: { post: (message: BusLinkMessage) => post({ kind: 'bus', to: remote.thread, message }) } };
        host.bus.addChannel(link === undefined ? config : { ...config, remote: link });
      }
      for (const spec of data.vms) await host.createVm(inThisThread(spec));
    } catch (error) {
      await host.close();
      hv.close();
      throw error;
    }
  } catch (error) {
    post({ kind: 'failed', status: statusOf(error), message: `worker group '${data.name}': ${messageOf(error)}` });
    port.close();
    return;
  }
  const methods = new Set<string>(GROUP_METHODS);
  port.on('message', (request: GroupRequest) => {
    void (async () => {
      try {
        if (request.kind === 'bus') {
          host.bus.receive(request.message);
          return;
        }
        if (request.kind === 'io') {
          host.remoteIoGrants(request.grants);
          return;
        }
        if (request.kind === 'affinity') {
          setThreadAffinity(request.cpus);
          post({ kind: 'result', id: request.id, value: threadAffinity() });
        } else if (request.kind === 'close') {
          await host.close();
          host.hv.close();
          post({ kind: 'result', id: request.id, value: null });
          port.close();
        } else {
          if (!methods.has(request.method)) throw new HostError(400, `worker groups do not answer ${request.method}`);
          const method = (host as unknown as Record<string, (...args: unknown[]) => unknown>)[request.method]!;
          const args = request.method === 'createVm' ? [inThisThread(request.args[0] as VmSpec)] : request.args;
          const value = await method.apply(host, args);
          post({ kind: 'result', id: request.id, value: value ?? null });
        }
      } catch (error) {
        post({ kind: 'error', id: request.id, status: statusOf(error), message: messageOf(error) });
      }
    })();
  });
  post({ kind: 'ready', threadId: threadId(), affinity: threadAffinity() });
}

void main();
