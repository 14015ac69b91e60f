// Kernels of the ops that are not elementwise, reductions or matmuls: scatterAdd, topkMask, qr,
// quantize/quantScale and the randomized truncated SVD. Each reads its inputs from buffers and
// may need scratch buffers, which `specialScratch` lists before the memory plan runs.
//
//  - scatterAdd: a single invocation links the rows of each id into a list (in increasing row
//    order), then one invocation per output element walks its id's list: the sum is in the
//    interpreter's order, deterministic, without atomics.
//  - topkMask: one invocation per score counts the scores that rank before it.
//  - quantize/quantScale: one invocation per group of `group` values.
//  - svd: randomized subspace iteration as in runtime/linalg.ts, entirely on the device: Ω by
//    the counter-based normal generator, products with the matmul template, Householder QR of the
//    (rank + oversample)-wide panels in one workgroup, one-sided Jacobi on Bᵀ = Aᵀ Q in one
//    workgroup, then U = Q·U_B with the interpreter's column order and signs.
//  - qr: the svd's one-workgroup Householder kernel on a copy of the input (it overwrites its
//    panel with R).
import type { Graph, Node } from "../ir.js";
import { numel } from "../ir.js";
import { grid, header, helperCode, shapeText } from "../wgsl.js";
import { matmulKernel } from "./matmul.js";
import { renderKernel, workgroupReduce } from "./render.js";
import type {
  KernelBuffer,
  KernelSource,
  MatmulParams,
  MatmulShape,
  ParamKernelSource,
} from "./types.js";

export type { ParamKernelSource } from "./types.js";

export interface SpecialIO {
  /** Buffers of the node's inputs, in input order. */
  inputs: number[];
  out: number;
  /** Buffers of the scratch `specialScratch` listed, in that order. */
  scratch: number[];
}

export interface ScratchNeed {
  name: string;
  bytes: number;
}

function svdDims(graph: Graph, node: Node) {
  if (node.op.kind !== "svd") throw new Error("not an svd");
  const [m0, n0] = graph.shape(node.inputs[0]!) as [number, number];
  const right = node.op.side === "right";
  // A = g (left) or gᵀ (right): [M, N].
  const M = right ? n0 : m0;
  const N = right ? m0 : n0;
  const l = Math.min(node.op.rank + node.op.oversample, M, N);
  return { M, N, l, right, op: node.op };
}

export function specialScratch(graph: Graph, id: number): ScratchNeed[] {
  const node = graph.node(id);
  switch (node.op.kind) {
    case "scatterAdd": {
      const rows = node.shape[0]!;
      const ids = numel(graph.shape(node.inputs[0]!));
      return [
        { name: "heads", bytes: 4 * Math.max(1, rows) },
        { name: "next", bytes: 4 * Math.max(1, ids) },
      ];
    }
    case "svd": {
      const { M, N, l } = svdDims(graph, node);
      return [
        { name: "omega", bytes: 4 * N * l },
        { name: "y", bytes: 4 * M * l },
        { name: "q", bytes: 4 * M * l },
        { name: "z", bytes: 4 * N * l },
        { name: "qz", bytes: 4 * N * l },
        { name: "reflectors", bytes: 4 * Math.max(M, N) * l },
        { name: "jacobi", bytes: 4 * (l * l + l) },
      ];
    }
    case "qr": {
      const [m, k] = node.shape as [number, number];
      return [
        { name: "r", bytes: 4 * m * k },
        { name: "reflectors", bytes: 4 * m * k },
      ];
    }
    default:
      return [];
  }
}

/** A storage binding of a special kernel: an array of f32 unless `type` says otherwise. */
function buf(
  name: string,
  buffer: number,
  access: "read" | "read_write",
  type = "f32",
): KernelBuffer {
  return { name, buffer, access, type };
}

