// Optimizer updates of compiled programs against hand computations in plain TypeScript: the
// gradients come from the compiled step (an entry that also outputs `run.step.gradients`), every
// update is recomputed here from the published formulas, independently of lrk.
import { describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import {
  compile,
  feedsFor,
  init,
  param,
  runEntry,
  trainStep,
  type Store,
} from "./program-helpers.js";
import { expectAllClose } from "./helpers.js";

/** The stored tensors of a store, compared with another's, exactly. */
function expectSameStores(a: ReadonlyMap<string, Tensor>, b: ReadonlyMap<string, Tensor>): void {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [k, t] of a) expect(Array.from(b.get(k)!.data), k).toEqual(Array.from(t.data));
}

const moons = `data moons = std.data.two_moons(n: 64, seed: 2)`;

// ------------------------------------------------------------------------------------- AdamW

// torch.optim.AdamW, step t (1-based) on one tensor:
//   p <- p (1 − lr·wd);  m <- β1 m + (1 − β1) g;  v <- β2 v + (1 − β2) g²
//   p <- p − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps)
interface Adam {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  wd: number;
}
function torchAdamW(
  p: Float64Array,
  g: Float64Array,
  m: Float64Array,
  v: Float64Array,
  t: number,
  h: Adam,
): Float64Array {
  const out = new Float64Array(p.length);
  for (let i = 0; i < p.length; i++) {
    const decayed = p[i]! * (1 - h.lr * h.wd);
    m[i] = h.beta1 * m[i]! + (1 - h.beta1) * g[i]!;
    v[i] = h.beta2 * v[i]! + (1 - h.beta2) * g[i]! * g[i]!;
    const mhat = m[i]! / (1 - h.beta1 ** t);
    const vhat = v[i]! / (1 - h.beta2 ** t);
    out[i] = decayed - (h.lr * mhat) / (Math.sqrt(vhat) + h.eps);
  }
  return out;
}

const adamwProgram = `import std.nn.{Linear}
import std.optim.{adamw}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l2(gelu(l1(x)))
}

train adam {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** where ndim == 2 with adamw(
    lr: 0.05,
    beta1: 0.8,
    beta2: 0.95,
    eps: 1e-6,
    weight_decay: 0.1,
  )
  optimize ** with adamw(lr: 0.02)
  steps 10
  batch 8
  seed 4
}
`;

describe("AdamW", () => {
  it("two steps equal torch.optim.AdamW's formula, with each rule's hyperparameters", async () => {
    const run = compile(adamwProgram);
    const hyper = (path: string): Adam =>
      path.endsWith("weight")
        ? { lr: 0.05, beta1: 0.8, beta2: 0.95, eps: 1e-6, wd: 0.1 }
        : { lr: 0.02, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.01 }; // adamw's defaults
    const paths = run.step.trainable;
    expect(paths).toEqual(["l1.weight", "l1.bias", "l2.weight", "l2.bias"]);

    const store = await init(run, true);
    const p0 = new Map(paths.map((p) => [p, param(store, p)]));
    const m = new Map(paths.map((p) => [p, new Float64Array(p0.get(p)!.length)]));
    const v = new Map(paths.map((p) => [p, new Float64Array(p0.get(p)!.length)]));
    let expected = p0;
    for (let t = 1; t <= 2; t++) {
      const { grads } = await trainStep(run, store, t, true);
      const next = new Map<string, Float64Array>();
      for (const path of paths) {
        const g = grads.get(path)!;
        expect(Math.max(...g.map(Math.abs)), `gradient of ${path}`).toBeGreaterThan(1e-4);
        next.set(
          path,
          torchAdamW(expected.get(path)!, g, m.get(path)!, v.get(path)!, t, hyper(path)),
        );
      }
      expected = next;
      for (const path of paths) {
        expectAllClose(param(store, path), expected.get(path)!, 1e-10, `${path} after step ${t}`);
        expectAllClose(
          store.get(`state:${path}:m`)!.data,
          m.get(path)!,
          1e-10,
          `m of ${path} after step ${t}`,
        );
        expectAllClose(
          store.get(`state:${path}:v`)!.data,
          v.get(path)!,
          1e-10,
          `v of ${path} after step ${t}`,
        );
      }
    }
    // the trainer's own loop takes the same two steps
    const trained = await train(run, new CpuDevice({ float64: true }), { steps: 2 });
    expectSameStores(trained.store, store);
  });
});

