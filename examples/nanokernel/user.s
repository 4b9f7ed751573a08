# user.s — the user image: every user program (sieve, crc32, walker, ping, fault, record, wc,
# heap, reader, idle, kvcache, meminfo, pmkv) and their small library. The kernel copies the
# whole image to USER_BASE in each process and starts the program at its entry with
#   a0 = argument text (on the stack), a1 = its length, sp = just below the text.
# The code is position-independent: only pc-relative `la`, branches and `jal`, never a kernel
# address. Programs end with the exit system call.

        .equ    LCG_A, 1664525                  # x' = x * LCG_A + LCG_C (mod 2^32)
        .equ    LCG_C, 1013904223
        .equ    FNV_BASIS, 0x811c9dc5           # walker checksum: FNV-1a over the words read
        .equ    FNV_PRIME, 0x01000193
        .equ    CRC_POLY, 0xedb88320            # CRC-32 (IEEE 802.3, reflected)
        .equ    CRC_SEED, 0x12345678            # first LCG state of the crc32 buffer
        .equ    WALK_SEED, 1                    # first LCG state of the walker
        .equ    SIEVE_DEFAULT, 10000
        .equ    SIEVE_MAX, 0x10000000
        .equ    CRC_DEFAULT, 65536
        .equ    CRC_MAX, 0x04000000
        .equ    PING_DEFAULT, 3
        .equ    PING_MAX, 1000
        .equ    WALK_SEQ, 0
        .equ    WALK_RANDOM, 1
        .equ    WALK_STRIDE, 2
        .equ    WALK_HOT, 3

        .text
        .align  2
user_image_start:

        STRLIB  u_

# ---- System calls --------------------------------------------------------------------------

# u_write(a0 = buffer, a1 = length) -> a0 = bytes written or -errno
u_write:
        mv      a2, a1
        mv      a1, a0
        li      a0, 1
        li      t0, SYS_WRITE
        ecall
        ret

# u_exit(a0 = code): does not return
u_exit:
        li      t0, SYS_EXIT
        ecall
1:      j       1b

# u_sbrk(a0 = increment) -> a0 = old break or -errno
u_sbrk:
        li      t0, SYS_SBRK
        ecall
        ret

u_yield:
        li      t0, SYS_YIELD
        ecall
        ret

u_getpid:
        li      t0, SYS_GETPID
        ecall
        ret

# u_read(a0 = buffer, a1 = length) -> a0 = bytes read from the console, 0 at the end of input,
# or -errno. Waits while no input has arrived yet.
u_read:
        mv      a2, a1
        mv      a1, a0
        li      a0, 0
        li      t0, SYS_READ
        ecall
        ret

# ---- Output and errors ---------------------------------------------------------------------

# u_print(a0 = start, a1 = end)
u_print:
        sub     a1, a1, a0
        j       u_write

# u_puts(a0 = NUL-terminated string)
u_puts:
        mv      a1, a0
1:      lbu     t0, 0(a1)
        beqz    t0, u_print
        addi    a1, a1, 1
        j       1b

# u_print_line(a0 = line start, a1 = end): appends "\n" at end and writes the line
u_print_line:
        li      t0, '\n'
        sb      t0, 0(a1)
        addi    a1, a1, 1
        j       u_print

# u_bad_argument(a0 = program name, a1 = token start, a2 = token end): prints
# "<name>: bad argument '<token>'" (or "missing argument") and exits with code 1.
u_bad_argument:
        addi    sp, sp, -128
        mv      s0, a1
        mv      s1, a2
        mv      a1, a0
        mv      a0, sp
        call    u_fmt_str
        bne     s0, s1, 1f
        la      a1, u_msg_missing_arg
        call    u_fmt_str
        j       3f
1:      la      a1, u_msg_bad_arg
        call    u_fmt_str
        addi    t1, s0, 64              # at most 64 bytes of the token
        bgeu    t1, s1, 2f
        mv      s1, t1
2:      lbu     t0, 0(s0)
        sb      t0, 0(a0)
        addi    a0, a0, 1
        addi    s0, s0, 1
        bltu    s0, s1, 2b
        li      t0, 39                  # closing quote
        sb      t0, 0(a0)
        addi    a0, a0, 1
3:      mv      a1, a0
        mv      a0, sp
        call    u_print_line
        li      a0, 1
        j       u_exit

# u_out_of_memory(a0 = program name, a1 = bytes): "<name>: cannot allocate N bytes", exit 3
u_out_of_memory:
        addi    sp, sp, -128
        mv      s0, a1
        mv      a1, a0
        mv      a0, sp
        call    u_fmt_str
        la      a1, u_msg_no_memory
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_dec
        la      a1, u_msg_bytes
        call    u_fmt_str
        mv      a1, a0
        mv      a0, sp
        call    u_print_line
        li      a0, 3
        j       u_exit

# u_number_argument(a0 = cursor, a1 = end, a2 = default, a3 = maximum): parses the next token
# as a number in [0, maximum]; without a token the default. Returns a0 = value, a1 = cursor
# after the token, a2/a3 = the token's bounds, and t3 = 0 or -1 (malformed / out of range).
u_number_argument:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      a2, 4(sp)
        sw      a3, 8(sp)
        call    u_next_token
        sw      a0, 12(sp)
        sw      a1, 16(sp)
        beq     a0, a1, 1f
        call    u_parse_number
        mv      t3, a1
        bnez    t3, 2f
        lw      t0, 8(sp)
        bgeu    t0, a0, 2f
        li      t3, -1
        j       2f
1:      lw      a0, 4(sp)               # no token: the default
        li      t3, 0
2:      lw      a1, 16(sp)
        lw      a2, 12(sp)
        lw      a3, 16(sp)
        lw      ra, 0(sp)
        addi    sp, sp, 32
        ret

# u_no_more_arguments(a0 = cursor, a1 = end, a2 = program name): exits through u_bad_argument
# when another token follows; returns otherwise.
u_no_more_arguments:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a2, 4(sp)
        call    u_next_token
        beq     a0, a1, 1f
        mv      a2, a1
        mv      a1, a0
        lw      a0, 4(sp)
        j       u_bad_argument
1:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# ---- sieve [N]: counts the primes <= N (default 10000) with a byte array on the heap -------

sieve_main:
        add     s1, a0, a1              # s1 = end of the arguments
        mv      a1, s1
        li      a2, SIEVE_DEFAULT
        li      a3, SIEVE_MAX
        call    u_number_argument
        mv      s2, a0                  # s2 = N
        mv      s0, a1
        beqz    t3, 1f
        la      a0, u_name_sieve
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument
1:      mv      a0, s0
        mv      a1, s1
        la      a2, u_name_sieve
        call    u_no_more_arguments
        addi    a0, s2, 1
        call    u_sbrk
        bgez    a0, 2f
        la      a0, u_name_sieve
        addi    a1, s2, 1
        j       u_out_of_memory
2:      mv      s0, a0                  # s0 = flags[0..N], 0 = maybe prime (fresh heap is zero)
        li      t0, 2
3:      mul     t1, t0, t0
        bltu    s2, t1, 6f              # i * i > N: done
        add     t2, s0, t0
        lbu     t3, 0(t2)
        bnez    t3, 5f
        add     t2, s0, t1              # cross out i*i, i*i + i, ... <= N
        add     t3, s0, s2
        li      a2, 1
4:      sb      a2, 0(t2)
        add     t2, t2, t0
        bgeu    t3, t2, 4b
5:      addi    t0, t0, 1
        j       3b
6:      li      a3, 0                   # count the survivors in [2, N]
        li      t0, 2
7:      bltu    s2, t0, 8f
        add     t2, s0, t0
        lbu     t3, 0(t2)
        seqz    t3, t3
        add     a3, a3, t3
        addi    t0, t0, 1
        j       7b
8:      mv      s3, a3                  # "sieve: C primes up to N"
        addi    sp, sp, -64
        mv      a0, sp
        la      a1, u_msg_sieve
        call    u_fmt_str
        mv      a1, s3
        call    u_fmt_dec
        la      a1, u_msg_primes
        call    u_fmt_str
        mv      a1, s2
        call    u_fmt_dec
        mv      a1, a0
        mv      a0, sp
        call    u_print_line
        li      a0, 0
        j       u_exit

# ---- crc32 [N]: CRC-32 of N bytes (default 65536) of LCG output, table-driven ---------------

crc32_main:
        add     s1, a0, a1
        mv      a1, s1
        li      a2, CRC_DEFAULT
        li      a3, CRC_MAX
        call    u_number_argument
        mv      s2, a0                  # s2 = N
        mv      s0, a1
        beqz    t3, 1f
        la      a0, u_name_crc32
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument
1:      mv      a0, s0
        mv      a1, s1
        la      a2, u_name_crc32
        call    u_no_more_arguments
        addi    a0, s2, 1024            # the 256-word table, then the buffer
        call    u_sbrk
        bgez    a0, 2f
        la      a0, u_name_crc32
        addi    a1, s2, 1024
        j       u_out_of_memory
2:      mv      s3, a0                  # s3 = table
        li      a2, CRC_POLY
        li      t0, 0
3:      mv      t1, t0                  # table[n] = n shifted through the polynomial 8 times
        li      t2, 8
4:      andi    t3, t1, 1
        srli    t1, t1, 1
        beqz    t3, 5f
        xor     t1, t1, a2
5:      addi    t2, t2, -1
        bnez    t2, 4b
        slli    t3, t0, 2
        add     t3, s3, t3
        sw      t1, 0(t3)
        addi    t0, t0, 1
        li      t3, 256
        bltu    t0, t3, 3b
        addi    s0, s3, 1024            # s0 = buffer, s1 = its end
        add     s1, s0, s2
        li      t0, CRC_SEED            # buffer[i] = top byte of the i-th LCG state after the seed
        li      a0, LCG_A
        li      a1, LCG_C
        mv      t1, s0
6:      bgeu    t1, s1, 7f
        mul     t0, t0, a0
        add     t0, t0, a1
        srli    t2, t0, 24
        sb      t2, 0(t1)
        addi    t1, t1, 1
        j       6b
7:      li      t0, -1                  # crc = table[(crc ^ byte) & 0xff] ^ (crc >> 8)
        mv      t1, s0
8:      bgeu    t1, s1, 9f
        lbu     t2, 0(t1)
        xor     t2, t2, t0
        andi    t2, t2, 0xff
        slli    t2, t2, 2
        add     t2, s3, t2
        lw      t2, 0(t2)
        srli    t0, t0, 8
        xor     t0, t0, t2
        addi    t1, t1, 1
        j       8b
9:      not     s3, t0                  # "crc32: N bytes, crc 0x........"
        addi    sp, sp, -64
        mv      a0, sp
        la      a1, u_msg_crc
        call    u_fmt_str
        mv      a1, s2
        call    u_fmt_dec
        la      a1, u_msg_crc_bytes
        call    u_fmt_str
        mv      a1, s3
        call    u_fmt_hex
        mv      a1, a0
        mv      a0, sp
        call    u_print_line
        li      a0, 0
        j       u_exit

# ---- walker SIZE [PATTERN] [PASSES]: a memory walker over a heap region of SIZE bytes -------
# PATTERN: seq | random | stride N | stride:N | hot:HOT:PERCENT (default seq); PASSES default 1.
# A pass makes SIZE/64 accesses; access k (0-based over all passes) reads the word at offset
# off(k), folds it into an FNV-1a checksum and stores it back plus k + 1.
#   seq:    off(k) = 64 k mod SIZE
#   stride: off(k) = N k mod SIZE                       (N a multiple of 4)
#   random: x = LCG(x) from x = WALK_SEED; off = 4 * floor(x * (SIZE/4) / 2^32)
#   hot:    x = LCG(x); hot when floor(x * 100 / 2^32) < PERCENT; x = LCG(x); then
#           off = 4 * floor(x * (HOT/4) / 2^32) (hot), or HOT + 4 * floor(x * ((SIZE-HOT)/4) / 2^32)

        .equ    W_SIZE, 0               # stack frame of walker_main
        .equ    W_KIND, 4
        .equ    W_P1, 8                 # stride, or hot bytes
        .equ    W_P2, 12                # hot percent
        .equ    W_PASSES, 16
        .equ    W_TOTAL, 20
        .equ    W_SIZE_TOKEN, 24        # start, end of the size token
        .equ    W_PATTERN_TOKEN, 32     # start, end of the pattern (including stride's N)
        .equ    W_PASSES_TOKEN, 40      # start, end of the passes token
        .equ    W_LINE, 48              # output line buffer
        .equ    W_FRAME, 176

        # The access: read, checksum, write back (s0 = base, s1 = checksum, s2 = k + 1, a3 = prime).
        .macro  WALK_TOUCH off
        add     t1, s0, \off
        lw      t2, 0(t1)
        xor     s1, s1, t2
        mul     s1, s1, a3
        add     t2, t2, s2
        sw      t2, 0(t1)
        .endm

walker_main:
        addi    sp, sp, -W_FRAME
        add     s1, a0, a1              # s1 = end of the arguments
        mv      s0, a0                  # s0 = cursor
        sw      zero, W_KIND(sp)
        sw      zero, W_PATTERN_TOKEN(sp)
        sw      zero, W_PATTERN_TOKEN + 4(sp)
        sw      zero, W_PASSES_TOKEN(sp)
        sw      zero, W_PASSES_TOKEN + 4(sp)
        li      t0, 1
        sw      t0, W_PASSES(sp)
        mv      a1, s1                  # SIZE (required)
        call    u_next_token
        sw      a0, W_SIZE_TOKEN(sp)
        sw      a1, W_SIZE_TOKEN + 4(sp)
        beq     a0, a1, walker_bad_size
        mv      s0, a1
        call    u_parse_number
        bnez    a1, walker_bad_size
        sw      a0, W_SIZE(sp)
        mv      a0, s0                  # PATTERN (optional)
        mv      a1, s1
        call    u_next_token
        beq     a0, a1, walker_check
        sw      a0, W_PATTERN_TOKEN(sp)
        sw      a1, W_PATTERN_TOKEN + 4(sp)
        mv      s2, a0                  # s2, s3 = the token
        mv      s3, a1
        mv      s0, a1
        la      a2, u_str_seq
        call    u_token_is
        bnez    a0, walker_passes       # kind 0 already
        li      t0, WALK_RANDOM
        sw      t0, W_KIND(sp)
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_random
        call    u_token_is
        bnez    a0, walker_passes
        li      t0, WALK_STRIDE
        sw      t0, W_KIND(sp)
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_stride
        call    u_token_is
        beqz    a0, 1f
        mv      a0, s0                  # "stride N": N is the next token
        mv      a1, s1
        call    u_next_token
        sw      a1, W_PATTERN_TOKEN + 4(sp)
        beq     a0, a1, walker_bad_pattern
        mv      s0, a1
        j       2f
1:      mv      a0, s2                  # "stride:N"
        mv      a1, s3
        la      a2, u_str_stride_colon
        call    u_token_prefix
        beqz    a0, 3f
        mv      a1, s3
2:      call    u_parse_number
        bnez    a1, walker_bad_pattern
        sw      a0, W_P1(sp)
        j       walker_passes
