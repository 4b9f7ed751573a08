/**
 * The timer device (SPEC.md §13.4): banked TIMECMP and TIME, the timer interrupt at the right
 * virtual time, wfi skipping to the deadline, and IPIs between vCPUs.
 */
import { describe, expect, it } from 'vitest';
import { exitCodeOf, hexWords, runGuest } from './harness.ts';

/** s0 = console base, s1 = timer base, s3 = hartid. */
const FIND_DEVICES = `
_start: mv      s3, a0
        li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, DEV_TIMER
        call    find_device
        mv      s1, a0
`;

/** Prints register a0 as hex then a space (needs s0; clobbers a1, t0-t2, ra). */
const PRINT_A0 = `
        mv      a1, s0
        call    put_hex
        putc    s0, 32
`;

const TWO_TO_32 = 2 ** 32;

describe('timer registers', () => {
  it('TIMECMP resets to all ones, holds any 64-bit value exactly, and sets the vCPU deadline', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        lw      a0, 0(s1)           # TIMECMP low at reset
        ${PRINT_A0}
        lw      a0, 4(s1)           # TIMECMP high at reset
        ${PRINT_A0}
        li      t0, 0x10
        sw      t0, 0(s1)           # high still all ones: 0xffffffff_00000010
        lw      a0, 0(s1)
        ${PRINT_A0}
        lw      a0, 4(s1)
        ${PRINT_A0}
        li      t0, 7
        sw      t0, 4(s1)           # 0x00000007_00000010
        lw      a0, 16(s1)          # IPI is write-only: reads 0
        ${PRINT_A0}
        lw      a0, 20(s1)          # unused offset
        ${PRINT_A0}
        exit    0
    `);
    expect(hexWords(outcome.output)).toEqual([0xffffffff, 0xffffffff, 0x10, 0xffffffff, 0, 0]);
    expect(outcome.vm.vcpus[0]!.timerDeadline).toBe(7 * TWO_TO_32 + 0x10);
    expect(outcome.devices.timer.timecmp(outcome.vm.vcpus[0]!)).toBe(0x7_0000_0010n);
  });

  it('TIME reads this vCPU’s clock (between the TIME CSR before and after) and ignores writes', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        li      t0, 300
1:      addi    t0, t0, -1          # let time pass
        bnez    t0, 1b
        li      t0, -1
        sw      t0, 8(s1)           # TIME is read-only: ignored
        sw      t0, 12(s1)
        csrr    s2, time
        lw      a0, 8(s1)
        csrr    a3, time
        ${PRINT_A0}
        mv      a0, s2
        ${PRINT_A0}
        lw      a0, 12(s1)          # TIME high
        ${PRINT_A0}
        exit    0
    `);
    const [deviceTime, before, high] = hexWords(outcome.output) as [number, number, number];
    expect(before).toBeGreaterThan(600);
    expect(deviceTime).toBeGreaterThanOrEqual(before);
    expect(deviceTime).toBeLessThanOrEqual(before + 1);
    expect(high).toBe(0);
  });

  it('a TIMECMP in the past makes ip.TIMER pending; a later one (high word all ones first) clears it', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        li      t0, 5
        sw      t0, 0(s1)
        sw      zero, 4(s1)         # TIMECMP = 5: already passed
        csrr    a0, ip
        ${PRINT_A0}
        li      t0, -1
        sw      t0, 4(s1)           # high = all ones: far future
        csrr    a0, ip
        ${PRINT_A0}
        li      t0, -1
        sw      t0, 0(s1)           # all ones: never
        csrr    a0, ip
        ${PRINT_A0}
        exit    0
    `);
    expect(hexWords(outcome.output)).toEqual([0x20, 0, 0]);
    expect(outcome.vm.vcpus[0]!.timerDeadline).toBe(Infinity);
  });

  it('banks TIMECMP per vCPU and publishes the vCPU count as info', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        li      a0, DEV_TIMER
        call    find_device
        mv      s2, a1              # info
        addi    t0, s3, 0x100
        sw      t0, 0(s1)
        li      t0, 7
        sw      t0, 4(s1)
        mv      a0, s3
        ${PRINT_A0}
        lw      a0, 0(s1)
        ${PRINT_A0}
        mv      a0, s2
        ${PRINT_A0}
        bnez    s3, 2f
1:      j       1b                  # vCPU 0 spins until vCPU 1 powers off
2:      exit    0
    `, { vcpus: 2 });
    expect(exitCodeOf(outcome)).toBe(0);
    expect(hexWords(outcome.output)).toEqual([0, 0x100, 2, 1, 0x101, 2]);
    expect(outcome.vm.vcpus.map((vcpu) => vcpu.timerDeadline)).toEqual([7 * TWO_TO_32 + 0x100, 7 * TWO_TO_32 + 0x101]);
  });
});

