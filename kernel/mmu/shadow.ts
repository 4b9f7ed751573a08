/**
 * The VM's MMU front end, consulted on every TLB miss (T-1).
 *
 * - **shadow** mode (default): a shadow page table per guest root table caches the guest's leaf
 *   PTEs (GVA → GPA and permissions), so a TLB miss is answered without walking guest memory.
 *   It stays coherent through *traces*: every guest page-table page a walk reads is
 *   write-protected in the P2M (flag TRACED); a guest store to it completes and then drops
 *   exactly the shadow entries derived from the PTE it changed, and the TLB entries made from
 *   them. Because the shadow is always coherent, guest flushes (sfence) have nothing left to drop
 *   and are elided; context switches drop nothing because TLB entries are ASID-tagged.
 *   *Batched population*: a walk that reaches a leaf table also caches up to `batch` valid,
 *   accessed neighbours from the same table.
 *   *Lazy A/D*: only PTEs whose A bit is set are cached, and a write through a cached PTE
 *   whose D bit is clear walks again so the walk sets D in the guest's table.
 * - **shadow without traces** (the "flush everything" baseline): the same cache, but nothing
 *   keeps it coherent, so every guest sfence drops all shadow state.
 * - **nested** mode: no shadow state; every TLB miss walks the guest tables, each table access
 *   itself translated through the P2M (a two-dimensional walk).
 *
 * The shadow stores guest-physical addresses, not host frames, so P2M changes never touch it
 * (they shoot down the vCPUs' TLBs, which hold host offsets).
 */
import { Ptbr, Pte, PTE_PPN_SHIFT } from '../../guest-isa/arch.ts';
import { P2mFlag } from '../memory/p2m.ts';
import type { Vcpu } from '../cpu/vcpu.ts';
import { Access, leafPageGpa, leafPermits, pageFaultCause } from './sv32.ts';
import type { AccessKind } from './sv32.ts';

/** How guest page tables are virtualised: shadow page tables, or nested (two-dimensional) walks. */
export type MmuMode = 'shadow' | 'nested';

/** @internal What the MMU needs from its VM: guest memory's large-page and trace hooks, and TLB invalidation. */
export interface MmuHost {
  /** The host pool as 32-bit words (cached PTEs are read from it). */
  readonly hostPool32: Int32Array;
  /** First host frame of the run backing a 4 MiB region, or -1. */
  regionRunFrame(region: number): number;
  noteSuperpage(gpaBase: number): void;
  hostOffsetIfPresent(gpa: number): number;
  protectPage(gpn: number, flags: number): void;
  unprotectPage(gpn: number, flags: number): void;
  /** Drops every vCPU's TLB entries for `count` pages from `firstVpn` in `asid`. */
  invalidateTranslations(asid: number, firstVpn: number, count: number): void;
  invalidateAsid(asid: number): void;
}

/** How a VM's MMU works (VmConfig.mmu); see docs/mmu.md. */
export interface MmuOptions {
  /** 'shadow' (default) or 'nested'. */
  mode?: MmuMode;
  /** Keep the shadow coherent with traces (shadow mode only; default true). */
  traces?: boolean;
  /** Neighbouring PTEs cached per walk (shadow mode; default 16, 0 disables). */
  batch?: number;
  /** Most shadow address spaces kept; the least recently used beyond this are dropped. */
  maxSpaces?: number;
}

/** Counters of a VM's MMU (Vm.mmu.stats). */
export interface MmuStats {
  /** Guest page-table walks (TLB misses the shadow could not answer, or every miss when nested). */
  walks: number;
  /** TLB misses answered from the shadow page tables without a walk. */
  shadowHits: number;
  /** Misses answered by a large mapping: a guest superpage over a run-backed region (T-2). */
  largeHits: number;
  /** Neighbouring leaf PTEs cached by batched population. */
  batchFilled: number;
  /** Guest page-table pages write-protected for tracing. */
  tracesPlaced: number;
  /** Traces removed (the page no longer holds a shadowed table, or was written like data). */
  tracesRemoved: number;
  /** Guest stores to traced pages (each drops what derived from the word it changed). */
  traceHits: number;
  /** Cached shadow PTEs dropped. */
  shadowEntriesDropped: number;
  /** Guest sfences elided because traces had already kept everything coherent. */
  flushesElided: number;
  /** Guest sfences that dropped the whole shadow (no traces) or flushed TLBs (nested). */
  flushesFull: number;
  /** Shadow address spaces created (one per guest root table). */
  spacesCreated: number;
  /** Shadow address spaces dropped (least recently used beyond maxSpaces, or root table changed). */
  spacesDropped: number;
  /** ASIDs installed with a different root than before (their TLB entries were dropped). */
  asidReuses: number;
}

