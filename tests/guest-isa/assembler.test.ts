/**
 * The assembler's features: directives, pseudo-instructions, expressions, labels, macros,
 * includes, section layout, entry selection, the listing, and li/la correctness (checked by
 * decoding the emitted words and applying the instructions' semantics).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { assemble, formatListing, PSEUDO_INSTRUCTIONS, type AssembleResult } from '../../guest-isa/assembler.ts';
import { Csr, Reg } from '../../guest-isa/arch.ts';
import { decodeInstruction, encodeInstruction, type InstructionFields } from '../../guest-isa/encoding.ts';
import { SegmentFlag } from '../../guest-isa/image-types.ts';

const { ZERO, RA, SP, A0, A1, A2, T0, S0 } = Reg;

function asm(source: string, readFile?: (path: string) => string): AssembleResult {
  return assemble(source, { fileName: '/src/main.s', readFile });
}

function segment(result: AssembleResult, name: string) {
  const found = result.image.segments.find((candidate) => candidate.name === name);
  if (!found) throw new Error(`no segment ${name}`);
  return found;
}

function words(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.length >> 2 }, (_, index) => view.getUint32(index * 4, true));
}

/** The .text words of a program. */
function textWords(source: string): number[] {
  return words(segment(asm(source), '.text').data);
}

const enc = (mnemonic: string, fields: Partial<InstructionFields>): number => encodeInstruction(mnemonic, fields);

/**
 * Runs straight-line lui/auipc/addi/ori code (what li and la expand to) starting at `pc` and
 * returns the register file: the semantics come from SPEC.md (addi sign-extends, ori
 * zero-extends, lui = imm20 << 12, auipc = pc + (imm20 << 12)).
 */
function runStraightLine(code: number[], pc: number): number[] {
  const regs = new Array<number>(16).fill(0);
  code.forEach((word, index) => {
    const decoded = decodeInstruction(word);
    if (!decoded) throw new Error(`illegal word ${word.toString(16)}`);
    const { spec, rd, rs1, imm } = decoded;
    let value: number;
    switch (spec.mnemonic) {
      case 'addi': value = regs[rs1]! + imm; break;
      case 'ori': value = regs[rs1]! | imm; break;
      case 'sub': value = regs[rs1]! - regs[decoded.rs2]!; break;
      case 'lui': value = imm << 12; break;
      case 'auipc': value = pc + index * 4 + (imm << 12); break;
      default: throw new Error(`unexpected ${spec.mnemonic}`);
    }
    if (rd !== 0) regs[rd] = value >>> 0;
  });
  return regs;
}

describe('instructions and operands', () => {
  it('encodes every operand form through encodeInstruction', () => {
    expect(
      textWords(`
        add a0, a1, a2
        addi sp, sp, -16
        andi t0, a0, 0xffff
        slli a0, a0, 31
        lw ra, 12(sp)
        lw ra, (sp)
        sb a1, -1(a0)
        lui a0, 0xfffff
        amoadd a0, a1, (a2)
        csrrw zero, tvec, a0
        csrrs a0, 0x10, zero
        sfence a0, a1
        ecall
        ADD R1, R2, R3
      `),
    ).toEqual([
      enc('add', { rd: A0, rs1: A1, rs2: A2 }),
      enc('addi', { rd: SP, rs1: SP, imm: -16 }),
      enc('andi', { rd: T0, rs1: A0, imm: 0xffff }),
      enc('slli', { rd: A0, rs1: A0, imm: 31 }),
      enc('lw', { rd: RA, rs1: SP, imm: 12 }),
      enc('lw', { rd: RA, rs1: SP, imm: 0 }),
      enc('sb', { rs2: A1, rs1: A0, imm: -1 }),
      enc('lui', { rd: A0, imm: 0xfffff }),
      enc('amoadd', { rd: A0, rs2: A1, rs1: A2 }),
      enc('csrrw', { rd: ZERO, imm: Csr.TVEC, rs1: A0 }),
      enc('csrrs', { rd: A0, imm: Csr.INSTRET, rs1: ZERO }),
      enc('sfence', { rs1: A0, rs2: A1 }),
      enc('ecall', {}),
      enc('add', { rd: 1, rs1: 2, rs2: 3 }),
    ]);
  });

  it('computes branch and jump offsets from absolute targets, backward and forward', () => {
    expect(
      textWords(`
        top: beq a0, a1, bottom
             jal ra, top
             bne a0, zero, 0x1000
        bottom: jal zero, .
      `),
    ).toEqual([
      enc('beq', { rs1: A0, rs2: A1, imm: 3 }),
      enc('jal', { rd: RA, imm: -1 }),
      enc('bne', { rs1: A0, rs2: ZERO, imm: -2 }),
      enc('jal', { rd: ZERO, imm: 0 }),
    ]);
  });
});

