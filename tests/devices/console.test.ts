/**
 * The console device (SPEC.md §13.3) and the CONSOLE_WRITE hypercall (§10), driven by guest
 * programs: TX, RX, STATUS, CONTROL, the RX interrupt, output buffering, interactive input, and
 * the end of input (STATUS bit 2, the EOF interrupt of CONTROL bit 1).
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { HcallStatus } from '../../guest-isa/arch.ts';
import { attachStandardDevices, CaptureSink, runWithResets, runWithResetsAsync, type ConsoleSink } from '../../devices/index.ts';
import { attachConsole, ConsoleControl, ConsoleRegister, ConsoleStatus } from '../../devices/console.ts';
import { AbsentState, createHypervisor, PageWaitError } from '../../kernel/index.ts';
import { bootGuest, exitCodeOf, GUEST_LIBRARY, hexWords, runGuest } from './harness.ts';

const FIND_CONSOLE = `
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s0, a0
`;

/** Prints register a0 as hex then a space (needs the console base in s0; clobbers a1, t0-t2). */
const PRINT_A0 = `
        mv      a1, s0
        call    put_hex
        putc    s0, 32
`;

describe('console TX', () => {
  it('writes the low 8 bits of each word to the output, in order', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        putc    s0, 0x48            # 'H'
        li      t0, 0x12345669      # bits 31-8 are ignored: 'i'
        sw      t0, 0(s0)
        putc    s0, 0x0a
        exit    0
    `);
    expect(outcome.output).toBe('Hi\n');
    expect(exitCodeOf(outcome)).toBe(0);
  });

  it('buffers output: one sink write per line, the partial last line on flush', () => {
    const writes: string[] = [];
    const sink: ConsoleSink = { write: (chunk) => writes.push(typeof chunk === 'string' ? chunk : new TextDecoder().decode(chunk)) };
    const { image } = assemble(`${GUEST_LIBRARY}${FIND_CONSOLE}
        putc s0, 0x61
        putc s0, 0x62
        putc s0, 0x0a
        putc s0, 0x63
        putc s0, 0x64
        exit 0
    `);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const devices = attachStandardDevices(vm, { output: sink });
    vm.loadImage(image);
    hv.run({ maxInstructions: 100_000 });
    expect(writes).toEqual(['ab\n']);
    devices.console.stop();
    expect(writes).toEqual(['ab\n', 'cd']);
  });
});

describe('console RX, STATUS and CONTROL', () => {
  it('RX returns input bytes then 0xffffffff; STATUS bit 0 tracks input, bit 1 is always set', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        lw      a0, 8(s0)           # STATUS with input
        ${PRINT_A0}
        lw      a0, 4(s0)           # 'a'
        ${PRINT_A0}
        lw      a0, 4(s0)           # 0xe9 (a byte of 'é', not sign-extended)
        ${PRINT_A0}
        lw      a0, 4(s0)
        ${PRINT_A0}
        lw      a0, 4(s0)           # empty
        ${PRINT_A0}
        lw      a0, 8(s0)           # STATUS without input
        ${PRINT_A0}
        lw      a0, 12(s0)          # CONTROL at reset
        ${PRINT_A0}
        exit    0
    `, { input: 'aé' });
    expect(hexWords(outcome.output)).toEqual([3, 0x61, 0xc3, 0xa9, 0xffffffff, 2, 0]);
  });

  it('ignores writes to RX, STATUS and unused offsets; unused offsets read 0; CONTROL keeps only bits 0 and 1', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        li      t0, -1
        sw      t0, 4(s0)           # RX: read-only, ignored (no fault)
        sw      t0, 8(s0)           # STATUS: read-only, ignored
        sw      t0, 16(s0)          # unused
        sw      t0, 4092(s0)        # unused, last word of the window
        lw      a0, 16(s0)
        ${PRINT_A0}
        lw      a0, 4092(s0)
        ${PRINT_A0}
        lw      a0, 4(s0)           # the input byte is still there
        ${PRINT_A0}
        li      t0, 0xfffffffc      # bits 0 and 1 clear
        sw      t0, 12(s0)
        lw      a0, 12(s0)
        ${PRINT_A0}
        li      t0, -1
        sw      t0, 12(s0)
        lw      a0, 12(s0)
        ${PRINT_A0}
        sw      zero, 12(s0)
        exit    0
    `, { input: 'z' });
    expect(hexWords(outcome.output)).toEqual([0, 0, 0x7a, 0, 3]);
    expect(exitCodeOf(outcome)).toBe(0);
  });

  it('asserts ip.EXTERNAL exactly while CONTROL bit 0 = 1 and input is available', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        csrr    a0, ip              # input, CONTROL = 0: no interrupt
        ${PRINT_A0}
        li      t0, 1
        sw      t0, 12(s0)
        csrr    a0, ip              # asserted
        ${PRINT_A0}
        sw      zero, 12(s0)
        csrr    a0, ip              # CONTROL cleared: deasserted
        ${PRINT_A0}
        li      t0, 1
        sw      t0, 12(s0)
        lw      t0, 4(s0)           # read the only byte: input drained
        csrr    a0, ip
        ${PRINT_A0}
        exit    0
    `, { input: 'x' });
    expect(hexWords(outcome.output)).toEqual([0, 0x200, 0, 0]);
  });

  it('delivers the RX interrupt to a trap handler, which drains the input', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        la      t0, handler
        csrw    tvec, t0
        li      t0, 1
        sw      t0, 12(s0)          # CONTROL: interrupt on input
        li      t0, IE_EXTERNAL
        csrs    ie, t0
        li      t0, SIE
        csrs    status, t0          # taken before the next instruction
        putc    s0, 0x21            # '!' after the handler returned
wait:   li      t0, 5
        bge     s1, t0, done
        wfi
        j       wait
done:   exit_reg s1

handler:
        csrr    a0, cause
        ${PRINT_A0}
1:      lw      t1, 4(s0)
        bltz    t1, 2f              # 0xffffffff: drained, the line drops
        sw      t1, 0(s0)           # echo
        addi    s1, s1, 1
        j       1b
2:      putc    s0, 0x0a
        sret
    `, { input: 'hello' });
    expect(outcome.output).toBe('80000009 hello\n!');
    expect(exitCodeOf(outcome)).toBe(5);
  });

  it('stays idle (no interrupt) when input is available but CONTROL is 0', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        li      t0, IE_EXTERNAL
        csrs    ie, t0
        wfi                         # nothing can wake it
        exit    1
    `, { input: 'abc' });
    expect(outcome.reason.kind).toBe('idle');
  });
});

