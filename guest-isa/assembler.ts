/**
 * The BV32 assembler: source text → GuestImage, a listing and the symbol table.
 *
 * Two passes over the source stream (guest-isa/asm/source.ts expands includes and macros):
 *  1. layout — parses every statement, defines labels, and fixes the size of everything. Sizes
 *     never change afterwards: `li` takes its short form only when its value is already known at
 *     this point, and `.org`/`.align`/`.space` need values known here.
 *  2. encode — places the sections (.data and .bss follow .text unless `.org` fixed them),
 *     evaluates every expression with all symbols known, and writes the bytes.
 * Syntax, directives and pseudo-instructions are described in docs/assembler.md.
 */
import { readFileSync } from 'node:fs';
import { CSR_NAMES, parseRegister } from './arch.ts';
import { BY_MNEMONIC, type InstructionSpec } from './opcodes.ts';
import { SegmentFlag, type GuestImage, type ImageSegment, type ImageSymbol } from './image-types.ts';
import { AssemblyError, fail, type SourceLine } from './asm/errors.ts';
import { evaluate, NotYetKnown, parseExpression, type EvalContext, type Expr } from './asm/expression.ts';
import {
  encodeEmit,
  operandSyntax,
  PSEUDO_BY_MNEMONIC,
  realEmit,
  realSyntax,
  type OperandSyntax,
  type PseudoInstruction,
  type ResolvedOperand,
} from './asm/instructions.ts';
import { isPunct, splitOperands, type Token } from './asm/lexer.ts';
import { countLabelTokens, SourceReader, type FlatLine } from './asm/source.ts';

export { AssemblyError } from './asm/errors.ts';
export type { AssemblyErrorCode } from './asm/errors.ts';
export { PSEUDO_INSTRUCTIONS } from './asm/instructions.ts';
export type { PseudoInstruction } from './asm/instructions.ts';

/** Options of assemble. */
export interface AssembleOptions {
  /** Name used in error messages and the listing, and the base for relative `.include`s. */
  fileName?: string;
  /** Reads an included file (default: the real file system, UTF-8). */
  readFile?: (path: string) => string;
}

/** One line of an assembly listing. */
export interface ListingLine {
  /** The guest address of the line's first byte. */
  address: number;
  /** The bytes this line produced (a view into the segment data; empty for .bss). */
  bytes: Uint8Array;
  /** The source file of the line. */
  file: string;
  /** 1-based line number in `file`. */
  line: number;
  /** The source text of the line. */
  source: string;
  /** True when the bytes are instructions (the listing then shows them as words). */
  code?: boolean;
}

/** What assemble and assembleFile produce. */
export interface AssembleResult {
  /** The guest image, ready for Vm.loadImage or encodeImage. */
  image: GuestImage;
  /** Source lines with the addresses and bytes they produced (formatListing prints it). */
  listing: ListingLine[];
  /** Every named label (address, u32) and `.equ` constant (value, int32); not local `1:` labels. */
  symbols: Map<string, number>;
}

/** Where .text starts unless `.org` says otherwise. */
export const DEFAULT_TEXT_BASE = 0x1000;
/** .data and .bss start at the next multiple of this after the previous section. */
const SECTION_ALIGNMENT = 0x1000;
/** Largest .align exponent: 2^22 = a 4 MiB superpage. */
const MAX_ALIGN_EXPONENT = 22;
/** Initialised sections are held in memory; this bounds what a typo in `.org`/`.space` can demand. */
const MAX_SECTION_FILE_BYTES = 256 * 1024 * 1024;
const ADDRESS_SPACE = 2 ** 32;

const SECTION_NAMES = ['.text', '.data', '.bss'] as const;
type SectionName = (typeof SECTION_NAMES)[number];

const hex = (value: number): string => `0x${(value >>> 0).toString(16)}`;
const alignUp = (value: number, alignment: number): number => Math.ceil(value / alignment) * alignment;

interface Position {
  line: SourceLine;
  col: number;
}

class Section {
  /** Start address when known during layout (always for .text; for the others only after `.org`). */
  fixedBase: number | undefined;
  /** The final start address (set before encoding). */
  base = 0;
  /** Location counter: bytes from the start. */
  size = 0;
  /** True once a label or a byte has been placed; `.org` then moves forward instead of setting the start. */
  started = false;
  /** Largest `.align` seen, so an automatically placed section keeps it. */
  maxAlign = 1;
  /** Where the start was fixed or the first content was placed (for overlap errors). */
  origin: Position | undefined;
  bytes = new Uint8Array(0);

  constructor(
    readonly name: SectionName,
    readonly flags: number,
    fixedBase: number | undefined,
  ) {
    this.fixedBase = fixedBase;
  }

  get initialised(): boolean {
    return this.name !== '.bss';
  }
}

