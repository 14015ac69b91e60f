// Initial parameter values as an IR graph with two entries: `model` computes every model
// parameter from its initializer; `adapters` computes the adapters' parameters from the model's
// (fed in, so they can come from an `init` checkpoint — DoRA's magnitude reads base.weight).
// Random initializers use the counter-based generator with a seed derived from the train seed and
// the parameter's path, so a parameter's initial value does not depend on what else is in the model.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import { Builder } from "./builder.js";
import { InitGradients } from "./init-gradient.js";
import { bareInitializer } from "./initializers.js";
import type { Graph, InputRole } from "./ir.js";
import { Lowerer, type LowerHooks } from "./lower.js";
import type { Placement } from "./place.js";
import { Reported, type Resolver } from "./resolve.js";
import type { Entry, InitProgram, LoadedTensor, ProgramInput } from "./program.js";
import { loadInputName } from "./load.js";
import { dirname } from "node:path";
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
  const modelParams = new Set(
    placement.params.filter((p) => p.origin === "model").map((p) => p.param),
  );
  /** The model parameters whose initial values are being computed, outermost first. */
  const initializing = new Set<ParamInfo>();
  const failed = new Set<ParamInfo>();
  const inputFor = new Map<ParamInfo, number>();
  let phase: "model" | "buffers" | "adapters" = "model";
  const adapterParams = new Set(
    placement.params.filter((p) => p.origin === "adapter").map((p) => p.param),
  );
  /** The buffer being computed, for a mistake found in its expression. */
  let computing: Computing | undefined;
  /** The model parameters as inputs (read from the store: initialized or loaded). */
  const paramInput = (p: ParamInfo): number => {
    let node = inputFor.get(p);
    if (node === undefined) {
      const role: InputRole = "param";
      node = b.input(role, `param:${p.path}`, p.shape, p.dtype);
      inputs.push({ name: `param:${p.path}`, node, role, shape: p.shape, dtype: p.dtype });
      inputFor.set(p, node);
    }
    return node;
  };
  const gradients = new InitGradients(b, inputs);
  const files: LoadedTensor[] = [];
  const refused = new Set<string>();
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
        // a parameter read by another's initial value is initialized first, whatever the order
        // of the model's members (`param w = l.weight * 2` before or after `l`)
        const v = modelValue.get(p);
        if (v !== undefined) return v;
        if (failed.has(p)) throw new Reported(); // already reported
        if (!modelParams.has(p))
          return r.report(
            error("E0206", `\`${p.path}\` is used before it is initialized`, {
              file: p.owner.module.file,
              span: p.decl.span,
            }),
          );
        if (!initializing.has(p)) {
          const node = initModelParam(p);
          if (node === undefined) throw new Reported();
          return node;
        }
        const chain = [...initializing];
        const cycle = [...chain.slice(chain.indexOf(p)), p].map((q) => `\`${q.path}\``);
        const reader = chain[chain.length - 1]!;
        return r.report(
          error(
            "E0206",
            `the initial values of ${cycle.slice(0, -1).join(", ")} read each other (${cycle.join(" → ")})`,
            { file: reader.owner.module.file, span: (reader.init ?? reader.decl).span },
            { help: "give one of them an initial value that does not read the others" },
          ),
        );
      }
      return paramInput(p);
    },
    load: fileLoads(b, inputs, files, dirname(spec.module.file.path)),
    initGradient: (at) => {
      // A call already refused is refused once: a `param` initializer reading the failed `const`
      // evaluates it again.
      const site = `${at.file.path}:${at.span.start}`;
      if (refused.has(site)) throw new Reported();
      refused.add(site);
      if (phase !== "buffers" || !computing?.adapter)
        return r.report(
          error(
            "E0206",
            "`init_gradient` is computed once, before training starts: it can only be an adapter's `const`",
            at,
            {
              help: "make it an adapter's `const` (a frozen buffer), e.g. `const G = init_gradient(base.weight, batches: 17, batch: 3)`; a `param` initializer may read that const",
            },
          ),
        );
      return (w, request) => {
        const param = [...inputFor].find(([, node]) => node === w)?.[0];
        if (!param || adapterParams.has(param))
          return r.report(
            error(
              "E0206",
              "`init_gradient` takes a parameter of the base model, such as `base.weight`",
              at,
              {
                help: "the gradient is taken with respect to one of the model's own tensors: pass it as it is (`base.weight`), not an expression of it",
              },
            ),
          );
        refused.delete(site);
        // a problem with the data is reported at the user's line: the call or, inside the
        // standard library, the rule that applied the adapter
        const user = r.isStdFile(at.file) ? computing!.rule : at;
        return gradients.accumulator(param, request.batches, request.batch ?? spec.batch, user);
      };
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

  /** A model parameter's initial value, computed once (on first read, or in model order). */
  function initModelParam(p: ParamInfo): number | undefined {
    if (!modelParams.has(p)) return undefined;
    initializing.add(p);
    const node = initValue(p);
    initializing.delete(p);
    if (node !== undefined) modelValue.set(p, node);
    else failed.add(p);
    return node;
  }

  const model: Entry = { name: "model", outputs: [] };
  for (const placed of placement.params) {
    if (placed.origin !== "model") continue;
    const node = modelValue.get(placed.param) ?? initModelParam(placed.param);
    if (node === undefined) continue;
    model.outputs.push({ name: `param:${placed.param.path}`, node });
  }
  phase = "buffers";
  const quantize: Entry = { name: "quantize", outputs: [] };
  const buffers = constBuffers(r, L, placement, quantize, (c) => (computing = c));
  if (spec.loss && mentions(spec.loss, "frozen")) frozenCopies(b, L, placement, quantize);
  phase = "adapters";
  const adapters: Entry = { name: "adapters", outputs: [] };
  for (const placed of placement.params) {
    if (placed.origin !== "adapter") continue;
    const node = initValue(placed.param);
    if (node !== undefined) adapters.outputs.push({ name: `param:${placed.param.path}`, node });
  }
  if (r.diagnostics.some((d) => d.severity === "error")) return undefined;
  // the forward and backward passes `init_gradient` sums: after every request is known
  const passes = gradients.lower(r, spec, paramInput);
  if (!passes || r.diagnostics.some((d) => d.severity === "error")) return undefined;
  return {
    program: {
      graph: b.graph,
      inputs,
      entries: [model, quantize, adapters, ...passes.map((p) => p.entry)],
      model,
      quantize,
      adapters,
      gradients: passes,
      ...(files.length > 0 ? { files } : {}),
    },
    buffers,
  };
}

