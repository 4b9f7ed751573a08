# random-io.s — a bare-metal load for asynchronous block IO (docs/storage-io.md): keeps DEPTH
# requests in flight on the block device's queue, each of SECTORS sectors at a random aligned
# place on the disk, a read or (WRITE_PCT percent of them) a write. It sleeps in wfi until the
# device's completion interrupt, pops every completion and submits a new request with the freed
# tag. With COUNT > 0 it stops after COUNT completions, prints "ios <n> errors <e> rejected <r>"
# (hex) and exits with 0 (1 if any request failed); COUNT 0 runs until the host stops it.
#
# Boot arguments, blank-separated decimal numbers, each optional from the right:
#   DEPTH (default 32; at most the device's QUEUE_DEPTH)  WRITE_PCT (default 0)
#   SECTORS (default 8 = 4 KiB; 1 … 128)  COUNT (default 0)  SEED (default 1)
# A write sends whatever its buffer holds (earlier reads' data): the load, not the contents, matters.
# Runs in supervisor mode without paging; the request buffers start at 1 MiB (the VM needs
# 1 MiB + DEPTH × SECTORS × 512 bytes of RAM: 3 MiB is enough for 32 × 64 KiB).

        .equ    DEV_CONSOLE, 1
        .equ    DEV_BOOTARGS, 4
        .equ    DEV_BLOCK, 5
        .equ    HCALL_EXIT, 1
        .equ    IE_EXTERNAL, 0x200
        # Block registers (docs/block-device.md).
        .equ    BLK_SECTOR_LOW, 0
        .equ    BLK_SECTOR_HIGH, 4
        .equ    BLK_COUNT, 8
        .equ    BLK_DMA, 12
        .equ    BLK_STATUS, 20
        .equ    BLK_CAPACITY_LOW, 24
        .equ    BLK_QUEUE_DEPTH, 40
        .equ    BLK_TAG, 44
        .equ    BLK_SUBMIT, 48
        .equ    BLK_COMPLETION, 52
        .equ    BLK_IRQ_CONTROL, 56
        .equ    BLK_READ, 1
        .equ    BLK_WRITE, 2
        .equ    BLK_BUSY, 1                     # STATUS after SUBMIT: accepted, in flight
        .equ    BUFFERS, 0x100000
        .equ    ARGS_MAX, 252

        # Offsets of the settings and counters in `vars` (gp points at it).
        .equ    V_SLOTS, 0                      # requests that fit on the disk: capacity / SECTORS
        .equ    V_DEPTH, 4
        .equ    V_SECTORS, 8
        .equ    V_WRITE_PCT, 12
        .equ    V_COUNT, 16
        .equ    V_ERRORS, 20
        .equ    V_REJECTED, 24
        .equ    V_CONSOLE, 28

        .text
        .global _start
# s0 block base, s1 LCG state, s2 completions, s3 loop counter; gp the variables.
_start:
        li      sp, 0x100000                    # the stack grows down below the buffers
        la      gp, vars
        li      a0, DEV_CONSOLE
        call    find_device
        sw      a0, V_CONSOLE(gp)
        li      a0, DEV_BLOCK
        call    find_device
        beqz    a0, no_disk
        mv      s0, a0
        li      s1, 1                           # SEED default; the others are in vars
        call    read_args                       # a0 = the text in args_buf
        call    parse_number
        beqz    a1, 1f
        sw      a2, V_DEPTH(gp)
        call    parse_number
        beqz    a1, 1f
        sw      a2, V_WRITE_PCT(gp)
        call    parse_number
        beqz    a1, 1f
        sw      a2, V_SECTORS(gp)
        call    parse_number
        beqz    a1, 1f
        sw      a2, V_COUNT(gp)
        call    parse_number
        beqz    a1, 1f
        mv      s1, a2
