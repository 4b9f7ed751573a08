/**
 * The block device's asynchronous requests (devices/block.ts, docs/block-device.md
 * "Asynchronous requests"): bare guests submit several requests, sleep in wfi until the
 * completion interrupt and pop completions; the data they get equals the disk's, buffered and
 * with O_DIRECT, over an overlay chain too. A gate (the host IO scheduler's interface) decides
 * when requests start: holding them shows out-of-order completion, a full queue and a checkpoint
 * taken with requests in flight, whose restored VM reaches the same result as the original.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceType } from '../../guest-isa/arch.ts';
import { assemble } from '../../guest-isa/assembler.ts';
import {
  attachStandardDevices, BLOCK_COMPLETION_VALID, BLOCK_QUEUE_DEPTH, BlockCommand, BlockRegister, BlockStatus, CaptureSink, DISK_SECTOR_BYTES,
  DiskChain, runWithResets, runWithResetsAsync, savedBlockDisk, savedBlockMode, type BlockIoGate, type StandardDevices,
} from '../../devices/index.ts';
import { createHypervisor, StopCode, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { restoreVmCheckpoint, saveVmCheckpoint } from '../../services/checkpoint/index.ts';
import { GUEST_LIBRARY, hexWords } from './harness.ts';

const root = mkdtempSync(join(tmpdir(), 'bv-block-async-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const SECTOR = DISK_SECTOR_BYTES;
const RAM = 1 << 20;
const SECTORS = 256;
/** Where the guests keep the completion values they popped, in order. */
const COMPLETIONS_AT = 0x20000;
/** Buffer i of the guests' requests. */
const bufferAt = (i: number): number => 0x30000 + i * 0x1000;

function makeDir(): string {
  return mkdtempSync(join(root, 'd'));
}

/** A raw image whose sector i holds the words (i << 16 | k) for k = 0 … 127: every sector differs. */
function rawImage(dir: string, sectors = SECTORS): string {
  const bytes = new Uint8Array(sectors * SECTOR);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < sectors; i++) for (let k = 0; k < SECTOR / 4; k++) view.setUint32(i * SECTOR + k * 4, ((i << 16) | k) >>> 0, true);
  const path = join(dir, 'base.img');
  writeFileSync(path, bytes);
  return path;
}

const REGISTER_EQUS = Object.entries(BlockRegister).map(([name, offset]) => `        .equ    BLK_${name}, ${offset}`).join('\n');
const COMMAND_EQUS = Object.entries(BlockCommand).map(([name, value]) => `        .equ    CMD_${name}, ${value}`).join('\n');

/** Prints a0 as hex and a space (s0 = console). */
const PRINT = `
        mv      a1, s0
        call    put_hex
        putc    s0, 32`;

/** Finds the console (s0) and the block device (s1); enables the completion interrupt for wfi (SIE stays 0). */
const PROLOGUE = `
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
        li      a0, ${DeviceType.BLOCK}
        call    find_device
        mv      s1, a0
        li      s2, 0                   # completions popped so far
        li      t0, 1
        sw      t0, BLK_IRQ_CONTROL(s1)
        li      t0, IE_EXTERNAL
        csrw    ie, t0`;

/** SUBMIT of one request; prints STATUS. */
function submit(sector: number, count: number, dma: number, cmd: string | number, tag: number): string {
  return `
        li      t0, ${sector}
        sw      t0, BLK_SECTOR_LOW(s1)
        sw      zero, BLK_SECTOR_HIGH(s1)
        li      t0, ${count}
        sw      t0, BLK_COUNT(s1)
        li      t0, ${dma}
        sw      t0, BLK_DMA_ADDRESS(s1)
        li      t0, ${tag}
        sw      t0, BLK_TAG(s1)
        li      t0, ${cmd}
        sw      t0, BLK_SUBMIT(s1)
        lw      a0, BLK_STATUS(s1)${PRINT}`;
}