describe('pseudo-instructions', () => {
  const cases: [string, number[]][] = [
    ['nop', [enc('addi', {})]],
    ['mv a0, a1', [enc('addi', { rd: A0, rs1: A1 })]],
    ['not a0, a0', [enc('sub', { rd: A0, rs1: ZERO, rs2: A0 }), enc('addi', { rd: A0, rs1: A0, imm: -1 })]],
    ['neg a0, a1', [enc('sub', { rd: A0, rs1: ZERO, rs2: A1 })]],
    ['j 0x1000', [enc('jal', { rd: ZERO, imm: 0 })]],
    ['jal 0x1000', [enc('jal', { rd: RA, imm: 0 })]],
    ['call 0x1000', [enc('jal', { rd: RA, imm: 0 })]],
    ['ret', [enc('jalr', { rd: ZERO, rs1: RA, imm: 0 })]],
    ['jr t0', [enc('jalr', { rd: ZERO, rs1: T0, imm: 0 })]],
    ['beqz a0, 0x1000', [enc('beq', { rs1: A0, rs2: ZERO })]],
    ['bnez a0, 0x1000', [enc('bne', { rs1: A0, rs2: ZERO })]],
    ['bltz a0, 0x1000', [enc('blt', { rs1: A0, rs2: ZERO })]],
    ['bgez a0, 0x1000', [enc('bge', { rs1: A0, rs2: ZERO })]],
    ['blez a0, 0x1000', [enc('bge', { rs1: ZERO, rs2: A0 })]],
    ['bgtz a0, 0x1000', [enc('blt', { rs1: ZERO, rs2: A0 })]],
    ['bgt a0, a1, 0x1000', [enc('blt', { rs1: A1, rs2: A0 })]],
    ['ble a0, a1, 0x1000', [enc('bge', { rs1: A1, rs2: A0 })]],
    ['bgtu a0, a1, 0x1000', [enc('bltu', { rs1: A1, rs2: A0 })]],
    ['bleu a0, a1, 0x1000', [enc('bgeu', { rs1: A1, rs2: A0 })]],
    ['seqz a0, a1', [enc('sltiu', { rd: A0, rs1: A1, imm: 1 })]],
    ['snez a0, a1', [enc('sltu', { rd: A0, rs1: ZERO, rs2: A1 })]],
    ['csrr a0, cause', [enc('csrrs', { rd: A0, imm: Csr.CAUSE, rs1: ZERO })]],
    ['csrw scratch, sp', [enc('csrrw', { rd: ZERO, imm: Csr.SCRATCH, rs1: SP })]],
    ['csrs status, t0', [enc('csrrs', { rd: ZERO, imm: Csr.STATUS, rs1: T0 })]],
    ['csrc ie, t0', [enc('csrrc', { rd: ZERO, imm: Csr.IE, rs1: T0 })]],
    ['sfence', [enc('sfence', { rs1: ZERO, rs2: ZERO })]],
  ];
  it.each(cases)('%s', (source, expected) => {
    expect(textWords(source)).toEqual(expected);
  });

  it('the table covers every pseudo-instruction tested here (and nothing untested)', () => {
    const tested = new Set([...cases.map(([source]) => source.split(' ')[0]!), 'li', 'la']);
    expect(new Set(PSEUDO_INSTRUCTIONS.map((pseudo) => pseudo.mnemonic))).toEqual(tested);
  });

  it('not is correct when rd == rs and when they differ', () => {
    const regs = runStraightLine(textWords('li a1, 0x1234\nnot a0, a1\nnot a1, a1'), 0x1000);
    expect(regs[A0]).toBe(~0x1234 >>> 0);
    expect(regs[A1]).toBe(~0x1234 >>> 0);
  });
});

