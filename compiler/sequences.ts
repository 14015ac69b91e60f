// Compile-time lists and tuples: `range(…)`, and indexing and slicing with Python's rules. Shared
// by the resolver (constants, member `const`s) and the lowerer (inside functions), so both give
// the same values and the same messages.
import { num, type Value } from "./values.js";

/** At most this many items from `range`: loops over it are unrolled into the graph. */
export const MAX_RANGE = 4096;

/** `range(stop)`, `range(start, stop)`, `range(start, stop, step)`; a message if invalid. */
export function rangeItems(args: readonly number[]): Value | string {
  if (args.length < 1 || args.length > 3)
    return "`range` takes 1 to 3 integers: `range(n)`, `range(start, stop)` or `range(start, stop, step)`";
  if (args.some((a) => !Number.isInteger(a)))
    return `\`range\` needs integers, not ${args.find((a) => !Number.isInteger(a))}`;
  const [start, stop, step] =
    args.length === 1 ? [0, args[0]!, 1] : [args[0]!, args[1]!, args[2] ?? 1];
  if (step === 0) return "`range`'s step must not be 0";
  const count = Math.max(0, Math.ceil((stop - start) / step));
  if (count > MAX_RANGE)
    return `\`range\` of ${count} items: at most ${MAX_RANGE} (a loop over it is unrolled while compiling)`;
  return {
    kind: "list",
    items: Array.from({ length: count }, (_, i) => num(start + i * step, true)),
  };
}

/**
 * `items[i]` (a negative index counts from the end): the item, or a message when out of range.
 */
export function itemAt(items: readonly Value[], i: number): Value | string {
  const at = i < 0 ? items.length + i : i;
  if (at < 0 || at >= items.length)
    return `index ${i} is out of range for ${items.length === 1 ? "1 item" : `${items.length} items`} (valid: ${items.length === 0 ? "none" : `${-items.length} to ${items.length - 1}`})`;
  return items[at]!;
}

/**
 * `items[start:stop:step]` with Python's rules: bounds may be negative (from the end) and are
 * clipped to the sequence, so a slice is never out of range (it may be empty); a negative step
 * walks backwards, with the defaults then the last item and "before the first".
 */
export function sliceOf(
  items: readonly Value[],
  start: number | undefined,
  stop: number | undefined,
  step: number | undefined,
): Value[] | string {
  const n = items.length;
  const s = step ?? 1;
  if (s === 0) return "a slice's step must not be 0";
  const clip = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
  const bound = (v: number | undefined, fallback: number, lo: number, hi: number) =>
    v === undefined ? fallback : clip(v < 0 ? v + n : v, lo, hi);
  const out: Value[] = [];
  if (s > 0) {
    const from = bound(start, 0, 0, n);
    const to = bound(stop, n, 0, n);
    for (let i = from; i < to; i += s) out.push(items[i]!);
  } else {
    const from = bound(start, n - 1, -1, n - 1);
    const to = bound(stop, -1, -1, n - 1);
    for (let i = from; i > to; i += s) out.push(items[i]!);
  }
  return out;
}
