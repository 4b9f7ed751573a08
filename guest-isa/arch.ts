/**
 * BV32 architectural constants: registers, CSRs, trap causes, page-table bits, the device table
 * and hypercall numbers. SPEC.md documents each; the CPU, assembler and tools import them from
 * here so that a number is written down once.
 */

/** Register names: index = register number. */
export const REGISTER_NAMES = [
  'zero', 'ra', 'sp', 'gp', 'a0', 'a1', 'a2', 'a3', 't0', 't1', 't2', 't3', 's0', 's1', 's2', 's3',
] as const;

export const Reg = {
  ZERO: 0, RA: 1, SP: 2, GP: 3, A0: 4, A1: 5, A2: 6, A3: 7,
  T0: 8, T1: 9, T2: 10, T3: 11, S0: 12, S1: 13, S2: 14, S3: 15,
} as const;

/** Accepts `r0`..`r15`, the ABI names, and `fp` (= s0). Returns -1 for anything else. */
export function parseRegister(name: string): number {
  const lower = name.toLowerCase();
  const numeric = /^r(\d{1,2})$/.exec(lower);
  if (numeric) {
    const n = Number(numeric[1]);
    return n < 16 ? n : -1;
  }
  if (lower === 'fp') return Reg.S0;
  return (REGISTER_NAMES as readonly string[]).indexOf(lower);
}

/** CSR numbers. */
export const Csr = {
  /** Status: SIE, SPIE, SPP, SUM, MXR (see StatusBit). */
  STATUS: 0x000,
  /** Trap vector: the pc a trap jumps to (4-aligned; low 2 bits read as zero). */
  TVEC: 0x001,
  /** Exception pc: the pc of the trapping instruction, or of the next one for interrupts. */
  EPC: 0x002,
  /** Trap cause: bit 31 set for interrupts; the low bits are the cause code. */
  CAUSE: 0x003,
  /** Trap value: faulting address, or the offending instruction word for illegal instructions. */
  TVAL: 0x004,
  /** Scratch: free for the supervisor (typically the kernel stack pointer). */
  SCRATCH: 0x005,
  /** Interrupt enable, one bit per interrupt cause (IrqBit). */
  IE: 0x006,
  /** Interrupt pending, one bit per interrupt cause; only SOFT is writable. */
  IP: 0x007,
  /** Page-table base: MODE (bit 31), ASID (bits 22-30), root PPN (bits 0-21) — Sv32 satp. */
  PTBR: 0x008,
  /** Retired instructions, low and high 32 bits (read-only, readable from user mode). */
  INSTRET: 0x010,
  INSTRETH: 0x011,
  /** Virtual time, low and high 32 bits (read-only, readable from user mode). */
  TIME: 0x012,
  TIMEH: 0x013,
  /** This vCPU's index in the VM (read-only). */
  HARTID: 0x014,
} as const;

/** CSRs that user mode may read; every other CSR access from user mode is illegal. */
export const USER_READABLE_CSRS: ReadonlySet<number> = new Set([Csr.INSTRET, Csr.INSTRETH, Csr.TIME, Csr.TIMEH]);
/** CSRs that no mode may write. */
export const READ_ONLY_CSRS: ReadonlySet<number> = new Set([Csr.INSTRET, Csr.INSTRETH, Csr.TIME, Csr.TIMEH, Csr.HARTID]);

export const CSR_NAMES: ReadonlyMap<string, number> = new Map([
  ['status', Csr.STATUS], ['tvec', Csr.TVEC], ['epc', Csr.EPC], ['cause', Csr.CAUSE], ['tval', Csr.TVAL],
  ['scratch', Csr.SCRATCH], ['ie', Csr.IE], ['ip', Csr.IP], ['ptbr', Csr.PTBR], ['instret', Csr.INSTRET],
  ['instreth', Csr.INSTRETH], ['time', Csr.TIME], ['timeh', Csr.TIMEH], ['hartid', Csr.HARTID],
]);

export const StatusBit = {
  /** Supervisor interrupt enable. */
  SIE: 1 << 1,
  /** SIE before the last trap. */
  SPIE: 1 << 5,
  /** Mode before the last trap: 1 = supervisor, 0 = user. */
  SPP: 1 << 8,
  /** Supervisor may load/store user pages. */
  SUM: 1 << 18,
  /** Loads from executable pages are permitted even without R. */
  MXR: 1 << 19,
} as const;
export const STATUS_WRITABLE_MASK = StatusBit.SIE | StatusBit.SPIE | StatusBit.SPP | StatusBit.SUM | StatusBit.MXR;

/** Interrupt cause codes; the IE/IP bit for cause n is 1 << n. */
export const Irq = {
  SOFT: 1,
  TIMER: 5,
  EXTERNAL: 9,
} as const;
export const IRQ_MASK = (1 << Irq.SOFT) | (1 << Irq.TIMER) | (1 << Irq.EXTERNAL);
/** Bit 31 of CAUSE marks an interrupt. */
export const CAUSE_INTERRUPT = 0x8000_0000 | 0;

