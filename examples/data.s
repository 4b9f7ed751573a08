# data.s — a data-heavy program: copies a table of 32 words from .data into a .bss buffer,
# bubble-sorts the buffer (unsigned, ascending), prints every word as 8 hex digits and a
# newline through CONSOLE_WRITE, and exits with code 0.

        .equ    HCALL_EXIT, 1
        .equ    HCALL_CONSOLE_WRITE, 2
        .equ    COUNT, 32               # words in the table
        .equ    LINE_BYTES, 9           # "xxxxxxxx\n"

# hypercall number: a0 = number, then hcall (a1..a3 are the arguments).
        .macro  hypercall number
        li      a0, \number
        hcall
        .endm

        .text
        .global _start
_start:
        # Copy table -> sorted.
        la      s0, table
        la      s1, sorted
        li      t0, COUNT
1:      lw      t1, 0(s0)
        sw      t1, 0(s1)
        addi    s0, s0, 4
        addi    s1, s1, 4
        addi    t0, t0, -1
        bnez    t0, 1b

        # Bubble sort: each pass bubbles the largest remaining word to the end.
        li      s2, COUNT - 1           # s2 = comparisons in this pass
pass:   beqz    s2, print
        la      s0, sorted
        mv      t0, s2
        li      s3, 0                   # s3 = swapped anything in this pass?
2:      lw      t1, 0(s0)
        lw      t2, 4(s0)
        bgeu    t2, t1, 3f              # already in order
        sw      t2, 0(s0)
        sw      t1, 4(s0)
        li      s3, 1
3:      addi    s0, s0, 4
        addi    t0, t0, -1
        bnez    t0, 2b
        beqz    s3, print               # no swap: the buffer is sorted
        addi    s2, s2, -1
        j       pass

        # Print every word of the sorted buffer.
print:  la      s0, sorted
        li      s1, COUNT
4:      lw      a0, 0(s0)
        call    to_hex
        la      a1, line
        li      a2, LINE_BYTES
        hypercall HCALL_CONSOLE_WRITE
        addi    s0, s0, 4
        addi    s1, s1, -1
        bnez    s1, 4b

        li      a1, 0                   # exit code
        hypercall HCALL_EXIT
5:      j       5b                      # not reached

# to_hex: writes a0 as 8 lowercase hex digits and a newline into `line`.
# Clobbers a0, t0-t3.
to_hex: la      t0, line
        li      t1, '\n'
        sb      t1, 8(t0)
        addi    t0, t0, 7               # last digit first
        li      t1, 8                   # digits left
6:      andi    t2, a0, 0xf
        la      t3, digits
        add     t3, t3, t2
        lbu     t2, 0(t3)
        sb      t2, 0(t0)
        srli    a0, a0, 4
        addi    t0, t0, -1
        addi    t1, t1, -1
        bnez    t1, 6b
        ret

        .data
digits: .ascii  "0123456789abcdef"
        .align  2
table:  .word   0x0000002a, 0xdeadbeef, 0x00000007, 0x12345678
        .word   0x00000000, 0xffffffff, 0x00001000, 0x80000000
        .word   0x7fffffff, 0x00000100, 0xcafebabe, 0x00000003
        .word   0x0badf00d, 0x00000010, 0x55555555, 0xaaaaaaaa
        .word   0x00000001, 0x0000ffff, 0x00010000, 0x00000002
        .word   1000, 999, 500500, 42
        .word   0x13579bdf, 0x02468ace, 0xfedcba98, 0x01234567
        .word   -2, -100, 65, 0x40000000

        .bss
sorted: .space  COUNT * 4               # the sorted copy of the table
line:   .space  LINE_BYTES              # one output line