3:      li      t0, WALK_HOT            # "hot:HOT:PERCENT"
        sw      t0, W_KIND(sp)
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_hot_colon
        call    u_token_prefix
        beqz    a0, walker_bad_pattern
        mv      s2, a0                  # s2 = start of HOT
        mv      a1, s3
        li      a2, ':'
        call    u_find_char
        beq     a0, s3, walker_bad_pattern
        mv      a1, a0
        sw      a0, W_P2(sp)            # (the colon, for a moment)
        mv      a0, s2
        call    u_parse_number
        bnez    a1, walker_bad_pattern
        sw      a0, W_P1(sp)
        lw      a0, W_P2(sp)
        addi    a0, a0, 1
        mv      a1, s3
        call    u_parse_number
        bnez    a1, walker_bad_pattern
        sw      a0, W_P2(sp)
walker_passes:                          # PASSES (optional)
        mv      a0, s0
        mv      a1, s1
        call    u_next_token
        sw      a0, W_PASSES_TOKEN(sp)
        sw      a1, W_PASSES_TOKEN + 4(sp)
        beq     a0, a1, walker_check
        mv      s0, a1
        call    u_parse_number
        bnez    a1, walker_bad_passes
        sw      a0, W_PASSES(sp)        # 0: endless
        mv      a0, s0
        mv      a1, s1
        la      a2, u_name_walker
        call    u_no_more_arguments

walker_check:
        lw      t0, W_SIZE(sp)          # SIZE >= 64 and a multiple of 4
        li      t1, 64
        bltu    t0, t1, walker_bad_size
        andi    t1, t0, 3
        bnez    t1, walker_bad_size
        lw      t1, W_KIND(sp)
        li      t2, WALK_STRIDE
        bne     t1, t2, 1f
        lw      t2, W_P1(sp)            # stride: N >= 4, a multiple of 4
        li      t3, 4
        bltu    t2, t3, walker_bad_pattern
        andi    t3, t2, 3
        bnez    t3, walker_bad_pattern
1:      li      t2, WALK_HOT
        bne     t1, t2, 2f
        lw      t2, W_P1(sp)            # hot: 4 <= HOT < SIZE, a multiple of 4; PERCENT <= 100
        li      t3, 4
        bltu    t2, t3, walker_bad_pattern
        andi    t3, t2, 3
        bnez    t3, walker_bad_pattern
        bgeu    t2, t0, walker_bad_pattern
        lw      t2, W_P2(sp)
        li      t3, 100
        bltu    t3, t2, walker_bad_pattern
2:      srli    t1, t0, 6               # total = PASSES * SIZE / 64, below 2^31
        lw      t2, W_PASSES(sp)
        bnez    t2, 4f
        li      t1, -1                  # PASSES 0: endless (no k + 1 is above 2^32 - 1 unsigned)
        j       5f
4:      mulhu   t3, t1, t2
        bnez    t3, walker_bad_passes
        mul     t1, t1, t2
        bltz    t1, walker_bad_passes
5:      sw      t1, W_TOTAL(sp)
        mv      a0, t0
        call    u_sbrk
        bgez    a0, 3f
        la      a0, u_name_walker
        lw      a1, W_SIZE(sp)
        j       u_out_of_memory
3:      mv      s0, a0                  # s0 = region
        li      s1, FNV_BASIS
        li      s2, 1                   # s2 = k + 1
        lw      s3, W_TOTAL(sp)
        li      a3, FNV_PRIME
        lw      t1, W_KIND(sp)
        li      t2, WALK_RANDOM
        beq     t1, t2, walk_random
        li      t2, WALK_STRIDE
        beq     t1, t2, walk_stride
        li      t2, WALK_HOT
        beq     t1, t2, walk_hot

walk_seq:
        li      t0, 0
        lw      a1, W_SIZE(sp)
        li      a2, 64
1:      WALK_TOUCH t0
        add     t0, t0, a2
        bltu    t0, a1, 2f
        sub     t0, t0, a1
2:      addi    s2, s2, 1
        bgeu    s3, s2, 1b
        j       walker_report

walk_stride:
        li      t0, 0
        lw      a1, W_SIZE(sp)
        lw      a2, W_P1(sp)
        remu    a2, a2, a1              # so that one subtraction wraps
1:      WALK_TOUCH t0
        add     t0, t0, a2
        bltu    t0, a1, 2f
        sub     t0, t0, a1
2:      addi    s2, s2, 1
        bgeu    s3, s2, 1b
        j       walker_report

walk_random:
        li      t0, WALK_SEED
        li      a0, LCG_A
        li      a1, LCG_C
        lw      a2, W_SIZE(sp)
        srli    a2, a2, 2               # a2 = words in the region
1:      mul     t0, t0, a0
        add     t0, t0, a1
        mulhu   t3, t0, a2
        slli    t3, t3, 2
        WALK_TOUCH t3
        addi    s2, s2, 1
        bgeu    s3, s2, 1b
        j       walker_report

walk_hot:
        li      t0, WALK_SEED
        li      a0, LCG_A
        li      a1, LCG_C
        lw      a2, W_P1(sp)
        srli    a2, a2, 2               # a2 = words in the hot region
        lw      gp, W_SIZE(sp)
        lw      t1, W_P1(sp)
        sub     gp, gp, t1
        srli    gp, gp, 2               # gp = words in the cold region
        lw      ra, W_P2(sp)            # ra = percent
1:      mul     t0, t0, a0
        add     t0, t0, a1
        li      t3, 100
        mulhu   t3, t0, t3              # t3 = 0..99
        mul     t0, t0, a0
        add     t0, t0, a1
        bgeu    t3, ra, 2f
        mulhu   t3, t0, a2
        j       3f
2:      mulhu   t3, t0, gp
        add     t3, t3, a2
3:      slli    t3, t3, 2
        WALK_TOUCH t3
        addi    s2, s2, 1
        bgeu    s3, s2, 1b

walker_report:                          # "walker: SIZE bytes, PATTERN, P passes, T accesses, checksum 0x..."
        mv      s3, s1
        addi    a0, sp, W_LINE
        la      a1, u_msg_walker
        call    u_fmt_str
        lw      a1, W_SIZE(sp)
        call    u_fmt_dec
        la      a1, u_msg_walker_bytes
        call    u_fmt_str
        lw      t1, W_KIND(sp)
        la      a1, u_str_seq
        beqz    t1, 1f
        la      a1, u_str_random
        li      t2, WALK_RANDOM
        beq     t1, t2, 1f
        li      t2, WALK_STRIDE
        bne     t1, t2, 2f
        la      a1, u_str_stride_colon
        call    u_fmt_str
        lw      a1, W_P1(sp)
        call    u_fmt_dec
        j       3f
2:      la      a1, u_str_hot_colon
        call    u_fmt_str
        lw      a1, W_P1(sp)
        call    u_fmt_dec
        li      t0, ':'
        sb      t0, 0(a0)
        addi    a0, a0, 1
        lw      a1, W_P2(sp)
        call    u_fmt_dec
        j       3f
1:      call    u_fmt_str
3:      la      a1, u_msg_comma
        call    u_fmt_str
        lw      a1, W_PASSES(sp)
        call    u_fmt_dec
        lw      t0, W_PASSES(sp)
        la      a1, u_msg_pass
        li      t1, 1
        beq     t0, t1, 4f
        la      a1, u_msg_passes
4:      call    u_fmt_str
        lw      a1, W_TOTAL(sp)
        call    u_fmt_dec
        la      a1, u_msg_accesses
        call    u_fmt_str
        mv      a1, s3
        call    u_fmt_hex
        mv      a1, a0
        addi    a0, sp, W_LINE
        call    u_print_line
        li      a0, 0
        j       u_exit

walker_bad_size:
        lw      a1, W_SIZE_TOKEN(sp)
        lw      a2, W_SIZE_TOKEN + 4(sp)
        j       1f
walker_bad_pattern:
        lw      a1, W_PATTERN_TOKEN(sp)
        lw      a2, W_PATTERN_TOKEN + 4(sp)
        j       1f
walker_bad_passes:
        lw      a1, W_PASSES_TOKEN(sp)
        lw      a2, W_PASSES_TOKEN + 4(sp)
1:      la      a0, u_name_walker
        j       u_bad_argument

# ---- ping [N]: N times (default 3): print "ping PID: i/N", then yield -----------------------

ping_main:
        add     s1, a0, a1
        mv      a1, s1
        li      a2, PING_DEFAULT
        li      a3, PING_MAX
        call    u_number_argument
        mv      s2, a0                  # s2 = N
        mv      s0, a1
        beqz    t3, 1f
        la      a0, u_name_ping
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument
1:      mv      a0, s0
        mv      a1, s1
        la      a2, u_name_ping
        call    u_no_more_arguments
        call    u_getpid
        mv      s1, a0                  # s1 = pid
        li      s3, 1                   # s3 = i
        addi    sp, sp, -64
2:      bltu    s2, s3, 3f
        mv      a0, sp
        la      a1, u_msg_ping
        call    u_fmt_str
        mv      a1, s1
        call    u_fmt_dec
        la      a1, u_msg_colon
        call    u_fmt_str
        mv      a1, s3
        call    u_fmt_dec
        li      t0, '/'
        sb      t0, 0(a0)
        addi    a0, a0, 1
        mv      a1, s2
        call    u_fmt_dec
        mv      a1, a0
        mv      a0, sp
        call    u_print_line
        call    u_yield
        addi    s3, s3, 1
        j       2b
3:      li      a0, 0
        j       u_exit

# ---- fault [KIND]: misbehaves on purpose (default store) -------------------------------------
#   store   — stores to address 0 (a kernel page): store page fault, killed
#   load    — loads from kernel text at 0x1000: load page fault, killed
#   exec    — jumps into its heap, which is not executable: instruction page fault, killed
#   illegal — writes ptbr from user mode: illegal instruction, killed
#   shrink  — stores to a heap page after sbrk gave it back: store page fault, killed
#   badptr  — passes bad pointers to write and read and a huge sbrk: errors come back, exits with 0

fault_main:
        add     s1, a0, a1
        mv      a1, s1
        call    u_next_token
        mv      s2, a0                  # s2, s3 = the kind token
        mv      s3, a1
        mv      a0, a1
        mv      a1, s1
        la      a2, u_name_fault
        call    u_no_more_arguments
        beq     s2, s3, fault_store     # default
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_store
        call    u_token_is
        bnez    a0, fault_store
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_load
        call    u_token_is
        bnez    a0, fault_load
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_exec
        call    u_token_is
        bnez    a0, fault_exec
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_illegal
        call    u_token_is
        bnez    a0, fault_illegal
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_badptr
        call    u_token_is
        bnez    a0, fault_badptr
        mv      a0, s2
        mv      a1, s3
        la      a2, u_str_shrink
        call    u_token_is
        bnez    a0, fault_shrink
        la      a0, u_name_fault
        mv      a1, s2
        mv      a2, s3
        j       u_bad_argument

fault_store:
        la      a0, u_msg_fault_store
        call    u_puts
fault_store_insn:
        sw      zero, 0(zero)
        j       fault_survived

fault_load:
        la      a0, u_msg_fault_load
        call    u_puts
        li      t0, 0x1000
fault_load_insn:
        lw      t1, 0(t0)
        j       fault_survived

fault_exec:
        li      a0, PAGE_SIZE
        call    u_sbrk
        mv      s0, a0
        sw      zero, 0(s0)             # the page exists (read + write, no execute)
        la      a0, u_msg_fault_exec
        call    u_puts
fault_exec_insn:
        jr      s0
        j       fault_survived

fault_illegal:
        la      a0, u_msg_fault_illegal
        call    u_puts
fault_illegal_insn:
        csrw    ptbr, zero
        j       fault_survived

fault_shrink:
        li      a0, 2 * PAGE_SIZE
        call    u_sbrk
        mv      s0, a0
        sw      zero, 0(s0)             # both pages are mapped and in the TLB now
        sw      zero, PAGE_SIZE(s0)
        li      a0, -2 * PAGE_SIZE
        call    u_sbrk                  # ...and given back
        la      a0, u_msg_fault_shrink
        call    u_puts
fault_shrink_insn:
        sw      zero, PAGE_SIZE(s0)
        j       fault_survived

fault_badptr:
        addi    sp, sp, -128
        li      s0, 0x1000              # kernel text
        mv      a0, s0
        li      a1, 16
        call    u_write
        mv      a1, s0
        la      a2, u_msg_from
        call    fault_report
        li      s0, 0x50000000          # user range, but above the break: not mapped
        mv      a0, s0
        li      a1, 16
        call    u_write
        mv      a1, s0
        la      a2, u_msg_from
        call    fault_report
        li      s0, 0x7fffffff          # far beyond the heap limit
        mv      a0, s0
        call    u_sbrk
        mv      a1, s0
        la      a2, u_msg_sbrk
        call    fault_report
        li      s0, 0x1000              # read into kernel text
        mv      a0, s0
        li      a1, 16
        call    u_read
        mv      a1, s0
        la      a2, u_msg_into
        call    fault_report
        li      s0, USER_BASE           # read into its own image: mapped, but not writable
        mv      a0, s0
        li      a1, 16
        call    u_read
        mv      a1, s0
        la      a2, u_msg_into
        call    fault_report
        li      a0, 0
        j       u_exit

# fault_report(a0 = result, a1 = argument, a2 = text): "fault: <text>0x<argument> returned <result>"
fault_report:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        addi    a0, sp, 16              # the caller's line buffer
        la      a1, u_msg_fault
        call    u_fmt_str
        mv      a1, a2
        call    u_fmt_str
        lw      a1, 8(sp)
        call    u_fmt_hex
        la      a1, u_msg_returned
        call    u_fmt_str
        lw      a1, 4(sp)
        call    u_fmt_sdec
        mv      a1, a0
        addi    a0, sp, 16
        call    u_print_line
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

fault_survived:
        la      a0, u_msg_survived
        call    u_puts
        li      a0, 1
        j       u_exit

# ---- Strings of the user image -------------------------------------------------------------
u_name_sieve:           .asciz "sieve"
u_name_crc32:           .asciz "crc32"
u_name_walker:          .asciz "walker"
u_name_ping:            .asciz "ping"
u_name_fault:           .asciz "fault"
u_msg_bad_arg:          .asciz ": bad argument '"
u_msg_missing_arg:      .asciz ": missing argument"
u_msg_no_memory:        .asciz ": cannot allocate "
u_msg_bytes:            .asciz " bytes"
u_msg_sieve:            .asciz "sieve: "
u_msg_primes:           .asciz " primes up to "
u_msg_crc:              .asciz "crc32: "
u_msg_crc_bytes:        .asciz " bytes, crc "
u_msg_walker:           .asciz "walker: "
u_msg_walker_bytes:     .asciz " bytes, "
u_msg_comma:            .asciz ", "
u_msg_pass:             .asciz " pass, "
u_msg_passes:           .asciz " passes, "
u_msg_accesses:         .asciz " accesses, checksum "
u_msg_ping:             .asciz "ping "
u_msg_colon:            .asciz ": "
u_str_seq:              .asciz "seq"
u_str_random:           .asciz "random"
u_str_stride:           .asciz "stride"
u_str_stride_colon:     .asciz "stride:"
u_str_hot_colon:        .asciz "hot:"
u_str_store:            .asciz "store"
u_str_load:             .asciz "load"
u_str_exec:             .asciz "exec"
u_str_illegal:          .asciz "illegal"
u_str_badptr:           .asciz "badptr"
u_str_shrink:           .asciz "shrink"
u_msg_fault_store:      .asciz "fault: storing to 0x00000000\n"
u_msg_fault_load:       .asciz "fault: loading from kernel memory at 0x00001000\n"
u_msg_fault_exec:       .asciz "fault: jumping into the heap, which is not executable\n"
u_msg_fault_illegal:    .asciz "fault: writing ptbr from user mode\n"
u_msg_fault_shrink:     .asciz "fault: storing to heap memory given back with sbrk\n"
u_msg_fault:            .asciz "fault: "
u_msg_from:             .asciz "write from "
u_msg_sbrk:             .asciz "sbrk of "
u_msg_into:             .asciz "read into "
u_msg_returned:         .asciz " returned "
u_msg_survived:         .asciz "fault: still running after the fault\n"

