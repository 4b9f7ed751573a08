import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { crc32c, NativeError } from '../../native/index.ts';

/** Bitwise CRC-32C, straight from the definition: the reference the addon must agree with. */
function referenceCrc32c(bytes: Uint8Array, seed = 0): number {
  let crc = ~seed >>> 0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

describe('crc32c', () => {
  it('gives the standard check value for "123456789"', () => {
    expect(crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('agrees with the bitwise definition on random data, any length and alignment, and continues from a seed', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(16), fc.nat(300), (data, offset, split) => {
        const view = data.subarray(Math.min(offset, data.length));
        expect(crc32c(view)).toBe(referenceCrc32c(view));
        const cut = Math.min(split, view.length);
        expect(crc32c(view.subarray(cut), crc32c(view.subarray(0, cut)))).toBe(crc32c(view));
      }),
      { numRuns: 300 },
    );
  });

  it('agrees with the definition across the three-lane paths (24 KiB and 768-byte blocks, then the tail)', () => {
    // Lengths around the block sizes of the interleaved loop, each at a few alignments and seeds.
    const lengths = [767, 768, 769, 3 * 256 * 5 + 7, 24_575, 24_576, 24_577, 24_576 + 768 + 9, 2 * 24_576 + 3 * 768 + 100, 65_536];
    fc.assert(
      fc.property(fc.constantFrom(...lengths), fc.nat(7), fc.nat(), fc.integer({ min: 0, max: 2 ** 32 - 1 }), (length, offset, fill, seed) => {
        const data = new Uint8Array(length + offset);
        let x = fill | 1;
        for (let i = 0; i < data.length; i++) {
          x ^= x << 13; x ^= x >>> 17; x ^= x << 5; // xorshift: distinct bytes everywhere
          data[i] = x & 0xff;
        }
        const view = data.subarray(offset);
        expect(crc32c(view, seed)).toBe(referenceCrc32c(view, seed));
      }),
      { numRuns: 40 },
    );
  });

  it('refuses anything but a Uint8Array and a 32-bit seed', () => {
    const bad: unknown[][] = [[undefined], ['abc'], [new Uint16Array(4)], [new Uint8Array(4), -1], [new Uint8Array(4), 2 ** 32], [new Uint8Array(4), 1.5], [new Uint8Array(4), 'x']];
    for (const args of bad) {
      expect(() => (crc32c as (...a: unknown[]) => number)(...args)).toThrow(NativeError);
    }
  });
});
