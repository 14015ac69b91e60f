// Order statistics the benchmarks print: a sample's median and quartiles.

/**
 * The median and the first and third quartiles of `xs`: the values at ranks ⌊q·n⌋ of the sorted
 * sample (no interpolation).
 */
export function quartiles(xs: readonly number[]): { median: number; q1: number; q3: number } {
  const sorted = [...xs].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { median: at(0.5), q1: at(0.25), q3: at(0.75) };
}
