/**
 * The BV32 opcode table: the single source of truth for every instruction.
 *
 * The decoder, assembler, disassembler, the CPU's pre-decoder and the instruction table in
 * SPEC.md all read this table. Adding an instruction means adding a record here and a case in
 * the CPU's execute switch (kernel/cpu), nothing else; a test checks that the two agree.
 *
 * Word layout (little-endian 32-bit words, opcode in the low byte):
 *
 *   31            20 19   16 15   12 11    8 7       0
 *   [   imm16 / C / reserved  ][  B  ][  A  ][ opcode ]
 *
 *   A = bits 8-11, B = bits 12-15, C = bits 16-19, imm16 = bits 16-31, imm20 = bits 12-31.
 *   Every field is decoded with one shift and one mask.
 */

/** Instruction formats: each fixes both the field layout and the assembly syntax. */
export const FORMATS = {
  /** `op rd, rs1, rs2` — A=rd, B=rs1, C=rs2; bits 20-31 reserved (zero). */
  R: {
    /** Operands in assembly order. */
    operands: ['rd', 'rs1', 'rs2'],
  },
  /** `op rd, rs1, imm` — A=rd, B=rs1, imm16 (sign- or zero-extended, see `signedImm`). */
  I: {
    /** Operands in assembly order. */
    operands: ['rd', 'rs1', 'imm'],
  },
  /** `op rd, rs1, shamt` — A=rd, B=rs1, shamt = bits 16-20; bits 21-31 reserved. */
  SHIFT: {
    /** Operands in assembly order. */
    operands: ['rd', 'rs1', 'shamt'],
  },
  /** `op rd, imm(rs1)` — A=rd, B=rs1 (base), imm16 signed byte offset. */
  LOAD: {
    /** Operands in assembly order. */
    operands: ['rd', 'mem'],
  },
  /** `op rs2, imm(rs1)` — A=rs2 (value), B=rs1 (base), imm16 signed byte offset. */
  STORE: {
    /** Operands in assembly order. */
    operands: ['rs2', 'mem'],
  },
  /** `op rs1, rs2, target` — A=rs1, B=rs2, imm16 signed offset in words from this instruction. */
  BRANCH: {
    /** Operands in assembly order. */
    operands: ['rs1', 'rs2', 'target'],
  },
  /** `op rd, imm20` — A=rd, imm20 = bits 12-31 (the value's upper 20 bits). */
  U: {
    /** Operands in assembly order. */
    operands: ['rd', 'imm20'],
  },
  /** `op rd, target` — A=rd, imm20 signed offset in words from this instruction (±2 MiB). */
  J: {
    /** Operands in assembly order. */
    operands: ['rd', 'target'],
  },
  /** `op rd, rs2, (rs1)` — A=rd, B=rs1 (address), C=rs2 (operand); bits 20-31 reserved. */
  AMO: {
    /** Operands in assembly order. */
    operands: ['rd', 'rs2', 'amem'],
  },
  /** `op rd, csr, rs1` — A=rd, B=rs1, bits 16-27 CSR number; bits 28-31 reserved. */
  CSR: {
    /** Operands in assembly order. */
    operands: ['rd', 'csr', 'rs1'],
  },
  /** `op rs1, rs2` — A reserved (zero), B=rs1, C=rs2; bits 20-31 reserved. */
  R2: {
    /** Operands in assembly order. */
    operands: ['rs1', 'rs2'],
  },
  /** `op` — no operands; bits 8-31 reserved (zero). */
  NONE: {
    /** Operands in assembly order (none). */
    operands: [],
  },
} as const;

/** An instruction format's name (a key of FORMATS). */
export type Format = keyof typeof FORMATS;
/**
 * How an operand is written: a register (rd, rs1, rs2), an immediate (imm, imm20, shamt), a
 * memory operand `imm(rs1)` (mem) or `(rs1)` (amem), a branch or jump target, or a CSR name.
 */
export type OperandKind = (typeof FORMATS)[Format]['operands'][number];