export function specialKernels(
  graph: Graph,
  id: number,
  io: SpecialIO,
  matmulParams: (shape: MatmulShape) => MatmulParams,
): ParamKernelSource[] {
  const node = graph.node(id);
  const title = `${node.op.kind} ${shapeText(node.dtype, node.shape)} %${id}`;
  const head = header(graph, title, [id]);
  switch (node.op.kind) {
    case "scatterAdd":
      return scatterAdd(graph, node, io, head);
    case "topkMask":
      return [topkMask(graph, node, io, head)];
    case "quantize":
    case "quantScale":
      return [quantize(graph, node, io, head)];
    case "svd":
      return svd(graph, node, io, head, matmulParams);
    case "qr":
      return qr(node, io, head);
    default:
      throw new Error(`specialKernels: %${id} is ${node.op.kind}`);
  }
}

function scatterAdd(graph: Graph, node: Node, io: SpecialIO, head: string): KernelSource[] {
  const rows = node.shape[0]!;
  const row = numel(node.shape.slice(1));
  const ids = numel(graph.shape(node.inputs[0]!));
  const ty = node.dtype === "i32" ? "i32" : "f32";
  const [idsBuf, valsBuf] = io.inputs as [number, number];
  const [heads, next] = io.scratch as [number, number];
  const link = renderKernel({
    name: `scatterAdd link %${node.id}`,
    header: `${head}\n// 1/2: link the rows of every id, in increasing row order.`,
    buffers: [
      buf("ids", idsBuf, "read", "i32"),
      buf("heads", heads, "read_write", "i32"),
      buf("next", next, "read_write", "i32"),
    ],
    workgroupSize: 1,
    builtins: {},
    body: `for (var v = 0; v < ${rows} + i32(lrk_zero); v++) {
  heads[v] = -1;
}
for (var r = ${ids - 1} + i32(lrk_zero); r >= 0; r--) {
  let id = ids[r];
  if (id >= 0 && id < ${rows}) {
    next[r] = heads[id];
    heads[id] = r;
  }
}`.split("\n"),
    dispatch: [1, 1, 1],
  });
  const W = 64;
  const total = rows * row;
  const dispatch = grid(Math.ceil(total / W));
  const sum = renderKernel({
    name: `scatterAdd sum %${node.id}`,
    header: `${head}\n// 2/2: every output element adds its id's rows.`,
    buffers: [
      buf("vals", valsBuf, "read", ty),
      buf("heads", heads, "read", "i32"),
      buf("next", next, "read", "i32"),
      buf("out", io.out, "read_write", ty),
    ],
    workgroupSize: W,
    builtins: { gid: "global_invocation_id" },
    body: `let t = gid.x + gid.y * ${dispatch[0] * W}u;
if (t >= ${total}u) {
  return;
}
let v = i32(t / ${row}u);
let j = i32(t % ${row}u);
var acc: ${ty} = ${ty}(0);
var r = heads[v];
for (var guard = 0; guard < ${ids} + i32(lrk_zero) && r >= 0; guard++) {
  acc = acc + vals[r * ${row} + j];
  r = next[r];
}
out[t] = acc;`.split("\n"),
    dispatch,
  });
  return [link, sum];
}

function topkMask(graph: Graph, node: Node, io: SpecialIO, head: string): KernelSource {
  const n = node.shape[0]!;
  const kDtype = graph.node(node.inputs[1]!).dtype;
  const W = 64;
  const dispatch = grid(Math.ceil(n / W));
  return renderKernel({
    name: `topkMask %${node.id}`,
    header: head,
    buffers: [
      buf("scores", io.inputs[0]!, "read"),
      buf("kk", io.inputs[1]!, "read", kDtype === "i32" ? "i32" : "f32"),
      buf("out", io.out, "read_write"),
    ],
    workgroupSize: W,
    builtins: { gid: "global_invocation_id" },
    body: `let i = gid.x + gid.y * ${dispatch[0] * W}u;
if (i >= ${n}u) {
  return;
}
// k rounded half up (Math.round) and clamped to [0, n]
let k = u32(clamp(floor(f32(kk[0]) + 0.5), 0.0, ${n}.0));
let s = scores[i];
var before = 0u;
for (var j = 0u; j < ${n}u + lrk_zero; j++) {
  let t = scores[j];
  before += select(0u, 1u, t > s || (t == s && j < i));
}
out[i] = select(0.0, 1.0, before < k);`.split("\n"),
    dispatch,
  });
}

