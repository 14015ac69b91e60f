// CoSO (std.optim.coso) against a float64 TypeScript reference written here from the paper's
// algorithm and the official CoSOProjector / DoubleSVD: eight steps over three tasks (boundaries
// after steps 3 and 5, a projection every 2 steps of a task), on the CPU interpreter in float64.
// The singular vectors of the projection are only defined up to sign, so the test checks that the
// projection the optimizer stored spans the top singular subspace of the orthogonalized gradient
// and then uses it; the sketch and the history are compared through Sk Skᵀ and P_h P_hᵀ, which
// do not depend on those signs. Also: its state against the paper's count, and its refusals.
import { describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { compile, init, param, prepare, trainStep, type Store } from "./program-helpers.js";
import { expectAllClose } from "./helpers.js";

type Mat = { rows: number; cols: number; data: Float64Array<ArrayBuffer> };

const mat = (rows: number, cols: number, data = new Float64Array(rows * cols)): Mat => ({
  rows,
  cols,
  data,
});
const at = (a: Mat, i: number, j: number) => a.data[i * a.cols + j]!;
function mul(a: Mat, b: Mat): Mat {
  const out = mat(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < b.cols; j++) {
      let s = 0;
      for (let k = 0; k < a.cols; k++) s += at(a, i, k) * at(b, k, j);
      out.data[i * b.cols + j] = s;
    }
  return out;
}
function t(a: Mat): Mat {
  const out = mat(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < a.cols; j++) out.data[j * a.rows + i] = at(a, i, j);
  return out;
}
const minus = (a: Mat, b: Mat) =>
  mat(
    a.rows,
    a.cols,
    a.data.map((x, i) => x - b.data[i]!),
  );
/** Columns `from` to `to` (exclusive). */
function columns(a: Mat, from: number, to: number): Mat {
  const out = mat(a.rows, to - from);
  for (let i = 0; i < a.rows; i++)
    for (let j = from; j < to; j++) out.data[i * (to - from) + j - from] = at(a, i, j);
  return out;
}
function concatColumns(a: Mat, b: Mat): Mat {
  const out = mat(a.rows, a.cols + b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < out.cols; j++)
      out.data[i * out.cols + j] = j < a.cols ? at(a, i, j) : at(b, i, j - a.cols);
  return out;
}
const scaleColumns = (a: Mat, s: number[]) =>
  mat(
    a.rows,
    a.cols,
    a.data.map((x, k) => x * s[k % a.cols]!),
  );

/** Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix, by cyclic Jacobi. */
function symmetricEigen(a: Mat): { values: number[]; vectors: Mat } {
  const n = a.rows;
  const A = Float64Array.from(a.data);
  const Q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) Q[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += A[p * n + q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = A[p * n + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (A[q * n + q]! - A[p * n + p]!) / (2 * apq);
        const tt = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(tt * tt + 1);
        const s = tt * c;
        for (let k = 0; k < n; k++) {
          const akp = A[k * n + p]!;
          const akq = A[k * n + q]!;
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = A[p * n + k]!;
          const aqk = A[q * n + k]!;
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const qkp = Q[k * n + p]!;
          const qkq = Q[k * n + q]!;
          Q[k * n + p] = c * qkp - s * qkq;
          Q[k * n + q] = s * qkp + c * qkq;
        }
      }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort(
    (i, j) => A[j * n + j]! - A[i * n + i]!,
  );
  const vectors = mat(n, n);
  order.forEach((src, dst) => {
    for (let k = 0; k < n; k++) vectors.data[k * n + dst] = Q[k * n + src]!;
  });
  return { values: order.map((i) => A[i * n + i]!), vectors };
}

/** The top `r` left singular vectors and values of x (from x xᵀ). */
function leftSvd(x: Mat, r: number): { U: Mat; s: number[] } {
  const { values, vectors } = symmetricEigen(mul(x, t(x)));
  return { U: columns(vectors, 0, r), s: values.slice(0, r).map((v) => Math.sqrt(Math.max(v, 0))) };
}

function stored(store: Store, name: string, rows: number, cols: number): Mat {
  const v = store.get(name);
  if (!v) throw new Error(`no \`${name}\` in the store`);
  return mat(rows, cols, Float64Array.from(v.data));
}

function program(rule: string, targets = "l2.weight"): string {
  return `import std.nn.{Linear}
import std.optim.{coso}

data moons = std.data.two_moons(n: 64, seed: 2)

model Net {
  l1 = Linear(2, 8)
  l2 = Linear(8, 6)
  l3 = Linear(6, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze l1, l3, **.bias
  optimize ${targets} with ${rule}
  steps 10
  batch 8
  seed 5
}
`;
}

describe("CoSO", () => {
  const h = { lr: 0.05, beta1: 0.8, beta2: 0.9, eps: 1e-6, wd: 0.1, period: 2 };
  const [m, n, pr, r, threshold] = [6, 8, 2, 3, 0.99];
  const boundaries = [3, 5];

  it("eight steps over three tasks: orthogonalized, sketched, projected Adam restarted per task", async () => {
    const run = compile(
      program(
        `coso(lr: ${h.lr}, proj_rank: ${pr}, rank: ${r}, threshold: ${threshold}, boundaries: [${boundaries}], period: ${h.period}, beta1: ${h.beta1}, beta2: ${h.beta2}, eps: ${h.eps}, weight_decay: ${h.wd}, exact: true)`,
      ),
    );
    const store = await init(run, true);
    const W0 = "l2.weight";
    let history: Mat[] = []; // unit columns, in order
    let sketch = mat(m, r);
    let M = mat(pr, n);
    let V = mat(pr, n);
    for (let step = 1; step <= 8; step++) {
      const begin = Math.max(0, ...boundaries.filter((b) => step > b));
      const j = step - begin;
      if (j === 1 && step > 1) {
        const norms = Array.from({ length: r }, (_, c) =>
          Math.sqrt(
            Array.from({ length: m }, (_, i) => at(sketch, i, c) ** 2).reduce((a, b) => a + b),
          ),
        );
        const energy = norms.map((x) => x * x);
        const total = energy.reduce((a, b) => a + b);
        let running = 0;
        const kept = energy.filter((e) => (running += e) / total < threshold).length;
        for (let c = 0; c < kept; c++)
          history.push(
            mat(
              m,
              1,
              Float64Array.from({ length: m }, (_, i) => at(sketch, i, c) / norms[c]!),
            ),
          );
        sketch = mat(m, r);
        M = mat(pr, n);
        V = mat(pr, n);
      }
      const W = mat(m, n, Float64Array.from(param(store, W0)));
      const { grads } = await trainStep(run, store, step, true);
      let G = mat(m, n, Float64Array.from(grads.get(W0)!));
      for (const u of history) G = minus(G, mul(u, mul(t(u), G)));
      const P = stored(store, `state:${W0}:P`, m, pr);
      if ((j - 1) % h.period === 0) {
        // the stored projection: orthonormal, and spanning the top proj_rank left subspace of G
        const top = leftSvd(G, r);
        const want = columns(top.U, 0, pr);
        expectAllClose(mul(P, t(P)).data, mul(want, t(want)).data, 1e-9, `P Pᵀ at step ${step}`);
        const newest = scaleColumns(columns(top.U, 0, r), top.s);
        const both = leftSvd(concatColumns(sketch, newest), r + 1);
        const floor = both.s[r]! ** 2;
        const shrunk = both.s.slice(0, r).map((s) => Math.sqrt(Math.max(s * s - floor, 0)));
        sketch = scaleColumns(columns(both.U, 0, r), shrunk);
      }
      const Sk = stored(store, `state:${W0}:sketch`, m, r);
      expectAllClose(mul(Sk, t(Sk)).data, mul(sketch, t(sketch)).data, 1e-9, `Sk Skᵀ at ${step}`);
      const R = mul(t(P), G);
      M = mat(
        pr,
        n,
        M.data.map((x, i) => h.beta1 * x + (1 - h.beta1) * R.data[i]!),
      );
      V = mat(
        pr,
        n,
        V.data.map((x, i) => h.beta2 * x + (1 - h.beta2) * R.data[i]! ** 2),
      );
      const size = (h.lr * Math.sqrt(1 - h.beta2 ** j)) / (1 - h.beta1 ** j);
      const N = mat(
        pr,
        n,
        M.data.map((x, i) => x / (Math.sqrt(V.data[i]!) + h.eps)),
      );
      const stepped = minus(
        W,
        mat(
          m,
          n,
          mul(P, N).data.map((x) => size * x),
        ),
      );
      const want = stepped.data.map((x) => x - h.lr * h.wd * x);
      expectAllClose(param(store, W0), want, 1e-9, `${W0} after step ${step}`);
      // the history, through P_h P_hᵀ (the stored one has zero columns after the used ones)
      const Ph = stored(store, `state:${W0}:history`, m, 6);
      const wantH: Float64Array = history.reduce(
        (acc, u) => acc.map((x, k) => x + at(u, Math.floor(k / m), 0) * at(u, k % m, 0)),
        new Float64Array(m * m),
      );
      expectAllClose(mul(Ph, t(Ph)).data, wantH, 1e-9, `P_h P_hᵀ at step ${step}`);
      expect(store.get(`state:${W0}:used`)!.data[0]).toBe(history.length);
    }
    // both task ends added directions (else the history would be untested)
    expect(history.length).toBeGreaterThan(1);
  });

  /** Elements of optimizer state of l2.weight (what `lrkc build --emit memory` lists). */
  function stateElements(rule: string): Map<string, number[]> {
    const run = compile(program(rule));
    return new Map(run.step.states.map((x) => [x.name.split(":").at(-1)!, [...x.shape]]));
  }

  it("holds the paper's m·r_p + 2·r_p·n + m·r + m·k_h, k_h = min(m, rank · len(boundaries))", () => {
    const got = stateElements(
      "coso(lr: 0.1, proj_rank: 2, rank: 1, threshold: 0.9, boundaries: [3, 5, 7])",
    );
    // history: min(6, 1 · 3) = 3 columns, and one count of those used
    expect(Object.fromEntries(got)).toEqual({
      P: [m, 2],
      sketch: [m, 1],
      history: [m, 3],
      used: [],
      M: [2, n],
      V: [2, n],
    });
    const total = [...got.values()].reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
    expect(total).toBe(m * 2 + 2 * 2 * n + m * 1 + m * 3 + 1);
    // an explicit capacity replaces it
    expect(
      stateElements(
        "coso(lr: 0.1, proj_rank: 2, rank: 1, threshold: 0.9, boundaries: [3, 5, 7], capacity: 2)",
      ).get("history"),
    ).toEqual([m, 2]);
  });

  it("refuses a sketch rank the matrix cannot hold, at the user's call", () => {
    const { diagnostics } = prepare(
      new SourceFile("test.lrk", program("coso(lr: 0.1, proj_rank: 2, rank: 6, threshold: 0.9)")),
    );
    const errors = diagnostics.filter((d) => d.severity === "error");
    expect(errors.map((d) => d.code)).toEqual(["E0205"]);
    expect(errors[0]!.message).toContain("2 and 6 for a 6 x 8 matrix");
    expect(errors[0]!.at?.file.path).toBe("test.lrk");
  });

  it("`len` counts a list known while compiling, and refuses anything else", () => {
    const { diagnostics } = prepare(
      new SourceFile(
        "test.lrk",
        program("coso(lr: 0.1, proj_rank: 2, rank: 1, threshold: 0.9, boundaries: 3)"),
      ),
    );
    const errors = diagnostics.filter((d) => d.severity === "error");
    expect(errors.map((d) => d.code)).toContain("E0205");
    expect(errors.map((d) => d.message)).toContain(
      "`len` takes one list or tuple known while compiling",
    );
  });

  it("decides task starts and refreshes on the host, once for all its tensors", () => {
    const run = compile(
      program(
        "coso(lr: 0.1, proj_rank: 1, rank: 1, threshold: 0.9, boundaries: [3, 5], period: 2)",
        "l2.weight, l3.weight",
      ),
    );
    // two conditions (a task starts; a projection is due), the same in both tensors' updates
    expect(run.step.variants.size).toBe(4);
  });
});
