// The training loop, for any device: initialize (or load) parameters, then run the step program
// once per step with the right variant, feeding parameters, optimizer states and a batch, and
// writing the updated ones back. The compiler made the programs (compiler/compile.ts); this file
// only runs them.
import {
  actionDue,
  stepEntry,
  type DataSpec,
  type Entry,
  type GraphProgram,
  type InitGradientPass,
  type StepProgram,
  type Tensor,
  type TrainProgram,
} from "../compiler/program.js";
import { keptUnits } from "./budget.js";
import { checkpointUses, loadCheckpoint, unusedNote } from "./checkpoint.js";
import {
  arithmeticAccuracy,
  DataError,
  openDataSet,
  type LogitsFn,
  type OpenedSource,
  type Split,
} from "./data.js";
import type { Device } from "./device.js";
import { evaluate as evaluateGraph } from "./interpreter.js";
import { lrFactor } from "./schedule.js";
import { CheckpointError, SafetensorsFile } from "./safetensors.js";

/** A compiled training run with its data opened. */
export interface Run {
  program: TrainProgram;
  data: OpenedSource;
  /** What `eval` measures: the `eval … on` data (by default the block's own), and its split. */
  evalData: OpenedSource;
  evalSplit: Split;
}

/**
 * Opens a program's data (a corpus file is read here, not while compiling); throws a DataError
 * for the user's problems. The eval data is the training data, opened once, unless `eval … on`
 * names another declaration.
 */
