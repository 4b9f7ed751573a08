/**
 * The software TLB of one vCPU: flat arrays with one entry per virtual page, separate for read,
 * write and execute, and separate for supervisor and user mode (permissions differ by mode).
 *
 * An entry is two Int32 slots: [tag, value]. The tag is `pageVa | TAG_VALID | id << 2`, and the
 * fast path compares it against `(va & (0xfffff000 | alignMask)) | context`, so one compare checks
 * the page, the address space and natural alignment at once (a misaligned address has low bits
 * set and never matches). For read/write the value is the addend `hostOffset - pageVa`; for
 * execute it is the decoded-code base of the page.
 *
 * Read and execute tags carry the guest ASID (`tlbContext(asid)`). Write tags carry a *write id*
 * instead (`SoftTlb.wctx`, the write context of the selected ASID): each ASID gets a fresh write id
 * per write generation, so `revokeWrites` retires every write entry in O(1) by starting a new
 * generation (ASID-generation style). Retired ids are reused only once no entry carries them: an
 * incremental sweep of the fill log, advanced by fills and (when few ids are left) by id
 * allocations, reclaims them; so does any pass over the whole log.
 *
 * Every fill is logged (kind, vpn, gpn) so that flushes and shootdowns touch only filled entries
 * instead of clearing 8 MiB arrays; when the log is full its older entries are evicted. The log
 * records of each guest page are chained (a head per gpn, a next link per record), so a P2M
 * shootdown of one page visits only the entries derived from it.
 */

export const TAG_VALID = 0x800;
export const ASID_TAG_SHIFT = 2;
/** ASIDs, and write ids: both fill the 9 tag bits above the alignment bits. */
const ID_COUNT = 512;
const ID_MASK = ID_COUNT - 1;

/** Which array an entry lives in: mode × access. */
export const TlbKind = {
  S_READ: 0,
  S_WRITE: 1,
  S_EXEC: 2,
  U_READ: 3,
  U_WRITE: 4,
  U_EXEC: 5,
} as const;
export type TlbKindId = (typeof TlbKind)[keyof typeof TlbKind];

function isWriteKind(kind: number): boolean {
  return kind === TlbKind.S_WRITE || kind === TlbKind.U_WRITE;
}

/**
 * Entries per array: direct-mapped by the low 18 bits of the virtual page number, so two pages
 * collide only when they are a multiple of 1 GiB apart. The tag holds the whole page, so a
 * collision is a miss, never a wrong hit. (A flat 1M-entry table costs 48 MiB per vCPU, and
 * allocating that much made VM creation and fork pay for garbage collections.)
 */
export const TLB_ENTRIES = 1 << 18;
export const TLB_INDEX_MASK = TLB_ENTRIES - 1;
/** Fill records the log holds before its older half is evicted. */
export const TLB_LOG_CAPACITY = 1 << 17;
const LOG_CAPACITY = TLB_LOG_CAPACITY;
const LOG_MASK = LOG_CAPACITY - 1;
/** Log sequence numbers start again from a small value at the first full pass past this. */
const RENUMBER_AT = 1 << 30;
const ARRAY_INTS = TLB_ENTRIES * 2;

/** Bytes of backing one SoftTlb needs (six arrays and the fill log), 4 KiB-aligned. */
export const SOFT_TLB_BYTES = Math.ceil(((6 * ARRAY_INTS + 3 * LOG_CAPACITY) * 4) / 4096) * 4096;

/** A log record dropped by a shootdown (its entry is gone; the next pass over the log forgets it). */
const DEAD_RECORD = -1;

/** Log records the sweep of retired write ids visits per fill while it runs. */
const SWEEP_PER_FILL = 4;
/** With this few free write ids left, id allocations advance the sweep too. */
const LOW_FREE_IDS = 128;

function slotOf(vpn: number): number {
  return (vpn & TLB_INDEX_MASK) * 2;
}

/** The virtual page number a tag names. */
function tagVpn(tag: number): number {
  return tag >>> 12;
}

/** The ASID (read/execute entries) or write id (write entries) a tag carries. */
function tagId(tag: number): number {
  return (tag >>> ASID_TAG_SHIFT) & ID_MASK;
}

