// Lowering .lrk functions to the tensor IR: the evaluator for code that runs on tensors
// (forward functions, losses, optimizer updates, budget controllers). Compile-time values
// (numbers, modules, configurations) are computed on the spot; tensor values become IR nodes.
// Shapes are checked here, against the user's expressions, before the builder sees them.
import type { GenerationLowering } from "./generation.js";
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import { Builder, broadcastShapes, ShapeError } from "./builder.js";
import { valueRange, type DType, type Shape } from "./ir.js";
import type { Module } from "./modules.js";
import type { Applied } from "./place.js";
import { chain, Reported, type Resolver, type Scope } from "./resolve.js";
import { closest } from "./suggest.js";
import { itemAt, sliceOf } from "./sequences.js";
import { tensorBuiltin } from "./tensor-builtins.js";
import { describeValue, num, type ModuleInstance, type ParamInfo, type Value } from "./values.js";

export type Tensor = Extract<Value, { kind: "tensor" }>;

/** Nested function calls (forwards included) allowed: real models nest about ten deep. */
export const maxCallDepth = 200;

/** Where an expression is being evaluated. */
export interface Frame {
  module: Module;
  /** `let` variables and bound function parameters; assignments rebind them. */
  locals: Map<string, Value>;
  /** Everything else visible: the instance's members, then its module's top level. */
  scope: Scope;
  /** Symbolic dims bound by typed parameters (`B`, `T`). */
  dims: Map<string, number>;
  /**
   * Locals given by the definition that cannot be assigned (an optimizer's `step`, `grad`, `lr`):
   * a `let` of the same name shadows them and may be.
   */
  readOnly?: Set<string>;
}

class ReturnSignal {
  constructor(readonly value: Value) {}
}

export interface LowerHooks {
  /** The node for a parameter (a graph input, or a value computed earlier). */
  param(p: ParamInfo): number;
  /** A quantizer's `const` tensor: a stored buffer rather than a recomputation. */
  buffer?(v: Extract<Value, { kind: "deferred" }>): Value | undefined;
  /**
   * Reads `config.lr` and friends (the schedule scales `lr`) and `inner.update`; absent outside an
   * optimizer's update (see `withHooks`).
   */
  configMember?(config: Extract<Value, { kind: "config" }>, name: string): Value | undefined;
  /**
   * An assignment in an `at` action (compiler/actions.ts): true when the hook performed it
   * (a parameter such as `base.weight`, or a bare initializer); false for the ordinary path.
   */
  assign?(s: A.Assign, frame: Frame): boolean;
  /**
   * The per-tensor names of an optimizer instance being lowered (`param`, `grad`, `step`, `lr`,
   * its states) with their current values, which its helper functions read like members.
   */
  liveMembers?(self: ModuleInstance): Scope | undefined;
  /**
   * For an `if` on a tensor condition: the branch to lower alone when the condition depends only
   * on the step (decided on the host, one step variant per outcome), else undefined.
   */
  stepCondition?(node: number): boolean | undefined;
  /**
   * `init_gradient(w, …)` at `at` (compiler/init-gradient.ts): checks where it is called (before
   * its arguments are lowered), then gives the node of the summed gradient of the base parameter
   * `w` reads. Absent where no such value exists (everywhere but the init program).
   */
  initGradient?(at: Location): (w: number, request: { batches: number; batch?: number }) => number;
  /**
   * `load(path, tensor)` (compiler/load.ts): the node of a tensor read from a file when training
   * starts. Absent where no such value exists (everywhere but the init program).
   */
  load?: {
    /** The folder relative paths start from: the train block's file's. */
    dir: string;
    input(path: string, tensor: string, shape: number[], dtype: DType, at: Location): number;
  };
}

export class Lowerer {
  /** Nodes made by `stop_grad`: constants for autodiff. */
  readonly stopped = new Set<number>();
  /** Adapted or quantized modules: calling one runs the wrapper's `forward`. */
  readonly wrappers = new Map<ModuleInstance, Applied[]>();
  /** `training` is false while evaluating: dropout is the identity. Read it through `isTraining`. */
  training = true;
  /**
   * How many times lowering asked whether it is training (`isTraining`: dropout does). Boxed, so
   * that lowerers made by `withHooks` and `unwrapped` count into the same box.
   */
  private readonly modeReads = { count: 0 };
  /** The forwards `keepingForwards` keeps, and the lowerer keeping them. */
  private forwards?: { owner: Lowerer; values: Map<ModuleInstance, Map<string, Value>> };
  /**
   * Set while lowering `lrkc generate`'s program (compiler/generation.ts): where `positions`,
   * `causal_mask` and `kv_cache` read the token's position and keep the caches. Unset, they are
   * `arange`, `tril(ones(…))` and the identity.
   */
  generation?: GenerationLowering;
  /** Boxed, so that a lowerer made by `withHooks` draws from the same sequence. */
  private readonly seeds = { next: 0 };
  /** Member expressions being evaluated now (a member that needs itself is a cycle). */
  private readonly evaluating = new Map<ModuleInstance, Set<A.Expr>>();
  /** Functions being inlined now, outermost first: recursion deeper than maxCallDepth is refused. */
  private callDepth = 0;
  /** Member values already lowered into this graph, per instance and expression. */
  private readonly memberValues = new Map<ModuleInstance, Map<A.Expr, Map<string, Value>>>();
  /** Member values whose lowering asked whether it is training (`isTraining`). */
  private readonly modalMembers = new WeakSet<Value>();
  /** The step counter node, for randomness that changes every step (dropout). */
  stepNode?: number;
  /**
   * Part of the key of cached member values: an action that has assigned a parameter sets its own
   * key, so that a member read afterwards (`merged`) is computed again from the new values.
   */
  memberKey = "";
  /** Symbolic names of a node's dims (`B`, `T`), where known, for diagnostics in the user's terms. */
  private readonly dimNames = new Map<number, (string | undefined)[]>();
  /**
   * The module calls being lowered, innermost last: where each was called from, whether from a
   * user's file (not `std.*`), and the instance called. An error found inside a library module
   * (an embedding's gather) points at the user's call.
   */
  private readonly calls: { at: Location; user: boolean; instance: ModuleInstance }[] = [];

