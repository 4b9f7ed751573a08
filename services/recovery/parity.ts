/**
 * Parity recovery (T-17, issue 12 item 3): XOR parity over groups of N guest pages, kept in host
 * memory outside the guest; a page with an uncorrected error is rebuilt from the other N−1
 * pages of its group and the parity page.
 *
 * Groups are runs of N consecutive guest pages (group g = pages gN … gN+N−1). Each page is
 * either *included* (its bytes as they were when included are XORed into the group's parity and
 * it is sealed through the recovery write tracker) or not. Keeping parity current as the guest
 * writes costs one write-protect exit per page per refresh: at the first write to an included
 * page the exit XORs the page's bytes before the write *out* of the parity (old bytes), and the
 * page stops being included; `refresh()` (between runs, e.g. from a ticker via startRefreshing)
 * XORs the written pages' new bytes back *in* and seals them again, and includes pages that
 * became present since. So at every moment the parity is exactly the XOR of the included pages'
 * current bytes (an included page cannot change without an exit), and any included page can be
 * rebuilt from the parity and the other included pages. A page written since the last refresh is
 * not covered until the next one.
 *
 * A second error in the group is detected, not miscomputed: recover() returns null when another
 * included page of the group is absent (poisoned, or swapped/released since), when one lost its
 * seal without a write exit (frame replaced: validate), or when the rebuilt page differs from
 * the corrupted copy outside the reported window (an unreported corruption elsewhere in the
 * group, or a stale parity).
 */
import type { Vm } from '../../kernel/index.ts';
import { PageState } from '../../kernel/index.ts';
import type { ErrorReport, RecoveryMethod } from './types.ts';
import { PageWriteTracker, sameOutsideWindow, TickerSlot, timed, reportFits } from './write-tracking.ts';

const PAGE_WORDS = 1024;

/** Options of ParityGroups. */
export interface ParityOptions {
  /** Pages per parity group (2 … 64; default 8). Host memory: one 4 KiB parity page per group. */
  groupPages?: number;
}

/** Counters of ParityGroups. */
export interface ParityStats {
  /** Pages XORed into parity (inclusions, counting re-inclusions after writes). */
  included: number;
  /** Pages XORed out of parity at their first write after inclusion. */
  writtenOut: number;
  /** Groups recomputed from scratch because a page lost its seal without a write exit. */
  groupsRecomputed: number;
  /** Host time in refresh() and in the write exits' parity updates, ns. */
  keepNs: number;
  /** Pages rebuilt. */
  recovered: number;
  /** recover() returned null: the page was not covered (written since the last refresh, never included). */
  failedNotCovered: number;
  /** … another page of the group could not be read (poisoned, absent, replaced): a second error or stale state. */
  failedGroup: number;
  /** … the rebuilt page differed from the corrupted copy outside the window. */
  failedMismatch: number;
  /** Host time in recover(), ns. */
  recoverNs: number;
}

/** Parity groups for one VM. */
export class ParityGroups implements RecoveryMethod {
  readonly name = 'parity';
  /** Pages per group (N). */
  readonly groupPages: number;
  /** Groups (parity pages) over the VM's RAM. */
  readonly groupCount: number;
  /** Counters. */
  readonly stats: ParityStats = {
    included: 0, writtenOut: 0, groupsRecomputed: 0, keepNs: 0, recovered: 0, failedNotCovered: 0, failedGroup: 0, failedMismatch: 0, recoverNs: 0,
  };
  /** The parity pages, one per group (host memory, outside the guest). */
  private readonly parity: Int32Array;
  /** 1: the page's current bytes are in its group's parity. */
  private readonly included: Uint8Array;
  /** 1: the group's parity is not the XOR of its included pages (a page was replaced unseen). */
  private readonly broken: Uint8Array;
  private readonly tracker: PageWriteTracker;
  private readonly unlisten: () => void;
  private readonly ticker: TickerSlot;

  /** @param vm the VM whose pages the groups cover. */
  constructor(readonly vm: Vm, options: ParityOptions = {}) {
    const n = options.groupPages ?? 8;
    if (!Number.isInteger(n) || n < 2 || n > 64) throw new RangeError(`groupPages must be 2 … 64, got ${n}`);
    this.groupPages = n;
    const pages = vm.memory.pageCount;
    this.groupCount = Math.ceil(pages / n);
    this.parity = new Int32Array(this.groupCount * PAGE_WORDS);
    this.included = new Uint8Array(pages);
    this.broken = new Uint8Array(this.groupCount);
    this.tracker = PageWriteTracker.of(vm);
    this.ticker = new TickerSlot(vm);
    this.unlisten = this.tracker.listen({
      written: (gpn, before) => {
        if (this.included[gpn] !== 1) return;
        const start = process.hrtime.bigint();
        this.xorInto(Math.floor(gpn / n), before);
        this.included[gpn] = 0;
        this.stats.writtenOut++;
        this.stats.keepNs += Number(process.hrtime.bigint() - start);
      },
      lost: (gpn) => {
        if (this.included[gpn] === 1) this.broken[Math.floor(gpn / n)] = 1;
      },
    });
  }

