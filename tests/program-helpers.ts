// Helpers for tests that compile whole .lrk programs and run their training step on the CPU:
// compile a program text, initialize its parameters and optimizer states, run any entry of the
// step graph with a batch, and take central finite differences of the loss.
import { compile as compileFile, planStep, type CompileOptions } from "../compiler/compile.js";
import type { Graph } from "../compiler/ir.js";
import type { PlanTarget } from "../compiler/plan.js";
import type { Placement } from "../compiler/place.js";
import {
  stepEntry,
  type Entry,
  type GraphProgram,
  type InitProgram,
  type Plan,
  type Output,
  type ProgramInput,
  type StepProgram,
  type Tensor,
} from "../compiler/program.js";
import type { TrainSpec } from "../compiler/train.js";
import { deviceTarget, loadPlans } from "../cli/target.js";
import { runOrDiagnostic } from "../cli/train.js";
import type { Diagnostic } from "../language/diagnostics.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice, type Device, type RunOptions } from "../runtime/device.js";
import { initialize, stepScalars, train, type Run } from "../runtime/trainer.js";
import { expect } from "vitest";
import { relativeDiff } from "./helpers.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";

export type Store = Map<string, Tensor>;

/** A compiled run with the compiler's view beside it, and short names tests use. */
export interface TestRun extends Run {
  step: StepProgram;
  init: InitProgram;
  spec: TrainSpec;
  placement: Placement;
  batch: number;
}

/** Compiles a train block and opens its data (as `lrkc train` does, without a device). */
export function prepare(
  file: SourceFile,
  options: CompileOptions = {},
): { run?: TestRun; diagnostics: Diagnostic[] } {
  const { compiled, diagnostics } = compileFile(file, options);
  if (!compiled) return { diagnostics };
  const run = runOrDiagnostic(compiled.program);
  if ("severity" in run) return { diagnostics: [...diagnostics, run] };
  const { program } = run;
  return {
    run: {
      ...run,
      step: program.step,
      init: program.initProgram,
      spec: compiled.spec,
      placement: compiled.placement,
      batch: program.batch,
    },
    diagnostics,
  };
}

/** Plans a run's programs for a WebGPU device (untuned: tests must not time kernels) and loads them. */
export async function loadOnGpu(device: WebGpuDevice, run: Run): Promise<void> {
  const done = loadedOn.get(device) ?? new WeakSet();
  loadedOn.set(device, done);
  if (done.has(run.program)) return;
  done.add(run.program);
  await loadPlans(device, run.program, { autotune: false });
}

const loadedOn = new WeakMap<WebGpuDevice, WeakSet<object>>();

const adHoc = new WeakMap<Graph, Map<string, GraphProgram>>();

/**
 * Runs outputs of a hand-built graph on a device: the graph becomes a one-entry program (planned
 * for the device on first use when it is a WebGPU device).
 */
export async function runGraph(
  device: Device,
  graph: Graph,
  inputs: readonly ProgramInput[],
  outputs: readonly Output[],
  feeds: ReadonlyMap<string, Tensor>,
  options?: RunOptions,
): Promise<Map<string, Tensor>> {
  const key = outputs.map((o) => `${o.name}=${o.node}`).join(",");
  let perGraph = adHoc.get(graph);
  if (!perGraph) adHoc.set(graph, (perGraph = new Map()));
  let program = perGraph.get(key);
  const entry: Entry = { name: "entry", outputs: [...outputs] };
  if (!program) {
    program = { graph, inputs: [...inputs], entries: [entry] };
    perGraph.set(key, program);
    if (device instanceof WebGpuDevice)
      device.load(
        program,
        planStep(program, await deviceTarget(device, [program], { autotune: false })),
      );
  }
  return device.run(program, program.entries[0]!, feeds, options);
}

/** Compiles `text` (a program with one train block); throws with the diagnostics on an error. */
export function compile(text: string, options: { path?: string; batch?: number } = {}): TestRun {
  const file = new SourceFile(options.path ?? "test.lrk", text);
  const { run, diagnostics } = prepare(file, { batch: options.batch });
  const errors = diagnostics.filter((d) => d.severity === "error");
  if (!run || errors.length > 0) {
    throw new Error(
      `the program does not compile:\n${diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n")}`,
    );
  }
  return run;
}

export function cpu(float64: boolean): CpuDevice {
  return new CpuDevice({ float64 });
}

/** A fresh store of initial parameters and optimizer states (computed in f64 or f32). */
export async function init(run: Run, float64: boolean): Promise<Store> {
  return initialize(run.program, cpu(float64));
}

