/**
 * The tools work from any directory (docs/run.md): run with the current directory set to a
 * temporary directory that has its own tsconfig.json and package.json, through the launcher
 * tools/bytevisor.mjs and through the repository's tsx loader given by path. Paths on the command
 * line are relative to that directory; everything the tools load themselves (the addon, the
 * includes of an assembly file, SPEC.md) is found relative to the repository.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { spawnNode, type ChildOutcome as Outcome } from './child.ts';

const REPO = join(import.meta.dirname, '..', '..');
const LAUNCHER = join(REPO, 'tools/bytevisor.mjs');
const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
const elsewhere = mkdtempSync(join(tmpdir(), 'bv-elsewhere-'));
afterAll(() => rmSync(elsewhere, { recursive: true, force: true }));

// A directory that would mislead anything resolved against the current directory.
writeFileSync(join(elsewhere, 'tsconfig.json'), '{ "compilerOptions": { "target": "ES5", "useDefineForClassFields": false, "paths": { "*": ["./nowhere/*"] } } }\n');
writeFileSync(join(elsewhere, 'package.json'), '{ "type": "commonjs" }\n');
writeFileSync(join(elsewhere, 'hi.s'), `
_start: li      a0, 2                   # CONSOLE_WRITE
        la      a1, message
        li      a2, 3
        hcall
        li      a1, 9
        li      a0, 1                   # EXIT
        hcall
        .data
message: .ascii "hi\\n"
`);

function spawnIn(cwd: string, args: readonly string[]): Promise<Outcome> {
  return spawnNode(args, { cwd });
}

describe('the tools from another directory', () => {
  it('tools/bytevisor.mjs run: a guest named relative to the current directory', async () => {
    expect(await spawnIn(elsewhere, [LAUNCHER, 'run', 'hi.s'])).toEqual({ code: 9, stdout: 'hi\n', stderr: '' });
  });

  it('tools/bytevisor.mjs run: the nanokernel (its .include files) with console input', async () => {
    const outcome = await spawnIn(elsewhere, [LAUNCHER, 'run', join(REPO, 'examples/nanokernel/kernel.s'), '--input', 'a b', '--', 'wc']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toContain('wc: 0 lines, 2 words, 3 bytes\n');
  });

  it('tools/bytevisor.mjs asm and disasm: the output file lands in the current directory', async () => {
    const asm = await spawnIn(elsewhere, [LAUNCHER, 'asm', 'hi.s', '-o', 'hi.bvx']);
    expect(asm.code).toBe(0);
    expect(existsSync(join(elsewhere, 'hi.bvx'))).toBe(true);
    const disasm = await spawnIn(elsewhere, [LAUNCHER, 'disasm', 'hi.bvx']);
    expect(disasm.code).toBe(0);
    expect(disasm.stdout).toMatch(/_start/);
    expect(await spawnIn(elsewhere, [LAUNCHER, 'run', 'hi.bvx'])).toEqual({ code: 9, stdout: 'hi\n', stderr: '' });
  });

  it('tools/bytevisor.mjs gen-spec --check finds the repository SPEC.md', async () => {
    const outcome = await spawnIn(elsewhere, [LAUNCHER, 'gen-spec', '--check']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toMatch(/SPEC\.md is up to date/);
  });

  it('the repository tsx loader given by path works the same (what npx --prefix … tsx runs)', async () => {
    expect(await spawnIn(elsewhere, ['--import', TSX_LOADER, join(REPO, 'tools/run.ts'), 'hi.s'])).toEqual({ code: 9, stdout: 'hi\n', stderr: '' });
  });

  it('the launcher refuses an unknown tool with one error line and exit 2; --help lists the tools', async () => {
    const unknown = await spawnIn(elsewhere, [LAUNCHER, 'frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.split('\n')[0]).toBe("error: unknown tool 'frobnicate' (tools: asm, ctl, disasm, gen-spec, host, inject, report, run, snapshot)");
    const help = await spawnIn(elsewhere, [LAUNCHER, '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: bytevisor\.mjs <asm \| ctl \| disasm \| gen-spec \| host \| inject \| report \| run \| snapshot>/);
  });

  it("the launcher's tool list is every tool in tools/ (a module that runs its main on process.argv)", () => {
    // (Read, not imported: the launcher runs a tool when it is loaded.)
    const list = /^export const TOOLS = \[([^\]]*)\];$/m.exec(readFileSync(LAUNCHER, 'utf8'))![1]!;
    const launcherTools = [...list.matchAll(/'([^']+)'/g)].map((match) => match[1]!);
    const tools = readdirSync(join(REPO, 'tools'))
      .filter((name) => name.endsWith('.ts') && /^[^*\n]*(?:process\.exitCode = main\(process\.argv|await runTool\(main)/m.test(readFileSync(join(REPO, 'tools', name), 'utf8')))
      .map((name) => name.slice(0, -3));
    expect([...launcherTools].sort()).toEqual(tools.sort());
    expect(tools).toContain('run');
  });
});
