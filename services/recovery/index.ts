/**
 * MemoryErrorService (T-17, issue 12 part A): injects uncorrected memory errors into the real host
 * bytes behind one VM's guest pages and recovers them, or lets the guest take a machine check.
 *
 * The model (docs/memory-errors.md): an injection corrupts a window of 1 … 64 bits of the frame
 * behind a present page (GuestMemory.corruptPage) and poisons the page at once
 * (GuestMemory.poisonPage: the page is absent in the POISONED state, its translations gone on
 * every vCPU, its frame retired), so no guest instruction can read the bad bytes. The report
 * then comes either
 * - 'now' (a patrol scrub found it): recovery runs at once, between runs; or
 * - 'on-access' (consumption): recovery runs when the guest next touches the page, in the
 *   POISONED resolver this service registers, before the access completes.
 * Recovery tries the RecoveryMethods in order; the first that returns the page's 4096 good bytes
 * wins and the page is installed on a new frame. When none can, the page stays poisoned and the
 * guest's access to it takes a machine check (cause 18), every time it touches it.
 */
import { AbsentState, HOST_READ, MAX_WINDOW_BITS, MemoryErrorInputError, PAGE_BITS, PageState, Ptbr, Pte, PTE_PPN_SHIFT, checkErrorWindow, checkPattern } from './deps.ts';
import type { CorruptionPattern, GuestMemory, Vm } from './deps.ts';
import type { ErrorReport, RecoveryMethod } from './types.ts';

export type { CleanCopySink, CleanSource, ErrorReport, RecoveryMethod } from './types.ts';
export { applyMemoryErrorRequest, memoryErrorReports } from './requests.ts';
export type { CampaignInfo, MemoryErrorReportList, MemoryErrorRequest, MemoryErrorResponse } from './requests.ts';

/** When an injected error is reported: at once (patrol scrub) or at the guest's next access (consumption). */
export type ReportTiming = 'now' | 'on-access';
/** Where a report stands: recovered, delivered as a machine check, or not decided yet. */
export type ErrorOutcome = `recovered-by-${string}` | 'machine-check' | 'pending' | 'unrecovered';

/** One injection (MemoryErrorService.inject). Exactly one of gpa and gva. */
export interface InjectRequest {
  /** Guest-physical address inside RAM; the window starts at its bit unless windowBitOffset says otherwise. */
  gpa?: number;
  /** Guest-virtual address, translated with vCPU `vcpu`'s page tables (read only: no A bits set). */
  gva?: number;
  /** The vCPU whose address space a gva is in (default 0). */
  vcpu?: number;
  /** 1 … 64. */
  windowBits: number;
  /** First bit of the window in the page (default: the address's byte × 8, moved back to fit the page). */
  windowBitOffset?: number;
  /** Default 'flip'. */
  pattern?: CorruptionPattern;
  /** Default 'on-access'. */
  report?: ReportTiming;
}

/** One logged report. */
export interface MemoryErrorLogEntry {
  /** Report number (1, 2, …). */
  id: number;
  /** Wall-clock time of the injection (ISO 8601). */
  time: string;
  /** The VM's name. */
  vm: string;
  /** The reported address: the window's first byte. */
  gpa: number;
  /** Its guest page. */
  gpn: number;
  /** First bit of the window in the page. */
  windowBitOffset: number;
  /** Bits in the window. */
  windowBits: number;
  /** How the bits were changed. */
  pattern: CorruptionPattern;
  /** When it was reported. */
  report: ReportTiming;
  /** Bits that really changed in host memory. */
  bitsChanged: number;
  /**
   * 'pending' (on-access, not touched yet), 'unrecovered' (no method could rebuild it; the guest
   * takes a machine check when it touches the page), 'recovered-by-<method>', or 'machine-check'
   * (delivered to the guest).
   */
  outcome: ErrorOutcome;
  /** Wall-clock time the outcome was decided, when it was. */
  decidedAt?: string;
}