/** A deep copy of a store (the tensors too), with every float tensor as a Float64Array. */
export function copyStore(store: ReadonlyMap<string, Tensor>): Store {
  const out: Store = new Map();
  for (const [k, t] of store)
    out.set(k, {
      shape: [...t.shape],
      data: t.data instanceof Int32Array ? Int32Array.from(t.data) : Float64Array.from(t.data),
    });
  return out;
}

/** The same store with every float value rounded to f32 (so f32 and f64 runs start alike). */
export function roundToF32(store: ReadonlyMap<string, Tensor>): Store {
  const out = copyStore(store);
  for (const t of out.values())
    if (!(t.data instanceof Int32Array))
      for (let i = 0; i < t.data.length; i++) t.data[i] = Math.fround(t.data[i]!);
  return out;
}

/** Feeds for one step: the store, train batch `step - 1`, `step`, `lr_scale`, host scalars. */
export function feedsFor(
  run: TestRun,
  store: ReadonlyMap<string, Tensor>,
  step: number,
  lrScale = 1,
): Store {
  const feeds: Store = new Map(store);
  const batch = run.data.batch("train", step - 1, run.batch);
  for (const [field, f] of Object.entries(batch.fields))
    feeds.set(`batch.${field}`, { shape: [...f.shape], data: f.data });
  // float64 values: an f32 interpreter rounds them once as it reads its inputs
  for (const [name, t] of stepScalars(run.step, step, lrScale, true)) feeds.set(name, t);
  return feeds;
}

/** Runs an entry of the step graph. */
export async function runEntry(
  run: TestRun,
  entry: Entry,
  feeds: ReadonlyMap<string, Tensor>,
  float64: boolean,
): Promise<Store> {
  return cpu(float64).run(run.step, entry, feeds);
}

/** Outputs `grad:<path>` for every trainable parameter's gradient node. */
export function gradientOutputs(run: TestRun): Output[] {
  return [...run.step.gradients].map(([path, node]) => ({ name: `grad:${path}`, node }));
}

/** The loss and every trainable parameter's gradient at `store`, with batch `step - 1`. */
export async function lossAndGradients(
  run: TestRun,
  store: ReadonlyMap<string, Tensor>,
  step: number,
  float64: boolean,
): Promise<{ loss: number; grads: Map<string, Float64Array> }> {
  const entry: Entry = {
    name: "gradients",
    outputs: [{ name: "loss", node: run.step.loss }, ...gradientOutputs(run)],
  };
  const out = await runEntry(run, entry, feedsFor(run, store, step), float64);
  const grads = new Map<string, Float64Array>();
  for (const [name, t] of out)
    if (name.startsWith("grad:")) grads.set(name.slice(5), Float64Array.from(t.data));
  return { loss: out.get("loss")!.data[0]!, grads };
}

/** The f64 loss alone. */
export async function lossAt(
  run: TestRun,
  store: ReadonlyMap<string, Tensor>,
  step: number,
): Promise<number> {
  const entry: Entry = { name: "loss", outputs: [{ name: "loss", node: run.step.loss }] };
  const out = await runEntry(run, entry, feedsFor(run, store, step), true);
  return out.get("loss")!.data[0]!;
}

/**
 * Central finite differences (f64) of the loss with respect to `param:<path>`, at the elements
 * `indices` (all of them by default): (L(w + h e_i) - L(w - h e_i)) / 2h. Entries of the result
 * not in `indices` are 0.
 */
export async function finiteDifferences(
  run: TestRun,
  store: ReadonlyMap<string, Tensor>,
  path: string,
  step: number,
  options: {
    h?: number;
    indices?: readonly number[];
    /** Rewrites the perturbed store before the loss is evaluated (e.g. to hold a value fixed). */
    adjust?: (store: Store) => Store;
  } = {},
): Promise<Float64Array> {
  const h = options.h ?? 1e-6;
  const key = `param:${path}`;
  const base = store.get(key);
  if (!base) throw new Error(`no tensor \`${key}\` in the store`);
  const indices = options.indices ?? [...Array(base.data.length).keys()];
  const work: Store = new Map(store);
  const data = Float64Array.from(base.data);
  work.set(key, { shape: [...base.shape], data });
  const out = new Float64Array(base.data.length);
  for (const i of indices) {
    const w = data[i]!;
    const adjust = options.adjust ?? ((s: Store) => s);
    data[i] = w + h;
    const plus = await lossAt(run, adjust(work), step);
    data[i] = w - h;
    const minus = await lossAt(run, adjust(work), step);
    data[i] = w;
    out[i] = (plus - minus) / (2 * h);
  }
  return out;
}

