/**
 * Console input in the nanokernel: the `read` system call and the `wc` program, which reads the
 * console until the end of input (SPEC.md §13.3 STATUS bit 2) and exits normally. Input given up
 * front and closed (as `tools/run --input` does), input from a stream that arrives while the
 * kernel waits (alone: in wfi; with other processes: they run meanwhile), two readers sharing the
 * input, a host that never closes the input (idle), and tools/run with --input, a pipe on stdin
 * and forks. Every count is recomputed here. docs/nanokernel.md.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { assembleFile } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, runWithResets, runWithResetsAsync, type GuestRun, type StandardDevices } from '../../devices/index.ts';
import { createHypervisor, type Hypervisor, type Vm } from '../../kernel/index.ts';
import { runTool } from '../tools/child.ts';

const REPO = join(import.meta.dirname, '..', '..');
const KERNEL = join(REPO, 'examples/nanokernel/kernel.s');
const { image } = assembleFile(KERNEL);
/** wc reads into a buffer of this many bytes (user.s). */
const WC_BUFFER = 256;
const STATS = /^\[kernel\] stats: (\d+) context switches, (\d+) preemptions, (\d+) syscalls, /m;

/** What wc prints for these bytes: newline bytes, runs of bytes above 0x20, bytes. */
function wcLine(bytes: Uint8Array): string {
  let lines = 0;
  let words = 0;
  let inWord = false;
  for (const byte of bytes) {
    if (byte === 0x0a) lines++;
    if (byte <= 0x20) inWord = false;
    else if (!inWord) {
      inWord = true;
      words++;
    }
  }
  const count = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`;
  return `wc: ${count(lines, 'line')}, ${count(words, 'word')}, ${count(bytes.length, 'byte')}`;
}

const encode = (text: string): Uint8Array => new TextEncoder().encode(text);

interface Machine {
  hv: Hypervisor;
  vm: Vm;
  devices: StandardDevices;
  output: CaptureSink;
}

function machine(bootArgs: string, input: { text?: string | Uint8Array; stream?: PassThrough }): Machine {
  const hv = createHypervisor({ hostMemoryBytes: 32 << 20 });
  const vm = hv.createVm({ memoryBytes: 16 << 20, name: 'nanokernel' });
  vm.loadImage(image);
  const output = new CaptureSink();
  const options: Parameters<typeof attachStandardDevices>[1] = { output, bootArgs };
  if (input.text !== undefined) options.input = input.text;
  if (input.stream) {
    options.interactiveInput = input.stream;
    options.hypervisor = hv;
  }
  return { hv, vm, devices: attachStandardDevices(vm, options), output };
}

/** Input given up front, then closed: the guest reads it, then the end of input. */
function runClosed(bootArgs: string, input: string | Uint8Array): { run: GuestRun; text: string } {
  const m = machine(bootArgs, { text: input });
  m.devices.console.closeInput();
  const run = runWithResets(m.hv, m.vm, m.devices, { maxInstructions: 100_000_000 });
  return { run, text: m.output.text() };
}

/**
 * Runs with input from a stream, written one chunk each time vCPU 0 waits in wfi (so every chunk
 * arrives while the kernel waits, however slow the machine), then the end of the stream.
 */
async function runStreamed(bootArgs: string, chunks: string[]): Promise<{ run: GuestRun; text: string; waits: number }> {
  const stream = new PassThrough();
  const m = machine(bootArgs, { stream });
  const pending = [...chunks];
  const vcpu = m.vm.vcpus[0]!;
  let fedAtWait = -1; // the wait (by count) that was last given a chunk: one chunk per wait
  const feeder = setInterval(() => {
    if (!vcpu.waiting || vcpu.stats.waits === fedAtWait) return;
    fedAtWait = vcpu.stats.waits;
    const next = pending.shift();
    if (next === undefined) stream.end();
    else stream.write(next);
  }, 1);
  try {
    const run = await runWithResetsAsync(m.hv, m.vm, m.devices, { maxInstructions: 100_000_000 });
    m.devices.console.stop();
    return { run, text: m.output.text(), waits: m.vm.vcpus[0]!.stats.waits };
  } finally {
    clearInterval(feeder);
  }
}

const syscallsOf = (text: string): number => Number(STATS.exec(text)?.[3]);

describe('nanokernel: read and wc', () => {
  it.each([
    ['empty input', ''],
    ['two lines', 'one two\nthree\n'],
    ['no newline at the end', 'no newline at the end'],
    ['one of each', 'x\n'],
    ['one byte', 'x'],
    ['blanks and control bytes', '  lots   of\t\tblanks \r\n\n\x01\x1f word'],
    ['longer than the buffer', 'the quick brown fox jumps over the lazy dog\n'.repeat(40)],
  ])('counts input given up front (%s), and reads its end as 0', (_name, input) => {
    const { run, text } = runClosed('wc', input);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    const lines = text.split('\n');
    expect(lines).toContain(wcLine(encode(input)));
    expect(lines).toContain('[kernel] pid 1 (wc) exited with code 0');
    expect(lines).toContain('[kernel] all programs finished: 1 started, 1 exited, 0 killed, 0 unexpected');
    // Input up front never waits: one read per buffer, one for the end (0), write, exit.
    const bytes = encode(input).length;
    expect(syscallsOf(text)).toBe(Math.ceil(bytes / WC_BUFFER) + 1 + 2);
  });

  it('counts binary input byte for byte (high bytes are word bytes)', () => {
    const input = new Uint8Array(randomBytes(5000));
    const { run, text } = runClosed('wc', input);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(text.split('\n')).toContain(wcLine(input));
  });

  it('runs next to other programs; a second wc finds the input already read', () => {
    const { run, text } = runClosed('wc sieve 1000 ping 2 wc', 'a b c\n');
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    const lines = text.split('\n');
    expect(lines).toContain('sieve: 168 primes up to 1000');
    expect(lines).toContain('ping 3: 2/2');
    const counts = lines.filter((line) => line.startsWith('wc: '));
    expect(counts.sort()).toEqual([wcLine(encode('')), wcLine(encode('a b c\n'))].sort());
  });

  it('refuses an argument, and bad buffers come back as EFAULT (fault badptr)', () => {
    const bad = runClosed('wc now', '');
    expect(bad.text.split('\n')).toContain("wc: bad argument 'now'");
    expect(bad.run.reason).toEqual({ kind: 'halted', exitCode: 2 });
    const badptr = runClosed('fault badptr', 'unread');
    expect(badptr.text.split('\n')).toEqual(expect.arrayContaining([
      'fault: read into 0x00001000 returned -14',
      'fault: read into 0x40000000 returned -14',
    ]));
    expect(badptr.run.reason).toEqual({ kind: 'halted', exitCode: 0 });
  });

  it('waits in wfi while it is the only process, for each chunk of a stream and for its end', async () => {
    const chunks = ['hello ', 'world\n', 'and more\n'];
    const { run, text, waits } = await runStreamed('wc', chunks);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(text.split('\n')).toContain(wcLine(encode(chunks.join(''))));
    expect(waits).toBe(chunks.length + 1); // one wait per chunk, one for the end
  });

  it('lets other processes run while it waits, then waits in wfi once they are done', async () => {
    const chunks = ['a\n', 'b c\n'];
    const { run, text, waits } = await runStreamed('wc ping 3 sieve 20000', chunks);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    const lines = text.split('\n');
    expect(lines).toContain(wcLine(encode(chunks.join(''))));
    expect(lines).toContain('ping 2: 3/3');
    expect(lines).toContain('sieve: 2262 primes up to 20000');
    expect(lines.indexOf('[kernel] pid 3 (sieve) exited with code 0')).toBeLessThan(lines.indexOf('[kernel] pid 1 (wc) exited with code 0'));
    expect(waits).toBeGreaterThan(0);
  });

  it('two readers share the input: every byte is read once, and both see the end', async () => {
    const chunks = ['one\n', 'two\n', 'three\n', 'four\n'];
    const { run, text } = await runStreamed('wc wc', chunks);
    expect(run.reason).toEqual({ kind: 'halted', exitCode: 0 });
    const counts = text.split('\n').filter((line) => line.startsWith('wc: ')).map((line) => /(\d+) lines?, \d+ words?, (\d+) bytes?$/.exec(line)!);
    expect(counts).toHaveLength(2);
    expect(counts.reduce((sum, m) => sum + Number(m[1]), 0)).toBe(4);
    expect(counts.reduce((sum, m) => sum + Number(m[2]), 0)).toBe(chunks.join('').length);
  });

  it('a host that never closes the input leaves the reader waiting: idle', () => {
    const m = machine('wc', { text: 'abc' });
    const run = runWithResets(m.hv, m.vm, m.devices, { maxInstructions: 100_000_000 });
    expect(run.reason.kind).toBe('idle');
    expect(m.output.text()).not.toContain('wc:');
  });
});


describe('nanokernel wc through tools/run', () => {
  it('--input, then the end of input', async () => {
    const outcome = await runTool(['examples/nanokernel/kernel.s', '--input', 'one two\nthree\n', '--', 'wc']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout.split('\n')).toContain('wc: 2 lines, 3 words, 14 bytes');
  });

  it('standard input from a pipe, to its end; none at all (closed) is an empty input', async () => {
    const piped = await runTool(['examples/nanokernel/kernel.s', '--', 'wc'], 'a pipe\nof text\n');
    expect(piped.code).toBe(0);
    expect(piped.stdout.split('\n')).toContain('wc: 2 lines, 4 words, 15 bytes');
    const closed = await runTool(['examples/nanokernel/kernel.s', '--', 'wc']);
    expect(closed.code).toBe(0);
    expect(closed.stdout.split('\n')).toContain('wc: 0 lines, 0 words, 0 bytes');
  });

  it('fork children read their own --input ({fork}) to its end', async () => {
    const outcome = await runTool(['examples/nanokernel/kernel.s', '--input', 'fork {fork}\n', '--fork-at', '2000', '--forks', '2', '--', 'wc']);
    expect(outcome.code).toBe(0);
    const sections = outcome.stdout.split(/^--- fork \d ---$/m);
    expect(sections).toHaveLength(3);
    for (const section of sections) expect(section.split('\n')).toContain('wc: 1 line, 2 words, 7 bytes');
  });
});
