// Optimizer updates as IR: one optimizer instance per trainable tensor, its states as graph inputs
// (each declared once, with its initial value for `state_init`), its `update(g)` lowered into the
// new parameter and new states. `refresh every N` states are recomputed from their initializer in
// the variants where N is due. `inner.update(x)` (an optimizer argument that holds an optimizer)
// is lowered by a callback the caller passes: by default the inner optimizer on a virtual zero
// parameter shaped like x, whose states are its outer optimizer's `…:inner:…` states.
import type * as A from "../language/ast.js";
import { error } from "../language/diagnostics.js";
import { stateFill } from "./adapter-states.js";
import type { Builder } from "./builder.js";
import { paramSeed } from "./init.js";
import { pooledCondition, pooledInit } from "./pooled-states.js";
import { fingerprint } from "./step-conditions.js";
import { instantiate } from "./instantiate.js";
import type { InputRole, Shape } from "./ir.js";
import type { Frame, Lowerer, Tensor } from "./lower.js";
import type { PlacedParam } from "./place.js";
import type { Output, StateInfo } from "./program.js";
import { Reported, type Resolver, type Scope } from "./resolve.js";
import { describeValue, type ModuleInstance, type ParamInfo, type Value } from "./values.js";

type Config = Extract<Value, { kind: "config" }>;

export interface UpdateContext {
  readonly r: Resolver;
  readonly b: Builder;
  /** The step's lowerer (no optimizer in scope). */
  readonly L: Lowerer;
  /** A graph input by name, registered once. */
  input(name: string, role: InputRole, shape: Shape): number;
  paramNode(p: ParamInfo): number;
  readonly stepNode: number;
  /** The schedule's factor on every `lr`. */
  readonly lrScale: number;
  /** Every optimizer state, each once across the variants, in declaration order. */
  readonly states: StateInfo[];
  /** The `refresh every` periods met so far. */
  readonly periods: Set<number>;
  /** The branch of an `if` on `step` alone in the variant being lowered (step-conditions.ts). */
  decide?(node: number): boolean | undefined;
  /** The train block's seed: a typed state's bare initializer is drawn from it and its name. */
  readonly seed?: number;
  /** The paths of quantized tensors, which a joint optimizer cannot assign through `base`. */
  readonly quantized?: ReadonlySet<string>;
}

/** One optimizer applied to one tensor: its states are named `${prefix}:${state}`. */
export interface OptimizerCall {
  config: Config;
  bindings: Map<string, Value>;
  prefix: string;
  param: Tensor;
  grad: Tensor;
  /** The refresh periods due in this variant. */
  due: ReadonlySet<number>;
  /**
   * A joint optimizer's tensors (`on ADAPTER`), by the adapter's names, in declaration order:
   * they replace `param` and `grad`, and `update` takes one gradient for each.
   */
  joint?: { name: string; param: Tensor; grad: Tensor }[];
  /**
   * A joint optimizer's adapter instance: its states are read and assigned by their names too,
   * and `adapter.NAME` reads its other members.
   */
  adapter?: ModuleInstance;
  /** A joint optimizer's wrapped module, `base`, whose tensors its `update` may assign. */
  base?: ModuleInstance;
}

export interface LoweredOptimizer {
  /** The updated parameter (a joint optimizer's first). */
  param: number;
  /** A joint optimizer's updated tensors, by the adapter's names. */
  joint?: Map<string, number>;
  /** The updated states, inner optimizers' first. */
  states: Output[];
  /**
   * A joint optimizer's other assigned tensors: the adapter's states (`state:<adapter path>:…`)
   * and the wrapped module's tensors (`param:<path>`).
   */
  assigned?: Output[];
}

/**
 * `inner.update(x)` inside the optimizer `outer`: the amount the inner optimizer subtracts, and the
 * outputs of the states it updates. `lowerer` is the one lowering the outer optimizer's update.
 */
export type InnerUpdate = (
  inner: Config,
  x: Tensor,
  outer: { ctx: UpdateContext; call: OptimizerCall; lowerer: Lowerer },
) => { delta: Tensor; states: Output[] };

