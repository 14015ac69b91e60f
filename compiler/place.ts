// Placement: the train block's rules applied to the module tree. Precedence (spec/language.md,
// "Placement"):
//   1. `quantize` replaces the matched modules' base weights (stored quantized, always frozen);
//   2. `adapt` wraps the matched modules; at most one adapter per module; adapter parameters are
//      always trainable;
//   3. `freeze` makes the matched model parameters non-trainable (every model parameter is
//      trainable unless frozen);
//   4. `optimize` rules are tried in order: the first rule that matches a trainable tensor owns it,
//      and every trainable tensor must be owned;
//   5. `budget` controllers attach to modules adapted with the adapter they are written for.
import type * as A from "../language/ast.js";
import { error, type Diagnostic } from "../language/diagnostics.js";
import { selectorListText } from "../language/format.js";
import { allModules, allParams, instantiate } from "./instantiate.js";
import { chain, type Resolver, type Scope } from "./resolve.js";
import { matches } from "./selectors.js";
import { closest } from "./suggest.js";
import type { TrainSpec } from "./train.js";
import { describeValue, num, type ModuleInstance, type ParamInfo, type Value } from "./values.js";

type Config = Extract<Value, { kind: "config" }>;

export interface PlacedParam {
  param: ParamInfo;
  origin: "model" | "adapter";
  trainable: boolean;
  frozenBy?: A.Freeze;
  quantizedBy?: Applied;
  /** The optimize rule that owns it (trainable tensors only). */
  optimizer?: {
    config: Config;
    rule: A.Rule;
    bindings: Map<string, Value>;
    /**
     * A joint optimizer (`optimizer o(…) on ADAPTER`) updates every tensor of one adapted module
     * at once: the adapter instance, whose params (in declaration order) it updates together.
     */
    joint?: ModuleInstance;
    /** A joint optimizer's wrapped module (`base` in its update, which may assign its tensors). */
    base?: ModuleInstance;
  };
}

export interface Applied {
  module: ModuleInstance;
  config: Config;
  rule: A.Rule;
  /** The adapter or quantizer instantiated for this module (its params, its scope with `base`). */
  instance: ModuleInstance;
}

export interface BudgetPlacement {
  rule: A.BudgetRule;
  config: Config;
  total: number;
  adapted: Applied[];
}

export interface Placement {
  params: PlacedParam[];
  adapters: Applied[];
  quantizers: Applied[];
  budgets: BudgetPlacement[];
}

export function place(r: Resolver, spec: TrainSpec): Placement {
  const placer = new Placer(r, spec);
  placer.wrapModules("quantize");
  placer.wrapModules("adapt");
  placer.freeze();
  placer.optimize();
  placer.budget();
  return placer.placement();
}

/** The state the placement phases share: what has been placed so far, and how to report. */
class Placer {
  private readonly module: TrainSpec["module"];
  private readonly scope: Scope;
  private readonly modules: ModuleInstance[];
  private readonly modelParams: ParamInfo[];
  /** Every parameter by path: the model's, then each adapter's as it is added. */
  private readonly placed: Map<string, PlacedParam>;
  private readonly adapters: Applied[] = [];
  private readonly quantizers: Applied[] = [];
  /** The wrapped modules, for finding one wrapped twice without searching the lists. */
  private readonly adapted = new Map<ModuleInstance, Applied>();
  private readonly quantized = new Map<ModuleInstance, Applied>();
  private readonly budgets: BudgetPlacement[] = [];
  /** Paths of every module but the root. */
  private readonly modulePaths: string[];
  /** Paths of every module but the root, then of every model parameter. */
  private readonly allPaths: string[];

  constructor(
    private readonly r: Resolver,
    private readonly spec: TrainSpec,
  ) {
    this.module = spec.module;
    this.scope = r.scopeOf(spec.module);
    this.modules = allModules(spec.model);
    this.modelParams = allParams(spec.model);
    this.placed = new Map(
      this.modelParams.map((p) => [p.path, { param: p, origin: "model", trainable: true }]),
    );
    this.modulePaths = this.modules.map((m) => m.path).filter((p) => p !== "");
    this.allPaths = [...this.modulePaths, ...this.modelParams.map((p) => p.path)];
  }

