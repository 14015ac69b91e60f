// The formatter: prints an AST back to canonical .lrk text, keeping every comment.
//
// Comments are not in the AST's nodes; they are placed by position. Before each line-level node
// (declaration, member, statement, train item) go the comments that start before it; a comment on
// the same line after a node stays at the end of that line; a call or list at the end of a line
// with comments among its items is broken one item per line and keeps them between the same
// tokens; comments left inside a part printed on one line (an operand, a callee) move to their own
// lines just before the line-level node. Placement depends only on the tree, the comments and
// whether a line break separates them from the items, so formatting is idempotent, and
// parse(format(x)) equals parse(x) apart from spans.
import type * as A from "./ast.js";
import type { SourceFile } from "./source.js";

export const lineWidth = 100;
const indentUnit = "  ";

export function format(program: A.Program, file: SourceFile): string {
  const printer = new Printer(program.comments, file.text);
  printer.topLevel(program.items);
  return printer.result();
}

type LineNode = { span: A.Program["span"] };

class Printer {
  private lines: string[] = [];
  private next = 0;
  /** End offset of the last thing printed in the current list, for blank-line preservation. */
  private lastEnd = -1;
  /** The comments inside the line-level node being printed, and those already placed in it. */
  private inside: A.Comment[] = [];
  private readonly placed = new Set<A.Comment>();

  constructor(
    private readonly comments: A.Comment[],
    private readonly text: string,
  ) {}

  result(): string {
    while (this.lines.length > 0 && this.lines[this.lines.length - 1] === "") this.lines.pop();
    return this.lines.length === 0 ? "" : this.lines.join("\n") + "\n";
  }

  // ------------------------------------------------------------------------ layout of lists

  /** Is there an empty line (only whitespace) strictly between offsets `from` and `to`? */
  private blankLineBetween(from: number, to: number): boolean {
    if (from < 0) return false;
    const lines = this.text.slice(from, Math.min(to, this.text.length)).split(/\r\n|\r|\n/);
    return lines.slice(1, -1).some((l) => l.trim() === "");
  }

  private emitBlankIfSource(at: number): void {
    if (
      this.blankLineBetween(this.lastEnd, at) &&
      this.lines.length > 0 &&
      this.lines[this.lines.length - 1] !== ""
    ) {
      this.lines.push("");
    }
  }

  /** Own-line comments that start before `offset`. */
  private leadingComments(offset: number, indent: string): void {
    while (this.next < this.comments.length && this.comments[this.next]!.span.start < offset) {
      const c = this.comments[this.next++]!;
      this.emitBlankIfSource(c.span.start);
      this.lines.push(...commentLines(c, indent));
      this.lastEnd = c.span.end;
    }
  }

  /** Comments on the same line after `end` are appended to the last printed line. */
  private trailingComments(end: number): void {
    while (this.next < this.comments.length) {
      const c = this.comments[this.next]!;
      if (c.span.start < end || hasLineBreak(this.text, end, c.span.start) || c.text.includes("\n"))
        break;
      this.next++;
      this.lines[this.lines.length - 1] += " " + c.text;
      this.lastEnd = c.span.end;
      if (!c.block) break;
    }
  }

  private list<T extends LineNode>(
    items: T[],
    indent: string,
    print: (item: T, indent: string) => string[],
    blankAround?: (item: T) => boolean,
  ): void {
    // The first item of a list never gets a blank line before it.
    this.lastEnd = -1;
    let previousWanted = false;
    items.forEach((item, i) => {
      const wanted = blankAround?.(item) ?? false;
      if (i > 0 && (wanted || previousWanted) && this.lines[this.lines.length - 1] !== "")
        this.lines.push("");
      this.leadingComments(item.span.start, indent);
      this.emitBlankIfSource(item.span.start);
      if (isContainer(item)) this.lines.push(...print(item, indent));
      else this.lineItem(item, indent, print);
      this.lastEnd = item.span.end;
      this.trailingComments(item.span.end);
      previousWanted = wanted;
    });
  }

