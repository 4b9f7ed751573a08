# args.s — the boot arguments: which programs to run, with which arguments.
#
#   bootargs := { option } { program { argument } }
#   option   := "slice=" number            (time slice in instructions, at least MIN_TIME_SLICE)
#             | "flush=" ("asid" | "always") (always: sfence zero, zero on every context switch,
#                                              as an ASID-unaware kernel would; a bench workload)
#             | "stats=memory"              (the summary adds a line of page classes, mm.s)
#   program  := a name from the program table (sieve, crc32, walker, ping, fault, record, wc)
#
# Tokens are separated by blanks. Every token up to the next program name is an argument of the
# program before it; the program receives that text verbatim (from its first argument to its
# last). With no program named, the default list below runs.

        .equ    MIN_TIME_SLICE, 1000
        .equ    BOOTARGS_MAX, 4095

        .text

# parse_bootargs() -> a0 = 0, or -1 after printing what is wrong
parse_bootargs:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        la      t0, bootargs_base
        lw      t0, 0(t0)
        la      t1, bootargs_len
        lw      t1, 0(t1)
        beqz    t0, 3f                  # no boot-argument device: no arguments
        li      t2, BOOTARGS_MAX
        bgeu    t2, t1, 1f
        mv      t1, t2
1:      la      a1, bootargs_buf        # the window is word-addressed MMIO: copy whole words
        li      t2, 0
2:      bgeu    t2, t1, 3f
        add     t3, t0, t2
        lw      t3, 0(t3)
        add     a0, a1, t2
        sw      t3, 0(a0)
        addi    t2, t2, 4
        j       2b
3:      la      a0, bootargs_buf
        add     a1, a0, t1
        call    parse_spec_string
        bnez    a0, 4f
        la      t0, spec_count
        lw      t0, 0(t0)
        bnez    t0, 4f
        la      a0, default_args
        la      a1, default_args_end
        call    parse_spec_string
4:      lw      ra, 0(sp)
        addi    sp, sp, 16
        ret

# parse_spec_string(a0 = start, a1 = end) -> a0 = 0, or -1 after printing what is wrong
parse_spec_string:
        addi    sp, sp, -32
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        sw      s3, 16(sp)
        mv      s0, a0                  # s0 = cursor
        mv      s1, a1                  # s1 = end
        li      s2, 0                   # s2 = the spec being filled (0: none yet)
1:      mv      a0, s0
        mv      a1, s1
        call    k_next_token
        beq     a0, a1, 8f
        mv      s3, a0                  # s3 = token start
        mv      s0, a1                  # s0 = token end
        call    find_program
        bnez    a0, 3f
        bnez    s2, 5f
        mv      a0, s3                  # before the first program: an option
        mv      a1, s0
        la      a2, opt_slice
        call    k_token_prefix
        beqz    a0, 20f
        mv      a1, s0
        call    k_parse_number
        bnez    a1, 7f
        li      t0, MIN_TIME_SLICE
        bltu    a0, t0, 7f
        la      t0, time_slice
        sw      a0, 0(t0)
        j       1b
3:      la      t0, spec_count          # a program name: a new spec
        lw      t1, 0(t0)
        li      t2, MAX_SPECS
        bgeu    t1, t2, 9f
        addi    t2, t1, 1
        sw      t2, 0(t0)
        li      t2, SPEC_BYTES
        mul     t1, t1, t2
        la      s2, specs
        add     s2, s2, t1
        sw      a0, SPEC_PROG(s2)
        sw      zero, SPEC_ARGS(s2)
        sw      zero, SPEC_LEN(s2)
        j       1b
5:      lw      t0, SPEC_ARGS(s2)       # an argument: extend the spec's argument text
        bnez    t0, 51f
        sw      s3, SPEC_ARGS(s2)
        mv      t0, s3
51:     sub     t1, s0, t0
        sw      t1, SPEC_LEN(s2)
        j       1b
6:      la      a0, msg_unknown_program
        call    kputs
        call    kput_token
        la      a0, msg_known_programs
        call    kputs
        la      s2, prog_table          # every program of the table, so the list cannot drift
61:     lw      a0, PROG_NAME(s2)
        beqz    a0, 62f
        la      a0, msg_space
        call    kputs
        lw      a0, PROG_NAME(s2)
        call    kputs
        addi    s2, s2, PROG_BYTES
        j       61b
