// SwitchLoRA (std.adapters `switchlora` + std.optim `switchlora_adamw`, Zhou, Wang, Xu 2024): the
// switch between the backward pass and the update, checked against a float64 reference written
// here with plain loops after the official code's order (the W compensation at the start, the
// swap with the candidate pools, the frozen counterparts, the per-row and per-column Adam steps);
// the parameter and state counts; a run stopped after a switching step and resumed; WebGPU.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { memoryReport } from "../compiler/memory.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { hash32, uniformAt } from "../runtime/random.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { root } from "./helpers.js";
import { expectSameTensors, killAndResume, stopAndResume } from "./resume-helpers.js";
import {
  compile,
  copyStore,
  expectTrainsAlike,
  init,
  loadOnGpu,
  param,
  prepare,
  type Store,
  trainStep,
} from "./program-helpers.js";

/** The adapted layer: Linear(8, 6) with rank 4, so 6 candidates per factor and 2 spare. */
const [IN, OUT, RANK] = [8, 6, 4];
const LR = 0.05;
const WD = 0.1;
const INTERVAL = 4;
const WARM = 2;
const DESCENT = 10;
const STEPS = 6;

export const program = (options: { steps?: number; extra?: string } = {}) => `import std.nn.{Linear}
import std.adapters.{switchlora}
import std.optim.{switchlora_adamw, adamw}

data moons = std.data.two_moons(n: 64, seed: 3)

model Net {
  l1 = Linear(2, ${IN})
  l2 = Linear(${IN}, ${OUT})
  l3 = Linear(${OUT}, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l3(gelu(l2(gelu(l1(x)))))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze l2.weight
  adapt l2 with switchlora(rank: ${RANK})
  optimize adapters with switchlora_adamw(lr: ${LR}, interval: ${INTERVAL}, warm_steps: ${WARM}, descent_rate: ${DESCENT}, weight_decay: ${WD})
  optimize ** with adamw(lr: 0.01)
  steps ${options.steps ?? STEPS}
  batch 8
  seed 5
${options.extra ?? ""}}
`;

const at = (a: Float64Array, cols: number, i: number, j: number) => a[i * cols + j]!;
const pymod = (x: number, n: number) => ((x % n) + n) % n;

