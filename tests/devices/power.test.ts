/**
 * The power device (SPEC.md §13.5) and the EXIT hypercall: exit codes, and a guest-requested
 * reset that restarts every vCPU and device in its reset state (§15).
 */
import { describe, expect, it } from 'vitest';
import { exitCodeOf, hexWords, runGuest } from './harness.ts';

/** s0 = console, s1 = timer, s2 = power. */
const FIND_DEVICES = `
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, DEV_TIMER
        call    find_device
        mv      s1, a0
        li      a0, DEV_POWER
        call    find_device
        mv      s2, a0
`;

const PRINT_A0 = `
        mv      a1, s0
        call    put_hex
        putc    s0, 32
`;

describe('power device', () => {
  it('POWEROFF stops the VM at once with the value written as exit code; registers read 0', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        lw      a0, 0(s2)
        ${PRINT_A0}
        lw      a0, 4(s2)
        ${PRINT_A0}
        li      t0, 0x1234
        sw      t0, 0(s2)
        putc    s0, 0x58            # never printed
        exit    1
    `);
    expect(outcome.output).toBe('00000000 00000000 ');
    expect(outcome.reason).toEqual({ kind: 'halted', exitCode: 0x1234 });
  });

  it('the EXIT hypercall powers off with a1 as the exit code', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        li      a1, -3
        li      a0, HCALL_EXIT
        hcall
        putc    s0, 0x58            # never printed
    `);
    expect(outcome.output).toBe('');
    expect(exitCodeOf(outcome)).toBe(-3);
  });

  it('RESET = 1 restarts the guest with devices, TIME and INSTRET in their reset state; other values are ignored', () => {
    // The console input survives the reset, so each boot reads its own letter: 'a', then 'b'.
    const outcome = runGuest(`${FIND_DEVICES}
        csrr    a0, time            # the same small value at each boot
        ${PRINT_A0}
        lw      a0, 12(s0)          # console CONTROL: 0
        ${PRINT_A0}
        lw      a0, 0(s1)           # TIMECMP low: all ones
        ${PRINT_A0}
        lw      t0, 4(s0)
        sw      t0, 0(s0)
        putc    s0, 0x0a
        li      t1, 0x62
        beq     t0, t1, second
        li      t0, 1
        sw      t0, 12(s0)          # CONTROL = 1: the reset must clear it
        li      t0, 5
        sw      t0, 0(s1)           # TIMECMP low = 5: the reset must restore all ones
        li      t0, 2
        sw      t0, 4(s2)           # not 1: ignored
        putc    s0, 0x2e
        li      t0, 1
        sw      t0, 4(s2)           # reset
        putc    s0, 0x58            # never printed
second: exit    7
    `, { input: 'ab' });
    expect(exitCodeOf(outcome)).toBe(7);
    expect(outcome.resets).toBe(1);
    const lines = outcome.output.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]!.endsWith(' a')).toBe(true);
    expect(lines[1]!.startsWith('.')).toBe(true);
    const firstBoot = hexWords(lines[0]!);
    const secondBoot = hexWords(lines[1]!.slice(1));
    expect(firstBoot).toEqual([firstBoot[0], 0, 0xffffffff]);
    expect(secondBoot).toEqual(firstBoot);
    expect(lines[1]!.endsWith(' b')).toBe(true);
    expect(outcome.output).not.toContain('X');
    // Only the second boot's instructions are on the vCPU's counters; the run counts both.
    const vcpu = outcome.vm.vcpus[0]!;
    expect(vcpu.instret).toBeLessThan(outcome.instructions);
    expect(vcpu.clock).toBe(vcpu.instret);
  });

  it('counts the instruction budget across resets', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        li      t0, 1
        sw      t0, 4(s2)           # reset forever
    `, { maxInstructions: 5000 });
    expect(outcome.reason.kind).toBe('budget');
    expect(outcome.instructions).toBe(5000);
    expect(outcome.resets).toBeGreaterThan(50);
  });
});
