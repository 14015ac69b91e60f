// The matmul kernel template: one parameterized WGSL generator for every shape, layout and
// adapter. out[b, m, n] = epilogue(Σ_k A[b, m, k]·B[b, k, n]); A is stored [b, m, k] or, with
// transA, [b, k, m]; B is stored [b, k, n] or, with transB, [b, n, k]. Transposed operands are read
// in place (the index arithmetic swaps strides), never copied.
//
// Variants (MatmulParams.variant):
//  - naive:    one output per invocation; scalar loads. The correctness baseline.
//  - register: each invocation accumulates a rowsPerThread × colsPerThread tile in registers,
//              loading its own A rows and B columns (vec4 loads where the layout allows).
//  - subgroup: register tiles where the B tile a workgroup needs is loaded once per subgroup
//              (lane q loads columns 4q..4q+3, one vec4) and handed to every lane with
//              `subgroupBroadcast`. Every invocation of a workgroup shares the same columns, so it
//              does not matter how the driver groups invocations into subgroups. A tile of fewer
//              than 8 column groups (16 or 8 columns) spreads the loads over steps of k (lane q:
//              group q % G at step q / G) where B is k-major, and where B is stored transposed
//              lane q loads column q (q + 8, ...) as a vec4 along k, so no lane loads a duplicate. On a
//              subgroup narrower than 8 lanes (WebGPU promises only 4) the kernel computes its
//              tile the plain way instead: correct everywhere. Fast on lavapipe, where each
//              per-lane load is a scalar loop and FMAs are nearly free.
//  - shared:   the classic workgroup-shared-memory tiling: (workgroupY·rowsPerThread) ×
//              (workgroupX·colsPerThread) output tiles, tileK-deep A and B slabs staged in
//              workgroup memory; each invocation owns a strided rows × cols sub-tile. Wins on
//              discrete GPUs.
// A B that is a dequantized packed weight (compiler/kernels/dequant.ts) is read as whole u32 words
// unpacked with vector shifts in every variant but naive: the subgroup tile shares each lane's
// word, the register tile loads its own columns' words, the shared tile stages its slab of B
// from words (packedBMode).
// Sizes are baked into the WGSL as constants. Edges: loads clamp their row/column into the matrix
// (no branches in the inner loop), stores check bounds. vec4 loads are used along an operand's
// contiguous axis when that extent is a multiple of 4 (vectorWidth 4), scalar loads otherwise;
// register and subgroup tiles store vec4s of 4 columns when n is a multiple of 4.
//
// Where a matmul's time goes on lavapipe (576×512×128 NN, subgroup 2×32, measured by removing
// each part from the kernel): B's loads ~1/3, A's ~1/6, the broadcasts ~1/12, the stores ~1/10,
// the FMAs with accumulators spilled (2×32 is 64 8-wide registers) the rest. Each per-lane load
// costs a few cycles per value whatever its width; a load whose address is the same in every
// lane measured no cheaper. bench/matmul-shapes.ts compares parameterizations on a LoRA step's
// shapes.
//
// kUnroll (register and subgroup tiles, B stored k-major): the k loop steps k by kUnroll (4: A
// loaded as vec4s along k) and writes each accumulator once per iteration, the sum of its
// products. lavapipe blends every write of a loop-carried variable with the loop's execution
// mask and spills a large tile's accumulators, so one write per step of k cost about as much as
// the multiply-adds (4 × 32 at 1024²: 1217 instructions per step of k, 631 stepping by 4).
//
// Measured on lavapipe (which compiles at first dispatch, with compile time growing with every
// per-lane load or store in the code): short loops are kept from being unrolled whole, results
// are stored through one small loop rather than R·C inlined stores, and A is loaded as vec4 along
// k only when B's layout already unrolls k by 4. That brought a cold compile from 1–6 s to
// 0.1–0.5 s per kernel without slowing the large shapes.

import { f32Lit } from "../wgsl.js";
import { renderKernel, type Builtin, type KernelSpec } from "./render.js";
import type { PackedOperandCode } from "./dequant.js";
import type { KernelSource, MatmulFusion, MatmulParams, MatmulShape } from "./types.js";

/** Bumped whenever the template changes in a way that may change which parameters are fastest. */
export const MATMUL_TEMPLATE_VERSION = 4;
/**
 * Bumped whenever the packed-B paths change: their shape classes are tuned again, the others keep
 * their cached choices (2: one loop over a B packed along k's words, packedKLoops).
 */
export const PACKED_B_TEMPLATE_VERSION = 2;

/**
 * What the default choice needs to know about the adapter; `AdapterSummary` (runtime/gpu.ts)
 * satisfies it.
 */
export interface MatmulAdapterKind {
  fallback: boolean;
  architecture?: string;
  description?: string;
}

/**
 * A CPU implementation of WebGPU (lavapipe, SwiftShader): barriers are coroutine switches,
 * per-lane loads cost most, and its buffers live in host memory.
 */
export function isSoftwareAdapter(adapter: MatmulAdapterKind): boolean {
  return (
    adapter.fallback ||
    adapter.architecture === "software" ||
    adapter.architecture === "cpu" ||
    /llvmpipe|lavapipe|swiftshader/i.test(adapter.description ?? "")
  );
}

const MAX_WORKGROUPS_PER_DIMENSION = 65535;
/** WebGPU's default limits: the template stays within them so any device can run it. */
const MAX_INVOCATIONS = 256;
const MAX_WORKGROUP_STORAGE = 16384;

function pow2(x: number): number {
  let p = 1;
  while (p < x) p *= 2;
  return p;
}

/** The shape class the autotuner keys on: m, n, k rounded up to powers of two, layout, batched. */
export interface MatmulShapeClass {
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  batched: boolean;
}

export function matmulShapeClass(shape: MatmulShape): MatmulShapeClass {
  return {
    m: pow2(shape.m),
    n: pow2(shape.n),
    k: pow2(shape.k),
    transA: shape.transA,
    transB: shape.transB,
    batched: shape.batch > 1,
  };
}

export function matmulShapeClassKey(shape: MatmulShape): string {
  const c = matmulShapeClass(shape);
  const layout = `${c.transA ? "T" : "N"}${c.transB ? "T" : "N"}`;
  return (
    `matmul/v${MATMUL_TEMPLATE_VERSION} m${c.m} n${c.n} k${c.k} ${layout} ${c.batched ? "batched" : "single"}` +
    matmulStorageKey(shape)
  );
}

/**
 * The class key's part for operands not stored as f32 (empty for f32): an f16 or packed operand
 * runs other code, so its tuned choice is its own (` A f16`, ` B packed4 g64`).
 */
export function matmulStorageKey(shape: MatmulShape): string {
  const { a, b } = shape.storage ?? {};
  return (
    (a ? ` A ${a}` : "") +
    (b === "f16"
      ? " B f16"
      : b
        ? ` B packed${b.bits} g${b.group} r${PACKED_B_TEMPLATE_VERSION}`
        : "")
  );
}

export function describeMatmulParams(p: MatmulParams): string {
  const tile = `${p.rowsPerThread}x${p.colsPerThread}`;
  const wg = `wg ${p.workgroupX}x${p.workgroupY}`;
  const tk = p.variant === "shared" ? ` tk${p.tileK}` : "";
  const unroll = (p.kUnroll ?? 1) > 1 ? ` u${p.kUnroll}` : "";
  return `${p.variant} ${tile} ${wg}${tk} v${p.vectorWidth}${unroll}`;
}

function params(
  variant: MatmulParams["variant"],
  rowsPerThread: number,
  colsPerThread: number,
  workgroupX: number,
  workgroupY: number,
  tileK = 0,
  vectorWidth: 1 | 4 = 4,
): MatmulParams {
  return { variant, rowsPerThread, colsPerThread, workgroupX, workgroupY, tileK, vectorWidth };
}

/** Throws with a clear message when `p` cannot produce a valid kernel. */
export function validateMatmulParams(p: MatmulParams): void {
  const bad = (why: string): never => {
    throw new Error(`matmul params ${describeMatmulParams(p)}: ${why}`);
  };
  const ints = [p.rowsPerThread, p.colsPerThread, p.workgroupX, p.workgroupY];
  if (!ints.every((x) => Number.isInteger(x) && x >= 1)) bad("sizes must be positive integers");
  if (p.vectorWidth !== 1 && p.vectorWidth !== 4) bad("vectorWidth must be 1 or 4");
  if (p.workgroupX * p.workgroupY > MAX_INVOCATIONS)
    bad(`more than ${MAX_INVOCATIONS} invocations per workgroup`);
  if (p.rowsPerThread * p.colsPerThread > 128) bad("more than 128 accumulators per invocation");
  if (p.kUnroll !== undefined) {
    if (!Number.isInteger(p.kUnroll) || p.kUnroll < 1 || p.kUnroll > 8) bad("kUnroll must be 1..8");
    if (p.kUnroll > 1 && p.variant !== "register" && p.variant !== "subgroup")
      bad("kUnroll is for register and subgroup tiles");
  }
  switch (p.variant) {
    case "naive":
      if (p.rowsPerThread !== 1 || p.colsPerThread !== 1) bad("naive computes one output each");
      break;
    case "register":
      break;
    case "subgroup":
      if (p.colsPerThread % 4 !== 0) bad("subgroup needs colsPerThread a multiple of 4");
      if (p.colsPerThread > 64) bad("subgroup shares at most 64 columns (16 lanes)");
      if (p.workgroupX !== 1) bad("subgroup tiles put the whole workgroup along m: workgroupX = 1");
      // The 8 lanes that load B (column groups × steps of k) must exist.
      if (p.workgroupY < 8) bad("subgroup needs workgroupY ≥ 8");
      if (8 % (p.colsPerThread / 4) !== 0) bad("subgroup needs colsPerThread 4, 8, 16 or 32");
      break;
    case "shared": {
      if (!Number.isInteger(p.tileK) || p.tileK < 1) bad("shared needs tileK ≥ 1");
      const tm = p.workgroupY * p.rowsPerThread;
      const tn = p.workgroupX * p.colsPerThread;
      if ((tm + tn) * p.tileK * 4 > MAX_WORKGROUP_STORAGE)
        bad(`tiles need more than ${MAX_WORKGROUP_STORAGE} bytes of workgroup memory`);
      break;
    }
    default:
      bad("unknown variant");
  }
}

/**
 * Columns per subgroup tile: 32 (8 lanes' vec4s) unless the matrix is narrower: 16, or 8 for a
 * rank-r product with r ≤ 8 (its B loads spread over 4 steps of k where B is stored k-major: see
 * tiledBody).
 */
function subgroupCols(c: MatmulShapeClass): number {
  return c.n >= 32 ? 32 : c.n >= 16 ? 16 : 8;
}

/** Register tiles without subgroups: spread invocations along n, or along m when n is small. */
function registerParams(c: MatmulShapeClass): MatmulParams {
  if (c.m <= 4) return params("register", 1, 4, 64, 1); // a vector (or a few) times a matrix
  return c.n >= 64 ? params("register", 4, 4, 16, 16) : params("register", 4, 4, 4, 64);
}

/**
 * Invocations along m of a subgroup workgroup: `cap`, or fewer when the class has fewer rows
 * (tiny per-batch products such as attention's 9 × 9 scores), but at least 8 — one SIMD row of
 * lavapipe, one subgroup.
 */
function subgroupRowsPerWorkgroup(c: MatmulShapeClass, rows: number, cap: number): number {
  return Math.max(8, Math.min(cap, pow2(Math.ceil(c.m / rows))));
}

