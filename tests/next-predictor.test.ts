// NExt's predictor (arXiv 2604.11446) end to end: `std.data.tensors` reads recorded rows from
// safetensors files as examples, `load(path, tensor)` reads a trained predictor's weights into an
// initial value, and `next_extrapolated` rebuilds θ_T + c · σ̂ ûv̂ᵀ from the predictor's output.
// Each is checked by hand in float64 (plain loops written here), on the CPU interpreter.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { openDataSet } from "../runtime/data.js";
import { writeSafetensors } from "../runtime/safetensors.js";
import { train } from "../runtime/trainer.js";
import { CpuDevice } from "../runtime/device.js";
import { compile, init, param } from "./program-helpers.js";
import { SourceFile } from "../language/source.js";
import { prepare } from "./program-helpers.js";

const folder = mkdtempSync(join(tmpdir(), "lrk-next-predictor-"));

const f32 = (shape: number[], values: number[]): Tensor => ({
  shape,
  data: Float32Array.from(values),
});

/** A safetensors file in the test's folder; returns its name. */
function save(name: string, tensors: Record<string, Tensor>): string {
  writeSafetensors(join(folder, name), new Map(Object.entries(tensors)));
  return name;
}

/** The codes and messages of a program's errors (it is compiled in the test's folder). */
function errors(text: string): string[] {
  const file = new SourceFile(join(folder, "errors.lrk"), text);
  const { diagnostics } = prepare(file, {});
  return diagnostics
    .filter((d) => d.severity === "error")
    .map(
      (d) => `${d.code} ${d.at ? `${d.at.file.position(d.at.span.start).line}: ` : ""}${d.message}`,
    );
}

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

/** A regression program on a `tensors` data set. */
const regression = (data: string, model = "Linear(3, 2)", extra = "") => `import std.nn.{Linear}
import std.optim.{sgd}

data rows = ${data}
${extra}
train t {
  model ${model}
  data rows
  loss mean(abs(model(batch.input) - batch.target))
  optimize ** with sgd(lr: 0.1)
  steps 2
  batch 2
}
`;

describe("std.data.tensors", () => {
  // two modules' records in one file, a third module in a second file
  save("a.safetensors", {
    "state:l1.rec:x": f32([2, 3], range(6)),
    "state:l1.rec:y": f32([2, 2], range(4, 100)),
    "state:l2.rec:x": f32([1, 3], [0, 0, 0]),
    "state:l2.rec:y": f32([1, 2], [7, 7]),
    "param:other": f32([5], range(5)),
  });
  save("widths.safetensors", {
    "l1:x": f32([2, 3], range(6)),
    "l1:y": f32([2, 2], range(4)),
    "l2:x": f32([1, 4], range(4)),
    "l2:y": f32([1, 2], range(2)),
  });
  save("b.safetensors", {
    "state:l3.rec:x": f32([3], [9, 8, 7]),
    "state:l3.rec:y": f32([2], [1, 2]),
  });

  it("gathers the rows of every matching tensor of every file, paired by the `*` part", () => {
    const run = compile(
      regression(
        'std.data.tensors("*.safetensors", input: "state:*.rec:x", target: "state:*.rec:y", valid: 1)',
      ),
      { path: join(folder, "t.lrk") },
    );
    const spec = run.program.data;
    expect(spec.fields["input"]!.shape).toEqual([2, 3]);
    expect(spec.fields["target"]!.shape).toEqual([2, 2]);
    expect(spec.tensors!.map((p) => [p.input, p.target, p.rows])).toEqual([
      ["state:l1.rec:x", "state:l1.rec:y", 2],
      ["state:l2.rec:x", "state:l2.rec:y", 1],
      ["state:l3.rec:x", "state:l3.rec:y", 1],
    ]);
    const data = openDataSet(spec);
    // rows in order: l1's two, l2's, l3's; the last held out for valid
    expect([data.trainSize, data.validSize]).toEqual([3, 1]);
    const valid = data.batch("valid", 0, 2);
    expect(Array.from(valid.fields["input"]!.data)).toEqual([9, 8, 7]);
    expect(Array.from(valid.fields["target"]!.data)).toEqual([1, 2]);
    // one epoch of train batches holds every train row once
    const seen = [0, 1, 2, 3, 4, 5].flatMap((i) =>
      Array.from(data.batch("train", i, 1).fields["target"]!.data),
    );
    const pairs = (xs: number[]) =>
      range(xs.length / 2).map((i) => `${xs[2 * i]},${xs[2 * i + 1]}`);
    expect(pairs(seen.slice(0, 6)).sort()).toEqual(["100,101", "102,103", "7,7"]);
  });

  it("skips rows whose input is all zeros with skip_empty", () => {
    const run = compile(
      regression(
        'std.data.tensors("a.safetensors", input: "state:*.rec:x", target: "state:*.rec:y", skip_empty: true)',
      ),
      { path: join(folder, "t.lrk") },
    );
    const data = openDataSet(run.program.data);
    expect(data.trainSize).toBe(2);
  });

  it("reports a missing file, a missing target and widths that differ at the declaration", () => {
    expect(
      errors(regression('std.data.tensors("nope.safetensors", input: "x", target: "y")')),
    ).toEqual([expect.stringMatching(/^E0501 4: .*cannot find the file "nope.safetensors"/)]);
    expect(
      errors(
        regression(
          'std.data.tensors("a.safetensors", input: "state:*.rec:x", target: "state:*.rec:z")',
        ),
      ),
    ).toEqual([expect.stringMatching(/^E0501 4: .*no target `state:l1.rec:z`/)]);
    expect(
      errors(regression('std.data.tensors("widths.safetensors", input: "*:x", target: "*:y")')),
    ).toEqual([
      expect.stringMatching(
        /^E0501 4: .*the input tensors have different widths: `l1:x` has 3, `l2:x` 4/,
      ),
    ]);
    expect(
      errors(regression('std.data.tensors("a.safetensors", input: "nothing*", target: "y*")')),
    ).toEqual([
      expect.stringMatching(/^E0501 4: .*no tensor of "a.safetensors" matches `nothing\*`/),
    ]);
  });
});