# ---- record COMMAND...: a key-value store on the disk ---------------------------------------
#   put KEY VALUE | get KEY | add KEY N, any number of them, in order.
# One record per 512-byte sector: magic "REC1", key length, value length, checksum (FNV-1a of
# bytes 0-11 then 16-511), key (at most 64 bytes), value (at most 432 bytes), zeros. A key lives
# in the first of REC_PROBES sectors from its home sector (FNV-1a of the key mod the disk size)
# that holds it or is free (no magic). Every write is flushed and read back.

        .equ    REC_MAGIC, 0x31434552           # "REC1"
        .equ    REC_KEY_LEN, 4
        .equ    REC_VALUE_LEN, 8
        .equ    REC_CHECKSUM, 12
        .equ    REC_KEY, 16
        .equ    REC_VALUE, 80
        .equ    REC_KEY_MAX, REC_VALUE - REC_KEY
        .equ    REC_VALUE_MAX, DISK_SECTOR_BYTES - REC_VALUE
        .equ    REC_PROBES, 8
        .equ    REC_FOUND, 0                    # record_find results
        .equ    REC_FREE, 1
        .equ    REC_DAMAGED, 2
        .equ    REC_FULL, 3
        # record_main's frame (s3): the sector buffer, a line, the current command's words
        .equ    RF_BUFFER, 0
        .equ    RF_LINE, DISK_SECTOR_BYTES
        .equ    RF_KEY, 1152                    # key start, end
        .equ    RF_KEY_END, 1156
        .equ    RF_VALUE, 1160                  # value start, end
        .equ    RF_VALUE_END, 1164
        .equ    RF_SECTOR, 1168
        .equ    RF_COMMAND, 1172                # the command's name (a string)
        .equ    RF_NUMBER, 1176
        .equ    RF_DIGITS, 1184                 # a number formatted for add (16 bytes)
        .equ    RF_BYTES, 1200

        .align  2
record_main:
        add     s1, a0, a1              # s1 = end of the arguments
        mv      s0, a0                  # s0 = cursor
        addi    sp, sp, -RF_BYTES
        mv      s3, sp                  # s3 = the frame
        li      t0, SYS_DISK_INFO
        ecall
        bgtz    a0, 1f
        la      a0, u_msg_no_disk
        call    u_puts
        li      a0, 2
        j       u_exit
1:      mv      s2, a0                  # s2 = sectors on the disk
record_next:
        mv      a0, s0
        mv      a1, s1
        call    u_next_token
        beq     a0, a1, record_done
        mv      s0, a1
        sw      a0, RF_KEY(s3)          # the command word, until the key replaces it
        sw      a1, RF_KEY_END(s3)
        la      a2, u_str_put
        call    u_token_is
        bnez    a0, record_put
        lw      a0, RF_KEY(s3)
        lw      a1, RF_KEY_END(s3)
        la      a2, u_str_get
        call    u_token_is
        bnez    a0, record_get
        lw      a0, RF_KEY(s3)
        lw      a1, RF_KEY_END(s3)
        la      a2, u_str_add
        call    u_token_is
        bnez    a0, record_add
        lw      a1, RF_KEY(s3)          # not a command
        lw      a2, RF_KEY_END(s3)
record_bad_argument:                    # (a1, a2 = the word)
        la      a0, u_name_record
        j       u_bad_argument
record_done:
        li      a0, 0
        j       u_exit

# put KEY VALUE: "record: put KEY = VALUE"
record_put:
        la      t0, u_str_put
        sw      t0, RF_COMMAND(s3)
        li      a2, REC_KEY_MAX
        call    record_word
        sw      a0, RF_KEY(s3)
        sw      a1, RF_KEY_END(s3)
        li      a2, REC_VALUE_MAX
        call    record_word
        sw      a0, RF_VALUE(s3)
        sw      a1, RF_VALUE_END(s3)
        call    record_locate
        mv      a0, a1
        lw      a1, RF_VALUE(s3)
        lw      a2, RF_VALUE_END(s3)
        call    record_store
        call    record_report
        j       record_next

# get KEY: "record: get KEY = VALUE" or "record: get KEY: not found"
record_get:
        la      t0, u_str_get
        sw      t0, RF_COMMAND(s3)
        li      a2, REC_KEY_MAX
        call    record_word
        sw      a0, RF_KEY(s3)
        sw      a1, RF_KEY_END(s3)
        call    record_locate
        bnez    a0, 1f
        la      a0, u_msg_not_found
        call    record_note
        j       record_next
1:      addi    t0, s3, REC_VALUE       # the value, in the buffer record_locate read
        lw      t1, REC_VALUE_LEN(s3)
        add     t1, t0, t1
        sw      t0, RF_VALUE(s3)
        sw      t1, RF_VALUE_END(s3)
        call    record_report
        j       record_next

# add KEY N: the value (a number; none = 0) plus N, "record: add KEY = SUM"
record_add:
        la      t0, u_str_add
        sw      t0, RF_COMMAND(s3)
        li      a2, REC_KEY_MAX
        call    record_word
        sw      a0, RF_KEY(s3)
        sw      a1, RF_KEY_END(s3)
        li      a2, 16
        call    record_word
        sw      a0, RF_VALUE(s3)        # (for the message if it is not a number)
        sw      a1, RF_VALUE_END(s3)
        call    u_parse_number
        beqz    a1, 1f
        lw      a1, RF_VALUE(s3)
        lw      a2, RF_VALUE_END(s3)
        j       record_bad_argument
1:      sw      a0, RF_NUMBER(s3)
        call    record_locate
        sw      a1, RF_SECTOR(s3)
        li      t0, 0
        beqz    a0, 2f                  # no record yet: 0
        addi    a0, s3, REC_VALUE
        lw      a1, REC_VALUE_LEN(s3)
        add     a1, a0, a1
        call    u_parse_number
        mv      t0, a0
        beqz    a1, 2f
        la      a0, u_msg_not_number
        j       record_fail
2:      lw      a1, RF_NUMBER(s3)
        add     a1, t0, a1
        addi    a0, s3, RF_DIGITS
        call    u_fmt_dec
        addi    t0, s3, RF_DIGITS
        sw      t0, RF_VALUE(s3)
        sw      a0, RF_VALUE_END(s3)
        lw      a0, RF_SECTOR(s3)
        lw      a1, RF_VALUE(s3)
        lw      a2, RF_VALUE_END(s3)
        call    record_store
        call    record_report
        j       record_next

# record_word(a2 = longest length) -> a0, a1 = the next word (s0 moves past it); exits through
# record_bad_argument when there is none or it is longer.
record_word:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a2, 4(sp)
        mv      a0, s0
        mv      a1, s1
        call    u_next_token
        mv      s0, a1
        beq     a0, a1, 1f              # missing
        sub     t0, a1, a0
        lw      t1, 4(sp)
        bltu    t1, t0, 1f              # too long
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
1:      mv      a2, a1
        mv      a1, a0
        j       record_bad_argument

# record_locate() -> a0 = 1 (the key's record is in the buffer) or 0 (not there), a1 = its
# sector or the free one to use. Exits with a message when the disk is full around the key's
# home, a record is damaged, or the disk fails.
record_locate:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        call    record_find
        li      t0, REC_FOUND
        beq     a0, t0, 1f
        li      t0, REC_FREE
        beq     a0, t0, 2f
        bltz    a0, 3f
        la      t1, u_msg_full
        li      t0, REC_FULL
        beq     a0, t0, 4f
        la      t1, u_msg_damaged
4:      mv      a0, t1
        j       record_fail
3:      la      a0, u_msg_disk_error
        j       record_fail
1:      li      a0, 1
        j       5f
2:      li      a0, 0
5:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# record_find() -> a0 = REC_FOUND / REC_FREE / REC_DAMAGED / REC_FULL or -errno, a1 = the sector.
# Probes from the key's home sector; the last sector read stays in the buffer.
record_find:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        li      a0, FNV_BASIS
        lw      a1, RF_KEY(s3)
        lw      a2, RF_KEY_END(s3)
        call    record_fnv
        remu    t0, a0, s2
        sw      t0, RF_SECTOR(s3)
        sw      zero, 4(sp)             # probes so far
1:      lw      t0, 4(sp)
        li      t1, REC_PROBES
        bgeu    t0, t1, 8f
        bgeu    t0, s2, 8f              # a small disk: every sector was tried
        addi    t0, t0, 1
        sw      t0, 4(sp)
        lw      a0, RF_SECTOR(s3)
        mv      a1, s3
        li      t0, SYS_DISK_READ
        ecall
        bnez    a0, 9f
        lw      t0, 0(s3)
        li      t1, REC_MAGIC
        bne     t0, t1, 7f              # no record: a free sector
        mv      a0, s3
        call    record_checksum
        lw      t0, REC_CHECKSUM(s3)
        bne     a0, t0, 6f
        lw      t0, REC_KEY_LEN(s3)
        li      t1, REC_KEY_MAX
        bltu    t1, t0, 6f
        lw      t2, REC_VALUE_LEN(s3)
        li      t1, REC_VALUE_MAX
        bltu    t1, t2, 6f
        lw      a1, RF_KEY(s3)          # the same key?
        lw      a2, RF_KEY_END(s3)
        sub     t1, a2, a1
        bne     t0, t1, 4f
        addi    t2, s3, REC_KEY
2:      beq     a1, a2, 3f
        lbu     t0, 0(a1)
        lbu     t1, 0(t2)
        bne     t0, t1, 4f
        addi    a1, a1, 1
        addi    t2, t2, 1
        j       2b
3:      li      a0, REC_FOUND
        j       10f
4:      lw      t0, RF_SECTOR(s3)       # another key: the next sector, wrapping around
        addi    t0, t0, 1
        bltu    t0, s2, 5f
        li      t0, 0
5:      sw      t0, RF_SECTOR(s3)
        j       1b
6:      li      a0, REC_DAMAGED
        j       10f
7:      li      a0, REC_FREE
        j       10f
8:      li      a0, REC_FULL
10:     lw      a1, RF_SECTOR(s3)
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# record_store(a0 = sector, a1 = value start, a2 = value end): writes the record of the current
# key, flushes, reads it back and checks it; exits with a message when that fails.
record_store:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        mv      t0, s3                  # a clean sector
        addi    t1, s3, DISK_SECTOR_BYTES
1:      sw      zero, 0(t0)
        addi    t0, t0, 4
        bltu    t0, t1, 1b
        li      t0, REC_MAGIC
        sw      t0, 0(s3)
        sub     t0, a2, a1
        sw      t0, REC_VALUE_LEN(s3)
        addi    t1, s3, REC_VALUE
2:      bgeu    a1, a2, 3f
        lbu     t0, 0(a1)
        sb      t0, 0(t1)
        addi    a1, a1, 1
        addi    t1, t1, 1
        j       2b
3:      lw      a1, RF_KEY(s3)
        lw      a2, RF_KEY_END(s3)
        sub     t0, a2, a1
        sw      t0, REC_KEY_LEN(s3)
        addi    t1, s3, REC_KEY
4:      bgeu    a1, a2, 5f
        lbu     t0, 0(a1)
        sb      t0, 0(t1)
        addi    a1, a1, 1
        addi    t1, t1, 1
        j       4b
5:      mv      a0, s3
        call    record_checksum
        sw      a0, REC_CHECKSUM(s3)
        sw      a0, 8(sp)
        lw      a0, 4(sp)
        mv      a1, s3
        li      t0, SYS_DISK_WRITE
        ecall
        bnez    a0, 8f
        li      t0, SYS_DISK_FLUSH
        ecall
        bnez    a0, 8f
        sw      zero, 0(s3)             # forget it, then read it back
        sw      zero, REC_CHECKSUM(s3)
        lw      a0, 4(sp)
        mv      a1, s3
        li      t0, SYS_DISK_READ
        ecall
        bnez    a0, 8f
        mv      a0, s3
        call    record_checksum
        lw      t0, REC_CHECKSUM(s3)
        bne     a0, t0, 7f
        lw      t0, 8(sp)
        bne     a0, t0, 7f
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
7:      la      a0, u_msg_mismatch
        j       record_fail
8:      la      a0, u_msg_disk_error
        j       record_fail

# record_checksum(a0 = sector buffer) -> a0 = FNV-1a of bytes 0-11, then 16-511
record_checksum:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        mv      a1, a0
        addi    a2, a0, REC_CHECKSUM
        li      a0, FNV_BASIS
        call    record_fnv
        lw      t0, 4(sp)
        addi    a1, t0, REC_KEY
        addi    a2, t0, DISK_SECTOR_BYTES
        call    record_fnv
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# record_fnv(a0 = hash, a1 = start, a2 = end) -> a0 = the hash continued over the bytes (FNV-1a)
record_fnv:
        li      t1, FNV_PRIME
1:      bgeu    a1, a2, 2f
        lbu     t0, 0(a1)
        xor     a0, a0, t0
        mul     a0, a0, t1
        addi    a1, a1, 1
        j       1b
2:      ret

# record_report(): "record: COMMAND KEY = VALUE"
record_report:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        call    record_line_start
        la      a1, u_msg_equals
        call    u_fmt_str
        lw      a1, RF_VALUE(s3)
        lw      a2, RF_VALUE_END(s3)
        call    record_fmt_bytes
        mv      a1, a0
        addi    a0, s3, RF_LINE
        call    u_print_line
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# record_note(a0 = message): "record: COMMAND KEY<message>"
record_note:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        call    record_line_start
        lw      a1, 4(sp)
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, RF_LINE
        call    u_print_line
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# record_fail(a0 = message): record_note, then exit with code 2
record_fail:
        call    record_note
        li      a0, 2
        j       u_exit

# record_line_start() -> a0 = end of "record: COMMAND KEY" in the frame's line
record_line_start:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        addi    a0, s3, RF_LINE
        la      a1, u_msg_record
        call    u_fmt_str
        lw      a1, RF_COMMAND(s3)
        call    u_fmt_str
        la      a1, u_msg_space
        call    u_fmt_str
        lw      a1, RF_KEY(s3)
        lw      a2, RF_KEY_END(s3)
        call    record_fmt_bytes
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# record_fmt_bytes(a0 = dst, a1 = start, a2 = end) -> a0 = dst after the bytes
record_fmt_bytes:
1:      bgeu    a1, a2, 2f
        lbu     t0, 0(a1)
        sb      t0, 0(a0)
        addi    a0, a0, 1
        addi    a1, a1, 1
        j       1b
2:      ret

u_name_record:          .asciz "record"
u_str_put:              .asciz "put"
u_str_get:              .asciz "get"
u_str_add:              .asciz "add"
u_msg_record:           .asciz "record: "
u_msg_space:            .asciz " "
u_msg_equals:           .asciz " = "
u_msg_no_disk:          .asciz "record: no disk\n"
u_msg_not_found:        .asciz ": not found"
u_msg_not_number:       .asciz ": the value is not a number"
u_msg_full:             .asciz ": no free sector near its home"
u_msg_damaged:          .asciz ": damaged record"
u_msg_disk_error:       .asciz ": disk error"
u_msg_mismatch:         .asciz ": read back differently"

# ---- wc: counts the lines, words and bytes of the console input, read to its end -----------
# A line is a newline byte; a word is a run of bytes above 0x20 (like a boot-argument token).
# Prints "wc: L lines, W words, B bytes" (singular for 1) and exits with 0; a read error prints
# "wc: read failed with -N" and exits with 2.

        .equ    WC_BUFFER, 256

        .align  2
wc_main:
        add     a1, a0, a1
        la      a2, u_name_wc
        call    u_no_more_arguments     # wc takes no argument
        addi    sp, sp, -WC_BUFFER
        li      s0, 0                   # s0 = lines
        li      s1, 0                   # s1 = words
        li      s2, 0                   # s2 = bytes
        li      s3, 0                   # s3 = 1 inside a word
1:      mv      a0, sp
        li      a1, WC_BUFFER
        call    u_read
        bltz    a0, 6f
        beqz    a0, 5f                  # the end of input
        add     s2, s2, a0
        mv      t0, sp
        add     t1, sp, a0
2:      lbu     t2, 0(t0)
        li      t3, '\n'
        bne     t2, t3, 3f
        addi    s0, s0, 1
3:      sltiu   t3, t2, 33
        beqz    t3, 31f
        li      s3, 0                   # a blank ends a word
        j       4f
31:     bnez    s3, 4f
        li      s3, 1                   # the first byte of a word
        addi    s1, s1, 1
4:      addi    t0, t0, 1
        bltu    t0, t1, 2b
        j       1b
5:      mv      a0, sp                  # "wc: L lines, W words, B bytes"
        la      a1, u_msg_wc
        call    u_fmt_str
        mv      a1, s0
        la      a2, u_str_line
        call    wc_count
        la      a1, u_msg_comma
        call    u_fmt_str
        mv      a1, s1
        la      a2, u_str_word
        call    wc_count
        la      a1, u_msg_comma
        call    u_fmt_str
        mv      a1, s2
        la      a2, u_str_byte
        call    wc_count
        mv      a1, a0
        mv      a0, sp
        call    u_print_line
        li      a0, 0
        j       u_exit
6:      mv      s0, a0                  # "wc: read failed with -N"
        mv      a0, sp
        la      a1, u_msg_wc_failed
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_sdec
        mv      a1, a0
        mv      a0, sp
        call    u_print_line
        li      a0, 2
        j       u_exit

# wc_count(a0 = dst, a1 = count, a2 = noun) -> a0 = dst after "N noun", plus "s" unless N = 1
wc_count:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a1, 4(sp)
        sw      a2, 8(sp)
        call    u_fmt_dec
        la      a1, u_msg_space
        call    u_fmt_str
        lw      a1, 8(sp)
        call    u_fmt_str
        lw      t0, 4(sp)
        li      t1, 1
        beq     t0, t1, 1f
        li      t1, 's'
        sb      t1, 0(a0)
        addi    a0, a0, 1
1:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

u_name_wc:              .asciz "wc"
u_msg_wc:               .asciz "wc: "
u_msg_wc_failed:        .asciz "wc: read failed with "
u_str_line:             .asciz "line"
u_str_word:             .asciz "word"
u_str_byte:             .asciz "byte"
# ---- heap SIZE [STEPS] [ROUNDS]: a heap that grows and shrinks -------------------------------
# Each round grows the heap from its start to SIZE bytes in STEPS sbrk calls (SIZE/STEPS pages
# each, the last step the rest), writing a word to every new page (page p of round r gets
# p * HEAP_MIX + r); then it shrinks back in STEPS negative sbrk calls, checking each page's word
# before giving it back. ROUNDS (default 1) rounds; 0 = forever. Prints
# "heap: SIZE bytes, STEPS steps, ROUNDS rounds, P pages touched" (singular for 1) and exits
# with 0; a page that
# lost its word: "heap: page P of round R lost its contents", exit 2.

        .equ    HEAP_MIX, 0x9e3779b1
        .equ    HEAP_STEPS_DEFAULT, 4
        .equ    HEAP_MAX_BYTES, HEAP_LIMIT - HEAP_BASE
        .equ    HP_PAGES, 0                     # the frame: pages in SIZE
        .equ    HP_STEPS, 4
        .equ    HP_ROUNDS, 8
        .equ    HP_ROUND, 12                    # the current round (1, 2, …)
        .equ    HP_CHUNK, 16                    # pages per step (but the last)
        .equ    HP_BASE, 20                     # the heap's start
        .equ    HP_TOP, 24                      # pages in the heap now
        .equ    HP_STEP, 28
        .equ    HP_TOUCHED, 32
        .equ    HP_LINE, 64
        .equ    HP_BYTES, 192

        .align  2
heap_main:
        add     s1, a0, a1              # s1 = end of the arguments
        addi    sp, sp, -HP_BYTES
        mv      s3, sp                  # s3 = the frame
        mv      a1, s1
        li      a2, 0
        li      a3, HEAP_MAX_BYTES
        call    u_number_argument       # SIZE: a multiple of 4096, at least one page
        mv      s0, a1
        bnez    t3, heap_bad
        beqz    a0, heap_bad
        li      t0, PAGE_SIZE - 1
        and     t0, a0, t0
        bnez    t0, heap_bad
        srli    a0, a0, PAGE_SHIFT
        sw      a0, HP_PAGES(s3)
        mv      a0, s0
        mv      a1, s1
        li      a2, HEAP_STEPS_DEFAULT
        lw      a3, HP_PAGES(s3)
        call    u_number_argument       # STEPS: 1 … pages
        mv      s0, a1
        bnez    t3, heap_bad
        beqz    a0, heap_bad
        sw      a0, HP_STEPS(s3)
        mv      a0, s0
        mv      a1, s1
        li      a2, 1
        li      a3, 0x7fffffff
        call    u_number_argument       # ROUNDS: 0 = forever
        mv      s0, a1
        bnez    t3, heap_bad
        sw      a0, HP_ROUNDS(s3)
        mv      a0, s0
        mv      a1, s1
        la      a2, u_name_heap
        call    u_no_more_arguments
        lw      t0, HP_PAGES(s3)
        lw      t1, HP_STEPS(s3)
        divu    t0, t0, t1
        sw      t0, HP_CHUNK(s3)
        li      a0, 0
        call    u_sbrk
        sw      a0, HP_BASE(s3)
        li      t0, 1
        sw      t0, HP_ROUND(s3)
        sw      zero, HP_TOUCHED(s3)

heap_round:
        sw      zero, HP_TOP(s3)
        sw      zero, HP_STEP(s3)
1:      call    heap_step_pages         # grow: a0 = pages of this step
        mv      s0, a0
        slli    a0, a0, PAGE_SHIFT
        call    u_sbrk
        bgez    a0, 2f
        la      a0, u_name_heap
        slli    a1, s0, PAGE_SHIFT
        j       u_out_of_memory
2:      lw      t0, HP_TOP(s3)          # write page p's word, p = top … top + n - 1
        add     s0, t0, s0              # s0 = the new top
        lw      t2, HP_ROUND(s3)
        li      t3, HEAP_MIX
3:      bgeu    t0, s0, 4f
        mul     t1, t0, t3
        add     t1, t1, t2
        slli    a0, t0, PAGE_SHIFT
        lw      a1, HP_BASE(s3)
        add     a0, a0, a1
        sw      t1, 0(a0)
        addi    t0, t0, 1
        j       3b
4:      sw      s0, HP_TOP(s3)
        lw      t0, HP_STEP(s3)
        addi    t0, t0, 1
        sw      t0, HP_STEP(s3)
        lw      t1, HP_STEPS(s3)
        bltu    t0, t1, 1b
5:      lw      t0, HP_STEP(s3)         # shrink, from the last step back to the first
        addi    t0, t0, -1
        sw      t0, HP_STEP(s3)
        call    heap_step_pages
        lw      t0, HP_TOP(s3)
        sub     s0, t0, a0              # s0 = the first page of the step
        lw      t2, HP_ROUND(s3)
        li      t3, HEAP_MIX
        mv      t0, s0
        lw      s2, HP_TOP(s3)
6:      bgeu    t0, s2, 7f
        mul     t1, t0, t3
        add     t1, t1, t2
        slli    a0, t0, PAGE_SHIFT
        lw      a1, HP_BASE(s3)
        add     a0, a0, a1
        lw      a1, 0(a0)
        bne     a1, t1, heap_lost
        addi    t0, t0, 1
        j       6b
7:      sub     a0, s0, s2              # sbrk(-(pages of the step) * 4096)
        slli    a0, a0, PAGE_SHIFT
        call    u_sbrk
        sw      s0, HP_TOP(s3)
        lw      t0, HP_STEP(s3)
        bnez    t0, 5b
        lw      t0, HP_TOUCHED(s3)
        lw      t1, HP_PAGES(s3)
        add     t0, t0, t1
        sw      t0, HP_TOUCHED(s3)
        lw      t0, HP_ROUND(s3)
        lw      t1, HP_ROUNDS(s3)
        addi    t0, t0, 1
        sw      t0, HP_ROUND(s3)
        beqz    t1, heap_round          # forever
        bgeu    t1, t0, heap_round
        addi    a0, s3, HP_LINE         # "heap: SIZE bytes, S steps, R rounds, P pages touched"
        la      a1, u_msg_heap
        call    u_fmt_str
        lw      a1, HP_PAGES(s3)
        slli    a1, a1, PAGE_SHIFT
        call    u_fmt_dec
        la      a1, u_msg_heap_bytes
        call    u_fmt_str
        lw      a1, HP_STEPS(s3)
        la      a2, u_str_step
        call    wc_count
        la      a1, u_msg_comma
        call    u_fmt_str
        lw      a1, HP_ROUNDS(s3)
        la      a2, u_str_round
        call    wc_count
        la      a1, u_msg_comma
        call    u_fmt_str
        lw      a1, HP_TOUCHED(s3)
        la      a2, u_str_page
        call    wc_count
        la      a1, u_msg_heap_touched
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, HP_LINE
        call    u_print_line
        li      a0, 0
        j       u_exit
heap_lost:                              # t0 = the page: "heap: page P of round R lost its contents"
        mv      s0, t0
        addi    a0, s3, HP_LINE
        la      a1, u_msg_heap_page
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_dec
        la      a1, u_msg_heap_of_round
        call    u_fmt_str
        lw      a1, HP_ROUND(s3)
        call    u_fmt_dec
        la      a1, u_msg_heap_lost
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, HP_LINE
        call    u_print_line
        li      a0, 2
        j       u_exit
heap_bad:                               # a2, a3 = the token
        la      a0, u_name_heap
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument

# heap_step_pages(s3 = frame) -> a0 = pages of step HP_STEP: HP_CHUNK, the last step the rest.
heap_step_pages:
        lw      a0, HP_CHUNK(s3)
        lw      t0, HP_STEP(s3)
        lw      t1, HP_STEPS(s3)
        addi    t1, t1, -1
        bne     t0, t1, 1f
        mul     t0, a0, t1              # the last step: pages - chunk * (steps - 1)
        lw      a0, HP_PAGES(s3)
        sub     a0, a0, t0
1:      ret

u_name_heap:            .asciz "heap"
u_msg_heap:             .asciz "heap: "
u_msg_heap_bytes:       .asciz " bytes, "
u_msg_heap_touched:     .asciz " touched"
u_str_step:             .asciz "step"
u_str_round:            .asciz "round"
u_str_page:             .asciz "page"
u_msg_heap_page:        .asciz "heap: page "
u_msg_heap_of_round:    .asciz " of round "
u_msg_heap_lost:        .asciz " lost its contents"

# ---- reader BLOCKS [PASSES]: reads the first BLOCKS 4 KiB blocks of the disk, again and again --
# A pass reads sectors 0 … min(8 BLOCKS, disk sectors) - 1 in order with disk_read (through the
# kernel's page cache); PASSES (default 1) passes, 0 = forever. The checksum is FNV-1a over the
# 32-bit words read, over all passes. Prints
# "reader: BLOCKS blocks, PASSES passes, N sectors read, checksum 0x…" (singular for 1) and
# exits with 0.
# Without a disk: "reader: no disk", exit 2; more blocks than the disk has:
# "reader: the disk has only N blocks", exit 2; a read error: "reader: disk error -E at sector S", exit 2.

        .equ    RD_BLOCKS, 0                    # the frame
        .equ    RD_PASSES, 4
        .equ    RD_PASS, 8                      # passes done
        .equ    RD_SECTORS, 12                  # sectors per pass
        .equ    RD_READ, 16                     # sectors read so far
        .equ    RD_BUFFER, 32                   # one sector
        .equ    RD_LINE, 32 + DISK_SECTOR_BYTES
        .equ    RD_BYTES, 32 + DISK_SECTOR_BYTES + 128

        .align  2
reader_main:
        add     s1, a0, a1
        addi    sp, sp, -RD_BYTES
        mv      s3, sp
        mv      a1, s1
        li      a2, 0
        li      a3, 0x1fffffff
        call    u_number_argument       # BLOCKS: at least 1
        mv      s0, a1
        bnez    t3, reader_bad
        beqz    a0, reader_bad
        sw      a0, RD_BLOCKS(s3)
        mv      a0, s0
        mv      a1, s1
        li      a2, 1
        li      a3, 0x7fffffff
        call    u_number_argument       # PASSES: 0 = forever
        mv      s0, a1
        bnez    t3, reader_bad
        sw      a0, RD_PASSES(s3)
        mv      a0, s0
        mv      a1, s1
        la      a2, u_name_reader
        call    u_no_more_arguments
        li      t0, SYS_DISK_INFO
        ecall
        bgtz    a0, 1f
        la      a0, u_msg_reader_no_disk
        call    u_puts
        li      a0, 2
        j       u_exit
1:      addi    t0, a0, 7               # the disk's blocks, the last one maybe partial
        srli    t0, t0, 3
        lw      t1, RD_BLOCKS(s3)
        bgeu    t0, t1, 2f
        mv      s0, t0
        addi    a0, s3, RD_LINE         # "reader: the disk has only N blocks"
        la      a1, u_msg_reader_only
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_dec
        la      a1, u_msg_reader_blocks_only
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, RD_LINE
        call    u_print_line
        li      a0, 2
        j       u_exit
2:      slli    t1, t1, 3               # sectors per pass = min(8 BLOCKS, disk sectors)
        bgeu    a0, t1, 3f
        mv      t1, a0
3:      sw      t1, RD_SECTORS(s3)
        sw      zero, RD_PASS(s3)
        sw      zero, RD_READ(s3)
        li      s2, FNV_BASIS           # s2 = checksum
