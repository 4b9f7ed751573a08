/**
 * The memory balloon (device type 6, docs/balloon.md; T-5): the host sets a target, the guest's
 * driver takes that many pages out of use and reports their guest page numbers here, and the
 * host releases the frames behind them, so the process RSS really falls. Deflating hands pages
 * back; they read as zeros.
 *
 * Writing COMMAND carries out the whole command at once (before the store retires), on an array
 * of at most 1024 u32 entries in guest RAM. The device acts only through the VM's GuestMemory:
 * a page in the balloon is `releasePage(gpn, BALLOONED)` (its frame goes back to the OS), a
 * deflated or reported-free page becomes untouched (zero on its next touch), and the BALLOONED
 * resolver turns any later access to a ballooned page into a guest error naming it.
 *
 * Whose fault a failure is decides where it goes:
 * - The guest's (a command breaking a rule of docs/balloon.md, a touch of a ballooned page): the
 *   VM stops with a guest error naming the rule. Every entry is checked before any is acted on,
 *   so a refused command changes nothing: no frame is released, `actual` does not move.
 * - The host's (bringing a swapped or lazily restored page in failed): the VM stops with a host
 *   error.
 *
 * The 'balloon' state component saves the target, the settings, the registers and the list of
 * ballooned pages; restoring it (a checkpoint, a fork) puts exactly those pages back in the
 * balloon. Ballooned pages hold nothing, so a checkpoint stores none of their bytes.
 */
import { DeviceType, PAGE_SIZE } from '../guest-isa/arch.ts';
import { BvError } from '../guest-isa/errors.ts';
import { AbsentState, GuestAccessError, KernelError, MemoryAccess, PageState } from '../kernel/index.ts';
import type { GuestMemory, MmioDevice, ResolverAccess, PageStateId, Vcpu, Vm } from '../kernel/index.ts';
import { DeviceStateError, describeSaved, stateInteger, stateRecord, stateU32 } from './state.ts';

/** Register offsets in the balloon window (docs/balloon.md). */
export const BalloonRegister = {
  /** Pages the host wants in the balloon (read-only). */
  TARGET: 0x00,
  /** Pages in the balloon now, as the device counts them (read-only). */
  ACTUAL: 0x04,
  /** Guest-physical address of a command's array: 4-byte aligned, inside RAM (read/write). */
  PFN_ADDR: 0x08,
  /** Entries in that array, at most BALLOON_MAX_ENTRIES (read/write). */
  PFN_COUNT: 0x0c,
  /** Writing a BalloonCommand carries it out before the store retires (write-only; reads 0). */
  COMMAND: 0x10,
  /** BalloonStatus of the last command (read-only). */
  STATUS: 0x14,
  /** BalloonFeature bits the host offers (read-only; the host may change them while the guest runs). */
  FEATURES: 0x18,
  /** Incremented by the host each time it wants fresh statistics (read-only). */
  STATS_SEQ: 0x1c,
} as const;

/** Values written to COMMAND. */
export const BalloonCommand = {
  /** Each page of the array (guest page numbers) goes into the balloon: its frame is released. */
  INFLATE: 1,
  /** Each page leaves the balloon and reads as zeros on its next touch. */
  DEFLATE: 2,
  /** Free-page reporting: the guest does not use these pages now; their frames are released, the pages stay the guest's (zeros on next touch). */
  REPORT_FREE: 3,
  /** The array holds PFN_COUNT (tag, value) u32 pairs: the guest's memory statistics. */
  STATS: 4,
} as const;

/** Values read from STATUS. */
export const BalloonStatus = {
  /** The last command was carried out (and at reset). */
  OK: 0,
  /** The last command broke a rule: the VM stopped with a guest error, nothing was changed. */
  REFUSED: 1,
  /** The host failed while carrying it out: the VM stopped with a host error. */
  HOST_ERROR: 2,
} as const;

/** FEATURES bits. */
export const BalloonFeature = {
  /** The guest may deflate the balloon before it OOM-kills a process. */
  DEFLATE_ON_OOM: 1 << 0,
  /** REPORT_FREE may be used. */
  FREE_PAGE_REPORTING: 1 << 1,
  /** The host wants statistics (STATS commands when STATS_SEQ changes). */
  STATS: 1 << 2,
} as const;

