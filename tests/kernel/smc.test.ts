/**
 * Self-modifying and loaded code (SPEC.md §5.4: "A store to memory that holds instructions is
 * seen by every later instruction fetch"). The interpreter runs pre-decoded pages, so every way
 * of changing code — stores of each width, AMOs, aliases, other vCPUs, the host — must reach them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Pte, Reg } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { CODE_WRITE_LIMIT } from '../../kernel/cpu/decode-cache.ts';
import { bootGuest, expectHalted, hex, HCALL_PROBE, HostPageTables, MiB, ptbrFor, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 32 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

function boot(source: string, vcpus = 1): Guest {
  return bootGuest(source, { hv, memoryBytes: 4 * MiB, vcpus });
}

/** `addi a2, zero, value` */
const setA2 = (value: number): number => encodeInstruction('addi', { rd: Reg.A2, rs1: 0, imm: value });
const RET = encodeInstruction('jalr', { rd: 0, rs1: Reg.RA, imm: 0 });

/** Runs and returns the words stored at `results`. */
function results(guest: Guest, count: number, maxInstructions = 100_000): number[] {
  expectHalted(guest.run({ maxInstructions }), 0);
  return guest.words(guest.sym('results'), count);
}

describe('a guest rewriting code it has already executed', () => {
  it('in the same page: the new instruction runs on the next pass', () => {
    const guest = boot(`
_start: la s0, results
        li s1, 0
again:
target: addi a2, zero, 1              # rewritten below
        sw a2, 0(s0)
        addi s0, s0, 4
        bne s1, zero, done
        li s1, 1
        la t1, target
        la t2, replacement
        lw t3, 0(t2)
        sw t3, 0(t1)
        jal zero, again
done:   exiti 0
        .data
replacement: .word ${hex(setA2(2))}
results: .space 8
`);
    expect(results(guest, 2)).toEqual([1, 2]);
  });

  it('the very next instruction of a straight-line block, patched by the store before it', () => {
    const guest = boot(`
_start: la s0, results
        la t1, next
        la t2, replacement
        lw t3, 0(t2)
        sw t3, 0(t1)
next:   addi a2, zero, 1              # replaced before it executes
        sw a2, 0(s0)
        exiti 0
        .data
replacement: .word ${hex(setA2(7))}
results: .space 4
`);
    expect(results(guest, 1)).toEqual([7]);
  });

  it('in another page, by sw, sh, sb and amoswap, each change visible to the next call', () => {
    const guest = boot(`
_start: la s0, results
        la s1, func
        jal ra, func                  # 1
        sw a2, 0(s0)
        la t2, words
        lw t3, 0(t2)
        sw t3, 0(s1)                  # word store: addi a2, zero, 2
        jal ra, func
        sw a2, 4(s0)
        li t3, 3
        sh t3, 2(s1)                  # halfword store into the immediate: 3
        jal ra, func
        sw a2, 8(s0)
        li t3, 4
        sb t3, 2(s1)                  # byte store into the immediate: 4
        jal ra, func
        sw a2, 12(s0)
        lw t3, 4(t2)
        amoswap t3, t3, (s1)          # an AMO: addi a2, zero, 5; t3 = the old word
        jal ra, func
        sw a2, 16(s0)
        sw t3, 20(s0)
        exiti 0
        .align 12
func:   addi a2, zero, 1
        jalr zero, ra, 0
        .data
words:  .word ${hex(setA2(2))}, ${hex(setA2(5))}
results: .space 24
`);
    expect(results(guest, 6).map(hex)).toEqual([1, 2, 3, 4, 5, setA2(4)].map(hex));
  });

  it(`a code page written more than ${CODE_WRITE_LIMIT} times is dropped from the decode cache and still runs correctly`, () => {
    const guest = boot(`
_start: la s0, results
        la s1, func
        la t2, word
        lw s2, 0(t2)                  # addi a2, zero, 0
        li s3, 0                      # i
        li a3, 0                      # sum
        li t0, 200
1:      slli t1, s3, 16
        or t1, t1, s2
        sw t1, 0(s1)                  # func: addi a2, zero, i
        jal ra, func
        add a3, a3, a2
        addi s3, s3, 1
        bne s3, t0, 1b
        sw a3, 0(s0)
        exiti 0
        .align 12
func:   addi a2, zero, 0
        jalr zero, ra, 0
        .data
word:   .word ${hex(setA2(0))}
results: .space 4
`);
    const dropped = hv.decodeCache.stats.pagesDropped;
    expect(results(guest, 1)).toEqual([(199 * 200) / 2]);
    expect(hv.decodeCache.stats.pagesDropped).toBeGreaterThan(dropped);
  });
});