/** What a buffer's expression is, for a mistake found in it. */
interface Computing {
  name: string;
  at: Location;
  adapter: boolean;
  rule: Location;
}

/**
 * Quantizers', then adapters' tensor `const`s as outputs of the `quantize` entry: each becomes a
 * buffer, computed once from the loaded weights (the step reads the ones it uses; an adapter's
 * params may read them in their initializers, which recompute them in the `adapters` entry).
 */
function constBuffers(
  r: Resolver,
  L: Lowerer,
  placement: Placement,
  quantize: Entry,
  computing: (c: Computing) => void,
): Map<string, Value> {
  const buffers = new Map<string, Value>();
  for (const applied of [...placement.quantizers, ...placement.adapters]) {
    for (const [name, v] of applied.instance.scope) {
      if (v.kind !== "deferred" || !v.constant) continue;
      computing({
        name,
        at: { file: applied.instance.module.file, span: v.expr.span },
        adapter: applied.config.def.sort === "adapter",
        rule: applied.config.at,
      });
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
  return buffers;
}

/**
 * `frozen(model)` in the loss reads copies of the model's parameters as loaded (step.ts says
 * which); a copy is a new tensor, so that updating the parameter leaves it as it was.
 */
function frozenCopies(b: Builder, L: Lowerer, placement: Placement, quantize: Entry): void {
  for (const placed of placement.params) {
    if (placed.origin !== "model") continue;
    const p = placed.param;
    const node = b.mul(L.hooks.param(p), b.constant(1, [], p.dtype));
    quantize.outputs.push({ name: `buffer:frozen:${p.path}`, node });
  }
}

/**
 * The `load` hook: one input per (file, tensor), however many initializers read it, listed in
 * `files` for the host to fill.
 */
function fileLoads(
  b: Builder,
  inputs: ProgramInput[],
  files: LoadedTensor[],
  dir: string,
): NonNullable<LowerHooks["load"]> {
  const fileInput = new Map<string, number>();
  return {
    dir,
    input: (path, tensor, shape, dtype, at) => {
      const name = loadInputName(path, tensor);
      let node = fileInput.get(name);
      if (node === undefined) {
        node = b.input("state", name, shape, dtype);
        inputs.push({ name, node, role: "state", shape, dtype });
        files.push({ name, path, tensor, shape, dtype, at });
        fileInput.set(name, node);
      }
      return node;
    },
  };
}

/** Whether an expression names `name` anywhere (a walk over its syntax tree). */
function mentions(node: unknown, name: string): boolean {
  if (typeof node !== "object" || node === null) return false;
  const n = node as { kind?: unknown; name?: unknown };
  if (n.kind === "NameExpr" && n.name === name) return true;
  return Object.values(node).some((child) => mentions(child, name));
}
