# pmem.s — the persistent-memory driver and its system calls (docs/nanokernel.md, "Persistent
# memory"; the device: docs/pmem.md).
#
# Optional: with a PMEM device (type 8) in the device table, the kernel maps the range the device
# describes (BASE, SIZE) 1:1 into kernel space, not executable, and programs reach it through four
# system calls: pmem_info, pmem_read and pmem_write (copies between the user's buffer and the
# range: kernel loads and stores straight into persistent memory, at memory speed) and pmem_flush
# (the device's FLUSH: the range's stores are durable when the call returns). Without one every
# call returns -ENODEV. A range that does not end by 1 GiB (user space starts there) is not used.

        .equ    DEV_PMEM, 8
        .equ    PM_BASE, 0x00                   # registers (docs/pmem.md)
        .equ    PM_SIZE, 0x04
        .equ    PM_FLUSH_OFFSET, 0x08
        .equ    PM_FLUSH_LENGTH, 0x0c
        .equ    PM_FLUSH, 0x10
        .equ    PM_STATUS, 0x14
        .equ    PM_STATUS_BAD_RANGE, 1

        .text

# pmem_probe(a0 = device table): finds instance 0 of PMEM, maps its window's superpage and the
# superpages of its range, and prints "[kernel] pmem: N bytes at 0xBASE". Without one: nothing.
pmem_probe:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        li      a1, DEV_PMEM
        call    find_device
        beqz    a0, 9f
        lw      s0, 4(a0)               # s0 = the window
        mv      a0, s0
        la      a1, kernel_root
        call    map_mmio_superpage
        lw      s1, PM_BASE(s0)         # s1 = the range's base, s2 = its size
        lw      s2, PM_SIZE(s0)
        add     a3, s1, s2              # a3 = its end
        bltu    a3, s1, 8f              # wraps around
        li      t0, KERNEL_RAM_LIMIT
        bltu    t0, a3, 8f              # would overlap user space
        srli    a2, s1, SUPERPAGE_SHIFT
        slli    a2, a2, SUPERPAGE_SHIFT # a2 = each superpage of the range (map_mmio_superpage keeps a2, a3)
1:      mv      a0, a2
        la      a1, kernel_root
        call    map_mmio_superpage      # V R W G A D: data only, like a device window
        li      t0, 1 << SUPERPAGE_SHIFT
        add     a2, a2, t0
        bltu    a2, a3, 1b
        la      t0, pmem_window
        sw      s0, 0(t0)
        la      t0, pmem_base
        sw      s1, 0(t0)
        la      t0, pmem_size
        sw      s2, 0(t0)
        la      a0, msg_pmem            # "[kernel] pmem: N bytes at 0xBASE"
        call    kputs
        mv      a0, s2
        call    kput_dec
        la      a0, msg_pmem_at
        call    kputs
        mv      a0, s1
        call    kput_hex
        la      a0, msg_newline
        call    kputs
        j       9f
8:      la      a0, msg_pmem_high
        call    kputs
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        addi    sp, sp, 16
        ret

# pmem_check_range(a0 = offset, a1 = length) -> a0 = 0, -ENODEV or -EINVAL: the range exists and
# [offset, offset + length) lies inside it without wrapping.
pmem_check_range:
        la      t0, pmem_size
        lw      t0, 0(t0)
        beqz    t0, 7f
        add     t1, a0, a1
        bltu    t1, a0, 8f
        bltu    t0, t1, 8f
        li      a0, 0
        ret
7:      li      a0, ENODEV
        ret
8:      li      a0, EINVAL
        ret

# pmem_info() -> the range's size in bytes, or -ENODEV
sys_pmem_info:
        la      t0, pmem_size
        lw      a0, 0(t0)
        bnez    a0, syscall_return
        li      a0, ENODEV
        j       syscall_return

# pmem_read(offset, buf, len) -> len or -errno: len bytes of persistent memory into the buffer
sys_pmem_read:
        li      a3, PTE_U | PTE_R | PTE_W
        call    pmem_args
        la      t0, pmem_base
        lw      t0, 0(t0)
        lw      t1, P_A0(s0)
        add     t0, t0, t1              # source: the range, mapped 1:1
        mv      t1, s2                  # destination: the user's buffer
        j       pmem_copy

# pmem_write(offset, buf, len) -> len or -errno: the buffer's len bytes into persistent memory.
# They are in the file at once, durable only after pmem_flush over them (docs/pmem.md).
sys_pmem_write:
        li      a3, PTE_U | PTE_R
        call    pmem_args
        mv      t0, s2                  # source: the user's buffer
        la      t1, pmem_base
        lw      t1, 0(t1)
        lw      t2, P_A0(s0)
        add     t1, t1, t2              # destination: the range
# pmem_copy(t0 = source, t1 = destination, s3 = length): byte by byte with status.SUM set (the
# user's buffer may have any alignment), then returns len to the process.
pmem_copy:
        li      t2, STATUS_SUM
        csrs    status, t2
        add     t3, t0, s3
1:      lbu     t2, 0(t0)
        sb      t2, 0(t1)
        addi    t0, t0, 1
        addi    t1, t1, 1
        bltu    t0, t3, 1b
        li      t2, STATUS_SUM
        csrc    status, t2
        mv      a0, s3
        j       syscall_return

# pmem_args(a3 = PTE bits the user buffer needs; s0 = process) -> s2 = buffer, s3 = length; or
# ends the call: -ENODEV / -EINVAL (range), 0 (length 0), -EFAULT (buffer).
pmem_args:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a3, 4(sp)
        lw      a0, P_A0(s0)
        lw      a1, P_A2(s0)
        call    pmem_check_range
        bnez    a0, 8f
        lw      s3, P_A2(s0)
        beqz    s3, 7f
        lw      s2, P_A1(s0)
        mv      a0, s0
        mv      a1, s2
        mv      a2, s3
        lw      a3, 4(sp)
        call    user_range_allowed
        bnez    a0, 9f
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
7:      addi    sp, sp, 16              # nothing to move
        j       syscall_return_zero
8:      addi    sp, sp, 16              # a0 = -ENODEV or -EINVAL
        j       syscall_return
9:      addi    sp, sp, 16
        li      a0, EFAULT
        j       syscall_return

# pmem_flush(offset, len) -> 0, -ENODEV, -EINVAL or -EIO: the device's FLUSH over the bytes; when
# the store to FLUSH retires they are durable (docs/pmem.md), so this returns after that.
sys_pmem_flush:
        call    pmem_check_range
        bnez    a0, syscall_return
        la      t0, pmem_window
        lw      t0, 0(t0)
        lw      t1, P_A0(s0)
        sw      t1, PM_FLUSH_OFFSET(t0)
        lw      t1, P_A1(s0)
        sw      t1, PM_FLUSH_LENGTH(t0)
        sw      zero, PM_FLUSH(t0)
        lw      t1, PM_STATUS(t0)
        li      a0, 0
        beqz    t1, syscall_return
        li      a0, EINVAL
        li      t2, PM_STATUS_BAD_RANGE
        beq     t1, t2, syscall_return
        li      a0, EIO
        j       syscall_return

        .data
msg_pmem:               .asciz "[kernel] pmem: "
msg_pmem_at:            .asciz " bytes at "
msg_pmem_high:          .asciz "[kernel] pmem: not used, it does not end by 1 GiB\n"

        .align  2
pmem_window:            .word 0         # the PMEM window (0: no device)
pmem_base:              .word 0         # the range, mapped 1:1
pmem_size:              .word 0         # its bytes (0: no persistent memory)
