/**
 * error-matrix — the memory-error injection matrix of issue 12 (docs/memory-errors.md, "The
 * injection matrix"). Not run in CI; tests/services/memory-error-matrix.test.ts runs a sample.
 *
 *   npx tsx scripts/error-matrix.ts [--trials N] [--seed S]
 *
 * Each trial boots a nanokernel running `crc32 131072 walker 1M random 6` (crc32 writes its
 * 128 KiB buffer once and then only reads it: clean data; the walker reads and rewrites its
 * heap: dirty data) with a set of recovery methods (none, clean-copy, parity, hash, or all three
 * in that order), runs it to a random instruction, injects ONE error (flip) into a page of a
 * chosen kind, window and report timing with the MemoryErrorService, runs it to its end and
 * compares its console output and exit code with an error-free run:
 *   recovered-by-<method>  the service rebuilt the page and the output is the error-free one;
 *   machine-check          the output has the kernel's machine-check kill or panic line;
 *   double-machine-check   the VM stopped on a machine check inside the machine-check handler
 *                          (SPEC.md §7.6: its code, stack, data or a page table on its way is
 *                          the bad page), before the kernel could print anything;
 *   harmless               the output is the error-free one and the error was never consumed
 *                          (on-access and never touched again, or `now` unrecovered, never touched);
 *   silent                 the output differs without a machine-check line: the guest computed with
 *                          corrupted bytes. Must be 0.
 * Exit 0 when no trial was silently consumed, looped or went unexplained, 1 otherwise.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { assembleFile } from '../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, savedBootArgs } from '../devices/index.ts';
import { createHypervisor, DOUBLE_MACHINE_CHECK, PageState, type Hypervisor, type Vm } from '../kernel/index.ts';
import { CheckpointReader, restoreVmCheckpoint, saveVmCheckpoint, type RestoredVm } from '../services/checkpoint/index.ts';
import { PageSharer } from '../services/memory/sharing.ts';
import { SwapFile } from '../services/memory/swap.ts';
import { CleanCopyRecovery } from '../services/recovery/clean-copy.ts';
import { StoredHashRecovery } from '../services/recovery/hash.ts';
import { MemoryErrorService, seededRandom, type ReportTiming } from '../services/recovery/index.ts';
import { ParityGroups } from '../services/recovery/parity.ts';
import type { RecoveryMethod } from '../services/recovery/types.ts';
import { parseArguments, parseInteger, runTool } from '../tools/cli.ts';

const REPO = join(import.meta.dirname, '..');
const MiB = 2 ** 20;
const PAGE = 4096;

export const PAGE_KINDS = ['code', 'clean-data', 'dirty-data', 'page-table', 'kernel-data', 'swapped-in', 'lazily-restored', 'shared'] as const;
export type PageKind = (typeof PAGE_KINDS)[number];
/** Kinds a trial makes from the others (swap, a lazy restore, sharing) before it injects. */
export const DERIVED_KINDS: readonly PageKind[] = ['swapped-in', 'lazily-restored', 'shared'];
export const WINDOWS = [1, 8, 16, 64] as const;
export const TIMINGS: readonly ReportTiming[] = ['now', 'on-access'];
export const METHOD_SETS = ['none', 'clean-copy', 'parity', 'hash', 'all'] as const;
export type MethodSet = (typeof METHOD_SETS)[number];
/**
 * Outcome classes; recovered ones are `recovered-by-<method>`. Two failure classes the matrix
 * found before machine checks stopped nesting (SPEC.md §7.6) stay counted, and must now be 0:
 * `mc-livelock`, the guest never ends and keeps taking machine checks; `trap-loop-stop`, the
 * hypervisor stopped the VM for a trap loop (64 traps without an instruction) at the trap vector.
 */
export type TrialClass = `recovered-by-${string}` | 'machine-check' | 'double-machine-check' | 'mc-livelock' | 'trap-loop-stop' | 'harmless' | 'silent' | 'anomaly';

export interface MatrixOptions {
  trials: number;
  seed?: number;
  /** Method sets cycled through (default all five). */
  methodSets?: readonly MethodSet[];
  /** Boot arguments (default `crc32 131072 walker 1M random 6`). */
  bootArgs?: string;
  /** Guest RAM in MiB (default 8). */
  memoryMiB?: number;
  /** Parity refresh and hash scan cadence in instructions (default 250,000). */
  refreshInstructions?: number;
  /** Called after each trial. */
  onTrial?: (done: number, trial: TrialResult) => void;
}

