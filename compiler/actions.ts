// `at step N { … }` and `at every N { … }` actions, lowered into entries of the step program.
//
// The actions run in a fixed order: the model's (module tree order), the adapters' (placement
// order), the optimizers' (parameter order), the train block's. Consecutive actions with the same
// schedule (`step 500`, `every 100`) share one entry, `action:step500` / `action:every100` (a later
// run of the same schedule is `action:every100.2`). Inside an entry the statements run in
// sequence: a tensor an action assigns is read with its new value by the statements after it, in
// that action and in the later ones. The entry's outputs are the tensors that were assigned,
// `param:<path>` and `state:<name>`; the host runs the due entries in order after the step's
// update (runtime/trainer.ts) and writes the outputs back, so the next entry reads them.
//
// What an action may assign:
// - in a model, the model's parameters (its own and its submodules', `fc.weight`);
// - in an adapter, its parameters (`A`, `B`), its states and the wrapped module's (`base.weight`);
// - in an optimizer, `param` and its states (`m`, `v`);
// - in a train block, the model's parameters through `model` (`model.head.weight`).
// `let` variables work as in a function body. A bare initializer on the right (`zeros`, `ones`,
// `normal(std: …)`, `uniform(lo: …, hi: …)`, `kaiming_uniform(a: …)`) fills the assigned tensor's
// shape, drawn with the train block's seed, the tensor's name and the step: fresh numbers at every
// action, the same on every device.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import type { Builder } from "./builder.js";
import { paramSeed } from "./init.js";
import { bareInitializer } from "./initializers.js";
import { allModules, instantiate } from "./instantiate.js";
import type { Shape } from "./ir.js";
import type { Frame, Lowerer } from "./lower.js";
import type { Placement } from "./place.js";
import type { ActionSchedule, Output, StateInfo } from "./program.js";
import type { Resolver } from "./resolve.js";
import type { TrainSpec } from "./train.js";
import { describeValue, type ModuleInstance, type ParamInfo, type Value } from "./values.js";

export interface ActionContext {
  readonly r: Resolver;
  readonly spec: TrainSpec;
  readonly placement: Placement;
  readonly b: Builder;
  /** The step's lowerer: actions lower through a copy that reads their own assignments. */
  readonly L: Lowerer;
  /** The stored value of a parameter: the graph input `param:<path>`. */
  paramNode(p: ParamInfo): number;
  /** The stored value of a state: the graph input `state:<name>`. */
  stateNode(name: string, shape: Shape): number;
  readonly stepNode: number;
  /** The schedule's factor on every `lr` (the `lr_scale` input). */
  readonly lrScale: number;
  /** Every state of the step program (the optimizers' are declared by the update). */
  readonly states: readonly StateInfo[];
}

/** One `at` item, where it is written and what its statements see. */
interface ActionItem {
  at: A.At;
  instance: ModuleInstance | undefined;
  /** The file it is written in. */
  file: Location["file"];
  /** Where the statements are lowered: the instance's frame or the train block's. */
  frame(L: Lowerer): Frame;
  /** Locals that name stored tensors (`param` and states in an optimizer): local → store name. */
  stored: Map<string, { name: string; seedName: string }>;
  /** Which parameters this item may assign, and how to say so otherwise. */
  writable: string;
}

/** The values an entry has assigned so far: by parameter path and by state name. */
interface Assigned {
  params: Map<string, { param: ParamInfo; node: number }>;
  states: Map<string, number>;
}

