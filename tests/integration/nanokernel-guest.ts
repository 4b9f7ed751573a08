/**
 * Shared by the nanokernel memory tests: the assembled kernel, its symbols, and readers of the
 * kernel's own counters in guest memory (a word at a symbol, the page classes of mm.s), plus a
 * step to user mode, where those counters are consistent.
 */
import { join } from 'node:path';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { Mode, type Hypervisor, type Vm } from '../../kernel/index.ts';

const REPO = join(import.meta.dirname, '..', '..');

/** examples/nanokernel/kernel.s, assembled once per test file. */
export const { image: KERNEL_IMAGE, symbols: KERNEL_SYMBOLS } = assembleFile(join(REPO, 'examples/nanokernel/kernel.s'));

/** A kernel symbol's address; fails the test when there is none. */
export function symbol(name: string): number {
  const value = KERNEL_SYMBOLS.get(name);
  if (value === undefined) throw new Error(`the kernel has no symbol ${name}`);
  return value >>> 0;
}

/** The little-endian u32 at a guest-physical address. */
export function word(vm: Vm, address: number): number {
  const bytes = vm.memory.readPhysical(address as never, 4);
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

/** The kernel's page classes (mm.s mem_classes) and the pages it manages (mem_total). */
export interface Classes {
  total: number;
  free: number;
  cache: number;
  anon: number;
  kernel: number;
  balloon: number;
}

/** Reads the page classes from guest memory. */
export function classes(vm: Vm): Classes {
  const at = symbol('mem_classes');
  return {
    total: word(vm, symbol('mem_total')),
    free: word(vm, at), cache: word(vm, at + 4), anon: word(vm, at + 8), kernel: word(vm, at + 12), balloon: word(vm, at + 16),
  };
}

/**
 * Runs on, one instruction at a time, until the vCPU is in user mode (or the VM stopped): the
 * kernel is between two of its operations there, so its counters are consistent.
 */
export function toUserMode(hv: Hypervisor, vm: Vm): void {
  const vcpu = vm.vcpus[0]!;
  for (let i = 0; i < 1_000_000 && vcpu.mode !== Mode.USER; i++) {
    const [result] = hv.run({ maxInstructions: 1 }, [vm]);
    if (result!.reason.kind !== 'budget') return;
  }
}
