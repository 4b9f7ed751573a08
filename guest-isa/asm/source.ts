/**
 * The source stream: reads files, follows `.include`, records `.macro` definitions and expands
 * macro invocations, and yields one tokenised line at a time. It is a generator so that the
 * assembler meets errors in source order (a syntax error on line 3 is reported before a bad
 * include on line 50).
 */
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { fail, type SourceLine } from './errors.ts';
import { isPunct, lexLine, splitOperands, type Token } from './lexer.ts';

/** One line for the assembler. `tokens` is empty for lines it has nothing to do with. */
export interface FlatLine {
  source: SourceLine;
  tokens: Token[];
}

interface Macro {
  name: string;
  params: string[];
  body: SourceLine[];
}

/** Includes deeper than this are an error (it also stops runaway self-inclusion early). */
export const MAX_INCLUDE_DEPTH = 16;
/** Macro expansions nested deeper than this are an error (a macro that invokes itself). */
export const MAX_MACRO_DEPTH = 64;

const ENDM_LINE = /^\s*\.endm(?![A-Za-z0-9_.$])/i;
const MACRO_LINE = /^\s*\.macro(?![A-Za-z0-9_.$])/i;

/** Number of leading `label:` token pairs. */
export function countLabelTokens(tokens: readonly Token[]): number {
  let index = 0;
  while ((tokens[index]?.kind === 'ident' || tokens[index]?.kind === 'number') && isPunct(tokens[index + 1], ':')) index += 2;
  return index;
}

function splitLines(text: string, file: string): SourceLine[] {
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const lines = body.split(/\r?\n/);
  if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
  return lines.map((lineText, index) => ({ file, line: index + 1, text: lineText }));
}

export class SourceReader {
  private readonly macros = new Map<string, Macro>();
  private expansionCount = 0;

  constructor(
    private readonly readFile: (path: string) => string,
    /** Names a macro may not take (instructions, pseudo-instructions, directives). */
    private readonly isReservedName: (lowerName: string) => boolean,
  ) {}

  *file(text: string, file: string): Generator<FlatLine> {
    yield* this.lines(splitLines(text, file), [file], 0);
  }

  private *lines(lines: readonly SourceLine[], includeStack: readonly string[], macroDepth: number): Generator<FlatLine> {
    let defining: { macro: Macro; line: SourceLine; col: number } | undefined;
    for (const line of lines) {
      if (defining) {
        if (ENDM_LINE.test(line.text)) {
          this.macros.set(defining.macro.name.toLowerCase(), defining.macro);
          defining = undefined;
        } else if (MACRO_LINE.test(line.text)) {
          fail('BV_ASM_MACRO', 'a .macro cannot be defined inside another .macro', line, line.text.search(/\./) + 1);
        } else {
          defining.macro.body.push(line);
        }
        yield { source: line, tokens: [] };
        continue;
      }
      const tokens = lexLine(line);
      const labelCount = countLabelTokens(tokens);
      const head = tokens[labelCount];
      const name = head?.kind === 'ident' ? head.text.toLowerCase() : undefined;
      if (name === '.macro') {
        defining = { macro: this.parseMacroHeader(tokens, labelCount, line), line, col: head!.col };
        yield { source: line, tokens: [] };
      } else if (name === '.endm') {
        fail('BV_ASM_MACRO', '.endm without .macro', line, head!.col);
      } else if (name === '.include') {
        yield { source: line, tokens: tokens.slice(0, labelCount) };
        yield* this.include(tokens, labelCount, line, includeStack, macroDepth);
      } else if (name !== undefined && this.macros.has(name)) {
        yield { source: line, tokens: tokens.slice(0, labelCount) };
        yield* this.expand(this.macros.get(name)!, tokens, labelCount, line, includeStack, macroDepth);
      } else {
        yield { source: line, tokens };
      }
    }
    if (defining) fail('BV_ASM_MACRO', `unclosed .macro '${defining.macro.name}' (missing .endm)`, defining.line, defining.col);
  }