/** Statistics tags of the STATS command (docs/balloon.md), values in pages unless said otherwise. */
export const BalloonStatTag = {
  /** Pages read back from the guest's swap. */
  SWAP_IN: 0,
  /** Pages written to the guest's swap. */
  SWAP_OUT: 1,
  /** Major faults (a count). */
  MAJOR_FAULTS: 2,
  /** Minor faults (a count). */
  MINOR_FAULTS: 3,
  /** Free pages. */
  FREE: 4,
  /** Total pages. */
  TOTAL: 5,
  /** Available pages: free plus droppable cache. */
  AVAILABLE: 6,
  /** Page-cache pages. */
  CACHES: 7,
  /** OOM kills (a count). */
  OOM_KILLS: 8,
  /** Anonymous (process) pages. */
  ANON: 9,
  /** Kernel pages. */
  KERNEL: 10,
  /** Balloon pages, as the guest counts them. */
  BALLOON: 11,
} as const;

/** The guest's statistics by name (BalloonDevice.lastStats); a tag the guest never sent is absent. */
export interface BalloonGuestStats {
  /** Tag 0: pages read back from the guest's swap. */
  swapIn?: number;
  /** Tag 1: pages written to it. */
  swapOut?: number;
  /** Tag 2: major faults. */
  majorFaults?: number;
  /** Tag 3: minor faults. */
  minorFaults?: number;
  /** Tag 4: free pages. */
  freePages?: number;
  /** Tag 5: total pages. */
  totalPages?: number;
  /** Tag 6: available pages (free + droppable cache). */
  availablePages?: number;
  /** Tag 7: page-cache pages. */
  cachePages?: number;
  /** Tag 8: OOM kills. */
  oomKills?: number;
  /** Tag 9: anonymous (process) pages. */
  anonPages?: number;
  /** Tag 10: kernel pages. */
  kernelPages?: number;
  /** Tag 11: balloon pages as the guest counts them. */
  balloonPages?: number;
}

/** BalloonGuestStats keys by tag. */
const STAT_KEYS: readonly (keyof BalloonGuestStats)[] = [
  'swapIn', 'swapOut', 'majorFaults', 'minorFaults', 'freePages', 'totalPages', 'availablePages', 'cachePages', 'oomKills', 'anonPages', 'kernelPages', 'balloonPages',
];

/** The latest statistics the guest sent (BalloonDevice.lastStats). */
export interface BalloonStatsReport {
  /** Every tag received so far; a STATS command that leaves a tag out keeps its older value (as Firecracker does). */
  values: BalloonGuestStats;
  /** STATS commands received. */
  updates: number;
  /** STATS_SEQ when the last one arrived. */
  seq: number;
  /** Instructions the VM had retired then. */
  atInstruction: number;
  /** performance.now() then. */
  atMs: number;
}

/** Most entries one command's array may hold (pages, or (tag, value) pairs for STATS). */
export const BALLOON_MAX_ENTRIES = 1024;

/** Largest statistics polling interval the device records, in seconds (a day). */
export const BALLOON_MAX_STATS_INTERVAL_S = 86_400;

/** Counters of a balloon device (BalloonDevice.counters). */
export interface BalloonCounters {
  /** Commands written to COMMAND. */
  commands: number;
  /** Pages put into the balloon by INFLATE. */
  inflated: number;
  /** Pages taken out by DEFLATE. */
  deflated: number;
  /** Pages whose frames REPORT_FREE released (pages reported that held no frame are not counted). */
  reportedFree: number;
  /** STATS commands received. */
  statsReceived: number;
  /** (tag, value) pairs with a tag this device does not know (ignored). */
  unknownStatTags: number;
  /** Guest errors: refused commands and accesses to ballooned pages. */
  guestErrors: number;
  /** INFLATEd pages whose frames went to another VM (cooperative reallocation) instead of the OS. */
  donated: number;
  /** DEFLATEd pages that got a frame from another VM at once (cooperative reallocation). */
  received: number;
}

