/**
 * The nanokernel (examples/nanokernel) booted end to end on the standard devices: every program
 * result is recomputed here independently (a JS sieve, zlib's CRC-32, a JS model of the walker)
 * and compared with the console; the kernel's own lines (starts, exits, kills, summary) are
 * checked exactly. Also: preemption, ASIDs and sfences observed by a tracer, demand-paging
 * counts, the panic path of a corrupted kernel, boot-argument errors, a walker over hundreds of
 * MiB, secondary vCPUs parking, determinism, and tools/run as a command. docs/nanokernel.md.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { Cause, describeCause, Ptbr } from '../../guest-isa/arch.ts';
import { assembleFile } from '../../guest-isa/assembler.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { BY_MNEMONIC } from '../../guest-isa/opcodes.ts';
import { attachStandardDevices, CaptureSink, runWithResets } from '../../devices/index.ts';
import { createHypervisor, Mode, type RunResult, type TraceHook, type Vcpu } from '../../kernel/index.ts';

const REPO = join(import.meta.dirname, '..', '..');
const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const { image, symbols } = assembleFile(KERNEL);

const MiB = 2 ** 20;
const USER_BASE = 0x4000_0000;
const HEAP_BASE = 0x4040_0000;
const PAGE = 4096;
/** The default program list, as docs/nanokernel.md documents it. */
const DEFAULT_PROGRAMS = 'sieve 100000 crc32 65536 walker 4M random 2 ping 3 fault';
const DEFAULT_SLICE = 100_000;
/** VM exit codes of the nanokernel (docs/nanokernel.md). */
const Exit = { OK: 0, BAD_BOOTARGS: 1, PROGRAM_FAILED: 2, PANIC: 3 } as const;

const hex8 = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;

function symbol(name: string): number {
  const value = symbols.get(name);
  if (value === undefined) throw new Error(`the kernel has no symbol ${name}`);
  return value >>> 0;
}

/** Where a label of the user image lands in every process. */
const userAddress = (label: string): number => USER_BASE + symbol(label) - symbol('user_image_start');

function imageByte(address: number): number {
  const segment = image.segments.find((s) => address >= s.gpa && address < s.gpa + s.data.length)!;
  return segment.data[address - segment.gpa]!;
}

function imageWord(address: number): number {
  const segment = image.segments.find((s) => address >= s.gpa && address + 4 <= s.gpa + s.data.length)!;
  return new DataView(segment.data.buffer, segment.data.byteOffset).getUint32(address - segment.gpa, true);
}

// ---------------------------------------------------------------------------------------------
// Booting

interface Boot {
  lines: string[];
  reason: RunResult['reason'];
  instructions: number;
  vcpus: Vcpu[];
}

interface BootOptions {
  memoryBytes?: number;
  vcpus?: number;
  tracer?: TraceHook;
  image?: GuestImage;
}

