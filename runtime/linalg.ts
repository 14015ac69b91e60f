// Host-side numeric helpers for the reference interpreter: erf, dense row-major f64 matrices,
// Householder QR, one-sided Jacobi SVD, and the randomized truncated SVD behind the `svd` op.
// Plain loops, written to be checked by reading, not to be fast.

import { normalAt } from "./random.js";

// ---------------------------------------------------------------------------- erf

const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/** erf(x) for 0 ≤ x < 2 by the all-positive series e^{-x²}·2/√π·Σ 2ⁿx^{2n+1}/(2n+1)!!. */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return TWO_OVER_SQRT_PI * Math.exp(-x2) * sum;
}

/** erfc(x), x ≥ 2, by the continued fraction e^{-x²}/√π / (x + ½/(x + 1/(x + (3/2)/(x + …)))). */
function erfcFraction(x: number): number {
  let f = x;
  for (let n = 100; n >= 1; n--) f = x + n / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

/** The error function: relative error ≲ 1e-15 in f64 (checked against mpmath). */
export function erf(x: number): number {
  if (Number.isNaN(x)) return x;
  if (x < 0) return -erf(-x);
  return x < 2 ? erfSeries(x) : 1 - erfcFraction(x);
}

/** 1 - erf(x): relative error ≲ 6e-14 (worst just below x = 2), full accuracy for large x. */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return x;
  if (x < 0) return 2 - erfc(-x);
  return x < 2 ? 1 - erfSeries(x) : erfcFraction(x);
}

// ---------------------------------------------------------------------------- matrices

/** A dense row-major matrix. */
export interface Mat {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function mat(rows: number, cols: number, data?: ArrayLike<number>): Mat {
  const m = { rows, cols, data: new Float64Array(rows * cols) };
  if (data) {
    if (data.length !== rows * cols)
      throw new Error(`linalg: ${data.length} values for ${rows}x${cols}`);
    m.data.set(data);
  }
  return m;
}

export function transpose(a: Mat): Mat {
  const t = mat(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < a.cols; j++) t.data[j * a.rows + i] = a.data[i * a.cols + j]!;
  return t;
}

export function matmul(a: Mat, b: Mat): Mat {
  if (a.cols !== b.rows)
    throw new Error(`linalg: matmul ${a.rows}x${a.cols} @ ${b.rows}x${b.cols}`);
  const c = mat(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++)
    for (let k = 0; k < a.cols; k++) {
      const aik = a.data[i * a.cols + k]!;
      for (let j = 0; j < b.cols; j++) c.data[i * b.cols + j]! += aik * b.data[k * b.cols + j]!;
    }
  return c;
}

/** The first `k` columns. */
export function leadingColumns(a: Mat, k: number): Mat {
  const c = mat(a.rows, k);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < k; j++) c.data[i * k + j] = a.data[i * a.cols + j]!;
  return c;
}

/** Flips each column's sign so that its largest-magnitude entry (the first on ties) is positive. */
export function fixColumnSigns(a: Mat): void {
  for (let j = 0; j < a.cols; j++) {
    let best = 0;
    for (let i = 1; i < a.rows; i++)
      if (Math.abs(a.data[i * a.cols + j]!) > Math.abs(a.data[best * a.cols + j]!)) best = i;
    if (a.data[best * a.cols + j]! < 0)
      for (let i = 0; i < a.rows; i++) a.data[i * a.cols + j] = -a.data[i * a.cols + j]!;
  }
}

// ---------------------------------------------------------------------------- QR

/**
 * Thin Q of a Householder QR of `a` [m, n], m ≥ n: Q [m, n] with orthonormal columns spanning
 * a's column space (when a has full column rank). A zero column is skipped (identity
 * reflection), so Q stays orthonormal for rank-deficient input.
 */
export function householderQ(a: Mat): Mat {
  const { rows: m, cols: n } = a;
  if (m < n) throw new Error(`linalg: householderQ needs rows ≥ cols, got ${m}x${n}`);
  const r = mat(m, n, a.data);
  const vs: Float64Array[] = [];
  for (let k = 0; k < n; k++) {
    const v = new Float64Array(m);
    let norm = 0;
    for (let i = k; i < m; i++) norm += r.data[i * n + k]! ** 2;
    norm = Math.sqrt(norm);
    if (norm > 0) {
      const x0 = r.data[k * n + k]!;
      const alpha = x0 >= 0 ? -norm : norm;
      for (let i = k; i < m; i++) v[i] = r.data[i * n + k]!;
      v[k] = x0 - alpha;
      let vn = 0;
      for (let i = k; i < m; i++) vn += v[i]! ** 2;
      vn = Math.sqrt(vn);
      for (let i = k; i < m; i++) v[i] = v[i]! / vn;
      // r ← (I - 2vvᵀ) r on columns k..n-1
      for (let j = k; j < n; j++) {
        let dot = 0;
        for (let i = k; i < m; i++) dot += v[i]! * r.data[i * n + j]!;
        for (let i = k; i < m; i++) r.data[i * n + j] = r.data[i * n + j]! - 2 * dot * v[i]!;
      }
    }
    vs.push(v);
  }
  // Q = H_0 H_1 … H_{n-1} applied to the first n columns of the identity.
  const q = mat(m, n);
  for (let j = 0; j < n; j++) q.data[j * n + j] = 1;
  for (let k = n - 1; k >= 0; k--) {
    const v = vs[k]!;
    for (let j = 0; j < n; j++) {
      let dot = 0;
      for (let i = k; i < m; i++) dot += v[i]! * q.data[i * n + j]!;
      if (dot !== 0)
        for (let i = k; i < m; i++) q.data[i * n + j] = q.data[i * n + j]! - 2 * dot * v[i]!;
    }
  }
  return q;
}

