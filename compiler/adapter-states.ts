// An adapter's `state` members: tensors it keeps from step to step without training them (a pool
// of candidate vectors, counters, masks), readable in its `forward` and its other members, and
// changed only by its `at` actions (compiler/actions.ts). Each is a state of the step program,
// `state:<adapter path>:<name>` (saved in checkpoints like an optimizer's), whose initial value the
// `state_init` entry computes from the initial parameters, as an optimizer state's is.
//
//   input:  the adapters placed on the model, the step's lowerer and graph inputs
//   output: their states (StateInfo, in placement and declaration order); each name in the
//           adapter's scope is bound to its stored value
import { error } from "../language/diagnostics.js";
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
      const initial = r.attempt(() => L.expr(s.init, frame));
      if (!initial) continue;
      if (initial.kind !== "tensor") {
        r.diagnostics.push(
          error("E0402", `a state must be a tensor, not ${describeValue(initial)}`, at),
        );
        continue;
      }
      const name = `${a.instance.path}:${s.name.name}`;
      states.push({ name, shape: initial.shape, init: initial.node });
      a.instance.scope.set(s.name.name, L.tensor(stored(name, initial.shape)));
    }
  }
  return states;
}
