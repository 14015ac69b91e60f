// Generates the TextMate grammar of .lrk (editors/vscode/syntaxes/lrk.tmLanguage.json) from the
// lexer's token definitions in language/tokens.ts: every keyword list comes from `keywordTable`,
// and the operator, number and string patterns from the tokens' own regular expressions, so the
// highlighter cannot drift from the parser. A token added to the lexer and not classified here
// makes generation throw.
//
// Run: npm run build && npm run grammar. tests/editor-grammar.test.ts checks that the committed
// JSON equals generateTmLanguage() and tokenizes .lrk with the real TextMate engine.
//
// Every begin/end rule ends by the end of its line, except block comments (which, like the
// lexer's, run until `*/`).
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TokenType } from "chevrotain";
import * as t from "../language/tokens.js";

/** A rule of a TextMate grammar (the subset this generator writes). */
export interface TmRule {
  name?: string;
  contentName?: string;
  match?: string;
  begin?: string;
  end?: string;
  captures?: Record<string, TmRule>;
  beginCaptures?: Record<string, TmRule>;
  endCaptures?: Record<string, TmRule>;
  patterns?: TmRule[];
  include?: string;
}

export interface TmGrammar {
  information_for_contributors: string[];
  name: string;
  scopeName: string;
  fileTypes: string[];
  patterns: TmRule[];
  repository: Record<string, TmRule>;
}

/** Declaration keywords that are followed by the name they define (`model Mlp(...) { }`). */
const definingKeywords = ["model", "adapter", "optimizer", "quantizer", "budget", "train"];
/** Declaration keywords whose name is followed by `:` or `=` (`param A: f32[..]`, `data d = ..`). */
const bindingKeywords = ["data", "param", "state"];
/** Train keywords followed by a selector list (`freeze **`, `adapt blocks.*.attn.{q, v} with ..`). */
const selectorVerbs = ["freeze", "adapt", "optimize", "quantize"];
/** The clause keyword followed by a selector list (`budget rank 96 over blocks.* by ..`). */
const selectorClause = "over";
/** Clause keywords that end a selector list. */
const selectorEnders = ["with", "by", "where"];
const booleanLiterals = ["true", "false"];
const logicalOperators = ["and", "or", "not"];
/**
 * Scalar and element types. The lexer has no token for these (they are identifiers that the
 * checker resolves), so they are listed here.
 */
export const scalarTypes = [
  "f32",
  "f16",
  "bf16",
  "i32",
  "i8",
  "u8",
  "i4",
  "u4",
  "int",
  "float",
  "bool",
  "str",
];

const identifier = "[A-Za-z_][A-Za-z0-9_]*";

/** The regular expression source of a token whose pattern is a RegExp. */
function src(token: TokenType): string {
  const pattern = token.PATTERN;
  if (!(pattern instanceof RegExp)) {
    throw new Error(`token ${token.name} has no RegExp pattern to derive a TextMate rule from`);
  }
  return pattern.source;
}

/** Alternation of token patterns, longest spelling first (`..=` before `..`). */
function alt(tokens: TokenType[]): string {
  const sorted = [...tokens].sort((a, b) => tokenText(b).length - tokenText(a).length);
  return sorted.map(src).join("|");
}

/** A punctuation token's spelling, taken from its label (`` `->` ``). */
function tokenText(token: TokenType): string {
  const label = token.LABEL ?? token.name;
  return label.replace(/^`|`$/g, "");
}

function words(list: readonly string[]): string {
  return [...list].sort((a, b) => b.length - a.length || a.localeCompare(b)).join("|");
}

function subset(what: string, list: readonly string[], of: readonly string[]): string[] {
  for (const word of list) {
    if (!of.includes(word)) {
      throw new Error(`${what}: \`${word}\` is not in keywordTable (language/tokens.ts)`);
    }
  }
  return [...list];
}

/** A hard keyword matches anywhere as a whole word. */
function hardWords(list: readonly string[]): string {
  return `\\b(?:${words(list)})\\b`;
}

/** Characters after which a word is a value, never a keyword: `(in, out)`, `f32[rank, in]`, `^ step`. */
const valueBefore = "[(\\[,:=+\\-*/%^@<>]";