62:     la      a0, msg_close_newline
        call    kputs
        j       10f
7:      la      a0, msg_bad_option
        call    kputs
        call    kput_token
        la      a0, msg_quote_newline
        call    kputs
        j       10f
9:      la      a0, msg_too_many
        call    kputs
        j       10f
20:     mv      a0, s3                  # flush=asid | flush=always
        mv      a1, s0
        la      a2, opt_flush
        call    k_token_prefix
        beqz    a0, 30f                 # not flush=: maybe stats=
        mv      s3, a0                  # s3 = the value after "flush="
        mv      a1, s0
        la      a2, opt_flush_always
        call    k_token_is
        li      t1, 1
        bnez    a0, 21f
        mv      a0, s3
        mv      a1, s0
        la      a2, opt_flush_asid
        call    k_token_is
        li      t1, 0
        beqz    a0, 23f
21:     la      t0, flush_on_switch
        sw      t1, 0(t0)
        j       1b
23:     addi    s3, s3, -6              # back to the start of "flush=" for the message
        la      a0, msg_bad_option
        call    kputs
        call    kput_token
        la      a0, msg_bad_flush
        call    kputs
        j       10f
30:     mv      a0, s3                  # stats=memory
        mv      a1, s0
        la      a2, opt_stats
        call    k_token_prefix
        beqz    a0, 6b                  # neither option nor program
        mv      a1, s0
        la      a2, opt_stats_memory
        call    k_token_is
        beqz    a0, 31f
        la      t0, stats_memory
        li      t1, 1
        sw      t1, 0(t0)
        j       1b
31:     la      a0, msg_bad_option
        call    kputs
        call    kput_token
        la      a0, msg_bad_stats
        call    kputs
        j       10f
8:      li      a0, 0
        j       11f
10:     li      a0, -1
11:     lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        lw      s3, 16(sp)
        addi    sp, sp, 32
        ret

# kput_token (s3 = start, s0 = end): prints the token
kput_token:
        mv      a0, s3
        sub     a1, s0, s3
        j       kwrite

# find_program(a0 = token start, a1 = token end) -> a0 = program table entry, or 0
find_program:
        addi    sp, sp, -16
        sw      ra, 0(sp)
        sw      s0, 4(sp)
        sw      s1, 8(sp)
        sw      s2, 12(sp)
        mv      s0, a0
        mv      s1, a1
        la      s2, prog_table
1:      lw      a2, PROG_NAME(s2)
        beqz    a2, 2f
        mv      a0, s0
        mv      a1, s1
        call    k_token_is
        bnez    a0, 3f
        addi    s2, s2, PROG_BYTES
        j       1b
2:      li      a0, 0
        j       4f
3:      mv      a0, s2
4:      lw      ra, 0(sp)
        lw      s0, 4(sp)
        lw      s1, 8(sp)
        lw      s2, 12(sp)
        addi    sp, sp, 16
        ret

        .data
opt_slice:              .asciz "slice="
opt_flush:              .asciz "flush="
opt_flush_always:       .asciz "always"
opt_flush_asid:         .asciz "asid"
opt_stats:              .asciz "stats="
opt_stats_memory:       .asciz "memory"
msg_unknown_program:    .asciz "[kernel] boot args: unknown program '"
msg_known_programs:     .asciz "' (programs:"
msg_close_newline:      .asciz ")\n"
msg_bad_option:         .asciz "[kernel] boot args: bad option '"
msg_quote_newline:      .asciz "' (slice=N needs N >= 1000)\n"
msg_bad_flush:          .asciz "' (flush=asid or flush=always)\n"
msg_bad_stats:          .asciz "' (stats=memory)\n"
msg_too_many:           .asciz "[kernel] boot args: more than 32 programs\n"

# The programs a default boot runs.
default_args:           .ascii "sieve 100000 crc32 65536 walker 4M random 2 ping 3 fault"
default_args_end:

        .align  2
bootargs_base:          .word 0         # the boot-argument window (0: no such device)
bootargs_len:           .word 0
flush_on_switch:        .word 0         # flush=always: sfence zero, zero on every context switch

        .bss
        .align  2
bootargs_buf:           .space BOOTARGS_MAX + 1
