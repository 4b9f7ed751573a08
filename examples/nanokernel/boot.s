# boot.s — reset entry: park secondary vCPUs, find the devices, map the kernel, start programs.

        .text
        .global _start
_start:
        bnez    a0, park                # only vCPU 0 boots
        mv      s0, a1                  # s0 = the device table (a1 at reset, SPEC §15)
        la      sp, kstack_top
        la      t0, trap_entry
        csrw    tvec, t0
        csrw    scratch, zero           # 0 = running in the kernel (see trap.s)
        mv      a0, s0
        call    scan_devices
        call    setup_kernel_paging
        call    mem_init                # page classes (mm.s)
        call    print_banner
        mv      a0, s0
        call    disk_probe              # the disk is optional (disk.s)
        mv      a0, s0
        call    balloon_probe           # so is the balloon (balloon.s)
        mv      a0, s0
        call    meminfo_probe           # and the host's memory condition (meminfo.s)
        mv      a0, s0
        call    pmem_probe              # and persistent memory (pmem.s)
        call    parse_bootargs
        beqz    a0, 1f
        li      a0, EXIT_BAD_BOOTARGS
        j       power_off
1:      call    print_plan
        la      t0, user_ie             # the timer (and an asynchronous disk's completions, disk.s);
        lw      t0, 0(t0)               # the kernel itself keeps SIE = 0
        csrw    ie, t0
        call    start_pending
        j       schedule

# Secondary vCPUs wait forever: nothing is enabled in ie, so wfi never returns.
park:
        csrw    ie, zero
1:      wfi
        j       1b

# scan_devices(a0 = device table): records RAM size, vCPU count and the first console, timer,
# power and boot-argument devices. Powers off with EXIT_NO_DEVICE when one that is required
# (console, timer, power) is missing.
scan_devices:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        lw      t0, 0(a0)
        li      t1, DT_MAGIC
        bne     t0, t1, 9f
        lw      t0, 4(a0)
        srli    t0, t0, 16              # t0 = number of entries
        la      t1, device_count
        sw      t0, 0(t1)
        lw      t1, 8(a0)
        la      t2, ram_bytes
        sw      t1, 0(t2)
        lw      t1, 12(a0)
        la      t2, vcpu_count
        sw      t1, 0(t2)
        addi    a1, a0, DT_HEADER_BYTES # a1 = entry
1:      beqz    t0, 5f
        lw      t1, 0(a1)               # type | instance << 16
        srli    t2, t1, 16
        bnez    t2, 4f                  # only instance 0 of each type
        lw      t2, 4(a1)               # t2 = window base
        li      t3, DEV_CONSOLE
        bne     t1, t3, 2f
        addi    t2, t2, CONSOLE_TX
        la      t3, console_tx
        sw      t2, 0(t3)
        j       4f
2:      li      t3, DEV_TIMER
        bne     t1, t3, 3f
        la      t3, timer_base
        sw      t2, 0(t3)
        j       4f
3:      li      t3, DEV_POWER
        bne     t1, t3, 31f
        la      t3, power_base
        sw      t2, 0(t3)
        j       4f
31:     li      t3, DEV_BOOTARGS
        bne     t1, t3, 4f
        la      t3, bootargs_base
        sw      t2, 0(t3)
        lw      t2, 12(a1)              # info = the string length
        la      t3, bootargs_len
        sw      t2, 0(t3)
4:      addi    a1, a1, DT_ENTRY_BYTES
        addi    t0, t0, -1
        j       1b
5:      la      t0, console_tx          # required devices
        lw      t0, 0(t0)
        beqz    t0, 9f
        la      t0, power_base
        lw      t0, 0(t0)
        beqz    t0, 8f
        la      t0, timer_base
        lw      t0, 0(t0)
        beqz    t0, 8f
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
8:      la      a0, msg_no_device
        call    kputs
9:      li      a0, EXIT_NO_DEVICE      # (without a console nothing can be said)
        j       power_off

# find_device(a0 = device table, a1 = type) -> a0 = the table entry of instance 0 of that device
# type (its window at 4(a0), its info word at 12(a0)), or 0 when there is none. Clobbers t0-t2.
find_device:
        lw      t0, 4(a0)
        srli    t0, t0, 16              # t0 = entries
        addi    t1, a0, DT_HEADER_BYTES
1:      beqz    t0, 2f
        lw      t2, 0(t1)               # type | instance << 16: instance 0 is the type itself
        beq     t2, a1, 3f
        addi    t1, t1, DT_ENTRY_BYTES
        addi    t0, t0, -1
        j       1b
2:      li      t1, 0
3:      mv      a0, t1
        ret

# setup_kernel_paging(): the kernel root table maps RAM 1:1 with global supervisor superpages
# (up to KERNEL_RAM_LIMIT) and the superpages holding the device windows; then paging goes on.
# Frames for everything else come after the kernel image.
setup_kernel_paging:
        la      t0, ram_bytes
        lw      t0, 0(t0)
        li      t1, KERNEL_RAM_LIMIT
        bgeu    t1, t0, 1f
        mv      t0, t1
