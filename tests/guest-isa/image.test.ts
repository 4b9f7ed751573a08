import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  encodeImage,
  IMAGE_HEADER_BYTES,
  imageChecksum,
  ImageError,
  loadImageFile,
  MAX_NAME_BYTES,
  MAX_SEGMENTS,
  MAX_SYMBOLS,
  parseImage,
  SEGMENT_ENTRY_BYTES,
  SYMBOL_ENTRY_BYTES,
  validateImage,
  type ImageErrorCode,
} from '../../guest-isa/image.ts';
import { SegmentFlag, type GuestImage, type ImageSegment } from '../../guest-isa/image-types.ts';

const { R, W, X } = SegmentFlag;

/** Three segments (code with bss, data, pure bss) and two symbols; layout known to the tests below. */
function sampleImage(): GuestImage {
  return {
    entry: 0x1004,
    segments: [
      { gpa: 0x1000, data: Uint8Array.from([0x12, 0x04, 0x05, 0x00, 0x12, 0x04, 0x06, 0x00]), memSize: 0x20, flags: R | X, name: '.text' },
      { gpa: 0x2000, data: new TextEncoder().encode('hello'), memSize: 0x10, flags: R | W, name: '.data' },
      { gpa: 0x3000, data: new Uint8Array(0), memSize: 0x1000, flags: R | W, name: '.bss' },
    ],
    symbols: [
      { name: '_start', value: 0x1004, global: true },
      { name: 'msg', value: 0x2000, global: false },
    ],
  };
}

// Field offsets inside the file, as SPEC.md lays it out.
const segmentAt = (index: number): number => IMAGE_HEADER_BYTES + index * SEGMENT_ENTRY_BYTES;
const SEG = { GPA: 0, FILE_OFFSET: 4, FILE_BYTES: 8, MEM_BYTES: 12, FLAGS: 16, NAME: 20 } as const;
const symbolAt = (bytes: Uint8Array, index: number): number => segmentAt(u32(bytes, 12)) + index * SYMBOL_ENTRY_BYTES;
const stringTableAt = (bytes: Uint8Array): number => symbolAt(bytes, u32(bytes, 16));

function u32(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(offset, true);
}

function withCrcFixed(bytes: Uint8Array): Uint8Array {
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(28, imageChecksum(bytes), true);
  return bytes;
}

/** A copy of the sample file with some u32 fields changed and the CRC recomputed. */
function patched(edits: [offset: number, value: number][], image = sampleImage()): Uint8Array {
  const bytes = encodeImage(image);
  const view = new DataView(bytes.buffer);
  for (const [offset, value] of edits) view.setUint32(offset, value, true);
  return withCrcFixed(bytes);
}

function imageErrorOf(action: () => unknown): ImageError {
  try {
    action();
  } catch (error) {
    if (error instanceof ImageError) return error;
    throw new Error(`expected an ImageError, got ${String(error)}`);
  }
  throw new Error('expected an ImageError, but nothing was thrown');
}

function expectImageError(action: () => unknown, code: ImageErrorCode, message: string | RegExp): void {
  const error = imageErrorOf(action);
  expect(error.code).toBe(code);
  expect(error.message).toMatch(message);
}

/** Parses, and returns the parsed image or the ImageError; anything else fails the test. */
function parseOrImageError(bytes: Uint8Array): GuestImage | ImageError {
  try {
    return parseImage(bytes);
  } catch (error) {
    if (error instanceof ImageError) return error;
    throw error;
  }
}

