/**
 * The bench workloads: each is a guest program run with paging off and on, plus the same
 * algorithm in plain JavaScript. Add a workload by adding an entry to WORKLOADS (any object that
 * implements Workload; `pagingWorkload` covers "one guest source, paging off and on").
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { BenchError, pagingWorkload } from './harness.ts';
import type { Workload } from './harness.ts';

const guest = (name: string): string => fileURLToPath(new URL(`./guests/${name}`, import.meta.url));

/** Shared by the guests (prepended as `.equ`) and the JS baselines, so both compute the same thing. */
export const FILL_FACTOR = 0x9e3779b1;
export const LCG_SEED = 12345;
export const LCG_MUL = 1664525;
export const LCG_ADD = 1013904223;

// --- CRC-32 (bench/guests/crc32.s) ------------------------------------------------------------

const CRC_BUFFER_BYTES = 65536;
const CRC_POLYNOMIAL = 0xedb88320;

/** The guest's buffer: byte i = i * 7 + (i >> 8). */
function crcBuffer(): Uint8Array {
  const bytes = new Uint8Array(CRC_BUFFER_BYTES);
  for (let i = 0; i < CRC_BUFFER_BYTES; i++) bytes[i] = i * 7 + (i >> 8);
  return bytes;
}

/** Table-driven CRC-32, four table lookups per 32-bit word, as the guest does it. */
export function crc32Js(rounds: number): number {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ CRC_POLYNOMIAL : c >>> 1;
    table[n] = c;
  }
  const words = new Int32Array(crcBuffer().buffer);
  let crc = -1;
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < words.length; i++) {
      let w = words[i]!;
      crc = (crc >>> 8) ^ table[(crc ^ w) & 0xff]!;
      w >>>= 8;
      crc = (crc >>> 8) ^ table[(crc ^ w) & 0xff]!;
      w >>>= 8;
      crc = (crc >>> 8) ^ table[(crc ^ w) & 0xff]!;
      w >>>= 8;
      crc = (crc >>> 8) ^ table[(crc ^ w) & 0xff]!;
    }
  }
  return ~crc >>> 0;
}

const crc32Workload = pagingWorkload({
  name: 'crc32',
  description: 'table-driven CRC-32 over 64 KiB, repeated',
  source: guest('crc32.s'),
  memoryBytes: 8 * 2 ** 20,
  params: ({ quick }) => ({ rounds: quick ? 1 : 100 }),
  defines: ({ rounds }) => ({ ROUNDS: rounds }),
  // The guest is checked against the JS baseline; the baseline against node:zlib once.
  selfCheck({ rounds }, js) {
    const buffer = crcBuffer();
    let expected = 0;
    for (let round = 0; round < rounds; round++) expected = zlibCrc32(buffer, expected);
    if (js.result !== expected >>> 0) throw new BenchError('BV_BENCH_WRONG_RESULT', `crc32: the JS baseline disagrees with node:zlib`);
  },
  js: ({ rounds }) => ({ result: crc32Js(rounds) }),
});

// --- Prefix sum (bench/guests/prefix-sum.s) -----------------------------------------------------

const PREFIX_ARRAY_VA = 0x100000;
const PREFIX_ARRAY_BYTES = 0x100000;

export function prefixSumJs(rounds: number): { result: number; memory: Uint8Array } {
  const array = new Int32Array(PREFIX_ARRAY_BYTES / 4);
  for (let i = 0; i < array.length; i++) array[i] = Math.imul(i, FILL_FACTOR);
  let sum = 0;
  for (let round = 0; round < rounds; round++) {
    sum = 0;
    for (let i = 0; i < array.length; i++) {
      sum = (sum + array[i]!) | 0;
      array[i] = sum;
    }
  }
  return { result: sum, memory: new Uint8Array(array.buffer) };
}

const prefixSumWorkload = pagingWorkload({
  name: 'prefix-sum',
  description: 'in-place prefix sum over 1 MiB of words, repeated',
  source: guest('prefix-sum.s'),
  memoryBytes: 4 * 2 ** 20,
  params: ({ quick }) => ({ rounds: quick ? 1 : 32 }),
  defines: ({ rounds }) => ({ ROUNDS: rounds, FILL_FACTOR }),
  capture: { va: PREFIX_ARRAY_VA, length: PREFIX_ARRAY_BYTES },
  js: ({ rounds }) => prefixSumJs(rounds),
});

// --- Memory walker (bench/guests/walker.s) ------------------------------------------------------

