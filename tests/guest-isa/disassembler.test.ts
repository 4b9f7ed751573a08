import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Csr, Reg } from '../../guest-isa/arch.ts';
import { disassembleImage, formatInstruction } from '../../guest-isa/disassembler.ts';
import { decodeInstruction, encodeInstruction, immediateRange } from '../../guest-isa/encoding.ts';
import { encodeImage } from '../../guest-isa/image.ts';
import { SegmentFlag, type GuestImage } from '../../guest-isa/image-types.ts';
import { INSTRUCTIONS } from '../../guest-isa/opcodes.ts';

const { A0, A1, A2, SP, RA, ZERO, T0, S3 } = Reg;

describe('formatInstruction', () => {
  const labels = new Map([[0x1010, 'loop']]);
  const symbolAt = (address: number) => labels.get(address);

  it.each<[string, number, number, string]>([
    ['R', encodeInstruction('add', { rd: A0, rs1: A1, rs2: A2 }), 0x1000, 'add a0, a1, a2'],
    ['R (raw word)', 0x0007_5c02, 0x1000, 'sub s0, a1, a3'],
    ['I signed', encodeInstruction('addi', { rd: A0, rs1: SP, imm: -8 }), 0x1000, 'addi a0, sp, -8'],
    ['I sltiu signed', encodeInstruction('sltiu', { rd: T0, rs1: A0, imm: -1 }), 0x1000, 'sltiu t0, a0, -1'],
    ['I mask in hex', encodeInstruction('andi', { rd: A0, rs1: A0, imm: 0xff00 }), 0x1000, 'andi a0, a0, 0xff00'],
    ['I ori', encodeInstruction('ori', { rd: A0, rs1: ZERO, imm: 0 }), 0x1000, 'ori a0, zero, 0x0'],
    ['I xori', encodeInstruction('xori', { rd: A0, rs1: A1, imm: 0xffff }), 0x1000, 'xori a0, a1, 0xffff'],
    ['I jalr', encodeInstruction('jalr', { rd: ZERO, rs1: RA, imm: 0 }), 0x1000, 'jalr zero, ra, 0'],
    ['SHIFT', encodeInstruction('slli', { rd: A0, rs1: A1, imm: 3 }), 0x1000, 'slli a0, a1, 3'],
    ['SHIFT max', encodeInstruction('srai', { rd: S3, rs1: S3, imm: 31 }), 0x1000, 'srai s3, s3, 31'],
    ['LOAD', encodeInstruction('lw', { rd: A0, rs1: SP, imm: -8 }), 0x1000, 'lw a0, -8(sp)'],
    ['LOAD zero offset', encodeInstruction('lbu', { rd: T0, rs1: A0, imm: 0 }), 0x1000, 'lbu t0, 0(a0)'],
    ['STORE', encodeInstruction('sw', { rs2: A1, rs1: A0, imm: 4 }), 0x1000, 'sw a1, 4(a0)'],
    ['BRANCH forward with symbol', encodeInstruction('beq', { rs1: A0, rs2: A1, imm: 4 }), 0x1000, 'beq a0, a1, 0x1010 # loop'],
    ['BRANCH backward, no symbol', encodeInstruction('bne', { rs1: A0, rs2: ZERO, imm: -2 }), 0x1008, 'bne a0, zero, 0x1000'],
    ['BRANCH wrapping below 0', encodeInstruction('blt', { rs1: A0, rs2: A1, imm: -1 }), 0, 'blt a0, a1, 0xfffffffc'],
    ['U', encodeInstruction('lui', { rd: A0, imm: 0x12345 }), 0x1000, 'lui a0, 0x12345'],
    ['U auipc', encodeInstruction('auipc', { rd: SP, imm: 0xfffff }), 0x1000, 'auipc sp, 0xfffff'],
    ['J forward with symbol', encodeInstruction('jal', { rd: RA, imm: 2 }), 0x1008, 'jal ra, 0x1010 # loop'],
    ['J backward', encodeInstruction('jal', { rd: ZERO, imm: -0x80000 }), 0x20_0000, 'jal zero, 0x0'],
    ['AMO', encodeInstruction('amoswap', { rd: A0, rs1: A2, rs2: A1 }), 0x1000, 'amoswap a0, a1, (a2)'],
    ['CSR by name', encodeInstruction('csrrw', { rd: A0, rs1: A1, imm: Csr.STATUS }), 0x1000, 'csrrw a0, status, a1'],
    ['CSR by name (read only)', encodeInstruction('csrrs', { rd: A0, rs1: ZERO, imm: Csr.HARTID }), 0x1000, 'csrrs a0, hartid, zero'],
    ['CSR unknown number', encodeInstruction('csrrc', { rd: ZERO, rs1: T0, imm: 0x7ff }), 0x1000, 'csrrc zero, 0x7ff, t0'],
    ['R2', encodeInstruction('sfence', { rs1: A0, rs2: A1 }), 0x1000, 'sfence a0, a1'],
    ['NONE', encodeInstruction('ecall', {}), 0x1000, 'ecall'],
    ['NONE (raw word)', 0x0000_0033, 0x1000, 'hcall'],
    ['illegal: zero word', 0, 0x1000, '.word 0x00000000'],
    ['illegal: unassigned opcode', 0x1234_56ff, 0x1000, '.word 0x123456ff'],
    ['illegal: reserved bit in R', encodeInstruction('add', {}) | 0x0010_0000, 0x1000, '.word 0x00100001'],
    ['illegal: reserved bit in NONE', 0x8000_0031 | 0, 0x1000, '.word 0x80000031'],
  ])('%s', (_, word, pc, expected) => {
    expect(formatInstruction(word, pc, symbolAt)).toBe(expected);
  });

  it('omits the symbol comment when no lookup is given', () => {
    expect(formatInstruction(encodeInstruction('beq', { rs1: A0, rs2: A1, imm: 4 }), 0x1000)).toBe('beq a0, a1, 0x1010');
  });

  it('formats every opcode in the table with its mnemonic and the right number of operands', () => {
    for (const spec of INSTRUCTIONS) {
      const [, maxImm] = immediateRange(spec);
      const word = encodeInstruction(spec, { rd: A0, rs1: A1, rs2: A2, imm: Math.min(maxImm, 5) });
      const text = formatInstruction(word, 0x4000);
      const [mnemonic, operands = ''] = text.split(/ (.*)/);
      expect(mnemonic, spec.mnemonic).toBe(spec.mnemonic);
      const operandCount = operands === '' ? 0 : operands.split(', ').length;
      // LOAD/STORE and AMO print `imm(rs1)` / `(rs1)` as one operand, just as FORMATS lists them.
      expect(operandCount, text).toBe(spec.operands.length);
    }
  });

  it('prints .word exactly for illegal words and never throws (property)', () => {
    fc.assert(
      fc.property(fc.nat({ max: 0xffff_ffff }), fc.nat({ max: 0x3fff_ffff }), (word, pcWords) => {
        const text = formatInstruction(word, pcWords * 4, () => 'sym');
        const decoded = decodeInstruction(word);
        if (decoded) expect(text.split(' ')[0]).toBe(decoded.spec.mnemonic);
        else expect(text).toBe(`.word 0x${word.toString(16).padStart(8, '0')}`);
      }),
      { numRuns: 5000 },
    );
  });
});