  /** `f32[B, T, 128]`: a node's type with the symbolic names of its dims where they are known. */
  typeText(node: number): string {
    const names = this.dimNames.get(node);
    const shape = this.b.shape(node);
    return `${this.b.dtype(node)}[${shape.map((d, i) => names?.[i] ?? String(d)).join(", ")}]`;
  }

  private name(node: number, names: (string | undefined)[] | undefined): number {
    if (names && names.some((n) => n !== undefined) && names.length === this.b.shape(node).length)
      this.dimNames.set(node, names);
    return node;
  }

  /** Names for the result of a broadcasting op: aligned from the last dim, first operand first. */
  private broadcastNames(out: number, ...operands: number[]): number {
    const rank = this.b.shape(out).length;
    const names: (string | undefined)[] = new Array(rank).fill(undefined);
    for (const x of operands) {
      const n = this.dimNames.get(x);
      if (!n) continue;
      const offset = rank - n.length;
      n.forEach(
        (v, i) =>
          (names[offset + i] ??=
            this.b.shape(out)[offset + i] === this.b.shape(x)[i] ? v : undefined),
      );
    }
    return this.name(out, names);
  }

  /** Whether lowering is for training (dropout on), counted: see `keepingForwards`. */
  isTraining(): boolean {
    this.modeReads.count++;
    return this.training;
  }

  /**
   * `lower()`, keeping the value of every module forward that did not ask whether it is training
   * and whose arguments are all tensors: a call of the same module on the same tensors — the
   * evaluation's and the prediction's forward after the training loss's — is that value rather
   * than the forward lowered again (a copy of the model whose reductions, never shared by value
   * numbering, would make every layer after them anew). A forward that asked (dropout) differs by
   * mode and by call (each dropout draws its own mask) and is lowered every time. Only this
   * lowerer's own forwards are kept (not those of `withHooks` or `unwrapped` ones).
   */
  keepingForwards<T>(lower: () => T): T {
    this.forwards = { owner: this, values: new Map() };
    try {
      return lower();
    } finally {
      this.forwards = undefined;
    }
  }

  /** A fresh seed for each random intrinsic in the program, in lowering order (deterministic). */
  nextSeed(): number {
    return 0x5eed + this.seeds.next++;
  }

  constructor(
    readonly r: Resolver,
    readonly b: Builder,
    readonly hooks: LowerHooks,
  ) {}

  /**
   * A lowerer into the same graph with the same state (wrappers, caches, seeds, `training`), that
   * answers `hooks` in place of this one's: an optimizer's update is lowered through one that knows
   * the optimizer's `inner`. It reads this lowerer's fields; set flags such as `training` here.
   */
  withHooks(hooks: Partial<LowerHooks>): Lowerer {
    return Object.create(this, { hooks: { value: { ...this.hooks, ...hooks } } }) as Lowerer;
  }

  /**
   * A lowerer into the same graph that runs every module without its wrappers (adapters,
   * quantizers), with dropout off, reading parameters through `param`: the frozen teacher of
   * `frozen(model)`. Member values it computes are cached apart from this lowerer's.
   */
  unwrapped(param: (p: ParamInfo) => number): Lowerer {
    return Object.create(this, {
      hooks: { value: { ...this.hooks, param } },
      wrappers: { value: new Map<ModuleInstance, Applied[]>() },
      training: { value: false, writable: true },
      memberKey: { value: `${this.memberKey}:frozen`, writable: true },
    }) as Lowerer;
  }

  fail(at: Location, message: string, extra: { help?: string; label?: string } = {}): never {
    return this.r.report(error("E0401", message, at, extra));
  }

  /**
   * `node` broadcast to the shape of the stored tensor `name` it is assigned to (a parameter or
   * state keeps its shape), or E0401 at `at`.
   */
  fitTo(node: number, shape: Shape, at: Location, name: string): number {
    const have = this.b.shape(node);
    if (sameShape(have, shape)) return node;
    try {
      return this.b.broadcastTo(node, shape);
    } catch {
      return this.fail(
        at,
        `\`${name}\` is ${shapeText(shape)} but the new value is ${shapeText(have)}`,
      );
    }
  }

  at(frame: Frame, node: { span: A.Program["span"] }): Location {
    return { file: frame.module.file, span: node.span };
  }

  tensor(node: number): Tensor {
    return { kind: "tensor", node, shape: this.b.shape(node), dtype: this.b.dtype(node) };
  }

  /** A number or a tensor as a tensor node (numbers become f32 constants). */
  asNode(v: Value, frame: Frame, e: { span: A.Program["span"] }, dtype: DType = "f32"): number {
    if (v.kind === "tensor") return v.node;
    if (v.kind === "number") return this.b.constant(v.value, [], dtype);
    if (v.kind === "bool") return this.b.constant(v.value ? 1 : 0, [], dtype);
    if (v.kind === "param") return this.hooks.param(v.param);
    return this.r.report(
      error("E0402", `expected a tensor or a number, found ${describeValue(v)}`, this.at(frame, e)),
    );
  }

  /** A frame for code inside a module instance (its members in scope). */
  frameFor(instance: ModuleInstance, locals = new Map<string, Value>()): Frame {
    return {
      module: instance.module,
      locals,
      scope: chain(instance.scope, instance.lookup),
      dims: new Map(),
    };
  }

  // ------------------------------------------------------------------------ names