/** How attachBalloon sets the device up (the host's side; all can change later but free-page reporting). */
export interface BalloonOptions {
  /** Initial target in pages (default 0): at most the VM's pages. */
  targetPages?: number;
  /** FEATURES.DEFLATE_ON_OOM (default false). */
  deflateOnOom?: boolean;
  /** FEATURES.FREE_PAGE_REPORTING (default false; fixed for the device's life). */
  freePageReporting?: boolean;
  /**
   * The host's statistics polling interval in seconds (default 0 = off). The device only records
   * it (checkpoints and forks carry it) and sets FEATURES.STATS while it is not 0; the host
   * calls requestStats() every interval.
   */
  statsPollingIntervalS?: number;
}

/** What the 'balloon' state component saves. */
export interface BalloonState {
  /** TARGET. */
  targetPages: number;
  /** FEATURES.DEFLATE_ON_OOM. */
  deflateOnOom: boolean;
  /** FEATURES.FREE_PAGE_REPORTING. */
  freePageReporting: boolean;
  /** The host's polling interval (0 = off). */
  statsPollingIntervalS: number;
  /** STATS_SEQ. */
  statsSeq: number;
  /** The guest-writable registers and STATUS. */
  registers: {
    /** PFN_ADDR. */
    pfnAddr: number;
    /** PFN_COUNT. */
    pfnCount: number;
    /** STATUS (a BalloonStatus value). */
    status: number;
  };
  /** The ballooned pages as ranges: first page, page count, first page, page count…, ascending and disjoint. */
  pages: number[];
}

const COMMAND_NAMES: Readonly<Record<number, string>> = { 1: 'INFLATE', 2: 'DEFLATE', 3: 'REPORT_FREE', 4: 'STATS' };
const ACCESS_WORDS: Readonly<Record<number, string>> = { [MemoryAccess.READ]: 'read', [MemoryAccess.WRITE]: 'write', [MemoryAccess.EXEC]: 'instruction fetch' };

/** A balloon request the host got wrong: a target beyond the VM's RAM, a bad polling interval. */
export class BalloonError extends BvError {
  constructor(message: string) {
    super('BV_BALLOON', message);
  }
}

/** A command the guest got wrong: the VM stops with a guest error carrying the message. */
class Refusal extends Error {}

const hex = (value: number): string => `0x${value.toString(16)}`;
/** `guest page 18 (guest-physical 0x12000)`. */
const pageName = (gpn: number): string => `guest page ${gpn} (guest-physical ${hex(gpn * PAGE_SIZE)})`;

/**
 * The balloon device model (attachBalloon creates and attaches it). The host side is setTarget,
 * setDeflateOnOom, setStatsPollingInterval and requestStats; the guest's side is the registers.
 */
