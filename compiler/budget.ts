// Rank-budget controllers (`budget NAME(…) on ADAPTER { … }`), lowered generically:
//   - `observe()` runs for every adapted module after the optimizer, inside every step variant;
//     it may update the controller's states and assign the adapter's tensors;
//   - `score` (one entry per rank unit of a module) and `prune(kept)` become their own entries,
//     which the host runs at the steps where `prune_at(step)` holds: it reads every module's
//     scores, keeps the `keep(step)` best units over all modules (the threshold is the
//     (units − k)-th smallest score; units scoring at or below it are pruned), and runs `prune`;
//   - `keep(step)` and `prune_at(step)` are evaluated on the host, with numbers.
// Nothing here knows a method by name.
import { error } from "../language/diagnostics.js";
import type { Builder } from "./builder.js";
import { instantiate } from "./instantiate.js";
import type { Lowerer, Tensor } from "./lower.js";
import type { Applied, BudgetPlacement } from "./place.js";
import type { Resolver } from "./resolve.js";
import type { BudgetSchedule, Output } from "./program.js";
import type { TrainSpec } from "./train.js";
import { num, type ModuleInstance, type Value } from "./values.js";

export interface BudgetContext {
  r: Resolver;
  b: Builder;
  L: Lowerer;
  spec: TrainSpec;
  input(
    name: string,
    role: "param" | "state" | "data" | "scalar",
    shape: readonly number[],
  ): number;
  paramNode(path: string): number;
  stepNode: number;
  /**
   * In `observe`: the branch to lower alone for an `if` whose condition depends only on the step
   * (decided on the host, one step variant per outcome, as in optimizers: step-conditions.ts).
   */
  decide?(node: number): boolean | undefined;
}

interface Controller {
  placement: BudgetPlacement;
  perModule: { applied: Applied; instance: ModuleInstance; stateNames: string[] }[];
  units: number;
}

/** Names of the adapter's tensors in the controller's frame: P, E, Q → their current values. */
function adapterTensors(applied: Applied, value: (path: string) => Value): Map<string, Value> {
  return new Map(applied.instance.params.map((p) => [p.name, value(p.path)]));
}

export function prepareBudgets(ctx: BudgetContext, budgets: BudgetPlacement[]): Controller[] {
  const { r, spec } = ctx;
  return budgets.map((placement) => {
    const perModule = placement.adapted.map((applied) => {
      const extra = new Map<string, Value>([
        ["steps", num(spec.steps, true)],
        ["total", num(placement.total, true)],
      ]);
      for (const p of applied.instance.params) extra.set(p.name, { kind: "param", param: p });
      const instance = instantiate(
        r,
        placement.config,
        `${applied.module.path}:${placement.config.def.name.name}`,
        extra,
      );
      return { applied, instance, stateNames: instance.states.map((s) => s.name.name) };
    });
    return { placement, perModule, units: 0 };
  });
}

/** States of every controller, as (name, shape, initial value node). */
export function budgetStates(
  ctx: BudgetContext,
  controllers: Controller[],
): { name: string; shape: readonly number[]; init: number }[] {
  const { L } = ctx;
  const out: { name: string; shape: readonly number[]; init: number }[] = [];
  for (const c of controllers) {
    for (const m of c.perModule) {
      for (const s of m.instance.states) {
        const frame = L.frameFor(m.instance);
        const v = L.expr(s.init, frame);
        if (v.kind !== "tensor")
          ctx.r.report(
            error("E0402", "a budget state must be a tensor", {
              file: m.instance.module.file,
              span: s.init.span,
            }),
          );
        out.push({ name: `${m.instance.path}:${s.name.name}`, shape: v.shape, init: v.node });
      }
    }
  }
  return out;
}

/**
 * `observe()` for every module: reads the post-optimizer values `updated` (path → node) and the
 * gradients `grads` (path → node); returns outputs for states and for reassigned tensors.
 */
export function lowerObserve(
  ctx: BudgetContext,
  controllers: Controller[],
  updated: Map<string, number>,
  grads: Map<string, number>,
): Output[] {
  const L = ctx.decide ? ctx.L.withHooks({ stepCondition: ctx.decide }) : ctx.L;
  const r: Resolver = ctx.r;
  const outputs: Output[] = [];
  for (const c of controllers) {
    for (const m of c.perModule) {
      const observe = m.instance.scope.get("observe");
      if (observe?.kind !== "function") continue;
      const gradOf = new Map<number, number>();
      for (const p of m.applied.instance.params) {
        const g = grads.get(p.path);
        if (g === undefined) continue;
        gradOf.set(updated.get(p.path) ?? ctx.paramNode(p.path), g);
        gradOf.set(ctx.paramNode(p.path), g);
      }
      const locals = adapterTensors(m.applied, (path) =>
        L.tensor(updated.get(path) ?? ctx.paramNode(path)),
      );
      for (const s of m.stateNames)
        locals.set(
          s,
          L.tensor(ctx.input(`state:${m.instance.path}:${s}`, "state", stateShape(ctx, m, s))),
        );
      locals.set("step", L.tensor(ctx.stepNode));
      locals.set("grad", {
        kind: "bound",
        what: "`grad`",
        call: (args, at) => {
          const t = args[0]?.value;
          const g = t?.kind === "tensor" ? gradOf.get(t.node) : undefined;
          if (g === undefined)
            return r.report(
              error("E0206", "`grad(…)` takes one of the adapter's trainable tensors", at),
            );
          return L.tensor(g);
        },
      });
      L.callFunction(observe.fn, m.instance, [], m.instance.at, locals);
      for (const s of m.stateNames)
        outputs.push({
          name: `state:${m.instance.path}:${s}`,
          node: (locals.get(s) as Tensor).node,
        });
      for (const p of m.applied.instance.params) {
        const v = locals.get(p.name) as Tensor;
        if (v.node !== (updated.get(p.path) ?? ctx.paramNode(p.path)))
          outputs.push({ name: `param:${p.path}`, node: v.node });
      }
    }
  }
  return outputs;
}

