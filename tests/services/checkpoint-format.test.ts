// The checkpoint container (services/checkpoint, docs/checkpoint-format.md): round trips of state
// and memory, the staging-buffer block layout (raw blocks aligned and mappable), lazy opening,
// the streaming writer, refusal of every kind of damage with an error naming the bad part, diff,
// and tools/snapshot as a child process.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { BvError } from '../../guest-isa/errors.ts';
import { HostFile, HostRegion } from '../../native/index.ts';
import {
  CheckpointError,
  CheckpointReader,
  CheckpointWriter,
  diffCheckpoints,
  PAGE_BYTES,
  removeStaleTempFiles,
  writeCheckpoint,
  type CheckpointContents,
  type CheckpointErrorCode,
  type Compression,
} from '../../services/checkpoint/index.ts';
import {
  checksum,
  decodeHeader,
  decodeSectionTable,
  encodeHeader,
  encodeSectionTable,
  BLOCK_ENTRY_BYTES,
  FIRST_BLOCK_OFFSET,
  HEADER_BYTES,
  INDEX_REGION_PAGES,
  SECTION_ENTRY_BYTES,
  SECTION_HEAD_BYTES,
  SECTION_NAMES,
  SectionType,
  type SectionTypeName,
} from '../../services/checkpoint/format.ts';
import { prng } from '../kernel/fixtures/prng.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-ckpt-format-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());
let fileCounter = 0;
const freshPath = (name = 'vm') => join(dir, `${name}-${fileCounter++}.ckpt`);

// ---------------------------------------------------------------------------------------------
// Guest-like memory: zero pages, text (compressible), structured words, and noise.

/** The tests' PRNG (tests/kernel/fixtures/prng.ts) as floats in [0, 1). */
function mulberry32(seed: number): () => number {
  const next = prng(seed);
  return () => next() / 4294967296;
}

type PageKind = 'zero' | 'text' | 'words' | 'noise';

function makeMemory(pageCount: number, seed: number, kinds: readonly PageKind[] = ['zero', 'text', 'words', 'noise']): Uint8Array {
  const random = mulberry32(seed);
  const memory = new Uint8Array(pageCount * PAGE_BYTES);
  for (let gpn = 0; gpn < pageCount; gpn++) {
    const page = memory.subarray(gpn * PAGE_BYTES, (gpn + 1) * PAGE_BYTES);
    const kind = kinds[Math.floor(random() * kinds.length)]!;
    if (kind === 'text') {
      const text = `page ${gpn} seed ${seed} the quick brown fox `;
      for (let offset = 0; offset < PAGE_BYTES; offset++) page[offset] = text.charCodeAt(offset % text.length);
    } else if (kind === 'words') {
      const view = new DataView(page.buffer, page.byteOffset, PAGE_BYTES);
      for (let offset = 0; offset < PAGE_BYTES; offset += 16) view.setUint32(offset, gpn * 1000 + offset, true);
    } else if (kind === 'noise') {
      for (let offset = 0; offset < PAGE_BYTES; offset++) page[offset] = Math.floor(random() * 256);
    }
  }
  return memory;
}

function pageOf(memory: Uint8Array, gpn: number): Uint8Array {
  return memory.subarray(gpn * PAGE_BYTES, (gpn + 1) * PAGE_BYTES);
}

function isZero(bytes: Uint8Array): boolean {
  return bytes.every((byte) => byte === 0);
}

function sourceOf(memory: Uint8Array) {
  return { page: (gpn: number) => (isZero(pageOf(memory, gpn)) && gpn % 2 === 0 ? null : pageOf(memory, gpn)) };
}

function contentsFor(pageCount: number, extra = 0): CheckpointContents {
  return {
    config: { memoryBytes: pageCount * PAGE_BYTES, vcpus: 2, image: { name: 'kernel.bvx', entry: 4096 + extra }, overlay: '/tmp/disk.overlay' },
    cpus: [
      { pc: 0x1000 + extra, registers: [0, 1, -2, 3.5], mode: 'supervisor' },
      { pc: 0x2000, registers: [7, 8, 9], mode: 'user' },
    ],
    devices: {
      console: { version: 2, state: { column: 3 + extra, buffered: 'héllo' } },
      timer: { version: 1, state: { compare: [1, 2] } },
      disk: { version: 7, state: Uint8Array.of(1, 2, 3, 255, extra & 0xff) },
    },
    pageCount,
  };
}

/** Every page read back through readBlock equals the original memory; zero pages are -1. */
function expectMemory(reader: CheckpointReader, memory: Uint8Array): void {
  const pageCount = memory.length / PAGE_BYTES;
  expect(reader.pageCount).toBe(pageCount);
  const seen = new Uint8Array(pageCount);
  for (const block of reader.blocks()) {
    expect(block.data.length).toBe(block.gpns.length * PAGE_BYTES);
    block.gpns.forEach((gpn, slot) => {
      seen[gpn]++;
      expect(reader.blockOfPage(gpn)).toBe(block.block);
      expect(reader.slotOfPage(gpn)).toBe(slot);
      expect(Buffer.from(block.data.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES)).equals(Buffer.from(pageOf(memory, gpn)))).toBe(true);
    });
  }
  for (let gpn = 0; gpn < pageCount; gpn++) {
    if (seen[gpn] === 0) {
      expect(reader.blockOfPage(gpn)).toBe(-1);
      expect(isZero(pageOf(memory, gpn))).toBe(true);
    } else expect(seen[gpn]).toBe(1);
  }
}

/** Runs `action`, expects a CheckpointError with `code`, and returns it. */
function expectCheckpointError(action: () => unknown, code: CheckpointErrorCode): CheckpointError {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(CheckpointError);
  const error = caught as CheckpointError;
  expect(error.code, error.message).toBe(code);
  expect(error).toBeInstanceOf(BvError);
  return error;
}

function openAndVerify(path: string): CheckpointReader {
  const reader = CheckpointReader.open(path);
  try {
    reader.verifyAll();
  } catch (error) {
    reader.close();
    throw error;
  }
  return reader;
}

// ---------------------------------------------------------------------------------------------

