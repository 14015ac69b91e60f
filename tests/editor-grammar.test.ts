// The editor grammar (editors/vscode/syntaxes/lrk.tmLanguage.json), checked with the real
// TextMate engine that VS Code uses: vscode-textmate on top of the vscode-oniguruma wasm.
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import type { IGrammar, IRawGrammar, StateStack } from "vscode-textmate";
import { generateTmLanguage, tmLanguagePath, type TmRule } from "../editors/generate-tmlanguage.js";
import { keywordTable } from "../language/tokens.js";

const require = createRequire(import.meta.url);
const vsctm = require("vscode-textmate") as typeof import("vscode-textmate");
const oniguruma = require("vscode-oniguruma") as typeof import("vscode-oniguruma");

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const committedPath = join(root, tmLanguagePath);

let grammar: IGrammar;

beforeAll(async () => {
  const wasm = readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (sources: string[]) => new oniguruma.OnigScanner(sources),
      createOnigString: (text: string) => new oniguruma.OnigString(text),
    }),
    // The committed file, as VS Code would load it.
    loadGrammar: async (scopeName) =>
      scopeName === "source.lrk"
        ? vsctm.parseRawGrammar(readFileSync(committedPath, "utf8"), committedPath)
        : null,
  });
  const loaded = await registry.loadGrammar("source.lrk");
  if (!loaded) throw new Error("source.lrk did not load");
  grammar = loaded;
});

interface Token {
  text: string;
  line: number;
  scopes: string[];
}

/** Tokenizes line by line, carrying the rule stack, as an editor does. */
function tokenize(source: string): { tokens: Token[]; lines: Token[][]; stack: StateStack } {
  let stack: StateStack = vsctm.INITIAL;
  const lines: Token[][] = [];
  source.split(/\r?\n/).forEach((text, line) => {
    const result = grammar.tokenizeLine(text, stack);
    lines.push(
      result.tokens.map((tok) => ({
        text: text.slice(tok.startIndex, tok.endIndex),
        line,
        scopes: tok.scopes,
      })),
    );
    stack = result.ruleStack;
  });
  return { tokens: lines.flat(), lines, stack };
}

/** The token whose text is exactly `text` (the `nth` such token), failing with the whole line-up. */
function token(source: string, text: string, nth = 0): Token {
  const { tokens } = tokenize(source);
  const matches = tokens.filter((tok) => tok.text === text);
  const found = matches[nth];
  if (!found) {
    const dump = tokens.map((tok) => `${JSON.stringify(tok.text)} ${tok.scopes.join(" ")}`);
    throw new Error(`no token ${JSON.stringify(text)} #${nth} in ${source}:\n${dump.join("\n")}`);
  }
  return found;
}

/** The scopes of a token, without the root `source.lrk`. */
function scopes(source: string, text: string, nth = 0): string[] {
  return token(source, text, nth).scopes.filter((s) => s !== "source.lrk");
}

function expectScope(source: string, text: string, prefix: string, nth = 0): void {
  const got = scopes(source, text, nth);
  expect(
    got.some((s) => s === prefix || s.startsWith(`${prefix}.`)),
    `${JSON.stringify(text)} in ${JSON.stringify(source)} has scopes [${got.join(", ")}], expected ${prefix}`,
  ).toBe(true);
}

function expectNoScope(source: string, text: string, prefix: string, nth = 0): void {
  const got = scopes(source, text, nth);
  expect(
    got.some((s) => s === prefix || s.startsWith(`${prefix}.`)),
    `${JSON.stringify(text)} in ${JSON.stringify(source)} has scopes [${got.join(", ")}], expected no ${prefix}`,
  ).toBe(false);
}

/** Every rule of the grammar, nested ones and captures included. */
function allRules(g: { patterns: TmRule[]; repository: Record<string, TmRule> }): TmRule[] {
  const out: TmRule[] = [];
  const visit = (rule: TmRule): void => {
    out.push(rule);
    rule.patterns?.forEach(visit);
    for (const caps of [rule.captures, rule.beginCaptures, rule.endCaptures]) {
      if (caps) Object.values(caps).forEach(visit);
    }
  };
  g.patterns.forEach(visit);
  Object.values(g.repository).forEach(visit);
  return out;
}

// ------------------------------------------------------------------------------------------------

