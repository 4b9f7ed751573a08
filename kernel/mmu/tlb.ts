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

const ENTRIES = 1 << 20;
const LOG_CAPACITY = 1 << 16;

export function tlbContext(asid: number): number {
  return TAG_VALID | (asid << ASID_TAG_SHIFT);
}

export class SoftTlb {
  readonly sRead = new Int32Array(ENTRIES * 2);
  readonly sWrite = new Int32Array(ENTRIES * 2);
  readonly sExec = new Int32Array(ENTRIES * 2);
  readonly uRead = new Int32Array(ENTRIES * 2);
  readonly uWrite = new Int32Array(ENTRIES * 2);
  readonly uExec = new Int32Array(ENTRIES * 2);
  private readonly arrays: readonly Int32Array[] = [this.sRead, this.sWrite, this.sExec, this.uRead, this.uWrite, this.uExec];
  /** kind << 20 | vpn per fill. */
  private readonly logKindVpn = new Int32Array(LOG_CAPACITY);
  /** Guest page number (or -1) per fill, for P2M shootdowns. */
  private readonly logGpn = new Int32Array(LOG_CAPACITY);
  private logLength = 0;

  fills = 0;
  entriesDropped = 0;
  fullFlushes = 0;

  array(kind: TlbKindId): Int32Array {
    return this.arrays[kind]!;
  }

  fill(kind: TlbKindId, va: number, context: number, value: number, gpn: number): void {
    if (this.logLength === LOG_CAPACITY) this.flushAll();
    const vpn = va >>> 12;
    const array = this.arrays[kind]!;
    array[vpn * 2] = (va & 0xfffff000) | context;
    array[vpn * 2 + 1] = value;
    this.logKindVpn[this.logLength] = (kind << 20) | vpn;
    this.logGpn[this.logLength] = gpn;
    this.logLength++;
    this.fills++;
  }

  /** Drops every entry. */
  flushAll(): void {
    for (let i = 0; i < this.logLength; i++) this.dropLogged(i);
    this.logLength = 0;
    this.fullFlushes++;
  }

  /** Drops the entries of one virtual page in every array. */
  flushPage(va: number): void {
    const vpn = va >>> 12;
    for (const array of this.arrays) {
      if (array[vpn * 2] !== 0) {
        array[vpn * 2] = 0;
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
    if (count === 1) {
      for (const array of this.arrays) {
        if (matches(array[firstVpn * 2]!)) {
          array[firstVpn * 2] = 0;
          this.entriesDropped++;
        }
      }
    } else {
      this.compact((kind, vpn) => vpn >= firstVpn && vpn < firstVpn + count && matches(this.arrays[kind]![vpn * 2]!));
    }
    return this.entriesDropped - before;
  }

  /** Drops entries whose tag carries this address-space id. */
  flushAsid(asid: number): void {
    this.compact((kind, vpn) => ((this.arrays[kind]![vpn * 2]! >>> ASID_TAG_SHIFT) & 0x1ff) === asid);
  }

  /** Drops entries derived from a guest page (P2M change shootdown). */
  flushGpn(gpn: number): number {
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
      return ((this.arrays[kind]![vpn * 2 + 1]! + vpn * 4096) >>> 12) === frame;
    });
  }

  /** Drops execute entries that point at a decoded-code base. */
  flushExecBase(codeBase: number): void {
    this.compact((kind, vpn) => (kind === TlbKind.S_EXEC || kind === TlbKind.U_EXEC) && this.arrays[kind]![vpn * 2 + 1] === codeBase);
  }

  get loggedFills(): number {
    return this.logLength;
  }

  private dropLogged(index: number): void {
    const packed = this.logKindVpn[index]!;
    const array = this.arrays[packed >>> 20]!;
    const slot = (packed & 0xfffff) * 2;
    if (array[slot] !== 0) {
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
      if (this.arrays[kind]![vpn * 2] === 0) continue; // already gone: forget it
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