/** Lowers every action; undefined after a diagnostic. */
export function lowerActions(ctx: ActionContext): ActionSchedule[] | undefined {
  const items = collectActions(ctx);
  // Consecutive items with the same schedule share an entry; the runs keep the items' order, so
  // actions due at the same step run in that order whatever their schedules.
  const groups: { key: string; trigger: "step" | "every"; count: number; items: ActionItem[] }[] =
    [];
  const seen = new Map<string, number>();
  for (const item of items) {
    const count = ctx.r.attempt(() => scheduleCount(ctx, item));
    if (count === undefined) continue;
    const schedule = `${item.at.trigger}${count}`;
    const last = groups[groups.length - 1];
    if (last && last.trigger === item.at.trigger && last.count === count) {
      last.items.push(item);
      continue;
    }
    const n = (seen.get(schedule) ?? 0) + 1;
    seen.set(schedule, n);
    const key = n === 1 ? schedule : `${schedule}.${n}`;
    groups.push({ key, trigger: item.at.trigger, count, items: [item] });
  }
  const schedules: ActionSchedule[] = [];
  for (const group of groups) {
    const { key } = group;
    const assigned: Assigned = { params: new Map(), states: new Map() };
    group.items.forEach((item, index) =>
      ctx.r.attempt(() => lowerItem(ctx, item, assigned, `${key}.${index}`)),
    );
    const outputs: Output[] = [
      ...[...assigned.params.values()].map((p) => ({
        name: `param:${p.param.path}`,
        node: p.node,
      })),
      ...[...assigned.states].map(([name, node]) => ({ name: `state:${name}`, node })),
    ].map((o) => ({ ...o, node: ctx.b.ownValue(o.name, o.node) }));
    schedules.push({
      entry: { name: `action:${key}`, outputs },
      trigger: group.trigger,
      count: group.count,
    });
  }
  if (ctx.r.diagnostics.some((d) => d.severity === "error")) return undefined;
  return schedules;
}

/** The `at` items of the model, the adapters, the optimizers and the train block, in that order. */
function collectActions(ctx: ActionContext): ActionItem[] {
  const { r, spec, placement } = ctx;
  const items: ActionItem[] = [];
  for (const m of allModules(spec.model))
    for (const at of m.actions)
      items.push({
        at,
        instance: m,
        file: m.module.file,
        frame: (lowerer) => lowerer.frameFor(m),
        stored: new Map(),
        writable: "a model's action assigns the model's parameters",
      });
  for (const q of placement.quantizers)
    for (const at of q.instance.actions)
      r.diagnostics.push(
        error(
          "E0206",
          "a quantizer cannot have `at` actions",
          { file: q.instance.module.file, span: at.span },
          {
            help: "move the action into the model, an adapter or an optimizer",
          },
        ),
      );
  for (const a of placement.adapters)
    for (const at of a.instance.actions)
      items.push({
        at,
        instance: a.instance,
        file: a.instance.module.file,
        frame: (lowerer) =>
          lowerer.frameFor(
            a.instance,
            new Map([["base", { kind: "instance", instance: a.module }]]),
          ),
        stored: new Map(
          a.instance.states.map((st) => {
            const name = `state:${a.instance.path}:${st.name.name}`;
            return [st.name.name, { name, seedName: name }];
          }),
        ),
        writable:
          "an adapter's action assigns its own parameters and states and the wrapped module's (`base.weight`)",
      });
  const innerReported = new Set<A.At>();
  for (const p of placement.params) {
    if (!p.trainable || !p.optimizer) continue;
    const { config, bindings } = p.optimizer;
    // An inner optimizer (`inner = …`) runs only through its outer one's `update`: its actions
    // would never run, so they are refused rather than skipped.
    for (const inner of config.args.values()) {
      if (inner.kind !== "config" || inner.def.sort !== "optimizer") continue;
      for (const at of actionMembers(inner.def.members)) {
        if (innerReported.has(at)) continue;
        innerReported.add(at);
        r.diagnostics.push(
          error(
            "E0206",
            `the \`at\` actions of \`${inner.def.name.name}\` do not run when it is another optimizer's \`${[...config.args].find(([, v]) => v === inner)![0]}\``,
            { file: inner.module.file, span: at.span },
            { help: "write the action in the outer optimizer, or use this one directly" },
          ),
        );
      }
    }
    const prefix = `${p.param.path}:${config.def.name.name}`;
    const opt = r.attempt(() => instantiate(r, config, prefix, bindings));
    if (!opt || opt.actions.length === 0) continue;
    const stored = new Map([["param", { name: `param:${p.param.path}`, seedName: p.param.path }]]);
    for (const s of opt.states) {
      const name = `${p.param.path}:${s.name.name}`;
      stored.set(s.name.name, { name: `state:${name}`, seedName: `state:${name}` });
    }
    for (const at of opt.actions)
      items.push({
        at,
        instance: opt,
        file: opt.module.file,
        frame: (lowerer) => {
          // `lr` as the update reads it: times the schedule's factor at this step
          const lr = config.args.get("lr");
          const locals = new Map<string, Value>();
          if (lr?.kind === "number")
            locals.set("lr", lowerer.tensor(ctx.b.mul(ctx.b.constant(lr.value), ctx.lrScale)));
          return lowerer.frameFor(opt, locals);
        },
        stored,
        writable: "an optimizer's action assigns `param` and the optimizer's states",
      });
  }
  for (const at of spec.actions)
    items.push({
      at,
      instance: undefined,
      file: spec.module.file,
      frame: () => ({
        module: spec.module,
        locals: new Map<string, Value>([["model", { kind: "instance", instance: spec.model }]]),
        scope: r.scopeOf(spec.module),
        dims: new Map(),
      }),
      stored: new Map(),
      writable: "a train block's action assigns the model's parameters, as `model.<path>`",
    });
  return items;
}

