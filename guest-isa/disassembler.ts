/**
 * The BV32 disassembler: one instruction word → assembly text in the assembler's own syntax
 * (so a listing line re-assembles to the same word at the same pc), and a whole guest image →
 * an annotated listing (what `tools/disasm` prints).
 */
import { CSR_NAMES, REGISTER_NAMES } from './arch.ts';
import { decodeInstruction } from './encoding.ts';
import { SegmentFlag, type GuestImage, type ImageSegment, type ImageSymbol } from './image-types.ts';

/** CSR number → name, the inverse of arch.ts CSR_NAMES. */
const CSR_BY_NUMBER: ReadonlyMap<number, string> = new Map([...CSR_NAMES].map(([name, csr]) => [csr, name]));

/** Mnemonics whose imm16 is a bit mask (zero-extended), so hex reads better than decimal. */
const HEX_IMMEDIATE_MNEMONICS: ReadonlySet<string> = new Set(['andi', 'ori', 'xori']);

function hex(value: number): string {
  return `0x${(value >>> 0).toString(16)}`;
}

/** At least 8 hex digits; int32 words print as u32, and an end address of 2^32 stays 100000000. */
function hex8(value: number): string {
  return (value < 0 ? value >>> 0 : value).toString(16).padStart(8, '0');
}

function reg(index: number): string {
  return REGISTER_NAMES[index]!;
}

/**
 * Formats one instruction word located at `pc`. Branch and jump targets are printed as absolute
 * hex addresses (the assembler accepts an absolute target and computes the offset from the
 * instruction's own pc); when `symbolAt(target)` names the target, ` # name` is appended. An
 * illegal word (unassigned opcode or a set reserved bit) formats as `.word 0x%08x`.
 */
export function formatInstruction(word: number, pc: number, symbolAt?: (address: number) => string | undefined): string {
  const decoded = decodeInstruction(word);
  if (!decoded) return `.word 0x${hex8(word)}`;
  const { spec, rd, rs1, rs2, imm } = decoded;
  const op = spec.mnemonic;
  const withTarget = (prefix: string, offsetWords: number): string => {
    const target = (pc + offsetWords * 4) >>> 0;
    const name = symbolAt?.(target);
    return `${prefix}${hex(target)}${name === undefined ? '' : ` # ${name}`}`;
  };
  switch (spec.format) {
    case 'R':
      return `${op} ${reg(rd)}, ${reg(rs1)}, ${reg(rs2)}`;
    case 'I':
      return `${op} ${reg(rd)}, ${reg(rs1)}, ${HEX_IMMEDIATE_MNEMONICS.has(op) ? hex(imm) : String(imm)}`;
    case 'SHIFT':
      return `${op} ${reg(rd)}, ${reg(rs1)}, ${imm}`;
    case 'LOAD':
      return `${op} ${reg(rd)}, ${imm}(${reg(rs1)})`;
    case 'STORE':
      return `${op} ${reg(rs2)}, ${imm}(${reg(rs1)})`;
    case 'BRANCH':
      return withTarget(`${op} ${reg(rs1)}, ${reg(rs2)}, `, imm);
    case 'U':
      return `${op} ${reg(rd)}, ${hex(imm)}`;
    case 'J':
      return withTarget(`${op} ${reg(rd)}, `, imm);
    case 'AMO':
      return `${op} ${reg(rd)}, ${reg(rs2)}, (${reg(rs1)})`;
    case 'CSR':
      return `${op} ${reg(rd)}, ${CSR_BY_NUMBER.get(imm) ?? hex(imm)}, ${reg(rs1)}`;
    case 'R2':
      return `${op} ${reg(rs1)}, ${reg(rs2)}`;
    case 'NONE':
      return op;
  }
}

/** Options of disassembleImage. */
export interface DisassembleOptions {
  /** Print symbol labels, branch-target names and the constants list (default true). */
  symbols?: boolean;
}

/** `rwx` style permission string for segment flags. */
export function describeSegmentFlags(flags: number): string {
  return (
    ((flags & SegmentFlag.R) !== 0 ? 'r' : '-') +
    ((flags & SegmentFlag.W) !== 0 ? 'w' : '-') +
    ((flags & SegmentFlag.X) !== 0 ? 'x' : '-')
  );
}

function segmentTitle(segment: ImageSegment, index: number): string {
  return `segment ${index}${segment.name ? ` ${segment.name}` : ''}`;
}

function segmentRange(segment: ImageSegment): string {
  return `[0x${hex8(segment.gpa)}, 0x${hex8(segment.gpa + segment.memSize)})`;
}

function isInSomeSegment(image: GuestImage, address: number): boolean {
  return image.segments.some((segment) => address >= segment.gpa && address < segment.gpa + segment.memSize);
}

