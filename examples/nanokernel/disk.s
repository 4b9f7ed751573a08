# disk.s — the block device driver and the disk system calls (docs/nanokernel.md, the device:
# docs/block-device.md).
#
# The disk is optional: without a BLOCK device in the device table nothing here prints or maps
# anything, and the disk system calls return -ENODEV. Every transfer is one 512-byte sector
# through a kernel bounce buffer: the device DMAs to or from the buffer's physical address (the
# kernel maps RAM 1:1), and the kernel copies between the buffer and the user's buffer with
# status.SUM set, after checking the user's pages as `write` does. Reads go through the page
# cache (cache.s); writes go to the disk at once and update a cached block.

        .equ    BLK_SECTOR_LOW, 0               # block device registers
        .equ    BLK_SECTOR_HIGH, 4
        .equ    BLK_COUNT, 8
        .equ    BLK_DMA_ADDRESS, 12
        .equ    BLK_COMMAND, 16
        .equ    BLK_STATUS, 20
        .equ    BLK_SECTOR_BYTES, 32
        .equ    BLK_READ, 1                     # commands
        .equ    BLK_WRITE, 2
        .equ    BLK_FLUSH, 3
        .equ    BLK_STATUS_BAD_RANGE, 2

        .text

# disk_probe(a0 = device table): finds instance 0 of the BLOCK device, checks its sector size,
# records its window and capacity (the info word), maps its superpage and prints
# "[kernel] disk: N sectors of 512 bytes". Without one: a disk on the partition bus if a channel
# offers one (bus.s), else nothing.
disk_probe:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      a0, 8(sp)
        li      a1, DEV_BLOCK
        call    find_device
        beqz    a0, 8f
        lw      s0, 4(a0)               # s0 = the window
        lw      t2, 12(a0)              # info = sectors
        la      t3, disk_sectors
        sw      t2, 0(t3)
        mv      a0, s0
        la      a1, kernel_root
        call    map_mmio_superpage      # (paging is on: an invalid PTE becoming valid needs no sfence)
        lw      t0, BLK_SECTOR_BYTES(s0)
        li      t1, DISK_SECTOR_BYTES
        bne     t0, t1, 3f
        la      t0, disk_base
        sw      s0, 0(t0)
        la      a0, msg_disk            # "[kernel] disk: N sectors of 512 bytes"
        call    kputs
        la      t0, disk_sectors
        lw      a0, 0(t0)
        call    kput_dec
        la      a0, msg_disk_sectors
        call    kputs
        j       9f
3:      la      a0, msg_disk_sector_size  # a disk this driver cannot use: as if there were none
        call    kputs
        lw      a0, BLK_SECTOR_BYTES(s0)
        call    kput_dec
        la      a0, msg_newline
        call    kputs
        j       9f
8:      lw      a0, 8(sp)               # no BLOCK device: perhaps a disk on the bus
        call    bus_probe
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# disk_command(a0 = sector, a1 = command) -> a0 = 0, -EINVAL (sector out of range) or -EIO.
# One sector between the device and disk_bounce.
disk_command:
        li      a2, 1
        la      a3, disk_bounce         # its physical address: the kernel maps RAM 1:1
# disk_transfer(a0 = first sector, a1 = command, a2 = sectors, a3 = physical address) -> a0 = 0,
# -EINVAL or -EIO. Clobbers t0-t2 (a disk on the bus: t0-t3, a1-a3).
disk_transfer:
        la      t0, disk_on_bus
        lw      t0, 0(t0)
        bnez    t0, bus_disk_transfer
        la      t0, disk_base
        lw      t0, 0(t0)
        sw      a0, BLK_SECTOR_LOW(t0)
        sw      zero, BLK_SECTOR_HIGH(t0)
        sw      a2, BLK_COUNT(t0)
        sw      a3, BLK_DMA_ADDRESS(t0)
        sw      a1, BLK_COMMAND(t0)     # the device completes the command before this returns
        lw      t1, BLK_STATUS(t0)
        li      a0, 0
        beqz    t1, 1f
        li      a0, EINVAL
        li      t2, BLK_STATUS_BAD_RANGE
        beq     t1, t2, 1f
        li      a0, EIO
1:      ret