describe('li', () => {
  const forms: [number, string[]][] = [
    [0, ['addi']], [1, ['addi']], [-1, ['addi']], [0x7fff, ['addi']], [-0x8000, ['addi']],
    [0x8000, ['ori']], [0xffff, ['ori']],
    [0x10000, ['lui']], [0x12345000, ['lui']], [0x8000_0000 | 0, ['lui']], [-65536, ['lui']],
    [-0x8001, ['lui', 'ori']], [0x12345678, ['lui', 'ori']], [0x7fffffff, ['lui', 'ori']], [0x10001, ['lui', 'ori']],
  ];
  it.each(forms)('li %i uses the shortest form and loads the value', (value, mnemonics) => {
    const code = textWords(`li a0, ${value}`);
    expect(code.map((word) => decodeInstruction(word)!.spec.mnemonic)).toEqual(mnemonics);
    expect(runStraightLine(code, 0x1000)[A0]).toBe(value >>> 0);
  });

  it('accepts unsigned spellings of negative values (32-bit wrap)', () => {
    expect(textWords('li a0, 0xffffffff')).toEqual(textWords('li a0, -1'));
  });

  it('any 32-bit value loads correctly (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: -(2 ** 31), max: 2 ** 32 - 1 }), fc.integer({ min: 1, max: 15 }), (value, rd) => {
        const regs = runStraightLine(textWords(`li r${rd}, ${value < 0 ? `-${-value}` : value}`), 0x1000);
        expect(regs[rd]).toBe(value >>> 0);
      }),
      { numRuns: 300 },
    );
  });

  it('uses lui+ori for a value defined later, even a small one, and the sizes stay consistent', () => {
    const result = asm(`
      li a0, SMALL      # not known yet: two words
      li a1, end        # a label later in the section: two words
      li a2, EARLY      # known: one word
      end: nop
      .equ SMALL, 5
    `.replace('EARLY', '7'));
    const code = words(segment(result, '.text').data);
    expect(code).toHaveLength(6);
    const regs = runStraightLine(code.slice(0, 5), 0x1000);
    expect(regs[A0]).toBe(5);
    expect(regs[A1]).toBe(result.symbols.get('end'));
    expect(result.symbols.get('end')).toBe(0x1000 + 5 * 4);
    expect(regs[A2]).toBe(7);
  });

  it('a label in .data (placed after layout) takes two words and loads its final address', () => {
    const result = asm('.data\nx: .word 1\n.text\nli a0, x');
    const regs = runStraightLine(words(segment(result, '.text').data), 0x1000);
    expect(regs[A0]).toBe(0x2000);
  });
});

describe('la', () => {
  it('is pc-relative (auipc + addi) and loads the label address, forwards and backwards', () => {
    const result = asm(`
      .org 0x400000
      back: nop
      la a0, back
      la a1, ahead
      .data
      .org 0x00123ffc
      ahead: .word 0
    `);
    const code = words(segment(result, '.text').data);
    expect(decodeInstruction(code[1]!)!.spec.mnemonic).toBe('auipc');
    expect(decodeInstruction(code[2]!)!.spec.mnemonic).toBe('addi');
    const regs = runStraightLine(code.slice(1), 0x400004);
    expect(regs[A0]).toBe(0x400000);
    expect(regs[A1]).toBe(0x123ffc);
  });

  it('the same code loads the right address wherever it is placed (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0x3fff_f000 }), fc.integer({ min: 0, max: 0x3fff_ffff }), (codeSlot, dataSlot) => {
        const codeBase = codeSlot * 4;
        const dataBase = dataSlot * 4;
        fc.pre(dataBase >= codeBase + 16 || dataBase + 4 <= codeBase);
        const result = asm(`.org ${codeBase}\nla s0, target\n.data\n.org ${dataBase}\ntarget: .word 0`);
        const regs = runStraightLine(words(segment(result, '.text').data), codeBase);
        expect(regs[S0]).toBe(dataBase);
      }),
      { numRuns: 300 },
    );
  });
});

