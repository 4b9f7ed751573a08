/**
 * A small harness for the kernel tests: a hypervisor, a VM running a program assembled from a
 * string, the EXIT and CONSOLE_WRITE hypercalls (the real devices live elsewhere), and readers
 * for guest memory and the page tables the tests build from the host side.
 */
import { expect } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { Hcall, HcallStatus, Pte, Ptbr, PTE_PPN_SHIFT, Reg } from '../../guest-isa/arch.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { createHypervisor, type Hypervisor, type MmuOptions, type RunOptions, type RunResult, type Vcpu, type Vm } from '../../kernel/index.ts';

const KiB = 1024;
export const MiB = 1024 * KiB;

/** Longest CONSOLE_WRITE the stand-in console accepts. */
const CONSOLE_WRITE_LIMIT = 1 << 20;

/** A hypercall number the tests use to run host code at a chosen point of a guest program. */
export const HCALL_PROBE = 0x100;

/**
 * Constants every test program may use: hypercall numbers, and `exit`/`exiti` macros that power
 * the VM off with the exit code in a register or an immediate.
 */
export const PRELUDE = `
        .equ    HCALL_EXIT, ${Hcall.EXIT}
        .equ    HCALL_CONSOLE_WRITE, ${Hcall.CONSOLE_WRITE}
        .equ    HCALL_PROBE, ${HCALL_PROBE}
        .macro  exiti code
        li      a0, HCALL_EXIT
        li      a1, \\code
        hcall
        .endm
        .macro  exitr reg
        addi    a1, \\reg, 0
        li      a0, HCALL_EXIT
        hcall
        .endm
`;

export interface GuestOptions {
  /** Reuse a hypervisor (several VMs in one pool); default: a fresh one. */
  hv?: Hypervisor;
  /** Host pool of a fresh hypervisor (default 32 MiB). */
  hostMemoryBytes?: number;
  /** Guest RAM (default 1 MiB). */
  memoryBytes?: number;
  vcpus?: number;
  name?: string;
  /** Translation mode of the VM (default: the kernel's). */
  mmu?: MmuOptions;
  /** Prepend PRELUDE (default true). */
  prelude?: boolean;
}

export interface Guest {
  hv: Hypervisor;
  vm: Vm;
  image: GuestImage;
  symbols: Map<string, number>;
  /** Bytes written through CONSOLE_WRITE, decoded as Latin-1. */
  readonly console: string;
  /** The address of a label (throws when the program has none). */
  sym(name: string): number;
  /** Runs this VM only. */
  run(options?: RunOptions): RunResult;
  vcpu(index?: number): Vcpu;
  /** The u32 at a guest-physical address. */
  word(gpa: number): number;
  /** `count` u32 words from a guest-physical address. */
  words(gpa: number, count: number): number[];
}

/** Creates a VM in `options.hv` (or a fresh hypervisor), assembles `source` and loads it. */
export function bootGuest(source: string, options: GuestOptions = {}): Guest {
  const hv = options.hv ?? createHypervisor({ hostMemoryBytes: options.hostMemoryBytes ?? 32 * MiB });
  const vm = hv.createVm({ memoryBytes: options.memoryBytes ?? MiB, vcpus: options.vcpus ?? 1, name: options.name, mmu: options.mmu });
  const { image, symbols } = assemble((options.prelude ?? true) ? PRELUDE + source : source, { fileName: 'test.s' });
  vm.loadImage(image);
  const output: number[] = [];
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
  vm.onHypercall(Hcall.CONSOLE_WRITE, (vcpu) => {
    const length = vcpu.regs[Reg.A2]! >>> 0;
    // A stand-in console: it refuses absurd lengths rather than allocating them (fuzzed guests).
    if (length > CONSOLE_WRITE_LIMIT) {
      vcpu.regs[Reg.A0] = HcallStatus.BAD_ARGUMENT;
      return;
    }
    const bytes = vm.readVirtual(vcpu, vcpu.regs[Reg.A1]!, length);
    if (bytes === null) {
      vcpu.regs[Reg.A0] = HcallStatus.BAD_ARGUMENT;
      return;
    }
    output.push(...bytes);
    vcpu.regs[Reg.A0] = HcallStatus.OK;
  });
  return {
    hv,
    vm,
    image,
    symbols,
    get console() {
      return String.fromCharCode(...output);
    },
    sym(name) {
      const value = symbols.get(name);
      if (value === undefined) throw new Error(`test program has no symbol '${name}'`);
      return value >>> 0;
    },
    run(runOptions = {}) {
      return hv.run(runOptions, [vm])[0]!;
    },
    vcpu(index = 0) {
      return vm.vcpus[index]!;
    },
    word(gpa) {
      return readWord(vm, gpa);
    },
    words(gpa, count) {
      return readWords(vm, gpa, count);
    },
  };
}

