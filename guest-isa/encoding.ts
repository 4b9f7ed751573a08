/**
 * Encoding and decoding of BV32 instruction words, driven by the opcode table.
 *
 * `decodeInstruction` is exact: a word whose opcode is unassigned or whose reserved bits are not
 * zero is illegal (null), so every 32-bit word has one defined meaning.
 */
import { BvError } from './errors.ts';
import { BY_MNEMONIC, BY_OPCODE, Flag, type Format, type InstructionSpec } from './opcodes.ts';

/** The fields of an instruction, by meaning. Unused fields are 0. */
/** An instruction's operand fields, by meaning (a field its format lacks is 0). */
export interface InstructionFields {
  /** Destination register. */
  rd: number;
  /** First source register (the base address for loads and stores, the address for AMOs). */
  rs1: number;
  /** Second source register (the stored value for STORE, the operand for AMO). */
  rs2: number;
  /**
   * The immediate as the instruction means it: the extended imm16 for I/LOAD/STORE, the shift
   * amount for SHIFT, the CSR number for CSR, the raw 20-bit value (0..0xfffff) for U, and the
   * signed offset in *words* for BRANCH and J.
   */
  imm: number;
}

/** A decoded instruction word. */
export interface DecodedInstruction extends InstructionFields {
  /** Its entry in the opcode table. */
  spec: InstructionSpec;
  /** The raw 32-bit word. */
  word: number;
}

/** Inclusive range of the `imm` field per format (and signedness for I). */
export function immediateRange(spec: InstructionSpec): readonly [min: number, max: number] {
  switch (spec.format) {
    case 'I':
    case 'LOAD':
    case 'STORE':
      return (spec.flags & Flag.SIGNED_IMM) !== 0 ? [-0x8000, 0x7fff] : [0, 0xffff];
    case 'BRANCH':
      return [-0x8000, 0x7fff];
    case 'SHIFT':
      return [0, 31];
    case 'U':
      return [0, 0xfffff];
    case 'J':
      return [-0x80000, 0x7ffff];
    case 'CSR':
      return [0, 0xfff];
    default:
      return [0, 0];
  }
}

/** An instruction that cannot be encoded: unknown mnemonic, a register or immediate out of range. */
export class EncodingError extends BvError {
  constructor(message: string) {
    super('BV_ENCODING', message);
  }
}

function checkRegister(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 15) throw new EncodingError(`${name} must be a register 0..15, got ${value}`);
}

/** Encodes an instruction. Throws EncodingError for out-of-range fields. */
export function encodeInstruction(specOrMnemonic: InstructionSpec | string, fields: Partial<InstructionFields>): number {
  const spec = typeof specOrMnemonic === 'string' ? BY_MNEMONIC.get(specOrMnemonic) : specOrMnemonic;
  if (!spec) throw new EncodingError(`unknown instruction '${String(specOrMnemonic)}'`);
  const rd = fields.rd ?? 0;
  const rs1 = fields.rs1 ?? 0;
  const rs2 = fields.rs2 ?? 0;
  const imm = fields.imm ?? 0;
  checkRegister('rd', rd);
  checkRegister('rs1', rs1);
  checkRegister('rs2', rs2);
  const [min, max] = immediateRange(spec);
  if (!Number.isInteger(imm) || imm < min || imm > max) {
    throw new EncodingError(`${spec.mnemonic}: immediate ${imm} out of range ${min}..${max}`);
  }
  const op = spec.opcode;
  let word: number;
  switch (spec.format) {
    case 'R':
    case 'AMO':
      word = op | (rd << 8) | (rs1 << 12) | (rs2 << 16);
      break;
    case 'I':
    case 'LOAD':
    case 'SHIFT':
    case 'CSR':
      word = op | (rd << 8) | (rs1 << 12) | ((imm & 0xffff) << 16);
      break;
    case 'STORE':
      word = op | (rs2 << 8) | (rs1 << 12) | ((imm & 0xffff) << 16);
      break;
    case 'BRANCH':
      word = op | (rs1 << 8) | (rs2 << 12) | ((imm & 0xffff) << 16);
      break;
    case 'U':
    case 'J':
      word = op | (rd << 8) | ((imm & 0xfffff) << 12);
      break;
    case 'R2':
      word = op | (rs1 << 12) | (rs2 << 16);
      break;
    case 'NONE':
      word = op;
      break;
  }
  return word >>> 0;
}

/** Bits that must be zero in each format (a set bit makes the word illegal). */
export const RESERVED_BITS: Readonly<Record<Format, number>> = {
  R: 0xfff0_0000,
  AMO: 0xfff0_0000,
  I: 0,
  LOAD: 0,
  STORE: 0,
  BRANCH: 0,
  SHIFT: 0xffe0_0000,
  CSR: 0xf000_0000,
  U: 0,
  J: 0,
  R2: 0xfff0_0f00,
  NONE: 0xffff_ff00,
};

/** Decodes a word; returns null when the word is not a legal instruction. */
export function decodeInstruction(word: number): DecodedInstruction | null {
  const w = word >>> 0;
  const spec = BY_OPCODE[w & 0xff];
  if (!spec) return null;
  if ((w & RESERVED_BITS[spec.format]) !== 0) return null;
  const a = (w >>> 8) & 15;
  const b = (w >>> 12) & 15;
  const c = (w >>> 16) & 15;
  const imm16 = w >>> 16;
  const simm16 = (w | 0) >> 16;
  const out: DecodedInstruction = { spec, word: w, rd: 0, rs1: 0, rs2: 0, imm: 0 };
  switch (spec.format) {
    case 'R':
    case 'AMO':
      out.rd = a; out.rs1 = b; out.rs2 = c;
      break;
    case 'I':
    case 'LOAD':
      out.rd = a; out.rs1 = b; out.imm = (spec.flags & Flag.SIGNED_IMM) !== 0 ? simm16 : imm16;
      break;
    case 'SHIFT':
    case 'CSR':
      out.rd = a; out.rs1 = b; out.imm = imm16;
      break;
    case 'STORE':
      out.rs2 = a; out.rs1 = b; out.imm = simm16;
      break;
    case 'BRANCH':
      out.rs1 = a; out.rs2 = b; out.imm = simm16;
      break;
    case 'U':
      out.rd = a; out.imm = w >>> 12;
      break;
    case 'J':
      out.rd = a; out.imm = (w | 0) >> 12;
      break;
    case 'R2':
      out.rs1 = b; out.rs2 = c;
      break;
    case 'NONE':
      break;
  }
  return out;
}