describe('expressions', () => {
  const cases: [string, number][] = [
    ['1 + 2 * 3', 7],
    ['(1 + 2) * 3', 9],
    ['-7 / 2', -3],
    ['-7 % 2', -1],
    ['1 << 4 | 1', 17],
    ['0xf0 & 0x3c ^ 0x01', 0x31],
    ['~0', -1],
    ['-(-5)', 5],
    ['+5', 5],
    ['-1 >> 4', -1],
    ['-1 >>> 28', 15],
    ['0x7fffffff + 1', -(2 ** 31)],
    ['0xffffffff', -1],
    ['0b1011', 11],
    ["'A' + 1", 66],
    ["'\\n'", 10],
    ["'\\''", 39],
    ["'\\\\'", 92],
    ["'\\0'", 0],
    ['%hi(0x12345678)', 0x12345],
    ['%lo(0x12345678)', 0x678],
    ['1 + 2 << 3', 24],
    ['6 - 2 - 1', 3],
    ['100 / 10 / 5', 2],
    ['1 | 2 ^ 3 & 4', 1 | (2 ^ (3 & 4))],
    ['0x80000000 / -1', -(2 ** 31)],
  ];
  it.each(cases)('%s = %i', (expression, value) => {
    expect(asm(`.equ X, ${expression}\nnop`).symbols.get('X')).toBe(value);
  });

  it('%hi/%lo pairs rebuild a value with lui + ori', () => {
    const code = textWords('.equ V, 0xdeadbeef\nlui a0, %hi(V)\nori a0, a0, %lo(V)');
    expect(runStraightLine(code, 0x1000)[A0]).toBe(0xdeadbeef);
  });

  it('. is the address of the current line; symbols and constants may be used before their definition', () => {
    const result = asm('nop\nhere: .word ., later, K * 2\nlater: nop\n.equ K, later - here');
    expect(words(segment(result, '.text').data).slice(1, 4)).toEqual([0x1004, 0x1010, 24]);
  });

  it('equ = form and constants that depend on other constants', () => {
    const result = asm('A = B + 1\nB = 41\n.equ C, A * 2\nnop');
    expect(result.symbols.get('A')).toBe(42);
    expect(result.symbols.get('C')).toBe(84);
  });
});

describe('data directives', () => {
  it('.byte .half .word .ascii .asciz .space lay out little-endian bytes without padding', () => {
    const result = asm(`
      nop
      .data
      .byte 1, -1, 255, 'z'
      .half 0x1234, -2
      .word 0xdeadbeef, -1
      .ascii "ab", "c\\n\\t\\r\\0\\\\\\"\\x7f"
      .asciz "é"
      .space 3
      .space 2, 0xaa
    `);
    expect(Array.from(segment(result, '.data').data)).toEqual([
      1, 0xff, 0xff, 0x7a,
      0x34, 0x12, 0xfe, 0xff,
      0xef, 0xbe, 0xad, 0xde, 0xff, 0xff, 0xff, 0xff,
      0x61, 0x62, 0x63, 10, 9, 13, 0, 0x5c, 0x22, 0x7f,
      0xc3, 0xa9, 0,
      0, 0, 0,
      0xaa, 0xaa,
    ]);
  });

  it('.align pads with zeros to 2^n (in .text with zero words) and the label after it is aligned', () => {
    const result = asm('nop\n.align 4\nafter: nop\n.data\n.byte 1\n.align 3\nd: .byte 2');
    expect(words(segment(result, '.text').data)).toEqual([enc('addi', {}), 0, 0, 0, enc('addi', {})]);
    expect(result.symbols.get('after')).toBe(0x1010);
    expect(result.symbols.get('d')).toBe(0x2008);
    expect(Array.from(segment(result, '.data').data)).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 2]);
  });

  it('.word holds label expressions resolved at the end', () => {
    const result = asm('.data\ntable: .word end - table, end\n.text\nnop\nend: nop');
    expect(words(segment(result, '.data').data)).toEqual([(0x1004 - 0x2000) >>> 0, 0x1004]);
  });
});