type Operand =
  | { syntax: 'reg'; reg: number; col: number }
  | { syntax: 'expr'; expr: Expr; col: number; csrName?: string }
  | { syntax: 'mem'; reg: number; offset: Expr | undefined; col: number };

type Action =
  | { kind: 'none' }
  | { kind: 'fill'; value: number }
  | { kind: 'bytes'; bytes: Uint8Array }
  | { kind: 'data'; width: 1 | 2 | 4; values: Expr[] }
  | { kind: 'constant'; name: string }
  | { kind: 'instruction'; real: InstructionSpec | undefined; pseudo: PseudoInstruction | undefined; operands: Operand[]; col: number };

/** One source line after layout. */
interface Item {
  line: SourceLine;
  section: Section;
  offset: number;
  size: number;
  action: Action;
}

type LabelSymbol = { kind: 'label'; section: Section; offset: number; local: boolean; at: Position };
type ConstantSymbol = {
  kind: 'constant';
  expr: Expr;
  at: Position;
  /** `.` inside the expression means the address of the defining line. */
  dotSection: Section;
  dotOffset: number;
  value: number | undefined;
  evaluating: boolean;
};
type SymbolDef = LabelSymbol | ConstantSymbol;

const DATA_RANGES: Readonly<Record<1 | 2 | 4, readonly [number, number]>> = {
  1: [-0x80, 0xff],
  2: [-0x8000, 0xffff],
  4: [-(2 ** 31), 2 ** 31 - 1],
};

const DIRECTIVE_NAMES = [
  '.text', '.data', '.bss', '.section', '.org', '.align', '.byte', '.half', '.word', '.ascii', '.asciz',
  '.space', '.equ', '.global', '.globl', '.entry', '.include', '.macro', '.endm',
];

function isReservedName(lowerName: string): boolean {
  return BY_MNEMONIC.has(lowerName) || PSEUDO_BY_MNEMONIC.has(lowerName) || DIRECTIVE_NAMES.includes(lowerName);
}

class Assembler {
  private readonly sections: Record<SectionName, Section> = {
    '.text': new Section('.text', SegmentFlag.R | SegmentFlag.X, DEFAULT_TEXT_BASE),
    '.data': new Section('.data', SegmentFlag.R | SegmentFlag.W, undefined),
    '.bss': new Section('.bss', SegmentFlag.R | SegmentFlag.W, undefined),
  };
  private current: Section = this.sections['.text'];
  private readonly items: Item[] = [];
  private readonly symbols = new Map<string, SymbolDef>();
  /** Per local label number, how many definitions have been seen so far. */
  private readonly localCounts = new Map<number, number>();
  private readonly globals: { name: string; at: Position }[] = [];
  private entry: { expr: Expr; at: Position } | undefined;

  constructor(private readonly mainFile: string) {}

  // ---------------------------------------------------------------- pass 1: layout

  layout(lines: Iterable<FlatLine>): void {
    for (const flat of lines) this.layoutLine(flat);
  }

  private layoutLine({ source, tokens }: FlatLine): void {
    const labelCount = countLabelTokens(tokens);
    for (let index = 0; index < labelCount; index += 2) this.defineLabel(tokens[index]!, source);
    const item: Item = { line: source, section: this.current, offset: this.current.size, size: 0, action: { kind: 'none' } };
    const head = tokens[labelCount];
    if (head !== undefined) {
      const rest = tokens.slice(labelCount + 1);
      if (head.kind === 'ident' && isPunct(rest[0], '=')) {
        this.defineConstant(head, rest.slice(1), source, item, rest[0]!.end);
      } else if (head.kind === 'ident' && head.text.startsWith('.') && head.text.length > 1) {
        this.directive(head, rest, source, item);
      } else if (head.kind === 'ident') {
        this.instruction(head, rest, source, item);
      } else {
        fail('BV_ASM_SYNTAX', `expected a label, directive or instruction, found '${head.text}'`, source, head.col);
      }
    }
    this.items.push(item);
  }

  /** Reserves `size` bytes in the current section for `item`. */
  private reserve(item: Item, size: number, at: Position): void {
    const section = this.current;
    item.section = section;
    item.offset = section.size;
    item.size = size;
    if (size > 0) this.markStarted(at);
    section.size += size;
    if (section.fixedBase !== undefined && section.fixedBase + section.size > ADDRESS_SPACE) {
      fail('BV_ASM_SECTION', `${section.name} runs past the end of the 32-bit address space`, at.line, at.col);
    }
    if (section.initialised && section.size > MAX_SECTION_FILE_BYTES) {
      fail('BV_ASM_SECTION', `${section.name} is larger than ${MAX_SECTION_FILE_BYTES} bytes`, at.line, at.col);
    }
  }

  private markStarted(at: Position): void {
    if (!this.current.started) {
      this.current.started = true;
      this.current.origin ??= at;
    }
  }

