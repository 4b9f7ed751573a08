/**
 * Persistent memory (devices/pmem.ts, docs/pmem.md): a guest finds the PMEM device, stores into
 * the range at BASE and flushes it; the stores are in the file, a new hypervisor on the same file
 * (a host restart) reads them back, the accesses go through the TLB like RAM, and bad
 * configurations, fork and checkpoints are refused with clear errors.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, PmemRegister, PmemStatus, runWithResets } from '../../devices/index.ts';
import { createHypervisor } from '../../kernel/index.ts';
import { GUEST_LIBRARY } from './harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-pmem-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PMEM_BYTES = 64 * 1024;

/**
 * Prints BASE, SIZE and the word at pmem offset 0x100; then, with `mode` 1, stores 0x100 + the
 * old word there, fills words 0x1000..0x1fff with their index (1024 stores into one page), does a
 * byte, a halfword and an AMO store, flushes [flushOffset, +flushLength) and prints STATUS and
 * FLUSHES.
 */
function program(mode: number, flushOffset: number, flushLength: number): string {
  return `${GUEST_LIBRARY}
        .globl  _start
_start:
        li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, 8                   # PMEM
        call    find_device
        beqz    a0, none
        mv      s1, a0
        lw      s2, ${PmemRegister.BASE}(s1)
        mv      a0, s2
        mv      a1, s0
        call    put_hex
        putc    s0, 0x20
        lw      a0, ${PmemRegister.SIZE}(s1)
        mv      a1, s0
        call    put_hex
        putc    s0, 0x20
        lw      s3, 0x100(s2)
        mv      a0, s3
        mv      a1, s0
        call    put_hex
        li      t0, ${mode}
        beqz    t0, done
        addi    s3, s3, 0x100
        sw      s3, 0x100(s2)
        li      t0, 0
        li      t1, 0x1000
        add     t2, s2, t1
1:      sw      t0, 0(t2)
        addi    t2, t2, 4
        addi    t0, t0, 1
        li      t1, 1024
        bne     t0, t1, 1b
        sb      t0, 0x104(s2)           # byte and halfword stores reach it too
        sh      t0, 0x106(s2)
        li      t0, 2
        amoadd  t1, t0, (t2)            # an AMO on the word after the filled page
        li      t0, ${flushOffset}
        sw      t0, ${PmemRegister.FLUSH_OFFSET}(s1)
        li      t0, ${flushLength}
        sw      t0, ${PmemRegister.FLUSH_LENGTH}(s1)
        sw      zero, ${PmemRegister.FLUSH}(s1)
        putc    s0, 0x20
        lw      a0, ${PmemRegister.STATUS}(s1)
        mv      a1, s0
        call    put_hex
        putc    s0, 0x20
        lw      a0, ${PmemRegister.FLUSHES}(s1)
        mv      a1, s0
        call    put_hex
done:   putc    s0, 0x0a
        exit    0
none:   exit    9
`;
}

function boot(path: string, source: string, options: { create?: boolean } = {}) {
  const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
  const vm = hv.createVm({ memoryBytes: 1 << 20 });
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, pmem: { path, bytes: PMEM_BYTES, ...options } });
  vm.loadImage(assemble(source).image);
  const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000 });
  return { hv, vm, devices, output, run };
}

