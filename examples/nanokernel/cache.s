# cache.s — the page cache for disk blocks (docs/nanokernel.md, "The page cache").
#
# A cache page is a 4 KiB frame of class CLASS_CACHE holding one *block*: the 8 sectors
# 8b … 8b + 7 (fewer for the last block of a disk whose size is not a multiple of 8). Blocks are
# found through a hash table of CACHE_BUCKETS chains of descriptors; a descriptor names the
# block and its frame. disk_read fills a block on a miss with one 8-sector command straight into
# the frame; disk_write is write-through (the sector goes to the disk at once and into a cached
# block if there is one; a write never fills the cache), so every cache page is clean and can be
# dropped at any time: when a frame is needed and no free one is left (alloc_frame, a read miss
# with no free frame, the balloon). Which page goes is chosen by a clock over the descriptors:
# a hit sets the descriptor's referenced bit; the hand clears set bits and takes the first page
# whose bit is clear.

        .equ    CACHE_SLOTS, 4096               # descriptors: at most 16 MiB of page cache
        .equ    CACHE_BUCKETS_LOG2, 10
        .equ    CACHE_BUCKETS, 1 << CACHE_BUCKETS_LOG2
        .equ    CACHE_HASH, 0x9e3779b1          # Fibonacci hashing: (block * CACHE_HASH) >> (32 - log2 buckets)
        .equ    BLOCK_SECTORS, 8                # sectors per cache page
        .equ    BLOCK_SHIFT, 3
        .equ    CD_BLOCK, 0                     # a descriptor: the block number,
        .equ    CD_FRAME, 4                     # its frame (0: the descriptor is free),
        .equ    CD_NEXT, 8                      # the next descriptor in its chain (or in the free list),
        .equ    CD_REF, 12                      # 1 when referenced since the clock hand last passed
        .equ    CD_BYTES, 16

        .text

# cache_bucket(a0 = block) -> a0 = the address of the block's chain head. Clobbers t0.
cache_bucket:
        li      t0, CACHE_HASH
        mul     a0, a0, t0
        srli    a0, a0, 32 - CACHE_BUCKETS_LOG2
        slli    a0, a0, 2
        la      t0, cache_buckets
        add     a0, a0, t0
        ret

# cache_lookup(a0 = block) -> a0 = its descriptor, or 0 when the block is not cached.
# Clobbers t0, t1, a1.
cache_lookup:
        mv      a1, a0
        li      t0, CACHE_HASH
        mul     t1, a0, t0
        srli    t1, t1, 32 - CACHE_BUCKETS_LOG2
        slli    t1, t1, 2
        la      t0, cache_buckets
        add     t1, t1, t0
        lw      a0, 0(t1)
1:      beqz    a0, 2f
        lw      t0, CD_BLOCK(a0)
        beq     t0, a1, 2f
        lw      a0, CD_NEXT(a0)
        j       1b
2:      ret

# cache_insert(a0 = block, a1 = frame): a descriptor for a block that is not cached yet. There
# must be a free descriptor (fewer than CACHE_SLOTS cache pages). Clobbers t0-t3, a0.
cache_insert:
        la      t0, cache_free_descs    # a free descriptor: a recycled one, or a new one
        lw      t2, 0(t0)
        beqz    t2, 1f
        lw      t3, CD_NEXT(t2)
        sw      t3, 0(t0)
        j       2f
1:      la      t0, cache_hwm
        lw      t2, 0(t0)
        addi    t3, t2, CD_BYTES
        sw      t3, 0(t0)
2:      sw      a0, CD_BLOCK(t2)
        sw      a1, CD_FRAME(t2)
        sw      zero, CD_REF(t2)
        li      t0, CACHE_HASH          # push it on its chain
        mul     t1, a0, t0
        srli    t1, t1, 32 - CACHE_BUCKETS_LOG2
        slli    t1, t1, 2
        la      t0, cache_buckets
        add     t1, t1, t0
        lw      t3, 0(t1)
        sw      t3, CD_NEXT(t2)
        sw      t2, 0(t1)
        ret

# cache_evict() -> a0 = the frame of a cache page taken out of the cache (the clock's choice).
# The page must exist (mem_cache > 0); the cache count drops by one, and the caller owns the
# frame (its class is the caller's to count). Clobbers t0-t3, a1.
cache_evict:
        la      t0, cache_hand
        lw      t1, 0(t0)               # t1 = the hand
        la      t2, cache_hwm
        lw      t2, 0(t2)
1:      bltu    t1, t2, 2f
        la      t1, cache_descs         # wrap around
2:      mv      a1, t1
        addi    t1, t1, CD_BYTES
        lw      t3, CD_FRAME(a1)
        beqz    t3, 1b                  # a free descriptor
        lw      t3, CD_REF(a1)
        beqz    t3, 3f
        sw      zero, CD_REF(a1)        # referenced: a second chance
        j       1b
3:      sw      t1, 0(t0)               # the victim: a1
        lw      t0, CD_BLOCK(a1)        # unlink it from its chain
        li      t2, CACHE_HASH
        mul     t0, t0, t2
        srli    t0, t0, 32 - CACHE_BUCKETS_LOG2
        slli    t0, t0, 2
        la      t2, cache_buckets
        add     t0, t0, t2              # t0 = the link that points at the current descriptor
