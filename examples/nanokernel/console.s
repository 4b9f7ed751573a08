# console.s — kernel output through the console device's TX register, the read system call
# (console input up to its end), power off, and the panic path for traps taken in supervisor
# mode (which are always kernel bugs).

        .text

# kwrite(a0 = buffer, a1 = length): bytes to the console (nothing if no console was found)
kwrite:
        la      t0, console_tx
        lw      t0, 0(t0)
        beqz    t0, 2f
        add     a1, a0, a1
1:      bgeu    a0, a1, 2f
        lbu     t1, 0(a0)
        sw      t1, 0(t0)
        addi    a0, a0, 1
        j       1b
2:      ret

# kputs(a0 = NUL-terminated string)
kputs:
        la      t0, console_tx
        lw      t0, 0(t0)
        beqz    t0, 2f
1:      lbu     t1, 0(a0)
        beqz    t1, 2f
        sw      t1, 0(t0)
        addi    a0, a0, 1
        j       1b
2:      ret

# kput_dec(a0 = unsigned), kput_sdec(a0 = signed), kput_hex(a0): format into kfmt_buf, then write
kput_dec:
        la      t0, k_fmt_dec
        j       kput_formatted
kput_sdec:
        la      t0, k_fmt_sdec
        j       kput_formatted
kput_hex:
        la      t0, k_fmt_hex
kput_formatted:                         # t0 = formatter(a0 = dst, a1 = value)
        addi    sp, sp, -16
        sw      ra, 0(sp)
        mv      a1, a0
        la      a0, kfmt_buf
        jalr    ra, t0, 0
        la      t0, kfmt_buf
        sub     a1, a0, t0
        mv      a0, t0
        call    kwrite
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kput_cause(a0 = cause): the cause's name, e.g. "store page fault" or "interrupt 9"
kput_cause:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        mv      s0, a0
        bltz    s0, 2f                  # bit 31: an interrupt
        li      t0, CAUSE_MAX_NAMED
        bltu    t0, s0, 1f
        la      t0, cause_names
        slli    t1, s0, 2
        add     t0, t0, t1
        lw      a0, 0(t0)
        beqz    a0, 1f
        call    kputs
        j       3f
1:      la      a0, msg_cause
        call    kputs
        mv      a0, s0
        call    kput_dec
        j       3f
2:      la      a0, msg_interrupt
        call    kputs
        slli    a0, s0, 1
        srli    a0, a0, 1
        call    kput_dec
3:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# read(fd = 0, buf, len) -> the bytes available now (1 … len), 0 at the end of input, -EBADF for
# another fd, -EFAULT for a buffer that is not writable user memory (checked page by page first,
# as write does). While there is no input yet the process waits: other processes run meanwhile
# (its ecall runs again at its next turn), and when none can — every other one waits for input
# too — the kernel waits in wfi for the console interrupt, on input or on its end (SPEC §13.3).
sys_read:
        sw      zero, P_WAITING(s0)
        bnez    a0, 8f                  # fd 0 only
        beqz    a2, syscall_return_zero
        mv      s1, a1                  # s1 = buf
        add     s2, a1, a2              # s2 = end
        mv      a0, s0
        li      a3, PTE_U | PTE_R | PTE_W
        call    user_range_allowed
        bnez    a0, 9f
        la      t0, console_tx
        lw      s3, 0(t0)               # s3 = the console window (TX is at +0)
2:      lw      t1, CONSOLE_STATUS(s3)
        andi    t2, t1, CONSOLE_INPUT_AVAILABLE
        bnez    t2, 4f
        andi    t2, t1, CONSOLE_END_OF_INPUT
        bnez    t2, syscall_return_zero # the end of input: 0
        call    other_process_ready
        beqz    a0, 3f
        lw      t0, P_PC(s0)            # others can run: this ecall runs again at its next turn
        addi    t0, t0, -4
        sw      t0, P_PC(s0)
        li      t0, 1
        sw      t0, P_WAITING(s0)
        j       schedule
3:      li      t0, CONSOLE_RX_INTERRUPT | CONSOLE_EOF_INTERRUPT
        sw      t0, CONSOLE_CONTROL(s3) # nobody else can run: wait for input or its end
        li      t0, IE_EXTERNAL         # (SIE stays 0: wfi returns, no trap is taken)
        csrw    ie, t0
        wfi
        sw      zero, CONSOLE_CONTROL(s3)
        la      t0, user_ie             # back to the timer (and disk completions)
        lw      t0, 0(t0)
        csrw    ie, t0
        call    disk_poll               # a disk completion may have ended the wait: its process can run
        j       2b