  private checkSymbolName(token: Token, source: SourceLine): void {
    if (token.text === '.' || parseRegister(token.text) >= 0) {
      fail('BV_ASM_SYNTAX', `'${token.text}' is a register or reserved name and cannot be a symbol`, source, token.col);
    }
  }

  private defineSymbol(token: Token, symbol: SymbolDef, source: SourceLine): void {
    const previous = this.symbols.get(token.text);
    if (previous) {
      const where = `${previous.at.line.file}:${previous.at.line.line}`;
      fail('BV_ASM_DUPLICATE_SYMBOL', `symbol '${token.text}' is already defined (at ${where})`, source, token.col);
    }
    this.symbols.set(token.text, symbol);
  }

  private defineLabel(token: Token, source: SourceLine): void {
    const at = { line: source, col: token.col };
    this.markStarted(at);
    if (token.kind === 'number') {
      if (!/^[0-9]+$/.test(token.text)) fail('BV_ASM_SYNTAX', `a local label must be a decimal number, not '${token.text}'`, source, token.col);
      const number = token.value!;
      const count = this.localCounts.get(number) ?? 0;
      this.localCounts.set(number, count + 1);
      this.symbols.set(`${number}:${count}`, { kind: 'label', section: this.current, offset: this.current.size, local: true, at });
      return;
    }
    this.checkSymbolName(token, source);
    this.defineSymbol(token, { kind: 'label', section: this.current, offset: this.current.size, local: false, at }, source);
  }

  private defineConstant(nameToken: Token, exprTokens: Token[], source: SourceLine, item: Item, endCol: number): void {
    this.checkSymbolName(nameToken, source);
    const expr = this.parseExpr(exprTokens, source, endCol);
    let value: number | undefined;
    try {
      value = evaluate(expr, this.layoutContext(), source);
    } catch (error) {
      if (!(error instanceof NotYetKnown)) throw error;
    }
    const symbol: ConstantSymbol = {
      kind: 'constant', expr, at: { line: source, col: nameToken.col },
      dotSection: this.current, dotOffset: this.current.size, value, evaluating: false,
    };
    this.defineSymbol(nameToken, symbol, source);
    item.action = { kind: 'constant', name: nameToken.text };
  }

  private parseExpr(tokens: readonly Token[], source: SourceLine, endCol: number): Expr {
    return parseExpression(tokens, source, (token) => this.localName(token, source), endCol);
  }

  /** `1b` → the latest `1:` so far; `1f` → the next `1:` (which layout has not seen yet). */
  private localName(token: Token, source: SourceLine): string {
    const number = token.value!;
    const count = this.localCounts.get(number) ?? 0;
    if (token.direction === 'f') return `${number}:${count}`;
    if (count === 0) fail('BV_ASM_UNDEFINED_SYMBOL', `no local label '${number}' before '${token.text}'`, source, token.col);
    return `${number}:${count - 1}`;
  }

  /** Symbol values during layout: only what is already fixed. `dot` overrides the current address. */
  private layoutContext(dot?: number): EvalContext {
    return {
      symbol: (node) => {
        const symbol = this.symbols.get(node.name);
        if (symbol?.kind === 'label' && symbol.section.fixedBase !== undefined) return symbol.section.fixedBase + symbol.offset;
        if (symbol?.kind === 'constant' && symbol.value !== undefined) return symbol.value;
        throw new NotYetKnown(node.display);
      },
      dot: () => {
        if (dot !== undefined) return dot;
        if (this.current.fixedBase === undefined) throw new NotYetKnown('.');
        return this.current.fixedBase + this.current.size;
      },
    };
  }

  /** Evaluates a value that layout needs now (`.org`, `.align`, `.space`). */
  private constantNow(expr: Expr, source: SourceLine, directive: string): number {
    try {
      return evaluate(expr, this.layoutContext(), source);
    } catch (error) {
      if (!(error instanceof NotYetKnown)) throw error;
      const reason =
        error.symbol === '.'
          ? `the current address is not known yet (${this.current.name} has no fixed start; give it one with .org)`
          : `'${error.symbol}' is not defined before this line`;
      return fail('BV_ASM_NOT_CONSTANT', `${directive} needs a value known at this point: ${reason}`, source, expr.col);
    }
  }

  // ---------------------------------------------------------------- directives

