/**
 * Crash-consistency trials of asynchronous log replication (T-16, docs/pmem.md "Log
 * replication"), shared by tests/services/log-replication.test.ts (a sample) and
 * scripts/log-replication-trials.ts (hundreds).
 *
 * A trial: pmkv on a primary host performs numbered puts (`put k{i mod 8} v{i}`) into a fresh
 * persistent-memory file whose log the host replicates to a destination host; the primary is
 * stopped at a random point — a power-loss notice with a random battery budget (0 included) in
 * an in-process host, or kill -9 / SIGTERM-with-battery of a real tools/host process — and the
 * destination's rebuilt file is checked: its log is exactly the first k operations, in order,
 * nothing torn after them; k covers every record the destination had acknowledged, and, when the
 * failure flush reported success, every put the guest had acknowledged.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { readPmkvLog } from '../../services/ha/log-replication.ts';
import type { LogReplicasInfo, LogReplicationStatus } from '../../services/ha/log-replication.ts';
import { parseHostConfig } from '../../services/host/config.ts';
import { Host, type PowerLossReport } from '../../services/host/host.ts';
import { createNetwork, startHost } from './multi-host.ts';

export const KERNEL = join(import.meta.dirname, '..', '..', 'examples', 'nanokernel', 'kernel.s');
/** The pmem size of a trial: 64 KiB (a 45 KiB log, room for about 1 600 of these records). */
export const PMEM_KIB = 64;

/**
 * The primary's scheduling: the tailer (like every host service) runs between the scheduler's
 * turns, and a turn of the default 200 000 instructions holds ~30 puts when each put's two
 * msyncs go to a disk; short turns let the stops land between any two puts.
 */
export const PRIMARY_SCHEDULING = { slice_instructions: 10_000, quantum: 10_000 } as const;

/** The boot arguments of `count` numbered puts. */
export function putArgs(count: number): string {
  const words = ['pmkv'];
  for (let i = 1; i <= count; i++) words.push('put', `k${i % 8}`, `v${i}`);
  return words.join(' ');
}

/** The highest sequence number the guest acknowledged ("pmkv: put K = V (seq N)") in a console text. */
export function guestAcked(console: string): number {
  let highest = 0;
  for (const match of console.matchAll(/pmkv: put (\S+) = (\S+) \(seq (\d+)\)/g)) {
    const seq = Number(match[3]);
    expect(match[1]).toBe(`k${seq % 8}`);
    expect(match[2]).toBe(`v${seq}`);
    highest = Math.max(highest, seq);
  }
  return highest;
}

/**
 * What a file holds: checked to be exactly operations 1..k; for a destination's file (`replica`)
 * also nothing torn after them (the primary's own file may end in a record the guest was writing
 * when it was stopped, which pmkv drops). Returns k.
 */
export function checkReplica(path: string, replica = true): number {
  const records = readPmkvLog(path);
  records.forEach((record, index) => {
    expect(record.seq).toBe(index + 1); // no gap, no reordering
    expect(record.key).toBe(`k${record.seq % 8}`);
    expect(record.value).toBe(`v${record.seq}`);
  });
  // After the last good record: the end mark (a zero word), never a torn entry the destination wrote.
  const file = readFileSync(path);
  const logOffset = file.readUInt32LE(16);
  let end = logOffset;
  for (const record of records) end += (20 + record.key.length + record.value.length + 3) & ~3;
  if (replica && end + 4 <= file.length) expect(file.readUInt32LE(end), `${path}: the word after record ${records.length}`).toBe(0);
  return records.length;
}

/** An in-process destination host receiving logs into `dir`. */
export async function startDestination(dir: string): Promise<Host> {
  return Host.start(parseHostConfig({ migration: { insecure: true, name: 'destination' }, log_replicas: { listen: '127.0.0.1:0', dir } }));
}

