/**
 * Shared pieces of the command-line tools: argument parsing with clear errors, size and count
 * parsing, the one-line `error: ...` report, aligned tables, byte formatting and a progress bar
 * that only draws on a terminal.
 *
 * A tool's main returns an exit code; runTool prints typed errors as one line (never a stack
 * trace) and sets process.exitCode.
 */
import { AssemblyError } from '../guest-isa/assembler.ts';
import { BvError } from '../guest-isa/errors.ts';
import { compileAtFirstCall } from '../kernel/v8-tuning.ts';

/** Bad command line: the tool prints the message and its usage line, and exits with 2. */
export class UsageError extends BvError {
  constructor(message: string) {
    super('BV_USAGE', message);
  }
}

export const USAGE_EXIT_CODE = 2;

export interface ArgumentSpec {
  /** Options without a value, e.g. `--stats`, `-h`. */
  flags?: readonly string[];
  /** Options that take a value: `--mem 64M` or `--mem=64M`. */
  values?: readonly string[];
  /** Collect everything after `--` as `rest` (otherwise `--` is an error). */
  restAfterDoubleDash?: boolean;
}

/** The parsed command line: options by name, positionals in order, and what followed `--`. */
export class ParsedArguments {
  constructor(
    private readonly flagSet: ReadonlySet<string>,
    private readonly valueMap: ReadonlyMap<string, string>,
    readonly positionals: readonly string[],
    readonly rest: readonly string[],
  ) {}

  flag(name: string): boolean {
    return this.flagSet.has(name);
  }

  /** The value of an option (the last one when repeated), or undefined when absent. */
  value(name: string): string | undefined {
    return this.valueMap.get(name);
  }
}

/** Splits argv by `spec`; throws UsageError for an unknown option or a missing value. */
export function parseArguments(argv: readonly string[], spec: ArgumentSpec): ParsedArguments {
  const flags = new Set(spec.flags ?? []);
  const valued = new Set(spec.values ?? []);
  const seenFlags = new Set<string>();
  const values = new Map<string, string>();
  const positionals: string[] = [];
  let rest: string[] = [];
  for (let index = 0; index < argv.length; index++) {
    const arg = argv[index]!;
    if (arg === '--') {
      if (!spec.restAfterDoubleDash) throw new UsageError(`unexpected '--'`);
      rest = argv.slice(index + 1);
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      positionals.push(arg);
      continue;
    }
    const equals = arg.indexOf('=');
    const name = equals > 0 ? arg.slice(0, equals) : arg;
    if (flags.has(name)) {
      if (equals > 0) throw new UsageError(`${name} does not take a value`);
      seenFlags.add(name);
    } else if (valued.has(name)) {
      const value = equals > 0 ? arg.slice(equals + 1) : argv[++index];
      // An empty value is a value (`--input ''`: no console input); parsers of numbers and sizes refuse it.
      if (value === undefined) throw new UsageError(`${name} needs a value`);
      values.set(name, value);
    } else {
      throw new UsageError(`unknown option '${name}'`);
    }
  }
  return new ParsedArguments(seenFlags, values, positionals, rest);
}

const SIZE_UNITS: Readonly<Record<string, number>> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

export interface SizeLimits {
  /** The size must be a multiple of this many bytes. */
  multipleOf?: number;
  min?: number;
  max?: number;
}

/**
 * Parses a byte size: `4096`, `64K`, `64M`, `1G` (binary units; `KiB`, `MB`, `m` also accepted).
 * `what` names the option in errors.
 */
export function parseSize(text: string, what: string, limits: SizeLimits = {}): number {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`${what}: '${text}' is not a size (examples: 4096, 64K, 64M, 1G)`);
  const bytes = Number(match[1]) * SIZE_UNITS[match[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`${what}: '${text}' is not a whole number of bytes`);
  if (limits.multipleOf !== undefined && bytes % limits.multipleOf !== 0) {
    throw new UsageError(`${what} must be a multiple of ${formatBytes(limits.multipleOf)}, got ${text} (${bytes} bytes)`);
  }
  if (limits.min !== undefined && bytes < limits.min) throw new UsageError(`${what} must be at least ${formatBytes(limits.min)}, got ${text}`);
  if (limits.max !== undefined && bytes > limits.max) throw new UsageError(`${what} must be at most ${formatBytes(limits.max)}, got ${text}`);
  return bytes;
}

/** Parses a non-negative integer (`_` separators allowed: `1_000_000`) within [min, max]. */
export function parseInteger(text: string, what: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+(_\d+)*$/.test(text)) throw new UsageError(`${what}: '${text}' is not a whole number`);
  const value = Number(text.replaceAll('_', ''));
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`${what} must be between ${min} and ${max}, got ${text}`);
  }
  return value;
}

/** `4096` → `4 KiB`, `1572864` → `1.5 MiB`, `100` → `100 B`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || Number.isInteger(value) ? 0 : value < 10 ? 2 : 1;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

/** The text after `error: ` for an error: assembly errors add their source line and a caret. */
export function describeError(error: unknown): string {
  if (error instanceof AssemblyError) return error.format();
  if (error instanceof Error) return error.message;
  return String(error);
}