/** Synchronous exception cause codes. */
export const Cause = {
  INSN_MISALIGNED: 0,
  INSN_ACCESS_FAULT: 1,
  ILLEGAL_INSN: 2,
  BREAKPOINT: 3,
  LOAD_MISALIGNED: 4,
  LOAD_ACCESS_FAULT: 5,
  STORE_MISALIGNED: 6,
  STORE_ACCESS_FAULT: 7,
  ECALL_USER: 8,
  ECALL_SUPERVISOR: 9,
  INSN_PAGE_FAULT: 12,
  LOAD_PAGE_FAULT: 13,
  STORE_PAGE_FAULT: 15,
  /** An uncorrectable memory error that the hypervisor could not repair (T-17). */
  MACHINE_CHECK: 18,
} as const;

export const CAUSE_NAMES: ReadonlyMap<number, string> = new Map([
  [Cause.INSN_MISALIGNED, 'instruction address misaligned'],
  [Cause.INSN_ACCESS_FAULT, 'instruction access fault'],
  [Cause.ILLEGAL_INSN, 'illegal instruction'],
  [Cause.BREAKPOINT, 'breakpoint'],
  [Cause.LOAD_MISALIGNED, 'load address misaligned'],
  [Cause.LOAD_ACCESS_FAULT, 'load access fault'],
  [Cause.STORE_MISALIGNED, 'store address misaligned'],
  [Cause.STORE_ACCESS_FAULT, 'store access fault'],
  [Cause.ECALL_USER, 'environment call from user mode'],
  [Cause.ECALL_SUPERVISOR, 'environment call from supervisor mode'],
  [Cause.INSN_PAGE_FAULT, 'instruction page fault'],
  [Cause.LOAD_PAGE_FAULT, 'load page fault'],
  [Cause.STORE_PAGE_FAULT, 'store page fault'],
  [Cause.MACHINE_CHECK, 'machine check (uncorrectable memory error)'],
]);

export function describeCause(cause: number): string {
  if ((cause & CAUSE_INTERRUPT) !== 0) {
    const code = cause & 0x7fff_ffff;
    const name = code === Irq.SOFT ? 'software' : code === Irq.TIMER ? 'timer' : code === Irq.EXTERNAL ? 'external' : `#${code}`;
    return `${name} interrupt`;
  }
  return CAUSE_NAMES.get(cause) ?? `cause ${cause}`;
}

/** Sv32 page-table entry bits (RISC-V format exactly). */
export const Pte = {
  V: 1 << 0,
  R: 1 << 1,
  W: 1 << 2,
  X: 1 << 3,
  U: 1 << 4,
  G: 1 << 5,
  A: 1 << 6,
  D: 1 << 7,
} as const;
/** PPN field of a PTE: bits 10-31 (PPN[1] = bits 20-31, PPN[0] = bits 10-19). */
export const PTE_PPN_SHIFT = 10;

/** PTBR (satp) fields. */
export const Ptbr = {
  MODE_SV32: 0x8000_0000 | 0,
  ASID_SHIFT: 22,
  ASID_MASK: 0x1ff,
  PPN_MASK: 0x3f_ffff,
} as const;

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;
export const SUPERPAGE_SIZE = 4 * 1024 * 1024;
export const SUPERPAGE_SHIFT = 22;

/** Guest-physical layout: RAM starts at 0; device windows live high. */
export const GuestPhys = {
  RAM_BASE: 0x0000_0000,
  /** The device table (read-only, one 4 KiB page). */
  DEVICE_TABLE: 0xf000_0000,
  /** Device MMIO windows are placed from here on, 4 KiB apart. */
  MMIO_BASE: 0xf000_1000,
} as const;

/** Device table layout: a header then 16-byte entries. */
export const DeviceTable = {
  /** "BVDT" little-endian. */
  MAGIC: 0x5444_5642,
  VERSION: 1,
  HEADER_BYTES: 16,
  ENTRY_BYTES: 16,
} as const;

/** Device type ids as they appear in the device table. */
export const DeviceType = {
  CONSOLE: 1,
  TIMER: 2,
  POWER: 3,
  BOOTARGS: 4,
  BLOCK: 5,
  BALLOON: 6,
  MEMINFO: 7,
  PMEM: 8,
  CHANNEL: 9,
} as const;

/** Hypercall numbers (a0 at `hcall`). Results: a0 = status (0 ok, negative error), a1 = value. */
export const Hcall = {
  /** Returns the hypervisor's interface version in a1. */
  VERSION: 0,
  /** Power off with exit code a1. */
  EXIT: 1,
  /** Write a2 bytes at guest-virtual a1 to the console. */
  CONSOLE_WRITE: 2,
  /**
   * Ask the host for a checkpoint of this VM now (offered by tools/run with --checkpoint-path;
   * otherwise unknown). The guest resumes after the save, with a0 = 0.
   */
  CHECKPOINT: 3,
} as const;
/** Hypercall status codes. */
export const HcallStatus = {
  OK: 0,
  UNKNOWN_CALL: -1,
  BAD_ARGUMENT: -2,
} as const;
