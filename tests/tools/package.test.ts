/**
 * The installable package: `npm pack` (its `prepare` compiles the TypeScript into dist/) makes a
 * tarball that `npm install` puts into an empty project, building the native addon there; the
 * `bytevisor` bin and the library then run with plain node, no tsx. The README's example for the
 * installed package is real code and runs as shown in that project.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildOutcome } from './child.ts';

const REPO = join(import.meta.dirname, '..', '..');
const SUBCOMMANDS = ['run', 'asm', 'disasm', 'snapshot', 'host', 'ctl', 'report', 'inject'];
const run = promisify(execFile);

const scratch = mkdtempSync(join(tmpdir(), 'bv-package-'));
const project = join(scratch, 'project');
const installed = join(project, 'node_modules', 'bytevisor');
const bin = join(project, 'node_modules', '.bin', 'bytevisor');
let packed: string[] = [];
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** npm in `cwd`; a failure throws with npm's output. */
async function npm(args: readonly string[], cwd: string): Promise<string> {
  const result = await run('npm', [...args], { cwd, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 220_000 }).catch(
    (error: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`npm ${args.join(' ')} failed: ${error.message}\n${error.stdout ?? ''}${error.stderr ?? ''}`);
    },
  );
  return result.stdout;
}

/** `command ...args` in `cwd` (the temporary project unless given), stdin closed. */
function spawnIn(command: string, args: readonly string[], cwd = project): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    // PATH's first node is the one running the tests (the bin's `#!/usr/bin/env node`).
    const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env['PATH'] ?? ''}` };
    const child = spawn(command, [...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** `bytevisor ...args` with plain node, as the bin links it. */
function bytevisor(args: readonly string[], cwd = project): Promise<ChildOutcome> {
  return spawnIn(process.execPath, [bin, ...args], cwd);
}

beforeAll(async () => {
  // `npm pack` runs `prepare` (npm run build) first: the tarball holds a fresh dist/.
  const report = JSON.parse(await npm(['pack', '--json', '--pack-destination', scratch], REPO)) as {
    filename: string;
    files: { path: string }[];
  }[];
  packed = report[0]!.files.map((file) => file.path);
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), '{ "name": "uses-bytevisor", "private": true, "type": "module" }\n');
  await npm(['install', '--no-audit', '--no-fund', '--prefer-offline', join(scratch, report[0]!.filename)], project);
}, 240_000);

describe('npm pack', () => {
  it('packs the compiled library with types, the addon sources and the examples, not the TypeScript or the tests', () => {
    const manifest = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as {
      exports: Record<string, string | { types: string; default: string }>;
      bin: Record<string, string>;
      private?: boolean;
    };
    const targets = Object.values(manifest.exports).flatMap((target) => (typeof target === 'string' ? [target] : [target.types, target.default]));
    for (const path of [...targets, ...Object.values(manifest.bin), 'binding.gyp', 'native/src/addon.cc', 'examples/hello.s', 'README.md']) {
      expect(packed, path).toContain(path.replace(/^\.\//, ''));
    }
    // Every part of the library with an index.ts is an entry point of its own.
    const parts = ['kernel', 'devices', 'guest-isa', 'native', ...readdirSync(join(REPO, 'services')).map((name) => `services/${name}`)];
    for (const part of parts.filter((name) => existsSync(join(REPO, name, 'index.ts')))) {
      expect(manifest.exports[`./${part}`], `exports['./${part}']`).toEqual({ types: `./dist/${part}/index.d.ts`, default: `./dist/${part}/index.js` });
    }
    expect(manifest.exports['.']).toEqual({ types: './dist/index.d.ts', default: './dist/index.js' });
    expect(packed.filter((path) => /\.ts$/.test(path) && !path.endsWith('.d.ts'))).toEqual([]);
    expect(packed.filter((path) => /^(tests|bench|scripts|build|node_modules)\//.test(path))).toEqual([]);
    for (const name of SUBCOMMANDS) {
      // A tool whose source exists is compiled into the package.
      if (existsSync(join(REPO, 'tools', `${name}.ts`))) expect(packed).toContain(`dist/tools/${name}.js`);
    }
    expect(manifest.private).toBe(true); // packs, but cannot be published by accident
  });
});

describe('the package installed in an empty project', () => {
  it('built the native addon during the install', () => {
    expect(existsSync(join(installed, 'build', 'Release', 'bytevisor_native.node'))).toBe(true);
    expect(existsSync(join(installed, 'dist', 'index.js'))).toBe(true);
  });

  it('bytevisor run examples/hello.s: the guest prints and exits 0', async () => {
    expect(await bytevisor(['run', join(installed, 'examples', 'hello.s')])).toEqual({ code: 0, stdout: 'Hello, world!\n', stderr: '' });
    // From the package directory, with the path the README uses there.
    expect(await bytevisor(['run', 'examples/hello.s'], installed)).toEqual({ code: 0, stdout: 'Hello, world!\n', stderr: '' });
  });

  it('the bin runs by itself (its #! line), as npx bytevisor does', async () => {
    expect(await spawnIn(bin, ['run', join(installed, 'examples', 'hello.s')])).toEqual({ code: 0, stdout: 'Hello, world!\n', stderr: '' });
  });

  it('bytevisor run: the nanokernel (its .include files), boot arguments, console input and --stats', async () => {
    const outcome = await bytevisor(['run', join(installed, 'examples/nanokernel/kernel.s'), '--input', 'a b', '--stats', '--', 'wc']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toContain('wc: 0 lines, 2 words, 3 bytes\n');
    expect(outcome.stderr).toMatch(/instructions/);
  });

  it('bytevisor asm, then disasm and run of the image', async () => {
    const source = join(installed, 'examples', 'hello.s');
    expect((await bytevisor(['asm', source, '-o', 'hello.bvx'])).code).toBe(0);
    expect(existsSync(join(project, 'hello.bvx'))).toBe(true);
    const listing = await bytevisor(['disasm', 'hello.bvx']);
    expect(listing.code).toBe(0);
    expect(listing.stdout).toMatch(/_start/);
    expect(listing.stdout).toMatch(/hcall/);
    expect(await bytevisor(['run', 'hello.bvx'])).toEqual({ code: 0, stdout: 'Hello, world!\n', stderr: '' });
  });

  it('bytevisor --help lists the subcommands; --version; an unknown subcommand is exit 2', async () => {
    const help = await bytevisor(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout.split('\n')[0]).toBe(`usage: bytevisor <${SUBCOMMANDS.join(' | ')}> [arguments...]`);
    const version = await bytevisor(['--version']);
    const { version: expected } = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect(version).toEqual({ code: 0, stdout: `bytevisor ${expected}\n`, stderr: '' });
    const unknown = await bytevisor(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.split('\n')[0]).toBe(`error: unknown subcommand 'frobnicate' (subcommands: ${SUBCOMMANDS.join(', ')})`);
    expect((await bytevisor([])).code).toBe(2);
  });

  it.each(SUBCOMMANDS)('bytevisor %s --help: the tool gets its own arguments', async (name) => {
    const outcome = await bytevisor([name, '--help']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout + outcome.stderr).toMatch(/usage/i);
    expect(outcome.stderr).not.toMatch(/^error:/m);
  });

  it("the README's example for the installed package runs with plain node as shown", async () => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## The installed package'));
    const code = /```js\n([\s\S]*?)```/.exec(section)?.[1];
    expect(code).toBeDefined();
    expect(code).toMatch(/from 'bytevisor'/);
    writeFileSync(join(project, 'readme-example.mjs'), code!);
    const outcome = await spawnIn(process.execPath, ['readme-example.mjs']);
    expect(outcome.stderr).toBe('');
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toMatch(/\{ kind: 'halted', exitCode: 0 \}\n$/);
  });

  it('bytevisor host serves the API with plain node (a VM in a worker group too); bytevisor ctl drives it; bytevisor/services/host imports; bytevisor report draws its timeline', async () => {
    const socket = join(scratch, 'host.sock');
    // 'g' runs in a worker group: the installed package starts its worker from dist's JavaScript.
    writeFileSync(join(project, 'host.json'), JSON.stringify({
      worker_groups: [{ name: 'wg' }],
      vms: [
        { name: 'w', image: 'node_modules/bytevisor/examples/nanokernel/kernel.s', memory_mib: 16, boot_args: 'walker 1M seq 0' },
        { name: 'g', image: 'node_modules/bytevisor/examples/nanokernel/kernel.s', memory_mib: 16, boot_args: 'walker 1M seq 0', group: 'wg' },
      ],
    }));
    const host = spawn(process.execPath, [bin, 'host', '--config', 'host.json', '--api-sock', socket, '--record', 'host.timeline'], { cwd: project, stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      let stderr = '';
      await new Promise<void>((resolve, reject) => {
        host.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
          stderr += chunk;
          if (stderr.includes('serving the API')) resolve();
        });
        host.on('close', (code) => reject(new Error(`the host ended (${code}): ${stderr}`)));
      });
      const vms = await bytevisor(['ctl', '--api-sock', socket, 'vms', '--json']);
      expect(vms.code).toBe(0);
      expect((JSON.parse(vms.stdout) as { vms: { name: string; state: string }[] }).vms).toMatchObject([{ name: 'w', state: 'Running' }, { name: 'g', state: 'Running' }]);
      writeFileSync(join(project, 'client.mjs'), `
