// The abstract syntax tree of .lrk. Every node has a span into its file. The tree is plain data:
// later stages read it, none of them mutates it.
import type { Span } from "./source.js";

interface Node {
  span: Span;
}

export interface Name extends Node {
  kind: "Name";
  name: string;
}

/** Stands where the parser recovered from a syntax error. */
export interface ErrorNode extends Node {
  kind: "Error";
}

export interface Comment extends Node {
  kind: "Comment";
  text: string;
  block: boolean;
}

export interface Program extends Node {
  kind: "Program";
  items: TopItem[];
  comments: Comment[];
}

export type TopItem =
  Import | ConstDecl | DataDecl | Definition | TrainDecl | FunctionDef | ErrorNode;

// ---------------------------------------------------------------------------- declarations

export interface Import extends Node {
  kind: "Import";
  /** `std.nn` (a module path) or `"./layers.lrk"` (a file). */
  source: { kind: "module"; parts: Name[]; span: Span } | { kind: "file"; path: StringLit };
  /** `.{A, B as C}`; absent when the whole module is imported. */
  items?: ImportItem[];
  /** `as nn` for a whole-module import. */
  alias?: Name;
}

export interface ImportItem extends Node {
  kind: "ImportItem";
  name: Name;
  alias?: Name;
}

export interface ConstDecl extends Node {
  kind: "Const";
  name: Name;
  type?: TypeExpr;
  value: Expr;
}

export interface DataDecl extends Node {
  kind: "Data";
  name: Name;
  value: Expr;
}

export type DefinitionSort = "model" | "adapter" | "optimizer" | "quantizer" | "budget";

/**
 * `model`, `adapter`, `optimizer`, `quantizer` and `budget` share one shape: a name, parameters,
 * an optional `on` clause saying what they apply to, and members. Which members each sort may
 * hold is a semantic check, not a grammar rule.
 */
export interface Definition extends Node {
  kind: "Definition";
  sort: DefinitionSort;
  name: Name;
  params: Param[];
  on?: OnClause;
  members: Member[];
}

/** `on Linear(in, out)`, `on param: f32[m, n]`, `on adalora`. */
export interface OnClause extends Node {
  kind: "On";
  name: Name;
  /** Names bound to the target's constructor arguments. */
  args?: Name[];
  /** A type pattern binding the target's dims. */
  type?: TypeExpr;
  /** Further module types after `or` (`on Linear(in, out) or Conv1D(in, out)`). */
  alternatives?: OnClause[];
}

export interface Param extends Node {
  kind: "Param";
  name: Name;
  type?: TypeExpr;
  default?: Expr;
}

/** `int`, `float`, `f32[B, T, d]`, `i32[..., n]`. */
export interface TypeExpr extends Node {
  kind: "Type";
  name: Name;
  dims?: Dim[];
}

export type Dim = Expr | EllipsisNode;

export interface EllipsisNode extends Node {
  kind: "Ellipsis";
}

// ---------------------------------------------------------------------------- members

export type Member =
  | ParamMember
  | StateMember
  | Let
  | IfMember
  | Regularize
  | At
  | Repeat
  | FunctionDef
  | Define
  | ErrorNode;

/** `param A: f32[rank, in] = zeros` */
export interface ParamMember extends Node {
  kind: "ParamMember";
  name: Name;
  type: TypeExpr;
  init?: Expr;
}

/** `state P: f32[m, rank] = svd_left(grad, rank) refresh every period` */
export interface StateMember extends Node {
  kind: "StateMember";
  name: Name;
  type?: TypeExpr;
  init: Expr;
  refreshEvery?: Expr;
}

/** `if bias { … } else { … }` over members, decided when the definition is instantiated. */
export interface IfMember extends Node {
  kind: "IfMember";
  condition: Expr;
  then: Member[];
  else?: Member[] | IfMember;
}

/** `regularize 0.1 * fro(Q @ Q^T - eye(r))`: a term added to the training loss. */
export interface Regularize extends Node {
  kind: "Regularize";
  value: Expr;
}

/** `at step 500 { … }` / `at every 200 { … }`: host-side actions on a schedule. */
export interface At extends Node {
  kind: "At";
  trigger: "step" | "every";
  when: Expr;
  body: Stmt[];
}

/** `blocks[layers] { … }`: `layers` copies of the members, at paths `blocks.0`, `blocks.1`, … */
export interface Repeat extends Node {
  kind: "Repeat";
  name: Name;
  count: Expr;
  members: Member[];
}

/** `forward(x: f32[B, d]) -> f32[B, d] { … }` or `forward(x) = expr`. */
export interface FunctionDef extends Node {
  kind: "Function";
  name: Name;
  params: Param[];
  returns?: TypeExpr;
  body: { kind: "Expr"; value: Expr } | { kind: "Block"; stmts: Stmt[] };
}

/** `tok = Embedding(vocab, d)` (a submodule) or `merged = base.weight + …` (a derived value). */
export interface Define extends Node {
  kind: "Define";
  name: Name;
  value: Expr;
}

// ---------------------------------------------------------------------------- statements

export type Stmt = Let | For | If | Return | Assign | ExprStmt | ErrorNode;

/** `let x = …`, `let (a, b) = …`, `const q = …` (members and statements). */
export interface Let extends Node {
  kind: "Let";
  constant: boolean;
  target: Name | TuplePattern;
  type?: TypeExpr;
  value: Expr;
}

export interface TuplePattern extends Node {
  kind: "TuplePattern";
  names: Name[];
}

export interface For extends Node {
  kind: "For";
  variable: Name;
  iterable: Expr;
  body: Stmt[];
}