/** The `at` members of a definition, on every branch of its member-level `if`s. */
function actionMembers(members: readonly A.Member[]): A.At[] {
  const out: A.At[] = [];
  for (const m of members) {
    if (m.kind === "At") out.push(m);
    if (m.kind === "IfMember") {
      out.push(...actionMembers(m.then));
      if (Array.isArray(m.else)) out.push(...actionMembers(m.else));
      else if (m.else) out.push(...actionMembers([m.else]));
    }
  }
  return out;
}

/**
 * `N` of `at step N` / `at every N`: an integer known while compiling, positive for `every`;
 * `at step 0` runs once when a run starts, after initialization (runtime/trainer.ts).
 */
function scheduleCount(ctx: ActionContext, item: ActionItem): number {
  const frame = item.frame(ctx.L);
  const v = ctx.L.expr(item.at.when, frame);
  const least = item.at.trigger === "step" ? 0 : 1;
  if (v.kind !== "number" || !Number.isInteger(v.value) || v.value < least) {
    return ctx.r.report(
      error(
        "E0402",
        `\`at ${item.at.trigger}\` needs a ${least === 0 ? "non-negative" : "positive"} integer known while compiling, not ${describeValue(v)}${v.kind === "number" ? ` (${v.value})` : ""}`,
        { file: frame.module.file, span: item.at.when.span },
        { help: "write a number, or a definition argument such as `period`" },
      ),
    );
  }
  return v.value;
}