describe("generated grammar", () => {
  it("the committed tmLanguage.json is what the generator produces", () => {
    expect(
      existsSync(committedPath),
      `${tmLanguagePath} is missing: run npm run build && npm run grammar`,
    ).toBe(true);
    const committed: unknown = JSON.parse(readFileSync(committedPath, "utf8"));
    expect(
      committed,
      `${tmLanguagePath} is stale: run \`npm run build && npm run grammar\` and commit the result`,
    ).toEqual(generateTmLanguage());
  });

  it("the committed file is valid for the TextMate engine", () => {
    const raw: IRawGrammar = vsctm.parseRawGrammar(
      readFileSync(committedPath, "utf8"),
      committedPath,
    );
    expect(raw.scopeName).toBe("source.lrk");
  });

  it("every keyword of keywordTable appears in the grammar's patterns", () => {
    const regexes = allRules(generateTmLanguage()).flatMap((r) =>
      [r.match, r.begin, r.end].filter((x): x is string => x !== undefined),
    );
    const all = Object.values(keywordTable).flat();
    expect(all.length).toBeGreaterThan(30);
    for (const word of all) {
      const asWord = new RegExp(`(?<![A-Za-z0-9_])${word}(?![A-Za-z0-9_])`);
      expect(
        regexes.some((re) => asWord.test(re)),
        `keyword ${word} is missing from the grammar`,
      ).toBe(true);
    }
  });

  it("every keyword of keywordTable is highlighted as its kind", () => {
    const expected = (word: string, kind: keyof typeof keywordTable): string => {
      if (kind === "hard") {
        if (word === "true" || word === "false") return "constant.language.boolean.lrk";
        if (word === "and" || word === "or" || word === "not")
          return "keyword.operator.logical.lrk";
        return "keyword.control.lrk";
      }
      if (kind === "declaration") return `storage.type.${word}.lrk`;
      if (kind === "train") return "keyword.other.train.lrk";
      return "keyword.other.clause.lrk";
    };
    for (const kind of Object.keys(keywordTable) as (keyof typeof keywordTable)[]) {
      for (const word of keywordTable[kind]) {
        expect(scopes(word, word), `${kind} keyword ${word}`).toEqual([expected(word, kind)]);
      }
    }
  });

  it("every begin/end rule ends by the end of its line, except block comments", () => {
    const beginEnd = allRules(generateTmLanguage()).filter((r) => r.begin !== undefined);
    expect(beginEnd.length).toBeGreaterThan(0);
    for (const rule of beginEnd) {
      if (rule.name === "comment.block.lrk") continue;
      expect(rule.end, `rule ${rule.begin} must be able to end at $`).toMatch(/\$/);
    }
  });
});

