/**
 * tools/run's VM-state flags as users run them (child processes): --checkpoint-at then
 * --restore in each mode, a guest-requested checkpoint, --snapshot-at (live) against a
 * stop-the-world checkpoint at the same instruction, --fork-at/--forks, and their usage errors.
 * Determinism makes every comparison exact.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CheckpointReader, diffCheckpoints } from '../../services/checkpoint/index.ts';
import { runTool, type ChildOutcome as Outcome } from './child.ts';

const KERNEL = 'examples/nanokernel/kernel.s';
const PROGRAMS = ['--', 'sieve', '3000', 'crc32', '8192', 'walker', '1M', 'random', '2', 'ping', '2'];
const POINT = 400_000;
const work = mkdtempSync(join(tmpdir(), 'bv-run-state-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));


let reference: Outcome;
let checkpointed: Outcome;
const checkpoint = join(work, 'nk.ckpt');

beforeAll(async () => {
  [reference, checkpointed] = await Promise.all([
    runTool([KERNEL, '--input', '', ...PROGRAMS]),
    runTool([KERNEL, '--input', '', '--checkpoint-at', String(POINT), checkpoint, ...PROGRAMS]),
  ]);
});

describe('checkpoint and restore', () => {
  it('--checkpoint-at writes a checkpoint and the run itself is unchanged', () => {
    expect(reference.code).toBe(0);
    expect(checkpointed.code).toBe(0);
    expect(checkpointed.stdout).toBe(reference.stdout);
    expect(checkpointed.stderr).toMatch(new RegExp(`^checkpoint at ${POINT}: .*nk\\.ckpt \\(`, 'm'));
    const reader = CheckpointReader.open(checkpoint);
    reader.verifyAll();
    reader.close();
  });

  for (const mode of ['lazy', 'eager', 'map'] as const) {
    it(`--restore --restore-mode ${mode} continues exactly where the checkpoint was taken`, async () => {
      const restored = await runTool(['--restore', checkpoint, '--restore-mode', mode, '--input', '']);
      expect(restored.code).toBe(0);
      expect(restored.stderr).toBe('');
      // The restored run prints what the reference printed after the checkpoint, and nothing else.
      expect(restored.stdout.length).toBeGreaterThan(0);
      expect(reference.stdout.endsWith(restored.stdout)).toBe(true);
      expect(restored.stdout.length).toBeLessThan(reference.stdout.length);
    });
  }

  it('a guest can ask for a checkpoint with the CHECKPOINT hypercall (--checkpoint-path)', async () => {
    const guest = join(work, 'ask.s');
    writeFileSync(guest, `
_start: li s0, 41
        li a0, 3          # CHECKPOINT
        hcall
        addi s0, s0, 1
        li a0, 1          # EXIT with s0
        mv a1, s0
        hcall
`);
    const path = join(work, 'asked.ckpt');
    const asked = await runTool([guest, '--input', '', '--checkpoint-path', path]);
    expect(asked.code).toBe(42);
    expect(asked.stderr).toMatch(/^checkpoint requested at \d+: /m);
    const again = await runTool(['--restore', path, '--input', '']);
    expect(again.code).toBe(42); // resumes after the hcall: 41 + 1
    // Without --checkpoint-path the call is unknown to the host: a0 = -1, and the guest goes on.
    const unknown = await runTool([guest, '--input', '']);
    expect(unknown.code).toBe(42);
    expect(unknown.stderr).toBe('');
  });
});

describe('live snapshot and fork', () => {
  it('--snapshot-at gives the same file contents as a stop-the-world checkpoint at that instruction', async () => {
    const live = join(work, 'live.ckpt');
    const run = await runTool([KERNEL, '--input', '', '--snapshot-at', String(POINT), live, ...PROGRAMS]);
    expect(run.code).toBe(0);
    expect(run.stdout).toBe(reference.stdout);
    expect(run.stderr).toMatch(new RegExp(`^snapshot: started at instruction ${POINT}, guest paused [\\d.]+ ms$`, 'm'));
    expect(run.stderr).toMatch(/^snapshot: .*live\.ckpt complete \(\d+ pages: \d+ saved before a guest write, \d+ in the background\)$/m);
    const a = CheckpointReader.open(checkpoint);
    const b = CheckpointReader.open(live);
    expect(diffCheckpoints(a, b).equal).toBe(true);
    a.close();
    b.close();
  });

  it('--fork-at/--forks runs K children from one point; each finishes like the parent', async () => {
    const run = await runTool([KERNEL, '--input', '', '--fork-at', String(POINT), '--forks', '2', ...PROGRAMS]);
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(new RegExp(`^fork: 2 children at instruction ${POINT} in [\\d.]+ ms$`, 'm'));
    const [parentOutput, ...children] = run.stdout.split(/^--- fork \d+ ---\n/m);
    expect(parentOutput).toBe(reference.stdout);
    expect(children).toHaveLength(2);
    for (const child of children) {
      expect(child.length).toBeGreaterThan(0);
      expect(reference.stdout.endsWith(child)).toBe(true);
    }
    expect(run.stderr.match(/^fork \d: exit 0 after [\d,]+ more instructions$/gm)).toHaveLength(2);
  });
});

describe('usage errors', () => {
  const cases: [string, string[], RegExp][] = [
    ['--restore with --mem', ['--restore', 'x.ckpt', '--mem', '8M'], /--mem cannot be combined with --restore/],
    ['--restore with boot arguments', ['--restore', 'x.ckpt', '--', 'sieve'], /boot arguments cannot be combined with --restore/],
    ['--restore-mode alone', [KERNEL, '--restore-mode', 'lazy'], /--restore-mode goes with --restore/],
    ['a bad restore mode', ['--restore', 'x.ckpt', '--restore-mode', 'fast'], /--restore-mode must be one of lazy, eager, map/],
    ['--fork-at without --forks', [KERNEL, '--fork-at', '10'], /--fork-at and --forks go together/],
    ['--checkpoint-at without a path', [KERNEL, '--checkpoint-at', '10'], /--checkpoint-at needs two values/],
  ];
  for (const [name, args, message] of cases) {
    it(`${name}: one error line, exit 2`, async () => {
      const run = await runTool(args);
      expect(run.code).toBe(2);
      expect(run.stderr.split('\n')[0]).toMatch(message);
      expect(run.stderr).not.toMatch(/\n\s+at /);
    });
  }

  it('restoring a file that is not a checkpoint: one error line, exit 1', async () => {
    const junk = join(work, 'junk.ckpt');
    writeFileSync(junk, 'not a checkpoint at all');
    const run = await runTool(['--restore', junk]);
    expect(run.code).toBe(1);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stderr).toMatch(/^error: /);
    expect(existsSync(junk)).toBe(true);
  });
});