function quantize(graph: Graph, node: Node, io: SpecialIO, head: string): KernelSource {
  const op = node.op as { kind: "quantize" | "quantScale"; bits: number; group: number };
  const [rows, cols] = graph.shape(node.inputs[0]!) as [number, number];
  const groups = cols / op.group;
  const qmax = 2 ** (op.bits - 1) - 1;
  const W = 64;
  const total = rows * groups;
  const dispatch = grid(Math.ceil(total / W));
  const store =
    op.kind === "quantScale"
      ? `out[t] = scale;`
      : `for (var j = 0u; j < ${op.group}u + lrk_zero; j++) {
  let v = w[base + j] / scale;
  let a = abs(v);
  let f = floor(a);
  let q = select(f, f + 1.0, a - f >= 0.5); // half away from zero
  out[base + j] = clamp(sign(v) * q, -${qmax}.0, ${qmax}.0);
}`;
  return renderKernel({
    name: `${op.kind} %${node.id}`,
    header: head,
    buffers: [buf("w", io.inputs[0]!, "read"), buf("out", io.out, "read_write")],
    workgroupSize: W,
    builtins: { gid: "global_invocation_id" },
    body: `let t = gid.x + gid.y * ${dispatch[0] * W}u;
if (t >= ${total}u) {
  return;
}
let r = t / ${groups}u;
let g = t % ${groups}u;
let base = r * ${cols}u + g * ${op.group}u;
var amax = 0.0;
for (var j = 0u; j < ${op.group}u + lrk_zero; j++) {
  amax = max(amax, abs(w[base + j]));
}
let scale = select(amax / ${qmax}.0, 1.0, amax == 0.0);
${store}`.split("\n"),
    dispatch,
  });
}

// ---------------------------------------------------------------------------- svd

const WG = 64;

/** The most columns the svd panel kernels take (rank + oversample). */
export const MAX_PANEL = 256;

/**
 * A one-workgroup svd kernel. Sizes come from uniforms (the plan kernel's `params`), not from the
 * WGSL text: one shader serves every panel size, so the shader compiler (seconds per kernel on
 * lavapipe) runs once per process, and loops over them are not unrolled.
 */
function panelKernel(
  name: string,
  comment: string,
  buffers: KernelBuffer[],
  uniforms: Record<string, number>,
  declarations: string[],
  body: string,
): ParamKernelSource {
  return renderKernel({
    name,
    header: comment,
    buffers,
    uniforms: Object.entries(uniforms).map(([name, value]) => ({ name, value })),
    declarations,
    workgroupSize: WG,
    builtins: { lid: "local_invocation_index" },
    body: body.split("\n"),
    dispatch: [1, 1, 1],
  });
}

