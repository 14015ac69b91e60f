// CST → AST. Kept apart from the grammar (Chevrotain's visitor, checked by validateVisitor), and
// written to survive error recovery: any child may be missing, in which case an Error node stands
// in its place and the parser has already reported why.
import type { CstNode, IToken } from "./chevrotain.js";
import type * as A from "./ast.js";
import { LrkGrammar } from "./grammar.js";
import { error, type Diagnostic } from "./diagnostics.js";
import type { SourceFile, Span } from "./source.js";

type Children = Record<string, (CstNode | IToken)[] | undefined>;

let built: LrkGrammar | undefined;

/**
 * The parser, built on first use: building it (Chevrotain's analysis of every rule) costs about
 * 70 ms, which a run whose files all come from the parse cache (language/parse-cache.ts) skips.
 */
export function grammar(): LrkGrammar {
  if (built === undefined) {
    built = new LrkGrammar();
    Object.setPrototypeOf(
      VisitorBase.prototype,
      built.getBaseCstVisitorConstructorWithDefaults().prototype,
    );
  }
  return built;
}

/** Whether this process built the parser (tests: a run whose trees were all cached does not). */
export function grammarBuilt(): boolean {
  return built !== undefined;
}

/**
 * AstBuilder's base: stands for Chevrotain's visitor class with defaults, which exists only once
 * the grammar is built. Its constructor builds the grammar, which links this prototype to that
 * class's (whose own constructor does nothing), so every builder finds its methods.
 */
class VisitorBase {
  constructor() {
    grammar();
  }
}
const BaseVisitor = VisitorBase as unknown as ReturnType<
  LrkGrammar["getBaseCstVisitorConstructorWithDefaults"]
>;

const noSpan: Span = { start: NaN, end: NaN };

function tokenSpan(tok: IToken | undefined): Span {
  if (!tok || tok.isInsertedInRecovery || Number.isNaN(tok.startOffset)) return noSpan;
  return { start: tok.startOffset, end: (tok.endOffset ?? tok.startOffset) + 1 };
}

/** The smallest span covering every given span that is known. */
function cover(...spans: (Span | undefined)[]): Span {
  let start = Infinity;
  let end = -Infinity;
  for (const s of spans) {
    if (!s || Number.isNaN(s.start) || Number.isNaN(s.end)) continue;
    start = Math.min(start, s.start);
    end = Math.max(end, s.end);
  }
  return start === Infinity ? noSpan : { start, end };
}

function isToken(e: CstNode | IToken | undefined): e is IToken {
  return e !== undefined && "image" in e;
}

function tok(ctx: Children, key: string, i = 0): IToken | undefined {
  const e = ctx[key]?.[i];
  return isToken(e) && !e.isInsertedInRecovery ? e : undefined;
}

function toks(ctx: Children, key: string): IToken[] {
  return (ctx[key] ?? []).filter(isToken).filter((t) => !t.isInsertedInRecovery);
}

function node(ctx: Children, key: string, i = 0): CstNode | undefined {
  const e = ctx[key]?.[i];
  return e !== undefined && !isToken(e) ? e : undefined;
}

function nodes(ctx: Children, key: string): CstNode[] {
  return (ctx[key] ?? []).filter((e): e is CstNode => !isToken(e));
}

/** Every token under a CST element, for spans. */
function allTokens(e: CstNode | IToken, out: IToken[] = []): IToken[] {
  if (isToken(e)) {
    if (!e.isInsertedInRecovery && !Number.isNaN(e.startOffset)) out.push(e);
    return out;
  }
  for (const list of Object.values(e.children)) for (const child of list) allTokens(child, out);
  return out;
}

/**
 * Spans of CST nodes, computed once each, bottom-up: every rule asks for its own node's span, so
 * walking each node's tokens anew took time proportional to the tree's size times its depth.
 */
const SPAN = Symbol("span");
type SpannedCst = CstNode & { [SPAN]?: Span };