/**
 * A handful (at most 11) of sensible parameterizations for the autotuner. They depend only on
 * the shape class (every shape of a class gets the same list) and on the device features:
 * subgroup register tiles (the lavapipe winners: 2, 4 or 1 rows × 32 columns, in workgroups of 8
 * invocations — one lavapipe SIMD row; measured up to 2× faster than 64 at 1024² and 10× on
 * batched tiny products, where most of a 64-row workgroup had no rows — and of up to 64 for
 * tall classes), register tiles, the classic shared-memory tiles (64² and, for large outputs,
 * 128²), and for small outputs the naive kernel.
 */
export function matmulCandidates(
  shape: MatmulShape,
  features: ReadonlySet<string>,
  /**
   * On a software adapter with subgroups, the shared-memory tiles and the naive kernel are left
   * out: on lavapipe, over 771 timings across 5 tuning caches, neither came within 2× of the
   * class's fastest (median 13.5× and 8×), and compiling them was much of a first run's tuning.
   * Without an adapter: every candidate (what the tests run against the interpreter).
   */
  adapter?: MatmulAdapterKind,
): MatmulParams[] {
  const c = matmulShapeClass(shape);
  const out: MatmulParams[] = [];
  const seen = new Set<string>();
  const add = (p: MatmulParams) => {
    const key = `${describeMatmulParams(p)} tk${p.tileK}`;
    if (!seen.has(key)) out.push(p);
    seen.add(key);
  };
  if (features.has("subgroups")) {
    const cols = subgroupCols(c);
    const u4 = (p: MatmulParams) => subgroupUnrolled(c, p);
    add(u4(params("subgroup", 2, cols, 1, 8)));
    add(u4(params("subgroup", 4, cols, 1, 8)));
    add(u4(params("subgroup", 1, cols, 1, 8)));
    if (cols > 16) add(u4(params("subgroup", 4, 16, 1, 8)));
    // 4 × 32 stepping k by 2 (A's loads scalar): 576×128×512 NN 1.18× faster than 2 × 32 by 4
    if (cols > 16 && !c.transB) add({ ...params("subgroup", 4, cols, 1, 8), kUnroll: 2 });
    if (cols === 8) add(u4(params("subgroup", 8, 8, 1, 8)));
    add(u4(params("subgroup", 2, cols, 1, subgroupRowsPerWorkgroup(c, 2, 64))));
    add(u4(params("subgroup", 1, cols, 1, subgroupRowsPerWorkgroup(c, 1, 64))));
    // the software default before kUnroll, where it differs (one write per step of k)
    add(defaultSubgroupTile(c));
  }
  add(registerParams(c));
  if (features.has("subgroups") && adapter && isSoftwareAdapter(adapter)) return out;
  add(params("shared", 4, 4, 16, 16, 16));
  if (c.m >= 128 && c.n >= 128) add(params("shared", 8, 8, 16, 16, 8));
  if (c.m * c.n <= 4096) add(params("naive", 1, 1, 16, 16));
  return out;
}

/**
 * Rows per invocation of the default subgroup tile. 4 where that makes A's loads vec4s (A stored
 * transposed: 4 rows are contiguous) or where the tile is only 16 columns wide (the rank-r
 * products: m × r × k with r ≤ 16), 2 elsewhere; but no more than the class has rows for the
 * workgroup's 8 invocations (a rank-r gradient r × n × k, attention's 9 × 9 scores). Measured on
 * lavapipe with bench/matmul-shapes.ts (CPU time, same process, relative to the best):
 * 128×128×576 TN 4 rows 1.00 vs 2 rows 1.22–1.35; 576×8×512 NT 1.00 vs 1.28; NT products 2 rows
 * 1.00 vs 4 rows 1.13–1.23; NN within noise of each other; 8×128×576 TN 1 row 1.00 vs 4 rows
 * 1.34; 256 × 9×9×32 2 rows 1.02 vs 4 rows 1.29; NN with n ≥ 512 (576×512×128, 1024²) 4 rows
 * 1.00 vs 2 rows 1.15–1.23, while 576×128×512 NN is even (2 rows 1.00, 4 rows 1.04–1.12).
 */
function subgroupDefaultRows(c: MatmulShapeClass, cols: number): number {
  const wideNN = !c.transA && !c.transB && c.n >= 512;
  const rows = c.transA || cols < 32 || wideNN ? 4 : 2;
  return Math.min(rows, Math.max(1, c.m / 8));
}

/** The software adapter's default subgroup tile, one write of each accumulator per step of k. */
function defaultSubgroupTile(c: MatmulShapeClass): MatmulParams {
  // B stored transposed: 16 columns (each of the 8 lanes loads 2 columns' vec4s along k) with 4
  // rows measured 1.10–1.14× faster than 2 × 32 on a LoRA step's NT products.
  const wide = subgroupCols(c);
  const cols = c.transB && !c.transA && wide === 32 && c.m >= 32 ? 16 : wide;
  return params("subgroup", subgroupDefaultRows(c, cols), cols, 1, 8);
}

/**
 * `p` stepping k by 4 per loop iteration where B is stored k-major (transposed, its vec4s along k
 * step k by 4 already): on lavapipe each accumulator is then written once per 4 (·spread) steps
 * of k instead of every step. Measured with the CPU time of lavapipe's threads (1024² NN, 4 × 32):
 * 1.25–1.7× the throughput of one step per iteration.
 */
function subgroupUnrolled(c: MatmulShapeClass, p: MatmulParams): MatmulParams {
  // Not for 8-column tiles, whose B loads already spread over 4 steps of k (16 steps per
  // iteration unrolled: lavapipe took over a minute to compile a 4 × 8 tile).
  return c.transB || p.colsPerThread < 16 ? p : { ...p, kUnroll: 4 };
}

/**
 * The choice without autotuning (`--no-autotune`): on a CPU/software adapter (lavapipe), where
 * barriers are coroutine switches and per-lane loads are what costs, subgroup register tiles in
 * workgroups of 8 if the device has subgroups, else plain register tiles; on GPUs the classic
 * shared-memory tiles. Always one of `matmulCandidates`.
 */
export function defaultMatmulParams(
  shape: MatmulShape,
  features: ReadonlySet<string>,
  adapter?: MatmulAdapterKind,
): MatmulParams {
  const c = matmulShapeClass(shape);
  const software = adapter ? isSoftwareAdapter(adapter) : false;
  if (software && features.has("subgroups")) {
    const tile = subgroupUnrolled(c, defaultSubgroupTile(c));
    // Stepping k by 4, a 32-column tile takes 2 rows where A is k-major (its loads are vec4s
    // along k then): at 1024² NN 2 × 32 measured 18–20 GFLOP/s per core in every run, 4 × 32
    // 14–22 from one process to the next; at 576×512×128 and 576×128×512 the two were even.
    const twoRows = tile.kUnroll && !c.transA && tile.colsPerThread >= 32;
    return twoRows ? { ...tile, rowsPerThread: Math.min(2, tile.rowsPerThread) } : tile;
  }
  if (software) return registerParams(c);
  return params("shared", 4, 4, 16, 16, 16);
}

// ------------------------------------------------------------------------------------------ WGSL

const u = (x: number): string => `${x}u`;
const LANE = ["x", "y", "z", "w"];
// Short constant-trip loops start at `lrk_zero` (compiler/kernels/render.ts), 0 but unknown to the
// shader compiler: unrolled whole, they multiply lavapipe's compile time (every per-lane load or
// store becomes a loop over the SIMD lanes) for no gain.

/** What a variant's entry point takes, runs, and declares besides the template's functions. */
interface Entry {
  builtins: Record<string, Builtin>;
  body: string[];
  declarations?: string[];
}

/**
 * `var name = values[i]` for a loop index i, as a chain of selects: indexing a private array
 * with a variable makes lavapipe lower it to a ladder of branches, several times the compile time.
 */
function pick(name: string, values: string[], ind: string): string[] {
  return [
    `${ind}var ${name} = ${values[0]};`,
    ...values.slice(1).map((v, i) => `${ind}${name} = select(${name}, ${v}, i == ${u(i + 1)});`),
  ];
}

interface Ctx {
  shape: MatmulShape;
  p: MatmulParams;
  M: number;
  N: number;
  K: number;
  /** mm_out is an array of vec4 (n % 4 == 0) written through mm_store4. */
  outVec: boolean;
  /** The low-rank branches the kernel computes (MatmulBranch), and how each is loaded. */
  branches: readonly BranchForm[];
  branchModes: readonly BranchMode[];
}

/** What a branch's code depends on (its buffers do not change it). */
type BranchForm = Pick<MatmulBranch, "rank" | "upTrans" | "scale">;
/**
 * How a tile loads a branch: k4, vec4s along the rank of both down and up ([n, rank]); n4, down
 * along the rank and up ([rank, n]) along n; scalar otherwise (and in the naive variant, which
 * loops per element: mm_branch, and the shared one, which stages scalars: sharedBranchSteps).
 */
type BranchMode = "k4" | "n4" | "scalar";

function branchMode(shape: MatmulShape, p: MatmulParams, br: BranchForm): BranchMode {
  const tiled = p.variant === "register" || p.variant === "subgroup";
  if (!tiled || p.vectorWidth !== 4 || br.rank % 4 !== 0) return "scalar";
  if (br.upTrans) return "k4";
  return shape.n % 4 === 0 && p.colsPerThread % 4 === 0 ? "n4" : "scalar";
}

/** `, lr0: type, …`: the branches' values as parameters of the store and epilogue functions. */
const lrParams = (branches: readonly BranchForm[], type: string) =>
  branches.map((_, i) => `, lr${i}: ${type}`).join("");
/** `, lr0.x, …`: those parameters passed on (one lane of each with `lane`). */
const lrArgs = (branches: readonly BranchForm[], lane: string) =>
  branches.map((_, i) => `, lr${i}${lane}`).join("");

/** `, mm_branch0(row, col), …`: the branches' values at one element, computed the plain way. */
function branchCalls(c: Ctx, row: string, col: string): string {
  return c.branches.map((_, i) => `, mm_branch${i}(${row}, ${col})`).join("");
}

/** Scalar element index of A(row, l) / B(l, col) within the batch at aOff / bOff. */
function aIndex(c: Ctx, row: string, l: string): string {
  return c.shape.transA ? `aOff + (${l}) * ${u(c.M)} + ${row}` : `aOff + ${row} * ${u(c.K)} + ${l}`;
}
function bIndex(c: Ctx, l: string, col: string): string {
  return c.shape.transB ? `bOff + ${col} * ${u(c.K)} + ${l}` : `bOff + (${l}) * ${u(c.N)} + ${col}`;
}

type AMode = "k4" | "m4" | "scalar";
/** packedK / packedN: B is a dequantized packed weight, packed along k / n (see packedBMode). */
type BMode = "n4" | "k4" | "scalar" | "packedK" | "packedN";

/**
 * Fusion around the matmul: the epilogue, and prologues: a WGSL expression of `i: u32` (the flat
 * index into the stored operand, as the template computes it for `transA`/`transB`) giving the
 * operand's element, in place of a buffer read. Declarations (the functions the expressions call)
 * come in `epilogue.declarations`. An operand with a prologue is loaded one scalar at a time (no
 * vec4 loads), except a B prologue that is a dequantization (`dequantB`: the names of its packed
 * values' and scales' bindings), which the subgroup tile reads word by word (packedBMode); its
 * binding (0 or 1) must still hold some buffer (the prologue may read it as `mm_a` / `mm_b`).
 */
export interface MatmulKernelFusion extends MatmulFusion {
  prologue?: { a?: string; b?: string; dequantB?: PackedOperandCode };
  /** Low-rank branches the tile computes beside its product (see MatmulBranch). */
  branches?: readonly MatmulBranch[];
}

