# Random access over a large area: maps RAM 1:1 either with 4 MiB superpages (LARGE = 1) or with
# 4 KiB pages (LARGE = 0, paging.inc), then makes STEPS read-modify-write steps at word indexes
# drawn from the top bits of an LCG, as walker.s does but without filling the area first (every
# page is fresh, so the first touch of each is part of the run): read the word, add it to a
# checksum, write it back xor'd with the LCG state. Exits (hcall EXIT) with the checksum.
# The runner prepends LARGE, AREA_WORDS_LOG2 (at most 26: 256 MiB), STEPS, and the LCG constants
# it shares with the plain-JS model (bench/mmu.ts): LCG_SEED, LCG_MUL, LCG_ADD.
.equ AREA, 0x400000                    # region 0 holds the code; the area starts at region 1
.equ AREA_BYTES, 4 << AREA_WORDS_LOG2
.equ PT_BASE, AREA + AREA_BYTES        # page tables in the last 4 MiB of RAM
.equ PAGING_BYTES, PT_BASE + 0x400000
.equ REGIONS, PAGING_BYTES >> 22
.include "paging.inc"
_start:
    li t0, LARGE
    bnez t0, 5f
    enable_paging              # (its local labels are 1 and 2)
    j 3f
    # one superpage per 4 MiB region: PTE = (region << 20) | V R W X A D
5:  li t0, PT_BASE
    li t1, 0xcf
    li t2, 1 << 20
    li t3, REGIONS
6:  sw t1, 0(t0)
    add t1, t1, t2
    addi t0, t0, 4
    addi t3, t3, -1
    bnez t3, 6b
    li t1, 0x80000000 | (PT_BASE >> 12)
    csrw ptbr, t1
3:  li a0, 0                  # checksum
    li s0, AREA
    li s1, LCG_SEED
    li s2, LCG_MUL
    li s3, LCG_ADD
    li a3, STEPS
    # the measured loop: 11 instructions, 1 load and 1 store per step
4:  mul s1, s1, s2
    add s1, s1, s3
    srli t0, s1, 32 - AREA_WORDS_LOG2
    slli t0, t0, 2
    add t0, t0, s0
    lw t1, 0(t0)
    add a0, a0, t1
    xor t1, t1, s1
    sw t1, 0(t0)
    addi a3, a3, -1
    bnez a3, 4b
    mv a1, a0
    li a0, 1
    hcall
