// The training step as one IR graph: forward with every adapter in place, the loss and the
// regularizers, gradients of exactly the trainable tensors, and every optimizer's update with its
// state. Optimizer states with `refresh every N` make step variants: the graph holds each variant's
// update, and an entry point per variant names what it produces. The host schedule says which
// variant runs at which step.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import { gradients } from "./autodiff.js";
import { budgetStates, lowerControllers, lowerObserve, prepareBudgets } from "./budget.js";
import { Builder } from "./builder.js";
import { allModules, instantiate } from "./instantiate.js";
import type { DType, Graph, InputRole, Shape } from "./ir.js";
import { Lowerer, type Frame, type Tensor } from "./lower.js";
import type { Placement, PlacedParam } from "./place.js";
import type { Entry, Output, ProgramInput, StateInfo, StepProgram } from "./program.js";
import type { Resolver } from "./resolve.js";
import type { TrainSpec } from "./train.js";
import { describeValue, num, type ParamInfo, type Value } from "./values.js";

type Config = Extract<Value, { kind: "config" }>;

export function buildStep(
  r: Resolver,
  spec: TrainSpec,
  placement: Placement,
  batchFields: Record<string, { shape: Shape; dtype: DType }>,
  buffers: ReadonlyMap<string, Value> = new Map(),
): StepProgram | undefined {
  const b = new Builder();
  const inputs = new Map<string, ProgramInput>();
  const input = (name: string, role: InputRole, shape: Shape, dtype: DType = "f32"): number => {
    const existing = inputs.get(name);
    if (existing) return existing.node;
    const node = b.input(role, name, shape, dtype);
    inputs.set(name, { name, node, role, shape: [...shape], dtype });
    return node;
  };
  const paramNode = (p: ParamInfo) => input(`param:${p.path}`, "param", p.shape, p.dtype);
  const stepNode = input("step", "scalar", []);
  const lrScale = input("lr_scale", "scalar", []);
  const L = new Lowerer(r, b, {
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

  const failed = () => r.diagnostics.some((d) => d.severity === "error");
  const { module } = spec;
  const at = (node: { span: A.Program["span"] }): Location => ({
    file: module.file,
    span: node.span,
  });

  // `at step` / `at every` actions parse and resolve, but no stage runs them yet: say so rather
  // than train without them. `state` belongs to optimizers and budgets.
  for (const m of [
    ...allModules(spec.model),
    ...placement.adapters.map((a) => a.instance),
    ...placement.quantizers.map((q) => q.instance),
  ]) {
    for (const st of m.states) {
      r.diagnostics.push(
        error(
          "E0206",
          `\`state\` is not allowed in ${m.def.sort === "model" ? "a model" : `${m.def.sort === "adapter" ? "an" : "a"} ${m.def.sort}`}`,
          { file: m.module.file, span: st.span },
          {
            help: "optimizer and budget definitions hold state; a model holds `param`s and `const`s",
          },
        ),
      );
    }
  }
  const actions = [
    ...spec.actions.map((a) => ({ a, file: module.file })),
    ...allModules(spec.model).flatMap((m) => m.actions.map((a) => ({ a, file: m.module.file }))),
    ...[...placement.adapters, ...placement.quantizers].flatMap((w) =>
      w.instance.actions.map((a) => ({ a, file: w.instance.module.file })),
    ),
  ];
  for (const { a, file } of actions) {
    r.diagnostics.push(
      error(
        "E0206",
        `\`at ${a.trigger}\` actions are not run by this version of lrkc`,
        { file, span: a.span },
        {
          help: "remove the action; periodic state changes can be written as a `state … refresh every N` for now",
        },
      ),
    );
  }
  if (actions.length > 0 || failed()) return undefined;

  // ---------------------------------------------------------------- loss
  if (!spec.loss) {
    r.diagnostics.push(
      error("E0208", `train block \`${spec.decl.name.name}\` has no \`loss\``, at(spec.decl.name), {
        help: "add e.g. `loss cross_entropy(model(batch.input), batch.target)`",
      }),
    );
    return undefined;
  }
  const batch = new Map<string, Value>();
  for (const [field, f] of Object.entries(batchFields))
    batch.set(field, L.tensor(input(`batch.${field}`, "data", f.shape, f.dtype)));
  const trainFrame: Frame = {
    module,
    locals: new Map<string, Value>([
      ["model", { kind: "instance", instance: spec.model }],
      ["batch", { kind: "struct", what: "the batch", fields: batch }],
    ]),
    scope: r.scopeOf(module),
    dims: new Map(),
  };
  const lossValue = r.attempt(() => L.expr(spec.loss!, trainFrame));
  if (!lossValue) return undefined;
  if (lossValue.kind !== "tensor" || lossValue.shape.length !== 0) {
    r.diagnostics.push(
      error(
        "E0402",
        `the loss must be a scalar, but it is ${describeValue(lossValue)}`,
        at(spec.loss),
        { help: "reduce it, e.g. with `mean(…)`" },
      ),
    );
    return undefined;
  }
  let loss = lossValue.node;

  // Evaluation: the same loss and the model's output, lowered again with dropout off.
  L.training = false;
  const evalLoss = r.attempt(() => L.expr(spec.loss!, trainFrame));
  const modelInput = batch.get("input");
  const logits = modelInput
    ? r.speculate(() =>
        L.forward(spec.model, [{ value: modelInput, at: at(spec.loss!) }], at(spec.loss!)),
      )
    : undefined;
  L.training = true;

  // `regularize` members of the model's own modules count too.
  for (const m of allModules(spec.model)) {
    for (const reg of m.regularizers) {
      const term = r.attempt(() => L.expr(reg.value, L.frameFor(m)));
      if (!term) continue;
      const node = L.asNode(term, L.frameFor(m), reg.value);
      if (b.shape(node).length !== 0) {
        r.diagnostics.push(
          error(
            "E0402",
            "a regularizer must be a scalar",
            { file: m.module.file, span: reg.value.span },
            { help: "reduce it, e.g. with `sum(…)`" },
          ),
        );
        continue;
      }
      loss = b.add(loss, node);
    }
  }

  // Regularizers of every wrapper, summed into the loss.
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
      if (term.kind !== "tensor" && term.kind !== "number") {
        r.diagnostics.push(
          error("E0402", `a regularizer must be a scalar, not ${describeValue(term)}`, {
            file: a.instance.module.file,
            span: reg.value.span,
          }),
        );
        continue;
      }
      const node = L.asNode(term, L.frameFor(a.instance), reg.value);
      if (b.shape(node).length !== 0) {
        r.diagnostics.push(
          error(
            "E0402",
            "a regularizer must be a scalar",
            { file: a.instance.module.file, span: reg.value.span },
            { help: "reduce it, e.g. with `sum(…)`" },
          ),
        );
        continue;
      }
      loss = b.add(loss, node);
    }
  }
  if (failed()) return undefined;

  // ---------------------------------------------------------------- gradients
  const trainable = placement.params.filter((p) => p.trainable);
  const wrt = trainable.map((p) => paramNode(p.param));
  const grads = gradients(b, loss, wrt, { stop: L.stopped });
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

  // ---------------------------------------------------------------- optimizer updates
  const states: StateInfo[] = [];
  const periods = new Set<number>();
  // First pass: lower every update once per refresh choice; collect the periods in use.
  type Lowered = { outputs: Output[] };
  const lowerAll = (due: ReadonlySet<number>): Lowered | undefined => {
    const outputs: Output[] = [];
    for (const p of trainable) {
      const grad = grads.get(paramNode(p.param))!;
      const result = r.attempt(() =>
        lowerOptimizer(
          p.optimizer!.config,
          p.optimizer!.bindings,
          `${p.param.path}`,
          L.tensor(paramNode(p.param)),
          L.tensor(grad),
          due,
        ),
      );
      if (!result) return undefined;
      outputs.push({ name: `param:${p.param.path}`, node: result.param }, ...result.states);
    }
    return { outputs };
  };

  const stateSeen = new Set<string>();
  const lowerOptimizer = (
    config: Config,
    bindings: Map<string, Value>,
    prefix: string,
    param: Tensor,
    grad: Tensor,
    due: ReadonlySet<number>,
  ): { param: number; states: Output[]; delta?: number } => {
    const opt = instantiate(r, config, `${prefix}:${config.def.name.name}`, bindings);
    const action = opt.actions[0];
    if (action) {
      r.report(
        error(
          "E0206",
          `\`at ${action.trigger}\` actions are not run by this version of lrkc`,
          { file: opt.module.file, span: action.span },
          {
            help: "write periodic state changes as a `state … refresh every N` for now",
          },
        ),
      );
    }
    const frame = L.frameFor(opt);
    const locals = new Map<string, Value>([
      ["param", param],
      ["grad", grad],
      ["step", L.tensor(stepNode)],
    ]);
    const lr = config.args.get("lr");
    if (lr?.kind === "number") locals.set("lr", L.tensor(b.mul(b.constant(lr.value), lrScale)));
    const stateOutputs: Output[] = [];
    const stateNames: string[] = [];
    for (const s of opt.states) {
      const name = `${prefix}:${s.name.name}`;
      const initFrame: Frame = { ...frame, locals: new Map(locals) };
      const initial = L.expr(s.init, initFrame);
      if (initial.kind !== "tensor") {
        r.report(
          error("E0402", `a state must be a tensor, not ${describeValue(initial)}`, {
            file: opt.module.file,
            span: s.init.span,
          }),
        );
      }
      if (s.type?.dims)
        L.bindDims(
          s.type,
          initial,
          initFrame,
          { file: opt.module.file, span: s.type.span },
          `state \`${s.name.name}\``,
        );
      let period: number | undefined;
      if (s.refreshEvery) {
        const v = L.expr(s.refreshEvery, frame);
        if (v.kind !== "number" || !Number.isInteger(v.value) || v.value <= 0) {
          r.report(
            error("E0402", "`refresh every` needs a positive integer known while compiling", {
              file: opt.module.file,
              span: s.refreshEvery.span,
            }),
          );
        }
        period = v.value;
        periods.add(period);
      }
      const stored = input(`state:${name}`, "state", initial.shape);
      if (!stateSeen.has(name)) {
        stateSeen.add(name);
        // A refreshed state is recomputed before its first use, so its stored start is zeros.
        states.push({
          name,
          shape: initial.shape,
          init: period ? b.constant(0, initial.shape) : initial.node,
          period,
        });
      }
      locals.set(
        s.name.name,
        L.tensor(period !== undefined && due.has(period) ? initial.node : stored),
      );
      stateNames.push(s.name.name);
    }
    // `inner.update(x)`: the inner optimizer on a virtual zero parameter shaped like x.
    const hooks = L.hooks;
    const saved = { innerUpdate: hooks.innerUpdate, configMember: hooks.configMember };
    hooks.innerUpdate = (inner, x) => {
      const zero = L.tensor(b.constant(0, x.shape));
      const result = lowerOptimizer(inner, new Map(), `${prefix}:inner`, zero, x, due);
      stateOutputs.push(...result.states);
      return L.tensor(b.neg(result.param));
    };
    hooks.configMember = (c, name) => {
      const v = c.args.get(name);
      if (name === "lr" && v?.kind === "number")
        return L.tensor(b.mul(b.constant(v.value), lrScale));
      if (name === "update" && c.def.sort === "optimizer") {
        return {
          kind: "bound",
          what: `\`${c.def.name.name}.update\``,
          call: (args, where) => hooks.innerUpdate!(c, args[0]!.value as Tensor, where),
        };
      }
      return v;
    };
    try {
      const update = opt.scope.get("update");
      if (update?.kind !== "function") {
        r.report(
          error("E0207", `optimizer \`${config.def.name.name}\` has no \`update(g)\` function`, {
            file: config.module.file,
            span: config.def.name.span,
          }),
        );
      }
      L.callFunction(update.fn, opt, [{ value: grad, at: config.at }], config.at, locals);
    } finally {
      hooks.innerUpdate = saved.innerUpdate;
      hooks.configMember = saved.configMember;
    }
    const newParam = L.asNode(locals.get("param")!, frame, config.def.name);
    for (const n of stateNames)
      stateOutputs.push({
        name: `state:${prefix}:${n}`,
        node: L.asNode(locals.get(n)!, frame, config.def.name),
      });
    return { param: newParam, states: stateOutputs };
  };

  // Budget controllers observe after every optimizer step, in every variant.
  const budgetCtx = {
    r,
    b,
    L,
    spec,
    input: (name: string, role: InputRole, shape: readonly number[]) => input(name, role, shape),
    paramNode: (path: string) => {
      const placed = placement.params.find((p) => p.param.path === path)!;
      return paramNode(placed.param);
    },
    stepNode,
  };
  const controllers = r.attempt(() => prepareBudgets(budgetCtx, placement.budgets)) ?? [];
  const gradByPath = new Map(trainable.map((p) => [p.param.path, grads.get(paramNode(p.param))!]));
  const withObserve = (lowered: Lowered | undefined): Lowered | undefined => {
    if (!lowered || controllers.length === 0) return lowered;
    const updated = new Map<string, number>();
    for (const o of lowered.outputs)
      if (o.name.startsWith("param:")) updated.set(o.name.slice(6), o.node);
    const observed = r.attempt(() => lowerObserve(budgetCtx, controllers, updated, gradByPath));
    if (!observed) return undefined;
    const replaced = new Set(observed.map((o) => o.name));
    return { outputs: [...lowered.outputs.filter((o) => !replaced.has(o.name)), ...observed] };
  };

  const plain = withObserve(lowerAll(new Set()));
  if (!plain || failed()) return undefined;
  const variants = new Map<string, Entry>();
  const lossOutput: Output = { name: "loss", node: loss };
  variants.set("", { name: "step", outputs: [lossOutput, ...plain.outputs] });
  // Every non-empty combination of periods that can be due together (with one or two periods in
  // practice, this is small).
  const list = [...periods].sort((a, c) => a - c);
  for (let mask = 1; mask < 1 << list.length; mask++) {
    const due = new Set(list.filter((_, i) => mask & (1 << i)));
    const lowered = withObserve(lowerAll(due));
    if (!lowered) return undefined;
    const key = [...due].join("+");
    variants.set(key, { name: `step+refresh${key}`, outputs: [lossOutput, ...lowered.outputs] });
  }
  for (const st of r.attempt(() => budgetStates(budgetCtx, controllers)) ?? []) {
    states.push({ name: st.name, shape: st.shape, init: st.init });
  }
  const budgets = r.attempt(() => lowerControllers(budgetCtx, controllers));
  if (!budgets || failed()) return undefined;
  const evaluate: Entry = {
    name: "evaluate",
    outputs: evalLoss?.kind === "tensor" ? [{ name: "loss", node: evalLoss.node }] : [],
  };
  const predict: Entry | undefined =
    logits?.kind === "tensor"
      ? { name: "predict", outputs: [{ name: "logits", node: logits.node }] }
      : undefined;
  const stateInit: Entry = {
    name: "state_init",
    outputs: states.map((s) => ({ name: `state:${s.name}`, node: s.init })),
  };
  return {
    evaluate,
    predict,
    budgets,
    gradients: gradByPath,
    graph: b.graph,
    inputs: [...inputs.values()],
    entries: [
      ...variants.values(),
      evaluate,
      ...(predict ? [predict] : []),
      stateInit,
      ...budgets.flatMap((bp) => [bp.score, bp.prune]),
    ],
    loss,
    variants,
    states,
    stateInit,
    trainable: trainable.map((p) => p.param.path),
  };
}