describe('labels', () => {
  it('local numeric labels: 1b is the nearest before, 1f the nearest after, a label on the same line is backward', () => {
    expect(
      textWords(`
        1: nop
        1: beq a0, a1, 1b
           beq a0, a1, 1f
        1: jal zero, 1b
      `),
    ).toEqual([enc('addi', {}), enc('beq', { rs1: A0, rs2: A1, imm: 0 }), enc('beq', { rs1: A0, rs2: A1, imm: 1 }), enc('jal', { imm: 0 })]);
  });

  it('several labels on one line, identifiers with . and $, and labels alone on a line', () => {
    const result = asm('a: b: nop\n.L$x.1:\n  nop');
    expect(result.symbols.get('a')).toBe(0x1000);
    expect(result.symbols.get('b')).toBe(0x1000);
    expect(result.symbols.get('.L$x.1')).toBe(0x1004);
  });

  it('labels go into the image symbol table (global from .global); constants and local labels do not', () => {
    const result = asm('.global main\n.equ K, 3\n_start: nop\n1: nop\nmain: nop\n.data\nbuf: .word 0');
    expect(result.image.symbols).toEqual([
      { name: '_start', value: 0x1000, global: false },
      { name: 'main', value: 0x1008, global: true },
      { name: 'buf', value: 0x2000, global: false },
    ]);
    expect(result.symbols.get('K')).toBe(3);
  });
});

describe('macros', () => {
  it('substitutes parameters and gives \\@ a new number per expansion', () => {
    const result = asm(`
      .macro countdown reg, from
      li \\reg, \\from
      loop\\@: addi \\reg, \\reg, -1
      bnez \\reg, loop\\@
      .endm
      countdown a0, 3
      countdown a1, 300
    `);
    const code = words(segment(result, '.text').data);
    expect(code).toEqual([
      enc('addi', { rd: A0, imm: 3 }),
      enc('addi', { rd: A0, rs1: A0, imm: -1 }),
      enc('bne', { rs1: A0, imm: -1 }),
      enc('addi', { rd: A1, imm: 300 }),
      enc('addi', { rd: A1, rs1: A1, imm: -1 }),
      enc('bne', { rs1: A1, imm: -1 }),
    ]);
    expect(result.symbols.get('loop0')).toBe(0x1004);
    expect(result.symbols.get('loop1')).toBe(0x1010);
  });

  it('arguments may be expressions with commas inside parentheses; macros may call macros; \\() joins', () => {
    const result = asm(`
      .macro store value, where
      li t0, \\value
      sw t0, \\where
      .endm
      .macro twice name
      \\name\\()_a: store 1+1, 0(sp)
      \\name\\()_b: store (2*3), 4(sp)
      .endm
      twice pair
    `);
    expect(words(segment(result, '.text').data)).toEqual([
      enc('addi', { rd: T0, imm: 2 }),
      enc('sw', { rs2: T0, rs1: SP, imm: 0 }),
      enc('addi', { rd: T0, imm: 6 }),
      enc('sw', { rs2: T0, rs1: SP, imm: 4 }),
    ]);
    expect(result.symbols.get('pair_b')).toBe(0x1008);
  });
});

describe('.include', () => {
  it('reads files relative to the including file through readFile', () => {
    const files: Record<string, string> = {
      '/src/lib/defs.s': '.equ ANSWER, 42\n.include "more.s"',
      '/src/lib/more.s': 'inc_label: nop',
    };
    const read: string[] = [];
    const result = asm('.include "lib/defs.s"\nli a0, ANSWER', (path) => {
      read.push(path);
      const text = files[path];
      if (text === undefined) throw new Error('ENOENT');
      return text;
    });
    expect(read).toEqual(['/src/lib/defs.s', '/src/lib/more.s']);
    expect(words(segment(result, '.text').data)).toEqual([enc('addi', {}), enc('addi', { rd: A0, imm: 42 })]);
    expect(result.listing.map((line) => `${line.file}:${line.line}`)).toEqual([
      '/src/main.s:1', '/src/lib/defs.s:1', '/src/lib/defs.s:2', '/src/lib/more.s:1', '/src/main.s:2',
    ]);
  });
});

