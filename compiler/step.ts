// The training step as one IR graph: forward with every adapter in place, the loss and the
// regularizers, gradients of exactly the trainable tensors, and every optimizer's update with its
// state. Optimizer states with `refresh every N` make step variants: the graph holds each variant's
// update, and an entry point per variant names what it produces. The host schedule says which
// variant runs at which step.
//
// Contract of `buildStep` (a StepProgram, or undefined after diagnostics):
// - Inputs: `param:<path>` (every parameter the step reads; quantizers' stored consts as
//   `buffer:<name>`, role param, with their bit width; `frozen(model)`'s copies of the
//   parameters that change as `buffer:frozen:<path>`), `state:<name>` (optimizer and budget
//   states), `batch.<field>` (data), and the scalars `step` (1-based) and `lr_scale` (the
//   schedule's factor on every `lr`).
// - Entries, in this order:
//   - `step`: `loss` (with regularizers), and every trainable `param:<path>` and `state:<name>`
//     after one update, budgets observing;
//   - `step+refresh<key>`: the same where the `refresh every` periods in <key> (joined by `+`)
//     are due, one per non-empty combination of the periods in use;
//   - `evaluate`: `loss` without dropout and without regularizers or updates;
//   - `predict`: `logits` = `model(batch.input)` without dropout, when the batch has an `input`;
//   - `state_init`: every state's initial `state:<name>` (refreshed states start at zeros);
//   - `budget<i>.score` and `budget<i>.prune` for each rank budget (compiler/budget.ts);
//   - `action:step<N>` / `action:every<N>` (`….2`, … for later runs of the same schedule) for
//     the `at` actions (compiler/actions.ts): the `param:` and `state:` tensors they assign.
// Phases, in order (node numbering follows it): reject unsupported constructs, the loss, the
// evaluation variant, the regularizers, gradients and clipping, the budget controllers, the
// update variants (compiler/update.ts), the controllers' states and entries, the actions.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import { adapterStates } from "./adapter-states.js";
import { lowerActions } from "./actions.js";
import { gradients } from "./autodiff.js";
import {
  budgetStates,
  lowerControllers,
  lowerObserve,
  prepareBudgets,
  type BudgetContext,
} from "./budget.js";
import { Builder } from "./builder.js";
import { allModules } from "./instantiate.js";
import type { DType, InputRole, Shape, ValueRange } from "./ir.js";
import { Lowerer, type Frame } from "./lower.js";
import type { Placement, PlacedParam } from "./place.js";
import type {
  BudgetSchedule,
  Entry,
  Output,
  ProgramInput,
  StateInfo,
  StepProgram,
} from "./program.js";
import type { Resolver } from "./resolve.js";
import type { TrainSpec } from "./train.js";
import { lowerUpdates, type UpdateContext } from "./update.js";
import { MAX_STEP_CONDITIONS, StepConditions, updateVariants } from "./step-conditions.js";
import { describeValue, num, type ParamInfo, type Value } from "./values.js";

/** What the phases share: the graph being built, its inputs, and the lowerer. */
export interface StepContext {
  readonly r: Resolver;
  readonly spec: TrainSpec;
  readonly placement: Placement;
  readonly b: Builder;
  readonly L: Lowerer;
  /** Graph inputs by name, in the order they were made. */
  readonly inputs: Map<string, ProgramInput>;
  /** The graph input `name`, made on first use. */
  input(name: string, role: InputRole, shape: Shape, dtype?: DType, range?: ValueRange): number;
  paramNode(p: ParamInfo): number;
  readonly stepNode: number;
  readonly lrScale: number;
  /** Whether any error has been reported. */
  failed(): boolean;
  /** A location in the train block's file. */
  at(node: { span: A.Program["span"] }): Location;
}

/** The loss as lowered for training, and what the evaluation variant lowers again. */
interface Objective {
  loss: number;
  frame: Frame;
  modelInput: Value | undefined;
}

