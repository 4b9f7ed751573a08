/**
 * gen-spec: rewrites the generated regions of guest-isa/SPEC.md (instruction table, formats,
 * CSRs, causes) from the contract files.
 *
 *   npx tsx tools/gen-spec [--check] [spec.md]
 *
 * Without --check the file is rewritten in place (only if something changed). With --check
 * nothing is written and the exit status is 1 when the file is out of date. The file defaults
 * to guest-isa/SPEC.md in this repository.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BvError } from '../guest-isa/errors.ts';
import { staleGeneratedRegions, updateGeneratedRegions } from '../guest-isa/spec-table.ts';

const DEFAULT_SPEC = fileURLToPath(new URL('../guest-isa/SPEC.md', import.meta.url));
const USAGE = 'usage: npx tsx tools/gen-spec [--check] [spec.md]';

class GenSpecError extends BvError {
  constructor(code: string, message: string) {
    super(code, message);
  }
}

function parseArgs(args: readonly string[]): { check: boolean; path: string } {
  let check = false;
  let path: string | undefined;
  for (const arg of args) {
    if (arg === '--check') check = true;
    else if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (arg.startsWith('-')) throw new GenSpecError('BV_USAGE', `unknown option '${arg}' (${USAGE})`);
    else if (path === undefined) path = arg;
    else throw new GenSpecError('BV_USAGE', `more than one file given (${USAGE})`);
  }
  return { check, path: path ?? DEFAULT_SPEC };
}

function readSpec(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? String(error);
    throw new GenSpecError('BV_SPEC_READ', `cannot read ${path}: ${reason}`);
  }
}

function main(args: readonly string[]): number {
  const { check, path: given } = parseArgs(args);
  const markdown = readSpec(given);
  const path = relative(process.cwd(), given) || given;
  const stale = staleGeneratedRegions(markdown);
  if (check) {
    if (stale.length > 0) {
      console.error(`error: ${path} is out of date (regions: ${stale.join(', ')}); run npx tsx tools/gen-spec`);
      return 1;
    }
    console.log(`${path} is up to date`);
    return 0;
  }
  if (stale.length === 0) {
    console.log(`${path} is up to date`);
    return 0;
  }
  writeFileSync(path, updateGeneratedRegions(markdown));
  console.log(`${path}: regenerated ${stale.join(', ')}`);
  return 0;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof BvError)) throw error;
  console.error(`error: ${error.message}`);
  process.exitCode = error.code === 'BV_USAGE' ? 2 : 1;
}