/** Householder QR of X [rows, L] (overwritten by R) in one workgroup: Q [rows, L]. */
function householderKernel(
  name: string,
  head: string,
  rows: number,
  L: number,
  io: { x: number; reflectors: number; q: number },
): ParamKernelSource {
  return panelKernel(
    name,
    `${head}\n// Householder QR of a [${rows}, ${L}] panel in one workgroup (runtime/linalg.ts householderQ).`,
    [
      buf("R", io.x, "read_write"),
      buf("V", io.reflectors, "read_write"),
      buf("Q", io.q, "read_write"),
    ],
    { rows, L },
    workgroupReduce("f32", WG, ["sum"]),
    `for (var k = 0u; k < L; k++) {
  var p = 0.0;
  for (var i = k + lid; i < rows; i += ${WG}u) {
    let x = R[i * L + k];
    p += x * x;
  }
  let norm = sqrt(lrk_wg_sum(p, lid, lid, ${WG}u));
  let x0 = R[k * L + k];
  let alpha = select(norm, -norm, x0 >= 0.0);
  var q = 0.0;
  for (var i = k + lid; i < rows; i += ${WG}u) {
    let v = select(R[i * L + k], x0 - alpha, i == k);
    q += v * v;
  }
  let vn = sqrt(lrk_wg_sum(q, lid, lid, ${WG}u));
  let inv = select(0.0, 1.0 / vn, norm > 0.0 && vn > 0.0);
  for (var i = lid; i < rows; i += ${WG}u) {
    let v = select(R[i * L + k], x0 - alpha, i == k);
    V[i * L + k] = select(0.0, v * inv, i >= k);
  }
  storageBarrier();
  for (var j = k; j < L; j++) {
    var d = 0.0;
    for (var i = k + lid; i < rows; i += ${WG}u) {
      d += V[i * L + k] * R[i * L + j];
    }
    let dot = lrk_wg_sum(d, lid, lid, ${WG}u);
    for (var i = k + lid; i < rows; i += ${WG}u) {
      R[i * L + j] = R[i * L + j] - 2.0 * dot * V[i * L + k];
    }
  }
  storageBarrier();
}
for (var i = lid; i < rows; i += ${WG}u) {
  for (var j = 0u; j < L; j++) {
    Q[i * L + j] = select(0.0, 1.0, i == j);
  }
}
storageBarrier();
for (var kk = 0u; kk < L; kk++) {
  let k = L - 1u - kk;
  for (var j = 0u; j < L; j++) {
    var d = 0.0;
    for (var i = k + lid; i < rows; i += ${WG}u) {
      d += V[i * L + k] * Q[i * L + j];
    }
    let dot = lrk_wg_sum(d, lid, lid, ${WG}u);
    for (var i = k + lid; i < rows; i += ${WG}u) {
      Q[i * L + j] = Q[i * L + j] - 2.0 * dot * V[i * L + k];
    }
  }
  storageBarrier();
}`,
  );
}

/** One-sided Jacobi on W [N, L] in one workgroup: J = V [L, L] then the column norms [L]. */
function jacobiKernel(
  name: string,
  head: string,
  N: number,
  L: number,
  io: { w: number; j: number },
): ParamKernelSource {
  return panelKernel(
    name,
    `${head}\n// One-sided Jacobi (Hestenes) on the columns of W = Bᵀ [${N}, ${L}] (runtime/linalg.ts oneSidedJacobi).`,
    [buf("W", io.w, "read_write"), buf("J", io.j, "read_write")],
    { N, L },
    [`var<workgroup> rotated: u32;`, ...workgroupReduce("vec3<f32>", WG, ["sum"])],
    `for (var i = lid; i < L * L; i += ${WG}u) {
  J[i] = select(0.0, 1.0, i / L == i % L);
}
for (var sweep = 0u; sweep < 40u + lrk_zero; sweep++) {
  if (lid == 0u) {
    rotated = 0u;
  }
  workgroupBarrier();
  for (var p = 0u; p < L - 1u; p++) {
    for (var q = p + 1u; q < L; q++) {
      var s = vec3<f32>(0.0);
      for (var i = lid; i < N; i += ${WG}u) {
        let xp = W[i * L + p];
        let xq = W[i * L + q];
        s += vec3<f32>(xp * xp, xq * xq, xp * xq);
      }
      let t3 = lrk_wg_sum(s, lid, lid, ${WG}u);
      let alpha = t3.x;
      let beta = t3.y;
      let gamma = t3.z;
      let rotate = gamma != 0.0 && abs(gamma) > 1e-6 * sqrt(alpha * beta);
      let zeta = (beta - alpha) / (2.0 * gamma);
      let t = select(-1.0, 1.0, zeta >= 0.0) / (abs(zeta) + sqrt(1.0 + zeta * zeta));
      let c0 = 1.0 / sqrt(1.0 + t * t);
      let c = select(1.0, c0, rotate);
      let sn = select(0.0, c0 * t, rotate);
      if (rotate && lid == 0u) {
        rotated = 1u;
      }
      for (var i = lid; i < N; i += ${WG}u) {
        let xp = W[i * L + p];
        let xq = W[i * L + q];
        W[i * L + p] = c * xp - sn * xq;
        W[i * L + q] = sn * xp + c * xq;
      }
      for (var i = lid; i < L; i += ${WG}u) {
        let xp = J[i * L + p];
        let xq = J[i * L + q];
        J[i * L + p] = c * xp - sn * xq;
        J[i * L + q] = sn * xp + c * xq;
      }
    }
  }
  let again = workgroupUniformLoad(&rotated);
  workgroupBarrier();
  if (again == 0u) {
    break;
  }
}
storageBarrier();
for (var j = 0u; j < L; j++) {
  var s = 0.0;
  for (var i = lid; i < N; i += ${WG}u) {
    let x = W[i * L + j];
    s += x * x;
  }
  let n = sqrt(lrk_wg_sum(vec3<f32>(s, 0.0, 0.0), lid, lid, ${WG}u).x);
  if (lid == 0u) {
    J[L * L + j] = n;
  }
}`,
  );
}