/**
 * A low-rank branch computed by the matmul kernel itself: value(row, col) = Σ_l down[row·rank + l]
 * · up(l, col), `down` a [m, rank] buffer (the down-projection X·L2ᵀ, computed once by a kernel of
 * its own), `up` stored [n, rank] (`upTrans`, LoRA's L1) or [rank, n]. Register and subgroup tiles
 * run it as `rank` more steps of their k-loop, with the tile's register blocking, vec4 loads and
 * broadcasts (per step R + C/8 loads for R·C FMAs, where the epilogue's per-element loop made 2
 * scalar loads per FMA), on the product's accumulators (`scale`) or on accumulators of the
 * branch's own; the shared-memory tile likewise stages slabs of
 * down and up in workgroup memory (sharedBranchSteps); the naive variant loops per element. Branch
 * i's value reaches the epilogue expression as `lr{i}` (`lrk_epilogue(…, lr0)`; 0 where the tile
 * added it into the product): whatever lies between the branch and the sum (a per-column scale, a
 * mask) stays in the epilogue.
 */
export interface MatmulBranch {
  rank: number;
  upTrans: boolean;
  /**
   * The epilogue sees the branch only as `acc + scale·branch` (fuse/low-rank.ts
   * `branchCoefficient`): the register, subgroup and shared tiles then add scale·down·up into the
   * product's own accumulators, as extra steps of its k loop, and hand the epilogue 0 for the
   * branch; without it the branch has accumulators of its own (a per-column scale or a mask may lie
   * between the two).
   */
  scale?: number;
  /** The plan buffers of `down` and `up`. */
  down: number;
  up: number;
}

/**
 * How the subgroup tile reads a B that is a dequantized packed weight (`dequantB`: values packed
 * 32 / bits to a u32 word along the stored rows, one scale per `group` of them), or undefined
 * where it reads it through the prologue, one unpacked element per load. Each lane loads a whole
 * word and unpacks it in registers; the scales are loaded once per group (packedK) or once per k
 * row for the whole tile (packedN):
 *  - packedK (B stored transposed [n, k], the forward x·Wᵀ): lane q owns column q (q + 8, …) of
 *    the tile, loads its word of 32 / bits values along k and its column's scale once per group,
 *    and hands the dequantized values to the others (subgroupBroadcast), as the f32 path hands
 *    vec4s along k; the k loop runs per group, a word per step.
 *  - packedN (B stored [k, n], the input gradient dy·W): the tile's C columns are C·bits/32 words
 *    of one k row, all in one group (group a multiple of C); the 8 lanes load the words of
 *    8 / words rows of k at once, each with its row's scale.
 */
function packedBMode(
  shape: MatmulShape,
  p: MatmulParams,
  dq: PackedOperandCode,
): "packedK" | "packedN" | undefined {
  const perWord = 32 / dq.bits;
  const C = p.colsPerThread;
  if (p.vectorWidth !== 4 || shape.batch !== 1 || p.variant === "naive") return undefined;
  if (p.variant !== "subgroup") {
    // register and shared (packedRegisterB, packedSharedB): along k a whole word per column and
    // step of the word loop (k, the group and shared's slab a multiple of a word); along n one
    // word per 4 columns (n, the group and the tile's columns multiples of 4: the 4 are in one
    // word and one group)
    const cols = p.variant === "shared" ? p.workgroupX * C : C;
    const depth = p.variant === "shared" ? p.tileK : perWord;
    if (shape.transB)
      return shape.k % perWord === 0 && dq.group % perWord === 0 && depth % perWord === 0
        ? "packedK"
        : undefined;
    return shape.n % 4 === 0 && dq.group % 4 === 0 && cols % 4 === 0 ? "packedN" : undefined;
  }
  if (shape.transB)
    return shape.k % perWord === 0 && dq.group % perWord === 0 && C % 8 === 0
      ? "packedK"
      : undefined;
  const words = C / perWord;
  return shape.n % perWord === 0 && C % perWord === 0 && dq.group % C === 0 && 8 % words === 0
    ? "packedN"
    : undefined;
}

/**
 * The matmul kernel for one exact shape. Bindings of group 0: 0 = A, 1 = B (both read), 2 = out
 * (read_write), then the epilogue's own bindings (3, 4, ...), declared by the kernel when they are
 * `KernelBuffer`s, else in `fusion.epilogue.declarations`. The epilogue expression sees
 * `acc: f32`, `row`, `col`, `batch: u32`; the template's own identifiers all start with `mm_`
 * or `lrk_` (or are locals of `main`).
 */
export function matmulKernel(
  shape: MatmulShape,
  p: MatmulParams,
  bindings: { a: number; b: number; out: number },
  fusion?: MatmulKernelFusion,
  /** Operands stored as f16 (frozen tensors, `shader-f16`): bound as f16, loaded as f32. */
  half: { a?: boolean; b?: boolean } = {},
): KernelSource {
  const epilogue = fusion?.epilogue;
  const branches = fusion?.branches ?? [];
  const code = cachedMatmulCode(shape, p, fusion?.prologue, epilogue?.expression, half, branches);
  return renderKernel({
    ...code.spec,
    dispatch: [...code.spec.dispatch],
    buffers: [
      { name: "mm_a", type: code.types.a, buffer: bindings.a, access: "read" },
      { name: "mm_b", type: code.types.b, buffer: bindings.b, access: "read" },
      { name: "mm_out", type: code.types.out, buffer: bindings.out, access: "read_write" },
      ...branches.flatMap((br, i) => [
        {
          name: `mm_ld${i}`,
          type: code.types.branches[i]!,
          buffer: br.down,
          access: "read" as const,
        },
        {
          name: `mm_lu${i}`,
          type: code.types.branches[i]!,
          buffer: br.up,
          access: "read" as const,
        },
      ]),
      ...(epilogue?.bindings ?? []),
    ],
    declarations: [epilogue?.declarations ?? "", ...code.spec.declarations],
  });
}

/** A matmul kernel's code but for its bindings and its epilogue's declarations. */
interface MatmulCode {
  spec: KernelSpec & { declarations: readonly string[] };
  /** The element types of the A, B and out bindings, and of each branch's two. */
  types: { a: string; b: string; out: string; branches: string[] };
}

/**
 * The code of every matmul kernel made, by everything it depends on: a deep model runs the same
 * few products in every layer (841 matmul kernels, 37 distinct, at 12 layers), each a few
 * hundred lines to generate. The code is shared, never changed: renderKernel only reads a spec.
 */
const matmulCodes = new Map<string, MatmulCode>();
const MATMUL_CODES_KEPT = 512;
const matmulCodeCounts = { generated: 0, reused: 0 };

/** How many matmul kernels' code was generated, and how many reused it (for tests). */
export function matmulCodeStats(): { generated: number; reused: number } {
  return { ...matmulCodeCounts };
}

function cachedMatmulCode(
  shape: MatmulShape,
  p: MatmulParams,
  prologue: MatmulKernelFusion["prologue"],
  expression: string | undefined,
  half: { a?: boolean; b?: boolean },
  branches: readonly MatmulBranch[],
): MatmulCode {
  if (branches.length && shape.batch !== 1)
    throw new Error("matmul: low-rank branches need batch 1");
  const forms = branches.map((br) => ({
    rank: br.rank,
    upTrans: br.upTrans,
    ...(br.scale !== undefined ? { scale: br.scale } : {}),
  }));
  const key = JSON.stringify([
    shape,
    p,
    prologue?.a,
    prologue?.b,
    prologue?.dequantB,
    expression,
    !!half.a,
    !!half.b,
    forms,
  ]);
  let code = matmulCodes.get(key);
  if (code) matmulCodeCounts.reused++;
  else {
    matmulCodeCounts.generated++;
    if (matmulCodes.size >= MATMUL_CODES_KEPT) matmulCodes.clear();
    code = matmulCode(
      shape,
      p,
      {
        ...(prologue ? { prologue } : {}),
        ...(expression !== undefined ? { epilogue: { expression } } : {}),
      },
      half,
      forms,
    );
    matmulCodes.set(key, code);
  }
  return code;
}

