/**
 * The block device (devices/block.ts, docs/block-device.md) and its disk chains
 * (devices/disk-image.ts): the registers as a bare guest sees them, DMA in both directions and
 * every error status; reads falling through the chain, writes landing only in the top overlay,
 * damaged and mismatched files refused; the 'block' state sealing the top overlay on save and
 * reopening the chain with a fresh top on restore — all checked on the real files' bytes.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceType } from '../../guest-isa/arch.ts';
import { assemble } from '../../guest-isa/assembler.ts';
import {
  attachStandardDevices, BLOCK_MAX_COUNT, BlockCommand, BlockRegister, BlockStatus, CaptureSink, decodeOverlayHeader, DISK_SECTOR_BYTES,
  DiskChain, DiskError, encodeOverlayHeader, OVERLAY_HEADER_BYTES, OverlayFlag, OverlayHeaderOffset, overlayDataOffset, runWithResets,
  savedBlockDisk, type BlockState, type StandardDevices,
} from '../../devices/index.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { AbsentState, createHypervisor, OutOfHostMemoryError, PageWaitError, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { CheckpointReader, restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { GUEST_LIBRARY, hexWords } from './harness.ts';

const root = mkdtempSync(join(tmpdir(), 'bv-block-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const SECTOR = DISK_SECTOR_BYTES;
/** A fresh directory per test: overlay names (<base>.ovl.<n>) start at 1 in each. */
function makeDir(): string {
  return mkdtempSync(join(root, 'd'));
}

/** A raw image whose sector i is filled with byte (i + 1) & 0xff. */
function rawImage(dir: string, sectors: number, name = 'base.img'): string {
  const bytes = new Uint8Array(sectors * SECTOR);
  for (let i = 0; i < sectors; i++) bytes.fill((i + 1) & 0xff, i * SECTOR, (i + 1) * SECTOR);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const filled = (byte: number, sectors = 1): Uint8Array => new Uint8Array(sectors * SECTOR).fill(byte);
/** The byte each sector of `disk` starts with (sectors are written uniformly in these tests). */
const firstBytes = (disk: DiskChain): number[] => Array.from({ length: disk.sectors }, (_, s) => disk.read(s, 1)[0]!);

function expectDiskError(action: () => unknown, code: string, message?: RegExp): void {
  let thrown: unknown;
  try {
    action();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(DiskError);
  expect((thrown as DiskError).code).toBe(code);
  if (message) expect((thrown as DiskError).message).toMatch(message);
}

/** Rewrites an overlay header through `edit` (with a correct CRC, so only the edit is "wrong"). */
function editHeader(path: string, edit: (header: ReturnType<typeof decodeOverlayHeader>) => void): void {
  const bytes = readFileSync(path);
  const header = decodeOverlayHeader(bytes.subarray(0, OVERLAY_HEADER_BYTES), path);
  edit(header);
  bytes.set(encodeOverlayHeader(header), 0);
  writeFileSync(path, bytes);
}

// ---------------------------------------------------------------------------------------------
// The registers, seen from a bare guest

const REGISTER_EQUS = Object.entries(BlockRegister).map(([name, offset]) => `        .equ    BLK_${name}, ${offset}`).join('\n');
const COMMAND_EQUS = Object.entries(BlockCommand).map(([name, value]) => `        .equ    CMD_${name}, ${value}`).join('\n');

/** Prints a0 as hex and a space (s0 = console). */
const PRINT = `
        mv      a1, s0
        call    put_hex
        putc    s0, 32`;

function command(sector: number, count: number, dma: number, cmd: string | number, sectorHigh = 0): string {
  return `
        li      t0, ${sector}
        sw      t0, BLK_SECTOR_LOW(s1)
        li      t0, ${sectorHigh}
        sw      t0, BLK_SECTOR_HIGH(s1)
        li      t0, ${count}
        sw      t0, BLK_COUNT(s1)
        li      t0, ${dma}
        sw      t0, BLK_DMA_ADDRESS(s1)
        li      t0, ${cmd}
        sw      t0, BLK_COMMAND(s1)
        lw      a0, BLK_STATUS(s1)${PRINT}`;
}

interface Booted {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: string;
  exitCode: number;
}

const RAM = 1 << 20;

function bootWithDisk(program: string, disk: string): Booted {
  const { image } = assemble(`${GUEST_LIBRARY}\n${REGISTER_EQUS}\n${COMMAND_EQUS}\n${program}`, { fileName: 'guest.s' });
  const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
  const vm = hv.createVm({ memoryBytes: RAM });
  const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk });
  vm.loadImage(image);
  const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000 });
  if (run.reason.kind !== 'halted') throw new Error(`guest did not halt: ${JSON.stringify(run.reason)}`);
  return { hv, vm, devices, output: devices.captured!.text(), exitCode: run.reason.exitCode };
}

