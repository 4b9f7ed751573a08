#!/usr/bin/env node
/**
 * `bytevisor SUBCOMMAND [ARGS…]` — the installed package's command (package.json `bin`), run by
 * plain node from the compiled dist/tools/bytevisor-cli.js:
 *
 *   npx bytevisor run node_modules/bytevisor/examples/hello.s
 *   npx bytevisor asm prog.s -o prog.bvx
 *
 * Each subcommand is one of the tools (tools/NAME.ts, compiled to dist/tools/NAME.js): a script
 * that runs when it is imported and reads its arguments from process.argv.slice(2), so this
 * dispatcher sets process.argv to what `node NAME.js ARGS…` would have and imports it. Run
 * through tsx in a checkout (`npx tsx tools/bytevisor-cli.ts run …`) it imports the .ts tools the
 * same way. tools/bytevisor.mjs is the checkout's own launcher (tsx, any tool, any directory).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The subcommands: each a tool of tools/, with the one line `--help` shows for it. */
const SUBCOMMANDS: Readonly<Record<string, string>> = {
  run: 'boot a guest (.s or .bvx) on the standard machine; its exit code is the guest\'s',
  asm: 'assemble a .s file into a .bvx image',
  disasm: 'disassemble a .bvx image, with symbols and segments',
  snapshot: 'inspect, verify and compare checkpoint files',
  host: 'run a host of many VMs from a configuration, with a control API on a Unix socket',
  ctl: 'drive a running host through its control API',
  report: 'write an HTML report (charts, offline) from a timeline a host recorded with --record',
  inject: 'inject memory errors into a running host\'s VM through its control API',
};

const USAGE_EXIT_CODE = 2;
const here = dirname(fileURLToPath(import.meta.url));
// Compiled, the tools are .js files next to this one; through tsx in a checkout, .ts files.
const extension = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
const usage = `usage: bytevisor <${Object.keys(SUBCOMMANDS).join(' | ')}> [arguments...]`;

/** The package's version, from the package.json above this file (tools/ or dist/tools/). */
function packageVersion(): string {
  for (const candidate of [join(here, '..', 'package.json'), join(here, '..', '..', 'package.json')]) {
    if (!existsSync(candidate)) continue;
    const manifest = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
    if (manifest.name === 'bytevisor' && manifest.version !== undefined) return manifest.version;
  }
  return 'unknown';
}

function help(): string {
  const width = Math.max(...Object.keys(SUBCOMMANDS).map((name) => name.length));
  const lines = Object.entries(SUBCOMMANDS).map(([name, line]) => `  ${name.padEnd(width)}  ${line}`);
  return `${usage}\n       bytevisor --help | --version\n\nsubcommands:\n${lines.join('\n')}\n\n` +
    `'bytevisor SUBCOMMAND --help' shows a subcommand's own options.\n`;
}

const [name, ...rest] = process.argv.slice(2);
if (name === undefined) {
  process.stderr.write(help());
  process.exitCode = USAGE_EXIT_CODE;
} else if (name === '--help' || name === '-h' || name === 'help') {
  process.stdout.write(help());
} else if (name === '--version' || name === '-v') {
  process.stdout.write(`bytevisor ${packageVersion()}\n`);
} else if (!Object.hasOwn(SUBCOMMANDS, name)) {
  process.stderr.write(`error: unknown subcommand '${name}' (subcommands: ${Object.keys(SUBCOMMANDS).join(', ')})\n${usage}\n`);
  process.exitCode = USAGE_EXIT_CODE;
} else {
  const tool = join(here, `${name}${extension}`);
  if (!existsSync(tool)) {
    process.stderr.write(`error: subcommand '${name}' is not part of this build (${tool} is missing)\n`);
    process.exitCode = 1;
  } else {
    // The tool sees `node TOOL ARGS…`: its own arguments from process.argv.slice(2).
    process.argv = [process.argv[0]!, tool, ...rest];
    await import(pathToFileURL(tool).href);
  }
}
