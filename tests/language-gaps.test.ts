// The small language features of issue 11 (item 5), each checked by its behaviour on a compiled
// program and by its diagnostics: the built-ins `sin`, `cos`, `cumsum`, `concat`, `argmax`,
// `i32`, `f32` (values against plain TypeScript loops, gradients against finite differences).
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { format } from "../language/format.js";
import { parseText } from "./helpers.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import {
  compile,
  finiteDifferences,
  init,
  lossAndGradients,
  param,
  prepare,
  relErr,
  runEntry,
  feedsFor,
  variantAt,
  roundToF32,
  trainStep,
} from "./program-helpers.js";

const moons = `data moons = std.data.two_moons(n: 64, seed: 2)`;

/**
 * A program whose optimizer replaces every weight matrix (l1.weight f32[4, 2], l2.weight
 * f32[3, 4]) by `expr` of it in one step: the step's result is the expression's value.
 */
function probe(expr: string, members = ""): string {
  return `import std.nn.{Linear}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] = l2(gelu(l1(x)))
}

optimizer probe() on param: f32[m, n] {
${members}
  update(g) {
    param = ${expr}
  }
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **.bias
  optimize ** with probe()
  steps 1
  batch 8
}
`;
}

/** Each weight matrix before and after one probe step, in f64. */
async function probeStep(
  expr: string,
  members = "",
): Promise<
  { path: string; rows: number; cols: number; before: Float64Array; after: Float64Array }[]
> {
  const run = compile(probe(expr, members));
  const store = await init(run, true);
  const shapes = { "l1.weight": [4, 2], "l2.weight": [3, 4] } as const;
  const before = Object.keys(shapes).map((p) => param(store, p));
  await trainStep(run, store, 1, true);
  return Object.entries(shapes).map(([path, [rows, cols]], i) => ({
    path,
    rows,
    cols,
    before: before[i]!,
    after: param(store, path),
  }));
}

function diagnosticsOf(text: string): { code: string; message: string; text: string }[] {
  const file = new SourceFile("test.lrk", text);
  return prepare(file).diagnostics.map((d) => ({
    code: d.code,
    message: d.message,
    text: d.at ? text.slice(d.at.span.start, d.at.span.end) : "",
  }));
}

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol = 1e-12): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++)
    expect(Math.abs(got[i]! - want[i]!), `element ${i}: ${got[i]} vs ${want[i]}`).toBeLessThan(
      tol * Math.max(1, Math.abs(want[i]!)),
    );
}

