// Crash safety of checkpoint saves (issue "Checkpoint files…", item 1): a child process saving a
// checkpoint over an existing one is killed with SIGKILL at random moments; after every kill the
// target must hold the previous checkpoint byte for byte, or the complete new one — never a mix,
// never a damaged file. scripts/checkpoint-soak.ts runs the same trials many more times.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCrashTrials } from './fixtures/checkpoint-crash-child.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-ckpt-crash-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('checkpoint saves killed with SIGKILL', () => {
  it('leave the old checkpoint intact or the new one complete, over 60 trials', { timeout: 120_000 }, async () => {
    // 4096 pages = 16 MiB of guest memory (a quarter of it zero pages).
    const report = await runCrashTrials({ dir, trials: 60, pageCount: 4096 });
    expect(report.failures).toEqual([]);
    expect(report.outcomes).toHaveLength(60);
    const interrupted = report.outcomes.filter((outcome) => outcome.kept === 'old');
    // The test means something only if many kills landed inside a save, leaving its temp file.
    expect(interrupted.length).toBeGreaterThanOrEqual(10);
    expect(report.outcomes.some((outcome) => outcome.staleTempFiles > 0)).toBe(true);
    // Every trial that kept the old file was really killed (a finished save must replace it).
    expect(interrupted.every((outcome) => outcome.killed)).toBe(true);
  });
});