describe('round trip', () => {
  const cases: [Compression, number][] = [
    ['none', PAGE_BYTES],
    ['none', 7 * PAGE_BYTES],
    ['none', 1 << 20],
    ['lz4', PAGE_BYTES],
    ['lz4', 5 * PAGE_BYTES],
    ['lz4', 64 * 1024],
    ['lz4', 1 << 20],
  ];
  it.each(cases)('compression %s, staging %i bytes: contents and every page come back', (compression, stagingBytes) => {
    const pageCount = 300;
    const memory = makeMemory(pageCount, stagingBytes + (compression === 'lz4' ? 1 : 0));
    const path = freshPath();
    const contents = contentsFor(pageCount);
    const stats = writeCheckpoint(path, contents, sourceOf(memory), { compression, stagingBytes });
    const zeroPages = Array.from({ length: pageCount }, (_, gpn) => isZero(pageOf(memory, gpn))).filter(Boolean).length;
    expect(stats.zeroPages).toBe(zeroPages);
    expect(stats.pagesStored).toBe(pageCount - zeroPages);
    expect(stats.blocks).toBe(Math.ceil((pageCount - zeroPages) / (stagingBytes / PAGE_BYTES)));
    expect(stats.fileBytes).toBe(readFileSync(path).length);
    const reader = openAndVerify(path);
    expect(reader.contents).toEqual(contents);
    expect(reader.formatVersion).toBe(1);
    expectMemory(reader, memory);
    const summary = reader.summary();
    expect(summary).toMatchObject({ storedPages: stats.pagesStored, zeroPages, blocks: stats.blocks, rawBlocks: stats.rawBlocks, lz4Blocks: stats.lz4Blocks });
    if (compression === 'none') expect(stats.lz4Blocks).toBe(0);
    else {
      expect(stats.lz4Blocks).toBeGreaterThan(0);
      expect(summary.compressionRatio).toBeCloseTo(stats.compressionRatio, 6);
      expect(stats.compressionRatio).toBeGreaterThan(1.2);
    }
    reader.close();
  });

  it('property: any memory, page order, staging size and compression round-trips', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 1, max: 9 }),
        fc.constantFrom<Compression>('none', 'lz4'),
        fc.integer(),
        (pageCount, stagingPages, compression, seed) => {
          const memory = makeMemory(pageCount, seed);
          const order = Array.from({ length: pageCount }, (_, gpn) => gpn);
          const random = mulberry32(seed ^ 0x5a5a);
          for (let index = order.length - 1; index > 0; index--) {
            const other = Math.floor(random() * (index + 1));
            [order[index], order[other]] = [order[other]!, order[index]!];
          }
          const path = freshPath('prop');
          const writer = CheckpointWriter.begin(path, { pageCount, compression, stagingBytes: stagingPages * PAGE_BYTES });
          for (const gpn of order) writer.addPage(gpn, pageOf(memory, gpn));
          const contents = contentsFor(pageCount, seed);
          writer.finish(contents);
          const reader = openAndVerify(path);
          expect(reader.contents).toEqual(contents);
          expectMemory(reader, memory);
          for (let gpn = 0; gpn < pageCount; gpn++) expect(Buffer.from(reader.readPage(gpn)).equals(Buffer.from(pageOf(memory, gpn)))).toBe(true);
          reader.close();
          rmSync(path);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('empty state, no pages, and device names that look like object internals', () => {
    const path = freshPath();
    const contents: CheckpointContents = {
      config: {},
      cpus: [],
      devices: { ['__proto__']: { version: 0, state: {} }, constructor: { version: 1, state: new Uint8Array(0) } },
      pageCount: 0,
    };
    writeCheckpoint(path, contents, { page: () => null });
    const reader = openAndVerify(path);
    expect(Object.keys(reader.contents.devices).sort()).toEqual(['__proto__', 'constructor']);
    expect(reader.contents.devices['__proto__']).toEqual({ version: 0, state: {} });
    expect(reader.blockCount).toBe(0);
    expect(reader.summary().compressionRatio).toBe(1);
    reader.close();
  });

  it('readBlock returns every page of the block and the block of a page holds it', () => {
    const pageCount = 64;
    const memory = makeMemory(pageCount, 3, ['text', 'noise']);
    const path = freshPath();
    writeCheckpoint(path, contentsFor(pageCount), sourceOf(memory), { stagingBytes: 16 * PAGE_BYTES, compression: 'lz4' });
    const reader = CheckpointReader.open(path);
    expect(reader.blockCount).toBe(4);
    const block = reader.readBlock(reader.blockOfPage(37));
    expect(Array.from(block.gpns)).toEqual(Array.from({ length: 16 }, (_, slot) => 32 + slot));
    expect(Buffer.from(block.data).equals(Buffer.from(memory.subarray(32 * PAGE_BYTES, 48 * PAGE_BYTES)))).toBe(true);
    expect(reader.blockInfo(2)).toMatchObject({ index: 2, pageCount: 16, gpns: block.gpns });
    reader.close();
  });
});

describe('block layout', () => {
  it('raw blocks start 4 KiB-aligned and hold their pages back to back (read with fs and mapped with mmap)', () => {
    const pageCount = 200;
    const memory = makeMemory(pageCount, 11);
    const path = freshPath();
    writeCheckpoint(path, contentsFor(pageCount), sourceOf(memory), { stagingBytes: 24 * PAGE_BYTES });
    const file = readFileSync(path);
    const reader = CheckpointReader.open(path);
    const region = HostRegion.anonymous(pageCount * PAGE_BYTES);
    try {
      const guest = new Uint8Array(region.buffer);
      let mappedRuns = 0;
      for (let block = 0; block < reader.blockCount; block++) {
        const extent = reader.rawBlockExtent(block)!;
        expect(extent).not.toBeNull();
        expect(extent.fileOffset % 4096).toBe(0);
        expect(extent.length).toBe(extent.gpns.length * PAGE_BYTES);
        extent.gpns.forEach((gpn, slot) => {
          const onDisk = file.subarray(extent.fileOffset + slot * PAGE_BYTES, extent.fileOffset + (slot + 1) * PAGE_BYTES);
          expect(onDisk.equals(Buffer.from(pageOf(memory, gpn)))).toBe(true);
        });
        expect(extent.runs.reduce((sum, run) => sum + run.pageCount, 0)).toBe(extent.gpns.length);
        for (const run of extent.runs) {
          region.mapFilePrivate(run.firstGpn * PAGE_BYTES, run.pageCount * PAGE_BYTES, path, run.fileOffset);
          mappedRuns++;
        }
      }
      expect(mappedRuns).toBeGreaterThan(reader.blockCount); // zero pages split blocks into several runs
      expect(Buffer.from(guest).equals(Buffer.from(memory))).toBe(true);
    } finally {
      region.close();
      reader.close();
    }
  });

  it('lz4 keeps incompressible batches raw (mappable) and compresses the rest', () => {
    const pageCount = 32;
    const text = makeMemory(pageCount / 2, 5, ['text']);
    const noise = makeMemory(pageCount / 2, 6, ['noise']);
    const memory = new Uint8Array(pageCount * PAGE_BYTES);
    memory.set(text, 0);
    memory.set(noise, text.length);
    const path = freshPath();
    const stats = writeCheckpoint(path, contentsFor(pageCount), sourceOf(memory), { compression: 'lz4', stagingBytes: 16 * PAGE_BYTES });
    expect(stats).toMatchObject({ blocks: 2, lz4Blocks: 1, rawBlocks: 1 });
    const reader = openAndVerify(path);
    expect(reader.rawBlockExtent(0)).toBeNull();
    expect(reader.rawBlockExtent(1)!.fileOffset % 4096).toBe(0);
    expect(reader.blockInfo(0).kind).toBe('lz4');
    expect(reader.blockInfo(0).storedBytes).toBeLessThan(16 * PAGE_BYTES / 4);
    expectMemory(reader, memory);
    reader.close();
  });

  it('opening reads no memory block: only the header, the section table and the sections', () => {
    const pageCount = 2048; // 8 MiB of memory, 8 blocks
    const memory = makeMemory(pageCount, 21, ['text', 'noise']);
    const path = freshPath();
    writeCheckpoint(path, contentsFor(pageCount), sourceOf(memory));
    const reads: [number, number][] = [];
    const original = HostFile.prototype.pread;
    vi.spyOn(HostFile.prototype, 'pread').mockImplementation(function (this: HostFile, target: Uint8Array, offset: number) {
      reads.push([offset, target.length]);
      return original.call(this, target, offset);
    });
    const reader = CheckpointReader.open(path);
    const blocks = Array.from({ length: reader.blockCount }, (_, block) => reader.blockInfo(block));
    expect(blocks.length).toBe(8);
    const touchesBlock = ([offset, length]: [number, number]) =>
      blocks.some((block) => offset < block.fileOffset + block.storedBytes && block.fileOffset < offset + length);
    expect(reads.length).toBeGreaterThan(0);
    expect(reads.filter(touchesBlock)).toEqual([]);
    // Header page, section table and sections: a few KiB of an 8 MiB file.
    const bytesRead = reads.reduce((sum, [, length]) => sum + length, 0);
    expect(bytesRead).toBeLessThan(reader.fileBytes / 100);
    // The first block read touches exactly that block.
    reads.length = 0;
    reader.readBlock(3);
    expect(reads).toEqual([[blocks[3]!.fileOffset, blocks[3]!.storedBytes]]);
    reader.close();
  });
});

