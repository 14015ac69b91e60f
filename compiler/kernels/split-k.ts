// Split-k for the matmuls a training step has whose output is small and k long: the weight
// gradients of rank-r factors (dA = (dY·B)ᵀ·X: [r, d] with k = tokens; dB: [d, r]). Their output
// has few tiles, so the template runs few workgroups, each looping over all of k, and most of a
// multi-core adapter's threads idle. Split k into S chunks: S times as many workgroups write S
// partial products to a scratch buffer [S, m, n], and a second kernel sums them (in chunk order:
// deterministic, no atomics — WGSL has no float atomics) and applies the epilogue.
//
// The first pass is the matmul template itself: with A stored [k, m] and B stored [k, n] (TN:
// transA, not transB — the layout of every weight gradient Xᵀ·dY, and of a matmul whose batch is
// folded into k), chunk s of k is rows s·k/S … of both operands, contiguous, exactly the template's
// batch s of a batched product with k/S; its output batch s is partial s. So every template
// variant (and the autotuner's tuned parameters for the chunk's shape) serves as the first pass.
//
// Planned only where the autotuner measured it faster (splitKCandidates; MatmulParams.splitK): on
// lavapipe it measured 0.33–1.07× of the best single kernel (bench/split-k.ts), so there it is
// rarely chosen; on a GPU with many cores it may be. Either way the result is deterministic: the
// chunks' order of summation is fixed.
import { matmulCandidates, matmulKernel } from "./matmul.js";
import { renderKernel } from "./render.js";
import type { KernelBuffer, KernelSource, MatmulParams, MatmulShape } from "./types.js";

/** Outputs of at most this many elements count as small (a few tiles: most cores idle). */
const SMALL_OUTPUT = 128 * 128;
/** Chunks of k shorter than this are not offered (the sum costs more than it saves). */
const MIN_CHUNK = 64;

/**
 * The split-k parameterizations worth timing for `shape`: a small output (≤ 128² elements) with a
 * long k, stored TN (the weight gradients), f32 operands; S chunks of at least 64 each, the
 * chunks run with the template's first candidate for the chunk's shape. None otherwise.
 */
export function splitKCandidates(
  shape: MatmulShape,
  features: ReadonlySet<string>,
): MatmulParams[] {
  if (shape.storage || shape.m * shape.n > SMALL_OUTPUT) return [];
  const out: MatmulParams[] = [];
  for (const splits of [4, 8, 16]) {
    if (!canSplitK(shape, splits) || shape.k / splits < MIN_CHUNK) continue;
    const chunk = matmulCandidates(splitKChunkShape(shape, splits), features)[0]!;
    out.push({ ...chunk, splitK: splits });
  }
  return out;
}

/** Bytes of the partial products of a split-k of `shape` in `splits` chunks. */
export function splitKScratchBytes(shape: MatmulShape, splits: number): number {
  return 4 * splits * shape.m * shape.n;
}

/** Chunks of k a split-k matmul may use (S, each dividing k into whole chunks). */
export const SPLIT_K_CHOICES = [2, 4, 8, 16] as const;

/**
 * Whether `shape` can be split into `splits` chunks of k: TN, one batch, k divisible by
 * `splits`, and each chunk at least 32 long (shorter chunks cost more in the sum than they save).
 */
export function canSplitK(shape: MatmulShape, splits: number): boolean {
  return (
    shape.transA &&
    !shape.transB &&
    shape.batch === 1 &&
    splits > 1 &&
    shape.k % splits === 0 &&
    shape.k / splits >= 32 &&
    shape.m * shape.n <= 64 * 65535 // the sum's workgroups fit one dimension
  );
}

/** The first pass's problem: chunk s of k as batch s. */
export function splitKChunkShape(shape: MatmulShape, splits: number): MatmulShape {
  return { ...shape, batch: splits, k: shape.k / splits };
}

/**
 * The two kernels of a split-k matmul: the template on the chunks (`params`, for the chunk's
 * shape), writing `partials` ([splits, m, n] f32, 4·splits·m·n bytes), then the sum of the
 * partials into `out` through the epilogue (an expression of `acc`, `row`, `col`, `batch` = 0 whose
 * bindings are `KernelBuffer`s, declared after the sum's own two).
 */
export function splitKKernels(
  shape: MatmulShape,
  splits: number,
  params: MatmulParams,
  bindings: { a: number; b: number; partials: number; out: number },
  epilogue?: { expression: string; declarations: string; bindings: KernelBuffer[] },
): KernelSource[] {
  if (!canSplitK(shape, splits))
    throw new Error(
      `split-k: ${shape.m}x${shape.n}x${shape.k} (${shape.transA ? "T" : "N"}${shape.transB ? "T" : "N"}) cannot be split in ${splits}`,
    );
  const { splitK: _splitK, ...chunkParams } = params;
  const chunks = matmulKernel(splitKChunkShape(shape, splits), chunkParams, {
    a: bindings.a,
    b: bindings.b,
    out: bindings.partials,
  });
  const { m, n } = shape;
  const size = m * n;
  const sum = renderKernel({
    name: `split-k sum ${splits}x${m}x${n}`,
    header: `// the sum of ${splits} partial products [${m}, ${n}] of a split-k matmul (k = ${shape.k}), in chunk order`,
    buffers: [
      { name: "sk_partials", type: "f32", buffer: bindings.partials, access: "read" },
      { name: "sk_out", type: "f32", buffer: bindings.out, access: "read_write" },
      ...(epilogue?.bindings ?? []),
    ],
    declarations: [
      epilogue?.declarations ?? "",
      `fn sk_epilogue(acc: f32, row: u32, col: u32, batch: u32) -> f32 {`,
      `  return ${epilogue?.expression ?? "acc"};`,
      `}`,
    ],
    workgroupSize: 64,
    builtins: { gid: "global_invocation_id" },
    body: [
      `let i = gid.x;`,
      `if (i >= ${size}u) { return; }`,
      `var acc = 0.0;`,
      `for (var s = 0u; s < ${splits}u; s++) {`,
      `  acc += sk_partials[s * ${size}u + i];`,
      `}`,
      `sk_out[i] = sk_epilogue(acc, i / ${n}u, i % ${n}u, 0u);`,
    ],
    dispatch: [Math.ceil(size / 64), 1, 1],
  });
  return [{ ...chunks, name: `${chunks.name} (split-k ${splits})` }, sum];
}