function cstSpan(e: CstNode | IToken | undefined): Span {
  if (!e) return noSpan;
  if (isToken(e)) return tokenSpan(e);
  const known = (e as SpannedCst)[SPAN];
  if (known) return known;
  let start = Infinity;
  let end = -Infinity;
  const children = e.children;
  for (const key in children)
    for (const child of children[key]!) {
      const s = cstSpan(child);
      if (Number.isNaN(s.start)) continue;
      if (s.start < start) start = s.start;
      if (s.end > end) end = s.end;
    }
  const span = start === Infinity ? noSpan : { start, end };
  (e as SpannedCst)[SPAN] = span;
  return span;
}

const errorNode = (span: Span = noSpan): A.ErrorNode => ({ kind: "Error", span });

function nameOf(t: IToken | undefined): A.Name | undefined {
  return t ? { kind: "Name", name: t.image, span: tokenSpan(t) } : undefined;
}

/** A name that recovery may have lost: an empty name keeps the tree well-formed. */
function nameOr(t: IToken | undefined, fallback: Span): A.Name {
  return nameOf(t) ?? { kind: "Name", name: "", span: fallback };
}

const precedence: Record<string, number> = {
  or: 1,
  and: 2,
  "==": 4,
  "!=": 4,
  "<": 4,
  "<=": 4,
  ">": 4,
  ">=": 4,
  "+": 5,
  "-": 5,
  "*": 6,
  "/": 6,
  "%": 6,
  "@": 6,
  "^": 8,
  "**": 8,
};
const prefixPrecedence: Record<A.UnaryOp, number> = { not: 3, "-": 7, "+": 7 };

const settingKeys = new Set<A.SettingKey>([
  "model",
  "data",
  "init",
  "init_adapters",
  "init_rename",
  "loss",
  "steps",
  "batch",
  "schedule",
  "seed",
  "clip",
  "frozen_storage",
]);

export class AstBuilder extends BaseVisitor {
  readonly diagnostics: Diagnostic[] = [];

  constructor(private readonly file: SourceFile) {
    super();
    this.validateVisitor();
  }

  /** Every rule method receives its own CST node as the second argument, for its span. */
  override visit(cst: CstNode | CstNode[]): unknown {
    const n = Array.isArray(cst) ? cst[0] : cst;
    if (n === undefined) return undefined;
    return (this as unknown as Record<string, (c: Children, n: CstNode) => unknown>)[n.name]!(
      n.children as Children,
      n,
    );
  }

  private sub<T>(n: CstNode | undefined, fallback: () => T): T {
    return n ? ((this.visit(n) as T) ?? fallback()) : fallback();
  }

  private expr(n: CstNode | undefined, near?: Span): A.Expr {
    return this.sub<A.Expr>(n, () => errorNode(near));
  }

  private at(span: Span) {
    return { file: this.file, span };
  }

  // ------------------------------------------------------------------------ top level

  program(ctx: Children): A.Program {
    const items = nodes(ctx, "topItem").map((n) =>
      this.sub<A.TopItem>(n, () => errorNode(cstSpan(n))),
    );
    return { kind: "Program", items, comments: [], span: { start: 0, end: this.file.text.length } };
  }

  topItem(ctx: Children): A.TopItem {
    const child = Object.values(ctx).flat()[0];
    return child && !isToken(child) ? this.sub<A.TopItem>(child, () => errorNode()) : errorNode();
  }

  importDecl(ctx: Children, cst: CstNode): A.Import {
    const span = cstSpan(cst);
    const file = tok(ctx, "file");
    const parts = toks(ctx, "part").map((t) => nameOf(t)!);
    const source: A.Import["source"] = file
      ? { kind: "file", path: this.stringLit(file) }
      : { kind: "module", parts, span: cover(...parts.map((p) => p.span)) };
    const items = ctx["LCurly"]
      ? nodes(ctx, "importItem").map((n) => this.visit(n) as A.ImportItem)
      : undefined;
    return { kind: "Import", source, items, alias: nameOf(tok(ctx, "alias")), span };
  }

  importItem(ctx: Children, cst: CstNode): A.ImportItem {
    const span = cstSpan(cst);
    return {
      kind: "ImportItem",
      name: nameOr(tok(ctx, "name"), span),
      alias: nameOf(tok(ctx, "alias")),
      span,
    };
  }