export interface If extends Node {
  kind: "If";
  condition: Expr;
  then: Stmt[];
  else?: Stmt[] | If;
}

export interface Return extends Node {
  kind: "Return";
  value?: Expr;
}

export type AssignOp = "=" | "+=" | "-=" | "*=" | "/=";

export interface Assign extends Node {
  kind: "Assign";
  target: Expr;
  op: AssignOp;
  value: Expr;
}

export interface ExprStmt extends Node {
  kind: "ExprStmt";
  expr: Expr;
}

// ---------------------------------------------------------------------------- expressions

export type Expr =
  | NumberLit
  | StringLit
  | BoolLit
  | NameExpr
  | Paren
  | Tuple
  | List
  | Unary
  | Binary
  | MemberExpr
  | Call
  | Index
  | Transpose
  | ErrorNode;

export interface NumberLit extends Node {
  kind: "Number";
  /** As written, so the formatter keeps `3e-3` as `3e-3`. */
  raw: string;
  value: number;
  isInteger: boolean;
}

export interface StringLit extends Node {
  kind: "String";
  /** As written, with quotes and escapes. */
  raw: string;
  value: string;
}

export interface BoolLit extends Node {
  kind: "Bool";
  value: boolean;
}

export interface NameExpr extends Node {
  kind: "NameExpr";
  name: string;
}

/** Kept so the formatter reproduces the author's grouping. */
export interface Paren extends Node {
  kind: "Paren";
  expr: Expr;
}

export interface Tuple extends Node {
  kind: "Tuple";
  items: Expr[];
}

export interface List extends Node {
  kind: "List";
  items: Expr[];
}

export type UnaryOp = "-" | "+" | "not";

export interface Unary extends Node {
  kind: "Unary";
  op: UnaryOp;
  operand: Expr;
}

export type BinaryOp =
  "or" | "and" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "+" | "-" | "*" | "/" | "%" | "@" | "^";

export interface Binary extends Node {
  kind: "Binary";
  op: BinaryOp;
  left: Expr;
  right: Expr;
}

export interface MemberExpr extends Node {
  kind: "Member";
  object: Expr;
  name: Name;
}

export interface Call extends Node {
  kind: "Call";
  callee: Expr;
  args: Arg[];
}

export interface Arg extends Node {
  kind: "Arg";
  name?: Name;
  value: Expr;
}

export interface Index extends Node {
  kind: "Index";
  object: Expr;
  items: IndexItem[];
}

export type IndexItem = Expr | Slice | EllipsisNode;

/** `a:b:c` with any part omitted. */
export interface Slice extends Node {
  kind: "Slice";
  start?: Expr;
  stop?: Expr;
  step?: Expr;
}

/** `x^T`: swap the last two axes. */
export interface Transpose extends Node {
  kind: "Transpose";
  operand: Expr;
}

// ---------------------------------------------------------------------------- train blocks

export interface TrainDecl extends Node {
  kind: "Train";
  name: Name;
  items: TrainItem[];
}

export type TrainItem = Setting | Freeze | Rule | BudgetRule | Eval | Checkpoint | At | ErrorNode;

export type SettingKey =
  | "model"
  | "data"
  | "init"
  | "init_adapters"
  | "init_rename"
  | "loss"
  | "steps"
  | "batch"
  | "schedule"
  | "seed"
  | "clip"
  | "frozen_storage";

/** `steps 1000`, `model TinyLM(vocab: 64)`, `loss cross_entropy(next_token)`, … */
export interface Setting extends Node {
  kind: "Setting";
  key: SettingKey;
  value: Expr;
}

export interface Freeze extends Node {
  kind: "Freeze";
  target: SelectorList;
}

/** `adapt … with …`, `optimize … with …`, `quantize … with …` */
export interface Rule extends Node {
  kind: "Rule";
  verb: "adapt" | "optimize" | "quantize";
  target: SelectorList;
  method: Expr;
}

/** `budget rank 96 over blocks.*.mlp.* by adalora_budget(target: 8)` */
export interface BudgetRule extends Node {
  kind: "BudgetRule";
  resource: Name;
  total: Expr;
  target: SelectorList;
  controller: Expr;
}

export interface Eval extends Node {
  kind: "Eval";
  every: Expr;
  on?: Expr;
}

export interface Checkpoint extends Node {
  kind: "Checkpoint";
  every: Expr;
}

// ---------------------------------------------------------------------------- selectors

/** `blocks.*.attn.{q, v}, lnf where rows >= 256` */
export interface SelectorList extends Node {
  kind: "SelectorList";
  selectors: Selector[];
  where?: Expr;
}

export interface Selector extends Node {
  kind: "Selector";
  segments: Segment[];
}

export type Segment = GlobSegment | AlternativesSegment | PatternSegment;

/** `**`: any number of path components, including none. */
export interface GlobSegment extends Node {
  kind: "Glob";
}

/** `{q, v}` or `{attn.q, mlp.*}`: any of the sub-selectors. */
export interface AlternativesSegment extends Node {
  kind: "Alternatives";
  options: Selector[];
}

/** One path component: `attn`, `*`, `*_proj`, `3`, optionally indexed: `blocks[0..4, 6]`. */
export interface PatternSegment extends Node {
  kind: "Pattern";
  pattern: string;
  index?: IndexRange[];
}

/** `3`, `0..4` (half-open), `0..=3` (inclusive), `2..`, `*`. */
export interface IndexRange extends Node {
  kind: "IndexRange";
  start?: number;
  end?: number;
  inclusive: boolean;
}
