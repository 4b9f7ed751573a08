# loop.s — sums 1..1000 in a loop and exits with (sum & 0xff) as the exit code.
# 1 + 2 + ... + 1000 = 500500 = 0x7a314, so the exit code is 0x14 = 20.

        .equ    HCALL_EXIT, 1
        .equ    LIMIT, 1000

        .text
        .global _start
_start:
        li      t0, 1                   # t0 = i
        li      t1, LIMIT
        li      a1, 0                   # a1 = sum
loop:   add     a1, a1, t0
        addi    t0, t0, 1
        ble     t0, t1, loop            # while i <= LIMIT

        andi    a1, a1, 0xff            # exit code = sum & 0xff
        li      a0, HCALL_EXIT
        hcall
1:      j       1b                      # not reached
