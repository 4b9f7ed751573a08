/**
 * Instruction forms the assembler accepts: every real instruction of the opcode table, plus the
 * pseudo-instructions of PSEUDO_TABLE (one table: each row gives the syntax and either the
 * expansion in ordinary assembly syntax or, for `li`/`la`, a function). Real instructions are
 * encoded only through encoding.ts.
 */
import { parseRegister, Reg } from '../arch.ts';
import { encodeInstruction, immediateRange } from '../encoding.ts';
import { BY_MNEMONIC, type InstructionSpec } from '../opcodes.ts';
import { fail, type SourceLine } from './errors.ts';

/** How an operand is written. */
export type OperandSyntax = 'reg' | 'expr' | 'target' | 'csr' | 'mem' | 'amem';

/** Operand name (FORMATS operand names, plus the names the pseudo table uses) → syntax. */
const OPERAND_SYNTAX: Readonly<Record<string, OperandSyntax>> = {
  rd: 'reg', rs: 'reg', rs1: 'reg', rs2: 'reg',
  imm: 'expr', shamt: 'expr', imm20: 'expr', value: 'expr', label: 'expr',
  target: 'target', csr: 'csr', mem: 'mem', amem: 'amem',
};

export function operandSyntax(name: string): OperandSyntax {
  const syntax = OPERAND_SYNTAX[name];
  if (!syntax) throw new Error(`assembler: unknown operand name '${name}'`);
  return syntax;
}

/** An operand after evaluation: `reg` for registers and base registers, `value` for the rest. */
export interface ResolvedOperand {
  reg: number;
  value: number;
  /** Column of the operand, for range errors. */
  col: number;
}

/** One machine instruction to encode. Immediates carry their column for error messages. */
export interface Emit {
  spec: InstructionSpec;
  rd: number;
  rs1: number;
  rs2: number;
  imm?: { value: number; col: number };
  /** Absolute branch/jump target; converted to a word offset from the instruction's pc. */
  target?: { value: number; col: number };
}

/** Maps a real instruction's operands (in assembly order) to its fields. */
export function realEmit(spec: InstructionSpec, operands: readonly ResolvedOperand[]): Emit {
  const emit: Emit = { spec, rd: 0, rs1: 0, rs2: 0 };
  spec.operands.forEach((name, index) => {
    const operand = operands[index]!;
    switch (name) {
      case 'rd': emit.rd = operand.reg; break;
      case 'rs1': emit.rs1 = operand.reg; break;
      case 'rs2': emit.rs2 = operand.reg; break;
      case 'imm':
      case 'shamt':
      case 'imm20':
      case 'csr':
        emit.imm = { value: operand.value, col: operand.col };
        break;
      case 'mem':
        emit.rs1 = operand.reg;
        emit.imm = { value: operand.value, col: operand.col };
        break;
      case 'amem': emit.rs1 = operand.reg; break;
      case 'target': emit.target = { value: operand.value, col: operand.col }; break;
    }
  });
  return emit;
}

const hex = (value: number): string => `0x${(value >>> 0).toString(16)}`;

/** Encodes one instruction at `pc`, with range and alignment errors at the operand's column. */
export function encodeEmit(emit: Emit, pc: number, at: SourceLine): number {
  const { spec } = emit;
  const [min, max] = immediateRange(spec);
  let imm = emit.imm?.value ?? 0;
  if (emit.target) {
    const target = emit.target.value >>> 0;
    const delta = (target - pc) | 0;
    if ((delta & 3) !== 0) fail('BV_ASM_MISALIGNED', `target ${hex(target)} is not 4-byte aligned`, at, emit.target.col);
    imm = delta >> 2;
    if (imm < min || imm > max) {
      fail('BV_ASM_TARGET_RANGE', `target ${hex(target)} is out of range for '${spec.mnemonic}' (${imm} words away; the limit is ${min}..${max})`, at, emit.target.col);
    }
  } else if (emit.imm && (imm < min || imm > max)) {
    const what = spec.format === 'SHIFT' ? 'shift amount' : spec.format === 'CSR' ? 'CSR number' : 'immediate';
    const shown = spec.format === 'U' || spec.format === 'CSR' ? `${hex(min)}..${hex(max)}` : `${min}..${max}`;
    const kind = spec.format === 'CSR' ? 'BV_ASM_BAD_CSR' : 'BV_ASM_RANGE';
    fail(kind, `${what} ${imm} is out of range for '${spec.mnemonic}' (${shown})`, at, emit.imm.col);
  }
  return encodeInstruction(spec, { rd: emit.rd, rs1: emit.rs1, rs2: emit.rs2, imm });
}

/** Context a pseudo-instruction expansion may need. */
export interface ExpandContext {
  /** Address of the first word. */
  pc: number;
  /** Words chosen during layout. */
  words: number;
  /** Column of the mnemonic (for constants the expansion introduces). */
  col: number;
}

/** A pseudo-instruction the assembler expands into real instructions. */
export interface PseudoInstruction {
  /** Assembly name (e.g. `mv`). */
  mnemonic: string;
  /** Operand names; operandSyntax() gives how each is written. */
  operands: readonly string[];
  /** The syntax as documented, e.g. `mv rd, rs`. */
  syntax: string;
  /** The expansion as documented. */
  expansion: string;
  /** @internal Index of the operand whose value (if known during layout) decides the size, if any. */
  sizeOperand?: number;
  /** @internal Words emitted, given the layout-time value of `sizeOperand` (undefined: not known yet). */
  words(known: number | undefined): number;
  /** @internal The real instructions for resolved operands. */
  expand(operands: readonly ResolvedOperand[], context: ExpandContext): Emit[];
}

function spec(mnemonic: string): InstructionSpec {
  const found = BY_MNEMONIC.get(mnemonic);
  if (!found) throw new Error(`assembler: pseudo table names unknown instruction '${mnemonic}'`);
  return found;
}

const fitsSigned16 = (value: number): boolean => value >= -0x8000 && value <= 0x7fff;
const fitsUnsigned16 = (value: number): boolean => value >= 0 && value <= 0xffff;

/** `li`: the shortest sequence for a known value; lui+ori when the value is not known yet. */
function liWords(value: number | undefined): number {
  if (value === undefined) return 2;
  return fitsSigned16(value) || fitsUnsigned16(value) || (value & 0xfff) === 0 ? 1 : 2;
}

function liExpand([rd, value]: readonly ResolvedOperand[], { words, col }: ExpandContext): Emit[] {
  const v = value!.value | 0;
  const target = rd!.reg;
  const at = { value: 0, col: value!.col };
  const upper = { ...at, value: v >>> 12 };
  if (words === 1) {
    if (fitsSigned16(v)) return [{ spec: spec('addi'), rd: target, rs1: Reg.ZERO, rs2: 0, imm: { ...at, value: v } }];
    if (fitsUnsigned16(v)) return [{ spec: spec('ori'), rd: target, rs1: Reg.ZERO, rs2: 0, imm: { ...at, value: v } }];
    return [{ spec: spec('lui'), rd: target, rs1: 0, rs2: 0, imm: upper }];
  }
  return [
    { spec: spec('lui'), rd: target, rs1: 0, rs2: 0, imm: upper },
    { spec: spec('ori'), rd: target, rs1: target, rs2: 0, imm: { value: v & 0xfff, col } },
  ];
}

/** `la`: pc-relative, so code that uses it stays position-independent. */
function laExpand([rd, label]: readonly ResolvedOperand[], { pc, col }: ExpandContext): Emit[] {
  const offset = ((label!.value >>> 0) - pc) | 0;
  const target = rd!.reg;
  return [
    { spec: spec('auipc'), rd: target, rs1: 0, rs2: 0, imm: { value: (offset >> 12) & 0xfffff, col } },
    { spec: spec('addi'), rd: target, rs1: target, rs2: 0, imm: { value: offset & 0xfff, col } },
  ];
}

/** A template argument: one of the pseudo's operands, a fixed register, or a constant. */
type TemplateArg = { operand: number } | { reg: number } | { constant: number };

/** Parses an expansion written in assembly syntax (`addi rd, rs, 0`) against the pseudo's operands. */
function compileTemplate(line: string, operands: readonly string[]): { spec: InstructionSpec; args: TemplateArg[] } {
  const [mnemonic, rest = ''] = line.split(/\s+(.*)/s) as [string, string?];
  const real = spec(mnemonic);
  const words = rest.trim() === '' ? [] : rest.split(',').map((word) => word.trim());
  if (words.length !== real.operands.length) throw new Error(`assembler: template '${line}' has the wrong operand count`);
  const args = words.map((word, index): TemplateArg => {
    const operand = operands.indexOf(word);
    const expected = operandSyntax(real.operands[index]!);
    if (operand >= 0) {
      const given = operandSyntax(operands[operand]!);
      if ((given === 'reg') !== (expected === 'reg')) throw new Error(`assembler: template '${line}' mixes register and value operands`);
      return { operand };
    }
    const reg = parseRegister(word);
    if (reg >= 0 && expected === 'reg') return { reg };
    if (/^-?\d+$/.test(word) && expected !== 'reg') return { constant: Number(word) };
    throw new Error(`assembler: bad template argument '${word}' in '${line}'`);
  });
  return { spec: real, args };
}

interface TemplateRow { syntax: string; expansion: readonly string[] }
interface CustomRow { syntax: string; expansion: string; sizeOperand?: number; words: (known: number | undefined) => number; expand: PseudoInstruction['expand'] }