  private directive(head: Token, rest: Token[], source: SourceLine, item: Item): void {
    const name = head.text.toLowerCase();
    const args = splitOperands(rest);
    for (const arg of args) if (arg.tokens.length === 0) fail('BV_ASM_SYNTAX', 'missing argument', source, arg.col);
    const at = { line: source, col: head.col };
    const expectCount = (min: number, max: number, usage: string): void => {
      if (args.length < min || args.length > max) {
        fail('BV_ASM_OPERAND_COUNT', `'${name}' expects ${usage}, got ${args.length} argument(s)`, source, head.col);
      }
    };
    const expr = (index: number): Expr => this.parseExpr(args[index]!.tokens, source, args[index]!.col);
    const noBss = (): void => {
      if (this.current.name === '.bss') {
        fail('BV_ASM_BSS_CONTENT', `${name} is not allowed in .bss (only labels, .space, .align and .org)`, source, head.col);
      }
    };

    switch (name) {
      case '.text':
      case '.data':
      case '.bss':
        expectCount(0, 0, 'no arguments');
        this.switchSection(name, item);
        return;
      case '.section': {
        expectCount(1, 1, 'a section name (.text, .data or .bss)');
        const token = args[0]!.tokens[0]!;
        const section = token.text.toLowerCase();
        if (args[0]!.tokens.length !== 1 || !(SECTION_NAMES as readonly string[]).includes(section)) {
          fail('BV_ASM_SECTION', `unknown section '${token.text}' (expected .text, .data or .bss)`, source, token.col);
        }
        this.switchSection(section as SectionName, item);
        return;
      }
      case '.org':
        expectCount(1, 1, 'one address');
        this.org(this.constantNow(expr(0), source, '.org'), source, args[0]!.col, item);
        return;
      case '.align': {
        expectCount(1, 1, 'one exponent (alignment = 2^n bytes)');
        const exponent = this.constantNow(expr(0), source, '.align');
        if (exponent < 0 || exponent > MAX_ALIGN_EXPONENT) {
          fail('BV_ASM_RANGE', `alignment exponent ${exponent} is out of range 0..${MAX_ALIGN_EXPONENT}`, source, args[0]!.col);
        }
        const alignment = 2 ** exponent;
        const section = this.current;
        section.maxAlign = Math.max(section.maxAlign, alignment);
        const here = (section.fixedBase ?? 0) + section.size;
        item.action = { kind: 'fill', value: 0 };
        this.reserve(item, alignUp(here, alignment) - here, at);
        return;
      }
      case '.byte':
      case '.half':
      case '.word': {
        expectCount(1, Infinity, 'one or more values');
        noBss();
        const width = name === '.byte' ? 1 : name === '.half' ? 2 : 4;
        item.action = { kind: 'data', width, values: args.map((_, index) => expr(index)) };
        this.reserve(item, width * args.length, at);
        this.trialEncode(item);
        return;
      }
      case '.ascii':
      case '.asciz': {
        expectCount(1, Infinity, 'one or more strings');
        noBss();
        const parts = args.map((arg) => {
          const token = arg.tokens[0]!;
          if (arg.tokens.length !== 1 || token.kind !== 'string') fail('BV_ASM_SYNTAX', `${name} expects a string in double quotes`, source, token.col);
          return name === '.asciz' ? Uint8Array.from([...token.bytes!, 0]) : token.bytes!;
        });
        const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
        let offset = 0;
        for (const part of parts) {
          bytes.set(part, offset);
          offset += part.length;
        }
        item.action = { kind: 'bytes', bytes };
        this.reserve(item, bytes.length, at);
        return;
      }
      case '.space': {
        expectCount(1, 2, 'a size and optionally a fill byte');
        const size = this.constantNow(expr(0), source, '.space');
        if (size < 0) fail('BV_ASM_RANGE', `.space size ${size} is negative`, source, args[0]!.col);
        const fill = args.length > 1 ? this.constantNow(expr(1), source, '.space') : 0;
        if (fill < -0x80 || fill > 0xff) fail('BV_ASM_RANGE', `fill byte ${fill} is out of range -128..255`, source, args[1]!.col);
        if (fill !== 0 && this.current.name === '.bss') fail('BV_ASM_BSS_CONTENT', '.bss is zero-filled: .space cannot have a fill byte there', source, args[1]!.col);
        item.action = { kind: 'fill', value: fill & 0xff };
        this.reserve(item, size, at);
        return;
      }
      case '.equ': {
        expectCount(2, 2, 'a name and a value');
        const nameToken = args[0]!.tokens[0]!;
        if (args[0]!.tokens.length !== 1 || nameToken.kind !== 'ident') fail('BV_ASM_SYNTAX', '.equ expects a symbol name', source, nameToken.col);
        this.defineConstant(nameToken, args[1]!.tokens, source, item, args[1]!.col);
        return;
      }
      case '.global':
      case '.globl':
        expectCount(1, Infinity, 'one or more symbol names');
        for (const arg of args) {
          const token = arg.tokens[0]!;
          if (arg.tokens.length !== 1 || token.kind !== 'ident') fail('BV_ASM_SYNTAX', `${name} expects symbol names`, source, token.col);
          this.globals.push({ name: token.text, at: { line: source, col: token.col } });
        }
        return;
      case '.entry':
        expectCount(1, 1, 'the entry point (a label)');
        if (this.entry) fail('BV_ASM_ENTRY', 'the entry point is already set', source, head.col);
        this.entry = { expr: expr(0), at: { line: source, col: args[0]!.col } };
        return;
      default:
        fail('BV_ASM_UNKNOWN_DIRECTIVE', `unknown directive '${head.text}'`, source, head.col);
    }
  }

