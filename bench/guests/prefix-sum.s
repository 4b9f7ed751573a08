# In-place prefix sum over a 1 MiB array of words, repeated ROUNDS times (each round sums the
# result of the previous one); exits (hcall EXIT) with the last element. Fill: word i = i * K.
# The runner prepends `.equ PAGING, 0|1`, `ROUNDS`, and `FILL_FACTOR`, which it shares with the
# plain-JS baseline (bench/workloads.ts); the bench also compares the whole array with it.
.equ PAGING_BYTES, 0x400000
.equ PT_BASE, 0x300000
.equ ARRAY, 0x100000
.equ ARRAY_BYTES, 0x100000
.include "paging.inc"
_start:
    li t0, PAGING
    beqz t0, 9f
    enable_paging
9:
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
    hcall