describe("load(path, tensor)", () => {
  save("weights.safetensors", {
    "param:w": f32([2, 3], [1, 2, 3, 4, 5, 6]),
    "param:l.lift.A": f32([1, 3], [0.5, -1, 2]),
  });
  const program = (member: string, rules = "") => `import std.nn.{Linear}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 16)

adapter lift on Linear(in, out) {
  const A = load("weights.safetensors", "param:" + base.path + ".lift.A")
  param s: f32[out] = zeros
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + s * (x @ A^T)
}

model Net {
  l = Linear(3, 2)
  ${member}
  forward(x: f32[B, 2]) -> f32[B, 2] = l(concat([x, x[:, :1]], axis: 1))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  ${rules || "optimize ** with sgd(lr: 0.1)"}
  steps 1
  batch 4
}
`;

  it("reads a tensor of a file into a param's initial value and an adapter's const", async () => {
    const run = compile(
      program(
        'param w: f32[2, 3] = load("weights.safetensors", "param:w")',
        "adapt l with lift\n  optimize ** with sgd(lr: 0.1)",
      ),
      { path: join(folder, "load.lrk") },
    );
    const store = await init(run, true);
    expect(Array.from(param(store, "w"))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(store.get("buffer:l.lift.A")!.data)).toEqual([0.5, -1, 2]);
    // the file's tensors are not kept: checkpoints keep what was made of them
    expect([...store.keys()].filter((k) => k.startsWith("load:"))).toEqual([]);
    const trained = await train(run, new CpuDevice({ float64: true }), { steps: 1 });
    expect(Number.isFinite(trained.losses[0])).toBe(true);
  });

  it("reports a missing file or tensor at the call, and a load outside an initial value", () => {
    expect(errors(program('param w: f32[2, 3] = load("missing.safetensors", "param:w")'))).toEqual([
      expect.stringMatching(/^E0502 14: `load` cannot read "missing.safetensors"/),
    ]);
    expect(errors(program('param w: f32[2, 3] = load("weights.safetensors", "param:v")'))).toEqual([
      expect.stringMatching(/^E0502 14: "weights.safetensors" holds no tensor `param:v`/),
    ]);
    expect(errors(program('param w: f32[3, 2] = load("weights.safetensors", "param:w")'))).toEqual([
      "E0401 14: the initial value of `w` should be f32[3, 2], but it is f32[2, 3]: dim 3 is 3, not 2",
    ]);
    const inForward = program("param w: f32[2, 3] = zeros").replace(
      "l(concat",
      'load("weights.safetensors", "param:w")[0, 0] * l(concat',
    );
    expect(errors(inForward)).toEqual([
      "E0206 15: `load` reads a file once, when training starts: it can only be a `param`'s initial value or an adapter's `const`",
    ]);
  });
});
