/**
 * disasm — print an annotated listing of a BV32 guest image.
 *
 *   npx tsx tools/disasm <image.bvx> [--no-symbols]
 *
 * Exit codes: 0 listing printed, 1 the image could not be read or is invalid, 2 bad usage.
 */
import { BvError } from '../guest-isa/errors.ts';
import { disassembleImage } from '../guest-isa/disassembler.ts';
import { loadImageFile } from '../guest-isa/image.ts';

const USAGE = 'usage: disasm <image.bvx> [--no-symbols]';

interface DisasmArguments {
  path: string;
  symbols: boolean;
}

/** Parses the command line; returns an error message for bad usage. */
function parseArguments(args: readonly string[]): DisasmArguments | string {
  let path: string | undefined;
  let symbols = true;
  for (const arg of args) {
    if (arg === '--no-symbols') symbols = false;
    else if (arg.startsWith('-') && arg !== '-') return `unknown option '${arg}'`;
    else if (path === undefined) path = arg;
    else return `unexpected argument '${arg}' (only one image can be listed)`;
  }
  if (path === undefined) return 'missing image path';
  return { path, symbols };
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
    const image = loadImageFile(parsed.path);
    process.stdout.write(disassembleImage(image, { symbols: parsed.symbols }));
    return 0;
  } catch (error) {
    if (error instanceof BvError) {
      process.stderr.write(`error: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}

process.exitCode = main(process.argv.slice(2));