let waits = 0;
/** Pops completions into COMPLETIONS_AT until s2 reaches `total`, sleeping in wfi while none waits. */
function waitFor(total: number): string {
  const n = waits++;
  return `
wait${n}: li    t0, ${total}
        bgeu    s2, t0, done${n}
        lw      a0, BLK_COMPLETION(s1)
        bnez    a0, got${n}
        wfi
        j       wait${n}
got${n}: slli   t0, s2, 2
        li      t1, ${COMPLETIONS_AT}
        add     t0, t0, t1
        sw      a0, 0(t0)
        addi    s2, s2, 1
        j       wait${n}
done${n}:`;
}

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
}

function boot(program: string, disk: { path: string; async?: boolean; direct?: boolean }, gate?: BlockIoGate, hv = createHypervisor({ hostMemoryBytes: 8 << 20 })): Machine {
  const { image } = assemble(`${GUEST_LIBRARY}\n${REGISTER_EQUS}\n${COMMAND_EQUS}\n${program}`, { fileName: 'guest.s' });
  const vm = hv.createVm({ memoryBytes: RAM });
  const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: { async: true, ...disk }, hypervisor: hv, ...(gate ? { diskGate: gate } : {}) });
  vm.loadImage(image);
  return { hv, vm, devices };
}

async function runToEnd(machine: Machine): Promise<{ exitCode: number; output: string }> {
  const run = await runWithResetsAsync(machine.hv, machine.vm, machine.devices, { maxInstructions: 5_000_000 });
  if (run.reason.kind !== 'halted') throw new Error(`guest did not halt: ${JSON.stringify(run.reason, (key, value) => (key === 'error' ? undefined : value))}`);
  return { exitCode: run.reason.exitCode, output: machine.devices.captured!.text() };
}