1:      # Clamp DEPTH to 1 … QUEUE_DEPTH and SECTORS to 1 … 128.
        lw      t0, BLK_QUEUE_DEPTH(s0)
        beqz    t0, no_async                    # a synchronous device reports no queue
        lw      t1, V_DEPTH(gp)
        bgeu    t0, t1, 2f
        mv      t1, t0
2:      bnez    t1, 3f
        li      t1, 1
3:      sw      t1, V_DEPTH(gp)
        lw      t1, V_SECTORS(gp)
        li      t0, 128
        bgeu    t0, t1, 4f
        mv      t1, t0
4:      bnez    t1, 5f
        li      t1, 1
5:      sw      t1, V_SECTORS(gp)
        lw      t0, BLK_CAPACITY_LOW(s0)
        divu    t0, t0, t1                      # whole requests that fit on the disk
        beqz    t0, no_disk
        sw      t0, V_SLOTS(gp)
        li      s2, 0
        # The interrupt line rises while completions wait; SIE stays 0: wfi returns, no trap.
        li      t0, 1
        sw      t0, BLK_IRQ_CONTROL(s0)
        li      t0, IE_EXTERNAL
        csrw    ie, t0
        # Fill the queue: one request per tag.
        li      s3, 0
6:      lw      t0, V_DEPTH(gp)
        bgeu    s3, t0, wait
        mv      a0, s3
        call    submit
        addi    s3, s3, 1
        j       6b

wait:   wfi
drain:  lw      s3, BLK_COMPLETION(s0)
        beqz    s3, wait                        # nothing left: sleep until the next interrupt
        srli    t1, s3, 16
        andi    t1, t1, 0x7fff                  # the request's STATUS
        beqz    t1, 1f
        lw      t0, V_ERRORS(gp)
        addi    t0, t0, 1
        sw      t0, V_ERRORS(gp)
1:      addi    s2, s2, 1
        lw      t0, V_COUNT(gp)
        beqz    t0, 2f
        bgeu    s2, t0, finish
2:      li      t1, 0xffff
        and     a0, s3, t1                      # the freed tag
        call    submit
        j       drain

# submit(a0 = tag): a random aligned request on the tag's buffer. Clobbers t0-t3, a1.
submit:
        li      t0, 1664525                     # LCG (Numerical Recipes)
        mul     s1, s1, t0
        li      t0, 1013904223
        add     s1, s1, t0
        srli    t1, s1, 4
        lw      t0, V_SLOTS(gp)
        remu    t1, t1, t0
        lw      t3, V_SECTORS(gp)
        mul     t1, t1, t3                      # first sector, a multiple of SECTORS
        sw      t1, BLK_SECTOR_LOW(s0)
        sw      zero, BLK_SECTOR_HIGH(s0)
        sw      t3, BLK_COUNT(s0)
        slli    t2, t3, 9
        mul     t2, t2, a0
        li      t3, BUFFERS
        add     t2, t2, t3
        sw      t2, BLK_DMA(s0)
        sw      a0, BLK_TAG(s0)
        li      a1, BLK_READ
        lw      t0, V_WRITE_PCT(gp)
        beqz    t0, 1f
        srli    t1, s1, 24                      # 0 … 255, other bits than the sector's
        li      t2, 100
        remu    t1, t1, t2
        bgeu    t1, t0, 1f
        li      a1, BLK_WRITE
1:      sw      a1, BLK_SUBMIT(s0)
        lw      t1, BLK_STATUS(s0)
        li      t2, BLK_BUSY
        beq     t1, t2, 2f
        lw      t0, V_REJECTED(gp)              # refused (queue full or a bad request): counted
        addi    t0, t0, 1
        sw      t0, V_REJECTED(gp)
2:      ret

finish:
        la      a0, msg_ios
        call    puts
        mv      a0, s2
        call    put_hex
        la      a0, msg_errors
        call    puts
        lw      a0, V_ERRORS(gp)
        call    put_hex
        la      a0, msg_rejected
        call    puts
        lw      a0, V_REJECTED(gp)
        call    put_hex
        lw      t1, V_CONSOLE(gp)
        li      t0, 10
        sw      t0, 0(t1)
        li      a1, 0
        lw      t0, V_ERRORS(gp)
        beqz    t0, 1f
        li      a1, 1