/** One step of the official switch + StepAdamW, from the stored values before it and the gradients. */
function reference(before: Store, gA: Float64Array, gB: Float64Array, t: number) {
  const get = (name: string) => Float64Array.from(before.get(name)!.data);
  const W = get("param:l2.weight");
  const A = get("param:l2.switchlora.A");
  const B = get("param:l2.switchlora.B");
  const poolA = get("state:l2.switchlora:pool_A");
  const poolB = get("state:l2.switchlora:pool_B");
  const oldPoolA = Float64Array.from(poolA);
  const oldPoolB = Float64Array.from(poolB);
  const s = 1 / RANK;
  const c = Math.min(IN, OUT);
  const half = Math.floor(RANK / 2);
  const st = (n: string) => get(`state:l2.switchlora:${n}`);
  const [mA, vA, tA, mB, vB, tB] = ["m_A", "v_A", "t_A", "m_B", "v_B", "t_B"].map(st);
  const frozenA = st("frozen_A"); // per row of A (the reference's fixed_A_steps)
  const frozenB = st("frozen_B"); // per column of B
  const k = st("switched")[0]!;
  // replace_num = stochastic_round(r / interval(t)), capped by the free slots
  const decay = 0.3 ** (1 / (DESCENT * STEPS));
  const wanted = (RANK * Math.max(decay ** t, 1e-8)) / INTERVAL;
  const u = uniformAt(hash32(0, t), Math.floor(st("draw")[0]!));
  let n = Math.floor(wanted) + (u < wanted - Math.floor(wanted) ? 1 : 0);
  const fa = frozenA.filter((x) => x > 0).length;
  const fb = frozenB.filter((x) => x > 0).length;
  n = Math.min(n, pymod(RANK - half - fa, RANK), pymod(half - fb, RANK));
  const fBefore = (q: number) => {
    // W + s B A, the function before the switch
    const out = new Float64Array(OUT * IN);
    for (let o = 0; o < OUT; o++)
      for (let i = 0; i < IN; i++) {
        let sum = at(W, IN, o, i);
        for (let j = 0; j < RANK; j++) sum += s * at(B, RANK, o, j) * at(A, IN, j, i);
        out[o * IN + i] = sum;
      }
    return out[q]!;
  };
  const functionBefore = Array.from({ length: OUT * IN }, (_, q) => fBefore(q));
  // A's rows k, …: W += s B[:, i] (A[i, :] - a), the old row back to its slot, B's column frozen
  for (let j = 0; j < n; j++) {
    const row = (k + j) % RANK;
    const slot = (k + j) % c;
    const back = pymod(k + j - RANK, c);
    for (let o = 0; o < OUT; o++)
      for (let i = 0; i < IN; i++)
        W[o * IN + i] += s * at(B, RANK, o, row) * (at(A, IN, row, i) - at(oldPoolA, IN, slot, i));
    for (let i = 0; i < IN; i++) {
      poolA[back * IN + i] = at(A, IN, row, i);
      A[row * IN + i] = at(oldPoolA, IN, slot, i);
    }
    frozenB[row] = WARM;
  }
  // B's columns k + rank/2, …, with the A just switched: W += s (B[:, i] - b) A[i, :]
  for (let j = 0; j < n; j++) {
    const col = (k + half + j) % RANK;
    const slot = (k + j) % c;
    const back = pymod(k + j - RANK, c);
    for (let o = 0; o < OUT; o++)
      for (let i = 0; i < IN; i++)
        W[o * IN + i] += s * (at(B, RANK, o, col) - at(oldPoolB, OUT, slot, o)) * at(A, IN, col, i);
    for (let o = 0; o < OUT; o++) {
      poolB[back * OUT + o] = at(B, RANK, o, col);
      B[o * RANK + col] = at(oldPoolB, OUT, slot, o);
    }
    frozenA[col] = WARM;
  }
  // the switch keeps the function
  for (let q = 0; q < OUT * IN; q++) {
    let sum = W[q]!;
    const [o, i] = [Math.floor(q / IN), q % IN];
    for (let j = 0; j < RANK; j++) sum += s * at(B, RANK, o, j) * at(A, IN, j, i);
    expect(sum).toBeCloseTo(functionBefore[q]!, 12);
  }
  // zero the Adam state of the vectors frozen just now (zero_lora_states), then the gradients of
  // every frozen one (correct_switched_lora)
  const gradA = Float64Array.from(gA);
  const gradB = Float64Array.from(gB);
  for (let j = 0; j < RANK; j++) {
    if (frozenA[j] === WARM) {
      for (let i = 0; i < IN; i++) mA[j * IN + i] = vA[j * IN + i] = 0;
      tA[j] = 0;
    }
    if (frozenB[j] === WARM) {
      for (let o = 0; o < OUT; o++) mB[o * RANK + j] = vB[o * RANK + j] = 0;
      tB[j] = 0;
    }
    if (frozenA[j]! > 0) for (let i = 0; i < IN; i++) gradA[j * IN + i] = 0;
    if (frozenB[j]! > 0) for (let o = 0; o < OUT; o++) gradB[o * RANK + j] = 0;
    frozenA[j] = Math.max(frozenA[j]! - 1, 0);
    frozenB[j] = Math.max(frozenB[j]! - 1, 0);
  }
  // StepAdamW: the step count per row of A, per column of B
  const adam = (
    p: Float64Array,
    g: Float64Array,
    m: Float64Array,
    v: Float64Array,
    step: (e: number) => number,
  ) => {
    for (let e = 0; e < p.length; e++) {
      m[e] = 0.9 * m[e]! + 0.1 * g[e]!;
      v[e] = 0.999 * v[e]! + 0.001 * g[e]! * g[e]!;
      p[e] = p[e]! * (1 - LR * WD);
      const tt = step(e);
      p[e] =
        p[e]! -
        ((LR / (1 - 0.9 ** tt)) * m[e]!) / (Math.sqrt(v[e]!) / Math.sqrt(1 - 0.999 ** tt) + 1e-8);
    }
  };
  for (let j = 0; j < RANK; j++) tA[j]! += 1;
  for (let j = 0; j < RANK; j++) tB[j]! += 1;
  adam(A, gradA, mA, vA, (e) => tA[Math.floor(e / IN)]!);
  adam(B, gradB, mB, vB, (e) => tB[e % RANK]!);
  return {
    n,
    values: new Map<string, Float64Array>([
      ["param:l2.weight", W],
      ["param:l2.switchlora.A", A],
      ["param:l2.switchlora.B", B],
      ["state:l2.switchlora:pool_A", poolA],
      ["state:l2.switchlora:pool_B", poolB],
      ["state:l2.switchlora:m_A", mA],
      ["state:l2.switchlora:v_A", vA],
      ["state:l2.switchlora:t_A", tA],
      ["state:l2.switchlora:m_B", mB],
      ["state:l2.switchlora:v_B", vB],
      ["state:l2.switchlora:t_B", tB],
      ["state:l2.switchlora:frozen_A", frozenA],
      ["state:l2.switchlora:frozen_B", frozenB],
      ["state:l2.switchlora:switched", Float64Array.of((k + n) % (RANK * Math.min(IN, OUT)))],
      ["state:l2.switchlora:draw", st("draw")],
    ]),
  };
}