const WRITE_BUFFER = 0x8000;
const READ_BUFFER = 0x9000;
const pattern = (word: number): number => (word * 0x9e3779b1 + 0x5a5a) >>> 0;

describe('block device registers', () => {
  it('publishes the disk in the device table, moves sectors by DMA both ways, and reports every bad request in STATUS', () => {
    const dir = makeDir();
    const base = rawImage(dir, 64);
    const baseHash = sha(base);
    const booted = bootWithDisk(`
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, ${DeviceType.BLOCK}
        call    find_device
        mv      s1, a0
        mv      a0, a1                  # info = sectors${PRINT}
        lw      a0, BLK_CAPACITY_LOW(s1)${PRINT}
        lw      a0, BLK_CAPACITY_HIGH(s1)${PRINT}
        lw      a0, BLK_SECTOR_BYTES(s1)${PRINT}
        lw      a0, BLK_MAX_COUNT(s1)${PRINT}
        lw      a0, BLK_STATUS(s1)${PRINT}
        li      t0, ${WRITE_BUFFER}     # two sectors of pattern words
        li      t1, 0
        li      t2, 0x9e3779b1
1:      mul     t3, t1, t2
        li      a0, 0x5a5a
        add     t3, t3, a0
        slli    a0, t1, 2
        add     a0, a0, t0
        sw      t3, 0(a0)
        addi    t1, t1, 1
        li      a0, 256
        bltu    t1, a0, 1b
        ${command(3, 2, WRITE_BUFFER, 'CMD_WRITE')}
        ${command(3, 2, READ_BUFFER, 'CMD_READ')}
        li      t0, ${WRITE_BUFFER}     # words that differ after the round trip
        li      t1, ${READ_BUFFER}
        li      a0, 0
        li      t3, 256
2:      lw      a1, 0(t0)
        lw      a2, 0(t1)
        beq     a1, a2, 3f
        addi    a0, a0, 1
3:      addi    t0, t0, 4
        addi    t1, t1, 4
        addi    t3, t3, -1
        bnez    t3, 2b${PRINT}
        ${command(0, 1, READ_BUFFER, 'CMD_READ')}
        li      t0, ${READ_BUFFER}
        lw      a0, 0(t0)${PRINT}
        ${command(63, 1, RAM - SECTOR, 'CMD_READ')}
        ${command(0, 0, READ_BUFFER, 'CMD_READ')}
        ${command(0, BLOCK_MAX_COUNT + 1, READ_BUFFER, 'CMD_READ')}
        ${command(63, 2, READ_BUFFER, 'CMD_READ')}
        ${command(0, 1, READ_BUFFER, 'CMD_WRITE', 1)}
        ${command(0, 1, RAM - SECTOR + 4, 'CMD_READ')}
        ${command(0, 1, 0xf0000000, 'CMD_READ')}
        ${command(0, 1, 0xfffffe00, 'CMD_WRITE')}
        ${command(0, 1, READ_BUFFER, 9)}
        ${command(0, 0, 0, 'CMD_FLUSH')}
        lw      a0, BLK_SECTOR_LOW(s1)${PRINT}
        lw      a0, BLK_DMA_ADDRESS(s1)${PRINT}
        lw      a0, BLK_COMMAND(s1)${PRINT}
        exit    0
`, base);
    const { OK, BAD_RANGE, BAD_DMA, BAD_COMMAND } = BlockStatus;
    expect(booted.exitCode).toBe(0);
    expect(hexWords(booted.output)).toEqual([
      64, 64, 0, SECTOR, BLOCK_MAX_COUNT, OK,
      OK, OK, 0, // write, read back, no word differs
      OK, 0x01010101, // sector 0 comes from the base image
      OK, // the last sector into the last 512 bytes of RAM
      BAD_RANGE, BAD_RANGE, BAD_RANGE, BAD_RANGE, // count 0, count too big, past the end, SECTOR_HIGH set
      BAD_DMA, BAD_DMA, BAD_DMA, // past the end of RAM, the device table, wrapping around
      BAD_COMMAND, OK, // unknown command, flush
      0, 0, 0, // registers hold what was written; COMMAND reads 0
    ]);
    const block = booted.devices.block!;
    const expected = new Uint8Array(2 * SECTOR);
    const view = new DataView(expected.buffer);
    for (let word = 0; word < 256; word++) view.setUint32(word * 4, pattern(word), true);
    expect(block.disk.read(3, 2)).toEqual(expected);
    expect(new Uint8Array(booted.vm.readPhysical(RAM - SECTOR, SECTOR))).toEqual(filled(64));
    expect(block.stats).toEqual({
      reads: 3, writes: 1, flushes: 1, sectorsRead: 4, sectorsWritten: 2, errors: 8,
      asyncSubmitted: 0, asyncCompleted: 0, asyncInFlightMax: 0, asyncLatencySumNs: 0, asyncLatencyEwmaNs: 0,
    });
    // The base is never written: the write created the top overlay next to it.
    expect(sha(base)).toBe(baseHash);
    expect(block.disk.topPath).toBe(join(dir, 'base.img.ovl.1'));
    expect(block.disk.describe().map((layer) => [layer.kind, layer.sealed, layer.sectorsHeld])).toEqual([['raw', true, 64], ['overlay', false, 2]]);
    block.close();
  });

  it('keeps the disk across a VM reset but clears the registers; a host I/O failure is an IO_ERROR status', () => {
    const dir = makeDir();
    const base = rawImage(dir, 8);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    const { block } = attachStandardDevices(vm, { output: new CaptureSink(), disk: base });
    const vcpu = vm.vcpus[0]!;
    block!.disk.write(2, filled(0xee));
    block!.write(vcpu, BlockRegister.SECTOR_LOW, 2);
    block!.write(vcpu, BlockRegister.COUNT, 1);
    block!.write(vcpu, BlockRegister.DMA_ADDRESS, 0x4000);
    vm.reset();
    expect([BlockRegister.SECTOR_LOW, BlockRegister.COUNT, BlockRegister.DMA_ADDRESS, BlockRegister.STATUS].map((r) => block!.read(vcpu, r))).toEqual([0, 0, 0, 0]);
    expect(block!.disk.read(2, 1)).toEqual(filled(0xee));
    // The disk's files are closed under the device: the guest sees IO_ERROR, the host keeps why.
    block!.disk.close();
    block!.write(vcpu, BlockRegister.COUNT, 1);
    block!.write(vcpu, BlockRegister.COMMAND, BlockCommand.READ);
    expect(block!.read(vcpu, BlockRegister.STATUS)).toBe(BlockStatus.IO_ERROR);
    expect(block!.lastError?.code).toBe('BV_DISK_CLOSED');
    // The host learns of it through the error log; the VM is not stopped (the guest saw the error).
    expect(block!.hostErrors).toEqual([expect.objectContaining({ command: 'read', kind: 'disk', error: block!.lastError })]);
    expect(vm.stopReason).toEqual({ kind: 'running' });
  });
});

