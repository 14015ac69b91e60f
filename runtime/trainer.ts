// The training loop, for any device: initialize (or load) parameters, then run the step graph
// once per step with the right variant, feeding parameters, optimizer states and a batch, and
// writing the updated ones back.
import { error, type Diagnostic } from "../language/diagnostics.js";
import type { SourceFile } from "../language/source.js";
import { buildInit, type InitProgram } from "../compiler/init.js";
import type { Tensor } from "../compiler/interpreter.js";
import { analyze } from "../compiler/pipeline.js";
import type { Placement } from "../compiler/place.js";
import { keptUnits } from "../compiler/budget.js";
import { buildStep, variantKey, type StepProgram } from "../compiler/step.js";
import type { TrainSpec } from "../compiler/train.js";
import { DataError, openDataSet, type OpenedSource } from "./data.js";
import type { Device } from "./device.js";
import { CheckpointError, readSafetensors } from "./safetensors.js";
import { lrFactor } from "./schedule.js";

export interface Run {
  spec: TrainSpec;
  placement: Placement;
  data: OpenedSource;
  step: StepProgram;
  init: InitProgram;
  batch: number;
}

export interface PrepareOptions {
  train?: string;
  /** Overrides the batch size of the train block. */
  batch?: number;
}

/** Compiles a program's train block and opens its data; every problem is a diagnostic. */
export function prepare(
  file: SourceFile,
  options: PrepareOptions = {},
): { run?: Run; diagnostics: Diagnostic[] } {
  const analysis = analyze(file, { train: options.train, requireTrain: true });
  const diagnostics = analysis.diagnostics;
  if (diagnostics.some((d) => d.severity === "error") || analysis.trains.length === 0)
    return { diagnostics };
  const { spec, placement } = analysis.trains[0]!;
  const r = analysis.session.resolver;
  if (!spec.data) {
    return {
      diagnostics: [
        ...diagnostics,
        error(
          "E0208",
          `train block \`${spec.decl.name.name}\` has no \`data\``,
          { file: spec.module.file, span: spec.decl.name.span },
          {
            help: "add e.g. `data arith` after a `data arith = std.data.arithmetic(digits: 3)` declaration",
          },
        ),
      ],
    };
  }
  let data: OpenedSource;
  try {
    data = openDataSet(spec.data, { seed: spec.seed });
  } catch (e) {
    if (!(e instanceof DataError)) throw e;
    return {
      diagnostics: [...diagnostics, error("E0501", e.message, spec.data.at, { help: e.help })],
    };
  }
  const batch = options.batch ?? spec.batch;
  const mark = r.diagnostics.length;
  const init = buildInit(r, spec, placement);
  const step = init
    ? buildStep(r, spec, placement, data.fieldShapes(batch), init.buffers)
    : undefined;
  const later = r.diagnostics.slice(mark);
  if (!step || !init) return { diagnostics: [...diagnostics, ...later] };
  return {
    run: { spec, placement, data, step, init, batch },
    diagnostics: [...diagnostics, ...later],
  };
}

export interface StepEvent {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  millis: number;
}

export interface TrainOptions {
  steps?: number;
  onStep?: (event: StepEvent) => void;
}

export interface TrainResult {
  losses: number[];
  /** Parameters and optimizer states by name (`param:<path>`, `state:<name>`). */
  store: Map<string, Tensor>;
}