export function openRun(program: TrainProgram): Run {
  const open = (spec: DataSpec) => {
    try {
      return openDataSet(spec, { seed: program.seed });
    } catch (e) {
      if (e instanceof DataError) e.at ??= spec.at;
      throw e;
    }
  };
  const data = open(program.data);
  const on = program.eval.data;
  const same =
    on.source === program.data.source &&
    JSON.stringify(on.args) === JSON.stringify(program.data.args);
  const evalData = same ? data : open(on);
  for (const [d, spec] of [
    [data, program.data],
    [evalData, on],
  ] as const) {
    const shapes = JSON.stringify(d.fieldShapes(program.batch));
    // the shapes and dtypes only: a field's known range is for the compiler's checks
    const compiled = JSON.stringify(
      Object.fromEntries(
        Object.entries(spec.fields).map(([k, f]) => [k, { shape: f.shape, dtype: f.dtype }]),
      ),
    );
    if (shapes !== compiled)
      throw new Error(
        `runtime: the data source \`${spec.source}\` makes batches ${shapes}, the program was compiled for ${compiled}`,
      );
  }
  return { program, data, evalData, evalSplit: on.split ?? "valid" };
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
  /** Something the user should know about the run (an evaluation that cannot run). */
  onNote?: (text: string) => void;
  /** Adapter parameters (`param:<path>`) that replace the adapters' initializers (`--init-adapters`). */
  adapters?: ReadonlyMap<string, Tensor>;
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
function loadInit(
  program: TrainProgram,
  store: Map<string, Tensor>,
  onNote?: (text: string) => void,
): void {
  if (!program.init) return;
  const loaded = loadCheckpoint(program.init.path, program, checkpointUses.init);
  for (const [name, t] of loaded.tensors) store.set(name, t);
  const note = unusedNote(program.init.path, loaded.unused);
  if (note) onNote?.(note);
}

/** Runs one entry of a program and keeps its outputs in `store`. */
async function runInto(
  device: Device,
  program: GraphProgram,
  entry: Entry,
  store: Map<string, Tensor>,
): Promise<void> {
  for (const [name, t] of await device.run(program, entry, store)) store.set(name, t);
}

/**
 * A store for running a program with a weights file (`--weights`, an export): `initialize`
 * (reading `init` only where `fromInit`, by default when there are no weights), the file's tensors
 * over it, the quantizers' and adapters' buffers recomputed from those (not from the values
 * `initialize` drew), then the file's tensors and `adapters` again: they win over recomputed ones.
 */
export async function initializeWithWeights(
  program: TrainProgram,
  device: Device,
  weights: ReadonlyMap<string, Tensor> | undefined,
  options: Parameters<typeof initialize>[2] = {},
): Promise<Map<string, Tensor>> {
  const store = await initialize(program, device, {
    ...options,
    fromInit: options.fromInit ?? !weights,
  });
  if (!weights) return store;
  for (const [name, t] of weights) store.set(name, t);
  await initializeAdapters(program, device, store, options.data);
  for (const [name, t] of weights) store.set(name, t);
  for (const [name, t] of options.adapters ?? []) store.set(name, t);
  return store;
}

/**
 * Initial parameters and states: the model's from its initializers (or from the `init`
 * checkpoint, unless `fromInit` is false), the quantizers' and adapters' buffers computed from
 * those, then the adapters' parameters and the optimizer states. `data` is the training data the
 * `init_gradient` passes read (opened here when not given and a pass needs it).
 */
export async function initialize(
  program: TrainProgram,
  device: Device,
  options: {
    fromInit?: boolean;
    data?: OpenedSource;
    onNote?: (text: string) => void;
    /** Adapter parameters to start from (`--init-adapters`): before the optimizer states are made. */
    adapters?: ReadonlyMap<string, Tensor>;
  } = {},
): Promise<Map<string, Tensor>> {
  const store = new Map<string, Tensor>();
  const { initProgram: init, step } = program;
  if (program.init && options.fromInit !== false) loadInit(program, store, options.onNote);
  else {
    loadFiles(program, store, device.float64 === true);
    await runInto(device, init, init.model, store);
  }
  await initializeAdapters(program, device, store, options.data);
  for (const [name, t] of options.adapters ?? []) {
    if (name.startsWith("buffer:")) checkSameBuffer(name, t, store.get(name));
    store.set(name, t);
  }
  await runInto(device, step, step.stateInit, store);
  // `at step 0` actions finish the initialization (SwitchLoRA's `W -= s·B A`): a resumed run's
  // checkpoint already holds what they wrote, so only a fresh start runs them.
  for (const action of step.actions) {
    if (!actionDue(action, 0)) continue;
    const feeds = new Map(store);
    const lr = lrFactor(program.schedule, 0, program.steps);
    for (const [name, t] of stepScalars(step, 0, lr, device.float64 ?? false)) feeds.set(name, t);
    for (const [name, t] of await device.run(step, action.entry, feeds, { read: new Set() }))
      store.set(name, t);
  }
  return store;
}

/**
 * An adapter's fixed buffer that came with its starting values (`--init-adapters`: RandLoRA's
 * bases in a PEFT folder) must be the one the program computes: the adapter trained with those,
 * and a checkpoint or an export recomputes them from the program (its seed), so other values
 * would train or export another function. CheckpointError (E0502) otherwise.
 */
function checkSameBuffer(name: string, given: Tensor, computed: Tensor | undefined): void {
  let scale = 0;
  let diff = computed && computed.data.length === given.data.length ? 0 : Infinity;
  if (computed)
    for (let i = 0; i < given.data.length && diff < Infinity; i++) {
      scale = Math.max(scale, Math.abs(Number(computed.data[i])));
      diff = Math.max(diff, Math.abs(Number(given.data[i]) - Number(computed.data[i])));
    }
  if (diff > 1e-6 * Math.max(scale, 1e-30))
    throw new CheckpointError(
      `the adapter's fixed \`${name.slice("buffer:".length)}\` is not the one this program computes: lrk draws it from the adapter's \`seed\` with its own generator (a PEFT RandLoRA adapter's bases come from torch's)`,
      "start from an adapter exported by lrkc with the same seed, or fine-tune it in PEFT",
    );
}

/**
 * The buffers and the adapters' parameters, from the model's parameters in `store`: the
 * `init_gradient` sums first (they read training data), then `quantize` and `adapters`; the sums
 * are dropped afterwards (the buffers made from them are what checkpoints keep).
 */
export async function initializeAdapters(
  program: TrainProgram,
  device: Device,
  store: Map<string, Tensor>,
  data?: OpenedSource,
): Promise<void> {
  const init = program.initProgram;
  loadFiles(program, store, device.float64 === true);
  const sums: string[] = [];
  for (const pass of init.gradients) {
    data ??= openRun(program).data;
    await sumGradients(program, device, store, pass, data);
    sums.push(...pass.entry.outputs.map((o) => o.name));
  }
  await runInto(device, init, init.quantize, store);
  await runInto(device, init, init.adapters, store);
  for (const name of sums) store.delete(name);
  for (const file of init.files ?? []) store.delete(file.name);
}

/**
 * The tensors `load` reads (compiler/load.ts), into `store` under their input names; dropped once
 * the init program has run (the values made from them are what checkpoints keep).
 */
function loadFiles(program: TrainProgram, store: Map<string, Tensor>, float64: boolean): void {
  for (const f of program.initProgram.files ?? []) {
    if (store.has(f.name)) continue;
    const fail = (why: string, help?: string) =>
      Object.assign(
        new CheckpointError(`\`load\` cannot read \`${f.tensor}\` of "${f.path}": ${why}`, help),
        {
          at: f.at,
        },
      );
    let file: SafetensorsFile;
    try {
      file = SafetensorsFile.open(f.path);
    } catch (e) {
      if (e instanceof CheckpointError) throw fail(e.message, e.help);
      throw e;
    }
    try {
      if (!file.entries.has(f.tensor)) {
        const names = [...file.entries.keys()].sort();
        throw fail(
          "the file holds no such tensor",
          names.length > 0
            ? `it holds ${names
                .slice(0, 8)
                .map((n) => `\`${n}\``)
                .join(", ")}${names.length > 8 ? `, … (${names.length})` : ""}`
            : "the file holds no tensors",
        );
      }
      const t = file.read(f.tensor);
      if (t.shape.join(",") !== f.shape.join(","))
        throw fail(
          `it is [${t.shape.join(", ")}], not the [${f.shape.join(", ")}] the program says`,
          `write its shape [${t.shape.join(", ")}] in the \`load\` call, or load another tensor`,
        );
      const data = float64 || t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
      store.set(f.name, { shape: t.shape, data });
    } finally {
      file.close();
    }
  }
}

