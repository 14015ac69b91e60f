// The training loop, for any device: initialize (or load) parameters, then run the step program
// once per step with the right variant, feeding parameters, optimizer states and a batch, and
// writing the updated ones back. The compiler made the programs (compiler/compile.ts); this file
// only runs them.
import {
  stepEntry,
  type DataSpec,
  type Entry,
  type GraphProgram,
  type Tensor,
  type TrainProgram,
} from "../compiler/program.js";
import { keptUnits } from "./budget.js";
import { checkpointUses, loadCheckpoint } from "./checkpoint.js";
import {
  arithmeticAccuracy,
  DataError,
  openDataSet,
  type LogitsFn,
  type OpenedSource,
  type Split,
} from "./data.js";
import type { Device } from "./device.js";
import { lrFactor } from "./schedule.js";

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
    if (shapes !== JSON.stringify(spec.fields))
      throw new Error(
        `runtime: the data source \`${spec.source}\` makes batches ${shapes}, the program was compiled for ${JSON.stringify(spec.fields)}`,
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
function loadInit(program: TrainProgram, store: Map<string, Tensor>): void {
  if (!program.init) return;
  const loaded = loadCheckpoint(program.init.path, program, checkpointUses.init);
  for (const [name, t] of loaded.tensors) store.set(name, t);
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
 * Initial parameters and states: the model's from its initializers (or from the `init`
 * checkpoint, unless `fromInit` is false), the quantizers' buffers computed from those, then the
 * adapters' and the optimizer states'.
 */
export async function initialize(
  program: TrainProgram,
  device: Device,
  options: { fromInit?: boolean } = {},
): Promise<Map<string, Tensor>> {
  const store = new Map<string, Tensor>();
  const { initProgram: init, step } = program;
  if (program.init && options.fromInit !== false) loadInit(program, store);
  else await runInto(device, init, init.model, store);
  await runInto(device, init, init.quantize, store);
  await runInto(device, init, init.adapters, store);
  await runInto(device, step, step.stateInit, store);
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
  const batch = data.batch(split, index, run.program.batch);
  for (const [field, f] of Object.entries(batch.fields))
    feeds.set(`batch.${field}`, { shape: f.shape, data: f.data });
  feeds.set("lr_scale", { shape: [], data: Float32Array.of(lr) });
  return feeds;
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
    const feeds = batchFeeds(run, store, split, i, step, 1, data);
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
  // Parameters and states stay on the device until a checkpoint (or the end) needs them.
  const out = await device.run(
    step,
    stepEntry(step, s),
    batchFeeds(run, store, "train", s - 1, s, lr),
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
): Promise<void> {
  const step = run.program.step;
  for (const budget of step.budgets) {
    if (!budget.pruneAt(s)) continue;
    const scored = await device.run(step, budget.score, withStep(store, s), {
      read: new Set(budget.modules.map((m) => `score:${m}`)),
    });
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
    for (const [name, t] of await device.run(step, budget.prune, feeds, { read: new Set() }))
      store.set(name, t);
  }
}

export async function train(
  run: Run,
  device: Device,
  options: TrainOptions = {},
): Promise<TrainResult> {
  const { program } = run;
  const steps = options.steps ?? program.steps;
  const store = options.resume ? new Map(options.resume.store) : await initialize(program, device);
  const first = (options.resume?.step ?? 0) + 1;
  const losses: number[] = [];
  const evals: EvalEvent[] = [];
  const tokens = tokensPerBatch(run);
  const evalEvery = program.eval.every;
  const checkpointEvery = program.checkpointEvery;
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
    const lr = lrFactor(program.schedule, s, steps);
    const loss = await trainStep(run, device, store, s, lr);
    losses.push(loss);
    await runBudgets(run, device, store, s);
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
