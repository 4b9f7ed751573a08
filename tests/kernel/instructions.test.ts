/**
 * Conformance of every BV32 instruction (SPEC.md §5), run as guest code.
 *
 * Each group is a batch program generated from a table: a case sets up its operands, executes
 * the instruction under test and stores the result words to a results area; the test then reads
 * the area with vm.readPhysical and compares every case against a reference written here from
 * the SPEC text. Finally every mnemonic of INSTRUCTIONS must have appeared in the code run.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Cause, Reg } from '../../guest-isa/arch.ts';
import { decodeInstruction } from '../../guest-isa/encoding.ts';
import { INSTRUCTIONS } from '../../guest-isa/opcodes.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { bootGuest, expectHalted, hex, MiB, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
const mnemonicsRun = new Set<string>();

/** Records which instructions a program contains, for the coverage check at the end. */
function noteCoverage(image: GuestImage): void {
  for (const segment of image.segments) {
    if ((segment.flags & 4) === 0) continue;
    const view = new DataView(segment.data.buffer, segment.data.byteOffset, segment.data.byteLength);
    for (let offset = 0; offset + 4 <= segment.data.length; offset += 4) {
      const decoded = decodeInstruction(view.getUint32(offset, true));
      if (decoded) mnemonicsRun.add(decoded.spec.mnemonic);
    }
  }
}

function boot(source: string, memoryBytes = 2 * MiB): Guest {
  const guest = bootGuest(source, { hv, memoryBytes });
  noteCoverage(guest.image);
  return guest;
}

// Each test's VMs go when it ends, so the shared pool and decode cache stay small.
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

// -------------------------------------------------------------------------------------------------
// Reference semantics, written from SPEC.md §5 (BigInt where the spec speaks of exact products).

const u32 = (v: number | bigint): number => Number(BigInt.asUintN(32, BigInt(v)));
const s32 = (v: number): number => v | 0;
const INT_MIN = 0x8000_0000;

const R_OPS: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => u32(a + b),
  sub: (a, b) => u32(a - b),
  and: (a, b) => u32(a & b),
  or: (a, b) => u32(a | b),
  xor: (a, b) => u32(a ^ b),
  sll: (a, b) => u32(BigInt(a) << BigInt(b & 31)),
  srl: (a, b) => a >>> (b & 31),
  sra: (a, b) => u32(BigInt(s32(a)) >> BigInt(b & 31)),
  slt: (a, b) => (s32(a) < s32(b) ? 1 : 0),
  sltu: (a, b) => (a < b ? 1 : 0),
  mul: (a, b) => u32(BigInt(a) * BigInt(b)),
  mulh: (a, b) => u32((BigInt(s32(a)) * BigInt(s32(b))) >> 32n),
  mulhu: (a, b) => u32((BigInt(a) * BigInt(b)) >> 32n),
  div: (a, b) => (b === 0 ? 0xffff_ffff : a === INT_MIN && b === 0xffff_ffff ? INT_MIN : u32(BigInt(s32(a)) / BigInt(s32(b)))),
  divu: (a, b) => (b === 0 ? 0xffff_ffff : Math.floor(a / b)),
  rem: (a, b) => (b === 0 ? a : a === INT_MIN && b === 0xffff_ffff ? 0 : u32(BigInt(s32(a)) % BigInt(s32(b)))),
  remu: (a, b) => (b === 0 ? a : a % b),
};

/** Operands chosen at the edges: signs, wrap points, shift amounts at and beyond 32. */
const EDGE_VALUES = [
  0, 1, 2, 7, 31, 32, 33, 0x7fff_ffff, 0x8000_0000, 0x8000_0001, 0xffff_ffff, 0xffff_fff9, 0x1234_5678, 0xdead_beef,
];

// -------------------------------------------------------------------------------------------------
// Batch programs

interface Case {
  name: string;
  /** Assembly that leaves the results in `results` registers; must not touch s0. */
  code: string;
  results: string[];
  expected: number[];
}

class Batch {
  readonly cases: Case[] = [];
  private data = '';

  add(name: string, code: string, results: string[], expected: number[]): void {
    this.cases.push({ name, code, results, expected: expected.map((v) => v >>> 0) });
  }

  addData(text: string): void {
    this.data += `${text}\n`;
  }

