// Structural tests of fusion and planning: how many kernels a pattern becomes (the count is in
// each test's name), that transposes and broadcasts are read in place instead of copied, that
// the memory plan reuses buffers and rejects tensors over the device's limits, and that a plan is
// plain JSON. Nothing here needs a GPU: fusion and planning are pure functions of the graph.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { gradients } from "../compiler/autodiff.js";
import { Builder } from "../compiler/builder.js";
import { fuse, type Fusion } from "../compiler/fuse/index.js";
import type { Graph } from "../compiler/ir.js";
import { BufferLimitError, planMemory } from "../compiler/memory-plan.js";
import { planProgram } from "./program-helpers.js";
import type { ProgramInput } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { prepare } from "./program-helpers.js";
import { root } from "./helpers.js";

const limits = { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 32 };

function inputsOf(graph: Graph): ProgramInput[] {
  return graph.nodes.flatMap((n) =>
    n.op.kind === "input"
      ? [{ name: n.op.name, node: n.id, role: n.op.role, shape: [...n.shape], dtype: n.dtype }]
      : [],
  );
}

const kinds = (f: Fusion) => f.groups.map((g) => g.kind);
/** No kernel of these only moves data: every map kernel computes something. */
function copyKernels(graph: Graph, f: Fusion): number {
  const movement = new Set(["reshape", "permute", "expand", "slice", "pad"]);
  return f.groups.filter((g) => g.kind === "map" && movement.has(graph.node(g.output).op.kind))
    .length;
}

// ------------------------------------------------------------------------------ patterns

/** 1. A chain of 5 elementwise ops on one tensor. */
const chain = (() => {
  const b = new Builder();
  const x = b.input("data", "x", [32, 64]);
  let y = b.exp(x);
  y = b.mul(y, b.constant(2, [32, 64]));
  y = b.add(y, x);
  y = b.tanh(y);
  y = b.sqrt(b.abs(y));
  return { graph: b.graph, out: y, fusion: fuse(b.graph, [y]) };
})();

/** 2. gelu(x @ wᵀ + b): the transposed weight read in place, bias and gelu in the epilogue. */
const linear = (() => {
  const b = new Builder();
  const x = b.input("data", "x", [16, 32]);
  const w = b.input("param", "w", [64, 32]);
  const bias = b.input("param", "b", [64]);
  const y = b.gelu(b.add(b.matmul(x, b.transpose(w)), bias));
  return { graph: b.graph, out: y, fusion: fuse(b.graph, [y]) };
})();

/** 3. A reduce with an elementwise prologue (and a scalar epilogue). */
const reduce = (() => {
  const b = new Builder();
  const x = b.input("data", "x", [8, 100]);
  const y = b.input("data", "y", [8, 100]);
  const s = b.mean(b.square(b.sub(x, y)));
  return { graph: b.graph, out: s, fusion: fuse(b.graph, [s]) };
})();

/**
 * 4. Row patterns: softmax, layer norm and cross-entropy, forward alone and with the backward
 * (x's gradient; for layer norm also the weight's and bias's). Each is one row kernel: the
 * reductions of a row one after another (max; Σ exp(x − max); the backward's Σ dy·y …), the
 * elementwise work between and after them recomputed from the row, per-row values in registers.
 */
function rowPattern(which: "softmax" | "layer norm" | "cross-entropy") {
  const b = new Builder();
  const x = b.input("param", "x", [8, 10]);
  const w = b.input("param", "w", [10]);
  const bias = b.input("param", "bias", [10]);
  let y: number;
  if (which === "softmax") y = b.softmax(x, -1);
  else if (which === "layer norm") y = b.layerNorm(x, w, bias);
  else y = b.crossEntropy(x, b.input("data", "t", [8], "i32"));
  const forward = fuse(b.graph, [y]);
  const loss = which === "cross-entropy" ? y : b.sum(b.mul(y, b.input("data", "dy", [8, 10])));
  const g = gradients(b, loss, [x, w, bias]);
  const outs = [y, g.get(x)!, ...(which === "layer norm" ? [g.get(w)!, g.get(bias)!] : [])];
  return { graph: b.graph, forward, both: fuse(b.graph, outs) };
}
const softmax = rowPattern("softmax");
const layerNorm = rowPattern("layer norm");
const crossEntropy = rowPattern("cross-entropy");

