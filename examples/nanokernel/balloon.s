# balloon.s — the balloon driver (docs/nanokernel.md, "The balloon"; the device: docs/balloon.md).
#
# Optional: without a BALLOON device in the device table the driver does nothing at all. With
# one, the scheduler's timer tick (and each wake-up of the idle kernel) calls balloon_tick, which
# reads TARGET and compares it with the pages the driver holds (mem_balloon); when they differ it
# inflates or deflates by at most BALLOON_RATE pages, then sends statistics when STATS_SEQ moved.
#
# The ballooned pages are listed in node pages laid out like the free pool's (mm.s: next, count,
# entries): a node's entries array is the INFLATE and DEFLATE command array itself, so no page
# number is ever copied. Node pages are kernel pages. Inflating takes free frames above a small
# reserve (BALLOON_RESERVE), then clean page-cache pages; it never takes process memory.
# Deflating pops the newest pages and returns them to the free pool (they read zero).
#
# Deflate on OOM: when alloc_frame has neither a free frame nor a cache page for process memory,
# it asks balloon_oom_deflate, which gives back BALLOON_OOM_PAGES (or all the balloon holds)
# when FEATURES has DEFLATE_ON_OOM; otherwise the process is OOM-killed as before.
# Free-page reporting: with FEATURES.FREE_PAGE_REPORTING, report_free_pages hands every free-pool
# entry not yet reported to the host (REPORT_FREE) when a process ends and when sbrk shrinks a
# heap; those frames are never touched while free (and are zeroed when handed out again, as
# every recycled frame is).

        .equ    DEV_BALLOON, 6
        .equ    BLN_TARGET, 0x00                # registers
        .equ    BLN_ACTUAL, 0x04
        .equ    BLN_PFN_ADDR, 0x08
        .equ    BLN_PFN_COUNT, 0x0c
        .equ    BLN_COMMAND, 0x10
        .equ    BLN_STATUS, 0x14
        .equ    BLN_FEATURES, 0x18
        .equ    BLN_STATS_SEQ, 0x1c
        .equ    BLN_INFLATE, 1                  # commands
        .equ    BLN_DEFLATE, 2
        .equ    BLN_REPORT_FREE, 3
        .equ    BLN_STATS, 4
        .equ    BLN_DEFLATE_ON_OOM, 1           # FEATURES bits
        .equ    BLN_FREE_PAGE_REPORTING, 2
        .equ    BLN_WANTS_STATS, 4
        .equ    BALLOON_RATE, 1024              # pages inflated or deflated per tick, at most
        .equ    BALLOON_IDLE_RATE, 16384        # the same when the kernel is idle (nothing runnable)
        .equ    BALLOON_RESERVE, 32             # free pages inflating leaves to the processes
        .equ    BALLOON_OOM_PAGES, 256          # pages one deflate-on-OOM gives back
        .equ    BALLOON_STAT_PAIRS, 12          # tags 0-11

        .text

# balloon_probe(a0 = device table): finds instance 0 of BALLOON, maps its window's superpage and
# prints "[kernel] balloon: up to 1024 pages per tick". Without one: nothing.
balloon_probe:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        li      a1, DEV_BALLOON
        call    find_device
        beqz    a0, 9f
        lw      s0, 4(a0)               # the window
        mv      a0, s0
        la      a1, kernel_root
        call    map_mmio_superpage
        la      t0, balloon_base
        sw      s0, 0(t0)
        la      a0, msg_balloon
        call    kputs
        li      a0, BALLOON_RATE
        call    kput_dec
        la      a0, msg_balloon_rate
        call    kputs
9:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# balloon_command(a0 = command, a1 = array address, a2 = entries) -> a0 = STATUS (0: done).
# Clobbers t0.
balloon_command:
        la      t0, balloon_base
        lw      t0, 0(t0)
        sw      a1, BLN_PFN_ADDR(t0)
        sw      a2, BLN_PFN_COUNT(t0)
        sw      a0, BLN_COMMAND(t0)     # carried out before the store retires
        lw      a0, BLN_STATUS(t0)
        ret

