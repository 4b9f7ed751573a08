/*
 * bench/guests/prefix-sum.s for RV32 (rv32im, S-mode, Sv32 on): in-place prefix sum over a 1 MiB
 * array of words, ROUNDS times; the same instructions as the BV32 guest after its enable_paging,
 * with every address moved up to RAM_BASE. Per round: 2 + 262144 * 5 + 2 = 1,310,724
 * instructions. The runner (bench/qemu.ts) passes -DROUNDS=n -DFILL_FACTOR=k.
 */
#define PAGING_BYTES 0x400000
#define PT_OFFSET 0x300000
#define ARRAY (RAM_BASE + 0x100000)
#define ARRAY_BYTES 0x100000
#include "machine.inc"
main:
    read_instret s4, s5
    li a1, ARRAY
    li a2, ARRAY + ARRAY_BYTES
    li t0, 0
    li s1, FILL_FACTOR
1:  mul t1, t0, s1
    sw t1, 0(a1)
    addi t0, t0, 1
    addi a1, a1, 4
    bne a1, a2, 1b
    li s2, ROUNDS
2:  li a1, ARRAY
    li t0, 0                  # running sum
    # the measured loop: 5 instructions, 1 load and 1 store per element
3:  lw t1, 0(a1)
    add t0, t0, t1
    sw t0, 0(a1)
    addi a1, a1, 4
    bne a1, a2, 3b
    addi s2, s2, -1
    bnez s2, 2b
    mv a1, t0
    li a0, 1
    read_instret s6, s7
    ecall
