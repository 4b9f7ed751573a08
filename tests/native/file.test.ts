import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HOST_PAGE_SIZE, HostFile, HostRegion, syncDirectory } from '../../native/index.ts';
import { expectBytes, expectNativeError, makeTempDir, pattern } from './helpers.ts';

const temp = makeTempDir();
afterAll(() => temp.remove());

describe('HostFile', () => {
  it('writes and reads at offsets, and tracks its size', () => {
    const path = join(temp.dir, 'rw.bin');
    const file = HostFile.open(path, 'create');
    expect(file.size).toBe(0);
    expect(file.pwrite(pattern(1000, 1), 0)).toBe(1000);
    expect(file.pwrite(Buffer.from('tail'), 5000)).toBe(4); // leaves a gap of zeros
    expect(file.size).toBe(5004);
    file.sync();

    const head = new Uint8Array(1000);
    expect(file.pread(head, 0)).toBe(1000);
    expectBytes(head, pattern(1000, 1));
    const gap = new Uint8Array(16);
    expect(file.pread(gap, 4000)).toBe(16);
    expect(gap.every((byte) => byte === 0)).toBe(true);
    expect(readFileSync(path).subarray(5000).toString()).toBe('tail');
    file.close();
  });

  it('returns a short count at end of file and zero past it', () => {
    const path = join(temp.dir, 'short.bin');
    writeFileSync(path, pattern(100, 2));
    const file = HostFile.open(path, 'r');
    const target = new Uint8Array(64).fill(0xaa);
    expect(file.pread(target, 80)).toBe(20);
    expectBytes(target.subarray(0, 20), pattern(100, 2).subarray(80));
    expect(target[20]).toBe(0xaa); // bytes past the count are untouched
    expect(file.pread(target, 100)).toBe(0);
    expect(file.pread(target, 1_000_000)).toBe(0);
    expect(file.pread(new Uint8Array(0), 0)).toBe(0);
    file.close();
  });

  it('moves bytes between a file and region memory without a JS copy', () => {
    const path = join(temp.dir, 'region-io.bin');
    const region = HostRegion.anonymous(8 * HOST_PAGE_SIZE);
    const view = new Uint8Array(region.buffer);
    view.set(pattern(4 * HOST_PAGE_SIZE, 3), HOST_PAGE_SIZE);

    const file = HostFile.open(path, 'create');
    expect(file.pwriteFromRegion(region, HOST_PAGE_SIZE, 4 * HOST_PAGE_SIZE, 100)).toBe(4 * HOST_PAGE_SIZE);
    expectBytes(new Uint8Array(readFileSync(path)).subarray(100), pattern(4 * HOST_PAGE_SIZE, 3));

    view.fill(0);
    expect(file.preadToRegion(region, 2 * HOST_PAGE_SIZE, 4 * HOST_PAGE_SIZE, 100)).toBe(4 * HOST_PAGE_SIZE);
    expectBytes(view.subarray(2 * HOST_PAGE_SIZE, 6 * HOST_PAGE_SIZE), pattern(4 * HOST_PAGE_SIZE, 3));
    // Short at end of file: 100 + 4 pages is the size.
    expect(file.preadToRegion(region, 0, 2 * HOST_PAGE_SIZE, 3 * HOST_PAGE_SIZE + 100)).toBe(HOST_PAGE_SIZE);
    expectBytes(view.subarray(0, HOST_PAGE_SIZE), pattern(4 * HOST_PAGE_SIZE, 3).subarray(3 * HOST_PAGE_SIZE));

    expectNativeError(() => file.preadToRegion(region, 7 * HOST_PAGE_SIZE, 2 * HOST_PAGE_SIZE, 0), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => file.pwriteFromRegion(region, 0, 9 * HOST_PAGE_SIZE, 0), 'BV_NATIVE_OUT_OF_RANGE');
    const notARegion = { bytes: 4096 } as unknown as HostRegion;
    expectNativeError(() => file.preadToRegion(notARegion, 0, 1, 0), 'BV_NATIVE_BAD_ARGUMENT');
    region.close();
    expectNativeError(() => file.preadToRegion(region, 0, 1, 0), 'BV_NATIVE_CLOSED');
    expectNativeError(() => file.pwriteFromRegion(region, 0, 1, 0), 'BV_NATIVE_CLOSED');
    file.close();
  });

  it('truncates (shrinks and grows) and create empties an existing file', () => {
    const path = join(temp.dir, 'truncate.bin');
    writeFileSync(path, pattern(10_000, 4));
    const file = HostFile.open(path, 'rw');
    file.truncate(3000);
    expect(file.size).toBe(3000);
    expect(statSync(path).size).toBe(3000);
    file.truncate(3 * HOST_PAGE_SIZE);
    expect(file.size).toBe(3 * HOST_PAGE_SIZE);
    const grown = new Uint8Array(16);
    file.pread(grown, 3000);
    expect(grown.every((byte) => byte === 0)).toBe(true);
    file.close();

    const recreated = HostFile.open(path, 'create');
    expect(recreated.size).toBe(0);
    recreated.close();
  });

  it('reports I/O failures as BV_NATIVE_IO naming the path and errno', () => {
    const missing = join(temp.dir, 'does-not-exist.bin');
    const error = expectNativeError(() => HostFile.open(missing, 'r'), 'BV_NATIVE_IO');
    expect(error.message).toContain(missing);
    expect(error.path).toBe(missing);
    expect(error.errnoName).toBe('ENOENT');
    expect(error.syscall).toBe('open');
    expect(existsSync(missing)).toBe(false); // 'rw' must not create either
    expectNativeError(() => HostFile.open(missing, 'rw'), 'BV_NATIVE_IO');

    const path = join(temp.dir, 'readonly.bin');
    writeFileSync(path, 'x');
    const readOnly = HostFile.open(path, 'r');
    expect(expectNativeError(() => readOnly.pwrite(Buffer.from('y'), 0), 'BV_NATIVE_IO').errnoName).toBe('EBADF');
    readOnly.close();
    expectNativeError(() => HostFile.open(temp.dir, 'r'), 'BV_NATIVE_BAD_ARGUMENT'); // not a regular file
  });

  it('refuses use after close and closes idempotently', () => {
    const file = HostFile.open(join(temp.dir, 'closed.bin'), 'create');
    expect(file.closed).toBe(false);
    file.close();
    file.close();
    expect(file.closed).toBe(true);
    expectNativeError(() => file.size, 'BV_NATIVE_CLOSED');
    expectNativeError(() => file.pread(new Uint8Array(1), 0), 'BV_NATIVE_CLOSED');
    expectNativeError(() => file.pwrite(new Uint8Array(1), 0), 'BV_NATIVE_CLOSED');
    expectNativeError(() => file.truncate(0), 'BV_NATIVE_CLOSED');
    expectNativeError(() => file.sync(), 'BV_NATIVE_CLOSED');
  });

  it('syncs a directory, and names a missing one', () => {
    syncDirectory(temp.dir);
    const missing = join(temp.dir, 'no-such-dir');
    expect(expectNativeError(() => syncDirectory(missing), 'BV_NATIVE_IO').path).toBe(missing);
    const path = join(temp.dir, 'plain.bin');
    writeFileSync(path, '');
    expect(expectNativeError(() => syncDirectory(path), 'BV_NATIVE_IO').errnoName).toBe('ENOTDIR');
  });
});