/** One `init_gradient` pass: zeros, then one run per training batch, each adding its gradient. */
async function sumGradients(
  program: TrainProgram,
  device: Device,
  store: Map<string, Tensor>,
  pass: InitGradientPass,
  data: OpenedSource,
): Promise<void> {
  const init = program.initProgram;
  if (data.trainSize < pass.batch) {
    const error = new DataError(
      `\`init_gradient\` takes batches of ${pass.batch} training examples, but the training split has ${data.trainSize}`,
      "use more training data, or take the gradient on smaller batches",
    );
    error.at = pass.at;
    throw error;
  }
  const float = device.float64 ? Float64Array : Float32Array;
  for (const { name } of pass.entry.outputs) {
    const shape = init.inputs.find((i) => i.name === name)!.shape as number[];
    store.set(name, { shape, data: new float(shape.reduce((a, d) => a * d, 1)) });
  }
  for (let i = 0; i < pass.batches; i++) {
    const feeds = new Map(store);
    const batch = data.batch("train", i, pass.batch);
    for (const [field, f] of Object.entries(batch.fields))
      feeds.set(`${pass.prefix}${field}`, { shape: f.shape, data: f.data });
    for (const [name, t] of await device.run(init, pass.entry, feeds)) store.set(name, t);
  }
}

/**
 * The scalars of one step: `step`, `lr_scale` and the program's host scalars, computed from
 * them in float64 (compiler/host-scalars.ts) and rounded once to f32, or, for a float64 device,
 * fed unrounded as Float64Array.
 */
export function stepScalars(
  program: StepProgram,
  step: number,
  lr: number,
  float64: boolean,
): Map<string, Tensor> {
  const float = float64 ? Float64Array : Float32Array;
  const feeds = new Map<string, Tensor>();
  feeds.set("step", { shape: [], data: float.of(step) });
  feeds.set("lr_scale", { shape: [], data: float.of(lr) });
  const host = program.hostScalars;
  if (host) {
    const { graph, entries } = host.program;
    const scalar = (v: number): Tensor => ({ shape: [], data: Float64Array.of(v) });
    const inputs = new Map(
      host.program.inputs.map((i) => [i.node, scalar(i.name === "step" ? step : lr)]),
    );
    const outputs = entries[0]!.outputs.map((o) => o.node);
    const values = evaluateGraph(graph, inputs, outputs, { float64: true });
    const data = float.from(outputs.map((node) => values.get(node)!.data[0]!));
    feeds.set(host.input, { shape: [outputs.length], data });
  }
  return feeds;
}

