/**
 * attachStandardDevices: the device-table order (console, timer, power, boot arguments) that
 * is part of the guest ABI, as a guest reads it, and whole-machine determinism.
 */
import { describe, expect, it } from 'vitest';
import { DeviceType, GuestPhys } from '../../guest-isa/arch.ts';
import { hexWords, runGuest } from './harness.ts';

describe('standard devices', () => {
  it('publishes console, timer, power and boot arguments in that order, 4 KiB windows from 0xf0001000', () => {
    // Dumps the header (4 words) and each entry (4 words) of the device table.
    const outcome = runGuest(`
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      s1, 0xf0000000
        lw      s2, 4(s1)
        srli    s2, s2, 16
        slli    s2, s2, 4
        addi    s2, s2, 16          # header + entries, in bytes
        li      s3, 0
1:      add     t0, s1, s3
        lw      a0, 0(t0)
        mv      a1, s0
        call    put_hex
        putc    s0, 32
        addi    s3, s3, 4
        blt     s3, s2, 1b
        exit    0
    `, { vcpus: 3, bootArgs: 'quiet', memoryBytes: 2 << 20 });
    const words = hexWords(outcome.output);
    expect(words.slice(0, 4)).toEqual([0x54445642, 1 | (4 << 16), 2 << 20, 3]);
    const entries = [];
    for (let at = 4; at < words.length; at += 4) entries.push(words.slice(at, at + 4));
    expect(entries).toEqual([
      [DeviceType.CONSOLE, GuestPhys.MMIO_BASE, 4096, 0],
      [DeviceType.TIMER, GuestPhys.MMIO_BASE + 0x1000, 4096, 3],
      [DeviceType.POWER, GuestPhys.MMIO_BASE + 0x2000, 4096, 0],
      [DeviceType.BOOTARGS, GuestPhys.MMIO_BASE + 0x3000, 4096, 5],
    ]);
    expect([outcome.devices.console.base, outcome.devices.timer.base, outcome.devices.power.base, outcome.devices.bootArgs.base]).toEqual([
      0xf0001000, 0xf0002000, 0xf0003000, 0xf0004000,
    ]);
  });

  it('counts MMIO accesses per device', () => {
    const outcome = runGuest(`
_start: li      a0, DEV_CONSOLE
        call    find_device
        putc    a0, 0x21
        putc    a0, 0x21
        exit    0
    `);
    const counts = outcome.vm.bus.accessCounts();
    expect(counts['console']).toBe(2);
    expect(counts['timer']).toBe(0);
    expect(counts['device-table']).toBeGreaterThan(0);
  });

  it('runs the same multi-vCPU program identically twice', () => {
    // Both vCPUs race on a shared counter with amoadd, print through the console and use the timer.
    const program = `
_start: mv      s3, a0
        li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        la      s1, counter
        li      t0, 30000
1:      li      t1, 1
        amoadd  zero, t1, (s1)
        addi    t0, t0, -1
        bnez    t0, 1b
        lw      a0, 0(s1)
        mv      a1, s0
        call    put_hex
        putc    s0, 0x0a
        bnez    s3, 2f
3:      j       3b
2:      csrr    a0, time
        mv      a1, s0
        call    put_hex
        exit    0
        .data
counter: .word 0
    `;
    const first = runGuest(program, { vcpus: 2 });
    const second = runGuest(program, { vcpus: 2 });
    expect(first.reason.kind).toBe('halted');
    expect(second.output).toBe(first.output);
    expect(second.instructions).toBe(first.instructions);
    expect(second.vm.vcpus.map((v) => v.clock)).toEqual(first.vm.vcpus.map((v) => v.clock));
    expect(hexWords(first.output)[1]).toBe(60000); // vCPU 1 finishes last and sees both counts
  });
});