// ---------------------------------------------------------------------------------------------
// Chains

describe('disk chains', () => {
  it('reads fall through the chain to the first file holding a sector; writes go only to the top', () => {
    const dir = makeDir();
    const base = rawImage(dir, 8);
    const baseHash = sha(base);
    const disk = DiskChain.open(base);
    expect(disk.topPath).toBeNull(); // nothing is created before the first write
    expect(readdirSync(dir)).toEqual(['base.img']);
    disk.write(1, filled(0xa1));
    disk.write(5, filled(0xa5, 2));
    const first = disk.checkpoint();
    const sealed = join(dir, 'base.img.ovl.1');
    expect(first.chain).toEqual([base, sealed]);
    const sealedHash = sha(sealed);
    disk.write(1, filled(0xb1)); // overwrite a sector the sealed overlay holds: lands in a new top
    disk.write(2, filled(0xb2));
    expect(disk.topPath).toBe(join(dir, 'base.img.ovl.2'));
    expect(firstBytes(disk)).toEqual([1, 0xb1, 0xb2, 4, 5, 0xa5, 0xa5, 8]);
    expect(disk.read(4, 3)).toEqual(new Uint8Array([...filled(5), ...filled(0xa5, 2)])); // one read across three runs
    expect(sha(base)).toBe(baseHash);
    expect(sha(sealed)).toBe(sealedHash);
    disk.close();

    // Reopening the top follows the recorded backing paths; the unsealed top stays writable.
    const reopened = DiskChain.open(join(dir, 'base.img.ovl.2'));
    expect(firstBytes(reopened)).toEqual([1, 0xb1, 0xb2, 4, 5, 0xa5, 0xa5, 8]);
    expect(reopened.describe().map((layer) => [layer.kind, layer.sealed, layer.sectorsHeld])).toEqual([
      ['raw', true, 8], ['overlay', true, 3], ['overlay', false, 2],
    ]);
    reopened.write(7, filled(0xc7));
    expect(reopened.topPath).toBe(join(dir, 'base.img.ovl.2'));
    reopened.close();
    // The saved chain still reads as it was when it was saved.
    const restored = DiskChain.restore(first);
    expect(firstBytes(restored)).toEqual([1, 0xa1, 3, 4, 5, 0xa5, 0xa5, 8]);
    restored.close();
  });

  it('a blank disk reads zeros below its first overlay, and an overlay opened directly keeps its writes', () => {
    const dir = makeDir();
    const path = join(dir, 'blank.bvd');
    const disk = DiskChain.createBlank(path, 16);
    expect(disk.read(0, 16)).toEqual(new Uint8Array(16 * SECTOR));
    disk.write(9, filled(0x99));
    disk.flush();
    disk.close();
    const again = DiskChain.open(path);
    expect(again.topPath).toBe(path);
    expect(firstBytes(again)).toEqual(Array.from({ length: 16 }, (_, s) => (s === 9 ? 0x99 : 0)));
    const state = again.checkpoint(); // a blank disk's only overlay is sealed even when it is the whole chain
    expect(state.chain).toEqual([path]);
    again.write(0, filled(0x10));
    expect(again.topPath).toBe(join(dir, 'blank.bvd.ovl.1'));
    again.close();
    expect(() => DiskChain.createBlank(join(dir, 'too-big'), 2 ** 24 + 1)).toThrow(DiskError);
    expectDiskError(() => DiskChain.createBlank(path, 4), 'BV_DISK_IO', /EEXIST|exists/); // never over an existing file
  });

  it('a crash between data and map leaves unreferenced bytes that reads ignore and later writes reuse', () => {
    const dir = makeDir();
    const base = rawImage(dir, 4);
    const disk = DiskChain.open(base);
    disk.write(0, filled(0xd0));
    const top = disk.topPath!;
    disk.close();
    // A second sector's data reached the file, its map entry did not (the write order guarantees
    // it is never the other way round).
    writeFileSync(top, filled(0xdd), { flag: 'a' });
    const reopened = DiskChain.open(top);
    expect(firstBytes(reopened)).toEqual([0xd0, 2, 3, 4]);
    reopened.write(3, filled(0xd3));
    expect(firstBytes(reopened)).toEqual([0xd0, 2, 3, 0xd3]);
    reopened.close();
    expect(readFileSync(top).length).toBe(overlayDataOffset(4) + 2 * SECTOR);
  });

  it('keeps the chain equal to a model through any sequence of writes, checkpoints, reopens and restores', () => {
    const SECTORS = 12;
    const op = fc.oneof(
      fc.record({ kind: fc.constant('write' as const), first: fc.integer({ min: 0, max: SECTORS - 1 }), count: fc.integer({ min: 1, max: 4 }), byte: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constantFrom('checkpoint' as const, 'reopen' as const, 'restore' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 14 }), (ops) => {
        const dir = makeDir();
        const base = rawImage(dir, SECTORS);
        const model = Array.from({ length: SECTORS }, (_, s) => s + 1);
        let disk = DiskChain.open(base);
        let saved: { state: ReturnType<DiskChain['checkpoint']>; model: number[] } | null = null;
        for (const step of ops) {
          if (step.kind === 'write') {
            const count = Math.min(step.count, SECTORS - step.first);
            disk.write(step.first, filled(step.byte, count));
            for (let s = step.first; s < step.first + count; s++) model[s] = step.byte;
          } else if (step.kind === 'checkpoint') {
            saved = { state: disk.checkpoint(), model: [...model] };
          } else if (step.kind === 'reopen') {
            const top = disk.topPath ?? disk.describe().at(-1)!.path;
            disk.close();
            disk = DiskChain.open(top);
          } else if (saved) {
            disk.close();
            disk = DiskChain.restore(saved.state);
            model.splice(0, SECTORS, ...saved.model);
          }
          expect(firstBytes(disk)).toEqual(model);
        }
        disk.close();
        rmSync(dir, { recursive: true, force: true });
      }),
      { numRuns: 40 },
    );
  });
});

