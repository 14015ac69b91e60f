// The token vocabulary of .lrk. The parser, the TextMate grammar generator and the formatter all
// read these definitions, so the highlighter cannot drift from the parser.
import { createToken, Lexer, type TokenType } from "./chevrotain.js";

export const Identifier = createToken({
  name: "Identifier",
  pattern: /[A-Za-z_][A-Za-z0-9_]*/,
  label: "a name",
});

/** Hard keywords are reserved: they can never name anything. */
const hard = (word: string): TokenType =>
  createToken({
    name: cap(word),
    pattern: new RegExp(word),
    longer_alt: Identifier,
    label: `\`${word}\``,
  });

/**
 * Soft keywords start a declaration or a clause, but stay usable as names elsewhere: `in` is the
 * conventional name of a Linear's input width, `step` is the optimizer step counter, and a
 * parameter may well be called `data` or `every`. They match wherever the grammar accepts an
 * Identifier (token categories), and only act as keywords where the grammar asks for them.
 */
const soft = (word: string): TokenType =>
  createToken({
    name: cap(word),
    pattern: new RegExp(word),
    longer_alt: Identifier,
    categories: [Identifier],
    label: `\`${word}\``,
  });

function cap(word: string): string {
  return word[0]!.toUpperCase() + word.slice(1);
}

// Hard keywords.
export const Import = hard("import");
export const Const = hard("const");
export const Let = hard("let");
export const For = hard("for");
export const If = hard("if");
export const Else = hard("else");
export const Return = hard("return");
export const True = hard("true");
export const False = hard("false");
export const And = hard("and");
export const Or = hard("or");
export const Not = hard("not");

// Soft keywords: declarations.
export const Model = soft("model");
export const Adapter = soft("adapter");
export const Optimizer = soft("optimizer");
export const Quantizer = soft("quantizer");
export const Budget = soft("budget");
export const Train = soft("train");
export const Data = soft("data");
export const Param = soft("param");
export const State = soft("state");
export const Regularize = soft("regularize");
// Soft keywords: clauses.
export const As = soft("as");
export const In = soft("in");
export const On = soft("on");
export const With = soft("with");
export const Over = soft("over");
export const By = soft("by");
export const Where = soft("where");
export const Refresh = soft("refresh");
export const Every = soft("every");
export const At = soft("at");
export const Step = soft("step");
// Soft keywords: train-block settings.
export const Init = soft("init");
export const InitAdapters = soft("init_adapters");
export const InitRename = soft("init_rename");
export const Loss = soft("loss");
export const Freeze = soft("freeze");
export const Adapt = soft("adapt");
export const Optimize = soft("optimize");
export const Quantize = soft("quantize");
export const Steps = soft("steps");
export const Batch = soft("batch");
export const Schedule = soft("schedule");
export const Seed = soft("seed");
export const Clip = soft("clip");
export const FrozenStorage = soft("frozen_storage");
export const Eval = soft("eval");
export const Checkpoint = soft("checkpoint");

export const hardKeywords = [Import, Const, Let, For, If, Else, Return, True, False, And, Or, Not];
export const declarationKeywords = [
  Model,
  Adapter,
  Optimizer,
  Quantizer,
  Budget,
  Train,
  Data,
  Param,
  State,
  Regularize,
];
export const clauseKeywords = [As, In, On, With, Over, By, Where, Refresh, Every, At, Step];
export const trainKeywords = [
  Init,
  InitAdapters,
  InitRename,
  Loss,
  Freeze,
  Adapt,
  Optimize,
  Quantize,
  Steps,
  Batch,
  Schedule,
  Seed,
  Clip,
  FrozenStorage,
  Eval,
  Checkpoint,
];
// Longest first, so that `init` is not lexed as `in` followed by an identifier tail.
const keywords = [
  ...hardKeywords,
  ...declarationKeywords,
  ...clauseKeywords,
  ...trainKeywords,
].sort((a, b) => keywordWord(b).length - keywordWord(a).length);

/** The spelling of a keyword token (its pattern is the word itself). */
export function keywordWord(token: TokenType): string {
  return (token.PATTERN as RegExp).source;
}

// Literals. An unterminated string still lexes (as a string) so the parse goes on; the lexer
// pass reports it.
export const StringLiteral = createToken({
  name: "StringLiteral",
  pattern: Lexer.NA,
  label: "a string",
});
export const TerminatedString = createToken({
  name: "TerminatedString",
  pattern: /"(?:[^"\\\r\n]|\\.)*"/,
  categories: [StringLiteral],
  label: "a string",
});
export const UnterminatedString = createToken({
  name: "UnterminatedString",
  pattern: /"(?:[^"\\\r\n]|\\.)*/,
  categories: [StringLiteral],
  label: "a string",
});
export const NumberLiteral = createToken({
  name: "NumberLiteral",
  pattern: Lexer.NA,
  label: "a number",
});
export const FloatLiteral = createToken({
  name: "FloatLiteral",
  pattern: /\d(?:_?\d)*(?:\.\d(?:_?\d)*(?:[eE][+-]?\d+)?|[eE][+-]?\d+)/,
  categories: [NumberLiteral],
  label: "a number",
});
export const IntLiteral = createToken({
  name: "IntLiteral",
  pattern: /\d(?:_?\d)*/,
  categories: [NumberLiteral],
  label: "an integer",
});