/**
 * A soft keyword is a keyword only where it is not used as a name: not after `.` (member
 * access), an opening bracket, a comma or an operator, and not before `:` (a named argument or
 * parameter: `Linear(in: 4)`, `on param: f32`), `,`, `)`, `]` or an assignment (`step = 0`).
 */
function softWords(list: readonly string[]): string {
  return (
    `(?<![.\\w])(?<!${valueBefore})(?<!${valueBefore} )` +
    `(?:${words(list)})\\b(?!\\s*(?:[:,)\\]]|[-+*/]?=(?!=)))`
  );
}

/** Start of a statement: the start of the line, or just after `;` or `{`. */
const statementStart = "(?:^|(?<=[;{]))[ \\t]*";

// Operators and punctuation, from the lexer's tokens. Transpose is matched by code in the lexer
// (`^T` not followed by an identifier character); its TextMate pattern mirrors that function.
const operatorScopes: [TokenType[], string][] = [
  [[t.Arrow], "keyword.operator.arrow.lrk"],
  [[t.Ellipsis], "keyword.operator.ellipsis.lrk"],
  [[t.DotDotEq, t.DotDot], "keyword.operator.range.lrk"],
  [
    [t.PlusAssign, t.MinusAssign, t.StarAssign, t.SlashAssign],
    "keyword.operator.assignment.compound.lrk",
  ],
  [[t.EqEq, t.NotEq, t.LtEq, t.GtEq, t.Lt, t.Gt], "keyword.operator.comparison.lrk"],
  [[t.Equals], "keyword.operator.assignment.lrk"],
  [[t.AtSign], "keyword.operator.matrix.lrk"],
  // `**` is not an operator (the parser reports "use ^") but it is still arithmetic-looking.
  [
    [t.DoubleStar, t.Star, t.Plus, t.Minus, t.Slash, t.Percent, t.Caret],
    "keyword.operator.arithmetic.lrk",
  ],
  [[t.Dot], "punctuation.accessor.lrk"],
  [[t.Comma], "punctuation.separator.comma.lrk"],
  [[t.Colon], "punctuation.separator.colon.lrk"],
  [[t.Semicolon], "punctuation.terminator.statement.lrk"],
  [[t.LParen], "punctuation.section.parens.begin.lrk"],
  [[t.RParen], "punctuation.section.parens.end.lrk"],
  [[t.LBracket], "punctuation.section.brackets.begin.lrk"],
  [[t.RBracket], "punctuation.section.brackets.end.lrk"],
  [[t.LCurly], "punctuation.section.braces.begin.lrk"],
  [[t.RCurly], "punctuation.section.braces.end.lrk"],
];
const transpose = "\\^T(?![A-Za-z0-9_])";

/** Tokens that are not operators or punctuation, each handled by a dedicated rule below. */
const otherTokens: TokenType[] = [
  t.Identifier,
  t.WhiteSpace,
  t.LineComment,
  t.BlockComment,
  t.UnterminatedBlockComment,
  t.StringLiteral,
  t.TerminatedString,
  t.UnterminatedString,
  t.NumberLiteral,
  t.FloatLiteral,
  t.IntLiteral,
  t.Transpose,
  t.Unknown, // highlighted as invalid.illegal by the fallback rule
];

/** Throws if the lexer has a token this generator does not classify. */
function checkEveryTokenClassified(): void {
  const keywordWords = new Set(Object.values(t.keywordTable).flat());
  const classified = new Set<TokenType>([...otherTokens, ...operatorScopes.flatMap(([ts]) => ts)]);
  for (const token of t.allTokens) {
    if (classified.has(token)) continue;
    if (token.PATTERN instanceof RegExp && keywordWords.has(t.keywordWord(token))) continue;
    throw new Error(
      `token ${token.name} of language/tokens.ts has no TextMate rule: classify it in editors/generate-tmlanguage.ts`,
    );
  }
}