1:      li      a0, HCALL_EXIT
        hcall
        j       1b

no_disk:
        la      a0, msg_no_disk
        j       fail
no_async:
        la      a0, msg_no_async
fail:   call    puts
        li      a1, 2
        li      a0, HCALL_EXIT
        hcall
        j       fail

# find_device(a0 = type) -> a0 = window base (0 if none), a1 = info. Clobbers t0-t2.
find_device:
        li      t0, 0xf0000000
        lw      t1, 4(t0)
        srli    t1, t1, 16
        addi    t0, t0, 16
1:      beqz    t1, 2f
        lw      t2, 0(t0)
        li      a1, 0xffff
        and     t2, t2, a1
        beq     t2, a0, 3f
        addi    t0, t0, 16
        addi    t1, t1, -1
        j       1b
2:      li      a0, 0
        li      a1, 0
        ret
3:      lw      a1, 12(t0)
        lw      a0, 4(t0)
        ret

# read_args() -> a0 = args_buf holding the boot arguments (NUL-terminated). Clobbers t0-t3, a1.
read_args:
        mv      t3, ra
        li      a0, DEV_BOOTARGS
        call    find_device                     # a leaf: t3 survives it
        mv      ra, t3
        la      t0, args_buf
        beqz    a0, 2f
        li      t1, 0                           # the window is word-addressed MMIO: copy words
1:      add     t2, a0, t1
        lw      t2, 0(t2)
        add     a1, t0, t1
        sw      t2, 0(a1)
        addi    t1, t1, 4
        li      t2, ARGS_MAX
        bltu    t1, t2, 1b
2:      mv      a0, t0
        ret

# parse_number(a0 = text) -> a0 past the number, a1 = 1 if a number was read (else 0), a2 = it.
# Skips leading blanks; stops at a non-digit. Clobbers t0-t1.
parse_number:
        li      a1, 0
        li      a2, 0
1:      lbu     t0, 0(a0)
        li      t1, 32
        bne     t0, t1, 2f
        addi    a0, a0, 1
        j       1b
2:      addi    t0, t0, -48
        li      t1, 10
        bgeu    t0, t1, 3f
        mul     a2, a2, t1
        add     a2, a2, t0
        li      a1, 1
        addi    a0, a0, 1
        lbu     t0, 0(a0)
        j       2b
3:      ret

# puts(a0 = NUL-terminated text) to the console. Clobbers t0-t1.
puts:
        lw      t1, V_CONSOLE(gp)
1:      lbu     t0, 0(a0)
        beqz    t0, 2f
        sw      t0, 0(t1)
        addi    a0, a0, 1
        j       1b
2:      ret

# put_hex(a0 = value): 8 hex digits. Clobbers t0-t3.
put_hex:
        lw      t3, V_CONSOLE(gp)
        li      t0, 28
1:      srl     t1, a0, t0
        andi    t1, t1, 0xf
        slti    t2, t1, 10
        bnez    t2, 2f
        addi    t1, t1, 39
2:      addi    t1, t1, 48
        sw      t1, 0(t3)
        addi    t0, t0, -4
        bgez    t0, 1b
        ret

        .data
msg_ios:        .asciz "ios "
msg_errors:     .asciz " errors "
msg_rejected:   .asciz " rejected "
msg_no_disk:    .asciz "random-io: no block device (or it is smaller than one request)\n"
msg_no_async:   .asciz "random-io: the block device is not asynchronous (QUEUE_DEPTH reads 0)\n"
        .align  2
vars:           .word 0, 32, 8, 0, 0, 0, 0, 0   # SLOTS DEPTH SECTORS WRITE_PCT COUNT ERRORS REJECTED CONSOLE
args_buf:       .space ARGS_MAX + 4
