// Adapters' frozen buffers (tensor `const`s computed once when training starts) and the stdlib
// methods built on them: PiSSA, OLoRA, LoRA-XS, RandLoRA, Bone and PELA. Each method's initial values follow
// its paper's formula (checked with float64 loops written here, independent of the compiler), and
// two SGD steps match a hand computation of the loss and of the gradients by the chain rule.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { planStep } from "../compiler/compile.js";
import { portableTarget } from "../cli/target.js";
import { memoryReport } from "../compiler/memory.js";
import type { Tensor } from "../compiler/program.js";
import { checkpointUses, loadCheckpoint } from "../runtime/checkpoint.js";
import { erf } from "../runtime/linalg.js";
import { writeSafetensors } from "../runtime/safetensors.js";
import { train } from "../runtime/trainer.js";
import { SourceFile } from "../language/source.js";
import {
  compile,
  cpu,
  init,
  prepare,
  trainStep,
  type Store,
  type TestRun,
} from "./program-helpers.js";

const LR = 0.5;

function program(method: string, extra = ""): string {
  return `import std.nn.{Linear}
import std.adapters.{pissa, olora, lora_xs, randlora, bone, pela}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 64)

model Net {
  feat = Linear(2, 8)
  mid = Linear(8, 6)
  forward(x: f32[B, 2]) -> f32[B, 6] = mid(gelu(feat(x)))
}

train t {
  model Net()
  data moons
  loss mean(model(batch.x) ^ 2)
  freeze **
  adapt mid with ${method}
  optimize adapters with sgd(lr: ${LR})
  steps 6
  ${extra}
}
`;
}

type Matrix = number[][];

const zerosM = (m: number, n: number): Matrix =>
  Array.from({ length: m }, () => new Array(n).fill(0));
const T = (a: Matrix): Matrix => a[0]!.map((_, j) => a.map((row) => row[j]!));
const mm = (a: Matrix, b: Matrix): Matrix =>
  a.map((row) => b[0]!.map((_, j) => row.reduce((s, x, k) => s + x * b[k]![j]!, 0)));
const add = (a: Matrix, b: Matrix, s = 1): Matrix =>
  a.map((r, i) => r.map((x, j) => x + s * b[i]![j]!));
const scaleM = (a: Matrix, s: number): Matrix => a.map((r) => r.map((x) => s * x));

function matrix(t: Tensor): Matrix {
  const [m, n] = t.shape.length === 2 ? (t.shape as [number, number]) : [1, t.shape[0]!];
  return Array.from({ length: m }, (_, i) => Array.from(t.data.slice(i * n, (i + 1) * n)));
}
const get = (store: Store, name: string): Matrix => matrix(store.get(name)!);

function expectClose(actual: Matrix, expected: Matrix, tolerance: number, what = ""): void {
  expect(actual.length, what).toBe(expected.length);
  actual.forEach((row, i) =>
    row.forEach((x, j) =>
      expect(Math.abs(x - expected[i]![j]!), `${what}[${i}][${j}]`).toBeLessThan(tolerance),
    ),
  );
}

/** Eigenvalues of a symmetric matrix, descending, by cyclic Jacobi (float64). */
function eigenvalues(a0: Matrix): number[] {
  const a = a0.map((r) => [...r]);
  const n = a.length;
  for (let sweep = 0; sweep < 60; sweep++)
    for (let p = 0; p < n - 1; p++)
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p]![q]!) < 1e-300) continue;
        const theta = (a[q]![q]! - a[p]![p]!) / (2 * a[p]![q]!);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const [x, y] = [a[k]![p]!, a[k]![q]!];
          a[k]![p] = c * x - s * y;
          a[k]![q] = s * x + c * y;
        }
        for (let k = 0; k < n; k++) {
          const [x, y] = [a[p]![k]!, a[q]![k]!];
          a[p]![k] = c * x - s * y;
          a[q]![k] = s * x + c * y;
        }
      }
  return a.map((row, i) => row[i]!).sort((x, y) => y - x);
}
const singularValues = (w: Matrix) =>
  eigenvalues(mm(w, T(w))).map((e) => Math.sqrt(Math.max(e, 0)));