function withStep(
  run: Run,
  store: ReadonlyMap<string, Tensor>,
  step: number,
  lr: number,
  float64: boolean,
): Map<string, Tensor> {
  const feeds = new Map(store);
  for (const [name, t] of stepScalars(run.program.step, step, lr, float64)) feeds.set(name, t);
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
  float64 = false,
): Map<string, Tensor> {
  const feeds = withStep(run, store, step, lr, float64);
  const batch = data.batch(split, index, run.program.batch);
  for (const [field, f] of Object.entries(batch.fields)) {
    const range = run.program.data.fields[field]?.range;
    if (range && f.data instanceof Int32Array) checkRange(f.data, range, field, split, index);
    feeds.set(`batch.${field}`, { shape: f.shape, data: f.data });
  }
  return feeds;
}

/**
 * The compiler took a field's declared range as known (a gather of token ids then reads its
 * table without a bounds check): a batch outside it is a DataError, never a silent wrong read.
 */
function checkRange(
  values: Int32Array,
  range: { min: number; max: number; what: string },
  field: string,
  split: Split,
  index: number,
): void {
  for (const v of values)
    if (v < range.min || v > range.max)
      throw new DataError(
        `batch ${index} of the ${split} split: \`${field}\` holds ${v}, outside ${range.min} to ${range.max} (${range.what})`,
        "the data and the program disagree: check that the tokenizer or data set is the one the program was compiled for",
      );
}

function tokensPerBatch(run: Run): number {
  const shapes = run.program.data.fields;
  const first = shapes["input"] ?? Object.values(shapes)[0];
  return first
    ? shapes["input"]
      ? first.shape.reduce((a, b) => a * b, 1)
      : first.shape[0]!
    : run.program.batch;
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
  const { step: program, batch } = run.program;
  const size = split === "train" ? data.trainSize : data.validSize;
  const count = Math.max(0, Math.min(maxBatches, Math.floor(size / batch)));
  let total = 0;
  for (let i = 0; i < count; i++) {
    const feeds = batchFeeds(run, store, split, i, step, 1, data, device.float64);
    const out = await device.run(program, program.evaluate, feeds);
    total += out.get("loss")!.data[0]!;
  }
  const event: EvalEvent = { step, loss: count > 0 ? total / count : NaN, examples: count * batch };
  const predict = program.predict;
  if (data.kind === "arithmetic" && predict) {
    const logits: LogitsFn = async (input, rows, length) => {
      const feeds = new Map(store);
      feeds.set("batch.input", { shape: [rows, length], data: input });
      const out = await device.run(program, predict, feeds);
      return out.get("logits")!.data;
    };
    const result = await arithmeticAccuracy(data, logits, {
      split,
      batchSize: batch,
      limit: count * batch || batch,
    });
    event.accuracy = result.accuracy;
  }
  return event;
}

/**
 * Why held-out evaluation cannot run, if it cannot: the program's batch size is fixed when it is
 * compiled, so a split with fewer examples than one batch has no batch to evaluate (averaging
 * over none would be NaN).
 */
