# proc.s — processes: creation from the program table, the round-robin scheduler with its
# timer-driven time slice, and process exit.
#
# A process control block (PCB) holds the user registers (pc in the slot of r0), the address
# space (root table, PTBR with the ASID) and the heap break. Slot k always uses ASID k + 1; a
# slot reused by a later process flushes that ASID first (SPEC §12.7).

        .equ    P_PC, 0
        .equ    P_RA, 4
        .equ    P_SP, 8
        .equ    P_GP, 12
        .equ    P_A0, 16
        .equ    P_A1, 20
        .equ    P_A2, 24
        .equ    P_A3, 28
        .equ    P_T0, 32
        .equ    P_T1, 36
        .equ    P_T2, 40
        .equ    P_T3, 44
        .equ    P_S0, 48
        .equ    P_S1, 52
        .equ    P_S2, 56
        .equ    P_S3, 60
        .equ    P_STATE, 64             # PS_FREE or PS_RUNNABLE
        .equ    P_PID, 68
        .equ    P_ASID, 72
        .equ    P_PTBR, 76
        .equ    P_ROOT, 80              # root page table (physical)
        .equ    P_BRK, 84               # heap break
        .equ    P_PROG, 88              # program table entry
        .equ    P_ASID_USED, 92         # this slot's ASID has run before: flush it on reuse
        .equ    P_WAITING, 96           # 1 while its read waits for console input (console.s)
        .equ    P_WAKE_LO, 100          # PS_SLEEPING: the virtual time it wakes at (64 bits)
        .equ    P_WAKE_HI, 104
        .equ    P_IO_STATE, 108         # IO_NONE, IO_SUBMITTED or IO_DONE: its asynchronous disk request (disk.s)
        .equ    P_IO_RESULT, 112        # IO_DONE: the request's BlockStatus
        .equ    P_IO_SEQ, 116           # disk_write_seq when its block read was submitted
        .equ    PCB_BYTES, 128
        .equ    MAX_PROCS, 8
        .equ    PS_FREE, 0
        .equ    PS_RUNNABLE, 1
        .equ    PS_SLEEPING, 2          # in sleep: not scheduled before TIME reaches its wake time
        .equ    PS_DISKWAIT, 3          # waits for its disk request's completion (disk.s); counted in sleeping_procs

        # Program table entries: name, entry offset in the user image, flags.
        .equ    PROG_NAME, 0
        .equ    PROG_ENTRY, 4
        .equ    PROG_FLAGS, 8
        .equ    PROG_BYTES, 12
        .equ    PROG_MAY_FAULT, 1       # being killed is this program's expected outcome

        # Program specs parsed from the boot arguments: program, argument text, its length.
        .equ    SPEC_PROG, 0
        .equ    SPEC_ARGS, 4
        .equ    SPEC_LEN, 8
        .equ    SPEC_BYTES, 12
        .equ    MAX_SPECS, 32

        .text

# create_process(a0 = spec) -> a0 = 0, or -1 when it could not start (a message was printed).
# A free slot must exist.
create_process:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s1, a0                  # s1 = spec
        la      s0, procs               # s0 = a free slot
1:      lw      t0, P_STATE(s0)
        beqz    t0, 2f
        addi    s0, s0, PCB_BYTES
        j       1b
2:      la      t0, procs               # ASID = slot index + 1
        sub     t0, s0, t0
        li      t1, PCB_BYTES
        divu    t0, t0, t1
        addi    t0, t0, 1
        sw      t0, P_ASID(s0)
        lw      t1, P_ASID_USED(s0)
        beqz    t1, 3f
        sfence  zero, t0                # the ASID tagged another address space before
3:      li      t1, 1
        sw      t1, P_ASID_USED(s0)
        sw      zero, P_WAITING(s0)
        sw      zero, P_IO_STATE(s0)
        li      t1, 0                   # clear the saved registers
        mv      t2, s0
4:      sw      zero, 0(t2)
        addi    t2, t2, 4
        addi    t1, t1, 1
        slti    t3, t1, 16
        bnez    t3, 4b
        call    new_root
        beqz    a0, 9f
        sw      a0, P_ROOT(s0)
        srli    t0, a0, PAGE_SHIFT
        lw      t1, P_ASID(s0)
        slli    t1, t1, PTBR_ASID_SHIFT
        or      t0, t0, t1
        li      t1, PTBR_SV32
        or      t0, t0, t1
        sw      t0, P_PTBR(s0)

        # The program image: a private copy of the user image, mapped read + execute.
        li      s2, 0                   # s2 = offset in the image
