/**
 * Asynchronous log replication (T-16, docs/pmem.md "Log replication"): the tailer ships complete
 * records only (a torn one waits), a destination rebuilds the log byte for byte and pmkv restarts
 * from it; corrupt, truncated and out-of-order streams are refused with nothing applied; a
 * destination that is down during the failure gets the log when it returns, or the other
 * destination has it; and a sample of the crash-consistency trials of
 * scripts/log-replication-trials.ts (power loss with random budgets, kill -9 and SIGTERM of a
 * real host process); and two real host processes in network namespaces (when root) with mutual
 * TLS, the primary killed mid-run and pmkv restarted on the destination.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LogFrame, LogReplicaReceiver, LogShipper, LOG_REPLICATION_PROTOCOL, LOG_REPLICATION_VERSIONS, pmkvHeader, pmkvRecord, readPmkvLog,
} from '../../services/ha/log-replication.ts';
import { connect } from '../../services/migration/transport.ts';
import { ConfigError, parseHostConfig } from '../../services/host/config.ts';
import type { Host } from '../../services/host/host.ts';
import type { LogReplicasInfo, LogReplicationStatus } from '../../services/ha/log-replication.ts';
import { makeCertificates } from './migration-certs.ts';
import { createNetwork, startHost, type Host as MultiHost } from './multi-host.ts';
import { checkReplica, KERNEL, powerLossTrial, PRIMARY_SCHEDULING, processTrial, putArgs, random, startDestination } from './log-replication-trials.ts';
import { runCtl } from '../tools/child.ts';
import { freePort } from '../../bench/harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-logrep-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const BYTES = 64 * 1024;
const LOG = 4096 + 512 * (BYTES / 2048);

/** A pmkv record (docs/pmem.md), padded. */
const record = (seq: number, key: string, value: string): Buffer => Buffer.from(pmkvRecord(seq, key, value));

/** A formatted pmkv range with records 1..count (k{i mod 8} = v{i}) in its log; returns the log's end. */
function writeLog(path: string, count: number, from = 1, file: Buffer = Buffer.alloc(BYTES)): { file: Buffer; end: number } {
  Buffer.from(pmkvHeader(BYTES)).copy(file, 0);
  let end = LOG;
  for (let seq = 1; seq < from; seq++) end += record(seq, `k${seq % 8}`, `v${seq}`).length;
  for (let seq = from; seq <= count; seq++) {
    const bytes = record(seq, `k${seq % 8}`, `v${seq}`);
    bytes.copy(file, end);
    end += bytes.length;
  }
  writeFileSync(path, file);
  return { file, end };
}

const insecure = { insecure: true, stallTimeoutMs: 5000 } as const;

async function until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const limit = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > limit) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}