  lookup(name: A.Name | A.NameExpr, frame: Frame): Value {
    const local = frame.locals.get(name.name);
    if (local) return this.resolve(local, frame);
    const dim = frame.dims.get(name.name);
    if (dim !== undefined) return num(dim, true);
    const value = frame.scope.lookup(name.name);
    if (value) return this.resolve(value, frame);
    const guess = closest(name.name, [
      ...frame.locals.keys(),
      ...frame.dims.keys(),
      ...frame.scope.names(),
    ]);
    return this.r.report(
      error("E0204", `\`${name.name}\` is not defined`, this.at(frame, name), {
        help: guess ? `did you mean \`${guess}\`?` : undefined,
      }),
    );
  }

  /** Parameters become nodes; deferred member expressions are evaluated in their instance. */
  private resolve(v: Value, frame: Frame): Value {
    if (v.kind === "param") return this.tensor(this.hooks.param(v.param));
    if (v.kind === "deferred") {
      const stored = v.constant ? this.hooks.buffer?.(v) : undefined;
      if (stored) return stored;
      // A member is evaluated once per graph: `const (L1, L2, R) = svd_split(…)` is one SVD, not
      // one per name, and `training` (dropout) is part of the key.
      const key = `${this.training}${this.memberKey}`;
      let byExpr = this.memberValues.get(v.self);
      if (!byExpr) this.memberValues.set(v.self, (byExpr = new Map()));
      let cached = byExpr.get(v.expr)?.get(key);
      if (!cached) {
        // `a = b + 1` with `b = a * 2`: the member needs its own value, which never comes.
        let evaluating = this.evaluating.get(v.self);
        if (!evaluating) this.evaluating.set(v.self, (evaluating = new Set()));
        if (evaluating.has(v.expr))
          return this.r.report(
            error("E0210", `\`${v.name}\` is defined in terms of itself`, {
              file: v.self.module.file,
              span: v.expr.span,
            }),
          );
        evaluating.add(v.expr);
        const reads = this.modeReads.count;
        try {
          cached = this.expr(v.expr, this.frameFor(v.self));
        } finally {
          evaluating.delete(v.expr);
        }
        if (this.modeReads.count !== reads) this.modalMembers.add(cached);
        if (!byExpr.has(v.expr)) byExpr.set(v.expr, new Map());
        byExpr.get(v.expr)!.set(key, cached);
      } else if (this.modalMembers.has(cached)) {
        // a value that depends on the mode, read again: this lowering depends on it too
        this.modeReads.count++;
      }
      const value = cached;
      if (v.index === undefined) return value;
      if ((value.kind !== "tuple" && value.kind !== "list") || value.items.length <= v.index) {
        return this.r.report(
          error("E0402", `cannot unpack ${describeValue(value)} into \`${v.name}\``, {
            file: v.self.module.file,
            span: v.expr.span,
          }),
        );
      }
      return value.items[v.index]!;
    }
    void frame;
    return v;
  }

  // ------------------------------------------------------------------------ expressions

  /** Evaluates an expression; the IR nodes it makes remember its .lrk file and line. */
  /** The value an assignment stores: `value` for `=`, `target OP (value)` for `OP=`. */
  assigned(s: A.Assign, frame: Frame): Value {
    if (s.op === "=") return this.expr(s.value, frame);
    const right: A.Expr = { kind: "Paren", expr: s.value, span: s.value.span };
    const op = s.op[0] as A.BinaryOp;
    return this.binary({ kind: "Binary", op, left: s.target, right, span: s.span }, frame);
  }

  expr(e: A.Expr, frame: Frame): Value {
    const previous = this.b.source;
    this.b.source = {
      file: frame.module.file.path,
      line: frame.module.file.position(e.span.start).line,
    };
    try {
      return this.exprAt(e, frame);
    } catch (err) {
      // A shape the checks above did not catch: reported at the innermost expression that made
      // it (the enclosing ones then see `Reported`), never an internal error.
      if (err instanceof ShapeError) this.fail(this.at(frame, e), err.message);
      throw err;
    } finally {
      this.b.source = previous;
    }
  }

  private exprAt(e: A.Expr, frame: Frame): Value {
    switch (e.kind) {
      case "Number":
        return num(e.value, e.isInteger);
      case "String":
        return { kind: "string", value: e.value };
      case "Bool":
        return { kind: "bool", value: e.value };
      case "NameExpr":
        return this.lookup(e, frame);
      case "Paren":
        return this.expr(e.expr, frame);
      case "List":
        return { kind: "list", items: e.items.map((i) => this.expr(i, frame)) };
      case "Tuple":
        return { kind: "tuple", items: e.items.map((i) => this.expr(i, frame)) };
      case "Unary":
        return this.unary(e, frame);
      case "Binary":
        return this.binary(e, frame);
      case "Member":
        return this.member(e, frame);
      case "Call":
        return this.call(e, frame);
      case "Index":
        return this.index(e, frame);
      case "Transpose": {
        const v = this.expr(e.operand, frame);
        if (v.kind !== "tensor" || v.shape.length < 2) {
          this.fail(
            this.at(frame, e),
            `\`^T\` needs a tensor with at least 2 dims, found ${describeValue(v)}`,
          );
        }
        const names = this.dimNames.get(v.node);
        const swapped = names
          ? [...names.slice(0, -2), names[names.length - 1], names[names.length - 2]]
          : undefined;
        return this.tensor(this.name(this.b.transpose(v.node), swapped));
      }
      case "Error":
        throw new Reported();
    }
  }