5:      la      t0, user_image_end
        la      t1, user_image_start
        sub     t0, t0, t1
        bgeu    s2, t0, 7f
        li      a0, CLASS_ANON
        call    alloc_frame
        beqz    a0, 8f
        mv      s3, a0
        la      t0, user_image_end      # copy min(4096, rest) bytes, in words
        la      t1, user_image_start
        add     t2, t1, s2              # t2 = source
        sub     t0, t0, t2              # t0 = bytes left
        li      t3, PAGE_SIZE
        bgeu    t3, t0, 6f
        mv      t0, t3
6:      add     t0, t2, t0              # t0 = source end
        mv      t3, s3
61:     lw      t1, 0(t2)
        sw      t1, 0(t3)
        addi    t2, t2, 4
        addi    t3, t3, 4
        bltu    t2, t0, 61b
        lw      a0, P_ROOT(s0)
        li      a1, USER_BASE
        add     a1, a1, s2
        srli    a2, s3, 2
        ori     a2, a2, PTE_USER_CODE
        call    map_page
        bnez    a0, 81f
        li      t0, PAGE_SIZE
        add     s2, s2, t0
        j       5b

        # The top stack page, with the argument text at the very top: sp = a0 = the text.
7:      li      a0, CLASS_ANON
        call    alloc_frame
        beqz    a0, 8f
        mv      s3, a0
        lw      t0, SPEC_LEN(s1)
        addi    t1, t0, 16              # room for the text and its NUL, 16-byte aligned
        srli    t1, t1, 4
        slli    t1, t1, 4
        li      t2, STACK_TOP
        sub     t2, t2, t1
        sw      t2, P_SP(s0)
        sw      t2, P_A0(s0)
        sw      t0, P_A1(s0)
        li      t3, PAGE_SIZE
        sub     t3, t3, t1
        add     t3, s3, t3              # t3 = where the text goes in the frame
        lw      t2, SPEC_ARGS(s1)
        add     t0, t2, t0              # t0 = end of the text
71:     bgeu    t2, t0, 72f
        lbu     t1, 0(t2)
        sb      t1, 0(t3)
        addi    t2, t2, 1
        addi    t3, t3, 1
        j       71b
72:     lw      a0, P_ROOT(s0)
        li      a1, STACK_TOP - PAGE_SIZE
        srli    a2, s3, 2
        ori     a2, a2, PTE_USER_DATA
        call    map_page
        bnez    a0, 81f

        lw      t0, SPEC_PROG(s1)
        sw      t0, P_PROG(s0)
        lw      t1, PROG_ENTRY(t0)
        li      t2, USER_BASE
        add     t1, t1, t2
        sw      t1, P_PC(s0)
        li      t0, HEAP_BASE
        sw      t0, P_BRK(s0)
        la      t0, next_pid
        lw      t1, 0(t0)
        sw      t1, P_PID(s0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        li      t0, PS_RUNNABLE
        sw      t0, P_STATE(s0)
        la      t0, live_procs
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      t0, stat_started
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)

        la      a0, msg_started         # "[kernel] started pid N asid A: name args"
        call    kputs
        lw      a0, P_PID(s0)
        call    kput_dec
        la      a0, msg_asid
        call    kputs
        lw      a0, P_ASID(s0)
        call    kput_dec
        la      a0, msg_colon
        call    kputs
        call    kput_spec
        li      a0, 0
        j       10f

81:     mv      a0, s3                  # a frame that could not be mapped
        li      a1, CLASS_ANON
        call    free_frame
8:      lw      a0, P_ROOT(s0)          # out of memory: undo and report
        call    free_address_space
9:      la      a0, msg_cannot_start
        call    kputs
        call    kput_spec
        la      t0, stat_unexpected
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        li      a0, -1
10:     lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

# kput_spec (s1 = spec): prints "name args\n"
kput_spec:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        lw      t0, SPEC_PROG(s1)
        lw      a0, PROG_NAME(t0)
        call    kputs
        lw      t0, SPEC_LEN(s1)
        beqz    t0, 1f
        la      a0, msg_space
        call    kputs
        lw      a0, SPEC_ARGS(s1)
        lw      a1, SPEC_LEN(s1)
        call    kwrite
