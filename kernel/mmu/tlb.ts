/**
 * The software TLB of one vCPU: flat arrays with one entry per virtual page, separate for read,
 * write and execute, and separate for supervisor and user mode (permissions differ by mode).
 *
 * An entry is two Int32 slots: [tag, value]. The tag is `pageVa | TAG_VALID | asid << 2`, and the
 * fast path compares it against `(va & (0xfffff000 | alignMask)) | context`, so one compare checks
 * the page, the address space and natural alignment at once (a misaligned address has low bits
 * set and never matches). For read/write the value is the addend `hostOffset - pageVa`; for
 * execute it is the decoded-code base of the page.
 *
 * Every fill is logged (kind, vpn, gpn) so that flushes and shootdowns touch only filled entries
 * instead of clearing 8 MiB arrays; when the log is full the whole TLB is flushed.
 */

export const TAG_VALID = 0x800;
export const ASID_TAG_SHIFT = 2;

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

/**
 * Entries per array: direct-mapped by the low 18 bits of the virtual page number, so two pages
 * collide only when they are a multiple of 1 GiB apart. The tag holds the whole page, so a
 * collision is a miss, never a wrong hit. (A flat 1M-entry table costs 48 MiB per vCPU, and
 * allocating that much made VM creation and fork pay for garbage collections.)
 */
export const TLB_ENTRIES = 1 << 18;
export const TLB_INDEX_MASK = TLB_ENTRIES - 1;
const LOG_CAPACITY = 1 << 17;
const ARRAY_INTS = TLB_ENTRIES * 2;

/** Bytes of backing one SoftTlb needs (six arrays and the fill log), 4 KiB-aligned. */
export const SOFT_TLB_BYTES = Math.ceil(((6 * ARRAY_INTS + 2 * LOG_CAPACITY) * 4) / 4096) * 4096;

function slotOf(vpn: number): number {
  return (vpn & TLB_INDEX_MASK) * 2;
}