export interface TrialResult {
  index: number;
  kind: PageKind;
  windowBits: number;
  report: ReportTiming;
  methods: MethodSet;
  /** Instruction at which the error was injected. */
  at: number;
  gpn: number;
  windowBitOffset: number;
  /** The service log's outcome. */
  logOutcome: string;
  outcome: TrialClass;
  /** For silent/anomaly trials: what differed. */
  detail?: string;
}

export interface MatrixResult {
  seed: number;
  bootArgs: string;
  referenceInstructions: number;
  trials: TrialResult[];
  /** Trials that found no page of their kind at any point tried (skipped, not counted). */
  skipped: number;
  ms: number;
}

let kernel: ReturnType<typeof assembleFile> | null = null;
function kernelImage(): ReturnType<typeof assembleFile> {
  kernel ??= assembleFile(join(REPO, 'examples/nanokernel/kernel.s'));
  return kernel;
}
function sym(name: string): number {
  const value = kernelImage().symbols.get(name);
  if (value === undefined) throw new Error(`the nanokernel has no symbol ${name}`);
  return value >>> 0;
}

interface Guest {
  hv: Hypervisor;
  vm: Vm;
  output: CaptureSink;
  /** Console output of the run this guest was restored from, up to its checkpoint ('' when booted). */
  prefix: string;
  methods: RecoveryMethod[];
  /** The hypervisor swap file (swapped-in trials), keeping clean copies when clean copy is a method. */
  swap: SwapFile | null;
  dispose: () => void;
}

interface GuestOptions {
  /** Attach a swap file (and keep clean copies in it for clean copy). */
  swap?: boolean;
  /** Restore from this checkpoint lazily instead of booting (clean copy also reads it). */
  restoreFrom?: { path: string; prefix: string };
}

function bootGuest(bootArgs: string, memoryMiB: number, set: MethodSet, refresh: number, options: GuestOptions = {}): Guest {
  const hv = createHypervisor({ hostMemoryBytes: (memoryMiB + 8) * MiB });
  const output = new CaptureSink();
  let vm: Vm;
  let restored: RestoredVm | null = null;
  let reader: CheckpointReader | null = null;
  if (options.restoreFrom === undefined) {
    vm = hv.createVm({ memoryBytes: memoryMiB * MiB, name: 'g' });
    vm.loadImage(kernelImage().image);
    attachStandardDevices(vm, { output, bootArgs });
  } else {
    restored = restoreVmCheckpoint(hv, options.restoreFrom.path, {
      mode: 'lazy', prefetch: false,
      attach: (v, saved) => void attachStandardDevices(v, { output, bootArgs: savedBootArgs(saved.components.bootargs!.state) }),
    });
    vm = restored.vm;
    reader = CheckpointReader.open(options.restoreFrom.path);
  }
  const methods: RecoveryMethod[] = [];
  const stops: Array<() => void> = [];
  const swap = options.swap === true ? SwapFile.createIn(tmpdir()) : null;
  if (swap !== null) swap.attach(vm);
  if (set === 'clean-copy' || set === 'all') {
    const clean = new CleanCopyRecovery(vm, reader === null ? {} : { checkpoint: reader });
    clean.scan();
    methods.push(clean);
    if (restored !== null) restored.onPagesInstalled = (gpns) => clean.admitFromCheckpoint(gpns);
    swap?.keepCleanCopies(vm, clean);
  }
  if (set === 'parity' || set === 'all') {
    const parity = new ParityGroups(vm, { groupPages: 8 });
    stops.push(parity.startRefreshing(refresh));
    methods.push(parity);
  }
  if (set === 'hash' || set === 'all') {
    const hash = new StoredHashRecovery(vm);
    stops.push(hash.startScanning(refresh));
    methods.push(hash);
  }
  const dispose = (): void => {
    for (const stop of stops) stop();
    swap?.forget(vm);
    swap?.close();
    if (hv.vms.includes(vm)) hv.destroyVm(vm);
    restored?.close(); // after the VM is gone: nothing left to read in
    reader?.close();
    hv.close(); // unmap the pool now: thousands of trials would otherwise hold it until a GC
  };
  return { hv, vm, output, prefix: options.restoreFrom?.prefix ?? '', methods, swap, dispose };
}