describe('damaged and mismatched files', () => {
  /** base.img, a sealed base.img.ovl.1 holding sector 1, and an unsealed top base.img.ovl.2 holding sector 2. */
  function chain(): { dir: string; base: string; sealed: string; top: string; state: ReturnType<DiskChain['checkpoint']> } {
    const dir = makeDir();
    const base = rawImage(dir, 8);
    const disk = DiskChain.open(base);
    disk.write(1, filled(0x11));
    const state = disk.checkpoint();
    disk.write(2, filled(0x22));
    const top = disk.topPath!;
    disk.close();
    return { dir, base, sealed: join(dir, 'base.img.ovl.1'), top, state };
  }

  it('refuses a damaged header, another format version, and a raw image of the wrong size', () => {
    const { top, dir } = chain();
    const bytes = readFileSync(top);
    bytes[OverlayHeaderOffset.SECTORS] ^= 0x01;
    writeFileSync(top, bytes);
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_DAMAGED', /checksum/);
    bytes[OverlayHeaderOffset.SECTORS] ^= 0x01;
    bytes[OverlayHeaderOffset.VERSION] = 2;
    writeFileSync(top, bytes);
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_VERSION');
    const odd = join(dir, 'odd.img');
    writeFileSync(odd, new Uint8Array(1000));
    expectDiskError(() => DiskChain.open(odd), 'BV_DISK_BAD_IMAGE');
    expectDiskError(() => DiskChain.open(join(dir, 'missing.img')), 'BV_DISK_IO', /ENOENT|no such file/i);
  });

  it('refuses a sealed overlay whose map or size changed, and an open overlay whose map points past its end', () => {
    const { sealed, top } = chain();
    const original = readFileSync(sealed);
    const remapped = Buffer.from(original);
    remapped.writeUInt32LE(1, OVERLAY_HEADER_BYTES + 4 * 3); // sector 3 -> slot 0 as well
    writeFileSync(sealed, remapped);
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_DAMAGED', /checksum|two sectors/);
    writeFileSync(sealed, Buffer.concat([original, filled(0x33)]));
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_DAMAGED', /sealed overlay holds/);
    writeFileSync(sealed, original);
    const topBytes = readFileSync(top);
    const pointing = Buffer.from(topBytes);
    pointing.writeUInt32LE(7, OVERLAY_HEADER_BYTES + 4 * 6); // the top holds one slot
    writeFileSync(top, pointing);
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_DAMAGED', /past the end/);
    truncateSync(top, OVERLAY_HEADER_BYTES + 8);
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_DAMAGED', /cut short/);
  });

  it('refuses a chain over another base, over an unsealed overlay, or other files than a saved state names', () => {
    const { base, sealed, top, state, dir } = chain();
    // The base changed after overlays were made over it (same size, other bytes).
    const baseBytes = readFileSync(base);
    writeFileSync(base, filled(0x77, 8));
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_MISMATCH', /was not created over/);
    expectDiskError(() => DiskChain.restore(state), 'BV_DISK_MISMATCH');
    writeFileSync(base, baseBytes);
    // A sealed overlay whose seal was taken off could change under the overlay above it.
    const sealedBytes = readFileSync(sealed);
    editHeader(sealed, (header) => {
      header.flags &= ~OverlayFlag.SEALED;
      header.sealedSlots = 0;
      header.mapCrc = 0;
    });
    expectDiskError(() => DiskChain.open(top), 'BV_DISK_MISMATCH', /not sealed/);
    writeFileSync(sealed, sealedBytes);
    const restored = DiskChain.restore(state);
    expect(firstBytes(restored)).toEqual([1, 0x11, 3, 4, 5, 6, 7, 8]);
    restored.close();
    // A byte-identical copy of the base is the same disk (identity is the content)…
    const copy = join(dir, 'copy.img');
    writeFileSync(copy, baseBytes);
    const fromCopy = DiskChain.restore({ ...state, chain: [copy, sealed] });
    expect(firstBytes(fromCopy)).toEqual([1, 0x11, 3, 4, 5, 6, 7, 8]);
    fromCopy.close();
    // …other bytes are not; nor are other ids or malformed states.
    const otherBase = join(dir, 'other.img');
    writeFileSync(otherBase, filled(0x42, 8));
    expectDiskError(() => DiskChain.restore({ ...state, chain: [otherBase, sealed] }), 'BV_DISK_MISMATCH');
    expectDiskError(() => DiskChain.restore({ ...state, ids: [state.ids[0], '0'.repeat(32)] }), 'BV_DISK_MISMATCH');
    expectDiskError(() => DiskChain.restore({ ...state, chain: [base, top], ids: [state.ids[0], decodeOverlayHeader(readFileSync(top), top).id] }), 'BV_DISK_MISMATCH', /not sealed/);
    expectDiskError(() => DiskChain.restore({ ...state, chain: ['base.img', sealed] }), 'BV_DISK_BAD_STATE');
    expectDiskError(() => DiskChain.restore({ ...state, sectorBytes: 4096 }), 'BV_DISK_BAD_STATE');
    expectDiskError(() => DiskChain.restore(null), 'BV_DISK_BAD_STATE');
    // An overlay moved away from its backing file: the recorded path no longer leads to it.
    const moved = join(makeDir(), 'moved.ovl');
    writeFileSync(moved, readFileSync(top));
    expectDiskError(() => DiskChain.open(moved), 'BV_DISK_IO', /ENOENT|no such file/i);
  });
});

