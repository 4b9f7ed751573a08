/**
 * BV32 architectural constants: registers, CSRs, trap causes, page-table bits, the device table
 * and hypercall numbers. SPEC.md documents each; the CPU, assembler and tools import them from
 * here so that a number is written down once.
 */

/** Register names: index = register number. */
export const REGISTER_NAMES = [
  'zero', 'ra', 'sp', 'gp', 'a0', 'a1', 'a2', 'a3', 't0', 't1', 't2', 't3', 's0', 's1', 's2', 's3',
] as const;

/** Register numbers by ABI name (SPEC.md §2). */
export const Reg = {
  /** r0: reads as 0, writes are discarded. */
  ZERO: 0,
  /** r1: return address. */
  RA: 1,
  /** r2: stack pointer (16-byte aligned at calls). */
  SP: 2,
  /** r3: global pointer (a kernel's per-CPU data). */
  GP: 3,
  /** r4: argument 0 / return value 0; the hypercall number and status; the vCPU index at reset. */
  A0: 4,
  /** r5: argument 1 / return value 1; the device table's guest-physical address at reset. */
  A1: 5,
  /** r6: argument 2. */
  A2: 6,
  /** r7: argument 3. */
  A3: 7,
  /** r8: temporary. */
  T0: 8,
  /** r9: temporary. */
  T1: 9,
  /** r10: temporary. */
  T2: 10,
  /** r11: temporary. */
  T3: 11,
  /** r12: saved register, frame pointer (`fp`). */
  S0: 12,
  /** r13: saved register. */
  S1: 13,
  /** r14: saved register. */
  S2: 14,
  /** r15: saved register. */
  S3: 15,
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
  /** Retired instructions, high 32 bits. */
  INSTRETH: 0x011,
  /** Virtual time, low and high 32 bits (read-only, readable from user mode). */
  TIME: 0x012,
  /** Virtual time, high 32 bits. */
  TIMEH: 0x013,
  /** This vCPU's index in the VM (read-only). */
  HARTID: 0x014,
} as const;

/** CSRs that user mode may read; every other CSR access from user mode is illegal. */
export const USER_READABLE_CSRS: ReadonlySet<number> = new Set([Csr.INSTRET, Csr.INSTRETH, Csr.TIME, Csr.TIMEH]);
/** CSRs that no mode may write. */
export const READ_ONLY_CSRS: ReadonlySet<number> = new Set([Csr.INSTRET, Csr.INSTRETH, Csr.TIME, Csr.TIMEH, Csr.HARTID]);

/** CSR numbers by assembly name (`status`, `tvec`, …). */
export const CSR_NAMES: ReadonlyMap<string, number> = new Map([
  ['status', Csr.STATUS], ['tvec', Csr.TVEC], ['epc', Csr.EPC], ['cause', Csr.CAUSE], ['tval', Csr.TVAL],
  ['scratch', Csr.SCRATCH], ['ie', Csr.IE], ['ip', Csr.IP], ['ptbr', Csr.PTBR], ['instret', Csr.INSTRET],
  ['instreth', Csr.INSTRETH], ['time', Csr.TIME], ['timeh', Csr.TIMEH], ['hartid', Csr.HARTID],
]);

/** Bits of the `status` CSR. */
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
  /**
   * Machine check in progress: set when a machine check is taken, cleared by `sret`. A machine
   * check taken while it is set shuts the VM down (x86's MCG_STATUS.MCIP).
   */
  MCIP: 1 << 20,
} as const;
/** The `status` bits that exist (others read as zero). */
export const STATUS_WRITABLE_MASK = StatusBit.SIE | StatusBit.SPIE | StatusBit.SPP | StatusBit.SUM | StatusBit.MXR | StatusBit.MCIP;

/** Interrupt cause codes; the IE/IP bit for cause n is 1 << n. */
export const Irq = {
  /** Software interrupt (IPIs, the timer device's IPI register). */
  SOFT: 1,
  /** Timer interrupt: pending while the vCPU's clock is at or past its deadline. */
  TIMER: 5,
  /** External interrupt line (devices, e.g. console input). */
  EXTERNAL: 9,
} as const;
/** The IE/IP bits that exist. */
export const IRQ_MASK = (1 << Irq.SOFT) | (1 << Irq.TIMER) | (1 << Irq.EXTERNAL);
/** Bit 31 of CAUSE marks an interrupt. */
export const CAUSE_INTERRUPT = 0x8000_0000 | 0;