/** True for errors a tool reports as one line: typed errors and file-system failures. */
export function isReportableError(error: unknown): error is Error {
  return error instanceof BvError || (error instanceof Error && typeof (error as NodeJS.ErrnoException).syscall === 'string');
}

/** Writes `error: <message>` (one line, plus source and caret for assembly errors). */
export function printError(error: unknown, stream: { write(text: string): unknown } = process.stderr): void {
  stream.write(`error: ${describeError(error)}\n`);
}

export interface ToolOptions {
  /** The usage line printed after a UsageError. */
  usage: string;
  /** Exit code for other reportable errors (BvError, file-system errors); default 1. */
  errorExitCode?: number;
}

/**
 * Runs a tool's main and sets process.exitCode: a UsageError prints the message and the usage
 * line (exit 2); any other BvError or file-system error prints one `error:` line (errorExitCode).
 * Anything else is a bug in the tool and propagates with its stack trace.
 */
export async function runTool(main: (argv: readonly string[]) => number | Promise<number>, options: ToolOptions): Promise<void> {
  // Before the tool's work: its rare operations (forks, snapshot pauses, API requests) then run
  // as baseline code from their first call (kernel/v8-tuning.ts).
  compileAtFirstCall();
  // A reader that stops early (`tools/run … | head`) is not an error: end quietly.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (error) {
    if (error instanceof UsageError) {
      printError(error);
      process.stderr.write(`${options.usage}\n`);
      process.exitCode = USAGE_EXIT_CODE;
    } else if (isReportableError(error)) {
      printError(error);
      process.exitCode = options.errorExitCode ?? 1;
    } else {
      throw error;
    }
  }
}

export interface TableOptions {
  /** Right-align these columns (default: every column whose body cells all look numeric). */
  rightAligned?: readonly boolean[];
  /** Spaces between columns (default 2). */
  gap?: number;
  /** Prefix for every line (default ''). */
  indent?: string;
}

const NUMERIC_CELL = /^[-+]?[\d,._]+(\s*(%|[KMGT]i?B|B|ms|s|x))?$/;

/** Formats rows (the first is the header when there is more than one) as aligned columns. */
export function formatTable(rows: readonly (readonly string[])[], options: TableOptions = {}): string {
  if (rows.length === 0) return '';
  const columns = Math.max(...rows.map((row) => row.length));
  const widths = Array.from({ length: columns }, (_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  const body = rows.length > 1 ? rows.slice(1) : rows;
  const right =
    options.rightAligned ??
    Array.from({ length: columns }, (_, column) => body.every((row) => (row[column] ?? '') === '' || NUMERIC_CELL.test(row[column]!)));
  const gap = ' '.repeat(options.gap ?? 2);
  const indent = options.indent ?? '';
  return rows
    .map((row) => indent + Array.from({ length: columns }, (_, column) => {
      const cell = row[column] ?? '';
      return right[column] ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!);
    }).join(gap).trimEnd())
    .join('\n') + '\n';
}

/** Groups thousands: 1234567 → `1,234,567`. */
export function formatCount(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}

interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** How to print done/total: as byte sizes or as plain counts (default). */
  unit?: 'bytes' | 'count';
  /** Where to draw (default process.stderr). Nothing is drawn unless it is a TTY. */
  stream?: ProgressStream;
  /** Minimum milliseconds between redraws (default 100). */
  intervalMs?: number;
}

/**
 * A one-line progress bar redrawn in place (`label [#####-----]  45%  12 MiB / 27 MiB`). It draws
 * only when the stream is a terminal: in a pipe, a file or a test it writes nothing at all.
 */
export class ProgressBar {
  private readonly stream: ProgressStream;
  private readonly enabled: boolean;
  private readonly unit: 'bytes' | 'count';
  private readonly intervalMs: number;
  private lastDraw = -Infinity;
  private drawn = false;

  constructor(private readonly label: string, private readonly total: number, options: ProgressOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.enabled = this.stream.isTTY === true;
    this.unit = options.unit ?? 'count';
    this.intervalMs = options.intervalMs ?? 100;
  }

  /** Records progress; redraws when enough time has passed since the last draw. */
  update(done: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDraw < this.intervalMs && done < this.total) return;
    this.lastDraw = now;
    this.draw(done);
  }

  /** Draws the final state and ends the line. */
  finish(): void {
    if (!this.enabled) return;
    this.draw(this.total);
    this.stream.write('\n');
    this.drawn = false;
  }

  private draw(done: number): void {
    const fraction = this.total > 0 ? Math.min(1, Math.max(0, done / this.total)) : 1;
    const amount = this.unit === 'bytes' ? `${formatBytes(done)} / ${formatBytes(this.total)}` : `${formatCount(done)} / ${formatCount(this.total)}`;
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
    const room = (this.stream.columns ?? 80) - this.label.length - amount.length - percent.length - 8;
    const width = Math.max(10, Math.min(40, room));
    const filled = Math.round(fraction * width);
    const line = `${this.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${percent}  ${amount}`;
    this.stream.write(`${this.drawn ? '\r' : ''}${line}\x1b[K`);
    this.drawn = true;
  }
}
