// The projected-gradient optimizers of stdlib/optim.lrk added with issue 11 (Fira, GaLore with a
// DCT basis, GradNormLoRP, FRUGAL), each against a float64 TypeScript reference written here
// from the paper's formulas (and the official code's order of operations), over three steps on
// the CPU interpreter: the gradients come from the compiled step, every update is recomputed
// here independently of lrk. Where a method keeps a projection from a randomized SVD, the test
// reads the projection the optimizer stored and checks that it is the top singular subspace
// (σ₁ by power iteration), then uses it.
import { describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import {
  compile,
  init,
  param,
  prepare,
  trainStep,
  type Store,
  type TestRun,
} from "./program-helpers.js";
import { expectAllClose } from "./helpers.js";

/** A row-major matrix. */
class Mat {
  constructor(
    readonly rows: number,
    readonly cols: number,
    readonly data: Float64Array = new Float64Array(rows * cols),
  ) {
    if (data.length !== rows * cols) throw new Error(`Mat ${rows}x${cols} of ${data.length}`);
  }
  at(i: number, j: number): number {
    return this.data[i * this.cols + j]!;
  }
  map(f: (x: number, i: number, j: number) => number): Mat {
    return new Mat(
      this.rows,
      this.cols,
      this.data.map((x, k) => f(x, Math.floor(k / this.cols), k % this.cols)),
    );
  }
  zip(o: Mat, f: (a: number, b: number) => number): Mat {
    if (o.rows !== this.rows || o.cols !== this.cols) throw new Error("zip of different shapes");
    return this.map((x, i, j) => f(x, o.at(i, j)));
  }
  mul(o: Mat): Mat {
    if (this.cols !== o.rows)
      throw new Error(`mul ${this.rows}x${this.cols} @ ${o.rows}x${o.cols}`);
    const out = new Mat(this.rows, o.cols);
    for (let i = 0; i < this.rows; i++)
      for (let j = 0; j < o.cols; j++) {
        let s = 0;
        for (let k = 0; k < this.cols; k++) s += this.at(i, k) * o.at(k, j);
        out.data[i * o.cols + j] = s;
      }
    return out;
  }
  get t(): Mat {
    return new Mat(this.cols, this.rows).map((_, i, j) => this.at(j, i));
  }
  scale(c: number): Mat {
    return this.map((x) => c * x);
  }
  plus(o: Mat): Mat {
    return this.zip(o, (a, b) => a + b);
  }
  minus(o: Mat): Mat {
    return this.zip(o, (a, b) => a - b);
  }
  fro(): number {
    return Math.sqrt(this.data.reduce((s, x) => s + x * x, 0));
  }
  /** ‖column j‖ for each j. */
  colNorms(): number[] {
    return Array.from({ length: this.cols }, (_, j) =>
      Math.sqrt(
        Array.from({ length: this.rows }, (_, i) => this.at(i, j) ** 2).reduce((a, b) => a + b, 0),
      ),
    );
  }
  rowNorms(): number[] {
    return this.t.colNorms();
  }
}

/** σ₁ of A by power iteration on AᵀA (float64, many rounds: the test matrices are tiny). */
function topSingularValue(a: Mat): number {
  let v = new Mat(a.cols, 1).map((_, i) => 1 + i * 0.1);
  for (let k = 0; k < 2000; k++) {
    const w = a.t.mul(a.mul(v));
    v = w.scale(1 / w.fro());
  }
  return a.mul(v).fro();
}

/** Columns of X made orthonormal (modified Gram–Schmidt). */
function orthonormalColumns(x: Mat): Mat {
  const cols = Array.from({ length: x.cols }, (_, j) =>
    Array.from({ length: x.rows }, (_, i) => x.at(i, j)),
  );
  for (let j = 0; j < cols.length; j++) {
    for (let k = 0; k < j; k++) {
      const d = cols[j]!.reduce((s, v, i) => s + v * cols[k]![i]!, 0);
      cols[j] = cols[j]!.map((v, i) => v - d * cols[k]![i]!);
    }
    const n = Math.hypot(...cols[j]!);
    cols[j] = cols[j]!.map((v) => v / n);
  }
  return new Mat(x.rows, x.cols).map((_, i, j) => cols[j]![i]!);
}

/**
 * Checks that the columns of `basis` are orthonormal singular vectors of G for its `basis.cols`
 * largest singular values: left ones (of G Gᵀ) or right ones (of Gᵀ G), against float64
 * subspace iteration here.
 */
function expectTopSingularVectors(G: Mat, basis: Mat, left: boolean, what: string): void {
  const A = left ? G.mul(G.t) : G.t.mul(G);
  const r = basis.cols;
  const gram = basis.t.mul(basis);
  expectAllClose(
    gram.data,
    new Mat(r, r).map((_, i, j) => (i === j ? 1 : 0)).data,
    1e-9,
    `${what}: orthonormal`,
  );
  const scale = A.fro();
  for (let j = 0; j < r; j++) {
    const b = basis.map((_, i) => basis.at(i, j)).map((x, i, k) => (k === 0 ? x : 0));
    const v = new Mat(basis.rows, 1).map((_, i) => basis.at(i, j));
    const Av = A.mul(v);
    const lambda = v.t.mul(Av).at(0, 0);
    void b;
    expect(
      Av.minus(v.scale(lambda)).fro() / scale,
      `${what}: vector ${j} is singular`,
    ).toBeLessThan(1e-9);
  }
  let x = new Mat(A.rows, r).map((_, i, j) => Math.cos(1 + i * (j + 1)));
  for (let k = 0; k < 3000; k++) x = orthonormalColumns(A.mul(x));
  const top = x.t.mul(A).mul(x);
  const chosen = basis.t.mul(A).mul(basis);
  let sumTop = 0;
  let sumChosen = 0;
  for (let j = 0; j < r; j++) {
    sumTop += top.at(j, j);
    sumChosen += chosen.at(j, j);
  }
  expect(Math.abs(sumTop - sumChosen) / scale, `${what}: the top ${r}`).toBeLessThan(1e-9);
}

function stored(store: Store, name: string, rows: number, cols: number): Mat {
  const t = store.get(name);
  if (!t) throw new Error(`no \`${name}\` in the store`);
  return new Mat(rows, cols, Float64Array.from(t.data));
}

const moons = `data moons = std.data.two_moons(n: 64, seed: 2)`;

/**
 * A three-layer net on two moons; l1 and the biases are frozen, and `rule` optimizes l2.weight
 * f32[4, 3] (m >= n: right projections) and l3.weight f32[2, 4] (m < n: left projections).
 */
function program(imports: string, rule: string): string {
  return `import std.nn.{Linear}
${imports}

${moons}

model Net {
  l1 = Linear(2, 3)
  l2 = Linear(3, 4)
  l3 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze l1, **.bias
  optimize l2.weight, l3.weight with ${rule}
  steps 10
  batch 8
  seed 5
}
`;
}

const layers = [
  { path: "l2.weight", m: 4, n: 3 },
  { path: "l3.weight", m: 2, n: 4 },
] as const;

/**
 * Runs `steps` steps of `run` in float64; before each, `reference(t, path, W, G, store)` gives
 * the expected weight after the step (`store` is the one after it, for stored projections).
 */
async function checkSteps(
  run: TestRun,
  steps: number,
  reference: (t: number, layer: (typeof layers)[number], W: Mat, G: Mat, after: Store) => Mat,
): Promise<void> {
  expect(run.step.trainable).toEqual(layers.map((l) => l.path));
  const store = await init(run, true);
  for (let t = 1; t <= steps; t++) {
    const before = layers.map((l) => new Mat(l.m, l.n, param(store, l.path)));
    const { grads } = await trainStep(run, store, t, true);
    layers.forEach((l, i) => {
      const G = new Mat(l.m, l.n, grads.get(l.path)!);
      const want = reference(t, l, before[i]!, G, store);
      expectAllClose(param(store, l.path), want.data, 1e-9, `${l.path} after step ${t}`);
    });
  }
}

// ---------------------------------------------------------------------------------------- Fira

describe("Fira", () => {
  it("three rank-1 steps on both orientations: projected Adam, scaled residual, norm limiter", async () => {
    const h = { lr: 0.05, beta1: 0.8, beta2: 0.9, eps: 1e-6, scale: 0.25, wd: 0.1, gamma: 1.01 };
    const run = compile(
      program(
        "import std.optim.{fira}",
        `fira(lr: ${h.lr}, rank: 1, period: 100, scale: ${h.scale}, beta1: ${h.beta1}, beta2: ${h.beta2}, weight_decay: ${h.wd})`,
      ),
    );
    const moments = new Map<string, { M: Mat; V: Mat; last: number }>();
    let limited = 0;
    await checkSteps(run, 3, (t, { path, m, n }, W, G, after) => {
      const left = m < n;
      // the projection the optimizer keeps (computed at step 1): the top singular direction
      const B = left
        ? stored(after, `state:${path}:P`, m, 1)
        : stored(after, `state:${path}:Q`, 1, n);
      if (t === 1) {
        const R1 = left ? B.t.mul(G) : G.mul(B.t);
        expect(R1.fro() / topSingularValue(G), `σ₁ of ∂L/∂${path}`).toBeCloseTo(1, 9);
      }
      const R = left ? B.t.mul(G) : G.mul(B.t);
      const back = (X: Mat) => (left ? B.mul(X) : X.mul(B));
      const s = moments.get(path) ?? {
        M: new Mat(R.rows, R.cols),
        V: new Mat(R.rows, R.cols),
        last: 0,
      };
      s.M = s.M.scale(h.beta1).plus(R.scale(1 - h.beta1));
      s.V = s.V.scale(h.beta2).plus(R.map((x) => x * x).scale(1 - h.beta2));
      const N = s.M.zip(s.V, (mm, v) => mm / (Math.sqrt(v) + h.eps));
      // per column of an r × n projection, per row of an m × r one
      const nN = left ? N.colNorms() : N.rowNorms();
      const nR = left ? R.colNorms() : R.rowNorms();
      const phi = nN.map((x, k) => x / (nR[k]! + 1e-8));
      let S = G.minus(back(R).scale(h.scale)).map((x, i, j) => x * phi[left ? j : i]!);
      const norm = S.fro();
      let shrink = 1;
      if (t > 1) shrink = Math.max(norm / (s.last + 1e-8), h.gamma) / h.gamma;
      if (shrink > 1) limited++;
      S = S.scale(1 / shrink);
      s.last = norm / shrink;
      moments.set(path, s);
      const size = (h.lr * Math.sqrt(1 - h.beta2 ** t)) / (1 - h.beta1 ** t);
      const stepped = W.minus(back(N).scale(h.scale).plus(S).scale(size));
      return stepped.minus(stepped.scale(h.lr * h.wd));
    });
    // the limiter acted on some step (else its branch would be untested)
    expect(limited).toBeGreaterThan(0);
  });
});

// -------------------------------------------------------------------------------------- FRUGAL

describe("FRUGAL (SVD)", () => {
  it("three steps across a refresh: Adam in the subspace (restarted), signSGD on the rest", async () => {
    const h = { lr: 0.05, beta1: 0.8, beta2: 0.9, eps: 1e-8, wd: 0.1, sp: 0.5, si: 0.2, period: 2 };
    const run = compile(
      program(
        "import std.optim.{frugal}",
        `frugal(lr: ${h.lr}, density: 0.5, period: ${h.period}, beta1: ${h.beta1}, beta2: ${h.beta2}, weight_decay: ${h.wd}, proj_lr_scale: ${h.sp}, inactive_lr_scale: ${h.si})`,
      ),
    );
    // ranks: round(0.5 · 3) = 2 (1.5 to even), round(0.5 · 2) = 1
    const ranks: Record<string, number> = { "l2.weight": 2, "l3.weight": 1 };
    const moments = new Map<string, { M: Mat; V: Mat }>();
    await checkSteps(run, 3, (t, { path, m, n }, W, G, after) => {
      const left = m < n;
      const r = ranks[path]!;
      const B = left
        ? stored(after, `state:${path}:P`, m, r)
        : stored(after, `state:${path}:Q`, r, n);
      const refresh = (t - 1) % h.period === 0;
      if (refresh) expectTopSingularVectors(G, left ? B : B.t, left, `${path} at step ${t}`);
      const R = left ? B.t.mul(G) : G.mul(B.t);
      const back = (X: Mat) => (left ? B.mul(X) : X.mul(B));
      const k = ((t - 1) % h.period) + 1;
      const s = refresh
        ? { M: new Mat(R.rows, R.cols), V: new Mat(R.rows, R.cols) }
        : moments.get(path)!;
      s.M = s.M.scale(h.beta1).plus(R.scale(1 - h.beta1));
      s.V = s.V.scale(h.beta2).plus(R.map((x) => x * x).scale(1 - h.beta2));
      moments.set(path, s);
      const size = (h.lr * h.sp) / (1 - h.beta1 ** k);
      const U = s.M.zip(
        s.V,
        (mm, v) => -size * (mm / (Math.sqrt(v) / Math.sqrt(1 - h.beta2 ** k) + h.eps)),
      );
      const decayed = W.scale(1 - h.lr * h.wd);
      const rest = G.minus(back(R)).map((x) => -h.lr * h.sp * h.si * Math.sign(x));
      return decayed.plus(back(U)).plus(rest);
    });
  });

  it("refuses a density that leaves no dimension to Adam", () => {
    const { diagnostics } = prepare(
      new SourceFile(
        "test.lrk",
        program("import std.optim.{frugal}", "frugal(lr: 0.1, density: 0.2)"),
      ),
    );
    const errors = diagnostics.filter((d) => d.severity === "error");
    expect(errors.map((d) => d.code)).toEqual(["E0205"]);
    expect(errors[0]!.message).toContain("density 0.2 gives no dimension of a");
  });
});

// ----------------------------------------------------------------------------------- DCT-AdamW

/** The orthogonal DCT matrix of the reference: D[i, j] = sqrt(2/d) cos(π i (2j+1) / 2d), row 0 · √½. */
function dctMatrix(d: number): Mat {
  return new Mat(d, d).map(
    (_, i, j) =>
      Math.sqrt(2 / d) *
      (i === 0 ? Math.SQRT1_2 : 1) *
      Math.cos((Math.PI * i * (2 * j + 1)) / (2 * d)),
  );
}

describe("DCT-AdamW (GaLore with a DCT basis)", () => {
  it.each([1, 2])(
    "three steps of rank %i, choosing columns at steps 1 and 2 (period 2), keeping them at 3",
    async (rank) => {
      // a large lr, so that the chosen columns change between steps 1 and 2
      const h = { lr: 2.0, beta1: 0.8, beta2: 0.9, eps: 1e-8, wd: 0.1, rank, period: 2 };
      const run = compile(
        program(
          "import std.optim.{dct_adamw}",
          `dct_adamw(lr: ${h.lr}, rank: ${h.rank}, period: ${h.period}, beta1: ${h.beta1}, beta2: ${h.beta2}, weight_decay: ${h.wd})`,
        ),
      );
      const kept = new Map<string, { idx: number[]; M: Mat; V: Mat }>();
      const chosenAt: string[] = [];
      await checkSteps(run, 3, (t, { path, m, n }, W, G) => {
        const right = m >= n;
        const d = Math.min(m, n);
        const D = dctMatrix(d);
        const r = Math.min(h.rank, d);
        const s = kept.get(path) ?? {
          idx: [],
          M: right ? new Mat(m, r) : new Mat(r, n),
          V: right ? new Mat(m, r) : new Mat(r, n),
        };
        if (t === 1 || t % h.period === 0) {
          const S = right ? G.mul(D) : D.t.mul(G);
          const l1 = right
            ? Array.from({ length: d }, (_, j) =>
                Array.from({ length: m }, (_, i) => Math.abs(S.at(i, j))).reduce((a, b) => a + b),
              )
            : Array.from({ length: d }, (_, i) =>
                Array.from({ length: n }, (_, j) => Math.abs(S.at(i, j))).reduce((a, b) => a + b),
              );
          const order = l1.map((v, k) => [v, k] as const).sort((a, b) => b[0] - a[0]);
          s.idx = order
            .slice(0, r)
            .map(([, k]) => k)
            .sort((a, b) => a - b);
          chosenAt.push(`${path}@${t}: ${s.idx.join(",")}`);
        }
        const B = new Mat(d, r).map((_, i, k) => D.at(i, s.idx[k]!));
        const a = right ? G.mul(B) : B.t.mul(G);
        s.M = s.M.scale(h.beta1).plus(a.scale(1 - h.beta1));
        s.V = s.V.scale(h.beta2).plus(a.map((x) => x * x).scale(1 - h.beta2));
        kept.set(path, s);
        const corrected = Math.sqrt(1 - h.beta2 ** t);
        const u = s.M.zip(s.V, (mm, v) => mm / (h.eps * corrected + Math.sqrt(v)));
        const step = (right ? u.mul(B.t) : B.mul(u)).scale((h.lr * corrected) / (1 - h.beta1 ** t));
        return W.scale(1 - h.lr * h.wd).minus(step);
      });
      expect(chosenAt).toHaveLength(4); // both tensors, at steps 1 and 2 only
      // the choice is not trivial: some tensor changes its columns between steps 1 and 2
      const [a1, a2, b1, b2] = [chosenAt[0], chosenAt[2], chosenAt[1], chosenAt[3]].map(
        (c) => c!.split(": ")[1],
      );
      if (rank === 1) expect(a1 !== a2 || b1 !== b2, chosenAt.join("; ")).toBe(true);
    },
  );
});

// --------------------------------------------------------------------------------- GradNormLoRP

describe("GradNormLoRP", () => {
  it("three rank-1 steps: weight-normalized gradients, projected Adam on V, Adam on g", async () => {
    const h = { lr: 0.05, beta1: 0.8, beta2: 0.9, eps: 1e-6, scale: 0.25, period: 100 };
    const run = compile(
      program(
        "import std.optim.{grad_norm_lorp}",
        `grad_norm_lorp(lr: ${h.lr}, rank: 1, period: ${h.period}, scale: ${h.scale}, beta1: ${h.beta1}, beta2: ${h.beta2})`,
      ),
    );
    type Kept = { V: Mat; g: number[]; M: Mat; Vr: Mat; gm: number[]; gv: number[] };
    const kept = new Map<string, Kept>();
    await checkSteps(run, 3, (t, { path, m, n }, W, G, after) => {
      const left = m < n;
      // V = W₀ and g = ‖W₀‖_row before the first step
      const s: Kept = kept.get(path) ?? {
        V: W,
        g: W.rowNorms(),
        M: left ? new Mat(1, n) : new Mat(m, 1),
        Vr: left ? new Mat(1, n) : new Mat(m, 1),
        gm: new Array<number>(m).fill(0),
        gv: new Array<number>(m).fill(0),
      };
      const norms = s.V.rowNorms();
      const unit = s.V.map((x, i) => x / norms[i]!);
      const gradGain = Array.from({ length: m }, (_, i) =>
        Array.from({ length: n }, (_, j) => G.at(i, j) * unit.at(i, j)).reduce((a, b) => a + b),
      );
      const gradV = G.map((x, i, j) => (s.g[i]! / norms[i]!) * (x - unit.at(i, j) * gradGain[i]!));
      const B = left
        ? stored(after, `state:${path}:P`, m, 1)
        : stored(after, `state:${path}:Q`, 1, n);
      if (t === 1)
        expectTopSingularVectors(gradV, left ? B : B.t, left, `${path}: ∇V's projection`);
      const R = left ? B.t.mul(gradV) : gradV.mul(B.t);
      s.M = s.M.scale(h.beta1).plus(R.scale(1 - h.beta1));
      s.Vr = s.Vr.scale(h.beta2).plus(R.map((x) => x * x).scale(1 - h.beta2));
      const N = s.M.zip(s.Vr, (mm, v) => mm / (Math.sqrt(v) + h.eps));
      const size = (h.lr * Math.sqrt(1 - h.beta2 ** t)) / (1 - h.beta1 ** t);
      s.V = s.V.minus((left ? B.mul(N) : N.mul(B)).scale(size * h.scale));
      s.gm = s.gm.map((x, i) => h.beta1 * x + (1 - h.beta1) * gradGain[i]!);
      s.gv = s.gv.map((x, i) => h.beta2 * x + (1 - h.beta2) * gradGain[i]! ** 2);
      s.g = s.g.map((x, i) => x - (size * s.gm[i]!) / (Math.sqrt(s.gv[i]!) + h.eps));
      kept.set(path, s);
      expectAllClose(
        stored(after, `state:${path}:direction`, m, n).data,
        s.V.data,
        1e-9,
        `${path}: V`,
      );
      const newNorms = s.V.rowNorms();
      return s.V.map((x, i) => (s.g[i]! * x) / newNorms[i]!);
    });
  });
});

// -------------------------------------------------------------------------- optimizer memory

describe("optimizer state of each method, as its paper counts it", () => {
  /** Elements of optimizer state per optimized tensor (what `lrkc build --emit memory` lists). */
  function stateElements(rule: string, imports: string): Map<string, number> {
    const run = compile(program(imports, rule));
    const out = new Map<string, number>();
    for (const s of run.step.states) {
      const path = s.name.split(":")[0]!;
      out.set(path, (out.get(path) ?? 0) + s.shape.reduce((a, d) => a * d, 1));
    }
    return out;
  }
  const shapes = layers.map((l) => ({ ...l, lo: Math.min(l.m, l.n), hi: Math.max(l.m, l.n) }));

  it("Fira: GaLore's min(m,n)·r + 2·max(m,n)·r, plus one scalar for the limiter", () => {
    const got = stateElements("fira(lr: 0.1, rank: 2)", "import std.optim.{fira}");
    for (const { path, lo, hi } of shapes) {
      const r = Math.min(2, lo);
      expect(got.get(path), path).toBe(lo * r + 2 * hi * r + 1);
    }
  });

  it("FRUGAL (SVD): the projector and Adam's two moments on r = round(ρ·min(m,n)); none for the rest", () => {
    const got = stateElements("frugal(lr: 0.1, density: 0.5)", "import std.optim.{frugal}");
    const rank = { "l2.weight": 2, "l3.weight": 1 } as Record<string, number>;
    for (const { path, lo, hi } of shapes)
      expect(got.get(path), path).toBe(lo * rank[path]! + 2 * hi * rank[path]!);
  });

  it("DCT-AdamW: 2·max(m,n)·r moments and r indices, no projection matrix", () => {
    const got = stateElements("dct_adamw(lr: 0.1, rank: 1)", "import std.optim.{dct_adamw}");
    for (const { path, hi } of shapes) expect(got.get(path), path).toBe(2 * hi * 1 + 1);
  });

  it("TRP: SGD's momentum m·n, and m·n for U_k V_kᵀ kept from the truncation to the next step", () => {
    const got = stateElements("trp(lr: 0.1)", "import std.optim.{trp}");
    for (const { path, m, n } of shapes) expect(got.get(path), path).toBe(2 * m * n);
  });

  it("GradNormLoRP: GaLore's state for V, V itself (m·n here: the model holds W), 3m for g", () => {
    const got = stateElements(
      "grad_norm_lorp(lr: 0.1, rank: 1)",
      "import std.optim.{grad_norm_lorp}",
    );
    for (const { path, m, n, lo, hi } of shapes)
      expect(got.get(path), path).toBe(lo * 1 + 2 * hi * 1 + m * n + 3 * m);
  });
});

// ----------------------------------------------------------------------------------------- SoRA

describe("SoRA: the gated adapter and its proximal gate optimizer", () => {
  const soraProgram = (gate: string) => `import std.nn.{Linear}
import std.adapters.{sora}
import std.optim.{adamw, sora_gate}

${moons}

model Net {
  l1 = Linear(2, 3)
  l2 = Linear(3, 4)
  l3 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l2, l3 with sora(rank: 3, sparsity: 0.01)
  optimize **.gate with ${gate}
  optimize adapters with adamw(lr: 0.05)
  steps 10
  batch 8
  seed 3
}
`;

  it.each([false, true])(
    "three gate steps: transformers AdamW, then the soft threshold (sequential masking: %s)",
    async (sequential) => {
      const h = { lr: 0.3, beta1: 0.8, beta2: 0.9, eps: 1e-6, xi: 0.4 };
      const run = compile(
        soraProgram(
          `sora_gate(lr: ${h.lr}, threshold: ${h.xi}, beta1: ${h.beta1}, beta2: ${h.beta2}, sequential: ${sequential})`,
        ),
      );
      const gates = ["l2.sora.gate", "l3.sora.gate"];
      for (const g of gates) expect(run.step.trainable).toContain(g);
      const store = await init(run, true);
      const moments = new Map(gates.map((g) => [g, { m: [0, 0, 0], v: [0, 0, 0] }]));
      let zeros = 0;
      let betweenXiAnd2Xi = 0;
      for (let t = 1; t <= 3; t++) {
        const before = new Map(gates.map((g) => [g, param(store, g)]));
        const { grads } = await trainStep(run, store, t, true);
        for (const g of gates) {
          const s = moments.get(g)!;
          const size = (h.lr * Math.sqrt(1 - h.beta2 ** t)) / (1 - h.beta1 ** t);
          const want = Array.from(before.get(g)!, (p, i) => {
            const d = grads.get(g)![i]!;
            s.m[i] = h.beta1 * s.m[i]! + (1 - h.beta1) * d;
            s.v[i] = h.beta2 * s.v[i]! + (1 - h.beta2) * d * d;
            let q = p - (size * s.m[i]!) / (Math.sqrt(s.v[i]!) + h.eps);
            if (Math.abs(q) > h.xi && Math.abs(q) < 2 * h.xi) betweenXiAnd2Xi++;
            if (sequential) {
              if (q > h.xi) q -= h.xi;
              if (q < -h.xi) q += h.xi;
              if (Math.abs(q) < h.xi) q = 0;
            } else q = Math.sign(q) * Math.max(Math.abs(q) - h.xi, 0);
            if (q === 0) zeros++;
            return q;
          });
          expectAllClose(param(store, g), want, 1e-9, `${g} after step ${t}`);
        }
      }
      expect(zeros, "gates the threshold zeroed").toBeGreaterThan(0);
      // the case where the two maskings differ happened
      expect(betweenXiAnd2Xi).toBeGreaterThan(0);
    },
  );

  it("has r·(in + out) + r trainable numbers per adapted Linear, and adds sparsity · mean |g| to the loss", async () => {
    const run = compile(soraProgram("sora_gate(lr: 0.1)"));
    const sizes = new Map(run.placement.params.map((p) => [p.param.path, p.param.shape]));
    const count = (prefix: string) =>
      run.step.trainable
        .filter((p) => p.startsWith(prefix))
        .reduce((a, p) => a + sizes.get(p)!.reduce((x, d) => x * d, 1), 0);
    expect(count("l2.sora.")).toBe(3 * (3 + 4) + 3);
    expect(count("l3.sora.")).toBe(3 * (4 + 2) + 3);
    // B = 0 at the start: the adapted net computes the base net, and the loss differs by the
    // regularizer alone, 0.01 · (Σ |g| over both gates) / (3 · 2)
    const store = await init(run, true);
    const gateSum = ["l2.sora.gate", "l3.sora.gate"]
      .flatMap((g) => Array.from(param(store, g)))
      .reduce((a, x) => a + Math.abs(x), 0);
    const withGates = (await trainStep(run, new Map(store), 1, true)).loss;
    const zeroed = new Map(store);
    for (const g of ["l2.sora.gate", "l3.sora.gate"])
      zeroed.set(`param:${g}`, { shape: [3], data: new Float64Array(3) });
    const withoutRegularizer = (await trainStep(run, zeroed, 1, true)).loss;
    expect(withGates - withoutRegularizer).toBeCloseTo((0.01 * gateSum) / 6, 12);
  });
});

describe("CoDyRA: the gated adapter and its growing threshold", () => {
  const program = (gate: string) => `import std.nn.{Linear}
import std.adapters.{codyra}
import std.optim.{adamw, codyra_gate}

${moons}

model Net {
  l1 = Linear(2, 3)
  l2 = Linear(3, 4)
  l3 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l2, l3 with codyra(rank: 3)
  optimize **.gate with ${gate}
  optimize adapters with adamw(lr: 0.05)
  steps 12
  batch 8
  seed 3
}
`;

  it("12 gate steps as the reference's loop: torch AdamW, then κ from linspace(0, max, levels) after the dense part", async () => {
    const h = {
      lr: 0.2,
      beta1: 0.9,
      beta2: 0.9999,
      eps: 1e-8,
      wd: 0.1,
      max: 0.4,
      dense: 0.25,
      levels: 4,
    };
    const run = compile(
      program(
        `codyra_gate(lr: ${h.lr}, max_kappa: ${h.max}, dense: ${h.dense}, levels: ${h.levels}, weight_decay: ${h.wd})`,
      ),
    );
    const gates = ["l2.codyra.gate", "l3.codyra.gate"];
    const store = await init(run, true);
    const moments = new Map(gates.map((g) => [g, { m: [0, 0, 0], v: [0, 0, 0] }]));
    // the reference's schedule, literally (models/codyra.py train_model)
    const T = 12;
    const lambdas = Array.from({ length: h.levels }, (_, i) => (h.max * i) / (h.levels - 1));
    const denseIters = h.dense * T;
    const stepIters = Math.floor((T - denseIters) / h.levels);
    let thresholdId = 0;
    let threshold = lambdas[0]!;
    let pruned = 0;
    for (let it = 0; it < T; it++) {
      if (stepIters > 0 && it >= denseIters && it % stepIters === 0) {
        thresholdId += 1;
        threshold = lambdas[Math.min(lambdas.length - 1, thresholdId)]!;
      }
      const t = it + 1;
      const before = new Map(gates.map((g) => [g, param(store, g)]));
      const { grads } = await trainStep(run, store, t, true);
      for (const g of gates) {
        const s = moments.get(g)!;
        const want = Array.from(before.get(g)!, (p, i) => {
          const d = grads.get(g)![i]!;
          let q = p * (1 - h.lr * h.wd);
          s.m[i] = h.beta1 * s.m[i]! + (1 - h.beta1) * d;
          s.v[i] = h.beta2 * s.v[i]! + (1 - h.beta2) * d * d;
          const mhat = s.m[i]! / (1 - h.beta1 ** t);
          const vhat = s.v[i]! / (1 - h.beta2 ** t);
          q -= (h.lr * mhat) / (Math.sqrt(vhat) + h.eps);
          if (it > denseIters) {
            if (q > threshold) q -= threshold;
            if (q < -threshold) q += threshold;
            if (Math.abs(q) < threshold) q = 0;
            if (q === 0) pruned++;
          }
          return q;
        });
        expectAllClose(param(store, g), want, 1e-9, `${g} after step ${t}`);
      }
    }
    expect(threshold).toBeCloseTo(h.max, 12); // the schedule reached its end
    expect(pruned, "gates the threshold zeroed").toBeGreaterThan(0);
  });

  it("has r·(in + out) + r trainable numbers per adapted Linear and starts as the base model", async () => {
    const run = compile(program("codyra_gate(lr: 0.1)"));
    const sizes = new Map(run.placement.params.map((p) => [p.param.path, p.param.shape]));
    const count = (prefix: string) =>
      run.step.trainable
        .filter((p) => p.startsWith(prefix))
        .reduce((a, p) => a + sizes.get(p)!.reduce((x, d) => x * d, 1), 0);
    expect(count("l2.codyra.")).toBe(3 * (3 + 4) + 3);
    const store = await init(run, true);
    for (const g of ["l2.codyra.B", "l3.codyra.B"])
      expect([...param(store, g)].every((x) => x === 0)).toBe(true);
  });
});