  placement(): Placement {
    const { adapters, quantizers, budgets } = this;
    return { params: [...this.placed.values()], adapters, quantizers, budgets };
  }

  /** 1, 2: `quantize` or `adapt` rules, in rule order: wraps each matched module. */
  wrapModules(verb: "quantize" | "adapt"): void {
    for (const rule of this.spec.rules) {
      if (rule.kind !== "Rule" || rule.verb !== verb) continue;
      this.checkEach(rule.target, this.modulePaths, "exact", "module");
      const config = this.methodConfig(
        rule.method,
        verb === "adapt" ? "adapter" : "quantizer",
        verb,
      );
      if (!config) continue;
      for (const target of this.modules) {
        if (
          target.path === "" ||
          !rule.target.selectors.some((s) => matches(s, target.path, "exact"))
        )
          continue;
        const weight = target.params.find((p) => p.name === "weight");
        if (!this.passes(rule.target, weight, target.path)) continue;
        this.wrapModule(verb, rule, config, target);
      }
    }
  }

  /** Wraps one matched module, unless it already is; quantizing freezes its base weight. */
  private wrapModule(
    verb: "quantize" | "adapt",
    rule: A.Rule,
    config: Config,
    target: ModuleInstance,
  ): void {
    const list = verb === "adapt" ? this.adapters : this.quantizers;
    const wrapped = verb === "adapt" ? this.adapted : this.quantized;
    const existing = wrapped.get(target);
    if (existing) {
      const done = verb === "adapt" ? "adapted" : "quantized";
      this.report(
        error("E0304", `\`${target.path}\` is ${done} twice`, this.at(rule.target), {
          notes: [
            {
              message: `already ${done} with \`${existing.config.def.name.name}\` here`,
              at: this.at(existing.rule),
            },
          ],
          help: "make the selectors disjoint",
        }),
      );
      return;
    }
    const applied = this.wrap(config, target, rule);
    if (!applied) return;
    list.push(applied);
    wrapped.set(target, applied);
    if (verb === "quantize") {
      for (const p of target.params) {
        if (p.name !== "weight") continue;
        const entry = this.placed.get(p.path)!;
        entry.trainable = false;
        entry.quantizedBy = applied;
      }
    } else {
      for (const p of applied.instance.params)
        this.placed.set(p.path, { param: p, origin: "adapter", trainable: true });
    }
  }

  /** 3: `freeze` makes the matched model parameters non-trainable; the first rule is recorded. */
  freeze(): void {
    for (const rule of this.spec.rules) {
      if (rule.kind !== "Freeze") continue;
      this.checkEach(rule.target, this.allPaths, "prefix", "parameter or module");
      for (const p of this.modelParams) {
        if (
          !rule.target.selectors.some((s) => matches(s, p.path, "prefix")) ||
          !this.passes(rule.target, p, p.path)
        )
          continue;
        const entry = this.placed.get(p.path)!;
        entry.trainable = false;
        entry.frozenBy ??= rule;
      }
    }
  }

  /** 4: `optimize` rules: the first matching rule owns a trainable tensor; all must be owned. */
  optimize(): void {
    const adapterParams = new Set(
      this.adapters.flatMap((a) => a.instance.params.map((p) => p.path)),
    );
    let failed = false;
    for (const rule of this.spec.rules) {
      if (rule.kind !== "Rule" || rule.verb !== "optimize") continue;
      if (!this.optimizeRule(rule, adapterParams)) failed = true;
    }
    // A failed rule already has its diagnostic; the tensors it would own are not uncovered.
    if (!failed) this.reportUncovered();
  }

  /** Each parameter's declaring instance, indexed once the adapters are placed (`optimize`). */
  private owners?: Map<ParamInfo, ModuleInstance>;

  /** The module or adapter instance that declares `param` (the first, modules before adapters). */
  private ownerOf(param: ParamInfo): ModuleInstance | undefined {
    // Searching every instance's params for each parameter was quadratic in the model's depth.
    if (!this.owners) {
      this.owners = new Map();
      for (const i of [...this.modules, ...this.adapters.map((a) => a.instance)])
        for (const p of i.params) if (!this.owners.has(p)) this.owners.set(p, i);
    }
    return this.owners.get(param);
  }