describe('timer interrupt', () => {
  // Arms the timer 500 ticks ahead and counts loop iterations until the interrupt arrives; the
  // handler prints the deadline, TIME at entry, cause and the iteration count.
  const TIMER_INTERRUPT = `${FIND_DEVICES}
        la      t0, handler
        csrw    tvec, t0
        csrr    t0, time
        addi    a3, t0, 500         # deadline
        li      t1, -1
        sw      t1, 4(s1)           # high = all ones first: no early fire
        sw      a3, 0(s1)
        sw      zero, 4(s1)         # armed
        li      t0, IE_TIMER
        csrs    ie, t0
        li      t0, SIE
        csrs    status, t0
loop:   addi    s2, s2, 1
        j       loop
handler:
        csrr    a2, time
        mv      a0, a3
        ${PRINT_A0}
        mv      a0, a2
        ${PRINT_A0}
        csrr    a0, cause
        ${PRINT_A0}
        mv      a0, s2
        ${PRINT_A0}
        exit    0
  `;

  it('fires at the first recognition point at or after the deadline', () => {
    const outcome = runGuest(TIMER_INTERRUPT);
    const [deadline, timeAtEntry, cause, iterations] = hexWords(outcome.output) as [number, number, number, number];
    expect(cause).toBe(0x80000005);
    // The loop ends a block every 2 instructions, so the interrupt is at most 1 tick late.
    expect(timeAtEntry - deadline).toBeGreaterThanOrEqual(0);
    expect(timeAtEntry - deadline).toBeLessThanOrEqual(1);
    expect(iterations).toBeGreaterThanOrEqual(240);
    expect(iterations).toBeLessThanOrEqual(250);
  });

  it('is deterministic: the same program gives the same output and instruction count', () => {
    const first = runGuest(TIMER_INTERRUPT);
    const second = runGuest(TIMER_INTERRUPT, { quantum: 7 }); // a different host slicing changes nothing
    expect(second.output).toBe(first.output);
    expect(second.instructions).toBe(first.instructions);
    expect(second.vm.vcpus[0]!.clock).toBe(first.vm.vcpus[0]!.clock);
  });

  it('wfi with the timer enabled skips virtual time to the deadline', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        csrr    t0, time
        li      t1, 100000
        add     s2, t0, t1          # deadline, 100000 ticks ahead
        li      t1, -1
        sw      t1, 4(s1)
        sw      s2, 0(s1)
        sw      zero, 4(s1)
        li      t0, IE_TIMER
        csrs    ie, t0              # SIE = 0: wfi returns, no trap
        csrr    a3, time
        wfi
        csrr    a0, time
        ${PRINT_A0}
        mv      a0, s2
        ${PRINT_A0}
        mv      a0, a3
        ${PRINT_A0}
        exit    0
    `);
    const [timeAfter, deadline, timeBefore] = hexWords(outcome.output) as [number, number, number];
    // TIME becomes TIMECMP, then the wfi retires (+1) (SPEC.md §9).
    expect(timeAfter).toBe(deadline + 1);
    const vcpu = outcome.vm.vcpus[0]!;
    // Only the wait was skipped: wfi was at TIME = timeBefore + 1.
    expect(vcpu.clock - vcpu.instret).toBe(deadline - (timeBefore + 1));
    expect(outcome.instructions).toBeLessThan(1000);
  });
});

describe('IPI', () => {
  it('wakes a waiting vCPU with a software interrupt; bits for absent vCPUs are ignored', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        bnez    s3, secondary
        li      t0, 50000           # vCPU 0: long enough for vCPU 1 to be waiting
1:      addi    t0, t0, -1
        bnez    t0, 1b
        li      t0, 0x22            # vCPU 1, and vCPU 5 which does not exist
        sw      t0, 16(s1)
2:      j       2b
secondary:
        la      t0, handler
        csrw    tvec, t0
        li      t0, IE_SOFT
        csrs    ie, t0
        li      t0, SIE
        csrs    status, t0
        csrr    s2, instret
        wfi
        exit    99
handler:
        csrr    a0, cause
        ${PRINT_A0}
        csrr    a0, ip
        ${PRINT_A0}
        exit    42
    `, { vcpus: 2 });
    expect(exitCodeOf(outcome)).toBe(42);
    expect(hexWords(outcome.output)).toEqual([0x80000001, 0x2]);
    const [vcpu0, vcpu1] = outcome.vm.vcpus as [typeof outcome.vm.vcpus[0], typeof outcome.vm.vcpus[0]];
    expect(vcpu0!.ip & 0x2).toBe(0);
    // vCPU 1 really waited: the IPI came after vCPU 0's 100000-instruction loop.
    expect(vcpu0!.instret).toBeGreaterThan(100_000);
    expect(vcpu1!.instret).toBeLessThan(200);
  });
});
