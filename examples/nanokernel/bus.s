# bus.s — the partition-bus driver and the block client over it (docs/nanokernel.md, the bus:
# docs/bus.md).
#
# When the device table has no BLOCK device but a CHANNEL device offers a slot with SERVICE =
# BLOCK, disk_probe (disk.s) calls bus_probe: it proposes the versions of bus_versions newest
# first, grants the pages of its two rings (kernel memory, mapped 1:1, so the kernel's address
# is the physical one), opens the channel, asks the server for the disk's size (GET_INFO) and
# records the disk for disk.s. From then on disk_transfer hands every transfer to
# bus_disk_transfer, which sends request packets and waits for each response, so the disk
# system calls and the page cache work unchanged above it. One request is in flight at a time;
# version 1.0 moves one sector per request, 2.0 up to eight.
#
# Waiting: the kernel runs with SIE = 0, so it enables the device's interrupt (IRQ_ENABLE) and
# ie.EXTERNAL only around a wfi, which then returns (no trap is taken) once the host has put a
# packet in the receive ring, freed send-ring space the driver asked for (pending_send_size) or
# changed the slot's state. The event bits are cleared before each check, so an event between
# the check and the wfi makes the wfi return at once.

        .include "../bus/ring.s"

        # The first entry of bus_versions the driver proposes: 0 = 2.0, then 1.0; 1 = 1.0 only
        # (tests build a kernel that speaks only 1.0 by changing this line).
        .equ    BUS_FIRST_VERSION, 0
        .equ    BUS_RING_PAGES, 3               # per ring: the header page + 2 data pages
        .equ    BUS_GRANT_PAGES, 2 * BUS_RING_PAGES

        .text

# bus_probe(a0 = device table): finds the CHANNEL device and its first slot offered with SERVICE
# = BLOCK, negotiates, grants, opens and reads the disk's size; then disk_base (the channel's
# window), disk_sectors and disk_on_bus describe the disk and it prints
# "[kernel] disk: N sectors of 512 bytes (bus, version 2.0)". Without such a slot: nothing.
bus_probe:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        li      a1, DEV_CHANNEL
        call    find_device
        beqz    a0, 9f
        lw      s0, 4(a0)               # s0 = the window
        mv      a0, s0
        la      a1, kernel_root
        call    map_mmio_superpage
        lw      s1, CH_SLOTS(s0)        # s1 = slots (at most one per IRQ_STATUS bit)
        li      t0, CH_MAX_SLOTS
        bgeu    t0, s1, 1f
        mv      s1, t0
1:      li      s2, 0                   # s2 = slot
2:      bgeu    s2, s1, 9f              # no block offer: no disk
        sw      s2, CH_SELECT(s0)
        lw      t0, CH_STATE(s0)
        li      t1, CH_STATE_OFFERED
        bne     t0, t1, 3f
        lw      t0, CH_SERVICE(s0)
        andi    t0, t0, 0xffff
        li      t1, CH_SERVICE_BLOCK
        beq     t0, t1, 4f
3:      addi    s2, s2, 1
        j       2b
4:      la      t0, bus_base
        sw      s0, 0(t0)
        la      s1, bus_versions        # propose, newest first; the first the host takes wins
        addi    s1, s1, BUS_FIRST_VERSION * 4
5:      lw      t0, 0(s1)
        beqz    t0, 7f                  # none taken
        sw      t0, CH_VERSION(s0)
        lw      t1, CH_VERSION(s0)
        bnez    t1, 6f
        addi    s1, s1, 4
        j       5b
6:      la      t0, bus_version
        sw      t1, 0(t0)
        srli    t1, t1, 16              # major 1: one sector per request; 2 and later: eight
        li      t2, BP_V1_MAX_COUNT
        li      t3, 2
        bltu    t1, t3, 61f
        li      t2, BP_V2_MAX_COUNT
61:     la      t0, bus_max_count
        sw      t2, 0(t0)
        la      a0, bus_tx              # both rings empty, then the page list: send ring first
        la      a1, bus_rings
        li      a2, BUS_RING_PAGES
        call    ring_init
        la      a0, bus_rx
        la      a1, bus_rings + BUS_RING_PAGES * PAGE_SIZE
        li      a2, BUS_RING_PAGES
        call    ring_init
        la      t0, bus_page_list
        li      t1, BUS_GRANT_PAGES
        sw      t1, 0(t0)
        la      t2, bus_rings
        li      t3, PAGE_SIZE
