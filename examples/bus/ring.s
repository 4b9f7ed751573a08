# ring.s — the partition bus as a guest sees it (docs/bus.md): the channel device's registers,
# the ring buffers and packet header, and the block protocol spoken over a channel. Included by
# the nanokernel's bus driver (examples/nanokernel/bus.s) and by the storage server
# (examples/bus/storage-server.s). Code only in .text; every routine is a leaf that touches only
# a0-a3 and t0-t3.
#
# A ring is described by a record in the guest's private memory, never by its header alone: the
# header page is shared with the host, so the offset this side owns (the write offset of a ring
# it produces into, the read offset of one it consumes) is kept in the record and only written
# to the header; the other side's offset is read from the header and checked before use.

        .equ    DEV_CHANNEL, 9                  # device type (SPEC §13.1)

        .equ    CH_SELECT, 0x00                 # channel window registers (docs/bus.md)
        .equ    CH_IRQ_STATUS, 0x04
        .equ    CH_IRQ_ENABLE, 0x08
        .equ    CH_SLOTS, 0x0c
        .equ    CH_STATE, 0x10
        .equ    CH_SERVICE, 0x14
        .equ    CH_VERSION, 0x18
        .equ    CH_GRANT_LIST, 0x1c
        .equ    CH_HANDLE, 0x20
        .equ    CH_SEND_PAGES, 0x24
        .equ    CH_COMMAND, 0x28
        .equ    CH_RESULT, 0x2c
        .equ    CH_DOORBELL, 0x30
        .equ    CH_STATE_OFFERED, 1             # STATE values
        .equ    CH_STATE_NEGOTIATED, 2
        .equ    CH_STATE_OPEN, 3
        .equ    CH_STATE_RESCINDED, 4
        .equ    CH_STATE_FAILED, 5
        .equ    CH_SERVICE_BLOCK, 1             # SERVICE bits 15-0
        .equ    CH_SERVICE_BLOCK_SERVER, 2
        .equ    CH_GRANT, 1                     # COMMAND values
        .equ    CH_REVOKE, 2
        .equ    CH_OPEN, 3
        .equ    CH_CLOSE, 4
        .equ    CH_MAX_SLOTS, 32                # IRQ_STATUS has one bit per slot

        .equ    RING_WRITE, 0                   # ring header page
        .equ    RING_READ, 4
        .equ    RING_INTERRUPT_MASK, 8
        .equ    RING_PENDING_SEND, 12
        .equ    RING_HEADER_BYTES, 4096         # the data area starts one page after the header

        .equ    RR_HEADER, 0                    # the private ring record
        .equ    RR_SIZE, 4                      # data bytes: (pages - 1) × 4096
        .equ    RR_OWN, 8                       # this side's offset
        .equ    RR_BYTES, 12

        .equ    BPK_TYPE_OFFSET, 0               # packet header: u16 type | u16 offset8 << 16
        .equ    BPK_LEN_FLAGS, 4                 # u16 len8 | u16 flags << 16
        .equ    BPK_ID_LOW, 8                    # u64 transaction id
        .equ    BPK_ID_HIGH, 12
        .equ    BPK_HEADER_BYTES, 16
        .equ    BPK_OFFSET8, 2                   # the payload starts right after the header

        .equ    BP_REQUEST, 1                   # block protocol: packet types
        .equ    BP_RESPONSE, 2
        .equ    BP_READ, 1                      # request ops
        .equ    BP_WRITE, 2
        .equ    BP_FLUSH, 3
        .equ    BP_GET_INFO, 4                  # response payload: status, 0, sectors, sector bytes
        .equ    BP_OK, 0                        # response status: the block device's BlockStatus
        .equ    BP_BAD_RANGE, 2
        .equ    BP_BAD_COMMAND, 4
        .equ    BP_IO_ERROR, 5
        .equ    BP_REQUEST_BYTES, 32            # header + op, sector, count, 0
        .equ    BP_RESPONSE_BYTES, 24           # header + status, count
        .equ    BP_INFO_BYTES, 32               # header + status, count, sectors, sector bytes
        .equ    BP_SECTOR_BYTES, 512
        .equ    BP_V1_MAX_COUNT, 1              # sectors per request: version 1.0
        .equ    BP_V2_MAX_COUNT, 8              # version 2.0
        .equ    BP_VERSION_1_0, 0x00010000
        .equ    BP_VERSION_2_0, 0x00020000

        .text

# ring_used(a0 = ring record of a ring this side consumes) -> a0 = bytes written and not yet
# read, or -1 when the producer's write offset is not a multiple of 8 inside the data area.
ring_used:
        lw      t0, RR_HEADER(a0)
        lw      t1, RR_SIZE(a0)
        lw      t2, RING_WRITE(t0)
        lw      t3, RR_OWN(a0)
        j       ring_distance

# ring_free(a0 = ring record of a ring this side produces into) -> a0 = bytes that may be written
# now (8 stay free, so that a full ring never looks empty), or -1 when the consumer's read offset
# is not a multiple of 8 inside the data area.
ring_free:
        lw      t0, RR_HEADER(a0)
        lw      t1, RR_SIZE(a0)
        lw      t3, RING_READ(t0)
        lw      t2, RR_OWN(a0)
        andi    t0, t3, 7
        bnez    t0, 9f
        bgeu    t3, t1, 9f
        sub     a0, t2, t3              # used = (write - read) mod size
        bgez    a0, 1f
        add     a0, a0, t1