function words(vm: Vm, gpa: number, count: number): number[] {
  const bytes = vm.readPhysical(gpa as never, count * 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  return Array.from({ length: count }, (_, i) => view.getUint32(i * 4, true));
}

const completion = (status: number, tag: number): number => (BLOCK_COMPLETION_VALID | (status << 16) | tag) >>> 0;

/** A gate that holds every request until release() starts them (in the order given by `order`). */
class HoldingGate implements BlockIoGate {
  readonly held: { owner: string; bytes: number; start: () => void }[] = [];
  readonly completed: { owner: string; bytes: number; latencyNs: number }[] = [];
  forgotten: string[] = [];
  /** Start requests at once instead of holding them. */
  passThrough = false;
  submit(owner: string, bytes: number, start: () => void): void {
    if (this.passThrough) start();
    else this.held.push({ owner, bytes, start });
  }
  complete(owner: string, bytes: number, latencyNs: number): void {
    this.completed.push({ owner, bytes, latencyNs });
  }
  forget(owner: string): void {
    this.forgotten.push(owner);
    for (let i = this.held.length - 1; i >= 0; i--) if (this.held[i]!.owner === owner) this.held.splice(i, 1);
  }
  /** Starts the held requests one at a time, last submitted first, each once the previous completed. */
  async releaseLastFirst(): Promise<void> {
    while (this.held.length > 0) {
      const done = this.completed.length;
      this.held.pop()!.start();
      while (this.completed.length === done) await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }
}

// The eight reads: 8 sectors each, spread over the disk, into buffers 0 … 7.
const READS = Array.from({ length: 8 }, (_, i) => ({ sector: (i * 37) % (SECTORS - 8), tag: 100 + i }));
const READ_PROGRAM = `${PROLOGUE}
        ${READS.map((r, i) => submit(r.sector, 8, bufferAt(i), 'CMD_READ', r.tag)).join('\n')}
        lw      a0, BLK_QUEUE_DEPTH(s1)${PRINT}
        lw      a0, BLK_IN_FLIGHT(s1)${PRINT}
        ${waitFor(READS.length)}
        lw      a0, BLK_IN_FLIGHT(s1)${PRINT}
        lw      a0, BLK_COMPLETION(s1)${PRINT}
        exit    0
`;

describe('asynchronous block requests', () => {
  for (const direct of [false, true]) {
    it(`several reads in flight complete through the interrupt, with the disk's data (${direct ? 'O_DIRECT' : 'buffered'})`, async () => {
      const dir = makeDir();
      const base = rawImage(dir);
      const machine = boot(READ_PROGRAM, { path: base, direct });
      const { exitCode, output } = await runToEnd(machine);
      expect(exitCode).toBe(0);
      // Eight BUSY, QUEUE_DEPTH, eight in flight before any pop; none after; COMPLETION then reads 0.
      expect(hexWords(output)).toEqual([...READS.map(() => BlockStatus.BUSY), BLOCK_QUEUE_DEPTH, 8, 0, 0]);
      const popped = words(machine.vm, COMPLETIONS_AT, READS.length);
      expect([...popped].sort()).toEqual(READS.map((r) => completion(BlockStatus.OK, r.tag)).sort());
      const disk = machine.devices.block!.disk;
      READS.forEach((r, i) => expect(machine.vm.readPhysical(bufferAt(i) as never, 8 * SECTOR)).toEqual(disk.read(r.sector, 8)));
      const stats = machine.devices.block!.stats;
      expect(stats).toMatchObject({ reads: 8, sectorsRead: 64, errors: 0, asyncSubmitted: 8, asyncCompleted: 8, asyncInFlightMax: 8 });
      expect(stats.asyncLatencySumNs).toBeGreaterThan(0);
      expect(stats.asyncLatencyEwmaNs).toBeGreaterThan(0);
      expect(machine.devices.block!.disk.direct).toBe(direct);
      machine.devices.block!.close();
    });
  }

  it('writes, a flush and reads back: the bytes reach the top overlay and guest RAM, with O_DIRECT', async () => {
    const dir = makeDir();
    const base = rawImage(dir);
    const machine = boot(`${PROLOGUE}
        li      t0, ${bufferAt(0)}      # 16 sectors of words (k * 0x9e3779b1)
        li      t1, 0
        li      t2, 0x9e3779b1
1:      mul     t3, t1, t2
        slli    a0, t1, 2
        add     a0, a0, t0
        sw      t3, 0(a0)
        addi    t1, t1, 1
        li      a0, 2048
        bltu    t1, a0, 1b
        ${submit(10, 8, bufferAt(0), 'CMD_WRITE', 1)}
        ${submit(100, 8, bufferAt(1), 'CMD_WRITE', 2)}
        ${waitFor(2)}
        ${submit(0, 0, 0, 'CMD_FLUSH', 3)}
        ${submit(10, 8, bufferAt(4), 'CMD_READ', 4)}
        ${submit(100, 8, bufferAt(6), 'CMD_READ', 5)}
        ${waitFor(5)}
        exit    0
`, { path: base, direct: true });
    const { exitCode, output } = await runToEnd(machine);
    expect(exitCode).toBe(0);
    expect(hexWords(output)).toEqual(Array(5).fill(BlockStatus.BUSY));
    expect([...words(machine.vm, COMPLETIONS_AT, 5)].sort()).toEqual([1, 2, 3, 4, 5].map((tag) => completion(BlockStatus.OK, tag)).sort());
    const written = machine.vm.readPhysical(bufferAt(0) as never, 16 * SECTOR);
    const disk = machine.devices.block!.disk;
    expect(disk.read(10, 8)).toEqual(written.subarray(0, 8 * SECTOR));
    expect(disk.read(100, 8)).toEqual(written.subarray(8 * SECTOR));
    expect(machine.vm.readPhysical(bufferAt(4) as never, 8 * SECTOR)).toEqual(written.subarray(0, 8 * SECTOR));
    expect(machine.vm.readPhysical(bufferAt(6) as never, 8 * SECTOR)).toEqual(written.subarray(8 * SECTOR));
    // Reopened from its files (after close), the disk holds the writes: the overlay's map is right.
    const top = disk.topPath!;
    machine.devices.block!.close();
    const reopened = DiskChain.open(top);
    expect(reopened.read(10, 8)).toEqual(written.subarray(0, 8 * SECTOR));
    expect(reopened.read(9, 1)).toEqual(DiskChain.open(base).read(9, 1));
    reopened.close();
    expect(machine.devices.block!.stats).toMatchObject({ writes: 2, reads: 2, flushes: 1, asyncCompleted: 5, errors: 0 });
  });

  it('completes out of order: a gate that starts requests last-first; it hears every request start and finish', async () => {
    const dir = makeDir();
    const gate = new HoldingGate();
    const machine = boot(READ_PROGRAM, { path: rawImage(dir) }, gate);
    const running = runToEnd(machine);
    while (gate.held.length < READS.length) await new Promise((resolve) => setTimeout(resolve, 1));
    await gate.releaseLastFirst();
    const { exitCode } = await running;
    expect(exitCode).toBe(0);
    expect(words(machine.vm, COMPLETIONS_AT, READS.length)).toEqual(READS.map((r) => completion(BlockStatus.OK, r.tag)).reverse());
    const disk = machine.devices.block!.disk;
    READS.forEach((r, i) => expect(machine.vm.readPhysical(bufferAt(i) as never, 8 * SECTOR)).toEqual(disk.read(r.sector, 8)));
    expect(gate.completed).toHaveLength(READS.length);
    expect(gate.completed.every((c) => c.owner === machine.vm.name && c.bytes === 8 * SECTOR && c.latencyNs > 0)).toBe(true);
    machine.devices.block!.close();
  });

  it('reads through an overlay chain (base, sealed overlay, top) equal the synchronous reads, with O_DIRECT', async () => {
    const dir = makeDir();
    const base = rawImage(dir);
    const chain = DiskChain.open(base);
    chain.write(5, new Uint8Array(3 * SECTOR).fill(0xaa)); // sectors 5-7 in the first overlay
    chain.write(20, new Uint8Array(SECTOR).fill(0xbb));
    chain.checkpoint(); // sealed
    chain.write(6, new Uint8Array(SECTOR).fill(0xcc)); // sector 6 again, in the top
    chain.write(30, new Uint8Array(2 * SECTOR).fill(0xdd));
    const top = chain.topPath!;
    chain.close();
    const spans = [{ sector: 0, count: 40 }, { sector: 4, count: 5 }, { sector: 19, count: 13 }];
    const machine = boot(`${PROLOGUE}
        ${spans.map((s, i) => submit(s.sector, s.count, bufferAt(i * 8), 'CMD_READ', i)).join('\n')}
        ${waitFor(spans.length)}
        exit    0
`, { path: top, direct: true });
    const { exitCode } = await runToEnd(machine);
    expect(exitCode).toBe(0);
    const reference = DiskChain.open(top);
    spans.forEach((s, i) => expect(machine.vm.readPhysical(bufferAt(i * 8) as never, s.count * SECTOR)).toEqual(reference.read(s.sector, s.count)));
    expect(reference.read(6, 1)[0]).toBe(0xcc);
    expect(reference.read(5, 1)[0]).toBe(0xaa);
    reference.close();
    machine.devices.block!.close();
  });

  it('refuses what a hostile guest submits with error statuses, keeps tags to 16 bits, and reports a full queue', async () => {
    const dir = makeDir();
    const base = rawImage(dir);
    const gate = new HoldingGate();
    const fill = Array.from({ length: BLOCK_QUEUE_DEPTH + 1 }, (_, i) => submit(i, 1, bufferAt(0), 'CMD_READ', i)).join('\n');
    const machine = boot(`${PROLOGUE}
        lw      a0, BLK_COMPLETION(s1)${PRINT}
        ${submit(0, 1, bufferAt(0), 9, 1)}
        ${submit(0, 1, bufferAt(0), 0, 1)}
        ${submit(0, 0, bufferAt(0), 'CMD_READ', 1)}
        ${submit(SECTORS - 1, 2, bufferAt(0), 'CMD_READ', 1)}
        ${submit(0, 129, bufferAt(0), 'CMD_READ', 1)}
        ${submit(0, 1, RAM - SECTOR + 4, 'CMD_READ', 1)}
        ${submit(0, 1, 0xf0000000, 'CMD_WRITE', 1)}
        ${submit(0, 1, 0xfffffe00, 'CMD_READ', 1)}
        li      t0, 0x12345
        sw      t0, BLK_TAG(s1)
        lw      a0, BLK_TAG(s1)${PRINT}
        lw      a0, BLK_IN_FLIGHT(s1)${PRINT}
        ${fill}
        lw      a0, BLK_IN_FLIGHT(s1)${PRINT}
        li      t0, 0xffffffff
        sw      t0, BLK_IN_FLIGHT(s1)   # read-only: ignored
        sw      t0, BLK_COMPLETION(s1)
        sw      t0, BLK_QUEUE_DEPTH(s1)
        lw      a0, BLK_QUEUE_DEPTH(s1)${PRINT}
        ${waitFor(BLOCK_QUEUE_DEPTH)}
        lw      a0, BLK_IN_FLIGHT(s1)${PRINT}
        exit    0
`, { path: base }, gate);
    const running = runToEnd(machine);
    while (gate.held.length < BLOCK_QUEUE_DEPTH) await new Promise((resolve) => setTimeout(resolve, 1));
    await gate.releaseLastFirst();
    const { exitCode, output } = await running;
    expect(exitCode).toBe(0);
    const { BUSY, BAD_COMMAND, BAD_RANGE, BAD_DMA, QUEUE_FULL } = BlockStatus;
    expect(hexWords(output)).toEqual([
      0, // nothing to pop
      BAD_COMMAND, BAD_COMMAND, BAD_RANGE, BAD_RANGE, BAD_RANGE, BAD_DMA, BAD_DMA, BAD_DMA,
      0x2345, 0, // TAG keeps 16 bits; nothing was accepted
      ...Array(BLOCK_QUEUE_DEPTH).fill(BUSY), QUEUE_FULL, BLOCK_QUEUE_DEPTH,
      BLOCK_QUEUE_DEPTH, // read-only registers ignore writes
      0,
    ]);
    expect(words(machine.vm, COMPLETIONS_AT, BLOCK_QUEUE_DEPTH)).toEqual(Array.from({ length: BLOCK_QUEUE_DEPTH }, (_, i) => completion(BlockStatus.OK, BLOCK_QUEUE_DEPTH - 1 - i)));
    expect(machine.devices.block!.stats).toMatchObject({ errors: 9, asyncSubmitted: BLOCK_QUEUE_DEPTH, asyncCompleted: BLOCK_QUEUE_DEPTH, asyncInFlightMax: BLOCK_QUEUE_DEPTH });
    machine.devices.block!.close();
  });

  it('without asynchronous mode SUBMIT answers BAD_COMMAND and QUEUE_DEPTH reads 0; COMMAND still works', () => {
    const dir = makeDir();
    const { image } = assemble(`${GUEST_LIBRARY}\n${REGISTER_EQUS}\n${COMMAND_EQUS}\n${PROLOGUE}
        lw      a0, BLK_QUEUE_DEPTH(s1)${PRINT}
        ${submit(0, 1, bufferAt(0), 'CMD_READ', 1)}
        lw      a0, BLK_IN_FLIGHT(s1)${PRINT}
        li      t0, 1
        sw      t0, BLK_COMMAND(s1)
        lw      a0, BLK_STATUS(s1)${PRINT}
        exit    0
`, { fileName: 'guest.s' });
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), disk: rawImage(dir) });
    vm.loadImage(image);
    const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000 });
    expect(run.reason).toMatchObject({ kind: 'halted', exitCode: 0 });
    expect(hexWords(devices.captured!.text())).toEqual([0, BlockStatus.BAD_COMMAND, 0, BlockStatus.OK]);
    devices.block!.close();
  });

  it('a guest in wfi with requests held back is waiting, not idle; with none in flight it is idle', async () => {
    const dir = makeDir();
    const gate = new HoldingGate();
    const machine = boot(READ_PROGRAM, { path: rawImage(dir) }, gate);
    const [waiting] = machine.hv.run({ maxInstructions: 1_000_000 }, [machine.vm]);
    expect(waiting!.reason.kind).toBe('idle'); // the synchronous run loop stops at the wait …
    expect(machine.hv.externalWakeSources.has(machine.vm)).toBe(true); // … which the VM's block device holds
    await gate.releaseLastFirst();
    expect(machine.hv.externalWakeSources.has(machine.vm)).toBe(false);
    expect((await runToEnd(machine)).exitCode).toBe(0);
    machine.devices.block!.close();
  });

  it('a VM reset forgets requests in flight: the gate drops them, transfers already running complete into nothing', async () => {
    const dir = makeDir();
    const gate = new HoldingGate();
    const machine = boot(READ_PROGRAM, { path: rawImage(dir) }, gate);
    machine.hv.run({ maxInstructions: 1_000_000 }, [machine.vm]);
    const block = machine.devices.block!;
    expect(block.inFlight).toBe(8);
    const started = gate.held.splice(0, 2); // two reach the file before the reset
    for (const request of started) request.start();
    machine.vm.reset();
    expect(gate.forgotten).toEqual([machine.vm.name]);
    expect(block.inFlight).toBe(0);
    expect(block.read(machine.vm.vcpus[0]!, BlockRegister.IRQ_CONTROL)).toBe(0);
    while (gate.completed.length < 2) await new Promise((resolve) => setTimeout(resolve, 1));
    expect(block.inFlight).toBe(0); // settled into nothing
    expect(block.completionWaiting).toBe(false);
    expect(machine.hv.externalWakeSources.has(machine.vm)).toBe(false);
    // The guest starts again from the image and gets all eight.
    gate.passThrough = true;
    expect((await runToEnd(machine)).exitCode).toBe(0);
    expect(words(machine.vm, COMPLETIONS_AT, READS.length).sort()).toEqual(READS.map((r) => completion(BlockStatus.OK, r.tag)).sort());
    block.close();
  });

  it('a checkpoint with requests in flight restores a VM that issues them again and reaches the same result', async () => {
    const dir = makeDir();
    const base = rawImage(dir);
    // Four writes held in flight by the gate, then reads of the same sectors once they completed.
    const program = `${PROLOGUE}
        li      t0, ${bufferAt(0)}
        li      t1, 0
        li      t2, 0x01000193
1:      mul     t3, t1, t2
        xori    t3, t3, 0x55
        slli    a0, t1, 2
        add     a0, a0, t0
        sw      t3, 0(a0)
        addi    t1, t1, 1
        li      a0, 4096
        bltu    t1, a0, 1b
        ${[0, 1, 2, 3].map((i) => submit(40 + i * 16, 8, bufferAt(i), 'CMD_WRITE', 10 + i)).join('\n')}
        ${submit(200, 4, bufferAt(12), 'CMD_READ', 20)}
        ${waitFor(5)}
        ${[0, 1, 2, 3].map((i) => submit(40 + i * 16, 8, bufferAt(4 + i), 'CMD_READ', 30 + i)).join('\n')}
        ${waitFor(9)}
        li      t0, ${bufferAt(0)}      # sum of the words read back
        li      t1, ${bufferAt(4)}
        li      a0, 0
        li      t3, 4096
2:      lw      a1, 0(t1)
        add     a0, a0, a1
        addi    t1, t1, 4
        addi    t3, t3, -1
        bnez    t3, 2b${PRINT}
        exit    0
`;
    const gate = new HoldingGate();
    const original = boot(program, { path: base, direct: true }, gate);
    const [first] = original.hv.run({ maxInstructions: 1_000_000 }, [original.vm]);
    expect(first!.reason.kind).toBe('idle');
    expect(gate.held).toHaveLength(5);
    const checkpoint = join(dir, 'vm.ckpt');
    saveVmCheckpoint(original.vm, checkpoint);

    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    let restoredDevices: StandardDevices | null = null;
    const restored = restoreVmCheckpoint(hv, checkpoint, {
      mode: 'eager',
      attach: (vm, saved) => {
        const block = saved.components['block']!.state;
        expect(savedBlockMode(block)).toEqual({ async: true, direct: true });
        restoredDevices = attachStandardDevices(vm, { output: new CaptureSink(), hypervisor: hv, disk: { path: savedBlockDisk(block), ...savedBlockMode(block) } });
      },
    });
    const copy: Machine = { hv, vm: restored.vm, devices: restoredDevices! };
    expect(copy.devices.block!.inFlight).toBe(5);
    const copyRun = runToEnd(copy);
    const originalRun = runToEnd(original);
    await gate.releaseLastFirst();
    gate.passThrough = true; // the reads that follow start at once
    const [a, b] = await Promise.all([originalRun, copyRun]);
    expect(a.exitCode).toBe(0);
    expect(b.exitCode).toBe(0);
    const sums = [hexWords(a.output).at(-1), hexWords(b.output).at(-1)];
    expect(sums[0]).toBe(sums[1]);
    for (const machine of [original, copy]) {
      const disk = machine.devices.block!.disk;
      for (let i = 0; i < 4; i++) expect(disk.read(40 + i * 16, 8)).toEqual(machine.vm.readPhysical(bufferAt(i) as never, 8 * SECTOR));
      expect(machine.vm.readPhysical(bufferAt(12) as never, 4 * SECTOR)).toEqual(disk.read(200, 4));
    }
    original.devices.block!.close();
    copy.devices.block!.close();
  });

  it('a restore refuses a device attached without asynchronous mode, and a malformed saved request', () => {
    const dir = makeDir();
    const gate = new HoldingGate();
    const original = boot(READ_PROGRAM, { path: rawImage(dir) }, gate);
    original.hv.run({ maxInstructions: 1_000_000 }, [original.vm]);
    const state = original.devices.block!.saveState();
    expect(state.async!.inFlight).toHaveLength(8);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    const syncDevices = attachStandardDevices(vm, { output: new CaptureSink(), disk: state.chain[0]! });
    expect(() => syncDevices.block!.checkState(state)).toThrow(/accepted asynchronous requests/);
    // Even with nothing in flight: the guest found QUEUE_DEPTH 32 and may submit again.
    expect(() => syncDevices.block!.checkState({ ...state, async: { ...state.async!, inFlight: [] } })).toThrow(/accepted asynchronous requests/);
    expect(savedBlockMode(syncDevices.block!.saveState())).toEqual({ async: false, direct: false });
    const vm2 = hv.createVm({ memoryBytes: RAM });
    const asyncDevices = attachStandardDevices(vm2, { output: new CaptureSink(), hypervisor: hv, disk: { path: state.chain[0]!, async: true } });
    const bad = structuredClone(state);
    bad.async!.inFlight[0]!.count = 200;
    expect(() => asyncDevices.block!.checkState(bad)).toThrow(/inFlight\[0\]\.count/);
    const bad2 = structuredClone(state);
    bad2.async!.completions = [0x1234];
    expect(() => asyncDevices.block!.checkState(bad2)).toThrow(/completions\[0\]/);
    // A version 1 state (no asynchronous side) is still read.
    const { async: _dropped, ...v1 } = state;
    expect(() => asyncDevices.block!.checkState({ ...v1, chain: v1.chain, ids: v1.ids }, 1)).not.toThrow();
    for (const devices of [original.devices, syncDevices, asyncDevices]) devices.block!.close();
  });
});

