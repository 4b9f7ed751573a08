/**
 * Assembly errors: every one names the file, line and column of the offending token and can
 * render itself with the source line and a caret under that column.
 */
import { BvError } from '../errors.ts';

/** Stable codes of assembly errors (all BV_ASM_*). */
export type AssemblyErrorCode =
  | 'BV_ASM_SYNTAX'
  | 'BV_ASM_BAD_NUMBER'
  | 'BV_ASM_BAD_STRING'
  | 'BV_ASM_BAD_ESCAPE'
  | 'BV_ASM_UNKNOWN_MNEMONIC'
  | 'BV_ASM_UNKNOWN_DIRECTIVE'
  | 'BV_ASM_OPERAND_COUNT'
  | 'BV_ASM_BAD_REGISTER'
  | 'BV_ASM_BAD_CSR'
  | 'BV_ASM_BAD_OPERAND'
  | 'BV_ASM_RANGE'
  | 'BV_ASM_TARGET_RANGE'
  | 'BV_ASM_MISALIGNED'
  | 'BV_ASM_UNDEFINED_SYMBOL'
  | 'BV_ASM_DUPLICATE_SYMBOL'
  | 'BV_ASM_CIRCULAR'
  | 'BV_ASM_NOT_CONSTANT'
  | 'BV_ASM_DIV_ZERO'
  | 'BV_ASM_ORG_BACKWARDS'
  | 'BV_ASM_SECTION'
  | 'BV_ASM_BSS_CONTENT'
  | 'BV_ASM_INCLUDE'
  | 'BV_ASM_INCLUDE_CYCLE'
  | 'BV_ASM_INCLUDE_DEPTH'
  | 'BV_ASM_MACRO'
  | 'BV_ASM_ENTRY'
  | 'BV_ASM_READ';

/** One line of source as the assembler sees it (after include and macro expansion). */
export interface SourceLine {
  file: string;
  /** 1-based line number in `file`. */
  line: number;
  /** The text of the line (for macro bodies: after parameter substitution). */
  text: string;
  /** Where a macro expansion came from, appended to error messages. */
  expansion?: string;
}

/** An assembly failure, located at a file, line and column (format() adds the source line and a caret). */
export class AssemblyError extends BvError {
  /** The message without the `file:line:column: ` prefix. */
  readonly detail: string;

  constructor(
    code: AssemblyErrorCode,
    detail: string,
    /** The source file of the error. */
    readonly file: string,
    /** 1-based; 0 when the error is about the file as a whole. */
    readonly line: number,
    /** 1-based; 0 when the error has no column. */
    readonly column: number,
    /** The offending source line ('' when there is none). */
    readonly sourceLine: string,
  ) {
    super(code, line > 0 ? `${file}:${line}:${column}: ${detail}` : `${file}: ${detail}`);
    this.detail = detail;
  }

  /** The message, then the source line and a caret under the column (tabs kept so it lines up). */
  format(): string {
    if (this.line === 0 || this.column === 0) return this.message;
    const prefix = this.sourceLine.slice(0, this.column - 1).replace(/[^\t]/g, ' ');
    return `${this.message}\n    ${this.sourceLine}\n    ${prefix}^`;
  }
}

/** Throws an AssemblyError positioned at `column` of `at`. */
export function fail(code: AssemblyErrorCode, detail: string, at: SourceLine, column: number): never {
  const suffix = at.expansion ? ` (${at.expansion})` : '';
  throw new AssemblyError(code, detail + suffix, at.file, at.line, column, at.text);
}