  constDecl(ctx: Children, cst: CstNode): A.ConstDecl {
    const span = cstSpan(cst);
    return {
      kind: "Const",
      name: nameOr(tok(ctx, "name"), span),
      type: this.optionalType(ctx),
      value: this.expr(node(ctx, "expression"), span),
      span,
    };
  }

  dataDecl(ctx: Children, cst: CstNode): A.DataDecl {
    const span = cstSpan(cst);
    return {
      kind: "Data",
      name: nameOr(tok(ctx, "name"), span),
      value: this.expr(node(ctx, "expression"), span),
      span,
    };
  }

  definition(ctx: Children, cst: CstNode): A.Definition {
    const span = cstSpan(cst);
    const sort = (tok(ctx, "sort")?.image ?? "model") as A.DefinitionSort;
    const params = this.sub<A.Param[]>(node(ctx, "paramList"), () => []);
    const on = node(ctx, "onClause")
      ? (this.visit(node(ctx, "onClause")!) as A.OnClause)
      : undefined;
    const members = this.sub<A.Member[]>(node(ctx, "memberBlock"), () => []);
    return {
      kind: "Definition",
      sort,
      name: nameOr(tok(ctx, "name"), span),
      params,
      on,
      members,
      span,
    };
  }

  onClause(ctx: Children, cst: CstNode): A.OnClause {
    const span = cstSpan(cst);
    const args = ctx["LParen"] ? toks(ctx, "arg").map((t) => nameOf(t)!) : undefined;
    return {
      kind: "On",
      name: nameOr(tok(ctx, "name"), span),
      args,
      type: this.optionalType(ctx),
      ...(ctx["alternative"]
        ? { alternatives: nodes(ctx, "alternative").map((n) => this.visit(n) as A.OnClause) }
        : {}),
      span,
    };
  }

  onAlternative(ctx: Children, cst: CstNode): A.OnClause {
    const span = cstSpan(cst);
    const args = toks(ctx, "arg").map((t) => nameOf(t)!);
    return { kind: "On", name: nameOr(tok(ctx, "name"), span), args, span };
  }

  paramList(ctx: Children): A.Param[] {
    const params = nodes(ctx, "param").map((n) => this.visit(n) as A.Param);
    // A second parameter of the same name would silently take the first one's argument.
    params.forEach((p, i) => {
      const first = params.slice(0, i).find((q) => q.name.name === p.name.name);
      if (first)
        this.diagnostics.push(
          error("E0202", `parameter \`${p.name.name}\` is declared twice`, this.at(p.name.span), {
            notes: [{ message: "first declared here", at: this.at(first.name.span) }],
            help: "rename one of them",
          }),
        );
    });
    return params;
  }

  param(ctx: Children, cst: CstNode): A.Param {
    const span = cstSpan(cst);
    const value = node(ctx, "expression");
    return {
      kind: "Param",
      name: nameOr(tok(ctx, "name"), span),
      type: this.optionalType(ctx),
      default: value ? this.expr(value, span) : undefined,
      span,
    };
  }

  private optionalType(ctx: Children): A.TypeExpr | undefined {
    const n = node(ctx, "typeExpr");
    return n ? (this.visit(n) as A.TypeExpr) : undefined;
  }

  typeExpr(ctx: Children, cst: CstNode): A.TypeExpr {
    const span = cstSpan(cst);
    const dims = ctx["LBracket"] ? nodes(ctx, "dim").map((n) => this.visit(n) as A.Dim) : undefined;
    return { kind: "Type", name: nameOr(tok(ctx, "name"), span), dims, span };
  }

  dim(ctx: Children, cst: CstNode): A.Dim {
    const e = tok(ctx, "Ellipsis");
    if (e) return { kind: "Ellipsis", span: tokenSpan(e) };
    return this.expr(node(ctx, "expression"), cstSpan(cst));
  }

  // ------------------------------------------------------------------------ members

  memberBlock(ctx: Children): A.Member[] {
    return nodes(ctx, "member").map((n) => this.sub<A.Member>(n, () => errorNode(cstSpan(n))));
  }

  member(ctx: Children, cst: CstNode): A.Member {
    const child = Object.values(ctx).flat()[0];
    return child && !isToken(child)
      ? this.sub<A.Member>(child, () => errorNode(cstSpan(cst)))
      : errorNode(cstSpan(cst));
  }

