# mm.s — physical frames, page classes and page tables.
#
# Frames: a bump pointer over RAM never used since power-on (such frames are zero, SPEC §15, so
# they are handed out without touching them — the host allocates nothing until the guest really
# uses a page) plus a free pool of recycled frames. The pool is a stack of *node pages*: each
# node is itself a free frame holding up to FN_CAPACITY page numbers of other free frames (and
# the next node), so the free frames it lists are never touched by the kernel while they are
# free — free-page reporting (balloon.s) can hand them to the host. A recycled frame is zeroed
# when it is handed out again (a reported one too); a never-used one is zero already. All
# RAM the kernel uses is mapped 1:1, so a frame's physical address is also its kernel virtual
# address.
#
# Page classes: every page of the RAM the kernel manages is in exactly one class, counted in
# mem_classes: free (bump, pool entries and pool nodes), page cache (cache.s), anonymous (a
# process's image copy, heap and stack pages), kernel (the kernel image below kernel_end, page
# tables, balloon node pages) and balloon (pages given to the host, balloon.s). They always add
# up to mem_total. `frames in use` counts the frames processes hold (anonymous + their tables).

        .equ    CLASS_FREE, 0
        .equ    CLASS_CACHE, 1
        .equ    CLASS_ANON, 2
        .equ    CLASS_KERNEL, 3
        .equ    CLASS_BALLOON, 4

        # A node page of the free pool (and of the balloon's page list, balloon.s).
        .equ    FN_NEXT, 0                      # the next node (physical address, 0 = last)
        .equ    FN_COUNT, 4                     # entries in use
        .equ    FN_REPORTED, 8                  # entries [0, FN_REPORTED) were reported to the host
        .equ    FN_ENTRIES, 12                  # page numbers (u32)
        .equ    FN_CAPACITY, (PAGE_SIZE - FN_ENTRIES) / 4   # 1021

        .text

# mem_init(): the page classes at boot, once frame_next and frame_limit are set: everything
# below kernel_end is kernel, the rest free.
mem_init:
        la      t0, frame_limit
        lw      t0, 0(t0)
        srli    t0, t0, PAGE_SHIFT
        la      t1, mem_total
        sw      t0, 0(t1)
        la      t1, kernel_end
        srli    t1, t1, PAGE_SHIFT
        sub     t0, t0, t1
        la      t2, mem_classes
        sw      t0, CLASS_FREE * 4(t2)
        sw      t1, CLASS_KERNEL * 4(t2)
        ret

# take_free_frame() -> a0 = a frame taken from the free pool (or the bump region), 0 when there
# is none; a1 = 1 when it is known to read zero (never used since power-on), else 0. A frame
# reported to the host should read zero too, but is zeroed all the same: a reported page the
# host could not release (swapped out, say) keeps its bytes. The frame is not zeroed here; the
# free count drops by one. Clobbers t0-t3.
take_free_frame:
        la      t0, free_head
        lw      t1, 0(t0)               # t1 = the top node
        beqz    t1, 3f
        lw      t2, FN_COUNT(t1)
        beqz    t2, 2f
        addi    t2, t2, -1              # pop its last entry
        sw      t2, FN_COUNT(t1)
        slli    t3, t2, 2
        add     t3, t1, t3
        lw      a0, FN_ENTRIES(t3)
        slli    a0, a0, PAGE_SHIFT
        lw      t3, FN_REPORTED(t1)
        li      a1, 0                   # (zeroed all the same: see above)
        bgeu    t2, t3, 4f
        sw      t2, FN_REPORTED(t1)     # a reported entry: the mark comes down with it
        j       4f
2:      lw      t2, FN_NEXT(t1)         # an empty node: hand out the node page itself
        sw      t2, 0(t0)
        mv      a0, t1
        li      a1, 0
        j       4f
3:      la      t0, frame_next          # a never-used frame: already zero
        lw      a0, 0(t0)
        la      t1, frame_limit
        lw      t1, 0(t1)
        bgeu    a0, t1, 5f
        li      t2, PAGE_SIZE
        add     t2, a0, t2
        sw      t2, 0(t0)
        li      a1, 1
4:      la      t0, mem_classes
        lw      t1, CLASS_FREE * 4(t0)
        addi    t1, t1, -1
        sw      t1, CLASS_FREE * 4(t0)
        ret
5:      li      a0, 0
        li      a1, 0
        ret

