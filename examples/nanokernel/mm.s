# mm.s — physical frames and page tables.
#
# Frames: a bump pointer over RAM never used since power-on (such frames are zero, SPEC §15, so
# they are handed out without touching them — the host allocates nothing until the guest really
# uses a page) plus a free list of recycled frames, linked through their first word and zeroed
# when they are handed out again. All RAM the kernel uses is mapped 1:1, so a frame's physical
# address is also its kernel virtual address.

        .text

# alloc_frame() -> a0 = physical address of a zeroed 4 KiB frame, or 0 when RAM is exhausted
alloc_frame:
        la      t0, free_list
        lw      a0, 0(t0)
        beqz    a0, 2f
        lw      t1, 0(a0)               # pop a recycled frame and zero it
        sw      t1, 0(t0)
        mv      t1, a0
        li      t2, PAGE_SIZE
        add     t2, a0, t2
1:      sw      zero, 0(t1)
        sw      zero, 4(t1)
        sw      zero, 8(t1)
        sw      zero, 12(t1)
        sw      zero, 16(t1)
        sw      zero, 20(t1)
        sw      zero, 24(t1)
        sw      zero, 28(t1)
        addi    t1, t1, 32
        bltu    t1, t2, 1b
        j       3f
2:      la      t0, frame_next          # a never-used frame: already zero
        lw      a0, 0(t0)
        la      t1, frame_limit
        lw      t1, 0(t1)
        bgeu    a0, t1, 4f
        li      t2, PAGE_SIZE
        add     t2, a0, t2
        sw      t2, 0(t0)
3:      la      t0, frames_in_use
        lw      t1, 0(t0)
        addi    t1, t1, 1
        sw      t1, 0(t0)
        la      t0, frames_peak
        lw      t2, 0(t0)
        bgeu    t2, t1, 5f
        sw      t1, 0(t0)
5:      ret
4:      li      a0, 0
        ret

# free_frame(a0 = physical address of a frame)
free_frame:
        la      t0, free_list
        lw      t1, 0(t0)
        sw      t1, 0(a0)
        sw      a0, 0(t0)
        la      t0, frames_in_use
        lw      t1, 0(t0)
        addi    t1, t1, -1
        sw      t1, 0(t0)
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
        call    free_frame
3:      addi    s3, s3, 4
        li      t0, PAGE_SIZE
        bltu    s3, t0, 2b
        mv      a0, s2
        call    free_frame
4:      addi    s1, s1, 4
        li      t0, USER_VPN1_END * 4
        bltu    s1, t0, 1b
        mv      a0, s0
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
free_list:      .word 0                 # recycled frames
frames_in_use:  .word 0
frames_peak:    .word 0