  private unary(e: A.Unary, frame: Frame): Value {
    const v = this.expr(e.operand, frame);
    if (v.kind === "number") return num(e.op === "-" ? -v.value : v.value, v.integer);
    if (v.kind === "bool" && e.op === "not") return { kind: "bool", value: !v.value };
    const x = this.asNode(v, frame, e.operand);
    if (e.op === "-") return this.tensor(this.b.neg(x));
    if (e.op === "+") return this.tensor(x);
    return this.tensor(this.b.unary("not", x));
  }

  private binary(e: A.Binary, frame: Frame): Value {
    const l = this.expr(e.left, frame);
    const r = this.expr(e.right, frame);
    // `xs + [x]`: lists join (a model collecting its blocks' outputs in a loop)
    if (e.op === "+" && l.kind === "list" && r.kind === "list")
      return { kind: "list", items: [...l.items, ...r.items] };
    const compileTime = (v: Value) =>
      v.kind === "number" || v.kind === "bool" || v.kind === "string";
    if (compileTime(l) && compileTime(r)) {
      // Reuse the compile-time evaluator on the already computed operands.
      const lit = (v: Value, at: A.Expr): A.Expr =>
        v.kind === "number"
          ? {
              kind: "Number",
              raw: String(v.value),
              value: v.value,
              isInteger: v.integer,
              span: at.span,
            }
          : v.kind === "bool"
            ? { kind: "Bool", value: v.value, span: at.span }
            : {
                kind: "String",
                raw: JSON.stringify((v as { value: string }).value),
                value: (v as { value: string }).value,
                span: at.span,
              };
      return this.r.evaluate(
        { ...e, left: lit(l, e.left), right: lit(r, e.right) },
        frame.scope,
        frame.module,
      );
    }
    const a = this.asNode(l, frame, e.left);
    const b = this.asNode(r, frame, e.right);
    const sa = this.b.shape(a);
    const sb = this.b.shape(b);
    if (e.op === "@") {
      for (const [x, side] of [
        [a, e.left],
        [b, e.right],
      ] as const) {
        if (this.b.dtype(x) !== "f32")
          this.r.report(
            error(
              "E0402",
              `\`@\` needs f32 tensors, found ${this.typeText(x)}`,
              this.at(frame, side),
              {
                help: "declare it `f32[…]`: a matrix product of integers is not supported",
              },
            ),
          );
      }
      if (sa.length === 0 || sb.length === 0)
        this.fail(
          this.at(frame, e),
          `\`@\` needs tensors with dims: ${this.typeText(a)} @ ${this.typeText(b)}`,
        );
      const k1 = sa[sa.length - 1]!;
      const k2 = sb.length === 1 ? sb[0]! : sb[sb.length - 2]!;
      if (k1 !== k2) {
        const fixable = sb.length >= 2 && sb[sb.length - 1] === k1;
        this.fail(
          this.at(frame, e),
          `${this.typeText(a)} @ ${this.typeText(b)}: inner dims ${k1} and ${k2} differ`,
          {
            help: fixable ? "did you mean to transpose the right operand (`@ w^T`)?" : undefined,
          },
        );
      }
      if (sa.length > 2 || sb.length > 2) this.broadcastable(a, b, frame, e, "@", true);
      const product = this.b.matmul(a, b);
      const na = this.dimNames.get(a);
      const nb = this.dimNames.get(b);
      if (na || nb) {
        const rank = this.b.shape(product).length;
        const names: (string | undefined)[] = new Array(rank).fill(undefined);
        if (na && sa.length >= 2) {
          na.slice(0, -2).forEach((v, i) => (names[rank - 2 - (sa.length - 2) + i] = v));
          names[rank - 2] = na[na.length - 2];
        }
        if (nb && sb.length >= 2) names[rank - 1] = nb[nb.length - 1];
        this.name(product, names);
      }
      return this.tensor(product);
    }
    this.broadcastable(a, b, frame, e, e.op);
    const fns: Record<string, Parameters<Builder["binary"]>[0]> = {
      "+": "add",
      "-": "sub",
      "*": "mul",
      "/": "div",
      "%": "mod",
      "^": "pow",
      "==": "eq",
      "!=": "ne",
      "<": "lt",
      "<=": "le",
      ">": "gt",
      ">=": "ge",
      and: "and",
      or: "or",
    };
    return this.tensor(
      this.broadcastNames(
        this.b.binary(fns[e.op]!, this.b.cast(a, "f32"), this.b.cast(b, "f32")),
        a,
        b,
      ),
    );
  }

  private broadcastable(
    a: number,
    b: number,
    frame: Frame,
    e: A.Expr,
    op: string,
    batchOnly = false,
  ): void {
    const sa = batchOnly ? this.b.shape(a).slice(0, -2) : this.b.shape(a);
    const sb = batchOnly ? this.b.shape(b).slice(0, -2) : this.b.shape(b);
    try {
      broadcastShapes(sa, sb);
    } catch {
      const n = Math.max(sa.length, sb.length);
      let detail = "";
      for (let i = 1; i <= n; i++) {
        const x = sa[sa.length - i] ?? 1;
        const y = sb[sb.length - i] ?? 1;
        if (x !== y && x !== 1 && y !== 1) {
          detail = `dims ${x} and ${y} differ`;
          break;
        }
      }
      this.fail(this.at(frame, e), `${this.typeText(a)} ${op} ${this.typeText(b)}: ${detail}`, {
        help: "shapes must match from the last dim, or be 1 where they broadcast",
      });
    }
  }