# put_free_frame(a0 = frame): back into the free pool (the free count grows by one). The frame
# is listed in the top node, or becomes the new top node when that one is full. Clobbers t0-t3, a1.
put_free_frame:
        la      t0, free_head
        lw      t1, 0(t0)
        beqz    t1, 2f
        lw      t2, FN_COUNT(t1)
        li      t3, FN_CAPACITY
        bgeu    t2, t3, 2f
        slli    t3, t2, 2
        add     t3, t1, t3
        srli    a1, a0, PAGE_SHIFT
        sw      a1, FN_ENTRIES(t3)
        addi    t2, t2, 1
        sw      t2, FN_COUNT(t1)
        j       3f
2:      sw      t1, FN_NEXT(a0)         # the frame becomes the top node
        sw      zero, FN_COUNT(a0)
        sw      zero, FN_REPORTED(a0)
        sw      a0, 0(t0)
3:      la      t0, mem_classes
        lw      t1, CLASS_FREE * 4(t0)
        addi    t1, t1, 1
        sw      t1, CLASS_FREE * 4(t0)
        ret

# class_add(a0 = class, a1 = pages to add, may be negative). Clobbers t0, t1.
class_add:
        la      t0, mem_classes
        slli    t1, a0, 2
        add     t0, t0, t1
        lw      t1, 0(t0)
        add     t1, t1, a1
        sw      t1, 0(t0)
        ret

# alloc_frame(a0 = class) -> a0 = physical address of a zeroed 4 KiB frame of that class, or 0
# when RAM is exhausted. A free frame if there is one; else (for any class but the cache) a page
# dropped from the page cache; else, for process memory (anonymous, kernel), pages the balloon
# gives back when the host allows it (deflate on OOM, balloon.s); else 0 (the caller OOM-kills).
alloc_frame:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        mv      s0, a0                  # s0 = class
1:      call    take_free_frame
        bnez    a0, 3f
        li      t0, CLASS_CACHE
        beq     s0, t0, 9f
        la      t0, mem_classes
        lw      t0, CLASS_CACHE * 4(t0)
        beqz    t0, 2f
        call    cache_evict             # a clean cache page: its frame changes class
        li      a1, 0
        j       3f
2:      li      t0, CLASS_ANON
        bltu    s0, t0, 9f
        li      t0, CLASS_KERNEL
        bltu    t0, s0, 9f
        call    balloon_oom_deflate     # -> a0 = pages the balloon gave back
        bnez    a0, 1b
9:      li      a0, 0
        j       8f
3:      bnez    a1, 5f                  # not known to be zero: zero it
        mv      t1, a0
        li      t2, PAGE_SIZE
        add     t2, a0, t2
4:      sw      zero, 0(t1)
        sw      zero, 4(t1)
        sw      zero, 8(t1)
        sw      zero, 12(t1)
        sw      zero, 16(t1)
        sw      zero, 20(t1)
        sw      zero, 24(t1)
        sw      zero, 28(t1)
        addi    t1, t1, 32
        bltu    t1, t2, 4b
5:      sw      a0, 8(sp)
        mv      a0, s0
        li      a1, 1
        call    class_add
        lw      a0, 8(sp)
        addi    t0, s0, -CLASS_ANON     # process frames: anonymous and kernel (page tables)
        li      t1, CLASS_KERNEL - CLASS_ANON
        bltu    t1, t0, 8f
        la      t0, frames_in_use
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      t0, frames_peak
        lw      t2, 0(t0)
        bgeu    t2, t1, 8f
        sw      t1, 0(t0)
8:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# free_frame(a0 = physical address of a frame, a1 = its class): back to the free pool.
# Clobbers t0-t3, a0-a1.
free_frame:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        mv      a0, a1
        li      a1, -1
        call    class_add
        lw      t0, 8(sp)
        addi    t0, t0, -CLASS_ANON
        li      t1, CLASS_KERNEL - CLASS_ANON
        bltu    t1, t0, 1f
        la      t0, frames_in_use
        lw      t1, 0(t0)
        addi    t1, t1, -1
        sw      t1, 0(t0)
