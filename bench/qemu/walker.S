/*
 * bench/guests/walker.s for RV32 (rv32im, S-mode, Sv32 on): STEPS LCG-driven random word updates
 * across 2^WALK_WORDS_LOG2 words; the same instructions as the BV32 guest after its
 * enable_paging, with every address moved up to RAM_BASE. Per step: 11 instructions. The runner
 * (bench/qemu.ts) passes -DSTEPS=n -DWALK_WORDS_LOG2=w and the LCG and fill constants.
 */
#define WALK (RAM_BASE + 0x400000)
#define WALK_BYTES (4 << WALK_WORDS_LOG2)
#define PT_OFFSET 0x1400000
#define PAGING_BYTES 0x1800000
#include "machine.inc"
main:
    read_instret s4, s5
    li a1, WALK
    li a2, WALK + WALK_BYTES
    li t0, 0
    li s1, FILL_FACTOR
1:  mul t1, t0, s1
    sw t1, 0(a1)
    addi t0, t0, 1
    addi a1, a1, 4
    bne a1, a2, 1b
    li a0, 0                  # checksum
    li s0, WALK
    li s1, LCG_SEED
    li s2, LCG_MUL
    li s3, LCG_ADD
    li a3, STEPS
    # the measured loop: 11 instructions, 1 load and 1 store per step
2:  mul s1, s1, s2
    add s1, s1, s3
    srli t0, s1, 32 - WALK_WORDS_LOG2
    slli t0, t0, 2
    add t0, t0, s0
    lw t1, 0(t0)
    add a0, a0, t1
    xor t1, t1, s1
    sw t1, 0(t0)
    addi a3, a3, -1
    bnez a3, 2b
    mv a1, a0
    li a0, 1
    read_instret s6, s7
    ecall