/** The new value of every trainable tensor and of its optimizer's states, for one variant. */
export function lowerUpdates(
  ctx: UpdateContext,
  trainable: readonly PlacedParam[],
  grads: ReadonlyMap<number, number>,
  due: ReadonlySet<number>,
): Output[] | undefined {
  const outputs: Output[] = [];
  const jointDone = new Set<ModuleInstance>();
  for (const p of trainable) {
    const joint = p.optimizer!.joint;
    if (joint) {
      if (jointDone.has(joint)) continue;
      jointDone.add(joint);
      const tensors = joint.params.map((q) => ({
        name: q.name,
        param: ctx.L.tensor(ctx.paramNode(q)),
        grad: ctx.L.tensor(grads.get(ctx.paramNode(q))!),
      }));
      const result = ctx.r.attempt(() =>
        lowerOptimizer(ctx, {
          config: p.optimizer!.config,
          bindings: p.optimizer!.bindings,
          prefix: joint.path,
          param: tensors[0]!.param,
          grad: tensors[0]!.grad,
          due,
          joint: tensors,
          adapter: joint,
          base: p.optimizer!.base,
        }),
      );
      if (!result) return undefined;
      for (const q of joint.params)
        outputs.push({ name: `param:${q.path}`, node: result.joint!.get(q.name)! });
      outputs.push(...result.assigned!, ...result.states);
      continue;
    }
    const grad = grads.get(ctx.paramNode(p.param))!;
    const result = ctx.r.attempt(() =>
      lowerOptimizer(ctx, {
        config: p.optimizer!.config,
        bindings: p.optimizer!.bindings,
        prefix: `${p.param.path}`,
        param: ctx.L.tensor(ctx.paramNode(p.param)),
        grad: ctx.L.tensor(grad),
        due,
      }),
    );
    if (!result) return undefined;
    outputs.push({ name: `param:${p.param.path}`, node: result.param }, ...result.states);
  }
  return outputs;
}

/** The inner optimizer on a virtual zero parameter shaped like x; its states are `…:inner:…`. */
export const lowerInnerOptimizer: InnerUpdate = (inner, x, { ctx, call, lowerer }) => {
  const zero = lowerer.tensor(lowerer.b.constant(0, x.shape));
  const result = lowerOptimizer(
    ctx,
    {
      config: inner,
      // the run's total steps, as the outer optimizer sees them (place.ts)
      bindings: new Map(
        call.bindings.has("steps") && !inner.def.params.some((p) => p.name.name === "steps")
          ? [["steps", call.bindings.get("steps")!]]
          : [],
      ),
      prefix: `${call.prefix}:inner`,
      param: zero,
      grad: x,
      due: call.due,
    },
    lowerInnerOptimizer,
    lowerer,
  );
  return { delta: lowerer.tensor(lowerer.b.neg(result.param)), states: result.states };
};

/**
 * One optimizer's update of one tensor. `lowerer` lowers the optimizer's state initializers (the
 * step's lowerer, or for an inner optimizer the one lowering its outer update); `innerUpdate`
 * lowers `inner.update(x)` in its update.
 */