function matmulCode(
  shape: MatmulShape,
  p: MatmulParams,
  fusion: { prologue?: MatmulKernelFusion["prologue"]; epilogue?: { expression: string } },
  half: { a?: boolean; b?: boolean },
  branches: readonly BranchForm[] = [],
): MatmulCode {
  const { batch, m, n, k } = shape;
  for (const [name, v] of Object.entries({ batch, m, n, k }))
    if (!Number.isInteger(v) || v < 1) throw new Error(`matmul ${name} must be ≥ 1, got ${v}`);
  validateMatmulParams(p);

  const v4 = p.vectorWidth === 4;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  // Which vec4 loads the layout allows: along the operand's contiguous axis, when that extent is a
  // multiple of 4 (so a group of 4 is wholly inside or wholly outside the matrix).
  let aMode: AMode = "scalar";
  let bMode: BMode = "scalar";
  const proA = fusion?.prologue?.a;
  const proB = fusion?.prologue?.b;
  const dequantB = proB ? fusion?.prologue?.dequantB : undefined;
  if (v4 && (p.variant === "register" || p.variant === "subgroup")) {
    // A subgroup lane loads 4 columns; a register invocation loads its C columns.
    const laneCols = p.variant === "subgroup" ? 4 : C;
    if (!shape.transB && n % 4 === 0 && laneCols % 4 === 0) bMode = "n4";
    else if (shape.transB && k % 4 === 0) bMode = "k4";
    // A along k only when B's vec4s along k unroll k by 4 anyway: on lavapipe (1024³, NN)
    // scalar A loads stepping k by 1 measured ~25% faster than vec4 A loads stepping by 4.
    // (or where kUnroll steps k by 4, each accumulator written once per iteration: tiledBody).
    const kSteps4 = bMode === "k4" || (p.kUnroll === 4 && !proB);
    if (!shape.transA && k % 4 === 0 && kSteps4) aMode = "k4";
    else if (shape.transA && m % 4 === 0 && R % 4 === 0) aMode = "m4";
    if (proA) aMode = "scalar";
    if (proB) bMode = (dequantB && packedBMode(shape, p, dequantB)) || "scalar";
    // register tiles read packed words into vec4 accumulators' columns
    if ((bMode === "packedK" || bMode === "packedN") && p.variant === "register" && C % 4 !== 0)
      bMode = "scalar";
  }
  let sharedAVec = false;
  let sharedBVec = false;
  if (v4 && p.variant === "shared") {
    const tm = p.workgroupY * R;
    const tn = p.workgroupX * C;
    sharedAVec = shape.transA ? m % 4 === 0 && tm % 4 === 0 : k % 4 === 0 && p.tileK % 4 === 0;
    sharedBVec = shape.transB ? k % 4 === 0 && p.tileK % 4 === 0 : n % 4 === 0 && tn % 4 === 0;
    if (proA) sharedAVec = false;
    if (proB) sharedBVec = false;
  }
  // shared: the slab of B staged from packed words (packedSharedB)
  const sharedPacked =
    v4 && p.variant === "shared" && dequantB ? packedBMode(shape, p, dequantB) : undefined;
  const packedMode =
    sharedPacked ?? (bMode === "packedK" || bMode === "packedN" ? bMode : undefined);
  const aVec = aMode !== "scalar" || sharedAVec;
  const bVec = bMode === "n4" || bMode === "k4" || sharedBVec;
  // Register tiles store a vec4 of 4 columns at once where n allows (one per-lane store loop on
  // lavapipe instead of four: ~10% of a 576×512×128 product).
  const outVec =
    v4 && (p.variant === "register" || p.variant === "subgroup") && C % 4 === 0 && n % 4 === 0;
  const branchModes = branches.map((br) => branchMode(shape, p, br));
  const c: Ctx = { shape, p, M: m, N: n, K: k, outVec, branches, branchModes };

  const epilogue = fusion?.epilogue;
  const layout = `${shape.transA ? "T" : "N"}${shape.transB ? "T" : "N"}`;
  const functions = [
    // A prologue keeps its operand's binding statically used (`_ = &mm_a`) whether it reads it
    // or not, so the binding stays in an automatic pipeline layout.
    proA
      ? `fn mm_a_at(i: u32) -> f32 { _ = &mm_a; return ${proA}; }`
      : `fn mm_a_at(i: u32) -> f32 { return ${aVec ? "mm_a[i >> 2u][i & 3u]" : "mm_a[i]"}; }`,
    proB
      ? `fn mm_b_at(i: u32) -> f32 { _ = &mm_b; return ${proB}; }`
      : `fn mm_b_at(i: u32) -> f32 { return ${bVec ? "mm_b[i >> 2u][i & 3u]" : "mm_b[i]"}; }`,
    ...branchFunctions(c),
    `fn mm_epilogue(acc: f32, row: u32, col: u32, batch: u32${lrParams(branches, "f32")}) -> f32 {`,
    `  return ${epilogue?.expression ?? "acc"};`,
    `}`,
    ...(outVec
      ? [
          `/** Columns col..col+3 (col a multiple of 4, n of 4: all inside or all outside). */`,
          `fn mm_store4(batch: u32, row: u32, col: u32, acc: vec4<f32>${lrParams(branches, "vec4<f32>")}) {`,
          `  if (row < ${u(m)} && col < ${u(n)}) {`,
          `    mm_out[(batch * ${u(m * n)} + row * ${u(n)} + col) >> 2u] = vec4<f32>(`,
          ...[0, 1, 2, 3].map(
            (j) =>
              `      mm_epilogue(acc.${LANE[j]}, row, col${j ? ` + ${u(j)}` : ""}, batch${lrArgs(branches, `.${LANE[j]}`)})${j < 3 ? "," : ""}`,
          ),
          `    );`,
          `  }`,
          `}`,
        ]
      : [
          `fn mm_store(batch: u32, row: u32, col: u32, acc: f32${lrParams(branches, "f32")}) {`,
          `  if (row < ${u(m)} && col < ${u(n)}) {`,
          `    mm_out[batch * ${u(m * n)} + row * ${u(n)} + col] = mm_epilogue(acc, row, col, batch${lrArgs(branches, "")});`,
          `  }`,
          `}`,
        ]),
    `/** One output the plain way: the naive variant, and the subgroup variant's fallback. */`,
    `fn mm_dot(batch: u32, row: u32, col: u32) -> f32 {`,
    `  let aOff = batch * ${u(m * k)};`,
    `  let bOff = batch * ${u(k * n)};`,
    `  var acc = 0.0;`,
    `  for (var l = lrk_opaque_zero(); l < ${u(k)}; l++) {`,
    `    acc += mm_a_at(${aIndex(c, "row", "l")}) * mm_b_at(${bIndex(c, "l", "col")});`,
    `  }`,
    `  return acc;`,
    `}`,
  ].join("\n");

  let entry: Entry;
  let dispatch: [number, number, number];
  const wgx = p.workgroupX;
  const wgy = p.workgroupY;
  switch (p.variant) {
    case "naive":
      entry = naiveBody(c);
      dispatch = [Math.ceil(n / wgx), Math.ceil(m / wgy), batch];
      break;
    case "register":
    case "subgroup":
      entry = tiledBody(c, aMode, bMode, dequantB);
      dispatch = [Math.ceil(n / (wgx * C)), Math.ceil(m / (wgy * R)), batch];
      break;
    case "shared":
      entry = sharedBody(
        c,
        sharedAVec,
        sharedBVec,
        sharedPacked && dequantB && { mode: sharedPacked, dq: dequantB },
      );
      dispatch = [Math.ceil(n / (wgx * C)), Math.ceil(m / (wgy * R)), batch];
      break;
  }
  if (dispatch.some((d) => d > MAX_WORKGROUPS_PER_DIMENSION))
    throw new Error(
      `matmul ${batch}x${m}x${n}x${k}: ${dispatch.join("x")} workgroups exceed ` +
        `${MAX_WORKGROUPS_PER_DIMENSION} per dimension with ${describeMatmulParams(p)}`,
    );

  const sg = p.variant === "subgroup";
  const vec = (v: boolean) => (v ? "vec4<f32>" : "f32");
  const stored = (v: boolean, f16?: boolean) => (f16 ? (v ? "vec4<f16>" : "f16") : vec(v));
  let declarations = [functions, ...(entry.declarations ?? [])];
  // B read only from its packed words: its binding stays statically used, so that an automatic
  // pipeline layout keeps it (the subgroup tile's fallback reads it through mm_dot)
  let body = packedMode && !sg ? ["_ = &mm_b;", ...entry.body] : entry.body;
  for (const [side, isVec] of [
    ["a", aVec],
    ["b", bVec],
  ] as const) {
    if (!half[side]) continue;
    const name = `mm_${side}`;
    declarations = declarations.map((d) => halfReads(d, name));
    body = body.map((l) => halfReads(l, name));
    declarations.unshift(
      `fn ${name}_load(i: u32) -> ${vec(isVec)} { return ${vec(isVec)}(${name}[i]); }`,
    );
  }
  const spec = {
    name: `matmul ${batch > 1 ? `${batch}x` : ""}${m}x${n}x${k} ${layout} (${describeMatmulParams(p)})`,
    header:
      `// matmul ${batch}x${m}x${n}x${k} ${layout}, ${describeMatmulParams(p)}: ` +
      `A ${shape.transA ? "[b,k,m]" : "[b,m,k]"}${aVec ? " vec4" : ""}${proA ? " (prologue)" : ""}, ` +
      `B ${shape.transB ? "[b,n,k]" : "[b,k,n]"}${bVec ? " vec4" : ""}${proB ? " (prologue)" : ""}` +
      `${half.a ? ", A f16" : ""}${half.b ? ", B f16" : ""}` +
      (dequantB && packedMode
        ? `, packed ${dequantB.bits}-bit words along ${packedMode === "packedK" ? "k" : "n"}, group ${dequantB.group}`
        : ""),
    // Every subgroup operation sits in control flow that is uniform in practice (the branch on
    // subgroup_size), which the uniformity analysis cannot prove.
    directives: sg ? ["enable subgroups;", "diagnostic(off, subgroup_uniformity);"] : [],
    buffers: [],
    declarations,
    workgroupSize: [wgx, wgy, 1] as [number, number, number],
    builtins: entry.builtins,
    body,
    dispatch,
    features: sg ? ["subgroups"] : [],
  };
  return {
    spec,
    types: {
      a: stored(aVec, half.a),
      b: stored(bVec, half.b),
      out: vec(outVec),
      branches: branchModes.map((mode) => vec(mode !== "scalar")),
    },
  };
}

/**
 * `text` with every element read of the binding `name` (`name[i]`) made a call of `name_load(i)`,
 * which converts the f16 element (or vec4) read to f32: the template writes its reads for f32
 * bindings, and an f16 operand differs only in these reads.
 */
export function halfReads(text: string, name: string): string {
  const open = new RegExp(`\\b${name}\\[`, "g");
  let out = "";
  let from = 0;
  for (let match = open.exec(text); match; match = open.exec(text)) {
    let depth = 1;
    let i = match.index + name.length + 1;
    for (; i < text.length && depth > 0; i++)
      if (text[i] === "[") depth++;
      else if (text[i] === "]") depth--;
    if (depth !== 0) throw new Error(`matmul: unbalanced read of ${name} in ${text}`);
    const index = text.slice(match.index + name.length + 1, i - 1);
    out += `${text.slice(from, match.index)}${name}_load(${halfReads(index, name)})`;
    from = i;
    open.lastIndex = i;
  }
  return out + text.slice(from);
}

function naiveBody(c: Ctx): Entry {
  return {
    builtins: { gid: "global_invocation_id" },
    body: [
      `if (gid.y < ${u(c.M)} && gid.x < ${u(c.N)}) {`,
      `  mm_store(gid.z, gid.y, gid.x, mm_dot(gid.z, gid.y, gid.x)${branchCalls(c, "gid.y", "gid.x")});`,
      `}`,
    ],
  };
}

/**
 * register and subgroup variants: each invocation accumulates rows row0..row0+R-1 × columns
 * col0..col0+C-1 (accumulators acc{r}_{g}: vec4 per group of 4 columns when C % 4 == 0).
 * Loads clamp their row/column into the matrix (branch-free); only stores check bounds.
 */
function tiledBody(c: Ctx, aMode: AMode, bMode: BMode, dq?: PackedOperandCode): Entry {
  const { M, N, K, p } = c;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  const sg = p.variant === "subgroup";
  const cw = C % 4 === 0 ? 4 : 1; // accumulator width along columns
  const G = C / cw; // accumulator groups per row
  const vt = cw === 4 ? "vec4<f32>" : "f32";
  // Unroll k by 4 where a vec4 along k is loaded (B stored transposed); elsewhere it only
  // lengthens compiles (and measured slower on lavapipe).
  // (packedK: a loop over each packed word's vec4s steps k by 4 too)
  // Where B is k-major (n4, scalar), MatmulParams.kUnroll steps of k per iteration (absent: 1).
  const kMajorB = bMode === "n4" || bMode === "scalar";
  const fourK = aMode === "k4" || bMode === "k4" || bMode === "packedK";
  const KU = fourK ? 4 : kMajorB ? (p.kUnroll ?? 1) : 1;
  const perWord = dq ? 32 / dq.bits : 1; // fields per packed word
  // A subgroup tile narrower than 8 lanes' vec4s (G < 8 column groups) spreads its B loads over
  // k: lane q loads the 4 columns of group q % G at k step q / G, so each per-lane load of an
  // 8-lane subgroup is a distinct, used vec4, and one loop iteration covers S·KU steps of k. (Lanes
  // past G used to load duplicates: 16-column tiles, the rank-r products', wasted half of B's
  // loads.)
  // Only where B's loads step k by 1 (B stored k-major): with B stored transposed (vec4s along k,
  // KU = 4) the spread measured slower on lavapipe (576×8×512 NT: 1.42 vs 1.00), its unrolled
  // body 4× longer.
  // packedN: the tile's columns are C / perWord words of one k row; the 8 lanes load 8 / words rows.
  // With kUnroll, each of the S spread steps is KU steps of k (lane q loads rows
  // k0 + KU·(q / G) .. + KU - 1 of its group).
  const S = bMode === "packedN" && sg ? (8 * perWord) / C : sg && kMajorB ? 8 / G : 1;
  const kMain = K - (K % (KU * S));
  const L: string[] = [];
  const builtins: Record<string, Builtin> = { wg: "workgroup_id", lid: "local_invocation_id" };
  if (sg) Object.assign(builtins, { lane: "subgroup_invocation_id", sg_size: "subgroup_size" });
  L.push(`let batch = wg.z;`);
  L.push(`let row0 = (wg.y * ${u(p.workgroupY)} + lid.y) * ${u(R)};`);
  L.push(`let col0 = (wg.x * ${u(p.workgroupX)} + lid.x) * ${u(C)};`);
  if (sg) L.push(...subgroupFallback(c, 8));
  L.push(`let aOff = batch * ${u(M * K)};`);
  L.push(`let bOff = batch * ${u(K * N)};`);
  // Clamped rows and columns: loads never leave the operand, stores are bounds-checked.
  for (let r = 0; r < R; r++) L.push(`let rr${r} = min(row0 + ${u(r)}, ${u(M - 1)});`);
  for (let j = 0; j < C; j++) L.push(`let cc${j} = min(col0 + ${u(j)}, ${u(N - 1)});`);
  for (let r = 0; r < R; r++)
    for (let g = 0; g < G; g++) L.push(`var acc${r}_${g}: ${vt} = ${vt}();`);

  // A(row r, kb + kk): emits the loads (names ending in `t`), returns the expression.
  const loadA = (out: string[], ind: string, kb: string, t: string) => {
    if (aMode === "k4") {
      for (let r = 0; r < R; r++)
        out.push(`${ind}let va${r}${t} = mm_a[(aOff + rr${r} * ${u(K)} + ${kb}) >> 2u];`);
      return (r: number, kk: number) => `va${r}${t}.${LANE[kk]}`;
    }
    if (aMode === "m4") {
      for (let kk = 0; kk < KU; kk++)
        for (let g = 0; g < R / 4; g++)
          out.push(
            `${ind}let va${g}_${kk}${t} = mm_a[(aOff + (${kb} + ${u(kk)}) * ${u(M)} + ` +
              `min(row0 + ${u(4 * g)}, ${u(M - 4)})) >> 2u];`,
          );
      return (r: number, kk: number) => `va${Math.floor(r / 4)}_${kk}${t}.${LANE[r % 4]}`;
    }
    for (let r = 0; r < R; r++)
      for (let kk = 0; kk < KU; kk++)
        out.push(
          `${ind}let a${r}_${kk}${t} = mm_a_at(${aIndex(c, `rr${r}`, `${kb} + ${u(kk)}`)});`,
        );
    return (r: number, kk: number) => `a${r}_${kk}${t}`;
  };

  // B for the 4 columns from `base` (a multiple of 4 past col0), one vec4 per kk of kb + kk.
  const loadB4 = (out: string[], ind: string, base: string, tag: string, kb = "k0"): string[] => {
    const names = [...Array(KU).keys()].map((kk) => `b${tag}_${kk}`);
    if (bMode === "n4") {
      names.forEach((name, kk) =>
        out.push(
          `${ind}let ${name} = mm_b[(bOff + (${kb} + ${u(kk)}) * ${u(N)} + ` +
            `min(${base}, ${u(N - 4)})) >> 2u];`,
        ),
      );
      return names;
    }
    const cols = [0, 1, 2, 3].map((i) => `min(${base} + ${u(i)}, ${u(N - 1)})`);
    if (bMode === "k4") {
      cols.forEach((col, i) =>
        out.push(`${ind}let vb${tag}_${i} = mm_b[(bOff + ${col} * ${u(K)} + ${kb}) >> 2u];`),
      );
      names.forEach((name, kk) =>
        out.push(
          `${ind}let ${name} = vec4<f32>(` +
            `${[0, 1, 2, 3].map((i) => `vb${tag}_${i}.${LANE[kk]}`).join(", ")});`,
        ),
      );
      return names;
    }
    names.forEach((name, kk) =>
      out.push(
        `${ind}let ${name} = vec4<f32>(` +
          `${cols.map((col) => `mm_b_at(${bIndex(c, `${kb} + ${u(kk)}`, col)})`).join(", ")});`,
      ),
    );
    return names;
  };

  // B(k0 + kk, column group g), kk < KU·S: emits the loads, returns the expression.
  const loadB = (out: string[], ind: string): ((kk: number, g: number) => string) => {
    if (dq && (bMode === "packedK" || bMode === "packedN"))
      return sg ? loadPackedB(c, dq, bMode, S, out, ind) : packedRegisterB(c, dq, bMode, out, ind);
    if (sg && bMode === "k4" && C % 8 === 0) {
      // B stored transposed: lane q loads column q (and q + 8, ...) as a vec4 along k, so each
      // of the 8 lanes' loads is a distinct column (with 4 columns per lane, 16- and 8-column
      // tiles left lanes loading duplicates); every lane takes column j from lane j % 8.
      for (let h = 0; h < C / 8; h++)
        out.push(
          `${ind}let vbl${h} = mm_b[(bOff + min(col0 + ${u(8 * h)} + lane % 8u, ${u(N - 1)}) * ` +
            `${u(K)} + k0) >> 2u];`,
        );
      for (let j = 0; j < C; j++)
        out.push(`${ind}let bc${j} = subgroupBroadcast(vbl${j >> 3}, ${u(j % 8)});`);
      for (let kk = 0; kk < KU; kk++)
        for (let g = 0; g < G; g++) {
          const parts = [0, 1, 2, 3].map((i) => `bc${4 * g + i}.${LANE[kk]}`);
          out.push(`${ind}let b${kk}_${g} = vec4<f32>(${parts.join(", ")});`);
        }
      return (kk, g) => `b${kk}_${g}`;
    }
    if (sg) {
      // Lane q loads the columns of group q % G at step q / G once for the whole subgroup;
      // every lane takes each (step, group) from the lane that loaded it. Lanes past the first 8
      // load duplicates (cheap, keeps them in step).
      const kb = S > 1 ? `k0 + ${u(KU)} * ((lane % ${u(G * S)}) / ${u(G)})` : "k0";
      const vals = loadB4(out, ind, `col0 + 4u * (lane % ${u(G)})`, "l", kb);
      for (let s = 0; s < S; s++)
        for (let kk = 0; kk < KU; kk++)
          for (let g = 0; g < G; g++)
            out.push(
              `${ind}let b${s * KU + kk}_${g} = subgroupBroadcast(${vals[kk]}, ${u(s * G + g)});`,
            );
      return (kk, g) => `b${kk}_${g}`;
    }
    if (cw === 4) {
      const groups = [...Array(G).keys()].map((g) =>
        loadB4(out, ind, `col0 + ${u(4 * g)}`, `${g}`),
      );
      return (kk, g) => groups[g]![kk]!;
    }
    // Scalar columns (C not a multiple of 4).
    if (bMode === "k4") {
      for (let j = 0; j < C; j++)
        out.push(`${ind}let vb${j} = mm_b[(bOff + cc${j} * ${u(K)} + k0) >> 2u];`);
      return (kk, g) => `vb${g}.${LANE[kk]}`;
    }
    for (let kk = 0; kk < KU; kk++)
      for (let j = 0; j < C; j++)
        out.push(`${ind}let b${kk}_${j} = mm_b_at(${bIndex(c, `k0 + ${u(kk)}`, `cc${j}`)});`);
    return (kk, g) => `b${kk}_${g}`;
  };

  if (kMain > 0 && dq && bMode === "packedK") {
    L.push(...packedKLoops(c, dq, sg));
  } else if (kMain > 0) L.push(`for (var k0 = lrk_zero; k0 < ${u(kMain)}; k0 += ${u(KU * S)}) {`);
  if (kMain > 0) {
    const a = [...Array(S).keys()].map((s) =>
      loadA(L, "  ", s ? `k0 + ${u(s * KU)}` : "k0", S > 1 ? `s${s}` : ""),
    );
    const b = loadB(L, "  ");
    // With kUnroll, each accumulator once per iteration, the sum of its S·KU products, column
    // group by column group (a group's B values live only while used): on lavapipe every write
    // of a loop-carried variable is a blend with the execution mask and, for a tile of more
    // accumulators than registers, a spill load and store; one write per iteration pays them
    // once per S·KU steps of k (1024² NN, 4×32 with 4 steps: 1.25–1.7× the CPU throughput of
    // one write per step). Tiles without kUnroll keep one statement per product (their code as
    // measured and tuned before; summed, the 8-column tiles' 4 spread steps took lavapipe
    // 10–40 s to compile).
    if ((p.kUnroll ?? 1) > 1) {
      for (let g = 0; g < G; g++)
        for (let r = 0; r < R; r++) {
          const terms: string[] = [];
          for (let s = 0; s < S; s++)
            for (let kk = 0; kk < KU; kk++) terms.push(`${b(s * KU + kk, g)} * ${a[s]!(r, kk)}`);
          L.push(`  acc${r}_${g} += ${terms.join(" + ")};`);
        }
    } else {
      for (let s = 0; s < S; s++)
        for (let kk = 0; kk < KU; kk++)
          for (let r = 0; r < R; r++)
            for (let g = 0; g < G; g++)
              L.push(`  acc${r}_${g} += ${b(s * KU + kk, g)} * ${a[s]!(r, kk)};`);
    }
    L.push(`}`);
    if (bMode === "packedK") L.push(`}`);
  }
  if (kMain < K) L.push(...tiledKTail(c, kMain, G, cw));

  L.push(...tiledStores(c, G, cw));
  return { builtins, body: L };
}

/**
 * The k tail of a register or subgroup tile (K not a multiple of the loop's step), from kMain:
 * scalar loads, each invocation its own.
 */
function tiledKTail(c: Ctx, kMain: number, G: number, cw: number): string[] {
  const { K, p } = c;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  const L: string[] = [];
  L.push(`for (var l = ${u(kMain)} + lrk_zero; l < ${u(K)}; l++) {`);
  for (let r = 0; r < R; r++) L.push(`  let ta${r} = mm_a_at(${aIndex(c, `rr${r}`, "l")});`);
  for (let j = 0; j < C; j++) L.push(`  let tb${j} = mm_b_at(${bIndex(c, "l", `cc${j}`)});`);
  for (let r = 0; r < R; r++)
    for (let g = 0; g < G; g++) {
      const bv =
        cw === 4 ? `vec4<f32>(${[0, 1, 2, 3].map((i) => `tb${4 * g + i}`).join(", ")})` : `tb${g}`;
      L.push(`  acc${r}_${g} += ${bv} * ta${r};`);
    }
  L.push(`}`);
  return L;
}

/**
 * The k loops of a B packed along k (packedK): per word, each lane (subgroup: columns q, q + 8, …)
 * or invocation (register: its C columns) loads its columns' words and their group's scales, and
 * the inner loop unpacks a word 4 steps of k at a time (loadPackedB, packedRegisterB). One loop
 * over the words rather than one over groups around one over a group's words: lavapipe blends
 * every accumulator with the loop's mask where a loop ends, so each loop level costs a pass over
 * the tile (a scale load per word is cheaper). Looping over the word's vec4s rather than
 * unrolling them keeps the body the f32 path's size: lavapipe's compile time grows with it
 * (unrolled, a 2-bit kernel took 15 s to compile). Opens two loops; the caller closes them.
 */
function packedKLoops(c: Ctx, dq: PackedOperandCode, sg: boolean): string[] {
  const { N, K, p } = c;
  const C = p.colsPerThread;
  const perWord = 32 / dq.bits;
  const L: string[] = [];
  const owned = sg
    ? [...Array(C / 8).keys()].map((h) => `min(col0 + ${u(8 * h)} + lane % 8u, ${u(N - 1)})`)
    : [...Array(C).keys()].map((j) => `cc${j}`);
  owned.forEach((col, h) => L.push(`let pc${h} = ${col};`));
  L.push(`for (var kw = lrk_zero; kw < ${u(K)}; kw += ${u(perWord)}) {`);
  for (let h = 0; h < owned.length; h++) {
    // (a group is a whole number of words: packedBMode)
    L.push(`let sl${h} = ${dq.scales}[pc${h} * ${u(K / dq.group)} + kw / ${u(dq.group)}];`);
    L.push(`let wl${h} = bitcast<i32>(${dq.values}[(pc${h} * ${u(K)} + kw) / ${u(perWord)}]);`);
  }
  L.push(`for (var v = lrk_zero; v < ${u(perWord / 4)}; v++) {`);
  L.push(`let k0 = kw + 4u * v;`);
  return L;
}

