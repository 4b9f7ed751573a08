# kernel.s — the nanokernel: a small BV32 guest OS that runs user programs in their own Sv32
# address spaces, with timer preemption, system calls and demand paging. Entry file; the design
# is described in docs/nanokernel.md.
#
#   npx tsx tools/run examples/nanokernel/kernel.s -- sieve 1000 walker 8M random 2

        .include "defs.s"
        .include "lib.s"

        .equ    DEFAULT_TIME_SLICE, 100000      # instructions per time slice (boot option slice=N)
        .equ    KERNEL_STACK_BYTES, 16384

        .include "boot.s"
        .include "console.s"
        .include "mm.s"
        .include "proc.s"
        .include "trap.s"
        .include "args.s"
        .include "disk.s"
        .include "bus.s"
        .include "cache.s"
        .include "balloon.s"
        .include "meminfo.s"
        .include "pmem.s"

        .text
        STRLIB  k_

        # The user image: user programs and their library, copied into every process.
        .include "user.s"

        .bss
        .align  4
kstack:         .space KERNEL_STACK_BYTES
kstack_top:
        .align  12
kernel_root:    .space PAGE_SIZE        # the kernel's root page table (ASID 0)
kernel_end:                             # frames after this are free for allocation
