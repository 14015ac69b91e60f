// The interpreter's intrinsics: randomized truncated SVD, top-k masks, group quantization.
import { describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { evaluate, tensor } from "../runtime/interpreter.js";
import {
  fixColumnSigns,
  householderQ,
  leadingColumns,
  mat,
  matmul,
  svd,
  transpose,
  type Mat,
} from "../runtime/linalg.js";
import { normalAt } from "../runtime/random.js";

/** U diag(s) Vᵀ with random orthonormal U [m, k] and V [n, k]. */
function withSpectrum(m: number, n: number, s: number[], seed: number): Mat {
  const k = s.length;
  const u = householderQ(
    mat(
      m,
      k,
      Array.from({ length: m * k }, (_, i) => normalAt(seed, i)),
    ),
  );
  const v = householderQ(
    mat(
      n,
      k,
      Array.from({ length: n * k }, (_, i) => normalAt(seed + 1, i)),
    ),
  );
  for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) u.data[i * k + j]! *= s[j]!;
  return matmul(u, transpose(v));
}

const maxAbsDiff = (a: Mat, b: Mat) => Math.max(...a.data.map((x, i) => Math.abs(x - b.data[i]!)));
const eye = (n: number) =>
  mat(
    n,
    n,
    Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0)),
  );

function runSvd(g: Mat, side: "left" | "right", rank: number, float64 = true, opts = {}): Mat {
  const b = new Builder();
  const x = b.input("data", "g", [g.rows, g.cols]);
  const y = b.svd(x, side, rank, opts);
  const out = evaluate(b.graph, new Map([[x, tensor([g.rows, g.cols], g.data)]]), [y], { float64 });
  const [r, c] = b.shape(y) as [number, number];
  return mat(r, c, out.get(y)!.data);
}

describe("svd", () => {
  const spectrum = [10, 8, 6, 0.5, 0.4, 0.3, 0.2, 0.1];

  it("the exact Jacobi SVD reconstructs its matrix", () => {
    const g = withSpectrum(12, 8, spectrum, 3);
    const { u, s, v } = svd(g);
    expect(maxAbsDiff(mat(8, 1, s), mat(8, 1, spectrum))).toBeLessThan(1e-12);
    const us = mat(
      12,
      8,
      u.data.map((x, i) => x * s[i % 8]!),
    );
    expect(maxAbsDiff(matmul(us, transpose(v)), g)).toBeLessThan(1e-12);
    expect(maxAbsDiff(matmul(transpose(u), u), eye(8))).toBeLessThan(1e-12);
    const wide = svd(transpose(g));
    expect(maxAbsDiff(mat(8, 1, wide.s), mat(8, 1, spectrum))).toBeLessThan(1e-12);
  });

  it("left singular vectors match the exact ones", () => {
    const g = withSpectrum(12, 8, spectrum, 3);
    const p = runSvd(g, "left", 3);
    expect([p.rows, p.cols]).toEqual([12, 3]);
    const ur = leadingColumns(svd(g).u, 3);
    expect(maxAbsDiff(matmul(p, transpose(p)), matmul(ur, transpose(ur)))).toBeLessThan(1e-6);
    expect(maxAbsDiff(matmul(transpose(p), p), eye(3))).toBeLessThan(1e-12);
    fixColumnSigns(ur);
    // distinct singular values: equal up to the sign rule
    expect(maxAbsDiff(p, ur)).toBeLessThan(1e-6);
    expect(runSvd(g, "left", 3).data).toEqual(p.data);
    const p32 = runSvd(g, "left", 3, false);
    expect(maxAbsDiff(p32, p)).toBeLessThan(1e-5);
  });

  it("right singular vectors come back as orthonormal rows", () => {
    const g = withSpectrum(8, 11, spectrum.slice(0, 6), 5);
    const r = runSvd(g, "right", 2, true, { iterations: 3, oversample: 3, seed: 9 });
    expect([r.rows, r.cols]).toEqual([2, 11]);
    const vr = leadingColumns(svd(g).v, 2);
    expect(maxAbsDiff(matmul(transpose(r), r), matmul(vr, transpose(vr)))).toBeLessThan(1e-6);
    expect(maxAbsDiff(matmul(r, transpose(r)), eye(2))).toBeLessThan(1e-12);
  });

  it("is exact when the sketch covers the whole space, and deterministic per seed", () => {
    const g = withSpectrum(5, 9, [3, 2, 1, 0.5, 0.25], 7);
    const p = runSvd(g, "left", 2, true, { iterations: 0 });
    const ur = leadingColumns(svd(g).u, 2);
    fixColumnSigns(ur);
    expect(maxAbsDiff(p, ur)).toBeLessThan(1e-12);
    const big = withSpectrum(20, 16, [5, 4, 3, 2, 1, 1, 1, 1], 11);
    const a = runSvd(big, "left", 2, true, { iterations: 0, seed: 1 });
    const b = runSvd(big, "left", 2, true, { iterations: 0, seed: 2 });
    // the test matrix changes with the seed, and only with it
    expect(a.data).not.toEqual(b.data);
    expect(runSvd(big, "left", 2, true, { iterations: 0, seed: 1 }).data).toEqual(a.data);
  });
});