import { apiRequest } from 'bytevisor/services/host';
const answer = await apiRequest(${JSON.stringify(socket)}, 'PATCH', '/vms/w', { state: 'Paused' });
console.log(JSON.stringify({ status: answer.status, state: answer.body.state }));
`);
      const client = await spawnIn(process.execPath, ['client.mjs']);
      expect(JSON.parse(client.stdout)).toEqual({ status: 200, state: 'Paused' });
      const ended = new Promise<number | null>((resolve) => host.on('close', resolve));
      host.kill('SIGTERM');
      expect(await ended).toBe(0);
      // The report reads uPlot from the project's node_modules (the package's dependency) and inlines it.
      const report = await bytevisor(['report', '--timeline', 'host.timeline', '--out', 'report.html', '--quiet']);
      expect(report).toEqual({ code: 0, stdout: '', stderr: '' });
      expect(readFileSync(join(project, 'report.html'), 'utf8')).toMatch(/charts: uPlot \d/);
    } finally {
      host.kill('SIGKILL');
    }
  });

  it('the subpath entry points: one module graph with the main entry, a checkpoint saved and read back', async () => {
    writeFileSync(join(project, 'subpaths.mjs'), `
import * as main from 'bytevisor';
import { createHypervisor, Hypervisor } from 'bytevisor/kernel';
import { attachStandardDevices, CaptureSink, runWithResets } from 'bytevisor/devices';
import { assemble } from 'bytevisor/guest-isa';
import { CheckpointReader, saveVmCheckpoint } from 'bytevisor/services/checkpoint';
import { SwapFile } from 'bytevisor/services/memory';
import { HOST_PAGE_SIZE } from 'bytevisor/native';
import { readFileSync } from 'node:fs';

