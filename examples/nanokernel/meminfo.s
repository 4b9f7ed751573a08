# meminfo.s — the memory condition for programs (docs/nanokernel.md, "The memory condition";
# the device: docs/meminfo.md, T-7).
#
# Optional: with a MEMINFO device (type 7) in the device table the kernel reads the host's limit,
# pressure and change counter from it; without one the meminfo system call reports "no host
# limit" and only the guest's own free and page-cache counts. The call combines the host's figures
# with the page classes (mm.s), which only the kernel knows:
#
#   available = min(free + cache, LIMIT - (kernel + anonymous pages))
#
# — the pages a program could still take now without the guest running short or going over what
# the host lets it use. It is signed: negative when the guest already uses more than the host's
# limit (the balloon cannot reach its target, the host may swap). Three MMIO reads, no loop.

        .equ    DEV_MEMINFO, 7
        .equ    MI_LIMIT, 0x00                  # registers (read-only)
        .equ    MI_PRESSURE, 0x04
        .equ    MI_SEQ, 0x08

        .text

# meminfo_probe(a0 = device table): finds instance 0 of MEMINFO, maps its window's superpage and
# prints "[kernel] meminfo: limit N pages, pressure P". Without one: nothing.
meminfo_probe:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        li      a1, DEV_MEMINFO
        call    find_device
        beqz    a0, 9f
        lw      s0, 4(a0)               # the window
        mv      a0, s0
        la      a1, kernel_root
        call    map_mmio_superpage
        la      t0, meminfo_base
        sw      s0, 0(t0)
        la      a0, msg_meminfo
        call    kputs
        lw      a0, MI_LIMIT(s0)
        call    kput_dec
        la      a0, msg_meminfo_pressure
        call    kputs
        lw      a0, MI_PRESSURE(s0)
        call    kput_dec
        la      a0, msg_newline
        call    kputs
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# meminfo() -> a0 = pages available to the caller now (signed, see above), a1 = PRESSURE (0 high
# … 3 low; -1 without the device: no host limit), a2 = SEQ (0 without the device), a3 = LIMIT
# (0xffffffff without the device). SEQ is read first, so a change after it shows at the next call.
sys_meminfo:
        la      t0, mem_free
        lw      a0, 0(t0)
        la      t0, mem_cache
        lw      t1, 0(t0)
        add     a0, a0, t1              # a0 = free + cache
        li      a1, -1
        li      a2, 0
        li      a3, -1
        la      t0, meminfo_base
        lw      t0, 0(t0)
        beqz    t0, 1f
        lw      a2, MI_SEQ(t0)
        lw      a3, MI_LIMIT(t0)
        lw      a1, MI_PRESSURE(t0)
        la      t0, mem_kernel
        lw      t1, 0(t0)
        la      t0, mem_anon
        lw      t2, 0(t0)
        add     t1, t1, t2              # pages in use by the kernel and the processes
        sub     t1, a3, t1              # LIMIT - in use (signed: may be below 0)
        bge     t1, a0, 1f
        mv      a0, t1
1:      sw      a1, P_A1(s0)
        sw      a2, P_A2(s0)
        sw      a3, P_A3(s0)
        j       syscall_return

        .data
msg_meminfo:            .asciz "[kernel] meminfo: limit "
msg_meminfo_pressure:   .asciz " pages, pressure "

        .align  2
meminfo_base:           .word 0         # the MEMINFO window (0: no device)
