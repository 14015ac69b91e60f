// LoRA-SB (std.adapters.lora_sb) and the language feature it needs, `init_gradient` (spec §10.2):
// the gradient sum against a float64 reference written here with plain loops, LoRA-SB's
// initialization (B, A orthonormal, R = diag(S), B R A the best rank-r approximation of
// ΔŴ = -η sign(G)) and one AdamW step on R by hand, its parameter and optimizer-state counts, the
// misuse diagnostics, resuming, and the example program.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { memoryReport } from "../compiler/memory.js";
import type { Tensor } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { checkpointUses, loadCheckpoint } from "../runtime/checkpoint.js";
import { CpuDevice, type Device } from "../runtime/device.js";
import { writeSafetensors } from "../runtime/safetensors.js";
import { train, type Run } from "../runtime/trainer.js";
import { lrkcBin, root } from "./helpers.js";
import { compile, cpu, init, prepare, type Store } from "./program-helpers.js";

type Matrix = number[][];

const HEAD = `import std.nn.{Linear}
import std.adapters.{lora_sb}
import std.optim.{adamw, sgd}

data moons = std.data.two_moons(n: 64)

// three layers, so that the middle one's gradient is a generic matrix
model Net {
  l1 = Linear(2, 6)
  l2 = Linear(6, 6)
  l3 = Linear(6, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l3(relu(l2(relu(l1(x)))))
}

// keeps the gradient sums as its (untrained) params, to read them back
adapter probe(batches: int, batch: int) on Linear(in, out) {
  const G = init_gradient(base.weight, batches: batches, batch: batch)
  const g = init_gradient(base.bias, batches: batches, batch: batch)
  param D: f32[out, in] = G
  param d: f32[out] = g
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + 0 * (x @ D^T + d)
}
`;

function program(rules: string, steps = 1): string {
  return `${HEAD}
train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  ${rules}
  steps ${steps}
  batch 8
}
`;
}

const matrix = (t: Tensor): Matrix => {
  const [m, n] = t.shape as [number, number];
  return Array.from({ length: m }, (_, i) => Array.from(t.data.subarray(i * n, (i + 1) * n)));
};
const vector = (t: Tensor): number[] => Array.from(t.data);
const zeros = (m: number, n: number): Matrix =>
  Array.from({ length: m }, () => new Array<number>(n).fill(0));
const transpose = (a: Matrix): Matrix => a[0]!.map((_, j) => a.map((row) => row[j]!));
const matmul = (a: Matrix, b: Matrix): Matrix =>
  a.map((row) => b[0]!.map((_, j) => row.reduce((s, v, k) => s + v * b[k]![j]!, 0)));
/** Row-wise x Wᵀ + b. */
const linear = (x: Matrix, w: Matrix, b: number[]): Matrix =>
  x.map((row) => w.map((wr, o) => b[o]! + wr.reduce((s, v, k) => s + v * row[k]!, 0)));
const relu = (x: Matrix): Matrix => x.map((r) => r.map((v) => Math.max(v, 0)));
const maxAbs = (a: Matrix): number => Math.max(...a.flat().map(Math.abs));
const diff = (a: Matrix, b: Matrix): number =>
  maxAbs(a.map((r, i) => r.map((v, j) => v - b[i]![j]!)));

/** Batch `index` of the run's training data, `size` examples, as (x rows, labels). */
function moonsBatch(run: Run, index: number, size: number): { x: Matrix; y: number[] } {
  const fields = run.data.batch("train", index, size).fields;
  return { x: matrix(fields["x"]!), y: vector(fields["y"]!) };
}

/** d(mean cross-entropy)/d(logits), per row: (softmax − one-hot) / rows. */
function crossEntropyGrad(z: Matrix, y: number[]): { loss: number; dz: Matrix } {
  let loss = 0;
  const dz = z.map((row, b) => {
    const top = Math.max(...row);
    const e = row.map((v) => Math.exp(v - top));
    const total = e.reduce((s, v) => s + v, 0);
    loss += Math.log(total) + top - row[y[b]!]!;
    return e.map((v, k) => (v / total - (k === y[b] ? 1 : 0)) / z.length);
  });
  return { loss: loss / z.length, dz };
}

interface Weights {
  w: Matrix[];
  b: number[][];
}

function weights(store: Store): Weights {
  const w = [1, 2, 3].map((i) => matrix(store.get(`param:l${i}.weight`)!));
  const b = [1, 2, 3].map((i) => vector(store.get(`param:l${i}.bias`)!));
  return { w, b };
}

/** The gradients of the plain model's loss on one batch, per layer (float64, by hand). */
function plainGradients(p: Weights, x: Matrix, y: number[]): { dw: Matrix[]; db: number[][] } {
  const h1 = linear(x, p.w[0]!, p.b[0]!);
  const a1 = relu(h1);
  const h2 = linear(a1, p.w[1]!, p.b[1]!);
  const a2 = relu(h2);
  const { dz } = crossEntropyGrad(linear(a2, p.w[2]!, p.b[2]!), y);
  const dh2 = matmul(dz, p.w[2]!).map((r, i) => r.map((v, j) => (h2[i]![j]! > 0 ? v : 0)));
  const dh1 = matmul(dh2, p.w[1]!).map((r, i) => r.map((v, j) => (h1[i]![j]! > 0 ? v : 0)));
  const sumRows = (d: Matrix) => d[0]!.map((_, j) => d.reduce((s, r) => s + r[j]!, 0));
  return {
    dw: [matmul(transpose(dh1), x), matmul(transpose(dh2), a1), matmul(transpose(dz), a2)],
    db: [sumRows(dh1), sumRows(dh2), sumRows(dz)],
  };
}

/** Σ over train batches 0 … batches-1 of `size` examples of the plain model's gradients. */
function gradientSums(run: Run, p: Weights, batches: number, size: number) {
  const dw = p.w.map((w) => zeros(w.length, w[0]!.length));
  const db = p.b.map((b) => new Array<number>(b.length).fill(0));
  for (let i = 0; i < batches; i++) {
    const { x, y } = moonsBatch(run, i, size);
    const g = plainGradients(p, x, y);
    g.dw.forEach((w, l) => w.forEach((r, o) => r.forEach((v, k) => (dw[l]![o]![k]! += v))));
    g.db.forEach((b, l) => b.forEach((v, o) => (db[l]![o]! += v)));
  }
  return { dw, db };
}

/** Eigenvalues of a symmetric matrix, descending (cyclic Jacobi rotations). */
function symmetricEigenvalues(input: Matrix): number[] {
  const a = input.map((r) => [...r]);
  const n = a.length;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p]![q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p]![q]!) < 1e-300) continue;
        const theta = (a[q]![q]! - a[p]![p]!) / (2 * a[p]![q]!);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const [akp, akq] = [a[k]![p]!, a[k]![q]!];
          a[k]![p] = c * akp - s * akq;
          a[k]![q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const [apk, aqk] = [a[p]![k]!, a[q]![k]!];
          a[p]![k] = c * apk - s * aqk;
          a[q]![k] = s * apk + c * aqk;
        }
      }
  }
  return a.map((r, i) => r[i]!).sort((x, y) => y - x);
}

const identity = (n: number): Matrix =>
  Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)));

describe("init_gradient", () => {
  it("sums the loss's gradient over N batches of b examples: weights and biases, two passes, against float64 loops", async () => {
    const run = compile(
      program(
        "adapt l1 with probe(batches: 2, batch: 3)\n  adapt l2 with probe(batches: 3, batch: 5)\n  optimize adapters with sgd(lr: 0)",
      ),
    );
    expect(run.init.gradients.map((g) => [g.batches, g.batch])).toEqual([
      [2, 3],
      [3, 5],
    ]);
    const store = await init(run, true);
    const p = weights(store);
    const first = gradientSums(run, p, 2, 3);
    const second = gradientSums(run, p, 3, 5);
    const close = (got: Tensor, want: Matrix) =>
      expect(
        diff(matrix({ shape: [want.length, want[0]!.length], data: got.data }), want) /
          maxAbs(want),
      ).toBeLessThan(1e-12);
    close(store.get("param:l1.probe.D")!, first.dw[0]!);
    close(store.get("param:l2.probe.D")!, second.dw[1]!);
    close(store.get("param:l1.probe.d")!, [first.db[0]!]);
    close(store.get("param:l2.probe.d")!, [second.db[1]!]);
    // the sums are not kept: only what the adapters made of them (checkpoints never hold them)
    expect([...store.keys()].filter((k) => k.startsWith("init_gradient:"))).toEqual([]);
  });

  it("runs before training only: a run resumed from a checkpoint does not run it again, and equals the uninterrupted run", async () => {
    const run = compile(
      program(
        "adapt l2 with lora_sb(rank: 2, lr: 0.05, warmup: 2, gradient_batches: 3, gradient_batch: 4)\n  optimize adapters with adamw(lr: 0.05, weight_decay: 0)",
        6,
      ),
    );
    const passes: string[] = [];
    const counting = (): Device => {
      const device = new CpuDevice();
      const run0 = device.run.bind(device);
      device.run = (...args: Parameters<typeof run0>) => {
        if (args[1].name.startsWith("init_gradient")) passes.push(args[1].name);
        return run0(...args);
      };
      return device;
    };
    const whole = await train(run, counting(), { steps: 6 });
    expect(passes).toEqual(["init_gradient:3x4", "init_gradient:3x4", "init_gradient:3x4"]);
    const half = await train(run, cpu(false), { steps: 3 });
    const path = join(mkdtempSync(join(tmpdir(), "lrk-lorasb-")), "checkpoint.safetensors");
    writeSafetensors(path, half.store, { step: "3" });
    const loaded = loadCheckpoint(path, run.program, checkpointUses.resume);
    expect(loaded.tensors.has("buffer:l2.lora_sb.B")).toBe(true);
    expect([...loaded.tensors.keys()].some((k) => k.startsWith("init_gradient"))).toBe(false);
    passes.length = 0;
    const resumed = await train(run, counting(), {
      steps: 6,
      resume: { step: 3, store: loaded.tensors },
    });
    expect(passes).toEqual([]);
    expect(resumed.losses).toEqual(whole.losses.slice(3));
  });
});

describe("lora_sb", () => {
  const rules =
    "adapt l2 with lora_sb(rank: 2, lr: 0.02, warmup: 4, gradient_batches: 3, gradient_batch: 5)\n  optimize adapters with adamw(lr: 0.01, weight_decay: 0)";

  it("starts from the SVD of ΔŴᵀ, ΔŴ = -lr/warmup · sign(G): B, A orthonormal, R = diag(S), B R A the best rank-r approximation of ΔŴ", async () => {
    const run = compile(program(rules));
    const store = await init(run, true);
    const p = weights(store);
    const g = gradientSums(run, p, 3, 5).dw[1]!;
    const update = g.map((r) => r.map((v) => -(0.02 / 4) * Math.sign(v)));
    const sigma = symmetricEigenvalues(matmul(update, transpose(update))).map((l) =>
      Math.sqrt(Math.max(l, 0)),
    );
    const B = matrix(store.get("buffer:l2.lora_sb.B")!);
    const A = matrix(store.get("buffer:l2.lora_sb.A")!);
    const R = matrix(store.get("param:l2.lora_sb.R")!);
    expect([B.length, B[0]!.length, A.length, A[0]!.length]).toEqual([6, 2, 2, 6]);
    expect(diff(matmul(transpose(B), B), identity(2))).toBeLessThan(1e-9);
    expect(diff(matmul(A, transpose(A)), identity(2))).toBeLessThan(1e-9);
    const diagonal = [
      [sigma[0]!, 0],
      [0, sigma[1]!],
    ];
    expect(diff(R, diagonal) / sigma[0]!).toBeLessThan(1e-9);
    // Eckart–Young: ‖ΔŴ - B R A‖_F² = Σ_{i>r} σ_i², for ΔŴ itself (not its transpose: B from V)
    const residual = matmul(matmul(B, R), A).map((r, i) => r.map((v, j) => update[i]![j]! - v));
    const error2 = residual.flat().reduce((s, v) => s + v * v, 0);
    const tail = sigma.slice(2).reduce((s, v) => s + v * v, 0);
    expect(Math.abs(error2 - tail) / sigma[0]! ** 2).toBeLessThan(1e-9);
  });

  it("one AdamW step trains R alone: loss and R' = R - lr·g/(|g| + eps) against float64 loops", async () => {
    const run = compile(program(rules));
    const start = await init(run, true);
    const { store, losses } = await train(run, cpu(true), { steps: 1 });
    const p = weights(start);
    const B = matrix(start.get("buffer:l2.lora_sb.B")!);
    const A = matrix(start.get("buffer:l2.lora_sb.A")!);
    const R = matrix(start.get("param:l2.lora_sb.R")!);
    const { x, y } = moonsBatch(run, 0, 8);
    const a1 = relu(linear(x, p.w[0]!, p.b[0]!));
    const latent = matmul(matmul(a1, transpose(A)), transpose(R)); // (R A a1) per row
    const h2 = linear(a1, p.w[1]!, p.b[1]!).map((r, i) =>
      r.map((v, o) => v + B[o]!.reduce((s, bv, k) => s + bv * latent[i]![k]!, 0)),
    );
    const a2 = relu(h2);
    const { loss, dz } = crossEntropyGrad(linear(a2, p.w[2]!, p.b[2]!), y);
    const dh2 = matmul(dz, p.w[2]!).map((r, i) => r.map((v, j) => (h2[i]![j]! > 0 ? v : 0)));
    // dR = Σ_rows (Bᵀ dh2)(A a1)ᵀ
    const gR = matmul(transpose(matmul(dh2, B)), matmul(a1, transpose(A)));
    const want = R.map((r, i) =>
      r.map((v, j) => v - 0.01 * (gR[i]![j]! / (Math.abs(gR[i]![j]!) + 1e-8))),
    );
    expect(Math.abs(losses[0]! - loss)).toBeLessThan(1e-12);
    expect(diff(matrix(store.get("param:l2.lora_sb.R")!), want)).toBeLessThan(1e-12);
    // B, A and the base stay as they were
    expect(store.get("buffer:l2.lora_sb.B")!.data).toEqual(start.get("buffer:l2.lora_sb.B")!.data);
    expect(store.get("param:l2.weight")!.data).toEqual(start.get("param:l2.weight")!.data);
  });

  it("trains rank² parameters per adapted matrix, with 2·rank² AdamW state (`--emit memory`)", () => {
    const run = compile(program(rules.replace("adapt l2", "adapt l1, l2")));
    expect(run.program.params.filter((q) => q.trainable).map((q) => [q.path, q.shape])).toEqual([
      ["l1.lora_sb.R", [2, 2]],
      ["l2.lora_sb.R", [2, 2]],
    ]);
    const report = memoryReport(run.step);
    expect(report.statesByParam.get("l2.lora_sb.R")).toBe(4 * 2 * 2 * 2);
    expect(report.trainable).toBe(4 * 2 * 2 * 2);
  });
});

describe("examples/lorasb_finetune.lrk", () => {
  it("adapts 12 matrices with rank² = 1024 trainable numbers each and 2·rank² AdamW state; its gradient pass is 17 batches of 3", () => {
    const path = join(root, "examples", "lorasb_finetune.lrk");
    const { run, diagnostics } = prepare(new SourceFile(path, readFileSync(path, "utf8")));
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const trainable = run!.program.params.filter((p) => p.trainable);
    expect(trainable).toHaveLength(12); // 2 blocks × (q, k, v, o, up, down)
    const report = memoryReport(run!.step);
    for (const p of trainable) {
      expect(p.path).toMatch(/\.lora_sb\.R$/);
      expect(p.shape).toEqual([32, 32]);
      expect(report.statesByParam.get(p.path), p.path).toBe(4 * 2 * 32 * 32);
    }
    expect(run!.init.gradients.map((g) => [g.batches, g.batch, g.entry.outputs.length])).toEqual([
      [17, 3, 12],
    ]);
  });
});

describe("init_gradient misuse", () => {
  /** The error diagnostics of a program whose adapter `bad` is applied to `l2`. */
  function errors(adapter: string, extra = ""): { code: string; message: string; text?: string }[] {
    const text = `${HEAD}
${adapter}
${extra}
train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l2 with bad
  optimize adapters with sgd(lr: 0.1)
}
`;
    const { diagnostics } = prepare(new SourceFile(join(root, "examples", "bad.lrk"), text));
    return diagnostics
      .filter((d) => d.severity === "error")
      .map((d) => ({
        code: d.code,
        message: d.message,
        text: d.at ? text.slice(d.at.span.start, d.at.span.end) : undefined,
      }));
  }
  const notHere =
    /`init_gradient` is computed once, before training starts: it can only be an adapter's `const`/;

  it("outside an adapter's `const` (forward, `let`, `param` initializer, model, quantizer) is E0206 at the call", () => {
    const cases = [
      "adapter bad on Linear(in, out) {\n  param s: f32[out] = zeros\n  forward(x: f32[..., in]) -> f32[..., out] = base(x) + s * sum(init_gradient(base.weight), axis: 1)\n}",
      "adapter bad on Linear(in, out) {\n  param s: f32[out] = zeros\n  let G = init_gradient(base.weight)\n  forward(x: f32[..., in]) -> f32[..., out] = base(x) + s * sum(G, axis: 1)\n}",
      "adapter bad on Linear(in, out) {\n  param D: f32[out, in] = init_gradient(base.weight)\n  forward(x: f32[..., in]) -> f32[..., out] = base(x) + x @ D^T\n}",
    ];
    for (const adapter of cases) {
      const found = errors(adapter);
      expect(
        found.map((d) => d.code),
        adapter,
      ).toEqual(["E0206"]);
      expect(found[0]!.message).toMatch(notHere);
      expect(found[0]!.text).toMatch(/^init_gradient\(base\.weight\)/);
    }
    // a model's `param` initializer, and a quantizer's `const`
    const model = `import std.nn.{Linear}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 64)

model Net {
  l = Linear(2, 2)
  param v: f32[2, 2] = zeros
  param w: f32[2, 2] = init_gradient(v)
  forward(x: f32[B, 2]) -> f32[B, 2] = l(x) @ (v + w)
}

quantizer bad on Linear(in, out) {
  const G = init_gradient(base.weight)
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + x @ G^T
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  RULE
  optimize ** with sgd(lr: 0.1)
}
`;
    for (const [rule, call] of [
      ["", "init_gradient(v)"],
      ["quantize l with bad", "init_gradient(base.weight)"],
    ] as const) {
      const text = rule ? model.replace("init_gradient(v)", "v") : model;
      const file = new SourceFile(join(root, "examples", "bad.lrk"), text.replace("RULE", rule));
      const found = prepare(file).diagnostics.filter((d) => d.severity === "error");
      expect(
        found.map((d) => d.code),
        rule,
      ).toEqual(["E0206"]);
      expect(found[0]!.message).toMatch(notHere);
      expect(file.text.slice(found[0]!.at!.span.start, found[0]!.at!.span.end)).toBe(call);
    }
  });

  it("on something that is not a base parameter as it stands is E0206; a misspelled argument E0205", () => {
    const scaled = errors(
      "adapter bad on Linear(in, out) {\n  const G = init_gradient(base.weight * 2)\n  param D: f32[out, in] = G\n  forward(x: f32[..., in]) -> f32[..., out] = base(x) + x @ D^T\n}",
    );
    expect(scaled.map((d) => d.code)).toEqual(["E0206"]);
    expect(scaled[0]!.message).toMatch(
      /takes a parameter of the base model, such as `base.weight`/,
    );
    const own = errors(
      "adapter bad on Linear(in, out) {\n  param D: f32[out, in] = zeros\n  const G = init_gradient(D)\n  forward(x: f32[..., in]) -> f32[..., out] = base(x) + x @ (D + G)^T\n}",
    );
    expect(own.map((d) => d.code)).toEqual(["E0206"]);
    const misspelled = errors(
      "adapter bad on Linear(in, out) {\n  const G = init_gradient(base.weight, batchs: 3)\n  param D: f32[out, in] = G\n  forward(x: f32[..., in]) -> f32[..., out] = base(x) + x @ D^T\n}",
    );
    expect(misspelled.map((d) => d.code)).toEqual(["E0205"]);
    expect(misspelled[0]!.message).toMatch(/`init_gradient` has no parameter `batchs`/);
  });

  it("a training split smaller than one gradient batch is E0501 at the call when training starts, not a crash", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-lorasb-"));
    const path = join(dir, "small.lrk");
    const text = program(
      "adapt l2 with lora_sb(rank: 2, gradient_batch: 100000)\n  optimize adapters with adamw(lr: 0.01)",
    );
    writeFileSync(path, text);
    const result = spawnSync(process.execPath, [lrkcBin, "train", path, "--device", "cpu"], {
      cwd: dir,
      encoding: "utf8",
    });
    expect(result.status, result.stderr).toBe(1);
    expect(result.stderr).toMatch(/error\[E0501\]/);
    expect(result.stderr).toMatch(/`init_gradient` takes batches of 100000 training examples/);
    // the call is in std.adapters: reported at the user's rule that applied the adapter
    const line = text.split("\n").findIndex((l) => l.includes("gradient_batch: 100000")) + 1;
    expect(result.stderr).toContain(`small.lrk:${line}:`);
    expect(result.stderr).not.toMatch(/a bug in lrkc/);
  });

  it("`lrkc eval --weights` takes the gradients again from the weights file's model (the file's buffers win)", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-lorasb-"));
    const path = join(dir, "sb.lrk");
    writeFileSync(
      path,
      program(
        "adapt l2 with lora_sb(rank: 2, lr: 0.05, warmup: 2, gradient_batches: 2, gradient_batch: 4)\n  optimize adapters with adamw(lr: 0.05)",
        2,
      ),
    );
    const lrkc = (...args: string[]) =>
      spawnSync(process.execPath, [lrkcBin, ...args, "--device", "cpu"], {
        cwd: dir,
        encoding: "utf8",
      });
    const trained = lrkc("train", path);
    expect(trained.status, trained.stderr).toBe(0);
    const evaluated = lrkc("eval", path, "--weights", join(dir, "runs", "t", "final.safetensors"));
    expect(evaluated.status, evaluated.stderr).toBe(0);
    expect(evaluated.stdout).toMatch(/held-out loss \d+\.\d+/);
  });
});