  paramMember(ctx: Children, cst: CstNode): A.ParamMember {
    const span = cstSpan(cst);
    const init = node(ctx, "expression");
    return {
      kind: "ParamMember",
      name: nameOr(tok(ctx, "name"), span),
      type: this.optionalType(ctx) ?? { kind: "Type", name: nameOr(undefined, span), span },
      init: init ? this.expr(init, span) : undefined,
      span,
    };
  }

  stateMember(ctx: Children, cst: CstNode): A.StateMember {
    const span = cstSpan(cst);
    const every = node(ctx, "every");
    return {
      kind: "StateMember",
      name: nameOr(tok(ctx, "name"), span),
      type: this.optionalType(ctx),
      init: this.expr(node(ctx, "init"), span),
      refreshEvery: ctx["Refresh"] ? this.expr(every, span) : undefined,
      span,
    };
  }

  ifMember(ctx: Children, cst: CstNode): A.IfMember {
    const span = cstSpan(cst);
    const elseIf = node(ctx, "elseIf");
    const elseBlock = node(ctx, "else");
    return {
      kind: "IfMember",
      condition: this.expr(node(ctx, "expression"), span),
      then: this.sub<A.Member[]>(node(ctx, "then"), () => []),
      else: elseIf
        ? (this.visit(elseIf) as A.IfMember)
        : elseBlock
          ? this.sub<A.Member[]>(elseBlock, () => [])
          : undefined,
      span,
    };
  }

  regularize(ctx: Children, cst: CstNode): A.Regularize {
    const span = cstSpan(cst);
    return { kind: "Regularize", value: this.expr(node(ctx, "expression"), span), span };
  }

  atClause(ctx: Children, cst: CstNode): A.At {
    const span = cstSpan(cst);
    const trigger = tok(ctx, "trigger")?.image === "every" ? "every" : "step";
    return {
      kind: "At",
      trigger,
      when: this.expr(node(ctx, "expression"), span),
      body: this.sub<A.Stmt[]>(node(ctx, "block"), () => []),
      span,
    };
  }

  repeat(ctx: Children, cst: CstNode): A.Repeat {
    const span = cstSpan(cst);
    return {
      kind: "Repeat",
      name: nameOr(tok(ctx, "name"), span),
      count: this.expr(node(ctx, "expression"), span),
      members: this.sub<A.Member[]>(node(ctx, "memberBlock"), () => []),
      span,
    };
  }

  functionDef(ctx: Children, cst: CstNode): A.FunctionDef {
    const span = cstSpan(cst);
    const block = node(ctx, "block");
    const body: A.FunctionDef["body"] = block
      ? { kind: "Block", stmts: this.sub<A.Stmt[]>(block, () => []) }
      : { kind: "Expr", value: this.expr(node(ctx, "expression"), span) };
    return {
      kind: "Function",
      name: nameOr(tok(ctx, "name"), span),
      params: this.sub<A.Param[]>(node(ctx, "paramList"), () => []),
      returns: this.optionalType(ctx),
      body,
      span,
    };
  }

  define(ctx: Children, cst: CstNode): A.Define {
    const span = cstSpan(cst);
    return {
      kind: "Define",
      name: nameOr(tok(ctx, "name"), span),
      value: this.expr(node(ctx, "expression"), span),
      span,
    };
  }

  // ------------------------------------------------------------------------ statements

  block(ctx: Children): A.Stmt[] {
    return nodes(ctx, "statement").map((n) => this.sub<A.Stmt>(n, () => errorNode(cstSpan(n))));
  }

  statement(ctx: Children, cst: CstNode): A.Stmt {
    const child = Object.values(ctx).flat()[0];
    return child && !isToken(child)
      ? this.sub<A.Stmt>(child, () => errorNode(cstSpan(cst)))
      : errorNode(cstSpan(cst));
  }

