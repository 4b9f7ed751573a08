/**
 * The opcode table and the interpreter cannot drift apart: the execute switch of
 * kernel/cpu/vcpu.ts has exactly one labelled case per instruction, and the pre-decoder that
 * feeds it agrees with decodeInstruction (guest-isa/encoding.ts) on every word.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeInstruction, RESERVED_BITS } from '../../guest-isa/encoding.ts';
import { BY_OPCODE, INSTRUCTIONS } from '../../guest-isa/opcodes.ts';
import { OP_ILLEGAL, OP_PAGE_END, predecodeWord, REG_SINK } from '../../kernel/cpu/decode-cache.ts';

const VCPU_SOURCE = readFileSync(new URL('../../kernel/cpu/vcpu.ts', import.meta.url), 'utf8');

/** The body of the interpreter's execute switch (`switch (w & 0xff) { … }`), found by brace matching. */
function executeSwitchBody(source: string): string {
  const head = 'switch (w & 0xff) {';
  const start = source.indexOf(head);
  expect(start, 'vcpu.ts has no `switch (w & 0xff)`').toBeGreaterThanOrEqual(0);
  expect(source.indexOf(head, start + 1), 'vcpu.ts has more than one `switch (w & 0xff)`').toBe(-1);
  let depth = 0;
  for (let i = start + head.length - 1; i < source.length; i++) {
    if (source[i] === '{') depth++;
    else if (source[i] === '}' && --depth === 0) return source.slice(start + head.length, i);
  }
  throw new Error('unbalanced braces after the execute switch');
}

interface CaseLabel {
  opcode: number;
  label: string;
  line: string;
}

/** Every `case 0xNN: // label` (also `case 0xNN: { // label`) line in a piece of source. */
function caseLabels(text: string): CaseLabel[] {
  const labels: CaseLabel[] = [];
  for (const line of text.split('\n')) {
    const match = /^\s*case (0x[0-9a-fA-F]+):\s*\{?\s*\/\/\s*(\S+)/.exec(line);
    if (match) labels.push({ opcode: Number(match[1]), label: match[2]!, line: line.trim() });
    else if (/^\s*case 0x/.test(line)) labels.push({ opcode: -1, label: '', line: line.trim() });
  }
  return labels;
}

/** What a case label must say for an opcode. */
function expectedLabel(opcode: number): string | undefined {
  if (opcode === OP_ILLEGAL) return 'illegal';
  if (opcode === OP_PAGE_END) return 'PAGE_END';
  return BY_OPCODE[opcode]?.mnemonic;
}

describe('the execute switch in kernel/cpu/vcpu.ts', () => {
  const labels = caseLabels(executeSwitchBody(VCPU_SOURCE));

  it('labels every case with a comment naming its instruction', () => {
    expect(labels.filter((l) => l.opcode < 0).map((l) => l.line)).toEqual([]);
  });

  it('has exactly one case per opcode of INSTRUCTIONS, named as the table names it', () => {
    for (const spec of INSTRUCTIONS) {
      const cases = labels.filter((l) => l.opcode === spec.opcode);
      expect(cases.map((c) => c.line), `${spec.mnemonic} (0x${spec.opcode.toString(16)})`).toHaveLength(1);
      expect(cases[0]!.label, cases[0]!.line).toBe(spec.mnemonic);
    }
  });

  it('has no case for an opcode outside the table besides illegal (0x00) and the PAGE_END marker', () => {
    const extra = labels.filter((l) => l.opcode >= 0 && BY_OPCODE[l.opcode] === undefined);
    expect(extra.map((l) => [l.opcode, l.label])).toEqual([
      [OP_ILLEGAL, 'illegal'],
      [OP_PAGE_END, 'PAGE_END'],
    ]);
    expect(BY_OPCODE[OP_PAGE_END], 'the PAGE_END marker must not be an assigned opcode').toBeUndefined();
  });

  it('names opcodes correctly in every other switch of the file too (e.g. the system-instruction switch)', () => {
    const wrong = caseLabels(VCPU_SOURCE)
      .filter((l) => l.opcode >= 0)
      .filter((l) => l.label !== expectedLabel(l.opcode))
      .map((l) => l.line);
    expect(wrong).toEqual([]);
  });
});

describe('predecodeWord agrees with decodeInstruction', () => {
  const ops = new Int32Array(1);
  const imms = new Int32Array(1);

  /** Compares the pre-decoded entry of `word` with the reference decoder; returns a problem or ''. */
  function disagreement(word: number): string {
    predecodeWord(word | 0, ops, imms, 0);
    const decoded = decodeInstruction(word >>> 0);
    const op = ops[0]! & 0xff;
    const describe = `word 0x${(word >>> 0).toString(16)}`;
    if (decoded === null) {
      if (op !== OP_ILLEGAL) return `${describe}: illegal, but pre-decoded as opcode 0x${op.toString(16)}`;
      if (imms[0] !== (word | 0)) return `${describe}: illegal words must keep the word as the trap value, got 0x${(imms[0]! >>> 0).toString(16)}`;
      return '';
    }
    if (op !== decoded.spec.opcode) return `${describe}: ${decoded.spec.mnemonic}, but pre-decoded as opcode 0x${op.toString(16)}`;
    const rd = (ops[0]! >> 8) & 31;
    const rs1 = (ops[0]! >> 13) & 31;
    const rs2 = (ops[0]! >> 18) & 31;
    // A destination of r0 (and "no destination") goes to the sink register.
    const wantRd = decoded.rd === 0 ? REG_SINK : decoded.rd;
    if (rd !== wantRd || rs1 !== decoded.rs1 || rs2 !== decoded.rs2) {
      return `${describe} (${decoded.spec.mnemonic}): registers ${rd},${rs1},${rs2}, want ${wantRd},${decoded.rs1},${decoded.rs2}`;
    }
    // U-format immediates are pre-shifted into place; every other immediate is stored as decoded.
    const wantImm = decoded.spec.format === 'U' ? (decoded.imm << 12) | 0 : decoded.imm;
    if (imms[0] !== wantImm) return `${describe} (${decoded.spec.mnemonic}): immediate ${imms[0]}, want ${wantImm}`;
    return '';
  }

  /** Words with an assigned opcode and random fields, reserved bits cleared or kept at random. */
  const tableWord = fc
    .tuple(fc.constantFrom(...INSTRUCTIONS), fc.integer({ min: 0, max: 0xffff_ffff }), fc.boolean())
    .map(([spec, bits, keepReserved]) => {
      const body = (bits & ~0xff) >>> 0;
      return ((keepReserved ? body : body & ~RESERVED_BITS[spec.format]) | spec.opcode) >>> 0;
    });

  it('on random 32-bit words (legality and fields)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0xffff_ffff }), (word) => {
      expect(disagreement(word)).toBe('');
    }), { numRuns: 20_000 });
  });

  it('on random words of every assigned opcode, with and without reserved bits', () => {
    fc.assert(fc.property(tableWord, (word) => {
      expect(disagreement(word)).toBe('');
    }), { numRuns: 20_000 });
  });

  it('on the extreme words of every opcode (all field bits 0, all 1, all legal bits 1)', () => {
    const problems: string[] = [];
    for (let opcode = 0; opcode < 256; opcode++) {
      const spec = BY_OPCODE[opcode];
      const candidates = [opcode, (0xffff_ff00 | opcode) >>> 0];
      if (spec) candidates.push(((0xffff_ff00 & ~RESERVED_BITS[spec.format]) | opcode) >>> 0);
      for (const word of candidates) {
        const problem = disagreement(word);
        if (problem) problems.push(problem);
      }
    }
    expect(problems).toEqual([]);
  });

  it('leaves no assigned opcode without a legal encoding and maps no unassigned opcode to an instruction', () => {
    for (let opcode = 0; opcode < 256; opcode++) {
      predecodeWord(opcode, ops, imms, 0);
      const legal = BY_OPCODE[opcode] !== undefined;
      expect(ops[0]! & 0xff, `opcode 0x${opcode.toString(16)}`).toBe(legal ? opcode : OP_ILLEGAL);
    }
  });
});