  private member(e: A.MemberExpr, frame: Frame): Value {
    const object = this.expr(e.object, frame);
    if (object.kind === "instance") {
      const v = object.instance.scope.get(e.name.name);
      if (v) return this.resolve(v, frame);
    }
    if (object.kind === "bound" && object.members) {
      for (const m of object.members) {
        const v = m.scope.get(e.name.name);
        if (v) return this.resolve(v, frame);
      }
    }
    if (object.kind === "config" && this.hooks.configMember) {
      const v = this.hooks.configMember(object, e.name.name);
      if (v) return v;
    }
    if (object.kind === "struct") {
      const v = object.fields.get(e.name.name);
      if (v) return v;
      const guess = closest(e.name.name, object.fields.keys());
      this.r.report(
        error("E0207", `${object.what} has no field \`${e.name.name}\``, this.at(frame, e.name), {
          help: guess
            ? `did you mean \`${guess}\`?`
            : `its fields are ${[...object.fields.keys()].join(", ")}`,
        }),
      );
    }
    return this.r.member(object, e.name, frame.module);
  }

  /**
   * A gather whose ids are known to reach outside the table's rows (token ids from a vocabulary
   * larger than the embedding, positions past a positional table) is an error where the user
   * called the module that gathers: on a GPU it would read other memory and train on nonsense.
   */
  private checkGatherRange(table: number, ids: number, frame: Frame, e: A.Index): void {
    const range = valueRange(this.b.graph, ids);
    const rows = this.b.shape(table)[0]!;
    if (!range || (range.min >= 0 && range.max < rows)) return;
    const inLibrary = frame.module.name.startsWith("std.");
    const caller = inLibrary ? [...this.calls].reverse().find((c) => c.user) : undefined;
    const at = caller?.at ?? this.at(frame, e);
    const param = this.b.graph.node(table).name?.match(/^param:(.*)$/)?.[1];
    const owner = inLibrary ? this.calls.at(-1)?.instance.path : undefined;
    const name = owner ? `\`${owner}\`` : param ? `\`${param}\`` : "the table";
    const rowsText = `${rows} row${rows === 1 ? "" : "s"}`;
    if (range.min < 0)
      this.r.report(
        error(
          "E0410",
          `${name} is indexed by values as low as ${range.min}, but rows are numbered from 0`,
          at,
          {
            help: "only index a table with ids that are 0 or more (a target's -1 marks a position with nothing to predict)",
          },
        ),
      );
    const needed = range.max + 1;
    const why = range.what ?? `the indices can be as large as ${range.max}`;
    const help = range.what?.startsWith("the data's vocabulary")
      ? `make ${name} as large as the vocabulary, at least ${needed} rows: size it with the data declaration's \`vocab\` (e.g. \`vocab: arith.vocab\` for \`data arith = …\`)`
      : range.what?.startsWith("the positions")
        ? `give ${name} at least ${needed} rows (a longer context), or make the data's sequences shorter`
        : `give ${name} at least ${needed} rows`;
    this.r.report(error("E0410", `${why} but ${name} has ${rowsText}`, at, { help }));
  }

  private index(e: A.Index, frame: Frame): Value {
    const object = this.expr(e.object, frame);
    if (object.kind === "list" || object.kind === "tuple") return this.listItem(object, e, frame);
    const x = this.asNode(object, frame, e.object);
    const shape = this.b.shape(x);
    // `table[ids]` with an integer tensor: a gather (embedding lookup).
    if (e.items.length === 1 && e.items[0]!.kind !== "Slice" && e.items[0]!.kind !== "Ellipsis") {
      const idx = this.expr(e.items[0] as A.Expr, frame);
      if (idx.kind === "tensor") {
        if (idx.dtype !== "i32")
          this.fail(
            this.at(frame, e.items[0]!),
            `indices must be i32, found ${shapeText(idx.shape, idx.dtype)}`,
          );
        this.checkGatherRange(x, idx.node, frame, e);
        return this.tensor(this.b.gather(x, idx.node));
      }
    }
    // Basic indexing: integers drop an axis, slices keep it, `...` fills the middle.
    const starts: (number | undefined)[] = [];
    const stops: (number | undefined)[] = [];
    const steps: (number | undefined)[] = [];
    const drop: number[] = [];
    const ellipsis = e.items.findIndex((i) => i.kind === "Ellipsis");
    const explicit = e.items.filter((i) => i.kind !== "Ellipsis").length;
    if (e.items.filter((i) => i.kind === "Ellipsis").length > 1)
      this.fail(
        this.at(frame, e),
        "`...` may appear once in an index: it stands for all the axes not otherwise named",
      );
    if (explicit > shape.length)
      this.fail(this.at(frame, e), `${explicit} indices for a tensor of ${shape.length} dims`);
    let axis = 0;
    for (const item of e.items) {
      if (item.kind === "Ellipsis") {
        const skip = shape.length - explicit;
        for (let k = 0; k < skip; k++)
          (starts.push(undefined), stops.push(undefined), steps.push(undefined), axis++);
        continue;
      }
      const value = (x: A.Expr | undefined) =>
        x ? this.wholeNumber(x, frame, "an index") : undefined;
      if (item.kind === "Slice") {
        starts.push(value(item.start));
        stops.push(value(item.stop));
        steps.push(value(item.step));
      } else {
        let i = value(item as A.Expr)!;
        const n = shape[axis]!;
        if (i < -n || i >= n)
          this.fail(this.at(frame, item), `index ${i} is out of range for a dim of ${n}`);
        if (i < 0) i += n;
        starts.push(i);
        stops.push(i + 1);
        steps.push(1);
        drop.push(axis);
      }
      axis++;
    }
    void ellipsis;
    let out = this.b.slice(x, starts, stops, steps);
    if (this.b.shape(out).includes(0))
      this.fail(
        this.at(frame, e),
        `this slice of ${this.typeText(x)} is empty (${shapeText(this.b.shape(out), this.b.dtype(out))})`,
        { help: "a tensor needs at least one element in every dim: check the slice bounds" },
      );
    if (drop.length > 0)
      out = this.b.reshape(
        out,
        this.b.shape(out).filter((_, i) => !drop.includes(i)),
      );
    return this.tensor(out);
  }

