/**
 * Running the project's tools as a user would: a child process of plain node with tsx loaded,
 * its output collected. One helper for every test that runs a tool.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';

/** The repository root. */
export const REPO = join(import.meta.dirname, '..', '..');

/** How a child process ended and what it printed. */
export interface ChildOutcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node ...args` in `cwd`; stdin is the given text, or closed. */
export function spawnNode(args: readonly string[], options: { cwd?: string; stdin?: string } = {}): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...args], {
      cwd: options.cwd ?? REPO,
      stdio: [options.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    if (options.stdin !== undefined) child.stdin!.end(options.stdin);
  });
}

/** Runs `tools/run` with args from the repository root; stdin is the given text, or closed. */
export function runTool(args: readonly string[], stdin?: string): Promise<ChildOutcome> {
  return spawnNode(['--import', 'tsx', 'tools/run.ts', ...args], stdin === undefined ? {} : { stdin });
}
