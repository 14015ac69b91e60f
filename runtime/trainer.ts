// The training loop, for any device: initialize (or load) parameters, then run the step graph
// once per step with the right variant, feeding parameters, optimizer states and a batch, and
// writing the updated ones back.
import { dirname, resolve as resolvePath } from "node:path";
import { error, type Diagnostic } from "../language/diagnostics.js";
import type { SourceFile } from "../language/source.js";
import { buildInit, type InitProgram } from "../compiler/init.js";
import type { Tensor } from "../compiler/interpreter.js";
import { analyze } from "../compiler/pipeline.js";
import type { Placement } from "../compiler/place.js";
import { keptUnits } from "../compiler/budget.js";
import { buildStep, variantKey, type StepProgram } from "../compiler/step.js";
import type { TrainSpec } from "../compiler/train.js";
import type { DataSet } from "../compiler/values.js";
import {
  arithmeticAccuracy,
  DataError,
  openDataSet,
  type LogitsFn,
  type OpenedSource,
  type Split,
} from "./data.js";
import type { Device } from "./device.js";
import { CheckpointError, readSafetensors } from "./safetensors.js";
import { lrFactor } from "./schedule.js";

export interface Run {
  spec: TrainSpec;
  placement: Placement;
  data: OpenedSource;
  /** What `eval` measures: the `eval … on` data (by default the block's own), and its split. */
  evalData: OpenedSource;
  evalSplit: Split;
  step: StepProgram;
  init: InitProgram;
  batch: number;
}

export interface PrepareOptions {
  train?: string;
  /** Overrides the number of steps of the train block (schedules and budgets see this one). */
  steps?: number;
  /** Overrides the batch size of the train block. */
  batch?: number;
  /** Evaluates on this `data` declaration of the file (its valid split) instead of `eval … on`. */
  evalData?: string;
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
  if (options.steps !== undefined) spec.steps = options.steps;
  const r = analysis.session.resolver;
  if (options.evalData !== undefined) {
    const v = r.scopeOf(spec.module).lookup(options.evalData);
    if (v?.kind !== "dataset") {
      const names = [...r.scopeOf(spec.module).names()].filter(
        (n) => r.scopeOf(spec.module).lookup(n)?.kind === "dataset",
      );
      return {
        diagnostics: [
          ...diagnostics,
          error(
            "E0204",
            `\`${options.evalData}\` is not a data declaration of ${spec.module.file.path}`,
            undefined,
            { help: `its data declarations: ${names.map((n) => `\`${n}\``).join(", ") || "none"}` },
          ),
        ],
      };
    }
    spec.eval = { every: spec.eval?.every ?? 1, on: { ...v.dataset, split: "valid" } };
  }
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
  const open = (dataset: DataSet): OpenedSource | Diagnostic => {
    try {
      return openDataSet(dataset, { seed: spec.seed });
    } catch (e) {
      if (!(e instanceof DataError)) throw e;
      return error("E0501", e.message, dataset.at, { help: e.help });
    }
  };
  const data = open(spec.data);
  if (!("kind" in data)) return { diagnostics: [...diagnostics, data] };
  const batch = options.batch ?? spec.batch;
  // `eval … on DATA`: the held-out split of DATA unless it says `.train`; the block's own data
  // when it is the same source with the same arguments (opened once).
  const on = spec.eval?.on;
  const sameData =
    !on ||
    (on.source === spec.data.source &&
      JSON.stringify([...on.args]) === JSON.stringify([...spec.data.args]));
  const evalData = sameData ? data : open(on);
  if (!("kind" in evalData)) return { diagnostics: [...diagnostics, evalData] };
  const shapes = (d: OpenedSource) => JSON.stringify(d.fieldShapes(batch));
  if (shapes(evalData) !== shapes(data)) {
    const show = (d: OpenedSource) =>
      Object.entries(d.fieldShapes(batch))
        .map(([name, f]) => `${name}: ${f.dtype}[${f.shape.join(", ")}]`)
        .join(", ");
    return {
      diagnostics: [
        ...diagnostics,
        error(
          "E0206",
          `\`eval … on\` data whose batches differ from the training data's: ${show(evalData)} against ${show(data)}`,
          spec.eval?.onAt ?? on!.at,
          {
            help: "the step is compiled for one batch shape: evaluate on data of the same shape (for arithmetic, the same `digits`)",
          },
        ),
      ],
    };
  }
  const mark = r.diagnostics.length;
  const init = buildInit(r, spec, placement);
  const step = init
    ? buildStep(r, spec, placement, data.fieldShapes(batch), init.buffers)
    : undefined;
  const later = r.diagnostics.slice(mark);
  if (!step || !init) return { diagnostics: [...diagnostics, ...later] };
  return {
    run: { spec, placement, data, evalData, evalSplit: on?.split ?? "valid", step, init, batch },
    diagnostics: [...diagnostics, ...later],
  };
}