/** One item's statements, reading and extending `assigned`. */
function lowerItem(ctx: ActionContext, item: ActionItem, assigned: Assigned, key: string): void {
  let assignments = 0;
  const current = (p: ParamInfo): number => assigned.params.get(p.path)?.node ?? ctx.paramNode(p);
  const stateValue = (name: string, shape: Shape): number =>
    assigned.states.get(name) ?? ctx.stateNode(name, shape);
  // The action's own frame and the locals it was given (`base`, `step`, `model`): set below.
  const top: Top = { locals: new Map(), given: new Map() };
  const L: Lowerer = ctx.L.withHooks({
    param: current,
    assign: (s, frame) => {
      const done = assign(ctx, L, item, s, frame, assigned, top);
      if (done) L.memberKey = `:${key}.${++assignments}`;
      return done;
    },
  });
  L.training = false; // no dropout in an action
  L.memberKey = `:${key}.0`;
  const frame = item.frame(L);
  // An optimizer's `param` and states are locals, as in its `update`.
  const stateShapes = new Map(ctx.states.map((s) => [`state:${s.name}`, s.shape]));
  for (const [local, { name }] of item.stored) {
    if (name.startsWith("param:")) {
      const p = ctx.placement.params.find((x) => `param:${x.param.path}` === name)!.param;
      frame.locals.set(local, L.tensor(current(p)));
    } else {
      const shape = stateShapes.get(name);
      if (!shape) continue; // an inner optimizer's state, not in this optimizer's frame
      frame.locals.set(local, L.tensor(stateValue(name.slice(6), shape)));
    }
  }
  if (item.instance) frame.locals.set("step", L.tensor(ctx.stepNode));
  top.locals = frame.locals;
  for (const name of ["base", "step", "model", "lr"])
    if (frame.locals.has(name)) top.given.set(name, frame.locals.get(name)!);
  const before = new Map(frame.locals);
  rejectReturn(ctx, item, item.at.body);
  L.block(item.at.body, frame);
  // The stored locals that changed are outputs.
  for (const [local, { name }] of item.stored) {
    const v = frame.locals.get(local);
    if (!v || v === before.get(local)) continue;
    const node = L.asNode(v, frame, item.at);
    if (name.startsWith("param:")) {
      const p = ctx.placement.params.find((x) => `param:${x.param.path}` === name)!.param;
      assigned.params.set(p.path, { param: p, node: fitShape(ctx, node, p.shape, item, local) });
    } else
      assigned.states.set(name.slice(6), fitShape(ctx, node, stateShapes.get(name)!, item, local));
  }
}

/** What an assignment needs to know about the action it is in. */
interface Top {
  /** The action's own locals: a parameter is assigned only by its own statements. */
  locals: Map<string, Value>;
  /** The names the action was given, which are not variables. */
  given: Map<string, Value>;
}

/** `return` has nothing to return to in an action: E0206 at the first one. */
function rejectReturn(ctx: ActionContext, item: ActionItem, stmts: readonly A.Stmt[]): void {
  for (const s of stmts) {
    if (s.kind === "Return")
      ctx.r.report(
        error(
          "E0206",
          "`return` cannot be used in an action",
          { file: item.file, span: s.span },
          {
            help: "an action's statements run to the end; put the rest under an `if`",
          },
        ),
      );
    if (s.kind === "If") {
      let branch: A.If | A.Stmt[] | undefined = s;
      while (branch && !Array.isArray(branch)) {
        rejectReturn(ctx, item, branch.then);
        branch = branch.else;
      }
      if (branch) rejectReturn(ctx, item, branch);
    }
    if (s.kind === "For") rejectReturn(ctx, item, s.body);
  }
}

/** A value broadcast to a stored tensor's shape (a scalar `0` fills it). */
function fitShape(
  ctx: ActionContext,
  node: number,
  shape: Shape,
  item: ActionItem,
  name: string,
): number {
  const have = ctx.b.shape(node);
  if (have.length === shape.length && have.every((d, i) => d === shape[i])) return node;
  try {
    return ctx.b.broadcastTo(node, shape);
  } catch {
    return ctx.r.report(
      error(
        "E0401",
        `\`${name}\` is f32[${shape.join(", ")}] but the action assigns f32[${have.join(", ")}]`,
        { file: item.file, span: item.at.span },
      ),
    );
  }
}

/**
 * An assignment inside an action: to a parameter (`A = …`, `base.weight = …`), or of a bare
 * initializer to a stored local. False leaves it to the ordinary path (`let` variables, and
 * `param` / states assigned an expression).
 */