// ------------------------------------------------------------------------------------- GaLore

/** Row-major matrix helpers on plain arrays. */
function matmul(a: Float64Array, b: Float64Array, m: number, k: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let l = 0; l < k; l++) s += a[i * k + l]! * b[l * n + j]!;
      c[i * n + j] = s;
    }
  return c;
}
function transposed(a: Float64Array, m: number, n: number): Float64Array {
  const t = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = a[i * n + j]!;
  return t;
}

/**
 * The top singular triplet of A [m, n] by one-sided (Hestenes) Jacobi: rotate pairs of columns
 * of U = A V until all are orthogonal; then σ_j = ‖U_j‖, the right singular vectors are V's
 * columns and the left ones U_j / σ_j. Each vector's sign is fixed so that its largest-magnitude
 * entry (the first on ties) is positive, the convention of lrk's `svd_left` / `svd_right`.
 */
function topSingular(
  a: Float64Array,
  m: number,
  n: number,
): { s: number; u: number[]; v: number[] } {
  const U = Float64Array.from(a);
  const V = new Float64Array(n * n);
  for (let i = 0; i < n; i++) V[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++)
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const x = U[i * n + p]!;
          const y = U[i * n + q]!;
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta) || gamma === 0) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        const rotate = (M: Float64Array, rows: number) => {
          for (let i = 0; i < rows; i++) {
            const x = M[i * n + p]!;
            const y = M[i * n + q]!;
            M[i * n + p] = c * x - s * y;
            M[i * n + q] = s * x + c * y;
          }
        };
        rotate(U, m);
        rotate(V, n);
      }
    if (!rotated) break;
  }
  let best = 0;
  const colNorm = (j: number) =>
    Math.sqrt(Array.from({ length: m }, (_, i) => U[i * n + j]! ** 2).reduce((x, y) => x + y, 0));
  for (let j = 1; j < n; j++) if (colNorm(j) > colNorm(best)) best = j;
  const s = colNorm(best);
  const fixSign = (x: number[]) => {
    let k = 0;
    for (let i = 1; i < x.length; i++) if (Math.abs(x[i]!) > Math.abs(x[k]!)) k = i;
    return x[k]! < 0 ? x.map((y) => -y) : x;
  };
  return {
    s,
    u: fixSign(Array.from({ length: m }, (_, i) => U[i * n + best]! / s)),
    v: fixSign(Array.from({ length: n }, (_, i) => V[i * n + best]!)),
  };
}

// transformers' AdamW as stdlib/optim.lrk's adamw_hf writes it, on the projected gradient R:
//   m <- β1 m + (1 − β1) R;  v <- β2 v + (1 − β2) R²
//   N = lr · sqrt(1 − β2^t) / (1 − β1^t) · m / (sqrt(v) + eps)   (weight decay 0: none)
// and `inner.update(R)` returns N, the amount subtracted from its virtual zero parameter.
function adamwHf(
  r: Float64Array,
  m: Float64Array,
  v: Float64Array,
  t: number,
  h: { lr: number; beta1: number; beta2: number; eps: number },
): Float64Array {
  const size = (h.lr * Math.sqrt(1 - h.beta2 ** t)) / (1 - h.beta1 ** t);
  return r.map((x, i) => {
    m[i] = h.beta1 * m[i]! + (1 - h.beta1) * x;
    v[i] = h.beta2 * v[i]! + (1 - h.beta2) * x * x;
    return (size * m[i]!) / (Math.sqrt(v[i]!) + h.eps);
  });
}

