# trap.s — trap entry and exit, system calls, demand paging and killing faulting processes.
#
# While a process runs in user mode, `scratch` holds its PCB; while the kernel runs, `scratch`
# is 0. Trap entry swaps sp with scratch: a zero means the trap came from the kernel itself,
# which is a bug (the kernel runs with interrupts off and never faults) and panics.

        .text

        .align  2
trap_entry:
        csrrw   sp, scratch, sp
        beqz    sp, kernel_trap
        sw      ra, P_RA(sp)            # save the user registers into the PCB
        sw      gp, P_GP(sp)
        sw      a0, P_A0(sp)
        sw      a1, P_A1(sp)
        sw      a2, P_A2(sp)
        sw      a3, P_A3(sp)
        sw      t0, P_T0(sp)
        sw      t1, P_T1(sp)
        sw      t2, P_T2(sp)
        sw      t3, P_T3(sp)
        sw      s0, P_S0(sp)
        sw      s1, P_S1(sp)
        sw      s2, P_S2(sp)
        sw      s3, P_S3(sp)
        csrrw   t0, scratch, zero       # t0 = the user's sp; scratch = 0: in the kernel now
        sw      t0, P_SP(sp)
        csrr    t0, epc
        sw      t0, P_PC(sp)
        mv      s0, sp                  # s0 = the current process from here on
        la      sp, kstack_top
        csrr    t0, cause
        li      t1, CAUSE_TIMER_IRQ
        beq     t0, t1, on_timer
        li      t1, CAUSE_EXTERNAL_IRQ  # an asynchronous disk's completions (disk.s)
        beq     t0, t1, on_external
        bltz    t0, kernel_trap_from_user
        li      t1, CAUSE_ECALL_U
        beq     t0, t1, on_syscall
        li      t1, CAUSE_LOAD_PF
        beq     t0, t1, on_page_fault
        li      t1, CAUSE_STORE_PF
        beq     t0, t1, on_page_fault
        li      t1, CAUSE_MACHINE_CHECK
        beq     t0, t1, on_machine_check
        j       kill_for_trap

# An interrupt the kernel never enabled: a kernel bug, reported like a supervisor trap.
kernel_trap_from_user:
        csrw    scratch, sp
        li      sp, 0
        j       kernel_trap

# return_to_user (s0 = process): restores its registers and address space and enters user mode.
return_to_user:
        lw      t0, P_PTBR(s0)          # distinct ASIDs: no sfence needed (SPEC §12.7)
        csrw    ptbr, t0
        lw      t0, P_PC(s0)
        csrw    epc, t0
        li      t0, STATUS_SPP | STATUS_SUM
        csrc    status, t0              # sret goes to user mode
        csrw    scratch, s0
        mv      sp, s0
        lw      ra, P_RA(sp)
        lw      gp, P_GP(sp)
        lw      a0, P_A0(sp)
        lw      a1, P_A1(sp)
        lw      a2, P_A2(sp)
        lw      a3, P_A3(sp)
        lw      t0, P_T0(sp)
        lw      t1, P_T1(sp)
        lw      t2, P_T2(sp)
        lw      t3, P_T3(sp)
        lw      s0, P_S0(sp)
        lw      s1, P_S1(sp)
        lw      s2, P_S2(sp)
        lw      s3, P_S3(sp)
        lw      sp, P_SP(sp)
        sret

# The time slice is over: the next process runs.
on_timer:
        la      t0, stat_preemptions
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        li      a0, BALLOON_RATE
        call    balloon_tick            # the balloon driver's poll (balloon.s)
        j       schedule

# The external interrupt (enabled in user mode only with an asynchronous disk, user_ie): the
# disk's completions wake their processes; the interrupted process goes on with its slice.
on_external:
        call    disk_poll
        j       return_to_user

# A load or store page fault from user mode: a heap or stack page not mapped yet gets a zeroed
# frame; anything else (an unmapped address, a protection violation) kills the process.
on_page_fault:
        csrr    s1, tval
        lw      a0, P_ROOT(s0)
        mv      a1, s1
        call    pte_lookup
        beqz    a0, 1f
        lw      t0, 0(a0)
        andi    t0, t0, PTE_V
        bnez    t0, kill_for_trap       # mapped, but not for this access