/** Instruction property flags (a bit set). */
export const Flag = {
  /** Control may leave the straight line after this instruction (block boundary). */
  ENDS_BLOCK: 1 << 0,
  /** Traps with "illegal instruction" when executed in user mode. */
  PRIVILEGED: 1 << 1,
  /** May raise a synchronous trap (memory fault, illegal CSR, ecall …). */
  MAY_FAULT: 1 << 2,
  /** Reads guest memory. */
  LOADS: 1 << 3,
  /** Writes guest memory. */
  STORES: 1 << 4,
  /** The loaded value is sign-extended (lb, lh). */
  SIGN_EXTENDS: 1 << 5,
  /** The imm16 field is sign-extended (otherwise zero-extended). */
  SIGNED_IMM: 1 << 6,
  /** Changes CPU state that affects translation or interrupts (CSR access, sret, sfence). */
  SYSTEM: 1 << 7,
} as const;

/** One instruction of the BV32 opcode table. */
export interface InstructionSpec {
  /** Assembly name, lower case (e.g. `add`). */
  readonly mnemonic: string;
  /** The low byte of the instruction word. 0x00 is never assigned: a zero word is illegal. */
  readonly opcode: number;
  /** Field layout and assembly syntax (see FORMATS). */
  readonly format: Format;
  /** Operands in assembly order; derived from the format. */
  readonly operands: readonly OperandKind[];
  /** Bit set of {@link Flag}. */
  readonly flags: number;
  /** Bytes accessed in memory (1, 2, 4) or 0 for none. */
  readonly memWidth: 0 | 1 | 2 | 4;
  /** One-line semantics, used by the disassembler's help and SPEC.md's table. */
  readonly summary: string;
}

const { ENDS_BLOCK, PRIVILEGED, MAY_FAULT, LOADS, STORES, SIGN_EXTENDS, SIGNED_IMM, SYSTEM } = Flag;

type Row = [mnemonic: string, opcode: number, format: Format, flags: number, memWidth: 0 | 1 | 2 | 4, summary: string];