  /** Gives `rule` the trainable tensors no earlier rule owns; false where it failed. */
  private optimizeRule(rule: A.Rule, adapterParams: Set<string>): boolean {
    const unmatched = this.checkOptimizeSelectors(rule, adapterParams);
    const config = this.methodConfig(rule.method, "optimizer", "optimize");
    if (!config) return false;
    const jointOn = jointTarget(config);
    if (jointOn) return this.optimizeJoint(rule, config, jointOn, adapterParams, unmatched);
    const selects = (path: string) =>
      rule.target.selectors.some((s) =>
        isAdaptersGroup(s) ? adapterParams.has(path) : matches(s, path, "prefix"),
      );
    const owned: Map<string, Value>[] = [];
    let rankWarned = false;
    const misfits: string[] = [];
    for (const [path, entry] of this.placed) {
      if (
        !entry.trainable ||
        entry.optimizer ||
        !selects(path) ||
        !this.passes(rule.target, entry.param, path)
      )
        continue;
      const bindings = bindOn(config, entry.param);
      if (!bindings) {
        misfits.push(path);
        continue;
      }
      // what an optimizer may read besides its arguments (spec §11): the run's total steps, the
      // tensor's shape and size, and its module's constructor arguments; a parameter of the
      // optimizer or a dim of its `on` clause with one of these names wins
      const given = (name: string) =>
        bindings.has(name) || config.def.params.some((p) => p.name.name === name);
      const implicit: [string, Value][] = [
        ["steps", num(this.spec.steps, true)],
        ["shape", { kind: "list", items: entry.param.shape.map((d) => num(d, true)) }],
        [
          "numel",
          num(
            entry.param.shape.reduce((a, d) => a * d, 1),
            true,
          ),
        ],
      ];
      const owner = this.ownerOf(entry.param);
      if (owner) implicit.push(["module", constructorArgs(owner)]);
      for (const [name, value] of implicit) if (!given(name)) bindings.set(name, value);
      entry.optimizer = { config, rule, bindings };
      owned.push(bindings);
      if (entry.param.shape.length === 2 && !rankWarned) {
        const [m, n] = entry.param.shape as [number, number];
        rankWarned = this.warnRank(config, rule, [m, n], `\`${path}\` (${m}×${n})`);
      }
    }
    if (misfits.length > 0) {
      this.reportMisfits(rule, config, misfits);
      return false;
    }
    setGroups(config, owned);
    if (owned.length === 0 && !unmatched) {
      this.r.diagnostics.push({
        ...error(
          "W0301",
          `this \`optimize\` rule covers no trainable tensor`,
          this.at(rule.target),
          {
            help: "every tensor it selects is frozen or owned by an earlier rule (the first matching rule wins)",
          },
        ),
        severity: "warning",
      });
    }
    return true;
  }

  /**
   * An `optimize` rule with a joint optimizer (`on ADAPTER`): each module adapted with that adapter
   * whose tensors the rule selects gets one instance, owning all of them. A selected tensor of
   * another kind, or an instance only partly selected (or partly frozen), is E0303.
   */
  private optimizeJoint(
    rule: A.Rule,
    config: Config,
    adapter: string,
    adapterParams: Set<string>,
    unmatched: boolean,
  ): boolean {
    const selects = (path: string) =>
      rule.target.selectors.some((s) =>
        isAdaptersGroup(s) ? adapterParams.has(path) : matches(s, path, "prefix"),
      );
    const chosen = (path: string, e: PlacedParam) =>
      !e.optimizer && selects(path) && this.passes(rule.target, e.param, path);
    const misfit = (message: string, help: string) => {
      this.report(error("E0303", message, this.at(rule.target), { help }));
      return false;
    };
    const instances = this.adapters.filter((a) => a.config.def.name.name === adapter);
    if (instances.length === 0)
      return misfit(
        `optimizer \`${config.def.name.name}\` updates the tensors of modules adapted with \`${adapter}\`, and no module is`,
        `adapt modules with \`${adapter}\` first, or correct the adapter its \`on\` clause names`,
      );
    const inInstance = new Set(instances.flatMap((a) => a.instance.params.map((p) => p.path)));
    for (const [path, e] of this.placed)
      if (e.trainable && chosen(path, e) && !inInstance.has(path))
        return misfit(
          `optimizer \`${config.def.name.name}\` updates the tensors of \`${adapter}\` adapters together, but \`${path}\` is not one`,
          `narrow the selector to the adapted modules' \`${adapter}\` tensors, and optimize the rest with another rule`,
        );
    if (config.def.members.some((m) => m.kind === "At"))
      return misfit(
        `optimizer \`${config.def.name.name}\` updates several tensors at once: its \`at\` actions are not run by this version of lrkc`,
        "move the action into the adapter, which can assign its own tensors",
      );
    const owned: Map<string, Value>[] = [];
    for (const a of instances) {
      const entries = a.instance.params.map((p) => this.placed.get(p.path)!);
      const taken = entries.filter((e) => e.trainable && chosen(e.param.path, e));
      if (taken.length === 0) continue;
      const left = entries.find((e) => !taken.includes(e));
      if (left)
        return misfit(
          `optimizer \`${config.def.name.name}\` updates all of \`${a.instance.path}\`'s tensors at once, but \`${left.param.path}\` is ${left.trainable ? (left.optimizer ? "owned by an earlier rule" : "not selected") : "frozen"}`,
          "select every tensor of the adapter (the `adapters` group does), and freeze none of them",
        );
      const bindings = new Map<string, Value>([["steps", num(this.spec.steps, true)]]);
      if (!config.def.params.some((p) => p.name.name === "module"))
        bindings.set("module", constructorArgs(a.module));
      for (const e of taken)
        e.optimizer = { config, rule, bindings, joint: a.instance, base: a.module };
      owned.push(bindings);
    }
    setGroups(config, owned);
    if (owned.length === 0 && !unmatched)
      this.r.diagnostics.push({
        ...error(
          "W0301",
          `this \`optimize\` rule covers no trainable tensor`,
          this.at(rule.target),
          {
            help: `a joint optimizer takes the tensors of modules adapted with \`${adapter}\``,
          },
        ),
        severity: "warning",
      });
    return true;
  }

  /** Reports selectors that match nothing; true if a path selector matched nothing. */
  private checkOptimizeSelectors(rule: A.Rule, adapterParams: Set<string>): boolean {
    const anyAdapt = this.spec.rules.some((x) => x.kind === "Rule" && x.verb === "adapt");
    let unmatched = false;
    for (const s of rule.target.selectors) {
      if (isAdaptersGroup(s)) {
        // With an adapt rule present, its own diagnostic already says why nothing is adapted.
        if (adapterParams.size === 0 && !anyAdapt)
          this.report(
            error("E0301", "`adapters` matches nothing: no module is adapted", this.at(s), {
              help: "add an `adapt … with …` rule, or optimize the model's parameters",
            }),
          );
      } else {
        unmatched =
          this.checkEach(
            { ...rule.target, selectors: [s], where: undefined },
            [...this.allPaths, ...adapterParams],
            "prefix",
            "parameter or module",
          ) || unmatched;
      }
    }
    return unmatched;
  }

  private reportMisfits(rule: A.Rule, config: Config, misfits: string[]): void {
    const first = this.placed.get(misfits[0]!)!.param;
    const more = misfits.length > 1 ? ` (and ${misfits.length - 1} more)` : "";
    this.report(
      error(
        "E0303",
        `optimizer \`${config.def.name.name}\` applies to \`${typeText(config.def.on?.type)}\` tensors, but \`${first.path}\` is ${first.dtype}[${first.shape.join(", ")}]${more}`,
        this.at(rule.target),
        {
          help:
            first.dtype === "f32"
              ? "narrow the selector, e.g. with `.weight` or `where ndim == 2`, and optimize the rest with a later rule"
              : "gradients train f32 tensors only: declare it `f32[…]`, or `freeze` it",
        },
      ),
    );
  }

  private reportUncovered(): void {
    const uncovered = [...this.placed.values()].filter((p) => p.trainable && !p.optimizer);
    if (uncovered.length === 0) return;
    const names = uncovered.map((p) => `\`${p.param.path}\``);
    this.report(
      error(
        "E0305",
        `${uncovered.length} trainable tensor${uncovered.length === 1 ? " has" : "s have"} no optimizer: ${names.slice(0, 3).join(", ")}${names.length > 3 ? `, and ${names.length - 3} more` : ""}`,
        this.at(this.spec.decl.name),
        {
          help: uncovered.every((p) => p.origin === "adapter")
            ? "add `optimize adapters with adamw(lr: 1e-3)`"
            : "add an `optimize` rule that covers them (e.g. `optimize ** with adamw(lr: 1e-3)` last), or `freeze` them",
        },
      ),
    );
  }

