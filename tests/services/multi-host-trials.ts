/**
 * The trials the multi-host test and scripts/multi-host-cuts.ts run over real host processes
 * (tests/services/multi-host.ts): a migration cut by the fault proxy at a given byte, and a
 * replication whose primary host is killed with SIGKILL. Each trial checks its outcome and
 * throws on a violation (a VM running on both hosts or on neither, lost output, a state that is
 * not the one the guest had), so a test and a script share the checks.
 *
 * The oracle is determinism: the invariant guest (migration-harness.ts) reads no clock, so a run
 * of the same image in this process to the same instruction count has the same console output
 * and memory hash. A moved VM must match it at the count where it left (its console so far) and
 * where it was stopped on the other side.
 */
import { join } from 'node:path';
import { attachStandardDevices, CaptureSink } from '../../devices/index.ts';
import { restoreVmCheckpoint } from '../../services/checkpoint/index.ts';
import type { MigrationResult, MigrationsInfo, ReplicasInfo, ReplicationStatus, VmInfo } from '../../services/host/host.ts';
import { checkInvariant, hypervisor, invariantImage, machine, memoryHash } from './migration-harness.ts';
import type { Host, ProxyProcess } from './multi-host.ts';
import type { Direction } from './fault-proxy.ts';

const MIB = 1024 * 1024;

/** The guest every trial runs: QEMU's invariant guest. */
export interface TrialGuest {
  /** Its image file (invariantSource of `memoryMib` and `spin`). */
  image: string;
  memoryMib: number;
  spin: number;
}

/** The VM configuration of a trial's guest (no sampler: checkpoints restore with the standard devices). */
export function guestConfig(guest: TrialGuest): Record<string, unknown> {
  return { image: guest.image, memory_mib: guest.memoryMib, memory_policy: { active_sampling: null } };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function fail(message: string): never {
  throw new Error(message);
}

/** Polls `host`'s VM until `done` holds (or throws after `timeoutMs`). */
export async function waitVm(host: Host, name: string, what: string, done: (vm: VmInfo) => boolean, timeoutMs = 30_000): Promise<VmInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answer = await host.api<VmInfo>('GET', `/vms/${name}`);
    if (answer.status === 200 && done(answer.body)) return answer.body;
    if (Date.now() > deadline) fail(`${host.name}: timed out waiting for ${what} (VM ${name}: ${answer.status} ${JSON.stringify(answer.body).slice(0, 300)})`);
    await sleep(25);
  }
}

/** The guest's console on `host` (the host's log of it). */
export async function consoleOf(host: Host, name: string): Promise<string> {
  const answer = await host.api<{ data: string }>('GET', `/vms/${name}/console`);
  if (answer.status !== 200) fail(`${host.name}: no console for VM ${name} (${answer.status})`);
  return answer.body.data;
}

/**
 * The uninterrupted run: the guest run in this process to each of `counts` (ascending)
 * instructions; the console output at each, and the memory hash at the last.
 */
export function reference(guest: TrialGuest, counts: readonly number[]): { outputs: string[]; hash: string } {
  const hv = hypervisor((guest.memoryMib + 16) * MIB);
  try {
    const m = machine(hv, { name: 'reference', memoryBytes: guest.memoryMib * MIB }, invariantImage(guest.memoryMib * MIB, { spin: guest.spin }));
    const outputs: string[] = [];
    for (const count of counts) {
      const [result] = hv.run({ maxInstructions: count - m.vm.instructionsRetired }, [m.vm]);
      if (m.vm.instructionsRetired !== count) fail(`the reference run stopped at ${m.vm.instructionsRetired}, not ${count} (${result!.reason.kind})`);
      m.devices.console.flush();
      outputs.push(m.sink.text());
    }
    return { outputs, hash: memoryHash(m.vm) };
  } finally {
    hv.close();
  }
}

/** Pauses the VM on `host` and reads its state through a checkpoint: instructions, memory hash, QEMU's invariant. */
export async function inspect(host: Host, name: string, work: string): Promise<{ instructions: number; hash: string; invariantBad: number; edges: number }> {
  const vm = (await host.api<VmInfo>('GET', `/vms/${name}`)).body;
  if (vm.state === 'Running') {
    const paused = await host.api('PATCH', `/vms/${name}`, { state: 'Paused' });
    if (paused.status !== 200) fail(`${host.name}: cannot pause VM ${name}: ${paused.status} ${JSON.stringify(paused.body)}`);
  }
  const path = join(work, `${host.name}-${name}-${Date.now()}.bvc`);
  const saved = await host.api('PUT', `/vms/${name}/snapshot`, { path });
  if (saved.status !== 200) fail(`${host.name}: snapshot of VM ${name} failed: ${saved.status} ${JSON.stringify(saved.body)}`);
  const instructions = (await host.api<VmInfo>('GET', `/vms/${name}`)).body.instructions;
  const hv = hypervisor();
  try {
    const restored = restoreVmCheckpoint(hv, path, { mode: 'eager', attach: (v) => void attachStandardDevices(v, { output: new CaptureSink() }) });
    const invariant = checkInvariant(restored.vm);
    const result = { instructions: restored.vm.instructionsRetired, hash: memoryHash(restored.vm), invariantBad: invariant.bad, edges: invariant.edges };
    restored.close();
    if (result.instructions !== instructions) fail(`the checkpoint of ${name} has ${result.instructions} instructions, the host said ${instructions}`);
    return result;
  } finally {
    hv.close();
  }
}

/**
 * Checks a VM that left one host at `leftAt` instructions (its console there read last as
 * `sourceSeen`) and now runs on `host`: it is paused after printing a little more, and its state
 * and console must be exactly the uninterrupted run's: the reference output at `leftAt` followed
 * by its console here is the reference output where it stopped, and the memory hash matches.
 */
export async function checkCarriesOn(host: Host, name: string, guest: TrialGuest, leftAt: number, sourceSeen: string, work: string): Promise<{ instructions: number; console: string }> {
  const start = (await host.api<VmInfo>('GET', `/vms/${name}`)).body;
  if (start.state === 'Paused') {
    const resumed = await host.api('PATCH', `/vms/${name}`, { state: 'Resumed' });
    if (resumed.status !== 200) fail(`${host.name}: cannot resume VM ${name}: ${resumed.status} ${JSON.stringify(resumed.body)}`);
  }
  await waitVm(host, name, 'two more digits on the console', (vm) => vm.console_bytes >= start.console_bytes + 2, 60_000);
  const state = await inspect(host, name, work);
  const here = await consoleOf(host, name);
  const { outputs, hash } = reference(guest, [leftAt, state.instructions]);
  const [atLeft, atEnd] = outputs as [string, string];
  if (!atLeft.startsWith(sourceSeen)) fail(`the source showed ${JSON.stringify(sourceSeen.slice(-12))}, which the run to ${leftAt} instructions never printed (${JSON.stringify(atLeft.slice(-12))})`);
  if (atLeft + here !== atEnd) {
    fail(`console lost or repeated: the run to ${leftAt} printed …${JSON.stringify(atLeft.slice(-12))}, ${host.name} printed ${JSON.stringify(here.slice(0, 24))}…, the uninterrupted run to ${state.instructions} printed …${JSON.stringify(atEnd.slice(-24))}`);
  }
  if (state.hash !== hash) fail(`memory of ${name} on ${host.name} at ${state.instructions} instructions differs from the uninterrupted run's (${state.hash} vs ${hash})`);
  if (state.invariantBad !== 0) fail(`QEMU's invariant broken on ${host.name}: ${state.invariantBad} bad pages`);
  return { instructions: state.instructions, console: here };
}