  letDecl(ctx: Children, cst: CstNode): A.Let {
    const span = cstSpan(cst);
    const names = toks(ctx, "name").map((t) => nameOf(t)!);
    const target: A.Let["target"] = ctx["LParen"]
      ? {
          kind: "TuplePattern",
          names,
          span: cover(
            tokenSpan(tok(ctx, "LParen")),
            tokenSpan(tok(ctx, "RParen")),
            ...names.map((n) => n.span),
          ),
        }
      : (names[0] ?? nameOr(undefined, span));
    return {
      kind: "Let",
      constant: tok(ctx, "keyword")?.image === "const",
      target,
      type: this.optionalType(ctx),
      value: this.expr(node(ctx, "expression"), span),
      span,
    };
  }

  forStmt(ctx: Children, cst: CstNode): A.For {
    const span = cstSpan(cst);
    return {
      kind: "For",
      variable: nameOr(tok(ctx, "variable"), span),
      iterable: this.expr(node(ctx, "expression"), span),
      body: this.sub<A.Stmt[]>(node(ctx, "block"), () => []),
      span,
    };
  }

  ifStmt(ctx: Children, cst: CstNode): A.If {
    const span = cstSpan(cst);
    const elseIf = node(ctx, "elseIf");
    const elseBlock = node(ctx, "else");
    return {
      kind: "If",
      condition: this.expr(node(ctx, "expression"), span),
      then: this.sub<A.Stmt[]>(node(ctx, "then"), () => []),
      else: elseIf
        ? (this.visit(elseIf) as A.If)
        : elseBlock
          ? this.sub<A.Stmt[]>(elseBlock, () => [])
          : undefined,
      span,
    };
  }

  returnStmt(ctx: Children, cst: CstNode): A.Return {
    const span = cstSpan(cst);
    const value = node(ctx, "expression");
    return { kind: "Return", value: value ? this.expr(value, span) : undefined, span };
  }

  exprStmt(ctx: Children, cst: CstNode): A.Assign | A.ExprStmt {
    const span = cstSpan(cst);
    const target = this.expr(node(ctx, "target"), span);
    const op = tok(ctx, "op");
    if (!op && target.kind !== "Call") {
      // Functions are pure: a bare expression other than a call (an `at` block's action) computes
      // a value nobody uses. The usual cause is a line that starts with `-` or `+`, meant to
      // continue the line above.
      const continued = target.kind === "Unary" && (target.op === "-" || target.op === "+");
      this.diagnostics.push({
        ...error("W0101", "this expression's value is not used", this.at(target.span), {
          help: continued
            ? `a line that starts with \`${target.op}\` begins a new statement: end the line above with \`${target.op}\` instead, or wrap the whole expression in parentheses`
            : "assign it (`let name = …`) or return it (`return …`)",
        }),
        severity: "warning",
      });
    }
    if (!op) return { kind: "ExprStmt", expr: target, span };
    return {
      kind: "Assign",
      target,
      op: op.image as A.AssignOp,
      value: this.expr(node(ctx, "value"), span),
      span,
    };
  }

  // ------------------------------------------------------------------------ train blocks

  trainDecl(ctx: Children, cst: CstNode): A.TrainDecl {
    const span = cstSpan(cst);
    const items = nodes(ctx, "trainItem").map((n) =>
      this.sub<A.TrainItem>(n, () => errorNode(cstSpan(n))),
    );
    return { kind: "Train", name: nameOr(tok(ctx, "name"), span), items, span };
  }

  trainItem(ctx: Children, cst: CstNode): A.TrainItem {
    const child = Object.values(ctx).flat()[0];
    return child && !isToken(child)
      ? this.sub<A.TrainItem>(child, () => errorNode(cstSpan(cst)))
      : errorNode(cstSpan(cst));
  }

  setting(ctx: Children, cst: CstNode): A.Setting | A.ErrorNode {
    const span = cstSpan(cst);
    const key = tok(ctx, "key")?.image as A.SettingKey | undefined;
    if (!key || !settingKeys.has(key)) return errorNode(span);
    return { kind: "Setting", key, value: this.expr(node(ctx, "expression"), span), span };
  }

  freeze(ctx: Children, cst: CstNode): A.Freeze {
    const span = cstSpan(cst);
    return { kind: "Freeze", target: this.selectors(node(ctx, "selectorList"), span), span };
  }