1:      la      a0, msg_newline
        call    kputs
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# start_pending(): starts queued programs while there are free slots.
start_pending:
        addi    sp, sp, -16
        sw      ra, 0(sp)
1:      la      t0, live_procs
        lw      t0, 0(t0)
        li      t1, MAX_PROCS
        bgeu    t0, t1, 2f
        la      t0, next_spec
        lw      t1, 0(t0)
        la      t2, spec_count
        lw      t2, 0(t2)
        bgeu    t1, t2, 2f
        addi    t2, t1, 1
        sw      t2, 0(t0)
        li      t2, SPEC_BYTES
        mul     t1, t1, t2
        la      a0, specs
        add     a0, a0, t1
        call    create_process
        j       1b
2:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# schedule: picks the next runnable process after the current one (round-robin; the current one
# last), gives it a fresh time slice and returns to it. Sleepers whose time has come are runnable
# again first. With none runnable but some asleep: the kernel idles (kernel_idle). With no
# process left: shutdown.
schedule:
        la      t0, sleeping_procs
        lw      t0, 0(t0)
        beqz    t0, 5f
        call    wake_sleepers
5:      la      t0, current
        lw      t1, 0(t0)
        li      t2, MAX_PROCS
        la      t3, procs_end
1:      addi    t1, t1, PCB_BYTES
        bltu    t1, t3, 2f
        la      t1, procs
2:      lw      a0, P_STATE(t1)
        li      a1, PS_RUNNABLE
        beq     a0, a1, 3f
        addi    t2, t2, -1
        bnez    t2, 1b
        la      t0, sleeping_procs
        lw      t0, 0(t0)
        bnez    t0, kernel_idle
        j       shutdown
3:      lw      a1, 0(t0)
        beq     a1, t1, 4f
        la      a2, stat_switches
        lw      a3, 0(a2)
        addi    a3, a3, 1
        sw      a3, 0(a2)
        la      a2, flush_on_switch     # boot option flush=always: flush every translation, as
        lw      a2, 0(a2)               # a kernel that ignores ASIDs would (a bench workload)
        beqz    a2, 4f
        sfence  zero, zero
4:      sw      t1, 0(t0)
        mv      s0, t1
        call    arm_timer
        j       return_to_user

# arm_timer(): TIMECMP = TIME + time slice (SPEC §13.4: high word all ones, low, high)
arm_timer:
1:      csrr    t1, timeh
        csrr    t0, time
        csrr    t2, timeh
        bne     t1, t2, 1b
        la      t3, time_slice
        lw      t3, 0(t3)
        add     t2, t0, t3
        sltu    t3, t2, t0              # carry into the high word
        add     t1, t1, t3
# arm_timer_at(t2 = low, t1 = high word of a time): TIMECMP = that time. Clobbers t0, t3.
arm_timer_at:
        la      t0, timer_base
        lw      t0, 0(t0)
        li      t3, -1
        sw      t3, TIMER_CMP_HI(t0)
        sw      t2, TIMER_CMP_LO(t0)
        sw      t1, TIMER_CMP_HI(t0)
        ret

# sleep(time units) -> 0: the process is not scheduled again before TIME has grown by at least
# that much (it wakes at a scheduling point: the end of another process's slice, or the kernel's
# idle wait). 0xffffffff sleeps forever.
sys_sleep:
        sw      zero, P_A0(s0)
1:      csrr    t1, timeh
        csrr    t0, time
        csrr    t2, timeh
        bne     t1, t2, 1b
        add     t2, t0, a0
        sltu    t3, t2, t0
        add     t1, t1, t3
        sw      t2, P_WAKE_LO(s0)
        sw      t1, P_WAKE_HI(s0)
        li      t0, -1                  # 0xffffffff: forever
        bne     a0, t0, 2f
        sw      t0, P_WAKE_LO(s0)
        sw      t0, P_WAKE_HI(s0)
2:      li      t0, PS_SLEEPING
        sw      t0, P_STATE(s0)
        la      t0, sleeping_procs
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        j       schedule

# wake_sleepers(): every sleeper whose wake time has come becomes runnable; next_wake gets the
# earliest wake time of those still asleep (all ones when none is). Clobbers t0-t3, a0-a3.
wake_sleepers:
1:      csrr    a1, timeh               # a1:a0 = now
        csrr    a0, time
        csrr    t0, timeh
        bne     a1, t0, 1b
        li      a2, -1                  # a3:a2 = the earliest wake time left
        li      a3, -1
        la      t0, procs
