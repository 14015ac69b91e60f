// Rank budgets on the host: which units a controller keeps, from their scores.
/** 1 for the units to keep, 0 for the pruned: those scoring at or below the (units − k)-th smallest. */
export function keptUnits(scores: Float32Array | Float64Array, keep: number): Float32Array {
  const n = scores.length;
  const kept = new Float32Array(n).fill(1);
  const k = n - Math.max(0, Math.min(n, Math.floor(keep)));
  if (k <= 0) return kept;
  const threshold = Float64Array.from(scores).sort()[k - 1]!;
  for (let i = 0; i < n; i++) if (scores[i]! <= threshold) kept[i] = 0;
  return kept;
}
