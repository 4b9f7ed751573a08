/**
 * The example programs: their listings match the reviewed golden files (a regression guard for
 * encodings, layout and listing format), their images survive the .bvx file format, and
 * `tools/asm` works as a command: image written, listing and symbols printed, and a bad source
 * file reported with a caret and no stack trace.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { assemble, formatListing } from '../../guest-isa/assembler.ts';
import { encodeImage, parseImage } from '../../guest-isa/image.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const EXAMPLES = ['hello', 'loop', 'data'] as const;

function assembleExample(name: string) {
  const file = `examples/${name}.s`;
  return assemble(readFileSync(join(repoRoot, file), 'utf8'), { fileName: file, readFile: (path) => readFileSync(join(repoRoot, path), 'utf8') });
}

describe('example programs', () => {
  it.each(EXAMPLES)('%s.s: the listing matches golden/%s.lst', (name) => {
    const golden = readFileSync(join(repoRoot, `tests/guest-isa/golden/${name}.lst`), 'utf8');
    expect(formatListing(assembleExample(name))).toBe(golden);
  });

  it.each(EXAMPLES)('%s.s: the image encodes and parses back unchanged', (name) => {
    const { image } = assembleExample(name);
    const parsed = parseImage(encodeImage(image));
    expect(parsed.entry).toBe(image.entry);
    expect(parsed.symbols).toEqual(image.symbols);
    expect(parsed.segments.map((s) => ({ ...s, data: Array.from(s.data) }))).toEqual(image.segments.map((s) => ({ ...s, data: Array.from(s.data) })));
  });

  it('hello.s holds the message and its length; data.s has 32 table words and a .bss buffer for them', () => {
    const hello = assembleExample('hello');
    const data = hello.image.segments.find((s) => s.name === '.data')!;
    expect(new TextDecoder().decode(data.data)).toBe('Hello, world!\n');
    const sorted = assembleExample('data');
    expect(sorted.symbols.get('COUNT')).toBe(32);
    const bss = sorted.image.segments.find((s) => s.name === '.bss')!;
    expect(bss.memSize).toBeGreaterThanOrEqual(32 * 4);
    expect(bss.data.length).toBe(0);
  });
});

describe('tools/asm', () => {
  const workDir = mkdtempSync(join(tmpdir(), 'bv-asm-'));
  afterAll(() => rmSync(workDir, { recursive: true, force: true }));

  // node --import tsx rather than npx: npx adds its own warnings to stderr.
  const runAsm = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'tools/asm.ts'), ...args], { cwd: repoRoot, encoding: 'utf8' });

  it('assembles a file: exit 0, a parseable image equal to the library result, listing and symbols on stdout', () => {
    const output = join(workDir, 'hello.bvx');
    const run = runAsm('examples/hello.s', '-o', output, '--listing', '--symbols');
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const image = parseImage(readFileSync(output));
    expect(image.entry).toBe(0x1000);
    expect(Array.from(encodeImage(image))).toEqual(Array.from(encodeImage(assembleExample('hello').image)));
    const golden = readFileSync(join(repoRoot, 'tests/guest-isa/golden/hello.lst'), 'utf8');
    expect(run.stdout.startsWith(golden)).toBe(true);
    expect(run.stdout.slice(golden.length)).toBe(
      ['00000001 = HCALL_EXIT', '00000002 = HCALL_CONSOLE_WRITE', '00001000 g _start', '00002000 l message', '0000200e l message_end', ''].join('\n'),
    );
  });

  it('writes the listing to a file and defaults the output name to <input>.bvx', () => {
    const source = join(workDir, 'tiny.s');
    writeFileSync(source, 'nop\n');
    const listing = join(workDir, 'tiny.lst');
    const run = runAsm(source, '--listing', listing);
    expect(run.status).toBe(0);
    expect(run.stdout).toBe('');
    expect(existsSync(join(workDir, 'tiny.bvx'))).toBe(true);
    expect(readFileSync(listing, 'utf8')).toBe(`; ${source}\n00001000  00000012                 nop\n`);
  });

  it('a bad source file: exit 1, the message with line, column and caret on stderr, no stack trace, no output file', () => {
    const source = join(workDir, 'bad.s');
    writeFileSync(source, 'nop\n  addi a0, a0, 99999\n');
    const run = runAsm(source);
    expect(run.status).toBe(1);
    expect(run.stderr).toBe(
      `error: ${source}:2:16: immediate 99999 is out of range for 'addi' (-32768..32767)\n` +
        '      addi a0, a0, 99999\n' +
        '                   ^\n',
    );
    expect(run.stderr).not.toMatch(/\bat .*\.ts:\d+/);
    expect(existsSync(join(workDir, 'bad.bvx'))).toBe(false);
  });

  it('a missing source file: exit 1 with one error line', () => {
    const run = runAsm(join(workDir, 'nope.s'));
    expect(run.status).toBe(1);
    expect(run.stderr).toMatch(/^error: .*nope\.s: cannot read the source file: ENOENT[^\n]*\n$/);
  });

  it('bad usage exits 2 with the usage line', () => {
    for (const args of [[], ['--frob', 'x.s'], ['a.s', 'b.s'], ['x.s', '-o']]) {
      const run = runAsm(...args);
      expect(run.status, args.join(' ')).toBe(2);
      expect(run.stderr).toMatch(/^error: .*\nusage: asm /);
    }
  });
});