1:      mv      a0, s0
        mv      a1, s1
        call    demand_map
        beqz    a0, return_to_user
        li      t0, -2
        bne     a0, t0, kill_for_trap
        la      t0, stat_oom_kills
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      a0, msg_killed          # "[kernel] killed pid N (name): out of memory at VA, pc PC"
        call    kputs
        call    kput_process
        la      a0, msg_oom_at
        call    kputs
        mv      a0, s1
        call    kput_hex
        j       kill_finish

# A machine check from user mode (cause 18, tval = the virtual address): the hypervisor could not
# repair a page the process touched, or one of its page tables (the walk's machine check has the
# same tval). The page leaves the process's page table without being freed (its frame is never
# handed out again), and the process is killed like any faulting one:
# "[kernel] killed pid N (name): machine check (uncorrectable memory error) at VA, pc PC".
on_machine_check:
        call    mc_take_victim
        call    forget_poisoned_page
        j       kill_for_trap

# mc_take_victim (s0 = the process): from here until the process is freed, a machine check in the
# kernel is about this process's page tables (lost_address_space), not a kernel page. MCIP is
# cleared so that such a machine check is taken; a bad page under mc_victim itself is still a
# machine check with MCIP set, which stops the VM rather than looping (SPEC §7.6).
mc_take_victim:
        la      t0, mc_victim
        sw      s0, 0(t0)
        li      t0, STATUS_MCIP
        csrc    status, t0
        ret

# A machine check in the kernel while it was killing mc_victim for an earlier one: the victim's
# own page tables hold the error (forget_poisoned_page or free_address_space read them). Its
# address space is given up without being walked again: its frames, tables included, are never
# freed, so no bad frame goes back to the free list. MCIP stays set until the next sret.
lost_address_space:
        la      t0, mc_victim
        sw      zero, 0(t0)
        mv      s0, t1
        sw      zero, P_ROOT(s0)        # end_process frees nothing
        la      t0, stat_mc_spaces
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      sp, kstack_top
        j       kill_for_trap

# A machine check in supervisor mode (kernel_trap sends it here; sp = 0, scratch = the kernel's
# sp). On a page of the current process (the kernel was reading or writing its memory for a
# system call) that process is killed as above and the kernel goes on; on the kernel's own memory
# it is a clean panic: power off with EXIT_MACHINE_CHECK.
kernel_machine_check:
        csrw    scratch, zero           # in the kernel
        la      sp, panic_stack_top     # not the kernel stack: its page may be the bad one
        csrr    t0, tval
        la      t1, kernel_end
        bltu    t0, t1, 1f              # the kernel's own memory: panic, reading none of its variables
        la      t0, mc_victim
        lw      t1, 0(t0)
        bnez    t1, lost_address_space  # killing a process for a machine check: its tables are bad
        la      t0, panicking
        lw      t1, 0(t0)
        bnez    t1, 2f                  # a machine check while panicking: stop without printing
        la      t0, current
        lw      s0, 0(t0)
        lw      a0, P_ROOT(s0)
        beqz    a0, 1f                  # no address space (given up after an earlier machine check)
        call    mc_take_victim          # the lookup walks the process's tables
        lw      a0, P_ROOT(s0)
        csrr    a1, tval
        call    pte_lookup
        beqz    a0, 1f
        lw      t0, 0(a0)
        andi    t0, t0, PTE_V | PTE_U
        li      t1, PTE_V | PTE_U
        bne     t0, t1, 1f
        la      sp, kstack_top
        call    forget_poisoned_page
        j       kill_for_trap
1:      la      t0, panicking           # a kernel page: a panic
        li      t1, 1
        sw      t1, 0(t0)
        la      a0, msg_mc_panic        # "[kernel] PANIC: machine check in kernel memory at VA, pc PC"
        call    kputs
        csrr    a0, tval
        call    kput_hex
        la      a0, msg_pc
        call    kputs
        csrr    a0, epc
        call    kput_hex
        la      a0, msg_newline
        call    kputs