/** Model parameters from the `init` checkpoint, checked against the program's parameters. */
function loadInit(run: Run, store: Map<string, Tensor>): void {
  const init = run.spec.init;
  if (!init) return;
  const loaded = readSafetensors(init.path).tensors;
  const expected = run.placement.params.filter((p) => p.origin === "model");
  const missing = expected.filter((p) => !loaded.has(p.param.path)).map((p) => p.param.path);
  if (missing.length > 0) {
    throw new CheckpointError(
      `\`${init.path}\` has no tensor for ${missing
        .slice(0, 3)
        .map((m) => `\`${m}\``)
        .join(", ")}${missing.length > 3 ? ` and ${missing.length - 3} more` : ""}`,
      "was it saved from a different model or with different arguments?",
    );
  }
  for (const p of expected) {
    const t = loaded.get(p.param.path)!;
    if (t.shape.length !== p.param.shape.length || t.shape.some((d, i) => d !== p.param.shape[i])) {
      throw new CheckpointError(
        `\`${p.param.path}\` in \`${init.path}\` is [${t.shape.join(", ")}], but the model's is [${p.param.shape.join(", ")}]`,
        "the checkpoint was saved from a model with other dimensions",
      );
    }
    store.set(`param:${p.param.path}`, t);
  }
  const known = new Set(run.placement.params.map((p) => p.param.path));
  const extra = [...loaded.keys()].filter((k) => !known.has(k) && !k.startsWith("state:"));
  if (extra.length > 0) {
    throw new CheckpointError(
      `\`${init.path}\` has tensors the model does not: ${extra
        .slice(0, 3)
        .map((m) => `\`${m}\``)
        .join(", ")}${extra.length > 3 ? ` and ${extra.length - 3} more` : ""}`,
      "was it saved from a different model?",
    );
  }
}

export async function initialize(run: Run, device: Device): Promise<Map<string, Tensor>> {
  const store = new Map<string, Tensor>();
  const { init, step } = run;
  if (run.spec.init) loadInit(run, store);
  else
    for (const [name, t] of await device.run(init.graph, init.inputs, init.model, new Map()))
      store.set(name, t);
  // Quantize once, from the loaded or initialized weights; keep only the buffers the step reads.
  const used = new Set(step.inputs.map((i) => i.name));
  const quantize = { outputs: init.quantize.outputs.filter((o) => used.has(o.name)) };
  for (const [name, t] of await device.run(init.graph, init.inputs, quantize, store))
    store.set(name, t);
  for (const [name, t] of await device.run(init.graph, init.inputs, init.adapters, store))
    store.set(name, t);
  for (const [name, t] of await device.run(step.graph, step.inputs, step.stateInit, store))
    store.set(name, t);
  return store;
}

function withStep(store: ReadonlyMap<string, Tensor>, step: number): Map<string, Tensor> {
  const feeds = new Map(store);
  feeds.set("step", { shape: [], data: Float32Array.of(step) });
  return feeds;
}

export async function train(
  run: Run,
  device: Device,
  options: TrainOptions = {},
): Promise<TrainResult> {
  const steps = options.steps ?? run.spec.steps;
  const store = await initialize(run, device);
  const periods = [...new Set(run.step.states.flatMap((s) => (s.period ? [s.period] : [])))].sort(
    (a, b) => a - b,
  );
  const losses: number[] = [];
  for (let s = 1; s <= steps; s++) {
    const started = performance.now();
    const batch = run.data.batch("train", s - 1, run.batch);
    const feeds = new Map(store);
    for (const [field, f] of Object.entries(batch.fields))
      feeds.set(`batch.${field}`, { shape: f.shape, data: f.data });
    const lr = lrFactor(run.spec.schedule, s, steps);
    feeds.set("step", { shape: [], data: Float32Array.of(s) });
    feeds.set("lr_scale", { shape: [], data: Float32Array.of(lr) });
    const entry = run.step.variants.get(variantKey(periods, s))!;
    const out = await device.run(run.step.graph, run.step.inputs, entry, feeds);
    const loss = out.get("loss")!.data[0]!;
    for (const [name, t] of out) if (name !== "loss") store.set(name, t);
    losses.push(loss);
    for (const budget of run.step.budgets) {
      if (!budget.pruneAt(s)) continue;
      const scored = await device.run(
        run.step.graph,
        run.step.inputs,
        budget.score,
        withStep(store, s),
      );
      const all = Float64Array.from(
        budget.modules.flatMap((m) => [...scored.get(`score:${m}`)!.data]),
      );
      const kept = keptUnits(all, budget.keep(s));
      const feeds = withStep(store, s);
      let offset = 0;
      budget.modules.forEach((m, i) => {
        feeds.set(`kept:${m}`, {
          shape: [budget.sizes[i]!],
          data: kept.slice(offset, offset + budget.sizes[i]!),
        });
        offset += budget.sizes[i]!;
      });
      for (const [name, t] of await device.run(
        run.step.graph,
        run.step.inputs,
        budget.prune,
        feeds,
      ))
        store.set(name, t);
    }
    options.onStep?.({ step: s, steps, loss, lr, millis: performance.now() - started });
  }
  return { losses, store };
}