/** Runs to `target` instructions (or the end); false when the guest stopped first. */
function runTo(guest: Guest, target: number): boolean {
  while (guest.vm.instructionsRetired < target) {
    const [result] = guest.hv.run({ maxInstructions: target - guest.vm.instructionsRetired }, [guest.vm]);
    const kind = result!.reason.kind;
    if (kind !== 'budget' && kind !== 'idle') return false;
  }
  return true;
}

/** Runs to the end; the exit code, or a description of how it stopped (limit: `cap` instructions). */
function runToEnd(guest: Guest, cap: number): string {
  for (;;) {
    const left = cap - guest.vm.instructionsRetired;
    if (left <= 0) return 'no end within 3× the error-free run';
    const [result] = guest.hv.run({ maxInstructions: Math.min(left, 5_000_000) }, [guest.vm]);
    const reason = result!.reason;
    if (reason.kind === 'halted') return `exit ${reason.exitCode}`;
    if (reason.kind !== 'budget' && reason.kind !== 'idle') return `stopped: ${JSON.stringify(reason)}`;
  }
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

const PTE_V = 1;
const PTE_R = 2;
const PTE_X = 8;

/** The present pages of each kind, now (between runs). */
export function pagesByKind(vm: Vm): Record<PageKind, number[]> {
  const memory = vm.memory;
  const present = (gpn: number): boolean => gpn < memory.pageCount && memory.stateOf(gpn) === PageState.PRESENT;
  const textEnd = Math.ceil(sym('user_image_end') / PAGE); // .text: kernel code, then the user image
  const rootGpn = sym('kernel_root') / PAGE;
  const kernelEnd = sym('kernel_end') / PAGE;
  // The last three kinds are pages of the first five that went through swap, a lazy restore or
  // sharing: runTrial finds them.
  const out: Record<PageKind, number[]> = { code: [], 'clean-data': [], 'dirty-data': [], 'page-table': [], 'kernel-data': [], 'swapped-in': [], 'lazily-restored': [], shared: [] };
  for (let gpn = 1; gpn < textEnd; gpn++) if (present(gpn)) out.code.push(gpn);
  for (let gpn = textEnd; gpn < kernelEnd; gpn++) if (gpn !== rootGpn && present(gpn)) out['kernel-data'].push(gpn);
  // Process roots: copies of kernel_root (its 1:1 superpage entries) with user entries 0x100 … 0x1ff.
  const kroot = memory.readPhysical(rootGpn * PAGE, PAGE);
  out['page-table'].push(rootGpn);
  const roots: number[] = [];
  memory.forEachPage(PageState.PRESENT, (gpn) => {
    if (gpn < kernelEnd) return;
    const page = memory.readPhysical(gpn * PAGE, PAGE);
    if (u32(page, 0) === 0 || u32(page, 0) !== u32(kroot, 0) || u32(page, 4) !== u32(kroot, 4)) return;
    let user = false;
    for (let i = 0x100; i < 0x200; i++) if ((u32(page, i * 4) & PTE_V) !== 0) user = true;
    if (user) roots.push(gpn);
  });
  roots.sort((a, b) => a - b); // allocated in start order: the first program's root first
  roots.forEach((root, pid) => {
    out['page-table'].push(root);
    const page = memory.readPhysical(root * PAGE, PAGE);
    for (let i = 0x100; i < 0x200; i++) {
      const pte = u32(page, i * 4);
      if ((pte & PTE_V) === 0 || (pte & (PTE_R | PTE_X)) !== 0) continue;
      const table = pte >>> 10;
      if (!present(table)) continue;
      out['page-table'].push(table);
      const leaves = memory.readPhysical(table * PAGE, PAGE);
      for (let j = 0; j < 1024; j++) {
        const leaf = u32(leaves, j * 4);
        if ((leaf & PTE_V) === 0) continue;
        const gpn = leaf >>> 10;
        if (!present(gpn)) continue;
        if ((leaf & PTE_X) !== 0) out.code.push(gpn); // the process's copy of the user image
        else if (i >= 0x101) (pid === 0 ? out['clean-data'] : out['dirty-data']).push(gpn); // heap: crc32's buffer, the walker's region
      }
    }
  });
  return out;
}

const MC_LINE = /machine check \(uncorrectable memory error\)/;

function firstDifference(a: string, b: string): string {
  const la = a.split('\n');
  const lb = b.split('\n');
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) return `line ${i + 1}: expected ${JSON.stringify(lb[i] ?? '(none)')}, got ${JSON.stringify(la[i] ?? '(none)')}`;
  }
  return '(same text)';
}