/** Large entries kept in nested mode (checked before a walk). */
const LARGE_SET_SIZE = 64;

/** Writes to a traced page without a walk reading it in between, before we stop tracing it. */
const TRACE_FLOOD_LIMIT = 64;
/** Marker in a use code: the page is the root table of the space. */
const ROOT_USE = 1024;

/** Cached translations derived from one guest root table. */
class ShadowSpace {
  /** Level-1 leaf PTEs (superpages) by VPN[1]; 0 = none. */
  readonly superPte = new Int32Array(1024);
  /** Level-0 leaf PTEs by VPN[1], then VPN[0]; 0 = none. */
  readonly leafPte: (Int32Array | null)[] = new Array(1024).fill(null);
  /** The guest page number of the leaf table each VPN[1] went through (-1 = none). */
  readonly leafTable = new Int32Array(1024).fill(-1);
  /**
   * Every ASID this root has run under (vCPUs may run one root under several ASIDs): dropping a
   * shadow entry drops the TLB entries of each, so none can keep a stale translation.
   */
  readonly asids = new Set<number>();
  lastUse = 0;
  constructor(readonly id: number, readonly rootGpn: number) {}
}

/**
 * A VM's MMU (Vm.mmu), consulted on every TLB miss: it translates guest-virtual to
 * guest-physical addresses through the guest's Sv32 page tables, caching them in shadow page
 * tables (shadow mode) or walking every time (nested mode). Embedders read its configuration and
 * counters; the interpreter does the rest.
 */
export class Mmu {
  /** 'shadow' or 'nested'. */
  readonly mode: MmuMode;
  /** Whether traces keep the shadow coherent (shadow mode). */
  readonly traces: boolean;
  /** Neighbouring PTEs cached per walk (shadow mode). */
  readonly batch: number;
  private readonly maxSpaces: number;
  /** @internal Result of the last successful translate() (guest-physical). */
  gpa = 0;
  /** @internal The leaf PTE of the last successful translate(). */
  pte = 0;
  /** @internal The level of that leaf (1: superpage, 0: 4 KiB page). */
  level = 0;
  /** @internal Trap cause of the last failed translate(). */
  faultCause = 0;

  /** Live counters (see MmuStats). */
  readonly stats: MmuStats = {
    walks: 0, shadowHits: 0, largeHits: 0, batchFilled: 0, tracesPlaced: 0, tracesRemoved: 0, traceHits: 0,
    shadowEntriesDropped: 0, flushesElided: 0, flushesFull: 0, spacesCreated: 0, spacesDropped: 0, asidReuses: 0,
  };

  private readonly spaces = new Map<number, ShadowSpace>();
  private readonly spacesById = new Map<number, ShadowSpace>();
  private nextSpaceId = 0;
  private useClock = 0;
  /**
   * Nested mode's large entries: a guest superpage whose guest-physical region is backed by one
   * host run is held as one entry (4 MiB-aligned va, ASID, leaf PTE), so misses under it need no
   * walk. Entries are dropped by guest flushes, like a hardware TLB's, and checked against the
   * region's backing at use.
   */
  private readonly largeVa = new Int32Array(LARGE_SET_SIZE).fill(-1);
  private readonly largeAsid = new Int32Array(LARGE_SET_SIZE);
  private readonly largePte = new Int32Array(LARGE_SET_SIZE);
  private largeNext = 0;
  /** Traced guest page → encoded uses (spaceId * 2048 + (ROOT_USE | vpn1)). */
  private readonly traceUses = new Map<number, number[]>();
  /** Traced guest page → writes since a walk last read it. */
  private readonly traceWrites = new Map<number, number>();