62:     addi    t0, t0, 4
        sw      t2, 0(t0)
        add     t2, t2, t3
        addi    t1, t1, -1
        bnez    t1, 62b
        la      t0, bus_page_list
        sw      t0, CH_GRANT_LIST(s0)
        li      t0, CH_GRANT
        sw      t0, CH_COMMAND(s0)
        lw      t0, CH_RESULT(s0)
        bnez    t0, 8f
        li      t0, BUS_RING_PAGES      # HANDLE holds the new grant
        sw      t0, CH_SEND_PAGES(s0)
        li      t0, CH_OPEN
        sw      t0, CH_COMMAND(s0)
        lw      t0, CH_RESULT(s0)
        bnez    t0, 8f
        li      a0, BP_GET_INFO         # the disk's size
        li      a1, 0
        li      a2, 0
        li      a3, 0
        call    bus_request
        bnez    a0, 8f
        la      t0, bus_info
        lw      t1, 4(t0)               # sector bytes
        li      t2, DISK_SECTOR_BYTES
        bne     t1, t2, 8f
        lw      t1, 0(t0)               # sectors
        beqz    t1, 8f
        la      t0, disk_sectors
        sw      t1, 0(t0)
        la      t0, disk_base           # a disk: disk.s's checks see a non-zero base
        sw      s0, 0(t0)
        la      t0, disk_on_bus
        li      t1, 1
        sw      t1, 0(t0)
        la      a0, msg_disk            # "[kernel] disk: N sectors of 512 bytes (bus, version 2.0)"
        call    kputs
        la      t0, disk_sectors
        lw      a0, 0(t0)
        call    kput_dec
        la      a0, msg_bus_disk
        call    kputs
        la      t0, bus_version
        lw      a0, 0(t0)
        srli    a0, a0, 16
        call    kput_dec
        la      a0, msg_bus_dot
        call    kputs
        la      t0, bus_version
        lw      a0, 0(t0)
        li      t1, 0xffff
        and     a0, a0, t1
        call    kput_dec
        la      a0, msg_bus_close
        call    kputs
        j       9f
7:      la      a0, msg_bus_no_version  # the offer stays; there is no disk
        call    kputs
        j       9f
8:      la      a0, msg_bus_failed      # negotiated but unusable: no disk
        call    kputs
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        addi    sp, sp, 16
        ret

# bus_disk_transfer(a0 = first sector, a1 = command (BLK_READ, BLK_WRITE, BLK_FLUSH), a2 =
# sectors, a3 = physical address) -> a0 = 0, -EINVAL (the server's BAD_RANGE) or -EIO: the
# contract of disk_transfer, in requests of at most bus_max_count sectors. Clobbers t0-t3, a1-a3.
bus_disk_transfer:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        sw      gp, 20(sp)
        mv      s0, a0                  # s0 = sector
        mv      gp, a1                  # gp = command (the block commands are the protocol's ops)
        mv      s1, a2                  # s1 = sectors left
        mv      s2, a3                  # s2 = address
        li      t0, BLK_FLUSH
        bne     a1, t0, 1f
        mv      a0, gp                  # a flush: one request without sectors
        li      a1, 0
        li      a2, 0
        call    bus_request
        j       9f
1:      li      a0, EINVAL              # no sectors: the device's BAD_RANGE
        beqz    s1, 9f
2:      la      t0, bus_max_count
        lw      s3, 0(t0)               # s3 = sectors in this request
        bgeu    s1, s3, 3f
        mv      s3, s1
3:      mv      a0, gp
        mv      a1, s0
        mv      a2, s3
        mv      a3, s2
        call    bus_request
        bnez    a0, 9f
        add     s0, s0, s3
        sub     s1, s1, s3
        slli    t0, s3, 9
        add     s2, s2, t0
        bnez    s1, 2b
        li      a0, 0
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        lw      gp, 20(sp)
        addi    sp, sp, 32
        ret

# bus_request(a0 = op, a1 = sector, a2 = sectors, a3 = address): sends one request and waits for
# its response -> a0 = 0, -EINVAL (status BAD_RANGE) or -EIO (another status, a malformed
# response, the channel no longer open). READ fills the address; GET_INFO fills bus_info.
bus_request:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        sw      gp, 20(sp)
        mv      s1, a0                  # s1 = op
        mv      s2, a2                  # s2 = sectors
        mv      s3, a3                  # s3 = address
        la      s0, bus_msg             # the request: header, then op, sector, count, 0
        li      t0, BP_REQUEST | BPK_OFFSET8 << 16
        sw      t0, BPK_TYPE_OFFSET(s0)
        li      gp, BP_REQUEST_BYTES    # gp = the packet's bytes
        li      t0, BP_WRITE
        bne     s1, t0, 1f
        slli    t0, s2, 9
        add     gp, gp, t0
