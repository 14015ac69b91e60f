// FRUGAL's block variant (std.optim.frugal_block) and the `group` an optimizer reads (its place
// among the tensors of one `optimize` rule), against a float64 TypeScript reference written here
// from the paper's update and the reference code's order of operations: five steps across three
// windows, for each block order, on the CPU interpreter. The random order's draw is recomputed
// here from the generator's definition (runtime/random.ts: hash32, uniformAt).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { RunFolder } from "../runtime/run-folder.js";
import { train } from "../runtime/trainer.js";
import { hash32, uniformAt } from "../runtime/random.js";
import { compile, init, param, prepare, trainStep } from "./program-helpers.js";
import { expectAllClose, root } from "./helpers.js";

const layers = [
  { path: "l1.weight", numel: 3 * 2 },
  { path: "l2.weight", numel: 4 * 3 },
  { path: "l3.weight", numel: 2 * 4 },
] as const;

function program(rule: string, imports = "import std.optim.{frugal_block}"): string {
  return `import std.nn.{Linear}
${imports}

data moons = std.data.two_moons(n: 64, seed: 2)

model Net {
  l1 = Linear(2, 3)
  l2 = Linear(3, 4)
  l3 = Linear(4, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **.bias
  optimize l1.weight, l2.weight, l3.weight with ${rule}
  steps 10
  batch 8
  seed 5
}
`;
}

/** The indices active in window `w` (from 0) of N tensors with k active, as the header says. */
function activeSet(order: string, w: number, N: number, k: number, seed: number): Set<number> {
  if (order === "random") {
    const s = hash32(seed, w);
    const u = Array.from({ length: N }, (_, i) => uniformAt(s, i));
    const ranked = u.map((x, i) => [x, i] as const).sort((a, b) => b[0] - a[0]);
    return new Set(ranked.slice(0, k).map(([, i]) => i));
  }
  const set = new Set<number>();
  if (order === "mirror") {
    // the reference's loop: idx from (w · k/2) mod H on, k/2 of them, each with its mirror image
    const H = Math.floor(N / 2);
    const start = (w * (k / 2)) % H;
    for (let idx = start; idx < start + k / 2; idx++) {
      set.add(idx % H);
      set.add(N - 1 - (idx % H));
    }
    return set;
  }
  for (let i = 0; i < N; i++) {
    const position = order === "descending" ? N - 1 - i : i;
    const offset = (((position - w * k) % N) + N) % N;
    if (offset < k) set.add(i);
  }
  return set;
}