/** Context of read and execute entries (and lookups) for an ASID. */
export function tlbContext(asid: number): number {
  return TAG_VALID | (asid << ASID_TAG_SHIFT);
}

export class SoftTlb {
  readonly sRead: Int32Array;
  readonly sWrite: Int32Array;
  readonly sExec: Int32Array;
  readonly uRead: Int32Array;
  readonly uWrite: Int32Array;
  readonly uExec: Int32Array;
  private readonly arrays: readonly Int32Array[];
  // The fill log, a ring: record `seq` (a sequence number) lives at `seq & LOG_MASK`, and the
  // records from logStart to logEnd are live. Links name a record as seq + 1; one no greater than
  // logStart names nothing (0, or a record gone since).
  /** kind << 20 | vpn per fill (DEAD_RECORD once a shootdown dropped it). */
  private readonly logKindVpn: Int32Array;
  /** Guest page number (or -1) per fill, for P2M shootdowns. */
  private readonly logGpn: Int32Array;
  /** Per fill: the link to the previous record of the same guest page. */
  private readonly logNext: Int32Array;
  private logStart = 0;
  private logEnd = 0;
  /** Live records marked DEAD_RECORD (so the log knows they would free room). */
  private deadRecords = 0;

  /**
   * `backing` (SOFT_TLB_BYTES of zeroed memory at a 4-byte-aligned offset) lets a hypervisor
   * carve TLBs out of one native arena; without it the arrays are allocated here.
   */
  constructor(backing?: { buffer: ArrayBuffer; byteOffset: number }) {
    const buffer = backing?.buffer ?? new ArrayBuffer(SOFT_TLB_BYTES);
    let offset = backing?.byteOffset ?? 0;
    const take = (ints: number): Int32Array => {
      const view = new Int32Array(buffer, offset, ints);
      offset += ints * 4;
      return view;
    };
    this.sRead = take(ARRAY_INTS);
    this.sWrite = take(ARRAY_INTS);
    this.sExec = take(ARRAY_INTS);
    this.uRead = take(ARRAY_INTS);
    this.uWrite = take(ARRAY_INTS);
    this.uExec = take(ARRAY_INTS);
    this.logKindVpn = take(LOG_CAPACITY);
    this.logGpn = take(LOG_CAPACITY);
    this.logNext = take(LOG_CAPACITY);
    this.arrays = [this.sRead, this.sWrite, this.sExec, this.uRead, this.uWrite, this.uExec];
    for (let id = ID_COUNT - 1; id >= 0; id--) this.freeIds[this.freeCount++] = id;
    this.wctx = this.writeContextFor(0);
  }

  fills = 0;
  entriesDropped = 0;
  fullFlushes = 0;
  /** revokeWrites calls. */
  revocations = 0;
  /** Times the free write ids ran out before a sweep freed more, so a pass over the log did. */
  writeIdPasses = 0;

  array(kind: TlbKindId): Int32Array {
    return this.arrays[kind]!;
  }

  /**
   * Records a translation. `context` is `tlbContext(asid)` for read and execute kinds and
   * `this.wctx` (the write context of the selected ASID) for write kinds.
   */
  fill(kind: TlbKindId, va: number, context: number, value: number, gpn: number): void {
    // A write context read before a revocation would name a retired id, which a later ASID may
    // get again: such an entry must not be made.
    if (isWriteKind(kind) && this.idLive[tagId(context)] === 0) return;
    if (this.logEnd - this.logStart === LOG_CAPACITY) this.makeRoom();
    else if (this.sweeping) this.sweep(SWEEP_PER_FILL);
    const vpn = va >>> 12;
    const array = this.arrays[kind]!;
    const slot = slotOf(vpn);
    array[slot] = (va & 0xfffff000) | context;
    array[slot + 1] = value;
    const seq = this.logEnd++;
    const at = seq & LOG_MASK;
    this.logKindVpn[at] = (kind << 20) | vpn;
    if (gpn >= 0) {
      if (gpn >= this.gpnHead.length) this.growHeads(gpn);
      this.logGpn[at] = gpn;
      this.logNext[at] = this.gpnHead[gpn]!;
      this.gpnHead[gpn] = seq + 1;
    } else {
      this.logGpn[at] = -1;
    }
    this.fills++;
  }