  /** 5: `budget` controllers, each on modules adapted with the adapter it is written for. */
  budget(): void {
    for (const rule of this.spec.rules) {
      if (rule.kind !== "BudgetRule") continue;
      const config = this.methodConfig(rule.controller, "budget", "budget … by");
      if (!config) continue;
      const total = this.r.attempt(() =>
        this.r.integer(rule.total, this.scope, this.module, "a budget"),
      );
      if (total === undefined) continue;
      this.checkEach(rule.target, this.modulePaths, "exact", "module");
      const selected = (path: string) =>
        rule.target.selectors.some((s) => matches(s, path, "exact"));
      const targets = this.adapters.filter((a) => selected(a.module.path));
      const wanted = config.def.on?.name.name;
      const wrong = targets.filter((a) => a.config.def.name.name !== wanted);
      const unadapted = this.modules.filter(
        (m) => selected(m.path) && !this.adapters.some((a) => a.module === m),
      );
      if (wrong.length > 0 || unadapted.length > 0) {
        const example = wrong[0]?.module.path ?? unadapted[0]!.path;
        this.report(
          error(
            "E0307",
            `budget \`${config.def.name.name}\` controls modules adapted with \`${wanted}\`, but \`${example}\` is ${wrong[0] ? `adapted with \`${wrong[0].config.def.name.name}\`` : "not adapted"}`,
            this.at(rule.target),
            { help: `adapt these modules with \`${wanted}(…)\`, or narrow the selector` },
          ),
        );
        continue;
      }
      this.budgets.push({ rule, config, total, adapted: targets });
    }
  }

  /** Rules already warned about (W0302): once per rule, not once per matrix it covers. */
  private readonly warnedRules = new Set<A.Rule>();

  /**
   * W0302 when a low-rank method's `rank` (or `init_rank`) exceeds min(rows, cols) of a matrix it
   * covers: the factors then hold more numbers than the matrix (or its full optimizer state).
   * True if it warned.
   */
  private warnRank(config: Config, rule: A.Rule, dims: [number, number], what: string): boolean {
    const arg = config.args.get("rank") ?? config.args.get("init_rank");
    const full = Math.min(...dims);
    if (arg?.kind !== "number" || arg.value <= full) return false;
    const name = config.args.has("rank") ? "rank" : "init_rank";
    this.r.diagnostics.push({
      ...error(
        "W0302",
        `\`${config.def.name.name}\`'s ${name} ${arg.value} is larger than min(rows, cols) = ${full} of ${what}`,
        config.at,
        {
          help: `a rank above ${full} adds no expressiveness and costs more memory than the full-rank method; use ${name}: ${full} or less`,
        },
      ),
      severity: "warning",
    });
    return true;
  }

  private report(d: Diagnostic): void {
    this.r.diagnostics.push(d);
  }

  private at(node: { span: A.Program["span"] }) {
    return this.r.at(this.module, node);
  }

  /** Reports selectors in the list that match none of `paths`, with a did-you-mean. */
  private checkEach(
    list: A.SelectorList,
    paths: string[],
    mode: "exact" | "prefix",
    what: string,
  ): boolean {
    let reported = false;
    for (const s of list.selectors) {
      if (paths.some((p) => matches(s, p, mode))) continue;
      reported = true;
      const text = selectorListText({ kind: "SelectorList", selectors: [s], span: s.span });
      const suggestion = suggestSelector(s, paths, mode);
      this.report(
        error("E0301", `selector \`${text}\` matches no ${what}`, this.at(s), {
          label: suggestion ? `did you mean \`${suggestion}\`?` : undefined,
          help: suggestion
            ? undefined
            : paths.length === 0
              ? `there is no ${what} here`
              : `${what}s here include ${paths.slice(0, 4).join(", ")}${paths.length > 4 ? ", …" : ""}`,
        }),
      );
    }
    return reported;
  }

  /**
   * `where` predicates see the tensor's `rows`, `cols`, `shape`, `numel`, `ndim`, `name`, `path`.
   */
  private passes(list: A.SelectorList, param: ParamInfo | undefined, path: string): boolean {
    if (!list.where) return true;
    const shape = param?.shape ?? [];
    const vars = new Map<string, Value>([
      ["rows", num(shape[0] ?? 1, true)],
      ["cols", num(shape[1] ?? 1, true)],
      ["shape", { kind: "list", items: shape.map((d) => num(d, true)) }],
      [
        "numel",
        num(
          shape.reduce((a, b) => a * b, 1),
          true,
        ),
      ],
      ["ndim", num(shape.length, true)],
      ["name", { kind: "string", value: path.split(".").pop() ?? "" }],
      ["path", { kind: "string", value: path }],
    ]);
    const where = list.where;
    const v = this.r.attempt(() => this.r.evaluate(where, chain(vars, this.scope), this.module));
    return v !== undefined && this.r.truthy(v, where, this.module);
  }

  /** The adapter, quantizer, optimizer or budget a rule names, as a config with its arguments. */
  private methodConfig(e: A.Expr, sort: A.DefinitionSort, verb: string): Config | undefined {
    const { r, scope, module } = this;
    const v = r.attempt(() => r.evaluate(e, scope, module));
    if (!v) return undefined;
    const config =
      v.kind === "definition" && v.def.params.every((p) => p.default)
        ? {
            kind: "config" as const,
            def: v.def,
            module: v.module,
            args: r.bindArguments(
              v.def,
              v.module,
              { kind: "Call", callee: e, args: [], span: e.span },
              scope,
              module,
            ),
            at: this.at(e),
          }
        : v;
    if (config.kind !== "config" || config.def.sort !== sort) {
      this.report(
        error(
          "E0206",
          `\`${verb}\` needs ${sort === "adapter" ? "an" : "a"} ${sort}, not ${describeValue(v)}`,
          this.at(e),
        ),
      );
      return undefined;
    }
    return config;
  }

  /**
   * Instantiates an adapter or quantizer around `target`, binding its `on Linear(in, out)` names.
   */
  private wrap(config: Config, target: ModuleInstance, rule: A.Rule): Applied | undefined {
    const on = config.def.on;
    if (!on) {
      this.report(
        error(
          "E0302",
          `${config.def.sort} \`${config.def.name.name}\` does not say what it applies to`,
          this.r.at(config.module, config.def.name),
          { help: "add an `on Linear(in, out)` clause" },
        ),
      );
      return undefined;
    }
    if (on.name.name !== target.typeName) {
      this.report(
        error(
          "E0302",
          `${config.def.sort} \`${config.def.name.name}\` applies to \`${on.name.name}\` modules, but \`${target.path}\` is ${/^[AEIOU]/.test(target.typeName) ? "an" : "a"} \`${target.typeName}\``,
          this.at(rule.target),
          { help: `narrow the selector to ${on.name.name} modules` },
        ),
      );
      return undefined;
    }
    const extra = new Map<string, Value>([["base", { kind: "instance", instance: target }]]);
    (on.args ?? []).forEach((name, i) => {
      const targetParam = target.def.params[i];
      const value = targetParam ? target.scope.get(targetParam.name.name) : undefined;
      if (value) extra.set(name.name, value);
    });
    const instance = instantiate(this.r, config, `${target.path}.${config.def.name.name}`, extra);
    const dims = (on.args ?? []).map((name) => extra.get(name.name));
    // Adapters only: a quantizer's low-rank branch is capped at min(in, out) and costs nothing more.
    if (rule.verb === "adapt" && dims.length === 2 && dims.every((d) => d?.kind === "number")) {
      const [a, b] = dims.map((d) => (d as { value: number }).value) as [number, number];
      if (!this.warnedRules.has(rule) && this.warnRank(config, rule, [a, b], `\`${target.path}\``))
        this.warnedRules.add(rule);
    }
    return { module: target, config, rule, instance };
  }
}