2:      lw      t1, P_STATE(t0)
        li      t2, PS_SLEEPING
        bne     t1, t2, 5f
        lw      t1, P_WAKE_HI(t0)
        lw      t2, P_WAKE_LO(t0)
        bltu    t1, a1, 3f              # wake <= now: runnable again
        bne     t1, a1, 4f
        bgeu    a0, t2, 3f
4:      bltu    t1, a3, 41f             # still asleep: the earliest?
        bne     t1, a3, 5f
        bgeu    t2, a2, 5f
41:     mv      a3, t1
        mv      a2, t2
        j       5f
3:      li      t1, PS_RUNNABLE
        sw      t1, P_STATE(t0)
        la      t1, sleeping_procs
        lw      t2, 0(t1)
        addi    t2, t2, -1
        sw      t2, 0(t1)
5:      addi    t0, t0, PCB_BYTES
        la      t1, procs_end
        bltu    t0, t1, 2b
        la      t0, next_wake
        sw      a2, 0(t0)
        sw      a3, 4(t0)
        ret

# kernel_idle: every live process sleeps. The kernel waits in wfi (SIE stays 0: no trap is
# taken, and the wait takes no instructions: virtual time jumps to the deadline, SPEC §8.4)
# until the earliest wake time, or one time slice when a balloon wants ticks; then it does the
# balloon's tick (with the idle rate: nobody waits for the CPU) and schedules again. When every
# process sleeps forever and there is no balloon, TIMECMP is "never" and the wait never ends:
# the hypervisor sees an idle VM.
kernel_idle:
        la      sp, kstack_top
        la      t0, next_wake
        lw      t2, 0(t0)
        lw      t1, 4(t0)
        la      t0, balloon_base
        lw      t0, 0(t0)
        beqz    t0, 2f
        la      t3, time_slice          # a balloon: at least one tick per time slice
        lw      t3, 0(t3)
1:      csrr    a1, timeh
        csrr    a0, time
        csrr    t0, timeh
        bne     a1, t0, 1b
        add     a2, a0, t3              # a3:a2 = now + slice
        sltu    t0, a2, a0
        add     a3, a1, t0
        bltu    a3, t1, 11f             # the earlier of the two
        bne     a3, t1, 2f
        bgeu    a2, t2, 2f
11:     mv      t1, a3
        mv      t2, a2
2:      call    arm_timer_at
kernel_idle_wait:                       # (a label for tests: the idle kernel waits here)
        wfi                             # ie = user_ie: the timer, and an asynchronous disk's completions
        la      t0, stat_idle_waits
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        call    disk_poll               # (a completion ends a process's disk wait)
        li      a0, BALLOON_IDLE_RATE
        call    balloon_tick
        j       schedule

# end_process (s0 = the process, already reported): frees it, starts queued programs, schedules.
end_process:
        la      t0, kernel_ptbr         # leave its page tables before freeing them
        lw      t0, 0(t0)
        csrw    ptbr, t0
        lw      a0, P_ROOT(s0)
        beqz    a0, 1f                  # given up after a machine check in its tables: never freed
        call    free_address_space
1:      la      t0, mc_victim           # freed: a machine check from now on is about someone else
        sw      zero, 0(t0)
        call    report_free_pages       # free-page reporting (balloon.s)
        sw      zero, P_STATE(s0)
        la      t0, live_procs
        lw      t1, 0(t0)
        addi    t1, t1, -1
        sw      t1, 0(t0)
        call    start_pending
        j       schedule

# kput_table(s1 = (text, counter) pairs, ended by a zero text): each text, then the counter's
# value when the counter is not 0; then a newline.
kput_table:
        addi    sp, sp, -16
        sw      ra, 0(sp)
1:      lw      a0, 0(s1)
        beqz    a0, 2f
        call    kputs
        lw      a0, 4(s1)
        beqz    a0, 3f
        lw      a0, 0(a0)
        call    kput_dec
3:      addi    s1, s1, 8
        j       1b
2:      la      a0, msg_newline
        call    kputs
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kput_process (s0 = process): prints "pid N (name)"
kput_process:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      a0, msg_pid
        call    kputs
        lw      a0, P_PID(s0)
        call    kput_dec
        la      a0, msg_open
        call    kputs
        lw      t0, P_PROG(s0)
        lw      a0, PROG_NAME(t0)
        call    kputs
        la      a0, msg_close
        call    kputs
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# shutdown: every program has ended. Print the summary and power off.
shutdown:
        la      sp, kstack_top
        la      s1, summary_table
        call    kput_table
        la      t0, stats_memory        # boot option stats=memory: the page classes too
        lw      t0, 0(t0)
        beqz    t0, 5f
        la      s1, memory_table
        call    kput_table