/** Counters of one VM's memory errors. */
export interface MemoryErrorStats {
  /** Errors injected and reported (now or at access). */
  injected: number;
  /** Reports handled (recovery attempted). */
  reported: number;
  /** Pages recovered, by method name. */
  recovered: Record<string, number>;
  /** Machine checks delivered to the guest (one per refused access). */
  machineChecks: number;
  /** Frames this VM's errors retired (never handed out again). */
  framesRetired: number;
  /** Poisoned pages waiting for the guest's access (on-access reports, and unrecovered pages). */
  poisonedPages: number;
  /** Host frames retired in the whole pool (all VMs). */
  poolFramesRetired: number;
}

/** Random injections for soak tests (MemoryErrorService.startCampaign). */
export interface CampaignOptions {
  /** Injections per million guest instructions (checked between runs). */
  rate: number;
  /** Seed of the campaign's own generator (default 1): the same seed picks the same pages and windows. */
  seed?: number;
  /** Window sizes to pick from (default [1, 8, 16, 64]). */
  windowBits?: readonly number[];
  /** Default 'flip'. */
  pattern?: CorruptionPattern;
  /** Default: half 'now', half 'on-access'. */
  report?: ReportTiming;
  /** Stop after this many injections (default: no limit). */
  count?: number;
}

/** Options of a MemoryErrorService. */
export interface MemoryErrorServiceOptions {
  /** Recovery methods, tried in order (part B's clean-copy, parity, hash). */
  methods?: readonly RecoveryMethod[];
  /** Log entries kept (oldest dropped first; default 1000). */
  logLimit?: number;
  /** Clock for log times (default Date.now). */
  now?: () => number;
}