export function evaluationSkipped(run: Run): string | undefined {
  const { evalData: data, evalSplit: split } = run;
  const size = split === "train" ? data.trainSize : data.validSize;
  const batch = run.program.batch;
  if (size >= batch) return undefined;
  return `held-out evaluation skipped: the \`${split}\` split has ${size} example${size === 1 ? "" : "s"}, fewer than one batch of ${batch}; lower --batch to ${Math.max(1, size)} or less, or use more data`;
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

/** One training step on the device: only the loss comes back to the host. */
async function trainStep(
  run: Run,
  device: Device,
  store: Map<string, Tensor>,
  s: number,
  lr: number,
): Promise<number> {
  const step = run.program.step;
  await device.prepareStep?.(step, s);
  // Parameters and states stay on the device until a checkpoint (or the end) needs them.
  const out = await device.run(
    step,
    stepEntry(step, s),
    batchFeeds(run, store, "train", s - 1, s, lr, run.data, device.float64),
    { read: LOSS_ONLY },
  );
  const loss = out.get("loss")!.data[0]!;
  if (!Number.isFinite(loss)) {
    await device.sync?.(out.values());
    throw new NonFiniteLoss(s, loss, firstNonFinite(out));
  }
  for (const [name, t] of out) if (name !== "loss") store.set(name, t);
  return loss;
}

/** The rank-budget controllers due after step `s`: score on the device, choose here, prune. */
async function runBudgets(
  run: Run,
  device: Device,
  store: Map<string, Tensor>,
  s: number,
  lr: number,
): Promise<void> {
  const step = run.program.step;
  for (const budget of step.budgets) {
    if (!budget.pruneAt(s)) continue;
    const scalars = () => withStep(run, store, s, lr, device.float64 ?? false);
    const scored = await device.run(step, budget.score, scalars(), {
      read: new Set(budget.modules.map((m) => `score:${m}`)),
    });
    const all = Float64Array.from(
      budget.modules.flatMap((m) => [...scored.get(`score:${m}`)!.data]),
    );
    const kept = keptUnits(all, budget.keep(s));
    const feeds = scalars();
    let offset = 0;
    budget.modules.forEach((m, i) => {
      feeds.set(`kept:${m}`, {
        shape: [budget.sizes[i]!],
        data: kept.slice(offset, offset + budget.sizes[i]!),
      });
      offset += budget.sizes[i]!;
    });
    for (const [name, t] of await device.run(step, budget.prune, feeds, { read: new Set() }))
      store.set(name, t);
  }
}

/**
 * The `at` actions due after step `s`, in the program's order: each entry reads the store as the
 * previous one left it, and its outputs (the tensors it assigned) are written back.
 */
async function runActions(
  run: Run,
  device: Device,
  store: Map<string, Tensor>,
  s: number,
  lr: number,
): Promise<void> {
  const step = run.program.step;
  for (const action of step.actions) {
    if (!actionDue(action, s)) continue;
    const feeds = withStep(run, store, s, lr, device.float64 ?? false);
    for (const [name, t] of await device.run(step, action.entry, feeds, { read: new Set() }))
      store.set(name, t);
  }
}

/** The actions a run of `steps` steps never reaches (`--steps` may shorten a run), as notes. */
export function actionsNeverDue(step: StepProgram, steps: number): string[] {
  return step.actions
    .filter((a) => a.count > steps)
    .map(
      (a) =>
        `the \`at ${a.trigger} ${a.count}\` actions never run: the run has ${steps} step${steps === 1 ? "" : "s"}`,
    );
}

export async function train(
  run: Run,
  device: Device,
  options: TrainOptions = {},
): Promise<TrainResult> {
  const { program } = run;
  const steps = options.steps ?? program.steps;
  const store = options.resume
    ? new Map(options.resume.store)
    : await initialize(program, device, {
        data: run.data,
        onNote: options.onNote,
        adapters: options.adapters,
      });
  const first = (options.resume?.step ?? 0) + 1;
  const losses: number[] = [];
  const evals: EvalEvent[] = [];
  const tokens = tokensPerBatch(run);
  const evalEvery = program.eval.every;
  const checkpointEvery = program.checkpointEvery;
  let last = first - 1;
  let stopped = false;
  const skipEvaluation = evalEvery ? evaluationSkipped(run) : undefined;
  if (skipEvaluation) options.onNote?.(skipEvaluation);
  for (const note of actionsNeverDue(program.step, steps)) options.onNote?.(note);
  const evaluateAt = async (s: number) => {
    if (skipEvaluation) return;
    const e = await evaluate(run, device, store, s, options.evalBatches);
    evals.push(e);
    options.onEval?.(e);
  };
  // A fresh run is evaluated before its first step too: the baseline its curve starts from (for
  // a fine-tune, how well the initial weights already do), and at its last step.
  if (evalEvery && first === 1) await evaluateAt(0);
  for (let s = first; s <= steps; s++) {
    const started = performance.now();
    const lr = lrFactor(program.schedule, s, steps);
    const loss = await trainStep(run, device, store, s, lr);
    losses.push(loss);
    await runBudgets(run, device, store, s, lr);
    await runActions(run, device, store, s, lr);
    last = s;
    options.onStep?.({ step: s, steps, loss, lr, millis: performance.now() - started, tokens });
    if (evalEvery && (s % evalEvery === 0 || s === steps)) await evaluateAt(s);
    // Let the event loop run between steps: on the CPU nothing else awaits, and a signal handler
    // (Ctrl-C, SIGTERM, SIGHUP) only runs when the loop yields.
    await new Promise<void>((resolve) => setImmediate(resolve));
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
