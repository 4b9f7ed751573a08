/**
 * Every `npx tsx tools/run …` command in README.md works as shown: each is parsed from the
 * README's code blocks and run (as `node --import tsx tools/run.ts …`, what `npx tsx` does, from
 * the repository root), and must exit 0.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const REPO = join(import.meta.dirname, '..', '..');
const PREFIX = 'npx tsx tools/run ';

/** Splits a command line as a POSIX shell would for plain words, '…' and "…" (no expansions). */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'" || c === '"') {
      const end = line.indexOf(c, i + 1);
      if (end < 0) throw new Error(`unterminated quote in: ${line}`);
      word = (word ?? '') + line.slice(i + 1, end);
      i = end;
    } else if (c === ' ' || c === '\t') {
      if (word !== null) words.push(word);
      word = null;
    } else if (c === '#' && word === null) {
      break; // a comment
    } else {
      if ('$`\\|;&<>*?'.includes(c)) throw new Error(`README command needs a real shell (${c}): ${line}`);
      word = (word ?? '') + c;
    }
  }
  if (word !== null) words.push(word);
  return words;
}

/** The `npx tsx tools/run` commands of README.md's code blocks (outside ```ts blocks). */
function readmeRunCommands(): string[] {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const commands: string[] = [];
  let inBlock = false;
  let language = '';
  for (const line of readme.split('\n')) {
    const fence = /^```(\w*)/.exec(line);
    if (fence) {
      inBlock = !inBlock;
      language = inBlock ? fence[1]! : '';
      continue;
    }
    if (inBlock && language === '' && line.startsWith(PREFIX)) commands.push(line);
  }
  return commands;
}

function run(args: readonly string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'tools/run.ts', ...args], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

const commands = readmeRunCommands();

describe('README.md', () => {
  it('shows several tools/run commands', () => {
    expect(commands.length).toBeGreaterThanOrEqual(3);
    expect(shellWords(`a 'b c' "d"e  # f`)).toEqual(['a', 'b c', 'de']);
  });

  it.each(commands)('%s → exit 0', async (command) => {
    const outcome = await run(shellWords(command.slice(PREFIX.length)));
    expect(outcome.stderr).not.toMatch(/^error:/m);
    expect(outcome.code).toBe(0);
  }, 120_000);
});
