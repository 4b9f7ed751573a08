/*
 * bench/guests/mulh.s for RV32 (rv32im, S-mode, Sv32 on): STEPS steps of a 64-bit
 * multiply-with-carry generator plus a signed high product; the same instructions as the BV32
 * guest after its enable_paging. Per step: 9 instructions. The runner (bench/qemu.ts) passes
 * -DSTEPS=n and the shared constants.
 */
#define PT_OFFSET 0x100000
#define PAGING_BYTES 0x200000
#include "machine.inc"
main:
    read_instret s4, s5
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
    read_instret s6, s7
    ecall
