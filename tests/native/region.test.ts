import { readFileSync, statSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import { HOST_PAGE_SIZE, HostFile, HostRegion, processRss } from '../../native/index.ts';
import { MiB, expectBytes, expectNativeError, isAllZero, makeTempDir, pattern } from './helpers.ts';

const temp = makeTempDir();
afterAll(() => temp.remove());

describe('host basics', () => {
  it('reports a power-of-two page size and a page-granular RSS', () => {
    expect(HOST_PAGE_SIZE).toBeGreaterThanOrEqual(4096);
    expect(HOST_PAGE_SIZE & (HOST_PAGE_SIZE - 1)).toBe(0);
    const rss = processRss();
    expect(rss).toBeGreaterThan(MiB);
    expect(rss % HOST_PAGE_SIZE).toBe(0);
  });
});

describe('anonymous region', () => {
  it('reads back what a view writes and starts zeroed', () => {
    const region = HostRegion.anonymous(16 * HOST_PAGE_SIZE);
    expect(region.kind).toBe('anonymous');
    expect(region.bytes).toBe(16 * HOST_PAGE_SIZE);
    expect(region.buffer.byteLength).toBe(16 * HOST_PAGE_SIZE);
    const view = new Uint8Array(region.buffer);
    expect(isAllZero(view)).toBe(true);
    view.set(pattern(view.length));
    expectBytes(new Uint8Array(region.buffer), pattern(view.length));
    const words = new DataView(region.buffer);
    words.setUint32(HOST_PAGE_SIZE, 0xdeadbeef, true);
    expect(view[HOST_PAGE_SIZE]).toBe(0xef);
    region.close();
  });

  it('returns touched memory to the OS on release: RSS drops, pages read zero', () => {
    const bytes = 64 * MiB;
    const region = HostRegion.anonymous(bytes);
    const view = new Uint8Array(region.buffer);
    expect(region.residency(0, bytes).every((page) => page === 0)).toBe(true);

    const beforeTouch = processRss();
    view.fill(0x5a);
    const afterTouch = processRss();
    expect(afterTouch - beforeTouch).toBeGreaterThanOrEqual(0.9 * bytes);
    expect(region.residency(0, bytes).every((page) => page === 1)).toBe(true);

    region.release(0, bytes);
    const afterRelease = processRss();
    expect(afterTouch - afterRelease).toBeGreaterThanOrEqual(0.9 * bytes);
    // Residency first: reading maps the shared zero page, which mincore reports as resident.
    expect(region.residency(0, bytes).every((page) => page === 0)).toBe(true);
    expect(isAllZero(view)).toBe(true);
    region.close();
  });

  it('populate maps just the pages asked for (MADV_POPULATE_WRITE), zero-filled; bad ranges are refused', () => {
    const region = HostRegion.anonymous(8 * HOST_PAGE_SIZE);
    expect(region.populate(2 * HOST_PAGE_SIZE, 3 * HOST_PAGE_SIZE)).toBe(true); // Linux ≥ 5.14
    expect(Array.from(region.residency(0, 8 * HOST_PAGE_SIZE))).toEqual([0, 0, 1, 1, 1, 0, 0, 0]);
    expect(isAllZero(new Uint8Array(region.buffer))).toBe(true);
    expect(region.populate(0, 0)).toBe(true);
    expect(() => region.populate(1, HOST_PAGE_SIZE)).toThrow(/offset/);
    expect(() => region.populate(0, 9 * HOST_PAGE_SIZE)).toThrow(/region/);
    region.close();
    expect(() => region.populate(0, HOST_PAGE_SIZE)).toThrow(/closed/);
  });

  it('releases only the pages asked for', () => {
    const region = HostRegion.anonymous(8 * HOST_PAGE_SIZE);
    const view = new Uint8Array(region.buffer);
    view.fill(7);
    region.release(2 * HOST_PAGE_SIZE, 3 * HOST_PAGE_SIZE);
    expect(Array.from(region.residency(0, 8 * HOST_PAGE_SIZE))).toEqual([1, 1, 0, 0, 0, 1, 1, 1]);
    expect(isAllZero(view.subarray(2 * HOST_PAGE_SIZE, 5 * HOST_PAGE_SIZE))).toBe(true);
    expect(view[2 * HOST_PAGE_SIZE - 1]).toBe(7);
    expect(view[5 * HOST_PAGE_SIZE]).toBe(7);
    region.release(0, 0); // an empty range is a no-op
    expect(view[0]).toBe(7);
    region.close();
  });

  it('reserves 4 GiB of address space with noReserve, and refuses one page more', () => {
    const fourGiB = 4 * 1024 * MiB;
    const region = HostRegion.anonymous(fourGiB, { noReserve: true });
    expect(region.buffer.byteLength).toBe(fourGiB);
    const view = new Uint8Array(region.buffer);
    view[fourGiB - 1] = 42;
    expect(view[fourGiB - 1]).toBe(42);
    region.close();
    expectNativeError(() => HostRegion.anonymous(fourGiB + HOST_PAGE_SIZE, { noReserve: true }), 'BV_NATIVE_TOO_LARGE');
  });

  it('answers adviseHugePages with a boolean and keeps the memory usable', () => {
    const bytes = 4 * MiB;
    const region = HostRegion.anonymous(bytes);
    const advised = region.adviseHugePages(0, bytes);
    expect(typeof advised).toBe('boolean');
    const thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'latin1');
    expect(advised).toBe(!thp.includes('[never]'));
    new Uint8Array(region.buffer).fill(3);
    expect(new Uint8Array(region.buffer)[bytes - 1]).toBe(3);
    region.close();
  });

  it('close() unmaps, detaches every view, and is idempotent', () => {
    const region = HostRegion.anonymous(4 * HOST_PAGE_SIZE);
    const buffer = region.buffer;
    const view = new Uint8Array(buffer);
    view[0] = 1;
    expect(region.closed).toBe(false);
    region.close();
    expect(region.closed).toBe(true);
    expect(buffer.byteLength).toBe(0);
    expect(view.length).toBe(0);
    expect(view[0]).toBeUndefined();
    region.close();
    expectNativeError(() => region.buffer, 'BV_NATIVE_CLOSED');
    expectNativeError(() => region.release(0, HOST_PAGE_SIZE), 'BV_NATIVE_CLOSED');
  });

  it('keeps the mapping alive while a view survives its region object', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const collectGarbage = async () => {
      for (let round = 0; round < 4; round++) {
        gc();
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    let regionCollected = false;
    const registry = new FinalizationRegistry(() => {
      regionCollected = true;
    });
    const view = (() => {
      const region = HostRegion.anonymous(64 * HOST_PAGE_SIZE);
      registry.register(region, 'region');
      const bytes = new Uint8Array(region.buffer);
      bytes.set(pattern(bytes.length, 9));
      return bytes;
    })();
    await collectGarbage();
    expect(regionCollected).toBe(true);
    // New mappings would likely reuse the address range had it been unmapped.
    const others = [HostRegion.anonymous(64 * HOST_PAGE_SIZE), HostRegion.anonymous(64 * HOST_PAGE_SIZE)];
    for (const other of others) new Uint8Array(other.buffer).fill(0xff);
    expectBytes(view, pattern(64 * HOST_PAGE_SIZE, 9));
    for (const other of others) other.close();
  });
});

describe('file-backed region', () => {
  it('creates and extends the file, and shows writes in it after flush', () => {
    const path = join(temp.dir, 'shared.bin');
    const bytes = 16 * HOST_PAGE_SIZE;
    const region = HostRegion.sharedFile(path, bytes, { create: true });
    expect(region.kind).toBe('file');
    expect(statSync(path).size).toBe(bytes);
    const view = new Uint8Array(region.buffer);
    view.set(pattern(bytes));
    region.flush(5, 100); // any byte range; widened to its pages
    region.flush(0, bytes);
    expectBytes(new Uint8Array(readFileSync(path)), pattern(bytes));

    // Shared both ways: a write to the file shows in the mapping.
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([1, 2, 3]), 0, 3, HOST_PAGE_SIZE);
    closeSync(fd);
    expect(Array.from(view.subarray(HOST_PAGE_SIZE, HOST_PAGE_SIZE + 3))).toEqual([1, 2, 3]);
    region.close();
  });

  it('punches a hole on release: the file reads zero there and its blocks drop', () => {
    const path = join(temp.dir, 'hole.bin');
    const bytes = 2 * MiB;
    const region = HostRegion.sharedFile(path, bytes, { create: true });
    const view = new Uint8Array(region.buffer);
    view.set(pattern(bytes, 1));
    region.flush(0, bytes);
    const blocksBefore = statSync(path).blocks;
    expect(blocksBefore * 512).toBeGreaterThanOrEqual(bytes);

    region.release(MiB / 2, MiB);
    const blocksAfter = statSync(path).blocks;
    expect((blocksBefore - blocksAfter) * 512).toBeGreaterThanOrEqual(0.9 * MiB);
    expect(statSync(path).size).toBe(bytes);
    const expected = pattern(bytes, 1);
    expected.fill(0, MiB / 2, MiB / 2 + MiB);
    expectBytes(new Uint8Array(readFileSync(path)), expected);
    expectBytes(view, expected);
    region.close();
  });

  it('maps an existing larger file without shrinking it, and refuses a missing one', () => {
    const path = join(temp.dir, 'larger.bin');
    writeFileSync(path, pattern(8 * HOST_PAGE_SIZE, 2));
    const region = HostRegion.sharedFile(path, 4 * HOST_PAGE_SIZE);
    expectBytes(new Uint8Array(region.buffer), pattern(8 * HOST_PAGE_SIZE, 2).subarray(0, 4 * HOST_PAGE_SIZE));
    expect(statSync(path).size).toBe(8 * HOST_PAGE_SIZE);
    region.close();

    const missing = join(temp.dir, 'missing.bin');
    const error = expectNativeError(() => HostRegion.sharedFile(missing, HOST_PAGE_SIZE), 'BV_NATIVE_IO');
    expect(error.errnoName).toBe('ENOENT');
    expect(error.message).toContain(missing);
    expectNativeError(() => HostRegion.sharedFile(temp.dir, HOST_PAGE_SIZE), 'BV_NATIVE_IO'); // EISDIR
  });

  it('refuses to let HostFile shrink a file under a live mapping', () => {
    const path = join(temp.dir, 'pinned.bin');
    const region = HostRegion.sharedFile(path, 4 * HOST_PAGE_SIZE, { create: true });
    const file = HostFile.open(path, 'rw');
    expectNativeError(() => file.truncate(HOST_PAGE_SIZE), 'BV_NATIVE_BUSY');
    expectNativeError(() => HostFile.open(path, 'create'), 'BV_NATIVE_BUSY');
    file.truncate(8 * HOST_PAGE_SIZE); // growing is fine
    region.close();
    file.truncate(0);
    expect(file.size).toBe(0);
    file.close();
  });
});