  /** Host bytes the parity pages take. */
  get parityBytes(): number {
    return this.parity.byteLength;
  }

  /** Whether a page is covered by its group's parity now. */
  isCovered(gpn: number): boolean {
    return this.included[gpn] === 1 && this.broken[Math.floor(gpn / this.groupPages)] === 0;
  }

  /**
   * Brings the parity up to date between runs: finds pages replaced unseen (their groups are
   * recomputed), then XORs in every present page that is not included (written since the last
   * refresh, or new) and seals it. Returns the pages included.
   */
  refresh(): number {
    const start = process.hrtime.bigint();
    const memory = this.vm.memory;
    const n = this.groupPages;
    this.tracker.validate();
    let added = 0;
    for (let g = 0; g < this.groupCount; g++) {
      const first = g * n;
      const end = Math.min(first + n, this.included.length);
      if (this.broken[g] === 1) {
        this.parity.fill(0, g * PAGE_WORDS, (g + 1) * PAGE_WORDS);
        this.included.fill(0, first, end);
        this.broken[g] = 0;
        this.stats.groupsRecomputed++;
      }
      for (let gpn = first; gpn < end; gpn++) {
        if (this.included[gpn] === 1) continue;
        if (memory.stateOf(gpn) !== PageState.PRESENT) continue;
        const bytes = memory.presentPageBytes(gpn);
        if (bytes === null || !this.tracker.seal(gpn)) continue;
        this.xorInto(g, bytes);
        this.included[gpn] = 1;
        added++;
      }
    }
    this.stats.included += added;
    this.stats.keepNs += Number(process.hrtime.bigint() - start);
    return added;
  }

  /** Refreshes from a ticker every `everyInstructions` guest instructions. Returns a function that stops it. */
  startRefreshing(everyInstructions: number): () => void {
    return this.ticker.start(everyInstructions, () => this.refresh());
  }

  /** Stops refreshing and listening. */
  dispose(): void {
    this.ticker.stop();
    this.unlisten();
    this.included.fill(0);
  }

  recover(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null {
    return timed((ns) => (this.stats.recoverNs += ns), () => this.rebuild(vm, report, bad));
  }

  private rebuild(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null {
    const { gpn } = report;
    if (!reportFits(vm, this.vm, this.included.length, report, bad)) {
      this.stats.failedNotCovered++;
      return null;
    }
    const n = this.groupPages;
    const g = Math.floor(gpn / n);
    if (!this.isCovered(gpn) || !this.tracker.isSealed(gpn) || this.tracker.unsettled(gpn)) {
      this.stats.failedNotCovered++;
      return null;
    }
    const memory = vm.memory;
    const first = g * n;
    const end = Math.min(first + n, this.included.length);
    // The other included pages must all still be what the parity holds.
    const others: number[] = [];
    for (let other = first; other < end; other++) if (other !== gpn && this.included[other] === 1) others.push(other);
    if (this.tracker.validate(others) > 0 || this.broken[g] === 1) {
      this.stats.failedGroup++;
      return null;
    }
    const out = new Int32Array(this.parity.slice(g * PAGE_WORDS, (g + 1) * PAGE_WORDS));
    for (const other of others) {
      const bytes = memory.stateOf(other) === PageState.PRESENT ? memory.presentPageBytes(other) : null;
      if (bytes === null) {
        this.stats.failedGroup++; // a second poisoned (or vanished) page in the group
        return null;
      }
      const words = new Int32Array(bytes.buffer, bytes.byteOffset, PAGE_WORDS);
      for (let i = 0; i < PAGE_WORDS; i++) out[i]! ^= words[i]!;
    }
    const rebuilt = new Uint8Array(out.buffer);
    if (!sameOutsideWindow(rebuilt, bad, report.windowBitOffset, report.windowBits)) {
      this.stats.failedMismatch++;
      return null;
    }
    this.stats.recovered++;
    this.tracker.expectReinstall(gpn, rebuilt);
    return rebuilt;
  }

  private xorInto(group: number, bytes: Uint8Array): void {
    const parity = this.parity;
    const base = group * PAGE_WORDS;
    const words = bytes.byteOffset % 4 === 0 ? new Int32Array(bytes.buffer, bytes.byteOffset, PAGE_WORDS) : new Int32Array(bytes.slice().buffer);
    for (let i = 0; i < PAGE_WORDS; i++) parity[base + i]! ^= words[i]!;
  }
}
