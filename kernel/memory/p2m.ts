/**
 * P2M (physical-to-machine map) entries: guest page number → host frame, or the reason a guest
 * page has no frame. Only kernel/memory reads and writes entries; everything else goes through
 * GuestMemory (kernel/memory/guest-memory.ts).
 *
 * Entry encoding (Int32):
 *   0          untouched (zero on demand), or — in a VM forked from another — "as in the shared
 *              generation below" (P2mGeneration). Zero so that a new P2M needs no fill.
 *   present    bit 31 = 0 | bit 30 = 1 | bits 24-29 protection flags | bits 0-23 host frame
 *   absent     bit 31 = 1 | bits 28-30 absent state | bits 0-27 payload (block, slot, …)
 * So `entry > 0` is present and `entry <= 0` is absent. An explicit absent UNTOUCHED entry
 * (0x8000_0000) means "zero on demand" even above a generation that has the page.
 */

/** Protection flags of a present entry. Any flag in WRITE_BLOCKING makes guest writes exit. */
export const P2mFlag = {
  /** Shared copy-on-write (fork, content sharing): a write must first get a private copy. */
  COPY_ON_WRITE: 1 << 24,
  /** Holds a guest page table that the shadow MMU traces (T-1). */
  TRACED: 1 << 25,
  /** Not yet saved by a running checkpoint (T-12): preserve old contents before a write. */
  CHECKPOINT: 1 << 26,
  /** Reserved: covered by parity pages (T-17, issue 12). No resolver yet: a write stops the VM. */
  PARITY: 1 << 27,
  /** Reserved: watched (sampling, T-8/T-9, issue 11): accesses are never cached in TLBs. */
  WATCH: 1 << 28,
} as const;

/** Flags no service resolves yet (PARITY has services/recovery's): a write to such a page stops the VM, naming the flag. */
export const RESERVED_FLAGS = P2mFlag.WATCH;

export const P2M_PRESENT_BIT = 1 << 30;
export const P2M_FLAG_MASK = 0x3f00_0000;
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
/** Flags that belong to one VM's view (its MMU, its policies), not to the shared contents. */
export const P2M_PER_VM_FLAGS = P2mFlag.TRACED | P2mFlag.CHECKPOINT | P2mFlag.PARITY | P2mFlag.WATCH;

/** Why a guest page has no frame, and so who resolves an access to it. */
export const AbsentState = {
  /** Never touched: the kernel allocates a zero frame on first access. */
  UNTOUCHED: 0,
  /** In a checkpoint storage block (payload: block index) — lazy restore, T-11. */
  LAZY: 1,
  /** Swapped out by the hypervisor (payload: swap slot). */
  SWAPPED: 2,
  /** In the guest's balloon (T-5): no frame, no contents. The balloon device (devices/balloon.ts) resolves an access as a guest error; a VM without one has no resolver. */
  BALLOONED: 3,
  /** Reserved: held in a content-sharing store (payload: share id). Page sharing (issue 10) keeps shared pages present, as copy-on-write frames, so nothing resolves this state yet. */
  SHARED: 4,
  /** Lost to an uncorrectable memory error (T-17): services/recovery resolves it (rebuild from a clean copy, or a machine check); with no resolver the access is refused as a machine check. */
  POISONED: 5,
  /** Still on the source host of a post-copy migration (T-13): services/migration fetches it. */
  REMOTE: 6,
} as const;
/** One of the AbsentState values. */
export type AbsentStateId = (typeof AbsentState)[keyof typeof AbsentState];
/** AbsentState names by value, as messages and exit counters use them. */
export const ABSENT_STATE_NAMES = ['untouched', 'lazy', 'swapped', 'ballooned', 'shared', 'poisoned', 'remote'] as const;
/** States that are in the encoding but that no service resolves yet (the others have resolvers a service registers). */
export const RESERVED_STATES: readonly AbsentStateId[] = [AbsentState.SHARED];

const ABSENT_BIT = 0x8000_0000 | 0;
const PAYLOAD_MASK = 0x0fff_ffff;
/** Largest payload an absent entry can carry. */
export const P2M_MAX_PAYLOAD = PAYLOAD_MASK;

export const P2mEntry = {
  present(frame: number, flags = 0): number {
    return P2M_PRESENT_BIT | (frame & P2M_FRAME_MASK) | (flags & P2M_FLAG_MASK);
  },
  absent(state: AbsentStateId, payload = 0): number {
    return ABSENT_BIT | (state << 28) | (payload & PAYLOAD_MASK);
  },
  isPresent(entry: number): boolean {
    return entry > 0;
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
    if (entry > 0) return `frame ${entry & P2M_FRAME_MASK}${entry & P2M_FLAG_MASK ? ` flags 0x${((entry & P2M_FLAG_MASK) >>> 24).toString(16)}` : ''}`;
    if (entry === 0) return 'untouched';
    return `${ABSENT_STATE_NAMES[(entry >>> 28) & 7] ?? 'invalid'} (payload ${entry & PAYLOAD_MASK})`;
  },
} as const;