  rule(ctx: Children, cst: CstNode): A.Rule {
    const span = cstSpan(cst);
    return {
      kind: "Rule",
      verb: (tok(ctx, "verb")?.image ?? "adapt") as A.Rule["verb"],
      target: this.selectors(node(ctx, "selectorList"), span),
      method: this.expr(node(ctx, "expression"), span),
      span,
    };
  }

  budgetRule(ctx: Children, cst: CstNode): A.BudgetRule {
    const span = cstSpan(cst);
    return {
      kind: "BudgetRule",
      resource: nameOr(tok(ctx, "resource"), span),
      total: this.expr(node(ctx, "total"), span),
      target: this.selectors(node(ctx, "selectorList"), span),
      controller: this.expr(node(ctx, "controller"), span),
      span,
    };
  }

  evalItem(ctx: Children, cst: CstNode): A.Eval {
    const span = cstSpan(cst);
    const on = node(ctx, "on");
    return {
      kind: "Eval",
      every: this.expr(node(ctx, "every"), span),
      on: on ? this.expr(on, span) : undefined,
      span,
    };
  }

  checkpointItem(ctx: Children, cst: CstNode): A.Checkpoint {
    const span = cstSpan(cst);
    return { kind: "Checkpoint", every: this.expr(node(ctx, "expression"), span), span };
  }

  // ------------------------------------------------------------------------ selectors

  private selectors(n: CstNode | undefined, near: Span): A.SelectorList {
    return this.sub<A.SelectorList>(n, () => ({ kind: "SelectorList", selectors: [], span: near }));
  }

  selectorList(ctx: Children, cst: CstNode): A.SelectorList {
    const span = cstSpan(cst);
    const where = node(ctx, "expression");
    return {
      kind: "SelectorList",
      selectors: nodes(ctx, "selector").map((n) => this.visit(n) as A.Selector),
      where: where ? this.expr(where, span) : undefined,
      span,
    };
  }

  selector(ctx: Children, cst: CstNode): A.Selector {
    return {
      kind: "Selector",
      segments: nodes(ctx, "segment").map((n) => this.visit(n) as A.Segment),
      span: cstSpan(cst),
    };
  }

  segment(ctx: Children, cst: CstNode): A.Segment {
    const span = cstSpan(cst);
    if (ctx["DoubleStar"]) return { kind: "Glob", span };
    if (ctx["LCurly"]) {
      return {
        kind: "Alternatives",
        options: nodes(ctx, "selector").map((n) => this.visit(n) as A.Selector),
        span,
      };
    }
    const pattern = nodes(ctx, "segmentPart")
      .flatMap((n) => allTokens(n))
      .map((t) => t.image)
      .join("");
    const index = ctx["LBracket"]
      ? nodes(ctx, "indexRange").map((n) => this.visit(n) as A.IndexRange)
      : undefined;
    return { kind: "Pattern", pattern, index, span };
  }

  segmentPart(): undefined {
    return undefined; // read through its tokens by `segment`
  }

  indexRange(ctx: Children, cst: CstNode): A.IndexRange {
    const span = cstSpan(cst);
    const start = tok(ctx, "start");
    const end = tok(ctx, "end");
    const range = tok(ctx, "range");
    const int = (t: IToken | undefined) => (t ? Number(t.image.replace(/_/g, "")) : undefined);
    if (ctx["Star"]) return { kind: "IndexRange", inclusive: false, span };
    if (!range)
      return { kind: "IndexRange", start: int(start), end: int(start), inclusive: true, span };
    return {
      kind: "IndexRange",
      start: int(start),
      end: int(end),
      inclusive: range.image === "..=",
      span,
    };
  }

  // ------------------------------------------------------------------------ expressions

