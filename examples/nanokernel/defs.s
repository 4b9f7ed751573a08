# defs.s — constants shared by the nanokernel and its user programs (docs/nanokernel.md).

# ---- Device table (SPEC §13) ---------------------------------------------------------------
        .equ    DT_MAGIC, 0x54445642            # "BVDT"
        .equ    DT_HEADER_BYTES, 16
        .equ    DT_ENTRY_BYTES, 16
        .equ    DEV_CONSOLE, 1
        .equ    DEV_TIMER, 2
        .equ    DEV_POWER, 3
        .equ    DEV_BOOTARGS, 4
        .equ    DEV_BLOCK, 5                    # optional: the disk (disk.s)
        .equ    CONSOLE_TX, 0                   # console registers (SPEC §13.3)
        .equ    CONSOLE_RX, 4
        .equ    CONSOLE_STATUS, 8
        .equ    CONSOLE_CONTROL, 12
        .equ    CONSOLE_INPUT_AVAILABLE, 1      # STATUS bits
        .equ    CONSOLE_END_OF_INPUT, 4
        .equ    CONSOLE_RX_INTERRUPT, 1         # CONTROL bits
        .equ    CONSOLE_EOF_INTERRUPT, 2
        .equ    TIMER_CMP_LO, 0
        .equ    TIMER_CMP_HI, 4
        .equ    POWER_OFF, 0

# ---- CSR bits (SPEC §6.4) --------------------------------------------------------------------
        .equ    STATUS_SPP, 0x100
        .equ    STATUS_SUM, 0x40000
        .equ    STATUS_MCIP, 0x100000       # machine check in progress (SPEC §7.6): sret clears it
        .equ    IE_TIMER, 0x20
        .equ    IE_EXTERNAL, 0x200
        .equ    CAUSE_TIMER_IRQ, 0x80000005
        .equ    CAUSE_EXTERNAL_IRQ, 0x80000009
        .equ    PTBR_SV32, 0x80000000
        .equ    PTBR_ASID_SHIFT, 22

# ---- Trap causes (SPEC §7.1) -------------------------------------------------------------------
        .equ    CAUSE_ILLEGAL, 2
        .equ    CAUSE_ECALL_U, 8
        .equ    CAUSE_LOAD_PF, 13
        .equ    CAUSE_STORE_PF, 15
        .equ    CAUSE_MACHINE_CHECK, 18         # the hypervisor could not repair a memory error
        .equ    CAUSE_MAX_NAMED, 18

# ---- Page-table entries (SPEC §12.3) -----------------------------------------------------------
        .equ    PTE_V, 0x01
        .equ    PTE_R, 0x02
        .equ    PTE_W, 0x04
        .equ    PTE_X, 0x08
        .equ    PTE_U, 0x10
        .equ    PTE_G, 0x20
        .equ    PTE_A, 0x40
        .equ    PTE_D, 0x80
        # A and D are preset so the MMU never has to write them back.
        .equ    PTE_KERNEL_RAM, PTE_V | PTE_R | PTE_W | PTE_X | PTE_G | PTE_A | PTE_D
        .equ    PTE_KERNEL_MMIO, PTE_V | PTE_R | PTE_W | PTE_G | PTE_A | PTE_D
        .equ    PTE_USER_CODE, PTE_V | PTE_R | PTE_X | PTE_U | PTE_A
        .equ    PTE_USER_DATA, PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D
        .equ    PAGE_SIZE, 4096
        .equ    PAGE_SHIFT, 12
        .equ    SUPERPAGE_SHIFT, 22

# ---- User address space ------------------------------------------------------------------------
        .equ    USER_BASE, 0x40000000           # the program image (read + execute), below HEAP_BASE
        .equ    HEAP_BASE, 0x40400000           # grows up with sbrk, demand-paged
        .equ    HEAP_LIMIT, 0x7f000000
        .equ    STACK_LOW, 0x7ff00000           # 1 MiB of stack, demand-paged below the top page
        .equ    STACK_TOP, 0x80000000
        .equ    USER_VPN1_FIRST, 0x100          # root entries owned by user space: 0x100..0x1ff
        .equ    USER_VPN1_END, 0x200
        # The kernel maps RAM 1:1 below USER_BASE, so it uses at most this much RAM.
        .equ    KERNEL_RAM_LIMIT, 0x40000000

# ---- System calls (ecall; number in t0, arguments a0..a3, result in a0) -------------------------
        .equ    SYS_WRITE, 1                    # write(fd, buf, len) -> bytes written | -errno
        .equ    SYS_EXIT, 2                     # exit(code) -> does not return
        .equ    SYS_YIELD, 3                    # yield() -> 0
        .equ    SYS_SBRK, 4                     # sbrk(increment) -> old break | -errno
        .equ    SYS_GETPID, 5                   # getpid() -> pid
        .equ    SYS_DISK_INFO, 6                # disk_info() -> sectors | -errno
        .equ    SYS_DISK_READ, 7                # disk_read(sector, buf) -> 0 | -errno
        .equ    SYS_DISK_WRITE, 8               # disk_write(sector, buf) -> 0 | -errno
        .equ    SYS_DISK_FLUSH, 9               # disk_flush() -> 0 | -errno
        .equ    SYS_READ, 10                    # read(fd 0, buf, len) -> bytes read, 0 at the end of input | -errno
        .equ    SYS_SLEEP, 11                   # sleep(time units) -> 0, once at least that much virtual time passed
        .equ    SYS_MEMINFO, 12                 # meminfo() -> a0 = pages available, a1 = pressure | -1, a2 = seq, a3 = limit
        .equ    SYS_PMEM_INFO, 13               # pmem_info() -> bytes of persistent memory | -errno
        .equ    SYS_PMEM_READ, 14               # pmem_read(offset, buf, len) -> len | -errno
        .equ    SYS_PMEM_WRITE, 15              # pmem_write(offset, buf, len) -> len | -errno (durable after pmem_flush)
        .equ    SYS_PMEM_FLUSH, 16              # pmem_flush(offset, len) -> 0 | -errno: those bytes are durable
        .equ    EIO, -5
        .equ    EBADF, -9
        .equ    ENOMEM, -12
        .equ    EFAULT, -14
        .equ    ENODEV, -19
        .equ    EINVAL, -22
        .equ    ENOSYS, -38
        .equ    DISK_SECTOR_BYTES, 512          # every disk transfer is one sector

# ---- VM exit codes (power off) ---------------------------------------------------------------
        .equ    EXIT_OK, 0                      # every program ended as expected
        .equ    EXIT_BAD_BOOTARGS, 1            # boot arguments could not be parsed
        .equ    EXIT_PROGRAM_FAILED, 2          # a program exited non-zero, was killed unexpectedly, or could not start
        .equ    EXIT_PANIC, 3                   # unexpected trap in supervisor mode
        .equ    EXIT_NO_DEVICE, 4               # a required device is missing from the device table
        .equ    EXIT_MACHINE_CHECK, 5           # a machine check on the kernel's own memory