# balloon_tick(a0 = pages it may move): called on every timer tick. When nothing changed it costs
# two MMIO reads (TARGET, STATS_SEQ) and two compares. Preserves s0-s3.
balloon_tick:
        mv      a1, a0                  # a1 = the rate
        la      t0, balloon_base
        lw      t0, 0(t0)
        beqz    t0, 9f
        lw      t1, BLN_TARGET(t0)
        la      t2, mem_balloon
        lw      t2, 0(t2)
        bne     t1, t2, 1f
        lw      t1, BLN_STATS_SEQ(t0)
        la      t2, balloon_seq
        lw      t2, 0(t2)
        bne     t1, t2, 1f
9:      ret
1:      addi    sp, sp, -16
        sw      ra, 0(sp)
        lw      t1, BLN_TARGET(t0)
        la      t2, mem_balloon
        lw      t2, 0(t2)
        beq     t1, t2, 4f
        bltu    t1, t2, 3f
        sub     a0, t1, t2              # inflate by min(target - balloon, rate)
        bgeu    a1, a0, 2f
        mv      a0, a1
2:      call    balloon_inflate
        j       4f
3:      sub     a0, t2, t1              # deflate by min(balloon - target, rate)
        bgeu    a1, a0, 31f
        mv      a0, a1
31:     call    balloon_deflate
4:      la      t0, balloon_base        # statistics, when the host asked for fresh ones
        lw      t0, 0(t0)
        beqz    t0, 5f                  # (the driver stopped)
        lw      t1, BLN_STATS_SEQ(t0)
        la      t2, balloon_seq
        lw      t3, 0(t2)
        beq     t1, t3, 5f
        sw      t1, 0(t2)
        call    balloon_send_stats
5:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# balloon_take_page() -> a0 = a frame for the balloon (or a balloon node), out of its class: a
# free frame while more than BALLOON_RESERVE are free, else a page-cache page, else 0.
# Clobbers t0-t3, a1.
balloon_take_page:
        la      t0, mem_free
        lw      t0, 0(t0)
        li      t1, BALLOON_RESERVE
        bgeu    t1, t0, 1f
        j       take_free_frame
1:      la      t0, mem_cache
        lw      t0, 0(t0)
        li      a0, 0
        beqz    t0, 2f
        j       cache_evict
2:      ret

# balloon_inflate(a0 = pages wanted) -> a0 = pages put into the balloon (fewer when memory ran
# short). Batches of at most one node's free entries, one INFLATE each. Free frames are taken
# many at a time (the free pool's top node's last entries, or never-used frames: the pages
# take_free_frame would give, 4-5 instructions a page), page-cache pages one by one. Preserves s0-s3.
balloon_inflate:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s0, a0                  # s0 = pages still wanted
        li      s1, 0                   # s1 = pages inflated
1:      beqz    s0, 8f
        la      t0, balloon_head
        lw      s2, 0(t0)               # s2 = the top node
        beqz    s2, 2f
        lw      t1, FN_COUNT(s2)
        li      t2, FN_CAPACITY
        bltu    t1, t2, 3f
2:      call    balloon_take_page       # a new node (a kernel page)
        beqz    a0, 8f
        mv      s2, a0
        la      t0, balloon_head
        lw      t1, 0(t0)
        sw      t1, FN_NEXT(s2)
        sw      zero, FN_COUNT(s2)
        sw      zero, FN_REPORTED(s2)
        sw      s2, 0(t0)
        la      t0, mem_kernel
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
3:      lw      t1, FN_COUNT(s2)        # the batch: min(wanted, room in the node)
        li      t2, FN_CAPACITY
        sub     t2, t2, t1
        bgeu    s0, t2, 4f
        mv      t2, s0
4:      sw      t2, 20(sp)              # 20(sp) = pages still to take for this batch
        slli    t1, t1, 2
        add     s3, s2, t1
        addi    s3, s3, FN_ENTRIES      # s3 = where the next page number goes
        sw      s3, 24(sp)              # 24(sp) = the batch's array