5:      la      t0, stat_unexpected
        lw      t0, 0(t0)
        li      s0, EXIT_OK
        beqz    t0, 4f
        li      s0, EXIT_PROGRAM_FAILED
4:      la      a0, msg_poweroff
        call    kputs
        mv      a0, s0
        call    kput_dec
        la      a0, msg_newline
        call    kputs
        mv      a0, s0
        j       power_off

        .data
msg_started:        .asciz "[kernel] started pid "
msg_asid:           .asciz " asid "
msg_colon:          .asciz ": "
msg_space:          .asciz " "
msg_newline:        .asciz "\n"
msg_cannot_start:   .asciz "[kernel] out of memory starting "
msg_pid:            .asciz "pid "
msg_open:           .asciz " ("
msg_close:          .asciz ")"
msg_summary:        .asciz "[kernel] all programs finished: "
msg_started_n:      .asciz " started, "
msg_exited_n:       .asciz " exited, "
msg_killed_n:       .asciz " killed, "
msg_unexpected_n:   .asciz " unexpected\n[kernel] stats: "
msg_switches_n:     .asciz " context switches, "
msg_preempt_n:      .asciz " preemptions, "
msg_syscalls_n:     .asciz " syscalls, "
msg_faults_n:       .asciz " page faults, "
msg_peak_n:         .asciz " frames peak, "
msg_inuse_n:        .asciz " frames in use"
msg_poweroff:       .asciz "[kernel] power off, exit code "
msg_memory:         .asciz "[kernel] memory: "
msg_pages_n:        .asciz " pages, "
msg_free_n:         .asciz " free, "
msg_cache_n:        .asciz " cache, "
msg_anon_n:         .asciz " anon, "
msg_kernel_n:       .asciz " kernel, "
msg_balloon_n:      .asciz " balloon, "
msg_hits_n:         .asciz " cache hits, "
msg_misses_n:       .asciz " cache misses, "
msg_oom_kills_n:    .asciz " oom kills"

        .align  2
current:            .word procs_end - PCB_BYTES   # so that the first pick is slot 0
next_pid:           .word 1
live_procs:         .word 0
sleeping_procs:     .word 0                     # PS_SLEEPING and PS_DISKWAIT processes
user_ie:            .word IE_TIMER              # ie while processes run (disk_probe adds EXTERNAL)
stat_idle_waits:    .word 0                     # wfi in kernel_idle
next_wake:          .word -1, -1                # earliest wake time of a sleeper (wake_sleepers)
next_spec:          .word 0
spec_count:         .word 0
time_slice:         .word DEFAULT_TIME_SLICE
stat_started:       .word 0
stat_exited:        .word 0
stat_killed:        .word 0
stat_unexpected:    .word 0
stat_switches:      .word 0
stat_preemptions:   .word 0
stat_syscalls:      .word 0
stat_page_faults:   .word 0
stat_oom_kills:     .word 0
stats_memory:       .word 0                     # boot option stats=memory

summary_table:      .word msg_summary, stat_started, msg_started_n, stat_exited
                    .word msg_exited_n, stat_killed, msg_killed_n, stat_unexpected
                    .word msg_unexpected_n, stat_switches, msg_switches_n, stat_preemptions
                    .word msg_preempt_n, stat_syscalls, msg_syscalls_n, stat_page_faults
                    .word msg_faults_n, frames_peak, msg_peak_n, frames_in_use
                    .word msg_inuse_n, 0, 0, 0
memory_table:       .word msg_memory, mem_total, msg_pages_n, mem_free
                    .word msg_free_n, mem_cache, msg_cache_n, mem_anon
                    .word msg_anon_n, mem_kernel, msg_kernel_n, mem_balloon
                    .word msg_balloon_n, stat_cache_hits, msg_hits_n, stat_cache_misses
                    .word msg_misses_n, stat_oom_kills, msg_oom_kills_n, 0
                    .word 0, 0

        .bss
        .align  4
procs:              .space MAX_PROCS * PCB_BYTES
procs_end:
specs:              .space MAX_SPECS * SPEC_BYTES
