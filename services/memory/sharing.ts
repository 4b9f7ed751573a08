/**
 * Content-based page sharing (like ESX's transparent page sharing and Linux's KSM): a scanner
 * walks the guest pages of every VM of a hypervisor round-robin, hashes the private ones, and
 * when two pages hold the same 4 KiB — in one VM or in two — maps both onto one host frame,
 * copy-on-write (GuestMemory.sharePage). The other frame goes back to the OS. A guest write to a
 * merged page is the kernel's ordinary copy-on-write fault: the writer gets a private copy.
 *
 * - A hash only finds candidates: two pages are merged only after a full compare of their bytes,
 *   made at merge time (between vCPU slices, so nothing can change them in between). A hash
 *   collision costs one failed compare, never a wrong merge.
 * - By default a page is merged only when its hash is the same as at the scanner's previous
 *   visit (KSM's rule): a page the guest keeps writing would only be copied back at its next
 *   write, costing an exit and a copy for nothing.
 * - Zero pages are merged like any other content, onto one zero frame for the whole hypervisor
 *   (`zeroPages: 'share'`, default): the guest keeps reading them without exits. `'release'`
 *   makes them untouched instead, which saves that one frame too but costs an exit and a fresh
 *   frame at the guest's next access, even a read. docs/page-sharing.md compares the two.
 * - Pages of a region backed by a 4 MiB host run are left alone by default (`largeRegions:
 *   'skip'`, like ESX): merging one would split the run. `'share'` breaks such regions up.
 * - Only present pages carrying no protection flag other than copy-on-write are looked at: page
 *   tables the MMU traces, pages a checkpoint or another policy protects are skipped. VMs in a
 *   snapshot write epoch or with a lazy restore still pending are skipped until they are done.
 *
 * Everything goes through GuestMemory's public API (stateOf, flagsOf, isPrivate, sameFrame,
 * presentPageBytes, sharePage, releasePage, breakUpRegion): no P2M entry, frame number or host
 * offset is seen here.
 *
 * The scanner runs when it is told to: `scan(pages)` (a host's scheduler calls it between
 * slices), or every `scanEveryInstructions` of each VM from a ticker (vm.addTicker), like the
 * large-page policies.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import { AbsentState, P2mFlag, PageState, REGION_PAGES } from '../../kernel/index.ts';
import type { FrameHandle, Hypervisor, Vm } from '../../kernel/index.ts';

/** A bad PageSharer option or argument. */
export class PageSharingError extends BvError {
  constructor(message: string) {
    super('BV_PAGE_SHARING_OPTION', message);
  }
}

/**
 * A content hash of one 4 KiB page (a read-only view of its bytes): any number, equal for equal
 * contents. The scanner keys its table by it; different pages with the same hash are told apart
 * by a full compare.
 */
export type PageHash = (page: Uint8Array) => number;

/** Options of PageSharer. */
export interface PageSharerOptions {
  /** Present pages looked at per scan when scan() is called without a count, and per tick (default 100). */
  pagesPerScan?: number;
  /**
   * Scan from tickers: `pagesPerScan` pages every this many guest instructions of each VM
   * (vm.addTicker). Without it, nothing scans until scan() is called.
   */
  scanEveryInstructions?: number;
  /** Merge a page only when its hash is unchanged since the previous visit (default true). */
  mergeOnlyStable?: boolean;
  /** 'share' (default): zero pages are merged onto one zero frame; 'release': they become untouched. */
  zeroPages?: 'share' | 'release';
  /**
   * 'skip' (default): in a VM whose large-page policy is not 'off', pages of run-backed 4 MiB
   * regions stay as they are; 'share': such regions are broken up.
   */
  largeRegions?: 'skip' | 'share';
  /** Which VMs of the hypervisor take part (default: all, including VMs created later). */
  include?: (vm: Vm) => boolean;
  /** The content hash (default pageHash64); tests inject a colliding one. */
  hash?: PageHash;
}