describe("scopes", () => {
  it("hard keywords", () => {
    expectScope("let h = gelu(x)", "let", "keyword.control");
    expectScope("  return down(h)", "return", "keyword.control");
    expectScope("import std.nn.{Linear}", "import", "keyword.control");
    expectScope("const n: int = 4", "const", "keyword.control");
    expectScope("for i in range(3) {", "for", "keyword.control");
    expectScope("if a { } else { }", "else", "keyword.control");
  });

  it("declaration keywords and definition names", () => {
    expectScope("model Mlp(d: int) {", "model", "storage.type");
    expectScope("model Mlp(d: int) {", "Mlp", "entity.name.type.lrk");
    expectScope(
      "adapter lora(rank: int) on Linear(in, out) {",
      "adapter",
      "storage.type.adapter.lrk",
    );
    expectScope("adapter lora(rank: int) on Linear(in, out) {", "lora", "entity.name.type.lrk");
    expectScope("optimizer adamw(lr: float) on param: f32[...] {", "adamw", "entity.name.type.lrk");
    expectScope(
      "budget adalora_budget(target: int) on adalora {",
      "adalora_budget",
      "entity.name.type.lrk",
    );
    expectScope("train finetune {", "train", "storage.type.train.lrk");
    expectScope("train finetune {", "finetune", "entity.name.type.lrk");
    expectScope("  param A: f32[rank, in] = zeros", "param", "storage.type.param.lrk");
    expectScope("  param A: f32[rank, in] = zeros", "A", "variable.other.definition.lrk");
    expectScope("  state m = zeros_like(param)", "state", "storage.type.state.lrk");
  });

  it("a budget rule in a train block names no definition", () => {
    const line = "  budget rank 96 over blocks.*.mlp.* by adalora_budget(target: 8)";
    expectScope(line, "budget", "storage.type.budget.lrk");
    expectNoScope(line, "rank", "entity.name");
    expectScope(line, "96", "constant.numeric");
    expectScope(line, "over", "keyword.other.clause.lrk");
    expectScope(line, "by", "keyword.other.clause.lrk");
    expectScope(line, "mlp", "variable.other.path.lrk");
    expectScope(line, "mlp", "meta.selector.lrk");
    expectNoScope(line, "adalora_budget", "meta.selector");
    expectScope(line, "adalora_budget", "entity.name.function.call.lrk");
  });

  it("train and clause keywords", () => {
    expectScope("  freeze **", "freeze", "keyword.other.train.lrk");
    expectScope("  steps 1000", "steps", "keyword.other.train.lrk");
    expectScope("  eval every 100 on arith.valid", "eval", "keyword.other.train.lrk");
    expectScope("  eval every 100 on arith.valid", "every", "keyword.other.clause.lrk");
    expectScope("  eval every 100 on arith.valid", "on", "keyword.other.clause.lrk");
    expectScope("  adapt blocks.* with lora(rank: 8)", "with", "keyword.other.clause.lrk");
    expectScope("  budget rank 96 over blocks.* by b(t: 8)", "over", "keyword.other.clause.lrk");
    expectScope(
      "  state P = svd(grad) refresh every period",
      "refresh",
      "keyword.other.clause.lrk",
    );
    expectScope("    for i in range(3) {", "in", "keyword.other.clause.lrk");
    expectScope("  at step 500 {", "step", "keyword.other.clause.lrk");
  });

  it("soft keywords used as names are not keywords", () => {
    expectNoScope("  up = Linear(in: d, out: 4 * d)", "in", "keyword");
    expectNoScope("adapter lora(rank: int) on Linear(in, out) {", "in", "keyword");
    expectNoScope("  param A: f32[rank, in] = zeros", "in", "keyword");
    expectNoScope("  v = v / (1 - beta2 ^ step)", "step", "keyword");
    expectNoScope("  let n = opt.step + 1", "step", "keyword");
    expectNoScope("optimizer sgd(lr: float) on param: f32[...] {", "param", "keyword");
    expectNoScope("optimizer sgd(lr: float) on param: f32[...] {", "param", "storage");
  });

  it("logical operators and booleans", () => {
    expectScope("if a and not b or c {", "and", "keyword.operator.logical.lrk");
    expectScope("if a and not b or c {", "not", "keyword.operator.logical.lrk");
    expectScope("if a and not b or c {", "or", "keyword.operator.logical.lrk");
    expectScope("let t = true", "true", "constant.language.boolean.lrk");
    expectScope("f(x: false)", "false", "constant.language.boolean.lrk");
  });

  it("types", () => {
    expectScope("forward(x: f32[B, T]) -> f32[B, T] {", "f32", "support.type.lrk");
    expectScope("forward(x: f32[B, T]) -> f32[B, T] {", "f32", "support.type.lrk", 1);
    expectScope("model M(d: int, p: float = 0.1, b: bool = true) {", "int", "support.type.lrk");
    expectScope("model M(d: int, p: float = 0.1, b: bool = true) {", "float", "support.type.lrk");
    expectScope("  param q: i32[B, T] = zeros", "i32", "support.type.lrk");
    expectScope("  param q: bf16[..., n] = zeros", "bf16", "support.type.lrk");
    expectScope("  param q: bf16[..., n] = zeros", "...", "keyword.operator.ellipsis.lrk");
  });

  it("numbers", () => {
    expectScope("optimize adapters with adamw(lr: 3e-3)", "3e-3", "constant.numeric");
    expectScope("  batch 128", "128", "constant.numeric");
    expectScope("  steps 1_000", "1_000", "constant.numeric");
    expectScope("let eps = 1.5e-8 + 0.5", "1.5e-8", "constant.numeric.float.lrk");
    expectScope("let eps = 1.5e-8 + 0.5", "0.5", "constant.numeric.float.lrk");
    expectScope("  batch 128", "128", "constant.numeric.integer.lrk");
    expectNoScope("let beta1 = 0.9", "beta1", "constant.numeric");
  });

  it("strings and escapes", () => {
    const line = 'import "lib/helpers.lrk"; let s = "a \\"quoted\\" word\\n"';
    expectScope(line, '"', "string.quoted.double.lrk");
    expectScope(line, "lib/helpers.lrk", "string.quoted.double.lrk");
    expectScope(line, '\\"', "constant.character.escape.lrk");
    expectScope(line, '\\"', "string.quoted.double.lrk");
    expectScope(line, "\\n", "constant.character.escape.lrk");
    expectScope(line, "let", "keyword.control.lrk");
    // `//` inside a string is not a comment.
    expectNoScope('let url = "http://x" + y', "y", "comment");
  });

  it("an unterminated string ends with its line", () => {
    const { lines, stack } = tokenize('let s = "oops\nlet t = 1');
    expect(stack.depth).toBe(1);
    expect(lines[1]![0]!.scopes).toEqual(["source.lrk", "keyword.control.lrk"]);
  });

  it("comments", () => {
    expectScope(
      "let h = gelu(x)   // activation",
      "// activation".slice(2),
      "comment.line.double-slash.lrk",
    );
    expectScope("let h = gelu(x)   // activation", "//", "punctuation.definition.comment.lrk");
    expectScope("let a = 1 /* inline */ + 2", "/*", "punctuation.definition.comment.begin.lrk");
    expectScope("let a = 1 /* inline */ + 2", " inline ", "comment.block.lrk");
    expectScope("let a = 1 /* inline */ + 2", "+", "keyword.operator.arithmetic.lrk");
    expectScope("let a = 1 /* inline */ + 2", "2", "constant.numeric");

    const src = "/* a block\n   model not_a_model { return\n   comment */ let x = 1";
    expectScope(src, "   model not_a_model { return", "comment.block.lrk");
    expectScope(src, "   comment ", "comment.block.lrk");
    expectScope(src, "*/", "punctuation.definition.comment.end.lrk");
    expectScope(src, "let", "keyword.control.lrk");
    expect(tokenize(src).stack.depth).toBe(1);
  });

  it("operators", () => {
    const line = "  return down(h) @ eye(d)^T";
    expectScope(line, "@", "keyword.operator.matrix.lrk");
    expectScope(line, "^T", "keyword.operator.transpose.lrk");
    expectScope("  param -= lr * g", "-=", "keyword.operator.assignment.compound.lrk");
    expectScope("forward(x) -> f32[B] {", "->", "keyword.operator.arrow.lrk");
    expectScope("  m = beta1 * m", "=", "keyword.operator.assignment.lrk");
    expectScope("if a >= 8 and b != c {", ">=", "keyword.operator.comparison.lrk");
    expectScope("if a >= 8 and b != c {", "!=", "keyword.operator.comparison.lrk");
    expectScope("let p = 1 - beta1 ^ step", "^", "keyword.operator.arithmetic.lrk");
    // `^ T` and `^Tx` are powers, not transposes (as in the lexer).
    expectScope("let p = x ^ T", "^", "keyword.operator.arithmetic.lrk");
    expectScope("let p = x^Tx", "^", "keyword.operator.arithmetic.lrk");
    expectScope("let r = a % b", "%", "keyword.operator.arithmetic.lrk");
  });

  it("`*` in an expression is arithmetic, not a glob", () => {
    expectScope("let c = a * b", "*", "keyword.operator.arithmetic.lrk");
    expectNoScope("let c = a * b", "*", "keyword.operator.glob");
    expectNoScope("let c = a * b", "*", "meta.selector");
    expectScope("  hidden: int = 4 * d", "*", "keyword.operator.arithmetic.lrk");
  });

  it("function definitions and calls", () => {
    expectScope("  forward(x: f32[B, d]) -> f32[B, d] {", "forward", "entity.name.function.lrk");
    expectScope("  update(g) {", "update", "entity.name.function.lrk");
    expectScope("  forward(x) = up(x)", "forward", "entity.name.function.lrk");
    expectScope("  forward(x) = up(x)", "up", "entity.name.function.call.lrk");
    expectScope("    let h = gelu(up(x))", "gelu", "entity.name.function.call.lrk");
    expectScope("    if f(x) {", "if", "keyword.control.lrk");
  });

  it("selectors after adapt", () => {
    const line = "  adapt blocks.*.attn.{q, v} with lora(rank: 8)";
    expectScope(line, "adapt", "keyword.other.train.lrk");
    expectScope(line, "*", "keyword.operator.glob.lrk");
    expectScope(line, "*", "meta.selector.lrk");
    expectScope(line, "attn", "variable.other.path.lrk");
    expectScope(line, "blocks", "variable.other.path.lrk");
    expectScope(line, "q", "variable.other.path.lrk");
    expectScope(line, "v", "meta.selector.lrk");
    expectScope(line, "with", "keyword.other.clause.lrk");
    expectNoScope(line, "with", "meta.selector");
    expectNoScope(line, "lora", "meta.selector");
    expectScope(line, "lora", "entity.name.function.call.lrk");
    expectScope(line, "8", "constant.numeric");
  });

  it("selectors after freeze, optimize, quantize, with where", () => {
    expectScope("  freeze **", "**", "keyword.operator.glob.lrk");
    expectScope("  freeze **", "**", "meta.selector.lrk");
    expectScope("train t { freeze ** }", "**", "keyword.operator.glob.lrk");

    const opt = "  optimize blocks[0..3].mlp.* with adamw(lr: 1e-3)";
    expectScope(opt, "..", "keyword.operator.range.lrk");
    expectScope(opt, "0", "meta.selector.lrk");
    expectScope(opt, "*", "keyword.operator.glob.lrk");
    expectScope(opt, "mlp", "variable.other.path.lrk");
    expectScope(opt, "1e-3", "constant.numeric");
    expectNoScope(opt, "1e-3", "meta.selector");

    expectScope("  quantize blocks[2..=5].*_proj with nf4()", "..=", "keyword.operator.range.lrk");
    expectScope("  quantize blocks[2..=5].*_proj with nf4()", "_proj", "variable.other.path.lrk");

    const where = "  adapt blocks.*.attn.{q, v} where rows >= 8 with lora(rank: 8, alpha: 16)";
    expectScope(where, "where", "keyword.other.clause.lrk");
    expectNoScope(where, "rows", "meta.selector");
    expectScope(where, ">=", "keyword.operator.comparison.lrk");
    expectScope(where, "with", "keyword.other.clause.lrk");

    // Ends at a comment.
    expectScope("  freeze embed // frozen", "frozen".padStart(7), "comment.line.double-slash.lrk");
    expectNoScope("  freeze embed // frozen", "//", "meta.selector");
  });

  it("a selector never stays open past its line", () => {
    const { lines, stack } = tokenize(
      "  freeze blocks.*\n  steps 10\n  adapt x.{a,\nlet y = 2 * 3",
    );
    expect(stack.depth).toBe(1);
    expectScope("  freeze blocks.*\n  steps 10", "steps", "keyword.other.train.lrk");
    for (const tok of lines[3]!) expect(tok.scopes).not.toContain("meta.selector.lrk");
  });

  it("a character the lexer does not know is invalid", () => {
    expectScope("let x = a # b", "#", "invalid.illegal.character.lrk");
    expectScope("let x = !a", "!", "invalid.illegal");
    expectNoScope("let x = a != b", "!=", "invalid");
  });
});

