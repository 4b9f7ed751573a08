/**
 * SIGINT and SIGTERM stop tools/run cleanly (docs/run.md#signals): the guest is paused, --stats
 * still prints, the exit code is 130 or 143, --checkpoint-on-exit saves a VM that --restore runs
 * on, a live snapshot in progress is finished, and a second signal ends the process at once.
 * Child processes, signalled once they show they are running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointReader } from '../../services/checkpoint/index.ts';
import { REPO, runTool } from './child.ts';

const work = mkdtempSync(join(tmpdir(), 'bv-run-signals-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Prints "started", then counts in s0 forever. */
const SPIN = join(work, 'spin.s');
writeFileSync(SPIN, `
_start: li      a0, 2                   # CONSOLE_WRITE "started\\n"
        la      a1, message
        li      a2, 8
        hcall
        li      s0, 0
1:      addi    s0, s0, 1
        j       1b
message: .ascii "started\\n"
`);

/** Writes a word into each page of the first 240 MiB (a long checkpoint), then spins as SPIN. */
const TOUCH = join(work, 'touch.s');
writeFileSync(TOUCH, `
_start: li      t0, 0x100000
        li      t1, 0x0f000000
1:      sw      t1, 0(t0)
        li      t2, 4096
        add     t0, t0, t2
        bltu    t0, t1, 1b
        li      a0, 2
        la      a1, message
        li      a2, 8
        hcall
2:      j       2b
message: .ascii "started\\n"
`);

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** tools/run in a child process, with a way to wait until its output shows some text. */
class RunningTool {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly ended: Promise<Ended>;
  private waiters: (() => void)[] = [];

  constructor(args: readonly string[], options: { stdin?: 'pipe' } = {}) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'tools/run.ts', ...args], { cwd: REPO, stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'] });
    const wake = () => this.waiters.forEach((waiter) => waiter());
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => { this.stdout += chunk; wake(); });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { this.stderr += chunk; wake(); });
    this.ended = new Promise((resolve) => this.child.on('close', (code, signal) => resolve({ code, signal, stdout: this.stdout, stderr: this.stderr })));
  }

  /** Resolves once stdout or stderr (`where`) contains `text`. */
  waitFor(where: 'stdout' | 'stderr', text: string): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (!this[where].includes(text)) return;
        this.waiters = this.waiters.filter((waiter) => waiter !== check);
        resolve();
      };
      this.waiters.push(check);
      check();
    });
  }
}

/** The instruction count of the `error: interrupted by …` line. */
function interruptedAfter(stderr: string, signal: string): number {
  const match = new RegExp(`^error: interrupted by ${signal} after ([\\d,]+) instructions$`, 'm').exec(stderr);
  expect(match, stderr).not.toBeNull();
  return Number(match![1]!.replaceAll(',', ''));
}

