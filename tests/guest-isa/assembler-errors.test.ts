/**
 * Assembly errors: each case asserts the stable code, the exact line and column of the
 * offending token, and the message text; plus the caret rendering of AssemblyError.format().
 */
import { describe, expect, it } from 'vitest';
import { assemble, assembleFile, AssemblyError } from '../../guest-isa/assembler.ts';
import { BvError } from '../../guest-isa/errors.ts';

const FILES: Readonly<Record<string, string>> = {
  '/p/a.s': '.include "b.s"',
  '/p/b.s': 'nop\n.include "a.s"',
  '/p/self.s': '.include "self.s"',
  '/p/deep.s': '.include "deep2.s"',
};

function readFake(path: string): string {
  const text = FILES[path];
  if (text !== undefined) return text;
  // deepN.s includes deepN+1.s forever (distinct names, so only the depth limit stops it).
  const deep = /^\/p\/deep(\d+)\.s$/.exec(path);
  if (deep) return `.include "deep${Number(deep[1]) + 1}.s"`;
  throw new Error('ENOENT: no such file');
}

function errorOf(source: string): AssemblyError {
  try {
    assemble(source, { fileName: '/p/main.s', readFile: readFake });
  } catch (error) {
    if (error instanceof AssemblyError) return error;
    throw error;
  }
  throw new Error(`no error for ${JSON.stringify(source)}`);
}

interface Case {
  name: string;
  source: string;
  code: string;
  file?: string;
  line: number;
  column: number;
  message: string;
}