  /**
   * Per guest page: the link to its newest log record. A shootdown of a page this vCPU did not
   * fill (or whose records are gone) costs nothing, and one of a filled page walks its chain.
   */
  private gpnHead = new Int32Array(0);

  private growHeads(gpn: number): void {
    let size = Math.max(1024, this.gpnHead.length);
    while (size <= gpn) size *= 2;
    const grown = new Int32Array(size);
    grown.set(this.gpnHead);
    this.gpnHead = grown;
  }

  /**
   * The log is full. If shootdowns left a quarter of it dead, forget those records; otherwise drop
   * the entries of its older half and keep the newer half, so a working set larger than the log
   * loses its least recently filled translations rather than all of them (a full flush here made
   * a 256 MiB random-access guest miss on ~72% of accesses).
   */
  private makeRoom(): void {
    if (this.deadRecords >= LOG_CAPACITY >>> 2 || this.logEnd >= RENUMBER_AT) {
      this.rewriteLog(null);
      if (this.logEnd - this.logStart <= LOG_CAPACITY - (LOG_CAPACITY >>> 2)) return;
    }
    const start = this.logStart;
    const half = (this.logEnd - start) >>> 1;
    let dead = 0;
    for (let seq = start; seq < start + half; seq++) {
      const at = seq & LOG_MASK;
      if (this.logKindVpn[at] === DEAD_RECORD) dead++;
      else this.dropLogged(at);
    }
    // Links to the records dropped now are no greater than logStart: chains end there.
    this.logStart = start + half;
    this.deadRecords -= dead;
    if (this.sweeping) {
      // The records left of the running sweep are the newer ones (the dropped took their entries).
      if (this.sweepCursor < this.logStart) this.sweepCursor = this.logStart;
      this.sweep(0);
    }
    this.evictions++;
  }

  /** Times the fill log overflowed and its older half was dropped. */
  evictions = 0;

  /** Drops every entry. */
  flushAll(): void {
    for (let seq = this.logStart; seq < this.logEnd; seq++) this.dropLogged(seq & LOG_MASK);
    // Every link is now stale (no greater than logStart); start the numbering again when it is high.
    if (this.logEnd >= RENUMBER_AT) {
      this.gpnHead.fill(0);
      this.logEnd = 0;
    }
    this.logStart = this.logEnd;
    this.deadRecords = 0;
    this.reclaimRetiredIds();
    this.superpageRegions.fill(0);
    this.fullFlushes++;
  }

  /**
   * Marks that entries in va's 4 MiB region came from a superpage: an sfence by address there
   * must drop the whole region, since the one superpage PTE produced all of them.
   */
  noteSuperpage(va: number): void {
    this.superpageRegions[va >>> 22] = 1;
  }

  private readonly superpageRegions = new Uint8Array(1024);

  /** Drops the entries of one virtual page in every array (of its 4 MiB region if a superpage). */
  flushPage(va: number): void {
    const region = va >>> 22;
    if (this.superpageRegions[region] === 1) {
      this.superpageRegions[region] = 0;
      this.rewriteLog((_kind, vpn) => vpn >>> 10 === region);
      return;
    }
    const vpn = va >>> 12;
    const slot = slotOf(vpn);
    for (let kind = 0; kind < 6; kind++) {
      const array = this.arrays[kind]!;
      const tag = array[slot]!;
      if (tag !== 0 && tagVpn(tag) === vpn) {
        array[slot] = 0;
        if (!isWriteKind(kind) || this.idLive[tagId(tag)] === 1) this.entriesDropped++;
      }
    }
  }

  /**
   * Drops the entries of `count` virtual pages from `firstVpn` whose tag carries `asid` (what a
   * shadow entry dropped by a trace had produced). Returns how many were dropped.
   */
  flushVpnRange(firstVpn: number, count: number, asid: number): number {
    const before = this.entriesDropped;
    // Write entries of this ASID carry its write id of the current generation (older ones are
    // retired already and can never hit).
    const writeId = this.liveWriteId(asid);
    if (count <= 1024) {
      // Visit the slots themselves: cheaper than a pass over a long fill log. Log records of the
      // entries dropped here are forgotten at the next compaction (their tags no longer match).
      for (let vpn = firstVpn; vpn < firstVpn + count; vpn++) {
        const slot = slotOf(vpn);
        for (let kind = 0; kind < 6; kind++) {
          const array = this.arrays[kind]!;
          const tag = array[slot]!;
          if (tag !== 0 && tagVpn(tag) === vpn && tagId(tag) === (isWriteKind(kind) ? writeId : asid)) {
            array[slot] = 0;
            this.entriesDropped++;
          }
        }
      }
    } else {
      this.rewriteLog((kind, vpn, _gpn, tag) => vpn >= firstVpn && vpn < firstVpn + count && tagId(tag) === (isWriteKind(kind) ? writeId : asid));
    }
    return this.entriesDropped - before;
  }