4:      lw      t2, 0(t0)
        beq     t2, a1, 5f
        addi    t0, t2, CD_NEXT
        j       4b
5:      lw      t2, CD_NEXT(a1)
        sw      t2, 0(t0)
        lw      a0, CD_FRAME(a1)
        sw      zero, CD_FRAME(a1)      # the descriptor goes to the free list
        la      t0, cache_free_descs
        lw      t2, 0(t0)
        sw      t2, CD_NEXT(a1)
        sw      a1, 0(t0)
        la      t0, mem_classes
        lw      t1, CLASS_CACHE * 4(t0)
        addi    t1, t1, -1
        sw      t1, CLASS_CACHE * 4(t0)
        la      t0, stat_cache_evicted
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        ret

# cache_new_frame() -> a0 = a frame for a new cache page, counted in CLASS_CACHE, or 0. A free
# frame while there is one and a descriptor is left, else the clock's victim among the cache
# pages (reused in place), else 0. Clobbers t0-t3, a1.
cache_new_frame:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      t0, mem_cache
        lw      t0, 0(t0)
        li      t1, CACHE_SLOTS
        bgeu    t0, t1, 2f              # no descriptor left: recycle
        call    take_free_frame
        beqz    a0, 2f
        la      t0, mem_cache
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        j       3f
2:      la      t0, mem_cache
        lw      t1, 0(t0)
        li      a0, 0
        beqz    t1, 3f                  # no cache page either
        call    cache_evict             # reused in place: still a cache page
        la      t0, mem_cache
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
3:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# cache_read_sector(a0 = sector, checked to be on the disk) -> a0 = the address of the sector's
# 512 bytes in the cache (or in disk_bounce when no frame could be had for it), or -errno. A hit
# marks the block referenced; a miss reads the whole block from the disk (a major fault).
cache_read_sector:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s1, 4(sp)
        sw      s2, 8(sp)
        sw      s3, 12(sp)
        mv      s1, a0                  # s1 = sector
        srli    a0, s1, BLOCK_SHIFT
        call    cache_lookup
        beqz    a0, 2f
        li      t0, 1                   # a hit
        sw      t0, CD_REF(a0)
        lw      s3, CD_FRAME(a0)
        la      t0, stat_cache_hits
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        j       5f
2:      la      t0, stat_cache_misses   # a miss: the disk is read
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        call    cache_new_frame
        beqz    a0, 6f
        mv      s3, a0                  # s3 = the new cache page
        srli    s2, s1, BLOCK_SHIFT
        slli    s2, s2, BLOCK_SHIFT     # s2 = the block's first sector
        la      t0, disk_sectors
        lw      t0, 0(t0)
        sub     a2, t0, s2              # sectors = min(8, disk size - first)
        li      t0, BLOCK_SECTORS
        bgeu    t0, a2, 3f
        mv      a2, t0
3:      mv      a0, s2
        li      a1, BLK_READ
        mv      a3, s3
        call    disk_transfer
        beqz    a0, 4f
        mv      s1, a0                  # the read failed: the frame goes back
        la      t0, mem_cache
        lw      t1, 0(t0)
        addi    t1, t1, -1
        sw      t1, 0(t0)
        mv      a0, s3
        call    put_free_frame
        mv      a0, s1
        j       7f
4:      srli    a0, s2, BLOCK_SHIFT
        mv      a1, s3
        call    cache_insert
5:      andi    a0, s1, BLOCK_SECTORS - 1
        slli    a0, a0, 9               # × 512
        add     a0, s3, a0
        j       7f
6:      mv      a0, s1                  # no frame at all: one sector through the bounce buffer
        li      a1, BLK_READ
        call    disk_command
        bnez    a0, 7f
        la      a0, disk_bounce
7:      lw      ra, 0(sp)
        lw      s1, 4(sp)
        lw      s2, 8(sp)
        lw      s3, 12(sp)
        addi    sp, sp, 16
        ret

# cache_update_sector(a0 = sector, a1 = its new 512 bytes, word-aligned): after a write reached
# the disk, the cached block (if any) gets the same bytes. Clobbers t0-t3, a0-a2.
cache_update_sector:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        srli    a0, a0, BLOCK_SHIFT
        call    cache_lookup
        beqz    a0, 2f
        lw      t0, CD_FRAME(a0)
        lw      t1, 4(sp)
        andi    t1, t1, BLOCK_SECTORS - 1
        slli    t1, t1, 9
        add     t0, t0, t1              # t0 = the sector in the cache page
        lw      t1, 8(sp)
        addi    t2, t1, DISK_SECTOR_BYTES
1:      lw      t3, 0(t1)
        sw      t3, 0(t0)
        addi    t0, t0, 4
        addi    t1, t1, 4
        bltu    t1, t2, 1b
2:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

        .data
        .align  2
cache_hwm:              .word cache_descs       # the first descriptor never used
cache_free_descs:       .word 0                 # recycled descriptors, linked through CD_NEXT
cache_hand:             .word cache_descs       # the clock hand
stat_cache_hits:        .word 0                 # disk_read served from the cache
stat_cache_misses:      .word 0                 # disk_read that read the disk (major faults)
stat_cache_evicted:     .word 0                 # cache pages the clock took (reused or given up)

        .bss
        .align  2
cache_buckets:          .space CACHE_BUCKETS * 4
cache_descs:            .space CACHE_SLOTS * CD_BYTES