1:      sub     a0, t1, a0
        addi    a0, a0, -8
        ret
9:      li      a0, -1
        ret

# ring_distance(t1 = size, t2 = the other side's write offset, t3 = own read offset) -> a0 =
# (t2 - t3) mod size, or -1 when t2 is not a multiple of 8 below size.
ring_distance:
        andi    t0, t2, 7
        bnez    t0, 9f
        bgeu    t2, t1, 9f
        sub     a0, t2, t3
        bgez    a0, 1f
        add     a0, a0, t1
1:      ret
9:      li      a0, -1
        ret

# ring_peek(a0 = ring record, a1 = byte offset from the own read offset (< size), a2 =
# destination, a3 = bytes, a multiple of 8): copies without consuming, in at most two pieces
# (to the end of the data area, then from its start).
ring_peek:
        li      t3, 0                   # t3 = 0: ring to memory
        j       ring_copy

# ring_poke(a0 = ring record, a1 = byte offset from the own write offset (< size), a2 = source,
# a3 = bytes, a multiple of 8): copies into the ring without publishing.
ring_poke:
        li      t3, 1                   # t3 = 1: memory to ring

# ring_copy(a0 = ring record, a1 = offset from the own offset, a2 = memory, a3 = bytes, t3 =
# direction): two words per step (offsets and lengths are multiples of 8). Clobbers a0-a3.
ring_copy:
        lw      t0, RR_OWN(a0)
        add     t0, t0, a1
        lw      t1, RR_SIZE(a0)
        bltu    t0, t1, 1f
        sub     t0, t0, t1              # t0 = the first byte's offset in the data area
1:      sub     t2, t1, t0              # t2 = bytes up to the end of the area
        bgeu    a3, t2, 2f
        mv      t2, a3                  # t2 = the first piece
2:      sub     a3, a3, t2              # a3 = the second piece (from offset 0)
        lw      t1, RR_HEADER(a0)
        addi    t1, t1, RING_HEADER_BYTES
        add     a1, t1, t0              # a1 = ring address of the first piece
        add     t2, a2, t2              # t2 = memory end of the first piece
3:      bgeu    a2, t2, 6f              # (a0 is free from here: a second temporary)
        bnez    t3, 5f
4:      lw      t0, 0(a1)
        lw      a0, 4(a1)
        sw      t0, 0(a2)
        sw      a0, 4(a2)
        addi    a1, a1, 8
        addi    a2, a2, 8
        bltu    a2, t2, 4b
        j       6f
5:      lw      t0, 0(a2)
        lw      a0, 4(a2)
        sw      t0, 0(a1)
        sw      a0, 4(a1)
        addi    a1, a1, 8
        addi    a2, a2, 8
        bltu    a2, t2, 5b
6:      beqz    a3, 7f                  # the rest wraps to the start of the area
        mv      a1, t1
        add     t2, a2, a3
        li      a3, 0
        j       3b
7:      ret

# ring_advance(a0 = ring record, a1 = bytes, a multiple of 8 below size, a2 = RING_WRITE for a
# ring this side produces into, RING_READ for one it consumes): moves the own offset on and
# publishes it in the header.
ring_advance:
        lw      t0, RR_OWN(a0)
        add     t0, t0, a1
        lw      t1, RR_SIZE(a0)
        bltu    t0, t1, 1f
        sub     t0, t0, t1
1:      sw      t0, RR_OWN(a0)
        lw      t1, RR_HEADER(a0)
        add     t1, t1, a2
        sw      t0, 0(t1)
        ret

# ring_init(a0 = ring record, a1 = header page, a2 = pages including the header): an empty ring.
ring_init:
        sw      a1, RR_HEADER(a0)
        addi    a2, a2, -1
        slli    a2, a2, 12
        sw      a2, RR_SIZE(a0)
        sw      zero, RR_OWN(a0)
        sw      zero, RING_WRITE(a1)
        sw      zero, RING_READ(a1)
        sw      zero, RING_INTERRUPT_MASK(a1)
        sw      zero, RING_PENDING_SEND(a1)
        ret

# ring_consumer_should_signal(a0 = ring record of a consumed ring) -> a0 = 1 when the producer
# asked (pending_send_size) for space that is now free, else 0.
ring_consumer_should_signal:
        lw      t0, RR_HEADER(a0)
        lw      a1, RING_PENDING_SEND(t0)
        beqz    a1, 8f
        lw      t1, RR_SIZE(a0)
        lw      t2, RING_WRITE(t0)
        lw      t3, RR_OWN(a0)
        mv      a2, t1
        mv      a3, a1
        andi    t0, t2, 7
        bnez    t0, 8f
        bgeu    t2, t1, 8f
        sub     a0, t2, t3
        bgez    a0, 1f
        add     a0, a0, t1
1:      sub     a0, a2, a0              # free for the producer = size - used - 8
        addi    a0, a0, -8
        bltu    a0, a3, 8f
        li      a0, 1
        ret
8:      li      a0, 0
        ret