type Controllers = ReturnType<typeof prepareBudgets>;

interface Budget {
  ctx: BudgetContext;
  controllers: Controllers;
  gradByPath: Map<string, number>;
}

export function buildStep(
  r: Resolver,
  spec: TrainSpec,
  placement: Placement,
  batchFields: Record<string, { shape: Shape; dtype: DType; range?: ValueRange }>,
  buffers: ReadonlyMap<string, Value> = new Map(),
): StepProgram | undefined {
  const ctx = stepContext(r, spec, placement, buffers);
  if (!rejectUnsupported(ctx)) return undefined;
  // adapters' states first: the forward pass reads them
  const states: StateInfo[] = adapterStates(
    r,
    ctx.L,
    placement.adapters,
    (name, shape) => ctx.input(`state:${name}`, "state", shape),
    spec.seed,
  );
  if (ctx.failed()) return undefined;
  // the evaluation's and the prediction's forward are the loss's where no dropout tells them apart
  const lowered = ctx.L.keepingForwards(() => {
    const objective = lowerLoss(ctx, batchFields);
    return objective && { objective, evaluation: lowerEvaluation(ctx, objective) };
  });
  if (!lowered) return undefined;
  const { objective, evaluation } = lowered;
  const loss = addWrapperRegularizers(ctx, addModelRegularizers(ctx, objective.loss));
  if (ctx.failed()) return undefined;
  const trainable = placement.params.filter((p) => p.trainable);
  const grads = lowerGradients(ctx, loss, trainable);
  const budget = prepareControllers(ctx, trainable, grads);
  const conditions = new StepConditions();
  const variants = lowerUpdateVariants(ctx, loss, trainable, grads, budget, states, conditions);
  if (!variants) return undefined;
  const budgets = lowerControllerEntries(ctx, budget, states);
  if (!budgets) return undefined;
  const actions = lowerActions({
    r,
    spec,
    placement,
    b: ctx.b,
    L: ctx.L,
    paramNode: ctx.paramNode,
    stateNode: (name, shape) => ctx.input(`state:${name}`, "state", shape),
    stepNode: ctx.stepNode,
    lrScale: ctx.lrScale,
    states,
  });
  if (!actions) return undefined;
  const stateInit: Entry = {
    name: "state_init",
    outputs: states.map((s) => ({ name: `state:${s.name}`, node: s.init })),
  };
  const entries = [
    ...variants.values(),
    evaluation.evaluate,
    ...(evaluation.predict ? [evaluation.predict] : []),
    stateInit,
    ...budgets.flatMap((bp) => [bp.score, bp.prune]),
    ...actions.map((a) => a.entry),
  ];
  for (const entry of entries) ownOutputs(ctx.b, entry);
  return {
    ...evaluation,
    budgets,
    gradients: budget.gradByPath,
    graph: ctx.b.graph,
    inputs: [...ctx.inputs.values()],
    entries,
    actions,
    loss,
    variants,
    ...(conditions.found.length ? { conditions: conditions.found } : {}),
    states,
    stateInit,
    trainable: trainable.map((p) => p.param.path),
  };
}