/** The `adapters` group selector: every adapter parameter. */
function isAdaptersGroup(s: A.Selector): boolean {
  return (
    s.segments.length === 1 &&
    s.segments[0]!.kind === "Pattern" &&
    s.segments[0]!.pattern === "adapters" &&
    !s.segments[0]!.index
  );
}

/**
 * The adapter a joint optimizer updates (`optimizer o(…) on lora`): an `on` clause naming a
 * definition, with no type pattern and no constructor arguments.
 */
export function jointTarget(config: Config): string | undefined {
  const on = config.def.on;
  return on && !on.type && !on.args && on.name.name !== "param" ? on.name.name : undefined;
}

/** Binds `on param: f32[m, n]` against a tensor's shape; undefined if the rank differs. */
function bindOn(config: Config, param: ParamInfo): Map<string, Value> | undefined {
  const bindings = new Map<string, Value>();
  // An optimizer steps f32 tensors (`on param: f32[...]`): an i32 one would be trained wrong.
  const dtype = config.def.on?.type?.name.name;
  if ((dtype ?? "f32") !== param.dtype) return undefined;
  const dims = config.def.on?.type?.dims;
  if (!dims) return bindings;
  const hasEllipsis = dims.some((d) => d.kind === "Ellipsis");
  const named = dims.filter((d) => d.kind !== "Ellipsis");
  if (hasEllipsis ? param.shape.length < named.length : param.shape.length !== dims.length)
    return undefined;
  const offset = param.shape.length - named.length;
  named.forEach((d, i) => {
    if (d.kind === "NameExpr") bindings.set(d.name, num(param.shape[offset + i]!, true));
  });
  return bindings;
}