reader_pass:
        li      s0, 0                   # s0 = sector
1:      lw      t0, RD_SECTORS(s3)
        bgeu    s0, t0, 4f
        mv      a0, s0
        addi    a1, s3, RD_BUFFER
        li      t0, SYS_DISK_READ
        ecall
        bnez    a0, reader_error
        addi    t0, s3, RD_BUFFER       # fold the words in
        addi    t1, t0, DISK_SECTOR_BYTES
        li      t3, FNV_PRIME
2:      lw      t2, 0(t0)
        xor     s2, s2, t2
        mul     s2, s2, t3
        addi    t0, t0, 4
        bltu    t0, t1, 2b
        lw      t0, RD_READ(s3)
        addi    t0, t0, 1
        sw      t0, RD_READ(s3)
        addi    s0, s0, 1
        j       1b
4:      lw      t0, RD_PASS(s3)
        addi    t0, t0, 1
        sw      t0, RD_PASS(s3)
        lw      t1, RD_PASSES(s3)
        beqz    t1, reader_pass         # forever
        bltu    t0, t1, reader_pass
        addi    a0, s3, RD_LINE         # "reader: B blocks, P passes, N sectors read, checksum 0x…"
        la      a1, u_msg_reader
        call    u_fmt_str
        lw      a1, RD_BLOCKS(s3)
        la      a2, u_str_block
        call    wc_count
        la      a1, u_msg_comma
        call    u_fmt_str
        lw      a1, RD_PASSES(s3)
        call    u_fmt_dec
        la      a1, u_msg_pass          # the walker's " pass, " or " passes, "
        lw      t0, RD_PASSES(s3)
        li      t1, 1
        beq     t0, t1, 5f
        la      a1, u_msg_passes
5:      call    u_fmt_str
        lw      a1, RD_READ(s3)
        la      a2, u_str_sector
        call    wc_count
        la      a1, u_msg_reader_sectors
        call    u_fmt_str
        mv      a1, s2
        call    u_fmt_hex
        mv      a1, a0
        addi    a0, s3, RD_LINE
        call    u_print_line
        li      a0, 0
        j       u_exit
reader_error:                           # "reader: disk error -E at sector S"
        mv      s1, a0
        addi    a0, s3, RD_LINE
        la      a1, u_msg_reader_error
        call    u_fmt_str
        mv      a1, s1
        call    u_fmt_sdec
        la      a1, u_msg_reader_at
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_dec
        mv      a1, a0
        addi    a0, s3, RD_LINE
        call    u_print_line
        li      a0, 2
        j       u_exit
reader_bad:
        la      a0, u_name_reader
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument

u_name_reader:          .asciz "reader"
u_msg_reader:           .asciz "reader: "
u_msg_reader_sectors:   .asciz " read, checksum "
u_str_block:            .asciz "block"
u_str_sector:           .asciz "sector"
u_msg_reader_no_disk:   .asciz "reader: no disk\n"
u_msg_reader_only:      .asciz "reader: the disk has only "
u_msg_reader_blocks_only: .asciz " blocks"
u_msg_reader_error:     .asciz "reader: disk error "
u_msg_reader_at:        .asciz " at sector "

# ---- idle: touches a little memory, then sleeps forever ---------------------------------------
# Grows its heap by IDLE_PAGES pages and writes to each, prints "idle: 16 pages touched, sleeping",
# then calls sleep (the longest time, again and again) and never uses the CPU again: a guest that
# is idle after start-up. It never exits.

        .equ    IDLE_PAGES, 16

        .align  2
idle_main:
        add     a1, a0, a1
        la      a2, u_name_idle
        call    u_no_more_arguments     # idle takes no argument
        li      a0, IDLE_PAGES * PAGE_SIZE
        call    u_sbrk
        bgez    a0, 1f
        la      a0, u_name_idle
        li      a1, IDLE_PAGES * PAGE_SIZE
        j       u_out_of_memory
1:      li      t0, IDLE_PAGES * PAGE_SIZE
        add     t0, a0, t0
        li      t1, 1
2:      sw      t1, 0(a0)
        li      t2, PAGE_SIZE
        add     a0, a0, t2
        bltu    a0, t0, 2b
        la      a0, u_msg_idle
        call    u_puts
3:      li      a0, -1                  # sleep(0xffffffff), forever
        li      t0, SYS_SLEEP
        ecall
        j       3b

u_name_idle:            .asciz "idle"
u_msg_idle:             .asciz "idle: 16 pages touched, sleeping\n"

# ---- kvcache ENTRIES [OPS] [listen|deaf]: a key-value cache that fills memory (T-7) ------------
# A cache of up to ENTRIES entries, each one 4 KiB heap page: word 0 holds the key, words 1…1023
# the value, value(key, j) = mix(key * KV_GOLDEN + j) (mix below) — "computed" on a miss by
# filling the page (about 9 instructions a word), read back on a hit. OPS operations (default
# 8 × ENTRIES) look up keys drawn from 4 × ENTRIES keys with a skewed distribution: x = LCG(x)
# from KV_SEED, key = floor(KEYS * (x / 2^32)^3) (key k is hotter the smaller it is), and each
# reads word j = 1 + ((x >> 8) mod 1023) of its entry, checks it against value(key, j) and folds
# it into an FNV-1a checksum (the same whatever the cache did: a lost page is an error).
# A miss inserts the key: in a new slot (one more heap page, sbrk) while the cache is below its
# size limit, else in the slot of the clock's victim (a referenced bit per slot, set on a hit).
# The index (slot keys, chain links, referenced bits, hash buckets) sits at the start of the heap,
# the entries after it in slots 0 … count - 1: the heap ends exactly after the last entry.
#
# listen (the default): every KV_CHECK_OPS operations it asks the kernel (meminfo) how many pages
# are available; with a margin of KV_MARGIN << pressure pages, it shrinks when fewer are available
# than the margin — to leave twice the margin — from the top of the heap, KV_SHRINK_STEP slots at
# a time: a top entry the clock would evict is dropped, a referenced one moves into a clock
# victim's slot below; each step gives its pages back with a negative sbrk (the kernel's free
# count rises; the balloon and the host can take them). Otherwise it lets itself grow by what is
# available above the margin. deaf: never asks, grows to ENTRIES.
# Prints "kvcache: MODE, ops N, hits H, misses M, evictions E, entries S, peak P, shrinks K,
# dropped D, changes C, checksum 0x…" (D: entries the shrinks dropped; C: changes of the memory
# condition it saw) and exits with 0. A page that lost its contents:
# "kvcache: key K lost its contents", exit 2.

        .equ    KV_ENTRIES_MAX, 200000          # ENTRIES at most (the heap must hold them)
        .equ    KV_KEY_FACTOR, 4                # keys: 4 × ENTRIES
        .equ    KV_OPS_FACTOR, 8                # default OPS: 8 × ENTRIES
        .equ    KV_CHECK_OPS, 32                # listen: meminfo every 32 operations (a power of two)
        .equ    KV_MARGIN, 128                  # pages to leave available, shifted left by the pressure
        .equ    KV_MIN_ENTRIES, 16              # a shrink never goes below this
        .equ    KV_SHRINK_STEP, 64              # a shrink gives pages back this many at a time
        .equ    KV_SEED, 0x2545f491
        .equ    KV_GOLDEN, 0x9e3779b1
        .equ    KV_MIX, 0x85ebca6b
        .equ    KV_MAX, 0                       # the frame
        .equ    KV_OPS, 4
        .equ    KV_LISTEN, 8
        .equ    KV_KEYS, 12
        .equ    KV_KEY, 16                      # slot -> key (u32)
        .equ    KV_NEXT, 20                     # slot -> next slot + 1 in its chain (0: last)
        .equ    KV_REF, 24                      # slot -> referenced (byte)
        .equ    KV_BUCKETS, 28                  # bucket -> first slot + 1 (0: empty)
        .equ    KV_HSHIFT, 32                   # bucket = (key * KV_GOLDEN) >> HSHIFT
        .equ    KV_DATA, 36                     # slot s's page: DATA + s * 4096
        .equ    KV_COUNT, 40                    # slots in use: [0, COUNT)
        .equ    KV_LIMIT, 44                    # the size limit now
        .equ    KV_HAND, 48                     # the clock's hand
        .equ    KV_OP, 52
        .equ    KV_X, 56
        .equ    KV_HITS, 60
        .equ    KV_MISSES, 64
        .equ    KV_EVICTIONS, 68
        .equ    KV_SHRINKS, 72
        .equ    KV_SHRUNK, 76
        .equ    KV_CHANGES, 80
        .equ    KV_SEQ, 84
        .equ    KV_SUM, 88
        .equ    KV_PEAK, 92
        .equ    KV_LINE, 96
        .equ    KV_BYTES, 96 + 320

        .align  2
kvcache_main:
        add     s1, a0, a1              # s1 = end of the arguments
        addi    sp, sp, -KV_BYTES
        mv      s3, sp                  # s3 = the frame
        mv      t0, s3
        addi    t1, s3, KV_LINE
1:      sw      zero, 0(t0)
        addi    t0, t0, 4
        bltu    t0, t1, 1b
        mv      a1, s1
        li      a2, 0
        li      a3, KV_ENTRIES_MAX
        call    u_number_argument       # ENTRIES: at least 1
        mv      s0, a1
        bnez    t3, kvcache_bad
        beqz    a0, kvcache_bad
        sw      a0, KV_MAX(s3)
        li      t0, KV_OPS_FACTOR
        mul     t0, a0, t0
        sw      t0, KV_OPS(s3)
        li      t0, 1
        sw      t0, KV_LISTEN(s3)
        mv      a0, s0                  # OPS, or the mode
        mv      a1, s1
        call    u_next_token
        beq     a0, a1, kvcache_setup
        mv      s0, a1
        mv      s2, a0
        call    kvcache_mode            # a0 = 1 listen, 0 deaf, -1 neither
        bgez    a0, 3f
        mv      a0, s2                  # not a mode: OPS
        mv      a1, s0
        call    u_parse_number
        bnez    a1, 2f
        sw      a0, KV_OPS(s3)
        mv      a0, s0                  # then maybe the mode
        mv      a1, s1
        call    u_next_token
        beq     a0, a1, kvcache_setup
        mv      s0, a1
        mv      s2, a0
        call    kvcache_mode
        bgez    a0, 3f
2:      mv      a2, s2                  # (a2, a3 = the token)
        mv      a3, s0
        j       kvcache_bad
3:      sw      a0, KV_LISTEN(s3)
        mv      a0, s0
        mv      a1, s1
        la      a2, u_name_kvcache
        call    u_no_more_arguments

kvcache_setup:
        lw      t0, KV_MAX(s3)          # the index: H buckets, H the power of two >= ENTRIES (>= 16)
        li      t1, KV_KEY_FACTOR
        mul     t1, t0, t1
        sw      t1, KV_KEYS(s3)
        li      t1, 16
        li      t2, 28                  # HSHIFT = 32 - log2 H
1:      bgeu    t1, t0, 2f
        slli    t1, t1, 1
        addi    t2, t2, -1
        j       1b
2:      sw      t2, KV_HSHIFT(s3)
        mv      s0, t1                  # s0 = H
        li      a0, 0
        call    u_sbrk
        sw      a0, KV_KEY(s3)          # keys, links (4 bytes a slot), bits (1 byte), buckets (4 bytes)
        lw      t0, KV_MAX(s3)
        slli    t1, t0, 2
        add     a0, a0, t1
        sw      a0, KV_NEXT(s3)
        add     a0, a0, t1
        sw      a0, KV_REF(s3)
        add     a0, a0, t0
        addi    a0, a0, 3
        srli    a0, a0, 2
        slli    a0, a0, 2
        sw      a0, KV_BUCKETS(s3)
        slli    t1, s0, 2
        add     a0, a0, t1
        li      t1, PAGE_SIZE - 1
        add     a0, a0, t1
        srli    a0, a0, PAGE_SHIFT
        slli    a0, a0, PAGE_SHIFT
        sw      a0, KV_DATA(s3)
        lw      t0, KV_KEY(s3)
        sub     a0, a0, t0
        mv      s0, a0
        call    u_sbrk                  # the index (zero pages: every bucket empty)
        bgez    a0, 3f
        la      a0, u_name_kvcache
        mv      a1, s0
        j       u_out_of_memory
3:      li      t0, KV_SEED
        sw      t0, KV_X(s3)
        li      t0, FNV_BASIS
        sw      t0, KV_SUM(s3)
        lw      t0, KV_MAX(s3)          # deaf: the limit is ENTRIES; listen: set by the first look
        lw      t1, KV_LISTEN(s3)
        bnez    t1, 4f
        sw      t0, KV_LIMIT(s3)
        j       kvcache_loop
4:      li      t0, SYS_MEMINFO         # the condition's change counter to start from
        ecall
        sw      a2, KV_SEQ(s3)

kvcache_loop:
        lw      t0, KV_OP(s3)
        lw      t1, KV_OPS(s3)
        bgeu    t0, t1, kvcache_report
        lw      t1, KV_LISTEN(s3)
        beqz    t1, 1f
        andi    t1, t0, KV_CHECK_OPS - 1
        bnez    t1, 1f
        call    kvcache_check
1:      lw      t0, KV_X(s3)            # x = LCG(x)
        li      t1, LCG_A
        mul     t0, t0, t1
        li      t1, LCG_C
        add     t0, t0, t1
        sw      t0, KV_X(s3)
        mulhu   t1, t0, t0              # key = KEYS * (x / 2^32)^3
        mulhu   t1, t1, t0
        lw      t2, KV_KEYS(s3)
        mulhu   s0, t1, t2              # s0 = key
        srli    t1, t0, 8
        li      t2, 1023
        remu    s1, t1, t2
        addi    s1, s1, 1               # s1 = the word it reads
        mv      a0, s0
        call    kvcache_lookup
        bltz    a0, 2f
        mv      s2, a0                  # a hit: s2 = its slot
        lw      t0, KV_HITS(s3)
        addi    t0, t0, 1
        sw      t0, KV_HITS(s3)
        lw      t0, KV_REF(s3)
        add     t0, t0, s2
        li      t1, 1
        sb      t1, 0(t0)
        j       3f
2:      lw      t0, KV_MISSES(s3)       # a miss: compute and insert
        addi    t0, t0, 1
        sw      t0, KV_MISSES(s3)
        mv      a0, s0
        call    kvcache_insert
        mv      s2, a0
3:      lw      t0, KV_DATA(s3)         # read the word back and check it
        slli    t1, s2, PAGE_SHIFT
        add     t0, t0, t1
        lw      t1, 0(t0)
        bne     t1, s0, kvcache_lost
        slli    t1, s1, 2
        add     t0, t0, t1
        lw      s2, 0(t0)               # s2 = the value read
        mv      a0, s0
        mv      a1, s1
        call    kvcache_value
        bne     a0, s2, kvcache_lost
        lw      t0, KV_SUM(s3)
        xor     t0, t0, s2
        li      t1, FNV_PRIME
        mul     t0, t0, t1
        sw      t0, KV_SUM(s3)
        lw      t0, KV_OP(s3)
        addi    t0, t0, 1
        sw      t0, KV_OP(s3)
        j       kvcache_loop