  /** `xs[i]` or `xs[a:b:c]` of a list or tuple, with Python's rules (sequences.ts). */
  private listItem(
    object: Extract<Value, { kind: "list" | "tuple" }>,
    e: A.Index,
    frame: Frame,
  ): Value {
    const item = e.items[0];
    const what = object.kind === "list" ? "a list" : "a tuple";
    if (e.items.length !== 1 || !item || item.kind === "Ellipsis")
      return this.r.report(
        error("E0402", `${what} takes one index or one slice`, this.at(frame, e), {
          help: "write e.g. `xs[0]`, `xs[-1]` or `xs[1:]`",
        }),
      );
    if (item.kind === "Slice") {
      const bound = (x: A.Expr | undefined) =>
        x ? this.wholeNumber(x, frame, "a slice bound") : undefined;
      const items = sliceOf(object.items, bound(item.start), bound(item.stop), bound(item.step));
      if (typeof items === "string")
        return this.r.report(error("E0402", items, this.at(frame, item)));
      return { kind: object.kind, items };
    }
    const found = itemAt(object.items, this.wholeNumber(item, frame, "an index"));
    if (typeof found === "string")
      return this.r.report(
        error("E0402", `${found}, in ${describeValue(object)}`, this.at(frame, item)),
      );
    return found;
  }

  /** A compile-time integer (an index, a slice bound). */
  private wholeNumber(x: A.Expr, frame: Frame, what: string): number {
    const { value } = this.r.number(this.expr(x, frame), x, frame.module);
    if (!Number.isInteger(value))
      this.r.report(error("E0402", `${what} must be an integer, not ${value}`, this.at(frame, x)));
    return value;
  }

  // ------------------------------------------------------------------------ calls

  private call(e: A.Call, frame: Frame): Value {
    const callee = this.expr(e.callee, frame);
    if (callee.kind === "instance") return this.callModule(callee.instance, e, frame);
    if (callee.kind === "function")
      return this.callFunction(callee.fn, callee.self, this.args(e, frame), this.at(frame, e));
    if (callee.kind === "builtin") return tensorBuiltin(this, callee.name, e, frame);
    if (callee.kind === "bound") return callee.call(this.args(e, frame), this.at(frame, e));
    return this.r.report(
      error("E0206", `${describeValue(callee)} cannot be called here`, this.at(frame, e.callee)),
    );
  }

  args(e: A.Call, frame: Frame): { name?: string; value: Value; at: Location }[] {
    return e.args.map((a) => ({
      name: a.name?.name,
      value: this.expr(a.value, frame),
      at: this.at(frame, a.value),
    }));
  }

  /** The path of the module whose code is being lowered (`transformer.h.0.attn`), or "". */
  modulePath(): string {
    return this.calls.at(-1)?.instance.path ?? "";
  }

  /** Calling a module runs its forward, or the forward of the wrapper placed on it. */
  callModule(instance: ModuleInstance, e: A.Call, frame: Frame, skipWrappers = 0): Value {
    const wrappers = this.wrappers.get(instance) ?? [];
    const args = this.args(e, frame);
    const at = this.at(frame, e);
    this.calls.push({ at, user: !frame.module.name.startsWith("std."), instance });
    try {
      return this.forward(instance, args, at, wrappers.length - skipWrappers);
    } finally {
      this.calls.pop();
    }
  }

  /** Runs `forward` of the outermost of the first `depth` wrappers, or the module's own. */
  forward(
    instance: ModuleInstance,
    args: { name?: string; value: Value; at: Location }[],
    at: Location,
    depth?: number,
  ): Value {
    const kept = this.forwards?.owner === this ? this.forwards.values : undefined;
    const level = depth ?? (this.wrappers.get(instance) ?? []).length;
    const key =
      kept && args.every((a) => a.value.kind === "tensor")
        ? `${level}|${this.memberKey}|${args.map((a) => `${a.name ?? ""}=${(a.value as Tensor).node}`).join(",")}`
        : undefined;
    const known = key === undefined ? undefined : kept!.get(instance)?.get(key);
    if (known) return known;
    const reads = this.modeReads.count;
    const value = this.r.fromUserSite(at, () => this.forwardAt(instance, args, at, level));
    if (key !== undefined && this.modeReads.count === reads) {
      if (!kept!.has(instance)) kept!.set(instance, new Map());
      kept!.get(instance)!.set(key, value);
    }
    return value;
  }

  /** `forward` at wrapper `level` (0: the module's own), as `forward` resolved it. */
  private forwardAt(
    instance: ModuleInstance,
    args: { name?: string; value: Value; at: Location }[],
    at: Location,
    level: number,
  ): Value {
    const wrappers = this.wrappers.get(instance) ?? [];
    if (level > 0) {
      const wrapper = wrappers[level - 1]!;
      // Inside the wrapper, `base(x)` calls the next layer in: the quantizer, or the module itself.
      // `base.weight` means the next layer in's weight: a quantizer's derived one, if there is one.
      const inner = wrappers
        .slice(0, level - 1)
        .reverse()
        .map((w) => w.instance);
      const base: Value = {
        kind: "bound",
        what: `\`${instance.path}\``,
        call: (args, innerAt) => this.forward(instance, args, innerAt, level - 1),
        members: [...inner, instance],
      };
      const fn = wrapper.instance.scope.get("forward");
      if (fn?.kind !== "function")
        return this.r.report(
          error(
            "E0207",
            `${wrapper.config.def.sort} \`${wrapper.config.def.name.name}\` has no \`forward\``,
            at,
          ),
        );
      return this.callFunction(fn.fn, wrapper.instance, args, at, new Map([["base", base]]));
    }
    const fn = instance.scope.get("forward");
    if (fn?.kind !== "function") {
      return this.r.report(
        error(
          "E0207",
          `\`${instance.typeName}\` has no \`forward\` function, so it cannot be called`,
          at,
        ),
      );
    }
    return this.callFunction(fn.fn, instance, args, at);
  }