/** Thrown for a request that cannot be injected (code BV_MEMERR_*). */
export class MemoryErrorServiceError extends Error {
  /** @param code BV_MEMERR_BAD_ADDRESS, _NOT_MAPPED, _NOT_PRESENT, _BAD_WINDOW or _BAD_REQUEST. */
  constructor(
    /** BV_MEMERR_BAD_ADDRESS, _NOT_MAPPED, _NOT_PRESENT, _BAD_WINDOW or _BAD_REQUEST. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'MemoryErrorServiceError';
  }
}

/** How often (guest instructions) a campaign looks whether injections are due. */
const CAMPAIGN_TICK = 10_000;

/** A small deterministic generator (mulberry32): numbers in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Memory errors of one VM: injection, reports, recovery by the methods given, machine checks,
 * a log and counters. Registers the VM's POISONED resolver (GuestMemory.onAbsent).
 */
export class MemoryErrorService {
  /** The VM whose errors this service injects and recovers. */
  readonly vm: Vm;
  private readonly methods: RecoveryMethod[];
  private readonly logLimit: number;
  private readonly now: () => number;
  private readonly entries: MemoryErrorLogEntry[] = [];
  /** The open report per poisoned page. */
  private readonly open = new Map<number, { entry: MemoryErrorLogEntry; report: ErrorReport; tried: boolean }>();
  private nextId = 1;
  private readonly counts = { injected: 0, reported: 0, machineChecks: 0, framesRetired: 0 };
  private readonly recovered: Record<string, number> = {};
  private campaign: { options: CampaignOptions; random: () => number; done: number; lastInstructions: number; credit: number } | null = null;
  private removeTicker: (() => void) | null = null;

  /** Registers the VM's POISONED resolver. */
  constructor(vm: Vm, options: MemoryErrorServiceOptions = {}) {
    this.vm = vm;
    this.methods = [...(options.methods ?? [])];
    this.logLimit = options.logLimit ?? 1000;
    this.now = options.now ?? Date.now;
    vm.memory.onAbsent(AbsentState.POISONED, (memory, gpn, _state, _payload, access) => this.resolve(memory, gpn, access === HOST_READ));
  }

  /** Adds a recovery method after the others. */
  addMethod(method: RecoveryMethod): void {
    this.methods.push(method);
  }

  /** The recovery methods' names, in order. */
  get methodNames(): string[] {
    return this.methods.map((method) => method.name);
  }

  /**
   * Corrupts the window behind an address and reports it (see the module comment). Between runs
   * (or from an exit handler). Returns the log entry (its outcome already decided for 'now').
   */
  inject(request: InjectRequest): MemoryErrorLogEntry {
    const memory = this.vm.memory;
    const windowBits = request.windowBits;
    if (!Number.isInteger(windowBits) || windowBits < 1 || windowBits > MAX_WINDOW_BITS) throw new MemoryErrorServiceError('BV_MEMERR_BAD_WINDOW', `window_bits must be 1 … ${MAX_WINDOW_BITS}, got ${Number.isNaN(windowBits) ? 'none' : String(windowBits)}`);
    const pattern = request.pattern ?? 'flip';
    const report = request.report ?? 'on-access';
    if (report !== 'now' && report !== 'on-access') throw new MemoryErrorServiceError('BV_MEMERR_BAD_REQUEST', `report must be now or on-access, got ${String(report)}`);
    const gpa = this.addressOf(request);
    const gpn = Math.floor(gpa / 4096);
    const windowBitOffset = request.windowBitOffset ?? Math.min((gpa % 4096) * 8, PAGE_BITS - windowBits);
    try {
      checkErrorWindow(windowBitOffset, windowBits);
      checkPattern(pattern);
    } catch (error) {
      if (error instanceof MemoryErrorInputError) throw new MemoryErrorServiceError('BV_MEMERR_BAD_REQUEST', error.message);
      throw error;
    }
    const state = memory.stateOf(gpn);
    if (state !== PageState.PRESENT) {
      throw new MemoryErrorServiceError('BV_MEMERR_NOT_PRESENT', `${this.vm.name}: guest-physical 0x${gpa.toString(16)} (page ${gpn}) is ${memory.describe(gpn)}; errors are injected into pages with a host frame`);
    }
    let bitsChanged: number;
    try {
      bitsChanged = memory.corruptPage(gpn, windowBitOffset, windowBits, pattern, this.campaign?.random);
    } catch (error) {
      if (error instanceof MemoryErrorInputError) throw new MemoryErrorServiceError('BV_MEMERR_BAD_REQUEST', error.message);
      throw error;
    }
    memory.poisonPage(gpn);
    this.counts.injected++;
    this.counts.framesRetired++;
    const entry: MemoryErrorLogEntry = {
      id: this.nextId++, time: new Date(this.now()).toISOString(), vm: this.vm.name, gpa: gpn * 4096 + (windowBitOffset >>> 3), gpn,
      windowBitOffset, windowBits, pattern, report, bitsChanged, outcome: 'pending',
    };
    this.entries.push(entry);
    if (this.entries.length > this.logLimit) this.entries.splice(0, this.entries.length - this.logLimit);
    const errorReport: ErrorReport = { gpa: entry.gpa, gpn, windowBitOffset, windowBits };
    this.open.set(gpn, { entry, report: errorReport, tried: false });
    if (report === 'now') this.tryRecover(memory, gpn);
    return { ...entry };
  }

  /** The log, oldest first (copies). */
  log(): MemoryErrorLogEntry[] {
    return this.entries.map((entry) => ({ ...entry }));
  }

  /** The counters. */
  stats(): MemoryErrorStats {
    return {
      ...this.counts, recovered: { ...this.recovered }, poisonedPages: this.vm.memory.countInState(AbsentState.POISONED),
      poolFramesRetired: this.vm.memory.pool.retiredFrames,
    };
  }

  /**
   * Starts a random campaign: between runs, `rate` injections per million guest instructions into
   * present pages picked by the seeded generator (a ticker on the VM). Replaces a running one.
   */
  startCampaign(options: CampaignOptions): void {
    if (!(options.rate > 0) || !Number.isFinite(options.rate)) throw new MemoryErrorServiceError('BV_MEMERR_BAD_REQUEST', `rate must be a positive number of injections per million instructions, got ${String(options.rate)}`);
    for (const bits of options.windowBits ?? []) {
      if (!Number.isInteger(bits) || bits < 1 || bits > MAX_WINDOW_BITS) throw new MemoryErrorServiceError('BV_MEMERR_BAD_WINDOW', `window_bits must be 1 … ${MAX_WINDOW_BITS}, got ${String(bits)}`);
    }
    this.campaign = { options, random: seededRandom(options.seed ?? 1), done: 0, lastInstructions: this.instructions(), credit: 0 };
    this.removeTicker ??= this.vm.addTicker(CAMPAIGN_TICK, () => this.campaignTick());
  }

  /** Stops the campaign; returns how many injections it made. */
  stopCampaign(): number {
    const done = this.campaign?.done ?? 0;
    this.campaign = null;
    this.removeTicker?.();
    this.removeTicker = null;
    return done;
  }

  /** Injects `count` random errors now (the campaign's picks, without waiting for instructions); returns their entries. */
  injectRandom(count: number, options: Omit<CampaignOptions, 'rate' | 'count'> = {}): MemoryErrorLogEntry[] {
    const random = this.campaign?.random ?? seededRandom(options.seed ?? 1);
    const out: MemoryErrorLogEntry[] = [];
    for (let i = 0; i < count; i++) {
      const entry = this.injectOne(random, options);
      if (entry === null) break;
      out.push(entry);
    }
    return out;
  }

  private campaignTick(): void {
    const campaign = this.campaign;
    if (campaign === null) return;
    const instructions = this.instructions();
    campaign.credit += ((instructions - campaign.lastInstructions) * campaign.options.rate) / 1e6;
    campaign.lastInstructions = instructions;
    while (campaign.credit >= 1) {
      if (campaign.options.count !== undefined && campaign.done >= campaign.options.count) {
        this.stopCampaign();
        return;
      }
      campaign.credit--;
      if (this.injectOne(campaign.random, campaign.options) === null) break;
      campaign.done++;
    }
  }

  /** One random injection into a present page (null when the VM has none). */
  private injectOne(random: () => number, options: Omit<CampaignOptions, 'rate' | 'count'>): MemoryErrorLogEntry | null {
    const memory = this.vm.memory;
    const present: number[] = [];
    memory.forEachPage(PageState.PRESENT, (gpn) => void present.push(gpn));
    if (present.length === 0) return null;
    const gpn = present[Math.floor(random() * present.length)]!;
    const sizes = options.windowBits ?? [1, 8, 16, 64];
    const windowBits = sizes[Math.floor(random() * sizes.length)]!;
    const windowBitOffset = Math.floor(random() * (PAGE_BITS - windowBits + 1));
    const report = options.report ?? (random() < 0.5 ? 'now' : 'on-access');
    return this.inject({ gpa: gpn * 4096 + (windowBitOffset >>> 3), windowBits, windowBitOffset, pattern: options.pattern ?? 'flip', report });
  }

  private instructions(): number {
    return this.vm.instructionsRetired;
  }

  /** The POISONED resolver: recover at consumption, or refuse (the guest takes a machine check). */
  private resolve(memory: GuestMemory, gpn: number, byHost: boolean): void {
    const open = this.open.get(gpn);
    if (open !== undefined && !open.tried && this.tryRecover(memory, gpn, byHost)) return;
    if (byHost) return; // a checkpoint asked (GuestMemory.settlePage): no guest access, no machine check
    this.counts.machineChecks++;
    if (open !== undefined) {
      open.entry.outcome = 'machine-check';
      open.entry.decidedAt ??= new Date(this.now()).toISOString();
    }
  }

  /** Tries the methods in order; installs the first page rebuilt. */
  private tryRecover(memory: GuestMemory, gpn: number, byHost = false): boolean {
    const open = this.open.get(gpn)!;
    open.tried = true;
    this.counts.reported++;
    for (const method of this.methods) {
      let bytes: Uint8Array | null;
      try {
        bytes = method.recover(this.vm, { ...open.report }, memory.poisonedPageBytes(gpn));
      } catch {
        bytes = null; // a method that throws is a method that could not
      }
      if (bytes === null || bytes.length !== 4096) continue;
      memory.installPage(gpn, bytes);
      this.recovered[method.name] = (this.recovered[method.name] ?? 0) + 1;
      open.entry.outcome = `recovered-by-${method.name}`;
      open.entry.decidedAt = new Date(this.now()).toISOString();
      this.open.delete(gpn);
      return true;
    }
    open.entry.outcome = open.entry.report === 'now' || byHost ? 'unrecovered' : 'machine-check';
    open.entry.decidedAt = new Date(this.now()).toISOString();
    return false;
  }

  /** The guest-physical address a request names. */
  private addressOf(request: InjectRequest): number {
    const memory = this.vm.memory;
    if ((request.gpa === undefined) === (request.gva === undefined)) throw new MemoryErrorServiceError('BV_MEMERR_BAD_REQUEST', 'give exactly one of gpa and gva');
    if (request.gpa !== undefined) {
      const gpa = request.gpa;
      if (!Number.isInteger(gpa) || gpa < 0 || gpa >= memory.memoryBytes) throw new MemoryErrorServiceError('BV_MEMERR_BAD_ADDRESS', `${this.vm.name}: guest-physical 0x${Number(gpa).toString(16)} is outside RAM (0 … 0x${(memory.memoryBytes - 1).toString(16)})`);
      return gpa;
    }
    const gva = request.gva!;
    if (!Number.isInteger(gva) || gva < 0 || gva > 0xffff_ffff) throw new MemoryErrorServiceError('BV_MEMERR_BAD_ADDRESS', `a guest-virtual address is 0 … 0xffffffff, got ${String(gva)}`);
    const vcpu = this.vm.vcpus[request.vcpu ?? 0];
    if (vcpu === undefined) throw new MemoryErrorServiceError('BV_MEMERR_BAD_REQUEST', `${this.vm.name} has no vCPU ${String(request.vcpu)}`);
    const gpa = translateReadOnly(memory, vcpu.ptbr, gva);
    if (gpa === null) throw new MemoryErrorServiceError('BV_MEMERR_NOT_MAPPED', `${this.vm.name}: guest-virtual 0x${gva.toString(16)} is not mapped by vCPU ${request.vcpu ?? 0}'s page tables`);
    if (gpa >= memory.memoryBytes) throw new MemoryErrorServiceError('BV_MEMERR_BAD_ADDRESS', `${this.vm.name}: guest-virtual 0x${gva.toString(16)} maps guest-physical 0x${gpa.toString(16)}, which is not RAM`);
    return gpa;
  }
}

/**
 * An Sv32 walk that only reads (no accessed or dirty bits set, no traps): the guest-physical
 * address `gva` maps to under `ptbr`, or null. With paging off, gva is the address.
 */
export function translateReadOnly(memory: GuestMemory, ptbr: number, gva: number): number | null {
  if ((ptbr & Ptbr.MODE_SV32) === 0) return gva;
  const readPte = (gpa: number): number | null => {
    if (gpa + 4 > memory.memoryBytes) return null;
    const bytes = memory.readPhysical(gpa, 4);
    return (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
  };
  let table = (ptbr & Ptbr.PPN_MASK) * 4096;
  for (let level = 1; level >= 0; level--) {
    const vpn = level === 1 ? gva >>> 22 : (gva >>> 12) & 0x3ff;
    const pte = readPte(table + vpn * 4);
    if (pte === null || (pte & Pte.V) === 0) return null;
    const ppn = pte >>> PTE_PPN_SHIFT;
    if ((pte & (Pte.R | Pte.X)) !== 0) {
      // A leaf: a 4 MiB superpage at level 1, a 4 KiB page at level 0.
      return level === 1 ? (ppn >>> 10) * 0x40_0000 + (gva & 0x3f_ffff) : ppn * 4096 + (gva & 0xfff);
    }
    table = ppn * 4096;
  }
  return null;
}
