// Step conditions on seeded draws (compiler/step-conditions.ts): an optimizer's `if` whose
// condition reads `uniform([n], seed:, key: f(step))` (through `topk_mask` and indexing) is
// decided on the host, with the generator the kernels reproduce (runtime/random.ts), and the step
// program has a variant per outcome; past the limit on conditions a draw is selected per element
// on the device, as before. Each run is checked against a float64 reference written here.
import { describe, expect, it } from "vitest";
import { hash32, uniformAt } from "../runtime/random.js";
import { compile, init, param, trainStep } from "./program-helpers.js";
import { expectAllClose } from "./helpers.js";

/** A net of `layers` Linear(2, 2) layers, its weights and biases all trained by `optimizer`. */
function program(optimizer: string, layers: number): string {
  const names = Array.from({ length: layers }, (_, i) => `l${i}`);
  return `import std.nn.{Linear}

data moons = std.data.two_moons(n: 64, seed: 2)

${optimizer}

model Net {
${names.map((n) => `  ${n} = Linear(2, 2)`).join("\n")}

  forward(x: f32[B, 2]) -> f32[B, 2] = ${names.reduce((x, n) => `${n}(gelu(${x}))`, "x")}
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with picked(lr: 0.1)
  steps 10
  batch 8
  seed 5
}
`;
}

/** Runs `steps` steps, checking each tensor against W -= factor(t, i) · lr · G in float64. */
async function expectSteps(
  text: string,
  steps: number,
  factor: (step: number, tensor: number) => number,
): Promise<string[]> {
  const run = compile(text);
  const store = await init(run, true);
  for (let t = 1; t <= steps; t++) {
    const before = run.step.trainable.map((p) => param(store, p));
    const { grads } = await trainStep(run, store, t, true);
    run.step.trainable.forEach((p, i) => {
      const G = grads.get(p)!;
      const want = before[i]!.map((w, e) => w - factor(t, i) * 0.1 * G[e]!);
      expectAllClose(param(store, p), want, 1e-12, `${p} after step ${t}`);
    });
  }
  return [...run.step.variants.keys()].sort();
}

describe("step conditions on seeded draws", () => {
  it("decides `if uniform(…, key: step)[i] < c` on the host: one variant per outcome", async () => {
    const optimizer = `optimizer picked(lr: float) on param: f32[...] {
  update(g) {
    if uniform([4], seed: 3, key: step)[1] < 0.5 {
      param -= lr * g
    } else {
      param -= 3 * lr * g
    }
  }
}`;
    const coin = (t: number) => uniformAt(hash32(3, t), 1) < 0.5;
    const outcomes = new Set([1, 2, 3, 4, 5, 6].map(coin));
    expect(outcomes.size).toBe(2); // both branches are taken in these steps
    const variants = await expectSteps(program(optimizer, 2), 6, (t) => (coin(t) ? 1 : 3));
    // the same condition in every tensor's update is one condition
    expect(variants).toEqual(["|0", "|1"]);
  });

  it("decides a per-tensor choice (topk_mask of a draw, indexed by group.index) per tensor", async () => {
    const optimizer = `optimizer picked(lr: float) on param: f32[...] {
  update(g) {
    let window = floor((step - 1) / 2)
    if topk_mask(uniform([group.size], seed: 7, key: window), 2)[group.index] == 1 {
      param -= lr * g
    } else {
      param -= 0.5 * lr * g
    }
  }
}`;
    const chosen = (t: number, i: number) => {
      const s = hash32(7, Math.floor((t - 1) / 2));
      const u = [0, 1, 2, 3].map((j) => uniformAt(s, j));
      const rank = u.filter((x, j) => x > u[i]! || (x === u[i]! && j < i)).length;
      return rank < 2;
    };
    // two layers: four tensors, four conditions, sixteen variants
    const variants = await expectSteps(program(optimizer, 2), 6, (t, i) =>
      chosen(t, i) ? 1 : 0.5,
    );
    expect(variants).toHaveLength(16);
  });

  it("past the limit on conditions, selects a draw per element on the device, as before", async () => {
    const optimizer = `optimizer picked(lr: float) on param: f32[...] {
  update(g) {
    if uniform([group.size], seed: 5, key: step)[group.index] < 0.5 {
      param -= lr * g
    } else {
      param -= 2 * lr * g
    }
  }
}`;
    const coin = (t: number, i: number) => uniformAt(hash32(5, t), i) < 0.5;
    // four layers: eight tensors, one condition each: six are decided on the host, two selected
    const variants = await expectSteps(program(optimizer, 4), 3, (t, i) => (coin(t, i) ? 1 : 2));
    expect(variants).toHaveLength(64);
  });
});