  source(): string {
    const body = this.cases.map((c) => {
      const stores = c.results.map((reg, i) => `        sw ${reg}, ${i * 4}(s0)`).join('\n');
      return `# ${c.name}\n${c.code}\n${stores}\n        addi s0, s0, ${c.results.length * 4}`;
    });
    const words = this.cases.reduce((n, c) => n + c.results.length, 0);
    return `
_start: la s0, results
${body.join('\n')}
        exiti 0
        .data
${this.data}
        .align 2
results: .space ${words * 4}
`;
  }

  /** Runs the batch and returns one line per case whose results differ from the expectation. */
  run(memoryBytes?: number): { mismatches: string[]; guest: Guest } {
    const guest = boot(this.source(), memoryBytes);
    const result = guest.run({ maxInstructions: 5_000_000 });
    expectHalted(result, 0);
    const words = this.cases.reduce((n, c) => n + c.results.length, 0);
    const got = guest.words(guest.sym('results'), words);
    const mismatches: string[] = [];
    let at = 0;
    for (const c of this.cases) {
      const actual = got.slice(at, at + c.results.length);
      at += c.results.length;
      if (actual.some((v, i) => v !== c.expected[i])) {
        mismatches.push(`${c.name}: got [${actual.map(hex).join(', ')}], want [${c.expected.map(hex).join(', ')}]`);
      }
    }
    return { mismatches, guest };
  }
}

const li = (reg: string, value: number): string => `        li ${reg}, ${hex(value)}`;

// -------------------------------------------------------------------------------------------------

describe('register-register arithmetic (format R)', () => {
  for (const [op, reference] of Object.entries(R_OPS)) {
    it(`${op} over every pair of edge operands, and with rd = r0 or rd = a source`, () => {
      const batch = new Batch();
      for (const a of EDGE_VALUES) {
        for (const b of EDGE_VALUES) {
          batch.add(`${op} ${hex(a)}, ${hex(b)}`, `${li('t0', a)}\n${li('t1', b)}\n        ${op} a0, t0, t1`, ['a0'], [reference(a, b)]);
        }
      }
      // Sources are read before the destination is written.
      batch.add(`${op} t0, t0, t1`, `${li('t0', 0x8000_0007)}\n${li('t1', 3)}\n        ${op} t0, t0, t1`, ['t0'], [reference(0x8000_0007, 3)]);
      batch.add(`${op} t1, t0, t1`, `${li('t0', 0xffff_fff0)}\n${li('t1', 5)}\n        ${op} t1, t0, t1`, ['t1'], [reference(0xffff_fff0, 5)]);
      batch.add(`${op} t2, t2, t2`, `${li('t2', 0x4000_0003)}\n        ${op} t2, t2, t2`, ['t2'], [reference(0x4000_0003, 0x4000_0003)]);
      // A write to r0 is discarded: r0 still reads 0 afterwards, and r0 as a source is 0.
      batch.add(`${op} zero, t0, t1`, `${li('t0', 0x1234_5678)}\n${li('t1', 0xffff_ffff)}\n        ${op} zero, t0, t1\n        add a0, zero, zero`, ['zero', 'a0'], [0, 0]);
      batch.add(`${op} a0, zero, t1`, `${li('t1', 0x9)}\n        ${op} a0, zero, t1`, ['a0'], [reference(0, 9)]);
      const { mismatches } = batch.run();
      expect(mismatches).toEqual([]);
    });
  }

  it('matches the examples SPEC.md gives', () => {
    expect(R_OPS.mulh!(0xffff_ffff, 1)).toBe(0xffff_ffff);
    expect(R_OPS.mulhu!(0xffff_ffff, 0xffff_ffff)).toBe(0xffff_fffe);
    expect(s32(R_OPS.rem!(u32(-7), 2))).toBe(-1);
    expect(R_OPS.rem!(7, u32(-2))).toBe(1);
    const batch = new Batch();
    batch.add('mulh -1, 1', `${li('t0', 0xffff_ffff)}\n${li('t1', 1)}\n        mulh a0, t0, t1`, ['a0'], [0xffff_ffff]);
    batch.add('mulhu 0xffffffff^2', `${li('t0', 0xffff_ffff)}\n        mulhu a0, t0, t0`, ['a0'], [0xffff_fffe]);
    batch.add('rem -7, 2', `${li('t0', u32(-7))}\n${li('t1', 2)}\n        rem a0, t0, t1`, ['a0'], [u32(-1)]);
    batch.add('rem 7, -2', `${li('t0', 7)}\n${li('t1', u32(-2))}\n        rem a0, t0, t1`, ['a0'], [1]);
    batch.add('div INT_MIN, -1', `${li('t0', INT_MIN)}\n${li('t1', u32(-1))}\n        div a0, t0, t1`, ['a0'], [INT_MIN]);
    batch.add('rem INT_MIN, -1', `${li('t0', INT_MIN)}\n${li('t1', u32(-1))}\n        rem a0, t0, t1`, ['a0'], [0]);
    batch.add('div x, 0', `${li('t0', 1234)}\n        div a0, t0, zero\n        divu a1, t0, zero\n        rem a2, t0, zero\n        remu a3, t0, zero`, ['a0', 'a1', 'a2', 'a3'], [0xffff_ffff, 0xffff_ffff, 1234, 1234]);
    batch.add('sll by 32 is by 0', `${li('t0', 0x8000_0001)}\n${li('t1', 32)}\n        sll a0, t0, t1\n        srl a1, t0, t1\n        sra a2, t0, t1`, ['a0', 'a1', 'a2'], [0x8000_0001, 0x8000_0001, 0x8000_0001]);
    batch.add('sra by 33 is by 1', `${li('t0', 0x8000_0000)}\n${li('t1', 33)}\n        sra a0, t0, t1\n        srl a1, t0, t1`, ['a0', 'a1'], [0xc000_0000, 0x4000_0000]);
    batch.add('sltu zero, x is x != 0', `${li('t0', 5)}\n        sltu a0, zero, t0\n        sltu a1, zero, zero`, ['a0', 'a1'], [1, 0]);
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });
});