describe('stable pages (pagesStable: written from the caller\'s memory, not copied)', () => {
  /**
   * 600 pages in one buffer, so most views are adjacent; every 50th page's view comes from a
   * second buffer at the very offset that would follow the previous view (adjacent by offset,
   * not by memory: the writer must not merge them); pages 300..399 are added in reverse (a block
   * of more than 16 runs: copied instead). Returns the views in the order added, and what each
   * page must read back as.
   */
  function stableCase(): { order: number[]; view: (gpn: number) => Uint8Array; expected: Uint8Array } {
    const pageCount = 600;
    const memory = makeMemory(pageCount, 17);
    const other = makeMemory(pageCount, 18, ['noise']);
    const expected = memory.slice();
    const fromOther = (gpn: number) => gpn % 50 === 7;
    for (let gpn = 0; gpn < pageCount; gpn++) if (fromOther(gpn)) expected.set(pageOf(other, gpn), gpn * PAGE_BYTES);
    const order = Array.from({ length: pageCount }, (_, gpn) => gpn);
    order.splice(300, 100, ...order.slice(300, 400).reverse());
    return { order, view: (gpn) => pageOf(fromOther(gpn) ? other : memory, gpn), expected };
  }

  it.each([1 << 20, 16 * PAGE_BYTES])('give the very file copied pages give (staging %i bytes), for the writer and writeCheckpoint', (stagingBytes) => {
    const { order, view, expected } = stableCase();
    const pageCount = order.length;
    const files = [true, false].map((pagesStable) => {
      const path = freshPath(`stable-${pagesStable}`);
      const writer = CheckpointWriter.begin(path, { pageCount, stagingBytes, pagesStable });
      for (const gpn of order) writer.addPage(gpn, view(gpn));
      writer.finish(contentsFor(pageCount));
      const reader = openAndVerify(path);
      expectMemory(reader, expected);
      reader.close();
      return readFileSync(path);
    });
    expect(files[0]!.equals(files[1]!)).toBe(true);
    const viaSource = [true, false].map((pagesStable) => {
      const path = freshPath(`stable-source-${pagesStable}`);
      writeCheckpoint(path, contentsFor(pageCount), { page: view, pagesStable }, { stagingBytes });
      const reader = openAndVerify(path);
      expectMemory(reader, expected);
      reader.close();
      return readFileSync(path);
    });
    expect(viaSource[0]!.equals(viaSource[1]!)).toBe(true);
  });

  it('with lz4 the pages are copied and compressed as without pagesStable', () => {
    const { order, view, expected } = stableCase();
    const path = freshPath('stable-lz4');
    const writer = CheckpointWriter.begin(path, { pageCount: order.length, compression: 'lz4', pagesStable: true });
    for (const gpn of order) writer.addPage(gpn, view(gpn));
    const stats = writer.finish(contentsFor(order.length));
    expect(stats.lz4Blocks).toBeGreaterThan(0);
    const reader = openAndVerify(path);
    expectMemory(reader, expected);
    reader.close();
  });
});