/** The virtual page number a tag names. */
function tagVpn(tag: number): number {
  return tag >>> 12;
}

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
  /** kind << 20 | vpn per fill. */
  private readonly logKindVpn: Int32Array;
  /** Guest page number (or -1) per fill, for P2M shootdowns. */
  private readonly logGpn: Int32Array;
  private logLength = 0;

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
    this.arrays = [this.sRead, this.sWrite, this.sExec, this.uRead, this.uWrite, this.uExec];
  }

  fills = 0;
  entriesDropped = 0;
  fullFlushes = 0;

  array(kind: TlbKindId): Int32Array {
    return this.arrays[kind]!;
  }

  fill(kind: TlbKindId, va: number, context: number, value: number, gpn: number): void {
    if (this.logLength === LOG_CAPACITY) this.evictOldestHalf();
    const vpn = va >>> 12;
    const array = this.arrays[kind]!;
    const slot = slotOf(vpn);
    array[slot] = (va & 0xfffff000) | context;
    array[slot + 1] = value;
    this.logKindVpn[this.logLength] = (kind << 20) | vpn;
    this.logGpn[this.logLength] = gpn;
    this.logLength++;
    this.fills++;
    if (gpn >= 0) {
      if (gpn >= this.gpnMarks.length) this.growMarks(gpn);
      this.gpnMarks[gpn] = 1;
    }
  }

  /**
   * Per guest page: 1 if some entry may have been filled from it since the last full flush. A
   * shootdown of a page this vCPU never filled then costs nothing instead of a pass over the log.
   */
  private gpnMarks = new Uint8Array(0);

  private growMarks(gpn: number): void {
    let size = Math.max(1024, this.gpnMarks.length);
    while (size <= gpn) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.gpnMarks);
    this.gpnMarks = grown;
  }

  /**
   * The log is full: drop the entries of its older half and keep the newer half, so a working
   * set larger than the log loses its least recently filled translations rather than all of
   * them (a full flush here made a 256 MiB random-access guest miss on ~72% of accesses).
   */
  private evictOldestHalf(): void {
    const half = this.logLength >>> 1;
    for (let i = 0; i < half; i++) this.dropLogged(i);
    this.logKindVpn.copyWithin(0, half, this.logLength);
    this.logGpn.copyWithin(0, half, this.logLength);
    this.logLength -= half;
    this.evictions++;
  }

  /** Times the fill log overflowed and its older half was dropped. */
  evictions = 0;

  /** Drops every entry. */
  flushAll(): void {
    for (let i = 0; i < this.logLength; i++) this.dropLogged(i);
    this.logLength = 0;
    this.gpnMarks.fill(0);
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
      this.compact((_kind, vpn) => vpn >>> 10 === region);
      return;
    }
    const vpn = va >>> 12;
    const slot = slotOf(vpn);
    for (const array of this.arrays) {
      const tag = array[slot]!;
      if (tag !== 0 && tagVpn(tag) === vpn) {
        array[slot] = 0;
        this.entriesDropped++;
      }
    }
  }

  /**
   * Drops the entries of `count` virtual pages from `firstVpn` whose tag carries `asid` (what a
   * shadow entry dropped by a trace had produced). Returns how many were dropped.
   */
  flushVpnRange(firstVpn: number, count: number, asid: number): number {
    const before = this.entriesDropped;
    const matches = (tag: number): boolean => tag !== 0 && ((tag >>> ASID_TAG_SHIFT) & 0x1ff) === asid;
    if (count <= 1024) {
      // Visit the slots themselves: cheaper than a pass over a long fill log. Log records of the
      // entries dropped here are forgotten at the next compaction (their tags no longer match).
      for (let vpn = firstVpn; vpn < firstVpn + count; vpn++) {
        const slot = slotOf(vpn);
        for (const array of this.arrays) {
          const tag = array[slot]!;
          if (matches(tag) && tagVpn(tag) === vpn) {
            array[slot] = 0;
            this.entriesDropped++;
          }
        }
      }
    } else {
      this.compact((kind, vpn) => vpn >= firstVpn && vpn < firstVpn + count && matches(this.arrays[kind]![slotOf(vpn)]!));
    }
    return this.entriesDropped - before;
  }

  /** Drops entries whose tag carries this address-space id. */
  flushAsid(asid: number): void {
    this.compact((kind, vpn) => ((this.arrays[kind]![slotOf(vpn)]! >>> ASID_TAG_SHIFT) & 0x1ff) === asid);
  }

  /** Drops entries derived from a guest page (P2M change shootdown). */
  flushGpn(gpn: number): number {
    if (gpn >= this.gpnMarks.length || this.gpnMarks[gpn] === 0) return 0;
    const before = this.entriesDropped;
    this.compact((_kind, _vpn, loggedGpn) => loggedGpn === gpn);
    return this.entriesDropped - before;
  }

  /** Drops entries derived from any guest page marked in the bitmap. */
  flushGpns(marked: Uint8Array): number {
    const before = this.entriesDropped;
    this.compact((_kind, _vpn, loggedGpn) => loggedGpn >= 0 && marked[loggedGpn] === 1);
    return this.entriesDropped - before;
  }

  /** Drops the read/write entries of one mode (e.g. supervisor entries after SUM/MXR change). */
  flushKinds(kinds: readonly TlbKindId[]): void {
    this.compact((kind) => kinds.includes(kind as TlbKindId));
  }

  /**
   * Drops read/write entries that lead to a host frame (the frame just got decoded code, so its
   * writes must now take the slow path). The frame is recovered from the entry's addend.
   */
  flushWritesToFrame(frame: number): void {
    this.compact((kind, vpn) => {
      if (kind !== TlbKind.S_WRITE && kind !== TlbKind.U_WRITE) return false;
      return ((this.arrays[kind]![slotOf(vpn) + 1]! + vpn * 4096) >>> 12) === frame;
    });
  }

  /** Drops every write entry (both modes). */
  flushWrites(): void {
    this.compact((kind) => kind === TlbKind.S_WRITE || kind === TlbKind.U_WRITE);
  }

  /** Drops execute entries that point at a decoded-code base. */
  flushExecBase(codeBase: number): void {
    this.compact((kind, vpn) => (kind === TlbKind.S_EXEC || kind === TlbKind.U_EXEC) && this.arrays[kind]![slotOf(vpn) + 1] === codeBase);
  }

  get loggedFills(): number {
    return this.logLength;
  }

  private dropLogged(index: number): void {
    const packed = this.logKindVpn[index]!;
    const array = this.arrays[packed >>> 20]!;
    const vpn = packed & 0xfffff;
    const slot = slotOf(vpn);
    const tag = array[slot]!;
    if (tag !== 0 && tagVpn(tag) === vpn) {
      array[slot] = 0;
      this.entriesDropped++;
    }
  }

  /** Drops logged entries matching the predicate and keeps the rest of the log. */
  private compact(matches: (kind: number, vpn: number, gpn: number) => boolean): void {
    let kept = 0;
    for (let i = 0; i < this.logLength; i++) {
      const packed = this.logKindVpn[i]!;
      const kind = packed >>> 20;
      const vpn = packed & 0xfffff;
      const tag = this.arrays[kind]![slotOf(vpn)]!;
      if (tag === 0 || tagVpn(tag) !== vpn) continue; // already gone (or replaced): forget it
      if (matches(kind, vpn, this.logGpn[i]!)) {
        this.dropLogged(i);
      } else {
        this.logKindVpn[kept] = packed;
        this.logGpn[kept] = this.logGpn[i]!;
        kept++;
      }
    }
    this.logLength = kept;
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
  private readonly free: number[] = [];
  private readonly slotOf = new Map<SoftTlb, number>();

  constructor(private readonly memory: TlbArenaMemory | null) {
    const slots = memory ? Math.floor(memory.bytes / SOFT_TLB_BYTES) : 0;
    for (let slot = slots - 1; slot >= 0; slot--) this.free.push(slot);
  }

  acquire(): SoftTlb {
    const slot = this.free.pop();
    if (slot === undefined || !this.memory) return new SoftTlb();
    const tlb = new SoftTlb({ buffer: this.memory.buffer, byteOffset: slot * SOFT_TLB_BYTES });
    this.slotOf.set(tlb, slot);
    return tlb;
  }

  release(tlb: SoftTlb): void {
    const slot = this.slotOf.get(tlb);
    if (slot === undefined || !this.memory) return;
    this.slotOf.delete(tlb);
    this.memory.release(slot * SOFT_TLB_BYTES, SOFT_TLB_BYTES);
    this.free.push(slot);
  }
}
