/**
 * Write tracking for the recovery methods (T-17, issue 12 item 3): which guest pages have not
 * been written since a recovery method last took note of their bytes.
 *
 * The three methods (stored hash, parity, clean copy) share one tracker per VM because the P2M
 * has one protection flag for them, `P2mFlag.PARITY`. A page is *sealed* when the tracker has
 * write-protected it with that flag; the first write to it afterwards (a guest store by any
 * vCPU, an A/D update, a device's writePhysical) exits to the tracker's resolver before the
 * write lands: every listener is told the page's bytes as they are *before* the write, the page
 * is unsealed and the flag cleared, and the write completes. Later writes to it run at full
 * speed until someone seals it again (between runs). A guest therefore pays one write-protect
 * exit per page per sealing cycle, never per store.
 *
 * A sealed page can also lose its flag without a write, when the kernel replaces its frame
 * (swap out and in, balloon, content sharing, a restore); the bytes may then change with no exit.
 * `validate()` finds those pages (present without the flag, or absent) and tells listeners they
 * are *lost*; the methods drop what they knew about them — except a page a method has just
 * rebuilt (expectReinstall) that is back with exactly the rebuilt bytes: it is sealed again. Pages in the POISONED state are left
 * alone: a poisoned page is exactly the one being recovered, and nothing can write it.
 * Validation runs between runs (the methods call it from their scans and tickers); a replacement
 * and a guest write in the same scheduling round as an error report on that page is the one case
 * it cannot see (see docs/recovery.md, "Limits"): every method therefore also checks that its
 * result equals the corrupted copy outside the reported window.
 */
import { AbsentState, P2mFlag, PageState } from '../../kernel/index.ts';
import type { GuestMemory, Vm } from '../../kernel/index.ts';
import type { ErrorReport } from './types.ts';

/** The flag the recovery methods seal pages with. */
export const RECOVERY_FLAG = P2mFlag.PARITY;

/** Told about sealed pages that change. */
export interface WriteListener {
  /** The first write since sealing is about to land on `gpn`; `before` is its content now (a view, valid during the call). */
  written(gpn: number, before: Uint8Array): void;
  /** A sealed page lost its seal without a write exit (its frame was replaced or released): its content is unknown. */
  lost(gpn: number): void;
}

/** Counters of a tracker. */
export interface WriteTrackingStats {
  /** Pages sealed (write-protected), counting every re-seal. */
  seals: number;
  /** Write-protect exits taken (first writes after a seal). */
  writeExits: number;
  /** Sealed pages found unsealed by a frame replacement (validate). */
  lost: number;
  /** Recovered pages found reinstalled with their rebuilt bytes and sealed again (not lost). */
  resealed: number;
  /** Host time spent in the write-protect resolver and sealing, in nanoseconds. */
  hostNs: number;
}

const trackers = new WeakMap<GuestMemory, PageWriteTracker>();

/** One VM's sealed pages; get it with PageWriteTracker.of(vm). */
export class PageWriteTracker {
  /** 1 for a sealed page (protected by the tracker, no write seen since). */
  readonly sealed: Uint8Array;
  /** Counters. */
  readonly stats: WriteTrackingStats = { seals: 0, writeExits: 0, lost: 0, resealed: 0, hostNs: 0 };
  private readonly listeners: WriteListener[] = [];
  /** Pages a method rebuilt, by gpn, with the bytes it gave (expectReinstall). */
  private readonly recovered = new Map<number, Uint8Array>();
  private sealedCount = 0;

  /** The tracker of a VM (created, and its resolver registered, on first use). */
  static of(vm: Vm): PageWriteTracker {
    let tracker = trackers.get(vm.memory);
    if (tracker === undefined) {
      tracker = new PageWriteTracker(vm.memory);
      trackers.set(vm.memory, tracker);
    }
    return tracker;
  }

