/**
 * The nanokernel's persistent memory (examples/nanokernel/pmem.s, the pmkv program; docs/pmem.md):
 * records a guest wrote and flushed survive a host restart (a new hypervisor on the same file),
 * a torn final record is detected and dropped, never applied, and a range that holds something
 * else is refused.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, runWithResets } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { KERNEL_IMAGE } from './nanokernel-guest.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-nk-pmem-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PMEM_BYTES = 64 * 1024;
const LOG = 4096;

/** Boots the nanokernel (a fresh hypervisor: a host restart each time) with `args`; returns its output and exit code. */
function boot(path: string, args: string, create = false): { text: string; exitCode: number | undefined } {
  const hv = createHypervisor({ hostMemoryBytes: 32 << 20 });
  const vm = hv.createVm({ memoryBytes: 16 << 20 });
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs: args, pmem: { path, bytes: PMEM_BYTES, create } });
  vm.loadImage(KERNEL_IMAGE);
  const run = runWithResets(hv, vm, devices, { maxInstructions: 50_000_000 });
  hv.destroyVm(vm);
  return { text: output.text(), exitCode: run.reason.kind === 'halted' ? run.reason.exitCode : undefined };
}

/** The pmkv lines of an output. */
function pmkvLines(text: string): string[] {
  return text.split('\n').filter((line) => line.startsWith('pmkv:'));
}

describe('pmkv on the nanokernel', () => {
  const path = join(dir, 'kv.pmem');

  it('formats a blank range, and what it put and flushed is there after a host restart', () => {
    const first = boot(path, 'pmkv put alpha 1 put beta two put alpha 3 get alpha get gamma', true);
    expect(first.text).toContain('[kernel] pmem: 65536 bytes at 0x01000000');
    expect(pmkvLines(first.text)).toEqual([
      'pmkv: formatted 65536 bytes',
      'pmkv: 0 records, next seq 1',
      'pmkv: put alpha = 1 (seq 1)',
      'pmkv: put beta = two (seq 2)',
      'pmkv: put alpha = 3 (seq 3)',
      'pmkv: get alpha = 3 (seq 3)',
      'pmkv: get gamma: not found',
    ]);
    expect(first.exitCode).toBe(0);
    // The file holds the header and the three records (the format of docs/pmem.md).
    const file = readFileSync(path);
    expect(file.subarray(0, 4).toString('latin1')).toBe('PKV1');
    expect(file.readUInt32LE(8)).toBe(LOG);
    expect(file.subarray(LOG, LOG + 4).toString('latin1')).toBe('PKR1');
    expect(file.readUInt32LE(LOG + 4)).toBe(1);
    expect(file.subarray(LOG + 20, LOG + 26).toString('latin1')).toBe('alpha1');

    const second = boot(path, 'pmkv get alpha get beta put beta 4');
    expect(pmkvLines(second.text)).toEqual([
      'pmkv: 3 records, next seq 4',
      'pmkv: get alpha = 3 (seq 3)',
      'pmkv: get beta = two (seq 2)',
      'pmkv: put beta = 4 (seq 4)',
    ]);
  });

  it('drops a torn final record (a bad checksum or a gap in the sequence) and overwrites it', () => {
    // Find the end of the four records, and tear a fifth one written by hand there.
    const file = readFileSync(path);
    let end = LOG;
    for (let seq = 1; seq <= 4; seq++) {
      expect(file.readUInt32LE(end + 4)).toBe(seq);
      end += Math.ceil((20 + file.readUInt32LE(end + 8) + file.readUInt32LE(end + 12)) / 4) * 4;
    }
    const torn = Buffer.alloc(32);
    torn.write('PKR1', 0, 'latin1');
    torn.writeUInt32LE(5, 4);
    torn.writeUInt32LE(5, 8); // key "gamma"
    torn.writeUInt32LE(1, 12); // value "9"
    torn.writeUInt32LE(0x1234_5678, 16); // not its checksum: the write was torn
    torn.write('gamma9', 20, 'latin1');
    const bytes = new Uint8Array(readFileSync(path));
    bytes.set(torn, end);
    writeFileSync(path, bytes);

    const third = boot(path, 'pmkv get gamma put delta 5 get beta');
    expect(pmkvLines(third.text)).toEqual([
      `pmkv: dropped a torn record at offset ${end}`,
      'pmkv: 4 records, next seq 5',
      'pmkv: get gamma: not found',
      'pmkv: put delta = 5 (seq 5)',
      'pmkv: get beta = 4 (seq 4)',
    ]);
    // The put replaced the torn record: a restart sees five good records and nothing torn.
    const fourth = boot(path, 'pmkv get delta');
    expect(pmkvLines(fourth.text)).toEqual(['pmkv: 5 records, next seq 6', 'pmkv: get delta = 5 (seq 5)']);

    // A record with a good checksum but the wrong sequence number (a stale one) ends the log too.
    const after = readFileSync(path);
    let tail = LOG;
    for (let seq = 1; seq <= 5; seq++) tail += Math.ceil((20 + after.readUInt32LE(tail + 8) + after.readUInt32LE(tail + 12)) / 4) * 4;
    const stale = new Uint8Array(after);
    stale.set(after.subarray(LOG, LOG + 28), tail); // record 1 again, at the end: seq 1, not 6
    writeFileSync(path, stale);
    const fifth = boot(path, 'pmkv get alpha');
    expect(pmkvLines(fifth.text)).toEqual([`pmkv: dropped a torn record at offset ${tail}`, 'pmkv: 5 records, next seq 6', 'pmkv: get alpha = 3 (seq 3)']);
  });

  it('refuses a range that holds something else, and runs without persistent memory', () => {
    const other = join(dir, 'other.pmem');
    const bytes = new Uint8Array(PMEM_BYTES);
    bytes.set([1, 2, 3, 4]);
    writeFileSync(other, bytes);
    const refused = boot(other, 'pmkv get a');
    expect(pmkvLines(refused.text)).toEqual(['pmkv: the persistent memory holds something else (bad header)']);
    expect(refused.exitCode).not.toBe(0);
    expect(readFileSync(other).subarray(0, 4)).toEqual(Buffer.from([1, 2, 3, 4])); // untouched

    const hv = createHypervisor({ hostMemoryBytes: 32 << 20 });
    const vm = hv.createVm({ memoryBytes: 16 << 20 });
    const output = new CaptureSink();
    const devices = attachStandardDevices(vm, { output, bootArgs: 'pmkv get a' });
    vm.loadImage(KERNEL_IMAGE);
    runWithResets(hv, vm, devices, { maxInstructions: 50_000_000 });
    expect(pmkvLines(output.text())).toEqual(['pmkv: no persistent memory (or less than 8 KiB)']);
  });
});
