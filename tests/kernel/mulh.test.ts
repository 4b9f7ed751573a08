/**
 * mulh / mulhu without BigInt: the interpreter's helpers against BigInt products, over edge
 * values and random int32s (fast-check), and the two instructions through the interpreter.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { Reg } from '../../guest-isa/arch.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { mulhSigned, mulhUnsigned } from '../../kernel/cpu/vcpu.ts';

/** The reference: the high word of the exact 64-bit product, as an int32 register value. */
const highWord = (a: bigint, b: bigint): number => Number(BigInt.asIntN(32, (a * b) >> 32n));
const referenceSigned = (a: number, b: number): number => highWord(BigInt(a | 0), BigInt(b | 0));
const referenceUnsigned = (a: number, b: number): number => highWord(BigInt(a >>> 0), BigInt(b >>> 0));

/** Values where the 16-bit split or the sign correction could go wrong. */
const EDGES = [
  0, 1, 2, 3, -1, -2, 0x7fff, 0x8000, 0xffff, 0x10000, 0x10001, 0x7fffffff, -0x80000000, -0x7fffffff,
  0x7fff0000, 0x80008000 | 0, 0xffff0000 | 0, 0x0000ffff, 0xfffe0001 | 0, 0x12345678, 0x9e3779b1 | 0, 0xffffda61 | 0,
];

// Register values are int32 (the register file is an Int32Array).
const int32 = fc.oneof(fc.integer({ min: -0x80000000, max: 0x7fffffff }), fc.constantFrom(...EDGES));

describe('mulhSigned / mulhUnsigned', () => {
  it('agree with BigInt on every pair of edge values', () => {
    for (const a of EDGES) {
      for (const b of EDGES) {
        expect([a, b, mulhSigned(a, b)]).toEqual([a, b, referenceSigned(a, b)]);
        expect([a, b, mulhUnsigned(a, b)]).toEqual([a, b, referenceUnsigned(a, b)]);
      }
    }
  });

  it('agree with BigInt on random int32 pairs', () => {
    fc.assert(
      fc.property(int32, int32, (a, b) => {
        expect(mulhSigned(a, b)).toBe(referenceSigned(a, b));
        expect(mulhUnsigned(a, b)).toBe(referenceUnsigned(a, b));
      }),
      { numRuns: 20_000 },
    );
  });

  it('return int32 values (what the register file stores)', () => {
    fc.assert(
      fc.property(int32, int32, (a, b) => {
        for (const value of [mulhSigned(a, b), mulhUnsigned(a, b)]) expect(value).toBe(value | 0);
      }),
    );
  });

  it('commute', () => {
    fc.assert(
      fc.property(int32, int32, (a, b) => {
        expect(mulhSigned(a, b)).toBe(mulhSigned(b, a));
        expect(mulhUnsigned(a, b)).toBe(mulhUnsigned(b, a));
      }),
    );
  });
});

describe('mulh / mulhu instructions', () => {
  it('write the high words the reference computes, through the interpreter', () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 * 2 ** 20 });
    const program = assemble('_start: mulh a2, a0, a1\n mulhu a3, a0, a1\n ebreak\n').image;
    const pairs = [...EDGES.map((a, i) => [a, EDGES[(i * 7 + 3) % EDGES.length]!] as const), ...fc.sample(fc.tuple(int32, int32), { numRuns: 200, seed: 8 })];
    for (const [a, b] of pairs) {
      const vm = hv.createVm({ memoryBytes: 2 ** 20, name: 'mulh' });
      vm.loadImage(program);
      const vcpu = vm.vcpus[0]!;
      vcpu.regs[Reg.A0] = a;
      vcpu.regs[Reg.A1] = b;
      hv.run({ maxInstructions: 2 }, [vm]);
      expect([a, b, vcpu.regs[Reg.A2], vcpu.regs[Reg.A3]]).toEqual([a, b, referenceSigned(a, b), referenceUnsigned(a, b)]);
      hv.destroyVm(vm);
    }
  });
});
