import { constants, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HOST_FILE_MAX_ASYNC_TRANSFER, HOST_PAGE_SIZE, HostFile, HostRegion, NativeError } from '../../native/index.ts';
import { ask, expectBytes, expectNativeError, makeTempDir, MiB, pattern, startNativeWorker } from './helpers.ts';

const temp = makeTempDir();
afterAll(() => temp.remove());

// The flag's value differs between architectures; Node knows this host's.
const O_DIRECT = constants.O_DIRECT;

/** The descriptors of this process open on `path` (from /proc/self/fd). */
function descriptorsOn(path: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${entry}`) === path) found.push(Number(entry));
    } catch {
      // the descriptor readdir itself used is gone by now
    }
  }
  return found;
}

/** The open flags of descriptor `fd` (octal `flags:` line of /proc/self/fdinfo). */
function openFlags(fd: number): number {
  const line = readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1').split('\n').find((text) => text.startsWith('flags:'));
  return parseInt(line!.split(/\s+/)[1]!, 8);
}

/** Awaits `promise` and returns the NativeError it rejects with (fails if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<NativeError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  expect(caught, 'expected a rejection').toBeInstanceOf(NativeError);
  return caught as NativeError;
}

describe('HostFile asynchronous I/O', () => {
  it('round-trips buffered transfers at any offset and length', async () => {
    const path = join(temp.dir, 'buffered.bin');
    const file = HostFile.open(path, 'create');
    expect(file.direct).toBe(false);
    expect(file.directAlignment).toBe(1);
    const head = pattern(1000, 1);
    const tail = pattern(3 * MiB + 7, 2);
    const writes = [file.pwriteAsync(head, 13), file.pwriteAsync(tail, 5000)];
    expect(file.pendingOperations).toBe(2);
    expect(await Promise.all(writes)).toEqual([1000, 3 * MiB + 7]);
    expect(file.pendingOperations).toBe(0);
    expect(file.size).toBe(5000 + 3 * MiB + 7);

    const onDisk = new Uint8Array(readFileSync(path));
    expectBytes(onDisk.subarray(13, 1013), head);
    expectBytes(onDisk.subarray(5000), tail);

    // Into a view at an odd byte offset of a larger buffer: only the view is written.
    const backing = new Uint8Array(1002).fill(0xee);
    const view = backing.subarray(1, 1001);
    expect(await file.preadAsync(view, 13)).toBe(1000);
    expectBytes(view, head);
    expect(backing[0]).toBe(0xee);
    expect(backing[1001]).toBe(0xee);
    const big = new Uint8Array(3 * MiB + 7);
    expect(await file.preadAsync(big, 5000)).toBe(3 * MiB + 7);
    expectBytes(big, tail);
    expect(await file.preadAsync(new Uint8Array(0), 0)).toBe(0);
    expect(await file.pwriteAsync(new Uint8Array(0), 0)).toBe(0);
    await file.syncAsync();
    file.close();
  });

  it('opens with O_DIRECT and round-trips aligned transfers from any memory', async () => {
    const path = join(temp.dir, 'direct.bin');
    const file = HostFile.open(path, 'create', { direct: true });
    expect(file.direct).toBe(true);
    const alignment = file.directAlignment;
    // ext4 reports 512 through statx(STATX_DIOALIGN); any file system gives a power of two.
    expect(alignment).toBeGreaterThanOrEqual(512);
    expect(alignment & (alignment - 1)).toBe(0);
    const [fd] = descriptorsOn(path);
    expect(openFlags(fd!) & O_DIRECT).toBe(O_DIRECT);

    // Caller memory at an odd address: the addon copies through an aligned buffer.
    const source = new Uint8Array(8 * alignment + 3).subarray(3);
    source.set(pattern(8 * alignment, 3));
    expect(await file.pwriteAsync(source, 2 * alignment)).toBe(8 * alignment);
    const target = new Uint8Array(8 * alignment + 5).subarray(5);
    expect(await file.preadAsync(target, 2 * alignment)).toBe(8 * alignment);
    expectBytes(target, pattern(8 * alignment, 3));
    expectBytes(new Uint8Array(readFileSync(path)).subarray(2 * alignment), pattern(8 * alignment, 3));
    await file.syncAsync();
    file.close();
  });

  it('on tmpfs (no STATX_DIOALIGN) falls back to 512, or refuses O_DIRECT with BV_NATIVE_UNSUPPORTED', async () => {
    // Linux 6.6+ tmpfs accepts O_DIRECT without reporting an alignment; older kernels refuse it.
    const path = join('/dev/shm', `bv-direct-${process.pid}.bin`);
    let file: HostFile;
    try {
      file = HostFile.open(path, 'create', { direct: true });
    } catch (error) {
      rmSync(path, { force: true });
      expect(error).toBeInstanceOf(NativeError);
      expect((error as NativeError).code).toBe('BV_NATIVE_UNSUPPORTED');
      expect((error as NativeError).message).toContain('O_DIRECT is not supported on the file system');
      return;
    }
    try {
      expect(file.direct).toBe(true);
      expect(file.directAlignment).toBe(512);
      expect(await file.pwriteAsync(pattern(1024, 12), 512)).toBe(1024);
      const back = new Uint8Array(1024);
      expect(await file.preadAsync(back, 512)).toBe(1024);
      expectBytes(back, pattern(1024, 12));
      file.close();
    } finally {
      rmSync(path, { force: true });
    }
  });

  it('makes the synchronous transfers work on an O_DIRECT file too', () => {
    const path = join(temp.dir, 'direct-sync.bin');
    const file = HostFile.open(path, 'create', { direct: true });
    const alignment = file.directAlignment;
    // Larger than the 1 MiB bounce chunk, from an unaligned view.
    const length = 3 * MiB + alignment;
    const source = new Uint8Array(length + 1).subarray(1);
    source.set(pattern(length, 4));
    expect(file.pwrite(source, alignment)).toBe(length);
    const target = new Uint8Array(length + 3).subarray(3);
    expect(file.pread(target, alignment)).toBe(length);
    expectBytes(target, pattern(length, 4));

    const region = HostRegion.anonymous(4 * HOST_PAGE_SIZE);
    expect(file.preadToRegion(region, 100, 2 * alignment, alignment)).toBe(2 * alignment);
    expectBytes(new Uint8Array(region.buffer, 100, 2 * alignment), pattern(length, 4).subarray(0, 2 * alignment));
    expect(file.pwriteFromRegion(region, 100, 2 * alignment, 0)).toBe(2 * alignment);
    expectBytes(new Uint8Array(readFileSync(path)).subarray(0, 2 * alignment), pattern(length, 4).subarray(0, 2 * alignment));
    region.close();

    expectNativeError(() => file.pread(new Uint8Array(alignment), 1), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => file.pwrite(new Uint8Array(alignment + 1), 0), 'BV_NATIVE_UNALIGNED');
    file.close();
  });

  it('keeps 64 operations in flight and gives every one its own bytes', async () => {
    for (const direct of [false, true]) {
      const path = join(temp.dir, `many-${direct}.bin`);
      const file = HostFile.open(path, 'create', { direct });
      const block = 4096;
      const count = 64;
      // Blocks written in a shuffled order, all at once.
      const order = Array.from({ length: count }, (_, i) => (i * 37) % count);
      const writes = order.map((index) => file.pwriteAsync(pattern(block, index + 1), index * block));
      expect(file.pendingOperations).toBe(count);
      expect(await Promise.all(writes)).toEqual(new Array(count).fill(block));
      expect(file.pendingOperations).toBe(0);

      const targets = order.map(() => new Uint8Array(block));
      const reads = order.map((index, slot) => file.preadAsync(targets[slot]!, index * block));
      expect(file.pendingOperations).toBe(count);
      expect(await Promise.all(reads)).toEqual(new Array(count).fill(block));
      order.forEach((index, slot) => expectBytes(targets[slot]!, pattern(block, index + 1)));
      file.close();
    }
  });

  it('copies a write source when called, so the caller may reuse it at once', async () => {
    const file = HostFile.open(join(temp.dir, 'snapshot.bin'), 'create');
    const source = pattern(4096, 5);
    const written = file.pwriteAsync(source, 0);
    source.fill(0);
    expect(await written).toBe(4096);
    const back = new Uint8Array(4096);
    file.pread(back, 0);
    expectBytes(back, pattern(4096, 5));
    file.close();
  });

  it('refuses unaligned O_DIRECT requests before queuing them', () => {
    const file = HostFile.open(join(temp.dir, 'unaligned.bin'), 'create', { direct: true });
    const alignment = file.directAlignment;
    const unaligned = expectNativeError(() => file.preadAsync(new Uint8Array(alignment), 100), 'BV_NATIVE_UNALIGNED');
    expect(unaligned.message).toContain(`multiples of ${alignment}`);
    expectNativeError(() => file.preadAsync(new Uint8Array(alignment - 1), 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => file.pwriteAsync(new Uint8Array(alignment + 1), 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => file.pwriteAsync(new Uint8Array(alignment), alignment / 2), 'BV_NATIVE_UNALIGNED');
    // The fixed order: alignment before size and bounds, argument types before alignment, closed first.
    expectNativeError(() => file.pwriteAsync(new Uint8Array(HOST_FILE_MAX_ASYNC_TRANSFER + 1), 0), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => file.preadAsync(new Uint8Array(alignment), 2 ** 53 - 1), 'BV_NATIVE_UNALIGNED');
    expectNativeError(() => file.preadAsync(new Uint8Array(alignment + 1), -1), 'BV_NATIVE_BAD_ARGUMENT');
    expect(file.pendingOperations).toBe(0);
    file.close();
    expectNativeError(() => file.preadAsync(new Uint8Array(alignment + 1), -1), 'BV_NATIVE_CLOSED');
  });

  it('refuses bad offsets, lengths and buffers synchronously with typed errors', () => {
    const file = HostFile.open(join(temp.dir, 'bad.bin'), 'create');
    const bytes = new Uint8Array(16);
    for (const offset of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, '0', 1n, undefined]) {
      expectNativeError(() => file.preadAsync(bytes, offset as unknown as number), 'BV_NATIVE_BAD_ARGUMENT');
      expectNativeError(() => file.pwriteAsync(bytes, offset as unknown as number), 'BV_NATIVE_BAD_ARGUMENT');
    }
    for (const buffer of [new Uint16Array(8), new DataView(new ArrayBuffer(8)), new ArrayBuffer(8), [1, 2], 'text', null]) {
      expectNativeError(() => file.preadAsync(buffer as unknown as Uint8Array, 0), 'BV_NATIVE_BAD_ARGUMENT');
      expectNativeError(() => file.pwriteAsync(buffer as unknown as Uint8Array, 0), 'BV_NATIVE_BAD_ARGUMENT');
    }
    // The last byte of the range must stay below 2^53 - 1.
    expectNativeError(() => file.preadAsync(bytes, 2 ** 53 - 8), 'BV_NATIVE_OUT_OF_RANGE');
    expectNativeError(() => file.pwriteAsync(bytes, 2 ** 53 - 1), 'BV_NATIVE_OUT_OF_RANGE');
    const tooLarge = new Uint8Array(HOST_FILE_MAX_ASYNC_TRANSFER + 1);
    expectNativeError(() => file.preadAsync(tooLarge, 0), 'BV_NATIVE_TOO_LARGE');
    expectNativeError(() => file.pwriteAsync(tooLarge, 0), 'BV_NATIVE_TOO_LARGE');
    expect(file.pendingOperations).toBe(0);
    expectNativeError(() => HostFile.open(join(temp.dir, 'bad.bin'), 'r', { direct: 'yes' as unknown as boolean }), 'BV_NATIVE_BAD_ARGUMENT');
    file.close();
  });

  it('returns a short count at end of file and zero past it, buffered and direct', async () => {
    const path = join(temp.dir, 'eof.bin');
    writeFileSync(path, pattern(5000, 6));
    const buffered = HostFile.open(path, 'r');
    const target = new Uint8Array(4096).fill(0xaa);
    expect(await buffered.preadAsync(target, 4000)).toBe(1000);
    expectBytes(target.subarray(0, 1000), pattern(5000, 6).subarray(4000));
    expect(target[1000]).toBe(0xaa); // bytes past the count are untouched
    expect(await buffered.preadAsync(target, 5000)).toBe(0);
    expect(await buffered.preadAsync(target, 1_000_000)).toBe(0);
    buffered.close();

    const direct = HostFile.open(path, 'r', { direct: true });
    const alignment = direct.directAlignment;
    const aligned = new Uint8Array(8192).fill(0xbb);
    expect(await direct.preadAsync(aligned, 4096)).toBe(5000 - 4096);
    expectBytes(aligned.subarray(0, 5000 - 4096), pattern(5000, 6).subarray(4096));
    expect(aligned[5000 - 4096]).toBe(0xbb);
    expect(await direct.preadAsync(new Uint8Array(alignment), 64 * alignment)).toBe(0);
    const whole = new Uint8Array(16 * alignment);
    expect(direct.pread(whole, 0)).toBe(5000);
    expectBytes(whole.subarray(0, 5000), pattern(5000, 6));
    direct.close();
  });

  it('close() with operations in flight lets them all settle, refuses new calls, then closes the descriptor', async () => {
    for (const direct of [false, true]) {
      const path = join(temp.dir, `close-${direct}.bin`);
      writeFileSync(path, pattern(64 * 4096, 7));
      const file = HostFile.open(path, 'rw', { direct });
      expect(descriptorsOn(path)).toHaveLength(1);
      const targets = Array.from({ length: 32 }, () => new Uint8Array(4096));
      const reads = targets.map((target, index) => file.preadAsync(target, index * 4096));
      const writes = Array.from({ length: 32 }, (_, index) => file.pwriteAsync(pattern(4096, 100 + index), (32 + index) * 4096));
      const sync = file.syncAsync();
      file.close();
      expect(file.closed).toBe(true);
      expect(file.pendingOperations).toBe(65);
      // Nothing has settled yet (settling needs this thread), so the descriptor is still open.
      expect(descriptorsOn(path)).toHaveLength(1);
      expectNativeError(() => file.preadAsync(new Uint8Array(4096), 0), 'BV_NATIVE_CLOSED');
      expectNativeError(() => file.pwriteAsync(new Uint8Array(4096), 0), 'BV_NATIVE_CLOSED');
      expectNativeError(() => file.syncAsync(), 'BV_NATIVE_CLOSED');
      expectNativeError(() => file.pread(new Uint8Array(4096), 0), 'BV_NATIVE_CLOSED');
      file.close(); // idempotent
      // A file opened now must not receive the pending writes (as it would if it reused a
      // descriptor closed too early).
      const otherPath = join(temp.dir, `close-other-${direct}.bin`);
      const other = HostFile.open(otherPath, 'create');

      expect(await Promise.all(reads)).toEqual(new Array(32).fill(4096));
      targets.forEach((target, index) => expectBytes(target, pattern(64 * 4096, 7).subarray(index * 4096, (index + 1) * 4096)));
      expect(await Promise.all(writes)).toEqual(new Array(32).fill(4096));
      expect(await sync).toBeUndefined();
      expect(file.pendingOperations).toBe(0);
      expect(descriptorsOn(path)).toEqual([]);
      expect(other.size).toBe(0);
      other.close();
      const onDisk = new Uint8Array(readFileSync(path));
      for (let index = 0; index < 32; index++) {
        expectBytes(onDisk.subarray((32 + index) * 4096, (33 + index) * 4096), pattern(4096, 100 + index));
      }
    }
  });

  it('closes the descriptor at once when nothing is pending', () => {
    const path = join(temp.dir, 'close-idle.bin');
    const file = HostFile.open(path, 'create');
    expect(descriptorsOn(path)).toHaveLength(1);
    file.close();
    expect(descriptorsOn(path)).toEqual([]);
  });

  it('rejects with BV_NATIVE_IO naming the errno, call and path when the I/O fails', async () => {
    const path = join(temp.dir, 'readonly.bin');
    writeFileSync(path, pattern(4096, 8));
    const file = HostFile.open(path, 'r');
    const error = await rejection(file.pwriteAsync(new Uint8Array(16), 0));
    expect(error.code).toBe('BV_NATIVE_IO');
    expect(error.errnoName).toBe('EBADF');
    expect(error.syscall).toBe('pwrite');
    expect(error.path).toBe(path);
    expect(error.message).toContain(path);
    expect(error.message).toContain('EBADF');
    expect(file.pendingOperations).toBe(0);
    // The file is still usable, and the failed write changed nothing.
    const back = new Uint8Array(4096);
    expect(await file.preadAsync(back, 0)).toBe(4096);
    expectBytes(back, pattern(4096, 8));
    file.close();
  });

  it('rejects a read whose target was detached before it settled, without touching it', async () => {
    const file = HostFile.open(join(temp.dir, 'detach.bin'), 'create');
    file.pwrite(pattern(8192, 9), 0);
    const buffer = new ArrayBuffer(8192);
    const read = file.preadAsync(new Uint8Array(buffer), 0);
    const moved = structuredClone(buffer, { transfer: [buffer] });
    expect(buffer.byteLength).toBe(0);
    expect((await rejection(read)).code).toBe('BV_NATIVE_BAD_ARGUMENT');
    expect(new Uint8Array(moved).every((byte) => byte === 0)).toBe(true);

    // A region unmapped while a read into it is in flight: no fault, a rejection.
    const region = HostRegion.anonymous(2 * HOST_PAGE_SIZE);
    const intoRegion = file.preadAsync(new Uint8Array(region.buffer), 0);
    region.close();
    expect((await rejection(intoRegion)).code).toBe('BV_NATIVE_BAD_ARGUMENT');
    expect(file.pendingOperations).toBe(0);
    file.close();
  });

  it('syncAsync makes the writes durable and refuses a closed file', async () => {
    const path = join(temp.dir, 'sync.bin');
    const file = HostFile.open(path, 'create', { direct: true });
    await file.pwriteAsync(pattern(4096, 10), 0);
    expect(await file.syncAsync()).toBeUndefined();
    expectBytes(new Uint8Array(readFileSync(path)), pattern(4096, 10));
    file.close();
    expectNativeError(() => file.syncAsync(), 'BV_NATIVE_CLOSED');
  });

  it('works in a worker thread, and a worker stopped with operations in flight ends cleanly', async () => {
    const path = join(temp.dir, 'worker.bin');
    writeFileSync(path, pattern(64 * 4096, 11));
    for (let round = 0; round < 3; round++) {
      const worker = startNativeWorker(`
        const { path } = await next();
        const file = native.HostFile.open(path, 'r', { direct: true });
        const target = new Uint8Array(4096);
        const count = await file.preadAsync(target, 4096);
        // Leave 64 reads in flight (and a closed file) when the worker is stopped.
        for (let i = 0; i < 64; i++) file.preadAsync(new Uint8Array(4096), i * 4096);
        const pending = file.pendingOperations;
        if (${round} === 1) file.close();
        reply({ count, target, pending });
        await next();
      `);
      const answer = await ask<{ count: number; target: Uint8Array; pending: number }>(worker, { path });
      expect(answer.count).toBe(4096);
      expectBytes(answer.target, pattern(64 * 4096, 11).subarray(4096, 8192));
      expect(answer.pending).toBe(64);
      await worker.terminate();
    }
    // This thread goes on using the addon.
    const file = HostFile.open(path, 'r');
    expect(await file.preadAsync(new Uint8Array(16), 0)).toBe(16);
    file.close();
  });
});
