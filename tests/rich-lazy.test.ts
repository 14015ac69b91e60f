// std.adapters.lambda_lora, LoRA with the λ-balanced initialization of "From Lazy to Rich"
// (Dominé et al., ICLR 2025), against float64 computations written here: the initial factors
// satisfy Bᵀ B − A Aᵀ = λ I and B A = W2⁰ W1⁰ (the seeded normal factors, recomputed from the
// generator's definition, runtime/random.ts), the model starts as the pretrained one, and two SGD
// steps of the factors match a hand computation of the cross-entropy gradient; the trainable
// count is LoRA's rank · (in + out).
import { describe, expect, it } from "vitest";
import { normalAt } from "../runtime/random.js";
import { compile, init, param, trainStep, type Store, type TestRun } from "./program-helpers.js";
import { expectAllClose } from "./helpers.js";

const [inDim, outDim, rank] = [2, 4, 2];

function program(adapter: string): string {
  return `import std.nn.{Linear}
import std.adapters.{lambda_lora}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 64, seed: 2)

model Net {
  l = Linear(${inDim}, ${outDim})

  forward(x: f32[B, ${inDim}]) -> f32[B, ${outDim}] = l(x)
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l with ${adapter}
  optimize adapters with sgd(lr: 0.5)
  steps 10
  batch 8
  seed 5
}
`;
}

/** a [r, k] @ b [k, c], row-major. */
function mul(a: Float64Array, b: Float64Array, r: number, k: number, c: number): Float64Array {
  const out = new Float64Array(r * c);
  for (let i = 0; i < r; i++)
    for (let j = 0; j < c; j++) {
      let s = 0;
      for (let l = 0; l < k; l++) s += a[i * k + l]! * b[l * c + j]!;
      out[i * c + j] = s;
    }
  return out;
}
function transpose(a: Float64Array, r: number, c: number): Float64Array {
  const out = new Float64Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = a[i * c + j]!;
  return out;
}

/**
 * The mean cross-entropy of logits X Wᵀ + b on batch `index` of `run`, and its gradient with
 * respect to W f32[out, in].
 */
function crossEntropy(
  run: TestRun,
  index: number,
  W: Float64Array,
  b: Float64Array,
): { loss: number; grad: Float64Array } {
  const batch = run.data.batch("train", index, run.batch);
  const X = Float64Array.from(batch.fields.x!.data);
  const y = batch.fields.y!.data;
  const n = y.length;
  const logits = mul(X, transpose(W, outDim, inDim), n, inDim, outDim);
  const D = new Float64Array(n * outDim); // d loss / d logits
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const row = Array.from({ length: outDim }, (_, j) => logits[i * outDim + j]! + b[j]!);
    const top = Math.max(...row);
    const e = row.map((v) => Math.exp(v - top));
    const z = e.reduce((a, v) => a + v);
    loss += (Math.log(z) + top - row[y[i]!]!) / n;
    for (let j = 0; j < outDim; j++) D[i * outDim + j] = (e[j]! / z - (j === y[i] ? 1 : 0)) / n;
  }
  return { loss, grad: mul(transpose(D, n, outDim), X, outDim, n, inDim) };
}

/** The adapter's tensors in the store, by their last name (`A`, `B`). */
function adapterParam(store: Store, name: string): Float64Array {
  const key = [...store.keys()].find((k) => k.startsWith("param:") && k.endsWith(`.${name}`));
  if (!key) throw new Error(`no adapter tensor ${name} in ${[...store.keys()].join(", ")}`);
  return Float64Array.from(store.get(key)!.data);
}

describe("lambda_lora (λ-balanced LoRA init)", () => {
  for (const lambda of [0, 0.7, -0.4]) {
    it(`λ = ${lambda}: Bᵀ B − A Aᵀ = λ I, B A = W2⁰ W1⁰, and the model starts as the base`, async () => {
      const sigma = 0.8;
      const seed = 3;
      const run = compile(
        program(`lambda_lora(rank: ${rank}, lambda: ${lambda}, sigma: ${sigma}, seed: ${seed})`),
      );
      const store = await init(run, true);
      const A = adapterParam(store, "A");
      const B = adapterParam(store, "B");
      const gram = mul(transpose(B, outDim, rank), B, rank, outDim, rank);
      const aat = mul(A, transpose(A, rank, inDim), rank, inDim, rank);
      const want = Float64Array.from({ length: rank * rank }, (_, k) =>
        k % (rank + 1) === 0 ? lambda : 0,
      );
      expectAllClose(
        gram.map((x, k) => x - aat[k]!),
        want,
        1e-9,
        "Bᵀ B − A Aᵀ",
      );
      const first = Float64Array.from(
        { length: rank * inDim },
        (_, i) => sigma * normalAt(seed, i),
      );
      const second = Float64Array.from(
        { length: outDim * rank },
        (_, i) => sigma * normalAt(seed + 1, i),
      );
      expectAllClose(
        mul(B, A, outDim, rank, inDim),
        mul(second, first, outDim, rank, inDim),
        1e-9,
        "B A",
      );
      // at the start the adapter adds nothing: the first loss is the base model's
      const base = crossEntropy(run, 0, param(store, "l.weight"), param(store, "l.bias"));
      const { loss } = await trainStep(run, store, 1, true);
      expect(Math.abs(loss - base.loss)).toBeLessThan(1e-12);
    });
  }

  it("two SGD steps of A and B against the hand-computed cross-entropy gradient", async () => {
    const lr = 0.5;
    const run = compile(program(`lambda_lora(rank: ${rank}, lambda: 0.3, sigma: 0.8, alpha: 4)`));
    const s = 4 / rank;
    const store = await init(run, true);
    const W0 = param(store, "l.weight");
    const b0 = param(store, "l.bias");
    const A0 = adapterParam(store, "A");
    const B0 = adapterParam(store, "B");
    let [A, B] = [A0, B0];
    for (let t = 1; t <= 2; t++) {
      // W_eff = W0 + s (B A − B⁰ A⁰)
      const BA = mul(B, A, outDim, rank, inDim);
      const BA0 = mul(B0, A0, outDim, rank, inDim);
      const Weff = W0.map((w, k) => w + s * (BA[k]! - BA0[k]!));
      const G = crossEntropy(run, t - 1, Weff, b0).grad;
      const gA = mul(transpose(B, outDim, rank), G, rank, outDim, inDim).map((v) => s * v);
      const gB = mul(G, transpose(A, rank, inDim), outDim, inDim, rank).map((v) => s * v);
      A = A.map((v, k) => v - lr * gA[k]!);
      B = B.map((v, k) => v - lr * gB[k]!);
      await trainStep(run, store, t, true);
      expectAllClose(adapterParam(store, "A"), A, 1e-9, `A after step ${t}`);
      expectAllClose(adapterParam(store, "B"), B, 1e-9, `B after step ${t}`);
    }
  });

  it("trains LoRA's rank · (in + out) parameters", () => {
    const run = compile(program(`lambda_lora(rank: ${rank})`));
    const trainable = run.step.trainable.map((p) => {
      const input = run.step.inputs.find((i) => i.name === `param:${p}`);
      return input!.shape.reduce((a, d) => a * d, 1);
    });
    expect(trainable.reduce((a, b) => a + b, 0)).toBe(rank * (inDim + outDim));
  });
});