describe('a hostile guest', () => {
  it('random register writes and reads (any offset, any value) give statuses and completions only, never a failure', async () => {
    const dir = makeDir();
    const base = rawImage(dir, 64);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: RAM });
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), hypervisor: hv, disk: { path: base, async: true } });
    const block = devices.block!;
    const vcpu = vm.vcpus[0]!;
    const offsets = [...Object.values(BlockRegister), 64, 4092, 2];
    const interesting = fc.oneof(
      fc.constantFrom(0, 1, 2, 3, 4, 8, 63, 64, 128, 129, 0xffff, 0x10000, RAM - SECTOR, RAM, 0xf0000000, 0xffffffff),
      fc.integer({ min: 0, max: 0xffffffff }),
    );
    const raw = fc.record({ write: fc.boolean(), offset: fc.constantFrom(...offsets), value: interesting });
    // A whole request, often valid, sometimes just past a limit.
    const request = fc.record({
      sector: fc.integer({ min: 0, max: 70 }), count: fc.integer({ min: 0, max: 130 }), dma: fc.constantFrom(0x1000, 0x8000, RAM - SECTOR, RAM, 0xf0000000),
      command: fc.integer({ min: 0, max: 4 }), tag: interesting,
    }).map(({ sector, count, dma, command, tag }) => [
      { write: true, offset: BlockRegister.SECTOR_LOW, value: sector }, { write: true, offset: BlockRegister.COUNT, value: count },
      { write: true, offset: BlockRegister.DMA_ADDRESS, value: dma }, { write: true, offset: BlockRegister.TAG, value: tag },
      { write: true, offset: BlockRegister.SUBMIT, value: command },
    ]);
    const op = fc.oneof(raw.map((one) => [one]), request);
    const statuses = Object.values(BlockStatus) as number[];
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (groups) => {
        for (const { write, offset, value } of groups.flat()) {
          if (write) {
            expect(block.write(vcpu, offset, value)).toBe(true);
            if (offset === BlockRegister.SUBMIT) expect(statuses).toContain(block.read(vcpu, BlockRegister.STATUS));
          } else {
            const got = block.read(vcpu, offset) >>> 0;
            if (offset === BlockRegister.COMPLETION && got !== 0) {
              expect(got & BLOCK_COMPLETION_VALID).toBe(BLOCK_COMPLETION_VALID);
              expect(statuses).toContain((got >>> 16) & 0x7fff);
            }
          }
          expect(block.inFlight).toBeLessThanOrEqual(BLOCK_QUEUE_DEPTH);
        }
        // Let what was accepted complete, then drain it: everything accepted comes back.
        while (block.inFlight > 0) {
          await new Promise((resolve) => setTimeout(resolve, 1));
          while (block.read(vcpu, BlockRegister.COMPLETION) !== 0);
        }
        expect(block.stats.asyncCompleted).toBe(block.stats.asyncSubmitted);
        expect(vm.stopCode).toBe(StopCode.RUNNING);
      }),
      { numRuns: 60 },
    );
    // (Not vacuous: over the runs, requests were accepted and refused.)
    expect(block.stats.asyncSubmitted).toBeGreaterThan(0);
    expect(block.stats.errors).toBeGreaterThan(0);
    block.close();
  });
});