/** The builder, the `step` and `lr_scale` inputs, and a lowerer with every wrapper in place. */
export function stepContext(
  r: Resolver,
  spec: TrainSpec,
  placement: Placement,
  buffers: ReadonlyMap<string, Value>,
): StepContext {
  const b = new Builder();
  const inputs = new Map<string, ProgramInput>();
  const input = (
    name: string,
    role: InputRole,
    shape: Shape,
    dtype: DType = "f32",
    range?: ValueRange,
  ): number => {
    const existing = inputs.get(name);
    if (existing) return existing.node;
    const node = b.input(role, name, shape, dtype, range);
    inputs.set(name, { name, node, role, shape: [...shape], dtype });
    return node;
  };
  const paramNode = (p: ParamInfo) => input(`param:${p.path}`, "param", p.shape, p.dtype);
  const stepNode = input("step", "scalar", []);
  const lrScale = input("lr_scale", "scalar", []);
  const L: Lowerer = new Lowerer(r, b, {
    param: paramNode,
    // A quantizer's consts are stored buffers: graph inputs shaped like their values at init.
    buffer: (v) => {
      const key = `${v.self.path}.${v.name}`;
      const value = buffers.get(key);
      if (!value) return undefined;
      const asInput = (name: string, t: Value, bits?: number): Value => {
        if (t.kind !== "tensor") return t;
        const node = input(`buffer:${name}`, "param", t.shape, t.dtype);
        if (bits !== undefined) inputs.get(`buffer:${name}`)!.bits = bits;
        return L.tensor(node);
      };
      if (value.kind !== "struct") return asInput(key, value);
      const bits = value.fields.get("bits");
      const fields = new Map<string, Value>();
      for (const [field, f] of value.fields)
        fields.set(
          field,
          asInput(
            `${key}.${field}`,
            f,
            field === "values" && bits?.kind === "number" ? bits.value : undefined,
          ),
        );
      return { ...value, fields };
    },
  });
  L.stepNode = stepNode;

  for (const q of placement.quantizers) L.wrappers.set(q.module, [q]);
  for (const a of placement.adapters)
    L.wrappers.set(a.module, [...(L.wrappers.get(a.module) ?? []), a]);

  return {
    r,
    spec,
    placement,
    b,
    L,
    inputs,
    input,
    paramNode,
    stepNode,
    lrScale,
    failed: () => r.diagnostics.some((d) => d.severity === "error"),
    at: (node) => ({ file: spec.module.file, span: node.span }),
  };
}

/**
 * `state` in a model or a quantizer (no stage keeps it: say so rather than train without it) →
 * E0206. False when the step cannot be built. (An adapter's states are compiler/adapter-states.ts.)
 */
function rejectUnsupported(ctx: StepContext): boolean {
  const { r, spec, placement } = ctx;
  // `state` belongs to optimizers, budgets and adapters.
  for (const m of [...allModules(spec.model), ...placement.quantizers.map((q) => q.instance)]) {
    for (const st of m.states) {
      r.diagnostics.push(
        error(
          "E0206",
          `\`state\` is not allowed in ${m.def.sort === "model" ? "a model" : `${m.def.sort === "adapter" ? "an" : "a"} ${m.def.sort}`}`,
          { file: m.module.file, span: st.span },
          {
            help: "optimizer, budget and adapter definitions hold state; a model holds `param`s and `const`s",
          },
        ),
      );
    }
  }
  return !ctx.failed();
}

/** The batch as `batch.<field>` inputs, and the train block's `loss` on it: a scalar. */
function lowerLoss(
  ctx: StepContext,
  batchFields: Record<string, { shape: Shape; dtype: DType; range?: ValueRange }>,
): Objective | undefined {
  const { r, spec, L } = ctx;
  if (!spec.loss) {
    r.diagnostics.push(
      error(
        "E0208",
        `train block \`${spec.decl.name.name}\` has no \`loss\``,
        ctx.at(spec.decl.name),
        { help: "add e.g. `loss cross_entropy(model(batch.input), batch.target)`" },
      ),
    );
    return undefined;
  }
  const batch = new Map<string, Value>();
  for (const [field, f] of Object.entries(batchFields))
    batch.set(field, L.tensor(ctx.input(`batch.${field}`, "data", f.shape, f.dtype, f.range)));
  const frame: Frame = {
    module: spec.module,
    locals: new Map<string, Value>([
      ["model", { kind: "instance", instance: spec.model }],
      ["batch", { kind: "struct", what: "the batch", fields: batch }],
      ["frozen", frozenModels(ctx)],
    ]),
    scope: r.scopeOf(spec.module),
    dims: new Map(),
  };
  const lossValue = r.attempt(() => L.expr(spec.loss!, frame));
  if (!lossValue) return undefined;
  if (lossValue.kind !== "tensor" || lossValue.shape.length !== 0) {
    r.diagnostics.push(
      error(
        "E0402",
        `the loss must be a scalar, but it is ${describeValue(lossValue)}`,
        ctx.at(spec.loss),
        { help: "reduce it, e.g. with `mean(…)`" },
      ),
    );
    return undefined;
  }
  return { loss: lossValue.node, frame, modelInput: batch.get("input") };
}

