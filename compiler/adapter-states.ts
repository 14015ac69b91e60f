// An adapter's `state` members: tensors it keeps from step to step without training them (a pool
// of candidate vectors, counters, masks), readable in its `forward` and its other members, and
// changed only by its `at` actions (compiler/actions.ts) and by the update of a joint optimizer
// on the adapter (compiler/update.ts). Each is a state of the step program,
// `state:<adapter path>:<name>` (saved in checkpoints like an optimizer's), whose initial value the
// `state_init` entry computes from the initial parameters, as an optimizer state's is. A state
// with a declared type may start from a bare initializer, as a `param` does
// (`state pool: f32[n, in] = uniform(lo: -1, hi: 1)`), seeded by the train block's seed and the
// state's name, so that every adapted module draws its own numbers.
//
//   input:  the adapters placed on the model, the step's lowerer and graph inputs
//   output: their states (StateInfo, in placement and declaration order); each name in the
//           adapter's scope is bound to its stored value
import type * as A from "../language/ast.js";
import { error } from "../language/diagnostics.js";
import { paramSeed } from "./init.js";
import { bareInitializer } from "./initializers.js";
import type { Shape } from "./ir.js";
import type { Lowerer } from "./lower.js";
import type { Applied } from "./place.js";
import type { StateInfo } from "./program.js";
import type { Resolver } from "./resolve.js";
import { describeValue } from "./values.js";

export function adapterStates(
  r: Resolver,
  L: Lowerer,
  adapters: readonly Applied[],
  stored: (name: string, shape: Shape) => number,
  seed: number,
): StateInfo[] {
  const states: StateInfo[] = [];
  for (const a of adapters) {
    for (const s of a.instance.states) {
      const at = { file: a.instance.module.file, span: s.span };
      if (s.refreshEvery) {
        r.diagnostics.push(
          error("E0206", "an adapter's `state` is not refreshed by `refresh every`", at, {
            help: "assign it in an `at every N { … }` action of the adapter",
          }),
        );
        continue;
      }
      const frame = L.frameFor(
        a.instance,
        new Map([["base", { kind: "instance", instance: a.module }]]),
      );
      const name = `${a.instance.path}:${s.name.name}`;
      const fill = r.attempt(() => stateFill(r, L, s, frame, paramSeed(seed, `state:${name}`)));
      const initial = fill ? L.tensor(fill) : r.attempt(() => L.expr(s.init, frame));
      if (!initial) continue;
      if (initial.kind !== "tensor") {
        r.diagnostics.push(
          error("E0402", `a state must be a tensor, not ${describeValue(initial)}`, at),
        );
        continue;
      }
      states.push({ name, shape: initial.shape, init: initial.node });
      a.instance.scope.set(s.name.name, L.tensor(stored(name, initial.shape)));
    }
  }
  return states;
}

/**
 * A typed state's bare initializer (`uniform(lo: …, hi: …)`) as a fill of its declared shape, for
 * an adapter's states and an optimizer's; undefined when it is not one.
 */
export function stateFill(
  r: Resolver,
  L: Lowerer,
  s: A.StateMember,
  frame: ReturnType<Lowerer["frameFor"]>,
  seed: number,
): number | undefined {
  const dims = s.type?.dims;
  if (!dims || dims.some((d) => d.kind === "Ellipsis")) return undefined;
  const e = s.init;
  const bare =
    (e.kind === "NameExpr" && (e.name === "zeros" || e.name === "ones")) ||
    (e.kind === "Call" &&
      e.callee.kind === "NameExpr" &&
      ["normal", "uniform", "kaiming_uniform"].includes(e.callee.name) &&
      !(e.args[0] && !e.args[0].name && e.args[0].value.kind === "List"));
  if (!bare) return undefined;
  const shape = dims.map((d) =>
    d.kind === "Ellipsis" ? 0 : r.integer(d, frame.scope, frame.module, "a dimension"),
  );
  return bareInitializer({ L, r, b: L.b }, s.init, frame, shape, seed);
}
