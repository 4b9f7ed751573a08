/**
 * ISA round trips: encode ↔ decode for every opcode, and disassemble → assemble giving back the
 * identical word (single instructions at the table's extremes, then random whole programs).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { assemble } from '../../guest-isa/assembler.ts';
import { formatInstruction } from '../../guest-isa/disassembler.ts';
import { decodeInstruction, encodeInstruction, immediateRange, type InstructionFields } from '../../guest-isa/encoding.ts';
import { INSTRUCTIONS, type InstructionSpec } from '../../guest-isa/opcodes.ts';

/** Which of rd/rs1/rs2/imm a spec uses, from its operand list. */
function usedFields(spec: InstructionSpec): Set<keyof InstructionFields> {
  const used = new Set<keyof InstructionFields>();
  for (const operand of spec.operands) {
    if (operand === 'rd' || operand === 'rs1' || operand === 'rs2') used.add(operand);
    else if (operand === 'mem') { used.add('rs1'); used.add('imm'); }
    else if (operand === 'amem') used.add('rs1');
    else used.add('imm');
  }
  return used;
}

/** Interesting immediates for a spec: both ends of its range, zero, ±1 and a middle value. */
function edgeImmediates(spec: InstructionSpec): number[] {
  const [min, max] = immediateRange(spec);
  return [...new Set([min, max, 0, 1, -1, Math.trunc((min + max) / 3)].filter((value) => value >= min && value <= max))];
}

/** Operand sets for a spec: each edge immediate with a rotating choice of registers. */
function edgeCases(spec: InstructionSpec): InstructionFields[] {
  const used = usedFields(spec);
  const registers = [0, 1, 4, 7, 8, 12, 15];
  return edgeImmediates(spec).map((imm, index) => ({
    rd: used.has('rd') ? registers[index % registers.length]! : 0,
    rs1: used.has('rs1') ? registers[(index + 2) % registers.length]! : 0,
    rs2: used.has('rs2') ? registers[(index + 5) % registers.length]! : 0,
    imm: used.has('imm') ? imm : 0,
  }));
}

/** Assembles `lines` with .text starting at `pc` and returns the .text bytes. */
function assembleAt(pc: number, lines: readonly string[]): Uint8Array {
  const { image } = assemble([`.org ${pc >>> 0}`, ...lines].join('\n'), { fileName: 'roundtrip.s' });
  const text = image.segments.find((segment) => segment.name === '.text')!;
  expect(text.gpa).toBe(pc >>> 0);
  return text.data;
}

function wordsOf(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.length / 4 }, (_, index) => view.getUint32(index * 4, true));
}

describe('every opcode at its edges', () => {
  for (const spec of INSTRUCTIONS) {
    it(`${spec.mnemonic}: encode → decode gives the fields; disassemble → assemble gives the word`, () => {
      const cases = edgeCases(spec);
      expect(cases.length).toBeGreaterThan(0);
      for (const [index, fields] of cases.entries()) {
        const word = encodeInstruction(spec, fields);
        const decoded = decodeInstruction(word);
        expect(decoded?.spec).toBe(spec);
        expect({ rd: decoded!.rd, rs1: decoded!.rs1, rs2: decoded!.rs2, imm: decoded!.imm }).toEqual(fields);
        // A spread of pcs, including 0 and the top of memory, where targets wrap around.
        const pc = [0x1000, 0, 0xffff_fffc, 0x0040_0000, 0x8000_0000][index % 5]!;
        const text = formatInstruction(word, pc);
        expect(wordsOf(assembleAt(pc, [text])), text).toEqual([word]);
      }
    });
  }
});

/** fast-check arbitrary of valid fields for one spec. */
function fieldsFor(spec: InstructionSpec): fc.Arbitrary<InstructionFields> {
  const used = usedFields(spec);
  const [min, max] = immediateRange(spec);
  const reg = (name: keyof InstructionFields) => (used.has(name) ? fc.integer({ min: 0, max: 15 }) : fc.constant(0));
  return fc.record({
    rd: reg('rd'),
    rs1: reg('rs1'),
    rs2: reg('rs2'),
    imm: used.has('imm') ? fc.integer({ min, max }) : fc.constant(0),
  });
}

const anyInstruction = fc.constantFrom(...INSTRUCTIONS).chain((spec) => fieldsFor(spec).map((fields) => ({ spec, fields })));

describe('properties', () => {
  it('random valid fields: encode → decode is the identity', () => {
    fc.assert(
      fc.property(anyInstruction, ({ spec, fields }) => {
        const decoded = decodeInstruction(encodeInstruction(spec, fields));
        expect(decoded?.spec).toBe(spec);
        expect({ rd: decoded!.rd, rs1: decoded!.rs1, rs2: decoded!.rs2, imm: decoded!.imm }).toEqual(fields);
      }),
      { numRuns: 2000 },
    );
  });

  it('random programs: disassemble every word → assemble the text → identical bytes', () => {
    // Random instructions mixed with arbitrary words (illegal ones print as `.word`).
    const word = fc.oneof(
      { weight: 4, arbitrary: anyInstruction.map(({ spec, fields }) => encodeInstruction(spec, fields)) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }) },
    );
    const program = fc
      .array(word, { minLength: 1, maxLength: 40 })
      .chain((words) => fc.integer({ min: 0, max: 2 ** 30 - words.length }).map((slot) => ({ words, pc: slot * 4 })));
    fc.assert(
      fc.property(program, ({ words, pc }) => {
        // Name a few addresses so the disassembler appends `# name` comments the assembler must skip.
        const names = new Map([[pc, 'start'], [(pc + 8) >>> 0, 'two_ahead']]);
        const lines = words.map((value, index) => formatInstruction(value, (pc + index * 4) >>> 0, (address) => names.get(address)));
        expect(wordsOf(assembleAt(pc, lines))).toEqual(words.map((value) => value >>> 0));
      }),
      { numRuns: 300 },
    );
  });
});
