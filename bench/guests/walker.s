# Random-access memory walker: fills an area of 2^WALK_WORDS_LOG2 words (16 MiB at 22), then makes
# STEPS updates at word indexes drawn from the top bits of an LCG: read the word, add it to a
# checksum, write it back xor'd with the LCG state. Exits (hcall EXIT) with the checksum.
# The runner prepends `.equ PAGING, 0|1`, `WALK_WORDS_LOG2` (at most 22), `STEPS`, and the
# constants it shares with the plain-JS baseline (bench/workloads.ts): `FILL_FACTOR`, `LCG_SEED`,
# `LCG_MUL`, `LCG_ADD`.
.equ WALK, 0x400000
.equ WALK_BYTES, 4 << WALK_WORDS_LOG2
.equ PT_BASE, 0x1400000               # just past the largest walk area (16 MiB from 4 MiB)
.equ PAGING_BYTES, 0x1800000
.include "paging.inc"
_start:
    li t0, PAGING
    beqz t0, 9f
    enable_paging
9:
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
    hcall