export function lowerOptimizer(
  ctx: UpdateContext,
  call: OptimizerCall,
  innerUpdate: InnerUpdate = lowerInnerOptimizer,
  lowerer: Lowerer = ctx.L,
): LoweredOptimizer {
  const r: Resolver = ctx.r;
  const { config } = call;
  const opt = instantiate(r, config, `${call.prefix}:${config.def.name.name}`, call.bindings);
  // A joint optimizer reads and assigns the adapter's tensors by their names.
  const given: [string, Value][] = call.joint
    ? call.joint.map((t) => [t.name, t.param])
    : [
        ["param", call.param],
        ["grad", call.grad],
      ];
  // ... and the adapter's states by theirs (a pool of candidates, counters); the optimizer's own
  // states are stored under the adapter's path too, so a name both declare would be one tensor
  const adapterStates = (call.adapter?.states ?? []).map((st) => {
    const name = `${call.adapter!.path}:${st.name.name}`;
    const own = opt.states.find((s) => s.name.name === st.name.name);
    if (own)
      r.report(
        error(
          "E0202",
          `\`${st.name.name}\` is a state of the adapter \`${call.adapter!.def.name.name}\` too: both would be stored as \`state:${name}\``,
          { file: opt.module.file, span: own.name.span },
          { help: "give the optimizer's state another name" },
        ),
      );
    return { local: st.name.name, name, value: call.adapter!.scope.get(st.name.name) };
  });
  for (const st of adapterStates) if (st.value?.kind === "tensor") given.push([st.local, st.value]);
  const locals = new Map<string, Value>([...given, ["step", lowerer.tensor(ctx.stepNode)]]);
  const givenNames = ["step", "grad", "lr"];
  if (call.adapter && call.base) {
    locals.set("base", { kind: "instance", instance: call.base });
    locals.set("adapter", { kind: "instance", instance: call.adapter });
    givenNames.push("base", "adapter");
  }
  const lr = config.args.get("lr");
  if (lr?.kind === "number")
    locals.set("lr", scaledLr(ctx, lowerer, lr.value, config.args.get("schedule"), call.bindings));
  const stateNames: string[] = [];
  // Helper functions read these names' current values (spec §6.7); `update`'s own `let`s stay
  // its own.
  const perTensor = new Set([
    ...given.map(([n]) => n),
    "step",
    "lr",
    ...opt.states.map((s) => s.name.name),
    ...(locals.has("base") ? ["base", "adapter"] : []),
  ]);
  const outer = lowerer.hooks.liveMembers;
  const live: Scope = {
    lookup: (n) => (perTensor.has(n) ? locals.get(n) : undefined),
    names: () => [...perTensor].filter((n) => locals.has(n)),
  };
  // an `if` on a pooled state's condition selects per tensor (pooled-states.ts): deciding it as
  // a step condition would make a variant per tensor's outcome
  const pooledKeys = new Set<string>();
  lowerer = lowerer.withHooks({
    liveMembers: (self) => (self === opt ? live : outer?.(self)),
    stepCondition: (node) =>
      pooledKeys.size && pooledKeys.has(fingerprint(ctx.b.graph, node))
        ? undefined
        : ctx.decide?.(node),
  });
  const frame = lowerer.frameFor(opt);
  for (const s of opt.states) {
    const state = lowerState(ctx, call, lowerer, opt, s, frame, locals);
    const pooled = stateNamed(ctx.states, `${call.prefix}:${s.name.name}`)?.pooled;
    if (pooled) pooledKeys.add(pooled.key);
    locals.set(s.name.name, state);
    stateNames.push(s.name.name);
  }
  const stateOutputs: Output[] = [];
  const update = opt.scope.get("update");
  if (update?.kind !== "function") {
    if (opt.failed) throw new Reported(); // its `require` said what is wrong
    r.report(
      error("E0207", `optimizer \`${config.def.name.name}\` has no \`update(g)\` function`, {
        file: config.module.file,
        span: config.def.name.span,
      }),
    );
  }
  const grads = call.joint ? call.joint.map((t) => t.grad) : [call.grad];
  // `base.weight = …` in a joint optimizer's update: the wrapped module's new tensors, read back
  // by the statements after the assignment
  const baseValues = new Map<ParamInfo, number>();
  if (call.base) {
    const outerParam = lowerer.hooks.param;
    const body = (): Lowerer => bodyLowerer;
    lowerer = lowerer.withHooks({
      param: (p) => baseValues.get(p) ?? outerParam(p),
      assign: (s, frame) =>
        assignBase(ctx, body(), call, s, frame, frame.locals === locals, baseValues),
    });
  }
  const bodyLowerer = updateLowerer(ctx, call, lowerer, innerUpdate, stateOutputs);
  bodyLowerer.callFunction(
    update.fn,
    opt,
    grads.map((g) => ({ value: g, at: config.at })),
    config.at,
    locals,
    givenNames, // given, not assigned: `step = 5` would only rebind a name
  );
  // the updated tensors (`param`, or a joint optimizer's by name), then the states
  const node = (n: string) => lowerer.asNode(locals.get(n)!, frame, config.def.name);
  const updated = call.joint ? call.joint.map((t) => t.name) : ["param"];
  const values = new Map(updated.map((n) => [n, node(n)]));
  for (const n of stateNames)
    stateOutputs.push({ name: `state:${call.prefix}:${n}`, node: node(n) });
  const assigned: Output[] = [];
  for (const st of adapterStates) {
    const v = locals.get(st.local);
    if (v === undefined || v === st.value) continue;
    assigned.push({
      name: `state:${st.name}`,
      node: ctx.b.ownValue(`state:${st.name}`, node(st.local)),
    });
  }
  for (const [p, n] of baseValues)
    assigned.push({ name: `param:${p.path}`, node: ctx.b.ownValue(`param:${p.path}`, n) });
  return {
    param: values.get(updated[0]!)!,
    ...(call.joint ? { joint: values, assigned } : {}),
    states: stateOutputs,
  };
}