// Opcodes are dense from 0x01 so that the CPU's switch compiles to a jump table.
const ROWS: readonly Row[] = [
  // Register-register arithmetic and logic.
  ['add', 0x01, 'R', 0, 0, 'rd = rs1 + rs2 (wrapping)'],
  ['sub', 0x02, 'R', 0, 0, 'rd = rs1 - rs2 (wrapping)'],
  ['and', 0x03, 'R', 0, 0, 'rd = rs1 & rs2'],
  ['or', 0x04, 'R', 0, 0, 'rd = rs1 | rs2'],
  ['xor', 0x05, 'R', 0, 0, 'rd = rs1 ^ rs2'],
  ['sll', 0x06, 'R', 0, 0, 'rd = rs1 << (rs2 & 31)'],
  ['srl', 0x07, 'R', 0, 0, 'rd = rs1 >>> (rs2 & 31) (logical)'],
  ['sra', 0x08, 'R', 0, 0, 'rd = rs1 >> (rs2 & 31) (arithmetic)'],
  ['slt', 0x09, 'R', 0, 0, 'rd = (rs1 < rs2, signed) ? 1 : 0'],
  ['sltu', 0x0a, 'R', 0, 0, 'rd = (rs1 < rs2, unsigned) ? 1 : 0'],
  ['mul', 0x0b, 'R', 0, 0, 'rd = low 32 bits of rs1 * rs2'],
  ['mulh', 0x0c, 'R', 0, 0, 'rd = high 32 bits of signed rs1 * signed rs2'],
  ['mulhu', 0x0d, 'R', 0, 0, 'rd = high 32 bits of unsigned rs1 * unsigned rs2'],
  ['div', 0x0e, 'R', 0, 0, 'rd = rs1 / rs2 signed, toward zero; x/0 = -1; MIN/-1 = MIN'],
  ['divu', 0x0f, 'R', 0, 0, 'rd = rs1 / rs2 unsigned; x/0 = 0xffffffff'],
  ['rem', 0x10, 'R', 0, 0, 'rd = rs1 % rs2 signed (sign of rs1); x%0 = x; MIN%-1 = 0'],
  ['remu', 0x11, 'R', 0, 0, 'rd = rs1 % rs2 unsigned; x%0 = x'],
  // Register-immediate.
  ['addi', 0x12, 'I', SIGNED_IMM, 0, 'rd = rs1 + sext(imm16)'],
  ['andi', 0x13, 'I', 0, 0, 'rd = rs1 & zext(imm16)'],
  ['ori', 0x14, 'I', 0, 0, 'rd = rs1 | zext(imm16)'],
  ['xori', 0x15, 'I', 0, 0, 'rd = rs1 ^ zext(imm16)'],
  ['slti', 0x16, 'I', SIGNED_IMM, 0, 'rd = (rs1 < sext(imm16), signed) ? 1 : 0'],
  ['sltiu', 0x17, 'I', SIGNED_IMM, 0, 'rd = (rs1 < sext(imm16), unsigned) ? 1 : 0'],
  ['slli', 0x18, 'SHIFT', 0, 0, 'rd = rs1 << shamt'],
  ['srli', 0x19, 'SHIFT', 0, 0, 'rd = rs1 >>> shamt (logical)'],
  ['srai', 0x1a, 'SHIFT', 0, 0, 'rd = rs1 >> shamt (arithmetic)'],
  ['lui', 0x1b, 'U', 0, 0, 'rd = imm20 << 12'],
  ['auipc', 0x1c, 'U', 0, 0, 'rd = pc + (imm20 << 12)'],
  // Loads and stores (natural alignment required).
  ['lb', 0x1d, 'LOAD', MAY_FAULT | LOADS | SIGN_EXTENDS | SIGNED_IMM, 1, 'rd = sext(mem8[rs1 + imm])'],
  ['lbu', 0x1e, 'LOAD', MAY_FAULT | LOADS | SIGNED_IMM, 1, 'rd = zext(mem8[rs1 + imm])'],
  ['lh', 0x1f, 'LOAD', MAY_FAULT | LOADS | SIGN_EXTENDS | SIGNED_IMM, 2, 'rd = sext(mem16[rs1 + imm])'],
  ['lhu', 0x20, 'LOAD', MAY_FAULT | LOADS | SIGNED_IMM, 2, 'rd = zext(mem16[rs1 + imm])'],
  ['lw', 0x21, 'LOAD', MAY_FAULT | LOADS | SIGNED_IMM, 4, 'rd = mem32[rs1 + imm]'],
  ['sb', 0x22, 'STORE', MAY_FAULT | STORES | SIGNED_IMM, 1, 'mem8[rs1 + imm] = rs2 & 0xff'],
  ['sh', 0x23, 'STORE', MAY_FAULT | STORES | SIGNED_IMM, 2, 'mem16[rs1 + imm] = rs2 & 0xffff'],
  ['sw', 0x24, 'STORE', MAY_FAULT | STORES | SIGNED_IMM, 4, 'mem32[rs1 + imm] = rs2'],
  // Control transfer.
  ['beq', 0x25, 'BRANCH', ENDS_BLOCK | SIGNED_IMM, 0, 'if rs1 == rs2: pc += 4 * imm16'],
  ['bne', 0x26, 'BRANCH', ENDS_BLOCK | SIGNED_IMM, 0, 'if rs1 != rs2: pc += 4 * imm16'],
  ['blt', 0x27, 'BRANCH', ENDS_BLOCK | SIGNED_IMM, 0, 'if rs1 < rs2 (signed): pc += 4 * imm16'],
  ['bge', 0x28, 'BRANCH', ENDS_BLOCK | SIGNED_IMM, 0, 'if rs1 >= rs2 (signed): pc += 4 * imm16'],
  ['bltu', 0x29, 'BRANCH', ENDS_BLOCK | SIGNED_IMM, 0, 'if rs1 < rs2 (unsigned): pc += 4 * imm16'],
  ['bgeu', 0x2a, 'BRANCH', ENDS_BLOCK | SIGNED_IMM, 0, 'if rs1 >= rs2 (unsigned): pc += 4 * imm16'],
  ['jal', 0x2b, 'J', ENDS_BLOCK, 0, 'rd = pc + 4; pc += 4 * imm20'],
  ['jalr', 0x2c, 'I', ENDS_BLOCK | MAY_FAULT | SIGNED_IMM, 0, 'rd = pc + 4; pc = rs1 + sext(imm16) (must be 4-aligned)'],
  // Atomic read-modify-write (aligned words).
  ['amoswap', 0x2d, 'AMO', MAY_FAULT | LOADS | STORES, 4, 'rd = mem32[rs1]; mem32[rs1] = rs2'],
  ['amoadd', 0x2e, 'AMO', MAY_FAULT | LOADS | STORES, 4, 'rd = mem32[rs1]; mem32[rs1] = rd + rs2'],
  ['amoand', 0x2f, 'AMO', MAY_FAULT | LOADS | STORES, 4, 'rd = mem32[rs1]; mem32[rs1] = rd & rs2'],
  ['amoor', 0x30, 'AMO', MAY_FAULT | LOADS | STORES, 4, 'rd = mem32[rs1]; mem32[rs1] = rd | rs2'],
  // System.
  ['ecall', 0x31, 'NONE', ENDS_BLOCK | MAY_FAULT, 0, 'trap: environment call from the current mode'],
  ['ebreak', 0x32, 'NONE', ENDS_BLOCK | MAY_FAULT, 0, 'trap: breakpoint'],
  ['hcall', 0x33, 'NONE', ENDS_BLOCK | MAY_FAULT | PRIVILEGED | SYSTEM, 0, 'exit to the hypervisor: a0 = call number, a1-a3 = arguments; results in a0, a1'],
  ['sret', 0x34, 'NONE', ENDS_BLOCK | MAY_FAULT | PRIVILEGED | SYSTEM, 0, 'return from trap: pc = epc, mode = status.SPP, SIE = SPIE'],
  ['wfi', 0x35, 'NONE', ENDS_BLOCK | MAY_FAULT | PRIVILEGED | SYSTEM, 0, 'wait until an interrupt is pending'],
  ['sfence', 0x36, 'R2', ENDS_BLOCK | MAY_FAULT | PRIVILEGED | SYSTEM, 0, 'flush translations: rs1 = address (r0: all), rs2 = ASID (r0: all)'],
  ['fence', 0x37, 'NONE', 0, 0, 'order memory accesses (a no-op on BV32 hosts; kept for portable code)'],
  ['csrrw', 0x38, 'CSR', ENDS_BLOCK | MAY_FAULT | SYSTEM, 0, 'rd = csr; csr = rs1 (no read side effects when rd = r0)'],
  ['csrrs', 0x39, 'CSR', ENDS_BLOCK | MAY_FAULT | SYSTEM, 0, 'rd = csr; csr |= rs1 (no write when rs1 = r0)'],
  ['csrrc', 0x3a, 'CSR', ENDS_BLOCK | MAY_FAULT | SYSTEM, 0, 'rd = csr; csr &= ~rs1 (no write when rs1 = r0)'],
];

