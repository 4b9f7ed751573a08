/**
 * The nanokernel with a disk (docs/nanokernel.md, docs/block-device.md): its `record` program
 * stores key-value records in sectors through the disk system calls and the block driver. Every
 * record on the disk is decoded here with an independent model of the format (FNV-1a home
 * sector, linear probing, checksum). Then the disk follows the VM: a fork mid-run gives parent and
 * child disks of their own over a sealed overlay that never changes, and a checkpoint taken
 * mid-run restores a VM that sees exactly the disk of that moment while the original goes on.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import {
  attachStandardDevices, CaptureSink, DISK_SECTOR_BYTES, DiskChain, runWithResets, savedBootArgs, type BlockState, type StandardDevices,
} from '../../devices/index.ts';
import { createHypervisor, type Hypervisor, type RunResult, type Vm } from '../../kernel/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { runTool } from '../tools/child.ts';

const REPO = join(import.meta.dirname, '..', '..');
const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const { image } = assembleFile(KERNEL);
const root = mkdtempSync(join(tmpdir(), 'bv-nanodisk-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MiB = 2 ** 20;
const SECTORS = 64;
const Exit = { OK: 0, PROGRAM_FAILED: 2 } as const;

// ---------------------------------------------------------------------------------------------
// An independent model of the record format (docs/nanokernel.md, "The record program")

const FNV_BASIS = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const REC_MAGIC = 0x31434552;
const PROBES = 8;

function fnv(hash: number, bytes: Uint8Array): number {
  for (const byte of bytes) hash = Math.imul(hash ^ byte, FNV_PRIME) >>> 0;
  return hash;
}

const checksum = (sector: Uint8Array): number => fnv(fnv(FNV_BASIS, sector.subarray(0, 12)), sector.subarray(16));
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

function encodeRecord(key: string, value: string): Uint8Array {
  const sector = new Uint8Array(DISK_SECTOR_BYTES);
  const view = new DataView(sector.buffer);
  const keyBytes = new TextEncoder().encode(key);
  const valueBytes = new TextEncoder().encode(value);
  view.setUint32(0, REC_MAGIC, true);
  view.setUint32(4, keyBytes.length, true);
  view.setUint32(8, valueBytes.length, true);
  sector.set(keyBytes, 16);
  sector.set(valueBytes, 80);
  view.setUint32(12, checksum(sector), true);
  return sector;
}

type Slot = { kind: 'free' } | { kind: 'damaged' } | { kind: 'record'; key: string; value: string };

function decodeRecord(sector: Uint8Array): Slot {
  const view = new DataView(sector.buffer, sector.byteOffset, sector.length);
  if (view.getUint32(0, true) !== REC_MAGIC) return { kind: 'free' };
  const keyLength = view.getUint32(4, true);
  const valueLength = view.getUint32(8, true);
  if (checksum(sector) !== view.getUint32(12, true) || keyLength > 64 || valueLength > 432) return { kind: 'damaged' };
  return { kind: 'record', key: text(sector.subarray(16, 16 + keyLength)), value: text(sector.subarray(80, 80 + valueLength)) };
}

/** The sector holding `key`'s record, or the free one it would go to (home = FNV-1a mod size, then probing). */
function locate(disk: DiskChain, key: string): { sector: number; slot: Slot } {
  const home = fnv(FNV_BASIS, new TextEncoder().encode(key)) % disk.sectors;
  for (let probe = 0; probe < Math.min(PROBES, disk.sectors); probe++) {
    const sector = (home + probe) % disk.sectors;
    const slot = decodeRecord(disk.read(sector, 1));
    if (slot.kind !== 'record' || slot.key === key) return { sector, slot };
  }
  throw new Error(`no free sector near the home of ${key}`);
}

/** Every record on the disk, as key -> value. */
function records(disk: DiskChain): Record<string, string> {
  const found: Record<string, string> = {};
  for (let sector = 0; sector < disk.sectors; sector++) {
    const slot = decodeRecord(disk.read(sector, 1));
    if (slot.kind === 'record') found[slot.key] = slot.value;
  }
  return found;
}

/** What the whole disk holds, for comparing moments. */
const diskHash = (disk: DiskChain): string => createHash('sha256').update(disk.read(0, disk.sectors)).digest('hex');
const fileHash = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

// ---------------------------------------------------------------------------------------------
// Machines

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
}

function makeDir(): string {
  return mkdtempSync(join(root, 'd'));
}

/** A zero-filled raw image of SECTORS sectors. */
function blankImage(dir: string): string {
  const path = join(dir, 'disk.img');
  writeFileSync(path, new Uint8Array(SECTORS * DISK_SECTOR_BYTES));
  return path;
}