export class BalloonDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachBalloon). */
  base = 0;
  /** Counters since attach (a restored or forked device starts at zero). */
  readonly counters: BalloonCounters = { commands: 0, inflated: 0, deflated: 0, reportedFree: 0, statsReceived: 0, unknownStatTags: 0, guestErrors: 0, donated: 0, received: 0 };
  /** The last guest error's message (a refused command or a touch of a ballooned page), or null. */
  lastError: string | null = null;
  /** The latest statistics the guest sent, or null before any. */
  lastStats: BalloonStatsReport | null = null;
  /**
   * Cooperative reallocation (T-5): takes the frames of pages the guest INFLATEs instead of
   * releasing them to the OS. Called with the command's pages (checked, brought in); it moves
   * the frames it wants elsewhere with GuestMemory.moveFrame(…, AbsentState.BALLOONED) and
   * returns how many it took; the device releases the rest as usual.
   */
  donor: ((memory: GuestMemory, gpns: Uint32Array) => number) | null = null;
  /**
   * The other side: gives frames to pages the guest DEFLATEs (GuestMemory.moveFrame into them,
   * zero-filled) instead of leaving them to be allocated on their next touch; returns how many
   * it filled. Pages it leaves in the balloon are made untouched as usual.
   */
  receiver: ((memory: GuestMemory, gpns: Uint32Array) => number) | null = null;
  private targetPages: number;
  private actualPages = 0;
  private deflateOnOomFlag: boolean;
  private freePageReportingFlag: boolean;
  private statsIntervalS: number;
  private statsSeq = 0;
  private pfnAddr = 0;
  private pfnCount = 0;
  private status: number = BalloonStatus.OK;
  /** checkPages' duplicate marks (allocated at the first command that needs them). */
  private seen: Uint16Array | null = null;
  private seenMark = 0;

  constructor(
    private readonly vm: Vm,
    options: BalloonOptions = {},
  ) {
    this.targetPages = this.checkTarget(options.targetPages ?? 0);
    this.deflateOnOomFlag = options.deflateOnOom ?? false;
    this.freePageReportingFlag = options.freePageReporting ?? false;
    this.statsIntervalS = checkInterval(options.statsPollingIntervalS ?? 0);
  }

  // ----------------------------------------------------------------------------- host side

  /** Pages the host wants in the balloon (TARGET). */
  get target(): number {
    return this.targetPages;
  }

  /** Pages in the balloon now (ACTUAL): INFLATEd and not DEFLATEd. */
  get actual(): number {
    return this.actualPages;
  }

  /** FEATURES as the guest reads it (BalloonFeature bits). */
  get features(): number {
    return (this.deflateOnOomFlag ? BalloonFeature.DEFLATE_ON_OOM : 0) |
      (this.freePageReportingFlag ? BalloonFeature.FREE_PAGE_REPORTING : 0) |
      (this.statsIntervalS > 0 ? BalloonFeature.STATS : 0);
  }

  /** FEATURES.DEFLATE_ON_OOM. */
  get deflateOnOom(): boolean {
    return this.deflateOnOomFlag;
  }

  /** FEATURES.FREE_PAGE_REPORTING (fixed at attach). */
  get freePageReporting(): boolean {
    return this.freePageReportingFlag;
  }

  /** The host's statistics polling interval in seconds (0 = off; FEATURES.STATS while not 0). */
  get statsPollingIntervalS(): number {
    return this.statsIntervalS;
  }

  /** STATS_SEQ. */
  get statsSequence(): number {
    return this.statsSeq;
  }

  /** Sets TARGET (0 … the VM's pages); the driver sees it at its next read. */
  setTarget(pages: number): void {
    this.targetPages = this.checkTarget(pages);
  }

  /** Sets FEATURES.DEFLATE_ON_OOM. */
  setDeflateOnOom(on: boolean): void {
    this.deflateOnOomFlag = on;
  }

  /** Records the host's polling interval (0 … BALLOON_MAX_STATS_INTERVAL_S seconds; 0 clears FEATURES.STATS). */
  setStatsPollingInterval(seconds: number): void {
    this.statsIntervalS = checkInterval(seconds);
  }

  /** Asks the guest for fresh statistics: STATS_SEQ goes up by one (wrapping at 2^32). Returns it. */
  requestStats(): number {
    this.statsSeq = (this.statsSeq + 1) >>> 0;
    return this.statsSeq;
  }

  // ---------------------------------------------------------------------------- guest side

  read(_vcpu: Vcpu, offset: number): number {
    switch (offset) {
      case BalloonRegister.TARGET: return this.targetPages | 0;
      case BalloonRegister.ACTUAL: return this.actualPages | 0;
      case BalloonRegister.PFN_ADDR: return this.pfnAddr | 0;
      case BalloonRegister.PFN_COUNT: return this.pfnCount | 0;
      case BalloonRegister.STATUS: return this.status;
      case BalloonRegister.FEATURES: return this.features;
      case BalloonRegister.STATS_SEQ: return this.statsSeq | 0;
      default: return 0; // COMMAND is write-only; other offsets are empty
    }
  }

  write(vcpu: Vcpu, offset: number, value: number): boolean {
    switch (offset) {
      case BalloonRegister.PFN_ADDR:
        this.pfnAddr = value >>> 0;
        break;
      case BalloonRegister.PFN_COUNT:
        this.pfnCount = value >>> 0;
        break;
      case BalloonRegister.COMMAND:
        this.execute(vcpu, value >>> 0);
        break;
    }
    // Read-only registers and empty offsets ignore writes (SPEC §13.2).
    return true;
  }

  /** Carries out one command; a refusal stops the VM with a guest error, a host failure with a host error. */
  private execute(vcpu: Vcpu, command: number): void {
    this.counters.commands++;
    try {
      this.carryOut(command);
      this.status = BalloonStatus.OK;
    } catch (error) {
      if (error instanceof Refusal || error instanceof GuestAccessError) {
        this.status = BalloonStatus.REFUSED;
        this.refuse(vcpu, error.message);
        return;
      }
      if (!(error instanceof BvError)) throw error; // a bug: the run loop stops the VM with it
      this.status = BalloonStatus.HOST_ERROR;
      this.vm.hostError(`balloon: ${COMMAND_NAMES[command] ?? command} failed: ${error.message}`, error);
    }
  }

  private refuse(vcpu: Vcpu, message: string): void {
    this.counters.guestErrors++;
    this.lastError = message;
    this.vm.guestError(vcpu, message);
  }

  private carryOut(command: number): void {
    const name = COMMAND_NAMES[command];
    if (name === undefined) throw new Refusal(`balloon: unknown command ${command} (1 INFLATE, 2 DEFLATE, 3 REPORT_FREE, 4 STATS)`);
    if (command === BalloonCommand.REPORT_FREE && !this.freePageReportingFlag) {
      throw new Refusal('balloon: REPORT_FREE without free-page reporting (FEATURES bit 1 is clear)');
    }
    const count = this.pfnCount;
    if (count > BALLOON_MAX_ENTRIES) throw new Refusal(`balloon: ${name} with PFN_COUNT ${count}: at most ${BALLOON_MAX_ENTRIES} entries`);
    if (count === 0) return;
    const words = this.readArray(name, command === BalloonCommand.STATS ? count * 2 : count);
    switch (command) {
      case BalloonCommand.INFLATE: return this.inflate(words);
      case BalloonCommand.DEFLATE: return this.deflate(words);
      case BalloonCommand.REPORT_FREE: return this.reportFree(words);
      default: return this.receiveStats(words);
    }
  }

  /** The command's array as u32 words, after checking where it is. */
  private readArray(name: string, wordCount: number): Uint32Array {
    const address = this.pfnAddr;
    const bytes = wordCount * 4;
    if (address % 4 !== 0) throw new Refusal(`balloon: ${name}: PFN_ADDR ${hex(address)} is not 4-byte aligned`);
    if (address + bytes > this.vm.memoryBytes) {
      throw new Refusal(`balloon: ${name}: the array at guest-physical ${hex(address)}+${bytes} is not inside RAM (${hex(this.vm.memoryBytes)} bytes)`);
    }
    const memory = this.vm.memory;
    for (let gpn = Math.floor(address / PAGE_SIZE); gpn * PAGE_SIZE < address + bytes; gpn++) {
      if (memory.stateOf(gpn) === PageState.BALLOONED) throw new Refusal(`balloon: ${name}: the array at guest-physical ${hex(address)}+${bytes} lies in ${pageName(gpn)}, which is in the balloon`);
    }
    let raw: Uint8Array;
    try {
      raw = memory.readPhysical(address, bytes);
    } catch (error) {
      if (error instanceof GuestAccessError) throw new Refusal(`balloon: ${name}: the array at guest-physical ${hex(address)} lies in a page the guest may not touch: ${error.message}`);
      if (error instanceof KernelError && error.code === 'BV_BAD_GPA') throw new Refusal(`balloon: ${name}: the array at guest-physical ${hex(address)}+${bytes} cannot be read: ${error.message}`);
      throw error;
    }
    // readPhysical returns a fresh copy: on a little-endian host its bytes are the u32 words.
    if (LITTLE_ENDIAN_HOST) return new Uint32Array(raw.buffer, raw.byteOffset, wordCount);
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const words = new Uint32Array(wordCount);
    for (let i = 0; i < wordCount; i++) words[i] = view.getUint32(i * 4, true);
    return words;
  }

  /**
   * Checks that each entry is a page of RAM, named once; `problem` returns what is wrong with a
   * page in RAM, or null. Returns whether some page is held without a frame by another owner
   * (neither present nor untouched: swapped, lazily restored…).
   */
  private checkPages(name: string, gpns: Uint32Array, allowRepeats: boolean, problem: (state: PageStateId) => string | null): boolean {
    const memory = this.vm.memory;
    const pageCount = memory.pageCount;
    const seen = allowRepeats ? null : this.seenPages(pageCount);
    const mark = allowRepeats ? 0 : this.nextSeenMark();
    let elsewhere = false;
    for (let i = 0; i < gpns.length; i++) {
      const gpn = gpns[i]!;
      if (gpn >= pageCount) throw new Refusal(`balloon: ${name}: entry ${i} is ${pageName(gpn)}, beyond RAM (${pageCount} pages)`);
      if (seen !== null) {
        if (seen[gpn] === mark) throw new Refusal(`balloon: ${name}: entries ${gpns.indexOf(gpn)} and ${i} both name ${pageName(gpn)}`);
        seen[gpn] = mark;
      }
      const state = memory.stateOf(gpn);
      const wrong = problem(state);
      if (wrong !== null) throw new Refusal(`balloon: ${name}: entry ${i}: ${pageName(gpn)} ${wrong}`);
      if (state !== PageState.PRESENT && state !== PageState.UNTOUCHED) elsewhere = true;
    }
    return elsewhere;
  }

  /** The command's duplicate check: page → the mark of the last command that named it (no allocation per command). */
  private seenPages(pageCount: number): Uint16Array {
    if (this.seen === null || this.seen.length !== pageCount) {
      this.seen = new Uint16Array(pageCount);
      this.seenMark = 0;
    }
    return this.seen;
  }

  private nextSeenMark(): number {
    this.seenMark = (this.seenMark + 1) & 0xffff;
    if (this.seenMark === 0) {
      this.seen!.fill(0); // wrapped: marks of old commands must not look like this one's
      this.seenMark = 1;
    }
    return this.seenMark;
  }

  private inflate(gpns: Uint32Array): void {
    const elsewhere = this.checkPages('INFLATE', gpns, false, inflateProblem);
    const memory = this.vm.memory;
    // A page another owner holds without a frame (swapped, lazily restored) is brought in first,
    // so that owner lets go of it (a swap slot is freed). All of them before any release: a host
    // failure here changes no page's state.
    if (elsewhere) for (let i = 0; i < gpns.length; i++) bringIn(memory, gpns[i]!);
    let release = gpns;
    if (this.donor !== null) {
      this.counters.donated += this.donor(memory, gpns);
      // The donor left the pages it took ballooned (their frames went elsewhere): release the rest.
      release = gpns.filter((gpn) => memory.stateOf(gpn) !== PageState.BALLOONED);
    }
    memory.releasePages(release, AbsentState.BALLOONED); // one shootdown, one madvise per contiguous range
    this.actualPages += gpns.length;
    this.counters.inflated += gpns.length;
  }

  private deflate(gpns: Uint32Array): void {
    this.checkPages('DEFLATE', gpns, false, deflateProblem);
    const memory = this.vm.memory;
    let release = gpns;
    if (this.receiver !== null) {
      this.counters.received += this.receiver(memory, gpns);
      release = gpns.filter((gpn) => memory.stateOf(gpn) === PageState.BALLOONED); // the pages it did not fill
    }
    memory.releasePages(release, AbsentState.UNTOUCHED);
    this.actualPages -= gpns.length;
    this.counters.deflated += gpns.length;
  }

  private reportFree(gpns: Uint32Array): void {
    this.checkPages('REPORT_FREE', gpns, true, reportFreeProblem);
    const memory = this.vm.memory;
    // Only frames are released: a page without one (untouched, swapped…) has nothing to give back.
    const present = [...new Set(gpns)].filter((gpn) => memory.stateOf(gpn) === PageState.PRESENT);
    memory.releasePages(present, AbsentState.UNTOUCHED);
    this.counters.reportedFree += present.length;
  }

  private receiveStats(words: Uint32Array): void {
    const values: BalloonGuestStats = { ...this.lastStats?.values };
    for (let i = 0; i < words.length; i += 2) {
      const key = STAT_KEYS[words[i]!];
      if (key === undefined) this.counters.unknownStatTags++;
      else values[key] = words[i + 1]!;
    }
    this.counters.statsReceived++;
    this.lastStats = { values, updates: (this.lastStats?.updates ?? 0) + 1, seq: this.statsSeq, atInstruction: this.vm.instructionsRetired, atMs: performance.now() };
  }

  /** The BALLOONED resolver: a touch of a page in the balloon is the guest's error, naming the page. */
  resolveBallooned(gpn: number, access: ResolverAccess): never {
    const message = `balloon: ${ACCESS_WORDS[access] ?? 'access'} of ${pageName(gpn)}, which is in the balloon (inflated by the driver and not deflated)`;
    this.counters.guestErrors++;
    this.lastError = message;
    throw new GuestAccessError(message);
  }

  // ------------------------------------------------------------------------- saved state

  /** The target, settings, registers and ballooned pages (as ranges). */
  saveState(): BalloonState {
    const memory = this.vm.memory;
    const pages: number[] = [];
    if (memory.countInState(AbsentState.BALLOONED) > 0) {
      memory.forEachPage(PageState.BALLOONED, (gpn) => {
        const last = pages.length - 2;
        if (last >= 0 && pages[last]! + pages[last + 1]! === gpn) pages[last + 1]!++;
        else pages.push(gpn, 1);
      });
    }
    return {
      targetPages: this.targetPages,
      deflateOnOom: this.deflateOnOomFlag,
      freePageReporting: this.freePageReportingFlag,
      statsPollingIntervalS: this.statsIntervalS,
      statsSeq: this.statsSeq,
      registers: { pfnAddr: this.pfnAddr, pfnCount: this.pfnCount, status: this.status },
      pages,
    };
  }

  /** Checks a saved state against this VM (DeviceStateError naming the field); changes nothing. */
  checkState(state: unknown): BalloonState {
    const record = stateRecord(state, 'balloon');
    const pageCount = this.vm.memory.pageCount;
    const flag = (key: 'deflateOnOom' | 'freePageReporting'): boolean => {
      if (typeof record[key] !== 'boolean') throw new DeviceStateError('balloon', key, `is not true or false (got ${describeSaved(record[key])})`);
      return record[key];
    };
    const registers = stateRecord(record['registers'], 'balloon', 'registers');
    const status = stateU32(registers['status'], 'balloon', 'registers.status');
    if (!(Object.values(BalloonStatus) as number[]).includes(status)) throw new DeviceStateError('balloon', 'registers.status', `is not a STATUS value (got ${status})`);
    const pages = record['pages'];
    if (!Array.isArray(pages) || pages.length % 2 !== 0) throw new DeviceStateError('balloon', 'pages', `is not a list of (first page, page count) pairs (got ${describeSaved(pages)})`);
    let next = 0;
    for (let i = 0; i < pages.length; i += 2) {
      const first = stateInteger(pages[i], 'balloon', `pages[${i}]`, next, pageCount - 1);
      stateInteger(pages[i + 1], 'balloon', `pages[${i + 1}]`, 1, pageCount - first);
      next = first + (pages[i + 1] as number);
    }
    return {
      targetPages: stateInteger(record['targetPages'], 'balloon', 'targetPages', 0, pageCount),
      deflateOnOom: flag('deflateOnOom'),
      freePageReporting: flag('freePageReporting'),
      statsPollingIntervalS: stateInteger(record['statsPollingIntervalS'], 'balloon', 'statsPollingIntervalS', 0, BALLOON_MAX_STATS_INTERVAL_S),
      statsSeq: stateU32(record['statsSeq'], 'balloon', 'statsSeq'),
      registers: { pfnAddr: stateU32(registers['pfnAddr'], 'balloon', 'registers.pfnAddr'), pfnCount: stateU32(registers['pfnCount'], 'balloon', 'registers.pfnCount'), status },
      pages: pages as number[],
    };
  }

  /**
   * Restores the settings and registers and makes exactly the saved pages ballooned: pages a
   * fork inherited as ballooned stay as they are, others are released into the balloon, and a
   * ballooned page the state does not list becomes untouched.
   */
  restoreState(state: unknown): void {
    const saved = this.checkState(state);
    const memory = this.vm.memory;
    let total = 0;
    for (let i = 0; i < saved.pages.length; i += 2) {
      for (let gpn = saved.pages[i]!; gpn < saved.pages[i]! + saved.pages[i + 1]!; gpn++) {
        const pageState = memory.stateOf(gpn);
        if (pageState === PageState.BALLOONED) continue;
        bringIn(memory, gpn);
        memory.releasePage(gpn, AbsentState.BALLOONED);
      }
      total += saved.pages[i + 1]!;
    }
    if (memory.countInState(AbsentState.BALLOONED) !== total) {
      const listed = new Set<number>();
      for (let i = 0; i < saved.pages.length; i += 2) for (let n = 0; n < saved.pages[i + 1]!; n++) listed.add(saved.pages[i]! + n);
      memory.forEachPage(PageState.BALLOONED, (gpn) => {
        if (!listed.has(gpn)) memory.releasePage(gpn, AbsentState.UNTOUCHED);
      });
    }
    this.targetPages = saved.targetPages;
    this.deflateOnOomFlag = saved.deflateOnOom;
    this.freePageReportingFlag = saved.freePageReporting;
    this.statsIntervalS = saved.statsPollingIntervalS;
    this.statsSeq = saved.statsSeq;
    this.pfnAddr = saved.registers.pfnAddr;
    this.pfnCount = saved.registers.pfnCount;
    this.status = saved.registers.status;
    this.actualPages = total;
  }

  /** VM reset: RAM is untouched again, so the balloon is empty; the target and settings stay (the host's). */
  reset(): void {
    this.pfnAddr = 0;
    this.pfnCount = 0;
    this.status = BalloonStatus.OK;
    this.actualPages = 0;
  }

  private checkTarget(pages: number): number {
    const pageCount = this.vm.memory.pageCount;
    if (!Number.isInteger(pages) || pages < 0 || pages > pageCount) {
      throw new BalloonError(`${this.vm.name}: a balloon target is 0 to ${pageCount} pages (the VM's RAM), got ${pages}`);
    }
    return pages;
  }
}

