// Names and compile-time values: the scope of each module (its declarations and imports, the
// `std` namespace, built-ins), and evaluation of the expressions that must be known while
// compiling — arguments, dims, constants, method configurations like `lora(rank: 8)`.
import { resolve as resolvePath, sep } from "node:path";
import type * as A from "../language/ast.js";
import { error, type Diagnostic, type Location } from "../language/diagnostics.js";
import { builtinNames } from "./builtins.js";
import { dataModule, dataSources } from "./data.js";
import { readHfConfig } from "./hf-config.js";
import { ModuleLoader, nativeModules, type Module } from "./modules.js";
import { closest } from "./suggest.js";
import { describeValue, num, type ModuleInstance, type Value } from "./values.js";
import { itemAt, rangeItems, sliceOf } from "./sequences.js";

/** Learning-rate schedules and their parameters' defaults. */
const schedules: Record<string, Record<string, number>> = {
  constant: { warmup: 0 },
  linear: { warmup: 0, min_ratio: 0 },
  cosine: { warmup: 0, min_ratio: 0 },
};

export type Scope = { lookup(name: string): Value | undefined; names(): Iterable<string> };

export function chain(vars: Map<string, Value>, parent?: Scope): Scope {
  return {
    lookup: (name) => vars.get(name) ?? parent?.lookup(name),
    names: () => [...vars.keys(), ...(parent ? parent.names() : [])],
  };
}

/** The type name of the instance top-level functions run in. */
const TOP_LEVEL = "(top level)";

/**
 * What a top-level function runs in: an instance with no members of its own, seeing the file's
 * top level (its declarations, imports and constants), so its body is lowered like a member
 * function's, without any definition's members or per-tensor names.
 */
function topLevel(module: Module, scope: Scope, first: A.FunctionDef): ModuleInstance {
  const at = { file: module.file, span: first.span };
  return {
    def: {
      kind: "Definition",
      sort: "model",
      name: { kind: "Name", name: "(top level)", span: first.span },
      params: [],
      members: [],
      span: first.span,
    },
    typeName: TOP_LEVEL,
    module,
    path: "",
    scope: new Map(),
    lookup: scope,
    params: [],
    children: [],
    states: [],
    regularizers: [],
    actions: [],
    at,
  };
}

/** `schedule:` given to an optimizer that does not declare a parameter of that name. */
function isOwnSchedule(def: A.Definition, name: string): boolean {
  return (
    def.sort === "optimizer" && name === "schedule" && !def.params.some((p) => p.name.name === name)
  );
}

/** Thrown to abandon evaluating one expression after its diagnostic is recorded. */
export class Reported extends Error {
  constructor() {
    super("reported");
  }
}

export class Resolver {
  /** Top-level functions being evaluated while compiling, outermost first (recursion guard). */
  private compileTimeCalls = 0;
  /** Where resolution and every later compiler phase report: the loader's log, shared. */
  get diagnostics(): Diagnostic[] {
    return this.loader.log.diagnostics;
  }
  private readonly scopes = new Map<Module, Scope>();
  private readonly global: Scope;
  /** Names whose declaration failed: uses of them are not errors of their own. */
  private readonly poisoned = new Set<string>();

  constructor(readonly loader: ModuleLoader) {
    const builtins = new Map<string, Value>(
      builtinNames.map((n) => [n, { kind: "builtin", name: n }]),
    );
    builtins.set("std", this.namespace("std"));
    this.global = chain(builtins);
  }

  report(d: Diagnostic): never {
    this.diagnostics.push(this.anchored(d));
    throw new Reported();
  }

  /**
   * Where user code is constructing or calling standard-library code, outermost first: a mistake
   * found inside the library (a bad argument reaching `Linear`'s shape) is the user's, and is
   * reported at their line.
   */
  private readonly userSites: Location[] = [];

  isStdFile(file: Location["file"]): boolean {
    return resolvePath(file.path).startsWith(this.loader.stdlibDir + sep);
  }

  /** Runs `f` with `at` as the user's site for diagnostics inside the standard library. */
  fromUserSite<T>(at: Location, f: () => T): T {
    if (this.isStdFile(at.file)) return f();
    this.userSites.push(at);
    try {
      return f();
    } finally {
      this.userSites.pop();
    }
  }

  /**
   * A diagnostic located in the standard library moves to the deepest user site in the file of the
   * outermost one (the program being compiled: `model TinyLM(heads: 5)` rather than a line of an
   * imported model file), with the sites in between and the library's line as notes.
   */
  private anchored(d: Diagnostic): Diagnostic {
    if (!d.at || !this.isStdFile(d.at.file) || this.userSites.length === 0) return d;
    const file = this.userSites[0]!.file;
    let deepest = 0;
    this.userSites.forEach((site, i) => {
      if (site.file === file) deepest = i;
    });
    const through = this.userSites
      .slice(deepest + 1)
      .map((at) => ({ message: "through this call", at }));
    return {
      ...d,
      at: this.userSites[deepest],
      label: undefined,
      notes: [...through, { message: "found in the standard library here", at: d.at }, ...d.notes],
    };
  }

  /** Runs `f`, turning an abandoned evaluation into `undefined`. */
  attempt<T>(f: () => T): T | undefined {
    try {
      return f();
    } catch (e) {
      if (e instanceof Reported) return undefined;
      throw e;
    }
  }

  /** Like attempt, but a failed evaluation leaves no diagnostics behind (the value is deferred). */
  speculate<T>(f: () => T): T | undefined {
    const mark = this.diagnostics.length;
    const result = this.attempt(f);
    if (result === undefined) this.diagnostics.length = mark;
    return result;
  }

  at(module: Module, node: { span: A.Program["span"] }): Location {
    return { file: module.file, span: node.span };
  }

  private namespace(name: string): Value {
    if (name === "std.data") return dataModule(name);
    const module = name === "std" ? undefined : this.loader.std(name);
    const children = ["std.nn", "std.adapters", "std.optim", "std.quant", "std.models", "std.data"];
    return {
      kind: "namespace",
      name,
      members: (member) => {
        const full = `${name}.${member}`;
        if (nativeModules.has(full) || this.loader.isStdModule(full)) return this.namespace(full);
        return module ? this.scopeOf(module).lookup(member) : undefined;
      },
      names: () =>
        module
          ? [...this.declaredNames(module)]
          : children.filter((c) => c.startsWith(name + ".")).map((c) => c.slice(name.length + 1)),
    };
  }

  private *declaredNames(module: Module): Iterable<string> {
    for (const item of module.program.items) {
      if (
        item.kind === "Definition" ||
        item.kind === "Const" ||
        item.kind === "Data" ||
        item.kind === "Function"
      )
        yield item.name.name;
    }
  }

  /** The names visible at the top level of a module: its declarations, its imports, and the globals. */
  scopeOf(module: Module): Scope {
    const cached = this.scopes.get(module);
    if (cached) return cached;
    const vars = new Map<string, Value>();
    const scope = chain(vars, this.global);
    this.scopes.set(module, scope);
    const declared = new Map<string, A.Name>();
    const declare = (name: A.Name, value: Value) => {
      const previous = declared.get(name.name);
      if (previous) {
        this.diagnostics.push(
          error("E0202", `\`${name.name}\` is defined twice`, this.at(module, name), {
            notes: [{ message: "first defined here", at: this.at(module, previous) }],
            help: "rename one of them",
          }),
        );
        return;
      }
      declared.set(name.name, name);
      vars.set(name.name, value);
    };
    let self: ModuleInstance | undefined;
    for (const item of module.program.items) {
      if (item.kind === "Definition") declare(item.name, { kind: "definition", def: item, module });
      if (item.kind === "Function")
        declare(item.name, {
          kind: "function",
          fn: item,
          self: (self ??= topLevel(module, scope, item)),
        });
    }
    for (const item of module.program.items) {
      if (item.kind !== "Import") continue;
      const target = this.loader.importTarget(module, item);
      const source = target.native
        ? this.namespace(target.native)
        : target.module
          ? this.moduleValue(target.module)
          : undefined;
      if (!source) continue;
      const wanted =
        item.items ??
        (target.item
          ? [
              {
                name: { kind: "Name", name: target.item, span: item.span } as A.Name,
                alias: undefined,
                span: item.span,
              },
            ]
          : undefined);
      if (!wanted) {
        const parts = item.source.kind === "module" ? item.source.parts : [];
        const alias = item.alias ?? parts[parts.length - 1];
        if (alias) declare(alias, source);
        continue;
      }
      for (const w of wanted) {
        const value = source.kind === "namespace" ? source.members(w.name.name) : undefined;
        if (!value) {
          const names = source.kind === "namespace" ? source.names() : [];
          const guess = closest(w.name.name, names);
          this.diagnostics.push(
            error(
              "E0204",
              `\`${w.name.name}\` is not defined in ${describeValue(source).replace("the module ", "")}`,
              this.at(module, w.name),
              {
                help: guess
                  ? `did you mean \`${guess}\`?`
                  : names.length
                    ? `it defines ${[...names].sort().join(", ")}`
                    : undefined,
              },
            ),
          );
          continue;
        }
        declare(w.alias ?? w.name, value);
      }
    }
    // Constants and data sets are evaluated in order, each seeing the ones before it.
    for (const item of module.program.items) {
      if (item.kind !== "Const" && item.kind !== "Data") continue;
      const value = this.attempt(() => this.evaluate(item.value, scope, module));
      if (value === undefined) {
        this.poisoned.add(item.name.name);
        continue;
      }
      if (item.kind === "Data" && value.kind !== "dataset") {
        this.diagnostics.push(
          error(
            "E0206",
            `\`data ${item.name.name}\` must be a data set, not ${describeValue(value)}`,
            this.at(module, item.value),
            {
              help: 'use a data source such as `std.data.arithmetic(digits: 3)` or `std.data.text("file.txt", context: 128)`',
            },
          ),
        );
        this.poisoned.add(item.name.name);
        continue;
      }
      const typed = item.kind === "Const" ? this.constType(item, value, module) : value;
      if (typed === undefined) {
        this.poisoned.add(item.name.name);
        continue;
      }
      declare(item.name, typed);
    }
    return scope;
  }

  /** `const d: int = …`: the value must be of the declared type (`float` makes it a float). */
  private constType(item: A.ConstDecl, value: Value, module: Module): Value | undefined {
    if (!item.type) return value;
    if (item.type.dims !== undefined) {
      this.diagnostics.push(
        error(
          "E0402",
          `a constant is known while compiling and is never a tensor: \`${item.name.name}\` cannot be of type ${item.type.name.name}[…]`,
          this.at(module, item.type),
          { help: "leave the type out, or write `int`, `float`, `bool` or `str`" },
        ),
      );
      return undefined;
    }
    const asParam = { kind: "Param", name: item.name, type: item.type, span: item.span };
    return this.attempt(() => this.checkType(asParam as A.Param, value, item.value, module));
  }

  private moduleValue(module: Module): Value {
    return {
      kind: "namespace",
      name: module.name,
      members: (m) => this.scopeOf(module).lookup(m),
      names: () => [...this.declaredNames(module)],
    };
  }

  // ------------------------------------------------------------------------ compile-time evaluation

  lookup(name: A.Name | A.NameExpr, scope: Scope, module: Module): Value {
    const value = scope.lookup(name.name);
    if (value) return value;
    if (this.poisoned.has(name.name)) throw new Reported();
    const guess = closest(name.name, scope.names());
    return this.report(
      error("E0204", `\`${name.name}\` is not defined`, this.at(module, name), {
        help: guess ? `did you mean \`${guess}\`?` : undefined,
      }),
    );
  }

  /** Evaluates an expression whose value must be known while compiling. */
  evaluate(e: A.Expr, scope: Scope, module: Module): Value {
    switch (e.kind) {
      case "Number":
        return num(e.value, e.isInteger);
      case "String":
        return { kind: "string", value: e.value };
      case "Bool":
        return { kind: "bool", value: e.value };
      case "NameExpr":
        return this.lookup(e, scope, module);
      case "Paren":
        return this.evaluate(e.expr, scope, module);
      case "List":
        return { kind: "list", items: e.items.map((i) => this.evaluate(i, scope, module)) };
      case "Tuple":
        return { kind: "tuple", items: e.items.map((i) => this.evaluate(i, scope, module)) };
      case "Unary": {
        const v = this.evaluate(e.operand, scope, module);
        if (e.op === "not") return { kind: "bool", value: !this.truthy(v, e.operand, module) };
        const n = this.number(v, e.operand, module);
        return num(e.op === "-" ? -n.value : n.value, n.integer);
      }
      case "Binary":
        return this.binary(e, scope, module);
      case "Member": {
        const object = this.evaluate(e.object, scope, module);
        return this.member(object, e.name, module);
      }
      case "Call":
        return this.call(e, scope, module);
      case "Index": {
        const object = this.evaluate(e.object, scope, module);
        if (object.kind === "list" || object.kind === "tuple")
          return this.listItem(object, e, scope, module);
        return this.needsTensors(e, module);
      }
      case "Transpose":
        return this.needsTensors(e, module);
      case "Error":
        throw new Reported();
    }
  }

  private needsTensors(e: A.Expr, module: Module): never {
    return this.report(
      error(
        "E0206",
        "this expression needs tensors, which only exist inside functions",
        this.at(module, e),
        {
          help: "compute it inside `forward` or an `update` function",
        },
      ),
    );
  }

  /**
   * `xs[i]` or `xs[a:b:c]` of a compile-time list or tuple, with Python's rules (sequences.ts): a
   * negative index counts from the end, a slice is clipped and keeps the sequence's kind.
   */
  private listItem(
    object: Extract<Value, { kind: "list" | "tuple" }>,
    e: A.Index,
    scope: Scope,
    module: Module,
  ): Value {
    const item = e.items[0];
    const what = object.kind === "list" ? "a list" : "a tuple";
    if (e.items.length !== 1 || !item || item.kind === "Ellipsis")
      return this.report(
        error("E0402", `${what} takes one index or one slice`, this.at(module, e), {
          help: "write e.g. `shape[0]`, `shape[-1]` or `shape[1:]`",
        }),
      );
    if (item.kind === "Slice") {
      const bound = (x: A.Expr | undefined) =>
        x ? this.integer(x, scope, module, "a slice bound") : undefined;
      const items = sliceOf(object.items, bound(item.start), bound(item.stop), bound(item.step));
      if (typeof items === "string")
        return this.report(error("E0402", items, this.at(module, item)));
      return { kind: object.kind, items };
    }
    const i = this.integer(item, scope, module, `${what} index`);
    const found = itemAt(object.items, i);
    if (typeof found === "string")
      return this.report(
        error("E0402", `${found}, in ${describeValue(object)}`, this.at(module, item), {
          help: "guard it, e.g. `ndim == 2 and shape[1] == 64` (`and` stops at the first false)",
        }),
      );
    return found;
  }

  truthy(v: Value, e: A.Expr, module: Module): boolean {
    if (v.kind === "bool") return v.value;
    return this.report(
      error("E0402", `expected a bool, found ${describeValue(v)}`, this.at(module, e)),
    );
  }

  number(v: Value, e: A.Expr, module: Module): { value: number; integer: boolean } {
    if (v.kind === "number") return v;
    return this.report(
      error("E0402", `expected a number, found ${describeValue(v)}`, this.at(module, e)),
    );
  }

  integer(e: A.Expr, scope: Scope, module: Module, what: string): number {
    const v = this.evaluate(e, scope, module);
    if (v.kind === "number" && Number.isInteger(v.value)) return v.value;
    return this.report(
      error(
        "E0402",
        `${what} must be an integer, but this is ${v.kind === "number" ? String(v.value) : describeValue(v)}`,
        this.at(module, e),
      ),
    );
  }

  private binary(e: A.Binary, scope: Scope, module: Module): Value {
    if (e.op === "and" || e.op === "or") {
      const left = this.truthy(this.evaluate(e.left, scope, module), e.left, module);
      if (e.op === "and" && !left) return { kind: "bool", value: false };
      if (e.op === "or" && left) return { kind: "bool", value: true };
      return {
        kind: "bool",
        value: this.truthy(this.evaluate(e.right, scope, module), e.right, module),
      };
    }
    const l = this.evaluate(e.left, scope, module);
    const r = this.evaluate(e.right, scope, module);
    // `"state:" + base.path`: strings join (a tensor name for `load`)
    if (e.op === "+" && l.kind === "string" && r.kind === "string")
      return { kind: "string", value: l.value + r.value };
    if ((e.op === "==" || e.op === "!=") && (l.kind !== "number" || r.kind !== "number")) {
      const same = sameValue(l, r);
      if (same !== undefined) return { kind: "bool", value: same === (e.op === "==") };
    }
    const a = this.number(l, e.left, module);
    const b = this.number(r, e.right, module);
    const result = this.arithmetic(e.op, a, b, module, e);
    if (result.kind === "number" && !Number.isFinite(result.value)) {
      const why =
        (e.op === "/" || e.op === "%") && b.value === 0
          ? e.op === "/"
            ? "a division by zero"
            : "a remainder by zero"
          : Number.isNaN(result.value)
            ? "not a number"
            : "too large for a 64-bit float";
      this.report(
        error("E0402", `this \`${e.op}\` gives ${result.value} (${why})`, this.at(module, e), {
          help: "a value computed while compiling must be a finite number: check the operands",
        }),
      );
    }
    return result;
  }

  private arithmetic(
    op: Exclude<A.BinaryOp, "and" | "or">,
    a: { value: number; integer: boolean },
    b: { value: number; integer: boolean },
    module: Module,
    e: A.Binary,
  ): Value {
    const integer = a.integer && b.integer;
    switch (op) {
      case "+":
        return num(a.value + b.value, integer);
      case "-":
        return num(a.value - b.value, integer);
      case "*":
        return num(a.value * b.value, integer);
      case "/":
        // `/` on integers that divide exactly stays an integer (dims like `d / heads`).
        return num(a.value / b.value, integer && a.value % b.value === 0);
      case "%":
        return num(a.value - b.value * Math.floor(a.value / b.value), integer);
      case "^":
        return num(a.value ** b.value, integer && b.value >= 0);
      case "==":
        return { kind: "bool", value: a.value === b.value };
      case "!=":
        return { kind: "bool", value: a.value !== b.value };
      case "<":
        return { kind: "bool", value: a.value < b.value };
      case "<=":
        return { kind: "bool", value: a.value <= b.value };
      case ">":
        return { kind: "bool", value: a.value > b.value };
      case ">=":
        return { kind: "bool", value: a.value >= b.value };
      case "@":
        return this.report(
          error(
            "E0206",
            "`@` needs tensors, which only exist inside functions",
            this.at(module, e),
          ),
        );
    }
  }

  member(object: Value, name: A.Name, module: Module): Value {
    let found: Value | undefined;
    let names: Iterable<string> = [];
    if (object.kind === "namespace") {
      found = object.members(name.name);
      names = object.names();
    } else if (object.kind === "dataset") {
      const fields: Record<string, Value> = {
        vocab: num(object.dataset.vocab, true),
        train: { kind: "dataset", dataset: { ...object.dataset, split: "train" } },
        valid: { kind: "dataset", dataset: { ...object.dataset, split: "valid" } },
      };
      found = fields[name.name];
      names = Object.keys(fields);
    } else if (object.kind === "instance") {
      found = object.instance.scope.get(name.name);
      // a module's path in the model (`base.path` in an adapter: "blocks.0.attn.q"), a string
      if (!found && name.name === "path") found = { kind: "string", value: object.instance.path };
      names = object.instance.scope.keys();
    } else if (object.kind === "config") {
      found = object.args.get(name.name);
      names = object.args.keys();
    } else if (object.kind === "struct") {
      // an optimizer's `module` and `group` (`const n = group.size`), an `hf_config`: read while compiling
      found = object.fields.get(name.name);
      names = object.fields.keys();
    }
    if (found) return found;
    const guess = closest(name.name, names);
    return this.report(
      error(
        "E0207",
        `${describeValue(object)} has no member \`${name.name}\``,
        this.at(module, name),
        {
          help: guess ? `did you mean \`${guess}\`?` : undefined,
        },
      ),
    );
  }

  private call(e: A.Call, scope: Scope, module: Module): Value {
    const callee = this.evaluate(e.callee, scope, module);
    if (callee.kind === "definition") {
      const args = this.bindArguments(callee.def, callee.module, e, scope, module);
      return {
        kind: "config",
        def: callee.def,
        module: callee.module,
        args,
        at: this.at(module, e),
      };
    }
    if (callee.kind === "builtin" && callee.name.startsWith("std.data."))
      return this.dataSource(callee.name.slice(9), e, scope, module);
    if (callee.kind === "builtin") return this.builtinCall(callee.name, e, scope, module);
    if (callee.kind === "function" && callee.self.typeName === TOP_LEVEL)
      return this.topLevelCall(callee.fn, callee.self, e, scope, module);
    if (callee.kind === "namespace" && callee.name === "std.data") {
      return this.report(
        error(
          "E0206",
          "`std.data` is a module; call one of its data sources",
          this.at(module, e.callee),
        ),
      );
    }
    return this.report(
      error("E0206", `${describeValue(callee)} cannot be called`, this.at(module, e.callee)),
    );
  }

  /**
   * A top-level function called where values are known while compiling (a `const`): its one
   * expression evaluated with the arguments bound, in its own file's scope. A block body, or one
   * that needs tensors, is `E0206`: those run inside functions.
   */
  private topLevelCall(
    fn: A.FunctionDef,
    self: ModuleInstance,
    e: A.Call,
    scope: Scope,
    module: Module,
  ): Value {
    if (fn.body.kind !== "Expr")
      return this.report(
        error(
          "E0206",
          `\`${fn.name.name}\` has a block body: it runs inside functions, not while compiling`,
          this.at(module, e),
          {
            help: `write it as one expression, \`${fn.name.name}(…) = …\`, to use it in a \`const\``,
          },
        ),
      );
    if (this.compileTimeCalls >= 64)
      return this.report(
        error(
          "E0210",
          `\`${fn.name.name}\` is called 64 calls deep: a recursion that does not end`,
          this.at(module, e),
        ),
      );
    const bound = new Map<string, Value>();
    let positional = 0;
    for (const arg of e.args) {
      const param = arg.name
        ? fn.params.find((p) => p.name.name === arg.name!.name)
        : fn.params[positional++];
      if (!param)
        return this.report(
          error(
            "E0205",
            arg.name
              ? `\`${fn.name.name}\` has no parameter \`${arg.name.name}\``
              : `\`${fn.name.name}\` takes ${fn.params.length} argument${fn.params.length === 1 ? "" : "s"}`,
            this.at(module, arg),
          ),
        );
      bound.set(param.name.name, this.evaluate(arg.value, scope, module));
    }
    const inner = chain(bound, self.lookup);
    for (const p of fn.params) {
      if (bound.has(p.name.name)) continue;
      if (!p.default)
        return this.report(
          error(
            "E0205",
            `\`${fn.name.name}\` needs the argument \`${p.name.name}\``,
            this.at(module, e),
          ),
        );
      bound.set(p.name.name, this.evaluate(p.default, inner, self.module));
    }
    this.compileTimeCalls++;
    try {
      return this.evaluate(fn.body.value, inner, self.module);
    } finally {
      this.compileTimeCalls--;
    }
  }

  /**
   * Matches a call's arguments to a definition's parameters: positional first, then named;
   * defaults are evaluated in the definition's own module, seeing earlier parameters.
   */
  bindArguments(
    def: A.Definition,
    defModule: Module,
    call: A.Call,
    scope: Scope,
    module: Module,
  ): Map<string, Value> {
    const bound = new Map<string, Value>();
    const params = def.params;
    let positional = 0;
    for (const arg of call.args) {
      if (!arg.name) {
        const param = params[positional++];
        if (!param) {
          this.report(
            error(
              "E0205",
              `\`${def.name.name}\` takes ${params.length} argument${params.length === 1 ? "" : "s"}, but more were given`,
              this.at(module, arg),
            ),
          );
        }
        bound.set(
          param.name.name,
          this.checkType(param, this.evaluate(arg.value, scope, module), arg.value, module),
        );
        continue;
      }
      if (isOwnSchedule(def, arg.name.name)) {
        bound.set("schedule", this.ownSchedule(def, arg.value, scope, module));
        continue;
      }
      const param = params.find((p) => p.name.name === arg.name!.name);
      if (!param) {
        const guess = closest(
          arg.name.name,
          params.map((p) => p.name.name),
        );
        this.report(
          error(
            "E0205",
            `\`${def.name.name}\` has no parameter \`${arg.name.name}\``,
            this.at(module, arg.name),
            {
              help: guess
                ? `did you mean \`${guess}\`?`
                : `its parameters are ${params.map((p) => p.name.name).join(", ") || "none"}`,
            },
          ),
        );
      }
      if (bound.has(param.name.name)) {
        this.report(error("E0205", `\`${param.name.name}\` is given twice`, this.at(module, arg)));
      }
      bound.set(
        param.name.name,
        this.checkType(param, this.evaluate(arg.value, scope, module), arg.value, module),
      );
    }
    const defScope = chain(bound, this.scopeOf(defModule));
    for (const param of params) {
      if (bound.has(param.name.name)) continue;
      if (!param.default) {
        this.report(
          error(
            "E0205",
            `\`${def.name.name}\` needs the argument \`${param.name.name}\``,
            this.at(module, call),
            {
              help: `add \`${param.name.name}: …\` to the call`,
            },
          ),
        );
      }
      bound.set(param.name.name, this.evaluate(param.default, defScope, defModule));
    }
    return bound;
  }

  /**
   * An optimizer's own learning-rate schedule, `adamw(lr: 1e-3, schedule: cosine(warmup: 10))`
   * (spec §11): it replaces the train block's schedule for that optimizer's `lr`.
   */
  private ownSchedule(def: A.Definition, e: A.Expr, scope: Scope, module: Module): Value {
    const value = this.evaluate(e, scope, module);
    if (value.kind !== "schedule")
      return this.report(
        error(
          "E0402",
          `an optimizer's \`schedule\` must be a learning-rate schedule, not ${describeValue(value)}`,
          this.at(module, e),
          { help: "use `constant(…)`, `linear(…)` or `cosine(warmup: 100, min_ratio: 0.1)`" },
        ),
      );
    if (!def.params.some((p) => p.name.name === "lr"))
      return this.report(
        error(
          "E0205",
          `\`${def.name.name}\` has no \`lr\` for a \`schedule\` to scale`,
          this.at(module, e),
          { help: "a schedule multiplies the optimizer's `lr` parameter at every step" },
        ),
      );
    return value;
  }

  /** Checks an argument against its parameter's declared scalar type (`int`, `float`, `bool`, `str`). */
  private checkType(param: A.Param, value: Value, e: A.Expr, module: Module): Value {
    return this.checkTypeAt(param.name, param.type, value, this.at(module, e));
  }

  /**
   * A typed `let` or `const` (`let k: int = rank`) whose value is known while compiling: checked
   * against its scalar type as an argument is. Tensors are checked by their shapes instead.
   */
  typedValue(name: A.Name, type: A.TypeExpr | undefined, value: Value, at: Location): Value {
    if (!type || value.kind === "tensor" || value.kind === "deferred") return value;
    return this.checkTypeAt(name, type, value, at);
  }

  private checkTypeAt(
    name: A.Name,
    declared: A.TypeExpr | undefined,
    value: Value,
    at: Location,
  ): Value {
    const type = declared?.dims === undefined ? declared?.name.name : undefined;
    const ok =
      type === "int"
        ? value.kind === "number" && Number.isInteger(value.value)
        : type === "float"
          ? value.kind === "number"
          : type === "bool"
            ? value.kind === "bool"
            : type === "str"
              ? value.kind === "string"
              : true;
    if (ok) return type === "float" && value.kind === "number" ? num(value.value, false) : value;
    const shown = value.kind === "number" ? `\`${value.value}\`` : describeValue(value);
    return this.report(
      error(
        "E0402",
        `\`${name.name}\` must be ${type === "int" ? "an integer" : type === "float" ? "a number" : type === "str" ? "a string" : `a ${type}`}, but ${shown} was given`,
        at,
      ),
    );
  }