function boot(bootArgs: string, disk: string | undefined, hv = createHypervisor({ hostMemoryBytes: 64 * MiB })): Machine {
  const vm = hv.createVm({ memoryBytes: 16 * MiB, name: 'nanokernel' });
  vm.loadImage(image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, disk === undefined ? { output, bootArgs } : { output, bootArgs, disk });
  return { hv, vm, devices, output };
}

function finish(machine: Machine): RunResult['reason'] {
  return runWithResets(machine.hv, machine.vm, machine.devices, { maxInstructions: 100_000_000 }).reason;
}

/** Runs in small steps until the output holds `line` (the VM is then stopped between instructions). */
function runUntil(machine: Machine, line: string): void {
  for (let steps = 0; steps < 10_000; steps++) {
    const { reason } = runWithResets(machine.hv, machine.vm, machine.devices, { maxInstructions: 2_000 });
    if (machine.output.text().split('\n').includes(line)) return;
    if (reason.kind !== 'budget') throw new Error(`the guest stopped before printing '${line}': ${JSON.stringify(reason)}`);
  }
  throw new Error(`'${line}' never came`);
}

/** The program's own lines (those starting with "record:"). */
const programLines = (output: string): string[] => output.split('\n').filter((line) => line.startsWith('record:'));

// ---------------------------------------------------------------------------------------------

describe('nanokernel record program on a disk', () => {
  it('stores records, reads them back and finds them on the disk where the format says', () => {
    const dir = makeDir();
    const base = blankImage(dir);
    const machine = boot('record put greeting hello get greeting add n 5 add n 2 get n get missing put greeting bye get greeting', base);
    expect(finish(machine)).toEqual({ kind: 'halted', exitCode: Exit.OK });
    const lines = machine.output.text().split('\n');
    expect(lines.slice(0, 3)).toEqual([
      'nanokernel: 16 MiB RAM, 1 vCPU, 5 devices',
      `[kernel] disk: ${SECTORS} sectors of 512 bytes`,
      '[kernel] 1 program, time slice 100000 instructions',
    ]);
    expect(programLines(machine.output.text())).toEqual([
      'record: put greeting = hello',
      'record: get greeting = hello',
      'record: add n = 5',
      'record: add n = 7',
      'record: get n = 7',
      'record: get missing: not found',
      'record: put greeting = bye',
      'record: get greeting = bye',
    ]);
    expect(lines).toContain('[kernel] pid 1 (record) exited with code 0');
    const block = machine.devices.block!;
    expect(records(block.disk)).toEqual({ greeting: 'bye', n: '7' });
    expect(locate(block.disk, 'greeting').slot).toEqual({ kind: 'record', key: 'greeting', value: 'bye' });
    // Each put/add: write, flush, read back; each lookup reads from the home sector on.
    expect(block.stats.writes).toBe(4);
    expect(block.stats.flushes).toBe(4);
    expect(block.stats.errors).toBe(0);
    // Only the overlay was written; the image is still all zeros.
    expect(readFileSync(base).every((byte) => byte === 0)).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['disk.img', 'disk.img.ovl.1']);
    block.close();
  });

  it('probes past other keys that share a home sector, and reports a damaged record instead of using it', () => {
    const dir = makeDir();
    const base = blankImage(dir);
    // Two keys with the same home sector on a 64-sector disk.
    const keys: string[] = [];
    const homes = new Map<number, string>();
    for (let i = 0; keys.length < 2; i++) {
      const key = `k${i}`;
      const home = fnv(FNV_BASIS, new TextEncoder().encode(key)) % SECTORS;
      if (homes.has(home)) keys.push(homes.get(home)!, key);
      homes.set(home, key);
    }
    const [first, second] = keys as [string, string];
    const machine = boot(`record put ${first} one put ${second} two get ${first} get ${second}`, base);
    expect(finish(machine)).toEqual({ kind: 'halted', exitCode: Exit.OK });
    expect(programLines(machine.output.text())).toEqual([`record: put ${first} = one`, `record: put ${second} = two`, `record: get ${first} = one`, `record: get ${second} = two`]);
    const disk = machine.devices.block!.disk;
    expect(locate(disk, second).sector).toBe((locate(disk, first).sector + 1) % SECTORS);
    // Damage the first record (its checksum no longer matches): the program refuses it.
    const damaged = encodeRecord(first, 'one');
    damaged[80] ^= 0xff;
    disk.write(locate(disk, first).sector, damaged);
    const topPath = disk.topPath!;
    machine.devices.block!.close();
    const again = boot(`record get ${second}`, topPath);
    expect(finish(again)).toEqual({ kind: 'halted', exitCode: Exit.PROGRAM_FAILED });
    expect(programLines(again.output.text())).toEqual([`record: get ${second}: damaged record`]);
    expect(again.output.text()).toContain('[kernel] pid 1 (record) exited with code 2');
    again.devices.block!.close();
  });

  it('without a disk: record says so and fails; the program list in errors names every program either way', () => {
    const noDisk = boot('record put a b', undefined);
    expect(finish(noDisk)).toEqual({ kind: 'halted', exitCode: Exit.PROGRAM_FAILED });
    const lines = noDisk.output.text().split('\n');
    expect(lines[0]).toBe('nanokernel: 16 MiB RAM, 1 vCPU, 4 devices');
    expect(lines.filter((line) => line.startsWith('[kernel] disk'))).toEqual([]);
    expect(programLines(noDisk.output.text())).toEqual(['record: no disk']);
    const unknown = boot('bogus', undefined);
    finish(unknown);
    expect(unknown.output.text()).toContain("(programs: sieve crc32 walker ping fault record wc heap reader idle kvcache meminfo pmkv)\n");
    const withDisk = boot('bogus', blankImage(makeDir()));
    finish(withDisk);
    expect(withDisk.output.text()).toContain("(programs: sieve crc32 walker ping fault record wc heap reader idle kvcache meminfo pmkv)\n");
    withDisk.devices.block!.close();
  });

  it('refuses bad record arguments like the other programs', () => {
    const machine = boot(`record put k ${'v'.repeat(433)}`, blankImage(makeDir()));
    expect(finish(machine)).toEqual({ kind: 'halted', exitCode: Exit.PROGRAM_FAILED });
    expect(programLines(machine.output.text())).toEqual([`record: bad argument '${'v'.repeat(64)}'`]);
    const other = boot('record add k x9 get k', blankImage(makeDir()));
    finish(other);
    expect(programLines(other.output.text())).toEqual(["record: bad argument 'x9'"]);
    for (const m of [machine, other]) m.devices.block!.close();
  });
});