1:      srli    t0, t0, PAGE_SHIFT
        slli    t0, t0, PAGE_SHIFT
        la      t1, frame_limit
        sw      t0, 0(t1)
        la      t1, kernel_end
        la      t2, frame_next
        sw      t1, 0(t2)
        li      t1, (1 << SUPERPAGE_SHIFT) - 1  # t0 = superpages to map
        add     t0, t0, t1
        srli    t0, t0, SUPERPAGE_SHIFT
        la      t1, kernel_root
        li      t2, PTE_KERNEL_RAM      # superpage i: PPN = i << 10, so PTE = i << 20 | flags
        li      t3, 1 << 20
2:      beqz    t0, 3f
        sw      t2, 0(t1)
        add     t2, t2, t3
        addi    t1, t1, 4
        addi    t0, t0, -1
        j       2b
3:      li      a0, 0xf0000000          # the device table, then each device window
        la      a1, kernel_root
        addi    sp, sp, -16
        sw      ra, 0(sp)
        call    map_mmio_superpage
        la      t0, console_tx
        lw      a0, 0(t0)
        call    map_mmio_superpage
        la      t0, timer_base
        lw      a0, 0(t0)
        call    map_mmio_superpage
        la      t0, power_base
        lw      a0, 0(t0)
        call    map_mmio_superpage
        la      t0, bootargs_base
        lw      a0, 0(t0)
        call    map_mmio_superpage
        lw      ra, 0(sp)
        addi    sp, sp, 16
        la      t0, kernel_root
        srli    t0, t0, PAGE_SHIFT
        li      t1, PTBR_SV32           # ASID 0 = the kernel's own tables
        or      t0, t0, t1
        la      t1, kernel_ptbr
        sw      t0, 0(t1)
        csrw    ptbr, t0                # this code is mapped 1:1, so execution just continues
        ret

# map_mmio_superpage(a0 = physical address or 0, a1 = root): maps its 4 MiB region 1:1, not
# executable, supervisor only, global.
map_mmio_superpage:
        beqz    a0, 1f
        srli    t0, a0, SUPERPAGE_SHIFT
        slli    t1, t0, 2
        add     t1, a1, t1
        slli    t0, t0, 20
        ori     t0, t0, PTE_KERNEL_MMIO
        sw      t0, 0(t1)
1:      ret

# print_banner(): "nanokernel: 64 MiB RAM, 1 vCPU, 4 devices"
print_banner:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        la      a0, msg_banner
        call    kputs
        la      t0, ram_bytes
        lw      s0, 0(t0)
        li      t0, 0xfffff
        and     t0, s0, t0
        bnez    t0, 1f
        srli    a0, s0, 20
        call    kput_dec
        la      a0, msg_mib
        j       2f
1:      srli    a0, s0, 10
        call    kput_dec
        la      a0, msg_kib
2:      call    kputs
        la      t0, vcpu_count
        lw      s0, 0(t0)
        mv      a0, s0
        call    kput_dec
        la      a0, msg_vcpu
        call    kputs
        li      t0, 1
        beq     s0, t0, 3f
        la      a0, msg_plural
        call    kputs
3:      la      a0, msg_comma
        call    kputs
        la      t0, device_count
        lw      a0, 0(t0)
        call    kput_dec
        la      a0, msg_devices
        call    kputs
        lw      ra, 0(sp)
        lw      s0, 4(sp)
        addi    sp, sp, 16
        ret

# print_plan(): "[kernel] 5 programs, time slice 100000 instructions"
print_plan:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      a0, msg_kernel
        call    kputs
        la      t0, spec_count
        lw      a0, 0(t0)
        call    kput_dec
        la      t0, spec_count
        lw      t0, 0(t0)
        la      a0, msg_program
        li      t1, 1
        beq     t0, t1, 1f
        la      a0, msg_programs
1:      call    kputs
        la      t0, time_slice
        lw      a0, 0(t0)
        call    kput_dec
        la      a0, msg_instructions
        call    kputs
        la      t0, flush_on_switch
        lw      t0, 0(t0)
        beqz    t0, 2f
        la      a0, msg_flush_always
        call    kputs
2:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

        .data
msg_banner:         .asciz "nanokernel: "
msg_mib:            .asciz " MiB RAM, "
msg_kib:            .asciz " KiB RAM, "
msg_vcpu:           .asciz " vCPU"
msg_plural:         .asciz "s"
msg_comma:          .asciz ", "
msg_devices:        .asciz " devices\n"
msg_program:        .asciz " program, time slice "
msg_programs:       .asciz " programs, time slice "
msg_instructions:   .asciz " instructions\n"
msg_flush_always:   .asciz "[kernel] flush=always: sfence zero, zero on every context switch\n"
msg_no_device:      .asciz "[kernel] a console, a timer and a power device are required\n"

        .align  2
ram_bytes:          .word 0
vcpu_count:         .word 0
device_count:       .word 0
timer_base:         .word 0
kernel_ptbr:        .word 0