describe('CONSOLE_WRITE hypercall', () => {
  it('writes a buffer; length 0 succeeds; unmapped or longer than 1 MiB is BAD_ARGUMENT', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        li      a0, HCALL_CONSOLE_WRITE
        la      a1, message
        li      a2, 6
        hcall
        ${PRINT_A0}
        li      a0, HCALL_CONSOLE_WRITE
        li      a1, 0
        li      a2, 0
        hcall
        ${PRINT_A0}
        li      a0, HCALL_CONSOLE_WRITE
        li      a1, 0xff000             # inside RAM...
        li      a2, 0x2000              # ...but runs past its end (1 MiB)
        hcall
        ${PRINT_A0}
        li      a0, HCALL_CONSOLE_WRITE
        la      a1, message
        li      a2, 0x100001            # 1 MiB + 1
        hcall
        ${PRINT_A0}
        li      a0, HCALL_CONSOLE_WRITE
        li      a1, 0xf0001000          # the console window is not RAM
        li      a2, 4
        hcall
        ${PRINT_A0}
        exit    0
        .data
message: .ascii "hello\\n"
    `);
    const statuses = hexWords(outcome.output).map((word) => word | 0);
    expect(outcome.output.startsWith('hello\n')).toBe(true);
    expect(statuses).toEqual([HcallStatus.OK, HcallStatus.OK, HcallStatus.BAD_ARGUMENT, HcallStatus.BAD_ARGUMENT, HcallStatus.BAD_ARGUMENT]);
  });

  it('a buffer on a page still on another host (post-copy) makes the VM wait; the hcall runs again, once, when the page is in', () => {
    const WAIT = 'waiting for the test to deliver a page';
    const { hv, vm, devices, symbols } = bootGuest(`${FIND_CONSOLE}
        li      a0, HCALL_CONSOLE_WRITE
        li      a1, 0x40000
        li      a2, 6
the_hcall:
        hcall
        ${PRINT_A0}
        exit    0
    `);
    const gpn = 0x40000 / 4096;
    let asked = 0;
    vm.memory.onAbsent(AbsentState.REMOTE, () => {
      asked++;
      throw new PageWaitError(WAIT, `guest page ${gpn} is not here yet`);
    });
    vm.memory.releasePages([gpn], AbsentState.REMOTE);
    const first = hv.run({ maxInstructions: 1_000_000 }, [vm])[0]!;
    expect(first.reason).toEqual({ kind: 'paused', reason: WAIT });
    expect(asked).toBe(1);
    expect(vm.vcpus[0]!.pc).toBe(symbols.get('the_hcall')); // stopped on the hcall, not after it
    devices.console.flush();
    expect(devices.captured!.text()).toBe('');
    const page = new Uint8Array(4096);
    page.set(new TextEncoder().encode('later\n'));
    vm.memory.installPage(gpn, page);
    vm.resume();
    const second = hv.run({ maxInstructions: 1_000_000 }, [vm])[0]!;
    expect(second.reason).toEqual({ kind: 'halted', exitCode: 0 });
    devices.console.flush();
    const output = devices.captured!.text();
    expect(output.startsWith('later\n')).toBe(true); // written once, after the page came
    expect(hexWords(output.slice('later\n'.length)).map((word) => word | 0)).toEqual([HcallStatus.OK]);
  });

  it('reads the buffer through the current address space when paging is on', () => {
    // Two identity-style superpages: VA 0 and VA 4 MiB both map guest-physical 0.
    const outcome = runGuest(`
_start: la      t1, root
        li      t0, 0xcf                # V R W X A D, PPN 0
        sw      t0, 0(t1)               # VPN[1] = 0
        sw      t0, 4(t1)               # VPN[1] = 1 (VA 0x400000)
        srli    t1, t1, 12
        li      t0, 0x80000000
        or      t0, t0, t1
        csrw    ptbr, t0
        li      a0, HCALL_CONSOLE_WRITE
        la      a1, message
        li      t0, 0x400000
        add     a1, a1, t0              # the alias at 4 MiB
        li      a2, 5
        hcall
        mv      s1, a0
        li      a0, HCALL_CONSOLE_WRITE
        la      a1, message
        li      t0, 0x800000            # VPN[1] = 2: unmapped
        add     a1, a1, t0
        li      a2, 5
        hcall
        andi    a0, a0, 0xf
        slli    s1, s1, 4
        or      s1, s1, a0
        exit_reg s1
        .data
        .align  12
root:   .space  4096
message: .ascii "paged"
    `);
    expect(outcome.output).toBe('paged');
    expect(exitCodeOf(outcome)).toBe(HcallStatus.BAD_ARGUMENT & 0xf); // first OK (0), second -2
  });
});

describe('interactive input', () => {
  // Polls after each wake (SIE = 0): wfi returns once the RX interrupt is pending.
  const ECHO_UNTIL_NEWLINE = `${GUEST_LIBRARY}${FIND_CONSOLE}
        putc    s0, 0x3e                # '>' prompt, no newline
        li      t0, 1
        sw      t0, 12(s0)
        li      t0, IE_EXTERNAL
        csrs    ie, t0
wait:   wfi
1:      lw      t1, 4(s0)
        bltz    t1, wait                # drained: wait for more
        sw      t1, 0(s0)
        addi    s1, s1, 1
        li      t2, 0x0a
        bne     t1, t2, 1b
        exit_reg s1
  `;

  it('waits for input from a stream (runAsync) and wakes the guest through the RX interrupt', async () => {
    const { image } = assemble(ECHO_UNTIL_NEWLINE);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const stream = new PassThrough();
    const sink = new CaptureSink();
    const devices = attachStandardDevices(vm, { output: sink, interactiveInput: stream, hypervisor: hv });
    vm.loadImage(image);
    setTimeout(() => stream.write('hi'), 20);
    setTimeout(() => stream.write(' there\n'), 40);
    const run = await runWithResetsAsync(hv, vm, devices, { maxInstructions: 1_000_000 });
    devices.console.stop();
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 9 });
    expect(sink.text()).toBe('>hi there\n');
    expect(hv.externalWakeSources.has(vm)).toBe(false);
  });

  it('ends as idle once the stream ends', async () => {
    const { image } = assemble(ECHO_UNTIL_NEWLINE);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const stream = new PassThrough();
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), interactiveInput: stream, hypervisor: hv });
    vm.loadImage(image);
    setTimeout(() => stream.end('no newline'), 20);
    const run = await runWithResetsAsync(hv, vm, devices, { maxInstructions: 1_000_000 });
    devices.console.stop();
    expect(run.reason.kind).toBe('idle');
    expect(devices.captured!.text()).toBe('>no newline');
  });

  it('a restored console that had interrupts enabled reads its stream at once (the guest may only wfi)', async () => {
    const { image } = assemble(ECHO_UNTIL_NEWLINE);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const first = attachStandardDevices(vm, { output: new CaptureSink(), input: '' });
    vm.loadImage(image);
    // Run until the guest waits for input with the RX interrupt enabled, then save it.
    const waiting = await runWithResetsAsync(hv, vm, first, { maxInstructions: 1_000_000 });
    expect(waiting.reason.kind).toBe('idle');
    // A fork carries the device state over as a restore does (restoreControl).
    const stream = new PassThrough();
    const sink = new CaptureSink();
    const { vm: vm2, devices } = hv.forkVmWith(vm, { attach: (child) => attachStandardDevices(child, { output: sink, interactiveInput: stream, hypervisor: hv }) });
    first.console.stop();
    expect(hv.externalWakeSources.has(vm2)).toBe(true);
    setTimeout(() => stream.write('ok\n'), 20);
    const run = await runWithResetsAsync(hv, vm2, devices, { maxInstructions: 1_000_000 });
    devices.console.stop();
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 3 });
    expect(sink.text()).toBe('ok\n');
  });

  it('refuses interactive input without the hypervisor to wake', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    expect(() => attachStandardDevices(vm, { interactiveInput: new PassThrough() })).toThrow(/hypervisor/);
  });
});

describe('end of input (STATUS bit 2, CONTROL bit 1)', () => {
  /** Boots `program` with `input` given up front and closed (as tools/run --input does), runs it. */
  function runClosed(program: string, input: string) {
    const booted = bootGuest(program, { input });
    booted.devices.console.closeInput();
    const run = runWithResets(booted.hv, booted.vm, booted.devices, { maxInstructions: 1_000_000 });
    return { ...run, output: booted.devices.captured!.text() };
  }

  it('STATUS sets bit 2 once closed input has been read to its end, and keeps it', () => {
    const outcome = runClosed(`${FIND_CONSOLE}
        lw      a0, 8(s0)           # 'a' and 'b' pending: available, no end yet
        ${PRINT_A0}
        lw      a0, 4(s0)
        lw      a0, 8(s0)           # 'b' pending
        ${PRINT_A0}
        lw      a0, 4(s0)
        lw      a0, 8(s0)           # all read: the end of input
        ${PRINT_A0}
        lw      a0, 4(s0)           # RX: nothing, as before
        ${PRINT_A0}
        lw      a0, 8(s0)           # still the end
        ${PRINT_A0}
        exit    0
    `, 'ab');
    expect(hexWords(outcome.output)).toEqual([3, 3, 6, 0xffffffff, 6]);
    expect(ConsoleStatus.END_OF_INPUT).toBe(4);
  });

  it('never sets bit 2 while the input is open, even when there is none', () => {
    const outcome = runGuest(`${FIND_CONSOLE}
        lw      a0, 8(s0)
        ${PRINT_A0}
        exit    0
    `);
    expect(hexWords(outcome.output)).toEqual([2]);
  });

  it('asserts ip.EXTERNAL while CONTROL bit 1 = 1 and input has ended, whatever bit 0 says', () => {
    const outcome = runClosed(`${FIND_CONSOLE}
        li      t0, 2               # EOF interrupt only; 'x' is still pending
        sw      t0, 12(s0)
        csrr    a0, ip
        ${PRINT_A0}
        lw      t0, 4(s0)           # read it: the end of input, the line rises
        csrr    a0, ip
        ${PRINT_A0}
        li      t0, 1               # RX interrupt only: no input, no line
        sw      t0, 12(s0)
        csrr    a0, ip
        ${PRINT_A0}
        li      t0, 3
        sw      t0, 12(s0)
        csrr    a0, ip
        ${PRINT_A0}
        sw      zero, 12(s0)        # a guest that has seen the end clears CONTROL
        csrr    a0, ip
        ${PRINT_A0}
        exit    0
    `, 'x');
    expect(hexWords(outcome.output)).toEqual([0, 0x200, 0, 0x200, 0]);
  });

  // Waits in wfi for input or its end (CONTROL = 3); echoes each byte; exits with the count at the end.
  const READ_TO_END = `${GUEST_LIBRARY}${FIND_CONSOLE}
        li      t0, 3
        sw      t0, 12(s0)
        li      t0, IE_EXTERNAL
        csrs    ie, t0
wait:   wfi
1:      lw      t1, 8(s0)           # STATUS
        andi    t2, t1, 1
        bnez    t2, 2f
        andi    t2, t1, 4
        bnez    t2, done            # the end of input
        j       wait
2:      lw      t1, 4(s0)
        sw      t1, 0(s0)
        addi    s1, s1, 1
        j       1b
done:   sw      zero, 12(s0)
        exit_reg s1
  `;

  it('wakes a guest waiting in wfi when the stream ends, so it can finish instead of idling', async () => {
    const { image } = assemble(READ_TO_END);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const stream = new PassThrough();
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), interactiveInput: stream, hypervisor: hv });
    vm.loadImage(image);
    setTimeout(() => stream.write('hi'), 20);
    setTimeout(() => stream.end(' you'), 40);
    const run = await runWithResetsAsync(hv, vm, devices, { maxInstructions: 1_000_000 });
    devices.console.stop();
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 6 });
    expect(devices.captured!.text()).toBe('hi you');
    expect(hv.externalWakeSources.has(vm)).toBe(false);
  });

  it('closeInput ends input given up front (and a stream being read), once', async () => {
    const { image } = assemble(READ_TO_END);
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const stream = new PassThrough();
    const devices = attachStandardDevices(vm, { output: new CaptureSink(), interactiveInput: stream, hypervisor: hv });
    vm.loadImage(image);
    setTimeout(() => {
      stream.write('abc');
      setTimeout(() => {
        devices.console.closeInput(); // the host ends the input; the stream is no longer read
        devices.console.closeInput();
        stream.write('ignored');
      }, 20);
    }, 20);
    const run = await runWithResetsAsync(hv, vm, devices, { maxInstructions: 1_000_000 });
    devices.console.stop();
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 3 });
    expect(devices.captured!.text()).toBe('abc');
    expect(() => devices.console.pushInput(new Uint8Array([1]))).toThrow(/after closeInput/);
  });

  it('the closeInput option: input up front, then the end; refused with a stream', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const console = attachConsole(vm, { output: new CaptureSink(), input: 'ab', closeInput: true });
    const vcpu = vm.vcpus[0]!;
    expect(console.read(vcpu, ConsoleRegister.STATUS)).toBe(ConsoleStatus.INPUT_AVAILABLE | ConsoleStatus.CAN_TRANSMIT);
    expect(console.endOfInput).toBe(false);
    expect([console.read(vcpu, ConsoleRegister.RX), console.read(vcpu, ConsoleRegister.RX)]).toEqual([0x61, 0x62]);
    expect(console.read(vcpu, ConsoleRegister.STATUS)).toBe(ConsoleStatus.CAN_TRANSMIT | ConsoleStatus.END_OF_INPUT);
    expect(console.endOfInput).toBe(true);
    const other = hv.createVm({ memoryBytes: 1 << 20 });
    expect(() => attachConsole(other, { interactiveInput: new PassThrough(), hypervisor: hv, closeInput: true })).toThrow(/closeInput/);
  });

  it('without the EOF interrupt a guest waiting for bytes that will never come is idle, as before', () => {
    const outcome = runClosed(`${FIND_CONSOLE}
        li      t0, 1
        sw      t0, 12(s0)
        li      t0, IE_EXTERNAL
        csrs    ie, t0
        wfi
        exit    1
    `, '');
    expect(outcome.reason.kind).toBe('idle');
  });

  it('a checkpoint keeps CONTROL bit 1', () => {
    const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
    const vm = hv.createVm({ memoryBytes: 1 << 20 });
    const console = attachConsole(vm, { output: new CaptureSink() });
    console.restoreControl(ConsoleControl.EOF_INTERRUPT);
    expect(console.controlRegister).toBe(2);
  });
});