describe('the disk follows forks and checkpoints', () => {
  it('a fork mid-run: parent and child go on with disks of their own over a sealed overlay that never changes', () => {
    const dir = makeDir();
    const base = blankImage(dir);
    const args = 'record put a apple add n 1 add n 1 add n 1 add b 1 get b get n';
    const parent = boot(args, base);
    runUntil(parent, 'record: add n = 1');
    const atFork = parent.output.text();
    const parentBlock = parent.devices.block!;
    const beforeFork = diskHash(parentBlock.disk);

    let child: Machine | null = null;
    const childVm = parent.hv.forkVm(parent.vm, {
      name: 'child',
      attach: (vm) => {
        const output = new CaptureSink();
        child = { hv: parent.hv, vm, output, devices: attachStandardDevices(vm, { output, bootArgs: args, disk: base }) };
      },
    });
    const forked = child! as Machine;
    expect(forked.vm).toBe(childVm);
    // The fork sealed the parent's overlay: both disks now stand on it.
    const sealed = join(dir, 'disk.img.ovl.1');
    const sealedHash = fileHash(sealed);
    expect(parentBlock.disk.describe().map((layer) => layer.path)).toEqual([base, sealed]);
    expect(forked.devices.block!.disk.describe().map((layer) => layer.path)).toEqual([base, sealed]);
    expect(diskHash(forked.devices.block!.disk)).toBe(beforeFork);
    // Another writer changes the child's disk before the child gets to "add b": only the child sees it.
    const childDisk = forked.devices.block!.disk;
    childDisk.write(locate(childDisk, 'b').sector, encodeRecord('b', '100'));

    expect(finish(parent)).toEqual({ kind: 'halted', exitCode: Exit.OK });
    expect(finish(forked)).toEqual({ kind: 'halted', exitCode: Exit.OK });
    expect(programLines(atFork)).toEqual(['record: put a = apple', 'record: add n = 1']);
    expect(programLines(parent.output.text().slice(atFork.length))).toEqual(['record: add n = 2', 'record: add n = 3', 'record: add b = 1', 'record: get b = 1', 'record: get n = 3']);
    expect(programLines(forked.output.text())).toEqual(['record: add n = 2', 'record: add n = 3', 'record: add b = 101', 'record: get b = 101', 'record: get n = 3']);
    expect(records(parentBlock.disk)).toEqual({ a: 'apple', n: '3', b: '1' });
    expect(records(childDisk)).toEqual({ a: 'apple', n: '3', b: '101' });
    // Each wrote into its own top overlay; the sealed one and the image did not change.
    const parentTop = parentBlock.disk.topPath!;
    const childTop = childDisk.topPath!;
    expect(new Set([parentTop, childTop, sealed]).size).toBe(3);
    expect(fileHash(sealed)).toBe(sealedHash);
    expect(readFileSync(base).every((byte) => byte === 0)).toBe(true);
    const atForkDisk = DiskChain.open(sealed);
    expect(records(atForkDisk)).toEqual({ a: 'apple', n: '1' });
    atForkDisk.close();
    parentBlock.close();
    forked.devices.block!.close();
  });

  it('a checkpoint mid-run restores a VM that sees exactly the disk of that moment, however much was written since', () => {
    const dir = makeDir();
    const base = blankImage(dir);
    const args = 'record put a apple add n 1 add n 1 add n 1 add n 1 put a apricot get a get n';
    const original = boot(args, base);
    runUntil(original, 'record: add n = 2');
    const atCheckpoint = original.output.text();
    const diskAtCheckpoint = diskHash(original.devices.block!.disk);
    const checkpoint = join(dir, 'vm.ckpt');
    saveVmCheckpoint(original.vm, checkpoint);

    // The original goes on and writes more.
    expect(finish(original)).toEqual({ kind: 'halted', exitCode: Exit.OK });
    const after = programLines(original.output.text().slice(atCheckpoint.length));
    expect(after).toEqual(['record: add n = 3', 'record: add n = 4', 'record: put a = apricot', 'record: get a = apricot', 'record: get n = 4']);
    expect(records(original.devices.block!.disk)).toEqual({ a: 'apricot', n: '4' });

    // Two restores (eager and lazy memory): each starts from the checkpoint's disk and replays
    // the rest of the run exactly, into a top overlay of its own.
    const tops = new Set([original.devices.block!.disk.topPath]);
    for (const mode of ['eager', 'lazy'] as const) {
      let devices: StandardDevices | null = null;
      const output = new CaptureSink();
      const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
      const restored = restoreVmCheckpoint(hv, checkpoint, {
        mode,
        attach: (vm, saved) => {
          devices = attachStandardDevices(vm, { output, bootArgs: savedBootArgs(saved.components['bootargs']!.state), disk: base });
        },
      });
      const machine: Machine = { hv, vm: restored.vm, devices: devices!, output };
      const state = restored.saved.components['block']!.state as BlockState;
      expect(state.chain).toEqual([base, join(dir, 'disk.img.ovl.1')]);
      expect(diskHash(machine.devices.block!.disk)).toBe(diskAtCheckpoint);
      expect(records(machine.devices.block!.disk)).toEqual({ a: 'apple', n: '2' });
      expect(finish(machine)).toEqual({ kind: 'halted', exitCode: Exit.OK });
      expect(programLines(output.text())).toEqual(after);
      expect(records(machine.devices.block!.disk)).toEqual({ a: 'apricot', n: '4' });
      tops.add(machine.devices.block!.disk.topPath);
      machine.devices.block!.close();
    }
    expect(tops.size).toBe(3);
    // The checkpoint's chain still reads as the disk did at that moment.
    const saved = DiskChain.open(join(dir, 'disk.img.ovl.1'));
    expect(diskHash(saved)).toBe(diskAtCheckpoint);
    saved.close();
    original.devices.block!.close();
  });
});

describe('tools/run --disk', () => {
  const run = runTool;

  it('boots the nanokernel on a disk; the next run opens the overlay and finds the record; a bad disk is one error line', async () => {
    const dir = makeDir();
    const base = blankImage(dir);
    const first = await run(['examples/nanokernel/kernel.s', '--disk', base, '--', 'record', 'put', 'k', 'v']);
    expect(first.code).toBe(Exit.OK);
    expect(programLines(first.stdout)).toEqual(['record: put k = v']);
    const second = await run(['examples/nanokernel/kernel.s', '--disk', `${base}.ovl.1`, '--', 'record', 'get', 'k']);
    expect(second.code).toBe(Exit.OK);
    expect(programLines(second.stdout)).toEqual(['record: get k = v']);
    const odd = join(dir, 'odd.img');
    writeFileSync(odd, new Uint8Array(100));
    const bad = await run(['examples/nanokernel/kernel.s', '--disk', odd, '--', 'record', 'get', 'k']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^error: .*odd\.img: a raw disk image must be a positive multiple of 512 bytes/)]);
    expect(bad.stdout).toBe('');
  });
});
