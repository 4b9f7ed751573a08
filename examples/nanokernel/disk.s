# disk.s — the block device driver and the disk system calls (docs/nanokernel.md, the device:
# docs/block-device.md).
#
# The disk is optional: without a BLOCK device in the device table nothing here prints or maps
# anything, and the disk system calls return -ENODEV. Every transfer is one 512-byte sector
# through a kernel bounce buffer: the device DMAs to or from the buffer's physical address (the
# kernel maps RAM 1:1), and the kernel copies between the buffer and the user's buffer with
# status.SUM set, after checking the user's pages as `write` does. Reads go through the page
# cache (cache.s); writes go to the disk at once and update a cached block.
#
# An asynchronous disk (QUEUE_DEPTH > 0, docs/block-device.md) is driven by queueing: a disk
# system call submits its request (tag = the process's slot, DMA into the slot's own page of
# disk_io_pages) and the process sleeps (PS_DISKWAIT) while others run; the completion interrupt
# (disk_poll) makes it runnable and its ecall runs again, finishing the call with the outcome.
# Each process has at most one request in flight, so up to MAX_PROCS are.

        .equ    BLK_SECTOR_LOW, 0               # block device registers
        .equ    BLK_SECTOR_HIGH, 4
        .equ    BLK_COUNT, 8
        .equ    BLK_DMA_ADDRESS, 12
        .equ    BLK_COMMAND, 16
        .equ    BLK_STATUS, 20
        .equ    BLK_SECTOR_BYTES, 32
        .equ    BLK_QUEUE_DEPTH, 40
        .equ    BLK_TAG, 44
        .equ    BLK_SUBMIT, 48
        .equ    BLK_COMPLETION, 52
        .equ    BLK_IRQ_CONTROL, 56
        .equ    BLK_STATUS_BUSY, 1
        .equ    IO_NONE, 0                      # P_IO_STATE (proc.s)
        .equ    IO_SUBMITTED, 1
        .equ    IO_DONE, 2
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
        lw      t0, BLK_QUEUE_DEPTH(s0) # room for one request per process: queue them
        li      t1, MAX_PROCS
        bltu    t0, t1, 9f
        call    disk_io_alloc
        beqz    a0, 9f                  # no memory for their pages: synchronous
        la      t0, disk_async
        li      t1, 1
        sw      t1, 0(t0)
        sw      t1, BLK_IRQ_CONTROL(s0)
        la      t0, user_ie
        li      t1, IE_TIMER | IE_EXTERNAL
        sw      t1, 0(t0)
        la      a0, msg_disk_async      # "[kernel] disk: asynchronous, requests queued"
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

# disk_submit(a0 = first sector, a1 = command, a2 = sectors, a3 = physical address; s0 = process)
# -> a0 = 0 (accepted: the completion comes tagged with the process's slot), -EINVAL or -EIO.
# Clobbers t0-t2.
disk_submit:
        la      t0, disk_base
        lw      t0, 0(t0)
        sw      a0, BLK_SECTOR_LOW(t0)
        sw      zero, BLK_SECTOR_HIGH(t0)
        sw      a2, BLK_COUNT(t0)
        sw      a3, BLK_DMA_ADDRESS(t0)
        lw      t1, P_ASID(s0)          # tag = slot = ASID - 1
        addi    t1, t1, -1
        sw      t1, BLK_TAG(t0)
        sw      a1, BLK_SUBMIT(t0)
        lw      t1, BLK_STATUS(t0)
        li      a0, 0
        li      t2, BLK_STATUS_BUSY
        beq     t1, t2, 1f
        li      a0, EINVAL
        li      t2, BLK_STATUS_BAD_RANGE
        beq     t1, t2, 1f
        li      a0, EIO
1:      ret

# disk_sleep (s0 = process whose request was just submitted): it waits for the completion while
# others run; its ecall runs again afterwards and finds IO_DONE. Does not return.
disk_sleep:
        li      t0, IO_SUBMITTED
        sw      t0, P_IO_STATE(s0)
        li      t0, PS_DISKWAIT
        sw      t0, P_STATE(s0)
        la      t0, sleeping_procs
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        lw      t0, P_PC(s0)
        addi    t0, t0, -4
        sw      t0, P_PC(s0)
        la      t0, stat_disk_waits
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        j       schedule

