#!/usr/bin/env node
/**
 * bytevisor TOOL [ARGS…] — runs one of the command-line tools (tools/TOOL.ts) from any directory.
 *
 *   /path/to/bytevisor/tools/bytevisor.mjs run prog.s --stats
 *   node /path/to/bytevisor/tools/bytevisor.mjs asm prog.s -o prog.bvx
 *
 * `npx tsx tools/run …` only works inside the repository: npx looks for tsx in the current
 * directory's node_modules (elsewhere it offers to download one, and fails when it may not ask).
 * This launcher loads tsx from the checkout it belongs to, with the checkout's tsconfig.json
 * whatever the current directory holds, then runs the tool with the remaining arguments. Paths
 * in those arguments stay relative to the current directory. Plain JavaScript, so that Node can
 * run it before any TypeScript loader is registered.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The tools this launcher runs: tools/NAME.ts, each a command with its own --help or usage. */
export const TOOLS = ['asm', 'ctl', 'disasm', 'gen-spec', 'host', 'inject', 'report', 'run', 'snapshot'];

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const USAGE = `usage: bytevisor.mjs <${TOOLS.join(' | ')}> [arguments...]`;

const [name, ...rest] = process.argv.slice(2);
if (name === undefined || name === '--help' || name === '-h') {
  (name === undefined ? process.stderr : process.stdout).write(
    `${USAGE}\n\nRuns tools/<tool>.ts of ${root} from any directory; see docs/run.md.\n`,
  );
  process.exit(name === undefined ? 2 : 0);
}
if (!TOOLS.includes(name)) {
  process.stderr.write(`error: unknown tool '${name}' (tools: ${TOOLS.join(', ')})\n${USAGE}\n`);
  process.exit(2);
}

let register;
try {
  ({ register } = await import('tsx/esm/api'));
} catch {
  process.stderr.write(`error: cannot load tsx from ${join(root, 'node_modules')}: run 'npm install' in ${root} first\n`);
  process.exit(1);
}
const tsconfig = join(root, 'tsconfig.json');
register(existsSync(tsconfig) ? { tsconfig } : {});
const tool = join(here, `${name}.ts`);
// The tools read their arguments from process.argv.slice(2), as when run as `tsx tools/NAME.ts`.
process.argv = [process.argv[0], tool, ...rest];
await import(pathToFileURL(tool).href);
