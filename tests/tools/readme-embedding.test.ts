// The README's embedding example is real code: it is extracted from README.md, run with tsx from
// the repository root, and must print what its comments say.
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');

describe('README embedding example', () => {
  it('runs as shown: a running VM forks, and parent and child both power off cleanly', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Embedding'));
    const code = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
    expect(code).toBeDefined();
    const file = join(ROOT, `.readme-embedding-${process.pid}.ts`);
    writeFileSync(file, code!);
    try {
      const tsx = join(ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs');
      const out = execFileSync(process.execPath, [tsx, file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
      const halted = out.match(/\{ kind: 'halted', exitCode: 0 \}/g) ?? [];
      expect(halted).toHaveLength(2);
      expect(out).toMatch(/present: \d+/);
    } finally {
      rmSync(file, { force: true });
    }
  }, 180_000);
});