describe("built-ins sin, cos, cumsum, concat, argmax, i32, f32", () => {
  it("sin and cos are elementwise", async () => {
    for (const { before, after } of await probeStep("sin(param) + 2 * cos(param)"))
      expectClose(
        after,
        before.map((x) => Math.sin(x) + 2 * Math.cos(x)),
      );
  });

  it("cumsum is the inclusive running sum along its axis (the last by default)", async () => {
    for (const axis of ["axis: 0", "axis: -2", "", "axis: 1"]) {
      const rowsAxis = axis === "axis: 0" || axis === "axis: -2";
      for (const { rows, cols, before, after } of await probeStep(
        `cumsum(param${axis ? `, ${axis}` : ""})`,
      )) {
        const want = new Float64Array(rows * cols);
        for (let i = 0; i < rows; i++)
          for (let j = 0; j < cols; j++) {
            const prev = rowsAxis
              ? i > 0
                ? want[(i - 1) * cols + j]!
                : 0
              : j > 0
                ? want[i * cols + j - 1]!
                : 0;
            want[i * cols + j] = prev + before[i * cols + j]!;
          }
        expectClose(after, want);
      }
    }
  });

  it("concat joins along an axis: a rotation of the columns, and of the rows", async () => {
    for (const { rows, cols, before, after } of await probeStep(
      "concat([param[:, 1:], param[:, :1]], axis: 1)",
    )) {
      const want = Float64Array.from({ length: rows * cols }, (_, k) => {
        const i = Math.floor(k / cols);
        const j = k % cols;
        return before[i * cols + ((j + 1) % cols)]!;
      });
      expectClose(after, want);
    }
    for (const { rows, cols, before, after } of await probeStep(
      "concat((param[-1:], param[:-1]), axis: -2)",
    )) {
      const want = Float64Array.from({ length: rows * cols }, (_, k) => {
        const i = Math.floor(k / cols);
        const j = k % cols;
        return before[((i + rows - 1) % rows) * cols + j]!;
      });
      expectClose(after, want);
    }
  });

  it("argmax gives the first largest index along an axis, as i32; over all with no axis", async () => {
    const rowsMax = await probeStep(
      "zeros_like(param) + reshape(f32(argmax(param, axis: 1)), [m, 1])",
    );
    for (const { rows, cols, before, after } of rowsMax) {
      for (let i = 0; i < rows; i++) {
        let best = 0;
        for (let j = 1; j < cols; j++)
          if (before[i * cols + j]! > before[i * cols + best]!) best = j;
        for (let j = 0; j < cols; j++) expect(after[i * cols + j]).toBe(best);
      }
    }
    // ties: the first index wins
    for (const { after } of await probeStep(
      "zeros_like(param) + f32(argmax(zeros_like(param), axis: 0))",
    ))
      expect([...after].every((x) => x === 0)).toBe(true);
    for (const { before, after } of await probeStep("zeros_like(param) + f32(argmax(param))")) {
      let best = 0;
      before.forEach((x, k) => {
        if (x > before[best]!) best = k;
      });
      expect([...after].every((x) => x === best)).toBe(true);
    }
  });

  it("i32 truncates toward zero and f32 converts back; on numbers both are numbers", async () => {
    for (const { before, after } of await probeStep("f32(i32(param * 10)) + i32(-2.7) + f32(3)"))
      expectClose(
        after,
        before.map((x) => Math.trunc(Math.fround(Math.fround(x) * 10)) - 2 + 3),
      );
  });

  it("gradients flow through sin, cos, cumsum and concat (finite differences)", async () => {
    const run = compile(`import std.nn.{Linear}
import std.optim.{sgd}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] {
    let h = l1(x)
    let mixed = concat([sin(h[:, :2]), cos(h[:, 2:])], axis: 1)
    return l2(cumsum(mixed, axis: 1) * 0.5)
  }
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with sgd(lr: 0.1)
  steps 1
  batch 8
}
`);
    const store = roundToF32(await init(run, true));
    const { grads } = await lossAndGradients(run, store, 1, true);
    for (const path of run.step.trainable) {
      const fd = await finiteDifferences(run, store, path, 1);
      expect(relErr(grads.get(path)!, fd), path).toBeLessThan(1e-6);
    }
  });

  it("reports misuse: a scalar to concat, mismatched dims, a list axis", () => {
    const concatScalars = diagnosticsOf(probe("param + concat([param[0, 0], 1.0])[0]"));
    expect(concatScalars.map((d) => d.code)).toEqual(["E0401"]);
    expect(concatScalars[0]!.message).toMatch(/not scalars/);
    const mismatch = diagnosticsOf(probe("concat([param, param[:, :1]], axis: 0)"));
    expect(mismatch.map((d) => d.code)).toContain("E0401");
    expect(mismatch[0]!.message).toMatch(/other dims differ/);
    const listAxis = diagnosticsOf(probe("cumsum(param, axis: [0, 1])"));
    expect(listAxis.map((d) => d.code)).toEqual(["E0402"]);
    expect(listAxis[0]!.text).toBe("[0, 1]");
    const long = diagnosticsOf(probe("param + sum(cumsum(zeros(9000)))"));
    expect(long.map((d) => d.code)).toEqual(["E0401"]);
    expect(long[0]!.message).toBe("`cumsum` along an axis of 9000: at most 8192");
    const notList = diagnosticsOf(probe("concat(param, axis: 0)"));
    expect(notList.map((d) => d.code)).toEqual(["E0402"]);
    expect(notList[0]!.message).toMatch(/needs a list of tensors/);
  });
});

