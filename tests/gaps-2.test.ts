// Two gaps closed: a budget's `observe` `if` on the step alone is decided on the host (one step
// variant per outcome, only the taken branch computed), as an optimizer's; and `module` in an
// optimizer on an adapter's tensor holds the wrapped module's `in` and `out` beside the adapter's
// own arguments.
import { describe, expect, it } from "vitest";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import { SourceFile } from "../language/source.js";
import { compile, init, lossAndGradients, param, prepare } from "./program-helpers.js";

const program = (budget: string, rules: string, extra = "") => `import std.nn.{Linear}
import std.optim.{sgd}
import std.adapters.{lora}

data moons = std.data.two_moons(n: 64, seed: 3)
${extra}
budget counted on lora {
  state hits = zeros(1)
  state seen = zeros(1)
  observe() {
    seen = seen + 1
    ${budget}
  }
  score = zeros(2)
  prune_at(t) = false
  keep(t) = units
  prune(kept) {
    B = B
  }
}

model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l2(tanh(l1(x)))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l1 with lora(rank: 2)
${rules}
  steps 5
  batch 8
}
`;

const budgetRules = `  optimize adapters with sgd(lr: 0.1)
  budget rank 4 over l1 by counted`;

describe("a budget's observe `if` on the step", () => {
  it("is decided on the host: one variant per outcome, the branch taken only at its steps", async () => {
    const run = compile(
      program(
        `if step % 2 == 0 {
      hits = hits + 10 * fro(B)
    }`,
        budgetRules,
      ),
    );
    expect(run.step.conditions?.length).toBe(1);
    expect([...run.step.variants.values()].map((v) => v.name).sort()).toEqual([
      "step+if0",
      "step+if1",
    ]);
    // the untaken variant computes no `fro(B)`: its `hits` output is the state input itself
    const plain = run.step.variants.get("|0")!;
    const hits = plain.outputs.find((o) => o.name === "state:l1:counted:hits")!;
    expect(run.step.graph.node(hits.node).op.kind).toBe("input");
    // by hand: fro(B) after the update of steps 2 and 4, summed ×10
    const device = new CpuDevice({ float64: true });
    let expected = 0;
    let store = await init(run, true);
    for (let s = 1; s <= 4; s++) {
      store = (await train(run, device, { steps: s, resume: { step: s - 1, store } })).store;
      if (s % 2 === 0) expected += 10 * Math.hypot(...param(store, "l1.lora.B"));
    }
    expect(store.get("state:l1:counted:seen")!.data[0]).toBe(4);
    expect(store.get("state:l1:counted:hits")!.data[0]).toBeCloseTo(expected, 12);
  });
});

describe("`module` in an optimizer on an adapter's tensor", () => {
  it("holds the wrapped module's `in` and `out` and the adapter's arguments", async () => {
    const extra = `
optimizer per_dim(lr: float) {
  update(g) {
    param -= lr * g * (module.in + 10 * module.out + 100 * module.rank)
  }
}
`;
    const run = compile(program("", `  optimize adapters with per_dim(lr: 0.001)`, extra));
    const device = new CpuDevice({ float64: true });
    const start = await init(run, true);
    const { grads } = await lossAndGradients(run, start, 1, true);
    const after = (await train(run, device, { steps: 1 })).store;
    const factor = 2 + 10 * 4 + 100 * 2; // l1 = Linear(2, 4), rank 2
    for (const path of ["l1.lora.A", "l1.lora.B"]) {
      const before = param(start, path);
      const now = param(after, path);
      const g = grads.get(path)!;
      now.forEach((v, i) => expect(v).toBeCloseTo(before[i]! - 0.001 * g[i]! * factor, 12));
    }
  });
});

describe("a definition's failed `require`", () => {
  it("is the only error of its instance (no follow-on error from the members after it)", () => {
    const text = `import std.nn.{Linear}
import std.optim.{sgd}
import std.adapters.{pela}

data moons = std.data.two_moons(n: 64, seed: 3)

model Net {
  l1 = Linear(2, 4)
  forward(x: f32[B, 2]) -> f32[B, 4] = l1(x)
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  adapt l1 with pela(ratio: 2)
  optimize ** with sgd(lr: 0.1)
}
`;
    const { diagnostics } = prepare(new SourceFile("t.lrk", text));
    expect(diagnostics.filter((d) => d.severity === "error").map((d) => d.code)).toEqual(["E0205"]);
  });
});