describe("SwitchLoRA on the CPU interpreter, against a float64 reference", () => {
  it("starts with W <- W - s·B A: the adapted model computes the plain model's function", async () => {
    const run = compile(program());
    const store = await init(run, true);
    const plain = compile(
      program()
        .replace(/ {2}adapt l2 with .*\n/, "")
        .replace(/ {2}optimize adapters with .*\n/, ""),
    );
    const W0 = param(await init(plain, true), "l2.weight");
    const W = param(store, "l2.weight");
    const A = param(store, "l2.switchlora.A");
    const B = param(store, "l2.switchlora.B");
    let moved = 0;
    for (let o = 0; o < OUT; o++)
      for (let i = 0; i < IN; i++) {
        let sBA = 0;
        for (let j = 0; j < RANK; j++) sBA += (at(B, RANK, o, j) * at(A, IN, j, i)) / RANK;
        expect(at(W, IN, o, i) + sBA).toBeCloseTo(at(W0, IN, o, i), 12);
        moved = Math.max(moved, Math.abs(sBA));
      }
    expect(moved).toBeGreaterThan(1e-3);
    // A, B and the pools drawn in ±√3 σ (lora_utils.get_init_lora_bound), gain = √(1/3)
    const gain = Math.sqrt(1 / 3);
    const boundA = Math.sqrt(3) * ((Math.sqrt(OUT) * RANK) / IN ** 1.5) ** 0.25 * Math.sqrt(gain);
    const boundB = Math.sqrt(3) * (RANK / Math.sqrt(OUT * IN)) ** 0.25 * Math.sqrt(gain);
    for (const [name, bound] of [
      ["param:l2.switchlora.A", boundA],
      ["state:l2.switchlora:pool_A", boundA],
      ["param:l2.switchlora.B", boundB],
      ["state:l2.switchlora:pool_B", boundB],
    ] as const) {
      const v = [...store.get(name)!.data];
      expect(Math.max(...v.map(Math.abs)), name).toBeLessThanOrEqual(bound);
      expect(Math.max(...v.map(Math.abs)), name).toBeGreaterThan(bound / 2);
    }
  });

  it("switches, compensates W, freezes the counterparts and restarts their bias corrections: four steps by hand", async () => {
    const run = compile(program());
    const store = await init(run, true);
    let switches = 0;
    let frozenSeen = 0;
    for (let t = 1; t <= 4; t++) {
      const before = copyStore(store);
      const { grads } = await trainStep(run, store, t, true);
      const want = reference(
        before,
        grads.get("l2.switchlora.A")!,
        grads.get("l2.switchlora.B")!,
        t,
      );
      switches += want.n;
      frozenSeen += [...before.get("state:l2.switchlora:frozen_A")!.data].filter(
        (x) => x > 0,
      ).length;
      for (const [name, w] of want.values) {
        const got = store.get(name)!.data;
        w.forEach((x, i) => expect(got[i]!, `${name}[${i}] at step ${t}`).toBeCloseTo(x, 10));
      }
    }
    // the run switched, and the reference's freezing was exercised
    expect(switches).toBeGreaterThanOrEqual(3);
    expect(frozenSeen).toBeGreaterThan(0);
  });

  it("counts r(m + n) trainable parameters, 2r(m + n) + 4r + 2 optimizer states and c(m + n) candidates", () => {
    const run = compile(program());
    const trainable = run.step.trainable.filter((p) => p.includes("switchlora"));
    const sizes = trainable.map((p) =>
      run.step.inputs.find((i) => i.name === `param:${p}`)!.shape.reduce((a, d) => a * d, 1),
    );
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(RANK * (IN + OUT));
    const c = Math.min(IN, OUT);
    const states = run.step.states.filter((s) => s.name.startsWith("l2.switchlora:"));
    const elements = (names: (n: string) => boolean) =>
      states
        .filter((s) => names(s.name.split(":")[1]!))
        .reduce((a, s) => a + s.shape.reduce((x, d) => x * d, 1), 0);
    expect(elements((n) => n.startsWith("pool_"))).toBe(c * (IN + OUT));
    expect(elements((n) => !n.startsWith("pool_"))).toBe(2 * RANK * (IN + OUT) + 4 * RANK + 2);
    // `lrkc build --emit memory` adds both to the optimizer state (4-byte floats), beside AdamW's
    // two moments of the rest: l1's weight and bias, l2's bias, l3's weight and bias
    const rest = 2 * IN + IN + OUT + OUT * 2 + 2;
    expect(memoryReport(run.step).optimizerState).toBe(
      4 * (c * (IN + OUT) + 2 * RANK * (IN + OUT) + 4 * RANK + 2) + 4 * 2 * rest,
    );
  });
});