const CASES: Case[] = [
  { name: 'unknown mnemonic', source: 'nop\n  frob a0, a1', code: 'BV_ASM_UNKNOWN_MNEMONIC', line: 2, column: 3, message: "unknown instruction 'frob'" },
  { name: 'bad register', source: 'add a0, a1, x9', code: 'BV_ASM_BAD_REGISTER', line: 1, column: 13, message: "expected a register (r0..r15 or an ABI name), found 'x9'" },
  { name: 'register number too high', source: 'mv r16, a0', code: 'BV_ASM_BAD_REGISTER', line: 1, column: 4, message: "expected a register (r0..r15 or an ABI name), found 'r16'" },
  { name: 'bad base register', source: 'sw a0, 4(x)', code: 'BV_ASM_BAD_REGISTER', line: 1, column: 10, message: "expected a register (r0..r15 or an ABI name), found 'x'" },
  { name: 'signed immediate out of range', source: 'addi a0, a0, 40000', code: 'BV_ASM_RANGE', line: 1, column: 14, message: "immediate 40000 is out of range for 'addi' (-32768..32767)" },
  { name: 'zero-extended immediate is never negative', source: 'ori a0, a0, -1', code: 'BV_ASM_RANGE', line: 1, column: 13, message: "immediate -1 is out of range for 'ori' (0..65535)" },
  { name: 'shift amount out of range', source: 'slli a0, a0, 32', code: 'BV_ASM_RANGE', line: 1, column: 14, message: "shift amount 32 is out of range for 'slli' (0..31)" },
  { name: 'lui immediate out of range', source: 'lui a0, 0x100000', code: 'BV_ASM_RANGE', line: 1, column: 9, message: "immediate 1048576 is out of range for 'lui' (0x0..0xfffff)" },
  { name: 'load offset out of range', source: 'lw a0, 0x8000(sp)', code: 'BV_ASM_RANGE', line: 1, column: 8, message: "immediate 32768 is out of range for 'lw' (-32768..32767)" },
  { name: 'branch out of range', source: 'beq a0, a1, far\n.org 0x40000\nfar: nop', code: 'BV_ASM_TARGET_RANGE', line: 1, column: 13, message: "target 0x40000 is out of range for 'beq' (64512 words away; the limit is -32768..32767)" },
  { name: 'jump out of range', source: 'j far\n.org 0x201000\nfar: nop', code: 'BV_ASM_TARGET_RANGE', line: 1, column: 3, message: "target 0x201000 is out of range for 'jal' (524288 words away; the limit is -524288..524287)" },
  { name: 'misaligned target', source: 'nop\nj 0x1002', code: 'BV_ASM_MISALIGNED', line: 2, column: 3, message: 'target 0x1002 is not 4-byte aligned' },
  { name: 'misaligned instruction', source: '.byte 1\nnop', code: 'BV_ASM_MISALIGNED', line: 2, column: 1, message: 'instruction at 0x1001 is not 4-byte aligned (add .align 2)' },
  { name: 'misaligned section start', source: '.org 0x1002\nnop', code: 'BV_ASM_MISALIGNED', line: 1, column: 6, message: 'a section must start 4-byte aligned, not at 0x1002' },
  { name: 'undefined symbol', source: 'nop\nli a0, 1 + missing', code: 'BV_ASM_UNDEFINED_SYMBOL', line: 2, column: 12, message: "undefined symbol 'missing'" },
  { name: 'no backward local label', source: 'beq a0, a1, 1b', code: 'BV_ASM_UNDEFINED_SYMBOL', line: 1, column: 13, message: "no local label '1' before '1b'" },
  { name: 'no forward local label', source: '1: nop\nbeq a0, a1, 1f', code: 'BV_ASM_UNDEFINED_SYMBOL', line: 2, column: 13, message: "no local label '1' after '1f'" },
  { name: 'duplicate label', source: 'x: nop\n  x: nop', code: 'BV_ASM_DUPLICATE_SYMBOL', line: 2, column: 3, message: "symbol 'x' is already defined (at /p/main.s:1)" },
  { name: 'label redefined as a constant', source: 'x: nop\n.equ x, 1', code: 'BV_ASM_DUPLICATE_SYMBOL', line: 2, column: 6, message: "symbol 'x' is already defined (at /p/main.s:1)" },
  { name: 'register name as a label', source: 'a0: nop', code: 'BV_ASM_SYNTAX', line: 1, column: 1, message: "'a0' is a register or reserved name and cannot be a symbol" },
  { name: '.org backwards', source: '.org 0x2000\nnop\n.org 0x1000', code: 'BV_ASM_ORG_BACKWARDS', line: 3, column: 6, message: '.org 0x1000 would move backwards (the location is already 0x2004)' },
  { name: '.org after content in an automatically placed section', source: 'nop\n.data\n.word 1\n.org 0x5000', code: 'BV_ASM_NOT_CONSTANT', line: 4, column: 6, message: '.org in .data needs a fixed section start: put an .org before its first content' },
  { name: 'include cycle', source: '.include "a.s"', code: 'BV_ASM_INCLUDE_CYCLE', file: '/p/b.s', line: 2, column: 10, message: 'include cycle: /p/main.s -> /p/a.s -> /p/b.s -> /p/a.s' },
  { name: 'file including itself', source: '.include "self.s"', code: 'BV_ASM_INCLUDE_CYCLE', file: '/p/self.s', line: 1, column: 10, message: 'include cycle: /p/main.s -> /p/self.s -> /p/self.s' },
  { name: 'include too deep', source: '.include "deep.s"', code: 'BV_ASM_INCLUDE_DEPTH', file: '/p/deep16.s', line: 1, column: 10, message: 'includes nested deeper than 16 levels' },
  { name: 'missing include file', source: 'nop\n.include "missing.s"', code: 'BV_ASM_INCLUDE', line: 2, column: 10, message: "cannot read include file '/p/missing.s': ENOENT: no such file" },
  { name: 'unclosed macro', source: 'nop\n  .macro m a\nnop', code: 'BV_ASM_MACRO', line: 2, column: 3, message: "unclosed .macro 'm' (missing .endm)" },
  { name: '.endm without .macro', source: '.endm', code: 'BV_ASM_MACRO', line: 1, column: 1, message: '.endm without .macro' },
  { name: 'macro argument count', source: '.macro m a\nnop\n.endm\nm 1, 2', code: 'BV_ASM_MACRO', line: 4, column: 1, message: "macro 'm' expects 1 argument(s), got 2" },
  { name: 'macro named like an instruction', source: '.macro add a\n.endm', code: 'BV_ASM_MACRO', line: 1, column: 8, message: "'add' is an instruction or directive and cannot be a macro name" },
  { name: 'recursive macro', source: '.macro r\n  r\n.endm\nr', code: 'BV_ASM_MACRO', line: 2, column: 3, message: "macro expansion nested deeper than 64 levels (does 'r' invoke itself?) (in macro 'r' expanded at /p/main.s:2)" },
  { name: 'error inside a macro expansion names the call site', source: '.macro load v\n  li a0, \\v\n.endm\nnop\nload nothing', code: 'BV_ASM_UNDEFINED_SYMBOL', line: 2, column: 10, message: "undefined symbol 'nothing' (in macro 'load' expanded at /p/main.s:5)" },
  { name: 'bad string escape', source: '.ascii "a\\qb"', code: 'BV_ASM_BAD_ESCAPE', line: 1, column: 10, message: "unknown escape '\\q'" },
  { name: 'bad \\x escape', source: '.ascii "\\xg0"', code: 'BV_ASM_BAD_ESCAPE', line: 1, column: 9, message: 'escape \\x needs two hex digits' },
  { name: 'unterminated string', source: 'nop\n.ascii "abc', code: 'BV_ASM_BAD_STRING', line: 2, column: 8, message: 'unterminated string' },
  { name: 'division by zero', source: '.equ X, 4 / (2 - 2)', code: 'BV_ASM_DIV_ZERO', line: 1, column: 11, message: 'division by zero' },
  { name: 'modulo by zero found at the end', source: 'li a0, 1 % Z\nZ = 0', code: 'BV_ASM_DIV_ZERO', line: 1, column: 10, message: 'division by zero' },
  { name: 'too few operands', source: 'add a0, a1', code: 'BV_ASM_OPERAND_COUNT', line: 1, column: 1, message: "'add' expects 3 operand(s) (add rd, rs1, rs2), got 2" },
  { name: 'too many operands', source: '  ret a0', code: 'BV_ASM_OPERAND_COUNT', line: 1, column: 3, message: "'ret' expects 0 operand(s) (ret), got 1" },
  { name: 'operand count with several forms', source: 'jal a0, a1, 8', code: 'BV_ASM_OPERAND_COUNT', line: 1, column: 1, message: "'jal' expects 2 or 1 operand(s) (jal rd, target | jal target), got 3" },
  { name: 'missing operand', source: 'add a0, , a1', code: 'BV_ASM_SYNTAX', line: 1, column: 9, message: 'missing operand' },
  { name: 'content in .bss', source: '.bss\nbuf: .word 1', code: 'BV_ASM_BSS_CONTENT', line: 2, column: 6, message: '.word is not allowed in .bss (only labels, .space, .align and .org)' },
  { name: 'instruction in .bss', source: '.bss\n nop', code: 'BV_ASM_BSS_CONTENT', line: 2, column: 2, message: 'instructions are not allowed in .bss' },
  { name: 'not a memory operand', source: 'lw a0, a1', code: 'BV_ASM_BAD_OPERAND', line: 1, column: 8, message: 'expected a memory operand offset(register)' },
  { name: 'unknown CSR', source: 'csrr a0, bogus', code: 'BV_ASM_BAD_CSR', line: 1, column: 10, message: "unknown CSR 'bogus' (known: status, tvec, epc, cause, tval, scratch, ie, ip, ptbr, instret, instreth, time, timeh, hartid)" },
  { name: 'CSR number out of range', source: 'csrrw a0, 0x1000, a1', code: 'BV_ASM_BAD_CSR', line: 1, column: 11, message: "CSR number 4096 is out of range for 'csrrw' (0x0..0xfff)" },
  { name: '.byte out of range', source: 'nop\n.byte 1, 256', code: 'BV_ASM_RANGE', line: 2, column: 10, message: 'value 256 does not fit in 1 byte(s) (-128..255)' },
  { name: '.space needs a known size', source: '.space later\nlater: nop', code: 'BV_ASM_NOT_CONSTANT', line: 1, column: 8, message: ".space needs a value known at this point: 'later' is not defined before this line" },
  { name: 'unknown directive', source: '.foo 1', code: 'BV_ASM_UNKNOWN_DIRECTIVE', line: 1, column: 1, message: "unknown directive '.foo'" },
  { name: 'circular constants', source: 'A = B\nB = A\nnop', code: 'BV_ASM_CIRCULAR', line: 1, column: 1, message: 'circular definition of a constant' },
  { name: 'dangling operator', source: 'addi a0, a0, 1 +', code: 'BV_ASM_SYNTAX', line: 1, column: 17, message: 'expected an expression' },
  { name: 'register inside an expression', source: 'addi a0, a0, t0 + 1', code: 'BV_ASM_SYNTAX', line: 1, column: 14, message: "register 't0' cannot be used in an expression" },
  { name: 'malformed number', source: 'li a0, 12abc', code: 'BV_ASM_BAD_NUMBER', line: 1, column: 8, message: "malformed number '12abc'" },
  { name: 'number too large', source: 'li a0, 0x100000000', code: 'BV_ASM_BAD_NUMBER', line: 1, column: 8, message: 'number 0x100000000 does not fit in 32 bits' },
  { name: 'unexpected character', source: 'addi a0, a0, 1 @ 2', code: 'BV_ASM_SYNTAX', line: 1, column: 16, message: "unexpected character '@'" },
  { name: 'sections overlap', source: '.org 0x2000\nnop\n.data\n.org 0x2000\n.word 1', code: 'BV_ASM_SECTION', line: 4, column: 6, message: '.data [0x2000, 0x2004) overlaps .text [0x2000, 0x2004)' },
  { name: 'entry outside .text', source: '.entry data_label\nnop\n.data\ndata_label: .word 0', code: 'BV_ASM_ENTRY', line: 1, column: 8, message: 'entry point 0x2000 is not a 4-byte aligned address inside .text [0x1000, 0x1004)' },
  { name: '.global of an undefined symbol', source: '.global foo\nnop', code: 'BV_ASM_UNDEFINED_SYMBOL', line: 1, column: 9, message: ".global names undefined symbol 'foo'" },
  { name: 'alignment exponent out of range', source: '.align 23', code: 'BV_ASM_RANGE', line: 1, column: 8, message: 'alignment exponent 23 is out of range 0..22' },
];