  /**
   * A node printed on one line (or with its last call's arguments wrapped). The comments inside it
   * that a wrapped call or list places (between its items, after an argument) stay there; the
   * others, inside a part printed on one line, move to their own lines just before it.
   */
  private lineItem<T extends LineNode>(
    item: T,
    indent: string,
    print: (item: T, indent: string) => string[],
  ): void {
    const inside: A.Comment[] = [];
    while (this.next < this.comments.length && this.comments[this.next]!.span.start < item.span.end)
      inside.push(this.comments[this.next++]!);
    this.inside = inside;
    this.placed.clear();
    let printed = print(item, indent);
    // The comments that move before the line must come before those kept inside it, or their
    // order would change: then all of them move (printed again without placing any).
    const kept = inside.filter((c) => this.placed.has(c));
    const moved = inside.filter((c) => !this.placed.has(c));
    if (kept.length > 0 && moved.some((c) => c.span.start > kept[0]!.span.start)) {
      this.inside = [];
      this.placed.clear();
      printed = print(item, indent);
    }
    for (const c of inside) if (!this.placed.has(c)) this.lines.push(...commentLines(c, indent));
    this.inside = [];
    this.lines.push(...printed);
  }

  /** `{`, the body, dangling comments, `}`: the header line is already in `lines`. */
  private body<T extends LineNode>(
    items: T[],
    container: LineNode,
    indent: string,
    print: (item: T, indent: string) => string[],
  ): void {
    const inner = indent + indentUnit;
    const openLine = this.lines.length - 1;
    this.list(items, inner, print);
    this.leadingComments(container.span.end - 1, inner);
    if (this.lines.length - 1 === openLine) {
      this.lines[openLine] += "}";
    } else {
      this.lines.push(indent + "}");
    }
  }

  // ------------------------------------------------------------------------ declarations

  topLevel(items: A.TopItem[]): void {
    this.list(
      items,
      "",
      (item, indent) => this.topItem(item, indent),
      (item) =>
        item.kind === "Definition" ||
        item.kind === "Train" ||
        (item.kind === "Function" && item.body.kind === "Block"),
    );
    this.lastEnd = -1;
    this.leadingComments(Infinity, "");
  }

  private topItem(item: A.TopItem, indent: string): string[] {
    switch (item.kind) {
      case "Import":
        return [indent + importText(item)];
      case "Const":
        return [
          this.line(indent, `const ${item.name.name}${typeSuffix(item.type)} = `, item.value),
        ];
      case "Data":
        return [this.line(indent, `data ${item.name.name} = `, item.value)];
      case "Definition":
        return this.definition(item, indent);
      case "Train":
        return this.train(item, indent);
      case "Function":
        return this.member(item, indent);
      case "Error":
        return [indent + "/* error */"];
    }
  }

  private definition(def: A.Definition, indent: string): string[] {
    const head = `${def.sort} ${def.name.name}`;
    const on = def.on ? " " + onText(def.on) : "";
    const params =
      def.params.length > 0
        ? this.paramList(
            def.params,
            indent,
            indent.length + head.length,
            on.length + 2,
            def.name.span.end,
          )
        : "";
    this.lines.push(`${indent}${head}${params}${on} {`);
    this.body(def.members, def, indent, (m, i) => this.member(m, i));
    return [];
  }

  /**
   * `(a: int, b = 2)`, or one parameter per line when it does not fit or holds comments, which
   * then stay between the same tokens (as a call's arguments do). `nameEnd` is where the `(` may
   * start: the end of the definition's or function's name.
   */
  private paramList(
    params: A.Param[],
    indent: string,
    column: number,
    suffixLength: number,
    nameEnd: number,
  ): string {
    const flat = `(${params.map((p) => paramText(p)).join(", ")})`;
    const close = params.length > 0 ? this.closingParen(params[params.length - 1]!.span.end) : -1;
    const comments = close < 0 ? [] : this.commentsBetween(nameEnd, close);
    if (comments.length === 0 && column + flat.length + suffixLength <= lineWidth) return flat;
    const inner = indent + indentUnit;
    const items = params.map((p) => ({ span: p.span, text: () => paramText(p) }));
    const lines = this.brokenItems(items, nameEnd, close, inner, comments);
    return `(\n${lines.join("\n")}\n${indent})`;
  }