export function generateTmLanguage(): TmGrammar {
  checkEveryTokenClassified();
  const table = t.keywordTable;

  const booleans = subset("boolean literals", booleanLiterals, table.hard);
  const logical = subset("logical operators", logicalOperators, table.hard);
  const control = table.hard.filter((w) => !booleans.includes(w) && !logical.includes(w));
  const defining = subset("defining keywords", definingKeywords, table.declaration);
  const binding = subset("binding keywords", bindingKeywords, table.declaration);
  const verbs = subset("selector verbs", selectorVerbs, table.train);
  const over = subset("selector clause", [selectorClause], table.clause);
  const enders = subset("selector enders", selectorEnders, table.clause);
  const allKeywords = [...table.hard, ...table.declaration, ...table.clause, ...table.train];

  const numberInt = `\\b${src(t.IntLiteral)}\\b`;
  const numberFloat = `\\b(?:${src(t.FloatLiteral)})\\b`;
  const commentPunct = { "1": { name: "punctuation.definition.comment.lrk" } };

  // The selector list after `freeze`/`adapt`/`optimize`/`quantize` (at the start of a train item)
  // or after `over`. It always ends by the end of its line.
  const selectorStart = "(?=[ \\t]+[A-Za-z0-9_{*])";
  // The clause keyword that ends a selector is matched here, whatever comes before it (`.* with`).
  const selectorEnd = `\\b(${words(enders)})\\b|(?=//|/\\*|;|$)`;
  const selectorEndCaptures = { "1": { name: "keyword.other.clause.lrk" } };

  const repository: Record<string, TmRule> = {
    comments: {
      patterns: [
        {
          name: "comment.line.double-slash.lrk",
          match: "(//).*$",
          captures: commentPunct,
        },
        {
          name: "comment.block.lrk",
          begin: "/\\*",
          end: "\\*/",
          beginCaptures: { "0": { name: "punctuation.definition.comment.begin.lrk" } },
          endCaptures: { "0": { name: "punctuation.definition.comment.end.lrk" } },
        },
      ],
    },
    strings: {
      patterns: [
        {
          name: "string.quoted.double.lrk",
          begin: '"',
          // A string is a single line: an unterminated one ends with its line, as in the lexer.
          end: '"|$',
          beginCaptures: { "0": { name: "punctuation.definition.string.begin.lrk" } },
          endCaptures: { "0": { name: "punctuation.definition.string.end.lrk" } },
          patterns: [{ name: "constant.character.escape.lrk", match: "\\\\." }],
        },
      ],
    },
    selectors: {
      patterns: [
        {
          begin: `${statementStart}\\b(${words(verbs)})\\b${selectorStart}`,
          end: selectorEnd,
          endCaptures: selectorEndCaptures,
          beginCaptures: { "1": { name: "keyword.other.train.lrk" } },
          contentName: "meta.selector.lrk",
          patterns: [{ include: "#selector-path" }],
        },
        {
          begin: `(?<![.\\w])(${words(over)})\\b${selectorStart}`,
          end: selectorEnd,
          endCaptures: selectorEndCaptures,
          beginCaptures: { "1": { name: "keyword.other.clause.lrk" } },
          contentName: "meta.selector.lrk",
          patterns: [{ include: "#selector-path" }],
        },
      ],
    },
    "selector-path": {
      patterns: [
        { name: "keyword.operator.glob.lrk", match: alt([t.DoubleStar, t.Star]) },
        { name: "keyword.operator.range.lrk", match: alt([t.DotDotEq, t.DotDot]) },
        { name: "punctuation.separator.path.lrk", match: src(t.Dot) },
        { name: "punctuation.separator.comma.lrk", match: src(t.Comma) },
        { name: "punctuation.section.braces.begin.lrk", match: src(t.LCurly) },
        { name: "punctuation.section.braces.end.lrk", match: src(t.RCurly) },
        { name: "punctuation.section.brackets.begin.lrk", match: src(t.LBracket) },
        { name: "punctuation.section.brackets.end.lrk", match: src(t.RBracket) },
        { name: "constant.numeric.integer.lrk", match: numberInt },
        { name: "variable.other.path.lrk", match: identifier },
      ],
    },
    definitions: {
      patterns: [
        {
          // `model Mlp(...)`, `optimizer adamw(...) on ..`, `train finetune {`. Not `budget rank 96`
          // inside a train block, which is a budget rule and names no definition.
          match: `(?<![.\\w])(${words(defining)})[ \\t]+(${identifier})(?=\\s*(?:\\(|\\{|\\bon\\b|//|/\\*|$))`,
          captures: {
            "1": { patterns: [{ include: "#declaration-keywords" }] },
            "2": { name: "entity.name.type.lrk" },
          },
        },
        {
          // `param A: f32[..]`, `state m = ..`, `data arith = ..`.
          match: `(?<![.\\w])(${words(binding)})[ \\t]+(${identifier})(?=\\s*[:=](?!=))`,
          captures: {
            "1": { patterns: [{ include: "#declaration-keywords" }] },
            "2": { name: "variable.other.definition.lrk" },
          },
        },
        {
          // A member function: `forward(x: f32[B, d]) -> f32[B, d] {`, `update(g) {`, `f(x) = ..`.
          match: `${statementStart}(?!(?:${words(allKeywords)})\\b)(${identifier})(?=\\((?:[^()]|\\((?:[^()]|\\([^()]*\\))*\\))*\\)\\s*(?:->|\\{|=(?!=)))`,
          captures: { "1": { name: "entity.name.function.lrk" } },
        },
      ],
    },
    "declaration-keywords": {
      patterns: table.declaration.map((w) => ({
        name: `storage.type.${w}.lrk`,
        match: `\\b${w}\\b`,
      })),
    },
    keywords: {
      patterns: [
        { name: "constant.language.boolean.lrk", match: hardWords(booleans) },
        { name: "keyword.operator.logical.lrk", match: hardWords(logical) },
        { name: "keyword.control.lrk", match: hardWords(control) },
        ...table.declaration.map((w) => ({ name: `storage.type.${w}.lrk`, match: softWords([w]) })),
        { name: "keyword.other.train.lrk", match: softWords(table.train) },
        { name: "keyword.other.clause.lrk", match: softWords(table.clause) },
      ],
    },
    types: {
      patterns: [{ name: "support.type.lrk", match: `\\b(?:${words(scalarTypes)})\\b` }],
    },
    numbers: {
      patterns: [
        { name: "constant.numeric.float.lrk", match: numberFloat },
        { name: "constant.numeric.integer.lrk", match: numberInt },
      ],
    },
    calls: {
      patterns: [
        {
          match: `(${identifier})(?=\\()`,
          captures: { "1": { name: "entity.name.function.call.lrk" } },
        },
      ],
    },
    identifiers: {
      patterns: [{ name: "variable.other.lrk", match: `\\b${identifier}\\b` }],
    },
    operators: {
      patterns: [
        { name: "keyword.operator.transpose.lrk", match: transpose },
        ...operatorScopes.map(([tokens, name]) => ({ name, match: alt(tokens) })),
      ],
    },
    invalid: {
      // Any other character: the lexer's `Unknown` token, which the parser reports.
      patterns: [{ name: "invalid.illegal.character.lrk", match: "[^\\s\\w]" }],
    },
  };

  return {
    information_for_contributors: [
      "Generated by editors/generate-tmlanguage.ts from language/tokens.ts. Do not edit:",
      "run `npm run build && npm run grammar` instead.",
    ],
    name: "lrk",
    scopeName: "source.lrk",
    fileTypes: ["lrk"],
    // Order matters where two rules match at the same place: the first one listed wins.
    patterns: [
      { include: "#comments" },
      { include: "#strings" },
      { include: "#selectors" },
      { include: "#definitions" },
      { include: "#keywords" },
      { include: "#types" },
      { include: "#numbers" },
      { include: "#calls" },
      { include: "#identifiers" },
      { include: "#operators" },
      { include: "#invalid" },
    ],
    repository,
  };
}

/** Where the generated grammar is committed, relative to the repository root. */
export const tmLanguagePath = "editors/vscode/syntaxes/lrk.tmLanguage.json";

export function tmLanguageJson(): string {
  return JSON.stringify(generateTmLanguage(), null, 2) + "\n";
}

if (process.argv[1]?.endsWith("generate-tmlanguage.js")) {
  // Compiled to dist/editors/generate-tmlanguage.js: the repository root is two levels up.
  const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
  const out = resolve(root, tmLanguagePath);
  // Written as prettier would format it, so that `npm run format:check` agrees with the generator.
  const prettier = await import("prettier");
  const options = (await prettier.resolveConfig(out)) ?? {};
  const text = await prettier.format(tmLanguageJson(), { ...options, parser: "json" });
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, text);
  console.log(`wrote ${tmLanguagePath}`);
}