const words = (...list: number[]): Uint8Array => {
  const bytes = new Uint8Array(list.length * 4);
  const view = new DataView(bytes.buffer);
  list.forEach((word, index) => view.setUint32(index * 4, word, true));
  return bytes;
};

function sampleImage(): GuestImage {
  return {
    entry: 0x1000,
    segments: [
      {
        gpa: 0x1000,
        data: words(
          encodeInstruction('addi', { rd: A0, rs1: ZERO, imm: 3 }),
          encodeInstruction('addi', { rd: A0, rs1: A0, imm: -1 }),
          encodeInstruction('bne', { rs1: A0, rs2: ZERO, imm: -1 }),
          encodeInstruction('hcall', {}),
          0xdead_beef,
        ),
        memSize: 0x20,
        flags: SegmentFlag.R | SegmentFlag.X,
        name: '.text',
      },
      { gpa: 0x2000, data: new TextEncoder().encode('Hello, world!\n\0tail'), memSize: 0x40, flags: SegmentFlag.R | SegmentFlag.W, name: '.data' },
    ],
    symbols: [
      { name: '_start', value: 0x1000, global: true },
      { name: 'loop', value: 0x1004, global: false },
      { name: 'message', value: 0x2000, global: false },
      { name: 'buffer', value: 0x2018, global: true },
      { name: 'COUNT', value: 3, global: false },
    ],
  };
}

const SAMPLE_LISTING = `entry 0x00001000 (_start)
2 segment(s), 5 symbol(s)
  segment 0 .text: gpa [0x00001000, 0x00001020) r-x file 0x14 bytes, memory 0x20 bytes
  segment 1 .data: gpa [0x00002000, 0x00002040) rw- file 0x13 bytes, memory 0x40 bytes
  constant COUNT = 0x3

=== segment 0 .text [0x00001000, 0x00001020) r-x ===
_start:
00001000:  00030412  addi a0, zero, 3
loop:
00001004:  ffff4412  addi a0, a0, -1
00001008:  ffff0426  bne a0, zero, 0x1004 # loop
0000100c:  00000033  hcall
00001010:  deadbeef  .word 0xdeadbeef
00001014:  zero-fill 0xc bytes (bss) up to 0x00001020

=== segment 1 .data [0x00002000, 0x00002040) rw- ===
message:
00002000:  48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 0a 00 74  |Hello, world!..t|
00002010:  61 69 6c                                         |ail|
buffer:  # at 0x00002018
00002013:  zero-fill 0x2d bytes (bss) up to 0x00002040
`;