5:      lw      t0, 20(sp)
        beqz    t0, 6f
        la      t3, mem_free            # many pages at once, the ones take_free_frame would give
        lw      a0, 0(t3)
        addi    a0, a0, -BALLOON_RESERVE
        bge     zero, a0, 55f           # none above the reserve: page by page (the page cache)
        bgeu    t0, a0, 50f
        mv      a0, t0                  # a0 = min(still to take, free above the reserve)
50:     la      t1, free_head
        lw      t1, 0(t1)               # t1 = the free pool's top node (0: none)
        beqz    t1, 51f
        lw      t2, FN_COUNT(t1)        # t2 = its entries
        beqz    t2, 55f                 # (an empty node: its own page goes, page by page)
        bgeu    t2, a0, 52f
        mv      a0, t2                  # a0 = n = min(a0, its entries)
        j       52f
51:     la      t2, frame_next          # no pool: frames never used since power-on
        lw      t2, 0(t2)
        la      a1, frame_limit
        lw      a1, 0(a1)
        bgeu    t2, a1, 55f
        sub     a1, a1, t2
        srli    a1, a1, PAGE_SHIFT      # a1 = frames left there
        beqz    a1, 55f
        bgeu    a1, a0, 52f
        mv      a0, a1                  # a0 = n = min(a0, frames left)
52:     sub     t0, t0, a0
        sw      t0, 20(sp)
        lw      a1, 0(t3)
        sub     a1, a1, a0
        sw      a1, 0(t3)               # the free count drops by n
        beqz    t1, 57f
        sub     t2, t2, a0              # from the pool's node:
        sw      t2, FN_COUNT(t1)
        lw      a1, FN_REPORTED(t1)
        bgeu    t2, a1, 53f
        sw      t2, FN_REPORTED(t1)     # reported entries taken: the mark comes down with them
53:     slli    t2, t2, 2
        add     t2, t1, t2              # t2 = where the node's remaining entries end
        slli    a0, a0, 2
        add     a0, t2, a0              # a0 = where they ended: its last n entries, top down
54:     lw      a1, FN_ENTRIES - 4(a0)  # 5 instructions a page
        sw      a1, 0(s3)
        addi    s3, s3, 4
        addi    a0, a0, -4
        bne     a0, t2, 54b
        j       5b
57:     slli    a1, a0, PAGE_SHIFT      # never-used frames: frame_next moves past them
        add     a1, t2, a1
        la      t1, frame_next
        sw      a1, 0(t1)
        srli    t2, t2, PAGE_SHIFT      # t2 = the first one's page number
        slli    a0, a0, 2
        add     a0, s3, a0              # a0 = where the batch's array ends
58:     sw      t2, 0(s3)               # 4 instructions a page
        addi    t2, t2, 1
        addi    s3, s3, 4
        bne     s3, a0, 58b
        j       5b
55:     call    balloon_take_page
        beqz    a0, 6f
        srli    a0, a0, PAGE_SHIFT
        sw      a0, 0(s3)
        addi    s3, s3, 4
        lw      t0, 20(sp)
        addi    t0, t0, -1
        sw      t0, 20(sp)
        j       5b
6:      lw      a1, 24(sp)
        sub     a2, s3, a1
        srli    a2, a2, 2               # a2 = pages taken
        beqz    a2, 8f
        sw      a2, 28(sp)
        li      a0, BLN_INFLATE
        call    balloon_command
        bnez    a0, balloon_refused
        lw      a2, 28(sp)
        lw      t1, FN_COUNT(s2)
        add     t1, t1, a2
        sw      t1, FN_COUNT(s2)
        la      t0, mem_balloon
        lw      t1, 0(t0)
        add     t1, t1, a2
        sw      t1, 0(t0)
        add     s1, s1, a2
        sub     s0, s0, a2
        lw      t0, 20(sp)
        beqz    t0, 1b                  # the batch was filled: go on
8:      call    balloon_drop_empty_nodes
        la      t0, stat_balloon_inflated
        lw      t1, 0(t0)
        add     t1, t1, s1
        sw      t1, 0(t0)
        mv      a0, s1
        lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