// ---------------------------------------------------------------------------- SVD

/**
 * One-sided Jacobi (Hestenes) on the columns of `a` [m, n]: returns W = a·V with mutually
 * orthogonal columns, the orthogonal V [n, n], and the column norms of W (the singular values,
 * unsorted).
 */
export function oneSidedJacobi(a: Mat): { w: Mat; v: Mat; norms: Float64Array } {
  const { rows: m, cols: n } = a;
  const w = mat(m, n, a.data);
  const v = mat(n, n);
  for (let i = 0; i < n; i++) v.data[i * n + i] = 1;
  const rotate = (x: Mat, p: number, q: number, c: number, s: number) => {
    for (let i = 0; i < x.rows; i++) {
      const xp = x.data[i * x.cols + p]!;
      const xq = x.data[i * x.cols + q]!;
      x.data[i * x.cols + p] = c * xp - s * xq;
      x.data[i * x.cols + q] = s * xp + c * xq;
    }
  };
  for (let sweep = 0; sweep < 100; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++)
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const xp = w.data[i * n + p]!;
          const xq = w.data[i * n + q]!;
          alpha += xp * xp;
          beta += xq * xq;
          gamma += xp * xq;
        }
        if (gamma === 0 || Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        rotate(w, p, q, c, c * t);
        rotate(v, p, q, c, c * t);
      }
    if (!rotated) break;
  }
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < m; i++) s += w.data[i * n + j]! ** 2;
    norms[j] = Math.sqrt(s);
  }
  return { w, v, norms };
}

/** Column order that sorts `values` descending (stable). */
function descending(values: Float64Array): number[] {
  return [...values.keys()].sort((i, j) => values[j]! - values[i]! || i - j);
}

function pickColumns(a: Mat, order: readonly number[]): Mat {
  const out = mat(a.rows, order.length);
  for (let i = 0; i < a.rows; i++)
    order.forEach((c, j) => (out.data[i * order.length + j] = a.data[i * a.cols + c]!));
  return out;
}

/**
 * The thin SVD a = U diag(s) Vᵀ of `a` [m, n] with k = min(m, n): U [m, k], s [k] descending,
 * V [n, k]. Columns of U for zero singular values are left zero.
 */
export function svd(a: Mat): { u: Mat; s: Float64Array; v: Mat } {
  if (a.rows < a.cols) {
    const t = svd(transpose(a));
    return { u: t.v, s: t.s, v: t.u };
  }
  const { w, v, norms } = oneSidedJacobi(a);
  const order = descending(norms);
  const u = pickColumns(w, order);
  const s = Float64Array.from(order, (c) => norms[c]!);
  for (let j = 0; j < u.cols; j++)
    for (let i = 0; i < u.rows; i++)
      u.data[i * u.cols + j] = s[j]! > 0 ? u.data[i * u.cols + j]! / s[j]! : 0;
  return { u, s, v: pickColumns(v, order) };
}

/**
 * Top-`rank` left singular vectors of g [m, n] by randomized subspace iteration, as the IR's
 * `svd` op defines it: l = min(rank + oversample, m, n); Ω [n, l] with Ω[r, c] =
 * normalAt(seed, r·l + c); Q = qr(g Ω); `iterations` times: Q = qr(g · qr(gᵀ Q)); then the
 * exact SVD of the small B = Qᵀ g [l, n] (one-sided Jacobi on Bᵀ, whose V holds B's left
 * singular vectors) gives U = Q · U_B, of which the top `rank` columns are kept, each with its
 * largest-magnitude entry made positive.
 */
export function randomizedLeftSingularVectors(
  g: Mat,
  rank: number,
  iterations: number,
  oversample: number,
  seed: number,
): Mat {
  const { rows: m, cols: n } = g;
  const l = Math.min(rank + oversample, m, n);
  const omega = mat(n, l);
  for (let i = 0; i < n * l; i++) omega.data[i] = normalAt(seed, i);
  const gt = transpose(g);
  let q = householderQ(matmul(g, omega));
  for (let it = 0; it < iterations; it++) q = householderQ(matmul(g, householderQ(matmul(gt, q))));
  const b = matmul(transpose(q), g); // [l, n]
  const { v, norms } = oneSidedJacobi(transpose(b)); // Bᵀ V = W, so B = V Σ (W Σ⁻¹)ᵀ
  const ub = pickColumns(v, descending(norms).slice(0, rank));
  const u = matmul(q, ub);
  fixColumnSigns(u);
  return u;
}