describe('the shipper and the receiver', () => {
  it('ship complete records in order, wait at a torn one, and rebuild the log byte for byte', async () => {
    const receiver = await LogReplicaReceiver.listen({ ...insecure, host: '127.0.0.1', port: 0, dir: join(dir, 'r1') });
    const source = join(dir, 'src1.pmem');
    let { file, end } = writeLog(source, 5);
    const shipper = new LogShipper('kv', { gpa: 0x0100_0000, bytes: BYTES, path: source, fileOffset: 0 }, { destinations: [receiver.address], intervalMs: 5 }, insecure);
    try {
      shipper.start();
      await until(() => shipper.status().destinations[0]!.acked_seq === 5, 'five records acknowledged');
      // A sixth record half written (its checksum does not check out yet): not shipped.
      const sixth = record(6, 'k6', 'v6');
      const torn = Buffer.from(sixth);
      torn.writeUInt32LE(0, 16);
      torn.copy(file, end);
      writeFileSync(source, file);
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(shipper.status().tail_seq).toBe(5);
      expect(receiver.info().replicas[0]!.applied_seq).toBe(5);
      // Completed: shipped.
      sixth.copy(file, end);
      end += sixth.length;
      writeFileSync(source, file);
      ({ file, end } = writeLog(source, 40, 7, file));
      await until(() => shipper.status().destinations[0]!.acked_seq === 40, 'forty records acknowledged');
      const replica = readFileSync(join(dir, 'r1', 'kv.pmem'));
      expect(replica.length).toBe(BYTES);
      expect(replica.subarray(0, 24)).toEqual(file.subarray(0, 24)); // the header
      expect(replica.subarray(LOG, end + 4)).toEqual(file.subarray(LOG, end + 4)); // the log and its end mark
      expect(checkReplica(join(dir, 'r1', 'kv.pmem'))).toBe(40);
      const status = shipper.status().destinations[0]!;
      expect(status).toMatchObject({ state: 'connected', sent_seq: 40, acked_seq: 40, lag_records: 0, lag_ms: 0, last_error: null });
    } finally {
      shipper.stop();
      await receiver.close();
    }
  });

  it('refuse corrupt, truncated, out-of-order and gapped streams, applying nothing of them', async () => {
    const receiver = await LogReplicaReceiver.listen({ ...insecure, host: '127.0.0.1', port: 0, dir: join(dir, 'r2') });
    const open = async (applied: number) => {
      const channel = await connect({ ...insecure, protocol: LOG_REPLICATION_PROTOCOL, versions: LOG_REPLICATION_VERSIONS, host: '127.0.0.1', port: receiver.port });
      await channel.send(LogFrame.OPEN, Buffer.from(JSON.stringify({ vm: 'kv', bytes: BYTES, header: Buffer.from(pmkvHeader(BYTES)).toString('base64') })));
      const ready = JSON.parse(Buffer.from(await channel.expect(LogFrame.READY, 'READY')).toString()) as { applied_seq: number };
      expect(ready.applied_seq).toBe(applied);
      return channel;
    };
    const batch = (first: number, offset: number, ...records: Buffer[]) => {
      const head = Buffer.alloc(8);
      head.writeUInt32LE(first, 0);
      head.writeUInt32LE(offset, 4);
      return Buffer.concat([head, ...records]);
    };
    const refused = async (payload: Buffer, code: RegExp, applied: number) => {
      const channel = await open(applied);
      await channel.send(LogFrame.RECORDS, payload);
      await expect(channel.receive()).rejects.toThrow(code);
      channel.destroy();
      await until(() => !receiver.info().replicas[0]!.connected, 'the stream to end');
      expect(receiver.info().replicas[0]!.applied_seq).toBe(applied);
      expect(readPmkvLog(join(dir, 'r2', 'kv.pmem')).length).toBe(applied);
    };
    try {
      const good = await open(0);
      await good.send(LogFrame.RECORDS, batch(1, LOG, record(1, 'a', '1'), record(2, 'b', '2')));
      expect(Buffer.from(await good.expect(LogFrame.ACK, 'ACK')).readUInt32LE(0)).toBe(2);
      await good.close();
      const third = record(3, 'c', '3');
      const fourth = record(4, 'd', '4');
      const at = LOG + record(1, 'a', '1').length + record(2, 'b', '2').length;
      // A record whose bytes were damaged (its checksum fails), even beside a good one.
      const damaged = Buffer.from(fourth);
      damaged[21] ^= 1;
      await refused(batch(3, at, third, damaged), /BV_LOGREP_CORRUPT/, 2);
      // A record cut short at the end of the stream's batch (a truncated stream).
      await refused(batch(3, at, third, fourth.subarray(0, 22)), /BV_LOGREP_TRUNCATED/, 2);
      // A gap (record 4 where 3 is next) and a repeat (record 2 again), and the wrong offset.
      await refused(batch(4, at, fourth), /BV_LOGREP_GAP/, 2);
      await refused(batch(2, LOG + record(1, 'a', '1').length, record(2, 'b', '2')), /BV_LOGREP_GAP/, 2);
      await refused(batch(3, at + 4, third), /BV_LOGREP_GAP/, 2);
      // Reordered records inside a batch.
      await refused(batch(3, at, fourth, third), /BV_LOGREP_GAP/, 2);
      // Garbage that is not a record at all, and a frame too short to say where it goes.
      await refused(batch(3, at, Buffer.alloc(28, 0x55)), /BV_LOGREP_CORRUPT/, 2);
      await refused(Buffer.alloc(5), /BV_LOGREP_TRUNCATED/, 2);
      // A stream for another persistent memory (another header) of the same VM.
      const other = await connect({ ...insecure, protocol: LOG_REPLICATION_PROTOCOL, versions: LOG_REPLICATION_VERSIONS, host: '127.0.0.1', port: receiver.port });
      await other.send(LogFrame.OPEN, Buffer.from(JSON.stringify({ vm: 'kv', bytes: BYTES * 2, header: Buffer.from(pmkvHeader(BYTES * 2)).toString('base64') })));
      await expect(other.receive()).rejects.toThrow(/BV_LOGREP_MISMATCH/);
      other.destroy();
      // After all that, the good records are intact and the next good batch goes on from them.
      const resumed = await open(2);
      await resumed.send(LogFrame.RECORDS, batch(3, at, third, fourth));
      expect(Buffer.from(await resumed.expect(LogFrame.ACK, 'ACK')).readUInt32LE(0)).toBe(4);
      await resumed.close();
      expect(readPmkvLog(join(dir, 'r2', 'kv.pmem')).map((r) => r.key).join('')).toBe('abcd');
      expect(receiver.info().replicas[0]!.refused_batches).toBeGreaterThanOrEqual(8);
    } finally {
      await receiver.close();
    }
  });

  it('refuse a source whose log differs from the replica they hold', async () => {
    const receiver = await LogReplicaReceiver.listen({ ...insecure, host: '127.0.0.1', port: 0, dir: join(dir, 'r3') });
    const first = join(dir, 'src3a.pmem');
    writeLog(first, 10);
    const a = new LogShipper('kv', { gpa: 0, bytes: BYTES, path: first, fileOffset: 0 }, { destinations: [receiver.address], intervalMs: 5 }, insecure);
    a.start();
    await until(() => a.status().destinations[0]!.acked_seq === 10, 'ten records');
    a.stop();
    // Another log of the same VM name: fewer records, then different ones.
    const second = join(dir, 'src3b.pmem');
    writeLog(second, 4);
    const b = new LogShipper('kv', { gpa: 0, bytes: BYTES, path: second, fileOffset: 0 }, { destinations: [receiver.address], intervalMs: 5 }, insecure);
    b.start();
    await until(() => b.status().destinations[0]!.last_error !== null, 'a refusal');
    expect(b.status().destinations[0]!.last_error).toMatch(/holds 10 records of 'kv', this host's log only 4/);
    b.stop();
    expect(checkReplica(join(dir, 'r3', 'kv.pmem'))).toBe(10);
    await receiver.close();
  });
});

describe('a destination down during the failure', () => {
  it('the log waits for it and is sent when it comes back; with two destinations the other one has it', async () => {
    const port = await freePort();
    const up = await LogReplicaReceiver.listen({ ...insecure, host: '127.0.0.1', port: 0, dir: join(dir, 'up') });
    const source = join(dir, 'src4.pmem');
    writeLog(source, 30);
    const shipper = new LogShipper('kv', { gpa: 0, bytes: BYTES, path: source, fileOffset: 0 }, { destinations: [`127.0.0.1:${port}`, up.address], intervalMs: 5 }, insecure);
    let late: LogReplicaReceiver | null = null;
    try {
      shipper.start();
      const report = await shipper.flush(performance.now() + 500);
      expect(report.tail_seq).toBe(30);
      expect(report.complete).toBe(true); // the other destination has it all
      expect(report.destinations[0]!.acked_seq).toBe(0);
      expect(report.destinations[0]!.error).toMatch(/ECONNREFUSED|refused|connect/i);
      expect(report.destinations[1]!.acked_seq).toBe(30);
      // The first destination comes back: the log waited for it.
      late = await LogReplicaReceiver.listen({ ...insecure, host: '127.0.0.1', port, dir: join(dir, 'late') });
      await until(() => shipper.status().destinations[0]!.acked_seq === 30, 'the late destination to catch up');
      expect(checkReplica(join(dir, 'late', 'kv.pmem'))).toBe(30);
    } finally {
      shipper.stop();
      await up.close();
      await late?.close();
    }
  });
});

describe('log replication between hosts', () => {
  let destination: Host;
  beforeAll(async () => {
    destination = await startDestination(join(dir, 'dest'));
  }, 60_000);
  afterAll(async () => destination?.close());

  it('is configured per VM (schema-checked) and needs pmem', () => {
    const vm = { name: 'kv', image: KERNEL, memory_mib: 16, pmem: { path: '/x.pmem', size_kib: 64 } };
    expect(parseHostConfig({ vms: [{ ...vm, log_replication: { destinations: ['b:7000'] } }] }).vms[0]!.logReplication).toEqual({ destinations: ['b:7000'], intervalMs: 10 });
    const refusal = (json: unknown) => {
      try {
        parseHostConfig(json);
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        return (error as ConfigError).path;
      }
      throw new Error('accepted');
    };
    expect(refusal({ vms: [{ ...vm, log_replication: { destinations: [] } }] })).toMatch(/^vms\[0\]\.log_replication/);
    expect(refusal({ vms: [{ ...vm, log_replication: { destinations: ['nowhere'] } }] })).toMatch(/^vms\[0\]\.log_replication/);
    expect(refusal({ vms: [{ ...vm, log_replication: { destinations: ['b:1'], interval_ms: 0 } }] })).toMatch(/^vms\[0\]\.log_replication/);
    expect(refusal({ vms: [{ ...vm, pmem: null, log_replication: { destinations: ['b:1'] } }] })).toBe('vms[0].log_replication');
    expect(refusal({ log_replicas: { listen: 'x:1' } })).toMatch(/^log_replicas/);
    expect(parseHostConfig({ battery_ms: 250 }).batteryMs).toBe(250);
  });

  it('pmkv restarts on the destination from the replicated log, with every acknowledged put', async () => {
    const result = await powerLossTrial(destination, dir, 'restart', { puts: 60, stopAfterMs: -1, batteryMs: 5000, intervalMs: 5 });
    // Stopped long after the guest finished: every put acknowledged and flushed.
    expect(result.guestAcked).toBe(60);
    expect(result.flushComplete).toBe(true);
    expect(result.recovered).toBe(60);
    const released = destination.releaseLogReplica('restart');
    expect(released.applied_seq).toBe(60);
    await expect(destination.createVm(parseHostConfig({ vms: [{ name: 'restarted', image: KERNEL, memory_mib: 16, boot_args: 'pmkv get k0 get k1 get k7 get k5', pmem: { path: released.path, size_kib: 64 } }] }).vms[0]!)).resolves.toBeDefined();
    await destination.whenStopped('restarted');
    const lines = destination.readConsole('restarted', 0, 1 << 20).data.split('\n').filter((line) => line.startsWith('pmkv:'));
    expect(lines).toEqual([
      'pmkv: applied 60 log records to the data area', // the data area is rebuilt from the log
      'pmkv: 60 records, next seq 61',
      'pmkv: get k0 = v56 (seq 56)',
      'pmkv: get k1 = v57 (seq 57)',
      'pmkv: get k7 = v55 (seq 55)',
      'pmkv: get k5 = v53 (seq 53)',
    ]);
  }, 180_000);

  it('crash consistency: a sample of power-loss (random budgets, 0 included), kill -9 and SIGTERM trials', async () => {
    const next = random(0x5eed);
    const results = [];
    results.push(await powerLossTrial(destination, dir, 'p1', { puts: 200, stopAfterMs: 50 + Math.floor(next() * 400), batteryMs: 0, intervalMs: 1 + Math.floor(next() * 20) }));
    results.push(await powerLossTrial(destination, dir, 'p2', { puts: 200, stopAfterMs: 50 + Math.floor(next() * 400), batteryMs: Math.floor(next() * 200), intervalMs: 1 + Math.floor(next() * 20) }));
    results.push(await powerLossTrial(destination, dir, 'p3', { puts: 200, stopAfterMs: 50 + Math.floor(next() * 400), batteryMs: 1000, intervalMs: 50 }));
    results.push(await processTrial(destination, dir, 'k1', { mode: 'kill', puts: 300, stopAfterMs: 200 + Math.floor(next() * 1500), batteryMs: 0, intervalMs: 1 + Math.floor(next() * 20) }));
    results.push(await processTrial(destination, dir, 's1', { mode: 'sigterm', puts: 300, stopAfterMs: 200 + Math.floor(next() * 1500), batteryMs: 2000, intervalMs: 1 + Math.floor(next() * 20) }));
    // A generous budget flushes everything the guest had acknowledged.
    expect(results[2]!.flushComplete).toBe(true);
    expect(results[2]!.recovered).toBeGreaterThanOrEqual(results[2]!.guestAcked);
    expect(results[4]!.flushComplete).toBe(true);
  }, 600_000);
});

describe('two host processes (in network namespaces when root, else on loopback; mutual TLS)', () => {
  it('the primary killed with SIGKILL mid-run: the destination holds a prefix with every record it acknowledged, and pmkv restarts there', async () => {
    const network = createNetwork();
    const certs = makeCertificates([network.address.a, network.address.b]);
    const port = await freePort();
    const destinationAddress = `${network.address.b}:${port}`;
    const primaryFile = join(dir, 'ns-primary.pmem');
    let destination: MultiHost | null = null;
    let primary: MultiHost | null = null;
    try {
      destination = await startHost(network, 'b', 'ns-destination', { migration: { tls: certs.b, name: 'destination' }, log_replicas: { listen: destinationAddress, dir: join(dir, 'ns-replicas') } }, dir);
      primary = await startHost(network, 'a', 'ns-primary', {
        ...PRIMARY_SCHEDULING,
        migration: { tls: certs.a, name: 'primary' },
        vms: [{ name: 'kv', image: KERNEL, memory_mib: 16, boot_args: putArgs(150), pmem: { path: primaryFile, size_kib: 64, create: true }, log_replication: { destinations: [destinationAddress], interval_ms: 5 } }],
      }, dir);
      // Mid-run: once the destination has acknowledged some records.
      let acked = 0;
      const limit = Date.now() + 120_000;
      while (acked < 20) {
        if (Date.now() > limit) throw new Error(`no acknowledgement: ${JSON.stringify((await primary.api('GET', '/vms/kv/log-replication')).body)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
        acked = (await primary.api<LogReplicationStatus>('GET', '/vms/kv/log-replication')).body.destinations[0]!.acked_seq;
      }
      const shown = await runCtl(primary.socket, ['--json', 'log-replication', 'kv']);
      expect(shown.code, shown.stderr).toBe(0);
      expect((JSON.parse(shown.stdout) as LogReplicationStatus).destinations[0]!.acked_seq).toBeGreaterThanOrEqual(acked);
      await primary.child.stop('SIGKILL');
      const stopLimit = Date.now() + 30_000;
      let replica = (await destination.api<LogReplicasInfo>('GET', '/log-replicas')).body.replicas[0]!;
      while (replica.connected) {
        if (Date.now() > stopLimit) throw new Error('the destination still streams after the kill');
        await new Promise((resolve) => setTimeout(resolve, 20));
        replica = (await destination.api<LogReplicasInfo>('GET', '/log-replicas')).body.replicas[0]!;
      }
      const recovered = checkReplica(replica.path);
      expect(recovered).toBeGreaterThanOrEqual(acked);
      expect(recovered).toBeLessThanOrEqual(checkReplica(primaryFile, false));
      expect(replica.applied_seq).toBe(recovered);
      // tools/ctl shows the same replica (its readable table names the VM and the sequence applied).
      const listed = await runCtl(destination.socket, ['log-replicas']);
      expect(listed.code, listed.stderr).toBe(0);
      expect(listed.stdout).toContain('kv');
      expect(listed.stdout).toContain(String(recovered));

      // The application restarts on the destination from the rebuilt file (ctl release-log-replica = DELETE /log-replicas/kv).
      const released = await runCtl(destination.socket, ['release-log-replica', 'kv']);
      expect(released.code, released.stderr).toBe(0);
      expect(released.stdout).toContain(replica.path);
      const gets = Array.from({ length: 8 }, (_, key) => `get k${key}`).join(' ');
      const created = await destination.api('PUT', '/vms/kv2', { name: 'kv2', image: KERNEL, memory_mib: 16, boot_args: `pmkv ${gets}`, pmem: { path: replica.path, size_kib: 64 } });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      const runLimit = Date.now() + 120_000;
      while ((await destination.api<{ state: string }>('GET', '/vms/kv2')).body.state !== 'Stopped') {
        if (Date.now() > runLimit) throw new Error('the restarted application did not finish');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const text = (await destination.api<{ data: string }>('GET', '/vms/kv2/console?offset=0')).body.data;
      const expected = Array.from({ length: 8 }, (_, key) => {
        let last = 0;
        for (let seq = 1; seq <= recovered; seq++) if (seq % 8 === key) last = seq;
        return last === 0 ? `pmkv: get k${key}: not found` : `pmkv: get k${key} = v${last} (seq ${last})`;
      });
      expect(text.split('\n').filter((line) => line.startsWith('pmkv: get'))).toEqual(expected);
      expect(text).toContain(`pmkv: ${recovered} records, next seq ${recovered + 1}`);
    } finally {
      await primary?.child.stop('SIGKILL');
      await destination?.child.stop('SIGTERM');
      network.close();
      rmSync(certs.dir, { recursive: true, force: true });
    }
  }, 300_000);
});