1:      srli    t0, gp, 3
        sw      t0, BPK_LEN_FLAGS(s0)
        la      t0, bus_next_id
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        sw      t1, BPK_ID_LOW(s0)
        sw      zero, BPK_ID_HIGH(s0)
        sw      s1, 16(s0)
        sw      a1, 20(s0)
        sw      s2, 24(s0)
        sw      zero, 28(s0)
        mv      a0, gp                  # room for all of it
        call    bus_reserve
        bnez    a0, 9f
        la      a0, bus_tx
        li      a1, 0
        mv      a2, s0
        li      a3, BP_REQUEST_BYTES
        call    ring_poke
        li      t0, BP_WRITE
        bne     s1, t0, 2f
        la      a0, bus_tx              # a write's sectors follow
        li      a1, BP_REQUEST_BYTES
        mv      a2, s3
        slli    a3, s2, 9
        call    ring_poke
2:      la      a0, bus_tx
        mv      a1, gp
        li      a2, RING_WRITE
        call    ring_advance            # published: the host may take it from now on
        call    bus_doorbell_tx
3:      call    bus_receive             # a0 = bytes in the receive ring (at least a header)
        bltz    a0, 9f
        mv      gp, a0                  # gp = bytes available
        la      a0, bus_rx
        li      a1, 0
        la      a2, bus_resp
        li      a3, BPK_HEADER_BYTES
        call    ring_peek
        la      t0, bus_resp            # check the header against what is really there
        lw      t1, BPK_LEN_FLAGS(t0)
        li      t2, 0xffff
        and     t1, t1, t2
        slli    t1, t1, 3               # t1 = the packet's bytes
        bltu    gp, t1, 8f              # longer than what was written: the ring is not sane
        li      t2, BPK_HEADER_BYTES
        bltu    t1, t2, 8f
        mv      gp, t1                  # gp = the packet's bytes from now on
        lw      t1, BPK_TYPE_OFFSET(t0)
        li      t2, BP_RESPONSE | BPK_OFFSET8 << 16
        bne     t1, t2, 5f              # not a response as this driver knows it: dropped
        lw      t1, BPK_ID_LOW(t0)
        la      t2, bus_next_id
        lw      t2, 0(t2)
        bne     t1, t2, 5f              # an older request's: dropped
        lw      t1, BPK_ID_HIGH(t0)
        bnez    t1, 5f
        li      t2, BP_RESPONSE_BYTES   # its answer, but too short to hold one
        bltu    gp, t2, 7f
        la      a0, bus_rx              # status, count
        li      a1, BPK_HEADER_BYTES
        la      a2, bus_resp + BPK_HEADER_BYTES
        li      a3, 8
        call    ring_peek
        la      t0, bus_resp
        lw      t1, BPK_HEADER_BYTES(t0) # t1 = status
        bnez    t1, 6f
        li      t0, BP_READ
        beq     s1, t0, 4f
        li      t0, BP_GET_INFO
        bne     s1, t0, 6f
        li      t0, BP_INFO_BYTES       # GET_INFO: sectors, sector bytes
        bltu    gp, t0, 7f
        la      a0, bus_rx
        li      a1, BP_RESPONSE_BYTES
        la      a2, bus_info
        li      a3, 8
        call    ring_peek
        li      t1, 0
        j       6f
4:      la      t0, bus_resp            # READ: exactly the sectors asked for
        lw      t0, BPK_HEADER_BYTES + 4(t0)
        bne     t0, s2, 7f
        slli    t0, s2, 9
        addi    t0, t0, BP_RESPONSE_BYTES
        bltu    gp, t0, 7f
        la      a0, bus_rx
        li      a1, BP_RESPONSE_BYTES
        mv      a2, s3
        slli    a3, s2, 9
        call    ring_peek
        li      t1, 0
        j       6f
5:      call    bus_consume             # someone else's packet: skip it, wait on
        j       3b
6:      mv      s0, t1                  # s0 = status: consume, then answer
        call    bus_consume
        li      a0, 0
        beqz    s0, 9f
        li      a0, EINVAL
        li      t0, BP_BAD_RANGE
        beq     s0, t0, 9f
        li      a0, EIO
        j       9f
7:      li      t1, BP_IO_ERROR         # a response that does not fit its request
        j       6b
8:      li      a0, EIO                 # nonsense offsets or lengths: nothing more is read
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        lw      gp, 20(sp)
        addi    sp, sp, 32
        ret

# bus_consume(gp = bytes of the packet at the read offset): frees them, and rings the doorbell
# when the host waits for that space (pending_send_size). Clobbers a0-a3, t0-t3.
bus_consume:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      a0, bus_rx
        mv      a1, gp
        li      a2, RING_READ
        call    ring_advance
        la      a0, bus_rx
        call    ring_consumer_should_signal
        beqz    a0, 1f
        la      t0, bus_base
        lw      t0, 0(t0)
        sw      zero, CH_DOORBELL(t0)
1:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# bus_doorbell_tx(): tells the host the send ring has data, unless it asked not to be signalled
# (the send ring's interrupt_mask: it is polling).
bus_doorbell_tx:
        la      t0, bus_tx
        lw      t0, RR_HEADER(t0)
        lw      t0, RING_INTERRUPT_MASK(t0)
        bnez    t0, 1f
        la      t0, bus_base
        lw      t0, 0(t0)
        sw      zero, CH_DOORBELL(t0)
1:      ret

# bus_reserve(a0 = bytes) -> a0 = 0 once that much of the send ring is free, or -EIO when the
# channel is no longer open or the host's read offset is not sane. While the ring is too full it
# sets pending_send_size, so that the host signals once it has freed enough, and waits.
bus_reserve:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        mv      s0, a0                  # s0 = bytes needed
1:      call    bus_clear_events
        bnez    a0, 8f
        la      a0, bus_tx
        call    ring_free
        bltz    a0, 8f
        bgeu    a0, s0, 3f
        la      t0, bus_tx              # too full: ask, look once more, then wait
        lw      t0, RR_HEADER(t0)
        sw      s0, RING_PENDING_SEND(t0)
        la      a0, bus_tx
        call    ring_free
        bltz    a0, 8f
        bgeu    a0, s0, 3f
        call    bus_wait
        j       1b
3:      la      t0, bus_tx
        lw      t0, RR_HEADER(t0)
        sw      zero, RING_PENDING_SEND(t0)
        li      a0, 0
        j       9f
8:      li      a0, EIO
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# bus_receive() -> a0 = bytes in the receive ring once there is at least a packet header, or
# -EIO when the channel is no longer open or the host's write offset is not sane.
bus_receive:
        addi    sp, sp, -16
        sw      ra, 0(sp)
1:      call    bus_clear_events
        bnez    a0, 8f
        la      a0, bus_rx
        call    ring_used
        bltz    a0, 8f
        li      t0, BPK_HEADER_BYTES
        bgeu    a0, t0, 9f
        call    bus_wait
        j       1b
8:      li      a0, EIO
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# bus_clear_events() -> a0 = 0 while the channel is open, else 1. Clears every event bit first
# (this driver uses one slot; the others' events need no answer), so that an event after the
# caller's next check ends its wfi at once.
bus_clear_events:
        la      t0, bus_base
        lw      t0, 0(t0)
        li      t1, -1
        sw      t1, CH_IRQ_STATUS(t0)
        lw      t1, CH_STATE(t0)
        li      a0, 0
        li      t2, CH_STATE_OPEN
        beq     t1, t2, 1f
        li      a0, 1
1:      ret

# bus_wait(): waits in wfi for the channel's interrupt (SIE stays 0: wfi returns, no trap is
# taken); ie and IRQ_ENABLE are as before afterwards.
bus_wait:
        la      t0, bus_base
        lw      t0, 0(t0)
        li      t1, 1
        sw      t1, CH_IRQ_ENABLE(t0)
        li      t1, IE_EXTERNAL
        csrrw   t1, ie, t1
        wfi
        csrw    ie, t1
        sw      zero, CH_IRQ_ENABLE(t0)
        la      t0, stat_bus_waits
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        ret

        .data
msg_bus_disk:           .asciz " sectors of 512 bytes (bus, version "
msg_bus_dot:            .asciz "."
msg_bus_close:          .asciz ")\n"
msg_bus_no_version:     .asciz "[kernel] disk: not used, the bus offers no version this driver speaks\n"
msg_bus_failed:         .asciz "[kernel] disk: not used, the bus channel could not be opened\n"

        .align  2
bus_versions:           .word BP_VERSION_2_0, BP_VERSION_1_0, 0     # newest first, 0 ends
disk_on_bus:            .word 0         # 1: disk_transfer goes to bus_disk_transfer
bus_base:               .word 0         # the channel window; SELECT stays on the disk's slot
bus_version:            .word 0         # the agreed version
bus_max_count:          .word 0         # sectors per request it allows
bus_next_id:            .word 0         # the last request's transaction id
bus_info:               .word 0, 0      # GET_INFO: sectors, sector bytes
stat_bus_waits:         .word 0         # wfi in bus_wait
bus_tx:                 .space RR_BYTES # send ring (guest to host)
bus_rx:                 .space RR_BYTES # receive ring
bus_msg:                .space BP_REQUEST_BYTES
bus_resp:               .space BP_RESPONSE_BYTES

        .bss
        .align  12
bus_page_list:          .space PAGE_SIZE
bus_rings:              .space BUS_GRANT_PAGES * PAGE_SIZE