describe('code loaded by the guest', () => {
  /** Copies `count` words from `from` to the buffer (word or byte copy), calls it, records a2. */
  function loaderProgram(copy: 'word' | 'byte'): string {
    const loop = copy === 'word'
      ? `1:      lw t3, 0(t1)
        sw t3, 0(t2)
        addi t1, t1, 4
        addi t2, t2, 4
        addi a3, a3, -4
        bne a3, zero, 1b`
      : `1:      lbu t3, 0(t1)
        sb t3, 0(t2)
        addi t1, t1, 1
        addi t2, t2, 1
        addi a3, a3, -1
        bne a3, zero, 1b`;
    return `
_start: la s0, results
        la a0, first
        jal ra, load_and_call
        sw a2, 0(s0)
        la a0, second                 # a different routine into the same buffer
        jal ra, load_and_call
        sw a2, 4(s0)
        la a0, first
        jal ra, load_and_call
        sw a2, 8(s0)
        exiti 0
load_and_call:                        # memcpy(buffer, a0, 8), then call buffer
        addi s3, ra, 0
        addi t1, a0, 0
        la t2, buffer
        li a3, 8
${loop}
        la t2, buffer
        jalr ra, t2, 0
        jalr zero, s3, 0
        .data
first:  .word ${hex(setA2(11))}, ${hex(RET)}
second: .word ${hex(setA2(22))}, ${hex(RET)}
results: .space 12
        .align 12
buffer: .space 4096
`;
  }

  it('memcpy (word by word) into a buffer, run it, copy another routine over it, run that', () => {
    expect(results(boot(loaderProgram('word')), 3)).toEqual([11, 22, 11]);
  });

  it('memcpy byte by byte, passing through half-written instructions', () => {
    expect(results(boot(loaderProgram('byte')), 3)).toEqual([11, 22, 11]);
  });

  it('code written through a second, writable virtual alias of an executable page', () => {
    const CODE_VA = 0x4000_0000;
    const DATA_VA = 0x4010_0000;
    const FRAME = 0x20_0000;
    const guest = boot(`
_start: la s0, results
        li t0, ${hex(ptbrFor(0x10_0000, 1))}
        csrrw zero, ptbr, t0
        li s1, ${hex(CODE_VA)}
        li s2, ${hex(DATA_VA)}
        la t2, words
        lw t3, 0(t2)
        sw t3, 0(s2)                  # the routine, written through the data alias
        lw t3, 4(t2)
        sw t3, 4(s2)
        jalr ra, s1, 0
        sw a2, 0(s0)
        lw t3, 8(t2)
        sw t3, 0(s2)                  # rewritten through the alias after it ran
        jalr ra, s1, 0
        sw a2, 4(s0)
        exiti 0
        .data
words:  .word ${hex(setA2(31))}, ${hex(RET)}, ${hex(setA2(32))}
results: .space 8
`);
    const tables = new HostPageTables(guest.vm, 0x10_0000, 0x10_1000);
    tables.map(CODE_VA, FRAME, Pte.V | Pte.R | Pte.X | Pte.A);
    tables.map(DATA_VA, FRAME, Pte.V | Pte.R | Pte.W | Pte.A | Pte.D);
    expect(results(guest, 2)).toEqual([31, 32]);
  });

  it('code written by another vCPU, before and after this vCPU executed it', () => {
    // vCPU 1 writes the buffer (so it may hold a write translation), vCPU 0 runs it, vCPU 1
    // rewrites it, vCPU 0 runs it again. A flag word orders the steps.
    const guest = boot(`
_start: la s0, results
        la s1, flag
        la s2, buffer
        bne a0, zero, writer
        li t0, 1
1:      lw t1, 0(s1)                  # wait for step 1
        bne t1, t0, 1b
        jalr ra, s2, 0
        sw a2, 0(s0)
        li t0, 2
        sw t0, 0(s1)                  # step 2: ran the first version
        li t0, 3
2:      lw t1, 0(s1)                  # wait for step 3
        bne t1, t0, 2b
        jalr ra, s2, 0
        sw a2, 4(s0)
        exiti 0
writer: la t2, words
        lw t3, 0(t2)
        sw t3, 0(s2)
        lw t3, 4(t2)
        sw t3, 4(s2)
        li t0, 1
        sw t0, 0(s1)                  # step 1: the first version is in place
        li t0, 2
3:      lw t1, 0(s1)
        bne t1, t0, 3b
        lw t3, 8(t2)
        sw t3, 0(s2)                  # rewrite what vCPU 0 has run
        li t0, 3
        sw t0, 0(s1)
4:      jal zero, 4b
        .data
flag:   .word 0
words:  .word ${hex(setA2(41))}, ${hex(RET)}, ${hex(setA2(42))}
results: .space 8
        .align 12
buffer: .space 4096
`, 2);
    expectHalted(guest.run({ maxInstructions: 2_000_000, quantum: 500 }), 0);
    expect(guest.words(guest.sym('results'), 2)).toEqual([41, 42]);
  });

  it('code replaced by the host (vm.writePhysical) between two calls', () => {
    const guest = boot(`
_start: la s0, results
        jal ra, func
        sw a2, 0(s0)
        li a0, HCALL_PROBE
        hcall
        jal ra, func
        sw a2, 4(s0)
        exiti 0
        .align 12
func:   addi a2, zero, 51
        jalr zero, ra, 0
        .data
results: .space 8
`);
    guest.vm.onHypercall(HCALL_PROBE, (vcpu) => {
      guest.vm.writePhysical(guest.sym('func'), new Uint8Array(new Uint32Array([setA2(52)]).buffer));
      vcpu.regs[Reg.A0] = 0;
    });
    expect(results(guest, 2)).toEqual([51, 52]);
  });
});
