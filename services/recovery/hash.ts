/**
 * Stored-hash recovery (T-17, issue 12 item 3): keep a 64-bit hash of each guest page while it is
 * not being written; rebuild a page with an uncorrected error in a window of up to k bits by
 * trying every value of the window and accepting only a unique match.
 *
 * The hash. A page is 1024 little-endian 32-bit words w_0 … w_1023. The hash is two independent
 * 32-bit lanes, each the sum (mod 2^32) over the words of a mix of (index, word):
 *   A = Σ mixA(i, w_i),  B = Σ mixB(i, w_i)
 * where mixA is murmur3's 32-bit finaliser applied to w_i XOR (i+1)·φ and mixB is a different
 * xorshift-multiply finaliser applied to w_i·c + (i+1)·d. Both are bijections of the word for a
 * fixed index, so two pages that differ only in a word have different lane terms; a 64-bit value
 * (A, B) that behaves like a random function of the page makes a false match of one wrong
 * candidate about 2^-64, and a 16-bit window search (65,535 wrong candidates) about 2^-48. Not
 * cryptographic: nobody chooses the corrupted bits. Because the hash is a sum over words, a
 * candidate changes only the terms of the one or two words the window touches: the search
 * computes the rest of the page's sum once and tabulates the window words' terms per value.
 *
 * Keeping it current: `scan(gpns)` hashes present pages and seals them through the recovery
 * write tracker (services/recovery/write-tracking.ts: one write-protect exit at the page's first
 * write, which drops the hash). Call it between runs (e.g. at the sharing scanner's cadence), or
 * let `startScanning` do it from a ticker. A page written since its last scan has no hash.
 */
import type { Vm } from '../../kernel/index.ts';
import { PageState } from '../../kernel/index.ts';
import type { ErrorReport, RecoveryMethod } from './types.ts';
import { PageWriteTracker, TickerSlot, timed, reportFits } from './write-tracking.ts';

const PAGE_BYTES = 4096;
const PAGE_WORDS = 1024;
/** Largest window the search accepts (2^24 candidates). */
export const MAX_HASH_WINDOW_BITS = 24;