/** Runs the matrix (deterministic for a seed). */
export function runErrorMatrix(options: MatrixOptions): MatrixResult {
  const started = performance.now();
  const seed = options.seed ?? 1;
  const bootArgs = options.bootArgs ?? 'crc32 131072 walker 1M random 6';
  const memoryMiB = options.memoryMiB ?? 8;
  const refresh = options.refreshInstructions ?? 250_000;
  const sets = options.methodSets ?? METHOD_SETS;
  // The error-free run, with no method and with all three (they must not change what the guest computes).
  const reference = bootGuest(bootArgs, memoryMiB, 'none', refresh);
  const refEnd = runToEnd(reference, 1e9);
  const refOutput = reference.output.text();
  const refInstructions = reference.vm.instructionsRetired;
  reference.dispose();
  const check = bootGuest(bootArgs, memoryMiB, 'all', refresh);
  const checkEnd = runToEnd(check, 1e9);
  if (check.output.text() !== refOutput || checkEnd !== refEnd) throw new Error(`the recovery methods change the error-free run: ${firstDifference(check.output.text(), refOutput)}`);
  check.dispose();
  const random = seededRandom(seed);
  const combos: Array<{ kind: PageKind; windowBits: number; report: ReportTiming }> = [];
  for (const kind of PAGE_KINDS) for (const windowBits of WINDOWS) for (const report of TIMINGS) combos.push({ kind, windowBits, report });
  const trials: TrialResult[] = [];
  let skipped = 0;
  const dir = mkdtempSync(join(tmpdir(), 'bv-error-matrix-'));
  try {
    for (let index = 0; index < options.trials; index++) {
      const combo = combos[index % combos.length]!;
      const methods = sets[(index + Math.floor(index / combos.length)) % sets.length]!;
      const trial = runTrial(index, combo.kind, combo.windowBits, combo.report, methods, random, { bootArgs, memoryMiB, refresh, refOutput, refEnd, refInstructions }, dir);
      if (trial === null) {
        skipped++;
        continue;
      }
      trials.push(trial);
      options.onTrial?.(index + 1, trial);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { seed, bootArgs, referenceInstructions: refInstructions, trials, skipped, ms: performance.now() - started };
}

/** Steps a trial of a derived kind takes before its pages exist (instructions). */
const SWAP_SETTLE = 300_000;

/** Data and user code pages of the processes: what the derived kinds are made from. */
function processPages(vm: Vm): number[] {
  const kinds = pagesByKind(vm);
  return [...kinds['clean-data'], ...kinds['dirty-data'], ...kinds.code.filter((gpn) => gpn >= Math.ceil(sym('kernel_end') / PAGE))];
}

/**
 * Boots the guest for one attempt and brings it to instruction `at` with pages of `kind` to pick
 * from (null when it stopped first or there are none). Derived kinds:
 * - swapped-in: at `at`, up to 64 process pages are swapped out; the guest runs SWAP_SETTLE more
 *   instructions; the pages it brought back in are the candidates (clean copy keeps their slots);
 * - lazily-restored: a checkpoint is saved at 60 % of `at` and restored lazily (no prefetch) into
 *   a new VM that runs to `at`; the pages read in from the file are the candidates (clean copy
 *   also reads the checkpoint);
 * - shared: at `at`, two sharing passes over the VM merge its identical pages (zero pages, and
 *   the processes' copies of the user image); the pages on shared frames are the candidates.
 */
export function prepare(kind: PageKind, at: number, methods: MethodSet, ref: TrialRef, dir: string): { guest: Guest; candidates: number[] } | null {
  if (kind === 'lazily-restored') {
    const source = bootGuest(ref.bootArgs, ref.memoryMiB, 'none', ref.refresh);
    const path = join(dir, 'trial.bvc');
    try {
      if (!runTo(source, Math.floor(at * 0.6))) return null;
      saveVmCheckpoint(source.vm, path);
    } finally {
      source.dispose();
    }
    const prefix = source.output.text();
    const guest = bootGuest(ref.bootArgs, ref.memoryMiB, methods, ref.refresh, { restoreFrom: { path, prefix } });
    const lazy: number[] = [];
    guest.vm.memory.forEachPage(PageState.LAZY, (gpn) => void lazy.push(gpn));
    if (!runTo(guest, at)) return { guest, candidates: [] };
    return { guest, candidates: lazy.filter((gpn) => guest.vm.memory.stateOf(gpn) === PageState.PRESENT) };
  }
  const guest = bootGuest(ref.bootArgs, ref.memoryMiB, methods, ref.refresh, { swap: kind === 'swapped-in' });
  if (!runTo(guest, at)) return { guest, candidates: [] };
  const memory = guest.vm.memory;
  if (kind === 'swapped-in') {
    const out = processPages(guest.vm).slice(0, 64).filter((gpn) => guest.swap!.swapOut(guest.vm, gpn));
    if (!runTo(guest, at + SWAP_SETTLE)) return { guest, candidates: [] };
    return { guest, candidates: out.filter((gpn) => memory.stateOf(gpn) === PageState.PRESENT) };
  }
  if (kind === 'shared') {
    const sharer = new PageSharer(guest.hv, { zeroPages: 'share' });
    sharer.scan(memory.pageCount);
    sharer.scan(memory.pageCount);
    sharer.stop();
    const shared: number[] = [];
    memory.forEachPage(PageState.PRESENT, (gpn) => {
      if (!memory.isPrivate(gpn)) shared.push(gpn);
    });
    return { guest, candidates: shared };
  }
  return { guest, candidates: pagesByKind(guest.vm)[kind] };
}

export interface TrialRef {
  bootArgs: string;
  memoryMiB: number;
  refresh: number;
  refOutput: string;
  refEnd: string;
  refInstructions: number;
}

function runTrial(index: number, kind: PageKind, windowBits: number, report: ReportTiming, methods: MethodSet, random: () => number, ref: TrialRef, dir: string): TrialResult | null {
  // A random point with a page of the kind (crc32's buffer exists only while crc32 runs, …): up to 8 tries.
  for (let attempt = 0; attempt < 8; attempt++) {
    const at = Math.floor((0.02 + 0.93 * random()) * ref.refInstructions);
    const pick = random();
    const windowBitOffset = Math.floor(random() * (PAGE * 8 - windowBits + 1));
    const prepared = prepare(kind, at, methods, ref, dir);
    if (prepared === null) continue;
    const { guest, candidates } = prepared;
    try {
      if (candidates.length === 0) continue;
      const gpn = candidates[Math.floor(pick * candidates.length)]!;
      const service = new MemoryErrorService(guest.vm, { methods: guest.methods, now: () => 0 });
      service.inject({ gpa: gpn * PAGE + (windowBitOffset >>> 3), windowBitOffset, windowBits, pattern: 'flip', report });
      const end = runToEnd(guest, 3 * ref.refInstructions);
      const output = guest.prefix + guest.output.text();
      const logOutcome = service.log()[0]!.outcome;
      const same = output === ref.refOutput && end === ref.refEnd;
      const delivered = service.stats().machineChecks; // refused guest accesses to the poisoned page
      let outcome: TrialClass;
      let detail: string | undefined;
      if (logOutcome.startsWith('recovered-by-')) {
        outcome = same ? (logOutcome as TrialClass) : 'silent';
      } else if (MC_LINE.test(output) || (end === 'exit 5' && delivered > 0)) {
        outcome = 'machine-check'; // the kill or panic line (exit 5 without it: a second machine check in the panic, which powers off silently)
      } else if (delivered > 0 && end.startsWith('stopped') && end.includes(DOUBLE_MACHINE_CHECK)) {
        outcome = 'double-machine-check';
      } else if (delivered > 0 && end.startsWith('no end')) {
        outcome = 'mc-livelock';
      } else if (delivered > 0 && end.startsWith('stopped') && end.includes('trap loop')) {
        outcome = 'trap-loop-stop';
      } else if (same && delivered === 0 && (logOutcome === 'pending' || logOutcome === 'unrecovered')) {
        outcome = 'harmless';
      } else {
        outcome = delivered === 0 && !same ? 'silent' : 'anomaly';
      }
      if (outcome !== 'harmless' && outcome !== 'machine-check' && outcome !== 'double-machine-check' && !outcome.startsWith('recovered-by-')) detail = `${end} (error-free: ${ref.refEnd}), ${delivered} refused accesses; ${firstDifference(output, ref.refOutput)}`;
      return { index, kind, windowBits, report, methods, at, gpn, windowBitOffset, logOutcome, outcome, detail };
    } finally {
      guest.dispose();
    }
  }
  return null;
}

/** Counts per page kind × window × timing × outcome, as a Markdown table. */
export function matrixTable(trials: readonly TrialResult[], by: (t: TrialResult) => string = (t) => `${t.kind} | ${t.windowBits} | ${t.report}`, head = 'page kind | window | report'): string {
  const columns = ['recovered-by-clean-copy', 'recovered-by-parity', 'recovered-by-hash', 'machine-check', 'double-machine-check', 'mc-livelock', 'trap-loop-stop', 'harmless', 'silent', 'anomaly'];
  const rows = new Map<string, Map<string, number>>();
  for (const trial of trials) {
    const key = by(trial);
    if (!rows.has(key)) rows.set(key, new Map());
    const row = rows.get(key)!;
    row.set(trial.outcome, (row.get(trial.outcome) ?? 0) + 1);
  }
  const heads = ['clean copy', 'parity', 'hash', 'machine check', 'double MC stop', 'MC livelock', 'trap-loop stop', 'harmless', '**silent**', 'other'];
  const lines = [`| ${head} | trials | ${heads.join(' | ')} |`, `|${head.split('|').map(() => '---').join('|')}|---:|${heads.map(() => '---:').join('|')}|`];
  const total = new Map<string, number>();
  for (const [key, row] of rows) {
    const n = [...row.values()].reduce((a, b) => a + b, 0);
    lines.push(`| ${key} | ${n} | ${columns.map((c) => String(row.get(c) ?? 0)).join(' | ')} |`);
    for (const [c, v] of row) total.set(c, (total.get(c) ?? 0) + v);
  }
  const blanks = head.split('|').length - 1;
  lines.push(`| **all** |${' |'.repeat(blanks)} ${trials.length} | ${columns.map((c) => `**${total.get(c) ?? 0}**`).join(' | ')} |`);
  return lines.join('\n');
}

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArguments(argv, { values: ['--trials', '--seed'] });
  const trials = parseInteger(args.value('--trials') ?? '10000', '--trials', 1);
  const seed = parseInteger(args.value('--seed') ?? '1', '--seed', 0);
  const tty = process.stderr.isTTY === true;
  const t0 = performance.now();
  const result = runErrorMatrix({
    trials, seed,
    onTrial: (done, trial) => {
      if (trial.outcome === 'silent' || trial.outcome === 'anomaly') process.stderr.write(`\ntrial ${trial.index} ${trial.outcome}: ${JSON.stringify(trial)}\n`);
      if (tty) process.stderr.write(`\r${done}/${trials} trials, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    },
  });
  if (tty) process.stderr.write('\n');
  const silent = result.trials.filter((t) => t.outcome === 'silent').length;
  const loops = result.trials.filter((t) => t.outcome === 'mc-livelock' || t.outcome === 'trap-loop-stop' || t.outcome === 'anomaly').length;
  process.stdout.write(
    `${result.trials.length} trials (${result.skipped} skipped: no page of the kind), seed ${seed}, guest \`${result.bootArgs}\` ` +
      `(${result.referenceInstructions} instructions error-free), ${(result.ms / 1000).toFixed(0)} s, ${new Date().toISOString().slice(0, 10)}\n\n`,
  );
  process.stdout.write(`${matrixTable(result.trials)}\n\n`);
  process.stdout.write(`${matrixTable(result.trials, (t) => `${t.methods} | ${t.kind}`, 'methods | page kind')}\n\n`);
  process.stdout.write(`silently consumed: ${silent}; livelocks, trap loops and unexplained: ${loops}\n`);
  return silent === 0 && loops === 0 ? 0 : 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void runTool(main, { usage: 'usage: error-matrix [--trials N] [--seed S]' });
}
