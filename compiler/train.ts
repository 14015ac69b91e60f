// The train block: which one, its settings, and the model instantiated from it.
import type * as A from "../language/ast.js";
import { error, type Diagnostic, type Location } from "../language/diagnostics.js";
import { instantiate } from "./instantiate.js";
import type { Module } from "./modules.js";
import type { Resolver } from "./resolve.js";
import { closest } from "./suggest.js";
import type { RenameRule } from "./program.js";
import { describeValue, type DataSet, type ModuleInstance, type Value } from "./values.js";

export interface TrainSpec {
  decl: A.TrainDecl;
  module: Module;
  model: ModuleInstance;
  data?: DataSet;
  /** The checkpoint to start from; `at` is the `init` line (absent when given by `--init`). */
  init?: { path: string; at?: A.Expr };
  /** The adapters' starting values (`init_adapters`): a PEFT folder or a safetensors file. */
  initAdapters?: { path: string; at: A.Expr };
  /** `init_rename`: rules renaming the `init` checkpoint's tensors (program.ts `renamed`). */
  initRename?: { rules: RenameRule[]; at: A.Expr };
  loss?: A.Expr;
  steps: number;
  batch: number;
  seed: number;
  clip?: number;
  schedule?: Value;
  /** `eval every N on DATA`; `onAt` is where DATA is written. */
  eval?: { every: number; on?: DataSet; onAt?: Location };
  checkpointEvery?: number;
  /**
   * `frozen_storage f16 | f32`: how the step stores its frozen f32 weights (f16: as
   * `--frozen-f16`, compiler/half-storage.ts; the flag turns it on whatever the block says).
   */
  frozenStorage?: "f16" | "f32";
  /** freeze / adapt / optimize / quantize / budget items, in order. */
  rules: (A.Freeze | A.Rule | A.BudgetRule)[];
  actions: A.At[];
}

export const defaults = { steps: 100, batch: 16, seed: 0 };

/**
 * The most steps a run may have: the step number reaches the device as an f32 input (dropout's
 * keys, step conditions), exact only up to 2^24.
 */
export const MAX_STEPS = 2 ** 24;

function tooManySteps(at: Location): Diagnostic {
  return error("E0402", `\`steps\` is over ${MAX_STEPS.toLocaleString("en-US")}`, at, {
    help: `the device counts steps in f32, exact up to 2^24 = ${MAX_STEPS}: split a longer run into runs of at most that many steps`,
  });
}

/** Picks the train block: the one named, or the only one. */
export function selectTrain(r: Resolver, module: Module, name?: string): A.TrainDecl | undefined {
  const trains = module.program.items.filter((i): i is A.TrainDecl => i.kind === "Train");
  if (name !== undefined) {
    const found = trains.find((t) => t.name.name === name);
    if (!found) {
      const guess = closest(
        name,
        trains.map((t) => t.name.name),
      );
      r.diagnostics.push(
        error("E0209", `${module.file.path} has no train block \`${name}\``, undefined, {
          help: guess
            ? `did you mean \`${guess}\`?`
            : trains.length
              ? `its train blocks are ${trains.map((t) => t.name.name).join(", ")}`
              : "add a `train NAME { … }` block",
        }),
      );
    }
    return found;
  }
  if (trains.length === 1) return trains[0];
  r.diagnostics.push(
    error(
      "E0209",
      trains.length === 0
        ? `${module.file.path} has no train block`
        : `${module.file.path} has ${trains.length} train blocks: say which one`,
      undefined,
      {
        help:
          trains.length === 0
            ? "add a `train NAME { model …; data …; steps … }` block"
            : `pass --train ${trains.map((t) => t.name.name).join(" or --train ")}`,
      },
    ),
  );
  return undefined;
}

/** Settings given outside the program (`--steps`, `--batch`, `--init`): they win over the block's. */
export interface TrainOverrides {
  steps?: number;
  batch?: number;
  /** A checkpoint path, relative to the working directory. */
  init?: string;
}