/** Counters of a PageSharer (stats()). */
export interface PageSharingStats {
  /** scan() calls and ticks. */
  scans: number;
  /** Times the cursor went once over every VM. */
  passes: number;
  /** Guest pages the cursor stepped over (absent ones included). */
  pagesVisited: number;
  /** Present pages looked at: what a scan's page budget counts. */
  pagesScanned: number;
  /** Pages whose contents were hashed. */
  pagesHashed: number;
  /** Pages mapped onto another page's frame (each freed a frame when it was made). */
  merges: number;
  /** Of those, merges of all-zero pages. */
  zeroPageMerges: number;
  /** Zero pages made untouched (zeroPages: 'release'). */
  zeroPagesReleased: number;
  /** Pages this sharer merged that map a frame with another page now. */
  pagesShared: number;
  /** Host frames those pages would take unshared minus the frames they take: frames saved now. */
  framesSaved: number;
  /**
   * Merged pages that lost their copy-on-write protection: a guest (or host) write gave the page
   * a private copy, or cleared the flag of its last sharer. Counted when the scanner or stats()
   * next looks at the page.
   */
  cowBreaks: number;
  /**
   * Merged pages that left without a write: they became absent (released, ballooned, reset),
   * their VM went away, or they were the last page on their frame (the scanner then clears
   * their copy-on-write flag: a plain private page again).
   */
  pagesUnmerged: number;
  /** Pages with the same hash and different contents (the full compare refused the merge). */
  collisions: number;
  /** Candidates whose contents had changed since they were hashed (found by the compare). */
  staleCandidates: number;
  /** Pages not merged because their hash changed since the previous visit (mergeOnlyStable). */
  volatilePages: number;
  /** Present pages skipped because their 4 MiB region is run-backed (largeRegions: 'skip'). */
  largeRegionPagesSkipped: number;
  /** Run-backed regions broken up to merge one of their pages (largeRegions: 'share'). */
  regionsBrokenUp: number;
  /** Pages the candidate table holds. */
  tableEntries: number;
  /** Wall time spent in scans, in milliseconds. */
  scanMs: number;
}

/** What one scan did. */
export interface ScanResult {
  /** Guest pages stepped over. */
  visited: number;
  /** Present pages looked at. */
  scanned: number;
  /** Pages hashed. */
  hashed: number;
  /** Pages merged (mapped onto another page's frame) or released as zero. */
  merged: number;
}

/** A page's place in the candidate table: VM slot × 2^20 + guest page number. */
const GPN_SPAN = 2 ** 20;
/** Candidates kept per hash value (only colliding contents share one). */
const MAX_BUCKET = 8;
/**
 * A scan steps over at most this many pages per present page of its budget: an absent page costs
 * about 1/64 of a hashed one (stateOf), so a budget is about the same time whatever the density.
 */
const VISITS_PER_PAGE = 64;
const WORDS_PER_PAGE = PAGE_SIZE >>> 2;
const NO_HASH = Number.NaN;

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new PageSharingError(`${name} must be a positive integer, got ${value}`);
  return value;
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85eb_ca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2_ae35);
  return h ^ (h >>> 16);
}

/**
 * The default page hash: four 32-bit multiply–rotate lanes over the page's words (each lane takes
 * every fourth word, so the CPU runs them in parallel), folded into a 53-bit key (a safe integer).
 * About 1 µs per page here (docs/page-sharing.md). Not cryptographic: a guest can build
 * collisions, which only cost it failed compares.
 */
export function pageHash64(page: Uint8Array): number {
  const w = new Int32Array(page.buffer, page.byteOffset, WORDS_PER_PAGE);
  let a = 0x2545_f491;
  let b = 0x9e37_79b9 | 0;
  let c = 0x6a09_e667;
  let d = 0xbb67_ae85 | 0;
  for (let i = 0; i < WORDS_PER_PAGE; i += 4) {
    a = Math.imul(((a << 7) | (a >>> 25)) ^ w[i]!, 0x0100_0193);
    b = Math.imul(((b << 7) | (b >>> 25)) ^ w[i + 1]!, 0x9e37_79b1 | 0);
    c = Math.imul(((c << 7) | (c >>> 25)) ^ w[i + 2]!, 0x85eb_ca77 | 0);
    d = Math.imul(((d << 7) | (d >>> 25)) ^ w[i + 3]!, 0xc2b2_ae3d | 0);
  }
  const high = fmix32(a ^ ((b << 13) | (b >>> 19)) ^ ((c << 21) | (c >>> 11)) ^ ((d << 5) | (d >>> 27)));
  const low = fmix32((Math.imul(a, 0x27d4_eb2f) + Math.imul(b, 0x1656_67b1) + Math.imul(c, 0x9e37_79b1) + Math.imul(d, 0x85eb_ca77) + high) | 0);
  return (high >>> 0) * 0x20_0000 + (low >>> 11);
}