/**
 * The loss mean(z²) of z = h W_effᵀ + b, h = gelu(feat(x)) on the step's batch, and
 * G = ∂loss/∂W_eff = (2 z / (B·6))ᵀ h, by hand.
 */
function forwardByHand(run: TestRun, store: Store, step: number, wEff: Matrix) {
  const x = matrix(run.data.batch("train", step - 1, run.batch).fields["x"]! as Tensor);
  const wf = get(store, "param:feat.weight");
  const bf = get(store, "param:feat.bias")[0]!;
  const b = get(store, "param:mid.bias")[0]!;
  const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
  const h = mm(x, T(wf)).map((row) => row.map((v, j) => gelu(v + bf[j]!)));
  const z = mm(h, T(wEff)).map((row) => row.map((v, j) => v + b[j]!));
  const count = z.length * z[0]!.length;
  const loss = z.flat().reduce((s, v) => s + v * v, 0) / count;
  const g = mm(T(scaleM(z, 2 / count)), h); // [6, 8]
  return { loss, g };
}

interface Method {
  call: string;
  /** The effective weight from the store. */
  weight(store: Store): Matrix;
  /** The trainable tensors' gradients from G = ∂loss/∂W_eff, by the chain rule. */
  grads(store: Store, g: Matrix): Map<string, Matrix>;
  /** A `regularize` term on W_eff: its value and its gradient. */
  regularizer?(store: Store, wEff: Matrix): { value: number; g: Matrix };
}

