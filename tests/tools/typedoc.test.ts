/**
 * The API reference (`npm run docs`, typedoc.json) is complete and clean: typedoc reports no
 * warning and no error (typedoc.json turns on the `notDocumented` and link validations, so an
 * exported symbol without a doc comment, a type the public API references but no entry point
 * exports, or a broken {@link} is a warning), the embedding API is documented, and the kernel's
 * internals (tagged `@internal`, excluded by `excludeInternal`) do not appear. The Embedding
 * page's example is real code and runs as shown.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const run = promisify(execFile);

interface Reflection {
  name: string;
  kind: number;
  comment?: { summary: { text: string }[] };
  signatures?: Reflection[];
  getSignature?: Reflection;
  children?: Reflection[];
}

/** Members that only the interpreter, the MMU or the kernel use: none may be documented. */
const INTERNAL_MEMBERS: Record<string, string[]> = {
  Hypervisor: ['pool', 'arena'],
  Vm: [
    'hostOffsetForPageTableWrite', 'tracedWrite', 'flushCodePatch', 'frameForAccess', 'mayCacheRead', 'mayCacheWrite',
    'markAccessed', 'noteCodeWrite', 'hypercall', 'mmioRead', 'mmioWrite', 'readInstructionWordAt', 'isRam', 'isMmio',
    'isTraced', 'hostOffsetForRead', 'hostOffsetIfPresent', 'unhandledTrap', 'runTickers', 'destroy', 'forkInto',
    'pool', 'decodeCache', 'hostPool32',
  ],
  GuestMemory: [
    'pool', 'decodeCache', 'entryOf', 'resolveFrame', 'hostOffsetForRead', 'hostOffsetForWrite', 'hostOffsetIfPresent',
    'protectPage', 'unprotectPage', 'regionRunFrame', 'noteSuperpage', 'markAccessed', 'isRam', 'isTraced', 'mayCacheRead',
    'mayCacheWrite', 'forkInto', 'clear', 'dispose',
  ],
  Vcpu: ['vm', 'tlb', 'walker', 'runSlice', 'setPtbr', 'trap', 'loadState', 'loadCheckedState', 'copyStateFrom', 'reset', 'finishWait'],
  Mmu: ['translate', 'gpa', 'pte', 'level', 'faultCause', 'guestFlush', 'notePtbr', 'isTracing', 'tracedPages', 'tracedWrite', 'zapPage'],
  ExitRouter: ['hypercall', 'mmioRead', 'mmioWrite'],
};
/** Kernel interfaces between its own parts: not part of the embedding API. */
const INTERNAL_EXPORTS = ['VcpuHost', 'MmuHost', 'GuestMemoryHost', 'GuestMemoryOptions', 'VmEnvironment', 'FramePool', 'HostMemory'];

function summaryOf(reflection: Reflection): string {
  const comment = reflection.comment ?? reflection.signatures?.[0]?.comment ?? reflection.getSignature?.comment;
  return (comment?.summary ?? []).map((part) => part.text).join('').trim();
}

function child(parent: Reflection, name: string): Reflection {
  const found = parent.children?.find((c) => c.name === name);
  if (!found) throw new Error(`${parent.name} has no documented member ${name}`);
  return found;
}

describe('typedoc API reference', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bv-typedoc-'));
  let output = '';
  let project: Reflection & { documents?: { name: string }[] };
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  beforeAll(async () => {
    // One run with typedoc.json: validation and the JSON model (HTML is not needed for this).
    const json = join(dir, 'api.json');
    const typedoc = join(ROOT, 'node_modules', 'typedoc', 'bin', 'typedoc');
    const result = await run(process.execPath, [typedoc, '--json', json], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
      maxBuffer: 16 << 20,
      timeout: 170_000,
    }).catch((error: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`typedoc failed: ${error.message}\n${error.stdout ?? ''}${error.stderr ?? ''}`);
    });
    output = (result.stdout + result.stderr).replace(/\x1b\[[0-9;]*m/g, '');
    project = JSON.parse(readFileSync(json, 'utf8'));
  }, 180_000);

  it('reports no warning and no error', () => {
    const problems = output.split('\n').filter((line) => /\[(warning|error)\]/.test(line));
    expect(problems).toEqual([]);
  });

  it('has every entry point, the Embedding page and the types the API references', () => {
    const modules = (project.children ?? []).map((m) => m.name);
    for (const name of ['kernel', 'devices', 'services/memory', 'services/checkpoint', 'services/host', 'native', 'guest-isa/errors', 'guest-isa/image-types']) {
      expect(modules).toContain(name);
    }
    expect((project.documents ?? []).map((d) => d.name)).toContain('Embedding');
    const moduleNamed = (name: string): Reflection => child(project, name);
    expect(summaryOf(child(moduleNamed('guest-isa/errors'), 'BvError'))).not.toBe('');
    expect(summaryOf(child(moduleNamed('guest-isa/image-types'), 'GuestImage'))).not.toBe('');
    expect(summaryOf(child(moduleNamed('services/memory'), 'SwapFile'))).not.toBe('');
  });

  it('documents the embedding API', () => {
    const kernel = child(project, 'kernel');
    for (const name of ['Hypervisor', 'Vm', 'Vcpu', 'createHypervisor', 'GuestMemory']) {
      expect(summaryOf(child(kernel, name)), name).not.toBe('');
    }
    const hypervisor = child(kernel, 'Hypervisor');
    for (const name of ['createVm', 'run', 'runAsync', 'forkVm', 'forkVmWith', 'destroyVm']) {
      expect(summaryOf(child(hypervisor, name)), `Hypervisor.${name}`).not.toBe('');
    }
    const vm = child(kernel, 'Vm');
    for (const name of ['memory', 'loadImage', 'attachDevice', 'onHypercall', 'stopReason', 'captureState']) {
      expect(summaryOf(child(vm, name)), `Vm.${name}`).not.toBe('');
    }
  });

  it('leaves the kernel internals out', () => {
    const kernel = child(project, 'kernel');
    for (const [className, members] of Object.entries(INTERNAL_MEMBERS)) {
      const documented = (child(kernel, className).children ?? []).map((c) => c.name);
      expect(documented.filter((name) => members.includes(name)), className).toEqual([]);
    }
    const exported = (kernel.children ?? []).map((c) => c.name);
    expect(exported.filter((name) => INTERNAL_EXPORTS.includes(name))).toEqual([]);
  });
});

describe('the Embedding page', () => {
  it('runs its example as shown: a running VM forks, and parent and child both power off', async () => {
    const page = readFileSync(join(ROOT, 'docs', 'embedding.md'), 'utf8');
    const code = /```ts\n([\s\S]*?)```/.exec(page)?.[1];
    expect(code).toBeDefined();
    const file = join(ROOT, `.embedding-example-${process.pid}.ts`);
    writeFileSync(file, code!);
    try {
      const tsx = join(ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs');
      const { stdout } = await run(process.execPath, [tsx, file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000, maxBuffer: 16 << 20 });
      expect(stdout.match(/\{ kind: 'halted', exitCode: 0 \}/g) ?? []).toHaveLength(2);
      expect(stdout).toMatch(/present: \d+/);
    } finally {
      rmSync(file, { force: true });
    }
  }, 180_000);
});
