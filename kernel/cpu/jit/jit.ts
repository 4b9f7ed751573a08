/**
 * The compiled tier (VmConfig.tier 'jit'): hot regions of decoded code pages become JavaScript
 * functions (compiler.ts), entered from Vcpu.runSlice wherever its inner loop starts a block.
 *
 * Tiering: every block entry counts against its decoded index (decoded-page base + word index);
 * at COMPILE_THRESHOLD entries the region from there is compiled. Compiled code is keyed by the
 * decoded page, i.e. by host frame contents, not by guest address: the page's virtual address is
 * a parameter, so every address space, VM and vCPU mapping the frame shares it, and a translation
 * change needs no invalidation of its own (the exec TLB leads to another decoded page, or to none).
 * A region is valid while its decoded page's version (DecodeCache.slotVersion) is the one it was
 * compiled from: every change to decoded code (a store re-decoding a word, a page dropped, freed,
 * replaced, or the cache flushed) bumps it, exactly where the interpreter's own copy changes.
 */
import { DECODED_PAGE_ENTRIES } from '../decode-cache.ts';
import type { DecodeCache } from '../decode-cache.ts';
import type { FramePool } from '../../memory/frame-pool.ts';
import { generateRegion, instantiate, opClass, OpClass } from './compiler.ts';
import type { RegionFn } from './compiler.ts';

/** Execution tiers (VmConfig.tier). */
export type Tier = 'interp' | 'jit';

/** Block entries at one decoded index before its region is compiled. */
export const COMPILE_THRESHOLD = 32;

/** JitRunner.enter: nothing compiled here, the interpreter goes on. */
export const JIT_NONE = -1;
/** JitRunner.enter: continue the inner loop at `idx` (J.idx, J.blockStart). */
export const JIT_INNER = 0;
/** JitRunner.enter: continue the outer loop (pc set). */
export const JIT_OUTER = 1;

/** Doublings of the compile threshold of a page whose compiled code keeps going stale. */
const MAX_BACKOFF = 12;

/**
 * The default tier: 'jit', or 'interp' when the environment says BV_TIER=interp (how CI runs the
 * whole suite a second time under the interpreter alone).
 */
export function defaultTier(): Tier {
  // Read once: process.env is an interceptor that calls getenv, 8 % of creating a VM (profile of fork).
  cachedDefaultTier ??= (typeof process !== 'undefined' ? process.env.BV_TIER : undefined) === 'interp' ? 'interp' : 'jit';
  return cachedDefaultTier;
}
let cachedDefaultTier: Tier | undefined;

/** Counters of the compiled tier of one hypervisor (Hypervisor.jitStats). */
export interface JitStats {
  /** Regions compiled (a region compiled again after its code changed counts again). */
  regionsCompiled: number;
  /** Guest instructions in the regions compiled. */
  wordsCompiled: number;
  /** Milliseconds spent generating and instantiating compiled code. */
  compileMs: number;
  /** Compiled regions found stale (their code page changed) and dropped. */
  invalidations: number;
  /** Calls into compiled code. */
  entries: number;
  /** Instructions retired in compiled code. */
  retiredCompiled: number;
  /** Passes of strip-mined loops (iterations run without TLB compares, up to a page crossing). */
  strips: number;
  /** Milliseconds spent in compiled code, while JitCache.timing is on (Hypervisor.timeTiers). */
  compiledMs: number;
  /** Of regionsCompiled, those whose function was already in the process (same source, see compiledFunctions). */
  regionsReused: number;
}

/** Distinct region functions kept for reuse, process-wide (the oldest is forgotten beyond this). */
export const MAX_SHARED_FUNCTIONS = 4096;