/** U = Q · V[:, order] for the top `rank` columns by norm, signs fixed, written to out. */
function finishKernel(
  name: string,
  head: string,
  M: number,
  L: number,
  rank: number,
  right: boolean,
  io: { q: number; j: number; out: number },
): ParamKernelSource {
  const at = right ? "c * M + i" : "i * rank + c";
  return panelKernel(
    name,
    `${head}
// U [${M}, ${rank}] = Q · U_B: the top ${rank} of ${L} columns by singular value, largest-magnitude
// entry positive.`,
    [buf("Q", io.q, "read"), buf("J", io.j, "read"), buf("out", io.out, "read_write")],
    { M, L, rank },
    [`var<workgroup> order: array<u32, ${MAX_PANEL}>;`],
    `for (var j = lid; j < L; j += ${WG}u) {
  let nj = J[L * L + j];
  var before = 0u;
  for (var i = 0u; i < L; i++) {
    let ni = J[L * L + i];
    before += select(0u, 1u, ni > nj || (ni == nj && i < j));
  }
  order[before] = j;
}
workgroupBarrier();
for (var e = lid; e < M * rank; e += ${WG}u) {
  let i = e / rank;
  let c = e % rank;
  let col = order[c];
  var acc = 0.0;
  for (var t = 0u; t < L; t++) {
    acc += Q[i * L + t] * J[t * L + col];
  }
  out[${at}] = acc;
}
storageBarrier();
for (var c = lid; c < rank; c += ${WG}u) {
  var best = 0u;
  var bestAbs = -1.0;
  for (var i = 0u; i < M; i++) {
    let a = abs(out[${at}]);
    if (a > bestAbs) {
      bestAbs = a;
      best = i;
    }
  }
  let i = best;
  if (out[${at}] < 0.0) {
    for (var i = 0u; i < M; i++) {
      out[${at}] = -out[${at}];
    }
  }
}`,
  );
}