# balloon_refused: the device refused a command (it has stopped the VM with a guest error: a
# driver bug). Say so and power off as a panic would.
balloon_refused:
        la      sp, kstack_top
        la      a0, msg_balloon_refused
        call    kputs
        li      a0, EXIT_PANIC
        j       power_off

# balloon_deflate(a0 = pages) -> a0 = pages taken out of the balloon (fewer when it holds fewer),
# newest first; they go back to the free pool. Preserves s0-s3.
balloon_deflate:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s0, a0                  # s0 = pages still to deflate
        li      s1, 0                   # s1 = pages deflated
1:      beqz    s0, 8f
        call    balloon_drop_empty_nodes
        la      t0, balloon_head
        lw      s2, 0(t0)               # s2 = the top node (not empty)
        beqz    s2, 8f
        lw      t1, FN_COUNT(s2)
        mv      s3, s0                  # s3 = min(pages left, its entries)
        bgeu    t1, s3, 2f
        mv      s3, t1
2:      sub     t1, t1, s3
        slli    t2, t1, 2
        add     a1, s2, t2
        addi    a1, a1, FN_ENTRIES      # its last s3 entries
        sw      a1, 20(sp)
        li      a0, BLN_DEFLATE
        mv      a2, s3
        call    balloon_command
        bnez    a0, balloon_refused
        lw      t1, FN_COUNT(s2)
        sub     t1, t1, s3
        sw      t1, FN_COUNT(s2)
        la      t0, mem_balloon
        lw      t1, 0(t0)
        sub     t1, t1, s3
        sw      t1, 0(t0)
        add     s1, s1, s3
        sub     s0, s0, s3
3:      beqz    s3, 1b                  # the pages go back to the free pool
        lw      t0, 20(sp)
        lw      a0, 0(t0)
        addi    t0, t0, 4
        sw      t0, 20(sp)
        slli    a0, a0, PAGE_SHIFT
        call    put_free_frame
        addi    s3, s3, -1
        j       3b
8:      call    balloon_drop_empty_nodes
        la      t0, stat_balloon_deflated
        lw      t1, 0(t0)
        add     t1, t1, s1
        sw      t1, 0(t0)
        mv      a0, s1
        lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

# balloon_drop_empty_nodes(): empty nodes on top of the balloon's list go back to the free pool.
# Clobbers t0-t3, a0, a1.
balloon_drop_empty_nodes:
        addi    sp, sp, -16
        sw      ra, 0(sp)
1:      la      t0, balloon_head
        lw      a0, 0(t0)
        beqz    a0, 2f
        lw      t1, FN_COUNT(a0)
        bnez    t1, 2f
        lw      t1, FN_NEXT(a0)
        sw      t1, 0(t0)
        la      t0, mem_kernel
        lw      t1, 0(t0)
        addi    t1, t1, -1
        sw      t1, 0(t0)
        call    put_free_frame
        j       1b
2:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# balloon_oom_deflate() -> a0 = pages the balloon gave back so that an allocation of process
# memory can succeed: BALLOON_OOM_PAGES (or all it holds) when the host allows it
# (FEATURES.DEFLATE_ON_OOM), else 0. Preserves s0-s3.
balloon_oom_deflate:
        la      t0, balloon_base
        lw      t0, 0(t0)
        beqz    t0, 1f
        la      t1, mem_balloon
        lw      t1, 0(t1)
        beqz    t1, 1f
        lw      t1, BLN_FEATURES(t0)
        andi    t1, t1, BLN_DEFLATE_ON_OOM
        beqz    t1, 1f
        addi    sp, sp, -16
        sw      ra, 0(sp)
        li      a0, BALLOON_OOM_PAGES
        call    balloon_deflate
        la      t0, stat_balloon_oom
        lw      t1, 0(t0)
        add     t1, t1, a0
        sw      t1, 0(t0)
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
1:      li      a0, 0
        ret