describe('streaming writer', () => {
  it('accepts pages in any order, copies them at once, and treats pages never added as zero', () => {
    const path = freshPath();
    const writer = CheckpointWriter.begin(path, { pageCount: 10, stagingBytes: 2 * PAGE_BYTES });
    const scratch = new Uint8Array(PAGE_BYTES);
    for (const gpn of [9, 2, 5]) {
      scratch.fill(gpn + 1);
      writer.addPage(gpn, scratch); // the writer must copy: scratch changes right after
    }
    writer.addPage(0, new Uint8Array(PAGE_BYTES)); // all zero: not stored
    writer.addPage(1, null);
    expect(writer.pagesAdded).toBe(5);
    expect(existsSync(path)).toBe(false); // nothing at the target before finish
    expect(existsSync(writer.tempPath)).toBe(true);
    const stats = writer.finish(contentsFor(10));
    expect(existsSync(writer.tempPath)).toBe(false);
    expect(stats).toMatchObject({ pagesStored: 3, zeroPages: 7, blocks: 2 });
    const reader = openAndVerify(path);
    for (const gpn of [9, 2, 5]) expect(reader.readPage(gpn).every((byte) => byte === gpn + 1)).toBe(true);
    for (const gpn of [0, 1, 3, 4, 6, 7, 8]) expect(reader.blockOfPage(gpn)).toBe(-1);
    expect(Array.from(reader.blockInfo(0).gpns)).toEqual([9, 2]);
    reader.close();
    expectCheckpointError(() => writer.addPage(3, null), 'BV_CKPT_CLOSED');
  });

  it('refuses bad arguments and stays usable', () => {
    const path = freshPath();
    const writer = CheckpointWriter.begin(path, { pageCount: 4 });
    writer.addPage(1, new Uint8Array(PAGE_BYTES).fill(1));
    expect(expectCheckpointError(() => writer.addPage(1, null), 'BV_CKPT_BAD_ARGUMENT').message).toContain('already added');
    expectCheckpointError(() => writer.addPage(4, null), 'BV_CKPT_BAD_ARGUMENT');
    expectCheckpointError(() => writer.addPage(-1, null), 'BV_CKPT_BAD_ARGUMENT');
    expectCheckpointError(() => writer.addPage(1.5, null), 'BV_CKPT_BAD_ARGUMENT');
    expectCheckpointError(() => writer.addPage(2, new Uint8Array(100)), 'BV_CKPT_BAD_ARGUMENT');
    const bad = { ...contentsFor(4), cpus: [{ pc: Number.NaN }] };
    expect(expectCheckpointError(() => writer.finish(bad), 'BV_CKPT_BAD_ARGUMENT').message).toContain('cpus[0].pc');
    expect(expectCheckpointError(() => writer.finish(contentsFor(5)), 'BV_CKPT_BAD_ARGUMENT').message).toContain('begun for 4');
    writer.finish(contentsFor(4));
    const reader = openAndVerify(path);
    expect(reader.readPage(1)[0]).toBe(1);
    reader.close();
  });

  it('abort removes the temp file and leaves the old checkpoint', () => {
    const path = freshPath();
    writeCheckpoint(path, contentsFor(2), { page: () => new Uint8Array(PAGE_BYTES).fill(7) });
    const before = readFileSync(path);
    const writer = CheckpointWriter.begin(path, { pageCount: 2 });
    writer.addPage(0, new Uint8Array(PAGE_BYTES).fill(9));
    writer.abort();
    writer.abort();
    expect(existsSync(writer.tempPath)).toBe(false);
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('a page source that throws leaves the old checkpoint and no temp file', () => {
    const path = freshPath('throwing');
    writeCheckpoint(path, contentsFor(8), { page: () => new Uint8Array(PAGE_BYTES).fill(1) });
    const before = readFileSync(path);
    expect(() =>
      writeCheckpoint(path, contentsFor(8), {
        page: (gpn) => {
          if (gpn === 5) throw new Error('guest memory went away');
          return new Uint8Array(PAGE_BYTES).fill(2);
        },
      }, { stagingBytes: PAGE_BYTES }),
    ).toThrow('guest memory went away');
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(readdirSync(dir).filter((name) => name.startsWith('throwing-') && name.includes('.tmp-'))).toEqual([]);
  });

  it('refuses state that JSON would change, before creating any file', () => {
    const path = freshPath();
    const cases: [string, CheckpointContents][] = [
      ['config.x', { ...contentsFor(1), config: { x: Number.POSITIVE_INFINITY } }],
      ['cpus[1].registers', { ...contentsFor(1), cpus: [{}, { registers: new Int32Array(4) as never }] }],
      ['devices.console.state.when', { ...contentsFor(1), devices: { console: { version: 1, state: { when: new Date() as never } } } }],
      ['devices.timer.version', { ...contentsFor(1), devices: { timer: { version: -1, state: {} } } }],
      ['config.f', { ...contentsFor(1), config: { f: (() => 1) as never } }],
    ];
    for (const [where, contents] of cases) {
      const error = expectCheckpointError(() => writeCheckpoint(path, contents, { page: () => null }), 'BV_CKPT_BAD_ARGUMENT');
      expect(error.message).toContain(where);
    }
    expectCheckpointError(() => CheckpointWriter.begin(path, { pageCount: 1, stagingBytes: 1000 }), 'BV_CKPT_BAD_ARGUMENT');
    expectCheckpointError(() => CheckpointWriter.begin(path, { pageCount: -1 }), 'BV_CKPT_BAD_ARGUMENT');
    expect(readdirSync(dir).filter((name) => name.startsWith(path.split('/').pop()!))).toEqual([]);
  });

  it('reports an unwritable directory as BV_CKPT_IO', () => {
    expectCheckpointError(() => writeCheckpoint(join(dir, 'no-such-dir', 'vm.ckpt'), contentsFor(1), { page: () => null }), 'BV_CKPT_IO');
  });

  it('reports progress up to the total', () => {
    const calls: [number, number][] = [];
    writeCheckpoint(freshPath(), contentsFor(40), { page: (gpn) => new Uint8Array(PAGE_BYTES).fill(gpn + 1) }, {
      stagingBytes: 8 * PAGE_BYTES,
      onProgress: (done, total) => calls.push([done, total]),
    });
    expect(calls.length).toBeGreaterThanOrEqual(5);
    expect(calls.every(([, total]) => total === 40)).toBe(true);
    expect(calls.at(-1)).toEqual([40, 40]);
    expect(calls.every(([done], index) => index === 0 || done >= calls[index - 1]![0])).toBe(true);
  });

  it('removeStaleTempFiles removes temp files of dead writers only', () => {
    const path = freshPath('stale');
    const deadPid = spawnSync(process.execPath, ['-e', '0']).pid!;
    const dead = `${path}.tmp-${deadPid}-abc123`;
    const mine = `${path}.tmp-${process.pid}-def456`;
    const other = `${path}x.tmp-${deadPid}-abc123`;
    for (const file of [dead, mine, other]) writeFileSync(file, 'partial');
    expect(removeStaleTempFiles(path)).toEqual([dead]);
    expect([existsSync(dead), existsSync(mine), existsSync(other)]).toEqual([false, true, true]);
    // A temp file is never mistaken for a checkpoint.
    expectCheckpointError(() => CheckpointReader.open(mine), 'BV_CKPT_NOT_CHECKPOINT');
  });
});

// ---------------------------------------------------------------------------------------------
// Damage

const damagePageCount = 48;
const damageMemory = makeMemory(damagePageCount, 99, ['zero', 'text', 'noise']);
const damageSources: Record<Compression, Uint8Array> = { none: new Uint8Array(), lz4: new Uint8Array() };
for (const compression of ['none', 'lz4'] as const) {
  const path = join(dir, `damage-source-${compression}.ckpt`);
  writeCheckpoint(path, contentsFor(damagePageCount), sourceOf(damageMemory), { compression, stagingBytes: 8 * PAGE_BYTES });
  damageSources[compression] = new Uint8Array(readFileSync(path));
}

function writeDamaged(bytes: Uint8Array): string {
  const path = freshPath('damaged');
  writeFileSync(path, bytes);
  return path;
}

interface Layout {
  sections: Map<number, { offset: number; length: number; crc: number; type: number }>;
  tableOffset: number;
  blocks: { fileOffset: number; storedBytes: number }[];
}

function layoutOf(bytes: Uint8Array): Layout {
  const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
  const sections = decodeSectionTable(bytes.subarray(header.sectionTableOffset), header);
  const reader = CheckpointReader.open(writeDamaged(bytes));
  const blocks = Array.from({ length: reader.blockCount }, (_, block) => reader.blockInfo(block));
  reader.close();
  return { sections, tableOffset: header.sectionTableOffset, blocks };
}

/**
 * Edits a section's bytes (or the header) and fixes every checksum above it, so that only the
 * structural checks can catch the edit.
 */
function craft(
  source: Uint8Array,
  edit: { section?: SectionTypeName; change?: (view: DataView, bytes: Uint8Array) => void; header?: (header: ReturnType<typeof decodeHeader>) => void },
): Uint8Array {
  const bytes = source.slice();
  const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
  const sections = decodeSectionTable(bytes.subarray(header.sectionTableOffset), header);
  if (edit.section !== undefined) {
    const entry = sections.get(SectionType[edit.section])!;
    const payload = bytes.subarray(entry.offset, entry.offset + entry.length);
    edit.change!(new DataView(payload.buffer, payload.byteOffset, payload.length), payload);
    entry.crc = checksum(payload);
  }
  const table = encodeSectionTable([...sections.values()]);
  bytes.set(table, header.sectionTableOffset);
  header.sectionTableCrc = checksum(table);
  edit.header?.(header);
  bytes.set(encodeHeader(header), 0);
  return bytes;
}

describe('damage is refused with an error naming the bad part', () => {
  const clean = damageSources.lz4;
  const layout = layoutOf(clean);

  it('the crafting helper itself changes nothing when it edits nothing', () => {
    expect(Buffer.from(craft(clean, {})).equals(Buffer.from(clean))).toBe(true);
  });

  it('a flipped bit in any header byte', () => {
    for (let byte = 0; byte < HEADER_BYTES; byte++) {
      const bytes = clean.slice();
      bytes[byte] ^= 1 << (byte % 8);
      const error = expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), byte < 8 ? 'BV_CKPT_NOT_CHECKPOINT' : 'BV_CKPT_CHECKSUM');
      expect(error.where).toBe('header');
      expect(error.message).toContain(byte < 8 ? 'wrong magic' : 'header checksum');
    }
  });

  it('a flipped bit in every section and in the section table', () => {
    for (const [type, entry] of layout.sections) {
      for (const at of [0, Math.floor(entry.length / 2), entry.length - 1]) {
        const bytes = clean.slice();
        bytes[entry.offset + at] ^= 0x10;
        const name = SECTION_NAMES.get(type)!;
        const error = expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_CHECKSUM');
        expect(error.where).toBe(`section ${name}`);
        expect(error.message).toMatch(new RegExp(`: section ${name}: checksum mismatch`));
      }
    }
    for (let entry = 0; entry < layout.sections.size; entry++) {
      const bytes = clean.slice();
      bytes[layout.tableOffset + entry * SECTION_ENTRY_BYTES + 9] ^= 0x01;
      expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_CHECKSUM').where).toBe('section table');
    }
  });

  it('a flipped bit in a memory block: open succeeds (lazy), readBlock and verifyAll name the block', () => {
    for (const compression of ['none', 'lz4'] as const) {
      const source = damageSources[compression];
      const { blocks } = layoutOf(source);
      expect(blocks.length).toBeGreaterThanOrEqual(3);
      for (const bad of [0, blocks.length - 1]) {
        const bytes = source.slice();
        bytes[blocks[bad]!.fileOffset + Math.floor(blocks[bad]!.storedBytes / 3)]! ^= 0x80;
        const reader = CheckpointReader.open(writeDamaged(bytes));
        const good = bad === 0 ? 1 : 0;
        expect(reader.readBlock(good).gpns.length).toBeGreaterThan(0);
        expect(expectCheckpointError(() => reader.readBlock(bad), 'BV_CKPT_CHECKSUM').where).toBe(`block ${bad}`);
        const error = expectCheckpointError(() => reader.verifyAll(), 'BV_CKPT_CHECKSUM');
        expect(error.message).toContain(`block ${bad}: checksum mismatch`);
        reader.close();
      }
    }
  });

  it('truncation at any offset, and appended bytes', () => {
    const cuts = new Set([0, 1, 7, 8, 11, 12, 40, 63, 64, 100, 4095, 4096, 4097, clean.length - 1, clean.length - SECTION_ENTRY_BYTES]);
    for (const entry of layout.sections.values()) [entry.offset, entry.offset + 1, entry.offset + entry.length].forEach((cut) => cuts.add(cut));
    for (const block of layout.blocks) [block.fileOffset, block.fileOffset + 100].forEach((cut) => cuts.add(cut));
    for (let cut = 0; cut < clean.length; cut += 997) cuts.add(cut);
    const path = writeDamaged(clean);
    for (const cut of [...cuts].filter((length) => length < clean.length)) {
      writeFileSync(path, clean.subarray(0, cut));
      const expected = cut === 0 ? 'BV_CKPT_NOT_CHECKPOINT' : 'BV_CKPT_TRUNCATED';
      const error = expectCheckpointError(() => CheckpointReader.open(path), expected);
      expect(error.where).toBe('header');
      if (cut >= HEADER_BYTES) expect(error.message).toContain(`the header says ${clean.length} bytes, the file has ${cut}`);
    }
    writeFileSync(path, Buffer.concat([clean, Buffer.from('extra')]));
    expect(expectCheckpointError(() => CheckpointReader.open(path), 'BV_CKPT_TRUNCATED').message).toContain('appended');
  });

  it('a file cut after it was opened: the block read says truncated', () => {
    const path = writeDamaged(damageSources.none);
    const reader = CheckpointReader.open(path);
    truncateSync(path, layoutOf(damageSources.none).blocks[1]!.fileOffset + 10);
    expect(expectCheckpointError(() => reader.readBlock(2), 'BV_CKPT_TRUNCATED').where).toBe('block 2');
    expect(expectCheckpointError(() => reader.verifyAll(), 'BV_CKPT_TRUNCATED').where).toBe('header');
    reader.close();
    expectCheckpointError(() => reader.readBlock(0), 'BV_CKPT_CLOSED');
  });

  it('wrong magic, other files, and missing files', () => {
    expectCheckpointError(() => CheckpointReader.open(writeDamaged(new TextEncoder().encode('{"not": "a checkpoint"}'))), 'BV_CKPT_NOT_CHECKPOINT');
    expectCheckpointError(() => CheckpointReader.open(writeDamaged(new Uint8Array(0))), 'BV_CKPT_NOT_CHECKPOINT');
    expectCheckpointError(() => CheckpointReader.open(join(dir, 'missing.ckpt')), 'BV_CKPT_IO');
    expectCheckpointError(() => CheckpointReader.open(dir), 'BV_CKPT_IO'); // a directory
  });

  it('another format version is refused naming both versions', () => {
    for (const version of [0, 2, 65535]) {
      const bytes = craft(clean, { header: (header) => (header.formatVersion = version) });
      const error = expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_VERSION');
      expect(error.message).toContain(`checkpoint format version ${version} is not supported (this build reads version 1)`);
    }
  });

  it('unknown header flags or page size are unsupported, not misread', () => {
    expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(craft(clean, { header: (header) => (header.flags |= 0x100) }))), 'BV_CKPT_UNSUPPORTED').message).toContain('unknown flags');
    expectCheckpointError(() => CheckpointReader.open(writeDamaged(craft(clean, { header: (header) => (header.pageBytes = 8192) }))), 'BV_CKPT_UNSUPPORTED');
    expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(craft(clean, { header: (header) => (header.flags = 0) }))), 'BV_CKPT_CORRUPT').message).toContain('header flag');
  });

  /** Structural damage behind valid checksums: each row is one inconsistency. */
  const structural: [string, SectionTypeName, (view: DataView, bytes: Uint8Array) => void, string, string][] = [
    ['page names a missing block', 'MEMORY_INDEX', (view) => view.setUint32(8 + 4 * firstStored(view), 999, true), 'section MEMORY_INDEX', 'names block 999'],
    ['slot outside the block', 'MEMORY_INDEX', (view) => view.setUint32(8 + 4 * (damagePageCount + firstStored(view)), 500, true), 'section MEMORY_INDEX', 'slot 500'],
    ['two pages claim one slot', 'MEMORY_INDEX', (view) => copyEntry(view, firstStored(view), secondStored(view)), 'section MEMORY_INDEX', 'both claim'],
    ['a zero page with a slot', 'MEMORY_INDEX', (view) => view.setUint32(8 + 4 * (damagePageCount + firstZero(view)), 1, true), 'section MEMORY_INDEX', 'zero page'],
    ['a stored page marked zero (its slot orphaned)', 'MEMORY_INDEX', (view) => zeroEntry(view, firstStored(view)), 'section MEMORY_INDEX', 'belongs to no page'],
    ['page count disagrees with the length', 'MEMORY_INDEX', (view) => view.setUint32(0, damagePageCount + 1, true), 'section MEMORY_INDEX', 'does not hold'],
    ['block offset not aligned', 'BLOCK_TABLE', (view) => editEntry(view, 1, (at) => view.setUint32(at, view.getUint32(at, true) + 8, true)), 'section BLOCK_TABLE', 'not 4096-aligned'],
    ['blocks overlap', 'BLOCK_TABLE', (view) => editEntry(view, 1, (at) => view.setUint32(at, view.getUint32(entryAt(0), true), true)), 'section BLOCK_TABLE', 'overlaps'],
    ['block past the block area', 'BLOCK_TABLE', (view) => editEntry(view, 2, (at) => view.setUint32(at, 0x4000_0000, true)), 'section BLOCK_TABLE', 'outside the block area'],
    ['unknown block kind', 'BLOCK_TABLE', (view) => editEntry(view, 0, (at) => view.setUint8(at + 20, 7)), 'section BLOCK_TABLE', 'unknown kind 7'],
    ['too many pages for the stored bytes', 'BLOCK_TABLE', (view) => editEntry(view, 0, (at) => view.setUint32(at + 12, 70_000, true)), 'section BLOCK_TABLE', 'pages'],
    ['non-zero reserved bytes in an entry', 'BLOCK_TABLE', (view) => editEntry(view, 1, (at) => view.setUint8(at + 33, 1)), 'section BLOCK_TABLE', 'reserved'],
    ['page lists not back to back', 'BLOCK_TABLE', (view) => editEntry(view, 1, (at) => view.setUint32(at + 24, view.getUint32(at + 24, true) - 1, true)), 'section BLOCK_TABLE', 'page list starts at'],
    ['a page list past the end of BLOCK_PAGES', 'BLOCK_TABLE', (view) => editEntry(view, 1, (at) => view.setUint32(at + 24, 10_000, true)), 'section BLOCK_TABLE', 'runs past'],
    ['block pages count disagrees with the blocks', 'BLOCK_PAGES', (view) => view.setUint32(0, view.getUint32(0, true) + 1, true), 'section BLOCK_PAGES', 'does not hold'],
    ['region count disagrees with the length', 'INDEX_CRCS', (view) => view.setUint32(0, 2, true), 'section INDEX_CRCS', 'does not hold'],
    ['config is not JSON', 'CONFIG', (_view, bytes) => (bytes[0] = 0x41), 'section CONFIG', 'not valid JSON'],
    ['config is an array', 'CONFIG', (_view, bytes) => replaceJson(bytes, '[]'), 'section CONFIG', 'not a JSON object'],
    ['cpus is not an array of objects', 'CPUS', (_view, bytes) => replaceJson(bytes, '{}'), 'section CPUS', 'not a JSON array of objects'],
    ['device record runs past the section', 'DEVICES', (view) => view.setUint32(0, 4, true), 'section DEVICES', 'runs past'],
    ['device state length too large', 'DEVICES', (view, bytes) => view.setUint32(deviceStateLengthOffset(bytes), 0xffff_fff0, true), 'section DEVICES', 'runs past'],
  ];

  it.each(structural)('%s', (_label, section, change, where, text) => {
    const source = section === 'BLOCK_TABLE' ? damageSources.none : clean;
    const bytes = craft(source, { section, change });
    const error = expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_CORRUPT');
    expect(error.where).toBe(where);
    expect(error.message).toContain(text);
  });

  it('an unknown section type is unsupported', () => {
    const bytes = clean.slice();
    const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
    new DataView(bytes.buffer).setUint32(header.sectionTableOffset, 42, true);
    const table = bytes.subarray(header.sectionTableOffset);
    bytes.set(encodeHeader({ ...header, sectionTableCrc: checksum(table) }), 0);
    expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_UNSUPPORTED').message).toContain('unknown section type 42');
  });

  it('an lz4 block with a valid checksum but bad contents is corrupt, not a crash', () => {
    const { blocks } = layoutOf(clean);
    const probe = CheckpointReader.open(writeDamaged(clean));
    const lz4Block = blocks.findIndex((_, index) => probe.blockInfo(index).kind === 'lz4');
    probe.close();
    expect(lz4Block).toBeGreaterThanOrEqual(0);
    for (const [label, mutate] of [
      ['size prefix', (bytes: Uint8Array, at: number) => (bytes[at] ^= 0x01)],
      ['payload', (bytes: Uint8Array, at: number) => bytes.fill(0xff, at + 4, at + 40)],
    ] as const) {
      const block = blocks[lz4Block]!;
      const bytes = clean.slice();
      mutate(bytes, block.fileOffset);
      const crc = checksum(bytes.subarray(block.fileOffset, block.fileOffset + block.storedBytes));
      const crafted = craft(bytes, { section: 'BLOCK_TABLE', change: (view) => editEntry(view, lz4Block, (at) => view.setUint32(at + 16, crc, true)) });
      const reader = CheckpointReader.open(writeDamaged(crafted));
      const error = expectCheckpointError(() => reader.readBlock(lz4Block), 'BV_CKPT_CORRUPT');
      expect(error.where, label).toBe(`block ${lz4Block}`);
      reader.close();
    }
  });

  it('property: after any flipped byte, the file is refused or reads back exactly as saved', () => {
    for (const compression of ['none', 'lz4'] as const) {
      const source = damageSources[compression];
      const path = freshPath('fuzz');
      fc.assert(
        fc.property(fc.integer({ min: 0, max: source.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, mask) => {
          const bytes = source.slice();
          bytes[at] ^= mask;
          writeFileSync(path, bytes);
          let reader: CheckpointReader;
          try {
            reader = openAndVerify(path);
          } catch (error) {
            expect(error).toBeInstanceOf(CheckpointError);
            return;
          }
          // Accepted: the byte was padding, and everything must be exactly what was saved.
          expect(reader.contents).toEqual(contentsFor(damagePageCount));
          expectMemory(reader, damageMemory);
          reader.close();
        }),
        { numRuns: 300 },
      );
    }
  });
});

/** Offset of block table entry `block` inside the BLOCK_TABLE section. */
function entryAt(block: number): number {
  return SECTION_HEAD_BYTES + block * BLOCK_ENTRY_BYTES;
}
/** Edits block table entry `block` (given its offset) and fixes the entry's own CRC. */
function editEntry(view: DataView, block: number, change: (at: number) => void): void {
  const at = entryAt(block);
  change(at);
  view.setUint32(at + 36, checksum(new Uint8Array(view.buffer, view.byteOffset + at, 36)), true);
}
/** Replaces a JSON section by `json` padded with spaces (same length, still valid JSON). */
function replaceJson(bytes: Uint8Array, json: string): void {
  bytes.fill(0x20);
  bytes.set(new TextEncoder().encode(json), 0);
}
function firstStored(view: DataView): number {
  for (let gpn = 0; gpn < damagePageCount; gpn++) if (view.getUint32(8 + 4 * gpn, true) !== 0xffff_ffff) return gpn;
  throw new Error('no stored page');
}
function secondStored(view: DataView): number {
  const first = firstStored(view);
  for (let gpn = first + 1; gpn < damagePageCount; gpn++) if (view.getUint32(8 + 4 * gpn, true) !== 0xffff_ffff) return gpn;
  throw new Error('no second stored page');
}
function firstZero(view: DataView): number {
  for (let gpn = 0; gpn < damagePageCount; gpn++) if (view.getUint32(8 + 4 * gpn, true) === 0xffff_ffff) return gpn;
  throw new Error('no zero page');
}
/** Makes page `to` claim the same block and slot as page `from`. */
function copyEntry(view: DataView, from: number, to: number): void {
  view.setUint32(8 + 4 * to, view.getUint32(8 + 4 * from, true), true);
  view.setUint32(8 + 4 * (damagePageCount + to), view.getUint32(8 + 4 * (damagePageCount + from), true), true);
}
function zeroEntry(view: DataView, gpn: number): void {
  view.setUint32(8 + 4 * gpn, 0xffff_ffff, true);
  view.setUint32(8 + 4 * (damagePageCount + gpn), 0, true);
}
/** Offset of the first device's state length field (u32 count, u16 name length, name, u32 version, u8 encoding). */
function deviceStateLengthOffset(bytes: Uint8Array): number {
  const nameLength = bytes[4]! | (bytes[5]! << 8);
  return 4 + 2 + nameLength + 4 + 1;
}

// ---------------------------------------------------------------------------------------------
// The lazy index: each region, block entry and page list is read and checked on its own.

describe('lazy index (opened with lazyIndex)', () => {
  // Three full index regions and a short fourth; 64-page blocks; a third of the pages zero.
  const lazyPageCount = 3 * INDEX_REGION_PAGES + 100;
  const storedPage = (gpn: number) => gpn % 3 !== 0;
  const pageBytes = (gpn: number) => {
    const page = new Uint8Array(PAGE_BYTES).fill((gpn & 0xff) | 1);
    new DataView(page.buffer).setUint32(0, gpn, true);
    return page;
  };
  const lazyPath = join(dir, 'lazy-index.ckpt');
  writeCheckpoint(lazyPath, contentsFor(lazyPageCount), { page: (gpn) => (storedPage(gpn) ? pageBytes(gpn) : null) }, { stagingBytes: 64 * PAGE_BYTES });
  const lazyClean = new Uint8Array(readFileSync(lazyPath));
  const sectionOf = (bytes: Uint8Array, name: SectionTypeName) => {
    const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
    return decodeSectionTable(bytes.subarray(header.sectionTableOffset), header).get(SectionType[name])!;
  };
  const openLazy = (bytes: Uint8Array) => CheckpointReader.open(writeDamaged(bytes), { lazyIndex: true });
  /** Byte offset (inside MEMORY_INDEX) of page `gpn`'s block entry, or of its slot entry. */
  const blockEntryAt = (gpn: number) => SECTION_HEAD_BYTES + gpn * 4;
  const slotEntryAt = (gpn: number) => SECTION_HEAD_BYTES + (lazyPageCount + gpn) * 4;
  /** Recomputes region `region`'s CRC in INDEX_CRCS from the file's (edited) index. */
  const fixRegionCrc = (bytes: Uint8Array, region: number): Uint8Array => {
    const index = sectionOf(bytes, 'MEMORY_INDEX');
    const first = region * INDEX_REGION_PAGES;
    const count = Math.min(INDEX_REGION_PAGES, lazyPageCount - first);
    const blocks = bytes.subarray(index.offset + blockEntryAt(first), index.offset + blockEntryAt(first + count));
    const slots = bytes.subarray(index.offset + slotEntryAt(first), index.offset + slotEntryAt(first + count));
    const crc = checksum(slots, checksum(blocks));
    return craft(bytes, { section: 'INDEX_CRCS', change: (view) => view.setUint32(SECTION_HEAD_BYTES + region * 4, crc, true) });
  };

  it('answers every lookup exactly like a full open', () => {
    const full = CheckpointReader.open(lazyPath);
    const lazy = CheckpointReader.open(lazyPath, { lazyIndex: true });
    expect(lazy.regionCount).toBe(4);
    expect(lazy.storedPageCount).toBe(full.storedPageCount);
    expect(lazy.blockCount).toBe(full.blockCount);
    for (let gpn = 0; gpn < lazyPageCount; gpn++) {
      expect(lazy.blockOfPage(gpn)).toBe(full.blockOfPage(gpn));
      expect(lazy.slotOfPage(gpn)).toBe(full.slotOfPage(gpn));
      expect(lazy.blockOfPage(gpn) >= 0).toBe(storedPage(gpn));
    }
    for (let region = 0; region < lazy.regionCount; region++) {
      const [a, b] = [lazy.regionEntries(region), full.regionEntries(region)];
      expect([a.firstGpn, Array.from(a.blocks), Array.from(a.slots)]).toEqual([b.firstGpn, Array.from(b.blocks), Array.from(b.slots)]);
    }
    for (let block = 0; block < lazy.blockCount; block++) {
      expect(lazy.blockInfo(block)).toEqual(full.blockInfo(block));
      const pages = lazy.readBlock(block);
      pages.gpns.forEach((gpn, slot) => expect(Buffer.from(pages.data.subarray(slot * PAGE_BYTES, (slot + 1) * PAGE_BYTES)).equals(Buffer.from(pageBytes(gpn)))).toBe(true));
    }
    expect(lazy.summary()).toEqual(full.summary());
    expectCheckpointError(() => lazy.regionEntries(4), 'BV_CKPT_BAD_ARGUMENT');
    expectCheckpointError(() => lazy.blockEntry(lazy.blockCount), 'BV_CKPT_BAD_ARGUMENT');
    lazy.verifyAll();
    full.close();
    lazy.close();
  });

  it('opening and a first access read the same index bytes for a small and a large memory', () => {
    // Same stored pages, 8 MiB against 256 MiB of guest memory (a 64 KiB against a 2 MiB index).
    const indexBytesRead = (pageCount: number): number => {
      const path = freshPath('lazy-size');
      writeCheckpoint(path, contentsFor(pageCount), { page: (gpn) => (gpn < 600 || gpn === 1500 ? pageBytes(gpn) : null) });
      const bytes = new Uint8Array(readFileSync(path));
      const indexSections = (['MEMORY_INDEX', 'INDEX_CRCS', 'BLOCK_TABLE', 'BLOCK_PAGES'] as const).map((name) => sectionOf(bytes, name));
      const reads: [number, number][] = [];
      const original = HostFile.prototype.pread;
      const spy = vi.spyOn(HostFile.prototype, 'pread').mockImplementation(function (this: HostFile, target: Uint8Array, offset: number) {
        reads.push([offset, target.length]);
        return original.call(this, target, offset);
      });
      const reader = CheckpointReader.open(path, { lazyIndex: true });
      const block = reader.blockOfPage(5);
      const pages = reader.readBlock(block);
      expect(pages.gpns[reader.slotOfPage(5)]).toBe(5);
      spy.mockRestore();
      reader.close();
      return reads
        .filter(([offset]) => indexSections.some((section) => offset >= section.offset && offset < section.offset + section.length))
        .reduce((sum, [, length]) => sum + length, 0);
    };
    const small = indexBytesRead(2048);
    const large = indexBytesRead(65536);
    expect(large).toBe(small);
    // Four counts, one region (8 KiB and its CRC), the entries of the blocks it names (3 of
    // 256 pages) and one page list.
    expect(large).toBe(4 * 8 + 8192 + 4 + 3 * BLOCK_ENTRY_BYTES + 256 * 4);
  });

  it('a damaged index region is refused when read, naming the region; other regions still read', () => {
    const index = sectionOf(lazyClean, 'MEMORY_INDEX');
    // Two stored pages of region 1 swap their slots: every check but the region's CRC passes.
    const [a, b] = [1024 + 1, 1024 + 4]; // both stored, in the same block
    const bytes = craft(lazyClean, {
      section: 'MEMORY_INDEX',
      change: (view) => {
        const slotA = view.getUint32(slotEntryAt(a), true);
        view.setUint32(slotEntryAt(a), view.getUint32(slotEntryAt(b), true), true);
        view.setUint32(slotEntryAt(b), slotA, true);
      },
    });
    expect(bytes[index.offset + slotEntryAt(a)]).not.toBe(lazyClean[index.offset + slotEntryAt(a)]);
    const reader = openLazy(bytes);
    expect(reader.blockOfPage(1)).toBeGreaterThanOrEqual(0);
    expect(reader.blockOfPage(2 * 1024 + 2)).toBeGreaterThanOrEqual(0);
    const error = expectCheckpointError(() => reader.slotOfPage(a), 'BV_CKPT_CHECKSUM');
    expect(error.where).toBe('section MEMORY_INDEX');
    expect(error.message).toContain('region 1: checksum mismatch');
    expectCheckpointError(() => reader.verifyAll(), 'BV_CKPT_CHECKSUM');
    reader.close();
    expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_CHECKSUM').message).toContain('region 1');
    // A damaged CRC value itself is caught the same way.
    const badCrc = craft(lazyClean, { section: 'INDEX_CRCS', change: (view) => view.setUint32(SECTION_HEAD_BYTES + 4 * 3, 0x1234, true) });
    const other = openLazy(badCrc);
    expect(expectCheckpointError(() => other.blockOfPage(3 * 1024 + 50), 'BV_CKPT_CHECKSUM').message).toContain('region 3');
    other.close();
  });

  it('an index entry naming a missing block or slot is refused even when its region CRC matches', () => {
    const gpn = 1024 + 1;
    for (const [at, value, text] of [[blockEntryAt(gpn), 999, 'names block 999'], [slotEntryAt(gpn), 500, 'slot 500 of block']] as const) {
      const bytes = fixRegionCrc(craft(lazyClean, { section: 'MEMORY_INDEX', change: (view) => view.setUint32(at, value, true) }), 1);
      const reader = openLazy(bytes);
      const error = expectCheckpointError(() => reader.blockOfPage(gpn), 'BV_CKPT_CORRUPT');
      expect(error.where).toBe('section MEMORY_INDEX');
      expect(error.message).toContain(text);
      reader.close();
    }
  });

  it('a damaged block entry is refused when read, naming the block; other entries still read', () => {
    const bad = 3;
    const table = sectionOf(lazyClean, 'BLOCK_TABLE');
    for (const field of [0, 12, 24, 28, 36]) {
      const bytes = lazyClean.slice();
      bytes[table.offset + entryAt(bad) + field + 1]! ^= 0x04;
      const fixed = craft(bytes, {}); // the section CRC is not fixed: a full open names the section
      expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(fixed)), 'BV_CKPT_CHECKSUM').where).toBe('section BLOCK_TABLE');
      const crafted = craft(lazyClean, { section: 'BLOCK_TABLE', change: (_view, payload) => (payload[entryAt(bad) + field + 1]! ^= 0x04) });
      const reader = openLazy(crafted);
      expect(reader.blockEntry(bad - 1).pageCount).toBe(64);
      for (const action of [() => reader.blockEntry(bad), () => reader.readBlock(bad), () => reader.pagesOfBlock(bad)]) {
        const error = expectCheckpointError(action, 'BV_CKPT_CHECKSUM');
        expect(error.where).toBe('section BLOCK_TABLE');
        expect(error.message).toContain(`block ${bad}: entry checksum mismatch`);
      }
      reader.close();
      expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(crafted)), 'BV_CKPT_CHECKSUM').message).toContain(`block ${bad}: entry checksum`);
    }
  });

  it("a damaged page list is refused when read, naming the block's list; other lists still read", () => {
    const bad = 5;
    const reader0 = CheckpointReader.open(lazyPath);
    const firstPage = [...Array(bad).keys()].reduce((sum, block) => sum + reader0.blockEntry(block).pageCount, 0);
    reader0.close();
    const bytes = craft(lazyClean, { section: 'BLOCK_PAGES', change: (_view, payload) => (payload[SECTION_HEAD_BYTES + (firstPage + 7) * 4]! ^= 0x01) });
    const reader = openLazy(bytes);
    expect(reader.pagesOfBlock(bad - 1)).toHaveLength(64);
    expect(reader.blockOfPage(reader.pagesOfBlock(bad + 1)[0]!)).toBe(bad + 1);
    for (const action of [() => reader.pagesOfBlock(bad), () => reader.readBlock(bad), () => reader.blockInfo(bad)]) {
      const error = expectCheckpointError(action, 'BV_CKPT_CHECKSUM');
      expect(error.where).toBe('section BLOCK_PAGES');
      expect(error.message).toContain(`block ${bad}'s page list: checksum mismatch`);
    }
    reader.close();
    expect(expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_CHECKSUM').where).toBe('section BLOCK_PAGES');
  });

  it('page lists that disagree with the index (all checksums fixed) are refused by a full open', () => {
    const block = 2;
    const reader0 = CheckpointReader.open(lazyPath);
    const firstPage = 2 * 64;
    expect(reader0.blockEntry(0).pageCount + reader0.blockEntry(1).pageCount).toBe(firstPage);
    reader0.close();
    const at = SECTION_HEAD_BYTES + (firstPage + 3) * 4;
    let listCrc = 0;
    const swapped = craft(lazyClean, {
      section: 'BLOCK_PAGES',
      change: (view, payload) => {
        const first = view.getUint32(at, true);
        view.setUint32(at, view.getUint32(at + 4, true), true);
        view.setUint32(at + 4, first, true);
        listCrc = checksum(payload.subarray(SECTION_HEAD_BYTES + firstPage * 4, SECTION_HEAD_BYTES + (firstPage + 64) * 4));
      },
    });
    const bytes = craft(swapped, { section: 'BLOCK_TABLE', change: (view) => editEntry(view, block, (entry) => view.setUint32(entry + 28, listCrc, true)) });
    const error = expectCheckpointError(() => CheckpointReader.open(writeDamaged(bytes)), 'BV_CKPT_CORRUPT');
    expect(error.where).toBe('section BLOCK_PAGES');
    expect(error.message).toContain(`slot 3 of block ${block} holds page`);
    // A lazy reader cannot see it without the whole index; the lazy restore checks each page it installs.
    const reader = openLazy(bytes);
    expect(reader.pagesOfBlock(block)).toHaveLength(64);
    expectCheckpointError(() => reader.verifyAll(), 'BV_CKPT_CORRUPT');
    reader.close();
  });
});