/**
 * `frozen(model)` in the loss: the model as it was when training started (after `init`), without
 * its adapters and quantizers, dropout off, never trained: a distillation teacher. Calling it runs
 * the module's own `forward`; no gradient reaches anything through it. A parameter that may change
 * during the run (trainable, assigned by an action, or replaced by a quantizer) is read from a
 * copy taken at the start (`buffer:frozen:<path>`, computed by the init program, checkpointed);
 * the others (an adapted layer's frozen base weight) are shared with the model.
 */
function frozenModels(ctx: StepContext): Value {
  const { spec, placement } = ctx;
  const trainable = new Set(placement.params.filter((p) => p.trainable).map((p) => p.param));
  const quantized = new Set(placement.quantizers.map((q) => q.module));
  const actions =
    spec.actions.length > 0 ||
    allModules(spec.model).some((m) => m.actions.length > 0) ||
    placement.adapters.some((a) => a.instance.actions.length > 0);
  const param = (p: ParamInfo): number =>
    trainable.has(p) || actions || quantized.has(p.owner)
      ? ctx.input(`buffer:frozen:${p.path}`, "param", p.shape, p.dtype)
      : ctx.paramNode(p);
  const teacher = ctx.L.unwrapped(param);
  return {
    kind: "bound",
    what: "`frozen`",
    call: (args, at) => {
      const module = args.length === 1 && !args[0]!.name ? args[0]!.value : undefined;
      if (module?.kind !== "instance")
        return ctx.r.report(
          error(
            "E0402",
            `\`frozen\` takes one module, the train block's \`model\` or one of its submodules${module ? `, not ${describeValue(module)}` : ""}`,
            args[0]?.at ?? at,
            { help: "e.g. `frozen(model)(batch.x)`" },
          ),
        );
      return {
        kind: "bound",
        what: `the frozen \`${module.instance.path || "model"}\``,
        call: (inputs, callAt) => teacher.forward(module.instance, inputs, callAt),
      };
    },
  };
}

/** `evaluate` and `predict`: the same loss and the model's output, lowered again with dropout off. */
function lowerEvaluation(
  ctx: StepContext,
  objective: Objective,
): { evaluate: Entry; predict: Entry | undefined } {
  const { r, spec, L } = ctx;
  L.training = false;
  const evalLoss = r.attempt(() => L.expr(spec.loss!, objective.frame));
  const modelInput = objective.modelInput;
  const logits = modelInput
    ? r.speculate(() =>
        L.forward(spec.model, [{ value: modelInput, at: ctx.at(spec.loss!) }], ctx.at(spec.loss!)),
      )
    : undefined;
  L.training = true;
  return {
    evaluate: {
      name: "evaluate",
      outputs: evalLoss?.kind === "tensor" ? [{ name: "loss", node: evalLoss.node }] : [],
    },
    predict:
      logits?.kind === "tensor"
        ? { name: "predict", outputs: [{ name: "logits", node: logits.node }] }
        : undefined,
  };
}

/** A regularizer's node if it is a scalar; otherwise E0402 and undefined. */
function scalarTerm(ctx: StepContext, node: number, at: Location): number | undefined {
  if (ctx.b.shape(node).length === 0) return node;
  ctx.r.diagnostics.push(
    error("E0402", "a regularizer must be a scalar", at, {
      help: "reduce it, e.g. with `sum(…)`",
    }),
  );
  return undefined;
}