/** The pseudo-instructions. A mnemonic may appear with several operand counts (`jal`, `sfence`). */
const PSEUDO_TABLE: readonly (TemplateRow | CustomRow)[] = [
  { syntax: 'nop', expansion: ['addi zero, zero, 0'] },
  { syntax: 'mv rd, rs', expansion: ['addi rd, rs, 0'] },
  // -rs - 1 = ~rs; correct even when rd == rs (xori's zero-extended imm16 cannot flip 32 bits).
  { syntax: 'not rd, rs', expansion: ['sub rd, zero, rs', 'addi rd, rd, -1'] },
  { syntax: 'neg rd, rs', expansion: ['sub rd, zero, rs'] },
  {
    syntax: 'li rd, value',
    expansion: 'addi rd, zero, v | ori rd, zero, v | lui rd, v>>>12 | lui rd, v>>>12 + ori rd, rd, v&0xfff',
    sizeOperand: 1,
    words: liWords,
    expand: liExpand,
  },
  { syntax: 'la rd, label', expansion: 'auipc rd, hi(label-pc) + addi rd, rd, lo(label-pc)', words: () => 2, expand: laExpand },
  { syntax: 'j target', expansion: ['jal zero, target'] },
  { syntax: 'jal target', expansion: ['jal ra, target'] },
  { syntax: 'call target', expansion: ['jal ra, target'] },
  { syntax: 'ret', expansion: ['jalr zero, ra, 0'] },
  { syntax: 'jr rs', expansion: ['jalr zero, rs, 0'] },
  { syntax: 'beqz rs, target', expansion: ['beq rs, zero, target'] },
  { syntax: 'bnez rs, target', expansion: ['bne rs, zero, target'] },
  { syntax: 'bltz rs, target', expansion: ['blt rs, zero, target'] },
  { syntax: 'bgez rs, target', expansion: ['bge rs, zero, target'] },
  { syntax: 'blez rs, target', expansion: ['bge zero, rs, target'] },
  { syntax: 'bgtz rs, target', expansion: ['blt zero, rs, target'] },
  { syntax: 'bgt rs1, rs2, target', expansion: ['blt rs2, rs1, target'] },
  { syntax: 'ble rs1, rs2, target', expansion: ['bge rs2, rs1, target'] },
  { syntax: 'bgtu rs1, rs2, target', expansion: ['bltu rs2, rs1, target'] },
  { syntax: 'bleu rs1, rs2, target', expansion: ['bgeu rs2, rs1, target'] },
  { syntax: 'seqz rd, rs', expansion: ['sltiu rd, rs, 1'] },
  { syntax: 'snez rd, rs', expansion: ['sltu rd, zero, rs'] },
  { syntax: 'csrr rd, csr', expansion: ['csrrs rd, csr, zero'] },
  { syntax: 'csrw csr, rs', expansion: ['csrrw zero, csr, rs'] },
  { syntax: 'csrs csr, rs', expansion: ['csrrs zero, csr, rs'] },
  { syntax: 'csrc csr, rs', expansion: ['csrrc zero, csr, rs'] },
  { syntax: 'sfence', expansion: ['sfence zero, zero'] },
];

function buildPseudo(row: TemplateRow | CustomRow): PseudoInstruction {
  const [mnemonic, operandText = ''] = row.syntax.split(/\s+(.*)/s) as [string, string?];
  const operands = operandText === '' ? [] : operandText.split(',').map((name) => name.trim());
  operands.forEach(operandSyntax);
  if (typeof row.expansion === 'string') {
    const custom = row as CustomRow;
    return { mnemonic, operands, syntax: row.syntax, expansion: custom.expansion, sizeOperand: custom.sizeOperand, words: custom.words, expand: custom.expand };
  }
  const templates = row.expansion.map((line) => compileTemplate(line, operands));
  return {
    mnemonic,
    operands,
    syntax: row.syntax,
    expansion: row.expansion.join('; '),
    words: () => templates.length,
    expand: (resolved, { col }) =>
      templates.map(({ spec: real, args }) =>
        realEmit(
          real,
          args.map((arg): ResolvedOperand => {
            if ('operand' in arg) return resolved[arg.operand]!;
            if ('reg' in arg) return { reg: arg.reg, value: 0, col };
            return { reg: 0, value: arg.constant, col };
          }),
        ),
      ),
  };
}

/** Every pseudo-instruction the assembler accepts, as documented in SPEC.md. */
export const PSEUDO_INSTRUCTIONS: readonly PseudoInstruction[] = PSEUDO_TABLE.map(buildPseudo);

/** Mnemonic → its pseudo forms (one per operand count). */
export const PSEUDO_BY_MNEMONIC: ReadonlyMap<string, readonly PseudoInstruction[]> = (() => {
  const map = new Map<string, PseudoInstruction[]>();
  for (const pseudo of PSEUDO_INSTRUCTIONS) map.set(pseudo.mnemonic, [...(map.get(pseudo.mnemonic) ?? []), pseudo]);
  return map;
})();

/** The syntax line of a real instruction, e.g. `add rd, rs1, rs2`. */
export function realSyntax(real: InstructionSpec): string {
  return real.operands.length === 0 ? real.mnemonic : `${real.mnemonic} ${real.operands.join(', ')}`;
}