# disk_poll(): pops every waiting completion; each one's process (tag = slot) gets the outcome
# and is runnable again. A completion that no process waits for is dropped. Nothing without an
# asynchronous disk. Clobbers t0-t3.
disk_poll:
        la      t0, disk_async
        lw      t0, 0(t0)
        beqz    t0, 9f
        la      t0, disk_base
        lw      t0, 0(t0)
1:      lw      t1, BLK_COMPLETION(t0)
        beqz    t1, 9f
        andi    t2, t1, 0xffff          # the tag: a slot
        li      t3, MAX_PROCS
        bgeu    t2, t3, 1b
        li      t3, PCB_BYTES
        mul     t2, t2, t3
        la      t3, procs
        add     t2, t2, t3
        lw      t3, P_IO_STATE(t2)
        addi    t3, t3, -IO_SUBMITTED
        bnez    t3, 1b
        srli    t1, t1, 16
        andi    t1, t1, 0xff            # the BlockStatus
        sw      t1, P_IO_RESULT(t2)
        li      t3, IO_DONE
        sw      t3, P_IO_STATE(t2)
        li      t3, PS_RUNNABLE
        sw      t3, P_STATE(t2)
        la      t3, sleeping_procs
        lw      t1, 0(t3)
        addi    t1, t1, -1
        sw      t1, 0(t3)
        j       1b
9:      ret

# disk_io_page (s0 = process) -> t1 = its slot's page (disk_io_pages). Clobbers t0.
disk_io_page:
        lw      t1, P_ASID(s0)
        addi    t1, t1, -1
        slli    t1, t1, 2
        la      t0, disk_io_pages
        add     t1, t1, t0
        lw      t1, 0(t1)
        ret

# disk_io_alloc() -> a0 = 1 when every slot got its DMA page (kernel frames, only for an
# asynchronous disk), else 0.
disk_io_alloc:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s1, 4(sp)
        li      s1, 0
1:      li      a0, CLASS_KERNEL
        call    alloc_frame
        beqz    a0, 9f
        la      t0, disk_io_pages
        slli    t1, s1, 2
        add     t0, t0, t1
        sw      a0, 0(t0)
        addi    s1, s1, 1
        li      t0, MAX_PROCS
        bltu    s1, t0, 1b
        li      a0, 1
9:      lw      ra, 0(sp)
        lw      s1, 4(sp)
        addi    sp, sp, 16
        ret

# disk_io_outcome (s0 = process with IO_DONE) -> a0 = 0 or -EIO; the request is forgotten.
disk_io_outcome:
        sw      zero, P_IO_STATE(s0)
        lw      t0, P_IO_RESULT(s0)
        li      a0, 0
        beqz    t0, 1f
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
        la      t0, disk_async
        lw      t0, 0(t0)
        bnez    t0, disk_read_async
        lw      a0, P_A0(s0)
        call    cache_read_sector
        bltz    a0, syscall_return
disk_read_out:                          # a0 = the sector's 512 bytes: to the user's buffer
        mv      t0, a0
        lw      t1, P_A1(s0)
        li      t2, STATUS_SUM
        csrs    status, t2
        call    disk_copy
        li      t2, STATUS_SUM
        csrc    status, t2
        li      a0, 0
        j       syscall_return

# disk_read on an asynchronous disk: a cache hit as above; a miss submits the read of the whole
# block into the process's page and sleeps. When the ecall runs again (IO_DONE), the block goes
# into the cache (unless a write completed meanwhile: the block could then be older than the
# disk, so it only serves this call) and the sector to the user.
disk_read_async:
        lw      t0, P_IO_STATE(s0)
        bnez    t0, 5f
        lw      a0, P_A0(s0)
        srli    a0, a0, BLOCK_SHIFT
        call    cache_lookup
        beqz    a0, 2f
        li      t0, 1                   # a hit
        sw      t0, CD_REF(a0)
        lw      s1, CD_FRAME(a0)
        la      t0, stat_cache_hits
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        j       7f
2:      la      t0, stat_cache_misses   # a miss: submit the block's read
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      t0, disk_write_seq
        lw      t0, 0(t0)
        sw      t0, P_IO_SEQ(s0)
        lw      a0, P_A0(s0)
        srli    a0, a0, BLOCK_SHIFT
        slli    a0, a0, BLOCK_SHIFT     # the block's first sector
        la      t0, disk_sectors
        lw      t0, 0(t0)
        sub     a2, t0, a0              # sectors = min(8, disk size - first)
        li      t0, BLOCK_SECTORS
        bgeu    t0, a2, 3f
        mv      a2, t0