describe('assembly errors', () => {
  it.each(CASES)('$name', ({ source, code, file, line, column, message }) => {
    const error = errorOf(source);
    expect(error).toBeInstanceOf(BvError);
    expect({ code: error.code, file: error.file, line: error.line, column: error.column, detail: error.detail }).toEqual({
      code,
      file: file ?? '/p/main.s',
      line,
      column,
      detail: message,
    });
    expect(error.message).toBe(`${file ?? '/p/main.s'}:${line}:${column}: ${message}`);
  });

  it.each<[string, string, number, string]>([
    ['syntax before a later layout error', 'nop\nadd a0, a1, q\nfrob\n.include "missing.s"', 2, 'BV_ASM_BAD_REGISTER'],
    ['known out-of-range immediate before a later unknown mnemonic', 'nop\naddi a0, a0, 0x8000\nfrob', 2, 'BV_ASM_RANGE'],
    ['known out-of-range branch before a later error', 'beq a0, a1, 0x40000\nfrob', 1, 'BV_ASM_TARGET_RANGE'],
    ['.byte out of range in .data before a later error', '.data\n.byte 300\n.text\nfrob', 2, 'BV_ASM_RANGE'],
  ])('reports the first error in source order: %s', (_, source, line, code) => {
    const error = errorOf(source);
    expect([error.line, error.code]).toEqual([line, code]);
  });

  it('format() shows the message, the source line and a caret under the column (tabs kept)', () => {
    const error = errorOf('nop\n\tadd\ta0, a1, bad');
    expect(error.format()).toBe(
      [
        "/p/main.s:2:14: expected a register (r0..r15 or an ABI name), found 'bad'",
        '    \tadd\ta0, a1, bad',
        '    \t   \t        ^',
      ].join('\n'),
    );
  });

  it('an empty program is refused: an image needs code', () => {
    const error = errorOf('# nothing\n.data\n.word 1');
    expect([error.code, error.message]).toEqual(['BV_ASM_ENTRY', '/p/main.s: the program has no code (.text is empty)']);
  });

  it('assembleFile of a missing file is a typed error without a position', () => {
    let caught: unknown;
    try {
      assembleFile('/nonexistent/dir/prog.s');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(AssemblyError);
    expect((caught as AssemblyError).code).toBe('BV_ASM_READ');
    expect((caught as AssemblyError).message).toMatch(/^\/nonexistent\/dir\/prog\.s: cannot read the source file: ENOENT/);
  });
});
