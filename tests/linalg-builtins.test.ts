// `svd(x, rank)` → (U, S, Vh), `qr(x)` → (Q, R) and seeded random values, computed once in an
// adapter's `const`s and read back through params initialized from them. Checked against
// hand-known cases (the SVD of a diagonal matrix) and against plain float64 loops written here:
// orthonormality, reconstruction, Gram–Schmidt for the QR, and the eigenvalues of W Wᵀ.
import { describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { hash32, normalAt, uniformAt } from "../runtime/random.js";
import { compile, init, trainStep } from "./program-helpers.js";

function program(members: string, rule = "adapt mid with probe"): string {
  return `import std.nn.{Linear}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 64)

model Net {
  up = Linear(2, 8)
  mid = Linear(8, 5)
  head = Linear(5, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = head(gelu(mid(gelu(up(x)))))
}

adapter probe on Linear(in, out) {
${members}
  forward(x: f32[..., in]) -> f32[..., out] = base(x)
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  ${rule}
  optimize adapters with sgd(lr: 0)
}
`;
}

type Matrix = number[][];

function matrix(t: Tensor): Matrix {
  const [m, n] = t.shape.length === 2 ? (t.shape as [number, number]) : [1, t.shape[0]!];
  return Array.from({ length: m }, (_, i) => Array.from(t.data.slice(i * n, (i + 1) * n)));
}

const transpose = (a: Matrix): Matrix => a[0]!.map((_, j) => a.map((row) => row[j]!));
const product = (a: Matrix, b: Matrix): Matrix =>
  a.map((row) => b[0]!.map((_, j) => row.reduce((s, x, k) => s + x * b[k]![j]!, 0)));

function expectIdentity(a: Matrix, tolerance: number): void {
  a.forEach((row, i) =>
    row.forEach((x, j) => expect(Math.abs(x - (i === j ? 1 : 0))).toBeLessThan(tolerance)),
  );
}

function expectClose(a: Matrix, b: Matrix, tolerance: number): void {
  expect(a.length).toBe(b.length);
  a.forEach((row, i) =>
    row.forEach((x, j) => expect(Math.abs(x - b[i]![j]!)).toBeLessThan(tolerance)),
  );
}

/** Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (float64, independent of lrk). */
function symmetricEigenvalues(a0: Matrix): number[] {
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
          const akp = a[k]![p]!;
          const akq = a[k]![q]!;
          a[k]![p] = c * akp - s * akq;
          a[k]![q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p]![k]!;
          const aqk = a[q]![k]!;
          a[p]![k] = c * apk - s * aqk;
          a[q]![k] = s * apk + c * aqk;
        }
      }
  return a.map((row, i) => row[i]!).sort((x, y) => y - x);
}

describe("svd", () => {
  it("of a diagonal matrix gives its largest entries and the matching unit vectors", async () => {
    const run = compile(
      program(`  const D = eye(4) * (arange(4) + 1)
  const (U, S, Vh) = svd(D, 2, exact: true)
  param u: f32[4, 2] = U
  param s: f32[2] = S
  param vh: f32[2, 4] = Vh`),
      { batch: 4 },
    );
    const store = await init(run, true);
    const get = (n: string) => matrix(store.get(`param:mid.probe.${n}`)!);
    const e = (k: number) => [0, 1, 2, 3].map((i) => (i === k ? 1 : 0));
    expectClose(get("s"), [[4, 3]], 1e-12);
    expectClose(get("u"), transpose([e(3), e(2)]), 1e-12);
    expectClose(get("vh"), [e(3), e(2)], 1e-12);
  });

  it("of a weight: orthonormal factors, W's singular values, and W back at full rank", async () => {
    const run = compile(
      program(`  const (U, S, Vh) = svd(base.weight, 5, exact: true)
  const (U2, S2, Vh2) = svd(base.weight, 2, iterations: 30)
  param u: f32[out, 5] = U
  param s: f32[5] = S
  param vh: f32[5, in] = Vh
  param s2: f32[2] = S2
  param rebuilt: f32[out, in] = (U * S) @ Vh`),
      { batch: 4 },
    );
    const store = await init(run, true);
    const get = (n: string) => matrix(store.get(`param:mid.probe.${n}`)!);
    const w = matrix(store.get("param:mid.weight")!);
    const u = get("u");
    const vh = get("vh");
    expectIdentity(product(transpose(u), u), 1e-10);
    expectIdentity(product(vh, transpose(vh)), 1e-10);
    expectClose(get("rebuilt"), w, 1e-10);
    const sigma = symmetricEigenvalues(product(w, transpose(w))).map(Math.sqrt);
    expectClose(get("s"), [sigma], 1e-10);
    // The randomized method with enough iterations finds the top two.
    expectClose(get("s2"), [sigma.slice(0, 2)], 1e-6);
  });

  it("of a rank-1 matrix asked for rank 2: S = [1, 0] and a zero row of Vh, not NaN", async () => {
    const run = compile(
      program(`  const D = eye(4) * where(arange(4) == 2, 1, 0)
  const (U, S, Vh) = svd(D, 2, exact: true)
  param s: f32[2] = S
  param vh: f32[2, 4] = Vh`),
      { batch: 4 },
    );
    const store = await init(run, true);
    const near = (got: ArrayLike<number>, want: number[]) =>
      want.forEach((w, i) => expect(Math.abs(got[i]! - w)).toBeLessThan(1e-12));
    near(store.get("param:mid.probe.s")!.data, [1, 0]);
    near(store.get("param:mid.probe.vh")!.data, [0, 0, 1, 0, 0, 0, 0, 0]);
  });

  it("refuses a rank above min(rows, cols)", () => {
    expect(() =>
      compile(program(`  const (U, S, Vh) = svd(base.weight, 6)\n  param s: f32[6] = S`)),
    ).toThrow(/rank 6 is larger than min\(rows, cols\) = 5/);
  });
});

describe("qr", () => {
  /** Classical Gram–Schmidt, twice (float64): Q with R's diagonal positive. */
  function gramSchmidt(a: Matrix): Matrix {
    const cols = transpose(a);
    const q: number[][] = [];
    for (const c of cols.slice(0, Math.min(a.length, cols.length))) {
      let v = [...c];
      for (let pass = 0; pass < 2; pass++)
        for (const e of q) {
          const d = e.reduce((s, x, i) => s + x * v[i]!, 0);
          v = v.map((x, i) => x - d * e[i]!);
        }
      const n = Math.hypot(...v);
      q.push(v.map((x) => x / n));
    }
    return transpose(q);
  }

  for (const [what, expr, rows, cols] of [
    ["a wide", "base.weight", "out", "in"],
    ["a tall", "base.weight^T", "in", "out"],
  ] as const) {
    it(`of ${what} matrix: Q R = x, R upper triangular, Q Gram–Schmidt's up to LAPACK's signs`, async () => {
      const k = "5";
      const run = compile(
        program(`  const (Q, R) = qr(${expr})
  param q: f32[${rows}, ${k}] = Q
  param r: f32[${k}, ${cols}] = R`),
        { batch: 4 },
      );
      const store = await init(run, true);
      const q = matrix(store.get("param:mid.probe.q")!);
      const r = matrix(store.get("param:mid.probe.r")!);
      const w0 = matrix(store.get("param:mid.weight")!);
      const x = what === "a wide" ? w0 : transpose(w0);
      expectClose(product(q, r), x, 1e-10);
      r.forEach((row, i) => row.forEach((v, j) => j < i && expect(Math.abs(v)).toBe(0)));
      expectIdentity(product(transpose(q), q), 1e-10);
      // Householder (LAPACK): R_kk = -sign(x_kk after the earlier reflections) · ‖·‖, so Q's
      // column k is Gram–Schmidt's times sign(R_kk).
      const gs = gramSchmidt(x);
      const signed = gs.map((row) => row.map((v, j) => v * Math.sign(r[j]![j]!)));
      expectClose(q, signed, 1e-10);
      expect(r[0]![0]! * x[0]![0]!).toBeLessThan(0);
    });
  }
});

describe("seeded random values", () => {
  it("normal([r, n], seed:) and uniform([r, n], lo, hi, seed:) depend on the seed alone", async () => {
    const members = `  const a = normal([3, in], seed: 7, std: 2)
  const b = uniform([out, 3], -1, 1, seed: 8)
  param pa: f32[3, in] = a
  param pb: f32[out, 3] = b`;
    const one = await init(compile(program(members), { batch: 4 }), true);
    const other = await init(
      compile(program(members).replace("train t {", "train t {\n  seed 99"), { batch: 4 }),
      true,
    );
    const pa = one.get("param:mid.probe.pa")!;
    const pb = one.get("param:mid.probe.pb")!;
    for (let i = 0; i < 24; i++) expect(pa.data[i]).toBeCloseTo(2 * normalAt(7, i), 12);
    for (let i = 0; i < 15; i++) expect(pb.data[i]).toBeCloseTo(-1 + 2 * uniformAt(8, i), 12);
    expect([...other.get("param:mid.probe.pa")!.data]).toEqual([...pa.data]);
    // The model's own initial weights do follow the train seed.
    expect([...other.get("param:mid.weight")!.data]).not.toEqual([
      ...one.get("param:mid.weight")!.data,
    ]);
  });

  it("with `key: step`, new numbers at every step: the seed is hash32(seed, step)", async () => {
    const run = compile(
      `import std.nn.{Linear}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 64)

model Net {
  l = Linear(2, 3)
  forward(x: f32[B, 2]) -> f32[B, 3] = l(x)
}

optimizer noisy(lr: float, noise: float) on param: f32[m, n] {
  update(g) {
    param -= lr * g + noise * normal([m, n], seed: 3, key: step)
  }
}

train t {
  model Net()
  data moons
  loss mean(model(batch.x) ^ 2)
  optimize l.weight with noisy(lr: 0, noise: 0.5)
  optimize ** with sgd(lr: 0)
}
`,
      { batch: 4 },
    );
    const store = await init(run, true);
    const w = Float64Array.from(store.get("param:l.weight")!.data);
    for (let step = 1; step <= 2; step++) {
      await trainStep(run, store, step, true);
      for (let i = 0; i < 6; i++) w[i] = w[i]! - 0.5 * normalAt(hash32(3, step), i);
      const now = store.get("param:l.weight")!.data;
      for (let i = 0; i < 6; i++) expect(now[i]).toBeCloseTo(w[i]!, 12);
    }
  });

  it("without a seed, `normal` as a value asks for one", () => {
    expect(() =>
      compile(program(`  const a = normal([3, in])\n  param pa: f32[3, in] = a`)),
    ).toThrow(/E0205: `normal` needs `seed`/);
  });

  it("without a shape, `normal` as a value says what it needs", () => {
    expect(() =>
      compile(program(`  const a = normal(3, seed: 1)\n  param pa: f32[3] = a`)),
    ).toThrow(/`normal` is not available here/);
  });
});
