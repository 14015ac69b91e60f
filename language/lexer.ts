// Lexing: Chevrotain's lexer over the token vocabulary, then one pass that
//  - reports unterminated strings and comments and stray characters (and drops the latter, so the
//    parser does not cascade on them),
//  - marks which tokens start a new line outside parentheses and brackets: a newline ends a
//    statement there, so `f\n(x)` is two statements and not a call, with no separators needed,
//  - refuses pathological nesting before the recursive-descent parser could overflow the stack.
import { Lexer, tokenMatcher, type IToken } from "./chevrotain.js";
import * as t from "./tokens.js";
import { error, type Diagnostic } from "./diagnostics.js";
import type { SourceFile } from "./source.js";

/** Deeper nesting of (), [] and {} than this is refused: no real program comes close. */
export const maxNesting = 256;

export interface LrkToken extends IToken {
  /** The token is the first on its line and not inside () or []. */
  startsLine?: boolean;
}

export interface LexResult {
  tokens: LrkToken[];
  comments: IToken[];
  diagnostics: Diagnostic[];
  /** Nesting exceeded maxNesting; the token stream must not be parsed. */
  tooDeep: boolean;
}

/**
 * The Chevrotain lexer, made on first use (≈ 10 ms): a compile whose files all come from the
 * parse cache (language/parse-cache.ts) never lexes.
 */
let chevrotainLexer: InstanceType<typeof Lexer> | undefined;
/** Whether this process made the lexer (tests: a run whose trees were all cached does not). */
export function lexerBuilt(): boolean {
  return chevrotainLexer !== undefined;
}

function lexer(): InstanceType<typeof Lexer> {
  chevrotainLexer ??= new Lexer(t.allTokens, {
    positionTracking: "full",
    // Not `true`: a token Chevrotain cannot optimize would stop lrkc from starting at all; the
    // test that the first-character table covers every token is tests/reliability/depth.test.ts.
    ensureOptimizations: false,
    // The token definitions' own checks find nothing new in definitions that do not change
    // between runs (as the grammar's, in grammar.ts): the tests run them.
    skipValidations: !process.env["VITEST"],
  });
  return chevrotainLexer;
}

const opening = new Set([t.LParen, t.LBracket, t.LCurly]);
const closingFor = new Map([
  [t.RParen, t.LParen],
  [t.RBracket, t.LBracket],
  [t.RCurly, t.LCurly],
]);

export function lex(file: SourceFile): LexResult {
  const result = lexer().tokenize(file.text);
  const diagnostics: Diagnostic[] = [];
  const at = (start: number, end: number) => ({ file, span: { start, end } });

  // The Unknown token catches every character, so Chevrotain's own errors cannot occur; keep the
  // check so a future token change cannot make input vanish silently.
  for (const e of result.errors) {
    diagnostics.push(
      error("E0105", "unexpected character", at(e.offset, e.offset + Math.max(1, e.length))),
    );
  }

  const comments = result.groups["comments"] ?? [];
  for (const c of comments) {
    if (tokenMatcher(c, t.UnterminatedBlockComment)) {
      diagnostics.push(
        error("E0103", "block comment is never closed", at(c.startOffset, c.startOffset + 2), {
          label: "comment starts here",
          help: "close it with `*/`",
        }),
      );
    }
  }

  const tokens: LrkToken[] = [];
  let unknownRun: IToken[] = [];
  const flushUnknown = () => {
    if (unknownRun.length === 0) return;
    const first = unknownRun[0]!;
    const last = unknownRun[unknownRun.length - 1]!;
    const shown = describeChar(first.image);
    diagnostics.push(
      error(
        "E0105",
        unknownRun.length === 1
          ? `unexpected character ${shown}`
          : `${unknownRun.length} unexpected characters, starting with ${shown}`,
        at(first.startOffset, last.endOffset! + 1),
        { help: "remove it; lrk source is plain text" },
      ),
    );
    unknownRun = [];
  };
  for (const tok of result.tokens) {
    if (tokenMatcher(tok, t.Unknown)) {
      const prev = unknownRun[unknownRun.length - 1];
      if (prev && prev.endOffset! + 1 !== tok.startOffset) flushUnknown();
      unknownRun.push(tok);
      continue;
    }
    flushUnknown();
    if (tokenMatcher(tok, t.UnterminatedString)) {
      diagnostics.push(
        error("E0102", "string is never closed", at(tok.startOffset, tok.endOffset! + 1), {
          label: "string starts here",
          help: 'close it with `"` on the same line',
        }),
      );
    }
    tokens.push(tok);
  }
  flushUnknown();

  const tooDeep = markLinesAndNesting(file, tokens, diagnostics);
  return { tokens, comments, diagnostics, tooDeep };
}

function describeChar(ch: string): string {
  const code = ch.codePointAt(0) ?? 0;
  if (code < 32 || code === 127) return `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
  return `\`${ch}\``;
}

function markLinesAndNesting(
  file: SourceFile,
  tokens: LrkToken[],
  diagnostics: Diagnostic[],
): boolean {
  const text = file.text;
  const stack: (typeof t.LParen)[] = [];
  let prevEnd = 0;
  for (const tok of tokens) {
    // the first token starts the first line (a top-level function may open the file)
    const newline = tok === tokens[0] || hasLineBreak(text, prevEnd, tok.startOffset);
    const top = stack[stack.length - 1];
    tok.startsLine = newline && (top === undefined || top === t.LCurly);
    prevEnd = tok.endOffset! + 1;

    if (opening.has(tok.tokenType)) {
      stack.push(tok.tokenType);
      if (stack.length > maxNesting) {
        diagnostics.push(
          error(
            "E0104",
            `brackets are nested more than ${maxNesting} deep`,
            { file, span: { start: tok.startOffset, end: tok.endOffset! + 1 } },
            { help: "split the expression with `let` bindings" },
          ),
        );
        return true;
      }
    } else {
      const open = closingFor.get(tok.tokenType);
      // A mismatched closer is the parser's to report; only pop what it closes.
      if (open !== undefined && stack[stack.length - 1] === open) stack.pop();
    }
  }
  return false;
}

function hasLineBreak(text: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || c === 13) return true;
  }
  return false;
}