  private parseMacroHeader(tokens: readonly Token[], labelCount: number, line: SourceLine): Macro {
    if (labelCount > 0) fail('BV_ASM_MACRO', 'a label cannot precede .macro', line, tokens[0]!.col);
    const directive = tokens[labelCount]!;
    const nameToken = tokens[labelCount + 1];
    if (nameToken?.kind !== 'ident') fail('BV_ASM_MACRO', '.macro needs a name', line, nameToken?.col ?? directive.end);
    const name = nameToken.text;
    if (this.isReservedName(name.toLowerCase())) {
      fail('BV_ASM_MACRO', `'${name}' is an instruction or directive and cannot be a macro name`, line, nameToken.col);
    }
    if (this.macros.has(name.toLowerCase())) fail('BV_ASM_MACRO', `macro '${name}' is already defined`, line, nameToken.col);
    const params: string[] = [];
    for (let index = labelCount + 2; index < tokens.length; index++) {
      const token = tokens[index]!;
      if (isPunct(token, ',') && params.length > 0 && !isPunct(tokens[index - 1], ',')) continue;
      if (token.kind !== 'ident' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(token.text)) {
        fail('BV_ASM_MACRO', `bad macro parameter '${token.text}'`, line, token.col);
      }
      if (params.includes(token.text)) fail('BV_ASM_MACRO', `duplicate macro parameter '${token.text}'`, line, token.col);
      params.push(token.text);
    }
    return { name, params, body: [] };
  }

  private *include(
    tokens: readonly Token[],
    labelCount: number,
    line: SourceLine,
    includeStack: readonly string[],
    macroDepth: number,
  ): Generator<FlatLine> {
    const directive = tokens[labelCount]!;
    const nameToken = tokens[labelCount + 1];
    if (nameToken?.kind !== 'string') fail('BV_ASM_SYNTAX', '.include needs a file name in double quotes', line, nameToken?.col ?? directive.end);
    const extra = tokens[labelCount + 2];
    if (extra) fail('BV_ASM_SYNTAX', `unexpected '${extra.text}' after the file name`, line, extra.col);
    const name = new TextDecoder().decode(nameToken.bytes);
    const path = isAbsolute(name) ? normalize(name) : join(dirname(line.file), name);
    if (includeStack.includes(path)) {
      fail('BV_ASM_INCLUDE_CYCLE', `include cycle: ${[...includeStack, path].join(' -> ')}`, line, nameToken.col);
    }
    if (includeStack.length > MAX_INCLUDE_DEPTH) {
      fail('BV_ASM_INCLUDE_DEPTH', `includes nested deeper than ${MAX_INCLUDE_DEPTH} levels`, line, nameToken.col);
    }
    let text: string;
    try {
      text = this.readFile(path);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      return fail('BV_ASM_INCLUDE', `cannot read include file '${path}': ${reason}`, line, nameToken.col);
    }
    yield* this.lines(splitLines(text, path), [...includeStack, path], macroDepth);
  }

  private *expand(
    macro: Macro,
    tokens: readonly Token[],
    labelCount: number,
    line: SourceLine,
    includeStack: readonly string[],
    macroDepth: number,
  ): Generator<FlatLine> {
    const nameToken = tokens[labelCount]!;
    if (macroDepth >= MAX_MACRO_DEPTH) {
      fail('BV_ASM_MACRO', `macro expansion nested deeper than ${MAX_MACRO_DEPTH} levels (does '${macro.name}' invoke itself?)`, line, nameToken.col);
    }
    const groups = splitOperands(tokens.slice(labelCount + 1));
    const args = groups.map((group) => {
      if (group.tokens.length === 0) fail('BV_ASM_MACRO', 'missing macro argument', line, group.col);
      return line.text.slice(group.tokens[0]!.col - 1, group.tokens[group.tokens.length - 1]!.end - 1);
    });
    if (args.length !== macro.params.length) {
      fail('BV_ASM_MACRO', `macro '${macro.name}' expects ${macro.params.length} argument(s), got ${args.length}`, line, nameToken.col);
    }
    const unique = String(this.expansionCount++);
    const expansion = `in macro '${macro.name}' expanded at ${line.file}:${line.line}`;
    const expanded = macro.body.map((bodyLine): SourceLine => ({
      file: bodyLine.file,
      line: bodyLine.line,
      expansion,
      // `\\` stays as it is (a string escape); `\()` separates a parameter from following text.
      text: bodyLine.text.replace(/\\(\\|\(\)|@|[A-Za-z_][A-Za-z0-9_]*)/g, (whole, name: string) => {
        if (name === '\\') return whole;
        if (name === '()') return '';
        if (name === '@') return unique;
        const index = macro.params.indexOf(name);
        return index >= 0 ? args[index]! : whole;
      }),
    }));
    yield* this.lines(expanded, includeStack, macroDepth + 1);
  }
}