  /** @internal Created by the Vm (and again on reset). */
  constructor(private readonly vm: MmuHost, options: MmuOptions = {}) {
    this.mode = options.mode ?? 'shadow';
    this.traces = this.mode === 'shadow' && (options.traces ?? true);
    this.batch = this.mode === 'shadow' ? Math.max(0, Math.min(1023, options.batch ?? 16)) : 0;
    this.maxSpaces = options.maxSpaces ?? 256;
  }

  /**
   * @internal Translates guest-virtual `va` for an access by `vcpu` under its current PTBR, mode and status. Returns
   * true (gpa/pte/level set) or false (faultCause set). Paging must be on.
   */
  translate(vcpu: Vcpu, va: number, access: AccessKind): boolean {
    const supervisor = vcpu.mode === 1;
    const walker = vcpu.walker;
    if (this.mode === 'shadow') {
      const space = this.space(vcpu.ptbr);
      const vpn1 = va >>> 22;
      let level = 1;
      let pte = space.superPte[vpn1]!;
      if (pte === 0) {
        const leaves = space.leafPte[vpn1];
        if (leaves !== null) pte = leaves![(va >>> 12) & 1023]!;
        level = 0;
      }
      // A cached PTE answers unless the access must set D (then walk so the guest table gets it).
      if (pte !== 0 && (access !== Access.WRITE || (pte & Pte.D) !== 0)) {
        if (!leafPermits(pte, access, supervisor, vcpu.status)) return this.fail(pageFaultCause(access));
        this.stats.shadowHits++;
        const gpa = leafPageGpa(pte, level, va) + (va & 0xfff);
        if (level === 1 && this.vm.regionRunFrame(Math.floor(gpa / 4194304)) >= 0) this.stats.largeHits++;
        return this.succeed(gpa, pte, level);
      }
      this.stats.walks++;
      if (!walker.translate(vcpu.ptbr, va, access, supervisor, vcpu.status)) return this.fail(walker.faultCause);
      if (walker.level === 1) this.vm.noteSuperpage(walker.gpa - (walker.gpa % 4194304));
      this.remember(space, va, walker.pte, walker.level, walker.rootGpn, walker.leafTableGpn);
      return this.succeed(walker.gpa, walker.pte, walker.level);
    }
    // Nested: a large entry, else the two-dimensional walk.
    const asid = (vcpu.ptbr >>> Ptbr.ASID_SHIFT) & Ptbr.ASID_MASK;
    const vaBase = va & 0xffc00000;
    for (let i = 0; i < LARGE_SET_SIZE; i++) {
      if (this.largeVa[i] !== vaBase || this.largeAsid[i] !== asid) continue;
      const pte = this.largePte[i]!;
      const gpa = leafPageGpa(pte, 1, va) + (va & 0xfff);
      if (this.vm.regionRunFrame(Math.floor(gpa / 4194304)) < 0) {
        this.largeVa[i] = -1; // its backing changed: no longer a large mapping
        break;
      }
      if (access === Access.WRITE && (pte & Pte.D) === 0) break; // walk to set D
      if (!leafPermits(pte, access, supervisor, vcpu.status)) return this.fail(pageFaultCause(access));
      this.stats.largeHits++;
      return this.succeed(gpa, pte, 1);
    }
    this.stats.walks++;
    if (!walker.translate(vcpu.ptbr, va, access, supervisor, vcpu.status)) return this.fail(walker.faultCause);
    if (walker.level === 1) {
      const gpaBase = walker.gpa - (walker.gpa % 4194304);
      this.vm.noteSuperpage(gpaBase);
      if (this.vm.regionRunFrame(gpaBase / 4194304) >= 0) this.rememberLarge(vaBase, asid, walker.pte);
    }
    return this.succeed(walker.gpa, walker.pte, walker.level);
  }

  private rememberLarge(vaBase: number, asid: number, pte: number): void {
    let slot = -1;
    for (let i = 0; i < LARGE_SET_SIZE; i++) if (this.largeVa[i] === vaBase && this.largeAsid[i] === asid) slot = i;
    if (slot < 0) {
      slot = this.largeNext;
      this.largeNext = (this.largeNext + 1) % LARGE_SET_SIZE;
    }
    this.largeVa[slot] = vaBase;
    this.largeAsid[slot] = asid;
    this.largePte[slot] = pte;
  }