describe('encodeImage / parseImage round trip', () => {
  it('rebuilds the sample image exactly, including bss and symbols', () => {
    const image = sampleImage();
    const parsed = parseImage(encodeImage(image));
    expect(parsed).toStrictEqual(image);
  });

  it('writes the header fields SPEC.md defines', () => {
    const bytes = encodeImage(sampleImage());
    expect(Array.from(bytes.subarray(0, 4))).toEqual([0x42, 0x56, 0x58, 0x1a]);
    const view = new DataView(bytes.buffer);
    expect(view.getUint16(4, true)).toBe(1);
    expect(view.getUint16(6, true)).toBe(32);
    expect(u32(bytes, 8)).toBe(0x1004);
    expect(u32(bytes, 12)).toBe(3);
    expect(u32(bytes, 16)).toBe(2);
    expect(u32(bytes, 20)).toBe('.text\0.data\0.bss\0_start\0msg\0'.length);
    expect(u32(bytes, 24)).toBe(bytes.length);
    for (let index = 0; index < 3; index++) expect(u32(bytes, segmentAt(index) + SEG.FILE_OFFSET) % 4).toBe(0);
  });

  it('keeps an unnamed segment unnamed and stores negative symbol values as u32', () => {
    const image: GuestImage = {
      entry: 0,
      segments: [{ gpa: 0, data: new Uint8Array(4), memSize: 4, flags: X }],
      symbols: [{ name: 'MINUS_ONE', value: -1, global: false }],
    };
    const bytes = encodeImage(image);
    expect(u32(bytes, segmentAt(0) + SEG.NAME)).toBe(0xffff_ffff);
    const parsed = parseImage(bytes);
    expect('name' in parsed.segments[0]!).toBe(false);
    expect(parsed.symbols[0]!.value).toBe(0xffff_ffff);
  });

  it('accepts a segment that ends exactly at the top of the address space', () => {
    const image: GuestImage = {
      entry: 0xffff_fffc,
      segments: [{ gpa: 0xffff_f000, data: new Uint8Array(8), memSize: 0x1000, flags: R | X }],
      symbols: [],
    };
    expect(parseImage(encodeImage(image))).toStrictEqual(image);
  });

  it('copies segment data out of the file buffer', () => {
    const bytes = encodeImage(sampleImage());
    const parsed = parseImage(bytes);
    bytes.fill(0);
    expect(parsed.segments[1]!.data).toEqual(new TextEncoder().encode('hello'));
  });

  const nameArb = fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }).filter((name) => !name.includes('\0'));
  const segmentShapeArb = fc.record({
    gapWords: fc.nat(64),
    data: fc.uint8Array({ maxLength: 48 }),
    bss: fc.nat(300),
    flags: fc.integer({ min: 0, max: 7 }),
    name: fc.option(fc.string({ unit: 'grapheme', maxLength: 8 }), { nil: undefined }),
  });
  /** Random valid images: segments laid out without overlap, then shuffled; entry in a code segment. */
  const validImageArb = fc
    .record({
      base: fc.nat(0xfff),
      code: fc.uint8Array({ minLength: 4, maxLength: 64 }),
      others: fc.array(segmentShapeArb, { maxLength: 6 }),
      order: fc.array(fc.double({ noNaN: true }), { minLength: 7, maxLength: 7 }),
      entryWord: fc.nat(),
      symbols: fc.array(fc.record({ name: nameArb, value: fc.nat({ max: 0xffff_ffff }), global: fc.boolean() }), { maxLength: 10 }),
    })
    .map(({ base, code, others, order, entryWord, symbols }): GuestImage => {
      let cursor = base * 4;
      const codeSegment: ImageSegment = { gpa: cursor, data: code, memSize: code.length, flags: R | X, name: '.text' };
      cursor += Math.ceil(code.length / 4) * 4;
      const segments: ImageSegment[] = [codeSegment];
      for (const shape of others) {
        const gpa = cursor + shape.gapWords * 4;
        const segment: ImageSegment = { gpa, data: shape.data, memSize: shape.data.length + shape.bss, flags: shape.flags };
        if (shape.name !== undefined) segment.name = shape.name;
        segments.push(segment);
        cursor = gpa + Math.ceil(segment.memSize / 4) * 4;
      }
      const shuffled = segments.map((segment, index) => ({ segment, key: order[index]! })).sort((a, b) => a.key - b.key);
      const entry = codeSegment.gpa + (entryWord % Math.floor(code.length / 4)) * 4;
      // Plain objects: fast-check's records have a null prototype, which toStrictEqual would notice.
      return { entry, segments: shuffled.map(({ segment }) => segment), symbols: symbols.map((symbol) => ({ ...symbol })) };
    });

  it('round-trips random valid images (property)', () => {
    fc.assert(
      fc.property(validImageArb, (image) => {
        const bytes = encodeImage(image);
        const parsed = parseImage(bytes);
        expect(parsed).toStrictEqual(image);
        expect(encodeImage(parsed)).toEqual(bytes);
      }),
      { numRuns: 300 },
    );
  });
});