/** `regularize` members of the model's own modules, each added to the loss. */
function addModelRegularizers(ctx: StepContext, loss: number): number {
  const { r, b, L } = ctx;
  for (const m of allModules(ctx.spec.model)) {
    for (const reg of m.regularizers) {
      const term = r.attempt(() => L.expr(reg.value, L.frameFor(m)));
      if (!term) continue;
      const node = scalarTerm(ctx, L.asNode(term, L.frameFor(m), reg.value), {
        file: m.module.file,
        span: reg.value.span,
      });
      if (node !== undefined) loss = b.add(loss, node);
    }
  }
  return loss;
}

/** Regularizers of every wrapper (quantizers first), each added to the loss. */
function addWrapperRegularizers(ctx: StepContext, loss: number): number {
  const { r, b, L, placement } = ctx;
  // `instances`: how many wrappers share the definition.
  const byDef = new Map<A.Definition, number>();
  for (const a of [...placement.adapters, ...placement.quantizers])
    byDef.set(a.config.def, (byDef.get(a.config.def) ?? 0) + 1);
  for (const a of [...placement.quantizers, ...placement.adapters]) {
    for (const reg of a.instance.regularizers) {
      const locals = new Map<string, Value>([
        ["instances", num(byDef.get(a.config.def)!, true)],
        ["base", { kind: "instance", instance: a.module }],
      ]);
      const term = r.attempt(() => L.expr(reg.value, L.frameFor(a.instance, locals)));
      if (!term) continue;
      const at = { file: a.instance.module.file, span: reg.value.span };
      if (term.kind !== "tensor" && term.kind !== "number") {
        r.diagnostics.push(
          error("E0402", `a regularizer must be a scalar, not ${describeValue(term)}`, at),
        );
        continue;
      }
      const node = scalarTerm(ctx, L.asNode(term, L.frameFor(a.instance), reg.value), at);
      if (node !== undefined) loss = b.add(loss, node);
    }
  }
  return loss;
}

/** Gradients of the loss for the trainable tensors (keyed by param node), clipped when asked. */
function lowerGradients(
  ctx: StepContext,
  loss: number,
  trainable: readonly PlacedParam[],
): Map<number, number> {
  const { b, spec } = ctx;
  const wrt = trainable.map((p) => ctx.paramNode(p.param));
  const grads = gradients(b, loss, wrt, { stop: ctx.L.stopped });
  if (spec.clip !== undefined && wrt.length > 0) {
    // Global-norm clipping, as torch.nn.utils.clip_grad_norm_: g *= min(1, clip / (‖g‖ + 1e-6)).
    let squares = b.constant(0);
    for (const w of wrt) {
      const g = grads.get(w)!;
      squares = b.add(squares, b.sum(b.mul(g, g)));
    }
    const factor = b.minimum(
      b.constant(1),
      b.div(b.constant(spec.clip), b.add(b.sqrt(squares), b.constant(1e-6))),
    );
    for (const w of wrt) grads.set(w, b.mul(grads.get(w)!, factor));
  }
  return grads;
}

/** The rank budgets' controllers: they observe after every optimizer step, in every variant. */
function prepareControllers(
  ctx: StepContext,
  trainable: readonly PlacedParam[],
  grads: ReadonlyMap<number, number>,
): Budget {
  const { r, placement } = ctx;
  const budgetCtx: BudgetContext = {
    r,
    b: ctx.b,
    L: ctx.L,
    spec: ctx.spec,
    input: (name, role, shape) => ctx.input(name, role, shape),
    paramNode: (path) => {
      const placed = placement.params.find((p) => p.param.path === path)!;
      return ctx.paramNode(placed.param);
    },
    stepNode: ctx.stepNode,
  };
  const controllers = r.attempt(() => prepareBudgets(budgetCtx, placement.budgets)) ?? [];
  const gradByPath = new Map(
    trainable.map((p) => [p.param.path, grads.get(ctx.paramNode(p.param))!]),
  );
  return { ctx: budgetCtx, controllers, gradByPath };
}