describe("optimizer helper functions", () => {
  const program = (rule: string, members = "") => `import std.nn.{Linear}
import std.optim.{sgd}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] = l2(gelu(l1(x)))
}

optimizer helped(lr: float, beta: float = 0.9) on param: f32[...] {
  state m = zeros_like(param)
  ${members}
  // reads the state as it is at the call, and lr, step and param
  direction(g) = beta * m + g
  scaled() = lr * m + 0 * step + 0 * param
  update(g) {
    m = direction(g)
    param -= scaled()
  }
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with ${rule}
  steps 3
  batch 8
}
`;

  it("read the optimizer's state, lr, step and param as they are at the call", async () => {
    const helped = compile(program("helped(lr: 0.1, beta: 0.8)"));
    const reference = compile(program("sgd(lr: 0.1, momentum: 0.8)"));
    const a = await init(helped, true);
    const b = await init(reference, true);
    for (let t = 1; t <= 3; t++) {
      await trainStep(helped, a, t, true);
      await trainStep(reference, b, t, true);
    }
    for (const path of helped.step.trainable) expectClose(param(a, path), param(b, path), 1e-15);
  });

  it("still cannot assign the state (only `update` does)", () => {
    const d = diagnosticsOf(
      program("helped(lr: 0.1)", "reset() {\n    m = zeros_like(param)\n    return 0\n  }").replace(
        "param -= scaled()",
        "param -= scaled() + reset()",
      ),
    );
    expect(d.map((x) => x.code)).toEqual(["E0206"]);
    expect(d[0]!.text).toBe("m");
  });
});

describe("`steps` in optimizers", () => {
  const program = (optimizer: string, rule: string) => `import std.nn.{Linear}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] = l2(gelu(l1(x)))
}

${optimizer}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with ${rule}
  steps 4
  batch 8
}
`;
  const decaying = `optimizer decaying(lr: float) on param: f32[...] {
  const half = steps / 2
  update(g) {
    param -= lr * (1 - step / steps) * g + 0 * half
  }
}`;

  it("is the run's total: a linear decay to 0 over the run, hand-computed", async () => {
    const run = compile(program(decaying, "decaying(lr: 0.1)"));
    const store = await init(run, true);
    for (let t = 1; t <= 3; t++) {
      const before = run.step.trainable.map((p) => param(store, p));
      const { grads } = await trainStep(run, store, t, true);
      run.step.trainable.forEach((p, i) => {
        const g = grads.get(p)!;
        const want = before[i]!.map((w, k) => w - 0.1 * (1 - t / 4) * g[k]!);
        expectClose(param(store, p), want, 1e-12);
      });
    }
  });

  it("reaches an inner optimizer, and an optimizer's own parameter named `steps` wins", async () => {
    const own = `optimizer own(lr: float, steps: int = 2) on param: f32[...] {
  update(g) {
    param -= lr * steps * g
  }
}
optimizer outer(inner = own(lr: 0.1)) on param: f32[...] {
  update(g) {
    param -= inner.update(g) * steps
  }
}`;
    const run = compile(program(own, "outer()"));
    const store = await init(run, true);
    const before = run.step.trainable.map((p) => param(store, p));
    const { grads } = await trainStep(run, store, 1, true);
    run.step.trainable.forEach((p, i) => {
      const g = grads.get(p)!;
      // inner: 0.1 · 2 · g (its own `steps` = 2); outer: times the run's 4 steps
      expectClose(
        param(store, p),
        before[i]!.map((w, k) => w - 0.1 * 2 * g[k]! * 4),
        1e-12,
      );
    });
  });
});