  /** Drops entries whose tag carries this address-space id. */
  flushAsid(asid: number): void {
    const writeId = this.liveWriteId(asid);
    this.rewriteLog((kind, _vpn, _gpn, tag) => tagId(tag) === (isWriteKind(kind) ? writeId : asid));
  }

  /**
   * Drops entries derived from a guest page (P2M change shootdown): walks the page's chain of log
   * records, so it costs O(entries filled from that page), whatever the length of the log.
   */
  flushGpn(gpn: number): number {
    if (gpn < 0 || gpn >= this.gpnHead.length) return 0;
    let link = this.gpnHead[gpn]!;
    const start = this.logStart;
    if (link <= start) return 0;
    this.gpnHead[gpn] = 0;
    const before = this.entriesDropped;
    while (link > start) {
      const at = (link - 1) & LOG_MASK;
      link = this.logNext[at]!;
      if (this.logKindVpn[at] === DEAD_RECORD) continue;
      this.dropLogged(at);
      this.logKindVpn[at] = DEAD_RECORD;
      this.logGpn[at] = -1;
      this.deadRecords++;
    }
    return this.entriesDropped - before;
  }

  /** Drops entries derived from any guest page marked in the bitmap. */
  flushGpns(marked: Uint8Array): number {
    const before = this.entriesDropped;
    this.rewriteLog((_kind, _vpn, loggedGpn) => loggedGpn >= 0 && marked[loggedGpn] === 1);
    return this.entriesDropped - before;
  }

  /** Drops the read/write entries of one mode (e.g. supervisor entries after SUM/MXR change). */
  flushKinds(kinds: readonly TlbKindId[]): void {
    this.rewriteLog((kind) => kinds.includes(kind as TlbKindId));
  }

  /**
   * Drops read/write entries that lead to a host frame (the frame just got decoded code, so its
   * writes must now take the slow path). The frame is recovered from the entry's addend.
   */
  flushWritesToFrame(frame: number): void {
    this.rewriteLog((kind, vpn) => {
      if (!isWriteKind(kind)) return false;
      return ((this.arrays[kind]![slotOf(vpn) + 1]! + vpn * 4096) >>> 12) === frame;
    });
  }

  /**
   * Drops every write entry (both modes) by a pass over the log. The write context stays the
   * same, so unlike revokeWrites this is safe at any time, even in the middle of a slice.
   */
  flushWrites(): void {
    this.rewriteLog((kind) => isWriteKind(kind));
  }

  /** Drops execute entries that point at a decoded-code base. */
  flushExecBase(codeBase: number): void {
    this.rewriteLog((kind, vpn) => (kind === TlbKind.S_EXEC || kind === TlbKind.U_EXEC) && this.arrays[kind]![slotOf(vpn) + 1] === codeBase);
  }

  get loggedFills(): number {
    return this.logEnd - this.logStart;
  }

  /** @internal For tests: numbers the next log records from `seq` (the log must be empty). */
  startSequenceAt(seq: number): void {
    if (this.logEnd !== this.logStart) throw new Error('startSequenceAt: the fill log is not empty');
    this.gpnHead.fill(0);
    this.logStart = this.logEnd = seq;
  }

  // ---------------------------------------------------------------------------------------------
  // Write contexts

  /**
   * The context write entries of the selected ASID carry, and stores compare against: read it
   * wherever the read context is (re)loaded. It changes on selectAsid and revokeWrites only.
   */
  wctx = TAG_VALID;