describe('parseImage on damaged input', () => {
  it('refuses every truncation of a valid file as truncated', () => {
    const bytes = encodeImage(sampleImage());
    for (let length = 0; length < bytes.length; length++) {
      const error = imageErrorOf(() => parseImage(bytes.subarray(0, length)));
      expect(error.code, `length ${length}`).toBe('BV_IMAGE_TRUNCATED');
    }
  });

  it('refuses every single-bit flip of a valid file with an ImageError', () => {
    const bytes = encodeImage(sampleImage());
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const flipped = bytes.slice();
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      expect(parseOrImageError(flipped), `bit ${bit}`).toBeInstanceOf(ImageError);
    }
  });

  it('returns an image or an ImageError for random bytes (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
        parseOrImageError(bytes);
      }),
      { numRuns: 3000 },
    );
  });

  it('returns a valid image or an ImageError when table bytes are randomised behind a correct header and CRC (property)', () => {
    const original = encodeImage(sampleImage());
    const tablesEnd = stringTableAt(original) + u32(original, 20);
    fc.assert(
      fc.property(
        fc.array(fc.record({ offset: fc.integer({ min: 8, max: tablesEnd - 1 }), value: fc.nat(255) }), { minLength: 1, maxLength: 8 }),
        (edits) => {
          const bytes = original.slice();
          for (const { offset, value } of edits) if (offset < 24 || offset >= 32) bytes[offset] = value; // keep total and CRC fields meaningful
          const result = parseOrImageError(withCrcFixed(bytes));
          // Whatever parse accepts must satisfy every rule that encode checks.
          if (!(result instanceof ImageError)) validateImage(result);
        },
      ),
      { numRuns: 3000 },
    );
  });

  /** A file with one 4-byte code segment at gpa 0 and `symbolCount` symbols named at offsets `nameOffset(i)`. */
  function fileWithStringTable(strings: Uint8Array, symbolCount: number, nameOffset: (index: number) => number): Uint8Array {
    const tablesEnd = IMAGE_HEADER_BYTES + SEGMENT_ENTRY_BYTES + symbolCount * SYMBOL_ENTRY_BYTES + strings.length;
    const dataAt = Math.ceil(tablesEnd / 4) * 4;
    const bytes = new Uint8Array(dataAt + 4);
    const view = new DataView(bytes.buffer);
    bytes.set([0x42, 0x56, 0x58, 0x1a]);
    view.setUint16(4, 1, true);
    view.setUint16(6, 32, true);
    view.setUint32(12, 1, true);
    view.setUint32(16, symbolCount, true);
    view.setUint32(20, strings.length, true);
    view.setUint32(24, bytes.length, true);
    view.setUint32(segmentAt(0) + SEG.FILE_OFFSET, dataAt, true);
    view.setUint32(segmentAt(0) + SEG.FILE_BYTES, 4, true);
    view.setUint32(segmentAt(0) + SEG.MEM_BYTES, 4, true);
    view.setUint32(segmentAt(0) + SEG.FLAGS, X, true);
    view.setUint32(segmentAt(0) + SEG.NAME, 0xffff_ffff, true);
    for (let index = 0; index < symbolCount; index++) view.setUint32(segmentAt(1) + index * SYMBOL_ENTRY_BYTES, nameOffset(index), true);
    bytes.set(strings, tablesEnd - strings.length);
    return withCrcFixed(bytes);
  }

  it('refuses a name longer than the limit without scanning the whole string table', () => {
    const strings = new Uint8Array(200_000).fill(0x61);
    strings[strings.length - 1] = 0;
    expectImageError(
      () => parseImage(fileWithStringTable(strings, 1, () => 0)),
      'BV_IMAGE_BAD_SYMBOL',
      `symbol 0: name at string-table offset 0x0 is longer than the limit of ${MAX_NAME_BYTES} bytes`,
    );
  });

  it('parses many symbols naming different suffixes of one long name in bounded time', () => {
    const strings = new Uint8Array(MAX_NAME_BYTES + 1).fill(0x61);
    strings[MAX_NAME_BYTES] = 0;
    const symbolCount = 30_000;
    const started = performance.now();
    const image = parseImage(fileWithStringTable(strings, symbolCount, (index) => index % MAX_NAME_BYTES));
    expect(performance.now() - started).toBeLessThan(3000);
    expect(image.symbols).toHaveLength(symbolCount);
    expect(image.symbols[1]!.name).toBe('a'.repeat(MAX_NAME_BYTES - 1));
  });
});