# report_free_pages(): with FEATURES.FREE_PAGE_REPORTING, every free-pool entry not reported yet
# goes to the host (REPORT_FREE, one command per node). Preserves s0-s3.
report_free_pages:
        la      t0, balloon_base
        lw      t0, 0(t0)
        beqz    t0, 9f
        lw      t1, BLN_FEATURES(t0)
        andi    t1, t1, BLN_FREE_PAGE_REPORTING
        beqz    t1, 9f
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        la      t0, free_head
        lw      s0, 0(t0)               # s0 = a node of the free pool
1:      beqz    s0, 8f
        lw      t1, FN_REPORTED(s0)
        lw      t2, FN_COUNT(s0)
        bgeu    t1, t2, 2f
        sw      t2, FN_REPORTED(s0)
        sub     a2, t2, t1
        slli    t1, t1, 2
        add     a1, s0, t1
        addi    a1, a1, FN_ENTRIES
        la      t0, stat_balloon_reported
        lw      t1, 0(t0)
        add     t1, t1, a2
        sw      t1, 0(t0)
        li      a0, BLN_REPORT_FREE
        call    balloon_command
        bnez    a0, balloon_refused
2:      lw      s0, FN_NEXT(s0)
        j       1b
8:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
9:      ret

# balloon_send_stats(): with FEATURES.STATS, the page classes and counters as STATS (tag, value)
# pairs (docs/balloon.md): swap 0 (no swap), major faults = page-cache misses, minor faults =
# demand-paging faults, available = free + cache (every cache page is clean). Clobbers t0-t3, a0-a2.
balloon_send_stats:
        la      t0, balloon_base
        lw      t0, 0(t0)
        lw      t1, BLN_FEATURES(t0)
        andi    t1, t1, BLN_WANTS_STATS
        beqz    t1, 9f
        la      a0, balloon_stats_buf
        la      a1, balloon_stat_sources
        li      a2, 0                   # a2 = tag
1:      lw      t0, 0(a1)
        li      t1, 0
        beqz    t0, 3f                  # 0: the value is 0
        li      t2, -1
        bne     t0, t2, 2f
        la      t0, mem_free            # -1: available = free + cache
        lw      t1, 0(t0)
        la      t0, mem_cache
        lw      t2, 0(t0)
        add     t1, t1, t2
        j       3f
2:      lw      t1, 0(t0)
3:      sw      a2, 0(a0)
        sw      t1, 4(a0)
        addi    a0, a0, 8
        addi    a1, a1, 4
        addi    a2, a2, 1
        li      t0, BALLOON_STAT_PAIRS
        bltu    a2, t0, 1b
        li      a0, BLN_STATS
        la      a1, balloon_stats_buf
        li      a2, BALLOON_STAT_PAIRS
        addi    sp, sp, -16
        sw      ra, 0(sp)
        call    balloon_command
        bnez    a0, balloon_refused
        la      t0, stat_balloon_stats
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        lw      ra, 0(sp)
        addi    sp, sp, 16
9:      ret

        .data
msg_balloon:            .asciz "[kernel] balloon: up to "
msg_balloon_rate:       .asciz " pages per tick\n"
msg_balloon_refused:    .asciz "\n[kernel] PANIC: the balloon device refused a command\n"

        .align  2
balloon_base:           .word 0         # the balloon window (0: no balloon)
balloon_head:           .word 0         # the top node of the list of ballooned pages
balloon_seq:            .word 0         # STATS_SEQ when statistics were last sent
stat_balloon_inflated:  .word 0         # pages inflated, deflated, given back on OOM, reported
stat_balloon_deflated:  .word 0
stat_balloon_oom:       .word 0
stat_balloon_reported:  .word 0
stat_balloon_stats:     .word 0         # STATS commands sent

# Where each statistics tag's value comes from: a counter, 0 (the value 0), -1 (free + cache).
balloon_stat_sources:
        .word   0, 0, stat_cache_misses, stat_page_faults, mem_free, mem_total, -1, mem_cache
        .word   stat_oom_kills, mem_anon, mem_kernel, mem_balloon

        .bss
        .align  3
balloon_stats_buf:      .space BALLOON_STAT_PAIRS * 8