describe('memfd region', () => {
  it('stores bytes, releases them to zero, and declines huge pages', () => {
    const bytes = 4 * MiB;
    const region = HostRegion.sharedMemory(bytes, 'bv-test');
    expect(region.kind).toBe('memfd');
    const view = new Uint8Array(region.buffer);
    view.fill(0x11);
    expect(region.residency(0, bytes).every((page) => page === 1)).toBe(true);
    const afterTouch = processRss();
    region.release(0, bytes);
    expect(afterTouch - processRss()).toBeGreaterThanOrEqual(0.9 * bytes);
    expect(region.residency(0, bytes).every((page) => page === 0)).toBe(true);
    expect(isAllZero(view)).toBe(true);
    expect(region.adviseHugePages(0, bytes)).toBe(false);
    region.flush(0, bytes);
    region.close();
    HostRegion.sharedMemory(HOST_PAGE_SIZE).close(); // the name is optional
  });
});

describe('mapFilePrivate', () => {
  const pages = 16;
  const fileBytes = pages * HOST_PAGE_SIZE;
  const path = join(temp.dir, 'image.bin');
  writeFileSync(path, pattern(fileBytes, 5));
  const filePattern = pattern(fileBytes, 5);

  it('shows the file over part of the region and keeps guest writes private', () => {
    const region = HostRegion.anonymous(4 * fileBytes);
    const view = new Uint8Array(region.buffer);
    region.mapFilePrivate(fileBytes, fileBytes, path, 0);
    expectBytes(view.subarray(fileBytes, 2 * fileBytes), filePattern);
    expect(isAllZero(view.subarray(0, fileBytes))).toBe(true);
    expect(isAllZero(view.subarray(2 * fileBytes))).toBe(true);

    view.fill(0xee, fileBytes, fileBytes + 3 * HOST_PAGE_SIZE);
    expect(view[fileBytes]).toBe(0xee);
    expectBytes(new Uint8Array(readFileSync(path)), filePattern);

    // release() drops the private copies: the file's bytes come back (documented).
    region.release(fileBytes, fileBytes);
    expectBytes(view.subarray(fileBytes, 2 * fileBytes), filePattern);

    region.unmapPrivate(fileBytes, fileBytes);
    expect(isAllZero(view.subarray(fileBytes, 2 * fileBytes))).toBe(true);
    view[fileBytes] = 9; // fresh anonymous pages are writable
    expect(view[fileBytes]).toBe(9);
    region.close();
  });

  it('maps from a page-aligned file offset', () => {
    const region = HostRegion.anonymous(fileBytes);
    region.mapFilePrivate(0, 4 * HOST_PAGE_SIZE, path, 8 * HOST_PAGE_SIZE);
    expectBytes(new Uint8Array(region.buffer, 0, 4 * HOST_PAGE_SIZE), 
      filePattern.subarray(8 * HOST_PAGE_SIZE, 12 * HOST_PAGE_SIZE),
    );
    region.close();
  });

  it('refuses ranges past EOF, unaligned numbers, ranges outside the region and shared regions', () => {
    const region = HostRegion.anonymous(2 * fileBytes);
    const page = HOST_PAGE_SIZE;
    const pastEof = expectNativeError(() => region.mapFilePrivate(0, 2 * page, path, fileBytes - page), 'BV_NATIVE_OUT_OF_RANGE');
    expect(pastEof.message).toContain(path);
    expectNativeError(() => region.mapFilePrivate(0, page, path, fileBytes + page), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFilePrivate(0, 2 * fileBytes, path, 0), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFilePrivate(1, page, path, 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.mapFilePrivate(0, page + 1, path, 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.mapFilePrivate(0, page, path, 512), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.mapFilePrivate(2 * fileBytes, page, path, 0), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFilePrivate(fileBytes + page, fileBytes, path, 0), 'BV_NATIVE_OUT_OF_RANGE');
    const missing = expectNativeError(() => region.mapFilePrivate(0, page, join(temp.dir, 'nope'), 0), 'BV_NATIVE_IO');
    expect(missing.errnoName).toBe('ENOENT');
    expectNativeError(() => region.mapFilePrivate(0, page, temp.dir, 0), 'BV_NATIVE_BAD_ARGUMENT');
    expectNativeError(() => region.unmapPrivate(page, 1), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.unmapPrivate(2 * fileBytes, page), 'BV_NATIVE_OUT_OF_RANGE');
    // Nothing was mapped by the refused calls.
    expect(isAllZero(new Uint8Array(region.buffer))).toBe(true);
    region.close();

    const shared = HostRegion.sharedMemory(fileBytes);
    expectNativeError(() => shared.mapFilePrivate(0, page, path, 0), 'BV_NATIVE_UNSUPPORTED');
    expectNativeError(() => shared.unmapPrivate(0, page), 'BV_NATIVE_UNSUPPORTED');
    shared.close();
  });

  it('pins the mapped file against truncation until the range is unmapped', () => {
    const pinned = join(temp.dir, 'pinned-image.bin');
    writeFileSync(pinned, pattern(fileBytes, 6));
    const region = HostRegion.anonymous(fileBytes);
    region.mapFilePrivate(0, 4 * HOST_PAGE_SIZE, pinned, 4 * HOST_PAGE_SIZE);
    const file = HostFile.open(pinned, 'rw');
    expectNativeError(() => file.truncate(4 * HOST_PAGE_SIZE), 'BV_NATIVE_BUSY');
    file.truncate(8 * HOST_PAGE_SIZE); // the mapped range ends there: still safe
    region.unmapPrivate(0, 4 * HOST_PAGE_SIZE);
    file.truncate(0);
    expect(file.size).toBe(0);
    file.close();
    region.close();
  });
});

describe('mapFileShared', () => {
  const pages = 16;
  const fileBytes = pages * HOST_PAGE_SIZE;
  const page = HOST_PAGE_SIZE;

  it('puts the file under part of the region: stores reach the file, flush syncs them', () => {
    const path = join(temp.dir, 'pmem.bin');
    writeFileSync(path, pattern(fileBytes, 7));
    const region = HostRegion.anonymous(4 * fileBytes);
    const view = new Uint8Array(region.buffer);
    region.mapFileShared(fileBytes, fileBytes, path, 0);
    expectBytes(view.subarray(fileBytes, 2 * fileBytes), pattern(fileBytes, 7));
    expect(isAllZero(view.subarray(0, fileBytes))).toBe(true);

    view.fill(0xab, fileBytes + page, fileBytes + 3 * page);
    region.flush(fileBytes + page, 2 * page);
    const onDisk = new Uint8Array(readFileSync(path));
    expect(onDisk[page]).toBe(0xab);
    expect(onDisk[3 * page - 1]).toBe(0xab);
    expect(onDisk[3 * page]).toBe(pattern(fileBytes, 7)[3 * page]);
    // A second mapping of the same file sees the same pages.
    const other = HostRegion.anonymous(fileBytes);
    other.mapFileShared(0, fileBytes, path, 0);
    expect(new Uint8Array(other.buffer)[page]).toBe(0xab);
    other.close();

    // release() would leave the file's bytes, not zeros: refused; unmapPrivate undoes the mapping.
    expectNativeError(() => region.release(fileBytes, page), 'BV_NATIVE_UNSUPPORTED');
    expectNativeError(() => region.release(0, 2 * fileBytes), 'BV_NATIVE_UNSUPPORTED');
    region.release(0, fileBytes); // the anonymous part is still released as usual
    region.unmapPrivate(fileBytes, page); // one page back to anonymous memory
    expect(isAllZero(view.subarray(fileBytes, fileBytes + page))).toBe(true);
    region.release(fileBytes, page);
    expectNativeError(() => region.release(fileBytes + page, page), 'BV_NATIVE_UNSUPPORTED');
    view[fileBytes] = 1; // the anonymous page does not reach the file
    region.unmapPrivate(fileBytes, fileBytes);
    region.release(0, 4 * fileBytes);
    expect(new Uint8Array(readFileSync(path))[0]).toBe(pattern(fileBytes, 7)[0]);
    expect(new Uint8Array(readFileSync(path))[page]).toBe(0xab);
    region.close();
  });

  it('maps from a page-aligned file offset and pins the file at that size', () => {
    const path = join(temp.dir, 'pmem-offset.bin');
    writeFileSync(path, pattern(fileBytes, 8));
    const region = HostRegion.anonymous(fileBytes);
    region.mapFileShared(0, 4 * page, path, 8 * page);
    expectBytes(new Uint8Array(region.buffer, 0, 4 * page), pattern(fileBytes, 8).subarray(8 * page, 12 * page));
    new Uint8Array(region.buffer)[0] = 0x5a;
    expect(new Uint8Array(readFileSync(path))[8 * page]).toBe(0x5a);
    const file = HostFile.open(path, 'rw');
    expectNativeError(() => file.truncate(11 * page), 'BV_NATIVE_BUSY');
    region.unmapPrivate(0, 4 * page);
    file.truncate(0);
    file.close();
    region.close();
  });

  it('refuses bad offsets and lengths, ranges past EOF or outside the region, and shared regions', () => {
    const path = join(temp.dir, 'pmem-bad.bin');
    writeFileSync(path, pattern(fileBytes, 9));
    const region = HostRegion.anonymous(2 * fileBytes);
    const pastEof = expectNativeError(() => region.mapFileShared(0, 2 * page, path, fileBytes - page), 'BV_NATIVE_OUT_OF_RANGE');
    expect(pastEof.message).toContain(path);
    expectNativeError(() => region.mapFileShared(0, page, path, fileBytes + page), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFileShared(0, 2 * fileBytes, path, 0), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFileShared(1, page, path, 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.mapFileShared(0, page + 1, path, 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.mapFileShared(0, page, path, 512), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => region.mapFileShared(-page, page, path, 0), 'BV_NATIVE_BAD_ARGUMENT');
    expectNativeError(() => region.mapFileShared(0, 1.5, path, 0), 'BV_NATIVE_BAD_ARGUMENT');
    expectNativeError(() => region.mapFileShared(2 * fileBytes, page, path, 0), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFileShared(fileBytes + page, fileBytes, path, 0), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => region.mapFileShared(0, page, path, 2 ** 52), 'BV_NATIVE_OUT_OF_RANGE');
    const missing = expectNativeError(() => region.mapFileShared(0, page, join(temp.dir, 'nope'), 0), 'BV_NATIVE_IO');
    expect(missing.errnoName).toBe('ENOENT');
    // Opened read-write, a directory fails in open(2) itself (EISDIR), before the regular-file check.
    expect(expectNativeError(() => region.mapFileShared(0, page, temp.dir, 0), 'BV_NATIVE_IO').errnoName).toBe('EISDIR');
    // Nothing was mapped by the refused calls: the whole region is still releasable anonymous memory.
    expect(isAllZero(new Uint8Array(region.buffer))).toBe(true);
    region.release(0, 2 * fileBytes);
    region.close();
    expectNativeError(() => region.mapFileShared(0, page, path, 0), 'BV_NATIVE_CLOSED');

    const shared = HostRegion.sharedMemory(fileBytes);
    expectNativeError(() => shared.mapFileShared(0, page, path, 0), 'BV_NATIVE_UNSUPPORTED');
    shared.close();
  });
});
