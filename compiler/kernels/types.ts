// What every kernel template produces and what the plan and executor consume. Templates are
// functions of parameters (tile shape, vector width, workgroup size, subgroup use) that return
// WGSL; there is never a hand-copied kernel per shape.

/** One storage buffer a kernel binds, in binding order. */
export interface KernelBinding {
  /** The plan buffer bound here. */
  buffer: number;
  access: "read" | "read_write";
}

export interface KernelSource {
  /** A short human name: `matmul 64x64x64 (subgroup 2x32)`, `fused add+gelu [32, 512]`. */
  name: string;
  wgsl: string;
  entryPoint: string;
  workgroupSize: [number, number, number];
  /** Workgroups to dispatch. */
  dispatch: [number, number, number];
  /** Storage bindings of group 0, bindings 0..n-1, in this order. */
  bindings: KernelBinding[];
  /** Optional device features the WGSL needs (`subgroups`, `shader-f16`). */
  features: string[];
}

/** Matmul problem: out[b, m, n] = Σ_k A[b, m, k]·B[b, k, n], each operand maybe stored transposed. */
export interface MatmulShape {
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
}

/** Parameters of the matmul template, chosen per (shape class, adapter) by the autotuner. */
export interface MatmulParams {
  variant: "naive" | "register" | "subgroup" | "shared";
  /** Output rows and columns each invocation computes. */
  rowsPerThread: number;
  colsPerThread: number;
  /** Invocations per workgroup along n (x) and m (y). */
  workgroupX: number;
  workgroupY: number;
  /** Shared-memory tile depth along k (variant "shared"). */
  tileK: number;
  /** vec4 loads where the layout allows. */
  vectorWidth: 1 | 4;
}

/**
 * Work fused after a matmul: `epilogue` rewrites the accumulated result before it is stored (a
 * WGSL expression of `acc`, `row`, `col`, `batch` reading extra bindings, e.g. bias + residual +
 * scale). Extra bindings are appended after A, B and the output. (Operand prologues are in
 * `MatmulKernelFusion`, compiler/kernels/matmul.ts.)
 */
export interface MatmulFusion {
  epilogue?: { expression: string; bindings: KernelBinding[]; declarations: string };
}