function typeText(t: A.TypeExpr | undefined): string {
  if (!t) return "any";
  return `${t.name.name}[${(t.dims ?? []).map((d) => (d.kind === "Ellipsis" ? "..." : d.kind === "NameExpr" ? d.name : "?")).join(", ")}]`;
}

/** Replace unknown names in a selector by the closest real path component, if that then matches. */
function suggestSelector(
  s: A.Selector,
  paths: string[],
  mode: "exact" | "prefix",
): string | undefined {
  const components = new Set(paths.flatMap((p) => p.split(".")));
  let changed = false;
  const fix = (sel: A.Selector): A.Selector => ({
    ...sel,
    segments: sel.segments.map((seg): A.Segment => {
      if (seg.kind === "Alternatives") return { ...seg, options: seg.options.map(fix) };
      if (seg.kind !== "Pattern" || seg.pattern.includes("*") || components.has(seg.pattern))
        return seg;
      const guess = closest(seg.pattern, components);
      if (!guess) return seg;
      changed = true;
      return { ...seg, pattern: guess };
    }),
  });
  const fixed = fix(s);
  if (!changed || !paths.some((p) => matches(fixed, p, mode))) return undefined;
  return selectorListText({ kind: "SelectorList", selectors: [fixed], span: s.span });
}

/** `module.NAME` in an optimizer: the arguments the tensor's module was made with (`Linear(in, out)`). */
/**
 * `group` in an optimizer (spec §11): where this instance stands among those one `optimize` rule
 * made, `group.index` from 0 in the model's order and `group.size` of them, so that a layer-wise
 * schedule (FRUGAL's blocks, BAdam) can be written per tensor.
 */
function setGroups(config: Config, instances: Map<string, Value>[]): void {
  // a parameter of the optimizer, or a dim of its `on` clause, named `group` wins
  if (config.def.params.some((p) => p.name.name === "group")) return;
  instances.forEach((bindings, i) => {
    if (bindings.has("group")) return;
    const fields = new Map<string, Value>([
      ["index", num(i, true)],
      ["size", num(instances.length, true)],
    ]);
    bindings.set("group", { kind: "struct", what: "the optimizer's group", fields });
  });
}

function constructorArgs(owner: ModuleInstance): Value {
  const fields = new Map<string, Value>();
  for (const p of owner.def.params) {
    const v = owner.scope.get(p.name.name);
    if (v) fields.set(p.name.name, v);
  }
  // an adapter's tensor: also the wrapped module's arguments its `on` clause names (`in`, `out`)
  for (const name of owner.def.sort === "adapter" ? (owner.def.on?.args ?? []) : []) {
    const v = owner.scope.get(name.name);
    if (v && !fields.has(name.name)) fields.set(name.name, v);
  }
  return { kind: "struct", what: `the module \`${owner.typeName}\` at \`${owner.path}\``, fields };
}