/** Synchronous exception cause codes. */
export const Cause = {
  /** A fetch from a pc that is not 4-aligned, or a jalr to such a target (tval = the address). */
  INSN_MISALIGNED: 0,
  /** Fetch from an address that is not RAM (device windows included; tval = the pc). */
  INSN_ACCESS_FAULT: 1,
  /** An illegal word, a privileged instruction in user mode, an illegal CSR access (tval = the word). */
  ILLEGAL_INSN: 2,
  /** `ebreak`. */
  BREAKPOINT: 3,
  /** Misaligned load (tval = the virtual address). */
  LOAD_MISALIGNED: 4,
  /** Load access fault: not RAM nor a device register, a bad MMIO access (SPEC.md §7.1). */
  LOAD_ACCESS_FAULT: 5,
  /** Misaligned store or AMO (tval = the virtual address). */
  STORE_MISALIGNED: 6,
  /** Store access fault: not RAM nor a device register, the device table, a refused MMIO store. */
  STORE_ACCESS_FAULT: 7,
  /** `ecall` from user mode. */
  ECALL_USER: 8,
  /** `ecall` from supervisor mode. */
  ECALL_SUPERVISOR: 9,
  /** Fetch denied by the page tables. */
  INSN_PAGE_FAULT: 12,
  /** Load denied by the page tables. */
  LOAD_PAGE_FAULT: 13,
  /** Store denied by the page tables. */
  STORE_PAGE_FAULT: 15,
  /** An uncorrectable memory error that the hypervisor could not repair (T-17). */
  MACHINE_CHECK: 18,
} as const;

/** Human-readable names of the exception causes. */
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

/** A `cause` value in words ("load page fault", "timer interrupt"), for messages. */
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
  /** Valid. */
  V: 1 << 0,
  /** Readable. */
  R: 1 << 1,
  /** Writable. */
  W: 1 << 2,
  /** Executable. */
  X: 1 << 3,
  /** Accessible from user mode. */
  U: 1 << 4,
  /** Global mapping (present in every address space). */
  G: 1 << 5,
  /** Accessed: set by the walk on any access. */
  A: 1 << 6,
  /** Dirty: set by the walk on a write. */
  D: 1 << 7,
} as const;
/** PPN field of a PTE: bits 10-31 (PPN[1] = bits 20-31, PPN[0] = bits 10-19). */
export const PTE_PPN_SHIFT = 10;

/** PTBR (satp) fields. */
export const Ptbr = {
  /** Bit 31: Sv32 paging on (off: addresses are guest-physical). */
  MODE_SV32: 0x8000_0000 | 0,
  /** Position of the ASID field (bits 22-30). */
  ASID_SHIFT: 22,
  /** The ASID field's mask after shifting (9 bits). */
  ASID_MASK: 0x1ff,
  /** Bits 0-21: guest-physical page number of the root page table. */
  PPN_MASK: 0x3f_ffff,
} as const;

/** Bytes in a page (guest and host). */
export const PAGE_SIZE = 4096;
/** log2(PAGE_SIZE). */
export const PAGE_SHIFT = 12;
/** Bytes in an Sv32 superpage (and a large-page region). */
export const SUPERPAGE_SIZE = 4 * 1024 * 1024;
/** log2(SUPERPAGE_SIZE). */
export const SUPERPAGE_SHIFT = 22;

/** Guest-physical layout: RAM starts at 0; device windows live high. */
export const GuestPhys = {
  /** Guest RAM starts at guest-physical 0. */
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
  /** Table format version (low half of the second word; the high half is the entry count). */
  VERSION: 1,
  /** Header: magic, version and entry count, RAM bytes, vCPU count. */
  HEADER_BYTES: 16,
  /** Per device: type and instance, window base, window size, info word. */
  ENTRY_BYTES: 16,
} as const;

/** Device type ids as they appear in the device table. */
export const DeviceType = {
  /** Console (devices/console.ts). */
  CONSOLE: 1,
  /** Timer (devices/timer.ts). */
  TIMER: 2,
  /** Power (devices/power.ts). */
  POWER: 3,
  /** Boot arguments (devices/bootargs.ts). */
  BOOTARGS: 4,
  /** Block device (devices/block.ts). */
  BLOCK: 5,
  /** Memory balloon (devices/balloon.ts, docs/balloon.md). */
  BALLOON: 6,
  /** Memory condition for guest applications (devices/meminfo.ts, T-7). */
  MEMINFO: 7,
  /** Reserved: persistent memory (a later issue). */
  PMEM: 8,
  /** Partition-bus channels (devices/channel.ts, docs/bus.md). */
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
  /** Success. */
  OK: 0,
  /** No handler is registered for the number in a0. */
  UNKNOWN_CALL: -1,
  /** An argument is out of range or names memory that cannot be read. */
  BAD_ARGUMENT: -2,
} as const;