/** Whether two pages' bytes are equal (a native memcmp). */
function samePageBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/** What the sharer keeps per VM. */
interface VmTrack {
  readonly vm: Vm;
  readonly slot: number;
  /** Per guest page: its hash at the last visit (NaN: none yet). */
  readonly hashes: Float64Array;
  /** Per guest page: 1 while it is a page this sharer merged (until it is seen broken). */
  readonly merged: Uint8Array;
  mergedCount: number;
  /** Present pages the cursor has met in this VM in the current pass. */
  presentSeen: number;
  removeTicker: (() => void) | null;
}

/**
 * Content-based page sharing over the VMs of one hypervisor (they share its host pool). See the
 * file comment and docs/page-sharing.md.
 */
export class PageSharer {
  /** Present pages per tick, and per scan() without a count. */
  readonly pagesPerScan: number;
  /** The ticker interval in guest instructions, or null (scans only when scan() is called). */
  readonly scanEveryInstructions: number | null;
  /** Merge only pages whose hash did not change since the previous visit. */
  readonly mergeOnlyStable: boolean;
  /** What becomes of all-zero pages. */
  readonly zeroPages: 'share' | 'release';
  /** Whether pages of run-backed regions are merged (breaking the region up) or skipped; may be changed at any time (e.g. under memory pressure). */
  largeRegions: 'skip' | 'share';
  private readonly include: (vm: Vm) => boolean;
  private readonly hash: PageHash;
  /** The hash of an all-zero page under `hash`. */
  private readonly zeroHash: number;
  /** VMs taking part, in the hypervisor's order. */
  private tracks: VmTrack[] = [];
  private readonly bySlot = new Map<number, VmTrack>();
  private readonly byVm = new Map<Vm, VmTrack>();
  private nextSlot = 0;
  /** hash → the page (VM slot × 2^20 + gpn) holding that content, or several when contents collide. */
  private readonly table = new Map<number, number | number[]>();
  private tableSize = 0;
  /** Where the cursor stands: a VM's slot and the next page to visit in it. */
  private cursorSlot = -1;
  private cursorGpn = 0;
  private stopped = false;
  private readonly counters = {
    scans: 0, passes: 0, pagesVisited: 0, pagesScanned: 0, pagesHashed: 0, merges: 0, zeroPageMerges: 0, zeroPagesReleased: 0,
    cowBreaks: 0, pagesUnmerged: 0, collisions: 0, staleCandidates: 0, volatilePages: 0, largeRegionPagesSkipped: 0, regionsBrokenUp: 0, scanMs: 0,
  };

  /** Starts sharing over `hv`'s VMs (tickers only with scanEveryInstructions). Throws PageSharingError for a bad option. */
  constructor(
    /** The hypervisor whose VMs are scanned. */
    readonly hv: Hypervisor,
    options: PageSharerOptions = {},
  ) {
    this.pagesPerScan = positiveInteger('pagesPerScan', options.pagesPerScan ?? 100);
    this.scanEveryInstructions = options.scanEveryInstructions === undefined ? null : positiveInteger('scanEveryInstructions', options.scanEveryInstructions);
    this.mergeOnlyStable = options.mergeOnlyStable ?? true;
    this.zeroPages = options.zeroPages ?? 'share';
    if (this.zeroPages !== 'share' && this.zeroPages !== 'release') throw new PageSharingError(`zeroPages must be 'share' or 'release', got ${String(options.zeroPages)}`);
    this.largeRegions = options.largeRegions ?? 'skip';
    if (this.largeRegions !== 'skip' && this.largeRegions !== 'share') throw new PageSharingError(`largeRegions must be 'skip' or 'share', got ${String(options.largeRegions)}`);
    this.include = options.include ?? (() => true);
    this.hash = options.hash ?? pageHash64;
    this.zeroHash = this.hash(new Uint8Array(PAGE_SIZE));
    this.sync();
  }