// ---------------------------------------------------------------------------------------------

describe('diffCheckpoints', () => {
  it('finds exactly the pages that differ, as ranges, and state differences', () => {
    const pageCount = 100;
    const memoryA = makeMemory(pageCount, 7);
    const memoryB = memoryA.slice();
    for (const gpn of [3, 4, 5, 50, 99]) memoryB[gpn * PAGE_BYTES + 17] ^= 0x01;
    memoryB.fill(0, 60 * PAGE_BYTES, 61 * PAGE_BYTES); // page 60 becomes zero in B
    const pathA = freshPath();
    const pathB = freshPath();
    writeCheckpoint(pathA, contentsFor(pageCount), sourceOf(memoryA), { compression: 'lz4', stagingBytes: 8 * PAGE_BYTES });
    writeCheckpoint(pathB, contentsFor(pageCount, 1), sourceOf(memoryB), { stagingBytes: 3 * PAGE_BYTES });
    const a = CheckpointReader.open(pathA);
    const b = CheckpointReader.open(pathB);
    const diff = diffCheckpoints(a, b);
    const page60WasZero = isZero(pageOf(memoryA, 60));
    expect(diff.ranges).toEqual([
      { first: 3, count: 3 },
      { first: 50, count: 1 },
      ...(page60WasZero ? [] : [{ first: 60, count: 1 }]),
      { first: 99, count: 1 },
    ]);
    expect(diff.differingPages).toBe(page60WasZero ? 5 : 6);
    expect(diff).toMatchObject({ configEqual: false, cpusEqual: false, devicesDiffering: ['console', 'disk'], equal: false });
    const same = diffCheckpoints(a, a, { cacheBytes: PAGE_BYTES }); // a tiny cache still compares exactly
    expect(same).toMatchObject({ equal: true, differingPages: 0, ranges: [] });
    a.close();
    b.close();
  });

  it('pages beyond the smaller memory count as zero', () => {
    const pathA = freshPath();
    const pathB = freshPath();
    writeCheckpoint(pathA, contentsFor(4), { page: (gpn) => (gpn === 1 ? new Uint8Array(PAGE_BYTES).fill(1) : null) });
    writeCheckpoint(pathB, contentsFor(6), { page: (gpn) => (gpn === 1 ? new Uint8Array(PAGE_BYTES).fill(1) : gpn === 5 ? new Uint8Array(PAGE_BYTES).fill(5) : null) });
    const a = CheckpointReader.open(pathA);
    const b = CheckpointReader.open(pathB);
    expect(diffCheckpoints(a, b)).toMatchObject({ pageCountA: 4, pageCountB: 6, differingPages: 1, ranges: [{ first: 5, count: 1 }], equal: false });
    a.close();
    b.close();
  });
});