  /** `cosine(warmup: 50, min_ratio: 0.1)`: a multiplier on every optimizer's `lr`. */
  private schedule(name: string, e: A.Call, scope: Scope, module: Module): Value {
    const allowed = schedules[name]!;
    const args = new Map<string, number>(Object.entries(allowed));
    for (const arg of e.args) {
      if (!arg.name || !(arg.name.name in allowed)) {
        this.report(
          error(
            "E0205",
            arg.name
              ? `\`${name}\` has no parameter \`${arg.name.name}\``
              : `\`${name}\` takes named arguments only`,
            this.at(module, arg),
            {
              help: `its parameters are ${Object.keys(allowed).join(", ")}`,
            },
          ),
        );
      }
      const value = this.number(this.evaluate(arg.value, scope, module), arg.value, module).value;
      // A negative warmup, or a final rate outside 0–1 of the base rate, would scale `lr` up or
      // flip its sign in silence.
      const range: [number, number] = arg.name.name === "warmup" ? [0, Infinity] : [0, 1];
      if (value < range[0] || value > range[1])
        this.report(
          error(
            "E0402",
            arg.name.name === "warmup"
              ? `\`warmup\` must be a number of steps, 0 or more, not ${value}`
              : `\`min_ratio\` must be from 0 to 1 (the final rate's fraction of \`lr\`), not ${value}`,
            this.at(module, arg.value),
            { help: `e.g. \`${name}(warmup: 100, min_ratio: 0.1)\`` },
          ),
        );
      args.set(arg.name.name, value);
    }
    return { kind: "schedule", name, args };
  }

  private dataSource(source: string, e: A.Call, scope: Scope, module: Module): Value {
    const spec = dataSources[source]!;
    const args = new Map<string, Value>();
    let positional = 0;
    for (const arg of e.args) {
      const param = arg.name
        ? spec.params.find((p) => p.name === arg.name!.name)
        : spec.params[positional++];
      if (!param) {
        const guess = arg.name
          ? closest(
              arg.name.name,
              spec.params.map((p) => p.name),
            )
          : undefined;
        this.report(
          error(
            "E0205",
            arg.name
              ? `\`${source}\` has no parameter \`${arg.name.name}\``
              : `too many arguments to \`${source}\``,
            this.at(module, arg),
            {
              help: guess ? `did you mean \`${guess}\`?` : `for example: ${spec.help}`,
            },
          ),
        );
      }
      // `tokenizer: bytes` names a tokenizer rather than referring to a value.
      const value: Value =
        (param.kind === "name" || param.kind === "tokenizer") && arg.value.kind === "NameExpr"
          ? { kind: "builtin", name: arg.value.name }
          : this.evaluate(arg.value, scope, module);
      const ok =
        param.kind === "name"
          ? value.kind === "builtin"
          : param.kind === "tokenizer"
            ? value.kind === "builtin" || value.kind === "string"
            : value.kind === param.kind;
      if (!ok) {
        this.report(
          error(
            "E0402",
            `\`${param.name}\` must be ${{ string: "a string", number: "a number", bool: "true or false", name: "a name", tokenizer: "`bytes` or a tokenizer folder" }[param.kind]}, not ${describeValue(value)}`,
            this.at(module, arg.value),
          ),
        );
      }
      args.set(param.name, value);
    }
    for (const p of spec.params) {
      if (args.has(p.name)) continue;
      if (!p.default)
        this.report(
          error("E0205", `\`${source}\` needs the argument \`${p.name}\``, this.at(module, e), {
            help: `for example: ${spec.help}`,
          }),
        );
      args.set(p.name, p.default);
    }
    const at = this.at(module, e);
    let vocab = spec.vocab(args, at.file.path);
    if (typeof vocab === "string") {
      this.report(error("E0501", vocab, at, { help: `for example: ${spec.help}` }));
      vocab = 0;
    }
    return { kind: "dataset", dataset: { source, args, vocab, at } };
  }

  /** Built-ins that make sense on compile-time numbers; tensor built-ins are lowered elsewhere. */
  /**
   * `require(condition, "message")`: a definition's check of its arguments, evaluated when it is
   * instantiated. `{name}` in the message is replaced by that name's value. A failure inside the
   * standard library is reported at the user's call (see `anchored`).
   */
  private require(e: A.Call, scope: Scope, module: Module): Value {
    const [condition, message] = e.args;
    if (e.args.length !== 2 || !message || message.value.kind !== "String" || message.name)
      return this.report(
        error("E0205", "`require` takes a condition and a message string", this.at(module, e)),
      );
    const holds = this.truthy(
      this.evaluate(condition!.value, scope, module),
      condition!.value,
      module,
    );
    if (holds) return { kind: "bool", value: true };
    const text = message.value.value.replace(
      /\{([A-Za-z_][A-Za-z0-9_]*)\}/g,
      (whole, name: string) => {
        const v = scope.lookup(name);
        return v?.kind === "number" || v?.kind === "bool" || v?.kind === "string"
          ? String(v.value)
          : whole;
      },
    );
    return this.report(error("E0205", text, this.at(module, e)));
  }

