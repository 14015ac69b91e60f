// The compiler → runtime contract: what `compile` hands the runtime, and what the runtime may
// rely on. The runtime imports this file, `ir.ts` and nothing else of the compiler: a training
// run is plain data (settings, data declarations, parameter shapes), two IR programs with named
// entries (init and step), and for the WebGPU device a kernel plan per program.
import type { Location } from "../language/diagnostics.js";
import type { DType, Graph, InputRole, Shape } from "./ir.js";

export type {
  KernelBinding,
  KernelSource,
  LowRankBranchForm,
  MatmulParams,
  MatmulShape,
} from "./kernels/types.js";
export type { Plan, PlanEntry, PlanKernel, PlanTensor } from "./plan.js";
import type {
  KernelSource,
  LowRankBranchForm,
  MatmulParams,
  MatmulShape,
} from "./kernels/types.js";
import type { MatmulAdapterKind } from "./kernels/matmul.js";
export type { BufferRole, PlannedBuffer } from "./memory-plan.js";

/** A tensor on the host: row-major values of a shape. */
export type Tensor = { shape: number[]; data: Float32Array | Float64Array | Int32Array };

export interface ProgramInput {
  name: string;
  node: number;
  role: InputRole;
  shape: Shape;
  dtype: DType;
  /** Holds integers of this many bits (quantized values); stored packed (`packedBits`). */
  bits?: number;
  /**
   * Stored on the device as IEEE half floats (`shader-f16`; `--frozen-f16`, compiler/half-storage.ts):
   * a frozen f32 tensor whose values are rounded to f16 once where it is fed (the interpreter
   * models the rounding), read as f16 and computed with in f32.
   */
  storage?: "f16";
}

/**
 * The field width an input of `bits`-bit integers is stored with on a device: 2, 4 or 8 bits, in
 * two's complement, packed 16, 8 or 4 to a u32 word, element i in word i / (32 / width) from the
 * low bits up; undefined (one 32-bit element each) for other inputs.
 */
export function packedBits(input: Pick<ProgramInput, "bits">): number | undefined {
  const bits = input.bits;
  if (bits === undefined || bits > 8) return undefined;
  return bits <= 2 ? 2 : bits <= 4 ? 4 : 8;
}

/**
 * Bits per element of an input as a device stores it where it is not 32: 2, 4 or 8 (packed
 * integers, `packedBits`) or 16 (an f16 float, `storage: "f16"`).
 */
export function storedWidth(input: Pick<ProgramInput, "bits" | "storage">): number | undefined {
  return packedBits(input) ?? (input.storage === "f16" ? 16 : undefined);
}

/** Bytes of an input's elements as a device stores them (packed, 2 each as f16, or 4 each). */
export function storedBytes(
  input: Pick<ProgramInput, "bits" | "storage">,
  elements: number,
): number {
  const width = storedWidth(input);
  return width ? 4 * Math.ceil((elements * width) / 32) : 4 * elements;
}

export interface Output {
  /** `param:<path>`, `state:<name>`, `buffer:<name>`, `loss`, `logits`, `score:<module>`. */
  name: string;
  node: number;
}

/** One way to run a graph: its name (the plan's entry) and the outputs it computes. */
export interface Entry {
  name: string;
  outputs: Output[];
}

/** A graph with its inputs and the entries it can run: what a device executes. */
export interface GraphProgram {
  graph: Graph;
  inputs: ProgramInput[];
  entries: Entry[];
}

/**
 * `lrkc generate`'s program with a KV cache (compiler/generation.ts): `prefill` reads
 * `prefill.ids` i32[1, capacity] (the prompt, padded; positions from 0) and outputs `logits`
 * [1, capacity, V] and every cache; `decode` reads one token `decode.ids` i32[1, 1] at `position`
 * (i32[1]) and every cache (inputs named as its outputs), and outputs `logits` [1, 1, V] and the
 * caches with the token's row written. Parameters and buffers are fed as for the step.
 */
