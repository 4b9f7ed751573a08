# 64-bit multiply-with-carry (MWC) generator plus a signed fixed-point product: each step computes
# (c:x) = MWC_A * x + c as a full 64-bit product (mul for the low word, mulhu for the high word,
# sltu for the carry), then adds the high word of the signed product x * MWC_K (mulh) to an
# accumulator. Exits (hcall EXIT) with acc ^ x ^ c. The runner prepends `.equ PAGING, 0|1`,
# `STEPS`, and the constants it shares with the plain-JS baseline (bench/workloads.ts): `MWC_A`,
# `MWC_K`, `LCG_SEED` (the first x) and `LCG_ADD` (the first c).
.equ PT_BASE, 0x100000
.equ PAGING_BYTES, 0x200000
.include "paging.inc"
_start:
    li t0, PAGING
    beqz t0, 9f
    enable_paging
9:
    li s0, LCG_SEED           # x
    li a2, LCG_ADD            # c
    li s1, MWC_A
    li s3, MWC_K
    li a1, 0                  # acc
    li a3, STEPS
    # the measured loop: 9 instructions per step, one mulhu and one mulh among them
1:  mul t0, s1, s0            # low word of MWC_A * x
    mulhu t1, s1, s0          # high word
    add s0, t0, a2            # x = low + c
    sltu t2, s0, t0           # carry out of the low word
    add a2, t1, t2            # c = high + carry
    mulh t3, s0, s3           # high word of the signed product x * MWC_K
    add a1, a1, t3
    addi a3, a3, -1
    bnez a3, 1b
    xor a1, a1, s0
    xor a1, a1, a2
    li a0, 1
    hcall
