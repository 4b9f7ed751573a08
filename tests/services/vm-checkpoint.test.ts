// VM checkpoints (services/checkpoint/vm-checkpoint.ts, restore.ts; docs/checkpoints.md): a guest
// stopped at an exact instruction, saved, and restored eagerly, lazily and by mapping into a fresh
// hypervisor must finish exactly like an uninterrupted run (console output, exit code, memory,
// instruction count). Lazy restore reads nothing up front and then exactly the blocks accessed;
// map mode shares the file without changing it; damage stops the VM naming the block.
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { boot, MiB, restore, runFor, runToEnd, type Outcome } from './vm-machine.ts';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { assemble, assembleFile } from '../../guest-isa/assembler.ts';
import { HostFile } from '../../native/index.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { attachStandardDevices, savedBootArgs } from '../../devices/index.ts';
import { createHypervisor, KernelError, PageState, REGION_PAGES, type Vm } from '../../kernel/index.ts';
import {
  CheckpointError,
  CheckpointReader,
  diffCheckpoints,
  PAGE_BYTES,
  restoreVmCheckpoint,
  saveVmCheckpoint,
  vmCheckpointContents,
  VmCheckpointError,
  writeCheckpoint,
  type RestoreMode,
} from '../../services/checkpoint/index.ts';
import {
  BLOCK_ENTRY_BYTES,
  checksum,
  decodeHeader,
  decodeSectionTable,
  encodeHeader,
  encodeSectionTable,
  FIRST_BLOCK_OFFSET,
  SECTION_HEAD_BYTES,
  SectionType,
} from '../../services/checkpoint/format.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-vm-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MODES: readonly RestoreMode[] = ['eager', 'lazy', 'map'];
const NANOKERNEL = assembleFile(join(import.meta.dirname, '..', '..', 'examples/nanokernel/kernel.s')).image;
const NANOKERNEL_ARGS = 'sieve 100000 crc32 65536 walker 4M random 2 ping 3 fault';

/**
 * A guest that writes every page of RAM above DATA_BASE on each pass: it folds one word of each
 * page into an FNV-style hash and stores back values derived from it, so every page's contents
 * depend on the whole history. Prints the hash after each pass; exits with its low 7 bits.
 */
function pageWriter(memoryBytes: number, passes: number): GuestImage {
  const source = `
        .equ    HCALL_EXIT, 1
        .equ    HCALL_CONSOLE_WRITE, 2
        .equ    DATA_BASE, 0x10000
        .equ    RAM_END, ${memoryBytes}
        .text
        .global _start
_start: li      s0, ${passes}
        li      s1, 0x01000193
        li      s2, 0x811c9dc5
        li      s3, 0
pass:   li      t0, DATA_BASE
        li      t1, RAM_END
page:   slli    t2, s3, 4
        andi    t2, t2, 0xffc
        add     t2, t2, t0
        lw      t3, 0(t2)
        xor     s2, s2, t3
        mul     s2, s2, s1
        add     t3, s2, s3
        sw      t3, 0(t2)
        sw      s2, 0(t0)
        addi    s3, s3, 1
        addi    t0, t0, 4096
        bne     t0, t1, page
        call    print_hex
        addi    s0, s0, -1
        bnez    s0, pass
        andi    a1, s2, 0x7f
        li      a0, HCALL_EXIT
        hcall
1:      j       1b
print_hex:
        la      a1, digits
        li      t2, 28
2:      srl     t3, s2, t2
        andi    t3, t3, 15
        addi    t3, t3, 48
        li      a3, 58
        blt     t3, a3, 3f
        addi    t3, t3, 39
3:      sb      t3, 0(a1)
        addi    a1, a1, 1
        addi    t2, t2, -4
        bgez    t2, 2b
        li      a0, HCALL_CONSOLE_WRITE
        la      a1, digits
        li      a2, 9
        hcall
        ret
        .data
digits: .ascii  "00000000\\n"
`;
  return assemble(source, { fileName: 'pagewriter.s' }).image;
}

