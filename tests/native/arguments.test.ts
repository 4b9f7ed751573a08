// Table-driven: every entry point with every kind of bad argument throws a NativeError with the
// documented code, and the process lives on to run the next row.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BvError } from '../../guest-isa/errors.ts';
import { HOST_PAGE_SIZE, HostFile, HostRegion, NativeError, type NativeErrorCode } from '../../native/index.ts';
import { expectNativeError, makeTempDir } from './helpers.ts';

const page = HOST_PAGE_SIZE;
const regionBytes = 16 * page;
const huge = 2 ** 52; // a safe integer, page-aligned, far beyond any region
const temp = makeTempDir();
const dataPath = join(temp.dir, 'data.bin');

let region: HostRegion;
let closedRegion: HostRegion;
let file: HostFile;
let closedFile: HostFile;

beforeAll(() => {
  writeFileSync(dataPath, new Uint8Array(regionBytes));
  region = HostRegion.anonymous(regionBytes);
  closedRegion = HostRegion.anonymous(regionBytes);
  closedRegion.close();
  file = HostFile.open(dataPath, 'rw');
  closedFile = HostFile.open(dataPath, 'r');
  closedFile.close();
});
afterAll(() => {
  region.close();
  file.close();
  temp.remove();
});

/** One entry point: how to call it, valid arguments, and which of them are numbers with rules. */
interface EntryPoint {
  name: string;
  call: (args: unknown[]) => unknown;
  valid: () => unknown[];
  /** Positions of numeric arguments that must be page-aligned. */
  aligned: number[];
  /** Positions of numeric arguments that are bounded by the region (an offset or a length). */
  bounded: number[];
  /** Positions of any other numeric arguments (file offsets, sizes). */
  unbounded: number[];
}

const any = (value: unknown) => value as never;

const regionMethods: EntryPoint[] = [
  { name: 'release', call: (a) => region.release(any(a[0]), any(a[1])), valid: () => [0, page], aligned: [0, 1], bounded: [0, 1], unbounded: [] },
  { name: 'residency', call: (a) => region.residency(any(a[0]), any(a[1])), valid: () => [0, page], aligned: [0, 1], bounded: [0, 1], unbounded: [] },
  { name: 'adviseHugePages', call: (a) => region.adviseHugePages(any(a[0]), any(a[1])), valid: () => [0, page], aligned: [0, 1], bounded: [0, 1], unbounded: [] },
  { name: 'flush', call: (a) => region.flush(any(a[0]), any(a[1])), valid: () => [0, page], aligned: [], bounded: [0, 1], unbounded: [] },
  {
    name: 'mapFilePrivate',
    call: (a) => region.mapFilePrivate(any(a[0]), any(a[1]), any(a[2]), any(a[3])),
    valid: () => [0, page, dataPath, 0],
    aligned: [0, 1, 3],
    bounded: [0, 1],
    unbounded: [],
  },
  {
    name: 'mapFileShared',
    call: (a) => region.mapFileShared(any(a[0]), any(a[1]), any(a[2]), any(a[3])),
    valid: () => [0, page, dataPath, 0],
    aligned: [0, 1, 3],
    bounded: [0, 1],
    unbounded: [],
  },
  { name: 'unmapPrivate', call: (a) => region.unmapPrivate(any(a[0]), any(a[1])), valid: () => [0, page], aligned: [0, 1], bounded: [0, 1], unbounded: [] },
];

const fileMethods: EntryPoint[] = [
  { name: 'pread', call: (a) => file.pread(any(a[0]), any(a[1])), valid: () => [new Uint8Array(8), 0], aligned: [], bounded: [], unbounded: [1] },
  { name: 'pwrite', call: (a) => file.pwrite(any(a[0]), any(a[1])), valid: () => [new Uint8Array(8), 0], aligned: [], bounded: [], unbounded: [1] },
  {
    name: 'preadToRegion',
    call: (a) => file.preadToRegion(any(a[0]), any(a[1]), any(a[2]), any(a[3])),
    valid: () => [region, 0, 8, 0],
    aligned: [],
    bounded: [1, 2],
    unbounded: [3],
  },
  {
    name: 'pwriteFromRegion',
    call: (a) => file.pwriteFromRegion(any(a[0]), any(a[1]), any(a[2]), any(a[3])),
    valid: () => [region, 0, 8, 0],
    aligned: [],
    bounded: [1, 2],
    unbounded: [3],
  },
  { name: 'truncate', call: (a) => file.truncate(any(a[0])), valid: () => [regionBytes], aligned: [], bounded: [], unbounded: [0] },
];

