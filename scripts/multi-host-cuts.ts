/**
 * Long runs over real host processes (tools/host): migrations cut by a fault proxy at random
 * points, pre-copy and post-copy, and replications whose primary host is killed with SIGKILL at
 * random points. As root the two hosts run in network namespaces joined by a veth pair
 * (tests/services/multi-host.ts), otherwise on loopback; the first line says which. Every trial
 * is checked (tests/services/multi-host-trials.ts): the VM runs on exactly one host, its state
 * and console are exactly those of an uninterrupted run, and a failover activates the last
 * committed epoch with everything the primary's console had released.
 *
 *   node --import tsx scripts/multi-host-cuts.ts [--precopy N] [--postcopy N] [--kills N] [--seed S] [--minutes M] [--loopback]
 *
 * Defaults: 100 of each, seed 1, no time limit. `--minutes` stops starting trials after that long
 * (the tallies say how many ran). Exit code 1 if any trial failed.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MigrationsInfo } from '../services/host/host.ts';
import { makeCertificates } from '../tests/services/migration-certs.ts';
import { invariantSource } from '../tests/services/migration-harness.ts';
import { createNetwork, ProxyProcess, startHost, type Host } from '../tests/services/multi-host.ts';
import { cutTrial, killTrial, type TrialGuest } from '../tests/services/multi-host-trials.ts';

const args = process.argv.slice(2);
const option = (name: string, fallback: number): number => {
  const at = args.indexOf(name);
  return at < 0 ? fallback : Number(args[at + 1]);
};
const counts = { precopy: option('--precopy', 100), postcopy: option('--postcopy', 100), kills: option('--kills', 100) };
let seed = option('--seed', 1) >>> 0 || 1;
const stopAt = Date.now() + option('--minutes', Infinity) * 60_000;
// xorshift32: the same seed, the same cut points.
const random = (): number => {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 2 ** 32;
};

const MIB = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), 'bv-mh-cuts-'));
const network = createNetwork({ throttleMbit: 800, loopback: args.includes('--loopback') });
console.log(network.describe);
const certs = makeCertificates([network.address.a, network.address.b]);
// 8 MiB guests: a pass over the 7 MiB region then a spin; ~10 passes a second when it runs alone.
const guest: TrialGuest = { image: join(work, 'invariant.s'), memoryMib: 8, spin: 2_000_000 };
writeFileSync(guest.image, invariantSource(guest.memoryMib * MIB, { spin: guest.spin }));
const migration = (tls: unknown, listen: boolean, side: 'a' | 'b') => ({ tls, stall_timeout_ms: 3_000, ...(listen ? { listen: `${network.address[side]}:0` } : {}) });

const hosts: Host[] = [];
const proxies: ProxyProcess[] = [];
const failures: string[] = [];
const started = Date.now();

async function run(): Promise<void> {
  const source = await startHost(network, 'a', 'source', { host_memory_mib: 96, migration: migration(certs.a, false, 'a') }, work);
  const destination = await startHost(network, 'b', 'destination', { host_memory_mib: 256, migration: migration(certs.b, true, 'b') }, work);
  hosts.push(source, destination);
  const listening = (await destination.api<MigrationsInfo>('GET', '/migrations')).body.listening!;
  const proxy = await ProxyProcess.start(network, 'b', listening);
  proxies.push(proxy);
  const rig = { source, destination, proxy, guest, work };

  for (const mode of ['precopy', 'postcopy'] as const) {
    const tally = new Map<string, number>();
    let ran = 0;
    for (let i = 0; i < counts[mode] && Date.now() < stopAt; i++) {
      // Cuts anywhere in the first ~2.5 guest sizes going up (a migration of this guest sends
      // 1-3 of them), and one trial in five on the way back (the destination's answers).
      const direction = random() < 0.2 ? 'down' : 'up';
      const cutAfter = direction === 'up' ? Math.floor(random() * 2.5 * guest.memoryMib * MIB) : Math.floor(random() * 4096);
      try {
        const trial = await cutTrial(rig, { name: `${mode}${i}`, mode, cutAfter, direction });
        tally.set(trial.outcome, (tally.get(trial.outcome) ?? 0) + 1);
      } catch (error) {
        failures.push(`${mode} trial ${i} (cut ${direction} after ${cutAfter}): ${error instanceof Error ? error.message : String(error)}`);
        console.log(`FAIL ${failures.at(-1)}`);
        tally.set('FAILED', (tally.get('FAILED') ?? 0) + 1);
        // Leave nothing behind for the next trial.
        await source.api('DELETE', `/vms/${mode}${i}`).catch(() => {});
        await destination.api('DELETE', `/vms/${mode}${i}`).catch(() => {});
      }
      ran++;
      if (ran % 10 === 0) console.log(`${mode}: ${ran} trials, ${JSON.stringify(Object.fromEntries(tally))} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
    }
    console.log(`${mode} cuts: ${ran} trials: ${[...tally].map(([k, v]) => `${v} ${k}`).join(', ')}`);
  }

  const backupAddress = (await destination.api<MigrationsInfo>('GET', '/migrations')).body.listening!;
  let ran = 0;
  const epochs: number[] = [];
  let none = 0;
  for (let i = 0; i < counts.kills && Date.now() < stopAt; i++) {
    // A fresh primary each time: it dies.
    const primary = await startHost(network, 'a', `primary${i}`, { host_memory_mib: 64, migration: migration(certs.a, false, 'a') }, work);
    const killAfterMs = Math.floor(random() * 3_000);
    try {
      const trial = await killTrial({ primary, backup: destination, backupAddress, guest, work }, { name: `replica${i}`, killAfterMs });
      if (trial.epoch === null) none++;
      else epochs.push(trial.epoch);
    } catch (error) {
      failures.push(`kill trial ${i} (after ${killAfterMs} ms): ${error instanceof Error ? error.message : String(error)}`);
      console.log(`FAIL ${failures.at(-1)}`);
      await destination.api('DELETE', `/vms/replica${i}`).catch(() => {});
    } finally {
      await primary.child.stop('SIGKILL');
    }
    ran++;
    if (ran % 10 === 0) console.log(`kills: ${ran} trials, ${epochs.length} activated, ${none} before epoch 0 (${((Date.now() - started) / 1000).toFixed(0)} s)`);
  }
  const sorted = [...epochs].sort((x, y) => x - y);
  console.log(`kill -9 of the primary: ${ran} trials: ${epochs.length} activated at the last committed epoch (epochs ${sorted[0] ?? '-'}..${sorted.at(-1) ?? '-'}, median ${sorted[Math.floor(sorted.length / 2)] ?? '-'}), ${none} killed before epoch 0 committed (activation refused)`);
}

try {
  await run();
} catch (error) {
  failures.push(`the run itself: ${error instanceof Error ? error.stack : String(error)}`);
} finally {
  await Promise.all(proxies.map((p) => p.stop()));
  await Promise.all(hosts.map((host) => host.child.stop('SIGKILL')));
  network.close();
  rmSync(work, { recursive: true, force: true });
  rmSync(certs.dir, { recursive: true, force: true });
}
console.log(`${failures.length} failures in ${((Date.now() - started) / 1000).toFixed(0)} s`);
for (const failure of failures) console.log(`  ${failure}`);
process.exit(failures.length === 0 ? 0 : 1);