export function walkerJs(wordsLog2: number, steps: number): number {
  const area = new Int32Array(1 << wordsLog2);
  for (let i = 0; i < area.length; i++) area[i] = Math.imul(i, FILL_FACTOR);
  const shift = 32 - wordsLog2;
  let state = LCG_SEED;
  let checksum = 0;
  for (let step = 0; step < steps; step++) {
    state = (Math.imul(state, LCG_MUL) + LCG_ADD) | 0;
    const index = state >>> shift;
    const value = area[index]!;
    checksum = (checksum + value) | 0;
    area[index] = value ^ state;
  }
  return checksum;
}

const walkerWorkload = pagingWorkload({
  name: 'walker',
  description: 'LCG-driven random word updates across 16 MiB',
  source: guest('walker.s'),
  memoryBytes: 24 * 2 ** 20,
  // --quick walks 256 KiB instead of 16 MiB.
  params: ({ quick }) => (quick ? { wordsLog2: 16, steps: 1 << 14 } : { wordsLog2: 22, steps: 1 << 22 }),
  defines: ({ wordsLog2, steps }) => ({ WALK_WORDS_LOG2: wordsLog2, STEPS: steps, FILL_FACTOR, LCG_SEED, LCG_MUL, LCG_ADD }),
  js: ({ wordsLog2, steps }) => ({ result: walkerJs(wordsLog2, steps) }),
});

// --- Multiply high (bench/guests/mulh.s) ---------------------------------------------------------

/** A multiply-with-carry multiplier (2^32·A − 1 and 2^31·A − 1 are prime) and a signed Q31 factor. */
export const MWC_A = 0xffffda61;
export const MWC_K = FILL_FACTOR; // negative as an int32: exercises mulh's signed correction

/** High word of the unsigned 64-bit product, exact in doubles (16-bit halves, no BigInt). */
export function mulhuJs(a: number, b: number): number {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  const mid = a1 * b0 + ((a0 * b0) >>> 16);
  return (a1 * b1 + (mid >>> 16) + ((a0 * b1 + (mid & 0xffff)) >>> 16)) | 0;
}

/** High word of the signed 64-bit product, from the unsigned one. */
export const mulhsJs = (a: number, b: number): number => (mulhuJs(a, b) - (a < 0 ? b : 0) - (b < 0 ? a : 0)) | 0;

/** The guest's loop in plain JS; `mulhu`/`mulh` are parameters so that a BigInt reference can check it. */
export function mulhJs(steps: number, mulhu: (a: number, b: number) => number, mulh: (a: number, b: number) => number): number {
  let x = LCG_SEED | 0;
  let c = LCG_ADD | 0;
  let acc = 0;
  for (let step = 0; step < steps; step++) {
    const low = Math.imul(MWC_A, x);
    const high = mulhu(MWC_A, x);
    x = (low + c) | 0;
    c = (high + (x >>> 0 < low >>> 0 ? 1 : 0)) | 0;
    acc = (acc + mulh(x, MWC_K | 0)) | 0;
  }
  return acc ^ x ^ c;
}

const mulhWorkload = pagingWorkload({
  name: 'mulh',
  description: '64-bit multiply-with-carry (mul + mulhu) and a signed high product (mulh) per step',
  source: guest('mulh.s'),
  memoryBytes: 4 * 2 ** 20,
  params: ({ quick }) => ({ steps: quick ? 1 << 12 : 1 << 21 }),
  defines: ({ steps }) => ({ STEPS: steps, MWC_A, MWC_K, LCG_SEED, LCG_ADD }),
  // The baseline's split multiply is checked once against BigInt products.
  selfCheck({ steps }, js) {
    const high = (a: bigint, b: bigint): number => Number(BigInt.asIntN(32, (a * b) >> 32n));
    const expected = mulhJs(steps, (a, b) => high(BigInt(a >>> 0), BigInt(b >>> 0)), (a, b) => high(BigInt(a | 0), BigInt(b | 0)));
    if (js.result !== expected >>> 0) throw new BenchError('BV_BENCH_WRONG_RESULT', 'mulh: the JS baseline disagrees with BigInt arithmetic');
  },
  js: ({ steps }) => ({ result: mulhJs(steps, mulhuJs, mulhsJs) }),
});

/** Every workload, in the order the bench runs them. */
export const WORKLOADS: readonly Workload[] = [crc32Workload, prefixSumWorkload, walkerWorkload, mulhWorkload];