describe('the PMEM device', () => {
  it('puts the file at BASE: guest stores reach it, a flush reports OK, and a new hypervisor reads them back', () => {
    const path = join(dir, 'restart.pmem');
    const first = boot(path, program(1, 0, 0x2000), { create: true });
    expect(first.run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    // RAM is 1 MiB: the range starts at the first 4 MiB boundary after it.
    expect(first.output.text()).toBe('00400000 00010000 00000000 00000000 00000001\n');
    expect(first.devices.pmem!.stats.flushes).toBe(1);
    expect(first.devices.pmem!.stats.bytesFlushed).toBe(0x2000);
    // 1024 stores into one page took a handful of TLB misses, not one each.
    expect(first.vm.vcpus[0]!.stats.tlbMisses).toBeLessThan(64);
    const file = readFileSync(path);
    expect(file.length).toBe(PMEM_BYTES);
    expect(file.readUInt32LE(0x100)).toBe(0x100);
    expect(file[0x104]).toBe(1024 & 0xff);
    expect(file.readUInt16LE(0x106)).toBe(1024);
    for (const index of [0, 1, 511, 1023]) expect(file.readUInt32LE(0x1000 + 4 * index)).toBe(index);
    expect(file.readUInt32LE(0x2000)).toBe(2);
    expect(first.hv.poolStats().sharedFileFrames).toBe(PMEM_BYTES / 4096);
    first.hv.destroyVm(first.vm);
    expect(first.hv.poolStats().sharedFileFrames).toBe(0);
    expect(first.hv.poolStats().usedFrames).toBe(0);
    // The file keeps the bytes after the VM is gone (unmapping drops nothing).
    expect(readFileSync(path).readUInt32LE(0x100)).toBe(0x100);

    // A host restart: another hypervisor, the same file.
    const second = boot(path, program(1, 0x100, 4));
    expect(second.output.text()).toBe('00400000 00010000 00000100 00000000 00000001\n');
    expect(readFileSync(path).readUInt32LE(0x100)).toBe(0x200);
    const third = boot(path, program(0, 0, 0));
    expect(third.output.text()).toBe('00400000 00010000 00000200\n');
  });

  it('refuses a flush past the end of the range with BAD_RANGE', () => {
    const path = join(dir, 'bad-range.pmem');
    const { output, devices } = boot(path, program(1, PMEM_BYTES - 4, 8), { create: true });
    expect(output.text()).toBe(`00400000 00010000 00000000 0000000${PmemStatus.BAD_RANGE} 00000001\n`);
    expect(devices.pmem!.stats.bytesFlushed).toBe(0);
  });

  it('refuses bad configurations with one clear line', () => {
    const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const attach = (pmem: { path: string; bytes: number; create?: boolean }) => () => attachStandardDevices(vm, { output: new CaptureSink(), pmem });
    expect(attach({ path: join(dir, 'missing.pmem'), bytes: PMEM_BYTES })).toThrow(/no such file \(set create to make one\)/);
    const short = join(dir, 'short.pmem');
    writeFileSync(short, new Uint8Array(4096));
    expect(attach({ path: short, bytes: PMEM_BYTES })).toThrow(/has 4096 bytes, the configuration says 65536/);
    expect(attach({ path: short, bytes: 4096 + 100 })).toThrow(/positive multiple of 4 KiB/);
    expect(attach({ path: short, bytes: 0 })).toThrow(/positive multiple of 4 KiB/);
    expect(attach({ path: dir, bytes: PMEM_BYTES })).toThrow(/not a regular file/);
    try {
      attach({ path: join(dir, 'missing.pmem'), bytes: PMEM_BYTES })();
    } catch (error) {
      expect((error as { code: string }).code).toBe('BV_PMEM');
    }
    // Nothing was attached by the refused calls.
    expect(vm.bus.layout()).toEqual([]);
    expect(vm.memory.fileBackedRanges).toEqual([]);
    // A range that does not fit below the device table.
    expect(() => vm.memory.attachFileRange(0xefff_f000, 8192, short)).toThrow(/end by 0xf0000000/);
    expect(() => vm.memory.attachFileRange(0x1000, 4096, short)).toThrow(/at or above the end of RAM/);
    expect(() => vm.memory.attachFileRange(0x40_0000, 8192, short)).toThrow(/extends past the end/);
    expect(hv.poolStats().usedFrames).toBe(0); // the refused attach gave its frames back
  });

  it('refuses fork and checkpoints of a VM with persistent memory', () => {
    const path = join(dir, 'fork.pmem');
    const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    attachStandardDevices(vm, { output: new CaptureSink(), pmem: { path, bytes: PMEM_BYTES, create: true } });
    vm.loadImage(assemble(program(0, 0, 0)).image);
    expect(() => vm.captureState()).toThrow(expect.objectContaining({ code: 'BV_PMEM_NOT_CAPTURED' }));
    expect(() => hv.forkVm(vm)).toThrow(/persistent memory/);
  });

  it('never executes from persistent memory', () => {
    const path = join(dir, 'exec.pmem');
    const source = `${GUEST_LIBRARY}
        .globl  _start
_start:
        li      a0, 8
        call    find_device
        lw      t0, ${PmemRegister.BASE}(a0)
        jr      t0
`;
    const { run, vm } = boot(path, source, { create: true });
    expect(run.reason).toMatchObject({ kind: 'guest-error', pc: 0x40_0000 });
    expect(vm.stopReason).toMatchObject({ message: expect.stringContaining('instruction access fault at pc 0x400000') });
  });
});