  /** The offset of the first `)` at or after `from` outside comments (-1 if there is none). */
  private closingParen(from: number): number {
    for (let i = from; i < this.text.length; i++) {
      const c = this.comments.find((x) => x.span.start === i);
      if (c) i = c.span.end - 1;
      else if (this.text[i] === ")") return i;
    }
    return -1;
  }

  /**
   * The comments not yet printed that start in [from, to): from the line-level node being
   * printed, or the next ones in order (a definition's parameter list, before its body's).
   */
  private commentsBetween(from: number, to: number): A.Comment[] {
    const within = (c: A.Comment) => c.span.start >= from && c.span.start < to;
    const found = this.inside.filter((c) => !this.placed.has(c) && within(c));
    while (this.next < this.comments.length && within(this.comments[this.next]!))
      found.push(this.comments[this.next++]!);
    return found;
  }

  // ------------------------------------------------------------------------ members

  private member(m: A.Member, indent: string): string[] {
    switch (m.kind) {
      case "ParamMember":
        return [
          m.init
            ? this.line(indent, `param ${m.name.name}: ${typeText(m.type)} = `, m.init)
            : `${indent}param ${m.name.name}: ${typeText(m.type)}`,
        ];
      case "StateMember": {
        const refresh = m.refreshEvery ? ` refresh every ${expr(m.refreshEvery)}` : "";
        return [this.line(indent, `state ${m.name.name}${typeSuffix(m.type)} = `, m.init, refresh)];
      }
      case "Let":
        return [this.letLine(m, indent)];
      case "IfMember":
        this.ifChain<A.IfMember, A.Member>(m, indent, "if ", (members, i, container) =>
          this.body(members, container, i, (x, j) => this.member(x, j)),
        );
        return [];
      case "Regularize":
        return [this.line(indent, "regularize ", m.value)];
      case "At":
        return this.at(m, indent);
      case "Repeat":
        this.lines.push(`${indent}${m.name.name}[${expr(m.count)}] {`);
        this.body(m.members, m, indent, (x, i) => this.member(x, i));
        return [];
      case "Function": {
        const head = `${m.name.name}`;
        const returns = m.returns ? ` -> ${typeText(m.returns)}` : "";
        const params = this.paramList(
          m.params,
          indent,
          indent.length + head.length,
          returns.length + 2,
          m.name.span.end,
        );
        if (m.body.kind === "Expr")
          return [this.line(indent, `${head}${params}${returns} = `, m.body.value)];
        this.lines.push(`${indent}${head}${params}${returns} {`);
        this.body(m.body.stmts, m, indent, (s, i) => this.statement(s, i));
        return [];
      }
      case "Define":
        return [this.line(indent, `${m.name.name} = `, m.value)];
      case "Error":
        return [indent + "/* error */"];
    }
  }

  /** `if … { } else if … { } else { }` for members and statements alike. */
  private ifChain<
    N extends { span: A.Program["span"]; condition: A.Expr; then: T[]; else?: T[] | N },
    T extends LineNode,
  >(
    node: N,
    indent: string,
    keyword: string,
    printBody: (items: T[], indent: string, container: LineNode) => void,
  ): void {
    if (keyword === "if ") this.lines.push(`${indent}if ${expr(node.condition)} {`);
    else this.lines[this.lines.length - 1] += ` else if ${expr(node.condition)} {`;
    // Without the span of `}` we close the then-block after its last item; comments between
    // that and `else` move into the else-block, which is stable.
    const lastThen = node.then[node.then.length - 1];
    const thenEnd = node.else ? (lastThen?.span.end ?? node.condition.span.end) : node.span.end;
    printBody(node.then, indent, { span: { start: node.span.start, end: thenEnd } });
    if (node.else === undefined) return;
    if (Array.isArray(node.else)) {
      this.lines[this.lines.length - 1] += " else {";
      printBody(node.else, indent, node);
    } else {
      this.ifChain(node.else, indent, "else if ", printBody);
    }
  }