describe("lrkc build --emit memory on switchlora_pretrain.lrk", () => {
  it("lists each adapted module's states: c(m + n) candidates + 2r(m + n) moments + 4r + 2", () => {
    const r = spawnSync(
      process.execPath,
      [
        join(root, "bin", "lrkc.js"),
        "build",
        "examples/switchlora_pretrain.lrk",
        "--emit",
        "memory",
      ],
      { cwd: root, encoding: "utf8" },
    );
    expect(r.status, r.stderr).toBe(0);
    // TinyLM d 128: q, k, v, o are [128, 128], up [512, 128], down [128, 512]; rank 16
    const modules = [...r.stdout.matchAll(/^ {2}(\S+\.switchlora): .* = ([\d,]+) elements$/gm)];
    expect(modules.length).toBe(12);
    for (const [, path, count] of modules) {
      const [m, n] = /mlp\.up/.test(path!)
        ? [512, 128]
        : /mlp\.down/.test(path!)
          ? [128, 512]
          : [128, 128];
      const c = Math.min(m, n);
      const rank = 16;
      expect(Number(count!.replace(/,/g, "")), path).toBe(
        c * (m + n) + 2 * rank * (m + n) + 4 * rank + 2,
      );
    }
    expect(r.stdout).toContain(
      "blocks.0.attn.q.switchlora.A [16, 128]  switchlora_adamw: its states are kept per module, under blocks.0.attn.q.switchlora below",
    );
  });

  it("--emit ir lists the `at step 0` entry that folds s·B A out of the 12 weights", () => {
    const r = spawnSync(
      process.execPath,
      [join(root, "bin", "lrkc.js"), "build", "examples/switchlora_pretrain.lrk", "--emit", "ir"],
      { cwd: root, encoding: "utf8" },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(
      "// entry action:step0: the `at` actions when the run starts, before step 1: 12 outputs",
    );
    expect(r.stdout).toMatch(/\/\/ {3}param:blocks\.0\.attn\.q\.weight = %\d+/);
  });
});

describe("a SwitchLoRA run stopped and resumed", () => {
  it("in process: stopped after a switching step, resumed from its checkpoint, equals the uninterrupted run bit for bit", async () => {
    let switchedAtStop = 0;
    const { whole, resumed } = await stopAndResume(
      compile(program({ steps: 8 })),
      new CpuDevice(),
      4,
      {
        onCheckpoint: (_, store) => {
          switchedAtStop = store.get("state:l2.switchlora:switched")!.data[0]!;
        },
      },
    );
    expect(switchedAtStop).toBeGreaterThan(0);
    // it switched again after the resume
    expect(resumed.store.get("state:l2.switchlora:switched")!.data[0]).toBeGreaterThan(
      switchedAtStop,
    );
    expectSameTensors(resumed.store, whole.store);
  });

  it("through the CLI: killed mid-way, `--resume` ends bit for bit as the uninterrupted run", async () => {
    // killed without warning once step 10 is logged: the checkpoint of step 8 or later stays
    const { after, final } = await killAndResume(
      program({ steps: 60, extra: "  checkpoint every 4\n" }),
      "cpu",
      10,
    );
    expect(after).toBeGreaterThanOrEqual(8);
    expect(after).toBeLessThan(60);
    expect(final.has("param:l2.weight") || final.has("l2.weight")).toBe(true);
  }, 60_000);
});

describe("SwitchLoRA on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  it("trains as on the interpreter across switching steps: losses and every stored tensor", async () => {
    const run = compile(program());
    const store = await expectTrainsAlike(device, run, 6, 1e-3);
    expect(store.get("state:l2.switchlora:switched")!.data[0]).toBeGreaterThan(0);
  }, 120_000);

  it("switchlora_pretrain.lrk trains 3 steps with equal losses on CPU and WebGPU", async () => {
    const path = join(root, "examples", "switchlora_pretrain.lrk");
    // one small layer (d 32, rank 8; interval 10 and a slow descent so that it switches in 3
    // steps): the kernels are the same as at full size
    const text = readFileSync(path, "utf8")
      .replace("switchlora(rank: 16)", "switchlora(rank: 8)")
      .replace("interval: 40, descent_rate: 0.1", "interval: 10, descent_rate: 100")
      .replace(
        "TinyLM(vocab: arith.vocab)",
        "TinyLM(vocab: arith.vocab, d: 32, layers: 1, heads: 2)",
      );
    const { run, diagnostics } = prepare(new SourceFile(path, text), { batch: 2, steps: 3 });
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    // losses only: the key biases' gradients are rounding noise (softmax ignores them)
    await loadOnGpu(device, run!);
    const gpu = await train(run!, device, { steps: 3 });
    const cpu = await train(run!, new CpuDevice(), { steps: 3 });
    expect(cpu.losses.every(Number.isFinite)).toBe(true);
    gpu.losses.forEach((l, i) =>
      expect(Math.abs(l - cpu.losses[i]!) / cpu.losses[i]!, `loss ${i + 1}`).toBeLessThan(1e-4),
    );
    const switched = [...cpu.store].filter(([k, t]) => k.endsWith(":switched") && t.data[0]! > 0);
    expect(switched.length).toBeGreaterThan(0);
    // each module reads its own element of the step's random draw
    const draws = [...cpu.store].filter(([k]) => k.endsWith(":draw")).map(([, t]) => t.data[0]!);
    expect(draws.length).toBe(6);
    expect(new Set(draws.map(Math.floor)).size).toBe(6);
  }, 120_000);
});