export const norm = (v: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
};

/** ‖a − b‖ / max(‖a‖, ‖b‖, 1e-12). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relErr: lengths ${a.length} and ${b.length}`);
  const d = Array.from(a, (x, i) => x - b[i]!);
  return norm(d) / Math.max(norm(a), norm(b), 1e-12);
}

/** `values` at `indices`. */
export function pick(values: ArrayLike<number>, indices: readonly number[]): number[] {
  return indices.map((i) => values[i]!);
}

/** Up to `count` distinct indices in [0, n), sorted, from a fixed-seed LCG (all when n <= count). */
export function sampleIndices(n: number, count: number, seed = 12345): number[] {
  if (n <= count) return [...Array(n).keys()];
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Math.floor(next() * n));
  return [...chosen].sort((a, b) => a - b);
}

/** The refresh periods of a run's optimizer states, as `train` computes them. */
export function periodsOf(run: TestRun): number[] {
  return [...new Set(run.step.states.flatMap((s) => (s.period ? [s.period] : [])))].sort(
    (a, b) => a - b,
  );
}

/** The step variant `train` runs at a 1-based step. */
export function variantAt(run: TestRun, step: number): Entry {
  return stepEntry(run.step, step);
}

/**
 * One optimizer step as `train` takes it (without budget pruning), also returning the step's
 * gradients (`grad:<path>`) and loss. The store is updated in place.
 */
export async function trainStep(
  run: TestRun,
  store: Store,
  step: number,
  float64: boolean,
): Promise<{ loss: number; grads: Map<string, Float64Array>; out: Store }> {
  const variant = variantAt(run, step);
  const entry: Entry = {
    name: "step+gradients",
    outputs: [...variant.outputs, ...gradientOutputs(run)],
  };
  const out = await runEntry(run, entry, feedsFor(run, store, step), float64);
  const grads = new Map<string, Float64Array>();
  for (const [name, t] of out) {
    if (name.startsWith("grad:")) grads.set(name.slice(5), Float64Array.from(t.data));
    else if (name !== "loss") store.set(name, t);
  }
  return { loss: out.get("loss")!.data[0]!, grads, out };
}

/** Float values of `param:<path>` as a Float64Array copy. */
export function param(store: ReadonlyMap<string, Tensor>, path: string): Float64Array {
  const t = store.get(`param:${path}`);
  if (!t) throw new Error(`no tensor \`param:${path}\` in the store`);
  return Float64Array.from(t.data);
}

/**
 * A plan of a hand-built graph with named entries (`{ step: entry }`), for `limits` and
 * `features`: `planStep` over a one-off program.
 */
export function planProgram(
  graph: Graph,
  inputs: readonly ProgramInput[],
  entries: Record<string, { outputs: Output[] }>,
  limits: PlanTarget["limits"],
  features: readonly string[] = [],
  options: Omit<PlanTarget, "limits" | "features"> = {},
): Plan {
  return planStep(
    {
      graph,
      inputs: [...inputs],
      entries: Object.entries(entries).map(([name, e]) => ({ name, outputs: e.outputs })),
    },
    { limits, features, ...options },
  );
}

/**
 * `run` trained `steps` steps on `device` (a WebGPU device) and on the CPU interpreter: every
 * loss, and every parameter, state and buffer at the end, within `tolerance` (relative). Returns
 * the interpreter's final store.
 */
export async function expectTrainsAlike(
  device: WebGpuDevice,
  run: TestRun,
  steps: number,
  tolerance: number,
): Promise<Store> {
  await loadOnGpu(device, run);
  // Evaluations are not compared: one held-out batch runs the evaluation entries on both devices
  // without the interpreter's eight batches of greedy decoding (most of the time of a run that
  // has `eval every`).
  const gpu = await train(run, device, { steps, evalBatches: 1 });
  const cpu = await train(run, new CpuDevice(), { steps, evalBatches: 1 });
  gpu.losses.forEach((l, i) =>
    expect(
      Math.abs(l - cpu.losses[i]!) / Math.abs(cpu.losses[i]!),
      `loss at step ${i + 1}`,
    ).toBeLessThan(tolerance),
  );
  for (const [name, want] of cpu.store) {
    if (name.startsWith("batch.")) continue;
    expect(relativeDiff(gpu.store.get(name)!, want), name).toBeLessThan(tolerance);
  }
  return cpu.store;
}
