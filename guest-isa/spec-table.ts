/**
 * The generated parts of SPEC.md: the instruction table, the format diagrams, the CSR table and
 * the cause table, rendered from the contract files so that the specification cannot drift from
 * the code. `tools/gen-spec` writes them into SPEC.md between marker comments; a test checks
 * that SPEC.md holds exactly what these functions render.
 *
 * Field positions and reserved bits are not restated here: they are measured by probing
 * `encodeInstruction` and `decodeInstruction`, so the diagrams show what the encoder really does.
 */
import { Cause, CSR_NAMES, Csr, describeCause, Irq, READ_ONLY_CSRS, USER_READABLE_CSRS } from './arch.ts';
import { decodeInstruction, encodeInstruction, immediateRange, type InstructionFields } from './encoding.ts';
import { BvError } from './errors.ts';
import { Flag, FORMATS, INSTRUCTIONS, type Format, type InstructionSpec, type OperandKind } from './opcodes.ts';

/** A malformed generated region in SPEC.md (missing, duplicated or unterminated markers). */
export class SpecMarkerError extends BvError {
  constructor(message: string) {
    super('BV_SPEC_MARKERS', message);
  }
}

// ---------------------------------------------------------------------------------------------
// Markdown helpers

/** Escapes text for a Markdown table cell: `|` would split the cell, the rest could format. */
function cell(text: string): string {
  return text.replace(/[\\|*_~`<]/g, (ch) => `\\${ch}`);
}

/** A code span for a table cell: GFM splits cells at `|` even inside code spans. */
function code(text: string): string {
  return `\`${text.replace(/\|/g, '\\|')}\``;
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

function hex(value: number, digits: number): string {
  return `0x${(value >>> 0).toString(16).padStart(digits, '0')}`;
}

// ---------------------------------------------------------------------------------------------
// Instructions

/** How each operand kind is written in assembly. */
const OPERAND_SYNTAX: Readonly<Record<OperandKind, string>> = {
  rd: 'rd',
  rs1: 'rs1',
  rs2: 'rs2',
  imm: 'imm',
  shamt: 'shamt',
  mem: 'imm(rs1)',
  amem: '(rs1)',
  target: 'target',
  imm20: 'imm20',
  csr: 'csr',
};

/** Assembly operand syntax of an instruction, e.g. `rd, imm(rs1)`. */
export function operandSyntax(spec: InstructionSpec): string {
  return spec.operands.map((kind) => OPERAND_SYNTAX[kind]).join(', ');
}

/** Flag names of an instruction in bit order, e.g. `['ENDS_BLOCK', 'MAY_FAULT']`. */
export function flagNames(flags: number): string[] {
  return Object.entries(Flag)
    .sort(([, a], [, b]) => a - b)
    .filter(([, bit]) => (flags & bit) !== 0)
    .map(([name]) => name);
}

/** The instruction table: one row per entry of INSTRUCTIONS, in opcode order. */
export function renderInstructionTable(): string {
  const rows = INSTRUCTIONS.map((spec) => {
    const operands = operandSyntax(spec);
    return [
      code(spec.mnemonic),
      code(hex(spec.opcode, 2)),
      spec.format,
      operands === '' ? '—' : code(operands),
      spec.memWidth === 0 ? '—' : String(spec.memWidth),
      flagNames(spec.flags).join(', ') || '—',
      cell(spec.summary),
    ];
  });
  return table(['Mnemonic', 'Opcode', 'Format', 'Operands', 'Mem bytes', 'Flags', 'Summary'], rows);
}

// ---------------------------------------------------------------------------------------------
// Formats: measured from the encoder and decoder

/** One field of an instruction word: bits lo..hi (inclusive). */
export interface WordSegment {
  readonly name: string;
  readonly hi: number;
  readonly lo: number;
}

export interface FormatLayout {
  readonly format: Format;
  /** Segments from bit 31 down to bit 0, covering every bit exactly once. */
  readonly segments: readonly WordSegment[];
  /** Bits that must be zero (a set bit makes the word illegal). */
  readonly reservedMask: number;
  /** Whether the format's immediate is sign-extended by some / all of its instructions. */
  readonly signedImmediate: 'none' | 'some' | 'all';
  readonly instructions: readonly InstructionSpec[];
}

const REGISTER_FIELDS = ['rd', 'rs1', 'rs2'] as const;

/** Bits that change in the encoding when `fields` are set, compared with all-zero fields. */
function bitsOf(spec: InstructionSpec, fields: Partial<InstructionFields>): number {
  return (encodeInstruction(spec, fields) ^ encodeInstruction(spec, {})) >>> 0;
}

/** [hi, lo] of a contiguous run of set bits, or null when `mask` is 0. */
function bitRange(mask: number): [hi: number, lo: number] | null {
  if (mask === 0) return null;
  const lo = 31 - Math.clz32(mask & -mask);
  const hi = 31 - Math.clz32(mask);
  if (((mask >>> lo) + 1) !== 2 ** (hi - lo + 1)) throw new Error(`field bits ${hex(mask, 8)} are not contiguous`);
  return [hi, lo];
}

/** The name of a format's immediate field, after its width and operand kind. */
function immediateName(format: Format, width: number): string {
  const operands: readonly OperandKind[] = FORMATS[format].operands;
  if (operands.includes('shamt')) return 'shamt';
  if (operands.includes('csr')) return 'csr';
  return `imm${width}`;
}

/** Measures a format's layout by encoding and decoding a representative instruction. */
export function formatLayout(format: Format): FormatLayout {
  const instructions = INSTRUCTIONS.filter((spec) => spec.format === format);
  const spec = instructions[0];
  if (!spec) throw new Error(`format ${format} has no instruction`);
  const segments: WordSegment[] = [{ name: 'opcode', hi: 7, lo: 0 }];
  for (const field of REGISTER_FIELDS) {
    const range = bitRange(bitsOf(spec, { [field]: 15 }));
    if (range) segments.push({ name: field, hi: range[0], lo: range[1] });
  }
  const [min, max] = immediateRange(spec);
  // An all-ones immediate (-1 when signed, max when unsigned) sets every bit of the field.
  const allOnes = min < 0 ? -1 : max;
  const immRange = max > min ? bitRange(bitsOf(spec, { imm: allOnes })) : null;
  if (immRange) segments.push({ name: immediateName(format, immRange[0] - immRange[1] + 1), hi: immRange[0], lo: immRange[1] });

  // A bit is reserved when setting it in a valid word makes the word illegal.
  const base = encodeInstruction(spec, {});
  let reservedMask = 0;
  for (let bit = 8; bit < 32; bit++) {
    if (decodeInstruction((base | (1 << bit)) >>> 0) === null) reservedMask |= 1 << bit;
  }
  reservedMask >>>= 0;
  for (let bit = 31; bit >= 8; ) {
    if ((reservedMask & (1 << bit)) === 0) {
      bit--;
      continue;
    }
    let lo = bit;
    while (lo > 8 && (reservedMask & (1 << (lo - 1))) !== 0) lo--;
    segments.push({ name: '0', hi: bit, lo });
    bit = lo - 1;
  }
  segments.sort((a, b) => b.hi - a.hi);

  const signedCount = instructions.filter((each) => immediateRange(each)[0] < 0).length;
  const signedImmediate = signedCount === 0 ? 'none' : signedCount === instructions.length ? 'all' : 'some';
  return { format, segments, reservedMask, signedImmediate, instructions };
}

/** Every format that has at least one instruction, in FORMATS order. */
export function formatLayouts(): FormatLayout[] {
  return (Object.keys(FORMATS) as Format[])
    .filter((format) => INSTRUCTIONS.some((spec) => spec.format === format))
    .map(formatLayout);
}

/** A bit diagram: two columns per bit, bit numbers above each field's edges. */
function renderDiagram(layout: FormatLayout, labelWidth: number): string {
  let numbers = ''.padEnd(labelWidth);
  let fields = layout.format.padEnd(labelWidth);
  for (const { name, hi, lo } of layout.segments) {
    const width = 2 * (hi - lo + 1) - 1;
    const edges = hi === lo ? String(hi) : `${hi}`.padEnd(width - `${lo}`.length) + `${lo}`;
    numbers += ` ${edges.padEnd(width)}`;
    const left = Math.floor((width - name.length) / 2);
    fields += `|${' '.repeat(left)}${name}${' '.repeat(width - left - name.length)}`;
  }
  return `${numbers.trimEnd()}\n${fields}|`;
}

/** How a field is extracted from the word `w` with one shift and one mask (Markdown). */
function extraction(segment: WordSegment, layout: FormatLayout): string {
  const { name, hi, lo } = segment;
  if (name === 'opcode') return code('w & 0xff');
  const mask = hex(2 ** (hi - lo + 1) - 1, 1);
  const isImmediate = !(REGISTER_FIELDS as readonly string[]).includes(name);
  const unsigned = code(hi === 31 ? `w >>> ${lo}` : `(w >>> ${lo}) & ${mask}`);
  if (!isImmediate || layout.signedImmediate === 'none') return unsigned;
  const signed = code(`(w | 0) >> ${lo}`);
  return layout.signedImmediate === 'all' ? signed : `${signed} (SIGNED_IMM) or ${unsigned}`;
}

/** Bit diagrams of every format plus a table of field extraction and reserved bits. */
export function renderFormatTable(): string {
  const layouts = formatLayouts();
  const labelWidth = Math.max(...layouts.map((layout) => layout.format.length)) + 1;
  const diagrams = layouts.map((layout) => renderDiagram(layout, labelWidth)).join('\n\n');
  const rows = layouts.map((layout) => {
    const fields = layout.segments
      .filter((segment) => segment.name !== '0')
      .map((segment) => `${code(segment.name)} = ${extraction(segment, layout)}`)
      .join('<br>');
    const syntax = operandSyntax(layout.instructions[0]!);
    return [
      layout.format,
      syntax === '' ? '—' : code(syntax),
      fields,
      layout.reservedMask === 0 ? 'none' : code(hex(layout.reservedMask, 8)),
      layout.instructions.map((spec) => spec.mnemonic).join(', '),
    ];
  });
  return [
    '```',
    diagrams,
    '```',
    '',
    table(['Format', 'Operands', 'Fields (w = the word as an unsigned 32-bit value)', 'Reserved (must be 0)', 'Instructions'], rows),
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// CSRs

/** What each CSR holds; the bit layouts are in SPEC.md's per-CSR sections. */
const CSR_CONTENTS: Readonly<Record<keyof typeof Csr, string>> = {
  STATUS: 'mode and interrupt state: SIE, SPIE, SPP, SUM, MXR',
  TVEC: 'trap vector: the pc a trap jumps to (low 2 bits read 0)',
  EPC: 'pc of the trapping instruction (exceptions) or of the next instruction (interrupts)',
  CAUSE: 'trap cause code; bit 31 set for interrupts',
  TVAL: 'faulting address, illegal instruction word, or 0',
  SCRATCH: 'free for the supervisor (e.g. its stack pointer)',
  IE: 'interrupt enable bits (SOFT 1, TIMER 5, EXTERNAL 9)',
  IP: 'interrupt pending bits; only SOFT is writable',
  PTBR: 'page-table base: MODE (31), ASID (30-22), root PPN (21-0)',
  INSTRET: 'retired instructions, low 32 bits',
  INSTRETH: 'retired instructions, high 32 bits',
  TIME: 'virtual time, low 32 bits',
  TIMEH: 'virtual time, high 32 bits',
  HARTID: "this vCPU's index in the VM",
};

/** The assembler name of a CSR number (from CSR_NAMES); throws if the number has none. */
export function csrName(csr: number): string {
  for (const [name, number] of CSR_NAMES) if (number === csr) return name;
  throw new Error(`CSR ${hex(csr, 3)} has no name in CSR_NAMES`);
}

/** The CSR table: name, number, access per mode, contents; in number order. */
export function renderCsrTable(): string {
  const rows = (Object.entries(Csr) as [keyof typeof Csr, number][])
    .sort(([, a], [, b]) => a - b)
    .map(([key, number]) => [
      code(csrName(number)),
      code(hex(number, 3)),
      READ_ONLY_CSRS.has(number) ? 'read' : 'read/write',
      USER_READABLE_CSRS.has(number) ? 'read' : '—',
      cell(CSR_CONTENTS[key]),
    ]);
  return table(['Name', 'Number', 'Supervisor', 'User', 'Contents'], rows);
}

// ---------------------------------------------------------------------------------------------
// Causes

/** What TVAL holds for each synchronous cause. */
const CAUSE_TVAL: Readonly<Record<keyof typeof Cause, string>> = {
  INSN_MISALIGNED: 'the misaligned address (jalr target or fetched pc)',
  INSN_ACCESS_FAULT: 'the virtual address of the fetch (the pc)',
  ILLEGAL_INSN: 'the instruction word',
  BREAKPOINT: '0',
  LOAD_MISALIGNED: 'the virtual address',
  LOAD_ACCESS_FAULT: 'the virtual address',
  STORE_MISALIGNED: 'the virtual address',
  STORE_ACCESS_FAULT: 'the virtual address',
  ECALL_USER: '0',
  ECALL_SUPERVISOR: '0',
  INSN_PAGE_FAULT: 'the virtual address of the fetch (the pc)',
  LOAD_PAGE_FAULT: 'the virtual address',
  STORE_PAGE_FAULT: 'the virtual address',
  MACHINE_CHECK: 'the virtual address of the access (fetch pc, load or store address)',
};

/** The cause table: every exception cause, then every interrupt cause, with CAUSE and TVAL. */
export function renderCauseTable(): string {
  const exceptions = (Object.entries(Cause) as [keyof typeof Cause, number][])
    .sort(([, a], [, b]) => a - b)
    .map(([key, code_]) => [String(code_), code(hex(code_, 8)), 'exception', code(key), cell(describeCause(code_)), cell(CAUSE_TVAL[key])]);
  const interrupts = (Object.entries(Irq) as [keyof typeof Irq, number][])
    .sort(([, a], [, b]) => a - b)
    .map(([key, code_]) => {
      const cause = (0x8000_0000 | code_) >>> 0;
      return [String(code_), code(hex(cause, 8)), 'interrupt', code(key), cell(describeCause(cause)), '0'];
    });
  return table(['Code', 'CAUSE value', 'Kind', 'arch.ts name', 'Description', 'TVAL'], [...exceptions, ...interrupts]);
}

// ---------------------------------------------------------------------------------------------
// Generated regions of SPEC.md

/** Every generated region: its marker name and what renders it. */
export const GENERATED_REGIONS: readonly { readonly name: string; readonly render: () => string }[] = [
  { name: 'formats', render: renderFormatTable },
  { name: 'instructions', render: renderInstructionTable },
  { name: 'csrs', render: renderCsrTable },
  { name: 'causes', render: renderCauseTable },
];

const beginMarker = (name: string): string => `<!-- BEGIN GENERATED: ${name} -->`;
const endMarker = (name: string): string => `<!-- END GENERATED: ${name} -->`;

interface RegionSpan {
  /** Index just after the BEGIN marker. */
  readonly start: number;
  /** Index of the END marker. */
  readonly end: number;
}

function findRegion(markdown: string, name: string): RegionSpan {
  const begin = beginMarker(name);
  const end = endMarker(name);
  const beginAt = markdown.indexOf(begin);
  if (beginAt < 0) throw new SpecMarkerError(`missing marker '${begin}'`);
  if (markdown.indexOf(begin, beginAt + 1) >= 0) throw new SpecMarkerError(`marker '${begin}' appears twice`);
  const endAt = markdown.indexOf(end, beginAt);
  if (endAt < 0) throw new SpecMarkerError(`marker '${begin}' has no matching '${end}' after it`);
  if (markdown.indexOf(end, endAt + 1) >= 0 || markdown.lastIndexOf(end, beginAt) >= 0) {
    throw new SpecMarkerError(`marker '${end}' appears more than once`);
  }
  return { start: beginAt + begin.length, end: endAt };
}

/** The body a region should hold: the rendered text on its own lines. */
function regionBody(render: () => string): string {
  return `\n${render()}\n`;
}

/** The current text between a region's markers (without the markers). */
export function extractGeneratedRegion(markdown: string, name: string): string {
  const { start, end } = findRegion(markdown, name);
  return markdown.slice(start, end);
}

/** Names of the regions whose text differs from a fresh render. Throws SpecMarkerError. */
export function staleGeneratedRegions(markdown: string): string[] {
  return GENERATED_REGIONS.filter(({ name, render }) => extractGeneratedRegion(markdown, name) !== regionBody(render)).map(
    ({ name }) => name,
  );
}

/** `markdown` with every generated region replaced by a fresh render. Throws SpecMarkerError. */
export function updateGeneratedRegions(markdown: string): string {
  let out = markdown;
  for (const { name, render } of GENERATED_REGIONS) {
    const { start, end } = findRegion(out, name);
    out = out.slice(0, start) + regionBody(render) + out.slice(end);
  }
  return out;
}