describe("what a joint optimizer may assign, and `at step 0`", () => {
  const diagnosticsOf = (text: string) =>
    prepare(new SourceFile("a.lrk", text), { batch: 4 }).diagnostics.filter(
      (d) => d.severity === "error",
    );
  const withOptimizer = (update: string, extra = "") =>
    program()
      .replace(
        "import std.optim.{switchlora_adamw, adamw}\n",
        `import std.optim.{switchlora_adamw, adamw}

optimizer trial(lr: float) on switchlora {
  update(gA, gB) {
${update}
    A -= lr * gA
    B -= lr * gB
  }
}
${extra}`,
      )
      .replace(/switchlora_adamw\(lr: [^\n]*\)\n/, "trial(lr: 0.1)\n");

  it("assigns base.weight and the adapter's states, and reads the adapter's members", async () => {
    const run = compile(
      withOptimizer(`    base.weight = halved()
    pool_A = pool_A + adapter.scale`).replace(
        "  update(gA, gB) {\n",
        "  halved() = base.weight * 0.5 // a helper reads \`base\` too\n  update(gA, gB) {\n",
      ),
    );
    const store = await init(run, true);
    const W = param(store, "l2.weight");
    const pool = Float64Array.from(store.get("state:l2.switchlora:pool_A")!.data);
    await trainStep(run, store, 1, true);
    param(store, "l2.weight").forEach((w, i) => expect(w).toBe(W[i]! * 0.5));
    [...store.get("state:l2.switchlora:pool_A")!.data].forEach((p, i) =>
      expect(p).toBeCloseTo(pool[i]! + 1 / RANK, 12),
    );
  });

  it("a state of the optimizer's own with an adapter state's name is E0202 (one stored name)", () => {
    const errors = diagnosticsOf(
      withOptimizer("    pool_A = pool_A + 1").replace(
        "  update(gA, gB) {\n",
        "  state pool_A = zeros(2)\n  update(gA, gB) {\n",
      ),
    );
    expect(errors.map((d) => [d.code, d.message])).toEqual([
      [
        "E0202",
        "`pool_A` is a state of the adapter `switchlora` too: both would be stored as `state:l2.switchlora:pool_A`",
      ],
    ]);
  });

  it("a member read after base.weight is assigned (adapter.merged) is computed from the new value", async () => {
    const run = compile(
      withOptimizer(`    let unused = adapter.merged
    base.weight = base.weight * 0.5
    base.weight = adapter.merged - adapter.scale * (B @ A)`),
    );
    const store = await init(run, true);
    const W = param(store, "l2.weight");
    await trainStep(run, store, 1, true);
    param(store, "l2.weight").forEach((w, i) => expect(w).toBeCloseTo(W[i]! * 0.5, 12));
  });

  it("base.weight inside an `if` on a tensor, another member, or a quantized weight is E0206", () => {
    const inIf = diagnosticsOf(
      withOptimizer(`    if fro(gA) > 1 {
      base.weight = base.weight * 0.5
    }`),
    );
    expect(inIf.map((d) => d.code)).toEqual(["E0206"]);
    expect(inIf[0]!.message).toBe("`l2.weight` can only be assigned by `update`'s own statements");
    const other = diagnosticsOf(withOptimizer("    adapter.scale = 2"));
    expect(other.map((d) => [d.code, d.message])).toEqual([
      ["E0206", "this cannot be assigned in an optimizer"],
    ]);
    const quantized = diagnosticsOf(
      withOptimizer("    base.weight = base.weight * 0.5").replace(
        "  adapt l2 with",
        "  quantize l2 with std.quant.svdquant(rank: 2, group: 4)\n  adapt l2 with",
      ),
    );
    expect(quantized.map((d) => [d.code, d.message])).toEqual([
      ["E0206", "`l2.weight` is quantized: an optimizer cannot assign it"],
    ]);
  });

  it("an interval under 2 · warm_steps is refused, as the reference raises (E0205)", () => {
    const errors = diagnosticsOf(program().replace("interval: 4,", "interval: 3,"));
    expect(errors.map((d) => [d.code, d.message])).toEqual([
      [
        "E0205",
        "switchlora_adamw needs warm_steps >= 1 and interval >= 2 * warm_steps (interval is 3, warm_steps 2)",
      ],
    ]);
  });

  it("`at step N` takes N >= 0, `at every N` N >= 1 (E0402)", () => {
    const at = (when: string) =>
      diagnosticsOf(
        program()
          .replace("  at step 0 {", `  at ${when} {`)
          .replace(
            "import std.adapters.{switchlora}\n",
            `import std.adapters.{switchlora}

adapter shifted(rank: int) on Linear(in, out) {
  param A: f32[rank, in] = zeros
  param B: f32[out, rank] = zeros
  forward(x) = base(x) + (x @ A^T) @ B^T
  at ${when} {
    base.weight = base.weight * 2
  }
}
`,
          )
          .replace(
            "adapt l2 with switchlora(rank: 4)",
            "adapt l1 with shifted(rank: 2)\n  adapt l2 with switchlora(rank: 4)\n  optimize l1.** with adamw(lr: 0.01)",
          ),
      );
    expect(at("step 0")).toEqual([]);
    expect(at("step -1").map((d) => [d.code, d.message])).toEqual([
      [
        "E0402",
        "`at step` needs a non-negative integer known while compiling, not an integer (-1)",
      ],
    ]);
    expect(at("every 0").map((d) => d.code)).toEqual(["E0402"]);
    expect(at("every 0")[0]!.message).toContain("positive integer");
  });
});
