/**
 * Splits one source line into tokens. Columns are 1-based so they can go straight into error
 * messages; `end` is the column just after the token, which lets callers slice the original
 * text (macro arguments are taken verbatim that way).
 */
import { fail, type SourceLine } from './errors.ts';

export type TokenKind = 'ident' | 'number' | 'string' | 'local' | 'punct';

export interface Token {
  kind: TokenKind;
  /** The token's text as written (for strings and chars: including the quotes). */
  text: string;
  col: number;
  end: number;
  /** number: the value (chars included); local: the label number. */
  value?: number;
  /** string: the bytes it stands for (UTF-8, escapes applied). */
  bytes?: Uint8Array;
  /** local: `b` (nearest backward) or `f` (nearest forward). */
  direction?: 'b' | 'f';
}

const IDENT_START = /[A-Za-z_.$]/;
const IDENT_PART = /[A-Za-z0-9_.$]/;
/** Longest first, so `>>>` wins over `>>`. */
const PUNCTUATION = ['>>>', '<<', '>>', '(', ')', ',', ':', '=', '+', '-', '*', '/', '%', '&', '|', '^', '~'];

const SIMPLE_ESCAPES: Readonly<Record<string, number>> = { n: 10, t: 9, r: 13, '0': 0, '\\': 92, "'": 39, '"': 34 };

const utf8 = new TextEncoder();

/** Reads the escape starting at `text[index] === '\\'`; returns the byte and the next index. */
function readEscape(text: string, index: number, at: SourceLine, allowHex: boolean): [byte: number, next: number] {
  const letter = text[index + 1];
  if (letter === undefined) fail('BV_ASM_BAD_ESCAPE', 'backslash at end of line', at, index + 1);
  const simple = SIMPLE_ESCAPES[letter];
  if (simple !== undefined) return [simple, index + 2];
  if (letter === 'x' && allowHex) {
    const digits = /^[0-9A-Fa-f]{2}/.exec(text.slice(index + 2));
    if (!digits) fail('BV_ASM_BAD_ESCAPE', 'escape \\x needs two hex digits', at, index + 1);
    return [parseInt(digits[0], 16), index + 4];
  }
  return fail('BV_ASM_BAD_ESCAPE', `unknown escape '\\${letter}'`, at, index + 1);
}

function lexString(text: string, start: number, at: SourceLine): [Token, number] {
  const bytes: number[] = [];
  let index = start + 1;
  for (;;) {
    const char = text[index];
    if (char === undefined) fail('BV_ASM_BAD_STRING', 'unterminated string', at, start + 1);
    if (char === '"') break;
    if (char === '\\') {
      const [byte, next] = readEscape(text, index, at, true);
      bytes.push(byte);
      index = next;
    } else {
      const codePoint = text.codePointAt(index)!;
      const chars = String.fromCodePoint(codePoint);
      bytes.push(...utf8.encode(chars));
      index += chars.length;
    }
  }
  const end = index + 1;
  return [{ kind: 'string', text: text.slice(start, end), col: start + 1, end: end + 1, bytes: Uint8Array.from(bytes) }, end];
}

function lexChar(text: string, start: number, at: SourceLine): [Token, number] {
  let index = start + 1;
  let value: number;
  const char = text[index];
  if (char === undefined || char === "'") fail('BV_ASM_BAD_NUMBER', 'empty character literal', at, start + 1);
  if (char === '\\') {
    [value, index] = readEscape(text, index, at, false);
  } else {
    value = text.codePointAt(index)!;
    index += String.fromCodePoint(value).length;
  }
  if (text[index] !== "'") fail('BV_ASM_BAD_NUMBER', 'character literal must hold exactly one character', at, start + 1);
  const end = index + 1;
  return [{ kind: 'number', text: text.slice(start, end), col: start + 1, end: end + 1, value }, end];
}

function lexNumber(text: string, start: number, at: SourceLine): [Token, number] {
  const rest = text.slice(start);
  const match = /^0[xX][0-9A-Fa-f]+/.exec(rest) ?? /^0[bB][01]+/.exec(rest) ?? /^[0-9]+/.exec(rest)!;
  let end = start + match[0].length;
  const after = text[end];
  const decimal = /^[0-9]+$/.test(match[0]);
  // `1b` / `1f`: a reference to a local numeric label.
  if (decimal && (after === 'b' || after === 'f') && !IDENT_PART.test(text[end + 1] ?? ' ')) {
    return [{ kind: 'local', text: text.slice(start, end + 1), col: start + 1, end: end + 2, value: Number(match[0]), direction: after }, end + 1];
  }
  if (after !== undefined && IDENT_PART.test(after)) {
    while (end < text.length && IDENT_PART.test(text[end]!)) end++;
    fail('BV_ASM_BAD_NUMBER', `malformed number '${text.slice(start, end)}'`, at, start + 1);
  }
  const literal = match[0];
  const value =
    literal.length > 2 && /^0[bB]/.test(literal) ? parseInt(literal.slice(2), 2) : Number(literal);
  if (value > 0xffff_ffff) fail('BV_ASM_BAD_NUMBER', `number ${literal} does not fit in 32 bits`, at, start + 1);
  return [{ kind: 'number', text: literal, col: start + 1, end: end + 1, value }, end];
}

/** Tokenises a line; stops at a `#` or `;` comment. */
export function lexLine(at: SourceLine): Token[] {
  const text = at.text;
  const tokens: Token[] = [];
  let index = 0;
  while (index < text.length) {
    const char = text[index]!;
    if (char === ' ' || char === '\t' || char === '\r' || char === '\f' || char === '\v') {
      index++;
      continue;
    }
    if (char === '#' || char === ';') break;
    let token: Token;
    if (IDENT_START.test(char)) {
      let end = index + 1;
      while (end < text.length && IDENT_PART.test(text[end]!)) end++;
      token = { kind: 'ident', text: text.slice(index, end), col: index + 1, end: end + 1 };
      index = end;
    } else if (char >= '0' && char <= '9') {
      [token, index] = lexNumber(text, index, at);
    } else if (char === '"') {
      [token, index] = lexString(text, index, at);
    } else if (char === "'") {
      [token, index] = lexChar(text, index, at);
    } else {
      const punct = PUNCTUATION.find((candidate) => text.startsWith(candidate, index));
      if (!punct) fail('BV_ASM_SYNTAX', `unexpected character '${char}'`, at, index + 1);
      token = { kind: 'punct', text: punct, col: index + 1, end: index + punct.length + 1 };
      index += punct.length;
    }
    tokens.push(token);
  }
  return tokens;
}

export function isPunct(token: Token | undefined, text: string): boolean {
  return token !== undefined && token.kind === 'punct' && token.text === text;
}

/**
 * Splits tokens at top-level commas (commas inside parentheses do not split). Each group comes
 * with the column where it starts, or, when empty, the column of the comma after it or just
 * after the comma before it (for "missing operand").
 */
export function splitOperands(tokens: readonly Token[]): { tokens: Token[]; col: number }[] {
  if (tokens.length === 0) return [];
  const groups: { tokens: Token[]; col: number }[] = [];
  let current: Token[] = [];
  let currentCol = tokens[0]!.col;
  let depth = 0;
  for (const token of tokens) {
    if (isPunct(token, '(')) depth++;
    if (isPunct(token, ')')) depth--;
    if (depth === 0 && isPunct(token, ',')) {
      groups.push({ tokens: current, col: current[0]?.col ?? token.col });
      current = [];
      currentCol = token.end;
      continue;
    }
    current.push(token);
  }
  groups.push({ tokens: current, col: current[0]?.col ?? currentCol });
  return groups;
}