  /** Large mappings currently held (shadow superpages over run-backed regions, or nested entries). */
  largeMappings(): number {
    if (this.mode === 'nested') {
      let count = 0;
      for (let i = 0; i < LARGE_SET_SIZE; i++) if (this.largeVa[i] !== -1) count++;
      return count;
    }
    let count = 0;
    for (const space of this.spaces.values()) {
      for (let vpn1 = 0; vpn1 < 1024; vpn1++) {
        const pte = space.superPte[vpn1]!;
        if (pte !== 0 && this.vm.regionRunFrame(Math.floor(leafPageGpa(pte, 1, vpn1 << 22) / 4194304)) >= 0) count++;
      }
    }
    return count;
  }

  /**
   * @internal The guest executed sfence. Returns true when the vCPUs' TLBs must still be flushed as the
   * spec says (nested mode, or shadow without traces after dropping the whole shadow).
   */
  guestFlush(): boolean {
    this.largeVa.fill(-1);
    if (this.traces) {
      // Traces already dropped every stale entry when the guest wrote its page tables.
      this.stats.flushesElided++;
      return false;
    }
    if (this.mode === 'shadow') {
      this.stats.flushesFull++;
      // The flushing vCPU drops its whole TLB next; entries of other vCPUs stay until their own
      // sfence, as the spec allows. So no per-region invalidation is needed here.
      this.invalidateOnDrop = false;
      try {
        this.dropAllSpaces();
      } finally {
        this.invalidateOnDrop = true;
      }
    }
    return true;
  }

  /**
   * @internal A vCPU installed a PTBR. In shadow mode, remember the ASID its root runs under; and when an
   * ASID now names a different root than before, drop every vCPU's entries of that ASID: with
   * traces the guest's sfence is elided, so this is where a reused ASID is made safe.
   */
  notePtbr(ptbr: number): void {
    if (this.mode !== 'shadow' || (ptbr & Ptbr.MODE_SV32) === 0) return;
    const asid = (ptbr >>> Ptbr.ASID_SHIFT) & Ptbr.ASID_MASK;
    const rootGpn = ptbr & Ptbr.PPN_MASK;
    const previousRoot = this.rootOfAsid.get(asid);
    if (previousRoot !== undefined && previousRoot !== rootGpn) {
      this.stats.asidReuses++;
      this.vm.invalidateAsid(asid);
    }
    this.rootOfAsid.set(asid, rootGpn);
    // The space itself is built at the first miss under this root (space() gives it the ASIDs
    // rootOfAsid maps to the root): a vCPU whose state was just loaded (a fork, a restore) may
    // never run, and until a miss there is no shadow entry, so no TLB entry, to invalidate.
    const space = this.spaces.get(rootGpn);
    if (space !== undefined) {
      space.asids.add(asid);
      space.lastUse = ++this.useClock;
    }
  }

  /** @internal Whether the MMU traces a guest page (its P2M entry must keep the TRACED flag). */
  isTracing(gpn: number): boolean {
    return this.traceUses.has(gpn);
  }

  /** @internal Every guest page the MMU traces. */
  tracedPages(): Iterable<number> {
    return this.traceUses.keys();
  }

  /** False while a guest flush drops everything (the vCPU flushes its TLB itself). */
  private invalidateOnDrop = true;

  /** ASID → root table last installed with it. */
  private readonly rootOfAsid = new Map<number, number>();

  /**
   * @internal A guest store changed a word of a traced page (old → new value). Drops the shadow entries
   * derived from that PTE and the TLB entries made from them, in every vCPU.
   */
  tracedWrite(gpn: number, pageOffset: number, oldWord: number, newWord: number): void {
    this.stats.traceHits++;
    const writes = (this.traceWrites.get(gpn) ?? 0) + 1;
    this.traceWrites.set(gpn, writes);
    if (writes > TRACE_FLOOD_LIMIT) {
      // Written like data, not read like a page table: stop shadowing it.
      this.zapPage(gpn);
      return;
    }
    if (oldWord === newWord) return;
    const index = pageOffset >>> 2;
    for (const use of this.traceUses.get(gpn) ?? []) {
      const space = this.spacesById.get(Math.floor(use / 2048));
      if (!space) continue;
      if ((use & 2047) === ROOT_USE) this.dropRootEntry(space, index);
      else this.dropLeafEntry(space, use & 1023, index, gpn);
    }
  }