  private at(m: A.At, indent: string): string[] {
    this.lines.push(`${indent}at ${m.trigger} ${expr(m.when)} {`);
    this.body(m.body, m, indent, (s, i) => this.statement(s, i));
    return [];
  }

  // ------------------------------------------------------------------------ statements

  private statement(s: A.Stmt, indent: string): string[] {
    switch (s.kind) {
      case "Let":
        return [this.letLine(s, indent)];
      case "For":
        this.lines.push(`${indent}for ${s.variable.name} in ${expr(s.iterable)} {`);
        this.body(s.body, s, indent, (x, i) => this.statement(x, i));
        return [];
      case "If":
        this.ifChain<A.If, A.Stmt>(s, indent, "if ", (stmts, i, container) =>
          this.body(stmts, container, i, (x, j) => this.statement(x, j)),
        );
        return [];
      case "Return":
        return [s.value ? this.line(indent, "return ", s.value) : `${indent}return`];
      case "Assign":
        return [this.line(indent, `${expr(s.target)} ${s.op} `, s.value)];
      case "ExprStmt":
        return [this.line(indent, "", s.expr)];
      case "Error":
        return [indent + "/* error */"];
    }
  }

  private letLine(s: A.Let, indent: string): string {
    const target =
      s.target.kind === "Name"
        ? s.target.name
        : `(${s.target.names.map((n) => n.name).join(", ")})`;
    return this.line(
      indent,
      `${s.constant ? "const" : "let"} ${target}${typeSuffix(s.type)} = `,
      s.value,
    );
  }

  // ------------------------------------------------------------------------ train blocks

  private train(t: A.TrainDecl, indent: string): string[] {
    this.lines.push(`${indent}train ${t.name.name} {`);
    this.body(t.items, t, indent, (item, i) => this.trainItem(item, i));
    return [];
  }

  private trainItem(item: A.TrainItem, indent: string): string[] {
    switch (item.kind) {
      case "Setting":
        return [this.line(indent, `${item.key} `, item.value)];
      case "Freeze":
        return [`${indent}freeze ${selectorListText(item.target)}`];
      case "Rule":
        return [
          this.line(indent, `${item.verb} ${selectorListText(item.target)} with `, item.method),
        ];
      case "BudgetRule":
        return [
          this.line(
            indent,
            `budget ${item.resource.name} ${expr(item.total)} over ${selectorListText(item.target)} by `,
            item.controller,
          ),
        ];
      case "Eval":
        return [`${indent}eval every ${expr(item.every)}${item.on ? ` on ${expr(item.on)}` : ""}`];
      case "Checkpoint":
        return [`${indent}checkpoint every ${expr(item.every)}`];
      case "At":
        return this.at(item, indent);
      case "Error":
        return [indent + "/* error */"];
    }
  }

  /** `prefix` + an expression that may wrap its outermost call's arguments, + `suffix`. */
  private line(indent: string, prefix: string, value: A.Expr, suffix = ""): string {
    return (
      indent +
      prefix +
      this.wrapped(value, indent, indent.length + prefix.length, suffix.length) +
      suffix
    );
  }