/**
 * Fields first .. first + 3 of the packed word `word` (an i32) as a vec4<f32>, sign-extended:
 * each shifted to the top, then arithmetically back down, in one vector operation each way
 * (extractBits is polyfilled with clamps for variable offsets: measured slower on lavapipe).
 */
function fields4(word: string, first: number, bits: number): string {
  const up = [0, 1, 2, 3].map((i) => u(32 - bits * (first + i + 1)));
  return `vec4<f32>((vec4<i32>(${word}) << vec4<u32>(${up.join(", ")})) >> vec4<u32>(${u(32 - bits)}))`;
}

/**
 * The subgroup tile's B from a dequantized packed weight (packedBMode): each lane loads one u32
 * word, unpacks it into vec4s times its scale, and the tile takes each vec4 from the lane that
 * loaded it. Returns B(k0 + kk, column group g) as loadB does.
 */
function loadPackedB(
  c: Ctx,
  dq: PackedOperandCode,
  bMode: "packedK" | "packedN",
  S: number,
  out: string[],
  ind: string,
): (kk: number, g: number) => string {
  const { N, p } = c;
  const C = p.colsPerThread;
  const G = C / 4;
  const perWord = 32 / dq.bits;
  const V = perWord / 4; // vec4s per word
  const unpack = (word: string, name: (v: number) => string, scale: string) => {
    for (let v = 0; v < V; v++)
      out.push(`${ind}let ${name(v)} = ${fields4(word, 4 * v, dq.bits)} * ${scale};`);
  };
  if (bMode === "packedK") {
    // lane q: column q (q + 8, …); its word wl{h} and scale sl{h} are loaded (tiledBody), the
    // loop index v picks the word's 4 fields for steps k0 .. k0 + 3
    for (let h = 0; h < C / 8; h++) {
      const word = V > 1 ? `(wl${h} >> (v * ${u(4 * dq.bits)}))` : `wl${h}`;
      out.push(`${ind}let dq${h} = ${fields4(word, 0, dq.bits)} * sl${h};`);
    }
    for (let j = 0; j < C; j++)
      out.push(`${ind}let bc${j} = subgroupBroadcast(dq${j >> 3}, ${u(j % 8)});`);
    for (let kk = 0; kk < 4; kk++)
      for (let g = 0; g < G; g++) {
        const parts = [0, 1, 2, 3].map((i) => `bc${4 * g + i}.${LANE[kk]}`);
        out.push(`${ind}let b${kk}_${g} = vec4<f32>(${parts.join(", ")});`);
      }
    return (kk, g) => `b${kk}_${g}`;
  }
  // packedN: lane q loads word q % W of k row k0 + q / W, with that row's scale
  const W = C / perWord;
  out.push(`${ind}let pk = k0 + (lane % 8u) / ${u(W)};`);
  out.push(
    `${ind}let pw = bitcast<i32>(${dq.values}[(pk * ${u(N)} + ` +
      `min(col0 + ${u(perWord)} * (lane % ${u(W)}), ${u(N - perWord)})) / ${u(perWord)}]);`,
  );
  out.push(`${ind}let ps = ${dq.scales}[pk * ${u(N / dq.group)} + col0 / ${u(dq.group)}];`);
  unpack("pw", (v) => `pv${v}`, "ps");
  for (let s = 0; s < S; s++)
    for (let g = 0; g < G; g++)
      out.push(
        `${ind}let b${s}_${g} = subgroupBroadcast(pv${g % V}, ${u(s * W + Math.floor(g / V))});`,
      );
  return (kk, g) => `b${kk}_${g}`;
}

/**
 * The register tile's B from a dequantized packed weight (packedBMode), its own columns' words
 * unpacked in registers. packedK: column j's word wl{j} and scale sl{j} are loaded per word and
 * group (tiledBody); the loop index v picks the word's 4 fields for steps k0 .. k0 + 3. packedN:
 * per step of k, one word per group of 4 columns (col a multiple of 4, n of 4: the 4 fields lie in
 * one word and one group), shifted down to them, and that group's scale.
 */
function packedRegisterB(
  c: Ctx,
  dq: PackedOperandCode,
  bMode: "packedK" | "packedN",
  out: string[],
  ind: string,
): (kk: number, g: number) => string {
  const { N, p } = c;
  const C = p.colsPerThread;
  const G = C / 4;
  const perWord = 32 / dq.bits;
  if (bMode === "packedK") {
    for (let j = 0; j < C; j++) {
      const word = perWord > 4 ? `(wl${j} >> (v * ${u(4 * dq.bits)}))` : `wl${j}`;
      out.push(`${ind}let dq${j} = ${fields4(word, 0, dq.bits)} * sl${j};`);
    }
    for (let kk = 0; kk < 4; kk++)
      for (let g = 0; g < G; g++) {
        const parts = [0, 1, 2, 3].map((i) => `dq${4 * g + i}.${LANE[kk]}`);
        out.push(`${ind}let b${kk}_${g} = vec4<f32>(${parts.join(", ")});`);
      }
    return (kk, g) => `b${kk}_${g}`;
  }
  for (let g = 0; g < G; g++) {
    out.push(`${ind}let pi${g} = k0 * ${u(N)} + min(col0 + ${u(4 * g)}, ${u(N - 4)});`);
    out.push(
      `${ind}let pw${g} = bitcast<i32>(${dq.values}[pi${g} / ${u(perWord)}]) >> ` +
        `((pi${g} % ${u(perWord)}) * ${u(dq.bits)});`,
    );
    out.push(
      `${ind}let b0_${g} = ${fields4(`pw${g}`, 0, dq.bits)} * ${dq.scales}[pi${g} / ${u(dq.group)}];`,
    );
  }
  return (_kk, g) => `b0_${g}`;
}

/**
 * The shared variant's slab of B staged from a dequantized packed weight (packedBMode): each
 * invocation loads whole u32 words, unpacks them with vector shifts, scales them and writes the
 * values to the slab (zero outside the matrix). packedK (B stored [n, k]): a word is 32 / bits
 * steps of k of one column; packedN (B stored [k, n]): a word's 4 fields from a multiple of 4 are
 * 4 columns of one k row.
 */
function packedSharedB(
  c: Ctx,
  dq: PackedOperandCode,
  mode: "packedK" | "packedN",
  TN: number,
  NT: number,
): string[] {
  const { N, K, p } = c;
  const TK = p.tileK;
  const perWord = 32 / dq.bits;
  const L: string[] = [];
  const unpack = (word: string, count: number, scale: string, ok: string) => {
    for (let v = 0; v < count; v++)
      L.push(
        `    let d${v} = select(vec4<f32>(), ${fields4(word, 4 * v, dq.bits)} * ${scale}, ${ok});`,
      );
  };
  if (mode === "packedK") {
    const words = TK / perWord; // per column of the slab
    L.push(`  for (var i = lidx; i < ${u(TN * words)}; i += ${u(NT)}) {`);
    L.push(`    let x = i / ${u(words)};`);
    L.push(`    let kk = (i % ${u(words)}) * ${u(perWord)};`);
    L.push(`    let ok = tileCol + x < ${u(N)} && k0 + kk < ${u(K)};`);
    L.push(
      `    let pi = min(tileCol + x, ${u(N - 1)}) * ${u(K)} + min(k0 + kk, ${u(K - perWord)});`,
    );
    L.push(`    let pw = bitcast<i32>(${dq.values}[pi / ${u(perWord)}]);`);
    unpack("pw", perWord / 4, `${dq.scales}[pi / ${u(dq.group)}]`, "ok");
    for (let f = 0; f < perWord; f++)
      L.push(`    mm_tile_b[(kk + ${u(f)}) * ${u(TN)} + x] = d${f >> 2}.${LANE[f % 4]};`);
  } else {
    L.push(`  for (var i = lidx; i < ${u((TK * TN) / 4)}; i += ${u(NT)}) {`);
    L.push(`    let x = (i % ${u(TN / 4)}) * 4u;`);
    L.push(`    let kk = i / ${u(TN / 4)};`);
    L.push(`    let ok = tileCol + x < ${u(N)} && k0 + kk < ${u(K)};`);
    L.push(`    let pi = min(k0 + kk, ${u(K - 1)}) * ${u(N)} + min(tileCol + x, ${u(N - 4)});`);
    L.push(
      `    let pw = bitcast<i32>(${dq.values}[pi / ${u(perWord)}]) >> ` +
        `((pi % ${u(perWord)}) * ${u(dq.bits)});`,
    );
    unpack("pw", 1, `${dq.scales}[pi / ${u(dq.group)}]`, "ok");
    for (let j = 0; j < 4; j++)
      L.push(`    mm_tile_b[kk * ${u(TN)} + x + ${u(j)}] = d0.${LANE[j]};`);
  }
  L.push(`  }`);
  return L;
}

/**
 * The register and subgroup tiles' low-rank branch steps (branchLoop), then their stores, through
 * a small loop: one bounds check and epilogue in the code, not R·C copies. Accumulator acc{r}_{g}
 * holds row r, columns g·cw.. of the tile (lb{i}_{r}_{g} branch i's).
 */
function tiledStores(c: Ctx, G: number, cw: number): string[] {
  const R = c.p.rowsPerThread;
  // first the low-rank branches' steps, whose accumulators the stores hand to the epilogue
  const L: string[] = c.branches.flatMap((_, i) => branchLoop(c, i, G, cw));
  const accs: string[] = [];
  for (let r = 0; r < R; r++) for (let g = 0; g < G; g++) accs.push(`acc${r}_${g}`);
  L.push(`for (var i = lrk_zero; i < ${u(R * G)}; i++) {`);
  L.push(`  let row = row0 + i / ${u(G)};`);
  L.push(`  let col = col0 + (i % ${u(G)}) * ${u(cw)};`);
  L.push(...pick("v", accs, "  "));
  const values = branchValues(c, accs, cw === 4 ? "vec4<f32>" : "f32", L, "  ");
  const ws = (lane: string) => values.map((w) => `, ${w(lane)}`).join("");
  if (c.outVec) {
    L.push(`  mm_store4(batch, row, col, v${ws("")});`);
  } else if (cw === 4) {
    for (let j = 0; j < 4; j++)
      L.push(`  mm_store(batch, row, col + ${u(j)}, v.${LANE[j]}${ws(`.${LANE[j]}`)});`);
  } else {
    L.push(`  mm_store(batch, row, col, v${ws("")});`);
  }
  L.push(`}`);
  return L;
}

/**
 * WebGPU promises subgroups of at least 4 lanes; the subgroup tile's loads take `lanes` (8;
 * lavapipe: 8 lanes with AVX2, 4 with SSE only). On a narrower subgroup compute the tile the
 * plain way: correct everywhere, fast where it matters, and little code.
 */
function subgroupFallback(c: Ctx, lanes: number): string[] {
  const { M, N, p } = c;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  const G = C / 4;
  const L: string[] = [];
  L.push(`if (sg_size < ${u(lanes)}) {`);
  if (c.outVec) {
    L.push(`  for (var i = lrk_zero; i < ${u(R * G)}; i++) {`);
    L.push(`    let row = row0 + i / ${u(G)};`);
    L.push(`    let col = col0 + (i % ${u(G)}) * 4u;`);
    L.push(`    if (row < ${u(M)} && col < ${u(N)}) {`);
    const dots = [0, 1, 2, 3].map((j) => `mm_dot(batch, row, col + ${u(j)})`);
    const lrs = c.branches.map((_, b) => `, mm_branch4_${b}(row, col)`);
    L.push(`      mm_store4(batch, row, col, vec4<f32>(${dots.join(", ")})${lrs.join("")});`);
  } else {
    L.push(`  for (var i = lrk_zero; i < ${u(R * C)}; i++) {`);
    L.push(`    let row = row0 + i / ${u(C)};`);
    L.push(`    let col = col0 + i % ${u(C)};`);
    L.push(`    if (row < ${u(M)} && col < ${u(N)}) {`);
    L.push(
      `      mm_store(batch, row, col, mm_dot(batch, row, col)${branchCalls(c, "row", "col")});`,
    );
  }
  L.push(`    }`);
  L.push(`  }`);
  L.push(`  return;`);
  L.push(`}`);
  return L;
}

