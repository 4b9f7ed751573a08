# storage-server.s — a storage VM (docs/bus.md): a bare-metal BV32 guest that serves its BLOCK
# device to a client VM over the partition bus. It waits for a channel slot offered with SERVICE
# = BLOCK_SERVER, proposes versions 2.0 then 1.0, grants the pages of its two rings, opens the
# channel and then loops: takes each request packet from its receive ring, performs it on its
# block device and puts the response in its send ring. Nothing in a packet is trusted: a request
# of another op, too short for what it claims, beyond the client's version (more than one sector
# for a 1.0 client: SERVICE bits 31-16 hold the client's agreed major) or past the disk's end gets
# an error status (BAD_COMMAND, BAD_RANGE) and changes nothing. When the channel closes under it
# (rescinded, failed) it closes its end, revokes its grant and waits for the next offer.
#
# Runs in S mode without paging (RAM is physical), SIE = 0: it waits in wfi with ie.EXTERNAL and
# the device's IRQ_ENABLE set, and polls the rings after each wake-up.
#
#   npx tsx tools/asm examples/bus/storage-server.s

        .include "ring.s"
        .include "../nanokernel/lib.s"

        .equ    HCALL_EXIT, 1
        .equ    HCALL_CONSOLE_WRITE, 2
        .equ    DT_ENTRY_BYTES, 16
        .equ    DEV_BLOCK, 5
        .equ    IE_EXTERNAL, 0x200
        .equ    PAGE_SIZE, 4096
        .equ    BLK_SECTOR_LOW, 0               # block device registers (docs/block-device.md)
        .equ    BLK_SECTOR_HIGH, 4
        .equ    BLK_COUNT, 8
        .equ    BLK_DMA_ADDRESS, 12
        .equ    BLK_COMMAND, 16
        .equ    BLK_STATUS, 20
        .equ    BLK_CAPACITY_LOW, 24
        .equ    BLK_CAPACITY_HIGH, 28
        .equ    BLK_SECTOR_BYTES, 32
        .equ    BLK_STATUS_BUSY, 1
        .equ    SRV_RING_PAGES, 3               # per ring: the header page + 2 data pages
        .equ    SRV_GRANT_PAGES, 2 * SRV_RING_PAGES
        .equ    EXIT_NO_DEVICE, 4               # exit codes
        .equ    EXIT_NO_VERSION, 3
        .equ    STACK_BYTES, 4096

        .text
        .global _start
_start:
        bnez    a0, park                # only vCPU 0 serves
        la      sp, stack_top
        lw      t0, 4(a1)
        srli    t0, t0, 16              # t0 = entries
        addi    t1, a1, 16
1:      beqz    t0, 3f                  # instance 0 of BLOCK -> s1, of CHANNEL -> s0
        lw      t2, 0(t1)
        li      t3, DEV_BLOCK
        bne     t2, t3, 2f
        lw      s1, 4(t1)
2:      li      t3, DEV_CHANNEL
        bne     t2, t3, 21f
        lw      s0, 4(t1)
21:     addi    t1, t1, DT_ENTRY_BYTES
        addi    t0, t0, -1
        j       1b
3:      la      a0, msg_no_block
        beqz    s1, die_no_device
        la      a0, msg_no_channel
        beqz    s0, die_no_device
        lw      t0, BLK_SECTOR_BYTES(s1)
        li      t1, BP_SECTOR_BYTES
        la      a0, msg_sector_size
        bne     t0, t1, die_no_device
        lw      t0, BLK_CAPACITY_LOW(s1)  # sectors, at most 2^32 - 1 (the protocol's sector is u32)
        lw      t1, BLK_CAPACITY_HIGH(s1)
        beqz    t1, 4f
        li      t0, -1
4:      la      t1, srv_sectors
        sw      t0, 0(t1)
        lw      t0, CH_SLOTS(s0)
        li      t1, CH_MAX_SLOTS
        bgeu    t1, t0, 5f
        mv      t0, t1
5:      la      t1, srv_slots
        sw      t0, 0(t1)

