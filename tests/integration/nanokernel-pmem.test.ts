/**
 * The nanokernel's persistent memory (examples/nanokernel/pmem.s, the pmkv program; docs/pmem.md):
 * records a guest wrote and flushed survive a host restart (a new hypervisor on the same file),
 * a torn final record is detected and dropped, never applied, a record committed to the log but
 * not to the data area (or a torn slot) is applied at the next start, and a range that holds
 * something else is refused.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStandardDevices, CaptureSink, runWithResets } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { KERNEL_IMAGE } from './nanokernel-guest.ts';
import { fnv1a, pmkvRecord } from '../../services/ha/log-replication.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-nk-pmem-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PMEM_BYTES = 64 * 1024;
const DATA = 4096;
const SLOTS = PMEM_BYTES / 2048;
const LOG = DATA + SLOTS * 512;

/** FNV-1a (32-bit) of all of `bytes`, continued from `hash` (pmkv's checksum and slot hash). */
const fnv = (bytes: Uint8Array, hash?: number): number => fnv1a(bytes, 0, bytes.length, hash);

/** A pmkv record (docs/pmem.md) with its checksum, padded to a multiple of 4. */
const record = (seq: number, key: string, value: string): Buffer => Buffer.from(pmkvRecord(seq, key, value));

/** The offset of the slot holding `key` in the data area (probing as pmkv does), or -1. */
function slotOf(file: Buffer, key: string): number {
  const home = fnv(Buffer.from(key, 'latin1')) % SLOTS;
  for (let probe = 0; probe < 8; probe++) {
    const at = DATA + ((home + probe) % SLOTS) * 512;
    if (file.subarray(at, at + 4).toString('latin1') !== 'PKR1') return -1;
    if (file.subarray(at + 20, at + 20 + file.readUInt32LE(at + 8)).toString('latin1') === key) return at;
  }
  return -1;
}

/** The offset after the log's `count` records. */
function logEnd(file: Buffer, count: number): number {
  let end = LOG;
  for (let seq = 1; seq <= count; seq++) {
    expect(file.readUInt32LE(end + 4)).toBe(seq);
    end += Math.ceil((20 + file.readUInt32LE(end + 8) + file.readUInt32LE(end + 12)) / 4) * 4;
  }
  return end;
}

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
      'pmkv: formatted 65536 bytes, 32 slots, log at 20480',
      'pmkv: 0 records, next seq 1',
      'pmkv: put alpha = 1 (seq 1)',
      'pmkv: put beta = two (seq 2)',
      'pmkv: put alpha = 3 (seq 3)',
      'pmkv: get alpha = 3 (seq 3)',
      'pmkv: get gamma: not found',
    ]);
    expect(first.exitCode).toBe(0);
    // The file holds the header, the three records in the log and each key's newest in its slot
    // (the format of docs/pmem.md), byte for byte as a record is built here.
    const file = readFileSync(path);
    expect(file.subarray(0, 4).toString('latin1')).toBe('PKV1');
    expect([8, 12, 16].map((at) => file.readUInt32LE(at))).toEqual([DATA, SLOTS, LOG]);
    expect(file.readUInt32LE(20)).toBe(fnv(file.subarray(0, 20)));
    const at = (offset: number, expected: Buffer) => expect(file.subarray(offset, offset + expected.length)).toEqual(expected);
    at(LOG, record(1, 'alpha', '1'));
    at(LOG + 28, record(2, 'beta', 'two'));
    at(LOG + 56, record(3, 'alpha', '3'));
    expect(logEnd(file, 3)).toBe(LOG + 84);
    expect(file.readUInt32LE(LOG + 84)).toBe(0); // the end mark
    at(slotOf(file, 'alpha'), record(3, 'alpha', '3'));
    at(slotOf(file, 'beta'), record(2, 'beta', 'two'));

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
    const end = logEnd(readFileSync(path), 4);
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
    const tail = logEnd(after, 5);
    const stale = new Uint8Array(after);
    stale.set(after.subarray(LOG, LOG + 28), tail); // record 1 again, at the end: seq 1, not 6
    writeFileSync(path, stale);
    const fifth = boot(path, 'pmkv get alpha');
    expect(pmkvLines(fifth.text)).toEqual([`pmkv: dropped a torn record at offset ${tail}`, 'pmkv: 5 records, next seq 6', 'pmkv: get alpha = 3 (seq 3)']);
  });

  it('applies a record the log has and the data area lacks (a crash between the two flushes), and rewrites a torn slot', () => {
    const file = new Uint8Array(readFileSync(path));
    const tail = logEnd(Buffer.from(file), 5);
    file.set(record(6, 'epsilon', 'six'), tail); // committed to the log, never written to a slot
    writeFileSync(path, file);
    expect(slotOf(Buffer.from(file), 'epsilon')).toBe(-1);
    const first = boot(path, 'pmkv get epsilon');
    expect(pmkvLines(first.text)).toEqual(['pmkv: applied 1 log records to the data area', 'pmkv: 6 records, next seq 7', 'pmkv: get epsilon = six (seq 6)']);
    const applied = readFileSync(path);
    const slot = slotOf(applied, 'epsilon');
    expect(applied.subarray(slot, slot + 32)).toEqual(record(6, 'epsilon', 'six')); // 20 + 10 bytes, padded

    // A slot torn by a crash while it was written: the log still has the record, so it comes back.
    const torn = new Uint8Array(applied);
    torn[slot + 21] ^= 0xff;
    writeFileSync(path, torn);
    const second = boot(path, 'pmkv get epsilon');
    expect(pmkvLines(second.text)).toEqual(['pmkv: applied 1 log records to the data area', 'pmkv: 6 records, next seq 7', 'pmkv: get epsilon = six (seq 6)']);
    // Nothing left to apply.
    expect(pmkvLines(boot(path, 'pmkv').text)).toEqual(['pmkv: 6 records, next seq 7']);
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