kvcache_report:                         # "kvcache: MODE, ops N, hits H, …, checksum 0x…"
        addi    a0, s3, KV_LINE
        la      a1, u_msg_kvcache
        call    u_fmt_str
        la      a1, u_str_listen
        lw      t0, KV_LISTEN(s3)
        bnez    t0, 1f
        la      a1, u_str_deaf
1:      call    u_fmt_str
        la      s0, kvcache_fields      # (label, frame offset) pairs
2:      lw      a1, 0(s0)
        beqz    a1, 3f
        add     a1, s0, a1              # the label (its offset from the pair: position-independent)
        call    u_fmt_str
        lw      t0, 4(s0)
        add     t0, s3, t0
        lw      a1, 0(t0)
        call    u_fmt_dec
        addi    s0, s0, 8
        j       2b
3:      la      a1, u_msg_kv_checksum
        call    u_fmt_str
        lw      a1, KV_SUM(s3)
        call    u_fmt_hex
        mv      a1, a0
        addi    a0, s3, KV_LINE
        call    u_print_line
        li      a0, 0
        j       u_exit

kvcache_lost:                           # "kvcache: key K lost its contents", exit 2
        addi    a0, s3, KV_LINE
        la      a1, u_msg_kv_key
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_dec
        la      a1, u_msg_heap_lost
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, KV_LINE
        call    u_print_line
        li      a0, 2
        j       u_exit

kvcache_bad:                            # a2, a3 = the token
        la      a0, u_name_kvcache
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument

# kvcache_mode(a0 = token start, a1 = end) -> a0 = 1 "listen", 0 "deaf", else -1. Clobbers t0-t3, a2, a3.
kvcache_mode:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        la      a2, u_str_listen
        call    u_token_is
        li      t0, 1
        bnez    a0, 1f
        lw      a0, 4(sp)
        lw      a1, 8(sp)
        la      a2, u_str_deaf
        call    u_token_is
        li      t0, 0
        bnez    a0, 1f
        li      t0, -1
1:      mv      a0, t0
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kvcache_value(a0 = key, a1 = word j) -> a0 = value(key, j): h = key * KV_GOLDEN + j,
# h ^= h >> 15, h *= KV_MIX, h ^= h >> 13. Clobbers t0.
kvcache_value:
        li      t0, KV_GOLDEN
        mul     a0, a0, t0
        add     a0, a0, a1
        srli    t0, a0, 15
        xor     a0, a0, t0
        li      t0, KV_MIX
        mul     a0, a0, t0
        srli    t0, a0, 13
        xor     a0, a0, t0
        ret

# kvcache_fill(a0 = page, a1 = key): word 0 = key, word j = value(key, j) — the miss's work.
# Clobbers t0-t3, a2, a3.
kvcache_fill:
        sw      a1, 0(a0)
        li      t0, KV_GOLDEN
        mul     t0, a1, t0
        addi    t0, t0, 1               # t0 = key * KV_GOLDEN + j, from j = 1
        li      t3, KV_MIX
        addi    a2, a0, 4
        li      t1, PAGE_SIZE
        add     t1, a0, t1
1:      srli    t2, t0, 15
        xor     t2, t2, t0
        mul     t2, t2, t3
        srli    a3, t2, 13
        xor     t2, t2, a3
        sw      t2, 0(a2)
        addi    t0, t0, 1
        addi    a2, a2, 4
        bltu    a2, t1, 1b
        ret

# kvcache_bucket(a0 = key) -> a0 = the address of its bucket. Clobbers t0, t1.
kvcache_bucket:
        li      t0, KV_GOLDEN
        mul     a0, a0, t0
        lw      t0, KV_HSHIFT(s3)
        srl     a0, a0, t0
        slli    a0, a0, 2
        lw      t0, KV_BUCKETS(s3)
        add     a0, a0, t0
        ret

# kvcache_lookup(a0 = key) -> a0 = its slot, or -1. Clobbers t0-t3, a1.
kvcache_lookup:
        mv      a1, a0
        li      t0, KV_GOLDEN
        mul     t0, a0, t0
        lw      t1, KV_HSHIFT(s3)
        srl     t0, t0, t1
        slli    t0, t0, 2
        lw      t1, KV_BUCKETS(s3)
        add     t0, t0, t1
        lw      t0, 0(t0)               # t0 = slot + 1
        lw      t1, KV_KEY(s3)
        lw      t2, KV_NEXT(s3)
1:      beqz    t0, 2f
        addi    t0, t0, -1
        slli    t3, t0, 2
        add     a0, t1, t3
        lw      a0, 0(a0)
        beq     a0, a1, 3f
        add     a0, t2, t3
        lw      t0, 0(a0)
        j       1b
2:      li      a0, -1
        ret
3:      mv      a0, t0
        ret

# kvcache_victim() -> a0 = the clock's victim: from the hand, the first slot below COUNT whose
# referenced bit is clear (clearing the bits it passes). Clobbers t0, t1, t3, a1.
kvcache_victim:
        lw      t0, KV_HAND(s3)
        lw      t1, KV_COUNT(s3)
        lw      t3, KV_REF(s3)
1:      bltu    t0, t1, 2f
        li      t0, 0
2:      add     a0, t3, t0
        lbu     a1, 0(a0)
        beqz    a1, 3f
        sb      zero, 0(a0)             # referenced: a second chance
        j       4f
3:      addi    a1, t0, 1
        sw      a1, KV_HAND(s3)
        mv      a0, t0
        ret
4:      addi    t0, t0, 1
        j       1b

# kvcache_relink(a0 = slot, a1 = what the link to it becomes): finds the link holding slot + 1 in
# its key's chain (a bucket or another slot's link) and stores a1 there. Clobbers t0-t3, a0, a2.
kvcache_relink:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        lw      t0, KV_KEY(s3)
        slli    t1, a0, 2
        add     t0, t0, t1
        lw      a0, 0(t0)
        call    kvcache_bucket          # a0 = the chain's head
        lw      t1, 4(sp)
        addi    t1, t1, 1               # t1 = slot + 1
        lw      t2, KV_NEXT(s3)
1:      lw      t3, 0(a0)
        beq     t3, t1, 2f
        addi    t3, t3, -1
        slli    t3, t3, 2
        add     a0, t2, t3
        j       1b
2:      lw      a2, 8(sp)
        sw      a2, 0(a0)
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kvcache_unlink(a0 = slot): takes the slot out of its chain. Clobbers t0-t3, a0-a2.
kvcache_unlink:
        lw      t0, KV_NEXT(s3)
        slli    t1, a0, 2
        add     t0, t0, t1
        lw      a1, 0(t0)               # the link becomes the slot's own next
        j       kvcache_relink

# kvcache_insert(a0 = key) -> a0 = the slot it now fills (page computed, linked in). A new slot
# (one more heap page) while COUNT < LIMIT, else the clock's victim. Preserves s0-s3.
kvcache_insert:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        lw      t0, KV_COUNT(s3)
        lw      t1, KV_LIMIT(s3)
        bgeu    t0, t1, 1f
        li      a0, PAGE_SIZE           # a new slot at the end of the heap
        call    u_sbrk
        bgez    a0, 11f
        la      a0, u_name_kvcache
        li      a1, PAGE_SIZE
        j       u_out_of_memory
11:     lw      t0, KV_COUNT(s3)
        sw      t0, 8(sp)
        addi    t0, t0, 1
        sw      t0, KV_COUNT(s3)
        lw      t1, KV_PEAK(s3)
        bgeu    t1, t0, 2f
        sw      t0, KV_PEAK(s3)
        j       2f
1:      call    kvcache_victim          # full: reuse the victim's slot
        sw      a0, 8(sp)
        call    kvcache_unlink
        lw      t0, KV_EVICTIONS(s3)
        addi    t0, t0, 1
        sw      t0, KV_EVICTIONS(s3)
2:      lw      t0, 8(sp)               # compute the value into the slot's page
        slli    t0, t0, PAGE_SHIFT
        lw      a0, KV_DATA(s3)
        add     a0, a0, t0
        lw      a1, 4(sp)
        call    kvcache_fill
        lw      a0, 4(sp)               # link it in at its chain's head
        call    kvcache_bucket
        lw      t0, 8(sp)
        slli    t3, t0, 2
        lw      t1, 0(a0)
        lw      t2, KV_NEXT(s3)
        add     t2, t2, t3
        sw      t1, 0(t2)
        addi    t1, t0, 1
        sw      t1, 0(a0)
        lw      t2, KV_KEY(s3)
        add     t2, t2, t3
        lw      t1, 4(sp)
        sw      t1, 0(t2)
        lw      t2, KV_REF(s3)
        add     t2, t2, t0
        sb      zero, 0(t2)
        mv      a0, t0
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kvcache_check(): listen mode's look at the memory condition (see above). Preserves s0-s3.
kvcache_check:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        li      t0, SYS_MEMINFO         # a0 = available (signed), a1 = pressure (-1: no host limit), a2 = seq
        ecall
        lw      t0, KV_SEQ(s3)
        beq     t0, a2, 1f
        sw      a2, KV_SEQ(s3)
        lw      t0, KV_CHANGES(s3)
        addi    t0, t0, 1
        sw      t0, KV_CHANGES(s3)
1:      li      t0, KV_MARGIN           # t0 = the margin
        blez    a1, 2f
        sll     t0, t0, a1
2:      lw      t1, KV_COUNT(s3)
        sub     a0, a0, t0              # available - margin: room to grow (signed)
        bgez    a0, 3f
        sub     a0, a0, t0              # short: give back enough to leave twice the margin
3:      add     a0, t1, a0              # the new limit (signed), at least KV_MIN_ENTRIES, at most ENTRIES
        li      t2, KV_MIN_ENTRIES
        bge     a0, t2, 4f
        mv      a0, t2
4:      lw      t2, KV_MAX(s3)
        bge     t2, a0, 5f
        mv      a0, t2
5:      sw      a0, KV_LIMIT(s3)
        bge     a0, t1, 9f
        call    kvcache_shrink          # below the entries it holds: shrink now
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# kvcache_shrink(a0 = new size L < COUNT): drops COUNT - L entries, KV_SHRINK_STEP at a time from
# the top of the heap so that pages go back (sbrk) as it goes: of the top slots, an entry not
# referenced since the clock last passed is dropped, a referenced one moves into the slot of a
# clock victim below (which is dropped instead). Preserves s0-s3.
kvcache_shrink:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        mv      s2, a0                  # s2 = L
        lw      t0, KV_SHRINKS(s3)
        addi    t0, t0, 1
        sw      t0, KV_SHRINKS(s3)
        lw      t0, KV_COUNT(s3)
        sub     t0, t0, s2
        lw      t1, KV_SHRUNK(s3)
        add     t1, t1, t0
        sw      t1, KV_SHRUNK(s3)
1:      lw      s0, KV_COUNT(s3)        # a step: s0 = C, s1 = the new count max(L, C - step)
        bgeu    s2, s0, 8f
        addi    s1, s0, -KV_SHRINK_STEP
        blt     s2, s1, 2f
        mv      s1, s2
2:      sw      s1, KV_COUNT(s3)        # victims come from below the new count
        lw      t0, KV_HAND(s3)
        bltu    t0, s1, 3f
        sw      zero, KV_HAND(s3)
3:      sw      s1, 16(sp)              # 16(sp) = j, the top slot being emptied
4:      lw      t0, 16(sp)
        bgeu    t0, s0, 7f
        lw      t1, KV_REF(s3)
        add     t1, t1, t0
        lbu     t1, 0(t1)
        bnez    t1, 5f
        mv      a0, t0                  # not referenced: dropped
        call    kvcache_unlink
        j       6f
5:      call    kvcache_victim          # referenced: takes a victim's slot below
        sw      a0, 20(sp)
        call    kvcache_unlink
        lw      t0, 16(sp)
        lw      a1, 20(sp)
        call    kvcache_move
6:      lw      t0, 16(sp)
        addi    t0, t0, 1
        sw      t0, 16(sp)
        j       4b
7:      sub     a0, s1, s0              # sbrk(-(C - new count) pages)
        slli    a0, a0, PAGE_SHIFT
        call    u_sbrk
        j       1b
8:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        addi    sp, sp, 32
        ret

# kvcache_move(t0 = slot j, a1 = slot i, out of every chain): the entry of j moves to i (its page
# copied, its key, link and bit too, the link to it redirected). Clobbers t0-t3, a0-a3.
kvcache_move:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      t0, 4(sp)
        sw      a1, 8(sp)
        lw      a0, KV_DATA(s3)         # copy the page
        slli    t1, t0, PAGE_SHIFT
        add     t1, a0, t1
        slli    t2, a1, PAGE_SHIFT
        add     t2, a0, t2
        li      t3, PAGE_SIZE
        add     t3, t1, t3
1:      lw      a2, 0(t1)
        lw      a3, 4(t1)
        sw      a2, 0(t2)
        sw      a3, 4(t2)
        lw      a2, 8(t1)
        lw      a3, 12(t1)
        sw      a2, 8(t2)
        sw      a3, 12(t2)
        lw      a2, 16(t1)
        lw      a3, 20(t1)
        sw      a2, 16(t2)
        sw      a3, 20(t2)
        lw      a2, 24(t1)
        lw      a3, 28(t1)
        sw      a2, 24(t2)
        sw      a3, 28(t2)
        addi    t1, t1, 32
        addi    t2, t2, 32
        bltu    t1, t3, 1b
        lw      a0, 4(sp)               # the link to j now names i
        lw      a1, 8(sp)
        addi    a1, a1, 1
        call    kvcache_relink
        lw      a0, 4(sp)
        lw      a1, 8(sp)
        slli    t0, a0, 2
        slli    t1, a1, 2
        lw      t2, KV_KEY(s3)
        add     a2, t2, t0
        add     a3, t2, t1
        lw      t3, 0(a2)
        sw      t3, 0(a3)
        lw      t2, KV_NEXT(s3)
        add     a2, t2, t0
        add     a3, t2, t1
        lw      t3, 0(a2)
        sw      t3, 0(a3)
        lw      t2, KV_REF(s3)
        add     a2, t2, a0
        add     a3, t2, a1
        lbu     t3, 0(a2)
        sb      t3, 0(a3)
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

        .align  2
kvcache_fields:                         # (label - here, frame offset), ended by 0
        .word   u_msg_kv_ops - ., KV_OPS
        .word   u_msg_kv_hits - ., KV_HITS
        .word   u_msg_kv_misses - ., KV_MISSES
        .word   u_msg_kv_evictions - ., KV_EVICTIONS
        .word   u_msg_kv_entries - ., KV_COUNT
        .word   u_msg_kv_peak - ., KV_PEAK
        .word   u_msg_kv_shrinks - ., KV_SHRINKS
        .word   u_msg_kv_dropped - ., KV_SHRUNK
        .word   u_msg_kv_changes - ., KV_CHANGES
        .word   0, 0