  /** @param memory the VM's memory. */
  private constructor(readonly memory: GuestMemory) {
    this.sealed = new Uint8Array(memory.pageCount);
    memory.onWriteProtected(RECOVERY_FLAG, (mem, gpn) => this.firstWrite(mem, gpn));
  }

  /** Adds a listener; returns a function that removes it. */
  listen(listener: WriteListener): () => void {
    this.listeners.push(listener);
    return () => {
      const at = this.listeners.indexOf(listener);
      if (at >= 0) this.listeners.splice(at, 1);
    };
  }

  /** Pages sealed now. */
  get sealedPages(): number {
    return this.sealedCount;
  }

  /**
   * Seals a present page (write-protects it); returns false, changing nothing, for an absent
   * one. Between runs only (protect shoots down the page's translations).
   */
  seal(gpn: number): boolean {
    const memory = this.memory;
    if (memory.stateOf(gpn) !== PageState.PRESENT) return false;
    if (this.sealed[gpn] === 1 && (memory.flagsOf(gpn) & RECOVERY_FLAG) !== 0) return true;
    const start = process.hrtime.bigint();
    memory.protect(gpn, RECOVERY_FLAG);
    if (this.sealed[gpn] === 0) this.sealedCount++;
    this.sealed[gpn] = 1;
    this.stats.seals++;
    this.stats.hostNs += Number(process.hrtime.bigint() - start);
    return true;
  }

  /** Whether a page is sealed and still carries the flag (a present page), or is sealed and poisoned since. */
  isSealed(gpn: number): boolean {
    return this.sealed[gpn] === 1;
  }

  /**
   * Finds sealed pages whose seal went away without a write exit (frame replaced, released,
   * swapped, ballooned…), unseals them and tells the listeners they are lost. Poisoned pages
   * keep their seal. O(pages) between runs; `gpns` restricts the pass to some pages.
   */
  validate(gpns?: ArrayLike<number>): number {
    if (this.sealedCount === 0) return 0;
    let found = 0;
    const check = (gpn: number): void => {
      if (this.sealed[gpn] !== 1) return;
      const state = this.memory.stateOf(gpn);
      if (state === PageState.PRESENT ? (this.memory.flagsOf(gpn) & RECOVERY_FLAG) !== 0 : state === AbsentState.POISONED) return;
      if (state === PageState.PRESENT && this.resealIfRecovered(gpn)) return;
      this.sealed[gpn] = 0;
      this.sealedCount--;
      this.stats.lost++;
      found++;
      for (const listener of this.listeners) listener.lost(gpn);
    };
    if (gpns === undefined) for (let gpn = 0; gpn < this.sealed.length; gpn++) check(gpn);
    else for (let i = 0; i < gpns.length; i++) check(gpns[i]!);
    return found;
  }

  /**
   * A method rebuilt `gpn` as `bytes` (its content when it was sealed): when the page comes back
   * present with exactly these bytes (the memory-error service installs them on a new frame),
   * validate seals it again instead of reporting it lost, so the methods keep what they knew.
   */
  expectReinstall(gpn: number, bytes: Uint8Array): void {
    this.recovered.set(gpn, bytes.slice());
  }

  /**
   * Whether `gpn` was rebuilt by a method and is poisoned again before validate saw it back: it
   * was reinstalled (without a seal) and may have been written since, so nothing the methods
   * knew about it can be trusted. The methods refuse such a page.
   */
  unsettled(gpn: number): boolean {
    return this.recovered.has(gpn) && this.memory.stateOf(gpn) === AbsentState.POISONED;
  }

  private resealIfRecovered(gpn: number): boolean {
    const expected = this.recovered.get(gpn);
    if (expected === undefined) return false;
    this.recovered.delete(gpn);
    const now = this.memory.presentPageBytes(gpn);
    if (now === null || Buffer.compare(now, expected) !== 0) return false;
    this.memory.protect(gpn, RECOVERY_FLAG);
    this.stats.resealed++;
    return true;
  }

