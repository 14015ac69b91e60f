// The float64 linear algebra NExt's tests check the recordings against (tests/next.test.ts,
// tests/next-predictor.test.ts): a low-rank delta s · B A, the top singular triple of a matrix by
// power iteration, and a recorded triple [u, σ, v] multiplied out.

/** s · B A as [out][in] rows, from B (out·rank) and A (rank·in), row-major. */
export function lowRankDelta(
  B: ArrayLike<number>,
  A: ArrayLike<number>,
  sizes: { out: number; rank: number; in: number; scale: number },
): number[][] {
  const { out, rank, scale } = sizes;
  const cols = sizes.in;
  return Array.from({ length: out }, (_, o) =>
    Array.from({ length: cols }, (_, i) => {
      let s = 0;
      for (let r = 0; r < rank; r++) s += B[o * rank + r]! * A[r * cols + i]!;
      return scale * s;
    }),
  );
}

/** σ₁ and σ₁ u₁ v₁ᵀ of a [rows][cols] matrix, by power iteration on DᵀD. */
export function topTriple(d: number[][]): { sigma: number; product: number[][] } {
  const cols = d[0]!.length;
  let v = Array.from({ length: cols }, (_, i) => 1 + i);
  for (let k = 0; k < 500; k++) {
    const dv = d.map((row) => row.reduce((s, x, i) => s + x * v[i]!, 0));
    const next = v.map((_, i) => d.reduce((s, row, o) => s + row[i]! * dv[o]!, 0));
    const n = Math.hypot(...next);
    v = next.map((x) => x / n);
  }
  const dv = d.map((row) => row.reduce((s, x, i) => s + x * v[i]!, 0));
  const sigma = Math.hypot(...dv);
  return { sigma, product: dv.map((x) => v.map((y) => x * y)) };
}

/**
 * A recorded triple [u (out values), σ, v] as σ and σ u vᵀ (the product does not depend on the
 * signs an SVD picks).
 */
export function tripleProduct(
  triple: number[],
  out: number,
): { sigma: number; v: number[]; product: number[][] } {
  const sigma = triple[out]!;
  const v = triple.slice(out + 1);
  return { sigma, v, product: triple.slice(0, out).map((u) => v.map((y) => sigma * u * y)) };
}