describe('parseImage checks each rule', () => {
  const sample = encodeImage(sampleImage());
  const stringsAt = stringTableAt(sample);
  const dataOffset = (index: number): number => u32(sample, segmentAt(index) + SEG.FILE_OFFSET);

  it('magic', () => {
    const bytes = sample.slice();
    bytes[1] = 0x55;
    expectImageError(() => parseImage(bytes), 'BV_IMAGE_BAD_MAGIC', 'not a .bvx image: magic bytes are 42 55 58 1a, expected 42 56 58 1a');
    expectImageError(() => parseImage(Uint8Array.from([0x7f, 0x45])), 'BV_IMAGE_BAD_MAGIC', 'magic bytes are 7f 45');
  });

  it('version', () => {
    const bytes = sample.slice();
    new DataView(bytes.buffer).setUint16(4, 2, true);
    expectImageError(() => parseImage(withCrcFixed(bytes)), 'BV_IMAGE_UNSUPPORTED_VERSION', 'image format version 2 is not supported (this build reads version 1)');
  });

  it('header bytes', () => {
    const bytes = sample.slice();
    new DataView(bytes.buffer).setUint16(6, 40, true);
    expectImageError(() => parseImage(withCrcFixed(bytes)), 'BV_IMAGE_BAD_HEADER', 'header size field is 0x28, expected 0x20');
  });

  it('total file bytes equal to the file length', () => {
    const longer = new Uint8Array(sample.length + 1);
    longer.set(sample);
    expectImageError(() => parseImage(withCrcFixed(longer)), 'BV_IMAGE_BAD_HEADER', `file is 0x${longer.length.toString(16)} bytes but its header says 0x${sample.length.toString(16)} (trailing bytes)`);
    expectImageError(() => parseImage(sample.subarray(0, 40)), 'BV_IMAGE_TRUNCATED', `file is 0x28 bytes but its header says 0x${sample.length.toString(16)}`);
    expectImageError(() => parseImage(sample.subarray(0, 20)), 'BV_IMAGE_TRUNCATED', 'file is 0x14 bytes, shorter than the 0x20-byte header');
  });

  it('CRC', () => {
    const bytes = sample.slice();
    bytes[dataOffset(1)]! ^= 0x20;
    expectImageError(() => parseImage(bytes), 'BV_IMAGE_CHECKSUM', /^checksum mismatch: header says 0x[0-9a-f]+, file contents give 0x[0-9a-f]+$/);
  });

  it('segment and symbol limits', () => {
    expectImageError(() => parseImage(patched([[12, MAX_SEGMENTS + 1]])), 'BV_IMAGE_TOO_LARGE', '257 segments exceed the limit of 256');
    expectImageError(() => parseImage(patched([[16, MAX_SYMBOLS + 1]])), 'BV_IMAGE_TOO_LARGE', '65537 symbols exceed the limit of 65536');
  });

  it('tables inside the file', () => {
    expectImageError(() => parseImage(patched([[20, 0xffff_0000]])), 'BV_IMAGE_TRUNCATED', /^tables \(3 segments, 2 symbols, 0xffff0000 string bytes\) need 0x[0-9a-f]+ bytes but the file has 0x[0-9a-f]+$/);
  });

  it('segment data inside the file', () => {
    const offset = dataOffset(1);
    expectImageError(
      () => parseImage(patched([[segmentAt(1) + SEG.FILE_BYTES, sample.length]])),
      'BV_IMAGE_BAD_SEGMENT',
      `segment 1 (.data): file bytes [0x${offset.toString(16)}, 0x${(offset + sample.length).toString(16)}) are outside the data area [0x${(stringsAt + u32(sample, 20)).toString(16)}, 0x${sample.length.toString(16)})`,
    );
    expectImageError(() => parseImage(patched([[segmentAt(1) + SEG.FILE_OFFSET, 32]])), 'BV_IMAGE_BAD_SEGMENT', 'segment 1 (.data): file bytes [0x20, 0x25) are outside the data area');
  });

  it('segment data 4-aligned in the file', () => {
    expectImageError(() => parseImage(patched([[segmentAt(1) + SEG.FILE_OFFSET, dataOffset(1) + 1]])), 'BV_IMAGE_BAD_SEGMENT', `segment 1 (.data): file offset 0x${(dataOffset(1) + 1).toString(16)} is not 4-byte aligned`);
  });

  it('file bytes ≤ memory bytes', () => {
    expectImageError(() => parseImage(patched([[segmentAt(1) + SEG.MEM_BYTES, 4]])), 'BV_IMAGE_BAD_SEGMENT', 'segment 1 (.data): file bytes 0x5 exceed memory bytes 0x4');
  });

  it('segment flags', () => {
    expectImageError(() => parseImage(patched([[segmentAt(2) + SEG.FLAGS, 0x13]])), 'BV_IMAGE_BAD_SEGMENT', 'segment 2 (.bss): flags 0x13 have bits other than R (1), W (2), X (4)');
  });

  it('gpa 4-aligned', () => {
    expectImageError(() => parseImage(patched([[segmentAt(1) + SEG.GPA, 0x2002]])), 'BV_IMAGE_BAD_SEGMENT', 'segment 1 (.data): gpa 0x2002 is not 4-byte aligned');
  });

  it('gpa + memory bytes within 4 GiB', () => {
    expectImageError(() => parseImage(patched([[segmentAt(2) + SEG.GPA, 0xffff_f004]])), 'BV_IMAGE_BAD_SEGMENT', 'segment 2 (.bss): gpa 0xfffff004 + memory bytes 0x1000 runs past the 4 GiB address space');
  });

  it('segments do not overlap in memory', () => {
    expectImageError(() => parseImage(patched([[segmentAt(2) + SEG.GPA, 0x1ffc]])), 'BV_IMAGE_OVERLAP', 'segment 2 (.bss) and segment 1 (.data) overlap in guest memory: [0x1ffc, 0x2ffc) and [0x2000, 0x2010)');
  });

  it("segments' file bytes do not overlap", () => {
    expectImageError(() => parseImage(patched([[segmentAt(1) + SEG.FILE_OFFSET, dataOffset(0)]])), 'BV_IMAGE_OVERLAP', /^segment 0 \(.text\) and segment 1 \(.data\) overlap in the file: /);
  });

  it('segment names inside the string table, NUL-terminated and UTF-8', () => {
    expectImageError(() => parseImage(patched([[segmentAt(0) + SEG.NAME, 0x1000]])), 'BV_IMAGE_BAD_SEGMENT', 'segment 0: name offset 0x1000 is outside the string table (0x1c bytes)');
    const unterminated = sample.slice();
    unterminated[stringsAt + u32(sample, 20) - 1] = 0x41; // the NUL after "msg", the last name
    expectImageError(() => parseImage(withCrcFixed(unterminated)), 'BV_IMAGE_BAD_SYMBOL', 'symbol 1: name at string-table offset 0x18 is not NUL-terminated');
    const badUtf8 = sample.slice();
    badUtf8[stringsAt + 1] = 0xff; // inside ".text"
    expectImageError(() => parseImage(withCrcFixed(badUtf8)), 'BV_IMAGE_BAD_SEGMENT', 'segment 0: name at string-table offset 0x0 is not valid UTF-8');
  });

  it('symbol flags and names', () => {
    expectImageError(() => parseImage(patched([[symbolAt(sample, 1) + 8, 3]])), 'BV_IMAGE_BAD_SYMBOL', 'symbol 1 (msg): flags 0x3 have bits other than global (1)');
    expectImageError(() => parseImage(patched([[symbolAt(sample, 0), 0x40]])), 'BV_IMAGE_BAD_SYMBOL', 'symbol 0: name offset 0x40 is outside the string table (0x1c bytes)');
    // Offset 5 is the NUL that ends ".text": an empty name.
    expectImageError(() => parseImage(patched([[symbolAt(sample, 0), 5]])), 'BV_IMAGE_BAD_SYMBOL', 'symbol 0: name is empty');
  });

  it('entry 4-aligned and inside an executable segment', () => {
    expectImageError(() => parseImage(patched([[8, 0x1002]])), 'BV_IMAGE_BAD_ENTRY', 'entry 0x1002 is not 4-byte aligned');
    expectImageError(() => parseImage(patched([[8, 0x8000]])), 'BV_IMAGE_BAD_ENTRY', 'entry 0x8000 is not inside any segment');
    expectImageError(() => parseImage(patched([[8, 0x2004]])), 'BV_IMAGE_BAD_ENTRY', 'entry 0x2004 is inside segment 1 (.data), which is not executable');
  });
});