# Waits for a slot offered with SERVICE = BLOCK_SERVER, then negotiates, grants and opens.
wait_offer:
        li      t0, -1
        sw      t0, CH_IRQ_STATUS(s0)   # events cleared before looking: a later one ends the wfi
        li      s2, 0                   # s2 = slot
1:      la      t0, srv_slots
        lw      t0, 0(t0)
        bgeu    s2, t0, 3f
        sw      s2, CH_SELECT(s0)
        lw      t0, CH_STATE(s0)
        li      t1, CH_STATE_OFFERED
        bne     t0, t1, 2f
        lw      t0, CH_SERVICE(s0)
        andi    t0, t0, 0xffff
        li      t1, CH_SERVICE_BLOCK_SERVER
        beq     t0, t1, open_channel
2:      addi    s2, s2, 1
        j       1b
3:      call    wait_event
        j       wait_offer

open_channel:
        la      t0, srv_slot
        sw      s2, 0(t0)
        la      s3, srv_versions
1:      lw      t0, 0(s3)
        la      a0, msg_no_version
        beqz    t0, die_no_version
        sw      t0, CH_VERSION(s0)
        lw      t1, CH_VERSION(s0)
        bnez    t1, 2f
        addi    s3, s3, 4
        j       1b
2:      la      t0, srv_version
        sw      t1, 0(t0)
        la      a0, srv_tx
        la      a1, srv_rings
        li      a2, SRV_RING_PAGES
        call    ring_init
        la      a0, srv_rx
        la      a1, srv_rings + SRV_RING_PAGES * PAGE_SIZE
        li      a2, SRV_RING_PAGES
        call    ring_init
        la      t0, srv_page_list
        li      t1, SRV_GRANT_PAGES
        sw      t1, 0(t0)
        la      t2, srv_rings
        li      t3, PAGE_SIZE
3:      addi    t0, t0, 4
        sw      t2, 0(t0)
        add     t2, t2, t3
        addi    t1, t1, -1
        bnez    t1, 3b
        la      t0, srv_page_list
        sw      t0, CH_GRANT_LIST(s0)
        li      t0, CH_GRANT
        sw      t0, CH_COMMAND(s0)
        lw      t0, CH_RESULT(s0)
        la      a0, msg_grant_failed
        bnez    t0, die_result
        lw      t0, CH_HANDLE(s0)
        la      t1, srv_handle
        sw      t0, 0(t1)
        li      t0, SRV_RING_PAGES
        sw      t0, CH_SEND_PAGES(s0)
        li      t0, CH_OPEN
        sw      t0, CH_COMMAND(s0)
        lw      t0, CH_RESULT(s0)
        la      a0, msg_open_failed
        bnez    t0, die_result
        la      a0, srv_line            # "storage: serving N sectors on slot S (version M.m)"
        la      a1, msg_serving
        call    s_fmt_str
        la      a1, srv_sectors
        lw      a1, 0(a1)
        call    s_fmt_dec
        la      a1, msg_on_slot
        call    s_fmt_str
        mv      a1, s2
        call    s_fmt_dec
        la      a1, msg_version
        call    s_fmt_str
        la      a1, srv_version
        lw      a1, 0(a1)
        srli    a1, a1, 16
        call    s_fmt_dec
        li      t0, '.'
        sb      t0, 0(a0)
        addi    a0, a0, 1
        la      a1, srv_version
        lw      a1, 0(a1)
        li      t0, 0xffff
        and     a1, a1, t0
        call    s_fmt_dec
        la      a1, msg_close_paren
        call    s_fmt_str
        call    write_line

# The serving loop: one request at a time, in the order they came.
serve:
        li      t0, -1
        sw      t0, CH_IRQ_STATUS(s0)
        lw      t0, CH_STATE(s0)
        li      t1, CH_STATE_OPEN
        bne     t0, t1, closed
        la      a0, srv_rx
        call    ring_used
        bltz    a0, insane
        li      t0, BPK_HEADER_BYTES
        bgeu    a0, t0, 1f
        call    wait_event
        j       serve