/** Waits until the destination holds no live stream of `name` (the primary is gone) and returns its replica. */
export async function settled(destination: Host, name: string, timeoutMs = 30_000): Promise<LogReplicasInfo['replicas'][number] | null> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const replica = destination.logReplicas().replicas.find((r) => r.name === name) ?? null;
    if (replica === null || !replica.connected) return replica;
    if (Date.now() > until) throw new Error(`the destination still streams '${name}' after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** One trial's outcome. */
export interface TrialResult {
  mode: 'power-loss' | 'kill' | 'sigterm';
  /** Puts the guest acknowledged before the stop. */
  guestAcked: number;
  /** Records the destination had acknowledged (as the source last knew). */
  destinationAcked: number;
  /** Records in the destination's file. */
  recovered: number;
  /** The failure flush reported every record acknowledged. */
  flushComplete: boolean | null;
  /** Battery budget, ms (power-loss, sigterm). */
  batteryMs: number | null;
  /** The flush's own time, ms. */
  flushMs: number | null;
}

/** A pseudo-random generator (xorshift32) so a seed replays a run. */
export function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

/**
 * A power-loss trial in-process: the primary puts `puts` records, receives a power-loss notice
 * once the guest acknowledged put `stopAtPut`, else after `stopAfterMs` (negative: once the guest has finished) with `batteryMs`, and is closed (its power ran out); the destination's file
 * is then checked.
 */
export async function powerLossTrial(destination: Host, dir: string, name: string, options: { puts: number; stopAfterMs: number; stopAtPut?: number; batteryMs: number; intervalMs: number }): Promise<TrialResult> {
  const address = destination.logReplicas().listening;
  const primary = await Host.start(parseHostConfig({
    ...PRIMARY_SCHEDULING,
    migration: { insecure: true, name: 'primary' },
    vms: [{ name, image: KERNEL, memory_mib: 16, boot_args: putArgs(options.puts), pmem: { path: join(dir, `${name}.primary.pmem`), size_kib: PMEM_KIB, create: true }, log_replication: { destinations: [address], interval_ms: options.intervalMs } }],
  }));
  let report: PowerLossReport;
  let acked: number;
  let status: LogReplicationStatus;
  try {
    if (options.stopAtPut !== undefined) {
      // As soon as the host sees the guest's acknowledgement of that put (between two turns).
      const stopped = primary.whenStopped(name).then(() => true);
      let done = false;
      void stopped.then(() => (done = true));
      while (!done && guestAcked(primary.readConsole(name, 0, 1 << 20).data) < options.stopAtPut) await new Promise((resolve) => setImmediate(resolve));
    } else if (options.stopAfterMs < 0) await primary.whenStopped(name);
    else await new Promise((resolve) => setTimeout(resolve, options.stopAfterMs));
    report = await primary.powerLoss(options.batteryMs, 'trial');
    acked = guestAcked(primary.readConsole(name, 0, 1 << 20).data);
    status = primary.logReplication(name);
  } finally {
    await primary.close(); // the battery ran out
  }
  const result = report.hooks.find((hook) => hook.name === 'log-replication')!;
  const flush = result.ok ? (result.result as { complete: boolean; tail_seq: number; ms: number }[])[0]! : null;
  const replica = await settled(destination, name);
  const recovered = replica === null ? 0 : checkReplica(replica.path);
  const destinationAcked = status.destinations[0]!.acked_seq;
  // Everything the destination acknowledged is there; nothing beyond what the primary's log had.
  expect(recovered).toBeGreaterThanOrEqual(destinationAcked);
  expect(recovered).toBeLessThanOrEqual(checkReplica(join(dir, `${name}.primary.pmem`), false));
  // The primary's own file has every put the guest acknowledged (its local commit point).
  expect(checkReplica(join(dir, `${name}.primary.pmem`), false)).toBeGreaterThanOrEqual(acked);
  // A flush that succeeded promises every acknowledged put at the destination.
  if (flush?.complete === true) expect(recovered).toBeGreaterThanOrEqual(acked);
  return { mode: 'power-loss', guestAcked: acked, destinationAcked, recovered, flushComplete: flush?.complete ?? false, batteryMs: options.batteryMs, flushMs: flush?.ms ?? null };
}

/**
 * A trial with a real tools/host process as the primary: after `stopAfterMs` it gets SIGKILL
 * (mode kill: no flush at all) or SIGTERM with a battery budget in its configuration (mode
 * sigterm: the failure flush). The guest's acknowledgements and the destination's last ack are
 * read from the host's API just before the signal.
 */
export async function processTrial(destination: Host, dir: string, name: string, options: { mode: 'kill' | 'sigterm'; puts: number; stopAfterMs: number; batteryMs: number; intervalMs: number }): Promise<TrialResult> {
  const address = destination.logReplicas().listening;
  const network = createNetwork({ loopback: true });
  const primaryFile = join(dir, `${name}.primary.pmem`);
  const host = await startHost(network, 'a', `${name}-primary`, {
    ...PRIMARY_SCHEDULING,
    migration: { insecure: true, name: 'primary' },
    battery_ms: options.batteryMs,
    vms: [{ name, image: KERNEL, memory_mib: 16, boot_args: putArgs(options.puts), pmem: { path: primaryFile, size_kib: PMEM_KIB, create: true }, log_replication: { destinations: [address], interval_ms: options.intervalMs } }],
  }, dir);
  let acked = 0;
  let destinationAcked = 0;
  try {
    await new Promise((resolve) => setTimeout(resolve, options.stopAfterMs));
    const status = await host.api<LogReplicationStatus>('GET', `/vms/${name}/log-replication`);
    destinationAcked = status.body.destinations[0]!.acked_seq;
    if (options.mode === 'sigterm') await host.api('PATCH', `/vms/${name}`, { state: 'Paused' }).catch(() => undefined); // a stopped VM cannot be paused: fine
    const console = await host.api<{ data: string }>('GET', `/vms/${name}/console?offset=0`);
    acked = guestAcked(console.body.data);
  } finally {
    await host.child.stop(options.mode === 'kill' ? 'SIGKILL' : 'SIGTERM', 60_000);
  }
  const stderr = host.child.stderr;
  const replica = await settled(destination, name);
  const recovered = replica === null ? 0 : checkReplica(replica.path);
  const primaryRecords = checkReplica(primaryFile, false);
  expect(recovered).toBeGreaterThanOrEqual(destinationAcked);
  expect(recovered).toBeLessThanOrEqual(primaryRecords);
  expect(primaryRecords).toBeGreaterThanOrEqual(acked);
  let flushComplete: boolean | null = null;
  let flushMs: number | null = null;
  if (options.mode === 'sigterm') {
    const line = /power-loss hooks done in [\d.]+ ms: (.*)$/m.exec(stderr);
    expect(line, stderr).not.toBeNull();
    const hooks = JSON.parse(line![1]!) as { name: string; ok: boolean; result: { complete: boolean; ms: number }[] | null }[];
    const hook = hooks.find((h) => h.name === 'log-replication')!;
    flushComplete = hook.ok && hook.result![0]!.complete;
    flushMs = hook.ok ? hook.result![0]!.ms : null;
    // The VM was paused before the console was read: a complete flush has every acknowledged put.
    if (flushComplete) expect(recovered).toBeGreaterThanOrEqual(acked);
  }
  return { mode: options.mode, guestAcked: acked, destinationAcked, recovered, flushComplete, batteryMs: options.mode === 'sigterm' ? options.batteryMs : null, flushMs };
}