function buildTable(rows: readonly Row[]): readonly InstructionSpec[] {
  const seenOpcodes = new Set<number>();
  const seenNames = new Set<string>();
  return Object.freeze(
    rows.map(([mnemonic, opcode, format, flags, memWidth, summary]) => {
      if (seenOpcodes.has(opcode) || seenNames.has(mnemonic) || opcode === 0 || opcode > 0xff) {
        throw new Error(`opcode table: duplicate or invalid entry ${mnemonic} 0x${opcode.toString(16)}`);
      }
      seenOpcodes.add(opcode);
      seenNames.add(mnemonic);
      return Object.freeze({ mnemonic, opcode, format, operands: FORMATS[format].operands, flags, memWidth, summary });
    }),
  );
}

/** Every BV32 instruction, in opcode order. */
export const INSTRUCTIONS: readonly InstructionSpec[] = buildTable(ROWS);

/** Opcode byte → instruction (undefined for unassigned opcodes, which are illegal). */
export const BY_OPCODE: readonly (InstructionSpec | undefined)[] = Object.freeze(
  Array.from({ length: 256 }, (_, opcode) => INSTRUCTIONS.find((spec) => spec.opcode === opcode)),
);

/** Mnemonic → instruction. */
export const BY_MNEMONIC: ReadonlyMap<string, InstructionSpec> = new Map(INSTRUCTIONS.map((spec) => [spec.mnemonic, spec]));

/** The highest assigned opcode; the CPU's dispatch is dense over 0..MAX_OPCODE. */
export const MAX_OPCODE = Math.max(...INSTRUCTIONS.map((spec) => spec.opcode));

/** Whether an instruction has a Flag bit. */
export function hasFlag(spec: InstructionSpec, flag: number): boolean {
  return (spec.flags & flag) !== 0;
}