const factories: EntryPoint[] = [
  { name: 'HostRegion.anonymous', call: (a) => HostRegion.anonymous(any(a[0]), any(a[1])).close(), valid: () => [page, {}], aligned: [0], bounded: [], unbounded: [] },
  {
    name: 'HostRegion.sharedFile',
    call: (a) => HostRegion.sharedFile(any(a[0]), any(a[1]), any(a[2])).close(),
    valid: () => [dataPath, page, {}],
    aligned: [1],
    bounded: [],
    unbounded: [],
  },
  { name: 'HostRegion.sharedMemory', call: (a) => HostRegion.sharedMemory(any(a[0]), any(a[1])).close(), valid: () => [page, 'bv'], aligned: [0], bounded: [], unbounded: [] },
];

const notIndices: [string, unknown][] = [
  ['-1', -1],
  ['-page', -page],
  ['1.5', 1.5],
  ['NaN', NaN],
  ['Infinity', Infinity],
  ['-Infinity', -Infinity],
  ['2^53', 2 ** 53],
  ['a numeric string', String(page)],
  ['a bigint', BigInt(page)],
  ['null', null],
  ['undefined', undefined],
  ['an object', {}],
];

interface Row {
  label: string;
  run: () => unknown;
  code: NativeErrorCode;
}

function withArgument(entry: EntryPoint, position: number, value: unknown): () => unknown {
  return () => {
    const args = entry.valid();
    args[position] = value;
    return entry.call(args);
  };
}

