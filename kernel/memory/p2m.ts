/**
 * The P2M (physical-to-machine map) of one VM: guest page number → host frame, or the reason a
 * guest page has no frame. It is the seam between the kernel and the services: the kernel
 * resolves an absent entry or a protected write by calling the handler registered for that state
 * or protection bit.
 *
 * Entry encoding (Int32):
 *   present  bit 31 = 0 | bits 24-30 protection flags | bits 0-23 host frame
 *   absent   bit 31 = 1 | bits 28-30 absent state     | bits 0-27 payload (block, slot, …)
 */

/** Protection flags of a present entry. Any flag in WRITE_BLOCKING makes guest writes exit. */
export const P2mFlag = {
  /** Shared copy-on-write (fork, content sharing): a write must first get a private copy. */
  COPY_ON_WRITE: 1 << 24,
  /** Holds a guest page table that the shadow MMU traces (T-1). */
  TRACED: 1 << 25,
  /** Not yet saved by a running checkpoint (T-12): preserve old contents before a write. */
  CHECKPOINT: 1 << 26,
  /** Covered by parity pages (T-17): writes must update parity. */
  PARITY: 1 << 27,
  /** Watched: every access exits, nothing is cached in TLBs (sampling, T-9). */
  WATCH: 1 << 28,
} as const;

export const P2M_FLAG_MASK = 0x7f00_0000;
export const P2M_WRITE_BLOCKING = P2mFlag.COPY_ON_WRITE | P2mFlag.TRACED | P2mFlag.CHECKPOINT | P2mFlag.PARITY | P2mFlag.WATCH;
export const P2M_READ_BLOCKING = P2mFlag.WATCH;
/**
 * Flags whose handler must run before a write lands. TRACED is not one: a traced page takes
 * the write (no TLB write entry, so it reaches the slow path) and the MMU is told afterwards.
 */
export const P2M_RESOLVE_BEFORE_WRITE = P2M_WRITE_BLOCKING & ~P2mFlag.TRACED;
export const P2M_FRAME_MASK = 0x00ff_ffff;
/** Largest host frame number an entry can name (64 GiB of 4 KiB frames). */
export const P2M_MAX_FRAME = P2M_FRAME_MASK;

/** Why a guest page has no frame, and so who resolves an access to it. */
export const AbsentState = {
  /** Never touched: the kernel allocates a zero frame on first access. */
  UNTOUCHED: 0,
  /** In a checkpoint storage block (payload: block index) — lazy restore, T-11. */
  LAZY: 1,
  /** Swapped out by the hypervisor (payload: swap slot). */
  SWAPPED: 2,
  /** Reclaimed by the balloon (T-5). */
  BALLOONED: 3,
  /** Held in a content-sharing store (payload: share id). */
  SHARED: 4,
  /** Lost to an uncorrectable memory error (T-17). */
  POISONED: 5,
  /** To be fetched from another host or VM (payload: source page) — migration, T-13. */
  REMOTE: 6,
} as const;
export type AbsentStateId = (typeof AbsentState)[keyof typeof AbsentState];
export const ABSENT_STATE_NAMES = ['untouched', 'lazy', 'swapped', 'ballooned', 'shared', 'poisoned', 'remote'] as const;

const ABSENT_BIT = 0x8000_0000 | 0;
const PAYLOAD_MASK = 0x0fff_ffff;

export const P2mEntry = {
  present(frame: number, flags = 0): number {
    return (frame & P2M_FRAME_MASK) | (flags & P2M_FLAG_MASK);
  },
  absent(state: AbsentStateId, payload = 0): number {
    return ABSENT_BIT | (state << 28) | (payload & PAYLOAD_MASK);
  },
  isPresent(entry: number): boolean {
    return entry >= 0;
  },
  frame(entry: number): number {
    return entry & P2M_FRAME_MASK;
  },
  flags(entry: number): number {
    return entry & P2M_FLAG_MASK;
  },
  state(entry: number): AbsentStateId {
    return ((entry >>> 28) & 7) as AbsentStateId;
  },
  payload(entry: number): number {
    return entry & PAYLOAD_MASK;
  },
  describe(entry: number): string {
    if (entry >= 0) return `frame ${entry & P2M_FRAME_MASK}${entry & P2M_FLAG_MASK ? ` flags 0x${((entry & P2M_FLAG_MASK) >>> 24).toString(16)}` : ''}`;
    return `${ABSENT_STATE_NAMES[(entry >>> 28) & 7] ?? 'invalid'} (payload ${entry & PAYLOAD_MASK})`;
  },
} as const;

export const UNTOUCHED_ENTRY = P2mEntry.absent(AbsentState.UNTOUCHED);

/** One VM's P2M: a flat Int32Array indexed by guest page number. */
export class P2m {
  readonly entries: Int32Array;
  readonly pageCount: number;

  constructor(pageCount: number) {
    this.pageCount = pageCount;
    this.entries = new Int32Array(pageCount).fill(UNTOUCHED_ENTRY);
  }

  /** Counts entries by kind (for --stats). */
  census(): { present: number; absent: Record<string, number> } {
    const absent: Record<string, number> = {};
    let present = 0;
    for (let gpn = 0; gpn < this.pageCount; gpn++) {
      const entry = this.entries[gpn]!;
      if (entry >= 0) present++;
      else {
        const name = ABSENT_STATE_NAMES[(entry >>> 28) & 7] ?? 'invalid';
        absent[name] = (absent[name] ?? 0) + 1;
      }
    }
    return { present, absent };
  }
}