  /** Inlines a function: binds (and shape-checks) its parameters, runs its body. */
  /**
   * `locals`, when given, is used as the function's local variables and left holding their final
   * values: that is how an optimizer's `update` hands back `param` and its states.
   */
  callFunction(
    fn: A.FunctionDef,
    self: ModuleInstance,
    args: { name?: string; value: Value; at: Location }[],
    at: Location,
    locals?: Map<string, Value>,
    readOnly?: Iterable<string>,
  ): Value {
    // Functions are inlined: a call that never stops recursing would overflow the stack.
    if (this.callDepth >= maxCallDepth)
      return this.r.report(
        error(
          "E0210",
          `\`${fn.name.name}\` is called ${maxCallDepth} calls deep: a recursion that does not end`,
          at,
          { help: "stop the recursion with an `if` on a number that changes with each call" },
        ),
      );
    this.callDepth++;
    try {
      return this.inline(fn, self, args, at, locals, readOnly);
    } finally {
      this.callDepth--;
    }
  }

  private inline(
    fn: A.FunctionDef,
    self: ModuleInstance,
    args: { name?: string; value: Value; at: Location }[],
    at: Location,
    locals?: Map<string, Value>,
    readOnly?: Iterable<string>,
  ): Value {
    const frame = this.frameFor(self, locals ?? new Map());
    if (readOnly) frame.readOnly = new Set(readOnly);
    const live = locals ? undefined : this.hooks.liveMembers?.(self);
    if (live) {
      // read as members, before the instance's own (whose `param` is the declaration, not a value)
      const members = frame.scope;
      frame.scope = {
        lookup: (n) => live.lookup(n) ?? members.lookup(n),
        names: () => [...live.names(), ...members.names()],
      };
    }
    const bound = new Map<string, Value>();
    let positional = 0;
    for (const arg of args) {
      const param = arg.name
        ? fn.params.find((p) => p.name.name === arg.name)
        : fn.params[positional++];
      if (!param) {
        this.r.report(
          error(
            "E0205",
            arg.name
              ? `\`${fn.name.name}\` has no parameter \`${arg.name}\``
              : `\`${fn.name.name}\` takes ${fn.params.length} argument${fn.params.length === 1 ? "" : "s"}`,
            arg.at,
          ),
        );
      }
      bound.set(param.name.name, arg.value);
    }
    for (const p of fn.params) {
      let value = bound.get(p.name.name);
      if (!value) {
        if (!p.default)
          this.r.report(
            error("E0205", `\`${fn.name.name}\` needs the argument \`${p.name.name}\``, at),
          );
        value = this.expr(p.default, frame);
      }
      if (p.type?.dims && value.kind === "tensor")
        this.bindDims(p.type, value, frame, at, `argument \`${p.name.name}\``);
      frame.locals.set(p.name.name, value);
    }
    let result: Value;
    if (fn.body.kind === "Expr") result = this.expr(fn.body.value, frame);
    else {
      try {
        this.block(fn.body.stmts, frame);
        result = { kind: "tuple", items: [] };
      } catch (signal) {
        if (!(signal instanceof ReturnSignal)) throw signal;
        result = signal.value;
      }
    }
    if (fn.returns?.dims && result.kind === "tensor")
      this.bindDims(fn.returns, result, frame, this.at(frame, fn.returns), "the result");
    else if (fn.returns?.dims && result.kind !== "number")
      // a tensor promised and a tuple or list returned (a forward with `features: true`)
      this.r.report(
        error(
          "E0402",
          `\`${fn.name.name}\` is declared to return a tensor, but returns ${describeValue(result)}`,
          this.at(frame, fn.returns),
          { help: "drop the declared result type where the function returns other values too" },
        ),
      );
    return result;
  }

  /** Matches a tensor against `f32[B, T, d]`: names bind or must agree, numbers must match. */
  bindDims(type: A.TypeExpr, value: Tensor, frame: Frame, at: Location, what: string): void {
    const dims = type.dims!;
    const ellipsis = dims.findIndex((d) => d.kind === "Ellipsis");
    const fixed = dims.length - (ellipsis >= 0 ? 1 : 0);
    const shape = value.shape;
    const expected = `${type.name.name}[${dims.map((d) => (d.kind === "Ellipsis" ? "..." : exprText(d))).join(", ")}]`;
    if (ellipsis >= 0 ? shape.length < fixed : shape.length !== fixed) {
      this.fail(at, `${what} should be ${expected}, but it is ${shapeText(shape, value.dtype)}`);
    }
    dims.forEach((d, i) => {
      if (d.kind === "Ellipsis") return;
      const axis = ellipsis >= 0 && i > ellipsis ? shape.length - (dims.length - i) : i;
      const actual = shape[axis]!;
      if (
        d.kind === "NameExpr" &&
        !frame.locals.has(d.name) &&
        frame.scope.lookup(d.name) === undefined &&
        !frame.dims.has(d.name)
      ) {
        frame.dims.set(d.name, actual);
        return;
      }
      const want = this.r.number(this.expr(d, frame), d, frame.module).value;
      if (want !== actual) {
        this.fail(
          at,
          `${what} should be ${expected}, but it is ${shapeText(shape, value.dtype)}: dim ${exprText(d)} is ${want}, not ${actual}`,
        );
      }
    });
    // Remember which dims have symbolic names, for later messages in the user's terms.
    const names: (string | undefined)[] = shape.map(() => undefined);
    dims.forEach((d, i) => {
      if (d.kind !== "NameExpr" || !frame.dims.has(d.name)) return;
      const axis = ellipsis >= 0 && i > ellipsis ? shape.length - (dims.length - i) : i;
      names[axis] = d.name;
    });
    this.name(value.node, names);
    if (type.name.name !== value.dtype && (type.name.name === "f32" || type.name.name === "i32")) {
      this.fail(at, `${what} should be ${expected}, but it is ${shapeText(shape, value.dtype)}`);
    }
  }

