// From the train block to the runtime's contract: the data declarations with their batch fields
// (from the data-source registry: nothing is read here), what evaluation measures, the schedule,
// and finally the TrainProgram that `lrkc train` runs.
import { dirname, resolve as resolvePath } from "node:path";
import { error } from "../language/diagnostics.js";
import { dataSpec } from "./data.js";
import type { BuiltInit } from "./init.js";
import type { Placement } from "./place.js";
import type { DataSpec, Schedule, StepProgram, TrainProgram } from "./program.js";
import type { Resolver } from "./resolve.js";
import type { TrainSpec } from "./train.js";
import type { DataSet } from "./values.js";

export interface RunSettings {
  data: DataSpec;
  eval: TrainProgram["eval"];
  schedule: Schedule;
}

/** The data, eval and schedule settings of a train block, or undefined after reporting why not. */
export function runSettings(
  r: Resolver,
  spec: TrainSpec,
  evalData?: string,
): RunSettings | undefined {
  if (!spec.data) {
    r.diagnostics.push(
      error(
        "E0208",
        `train block \`${spec.decl.name.name}\` has no \`data\``,
        { file: spec.module.file, span: spec.decl.name.span },
        {
          help: "add e.g. `data arith` after a `data arith = std.data.arithmetic(digits: 3)` declaration",
        },
      ),
    );
    return undefined;
  }
  const resolved = (dataset: DataSet): DataSpec | undefined => {
    const d = dataSpec(dataset, spec.batch);
    if ("problem" in d) {
      r.diagnostics.push(error("E0501", d.problem, dataset.at, { help: d.help }));
      return undefined;
    }
    return d;
  };
  const data = resolved(spec.data);
  const on = evalData !== undefined ? evalDeclaration(r, spec, evalData) : spec.eval?.on;
  if (!data || on === null) return undefined;
  // `eval … on DATA`: its held-out split unless it says `.train`; by default the block's own data.
  const evalSpec = on ? resolved({ split: "valid", ...on }) : { ...data, split: "valid" as const };
  if (!evalSpec) return undefined;
  const show = (d: DataSpec) =>
    Object.entries(d.fields)
      .map(([name, f]) => `${name}: ${f.dtype}[${f.shape.join(", ")}]`)
      .join(", ");
  if (show(evalSpec) !== show(data)) {
    r.diagnostics.push(
      error(
        "E0206",
        `\`eval … on\` data whose batches differ from the training data's: ${show(evalSpec)} against ${show(data)}`,
        spec.eval?.onAt ?? evalSpec.at,
        {
          help: "the step is compiled for one batch shape: evaluate on data of the same shape (for arithmetic, the same `digits`)",
        },
      ),
    );
    return undefined;
  }
  return {
    data,
    eval: { ...(spec.eval ? { every: spec.eval.every } : {}), data: evalSpec },
    schedule: schedule(spec),
  };
}

/** `lrkc eval --data NAME`: a data declaration of the program's file (null: reported). */
function evalDeclaration(r: Resolver, spec: TrainSpec, name: string): DataSet | null {
  const scope = r.scopeOf(spec.module);
  const v = scope.lookup(name);
  if (v?.kind === "dataset") return { ...v.dataset, split: "valid" };
  const names = [...scope.names()].filter((n) => scope.lookup(n)?.kind === "dataset");
  r.diagnostics.push(
    error("E0204", `\`${name}\` is not a data declaration of ${spec.module.file.path}`, undefined, {
      help: `its data declarations: ${names.map((n) => `\`${n}\``).join(", ") || "none"}`,
    }),
  );
  return null;
}

function schedule(spec: TrainSpec): Schedule {
  const s = spec.schedule;
  if (s?.kind !== "schedule") return { kind: "constant", warmup: 0, minRatio: 0 };
  return {
    kind: s.name === "cosine" || s.name === "linear" ? s.name : "constant",
    warmup: s.args.get("warmup") ?? 0,
    minRatio: s.args.get("min_ratio") ?? 0,
  };
}

/** The runtime's view of a compiled train block. */
export function trainProgram(
  spec: TrainSpec,
  placement: Placement,
  settings: RunSettings,
  init: BuiltInit,
  step: StepProgram,
): TrainProgram {
  const file = spec.module.file;
  // Quantizers' buffers are computed once at the start; only those the step reads are kept.
  const used = new Set(step.inputs.map((i) => i.name));
  const initProgram = init.program;
  const quantize = {
    name: initProgram.quantize.name,
    outputs: initProgram.quantize.outputs.filter((o) => used.has(o.name)),
  };
  return {
    name: spec.decl.name.name,
    at: { file, span: spec.decl.name.span },
    file: file.path,
    steps: spec.steps,
    batch: spec.batch,
    seed: spec.seed,
    ...(spec.clip !== undefined ? { clip: spec.clip } : {}),
    schedule: settings.schedule,
    ...(spec.checkpointEvery !== undefined ? { checkpointEvery: spec.checkpointEvery } : {}),
    data: settings.data,
    eval: settings.eval,
    // `init` in the program is relative to the program's folder; `--init` was made absolute.
    ...(spec.init
      ? {
          init: {
            path: resolvePath(dirname(file.path), spec.init.path),
            ...(spec.init.at ? { at: { file, span: spec.init.at.span } } : {}),
          },
        }
      : {}),
    ...(spec.initAdapters
      ? {
          initAdapters: {
            path: resolvePath(dirname(file.path), spec.initAdapters.path),
            at: { file, span: spec.initAdapters.at.span },
          },
        }
      : {}),
    ...(spec.initRename
      ? {
          initRename: { rules: spec.initRename.rules, at: { file, span: spec.initRename.at.span } },
        }
      : {}),
    ...(spec.loss ? { lossAt: { file, span: spec.loss.span } } : {}),
    params: placement.params.map((p) => ({
      path: p.param.path,
      shape: [...p.param.shape],
      dtype: p.param.dtype,
      origin: p.origin,
      trainable: p.trainable,
    })),
    initProgram: {
      ...initProgram,
      quantize,
      entries: initProgram.entries.map((e) => (e === initProgram.quantize ? quantize : e)),
    },
    step,
  };
}