/** 5. Three outputs of one optimizer-like update: one kernel writing all three. */
const adam = (() => {
  const b = new Builder();
  const p = b.input("param", "p", [64, 32]);
  const g = b.input("data", "g", [64, 32]);
  const m = b.input("state", "m", [64, 32]);
  const v = b.input("state", "v", [64, 32]);
  const step = b.input("scalar", "step", []);
  const c = (x: number) => b.constant(x);
  const m2 = b.add(b.mul(c(0.9), m), b.mul(c(0.1), g));
  const v2 = b.add(b.mul(c(0.999), v), b.mul(c(0.001), b.square(g)));
  const mh = b.div(m2, b.sub(c(1), b.pow(c(0.9), step)));
  const vh = b.div(v2, b.sub(c(1), b.pow(c(0.999), step)));
  const p2 = b.sub(p, b.mul(c(1e-3), b.div(mh, b.add(b.sqrt(vh), c(1e-8)))));
  return { graph: b.graph, outs: [p2, m2, v2], fusion: fuse(b.graph, [p2, m2, v2]) };
})();

/** 6. An expensive value read by two kernels is materialized once; a cheap one is recomputed. */
const shared = (() => {
  const b = new Builder();
  const x = b.input("data", "x", [100]);
  const heavy = b.gelu(b.exp(b.tanh(b.sigmoid(b.log(b.abs(x))))));
  const cheap = b.neg(x);
  const outs = [b.add(heavy, cheap), b.mul(heavy, cheap)];
  return { graph: b.graph, heavy, cheap, fusion: fuse(b.graph, outs) };
})();

/** 7. Batched activations times one weight: the expanded weight folds into rows, no copy. */
const batched = (() => {
  const b = new Builder();
  const x = b.input("data", "x", [4, 8, 16]);
  const w = b.input("param", "w", [16, 24]);
  const y = b.matmul(x, w);
  return { graph: b.graph, out: y, fusion: fuse(b.graph, [y]) };
})();

/** 7b. Σ over the batch of xᵀ·dy (a shared weight's gradient): one matmul, batch folded into k. */
const weightGrad = (() => {
  const b = new Builder();
  const x = b.input("data", "x", [4, 8, 16]);
  const dy = b.input("data", "dy", [4, 8, 24]);
  const g = b.sum(b.matmul(x, dy, { transA: true }), 0);
  return { graph: b.graph, out: g, fusion: fuse(b.graph, [g]) };
})();

/**
 * 7c. The same with x the heads joined back (a permute then a reshape: no strided view, so x gets
 * a buffer only when materialization decides it): the sum still folds into the matmul.
 */
const joinedWeightGrad = (() => {
  const b = new Builder();
  const heads = b.input("data", "heads", [4, 2, 8, 8]);
  const x = b.reshape(b.permute(heads, [0, 2, 1, 3]), [4, 8, 16]);
  const dy = b.input("data", "dy", [4, 8, 24]);
  const g = b.sum(b.matmul(x, dy, { transA: true }), 0);
  return { graph: b.graph, out: g, fusion: fuse(b.graph, [g]) };
})();

/** 8. A reduction over many buffers split to fit the device's storage bindings. */
const wide = (() => {
  const b = new Builder();
  let total = b.constant(0);
  for (let i = 0; i < 20; i++) total = b.add(total, b.sum(b.square(b.input("data", `g${i}`, [5]))));
  return { graph: b.graph, out: total, fusion: fuse(b.graph, [total], { maxBindings: 8 }) };
})();

