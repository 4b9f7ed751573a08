/**
 * The boot arguments window (SPEC.md §13.6): the string, its length as info, zeros after the
 * NUL, writes refused, and the length limit checked when the device is attached.
 */
import { describe, expect, it } from 'vitest';
import { attachStandardDevices, BootArgsError, MAX_BOOT_ARGS_BYTES } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { exitCodeOf, hexWords, runGuest } from './harness.ts';

/** s0 = console, s1 = boot arguments window, s2 = their length (info). */
const FIND_DEVICES = `
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, DEV_BOOTARGS
        call    find_device
        mv      s1, a0
        mv      s2, a1
`;

const PRINT_A0 = `
        mv      a1, s0
        call    put_hex
        putc    s0, 32
`;

/** Prints the length, the string (byte k = bits 8(k&3)+7..8(k&3) of the word at k&~3), the last word. */
const ECHO_BOOT_ARGS = `${FIND_DEVICES}
        mv      a0, s2
        ${PRINT_A0}
        li      a2, 0
1:      srli    t0, a2, 2
        slli    t0, t0, 2
        add     t0, t0, s1
        lw      t1, 0(t0)
        andi    t2, a2, 3
        slli    t2, t2, 3
        srl     t1, t1, t2
        andi    t1, t1, 0xff
        beqz    t1, 2f
        sw      t1, 0(s0)
        addi    a2, a2, 1
        j       1b
2:      putc    s0, 0x0a
        lw      a0, 4092(s1)
        ${PRINT_A0}
        exit_reg a2
`;

describe('boot arguments', () => {
  it('holds the UTF-8 string, NUL-terminated, with its byte length as info', () => {
    const args = 'root=/dev/bv0 héllo';
    const outcome = runGuest(ECHO_BOOT_ARGS, { bootArgs: args });
    const [lengthLine, stringLine] = [outcome.output.slice(0, 9), outcome.output.slice(9)];
    expect(hexWords(lengthLine)).toEqual([20]);
    expect(stringLine.split('\n')[0]).toBe(args);
    expect(hexWords(stringLine.split('\n')[1]!)).toEqual([0]);
    expect(exitCodeOf(outcome)).toBe(20);
  });

  it('is empty by default', () => {
    const outcome = runGuest(ECHO_BOOT_ARGS);
    expect(outcome.output).toBe('00000000 \n00000000 ');
  });

  it('a write is a store access fault with tval = the address', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        la      t0, handler
        csrw    tvec, t0
        sw      zero, 8(s1)
        exit    1
handler:
        csrr    a0, cause
        ${PRINT_A0}
        csrr    a0, tval
        ${PRINT_A0}
        sub     a0, a0, s1
        ${PRINT_A0}
        exit    0
    `, { bootArgs: 'x' });
    expect(hexWords(outcome.output)).toEqual([7, 0xf0004008, 8]);
  });

  it('a write without a trap handler stops the VM with a guest error', () => {
    const outcome = runGuest(`${FIND_DEVICES}
        sw      zero, 0(s1)
        exit    1
    `);
    expect(outcome.reason.kind).toBe('guest-error');
    expect(outcome.reason.kind === 'guest-error' && outcome.reason.message).toMatch(/store access fault/);
  });

  it(`accepts ${MAX_BOOT_ARGS_BYTES} bytes and refuses more (counting bytes, not characters) before attaching anything`, () => {
    const hv = createHypervisor({ hostMemoryBytes: 4 << 20 });
    const full = hv.createVm({ memoryBytes: 1 << 20 });
    const devices = attachStandardDevices(full, { bootArgs: 'x'.repeat(MAX_BOOT_ARGS_BYTES) });
    expect(devices.bootArgs.read(full.vcpus[0]!, 4092)).toBe(0x00787878);
    expect(devices.bootArgs.read(full.vcpus[0]!, 0)).toBe(0x78787878);

    const refused = hv.createVm({ memoryBytes: 1 << 20 });
    const tooLong = 'é'.repeat(2048); // 2048 characters, 4096 bytes
    expect(() => attachStandardDevices(refused, { bootArgs: tooLong })).toThrow(BootArgsError);
    expect(() => attachStandardDevices(refused, { bootArgs: tooLong })).toThrow(/4096 bytes long; at most 4095/);
    expect(Object.keys(refused.bus.accessCounts())).toEqual(['device-table']);
    expect(() => attachStandardDevices(refused, { bootArgs: 'a\0b' })).toThrow(expect.objectContaining({ code: 'BV_BOOTARGS_NUL' }));
  });
});
