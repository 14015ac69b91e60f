// NExt (arXiv 2604.11446) in std.adapters: `next_lora` records the top singular triples of the
// global and local LoRA deltas every `period` steps, with the factor trajectory, in adapter
// states; `next_extrapolate` rebuilds θ_T + c · σ̂ û v̂ᵀ. Both checked by hand in float64 (a power
// iteration written here), and the recording on WebGPU.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { root } from "./helpers.js";
import { lowRankDelta, topTriple, tripleProduct } from "./next-helpers.js";
import { compile, expectTrainsAlike, init, param, type Store } from "./program-helpers.js";

const OUT = 3;
const IN = 4;
const RANK = 2;
const ALPHA = 3;

const program = (extra = "", rules = "") => `import std.nn.{Linear}
import std.optim.{sgd}
import std.adapters.{next_lora, next_extrapolate}

data moons = std.data.two_moons(n: 64, seed: 3)
${extra}
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
${
  rules ||
  `  adapt l2 with next_lora(rank: ${RANK}, alpha: ${ALPHA}, period: 2, records: 3, horizon: 1)
  optimize adapters with sgd(lr: 0.5)`
}
  steps 6
  batch 8
}
`;

const values = (store: ReadonlyMap<string, Tensor>, name: string): number[] => {
  const t = store.get(name);
  if (!t) throw new Error(`no \`${name}\``);
  return Array.from(t.data);
};

/** s · B A, [OUT][IN]. */
const delta = (store: Store): number[][] =>
  lowRankDelta(param(store, "l2.next_lora.B"), param(store, "l2.next_lora.A"), {
    out: OUT,
    rank: RANK,
    in: IN,
    scale: ALPHA / RANK,
  });

/** The recorded [u, σ, v] as σ u vᵀ. */
function recordedProduct(triple: number[]): { sigma: number; product: number[][] } {
  const { sigma, v, product } = tripleProduct(triple, OUT);
  expect(v).toHaveLength(IN);
  return { sigma, product };
}

function expectSameTriple(recorded: number[], d: number[][]): void {
  const want = topTriple(d);
  const got = recordedProduct(recorded);
  expect(got.sigma).toBeCloseTo(want.sigma, 8);
  got.product.forEach((row, o) =>
    row.forEach((x, i) => expect(x).toBeCloseTo(want.product[o]![i]!, 8)),
  );
}

describe("next_lora's recording", () => {
  it("keeps the global and local deltas' top triples and the factors of the last records", async () => {
    const run = compile(program());
    const device = new CpuDevice({ float64: true });
    let store = await init(run, true);
    const stores: Store[] = [store];
    for (let s = 1; s <= 6; s++) {
      store = (await train(run, device, { steps: s, resume: { step: s - 1, store } })).store;
      stores.push(store);
    }
    const state = (name: string) => values(store, `state:l2.next_lora:${name}`);
    expect(state("recorded")).toEqual([3]);
    const triple = OUT + 1 + IN;
    const features = state("features");
    const trajectory = state("trajectory");
    const width = RANK * (OUT + IN);
    // rows oldest first: the records after steps 2, 4 and 6
    [2, 4, 6].forEach((t, row) => {
      const global = features.slice(row * 2 * triple, row * 2 * triple + triple);
      const local = features.slice(row * 2 * triple + triple, (row + 1) * 2 * triple);
      const now = delta(stores[t]!);
      const before = t === 2 ? now.map((r) => r.map(() => 0)) : delta(stores[t - 2]!);
      expectSameTriple(global, now);
      expectSameTriple(
        local,
        now.map((r, o) => r.map((x, i) => x - before[o]![i]!)),
      );
      const factors = [
        ...param(stores[t]!, "l2.next_lora.B"),
        ...param(stores[t]!, "l2.next_lora.A"),
      ];
      expect(trajectory.slice(row * width, (row + 1) * width)).toEqual(factors);
    });
    expect(state("global")).toEqual(features.slice(4 * triple, 5 * triple));
    expect(state("local")).toEqual(features.slice(5 * triple));
    // after 4 steps, the oldest row is still empty
    const early = values(stores[4]!, "state:l2.next_lora:features");
    expect(early.slice(0, 2 * triple).every((x) => x === 0)).toBe(true);
  });

  it("refuses fewer than 2 records (E0205)", () => {
    expect(() =>
      compile(
        program(
          "",
          `  adapt l2 with next_lora(rank: 2, records: 1)
  optimize adapters with sgd(lr: 0.5)`,
        ),
      ),
    ).toThrow(/E0205: NExt keeps at least 2 records, not 1/);
  });
});

