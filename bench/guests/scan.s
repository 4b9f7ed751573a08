# Sequential scan: identity-maps RAM with 4 KiB pages (paging.inc), then makes PASSES
# read-modify-write passes over SCAN_BYTES from SCAN_BASE, one word every STRIDE bytes: fold the
# word into an FNV-1a-style checksum (h = (h ^ v) * FNV_PRIME), store v + k + 1 back (k = access
# number over all passes). Every page is fresh at the start, so the first pass reads zeros and
# each later pass reads what the previous one wrote. Exits (hcall EXIT) with the checksum.
# The runner prepends SCAN_BYTES (a multiple of 4 MiB), STRIDE (a power of two, 4..4096),
# PASSES, FNV_OFFSET and FNV_PRIME, which it shares with the plain-JS model (bench/mmu.ts).
.equ SCAN_BASE, 0x400000
.equ PT_BASE, SCAN_BASE + SCAN_BYTES   # root, then the leaf tables, in the last 4 MiB
.equ PAGING_BYTES, PT_BASE + 0x400000
.include "paging.inc"
_start:
    enable_paging
    li a0, FNV_OFFSET          # checksum
    li s1, FNV_PRIME
    li t3, 0                   # k
    li s2, PASSES
1:  li a1, SCAN_BASE
    li a2, SCAN_BASE + SCAN_BYTES
    # the measured loop: 8 instructions, 1 load and 1 store per access
2:  lw t1, 0(a1)
    xor a0, a0, t1
    mul a0, a0, s1
    addi t3, t3, 1
    add t1, t1, t3
    sw t1, 0(a1)
    addi a1, a1, STRIDE
    bne a1, a2, 2b
    addi s2, s2, -1
    bnez s2, 1b
    mv a1, a0
    li a0, 1
    hcall