  /**
   * Picks up VMs created since the last scan (and their tickers) and forgets destroyed ones.
   * Scans do this themselves; call it after creating VMs when only tickers drive the scanner.
   */
  sync(): void {
    if (this.stopped) return;
    const current: VmTrack[] = [];
    const alive = new Set<Vm>();
    for (const vm of this.hv.vms) {
      if (!this.include(vm)) continue;
      alive.add(vm);
      let track = this.byVm.get(vm);
      if (!track) {
        const hashes = new Float64Array(vm.memory.pageCount).fill(NO_HASH);
        track = { vm, slot: this.nextSlot++, hashes, merged: new Uint8Array(vm.memory.pageCount), mergedCount: 0, presentSeen: 0, removeTicker: null };
        if (this.scanEveryInstructions !== null) track.removeTicker = vm.addTicker(this.scanEveryInstructions, () => this.scan());
        this.byVm.set(vm, track);
        this.bySlot.set(track.slot, track);
      }
      current.push(track);
    }
    for (const track of this.tracks) if (!alive.has(track.vm)) this.forget(track);
    this.tracks = current;
  }

  /** Stops the scanner: tickers are removed; merged pages stay merged until written. */
  stop(): void {
    this.stopped = true;
    for (const track of this.tracks) {
      track.removeTicker?.();
      track.removeTicker = null;
    }
  }

  /**
   * Scans up to `pages` present pages (default pagesPerScan), continuing round-robin where the
   * previous scan stopped, and merges what it can; one call visits each guest page at most once.
   * Call between runs (or from a ticker).
   */
  scan(pages: number = this.pagesPerScan): ScanResult {
    if (!Number.isSafeInteger(pages) || pages < 0) throw new PageSharingError(`a scan's page count must be a non-negative integer, got ${pages}`);
    const result: ScanResult = { visited: 0, scanned: 0, hashed: 0, merged: 0 };
    if (this.stopped) return result;
    const started = performance.now();
    this.counters.scans++;
    this.sync();
    const maxVisits = pages * VISITS_PER_PAGE;
    const count = this.tracks.length;
    let index = this.tracks.findIndex((t) => t.slot === this.cursorSlot);
    if (index < 0) {
      index = 0;
      this.cursorGpn = 0;
    }
    // One scan goes over every page at most once: a second visit in the same call would find
    // nothing new (and a page must look the same at two visits to be merged).
    let pagesLeft = this.tracks.reduce((sum, t) => sum + t.vm.memory.pageCount, 0);
    while (count > 0 && pagesLeft > 0 && result.scanned < pages && result.visited < maxVisits) {
      const track = this.tracks[index]!;
      const memory = track.vm.memory;
      const from = this.cursorGpn;
      // Nothing to do in a VM with no present page, in a snapshot epoch, or with a lazy restore pending.
      if (memory.presentPages === 0 || memory.writeEpochActive || memory.pendingRegionCount > 0) {
        pagesLeft -= memory.pageCount - from;
      } else {
        const gpn = this.scanVm(track, from, Math.min(pagesLeft, maxVisits - result.visited), pages, result);
        pagesLeft -= gpn - from;
        if (gpn < memory.pageCount) {
          this.cursorGpn = gpn; // the budget ran out inside this VM
          break;
        }
      }
      index++;
      if (index === count) {
        index = 0;
        this.counters.passes++;
      }
      this.cursorGpn = 0;
    }
    if (count > 0) this.cursorSlot = this.tracks[index]!.slot;
    this.counters.pagesVisited += result.visited;
    this.counters.pagesScanned += result.scanned;
    this.counters.pagesHashed += result.hashed;
    this.counters.scanMs += performance.now() - started;
    return result;
  }