2:      li      a0, EXIT_MACHINE_CHECK
        j       power_off

# forget_poisoned_page (s0 = process, tval = the address): clears the leaf PTE that maps it, so
# ending the process does not free the frame. Keeps every register the killers read (s0, CSRs).
forget_poisoned_page:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        lw      a0, P_ROOT(s0)
        csrr    a1, tval
        call    pte_lookup
        beqz    a0, 1f
        sw      zero, 0(a0)
        la      t0, stat_mc_pages
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
1:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kill_for_trap (s0 = process; cause, tval still in the CSRs): reports the trap, ends the process.
kill_for_trap:
        la      a0, msg_killed
        call    kputs
        call    kput_process
        la      a0, msg_colon
        call    kputs
        csrr    s1, cause
        csrr    s2, tval
        mv      a0, s1
        call    kput_cause
        li      t0, CAUSE_ILLEGAL
        bne     s1, t0, 1f
        la      a0, msg_space           # illegal instruction: tval is the instruction word
        call    kputs
        mv      a0, s2
        call    kput_hex
        j       kill_finish
1:      li      t0, 31                  # causes whose tval is an address
        bltu    t0, s1, kill_finish
        li      t0, ADDRESS_CAUSES
        srl     t0, t0, s1
        andi    t0, t0, 1
        beqz    t0, kill_finish
        la      a0, msg_at
        call    kputs
        mv      a0, s2
        call    kput_hex
kill_finish:
        la      a0, msg_pc
        call    kputs
        lw      a0, P_PC(s0)
        call    kput_hex
        la      a0, msg_newline
        call    kputs
        la      t0, stat_killed
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        lw      t0, P_PROG(s0)
        lw      t0, PROG_FLAGS(t0)
        andi    t0, t0, PROG_MAY_FAULT
        bnez    t0, 1f
        la      t0, stat_unexpected
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
1:      j       end_process

        # Causes 0, 1, 4, 5, 6, 7, 12, 13, 15, 18 report a virtual address in tval.
        .equ    ADDRESS_CAUSES, 0x4b0f3

# ecall from user mode: t0 = number, a0..a3 = arguments, a0 = result. Every other register is
# preserved (the trap saved them all).
on_syscall:
        lw      t0, P_PC(s0)            # resume after the ecall
        addi    t0, t0, 4
        sw      t0, P_PC(s0)
        la      t0, stat_syscalls
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        lw      t0, P_T0(s0)
        lw      a0, P_A0(s0)
        lw      a1, P_A1(s0)
        lw      a2, P_A2(s0)
        lw      a3, P_A3(s0)
        li      t1, SYS_WRITE
        beq     t0, t1, sys_write
        li      t1, SYS_EXIT
        beq     t0, t1, sys_exit
        li      t1, SYS_YIELD
        beq     t0, t1, sys_yield
        li      t1, SYS_SBRK
        beq     t0, t1, sys_sbrk
        li      t1, SYS_GETPID
        beq     t0, t1, sys_getpid
        li      t1, SYS_DISK_INFO       # the disk calls (disk.s)
        beq     t0, t1, sys_disk_info
        li      t1, SYS_DISK_READ
        beq     t0, t1, sys_disk_read
        li      t1, SYS_DISK_WRITE
        beq     t0, t1, sys_disk_write
        li      t1, SYS_DISK_FLUSH
        beq     t0, t1, sys_disk_flush
        li      t1, SYS_READ            # console input (console.s)
        beq     t0, t1, sys_read
        li      t1, SYS_SLEEP           # (proc.s)
        beq     t0, t1, sys_sleep
        li      t1, SYS_MEMINFO         # the memory condition (meminfo.s)
        beq     t0, t1, sys_meminfo
        li      t1, SYS_PMEM_INFO       # persistent memory (pmem.s)
        beq     t0, t1, sys_pmem_info
        li      t1, SYS_PMEM_READ
        beq     t0, t1, sys_pmem_read
        li      t1, SYS_PMEM_WRITE
        beq     t0, t1, sys_pmem_write
        li      t1, SYS_PMEM_FLUSH
        beq     t0, t1, sys_pmem_flush
        li      a0, ENOSYS