function stateShape(
  ctx: BudgetContext,
  m: Controller["perModule"][number],
  name: string,
): readonly number[] {
  const s = m.instance.states.find((x) => x.name.name === name)!;
  const v = ctx.L.expr(s.init, ctx.L.frameFor(m.instance));
  return (v as Tensor).shape;
}

/** The score and prune entries and the host-side schedule of each controller. */
export function lowerControllers(ctx: BudgetContext, controllers: Controller[]): BudgetSchedule[] {
  const { L, b } = ctx;
  const r: Resolver = ctx.r;
  return controllers.map((c, index) => {
    const scores: Output[] = [];
    const prunes: Output[] = [];
    const sizes: number[] = [];
    const current = (m: Controller["perModule"][number]) => {
      const locals = adapterTensors(m.applied, (path) => L.tensor(ctx.paramNode(path)));
      for (const s of m.stateNames)
        locals.set(
          s,
          L.tensor(ctx.input(`state:${m.instance.path}:${s}`, "state", stateShape(ctx, m, s))),
        );
      locals.set("step", L.tensor(ctx.stepNode));
      return locals;
    };
    for (const m of c.perModule) {
      const scoreValue = m.instance.scope.get("score");
      if (!scoreValue) {
        r.report(
          error(
            "E0207",
            `budget \`${c.placement.config.def.name.name}\` has no \`score\``,
            c.placement.config.at,
          ),
        );
      }
      const locals = current(m);
      const frame = { ...L.frameFor(m.instance), locals };
      // `score = E` names a parameter: it was resolved when the budget was built, and is read here
      // as this graph's tensor, like `score = E * 1`.
      const score =
        scoreValue.kind === "deferred"
          ? L.expr(scoreValue.expr, frame)
          : scoreValue.kind === "param"
            ? L.tensor(L.hooks.param(scoreValue.param))
            : scoreValue;
      if (score.kind !== "tensor" || score.shape.length !== 1) {
        r.report(
          error(
            "E0402",
            "a budget's `score` must be a vector: one entry per rank unit",
            c.placement.config.at,
          ),
        );
      }
      sizes.push(score.shape[0]!);
      scores.push({ name: `score:${m.applied.module.path}`, node: score.node });

      const prune = m.instance.scope.get("prune");
      if (prune?.kind !== "function") {
        r.report(
          error(
            "E0207",
            `budget \`${c.placement.config.def.name.name}\` has no \`prune(kept)\``,
            c.placement.config.at,
          ),
        );
      }
      const pruneLocals = current(m);
      const kept = L.tensor(ctx.input(`kept:${m.applied.module.path}`, "data", score.shape));
      L.callFunction(
        prune.fn,
        m.instance,
        [{ value: kept, at: m.instance.at }],
        m.instance.at,
        pruneLocals,
      );
      for (const s of m.stateNames)
        prunes.push({
          name: `state:${m.instance.path}:${s}`,
          node: (pruneLocals.get(s) as Tensor).node,
        });
      for (const p of m.applied.instance.params) {
        const v = pruneLocals.get(p.name) as Tensor;
        if (v.node !== ctx.paramNode(p.path))
          prunes.push({ name: `param:${p.path}`, node: v.node });
      }
    }
    c.units = sizes.reduce((a, n) => a + n, 0);
    const first = c.perModule[0]!.instance;
    first.scope.set("units", num(c.units, true));
    for (const m of c.perModule) m.instance.scope.set("units", num(c.units, true));
    // Host-side functions of the step number: evaluated with numbers, no graph needed.
    const hostCall = (name: string, step: number): Value => {
      const fn = first.scope.get(name);
      if (fn?.kind !== "function") {
        return r.report(
          error(
            "E0207",
            `budget \`${c.placement.config.def.name.name}\` has no \`${name}(step)\``,
            c.placement.config.at,
          ),
        );
      }
      return L.callFunction(fn.fn, first, [{ value: num(step, true), at: first.at }], first.at);
    };
    // Check both now, on step 1, so that a mistake in them is a compile-time diagnostic.
    const probe = (name: string, kind: "bool" | "number") => {
      const v = hostCall(name, 1);
      if (v.kind !== kind) {
        r.report(
          error(
            "E0402",
            `\`${name}(step)\` must return ${kind === "bool" ? "true or false" : "a number"} computed from the step, not a tensor`,
            c.placement.config.at,
          ),
        );
      }
    };
    probe("prune_at", "bool");
    probe("keep", "number");
    void b;
    return {
      name: c.placement.config.def.name.name,
      modules: c.perModule.map((m) => m.applied.module.path),
      sizes,
      score: { name: `budget${index}.score`, outputs: scores },
      prune: { name: `budget${index}.prune`, outputs: prunes },
      pruneAt: (step) => (hostCall("prune_at", step) as { value: boolean }).value,
      keep: (step) => (hostCall("keep", step) as { value: number }).value,
    };
  });
}