  /** Scans one VM's pages from `gpn`, at most `maxVisits` of them and until `pages` present pages are scanned in all; returns where it stopped. */
  private scanVm(track: VmTrack, gpn: number, maxVisits: number, pages: number, result: ScanResult): number {
    const memory = track.vm.memory;
    const end = Math.min(memory.pageCount, gpn + maxVisits);
    if (gpn === 0) track.presentSeen = 0;
    // A run-backed region is left alone only where the VM wants large pages (with 'off', a
    // region whose frames merely happen to be one aligned run is fair game).
    const skipLarge = this.largeRegions === 'skip' && memory.largePagePolicy !== 'off';
    let region = -1;
    let regionIsLarge = false;
    for (; gpn < end && result.scanned < pages; gpn++) {
      // Every present page of this VM seen in this pass: the rest of it is absent (pages made
      // present behind the cursor meanwhile wait for the next pass).
      if (track.presentSeen >= memory.presentPages) return memory.pageCount;
      result.visited++;
      if (track.merged[gpn] === 1) this.stillMerged(track, gpn); // (a page seen broken is looked at as unmerged)
      if (memory.stateOf(gpn) !== PageState.PRESENT) continue;
      result.scanned++;
      track.presentSeen++;
      if ((memory.flagsOf(gpn) & ~P2mFlag.COPY_ON_WRITE) !== 0) continue; // traced page table, checkpoint, watched…
      if (skipLarge && Math.floor(gpn / REGION_PAGES) !== region) {
        region = Math.floor(gpn / REGION_PAGES);
        regionIsLarge = memory.regionIsLarge(region);
      }
      if (skipLarge && regionIsLarge) {
        this.counters.largeRegionPagesSkipped++;
        continue;
      }
      const merged = track.merged[gpn] === 1 ? this.visitMerged(track, gpn) : this.visitPrivate(track, gpn, result);
      if (merged) {
        result.merged++;
        region = -1; // the region's backing changed: ask again
      }
    }
    return gpn;
  }

  /**
   * The counters, with pagesShared and framesSaved counted now: a pass over the pages this
   * sharer merged (it also notices the ones broken since they were last looked at).
   */
  stats(): PageSharingStats {
    this.sync();
    // Pages still sharing, grouped by content hash; within a hash, by frame (sameFrame).
    const byHash = new Map<number, { track: VmTrack; gpn: number }[]>();
    let pagesShared = 0;
    let frames = 0;
    for (const track of this.tracks) {
      if (track.mergedCount === 0) continue;
      const memory = track.vm.memory;
      for (let gpn = 0; gpn < memory.pageCount; gpn++) {
        if (track.merged[gpn] !== 1 || !this.stillMerged(track, gpn) || memory.isPrivate(gpn)) continue;
        pagesShared++;
        const hash = track.hashes[gpn]!;
        let frameReps = byHash.get(hash);
        if (!frameReps) byHash.set(hash, (frameReps = []));
        if (!frameReps.some((rep) => rep.track.vm.memory.sameFrame(rep.gpn, memory, gpn))) {
          frameReps.push({ track, gpn });
          frames++;
        }
      }
    }
    return { ...this.counters, pagesShared, framesSaved: pagesShared - frames, tableEntries: this.tableSize, scanMs: Number(this.counters.scanMs.toFixed(3)) };
  }

  // ---------------------------------------------------------------------------------------------

  /**
   * Whether a page this sharer merged still holds its merged frame (present, copy-on-write);
   * otherwise it is no longer counted as merged, and the way it left is counted.
   */
  private stillMerged(track: VmTrack, gpn: number): boolean {
    const memory = track.vm.memory;
    if (memory.stateOf(gpn) === PageState.PRESENT && (memory.flagsOf(gpn) & P2mFlag.COPY_ON_WRITE) !== 0) return true;
    if (memory.stateOf(gpn) === PageState.PRESENT) this.counters.cowBreaks++;
    else this.counters.pagesUnmerged++;
    track.merged[gpn] = 0;
    track.mergedCount--;
    return false;
  }