  /** @internal A traced page changed wholesale (device DMA, loader): drop everything derived from it. */
  zapPage(gpn: number): void {
    const uses = this.traceUses.get(gpn);
    if (!uses) return;
    for (const use of [...uses]) {
      const space = this.spacesById.get(Math.floor(use / 2048));
      if (!space) continue;
      if ((use & 2047) === ROOT_USE) this.dropSpace(space);
      else this.dropRootEntry(space, use & 1023);
    }
    this.untrace(gpn);
  }

  /** Number of shadow address spaces and cached leaf PTEs (for --stats). */
  census(): {
    /** Shadow address spaces held. */
    spaces: number;
    /** Leaf PTEs cached in them. */
    cachedPtes: number;
    /** Guest pages traced. */
    tracedPages: number;
  } {
    let cachedPtes = 0;
    for (const space of this.spaces.values()) {
      for (let i = 0; i < 1024; i++) {
        if (space.superPte[i] !== 0) cachedPtes++;
        const leaves = space.leafPte[i];
        if (leaves) for (let j = 0; j < 1024; j++) if (leaves[j] !== 0) cachedPtes++;
      }
    }
    return { spaces: this.spaces.size, cachedPtes, tracedPages: this.traceUses.size };
  }

  // ---------------------------------------------------------------------------------------------

  private succeed(gpa: number, pte: number, level: number): true {
    this.gpa = gpa;
    this.pte = pte;
    this.level = level;
    return true;
  }

  private fail(cause: number): false {
    this.faultCause = cause;
    return false;
  }

  private space(ptbr: number): ShadowSpace {
    const rootGpn = ptbr & Ptbr.PPN_MASK;
    let space = this.spaces.get(rootGpn);
    if (!space) {
      if (this.spaces.size >= this.maxSpaces) this.dropLeastRecentSpace();
      space = new ShadowSpace(this.nextSpaceId++, rootGpn);
      // Every ASID installed with this root may hold TLB entries made from the new space, and so
      // may the missing vCPU's own (even if another vCPU has since installed it with another root).
      space.asids.add((ptbr >>> Ptbr.ASID_SHIFT) & Ptbr.ASID_MASK);
      for (const [asid, root] of this.rootOfAsid) if (root === rootGpn) space.asids.add(asid);
      this.spaces.set(rootGpn, space);
      this.spacesById.set(space.id, space);
      this.stats.spacesCreated++;
    }
    space.lastUse = ++this.useClock;
    return space;
  }

  /** Caches a walked leaf (and its batch of neighbours) and traces the tables it came from. */
  private remember(space: ShadowSpace, va: number, pte: number, level: number, rootGpn: number, leafTableGpn: number): void {
    const vpn1 = va >>> 22;
    this.trace(rootGpn, space.id * 2048 + ROOT_USE);
    if (level === 1) {
      space.superPte[vpn1] = pte;
      return;
    }
    let leaves = space.leafPte[vpn1];
    if (leaves === null || space.leafTable[vpn1] !== leafTableGpn) {
      leaves = new Int32Array(1024);
      space.leafPte[vpn1] = leaves;
      space.leafTable[vpn1] = leafTableGpn;
    }
    const vpn0 = (va >>> 12) & 1023;
    leaves![vpn0] = pte;
    this.trace(leafTableGpn, space.id * 2048 + vpn1);
    if (this.batch > 0) this.fillNeighbours(leaves!, leafTableGpn, vpn0);
  }