const fileHash = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

function lazyCount(vm: Vm): number {
  return vm.memory.census().absent.lazy ?? 0;
}

// ---------------------------------------------------------------------------------------------

describe('checkpoint and restore of the nanokernel at an exact instruction', () => {
  const memoryBytes = 64 * MiB;
  const stopAt = 1_500_000;
  const path = join(dir, 'nanokernel.ckpt');
  let reference: Outcome;
  let prefix: string;

  it('saves mid-run without disturbing the running guest', () => {
    reference = runToEnd(boot(NANOKERNEL, memoryBytes, NANOKERNEL_ARGS));
    expect(reference.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(reference.instructions).toBeGreaterThan(stopAt * 2);

    const machine = boot(NANOKERNEL, memoryBytes, NANOKERNEL_ARGS);
    prefix = runFor(machine, stopAt);
    expect(prefix.length).toBeGreaterThan(0);
    expect(reference.output.startsWith(prefix)).toBe(true);
    expect(reference.output.length).toBeGreaterThan(prefix.length);
    const stats = saveVmCheckpoint(machine.vm, path, { stagingBytes: 64 * 1024 });
    expect(stats.pagesStored).toBeGreaterThan(100);
    expect(stats.blocks).toBeGreaterThan(20);
    expect(stats.pagesStored + stats.zeroPages).toBe(memoryBytes / PAGE_BYTES);
    expect(runToEnd(machine)).toEqual(reference);
  });

  for (const mode of MODES) {
    it(`restores in ${mode} mode into a fresh hypervisor and finishes exactly like an uninterrupted run`, () => {
      const before = fileHash(path);
      const machine = restore(path, memoryBytes, { mode });
      const { restored, vm } = machine;
      expect(vm.instructionsRetired).toBe(stopAt);
      if (mode === 'lazy') {
        expect(restored.blocksRead).toBe(0);
        // Nothing was filled in at restore: every region is deferred (O(regions), not O(pages)).
        expect(lazyCount(vm)).toBe(0);
        expect(vm.memory.pendingRegionCount).toBe(Math.ceil(vm.memory.pageCount / REGION_PAGES));
        expect(restored.complete).toBe(false);
      } else {
        expect(restored.complete).toBe(true);
        expect(lazyCount(vm)).toBe(0);
      }
      if (mode === 'map') {
        expect(restored.blocksMapped).toBe(restored.blockCount);
        expect(restored.pagesMapped).toBe(restored.storedPages);
        expect(machine.hv.poolStats().fileMappedFrames).toBe(restored.storedPages);
      }
      const outcome = runToEnd(machine, () => {
        if (mode !== 'lazy') return;
        // The guest asked for some blocks, the prefetcher brought in the rest while it ran.
        expect(restored.complete).toBe(true);
        expect(restored.demandReads).toBeGreaterThan(0);
        expect(restored.prefetched).toBeGreaterThan(0);
        expect(restored.demandReads + restored.prefetched).toBe(restored.blockCount);
        expect(restored.blocksRead).toBe(restored.blockCount);
        expect(lazyCount(vm)).toBe(0);
      });
      expect(prefix + outcome.output).toBe(reference.output);
      expect(outcome.reason).toEqual(reference.reason);
      expect(outcome.instructions).toBe(reference.instructions);
      expect(outcome.memory).toBe(reference.memory);
      if (mode === 'map') {
        // Guest writes went to private copies: the file is byte for byte what was saved.
        expect(fileHash(path)).toBe(before);
        const reader = CheckpointReader.open(path);
        expect(() => reader.verifyAll()).not.toThrow();
        reader.close();
      }
      restored.close();
    });
  }
});

describe('checkpoint and restore of a guest that writes every page', () => {
  const memoryBytes = 8 * MiB;
  const image = pageWriter(memoryBytes, 30);
  const stopAt = 123_457; // mid-pass
  const staging = 64 * 1024; // 16-page blocks: many of them
  let reference: Outcome;
  let prefix: string;
  const raw = join(dir, 'pagewriter-raw.ckpt');
  const lz4 = join(dir, 'pagewriter-lz4.ckpt');

  it('saves raw and lz4 files at the same instruction', () => {
    reference = runToEnd(boot(image, memoryBytes));
    expect(reference.output.split('\n')).toHaveLength(31);
    const machine = boot(image, memoryBytes);
    prefix = runFor(machine, stopAt);
    const rawStats = saveVmCheckpoint(machine.vm, raw, { stagingBytes: staging });
    const lz4Stats = saveVmCheckpoint(machine.vm, lz4, { stagingBytes: staging, compression: 'lz4' });
    expect(rawStats.blocks).toBeGreaterThan(100);
    expect(lz4Stats.lz4Blocks).toBeGreaterThan(0);
    expect(lz4Stats.fileBytes).toBeLessThan(rawStats.fileBytes);
    const [a, b] = [CheckpointReader.open(raw), CheckpointReader.open(lz4)];
    expect(diffCheckpoints(a, b).equal).toBe(true);
    a.close();
    b.close();
  });

  for (const [file, mode] of [[raw, 'lazy'], [raw, 'eager'], [raw, 'map'], [lz4, 'lazy'], [lz4, 'eager'], [lz4, 'map']] as const) {
    it(`${mode} restore of the ${file === raw ? 'raw' : 'lz4'} file finishes like the uninterrupted run`, () => {
      const machine = restore(file, memoryBytes, { mode, prefetch: { blocksPerTick: 4 } });
      if (mode === 'map' && file === lz4) {
        // Compressed blocks cannot be mapped: they are read instead.
        expect(machine.restored.blocksMapped).toBe(machine.restored.blockCount - countLz4(file));
        expect(machine.restored.pagesInstalled).toBeGreaterThan(0);
      }
      const outcome = runToEnd(machine);
      expect(prefix + outcome.output).toBe(reference.output);
      expect(outcome).toMatchObject({ reason: reference.reason, instructions: reference.instructions, memory: reference.memory });
      machine.restored.close();
    });
  }

  it('lazy restore reads no block up front, then exactly the blocks that accesses need', () => {
    const { vm, restored, hv } = restore(raw, memoryBytes, { mode: 'lazy', prefetch: false });
    const reader = CheckpointReader.open(raw);
    expect(restored.blocksRead).toBe(0);
    expect(lazyCount(vm)).toBe(0); // regions are deferred until first use
    vm.memory.fillAllRegions(); // fill them in (reads the index, no block) to count what waits
    expect(restored.blocksRead).toBe(0);
    expect(lazyCount(vm)).toBe(reader.summary().storedPages);

    // A host read of one page brings in its whole block, and only that block.
    const codeBlock = reader.blockOfPage(vm.vcpus[0]!.pc >>> 12);
    const gpn = 1000;
    const block = reader.blockOfPage(gpn);
    expect(block).not.toBe(codeBlock);
    const expected = reader.readPage(gpn);
    expect(vm.readPhysical(gpn * PAGE_BYTES, PAGE_BYTES)).toEqual(expected);
    expect(restored.blocksRead).toBe(1);
    for (const page of reader.blockInfo(block).gpns) expect(vm.memory.stateOf(page)).toBe(PageState.PRESENT);
    expect(lazyCount(vm)).toBe(reader.summary().storedPages - reader.blockInfo(block).pageCount);
    // Another page of the same block costs nothing.
    vm.readPhysical(reader.blockInfo(block).gpns[3]! * PAGE_BYTES, 4);
    expect(restored.blocksRead).toBe(1);

    // The guest's first instruction needs its code page's block (and any data page it touches):
    // every block read was asked for by exactly one access to a lazy page.
    const [result] = hv.run({ maxInstructions: 1 }, [vm]);
    expect(result!.reason).toEqual({ kind: 'budget' });
    expect(vm.memory.stateOf(vm.vcpus[0]!.pc >>> 12)).toBe(PageState.PRESENT);
    expect(restored.blocksRead).toBeGreaterThanOrEqual(2);
    hv.run({ maxInstructions: 5_000 }, [vm]);
    expect(restored.demandReads).toBe(restored.blocksRead);
    expect(vm.exits.absent.lazy).toBe(restored.demandReads);
    expect(restored.blocksRead).toBeLessThan(restored.blockCount);
    // Each page written so far lies in a block that was read; the rest is still lazy.
    expect(lazyCount(vm)).toBeGreaterThan(0);
    restored.finishRestore();
    expect(restored.complete).toBe(true);
    expect(lazyCount(vm)).toBe(0);
    expect(restored.blocksRead).toBe(restored.blockCount);
    reader.close();
    restored.close();
  });

  it('saving a half-restored lazy VM reads its lazy pages through the resolver: same file contents', () => {
    const { vm, restored } = restore(raw, memoryBytes, { mode: 'lazy', prefetch: false });
    vm.readPhysical(500 * PAGE_BYTES, 4);
    const copy = join(dir, 'pagewriter-copy.ckpt');
    saveVmCheckpoint(vm, copy);
    expect(restored.complete).toBe(true); // every stored page had to be read to be saved
    const [a, b] = [CheckpointReader.open(raw), CheckpointReader.open(copy)];
    expect(diffCheckpoints(a, b)).toMatchObject({ equal: true, differingPages: 0 });
    a.close();
    b.close();
  });

  it('a guest reset during a lazy restore drops the pages not yet read: RAM is the image again', () => {
    const machine = restore(raw, memoryBytes, { mode: 'lazy', prefetch: false });
    const { vm, restored } = machine;
    vm.readPhysical(0x20000, 4); // one block in
    const readBefore = restored.blocksRead;
    vm.reset();
    expect(lazyCount(vm)).toBe(0);
    expect(restored.complete).toBe(true);
    expect(restored.discardedByReset).toBeGreaterThan(0);
    expect(restored.blocksRead).toBe(readBefore);
    expect(vm.readPhysical(0x100000, PAGE_BYTES)).toEqual(new Uint8Array(PAGE_BYTES));
    for (const vcpu of vm.vcpus) vcpu.instret = 0; // what the power device's reset does
    const outcome = runToEnd(machine);
    expect(outcome.output).toBe(reference.output);
    expect(outcome.reason).toEqual(reference.reason);
    restored.close();
  });
});

/**
 * Swaps the first two gpns of a block's page list and fixes every checksum above them (the
 * list's CRC in the block entry, the entry's CRC, both sections', the table's, the header's): only
 * a comparison with the memory index can tell.
 */
function swapPageList(file: Uint8Array, block: number): Uint8Array {
  return editFile(file, (view, sectionAt) => {
    const entryAt = sectionAt(SectionType.BLOCK_TABLE) + SECTION_HEAD_BYTES + block * BLOCK_ENTRY_BYTES;
    const listAt = sectionAt(SectionType.BLOCK_PAGES) + SECTION_HEAD_BYTES + view.getUint32(entryAt + 24, true) * 4;
    const pageCount = view.getUint32(entryAt + 12, true);
    const first = view.getUint32(listAt, true);
    view.setUint32(listAt, view.getUint32(listAt + 4, true), true);
    view.setUint32(listAt + 4, first, true);
    const bytes = new Uint8Array(view.buffer);
    view.setUint32(entryAt + 28, checksum(bytes.subarray(listAt, listAt + pageCount * 4)), true);
    view.setUint32(entryAt + 36, checksum(bytes.subarray(entryAt, entryAt + 36)), true);
  });
}

/** Applies `edit` to a copy of a checkpoint file, then fixes every section's CRC, the table's and the header's. */
function editFile(file: Uint8Array, edit: (view: DataView, sectionAt: (type: number) => number) => void): Uint8Array {
  const bytes = new Uint8Array(file);
  const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
  const sections = decodeSectionTable(bytes.subarray(header.sectionTableOffset), header);
  edit(new DataView(bytes.buffer), (type) => sections.get(type)!.offset);
  for (const section of sections.values()) section.crc = checksum(bytes.subarray(section.offset, section.offset + section.length));
  const tableBytes = encodeSectionTable([...sections.values()]);
  bytes.set(tableBytes, header.sectionTableOffset);
  bytes.set(encodeHeader({ ...header, sectionTableCrc: checksum(tableBytes) }), 0);
  return bytes;
}

function countLz4(path: string): number {
  const reader = CheckpointReader.open(path);
  const count = reader.summary().lz4Blocks;
  reader.close();
  return count;
}

describe('lazy restore cost does not grow with memory size', () => {
  it('restoring and running the first instruction reads the same index bytes for 8 MiB and 128 MiB', () => {
    const spin = assemble('_start: j _start\n').image;
    const indexBytesRead = (memoryBytes: number): { read: number; indexBytes: number } => {
      const path = join(dir, `spin-${memoryBytes}.ckpt`);
      const machine = boot(spin, memoryBytes);
      saveVmCheckpoint(machine.vm, path);
      const bytes = readFileSync(path);
      const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
      const sections = decodeSectionTable(bytes.subarray(header.sectionTableOffset), header);
      const index = [SectionType.MEMORY_INDEX, SectionType.INDEX_CRCS, SectionType.BLOCK_TABLE, SectionType.BLOCK_PAGES].map((type) => sections.get(type)!);
      const reads: [number, number][] = [];
      const original = HostFile.prototype.pread;
      const spy = vi.spyOn(HostFile.prototype, 'pread').mockImplementation(function (this: HostFile, target: Uint8Array, offset: number) {
        reads.push([offset, target.length]);
        return original.call(this, target, offset);
      });
      try {
        const { hv, vm, restored } = restore(path, memoryBytes, { mode: 'lazy', prefetch: false });
        const [result] = hv.run({ maxInstructions: 1 }, [vm]);
        expect(result!.reason).toEqual({ kind: 'budget' });
        expect(restored.demandReads).toBe(1);
      } finally {
        spy.mockRestore();
      }
      const read = reads
        .filter(([offset]) => index.some((section) => offset >= section.offset && offset < section.offset + section.length))
        .reduce((sum, [, length]) => sum + length, 0);
      return { read, indexBytes: sections.get(SectionType.MEMORY_INDEX)!.length };
    };
    const small = indexBytesRead(8 * MiB);
    const large = indexBytesRead(128 * MiB);
    expect(large.read).toBe(small.read);
    expect(large.read).toBeLessThan(large.indexBytes / 16); // a region of a 256 KiB index, not all of it
  });

  it('once every block is in, the prefetcher reads the index of the regions never used', () => {
    const memoryBytes = 128 * MiB;
    const { hv, vm, restored } = restore(join(dir, `spin-${memoryBytes}.ckpt`), memoryBytes, { mode: 'lazy', prefetch: { everyInstructions: 1000, blocksPerTick: 4 } });
    hv.run({ maxInstructions: 1 }, [vm]);
    expect(restored.complete).toBe(true); // the image fits one block
    expect(vm.memory.pendingRegionCount).toBeGreaterThan(20);
    // Tickers run between scheduling rounds (20,000 instructions): 4 regions each.
    hv.run({ maxInstructions: 20_000 * 10 }, [vm]);
    expect(vm.memory.pendingRegionCount).toBe(0);
    expect(lazyCount(vm)).toBe(0);
    restored.close();
  });
});

describe('damaged and mismatched checkpoints', () => {
  const memoryBytes = 4 * MiB;
  const image = pageWriter(memoryBytes, 20);
  const good = join(dir, 'small.ckpt');
  const damaged = join(dir, 'small-damaged.ckpt');
  const badBlock = 3;

  it('a flipped bit in a block: lazy restore starts, then the VM stops with a host error naming the block', () => {
    const machine = boot(image, memoryBytes);
    runFor(machine, 50_000);
    saveVmCheckpoint(machine.vm, good, { stagingBytes: 64 * 1024 });
    const bytes = readFileSync(good);
    const reader = CheckpointReader.open(good);
    bytes[reader.blockInfo(badBlock).fileOffset + 5000]! ^= 0x10;
    const pageInBadBlock = reader.blockInfo(badBlock).gpns[0]!;
    reader.close();
    writeFileSync(damaged, bytes);

    for (const prefetch of [false, {}] as const) {
      const { hv, vm, restored } = restore(damaged, memoryBytes, { mode: 'lazy', prefetch });
      expect(restored.blocksRead).toBe(0);
      const [result] = hv.run({ maxInstructions: 1_000_000 }, [vm]);
      expect(result!.reason.kind).toBe('host-error');
      const message = (result!.reason as { message: string }).message;
      expect(message).toContain(`block ${badBlock}: checksum mismatch`);
      expect(message).toContain(damaged);
      expect(message).toMatch(prefetch === false ? /lazy restore of guest page \d+ failed/ : /lazy restore of (guest page \d+|the prefetcher) failed/);
    }

    // A host access to a page of the bad block fails the same way, with a typed error.
    const { vm } = restore(damaged, memoryBytes, { mode: 'lazy', prefetch: false });
    let error: unknown;
    try {
      vm.readPhysical(pageInBadBlock * PAGE_BYTES, 4);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(CheckpointError);
    expect(error).toMatchObject({ code: 'BV_CKPT_CHECKSUM', where: `block ${badBlock}` });
    expect(vm.memory.stateOf(pageInBadBlock)).not.toBe(PageState.PRESENT); // nothing wrong was installed
  });

  it('page lists that disagree with the index (checksums fixed): lazy restore refuses the page, installing nothing wrong', () => {
    const reader = CheckpointReader.open(good);
    const block = 5;
    const [first, second] = reader.pagesOfBlock(block);
    reader.close();
    const path = join(dir, 'small-swapped.ckpt');
    writeFileSync(path, swapPageList(readFileSync(good), block));
    expect(() => CheckpointReader.open(path)).toThrow(expect.objectContaining({ code: 'BV_CKPT_CORRUPT', where: 'section BLOCK_PAGES' }));
    const { vm, restored } = restore(path, memoryBytes, { mode: 'lazy', prefetch: false });
    let error: unknown;
    try {
      vm.readPhysical(first! * PAGE_BYTES, 4);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(CheckpointError);
    expect(error).toMatchObject({ code: 'BV_CKPT_CORRUPT', where: 'section BLOCK_PAGES' });
    expect((error as Error).message).toContain(`puts page ${second} in block ${block}`);
    expect(vm.memory.stateOf(first!)).not.toBe(PageState.PRESENT);
    expect(vm.memory.stateOf(second!)).not.toBe(PageState.PRESENT);
    expect(restored.pagesInstalled).toBe(0);
  });

  it('a damaged index region: lazy restore starts, every access to the region fails, none reads zero', () => {
    const reader = CheckpointReader.open(good);
    const page = reader.pagesOfBlock(2)[0]!;
    reader.close();
    const path = join(dir, 'small-bad-region.ckpt');
    // The slot of `page` changes; only the region's own CRC (in INDEX_CRCS) can tell.
    writeFileSync(path, editFile(readFileSync(good), (view, sectionAt) => {
      const at = sectionAt(SectionType.MEMORY_INDEX) + SECTION_HEAD_BYTES + (memoryBytes / PAGE_BYTES + page) * 4;
      view.setUint32(at, view.getUint32(at, true) ^ 1, true);
    }));
    const { hv, vm, restored } = restore(path, memoryBytes, { mode: 'lazy', prefetch: false });
    for (let attempt = 0; attempt < 2; attempt++) {
      let error: unknown;
      try {
        vm.readPhysical(page * PAGE_BYTES, 4);
      } catch (caught) {
        error = caught;
      }
      expect(error).toMatchObject({ code: 'BV_CKPT_CHECKSUM', where: 'section MEMORY_INDEX' });
      expect((error as Error).message).toMatch(/^lazy restore of guest pages 0-1023 failed: .*region 0: checksum mismatch/);
    }
    const [result] = hv.run({ maxInstructions: 10 }, [vm]);
    expect(result!.reason.kind).toBe('host-error');
    expect(restored.blocksRead).toBe(0);
    expect(vm.memory.stateOf(page)).not.toBe(PageState.PRESENT);
  });

  for (const mode of ['eager', 'map'] as const) {
    it(`${mode} restore of the damaged file is refused, naming the block, and leaves no VM behind`, () => {
      const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
      expect(() => restoreVmCheckpoint(hv, damaged, { mode, attach: (vm, saved) => attachStandardDevices(vm, { bootArgs: savedBootArgs(saved.components.bootargs!.state) }) }))
        .toThrow(expect.objectContaining({ code: 'BV_CKPT_CHECKSUM', where: `block ${badBlock}` }));
      expect(hv.vms).toHaveLength(0);
      expect(hv.poolStats().usedFrames).toBe(0);
    });
  }

  it('a configuration whose memory size disagrees with the memory index is refused clearly', () => {
    const machine = boot(image, memoryBytes);
    const contents = vmCheckpointContents(machine.vm, machine.vm.captureState(), undefined);
    (contents.config.vm as { memoryBytes: number }).memoryBytes = 2 * memoryBytes;
    const path = join(dir, 'wrong-size.ckpt');
    writeCheckpoint(path, contents, { page: () => null });
    const hv = createHypervisor({ hostMemoryBytes: 16 * MiB });
    expect(() => restoreVmCheckpoint(hv, path, { mode: 'lazy' })).toThrow(VmCheckpointError);
    expect(() => restoreVmCheckpoint(hv, path, { mode: 'lazy' })).toThrow(
      `${path}: the configuration says ${2 * memoryBytes} bytes of guest memory, but the memory index covers 1024 pages (${memoryBytes} bytes)`,
    );
    expect(hv.vms).toHaveLength(0);
  });

  it('a checkpoint that is not of a VM, a VM lacking a saved component, and a bad mode are refused', () => {
    const plain = join(dir, 'plain.ckpt');
    writeCheckpoint(plain, { config: { purpose: 'test' }, cpus: [], devices: {}, pageCount: 4 }, { page: () => null });
    const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
    expect(() => restoreVmCheckpoint(hv, plain, { mode: 'eager' })).toThrow(expect.objectContaining({ code: 'BV_VMCKPT_NOT_VM' }));
    // No attach: the file's 'console' (and other) states have nowhere to go.
    expect(() => restoreVmCheckpoint(hv, good, { mode: 'eager' })).toThrow(KernelError);
    expect(() => restoreVmCheckpoint(hv, good, { mode: 'eager' })).toThrow(/saved state has component '\w+' that this VM lacks/);
    expect(() => restoreVmCheckpoint(hv, good, { mode: 'sideways' as RestoreMode })).toThrow(expect.objectContaining({ code: 'BV_VMCKPT_BAD_REQUEST' }));
    expect(() => restoreVmCheckpoint(hv, good, { mode: 'lazy', prefetch: { blocksPerTick: 0 } })).toThrow(expect.objectContaining({ code: 'BV_VMCKPT_BAD_REQUEST' }));
    expect(hv.vms).toHaveLength(0);
    expect(hv.poolStats().usedFrames).toBe(0);
  });

  it('map mode needs an anonymous host pool', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 * MiB, backingFile: join(dir, 'pool.bin') });
    expect(() => restoreVmCheckpoint(hv, good, { mode: 'map' })).toThrow(expect.objectContaining({ code: 'BV_VMCKPT_BAD_REQUEST', message: expect.stringContaining('anonymous host pool') }));
  });
});
