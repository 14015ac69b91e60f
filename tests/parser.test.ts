// The grammar and the AST it builds: precedence, the newline rule, soft keywords, selectors.
import { describe, expect, it } from "vitest";
import type * as A from "../language/ast.js";
import { expr } from "../language/format.js";
import { parseText } from "./helpers.js";
import type { CstNode } from "chevrotain";
import { AstBuilder, grammar } from "../language/cst-to-ast.js";
import { lex } from "../language/lexer.js";
import { SourceFile } from "../language/source.js";

function parseOk(text: string): A.Program {
  const r = parseText(text);
  // W0101 (a statement with no effect) is a warning the newline tests provoke on purpose
  expect(r.diagnostics.filter((d) => d.code !== "W0101").map((d) => d.message)).toEqual([]);
  return r.program;
}

/** The value of `const x = …`, printed fully parenthesised so the tree's shape is visible. */
function shape(source: string): string {
  const item = parseOk(`const x = ${source}`).items[0] as A.ConstDecl;
  return show(item.value);
}

function show(e: A.Expr): string {
  switch (e.kind) {
    case "Binary":
      return `(${show(e.left)} ${e.op} ${show(e.right)})`;
    case "Unary":
      return `(${e.op === "not" ? "not " : e.op}${show(e.operand)})`;
    case "Transpose":
      return `${show(e.operand)}ᵀ`;
    case "Paren":
      return show(e.expr);
    default:
      return expr(e);
  }
}

function functionBody(text: string): A.Stmt[] {
  const def = parseOk(`model M {\n  f(x) {\n${text}\n  }\n}`).items[0] as A.Definition;
  const fn = def.members[0] as A.FunctionDef;
  if (fn.body.kind !== "Block") throw new Error("expected a block body");
  return fn.body.stmts;
}

describe("expressions", () => {
  it("applies the precedence table", () => {
    expect(shape("a + b * c")).toBe("(a + (b * c))");
    expect(shape("a * b + c")).toBe("((a * b) + c)");
    expect(shape("x @ w + b")).toBe("((x @ w) + b)");
    expect(shape("a - b - c")).toBe("((a - b) - c)");
    expect(shape("a ^ b ^ c")).toBe("(a ^ (b ^ c))");
    expect(shape("-x ^ 2")).toBe("(-(x ^ 2))");
    expect(shape("a * -b + c")).toBe("((a * (-b)) + c)");
    expect(shape("not a == b")).toBe("(not (a == b))");
    expect(shape("a < b and c or d")).toBe("(((a < b) and c) or d)");
    expect(shape("1 - beta1 ^ step")).toBe("(1 - (beta1 ^ step))");
  });

  it("lexes ^T as transpose only when T stands alone", () => {
    expect(shape("w^T")).toBe("wᵀ");
    expect(shape("x @ w^T")).toBe("(x @ wᵀ)");
    expect(shape("x ^ T")).toBe("(x ^ T)");
    expect(shape("x^Tmax")).toBe("(x ^ Tmax)");
    expect(shape("(P^T @ g)^T")).toBe("(Pᵀ @ g)ᵀ");
  });

  it("parses calls with named arguments, members, indexing and slices", () => {
    const item = parseOk(
      `const x = softmax(q @ k^T / sqrt(d), axis: -1)[:, 1:, ..., ::2].sum(axis: 0)`,
    ).items[0] as A.ConstDecl;
    const call = item.value as A.Call;
    expect(call.kind).toBe("Call");
    expect(call.args[0]!.name?.name).toBe("axis");
    const member = call.callee as A.MemberExpr;
    expect(member.name.name).toBe("sum");
    const index = member.object as A.Index;
    expect(index.items.map((i) => i.kind)).toEqual(["Slice", "Slice", "Ellipsis", "Slice"]);
    const inner = index.object as A.Call;
    expect(inner.args.map((a) => a.name?.name)).toEqual([undefined, "axis"]);
  });

  it("keeps number literals as written", () => {
    const item = parseOk(`const x = [3e-3, 1_000, 0.5, 1.5e-8]`).items[0] as A.ConstDecl;
    const list = item.value as A.List;
    expect(list.items.map((n) => (n as A.NumberLit).raw)).toEqual([
      "3e-3",
      "1_000",
      "0.5",
      "1.5e-8",
    ]);
    expect(list.items.map((n) => (n as A.NumberLit).value)).toEqual([0.003, 1000, 0.5, 1.5e-8]);
    expect(list.items.map((n) => (n as A.NumberLit).isInteger)).toEqual([
      false,
      true,
      false,
      false,
    ]);
  });

  it("decodes string escapes", () => {
    const item = parseOk(String.raw`const s = "a\tb\n\"c\" \u{1F600}"`).items[0] as A.ConstDecl;
    expect((item.value as A.StringLit).value).toBe('a\tb\n"c" \u{1F600}');
  });

  it("tells tuples from parenthesised expressions", () => {
    expect((parseOk(`const x = (a)`).items[0] as A.ConstDecl).value.kind).toBe("Paren");
    expect((parseOk(`const x = (a,)`).items[0] as A.ConstDecl).value.kind).toBe("Tuple");
    expect((parseOk(`const x = (a, b)`).items[0] as A.ConstDecl).value.kind).toBe("Tuple");
  });
});