4:      li      t0, STATUS_SUM          # copy what is there, up to len bytes
        csrs    status, t0
        mv      t2, s1
5:      lw      t1, CONSOLE_RX(s3)
        bltz    t1, 6f                  # 0xffffffff: nothing more for now
        sb      t1, 0(t2)
        addi    t2, t2, 1
        bltu    t2, s2, 5b
6:      li      t0, STATUS_SUM
        csrc    status, t0
        sub     a0, t2, s1
        j       syscall_return
8:      li      a0, EBADF
        j       syscall_return
9:      li      a0, EFAULT
        j       syscall_return

# other_process_ready (s0 = process) -> a0 = 1 when another process is runnable (not asleep) and
# not waiting for console input, else 0. Clobbers t0, t1.
other_process_ready:
        la      t0, procs
        la      t1, procs_end
1:      beq     t0, s0, 2f
        lw      a0, P_STATE(t0)
        addi    a0, a0, -PS_RUNNABLE
        bnez    a0, 2f
        lw      a0, P_WAITING(t0)
        beqz    a0, 3f
2:      addi    t0, t0, PCB_BYTES
        bltu    t0, t1, 1b
        li      a0, 0
        ret
3:      li      a0, 1
        ret

# power_off(a0 = exit code): never returns. Falls back to the EXIT hypercall without a power device.
power_off:
        la      t0, power_base
        lw      t0, 0(t0)
        beqz    t0, 1f
        sw      a0, POWER_OFF(t0)
1:      mv      a1, a0
        li      a0, 1                   # Hcall.EXIT
        hcall
2:      j       2b

# kernel_trap: tvec lands here with sp = 0 when the trap came from supervisor mode (scratch = 0
# while the kernel runs). Nothing in the kernel is expected to trap, so this is a panic: print
# the cause, pc and tval and power off with EXIT_PANIC. A machine check is the exception: it is
# the memory's fault, not the kernel's (trap.s, kernel_machine_check).
kernel_trap:
        csrr    t0, cause
        li      t1, CAUSE_MACHINE_CHECK
        beq     t0, t1, kernel_machine_check  # trap.s: kill the process, or panic cleanly
        la      sp, panic_stack_top
        la      t0, panicking
        lw      t1, 0(t0)
        bnez    t1, 1f                  # a trap while panicking: stop without printing
        li      t1, 1
        sw      t1, 0(t0)
        la      a0, msg_panic
        call    kputs
        csrr    a0, cause
        call    kput_cause
        la      a0, msg_panic_cause
        call    kputs
        csrr    a0, cause
        call    kput_hex
        la      a0, msg_panic_pc
        call    kputs
        csrr    a0, epc
        call    kput_hex
        la      a0, msg_tval
        call    kputs
        csrr    a0, tval
        call    kput_hex
        li      a0, '\n'
        la      t0, kfmt_buf
        sb      a0, 0(t0)
        mv      a0, t0
        li      a1, 1
        call    kwrite
1:      li      a0, EXIT_PANIC
        j       power_off

        .data
msg_panic:        .asciz "[kernel] PANIC: unexpected trap in supervisor mode: "
msg_panic_cause:  .asciz " (cause "
msg_panic_pc:     .asciz "), pc "
msg_pc:           .asciz ", pc "
msg_tval:         .asciz ", tval "
msg_cause:        .asciz "cause "
msg_interrupt:    .asciz "interrupt "

# Trap cause names (SPEC §7.1), indexed by cause code; 0 = no name.
        .align  2
cause_names:
        .word   cn0, cn1, cn2, cn3, cn4, cn5, cn6, cn7, cn8, cn9, 0, 0, cn12, cn13, 0, cn15, 0, 0, cn18
cn0:    .asciz  "instruction address misaligned"
cn1:    .asciz  "instruction access fault"
cn2:    .asciz  "illegal instruction"
cn3:    .asciz  "breakpoint"
cn4:    .asciz  "load address misaligned"
cn5:    .asciz  "load access fault"
cn6:    .asciz  "store address misaligned"
cn7:    .asciz  "store access fault"
cn8:    .asciz  "environment call from user mode"
cn9:    .asciz  "environment call from supervisor mode"
cn12:   .asciz  "instruction page fault"
cn13:   .asciz  "load page fault"
cn15:   .asciz  "store page fault"
cn18:   .asciz  "machine check (uncorrectable memory error)"

        .align  2
console_tx:     .word 0                 # address of the console TX register (0: none)
power_base:     .word 0
panicking:      .word 0

        .bss
kfmt_buf:       .space 64
        .align  4
panic_stack:    .space 4096
panic_stack_top:
