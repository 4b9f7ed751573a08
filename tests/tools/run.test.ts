/**
 * tools/run as users run it (a child process): output, exit codes for every way a run can end,
 * exactly one `error:` line and no stack trace, --stats, --trace, --max-insns, --input, boot
 * arguments. Also the shared CLI helpers in tools/cli.ts.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assemble } from '../../guest-isa/assembler.ts';
import { encodeImage } from '../../guest-isa/image.ts';
import {
  formatBytes, formatTable, parseArguments, parseInteger, parseSize, ProgressBar, UsageError,
} from '../../tools/cli.ts';
import { runTool, type ChildOutcome as Outcome } from './child.ts';

const work = mkdtempSync(join(tmpdir(), 'bv-run-test-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));


/** Writes a guest program to the work directory and returns its path. */
function guest(name: string, source: string): string {
  const path = join(work, name);
  writeFileSync(path, source);
  return path;
}

/** The lines of stderr that report an error; there must be exactly one, and no stack frames. */
function expectOneErrorLine(outcome: Outcome): string {
  const errorLines = outcome.stderr.split('\n').filter((line) => line.startsWith('error:'));
  expect(errorLines).toHaveLength(1);
  expect(outcome.stderr).not.toMatch(/^\s+at /m);
  return errorLines[0]!;
}

const EXIT = (code: string | number): string => `
        li      a1, ${code}
        li      a0, 1                   # Hcall.EXIT
        hcall
`;

const HELLO = guest('hello.s', `
_start: li      a0, 2                   # Hcall.CONSOLE_WRITE
        la      a1, message
        li      a2, 6
        hcall
${EXIT(42)}
        .data
message: .ascii "howdy\\n"
`);

const SPIN = guest('spin.s', `
_start: addi    t0, t0, 1
loop:   j       loop
`);

/** Echoes console input (polling after each wfi), upper-cased, until a newline; exits with the count. */
const ECHO = guest('echo.s', `
_start: li      s0, 0xf0001000          # the console is the first device (docs/run.md)
        li      t0, 1
        sw      t0, 12(s0)              # CONTROL: interrupt on input
        li      t0, 0x200
        csrs    ie, t0                  # ie.EXTERNAL (SIE = 0: wfi just returns)
wait:   wfi
1:      lw      t1, 4(s0)
        bltz    t1, wait
        addi    s1, s1, 1
        li      t2, 10
        beq     t1, t2, done
        addi    t1, t1, -32
        sw      t1, 0(s0)
        j       1b
done:   mv      a1, s1
        li      a0, 1
        hcall
`);

describe('tools/run: guests that power off', () => {
  it('assembles a .s file, shows its console output and exits with its exit code', async () => {
    const outcome = await runTool([HELLO]);
    expect(outcome).toEqual({ code: 42, stdout: 'howdy\n', stderr: '' });
  });

  it('loads a .bvx image', async () => {
    const image = join(work, 'hello.bvx');
    writeFileSync(image, encodeImage(assemble(`_start: ${EXIT(7)}`).image));
    expect(await runTool([image])).toEqual({ code: 7, stdout: '', stderr: '' });
  });

  it('exits with the exit code & 0xff', async () => {
    expect((await runTool([guest('big.s', `_start: ${EXIT('0x1ff')}`)])).code).toBe(0xff);
    expect((await runTool([guest('neg.s', `_start: ${EXIT(-2)}`)])).code).toBe(0xfe);
  });

  it('passes everything after -- to the guest as boot arguments', async () => {
    // Prints the boot argument window (the fourth device) byte by byte up to the NUL.
    const path = guest('args.s', `
_start: li      s0, 0xf0001000
        li      s1, 0xf0004000
        li      a2, 0
1:      srli    t0, a2, 2
        slli    t0, t0, 2
        add     t0, t0, s1
        lw      t1, 0(t0)
        andi    t2, a2, 3
        slli    t2, t2, 3
        srl     t1, t1, t2
        andi    t1, t1, 0xff
        beqz    t1, 2f
        sw      t1, 0(s0)
        addi    a2, a2, 1
        j       1b
2:      li      s1, 0xf0000000
        lw      a1, 76(s1)              # info of entry 3 (boot arguments): the length
        li      a0, 1
        hcall
`);
    const outcome = await runTool([path, '--', 'console=bv', 'hello world', '--stats']);
    expect(outcome.stdout).toBe('console=bv hello world --stats');
    expect(outcome.code).toBe(30);
  });

  it('--input feeds the console; without it the console reads stdin', async () => {
    expect(await runTool([ECHO, '--input', 'abc\nignored'])).toEqual({ code: 4, stdout: 'ABC', stderr: '' });
    expect(await runTool([ECHO], 'hello\n')).toEqual({ code: 6, stdout: 'HELLO', stderr: '' });
  });

  it('the guest sees the end of input after --input, and when stdin closes', async () => {
    // Echoes until STATUS bit 2 (end of input), woken by CONTROL bit 1; exits with the count.
    const cat = guest('cat.s', `
_start: li      s0, 0xf0001000
        li      t0, 3
        sw      t0, 12(s0)              # CONTROL: interrupt on input and on its end
        li      t0, 0x200
        csrs    ie, t0
wait:   wfi
1:      lw      t1, 8(s0)               # STATUS
        andi    t2, t1, 1
        bnez    t2, 2f
        andi    t2, t1, 4
        bnez    t2, done
        j       wait
2:      lw      t1, 4(s0)
        sw      t1, 0(s0)
        addi    s1, s1, 1
        j       1b
done:   mv      a1, s1
        li      a0, 1
        hcall
`);
    expect(await runTool([cat, '--input', 'all of it\n'])).toEqual({ code: 10, stdout: 'all of it\n', stderr: '' });
    expect(await runTool([cat, '--input', ''])).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(await runTool([cat], 'piped, no newline')).toEqual({ code: 17, stdout: 'piped, no newline', stderr: '' });
    expect(await runTool([cat])).toEqual({ code: 0, stdout: '', stderr: '' }); // stdin closed from the start
  });

  it('--mem and --vcpus shape the machine the guest sees in its device table', async () => {
    // Exits with RAM in MiB + 16 × the vCPU count (both from the device table header).
    const path = guest('shape.s', `
_start: bnez    a0, 2f                  # only vCPU 0 reports
        lw      t0, 8(a1)               # RAM bytes (a1 = device table at reset)
        srli    t0, t0, 20
        lw      t1, 12(a1)              # vCPU count
        slli    t1, t1, 4
        add     a1, t0, t1
        li      a0, 1
        hcall
2:      j       2b
`);
    expect((await runTool([path, '--mem', '3M', '--vcpus', '4'])).code).toBe(3 + 64);
    expect((await runTool([path, '--mem=8192K'])).code).toBe(8 + 16);
  });

  it('--help prints the usage and exits 0', async () => {
    const outcome = await runTool(['--help']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toMatch(/^usage: run /);
    expect(outcome.stdout).toMatch(/Exit codes/);
  });
});

describe('tools/run: other endings, one error line each', () => {
  it('guest error (an unhandled trap) → 3', async () => {
    const outcome = await runTool([guest('trap.s', '_start: nop\n ebreak\n')]);
    expect(outcome.code).toBe(3);
    expect(expectOneErrorLine(outcome)).toBe(
      'error: guest error: unhandled trap on vCPU 0: breakpoint at pc 0x1004, tval 0x0 (no trap vector installed)',
    );
  });

  it('instruction budget → 4', async () => {
    const outcome = await runTool([SPIN, '--max-insns', '12_345']);
    expect(outcome.code).toBe(4);
    expect(expectOneErrorLine(outcome)).toBe('error: stopped after 12345 instructions (--max-insns)');
  });

  it('host error (host memory exhausted) → 5', async () => {
    const path = guest('hog.s', `
_start: li      t0, 0x100000
        li      t1, 0x3000000
1:      sw      t0, 0(t0)
        li      t2, 4096
        add     t0, t0, t2
        blt     t0, t1, 1b
${EXIT(0)}
`);
    const outcome = await runTool([path, '--mem', '64M', '--host-mem', '4M']);
    expect(outcome.code).toBe(5);
    // The line says how to fix it: the pool's size and a larger --host-mem.
    expect(expectOneErrorLine(outcome)).toMatch(
      /^error: host error: out of host memory: .*; the host memory pool is 4 MiB: make it larger with --host-mem \(for example --host-mem 8M\)$/,
    );
  });

  it('idle forever → 6', async () => {
    const outcome = await runTool([guest('idle.s', '_start: wfi\n')]);
    expect(outcome.code).toBe(6);
    expect(expectOneErrorLine(outcome)).toMatch(/^error: the guest is idle forever/);
    // Waiting for console input that the stream can no longer deliver is idle too.
    const echo = await runTool([ECHO], 'abc');
    expect(echo.code).toBe(6);
    expect(echo.stdout).toBe('ABC');
  });

  it.each([
    ['no guest', ['--mem', '64M'], /^error: missing the guest to run/],
    ['unknown option', [HELLO, '--bogus'], /^error: unknown option '--bogus'$/],
    ['missing value', [HELLO, '--mem'], /^error: --mem needs a value$/],
    ['size not a multiple of 4 KiB', [HELLO, '--mem', '1000'], /^error: --mem must be a multiple of 4 KiB/],
    ['not a size', [HELLO, '--mem', 'lots'], /^error: --mem: 'lots' is not a size/],
    ['host memory not a multiple of 4 MiB', [HELLO, '--host-mem', '6M'], /^error: --host-mem must be a multiple of 4 MiB/],
    ['no vCPUs', [HELLO, '--vcpus', '0'], /^error: --vcpus must be between 1 and 32, got 0$/],
    ['negative budget', [HELLO, '--max-insns', '-5'], /^error: --max-insns: '-5' is not a whole number$/],
    ['two guests', [HELLO, 'extra'], /^error: unexpected argument 'extra'/],
    ['boot arguments too long', [HELLO, '--', 'x'.repeat(5000)], /^error: boot arguments are 5000 bytes long; at most 4095 bytes fit$/],
  ])('bad command line (%s) → 2 with a usage hint', async (_case, args, message) => {
    const outcome = await runTool(args);
    expect(outcome.code).toBe(2);
    expect(expectOneErrorLine(outcome)).toMatch(message);
    expect(outcome.stderr).toMatch(/^usage: run /m);
  });

  it('assembly error → 1, with file:line:col, the line and a caret', async () => {
    const path = guest('bad.s', '_start: nop\n        addi a0, a0, 99999\n');
    const outcome = await runTool([path]);
    expect(outcome.code).toBe(1);
    expectOneErrorLine(outcome);
    expect(outcome.stderr).toBe(
      `error: ${path}:2:22: immediate 99999 is out of range for 'addi' (-32768..32767)\n` +
        '            addi a0, a0, 99999\n' +
        '                         ^\n',
    );
  });

  it('unreadable or malformed image, or one that does not fit → 1', async () => {
    const missing = await runTool([join(work, 'missing.bvx')]);
    expect(missing.code).toBe(1);
    expect(expectOneErrorLine(missing)).toMatch(/^error: cannot read image '.*missing\.bvx': ENOENT/);

    const garbage = join(work, 'garbage.bvx');
    writeFileSync(garbage, 'not an image at all, just text');
    const malformed = await runTool([garbage]);
    expect(malformed.code).toBe(1);
    expect(expectOneErrorLine(malformed)).toMatch(/^error: .*garbage\.bvx: not a \.bvx image/);

    const tooSmall = await runTool([HELLO, '--mem', '4K']);
    expect(tooSmall.code).toBe(1);
    expect(expectOneErrorLine(tooSmall)).toMatch(/does not fit in 4 KiB of guest RAM/);
  });
});

describe('tools/run: checkpoint, snapshot and fork points past the end of the run', () => {
  /** Prints "ok" and powers off with 0 after 8 instructions. */
  const OK = guest('ok.s', `
_start: li      t0, 0xf0001000
        li      t1, 0x6f
        sw      t1, 0(t0)
        li      t1, 0x6b
        sw      t1, 0(t0)
${EXIT(0)}
`);
  it('warns once per point the guest never reached, writes nothing, and exits 7', async () => {
    const checkpoint = join(work, 'never.ckpt');
    const snapshot = join(work, 'never.snap');
    const outcome = await runTool([OK, '--checkpoint-at', '5000', checkpoint, '--snapshot-at', '6000', snapshot, '--fork-at', '7000', '--forks', '2']);
    expect(outcome.code).toBe(7);
    expect(outcome.stdout).toBe('ok');
    expect(outcome.stderr.split('\n')).toEqual([
      `warning: --checkpoint-at 5000: the guest stopped after 8 instructions, before that point; no checkpoint was written to ${checkpoint}`,
      `warning: --snapshot-at 6000: the guest stopped after 8 instructions, before that point; no snapshot was written to ${snapshot}`,
      'warning: --fork-at 7000: the guest stopped after 8 instructions, before that point; no children were forked',
      '',
    ]);
    expect(existsSync(checkpoint) || existsSync(snapshot)).toBe(false);
  });

  it('a guest that failed keeps its own exit code; a point it did reach is not reported', async () => {
    const path = guest('exit3.s', `_start: nop\n nop\n nop\n ${EXIT(3)}`);
    const failed = await runTool([path, '--checkpoint-at', '1000', join(work, 'x.ckpt')]);
    expect(failed.code).toBe(3);
    expect(failed.stderr).toMatch(/^warning: --checkpoint-at 1000: /);
    const reached = join(work, 'reached.ckpt');
    const ok = await runTool([OK, '--checkpoint-at', '2', reached, '--fork-at', '100', '--forks', '1']);
    expect(ok.code).toBe(7);
    expect(ok.stderr).toMatch(new RegExp(`^checkpoint at 2: ${reached.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `, 'm'));
    expect(ok.stderr.split('\n').filter((line) => line.startsWith('warning:'))).toEqual([
      'warning: --fork-at 100: the guest stopped after 8 instructions, before that point; no children were forked',
    ]);
    expect(existsSync(reached)).toBe(true);
  });

  it('a point past --max-insns is a usage error', async () => {
    const outcome = await runTool([SPIN, '--max-insns', '1000', '--fork-at', '5000', '--forks', '1']);
    expect(outcome.code).toBe(2);
    expect(expectOneErrorLine(outcome)).toBe('error: --fork-at 5000 is past --max-insns 1000: the run stops first');
  });
});

describe('tools/run: --stats and --trace', () => {
  it('--stats prints the run, per-vCPU, exit, MMIO and memory figures to stderr', async () => {
    const outcome = await runTool([SPIN, '--max-insns', '5000', '--stats', '--vcpus', '2']);
    expect(outcome.code).toBe(4);
    const stats = outcome.stderr;
    expect(stats).toMatch(/^ {2}instructions +5,000$/m);
    expect(stats).toMatch(/^ {2}speed +[\d.]+ MIPS$/m);
    expect(stats).toMatch(/^ {2}wall time +[\d.]+ s$/m);
    expect(stats).toMatch(/^ {2}vcpu +instret +tlb hits +tlb misses +tlb fills +tlb drops +tlb flushes +page walks +traps +interrupts +hypercalls +waits$/m);
    const vcpuRows = stats.split('\n').filter((line) => /^ {2} +[01] /.test(line));
    expect(vcpuRows).toHaveLength(2);
    const instret = vcpuRows.map((row) => Number(row.trim().split(/\s+/)[1]!.replaceAll(',', '')));
    expect(instret[0]! + instret[1]!).toBe(5000);
    for (const field of ['mmio', 'hypercall', 'trap to guest', 'absent: untouched', 'device-table', 'console', 'timer', 'power', 'bootargs']) {
      expect(stats).toMatch(new RegExp(`^ {2}${field} +\\d+$`, 'm'));
    }
    expect(stats).toMatch(/^ {2}decoded pages +1 \(1 in use, 0 dropped\)$/m);
    expect(stats).toMatch(/^ {2}host frames in use +1 of 20,480 \(4 KiB\)$/m);
    expect(stats).toMatch(/^ {2}guest pages present +1 of 16,384 \(4 KiB\)$/m);
    expect(stats).toMatch(/^ {2}process RSS +[\d.]+ MiB$/m);
    expectOneErrorLine(outcome);
  });

  it('--trace prints each executed instruction with vCPU, mode, pc, word and disassembly', async () => {
    const path = guest('straight.s', `
_start: addi    t0, t0, 1
        beq     t0, zero, _start        # not taken
        csrr    a1, hartid
        mv      a1, a1
        li      a0, 1
        hcall
`);
    const outcome = await runTool([path, '--trace']);
    expect(outcome.code).toBe(0);
    expect(outcome.stderr.split('\n')).toEqual([
      'warning: --trace prints every instruction; the guest runs far slower',
      '[vcpu0 S] 0x00001000  00018812  addi t0, t0, 1',
      '[vcpu0 S] 0x00001004  ffff0825  beq t0, zero, 0x1000 # _start',
      '[vcpu0 S] 0x00001008  00140539  csrrs a1, hartid, zero',
      '[vcpu0 S] 0x0000100c  00005512  addi a1, a1, 0',
      '[vcpu0 S] 0x00001010  00010412  addi a0, zero, 1',
      '[vcpu0 S] 0x00001014  00000033  hcall',
      '',
    ]);
  });
});

describe('tools/cli helpers', () => {
  it('parseSize reads bytes and binary units, and names the option and the rule in errors', () => {
    expect(parseSize('4096', '--mem')).toBe(4096);
    expect(parseSize('64K', '--mem')).toBe(64 * 1024);
    expect(parseSize('64M', '--mem')).toBe(64 * 1024 ** 2);
    expect(parseSize('1G', '--mem')).toBe(1024 ** 3);
    expect(parseSize('2MiB', '--mem')).toBe(2 * 1024 ** 2);
    expect(parseSize('1.5m', '--mem')).toBe(1.5 * 1024 ** 2);
    expect(() => parseSize('12X', '--mem')).toThrow(UsageError);
    expect(() => parseSize('1.0001K', '--mem')).toThrow(/not a whole number of bytes/);
    expect(() => parseSize('6000', '--mem', { multipleOf: 4096 })).toThrow('--mem must be a multiple of 4 KiB, got 6000 (6000 bytes)');
    expect(() => parseSize('8G', '--mem', { max: 4 * 1024 ** 3 })).toThrow('--mem must be at most 4 GiB, got 8G');
  });

  it('parseInteger accepts digits with _ separators inside the range', () => {
    expect(parseInteger('1_000_000', '--n')).toBe(1_000_000);
    expect(() => parseInteger('1e6', '--n')).toThrow("--n: '1e6' is not a whole number");
    expect(() => parseInteger('33', '--vcpus', 1, 32)).toThrow('--vcpus must be between 1 and 32, got 33');
  });

  it('parseArguments splits flags, values (both spellings), positionals and the rest after --', () => {
    const args = parseArguments(['a.s', '--stats', '--mem', '4M', '--vcpus=2', '--', '--not-an-option', 'x'], {
      flags: ['--stats', '--trace'],
      values: ['--mem', '--vcpus'],
      restAfterDoubleDash: true,
    });
    expect(args.positionals).toEqual(['a.s']);
    expect(args.flag('--stats')).toBe(true);
    expect(args.flag('--trace')).toBe(false);
    expect(args.value('--mem')).toBe('4M');
    expect(args.value('--vcpus')).toBe('2');
    expect(args.rest).toEqual(['--not-an-option', 'x']);
    expect(() => parseArguments(['--stats=1'], { flags: ['--stats'] })).toThrow('--stats does not take a value');
    expect(() => parseArguments(['--', 'x'], {})).toThrow("unexpected '--'");
  });

  it('formatTable aligns columns, numbers to the right; formatBytes picks a binary unit', () => {
    expect(formatTable([['name', 'count'], ['alpha', '1,234'], ['b', '5']])).toBe('name   count\nalpha  1,234\nb          5\n');
    expect([formatBytes(100), formatBytes(4096), formatBytes(1.5 * 1024 ** 2), formatBytes(3 * 1024 ** 3)]).toEqual(['100 B', '4 KiB', '1.50 MiB', '3 GiB']);
  });

  it('the progress bar draws only on a terminal', () => {
    const written: string[] = [];
    const pipe = new ProgressBar('copy', 100, { stream: { write: (text: string) => written.push(text), isTTY: false } });
    pipe.update(50);
    pipe.finish();
    expect(written).toEqual([]);

    const tty = new ProgressBar('copy', 8192, { unit: 'bytes', intervalMs: 0, stream: { write: (text: string) => written.push(text), isTTY: true, columns: 80 } });
    tty.update(4096);
    tty.update(8192);
    tty.finish();
    expect(written[0]).toMatch(/^copy \[#+-+\]  50%  4 KiB \/ 8 KiB\x1b\[K$/);
    expect(written[1]).toMatch(/^\rcopy \[#+\] 100%  8 KiB \/ 8 KiB/);
    expect(written.at(-1)).toBe('\n');
  });
});