describe("fusion", () => {
  it(`a chain of 5 elementwise ops is ${chain.fusion.groups.length} kernel`, () => {
    expect(kinds(chain.fusion)).toEqual(["map"]);
    expect(chain.fusion.groups[0]!.reads).toHaveLength(1);
  });

  it(`gelu(x @ wᵀ + b) is ${linear.fusion.groups.length} kernel: wᵀ read in place, epilogue fused`, () => {
    expect(kinds(linear.fusion)).toEqual(["matmul"]);
    const g = linear.fusion.groups[0]!;
    expect(g.b!.trans).toBe(true);
    expect(linear.graph.node(g.b!.node).op.kind).toBe("input");
    expect(g.epilogue.map((id) => linear.graph.node(id).op.kind)).toEqual(["binary", "unary"]);
    expect(copyKernels(linear.graph, linear.fusion)).toBe(0);
    const plan = planProgram(
      linear.graph,
      inputsOf(linear.graph),
      { e: { outputs: [{ name: "y", node: linear.out }] } },
      limits,
    );
    expect(plan.entries.e!.dispatches).toHaveLength(1);
    expect(plan.kernels[0]!.wgsl).toMatch(/lrk_gelu/);
  });

  it(`a reduce with an elementwise prologue is ${reduce.fusion.groups.length} kernel`, () => {
    expect(kinds(reduce.fusion)).toEqual(["reduce"]);
    // the mean's division is the epilogue
    expect(reduce.fusion.groups[0]!.epilogue.length).toBeGreaterThan(0);
  });

  it(`softmax over rows is ${softmax.forward.groups.length} kernel (max, Σ exp, divide)`, () => {
    expect(kinds(softmax.forward)).toEqual(["row"]);
    expect(softmax.forward.groups[0]!.row!.reduces).toHaveLength(2);
  });

  it(`softmax and its backward are ${softmax.both.groups.length} kernel (the backward's Σ dy·y is a third row reduction)`, () => {
    expect(kinds(softmax.both)).toEqual(["row"]);
    expect(softmax.both.groups[0]!.row!.reduces).toHaveLength(3);
  });

  it(`layer norm is ${layerNorm.forward.groups.length} kernel (mean, variance, normalize, scale, shift)`, () => {
    expect(kinds(layerNorm.forward)).toEqual(["row"]);
    expect(layerNorm.forward.groups[0]!.row!.reduces).toHaveLength(2);
  });

  it(`layer norm and its backward are ${layerNorm.both.groups.length} kernels: 1 for the rows (the backward's 2 row sums with the forward's 2), 2 column sums (dweight, dbias)`, () => {
    expect(kinds(layerNorm.both).sort()).toEqual(["reduce", "reduce", "row"]);
    const row = layerNorm.both.groups.find((g) => g.kind === "row")!;
    expect(row.row!.reduces).toHaveLength(4);
  });

  it(`cross-entropy is ${crossEntropy.forward.groups.length} kernel (max, Σ exp, the picked log-probability summed over every row)`, () => {
    expect(kinds(crossEntropy.forward)).toEqual(["row"]);
    const r = crossEntropy.forward.groups[0]!.row!;
    expect([r.reduces.length, r.totals.length]).toEqual([2, 1]);
  });

  it(`cross-entropy and its backward are ${crossEntropy.both.groups.length} kernel`, () => {
    expect(kinds(crossEntropy.both)).toEqual(["row"]);
  });

  it(`an update with 3 outputs (param, m, v) is ${adam.fusion.groups.length} kernel`, () => {
    expect(kinds(adam.fusion)).toEqual(["map"]);
    expect(adam.fusion.groups[0]!.outputs).toEqual([...adam.outs].sort((p, q) => p - q));
    expect(copyKernels(adam.graph, adam.fusion)).toBe(0);
  });

  it(`a costly value read by 2 kernels is materialized: ${shared.fusion.groups.length} kernel`, () => {
    // heavy, and the two outputs reading it at the same element: one kernel writing all three
    expect(shared.fusion.groups).toHaveLength(1);
    expect(shared.fusion.groups[0]!.outputs).toHaveLength(3);
    expect(shared.fusion.materialized.has(shared.heavy)).toBe(true);
    expect(shared.fusion.materialized.has(shared.cheap)).toBe(false);
  });

  it(`a batch of activations times one weight is ${batched.fusion.groups.length} kernel`, () => {
    expect(kinds(batched.fusion)).toEqual(["matmul"]);
    expect(batched.fusion.groups[0]!.b!.broadcast).toBe(true);
    expect(copyKernels(batched.graph, batched.fusion)).toBe(0);
  });

  it(`Σ_batch xᵀ·dy is ${weightGrad.fusion.groups.length} kernel: the batch folds into k`, () => {
    expect(kinds(weightGrad.fusion)).toEqual(["matmul"]);
    expect(weightGrad.fusion.groups[0]!.foldBatch).toBe(true);
  });

  it(`Σ_batch over heads joined back is ${joinedWeightGrad.fusion.groups.length} kernels: the copy, then the batch folds into k`, () => {
    expect(kinds(joinedWeightGrad.fusion)).toEqual(["map", "matmul"]);
    expect(joinedWeightGrad.fusion.groups[1]!.foldBatch).toBe(true);
  });

  it(`a sum over 20 buffers fits 8 bindings per kernel: ${wide.fusion.groups.length} kernels`, () => {
    for (const g of wide.fusion.groups) expect(g.reads.length + 1).toBeLessThanOrEqual(8);
  });
});

