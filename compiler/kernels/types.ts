// What every kernel template produces and what the plan and executor consume. Templates are
// functions of parameters (tile shape, vector width, workgroup size, subgroup use) that return
// WGSL; there is never a hand-copied kernel per shape.

/** One storage buffer a kernel binds, in binding order. */
export interface KernelBinding {
  /** The plan buffer bound here. */
  buffer: number;
  access: "read" | "read_write";
  /**
   * A view of the buffer, in bytes (a chunk of a buffer over one storage binding: compiler/
   * kernels/render.ts `splitBindings`); the whole buffer when absent.
   */
  offset?: number;
  size?: number;
}

/**
 * A storage binding as `renderKernel` (compiler/kernels/render.ts) declares it: a runtime-sized
 * array `name` of `type` elements. Only `buffer` and `access` reach the kernel's `bindings`.
 */
export interface KernelBuffer extends KernelBinding {
  name: string;
  /** The element type: `f32`, `i32`, `vec4<f32>`. */
  type: string;
  /** What the binding holds, as a comment after the declaration (`%12 param:w`). */
  note?: string;
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
  /**
   * The binding of the gather error flag (`array<i32>`, 2 elements: the gather node + 1 and the
   * id) when the kernel gathers with ids not known to be in range; after the others.
   */
  gatherFlag?: number;
}

/**
 * A kernel source with, optionally, u32 `params` the executor puts in a uniform buffer bound
 * after the storage bindings (sizes the WGSL text does not fix).
 */
export type ParamKernelSource = KernelSource & { params?: number[] };

/** Matmul problem: out[b, m, n] = Σ_k A[b, m, k]·B[b, k, n], each operand maybe stored transposed. */
/**
 * A low-rank branch as the matmul tile computes it (MatmulBranch): its rank, and whether up is
 * stored [n, rank] (upTrans, LoRA's forward) or [rank, n] (its input gradient).
 */
export interface LowRankBranchForm {
  rank: number;
  upTrans: boolean;
}

export interface MatmulShape {
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  /**
   * How an operand is stored where it is not plain f32 (absent: both f32): the autotuner times
   * the kernel the plan runs, and keys its choice on it.
   */
  storage?: MatmulStorage;
}

/**
 * Operand storage of a matmul: `f16` (a frozen tensor, `--frozen-f16`, read through an f16
 * binding), or for B a dequantized packed weight (values of `bits` bits packed into u32 words
 * along B's stored rows, one f32 scale per `group` consecutive elements: compiler/kernels/dequant.ts).
 */
export interface MatmulStorage {
  a?: "f16";
  b?: "f16" | { bits: number; group: number };
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
  /**
   * register and subgroup tiles: the k loop's body repeated this many times per iteration
   * (absent: 1). On lavapipe every write of an accumulator that crosses a loop iteration is a
   * blend with the execution mask plus, for a large tile, a spill load and store: repeating the
   * body pays those once per kUnroll steps of k (compiler/kernels/matmul.ts).
   */
  kUnroll?: number;
  /**
   * Split k into this many chunks (compiler/kernels/split-k.ts): the template with the other
   * parameters runs the chunks, a second kernel sums them. Only the autotuner offers it.
   */
  splitK?: number;
}

/**
 * Work fused after a matmul: `epilogue` rewrites the accumulated result before it is stored (a
 * WGSL expression of `acc`, `row`, `col`, `batch` reading extra bindings, e.g. bias + residual +
 * scale). Extra bindings are appended after A, B and the output: the kernel declares those given
 * as `KernelBuffer`s; a plain `KernelBinding` (a hand-written epilogue) is declared by
 * `declarations`, which also hold the functions the expression calls. (Operand prologues are in
 * `MatmulKernelFusion`, compiler/kernels/matmul.ts.)
 */
export interface MatmulFusion {
  epilogue?: {
    expression: string;
    bindings: (KernelBuffer | KernelBinding)[];
    declarations: string;
  };
}