export interface GenerationProgram extends GraphProgram {
  capacity: number;
  /** `cache:<module path>.<n>`, with its shape (positions along one axis, `capacity` long). */
  caches: { name: string; shape: number[] }[];
}

export interface StateInfo {
  name: string;
  shape: Shape;
  /** Node computing the state's initial value from the parameters (before step 1). */
  init: number;
  /** Refreshed every `period` steps (at steps 1, period + 1, …), or never. */
  period?: number;
  /**
   * `pooled(init, active)` (compiler/pooled-states.ts): the state holds a value only at the steps
   * where `active` holds (decided on the host, per tensor); at other steps its contents are
   * undefined and nothing reads them, so a device may keep it only while it is active.
   */
  pooled?: StepCondition & { at?: Location };
}

/** A rank-budget controller's host-side schedule and its entries in the step program. */
export interface BudgetSchedule {
  name: string;
  /** Module paths, in the order of `score:` outputs and `kept:` inputs. */
  modules: string[];
  /** Units per module (the length of its score vector). */
  sizes: number[];
  score: Entry;
  prune: Entry;
  /** Should the controller prune after this 1-based step? */
  pruneAt(step: number): boolean;
  /** How many units to keep over all modules at this step. */
  keep(step: number): number;
}

/**
 * An `at step N` / `at every N` action's entry in the step program and its schedule: the host runs
 * `entry` after the update of step N (`step`), or of steps N, 2N, … (`every`), and writes its
 * outputs (`param:<path>`, `state:<name>`) back before the next step.
 */
export interface ActionSchedule {
  entry: Entry;
  trigger: "step" | "every";
  count: number;
}

/** Is the action due after this 1-based step (0: when the run starts, after initialization)? */
export function actionDue(action: ActionSchedule, step: number): boolean {
  return action.trigger === "step" ? step === action.count : step > 0 && step % action.count === 0;
}

/** The training step: forward, loss, gradients and updates, with an entry per way to run it. */
export interface StepProgram extends GraphProgram {
  loss: number;
  /**
   * Keyed by the refresh periods due at a step, joined with `+` (`""` when none is due), then,
   * when the updates branch on step conditions, `|` and each condition's outcome as 0 or 1.
   */
  variants: Map<string, Entry>;
  /** `if`s on the step alone in optimizer updates, decided on the host (compiler/step-conditions.ts). */
  conditions?: StepCondition[];
  states: StateInfo[];
  /** Computes every state's initial value. */
  stateInit: Entry;
  /** Paths of the trainable parameters. */
  trainable: string[];
  budgets: BudgetSchedule[];
  /**
   * The `at` actions, an entry per run of consecutive actions with the same schedule
   * (compiler/actions.ts), in the order they run when due together.
   */
  actions: ActionSchedule[];
  /** The (clipped) gradient node of each trainable parameter, by path: for inspection and tests. */
  gradients: Map<string, number>;
  /** The loss without dropout and without updates: held-out evaluation. */
  evaluate: Entry;
  /** `model(batch.input)` without dropout, when the batch has an `input`: for accuracy. */
  predict?: Entry;
  /** Step-only scalars the runtime computes on the host (compiler/host-scalars.ts). */
  hostScalars?: HostScalars;
}

/**
 * Scalars that depend only on `step`, `lr_scale` and constants (bias corrections, scheduled
 * learning rates), computed on the host: before each run of the step program the runtime
 * evaluates `program` (inputs `step` and `lr_scale`) in float64 and feeds its one entry's outputs,
 * in order, as the f32 vector `input` (rounded once per value; a float64 device takes them as
 * they are). Every entry of the step program that reads them reads them from `input`.
 */
export interface HostScalars {
  input: string;
  program: GraphProgram;
}

/**
 * Initial values: `model` from initializers, `quantize` the quantizers' and adapters' stored
 * buffers, `adapters` the adapters' parameters, and the `init_gradient` passes the buffers read.
 */
export interface InitProgram extends GraphProgram {
  model: Entry;
  quantize: Entry;
  adapters: Entry;
  /** Run after `model` and before `quantize` (compiler/init-gradient.ts); empty when unused. */
  gradients: InitGradientPass[];
  /** Inputs read from files (`load`, compiler/load.ts): the host fills them before any entry. */
  files?: LoadedTensor[];
}