  /** An unmerged private page: hash it, look its content up, merge or remember it. Returns whether it was merged. */
  private visitPrivate(track: VmTrack, gpn: number, result: ScanResult): boolean {
    const memory = track.vm.memory;
    if (!memory.isPrivate(gpn)) return false; // shared by a fork: already one frame
    const bytes = memory.presentPageBytes(gpn)!;
    const hash = this.hash(bytes);
    result.hashed++;
    const previous = track.hashes[gpn]!;
    track.hashes[gpn] = hash;
    if (previous !== hash && !Number.isNaN(previous)) this.removeFromTable(previous, track.slot, gpn);
    if (this.mergeOnlyStable && previous !== hash) {
      if (!Number.isNaN(previous)) this.counters.volatilePages++; // (a first visit only records the hash)
      return false;
    }
    if (hash === this.zeroHash && this.zeroPages === 'release' && memory.isZeroPage(gpn)) {
      this.removeFromTable(hash, track.slot, gpn);
      track.hashes[gpn] = NO_HASH;
      memory.releasePage(gpn, AbsentState.UNTOUCHED);
      track.presentSeen--; // no longer one of the present pages the cursor has met
      this.counters.zeroPagesReleased++;
      return true;
    }
    const self = track.slot * GPN_SPAN + gpn;
    if (this.table.get(hash) === self) return false; // this page is the table's copy of its contents already
    for (const ref of this.candidates(hash)) {
      if (ref === self) return false;
      const other = this.usableCandidate(ref, hash);
      if (other === null) continue;
      const otherBytes = other.track.vm.memory.presentPageBytes(other.gpn)!;
      if (samePageBytes(bytes, otherBytes)) {
        this.merge(other.track, other.gpn, track, gpn, hash);
        return true;
      }
      // Not the same bytes: a collision, or the candidate changed since it was hashed (a merged
      // page cannot have: it is copy-on-write).
      const otherHash = other.track.merged[other.gpn] === 1 ? hash : this.hash(otherBytes);
      if (otherHash === hash) {
        this.counters.collisions++;
      } else {
        this.counters.staleCandidates++;
        this.removeFromTable(hash, other.track.slot, other.gpn);
        other.track.hashes[other.gpn] = otherHash; // what it holds now, as a visit would have seen
      }
    }
    this.addToTable(hash, self);
    return false;
  }

  /**
   * A page this sharer merged (its contents cannot change while it stays copy-on-write, so its
   * hash is still right): make sure the table can find its frame, e.g. after the page the table
   * named was written. A page left alone on its frame (the others were written) moves onto
   * another frame with the same contents if there is one, and otherwise becomes a plain private
   * page again: its flag is cleared, so its next write takes no exit and swap may take it.
   */
  private visitMerged(track: VmTrack, gpn: number): boolean {
    const memory = track.vm.memory;
    const hash = track.hashes[gpn]!;
    const self = track.slot * GPN_SPAN + gpn;
    const alone = memory.isPrivate(gpn);
    if (!alone) {
      // The common case, cheaply: the table names this page, or a page on its frame.
      const entry = this.table.get(hash);
      if (entry === self) return false;
      if (typeof entry === 'number') {
        const slot = Math.floor(entry / GPN_SPAN);
        const other = this.bySlot.get(slot);
        if (other !== undefined && other.vm.memory.sameFrame(entry - slot * GPN_SPAN, memory, gpn)) return false;
      }
    }
    let listed = false;
    for (const ref of this.candidates(hash)) {
      if (ref === self) {
        listed = true;
        continue;
      }
      const other = this.usableCandidate(ref, hash);
      if (other === null) continue;
      const otherMemory = other.track.vm.memory;
      if (otherMemory.sameFrame(other.gpn, memory, gpn)) {
        listed = true;
        continue;
      }
      if (!samePageBytes(memory.presentPageBytes(gpn)!, otherMemory.presentPageBytes(other.gpn)!)) continue;
      // The same contents on two frames: one of them goes if a page is alone on it.
      if (alone) {
        this.merge(other.track, other.gpn, track, gpn, hash);
        return true;
      }
      if (otherMemory.isPrivate(other.gpn)) {
        this.merge(track, gpn, other.track, other.gpn, hash);
        return true;
      }
    }
    if (alone) {
      memory.unprotect(gpn, P2mFlag.COPY_ON_WRITE);
      track.merged[gpn] = 0;
      track.mergedCount--;
      this.counters.pagesUnmerged++;
    }
    if (!listed) this.addToTable(hash, self);
    return false;
  }

