/**
 * The MEMINFO device (devices/meminfo.ts, T-7): a guest finds it in the device table, reads the
 * limit, pressure and change counter the host sets, and sees them change while it runs; the
 * figures survive a checkpoint's state and a fork; bad host requests and damaged state are refused.
 */
import { describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, runWithResets } from '../../devices/index.ts';
import { attachMeminfo, HostPressure, MeminfoRegister } from '../../devices/meminfo.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { GUEST_LIBRARY, hexWords } from './harness.ts';

/** Prints LIMIT, PRESSURE, SEQ and RAM_PAGES, then waits (polling SEQ) for a change and prints them again. */
const READER = `${GUEST_LIBRARY}
        .globl  _start
_start:
        li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, 7                   # MEMINFO
        call    find_device
        beqz    a0, none
        mv      s1, a0
        call    print_all
        lw      s2, ${MeminfoRegister.SEQ}(s1)
1:      lw      t0, ${MeminfoRegister.SEQ}(s1)
        beq     t0, s2, 1b              # poll until the host changes something
        call    print_all
        exit    0
none:   exit    9

print_all:
        mv      s3, ra
        lw      a0, ${MeminfoRegister.LIMIT}(s1)
        mv      a1, s0
        call    put_hex
        lw      a0, ${MeminfoRegister.PRESSURE}(s1)
        mv      a1, s0
        call    put_hex
        lw      a0, ${MeminfoRegister.SEQ}(s1)
        mv      a1, s0
        call    put_hex
        lw      a0, ${MeminfoRegister.RAM_PAGES}(s1)
        mv      a1, s0
        call    put_hex
        putc    s0, 0x0a
        mv      ra, s3
        ret
`;

function boot() {
  const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
  const vm = hv.createVm({ memoryBytes: 1 << 20 });
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output });
  const meminfo = attachMeminfo(vm);
  vm.loadImage(assemble(READER).image);
  return { hv, vm, devices, meminfo, output };
}

describe('MEMINFO (device type 7)', () => {
  it('shows the guest the limit and pressure the host sets, and counts changes', () => {
    const { hv, vm, devices, meminfo, output } = boot();
    expect(meminfo.limitPages).toBe(256);
    const first = runWithResets(hv, vm, devices, { maxInstructions: 20_000 });
    expect(first.reason.kind).toBe('budget'); // polling: nothing changed yet
    meminfo.setCondition({ limitPages: 200, pressure: HostPressure.SOFT });
    const second = runWithResets(hv, vm, devices, { maxInstructions: 100_000 });
    expect(second.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(hexWords(output.text())).toEqual([256, 0, 0, 256, 200, 1, 1, 256]);
    expect(meminfo.seqReads).toBeGreaterThan(2);
  });

  it('moves SEQ only when something changed, and refuses impossible figures', () => {
    const { meminfo } = boot();
    meminfo.setCondition({ limitPages: 256, pressure: HostPressure.HIGH });
    expect(meminfo.sequence).toBe(0);
    meminfo.setCondition({ pressure: HostPressure.LOW });
    expect(meminfo.sequence).toBe(1);
    expect(() => meminfo.setCondition({ limitPages: 257 })).toThrow(/0 to 256 pages/);
    expect(() => meminfo.setCondition({ limitPages: -1 })).toThrow(/0 to 256 pages/);
    expect(() => meminfo.setCondition({ pressure: 4 as never })).toThrow(/0 to 3/);
    expect(meminfo.sequence).toBe(1);
  });

  it('keeps its figures across a fork and a saved state; refuses a damaged state', () => {
    const { hv, vm, meminfo } = boot();
    meminfo.setCondition({ limitPages: 100, pressure: HostPressure.HARD });
    const { devices: child } = hv.forkVmWith(vm, { attach: (c) => ({ ...attachStandardDevices(c, { output: new CaptureSink() }), meminfo: attachMeminfo(c) }) });
    expect([child.meminfo.limitPages, child.meminfo.pressure, child.meminfo.sequence]).toEqual([100, HostPressure.HARD, 1]);
    expect(() => meminfo.checkState({ limitPages: 100, pressure: 7, seq: 0 })).toThrow(/pressure/);
    expect(() => meminfo.checkState({ limitPages: 1000, pressure: 0, seq: 0 })).toThrow(/limitPages/);
    expect(() => meminfo.checkState('junk')).toThrow(/meminfo/);
  });
});