  expression(ctx: Children, cst: CstNode): A.Expr {
    type Operand = { prefixes: IToken[]; value: A.Expr };
    const operands: Operand[] = nodes(ctx, "unary").map((n) => this.visit(n) as Operand);
    const operators = toks(ctx, "operator");
    for (const op of operators) {
      if (op.image === "**") {
        this.diagnostics.push(
          error("E0107", "`**` is not an operator", this.at(tokenSpan(op)), {
            help: "write `x ^ 2` for a power, or `a @ b` for a matrix product; `**` is only a selector pattern",
          }),
        );
      }
    }
    if (operands.length === 0) return errorNode(cstSpan(cst));

    let pos = 0;
    let prefixIndex = 0;
    const parseOperand = (): A.Expr => {
      const operand = operands[pos];
      if (!operand) return errorNode(cstSpan(cst));
      const prefix = operand.prefixes[prefixIndex];
      if (prefix) {
        prefixIndex++;
        const op = prefix.image as A.UnaryOp;
        const inner = parseBinary(prefixPrecedence[op]);
        return { kind: "Unary", op, operand: inner, span: cover(tokenSpan(prefix), inner.span) };
      }
      pos++;
      prefixIndex = 0;
      return operand.value;
    };
    const parseBinary = (minPrecedence: number): A.Expr => {
      let left = parseOperand();
      while (pos - 1 < operators.length && pos < operands.length + 1) {
        const opToken = operators[pos - 1]!;
        const op = (opToken.image === "**" ? "^" : opToken.image) as A.BinaryOp;
        const p = precedence[op]!;
        if (p < minPrecedence) break;
        const right =
          pos < operands.length ? parseBinary(op === "^" ? p : p + 1) : errorNode(cstSpan(cst));
        if (pos >= operands.length && right.kind === "Error") {
          left = { kind: "Binary", op, left, right, span: cover(left.span, tokenSpan(opToken)) };
          break;
        }
        left = { kind: "Binary", op, left, right, span: cover(left.span, right.span) };
      }
      return left;
    };
    return parseBinary(0);
  }

  unary(ctx: Children, cst: CstNode): { prefixes: IToken[]; value: A.Expr } {
    return { prefixes: toks(ctx, "prefix"), value: this.expr(node(ctx, "postfix"), cstSpan(cst)) };
  }

  postfix(ctx: Children, cst: CstNode): A.Expr {
    let value = this.expr(node(ctx, "primary"), cstSpan(cst));
    for (const suffix of ctx["suffix"] ?? []) {
      if (isToken(suffix)) {
        if (suffix.isInsertedInRecovery) continue;
        value = { kind: "Transpose", operand: value, span: cover(value.span, tokenSpan(suffix)) };
        continue;
      }
      const c = suffix.children as Children;
      const span = cover(value.span, cstSpan(suffix));
      if (suffix.name === "memberAccess") {
        value = { kind: "Member", object: value, name: nameOr(tok(c, "name"), span), span };
      } else if (suffix.name === "callArgs") {
        value = {
          kind: "Call",
          callee: value,
          args: nodes(c, "arg").map((n) => this.visit(n) as A.Arg),
          span,
        };
      } else {
        value = {
          kind: "Index",
          object: value,
          items: nodes(c, "indexItem").map((n) => this.visit(n) as A.IndexItem),
          span,
        };
      }
    }
    return value;
  }

  memberAccess(): undefined {
    return undefined; // folded into `postfix`
  }

  callArgs(): undefined {
    return undefined; // folded into `postfix`
  }

  indexArgs(): undefined {
    return undefined; // folded into `postfix`
  }

  arg(ctx: Children, cst: CstNode): A.Arg {
    const span = cstSpan(cst);
    return {
      kind: "Arg",
      name: nameOf(tok(ctx, "name")),
      value: this.expr(node(ctx, "expression"), span),
      span,
    };
  }

  indexItem(ctx: Children, cst: CstNode): A.IndexItem {
    const span = cstSpan(cst);
    const ellipsis = tok(ctx, "Ellipsis");
    if (ellipsis) return { kind: "Ellipsis", span };
    const start = node(ctx, "start");
    const tail = node(ctx, "sliceTail");
    if (!tail) return this.expr(start, span);
    const slice = this.visit(tail) as A.Slice;
    return { ...slice, start: start ? this.expr(start, span) : undefined, span };
  }

  sliceTail(ctx: Children, cst: CstNode): A.Slice {
    const span = cstSpan(cst);
    const stop = node(ctx, "stop");
    const step = node(ctx, "step");
    return {
      kind: "Slice",
      stop: stop ? this.expr(stop, span) : undefined,
      step: step ? this.expr(step, span) : undefined,
      span,
    };
  }

