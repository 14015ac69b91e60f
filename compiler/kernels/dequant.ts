// The dequantized operand a matmul's packed-weight path reads: `values * scales` where the values
// are a packed buffer (`packedBits`, compiler/program.ts) and the scales a buffer of one scale per
// `group` consecutive elements of a row (std.quant's `dequantize(q)`, compiler/tensor-builtins.ts).
// When a matmul's prologue computes exactly this, the template (compiler/kernels/matmul.ts) loads
// whole packed words and each group's scale once instead of unpacking one element per load.
import type { Graph, Node } from "../ir.js";

/** A matmul operand stored [rows, cols] as values (packed along cols) times per-group scales. */
export interface DequantOperand {
  /** The packed values' buffer node, [rows, cols]. */
  values: number;
  /** The scales' buffer node: rows · cols / group scales, row-major ([rows, cols / group]). */
  scales: number;
  /** Bits per packed field: 2, 4 or 8 (32 / bits fields per u32 word). */
  bits: number;
  /** Consecutive elements of a row that share one scale. */
  group: number;
}

/**
 * `node` as a dequantized operand, if it is one: mul(values, scales') of shape [rows, cols], the
 * values a packed buffer, scales' a buffer S of shape [rows, G] broadcast along cols in groups of
 * cols / G: reshape(expand(reshape(S, [rows, G, 1]), [rows, G, g]), [rows, cols]), or with
 * G = 1 expand(S) for S [rows, 1]. Anything else is not (the prologue's generic, per-element
 * path computes it).
 */
export function dequantOperand(
  graph: Graph,
  node: number,
  isBuffer: (node: number) => boolean,
  packedOf: (node: number) => number | undefined,
): DequantOperand | undefined {
  const n = graph.node(node);
  if (n.op.kind !== "binary" || n.op.fn !== "mul" || n.shape.length !== 2) return undefined;
  const [rows, cols] = n.shape as [number, number];
  for (const [v, s] of [n.inputs, [...n.inputs].reverse()] as [number, number][]) {
    const bits = isBuffer(v) ? packedOf(v) : undefined;
    // (16: f16 floats, not packed integers)
    if (!bits || bits > 8 || graph.node(v).dtype !== "f32") continue;
    const scales = groupScales(graph, graph.node(s), rows, cols, isBuffer);
    if (scales && !packedOf(scales.node))
      return { values: v, scales: scales.node, bits, group: cols / scales.groups };
  }
  return undefined;
}

const same = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

/** The buffer of per-group scales `s` broadcasts along a [rows, cols] operand's rows. */
function groupScales(
  graph: Graph,
  s: Node,
  rows: number,
  cols: number,
  isBuffer: (node: number) => boolean,
): { node: number; groups: number } | undefined {
  const input = (x: Node) => graph.node(x.inputs[0]!);
  const isScales = (x: Node, groups: number) =>
    isBuffer(x.id) && x.dtype === "f32" && same(x.shape, [rows, groups]);
  // one scale per row
  if (s.op.kind === "expand" && isScales(input(s), 1)) return { node: s.inputs[0]!, groups: 1 };
  if (s.op.kind !== "reshape" || !same(s.shape, [rows, cols])) return undefined;
  const expanded = input(s);
  if (expanded.op.kind !== "expand" || expanded.shape.length !== 3) return undefined;
  const [r, groups, g] = expanded.shape as [number, number, number];
  if (r !== rows || groups * g !== cols) return undefined;
  const column = input(expanded);
  if (column.op.kind !== "reshape" || !same(column.shape, [rows, groups, 1])) return undefined;
  const scales = input(column);
  return isScales(scales, groups) ? { node: scales.id, groups } : undefined;
}

/** A dequantized operand as the matmul template reads it: its bindings' WGSL names. */
export interface PackedOperandCode {
  /** `array<u32>` of packed fields. */
  values: string;
  /** `array<f32>` of scales. */
  scales: string;
  bits: number;
  group: number;
}