1:      mv      s3, a0                  # s3 = bytes available
        la      a0, srv_rx
        li      a1, 0
        la      a2, srv_req
        li      a3, BPK_HEADER_BYTES
        call    ring_peek
        la      t0, srv_req
        lw      t1, BPK_LEN_FLAGS(t0)
        li      t2, 0xffff
        and     t1, t1, t2
        slli    gp, t1, 3               # gp = the packet's bytes
        li      t2, BPK_HEADER_BYTES
        bltu    gp, t2, insane
        bltu    s3, gp, insane          # longer than what was written
        lw      t1, BPK_TYPE_OFFSET(t0)
        li      t2, BP_REQUEST | BPK_OFFSET8 << 16
        beq     t1, t2, 2f
        la      t0, srv_dropped         # not a request: nothing to answer
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        call    consume
        j       serve
2:      la      t0, srv_requests
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      t0, srv_req             # a short request reads as op 0 (BAD_COMMAND)
        sw      zero, 16(t0)
        sw      zero, 20(t0)
        sw      zero, 24(t0)
        li      t0, BP_REQUEST_BYTES
        bltu    gp, t0, 3f
        la      a0, srv_rx
        li      a1, BPK_HEADER_BYTES
        la      a2, srv_req + BPK_HEADER_BYTES
        li      a3, 16
        call    ring_peek
3:      call    handle_request          # -> a0 = status, a1 = response data bytes (bounce)
        mv      s3, a0
        mv      s2, a1
        call    consume                 # the request's space is free before the answer waits
        mv      a0, s3
        mv      a1, s2
        call    respond
        j       serve

# handle_request(srv_req: the request's header and op, sector, count; gp = its bytes) -> a0 =
# status, a1 = data bytes the response carries from srv_bounce (READ: count × 512; GET_INFO: 8).
handle_request:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      t0, srv_req
        lw      a0, 16(t0)              # op
        lw      a1, 20(t0)              # sector
        lw      a2, 24(t0)              # count
        li      t1, BP_GET_INFO
        bne     a0, t1, 1f
        la      t0, srv_bounce          # GET_INFO: sectors, sector bytes
        la      t1, srv_sectors
        lw      t1, 0(t1)
        sw      t1, 0(t0)
        li      t1, BP_SECTOR_BYTES
        sw      t1, 4(t0)
        li      a0, BP_OK
        li      a1, 8
        j       9f
1:      li      t1, BP_FLUSH
        bne     a0, t1, 2f
        li      a0, BP_FLUSH
        li      a1, 0
        li      a2, 0
        call    block_command
        li      a1, 0
        j       9f
2:      li      t1, BP_READ             # READ and WRITE: the range first
        beq     a0, t1, 3f
        li      t1, BP_WRITE
        bne     a0, t1, 8f
3:      lw      t0, CH_SERVICE(s0)      # the client's major: 2 and later up to 8 sectors, else 1
        srli    t0, t0, 16
        li      t1, BP_V1_MAX_COUNT
        li      t2, 2
        bltu    t0, t2, 4f
        li      t1, BP_V2_MAX_COUNT
4:      beqz    a2, 7f
        bltu    t1, a2, 7f
        add     t0, a1, a2              # sector + count <= sectors, without wrapping around
        bltu    t0, a1, 7f
        la      t1, srv_sectors
        lw      t1, 0(t1)
        bltu    t1, t0, 7f
        li      t1, BP_WRITE
        bne     a0, t1, 5f
        slli    t0, a2, 9               # WRITE: the packet must hold the sectors it claims
        addi    t0, t0, BP_REQUEST_BYTES
        bltu    gp, t0, 8f
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        sw      a2, 12(sp)
        la      a0, srv_rx
        li      a1, BP_REQUEST_BYTES
        la      a2, srv_bounce
        lw      a3, 12(sp)
        slli    a3, a3, 9
        call    ring_peek
        lw      a0, 4(sp)
        lw      a1, 8(sp)
        lw      a2, 12(sp)
        call    block_command
        li      a1, 0
        j       9f
5:      sw      a2, 12(sp)              # READ
        call    block_command
        li      a1, 0
        bnez    a0, 9f
        lw      a1, 12(sp)
        slli    a1, a1, 9
        j       9f
7:      li      a0, BP_BAD_RANGE
        li      a1, 0
        j       9f
