/**
 * tools/run's documentation cannot drift from the program: every option the parser accepts is in
 * --help, the usage line and docs/run.md's options table; the option lists tools/run.ts parses
 * are the ones tools/run-options.ts exports; and the tables --stats prints are the ones
 * docs/run.md describes, in the same order.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RUN_FLAGS, RUN_HELP, RUN_OPTIONS, RUN_TWO_VALUE_OPTIONS, RUN_USAGE, RUN_VALUE_OPTIONS, RunExitCode } from '../../tools/run-options.ts';
import { runTool } from './child.ts';

const REPO = join(import.meta.dirname, '..', '..');


/** True when `text` names `option` as a whole word (not as the prefix of a longer option). */
function names(text: string, option: string): boolean {
  const escaped = option.replace(/[-]/g, '\\-');
  return new RegExp(`(^|[\\s\`\\[,|(])${escaped}(?=$|[\\s\`\\],=|)])`, 'm').test(text);
}

/** The section of a markdown document from a heading to the next heading of the same level. */
function section(markdown: string, heading: string): string {
  const start = markdown.indexOf(`\n${heading}\n`);
  expect(start, heading).toBeGreaterThanOrEqual(0);
  const level = heading.split(' ')[0]!;
  const rest = markdown.slice(start + heading.length + 2);
  const end = rest.search(new RegExp(`^${level} `, 'm'));
  return end < 0 ? rest : rest.slice(0, end);
}

const runSource = readFileSync(join(REPO, 'tools/run.ts'), 'utf8');
const runGuide = readFileSync(join(REPO, 'docs/run.md'), 'utf8');

describe('tools/run --help', () => {
  it('names every option the parser accepts, and --help prints exactly that text', async () => {
    const outcome = await runTool(['--help']);
    expect(outcome.code).toBe(0);
    expect(outcome.stdout).toBe(`${RUN_HELP}\n`);
    const missing = RUN_OPTIONS.filter((option) => !names(outcome.stdout.slice(RUN_USAGE.length), option));
    expect(missing, 'options the help text does not explain').toEqual([]);
  });

  it('the usage line names every option too (-h is --help)', () => {
    expect(RUN_OPTIONS.filter((option) => option !== '-h' && !names(RUN_USAGE, option))).toEqual([]);
  });

  it('tools/run.ts parses exactly the options tools/run-options.ts lists', () => {
    // The parser takes its lists from run-options.ts; any other option literal it reads must be in them.
    expect(runSource).toMatch(/parseArguments\(argv, \{ flags: RUN_FLAGS, values: RUN_VALUE_OPTIONS,/);
    const read = new Set<string>();
    for (const match of runSource.matchAll(/(?:flag|value|takeTwoValueFlag)\((?:argv, )?'(-[-a-z]+)'/g)) read.add(match[1]!);
    expect(read.size).toBeGreaterThan(10);
    expect([...read].filter((option) => !RUN_OPTIONS.includes(option))).toEqual([]);
    for (const option of RUN_TWO_VALUE_OPTIONS) expect(read).toContain(option);
    expect(new Set(RUN_OPTIONS).size).toBe(RUN_FLAGS.length + RUN_VALUE_OPTIONS.length + RUN_TWO_VALUE_OPTIONS.length);
  });

  it("docs/run.md's options table and synopsis name every option", () => {
    const options = section(runGuide, '## Options');
    expect(RUN_OPTIONS.filter((option) => !names(options, option))).toEqual([]);
    const synopsis = runGuide.slice(0, runGuide.indexOf('\n## '));
    expect(RUN_OPTIONS.filter((option) => option !== '-h' && !names(synopsis, option))).toEqual([]);
  });

  it('documents every exit code the help names', () => {
    const exitCodes = section(runGuide, '## Exit codes');
    for (const code of Object.values(RunExitCode)) expect(exitCodes).toMatch(new RegExp(`^\\| ${code} \\|`, 'm'));
    expect(RUN_HELP).toMatch(/7 the guest ended/);
    expect(RUN_HELP).toMatch(/130 stopped by SIGINT; 143 stopped by SIGTERM/);
  });
});

/** A table title, without its variable part: `mmu (shadow, …)` → `mmu`, `…, scan 9` → `…`. */
const titleKey = (title: string): string => title.replace(/ \(…\)$| \((shadow|nested)[^)]*\)$/, '').replace(/, scan (\d+|N)$/, '');

/** The titles --stats printed: the lines that are neither rows (indented) nor other messages. */
function printedTitles(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line !== '' && !line.startsWith(' ') && !/^(error|warning|nanokernel|\[kernel\])/.test(line));
}

/** The titles docs/run.md gives in the first column of its --stats table, in order. */
function documentedTitles(): string[] {
  const stats = section(runGuide, '## `--stats`');
  const titles = [...stats.matchAll(/^\| `([^`]+)`/gm)].map((match) => match[1]!);
  expect(titles.length).toBeGreaterThan(5);
  return titles;
}

describe('tools/run --stats against docs/run.md', () => {
  it('prints the six tables the guide describes, in its order', async () => {
    const outcome = await runTool(['examples/hello.s', '--stats']);
    expect(outcome.code).toBe(0);
    const printed = printedTitles(outcome.stderr).map(titleKey);
    expect(printed).toEqual(documentedTitles().map(titleKey).slice(0, 6));
    expect(section(runGuide, '## `--stats`')).toMatch(/Six tables always appear/);
  });

  it('with both large-page policies, also every policy table the guide describes', async () => {
    // A random walk over 16 MiB with 4 KiB pages: T-3 promotes regions and still sees a small one.
    const outcome = await runTool([
      'examples/nanokernel/kernel.s', '--stats', '--promote-hot', '--reclaim-cold', '--large-pages', 'off', '--', 'walker', '16M', 'random', '3',
    ]);
    expect(outcome.code).toBe(0);
    expect(printedTitles(outcome.stderr).map(titleKey)).toEqual(documentedTitles().map(titleKey));
  }, 120_000);
});