/** Untouched, explicitly (does not inherit from a generation). */
export const UNTOUCHED_ENTRY = P2mEntry.absent(AbsentState.UNTOUCHED);

import type { ZeroedArena } from './zeroed-arena.ts';

/** How many views read through one generation: the forked VM and its child. */
const INHERITORS = 2;

/**
 * A frozen P2M shared by the two VMs of a fork (T-13): at fork the parent's entries become a
 * generation and parent and child each get an empty P2M whose zero entries read through to it.
 * Nothing is copied and no reference count changes at fork time, so fork costs the same at any
 * memory size. The generation holds the frame references the parent held; a view that stops
 * reading a page through it (it wrote the page, released it, or was destroyed) *takes* or
 * *drops* the page, and the second of the two gives the generation's reference away or releases
 * it. Generations chain when a child forks again; a lookup walks the chain.
 *
 * A generation's entries never change meaning: the only writes are materialisations of an entry
 * from its own base (same contents) and clearing entries no view can read any more.
 */
export class P2mGeneration {
  readonly entries: Int32Array;
  readonly base: P2mGeneration | null;
  /** Per page: how many of the two views no longer read it through here. */
  private readonly taken: Uint8Array;

  /** Views (VM memories) still reading through this generation. */
  private viewsLeft = INHERITORS;

  constructor(
    entries: Int32Array,
    base: P2mGeneration | null,
    private readonly arena: ZeroedArena,
    private readonly releaseFrame: (frame: number) => void,
    private readonly retainFrame: (frame: number) => void,
  ) {
    this.entries = entries;
    this.base = base;
    this.taken = arena.uint8(entries.length);
  }

  /**
   * A view has taken or dropped every page it read through here (a reset or a destroy): when
   * both have, nothing refers to this generation's arrays any more.
   */
  detachView(): void {
    if (--this.viewsLeft > 0) return;
    this.arena.release(this.entries);
    this.arena.release(this.taken);
  }

  /** The entry a view reading through here sees for gpn (as stored, flags included). */
  lookup(gpn: number): number {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    let generation: P2mGeneration = this;
    for (;;) {
      const entry = generation.entries[gpn]!;
      if (entry !== 0 || generation.base === null) return entry;
      generation = generation.base;
    }
  }

  /**
   * One view takes gpn over: returns the entry, and for a present one a frame reference that
   * now belongs to the caller.
   */
  take(gpn: number): number {
    let entry = this.entries[gpn]!;
    if (entry === 0 && this.base !== null) {
      // This generation now holds it directly (an untouched page explicitly, so that the base is
      // taken from once for this generation, never once per view).
      entry = this.base.take(gpn);
      if (entry === 0) entry = UNTOUCHED_ENTRY;
      this.entries[gpn] = entry;
    }
    const last = ++this.taken[gpn]! === INHERITORS;
    if (entry > 0 && !last) this.retainFrame(entry & P2M_FRAME_MASK);
    if (last) this.entries[gpn] = 0; // no view reads it here any more; the reference moved
    return entry;
  }

  /** One view stops reading gpn through here without taking it. */
  drop(gpn: number): void {
    if (++this.taken[gpn]! !== INHERITORS) return;
    const entry = this.entries[gpn]!;
    this.entries[gpn] = 0;
    if (entry > 0) this.releaseFrame(entry & P2M_FRAME_MASK);
    else if (entry === 0 && this.base !== null) this.base.drop(gpn);
  }

  /**
   * A view goes (a reset or a destroy): it drops every page it still reads through here, i.e.
   * every page where its own entry (`own`) is 0. drop() per page, in one pass over two typed
   * arrays: destroying a forked 1 GiB child is a scan, not 262,144 calls.
   */
  dropView(own: Int32Array): void {
    const taken = this.taken;
    const entries = this.entries;
    for (let gpn = 0; gpn < own.length; gpn++) {
      if (own[gpn] !== 0 || ++taken[gpn]! !== INHERITORS) continue;
      const entry = entries[gpn]!;
      entries[gpn] = 0;
      if (entry > 0) this.releaseFrame(entry & P2M_FRAME_MASK);
      else if (entry === 0 && this.base !== null) this.base.drop(gpn);
    }
  }

  /** Generations below this one, this one included. */
  get depth(): number {
    let depth = 0;
    for (let generation: P2mGeneration | null = this; generation !== null; generation = generation.base) depth++;
    return depth;
  }
}