// ------------------------------------------------------------------------------------------------

const programs: Record<string, string> = {
  "mlp-and-adamw.lrk": `import std.nn.{Linear, LayerNorm}
import std.adapters.{lora}
/* a block
   comment */
model Mlp(d: int, hidden: int = 4 * d) {
  up = Linear(d, hidden)
  down = Linear(hidden, d)
  forward(x: f32[B, d]) -> f32[B, d] {
    let h = gelu(up(x))   // activation
    return down(h) @ eye(d)^T
  }
}
optimizer adamw(lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01) on param: f32[...] {
  state m = zeros_like(param)
  state v = zeros_like(param)
  update(g) {
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    param -= lr * ((m / (1 - beta1 ^ step)) / (sqrt(v / (1 - beta2 ^ step)) + eps) + weight_decay * param)
  }
}
train finetune {
  model Mlp(d: 64)
  data arith
  freeze **
  adapt blocks.*.attn.{q, v} where rows >= 8 with lora(rank: 8, alpha: 16)
  budget rank 96 over blocks[0..4].mlp.* by adalora_budget(target: 8)
  optimize adapters with adamw(lr: 3e-3)
  steps 1000
  batch 32
  eval every 100 on arith.valid
  checkpoint every 500
}
`,
  "adapters-and-budgets.lrk": `// Adapters, a quantizer and a rank budget.
import "local/helpers.lrk"
import std.quant as q
const rank_max: int = 64
data arith = synthetic("arith", n: 10_000, seed: 7)

adapter lora(rank: int = 8, alpha: float = 16.0) on Linear(in, out) {
  param A: f32[rank, in] = normal(0.0, 0.02)
  param B: f32[out, rank] = zeros
  scale = alpha / rank
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + scale * (x @ A^T @ B^T)
}

adapter galore(rank: int, period: int = 200) on param: f32[m, n] {
  state P: f32[m, rank] = svd_left(grad, rank) refresh every period
  at every period {
    P = svd_left(grad, rank)
  }
  regularize 1e-4 * norm(P)
}

quantizer nf4(block: int = 64) on param: f32[...] {
  levels = [-1.0, -0.5, 0.0, 0.5, 1.0]
  forward(w) = round(w / absmax(w)) * absmax(w)
}

budget adalora_budget(target: int, warmup: int = 200) on adalora {
  at step warmup {
    for i in range(0, 10) {
      if importance(i) < 0.1 and not frozen(i) {
        prune(i)
      } else if i == 3 or i != 4 {
        keep(i, true)
      } else {
        keep(i, false)
      }
    }
  }
}

/*
 * A small transformer.
 */
model Transformer(d: int = 512, layers: int = 6, vocab: int = 32_000) {
  embed = Embedding(vocab, d)
  blocks[layers] {
    attn = Attention(d)
    mlp = Mlp(d: d)
  }
  forward(tokens: i32[B, T]) -> f32[B, T, vocab] {
    let h = embed(tokens)
    let (a, b) = split(h, 2)
    let y: f32[B, T, d] = h[:, -1, ...] + h[0:4:2] % 3
    h += y
    h *= 0.5; h /= 2
    return h @ embed.weight^T
  }
}

train big {
  model Transformer(d: 256)
  data arith
  init "checkpoints/base.ckpt"
  loss cross_entropy(label_smoothing: 0.1)
  freeze embed, blocks[0..=2].*
  adapt blocks.*.attn.*_proj with lora(rank: 16)
  quantize blocks[2..].mlp.{up, down} with nf4(block: 64)
  optimize adapters.** with adamw(lr: 1.5e-4, weight_decay: 0.0)
  schedule cosine(warmup: 100)
  seed 42; clip 1.0
  at step 500 { log("half \\"way\\" there\\n") }
}
`,
};

function lrkFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return lrkFiles(path);
    return name.endsWith(".lrk") ? [path] : [];
  });
}

const sources: [string, () => string][] = [
  ...Object.entries(programs).map(([name, text]): [string, () => string] => [
    `embedded ${name}`,
    () => text,
  ]),
  ...[...lrkFiles(join(root, "examples")), ...lrkFiles(join(root, "stdlib"))].map(
    (path): [string, () => string] => [relative(root, path), () => readFileSync(path, "utf8")],
  ),
];

describe("whole programs", () => {
  it.each(sources)("%s ends in the root state with no invalid token", (_name, read) => {
    const { lines, stack } = tokenize(read());
    for (const [i, line] of lines.entries()) {
      for (const tok of line) {
        const bad = tok.scopes.find((s) => s.includes("invalid"));
        expect(bad, `line ${i + 1}: ${JSON.stringify(tok.text)} is ${bad}`).toBeUndefined();
      }
    }
    expect(stack.depth, "a begin/end rule is still open at the end of the file").toBe(1);
    const last = [...lines].reverse().find((line) => line.some((tok) => tok.text.trim() !== ""));
    for (const tok of last ?? []) expect(tok.scopes[0]).toBe("source.lrk");
  });

  it("the embedded programs are highlighted where it matters", () => {
    const { tokens } = tokenize(programs["adapters-and-budgets.lrk"]!);
    const find = (text: string, line: number): Token | undefined =>
      tokens.find((tok) => tok.text === text && tok.line === line);
    // `*_proj`: a glob then a path name.
    const adaptLine = tokens.find((tok) => tok.text === "adapt")!.line;
    expect(find("*", adaptLine)?.scopes).toContain("keyword.operator.glob.lrk");
    expect(find("_proj", adaptLine)?.scopes).toContain("variable.other.path.lrk");
    // `seed 42; clip 1.0`: a train keyword after `;`.
    const clip = tokens.find((tok) => tok.text === "clip")!;
    expect(clip.scopes).toContain("keyword.other.train.lrk");
    // The string with escapes inside a one-line block.
    const escapes = tokens.filter((tok) => tok.scopes.includes("constant.character.escape.lrk"));
    expect(escapes.map((tok) => tok.text)).toEqual(['\\"', '\\"', "\\n"]);
  });

  it("the root check catches an unterminated block comment", () => {
    const { stack } = tokenize("model M {\n  /* never closed\n}\n");
    expect(stack.depth).toBeGreaterThan(1);
  });
});
