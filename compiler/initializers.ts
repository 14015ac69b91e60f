// The bare initializers — `zeros`, `ones`, `normal(std, mean)`, `uniform(lo, hi)`,
// `kaiming_uniform(a)` — as the whole value of a parameter (its initial value, compiler/init.ts)
// or of an action's assignment (a re-initialization, compiler/actions.ts): a fill of the target's
// shape. Random fills are counter-based (the IR's `random`), seeded by the caller; an action's
// are keyed by the step as well, so each re-initialization draws fresh numbers.
import type * as A from "../language/ast.js";
import { error } from "../language/diagnostics.js";
import type { Builder } from "./builder.js";
import type { Shape } from "./ir.js";
import type { Frame, Lowerer } from "./lower.js";
import type { Resolver } from "./resolve.js";

/** Each initializer's parameters, in positional order, with their defaults. */
const PARAMETERS: Record<string, [string, number][]> = {
  normal: [
    ["std", 1],
    ["mean", 0],
  ],
  uniform: [
    ["lo", 0],
    ["hi", 1],
  ],
  kaiming_uniform: [["a", 0]],
};

/**
 * The fill `e` asks for, or undefined when `e` is not a bare initializer (`normal([r, n], seed:
 * 7)`, a seeded value with a shape, is not one). Unknown or extra arguments are E0205.
 */
export function bareInitializer(
  use: { L: Lowerer; r: Resolver; b: Builder },
  e: A.Expr,
  frame: Frame,
  shape: Shape,
  seed: number,
  key?: number,
): number | undefined {
  const { L, r, b } = use;
  if (e.kind === "NameExpr" && (e.name === "zeros" || e.name === "ones"))
    return b.constant(e.name === "ones" ? 1 : 0, shape);
  if (e.kind !== "Call" || e.callee.kind !== "NameExpr") return undefined;
  const name = e.callee.name;
  const parameters = PARAMETERS[name];
  if (!parameters) return undefined;
  if (e.args[0] && !e.args[0].name && e.args[0].value.kind === "List") return undefined;
  const names = parameters.map(([n]) => n);
  const positional = e.args.filter((x) => !x.name);
  for (const a of e.args) {
    const unknown = a.name && !names.includes(a.name.name);
    if (unknown || (!a.name && positional.indexOf(a) >= names.length))
      r.report(
        error(
          "E0205",
          unknown
            ? `\`${name}\` has no parameter \`${a.name!.name}\``
            : `\`${name}\` takes ${names.length} argument${names.length === 1 ? "" : "s"}`,
          { file: frame.module.file, span: (a.name ?? a.value).span },
          { help: `its parameters are ${names.map((n) => `\`${n}\``).join(", ")}` },
        ),
      );
  }
  const arg = (i: number): number => {
    const [key, fallback] = parameters[i]!;
    const a = e.args.find((x) => x.name?.name === key) ?? positional[i];
    if (!a) return fallback;
    return r.number(L.expr(a.value, frame), a.value, frame.module).value;
  };
  const random = (dist: "normal" | "uniform") =>
    key === undefined ? b.random(dist, shape, seed) : b.random(dist, shape, seed, key);
  if (name === "normal")
    return b.add(b.mul(random("normal"), b.constant(arg(0))), b.constant(arg(1)));
  let lo: number;
  let hi: number;
  if (name === "uniform") [lo, hi] = [arg(0), arg(1)];
  else {
    // torch.nn.init.kaiming_uniform_ with leaky_relu gain: bound = sqrt(6 / ((1 + a²) fan_in)),
    // fan_in = the product of the dims after the first.
    const a = arg(0);
    const fanIn = shape.length > 1 ? shape.slice(1).reduce((x, y) => x * y, 1) : (shape[0] ?? 1);
    hi = Math.sqrt(6 / ((1 + a * a) * fanIn));
    lo = -hi;
  }
  return b.add(b.mul(random("uniform"), b.constant(hi - lo)), b.constant(lo));
}