1:      lw      a0, 4(sp)
        call    put_free_frame
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# map_page(a0 = root table, a1 = va, a2 = leaf PTE) -> a0 = 0, or -1 when no frame was left for
# the second-level table. The PTE slot must be invalid (no sfence is needed for that, SPEC §12.7).
map_page:
        srli    t0, a1, SUPERPAGE_SHIFT
        slli    t0, t0, 2
        add     t0, a0, t0              # t0 = &root[VPN[1]]
        lw      t1, 0(t0)
        andi    t2, t1, PTE_V
        bnez    t2, 1f
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      t0, 4(sp)
        sw      a1, 8(sp)
        sw      a2, 12(sp)
        li      a0, CLASS_KERNEL
        call    alloc_frame
        lw      ra, 0(sp)
        lw      t0, 4(sp)
        lw      a1, 8(sp)
        lw      a2, 12(sp)
        addi    sp, sp, 16
        beqz    a0, 9f
        srli    t1, a0, 2               # pointer PTE: PPN << 10 | V
        ori     t1, t1, PTE_V
        sw      t1, 0(t0)
1:      srli    t1, t1, 10
        slli    t1, t1, PAGE_SHIFT      # t1 = the second-level table
        srli    t2, a1, PAGE_SHIFT
        andi    t2, t2, 0x3ff
        slli    t2, t2, 2
        add     t1, t1, t2
        sw      a2, 0(t1)
        li      a0, 0
        ret
9:      li      a0, -1
        ret

# pte_lookup(a0 = root table, a1 = va) -> a0 = address of the leaf PTE slot, or 0 when va is
# not a user address or its second-level table does not exist. (User root entries are always
# pointers; the kernel's are superpages and never looked up here.)
pte_lookup:
        srli    t0, a1, SUPERPAGE_SHIFT
        addi    t1, t0, -USER_VPN1_FIRST
        li      t2, USER_VPN1_END - USER_VPN1_FIRST
        bgeu    t1, t2, 1f
        slli    t0, t0, 2
        add     t0, a0, t0
        lw      t1, 0(t0)
        andi    t2, t1, PTE_V
        beqz    t2, 1f
        srli    t1, t1, 10
        slli    t1, t1, PAGE_SHIFT
        srli    t2, a1, PAGE_SHIFT
        andi    t2, t2, 0x3ff
        slli    t2, t2, 2
        add     a0, t1, t2
        ret
1:      li      a0, 0
        ret

# new_root() -> a0 = a root table holding the kernel's global superpages, or 0 (out of memory)
new_root:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        li      a0, CLASS_KERNEL
        call    alloc_frame
        lw      ra, 0(sp)
        addi    sp, sp, 16
        beqz    a0, 2f
        la      t0, kernel_root
        mv      t1, a0
        li      t3, PAGE_SIZE
        add     t3, t0, t3
1:      lw      t2, 0(t0)
        sw      t2, 0(t1)
        addi    t0, t0, 4
        addi    t1, t1, 4
        bltu    t0, t3, 1b
2:      ret

# free_address_space(a0 = root table): frees every user page, every second-level table and the
# root. The caller must not be running on this root (ptbr) any more.
free_address_space:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s0, a0
        li      s1, USER_VPN1_FIRST * 4
1:      add     t0, s0, s1
        lw      t1, 0(t0)
        andi    t2, t1, PTE_V
        beqz    t2, 4f
        srli    s2, t1, 10
        slli    s2, s2, PAGE_SHIFT      # s2 = second-level table
        li      s3, 0
2:      add     t0, s2, s3
        lw      t1, 0(t0)
        andi    t2, t1, PTE_V
        beqz    t2, 3f
        srli    a0, t1, 10
        slli    a0, a0, PAGE_SHIFT
        li      a1, CLASS_ANON
        call    free_frame
3:      addi    s3, s3, 4
        li      t0, PAGE_SIZE
        bltu    s3, t0, 2b
        mv      a0, s2
        li      a1, CLASS_KERNEL
        call    free_frame
4:      addi    s1, s1, 4
        li      t0, USER_VPN1_END * 4
        bltu    s1, t0, 1b
        mv      a0, s0
        li      a1, CLASS_KERNEL
        call    free_frame
        lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

# demand_map(a0 = process, a1 = va) -> a0 = 0 (a zeroed page is now mapped), -1 (va is not in
# the process's heap or stack), -2 (out of memory). The PTE for va must be invalid.
demand_map:
        li      t0, HEAP_BASE
        bltu    a1, t0, 2f
        lw      t1, P_BRK(a0)           # the heap: pages below the break
        srli    t2, a1, PAGE_SHIFT
        slli    t2, t2, PAGE_SHIFT
        bltu    t2, t1, 1f
2:      li      t0, STACK_LOW           # the stack: [STACK_LOW, STACK_TOP)
        bltu    a1, t0, 8f
        li      t0, STACK_TOP
        bgeu    a1, t0, 8f