/** A `load(path, tensor)`: the input `name` is the tensor `tensor` of the file `path`. */
export interface LoadedTensor {
  name: string;
  path: string;
  tensor: string;
  shape: number[];
  dtype: DType;
  at: Location;
}

/**
 * An `init_gradient` pass: each output of `entry` (`init_gradient:<path>:<batches>x<batch>`) is
 * also an input of the same name, the sum so far, to which the run adds the gradient of the loss
 * on one batch. The host feeds zeros, runs the entry on train batches 0 … batches - 1 of `batch`
 * examples (fields fed as `<prefix><field>`), feeding each run's outputs to the next; `quantize`
 * and `adapters` read the sums, which are dropped afterwards (never checkpointed).
 */
export interface InitGradientPass {
  entry: Entry;
  batches: number;
  batch: number;
  prefix: string;
  /** The `init_gradient` call, for a data problem found at run time. */
  at: Location;
}

/** A condition on the 1-based step number that picks the step's variant. */
export interface StepCondition {
  /** Identifies the condition (its expression); equal conditions are one. */
  key: string;
  holds(step: number): boolean;
}

/** Which refresh periods are due at a 1-based step: periods N with (step - 1) % N == 0. */
export function variantKey(periods: readonly number[], step: number): string {
  return periods.filter((p) => (step - 1) % p === 0).join("+");
}

/**
 * One `init_rename` rule: `from` and `to` are dotted paths where `*` stands for one segment. A
 * checkpoint name whose leading segments match `from` has them replaced by `to`, its `*`s filled
 * with the segments `from`'s matched, in order.
 */
export interface RenameRule {
  from: string;
  to: string;
}

/** `name` under the first rule that matches it (`renamed`), or `name` when none does. */
export function renamed(rules: readonly RenameRule[], name: string): string {
  const segments = name.split(".");
  for (const { from, to } of rules) {
    // empty segments dropped: `"transformer."` is the prefix `"transformer"`
    const pattern = from.split(".").filter((p) => p !== "");
    if (pattern.length > segments.length) continue;
    const caught: string[] = [];
    if (!pattern.every((p, i) => (p === "*" ? caught.push(segments[i]!) > 0 : p === segments[i])))
      continue;
    const head = to
      .split(".")
      .filter((p) => p !== "")
      .map((p) => (p === "*" ? caught.shift()! : p));
    return [...head, ...segments.slice(pattern.length)].join(".");
  }
  return name;
}

/** The entry of the step that runs at a 1-based step. */
export function stepEntry(step: StepProgram, at: number): Entry {
  const periods = [...new Set(step.states.flatMap((s) => (s.period ? [s.period] : [])))];
  const outcomes = (step.conditions ?? []).map((c) => (c.holds(at) ? 1 : 0));
  const suffix = outcomes.length ? `|${outcomes.join("")}` : "";
  return step.variants.get(variantKey(periods, at) + suffix)!;
}

export interface FieldShape {
  shape: number[];
  dtype: "f32" | "i32";
  /** The values an i32 field holds, both ends included, where the source knows them (token ids). */
  range?: { min: number; max: number; what: string };
}

/** A data declaration, resolved: its source, its arguments with defaults applied, its split. */
export interface DataSpec {
  /** `arithmetic`, `two_moons`, `text`. */
  source: string;
  args: Record<string, string | number | boolean>;
  /** Token (or class) count. */
  vocab: number;
  /** `.train` / `.valid`; absent for a bare name (training reads the train split). */
  split?: "train" | "valid";
  /** The batch fields and their shapes at the run's batch size. */
  fields: Record<string, FieldShape>;
  /** An example declaration, for messages about the arguments. */
  help: string;
  at: Location;
}

/**
 * The arithmetic task's tokens: digits 0–9 are ids 0–9, then `+ - * =`, then `.` (end of
 * answer) and ` ` (padding). `123+456=579.` is one example.
 */