describe("topkMask", () => {
  function topk(scores: number[], k: number): number[] {
    const b = new Builder();
    const s = b.input("data", "s", [scores.length]);
    const m = b.topkMask(s, b.constant(k));
    return [
      ...evaluate(b.graph, new Map([[s, tensor([scores.length], scores)]]), [m]).get(m)!.data,
    ];
  }

  it("marks the k largest, breaking ties by lower index", () => {
    expect(topk([3, 1, 3, 2, 3], 2)).toEqual([1, 0, 1, 0, 0]);
    expect(topk([3, 1, 3, 2, 3], 4)).toEqual([1, 0, 1, 1, 1]);
    expect(topk([-1, -5, 0.5, -1], 2)).toEqual([1, 0, 1, 0]);
    expect(topk([1, 2], 0)).toEqual([0, 0]);
    expect(topk([1, 2], 7)).toEqual([1, 1]);
  });
});

describe("quantize", () => {
  function quant(
    w: number[],
    shape: [number, number],
    bits: number,
    group: number,
    float64 = false,
  ) {
    const b = new Builder();
    const x = b.input("param", "w", shape);
    const q = b.quantize(x, bits, group);
    const s = b.quantScale(x, bits, group);
    const out = evaluate(b.graph, new Map([[x, tensor(shape, w)]]), [q, s], { float64 });
    return { q: [...out.get(q)!.data], scale: [...out.get(s)!.data] };
  }

  it("rounds half away from zero per group, with scale max|w|/(2^(bits-1)-1)", () => {
    const w = [1.75, -0.625, 0.125, -0.375, 0, 0, 0, 0, 1, -2, 0.5, 3.5, -14, 3, 5, 1];
    for (const float64 of [false, true]) {
      const { q, scale } = quant(w, [2, 8], 4, 4, float64);
      expect(scale).toEqual([0.25, 1, 0.5, 2]);
      expect(q).toEqual([7, -3, 1, -2, 0, 0, 0, 0, 2, -4, 1, 7, -7, 2, 3, 1]);
    }
  });

  it("round-trips within half a scale step", () => {
    const w = Array.from({ length: 4 * 16 }, (_, i) => normalAt(5, i) * (1 + (i % 3)));
    for (const bits of [3, 4, 8]) {
      const { q, scale } = quant(w, [4, 16], bits, 8);
      const qmax = 2 ** (bits - 1) - 1;
      q.forEach((v, i) => {
        const sc = scale[Math.floor(i / 16) * 2 + Math.floor((i % 16) / 8)]!;
        expect(Number.isInteger(v) && Math.abs(v) <= qmax).toBe(true);
        expect(Math.abs(v * sc - w[i]!)).toBeLessThanOrEqual(sc / 2 + 1e-6);
      });
    }
  });

  it("throws when the group does not divide the row", () => {
    const b = new Builder();
    const x = b.input("param", "w", [2, 4]);
    const s = b.graph.add({ kind: "quantScale", bits: 4, group: 3 }, [x], [2, 1]);
    const feeds = new Map([[x, tensor([2, 4], [1, 2, 3, 4, 5, 6, 7, 8])]]);
    expect(() => evaluate(b.graph, feeds, [s])).toThrow(/group 3 does not divide 4/);
  });
});