3:      call    disk_io_page
        mv      a3, t1
        li      a1, BLK_READ
        call    disk_submit
        bnez    a0, syscall_return
        j       disk_sleep
5:      call    disk_io_outcome
        bnez    a0, syscall_return
        call    disk_io_page
        mv      s1, t1                  # s1 = the block as read
        la      t0, disk_write_seq
        lw      t0, 0(t0)
        lw      t1, P_IO_SEQ(s0)
        bne     t0, t1, 7f
        lw      a0, P_A0(s0)
        srli    a0, a0, BLOCK_SHIFT
        call    cache_lookup
        bnez    a0, 7f                  # cached meanwhile (by another reader): that copy stays
        call    cache_new_frame
        beqz    a0, 7f                  # no frame: the block only serves this call
        mv      s2, a0
        mv      t0, s1                  # the page into the new cache page
        mv      t1, s2
        li      t2, PAGE_SIZE
        add     t2, t0, t2
6:      lw      t3, 0(t0)
        sw      t3, 0(t1)
        addi    t0, t0, 4
        addi    t1, t1, 4
        bltu    t0, t2, 6b
        lw      a0, P_A0(s0)
        srli    a0, a0, BLOCK_SHIFT
        mv      a1, s2
        call    cache_insert
7:      lw      t0, P_A0(s0)            # s1 = the block: the sector to the user
        andi    t0, t0, BLOCK_SECTORS - 1
        slli    t0, t0, 9
        add     a0, s1, t0
        j       disk_read_out

# disk_write(sector, buf) -> 0 or -errno: the user's 512 bytes to the sector
sys_disk_write:
        li      a2, PTE_U | PTE_R
        call    disk_check_request
        bnez    a0, syscall_return
        la      t0, disk_async
        lw      t0, 0(t0)
        bnez    t0, disk_write_async
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

# disk_write on an asynchronous disk: the user's bytes go to the process's page, the write is
# submitted and the process sleeps; once it completed, a cached block gets the same bytes.
disk_write_async:
        lw      t0, P_IO_STATE(s0)
        bnez    t0, 5f
        call    disk_io_page
        lw      t0, P_A1(s0)
        li      t2, STATUS_SUM
        csrs    status, t2
        call    disk_copy
        li      t2, STATUS_SUM
        csrc    status, t2
        call    disk_io_page
        mv      a3, t1
        lw      a0, P_A0(s0)
        li      a1, BLK_WRITE
        li      a2, 1
        call    disk_submit
        bnez    a0, syscall_return
        j       disk_sleep
5:      call    disk_io_outcome
        bnez    a0, syscall_return
        la      t0, disk_write_seq      # reads in flight may now hold an older block
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        call    disk_io_page
        lw      a0, P_A0(s0)            # write-through: a cached block gets the same bytes
        mv      a1, t1
        call    cache_update_sector
        li      a0, 0
        j       syscall_return

# disk_flush() -> 0 or -errno: every write so far is on stable storage
sys_disk_flush:
        la      t0, disk_base
        lw      t0, 0(t0)
        li      a0, ENODEV
        beqz    t0, syscall_return
        la      t0, disk_async
        lw      t0, 0(t0)
        beqz    t0, 1f
        lw      t0, P_IO_STATE(s0)      # asynchronous: submit, sleep, then the outcome
        bnez    t0, 2f
        li      a0, 0
        li      a1, BLK_FLUSH
        li      a2, 0
        li      a3, 0
        call    disk_submit
        bnez    a0, syscall_return
        j       disk_sleep
2:      call    disk_io_outcome
        j       syscall_return
1:
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
msg_disk_async:         .asciz "[kernel] disk: asynchronous, requests queued\n"

        .align  2
disk_base:              .word 0         # the block device window (0: no disk)
disk_sectors:           .word 0
disk_async:             .word 0         # 1: requests are queued (QUEUE_DEPTH >= MAX_PROCS)
disk_write_seq:         .word 0         # asynchronous writes completed
stat_disk_waits:        .word 0         # disk system calls that slept for their completion

        .bss
        .align  9                       # one sector, never across a page boundary
disk_bounce:            .space DISK_SECTOR_BYTES
disk_io_pages:          .space MAX_PROCS * 4    # each slot's DMA page (a kernel frame) for asynchronous requests