/** Two SGD steps: loss and gradients by hand, and the update param -= lr · grad. */
async function checkTwoSteps(method: Method): Promise<{ run: TestRun; store: Store }> {
  const run = compile(program(method.call), { batch: 4 });
  const store = await init(run, true);
  const start = new Map(store);
  for (let step = 1; step <= 2; step++) {
    const wEff = method.weight(store);
    let { loss, g } = forwardByHand(run, store, step, wEff);
    const extra = method.regularizer?.(store, wEff);
    if (extra) {
      loss += extra.value;
      g = add(g, extra.g);
    }
    const expected = method.grads(store, g);
    const before = new Map(store);
    const result = await trainStep(run, store, step, true);
    expect(result.loss).toBeCloseTo(loss, 12);
    expect([...result.grads.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [path, grad] of expected) {
      const shape = store.get(`param:${path}`)!.shape;
      expectClose(matrix({ shape, data: result.grads.get(path)! }), grad, 1e-12, `grad ${path}`);
      const old = get(before, `param:${path}`);
      expectClose(get(store, `param:${path}`), add(old, grad, -LR), 1e-12, path);
    }
  }
  return { run, store: start };
}

const P = (name: string) => `param:mid.${name}`;
const Bf = (name: string) => `buffer:mid.${name}`;

describe("frozen buffers in adapters", () => {
  it("PiSSA: A and B from the top-r SVD, the base replaced by the residual, two steps by hand", async () => {
    const s = 2; // alpha 4 / rank 2
    const method: Method = {
      call: "pissa(rank: 2, alpha: 4)",
      weight: (st) =>
        add(get(st, Bf("pissa.residual")), mm(get(st, P("pissa.B")), get(st, P("pissa.A"))), s),
      grads: (st, g) =>
        new Map([
          ["mid.pissa.A", scaleM(mm(T(get(st, P("pissa.B"))), g), s)],
          ["mid.pissa.B", scaleM(mm(g, T(get(st, P("pissa.A")))), s)],
        ]),
    };
    const { run, store } = await checkTwoSteps(method);
    const w = get(store, "param:mid.weight");
    const a = get(store, P("pissa.A"));
    const b = get(store, P("pissa.B"));
    const sigma = singularValues(w);
    // The adapted layer starts as the base: W_res + s B A = W.
    expectClose(method.weight(store), w, 1e-12, "W_res + s B A");
    // A = diag(sqrt(S/s)) Vh and B = U diag(sqrt(S/s)): A Aᵀ = Bᵀ B = diag(S/s) with W's top σ.
    const top = zerosM(2, 2).map((r, i) => r.map((_, j) => (i === j ? sigma[i]! / s : 0)));
    expectClose(mm(a, T(a)), top, 1e-10, "A Aᵀ");
    expectClose(mm(T(b), b), top, 1e-10, "Bᵀ B");
    // The residual holds the rest of the spectrum.
    expectClose(
      [singularValues(get(store, Bf("pissa.residual"))).slice(0, 4)],
      [sigma.slice(2)],
      1e-10,
    );
    // The step reads the residual buffer, not W, and computes no SVD.
    const inputs = run.step.inputs.map((i) => i.name);
    expect(inputs).toContain(Bf("pissa.residual"));
    expect(inputs).not.toContain("param:mid.weight");
    expect(run.step.graph.nodes.some((n) => n.op.kind === "svd")).toBe(false);
    expect(run.init.graph.nodes.some((n) => n.op.kind === "svd")).toBe(true);
    // LoRA's count: r·(out + in) trainable numbers.
    expect(a.flat().length + b.flat().length).toBe(2 * (6 + 8));
  });

  it("OLoRA: A = R[:r], B = Q[:, :r] of W's QR (Gram–Schmidt by hand, LAPACK's signs), two steps", async () => {
    const s = 1;
    const method: Method = {
      call: "olora(rank: 2)",
      weight: (st) =>
        add(get(st, Bf("olora.residual")), mm(get(st, P("olora.B")), get(st, P("olora.A"))), s),
      grads: (st, g) =>
        new Map([
          ["mid.olora.A", scaleM(mm(T(get(st, P("olora.B"))), g), s)],
          ["mid.olora.B", scaleM(mm(g, T(get(st, P("olora.A")))), s)],
        ]),
    };
    const { store } = await checkTwoSteps(method);
    const w = get(store, "param:mid.weight");
    const b = get(store, P("olora.B"));
    const a = get(store, P("olora.A"));
    // Gram–Schmidt on W's first two columns: q1 ∝ w1, q2 ∝ w2 - (q1·w2) q1.
    const c = T(w);
    const norm = (v: number[]) => Math.hypot(...v);
    const q1 = c[0]!.map((x) => x / norm(c[0]!));
    const d = q1.reduce((t, x, i) => t + x * c[1]![i]!, 0);
    const v2 = c[1]!.map((x, i) => x - d * q1[i]!);
    const q2 = v2.map((x) => x / norm(v2));
    // Householder's R_kk = -sign(·) ‖·‖: Q's column k is Gram–Schmidt's times sign(R_kk).
    const signs = [Math.sign(a[0]![0]!), Math.sign(a[1]![1]!)];
    expect(signs[0]).toBe(-Math.sign(w[0]![0]!));
    expectClose(
      b,
      T([q1.map((x) => x * signs[0]!), q2.map((x) => x * signs[1]!)]),
      1e-12,
      "B = Q_r",
    );
    expectClose(a, mm(T(b), w), 1e-12, "A = R[:r]");
    expect(Math.abs(a[1]![0]!)).toBeLessThan(1e-12); // R is upper triangular
    expectClose(method.weight(store), w, 1e-12, "W_res + s B A");
    expect(a.flat().length + b.flat().length).toBe(2 * (6 + 8));
  });

  it("LoRA-XS: frozen B = U_r, A = diag(S_r) Vh_r, a trainable rank×rank R ~ N(0, 1e-5²), two steps", async () => {
    const s = 2;
    const method: Method = {
      call: "lora_xs(rank: 3, alpha: 6)",
      weight: (st) =>
        add(
          get(st, "param:mid.weight"),
          mm(mm(get(st, Bf("lora_xs.B")), get(st, P("lora_xs.R"))), get(st, Bf("lora_xs.A"))),
          s,
        ),
      grads: (st, g) =>
        new Map([
          [
            "mid.lora_xs.R",
            scaleM(mm(mm(T(get(st, Bf("lora_xs.B"))), g), T(get(st, Bf("lora_xs.A")))), s),
          ],
        ]),
    };
    const { run, store } = await checkTwoSteps(method);
    const w = get(store, "param:mid.weight");
    const bu = get(store, Bf("lora_xs.B"));
    const a = get(store, Bf("lora_xs.A"));
    const sigma = singularValues(w);
    expectClose(
      mm(T(bu), bu),
      [
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
      ],
      1e-10,
      "Uᵀ U",
    );
    expectClose(
      mm(a, T(a)),
      [
        [sigma[0]! ** 2, 0, 0],
        [0, sigma[1]! ** 2, 0],
        [0, 0, sigma[2]! ** 2],
      ],
      1e-9,
      "A Aᵀ",
    );
    // B A is W's best rank-3 approximation: ‖W - B A‖² = σ4² + σ5² + σ6².
    const rest = add(w, mm(bu, a), -1)
      .flat()
      .reduce((t, x) => t + x * x, 0);
    expect(rest).toBeCloseTo(
      sigma.slice(3).reduce((t, x) => t + x * x, 0),
      10,
    );
    const r = get(store, P("lora_xs.R")).flat();
    expect(Math.max(...r.map(Math.abs))).toBeLessThan(1e-4);
    expect(Math.max(...r.map(Math.abs))).toBeGreaterThan(0);
    // rank² trainable numbers.
    expect(run.step.trainable).toEqual(["mid.lora_xs.R"]);
  });

  for (const [what, layer, inDim, outDim] of [
    ["out < in (A on the output side)", "mid", 8, 6],
    ["in <= out (A on the input side)", "feat", 2, 8],
  ] as const) {
    it(`RandLoRA, ${what}: ΔW = s Σ_k B_k diag(λ_k) A diag(γ_k), N·(r + min) parameters`, async () => {
      const rank = 2;
      const small = Math.min(inDim, outDim);
      const large = Math.max(inDim, outDim);
      const n = Math.ceil(small / rank);
      const text = program("randlora(rank: 2, alpha: 6)").replace("adapt mid", `adapt ${layer}`);
      const run = compile(text, { batch: 4 });
      const store = await init(run, true);
      const lam = get(store, `param:${layer}.randlora.lam`);
      const gamma = get(store, `param:${layer}.randlora.gamma`);
      const a = get(store, `buffer:${layer}.randlora.A`);
      const b = get(store, `buffer:${layer}.randlora.B`);
      expect([lam.length, lam[0]!.length, gamma.length, gamma[0]!.length]).toEqual([
        n,
        rank,
        n,
        small,
      ]);
      expect(lam.flat().every((x) => x === 0)).toBe(true);
      expect(gamma.flat().every((x) => x === 1 / small)).toBe(true);
      expect(run.step.trainable.length).toBe(2);
      expect(n * rank + n * small).toBe(lam.flat().length + gamma.flat().length);
      // Unit-std uniform bases: |x| ≤ √3.
      expect(Math.max(...[...a.flat(), ...b.flat()].map(Math.abs))).toBeLessThanOrEqual(
        Math.sqrt(3),
      );
      expect([b.length, b[0]!.length]).toEqual([large, n * rank]);
      // Set λ and γ to arbitrary values, and compare the layer's output with the paper's sum.
      const lam2 = lam.map((r, k) => r.map((_, j) => 0.3 * (k + 1) - 0.2 * j));
      const gamma2 = gamma.map((r, k) => r.map((_, c) => 0.1 + 0.05 * k - 0.02 * c));
      store.set(`param:${layer}.randlora.lam`, {
        shape: [n, rank],
        data: Float64Array.from(lam2.flat()),
      });
      store.set(`param:${layer}.randlora.gamma`, {
        shape: [n, small],
        data: Float64Array.from(gamma2.flat()),
      });
      let delta = zerosM(small, large); // for the input-side case, transposed at the end
      for (let k = 0; k < n; k++) {
        const bk = b.map((row) => row.slice(k * rank, (k + 1) * rank)); // [large, rank]
        const term = mm(
          mm(
            bk,
            lam2[k]!.map((l, j) => lam2[k]!.map((_, i) => (i === j ? l : 0))),
          ),
          a,
        ) // [large, small]
          .map((row) => row.map((x, c) => x * gamma2[k]![c]!));
        delta = add(delta, T(term), 3); // s = 6 / 2
      }
      const w = get(store, `param:${layer}.weight`);
      const wEff = add(w, outDim < inDim ? delta : T(delta));
      // feat feeds gelu, mid is the output: the loss by hand with W_eff in the adapted layer's place.
      const shifted = new Map(store);
      shifted.set(`param:${layer}.weight`, {
        shape: [outDim, inDim],
        data: Float64Array.from(wEff.flat()),
      });
      const { loss } = forwardByHand(run, shifted, 1, get(shifted, "param:mid.weight"));
      const result = await trainStep(run, store, 1, true);
      expect(result.loss).toBeCloseTo(loss, 12);
      expect(result.grads.get(`${layer}.randlora.gamma`)!.some((x) => x !== 0)).toBe(true);
    });
  }

  it("Bone: ΔW repeats the trainable block D along the input dim (a cut-short last block), two steps", async () => {
    // in 8 = 3 + 3 + 2: fold[j][i] = 1 where i mod 3 = j
    const fold = [0, 1, 2].map((j) => [0, 1, 2, 3, 4, 5, 6, 7].map((i) => (i % 3 === j ? 1 : 0)));
    const method: Method = {
      call: "bone(rank: 3)",
      weight: (st) => add(get(st, "param:mid.weight"), mm(T(get(st, P("bone.D"))), fold)),
      grads: (st, g) => new Map([["mid.bone.D", T(mm(g, T(fold)))]]),
    };
    const { run, store } = await checkTwoSteps(method);
    expect(
      get(store, P("bone.D"))
        .flat()
        .every((x) => x === 0),
    ).toBe(true);
    // r·out trainable numbers (PEFT's count for Bone).
    expect(store.get(P("bone.D"))!.data.length).toBe(3 * 6);
    expect(run.step.trainable).toEqual(["mid.bone.D"]);
  });

  it("PELA: L, R from the SVD with √S split evenly, k = ⌊mn / (c(m+n))⌋, the ‖LR − W‖_max term", async () => {
    const method: Method = {
      call: "pela(ratio: 1, inf_norm_weight: 0.5, inf_norm_eps: 0.01)",
      weight: (st) => mm(get(st, P("pela.L")), get(st, P("pela.R"))),
      grads: (st, g) =>
        new Map([
          ["mid.pela.L", mm(g, T(get(st, P("pela.R"))))],
          ["mid.pela.R", mm(T(get(st, P("pela.L"))), g)],
        ]),
      regularizer: (st, wEff) => {
        // 0.5 (max |LR - W| - 0.01)²: the gradient flows to the largest entry only.
        const e = add(wEff, get(st, "param:mid.weight"), -1);
        let [p, q] = [0, 0];
        e.forEach((row, i) =>
          row.forEach((x, j) => Math.abs(x) > Math.abs(e[p]![q]!) && ([p, q] = [i, j])),
        );
        const m = Math.abs(e[p]![q]!);
        const g = zerosM(6, 8);
        g[p]![q] = 2 * 0.5 * (m - 0.01) * Math.sign(e[p]![q]!);
        return { value: 0.5 * (m - 0.01) ** 2, g };
      },
    };
    const { run, store } = await checkTwoSteps(method);
    const k = Math.floor((6 * 8) / (1 * (6 + 8))); // 3
    const l = get(store, P("pela.L"));
    const r = get(store, P("pela.R"));
    expect([l[0]!.length, r.length]).toEqual([k, k]);
    const sigma = singularValues(get(store, "param:mid.weight"));
    const diag = (v: number[]) => v.map((x, i) => v.map((_, j) => (i === j ? x : 0)));
    expectClose(mm(T(l), l), diag(sigma.slice(0, k)), 1e-10, "Lᵀ L = S_k");
    expectClose(mm(r, T(r)), diag(sigma.slice(0, k)), 1e-10, "R Rᵀ = S_k");
    // The step reads W only for the regularizer's teacher term.
    expect(run.step.inputs.map((i) => i.name)).toContain("param:mid.weight");
  });

  it("PELA on a layer too small for any rank says so at the user's rule", () => {
    const text = program("pela(ratio: 8)");
    const { diagnostics } = prepare(new SourceFile("small.lrk", text), { batch: 4 });
    const found = diagnostics.find((d) => d.code === "E0205")!;
    expect(found.message).toMatch(/⌊in·out \/ \(ratio·\(in \+ out\)\)⌋ = 0 ranks/);
    expect(text.slice(found.at!.span.start, found.at!.span.end)).toBe("pela(ratio: 8)");
  });

  it("a const that reads the adapter's own param is refused (E0206)", () => {
    const text = program("bad").replace(
      "train t {",
      `adapter bad on Linear(in, out) {
  param A: f32[2, in] = zeros
  const frozen = A * 2
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + sum(x @ frozen^T)
}

train t {`,
    );
    const { diagnostics } = prepare(new SourceFile("bad.lrk", text), { batch: 4 });
    const found = diagnostics.find((d) => d.code === "E0206")!;
    expect(found.message).toMatch(/before the adapter's params exist: `frozen` cannot read `A`/);
    expect(text.slice(found.at!.span.start, found.at!.span.end)).toBe("A * 2");
  });

  it("`--emit memory` counts the buffers the step reads as frozen, and the plan has no svd kernel", () => {
    const run = compile(program("pissa(rank: 2)"), { batch: 4 });
    const m = memoryReport(run.step);
    // feat's weight and bias, mid's bias, and PiSSA's residual [6, 8]: W itself is not read.
    expect(m.frozen).toBe(4 * (16 + 8 + 6 + 48));
    for (const method of ["pissa(rank: 2)", "lora_xs(rank: 2)", "olora(rank: 2)", "pela()"]) {
      const planned = compile(program(method), { batch: 4 });
      const kernels = planStep(planned.step, portableTarget).kernels.map((k) => k.name);
      expect(
        kernels.filter((k) => /svd|qr/.test(k)),
        method,
      ).toEqual([]);
      const init = planStep(planned.init, portableTarget).kernels.map((k) => k.name);
      expect(
        init.some((k) => /svd|qr/.test(k)),
        method,
      ).toBe(true);
    }
  });

  it("buffers are saved in the checkpoint: a run resumed from it gives the uninterrupted losses", async () => {
    const run = compile(program("pissa(rank: 2, alpha: 4)"), { batch: 4 });
    const whole = await train(run, cpu(false), { steps: 6 });
    const half = await train(run, cpu(false), { steps: 3 });
    const path = join(mkdtempSync(join(tmpdir(), "lrk-buffers-")), "checkpoint.safetensors");
    writeSafetensors(path, half.store, { step: "3" });
    const loaded = loadCheckpoint(path, run.program, checkpointUses.resume);
    expect(loaded.tensors.has(Bf("pissa.residual"))).toBe(true);
    const resumed = await train(run, cpu(false), {
      steps: 6,
      resume: { step: 3, store: loaded.tensors },
    });
    expect(resumed.losses).toEqual(whole.losses.slice(3));
    // A checkpoint without the buffer cannot resume the run.
    const without = new Map([...half.store].filter(([name]) => !name.startsWith("buffer:")));
    writeSafetensors(path, without, { step: "3" });
    expect(() => loadCheckpoint(path, run.program, checkpointUses.resume)).toThrow(
      /pissa\.residual/,
    );
  });
});
