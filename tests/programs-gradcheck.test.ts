// Gradients of whole .lrk programs, compiled by lrkc: the training step's gradient of every
// trainable tensor (`run.step.gradients`) against central finite differences of the f64 loss.
// f64 gradients must match within 1e-6 relative error (‖a − b‖ / max(‖a‖, ‖b‖, 1e-12), per
// tensor), f32 gradients within 1e-3. Every check runs at f32-representable parameter values, so
// the f32 and f64 runs see the same point. Large tensors are checked on a fixed-seed sample of
// their elements.
import { describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import {
  compile,
  finiteDifferences,
  init,
  lossAndGradients,
  pick,
  relErr,
  roundToF32,
  sampleIndices,
  trainStep,
  type Store,
} from "./program-helpers.js";
import { tinyLmSource } from "./helpers.js";
import type { TestRun as Run } from "./program-helpers.js";

/** Elements per tensor checked by finite differences (all of a smaller tensor). */
const SAMPLE = 24;

interface Checked {
  path: string;
  err64: number;
  err32: number;
  gradNorm: number;
  /** Largest |entry| of the f64 and f32 gradients and of the finite differences (sampled). */
  max64: number;
  max32: number;
  maxFd: number;
}

/**
 * Checks every trainable tensor's gradient at `store` (batch `step - 1`) against finite
 * differences; returns the errors. `adjust` rewrites perturbed stores (see the DoRA case).
 */
async function gradcheck(
  run: Run,
  start: ReadonlyMap<string, Tensor>,
  step: number,
  options: { h?: number; adjust?: (path: string) => ((s: Store) => Store) | undefined } = {},
): Promise<Checked[]> {
  const store = roundToF32(start);
  const g64 = await lossAndGradients(run, store, step, true);
  const g32 = await lossAndGradients(run, store, step, false);
  expect(Number.isFinite(g64.loss)).toBe(true);
  expect(Math.abs(g32.loss - g64.loss)).toBeLessThan(1e-5 * Math.max(1, Math.abs(g64.loss)));
  const results: Checked[] = [];
  const paths = run.step.trainable;
  expect(new Set(g64.grads.keys())).toEqual(new Set(paths));
  for (const path of paths) {
    const a64 = g64.grads.get(path)!;
    const a32 = g32.grads.get(path)!;
    // a different fixed seed per tensor, from its path
    const seed = [...path].reduce((h, c) => (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0, 7);
    const indices = sampleIndices(a64.length, SAMPLE, seed);
    const fd = await finiteDifferences(run, store, path, step, {
      indices,
      h: options.h ?? 1e-6,
      adjust: options.adjust?.(path),
    });
    const want = pick(fd, indices);
    const got64 = pick(a64, indices);
    const got32 = pick(a32, indices);
    results.push({
      path,
      err64: relErr(got64, want),
      err32: relErr(got32, want),
      gradNorm: Math.hypot(...want),
      max64: Math.max(...got64.map(Math.abs)),
      max32: Math.max(...got32.map(Math.abs)),
      maxFd: Math.max(...want.map(Math.abs)),
    });
  }
  return results;
}

/**
 * Asserts the errors. The paths in `zero` have a gradient that is exactly zero in exact
 * arithmetic (attention's key bias: q·(k + b) shifts every score of a query by the same q·b,
 * which softmax ignores); for them the gradients and the differences must be ~0 instead.
 */
function expectClose(results: Checked[], zero: readonly string[] = []): void {
  for (const r of results) {
    if (zero.includes(r.path)) {
      expect(r.max64, `f64 gradient of ${r.path}`).toBeLessThan(1e-12);
      expect(r.max32, `f32 gradient of ${r.path}`).toBeLessThan(1e-6);
      expect(r.maxFd, `finite differences of ${r.path}`).toBeLessThan(1e-8);
      continue;
    }
    // a gradient that is zero everywhere would make the check vacuous
    expect(r.gradNorm, `‖∂L/∂${r.path}‖`).toBeGreaterThan(1e-4);
    expect(r.err64, `f64 gradient of ${r.path}`).toBeLessThan(1e-6);
    expect(r.err32, `f32 gradient of ${r.path}`).toBeLessThan(1e-3);
  }
}

/** Takes `steps` optimizer steps in f64 from the initial store (so adapters' B is nonzero). */
async function trained(run: Run, steps: number): Promise<Store> {
  const store = await init(run, true);
  for (let s = 1; s <= steps; s++) await trainStep(run, store, s, true);
  return store;
}

const moons = `data moons = std.data.two_moons(n: 64, seed: 1)

model Net(hidden: int = 8) {
  l1 = Linear(2, hidden)
  l2 = Linear(hidden, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l2(gelu(l1(x)))
}
`;

const mlp = `import std.nn.{Linear}
import std.optim.{adamw}

${moons}
train mlp {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: 1e-2, weight_decay: 0)
  steps 10
  batch 8
  seed 3
}
`;

// One pre-norm attention block over token embeddings, the output tied to the embedding. The
// embedding starts at N(0, 1) (not 0.02) so that every gradient is well above the finite
// differences' rounding noise.
const attention = `import std.nn.{Embedding, LayerNorm, Attention}
import std.optim.{adamw}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 2)

model Block(vocab: int, d: int = 8, heads: int = 2) {
  tok = Embedding(vocab, d, init_std: 1)
  ln = LayerNorm(d)
  attn = Attention(d, heads, causal: true)

  forward(ids: i32[B, T]) -> f32[B, T, vocab] {
    let h = tok(ids)
    h = h + attn(ln(h))
    return h @ tok.weight^T
  }
}

train block {
  model Block(vocab: arith.vocab)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-2, weight_decay: 0)
  steps 10
  batch 4
  seed 5
}
`;

const adapted = (method: string, args = "rank: 2, alpha: 4") => `import std.nn.{Linear}
import std.adapters.{${method}}
import std.optim.{adamw}

${moons}
train adapted {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l1, l2 with ${method}(${args})
  optimize adapters with adamw(lr: 5e-2, weight_decay: 0)
  steps 10
  batch 8
  seed 3
}
`;

// examples/tiny_lm.lrk's TinyLM, at d 8, 1 layer, 2 heads, ctx 16.
const tinyLM = `${tinyLmSource()}
import std.optim.{adamw}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 4)

train lm {
  model TinyLM(vocab: arith.vocab, d: 8, layers: 1, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-2, weight_decay: 0)
  steps 10
  batch 4
  seed 6
}
`;

/** Row norms of W + s·B·A (W [out, in], B [out, r], A [r, in]): DoRA's detached `norm()`. */
function doraNorms(store: ReadonlyMap<string, Tensor>, module: string, s: number): Float64Array {
  const W = store.get(`param:${module}.weight`)!;
  const A = store.get(`param:${module}.dora.A`)!;
  const B = store.get(`param:${module}.dora.B`)!;
  const [out, inp] = W.shape as [number, number];
  const r = A.shape[0]!;
  const norms = new Float64Array(out);
  for (let i = 0; i < out; i++) {
    let sum = 0;
    for (let j = 0; j < inp; j++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += B.data[i * r + k]! * A.data[k * inp + j]!;
      const w = W.data[i * inp + j]! + s * ba;
      sum += w * w;
    }
    norms[i] = Math.sqrt(sum);
  }
  return norms;
}

describe("gradients of compiled programs match finite differences", () => {
  it("an MLP: two Linear and gelu, cross-entropy on two_moons", async () => {
    const run = compile(mlp);
    expect(run.step.trainable).toEqual(["l1.weight", "l1.bias", "l2.weight", "l2.bias"]);
    expectClose(await gradcheck(run, await init(run, true), 1));
  });

  it("an attention block with LayerNorm (d 8, heads 2, causal), cross-entropy on arithmetic", async () => {
    const run = compile(attention);
    const paths = run.step.trainable;
    expect(paths).toContain("attn.q.weight");
    expect(paths).toContain("ln.weight");
    expect(paths).toHaveLength(11);
    // one step first, so LayerNorm's weight and bias are not at their initial ones and zeros
    expectClose(await gradcheck(run, await trained(run, 1), 2), ["attn.k.bias"]);
  });

  it("LoRA-wrapped linears (rank 2, alpha 4), after two AdamW steps", async () => {
    const run = compile(adapted("lora"));
    expect(run.step.trainable).toEqual(["l1.lora.A", "l1.lora.B", "l2.lora.A", "l2.lora.B"]);
    const store = await trained(run, 2);
    // B started at zero: after two steps it is not, so A's gradient is not zero either
    for (const m of ["l1", "l2"])
      expect(Math.max(...store.get(`param:${m}.lora.B`)!.data.map(Math.abs))).toBeGreaterThan(0.01);
    expectClose(await gradcheck(run, store, 3));
  });

  it("DoRA-wrapped linears (rank 2, alpha 4), after two AdamW steps; the norm is detached", async () => {
    const run = compile(adapted("dora"));
    expect(run.step.trainable).toEqual([
      "l1.dora.A",
      "l1.dora.B",
      "l1.dora.magnitude",
      "l2.dora.A",
      "l2.dora.B",
      "l2.dora.magnitude",
    ]);
    const store = roundToF32(await trained(run, 2));
    const scale = 4 / 2;
    // DoRA's norm() is stop_grad(row_norm(W + s B A)): the step's gradient treats it as a
    // constant, so the finite differences of A and B must too. Perturbing A or B changes the row
    // norms; rescaling the magnitude by the same factor keeps λ = magnitude / norm() at its
    // unperturbed value, which is exactly "the norm held fixed".
    const holdNorm = (path: string) => {
      const module = path.split(".")[0]!;
      if (path.endsWith("magnitude")) return undefined;
      const n0 = doraNorms(store, module, scale);
      const m0 = store.get(`param:${module}.dora.magnitude`)!;
      return (perturbed: Store): Store => {
        const n = doraNorms(perturbed, module, scale);
        const out = new Map(perturbed);
        out.set(`param:${module}.dora.magnitude`, {
          shape: [...m0.shape],
          data: Float64Array.from(m0.data, (m, i) => (m * n[i]!) / n0[i]!),
        });
        return out;
      };
    };
    expectClose(await gradcheck(run, store, 3, { adjust: holdNorm }));
    // and the detaching is real: with the norm free to move, the derivative of B is different
    const { grads } = await lossAndGradients(run, store, 3, true);
    const free = await finiteDifferences(run, store, "l1.dora.B", 3);
    expect(relErr(grads.get("l1.dora.B")!, free)).toBeGreaterThan(0.1);
  });

  it("AdaLoRA-wrapped linears (init_rank 2), with the orthogonality regularizer, after two steps", async () => {
    const run = compile(adapted("adalora", "init_rank: 2, alpha: 4, orth_reg: 0.5"));
    expect(run.step.trainable).toEqual([
      "l1.adalora.P",
      "l1.adalora.E",
      "l1.adalora.Q",
      "l2.adalora.P",
      "l2.adalora.E",
      "l2.adalora.Q",
    ]);
    // E starts at zero (so P's and Q's loss gradients do too): two steps move it
    expectClose(await gradcheck(run, await trained(run, 2), 3));
  });

  it("the tiny transformer LM (d 8, 1 layer, 2 heads, ctx 16), cross-entropy on arithmetic", async () => {
    const run = compile(tinyLM);
    const paths = run.step.trainable;
    expect(paths).toHaveLength(20);
    expect(paths).toContain("blocks.0.mlp.up.weight");
    // TinyLM's 0.02-std embeddings make its gradients small (‖g‖ ~ 2e-3 for some tensors), so the
    // differences' rounding error, ~eps·|L|/h, is a larger share of them: h = 1e-5 keeps it near
    // 1e-8 relative (with h = 1e-6 it reaches 3e-7), while the truncation error, O(h²), stays
    // below 1e-8 too.
    expectClose(await gradcheck(run, await trained(run, 1), 2, { h: 1e-5 }), [
      "blocks.0.attn.k.bias",
    ]);
  });
});