/** The controllers' observations replace the outputs they update. */
function withObserve(
  ctx: StepContext,
  budget: Budget,
  outputs: Output[] | undefined,
  decide: (node: number) => boolean | undefined,
): Output[] | undefined {
  if (!outputs || budget.controllers.length === 0) return outputs;
  const updated = new Map<string, number>();
  for (const o of outputs) if (o.name.startsWith("param:")) updated.set(o.name.slice(6), o.node);
  const observed = ctx.r.attempt(() =>
    lowerObserve({ ...budget.ctx, decide }, budget.controllers, updated, budget.gradByPath),
  );
  if (!observed) return undefined;
  const replaced = new Set(observed.map((o) => o.name));
  return [...outputs.filter((o) => !replaced.has(o.name)), ...observed];
}

/**
 * `step`, then `step+refresh<key>` for every non-empty combination of the refresh periods met
 * while lowering it (with one or two periods in practice, this is small). Fills `states`.
 */
function lowerUpdateVariants(
  ctx: StepContext,
  loss: number,
  trainable: readonly PlacedParam[],
  grads: ReadonlyMap<number, number>,
  budget: Budget,
  states: StateInfo[],
  conditions: StepConditions,
): Map<string, Entry> | undefined {
  const updates: UpdateContext = {
    r: ctx.r,
    b: ctx.b,
    L: ctx.L,
    input: (name, role, shape) => ctx.input(name, role, shape),
    paramNode: ctx.paramNode,
    stepNode: ctx.stepNode,
    lrScale: ctx.lrScale,
    states,
    periods: new Set(),
    decide: (node) => conditions.decide(ctx.b.graph, node),
    seed: ctx.spec.seed,
    quantized: new Set(ctx.placement.params.filter((p) => p.quantizedBy).map((p) => p.param.path)),
  };
  // one variant per combination of due refresh periods and step conditions (step-conditions.ts)
  const variant = (due: ReadonlySet<number>, outcomes: readonly boolean[]) => {
    conditions.decisions = new Map(conditions.found.map((c, i) => [c.key, outcomes[i] ?? false]));
    const outputs = withObserve(
      ctx,
      budget,
      lowerUpdates(updates, trainable, grads, due),
      updates.decide!,
    );
    return ctx.failed() ? undefined : outputs;
  };
  return ctx.r.attempt(() =>
    updateVariants(updates.periods, conditions, { name: "loss", node: loss }, variant, (n) =>
      ctx.r.report(
        error(
          "E0206",
          `the optimizers branch on ${n} conditions on \`step\`: at most ${MAX_STEP_CONDITIONS}`,
          undefined,
          {
            help: "each doubles the step's variants; combine them, or select with `where` instead",
          },
        ),
      ),
    ),
  );
}

/** The controllers' states (appended to `states`) and their `score` / `prune` entries. */
function lowerControllerEntries(
  ctx: StepContext,
  budget: Budget,
  states: StateInfo[],
): BudgetSchedule[] | undefined {
  const { r } = ctx;
  for (const st of r.attempt(() => budgetStates(budget.ctx, budget.controllers)) ?? []) {
    states.push({ name: st.name, shape: st.shape, init: st.init });
  }
  const budgets = r.attempt(() => lowerControllers(budget.ctx, budget.controllers));
  if (!budgets || ctx.failed()) return undefined;
  return budgets;
}

/**
 * Gives each of `entry`'s outputs a node of its own where two came out as one (value numbering
 * makes every moment initialized to zeros of one shape the same node): each output is written
 * into its own tensor's buffer, in place where the plan can (compiler/in-place.ts).
 */
function ownOutputs(b: Builder, entry: Entry): void {
  const seen = new Set<number>();
  entry.outputs = entry.outputs.map((o) => {
    if (!seen.has(o.node)) {
      seen.add(o.node);
      return o;
    }
    return { ...o, node: b.fresh(o.node) };
  });
}
