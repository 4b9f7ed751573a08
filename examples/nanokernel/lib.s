# lib.s — string formatting and parsing routines, written once and instantiated twice: for the
# kernel (`STRLIB k_`) and inside the user image (`STRLIB u_`), since user programs run in their
# own address spaces and cannot call kernel code. Every routine is a leaf that touches only
# a0-a3 and t0-t3; "token" means a run of bytes > 0x20 in [start, end).

        .macro  STRLIB p

# \p\()fmt_str(a0 = dst, a1 = NUL-terminated string) -> a0 = dst after the copy (no NUL written)
\p\()fmt_str:
1:      lbu     t0, 0(a1)
        beqz    t0, 2f
        sb      t0, 0(a0)
        addi    a0, a0, 1
        addi    a1, a1, 1
        j       1b
2:      ret

# \p\()fmt_dec(a0 = dst, a1 = unsigned value) -> a0 = dst after the decimal digits
\p\()fmt_dec:
        mv      t0, a1
        li      t2, 10
        mv      t1, a0
1:      divu    t0, t0, t2              # count the digits first, then write them backwards
        addi    t1, t1, 1
        bnez    t0, 1b
        mv      t3, t1
2:      remu    t0, a1, t2
        divu    a1, a1, t2
        addi    t0, t0, '0'
        addi    t1, t1, -1
        sb      t0, 0(t1)
        bnez    a1, 2b
        mv      a0, t3
        ret

# \p\()fmt_sdec(a0 = dst, a1 = signed value) -> a0 = dst after the digits
\p\()fmt_sdec:
        bgez    a1, \p\()fmt_dec
        li      t0, '-'
        sb      t0, 0(a0)
        addi    a0, a0, 1
        neg     a1, a1
        j       \p\()fmt_dec

# \p\()fmt_hex(a0 = dst, a1 = value) -> a0 = dst after "0x" and 8 lowercase hex digits
\p\()fmt_hex:
        li      t0, '0'
        sb      t0, 0(a0)
        li      t0, 'x'
        sb      t0, 1(a0)
        addi    a0, a0, 2
        li      t1, 28
1:      srl     t0, a1, t1
        andi    t0, t0, 15
        slti    t2, t0, 10
        bnez    t2, 2f
        addi    t0, t0, 'a' - '0' - 10
2:      addi    t0, t0, '0'
        sb      t0, 0(a0)
        addi    a0, a0, 1
        addi    t1, t1, -4
        bgez    t1, 1b
        ret

# \p\()next_token(a0 = cursor, a1 = end) -> a0 = token start, a1 = token end (a0 = a1: no token)
\p\()next_token:
        mv      t3, a1
1:      bgeu    a0, t3, 3f              # skip blanks
        lbu     t0, 0(a0)
        sltiu   t0, t0, 33
        beqz    t0, 2f
        addi    a0, a0, 1
        j       1b
2:      mv      a1, a0                  # find the end of the token
4:      bgeu    a1, t3, 5f
        lbu     t0, 0(a1)
        sltiu   t0, t0, 33
        bnez    t0, 5f
        addi    a1, a1, 1
        j       4b
3:      mv      a1, a0
5:      ret

# \p\()token_is(a0 = start, a1 = end, a2 = NUL-terminated string) -> a0 = 1 when equal, else 0
\p\()token_is:
1:      lbu     t1, 0(a2)
        beq     a0, a1, 3f
        beqz    t1, 2f
        lbu     t0, 0(a0)
        bne     t0, t1, 2f
        addi    a0, a0, 1
        addi    a2, a2, 1
        j       1b
2:      li      a0, 0
        ret
3:      seqz    a0, t1
        ret

# \p\()token_prefix(a0 = start, a1 = end, a2 = NUL-terminated prefix)
#   -> a0 = the position after the prefix when the token starts with it, else 0
\p\()token_prefix:
1:      lbu     t1, 0(a2)
        beqz    t1, 3f
        beq     a0, a1, 2f
        lbu     t0, 0(a0)
        bne     t0, t1, 2f
        addi    a0, a0, 1
        addi    a2, a2, 1
        j       1b
2:      li      a0, 0
3:      ret

# \p\()find_char(a0 = start, a1 = end, a2 = byte) -> a0 = position of the first such byte, or end
\p\()find_char:
1:      beq     a0, a1, 2f
        lbu     t0, 0(a0)
        beq     t0, a2, 2f
        addi    a0, a0, 1
        j       1b
2:      ret

# \p\()parse_number(a0 = start, a1 = end) -> a0 = value, a1 = 0 (ok) or -1 (malformed / too big)
#   Syntax: decimal digits, or 0x and hex digits, then optionally one suffix K, M or G
#   (KiB, MiB, GiB; either case). The value must fit in 32 bits unsigned.
\p\()parse_number:
        mv      t3, a0                  # t3 = cursor
        li      a0, 0                   # a0 = value
        li      a2, 0                   # a2 = digits seen
        li      t2, 10                  # t2 = base
        addi    t0, t3, 2
        bltu    a1, t0, 1f              # shorter than "0x"
        lbu     t0, 0(t3)
        li      t1, '0'
        bne     t0, t1, 1f
        lbu     t0, 1(t3)
        ori     t0, t0, 0x20
        li      t1, 'x'
        bne     t0, t1, 1f
        addi    t3, t3, 2
        li      t2, 16
1:      beq     t3, a1, 8f
        lbu     t0, 0(t3)
        addi    t1, t0, -'0'
        sltiu   a3, t1, 10
        bnez    a3, 4f                  # 0-9
        li      a3, 16
        bne     t2, a3, 5f
        ori     t1, t0, 0x20
        addi    t1, t1, -'a'
        sltiu   a3, t1, 6
        beqz    a3, 5f
        addi    t1, t1, 10              # a-f
4:      mulhu   a3, a0, t2              # value = value * base + digit, refusing overflow
        bnez    a3, 9f
        mul     a0, a0, t2
        add     a0, a0, t1
        bltu    a0, t1, 9f
        addi    a2, a2, 1
        addi    t3, t3, 1
        j       1b
5:      beqz    a2, 9f                  # a suffix: after a digit, and the last byte
        addi    a3, t3, 1
        bne     a3, a1, 9f
        ori     t0, t0, 0x20
        li      t1, 10
        li      a3, 'k'
        beq     t0, a3, 6f
        li      t1, 20
        li      a3, 'm'
        beq     t0, a3, 6f
        li      t1, 30
        li      a3, 'g'
        bne     t0, a3, 9f
6:      li      a3, 32
        sub     a3, a3, t1
        srl     a3, a0, a3
        bnez    a3, 9f
        sll     a0, a0, t1
        li      a1, 0
        ret
8:      beqz    a2, 9f
        li      a1, 0
        ret
9:      li      a1, -1
        ret

        .endm