/**
 * `base.NAME = …` (or `+=`, …) in a joint optimizer's update: a tensor of the wrapped module,
 * assigned by the update's own statements (not inside an `if` on a tensor, whose branches both
 * run, nor in a helper function). False for any other target: the ordinary path reports it.
 */
function assignBase(
  ctx: UpdateContext,
  L: Lowerer,
  call: OptimizerCall,
  s: A.Assign,
  frame: Frame,
  topLevel: boolean,
  baseValues: Map<ParamInfo, number>,
): boolean {
  if (s.target.kind !== "Member") return false;
  const object = L.expr(s.target.object, frame);
  const at = { file: frame.module.file, span: s.target.span };
  const member =
    object.kind === "instance" ? object.instance.scope.get(s.target.name.name) : undefined;
  if (object.kind !== "instance" || object.instance !== call.base || member?.kind !== "param")
    return ctx.r.report(
      error("E0206", "this cannot be assigned in an optimizer", at, {
        help: "a joint optimizer assigns its adapter's tensors and states, its own states and the wrapped module's tensors (`base.weight`)",
      }),
    );
  const param = member.param;
  if (!topLevel)
    return ctx.r.report(
      error("E0206", `\`${param.path}\` can only be assigned by \`update\`'s own statements`, at, {
        help: "not inside an `if` on a tensor (write `base.weight = where(condition, new, base.weight)`) or a function `update` calls",
      }),
    );
  if (ctx.quantized?.has(param.path))
    return ctx.r.report(
      error("E0206", `\`${param.path}\` is quantized: an optimizer cannot assign it`, at, {
        help: "adapt the module without quantizing it",
      }),
    );
  const value = L.assigned(s, frame);
  if (value.kind !== "tensor" && value.kind !== "number")
    return ctx.r.report(
      error("E0402", `\`${param.path}\` needs a tensor, not ${describeValue(value)}`, at),
    );
  let node = L.asNode(value, frame, s.value);
  node = L.fitTo(node, param.shape, at, param.path);
  baseValues.set(param, node);
  // members read after this (`adapter.merged`) are computed again, from the new value
  L.memberKey = `:update:${call.prefix}:${param.path}:${baseValues.size}:${s.span.start}`;
  return true;
}

/**
 * `lr` times the schedule's factor: the train block's (`lr_scale`, fed by the runtime), or the
 * optimizer's own `schedule:`, which replaces it (computed from `step`; host-scalars.ts
 * evaluates it on the host in float64, like the runtime's factor).
 */
function scaledLr(
  ctx: UpdateContext,
  lowerer: Lowerer,
  lr: number,
  schedule?: Value,
  bindings?: ReadonlyMap<string, Value>,
): Tensor {
  const b = ctx.b;
  if (schedule?.kind !== "schedule") return lowerer.tensor(b.mul(b.constant(lr), ctx.lrScale));
  const steps = bindings?.get("steps");
  const total = steps?.kind === "number" ? steps.value : 1;
  return lowerer.tensor(b.mul(b.constant(lr), scheduleFactor(b, ctx.stepNode, schedule, total)));
}

/** runtime/schedule.ts's `lrFactor` as IR on the step scalar (the same formula, in float64 on the host). */
function scheduleFactor(
  b: Builder,
  step: number,
  schedule: Extract<Value, { kind: "schedule" }>,
  steps: number,
): number {
  const warmup = schedule.args.get("warmup") ?? 0;
  const minRatio = schedule.args.get("min_ratio") ?? 0;
  const c = (v: number) => b.constant(v);
  const progress =
    steps > warmup ? b.minimum(c(1), b.div(b.sub(step, c(warmup)), c(steps - warmup))) : c(1);
  let main: number;
  if (schedule.name === "cosine")
    main = b.add(
      c(minRatio),
      b.mul(c((1 - minRatio) * 0.5), b.add(c(1), b.unary("cos", b.mul(c(Math.PI), progress)))),
    );
  else if (schedule.name === "linear")
    main = b.add(c(minRatio), b.mul(c(1 - minRatio), b.sub(c(1), progress)));
  else main = c(1);
  if (warmup <= 0) return main;
  return b.where(b.le(step, c(warmup)), b.div(step, c(warmup)), main);
}