  /** Batched population: caches valid, accessed leaf PTEs around vpn0 in the same table. */
  private fillNeighbours(leaves: Int32Array, leafTableGpn: number, vpn0: number): void {
    const tableGpa = leafTableGpn * 4096;
    const hostOffset = this.vm.hostOffsetIfPresent(tableGpa);
    if (hostOffset < 0) return;
    const memory32 = this.vm.hostPool32;
    const first = vpn0 - (vpn0 % this.batch);
    const last = Math.min(1024, first + this.batch);
    for (let i = first; i < last; i++) {
      if (i === vpn0 || leaves[i] !== 0) continue;
      const pte = memory32[(hostOffset >>> 2) + i]!;
      // Only valid leaves the guest has accessed: a PTE with A clear is never in the shadow.
      if ((pte & (Pte.V | Pte.A)) !== (Pte.V | Pte.A) || (pte & (Pte.R | Pte.X)) === 0 || ((pte & Pte.R) === 0 && (pte & Pte.W) !== 0)) continue;
      if ((pte >>> PTE_PPN_SHIFT) * 4096 >= 0x1_0000_0000) continue;
      leaves[i] = pte;
      this.stats.batchFilled++;
    }
  }

  private trace(gpn: number, use: number): void {
    this.traceWrites.set(gpn, 0);
    if (!this.traces) return;
    let uses = this.traceUses.get(gpn);
    if (!uses) {
      uses = [];
      this.traceUses.set(gpn, uses);
      this.vm.protectPage(gpn, P2mFlag.TRACED);
      this.stats.tracesPlaced++;
    }
    if (!uses.includes(use)) uses.push(use);
  }

  private untrace(gpn: number): void {
    if (!this.traceUses.delete(gpn)) return;
    this.traceWrites.delete(gpn);
    this.vm.unprotectPage(gpn, P2mFlag.TRACED);
    this.stats.tracesRemoved++;
  }

  private removeUse(gpn: number, use: number): void {
    const uses = this.traceUses.get(gpn);
    if (!uses) return;
    const at = uses.indexOf(use);
    if (at >= 0) uses.splice(at, 1);
    if (uses.length === 0) this.untrace(gpn);
  }

  /** Drops what a root entry (VPN[1]) maps: its superpage or its whole leaf table's entries. */
  private dropRootEntry(space: ShadowSpace, vpn1: number): void {
    let dropped = 0;
    if (space.superPte[vpn1] !== 0) {
      space.superPte[vpn1] = 0;
      dropped++;
    }
    const leaves = space.leafPte[vpn1];
    if (leaves) {
      for (let i = 0; i < 1024; i++) if (leaves[i] !== 0) dropped++;
      space.leafPte[vpn1] = null;
      const leafTable = space.leafTable[vpn1]!;
      space.leafTable[vpn1] = -1;
      if (leafTable >= 0) this.removeUse(leafTable, space.id * 2048 + vpn1);
    }
    this.stats.shadowEntriesDropped += dropped;
    if (dropped > 0 && this.invalidateOnDrop) for (const asid of space.asids) this.vm.invalidateTranslations(asid, vpn1 << 10, 1024);
  }

  private dropLeafEntry(space: ShadowSpace, vpn1: number, vpn0: number, leafTableGpn: number): void {
    if (space.leafTable[vpn1] !== leafTableGpn) return;
    const leaves = space.leafPte[vpn1];
    if (!leaves || leaves[vpn0] === 0) return;
    leaves[vpn0] = 0;
    this.stats.shadowEntriesDropped++;
    for (const asid of space.asids) this.vm.invalidateTranslations(asid, (vpn1 << 10) | vpn0, 1);
  }

  private dropSpace(space: ShadowSpace): void {
    for (let vpn1 = 0; vpn1 < 1024; vpn1++) this.dropRootEntry(space, vpn1);
    this.removeUse(space.rootGpn, space.id * 2048 + ROOT_USE);
    this.spaces.delete(space.rootGpn);
    this.spacesById.delete(space.id);
    this.stats.spacesDropped++;
  }

  private dropAllSpaces(): void {
    for (const space of [...this.spaces.values()]) this.dropSpace(space);
  }

  private dropLeastRecentSpace(): void {
    let oldest: ShadowSpace | null = null;
    for (const space of this.spaces.values()) if (!oldest || space.lastUse < oldest.lastUse) oldest = space;
    if (oldest) this.dropSpace(oldest);
  }
}