describe("range, loops over it, and indexing and slicing of lists and tuples", () => {
  /** The number `expr` computes, as a top-level `const` (the resolver) and inside `update`. */
  async function valueOf(expr: string, consts = ""): Promise<{ top: number; inside: number }> {
    const text = probe("zeros_like(param) + inside() + 1000 * top").replace(
      "optimizer probe",
      `${consts}\nconst top = ${expr}\n\noptimizer probe`,
    );
    const run = compile(
      text.replace(
        "  update(g) {",
        `  inside() {\n${consts.replace(/^const /gm, "    let ")}\n    return ${expr}\n  }\n  update(g) {`,
      ),
    );
    const store = await init(run, true);
    await trainStep(run, store, 1, true);
    const v = param(store, "l1.weight")[0]!;
    // both the same: v = inside + 1000 · top
    return { top: (v - (v % 1000)) / 1000, inside: v % 1000 };
  }

  it("computes the same values at the top level and inside functions", async () => {
    const consts = "const xs = [3, 5, 7, 9]\nconst t = (10, 20, 30)";
    const cases: [string, number][] = [
      ["xs[0]", 3],
      ["xs[-1]", 9],
      ["xs[1:][0]", 5],
      ["xs[:-1][-1]", 7],
      ["xs[::2][1]", 7],
      ["xs[::-1][0]", 9],
      ["xs[-2::-2][1]", 3],
      ["t[1]", 20],
      ["t[-3]", 10],
      ["t[1:][1]", 30],
      ["range(5)[-1]", 4],
      ["range(2, 11, 3)[2]", 8],
      ["range(5, 0, -2)[1]", 3],
      ["xs[range(4)[-1]]", 9],
    ];
    for (const [expr, want] of cases) {
      const got = await valueOf(expr, consts);
      expect(got, expr).toEqual({ top: want, inside: want });
    }
  });

  it("`for i in range(n)` unrolls with i a compile-time integer (it can index a list)", async () => {
    const run = compile(
      probe(
        "param * total()",
        `  total() {
    let s = 0
    let ws = [1, 10, 100, 1000]
    for i in range(m) {
      s = s + ws[i] * i
    }
    return s
  }`,
      ),
    );
    const store = await init(run, true);
    const w1 = param(store, "l1.weight"); // m = 4: 0 + 10 + 200 + 3000
    const w2 = param(store, "l2.weight"); // m = 3: 0 + 10 + 200
    await trainStep(run, store, 1, true);
    expectClose(
      param(store, "l1.weight"),
      w1.map((x) => x * 3210),
    );
    expectClose(
      param(store, "l2.weight"),
      w2.map((x) => x * 210),
    );
  });

  it("reports an index out of range, a bad range and a bad slice, with the place", () => {
    const check = (expr: string) => {
      const top = diagnosticsOf(
        probe("param").replace("optimizer probe", `const c = ${expr}\n\noptimizer probe`),
      );
      const inside = diagnosticsOf(probe(`param + 0 * (${expr})`));
      return { top, inside };
    };
    for (const [expr, code, message, text] of [
      [
        "[1, 2, 3][3]",
        "E0402",
        "index 3 is out of range for 3 items (valid: -3 to 2), in a list",
        "3",
      ],
      [
        "(1, 2)[-3]",
        "E0402",
        "index -3 is out of range for 2 items (valid: -2 to 1), in a tuple",
        "-3",
      ],
      ["[1, 2][::0][0]", "E0402", "a slice's step must not be 0", "::0"],
      ["range(2.5)[0]", "E0402", "2.5", "2.5"],
      ["range(1, 2, 0)[0]", "E0402", "`range`'s step must not be 0", "range(1, 2, 0)"],
      ["range(100000)[0]", "E0402", "at most 4096", "range(100000)"],
      ["[1, 2][0, 1]", "E0402", "a list takes one index or one slice", "[1, 2][0, 1]"],
    ] as const) {
      const { top, inside } = check(expr);
      for (const [where, d] of [
        ["top", top],
        ["inside", inside],
      ] as const) {
        expect(
          d.map((x) => x.code),
          `${expr} (${where})`,
        ).toEqual([code]);
        expect(d[0]!.message, `${expr} (${where})`).toContain(message);
        expect(d[0]!.text, `${expr} (${where})`).toBe(text);
      }
    }
  });
});

