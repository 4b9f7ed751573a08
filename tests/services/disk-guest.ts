/**
 * A guest that checks its own disk (the migration and replication disk tests): on pass p it reads
 * each of sectors 0..WRITTEN-1, requires its first word to be p (the passes it completed: its
 * previous write), writes p + 1 and the sector number, spins, then prints the pass's last digit
 * (after an initial 'A'). A disk that lost or mixed up any write makes it print 'X' and exit 99.
 */
import { GUEST_LIBRARY } from '../devices/harness.ts';

/** Sectors of the test disks (32 KiB). */
export const SECTORS = 64;
/** Sectors the guest rewrites each pass; those above are the base image's, never written. */
export const WRITTEN = 32;
/** Guest-physical address of the guest's one-sector DMA buffer. */
export const BUFFER_GPA = 0x8000;

/** The guest's assembly source (GUEST_LIBRARY included). */
export function diskGuestSource(spin = 20_000): string {
  return GUEST_LIBRARY + `
        .equ    DEV_BLOCK, 5
_start:
        li      a0, DEV_CONSOLE
        jal     ra, find_device
        mv      s0, a0
        li      a0, DEV_BLOCK
        jal     ra, find_device
        mv      s2, a0                  # block window
        putc    s0, 65
        li      s1, 0                   # passes completed
pass:
        li      s3, 0                   # sector
1:      sw      s3, 0(s2)               # SECTOR low
        sw      zero, 4(s2)
        li      t1, 1
        sw      t1, 8(s2)               # COUNT
        li      t0, ${BUFFER_GPA}
        sw      t0, 12(s2)              # DMA
        li      t1, 1
        sw      t1, 16(s2)              # READ
        lw      t2, 20(s2)
        bnez    t2, fail
        lw      t3, 0(t0)
        bne     t3, s1, fail            # the previous pass's write must be there
        addi    t3, s1, 1
        sw      t3, 0(t0)
        sw      s3, 4(t0)
        li      t1, 2
        sw      t1, 16(s2)              # WRITE
        lw      t2, 20(s2)
        bnez    t2, fail
        addi    s3, s3, 1
        li      a1, ${WRITTEN}
        bltu    s3, a1, 1b
        li      a2, ${spin}
2:      beqz    a2, 3f
        addi    a2, a2, -1
        j       2b
3:      addi    s1, s1, 1
        li      a3, 10
        remu    t3, s1, a3
        addi    t3, t3, 48
        sw      t3, 0(s0)
        j       pass
fail:
        putc    s0, 88
        exit    99
`;
}