/** Waits until `host` has no incoming migration still receiving (a failed one is cleaned up). */
async function settleIncoming(host: Host, timeoutMs = 30_000): Promise<MigrationsInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = (await host.api<MigrationsInfo>('GET', '/migrations')).body;
    if (!info.incoming.some((entry) => entry.state === 'receiving')) return info;
    if (Date.now() > deadline) fail(`${host.name}: an incoming migration is still receiving after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** How a cut migration ended. */
export type CutOutcome =
  /** The migration completed (the cut came after the end, or hit nothing that mattered). */
  | 'moved'
  /** It failed; the VM ran on at the source as if nothing happened. */
  | 'kept'
  /** Pre-copy cut inside the switch-over after the state left: the source kept it paused; the destination had it. */
  | 'moved-source-paused'
  /** Pre-copy cut inside the switch-over: the source kept it paused; the destination did not have it, so it was resumed at the source. */
  | 'resumed-at-source'
  /** Post-copy cut after the switch-over: the same migrate request resumed it over a new connection. */
  | 'postcopy-resumed';

/** One cut trial's result. */
export interface CutTrial {
  outcome: CutOutcome;
  /** Bytes the proxy forwarded each way before the cut (or in all). */
  up: number;
  down: number;
  /** The first failure's message, if any. */
  error: string | null;
}

/**
 * Creates VM `name` on `source`, lets it print, then migrates it through `proxy` (armed to cut
 * after `cutAfter` bytes going `direction`) to `destination`, and checks the outcome: the VM runs
 * on exactly one host, with its state and console exactly the uninterrupted run's where that can
 * be known (`check`: the full check; otherwise only "runs on, console consecutive"). The VM is
 * deleted afterwards.
 */
export async function cutTrial(
  rig: { source: Host; destination: Host; proxy: ProxyProcess; guest: TrialGuest; work: string },
  options: { name: string; mode: 'precopy' | 'postcopy'; cutAfter: number; direction?: Direction; check?: boolean },
): Promise<CutTrial> {
  const { source, destination, proxy, guest, work } = rig;
  const { name, mode } = options;
  const created = await source.api('PUT', `/vms/${name}`, guestConfig(guest));
  if (created.status !== 201) fail(`cannot create VM ${name}: ${created.status} ${JSON.stringify(created.body)}`);
  await waitVm(source, name, 'the guest to print', (vm) => vm.console_bytes >= 2);
  const seen = await consoleOf(source, name);
  const events = proxy.events.length;
  await proxy.arm({ direction: options.direction ?? 'up', cutAfter: options.cutAfter });
  const first = await source.api<MigrationResult & { fault_message?: string }>('PUT', `/vms/${name}/migrate`, { destination: proxy.address, mode });
  await settleIncoming(destination);
  const traffic = proxy.events.slice(events).filter((event) => event.event === 'cut' || event.event === 'closed')[0];
  const trial: CutTrial = { outcome: 'moved', up: traffic?.up ?? 0, down: traffic?.down ?? 0, error: first.status === 200 ? null : first.body.fault_message ?? JSON.stringify(first.body) };
  const at = async (host: Host): Promise<VmInfo | null> => {
    const answer = await host.api<VmInfo>('GET', `/vms/${name}`);
    return answer.status === 200 ? answer.body : null;
  };
  let leftAt: number | null = null;
  if (first.status === 200) {
    if (first.body.state !== 'completed') fail(`migrate answered 200 with state ${first.body.state}`);
    leftAt = first.body.instructions;
  } else if (first.status !== 502) {
    fail(`migrate answered ${first.status}: ${trial.error}`);
  }
  let onSource = await at(source);
  let onDestination = await at(destination);
  if (first.status === 502) {
    const message = trial.error!;
    // A cut in the handshake fails the connect itself ("migration of 'X' to ADDR: <why>", no
    // "failed"): the VM was never touched.
    if (/carries on here/.test(message) || /^migration of '[^']+' to \S+: /.test(message)) {
      trial.outcome = 'kept';
      if (onSource?.state !== 'Running') fail(`pre-switch-over failure, but the source's VM is ${onSource?.state ?? 'gone'}: ${message}`);
      if (onDestination !== null) fail(`pre-switch-over failure, but the destination has the VM too (${onDestination.state}): ${message}`);
    } else if (/migrate it again to resume/.test(message)) {
      if (mode !== 'postcopy') fail(`a pre-copy failure asks for a post-copy resumption: ${message}`);
      if (onSource?.state !== 'Paused') fail(`post-copy failed after the switch-over but the source's VM is ${onSource?.state ?? 'gone'}`);
      if (onDestination === null) fail(`post-copy failed after the switch-over and the destination has no VM: lost? ${message}`);
      const resumeAtSource = await source.api('PATCH', `/vms/${name}`, { state: 'Resumed' });
      if (resumeAtSource.status !== 409) fail(`the source let the half of a post-copy run again (${resumeAtSource.status})`);
      let again = first;
      for (let attempt = 0; attempt < 3 && again.status !== 200; attempt++) {
        again = await source.api<MigrationResult & { fault_message?: string }>('PUT', `/vms/${name}/migrate`, { destination: proxy.address, mode });
      }
      if (again.status !== 200) fail(`the post-copy did not resume over a new connection: ${again.body.fault_message ?? again.status}`);
      leftAt = again.body.instructions;
      trial.outcome = 'postcopy-resumed';
    } else if (/stays paused here/.test(message)) {
      if (mode !== 'precopy') fail(`a post-copy failure left the source paused without a resumption: ${message}`);
      if (onSource?.state !== 'Paused') fail(`failure after the state was sent, but the source's VM is ${onSource?.state ?? 'gone'}`);
      if (onDestination !== null) {
        // The destination has it (the DONE was what got lost): the operator deletes the source's paused copy.
        trial.outcome = 'moved-source-paused';
        const deleted = await source.api('DELETE', `/vms/${name}`);
        if (deleted.status !== 204) fail(`cannot delete the source's paused copy: ${deleted.status}`);
      } else {
        trial.outcome = 'resumed-at-source';
        const resumed = await source.api('PATCH', `/vms/${name}`, { state: 'Resumed' });
        if (resumed.status !== 200) fail(`cannot resume the source's paused VM: ${resumed.status} ${JSON.stringify(resumed.body)}`);
      }
    } else {
      fail(`a failure that says nothing of where the VM is: ${message}`);
    }
    onSource = await at(source);
    onDestination = await at(destination);
  }
  // Exactly one copy, and it runs (a post-copy destination may be paused at a missing page only while pages are missing).
  const holders = [onSource, onDestination].filter((vm) => vm !== null);
  if (holders.length !== 1) fail(`after the trial the VM is on ${holders.length} hosts (source ${onSource?.state ?? '-'}, destination ${onDestination?.state ?? '-'}); outcome ${trial.outcome}`);
  const survivor = onSource !== null ? source : destination;
  if (holders[0]!.state !== 'Running') fail(`the surviving VM is ${holders[0]!.state} on ${survivor.name}`);
  if (survivor === destination && leftAt !== null && options.check !== false) {
    await checkCarriesOn(destination, name, guest, leftAt, seen, work);
  } else {
    const before = holders[0]!.console_bytes;
    await waitVm(survivor, name, 'the guest to carry on', (vm) => vm.console_bytes >= before + 2, 60_000);
    const text = await consoleOf(survivor, name);
    const digits = survivor === source ? text.slice(1) : text;
    for (let i = 1; i < digits.length; i++) {
      if (Number(digits[i]) !== (Number(digits[i - 1]) + 1) % 10) fail(`console broken on ${survivor.name}: ${JSON.stringify(text.slice(0, 40))}`);
    }
  }
  const deleted = await survivor.api('DELETE', `/vms/${name}`);
  if (deleted.status !== 204) fail(`cannot delete VM ${name} on ${survivor.name}: ${deleted.status}`);
  return trial;
}