8:      li      a0, BP_BAD_COMMAND      # another op, or a request shorter than it claims
        li      a1, 0
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        bnez    a0, 10f
        ret
10:     la      t0, srv_errors
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        ret

# block_command(a0 = command, a1 = sector, a2 = count) -> a0 = the device's STATUS: one command
# on the block device, DMA to or from srv_bounce. A device that completes asynchronously reads
# BUSY until it is done.
block_command:
        sw      a1, BLK_SECTOR_LOW(s1)
        sw      zero, BLK_SECTOR_HIGH(s1)
        sw      a2, BLK_COUNT(s1)
        la      t0, srv_bounce
        sw      t0, BLK_DMA_ADDRESS(s1)
        sw      a0, BLK_COMMAND(s1)
        li      t1, BLK_STATUS_BUSY
1:      lw      a0, BLK_STATUS(s1)
        beq     a0, t1, 1b
        ret

# respond(a0 = status, a1 = data bytes from srv_bounce): the response to srv_req, once the send
# ring has room for it (pending_send_size asks the host to signal when it has).
respond:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        la      t0, srv_resp
        li      t1, BP_RESPONSE | BPK_OFFSET8 << 16
        sw      t1, BPK_TYPE_OFFSET(t0)
        addi    t1, a1, BP_RESPONSE_BYTES
        sw      t1, 12(sp)              # 12(sp) = the packet's bytes
        srli    t1, t1, 3
        sw      t1, BPK_LEN_FLAGS(t0)
        la      t1, srv_req
        lw      t2, BPK_ID_LOW(t1)
        sw      t2, BPK_ID_LOW(t0)
        lw      t2, BPK_ID_HIGH(t1)
        sw      t2, BPK_ID_HIGH(t0)
        sw      a0, 16(t0)
        li      t2, 0                   # count: the sectors done (0 after an error)
        bnez    a0, 1f
        lw      t2, 24(t1)
1:      sw      t2, 20(t0)
2:      li      t0, -1                  # room?
        sw      t0, CH_IRQ_STATUS(s0)
        lw      t0, CH_STATE(s0)
        li      t1, CH_STATE_OPEN
        bne     t0, t1, 8f
        la      a0, srv_tx
        call    ring_free
        bltz    a0, 8f
        lw      t0, 12(sp)
        bgeu    a0, t0, 3f
        la      t1, srv_tx              # too full: ask, look once more, then wait
        lw      t1, RR_HEADER(t1)
        sw      t0, RING_PENDING_SEND(t1)
        la      a0, srv_tx
        call    ring_free
        bltz    a0, 8f
        lw      t0, 12(sp)
        bgeu    a0, t0, 3f
        call    wait_event
        j       2b
3:      la      t1, srv_tx
        lw      t1, RR_HEADER(t1)
        sw      zero, RING_PENDING_SEND(t1)
        la      a0, srv_tx
        li      a1, 0
        la      a2, srv_resp
        li      a3, BP_RESPONSE_BYTES
        call    ring_poke
        lw      a3, 8(sp)
        beqz    a3, 4f
        la      a0, srv_tx
        li      a1, BP_RESPONSE_BYTES
        la      a2, srv_bounce
        call    ring_poke
4:      la      a0, srv_tx
        lw      a1, 12(sp)
        li      a2, RING_WRITE
        call    ring_advance
        la      t0, srv_tx
        lw      t0, RR_HEADER(t0)
        lw      t0, RING_INTERRUPT_MASK(t0)
        bnez    t0, 8f
        sw      zero, CH_DOORBELL(s0)
8:      lw      ra, 0(sp)               # (a channel no longer open: serve finds it closed)
        addi    sp, sp, 16
        ret

# consume(gp = bytes of the packet at the read offset): frees them; rings the doorbell when the
# host waits for that space.
consume:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      a0, srv_rx
        mv      a1, gp
        li      a2, RING_READ
        call    ring_advance
        la      a0, srv_rx
        call    ring_consumer_should_signal
        beqz    a0, 1f
        sw      zero, CH_DOORBELL(s0)
1:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# wait_event(): wfi until the channel device has an event (SIE = 0: no trap is taken).
wait_event:
        li      t0, 1
        sw      t0, CH_IRQ_ENABLE(s0)
        li      t0, IE_EXTERNAL
        csrw    ie, t0
        wfi
        csrw    ie, zero
        sw      zero, CH_IRQ_ENABLE(s0)
        ret

# The host wrote offsets or lengths that make no sense: this end is closed (the host's log says
# more), then the server waits for a new offer.
insane:
        la      a0, msg_insane
        call    write_string
# The channel is no longer open (rescinded, failed) or was given up: close, revoke, wait again.
closed:
        la      t0, srv_slot
        lw      t0, 0(t0)
        sw      t0, CH_SELECT(s0)
        li      t0, CH_CLOSE
        sw      t0, CH_COMMAND(s0)
        la      t0, srv_handle
        lw      t0, 0(t0)
        sw      t0, CH_HANDLE(s0)
        li      t0, CH_REVOKE
        sw      t0, CH_COMMAND(s0)
        la      a0, msg_closed
        call    write_string
        j       wait_offer

die_no_device:
        call    write_string
        li      a1, EXIT_NO_DEVICE
        j       die
die_no_version:
        call    write_string
        li      a1, EXIT_NO_VERSION
        j       die
die_result:                             # a0 = message; the RESULT register says why
        call    write_string
        lw      a1, CH_RESULT(s0)
        addi    a1, a1, 16
die:    li      a0, HCALL_EXIT
        hcall
park:   csrw    ie, zero
1:      wfi
        j       1b

# write_string(a0 = NUL-terminated string) to the console
write_string:
        mv      a1, a0
        mv      a2, a0
1:      lbu     t0, 0(a2)
        beqz    t0, 2f
        addi    a2, a2, 1
        j       1b
2:      sub     a2, a2, a1
        li      a0, HCALL_CONSOLE_WRITE
        hcall
        ret

# write_line(a0 = end of the text in srv_line): it, and a newline
write_line:
        li      t0, '\n'
        sb      t0, 0(a0)
        addi    a2, a0, 1
        la      a1, srv_line
        sub     a2, a2, a1
        li      a0, HCALL_CONSOLE_WRITE
        hcall
        ret

        STRLIB  s_

        .data
msg_no_block:           .asciz "storage: no block device\n"
msg_no_channel:         .asciz "storage: no channel device\n"
msg_sector_size:        .asciz "storage: the disk's sectors are not 512 bytes\n"
msg_no_version:         .asciz "storage: the host takes no version this server speaks\n"
msg_grant_failed:       .asciz "storage: GRANT refused\n"
msg_open_failed:        .asciz "storage: OPEN refused\n"
msg_serving:            .asciz "storage: serving "
msg_on_slot:            .asciz " sectors on slot "
msg_version:            .asciz " (version "
msg_close_paren:        .asciz ")"
msg_insane:             .asciz "storage: the receive ring's offsets make no sense\n"
msg_closed:             .asciz "storage: channel closed, waiting for an offer\n"

        .align  2
srv_versions:           .word BP_VERSION_2_0, BP_VERSION_1_0, 0     # newest first, 0 ends
srv_sectors:            .word 0         # the disk's size (at most 2^32 - 1)
srv_slots:              .word 0
srv_slot:               .word 0
srv_version:            .word 0         # this end's agreed version
srv_handle:             .word 0
srv_requests:           .word 0         # request packets taken
srv_errors:             .word 0         # answered with an error status
srv_dropped:            .word 0         # packets that were no request: dropped unanswered
srv_tx:                 .space RR_BYTES # send ring (responses)
srv_rx:                 .space RR_BYTES # receive ring (requests)
srv_req:                .space BP_REQUEST_BYTES
srv_resp:               .space BP_RESPONSE_BYTES
srv_line:               .space 96

        .bss
        .align  12
srv_page_list:          .space PAGE_SIZE
srv_rings:              .space SRV_GRANT_PAGES * PAGE_SIZE
srv_bounce:             .space BP_V2_MAX_COUNT * BP_SECTOR_BYTES
stack:                  .space STACK_BYTES
stack_top:
