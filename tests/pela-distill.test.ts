// PELA's feature distillation: `frozen(model)` (the model as loaded, without adapters, never
// trained) as the teacher, a forward that returns its blocks' outputs, and std.adapters'
// `pela_loss`. Checked against a float64 reference written here with plain loops (loss and every
// gradient at step 2, after the student has moved away from the teacher), for what the teacher
// copies and shares, for its diagnostics, through a checkpoint, and on WebGPU.
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { memoryReport } from "../compiler/memory.js";
import type { Tensor } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { root, tinyLmSource } from "./helpers.js";
import { stopAndResume } from "./resume-helpers.js";
import {
  compile,
  expectTrainsAlike,
  init,
  prepare,
  trainStep,
  type Store,
  type TestRun,
} from "./program-helpers.js";

const KD_ALPHA = 0.7;
const KD_BETA = 0.5;
const INF_WEIGHT = 0.3;

const program = (loss?: string) => `import std.nn.{Linear}
import std.optim.{sgd}
import std.adapters.{pela, pela_loss}

data moons = std.data.two_moons(n: 64, seed: 3)

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 4)
  head = Linear(4, 2)
  forward(x: f32[B, 2], features: bool = false) {
    let h1 = tanh(l1(x))
    let h2 = tanh(l2(h1))
    let logits = head(h2)
    if features {
      return (logits, [h1, h2])
    }
    return logits
  }
}

train t {
  model Net
  data moons
  loss ${loss ?? `pela_loss(model(batch.x, features: true), frozen(model)(batch.x, features: true), batch.y, kd_alpha: ${KD_ALPHA}, kd_beta: ${KD_BETA})`}
  freeze l2.weight
  adapt l2 with pela(ratio: 1, inf_norm_weight: ${INF_WEIGHT}, inf_norm_eps: 0.01)
  optimize ** with sgd(lr: 0.5)
  steps 4
  batch 8
}
`;

type Params = Map<string, Float64Array>;

const values = (store: ReadonlyMap<string, Tensor>, name: string): Float64Array => {
  const t = store.get(name);
  if (!t) throw new Error(`no \`${name}\` in the store`);
  return Float64Array.from(t.data);
};

/** y[b, o] = Σ_i x[b, i] w[o, i] + bias[o] (bias optional). */
function linear(x: number[][], w: Float64Array, out: number, bias?: Float64Array): number[][] {
  const inn = x[0]!.length;
  return x.map((row) =>
    Array.from({ length: out }, (_, o) => {
      let s = bias ? bias[o]! : 0;
      for (let i = 0; i < inn; i++) s += row[i]! * w[o * inn + i]!;
      return s;
    }),
  );
}

const tanh = (x: number[][]) => x.map((r) => r.map(Math.tanh));

function mse(a: number[][], b: number[][]): number {
  let s = 0;
  let n = 0;
  a.forEach((r, i) => r.forEach((v, j) => ((s += (v - b[i]![j]!) ** 2), n++)));
  return s / n;
}

/** The student's (or, without adapter factors, the teacher's) logits and block outputs. */
function net(p: Params, x: number[][], rank?: number): { logits: number[][]; feats: number[][][] } {
  const h1 = tanh(linear(x, p.get("l1.weight")!, 4, p.get("l1.bias")));
  const pre =
    rank === undefined
      ? linear(h1, p.get("l2.weight")!, 4, p.get("l2.bias"))
      : linear(linear(h1, p.get("l2.pela.R")!, rank), p.get("l2.pela.L")!, 4, p.get("l2.bias"));
  const h2 = tanh(pre);
  return { logits: linear(h2, p.get("head.weight")!, 2, p.get("head.bias")), feats: [h1, h2] };
}

/** PELA's loss by hand: CE + α mean MSE(features) + β MSE(logits) + w (‖LR − W‖_max − ε)². */
function referenceLoss(student: Params, teacher: Params, x: number[][], y: number[]): number {
  const rank = student.get("l2.pela.R")!.length / 4;
  const s = net(student, x, rank);
  const t = net(teacher, x);
  let ce = 0;
  s.logits.forEach((row, b) => {
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((acc, v) => acc + Math.exp(v - m), 0));
    ce += lse - row[y[b]!]!;
  });
  ce /= x.length;
  const fm = (mse(s.feats[0]!, t.feats[0]!) + mse(s.feats[1]!, t.feats[1]!)) / 2;
  const L = student.get("l2.pela.L")!;
  const R = student.get("l2.pela.R")!;
  const W = student.get("l2.weight")!;
  let inf = 0;
  for (let o = 0; o < 4; o++)
    for (let i = 0; i < 4; i++) {
      let lr = 0;
      for (let r = 0; r < rank; r++) lr += L[o * rank + r]! * R[r * 4 + i]!;
      inf = Math.max(inf, Math.abs(lr - W[o * 4 + i]!));
    }
  return ce + KD_ALPHA * fm + KD_BETA * mse(s.logits, t.logits) + INF_WEIGHT * (inf - 0.01) ** 2;
}

const paramsOf = (store: Store, prefix = "param:"): Params =>
  new Map(
    [...store]
      .filter(([k]) => k.startsWith(prefix))
      .map(([k, t]) => [k.slice(prefix.length), Float64Array.from(t.data)]),
  );

function batchOf(run: TestRun, step: number): { x: number[][]; y: number[] } {
  const batch = run.data.batch("train", step - 1, run.batch);
  const xs = Array.from(batch.fields.x!.data);
  const y = Array.from(batch.fields.y!.data);
  return { x: y.map((_, b) => [xs[2 * b]!, xs[2 * b + 1]!]), y };
}

describe("PELA's distillation from frozen(model)", () => {
  it("gives the loss and gradients of the reference at step 2 (float64)", async () => {
    const run = compile(program());
    const store = await init(run, true);
    const teacher = paramsOf(store); // the model as initialized (no `init` file here)
    await trainStep(run, store, 1, true);
    const student = paramsOf(store);
    expect(student.get("head.weight")).not.toEqual(teacher.get("head.weight"));
    const { x, y } = batchOf(run, 2);
    const { loss, grads } = await trainStep(run, new Map(store), 2, true);
    expect(loss).toBeCloseTo(referenceLoss(student, teacher, x, y), 12);
    // every trainable tensor's gradient, by central differences of the reference
    const trainable = ["l1.weight", "l1.bias", "l2.bias", "l2.pela.L", "l2.pela.R", "head.bias"];
    for (const path of [...trainable, "head.weight"]) {
      const w = student.get(path)!;
      const numeric = Array.from(w, (v, i) => {
        const h = 1e-6;
        w[i] = v + h;
        const plus = referenceLoss(student, teacher, x, y);
        w[i] = v - h;
        const minus = referenceLoss(student, teacher, x, y);
        w[i] = v;
        return (plus - minus) / (2 * h);
      });
      const got = Array.from(grads.get(path)!);
      for (let i = 0; i < got.length; i++)
        expect(got[i], `${path}[${i}]`).toBeCloseTo(numeric[i]!, 6);
    }
  });

  it("copies the tensors that change (the trained ones) and shares the frozen base weight", async () => {
    const run = compile(program());
    const inputs = run.step.inputs.map((i) => i.name).filter((n) => n.startsWith("buffer:"));
    expect(inputs.sort()).toEqual(
      ["head.bias", "head.weight", "l1.bias", "l1.weight", "l2.bias"].map(
        (p) => `buffer:frozen:${p}`,
      ),
    );
    // `--emit memory`: the copies (26 numbers) and the shared frozen l2.weight (16) are frozen
    expect(memoryReport(run.step).frozen).toBe(4 * (26 + 16));
    const device = new CpuDevice({ float64: true });
    const first = await init(run, true);
    const done = await train(run, device, { steps: 3 });
    for (const p of ["head.weight", "l1.bias"]) {
      expect(values(done.store, `buffer:frozen:${p}`)).toEqual(values(first, `param:${p}`));
      expect(values(done.store, `param:${p}`)).not.toEqual(values(first, `param:${p}`));
    }
  });

  it("copies a frozen weight that an action assigns (ReLoRA's merge): the teacher stays as loaded", async () => {
    const text = program(
      "cross_entropy(model(batch.x), batch.y) + mse(model(batch.x), frozen(model)(batch.x))",
    )
      .replace("import std.adapters.{pela, pela_loss}", "import std.adapters.{relora}")
      .replace(/adapt l2 with pela\(.*\)/, "adapt l2 with relora(rank: 2, period: 2, dropout: 0)");
    const run = compile(text);
    expect(run.step.inputs.some((i) => i.name === "buffer:frozen:l2.weight")).toBe(true);
    const first = await init(run, true);
    const { store } = await train(run, new CpuDevice({ float64: true }), { steps: 2 });
    expect(values(store, "param:l2.weight")).not.toEqual(values(first, "param:l2.weight"));
    expect(values(store, "buffer:frozen:l2.weight")).toEqual(values(first, "param:l2.weight"));
  });

  it("keeps the teacher in the checkpoint: a run stopped and resumed is exact", async () => {
    const device = new CpuDevice({ float64: true });
    const { checkpoint } = await stopAndResume(compile(program()), device, 2, { floats: "F64" });
    expect(checkpoint.store.has("buffer:frozen:head.weight")).toBe(true);
  });

  it("a forward declared to return a tensor that returns its features is E0402", () => {
    const text = program().replace(
      "forward(x: f32[B, 2], features: bool = false) {",
      "forward(x: f32[B, 2], features: bool = false) -> f32[B, 2] {",
    );
    expect(text).toContain("-> f32[B, 2] {");
    const errors = prepare(new SourceFile("t.lrk", text)).diagnostics.filter(
      (d) => d.severity === "error",
    );
    expect(errors.map((d) => [d.code, d.message])).toEqual([
      ["E0402", "`forward` is declared to return a tensor, but returns a tuple"],
    ]);
  });

  it("takes a module: anything else is E0402", () => {
    const { diagnostics } = prepare(
      new SourceFile("t.lrk", program("cross_entropy(frozen(batch.x)(batch.x), batch.y)")),
    );
    const errors = diagnostics.filter((d) => d.severity === "error");
    expect(errors.map((d) => d.code)).toEqual(["E0402"]);
    expect(errors[0]!.message).toContain("`frozen` takes one module");
  });
});

describe("PELA's distillation on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  it("trains the tiny LM as the interpreter does (losses, parameters, teacher copies)", async () => {
    const text = `${tinyLmSource()}
import std.adapters.{pela, pela_loss}
import std.optim.{sgd}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 5)

train t {
  model TinyLM(vocab: arith.vocab, d: 8, layers: 2, heads: 2, ctx: 16)
  data arith
  loss pela_loss(model(batch.input, features: true), frozen(model)(batch.input, features: true), batch.target, kd_beta: 0.5)
  freeze blocks.*.mlp.{up, down}.weight
  adapt blocks.*.mlp.{up, down} with pela(ratio: 1)
  // sgd, not adamw: a key bias's gradient is 0 up to rounding, which adamw would scale to a step
  optimize ** with sgd(lr: 0.1)
  steps 3
  batch 4
}
`;
    await expectTrainsAlike(device, compile(text), 3, 1e-3);
  }, 120_000);
  it("trains examples/pela_distill.lrk (at d 16, with sgd) as the interpreter does", async () => {
    const path = join(root, "examples", "pela_distill.lrk");
    // smaller, and sgd: a key bias's gradient is 0 up to rounding, which adamw scales to a step
    const text = readFileSync(path, "utf8")
      .replace(/\n\s*init "[^"]*".*/, "")
      .replace("TinyLM(vocab: arith.vocab)", "TinyLM(vocab: arith.vocab, d: 16, heads: 2)")
      .replace(/adamw\(lr: [^)]*\)/, "sgd(lr: 0.01)")
      .replace("import std.optim.{adamw}", "import std.optim.{sgd}");
    expect(text).toContain("sgd(lr: 0.01)");
    await expectTrainsAlike(device, compile(text, { path, batch: 2 }), 2, 1e-3);
  }, 300_000);
});