describe("next_extrapolate", () => {
  it("adds c · σ û v̂ᵀ with û, v̂ normalized", async () => {
    // an adapter whose action extrapolates its base weight along fixed triples at step 2
    const extra = `
adapter pushed on Linear(in, out) {
  const u = normal([out], seed: 1)
  const v = normal([in], seed: 2)
  param bias_shift: f32[out] = zeros
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + bias_shift
  at step 2 {
    base.weight = next_extrapolate(base.weight, u, 0.75, v, 2.5)
  }
}
`;
    const run = compile(
      program(
        extra,
        `  adapt l2 with pushed
  optimize adapters with sgd(lr: 0.5)`,
      ),
    );
    const device = new CpuDevice({ float64: true });
    const start = await init(run, true);
    const one = (await train(run, device, { steps: 1 })).store;
    const two = (await train(run, device, { steps: 2 })).store;
    expect(param(one, "l2.weight")).toEqual(param(start, "l2.weight"));
    const u = values(start, "buffer:l2.pushed.u");
    const v = values(start, "buffer:l2.pushed.v");
    const nu = Math.hypot(...u);
    const nv = Math.hypot(...v);
    const w0 = param(start, "l2.weight");
    const w2 = param(two, "l2.weight");
    for (let o = 0; o < OUT; o++)
      for (let i = 0; i < IN; i++)
        expect(w2[o * IN + i]).toBeCloseTo(
          w0[o * IN + i]! + 2.5 * 0.75 * (u[o]! / nu) * (v[i]! / nv),
          12,
        );
  });
});

describe("next_lora on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  it("records as the interpreter does", async () => {
    await expectTrainsAlike(device, compile(program()), 6, 1e-3);
  }, 60_000);
  it("trains examples/next_lora_finetune.lrk (at d 16) as the interpreter does", async () => {
    const path = join(root, "examples", "next_lora_finetune.lrk");
    const text = readFileSync(path, "utf8")
      .replace(/\n\s*init "[^"]*".*/, "")
      .replace("TinyLM(vocab: sub.vocab)", "TinyLM(vocab: sub.vocab, d: 16, heads: 2)");
    expect(text).toContain("d: 16");
    await expectTrainsAlike(device, compile(text, { path, batch: 2 }), 2, 1e-3);
  }, 300_000);
});

describe("next_lora's size", () => {
  it("trains LoRA's rank · (in + out) numbers per module", () => {
    const run = compile(program());
    const trained = run.placement.params.filter((p) => p.origin === "adapter" && p.trainable);
    expect(trained.reduce((n, p) => n + p.param.shape.reduce((a, d) => a * d, 1), 0)).toBe(
      RANK * (IN + OUT),
    );
  });
});

describe("next_lora with a zero delta", () => {
  it("records σ = 0 and finite numbers (B still 0: nothing trained yet)", async () => {
    const run = compile(
      program(
        "",
        `  adapt l2 with next_lora(rank: 2, period: 2, records: 3, horizon: 1)
  optimize adapters with sgd(lr: 0)`,
      ),
    );
    const { store } = await train(run, new CpuDevice({ float64: true }), { steps: 2 });
    const global = values(store, "state:l2.next_lora:global");
    expect(global.every(Number.isFinite), String(global)).toBe(true);
    expect(global[OUT]).toBe(0);
  });
});