describe('DiskChain asynchronous transfers', () => {
  it('a checkpoint taken while writes are on their way seals them into the overlay; the writes still settle', async () => {
    const dir = makeDir();
    const base = rawImage(dir);
    const chain = DiskChain.open(base, { direct: true });
    const data = new Uint8Array(4 * SECTOR).map((_, i) => (i * 7) & 0xff);
    const pending = [chain.writeAsync(8, data), chain.writeAsync(50, data.subarray(0, SECTOR))];
    const saved = chain.checkpoint(); // before the writes settled
    await Promise.all(pending);
    const sealed = DiskChain.restore(saved);
    expect(sealed.read(8, 4)).toEqual(data);
    expect(sealed.read(50, 1)).toEqual(data.subarray(0, SECTOR));
    expect(sealed.read(7, 1)).toEqual(chain.read(7, 1));
    // The chain goes on with a new top; reading the same sectors asynchronously gives the same.
    const back = new Uint8Array(4 * SECTOR);
    await chain.readAsync(8, 4, back);
    expect(back).toEqual(data);
    await chain.writeAsync(8, new Uint8Array(SECTOR).fill(9));
    expect(chain.read(8, 1)).toEqual(new Uint8Array(SECTOR).fill(9));
    expect(sealed.read(8, 1)).toEqual(data.subarray(0, SECTOR)); // the sealed file never changes
    sealed.close();
    chain.close();
  });
});