  /** `range(n)`, `range(start, stop, step)`: a list of integers known while compiling. */
  range(e: A.Call, scope: Scope, module: Module): Value {
    const named = e.args.find((a) => a.name);
    if (named)
      this.report(error("E0205", "`range` takes its integers by position", this.at(module, named)));
    const args = e.args.map((a) => this.integer(a.value, scope, module, "a `range` bound"));
    const list = rangeItems(args);
    if (typeof list === "string") return this.report(error("E0402", list, this.at(module, e)));
    return list;
  }

  /** `len(xs)`: the number of items of a list or tuple known while compiling. */
  length(e: A.Call, scope: Scope, module: Module): Value {
    const only = e.args.length === 1 && !e.args[0]!.name ? e.args[0]!.value : undefined;
    const v = only ? this.evaluate(only, scope, module) : undefined;
    if (v?.kind === "list" || v?.kind === "tuple") return num(v.items.length, true);
    return this.report(
      error("E0205", "`len` takes one list or tuple known while compiling", this.at(module, e), {
        help: "a tensor's sizes are in `shape` (an optimizer's tensor) or its type's dims",
      }),
    );
  }

  /** `hf_config("ckpt")`: the folder's config.json as a struct (hf-config.ts). */
  private hfConfig(e: A.Call, scope: Scope, module: Module): Value {
    const arg = e.args[0];
    const path = arg && e.args.length === 1 ? this.evaluate(arg.value, scope, module) : undefined;
    if (path?.kind !== "string")
      return this.report(
        error("E0205", "`hf_config` takes one path, a string", this.at(module, e), {
          help: 'hf_config("checkpoint-folder")',
        }),
      );
    const read = readHfConfig(path.value, module.file.path, this.at(module, e));
    if ("diagnostic" in read) return this.report(read.diagnostic);
    return read.value;
  }

  private builtinCall(name: string, e: A.Call, scope: Scope, module: Module): Value {
    if (name in schedules) return this.schedule(name, e, scope, module);
    if (name === "require") return this.require(e, scope, module);
    if (name === "range") return this.range(e, scope, module);
    if (name === "len") return this.length(e, scope, module);
    if (name === "hf_config") return this.hfConfig(e, scope, module);
    const args = e.args.map((a) =>
      this.number(this.evaluate(a.value, scope, module), a.value, module),
    );
    const one = (f: (x: number) => number, integer = false) => {
      if (args.length !== 1)
        this.report(error("E0205", `\`${name}\` takes one argument`, this.at(module, e)));
      const value = f(args[0]!.value);
      if (!Number.isFinite(value))
        this.report(
          error(
            "E0402",
            `\`${name}(${args[0]!.value})\` is ${value}, not a finite number`,
            this.at(module, e),
            {
              help: "a value computed while compiling must be a finite number: check the argument",
            },
          ),
        );
      return num(value, integer);
    };
    switch (name) {
      case "sqrt":
        return one(Math.sqrt);
      case "exp":
        return one(Math.exp);
      case "log":
        return one(Math.log);
      case "abs":
        return one(Math.abs, args[0]?.integer ?? false);
      case "floor":
        return one(Math.floor, true);
      case "sin":
        return one(Math.sin);
      case "cos":
        return one(Math.cos);
      case "ceil":
        return one(Math.ceil, true);
      case "round":
        return one(Math.round, true);
      case "min":
      case "max":
        if (args.length < 2)
          this.report(error("E0205", `\`${name}\` takes two or more numbers`, this.at(module, e)));
        return num(
          (name === "min" ? Math.min : Math.max)(...args.map((a) => a.value)),
          args.every((a) => a.integer),
        );
      default:
        return this.report(
          error(
            "E0206",
            `\`${name}\` works on tensors, which only exist inside functions`,
            this.at(module, e),
            {
              help: "use it inside `forward`, `update` or another function",
            },
          ),
        );
    }
  }
}

/**
 * Whether two compile-time values are equal: numbers, strings and bools by value, lists and tuples
 * item by item; undefined for values `==` does not compare (modules, definitions, …).
 */
function sameValue(a: Value, b: Value): boolean | undefined {
  if (a.kind === "number" && b.kind === "number") return a.value === b.value;
  if ((a.kind === "string" && b.kind === "string") || (a.kind === "bool" && b.kind === "bool"))
    return a.value === b.value;
  if ((a.kind === "list" || a.kind === "tuple") && (b.kind === "list" || b.kind === "tuple")) {
    if (a.items.length !== b.items.length) return false;
    for (let i = 0; i < a.items.length; i++) {
      const same = sameValue(a.items[i]!, b.items[i]!);
      if (same !== true) return same;
    }
    return true;
  }
  if (a.kind === b.kind) return undefined;
  // different kinds of plain values are simply unequal
  const plain = new Set(["number", "string", "bool", "list", "tuple"]);
  return plain.has(a.kind) && plain.has(b.kind) ? false : undefined;
}