/**
 * The shared-memory variant: a (workgroupY·R) × (workgroupX·C) output tile per workgroup; per
 * tileK-deep slab of k the workgroup stages A and B in workgroup memory (k-major, zero outside the
 * matrices), then each invocation accumulates rows lid.y + r·workgroupY and columns
 * lid.x + j·workgroupX (strided, so neighbouring invocations read neighbouring words).
 */
function sharedBody(
  c: Ctx,
  aVec: boolean,
  bVec: boolean,
  packedB?: { mode: "packedK" | "packedN"; dq: PackedOperandCode },
): Entry {
  const { M, N, K, p } = c;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  const WX = p.workgroupX;
  const WY = p.workgroupY;
  const TK = p.tileK;
  const TM = WY * R;
  const TN = WX * C;
  const NT = WX * WY;
  const tiles = Math.ceil(K / TK);
  // Unroll the kk loop a little (compile time on lavapipe grows with every load in the code).
  const U = [4, 2, 1].find((f) => TK % f === 0 && f * (R + C) <= 32) ?? 1;
  const L: string[] = [];
  L.push(`let batch = wg.z;`);
  L.push(`let tileRow = wg.y * ${u(TM)};`);
  L.push(`let tileCol = wg.x * ${u(TN)};`);
  L.push(`let aOff = batch * ${u(M * K)};`);
  L.push(`let bOff = batch * ${u(K * N)};`);
  for (let r = 0; r < R; r++) for (let j = 0; j < C; j++) L.push(`var acc${r}_${j} = 0.0;`);
  L.push(`for (var t = lrk_zero; t < ${u(tiles)}; t++) {`);
  L.push(`  let k0 = t * ${u(TK)};`);

  // Cooperative loads; consecutive invocations read consecutive addresses along whichever axis
  // the operand is contiguous.
  const coop = (name: "a" | "b", vec: boolean, alongK: boolean, T: number, limit: number) => {
    const vw = vec ? 4 : 1;
    const count = (T * TK) / vw;
    const tile = `mm_tile_${name}`;
    const src = `mm_${name}`;
    const at = `mm_${name}_at`;
    const base = name === "a" ? "tileRow" : "tileCol";
    const off = name === "a" ? "aOff" : "bOff";
    L.push(`  for (var i = lidx; i < ${u(count)}; i += ${u(NT)}) {`);
    if (alongK) {
      // element (x, kk) at off + x·K + k, x along m (A) or n (B)
      L.push(`    let x = i / ${u(TK / vw)};`);
      L.push(`    let kk = (i % ${u(TK / vw)}) * ${u(vw)};`);
      L.push(`    let ok = ${base} + x < ${u(limit)} && k0 + kk < ${u(K)};`);
      L.push(`    let xc = min(${base} + x, ${u(limit - 1)});`);
      if (vec) {
        L.push(
          `    let v = select(vec4<f32>(), ` +
            `${src}[(${off} + xc * ${u(K)} + min(k0 + kk, ${u(K - 4)})) >> 2u], ok);`,
        );
        for (let j = 0; j < 4; j++)
          L.push(`    ${tile}[(kk + ${u(j)}) * ${u(T)} + x] = v.${LANE[j]};`);
      } else {
        L.push(`    let kc = min(k0 + kk, ${u(K - 1)});`);
        L.push(
          `    ${tile}[kk * ${u(T)} + x] = select(0.0, ${at}(${off} + xc * ${u(K)} + kc), ok);`,
        );
      }
    } else {
      // element (x, kk) at off + k·limit + x
      L.push(`    let x = (i % ${u(T / vw)}) * ${u(vw)};`);
      L.push(`    let kk = i / ${u(T / vw)};`);
      L.push(`    let ok = ${base} + x < ${u(limit)} && k0 + kk < ${u(K)};`);
      L.push(`    let kc = min(k0 + kk, ${u(K - 1)});`);
      if (vec) {
        L.push(`    let xc = min(${base} + x, ${u(limit - 4)});`);
        L.push(
          `    let v = select(vec4<f32>(), ${src}[(${off} + kc * ${u(limit)} + xc) >> 2u], ok);`,
        );
        for (let j = 0; j < 4; j++)
          L.push(`    ${tile}[kk * ${u(T)} + x + ${u(j)}] = v.${LANE[j]};`);
      } else {
        L.push(`    let xc = min(${base} + x, ${u(limit - 1)});`);
        L.push(
          `    ${tile}[kk * ${u(T)} + x] = select(0.0, ${at}(${off} + kc * ${u(limit)} + xc), ok);`,
        );
      }
    }
    L.push(`  }`);
  };
  coop("a", aVec, !c.shape.transA, TM, M);
  if (packedB) L.push(...packedSharedB(c, packedB.dq, packedB.mode, TN, NT));
  else coop("b", bVec, c.shape.transB, TN, N);
  L.push(`  workgroupBarrier();`);
  L.push(...sharedTileProducts(TK, U, R, C, TM, TN, WY, WX, "acc"));
  L.push(`  workgroupBarrier();`);
  L.push(`}`);
  L.push(...c.branches.flatMap((_, i) => sharedBranchSteps(c, i, U)));
  const accs: string[] = [];
  for (let r = 0; r < R; r++) for (let j = 0; j < C; j++) accs.push(`acc${r}_${j}`);
  L.push(`for (var i = lrk_zero; i < ${u(R * C)}; i++) {`);
  L.push(`  let row = tileRow + lid.y + (i / ${u(C)}) * ${u(WY)};`);
  L.push(`  let col = tileCol + lid.x + (i % ${u(C)}) * ${u(WX)};`);
  L.push(...pick("v", accs, "  "));
  const ws = branchValues(c, accs, "f32", L, "  ").map((w) => `, ${w("")}`);
  L.push(`  mm_store(batch, row, col, v${ws.join("")});`);
  L.push(`}`);
  return {
    builtins: { wg: "workgroup_id", lid: "local_invocation_id", lidx: "local_invocation_index" },
    body: L,
    declarations: [
      `var<workgroup> mm_tile_a: array<f32, ${TK * TM}>; // [kk][row]`,
      `var<workgroup> mm_tile_b: array<f32, ${TK * TN}>; // [kk][col]`,
    ],
  };
}

/**
 * Branch i's loads (`mm_ld{i}_at`, `mm_lu{i}_at`: one element at a flat index) and its value at
 * one element the plain way (`mm_branch{i}`, row and column clamped into the matrix), for the
 * variants that loop per element and the subgroup tile's fallback.
 */
function branchFunctions(c: Ctx): string[] {
  const { M, N } = c;
  return c.branches.flatMap(({ rank, upTrans }, i) => {
    const vec = c.branchModes[i] !== "scalar";
    const at = (name: string) =>
      `fn ${name}_at(i: u32) -> f32 { return ${vec ? `${name}[i >> 2u][i & 3u]` : `${name}[i]`}; }`;
    const up = upTrans ? `c * ${u(rank)} + l` : `l * ${u(N)} + c`;
    const up4 = [0, 1, 2, 3].map((j) =>
      upTrans ? `(c + ${u(j)}) * ${u(rank)} + l` : `l * ${u(N)} + c + ${u(j)}`,
    );
    return [
      at(`mm_ld${i}`),
      at(`mm_lu${i}`),
      `/** Low-rank branch ${i} at one element: Σ_l down[row, l]·up(l, col), rank ${rank}. */`,
      `fn mm_branch${i}(row: u32, col: u32) -> f32 {`,
      `  let r = min(row, ${u(M - 1)});`,
      `  let c = min(col, ${u(N - 1)});`,
      `  var s = 0.0;`,
      `  for (var l = lrk_opaque_zero(); l < ${u(rank)}; l++) {`,
      `    s += mm_ld${i}_at(r * ${u(rank)} + l) * mm_lu${i}_at(${up});`,
      `  }`,
      `  return s;`,
      `}`,
      ...(c.outVec
        ? [
            `/** mm_branch${i} at columns col..col+3 (n a multiple of 4), in one loop. */`,
            `fn mm_branch4_${i}(row: u32, col: u32) -> vec4<f32> {`,
            `  let r = min(row, ${u(M - 1)});`,
            `  let c = min(col, ${u(N - 4)});`,
            `  var s = vec4<f32>();`,
            `  for (var l = lrk_opaque_zero(); l < ${u(rank)}; l++) {`,
            `    let d = mm_ld${i}_at(r * ${u(rank)} + l);`,
            `    s += d * vec4<f32>(${up4.map((x) => `mm_lu${i}_at(${x})`).join(", ")});`,
            `  }`,
            `  return s;`,
            `}`,
          ]
        : []),
    ];
  });
}

/**
 * The accumulators branch i's steps add to: the product's own (`acc`) where the epilogue sees the
 * branch only scaled and added to the product (MatmulBranch `scale`), else its own (`lb{i}_`).
 */
function branchAccumulators(c: Ctx, i: number): string {
  return c.branches[i]!.scale !== undefined ? "acc" : `lb${i}_`;
}

/** The comment heading branch i's steps in the tile: its rank and where it accumulates. */
function branchComment(c: Ctx, i: number): string {
  const { rank, scale } = c.branches[i]!;
  const into =
    scale === undefined
      ? `accumulators lb${i}_ of its own`
      : `added into the product's accumulators${scale === 1 ? "" : `, times ${scale}`}`;
  return `// branch ${i} (rank ${rank}) in the tile: ${into}`;
}

/** A load of branch i's down values, times its scale where it is added into the product. */
function scaledLoad(c: Ctx, i: number, load: string): string {
  const scale = c.branches[i]!.scale;
  return scale === undefined || scale === 1 ? load : `${f32Lit(scale)} * ${load}`;
}

/**
 * The branch values the stores hand the epilogue, whole (lane "") or at one lane (".x", …): w{b}
 * picked from branch b's accumulators, or zero where the branch was added into the product's.
 */
function branchValues(
  c: Ctx,
  accs: readonly string[],
  type: string,
  L: string[],
  ind: string,
): ((lane: string) => string)[] {
  return c.branches.map((br, b) => {
    if (br.scale !== undefined) return (lane) => (lane ? "0.0" : `${type}()`);
    L.push(
      ...pick(
        `w${b}`,
        accs.map((a) => `lb${b}_${a.slice(3)}`),
        ind,
      ),
    );
    return (lane) => `w${b}${lane}`;
  });
}

/**
 * The register and subgroup tiles' loop over branch i's rank: the same tile as the product's
 * (rows rr{r}, columns cc{j}), on the product's accumulators acc{r}_{g} (branchAccumulators) or
 * on lb{i}_{r}_{g} of its own. Down's rows are loaded as
 * vec4s along the rank; up's columns as vec4s along the rank (k4: in a subgroup each of 8 lanes
 * loads distinct columns and broadcasts them, as the product's B stored transposed) or along n
 * (n4: in a subgroup lane q loads column group q % G and broadcasts it). The 4 steps of each vec4
 * are unrolled (blocks with a constant `kk`): a loop indexing the vectors measured +17.8 % over
 * the base GEMM vs +14.5 % unrolled (576 × 1024 × 1024, rank 64, lavapipe), though unrolled the
 * kernel's cold compile takes longer (lavapipe's compile time grows with the code).
 */