describe("FRUGAL (blocks)", () => {
  const h = { lr: 0.05, beta1: 0.8, beta2: 0.9, eps: 1e-8, wd: 0.1, sp: 0.5, si: 0.2, period: 2 };
  // round(0.5 · 3) = 2 (1.5, to even)
  const k = 2;

  for (const order of ["ascending", "descending", "random", "mirror"]) {
    it(`five steps across three windows, order ${order}: AdamW (restarted) on the active, signSGD on the rest`, async () => {
      const seed = 11;
      const run = compile(
        program(
          `frugal_block(lr: ${h.lr}, density: 0.5, period: ${h.period}, order: "${order}", seed: ${seed}, beta1: ${h.beta1}, beta2: ${h.beta2}, weight_decay: ${h.wd}, proj_lr_scale: ${h.sp}, inactive_lr_scale: ${h.si})`,
        ),
      );
      expect(run.step.trainable).toEqual(layers.map((l) => l.path));
      const store = await init(run, true);
      const moments = layers.map((l) => ({
        M: new Float64Array(l.numel),
        V: new Float64Array(l.numel),
      }));
      const seen = new Set<string>();
      for (let t = 1; t <= 5; t++) {
        const w = Math.floor((t - 1) / h.period);
        const active = activeSet(order, w, layers.length, k, seed);
        expect(active.size).toBe(k);
        seen.add([...active].sort().join(","));
        const before = layers.map((l) => param(store, l.path));
        const { grads } = await trainStep(run, store, t, true);
        layers.forEach((l, i) => {
          const G = grads.get(l.path)!;
          const W = before[i]!;
          const j = ((t - 1) % h.period) + 1;
          const s = moments[i]!;
          if (j === 1) {
            s.M.fill(0);
            s.V.fill(0);
          }
          const want = new Float64Array(l.numel);
          for (let e = 0; e < l.numel; e++) {
            const g = G[e]!;
            s.M[e] = h.beta1 * s.M[e]! + (1 - h.beta1) * g;
            s.V[e] = h.beta2 * s.V[e]! + (1 - h.beta2) * g * g;
            const decayed = W[e]! * (1 - h.lr * h.wd);
            const size = (h.lr * h.sp) / (1 - h.beta1 ** j);
            const adam =
              (size * s.M[e]!) / (Math.sqrt(s.V[e]!) / Math.sqrt(1 - h.beta2 ** j) + h.eps);
            const signed = h.lr * h.sp * h.si * Math.sign(g);
            want[e] = decayed - (active.has(i) ? adam : signed);
          }
          expectAllClose(
            param(store, l.path),
            want,
            1e-9,
            `${l.path} after step ${t} (${active.has(i) ? "active" : "inactive"})`,
          );
        });
      }
      // the windows activated different sets (else the order would be untested); of three
      // tensors, mirror can only pair the first and the last (its six-tensor test moves them)
      if (order !== "mirror") expect(seen.size).toBeGreaterThan(1);
    });
  }

  it("declares Adam's two moments per tensor at full shape (2 · Σ numel in the IR; pooled: tests/pool.test.ts)", () => {
    const run = compile(program("frugal_block(lr: 0.1)"));
    const got = new Map<string, number>();
    for (const s of run.step.states) {
      const path = s.name.split(":")[0]!;
      got.set(path, (got.get(path) ?? 0) + s.shape.reduce((a, d) => a * d, 1));
    }
    for (const l of layers) expect(got.get(l.path), l.path).toBe(2 * l.numel);
  });

  it("selects per tensor: no step variant per tensor's activity", () => {
    const run = compile(program('frugal_block(lr: 0.1, period: 2, order: "ascending")'));
    // one variant per due refresh of the moments (steps 1, 3, …) and one for the other steps
    expect([...run.step.variants.keys()].sort()).toEqual(["", "2"]);
  });

  for (const stop of [3, 5]) {
    it(`resumed from a checkpoint after step ${stop} (${stop === 3 ? "the next step starts a window" : "mid-window"}), equals the uninterrupted run`, async () => {
      const run = compile(
        program('frugal_block(lr: 0.05, density: 0.5, period: 3, order: "random")'),
      );
      const device = new CpuDevice({ float64: true });
      const whole = await train(run, device);
      const dir = mkdtempSync(join(tmpdir(), "lrk-frugal-block-"));
      try {
        const folder = new RunFolder(dir);
        let steps = 0;
        await train(run, device, {
          shouldStop: () => ++steps === stop,
          onCheckpoint: (s, store) => folder.saveCheckpoint(s, store, {}, { floats: "F64" }),
        });
        const { step, store } = folder.loadCheckpoint(run.program);
        expect(step).toBe(stop);
        const resumed = await train(run, device, { resume: { step, store } });
        expect(resumed.losses).toEqual(whole.losses.slice(stop));
        for (const [name, t] of whole.store)
          expect([...resumed.store.get(name)!.data], name).toEqual([...t.data]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  for (const float64 of [true, false])
    it(`trains bit-identically to its mask formulation before pooling (${float64 ? "float64" : "f32"}, every order)`, async () => {
      const mask = readFileSync(join(root, "tests", "fixtures", "frugal-block-mask.lrk"), "utf8");
      for (const order of ["ascending", "descending", "random", "mirror"]) {
        const args = `lr: 0.05, density: 0.5, period: 2, order: "${order}", seed: 4, weight_decay: 0.1`;
        const stores = [];
        for (const rule of [`frugal_block(${args})`, `frugal_block_mask(${args})`]) {
          const run = compile(program(rule, `import std.optim.{frugal_block}\n${mask}`));
          const store = await init(run, float64);
          for (let t = 1; t <= 5; t++) await trainStep(run, store, t, float64);
          stores.push(store);
        }
        for (const l of layers)
          expect([...param(stores[0]!, l.path)], `${order} ${l.path}`).toEqual([
            ...param(stores[1]!, l.path),
          ]);
      }
    });

  it("refuses an order it does not know, at the user's call", () => {
    const { diagnostics } = prepare(
      new SourceFile("test.lrk", program(`frugal_block(lr: 0.1, order: "spiral")`)),
    );
    const errors = diagnostics.filter((d) => d.severity === "error");
    expect(errors.map((d) => d.code)).toEqual(["E0205"]);
    expect(errors[0]!.message).toContain('not "spiral"');
  });

  it("refuses the mirror order with an odd number of active tensors (they come in pairs)", () => {
    // round(0.3 · 3) = 1
    const { diagnostics } = prepare(
      new SourceFile("test.lrk", program(`frugal_block(lr: 0.1, density: 0.3, order: "mirror")`)),
    );
    const errors = diagnostics.filter((d) => d.severity === "error");
    expect(errors.map((d) => d.code)).toEqual(["E0205"]);
    expect(errors[0]!.message).toContain("= 1 is odd");
  });

  it("mirror order: tensor pairs i and N − 1 − i, moving as the reference's loop, over six tensors", async () => {
    // weights and biases of three layers: N = 6, k = round(0.66 · 6) = 4, H = 3, two pairs a window
    const text = program(
      'frugal_block(lr: 0.01, density: 0.66, period: 2, order: "mirror", weight_decay: 0, inactive_lr_scale: 0.2)',
    )
      .replace("freeze **.bias\n", "")
      .replace("optimize l1.weight, l2.weight, l3.weight", "optimize **");
    const run = compile(text);
    const paths = run.step.trainable;
    expect(paths).toEqual(["l1.weight", "l1.bias", "l2.weight", "l2.bias", "l3.weight", "l3.bias"]);
    const store = await init(run, true);
    const windows: number[][] = [];
    for (let t = 1; t <= 7; t++) {
      const before = paths.map((p) => param(store, p));
      await trainStep(run, store, t, true);
      if (t % 2 === 0) continue;
      // an inactive tensor moved by exactly 0.2 · lr per element; an active one by about lr
      const active = paths.flatMap((p, i) => {
        const moved = param(store, p).map((x, e) => Math.abs(x - before[i]![e]!));
        return moved.some((d) => Math.abs(d - 0.002) > 1e-9) ? [i] : [];
      });
      windows.push(active);
    }
    const reference = [0, 1, 2, 3].map((w) => [...activeSet("mirror", w, 6, 4, 0)].sort());
    // starts 0, 2, 1, 0: {0, 1} and {4, 5}; {2, 0} and {3, 5}; {1, 2} and {4, 3}; again the first
    expect(reference).toEqual([
      [0, 1, 4, 5],
      [0, 2, 3, 5],
      [1, 2, 3, 4],
      [0, 1, 4, 5],
    ]);
    expect(windows).toEqual(reference);
  });
});

describe("an optimizer's group", () => {
  it("is its tensor's index among the rule's tensors, in the model's order, and their number", async () => {
    const text = program(
      "ranked(lr: 0.1)",
      `optimizer ranked(lr: float) on param: f32[...] {
  update(g) {
    param -= lr * (group.index + 1) / group.size * g
  }
}`,
    );
    const run = compile(text);
    const store = await init(run, true);
    const before = layers.map((l) => param(store, l.path));
    const { grads } = await trainStep(run, store, 1, true);
    layers.forEach((l, i) => {
      const G = grads.get(l.path)!;
      const want = before[i]!.map((x, e) => x - ((0.1 * (i + 1)) / 3) * G[e]!);
      expectAllClose(param(store, l.path), want, 1e-12, l.path);
    });
  });
});