describe("top-level functions", () => {
  const lib = `const factor = 3

// a top-level function sees its own file's top level (factor), not the caller's
scaled(x) = x * factor

clipped(x, hi: float = 1.0) {
  if hi <= 0 {
    return x
  }
  return min(x, hi)
}
`;

  it("are called from members and imported like definitions (by name and through an alias)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-topfn-"));
    writeFileSync(join(dir, "lib.lrk"), lib);
    const text = probe("clipped(scaled(twice(param)), hi: 0.5) + helpers.scaled(param)").replace(
      "optimizer probe",
      `import "./lib.lrk".{scaled, clipped}\nimport "./lib.lrk" as helpers\n\nconst factor = 100\n\ntwice(x) = 2 * x\n\noptimizer probe`,
    );
    const run = compile(text, { path: join(dir, "main.lrk") });
    const store = await init(run, true);
    const before = param(store, "l1.weight");
    await trainStep(run, store, 1, true);
    expectClose(
      param(store, "l1.weight"),
      before.map((x) => Math.min(2 * x * 3, 0.5) + x * 3),
    );
  });

  it("do not see an optimizer's per-tensor names, and clash with a definition of the same name", () => {
    const unbound = diagnosticsOf(
      probe("param + leak()").replace("optimizer probe", "leak() = grad\n\noptimizer probe"),
    );
    expect(unbound.map((d) => d.code)).toEqual(["E0204"]);
    expect(unbound[0]!.text).toBe("grad");
    const twice = diagnosticsOf(
      probe("param").replace("optimizer probe", "Net(x) = x\n\noptimizer probe"),
    );
    expect(twice.map((d) => d.code)).toContain("E0202");
  });

  it("give values while compiling in a `const` (the expression form), and the same inside functions", async () => {
    const fns =
      "half(x) = x / 2\n\ntwice(x: int, by: int = 2) = x * by\n\nconst r = half(8) + twice(3) + twice(3, by: 3)\n\n";
    const run = compile(
      probe(
        "param * 0 + r + inside()",
        "  inside() = half(8) + twice(3) + twice(3, by: 3)",
      ).replace("optimizer probe", `${fns}optimizer probe`),
    );
    const store = await init(run, true);
    await trainStep(run, store, 1, true);
    expectClose(param(store, "l1.weight"), new Array(8).fill(38)); // 4 + 6 + 9, twice
  });

  it("refuse a block body and an endless recursion while compiling", () => {
    const at = (fns: string, expr: string) =>
      diagnosticsOf(
        probe("param").replace("optimizer probe", `${fns}\n\nconst c = ${expr}\n\noptimizer probe`),
      );
    const block = at("blocky(x) {\n  return x\n}", "blocky(1)");
    expect(block.map((d) => d.code)).toEqual(["E0206"]);
    expect(block[0]!.message).toBe(
      "`blocky` has a block body: it runs inside functions, not while compiling",
    );
    const endless = at("forever(n) = forever(n + 1)", "forever(1)");
    expect(endless.map((d) => d.code)).toEqual(["E0210"]);
    expect(endless[0]!.message).toContain("64 calls deep");
  });

  it("format as written (the expression form on one line, the block form set apart)", () => {
    // `clip` is also a train setting's word: a soft keyword still names a function
    const text = `// doubled\ndouble(x) = 2 * x\n\nclip(x, hi: float = 1.0) {\n  return min(x, hi)\n}\n`;
    const parsed = parseText(text);
    expect(format(parsed.program, parsed.file)).toBe(text);
  });
});

