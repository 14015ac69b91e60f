// NExt's predictor (arXiv 2604.11446) end to end: `std.data.tensors` reads recorded rows from
// safetensors files as examples, `load(path, tensor)` reads a trained predictor's weights into an
// initial value, and `next_extrapolated` rebuilds θ_T + c · σ̂ ûv̂ᵀ from the predictor's output.
// Each is checked by hand in float64 (plain loops written here), on the CPU interpreter.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { openDataSet } from "../runtime/data.js";
import { CheckpointError, writeSafetensors } from "../runtime/safetensors.js";
import { train } from "../runtime/trainer.js";
import { CpuDevice } from "../runtime/device.js";
import { failureDiagnostic } from "../cli/failures.js";
import { compile, expectTrainsAlike, init, param } from "./program-helpers.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { SourceFile } from "../language/source.js";
import { prepare } from "./program-helpers.js";
import { lowRankDelta, topTriple, tripleProduct } from "./next-helpers.js";

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
        'std.data.tensors("*.safetensors", input: "state:*.rec:x", target: "state:*.rec:y", input_width: 3, target_width: 2, valid: 1)',
      ),
      { path: join(folder, "t.lrk") },
    );
    const spec = run.program.data;
    expect(spec.fields["input"]!.shape).toEqual([2, 3]);
    expect(spec.fields["target"]!.shape).toEqual([2, 2]);
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
        'std.data.tensors("a.safetensors", input: "state:*.rec:x", target: "state:*.rec:y", input_width: 3, target_width: 2, skip_empty: true)',
      ),
      { path: join(folder, "t.lrk") },
    );
    const data = openDataSet(run.program.data);
    expect(data.trainSize).toBe(2);
  });

  /** The E0501 opening the data gives: "line: message" (the files are read on first use). */
  const openProblem = (data: string, model?: string): string => {
    const run = compile(regression(data, model), { path: join(folder, "t.lrk") });
    // compiling and opening (what `lrkc check` does) read no file
    const source = openDataSet(run.program.data);
    try {
      void source.trainSize;
    } catch (e) {
      const d = failureDiagnostic(e, { program: run.program })!;
      return `${d.code} ${d.at!.file.position(d.at!.span.start).line}: ${d.message}`;
    }
    return "no problem";
  };
  const widths = "input_width: 3, target_width: 2";

  it("reports a missing file, a missing target and widths that differ at the declaration", () => {
    expect(
      openProblem(`std.data.tensors("nope.safetensors", input: "x", target: "y", ${widths})`),
    ).toMatch(/^E0501 4: cannot find the file "nope.safetensors"/);
    expect(
      openProblem(
        `std.data.tensors("a.safetensors", input: "state:*.rec:x", target: "state:*.rec:z", ${widths})`,
      ),
    ).toMatch(/^E0501 4: .*no target `state:l1.rec:z`/);
    expect(
      openProblem(`std.data.tensors("widths.safetensors", input: "*:x", target: "*:y", ${widths})`),
    ).toMatch(/^E0501 4: the input tensors have different widths: `l1:x` has 3, `l2:x` 4/);
    expect(
      openProblem(`std.data.tensors("a.safetensors", input: "nothing*", target: "y*", ${widths})`),
    ).toMatch(/^E0501 4: no tensor of "a.safetensors" matches `nothing\*`/);
    expect(
      openProblem(
        'std.data.tensors("a.safetensors", input: "state:*.rec:x", target: "state:*.rec:y", input_width: 3, target_width: 5)',
        "Linear(3, 5)",
      ),
    ).toBe("E0501 4: the target tensors are 2 wide, but the declaration says `target_width: 5`");
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
  const A = load("weights.safetensors", "param:" + base.path + ".lift.A", [1, 3])
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
        'param w: f32[2, 3] = load("weights.safetensors", "param:w", [2, 3])',
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

  it("reports a missing file or tensor at the call, and a load outside an initial value", async () => {
    for (const [tensor, file, want] of [
      [
        "param:w",
        "missing.safetensors",
        /`load` cannot read `param:w` of ".*missing.safetensors": .*does not exist|no such file/,
      ],
      [
        "param:v",
        "weights.safetensors",
        /`load` cannot read `param:v` of ".*weights.safetensors": the file holds no such tensor/,
      ],
    ] as const) {
      const run = compile(program(`param w: f32[2, 3] = load("${file}", "${tensor}", [2, 3])`), {
        path: join(folder, "load.lrk"),
      });
      const failure = await init(run, false).catch((e: unknown) => e);
      const d = failureDiagnostic(failure, { program: run.program })!;
      expect(d.message).toMatch(want);
      expect([d.code, d.at!.file.position(d.at!.span.start).line]).toEqual(["E0502", 14]);
    }
    expect(
      errors(program('param w: f32[3, 2] = load("weights.safetensors", "param:w", [2, 3])')),
    ).toEqual([
      "E0401 14: the initial value of `w` should be f32[3, 2], but it is f32[2, 3]: dim 3 is 3, not 2",
    ]);
    const inForward = program("param w: f32[2, 3] = zeros").replace(
      "l(concat",
      'load("weights.safetensors", "param:w", [2, 3])[0, 0] * l(concat',
    );
    expect(errors(inForward)).toEqual([
      "E0206 15: `load` reads a file once, when training starts: it can only be a `param`'s initial value or an adapter's `const`",
    ]);
    // a shape too large for one tensor is refused while compiling (planning it ran out of memory)
    expect(
      errors(program('param w: f32[2, 3] = load("weights.safetensors", "param:w", [1e23, 3])')),
    ).toEqual([
      "E0401 14: `load`'s shape [1e+23, 3] has 3.00e+23 elements, more than one tensor can hold (2^31 - 1)",
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// NExt end to end on a tiny case: record, train the predictor one step, extrapolate.

const OUT = 3;
const IN = 4;
const RANK = 2;
const SCALE = 1.5; // alpha 3 / rank 2
const TRIPLE = OUT + 1 + IN;
const HIDDEN = 5;

const recording = `import std.nn.{Linear}
import std.optim.{sgd}
import std.adapters.{next_lora}

data moons = std.data.two_moons(n: 64, seed: 3)

model Net {
  l1 = Linear(2, ${IN})
  l2 = Linear(${IN}, ${OUT})
  forward(x: f32[B, 2]) -> f32[B, ${OUT}] = l2(tanh(l1(x)))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l2 with next_lora(rank: ${RANK}, alpha: 3, period: 1, records: 4, horizon: 2)
  optimize adapters with sgd(lr: 0.5)
  steps 5
  batch 8
}
`;

const predictorProgram = (path: string) => `import std.adapters.{NextPredictor}
import std.optim.{adamw}

data pairs = std.data.tensors(
  "${path}",
  input: "state:*.next_lora:pairs_input",
  target: "state:*.next_lora:pairs_target",
  input_width: ${2 * TRIPLE},
  target_width: ${TRIPLE},
  skip_empty: true,
)

train predictor {
  model NextPredictor(dim: ${TRIPLE}, hidden: ${HIDDEN})
  data pairs
  loss mean(abs(model(batch.input) - batch.target))
  optimize ** with adamw(lr: 2e-5, weight_decay: 0.01)
  steps 2
  batch 3
  seed 4
}
`;

const extrapolation = (run: string, predictor: string) =>
  recording
    .replace("import std.adapters.{next_lora}", "import std.adapters.{next_extrapolated}")
    .replace(
      /adapt l2 with next_lora\(.*\)/,
      `adapt l2 with next_extrapolated(run: "${run}", predictor: "${predictor}", c: 2, rank: ${RANK}, alpha: 3, records: 4, hidden: ${HIDDEN})`,
    )
    .replace("optimize adapters", "optimize l1")
    .replace("freeze **", "freeze l2");

/** s · B A from flattened factors [B (out·rank), A (rank·in)]. */
const deltaOf = (factors: number[]): number[][] =>
  lowRankDelta(factors.slice(0, OUT * RANK), factors.slice(OUT * RANK), {
    out: OUT,
    rank: RANK,
    in: IN,
    scale: SCALE,
  });

/** x @ Wᵀ + b for the predictor's Linear `name` (float64). */
function linear(p: (name: string) => number[], name: string, x: number[]): number[] {
  const w = p(`${name}.weight`);
  const b = p(`${name}.bias`);
  return b.map((bias, o) => bias + x.reduce((s, xi, i) => s + xi * w[o * x.length + i]!, 0));
}

/** NextPredictor's forward on one row (float64). */
function predictRow(p: (name: string) => number[], x: number[]): number[] {
  const relu = (v: number[]) => v.map((y) => Math.max(0, y));
  const branch = (k: string, h: number[]) =>
    linear(p, `${k}4`, linear(p, `${k}3`, relu(linear(p, `${k}2`, linear(p, `${k}1`, h)))));
  const g = branch("g", x.slice(0, TRIPLE));
  const l = branch("l", x.slice(TRIPLE));
  return linear(p, "c2", relu(linear(p, "c1", [...g, ...l])));
}

const flat = (t: Tensor | undefined): number[] => Array.from(t!.data);

describe("NExt end to end", () => {
  it("records pairs, trains the predictor on them and extrapolates with it", async () => {
    const device = new CpuDevice({ float64: true });
    // 1. the recording run: 5 records (period 1), the last 4 kept, horizon 2
    const recorded = (await train(compile(recording), device, { steps: 5 })).store;
    const state = (name: string) => flat(recorded.get(`state:l2.next_lora:${name}`));
    const features = state("features");
    const trajectory = state("trajectory");
    const inputs = state("pairs_input");
    const targets = state("pairs_target");
    const width = RANK * (OUT + IN);
    // records 1..5 are kept as rows -,2,3,4,5 of features; the pairs are (1→3), (2→4), (3→5):
    // the last pair's input is record 3's features (row 1) and its target the delta from
    // record 3 to record 5 (trajectory rows 1 and 3)
    expect(inputs.slice(0, 2 * TRIPLE).every((x) => x === 0)).toBe(true);
    expect(inputs.slice(3 * 2 * TRIPLE)).toEqual(features.slice(2 * TRIPLE, 2 * 2 * TRIPLE));
    const d5 = deltaOf(trajectory.slice(3 * width, 4 * width));
    const d3 = deltaOf(trajectory.slice(1 * width, 2 * width));
    const want = topTriple(d5.map((row, o) => row.map((x, i) => x - d3[o]![i]!))).product;
    tripleProduct(targets.slice(3 * TRIPLE), OUT).product.forEach((row, o) =>
      row.forEach((x, i) => expect(x).toBeCloseTo(want[o]![i]!, 8)),
    );
    const runFile = save("next-run.safetensors", Object.fromEntries(recorded));

    // 2. the predictor: its first loss by hand (L1 over the 3 pairs that exist)
    const predictorRun = compile(predictorProgram(runFile), { path: join(folder, "p.lrk") });
    const data = openDataSet(predictorRun.program.data);
    expect(data.trainSize).toBe(3);
    const start = await init(predictorRun, true);
    const p = (name: string) => Array.from(param(start, name));
    const batch = data.batch("train", 0, 3);
    const x = flat(batch.fields["input"] as Tensor);
    const y = flat(batch.fields["target"] as Tensor);
    let l1 = 0;
    for (let r = 0; r < 3; r++) {
      const out = predictRow(p, x.slice(r * 2 * TRIPLE, (r + 1) * 2 * TRIPLE));
      out.forEach((v, j) => (l1 += Math.abs(v - y[r * TRIPLE + j]!)));
    }
    const trained = await train(predictorRun, device, { steps: 2 });
    // the loss is reported as an f32
    expect(trained.losses[0]).toBeCloseTo(l1 / (3 * TRIPLE), 6);
    const predictorFile = save("next-predictor.safetensors", Object.fromEntries(trained.store));

    // 3. the extrapolation: θ_T + c · σ̂ ûv̂ᵀ from the predictor's output on the last features
    const extrapolated = compile(extrapolation(runFile, predictorFile), {
      path: join(folder, "x.lrk"),
    });
    // the extrapolation trains nothing of its own
    expect(extrapolated.placement.params.filter((p) => p.origin === "adapter")).toEqual([]);
    const weights = await init(extrapolated, true);
    const q = (name: string) => Array.from(param(trained.store, name));
    const predicted = predictRow(q, features.slice(3 * 2 * TRIPLE));
    const u = predicted.slice(0, OUT);
    const v = predicted.slice(OUT + 1);
    const [nu, nv] = [Math.hypot(...u), Math.hypot(...v)];
    const theta = deltaOf([
      ...flat(recorded.get("param:l2.next_lora.B")),
      ...flat(recorded.get("param:l2.next_lora.A")),
    ]);
    const W = Array.from(param(recorded, "l2.weight"));
    // the files hold f32s, the reference reads the float64 stores
    const got = flat(weights.get("buffer:l2.next_extrapolated.weight"));
    for (let o = 0; o < OUT; o++)
      for (let i = 0; i < IN; i++)
        expect(got[o * IN + i]).toBeCloseTo(
          W[o * IN + i]! + theta[o]![i]! + 2 * predicted[OUT]! * (u[o]! / nu) * (v[i]! / nv),
          6,
        );
  });
});

describe("NExt on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  it("trains the predictor on recorded pairs, and extrapolates, as the interpreter does", async () => {
    const recorded = (await train(compile(recording), new CpuDevice(), { steps: 5 })).store;
    const runFile = save("gpu-run.safetensors", Object.fromEntries(recorded));
    const predictorRun = compile(predictorProgram(runFile), { path: join(folder, "gp.lrk") });
    const trained = await expectTrainsAlike(device, predictorRun, 2, 1e-3);
    const predictorFile = save("gpu-predictor.safetensors", Object.fromEntries(trained));
    // the extrapolated weight is computed by the init program on the device, from the loaded files
    const extrapolated = compile(extrapolation(runFile, predictorFile), {
      path: join(folder, "gx.lrk"),
    });
    await expectTrainsAlike(device, extrapolated, 2, 1e-3);
  }, 120_000);
});

describe("NExt's sizes", () => {
  it("NextPredictor has the reference's parameters: two 4-layer branches and a 2-layer combine", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-next-sizes-"));
    const file = join(dir, "pairs.safetensors");
    writeSafetensors(
      file,
      new Map([
        ["state:l.next_lora:pairs_input", f32([2, 2 * TRIPLE], range(4 * TRIPLE))],
        ["state:l.next_lora:pairs_target", f32([2, TRIPLE], range(2 * TRIPLE))],
      ]),
    );
    const run = compile(predictorProgram(file), { path: join(dir, "p.lrk") });
    const count = run.placement.params
      .filter((p) => p.trainable)
      .reduce((n, p) => n + p.param.shape.reduce((a, d) => a * d, 1), 0);
    const linear = (i: number, o: number) => i * o + o;
    const branch = 2 * linear(TRIPLE, HIDDEN) + 2 * linear(HIDDEN, TRIPLE);
    expect(count).toBe(2 * branch + linear(2 * TRIPLE, HIDDEN) + linear(HIDDEN, TRIPLE));
  });

  it("reports a loaded file that changed shape since compiling (E0502 at the call)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-next-changed-"));
    const text = `import std.nn.{Linear}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 16)

model Net {
  l = Linear(2, 2)
  param w: f32[2] = load("w.safetensors", "w", [2])
  forward(x: f32[B, 2]) -> f32[B, 2] = l(x) * w
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with sgd(lr: 0.1)
}
`;
    writeSafetensors(join(dir, "w.safetensors"), new Map([["w", f32([2], [1, 2])]]));
    const run = compile(text, { path: join(dir, "t.lrk") });
    writeSafetensors(join(dir, "w.safetensors"), new Map([["w", f32([3], [1, 2, 3])]]));
    const failure = await init(run, false).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(CheckpointError);
    expect((failure as Error).message).toMatch(
      /`load` cannot read `w` of ".*w.safetensors": it is \[3\], not the \[2\] the program says/,
    );
    const d = failureDiagnostic(failure, { program: run.program })!;
    expect([d.code, d.at?.file.position(d.at.span.start).line]).toEqual(["E0502", 8]);
  });
});