// ---------------------------------------------------------------------------------------------
// Checkpoint and fork state

describe("the 'block' state component", () => {
  function machine(disk: string): { vm: Vm; devices: StandardDevices } {
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    return { vm, devices: attachStandardDevices(vm, { output: new CaptureSink(), disk }) };
  }

  it('save seals the top overlay and moves writes to a new one; restore reopens the chain read-only with its own top', () => {
    const dir = makeDir();
    const base = rawImage(dir, 8);
    const parent = machine(base);
    const block = parent.devices.block!;
    block.disk.write(0, filled(0xa0));
    block.write(parent.vm.vcpus[0]!, BlockRegister.SECTOR_LOW, 5);
    const saved = JSON.parse(JSON.stringify(parent.vm.captureState())) as ReturnType<Vm['captureState']>; // as a checkpoint file would carry it
    const state = saved.components['block']!.state as BlockState;
    const sealed = join(dir, 'base.img.ovl.1');
    expect(state.chain).toEqual([base, sealed]);
    expect(state.registers.sectorLow).toBe(5);
    const sealedBytes = readFileSync(sealed);
    const header = decodeOverlayHeader(sealedBytes, sealed);
    expect(header.flags & OverlayFlag.SEALED).toBe(OverlayFlag.SEALED);
    expect(header.sealedSlots).toBe(1);
    expect(sealedBytes.length).toBe(overlayDataOffset(8) + SECTOR);

    // The parent keeps writing: a new top, the sealed file does not change.
    block.disk.write(0, filled(0xb0));
    block.disk.write(1, filled(0xb1));
    expect(block.disk.topPath).toBe(join(dir, 'base.img.ovl.2'));
    expect(readFileSync(sealed).equals(sealedBytes)).toBe(true);

    // Two restores of the same state: each sees the saved disk and writes into its own top.
    const children = [machine(base), machine(base)];
    children.forEach((child, index) => {
      child.vm.restoreState(saved);
      const disk = child.devices.block!.disk;
      expect(firstBytes(disk)).toEqual([0xa0, 2, 3, 4, 5, 6, 7, 8]);
      expect(child.devices.block!.read(child.vm.vcpus[0]!, BlockRegister.SECTOR_LOW)).toBe(5);
      disk.write(3, filled(0xc0 + index));
      expect(disk.topPath).toBe(join(dir, `base.img.ovl.${3 + index}`));
    });
    expect(firstBytes(children[0]!.devices.block!.disk)).toEqual([0xa0, 2, 3, 0xc0, 5, 6, 7, 8]);
    expect(firstBytes(children[1]!.devices.block!.disk)).toEqual([0xa0, 2, 3, 0xc1, 5, 6, 7, 8]);
    expect(firstBytes(block.disk)).toEqual([0xb0, 0xb1, 3, 4, 5, 6, 7, 8]);
    expect(readFileSync(sealed).equals(sealedBytes)).toBe(true);

    // A second save with nothing written since leaves the chain as it is (no empty overlays pile up).
    const again = children[1]!.vm.captureState().components['block']!.state as BlockState;
    expect(again.chain).toEqual([base, sealed, join(dir, 'base.img.ovl.4')]);
    expect((children[1]!.vm.captureState().components['block']!.state as BlockState).chain).toEqual(again.chain);
    for (const vmAndDevices of [parent, ...children]) vmAndDevices.devices.block!.close();
    expect(existsSync(join(dir, 'base.img.ovl.5'))).toBe(false);
  });

  it('a restore onto a disk of another size is refused', () => {
    const dir = makeDir();
    const parent = machine(rawImage(dir, 8));
    const saved = parent.vm.captureState();
    const other = machine(rawImage(dir, 16, 'big.img'));
    expect(() => other.vm.restoreState(saved)).toThrow(/saved disk has 8 sectors/);
    expect(firstBytes(other.devices.block!.disk)).toHaveLength(16); // the old disk is still in place
    parent.devices.block!.close();
    other.devices.block!.close();
  });
});

