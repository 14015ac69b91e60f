// Gathers outside their table (issue 10). Where the ids' values are known when compiling (token
// ids from the data's vocabulary, positions from `arange(T)`), a table too small is E0410 at the
// user's call; where they are not, both devices stop the run with IndexOutOfRange (E0510, naming
// the step) instead of reading other memory (WebGPU) or failing with an internal error (CPU).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Builder } from "../../compiler/builder.js";
import { valueRange } from "../../compiler/ir.js";
import type { ProgramInput, Tensor } from "../../compiler/program.js";
import { failureDiagnostic } from "../../cli/failures.js";
import { CpuDevice, type Device } from "../../runtime/device.js";
import { IndexOutOfRange } from "../../runtime/interpreter.js";
import { WebGpuDevice } from "../../runtime/webgpu-device.js";
import { loraTinyLmProgram, root } from "../helpers.js";
import { compile, runGraph } from "../program-helpers.js";
import { DataError, type OpenedSource } from "../../runtime/data.js";
import { batchFeeds, initialize } from "../../runtime/trainer.js";
import { planStep } from "../../compiler/compile.js";
import { portableTarget } from "../../cli/target.js";

const dir = mkdtempSync(join(tmpdir(), "lrk-gather-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function lrkc(...args: string[]) {
  return spawnSync(process.execPath, [join(root, "bin/lrkc.js"), ...args], {
    cwd: dir,
    encoding: "utf8",
  });
}

/** The tiny LM trained on 2-digit addition (vocabulary 16, sequences of 9 tokens). */
function program(modelArgs: string, data = 'std.data.arithmetic(ops: "+", digits: 2)'): string {
  return `import std.optim.{adamw}
import std.nn.{Embedding}

data arith = ${data}

model Lm(vocab: int, d: int = 8, ctx: int = 32) {
  tok = Embedding(vocab, d)
  pos = Embedding(ctx, d)
  forward(ids: i32[B, T]) -> f32[B, T, vocab] {
    let h = tok(ids) + pos(arange(T))
    return h @ tok.weight^T
  }
}

train t {
  model Lm(${modelArgs})
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-3)
  steps 2
  batch 2
}
`;
}

describe("gathers known to leave their table are compile errors", () => {
  it("an embedding smaller than the data's vocabulary: E0410 at the user's call", () => {
    writeFileSync(join(dir, "vocab.lrk"), program("vocab: 10"));
    const r = lrkc("check", "vocab.lrk");
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain("vocab.lrk:10:13: error[E0410]");
    expect(r.stderr).toContain("the data's vocabulary is 16 but `tok` has 10 rows");
    expect(r.stderr).toContain("at least 16 rows");
    expect(r.stderr).not.toMatch(/internal error|bug in lrkc/);
  });

  it("a positional table shorter than the data's sequences: E0410", () => {
    writeFileSync(join(dir, "ctx.lrk"), program("vocab: arith.vocab, ctx: 4"));
    const r = lrkc("check", "ctx.lrk");
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain("ctx.lrk:10:24: error[E0410]");
    expect(r.stderr).toContain("the positions go up to 8 but `pos` has 4 rows");
  });

  it("a text context longer than the positional table: E0410", () => {
    writeFileSync(join(dir, "corpus.txt"), "hello world, ".repeat(40));
    const data = 'std.data.text("corpus.txt", context: 40)';
    writeFileSync(join(dir, "text.lrk"), program("vocab: arith.vocab, ctx: 32", data));
    const r = lrkc("check", "text.lrk");
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain("the positions go up to 39 but `pos` has 32 rows");
  });

  it("tables large enough pass", () => {
    writeFileSync(join(dir, "ok.lrk"), program("vocab: arith.vocab, ctx: 9"));
    const r = lrkc("check", "ok.lrk");
    expect(r.status, r.stderr).toBe(0);
  });

  it("ranges follow simple ops", () => {
    const b = new Builder();
    const ids = b.input("data", "ids", [4], "i32", { min: 0, max: 15 });
    expect(valueRange(b.graph, ids)).toMatchObject({ min: 0, max: 15 });
    const shifted = b.add(ids, b.constant(3, [4], "i32"));
    expect(valueRange(b.graph, shifted)).toMatchObject({ min: 3, max: 18 });
    const wrapped = b.binary("mod", shifted, b.constant(16, [4], "i32"));
    expect(valueRange(b.graph, wrapped)).toMatchObject({ min: 0, max: 15 });
    const pos = b.iota([2, 9], 1);
    expect(valueRange(b.graph, pos)).toMatchObject({ min: 0, max: 8 });
    expect(valueRange(b.graph, b.reshape(pos, [18]))).toMatchObject({ min: 0, max: 8 });
    const unknown = b.input("data", "other", [4], "i32");
    expect(valueRange(b.graph, b.add(ids, unknown))).toBeUndefined();
    expect(valueRange(b.graph, b.cast(b.input("data", "x", [4]), "i32"))).toBeUndefined();
  });
});

describe("gathers with ids unknown when compiling stop the run on both devices", () => {
  let gpu: WebGpuDevice;
  beforeAll(async () => {
    gpu = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => gpu?.destroy());

  /** table[ids] (and the sum of a row of it, a reduce kernel reading through the gather). */
  function gatherCase(ids: number[]) {
    const b = new Builder();
    b.source = { file: "model.lrk", line: 7 };
    const table = b.input("param", "table", [5, 3]);
    const idNode = b.input("data", "ids", [ids.length], "i32");
    const step = b.input("scalar", "step", []);
    const rows = b.gather(table, idNode);
    const inputs: ProgramInput[] = [
      { name: "table", node: table, role: "param", shape: [5, 3], dtype: "f32" },
      { name: "ids", node: idNode, role: "data", shape: [ids.length], dtype: "i32" },
      { name: "step", node: step, role: "scalar", shape: [], dtype: "f32" },
    ];
    const feeds = new Map<string, Tensor>([
      ["table", { shape: [5, 3], data: Float32Array.from({ length: 15 }, (_, i) => i) }],
      ["ids", { shape: [ids.length], data: Int32Array.from(ids) }],
      ["step", { shape: [], data: Float32Array.of(12) }],
    ]);
    const outputs = [
      { name: "rows", node: rows },
      {
        name: "total",
        node: b.sum(b.mul(rows, b.expand(b.reshape(step, [1, 1]), [ids.length, 3]))),
      },
    ];
    return { graph: b.graph, inputs, outputs, feeds };
  }

  for (const which of ["cpu", "webgpu"] as const) {
    const device = (): Device => (which === "cpu" ? new CpuDevice() : gpu);

    it(`${which}: an id past the table is E0510 naming the step and the line`, async () => {
      const c = gatherCase([0, 4, 7, 1]);
      const failure = await runGraph(device(), c.graph, c.inputs, c.outputs, c.feeds).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(failure).toBeInstanceOf(IndexOutOfRange);
      const e = failure as IndexOutOfRange;
      expect(e.id).toBe(7);
      expect(e.rows).toBe(5);
      expect(e.step).toBe(12);
      expect(e.source).toBe("model.lrk:7");
      const d = failureDiagnostic(e)!;
      expect(d.code).toBe("E0510");
      expect(d.message).toContain("at step 12");
      expect(d.message).toContain("7 for a table of 5 rows");
    });

    it(`${which}: a negative id too; in-range ids run (and the flag is cleared)`, async () => {
      const bad = gatherCase([-2, 0, 1, 2]);
      await expect(
        runGraph(device(), bad.graph, bad.inputs, bad.outputs, bad.feeds),
      ).rejects.toBeInstanceOf(IndexOutOfRange);
      const feeds = new Map(bad.feeds);
      feeds.set("ids", { shape: [4], data: Int32Array.of(4, 0, 1, 2) });
      const out = await runGraph(device(), bad.graph, bad.inputs, bad.outputs, feeds);
      expect([...out.get("rows")!.data].slice(0, 3)).toEqual([12, 13, 14]);
    });
  }

  it("webgpu: ids known to be in range need no flag", async () => {
    const b = new Builder();
    const table = b.input("param", "table", [5, 3]);
    const ids = b.input("data", "ids", [4], "i32", { min: 0, max: 4 });
    const rows = b.gather(table, ids);
    const inputs: ProgramInput[] = [
      { name: "table", node: table, role: "param", shape: [5, 3], dtype: "f32" },
      { name: "ids", node: ids, role: "data", shape: [4], dtype: "i32" },
    ];
    const feeds = new Map<string, Tensor>([
      ["table", { shape: [5, 3], data: new Float32Array(15) }],
      ["ids", { shape: [4], data: Int32Array.of(0, 1, 2, 4) }],
    ]);
    const { planStep } = await import("../../compiler/compile.js");
    const { deviceTarget } = await import("../../cli/target.js");
    const program = {
      graph: b.graph,
      inputs,
      entries: [{ name: "e", outputs: [{ name: "rows", node: rows }] }],
    };
    const plan = planStep(program, await deviceTarget(gpu, [program], { autotune: false }));
    expect(plan.kernels.some((k) => k.gatherFlag !== undefined)).toBe(false);
    gpu.load(program, plan);
    await gpu.run(program, program.entries[0]!, feeds);
  });
});

describe("a data field's declared range, taken as known by the compiler", () => {
  const run = compile(loraTinyLmProgram("ranged", 2));

  it("survives to the plan: the embedding's gather reads without a bounds check", () => {
    const plan = planStep(run.program.step, portableTarget);
    expect(plan.kernels.some((k) => k.wgsl.includes("gather"))).toBe(true);
    expect(plan.kernels.some((k) => k.gatherFlag !== undefined)).toBe(false);
  });

  it("is checked on every batch: ids outside it are a DataError, not a silent wrong read", async () => {
    const store = await initialize(run.program, new CpuDevice());
    const good = run.data.batch("train", 0, run.program.batch);
    const input = good.fields["input"]!;
    const bad = Int32Array.from(input.data as Int32Array);
    bad[3] = 1000;
    const source = {
      batch: () => ({ ...good, fields: { ...good.fields, input: { ...input, data: bad } } }),
    } as unknown as OpenedSource;
    expect(() => batchFeeds(run, store, "train", 0, 1, 1, source)).toThrow(DataError);
    expect(() => batchFeeds(run, store, "train", 0, 1, 1, source)).toThrow(
      /`input` holds 1000, outside 0 to \d+ \(the data's vocabulary is \d+\)/,
    );
    expect(() => batchFeeds(run, store, "train", 0, 1)).not.toThrow();
  });
});