  /**
   * A table entry that can still be merged with: its VM takes part, and the page is present with
   * no flag but copy-on-write, and is not in a run-backed region being skipped. Entries that fail
   * are dropped from the table.
   */
  private usableCandidate(ref: number, hash: number): { track: VmTrack; gpn: number } | null {
    const slot = Math.floor(ref / GPN_SPAN);
    const gpn = ref - slot * GPN_SPAN;
    const track = this.bySlot.get(slot);
    let usable = false;
    if (track && this.byVm.get(track.vm) === track) {
      const memory = track.vm.memory;
      if (track.merged[gpn] === 1 && !this.stillMerged(track, gpn)) usable = false;
      else {
        usable = memory.stateOf(gpn) === PageState.PRESENT && (memory.flagsOf(gpn) & ~P2mFlag.COPY_ON_WRITE) === 0
          && !memory.writeEpochActive
        && (this.largeRegions === 'share' || memory.largePagePolicy === 'off' || !memory.regionIsLarge(Math.floor(gpn / REGION_PAGES)));
      }
    }
    if (usable) return { track: track!, gpn };
    this.removeFromTable(hash, slot, gpn);
    return null;
  }

  /** Maps `into`'s page onto `keep`'s frame (copy-on-write on both) and records both as merged. */
  private merge(keep: VmTrack, keepGpn: number, into: VmTrack, intoGpn: number, hash: number): void {
    // The page whose frame goes leaves its region's run (the kept page only gains copy-on-write).
    if (this.largeRegions === 'share' && into.vm.memory.breakUpRegion(Math.floor(intoGpn / REGION_PAGES))) this.counters.regionsBrokenUp++;
    keep.vm.memory.sharePage(keepGpn, into.vm.memory, intoGpn);
    for (const [track, gpn] of [[keep, keepGpn], [into, intoGpn]] as const) {
      track.hashes[gpn] = hash;
      if (track.merged[gpn] === 0) {
        track.merged[gpn] = 1;
        track.mergedCount++;
      }
    }
    // The page whose frame went is not the table's copy of these contents any more; the kept one is.
    this.removeFromTable(hash, into.slot, intoGpn);
    this.addToTable(hash, keep.slot * GPN_SPAN + keepGpn);
    this.counters.merges++;
    if (hash === this.zeroHash && keep.vm.memory.isZeroPage(keepGpn)) this.counters.zeroPageMerges++;
  }

  private candidates(hash: number): readonly number[] {
    const entry = this.table.get(hash);
    if (entry === undefined) return [];
    return typeof entry === 'number' ? [entry] : [...entry];
  }

  private addToTable(hash: number, ref: number): void {
    const entry = this.table.get(hash);
    if (entry === undefined) {
      this.table.set(hash, ref);
    } else if (typeof entry === 'number') {
      if (entry === ref) return;
      this.table.set(hash, [entry, ref]);
    } else {
      if (entry.includes(ref)) return;
      entry.push(ref);
      if (entry.length > MAX_BUCKET) {
        entry.shift(); // only colliding contents pile up here: forget the oldest
        this.tableSize--;
      }
    }
    this.tableSize++;
  }

  private removeFromTable(hash: number, slot: number, gpn: number): void {
    const ref = slot * GPN_SPAN + gpn;
    const entry = this.table.get(hash);
    if (entry === undefined) return;
    if (typeof entry === 'number') {
      if (entry !== ref) return;
      this.table.delete(hash);
    } else {
      const at = entry.indexOf(ref);
      if (at < 0) return;
      entry.splice(at, 1);
      if (entry.length === 1) this.table.set(hash, entry[0]!);
    }
    this.tableSize--;
  }