function readWord(vm: Vm, gpa: number): number {
  const bytes = vm.readPhysical(gpa, 4);
  return (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
}

function readWords(vm: Vm, gpa: number, count: number): number[] {
  const bytes = vm.readPhysical(gpa, count * 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: count }, (_, i) => view.getUint32(i * 4, true));
}

export function writeWord(vm: Vm, gpa: number, value: number): void {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  vm.writePhysical(gpa, bytes);
}

/** Expects the run to have ended by power-off and returns the exit code. */
export function expectHalted(result: RunResult, exitCode?: number): number {
  if (result.reason.kind !== 'halted') expect.fail(`expected the VM to halt, got ${JSON.stringify(result.reason)}`);
  if (exitCode !== undefined) expect(result.reason.exitCode).toBe(exitCode);
  return result.reason.exitCode;
}

/** Expects the run to have stopped with a guest error and returns its message. */
export function expectGuestError(result: RunResult, pattern?: RegExp): string {
  if (result.reason.kind !== 'guest-error') expect.fail(`expected a guest error, got ${JSON.stringify(result.reason)}`);
  if (pattern) expect(result.reason.message).toMatch(pattern);
  return result.reason.message;
}

/** Every translation configuration of the kernel's MMU, for conformance tests that must hold in each. */
export const MMU_CONFIGS: readonly [name: string, options: MmuOptions][] = [
  ['shadow with traces', { mode: 'shadow', traces: true }],
  ['shadow without traces', { mode: 'shadow', traces: false }],
  ['shadow without batching', { mode: 'shadow', batch: 0 }],
  ['nested', { mode: 'nested' }],
];

// -------------------------------------------------------------------------------------------------
// Page tables built from the host side (Sv32, SPEC.md §12)

const PTE_LEAF_RWX = Pte.V | Pte.R | Pte.W | Pte.X | Pte.A | Pte.D;

/** A PTE naming `gpa` (a page or superpage base) with `flags`. */
export function pte(gpa: number, flags: number): number {
  return ((Math.floor(gpa / 4096) << PTE_PPN_SHIFT) | flags) >>> 0;
}

/** The ptbr value for an Sv32 root table at `rootGpa` with `asid`. */
export function ptbrFor(rootGpa: number, asid = 0): number {
  return (Ptbr.MODE_SV32 | (asid << Ptbr.ASID_SHIFT) | (rootGpa / 4096)) >>> 0;
}

/**
 * Page tables written straight into guest RAM: a root table whose entry 0 maps the first 4 MiB
 * onto itself as a supervisor RWX superpage (so kernel code, data and the tables stay
 * reachable), plus second-level tables allocated on demand from `nextTableGpa`.
 */
export class HostPageTables {
  private nextTable: number;
  private readonly tables = new Map<number, number>();

  constructor(
    readonly vm: Vm,
    readonly rootGpa: number,
    nextTableGpa: number,
    identityFlags: number = PTE_LEAF_RWX,
  ) {
    this.nextTable = nextTableGpa;
    vm.writePhysical(rootGpa, new Uint8Array(4096));
    if (identityFlags !== 0) this.setRoot(0, pte(0, identityFlags));
  }

  setRoot(vpn1: number, value: number): void {
    writeWord(this.vm, this.rootGpa + vpn1 * 4, value);
  }

  /** Maps the 4 KiB page at `va` to `gpa` with `flags` (a leaf at level 0). */
  map(va: number, gpa: number, flags: number): number {
    const address = this.leafAddress(va);
    writeWord(this.vm, address, pte(gpa, flags));
    return address;
  }

  /** Writes a raw level-0 entry for `va`; returns its guest-physical address. */
  setLeaf(va: number, value: number): number {
    const address = this.leafAddress(va);
    writeWord(this.vm, address, value);
    return address;
  }

  /** The guest-physical address of the level-0 entry for `va` (allocating its table). */
  leafAddress(va: number): number {
    const vpn1 = va >>> 22;
    let table = this.tables.get(vpn1);
    if (table === undefined) {
      table = this.nextTable;
      this.nextTable += 4096;
      this.vm.writePhysical(table, new Uint8Array(4096));
      this.tables.set(vpn1, table);
      this.setRoot(vpn1, pte(table, Pte.V));
    }
    return table + ((va >>> 12) & 0x3ff) * 4;
  }

  ptbr(asid = 0): number {
    return ptbrFor(this.rootGpa, asid);
  }
}

export { prng } from './fixtures/prng.ts';

export const hex = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