  /**
   * The lines of a list broken one item per line (`inner` + item + `,`), with the `comments`
   * found between `from` and `to` kept between the same tokens: on their own line before an item
   * (or before the closing bracket), at the end of an item's line when they were on its line
   * (before its comma if written there), or, inside an item printed on one line, just before it.
   */
  private brokenItems(
    items: { span: A.Program["span"]; text: () => string }[],
    from: number,
    to: number,
    inner: string,
    comments: A.Comment[],
  ): string[] {
    const lines: string[] = [];
    const take = (lo: number, hi: number) =>
      comments.filter((c) => c.span.start >= lo && c.span.start < hi && !this.placed.has(c));
    const gap = (lo: number, hi: number, previousEnd: number | undefined) => {
      for (const c of take(lo, hi)) {
        this.placed.add(c);
        const sameLine =
          previousEnd !== undefined &&
          lines.length > 0 &&
          !hasLineBreak(this.text, previousEnd, c.span.start) &&
          !c.text.includes("\n");
        if (!sameLine) lines.push(...commentLines(c, inner));
        else if (c.block && !this.text.slice(previousEnd, c.span.start).includes(","))
          lines[lines.length - 1] = lines[lines.length - 1]!.replace(/,$/, ` ${c.text},`);
        else lines[lines.length - 1] += " " + c.text;
      }
    };
    items.forEach((item, i) => {
      const previousEnd = i > 0 ? items[i - 1]!.span.end : undefined;
      gap(previousEnd ?? from, item.span.start, previousEnd);
      const text = item.text();
      // Comments inside an item printed on one line go on their own lines just before it.
      for (const c of take(item.span.start, item.span.end)) {
        this.placed.add(c);
        lines.push(...commentLines(c, inner));
      }
      lines.push(inner + text + ",");
    });
    const last = items[items.length - 1]!;
    gap(last.span.end, to, last.span.end);
    return lines;
  }

  /**
   * Print on one line if it fits; otherwise break the outermost call's arguments (or a list's
   * items) one per line. A call or list with a comment inside is always broken, so that its
   * comments stay between the same tokens: on their own line before an item, at the end of an
   * item's line (after its comma, or before it for a block comment written there), or on their
   * own line before the closing bracket.
   */
  private wrapped(e: A.Expr, indent: string, column: number, suffixLength: number): string {
    const items = wrappableItems(e);
    const mine = this.inside.filter(
      (c) => !this.placed.has(c) && c.span.start >= e.span.start && c.span.start < e.span.end,
    );
    const flat = expr(e);
    if (items.length === 0) return flat;
    const open = e.kind === "Call" ? expr(e.callee) + "(" : "[";
    const close = e.kind === "Call" ? ")" : "]";
    const calleeEnd = e.kind === "Call" ? e.callee.span.end : e.span.start;
    // Comments inside the callee are not this list's: they stay for the line's leading comments.
    const listed = mine.filter((c) => c.span.start >= calleeEnd);
    if (listed.length === 0 && column + flat.length + suffixLength <= lineWidth) return flat;
    const inner = indent + indentUnit;
    const lines = this.brokenItems(
      items.map((item) => {
        const name = item.kind === "Arg" && item.name ? `${item.name.name}: ` : "";
        const value = item.kind === "Arg" ? item.value : item;
        return {
          span: item.span,
          text: () => name + this.wrapped(value, inner, inner.length + name.length, 1),
        };
      }),
      calleeEnd,
      e.span.end,
      inner,
      listed,
    );
    return `${open}\n${lines.join("\n")}\n${indent}${close}`;
  }
}

/** The items a call or list breaks one per line; none for other expressions. */
function wrappableItems(e: A.Expr): (A.Arg | A.Expr)[] {
  if (e.kind === "List") return e.items;
  if (e.kind === "Call") return e.args;
  return [];
}

/** Nodes printed with a `{ … }` body of their own, whose inner comments stay inside. */
function isContainer(node: object): boolean {
  const kind = (node as { kind?: string }).kind;
  if (kind === "Function") return (node as A.FunctionDef).body.kind === "Block";
  return ["Definition", "Train", "Repeat", "IfMember", "If", "For", "At"].includes(kind ?? "");
}

function hasLineBreak(text: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (text[i] === "\n" || text[i] === "\r") return true;
  return false;
}

function commentLines(c: A.Comment, indent: string): string[] {
  if (!c.block) return [indent + c.text.trimEnd()];
  // Re-indent a block comment's continuation lines relative to its first line.
  const lines = c.text.split(/\r\n|\r|\n/);
  return lines.map((l, i) => (i === 0 ? indent + l : l.trimEnd()));
}

// ---------------------------------------------------------------------------- expressions

