// The dequantized operand a matmul's packed-weight path reads: `values * scales` where the values
// are a packed buffer (`packedBits`, compiler/program.ts) and the scales a buffer of one scale per
// `group` consecutive elements of a row (std.quant's `dequantize(q)`, compiler/tensor-builtins.ts).
// When a matmul's prologue computes exactly this, the template (compiler/kernels/matmul.ts) loads
// whole packed words and each group's scale once instead of unpacking one element per load.
import type { Graph, Node } from "../ir.js";
import { matmulKernel, type MatmulKernelFusion } from "./matmul.js";
import type {
  KernelBuffer,
  KernelSource,
  MatmulParams,
  MatmulShape,
  MatmulStorage,
} from "./types.js";

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

/**
 * How a matmul's operands are stored where not plain f32: an operand bound as f16 (a frozen
 * tensor stored as half floats: `packedOf` 16), or a B computed by a prologue that is a
 * dequantized packed weight. Undefined when both are f32. The plan passes it in the shape it
 * asks parameters for, so that the autotuner times (and caches) the kernel that really runs.
 */
export function matmulStorage(
  graph: Graph,
  operands: { a: number; b: number },
  isBuffer: (node: number) => boolean,
  packedOf: (node: number) => number | undefined,
): MatmulStorage | undefined {
  const half = (node: number) => isBuffer(node) && packedOf(node) === 16;
  const dq = isBuffer(operands.b)
    ? undefined
    : dequantOperand(graph, operands.b, isBuffer, packedOf);
  const storage: MatmulStorage = {
    ...(half(operands.a) ? { a: "f16" as const } : {}),
    ...(half(operands.b)
      ? { b: "f16" as const }
      : dq
        ? { b: { bits: dq.bits, group: dq.group } }
        : {}),
  };
  return storage.a || storage.b ? storage : undefined;
}

/** The shape's B as a packed weight, if it is one. */
export function packedStorage(shape: MatmulShape): { bits: number; group: number } | undefined {
  const b = shape.storage?.b;
  return typeof b === "object" ? b : undefined;
}

/**
 * The kernel a plan runs for `shape` with its operand storage, on bindings A = 0, B = 1, out = 2
 * and, for a packed B, its values (3, u32 words) and scales (4): what the autotuner times. A packed
 * B is read as the plan's prologue reads it (element i of B as stored is field i of the values
 * times scale i / group: a row of B holds whole groups), and word by word where the variant can.
 */
export function storedMatmulKernel(shape: MatmulShape, params: MatmulParams): KernelSource {
  const half = { a: shape.storage?.a === "f16", b: shape.storage?.b === "f16" };
  const packed = packedStorage(shape);
  if (!packed) return matmulKernel(shape, params, { a: 0, b: 1, out: 2 }, undefined, half);
  const perWord = 32 / packed.bits;
  const buffers: KernelBuffer[] = [
    { name: "dq_values", type: "u32", buffer: 3, access: "read" },
    { name: "dq_scales", type: "f32", buffer: 4, access: "read" },
  ];
  const fusion: MatmulKernelFusion = {
    epilogue: {
      expression: "acc",
      bindings: buffers,
      declarations: [
        `fn dq_element(i: u32) -> f32 {`,
        `  let field = extractBits(bitcast<i32>(dq_values[i / ${perWord}u]), (i % ${perWord}u) * ${packed.bits}u, ${packed.bits}u);`,
        `  return f32(field) * dq_scales[i / ${packed.group}u];`,
        `}`,
      ].join("\n"),
    },
    prologue: {
      b: "dq_element(i)",
      dequantB: {
        values: "dq_values",
        scales: "dq_scales",
        bits: packed.bits,
        group: packed.group,
      },
    },
  };
  return matmulKernel(shape, params, { a: 0, b: 1, out: 2 }, fusion, half);
}

/** Bytes of each binding of `storedMatmulKernel(shape, …)`, in binding order. */
export function storedMatmulBindingBytes(shape: MatmulShape): number[] {
  const { batch, m, n, k } = shape;
  const width = (side: "a" | "b") => (shape.storage?.[side] === "f16" ? 2 : 4);
  const packed = packedStorage(shape);
  const bytes = [
    batch * m * k * width("a"),
    packed ? 16 : batch * k * n * width("b"),
    batch * m * n * 4,
    ...(packed ? [4 * Math.ceil((k * n * packed.bits) / 32), (4 * k * n) / packed.group] : []),
  ];
  return bytes.map((b) => Math.max(16, Math.ceil(b / 16) * 16));
}