export interface StepEvent {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  millis: number;
  /** Tokens (or examples) in this step's batch. */
  tokens: number;
}

export interface EvalEvent {
  step: number;
  loss: number;
  /** Exact-match accuracy on held-out problems, for data sets that have answers. */
  accuracy?: number;
  examples: number;
}

export interface TrainOptions {
  steps?: number;
  /** Continue from a checkpoint: the store it holds and the last step it completed. */
  resume?: { step: number; store: Map<string, Tensor> };
  onStep?: (event: StepEvent) => void;
  onEval?: (event: EvalEvent) => void;
  /** Called after steps where a checkpoint is due (and after the last step). */
  onCheckpoint?: (step: number, store: ReadonlyMap<string, Tensor>) => void;
  /** Checked between steps: true stops the run after a checkpoint (Ctrl-C). */
  shouldStop?: () => boolean;
  /** Held-out batches per evaluation (default 8). */
  evalBatches?: number;
}

export interface TrainResult {
  losses: number[];
  /** Parameters and optimizer states by name (`param:<path>`, `state:<name>`). */
  store: Map<string, Tensor>;
  /** The last step completed. */
  step: number;
  stopped: boolean;
  evals: EvalEvent[];
}

/** The loss stopped being a finite number: the run stops before that step's update is kept. */
export class NonFiniteLoss extends Error {
  constructor(
    readonly step: number,
    readonly loss: number,
    readonly tensor?: string,
  ) {
    super(`the loss is ${loss} at step ${step}`);
  }
}

