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
import { chain, type Resolver } from "./resolve.js";
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
  optimizer?: { config: Config; rule: A.Rule; bindings: Map<string, Value> };
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
  const { module } = spec;
  const scope = r.scopeOf(module);
  const modules = allModules(spec.model);
  const modelParams = allParams(spec.model);
  const placed = new Map<string, PlacedParam>(
    modelParams.map((p) => [p.path, { param: p, origin: "model", trainable: true }]),
  );
  const adapters: Applied[] = [];
  const quantizers: Applied[] = [];
  const budgets: BudgetPlacement[] = [];
  const allPaths = [
    ...modules.map((m) => m.path).filter((p) => p !== ""),
    ...modelParams.map((p) => p.path),
  ];

  const report = (d: Diagnostic) => r.diagnostics.push(d);
  const at = (node: { span: A.Program["span"] }) => r.at(module, node);

  /** Reports selectors in the list that match none of `paths`, with a did-you-mean. */
  const checkEach = (
    list: A.SelectorList,
    paths: string[],
    mode: "exact" | "prefix",
    what: string,
  ): boolean => {
    let reported = false;
    for (const s of list.selectors) {
      if (paths.some((p) => matches(s, p, mode))) continue;
      reported = true;
      const text = selectorListText({ kind: "SelectorList", selectors: [s], span: s.span });
      const suggestion = suggestSelector(s, paths, mode);
      report(
        error("E0301", `selector \`${text}\` matches no ${what}`, at(s), {
          label: suggestion ? `did you mean \`${suggestion}\`?` : undefined,
          help: suggestion
            ? undefined
            : `${what}s here include ${paths.slice(0, 4).join(", ")}${paths.length > 4 ? ", …" : ""}`,
        }),
      );
    }
    return reported;
  };

  /** `where` predicates see the tensor's `rows`, `cols`, `shape`, `numel`, `ndim`, `name`, `path`. */
  const passes = (list: A.SelectorList, param: ParamInfo | undefined, path: string): boolean => {
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
    const v = r.attempt(() => r.evaluate(list.where!, chain(vars, scope), module));
    return v !== undefined && r.truthy(v, list.where, module);
  };

  const methodConfig = (e: A.Expr, sort: A.DefinitionSort, verb: string): Config | undefined => {
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
            at: at(e),
          }
        : v;
    if (config.kind !== "config" || config.def.sort !== sort) {
      report(
        error(
          "E0206",
          `\`${verb}\` needs ${sort === "adapter" ? "an" : "a"} ${sort}, not ${describeValue(v)}`,
          at(e),
        ),
      );
      return undefined;
    }
    return config;
  };

  /** Instantiates an adapter or quantizer around `target`, binding its `on Linear(in, out)` names. */
  const wrap = (config: Config, target: ModuleInstance, rule: A.Rule): Applied | undefined => {
    const on = config.def.on;
    if (!on) {
      report(
        error(
          "E0302",
          `${config.def.sort} \`${config.def.name.name}\` does not say what it applies to`,
          r.at(config.module, config.def.name),
          { help: "add an `on Linear(in, out)` clause" },
        ),
      );
      return undefined;
    }
    if (on.name.name !== target.typeName) {
      report(
        error(
          "E0302",
          `${config.def.sort} \`${config.def.name.name}\` applies to \`${on.name.name}\` modules, but \`${target.path}\` is ${/^[AEIOU]/.test(target.typeName) ? "an" : "a"} \`${target.typeName}\``,
          at(rule.target),
          {
            help: `narrow the selector to ${on.name.name} modules`,
          },
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
    const instance = instantiate(r, config, `${target.path}.${config.def.name.name}`, extra);
    return { module: target, config, rule, instance };
  };

  // 1, 2: quantize and adapt, in rule order per verb.
  const modulePaths = modules.map((m) => m.path).filter((p) => p !== "");
  for (const verb of ["quantize", "adapt"] as const) {
    for (const rule of spec.rules) {
      if (rule.kind !== "Rule" || rule.verb !== verb) continue;
      checkEach(rule.target, modulePaths, "exact", "module");
      const config = methodConfig(rule.method, verb === "adapt" ? "adapter" : "quantizer", verb);
      if (!config) continue;
      const list = verb === "adapt" ? adapters : quantizers;
      for (const target of modules) {
        if (
          target.path === "" ||
          !rule.target.selectors.some((s) => matches(s, target.path, "exact"))
        )
          continue;
        const weight = target.params.find((p) => p.name === "weight");
        if (!passes(rule.target, weight, target.path)) continue;
        const existing = list.find((a) => a.module === target);
        if (existing) {
          report(
            error(
              "E0304",
              `\`${target.path}\` is ${verb === "adapt" ? "adapted" : "quantized"} twice`,
              at(rule.target),
              {
                notes: [
                  {
                    message: `already ${verb === "adapt" ? "adapted" : "quantized"} with \`${existing.config.def.name.name}\` here`,
                    at: at(existing.rule),
                  },
                ],
                help: "make the selectors disjoint",
              },
            ),
          );
          continue;
        }
        const applied = wrap(config, target, rule);
        if (!applied) continue;
        list.push(applied);
        if (verb === "quantize") {
          for (const p of target.params) {
            if (p.name !== "weight") continue;
            const entry = placed.get(p.path)!;
            entry.trainable = false;
            entry.quantizedBy = applied;
          }
        } else {
          for (const p of applied.instance.params)
            placed.set(p.path, { param: p, origin: "adapter", trainable: true });
        }
      }
    }
  }

  // 3: freeze.
  for (const rule of spec.rules) {
    if (rule.kind !== "Freeze") continue;
    checkEach(rule.target, allPaths, "prefix", "parameter or module");
    for (const p of modelParams) {
      if (
        !rule.target.selectors.some((s) => matches(s, p.path, "prefix")) ||
        !passes(rule.target, p, p.path)
      )
        continue;
      const entry = placed.get(p.path)!;
      entry.trainable = false;
      entry.frozenBy ??= rule;
    }
  }

  // 4: optimize, first matching rule wins.
  let optimizeFailed = false;
  const adapterParams = new Set(adapters.flatMap((a) => a.instance.params.map((p) => p.path)));
  const everyPath = [...placed.keys()];
  for (const rule of spec.rules) {
    if (rule.kind !== "Rule" || rule.verb !== "optimize") continue;
    const isGroup = (s: A.Selector) =>
      s.segments.length === 1 &&
      s.segments[0]!.kind === "Pattern" &&
      s.segments[0]!.pattern === "adapters" &&
      !s.segments[0]!.index;
    const selects = (path: string) =>
      rule.target.selectors.some((s) =>
        isGroup(s) ? adapterParams.has(path) : matches(s, path, "prefix"),
      );
    const anyAdapt = spec.rules.some((x) => x.kind === "Rule" && x.verb === "adapt");
    let unmatched = false;
    for (const s of rule.target.selectors) {
      if (isGroup(s)) {
        // With an adapt rule present, its own diagnostic already says why nothing is adapted.
        if (adapterParams.size === 0 && !anyAdapt)
          report(
            error("E0301", "`adapters` matches nothing: no module is adapted", at(s), {
              help: "add an `adapt … with …` rule, or optimize the model's parameters",
            }),
          );
      } else {
        unmatched =
          checkEach(
            { ...rule.target, selectors: [s], where: undefined },
            [...allPaths, ...adapterParams],
            "prefix",
            "parameter or module",
          ) || unmatched;
      }
    }
    const config = methodConfig(rule.method, "optimizer", "optimize");
    if (!config) {
      optimizeFailed = true;
      continue;
    }
    let owned = 0;
    const misfits: string[] = [];
    for (const path of everyPath) {
      const entry = placed.get(path)!;
      if (
        !entry.trainable ||
        entry.optimizer ||
        !selects(path) ||
        !passes(rule.target, entry.param, path)
      )
        continue;
      const bindings = bindOn(config, entry.param);
      if (!bindings) {
        misfits.push(path);
        continue;
      }
      entry.optimizer = { config, rule, bindings };
      owned++;
    }
    if (misfits.length > 0) {
      const first = placed.get(misfits[0]!)!.param;
      const more = misfits.length > 1 ? ` (and ${misfits.length - 1} more)` : "";
      report(
        error(
          "E0303",
          `optimizer \`${config.def.name.name}\` applies to \`${typeText(config.def.on?.type)}\` tensors, but \`${first.path}\` is f32[${first.shape.join(", ")}]${more}`,
          at(rule.target),
          {
            help: "narrow the selector, e.g. with `.weight` or `where ndim == 2`, and optimize the rest with a later rule",
          },
        ),
      );
      optimizeFailed = true;
    } else if (owned === 0 && !unmatched) {
      r.diagnostics.push({
        ...error("E0306", `this \`optimize\` rule covers no trainable tensor`, at(rule.target), {
          help: "every tensor it selects is frozen or owned by an earlier rule (the first matching rule wins)",
        }),
        severity: "warning",
      });
    }
  }
  const uncovered = [...placed.values()].filter((p) => p.trainable && !p.optimizer);
  if (uncovered.length > 0 && !optimizeFailed) {
    const names = uncovered.map((p) => `\`${p.param.path}\``);
    report(
      error(
        "E0305",
        `${uncovered.length} trainable tensor${uncovered.length === 1 ? " has" : "s have"} no optimizer: ${names.slice(0, 3).join(", ")}${names.length > 3 ? `, and ${names.length - 3} more` : ""}`,
        at(spec.decl.name),
        {
          help: uncovered.every((p) => p.origin === "adapter")
            ? "add `optimize adapters with adamw(lr: 1e-3)`"
            : "add an `optimize` rule that covers them (e.g. `optimize ** with adamw(lr: 1e-3)` last), or `freeze` them",
        },
      ),
    );
  }

  // 5: budgets.
  for (const rule of spec.rules) {
    if (rule.kind !== "BudgetRule") continue;
    const config = methodConfig(rule.controller, "budget", "budget … by");
    if (!config) continue;
    const total = r.attempt(() => r.integer(rule.total, scope, module, "a budget"));
    if (total === undefined) continue;
    checkEach(rule.target, modulePaths, "exact", "module");
    const targets = adapters.filter((a) =>
      rule.target.selectors.some((s) => matches(s, a.module.path, "exact")),
    );
    const wanted = config.def.on?.name.name;
    const wrong = targets.filter((a) => a.config.def.name.name !== wanted);
    const selected = modules.filter((m) =>
      rule.target.selectors.some((s) => matches(s, m.path, "exact")),
    );
    const unadapted = selected.filter((m) => !adapters.some((a) => a.module === m));
    if (wrong.length > 0 || unadapted.length > 0) {
      const example = wrong[0]?.module.path ?? unadapted[0]!.path;
      report(
        error(
          "E0307",
          `budget \`${config.def.name.name}\` controls modules adapted with \`${wanted}\`, but \`${example}\` is ${wrong[0] ? `adapted with \`${wrong[0].config.def.name.name}\`` : "not adapted"}`,
          at(rule.target),
          {
            help: `adapt these modules with \`${wanted}(…)\`, or narrow the selector`,
          },
        ),
      );
      continue;
    }
    budgets.push({ rule, config, total, adapted: targets });
  }

  return { params: [...placed.values()], adapters, quantizers, budgets };
}

/** Binds `on param: f32[m, n]` against a tensor's shape; undefined if the rank differs. */
function bindOn(config: Config, param: ParamInfo): Map<string, Value> | undefined {
  const bindings = new Map<string, Value>();
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