  private switchSection(name: SectionName, item: Item): void {
    this.current = this.sections[name];
    item.section = this.current;
    item.offset = this.current.size;
  }

  private org(address: number, source: SourceLine, col: number, item: Item): void {
    const section = this.current;
    const target = address >>> 0;
    const at = { line: source, col };
    if (!section.started) {
      // Before any content, .org chooses where the section starts.
      if (target % 4 !== 0) fail('BV_ASM_MISALIGNED', `a section must start 4-byte aligned, not at ${hex(target)}`, source, col);
      section.fixedBase = target;
      section.origin = at;
      return;
    }
    if (section.fixedBase === undefined) {
      fail('BV_ASM_NOT_CONSTANT', `.org in ${section.name} needs a fixed section start: put an .org before its first content`, source, col);
    }
    const here = section.fixedBase + section.size;
    if (target < here) fail('BV_ASM_ORG_BACKWARDS', `.org ${hex(target)} would move backwards (the location is already ${hex(here)})`, source, col);
    item.action = { kind: 'fill', value: 0 };
    this.reserve(item, target - here, at);
  }

  // ---------------------------------------------------------------- instructions

  private instruction(head: Token, rest: Token[], source: SourceLine, item: Item): void {
    const mnemonic = head.text.toLowerCase();
    const real = BY_MNEMONIC.get(mnemonic);
    const pseudos = PSEUDO_BY_MNEMONIC.get(mnemonic) ?? [];
    if (!real && pseudos.length === 0) fail('BV_ASM_UNKNOWN_MNEMONIC', `unknown instruction '${head.text}'`, source, head.col);
    const groups = splitOperands(rest);
    const pseudo = pseudos.find((candidate) => candidate.operands.length === groups.length);
    const useReal = real !== undefined && real.operands.length === groups.length;
    if (!useReal && !pseudo) {
      const forms = [...(real ? [realSyntax(real)] : []), ...pseudos.map((candidate) => candidate.syntax)];
      const counts = [...new Set([...(real ? [real.operands.length] : []), ...pseudos.map((p) => p.operands.length)])].join(' or ');
      fail('BV_ASM_OPERAND_COUNT', `'${mnemonic}' expects ${counts} operand(s) (${forms.join(' | ')}), got ${groups.length}`, source, head.col);
    }
    const names = useReal ? real.operands : pseudo!.operands;
    const operands = groups.map((group, index) => this.parseOperand(operandSyntax(names[index]!), group.tokens, group.col, source));
    if (this.current.name === '.bss') fail('BV_ASM_BSS_CONTENT', 'instructions are not allowed in .bss', source, head.col);
    const section = this.current;
    const here = (section.fixedBase ?? 0) + section.size;
    if (here % 4 !== 0) {
      const where = section.fixedBase === undefined ? `offset ${hex(here)} of ${section.name}` : hex(here);
      fail('BV_ASM_MISALIGNED', `instruction at ${where} is not 4-byte aligned (add .align 2)`, source, head.col);
    }
    let words = 1;
    if (!useReal) {
      const sizeOperand = pseudo!.sizeOperand === undefined ? undefined : operands[pseudo!.sizeOperand];
      let known: number | undefined;
      if (sizeOperand?.syntax === 'expr') {
        try {
          known = evaluate(sizeOperand.expr, this.layoutContext(), source);
        } catch (error) {
          if (!(error instanceof NotYetKnown)) throw error;
        }
      }
      words = pseudo!.words(known);
    }
    item.action = { kind: 'instruction', real: useReal ? real : undefined, pseudo: useReal ? undefined : pseudo, operands, col: head.col };
    this.reserve(item, words * 4, { line: source, col: head.col });
    this.trialEncode(item);
  }

  private parseRegisterToken(tokens: readonly Token[], col: number, source: SourceLine): number {
    const token = tokens[0];
    const reg = token?.kind === 'ident' && tokens.length === 1 ? parseRegister(token.text) : -1;
    if (reg < 0) {
      const text = source.text.slice(col - 1, (tokens[tokens.length - 1]?.end ?? col) - 1);
      fail('BV_ASM_BAD_REGISTER', `expected a register (r0..r15 or an ABI name), found '${text}'`, source, col);
    }
    return reg;
  }