describe("an optimizer's own learning-rate schedule", () => {
  const program = (rule: string, setting = "") => `import std.nn.{Linear}
import std.optim.{sgd, galore, adamw_hf}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] = l2(gelu(l1(x)))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize l1.weight with ${rule}
  optimize ** with sgd(lr: 0.1)
  ${setting}
  steps 6
  batch 8
}
`;
  /** runtime/schedule.ts's formula, written again: warmup, then linear or cosine decay to min_ratio. */
  const factor = (kind: string, warmup: number, minRatio: number, t: number, steps: number) => {
    if (warmup > 0 && t <= warmup) return t / warmup;
    const p = Math.min(1, (t - warmup) / (steps - warmup));
    return kind === "cosine"
      ? minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * p))
      : minRatio + (1 - minRatio) * (1 - p);
  };

  it("scales that optimizer's lr by its schedule, replacing the train block's", async () => {
    for (const kind of ["linear", "cosine"]) {
      const run = compile(
        program(`sgd(lr: 0.2, schedule: ${kind}(warmup: 2, min_ratio: 0.1))`, "schedule cosine()"),
      );
      let store = await init(run, true);
      for (let t = 1; t <= 6; t++) {
        const w1 = param(store, "l1.weight");
        const b1 = param(store, "l1.bias");
        const { grads } = await lossAndGradients(run, store, t, true);
        // the train block's factor as the runtime would feed it: 0.5 here, at every step
        const entry = { name: "step+grads", outputs: [...variantAt(run, t).outputs] };
        const out = await runEntry(run, entry, feedsFor(run, store, t, 0.5), true);
        store = new Map([...store, ...[...out].filter(([k]) => k !== "loss")]);
        const g = grads.get("l1.weight")!;
        const f = factor(kind, 2, 0.1, t, 6);
        expectClose(
          param(store, "l1.weight"),
          w1.map((x, k) => x - 0.2 * f * g[k]!),
          1e-12,
        );
        // the other rule keeps the train block's factor
        const gb = grads.get("l1.bias")!;
        expectClose(
          param(store, "l1.bias"),
          b1.map((x, k) => x - 0.1 * 0.5 * gb[k]!),
          1e-12,
        );
      }
    }
  });

  it("is computed on the host: no cosine in the step's kernels", () => {
    const run = compile(program("sgd(lr: 0.2, schedule: cosine())"));
    const scalars = run.step.hostScalars;
    expect(scalars, "host scalars").toBeDefined();
    const cos = (nodes: readonly { op: { kind: string; fn?: string } }[]) =>
      nodes.filter((n) => n.op.kind === "unary" && n.op.fn === "cos").length;
    expect(cos(scalars!.program.graph.nodes)).toBe(1);
    // the step's own entries read the packed host value instead
    const live = new Set<number>();
    const visit = (id: number) => {
      if (live.has(id)) return;
      live.add(id);
      run.step.graph.node(id).inputs.forEach(visit);
    };
    for (const entry of run.step.variants.values()) entry.outputs.forEach((o) => visit(o.node));
    expect(cos([...live].map((id) => run.step.graph.node(id)))).toBe(0);
  });

  it("reports a schedule that is not one, and an optimizer without lr", () => {
    const bad = diagnosticsOf(program("sgd(lr: 0.2, schedule: 3)"));
    expect(bad.map((d) => d.code)).toEqual(["E0402"]);
    expect(bad[0]!.text).toBe("3");
    const noLr = diagnosticsOf(program("galore(rank: 1, schedule: linear())"));
    expect(noLr.map((d) => d.code)).toEqual(["E0205"]);
    expect(noLr[0]!.message).toBe("`galore` has no `lr` for a `schedule` to scale");
  });
});

