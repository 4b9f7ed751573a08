/**
 * Assembler expressions: parsing (C precedence) and evaluation with 32-bit wrap-around.
 * Values are kept as int32; callers compare against ranges and convert with `>>> 0` when they
 * need an address.
 */
import { parseRegister } from '../arch.ts';
import { fail, type SourceLine } from './errors.ts';
import { isPunct, type Token } from './lexer.ts';

export type Expr =
  | { type: 'number'; value: number; col: number }
  | { type: 'symbol'; name: string; display: string; col: number }
  | { type: 'dot'; col: number }
  | { type: 'unary'; op: string; operand: Expr; col: number }
  | { type: 'binary'; op: string; left: Expr; right: Expr; col: number }
  | { type: 'function'; name: 'hi' | 'lo'; argument: Expr; col: number };

/** Binary operators by precedence level (higher binds tighter), as in C. */
const BINARY_PRECEDENCE: ReadonlyMap<string, number> = new Map([
  ['*', 6], ['/', 6], ['%', 6],
  ['+', 5], ['-', 5],
  ['<<', 4], ['>>', 4], ['>>>', 4],
  ['&', 3],
  ['^', 2],
  ['|', 1],
]);

/** Turns a local label reference (`1b`, `1f`) into the internal name of the label it means. */
export type LocalResolver = (token: Token) => string;

class Parser {
  private index = 0;
  constructor(
    private readonly tokens: readonly Token[],
    private readonly at: SourceLine,
    private readonly resolveLocal: LocalResolver,
    private readonly endCol: number,
  ) {}

  parseAll(): Expr {
    const expr = this.parseBinary(1);
    const extra = this.tokens[this.index];
    if (extra) fail('BV_ASM_SYNTAX', `unexpected '${extra.text}' in expression`, this.at, extra.col);
    return expr;
  }

  private peek(): Token | undefined {
    return this.tokens[this.index];
  }

  private parseBinary(minLevel: number): Expr {
    let left = this.parseUnary();
    for (;;) {
      const token = this.peek();
      const level = token?.kind === 'punct' ? BINARY_PRECEDENCE.get(token.text) : undefined;
      if (token === undefined || level === undefined || level < minLevel) return left;
      this.index++;
      const right = this.parseBinary(level + 1);
      left = { type: 'binary', op: token.text, left, right, col: token.col };
    }
  }

  private parseUnary(): Expr {
    const token = this.peek();
    if (token && token.kind === 'punct' && (token.text === '-' || token.text === '~' || token.text === '+')) {
      this.index++;
      return { type: 'unary', op: token.text, operand: this.parseUnary(), col: token.col };
    }
    return this.parsePrimary();
  }

  private parsePrimary(): Expr {
    const token = this.peek();
    if (token === undefined) {
      const last = this.tokens[this.tokens.length - 1];
      return fail('BV_ASM_SYNTAX', 'expected an expression', this.at, last ? last.end : this.endCol);
    }
    this.index++;
    switch (token.kind) {
      case 'number':
        return { type: 'number', value: token.value! | 0, col: token.col };
      case 'local':
        return { type: 'symbol', name: this.resolveLocal(token), display: token.text, col: token.col };
      case 'string':
        return fail('BV_ASM_SYNTAX', 'a string is not allowed in an expression', this.at, token.col);
      case 'ident':
        if (token.text === '.') return { type: 'dot', col: token.col };
        if (parseRegister(token.text) >= 0) {
          return fail('BV_ASM_SYNTAX', `register '${token.text}' cannot be used in an expression`, this.at, token.col);
        }
        return { type: 'symbol', name: token.text, display: token.text, col: token.col };
      case 'punct':
        if (token.text === '(') {
          const inner = this.parseBinary(1);
          const close = this.peek();
          if (!isPunct(close, ')')) {
            fail('BV_ASM_SYNTAX', "missing ')'", this.at, close ? close.col : this.tokens[this.index - 1]!.end);
          }
          this.index++;
          return inner;
        }
        if (token.text === '%') {
          const name = this.peek();
          if (name?.kind === 'ident' && (name.text === 'hi' || name.text === 'lo') && isPunct(this.tokens[this.index + 1], '(')) {
            this.index++;
            const argument = this.parsePrimary();
            return { type: 'function', name: name.text, argument, col: token.col };
          }
          return fail('BV_ASM_SYNTAX', "expected %hi(...) or %lo(...)", this.at, token.col);
        }
        return fail('BV_ASM_SYNTAX', `unexpected '${token.text}' in expression`, this.at, token.col);
    }
  }
}

/**
 * Parses `tokens` as one whole expression. `endCol` positions the error for an empty token
 * list (where the missing expression would start).
 */
export function parseExpression(tokens: readonly Token[], at: SourceLine, resolveLocal: LocalResolver, endCol: number): Expr {
  return new Parser(tokens, at, resolveLocal, endCol).parseAll();
}

/** Thrown during layout when an expression needs a value that is not known yet. */
export class NotYetKnown {
  constructor(readonly symbol: string) {}
}

export interface EvalContext {
  /** The value of a symbol, or throws (NotYetKnown during layout, an AssemblyError at the end). */
  symbol(node: Extract<Expr, { type: 'symbol' }>): number;
  /** The current address (`.`), or throws NotYetKnown. */
  dot(): number;
}

/** Evaluates with 32-bit wrap-around; division by zero is an error at the operator. */
export function evaluate(expr: Expr, context: EvalContext, at: SourceLine): number {
  switch (expr.type) {
    case 'number':
      return expr.value;
    case 'symbol':
      return context.symbol(expr) | 0;
    case 'dot':
      return context.dot() | 0;
    case 'unary': {
      const value = evaluate(expr.operand, context, at);
      return expr.op === '-' ? -value | 0 : expr.op === '~' ? ~value : value;
    }
    case 'function': {
      const value = evaluate(expr.argument, context, at);
      return expr.name === 'hi' ? value >>> 12 : value & 0xfff;
    }
    case 'binary': {
      const left = evaluate(expr.left, context, at);
      const right = evaluate(expr.right, context, at);
      switch (expr.op) {
        case '*': return Math.imul(left, right);
        case '/':
        case '%':
          if (right === 0) fail('BV_ASM_DIV_ZERO', 'division by zero', at, expr.col);
          return (expr.op === '/' ? left / right : left % right) | 0;
        case '+': return (left + right) | 0;
        case '-': return (left - right) | 0;
        // Shift counts are taken modulo 32, as the CPU does.
        case '<<': return left << right;
        case '>>': return left >> right;
        case '>>>': return (left >>> right) | 0;
        case '&': return left & right;
        case '^': return left ^ right;
        case '|': return left | right;
      }
      throw new Error(`unhandled operator ${expr.op}`);
    }
  }
}