  private parseOperand(syntax: OperandSyntax, tokens: Token[], col: number, source: SourceLine): Operand {
    if (tokens.length === 0) fail('BV_ASM_SYNTAX', 'missing operand', source, col);
    switch (syntax) {
      case 'reg':
        return { syntax: 'reg', reg: this.parseRegisterToken(tokens, col, source), col };
      case 'expr':
      case 'target':
        return { syntax: 'expr', expr: this.parseExpr(tokens, source, col), col };
      case 'csr': {
        const only = tokens[0]!;
        const named = tokens.length === 1 && only.kind === 'ident' ? CSR_NAMES.get(only.text.toLowerCase()) : undefined;
        if (named !== undefined) return { syntax: 'expr', expr: { type: 'number', value: named, col }, col };
        // Any other single name must be a constant; if it is not, say "unknown CSR" rather than "undefined symbol".
        const csrName = tokens.length === 1 && only.kind === 'ident' ? only.text : undefined;
        return { syntax: 'expr', expr: this.parseExpr(tokens, source, col), col, ...(csrName ? { csrName } : {}) };
      }
      case 'mem':
      case 'amem': {
        const n = tokens.length;
        const shape = n >= 3 && isPunct(tokens[n - 3], '(') && tokens[n - 2]!.kind === 'ident' && isPunct(tokens[n - 1], ')');
        if (!shape || (syntax === 'amem' && n !== 3)) {
          const form = syntax === 'amem' ? '(register)' : 'offset(register)';
          fail('BV_ASM_BAD_OPERAND', `expected a memory operand ${form}`, source, col);
        }
        const reg = this.parseRegisterToken([tokens[n - 2]!], tokens[n - 2]!.col, source);
        const offset = n > 3 ? this.parseExpr(tokens.slice(0, n - 3), source, col) : undefined;
        return { syntax: 'mem', reg, offset, col };
      }
    }
  }

  // ---------------------------------------------------------------- pass 2: placement and encoding

  finish(): AssembleResult {
    this.placeSections();
    for (const item of this.items) this.encodeItem(item);
    for (const symbol of this.symbols.values()) if (symbol.kind === 'constant') this.constantValue(symbol);
    const image: GuestImage = { entry: this.entryPoint(), segments: this.segments(), symbols: this.imageSymbols() };
    const listing = this.items.map((item): ListingLine => {
      const action = item.action;
      return {
        address: (item.section.base + item.offset) >>> 0,
        bytes: item.section.initialised ? item.section.bytes.subarray(item.offset, item.offset + item.size) : new Uint8Array(0),
        file: item.line.file,
        line: item.line.line,
        source: item.line.text,
        ...(action.kind === 'instruction' ? { code: true } : {}),
      };
    });
    const symbols = new Map<string, number>();
    for (const [name, symbol] of this.symbols) {
      if (symbol.kind === 'label' && !symbol.local) symbols.set(name, this.labelAddress(symbol));
      if (symbol.kind === 'constant') symbols.set(name, symbol.value!);
    }
    return { image, listing, symbols };
  }

  private placeSections(): void {
    const { '.text': text, '.data': data, '.bss': bss } = this.sections;
    let end = 0;
    for (const section of [text, data, bss]) {
      section.base = section.fixedBase ?? alignUp(end, Math.max(SECTION_ALIGNMENT, section.maxAlign));
      end = Math.max(end, section.base + section.size);
      if (section.base + section.size > ADDRESS_SPACE) {
        const at = section.origin ?? { line: { file: this.mainFile, line: 0, text: '' }, col: 0 };
        fail('BV_ASM_SECTION', `${section.name} runs past the end of the 32-bit address space`, at.line, at.col);
      }
      if (section.initialised) section.bytes = new Uint8Array(section.size);
    }
    const used = [text, data, bss].filter((section) => section.size > 0);
    for (const [index, later] of used.entries()) {
      for (const earlier of used.slice(0, index)) {
        if (later.base < earlier.base + earlier.size && earlier.base < later.base + later.size) {
          const at = later.origin!;
          const range = (s: Section): string => `[${hex(s.base)}, ${hex(s.base + s.size)})`;
          fail('BV_ASM_SECTION', `${later.name} ${range(later)} overlaps ${earlier.name} ${range(earlier)}`, at.line, at.col);
        }
      }
    }
  }

  private labelAddress(symbol: LabelSymbol): number {
    return (symbol.section.base + symbol.offset) >>> 0;
  }

  /** Symbol values once everything is placed; `line` positions undefined-symbol errors. */
  private finalContext(line: SourceLine, dot: number): EvalContext {
    return {
      symbol: (node) => {
        const symbol = this.symbols.get(node.name);
        if (!symbol) {
          const detail = /^[0-9]+f$/.test(node.display)
            ? `no local label '${node.display.slice(0, -1)}' after '${node.display}'`
            : `undefined symbol '${node.display}'`;
          return fail('BV_ASM_UNDEFINED_SYMBOL', detail, line, node.col);
        }
        return symbol.kind === 'label' ? this.labelAddress(symbol) : this.constantValue(symbol);
      },
      dot: () => dot,
    };
  }