  // ------------------------------------------------------------------------ statements

  block(stmts: A.Stmt[], frame: Frame): void {
    for (const s of stmts) this.statement(s, frame);
  }

  private statement(s: A.Stmt, frame: Frame): void {
    switch (s.kind) {
      case "Let": {
        const value = this.expr(s.value, frame);
        if (s.type?.dims && value.kind === "tensor")
          this.bindDims(s.type, value, frame, this.at(frame, s.value), "this value");
        if (s.target.kind === "Name") {
          const at = this.at(frame, s.value);
          frame.locals.set(s.target.name, this.r.typedValue(s.target, s.type, value, at));
          frame.readOnly?.delete(s.target.name);
        } else {
          if (value.kind !== "tuple" || value.items.length !== s.target.names.length) {
            this.r.report(
              error(
                "E0402",
                `cannot unpack ${describeValue(value)} into ${s.target.names.length} names`,
                this.at(frame, s.value),
              ),
            );
          }
          s.target.names.forEach((n, i) => frame.locals.set(n.name, value.items[i]!));
        }
        return;
      }
      case "Assign": {
        if (this.hooks.assign?.(s, frame)) return;
        if (s.target.kind !== "NameExpr")
          this.r.report(error("E0206", "only names can be assigned", this.at(frame, s.target)));
        const name = s.target.name;
        let value = this.assigned(s, frame);
        if (!frame.locals.has(name) || frame.readOnly?.has(name)) {
          this.r.report(
            error("E0206", `\`${name}\` cannot be assigned here`, this.at(frame, s.target), {
              help: "assign `let` variables, and in optimizers and budgets `param`, states and the adapter's tensors",
            }),
          );
        }
        const old = frame.locals.get(name)!;
        if (
          old.kind === "tensor" &&
          value.kind === "tensor" &&
          !sameShape(old.shape, value.shape)
        ) {
          // A state or parameter keeps its shape; a broadcast result must still fit it.
          try {
            value = this.tensor(this.b.broadcastTo(value.node, old.shape));
          } catch {
            this.fail(
              this.at(frame, s),
              `\`${name}\` is ${shapeText(old.shape, old.dtype)} but the new value is ${shapeText(value.shape, value.dtype)}`,
            );
          }
        }
        frame.locals.set(name, value);
        return;
      }
      case "If":
        return this.ifStatement(s, frame);
      case "For": {
        const iterable = this.expr(s.iterable, frame);
        if (iterable.kind !== "list")
          this.r.report(
            error(
              "E0402",
              `\`for\` needs a list, such as repeated blocks, not ${describeValue(iterable)}`,
              this.at(frame, s.iterable),
            ),
          );
        for (const item of iterable.items) {
          frame.locals.set(s.variable.name, item);
          this.block(s.body, frame);
        }
        return;
      }
      case "Return":
        throw new ReturnSignal(s.value ? this.expr(s.value, frame) : { kind: "tuple", items: [] });
      case "ExprStmt":
        this.expr(s.expr, frame);
        return;
      case "Error":
        throw new Reported();
    }
  }

  /** A compile-time condition picks a branch; a tensor condition runs both and selects per name. */
  private ifStatement(s: A.If, frame: Frame): void {
    const condition = this.expr(s.condition, frame);
    if (condition.kind === "bool") {
      if (condition.value) this.block(s.then, frame);
      else if (Array.isArray(s.else)) this.block(s.else, frame);
      else if (s.else) this.ifStatement(s.else, frame);
      return;
    }
    const c = this.asNode(condition, frame, s.condition);
    const decided = this.hooks.stepCondition?.(c);
    if (decided !== undefined) {
      // known on the host at each step: the variant for this outcome holds only its branch
      if (decided) this.block(s.then, frame);
      else if (Array.isArray(s.else)) this.block(s.else, frame);
      else if (s.else) this.ifStatement(s.else, frame);
      return;
    }
    const before = new Map(frame.locals);
    const run = (body: A.Stmt[] | A.If | undefined): Map<string, Value> => {
      const branch: Frame = { ...frame, locals: new Map(before) };
      try {
        if (Array.isArray(body)) this.block(body, branch);
        else if (body) this.ifStatement(body, branch);
      } catch (signal) {
        if (signal instanceof ReturnSignal) {
          this.r.report(
            error(
              "E0206",
              "`return` inside an `if` on a tensor condition is not supported",
              this.at(frame, s),
              { help: "assign a variable in both branches and return it after the `if`" },
            ),
          );
        }
        throw signal;
      }
      return branch.locals;
    };
    const yes = run(s.then);
    const no = run(s.else);
    for (const [name, value] of yes) {
      const other = no.get(name);
      if (!before.has(name)) continue; // a `let` inside one branch stays there
      if (value === other) {
        frame.locals.set(name, value);
        continue;
      }
      const a = this.asNode(value, frame, s);
      const b = this.asNode(other!, frame, s);
      frame.locals.set(name, this.tensor(this.b.where(c, a, b)));
    }
  }
}

export function shapeText(shape: Shape, dtype: DType = "f32"): string {
  return `${dtype}[${shape.join(", ")}]`;
}

function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function exprText(e: A.Expr): string {
  switch (e.kind) {
    case "NameExpr":
      return e.name;
    case "Number":
      return e.raw;
    case "Binary":
      return `${exprText(e.left)} ${e.op} ${exprText(e.right)}`;
    case "Paren":
      return `(${exprText(e.expr)})`;
    default:
      return "…";
  }
}