// l2.weight is f32[4, 3] (m >= n: right projection Q = v^T, R = G Q^T f32[4, 1], W -= s·N Q);
// l3.weight is f32[2, 4] (m < n: left projection P = u, R = P^T G f32[1, 4], W -= s·P N), with
// GaLore's own weight decay (W -= inner.lr · wd · W, after the projected step).
const galoreProgram = `import std.nn.{Linear}
import std.optim.{adamw_hf, galore}

${moons}

model Net {
  l1 = Linear(2, 3)
  l2 = Linear(3, 4)
  l3 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train projected {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze l1, **.bias
  optimize l2.weight with galore(
    rank: 1,
    period: 1,
    scale: 0.25,
    inner: adamw_hf(lr: 0.1, beta1: 0.8, beta2: 0.9),
  )
  optimize l3.weight with galore(
    rank: 1,
    period: 1,
    scale: 0.25,
    weight_decay: 0.2,
    inner: adamw_hf(lr: 0.1, beta1: 0.8, beta2: 0.9),
  )
  steps 10
  batch 8
  seed 5
}
`;

describe("GaLore", () => {
  it("two rank-1 steps, each refreshing the projection, on both orientations", async () => {
    const run = compile(galoreProgram);
    expect(run.step.trainable).toEqual(["l2.weight", "l3.weight"]);
    // period 1: every step runs the variant that recomputes the projection from its gradient
    expect([...run.step.variants.keys()].sort()).toEqual(["", "1"]);
    const inner = { lr: 0.1, beta1: 0.8, beta2: 0.9, eps: 1e-6 };
    const cases = [
      { path: "l2.weight", m: 4, n: 3, wd: 0, proj: "Q" },
      { path: "l3.weight", m: 2, n: 4, wd: 0.2, proj: "P" },
    ] as const;
    const store = await init(run, true);
    const w = new Map<string, Float64Array>(cases.map((c) => [c.path, param(store, c.path)]));
    // the inner optimizer's moments, shaped like R: [1, n] (left) or [m, 1] (right)
    const moments = new Map(
      cases.map((c) => {
        const size = c.m < c.n ? c.n : c.m;
        return [c.path, { m: new Float64Array(size), v: new Float64Array(size) }];
      }),
    );
    for (let t = 1; t <= 2; t++) {
      const { grads } = await trainStep(run, store, t, true);
      for (const c of cases) {
        const { m, n } = c;
        const G = grads.get(c.path)!;
        const W = w.get(c.path)!;
        const top = topSingular(G, m, n);
        expect(top.s, `σ1 of ∂L/∂${c.path}`).toBeGreaterThan(1e-3);
        const mom = moments.get(c.path)!;
        let delta: Float64Array;
        let projection: number[];
        if (m < n) {
          // P = U_1 [m, 1]; R = P^T G [1, n]; W -= scale · P N
          const P = Float64Array.from(top.u);
          const R = matmul(P, G, 1, m, n);
          const N = adamwHf(R, mom.m, mom.v, t, inner);
          delta = matmul(P, N, m, 1, n);
          projection = top.u;
        } else {
          // Q = V_1^T [1, n]; R = G Q^T [m, 1]; W -= scale · N Q
          const Q = Float64Array.from(top.v);
          const R = matmul(G, transposed(Q, 1, n), m, n, 1);
          const N = adamwHf(R, mom.m, mom.v, t, inner);
          delta = matmul(N, Q, m, 1, n);
          projection = top.v;
        }
        const next = W.map((x, i) => x - 0.25 * delta[i]!).map((x) => x - inner.lr * c.wd * x);
        w.set(c.path, next);
        // The randomized SVD keeps rank + 4 (oversampling) directions, which on these matrices is
        // all of min(m, n): its range is exact, so its top vector is the exact one up to sign. A
        // single GaLore step does not depend on that sign: flipping P (or Q) flips R, the inner
        // moment m and so N, while v sees R², so P N (N Q) is unchanged. Step 2, though, adds the
        // step-1 moment (in the step-1 basis) to one in the refreshed basis, so the RELATIVE sign
        // of the two projections matters: we use the intrinsic's convention (largest-magnitude
        // entry positive) and check the stored projection against ours.
        expectAllClose(
          store.get(`state:${c.path}:${c.proj}`)!.data,
          projection,
          1e-9,
          `${c.proj} of ${c.path} at step ${t}`,
        );
        expectAllClose(param(store, c.path), next, 1e-9, `${c.path} after step ${t}`);
      }
    }
    const trained = await train(run, new CpuDevice({ float64: true }), { steps: 2 });
    expectSameStores(trained.store, store);
  });
});

// ----------------------------------------------------------------------------------- AdaLoRA

// Two adapted Linears with 3 triplets each: units b_0 = 6, total b_T = 2, steps T = 3. With
// init_warmup 0, final_warmup 0 and interval 1, prune_at(s) holds for 0 < t = s − 1 < T, so
// the first mask is after step 2, keeping keep(2) = ⌊(6 − 2)(1 − 1/3)³ + 2⌋ = 3 units.
const adaloraProgram = `import std.nn.{Linear}
import std.adapters.{adalora, adalora_budget}
import std.optim.{adamw}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l2(gelu(l1(x)))
}

train adaptive {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l1, l2 with adalora(init_rank: 3)
  budget rank 2 over l1, l2 by adalora_budget(init_warmup: 0, final_warmup: 0, interval: 1)
  optimize adapters with adamw(lr: 0.05, weight_decay: 0)
  steps 3
  batch 8
  seed 6
}
`;

describe("AdaLoRA's rank budget", () => {
  it("masks the lowest-scoring triplets after step 2, as the sensitivity EMAs and the cubic schedule say", async () => {
    const run = compile(adaloraProgram);
    const [budget] = run.step.budgets;
    expect(run.step.budgets).toHaveLength(1);
    expect(budget!.modules).toEqual(["l1", "l2"]);
    expect(budget!.sizes).toEqual([3, 3]);
    const T = 3;
    const units = 6;
    const total = 2;
    // the cubic schedule, t = s − 1
    const keepAt = (s: number) => Math.floor((units - total) * (1 - (s - 1) / T) ** 3 + total);
    expect(budget!.pruneAt(1)).toBe(false);
    expect(budget!.pruneAt(2)).toBe(true);
    expect(budget!.keep(2)).toBe(keepAt(2));
    expect(keepAt(2)).toBe(3);

    const beta = 0.85;
    const tensors = ["P", "E", "Q"] as const;
    const key = (m: string, x: string) => `${m}.adalora.${x}`;
    const sens = new Map<string, Float64Array>();
    const unc = new Map<string, Float64Array>();
    const store = await init(run, true);
    for (const m of budget!.modules)
      for (const x of tensors) {
        sens.set(key(m, x), new Float64Array(store.get(`param:${key(m, x)}`)!.data.length));
        unc.set(key(m, x), new Float64Array(store.get(`param:${key(m, x)}`)!.data.length));
      }
    let postStep2: Store | undefined;
    for (let t = 1; t <= 2; t++) {
      // the step (optimizer + observe), without the host's pruning, which comes after it
      const { grads } = await trainStep(run, store, t, true);
      for (const m of budget!.modules)
        for (const x of tensors) {
          // I = |w · ∂L/∂w| with the post-step weight; Ī <- β Ī + (1 − β) I;
          // Ū <- β Ū + (1 − β) |I − Ī| (with the new Ī)
          const k = key(m, x);
          const w = param(store, k);
          const g = grads.get(k)!;
          const S = sens.get(k)!;
          const U = unc.get(k)!;
          for (let i = 0; i < w.length; i++) {
            const I = Math.abs(w[i]! * g[i]!);
            S[i] = beta * S[i]! + (1 - beta) * I;
            U[i] = beta * U[i]! + (1 - beta) * Math.abs(I - S[i]!);
          }
          const prefix = `state:${m}:adalora_budget`;
          expectAllClose(store.get(`${prefix}:${x}_sens`)!.data, S, 1e-12, `${x}_sens of ${m}`);
          expectAllClose(store.get(`${prefix}:${x}_unc`)!.data, U, 1e-12, `${x}_unc of ${m}`);
        }
      if (t === 2) postStep2 = new Map(store);
    }
    // S_i = s(E_i) + mean_j s(Q_ij) + mean_j s(P_ji), s = Ī · Ū; P [out, 3], E [3], Q [3, in]
    const scores: number[] = [];
    for (const m of budget!.modules) {
      const s = (x: string) => {
        const S = sens.get(key(m, x))!;
        const U = unc.get(key(m, x))!;
        return S.map((a, i) => a * U[i]!);
      };
      const [sP, sE, sQ] = [s("P"), s("E"), s("Q")];
      const r = 3;
      const out = sP.length / r;
      const inp = sQ.length / r;
      for (let i = 0; i < r; i++) {
        let q = 0;
        for (let j = 0; j < inp; j++) q += sQ[i * inp + j]!;
        let p = 0;
        for (let j = 0; j < out; j++) p += sP[j * r + i]!;
        scores.push(sE[i]! + q / inp + p / out);
      }
    }
    const scored = await runEntry(run, budget!.score, feedsFor(run, store, 2), true);
    expectAllClose(
      [...scored.get("score:l1")!.data, ...scored.get("score:l2")!.data],
      scores,
      1e-10,
      "scores",
    );
    // τ = the (units − k)-th smallest score; a triplet is kept iff its score is above τ
    const k = keepAt(2);
    const tau = [...scores].sort((a, b) => a - b)[units - k - 1]!;
    const kept = scores.map((s) => (s > tau ? 1 : 0));
    expect(kept.reduce((a: number, b) => a + b, 0)).toBe(k);
    // not a near tie (the mask does not hang on rounding), and each module loses some units
    const gap = Math.min(...scores.filter((s) => s !== tau).map((s) => Math.abs(s - tau)));
    expect(gap / tau).toBeGreaterThan(1e-6);
    expect(kept.slice(0, 3)).toContain(0);
    expect(kept.slice(3)).toContain(0);

    const trained = await train(run, new CpuDevice({ float64: true }), { steps: 2 });
    for (const [i, m] of budget!.modules.entries()) {
      const before = param(postStep2!, key(m, "E"));
      const after = param(trained.store, key(m, "E"));
      const mask = kept.slice(3 * i, 3 * i + 3);
      for (let j = 0; j < 3; j++) {
        expect(Math.abs(before[j]!), `E_${j} of ${m} before the mask`).toBeGreaterThan(1e-4);
        // (a masked entry is E · 0, which is -0 for a negative E: compare with ===)
        if (mask[j]) expect(after[j], `E_${j} of ${m}`).toBe(before[j]);
        else expect(after[j] === 0, `E_${j} of ${m} is ${after[j]}, not 0`).toBe(true);
      }
      expect(Array.from(trained.store.get(`state:${m}:adalora_budget:pattern`)!.data)).toEqual(
        mask,
      );
      // P, Q and the optimizer's moments are untouched by the mask
      for (const x of ["P", "Q"])
        expect(param(trained.store, key(m, x))).toEqual(param(postStep2!, key(m, x)));
      for (const s of ["m", "v"])
        expect(Array.from(trained.store.get(`state:${key(m, "E")}:${s}`)!.data)).toEqual(
          Array.from(postStep2!.get(`state:${key(m, "E")}:${s}`)!.data),
        );
    }
  });
});