  private constantValue(symbol: ConstantSymbol): number {
    if (symbol.value !== undefined) return symbol.value;
    if (symbol.evaluating) fail('BV_ASM_CIRCULAR', 'circular definition of a constant', symbol.at.line, symbol.at.col);
    symbol.evaluating = true;
    const dot = symbol.dotSection.base + symbol.dotOffset;
    symbol.value = evaluate(symbol.expr, this.finalContext(symbol.at.line, dot), symbol.at.line);
    symbol.evaluating = false;
    return symbol.value;
  }

  private encodeItem(item: Item): void {
    const { action, section } = item;
    const address = (section.base + item.offset) >>> 0;
    switch (action.kind) {
      case 'none':
        return;
      case 'constant':
        this.constantValue(this.symbols.get(action.name) as ConstantSymbol);
        return;
      case 'fill':
        if (section.initialised) section.bytes.fill(action.value, item.offset, item.offset + item.size);
        return;
      case 'bytes':
        section.bytes.set(action.bytes, item.offset);
        return;
      case 'data':
      case 'instruction': {
        const view = new DataView(section.bytes.buffer, section.bytes.byteOffset, section.bytes.byteLength);
        this.encodeValues(item, view, item.offset, this.finalContext(item.line, address), address, true);
        return;
      }
    }
  }

  /**
   * During layout, checks a data or instruction item whose values are already known, so that
   * range errors are reported in source order rather than after the whole file has been read.
   */
  private trialEncode(item: Item): void {
    const base = item.section.fixedBase;
    // Instructions need their pc (for targets); data only needs `.`, which throws NotYetKnown.
    if (base === undefined && item.action.kind === 'instruction') return;
    const address = base === undefined ? undefined : (base + item.offset) >>> 0;
    try {
      this.encodeValues(item, new DataView(new ArrayBuffer(item.size)), 0, this.layoutContext(address), address, false);
    } catch (error) {
      if (!(error instanceof NotYetKnown)) throw error;
    }
  }

  /** Evaluates, range-checks and encodes the values of a data or instruction item into `view`. */
  private encodeValues(item: Item, view: DataView, offset: number, context: EvalContext, address: number | undefined, final: boolean): void {
    const { action, line } = item;
    if (action.kind === 'data') {
      const [min, max] = DATA_RANGES[action.width];
      action.values.forEach((expr, index) => {
        const value = evaluate(expr, context, line);
        if (value < min || value > max) fail('BV_ASM_RANGE', `value ${value} does not fit in ${action.width} byte(s) (${min}..${max})`, line, expr.col);
        const at = offset + index * action.width;
        if (action.width === 1) view.setUint8(at, value & 0xff);
        else if (action.width === 2) view.setUint16(at, value & 0xffff, true);
        else view.setUint32(at, value >>> 0, true);
      });
      return;
    }
    if (action.kind !== 'instruction' || address === undefined) return;
    const operands = action.operands.map((operand): ResolvedOperand => {
      if (operand.syntax === 'reg') return { reg: operand.reg, value: 0, col: operand.col };
      if (operand.syntax === 'mem') {
        return { reg: operand.reg, value: operand.offset ? evaluate(operand.offset, context, line) : 0, col: operand.col };
      }
      if (final && operand.csrName !== undefined && !this.symbols.has(operand.csrName)) {
        fail('BV_ASM_BAD_CSR', `unknown CSR '${operand.csrName}' (known: ${[...CSR_NAMES.keys()].join(', ')})`, line, operand.col);
      }
      return { reg: 0, value: evaluate(operand.expr, context, line), col: operand.col };
    });
    const words = item.size / 4;
    const emits = action.real ? [realEmit(action.real, operands)] : action.pseudo!.expand(operands, { pc: address, words, col: action.col });
    emits.forEach((emit, index) => {
      view.setUint32(offset + index * 4, encodeEmit(emit, (address + index * 4) >>> 0, line), true);
    });
  }

  private entryPoint(): number {
    const text = this.sections['.text'];
    let entry: number;
    let at: Position | undefined;
    if (this.entry) {
      at = this.entry.at;
      entry = evaluate(this.entry.expr, this.finalContext(at.line, 0), at.line) >>> 0;
    } else {
      const start = this.symbols.get('_start');
      if (start?.kind === 'label') {
        at = start.at;
        entry = this.labelAddress(start);
      } else {
        entry = text.base;
      }
    }
    if (text.size === 0) {
      throw new AssemblyError('BV_ASM_ENTRY', 'the program has no code (.text is empty)', this.mainFile, 0, 0, '');
    }
    if (entry % 4 !== 0 || entry < text.base || entry >= text.base + text.size) {
      const detail = `entry point ${hex(entry)} is not a 4-byte aligned address inside .text [${hex(text.base)}, ${hex(text.base + text.size)})`;
      if (at) fail('BV_ASM_ENTRY', detail, at.line, at.col);
      throw new AssemblyError('BV_ASM_ENTRY', detail, this.mainFile, 0, 0, '');
    }
    return entry;
  }