  /** The selected ASID (the vCPU's current one). */
  private asid = 0;
  /** The write generation: an ASID's write id is valid while `idGeneration[asid]` equals it. */
  private generation = 1;
  private readonly idGeneration = new Int32Array(ID_COUNT);
  private readonly writeIdOf = new Int16Array(ID_COUNT);
  /** Per write id: 1 while live (some ASID holds it in the current generation), else 0. */
  private readonly idLive = new Uint8Array(ID_COUNT);
  /** Ids no entry carries. */
  private readonly freeIds = new Int16Array(ID_COUNT);
  private freeCount = 0;
  /** Ids live in the current generation (at most one per ASID). */
  private readonly liveIds = new Int16Array(ID_COUNT);
  private liveCount = 0;
  /** Ids retired since the running sweep started (the next sweep frees them). */
  private readonly retiredIds = new Int16Array(ID_COUNT);
  private retiredCount = 0;
  /** Ids retired before the running sweep started: free when it ends. */
  private readonly sweptIds = new Int16Array(ID_COUNT);
  private sweptCount = 0;
  /** The running sweep: log records [sweepCursor, sweepEnd) remain to visit. */
  private sweeping = false;
  private sweepCursor = 0;
  private sweepEnd = 0;

  /**
   * @internal Returns this TLB to the state of a new one, for TlbArena to hand it out again. Its
   * entry arrays and fill log must already read as zero (the arena released their memory).
   */
  resetReleased(): void {
    this.logStart = 0;
    this.logEnd = 0;
    this.deadRecords = 0;
    this.fills = 0;
    this.entriesDropped = 0;
    this.fullFlushes = 0;
    this.revocations = 0;
    this.writeIdPasses = 0;
    this.evictions = 0;
    this.gpnHead = new Int32Array(0);
    this.superpageRegions.fill(0);
    this.asid = 0;
    this.generation = 1;
    this.idGeneration.fill(0);
    this.writeIdOf.fill(0);
    this.idLive.fill(0);
    this.liveIds.fill(0);
    this.liveCount = 0;
    this.retiredIds.fill(0);
    this.retiredCount = 0;
    this.sweptIds.fill(0);
    this.sweptCount = 0;
    this.sweeping = false;
    this.sweepCursor = 0;
    this.sweepEnd = 0;
    this.freeIds.fill(0);
    this.freeCount = 0;
    for (let id = ID_COUNT - 1; id >= 0; id--) this.freeIds[this.freeCount++] = id;
    this.wctx = this.writeContextFor(0);
  }

  get selectedAsid(): number {
    return this.asid;
  }

  /** Selects the ASID of the running address space (the vCPU calls it when its ptbr changes). */
  selectAsid(asid: number): void {
    this.asid = asid & ID_MASK;
    this.wctx = this.writeContextFor(this.asid);
  }

  /**
   * Revokes every write entry, of both modes and every ASID, in O(1) amortized: the current
   * write ids are retired and the selected ASID gets a fresh one (the others get theirs when next
   * selected), so no store can hit an entry filled before this call. Read and execute entries
   * stay. Call it between slices (or from a slow path after which the vCPU's run loop reloads its
   * contexts, as after a system instruction): a run loop that keeps comparing stores against the
   * old `wctx` would still hit the old entries.
   */
  revokeWrites(): void {
    this.retireLiveIds();
    this.revocations++;
    this.wctx = this.writeContextFor(this.asid);
  }

  /** Starts a new write generation: every live id is retired, and no ASID has one. */
  private retireLiveIds(): void {
    for (let n = 0; n < this.liveCount; n++) {
      const id = this.liveIds[n]!;
      this.idLive[id] = 0;
      this.retiredIds[this.retiredCount++] = id;
    }
    this.liveCount = 0;
    if (++this.generation === 0x7fffffff) {
      this.idGeneration.fill(0);
      this.generation = 1;
    }
  }

  /** The write id of an ASID in the current generation, or -1 (then it has no live write entry). */
  private liveWriteId(asid: number): number {
    return this.idGeneration[asid & ID_MASK] === this.generation ? this.writeIdOf[asid & ID_MASK]! : -1;
  }

  private writeContextFor(asid: number): number {
    let id = this.liveWriteId(asid);
    if (id < 0) {
      id = this.allocateWriteId();
      this.idLive[id] = 1;
      this.liveIds[this.liveCount++] = id;
      this.writeIdOf[asid] = id;
      this.idGeneration[asid] = this.generation;
    }
    return TAG_VALID | (id << ASID_TAG_SHIFT);
  }