// ------------------------------------------------------------------------------ the mlp step

const mlp = (() => {
  const path = join(root, "examples", "mlp.lrk");
  const { run } = prepare(new SourceFile(path, readFileSync(path, "utf8")), { batch: 8 });
  if (!run) throw new Error("examples/mlp.lrk does not compile");
  const entry = run.step.variants.get("")!;
  // 16 storage buffers per kernel, as lavapipe (and most GPUs) allow; WebGPU's default is 8
  const plan = planProgram(
    run.step.graph,
    run.step.inputs,
    { step: entry },
    { ...limits, maxStorageBuffersPerShaderStage: 16 },
    [],
  );
  const count = (kind: string) =>
    plan.entries.step!.dispatches.filter((k) => plan.kernels[k]!.kind === kind).length;
  return { run, plan, total: plan.entries.step!.dispatches.length, count };
})();

describe("the training step of examples/mlp.lrk", () => {
  it(`is ${mlp.total} kernels: ${mlp.count("matmul")} matmul, ${mlp.count("reduce")} reduce, ${mlp.count("map")} map`, () => {
    // 3 forward and 5 backward matmuls (the input's gradient is not needed); no copies
    expect(mlp.count("matmul")).toBe(8);
    // each parameter's AdamW update (param, m, v) is one kernel
    expect(mlp.count("map")).toBeLessThanOrEqual(10);
    expect(mlp.total).toBeLessThanOrEqual(26);
    const movement = new Set(["reshape", "permute", "expand", "slice", "pad"]);
    for (const k of mlp.plan.kernels) {
      const out = mlp.run.step.graph.node(Math.max(...k.nodes));
      if (k.kind === "map") expect(movement.has(out.op.kind), k.name).toBe(false);
    }
  });

  it("is plain JSON: buffers, kernels with WGSL, entries, inputs, peak bytes", () => {
    const plan = mlp.plan;
    expect(JSON.parse(JSON.stringify(plan))).toEqual(plan);
    expect(plan.inputs.map((i) => i.name)).toContain("param:l1.weight");
    expect(plan.entries.step!.outputs.map((o) => o.name)).toContain("loss");
    for (const k of plan.kernels) {
      expect(k.wgsl).toMatch(/^\/\/ /);
      expect(k.wgsl).toMatch(/\/\/   %\d+ = /);
    }
    const roles = new Set(plan.buffers.map((b) => b.role));
    for (const r of ["param", "state", "data", "scalar", "activation", "output"])
      expect(roles.has(r as never), r).toBe(true);
    expect(plan.peakBytes).toBe(plan.buffers.reduce((s, b) => s + b.bytes, 0));
  });

  it("reuses activation buffers: fewer activation buffers than activations", () => {
    const activations = mlp.plan.buffers.filter((b) => b.role === "activation");
    const tensors = activations.reduce((s, b) => s + b.names.length, 0);
    expect(activations.length).toBeLessThan(tensors);
  });
});

describe("kernel comments", () => {
  it("name the IR nodes and the .lrk lines they came from", () => {
    const b = new Builder();
    b.source = { file: "model.lrk", line: 7 };
    const x = b.input("data", "x", [4]);
    const y = b.relu(b.add(x, b.constant(1, [4])));
    const plan = planProgram(
      b.graph,
      inputsOf(b.graph),
      { e: { outputs: [{ name: "y", node: y }] } },
      limits,
    );
    const k = plan.kernels[0]!;
    expect(k.sourceLines).toEqual(["model.lrk:7"]);
    expect(k.wgsl).toContain(`%${y} = relu`);
    expect(k.wgsl).toContain("// from: model.lrk:7");
  });
});

