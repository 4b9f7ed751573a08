/**
 * asm — assemble a BV32 source file into a guest image (.bvx).
 *
 *   npx tsx tools/asm <prog.s> [-o prog.bvx] [--listing [file]] [--symbols]
 *
 * `--listing` prints the listing to stdout, or writes it to `file` (`--listing=file` also works;
 * the separate form takes the next argument only after the input has been named).
 * `--symbols` prints the symbol table to stdout.
 * Exit codes: 0 image written, 1 assembly or I/O error (message, source line and caret on stderr),
 * 2 bad usage.
 */
import { writeFileSync } from 'node:fs';
import { AssemblyError, assembleFile, formatListing, type AssembleResult } from '../guest-isa/assembler.ts';
import { BvError } from '../guest-isa/errors.ts';
import { encodeImage } from '../guest-isa/image.ts';

const USAGE = 'usage: asm <prog.s> [-o <image.bvx>] [--listing [file]] [--symbols]';

interface AsmArguments {
  input: string;
  output: string;
  /** undefined: no listing; '': listing to stdout; otherwise the listing file. */
  listing: string | undefined;
  symbols: boolean;
}

/** `prog.s` → `prog.bvx`; a name without a source extension gets `.bvx` appended. */
function defaultOutputName(input: string): string {
  return /\.(s|S|asm)$/.test(input) ? input.replace(/\.(s|S|asm)$/, '.bvx') : `${input}.bvx`;
}

/** Parses the command line; returns an error message for bad usage. */
function parseArguments(args: readonly string[]): AsmArguments | string {
  let input: string | undefined;
  let output: string | undefined;
  let listing: string | undefined;
  let symbols = false;
  for (let index = 0; index < args.length; index++) {
    const arg = args[index]!;
    if (arg === '-o' || arg === '--output') {
      const value = args[++index];
      if (value === undefined) return `${arg} needs a file name`;
      output = value;
    } else if (arg === '--listing') {
      const next = args[index + 1];
      listing = input !== undefined && next !== undefined && !next.startsWith('-') ? args[++index]! : '';
    } else if (arg.startsWith('--listing=')) {
      listing = arg.slice('--listing='.length);
      if (listing === '') return '--listing= needs a file name';
    } else if (arg === '--symbols') {
      symbols = true;
    } else if (arg.startsWith('-')) {
      return `unknown option '${arg}'`;
    } else if (input === undefined) {
      input = arg;
    } else {
      return `unexpected argument '${arg}' (only one source file can be assembled)`;
    }
  }
  if (input === undefined) return 'missing source file';
  return { input, output: output ?? defaultOutputName(input), listing, symbols };
}

function formatSymbols(result: AssembleResult): string {
  const global = new Set(result.image.symbols.filter((symbol) => symbol.global).map((symbol) => symbol.name));
  const labels = new Set(result.image.symbols.map((symbol) => symbol.name));
  const lines = [...result.symbols].map(([name, value]) => {
    const kind = !labels.has(name) ? '=' : global.has(name) ? 'g' : 'l';
    return `${(value >>> 0).toString(16).padStart(8, '0')} ${kind} ${name}`;
  });
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

function main(args: readonly string[]): number {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const parsed = parseArguments(args);
  if (typeof parsed === 'string') {
    process.stderr.write(`error: ${parsed}\n${USAGE}\n`);
    return 2;
  }
  try {
    const result = assembleFile(parsed.input);
    const bytes = encodeImage(result.image);
    writeFileSync(parsed.output, bytes);
    if (parsed.listing === '') process.stdout.write(formatListing(result));
    else if (parsed.listing !== undefined) writeFileSync(parsed.listing, formatListing(result));
    if (parsed.symbols) process.stdout.write(formatSymbols(result));
    return 0;
  } catch (error) {
    if (error instanceof AssemblyError) {
      process.stderr.write(`error: ${error.format()}\n`);
      return 1;
    }
    if (error instanceof BvError) {
      process.stderr.write(`error: ${error.message}\n`);
      return 1;
    }
    if (error instanceof Error && typeof (error as NodeJS.ErrnoException).syscall === 'string') {
      // A file-system failure writing the output (EACCES, ENOENT directory, …) is a user error.
      process.stderr.write(`error: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}

process.exitCode = main(process.argv.slice(2));