function assign(
  ctx: ActionContext,
  L: Lowerer,
  item: ActionItem,
  s: A.Assign,
  frame: Frame,
  assigned: Assigned,
  top: Top,
): boolean {
  const at = { file: frame.module.file, span: s.target.span };
  if (s.target.kind === "NameExpr" && frame.locals.has(s.target.name)) {
    const old = frame.locals.get(s.target.name)!;
    if (top.given.get(s.target.name) === old)
      return ctx.r.report(
        error("E0206", `\`${s.target.name}\` cannot be assigned in an action`, at, {
          help: `${item.writable}; a \`let\` variable holds an intermediate value`,
        }),
      );
    const seedName = item.stored.get(s.target.name)?.seedName;
    if (old.kind !== "tensor" || seedName === undefined) return false;
    const fill = reinitialize(ctx, L, s.value, frame, old.shape, seedName);
    if (fill === undefined) return false;
    if (s.op !== "=")
      return ctx.r.report(error("E0206", `use \`=\` to fill with an initializer`, at));
    frame.locals.set(s.target.name, L.tensor(fill));
    return true;
  }
  const param = targetParam(L, s.target, frame);
  if (!param) {
    const text = s.target.kind === "NameExpr" ? `\`${s.target.name}\`` : "this";
    return ctx.r.report(
      error("E0206", `${text} cannot be assigned in an action`, at, {
        help: `${item.writable}; a \`let\` variable holds an intermediate value`,
      }),
    );
  }
  if (frame.locals !== top.locals)
    // Inside an `if` on a tensor the branches' assignments are merged with `where`, name by
    // name; a parameter is not a name of the branch, and would be assigned unconditionally.
    return ctx.r.report(
      error("E0206", `\`${param.path}\` can only be assigned by the action's own statements`, at, {
        help: "not inside an `if` on a tensor (write `A = where(condition, new, A)`) or a function the action calls",
      }),
    );
  const placed = ctx.placement.params.find((p) => p.param === param);
  if (placed?.quantizedBy) {
    return ctx.r.report(
      error("E0206", `\`${param.path}\` is quantized: an action cannot assign it`, at, {
        help: "adapt the module without quantizing it, or assign the adapter's own tensors",
      }),
    );
  }
  let node = reinitialize(ctx, L, s.value, frame, param.shape, param.path);
  if (node !== undefined && s.op !== "=")
    return ctx.r.report(error("E0206", `use \`=\` to fill with an initializer`, at));
  if (node === undefined) {
    const value = L.assigned(s, frame);
    if (value.kind !== "tensor" && value.kind !== "number")
      return ctx.r.report(
        error("E0402", `\`${param.path}\` needs a tensor, not ${describeValue(value)}`, at),
      );
    node = L.asNode(value, frame, s.value);
  }
  node = L.fitTo(node, param.shape, at, param.path);
  assigned.params.set(param.path, { param, node });
  return true;
}

/** The parameter an assignment's target names (`A`, `base.weight`, `model.fc.weight`), if any. */
function targetParam(L: Lowerer, target: A.Expr, frame: Frame): ParamInfo | undefined {
  if (target.kind === "NameExpr") {
    if (frame.locals.has(target.name)) return undefined;
    const v = frame.scope.lookup(target.name);
    return v?.kind === "param" ? v.param : undefined;
  }
  if (target.kind === "Member") {
    const object = L.expr(target.object, frame);
    if (object.kind !== "instance") return undefined;
    const v = object.instance.scope.get(target.name.name);
    return v?.kind === "param" ? v.param : undefined;
  }
  return undefined;
}

/**
 * A bare initializer as an assignment's whole right-hand side: a fill of `shape`, random ones
 * seeded by the train seed and `seedName` (as the initial value) and keyed by the step.
 */
function reinitialize(
  ctx: ActionContext,
  L: Lowerer,
  e: A.Expr,
  frame: Frame,
  shape: Shape,
  seedName: string,
): number | undefined {
  const seed = paramSeed(ctx.spec.seed, seedName);
  return bareInitializer({ L, r: ctx.r, b: ctx.b }, e, frame, shape, seed, ctx.stepNode);
}