  private allocateWriteId(): number {
    if (this.retiredCount > 0 && (!this.sweeping || this.sweepCursor === this.logStart)) this.startSweep();
    if (this.sweeping && this.freeCount <= LOW_FREE_IDS) {
      // Few ids left: sweep enough per allocation that the sweep ends before they run out.
      const remaining = this.sweepEnd - this.sweepCursor;
      this.sweep(this.freeCount <= 32 ? remaining : Math.ceil(remaining / (this.freeCount - 32)));
    }
    if (this.freeCount === 0) {
      // The sweeps fell behind: one pass over the log frees every retired id. Some id is retired
      // (there are as many ids as ASIDs, and the caller's ASID has none live), so one is freed.
      this.rewriteLog(null);
      this.writeIdPasses++;
    }
    return this.freeIds[--this.freeCount]!;
  }

  /**
   * Starts a sweep of the log for the ids retired so far (fills and allocations advance it), or
   * restarts one that has not advanced yet so that it covers them too.
   */
  private startSweep(): void {
    for (let n = 0; n < this.retiredCount; n++) this.sweptIds[this.sweptCount++] = this.retiredIds[n]!;
    this.retiredCount = 0;
    this.sweeping = true;
    this.sweepCursor = this.logStart;
    this.sweepEnd = this.logEnd;
    this.sweep(0);
  }

  /**
   * Visits up to `budget` more log records of the running sweep and drops the write entries
   * carrying retired ids. Ids retired before the sweep started are free when it ends: all their
   * entries were filled before it started, so their records lie before sweepEnd (an eviction
   * drops the oldest records with their entries; any pass that rewrites the log frees every
   * retired id itself and ends the sweep).
   */
  private sweep(budget: number): void {
    const end = Math.min(this.sweepEnd, this.sweepCursor + budget);
    for (let seq = this.sweepCursor; seq < end; seq++) {
      const packed = this.logKindVpn[seq & LOG_MASK]!;
      if (packed === DEAD_RECORD) continue;
      const kind = packed >>> 20;
      if (!isWriteKind(kind)) continue;
      const vpn = packed & 0xfffff;
      const array = this.arrays[kind]!;
      const slot = slotOf(vpn);
      const tag = array[slot]!;
      if (tag !== 0 && tagVpn(tag) === vpn && this.idLive[tagId(tag)] === 0) array[slot] = 0;
    }
    if (end > this.sweepCursor) this.sweepCursor = end;
    if (this.sweepCursor >= this.sweepEnd) {
      this.sweeping = false;
      for (let n = 0; n < this.sweptCount; n++) this.freeIds[this.freeCount++] = this.sweptIds[n]!;
      this.sweptCount = 0;
    }
  }

  /** No entry carries a retired id any more (the whole log was visited or emptied): free them. */
  private reclaimRetiredIds(): void {
    for (let n = 0; n < this.sweptCount; n++) this.freeIds[this.freeCount++] = this.sweptIds[n]!;
    for (let n = 0; n < this.retiredCount; n++) this.freeIds[this.freeCount++] = this.retiredIds[n]!;
    this.sweptCount = 0;
    this.retiredCount = 0;
    this.sweeping = false;
  }

  // ---------------------------------------------------------------------------------------------
  // The log

  /** Drops the entry a record names if it is still there (counted if it could still hit). */
  private dropLogged(index: number): void {
    const packed = this.logKindVpn[index]!;
    if (packed === DEAD_RECORD) return;
    const kind = packed >>> 20;
    const array = this.arrays[kind]!;
    const vpn = packed & 0xfffff;
    const slot = slotOf(vpn);
    const tag = array[slot]!;
    if (tag !== 0 && tagVpn(tag) === vpn) {
      array[slot] = 0;
      if (!isWriteKind(kind) || this.idLive[tagId(tag)] === 1) this.entriesDropped++;
    }
  }