// ---------------------------------------------------------------------------------------------

describe('tools/snapshot', () => {
  const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
  const snapshot = (...args: string[]) => {
    const result = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'tools', 'snapshot.ts'), ...args], { cwd: repoRoot, encoding: 'utf8' });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  };
  const pageCount = 64;
  const memory = makeMemory(pageCount, 42, ['zero', 'text', 'noise']);
  const good = join(dir, 'tool-good.ckpt');
  const changed = join(dir, 'tool-changed.ckpt');
  writeCheckpoint(good, contentsFor(pageCount), sourceOf(memory), { compression: 'lz4', stagingBytes: 16 * PAGE_BYTES });
  const memory2 = memory.slice();
  for (const gpn of [10, 11, 12, 40]) memory2[gpn * PAGE_BYTES] ^= 0xff;
  writeCheckpoint(changed, contentsFor(pageCount), sourceOf(memory2), { stagingBytes: 16 * PAGE_BYTES });
  const differing = 4; // x ^ 0xff never equals x
  const reader = CheckpointReader.open(good);
  const summary = reader.summary();
  const lz4Block = Array.from({ length: reader.blockCount }, (_, block) => reader.blockInfo(block)).find((block) => block.kind === 'lz4')!;
  reader.close();
  const damaged = join(dir, 'tool-damaged.ckpt');
  const damagedBytes = readFileSync(good);
  damagedBytes[lz4Block.fileOffset + 10] ^= 0x04;
  writeFileSync(damaged, damagedBytes);

  it('info shows version, configuration, vCPUs, devices, memory and blocks', () => {
    const { status, stdout, stderr } = snapshot('info', good);
    expect(stderr).toBe('');
    expect(status).toBe(0);
    expect(stdout).toMatch(/^format\s+version 1$/m);
    expect(stdout).toMatch(/^memory\s+256 KiB \(64 pages\)$/m);
    expect(stdout).toContain(`${summary.storedPages} stored, ${summary.zeroPages} zero`);
    expect(stdout).toContain(`(${summary.rawBlocks} raw, ${summary.lz4Blocks} lz4)`);
    expect(stdout).toMatch(new RegExp(`^compression\\s+${summary.compressionRatio.toFixed(2)}x$`, 'm'));
    expect(stdout).toMatch(/^vcpus\s+2$/m);
    expect(stdout).toMatch(/^ {2}overlay\s+"\/tmp\/disk.overlay"$/m);
    expect(stdout).toMatch(/^ {2}console\s+version 2\s+\d+ B JSON$/m);
    expect(stdout).toMatch(/^ {2}disk\s+version 7\s+5 B binary$/m);
    expect(stdout).toContain(`(${summary.fileBytes.toLocaleString('en-US')} bytes)`);
  });

  it('verify: ok for a good file, exit 1 naming the bad block for a damaged one', () => {
    const ok = snapshot('verify', good);
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/^ok \(/);
    const bad = snapshot('verify', damaged);
    expect(bad.status).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toBe(`error: ${damaged}: block ${lz4Block.index}: checksum mismatch (the block is damaged)\n`);
  });

  it('diff: exit 0 when equal, 1 with ranges when different, 2 for a bad file', () => {
    const same = snapshot('diff', good, good);
    expect(same).toMatchObject({ status: 0, stdout: 'no differences\n' });
    const different = snapshot('diff', good, changed);
    expect(different.status).toBe(1);
    expect(different.stdout).toContain(`memory: ${differing} of 64 pages differ`);
    expect(different.stdout).toContain('in 2 ranges\n  pages 10-12 (gpa 0x0000a000-0x0000cfff)\n  page 40 (gpa 0x00028000-0x00028fff)\n');
    expect(different.stdout).toContain('config: same');
    const broken = snapshot('diff', good, damaged);
    expect(broken.status).toBe(2);
    expect(broken.stderr).toMatch(/^error: .*block \d+: checksum mismatch/);
    expect(broken.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('bad files and bad usage: one error line, no stack trace', () => {
    const notCheckpoint = snapshot('info', join(repoRoot, 'package.json'));
    expect(notCheckpoint.status).toBe(1);
    expect(notCheckpoint.stderr).toBe(`error: ${join(repoRoot, 'package.json')}: not a checkpoint file (wrong magic)\n`);
    const missing = snapshot('verify', join(dir, 'missing.ckpt'));
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^error: cannot open checkpoint: .*No such file/);
    for (const args of [[], ['info'], ['frobnicate', good], ['diff', good], ['verify', good, '--all']]) {
      const usage = snapshot(...args);
      expect(usage.status, args.join(' ')).toBe(2);
      expect(usage.stderr).toMatch(/^error: .*\nusage: snapshot /);
      expect(usage.stderr).not.toContain('    at ');
    }
  });
});
