# The VM-state bench guest (bench/state.ts): identity-maps all of RAM with 4 KiB pages, then runs
# commands from the host. It waits for a command with hcall HC_WAIT (the host pauses the VM there
# and, before resuming it, puts the command in a1 and its arguments in a2, a3):
#   CMD_TOUCH    a2 = first page, a3 = pages: one store per page (the page's address xor a
#                command counter, so every page is different and non-zero);
#   CMD_STAMPED  the same stores, with hcall HC_STAMP after each (the host records the time),
#                wrapping from the end of RAM to DATA_BASE;
# and waits again. Anything else is a breakpoint trap (a guest error for the bench).
# The runner prepends `.equ MEM_BYTES, n` (a multiple of 4 MiB) and the command and hypercall
# numbers it shares with bench/state.ts: CMD_TOUCH, CMD_STAMPED, HC_WAIT, HC_STAMP.
.equ PT_BASE, 0x2000                               # root table; leaf tables follow it
.equ PAGING_BYTES, MEM_BYTES
.equ DATA_BASE, PT_BASE + 0x1000 + (MEM_BYTES >> 10) # the first page after the leaf tables
.include "paging.inc"
_start:
    enable_paging
    li s0, 0                  # command counter
    li s1, MEM_BYTES
    li s2, DATA_BASE
wait:
    li a0, HC_WAIT
    hcall
    addi s0, s0, 1
    li t0, CMD_TOUCH
    beq a1, t0, touch
    li t0, CMD_STAMPED
    beq a1, t0, stamped
    ebreak
touch:
1:  xor t1, a2, s0
    sw t1, 0(a2)
    addi a2, a2, 4096
    addi a3, a3, -1
    bnez a3, 1b
    j wait
stamped:
2:  xor t1, a2, s0
    sw t1, 0(a2)
    li a0, HC_STAMP
    hcall
    addi a2, a2, 4096
    bne a2, s1, 3f
    mv a2, s2
3:  addi a3, a3, -1
    bnez a3, 2b
    j wait