/** Model parameters from the `init` checkpoint, checked against the program's parameters. */
function loadInit(run: Run, store: Map<string, Tensor>): void {
  const init = run.spec.init;
  if (!init) return;
  // Relative to the program's own folder, like data files.
  const loaded = readSafetensors(
    resolvePath(dirname(run.spec.module.file.path), init.path),
  ).tensors;
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

/** The feeds of one step: the store, the step number, batch `index` of `split`, the lr factor. */
export function batchFeeds(
  run: Run,
  store: ReadonlyMap<string, Tensor>,
  split: Split,
  index: number,
  step: number,
  lr = 1,
  data: OpenedSource = run.data,
): Map<string, Tensor> {
  const feeds = withStep(store, step);
  const batch = data.batch(split, index, run.batch);
  for (const [field, f] of Object.entries(batch.fields))
    feeds.set(`batch.${field}`, { shape: f.shape, data: f.data });
  feeds.set("lr_scale", { shape: [], data: Float32Array.of(lr) });
  return feeds;
}

function tokensPerBatch(run: Run): number {
  const shapes = run.data.fieldShapes(run.batch);
  const first = shapes["input"] ?? Object.values(shapes)[0];
  return first
    ? shapes["input"]
      ? first.shape.reduce((a, b) => a * b, 1)
      : first.shape[0]!
    : run.batch;
}

/** Held-out loss (over full batches, dropout off) and, where the data has answers, accuracy. */
export async function evaluate(
  run: Run,
  device: Device,
  store: ReadonlyMap<string, Tensor>,
  step: number,
  maxBatches = 8,
): Promise<EvalEvent> {
  const { evalData: data, evalSplit: split } = run;
  const size = split === "train" ? data.trainSize : data.validSize;
  const full = Math.floor(size / run.batch);
  const count = Math.max(0, Math.min(maxBatches, full));
  let total = 0;
  for (let i = 0; i < count; i++) {
    const out = await device.run(
      run.step.graph,
      run.step.inputs,
      run.step.evaluate,
      batchFeeds(run, store, split, i, step, 1, data),
    );
    total += out.get("loss")!.data[0]!;
  }
  const event: EvalEvent = {
    step,
    loss: count > 0 ? total / count : NaN,
    examples: count * run.batch,
  };
  const predict = run.step.predict;
  if (data.kind === "arithmetic" && predict) {
    const logits: LogitsFn = async (input, batch, length) => {
      const feeds = new Map(store);
      feeds.set("batch.input", { shape: [batch, length], data: input });
      const out = await device.run(run.step.graph, run.step.inputs, predict, feeds);
      return out.get("logits")!.data;
    };
    const result = await arithmeticAccuracy(data, logits, {
      split,
      batchSize: run.batch,
      limit: count * run.batch || run.batch,
    });
    event.accuracy = result.accuracy;
  }
  return event;
}

/** The first parameter or state that holds a NaN or an infinity, if any. */
function firstNonFinite(tensors: ReadonlyMap<string, Tensor>): string | undefined {
  for (const [name, t] of tensors) {
    if (name === "loss") continue;
    for (let i = 0; i < t.data.length; i++) if (!Number.isFinite(t.data[i]!)) return name;
  }
  return undefined;
}

const LOSS_ONLY: ReadonlySet<string> = new Set(["loss"]);

export async function train(
  run: Run,
  device: Device,
  options: TrainOptions = {},
): Promise<TrainResult> {
  const steps = options.steps ?? run.spec.steps;
  const store = options.resume ? new Map(options.resume.store) : await initialize(run, device);
  const first = (options.resume?.step ?? 0) + 1;
  const periods = [...new Set(run.step.states.flatMap((s) => (s.period ? [s.period] : [])))].sort(
    (a, b) => a - b,
  );
  const losses: number[] = [];
  const evals: EvalEvent[] = [];
  const tokens = tokensPerBatch(run);
  const evalEvery = run.spec.eval?.every;
  const checkpointEvery = run.spec.checkpointEvery;
  let last = first - 1;
  let stopped = false;
  const evaluateAt = async (s: number) => {
    const e = await evaluate(run, device, store, s, options.evalBatches);
    evals.push(e);
    options.onEval?.(e);
  };
  // A fresh run is evaluated before its first step too: the baseline its curve starts from (for
  // a fine-tune, how well the initial weights already do), and at its last step.
  if (evalEvery && first === 1) await evaluateAt(0);
  for (let s = first; s <= steps; s++) {
    const started = performance.now();
    const lr = lrFactor(run.spec.schedule, s, steps);
    const entry = run.step.variants.get(variantKey(periods, s))!;
    // Only the loss comes back to the host; parameters and states stay on the device until a
    // checkpoint (or the end) needs them.
    const out = await device.run(
      run.step.graph,
      run.step.inputs,
      entry,
      batchFeeds(run, store, "train", s - 1, s, lr),
      { read: LOSS_ONLY },
    );
    const loss = out.get("loss")!.data[0]!;
    if (!Number.isFinite(loss)) {
      await device.sync?.(out.values());
      throw new NonFiniteLoss(s, loss, firstNonFinite(out));
    }
    for (const [name, t] of out) if (name !== "loss") store.set(name, t);
    losses.push(loss);
    for (const budget of run.step.budgets) {
      if (!budget.pruneAt(s)) continue;
      const scored = await device.run(
        run.step.graph,
        run.step.inputs,
        budget.score,
        withStep(store, s),
        { read: new Set(budget.modules.map((m) => `score:${m}`)) },
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
        { read: new Set() },
      ))
        store.set(name, t);
    }
    last = s;
    options.onStep?.({ step: s, steps, loss, lr, millis: performance.now() - started, tokens });
    if (evalEvery && (s % evalEvery === 0 || s === steps)) await evaluateAt(s);
    stopped = options.shouldStop?.() ?? false;
    if ((checkpointEvery && s % checkpointEvery === 0) || s === steps || stopped) {
      await device.sync?.(store.values());
      options.onCheckpoint?.(s, store);
    }
    if (stopped) break;
  }
  await device.sync?.(store.values());
  return { losses, store, step: last, stopped, evals };
}
