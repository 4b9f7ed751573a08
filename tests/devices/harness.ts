/**
 * Shared by the device tests: a small assembly library that guest programs append (finding a
 * device through the device table, printing hex, exiting) and a runner that assembles a program,
 * boots it on a VM with the standard devices and captures its console output.
 */
import { assemble } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, runWithResets, type StandardDevices } from '../../devices/index.ts';
import { createHypervisor, type Hypervisor, type RunResult, type Vm } from '../../kernel/index.ts';

/**
 * Put before each test program (macros must be defined before use; the program's `_start` label
 * is the entry). Routines are leaves: they return with `ret` and clobber only what they say.
 */
export const GUEST_LIBRARY = `
        .equ    DEV_CONSOLE, 1
        .equ    DEV_TIMER, 2
        .equ    DEV_POWER, 3
        .equ    DEV_BOOTARGS, 4
        .equ    HCALL_EXIT, 1
        .equ    HCALL_CONSOLE_WRITE, 2
        .equ    IE_SOFT, 0x2
        .equ    IE_TIMER, 0x20
        .equ    IE_EXTERNAL, 0x200
        .equ    SIE, 0x2

        .text
# find_device(a0 = device type) -> a0 = window base, a1 = info; a0 = 0 when there is none.
# Scans the device table (magic/version word at +4 holds the entry count in bits 31-16).
# Clobbers t0-t2.
find_device:
        li      t0, 0xf0000000
        lw      t1, 4(t0)
        srli    t1, t1, 16
        addi    t0, t0, 16
1:      beqz    t1, 2f
        lw      t2, 0(t0)
        andi    t2, t2, 0xffff
        beq     t2, a0, 3f
        addi    t0, t0, 16
        addi    t1, t1, -1
        j       1b
2:      li      a0, 0
        li      a1, 0
        ret
3:      lw      a1, 12(t0)
        lw      a0, 4(t0)
        ret

# put_hex(a0 = value, a1 = console base): writes 8 lowercase hex digits to TX. Clobbers t0-t2.
put_hex:
        li      t0, 28
1:      srl     t1, a0, t0
        andi    t1, t1, 0xf
        slti    t2, t1, 10
        bnez    t2, 2f
        addi    t1, t1, 39
2:      addi    t1, t1, 48
        sw      t1, 0(a1)
        addi    t0, t0, -4
        bgez    t0, 1b
        ret

        .macro  exit code
        li      a1, \\code
        li      a0, HCALL_EXIT
        hcall
        .endm

        .macro  exit_reg reg
        mv      a1, \\reg
        li      a0, HCALL_EXIT
        hcall
        .endm

        # putc console_base_register, character
        .macro  putc base, char
        li      t3, \\char
        sw      t3, 0(\\base)
        .endm
`;

export interface GuestRunOptions {
  vcpus?: number;
  memoryBytes?: number;
  input?: string | Uint8Array;
  bootArgs?: string;
  maxInstructions?: number;
  quantum?: number;
}

export interface GuestOutcome {
  output: string;
  reason: RunResult['reason'];
  instructions: number;
  resets: number;
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  symbols: Map<string, number>;
}

/** Assembles GUEST_LIBRARY + `program` and boots it in a fresh hypervisor. */
export function bootGuest(program: string, options: GuestRunOptions = {}): Omit<GuestOutcome, 'reason' | 'instructions' | 'resets' | 'output'> {
  const { image, symbols } = assemble(GUEST_LIBRARY + program, { fileName: 'guest.s' });
  const hv = createHypervisor({ hostMemoryBytes: 8 * 1024 * 1024 });
  const vm = hv.createVm({ memoryBytes: options.memoryBytes ?? 1024 * 1024, vcpus: options.vcpus ?? 1 });
  const deviceOptions: Parameters<typeof attachStandardDevices>[1] = { output: new CaptureSink() };
  if (options.input !== undefined) deviceOptions.input = options.input;
  if (options.bootArgs !== undefined) deviceOptions.bootArgs = options.bootArgs;
  const devices = attachStandardDevices(vm, deviceOptions);
  vm.loadImage(image);
  return { hv, vm, devices, symbols };
}

/** Boots and runs a guest to its end (or the instruction budget, default 10 million). */
export function runGuest(program: string, options: GuestRunOptions = {}): GuestOutcome {
  const booted = bootGuest(program, options);
  const runOptions: { maxInstructions: number; quantum?: number } = { maxInstructions: options.maxInstructions ?? 10_000_000 };
  if (options.quantum !== undefined) runOptions.quantum = options.quantum;
  const run = runWithResets(booted.hv, booted.vm, booted.devices, runOptions);
  return { ...booted, ...run, output: booted.devices.captured!.text() };
}

/** The exit code of a halted run; fails the test with the stop reason otherwise. */
export function exitCodeOf(outcome: GuestOutcome): number {
  if (outcome.reason.kind !== 'halted') throw new Error(`guest did not halt: ${JSON.stringify(outcome.reason, (key, value) => (key === 'error' ? undefined : value))}`);
  return outcome.reason.exitCode;
}

/** Parses the whitespace-separated 8-digit hex words a guest printed with put_hex. */
export function hexWords(text: string): number[] {
  return (text.match(/[0-9a-f]{8}/g) ?? []).map((word) => Number.parseInt(word, 16));
}