  private segments(): ImageSegment[] {
    return SECTION_NAMES.map((name) => this.sections[name])
      .filter((section) => section.size > 0)
      .map((section) => ({
        gpa: section.base,
        data: section.initialised ? section.bytes : new Uint8Array(0),
        memSize: section.size,
        flags: section.flags,
        name: section.name,
      }));
  }

  private imageSymbols(): ImageSymbol[] {
    const global = new Set<string>();
    for (const { name, at } of this.globals) {
      const symbol = this.symbols.get(name);
      if (!symbol) fail('BV_ASM_UNDEFINED_SYMBOL', `.global names undefined symbol '${name}'`, at.line, at.col);
      if (symbol.kind !== 'label') fail('BV_ASM_SYNTAX', `.global needs a label; '${name}' is a constant`, at.line, at.col);
      global.add(name);
    }
    const symbols: ImageSymbol[] = [];
    for (const [name, symbol] of this.symbols) {
      if (symbol.kind === 'label' && !symbol.local) symbols.push({ name, value: this.labelAddress(symbol), global: global.has(name) });
    }
    return symbols;
  }
}

/** Assembles source text. Throws AssemblyError (with file, line and column) for any mistake. */
export function assemble(source: string, options: AssembleOptions = {}): AssembleResult {
  const fileName = options.fileName ?? '<input>';
  const reader = new SourceReader(options.readFile ?? ((path) => readFileSync(path, 'utf8')), isReservedName);
  const assembler = new Assembler(fileName);
  assembler.layout(reader.file(source, fileName));
  return assembler.finish();
}

/** Assembles a file from the real file system; includes are relative to it. */
export function assembleFile(path: string): AssembleResult {
  let source: string;
  try {
    source = readFileSync(path, 'utf8');
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new AssemblyError('BV_ASM_READ', `cannot read the source file: ${reason}`, path, 0, 0, '');
  }
  return assemble(source, { fileName: path });
}

const LISTING_BYTES_PER_ROW = 8;
const LISTING_WORDS_PER_ROW = 2;
/** Long data (.space, long strings) shows this many rows, then how much more there is. */
const LISTING_MAX_ROWS = 4;
const ENCODING_WIDTH = LISTING_BYTES_PER_ROW * 3 - 1;

function encodingRows(line: ListingLine): string[] {
  const rows: string[] = [];
  const { bytes } = line;
  if (line.code) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let offset = 0; offset < bytes.length; offset += 4 * LISTING_WORDS_PER_ROW) {
      const words: string[] = [];
      for (let at = offset; at < Math.min(bytes.length, offset + 4 * LISTING_WORDS_PER_ROW); at += 4) {
        words.push(view.getUint32(at, true).toString(16).padStart(8, '0'));
      }
      rows.push(words.join(' '));
    }
    return rows;
  }
  for (let offset = 0; offset < bytes.length; offset += LISTING_BYTES_PER_ROW) {
    if (rows.length === LISTING_MAX_ROWS - 1 && bytes.length - offset > LISTING_BYTES_PER_ROW) {
      rows.push(`... ${bytes.length - offset} more bytes`);
      break;
    }
    rows.push(Array.from(bytes.subarray(offset, offset + LISTING_BYTES_PER_ROW), (byte) => byte.toString(16).padStart(2, '0')).join(' '));
  }
  return rows;
}

/**
 * One row per source line: `address  encoding  source` (instructions as 32-bit words, data as
 * bytes; long data continues on further rows). A `; file` row marks each change of file.
 */
export function formatListing(result: AssembleResult): string {
  const out: string[] = [];
  let file: string | undefined;
  for (const line of result.listing) {
    if (line.file !== file) {
      file = line.file;
      out.push(`; ${file}`);
    }
    const address = line.address.toString(16).padStart(8, '0');
    const rows = encodingRows(line);
    out.push(`${address}  ${(rows[0] ?? '').padEnd(ENCODING_WIDTH)}  ${line.source}`.trimEnd());
    const step = line.code ? 4 * LISTING_WORDS_PER_ROW : LISTING_BYTES_PER_ROW;
    rows.slice(1).forEach((row, index) => {
      const rowAddress = ((line.address + (index + 1) * step) >>> 0).toString(16).padStart(8, '0');
      out.push(`${rowAddress}  ${row}`);
    });
  }
  return `${out.join('\n')}\n`;
}
