/**
 * Shared harness of the MMU coherence tests (shadow.test.ts, shootdown.test.ts,
 * large-pages.test.ts): a VM in a chosen MMU configuration and large-page policy, host-built
 * Sv32 tables (HostPageTables from helpers.ts), and a PROBE hypercall that snapshots every
 * counter the tests reason about at chosen points of the guest program.
 *
 * Memory layout (all inside the identity superpage of the first 4 MiB, so the guest can reach
 * its own tables and frames at VA = GPA): code from 0x1000, the root table at ROOT, leaf tables
 * from FIRST_TABLE, test frames from FRAMES.
 */
import { assemble } from '../../guest-isa/assembler.ts';
import { Hcall, Reg } from '../../guest-isa/arch.ts';
import type { Hypervisor, LargePagePolicy, MmuOptions, MmuStats, RunOptions, RunResult, Vcpu, Vm } from '../../kernel/index.ts';
import { HCALL_PROBE, hex, HostPageTables, PRELUDE, ptbrFor } from './helpers.ts';

export const ROOT = 0x10_0000;
export const FIRST_TABLE = 0x10_1000;
/** Guest frames the tests map and fill (identity-mapped too). */
export const FRAMES = 0x20_0000;
/** Where test mappings live: VPN[1] 0x100, far from the identity superpage. */
export const VA = 0x4000_0000;

/** The three translation configurations; results must agree, counters differ. */
export const MMU_MODES = [
  { name: 'shadow with traces', mmu: { mode: 'shadow' }, traces: true, nested: false },
  { name: 'shadow without traces', mmu: { mode: 'shadow', traces: false }, traces: false, nested: false },
  { name: 'nested', mmu: { mode: 'nested' }, traces: false, nested: true },
] as const satisfies readonly { name: string; mmu: MmuOptions; traces: boolean; nested: boolean }[];
export type MmuMode = (typeof MMU_MODES)[number];

/** A program body run with paging on (ASID 1, root ROOT); a trap powers off with 0x77. */
export function pagedProgram(body: string, data = ''): string {
  return `
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR_A1
        csrrw zero, ptbr, t0
${body}
        exiti 0
handler: exiti 0x77
        .data
${data}
`;
}

/** Everything a probe records. */
export interface Counters {
  mmu: MmuStats;
  translationsInvalidated: number;
  shootdowns: number;
  shootdownEntries: number;
  /** Per vCPU. */
  tlbDropped: number[];
  tlbFullFlushes: number[];
  tlbFills: number[];
}

export function countersOf(hv: Hypervisor, vm: Vm): Counters {
  return {
    mmu: { ...vm.mmu.stats },
    translationsInvalidated: vm.translationsInvalidated,
    shootdowns: hv.shootdowns,
    shootdownEntries: hv.shootdownEntries,
    tlbDropped: vm.vcpus.map((v) => v.tlb.entriesDropped),
    tlbFullFlushes: vm.vcpus.map((v) => v.tlb.fullFlushes),
    tlbFills: vm.vcpus.map((v) => v.tlb.fills),
  };
}

/** `after - before` for every MMU counter. */
export function mmuDelta(before: Counters, after: Counters): MmuStats {
  const out = { ...after.mmu };
  for (const key of Object.keys(out) as (keyof MmuStats)[]) out[key] = after.mmu[key] - before.mmu[key];
  return out;
}

export interface PagedGuestOptions {
  hv: Hypervisor;
  mmu?: MmuOptions;
  largePages?: LargePagePolicy;
  vcpus?: number;
  /** Guest RAM (default 16 MiB). */
  memoryBytes?: number;
}

export interface PagedGuest {
  hv: Hypervisor;
  vm: Vm;
  tables: HostPageTables;
  sym(name: string): number;
  run(options?: RunOptions): RunResult;
  vcpu(index?: number): Vcpu;
  word(gpa: number): number;
  words(gpa: number, count: number): number[];
  /** Counters recorded by `probe id` in the guest, by id (the last one with that id). */
  probe(id: number): Counters;
  /** Runs `fn` when the guest executes `probe id` (after the counters are recorded). */
  onProbe(id: number, fn: (vcpu: Vcpu) => void): void;
}

/**
 * Constants and macros every paged test program may use, besides PRELUDE's: PTBR_A<n> (root ROOT
 * with ASID n, n = 1..3), and `probe id` (records the counters; clobbers a0, a1).
 */
const PAGED_PRELUDE = `
        .equ    PTBR_A1, ${hex(ptbrFor(ROOT, 1))}
        .equ    PTBR_A2, ${hex(ptbrFor(ROOT, 2))}
        .equ    PTBR_A3, ${hex(ptbrFor(ROOT, 3))}
        .macro  probe id
        li      a0, HCALL_PROBE
        li      a1, \\id
        hcall
        .endm
`;

/**
 * Creates a VM with the given MMU and large-page configuration, loads `source` (with PRELUDE and
 * the paged prelude), and builds the root table at ROOT with the identity superpage over the
 * first 4 MiB. The EXIT hypercall powers off; a trap with no vector stops the VM.
 */
export function bootPaged(source: string, options: PagedGuestOptions): PagedGuest {
  const { hv } = options;
  const vm = hv.createVm({ memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024, vcpus: options.vcpus ?? 1, mmu: options.mmu, largePages: options.largePages });
  const { image, symbols } = assemble(PRELUDE + PAGED_PRELUDE + source, { fileName: 'test.s' });
  vm.loadImage(image);
  vm.onHypercall(Hcall.EXIT, (vcpu) => vm.powerOff(vcpu.regs[Reg.A1]!));
  const probes = new Map<number, Counters>();
  const probeHooks = new Map<number, (vcpu: Vcpu) => void>();
  vm.onHypercall(HCALL_PROBE, (vcpu) => {
    const id = vcpu.regs[Reg.A1]!;
    probes.set(id, countersOf(hv, vm));
    probeHooks.get(id)?.(vcpu);
  });
  const tables = new HostPageTables(vm, ROOT, FIRST_TABLE);
  return {
    hv,
    vm,
    tables,
    sym(name) {
      const value = symbols.get(name);
      if (value === undefined) throw new Error(`test program has no symbol '${name}'`);
      return value >>> 0;
    },
    run(runOptions = {}) {
      return hv.run({ maxInstructions: 5_000_000, ...runOptions }, [vm])[0]!;
    },
    vcpu(index = 0) {
      return vm.vcpus[index]!;
    },
    word(gpa) {
      return readWords(vm, gpa, 1)[0]!;
    },
    words(gpa, count) {
      return readWords(vm, gpa, count);
    },
    probe(id) {
      const counters = probes.get(id);
      if (!counters) throw new Error(`the guest never reached probe ${id}`);
      return counters;
    },
    onProbe(id, fn) {
      probeHooks.set(id, fn);
    },
  };
}

/** `count` little-endian u32 words of guest-physical memory. */
export function readWords(vm: Vm, gpa: number, count: number): number[] {
  const bytes = vm.readPhysical(gpa, count * 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: count }, (_, i) => view.getUint32(i * 4, true));
}

/** Fills a 4 KiB guest frame with words `tag + i` (i = word index), so every word names its frame. */
export function fillFrame(vm: Vm, gpa: number, tag: number): void {
  const words = new Uint32Array(1024);
  for (let i = 0; i < 1024; i++) words[i] = (tag + i) >>> 0;
  vm.writePhysical(gpa, new Uint8Array(words.buffer));
}
