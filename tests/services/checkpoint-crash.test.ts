// Crash safety of checkpoint saves (issue "Checkpoint files…", item 1): saves of a checkpoint over
// an existing one are cut short by SIGKILL at random moments; after every kill each target must
// hold its previous checkpoint byte for byte, or the complete new one — never a mix, never a
// damaged file. Each child process runs six saves at once (one per worker thread, each over its
// own target, each started at its own random moment), so one SIGKILL is six kill points; see
// fixtures/checkpoint-crash-child.ts. scripts/checkpoint-soak.ts runs the same trials at length.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCrashTrials } from './fixtures/checkpoint-crash-child.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-ckpt-crash-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const KILL_POINTS = 72;
const PER_PROCESS = 6;

describe('checkpoint saves killed with SIGKILL', () => {
  // Timing only decides where the kills land, never whether the test passes: the generous
  // timeout is for a loaded machine (12 child processes, 72 saves of 16 MiB with fsync).
  it(`leave the old checkpoint intact or the new one complete, at ${KILL_POINTS} kill points`, { timeout: 300_000 }, async () => {
    // 4096 pages = 16 MiB of guest memory (a quarter of it zero pages).
    const report = await runCrashTrials({ dir, trials: KILL_POINTS, pageCount: 4096, perProcess: PER_PROCESS });
    expect(report.failures).toEqual([]);
    expect(report.outcomes).toHaveLength(KILL_POINTS);
    expect(report.processes).toBe(KILL_POINTS / PER_PROCESS);
    const interrupted = report.outcomes.filter((outcome) => outcome.kept === 'old');
    // The test means something only if many kills landed inside a save, leaving its temp file,
    // and some saves completed before the kill (their new file must then be whole).
    expect(interrupted.length).toBeGreaterThanOrEqual(10);
    expect(report.outcomes.some((outcome) => outcome.staleTempFiles > 0)).toBe(true);
    expect(report.outcomes.some((outcome) => outcome.kept === 'new')).toBe(true);
    // Every trial that kept the old file was really killed (a finished save must replace it).
    expect(interrupted.every((outcome) => outcome.killed)).toBe(true);
  });
});
