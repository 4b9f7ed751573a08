/*
 * bench/guests/crc32.s for RV32 (rv32im, S-mode, Sv32 on): table-driven CRC-32 over a 64 KiB
 * buffer, ROUNDS times; the same instructions as the BV32 guest after its enable_paging, with
 * every address moved up to RAM_BASE. Per round: 2 + 16384 * 34 + 2 = 557,060 instructions.
 * The runner (bench/qemu.ts) passes -DROUNDS=n.
 */
#define PAGING_BYTES 0x800000
#define PT_OFFSET 0x700000
#define BUF (RAM_BASE + 0x100000)
#define BUF_BYTES 65536
#define TABLE (RAM_BASE + 0x80000)
#include "machine.inc"
main:
    read_instret s4, s5
    # build the table
    li s0, TABLE
    li t0, 0                  # n
    li s1, 0xedb88320
1:  mv t1, t0
    li t2, 8
2:  andi t3, t1, 1
    srli t1, t1, 1
    beqz t3, 3f
    xor t1, t1, s1
3:  addi t2, t2, -1
    bnez t2, 2b
    slli t3, t0, 2
    add t3, t3, s0
    sw t1, 0(t3)
    addi t0, t0, 1
    li t3, 256
    bne t0, t3, 1b
    # fill the buffer with a pattern: byte i = i * 7 + (i >> 8)
    li a1, BUF
    li a2, BUF + BUF_BYTES
    li t0, 0
4:  slli t1, t0, 3
    sub t1, t1, t0
    srli t2, t0, 8
    add t1, t1, t2
    sb t1, 0(a1)
    addi a1, a1, 1
    addi t0, t0, 1
    bne a1, a2, 4b
    li s2, ROUNDS
    li a0, -1
5:  li a1, BUF
    li a2, BUF + BUF_BYTES
6:  lw s3, 0(a1)
    xor t0, a0, s3
    andi t0, t0, 0xff
    slli t0, t0, 2
    add t0, t0, s0
    lw t0, 0(t0)
    srli a0, a0, 8
    xor a0, a0, t0
    srli s3, s3, 8
    xor t0, a0, s3
    andi t0, t0, 0xff
    slli t0, t0, 2
    add t0, t0, s0
    lw t0, 0(t0)
    srli a0, a0, 8
    xor a0, a0, t0
    srli s3, s3, 8
    xor t0, a0, s3
    andi t0, t0, 0xff
    slli t0, t0, 2
    add t0, t0, s0
    lw t0, 0(t0)
    srli a0, a0, 8
    xor a0, a0, t0
    srli s3, s3, 8
    xor t0, a0, s3
    andi t0, t0, 0xff
    slli t0, t0, 2
    add t0, t0, s0
    lw t0, 0(t0)
    srli a0, a0, 8
    xor a0, a0, t0
    addi a1, a1, 4
    bne a1, a2, 6b
    addi s2, s2, -1
    bnez s2, 5b
    not a1, a0
    li a0, 1
    read_instret s6, s7
    ecall