export function resolveTrain(
  r: Resolver,
  module: Module,
  decl: A.TrainDecl,
  overrides: TrainOverrides = {},
): TrainSpec | undefined {
  const scope = r.scopeOf(module);
  const settings = new Map<A.SettingKey, A.Setting>();
  const rules: TrainSpec["rules"] = [];
  const actions: A.At[] = [];
  let evalItem: A.Eval | undefined;
  let checkpoint: A.Checkpoint | undefined;
  for (const item of decl.items) {
    switch (item.kind) {
      case "Setting": {
        const previous = settings.get(item.key);
        if (previous) {
          r.diagnostics.push(
            error("E0202", `\`${item.key}\` is set twice in this train block`, r.at(module, item), {
              notes: [{ message: "first set here", at: r.at(module, previous) }],
            }),
          );
        }
        settings.set(item.key, item);
        break;
      }
      case "Freeze":
      case "Rule":
      case "BudgetRule":
        rules.push(item);
        break;
      case "Eval":
        evalItem = item;
        break;
      case "Checkpoint":
        checkpoint = item;
        break;
      case "At":
        actions.push(item);
        break;
    }
  }

  const modelSetting = settings.get("model");
  if (!modelSetting) {
    r.diagnostics.push(
      error(
        "E0208",
        `train block \`${decl.name.name}\` has no \`model\``,
        r.at(module, decl.name),
        { help: "add `model MyModel(…)` to the block" },
      ),
    );
    return undefined;
  }
  const modelValue = r.attempt(() => r.evaluate(modelSetting.value, scope, module));
  if (!modelValue) return undefined;
  const config: Extract<Value, { kind: "config" }> | undefined =
    modelValue.kind === "config" && modelValue.def.sort === "model"
      ? modelValue
      : modelValue.kind === "definition" && modelValue.def.sort === "model"
        ? {
            kind: "config",
            def: modelValue.def,
            module: modelValue.module,
            args: r.bindArguments(
              modelValue.def,
              modelValue.module,
              { kind: "Call", callee: modelSetting.value, args: [], span: modelSetting.value.span },
              scope,
              module,
            ),
            at: r.at(module, modelSetting.value),
          }
        : undefined;
  if (!config) {
    r.diagnostics.push(
      error(
        "E0206",
        `\`model\` must be a model, not ${describeValue(modelValue)}`,
        r.at(module, modelSetting.value),
      ),
    );
    return undefined;
  }
  const model = instantiate(r, config, "");

  const integer = (key: A.SettingKey, fallback: number): number => {
    const s = settings.get(key);
    if (!s) return fallback;
    const n = r.attempt(() => r.integer(s.value, scope, module, `\`${key}\``));
    if (n !== undefined && n <= 0 && key !== "seed") {
      r.diagnostics.push(error("E0402", `\`${key}\` must be positive`, r.at(module, s.value)));
    }
    const over = n !== undefined && key === "steps" && n > MAX_STEPS;
    if (over) r.diagnostics.push(tooManySteps(r.at(module, s.value)));
    return over ? fallback : (n ?? fallback);
  };
  const dataset = (e: A.Expr | undefined): DataSet | undefined => {
    if (!e) return undefined;
    const v = r.attempt(() => r.evaluate(e, scope, module));
    if (v === undefined) return undefined;
    if (v.kind !== "dataset") {
      r.diagnostics.push(
        error("E0206", `expected a data set, found ${describeValue(v)}`, r.at(module, e)),
      );
      return undefined;
    }
    return v.dataset;
  };

  const path = (key: "init" | "init_adapters"): { path: string; at: A.Expr } | undefined => {
    const setting = settings.get(key);
    if (!setting) return undefined;
    const v = r.attempt(() => r.evaluate(setting.value, scope, module));
    if (v && v.kind !== "string")
      r.diagnostics.push(
        error(
          "E0402",
          `\`${key}\` takes a ${key === "init" ? "file" : "folder or file"} name, not ${describeValue(v)}`,
          r.at(module, setting.value),
        ),
      );
    else if (v) return { path: v.value, at: setting.value };
    return undefined;
  };
  const initPath: TrainSpec["init"] = path("init");
  const renameSetting = settings.get("init_rename");
  const initRename = renameSetting && renameRules(r, module, renameSetting.value, scope);
  const clip = settings.get("clip");
  const clipValue = clip
    ? r.attempt(() => r.number(r.evaluate(clip.value, scope, module), clip.value, module).value)
    : undefined;
  if (clip && clipValue !== undefined && !(clipValue > 0)) {
    r.diagnostics.push(
      error(
        "E0402",
        `\`clip\` must be a positive gradient norm, not ${clipValue}`,
        r.at(module, clip.value),
        { help: "e.g. `clip 1.0`" },
      ),
    );
  }
  // `eval every N`, `checkpoint every N`: a number of steps, at least 1 (0 would never come).
  const period = (e: A.Expr, what: string): number | undefined => {
    const n = r.attempt(() => r.integer(e, scope, module, what));
    if (n !== undefined && n <= 0) {
      r.diagnostics.push(
        error("E0402", `${what} must be a positive number of steps, not ${n}`, r.at(module, e), {
          help: `e.g. \`${what.slice(1, -1)} 100\``,
        }),
      );
      return undefined;
    }
    return n;
  };
  const scheduleSetting = settings.get("schedule");
  const schedule = scheduleSetting
    ? r.attempt(() => r.evaluate(scheduleSetting.value, scope, module))
    : undefined;
  if (scheduleSetting && schedule && schedule.kind !== "schedule") {
    r.diagnostics.push(
      error(
        "E0402",
        `\`schedule\` must be a learning-rate schedule, not ${describeValue(schedule)}`,
        r.at(module, scheduleSetting.value),
        {
          help: "use `constant(…)`, `linear(…)` or `cosine(warmup: 100, min_ratio: 0.1)`",
        },
      ),
    );
  }
  return {
    decl,
    module,
    model,
    ...frozenStorage(r, module, settings.get("frozen_storage")),
    data: dataset(settings.get("data")?.value),
    init: overrides.init !== undefined ? { path: overrides.init } : initPath,
    initAdapters: path("init_adapters"),
    ...(initRename ? { initRename: { rules: initRename, at: renameSetting!.value } } : {}),
    loss: settings.get("loss")?.value,
    steps: overrides.steps ?? integer("steps", defaults.steps),
    batch: overrides.batch ?? integer("batch", defaults.batch),
    seed: integer("seed", defaults.seed),
    clip: clipValue,
    schedule,
    eval: evalItem
      ? {
          every: period(evalItem.every, "`eval every`") ?? 100,
          on: dataset(evalItem.on),
          onAt: evalItem.on ? r.at(module, evalItem.on) : undefined,
        }
      : undefined,
    checkpointEvery: checkpoint ? period(checkpoint.every, "`checkpoint every`") : undefined,
    rules,
    actions,
  };
}