describe("an `if` on the step alone, in an optimizer's update", () => {
  const program = (body: string, steps = 4) => `import std.nn.{Linear}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] = l2(gelu(l1(x)))
}

optimizer alternating(lr: float) on param: f32[...] {
  update(g) {
${body}
  }
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with alternating(lr: 0.1)
  steps ${steps}
  batch 8
}
`;
  const alternating = program(`    if step % 2 == 0 {
      param -= lr * cos(g)
    } else {
      param -= lr * g
    }`);

  /** The unary functions an entry computes (every node its outputs depend on). */
  function unaries(run: ReturnType<typeof compile>, key: string): Set<string> {
    const live = new Set<number>();
    const visit = (id: number) => {
      if (live.has(id)) return;
      live.add(id);
      run.step.graph.node(id).inputs.forEach(visit);
    };
    run.step.variants.get(key)!.outputs.forEach((o) => visit(o.node));
    const fns = new Set<string>();
    for (const id of live) {
      const op = run.step.graph.node(id).op;
      if (op.kind === "unary") fns.add(op.fn);
    }
    return fns;
  }

  it("is decided on the host: one variant per outcome, each computing only its branch", async () => {
    const run = compile(alternating);
    expect([...run.step.variants.keys()].sort()).toEqual(["|0", "|1"]);
    expect(unaries(run, "|1").has("cos")).toBe(true);
    expect(unaries(run, "|0").has("cos")).toBe(false);
    const store = await init(run, true);
    for (let t = 1; t <= 4; t++) {
      const before = run.step.trainable.map((p) => param(store, p));
      const { grads } = await trainStep(run, store, t, true);
      run.step.trainable.forEach((p, i) => {
        const g = grads.get(p)!;
        const step = (x: number) => (t % 2 === 0 ? Math.cos(x) : x);
        expectClose(
          param(store, p),
          before[i]!.map((w, k) => w - 0.1 * step(g[k]!)),
          1e-12,
        );
      });
    }
  });

  it("finds a condition inside a branch, and keeps a condition on a tensor a select", async () => {
    const run = compile(
      program(`    if step > 2 {
      if step % 3 == 0 {
        param -= lr * g
      }
    }
    if sum(g) > 0 {
      param -= lr * sign(g)
    }`),
    );
    // step > 2, then step % 3 == 0: two conditions, four variants; sum(g) > 0 is per step on the device
    expect([...run.step.variants.keys()].sort()).toEqual(["|00", "|01", "|10", "|11"]);
    expect(run.step.conditions!.map((c) => [1, 2, 3, 4, 6].map((s) => c.holds(s)))).toEqual([
      [false, false, true, true, true],
      [false, false, true, false, true],
    ]);
    expect(unaries(run, "|00").has("sign")).toBe(true);
  });

  it("keeps a step condition it cannot evaluate on the host a select (tanh)", async () => {
    const run = compile(
      program(`    if tanh(step) > 0.9 {
      param -= lr * g
    }`),
    );
    expect(run.step.conditions).toBeUndefined();
    expect([...run.step.variants.keys()]).toEqual([""]);
    const store = await init(run, true);
    const before = run.step.trainable.map((p) => param(store, p));
    const { grads } = await trainStep(run, store, 1, true); // tanh(1) = 0.76: no step
    run.step.trainable.forEach((p, i) => expectClose(param(store, p), before[i]!));
    void grads;
  });

  it("refuses more than 6 conditions on the step (the variants would double with each)", () => {
    const body = Array.from(
      { length: 7 },
      (_, i) => `    if step % ${i + 2} == 0 {\n      param -= lr * g\n    }`,
    ).join("\n");
    const d = diagnosticsOf(program(body));
    expect(d.map((x) => x.code)).toEqual(["E0206"]);
    expect(d[0]!.message).toContain("7 conditions on `step`: at most 6");
  });
});