/** Lane A's term for word `index` holding `word` (murmur3 fmix32 of the word keyed by its index). */
export function mixA(index: number, word: number): number {
  let h = (word ^ Math.imul(index + 1, 0x9e3779b9)) | 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/** Lane B's term (an independent finaliser: w·c + (i+1)·d, then xorshift-multiply rounds). */
export function mixB(index: number, word: number): number {
  let h = (Math.imul(word, 0x27d4eb2f) + Math.imul(index + 1, 0x165667b1)) | 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  h = Math.imul(h, 0x297a2d39);
  h ^= h >>> 15;
  return h | 0;
}

/** The two lanes' word terms (a test seam: a weak mix makes collisions on purpose). */
export interface WordMix {
  /** Lane A's term for word `index` holding `word`. */
  a(index: number, word: number): number;
  /** Lane B's term for word `index` holding `word`. */
  b(index: number, word: number): number;
}

const DEFAULT_MIX: WordMix = { a: mixA, b: mixB };

/** Options of StoredHashRecovery. */
export interface StoredHashOptions {
  /** Largest window (bits) the search tries, 1 … 24; default 16. Wider reports fail (null). */
  maxWindowBits?: number;
  /** @internal Test seam: the word mix (default mixA/mixB). */
  mix?: WordMix;
}

/** Counters of a StoredHashRecovery. */
export interface StoredHashStats {
  /** Pages hashed by scans. */
  pagesHashed: number;
  /** Hashes dropped because their page was written (or replaced). */
  invalidated: number;
  /** Host time hashing and sealing in scans, ns. */
  scanNs: number;
  /** Pages rebuilt (exactly one candidate matched). */
  recovered: number;
  /** recover() returned null: the page had no current hash. */
  failedNoHash: number;
  /** … the window was wider than maxWindowBits. */
  failedTooWide: number;
  /** … no candidate matched. */
  failedNoMatch: number;
  /** … two or more candidates matched (refused as ambiguous). */
  failedAmbiguous: number;
  /** Host time in recover(), ns. */
  recoverNs: number;
}

/** The 64-bit hash (lane A, lane B) of a page's 4096 bytes. */
export function pageHash(bytes: Uint8Array, mix: WordMix = DEFAULT_MIX): [number, number] {
  const words = wordsOf(bytes);
  if (mix === DEFAULT_MIX) return defaultPageHash(words);
  let a = 0;
  let b = 0;
  for (let i = 0; i < PAGE_WORDS; i++) {
    const w = words[i]! | 0;
    a = (a + mix.a(i, w)) | 0;
    b = (b + mix.b(i, w)) | 0;
  }
  return [a, b];
}

/** pageHash with mixA and mixB written out (the scan's inner loop: no calls). */
function defaultPageHash(words: Int32Array): [number, number] {
  let a = 0;
  let b = 0;
  for (let i = 0; i < PAGE_WORDS; i++) {
    const w = words[i]! | 0;
    let h = (w ^ Math.imul(i + 1, 0x9e3779b9)) | 0;
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    a = (a + h) | 0;
    let g = (Math.imul(w, 0x27d4eb2f) + Math.imul(i + 1, 0x165667b1)) | 0;
    g ^= g >>> 15;
    g = Math.imul(g, 0x2c1b3c6d);
    g ^= g >>> 12;
    g = Math.imul(g, 0x297a2d39);
    g ^= g >>> 15;
    b = (b + g) | 0;
  }
  return [a, b];
}

function wordsOf(bytes: Uint8Array): Int32Array {
  if (bytes.byteOffset % 4 === 0) return new Int32Array(bytes.buffer, bytes.byteOffset, PAGE_WORDS);
  return new Int32Array(bytes.slice(0, PAGE_BYTES).buffer);
}

/** Stored-hash recovery for one VM. */
export class StoredHashRecovery implements RecoveryMethod {
  readonly name = 'hash';
  /** Largest window the search tries (bits). */
  readonly maxWindowBits: number;
  /** Counters. */
  readonly stats: StoredHashStats = {
    pagesHashed: 0, invalidated: 0, scanNs: 0, recovered: 0, failedNoHash: 0, failedTooWide: 0, failedNoMatch: 0, failedAmbiguous: 0, recoverNs: 0,
  };
  private readonly tracker: PageWriteTracker;
  private readonly mix: WordMix;
  private readonly hashA: Int32Array;
  private readonly hashB: Int32Array;
  /** 1: the stored hash is the page's content (hashed while sealed, no write since). */
  private readonly valid: Uint8Array;
  private readonly unlisten: () => void;
  private readonly ticker: TickerSlot;
  private cursor = 0;

  /** @param vm the VM whose pages this keeps hashes of. */
  constructor(readonly vm: Vm, options: StoredHashOptions = {}) {
    const k = options.maxWindowBits ?? 16;
    if (!Number.isInteger(k) || k < 1 || k > MAX_HASH_WINDOW_BITS) throw new RangeError(`maxWindowBits must be 1 … ${MAX_HASH_WINDOW_BITS}, got ${k}`);
    this.maxWindowBits = k;
    this.mix = options.mix ?? DEFAULT_MIX;
    const pages = vm.memory.pageCount;
    this.hashA = new Int32Array(pages);
    this.hashB = new Int32Array(pages);
    this.valid = new Uint8Array(pages);
    this.tracker = PageWriteTracker.of(vm);
    this.ticker = new TickerSlot(vm);
    const drop = (gpn: number): void => {
      if (this.valid[gpn] === 1) {
        this.valid[gpn] = 0;
        this.stats.invalidated++;
      }
    };
    this.unlisten = this.tracker.listen({ written: drop, lost: drop });
  }

  /** Whether a page has a current stored hash. */
  hasHash(gpn: number): boolean {
    return this.valid[gpn] === 1 && this.tracker.isSealed(gpn) && !this.tracker.unsettled(gpn);
  }

  /** Pages with a current stored hash. */
  get hashedPages(): number {
    let n = 0;
    for (let gpn = 0; gpn < this.valid.length; gpn++) if (this.valid[gpn] === 1 && this.tracker.sealed[gpn] === 1) n++;
    return n;
  }

  /**
   * Hashes and seals the present pages among `gpns` (default: every page) that have no current
   * hash. Between runs only. Returns the pages hashed.
   */
  scan(gpns?: ArrayLike<number>): number {
    const start = process.hrtime.bigint();
    const memory = this.vm.memory;
    this.tracker.validate(gpns);
    let hashed = 0;
    const one = (gpn: number): void => {
      if (this.valid[gpn] === 1 && this.tracker.isSealed(gpn)) return;
      if (memory.stateOf(gpn) !== PageState.PRESENT) return;
      const bytes = memory.presentPageBytes(gpn);
      if (bytes === null || !this.tracker.seal(gpn)) return;
      const [a, b] = pageHash(bytes, this.mix);
      this.hashA[gpn] = a;
      this.hashB[gpn] = b;
      this.valid[gpn] = 1;
      hashed++;
    };
    if (gpns === undefined) for (let gpn = 0; gpn < this.valid.length; gpn++) one(gpn);
    else for (let i = 0; i < gpns.length; i++) one(gpns[i]!);
    this.stats.pagesHashed += hashed;
    this.stats.scanNs += Number(process.hrtime.bigint() - start);
    return hashed;
  }

  /**
   * Scans from a ticker: every `everyInstructions` guest instructions, `pagesPerTick` pages
   * (default all) in round-robin order. Returns a function that stops it.
   */
  startScanning(everyInstructions: number, pagesPerTick = this.valid.length): () => void {
    const pages = this.valid.length;
    const batch = new Int32Array(Math.min(pagesPerTick, pages));
    return this.ticker.start(everyInstructions, () => {
      for (let i = 0; i < batch.length; i++) batch[i] = (this.cursor + i) % pages;
      this.cursor = (this.cursor + batch.length) % pages;
      this.scan(batch);
    });
  }

  /** Stops scanning and listening (hashes are forgotten; seals stay until the next write). */
  dispose(): void {
    this.ticker.stop();
    this.unlisten();
    this.valid.fill(0);
  }

  recover(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null {
    return timed((ns) => (this.stats.recoverNs += ns), () => this.search(vm, report, bad));
  }

  private search(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null {
    const { gpn, windowBitOffset: offset, windowBits: bits } = report;
    if (!reportFits(vm, this.vm, this.valid.length, report, bad)) {
      this.stats.failedNoHash++;
      return null;
    }
    if (!this.hasHash(gpn)) {
      this.stats.failedNoHash++;
      return null;
    }
    if (bits > this.maxWindowBits) {
      this.stats.failedTooWide++;
      return null;
    }
    const page = bad.slice();
    const words = new Int32Array(page.buffer);
    const mix = this.mix;
    // Words the window touches: first (low bits of the candidate) and, if it crosses, second.
    const w0 = offset >>> 5;
    const shift0 = offset & 31;
    const n0 = Math.min(bits, 32 - shift0);
    const n1 = bits - n0;
    const w1 = w0 + 1;
    // The sum over every other word, which no candidate changes.
    let restA = 0;
    let restB = 0;
    for (let i = 0; i < PAGE_WORDS; i++) {
      if (i === w0 || (n1 > 0 && i === w1)) continue;
      const w = words[i]!;
      restA = (restA + mix.a(i, w)) | 0;
      restB = (restB + mix.b(i, w)) | 0;
    }
    const needA = (this.hashA[gpn]! - restA) | 0;
    const needB = (this.hashB[gpn]! - restB) | 0;
    // Terms of each window word per value of its part of the window.
    const table = (index: number, shift: number, n: number): [Int32Array, Int32Array] => {
      const size = 2 ** n;
      const mask = n === 32 ? -1 : ((1 << n) - 1) << shift;
      const base = words[index]! & ~mask;
      const ta = new Int32Array(size);
      const tb = new Int32Array(size);
      for (let v = 0; v < size; v++) {
        const w = base | (v << shift);
        ta[v] = mix.a(index, w);
        tb[v] = mix.b(index, w);
      }
      return [ta, tb];
    };
    const [a0, b0] = table(w0, shift0, n0);
    let matches = 0;
    let found0 = 0;
    let found1 = 0;
    if (n1 === 0) {
      for (let v = 0; v < a0.length && matches < 2; v++) {
        if (a0[v] === needA && b0[v] === needB) {
          matches++;
          found0 = v;
        }
      }
    } else {
      const [a1, b1] = table(w1, 0, n1);
      for (let v1 = 0; v1 < a1.length && matches < 2; v1++) {
        const wantA = (needA - a1[v1]!) | 0;
        const wantB = (needB - b1[v1]!) | 0;
        for (let v0 = 0; v0 < a0.length; v0++) {
          if (a0[v0] === wantA && b0[v0] === wantB) {
            matches++;
            found0 = v0;
            found1 = v1;
            if (matches >= 2) break;
          }
        }
      }
    }
    if (matches === 0) {
      this.stats.failedNoMatch++;
      return null;
    }
    if (matches > 1) {
      this.stats.failedAmbiguous++;
      return null;
    }
    const mask0 = n0 === 32 ? -1 : ((1 << n0) - 1) << shift0;
    words[w0] = (words[w0]! & ~mask0) | (found0 << shift0);
    if (n1 > 0) {
      const mask1 = (1 << n1) - 1;
      words[w1] = (words[w1]! & ~mask1) | found1;
    }
    this.stats.recovered++;
    this.tracker.expectReinstall(gpn, page);
    return page;
  }
}