  /** A VM went away (destroyed, or no longer included): its table entries and merged pages go. */
  private forget(track: VmTrack): void {
    track.removeTicker?.();
    track.removeTicker = null;
    for (let gpn = 0; gpn < track.hashes.length; gpn++) {
      const hash = track.hashes[gpn]!;
      if (!Number.isNaN(hash)) this.removeFromTable(hash, track.slot, gpn);
    }
    this.counters.pagesUnmerged += track.mergedCount;
    track.mergedCount = 0;
    this.byVm.delete(track.vm);
    this.bySlot.delete(track.slot);
    if (this.cursorSlot === track.slot) {
      this.cursorSlot = -1;
      this.cursorGpn = 0;
    }
  }
}

/** A page one thread offers for merging with pages of VMs in other threads (docs/workers.md). */
export interface SharingOffer {
  /** The VM's name. */
  vm: string;
  /** The guest page. */
  gpn: number;
  /** pageHash64 of its bytes when offered. */
  hash: number;
}

/**
 * The part of content-based sharing between threads of one pool that runs in each thread
 * (issue 16): it offers pages (present, private, unprotected, not all zeros) with their hashes,
 * round-robin over its VMs; lends one whose bytes still hash the same (exportPage); adopts a lent
 * frame into a page only after a full compare of the bytes (sameContentAs, importPage). The host
 * matches offers by hash across threads. A hash only finds candidates; the compare decides.
 */
export class ThreadSharing {
  private cursorVm = 0;
  private cursorGpn = 0;
  /** Pages adopted (merged onto a frame lent by another thread), lends refused (the page changed), compares that failed. */
  readonly counters = { offered: 0, lent: 0, lendsRefused: 0, adopted: 0, comparesFailed: 0 };

  constructor(private readonly vms: () => readonly Vm[]) {}

  /** Up to `limit` offers, continuing where the previous call stopped. */
  offers(limit: number): SharingOffer[] {
    const vms = this.vms().filter((vm) => !vm.memory.writeEpochActive && vm.memory.pendingRegionCount === 0);
    const out: SharingOffer[] = [];
    if (vms.length === 0) return out;
    let visited = 0;
    const total = vms.reduce((sum, vm) => sum + vm.memory.pageCount, 0);
    while (out.length < limit && visited < total) {
      if (this.cursorVm >= vms.length) this.cursorVm = 0;
      const vm = vms[this.cursorVm]!;
      if (this.cursorGpn >= vm.memory.pageCount) {
        this.cursorVm++;
        this.cursorGpn = 0;
        continue;
      }
      const gpn = this.cursorGpn++;
      visited++;
      const memory = vm.memory;
      if (memory.stateOf(gpn) !== PageState.PRESENT || !memory.isPrivate(gpn) || memory.flagsOf(gpn) !== 0 || memory.isZeroPage(gpn)) continue;
      out.push({ vm: vm.name, gpn, hash: pageHash64(memory.presentPageBytes(gpn)!) });
    }
    this.counters.offered += out.length;
    return out;
  }

  /** A handle lending `vm`'s page `gpn` when it still hashes to `hash` (it becomes copy-on-write here), else null. */
  lend(vm: Vm, gpn: number, hash: number): FrameHandle | null {
    const memory = vm.memory;
    if (memory.stateOf(gpn) !== PageState.PRESENT || (memory.flagsOf(gpn) & ~P2mFlag.COPY_ON_WRITE) !== 0 || pageHash64(memory.presentPageBytes(gpn)!) !== hash) {
      this.counters.lendsRefused++;
      return null;
    }
    this.counters.lent++;
    return memory.exportPage(gpn);
  }

  /** Merges `vm`'s page `gpn` onto a lent frame when their bytes are equal (its own frame goes back to the OS); else drops the handle. */
  adopt(vm: Vm, gpn: number, handle: FrameHandle): boolean {
    const memory = vm.memory;
    const ok = memory.stateOf(gpn) === PageState.PRESENT && memory.isPrivate(gpn) && memory.flagsOf(gpn) === 0 && memory.sameContentAs(gpn, handle);
    if (!ok) {
      this.counters.comparesFailed++;
      memory.dropFrameHandle(handle);
      return false;
    }
    memory.importPage(gpn, handle);
    this.counters.adopted++;
    return true;
  }
}