export function expr(e: A.Expr): string {
  switch (e.kind) {
    case "Number":
      return e.raw;
    case "String":
      return e.raw;
    case "Bool":
      return e.value ? "true" : "false";
    case "NameExpr":
      return e.name;
    case "Paren":
      return `(${expr(e.expr)})`;
    case "Tuple":
      return e.items.length === 1 ? `(${expr(e.items[0]!)},)` : `(${e.items.map(expr).join(", ")})`;
    case "List":
      return `[${e.items.map(expr).join(", ")}]`;
    case "Unary":
      return e.op === "not" ? `not ${expr(e.operand)}` : `${e.op}${expr(e.operand)}`;
    case "Binary":
      return `${expr(e.left)} ${e.op} ${expr(e.right)}`;
    case "Member":
      return `${expr(e.object)}.${e.name.name}`;
    case "Call":
      return `${expr(e.callee)}(${e.args.map(argText).join(", ")})`;
    case "Index":
      return `${expr(e.object)}[${e.items.map(indexItemText).join(", ")}]`;
    case "Transpose":
      return `${expr(e.operand)}^T`;
    case "Error":
      return "/* error */";
  }
}

function argText(a: A.Arg): string {
  return a.name ? `${a.name.name}: ${expr(a.value)}` : expr(a.value);
}

function indexItemText(item: A.IndexItem): string {
  if (item.kind === "Ellipsis") return "...";
  if (item.kind !== "Slice") return expr(item);
  const start = item.start ? expr(item.start) : "";
  const stop = item.stop ? expr(item.stop) : "";
  return item.step ? `${start}:${stop}:${expr(item.step)}` : `${start}:${stop}`;
}

function typeText(t: A.TypeExpr): string {
  if (!t.dims) return t.name.name;
  return `${t.name.name}[${t.dims.map((d) => (d.kind === "Ellipsis" ? "..." : expr(d))).join(", ")}]`;
}

function typeSuffix(t: A.TypeExpr | undefined): string {
  return t ? `: ${typeText(t)}` : "";
}

function paramText(p: A.Param): string {
  return `${p.name.name}${typeSuffix(p.type)}${p.default ? ` = ${expr(p.default)}` : ""}`;
}

function onText(on: A.OnClause): string {
  const args = on.args ? `(${on.args.map((a) => a.name).join(", ")})` : "";
  const head = `${on.name.name}${args}${on.type ? `: ${typeText(on.type)}` : ""}`;
  const rest = (on.alternatives ?? []).map((alt) => ` or ${onText(alt).slice("on ".length)}`);
  return `on ${head}${rest.join("")}`;
}

function importText(i: A.Import): string {
  const source =
    i.source.kind === "file" ? i.source.path.raw : i.source.parts.map((p) => p.name).join(".");
  const items = i.items
    ? `.{${i.items.map((it) => it.name.name + (it.alias ? ` as ${it.alias.name}` : "")).join(", ")}}`
    : "";
  return `import ${source}${items}${i.alias ? ` as ${i.alias.name}` : ""}`;
}

// ---------------------------------------------------------------------------- selectors

export function selectorListText(list: A.SelectorList): string {
  const selectors = list.selectors.map(selectorText).join(", ");
  return list.where ? `${selectors} where ${expr(list.where)}` : selectors;
}

export function selectorText(s: A.Selector): string {
  return s.segments.map(segmentText).join(".");
}

function segmentText(s: A.Segment): string {
  switch (s.kind) {
    case "Glob":
      return "**";
    case "Alternatives":
      return `{${s.options.map(selectorText).join(", ")}}`;
    case "Pattern":
      return s.index ? `${s.pattern}[${s.index.map(rangeText).join(", ")}]` : s.pattern;
  }
}

function rangeText(r: A.IndexRange): string {
  if (r.start === undefined && r.end === undefined) return "*";
  if (r.inclusive && r.start !== undefined && r.start === r.end) return String(r.start);
  return `${r.start ?? ""}${r.inclusive ? "..=" : ".."}${r.end ?? ""}`;
}