describe("memory plan", () => {
  it("first fit: a freed buffer is reused; peak bytes count every buffer once", () => {
    const plan = planMemory(
      [
        { key: "x", bytes: 400, role: "data", name: "x" },
        { key: "a", bytes: 400, role: "activation", name: "%1" },
        { key: "b", bytes: 400, role: "activation", name: "%2" },
        { key: "c", bytes: 200, role: "activation", name: "%3" },
        { key: "y", bytes: 200, role: "output", name: "y" },
      ],
      [
        { reads: ["x"], writes: ["a"] },
        { reads: ["a"], writes: ["b"] },
        { reads: ["b"], writes: ["c"] },
        { reads: ["c"], writes: ["y"] },
      ],
      limits,
    );
    // a and c share a buffer (a is dead after step 2); b cannot share with a (both live in step 2)
    expect(plan.assignment.get("c")).toBe(plan.assignment.get("a"));
    expect(plan.assignment.get("b")).not.toBe(plan.assignment.get("a"));
    expect(plan.peakBytes).toBe(400 + 400 + 400 + 200);
  });

  // (a tensor over one binding but within one buffer is split: tests/split-binding.test.ts)
  it("rejects a tensor over the buffer limit, naming it and its size", () => {
    const b = new Builder();
    const x = b.input("data", "x", [1024, 1024]);
    const y = b.exp(x);
    expect(() =>
      planProgram(
        b.graph,
        inputsOf(b.graph),
        { e: { outputs: [{ name: "y", node: y }] } },
        { maxStorageBufferBindingSize: 2 ** 20, maxBufferSize: 2 ** 21 },
      ),
    ).toThrow(BufferLimitError);
    try {
      planProgram(
        b.graph,
        inputsOf(b.graph),
        { e: { outputs: [{ name: "y", node: y }] } },
        { maxStorageBufferBindingSize: 2 ** 20, maxBufferSize: 2 ** 21 },
      );
    } catch (e) {
      expect((e as BufferLimitError).tensor).toBe("x");
      expect((e as BufferLimitError).bytes).toBe(4 * 2 ** 20);
      expect((e as Error).message).toMatch(/x needs a buffer of 4194304 bytes .* maxBufferSize/);
    }
  });
});

// ------------------------------------------------------------------------------ the tiny LM step

const tinyLm = (() => {
  const path = join(root, "examples", "tiny_lm_pretrain.lrk");
  const { run } = prepare(new SourceFile(path, readFileSync(path, "utf8")), {});
  if (!run) throw new Error("examples/tiny_lm_pretrain.lrk does not compile");
  const entry = run.step.variants.get("")!;
  const plan = planProgram(run.step.graph, run.step.inputs, { step: entry }, limits, []);
  const rows = plan.entries
    .step!.dispatches.map((k) => plan.kernels[k]!)
    .filter((k) => k.kind === "row");
  return { total: plan.entries.step!.dispatches.length, rows };
})();

describe("the training step of examples/tiny_lm_pretrain.lrk", () => {
  // Row kernels: 5 layer norms and 2 attention softmaxes, forward and backward, one kernel each
  // (14); the cross-entropy's forward and backward share one (their rows are the same); the
  // gradient clip's sums of squares of equal-length gradients, joined through their sum (5).
  it(`is ${tinyLm.total} kernels, ${tinyLm.rows.length} of them row kernels (302 kernels without row kernels)`, () => {
    expect(tinyLm.rows).toHaveLength(20);
    // 250 before the step-only scalars (Adam's bias corrections) moved to the host
    // (214 before the weight gradients that read the heads joined back folded their batch sum
    // into k; 206 before constants were value-numbered, when each layer built its own causal mask)
    expect(tinyLm.total).toBe(205);
    // every row kernel opens with a comment naming its IR nodes (and their .lrk lines)
    for (const k of tinyLm.rows) expect(k.wgsl).toMatch(/^\/\/ row .*\n\/\/ computes:\n/);
  });
});