describe("what an optimizer reads of its tensor: shape, numel, module", () => {
  it("reads the tensor's shape and size and its module's constructor arguments", async () => {
    const run = compile(
      probe(
        "param * 0 + (100 * module.out + module.in) + 0.001 * numel + 0.0001 * shape[-1]",
      ).replace("optimizer probe() on param: f32[m, n]", "optimizer probe() on param: f32[...]"),
    );
    const store = await init(run, true);
    await trainStep(run, store, 1, true);
    // l1 = Linear(2, 4): weight f32[4, 2]; l2 = Linear(4, 3): weight f32[3, 4]
    expectClose(param(store, "l1.weight"), new Array(8).fill(402 + 0.008 + 0.0002), 1e-6);
    expectClose(param(store, "l2.weight"), new Array(12).fill(304 + 0.012 + 0.0004), 1e-6);
  });

  it("names the module's arguments when one is misspelled", () => {
    const d = diagnosticsOf(probe("param * module.width"));
    expect(d.map((x) => x.code)).toEqual(["E0207"]);
    expect(d[0]!.message).toBe("the module `Linear` at `l1` has no field `width`");
    expect(d[0]!.text).toBe("width");
  });

  it("an optimizer's own parameter or dim of that name wins", async () => {
    const run = compile(
      probe("param * 0 + shape + numel")
        .replace("optimizer probe()", "optimizer probe(shape: float = 0.5)")
        .replace("on param: f32[m, n]", "on param: f32[numel, n]"),
    );
    const store = await init(run, true);
    await trainStep(run, store, 1, true);
    expectClose(param(store, "l1.weight"), new Array(8).fill(4.5));
  });
});

describe("step variants across a resume", () => {
  it("a run stopped after step 2 and resumed gives the uninterrupted run's losses and weights (TRP, period 2)", async () => {
    // TRP as an optimizer whose truncation is an `if` on the step (std.optim's `trp` truncates in
    // an action instead)
    const run = compile(`import std.nn.{Linear}

${moons}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 3)

  forward(x: f32[B, 2]) -> f32[B, 3] = l2(gelu(l1(x)))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize **.weight with truncating(lr: 0.2, energy: 0.8, period: 2)
  optimize ** with trp_free_sgd()
  steps 5
  batch 8
}

optimizer truncating(
  lr: float,
  momentum: float = 0.9,
  weight_decay: float = 1e-4,
  nuclear_weight: float = 3e-4,
  energy: float = 0.9,
  period: int = 1,
  svd_iterations: int = 2,
) on param: f32[m, n] {
  const k = min(m, n)
  const small_enough = require(
    k <= 256,
    "TRP takes the full SVD of a {m} x {n} matrix: at most 256 singular vectors",
  )
  state buf = zeros_like(param)
  // U_k V_kᵀ of the last truncation, for the step that trains at the truncated weight
  state subgradient = zeros_like(param)

  update(g) {
    let d = g + weight_decay * param
    if step > 1 and (step - 1) % period == 0 {
      d = d + nuclear_weight * subgradient
    }
    buf = momentum * buf + d
    param -= lr * buf
    if step % period == 0 {
      let U = svd_left(param, k, iterations: svd_iterations, oversample: 0)
      let rows = U^T @ param // row i is σ_i v_iᵀ
      let sigma = row_norm(rows)
      let e = sigma * sigma
      let keep = f32(cumsum(e) - e < energy * sum(e))
      param = U @ (reshape(keep, [k, 1]) * rows)
      subgradient = U @ (reshape(where(keep > 0, 1 / sigma, 0), [k, 1]) * rows)
    }
  }
}

optimizer trp_free_sgd(lr: float = 0.1) on param: f32[...] {
  update(g) {
    if step % 3 == 0 {
      param -= lr * g
    }
  }
}
`);
    // the truncation's two (regularize, truncate) and `step % 3 == 0`: eight variants, by step
    expect(run.step.conditions!.length).toBe(3);
    const device = new CpuDevice({ float64: true });
    const whole = await train(run, device, { steps: 5 });
    const first = await train(run, device, { steps: 2 });
    const rest = await train(run, device, { steps: 5, resume: { step: 2, store: first.store } });
    expect([...first.losses, ...rest.losses]).toEqual(whole.losses);
    for (const [name, t] of whole.store)
      if (!name.startsWith("batch."))
        expect(Array.from(rest.store.get(name)!.data), name).toEqual(Array.from(t.data));
  });
});