function branchLoop(c: Ctx, i: number, G: number, cw: number): string[] {
  const { N, p } = c;
  const { rank, upTrans } = c.branches[i]!;
  const mode = c.branchModes[i]!;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  const sg = p.variant === "subgroup";
  const vt = cw === 4 ? "vec4<f32>" : "f32";
  const [ld, lu] = [`mm_ld${i}`, `mm_lu${i}`];
  const L: string[] = [];
  const acc = branchAccumulators(c, i);
  L.push(branchComment(c, i));
  if (acc !== "acc")
    for (let r = 0; r < R; r++)
      for (let g = 0; g < G; g++) L.push(`var ${acc}${r}_${g}: ${vt} = ${vt}();`);
  // a branch added into the product's accumulators: its down rows scaled on load
  const scaled = (load: string) => scaledLoad(c, i, load);
  L.push(`for (var l0 = lrk_zero; l0 < ${u(rank)}; l0 += ${u(mode === "scalar" ? 1 : 4)}) {`);
  const fmas = (ind: string, up: (g: number) => string, down: (r: number) => string) => {
    for (let r = 0; r < R; r++)
      for (let g = 0; g < G; g++) L.push(`${ind}${acc}${r}_${g} += ${up(g)} * ${down(r)};`);
  };
  /** Column j's vec4 `name(j)` at step kk, gathered 4 (or 1) columns per accumulator group. */
  const columns = (name: (j: number) => string) => (g: number) =>
    cw === 4
      ? `vec4<f32>(${[0, 1, 2, 3].map((j) => `${name(4 * g + j)}[kk]`).join(", ")})`
      : `${name(g)}[kk]`;
  if (mode === "scalar") {
    for (let r = 0; r < R; r++)
      L.push(`  let ld${r} = ${scaled(`${ld}_at(rr${r} * ${u(rank)} + l0)`)};`);
    for (let j = 0; j < C; j++)
      L.push(
        `  let lv${j} = ${lu}_at(${upTrans ? `cc${j} * ${u(rank)} + l0` : `l0 * ${u(N)} + cc${j}`});`,
      );
    const up = (g: number) =>
      cw === 4 ? `vec4<f32>(${[0, 1, 2, 3].map((j) => `lv${4 * g + j}`).join(", ")})` : `lv${g}`;
    fmas("  ", up, (r) => `ld${r}`);
    L.push(`}`);
    return L;
  }
  for (let r = 0; r < R; r++)
    L.push(`  let ld${r} = ${scaled(`${ld}[(rr${r} * ${u(rank)} + l0) >> 2u]`)};`);
  let up: (g: number) => string;
  const inner: string[] = [];
  if (mode === "k4" && sg && C % 8 === 0) {
    for (let h = 0; h < C / 8; h++)
      L.push(
        `  let lv${h} = ${lu}[(min(col0 + ${u(8 * h)} + lane % 8u, ${u(N - 1)}) * ${u(rank)} + l0) >> 2u];`,
      );
    for (let j = 0; j < C; j++)
      L.push(`  let lc${j} = subgroupBroadcast(lv${j >> 3}, ${u(j % 8)});`);
    up = columns((j) => `lc${j}`);
  } else if (mode === "k4") {
    for (let j = 0; j < C; j++) L.push(`  let lv${j} = ${lu}[(cc${j} * ${u(rank)} + l0) >> 2u];`);
    up = columns((j) => `lv${j}`);
  } else if (sg) {
    // n4 (cw 4): lane q loads group q % G of row l0 + kk; lanes past G load duplicates
    inner.push(
      `    let lq = ${lu}[((l0 + kk) * ${u(N)} + min(col0 + 4u * (lane % ${u(G)}), ${u(N - 4)})) >> 2u];`,
    );
    for (let g = 0; g < G; g++) inner.push(`    let lg${g} = subgroupBroadcast(lq, ${u(g)});`);
    up = (g) => `lg${g}`;
  } else {
    for (let g = 0; g < G; g++)
      inner.push(
        `    let lg${g} = ${lu}[((l0 + kk) * ${u(N)} + min(col0 + ${u(4 * g)}, ${u(N - 4)})) >> 2u];`,
      );
    up = (g) => `lg${g}`;
  }
  for (let kk = 0; kk < 4; kk++) {
    L.push(`  {`, `    let kk = ${u(kk)};`, ...inner);
    fmas("    ", up, (r) => `ld${r}[kk]`);
    L.push(`  }`);
  }
  L.push(`}`);
  return L;
}

/**
 * The shared-memory tile's steps over branch i's rank, after the product's k slabs: the same
 * staging and inner loop as the product's, with down's rows (tileRow.., [m, rank] row-major) in
 * mm_tile_a and up's columns (tileCol.., [n, rank] with upTrans, else [rank, n]) in mm_tile_b, in
 * slabs of min(tileK, rank) steps, on the product's accumulators (MatmulBranch `scale`, down
 * staged times it) or on lb{i}_{r}_{j} of the branch's own (the epilogue gets the branch apart
 * from the product: a per-column scale or mask lies between them). Per slab each
 * invocation stages (TM + TN)·depth / NT values and does R·C FMAs per step, where the
 * per-element loop (mm_branch) made 2 scalar global loads per FMA. Loads are scalar and clamped
 * into the matrices, zero outside; the product's last slab ended with a barrier, so the tiles are
 * free.
 */
function sharedBranchSteps(c: Ctx, i: number, unroll: number): string[] {
  const { M, N, p } = c;
  const { rank, upTrans } = c.branches[i]!;
  const R = p.rowsPerThread;
  const C = p.colsPerThread;
  const [WX, WY] = [p.workgroupX, p.workgroupY];
  const [TM, TN, NT] = [WY * R, WX * C, WX * WY];
  const D = Math.min(p.tileK, rank); // slab depth
  const U = D % unroll === 0 ? unroll : 1;
  const L: string[] = [];
  const acc = branchAccumulators(c, i);
  L.push(branchComment(c, i));
  if (acc !== "acc")
    for (let r = 0; r < R; r++) for (let j = 0; j < C; j++) L.push(`var ${acc}${r}_${j} = 0.0;`);
  L.push(`for (var t = lrk_zero; t < ${u(Math.ceil(rank / D))}; t++) {`);
  L.push(`  let l0 = t * ${u(D)};`);
  // down: element (row x, l) at x·rank + l, staged [l][row] (consecutive invocations along l)
  L.push(`  for (var i = lidx; i < ${u(TM * D)}; i += ${u(NT)}) {`);
  L.push(`    let x = i / ${u(D)};`);
  L.push(`    let kk = i % ${u(D)};`);
  L.push(`    let ok = tileRow + x < ${u(M)} && l0 + kk < ${u(rank)};`);
  L.push(`    let at = min(tileRow + x, ${u(M - 1)}) * ${u(rank)} + min(l0 + kk, ${u(rank - 1)});`);
  L.push(
    `    mm_tile_a[kk * ${u(TM)} + x] = select(0.0, ${scaledLoad(c, i, `mm_ld${i}_at(at)`)}, ok);`,
  );
  L.push(`  }`);
  // up: element (l, col x) at x·rank + l (upTrans) or l·n + x, staged [l][col]
  L.push(`  for (var i = lidx; i < ${u(TN * D)}; i += ${u(NT)}) {`);
  L.push(`    let x = ${upTrans ? `i / ${u(D)}` : `i % ${u(TN)}`};`);
  L.push(`    let kk = ${upTrans ? `i % ${u(D)}` : `i / ${u(TN)}`};`);
  L.push(`    let ok = tileCol + x < ${u(N)} && l0 + kk < ${u(rank)};`);
  L.push(`    let xc = min(tileCol + x, ${u(N - 1)});`);
  L.push(`    let lc = min(l0 + kk, ${u(rank - 1)});`);
  L.push(`    let at = ${upTrans ? `xc * ${u(rank)} + lc` : `lc * ${u(N)} + xc`};`);
  L.push(`    mm_tile_b[kk * ${u(TN)} + x] = select(0.0, mm_lu${i}_at(at), ok);`);
  L.push(`  }`);
  L.push(`  workgroupBarrier();`);
  L.push(...sharedTileProducts(D, U, R, C, TM, TN, WY, WX, acc));
  L.push(`  workgroupBarrier();`);
  L.push(`}`);
  return L;
}

/**
 * A product with a low-rank branch added, out = A·B + down·up, in the two forms the autotuner
 * times where fusing is a close call (runtime/autotune.ts `lowRankFused`): `fused`, the branch as
 * k-steps of the product's tile (MatmulBranch); `unfused`, the up-projection a kernel of its own
 * (`upParams`, writing the branch's value) whose value the product's epilogue adds, as a plan
 * that leaves the branch unfused runs it. Bindings: 0 A, 1 B, 2 out, 3 down [m, rank], 4 up
 * ([n, rank] with upTrans, else [rank, n]), 5 the branch's value [m, n]; `bytes` sizes them.
 */
export function lowRankBranchForms(
  shape: MatmulShape,
  branch: { rank: number; upTrans: boolean },
  params: MatmulParams,
  upParams: MatmulParams,
): { fused: KernelSource[]; unfused: KernelSource[]; bytes: number[] } {
  const { m, n, k } = shape;
  const { rank, upTrans } = branch;
  const out = { a: 0, b: 1, out: 2 };
  // as a plan runs a branch its epilogue adds unscaled: in the product's accumulators
  const fused = matmulKernel(shape, params, out, {
    epilogue: { expression: "acc + lr0", bindings: [], declarations: "" },
    branches: [{ rank, upTrans, down: 3, up: 4, scale: 1 }],
  });
  const upShape = { batch: 1, m, n, k: rank, transA: false, transB: upTrans };
  const up = matmulKernel(upShape, upParams, { a: 3, b: 4, out: 5 });
  const value = { name: "lr_value", type: "f32", buffer: 5, access: "read" as const };
  const added = matmulKernel(shape, params, out, {
    epilogue: {
      expression: `acc + lr_value[row * ${u(n)} + col]`,
      bindings: [value],
      declarations: "",
    },
  });
  const bytes = [m * k, k * n, m * n, m * rank, rank * n, m * n].map((count) => 4 * count);
  return { fused: [fused], unfused: [up, added], bytes };
}

/**
 * The shared-memory tile's inner loop over `depth` staged steps of k, `unroll` per iteration:
 * each invocation's R × C products of the staged A and B tiles added to `${acc}${r}_${j}` (the
 * product's own accumulators, or a low-rank branch's).
 */
function sharedTileProducts(
  depth: number,
  unroll: number,
  R: number,
  C: number,
  TM: number,
  TN: number,
  WY: number,
  WX: number,
  acc: string,
): string[] {
  const L = [`  for (var kk = lrk_zero; kk < ${u(depth)}; kk += ${u(unroll)}) {`];
  for (let s = 0; s < unroll; s++) {
    const kk = s === 0 ? "kk" : `(kk + ${u(s)})`;
    for (let r = 0; r < R; r++)
      L.push(`    let a${r}_${s} = mm_tile_a[${kk} * ${u(TM)} + lid.y + ${u(r * WY)}];`);
    for (let j = 0; j < C; j++)
      L.push(`    let b${j}_${s} = mm_tile_b[${kk} * ${u(TN)} + lid.x + ${u(j * WX)}];`);
    for (let r = 0; r < R; r++)
      for (let j = 0; j < C; j++) L.push(`    ${acc}${r}_${j} += a${r}_${s} * b${j}_${s};`);
  }
  L.push(`  }`);
  return L;
}