const rows: Row[] = [];
for (const entry of [...regionMethods, ...fileMethods, ...factories]) {
  const numeric = [...new Set([...entry.aligned, ...entry.bounded, ...entry.unbounded])];
  for (const position of numeric) {
    for (const [label, value] of notIndices) {
      rows.push({ label: `${entry.name} argument ${position} = ${label}`, run: withArgument(entry, position, value), code: 'BV_NATIVE_BAD_ARGUMENT' });
    }
  }
  for (const position of entry.aligned) {
    rows.push({ label: `${entry.name} argument ${position} unaligned`, run: withArgument(entry, position, page + 1), code: 'BV_NATIVE_UNALIGNED' });
  }
  for (const position of entry.bounded) {
    rows.push({ label: `${entry.name} argument ${position} huge`, run: withArgument(entry, position, huge), code: 'BV_NATIVE_OUT_OF_RANGE' });
    rows.push({ label: `${entry.name} argument ${position} just past the end`, run: withArgument(entry, position, regionBytes + page), code: 'BV_NATIVE_OUT_OF_RANGE' });
  }
}
for (const entry of regionMethods) {
  rows.push({ label: `${entry.name} with offset + length one page past the end`, run: () => entry.call([regionBytes - page, 2 * page, ...entry.valid().slice(2)]), code: 'BV_NATIVE_OUT_OF_RANGE' });
  rows.push({
    label: `${entry.name} after close`,
    run: () => {
      const args = entry.valid();
      const method = (closedRegion as unknown as Record<string, (...values: unknown[]) => unknown>)[entry.name]!;
      return method.apply(closedRegion, args);
    },
    code: 'BV_NATIVE_CLOSED',
  });
}
for (const entry of fileMethods) {
  rows.push({
    label: `${entry.name} after close`,
    run: () => {
      const method = (closedFile as unknown as Record<string, (...values: unknown[]) => unknown>)[entry.name]!;
      return method.apply(closedFile, entry.valid());
    },
    code: 'BV_NATIVE_CLOSED',
  });
}
rows.push(
  { label: 'region buffer after close', run: () => closedRegion.buffer, code: 'BV_NATIVE_CLOSED' },
  { label: 'file size after close', run: () => closedFile.size, code: 'BV_NATIVE_CLOSED' },
  { label: 'file sync after close', run: () => closedFile.sync(), code: 'BV_NATIVE_CLOSED' },
  { label: 'a zero-byte region', run: () => HostRegion.anonymous(0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'a region above 4 GiB', run: () => HostRegion.anonymous(2 ** 32 + page, { noReserve: true }), code: 'BV_NATIVE_TOO_LARGE' },
  { label: 'a huge region', run: () => HostRegion.anonymous(huge), code: 'BV_NATIVE_TOO_LARGE' },
  { label: 'a huge shared file', run: () => HostRegion.sharedFile(dataPath, huge), code: 'BV_NATIVE_TOO_LARGE' },
  { label: 'a huge memfd', run: () => HostRegion.sharedMemory(huge), code: 'BV_NATIVE_TOO_LARGE' },
  { label: 'noReserve not a boolean', run: () => HostRegion.anonymous(page, { noReserve: any('yes') }), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'create not a boolean', run: () => HostRegion.sharedFile(dataPath, page, { create: any(1) }), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'memfd name too long', run: () => HostRegion.sharedMemory(page, 'n'.repeat(250)), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'memfd name not a string', run: () => HostRegion.sharedMemory(page, any(7)), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'empty path', run: () => HostFile.open('', 'r'), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'path with NUL', run: () => HostFile.open(`${dataPath}\0x`, 'r'), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'path not a string', run: () => HostFile.open(any(42), 'r'), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'unknown file mode', run: () => HostFile.open(dataPath, any('w')), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'mapFilePrivate path not a string', run: () => region.mapFilePrivate(0, page, any(null), 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'mapFileShared path not a string', run: () => region.mapFileShared(0, page, any(null), 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'pread into an Int8Array', run: () => file.pread(any(new Int8Array(4)), 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'pread into a DataView', run: () => file.pread(any(new DataView(new ArrayBuffer(4))), 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'pwrite from a plain array', run: () => file.pwrite(any([1, 2, 3]), 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'preadToRegion into a non-region', run: () => file.preadToRegion(any({}), 0, 8, 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'pwriteFromRegion from an ArrayBuffer', run: () => file.pwriteFromRegion(any(new ArrayBuffer(8)), 0, 8, 0), code: 'BV_NATIVE_BAD_ARGUMENT' },
  { label: 'opening a missing file', run: () => HostFile.open(join(temp.dir, 'missing'), 'r'), code: 'BV_NATIVE_IO' },
);

describe('argument validation', () => {
  it.each(rows)('$label → $code', ({ run, code }) => {
    expectNativeError(run, code);
  });

  it('accepts the valid arguments used as the base of every row', () => {
    for (const entry of [...regionMethods, ...fileMethods, ...factories]) {
      expect(() => entry.call(entry.valid()), entry.name).not.toThrow();
    }
  });

  it('errors are NativeError and BvError with a stable code', () => {
    const error = expectNativeError(() => region.release(-1, 0), 'BV_NATIVE_BAD_ARGUMENT');
    expect(error).toBeInstanceOf(NativeError);
    expect(error).toBeInstanceOf(BvError);
    expect(error.name).toBe('NativeError');
    expect(error.message).toContain('offset');
  });
});

describe('random calls never crash the process', () => {
  it('any mix of methods and numbers either works or throws a NativeError', () => {
    const number = fc.oneof(
      fc.constantFrom(0, page, 2 * page, regionBytes - page, regionBytes, regionBytes + page, 2 ** 32, 2 ** 53 - 1),
      fc.integer({ min: -page, max: 2 * regionBytes }),
      fc.nat({ max: 16 }).map((pages) => pages * page),
      fc.double(),
    );
    const call = fc.record({
      method: fc.constantFrom('release', 'residency', 'adviseHugePages', 'flush', 'mapFilePrivate', 'mapFileShared', 'unmapPrivate', 'preadToRegion', 'pwriteFromRegion', 'pread'),
      a: number,
      b: number,
      c: number,
    });
    const fuzzed = HostRegion.anonymous(regionBytes);
    const scratch = HostFile.open(join(temp.dir, 'fuzz.bin'), 'create');
    scratch.truncate(regionBytes);
    try {
      fc.assert(
        fc.property(fc.array(call, { maxLength: 20 }), (calls) => {
          for (const { method, a, b, c } of calls) {
            try {
              switch (method) {
                case 'mapFilePrivate': fuzzed.mapFilePrivate(a, b, dataPath, c); break;
                case 'mapFileShared': fuzzed.mapFileShared(a, b, dataPath, c); break;
                case 'preadToRegion': scratch.preadToRegion(fuzzed, a, b, c); break;
                case 'pwriteFromRegion': scratch.pwriteFromRegion(fuzzed, a, b, c % regionBytes); break;
                case 'pread': scratch.pread(new Uint8Array(fuzzed.buffer, 0, 64), a); break;
                default: (fuzzed[method] as (offset: number, length: number) => unknown).call(fuzzed, a, b);
              }
            } catch (error) {
              if (!(error instanceof NativeError)) throw error;
            }
            // The whole region stays readable whatever happened.
            const view = new Uint8Array(fuzzed.buffer);
            void (view[0]! + view[regionBytes - 1]!);
          }
        }),
        { numRuns: 200 },
      );
    } finally {
      fuzzed.close();
      scratch.close();
    }
  });
});