/**
 * Compiled functions by their source, shared by every hypervisor of the process. A region
 * function holds no state of its own (everything comes in as parameters: the vCPU, its runner,
 * registers, the page's address, the TLBs), so the same source is the same function wherever
 * the same code runs: in the next VM booted from an image, a fork, a restored checkpoint or a
 * page rewritten back. Reusing the function object keeps what V8 learned and optimised for it;
 * `new Function` on the same text would start cold again (interpreted, then optimised only
 * after it has run a while: the warm-up curve in docs/performance.md).
 */
const compiledFunctions = new Map<string, RegionFn>();

function rememberFunction(source: string, fn: RegionFn): void {
  if (compiledFunctions.size >= MAX_SHARED_FUNCTIONS) compiledFunctions.delete(compiledFunctions.keys().next().value!);
  compiledFunctions.set(source, fn);
}

/** Forgets every shared compiled function (the bench's cold-start curve; tests). */
export function forgetCompiledFunctions(): void {
  compiledFunctions.clear();
}

interface Region {
  fn: RegionFn;
  slot: number;
  version: number;
  /** DecodeCache.slotFills when compiled: tells a page refilled with other code from one rewritten. */
  fill: number;
}

/** Compiled regions of one DecodeCache (one hypervisor), shared by all its vCPUs. */
export class JitCache {
  /** Per decoded index: region number + 1, or minus the block entries counted so far. */
  private entries: Int32Array = new Int32Array(0);
  private readonly regions: (Region | null)[] = [];
  /** Region numbers free for reuse (their code went stale). */
  private readonly freeRegions: number[] = [];
  /** Per decoded slot: times its compiled code went stale (the compile threshold doubles each time). */
  private slotStale = new Uint8Array(0);
  /** @internal Block entries before compiling (tests lower it to compile nearly everything). */
  threshold = COMPILE_THRESHOLD;
  /**
   * Time every call into compiled code (Hypervisor.timeTiers): off by default, since a clock read
   * can cost more than a short compiled region runs (~0.3-0.5 µs measured on these machines).
   */
  timing = false;
  /** @internal Doublings of the threshold for pages whose code keeps changing (tests set 0). */
  maxBackoff = MAX_BACKOFF;
  readonly stats: JitStats = { regionsCompiled: 0, wordsCompiled: 0, compileMs: 0, invalidations: 0, entries: 0, retiredCompiled: 0, strips: 0, compiledMs: 0, regionsReused: 0 };

  constructor(readonly code: DecodeCache) {}

  /** The compiled region entered at decoded index `at` (base + idx), or null; counts the entry. */
  lookup(at: number): RegionFn | null {
    let entries = this.entries;
    if (at >= entries.length) entries = this.grow();
    const e = entries[at]!;
    if (e > 0) {
      const region = this.regions[e - 1]!;
      if (region.version === this.code.slotVersion[region.slot]) return region.fn;
      this.regions[e - 1] = null;
      this.freeRegions.push(e - 1);
      // The page's code changed since: forget the region and count again from here; longer each
      // time stores rewrite the same page (code and data sharing a page would otherwise recompile
      // after every store), but not when the slot now holds another frame's code.
      this.stats.invalidations++;
      if (region.slot >= this.slotStale.length) this.growStale(region.slot);
      if (region.fill !== this.code.slotFills[region.slot]) this.slotStale[region.slot] = 0;
      else if (this.slotStale[region.slot]! < this.maxBackoff) this.slotStale[region.slot]!++;
      entries[at] = 0;
      return null;
    }
    if (e > -this.threshold) {
      entries[at] = e - 1;
      return null;
    }
    const slot = Math.floor(at / DECODED_PAGE_ENTRIES);
    if (slot < this.slotStale.length && e > -(this.threshold << this.slotStale[slot]!)) {
      entries[at] = e - 1;
      return null;
    }
    return this.compile(at);
  }

  private compile(at: number): RegionFn | null {
    // An entry the interpreter keeps (a system instruction): count again, since a store may
    // change it (checking costs one lookup per COMPILE_THRESHOLD entries).
    if (opClass(this.code.ops[at]! & 0xff) === OpClass.EXIT) {
      this.entries[at] = 0;
      return null;
    }
    const started = performance.now();
    const slot = Math.floor(at / DECODED_PAGE_ENTRIES);
    const base = slot * DECODED_PAGE_ENTRIES;
    const generated = generateRegion(this.code.ops, this.code.imms, base, at - base)!;
    let fn = compiledFunctions.get(generated.source);
    if (fn === undefined) {
      fn = instantiate(generated.source);
      rememberFunction(generated.source, fn);
    } else {
      this.stats.regionsReused++;
    }
    const number = this.freeRegions.pop() ?? this.regions.length;
    this.regions[number] = { fn, slot, version: this.code.slotVersion[slot]!, fill: this.code.slotFills[slot]! };
    this.entries[at] = number + 1;
    this.stats.regionsCompiled++;
    this.stats.wordsCompiled += generated.words;
    this.stats.compileMs += performance.now() - started;
    return fn;
  }

  private growStale(slot: number): void {
    const grown = new Uint8Array(Math.max(slot + 1, this.slotStale.length * 2, 64));
    grown.set(this.slotStale);
    this.slotStale = grown;
  }

  private grow(): Int32Array {
    const grown = new Int32Array(this.code.ops.length);
    grown.set(this.entries);
    this.entries = grown;
    return grown;
  }
}

const caches = new WeakMap<DecodeCache, JitCache>();

/** The JitCache of a decode cache (one per hypervisor), created on first use. */
export function jitCacheOf(code: DecodeCache): JitCache {
  let cache = caches.get(code);
  if (cache === undefined) {
    cache = new JitCache(code);
    caches.set(code, cache);
  }
  return cache;
}

/**
 * One vCPU's door into compiled code: holds what generated functions read (host pool views, the
 * decode cache) and what they hand back (the interpreter's idx, blockStart, retired, hits), so
 * that a call allocates nothing.
 */
export class JitRunner {
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  readonly i8: Int8Array;
  readonly u16: Uint16Array;
  readonly i16: Int16Array;
  readonly code: DecodeCache;
  idx = 0;
  blockStart = 0;
  retired = 0;
  hits = 0;
  /** Strip-mined passes the compiled code started (added to the stats after each call). */
  strips = 0;
  private readonly cache: JitCache;

  constructor(pool: FramePool, code: DecodeCache, readonly mulhSigned: (a: number, b: number) => number, readonly mulhUnsigned: (a: number, b: number) => number) {
    this.i32 = pool.i32;
    this.u8 = pool.u8;
    this.i8 = pool.i8;
    this.u16 = pool.u16;
    this.i16 = pool.i16;
    this.code = code;
    this.cache = jitCacheOf(code);
  }

  /**
   * Called by the interpreter where a block starts (idx === blockStart) with its loop state.
   * Returns JIT_NONE (nothing compiled: interpret on), or JIT_INNER / JIT_OUTER with the loop
   * state in idx, blockStart, retired and hits (hits counted by the compiled code only).
   */
  enter(cpu: unknown, regs: Int32Array, base: number, idx: number, retired: number, checkLimit: number, pageVa: number, rtlb: Int32Array, wtlb: Int32Array, ctx: number, wctx: number): number {
    const fn = this.cache.lookup(base + idx);
    if (fn === null) return JIT_NONE;
    const stats = this.cache.stats;
    stats.entries++;
    let to: number;
    if (!this.cache.timing) {
      to = fn(cpu, this, regs, pageVa, idx, retired, checkLimit, rtlb, wtlb, ctx, wctx);
    } else {
      const started = performance.now();
      to = fn(cpu, this, regs, pageVa, idx, retired, checkLimit, rtlb, wtlb, ctx, wctx);
      stats.compiledMs += performance.now() - started;
    }
    stats.retiredCompiled += this.retired - retired;
    if (this.strips !== 0) {
      stats.strips += this.strips;
      this.strips = 0;
    }
    return to;
  }
}