  /**
   * One pass over the log, in order: forgets records whose entry is gone, drops the entries that
   * `matches` selects, drops entries carrying retired write ids (uncounted: they could not hit),
   * keeps the rest, and relinks the per-gpn chains of the records kept. Every retired id is free
   * afterwards. When the sequence numbers have grown high, they start again near 0.
   */
  private rewriteLog(matches: ((kind: number, vpn: number, gpn: number, tag: number) => boolean) | null): void {
    const start = this.logStart;
    const end = this.logEnd;
    const kindVpn = this.logKindVpn;
    const gpns = this.logGpn;
    const next = this.logNext;
    const heads = this.gpnHead;
    const arrays = this.arrays;
    const idLive = this.idLive;
    // Kept records get the sequence numbers from `base` on, in the same ring positions.
    let base = start;
    if (end >= RENUMBER_AT) {
      base = start & LOG_MASK;
      heads.fill(0); // links of the old numbering must not look live in the new one
    }
    let kept = 0;
    for (let seq = start; seq < end; seq++) {
      const at = seq & LOG_MASK;
      const packed = kindVpn[at]!;
      if (packed === DEAD_RECORD) continue;
      const gpn = gpns[at]!;
      const kind = packed >>> 20;
      const vpn = packed & 0xfffff;
      const array = arrays[kind]!;
      const slot = slotOf(vpn);
      const tag = array[slot]!;
      let keep = false;
      if (tag !== 0 && tagVpn(tag) === vpn) {
        if (isWriteKind(kind) && idLive[tagId(tag)] === 0) {
          array[slot] = 0;
        } else if (matches !== null && matches(kind, vpn, gpn, tag)) {
          array[slot] = 0;
          this.entriesDropped++;
        } else {
          keep = true;
        }
      }
      const to = (base + kept) & LOG_MASK;
      if (gpn >= 0) {
        // Until this pass reaches a page's first record, its head is the old link to its newest
        // record (> seq); links this pass made are no greater than seq (base + kept <= seq).
        const head = heads[gpn]!;
        const previous = head > seq ? 0 : head;
        if (keep) {
          next[to] = previous;
          heads[gpn] = base + kept + 1;
        } else {
          heads[gpn] = previous;
        }
      }
      if (keep) {
        kindVpn[to] = packed;
        gpns[to] = gpn;
        kept++;
      }
    }
    this.logStart = base;
    this.logEnd = base + kept;
    this.deadRecords = 0;
    this.reclaimRetiredIds();
  }
}

/** Hands out TLBs; the hypervisor carves them from one native arena so VM creation is cheap. */
export interface TlbProvider {
  acquire(): SoftTlb;
  release(tlb: SoftTlb): void;
}

/** Memory for TLBs: zeroed on creation, and `release` gives a range back zeroed. */
export interface TlbArenaMemory {
  readonly buffer: ArrayBuffer;
  readonly bytes: number;
  release(offset: number, length: number): void;
}

/**
 * TLBs carved from one arena (an anonymous no-reserve mapping): creating a vCPU takes views on
 * a free slot instead of allocating megabytes that the JS heap would account for, and a freed
 * slot is returned to the OS (and so zeroed) for the next vCPU. Falls back to plain allocation
 * when the arena is full or absent.
 */
export class TlbArena implements TlbProvider {
  /** Slots never handed out yet. */
  private readonly free: number[] = [];
  /**
   * TLBs given back: their memory released (zero again) and their fields reset, so the next
   * acquire hands one out as it is instead of building the object and its views again.
   */
  private readonly released: SoftTlb[] = [];
  private readonly slotOf = new Map<SoftTlb, number>();

  constructor(private readonly memory: TlbArenaMemory | null) {
    const slots = memory ? Math.floor(memory.bytes / SOFT_TLB_BYTES) : 0;
    for (let slot = slots - 1; slot >= 0; slot--) this.free.push(slot);
  }

  acquire(): SoftTlb {
    const reused = this.released.pop();
    if (reused !== undefined) return reused;
    const slot = this.free.pop();
    if (slot === undefined || !this.memory) return new SoftTlb();
    const tlb = new SoftTlb({ buffer: this.memory.buffer, byteOffset: slot * SOFT_TLB_BYTES });
    this.slotOf.set(tlb, slot);
    return tlb;
  }

  release(tlb: SoftTlb): void {
    const slot = this.slotOf.get(tlb);
    if (slot === undefined || !this.memory || this.released.includes(tlb)) return;
    this.memory.release(slot * SOFT_TLB_BYTES, SOFT_TLB_BYTES);
    tlb.resetReleased();
    this.released.push(tlb);
  }
}
