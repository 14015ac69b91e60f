// `lrkc check` on models no train block of the file trains (a library of models has no block at
// all): nothing would lower their forwards, and a shape error in one (a result that is not the
// declared type, a product of mismatched sizes) would go unnoticed until a program trains it. Each
// such model whose parameters all have defaults is instantiated with them and its `forward`
// lowered on inputs of its declared types. Sizes its signature names but nothing binds (the batch
// `B`, the length `T`) take assumed values three times: distinct primes from 7, then all 1 (as a
// context length bounds T), then distinct multiples of 60 (as a reshape into heads or patches
// wants). Only a problem found all three times is reported, with a note naming the first sizes
// assumed: a model that needs T ≤ its context length or N divisible by its patch size is not
// wrong, and a wrong one is wrong at any size.
import type * as A from "../language/ast.js";
import type { Diagnostic } from "../language/diagnostics.js";
import { Builder } from "./builder.js";
import type { DType, Shape } from "./ir.js";
import { instantiate } from "./instantiate.js";
import { Lowerer } from "./lower.js";
import type { Module } from "./modules.js";
import { chain, type Resolver } from "./resolve.js";
import type { Value } from "./values.js";

/** The assumed values of a signature's unbound sizes, in order of their first appearance. */
const ASSUMED: readonly (readonly number[])[] = [
  [7, 11, 13, 17, 19, 23, 29, 31],
  [1],
  [60, 120, 180, 240, 300, 360, 420, 480],
];

/**
 * Lowers the forward of every model of `module` that needs no arguments (see the header), but
 * those in `trained` (a train block's model or one of its submodules: compiling the block checks
 * them at the sizes it trains).
 */
export function checkModels(
  r: Resolver,
  module: Module,
  trained: ReadonlySet<A.Definition> = new Set(),
): void {
  for (const item of module.program.items) {
    if (item.kind !== "Definition" || item.sort !== "model" || trained.has(item)) continue;
    if (item.params.some((p) => !p.default)) continue;
    checkModel(r, item, module);
  }
}

function checkModel(r: Resolver, def: A.Definition, module: Module): void {
  const runs = ASSUMED.map((values) => {
    const mark = r.diagnostics.length;
    const assumed = new Map<string, number>();
    r.attempt(() => lowerForward(r, def, module, values, assumed));
    const found = r.diagnostics.splice(mark);
    return { found, assumed };
  });
  const [first, ...others] = runs as [(typeof runs)[0], ...typeof runs];
  const persistent = (d: Diagnostic) =>
    others.every((run) => run.found.some((e) => e.code === d.code && sameSpan(e, d)));
  const sizes = [...first.assumed].map(([name, value]) => `${name} = ${value}`).join(", ");
  for (const d of first.found.filter(persistent))
    r.diagnostics.push({
      ...d,
      notes: [
        ...d.notes,
        {
          message:
            `found checking \`${def.name.name}\`'s forward with its defaults` +
            (sizes ? ` and ${sizes} (no train block gives these sizes)` : ""),
          at: r.at(module, def.name),
        },
      ],
    });
}

const sameSpan = (a: Diagnostic, b: Diagnostic) =>
  a.at?.file === b.at?.file &&
  a.at?.span.start === b.at?.span.start &&
  a.at?.span.end === b.at?.span.end;

/**
 * Instantiates `def` with its defaults and lowers its forward on inputs of the declared types,
 * unbound sizes taking `values` in turn (recorded in `assumed`). A forward whose inputs are not all
 * typed tensors is not lowered: there is nothing to lower it on.
 */
function lowerForward(
  r: Resolver,
  def: A.Definition,
  module: Module,
  values: readonly number[],
  assumed: Map<string, number>,
): void {
  // `Net()`, evaluated as any call of a model: every parameter takes its default
  const callee: A.NameExpr = { kind: "NameExpr", name: def.name.name, span: def.name.span };
  const call: A.Call = { kind: "Call", callee, args: [], span: def.name.span };
  const config = r.evaluate(call, r.scopeOf(module), module);
  if (config.kind !== "config" || config.def !== def) return;
  const mark = r.diagnostics.length;
  const instance = instantiate(r, config, "");
  // a model that could not be made whole: its members' errors say it, lowering would repeat them
  if (r.diagnostics.length > mark) return;
  const forward = instance.scope.get("forward");
  if (forward?.kind !== "function") return;
  const b = new Builder();
  const L = new Lowerer(r, b, { param: (p) => b.input("param", p.path, p.shape, p.dtype) });
  // what the forward's signature sees: the instance's members (its arguments), then beyond
  const seen = chain(instance.scope, instance.lookup);
  const known = (name: string) => seen.lookup(name) !== undefined;
  const size = (d: A.Expr): number => {
    if (d.kind === "NameExpr" && !known(d.name)) {
      if (!assumed.has(d.name)) assumed.set(d.name, values[assumed.size % values.length]!);
      return assumed.get(d.name)!;
    }
    return r.integer(d, seen, instance.module, "a size");
  };
  const args: { name?: string; value: Value; at: ReturnType<Resolver["at"]> }[] = [];
  for (const p of forward.fn.params) {
    if (p.default) continue;
    const type = p.type;
    const dtype = type?.name.name;
    if (!type?.dims || (dtype !== "f32" && dtype !== "i32")) return;
    const shape: Shape = type.dims.flatMap((d) =>
      d.kind === "Ellipsis" ? [values[0]!] : [size(d)],
    );
    const node = b.input("data", p.name.name, shape, dtype as DType);
    args.push({
      value: { kind: "tensor", node, shape, dtype: dtype as DType },
      at: r.at(module, p),
    });
  }
  L.callFunction(forward.fn, instance, args, r.at(module, forward.fn.name));
}