if (main.Hypervisor !== Hypervisor || main.SwapFile !== SwapFile) throw new Error('two copies of the library');
const hv = createHypervisor({ hostMemoryBytes: 16 << 20 });
const vm = hv.createVm({ memoryBytes: 4 << 20 });
const output = new CaptureSink();
const devices = attachStandardDevices(vm, { output });
vm.loadImage(assemble(readFileSync('node_modules/bytevisor/examples/hello.s', 'utf8')).image);
const { reason } = runWithResets(hv, vm, devices);
saveVmCheckpoint(vm, 'vm.ckpt');
const reader = CheckpointReader.open('vm.ckpt');
console.log(JSON.stringify({ reason, text: output.text(), pageSize: HOST_PAGE_SIZE, pages: reader.summary().pageCount }));
reader.close();
`);
    const outcome = await spawnIn(process.execPath, ['subpaths.mjs']);
    expect(outcome.stderr).toBe('');
    expect(outcome.code).toBe(0);
    const result = JSON.parse(outcome.stdout) as { reason: unknown; text: string; pageSize: number; pages: number };
    expect(result.reason).toEqual({ kind: 'halted', exitCode: 0 });
    expect(result.text).toBe('Hello, world!\n');
    expect(result.pageSize).toBeGreaterThan(0);
    expect(result.pages).toBe((4 << 20) / 4096);
  });
});