# disk_check_request(a0 = sector, a1 = user buffer, a2 = PTE bits the buffer's pages need;
# s0 = process) -> a0 = 0, -ENODEV, -EINVAL or -EFAULT. The buffer is DISK_SECTOR_BYTES long and
# must lie in user space; its pages are checked (and faulted in) like write's.
disk_check_request:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s1, 4(sp)
        sw      s2, 8(sp)
        sw      s3, 12(sp)
        la      t0, disk_base
        lw      t0, 0(t0)
        beqz    t0, 7f
        la      t0, disk_sectors
        lw      t0, 0(t0)
        bgeu    a0, t0, 8f
        mv      s1, a1                  # s1 = buffer
        addi    s2, a1, DISK_SECTOR_BYTES   # s2 = its end
        mv      s3, a2
        li      t0, USER_BASE
        bltu    s1, t0, 9f
        bltu    s2, s1, 9f              # wraps around
        li      t0, STACK_TOP
        bltu    t0, s2, 9f
        mv      a0, s0
        mv      a1, s1
        mv      a2, s3
        call    user_page_allowed       # the first page, then the last (a sector spans at most two)
        bnez    a0, 9f
        mv      a0, s0
        addi    a1, s2, -1
        mv      a2, s3
        call    user_page_allowed
        bnez    a0, 9f
        li      a0, 0
        j       10f
7:      li      a0, ENODEV
        j       10f
8:      li      a0, EINVAL
        j       10f
9:      li      a0, EFAULT
10:     lw      ra, 0(sp)
        lw      s1, 4(sp)
        lw      s2, 8(sp)
        lw      s3, 12(sp)
        addi    sp, sp, 16
        ret

# disk_info() -> the disk's size in sectors, or -ENODEV
sys_disk_info:
        la      t0, disk_base
        lw      t0, 0(t0)
        li      a0, ENODEV
        beqz    t0, syscall_return
        la      t0, disk_sectors
        lw      a0, 0(t0)
        j       syscall_return

# disk_read(sector, buf) -> 0 or -errno: the sector's 512 bytes into the user's buffer, through
# the page cache (cache.s)
sys_disk_read:
        li      a2, PTE_U | PTE_R | PTE_W
        call    disk_check_request
        bnez    a0, syscall_return
        lw      a0, P_A0(s0)
        call    cache_read_sector
        bltz    a0, syscall_return
        mv      t0, a0
        lw      t1, P_A1(s0)
        li      t2, STATUS_SUM
        csrs    status, t2
        call    disk_copy
        li      t2, STATUS_SUM
        csrc    status, t2
        li      a0, 0
        j       syscall_return

# disk_write(sector, buf) -> 0 or -errno: the user's 512 bytes to the sector
sys_disk_write:
        li      a2, PTE_U | PTE_R
        call    disk_check_request
        bnez    a0, syscall_return
        lw      t0, P_A1(s0)
        la      t1, disk_bounce
        li      t2, STATUS_SUM
        csrs    status, t2
        call    disk_copy
        li      t2, STATUS_SUM
        csrc    status, t2
        lw      a0, P_A0(s0)
        li      a1, BLK_WRITE
        call    disk_command
        bnez    a0, syscall_return
        lw      a0, P_A0(s0)            # write-through: a cached block gets the same bytes
        la      a1, disk_bounce
        call    cache_update_sector
        li      a0, 0
        j       syscall_return

# disk_flush() -> 0 or -errno: every write so far is on stable storage
sys_disk_flush:
        la      t0, disk_base
        lw      t0, 0(t0)
        li      a0, ENODEV
        beqz    t0, syscall_return
        li      a0, 0
        li      a1, BLK_FLUSH
        call    disk_command
        j       syscall_return

# disk_copy(t0 = source, t1 = destination): DISK_SECTOR_BYTES bytes, one at a time (the user's
# buffer may have any alignment). Clobbers t0-t3.
disk_copy:
        addi    t3, t0, DISK_SECTOR_BYTES
1:      lbu     t2, 0(t0)
        sb      t2, 0(t1)
        addi    t0, t0, 1
        addi    t1, t1, 1
        bltu    t0, t3, 1b
        ret

        .data
msg_disk:               .asciz "[kernel] disk: "
msg_disk_sectors:       .asciz " sectors of 512 bytes\n"
msg_disk_sector_size:   .asciz "[kernel] disk: not used, its sector size is "

        .align  2
disk_base:              .word 0         # the block device window (0: no disk)
disk_sectors:           .word 0

        .bss
        .align  9                       # one sector, never across a page boundary
disk_bounce:            .space DISK_SECTOR_BYTES