  /** The resolver for RECOVERY_FLAG: listeners see the bytes before the write, then the page is unsealed. */
  private firstWrite(memory: GuestMemory, gpn: number): void {
    const start = process.hrtime.bigint();
    this.stats.writeExits++;
    const before = memory.presentPageBytes(gpn);
    if (before !== null) for (const listener of this.listeners) listener.written(gpn, before);
    if (this.sealed[gpn] === 1) {
      this.sealed[gpn] = 0;
      this.sealedCount--;
    }
    memory.unprotect(gpn, RECOVERY_FLAG);
    this.stats.hostNs += Number(process.hrtime.bigint() - start);
  }
}

/** One periodic job on a VM's tickers (a scan, a refresh), restartable and stoppable. */
export class TickerSlot {
  private stopCurrent: (() => void) | null = null;
  constructor(private readonly vm: Vm) {}

  /** Runs `fn` every `everyInstructions` guest instructions instead of the previous job; returns a function that stops it. */
  start(everyInstructions: number, fn: () => void): () => void {
    this.stop();
    const stop = this.vm.addTicker(everyInstructions, fn);
    this.stopCurrent = stop;
    return () => {
      stop();
      if (this.stopCurrent === stop) this.stopCurrent = null;
    };
  }

  /** Stops the current job, if any. */
  stop(): void {
    this.stopCurrent?.();
    this.stopCurrent = null;
  }
}

/** Runs `fn` and passes the host nanoseconds it took to `add`. */
export function timed<T>(add: (ns: number) => void, fn: () => T): T {
  const start = process.hrtime.bigint();
  try {
    return fn();
  } finally {
    add(Number(process.hrtime.bigint() - start));
  }
}

/**
 * Whether `rebuilt` equals `bad` outside the reported window of bits (an uncorrected error
 * corrupts only its window): a rebuilt page that differs elsewhere came from stale state.
 */
export function sameOutsideWindow(rebuilt: Uint8Array, bad: Uint8Array, windowBitOffset: number, windowBits: number): boolean {
  if (rebuilt.length !== bad.length) return false;
  const first = windowBitOffset >>> 3;
  const last = (windowBitOffset + windowBits - 1) >>> 3;
  for (let i = 0; i < first; i++) if (rebuilt[i] !== bad[i]) return false;
  for (let i = last + 1; i < rebuilt.length; i++) if (rebuilt[i] !== bad[i]) return false;
  for (let i = first; i <= last; i++) {
    // Bits of the edge bytes outside the window must agree too (bit b of a page is bit b & 7 of byte b >> 3).
    let mask = 0;
    for (let bit = 0; bit < 8; bit++) {
      const at = i * 8 + bit;
      if (at >= windowBitOffset && at < windowBitOffset + windowBits) mask |= 1 << bit;
    }
    if (((rebuilt[i]! ^ bad[i]!) & ~mask & 0xff) !== 0) return false;
  }
  return true;
}

/** Whether a recover() call is well formed for a method of `own` with `pages` pages: this VM, a page in RAM, a 4 KiB copy, a valid window. */
export function reportFits(vm: Vm, own: Vm, pages: number, report: ErrorReport, bad: Uint8Array): boolean {
  const { gpn } = report;
  return vm === own && bad.length === 4096 && Number.isInteger(gpn) && gpn >= 0 && gpn < pages && windowIsValid(report.windowBitOffset, report.windowBits);
}

/** Whether a report's window is well formed for a page of `pageBytes` bytes. */
export function windowIsValid(windowBitOffset: number, windowBits: number, pageBytes = 4096): boolean {
  return Number.isInteger(windowBitOffset) && Number.isInteger(windowBits) && windowBitOffset >= 0 && windowBits >= 1 && windowBits <= 64 && windowBitOffset + windowBits <= pageBytes * 8;
}