describe('disassembleImage', () => {
  it('lists header, code with labels, data dump and bss', () => {
    expect(disassembleImage(sampleImage())).toBe(SAMPLE_LISTING);
  });

  it('leaves out labels, target names and constants with symbols: false', () => {
    const listing = disassembleImage(sampleImage(), { symbols: false });
    expect(listing).not.toMatch(/_start|loop|message|buffer|COUNT|#/);
    expect(listing).toContain('00001008:  ffff0426  bne a0, zero, 0x1004\n');
    expect(listing.startsWith('entry 0x00001000\n')).toBe(true);
  });

  it('dumps the trailing bytes of a code segment that is not a whole number of words', () => {
    const image: GuestImage = {
      entry: 0,
      segments: [{ gpa: 0, data: Uint8Array.from([0x31, 0, 0, 0, 0xaa, 0xbb]), memSize: 6, flags: SegmentFlag.X }],
      symbols: [],
    };
    const listing = disassembleImage(image);
    expect(listing).toContain('00000000:  00000031  ecall\n');
    expect(listing).toContain('00000004:  aa bb');
  });

  it('prints the end of a segment that reaches the top of the address space as 0x100000000', () => {
    const image: GuestImage = { entry: 0xffff_f000, segments: [{ gpa: 0xffff_f000, data: words(0x31), memSize: 0x1000, flags: SegmentFlag.X }], symbols: [] };
    const listing = disassembleImage(image);
    expect(listing).toContain('=== segment 0 [0xfffff000, 0x100000000) --x ===\n');
    expect(listing).toContain('fffff004:  zero-fill 0xffc bytes (bss) up to 0x100000000\n');
  });

  it('lists any bytes at all without throwing (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), fc.nat(64), (data, bss) => {
        const image: GuestImage = { entry: 0, segments: [{ gpa: 0x100, data, memSize: data.length + bss, flags: SegmentFlag.X }], symbols: [] };
        const lines = disassembleImage(image).split('\n');
        expect(lines.filter((line) => /^[0-9a-f]{8}: {2}[0-9a-f]{8} {2}/.test(line))).toHaveLength(Math.floor(data.length / 4));
      }),
      { numRuns: 300 },
    );
  });
});

describe('tools/disasm', () => {
  const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
  const directory = mkdtempSync(join(tmpdir(), 'bvx-disasm-'));
  afterAll(() => rmSync(directory, { recursive: true, force: true }));
  // node --import tsx rather than npx: npx adds its own warnings to stderr.
  const run = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'tools/disasm.ts', ...args], { cwd: repoRoot, encoding: 'utf8' });

  it('prints the listing of an image file and exits 0', () => {
    const path = join(directory, 'sample.bvx');
    writeFileSync(path, encodeImage(sampleImage()));
    const output = execFileSync(process.execPath, ['--import', 'tsx', 'tools/disasm.ts', path], { cwd: repoRoot, encoding: 'utf8' });
    expect(output).toBe(SAMPLE_LISTING);
  });

  it('honours --no-symbols', () => {
    const path = join(directory, 'sample2.bvx');
    writeFileSync(path, encodeImage(sampleImage()));
    const result = run(path, '--no-symbols');
    expect(result.status).toBe(0);
    expect(result.stdout).toBe(disassembleImage(sampleImage(), { symbols: false }));
  });

  it('prints one error line and exits 1 for a corrupt file', () => {
    const path = join(directory, 'corrupt.bvx');
    const bytes = encodeImage(sampleImage());
    bytes[bytes.length - 1]! ^= 0xff;
    writeFileSync(path, bytes);
    const result = run(path);
    expect(result.status).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(new RegExp(`^error: ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: checksum mismatch: [^\\n]*\\n$`));
  });

  it('prints one error line and exits 1 for a missing file', () => {
    const result = run(join(directory, 'missing.bvx'));
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/^error: cannot read image '.*missing\.bvx': ENOENT[^\n]*\n$/);
  });

  it('exits 2 with usage for bad arguments', () => {
    for (const args of [[], ['--bogus', 'x.bvx'], ['a.bvx', 'b.bvx']]) {
      const result = run(...args);
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(/^error: .*\nusage: disasm <image\.bvx> \[--no-symbols\]\n$/);
    }
  });
});