  primary(ctx: Children, cst: CstNode): A.Expr {
    const span = cstSpan(cst);
    const literal = tok(ctx, "literal");
    if (literal) return this.literal(literal);
    const name = tok(ctx, "name");
    if (name) return { kind: "NameExpr", name: name.image, span: tokenSpan(name) };
    const inner = node(ctx, "parenExpr") ?? node(ctx, "listExpr");
    return this.sub<A.Expr>(inner, () => errorNode(span));
  }

  private literal(t: IToken): A.Expr {
    const span = tokenSpan(t);
    switch (t.tokenType.name) {
      case "True":
        return { kind: "Bool", value: true, span };
      case "False":
        return { kind: "Bool", value: false, span };
      case "TerminatedString":
      case "UnterminatedString":
        return this.stringLit(t);
      default: {
        const value = Number(t.image.replace(/_/g, ""));
        if (!Number.isFinite(value)) {
          this.diagnostics.push(
            error("E0106", `number \`${t.image}\` is too large`, this.at(span), {
              help: "numbers must fit a 64-bit float",
            }),
          );
        }
        return {
          kind: "Number",
          raw: t.image,
          value,
          isInteger: t.tokenType.name === "IntLiteral",
          span,
        };
      }
    }
  }

  private stringLit(t: IToken): A.StringLit {
    const raw = t.image;
    const body = raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw.slice(1);
    const span = tokenSpan(t);
    const value = body.replace(/\\(u\{[0-9a-fA-F]+\}|.)/g, (_, e: string, offset: number) => {
      const start = span.start + 1 + offset;
      if (e.startsWith("u{")) {
        const code = parseInt(e.slice(2, -1), 16);
        if (code <= 0x10ffff) return String.fromCodePoint(code);
        this.diagnostics.push(
          error(
            "E0108",
            `\`\\${e}\` is not a Unicode code point: they go up to 10FFFF`,
            this.at({ start, end: start + 1 + e.length }),
          ),
        );
        return e;
      }
      const known = ESCAPES[e];
      if (known !== undefined) return known;
      // the escape's span: after the opening quote, at the backslash
      this.diagnostics.push(
        error(
          "E0108",
          `\`\\${e}\` is not an escape lrk knows`,
          this.at({ start, end: start + 2 }),
          {
            help: 'the escapes are \\n \\t \\r \\0 \\\\ \\" and \\u{…}; write `\\\\` for a backslash (or use `/` in paths)',
          },
        ),
      );
      return e;
    });
    return { kind: "String", raw, value, span };
  }

  parenExpr(ctx: Children, cst: CstNode): A.Expr {
    const span = cstSpan(cst);
    const items = nodes(ctx, "expression").map((n) => this.expr(n, span));
    if (items.length === 1 && !ctx["comma"]) return { kind: "Paren", expr: items[0]!, span };
    return { kind: "Tuple", items, span };
  }

  listExpr(ctx: Children, cst: CstNode): A.Expr {
    const span = cstSpan(cst);
    return { kind: "List", items: nodes(ctx, "expression").map((n) => this.expr(n, span)), span };
  }
}

const ESCAPES: Record<string, string> = {
  n: "\n",
  t: "\t",
  r: "\r",
  "0": "\0",
  "\\": "\\",
  '"': '"',
};

/**
 * Recovery can leave spans unknown (NaN). Give every such node its parent's span, so every
 * diagnostic and every later stage can rely on spans lying inside the file.
 */
export function repairSpans(root: object, rootSpan: Span): void {
  const visit = (value: unknown, parent: Span): void => {
    if (Array.isArray(value)) {
      for (const v of value) visit(v, parent);
      return;
    }
    if (value === null || typeof value !== "object") return;
    const rec = value as { span?: Span };
    let here = parent;
    if (rec.span) {
      if (Number.isNaN(rec.span.start) || Number.isNaN(rec.span.end)) rec.span = { ...parent };
      here = rec.span;
    }
    for (const [key, v] of Object.entries(value)) if (key !== "span") visit(v, here);
  };
  visit(root, rootSpan);
}