describe('tools/run stopped by a signal', () => {
  it('SIGINT: stats, exit 130, and a checkpoint that --restore runs on from where it stopped', async () => {
    const path = join(work, 'spin.ckpt');
    const run = new RunningTool([SPIN, '--stats', '--checkpoint-on-exit', path]);
    await run.waitFor('stdout', 'started\n');
    run.child.kill('SIGINT');
    const ended = await run.ended;
    expect(ended.code).toBe(130);
    expect(ended.stdout).toBe('started\n');
    expect(ended.stderr).toMatch(/^SIGINT: stopping the guest \(a second signal ends the process at once\)$/m);
    const at = interruptedAfter(ended.stderr, 'SIGINT');
    expect(at).toBeGreaterThan(0);
    expect(ended.stderr).toContain(`checkpoint on exit after ${at.toLocaleString('en-US')} instructions: ${path} (`);
    expect(ended.stderr).toMatch(new RegExp(`^ {2}instructions +${at.toLocaleString('en-US')}$`, 'm'));
    expect(ended.stderr.split('\n').filter((line) => line.startsWith('error:'))).toHaveLength(1);
    const reader = CheckpointReader.open(path);
    reader.verifyAll();
    reader.close();
    // The restored VM runs on (no second "started"): its retired-instruction count goes on from `at`.
    const restored = await runTool(['--restore', path, '--input', '', '--max-insns', '1000', '--stats', '--json']);
    expect(restored.code).toBe(4);
    expect(restored.stdout).toBe('');
    const document = JSON.parse(restored.stderr.trimEnd().split('\n').pop()!);
    expect(document.run.instructions).toBe(1000);
    expect(document.vm.instructions).toBe(at + 1000);
  });

  it('SIGTERM with --stats --json: exit 143, the document says how the run ended', async () => {
    const run = new RunningTool([SPIN, '--stats', '--json']);
    await run.waitFor('stdout', 'started\n');
    run.child.kill('SIGTERM');
    const ended = await run.ended;
    expect(ended.code).toBe(143);
    const document = JSON.parse(ended.stderr.trimEnd().split('\n').pop()!);
    const at = interruptedAfter(ended.stderr, 'SIGTERM');
    expect(document.exit).toEqual({ kind: 'interrupted', code: 143, signal: 'SIGTERM', message: `interrupted by SIGTERM after ${at.toLocaleString('en-US')} instructions` });
    expect(document.run.instructions).toBe(at);
  });

  it('a guest waiting for console input that has not come stops too', async () => {
    const run = new RunningTool(['examples/nanokernel/kernel.s', '--stats', '--', 'wc'], { stdin: 'pipe' });
    await run.waitFor('stdout', 'started pid 1');
    run.child.kill('SIGINT');
    const ended = await run.ended;
    run.child.stdin!.destroy();
    expect(ended.code).toBe(130);
    interruptedAfter(ended.stderr, 'SIGINT');
    expect(ended.stderr).toMatch(/^run$/m);
  });

  it('a live snapshot still being written is finished', async () => {
    // 3840 MiB of guest RAM: the background saver needs far longer than the signal takes to come.
    const path = join(work, 'live.ckpt');
    const run = new RunningTool([SPIN, '--mem', '3840M', '--snapshot-at', '1000', path]);
    await run.waitFor('stderr', 'snapshot: started at instruction 1000');
    run.child.kill('SIGINT');
    const ended = await run.ended;
    expect(ended.code).toBe(130);
    expect(ended.stderr).toMatch(/^snapshot: .*live\.ckpt complete \(983040 pages: /m);
    const reader = CheckpointReader.open(path);
    reader.verifyAll();
    reader.close();
  });

  it('--checkpoint-on-exit when the run ends otherwise: the budget saves, a power-off does not', async () => {
    const budget = join(work, 'budget.ckpt');
    const stopped = await runTool([SPIN, '--input', '', '--max-insns', '5000', '--checkpoint-on-exit', budget]);
    expect(stopped.code).toBe(4);
    expect(stopped.stderr).toContain(`checkpoint on exit after 5,000 instructions: ${budget} (`);
    expect(existsSync(budget)).toBe(true);
    const halted = join(work, 'halted.ckpt');
    const done = await runTool(['examples/hello.s', '--checkpoint-on-exit', halted]);
    expect(done.code).toBe(0);
    expect(done.stderr).toBe(`warning: --checkpoint-on-exit: the run ended (halted) in a state that cannot run on; no checkpoint was written to ${halted}\n`);
    expect(existsSync(halted)).toBe(false);
  });

  it('a second signal while stopping ends the process at once, even in the middle of the checkpoint', async () => {
    const path = join(work, 'second.ckpt');
    const run = new RunningTool([TOUCH, '--mem', '256M', '--stats', '--checkpoint-on-exit', path]);
    await run.waitFor('stdout', 'started\n');
    run.child.kill('SIGINT');
    await run.waitFor('stderr', 'SIGINT: stopping the guest');
    run.child.kill('SIGINT');
    const ended = await run.ended;
    expect(ended.signal).toBe('SIGINT'); // the signal's default action: killed, no exit code
    expect(ended.stderr).not.toMatch(/^error:/m);
    expect(ended.stderr).not.toMatch(/^run$/m);
    expect(existsSync(path)).toBe(false); // 240 MiB were still being written
  });
});