1:      addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        mv      s0, a0
        srli    s1, a1, PAGE_SHIFT
        slli    s1, s1, PAGE_SHIFT
        li      a0, CLASS_ANON
        call    alloc_frame
        beqz    a0, 7f
        mv      s2, a0
        lw      a0, P_ROOT(s0)
        mv      a1, s1
        srli    a2, s2, 2
        ori     a2, a2, PTE_USER_DATA
        call    map_page
        beqz    a0, 3f
        mv      a0, s2                  # no frame for the second-level table
        li      a1, CLASS_ANON
        call    free_frame
7:      li      a0, -2
        j       4f
3:      la      t0, stat_page_faults
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        li      a0, 0
4:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        addi    sp, sp, 16
        ret
8:      li      a0, -1
        ret

# user_page_allowed(a0 = process, a1 = va, a2 = PTE bits that must all be set) -> a0 = 0 when user
# mode may access va that way (faulting a heap or stack page in if needed: a demand-paged page is
# mapped readable and writable), else -1.
user_page_allowed:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      a2, 12(sp)
        mv      s0, a0
        mv      s1, a1
        lw      a0, P_ROOT(s0)
        call    pte_lookup
        beqz    a0, 1f
        lw      t0, 0(a0)
        andi    t1, t0, PTE_V
        beqz    t1, 1f
        lw      t1, 12(sp)
        and     t0, t0, t1
        beq     t0, t1, 2f
        j       3f
1:      mv      a0, s0                  # not mapped yet: maybe a demand-paged heap/stack page
        mv      a1, s1
        call    demand_map
        beqz    a0, 2f
3:      li      a0, -1
        j       4f
2:      li      a0, 0
4:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        addi    sp, sp, 16
        ret

# user_range_allowed(a0 = process, a1 = buffer, a2 = length > 0, a3 = PTE bits every page must
# have) -> a0 = 0 when [buffer, buffer + length) lies in user space without wrapping and every page
# of it allows the access (demand-paging pages in as needed), else -1. Used by the system calls
# that take a user buffer.
user_range_allowed:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s0, a0
        mv      s3, a3
        add     s2, a1, a2              # s2 = end
        li      t0, USER_BASE
        bltu    a1, t0, 3f
        bltu    s2, a1, 3f              # wraps around
        li      t0, STACK_TOP
        bltu    t0, s2, 3f
        srli    s1, a1, PAGE_SHIFT
        slli    s1, s1, PAGE_SHIFT      # s1 = the page being checked
1:      mv      a0, s0
        mv      a1, s1
        mv      a2, s3
        call    user_page_allowed
        bnez    a0, 3f
        li      t0, PAGE_SIZE
        add     s1, s1, t0
        bltu    s1, s2, 1b
        li      a0, 0
        j       4f
3:      li      a0, -1
4:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

# unmap_user_range(a0 = process, a1 = first va, a2 = end va; both page-aligned): frees the
# mapped pages in the range and flushes their translations from this process's ASID.
unmap_user_range:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s0, a0
        mv      s1, a1
        mv      s2, a2
1:      bgeu    s1, s2, 3f
        lw      a0, P_ROOT(s0)
        mv      a1, s1
        call    pte_lookup
        beqz    a0, 2f
        lw      t0, 0(a0)
        andi    t1, t0, PTE_V
        beqz    t1, 2f
        sw      zero, 0(a0)
        lw      t1, P_ASID(s0)
        sfence  s1, t1                  # a valid PTE was removed (SPEC §12.7)
        srli    a0, t0, 10
        slli    a0, a0, PAGE_SHIFT
        li      a1, CLASS_ANON
        call    free_frame
2:      li      t0, PAGE_SIZE
        add     s1, s1, t0
        j       1b
3:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

        .data
        .align  2
frame_next:     .word 0                 # next never-used frame
frame_limit:    .word 0                 # end of usable RAM
free_head:      .word 0                 # the top node of the free pool (0: empty)
frames_in_use:  .word 0                 # frames processes hold (anonymous + their page tables)
frames_peak:    .word 0
mem_total:      .word 0                 # pages of RAM the kernel manages: [0, frame_limit)
mem_classes:    .word 0, 0, 0, 0, 0     # pages per class: free, cache, anon, kernel, balloon
mem_free = mem_classes + CLASS_FREE * 4
mem_cache = mem_classes + CLASS_CACHE * 4
mem_anon = mem_classes + CLASS_ANON * 4
mem_kernel = mem_classes + CLASS_KERNEL * 4
mem_balloon = mem_classes + CLASS_BALLOON * 4