// ---------------------------------------------------------------------------------------------
// Whose fault: the guest's stays in STATUS, the host's reaches the host

describe('guest faults and host faults', () => {
  /** Finds the block device (s1), issues one command on sector 2 with the DMA buffer at `dma`, exits with STATUS. */
  function oneCommand(cmd: number, dma: number): GuestImage {
    return assemble(`${GUEST_LIBRARY}\n${REGISTER_EQUS}\n${COMMAND_EQUS}
_start: li      a0, ${DeviceType.BLOCK}
        call    find_device
        mv      s1, a0
        li      t0, 2
        sw      t0, BLK_SECTOR_LOW(s1)
        li      t0, 1
        sw      t0, BLK_COUNT(s1)
        li      t0, ${dma}
        sw      t0, BLK_DMA_ADDRESS(s1)
        li      t0, ${cmd}
        sw      t0, BLK_COMMAND(s1)
        lw      a0, BLK_STATUS(s1)
        exit_reg a0
`, { fileName: 'guest.s' }).image;
  }

  it('guest faults (range, command, DMA outside RAM) are STATUS values only: the VM runs on and the host log stays empty', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    const { block } = attachStandardDevices(vm, { output: new CaptureSink(), disk: rawImage(makeDir(), 8) });
    const vcpu = vm.vcpus[0]!;
    const status = (registers: [number, number][], command: number): number => {
      for (const [offset, value] of registers) block!.write(vcpu, offset, value);
      block!.write(vcpu, BlockRegister.COMMAND, command);
      return block!.read(vcpu, BlockRegister.STATUS);
    };
    expect(status([[BlockRegister.SECTOR_LOW, 7], [BlockRegister.COUNT, 2], [BlockRegister.DMA_ADDRESS, 0]], BlockCommand.READ)).toBe(BlockStatus.BAD_RANGE);
    expect(status([[BlockRegister.SECTOR_LOW, 0], [BlockRegister.COUNT, 0]], BlockCommand.WRITE)).toBe(BlockStatus.BAD_RANGE);
    expect(status([[BlockRegister.COUNT, 1]], 99)).toBe(BlockStatus.BAD_COMMAND);
    expect(status([[BlockRegister.DMA_ADDRESS, RAM - 100]], BlockCommand.READ)).toBe(BlockStatus.BAD_DMA);
    expect(status([[BlockRegister.DMA_ADDRESS, 0xf000_1000]], BlockCommand.WRITE)).toBe(BlockStatus.BAD_DMA);
    expect(vm.stopReason).toEqual({ kind: 'running' });
    expect(block!.hostErrors).toEqual([]);
    expect(block!.hostErrorCount).toBe(0);
    expect(block!.stats.errors).toBe(5);
    block!.close();
  });

  it('a disk that fails is IO_ERROR for the guest and an error-log entry for the host; the VM runs on', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: rawImage(makeDir(), 8) });
    vm.loadImage(oneCommand(BlockCommand.READ, 0x4000));
    devices.block!.disk.close(); // every later disk access fails on the host
    const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000 });
    expect(run.reason).toEqual({ kind: 'halted', exitCode: BlockStatus.IO_ERROR });
    expect(devices.block!.hostErrors).toHaveLength(1);
    expect(devices.block!.hostErrors[0]).toMatchObject({ command: 'read', sector: 2, count: 1, kind: 'disk', error: { code: 'BV_DISK_CLOSED' } });
    expect(devices.block!.hostErrors[0]!.atInstruction).toBeGreaterThan(0);
    expect(devices.block!.lastError).toBe(devices.block!.hostErrors[0]!.error);
  });

  it('out of host memory for the DMA buffer stops the VM with a host error; the guest never sees a status', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 << 20 });
    const vm = hv.createVm({ memoryBytes: 8 << 20, largePages: 'off' });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: rawImage(makeDir(), 8) });
    vm.loadImage(oneCommand(BlockCommand.READ, 0x4000));
    // Take every free host frame with pages from 1 MiB up; the DMA buffer's page stays untouched.
    let exhausted: unknown;
    for (let gpn = 256; gpn < (8 << 20) / 4096 && exhausted === undefined; gpn++) {
      try {
        vm.writePhysical(gpn * 4096, Uint8Array.of(1));
      } catch (error) {
        exhausted = error;
      }
    }
    expect(exhausted).toBeInstanceOf(OutOfHostMemoryError);
    const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000 });
    expect(run.reason.kind).toBe('host-error');
    const reason = run.reason as { message: string; error?: unknown };
    expect(reason.message).toMatch(/^block device: read of sectors 2\+1 could not fill its DMA buffer at guest-physical 0x4000\+512: out of host memory/);
    expect(reason.error).toBeInstanceOf(OutOfHostMemoryError);
    expect(devices.block!.hostErrors).toEqual([expect.objectContaining({ command: 'read', kind: 'memory', error: reason.error })]);
    devices.block!.close();
  });

  it('a DMA buffer page still on another host (post-copy) makes the VM wait; the command runs again, whole, once the page is in', () => {
    const WAIT = 'waiting for the test to deliver a page';
    for (const cmd of [BlockCommand.READ, BlockCommand.WRITE]) {
      const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
      const vm = hv.createVm({ memoryBytes: RAM });
      const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: rawImage(makeDir(), 8) });
      const dma = 0x40000;
      const gpn = dma / 4096;
      vm.loadImage(oneCommand(cmd, dma));
      let asked = 0;
      vm.memory.onAbsent(AbsentState.REMOTE, () => {
        asked++;
        throw new PageWaitError(WAIT, `guest page ${gpn} is not here yet`);
      });
      vm.memory.releasePages([gpn], AbsentState.REMOTE);
      const first = hv.run({ maxInstructions: 1_000_000 }, [vm])[0]!;
      expect(first.reason).toEqual({ kind: 'paused', reason: WAIT });
      expect(asked).toBeGreaterThan(0);
      const block = devices.block!;
      expect([block.stats.reads, block.stats.writes, block.stats.errors, block.hostErrors.length]).toEqual([0, 0, 0, 0]);
      expect(block.disk.topPath).toBeNull(); // a write reached nothing
      // The page arrives (as post-copy installs it) and the VM is resumed: the COMMAND store runs again.
      vm.memory.installPage(gpn, filled(0x5a, 8));
      vm.resume();
      const second = hv.run({ maxInstructions: 1_000_000 }, [vm])[0]!;
      expect(second.reason).toEqual({ kind: 'halted', exitCode: 0 }); // STATUS OK
      if (cmd === BlockCommand.READ) {
        expect([block.stats.reads, block.stats.writes]).toEqual([1, 0]);
        expect(vm.readPhysical(dma, SECTOR)).toEqual(filled(3)); // sector 2 of the base
        expect(vm.readPhysical(dma + SECTOR, SECTOR)).toEqual(filled(0x5a)); // the rest of the page as delivered
      } else {
        expect([block.stats.reads, block.stats.writes]).toEqual([0, 1]);
        expect(block.disk.read(2, 1)).toEqual(filled(0x5a)); // the delivered buffer, written once
      }
      expect(block.hostErrors).toEqual([]);
      block.close();
    }
  });

  it('a lazy restore that cannot read the DMA buffer stops the VM with a host error, and nothing reaches the disk', () => {
    const dir = makeDir();
    const base = rawImage(dir, 8);
    const dma = 0x40000;
    const checkpoint = join(dir, 'vm.ckpt');
    {
      const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
      const vm = hv.createVm({ memoryBytes: RAM });
      const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: base });
      vm.loadImage(oneCommand(BlockCommand.WRITE, dma));
      vm.writePhysical(dma, filled(0x5a));
      saveVmCheckpoint(vm, checkpoint, { stagingBytes: 4096 }); // one page per block
      devices.block!.close();
    }
    const bytes = readFileSync(checkpoint);
    const reader = CheckpointReader.open(checkpoint);
    const damaged = Array.from({ length: reader.blockCount }, (_, block) => reader.blockInfo(block)).find((info) => info.gpns.includes(dma / 4096))!;
    bytes[damaged.fileOffset + 100]! ^= 0x01;
    reader.close();
    writeFileSync(checkpoint, bytes);

    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    let devices: StandardDevices | undefined;
    const restored = restoreVmCheckpoint(hv, checkpoint, {
      mode: 'lazy',
      prefetch: false,
      attach: (vm, saved) => {
        devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: savedBlockDisk(saved.components['block']!.state) });
      },
    });
    const run = runWithResets(hv, restored.vm, devices!, { maxInstructions: 1_000_000 });
    expect(run.reason.kind).toBe('host-error');
    const reason = run.reason as { message: string; error?: unknown };
    expect(reason.message).toMatch(/^block device: write of sectors 2\+1 could not read its DMA buffer at guest-physical 0x40000\+512: lazy restore of guest page 64 failed: .*checksum mismatch/);
    expect(reason.error).toMatchObject({ code: 'BV_CKPT_CHECKSUM' });
    expect(devices!.block!.hostErrors).toEqual([expect.objectContaining({ command: 'write', kind: 'memory', error: reason.error })]);
    // The guest's write never happened: no overlay was created for it, sector 2 is as it was.
    expect(devices!.block!.disk.topPath).toBeNull();
    expect(devices!.block!.disk.read(2, 1)).toEqual(filled(3));
    devices!.block!.close();
    hv.destroyVm(restored.vm); // close() would otherwise finish the restore, reading the damaged block
    restored.close();
  });
});