// Comments go to their own group: the parser never sees them, the formatter keeps them.
export const LineComment = createToken({
  name: "LineComment",
  pattern: /\/\/[^\r\n]*/,
  group: "comments",
});
export const BlockComment = createToken({
  name: "BlockComment",
  pattern: /\/\*[\s\S]*?\*\//,
  group: "comments",
  line_breaks: true,
});
export const UnterminatedBlockComment = createToken({
  name: "UnterminatedBlockComment",
  pattern: /\/\*[\s\S]*/,
  group: "comments",
  line_breaks: true,
});

export const WhiteSpace = createToken({
  name: "WhiteSpace",
  pattern: /[ \t\r\n\f\v\uFEFF]+/,
  group: Lexer.SKIPPED,
  line_breaks: true,
});

const punct = (name: string, text: string, pattern?: RegExp): TokenType =>
  createToken({
    name,
    pattern: pattern ?? new RegExp(text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")),
    label: `\`${text}\``,
  });

/** `^T` is postfix transpose; `^` followed by anything else is a power. Write `x ^ T` for a power of a dim named T. */
export const Transpose = createToken({
  name: "Transpose",
  pattern: {
    exec: (text: string, offset: number) => {
      if (text.charCodeAt(offset) !== 94 /* ^ */ || text.charCodeAt(offset + 1) !== 84 /* T */)
        return null;
      const next = text[offset + 2];
      if (next !== undefined && /[A-Za-z0-9_]/.test(next)) return null;
      return ["^T"] as unknown as RegExpExecArray;
    },
  },
  start_chars_hint: ["^"],
  line_breaks: false,
  label: "`^T`",
});
export const Arrow = punct("Arrow", "->");
export const PlusAssign = punct("PlusAssign", "+=");
export const MinusAssign = punct("MinusAssign", "-=");
export const StarAssign = punct("StarAssign", "*=");
export const SlashAssign = punct("SlashAssign", "/=");
export const EqEq = punct("EqEq", "==");
export const NotEq = punct("NotEq", "!=");
export const LtEq = punct("LtEq", "<=");
export const GtEq = punct("GtEq", ">=");
export const Lt = punct("Lt", "<");
export const Gt = punct("Gt", ">");
export const Equals = punct("Equals", "=");
export const Ellipsis = punct("Ellipsis", "...");
export const DotDotEq = punct("DotDotEq", "..=");
export const DotDot = punct("DotDot", "..");
export const Dot = punct("Dot", ".");
export const DoubleStar = punct("DoubleStar", "**");
export const Star = punct("Star", "*");
export const Plus = punct("Plus", "+");
export const Minus = punct("Minus", "-");
export const Slash = punct("Slash", "/");
export const Percent = punct("Percent", "%");
export const Caret = punct("Caret", "^");
export const AtSign = punct("AtSign", "@");
export const LParen = punct("LParen", "(");
export const RParen = punct("RParen", ")");
export const LBracket = punct("LBracket", "[");
export const RBracket = punct("RBracket", "]");
export const LCurly = punct("LCurly", "{");
export const RCurly = punct("RCurly", "}");
export const Comma = punct("Comma", ",");
export const Semicolon = punct("Semicolon", ";");
export const Colon = punct("Colon", ":");
/**
 * Any other character: lexed so that the parser reports it in place rather than the lexer dropping it.
 * Its start characters are given as a hint: Chevrotain cannot analyze a complement set (`[^\s]`)
 * for its first-character table, and without the table the lexer tried every pattern at every
 * character (a sixth of `lrkc build`'s CPU). With it, a character tries only the patterns that can
 * start with it, Unknown still last. The table has an entry per code unit below 256 and one per
 * run of 255 above (Chevrotain's `charCodeToOptimizedIndex`): every code unit below 256 and every
 * 128th above reach every entry (tests/reliability/depth.test.ts lexes every code unit both ways).
 */
const everyTableEntry = Array.from({ length: 256 + (0x10000 - 256) / 128 }, (_, k) =>
  k < 256 ? k : 256 + (k - 256) * 128,
);
export const Unknown = createToken({
  name: "Unknown",
  pattern: /[^\s]/,
  start_chars_hint: everyTableEntry,
  label: "an unexpected character",
});

/** Order matters: longer and more specific patterns first. */
export const allTokens: TokenType[] = [
  WhiteSpace,
  LineComment,
  BlockComment,
  UnterminatedBlockComment,
  TerminatedString,
  UnterminatedString,
  FloatLiteral,
  IntLiteral,
  ...keywords,
  Identifier,
  Transpose,
  Arrow,
  PlusAssign,
  MinusAssign,
  StarAssign,
  SlashAssign,
  EqEq,
  NotEq,
  LtEq,
  GtEq,
  Lt,
  Gt,
  Equals,
  Ellipsis,
  DotDotEq,
  DotDot,
  Dot,
  DoubleStar,
  Star,
  Plus,
  Minus,
  Slash,
  Percent,
  Caret,
  AtSign,
  LParen,
  RParen,
  LBracket,
  RBracket,
  LCurly,
  RCurly,
  Comma,
  Semicolon,
  Colon,
  StringLiteral,
  NumberLiteral,
  Unknown,
];

/** Every keyword, hard and soft, with its spelling: the TextMate grammar is generated from this. */
export const keywordTable = {
  hard: hardKeywords.map(keywordWord),
  declaration: declarationKeywords.map(keywordWord),
  clause: clauseKeywords.map(keywordWord),
  train: trainKeywords.map(keywordWord),
};