/** What is wrong with a page of RAM in a command's array, by its state (checkPages), or null. */
const inflateProblem = (state: PageStateId): string | null => (state === PageState.BALLOONED ? 'is already in the balloon' : null);
const deflateProblem = (state: PageStateId): string | null => (state === PageState.BALLOONED ? null : 'is not in the balloon');
const reportFreeProblem = (state: PageStateId): string | null => (state === PageState.BALLOONED ? 'is in the balloon; only the guest\'s own pages can be reported free' : null);

/** Whether this host stores a u32 with its low byte first (the guest's order). */
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Brings a page that another owner holds without a frame (swapped, lazily restored) in, as a read
 * would, so that owner lets go of it before the page changes state (a swap slot is freed).
 */
function bringIn(memory: GuestMemory, gpn: number): void {
  const state = memory.stateOf(gpn);
  if (state !== PageState.PRESENT && state !== PageState.UNTOUCHED) memory.pageBytes(gpn);
}

function checkInterval(seconds: number): number {
  if (!Number.isInteger(seconds) || seconds < 0 || seconds > BALLOON_MAX_STATS_INTERVAL_S) {
    throw new BalloonError(`a statistics polling interval is 0 to ${BALLOON_MAX_STATS_INTERVAL_S} whole seconds, got ${seconds}`);
  }
  return seconds;
}

/**
 * Attaches the balloon (one per VM: its state is 'balloon'; info = BALLOON_MAX_ENTRIES) and
 * registers the BALLOONED resolver, so a guest touch of a ballooned page is a guest error.
 * Attach it after the block device (docs/balloon.md: the device order is guest ABI).
 */
export function attachBalloon(vm: Vm, options: BalloonOptions = {}): BalloonDevice {
  const device = new BalloonDevice(vm, options); // checks the options before anything is attached
  vm.registerState('balloon', {
    version: 1,
    save: () => device.saveState(),
    check: (state) => void device.checkState(state),
    restore: (state) => device.restoreState(state),
  });
  device.base = vm.attachDevice({ type: DeviceType.BALLOON, name: 'balloon', info: BALLOON_MAX_ENTRIES }, device);
  vm.memory.onAbsent(AbsentState.BALLOONED, (_memory, gpn, _state, _payload, access) => device.resolveBallooned(gpn, access));
  vm.onReset(() => device.reset());
  return device;
}