/** One kill trial's result. */
export interface KillTrial {
  /** The epoch the backup activated; null when none had committed (activation refused). */
  epoch: number | null;
  /** Its instruction count. */
  instructions: number | null;
  /** Console bytes the primary had released when it was killed. */
  shown: number;
}

/**
 * Replicates VM `name` from `primary` to `backup` (`interval_ms`, output commit on), kills the
 * primary host process with SIGKILL `killAfterMs` after replication started, then activates the
 * replica paused: its instruction count is the last committed epoch's, its memory the
 * uninterrupted run's at that count (hash), everything the primary's console had released is in
 * that run's output up to the epoch (output commit), and, resumed, its console carries on exactly.
 * The activated VM is deleted afterwards. The primary must be a process of its own (it dies).
 */
export async function killTrial(
  rig: { primary: Host; backup: Host; backupAddress: string; guest: TrialGuest; work: string },
  options: { name: string; killAfterMs: number; intervalMs?: number; afterEpoch0?: boolean },
): Promise<KillTrial> {
  const { primary, backup, backupAddress, guest, work } = rig;
  const { name } = options;
  const created = await primary.api('PUT', `/vms/${name}`, guestConfig(guest));
  if (created.status !== 201) fail(`cannot create VM ${name}: ${created.status} ${JSON.stringify(created.body)}`);
  await waitVm(primary, name, 'the guest to print', (vm) => vm.console_bytes >= 1);
  // Shown before the replication: output commit holds back only what comes after.
  const before = await consoleOf(primary, name);
  // Not awaited: the kill may land before epoch 0 is committed.
  const started = primary.api<ReplicationStatus>('PUT', `/vms/${name}/replicate`, { destination: backupAddress, interval_ms: options.intervalMs ?? 25, output_commit: true }).catch(() => null);
  // `afterEpoch0`: the delay counts from the answer (epoch 0 committed), not from the request.
  if (options.afterEpoch0 === true) {
    const answer = await started;
    if (answer?.status !== 200) fail(`replication did not start: ${answer?.status} ${JSON.stringify(answer?.body)}`);
  }
  await sleep(options.killAfterMs);
  // What the primary has let out (output commit: only output of epochs the backup committed).
  const shown = await consoleOf(primary, name).catch(() => '');
  primary.child.child.kill('SIGKILL');
  await primary.child.ended;
  await started;
  let replicas: ReplicasInfo = { listening: null, replicas: [] };
  const deadline = Date.now() + 30_000;
  for (;;) {
    replicas = (await backup.api<ReplicasInfo>('GET', '/replicas')).body;
    const replica = replicas.replicas.find((r) => r.name === name);
    // No replica at all: the kill came before the stream named its VM.
    if (replica?.state === 'disconnected' || (replica === undefined && Date.now() > deadline - 25_000)) break;
    if (Date.now() > deadline) fail(`the backup's replica of ${name} is still ${replica?.state}`);
    await sleep(25);
  }
  const replica = replicas.replicas.find((r) => r.name === name);
  const activated = await backup.api<VmInfo>('POST', `/replicas/${name}/activate`, { paused: true });
  if (replica === undefined || replica.committed_epoch === null) {
    if (activated.status !== (replica === undefined ? 404 : 409)) fail(`activation without a complete epoch answered ${activated.status}`);
    // One more digit may have been printed between reading `before` and the request's arrival (a pass takes ~100 ms).
    if (shown.length > before.length + 1) fail(`the primary released ${JSON.stringify(shown)} (${JSON.stringify(before)} before the replication) though no epoch was committed`);
    return { epoch: null, instructions: null, shown: shown.length };
  }
  if (activated.status !== 200) fail(`activation failed: ${activated.status} ${JSON.stringify(activated.body)}`);
  const vm = activated.body;
  if (vm.state !== 'Paused') fail(`activated with paused: true, the VM is ${vm.state}`);
  if (vm.origin.kind !== 'replica' || vm.origin.epoch !== replica.committed_epoch) fail(`the activated VM's origin is ${JSON.stringify(vm.origin)}, the replica's epoch ${replica.committed_epoch}`);
  if (vm.instructions !== replica.committed_instructions) fail(`activated at ${vm.instructions} instructions, the epoch had ${replica.committed_instructions}`);
  const state = await inspect(backup, name, work);
  const { outputs, hash } = reference(guest, [vm.instructions]);
  if (state.hash !== hash) fail(`the activated memory differs from the uninterrupted run's at ${vm.instructions} instructions (epoch ${replica.committed_epoch})`);
  if (!outputs[0]!.startsWith(shown)) fail(`output commit broken: the primary showed ${JSON.stringify(shown.slice(-16))} (${shown.length} bytes), the epoch holds ${JSON.stringify(outputs[0]!.slice(-16))} (${outputs[0]!.length} bytes)`);
  await checkCarriesOn(backup, name, guest, vm.instructions, shown, work);
  const deleted = await backup.api('DELETE', `/vms/${name}`);
  if (deleted.status !== 204) fail(`cannot delete VM ${name} on the backup: ${deleted.status}`);
  return { epoch: replica.committed_epoch, instructions: vm.instructions, shown: shown.length };
}