describe('register-immediate (formats I, SHIFT, U)', () => {
  const signedImms = [-32768, -1, 0, 1, 0x7fff];
  const unsignedImms = [0, 1, 0x8000, 0xffff, 0x00ff];
  const I_OPS: Record<string, { imms: number[]; reference: (a: number, imm: number) => number }> = {
    addi: { imms: signedImms, reference: (a, imm) => u32(a + imm) },
    slti: { imms: signedImms, reference: (a, imm) => (s32(a) < imm ? 1 : 0) },
    sltiu: { imms: signedImms, reference: (a, imm) => (a < u32(imm) ? 1 : 0) },
    andi: { imms: unsignedImms, reference: (a, imm) => u32(a & imm) },
    ori: { imms: unsignedImms, reference: (a, imm) => u32(a | imm) },
    xori: { imms: unsignedImms, reference: (a, imm) => u32(a ^ imm) },
  };
  const SHIFT_OPS: Record<string, (a: number, shamt: number) => number> = {
    slli: (a, n) => R_OPS.sll!(a, n),
    srli: (a, n) => R_OPS.srl!(a, n),
    srai: (a, n) => R_OPS.sra!(a, n),
  };

  it('addi, slti, sltiu sign-extend the immediate; andi, ori, xori zero-extend it', () => {
    const batch = new Batch();
    for (const [op, { imms, reference }] of Object.entries(I_OPS)) {
      for (const a of EDGE_VALUES) {
        for (const imm of imms) {
          batch.add(`${op} ${hex(a)}, ${imm}`, `${li('t0', a)}\n        ${op} a0, t0, ${imm}`, ['a0'], [reference(a, imm)]);
        }
      }
      batch.add(`${op} zero, t0, 1`, `${li('t0', 0xffff_ffff)}\n        ${op} zero, t0, 1`, ['zero'], [0]);
      batch.add(`${op} t0, t0, 3`, `${li('t0', 0x8000_0005)}\n        ${op} t0, t0, 3`, ['t0'], [reference(0x8000_0005, 3)]);
    }
    // SPEC.md §5.3 spells these out.
    batch.add('sltiu x, -1 compares against 0xffffffff', `${li('t0', 0xffff_fffe)}\n        sltiu a0, t0, -1\n        sltiu a1, zero, -1`, ['a0', 'a1'], [1, 1]);
    batch.add('sltiu rd, x, 1 is x == 0', `${li('t0', 0)}\n${li('t1', 0x8000_0000)}\n        sltiu a0, t0, 1\n        sltiu a1, t1, 1`, ['a0', 'a1'], [1, 0]);
    batch.add('andi clears bits 16-31', `${li('t0', 0xffff_ffff)}\n        andi a0, t0, 0xffff`, ['a0'], [0xffff]);
    batch.add('xori cannot invert the upper half', `${li('t0', 0x1234_5678)}\n        xori a0, t0, 0xffff`, ['a0'], [0x1234_a987]);
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('slli, srli, srai for shift amounts 0..31', () => {
    const batch = new Batch();
    for (const [op, reference] of Object.entries(SHIFT_OPS)) {
      for (const a of EDGE_VALUES) {
        for (const shamt of [0, 1, 4, 16, 31]) {
          batch.add(`${op} ${hex(a)}, ${shamt}`, `${li('t0', a)}\n        ${op} a0, t0, ${shamt}`, ['a0'], [reference(a, shamt)]);
        }
      }
      batch.add(`${op} zero`, `${li('t0', 0xf0)}\n        ${op} zero, t0, 1`, ['zero'], [0]);
    }
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('lui and auipc build upper immediates, auipc relative to its own address', () => {
    const source = `
_start: la s0, results
        lui a0, 0x12345
        sw a0, 0(s0)
        lui a0, 0xfffff
        sw a0, 4(s0)
        li a0, -1
        lui a0, 0                     # clears the whole register
        sw a0, 8(s0)
        lui zero, 0x1
        sw zero, 12(s0)
here0:  auipc a0, 0
here1:  auipc a1, 0x1
here2:  auipc a2, 0xfffff             # wraps: here2 - 0x1000
here3:  auipc zero, 0x7
        sw a0, 16(s0)
        sw a1, 20(s0)
        sw a2, 24(s0)
        sw zero, 28(s0)
        exiti 0
        .data
results: .space 32
`;
    const guest = boot(source);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('results'), 8).map(hex)).toEqual(
      [0x1234_5000, 0xffff_f000, 0, 0, guest.sym('here0'), guest.sym('here1') + 0x1000, u32(guest.sym('here2') - 0x1000), 0].map(hex),
    );
  });
});

describe('loads and stores (formats LOAD, STORE)', () => {
  const BYTES = [0x80, 0x7f, 0xff, 0x01, 0x00, 0x80, 0xfe, 0xff, 0x34, 0x12, 0xcd, 0xab, 0x01, 0x00, 0x00, 0x80];
  const le = (offset: number, width: number): number => {
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + BYTES[offset + i]!;
    return v;
  };
  const LOADS: Record<string, { width: number; reference: (offset: number) => number }> = {
    lb: { width: 1, reference: (o) => u32((le(o, 1) << 24) >> 24) },
    lbu: { width: 1, reference: (o) => le(o, 1) },
    lh: { width: 2, reference: (o) => u32((le(o, 2) << 16) >> 16) },
    lhu: { width: 2, reference: (o) => le(o, 2) },
    lw: { width: 4, reference: (o) => le(o, 4) },
  };

  it('lb/lh sign-extend, lbu/lhu zero-extend, lw reads little-endian words, with positive and negative offsets', () => {
    const batch = new Batch();
    batch.addData(`        .align 2\nldata: .byte ${BYTES.map((b) => hex(b)).join(', ')}\nldata_end:`);
    for (const [op, { width, reference }] of Object.entries(LOADS)) {
      for (let offset = 0; offset < BYTES.length; offset += width) {
        batch.add(`${op} ldata+${offset}`, `        la t0, ldata\n        ${op} a0, ${offset}(t0)`, ['a0'], [reference(offset)]);
        batch.add(`${op} ldata_end-${BYTES.length - offset}`, `        la t0, ldata_end\n        ${op} a0, ${offset - BYTES.length}(t0)`, ['a0'], [reference(offset)]);
      }
      batch.add(`${op} rd = base`, `        la t0, ldata\n        ${op} t0, 8(t0)`, ['t0'], [reference(8)]);
      batch.add(`${op} rd = zero`, `        la t0, ldata\n        ${op} zero, 0(t0)`, ['zero'], [0]);
    }
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('sb, sh, sw write only their own bytes, little-endian', () => {
    const batch = new Batch();
    batch.addData('        .align 2\nsdata: .space 16');
    const VALUE = 0x89ab_cdef;
    const STORES: Record<string, number> = { sb: 1, sh: 2, sw: 4 };
    for (const [op, width] of Object.entries(STORES)) {
      for (let offset = 0; offset < 8; offset += width) {
        const expected = new Uint8Array(16).fill(0xaa);
        for (let i = 0; i < width; i++) expected[offset + i] = (VALUE >>> (8 * i)) & 0xff;
        const view = new DataView(expected.buffer);
        batch.add(
          `${op} at +${offset}`,
          `        la t0, sdata\n${li('t1', 0xaaaa_aaaa)}\n        sw t1, 0(t0)\n        sw t1, 4(t0)\n        sw t1, 8(t0)\n        sw t1, 12(t0)\n` +
            `${li('t2', VALUE)}\n        addi t3, t0, 8\n        ${op} t2, ${offset - 8}(t3)\n` +
            '        lw a0, 0(t0)\n        lw a1, 4(t0)\n        lw a2, 8(t0)\n        lw a3, 12(t0)',
          ['a0', 'a1', 'a2', 'a3'],
          [0, 4, 8, 12].map((o) => view.getUint32(o, true)),
        );
      }
    }
    // Storing r0 stores zeros.
    batch.add('sw zero', `        la t0, sdata\n${li('t1', 0xffff_ffff)}\n        sw t1, 0(t0)\n        sw zero, 0(t0)\n        lw a0, 0(t0)`, ['a0'], [0]);
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });
});

describe('control transfer (formats BRANCH, J, I)', () => {
  const BRANCHES: Record<string, (a: number, b: number) => boolean> = {
    beq: (a, b) => a === b,
    bne: (a, b) => a !== b,
    blt: (a, b) => s32(a) < s32(b),
    bge: (a, b) => s32(a) >= s32(b),
    bltu: (a, b) => a < b,
    bgeu: (a, b) => a >= b,
  };
  const VALUES = [0, 1, 0xffff_ffff, 0x7fff_ffff, 0x8000_0000];

  it('every branch, taken and not taken, forward over every pair of sign-edge operands', () => {
    const batch = new Batch();
    for (const [op, taken] of Object.entries(BRANCHES)) {
      for (const a of VALUES) {
        for (const b of VALUES) {
          batch.add(
            `${op} ${hex(a)}, ${hex(b)}`,
            `${li('t0', a)}\n${li('t1', b)}\n        li a0, 1\n        ${op} t0, t1, 1f\n        li a0, 0\n1:`,
            ['a0'],
            [taken(a, b) ? 1 : 0],
          );
        }
      }
    }
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('backward branches loop the right number of times', () => {
    const batch = new Batch();
    const loops: [string, string, string, number][] = [
      // [setup, body-with-branch, name, expected iterations]
      ['li t0, 5', 'addi t0, t0, -1\n        bne t0, zero, 2b', 'bne countdown', 5],
      ['li t0, 0\n        li t1, 7', 'addi t0, t0, 1\n        blt t0, t1, 2b', 'blt up to 7', 7],
      ['li t0, -3\n        li t1, 0', 'addi t0, t0, 1\n        bge t1, t0, 2b', 'bge through zero', 4],
      ['li t0, 0\n        li t1, 9', 'addi t0, t0, 3\n        bltu t0, t1, 2b', 'bltu by threes', 3],
      ['li t0, 0xfffffffc\n        li t1, 0xfffffff0', 'addi t0, t0, -4\n        bgeu t0, t1, 2b', 'bgeu near the top', 4],
      ['li t0, 0\n        li t1, 4', 'addi t0, t0, 1\n        beq t0, t1, 3f\n        jal zero, 2b\n3:', 'jal backward', 4],
    ];
    for (const [setup, body, name, iterations] of loops) {
      batch.add(name, `        ${setup}\n        li a0, 0\n2:      addi a0, a0, 1\n        ${body}`, ['a0'], [iterations]);
    }
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('jal and jalr link pc + 4, jump to the target, and discard the link for rd = r0', () => {
    const source = `
_start: la s0, results
call1:  jal ra, f1                    # ra = call1 + 4
        sw ra, 0(s0)
        sw a0, 4(s0)
        la t0, f2
call2:  jalr ra, t0, 0                # link through a register
        sw ra, 8(s0)
        sw a0, 12(s0)
        la t1, f3+8
call3:  jalr t1, t1, -8               # rd = rs1: the target uses the old value
        sw t1, 16(s0)
        sw a0, 20(s0)
        jal zero, skip                # a plain jump: r0 stays 0
        li a0, 0xbad
skip:   sw zero, 24(s0)
        la t2, far
call4:  jalr zero, t2, 0
back:   sw a0, 28(s0)
        exiti 0
f1:     li a0, 11
        jalr zero, ra, 0
f2:     li a0, 22
        jalr zero, ra, 0
f3:     li a0, 33
        jalr zero, t1, 0
        .align 12                     # another page: jal crosses it in both directions
far:    li a0, 44
        jal zero, back
        .data
results: .space 32
`;
    const guest = boot(source);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('results'), 8).map(hex)).toEqual(
      [guest.sym('call1') + 4, 11, guest.sym('call2') + 4, 22, guest.sym('call3') + 4, 33, 0, 44].map(hex),
    );
  });

  it('jalr to a misaligned target traps with cause 0, tval = the target, epc = the jalr, rd unchanged', () => {
    const source = `
_start: la t0, handler
        csrrw zero, tvec, t0
        li ra, 0x5555
        la t1, target
jump:   jalr ra, t1, 2
        exiti 1
target: exiti 2
handler: exiti 0x77
`;
    const guest = boot(source);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0x77);
    const vcpu = guest.vcpu();
    expect(vcpu.cause).toBe(Cause.INSN_MISALIGNED);
    expect(hex(vcpu.tval)).toBe(hex(guest.sym('target') + 2));
    expect(hex(vcpu.epc)).toBe(hex(guest.sym('jump')));
    expect(vcpu.regs[Reg.RA]).toBe(0x5555);
  });
});

describe('atomic memory operations (format AMO)', () => {
  const AMOS: Record<string, (old: number, v: number) => number> = {
    amoswap: (_old, v) => v,
    amoadd: (old, v) => u32(old + v),
    amoand: (old, v) => u32(old & v),
    amoor: (old, v) => u32(old | v),
  };

  it('return the old value and write the combined value, also with rd = rs2 and rd = r0', () => {
    const batch = new Batch();
    batch.addData('        .align 2\namo: .word 0');
    for (const [op, combine] of Object.entries(AMOS)) {
      for (const [old, v] of [[0x0f0f_0f0f, 0x1234_5678], [0xffff_ffff, 1], [0x8000_0000, 0x8000_0000]] as const) {
        const setup = `        la t0, amo\n${li('t1', old)}\n        sw t1, 0(t0)\n${li('t2', v)}`;
        batch.add(`${op} ${hex(old)}, ${hex(v)}`, `${setup}\n        ${op} a0, t2, (t0)\n        lw a1, 0(t0)`, ['a0', 'a1'], [old, combine(old, v)]);
        batch.add(`${op} rd = rs2`, `${setup}\n        ${op} t2, t2, (t0)\n        lw a1, 0(t0)`, ['t2', 'a1'], [old, combine(old, v)]);
        batch.add(`${op} rd = zero`, `${setup}\n        ${op} zero, t2, (t0)\n        lw a1, 0(t0)`, ['zero', 'a1'], [0, combine(old, v)]);
      }
    }
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('a misaligned AMO traps as a store (cause 6) and changes nothing', () => {
    const source = `
_start: la t0, handler
        csrrw zero, tvec, t0
        la t0, amo
        li t1, 99
        li a2, 7
        addi t2, t0, 2
op:     amoadd a2, t1, (t2)
        exiti 1
handler: exiti 0x77
        .data
amo:    .word 0x01020304, 0x05060708
`;
    const guest = boot(source);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0x77);
    expect(guest.vcpu().cause).toBe(Cause.STORE_MISALIGNED);
    expect(hex(guest.vcpu().tval)).toBe(hex(guest.sym('amo') + 2));
    expect(guest.vcpu().regs[Reg.A2]).toBe(7);
    expect(guest.words(guest.sym('amo'), 2).map(hex)).toEqual([0x01020304, 0x05060708].map(hex));
  });
});

describe('system instructions (formats NONE, R2, CSR)', () => {
  it('fence is a no-op; csrrw/csrrs/csrrc return the old value and write (also with rd = r0)', () => {
    const batch = new Batch();
    batch.add('fence', `${li('a0', 5)}\n        fence\n        addi a0, a0, 1`, ['a0'], [6]);
    const scratchCase = (name: string, code: string, results: string[], expected: number[]): void =>
      batch.add(name, `${li('t0', 0xf0f0_00ff)}\n        csrrw zero, scratch, t0\n${code}`, results, expected);
    scratchCase('csrrw', `${li('t1', 0x1234_5678)}\n        csrrw a0, scratch, t1\n        csrrs a1, scratch, zero`, ['a0', 'a1'], [0xf0f0_00ff, 0x1234_5678]);
    scratchCase('csrrs', `${li('t1', 0x0f00_0f00)}\n        csrrs a0, scratch, t1\n        csrrs a1, scratch, zero`, ['a0', 'a1'], [0xf0f0_00ff, 0xfff0_0fff]);
    scratchCase('csrrc', `${li('t1', 0xf000_000f)}\n        csrrc a0, scratch, t1\n        csrrs a1, scratch, zero`, ['a0', 'a1'], [0xf0f0_00ff, 0x00f0_00f0]);
    scratchCase('csrrw zero still writes', `${li('t1', 0x55)}\n        csrrw zero, scratch, t1\n        csrrs a1, scratch, zero`, ['zero', 'a1'], [0, 0x55]);
    scratchCase('csrrs zero still writes', `${li('t1', 0x100)}\n        csrrs zero, scratch, t1\n        csrrs a1, scratch, zero`, ['zero', 'a1'], [0, 0xf0f0_01ff]);
    scratchCase('csrrc zero still writes', `${li('t1', 0xff)}\n        csrrc zero, scratch, t1\n        csrrs a1, scratch, zero`, ['zero', 'a1'], [0, 0xf0f0_0000]);
    scratchCase('csrrs with rs1 = r0 does not write', '        csrrs a0, scratch, zero\n        csrrc a1, scratch, zero\n        csrrs a2, scratch, zero', ['a0', 'a1', 'a2'], [0xf0f0_00ff, 0xf0f0_00ff, 0xf0f0_00ff]);
    scratchCase('csrrw rd = rs1', `${li('t1', 0x77)}\n        csrrw t1, scratch, t1\n        csrrs a1, scratch, zero`, ['t1', 'a1'], [0xf0f0_00ff, 0x77]);
    batch.add('csrrs hartid', '        csrrs a0, hartid, zero', ['a0'], [0]);
    const { mismatches } = batch.run();
    expect(mismatches).toEqual([]);
  });

  it('ecall, ebreak, hcall, sret, wfi and sfence do what SPEC.md §5.7 says', () => {
    const source = `
_start: la s0, results
        addi s1, s0, 0                # the handler's records go here
        la t0, handler
        csrrw zero, tvec, t0
e1:     ecall                         # cause 9 from S mode; handler skips it
e2:     ebreak                        # cause 3
        li a0, 0                      # hcall VERSION: a0 = 0, a1 = 1; a2, a3 preserved
        li a1, 0x99
        li a2, 0x123
        li a3, 0x456
        hcall
        sw a0, 16(s0)
        sw a1, 20(s0)
        sw a2, 24(s0)
        sw a3, 28(s0)
        li a0, 0x7777                 # an unknown hypercall: a0 = -1
        hcall
        sw a0, 32(s0)
        li t0, 2                      # ip.SOFT pending and enabled, SIE = 0: wfi retires at once
        csrrs zero, ip, t0
        csrrs zero, ie, t0
        wfi
        li t1, 0x10
        sw t1, 36(s0)
        sfence zero, zero             # no translations to drop: a no-op that retires
        sfence t1, t0
        li t1, 0x20
        sw t1, 40(s0)
        exiti 0
handler:
        csrrs t0, cause, zero
        csrrs t1, epc, zero
        sw t0, 0(s1)                  # the ecall's record at 0, the ebreak's at 8
        sw t1, 4(s1)
        addi s1, s1, 8
        addi t1, t1, 4
        csrrw zero, epc, t1
        li t0, 0x100                  # SPP = 1: return to S mode
        csrrs zero, status, t0
        sret
        .data
results: .space 64
`;
    const guest = boot(source);
    const base = guest.sym('results');
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(base, 11).map(hex)).toEqual(
      [Cause.ECALL_SUPERVISOR, guest.sym('e1'), Cause.BREAKPOINT, guest.sym('e2'), 0, 1, 0x123, 0x456, 0xffff_ffff, 0x10, 0x20].map(hex),
    );
    expect(guest.vcpu().stats.waits).toBe(0);
  });
});

describe('coverage', () => {
  it('the programs above used every instruction of the opcode table', () => {
    const missing = INSTRUCTIONS.map((spec) => spec.mnemonic).filter((m) => !mnemonicsRun.has(m));
    expect(missing).toEqual([]);
  });
});