u_name_kvcache:         .asciz "kvcache"
u_msg_kvcache:          .asciz "kvcache: "
u_str_listen:           .asciz "listen"
u_str_deaf:             .asciz "deaf"
u_msg_kv_ops:           .asciz ", ops "
u_msg_kv_hits:          .asciz ", hits "
u_msg_kv_misses:        .asciz ", misses "
u_msg_kv_evictions:     .asciz ", evictions "
u_msg_kv_entries:       .asciz ", entries "
u_msg_kv_peak:          .asciz ", peak "
u_msg_kv_shrinks:       .asciz ", shrinks "
u_msg_kv_dropped:       .asciz ", dropped "
u_msg_kv_changes:       .asciz ", changes "
u_msg_kv_checksum:      .asciz ", checksum "
u_msg_kv_key:           .asciz "kvcache: key "

# ---- meminfo [COUNT]: prints the memory condition the kernel reports -------------------------------
# Calls meminfo and prints "meminfo: A pages available, limit L pages, pressure P, seq S" (without
# the device: "meminfo: A pages available, no host limit"); then, COUNT - 1 more times (default
# COUNT 1, 0 = forever), sleeps MV_POLL time units at a time until SEQ changes and prints again.
# Without the device nothing can change: it prints once. Exits with 0.

        .equ    MV_POLL, 20000
        .equ    MV_COUNT, 0                     # the frame
        .equ    MV_DONE, 4
        .equ    MV_SEQ, 8
        .equ    MV_LINE, 16
        .equ    MV_BYTES, 16 + 128

        .align  2
meminfo_main:
        add     s1, a0, a1
        addi    sp, sp, -MV_BYTES
        mv      s3, sp
        mv      a1, s1
        li      a2, 1
        li      a3, 0x7fffffff
        call    u_number_argument       # COUNT: 0 = forever
        mv      s0, a1
        bnez    t3, meminfo_bad
        sw      a0, MV_COUNT(s3)
        sw      zero, MV_DONE(s3)
        mv      a0, s0
        mv      a1, s1
        la      a2, u_name_meminfo
        call    u_no_more_arguments
        li      t0, SYS_MEMINFO
        ecall
1:      sw      a2, MV_SEQ(s3)
        mv      s0, a0                  # s0 = available, s1 = pressure, s2 = limit
        mv      s1, a1
        mv      s2, a3
        addi    a0, s3, MV_LINE
        la      a1, u_msg_meminfo
        call    u_fmt_str
        mv      a1, s0
        call    u_fmt_sdec
        la      a1, u_msg_mv_available
        call    u_fmt_str
        bgez    s1, 2f
        la      a1, u_msg_mv_no_limit
        call    u_fmt_str
        j       3f
2:      la      a1, u_msg_mv_limit
        call    u_fmt_str
        mv      a1, s2
        call    u_fmt_dec
        la      a1, u_msg_mv_pressure
        call    u_fmt_str
        mv      a1, s1
        call    u_fmt_dec
        la      a1, u_msg_mv_seq
        call    u_fmt_str
        lw      a1, MV_SEQ(s3)
        call    u_fmt_dec
3:      mv      a1, a0
        addi    a0, s3, MV_LINE
        call    u_print_line
        bltz    s1, 9f                  # no device: nothing will change
        lw      t0, MV_DONE(s3)
        addi    t0, t0, 1
        sw      t0, MV_DONE(s3)
        lw      t1, MV_COUNT(s3)
        beqz    t1, 4f
        bgeu    t0, t1, 9f
4:      li      a0, MV_POLL             # wait for a change
        li      t0, SYS_SLEEP
        ecall
        li      t0, SYS_MEMINFO
        ecall
        lw      t0, MV_SEQ(s3)
        beq     a2, t0, 4b
        j       1b
9:      li      a0, 0
        j       u_exit
meminfo_bad:
        la      a0, u_name_meminfo
        mv      a1, a2
        mv      a2, a3
        j       u_bad_argument

u_name_meminfo:         .asciz "meminfo"
u_msg_meminfo:          .asciz "meminfo: "
u_msg_mv_available:     .asciz " pages available, "
u_msg_mv_no_limit:      .asciz "no host limit"
u_msg_mv_limit:         .asciz "limit "
u_msg_mv_pressure:      .asciz " pages, pressure "
u_msg_mv_seq:           .asciz ", seq "

# ---- pmkv COMMAND...: a persistent key-value store in persistent memory ---------------------
#   put KEY VALUE | get KEY, any number of them, in order (docs/pmem.md, "The pmkv format").
# Persistent memory holds a header, a data area and an append-only log. Header (offset 0, six
# words): magic "PKV1", version 1, the data area's offset (4096), its slot count (SIZE / 2048),
# the log's offset (4096 + 512 × slots), FNV-1a of the first 20 bytes. A record, in the log and
# in a slot alike: "PKR1", sequence number, key length (1-64), value length (0-256), checksum
# (FNV-1a of bytes 0-15, then of the key and value), key, value, zero padding to a multiple of 4.
# The data area holds each key's newest record in a 512-byte slot: the first slot, from the key's
# home (FNV-1a of the key mod the slot count, up to PK_PROBES on, wrapping), that holds the key or
# no valid record. The log holds every put, in sequence order (1, 2, … with no gap), up to the
# first word that is not "PKR1"; a record there that is damaged — lengths out of range, past the
# end, a wrong checksum or sequence number: a torn write — is reported and dropped, never
# applied, and the next put overwrites it.
# A put appends its record and a zero end mark to the log and flushes them (the commit point),
# then writes the record to its slot and flushes that; it is acknowledged after both. At start
# the log is replayed: a record newer than its key's slot (a crash between the two flushes) is
# written to the slot again. A get reads the key's slot.

        .equ    PKV_MAGIC, 0x31564b50           # "PKV1"
        .equ    PKR_MAGIC, 0x31524b50           # "PKR1"
        .equ    PK_DATA, 4096                   # the data area's offset
        .equ    PK_SLOT_BYTES, 512
        .equ    PK_SLOT_SHIFT, 11               # slots = SIZE >> 11: a quarter of the range
        .equ    PK_PROBES, 8
        .equ    PKH_DATA, 8                     # header fields
        .equ    PKH_SLOTS, 12
        .equ    PKH_LOG, 16
        .equ    PKH_CHECKSUM, 20
        .equ    PK_HEADER_BYTES, 24
        .equ    PKR_SEQ, 4                      # record fields
        .equ    PKR_KEY_LEN, 8
        .equ    PKR_VALUE_LEN, 12
        .equ    PKR_CHECKSUM, 16
        .equ    PKR_KEY, 20                     # key, then value
        .equ    PK_KEY_MAX, 64
        .equ    PK_VALUE_MAX, 256
        .equ    PK_LOADED, 0                    # pmkv_load results
        .equ    PK_NONE, 1
        .equ    PK_DAMAGED, 2
        .equ    PK_FOUND, 0                     # pmkv_find_slot results
        .equ    PK_FREE, 1
        .equ    PK_FULL, 2
        # pmkv_main's frame (s3)
        .equ    PF_BUF, 0                       # one record (at most 20 + 64 + 256 + 3 + the end mark)
        .equ    PF_LINE, 384
        .equ    PF_KEY, 1280                    # the current key: start, end
        .equ    PF_KEY_END, 1284
        .equ    PF_VALUE, 1288                  # the current value: start, end
        .equ    PF_VALUE_END, 1292
        .equ    PF_END, 1296                    # the log's end (where the next record goes)
        .equ    PF_SEQ, 1300                    # the next sequence number
        .equ    PF_COUNT, 1304                  # records in the log
        .equ    PF_SIZE, 1308                   # bytes of persistent memory
        .equ    PF_APPLIED, 1312                # log records the replay wrote to the data area
        .equ    PF_SLOTS, 1316                  # slots in the data area
        .equ    PF_TORN, 1320                   # offset of a dropped torn record, or 0
        .equ    PF_COMMAND, 1324                # the current command's name
        .equ    PF_LOG, 1328                    # the log's offset
        .equ    PF_SLOT_AT, 1332                # pmkv_find_slot's slot offset
        .equ    PF_SLOT, 1344                   # a slot's record (384 bytes)
        .equ    PF_BYTES, 1728

        .align  2
pmkv_main:
        add     s1, a0, a1              # s1 = end of the arguments
        mv      s0, a0                  # s0 = cursor
        addi    sp, sp, -PF_BYTES
        mv      s3, sp                  # s3 = the frame
        li      t0, SYS_PMEM_INFO
        ecall
        li      t0, 2 * PK_DATA
        bge     a0, t0, 1f              # (-ENODEV is negative)
        la      a0, u_msg_pk_no_pmem
        call    u_puts
        li      a0, 2
        j       u_exit
1:      sw      a0, PF_SIZE(s3)
        srli    t0, a0, PK_SLOT_SHIFT
        sw      t0, PF_SLOTS(s3)
        slli    t0, t0, 9               # × PK_SLOT_BYTES
        addi    t0, t0, PK_DATA
        sw      t0, PF_LOG(s3)
        li      a0, 0                   # the header
        mv      a1, s3
        li      a2, PK_HEADER_BYTES
        call    pmkv_read
        lw      t0, 0(s3)
        li      t1, PKV_MAGIC
        beq     t0, t1, 3f
        mv      t0, s3                  # no header: format a blank range, refuse anything else
        addi    t2, s3, PK_HEADER_BYTES
2:      lw      t1, 0(t0)
        bnez    t1, pmkv_bad_header
        addi    t0, t0, 4
        bltu    t0, t2, 2b
        call    pmkv_header_fill
        li      a0, 0
        mv      a1, s3
        li      a2, PK_HEADER_BYTES
        call    pmkv_write
        li      a0, 0
        li      a1, PK_HEADER_BYTES
        call    pmkv_flush
        addi    a0, s3, PF_LINE         # "pmkv: formatted N bytes, S slots, log at L"
        la      a1, u_msg_pmkv
        call    u_fmt_str
        la      a1, u_msg_pk_formatted
        call    u_fmt_str
        lw      a1, PF_SIZE(s3)
        call    u_fmt_dec
        la      a1, u_msg_pk_bytes
        call    u_fmt_str
        lw      a1, PF_SLOTS(s3)
        call    u_fmt_dec
        la      a1, u_msg_pk_slots
        call    u_fmt_str
        lw      a1, PF_LOG(s3)
        call    u_fmt_dec
        mv      a1, a0
        addi    a0, s3, PF_LINE
        call    u_print_line
        j       4f
3:      li      a0, 0                   # a header: it must be the one this range would get
        addi    a1, s3, PF_SLOT
        li      a2, PK_HEADER_BYTES
        call    pmkv_read
        call    pmkv_header_fill
        addi    t0, s3, PF_SLOT
        mv      t1, s3
        addi    t2, s3, PK_HEADER_BYTES
5:      lw      a0, 0(t0)
        lw      a1, 0(t1)
        bne     a0, a1, pmkv_bad_header
        addi    t0, t0, 4
        addi    t1, t1, 4
        bltu    t1, t2, 5b
4:      call    pmkv_scan               # replay the log
        lw      t0, PF_TORN(s3)
        beqz    t0, 5f
        addi    a0, s3, PF_LINE         # "pmkv: dropped a torn record at offset N"
        la      a1, u_msg_pmkv
        call    u_fmt_str
        la      a1, u_msg_pk_torn
        call    u_fmt_str
        lw      a1, PF_TORN(s3)
        call    u_fmt_dec
        mv      a1, a0
        addi    a0, s3, PF_LINE
        call    u_print_line
5:      lw      t0, PF_APPLIED(s3)
        beqz    t0, 6f
        addi    a0, s3, PF_LINE         # "pmkv: applied N log records to the data area"
        la      a1, u_msg_pmkv
        call    u_fmt_str
        la      a1, u_msg_pk_applied
        call    u_fmt_str
        lw      a1, PF_APPLIED(s3)
        call    u_fmt_dec
        la      a1, u_msg_pk_applied_end
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, PF_LINE
        call    u_print_line
6:      addi    a0, s3, PF_LINE         # "pmkv: N records, next seq S"
        la      a1, u_msg_pmkv
        call    u_fmt_str
        lw      a1, PF_COUNT(s3)
        call    u_fmt_dec
        la      a1, u_msg_pk_records
        call    u_fmt_str
        lw      a1, PF_SEQ(s3)
        call    u_fmt_dec
        mv      a1, a0
        addi    a0, s3, PF_LINE
        call    u_print_line
pmkv_next:
        mv      a0, s0
        mv      a1, s1
        call    u_next_token
        beq     a0, a1, pmkv_done
        mv      s0, a1
        sw      a0, PF_KEY(s3)          # the command word, until the key replaces it
        sw      a1, PF_KEY_END(s3)
        la      a2, u_str_put
        call    u_token_is
        bnez    a0, pmkv_put
        lw      a0, PF_KEY(s3)
        lw      a1, PF_KEY_END(s3)
        la      a2, u_str_get
        call    u_token_is
        bnez    a0, pmkv_get
        lw      a1, PF_KEY(s3)          # not a command
        lw      a2, PF_KEY_END(s3)
pmkv_bad_argument:                      # (a1, a2 = the word)
        la      a0, u_name_pmkv
        j       u_bad_argument
pmkv_done:
        li      a0, 0
        j       u_exit
pmkv_bad_header:
        la      a0, u_msg_pk_bad_header
        call    u_puts
        li      a0, 2
        j       u_exit

# pmkv_header_fill(): the header this range gets, in the buffer (checksum included)
pmkv_header_fill:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        li      t0, PKV_MAGIC
        sw      t0, 0(s3)
        li      t0, 1
        sw      t0, 4(s3)
        li      t0, PK_DATA
        sw      t0, PKH_DATA(s3)
        lw      t0, PF_SLOTS(s3)
        sw      t0, PKH_SLOTS(s3)
        lw      t0, PF_LOG(s3)
        sw      t0, PKH_LOG(s3)
        li      a0, FNV_BASIS
        mv      a1, s3
        addi    a2, s3, PKH_CHECKSUM
        call    record_fnv
        sw      a0, PKH_CHECKSUM(s3)
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# put KEY VALUE: "pmkv: put KEY = VALUE (seq N)" once the record is durable in the log and its slot
pmkv_put:
        la      t0, u_str_put
        sw      t0, PF_COMMAND(s3)
        li      a2, PK_KEY_MAX
        call    pmkv_word
        sw      a0, PF_KEY(s3)
        sw      a1, PF_KEY_END(s3)
        li      a2, PK_VALUE_MAX
        call    pmkv_word
        sw      a0, PF_VALUE(s3)
        sw      a1, PF_VALUE_END(s3)
        li      t0, PKR_MAGIC           # the record, in the buffer
        sw      t0, 0(s3)
        lw      t0, PF_SEQ(s3)
        sw      t0, PKR_SEQ(s3)
        lw      a1, PF_KEY(s3)
        lw      a2, PF_KEY_END(s3)
        sub     t0, a2, a1
        sw      t0, PKR_KEY_LEN(s3)
        addi    a0, s3, PKR_KEY
        call    u_copy_bytes
        lw      a1, PF_VALUE(s3)
        lw      a2, PF_VALUE_END(s3)
        sub     t0, a2, a1
        sw      t0, PKR_VALUE_LEN(s3)
        call    u_copy_bytes            # (a0 = after the key)
        addi    t0, a0, 3               # zero padding to a word, then the end mark
        srli    t0, t0, 2
        slli    t0, t0, 2
        addi    t1, t0, 4
1:      bgeu    a0, t1, 2f
        sb      zero, 0(a0)
        addi    a0, a0, 1
        j       1b
