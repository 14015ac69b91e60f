// The merge program (`lrkc export --merged`): one graph entry whose outputs are, for every
// adapted module, its adapter's `merged` member, the weight a plain module needs to compute what
// the adapted one computes (in the module's own layout: GPT-2's Conv1D stores [in, out]). Inputs
// are the parameters (`param:<path>`) and the adapters' stored consts (`buffer:<name>`, the init
// program's `quantize` entry computes them from the loaded weights), as the step reads them.
import { error, Log, type Diagnostic } from "../language/diagnostics.js";
import type { SourceFile } from "../language/source.js";
import { Builder } from "./builder.js";
import { analyze, type CompileOptions } from "./compile.js";
import { buildInit } from "./init.js";
import type { InputRole } from "./ir.js";
import { Lowerer } from "./lower.js";
import type { Applied, Placement } from "./place.js";
import type { Entry, GraphProgram, ProgramInput } from "./program.js";
import type { Resolver } from "./resolve.js";
import { runSettings } from "./train-program.js";
import type { ParamInfo, Value } from "./values.js";

/** One adapted module's merged weight. */
export interface MergedWeight {
  /** The module's path (`transformer.h.0.attn.c_attn`). */
  module: string;
  /** The parameter it replaces (`transformer.h.0.attn.c_attn.weight`). */
  weight: string;
  /** The adapter's name (`lora`). */
  adapter: string;
  /** The entry's output holding it (`merged:<weight>`). */
  output: string;
}

export interface MergeProgram extends GraphProgram {
  entry: Entry;
  weights: MergedWeight[];
}

/** Compiles `file`'s train block (as `compile` does, up to the init program) and its merge. */
export function compileMerge(
  file: SourceFile,
  options: CompileOptions = {},
): { merge?: MergeProgram; diagnostics: Diagnostic[] } {
  const front = analyze(file, { ...options, requireTrain: true });
  const { resolver } = front;
  const placed = front.trains[0];
  const log = front.log;
  const done = (merge?: MergeProgram) => ({
    merge: merge && !log.hasErrors() ? merge : undefined,
    diagnostics: log.done(),
  });
  if (!placed || !resolver || log.hasErrors()) return done();
  const { spec, placement } = placed;
  if (!runSettings(resolver, spec, options.evalData) || log.hasErrors()) return done();
  const init = buildInit(resolver, spec, placement);
  if (!init) return done();
  return done(buildMerge(resolver, placement, init.buffers, log));
}

export function buildMerge(
  r: Resolver,
  placement: Placement,
  buffers: ReadonlyMap<string, Value>,
  log: Log,
): MergeProgram | undefined {
  const b = new Builder();
  const inputs = new Map<string, ProgramInput>();
  const input = (
    name: string,
    role: InputRole,
    shape: readonly number[],
    dtype: ParamInfo["dtype"],
  ) => {
    const existing = inputs.get(name);
    if (existing) return existing.node;
    const node = b.input(role, name, shape, dtype);
    inputs.set(name, { name, node, role, shape: [...shape], dtype });
    return node;
  };
  const L: Lowerer = new Lowerer(r, b, {
    param: (p) => input(`param:${p.path}`, "param", p.shape, p.dtype),
    // An adapter's consts (PiSSA's residual) are the stored buffers, not a recomputation
    buffer: (v) => {
      const value = buffers.get(`${v.self.path}.${v.name}`);
      if (value?.kind !== "tensor") return undefined;
      return L.tensor(input(`buffer:${v.self.path}.${v.name}`, "param", value.shape, value.dtype));
    },
  });
  L.training = false;

  const byModule = new Map<string, Applied[]>();
  for (const a of placement.adapters)
    byModule.set(a.module.path, [...(byModule.get(a.module.path) ?? []), a]);
  const entry: Entry = { name: "merged", outputs: [] };
  const weights: MergedWeight[] = [];
  for (const [path, applied] of byModule) {
    const adapter = applied[0]!;
    const name = adapter.config.def.name.name;
    if (applied.length > 1) {
      log.add(
        error(
          "E0506",
          `\`${path}\` is wrapped by ${applied.length} adapters (${applied.map((a) => `\`${a.config.def.name.name}\``).join(", ")}): a merged export takes one per module`,
          adapter.config.at,
          { help: "adapt each module with one adapter to export it merged" },
        ),
      );
      continue;
    }
    if (!adapter.instance.scope.get("merged")) {
      log.add(
        error(
          "E0506",
          `adapter \`${name}\` defines no \`merged\` weight, so \`${path}\` cannot be exported merged`,
          adapter.config.at,
          { help: "add `merged = EXPR` to the adapter: the weight a plain module needs" },
        ),
      );
      continue;
    }
    const at = adapter.config.at;
    const value = r.attempt(() =>
      r.fromUserSite(at, () =>
        L.expr({ kind: "NameExpr", name: "merged", span: at.span }, L.frameFor(adapter.instance)),
      ),
    );
    if (value?.kind !== "tensor") continue;
    const weight = `${path}.weight`;
    const base = placement.params.find((p) => p.param.path === weight);
    const shape = b.shape(value.node);
    if (!base || base.param.shape.join() !== shape.join()) {
      log.add(
        error(
          "E0506",
          `adapter \`${name}\`'s \`merged\` is f32[${shape.join(", ")}], but \`${weight}\` is ${base ? `f32[${base.param.shape.join(", ")}]` : "not a parameter"}`,
          at,
          { help: "`merged` must have the wrapped module's weight's shape and layout" },
        ),
      );
      continue;
    }
    const output = `merged:${weight}`;
    entry.outputs.push({ name: output, node: value.node });
    weights.push({ module: path, weight, adapter: name, output });
  }
  if (log.hasErrors()) return undefined;
  return { graph: b.graph, inputs: [...inputs.values()], entries: [entry], entry, weights };
}