describe("the newline rule", () => {
  it("ends a statement at a newline before an operator, a call or an index", () => {
    expect(functionBody("let a = b\n-c").map((s) => s.kind)).toEqual(["Let", "ExprStmt"]);
    expect(functionBody("let a = b\n(c)").map((s) => s.kind)).toEqual(["Let", "ExprStmt"]);
    expect(functionBody("let a = b\n[c]").map((s) => s.kind)).toEqual(["Let", "ExprStmt"]);
  });

  it("warns (W0101) about a statement that only computes a value, naming the `-` line case", () => {
    const r = parseText(
      "model M {\n  f(x) {\n    let a = x\n      - 1\n    g(a)\n    a\n    return a\n  }\n}",
    );
    const warnings = r.diagnostics.filter((d) => d.code === "W0101");
    expect(warnings.map((d) => d.severity)).toEqual(["warning", "warning"]); // `- 1` and `a`
    expect(warnings[0]!.help).toMatch(/a line that starts with `-` begins a new statement/);
    expect(warnings[1]!.help).toMatch(/assign it/);
    expect(r.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  });

  it("continues after a trailing operator, inside brackets, and before `.`", () => {
    expect(functionBody("let a = b +\n  c").map((s) => s.kind)).toEqual(["Let"]);
    expect(functionBody("let a = f(b,\n  c)").map((s) => s.kind)).toEqual(["Let"]);
    expect(functionBody("let a = (b\n  - c)").map((s) => s.kind)).toEqual(["Let"]);
    expect(functionBody("let a = b\n  .sum(axis: 0)").map((s) => s.kind)).toEqual(["Let"]);
  });

  it("needs no separators between statements, but accepts semicolons", () => {
    expect(functionBody("a = 1; b = 2\nreturn a").map((s) => s.kind)).toEqual([
      "Assign",
      "Assign",
      "Return",
    ]);
  });

  it("lets `return` stand alone at the end of a line", () => {
    const body = functionBody("return\nx = 1");
    expect(body.map((s) => s.kind)).toEqual(["Return", "Assign"]);
    expect((body[0] as A.Return).value).toBeUndefined();
  });
});

describe("soft keywords", () => {
  it("are names outside their clause", () => {
    const def = parseOk(`model Linear(in: int, out: int) {
  param weight: f32[out, in] = zeros
  forward(x) = x @ weight^T * step + data.size + every
}`).items[0] as A.Definition;
    expect(def.params.map((p) => p.name.name)).toEqual(["in", "out"]);
    expect(def.members.map((m) => m.kind)).toEqual(["ParamMember", "Function"]);
  });

  it("are keywords at the start of a member", () => {
    const def = parseOk(`optimizer o(lr: float) on param: f32[m, n] {
  state m1 = zeros_like(param) refresh every every
  update(g) {
    param -= lr * g
  }
}`).items[0] as A.Definition;
    const state = def.members[0] as A.StateMember;
    expect(state.kind).toBe("StateMember");
    expect(expr(state.refreshEvery!)).toBe("every");
    expect(def.on?.type?.dims?.length).toBe(2);
  });
});

describe("declarations", () => {
  it("parses imports of modules, items, aliases and files", () => {
    const items = parseOk(`import std.nn.{Linear, Embedding as E}
import std.optim
import std.adapters as ad
import "./tiny_lm.lrk".{TinyLM}`).items as A.Import[];
    expect(items[0]!.items?.map((i) => [i.name.name, i.alias?.name])).toEqual([
      ["Linear", undefined],
      ["Embedding", "E"],
    ]);
    expect(items[1]!.source).toMatchObject({ kind: "module" });
    expect(items[1]!.items).toBeUndefined();
    expect(items[2]!.alias?.name).toBe("ad");
    expect(items[3]!.source).toMatchObject({ kind: "file", path: { value: "./tiny_lm.lrk" } });
  });

  it("parses every member form", () => {
    const def = parseOk(`adapter a(rank: int, alpha: float = rank) on Linear(in, out) {
  param A: f32[rank, in] = kaiming_uniform(a: sqrt(5))
  state s = zeros
  let (L, R) = split(base.weight)
  const k = 2
  if rank > 4 {
    param C: f32[rank]
  } else if rank > 2 {
    param D: f32[rank]
  } else {
    param E: f32[rank]
  }
  regularize 0.1 * fro(A)
  at every 100 {
    A = A * 0
  }
  at step 5 {
    A = A * 2
  }
  blocks[2] {
    l = Linear(in, out)
  }
  forward(x: f32[..., in]) -> f32[..., out] {
    return base(x)
  }
  merged = base.weight
}`).items[0] as A.Definition;
    expect(def.sort).toBe("adapter");
    expect(def.on?.args?.map((n) => n.name)).toEqual(["in", "out"]);
    expect(def.members.map((m) => m.kind)).toEqual([
      "ParamMember",
      "StateMember",
      "Let",
      "Let",
      "IfMember",
      "Regularize",
      "At",
      "At",
      "Repeat",
      "Function",
      "Define",
    ]);
    const chain = def.members[4] as A.IfMember;
    expect((chain.else as A.IfMember).kind).toBe("IfMember");
    expect(Array.isArray((chain.else as A.IfMember).else)).toBe(true);
    expect((def.members[2] as A.Let).target.kind).toBe("TuplePattern");
    expect((def.members[3] as A.Let).constant).toBe(true);
    const fn = def.members[9] as A.FunctionDef;
    expect(fn.params[0]!.type?.dims?.[0]?.kind).toBe("Ellipsis");
  });

  it("parses every train item", () => {
    const train = parseOk(`train t {
  model TinyLM(vocab: arith.vocab)
  data arith
  init "runs/pretrain/final.safetensors"
  loss cross_entropy(next_token)
  freeze **
  adapt blocks.*.attn.{q, v} with lora(rank: 8, alpha: 16)
  budget rank 96 over blocks.*.mlp.* by adalora_budget(final_warmup: 800)
  optimize adapters with adamw(lr: 3e-3)
  quantize blocks.*.mlp.* with svdquant(rank: 32)
  steps 1000  batch 32  schedule cosine(warmup: 50)  seed 7  clip 1.0
  eval every 100 on arith.valid  checkpoint every 500
  at step 500 {
    reset()
  }
}`).items[0] as A.TrainDecl;
    expect(train.items.map((i) => (i.kind === "Setting" ? i.key : i.kind))).toEqual([
      "model",
      "data",
      "init",
      "loss",
      "Freeze",
      "Rule",
      "BudgetRule",
      "Rule",
      "Rule",
      "steps",
      "batch",
      "schedule",
      "seed",
      "clip",
      "Eval",
      "Checkpoint",
      "At",
    ]);
    const budget = train.items[6] as A.BudgetRule;
    expect(budget.resource.name).toBe("rank");
    expect(expr(budget.total)).toBe("96");
  });
});

describe("selectors", () => {
  function selector(text: string): A.SelectorList {
    const train = parseOk(`train t {\n  freeze ${text}\n}`).items[0] as A.TrainDecl;
    return (train.items[0] as A.Freeze).target;
  }

  it("parses globs, alternatives, patterns and index ranges", () => {
    const list = selector(
      "blocks[0..2, 4, 6..=7, 9.., *].*_proj.{q, mlp.up}, **, lnf where rows >= 256",
    );
    expect(list.selectors).toHaveLength(3);
    const segments = list.selectors[0]!.segments;
    expect(segments.map((s) => s.kind)).toEqual(["Pattern", "Pattern", "Alternatives"]);
    const blocks = segments[0] as A.PatternSegment;
    expect(blocks.index?.map((r) => [r.start, r.end, r.inclusive])).toEqual([
      [0, 2, false],
      [4, 4, true],
      [6, 7, true],
      [9, undefined, false],
      [undefined, undefined, false],
    ]);
    expect((segments[1] as A.PatternSegment).pattern).toBe("*_proj");
    expect((segments[2] as A.AlternativesSegment).options).toHaveLength(2);
    expect(list.selectors[1]!.segments[0]!.kind).toBe("Glob");
    expect(expr(list.where!)).toBe("rows >= 256");
  });

  it("joins only adjacent characters into one component", () => {
    expect((selector("q*").selectors[0]!.segments[0] as A.PatternSegment).pattern).toBe("q*");
    expect((selector("blocks.3.attn").selectors[0]!.segments[1] as A.PatternSegment).pattern).toBe(
      "3",
    );
  });
});

describe("spans", () => {
  it("cover exactly the text of each node", () => {
    const text = `const x = foo(a, b: 2) + w^T`;
    const item = parseOk(text).items[0] as A.ConstDecl;
    const value = item.value as A.Binary;
    expect(text.slice(value.span.start, value.span.end)).toBe("foo(a, b: 2) + w^T");
    expect(text.slice(value.left.span.start, value.left.span.end)).toBe("foo(a, b: 2)");
    expect(text.slice(value.right.span.start, value.right.span.end)).toBe("w^T");
    expect(text.slice(item.name.span.start, item.name.span.end)).toBe("x");
  });

  // A rule's span covers its tokens; finding them anew under every node made building the AST
  // take time proportional to the tree's size times its depth. Counted, not timed: how often the
  // AST builder reads a CST node's children must not grow with how deep the node sits.
  it("are found reading each CST node's children a bounded number of times, at any depth", () => {
    const readsPerNode = (depth: number) => {
      const text = `const x = ${"(".repeat(depth)}a + 1${")".repeat(depth)}`;
      const parser = grammar();
      parser.input = lex(new SourceFile("deep.lrk", text)).tokens;
      const cst = parser.program();
      expect(parser.errors).toEqual([]);
      let nodes = 0;
      let reads = 0;
      const count = (n: CstNode) => {
        nodes++;
        const children = n.children;
        Object.defineProperty(n, "children", {
          get: () => (reads++, children),
        });
        for (const list of Object.values(children))
          for (const c of list) if ("children" in c) count(c);
      };
      count(cst);
      reads = 0;
      const program = new AstBuilder(new SourceFile("deep.lrk", text)).visit(cst) as A.Program;
      const value = (program.items[0] as A.ConstDecl).value;
      expect(text.slice(value.span.start, value.span.end)).toBe(text.slice(10));
      return reads / nodes;
    };
    const shallow = readsPerNode(2);
    const deep = readsPerNode(60);
    expect(deep).toBeLessThanOrEqual(shallow + 1);
  });
});