2:      sub     s2, t0, s3              # s2 = the record's bytes
        mv      a0, s3
        call    pmkv_record_checksum
        sw      a0, PKR_CHECKSUM(s3)
        lw      a0, PF_END(s3)
        addi    t0, s2, 4
        add     t0, a0, t0
        lw      t1, PF_SIZE(s3)
        bltu    t1, t0, 8f              # no room for it and the end mark
        mv      a1, s3
        addi    a2, s2, 4
        call    pmkv_write
        lw      a0, PF_END(s3)
        addi    a1, s2, 4
        call    pmkv_flush              # committed: the log has it
        lw      t0, PF_END(s3)
        add     t0, t0, s2
        sw      t0, PF_END(s3)
        lw      t0, PF_COUNT(s3)
        addi    t0, t0, 1
        sw      t0, PF_COUNT(s3)
        lw      t0, PF_SEQ(s3)
        addi    t0, t0, 1
        sw      t0, PF_SEQ(s3)
        call    pmkv_apply              # and its slot: acknowledge
        lw      a0, PF_VALUE(s3)
        lw      a1, PF_VALUE_END(s3)
        lw      a2, PKR_SEQ(s3)
        call    pmkv_report
        j       pmkv_next
8:      la      a0, u_msg_pk_full
        call    pmkv_note
        li      a0, 2
        j       u_exit

# get KEY: "pmkv: get KEY = VALUE (seq N)" or "pmkv: get KEY: not found", from the key's slot
pmkv_get:
        la      t0, u_str_get
        sw      t0, PF_COMMAND(s3)
        li      a2, PK_KEY_MAX
        call    pmkv_word
        sw      a0, PF_KEY(s3)
        sw      a1, PF_KEY_END(s3)
        call    pmkv_find_slot
        beqz    a0, 1f                  # PK_FOUND
        la      a0, u_msg_not_found
        call    pmkv_note
        j       pmkv_next
1:      addi    a0, s3, PF_SLOT + PKR_KEY
        lw      t0, PF_SLOT + PKR_KEY_LEN(s3)
        add     a0, a0, t0
        lw      t0, PF_SLOT + PKR_VALUE_LEN(s3)
        add     a1, a0, t0
        lw      a2, PF_SLOT + PKR_SEQ(s3)
        call    pmkv_report
        j       pmkv_next

# pmkv_scan(): replays the log from its start. Sets PF_END, PF_SEQ, PF_COUNT, PF_TORN (the offset
# of a damaged record where the log ends, else 0) and PF_APPLIED (records newer than their key's
# slot, written there now).
pmkv_scan:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        lw      t0, PF_LOG(s3)
        sw      t0, PF_END(s3)
        li      t0, 1
        sw      t0, PF_SEQ(s3)
        sw      zero, PF_COUNT(s3)
        sw      zero, PF_TORN(s3)
        sw      zero, PF_APPLIED(s3)
1:      lw      a0, PF_END(s3)
        mv      a1, s3
        call    pmkv_load
        li      t0, PK_NONE
        beq     a0, t0, 9f              # the end of the log
        bnez    a0, 8f                  # damaged
        lw      t0, PKR_SEQ(s3)
        lw      t1, PF_SEQ(s3)
        bne     t0, t1, 8f              # a gap or a stale record: not the next one
        addi    t1, t1, 1               # valid: count it, move past it, apply it if its slot is older
        sw      t1, PF_SEQ(s3)
        lw      t1, PF_COUNT(s3)
        addi    t1, t1, 1
        sw      t1, PF_COUNT(s3)
        mv      a0, s3
        call    pmkv_record_bytes
        lw      t1, PF_END(s3)
        add     t1, t1, a0
        sw      t1, PF_END(s3)
        call    pmkv_apply
        lw      t0, PF_APPLIED(s3)
        add     t0, t0, a0
        sw      t0, PF_APPLIED(s3)
        j       1b
8:      lw      t0, PF_END(s3)          # damaged: the log ends here, the record is dropped
        sw      t0, PF_TORN(s3)
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# pmkv_apply() -> a0 = 1 when the record in the buffer was written to its key's slot (and
# flushed), 0 when the slot already holds it or a newer one. Exits when the data area is full
# around the key's home. Sets PF_KEY to the record's key.
pmkv_apply:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        addi    t0, s3, PKR_KEY
        sw      t0, PF_KEY(s3)
        lw      t1, PKR_KEY_LEN(s3)
        add     t1, t0, t1
        sw      t1, PF_KEY_END(s3)
        call    pmkv_find_slot
        li      t0, PK_FULL
        beq     a0, t0, 8f
        bnez    a0, 1f                  # a free slot
        lw      t0, PF_SLOT + PKR_SEQ(s3)
        lw      t1, PKR_SEQ(s3)
        li      a0, 0
        bgeu    t0, t1, 9f              # the slot is as new already
1:      mv      a0, s3
        call    pmkv_record_bytes
        mv      a2, a0
        sw      a2, 4(sp)
        lw      a0, PF_SLOT_AT(s3)
        mv      a1, s3
        call    pmkv_write
        lw      a0, PF_SLOT_AT(s3)
        lw      a1, 4(sp)
        call    pmkv_flush
        li      a0, 1
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
8:      la      a0, u_msg_pk_data_full
        call    pmkv_note
        li      a0, 2
        j       u_exit

# pmkv_find_slot() -> a0 = PK_FOUND (PF_SLOT holds the current key's record), PK_FREE (the slot
# the key would take) or PK_FULL; PF_SLOT_AT = the slot's offset.
pmkv_find_slot:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        li      a0, FNV_BASIS
        lw      a1, PF_KEY(s3)
        lw      a2, PF_KEY_END(s3)
        call    record_fnv
        lw      t0, PF_SLOTS(s3)
        remu    t1, a0, t0
        sw      t1, 4(sp)               # the slot
        sw      zero, 8(sp)             # probes so far
1:      lw      t0, 8(sp)
        li      t1, PK_PROBES
        bgeu    t0, t1, 7f
        lw      t1, PF_SLOTS(s3)
        bgeu    t0, t1, 7f              # a small data area: every slot was tried
        addi    t0, t0, 1
        sw      t0, 8(sp)
        lw      t0, 4(sp)
        slli    t0, t0, 9
        addi    a0, t0, PK_DATA
        sw      a0, PF_SLOT_AT(s3)
        addi    a1, s3, PF_SLOT
        call    pmkv_load
        bnez    a0, 6f                  # no valid record: free (a torn slot write too)
        lw      a0, PF_KEY(s3)          # the same key?
        lw      a1, PF_KEY_END(s3)
        sub     t0, a1, a0
        lw      t1, PF_SLOT + PKR_KEY_LEN(s3)
        bne     t0, t1, 4f
        addi    t2, s3, PF_SLOT + PKR_KEY
2:      beq     a0, a1, 5f
        lbu     t0, 0(a0)
        lbu     t1, 0(t2)
        bne     t0, t1, 4f
        addi    a0, a0, 1
        addi    t2, t2, 1
        j       2b
4:      lw      t0, 4(sp)               # another key: the next slot, wrapping around
        addi    t0, t0, 1
        lw      t1, PF_SLOTS(s3)
        bltu    t0, t1, 3f
        li      t0, 0
3:      sw      t0, 4(sp)
        j       1b
5:      li      a0, PK_FOUND
        j       9f
6:      li      a0, PK_FREE
        j       9f
7:      li      a0, PK_FULL
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# pmkv_load(a0 = offset, a1 = buffer) -> a0 = PK_LOADED (a record whose lengths and checksum
# check out is in the buffer), PK_NONE (no "PKR1" there, or no room for a record) or PK_DAMAGED
pmkv_load:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        addi    t0, a0, PKR_KEY
        lw      t1, PF_SIZE(s3)
        bltu    t1, t0, 7f              # no room for a record
        li      a2, PKR_KEY
        call    pmkv_read
        lw      t2, 8(sp)
        lw      t0, 0(t2)
        li      t1, PKR_MAGIC
        bne     t0, t1, 7f
        lw      t0, PKR_KEY_LEN(t2)
        beqz    t0, 8f
        li      t1, PK_KEY_MAX
        bltu    t1, t0, 8f
        lw      t1, PKR_VALUE_LEN(t2)
        li      a2, PK_VALUE_MAX
        bltu    a2, t1, 8f
        mv      a0, t2
        call    pmkv_record_bytes
        lw      t0, 4(sp)
        add     t0, t0, a0
        lw      t1, PF_SIZE(s3)
        bltu    t1, t0, 8f              # runs past the end
        lw      t2, 8(sp)
        lw      a0, 4(sp)
        addi    a0, a0, PKR_KEY
        addi    a1, t2, PKR_KEY
        lw      t0, PKR_KEY_LEN(t2)
        lw      t1, PKR_VALUE_LEN(t2)
        add     a2, t0, t1
        beqz    a2, 1f
        call    pmkv_read
1:      lw      a0, 8(sp)
        call    pmkv_record_checksum
        lw      t2, 8(sp)
        lw      t0, PKR_CHECKSUM(t2)
        bne     a0, t0, 8f
        li      a0, PK_LOADED
        j       9f
7:      li      a0, PK_NONE
        j       9f
8:      li      a0, PK_DAMAGED
9:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# pmkv_record_bytes(a0 = record) -> a0 = its size: 20 + key + value, rounded up to 4
pmkv_record_bytes:
        lw      t0, PKR_KEY_LEN(a0)
        lw      t1, PKR_VALUE_LEN(a0)
        add     t0, t0, t1
        addi    t0, t0, PKR_KEY + 3
        srli    t0, t0, 2
        slli    a0, t0, 2
        ret

# pmkv_record_checksum(a0 = record) -> a0 = FNV-1a of bytes 0-15, then of the key and value
pmkv_record_checksum:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        mv      a1, a0
        addi    a2, a0, PKR_CHECKSUM
        li      a0, FNV_BASIS
        call    record_fnv
        lw      t0, 4(sp)
        addi    a1, t0, PKR_KEY
        lw      t1, PKR_KEY_LEN(t0)
        lw      t2, PKR_VALUE_LEN(t0)
        add     t1, t1, t2
        add     a2, a1, t1
        call    record_fnv
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# pmkv_read / pmkv_write(a0 = offset, a1 = buffer, a2 = length): the system call, exiting with
# "pmkv: persistent memory error -N" when it fails. pmkv_flush(a0 = offset, a1 = length) likewise.
pmkv_read:
        li      t0, SYS_PMEM_READ
        j       1f
pmkv_write:
        li      t0, SYS_PMEM_WRITE
        j       1f
pmkv_flush:
        li      t0, SYS_PMEM_FLUSH
1:      ecall
        bltz    a0, 2f
        ret
2:      mv      s2, a0
        addi    a0, s3, PF_LINE
        la      a1, u_msg_pk_error
        call    u_fmt_str
        mv      a1, s2
        call    u_fmt_sdec
        mv      a1, a0
        addi    a0, s3, PF_LINE
        call    u_print_line
        li      a0, 2
        j       u_exit

# pmkv_word(a2 = longest length) -> a0, a1 = the next word (s0 moves past it); exits through
# pmkv_bad_argument when there is none or it is longer.
pmkv_word:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a2, 4(sp)
        mv      a0, s0
        mv      a1, s1
        call    u_next_token
        mv      s0, a1
        beq     a0, a1, 1f              # missing
        sub     t0, a1, a0
        lw      t1, 4(sp)
        bltu    t1, t0, 1f              # too long
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret
1:      mv      a2, a1
        mv      a1, a0
        j       pmkv_bad_argument

# pmkv_report(a0 = value start, a1 = value end, a2 = seq): "pmkv: COMMAND KEY = VALUE (seq N)"
pmkv_report:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        sw      a1, 8(sp)
        sw      a2, 12(sp)
        call    pmkv_line_start
        la      a1, u_msg_equals
        call    u_fmt_str
        lw      a1, 4(sp)
        lw      a2, 8(sp)
        call    record_fmt_bytes
        la      a1, u_msg_pk_seq
        call    u_fmt_str
        lw      a1, 12(sp)
        call    u_fmt_dec
        li      t0, ')'
        sb      t0, 0(a0)
        addi    a1, a0, 1
        addi    a0, s3, PF_LINE
        call    u_print_line
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# pmkv_note(a0 = message): "pmkv: COMMAND KEY<message>"
pmkv_note:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      a0, 4(sp)
        call    pmkv_line_start
        lw      a1, 4(sp)
        call    u_fmt_str
        mv      a1, a0
        addi    a0, s3, PF_LINE
        call    u_print_line
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# pmkv_line_start() -> a0 = end of "pmkv: COMMAND KEY" in the frame's line
pmkv_line_start:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        addi    a0, s3, PF_LINE
        la      a1, u_msg_pmkv
        call    u_fmt_str
        lw      a1, PF_COMMAND(s3)
        call    u_fmt_str
        la      a1, u_msg_space
        call    u_fmt_str
        lw      a1, PF_KEY(s3)
        lw      a2, PF_KEY_END(s3)
        call    record_fmt_bytes
        lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# u_copy_bytes(a0 = destination, a1 = start, a2 = end) -> a0 = destination after the bytes
u_copy_bytes:
        j       record_fmt_bytes

u_name_pmkv:            .asciz "pmkv"
u_msg_pmkv:             .asciz "pmkv: "
u_msg_pk_no_pmem:       .asciz "pmkv: no persistent memory (or less than 8 KiB)\n"
u_msg_pk_bad_header:    .asciz "pmkv: the persistent memory holds something else (bad header)\n"
u_msg_pk_formatted:     .asciz "formatted "
u_msg_pk_bytes:         .asciz " bytes, "
u_msg_pk_torn:          .asciz "dropped a torn record at offset "
u_msg_pk_records:       .asciz " records, next seq "
u_msg_pk_seq:           .asciz " (seq "
u_msg_pk_full:          .asciz ": the log is full"
u_msg_pk_data_full:     .asciz ": no free slot near its home in the data area"
u_msg_pk_slots:         .asciz " slots, log at "
u_msg_pk_applied:       .asciz "applied "
u_msg_pk_applied_end:   .asciz " log records to the data area"
u_msg_pk_error:         .asciz "pmkv: persistent memory error "

        .align  2
user_image_end:

# The program table (kernel data): name, entry offset in the user image, flags.
        .data
        .align  2
prog_table:
        .word   u_name_sieve, sieve_main - user_image_start, 0
        .word   u_name_crc32, crc32_main - user_image_start, 0
        .word   u_name_walker, walker_main - user_image_start, 0
        .word   u_name_ping, ping_main - user_image_start, 0
        .word   u_name_fault, fault_main - user_image_start, PROG_MAY_FAULT
        .word   u_name_record, record_main - user_image_start, 0
        .word   u_name_wc, wc_main - user_image_start, 0
        .word   u_name_heap, heap_main - user_image_start, 0
        .word   u_name_reader, reader_main - user_image_start, 0
        .word   u_name_idle, idle_main - user_image_start, 0
        .word   u_name_kvcache, kvcache_main - user_image_start, 0
        .word   u_name_meminfo, meminfo_main - user_image_start, 0
        .word   u_name_pmkv, pmkv_main - user_image_start, 0
        .word   0, 0, 0
        .text
