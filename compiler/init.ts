// Initial parameter values as an IR graph with two entries: `model` computes every model
// parameter from its initializer; `adapters` computes the adapters' parameters from the model's
// (fed in, so they can come from an `init` checkpoint — DoRA's magnitude reads base.weight).
// Random initializers use the counter-based generator with a seed derived from the train seed and
// the parameter's path, so a parameter's initial value does not depend on what else is in the model.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import { Builder } from "./builder.js";
import { bareInitializer } from "./initializers.js";
import type { Graph, InputRole } from "./ir.js";
import { Lowerer } from "./lower.js";
import type { Placement } from "./place.js";
import type { Resolver } from "./resolve.js";
import type { Entry, InitProgram, ProgramInput } from "./program.js";
import type { TrainSpec } from "./train.js";
import { describeValue, type ParamInfo, type Value } from "./values.js";

/** The init program, and the quantizers' stored values that the step reads as inputs. */
export interface BuiltInit {
  program: InitProgram;
  /** `<quantizer path>.<const>` → its value in this graph (a tensor, or a quantized struct). */
  buffers: Map<string, Value>;
}

/** FNV-1a over the path, mixed with the seed: a stable per-parameter seed. */
export function paramSeed(seed: number, path: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  for (let i = 0; i < path.length; i++) {
    h ^= path.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export function buildInit(
  r: Resolver,
  spec: TrainSpec,
  placement: Placement,
): BuiltInit | undefined {
  const b = new Builder();
  const inputs: ProgramInput[] = [];
  const modelValue = new Map<ParamInfo, number>();
  const inputFor = new Map<ParamInfo, number>();
  let phase: "model" | "buffers" | "adapters" = "model";
  const adapterParams = new Set(
    placement.params.filter((p) => p.origin === "adapter").map((p) => p.param),
  );
  /** The buffer being computed, for a mistake found in its expression. */
  let computing: { name: string; at: Location } | undefined;
  const L = new Lowerer(r, b, {
    param: (p) => {
      // An adapter's buffers are computed before its params exist (its params may read them).
      if (phase === "buffers" && adapterParams.has(p))
        return r.report(
          error(
            "E0206",
            `a \`const\` of an adapter is computed once, before the adapter's params exist: \`${computing?.name ?? "it"}\` cannot read \`${p.name}\``,
            computing?.at ?? { file: p.owner.module.file, span: p.decl.span },
            {
              help: "make it a `let` (recomputed every step) or a function member, or compute it from `base` and the arguments only",
            },
          ),
        );
      if (phase === "model") {
        const v = modelValue.get(p);
        if (v === undefined) {
          return r.report(
            error("E0206", `\`${p.path}\` is used before it is initialized`, {
              file: p.owner.module.file,
              span: p.decl.span,
            }),
          );
        }
        return v;
      }
      let node = inputFor.get(p);
      if (node === undefined) {
        const role: InputRole = "param";
        node = b.input(role, `param:${p.path}`, p.shape, p.dtype);
        inputs.push({ name: `param:${p.path}`, node, role, shape: p.shape, dtype: p.dtype });
        inputFor.set(p, node);
      }
      return node;
    },
  });
  L.training = false;

  const initValue = (p: ParamInfo): number | undefined =>
    r.attempt(() => {
      const seed = paramSeed(spec.seed, p.path);
      const at = { file: p.owner.module.file, span: (p.init ?? p.decl).span };
      const e = p.init;
      if (!e) return b.constant(0, p.shape);
      const fill = bareInitializer({ L, r, b }, e, L.frameFor(p.owner), p.shape, seed);
      if (fill !== undefined) return fill;
      const frame = L.frameFor(p.owner);
      const v: Value = L.expr(e, frame);
      if (v.kind === "number") return b.constant(v.value, p.shape);
      if (v.kind !== "tensor")
        return r.report(
          error("E0402", `an initializer must give a tensor, not ${describeValue(v)}`, at),
        );
      L.bindDims(
        {
          kind: "Type",
          name: { kind: "Name", name: p.dtype, span: p.decl.type.span },
          dims: p.decl.type.dims,
          span: p.decl.type.span,
        },
        v,
        frame,
        at,
        `the initial value of \`${p.name}\``,
      );
      return v.node;
    });

  const model: Entry = { name: "model", outputs: [] };
  for (const placed of placement.params) {
    if (placed.origin !== "model") continue;
    const node = initValue(placed.param);
    if (node === undefined) continue;
    modelValue.set(placed.param, node);
    model.outputs.push({ name: `param:${placed.param.path}`, node });
  }
  phase = "buffers";
  // Quantizers, then adapters: every tensor `const` of the instance becomes a buffer, computed
  // once from the loaded weights (the step reads the ones it uses; an adapter's params may read
  // them in their initializers, which recompute them in the `adapters` entry).
  const quantize: Entry = { name: "quantize", outputs: [] };
  const buffers = new Map<string, Value>();
  for (const applied of [...placement.quantizers, ...placement.adapters]) {
    for (const [name, v] of applied.instance.scope) {
      if (v.kind !== "deferred" || !v.constant) continue;
      computing = { name, at: { file: applied.instance.module.file, span: v.expr.span } };
      // A mistake found in the definition's code is reported at the train block's rule.
      const value = r.attempt(() =>
        r.fromUserSite(applied.config.at, () =>
          L.expr({ kind: "NameExpr", name, span: v.expr.span }, L.frameFor(applied.instance)),
        ),
      );
      if (!value) continue;
      const key = `${applied.instance.path}.${name}`;
      if (value.kind === "tensor")
        quantize.outputs.push({ name: `buffer:${key}`, node: value.node });
      else if (value.kind === "struct") {
        for (const [field, f] of value.fields)
          if (f.kind === "tensor")
            quantize.outputs.push({ name: `buffer:${key}.${field}`, node: f.node });
      } else continue;
      buffers.set(key, value);
    }
  }
  // `frozen(model)` in the loss reads copies of the model's parameters as loaded (step.ts says
  // which); a copy is a new tensor, so that updating the parameter leaves it as it was.
  if (spec.loss && mentions(spec.loss, "frozen"))
    for (const placed of placement.params) {
      if (placed.origin !== "model") continue;
      const p = placed.param;
      const node = b.mul(L.hooks.param(p), b.constant(1, [], p.dtype));
      quantize.outputs.push({ name: `buffer:frozen:${p.path}`, node });
    }
  phase = "adapters";
  const adapters: Entry = { name: "adapters", outputs: [] };
  for (const placed of placement.params) {
    if (placed.origin !== "adapter") continue;
    const node = initValue(placed.param);
    if (node !== undefined) adapters.outputs.push({ name: `param:${placed.param.path}`, node });
  }
  if (r.diagnostics.some((d) => d.severity === "error")) return undefined;
  return {
    program: {
      graph: b.graph,
      inputs,
      entries: [model, quantize, adapters],
      model,
      quantize,
      adapters,
    },
    buffers,
  };
}

/** Whether an expression names `name` anywhere (a walk over its syntax tree). */
function mentions(node: unknown, name: string): boolean {
  if (typeof node !== "object" || node === null) return false;
  const n = node as { kind?: unknown; name?: unknown };
  if (n.kind === "NameExpr" && n.name === name) return true;
  return Object.values(node).some((child) => mentions(child, name));
}