syscall_return:                         # a0 = the result
        sw      a0, P_A0(s0)
        j       return_to_user

# write(fd = 1 or 2, buf, len) -> len, -EBADF or -EFAULT. Every page of the buffer is checked
# in the process's page table first (faulting in heap/stack pages), then the bytes are read
# through the user mapping with status.SUM set.
sys_write:
        addi    t0, a0, -1
        li      t1, 2
        bgeu    t0, t1, 8f              # fd not 1 or 2
        beqz    a2, syscall_return_zero
        mv      s1, a1                  # s1 = buf
        add     s2, a1, a2              # s2 = end
        mv      a0, s0
        li      a3, PTE_U | PTE_R
        call    user_range_allowed
        bnez    a0, 9f
        li      t0, STATUS_SUM
        csrs    status, t0
        la      t0, console_tx
        lw      t0, 0(t0)
        mv      t2, s1
2:      lbu     t1, 0(t2)
        sw      t1, 0(t0)
        addi    t2, t2, 1
        bltu    t2, s2, 2b
        li      t0, STATUS_SUM
        csrc    status, t0
        sub     a0, s2, s1
        j       syscall_return
8:      li      a0, EBADF
        j       syscall_return
9:      li      a0, EFAULT
        j       syscall_return
syscall_return_zero:
        li      a0, 0
        j       syscall_return

# exit(code): reports "[kernel] pid N (name) exited with code C" and ends the process.
sys_exit:
        mv      s1, a0
        la      a0, msg_kernel
        call    kputs
        call    kput_process
        la      a0, msg_exited
        call    kputs
        mv      a0, s1
        call    kput_sdec
        la      a0, msg_newline
        call    kputs
        la      t0, stat_exited
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        beqz    s1, 1f
        la      t0, stat_unexpected
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
1:      j       end_process

# yield() -> 0: the next process runs.
sys_yield:
        sw      zero, P_A0(s0)
        j       schedule

# sbrk(increment) -> the old break, or -ENOMEM when the new break would leave
# [HEAP_BASE, HEAP_LIMIT]. Growing maps nothing (pages come on first touch); shrinking frees
# the pages wholly above the new break.
sys_sbrk:
        lw      s1, P_BRK(s0)           # s1 = old break
        add     s2, s1, a0              # s2 = new break
        li      t0, HEAP_BASE
        bltu    s2, t0, 9f
        li      t0, HEAP_LIMIT
        bltu    t0, s2, 9f
        bltz    a0, 1f
        bgeu    s2, s1, 2f
        j       9f                      # a positive increment that wrapped
1:      li      t0, PAGE_SIZE - 1       # shrink: free [round_up(new), round_up(old))
        add     a1, s2, t0
        srli    a1, a1, PAGE_SHIFT
        slli    a1, a1, PAGE_SHIFT
        add     a2, s1, t0
        srli    a2, a2, PAGE_SHIFT
        slli    a2, a2, PAGE_SHIFT
        mv      a0, s0
        call    unmap_user_range
        call    report_free_pages       # free-page reporting (balloon.s)
2:      sw      s2, P_BRK(s0)
        mv      a0, s1
        j       syscall_return
9:      li      a0, ENOMEM
        j       syscall_return

# getpid() -> the process id.
sys_getpid:
        lw      a0, P_PID(s0)
        j       syscall_return

        .data
msg_killed:     .asciz "[kernel] killed "
msg_mc_panic:   .asciz "[kernel] PANIC: machine check (uncorrectable memory error) in kernel memory at "
        .align  2
stat_mc_pages:  .word 0                 # pages dropped after a machine check (never freed)
stat_mc_spaces: .word 0                 # address spaces given up: their page tables held the error
mc_victim:      .word 0                 # the process being killed for a machine check, or 0
msg_kernel:     .asciz "[kernel] "
msg_exited:     .asciz " exited with code "
msg_at:         .asciz " at "
msg_oom_at:     .asciz ": out of memory at "