/** Symbols that name addresses inside the image's segments, sorted by address (globals first). */
function collectLabels(image: GuestImage): ImageSymbol[] {
  return image.symbols
    .filter((symbol) => isInSomeSegment(image, symbol.value >>> 0))
    .map((symbol, order) => ({ symbol, order }))
    .sort((a, b) => (a.symbol.value >>> 0) - (b.symbol.value >>> 0) || Number(b.symbol.global) - Number(a.symbol.global) || a.order - b.order)
    .map(({ symbol }) => symbol);
}

/** Walks the sorted labels in step with a listing that moves forward through addresses. */
class LabelCursor {
  private next = 0;
  constructor(private readonly labels: readonly ImageSymbol[]) {}

  /** Label lines for every label in [start, end), in address order. */
  take(start: number, end: number): string[] {
    while (this.next < this.labels.length && this.labels[this.next]!.value >>> 0 < start) this.next++;
    const lines: string[] = [];
    while (this.next < this.labels.length && this.labels[this.next]!.value >>> 0 < end) {
      const label = this.labels[this.next++]!;
      const address = label.value >>> 0;
      lines.push(address === start ? `${label.name}:` : `${label.name}:  # at 0x${hex8(address)}`);
    }
    return lines;
  }
}

function printableAscii(byte: number): string {
  return byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : '.';
}

function hexDumpLine(address: number, bytes: Uint8Array): string {
  const hexBytes = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join(' ');
  const ascii = Array.from(bytes, printableAscii).join('');
  return `${hex8(address)}:  ${hexBytes.padEnd(16 * 3 - 1)}  |${ascii}|`;
}

/**
 * An annotated listing of a guest image: a header (entry, segments, constants), then each
 * segment — executable ones as one instruction per word, others as a hex+ASCII dump — with
 * zero-filled memory (bss) noted rather than printed. Never throws for any word value.
 */
export function disassembleImage(image: GuestImage, options: DisassembleOptions = {}): string {
  const showSymbols = options.symbols ?? true;
  const labels = showSymbols ? collectLabels(image) : [];
  const nameAt = new Map<number, string>();
  for (const label of labels) if (!nameAt.has(label.value >>> 0)) nameAt.set(label.value >>> 0, label.name);
  const symbolAt = showSymbols ? (address: number) => nameAt.get(address) : undefined;

  const entryName = symbolAt?.(image.entry >>> 0);
  const out: string[] = [];
  out.push(`entry 0x${hex8(image.entry)}${entryName ? ` (${entryName})` : ''}`);
  out.push(`${image.segments.length} segment(s), ${image.symbols.length} symbol(s)`);
  image.segments.forEach((segment, index) => {
    out.push(
      `  ${segmentTitle(segment, index)}: gpa ${segmentRange(segment)} ${describeSegmentFlags(segment.flags)} ` +
        `file 0x${segment.data.length.toString(16)} bytes, memory 0x${segment.memSize.toString(16)} bytes`,
    );
  });
  if (showSymbols) {
    const constants = image.symbols.filter((symbol) => !isInSomeSegment(image, symbol.value >>> 0));
    for (const constant of constants) out.push(`  constant ${constant.name} = ${hex(constant.value)}${constant.global ? ' (global)' : ''}`);
  }

  const cursor = new LabelCursor(labels);
  // Segments in address order so the label cursor only moves forward.
  const ordered = image.segments.map((segment, index) => ({ segment, index })).sort((a, b) => a.segment.gpa - b.segment.gpa);
  for (const { segment, index } of ordered) {
    out.push('');
    out.push(`=== ${segmentTitle(segment, index)} ${segmentRange(segment)} ${describeSegmentFlags(segment.flags)} ===`);
    const data = segment.data;
    const executable = (segment.flags & SegmentFlag.X) !== 0;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    let offset = 0;
    if (executable) {
      for (; offset + 4 <= data.length; offset += 4) {
        const pc = (segment.gpa + offset) >>> 0;
        out.push(...cursor.take(pc, pc + 4));
        const word = view.getUint32(offset, true);
        out.push(`${hex8(pc)}:  ${hex8(word)}  ${formatInstruction(word, pc, symbolAt)}`);
      }
    }
    // Data segments, and the 1-3 trailing bytes of a code segment that is not a whole number of words.
    for (; offset < data.length; offset += 16) {
      const address = segment.gpa + offset;
      const chunk = data.subarray(offset, Math.min(offset + 16, data.length));
      out.push(...cursor.take(address, address + chunk.length));
      out.push(hexDumpLine(address, chunk));
    }
    if (segment.memSize > data.length) {
      const start = segment.gpa + data.length;
      out.push(...cursor.take(start, segment.gpa + segment.memSize));
      out.push(`${hex8(start)}:  zero-fill 0x${(segment.memSize - data.length).toString(16)} bytes (bss) up to 0x${hex8(segment.gpa + segment.memSize)}`);
    }
  }
  return `${out.join('\n')}\n`;
}