/**
 * A state's value as the update reads it: its stored input, or its initializer where it is
 * refreshed in this variant. Declares the state (once) and its refresh period.
 */
function lowerState(
  ctx: UpdateContext,
  call: OptimizerCall,
  lowerer: Lowerer,
  opt: ModuleInstance,
  s: A.StateMember,
  frame: Frame,
  locals: ReadonlyMap<string, Value>,
): Tensor {
  const r: Resolver = ctx.r;
  const name = `${call.prefix}:${s.name.name}`;
  const initFrame: Frame = { ...frame, locals: new Map(locals) };
  // a typed state may start from a bare initializer, drawn per state (adapter-states.ts)
  const fill =
    ctx.seed === undefined
      ? undefined
      : stateFill(r, lowerer, s, initFrame, paramSeed(ctx.seed, `state:${name}`));
  const pooled = pooledInit(s.init);
  const initial =
    fill !== undefined ? lowerer.tensor(fill) : lowerer.expr(pooled?.init ?? s.init, initFrame);
  if (initial.kind !== "tensor") {
    r.report(
      error("E0402", `a state must be a tensor, not ${describeValue(initial)}`, {
        file: opt.module.file,
        span: s.init.span,
      }),
    );
  }
  if (s.type?.dims)
    lowerer.bindDims(
      s.type,
      initial,
      initFrame,
      { file: opt.module.file, span: s.type.span },
      `state \`${s.name.name}\``,
    );
  let period: number | undefined;
  if (s.refreshEvery) {
    const v = lowerer.expr(s.refreshEvery, frame);
    if (v.kind !== "number" || !Number.isInteger(v.value) || v.value <= 0) {
      r.report(
        error("E0402", "`refresh every` needs a positive integer known while compiling", {
          file: opt.module.file,
          span: s.refreshEvery.span,
        }),
      );
    }
    period = v.value;
    ctx.periods.add(period);
  }
  const stored = ctx.input(`state:${name}`, "state", initial.shape);
  if (!stateNamed(ctx.states, name)) {
    const condition = pooled && pooledCondition(r, lowerer, pooled, initFrame, s, opt.module.file);
    // A refreshed state is recomputed before its first use, so its stored start is zeros.
    ctx.states.push({
      name,
      shape: initial.shape,
      init: period ? ctx.b.constant(0, initial.shape) : initial.node,
      period,
      ...(condition ? { pooled: condition } : {}),
    });
  }
  return lowerer.tensor(period !== undefined && call.due.has(period) ? initial.node : stored);
}

/**
 * The lowerer for an optimizer's update body: `c.lr` is the scheduled lr and `c.update(x)` runs
 * `innerUpdate` (its states' outputs go to `stateOutputs`) for an optimizer configuration `c`.
 */
function updateLowerer(
  ctx: UpdateContext,
  call: OptimizerCall,
  lowerer: Lowerer,
  innerUpdate: InnerUpdate,
  stateOutputs: Output[],
): Lowerer {
  const body: Lowerer = lowerer.withHooks({
    configMember: (c, member) => {
      const v = c.args.get(member);
      if (member === "lr" && v?.kind === "number")
        return scaledLr(ctx, lowerer, v.value, c.args.get("schedule"), call.bindings);
      if (member === "update" && c.def.sort === "optimizer") {
        return {
          kind: "bound",
          what: `\`${c.def.name.name}.update\``,
          call: (args) => {
            const inner = innerUpdate(c, args[0]!.value as Tensor, { ctx, call, lowerer: body });
            stateOutputs.push(...inner.states);
            return inner.delta;
          },
        };
      }
      return v;
    },
  });
  return body;
}

/**
 * Each states list by name, kept up with it as it grows (states are only ever appended): a deep
 * model's optimizer states, each looked for in the whole list, were quadratic in depth.
 */
const statesByName = new WeakMap<
  readonly StateInfo[],
  { byName: Map<string, StateInfo>; seen: number }
>();

function stateNamed(states: readonly StateInfo[], name: string): StateInfo | undefined {
  let known = statesByName.get(states);
  if (!known) statesByName.set(states, (known = { byName: new Map(), seen: 0 }));
  for (; known.seen < states.length; known.seen++) {
    const state = states[known.seen]!;
    known.byName.set(state.name, state);
  }
  return known.byName.get(name);
}