export const ARITHMETIC_ALPHABET = "0123456789+-*=. ";

/** L, the tokens of the longest example for these settings (`999*999=998001.` is 4·3 + 3). */
export function arithmeticSequenceLength(ops: string, digits: number): number {
  let longest = 0;
  for (const op of ops) {
    // + : up to digits + 1 digits; - : a sign and up to digits digits; * : up to 2·digits digits
    const result = op === "*" ? 2 * digits : digits + 1;
    longest = Math.max(longest, 2 * digits + 3 + result);
  }
  return longest;
}

/** A learning-rate schedule: the factor each optimizer's `lr` is multiplied by. */
export interface Schedule {
  kind: "constant" | "cosine" | "linear";
  warmup: number;
  /** The factor at the end (cosine, linear). */
  minRatio: number;
}

export interface ParamSpec {
  path: string;
  shape: number[];
  dtype: DType;
  origin: "model" | "adapter";
  trainable: boolean;
}

/** Everything `lrkc train` runs: the settings of one train block and its two programs. */
export interface TrainProgram {
  /** The train block's name, and where it is written (for diagnostics at run time). */
  name: string;
  at: Location;
  /** The `.lrk` file's path. */
  file: string;
  steps: number;
  batch: number;
  seed: number;
  clip?: number;
  schedule: Schedule;
  checkpointEvery?: number;
  data: DataSpec;
  /** What evaluation measures: `eval … on` data (by default the training data's valid split). */
  eval: { every?: number; data: DataSpec };
  /** The checkpoint to start from (an absolute path), and the `init` line when written there. */
  init?: { path: string; at?: Location };
  /**
   * The block's `init_adapters` (an absolute path) and its line: where the adapters start
   * (`--init-adapters` replaces it).
   */
  initAdapters?: { path: string; at: Location };
  /** The block's `init_rename` rules, applied to the names of the `init` checkpoint's tensors. */
  initRename?: { rules: RenameRule[]; at: Location };
  /**
   * Made when `compile` is asked (`generation: true`, for `lrkc generate`): the cached program,
   * or why the model has none (it is then generated by recomputing the prefix).
   */
  generation?: GenerationProgram | { reason: string };
  /** The `loss` expression, for reports about it. */
  lossAt?: Location;
  params: ParamSpec[];
  initProgram: InitProgram;
  step: StepProgram;
}

/** The matmul kernel template, as the runtime's autotuner times it (the compiler renders). */
export interface MatmulTemplate {
  /** The parameter sets worth timing for a shape on a device with these features. */
  candidates(
    shape: MatmulShape,
    features: ReadonlySet<string>,
    adapter?: MatmulAdapterKind,
  ): MatmulParams[];
  /** The choice without tuning. */
  defaults(
    shape: MatmulShape,
    features: ReadonlySet<string>,
    adapter?: MatmulAdapterKind,
  ): MatmulParams;
  /** The kernel on bindings a = 0, b = 1, out = 2. */
  kernel(shape: MatmulShape, params: MatmulParams): KernelSource;
  /** Shapes of one class share a tuned choice. */
  classKey(shape: MatmulShape): string;
  describe(params: MatmulParams): string;
  /**
   * Bytes of each buffer `kernel` and `passes` bind, by binding number (default: A, B and out in
   * f32); a kernel binds those its `bindings` name.
   */
  bindingBytes?(shape: MatmulShape): number[];
  /** Every kernel the parameters run, in order, where they are more than `kernel` (split-k). */
  passes?(shape: MatmulShape, params: MatmulParams): KernelSource[];
  /**
   * A product with a low-rank branch added, fused in its tile or with the up-projection a kernel of
   * its own (`upParams`): the kernels of each form on shared bindings, and their bytes
   * (compiler/kernels/matmul.ts `lowRankBranchForms`).
   */
  lowRankForms?(
    shape: MatmulShape,
    branch: LowRankBranchForm,
    params: MatmulParams,
    upParams: MatmulParams,
  ): { fused: KernelSource[]; unfused: KernelSource[]; bytes: number[] };
}
