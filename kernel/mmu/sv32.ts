/**
 * The Sv32 page-table walk (SPEC.md "Paging"), exactly as RISC-V defines it: two levels, 4 KiB
 * pages and 4 MiB superpages, permission checks by mode with SUM/MXR, and accessed/dirty bits set
 * in the guest's page table by the walk itself.
 *
 * The walker reads and writes guest page tables through guest-physical accessors, so absent P2M
 * states are resolved and write-protected page-table frames (copy-on-write after a fork) are
 * handled before an A/D update lands.
 */
import { Cause, Pte, PTE_PPN_SHIFT, Ptbr, StatusBit } from '../../guest-isa/arch.ts';
import { HOST_OFFSET_REFUSED } from '../memory/addresses.ts';

/** Kinds of memory access, as the walk, the MMU and Vm.readVirtual take them. */
export const Access = {
  /** A load. */
  READ: 0,
  /** A store (sets the D bit). */
  WRITE: 1,
  /** An instruction fetch. */
  EXEC: 2,
} as const;
/** One of the Access values. */
export type AccessKind = (typeof Access)[keyof typeof Access];

/** Guest-physical word access used by the walk. Offsets are host byte offsets into the pool. */
export interface PhysicalPageTables {
  /**
   * Host offset of a guest-physical word for reading, -1 when the address is not RAM, or
   * HOST_OFFSET_REFUSED (-2) when its page holds an error nobody repaired (a machine check).
   */
  hostOffsetForRead(gpa: number): number;
  /** Host offset of a page-table word the walk updates (resolving protections), -1 or -2 as above. */
  hostOffsetForPageTableWrite(gpa: number): number;
  /** Called after the walk's A/D update landed (decoded code in that frame is patched). */
  flushCodePatch(): void;
  /** The host pool as 32-bit words (offsets above are byte offsets into it). */
  readonly hostPool32: Int32Array;
  /** Called for every page-table page a walk reads (traces, T-1). */
  notePageTableRead?(gpn: number): void;
}

const PAGE_FAULT_BY_ACCESS = [Cause.LOAD_PAGE_FAULT, Cause.STORE_PAGE_FAULT, Cause.INSN_PAGE_FAULT] as const;
const ACCESS_FAULT_BY_ACCESS = [Cause.LOAD_ACCESS_FAULT, Cause.STORE_ACCESS_FAULT, Cause.INSN_ACCESS_FAULT] as const;

/** Page-fault cause for an access kind. */
export function pageFaultCause(access: AccessKind): number {
  return PAGE_FAULT_BY_ACCESS[access];
}

/**
 * Whether a leaf PTE permits an access in a mode (SPEC.md Sv32 step 5). Used by the walk and by
 * the shadow MMU on PTEs it has cached, so both decide the same way.
 */
export function leafPermits(pte: number, access: AccessKind, supervisor: boolean, status: number): boolean {
  const user = (pte & Pte.U) !== 0;
  if (supervisor) {
    if (user && (access === Access.EXEC || (status & StatusBit.SUM) === 0)) return false;
  } else if (!user) {
    return false;
  }
  if (access === Access.EXEC) return (pte & Pte.X) !== 0;
  if (access === Access.READ) return (pte & Pte.R) !== 0 || ((status & StatusBit.MXR) !== 0 && (pte & Pte.X) !== 0);
  return (pte & Pte.W) !== 0;
}

/** Guest-physical base of the page a leaf maps at `va` (level 1 = superpage). May be ≥ 2^32. */
export function leafPageGpa(pte: number, level: number, va: number): number {
  const ppn = pte >>> PTE_PPN_SHIFT;
  return level === 1 ? (ppn >>> 10) * 4194304 + (va & 0x3ff000) : ppn * 4096;
}

/** Reusable walker: results are left in fields so the walk allocates nothing. */
export class Sv32Walker {
  /** Guest-physical address of the last successful translation. */
  gpa = 0;
  /** The leaf PTE after A/D update. */
  pte = 0;
  /** 1 for a superpage leaf, 0 for a 4 KiB leaf. */
  level = 0;
  /** Trap cause of the last failed translation. */
  faultCause = 0;
  /** Guest page number of the root table and of the leaf table (-1 for a superpage) last used. */
  rootGpn = 0;
  leafTableGpn = -1;
  walks = 0;

  constructor(private readonly tables: PhysicalPageTables) {}

  /**
   * Translates `va` for `access` in `supervisor` mode under `ptbr` and `status`.
   * Returns true (fields gpa/pte/level set) or false (faultCause set).
   */
  translate(ptbr: number, va: number, access: AccessKind, supervisor: boolean, status: number): boolean {
    this.walks++;
    const tables = this.tables;
    const memory32 = tables.hostPool32;
    let tableGpa = (ptbr & Ptbr.PPN_MASK) * 4096;
    this.rootGpn = ptbr & Ptbr.PPN_MASK;
    this.leafTableGpn = -1;
    let level = 1;
    let pte = 0;
    let pteGpa = 0;
    for (;;) {
      const vpnPart = level === 1 ? va >>> 22 : (va >>> 12) & 0x3ff;
      pteGpa = tableGpa + vpnPart * 4;
      const hostOffset = tables.hostOffsetForRead(pteGpa);
      if (hostOffset < 0) return this.fail(hostOffset === HOST_OFFSET_REFUSED ? Cause.MACHINE_CHECK : ACCESS_FAULT_BY_ACCESS[access]);
      tables.notePageTableRead?.(Math.floor(pteGpa / 4096));
      pte = memory32[hostOffset >>> 2]!;
      if ((pte & Pte.V) === 0 || ((pte & Pte.R) === 0 && (pte & Pte.W) !== 0)) return this.fail(PAGE_FAULT_BY_ACCESS[access]);
      if ((pte & (Pte.R | Pte.X)) !== 0) break; // leaf
      if (level === 0) return this.fail(PAGE_FAULT_BY_ACCESS[access]);
      tableGpa = (pte >>> PTE_PPN_SHIFT) * 4096;
      this.leafTableGpn = pte >>> PTE_PPN_SHIFT;
      level = 0;
    }
    if (!leafPermits(pte, access, supervisor, status)) return this.fail(PAGE_FAULT_BY_ACCESS[access]);
    const ppn = pte >>> PTE_PPN_SHIFT;
    if (level === 1 && (ppn & 0x3ff) !== 0) return this.fail(PAGE_FAULT_BY_ACCESS[access]); // misaligned superpage
    // Physical address: Sv32 PAs have 34 bits; BV32 guest-physical space is 32 bits.
    const pageGpa = leafPageGpa(pte, level, va);
    if (pageGpa >= 0x1_0000_0000) return this.fail(ACCESS_FAULT_BY_ACCESS[access]);
    // Accessed/dirty bits, written back to the guest's table.
    const wantBits = access === Access.WRITE ? Pte.A | Pte.D : Pte.A;
    if ((pte & wantBits) !== wantBits) {
      const hostOffset = tables.hostOffsetForPageTableWrite(pteGpa);
      if (hostOffset < 0) return this.fail(hostOffset === HOST_OFFSET_REFUSED ? Cause.MACHINE_CHECK : ACCESS_FAULT_BY_ACCESS[access]);
      pte = memory32[hostOffset >>> 2]! | wantBits;
      memory32[hostOffset >>> 2] = pte;
      tables.flushCodePatch();
    }
    this.gpa = pageGpa + (va & 0xfff);
    this.pte = pte;
    this.level = level;
    return true;
  }

  private fail(cause: number): false {
    this.faultCause = cause;
    return false;
  }
}
