// `init_gradient(w, batches: N, batch: b)` (spec §10.2): the gradient of the train block's loss
// with respect to the base parameter `w`, summed over the first N training batches of b examples,
// computed once before training, for an adapter's frozen `const` buffers (LoRA-SB's
// initialization from the first Adam step, a gradient-informed LoRA init).
//
// Lowered honestly, as an entry of the init program per (batches, batch) pair: the forward and
// backward of the *unadapted* model (no adapter and no quantizer in place, dropout off) on one
// batch, with the model's parameters as the differentiated inputs, adding each gradient to an
// accumulator input of the same name (`init_gradient:<path>:<batches>x<batch>`, role `state`).
// The host runs it on batches 0 … N-1 before the `quantize` entry, which reads the sums
// (runtime/trainer.ts). The sums are not stored in checkpoints: the buffers computed from them are.
import { error, type Location } from "../language/diagnostics.js";
import { gradients as differentiate } from "./autodiff.js";
import type { Builder } from "./builder.js";
import { dataSpec } from "./data.js";
import { Lowerer, type Frame } from "./lower.js";
import type { InitGradientPass, ProgramInput } from "./program.js";
import type { Resolver } from "./resolve.js";
import type { Call } from "./tensor-builtins.js";
import type { TrainSpec } from "./train.js";
import { describeValue, type ParamInfo, type Value } from "./values.js";

const HELP =
  "write it as an adapter's `const` on a base parameter, e.g. `const G = init_gradient(base.weight, batches: 17, batch: 3)`";

/** The `init_gradient` built-in: checks its arguments and asks the lowerer's hook for the sum. */
export function initGradientCall({ L, at, args, tensor }: Call): Value {
  const hook = L.hooks.initGradient;
  if (!hook)
    return L.r.report(
      error(
        "E0206",
        "`init_gradient` is computed once, before training starts: it can only be an adapter's `const`",
        at,
        { help: HELP },
      ),
    );
  const sum = hook(at); // where it is called first: the arguments may not exist there
  const w = args.tensor(0);
  const batches = args.integer(-1, "batches", 1, 1);
  const batch = args.get(-1, "batch") === undefined ? undefined : args.integer(-1, "batch", 1, 1);
  args.done();
  return tensor(sum(w.node, { batches, batch }));
}

interface Request {
  param: ParamInfo;
  /** The accumulator: a graph input, and the pass's output of the same name. */
  name: string;
  node: number;
  batches: number;
  batch: number;
  at: Location;
}

/** The accumulator input of a parameter's gradient over `batches` batches of `batch` examples. */
export function accumulatorName(path: string, batches: number, batch: number): string {
  return `init_gradient:${path}:${batches}x${batch}`;
}

/** The `init_gradient` requests of an init program, and their lowering into gradient passes. */
export class InitGradients {
  private readonly requests = new Map<string, Request>();

  constructor(
    private readonly b: Builder,
    private readonly inputs: ProgramInput[],
  ) {}

  /** The accumulated gradient of `param`: an input of the init program, summed by a pass. */
  accumulator(param: ParamInfo, batches: number, batch: number, at: Location): number {
    const name = accumulatorName(param.path, batches, batch);
    const known = this.requests.get(name);
    if (known) return known.node;
    const node = this.b.input("state", name, param.shape, "f32");
    this.inputs.push({ name, node, role: "state", shape: [...param.shape], dtype: "f32" });
    this.requests.set(name, { param, name, node, batches, batch, at });
    return node;
  }

  /**
   * One pass per (batches, batch) pair: the train block's loss on a batch of `batch` examples
   * (inputs `init_batch<batch>.<field>`, shared by the passes of one batch size), lowered once
   * per batch size, differentiated with respect to the requested parameters. Undefined after a
   * diagnostic.
   */
  lower(
    r: Resolver,
    spec: TrainSpec,
    paramInput: (p: ParamInfo) => number,
  ): InitGradientPass[] | undefined {
    const groups = new Map<string, Request[]>();
    for (const q of this.requests.values()) {
      const key = `${q.batches}x${q.batch}`;
      groups.set(key, [...(groups.get(key) ?? []), q]);
    }
    const losses = new Map<number, number>();
    const passes: InitGradientPass[] = [];
    for (const group of groups.values()) {
      const { batches, batch, at } = group[0]!;
      const prefix = `init_batch${batch}.`;
      let loss = losses.get(batch);
      if (loss === undefined) {
        loss = r.attempt(() => this.lowerLoss(r, spec, batch, prefix, paramInput, at));
        if (loss === undefined) return undefined;
        losses.set(batch, loss);
      }
      const wrt = group.map((q) => paramInput(q.param));
      const grads = differentiate(this.b, loss, wrt);
      const outputs = group.map((q, i) => {
        // a parameter the loss does not reach has a zero gradient
        const g = grads.get(wrt[i]!) ?? this.b.constant(0, q.param.shape);
        return { name: q.name, node: this.b.add(q.node, g) };
      });
      passes.push({
        entry: { name: `init_gradient:${batches}x${batch}`, outputs },
        batches,
        batch,
        prefix,
        at,
      });
    }
    return passes;
  }

  /** The train block's `loss` on the plain model (no wrappers, dropout off) on one batch. */
  private lowerLoss(
    r: Resolver,
    spec: TrainSpec,
    batch: number,
    prefix: string,
    paramInput: (p: ParamInfo) => number,
    at: Location,
  ): number {
    if (!spec.data || !spec.loss)
      return r.report(
        error("E0208", "`init_gradient` needs the train block's `data` and `loss`", at, {
          help: "the gradient is taken of the block's `loss` on its training data",
        }),
      );
    const fields = dataSpec(spec.data, batch);
    if ("problem" in fields)
      return r.report(error("E0501", fields.problem, at, { help: fields.help }));
    const L = new Lowerer(r, this.b, { param: paramInput });
    L.training = false;
    const values = new Map<string, Value>();
    for (const [field, f] of Object.entries(fields.fields)) {
      const name = `${prefix}${field}`;
      const node = this.b.input("data", name, f.shape, f.dtype);
      this.inputs.push({ name, node, role: "data", shape: [...f.shape], dtype: f.dtype });
      values.set(field, L.tensor(node));
    }
    const frame: Frame = {
      module: spec.module,
      locals: new Map<string, Value>([
        ["model", { kind: "instance", instance: spec.model }],
        ["batch", { kind: "struct", what: "the batch", fields: values }],
      ]),
      scope: r.scopeOf(spec.module),
      dims: new Map(),
    };
    const loss = L.expr(spec.loss, frame);
    if (loss.kind !== "tensor" || loss.shape.length !== 0)
      return r.report(
        error("E0402", `the loss must be a scalar, but it is ${describeValue(loss)}`, {
          file: spec.module.file,
          span: spec.loss.span,
        }),
      );
    return loss.node;
  }
}