function boot(bootArgs: string, options: BootOptions = {}): Boot {
  const memoryBytes = options.memoryBytes ?? 64 * MiB;
  const hv = createHypervisor({ hostMemoryBytes: memoryBytes + 16 * MiB });
  const vm = hv.createVm({ memoryBytes, vcpus: options.vcpus ?? 1, name: 'nanokernel' });
  vm.loadImage(options.image ?? image);
  const output = new CaptureSink();
  const devices = attachStandardDevices(vm, { output, bootArgs });
  if (options.tracer) vm.vcpus[0]!.tracer = options.tracer;
  const run = runWithResets(hv, vm, devices, { maxInstructions: 1_000_000_000 });
  const result = { lines: output.text().split('\n'), reason: run.reason, instructions: run.instructions, vcpus: vm.vcpus };
  expect(result.lines.pop()).toBe(''); // the output ends with a newline
  hv.destroyVm(vm);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Independent models of the user programs

function primesUpTo(n: number): number {
  const composite = new Uint8Array(n + 1);
  let count = 0;
  for (let i = 2; i <= n; i++) {
    if (composite[i]) continue;
    count++;
    for (let j = i * i; j <= n; j += i) composite[j] = 1;
  }
  return count;
}

/** The crc32 program's buffer: byte i is the top byte of the (i+1)-th LCG state after 0x12345678. */
function crcBuffer(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  let x = 0x12345678;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

type Pattern =
  | { kind: 'seq' }
  | { kind: 'random' }
  | { kind: 'stride'; stride: number }
  | { kind: 'hot'; hotBytes: number; percent: number };

/** High 32 bits of an unsigned 32 x 32 product, exactly (as mulhu). */
const mulhu = (a: number, b: number): number => Number((BigInt(a >>> 0) * BigInt(b >>> 0)) >> 32n);

/** The walker as docs/nanokernel.md specifies it: accesses, checksum, pages touched. */
function walk(size: number, pattern: Pattern, passes: number): { accesses: number; checksum: number; pages: number } {
  const memory = new Map<number, number>();
  const accesses = passes * Math.floor(size / 64);
  let checksum = 0x811c9dc5;
  let x = 1;
  let offset = 0;
  const next = (): number => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0);
  for (let k = 0; k < accesses; k++) {
    let at: number;
    switch (pattern.kind) {
      case 'seq':
      case 'stride':
        at = offset;
        offset = (offset + (pattern.kind === 'seq' ? 64 : pattern.stride)) % size;
        break;
      case 'random':
        at = 4 * mulhu(next(), size / 4);
        break;
      case 'hot': {
        const hot = mulhu(next(), 100) < pattern.percent;
        next();
        at = hot ? 4 * mulhu(x, pattern.hotBytes / 4) : pattern.hotBytes + 4 * mulhu(x, (size - pattern.hotBytes) / 4);
        break;
      }
    }
    const value = memory.get(at) ?? 0;
    checksum = Math.imul(checksum ^ value, 0x01000193) >>> 0;
    memory.set(at, (value + k + 1) >>> 0);
  }
  const pages = new Set([...memory.keys()].map((at) => Math.floor(at / PAGE))).size;
  return { accesses, checksum, pages };
}

/** What one program should print, how it ends, and what it costs the kernel. */
interface Program {
  /** Its text in the boot arguments (name and arguments). */
  args: string;
  output: (pid: number) => string[];
  end: (pid: number) => string;
  /** System calls it makes. */
  syscalls: number;
  /** Heap and stack pages it faults in. */
  pageFaults: number;
  killed?: boolean;
}

const exited = (name: string, code = 0) => (pid: number) => `[kernel] pid ${pid} (${name}) exited with code ${code}`;
const killedBy = (detail: string) => (pid: number) => `[kernel] killed pid ${pid} (fault): ${detail}`;
const faultAt = (cause: number, address: number, pc: number): string => `${describeCause(cause)} at ${hex8(address)}, pc ${hex8(pc)}`;

function sieve(n: number): Program {
  return {
    args: `sieve ${n}`, output: () => [`sieve: ${primesUpTo(n)} primes up to ${n}`], end: exited('sieve'),
    syscalls: 3, pageFaults: Math.ceil((n + 1) / PAGE), // sbrk, write, exit; every flag byte is read
  };
}

function crc(n: number): Program {
  return {
    args: `crc32 ${n}`, output: () => [`crc32: ${n} bytes, crc ${hex8(crc32(crcBuffer(n)))}`], end: exited('crc32'),
    syscalls: 3, pageFaults: Math.ceil((n + 1024) / PAGE), // the table and the buffer are written
  };
}

function walker(args: string, size: number, pattern: Pattern, passes: number): Program {
  const { accesses, checksum, pages } = walk(size, pattern, passes);
  const shown = pattern.kind === 'stride' ? `stride:${pattern.stride}` : pattern.kind === 'hot' ? `hot:${pattern.hotBytes}:${pattern.percent}` : pattern.kind;
  return {
    args: `walker ${args}`,
    output: () => [`walker: ${size} bytes, ${shown}, ${passes} pass${passes === 1 ? '' : 'es'}, ${accesses} accesses, checksum ${hex8(checksum)}`],
    end: exited('walker'), syscalls: 3, pageFaults: pages,
  };
}

function ping(n: number): Program {
  return {
    args: `ping ${n}`, output: (pid) => Array.from({ length: n }, (_, i) => `ping ${pid}: ${i + 1}/${n}`), end: exited('ping'),
    syscalls: 2 + 2 * n, pageFaults: 0, // getpid, n x (write, yield), exit
  };
}

const FAULTS = {
  store: (): Program => ({
    args: 'fault', output: () => ['fault: storing to 0x00000000'],
    end: killedBy(faultAt(Cause.STORE_PAGE_FAULT, 0, userAddress('fault_store_insn'))), syscalls: 1, pageFaults: 0, killed: true,
  }),
  load: (): Program => ({
    args: 'fault load', output: () => ['fault: loading from kernel memory at 0x00001000'],
    end: killedBy(faultAt(Cause.LOAD_PAGE_FAULT, 0x1000, userAddress('fault_load_insn'))), syscalls: 1, pageFaults: 0, killed: true,
  }),
  exec: (): Program => ({
    args: 'fault exec', output: () => ['fault: jumping into the heap, which is not executable'],
    end: killedBy(faultAt(Cause.INSN_PAGE_FAULT, HEAP_BASE, HEAP_BASE)), syscalls: 2, pageFaults: 1, killed: true,
  }),
  illegal: (): Program => ({
    args: 'fault illegal', output: () => ['fault: writing ptbr from user mode'],
    end: killedBy(`${describeCause(Cause.ILLEGAL_INSN)} ${hex8(imageWord(symbol('fault_illegal_insn')))}, pc ${hex8(userAddress('fault_illegal_insn'))}`),
    syscalls: 1, pageFaults: 0, killed: true,
  }),
  shrink: (): Program => ({
    args: 'fault shrink', output: () => ['fault: storing to heap memory given back with sbrk'],
    end: killedBy(faultAt(Cause.STORE_PAGE_FAULT, HEAP_BASE + PAGE, userAddress('fault_shrink_insn'))), syscalls: 3, pageFaults: 2, killed: true,
  }),
  badptr: (): Program => ({
    args: 'fault badptr',
    output: () => [
      'fault: write from 0x00001000 returned -14', 'fault: write from 0x50000000 returned -14', 'fault: sbrk of 0x7fffffff returned -12',
      'fault: read into 0x00001000 returned -14', 'fault: read into 0x40000000 returned -14', // kernel text; its own image is not writable
    ],
    end: exited('fault'), syscalls: 11, pageFaults: 0,
  }),
};

// ---------------------------------------------------------------------------------------------
// Checking a run

const STATS = /^\[kernel\] stats: (\d+) context switches, (\d+) preemptions, (\d+) syscalls, (\d+) page faults, (\d+) frames peak, (\d+) frames in use$/;

interface Checked {
  asids: number[];
  stats: { switches: number; preemptions: number; syscalls: number; pageFaults: number; framesPeak: number; framesInUse: number };
  body: string[];
}

/**
 * Checks a complete run of `programs` (pids 1, 2, … in order): banner and plan, every line each
 * program and the kernel print for it — in order per program, each line exactly once, nothing
 * else — the summary, the counts, and the power-off line; returns the ASIDs and statistics.
 */
function checkRun(run: Boot, programs: Program[], { slice = DEFAULT_SLICE, vcpus = 1, memoryMiB = 64 } = {}): Checked {
  const { lines } = run;
  expect(lines[0]).toBe(`nanokernel: ${memoryMiB} MiB RAM, ${vcpus} vCPU${vcpus === 1 ? '' : 's'}, 4 devices`);
  expect(lines[1]).toBe(`[kernel] ${programs.length} program${programs.length === 1 ? '' : 's'}, time slice ${slice} instructions`);
  const body = lines.slice(2, -3);
  const used = body.map(() => false);
  const take = (line: string, after: number): number => {
    const index = body.findIndex((candidate, i) => i > after && !used[i] && candidate === line);
    expect(index, `expected after line ${after}: ${line}\n${lines.join('\n')}`).toBeGreaterThan(after);
    used[index] = true;
    return index;
  };
  const asids = programs.map((program, i) => {
    const pid = i + 1;
    const start = body.findIndex((line) => line.startsWith(`[kernel] started pid ${pid} asid `));
    const match = /^\[kernel\] started pid \d+ asid (\d+): (.*)$/.exec(body[start] ?? '');
    expect(match?.[2], `start of pid ${pid}`).toBe(program.args);
    used[start] = true;
    let at = start;
    for (const line of program.output(pid)) at = take(line, at);
    take(program.end(pid), at);
    return Number(match![1]);
  });
  expect(body.filter((_, i) => !used[i]), 'lines nobody accounts for').toEqual([]);

  // Live processes never share an ASID; ASIDs are 1..8 (one per process slot).
  const live = new Map<number, number>();
  for (const line of body) {
    const started = /^\[kernel\] started pid (\d+) asid (\d+)/.exec(line);
    const ended = /^\[kernel\] (?:killed )?pid (\d+) /.exec(line);
    if (started) {
      expect([...live.values()]).not.toContain(Number(started[2]));
      live.set(Number(started[1]), Number(started[2]));
    } else if (ended) {
      live.delete(Number(ended[1]));
    }
  }
  expect(live.size).toBe(0);
  for (const asid of asids) expect(asid).toSatisfy((a: number) => a >= 1 && a <= 8);

  const killed = programs.filter((p) => p.killed).length;
  expect(lines.at(-3)).toBe(`[kernel] all programs finished: ${programs.length} started, ${programs.length - killed} exited, ${killed} killed, 0 unexpected`);
  const counts = STATS.exec(lines.at(-2)!);
  expect(counts, lines.at(-2)).not.toBeNull();
  const [switches, preemptions, syscalls, pageFaults, framesPeak, framesInUse] = counts!.slice(1).map(Number) as [number, number, number, number, number, number];
  expect(syscalls).toBe(programs.reduce((sum, p) => sum + p.syscalls, 0));
  expect(pageFaults).toBe(programs.reduce((sum, p) => sum + p.pageFaults, 0));
  expect(framesInUse).toBe(0); // every frame of every process came back
  expect(lines.at(-1)).toBe(`[kernel] power off, exit code ${Exit.OK}`);
  expect(run.reason).toEqual({ kind: 'halted', exitCode: Exit.OK });
  return { asids, stats: { switches, preemptions, syscalls, pageFaults, framesPeak, framesInUse }, body };
}

// ---------------------------------------------------------------------------------------------

describe('nanokernel', () => {
  const defaults = (): Program[] => [sieve(100_000), crc(65536), walker('4M random 2', 4 * MiB, { kind: 'random' }, 2), ping(3), FAULTS.store()];

  it('boots with the default programs: exact results, preemption, the kill message, a clean power-off', () => {
    const run = boot('');
    const { stats, body } = checkRun(run, defaults());
    expect(body.slice(0, 5)).toEqual(defaults().map((p, i) => `[kernel] started pid ${i + 1} asid ${i + 1}: ${p.args}`));
    // sieve (pid 1) never yields, yet ping (pid 4) printed before sieve finished: preempted.
    expect(body.indexOf('sieve: 9592 primes up to 100000')).toBeGreaterThan(body.indexOf('ping 4: 1/3'));
    expect(stats.preemptions).toBeGreaterThan(0);
    expect(run.vcpus[0]!.stats.interrupts).toBe(stats.preemptions);
    expect(stats.switches).toBeGreaterThan(0);
  });

  it('runs the documented default list when no program is named, and the same boot twice identically', () => {
    const implicit = boot('');
    const explicit = boot(DEFAULT_PROGRAMS);
    const again = boot('');
    expect(explicit.lines).toEqual(implicit.lines);
    expect(again.lines).toEqual(implicit.lines);
    expect(again.instructions).toBe(implicit.instructions);
    expect(again.vcpus[0]!.stats.interrupts).toBe(implicit.vcpus[0]!.stats.interrupts);
  });

  it('runs chosen programs: every walker pattern, yield interleaving, every fault kind, a queue beyond 8 slots', () => {
    const programs = [
      ping(2), ping(2), sieve(30_000), crc(100_000),
      walker('2M stride:4160 3', 2 * MiB, { kind: 'stride', stride: 4160 }, 3),
      walker('1M hot:64K:90 2', MiB, { kind: 'hot', hotBytes: 64 * 1024, percent: 90 }, 2),
      walker('1M seq', MiB, { kind: 'seq' }, 1),
      FAULTS.load(), FAULTS.exec(), FAULTS.illegal(), FAULTS.shrink(), FAULTS.badptr(),
      walker('512K stride 64 2', 512 * 1024, { kind: 'stride', stride: 64 }, 2),
    ];
    const run = boot(`slice=20000 ${programs.map((p) => p.args).join(' ')}`);
    const { asids, body } = checkRun(run, programs, { slice: 20000 });
    // Round-robin with yield: the two pings alternate.
    const order = ['ping 1: 1/2', 'ping 2: 1/2', 'ping 1: 2/2', 'ping 2: 2/2'].map((line) => body.indexOf(line));
    expect(order).toEqual([...order].sort((a, b) => a - b));
    // Programs 9.. waited for a free slot and reused the ASID of a process that had ended.
    expect(asids.slice(0, 8)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    const firstEnd = body.findIndex((line) => /^\[kernel\] (killed )?pid /.test(line));
    expect(body.findIndex((line) => line.startsWith('[kernel] started pid 9 '))).toBeGreaterThan(firstEnd);
  });

  it('gives each process its own ASID without flushing on a switch, and flushes an ASID before reusing it', () => {
    const userAsids = new Set<number>();
    const sfences: { address: number | null; asid: number | null }[] = [];
    let userInstructionsWithoutPaging = 0;
    const sfence = BY_MNEMONIC.get('sfence')!.opcode;
    const tracer: TraceHook = (vcpu, _pc, word) => {
      if (vcpu.mode === Mode.USER) {
        if ((vcpu.ptbr & Ptbr.MODE_SV32) === 0) userInstructionsWithoutPaging++;
        userAsids.add((vcpu.ptbr >>> Ptbr.ASID_SHIFT) & Ptbr.ASID_MASK);
      } else if ((word & 0xff) === sfence) {
        const rs1 = (word >>> 12) & 0xf;
        const rs2 = (word >>> 16) & 0xf;
        sfences.push({ address: rs1 === 0 ? null : vcpu.regs[rs1]! >>> 0, asid: rs2 === 0 ? null : vcpu.regs[rs2]! & Ptbr.ASID_MASK });
      }
    };
    const programs = [...Array.from({ length: 10 }, () => ping(1)), FAULTS.shrink()];
    const { asids } = checkRun(boot(programs.map((p) => p.args).join(' '), { tracer }), programs);
    expect(userInstructionsWithoutPaging).toBe(0);
    expect([...userAsids].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // Only targeted flushes: one per reused ASID (pids 9-11), one per page sbrk gave back.
    const shrinkAsid = asids[10]!;
    expect(sfences).toEqual([
      { address: null, asid: asids[8] },
      { address: null, asid: asids[9] },
      { address: null, asid: asids[10] },
      { address: HEAP_BASE, asid: shrinkAsid },
      { address: HEAP_BASE + PAGE, asid: shrinkAsid },
    ]);
  });

  it('walks hundreds of MiB with demand paging and returns every frame', () => {
    const size = 300 * MiB;
    const program = walker('300M stride:4096', size, { kind: 'stride', stride: 4096 }, 1);
    const { stats } = checkRun(boot(program.args, { memoryBytes: 384 * MiB }), [program], { memoryMiB: 384 });
    expect(stats.pageFaults).toBe(size / PAGE);
    expect(stats.framesPeak).toBeGreaterThan(size / PAGE);
  });

  it('kills a process that runs out of memory and reports the run as failed', () => {
    const run = boot('walker 16M sieve 100', { memoryBytes: 8 * MiB });
    expect(run.lines).toContain('sieve: 25 primes up to 100');
    expect(run.lines.filter((line) => line.startsWith('[kernel] killed'))).toEqual([
      expect.stringMatching(/^\[kernel\] killed pid 1 \(walker\): out of memory at 0x4[0-9a-f]{7}, pc 0x4000[0-9a-f]{4}$/),
    ]);
    expect(run.lines.at(-3)).toBe('[kernel] all programs finished: 2 started, 1 exited, 1 killed, 1 unexpected');
    expect(run.lines.at(-2)).toMatch(/ 0 frames in use$/);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: Exit.PROGRAM_FAILED });
  });

  it('reports a program that exits non-zero (a bad argument) as a failed run', () => {
    const run = boot('walker 1M zigzag sieve 10');
    expect(run.lines).toContain("walker: bad argument 'zigzag'");
    expect(run.lines).toContain('[kernel] pid 1 (walker) exited with code 1');
    expect(run.lines).toContain('sieve: 4 primes up to 10');
    expect(run.reason).toEqual({ kind: 'halted', exitCode: Exit.PROGRAM_FAILED });
  });

  it('refuses bad boot arguments before starting anything', () => {
    // (A word after a program name is that program's argument; before any program it must be
    // an option or a program name.)
    const unknown = boot('bogus sieve 10');
    expect(unknown.lines.slice(1)).toEqual(["[kernel] boot args: unknown program 'bogus' (programs: sieve crc32 walker ping fault record wc heap reader idle kvcache meminfo pmkv)"]);
    // The list is the program table's names (three words per entry, a zero name ends it).
    const tableNames: string[] = [];
    for (let entry = symbol('prog_table'); imageWord(entry) !== 0; entry += 12) {
      let name = '';
      for (let at = imageWord(entry); imageByte(at) !== 0; at++) name += String.fromCharCode(imageByte(at));
      tableNames.push(name);
    }
    expect(unknown.lines[1]).toContain(`(programs: ${tableNames.join(' ')})`);
    expect(unknown.reason).toEqual({ kind: 'halted', exitCode: Exit.BAD_BOOTARGS });
    const slice = boot('slice=999 sieve 10');
    expect(slice.lines.slice(1)).toEqual(["[kernel] boot args: bad option 'slice=999' (slice=N needs N >= 1000)"]);
    expect(slice.reason).toEqual({ kind: 'halted', exitCode: Exit.BAD_BOOTARGS });
  });

  it('panics loudly on a trap in supervisor mode (a corrupted kernel)', () => {
    const broken = structuredClone(image);
    const at = symbol('sys_getpid');
    const segment = broken.segments.find((s) => at >= s.gpa && at < s.gpa + s.data.length)!;
    segment.data.fill(0, at - segment.gpa, at - segment.gpa + 4); // word 0 is an illegal instruction
    const run = boot('ping 1', { image: broken });
    expect(run.lines.at(-1)).toBe(
      `[kernel] PANIC: unexpected trap in supervisor mode: ${describeCause(Cause.ILLEGAL_INSN)} (cause ${hex8(Cause.ILLEGAL_INSN)}), pc ${hex8(at)}, tval 0x00000000`,
    );
    expect(run.reason).toEqual({ kind: 'halted', exitCode: Exit.PANIC });
  });

  it('parks secondary vCPUs and runs the same on one vCPU or three', () => {
    const programs = [sieve(1000), ping(2)];
    const args = programs.map((p) => p.args).join(' ');
    const one = boot(args);
    const three = boot(args, { vcpus: 3 });
    checkRun(three, programs, { vcpus: 3 });
    expect(three.lines.slice(1)).toEqual(one.lines.slice(1));
    // The same schedule; vCPU 0 only spends a few more instructions on "3 vCPUs" in the banner.
    expect(three.vcpus[0]!.stats.interrupts).toBe(one.vcpus[0]!.stats.interrupts);
    expect(Math.abs(three.vcpus[0]!.instret - one.vcpus[0]!.instret)).toBeLessThan(50);
    for (const vcpu of three.vcpus.slice(1)) expect(vcpu.instret).toBeLessThan(10);
  });

  it('runs as a command through tools/run', async () => {
    const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', 'tools/run.ts', 'examples/nanokernel/kernel.s', '--', 'sieve', '1000', 'walker', '8M', 'random', '2'],
        { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let text = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      child.on('error', reject);
      child.on('close', (exitCode) => resolve({ code: exitCode, stdout: text }));
    });
    expect(code).toBe(Exit.OK);
    const lines = stdout.split('\n');
    lines.pop();
    checkRun({ lines, reason: { kind: 'halted', exitCode: code! }, instructions: 0, vcpus: [] }, [
      sieve(1000),
      walker('8M random 2', 8 * MiB, { kind: 'random' }, 2),
    ]);
  });
});