describe('encodeImage refuses invalid images', () => {
  const withChange = (change: (image: GuestImage) => void): GuestImage => {
    const image = sampleImage();
    change(image);
    return image;
  };

  it.each<[string, (image: GuestImage) => void, ImageErrorCode, string]>([
    ['file bytes > memory bytes', (image) => { image.segments[1]!.memSize = 2; }, 'BV_IMAGE_BAD_SEGMENT', 'segment 1 (.data): file bytes 0x5 exceed memory bytes 0x2'],
    ['unaligned gpa', (image) => { image.segments[2]!.gpa = 0x3001; }, 'BV_IMAGE_BAD_SEGMENT', 'segment 2 (.bss): gpa 0x3001 is not 4-byte aligned'],
    ['non-u32 gpa', (image) => { image.segments[2]!.gpa = -4; }, 'BV_IMAGE_BAD_SEGMENT', 'segment 2 (.bss): gpa -4 is not a u32 address'],
    ['unknown flag', (image) => { image.segments[0]!.flags = 8 | X; }, 'BV_IMAGE_BAD_SEGMENT', 'segment 0 (.text): flags 0xc have bits other than R (1), W (2), X (4)'],
    ['NUL in a segment name', (image) => { image.segments[0]!.name = 'a\0b'; }, 'BV_IMAGE_BAD_SEGMENT', 'segment 0: name "a\\u0000b" contains a NUL character'],
    ['overlap', (image) => { image.segments[1]!.gpa = 0x101c; }, 'BV_IMAGE_OVERLAP', 'segment 0 (.text) and segment 1 (.data) overlap in guest memory: [0x1000, 0x1020) and [0x101c, 0x102c)'],
    ['entry in data', (image) => { image.entry = 0x2000; }, 'BV_IMAGE_BAD_ENTRY', 'entry 0x2000 is inside segment 1 (.data), which is not executable'],
    ['entry not a u32', (image) => { image.entry = 1.5; }, 'BV_IMAGE_BAD_ENTRY', 'entry 1.5 is not a u32 address'],
    ['empty symbol name', (image) => { image.symbols[1]!.name = ''; }, 'BV_IMAGE_BAD_SYMBOL', 'symbol 1: name is empty'],
    ['lone surrogate in a symbol name', (image) => { image.symbols[0]!.name = 'x\ud800'; }, 'BV_IMAGE_BAD_SYMBOL', 'symbol 0: name "x\\ud800" is not well-formed Unicode'],
    ['over-long symbol name', (image) => { image.symbols[0]!.name = 'n'.repeat(MAX_NAME_BYTES + 1); }, 'BV_IMAGE_BAD_SYMBOL', `symbol 0: name is ${MAX_NAME_BYTES + 1} bytes long, more than the limit of ${MAX_NAME_BYTES}`],
    ['symbol value too big', (image) => { image.symbols[1]!.value = 2 ** 32; }, 'BV_IMAGE_BAD_SYMBOL', 'symbol 1 (msg): value 4294967296 does not fit 32 bits'],
    ['too many segments', (image) => {
      image.segments = Array.from({ length: MAX_SEGMENTS + 1 }, (_, index) => ({ gpa: index * 4, data: new Uint8Array(0), memSize: 4, flags: X }));
      image.entry = 0;
    }, 'BV_IMAGE_TOO_LARGE', '257 segments exceed the limit of 256'],
  ])('%s', (_, change, code, message) => {
    expectImageError(() => encodeImage(withChange(change)), code, message);
  });

  it('accepts a name of exactly the maximum length', () => {
    const image = withChange((changed) => { changed.symbols[0]!.name = 'n'.repeat(MAX_NAME_BYTES); });
    expect(parseImage(encodeImage(image)).symbols[0]!.name).toHaveLength(MAX_NAME_BYTES);
  });
});

describe('loadImageFile', () => {
  const directory = mkdtempSync(join(tmpdir(), 'bvx-image-'));
  afterAll(() => rmSync(directory, { recursive: true, force: true }));

  it('loads a file written by encodeImage', () => {
    const path = join(directory, 'good.bvx');
    writeFileSync(path, encodeImage(sampleImage()));
    expect(loadImageFile(path)).toStrictEqual(sampleImage());
  });

  it('reports a missing file as BV_IMAGE_IO with the path', () => {
    const path = join(directory, 'missing.bvx');
    expectImageError(() => loadImageFile(path), 'BV_IMAGE_IO', `cannot read image '${path}': ENOENT`);
  });

  it('prefixes parse errors with the path and keeps their code', () => {
    const path = join(directory, 'bad.bvx');
    writeFileSync(path, 'not an image');
    expectImageError(() => loadImageFile(path), 'BV_IMAGE_BAD_MAGIC', `${path}: not a .bvx image`);
  });
});