/** `frozen_storage f16` or `f32`: a storage type written as a bare name, not a value. */
function frozenStorage(
  r: Resolver,
  module: Module,
  setting: A.Setting | undefined,
): Pick<TrainSpec, "frozenStorage"> {
  if (!setting) return {};
  const value = setting.value;
  if (value.kind === "NameExpr" && (value.name === "f16" || value.name === "f32"))
    return { frozenStorage: value.name };
  r.diagnostics.push(
    error("E0402", "`frozen_storage` takes `f16` or `f32`", r.at(module, value), {
      help: "`frozen_storage f16` stores the frozen weights as half floats (as `--frozen-f16`); f32 is the default",
    }),
  );
  return {};
}

/**
 * `init_rename [("from", "to"), …]`: each rule two dotted paths, `*` one segment, `to` using no
 * more `*`s than `from` matches. Undefined (with a diagnostic) when the value is not that.
 */
function renameRules(
  r: Resolver,
  module: Module,
  e: A.Expr,
  scope: Parameters<Resolver["evaluate"]>[1],
): RenameRule[] | undefined {
  const v = r.attempt(() => r.evaluate(e, scope, module));
  if (v === undefined) return undefined;
  const wrong = (message: string) => {
    r.diagnostics.push(
      error("E0402", message, r.at(module, e), {
        help: 'write `init_rename [("h.*.attn", "transformer.h.*.attn"), ("", "model")]`: pairs of dotted paths, `*` one segment',
      }),
    );
    return undefined;
  };
  const items = v.kind === "list" ? v.items : v.kind === "tuple" ? [v] : undefined;
  if (!items)
    return wrong(`\`init_rename\` takes a list of (from, to) pairs, not ${describeValue(v)}`);
  const rules: RenameRule[] = [];
  for (const item of items) {
    const pair = item.kind === "tuple" ? item.items : [];
    const [from, to] = pair;
    if (pair.length !== 2 || from?.kind !== "string" || to?.kind !== "string")
      return wrong(`each \`init_rename\` rule is a pair of strings, not ${describeValue(item)}`);
    const stars = (p: string) => p.split(".").filter((x) => x === "*").length;
    if (stars(to.value) > stars(from.value))
      return wrong(
        `the rule ("${from.value}", "${to.value}") uses more \`*\` in its new name than its old name matches`,
      );
    rules.push({ from: from.value, to: to.value });
  }
  return rules;
}