function svd(
  graph: Graph,
  node: Node,
  io: SpecialIO,
  head: string,
  matmulParams: (shape: MatmulShape) => MatmulParams,
): ParamKernelSource[] {
  const { M, N, l, right, op } = svdDims(graph, node);
  if (l > MAX_PANEL)
    throw new Error(`svd %${node.id}: rank + oversample ${l} is over the ${MAX_PANEL} supported`);
  const g = io.inputs[0]!;
  const [omega, y, q, z, qz, refl, jac] = io.scratch as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const out: ParamKernelSource[] = [];
  const W1 = 64;
  const omegaDispatch = grid(Math.ceil((N * l) / W1));
  out.push(
    renderKernel({
      name: `svd Ω [${N}, ${l}] %${node.id}`,
      header: `${head}\n// Ω [${N}, ${l}]: Ω[r, c] = normalAt(seed, r·${l} + c)`,
      buffers: [buf("omega", omega, "read_write")],
      declarations: [helperCode(["lrk_normal"])],
      workgroupSize: W1,
      builtins: { gid: "global_invocation_id" },
      body: [
        `let i = gid.x + gid.y * ${omegaDispatch[0] * W1}u;`,
        `if (i < ${N * l}u) {`,
        `  omega[i] = lrk_normal(${op.seed >>> 0}u, i);`,
        `}`,
      ],
      dispatch: omegaDispatch,
    }),
  );
  // A = g ([M, N]) or gᵀ: A·X reads g transposed for the right side, Aᵀ·X for the left side.
  const product = (
    rows: number,
    inner: number,
    trans: boolean,
    x: number,
    dst: number,
  ): KernelSource => {
    const shape = { batch: 1, m: rows, n: l, k: inner, transA: trans, transB: false };
    const k = matmulKernel(shape, matmulParams(shape), { a: g, b: x, out: dst });
    return { ...k, name: `svd ${k.name} %${node.id}`, wgsl: `${head}\n${k.wgsl}` };
  };
  const qr = (rows: number, x: number, dst: number): ParamKernelSource =>
    householderKernel(`svd qr [${rows}, ${l}] %${node.id}`, head, rows, l, {
      x,
      reflectors: refl,
      q: dst,
    });
  out.push(product(M, N, right, omega, y), qr(M, y, q));
  for (let it = 0; it < op.iterations; it++) {
    out.push(product(N, M, !right, q, z), qr(N, z, qz));
    out.push(product(M, N, right, qz, y), qr(M, y, q));
  }
  out.push(product(N, M, !right, q, z));
  out.push(jacobiKernel(`svd jacobi [${N}, ${l}] %${node.id}`, head, N, l, { w: z, j: jac }));
  out.push(
    finishKernel(`svd finish %${node.id}`, head, M, l, op.rank, right, {
      q,
      j: jac,
      out: io.out,
    }),
  );
  return out;
}

// ---------------------------------------------------------------------------- qr

/**
 * The thin Householder Q of x [m, k] (m ≥ k, k ≤ MAX_PANEL): x is copied to scratch (the panel
 * kernel overwrites its input with R), then the svd's one-workgroup Householder kernel writes Q.
 */
function qr(node: Node, io: SpecialIO, head: string): ParamKernelSource[] {
  const [m, k] = node.shape as [number, number];
  if (k > MAX_PANEL)
    throw new Error(`qr %${node.id}: ${k} columns is over the ${MAX_PANEL} supported`);
  const [r, reflectors] = io.scratch as [number, number];
  const W1 = 64;
  const dispatch = grid(Math.ceil((m * k) / W1));
  const copy = renderKernel({
    name: `qr copy [${m}, ${k}] %${node.id}`,
    header: `${head}\n// the panel the Householder kernel overwrites with R`,
    buffers: [buf("x", io.inputs[0]!, "read"), buf("r", r, "read_write")],
    declarations: [],
    workgroupSize: W1,
    builtins: { gid: "global_invocation_id" },
    body: [
      `let i = gid.x + gid.y * ${dispatch[0] * W1}u;`,
      `if (i < ${m * k}u) {`,
      `  r[i] = x[i];`,
      `}`,
    ],
    dispatch,
  });
  return [
    copy,
    householderKernel(`qr [${m}, ${k}] %${node.id}`, head, m, k, {
      x: r,
      reflectors,
      q: io.out,
    }),
  ];
}