describe('sections and layout', () => {
  it('.text at 0x1000, .data and .bss at the next 4 KiB boundaries, with flags and names', () => {
    const result = asm('.text\n.space 0x1004\n.data\n.word 1\n.bss\nbuf: .space 100');
    expect(result.image.segments.map(({ name, gpa, data, memSize, flags }) => ({ name, gpa, fileBytes: data.length, memSize, flags }))).toEqual([
      { name: '.text', gpa: 0x1000, fileBytes: 0x1004, memSize: 0x1004, flags: SegmentFlag.R | SegmentFlag.X },
      { name: '.data', gpa: 0x3000, fileBytes: 4, memSize: 4, flags: SegmentFlag.R | SegmentFlag.W },
      { name: '.bss', gpa: 0x4000, fileBytes: 0, memSize: 100, flags: SegmentFlag.R | SegmentFlag.W },
    ]);
  });

  it('sections may be switched back and forth; .section is the long form', () => {
    const result = asm('.section .data\na: .word 1\n.section .text\nnop\n.data\nb: .word 2\n.text\nnop');
    expect(result.symbols.get('b')).toBe(0x2004);
    expect(words(segment(result, '.text').data)).toHaveLength(2);
  });

  it('empty sections produce no segment', () => {
    expect(asm('nop').image.segments.map((s) => s.name)).toEqual(['.text']);
  });

  it('.org before any content sets the section start; later .org moves forward with zero fill', () => {
    const result = asm('.org 0\nnop\n.org 0x10\nlast: nop\n.data\n.org 0x00800000\nd: .word 1');
    expect(segment(result, '.text').gpa).toBe(0);
    expect(words(segment(result, '.text').data)).toEqual([enc('addi', {}), 0, 0, 0, enc('addi', {})]);
    expect(result.symbols.get('last')).toBe(0x10);
    expect(segment(result, '.data').gpa).toBe(0x800000);
    expect(result.symbols.get('d')).toBe(0x800000);
  });

  it('a large .align in an automatically placed section aligns the section start too', () => {
    const result = asm('nop\n.data\n.align 16\nbig: .word 1');
    expect(result.symbols.get('big')).toBe(0x10000);
  });
});

describe('entry point', () => {
  it('defaults to the start of .text', () => {
    expect(asm('nop\nnop').image.entry).toBe(0x1000);
  });
  it('uses _start when defined', () => {
    expect(asm('nop\n_start: nop').image.entry).toBe(0x1004);
  });
  it('.entry names it explicitly and wins over _start', () => {
    expect(asm('.entry main\n_start: nop\nmain: nop').image.entry).toBe(0x1004);
  });
});

describe('listing', () => {
  it('has one row per source line with address, encoding (words for code, bytes for data) and source', () => {
    const result = asm('start: li a0, 0x12345678   # two words\n.data\n.asciz "0123456789"\n.bss\n.space 8');
    expect(result.listing).toHaveLength(5);
    expect(result.listing[0]).toMatchObject({ address: 0x1000, file: '/src/main.s', line: 1, code: true });
    expect(result.listing[0]!.bytes).toHaveLength(8);
    expect(formatListing(result)).toBe(
      [
        '; /src/main.s',
        '00001000  1234541b 06784414        start: li a0, 0x12345678   # two words',
        '00002000                           .data',
        '00002000  30 31 32 33 34 35 36 37  .asciz "0123456789"',
        '00002008  38 39 00',
        '00003000                           .bss',
        '00003000                           .space 8',
        '',
      ].join('\n'),
    );
  });

  it('long data shows the first rows and how many bytes are left', () => {
    const text = formatListing(asm('nop\n.data\n.space 100, 1'));
    expect(text).toContain('00002000  01 01 01 01 01 01 01 01  .space 100, 1\n00002008  01 01');
    expect(text).toContain('00002018  ... 76 more bytes\n');
  });
});
